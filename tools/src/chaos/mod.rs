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
//! (short, in `make test`). Here the scenario and its schedule; the
//! processes and the faults in `stack`, the clients in `client`, the
//! checker in `check`, what it found in `report`.

mod check;
mod client;
mod report;
pub mod sample;
mod stack;

pub use report::Report;

use check::{check, read_store};
use client::{create_conversations, lock, reader, receiver, sender, Client, Shared};
use stack::Stack;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

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

/// A link between two parts of the stack (each service runs in a network
/// namespace of its own: [`Config::network`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Gateway `i` and the broker.
    GatewayBroker(usize),
    /// History instance `i` and the broker.
    HistoryBroker(usize),
    /// History instance `i` and its PostgreSQL.
    HistoryPostgres(usize),
    /// Router `r` and gateway `g` (the gateway's link to the router).
    RouterGateway(usize, usize),
    /// The clients and gateway `i`.
    ClientGateway(usize),
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Link::GatewayBroker(i) => write!(f, "gateway-{i} <-> broker"),
            Link::HistoryBroker(i) => write!(f, "history-{i} <-> broker"),
            Link::HistoryPostgres(i) => write!(f, "history-{i} <-> postgres"),
            Link::RouterGateway(r, g) => write!(f, "router-{r} <-> gateway-{g}"),
            Link::ClientGateway(i) => write!(f, "clients <-> gateway-{i}"),
        }
    }
}

/// One event of the schedule: the target goes down, stays down for
/// [`Config::down_for`], and comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A crash: SIGKILL (the broker), `pg_ctl -m immediate stop` (PostgreSQL).
    Kill(Target),
    /// A graceful stop: SIGTERM, which must exit 0 within the grace period.
    Term(Target),
    /// Every packet of a link dropped (not refused), both ways, for
    /// [`Config::cut_for`], then let through again.
    Cut(Link),
    /// A graceful stop, and the current build's binary started in its place
    /// (a rolling upgrade from [`Config::from_release`]).
    Upgrade(Target),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (how, target) = match self {
            Fault::Kill(t) => ("kill -9", t),
            Fault::Term(t) => ("SIGTERM", t),
            Fault::Upgrade(t) => ("upgrade", t),
            Fault::Cut(link) => return write!(f, "cut {link}"),
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
    /// The schedule, spread evenly over `fault_window` (or `load_for`),
    /// repeated `rounds` times.
    pub faults: Vec<Fault>,
    /// The first part of the load the faults are spread over; all of it
    /// when `None`. A soak leaves the rest steady, to judge growth on.
    pub fault_window: Option<Duration>,
    /// Read every process's memory, descriptors, threads and the consumer
    /// lag this often ([`sample`]); a series that grows without levelling
    /// off after the faults is a violation. Not read when `None`.
    pub sample_every: Option<Duration>,
    /// How many times the schedule runs.
    pub rounds: usize,
    /// How long a target stays down.
    pub down_for: Duration,
    /// How long a link stays cut: longer than [`Config::max_call`], so a
    /// call that waits for the link instead of failing is a violation.
    pub cut_for: Duration,
    /// Each service in a network namespace of its own (needs root), so
    /// that [`Fault::Cut`] can cut its links; required by those faults.
    pub network: bool,
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
    /// The directory of another release's binaries the services start on
    /// ([`Fault::Upgrade`] replaces them); the current build's otherwise.
    pub from_release: Option<PathBuf>,
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

    /// A rolling upgrade in the order docs/operations.md gives: routers
    /// first (they read what history and gateways of either release send),
    /// then history (the first new one migrates the schema), then
    /// gateways, one process at a time.
    pub fn rolling_upgrade() -> Vec<Fault> {
        vec![
            Fault::Upgrade(Target::Router(0)),
            Fault::Upgrade(Target::Router(1)),
            Fault::Upgrade(Target::History(0)),
            Fault::Upgrade(Target::History(1)),
            Fault::Upgrade(Target::Gateway(0)),
            Fault::Upgrade(Target::Gateway(1)),
        ]
    }

    /// Every link cut once: each service from the broker, history from
    /// PostgreSQL, a gateway from a router, the clients from a gateway.
    pub fn partitions() -> Vec<Fault> {
        vec![
            Fault::Cut(Link::GatewayBroker(0)),
            Fault::Cut(Link::HistoryBroker(0)),
            Fault::Cut(Link::HistoryPostgres(1)),
            Fault::Cut(Link::RouterGateway(0, 1)),
            Fault::Cut(Link::ClientGateway(1)),
        ]
    }

    /// The short partition run in `make test`: every link cut once, each
    /// for [`Config::cut_for`], in about a minute and a half.
    pub fn short_partitions() -> Self {
        Self {
            load_for: Duration::from_secs(80),
            faults: Self::partitions(),
            network: true,
            ..Self::short()
        }
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
            cut_for: Duration::from_secs(10),
            network: false,
            settle_for: Duration::from_secs(60),
            max_outage: Duration::from_secs(30),
            max_call: Duration::from_secs(6),
            shutdown_grace: Duration::from_secs(10),
            log_dir: None,
            from_release: None,
            fault_window: None,
            sample_every: None,
        }
    }

    /// `make soak`: a moderate steady load for `load_for`, a few faults in
    /// its first half, every process read thirty times (at most once a
    /// minute).
    pub fn soak(load_for: Duration) -> Self {
        Self {
            send_interval: Duration::from_millis(500),
            load_for,
            faults: vec![
                Fault::Kill(Target::Gateway(0)),
                Fault::Term(Target::History(1)),
                Fault::Kill(Target::Router(0)),
            ],
            fault_window: Some(load_for / 2),
            sample_every: Some(sample::interval_for(load_for)),
            ..Self::short()
        }
    }

    /// `make chaos`: more clients, longer outages, every fault, a rolling
    /// restart of every service and every link cut, twice.
    pub fn long() -> Self {
        Self {
            users: 24,
            groups: 4,
            group_size: 8,
            send_interval: Duration::from_millis(200),
            load_for: Duration::from_secs(720),
            faults: [
                Self::every_fault(),
                Self::rolling_restart(),
                Self::partitions(),
            ]
            .concat(),
            network: true,
            rounds: 2,
            down_for: Duration::from_secs(5),
            settle_for: Duration::from_secs(90),
            ..Self::short()
        }
    }
}

/// A task per user of `by_user` (user → conversations), each made by
/// `task` from a client of the user's own on every gateway at `addrs` and
/// the user's conversations.
fn per_user<F, Fut>(
    by_user: &BTreeMap<String, Vec<String>>,
    addrs: &[SocketAddr],
    task: F,
) -> Vec<JoinHandle<()>>
where
    F: Fn(Client, Vec<String>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    by_user
        .iter()
        .map(|(user, convs)| tokio::spawn(task(Client::new(user, addrs), convs.clone())))
        .collect()
}

/// The readings of a run that takes them.
struct Readings {
    every: Duration,
    /// When the next is due.
    next: Instant,
    samples: sample::Samples,
}

/// Takes the readings due before `until`, then waits for it.
async fn read_until(
    readings: &mut Option<Readings>,
    stack: &Stack,
    start: Instant,
    until: Instant,
) {
    if let Some(r) = readings {
        while r.next <= until {
            tokio::time::sleep_until(r.next.into()).await;
            r.samples.take(start, &stack.watched()).await;
            r.next += r.every;
        }
    }
    tokio::time::sleep_until(until.into()).await;
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
    let receivers = per_user(&by_user, &addrs, |client, convs| {
        receiver(client, convs, done.clone(), log.clone())
    });
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
    let senders = per_user(&by_user, &addrs, |client, convs| {
        sender(
            client,
            convs,
            config.send_interval,
            stop_at,
            give_up_at,
            log.clone(),
        )
    });

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
    let window = config.fault_window.unwrap_or(config.load_for);
    let spacing = window / (schedule.len() as u32 + 1);
    let mut readings = config.sample_every.map(|every| Readings {
        every,
        next: started,
        samples: sample::Samples::default(),
    });
    for (i, fault) in schedule.iter().enumerate() {
        let at = started + spacing * (i as u32 + 1);
        read_until(&mut readings, &stack, started, at).await;
        let began = Instant::now();
        eprintln!("chaos: {fault} at {:.1}s", started.elapsed().as_secs_f64());
        let stopped = stack.apply(*fault, &config).await;
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
    read_until(&mut readings, &stack, started, stop_at).await;
    for s in senders.into_iter().chain(readers) {
        let _ = s.await;
    }
    report.load_time = started.elapsed().min(config.load_for);
    if let Some(r) = readings {
        // The steady part: after the faults, and after a reading's worth
        // of time for the last one's target to settle.
        let steady_from = (window + r.every).as_secs_f64() / 60.0;
        report.growth = r.samples.growth(steady_from);
        report.samples = Some(r.samples);
    }

    // Everything is back: every member's stream must reach what is stored.
    let (mut stored, mut last, mut twice) = read_store(stack.database_url()).await;
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
        (stored, last, twice) = read_store(stack.database_url()).await;
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
