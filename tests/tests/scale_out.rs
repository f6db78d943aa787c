//! Scale-out and rebalance on the distributed topology: two gateways, two
//! routers and two history processes sharing 4 partitions on the real broker
//! and PostgreSQL. Users on both gateways (two of them on both at once) chat
//! in DIRECT and GROUP conversations with concurrent senders, and every
//! promise is checked against history: each acknowledged send stored exactly
//! once, seqs 1..=n, every live session of every member sees every message
//! of its conversations once and in order, retries return the original seq.
//! The second test stops a router and a history process while messages flow
//! and checks that the survivors take their partitions over without losing,
//! duplicating or reordering anything.

use confab_proto::v1::*;
use confab_tests::cluster::{Cluster, Node, Shape};
use confab_tests::*;
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::Code;

/// Partitions of each topic.
const PARTITIONS: i32 = 4;

/// How long a consumer group may take to settle (COMPONENTS.md: allow ~20 s
/// for a rebalance on nisshi).
const SETTLE: Duration = Duration::from_secs(40);

/// The users and the gateways each one is connected to (`ana` and `dev` are
/// on both).
const USERS: &[(&str, &[usize])] = &[
    ("ana", &[0, 1]),
    ("ben", &[0]),
    ("cai", &[0]),
    ("dev", &[1, 0]),
    ("eli", &[1]),
    ("fay", &[1]),
];

/// The conversations: DIRECT pairs and groups, enough of them to spread over
/// the partitions. The first member creates it on their first gateway.
const CONVERSATIONS: &[(ConversationKind, &[&str])] = &[
    (ConversationKind::Direct, &["ana", "dev"]),
    (ConversationKind::Direct, &["ben", "eli"]),
    (ConversationKind::Direct, &["cai", "fay"]),
    (ConversationKind::Direct, &["ana", "ben"]),
    (ConversationKind::Direct, &["dev", "fay"]),
    (ConversationKind::Group, &["ana", "ben", "dev", "eli"]),
    (ConversationKind::Group, &["cai", "dev", "fay"]),
    (
        ConversationKind::Group,
        &["ana", "ben", "cai", "dev", "eli", "fay"],
    ),
    (ConversationKind::Group, &["ben", "cai", "eli", "fay"]),
];

/// Locks `m`; a test task that panicked while holding it fails the test.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().expect("a test task panicked holding a lock")
}

/// Waits until `nodes` (one consumer group) split all partitions between
/// them, each owning at least one and none owned twice.
async fn wait_shared(what: &str, nodes: &[&Node]) {
    let all: BTreeSet<i32> = (0..PARTITIONS).collect();
    let mut owned = Vec::new();
    let shared = poll(what, SETTLE, Duration::from_millis(50), || {
        owned = nodes.iter().map(|n| n.assigned()).collect::<Vec<_>>();
        let union: BTreeSet<i32> = owned.iter().flatten().copied().collect();
        let total: usize = owned.iter().map(BTreeSet::len).sum();
        let done = union == all && total == all.len() && owned.iter().all(|o| !o.is_empty());
        std::future::ready(Ok(done.then_some(())))
    })
    .await;
    if let Err(e) = shared {
        panic!("{what}: partitions not shared ({e}): {owned:?}");
    }
}

/// Waits until `node` owns every partition.
async fn wait_owns_all(what: &str, node: &Node) {
    let all: BTreeSet<i32> = (0..PARTITIONS).collect();
    let owned = poll(what, SETTLE, Duration::from_millis(50), || {
        std::future::ready(Ok((node.assigned() == all).then_some(())))
    })
    .await;
    if let Err(e) = owned {
        panic!(
            "{what}: the survivor owns {:?}, not every partition ({e})",
            node.assigned()
        );
    }
}

/// A user's client on one gateway.
#[derive(Clone)]
struct Client {
    user: User,
    gateway: usize,
}

impl Client {
    fn who(&self) -> String {
        format!("{}@gw{}", self.user.name, self.gateway)
    }
}

/// What the frames of one live session carried.
#[derive(Default)]
struct Log {
    messages: Vec<Message>,
    caught_up: HashSet<String>,
    /// Set when the stream ended or a resume was refused.
    ended: Option<String>,
}

/// A live session whose frames a task records.
struct Watch {
    who: String,
    convs: Vec<String>,
    log: Arc<Mutex<Log>>,
    /// Keeps the client half open.
    _tx: mpsc::Sender<ClientFrame>,
    task: JoinHandle<()>,
}

impl Watch {
    /// Opens a session for `client`, resuming each of `convs` from 0 (so it
    /// must carry every message of each, from history then live).
    async fn open(client: &Client, convs: Vec<String>) -> Self {
        let resume = Resume {
            last_seq: convs.iter().map(|c| (c.clone(), 0)).collect(),
        };
        let session = client
            .user
            .session(client_frame::Frame::Resume(resume))
            .await
            .expect("connect");
        let Session { tx, mut inbound } = session;
        let log = Arc::new(Mutex::new(Log::default()));
        let l = log.clone();
        let task = tokio::spawn(async move {
            loop {
                let next = inbound.next().await.transpose();
                let mut log = lock(&l);
                match next {
                    Ok(Some(ServerFrame { frame: Some(f) })) => match f {
                        server_frame::Frame::Message(m) => log.messages.push(m),
                        server_frame::Frame::CaughtUp(c) => match c.error {
                            None => {
                                log.caught_up.insert(c.conversation_id);
                            }
                            Some(e) => {
                                log.ended =
                                    Some(format!("resume of {} refused: {e:?}", c.conversation_id))
                            }
                        },
                        _ => {}
                    },
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        log.ended = Some("stream ended".into());
                        return;
                    }
                    Err(status) => {
                        log.ended = Some(format!("stream failed: {status:?}"));
                        return;
                    }
                }
            }
        });
        Self {
            who: client.who(),
            convs,
            log,
            _tx: tx,
            task,
        }
    }

    fn caught_up(&self) -> bool {
        let log = lock(&self.log);
        self.convs.iter().all(|c| log.caught_up.contains(c))
    }

    fn ended(&self) -> Option<String> {
        lock(&self.log).ended.clone()
    }

    /// The highest seq delivered for `conv`.
    fn last(&self, conv: &str) -> u64 {
        let log = lock(&self.log);
        log.messages
            .iter()
            .filter(|m| m.conversation_id == conv)
            .map(|m| m.seq)
            .max()
            .unwrap_or(0)
    }

    /// The messages delivered for `conv`, in arrival order.
    fn delivered(&self, conv: &str) -> Vec<Message> {
        let log = lock(&self.log);
        log.messages
            .iter()
            .filter(|m| m.conversation_id == conv)
            .cloned()
            .collect()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One acknowledged send.
#[derive(Debug, Clone)]
struct Acked {
    conv: String,
    sender: String,
    client_msg_id: String,
    seq: u64,
    /// Whether it took more than one attempt (an earlier one failed).
    retried: bool,
}

/// Failures seen by senders before a retry succeeded: (who, code, message).
type Failures = Arc<Mutex<Vec<(String, Code, String)>>>;

/// Sends one message, retrying with the same `client_msg_id` on failure
/// (what a client must do after UNAVAILABLE) for up to 40 s.
async fn send_until_acked(
    client: &Client,
    conv: &str,
    client_msg_id: &str,
    failures: &Failures,
) -> Acked {
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let body = format!("{client_msg_id} from {}", client.who());
        match client.user.send(conv, client_msg_id, &body).await {
            Ok(m) => {
                assert_eq!(m.conversation_id, conv);
                assert_eq!(m.client_msg_id, client_msg_id);
                assert_eq!(m.sender_id, client.user.name);
                return Acked {
                    conv: conv.to_string(),
                    sender: client.user.name.clone(),
                    client_msg_id: client_msg_id.to_string(),
                    seq: m.seq,
                    retried: attempts > 1,
                };
            }
            Err(status) => {
                lock(failures).push((client.who(), status.code(), status.message().to_string()));
                assert!(
                    Instant::now() < deadline,
                    "{client_msg_id} by {} not acknowledged after {attempts} attempts: {status:?}",
                    client.who()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The running cluster with its users, conversations and live sessions.
struct Chat {
    cluster: Cluster,
    /// One client per (user, gateway), in `USERS` order.
    clients: Vec<Client>,
    convs: Vec<Conv>,
    watches: Vec<Watch>,
}

impl Chat {
    /// Closes the sessions and stops the cluster, saying how long the test
    /// (from `started`) took.
    async fn stop(self, started: Instant) {
        eprintln!("done in {:?}", started.elapsed());
        let Chat {
            cluster, watches, ..
        } = self;
        drop(watches);
        cluster.stop().await;
    }

    /// Starts 2 gateways, 2 routers and 2 history processes, waits until
    /// both groups share the partitions, creates the conversations and opens
    /// a session per (user, gateway), caught up.
    async fn start(send_timeout: Duration) -> Self {
        let mut shape = Shape {
            gateways: 2,
            routers: 2,
            histories: 2,
            partitions: PARTITIONS,
            ..Shape::default()
        };
        shape.gateway.send_timeout = send_timeout;
        let cluster = Cluster::start(shape).await;
        let histories: Vec<&Node> = cluster.histories.iter().collect();
        let routers: Vec<&Node> = cluster.routers.iter().collect();
        wait_shared("history group", &histories).await;
        wait_shared("router group", &routers).await;

        let mut clients = Vec::new();
        for (name, gateways) in USERS {
            for &g in *gateways {
                clients.push(Client {
                    user: cluster.user(g, name).await,
                    gateway: g,
                });
            }
        }
        let mut convs = Vec::new();
        for (i, (kind, members)) in CONVERSATIONS.iter().enumerate() {
            let creator = clients
                .iter()
                .find(|c| c.user.name == members[0])
                .expect("creator has a client");
            let created = creator
                .user
                .create(*kind, &format!("conv {i}"), &members[1..])
                .await
                .unwrap_or_else(|e| panic!("create conversation {i}: {e:?}"));
            let mut got: Vec<String> = created.member_ids.clone();
            got.sort();
            let mut want: Vec<String> = members.iter().map(|m| m.to_string()).collect();
            want.sort();
            assert_eq!(got, want, "members of {}", created.id);
            convs.push(Conv {
                id: created.id,
                members: want,
            });
        }
        let mut watches = Vec::new();
        for client in &clients {
            let mine = convs
                .iter()
                .filter(|c| c.members.contains(&client.user.name))
                .map(|c| c.id.clone())
                .collect();
            watches.push(Watch::open(client, mine).await);
        }
        wait_until("every session caught up", || {
            for w in &watches {
                if let Some(e) = w.ended() {
                    panic!("session {} ended: {e}", w.who);
                }
            }
            watches.iter().all(Watch::caught_up)
        })
        .await;
        Self {
            cluster,
            clients,
            convs,
            watches,
        }
    }

    /// The conversations `client`'s user belongs to.
    fn convs_of(&self, client: &Client) -> Vec<String> {
        self.convs
            .iter()
            .filter(|c| c.members.contains(&client.user.name))
            .map(|c| c.id.clone())
            .collect()
    }

    /// Starts one sender per client: each sends in turn to its user's
    /// conversations, `per_client` messages or until `stop`.
    fn senders(
        &self,
        per_client: usize,
        stop: Arc<AtomicBool>,
        progress: Arc<AtomicUsize>,
        failures: Failures,
    ) -> Vec<JoinHandle<Vec<Acked>>> {
        self.clients
            .iter()
            .enumerate()
            .map(|(i, client)| {
                let client = client.clone();
                let convs = self.convs_of(&client);
                let stop = stop.clone();
                let progress = progress.clone();
                let failures = failures.clone();
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for k in 0..per_client {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let conv = &convs[(k + i) % convs.len()];
                        let id = format!("{}-{k}", client.who());
                        acked.push(send_until_acked(&client, conv, &id, &failures).await);
                        progress.fetch_add(1, Ordering::Relaxed);
                    }
                    acked
                })
            })
            .collect()
    }

    /// Every message of `conv` from history, oldest first.
    async fn history(&self, conv: &Conv) -> Vec<Message> {
        let reader = self
            .clients
            .iter()
            .find(|c| conv.members.contains(&c.user.name))
            .expect("a member reads");
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = reader
                .user
                .history(&conv.id, None, Some(after), 500)
                .await
                .unwrap_or_else(|e| panic!("history of {}: {e:?}", conv.id));
            all.extend(page.messages);
            after = all.last().map(|m: &Message| m.seq).unwrap_or(0);
            if !page.has_more {
                return all;
            }
        }
    }

    /// Checks every promise against history: each acknowledged send is
    /// stored once with its seq, nothing else was stored, seqs are 1..=n, and
    /// every session of every member saw exactly 1..=n in order with the
    /// stored content. Returns the stored user messages per conversation.
    async fn check(&self, acked: &[Acked]) -> BTreeMap<String, usize> {
        let mut by_key: HashMap<(String, String, String), &Acked> = HashMap::new();
        for a in acked {
            let key = (a.conv.clone(), a.sender.clone(), a.client_msg_id.clone());
            assert!(by_key.insert(key, a).is_none(), "sent twice: {a:?}");
        }
        let mut stored = BTreeMap::new();
        let mut histories = HashMap::new();
        for conv in &self.convs {
            let msgs = self.history(conv).await;
            let seqs: Vec<u64> = msgs.iter().map(|m| m.seq).collect();
            let n = msgs.len() as u64;
            assert_eq!(
                seqs,
                (1..=n).collect::<Vec<_>>(),
                "seqs of {} are 1..=n",
                conv.id
            );
            let mut keys = HashSet::new();
            let mut users = 0;
            for m in &msgs {
                if m.kind == MessageKind::System as i32 {
                    continue;
                }
                users += 1;
                let key = (
                    m.conversation_id.clone(),
                    m.sender_id.clone(),
                    m.client_msg_id.clone(),
                );
                assert!(
                    keys.insert(key.clone()),
                    "stored twice in {}: {key:?}",
                    conv.id
                );
                let a = by_key
                    .get(&key)
                    .unwrap_or_else(|| panic!("stored but never acknowledged: {m:?}"));
                assert_eq!(
                    a.seq, m.seq,
                    "acknowledged seq of {key:?} is its stored seq"
                );
                assert!(
                    m.body.starts_with(&format!("{} from ", m.client_msg_id)),
                    "the first body is kept: {m:?}"
                );
            }
            stored.insert(conv.id.clone(), users);
            histories.insert(conv.id.clone(), msgs);
        }
        let total: usize = stored.values().sum();
        assert_eq!(
            total,
            acked.len(),
            "every acknowledged send is stored exactly once"
        );

        // Every member session carries every message, once, in order.
        wait_until("every session to receive every message", || {
            for w in &self.watches {
                if let Some(e) = w.ended() {
                    panic!("session {} ended: {e}", w.who);
                }
            }
            self.watches.iter().all(|w| {
                w.convs
                    .iter()
                    .all(|c| w.last(c) >= histories[c].last().map(|m| m.seq).unwrap_or(0))
            })
        })
        .await;
        for w in &self.watches {
            for c in &w.convs {
                let got = w.delivered(c);
                let want = &histories[c];
                assert_eq!(
                    seqs(&got),
                    seqs(want),
                    "session {} saw every seq of {c} once, in order",
                    w.who
                );
                for (g, h) in got.iter().zip(want) {
                    assert_eq!(
                        (&g.sender_id, &g.client_msg_id, &g.body),
                        (&h.sender_id, &h.client_msg_id, &h.body),
                        "session {} got seq {} of {c} as stored",
                        w.who,
                        g.seq
                    );
                }
            }
        }
        stored
    }
}

/// Joins the senders and returns every acknowledged send.
async fn join(senders: Vec<JoinHandle<Vec<Acked>>>) -> Vec<Acked> {
    let mut acked = Vec::new();
    for s in senders {
        acked.extend(s.await.expect("sender did not panic"));
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_each_service_share_partitions_and_keep_every_promise() {
    let started = Instant::now();
    let chat = Chat::start(Duration::from_secs(10)).await;
    eprintln!(
        "cluster up, groups settled, sessions caught up in {:?}",
        started.elapsed()
    );

    let failures: Failures = Arc::default();
    let progress = Arc::new(AtomicUsize::new(0));
    let senders = chat.senders(
        40,
        Arc::new(AtomicBool::new(false)),
        progress,
        failures.clone(),
    );
    let acked = join(senders).await;
    eprintln!(
        "{} sends acknowledged at {:?}",
        acked.len(),
        started.elapsed()
    );
    assert_eq!(acked.len(), chat.clients.len() * 40);
    assert!(
        lock(&failures).is_empty(),
        "sends failed in a steady cluster: {:?}",
        lock(&failures)
    );

    // Retries (through either gateway when the user has two), all at once,
    // return the original seq and store nothing.
    let retries = acked.iter().enumerate().step_by(7).map(|(i, a)| {
        let mine: Vec<&Client> = chat
            .clients
            .iter()
            .filter(|c| c.user.name == a.sender)
            .collect();
        let client = mine[i % mine.len()];
        async move {
            let again = client
                .user
                .send(&a.conv, &a.client_msg_id, "a different body")
                .await
                .unwrap_or_else(|e| panic!("retry of {a:?}: {e:?}"));
            assert_eq!(again.seq, a.seq, "retry of {a:?} via {}", client.who());
            assert_ne!(
                again.body, "a different body",
                "a retry returns the original"
            );
        }
    });
    futures::future::join_all(retries).await;
    eprintln!("retries answered at {:?}", started.elapsed());

    let stored = chat.check(&acked).await;
    eprintln!("stored user messages per conversation: {stored:?}");

    // Still shared after the traffic.
    let histories: Vec<&Node> = chat.cluster.histories.iter().collect();
    let routers: Vec<&Node> = chat.cluster.routers.iter().collect();
    wait_shared("history group", &histories).await;
    wait_shared("router group", &routers).await;
    chat.stop(started).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivors_take_over_the_partitions_of_a_stopped_router_and_history() {
    let started = Instant::now();
    let mut chat = Chat::start(Duration::from_secs(3)).await;
    eprintln!(
        "cluster up, groups settled, sessions caught up in {:?}",
        started.elapsed()
    );

    let failures: Failures = Arc::default();
    let progress = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let senders = chat.senders(usize::MAX, stop.clone(), progress.clone(), failures.clone());
    // A client syncs again and again through the stop and the takeover,
    // keeping a copy from what each sync reports: with both history
    // processes committing to their partitions, and then one taking the
    // other's over, no change may slip past its cursor.
    let synced_until = Arc::new(AtomicBool::new(false));
    let syncer = sync_loop(chat.clients[0].user.clone(), synced_until.clone());

    wait_until("traffic before the stop", || {
        progress.load(Ordering::Relaxed) >= 80
    })
    .await;
    eprintln!(
        "stopping router 1 (owns {:?}) and history 1 (owns {:?}) at {:?}, {} acked",
        chat.cluster.routers[1].assigned(),
        chat.cluster.histories[1].assigned(),
        started.elapsed(),
        progress.load(Ordering::Relaxed)
    );
    chat.cluster.routers[1].stop().await;
    chat.cluster.histories[1].stop().await;
    eprintln!("stopped at {:?}", started.elapsed());

    wait_owns_all("router group", &chat.cluster.routers[0]).await;
    wait_owns_all("history group", &chat.cluster.histories[0]).await;
    let at_takeover = progress.load(Ordering::Relaxed);
    eprintln!(
        "survivors own every partition at {:?}, {at_takeover} acked",
        started.elapsed()
    );

    wait_until_within("traffic after the takeover", SETTLE, || {
        progress.load(Ordering::Relaxed) >= at_takeover + 80
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = join(senders).await;
    eprintln!(
        "{} sends acknowledged at {:?}",
        acked.len(),
        started.elapsed()
    );

    // One last message per conversation: any gap a session has because the
    // stopped router died mid-delivery is filled before it.
    for (i, conv) in chat.convs.iter().enumerate() {
        let client = chat
            .clients
            .iter()
            .find(|c| c.user.name == conv.members[0])
            .expect("a member sends")
            .clone();
        acked.push(send_until_acked(&client, &conv.id, &format!("last-{i}"), &failures).await);
    }

    let retried: Vec<&Acked> = acked.iter().filter(|a| a.retried).collect();
    let fails = lock(&failures).clone();
    let codes: BTreeSet<String> = fails.iter().map(|f| format!("{:?}", f.1)).collect();
    eprintln!(
        "{} sends needed a retry; {} failed attempts, codes {codes:?}",
        retried.len(),
        fails.len()
    );
    for (who, code, message) in &fails {
        assert!(
            matches!(code, Code::Unavailable),
            "{who}: a send failed with {code:?} ({message}); only UNAVAILABLE (retry safe) is expected"
        );
    }

    let stored = chat.check(&acked).await;
    eprintln!("stored user messages per conversation: {stored:?}");
    synced_until.store(true, Ordering::SeqCst);
    let (copy, syncs) = syncer.await.expect("syncer");
    let mut truth = SyncCopy::default();
    chat.clients[0]
        .user
        .sync_into(&mut truth)
        .await
        .expect("a full sync");
    eprintln!("{syncs} syncs through the takeover");
    assert!(syncs > 3, "the client synced through the takeover: {syncs}");
    assert_eq!(copy.conversations, truth.conversations);
    chat.stop(started).await;
}

/// Syncs `user` every 50 ms (UNAVAILABLE during the takeover is retried
/// at the next tick) until `until` is set, then once more; the copy it
/// kept and how many syncs it took.
fn sync_loop(user: User, until: Arc<AtomicBool>) -> JoinHandle<(SyncCopy, usize)> {
    tokio::spawn(async move {
        let mut copy = SyncCopy::default();
        let mut syncs = 0;
        let mut ticks = tokio::time::interval(Duration::from_millis(50));
        loop {
            ticks.tick().await;
            let last = until.load(Ordering::SeqCst);
            match user.sync_into(&mut copy).await {
                Ok(_) => syncs += 1,
                Err(s) if s.code() == Code::Unavailable && !last => {}
                Err(s) => panic!("sync failed: {s:?}"),
            }
            if last {
                return (copy, syncs);
            }
        }
    })
}
