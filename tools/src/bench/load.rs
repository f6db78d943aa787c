//! The load generator: N clients over M conversations (a mix of DIRECT and
//! GROUP), sending at a target total rate or as fast as a window of sends in
//! flight allows, over `Connect` streams or unary `SendMessage` calls, while
//! every client holds a `Connect` stream and counts what is delivered to it.
//!
//! Latency is measured from when a send was due (its scheduled time at a
//! target rate, so a stall is charged to every send it delays rather than
//! hidden: no coordinated omission) to its acknowledgement and to each
//! delivery. The due time travels in the `client_msg_id`, so any process
//! can time a delivery without shared state.

use super::{per_sec, CpuMark, Latency, ProcStats, Recorder};
use anyhow::{anyhow, bail, Context, Result};
use confab_common::auth::Authenticator;
use confab_proto::v1::chat_client::ChatClient;
use confab_proto::v1::*;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};

/// How clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// `SendFrame`s on the client's `Connect` stream, acked on it.
    Connect,
    /// Unary `SendMessage` calls.
    Unary,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOpts {
    /// A name for the report (`embedded connect max`).
    pub label: String,
    /// The gateway (or `confab dev`, or the echo server).
    pub target: SocketAddr,
    /// The HS256 secret tokens are minted with.
    pub secret: String,
    /// Prefix of user ids and titles, unique per run.
    pub run_id: String,
    /// Clients, one user and one HTTP/2 connection each.
    pub clients: usize,
    /// Conversations.
    pub conversations: usize,
    /// Which share of the conversations are GROUPs (0..=1).
    pub group_share: f64,
    /// Members per GROUP.
    pub group_size: usize,
    /// How sends travel.
    pub via: Via,
    /// Total messages per second over all clients; `None`: as fast as
    /// `in_flight` allows.
    pub rate: Option<f64>,
    /// Sends each client may have unacknowledged.
    pub in_flight: usize,
    /// Sending before the measurement starts (not recorded).
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// Body size in bytes.
    pub body_bytes: usize,
    /// How long to wait, after sending stops, for the last acks and
    /// deliveries.
    pub drain: Duration,
    /// Whether the target is Confab: conversations are created and every
    /// client holds a `Connect` stream. `false` for the echo server, which
    /// only answers `SendMessage`.
    pub confab: bool,
    /// Processes whose CPU and memory are reported (label, pid).
    pub watch: Vec<(String, u32)>,
}

impl LoadOpts {
    /// Defaults against `target`: 100 clients, 50 conversations (20% GROUPs
    /// of 5), `Connect`, as fast as possible with 32 sends in flight each,
    /// 2 s warm-up, 10 s measured, 100-byte bodies.
    pub fn new(label: &str, target: SocketAddr, secret: &str) -> Self {
        Self {
            label: label.to_string(),
            target,
            secret: secret.to_string(),
            run_id: format!("bench{}x{}", std::process::id(), unique()),
            clients: 100,
            conversations: 50,
            group_share: 0.2,
            group_size: 5,
            via: Via::Connect,
            rate: None,
            in_flight: 32,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(10),
            body_bytes: 100,
            drain: Duration::from_secs(15),
            confab: true,
            watch: Vec::new(),
        }
    }
}

fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    nanos % 1_000_000 * 100 + N.fetch_add(1, Ordering::Relaxed) % 100
}

/// What a run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LoadReport {
    pub label: String,
    pub via: Option<Via>,
    pub clients: usize,
    /// Clients that had a conversation to send in.
    pub senders: usize,
    pub direct_conversations: usize,
    pub group_conversations: usize,
    pub group_size: usize,
    pub body_bytes: usize,
    /// The target total rate; `None`: as fast as possible.
    pub target_rate: Option<f64>,
    pub in_flight: usize,
    /// The measured window.
    pub seconds: f64,
    /// Sends due in the window, and what became of them.
    pub sent: u64,
    pub acked: u64,
    /// Deliveries (one per member's stream) of messages sent in the window.
    pub delivered: u64,
    /// Deliveries due for the window's acknowledged messages.
    pub expected_deliveries: u64,
    pub sent_per_sec: f64,
    pub acked_per_sec: f64,
    pub delivered_per_sec: f64,
    /// Deliveries per acknowledged message (members per conversation).
    pub fanout: f64,
    /// Send → acknowledgement.
    pub ack: Latency,
    /// Send → delivery to each member's stream.
    pub delivery: Latency,
    /// Failures by gRPC code (`RESOURCE_EXHAUSTED`, `stream UNAVAILABLE`,
    /// `missing delivery`, ...), whole run.
    pub errors: BTreeMap<String, u64>,
    /// Whole run, warm-up included: sends, acks, deliveries due and done.
    pub total_sent: u64,
    pub total_acked: u64,
    pub total_expected_deliveries: u64,
    pub total_delivered: u64,
    /// CPU and memory of the watched processes and of this client, over
    /// the window.
    pub processes: Vec<ProcStats>,
}

impl LoadReport {
    /// Acknowledged sends that were never delivered to some member, or
    /// deliveries beyond what was due (both whole-run).
    pub fn delivery_mismatch(&self) -> i64 {
        self.total_expected_deliveries as i64 - self.total_delivered as i64
    }
}

/// Counters every task updates.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    expected: AtomicU64,
    total_sent: AtomicU64,
    total_acked: AtomicU64,
    total_failed: AtomicU64,
    total_expected: AtomicU64,
    total_delivered: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    fn error(&self, what: String) {
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(what).or_default() += 1;
        }
    }
}

/// The clock sends are stamped with.
struct Clock {
    epoch: Instant,
    /// Window start and end, in ns since `epoch`.
    window: (u64, u64),
}

impl Clock {
    fn ns(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn in_window(&self, t: u64) -> bool {
        t >= self.window.0 && t < self.window.1
    }

    /// Time since `t` (ns since epoch).
    fn since(&self, t: u64) -> Duration {
        self.epoch.elapsed().saturating_sub(Duration::from_nanos(t))
    }
}

/// `client_msg_id`: `<due ns>.<client>.<n>`.
fn msg_id(due_ns: u64, client: usize, n: u64) -> String {
    format!("{due_ns}.{client}.{n}")
}

/// The due time in a `client_msg_id` this generator made.
fn due_of(client_msg_id: &str) -> Option<u64> {
    client_msg_id.split('.').next()?.parse().ok()
}

fn code_name(code: Code) -> String {
    confab_common::metrics::code_name(code).to_string()
}

/// One client's connection and identity.
struct Client {
    index: usize,
    user: String,
    bearer: AsciiMetadataValue,
    chat: ChatClient<Channel>,
    /// Conversations it sends in.
    convs: Vec<Arc<str>>,
}

impl Client {
    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut()
            .insert("authorization", self.bearer.clone());
        r
    }
}

/// The members of conversation `j` (user indexes): GROUPs first.
fn members(j: usize, opts: &LoadOpts, groups: usize) -> Vec<usize> {
    let n = opts.clients;
    if j < groups {
        let size = opts.group_size.clamp(2, n);
        (0..size).map(|k| (j * size + k) % n).collect()
    } else {
        let d = j - groups;
        let a = d % n;
        let b = (a + 1 + (d / n) % (n - 1)) % n;
        vec![a, b]
    }
}

/// Runs the load and reports.
pub async fn run(opts: &LoadOpts) -> Result<LoadReport> {
    if opts.clients < 2 || opts.conversations == 0 {
        bail!("need at least 2 clients and 1 conversation");
    }
    if opts.in_flight == 0 {
        bail!("in_flight must be at least 1");
    }
    let groups = ((opts.conversations as f64) * opts.group_share.clamp(0.0, 1.0)).round() as usize;
    let auth = Authenticator::new(&opts.secret);

    // Connections, one per client.
    let uri = format!("http://{}", opts.target);
    let mut clients = Vec::with_capacity(opts.clients);
    let connects = futures::stream::iter(0..opts.clients)
        .map(|i| {
            let uri = uri.clone();
            async move {
                let channel = Channel::from_shared(uri)?
                    .connect_timeout(Duration::from_secs(10))
                    .connect()
                    .await
                    .context("connect")?;
                anyhow::Ok((i, channel))
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let mut channels: Vec<Option<Channel>> = vec![None; opts.clients];
    for c in connects {
        let (i, channel) = c?;
        channels[i] = Some(channel);
    }
    for (i, channel) in channels.into_iter().enumerate() {
        let user = format!("{}-u{i}", opts.run_id);
        let token = auth
            .mint(&user, 24 * 3600)
            .map_err(|e| anyhow!("mint a token: {e}"))?;
        clients.push(Client {
            index: i,
            bearer: format!("Bearer {token}")
                .parse()
                .context("token is ascii")?,
            user,
            chat: ChatClient::new(channel.context("every client connected")?)
                .max_decoding_message_size(64 << 20),
            convs: Vec::new(),
        });
    }

    // Conversations.
    let mut member_count: HashMap<Arc<str>, u64> = HashMap::new();
    let mut direct = 0;
    let plan: Vec<(usize, Vec<usize>)> = (0..opts.conversations)
        .map(|j| (j, members(j, opts, groups)))
        .collect();
    let created = futures::stream::iter(plan.iter())
        .map(|(j, m)| {
            let clients = &clients;
            async move {
                if !opts.confab {
                    return anyhow::Ok((format!("{}-c{j}", opts.run_id), m.clone()));
                }
                let creator = &clients[m[0]];
                let kind = if *j < groups {
                    ConversationKind::Group
                } else {
                    ConversationKind::Direct
                };
                let req = CreateConversationRequest {
                    kind: kind as i32,
                    title: format!("{} {j}", opts.run_id),
                    member_ids: m[1..].iter().map(|&k| clients[k].user.clone()).collect(),
                };
                let conv = creator
                    .chat
                    .clone()
                    .create_conversation(creator.req(req))
                    .await
                    .map_err(|s| {
                        anyhow!(
                            "create conversation {j}: {} {}",
                            code_name(s.code()),
                            s.message()
                        )
                    })?
                    .into_inner();
                anyhow::Ok((conv.id, m.clone()))
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    for c in created {
        let (id, m) = c?;
        if m.len() == 2 {
            direct += 1;
        }
        let id: Arc<str> = id.into();
        if opts.confab {
            member_count.insert(id.clone(), m.len() as u64);
        }
        for k in m {
            clients[k].convs.push(id.clone());
        }
    }
    let member_count = Arc::new(member_count);
    let senders = clients.iter().filter(|c| !c.convs.is_empty()).count();

    let counters = Arc::new(Counters::default());
    let setup_done = Instant::now();
    let start = setup_done + Duration::from_millis(200);
    let clock = Arc::new(Clock {
        epoch: setup_done,
        window: (
            (start + opts.warmup - setup_done).as_nanos() as u64,
            (start + opts.warmup + opts.duration - setup_done).as_nanos() as u64,
        ),
    });
    let window_start = start + opts.warmup;
    let end = window_start + opts.duration;

    // Streams: every client listens (and, over Connect, sends) on one.
    let mut streams: Vec<Option<mpsc::Sender<ClientFrame>>> = Vec::new();
    let mut readers = Vec::new();
    let permits: Vec<Arc<Semaphore>> = (0..clients.len())
        .map(|_| Arc::new(Semaphore::new(opts.in_flight)))
        .collect();
    let ack_recorders: Vec<Arc<Mutex<Recorder>>> = (0..clients.len())
        .map(|_| Arc::new(Mutex::new(Recorder::new())))
        .collect();
    let delivery_recorders: Vec<Arc<Mutex<Recorder>>> = (0..clients.len())
        .map(|_| Arc::new(Mutex::new(Recorder::new())))
        .collect();
    if opts.confab {
        let opened = futures::stream::iter(clients.iter())
            .map(open_stream)
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await;
        let mut by_index: Vec<Option<(mpsc::Sender<ClientFrame>, Streaming<ServerFrame>)>> =
            (0..clients.len()).map(|_| None).collect();
        for o in opened {
            let (i, tx, inbound) = o?;
            by_index[i] = Some((tx, inbound));
        }
        for (i, s) in by_index.into_iter().enumerate() {
            let (tx, inbound) = s.context("every stream opened")?;
            streams.push(Some(tx));
            readers.push(tokio::spawn(read_stream(
                inbound,
                clock.clone(),
                counters.clone(),
                member_count.clone(),
                permits[i].clone(),
                ack_recorders[i].clone(),
                delivery_recorders[i].clone(),
                opts.body_bytes,
            )));
        }
    } else {
        streams.resize_with(clients.len(), || None);
    }

    // Send.
    let body: Arc<str> = "x".repeat(opts.body_bytes).into();
    let period = opts
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(senders as f64 / r));
    let mut sending = Vec::new();
    for (pos, c) in clients
        .into_iter()
        .filter(|c| !c.convs.is_empty())
        .enumerate()
    {
        // Spread the clients' first sends over one period.
        let first = start
            + period
                .map(|p| p.mul_f64(pos as f64 / senders as f64))
                .unwrap_or_default();
        let (index, stream) = (c.index, streams[c.index].clone());
        sending.push(tokio::spawn(send_loop(
            index,
            c,
            stream,
            SendPlan {
                first,
                end,
                period,
                via: opts.via,
                body: body.clone(),
            },
            clock.clone(),
            counters.clone(),
            member_count.clone(),
            permits.clone(),
            ack_recorders.clone(),
        )));
    }

    tokio::time::sleep_until(window_start.into()).await;
    let mut marks: Vec<(String, CpuMark)> = opts
        .watch
        .iter()
        .map(|(label, pid)| (label.clone(), CpuMark::now(*pid)))
        .collect();
    marks.push(("bench client".into(), CpuMark::now(std::process::id())));
    tokio::time::sleep_until(end.into()).await;
    let processes: Vec<ProcStats> = marks.iter().map(|(l, m)| m.stats(l)).collect();
    for s in sending {
        s.await.context("sender task")?;
    }

    // Drain: every send answered and every due delivery made, or time out.
    let answered = || {
        counters.total_acked.load(Ordering::Relaxed) + counters.total_failed.load(Ordering::Relaxed)
    };
    let drained = confab_tests::poll(
        "every send answered and every due delivery made",
        opts.drain,
        Duration::from_millis(20),
        || {
            let sent = counters.total_sent.load(Ordering::Relaxed);
            let due = counters.total_expected.load(Ordering::Relaxed);
            let done = counters.total_delivered.load(Ordering::Relaxed);
            std::future::ready(Ok((answered() >= sent && done >= due).then_some(())))
        },
    )
    .await;
    // Deliveries still missing are counted below; unanswered sends here.
    let unanswered = counters
        .total_sent
        .load(Ordering::Relaxed)
        .saturating_sub(answered());
    if drained.is_err() && unanswered > 0 {
        *counters
            .errors
            .lock()
            .map_err(|_| anyhow!("errors lock"))?
            .entry("unanswered send".into())
            .or_default() += unanswered;
    }
    drop(streams);
    for r in &readers {
        r.abort();
    }
    let mut delivery = Recorder::new();
    for r in &delivery_recorders {
        if let Ok(r) = r.lock() {
            delivery.merge(&r);
        }
    }
    let mut ack = Recorder::new();
    for r in &ack_recorders {
        if let Ok(r) = r.lock() {
            ack.merge(&r);
        }
    }

    let c = &counters;
    let window = opts.duration;
    let total_expected = c.total_expected.load(Ordering::Relaxed);
    let total_delivered = c.total_delivered.load(Ordering::Relaxed);
    let mut errors = c.errors.lock().map_err(|_| anyhow!("errors lock"))?.clone();
    if total_delivered < total_expected {
        errors.insert("missing delivery".into(), total_expected - total_delivered);
    }
    let acked = c.acked.load(Ordering::Relaxed);
    let expected = c.expected.load(Ordering::Relaxed);
    Ok(LoadReport {
        label: opts.label.clone(),
        via: Some(opts.via),
        clients: opts.clients,
        senders,
        direct_conversations: direct,
        group_conversations: opts.conversations - direct,
        group_size: opts.group_size,
        body_bytes: opts.body_bytes,
        target_rate: opts.rate,
        in_flight: opts.in_flight,
        seconds: window.as_secs_f64(),
        sent: c.sent.load(Ordering::Relaxed),
        acked,
        delivered: c.delivered.load(Ordering::Relaxed),
        expected_deliveries: expected,
        sent_per_sec: per_sec(c.sent.load(Ordering::Relaxed), window),
        acked_per_sec: per_sec(acked, window),
        delivered_per_sec: per_sec(c.delivered.load(Ordering::Relaxed), window),
        fanout: if acked == 0 {
            0.0
        } else {
            expected as f64 / acked as f64
        },
        ack: ack.summary(),
        delivery: delivery.summary(),
        errors,
        total_sent: c.total_sent.load(Ordering::Relaxed),
        total_acked: c.total_acked.load(Ordering::Relaxed),
        total_expected_deliveries: total_expected,
        total_delivered,
        processes,
    })
}

/// Opens `c`'s `Connect` stream and waits for the answer to its first
/// frame (a ping), so the session is registered for live delivery.
async fn open_stream(
    c: &Client,
) -> Result<(usize, mpsc::Sender<ClientFrame>, Streaming<ServerFrame>)> {
    let (tx, rx) = mpsc::channel::<ClientFrame>(1024);
    tx.send(ClientFrame {
        frame: Some(client_frame::Frame::Ping(Ping { nonce: 1 })),
    })
    .await
    .map_err(|_| anyhow!("queue the first frame"))?;
    let mut inbound = c
        .chat
        .clone()
        .connect(c.req(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await
        .map_err(|s| anyhow!("open stream for {}: {:?} {}", c.user, s.code(), s.message()))?
        .into_inner();
    match tokio::time::timeout(Duration::from_secs(20), inbound.message()).await {
        Ok(Ok(Some(ServerFrame {
            frame: Some(server_frame::Frame::Pong(_)),
        }))) => Ok((c.index, tx, inbound)),
        other => Err(anyhow!("{}: no pong on a new stream: {other:?}", c.user)),
    }
}

/// Reads one client's stream until it ends or is aborted: acks (over
/// Connect) and deliveries.
#[allow(clippy::too_many_arguments)]
async fn read_stream(
    mut inbound: Streaming<ServerFrame>,
    clock: Arc<Clock>,
    counters: Arc<Counters>,
    members: Arc<HashMap<Arc<str>, u64>>,
    permits: Arc<Semaphore>,
    acks: Arc<Mutex<Recorder>>,
    deliveries: Arc<Mutex<Recorder>>,
    body_bytes: usize,
) {
    loop {
        let frame = match inbound.message().await {
            Ok(Some(ServerFrame { frame: Some(f) })) => f,
            Ok(Some(_)) => continue,
            Ok(None) => {
                counters.error("stream ended".into());
                break;
            }
            Err(s) => {
                counters.error(format!("stream {}", code_name(s.code())));
                break;
            }
        };
        match frame {
            server_frame::Frame::Ack(a) => {
                permits.add_permits(1);
                let Some(due) = due_of(&a.client_msg_id) else {
                    continue;
                };
                if let Some(e) = a.error {
                    counters.total_failed.fetch_add(1, Ordering::Relaxed);
                    counters.error(code_name(Code::from(e.code)));
                    continue;
                }
                acked(&counters, &clock, &members, &a.conversation_id, due, &acks);
            }
            server_frame::Frame::Message(m) => {
                let Some(due) = due_of(&m.client_msg_id) else {
                    continue;
                };
                if m.body.len() != body_bytes {
                    counters.error("wrong body".into());
                }
                counters.total_delivered.fetch_add(1, Ordering::Relaxed);
                if clock.in_window(due) {
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut r) = deliveries.lock() {
                        r.record(clock.since(due));
                    }
                }
            }
            server_frame::Frame::CaughtUp(c) => {
                if let Some(e) = c.error {
                    counters.error(format!("caughtUp {}", code_name(Code::from(e.code))));
                }
            }
            server_frame::Frame::Pong(_) => {}
        }
    }
}

/// Books an acknowledged send.
fn acked(
    counters: &Counters,
    clock: &Clock,
    members: &HashMap<Arc<str>, u64>,
    conv: &str,
    due: u64,
    acks: &Mutex<Recorder>,
) {
    let fanout = members.get(conv).copied().unwrap_or(0);
    counters.total_acked.fetch_add(1, Ordering::Relaxed);
    counters.total_expected.fetch_add(fanout, Ordering::Relaxed);
    if clock.in_window(due) {
        counters.acked.fetch_add(1, Ordering::Relaxed);
        counters.expected.fetch_add(fanout, Ordering::Relaxed);
        if let Ok(mut r) = acks.lock() {
            r.record(clock.since(due));
        }
    }
}

/// When and how one client sends.
struct SendPlan {
    first: Instant,
    end: Instant,
    period: Option<Duration>,
    via: Via,
    body: Arc<str>,
}

/// One client's sends: due every `period` from `first` (or back to back,
/// as permits allow) until `end`.
#[allow(clippy::too_many_arguments)]
async fn send_loop(
    index: usize,
    client: Client,
    stream: Option<mpsc::Sender<ClientFrame>>,
    plan: SendPlan,
    clock: Arc<Clock>,
    counters: Arc<Counters>,
    members: Arc<HashMap<Arc<str>, u64>>,
    permits: Vec<Arc<Semaphore>>,
    acks: Vec<Arc<Mutex<Recorder>>>,
) {
    let client = Arc::new(client);
    let permits = permits[index].clone();
    let acks = acks[index].clone();
    let mut ticker = plan.period.map(|p| {
        let mut t = tokio::time::interval_at(plan.first.into(), p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    if ticker.is_none() {
        tokio::time::sleep_until(plan.first.into()).await;
    }
    let mut n: u64 = 0;
    loop {
        let due_at = match ticker.as_mut() {
            Some(t) => t.tick().await.into_std(),
            None => Instant::now(),
        };
        if due_at >= plan.end {
            break;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        if ticker.is_none() && Instant::now() >= plan.end {
            break;
        }
        let due = clock.ns(due_at);
        let conv = client.convs[(n as usize) % client.convs.len()].clone();
        let id = msg_id(due, index, n);
        n += 1;
        counters.total_sent.fetch_add(1, Ordering::Relaxed);
        if clock.in_window(due) {
            counters.sent.fetch_add(1, Ordering::Relaxed);
        }
        match (plan.via, &stream) {
            (Via::Connect, Some(tx)) => {
                // The permit comes back with the ack.
                permit.forget();
                let frame = ClientFrame {
                    frame: Some(client_frame::Frame::Send(SendFrame {
                        conversation_id: conv.to_string(),
                        client_msg_id: id,
                        body: plan.body.to_string(),
                    })),
                };
                if tx.send(frame).await.is_err() {
                    counters.total_failed.fetch_add(1, Ordering::Relaxed);
                    counters.error("stream closed".into());
                    break;
                }
            }
            _ => {
                let client = client.clone();
                let counters = counters.clone();
                let clock = clock.clone();
                let members = members.clone();
                let acks = acks.clone();
                let body = plan.body.to_string();
                tokio::spawn(async move {
                    let req = client.req(SendMessageRequest {
                        conversation_id: conv.to_string(),
                        client_msg_id: id,
                        body,
                    });
                    match client.chat.clone().send_message(req).await {
                        Ok(_) => acked(&counters, &clock, &members, &conv, due, &acks),
                        Err(s) => {
                            counters.total_failed.fetch_add(1, Ordering::Relaxed);
                            counters.error(code_name(s.code()));
                        }
                    }
                    drop(permit);
                });
            }
        }
    }
}

/// The report as a few lines of text.
pub fn describe(r: &LoadReport) -> String {
    let rate = r
        .target_rate
        .map(|x| format!("{x:.0}/s"))
        .unwrap_or_else(|| format!("max ({} in flight per client)", r.in_flight));
    let mut s = format!(
        "{}: {} clients ({} sending), {} DIRECT + {} GROUP(x{}) conversations, {:?}, {rate}, {} B bodies, {:.0} s\n  \
         sent {:.0}/s, acked {:.0}/s, delivered {:.0}/s (fanout {:.2})\n  \
         send->ack      p50/p90/p99/p99.9/max {}\n  \
         send->delivery p50/p90/p99/p99.9/max {}\n",
        r.label,
        r.clients,
        r.senders,
        r.direct_conversations,
        r.group_conversations,
        r.group_size,
        r.via.unwrap_or(Via::Connect),
        r.body_bytes,
        r.seconds,
        r.sent_per_sec,
        r.acked_per_sec,
        r.delivered_per_sec,
        r.fanout,
        r.ack.brief(),
        r.delivery.brief(),
    );
    if !r.errors.is_empty() {
        s.push_str(&format!("  errors: {:?}\n", r.errors));
    }
    for p in &r.processes {
        s.push_str(&format!(
            "  {}: {:.2} cores, RSS {} MiB (peak {} MiB)\n",
            p.label,
            p.cores,
            p.rss_kib / 1024,
            p.peak_rss_kib / 1024
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_round_trip_through_client_msg_ids() {
        let id = msg_id(123_456_789, 7, 42);
        assert_eq!(due_of(&id), Some(123_456_789));
        assert_eq!(due_of("not-ours"), None);
        assert!(id.len() <= 128);
    }

    #[test]
    fn conversations_have_distinct_members() {
        let mut opts = LoadOpts::new("t", "127.0.0.1:1".parse().expect("addr"), "s");
        opts.clients = 10;
        opts.group_size = 4;
        let mut pairs = std::collections::HashSet::new();
        for j in 0..30 {
            let m = members(j, &opts, 5);
            let mut d = m.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), m.len(), "conversation {j}: {m:?}");
            if j >= 5 {
                assert_eq!(m.len(), 2);
                assert!(pairs.insert(d), "direct pair repeated: {m:?}");
            } else {
                assert_eq!(m.len(), 4);
            }
        }
    }
}
