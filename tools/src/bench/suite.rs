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
//!    ceilings, history's isolated ingest rate, `GetHistory` on a table of
//!    millions of rows, sends as fast as possible and at a fixed rate, and
//!    idle streams on the gateway.
//!
//! Each target of the performance issue is then checked and reported as
//! met or missed; nothing fails the run but an error.

use super::baselines::{self, InsertOpts, InsertReport, KafkaOpts, KafkaReport};
use super::idle::{self, IdleOpts, IdleReport};
use super::ingest::{self, IngestOpts, IngestReport};
use super::load::{self, LoadOpts, LoadReport, Via};
use super::reads::{self, GenerateOpts, GenerateReport, ReadOpts, ReadReport};
use super::{sibling_bin, Machine};
use anyhow::{anyhow, Context, Result};
use confab_tests::broker::Broker;
use confab_tests::postgres::PgCluster;
use confab_tests::stack::{ProcStack, Role};
use confab_tests::{free_port, DevProcess, DEADLINE, SECRET};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
    /// History's ingest from a pre-filled ingress topic.
    Ingest,
    /// The generated table, and `GetHistory` through the gateway.
    Reads,
    /// Sends through history, router and gateway.
    Distributed,
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
    /// Idle `Connect` streams, and the connections they share.
    pub idle_streams: usize,
    pub idle_connections: usize,
    /// Rows the history-read table is filled with, over this many
    /// conversations.
    pub history_rows: u64,
    pub history_conversations: u64,
    /// `GetHistory` calls measured.
    pub history_requests: u64,
    /// Messages for the Kafka ceiling, the insert ceiling and the ingest
    /// run.
    pub kafka_messages: u64,
    pub insert_rows: u64,
    pub ingest_messages: u64,
    /// Body size of every message.
    pub body_bytes: usize,
    /// Where the services' logs go.
    pub log_dir: PathBuf,
}

impl SuiteOpts {
    /// What `make bench` runs (about 15 minutes on 2 cores, most of it
    /// filling the 10M-row table).
    pub fn full(log_dir: PathBuf) -> Self {
        Self {
            seconds: 15,
            warmup: 3,
            clients: 200,
            conversations: 100,
            in_flight: 16,
            latency_rate: 5000.0,
            idle_streams: 20_000,
            idle_connections: 200,
            history_rows: 10_000_000,
            history_conversations: 1_000,
            history_requests: 20_000,
            kafka_messages: 200_000,
            insert_rows: 500_000,
            ingest_messages: 200_000,
            body_bytes: 100,
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
            idle_streams: 300,
            idle_connections: 10,
            history_rows: 20_000,
            history_conversations: 10,
            history_requests: 300,
            kafka_messages: 2_000,
            insert_rows: 5_000,
            ingest_messages: 2_000,
            body_bytes: 100,
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

/// One target of the issue, as measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Target {
    pub name: String,
    /// The goal, in words.
    pub goal: String,
    /// What was measured, in words.
    pub measured: String,
    pub met: bool,
}

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
    pub kafka: Option<KafkaReport>,
    pub inserts: Option<InsertReport>,
    pub ingest: Option<IngestReport>,
    pub history_table: Option<GenerateReport>,
    /// `GetHistory` from one client: the latency of a page.
    pub history_reads: Option<ReadReport>,
    /// `GetHistory` from four clients at once: the same under load.
    pub history_reads_loaded: Option<ReadReport>,
    /// The distributed stack.
    pub distributed: Vec<LoadReport>,
    pub gateway_idle: Option<IdleReport>,
    pub targets: Vec<Target>,
}

/// Runs everything.
pub async fn run(opts: &SuiteOpts) -> Result<SuiteReport> {
    let started = Instant::now();
    std::fs::create_dir_all(&opts.log_dir).context("log directory")?;
    let mut report = SuiteReport {
        machine: Machine::detect(),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        ..Default::default()
    };

    // 1. The gRPC ceiling.
    if opts.runs(Section::Echo) {
        step("echo server (the gRPC ceiling)");
        let echo = EchoProcess::start(&opts.log_dir.join("echo.log")).await?;
        let mut o = opts.load("echo unary max", echo.addr, Via::Unary, None);
        o.confab = false;
        o.watch = vec![("echo server".into(), echo.pid())];
        report.echo = Some(show(load::run(&o).await?));
    }

    // 2. Embedded mode.
    if opts.runs(Section::Embedded) {
        step("embedded mode (confab dev)");
        let dir = tempfile::tempdir().context("data directory")?;
        let dev = DevProcess::start(dir.path(), free_port())?;
        for (label, via, rate) in [
            ("embedded unary max", Via::Unary, None),
            ("embedded connect max", Via::Connect, None),
            (
                "embedded connect fixed rate",
                Via::Connect,
                Some(opts.latency_rate),
            ),
        ] {
            let mut o = opts.load(label, dev.addr, via, rate);
            o.watch = vec![("confab dev".into(), dev.pid())];
            report.embedded.push(show(load::run(&o).await?));
        }
    }
    if opts.runs(Section::Idle) {
        step("idle Connect streams on a fresh confab dev");
        let dir = tempfile::tempdir().context("data directory")?;
        let dev = DevProcess::start(dir.path(), free_port())?;
        let r = idle::run(&IdleOpts {
            addr: dev.addr,
            server_pid: dev.pid(),
            secret: SECRET.into(),
            user_prefix: "idle-embedded-".into(),
            streams: opts.idle_streams,
            connections: opts.idle_connections,
        })
        .await?;
        eprintln!("{r:?}");
        report.embedded_idle = Some(r);
    }

    // 3. The distributed stack and its parts.
    let stacked = [Section::Idle, Section::Reads, Section::Distributed];
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
        eprintln!("{r:?}");
        report.kafka = Some(r);
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
        eprintln!("{r:?}");
        report.inserts = Some(r);
    }

    if opts.runs(Section::Ingest) {
        step("history's ingest (a pre-filled ingress topic)");
        let r = ingest::run(&IngestOpts {
            bootstrap: broker.bootstrap(),
            database_url: pg.fresh_database().await?,
            prefix: format!("ingest{}", std::process::id()),
            partitions: 8,
            messages: opts.ingest_messages,
            conversations: 200.min(opts.ingest_messages.max(1)),
            body_bytes: opts.body_bytes,
            log: opts.log_dir.join("history-ingest.log"),
        })
        .await?;
        eprintln!("{r:?}");
        report.ingest = Some(r);
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
    if opts.runs(Section::Reads) {
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
        eprintln!("{r:?}");
        report.history_table = Some(r);
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
        })
        .await?;
        eprintln!("{r:?}");
        report.gateway_idle = Some(r);
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
    }

    if opts.runs(Section::Distributed) {
        step("sends through the distributed stack");
        for (label, via, rate) in [
            ("distributed connect max", Via::Connect, None),
            ("distributed unary max", Via::Unary, None),
            (
                "distributed connect fixed rate",
                Via::Connect,
                Some(opts.latency_rate),
            ),
        ] {
            let mut o = opts.load(label, gateway, via, rate);
            o.watch = watch(&stack);
            report.distributed.push(show(load::run(&o).await?));
        }
    }
    stack.terminate(Duration::from_secs(10)).await;
    drop(broker);
    drop(pg);

    report.targets = targets(&report, opts);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Waits until a message sent through `gateway` is delivered: the
/// consumers have joined their groups and the router has attached.
async fn ready(gateway: SocketAddr) -> Result<()> {
    use confab_proto::v1::{server_frame, ConversationKind};
    let alice = confab_tests::User::connect(gateway, "bench-probe-a").await;
    let alice = &alice;
    let last_error = std::sync::Mutex::new(None::<anyhow::Error>);
    let last_error = &last_error;
    let mut attempt = 0;
    let delivered = confab_tests::poll(
        "a probe message delivered through the stack",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || {
            attempt += 1;
            let attempt = attempt;
            async move {
                let tried: Result<()> = async {
                    let conv = alice
                        .create(ConversationKind::Direct, "probe", &["bench-probe-b"])
                        .await?;
                    let mut live = alice
                        .session(server_ping())
                        .await
                        .map_err(|s| anyhow!("open a stream: {s:?}"))?;
                    live.next_frame().await?;
                    let sent = alice
                        .send(&conv.id, &format!("probe-{attempt}"), "ready?")
                        .await?;
                    loop {
                        if let server_frame::Frame::Message(m) = live.next_frame().await? {
                            if m.seq == sent.seq {
                                return Ok(());
                            }
                        }
                    }
                }
                .await;
                Ok(match tried {
                    Ok(()) => Some(()),
                    Err(e) => {
                        if let Ok(mut last) = last_error.lock() {
                            *last = Some(e);
                        }
                        None
                    }
                })
            }
        },
    )
    .await;
    delivered.map_err(
        |timeout| match last_error.lock().ok().and_then(|mut l| l.take()) {
            Some(e) => e.context(timeout),
            None => timeout,
        },
    )
}

fn server_ping() -> confab_proto::v1::client_frame::Frame {
    confab_proto::v1::client_frame::Frame::Ping(confab_proto::v1::Ping { nonce: 1 })
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
            client_msg_id: "123456789012.12.1234".into(),
            body: "x".repeat(body),
        })),
        traceparent: "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01".into(),
        accepted_at_ms: 1_800_000_000_000,
    }
    .encoded_len()
}

/// The targets against what was measured.
fn targets(r: &SuiteReport, opts: &SuiteOpts) -> Vec<Target> {
    let mut t = Vec::new();
    let find = |list: &[LoadReport], label: &str| list.iter().find(|x| x.label == label).cloned();
    if let (Some(echo), Some(emb)) = (&r.echo, find(&r.embedded, "embedded unary max")) {
        let ratio = emb.acked_per_sec / echo.acked_per_sec.max(1e-9);
        let connect = find(&r.embedded, "embedded connect max")
            .map(|c| c.acked_per_sec / echo.acked_per_sec.max(1e-9))
            .unwrap_or(0.0);
        t.push(Target {
            name: "embedded sends vs the gRPC ceiling".into(),
            goal: ">= 50% of the bare tonic echo server's calls/s".into(),
            measured: format!(
                "unary {:.0}/s = {:.0}% of echo {:.0}/s (Connect: {:.0}%)",
                emb.acked_per_sec,
                ratio * 100.0,
                echo.acked_per_sec,
                connect * 100.0
            ),
            met: ratio >= 0.5,
        });
    }
    let best = r
        .distributed
        .iter()
        .filter(|x| x.target_rate.is_none())
        .max_by(|a, b| a.acked_per_sec.total_cmp(&b.acked_per_sec));
    if let Some(d) = best {
        let delivered_msgs = d.delivered_per_sec / d.fanout.max(1.0);
        t.push(Target {
            name: "distributed throughput".into(),
            goal: ">= 20000 messages/s sequenced and delivered".into(),
            measured: format!(
                "{}: {:.0} sequenced/s, {:.0} delivered/s ({:.0} deliveries/s at fanout {:.2})",
                d.label, d.acked_per_sec, delivered_msgs, d.delivered_per_sec, d.fanout
            ),
            met: d.acked_per_sec >= 20_000.0 && delivered_msgs >= 20_000.0,
        });
    }
    if let Some(d) = find(&r.distributed, "distributed connect fixed rate") {
        t.push(Target {
            name: "distributed latency".into(),
            goal: format!(
                "p99 send->delivery <= 25 ms at {:.0} messages/s",
                opts.latency_rate
            ),
            measured: format!(
                "p99 {:.2} ms at {:.0} acked/s (p50 {:.2} ms, max {:.2} ms)",
                d.delivery.p99_us as f64 / 1000.0,
                d.acked_per_sec,
                d.delivery.p50_us as f64 / 1000.0,
                d.delivery.max_us as f64 / 1000.0
            ),
            met: d.delivery.p99_us <= 25_000 && d.acked_per_sec >= opts.latency_rate * 0.95,
        });
    }
    for (name, idle) in [("embedded", &r.embedded_idle), ("gateway", &r.gateway_idle)] {
        if let Some(i) = idle {
            t.push(Target {
                name: format!("idle Connect streams ({name})"),
                goal: "<= 16 KiB RSS per idle stream".into(),
                measured: format!(
                    "{:.1} KiB per stream ({} streams over {} connections)",
                    i.bytes_per_stream / 1024.0,
                    i.streams,
                    i.connections
                ),
                met: i.bytes_per_stream <= 16.0 * 1024.0 && i.errors.is_empty(),
            });
        }
    }
    if let (Some(reads), Some(table)) = (&r.history_reads, &r.history_table) {
        t.push(Target {
            name: "GetHistory".into(),
            goal: "p99 <= 2 ms for a 50-message page on a 10M-row table".into(),
            measured: format!(
                "p99 {:.2} ms (p50 {:.2} ms) on {} rows, one client{}",
                reads.latency.p99_us as f64 / 1000.0,
                reads.latency.p50_us as f64 / 1000.0,
                table.rows,
                r.history_reads_loaded
                    .as_ref()
                    .map(|l| format!(
                        "; p99 {:.2} ms with {} clients at once",
                        l.latency.p99_us as f64 / 1000.0,
                        l.concurrency
                    ))
                    .unwrap_or_default()
            ),
            met: reads.latency.p99_us <= 2_000 && table.rows >= 10_000_000,
        });
    }
    if let (Some(ingest), Some(inserts)) = (&r.ingest, &r.inserts) {
        let ratio = ingest.sequenced_per_sec / inserts.rows_per_sec.max(1e-9);
        t.push(Target {
            name: "history ingest".into(),
            goal: ">= 70% of raw batched inserts".into(),
            measured: format!(
                "{:.0} sequenced/s = {:.0}% of {:.0} rows/s",
                ingest.sequenced_per_sec,
                ratio * 100.0,
                inserts.rows_per_sec
            ),
            met: ratio >= 0.7,
        });
    }
    t
}

/// The report as a table.
pub fn table(r: &SuiteReport) -> String {
    let m = &r.machine;
    let mut s = format!(
        "Confab benchmark: {} ({} cores, {} GiB), Linux {}, {} build, {:.0} s\n\n",
        m.cpu_model,
        m.cores,
        m.memory_gib,
        m.kernel,
        if m.release_build { "release" } else { "DEBUG" },
        r.seconds
    );
    s.push_str(&format!(
        "{:<32} {:>10} {:>10} {:>12} {:>30} {:>30}\n",
        "run",
        "sent/s",
        "acked/s",
        "delivered/s",
        "ack p50/p90/p99/p99.9/max",
        "delivery p50/p90/p99/p99.9/max"
    ));
    for l in r.echo.iter().chain(&r.embedded).chain(&r.distributed) {
        s.push_str(&format!(
            "{:<32} {:>10.0} {:>10.0} {:>12.0} {:>30} {:>30}\n",
            l.label,
            l.sent_per_sec,
            l.acked_per_sec,
            l.delivered_per_sec,
            l.ack.brief(),
            l.delivery.brief()
        ));
        let errors: u64 = l.errors.values().sum();
        if errors > 0 {
            s.push_str(&format!("{:<32} errors: {:?}\n", "", l.errors));
        }
        for p in &l.processes {
            s.push_str(&format!(
                "{:<32}   {}: {:.2} cores, RSS {} MiB\n",
                "",
                p.label,
                p.cores,
                p.rss_kib / 1024
            ));
        }
    }
    if let Some(k) = &r.kafka {
        s.push_str(&format!(
            "\nKafka ceiling: {} x {} B: produced {:.0}/s, consumed {:.0}/s; produce->ack {}; produce->consume {}\n",
            k.messages, k.payload_bytes, k.produced_per_sec, k.consumed_per_sec, k.produce_ack.brief(), k.produce_to_consume.brief()
        ));
    }
    if let Some(i) = &r.inserts {
        s.push_str(&format!(
            "Database ceiling: {} rows in batches of {} by {} writers: {:.0} rows/s; batch {}\n",
            i.rows,
            i.batch,
            i.writers,
            i.rows_per_sec,
            i.batch_latency.brief()
        ));
    }
    if let Some(i) = &r.ingest {
        s.push_str(&format!(
            "History ingest: {} messages over {} conversations: {:.0}/s (history {:.2} cores)\n",
            i.messages, i.conversations, i.sequenced_per_sec, i.history.cores
        ));
    }
    if let Some(g) = &r.history_table {
        s.push_str(&format!(
            "GetHistory: {} rows ({} MiB) over {} conversations, generated in {:.0} s\n",
            g.rows,
            g.table_bytes >> 20,
            g.conversations,
            g.seconds,
        ));
    }
    for h in r.history_reads.iter().chain(&r.history_reads_loaded) {
        s.push_str(&format!(
            "GetHistory, {} client(s): {} pages of {}: {:.0}/s, {}\n",
            h.concurrency,
            h.requests,
            h.page,
            h.per_sec,
            h.latency.brief()
        ));
    }
    for (name, idle) in [("embedded", &r.embedded_idle), ("gateway", &r.gateway_idle)] {
        if let Some(i) = idle {
            s.push_str(&format!(
                "Idle streams ({name}): {} streams over {} connections: RSS {} -> {} MiB, {:.1} KiB per stream\n",
                i.streams,
                i.connections,
                i.rss_before_kib / 1024,
                i.rss_after_kib / 1024,
                i.bytes_per_stream / 1024.0
            ));
        }
    }
    s.push_str("\nTargets:\n");
    for t in &r.targets {
        s.push_str(&format!(
            "  [{}] {}: {} — {}\n",
            if t.met { "met " } else { "MISS" },
            t.name,
            t.goal,
            t.measured
        ));
    }
    s
}

/// The echo server (`confab-bench echo-server`) as a child process.
struct EchoProcess {
    child: Child,
    addr: SocketAddr,
}

impl EchoProcess {
    async fn start(log: &Path) -> Result<Self> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let log = std::fs::File::create(log).context("echo log")?;
        let child = Command::new(sibling_bin("confab-bench"))
            .args(["echo-server", "--listen", &addr.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start confab-bench echo-server")?;
        let mut me = Self { child, addr };
        let what = format!("the echo server to listen on {addr}");
        confab_tests::poll(&what, DEADLINE, Duration::from_millis(20), || {
            std::future::ready(match me.child.try_wait() {
                Ok(Some(status)) => Err(anyhow!("the echo server exited: {status}")),
                Err(e) => Err(e.into()),
                Ok(None) => Ok(std::net::TcpStream::connect(addr).ok().map(|_| ())),
            })
        })
        .await?;
        Ok(me)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One history, one router and one gateway as real processes, logging
/// warnings to `logs`.
fn start_stack(broker: &Broker, database_url: &str, logs: &Path) -> ProcStack {
    ProcStack::builder("bench")
        .kafka_prefix(format!("bench{}", std::process::id()))
        .log("warn")
        .log_dir(logs)
        .start(broker, database_url)
}

/// The services' processes to report on, gateway first.
fn watch(stack: &ProcStack) -> Vec<(String, u32)> {
    [Role::Gateway, Role::Router, Role::History]
        .iter()
        .map(|role| stack.first(*role))
        .filter_map(|s| s.pid().map(|p| (s.label.clone(), p)))
        .collect()
}
