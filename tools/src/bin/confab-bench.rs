//! `confab-bench`: Confab's load generator and benchmark suite.
//!
//! - `confab-bench suite` (what `make bench` runs): every measurement of
//!   `docs/benchmarks.md` in one run, with the ceilings of the parts, as a
//!   table and as JSON.
//! - `confab-bench load`: the load generator alone, against a running
//!   gateway (`--target`, e.g. `make stack`'s 127.0.0.1:50051) or against
//!   a `confab dev` it starts (`--embedded`).
//! - `confab-bench echo-server`: the bare tonic echo server (the gRPC
//!   ceiling), run as its own process by `suite`.
//! - `confab-bench ingest`, `idle`, `generate`: parts of the suite alone.

use clap::{Args, Parser, Subcommand};
use confab_tests::{free_port, DevProcess, SECRET};
use confab_tools::bench::load::{self, LoadOpts, Via};
use confab_tools::bench::suite::{self, SuiteOpts};
use confab_tools::bench::{echo, idle, Machine};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "confab-bench",
    about = "Confab's load generator and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every benchmark with its baselines (make bench).
    Suite {
        /// A run of every part in about a minute, to check the harness.
        #[arg(long)]
        smoke: bool,
        /// Measured seconds per load run.
        #[arg(long)]
        seconds: Option<u64>,
        /// Rows of the history-read table.
        #[arg(long)]
        history_rows: Option<u64>,
        /// Conversations the history-read table's rows are spread over
        /// (1,000 by default; the reader is a member of each).
        #[arg(long)]
        history_conversations: Option<u64>,
        /// Idle Connect streams.
        #[arg(long)]
        idle_streams: Option<usize>,
        /// Idle WebSocket sessions (a connection each).
        #[arg(long)]
        idle_websockets: Option<usize>,
        /// Rounds of the load runs; targets resting on them are judged on
        /// the median round [default: 5; --smoke: 1].
        #[arg(long)]
        repeats: Option<usize>,
        /// Write the report as JSON here.
        #[arg(long, default_value = "bench-results.json")]
        json: PathBuf,
        /// Keep the services' logs here.
        #[arg(long, default_value = "bench-logs")]
        logs: PathBuf,
        /// Run only these parts (repeatable, or comma-separated); targets
        /// are reported for what ran.
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<suite::Section>,
    },
    /// The load generator alone.
    Load(LoadArgs),
    /// Idle `Connect` streams on a `confab dev` it starts: memory per stream.
    Idle {
        #[arg(long, default_value_t = 20_000)]
        streams: usize,
        #[arg(long, default_value_t = 200)]
        connections: usize,
    },
    /// History's ingest from a pre-filled ingress topic (PostgreSQL and the
    /// broker's memory engine, started here), next to raw batched inserts.
    Ingest {
        #[arg(long, default_value_t = 200_000)]
        messages: u64,
        #[arg(long, default_value_t = 200)]
        conversations: u64,
        /// History's `CONFAB_SEARCH_INDEX` (unset: its default, on).
        #[arg(long, value_enum)]
        search_index: Option<Switch>,
    },
    /// Fills a PostgreSQL database with the suite's generated table (the
    /// messages `reads` and `search` measure), for looking into it by hand;
    /// prints what it did as JSON.
    Generate {
        /// A database no history serves yet (migrated or empty).
        #[arg(long)]
        database_url: String,
        #[arg(long, default_value_t = 10_000_000)]
        rows: u64,
        #[arg(long, default_value_t = 1_000)]
        conversations: u64,
        /// The member of every conversation (and their owner).
        #[arg(long, default_value = "bench-reader")]
        reader: String,
    },
    /// The bare tonic echo server.
    EchoServer {
        #[arg(long, default_value = "127.0.0.1:50099")]
        listen: String,
    },
}

/// On or off.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}

#[derive(Args)]
struct LoadArgs {
    /// A running gateway (e.g. make stack's 127.0.0.1:50051).
    #[arg(long, conflicts_with = "embedded")]
    target: Option<SocketAddr>,
    /// Start `confab dev` (next to this binary) and load it.
    #[arg(long)]
    embedded: bool,
    /// The HS256 secret the gateway checks tokens with [default: the
    /// secret of --embedded, or CONFAB_JWT_SECRET].
    #[arg(long, env = "CONFAB_JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,
    #[arg(long, default_value_t = 100)]
    clients: usize,
    #[arg(long, default_value_t = 50)]
    conversations: usize,
    /// Share of GROUP conversations (0..1); the rest are DIRECT.
    #[arg(long, default_value_t = 0.2)]
    group_share: f64,
    #[arg(long, default_value_t = 5)]
    group_size: usize,
    #[arg(long, value_enum, default_value_t = Via::Connect)]
    via: Via,
    /// Total messages per second; 0: as fast as --in-flight allows.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Unacknowledged sends per client (at most 256 over Connect).
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    /// Share of clients (0..1) that send a `read` frame on their stream for
    /// every message delivered to it, as the suite's "10% reading" run.
    #[arg(long, default_value_t = 0.0)]
    read_share: f64,
    /// The target is the echo server: unary sends only, no conversations,
    /// no streams.
    #[arg(long)]
    echo: bool,
    /// Report CPU and memory of these processes too (pid, repeatable).
    #[arg(long)]
    pid: Vec<u32>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("runtime: {e}")));
    let result = runtime.block_on(async move {
        match cli.command {
            Cmd::EchoServer { listen } => {
                let listener = tokio::net::TcpListener::bind(&listen).await?;
                echo::serve(listener).await
            }
            Cmd::Load(args) => load_cmd(args).await,
            Cmd::Generate {
                database_url,
                rows,
                conversations,
                reader,
            } => print_json(
                &confab_tools::bench::reads::generate(
                    &confab_tools::bench::reads::GenerateOpts {
                        database_url,
                        rows,
                        conversations,
                        reader,
                        body_bytes: 100,
                    },
                )
                .await?,
            ),
            Cmd::Ingest {
                messages,
                conversations,
                search_index,
            } => {
                use confab_tools::bench::{baselines, ingest};
                let pg = confab_tests::postgres::PgCluster::start_local()?;
                let broker = confab_tests::broker::Broker::start_memory().await;
                let logs = tempfile::tempdir()?;
                print_json(
                    &ingest::run_with(
                        &ingest::IngestOpts {
                            bootstrap: broker.bootstrap(),
                            database_url: pg.fresh_database().await?,
                            prefix: format!("ingest{}", std::process::id()),
                            partitions: 8,
                            messages,
                            conversations,
                            body_bytes: 100,
                            log: logs.path().join("history.log"),
                        },
                        &ingest::IngestSetup {
                            search_index: search_index.map(|s| matches!(s, Switch::On)),
                            postmaster: pg.server_pids().first().copied(),
                        },
                    )
                    .await?,
                )?;
                print_json(&baselines::postgres_inserts(&baselines::InsertOpts {
                    database_url: pg.fresh_database().await?,
                    rows: messages,
                    batch: confab_history::ingest::MAX_BATCH,
                    writers: 8,
                    body_bytes: 100,
                })
                .await?)
            }
            Cmd::Idle {
                streams,
                connections,
            } => {
                let dir = tempfile::tempdir()?;
                let dev = DevProcess::start(dir.path(), free_port())?;
                print_json(&idle::run(&idle::IdleOpts {
                    addr: dev.addr,
                    server_pid: dev.pid(),
                    secret: SECRET.into(),
                    user_prefix: "idle-".into(),
                    streams,
                    connections,
                    websocket: None,
                })
                .await?)
            }
            Cmd::Suite {
                smoke,
                seconds,
                history_rows,
                history_conversations,
                idle_streams,
                idle_websockets,
                repeats,
                json,
                logs,
                only,
            } => {
                let mut opts = if smoke {
                    SuiteOpts::smoke(logs)
                } else {
                    SuiteOpts::full(logs)
                };
                if let Some(s) = seconds {
                    opts.seconds = s;
                }
                if let Some(r) = history_rows {
                    opts.history_rows = r;
                }
                if let Some(c) = history_conversations {
                    opts.history_conversations = c;
                }
                if let Some(n) = idle_streams {
                    opts.idle_streams = n;
                }
                if let Some(n) = idle_websockets {
                    opts.idle_websockets = n;
                }
                if let Some(n) = repeats {
                    opts.repeats = n.max(1);
                }
                opts.only = only;
                if !Machine::detect().release_build {
                    eprintln!("confab-bench: this is a debug build; numbers mean little (make bench builds --release)");
                }
                let report = suite::run(&opts).await?;
                println!("{}", suite::table(&report));
                std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
                println!("JSON: {}", json.display());
                let svg = suite::plot_path(&json);
                if suite::plot(&report, &svg)? {
                    println!("Runs second by second: {}", svg.display());
                }
                Ok(())
            }
        }
    });
    if let Err(e) = result {
        fail(&format!("{e:#}"));
    }
}

async fn load_cmd(a: LoadArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (dev, target, secret) = match (a.target, a.embedded) {
        (Some(t), false) => (
            None,
            t,
            a.secret
                .clone()
                .unwrap_or_else(|| confab_auth::DEV_SECRET.to_string()),
        ),
        (None, true) => {
            let dev = DevProcess::start(dir.path(), free_port())?;
            let addr = dev.addr;
            (Some(dev), addr, SECRET.to_string())
        }
        _ => anyhow::bail!("give --target ADDR (a running gateway) or --embedded"),
    };
    let mut opts = LoadOpts::new(
        if dev.is_some() { "embedded" } else { "target" },
        target,
        &secret,
    );
    opts.clients = a.clients;
    opts.conversations = a.conversations;
    opts.group_share = a.group_share;
    opts.group_size = a.group_size;
    opts.via = a.via;
    opts.rate = (a.rate > 0.0).then_some(a.rate);
    opts.in_flight = a.in_flight;
    opts.duration = Duration::from_secs(a.seconds);
    opts.warmup = Duration::from_secs(a.warmup);
    opts.body_bytes = a.body_bytes;
    opts.read_share = a.read_share;
    if a.echo {
        opts.confab = false;
        opts.via = Via::Unary;
    }
    opts.watch = a.pid.iter().map(|p| (format!("pid {p}"), *p)).collect();
    if let Some(d) = &dev {
        opts.watch.push(("confab dev".into(), d.pid()));
    }
    let report = load::run(&opts).await?;
    print!("{}", load::describe(&report));
    if let Some(path) = a.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        println!("JSON: {}", path.display());
    }
    Ok(())
}

/// Prints a report as JSON on stdout.
fn print_json(report: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(report)?);
    Ok(())
}

fn fail(msg: &str) -> ! {
    eprintln!("confab-bench: {msg}");
    std::process::exit(1);
}
