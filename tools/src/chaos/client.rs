//! The chaos run's clients, which behave as the README tells users to:
//! senders that retry with the same `client_msg_id`, readers of history
//! pages, and receivers that reopen a broken `Connect` stream with a
//! `resume`. What they see goes to one shared [`Log`].

use super::Config;
use confab_proto::v1::chat_client::ChatClient;
use confab_proto::v1::{
    client_frame, server_frame, ClientFrame, ConversationKind, CreateConversationRequest, Resume,
    SendMessageRequest,
};
use confab_tests::{token, Conv};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// A client's connection to every gateway (lazily connected, re-connected
/// by tonic after a failure).
#[derive(Clone)]
pub(super) struct Client {
    name: String,
    bearer: String,
    gateways: Vec<ChatClient<Channel>>,
}

impl Client {
    pub(super) fn new(name: &str, addrs: &[SocketAddr]) -> Self {
        let gateways = addrs
            .iter()
            .map(|a| {
                let channel = Endpoint::from_shared(format!("http://{a}"))
                    .expect("uri")
                    .connect_timeout(Duration::from_secs(1))
                    .http2_keep_alive_interval(Duration::from_secs(2))
                    .keep_alive_timeout(Duration::from_secs(2))
                    .keep_alive_while_idle(true)
                    .connect_lazy();
                ChatClient::new(channel)
            })
            .collect();
        Self {
            name: name.to_string(),
            bearer: format!("Bearer {}", token(name)),
            gateways,
        }
    }

    /// The gateway this client starts on: spread over the gateways by
    /// name, so each has senders and streams to lose.
    fn home(&self) -> usize {
        let sum: usize = self.name.bytes().map(usize::from).sum();
        sum % self.gateways.len()
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut()
            .insert("authorization", self.bearer.parse().expect("ascii token"));
        r.set_timeout(Duration::from_secs(10));
        r
    }
}

/// Whether a failed call is worth retrying: the documented UNAVAILABLE, the
/// deadline, or the connection failing under the call. tonic reports a call
/// that a server's GOAWAY refused before processing it (it was sent as the
/// server began a graceful shutdown) as INTERNAL "h2 protocol error" (the
/// GOAWAY's NO_ERROR code): the server never answered it, so it is retried
/// like UNAVAILABLE, as docs/operations.md tells clients to.
fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Unknown
    ) || (status.code() == Code::Internal && status.message().starts_with("h2 protocol error"))
}

/// What every task records.
#[derive(Default)]
pub(super) struct Log {
    /// (conversation, client_msg_id) → acknowledged seqs.
    pub(super) acked: HashMap<(String, String), BTreeSet<u64>>,
    pub(super) unacknowledged: u64,
    pub(super) unexpected: Vec<String>,
    pub(super) longest_outage: Duration,
    pub(super) slowest_call: Duration,
    pub(super) reads: (u64, u64),
    /// (user, conversation) → seqs received, in arrival order.
    pub(super) received: HashMap<(String, String), Vec<Received>>,
    /// (user, conversation) → the highest seq received.
    pub(super) cursors: HashMap<(String, String), u64>,
    pub(super) reconnects: u64,
}

/// A message as a stream carried it: seq, sender, client_msg_id.
pub(super) type Received = (u64, String, String);

pub(super) type Shared = Arc<Mutex<Log>>;

impl Log {
    /// A call (`what`) failed with `status`, which a retry cannot fix.
    fn note_unexpected(&mut self, what: &str, status: &Status) {
        self.unexpected
            .push(format!("{what}: {:?} {}", status.code(), status.message()));
    }
}

pub(super) fn lock(log: &Shared) -> std::sync::MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends one message per interval until `stop_at`, each retried with the
/// same key until acknowledged or `give_up_at`.
pub(super) async fn sender(
    client: Client,
    convs: Vec<String>,
    interval: Duration,
    stop_at: Instant,
    give_up_at: Instant,
    log: Shared,
) {
    let mut gw = client.home();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tick.tick().await;
        if Instant::now() >= stop_at {
            return;
        }
        let conv = &convs[n as usize % convs.len()];
        let key = format!("{}-{n}", client.name);
        let mut first_failure: Option<Instant> = None;
        loop {
            let req = client.req(SendMessageRequest {
                reply_to_seq: 0,
                conversation_id: conv.clone(),
                client_msg_id: key.clone(),
                body: format!("chaos {key}"),
            });
            let asked = Instant::now();
            let answer = client.gateways[gw].clone().send_message(req).await;
            {
                let mut l = lock(&log);
                l.slowest_call = l.slowest_call.max(asked.elapsed());
            }
            match answer {
                Ok(resp) => {
                    let seq = resp.into_inner().message.map_or(0, |m| m.seq);
                    let mut l = lock(&log);
                    l.acked
                        .entry((conv.clone(), key.clone()))
                        .or_default()
                        .insert(seq);
                    if let Some(t) = first_failure {
                        l.longest_outage = l.longest_outage.max(t.elapsed());
                    }
                    break;
                }
                Err(status) if retryable(&status) => {
                    let now = Instant::now();
                    first_failure.get_or_insert(now);
                    if now >= give_up_at {
                        let mut l = lock(&log);
                        l.unacknowledged += 1;
                        if let Some(t) = first_failure {
                            l.longest_outage = l.longest_outage.max(t.elapsed());
                        }
                        return;
                    }
                    // The other gateway may be up; a short pause either way.
                    gw = (gw + 1) % client.gateways.len();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => {
                    lock(&log).note_unexpected(&format!("send {key}"), &status);
                    break;
                }
            }
        }
    }
}

/// Reads the newest page of `conv` every interval until `stop_at`: OK, or
/// UNAVAILABLE while history or its database is down, and always in time.
pub(super) async fn reader(
    client: Client,
    conv: String,
    interval: Duration,
    stop_at: Instant,
    log: Shared,
) {
    use confab_proto::v1::GetHistoryRequest;
    let mut gw = 0;
    while Instant::now() < stop_at {
        tokio::time::sleep(interval).await;
        let req = client.req(GetHistoryRequest {
            conversation_id: conv.clone(),
            before_seq: None,
            after_seq: None,
            limit: 20,
        });
        let asked = Instant::now();
        let answer = client.gateways[gw].clone().get_history(req).await;
        let mut l = lock(&log);
        l.slowest_call = l.slowest_call.max(asked.elapsed());
        match answer {
            Ok(_) => l.reads.0 += 1,
            Err(s) if s.code() == Code::Unavailable => {
                l.reads.1 += 1;
                gw = (gw + 1) % client.gateways.len();
            }
            Err(s) if retryable(&s) => gw = (gw + 1) % client.gateways.len(),
            Err(s) => l.note_unexpected(&format!("read {conv}"), &s),
        }
    }
}

/// Keeps a `Connect` stream open (re-opening it with a resume after a
/// break) until `done`, recording every message it carries.
pub(super) async fn receiver(
    client: Client,
    convs: Vec<String>,
    done: tokio::sync::watch::Receiver<bool>,
    log: Shared,
) {
    let mut gw = client.home();
    let mut first = true;
    while !*done.borrow() {
        if !first {
            lock(&log).reconnects += 1;
            gw = (gw + 1) % client.gateways.len();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        first = false;
        let last_seq: HashMap<String, u64> = {
            let l = lock(&log);
            convs
                .iter()
                .map(|c| {
                    let at = l
                        .cursors
                        .get(&(client.name.clone(), c.clone()))
                        .copied()
                        .unwrap_or(0);
                    (c.clone(), at)
                })
                .collect()
        };
        let (tx, rx) = mpsc::channel::<ClientFrame>(4);
        let resume = ClientFrame {
            frame: Some(client_frame::Frame::Resume(Resume { last_seq })),
        };
        if tx.send(resume).await.is_err() {
            continue;
        }
        let mut r = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        r.metadata_mut()
            .insert("authorization", client.bearer.parse().expect("ascii token"));
        let mut inbound = match client.gateways[gw].clone().connect(r).await {
            Ok(s) => s.into_inner(),
            Err(status) => {
                if !retryable(&status) {
                    lock(&log).note_unexpected(&format!("connect {}", client.name), &status);
                }
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                n = inbound.message() => n,
                _ = wait_flag(&done) => return,
            };
            match next {
                Ok(Some(frame)) => {
                    if let Some(server_frame::Frame::Message(m)) = frame.frame {
                        let mut l = lock(&log);
                        let k = (client.name.clone(), m.conversation_id.clone());
                        l.received.entry(k.clone()).or_default().push((
                            m.seq,
                            m.sender_id.clone(),
                            m.client_msg_id.clone(),
                        ));
                        let c = l.cursors.entry(k).or_insert(0);
                        *c = (*c).max(m.seq);
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    if !retryable(&status) && status.code() != Code::ResourceExhausted {
                        lock(&log).note_unexpected(&format!("stream {}", client.name), &status);
                    }
                    break;
                }
            }
        }
        drop(tx);
    }
}

/// Completes once `flag` is set: the receivers stop once the checker has
/// what it needs (or its bound is over).
async fn wait_flag(flag: &tokio::sync::watch::Receiver<bool>) {
    let mut flag = flag.clone();
    let _ = flag.wait_for(|done| *done).await;
}

/// Creates the conversations through gateway 0, retrying while the stack
/// settles (consumer groups forming).
pub(super) async fn create_conversations(config: &Config, addrs: &[SocketAddr]) -> Vec<Conv> {
    let users: Vec<String> = (0..config.users).map(|i| format!("u{i}")).collect();
    let mut plan: Vec<(ConversationKind, String, Vec<String>)> = Vec::new();
    for pair in users.chunks(2) {
        if let [a, b] = pair {
            plan.push((
                ConversationKind::Direct,
                String::new(),
                vec![a.clone(), b.clone()],
            ));
        }
    }
    for g in 0..config.groups {
        let members: Vec<String> = (0..config.group_size)
            .map(|k| users[(g * 3 + k) % users.len()].clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        plan.push((ConversationKind::Group, format!("chaos group {g}"), members));
    }
    let mut convs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (kind, title, members) in plan {
        let creator = Client::new(&members[0], addrs);
        let others: Vec<String> = members[1..].to_vec();
        let conv = loop {
            let req = creator.req(CreateConversationRequest {
                history_visibility: 0,
                kind: kind as i32,
                title: title.clone(),
                member_ids: others.clone(),
            });
            match creator.gateways[0].clone().create_conversation(req).await {
                Ok(c) => break c.into_inner(),
                Err(s) if retryable(&s) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(s) => panic!("create a conversation: {s:?}"),
            }
        };
        convs.push(Conv {
            id: conv.id,
            members,
        });
    }
    convs
}
