//! `make bench`: every measurement in one run on this machine, with the
//! ceilings of the parts measured alongside, so results read as ratios.
//!
//! 1. The gRPC ceiling: the echo server as its own process, driven like
//!    embedded mode's unary sends.
//! 2. Embedded mode (`confab dev` as its own process): unary and `Connect`
//!    sends as fast as possible, `Connect` at a fixed rate for latency, and
//!    idle `Connect` streams on a fresh process for memory per stream.
//! 3. The distributed stack on one PostgreSQL cluster and one nisshi broker
//!    (on its memory engine; see below): the Kafka and database
//!    ceilings, history's isolated ingest rate (with search indexing on and
//!    off, in turn), `GetHistory`, `ListConversations`, `Sync` and
//!    `SearchMessages` on a table of millions of rows, sends as fast as
//!    possible and at a fixed rate, and idle streams on the gateway.
//!
//! Each target of the performance issue is then checked and reported as
//! met or missed (`targets`); nothing fails the run but an error. The
//! report prints as a table (`table`); the echo server and the stack are
//! started by `procs`.

mod plot;
pub mod procs;
mod table;
mod targets;

pub use plot::{path_beside as plot_path, plot};
pub use table::table;
pub use targets::Target;

use procs::{check_binaries, ready, start_stack, start_stack_on, watch, EchoProcess};
use targets::targets;

use super::baselines::{self, InsertOpts, InsertReport, KafkaOpts, KafkaReport};
use super::compression::{self, CompressionOpts, CompressionReport};
use super::idle::{self, IdleOpts, IdleReport};
use super::inbox::{self, InboxOpts, InboxReport, SyncOpts, SyncReport, Watched};
use super::ingest::{self, IngestOpts, IngestReport, IngestSetup};
use super::load::{self, LoadOpts, LoadReport, Via};
use super::reads::{self, GenerateOpts, GenerateReport, ReadOpts, ReadReport};
use super::search::{self, SearchOpts, SearchReport};
use super::user_stack::{self, UserStackOpts, UserStackReport};
use super::Machine;
use anyhow::{Context, Result};
use confab_tests::broker::Broker;
use confab_tests::postgres::PgCluster;
use confab_tests::stack::ProcStack;
use confab_tests::{free_port, DevProcess, SECRET};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A part of the suite, to run alone (`confab-bench suite --only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Section {
    /// The bare tonic echo server (the gRPC ceiling).
    Echo,
    /// `confab dev`: unary and Connect, as fast as possible and at the fixed rate.
    Embedded,
    /// Idle `Connect` streams, on `confab dev` and on the gateway.
    Idle,
    /// Raw rdkafka through the broker (the Kafka ceiling).
    Kafka,
    /// Raw batched inserts into PostgreSQL (the database ceiling).
    Inserts,
    /// History's ingest from a pre-filled ingress topic, with search
    /// indexing on and off.
    Ingest,
    /// The generated table, and `GetHistory`, `ListConversations` and
    /// `Sync` through the gateway.
    Reads,
    /// `SearchMessages` through the gateway on the generated table (which
    /// `reads` shares).
    Search,
    /// `GetHistory` pages through the gateway answered plain, gzip, zstd
    /// and deflate: bytes received and CPU per call.
    Compression,
    /// Sends through history, router and gateway.
    Distributed,
    /// `make stack`, the stack users run, from outside: idle CPU, and
    /// fixed-rate steps through its gateway.
    Stack,
}

/// How big a run is.
#[derive(Debug, Clone)]
pub struct SuiteOpts {
    /// The parts to run; empty: all of them.
    pub only: Vec<Section>,
    /// Measured seconds per load run.
    pub seconds: u64,
    /// Warm-up seconds per load run.
    pub warmup: u64,
    /// Clients per load run.
    pub clients: usize,
    /// Conversations per load run.
    pub conversations: usize,
    /// Sends in flight per client when sending as fast as possible.
    pub in_flight: usize,
    /// The fixed rate latency is measured at (messages/s).
    pub latency_rate: f64,
    /// The rate of the unloaded distributed run (messages/s), and the
    /// records the broker's floor is measured with, one at a time.
    pub unloaded_rate: f64,
    pub floor_records: u64,
    /// Idle `Connect` streams, and the connections they share.
    pub idle_streams: usize,
    pub idle_connections: usize,
    /// Idle WebSocket sessions (one connection, so one descriptor, each).
    pub idle_websockets: usize,
    /// Rows the history-read table is filled with, over this many
    /// conversations.
    pub history_rows: u64,
    pub history_conversations: u64,
    /// `GetHistory` calls measured.
    pub history_requests: u64,
    /// `SearchMessages` calls measured, and the generated conversations
    /// the searcher is in.
    pub search_requests: u64,
    pub search_member_of: u64,
    /// History's ingest is measured this many times with search indexing
    /// on, and as many with it off, in turn.
    pub ingest_pairs: usize,
    /// Messages for the Kafka ceiling, the insert ceiling and the ingest
    /// run.
    pub kafka_messages: u64,
    pub insert_rows: u64,
    pub ingest_messages: u64,
    /// Body size of every message.
    pub body_bytes: usize,
    /// Rounds of the load runs (echo and embedded, `make stack`, then
    /// distributed), each round every run once in the same order: each
    /// target that rests on load runs is judged on the median round.
    pub repeats: usize,
    /// `make stack`: idle CPU measured over this long after it is ready
    /// and left alone for `stack_settle`, then fixed-rate steps at these
    /// rates (lowest first) until one does not hold.
    pub stack_idle: Duration,
    pub stack_settle: Duration,
    pub stack_rates: Vec<f64>,
    /// Where the services' logs go.
    pub log_dir: PathBuf,
}

impl SuiteOpts {
    /// What `make bench` runs (on 2 cores, most of its time goes to
    /// filling the 10M-row table and building its indexes, the search
    /// index the longest).
    pub fn full(log_dir: PathBuf) -> Self {
        Self {
            seconds: 15,
            warmup: 3,
            clients: 200,
            conversations: 100,
            in_flight: 16,
            latency_rate: 5000.0,
            unloaded_rate: 100.0,
            floor_records: 3_000,
            idle_streams: 20_000,
            idle_connections: 200,
            idle_websockets: 5_000,
            history_rows: 10_000_000,
            history_conversations: 1_000,
            history_requests: 20_000,
            search_requests: 2_000,
            search_member_of: 100,
            ingest_pairs: 3,
            kafka_messages: 200_000,
            insert_rows: 500_000,
            ingest_messages: 200_000,
            body_bytes: 100,
            repeats: 5,
            stack_idle: Duration::from_secs(30),
            stack_settle: Duration::from_secs(10),
            stack_rates: vec![20.0, 500.0, 1000.0, 2000.0, 3000.0, 4000.0],
            log_dir,
            only: Vec::new(),
        }
    }

    /// A run of every part in about a minute, to check the harness itself
    /// (what `make test` runs); its numbers mean little.
    pub fn smoke(log_dir: PathBuf) -> Self {
        Self {
            seconds: 2,
            warmup: 1,
            clients: 8,
            conversations: 6,
            in_flight: 4,
            latency_rate: 200.0,
            unloaded_rate: 50.0,
            floor_records: 200,
            idle_streams: 300,
            idle_connections: 10,
            idle_websockets: 100,
            history_rows: 20_000,
            history_conversations: 10,
            history_requests: 300,
            search_requests: 100,
            search_member_of: 100,
            ingest_pairs: 1,
            kafka_messages: 2_000,
            insert_rows: 5_000,
            ingest_messages: 2_000,
            body_bytes: 100,
            repeats: 1,
            stack_idle: Duration::from_secs(3),
            stack_settle: Duration::from_secs(1),
            stack_rates: vec![20.0, 100.0],
            log_dir,
            only: Vec::new(),
        }
    }

    /// Whether `section` is part of this run.
    pub fn runs(&self, section: Section) -> bool {
        self.only.is_empty() || self.only.contains(&section)
    }

    fn load(&self, label: &str, target: SocketAddr, via: Via, rate: Option<f64>) -> LoadOpts {
        let mut o = LoadOpts::new(label, target, SECRET);
        o.clients = self.clients;
        o.conversations = self.conversations;
        o.in_flight = self.in_flight;
        o.via = via;
        o.rate = rate;
        o.warmup = Duration::from_secs(self.warmup);
        o.duration = Duration::from_secs(self.seconds);
        o.body_bytes = self.body_bytes;
        o
    }
}

/// Most messages edited and reacted to for the changed-pages measurement:
/// as many whole conversations as hold about this many (at least one, at
/// most half of them), and as many plain ones beside them.
const CHANGED_MESSAGES: u64 = 500_000;

/// Everything one run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SuiteReport {
    pub machine: Machine,
    pub started_unix: u64,
    pub seconds: f64,
    /// The echo server driven like embedded mode's unary sends.
    pub echo: Option<LoadReport>,
    /// Embedded mode (`confab dev`).
    pub embedded: Vec<LoadReport>,
    pub embedded_idle: Option<IdleReport>,
    /// Idle sessions over WebSocket on `confab dev`.
    #[serde(default)]
    pub embedded_idle_websocket: Option<IdleReport>,
    /// Idle `Connect` streams on `confab dev`, one per connection, as many
    /// as the WebSocket sessions.
    #[serde(default)]
    pub embedded_idle_alone: Option<IdleReport>,
    pub kafka: Option<KafkaReport>,
    pub inserts: Option<InsertReport>,
    /// History's ingest: the first run with search indexing on (also the
    /// first of `ingest_search`).
    pub ingest: Option<IngestReport>,
    /// History's ingest with search indexing on and off
    /// (`CONFAB_SEARCH_INDEX`), run in turn on fresh databases: (on, off)
    /// pairs.
    #[serde(default)]
    pub ingest_search: Vec<(IngestReport, IngestReport)>,
    pub history_table: Option<GenerateReport>,
    /// `GetHistory` from one client: the latency of a page.
    pub history_reads: Option<ReadReport>,
    /// `GetHistory` from four clients at once: the same under load.
    pub history_reads_loaded: Option<ReadReport>,
    /// `GetHistory` from one client, interleaved: (plain pages, pages
    /// whose every message was edited and reacted to), twice.
    #[serde(default)]
    pub history_reads_changed: Vec<(ReadReport, ReadReport)>,
    /// `ListConversations`, first page, with every conversation as far
    /// behind as generated.
    pub inbox_behind: Option<InboxReport>,
    /// The same with each conversation 10 messages behind.
    pub inbox_near: Option<InboxReport>,
    /// `Sync` from a cursor 1,000 changes behind (one message in each of
    /// 1,000 conversations), every page.
    pub sync_after_changes: Option<SyncReport>,
    /// `SearchMessages` for a user in 100 of the generated conversations.
    #[serde(default)]
    pub search: Option<SearchReport>,
    /// `GetHistory` pages answered plain and compressed.
    #[serde(default)]
    pub compression: Option<CompressionReport>,
    /// The distributed stack.
    pub distributed: Vec<LoadReport>,
    /// The broker's own floor: raw records produced one at a time (the
    /// next once the last is acknowledged) and consumed, with Confab's
    /// settings, through the distributed runs' broker.
    #[serde(default)]
    pub broker_floor: Option<KafkaReport>,
    pub gateway_idle: Option<IdleReport>,
    /// `make stack`, measured from outside.
    #[serde(default)]
    pub user_stack: Option<UserStackReport>,
    /// The load runs' later rounds (the first is `echo`, `embedded`,
    /// `distributed`, `broker_floor` and `user_stack`), see
    /// [`SuiteOpts::repeats`].
    #[serde(default)]
    pub later_rounds: Vec<LoadRound>,
    pub targets: Vec<Target>,
}

/// One round of the load runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadRound {
    pub echo: Option<LoadReport>,
    pub embedded: Vec<LoadReport>,
    pub distributed: Vec<LoadReport>,
    pub broker_floor: Option<KafkaReport>,
    #[serde(default)]
    pub user_stack: Option<UserStackReport>,
}

impl SuiteReport {
    /// Round `n` of the load runs (0: the first).
    pub(super) fn round(&self, n: usize) -> Option<LoadRound> {
        if n == 0 {
            return Some(LoadRound {
                echo: self.echo.clone(),
                embedded: self.embedded.clone(),
                distributed: self.distributed.clone(),
                broker_floor: self.broker_floor.clone(),
                user_stack: self.user_stack.clone(),
            });
        }
        self.later_rounds.get(n - 1).cloned()
    }

    /// This report with round `n`'s load runs in place of the first's.
    pub(super) fn with_round(&self, n: usize) -> Option<SuiteReport> {
        let round = self.round(n)?;
        Some(SuiteReport {
            echo: round.echo,
            embedded: round.embedded,
            distributed: round.distributed,
            broker_floor: round.broker_floor,
            user_stack: round.user_stack,
            later_rounds: Vec::new(),
            ..self.clone()
        })
    }

    /// Files `round` as round `n`.
    fn file_round(&mut self, n: usize, round: LoadRound) {
        if n == 0 {
            self.echo = round.echo;
            self.embedded = round.embedded;
            self.distributed = round.distributed;
            self.broker_floor = round.broker_floor;
            self.user_stack = round.user_stack;
        } else {
            while self.later_rounds.len() < n {
                self.later_rounds.push(LoadRound::default());
            }
            self.later_rounds[n - 1] = round;
        }
    }

    /// Rounds of load runs in this report.
    pub fn rounds(&self) -> usize {
        1 + self.later_rounds.len()
    }
}

/// `streams` idle sessions of users `{prefix}N` on a fresh `confab dev`,
/// over `connections` HTTP/2 connections, or each on a WebSocket.
async fn idle_on_fresh_dev(
    prefix: &str,
    streams: usize,
    connections: usize,
    websocket: bool,
) -> Result<IdleReport> {
    let dir = tempfile::tempdir().context("data directory")?;
    let dev = DevProcess::start(dir.path(), free_port())?;
    idle::run(&IdleOpts {
        addr: dev.addr,
        server_pid: dev.pid(),
        secret: SECRET.into(),
        user_prefix: prefix.into(),
        streams,
        connections,
        websocket: websocket.then_some(dev.http),
    })
    .await
}

/// Runs everything.
pub async fn run(opts: &SuiteOpts) -> Result<SuiteReport> {
    let started = Instant::now();
    check_binaries()?;
    std::fs::create_dir_all(&opts.log_dir).context("log directory")?;
    let mut report = SuiteReport {
        machine: Machine::detect(),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        ..Default::default()
    };

    // 1. The gRPC ceiling and embedded mode, round after round.
    if opts.runs(Section::Echo) || opts.runs(Section::Embedded) {
        for n in 0..opts.repeats.max(1) {
            let mut round = report.round(n).unwrap_or_default();
            echo_and_embedded(opts, n, &mut round).await?;
            report.file_round(n, round);
        }
    }
    if opts.runs(Section::Idle) {
        step("idle Connect streams on a fresh confab dev");
        let r = idle_on_fresh_dev(
            "idle-embedded-",
            opts.idle_streams,
            opts.idle_connections,
            false,
        );
        report.embedded_idle = Some(noted(r.await?));
        // As many streams as WebSocket sessions below, each on its own
        // connection: what one client holding one session costs, as every
        // browser's WebSocket does.
        step("idle Connect streams, a connection each, on a fresh confab dev");
        let n = opts.idle_websockets;
        let r = idle_on_fresh_dev("idle-alone-", n, n, false);
        report.embedded_idle_alone = Some(noted(r.await?));
        // Sessions over WebSocket, one connection each as browsers hold
        // them, on a fresh process too.
        step("idle WebSocket sessions on a fresh confab dev");
        let r = idle_on_fresh_dev("idle-websocket-", opts.idle_websockets, 1, true);
        report.embedded_idle_websocket = Some(noted(r.await?));
    }

    if opts.runs(Section::Stack) {
        // A fresh `make stack` each round, its targets judged on the median.
        for n in 0..opts.repeats.max(1) {
            step(&format!(
                "make stack, the stack users run: idle, then fixed-rate steps through its gateway{}",
                of_round(opts, n)
            ));
            let r = user_stack::measure(&UserStackOpts {
                idle: opts.stack_idle,
                settle: opts.stack_settle,
                rates: opts.stack_rates.clone(),
                load: opts.load("make stack", "127.0.0.1:1".parse()?, Via::Connect, None),
                p99_limit: Duration::from_millis(100),
            })
            .await?;
            let mut round = report.round(n).unwrap_or_default();
            round.user_stack = Some(r);
            report.file_round(n, round);
        }
    }

    // 3. The distributed stack and its parts.
    let stacked = [
        Section::Idle,
        Section::Reads,
        Section::Search,
        Section::Compression,
        Section::Distributed,
    ];
    let needs_stack = stacked.into_iter().any(|s| opts.runs(s));
    let parts = [Section::Kafka, Section::Inserts, Section::Ingest];
    if !needs_stack && !parts.into_iter().any(|s| opts.runs(s)) {
        report.seconds = started.elapsed().as_secs_f64();
        report.targets = targets(&report, opts);
        return Ok(report);
    }
    step("PostgreSQL and the nisshi broker");
    let pg = PgCluster::start_local()?;
    // The broker keeps its log in memory: on nisshi's PostgreSQL engine a
    // consumer that falls behind gets slower the further behind it is (its
    // fetch query sums every record up to the high watermark), so a run
    // that saturates anything measures that instead (docs/benchmarks.md).
    let broker = Broker::start_memory().await;

    if opts.runs(Section::Kafka) {
        step("the Kafka ceiling (raw rdkafka through the same broker)");
        let r = baselines::kafka(&KafkaOpts {
            bootstrap: broker.bootstrap(),
            topic_prefix: format!("bench{}", std::process::id()),
            partitions: 8,
            messages: opts.kafka_messages,
            payload_bytes: ingress_record_bytes(opts.body_bytes),
            in_flight: 1000,
        })
        .await?;
        report.kafka = Some(noted(r));
    }

    if opts.runs(Section::Inserts) {
        step("the database ceiling (raw batched inserts)");
        let r = baselines::postgres_inserts(&InsertOpts {
            database_url: pg.fresh_database().await?,
            rows: opts.insert_rows,
            batch: confab_history::ingest::MAX_BATCH,
            writers: 8,
            body_bytes: opts.body_bytes,
        })
        .await?;
        report.inserts = Some(noted(r));
    }

    if opts.runs(Section::Ingest) {
        // On, off, on, off, ...: each on a fresh database and topics of
        // its own, so the machine's drift falls on both alike.
        let mut pairs = Vec::new();
        for round in 0..opts.ingest_pairs.max(1) {
            let on = ingest_once(opts, &pg, &broker, round, true).await?;
            let off = ingest_once(opts, &pg, &broker, round, false).await?;
            pairs.push((on, off));
        }
        report.ingest = pairs.first().map(|(on, _)| on.clone());
        report.ingest_search = pairs;
    }

    if !needs_stack {
        drop(broker);
        drop(pg);
        report.targets = targets(&report, opts);
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    let reader = "bench-reader".to_string();
    let database_url = pg.fresh_database().await?;
    if [Section::Reads, Section::Search, Section::Compression]
        .into_iter()
        .any(|s| opts.runs(s))
    {
        step(&format!(
            "filling history's table with {} rows",
            opts.history_rows
        ));
        let r = reads::generate(&GenerateOpts {
            database_url: database_url.clone(),
            rows: opts.history_rows,
            conversations: opts.history_conversations,
            reader: reader.clone(),
            body_bytes: opts.body_bytes,
        })
        .await?;
        report.history_table = Some(noted(r));
    }

    step("the distributed stack: history, router, gateway");
    let mut stack = start_stack(&broker, &database_url, &opts.log_dir);
    let gateway = stack.gateway_addr(0);
    ready(gateway).await?;

    if opts.runs(Section::Idle) {
        step("idle Connect streams on the gateway");
        let r = idle::run(&IdleOpts {
            addr: gateway,
            server_pid: stack.gateways[0].pid().context("gateway pid")?,
            secret: SECRET.into(),
            user_prefix: "idle-gateway-".into(),
            streams: opts.idle_streams,
            connections: opts.idle_connections,
            websocket: None,
        })
        .await?;
        report.gateway_idle = Some(noted(r));
    }

    if opts.runs(Section::Reads) {
        for concurrency in [1, 4] {
            step(&format!(
                "GetHistory through the gateway, {concurrency} client(s)"
            ));
            let r = reads::measure(&ReadOpts {
                gateway,
                secret: SECRET.into(),
                reader: reader.clone(),
                conversations: opts.history_conversations,
                rows_per_conversation: opts.history_rows / opts.history_conversations.max(1),
                page: 50,
                first: 0,
                requests: opts.history_requests,
                concurrency,
            })
            .await?;
            eprintln!("{r:?}");
            if concurrency == 1 {
                report.history_reads = Some(r);
            } else {
                report.history_reads_loaded = Some(r);
            }
        }
        // Pages whose every message was edited and reacted to, against
        // plain pages read in the same way right before and after (the
        // machine's speed drifts): the first `half` conversations are
        // changed, the plain ones are the next `half`. About
        // `CHANGED_MESSAGES` messages: what a page costs does not depend on
        // how many other conversations were changed, and changing 500 on
        // 10M rows (5M messages, their versions, 10M reactions and their
        // search entries) needed more than the 16 GB of disk free here.
        let rows_per_conversation = opts.history_rows / opts.history_conversations.max(1);
        let half = (opts.history_conversations / 2)
            .min(CHANGED_MESSAGES / rows_per_conversation.max(1))
            .max(1);
        step(&format!(
            "GetHistory on pages whose every message was edited and reacted to ({half} conversations)"
        ));
        reads::change_every_message(&database_url, &reader, 0, half).await?;
        let read = |first: u64| ReadOpts {
            gateway,
            secret: SECRET.into(),
            reader: reader.clone(),
            conversations: half,
            rows_per_conversation: opts.history_rows / opts.history_conversations.max(1),
            page: 50,
            first,
            requests: opts.history_requests,
            concurrency: 1,
        };
        let mut pairs = Vec::new();
        for _ in 0..2 {
            let plain = reads::measure(&read(half)).await?;
            let changed = reads::measure(&read(0)).await?;
            eprintln!("plain {plain:?}\nchanged {changed:?}");
            pairs.push((plain, changed));
        }
        report.history_reads_changed = pairs;
        for unread in [None, Some(10)] {
            step(&format!(
                "ListConversations through the gateway, {} unread each",
                unread.map_or("all but the creation".to_string(), |u| u.to_string())
            ));
            let r = inbox::measure(&InboxOpts {
                gateway,
                secret: SECRET.into(),
                reader: reader.clone(),
                database_url: database_url.clone(),
                conversations: opts.history_conversations,
                unread,
                requests: opts.history_requests.min(2_000),
            })
            .await?;
            eprintln!("{r:?}");
            match unread {
                None => report.inbox_behind = Some(r),
                Some(_) => report.inbox_near = Some(r),
            }
        }
        step("Sync through the gateway from a cursor 1,000 changes behind");
        let r = inbox::measure_sync(&SyncOpts {
            gateway,
            secret: SECRET.into(),
            reader: reader.clone(),
            changes: 1_000,
            requests: opts.history_requests.min(500),
            watch: watch_with_postgres(&stack, &pg),
        })
        .await?;
        eprintln!("{r:?}");
        report.sync_after_changes = Some(r);
    }

    if opts.runs(Section::Search) {
        step(&format!(
            "SearchMessages through the gateway, a user in {} conversations",
            opts.search_member_of.min(opts.history_conversations)
        ));
        let r = search::measure(&SearchOpts {
            gateway,
            secret: SECRET.into(),
            reader: reader.clone(),
            searcher: "bench-searcher".into(),
            rows: opts.history_rows,
            conversations: opts.history_conversations,
            body_bytes: opts.body_bytes,
            member_of: opts.search_member_of,
            requests: opts.search_requests,
            limit: confab_core::validate::DEFAULT_SEARCH_PAGE,
            watch: watch_with_postgres(&stack, &pg),
        })
        .await?;
        eprintln!("{r:?}");
        report.search = Some(r);
    }

    if opts.runs(Section::Compression) {
        step("GetHistory pages of 50 answered plain, gzip, zstd and deflate");
        let r = compression::measure(&CompressionOpts {
            gateway,
            secret: SECRET.into(),
            reader: reader.clone(),
            conversations: opts.history_conversations,
            rows_per_conversation: opts.history_rows / opts.history_conversations.max(1),
            page: 50,
            requests: opts.history_requests.min(2_000),
            rounds: 2,
            watch: watch_with_postgres(&stack, &pg),
        })
        .await?;
        eprintln!("{r:?}");
        report.compression = Some(r);
    }

    if opts.runs(Section::Distributed) {
        for n in 0..opts.repeats.max(1) {
            let mut round = report.round(n).unwrap_or_default();
            stack =
                distributed_round(opts, n, &mut round, stack, &broker, &pg, &database_url).await?;
            report.file_round(n, round);
        }
    }
    stack.terminate(Duration::from_secs(10)).await;
    drop(broker);
    drop(pg);

    report.targets = targets(&report, opts);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Round `n` of the echo and embedded load runs, into `round`.
async fn echo_and_embedded(opts: &SuiteOpts, n: usize, round: &mut LoadRound) -> Result<()> {
    if opts.runs(Section::Echo) {
        step(&format!(
            "echo server (the gRPC ceiling){}",
            of_round(opts, n)
        ));
        let echo = EchoProcess::start(&opts.log_dir.join("echo.log")).await?;
        let mut o = opts.load("echo unary max", echo.addr, Via::Unary, None);
        o.confab = false;
        o.watch = vec![("echo server".into(), echo.pid())];
        round.echo = Some(show(load::run(&o).await?));
    }

    if opts.runs(Section::Embedded) {
        step(&format!("embedded mode (confab dev){}", of_round(opts, n)));
        let dir = tempfile::tempdir().context("data directory")?;
        // Reads are limited per user like sends; the run where clients
        // read every message measures reads, not their limit.
        let reads = [("CONFAB_RATE_READS_PER_SEC", "1000000")];
        let dev = DevProcess::start_with(dir.path(), free_port(), &reads, None)?;
        let fixed = Some(opts.latency_rate);
        // (label, via, rate, share of clients reading, typing flooders)
        for (label, via, rate, read_share, flooders) in [
            ("embedded unary max", Via::Unary, None, 0.0, 0),
            ("embedded connect max", Via::Connect, None, 0.0, 0),
            ("embedded connect fixed rate", Via::Connect, fixed, 0.0, 0),
            (
                "embedded connect max, 10% reading",
                Via::Connect,
                None,
                0.1,
                0,
            ),
            (
                "embedded connect fixed rate, one user flooding typing",
                Via::Connect,
                fixed,
                0.0,
                1,
            ),
        ] {
            let mut o = opts.load(label, dev.addr, via, rate);
            o.watch = vec![("confab dev".into(), dev.pid())];
            o.read_share = read_share;
            o.typing_flooders = flooders;
            round.embedded.push(show(load::run(&o).await?));
        }
        // The same session over the WebSocket (docs/browser.md), beside
        // `Connect`: what a browser's messages cost.
        for (label, rate) in [
            ("embedded websocket max", None),
            ("embedded websocket fixed rate", fixed),
        ] {
            let mut o = opts.load(label, dev.addr, Via::Connect, rate);
            o.watch = vec![("confab dev".into(), dev.pid())];
            o.websocket = Some(dev.http);
            round.embedded.push(show(load::run(&o).await?));
        }
    }
    Ok(())
}

/// ", round N of M" when there is more than one.
fn of_round(opts: &SuiteOpts, n: usize) -> String {
    if opts.repeats > 1 {
        format!(", round {} of {}", n + 1, opts.repeats)
    } else {
        String::new()
    }
}

/// Round `n` of the distributed load runs, into `round`: the broker's
/// floor, then each run on a fresh stack (`stack` is stopped first; the
/// last one started is handed back).
async fn distributed_round(
    opts: &SuiteOpts,
    n: usize,
    round: &mut LoadRound,
    mut stack: ProcStack,
    broker: &Broker,
    pg: &PgCluster,
    database_url: &str,
) -> Result<ProcStack> {
    step(&format!(
        "the broker's floor: one record at a time, produce -> consume{}",
        of_round(opts, n)
    ));
    let r = baselines::kafka(&KafkaOpts {
        bootstrap: broker.bootstrap(),
        topic_prefix: format!("floor{}", std::process::id()),
        partitions: 8,
        messages: opts.floor_records,
        payload_bytes: ingress_record_bytes(opts.body_bytes),
        in_flight: 1,
    })
    .await?;
    round.broker_floor = Some(noted(r));
    // Each run on a stack and topics of its own: none reads topics the
    // runs before it filled (the broker's fetches cost more as a topic
    // grows), and the latency runs, the ones with targets, go first.
    for (run, (label, via, rate)) in [
        (
            "distributed connect unloaded",
            Via::Connect,
            Some(opts.unloaded_rate),
        ),
        (
            "distributed connect fixed rate",
            Via::Connect,
            Some(opts.latency_rate),
        ),
        ("distributed connect max", Via::Connect, None),
        ("distributed unary max", Via::Unary, None),
    ]
    .into_iter()
    .enumerate()
    {
        step(&format!("{label}: a fresh stack on fresh topics"));
        stack.terminate(Duration::from_secs(10)).await;
        stack = start_stack_on(
            broker,
            database_url,
            &opts.log_dir,
            &format!("-round{n}-run{run}"),
        );
        let gateway = stack.gateway_addr(0);
        ready(gateway).await?;
        let mut o = opts.load(label, gateway, via, rate);
        o.watch = watch(&stack);
        o.watch
            .extend(broker.pid().map(|p| ("broker".to_string(), p)));
        o.watch_servers.extend(
            pg.server_pids()
                .first()
                .map(|p| ("PostgreSQL".to_string(), *p)),
        );
        round.distributed.push(show(load::run(&o).await?));
    }
    Ok(stack)
}

/// History's ingest on a fresh database of `pg`, with search indexing
/// `on` or off, its log named after the round and the setting.
async fn ingest_once(
    opts: &SuiteOpts,
    pg: &PgCluster,
    broker: &Broker,
    round: usize,
    on: bool,
) -> Result<IngestReport> {
    let switch = if on { "on" } else { "off" };
    step(&format!(
        "history's ingest (a pre-filled ingress topic), search indexing {switch}, round {}",
        round + 1
    ));
    let r = ingest::run_with(
        &IngestOpts {
            bootstrap: broker.bootstrap(),
            database_url: pg.fresh_database().await?,
            prefix: format!("ingest{}-{round}-{switch}", std::process::id()),
            partitions: 8,
            messages: opts.ingest_messages,
            conversations: 200.min(opts.ingest_messages.max(1)),
            body_bytes: opts.body_bytes,
            log: opts
                .log_dir
                .join(format!("history-ingest-{round}-{switch}.log")),
        },
        &IngestSetup {
            search_index: Some(on),
            postmaster: pg.server_pids().first().copied(),
        },
    )
    .await?;
    Ok(noted(r))
}

/// `r`, printed to stderr as it is.
fn noted<T: std::fmt::Debug>(r: T) -> T {
    eprintln!("{r:?}");
    r
}

fn step(what: &str) {
    eprintln!("\n== {what}");
}

fn show(r: LoadReport) -> LoadReport {
    eprint!("{}", load::describe(&r));
    r
}

/// The encoded size of an IngressRecord carrying a send of `body` bytes,
/// the payload the Kafka ceiling moves.
fn ingress_record_bytes(body: usize) -> usize {
    use confab_proto::internal::v1::{ingress_record, IngressRecord, Origin, SendCommand};
    use prost::Message as _;
    IngressRecord {
        origin: Some(Origin {
            gateway_id: "gateway-1".into(),
            request_id: u64::MAX / 3,
        }),
        actor_id: "bench1234x56-u123".into(),
        conversation_id: "0123456789abcdef0123456789abcdef".into(),
        command: Some(ingress_record::Command::Send(SendCommand {
            reply_to_seq: 0,
            client_msg_id: "123456789012.12.1234".into(),
            body: "x".repeat(body),
        })),
        traceparent: "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01".into(),
        accepted_at_ms: 1_800_000_000_000,
    }
    .encoded_len()
}

/// The services of `stack` and PostgreSQL (every process of the server,
/// the backends that start and exit during a run among them), for the
/// parts that report CPU per call.
fn watch_with_postgres(stack: &ProcStack, pg: &PgCluster) -> Vec<(String, Watched)> {
    watch(stack)
        .into_iter()
        .map(|(label, pid)| (label, Watched::Processes(vec![pid])))
        .chain(
            pg.server_pids()
                .first()
                .map(|postmaster| ("PostgreSQL".to_string(), Watched::Server(*postmaster))),
        )
        .collect()
}
