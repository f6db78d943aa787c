//! The chaos run: the distributed stack as real processes (two gateways, two
//! routers, two history instances, the nisshi broker on its own PostgreSQL,
//! and history's PostgreSQL), clients sending at a steady rate in DIRECT and
//! GROUP conversations, and a schedule that kills (SIGKILL) or stops
//! (SIGTERM) each service, the broker and the database in turn and starts
//! them again. Afterwards a checker compares what the clients were
//! acknowledged, what they received and what PostgreSQL holds, and reports
//! one line per invariant ([`Report`]).
//!
//! Clients behave as the README tells users to: a send that fails with
//! UNAVAILABLE (or a broken connection) is retried with the same
//! `client_msg_id`, on the other gateway if one is down; a `Connect` stream
//! that breaks is opened again with a `resume` of the last seq received per
//! conversation. Nothing else: no client-side dedupe or reordering, so the
//! receivers see exactly what the servers sent.
//!
//! Used by `make chaos` (`confab-chaos`, long) and by `tests/tests/chaos.rs`
//! (short, in `make test`).

use confab_proto::v1::chat_client::ChatClient;
use confab_proto::v1::{
    client_frame, server_frame, ClientFrame, ConversationKind, CreateConversationRequest, Resume,
    SendMessageRequest,
};
use confab_tests::broker::Broker;
use confab_tests::postgres::PgCluster;
use confab_tests::procs::{ServiceProc, Stopped};
use confab_tests::stack::{ProcStack, Role};
use confab_tests::token;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// What a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Gateway 0 or 1.
    Gateway(usize),
    /// Router 0 or 1.
    Router(usize),
    /// History instance 0 or 1.
    History(usize),
    /// The Kafka-API broker.
    Broker,
    /// History's PostgreSQL.
    Postgres,
}

/// One event of the schedule: the target goes down, stays down for
/// [`Config::down_for`], and comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A crash: SIGKILL (the broker), `pg_ctl -m immediate stop` (PostgreSQL).
    Kill(Target),
    /// A graceful stop: SIGTERM, which must exit 0 within the grace period.
    Term(Target),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (how, target) = match self {
            Fault::Kill(t) => ("kill -9", t),
            Fault::Term(t) => ("SIGTERM", t),
        };
        match target {
            Target::Gateway(i) => write!(f, "{how} gateway-{i}"),
            Target::Router(i) => write!(f, "{how} router-{i}"),
            Target::History(i) => write!(f, "{how} history-{i}"),
            Target::Broker => write!(f, "{how} broker"),
            Target::Postgres if *self == Fault::Kill(Target::Postgres) => {
                write!(f, "crash postgres (immediate stop)")
            }
            Target::Postgres => write!(f, "{how} postgres"),
        }
    }
}

/// The scenario.
#[derive(Debug, Clone)]
pub struct Config {
    /// Users; user `i` is in DIRECT conversations with its neighbours and in
    /// the groups below.
    pub users: usize,
    /// GROUP conversations, each of `group_size` consecutive users.
    pub groups: usize,
    /// Members per group.
    pub group_size: usize,
    /// Each user sends one message per interval (waiting for its ack).
    pub send_interval: Duration,
    /// How long clients send; the schedule runs within it.
    pub load_for: Duration,
    /// The schedule, spread evenly over `load_for`, repeated `rounds` times.
    pub faults: Vec<Fault>,
    /// How many times the schedule runs.
    pub rounds: usize,
    /// How long a target stays down.
    pub down_for: Duration,
    /// Bound on the end: pending sends, and receivers catching up.
    pub settle_for: Duration,
    /// A client unable to send for longer than this is a violation.
    pub max_outage: Duration,
    /// Every call must be answered (OK or an error) within this: failing
    /// fast, not hanging, while a dependency is down.
    pub max_call: Duration,
    /// `CONFAB_SHUTDOWN_GRACE_MS` of every service; a SIGTERM must end the
    /// process within it (plus a second).
    pub shutdown_grace: Duration,
    /// Where the services' logs go (kept); a temporary directory otherwise.
    pub log_dir: Option<PathBuf>,
}

impl Config {
    /// Every fault once: each service crashed and gracefully stopped, the
    /// broker crashed, PostgreSQL crashed.
    pub fn every_fault() -> Vec<Fault> {
        vec![
            Fault::Kill(Target::Gateway(0)),
            Fault::Kill(Target::Router(0)),
            Fault::Kill(Target::History(0)),
            Fault::Kill(Target::Broker),
            Fault::Kill(Target::Postgres),
            Fault::Term(Target::Gateway(1)),
            Fault::Term(Target::Router(1)),
            Fault::Term(Target::History(1)),
        ]
    }

    /// A rolling restart: every service stopped with SIGTERM and started
    /// again, one after the other.
    pub fn rolling_restart() -> Vec<Fault> {
        vec![
            Fault::Term(Target::History(0)),
            Fault::Term(Target::History(1)),
            Fault::Term(Target::Router(0)),
            Fault::Term(Target::Router(1)),
            Fault::Term(Target::Gateway(0)),
            Fault::Term(Target::Gateway(1)),
        ]
    }

    /// The short run in `make test`: every fault once in about a minute.
    pub fn short() -> Self {
        Self {
            users: 10,
            groups: 2,
            group_size: 5,
            send_interval: Duration::from_millis(250),
            load_for: Duration::from_secs(45),
            faults: Self::every_fault(),
            rounds: 1,
            down_for: Duration::from_secs(2),
            settle_for: Duration::from_secs(60),
            max_outage: Duration::from_secs(30),
            max_call: Duration::from_secs(6),
            shutdown_grace: Duration::from_secs(10),
            log_dir: None,
        }
    }

    /// `make chaos`: more clients, longer outages, every fault and a rolling
    /// restart of every service, twice.
    pub fn long() -> Self {
        Self {
            users: 24,
            groups: 4,
            group_size: 8,
            send_interval: Duration::from_millis(200),
            load_for: Duration::from_secs(240),
            faults: [Self::every_fault(), Self::rolling_restart()].concat(),
            rounds: 2,
            down_for: Duration::from_secs(5),
            settle_for: Duration::from_secs(90),
            ..Self::short()
        }
    }
}

/// What the checker found. Every count but the informational ones must be 0.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Sends acknowledged with a seq.
    pub acknowledged: u64,
    /// Sends given up at the end without an ack (allowed: their fate is
    /// unknown to the client, and either outcome is correct).
    pub unacknowledged: u64,
    /// Messages stored in PostgreSQL.
    pub stored: u64,
    /// Messages received over `Connect` streams.
    pub delivered: u64,
    /// Deliveries PostgreSQL says were due (member × message).
    pub due: u64,
    /// Acknowledged, but not in PostgreSQL under that seq with that key.
    pub acked_missing: u64,
    /// One `client_msg_id` stored twice, or acknowledged with two seqs.
    pub stored_twice: u64,
    /// A stream carried a seq it had already carried (before or after a resume).
    pub delivered_twice: u64,
    /// Holes in a conversation's seqs in PostgreSQL.
    pub store_gaps: u64,
    /// A stream jumped over seqs (later filled or not).
    pub delivery_gaps: u64,
    /// A stream carried a seq lower than one it had already carried.
    pub out_of_order: u64,
    /// Due deliveries never received once everything was back.
    pub undelivered: u64,
    /// A delivered message whose content differs from what is stored.
    pub mismatched: u64,
    /// Calls that failed with a status a retry cannot fix.
    pub unexpected_errors: u64,
    /// Examples of those errors.
    pub error_examples: Vec<String>,
    /// Graceful stops that did not exit 0 within the grace period.
    pub bad_stops: u64,
    /// Graceful stops and how long each took.
    pub stops: Vec<(String, Stopped)>,
    /// The longest time one client could not get a send acknowledged.
    pub longest_outage: Duration,
    /// The bound on that.
    pub max_outage: Duration,
    /// The slowest answer to any call (send or read), OK or not.
    pub slowest_call: Duration,
    /// The bound on that.
    pub max_call: Duration,
    /// History reads answered OK, and answered UNAVAILABLE.
    pub reads: (u64, u64),
    /// Faults applied, in order, with the time each target was down.
    pub faults: Vec<(String, Duration)>,
    /// `Connect` streams opened again after breaking.
    pub reconnects: u64,
    /// How long the load phase ran.
    pub load_time: Duration,
}

impl Report {
    /// The sum of every violation.
    pub fn violations(&self) -> u64 {
        self.acked_missing
            + self.stored_twice
            + self.delivered_twice
            + self.store_gaps
            + self.delivery_gaps
            + self.out_of_order
            + self.undelivered
            + self.mismatched
            + self.unexpected_errors
            + self.bad_stops
            + u64::from(self.longest_outage > self.max_outage)
            + u64::from(self.slowest_call > self.max_call)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "faults:")?;
        for (fault, down) in &self.faults {
            writeln!(f, "  {fault} (down {} ms)", down.as_millis())?;
        }
        for (who, stop) in &self.stops {
            let status = stop
                .status
                .map_or("killed after the limit".to_string(), |s| s.to_string());
            writeln!(
                f,
                "  graceful stop of {who}: {status} in {} ms",
                stop.took.as_millis()
            )?;
        }
        let secs = self.load_time.as_secs_f64().max(0.001);
        writeln!(
            f,
            "traffic: {} acknowledged ({:.0}/s), {} unacknowledged at the end, {} stored, {} delivered of {} due, {} stream reconnects",
            self.acknowledged,
            self.acknowledged as f64 / secs,
            self.unacknowledged,
            self.stored,
            self.delivered,
            self.due,
            self.reconnects
        )?;
        writeln!(
            f,
            "reads: {} answered, {} UNAVAILABLE (failing fast while a dependency was down)",
            self.reads.0, self.reads.1
        )?;
        let line = |f: &mut fmt::Formatter<'_>, name: &str, n: u64, detail: String| {
            let verdict = if n == 0 { "ok  " } else { "FAIL" };
            writeln!(f, "{verdict} {name}: {n}{detail}")
        };
        line(
            f,
            "acknowledged-but-missing",
            self.acked_missing,
            format!(" (of {} acknowledged)", self.acknowledged),
        )?;
        line(
            f,
            "duplicated",
            self.stored_twice + self.delivered_twice,
            format!(
                " (stored or acknowledged twice: {}, delivered twice: {})",
                self.stored_twice, self.delivered_twice
            ),
        )?;
        line(
            f,
            "gaps",
            self.store_gaps + self.delivery_gaps,
            format!(
                " (in storage: {}, in delivery: {})",
                self.store_gaps, self.delivery_gaps
            ),
        )?;
        line(
            f,
            "out-of-order deliveries",
            self.out_of_order,
            String::new(),
        )?;
        line(
            f,
            "undelivered",
            self.undelivered,
            format!(" (of {} due)", self.due),
        )?;
        line(
            f,
            "delivered content differs from storage",
            self.mismatched,
            String::new(),
        )?;
        line(
            f,
            "unexpected errors",
            self.unexpected_errors,
            if self.error_examples.is_empty() {
                String::new()
            } else {
                format!(" (e.g. {})", self.error_examples.join("; "))
            },
        )?;
        line(
            f,
            "graceful stops not clean within the grace period",
            self.bad_stops,
            format!(" (of {})", self.stops.len()),
        )?;
        line(
            f,
            "longest time a client could not send",
            u64::from(self.longest_outage > self.max_outage),
            format!(
                " violation ({} ms; limit {} ms)",
                self.longest_outage.as_millis(),
                self.max_outage.as_millis()
            ),
        )?;
        line(
            f,
            "slowest answer to a call",
            u64::from(self.slowest_call > self.max_call),
            format!(
                " violation ({} ms; limit {} ms)",
                self.slowest_call.as_millis(),
                self.max_call.as_millis()
            ),
        )?;
        write!(f, "violations: {}", self.violations())
    }
}

/// The processes of the run.
struct Stack {
    /// Gateways, routers and history instances (two of each).
    procs: ProcStack,
    /// History's database server.
    pg: PgCluster,
    /// The broker's own storage (never faulted: Kafka's disks are not ours).
    _broker_pg: PgCluster,
    /// The broker.
    broker: Broker,
}

impl Stack {
    async fn start(config: &Config) -> Stack {
        let pg = PgCluster::start_local().expect("postgres for history");
        let database_url = pg.fresh_database().await.expect("history database");
        let broker_pg = PgCluster::start_local().expect("postgres for the broker");
        let broker = Broker::start_postgres(&broker_pg).await;
        let history_timeout = ("CONFAB_HISTORY_TIMEOUT_MS", "2000");
        let mut builder = ProcStack::builder("chaos")
            .histories(2)
            .routers(2)
            .gateways(2)
            .kafka_prefix(format!("chaos{}", std::process::id()))
            .partitions(4)
            .env("CONFAB_KAFKA_SESSION_TIMEOUT_MS", "6000")
            .env("CONFAB_KAFKA_PRODUCE_TIMEOUT_MS", "2000")
            .log("info")
            .env(
                "CONFAB_SHUTDOWN_GRACE_MS",
                config.shutdown_grace.as_millis().to_string(),
            )
            .env_for(Role::History, "CONFAB_DATABASE_ACQUIRE_TIMEOUT_MS", "1000")
            .env_for(Role::Router, history_timeout.0, history_timeout.1)
            .env_for(Role::Gateway, history_timeout.0, history_timeout.1)
            .env_for(Role::Gateway, "CONFAB_SEND_TIMEOUT_MS", "4000");
        if let Some(dir) = &config.log_dir {
            builder = builder.log_dir(dir);
        }
        Stack {
            procs: builder.start(&broker, &database_url),
            pg,
            _broker_pg: broker_pg,
            broker,
        }
    }

    fn gateway_addrs(&self) -> Vec<SocketAddr> {
        self.procs
            .gateways
            .iter()
            .map(ServiceProc::socket_addr)
            .collect()
    }

    fn service(&mut self, target: Target) -> Option<&mut ServiceProc> {
        let (role, i) = match target {
            Target::Gateway(i) => (Role::Gateway, i),
            Target::Router(i) => (Role::Router, i),
            Target::History(i) => (Role::History, i),
            Target::Broker | Target::Postgres => return None,
        };
        self.procs.of_mut(role).get_mut(i)
    }

    /// Applies `fault`, waits `down_for`, and brings the target back;
    /// returns a graceful stop's result, if it was one.
    async fn apply(
        &mut self,
        fault: Fault,
        down_for: Duration,
        grace: Duration,
    ) -> Option<Stopped> {
        let mut stopped = None;
        match fault {
            Fault::Kill(Target::Broker) | Fault::Term(Target::Broker) => {
                self.broker.kill9();
                tokio::time::sleep(down_for).await;
                self.broker.restart().await;
            }
            Fault::Kill(Target::Postgres) | Fault::Term(Target::Postgres) => {
                tokio::task::block_in_place(|| self.pg.stop_immediate());
                tokio::time::sleep(down_for).await;
                tokio::task::block_in_place(|| self.pg.start_again());
            }
            Fault::Kill(target) => {
                let s = self.service(target).expect("a service");
                s.kill9();
                tokio::time::sleep(down_for).await;
                tokio::task::block_in_place(|| s.start());
            }
            Fault::Term(target) => {
                let s = self.service(target).expect("a service");
                stopped = Some(s.terminate(grace + Duration::from_secs(5)).await);
                tokio::time::sleep(down_for).await;
                tokio::task::block_in_place(|| s.start());
            }
        }
        stopped
    }

    /// The last lines of every service's log (for a failed run).
    fn tails(&self) -> String {
        self.procs.tails(15)
    }
}

/// A conversation of the run and its members.
#[derive(Debug, Clone)]
struct Conv {
    id: String,
    members: Vec<String>,
}

/// A client's connection to every gateway (lazily connected, re-connected
/// by tonic after a failure).
#[derive(Clone)]
struct Client {
    name: String,
    bearer: String,
    gateways: Vec<ChatClient<Channel>>,
}

impl Client {
    fn new(name: &str, addrs: &[SocketAddr]) -> Self {
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
struct Log {
    /// (conversation, client_msg_id) → acknowledged seqs.
    acked: HashMap<(String, String), BTreeSet<u64>>,
    unacknowledged: u64,
    unexpected: Vec<String>,
    longest_outage: Duration,
    slowest_call: Duration,
    reads: (u64, u64),
    /// (user, conversation) → seqs received, in arrival order.
    received: HashMap<(String, String), Vec<Received>>,
    /// (user, conversation) → the highest seq received.
    cursors: HashMap<(String, String), u64>,
    reconnects: u64,
}

/// A message as a stream carried it: seq, sender, client_msg_id.
type Received = (u64, String, String);

type Shared = Arc<Mutex<Log>>;

fn lock(log: &Shared) -> std::sync::MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends one message per interval until `stop_at`, each retried with the
/// same key until acknowledged or `give_up_at`.
async fn sender(
    client: Client,
    convs: Vec<String>,
    interval: Duration,
    stop_at: Instant,
    give_up_at: Instant,
    log: Shared,
) {
    let mut gw = client.name.len() % client.gateways.len();
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
                    let mut l = lock(&log);
                    l.unexpected.push(format!(
                        "send {key}: {:?} {}",
                        status.code(),
                        status.message()
                    ));
                    break;
                }
            }
        }
    }
}

/// Reads the newest page of `conv` every interval until `stop_at`: OK, or
/// UNAVAILABLE while history or its database is down, and always in time.
async fn reader(client: Client, conv: String, interval: Duration, stop_at: Instant, log: Shared) {
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
            Err(s) => l
                .unexpected
                .push(format!("read {conv}: {:?} {}", s.code(), s.message())),
        }
    }
}

/// Keeps a `Connect` stream open (re-opening it with a resume after a
/// break) until `done`, recording every message it carries.
async fn receiver(
    client: Client,
    convs: Vec<String>,
    done: tokio::sync::watch::Receiver<bool>,
    log: Shared,
) {
    let mut gw = client.name.len() % client.gateways.len();
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
                    lock(&log).unexpected.push(format!(
                        "connect {}: {:?} {}",
                        client.name,
                        status.code(),
                        status.message()
                    ));
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
                        lock(&log).unexpected.push(format!(
                            "stream {}: {:?} {}",
                            client.name,
                            status.code(),
                            status.message()
                        ));
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
async fn create_conversations(config: &Config, addrs: &[SocketAddr]) -> Vec<Conv> {
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

/// Every stored message: conversation → seq → (sender, client_msg_id), and
/// each conversation's last_seq.
type Stored = BTreeMap<String, BTreeMap<u64, (String, String)>>;

async fn read_store(database_url: &str) -> (Stored, BTreeMap<String, u64>, u64) {
    use sqlx::Row as _;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await
        .expect("connect to history's database");
    let rows = sqlx::query("SELECT conversation_id, seq, sender_id, client_msg_id FROM messages")
        .fetch_all(&pool)
        .await
        .expect("read messages");
    let mut stored: Stored = BTreeMap::new();
    let mut twice = 0u64;
    let mut keys: HashMap<(String, String, String), u64> = HashMap::new();
    for row in rows {
        let conv: String = row.get(0);
        let seq: i64 = row.get(1);
        let sender: String = row.get(2);
        let key: String = row.get(3);
        if !key.is_empty() {
            let n = keys
                .entry((conv.clone(), sender.clone(), key.clone()))
                .or_insert(0);
            *n += 1;
            if *n > 1 {
                twice += 1;
            }
        }
        if stored
            .entry(conv)
            .or_default()
            .insert(seq as u64, (sender, key))
            .is_some()
        {
            twice += 1;
        }
    }
    let last: BTreeMap<String, u64> = sqlx::query("SELECT id, last_seq FROM conversations")
        .fetch_all(&pool)
        .await
        .expect("read conversations")
        .into_iter()
        .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) as u64))
        .collect();
    pool.close().await;
    (stored, last, twice)
}

/// Runs the scenario and returns what the checker found; panics only when
/// the stack cannot be set up at all. On violations, the services' log
/// tails are printed to stderr.
pub async fn run(config: Config) -> Report {
    let mut stack = Stack::start(&config).await;
    let addrs = stack.gateway_addrs();
    let convs = create_conversations(&config, &addrs).await;
    let mut by_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in &convs {
        for m in &c.members {
            by_user.entry(m.clone()).or_default().push(c.id.clone());
        }
    }
    let log: Shared = Arc::default();
    let (finish, done) = tokio::sync::watch::channel(false);
    let receivers: Vec<_> = by_user
        .iter()
        .map(|(user, cs)| {
            tokio::spawn(receiver(
                Client::new(user, &addrs),
                cs.clone(),
                done.clone(),
                log.clone(),
            ))
        })
        .collect();
    // Every stream has caught up on the creation events before load starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = {
            let l = lock(&log);
            by_user.iter().all(|(u, cs)| {
                cs.iter().all(|c| {
                    l.cursors
                        .get(&(u.clone(), c.clone()))
                        .is_some_and(|s| *s >= 1)
                })
            })
        };
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "streams did not catch up before the load; logs:\n{}",
            stack.tails()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let started = Instant::now();
    let stop_at = started + config.load_for;
    let give_up_at = stop_at + config.settle_for;
    let senders: Vec<_> = by_user
        .iter()
        .map(|(user, cs)| {
            tokio::spawn(sender(
                Client::new(user, &addrs),
                cs.clone(),
                config.send_interval,
                stop_at,
                give_up_at,
                log.clone(),
            ))
        })
        .collect();

    let readers: Vec<_> = convs
        .iter()
        .map(|c| {
            tokio::spawn(reader(
                Client::new(&c.members[0], &addrs),
                c.id.clone(),
                config.send_interval * 2,
                stop_at,
                log.clone(),
            ))
        })
        .collect();
    let mut report = Report {
        max_outage: config.max_outage,
        max_call: config.max_call,
        ..Report::default()
    };
    let schedule: Vec<Fault> = (0..config.rounds)
        .flat_map(|_| config.faults.iter().copied())
        .collect();
    let spacing = config.load_for / (schedule.len() as u32 + 1);
    for (i, fault) in schedule.iter().enumerate() {
        let at = started + spacing * (i as u32 + 1);
        tokio::time::sleep_until(at.into()).await;
        let began = Instant::now();
        eprintln!("chaos: {fault} at {:.1}s", started.elapsed().as_secs_f64());
        let stopped = stack
            .apply(*fault, config.down_for, config.shutdown_grace)
            .await;
        report.faults.push((fault.to_string(), began.elapsed()));
        if let Some(s) = stopped {
            let clean = s.status.is_some_and(|st| st.success())
                && s.took <= config.shutdown_grace + Duration::from_secs(1);
            if !clean {
                report.bad_stops += 1;
            }
            report.stops.push((fault.to_string(), s));
        }
    }
    for s in senders.into_iter().chain(readers) {
        let _ = s.await;
    }
    report.load_time = started.elapsed().min(config.load_for);

    // Everything is back: every member's stream must reach what is stored.
    let (mut stored, mut last, mut twice) = read_store(&stack.procs.database_url).await;
    let deadline = Instant::now() + config.settle_for;
    loop {
        let behind = {
            let l = lock(&log);
            convs.iter().any(|c| {
                let head = last.get(&c.id).copied().unwrap_or(0);
                c.members.iter().any(|m| {
                    l.cursors
                        .get(&(m.clone(), c.id.clone()))
                        .copied()
                        .unwrap_or(0)
                        < head
                })
            })
        };
        if !behind || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        (stored, last, twice) = read_store(&stack.procs.database_url).await;
    }
    let _ = finish.send(true);
    for r in receivers {
        let _ = r.await;
    }

    check(&convs, &stored, &last, twice, &lock(&log), &mut report);
    if report.violations() > 0 {
        eprintln!("chaos: violations; service logs:\n{}", stack.tails());
    }
    report
}

/// The checker: compares what clients were acknowledged (`log.acked`) and
/// received (`log.received`) with what PostgreSQL holds (`stored`, `last`:
/// each conversation's last_seq, `twice`: rows that repeat a key), and
/// fills in `report`'s counts.
fn check(
    convs: &[Conv],
    stored: &Stored,
    last: &BTreeMap<String, u64>,
    twice: u64,
    l: &Log,
    report: &mut Report,
) {
    report.stored_twice = twice;
    report.reconnects = l.reconnects;
    report.unacknowledged = l.unacknowledged;
    report.longest_outage = l.longest_outage;
    report.slowest_call = l.slowest_call;
    report.reads = l.reads;
    report.unexpected_errors = l.unexpected.len() as u64;
    report.error_examples = l.unexpected.iter().take(3).cloned().collect();
    report.stored = stored.values().map(|m| m.len() as u64).sum();
    for ((conv, key), seqs) in &l.acked {
        report.acknowledged += 1;
        if seqs.len() > 1 {
            report.stored_twice += 1;
        }
        for seq in seqs {
            let found = stored
                .get(conv)
                .and_then(|m| m.get(seq))
                .is_some_and(|(_, k)| k == key);
            if !found {
                report.acked_missing += 1;
            }
        }
    }
    for (conv, messages) in stored {
        let n = messages.len() as u64;
        let head = last.get(conv).copied().unwrap_or(0);
        // Seqs 1..=head, each once.
        let expected_last = messages.keys().next_back().copied().unwrap_or(0);
        if n != head || expected_last != head {
            report.store_gaps += head.abs_diff(n).max(1);
        }
    }
    for c in convs {
        let messages = stored.get(&c.id).cloned().unwrap_or_default();
        for m in &c.members {
            report.due += messages.len() as u64;
            let got = l
                .received
                .get(&(m.clone(), c.id.clone()))
                .cloned()
                .unwrap_or_default();
            report.delivered += got.len() as u64;
            let mut seen = BTreeSet::new();
            let mut high = 0u64;
            for (seq, sender, key) in &got {
                if !seen.insert(*seq) {
                    report.delivered_twice += 1;
                } else if *seq < high {
                    report.out_of_order += 1;
                } else if *seq > high + 1 {
                    report.delivery_gaps += 1;
                }
                high = high.max(*seq);
                match messages.get(seq) {
                    Some((s, k)) if s == sender && k == key => {}
                    _ => report.mismatched += 1,
                }
            }
            report.undelivered += messages.keys().filter(|s| !seen.contains(s)).count() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    //! The checker must be able to fail: each invariant is broken on purpose.

    use super::*;

    /// One conversation `c` of `a` and `b` with seqs 1..=3 stored (1 is the
    /// creation event), `a` acknowledged for 2 and 3, both members having
    /// received everything in order.
    fn healthy() -> (Vec<Conv>, Stored, BTreeMap<String, u64>, Log) {
        let convs = vec![Conv {
            id: "c".into(),
            members: vec!["a".into(), "b".into()],
        }];
        let msgs: BTreeMap<u64, (String, String)> = [
            (1, ("a".to_string(), String::new())),
            (2, ("a".to_string(), "a-0".to_string())),
            (3, ("a".to_string(), "a-1".to_string())),
        ]
        .into_iter()
        .collect();
        let stored: Stored = [("c".to_string(), msgs.clone())].into_iter().collect();
        let last = [("c".to_string(), 3)].into_iter().collect();
        let mut log = Log::default();
        log.acked
            .insert(("c".into(), "a-0".into()), [2].into_iter().collect());
        log.acked
            .insert(("c".into(), "a-1".into()), [3].into_iter().collect());
        for m in ["a", "b"] {
            log.received.insert(
                (m.into(), "c".into()),
                msgs.iter()
                    .map(|(seq, (s, k))| (*seq, s.clone(), k.clone()))
                    .collect(),
            );
        }
        (convs, stored, last, log)
    }

    fn checked(
        convs: &[Conv],
        stored: &Stored,
        last: &BTreeMap<String, u64>,
        twice: u64,
        log: &Log,
    ) -> Report {
        let mut report = Report {
            max_outage: Duration::from_secs(30),
            max_call: Duration::from_secs(6),
            ..Report::default()
        };
        check(convs, stored, last, twice, log, &mut report);
        report
    }

    #[test]
    fn a_healthy_run_has_no_violation() {
        let (convs, stored, last, log) = healthy();
        let r = checked(&convs, &stored, &last, 0, &log);
        assert_eq!(r.violations(), 0, "{r}");
        assert_eq!((r.acknowledged, r.stored, r.due, r.delivered), (2, 3, 6, 6));
    }

    #[test]
    fn each_broken_invariant_is_counted() {
        // An acknowledged message that is not stored.
        let (convs, mut stored, mut last, log) = healthy();
        stored.get_mut("c").map(|m| m.remove(&3));
        last.insert("c".into(), 2);
        let r = checked(&convs, &stored, &last, 0, &log);
        assert_eq!(r.acked_missing, 1, "{r}");

        // A hole in storage.
        let (convs, mut stored, last, log) = healthy();
        stored.get_mut("c").map(|m| m.remove(&2));
        let r = checked(&convs, &stored, &last, 0, &log);
        assert!(r.store_gaps >= 1 && r.acked_missing == 1, "{r}");

        // A key stored twice, or acknowledged with two seqs.
        let (convs, stored, last, mut log) = healthy();
        assert_eq!(checked(&convs, &stored, &last, 1, &log).stored_twice, 1);
        log.acked
            .get_mut(&("c".into(), "a-0".into()))
            .map(|s| s.insert(3));
        let r = checked(&convs, &stored, &last, 0, &log);
        assert_eq!(r.stored_twice, 1, "{r}");
        assert_eq!(r.acked_missing, 1, "seq 3 holds another key: {r}");

        // A stream that repeats, skips, reorders or never gets a message.
        let with = |seqs: &[u64]| {
            let (convs, stored, last, mut log) = healthy();
            let all = log.received[&("b".to_string(), "c".to_string())].clone();
            log.received.insert(
                ("b".into(), "c".into()),
                seqs.iter().map(|s| all[*s as usize - 1].clone()).collect(),
            );
            checked(&convs, &stored, &last, 0, &log)
        };
        assert_eq!(with(&[1, 2, 2, 3]).delivered_twice, 1);
        let skipped = with(&[1, 3, 2]);
        assert_eq!(
            (skipped.delivery_gaps, skipped.out_of_order),
            (1, 1),
            "{skipped}"
        );
        assert_eq!(with(&[1, 2]).undelivered, 1);

        // Content that differs from storage.
        let (convs, stored, last, mut log) = healthy();
        if let Some(v) = log.received.get_mut(&("a".to_string(), "c".to_string())) {
            v[1].2 = "forged".into();
        }
        assert_eq!(checked(&convs, &stored, &last, 0, &log).mismatched, 1);

        // Errors, unclean stops and a long outage.
        let (convs, stored, last, mut log) = healthy();
        log.unexpected.push("send: PermissionDenied".into());
        log.longest_outage = Duration::from_secs(31);
        log.slowest_call = Duration::from_secs(7);
        let mut r = checked(&convs, &stored, &last, 0, &log);
        r.bad_stops = 1;
        assert_eq!(r.violations(), 4, "{r}");
        let text = r.to_string();
        assert!(text.contains("FAIL unexpected errors: 1"), "{text}");
        assert!(
            text.contains("FAIL longest time a client could not send"),
            "{text}"
        );
        assert!(text.contains("FAIL slowest answer to a call"), "{text}");
        assert!(text.ends_with("violations: 4"), "{text}");
    }
}
