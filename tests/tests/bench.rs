//! `make bench`'s suite at smoke size: every part runs against the real
//! processes (echo server, `confab dev`, PostgreSQL, the nisshi broker and
//! the three service binaries) and its report must add up: every send
//! answered, every due delivery made, the counts asked for, percentiles in
//! order. No speed is asserted here; `docs/benchmarks.md` has the numbers.

use confab_tools::bench::load::LoadReport;
use confab_tools::bench::suite::{self, SuiteOpts, SuiteReport};
use confab_tools::bench::user_stack;
use confab_tools::bench::Latency;
use std::time::Duration;

fn ordered(what: &str, l: &Latency) {
    assert!(l.count > 0, "{what}: no samples");
    assert!(
        l.p50_us <= l.p90_us
            && l.p90_us <= l.p99_us
            && l.p99_us <= l.p999_us
            && l.p999_us <= l.max_us,
        "{what}: percentiles out of order: {l:?}"
    );
}

/// Each `(got, want, why)` holds for the run `what`.
fn all_equal(what: &str, checks: &[(u64, u64, &str)]) {
    for (got, want, why) in checks {
        assert_eq!(got, want, "{what}: {why}");
    }
}

fn complete(r: &LoadReport, deliveries: bool) {
    let what = &r.label;
    assert!(r.errors.is_empty(), "{what}: errors {:?}", r.errors);
    assert!(r.total_sent > 0 && r.sent > 0, "{what}: nothing sent");
    all_equal(
        what,
        &[
            (r.total_acked, r.total_sent, "every send acknowledged"),
            (r.acked, r.sent, "every send in the window acknowledged"),
            (r.ack.count, r.acked, "one ack latency per ack"),
        ],
    );
    ordered(&format!("{what} ack"), &r.ack);
    if deliveries {
        all_equal(
            what,
            &[
                (
                    r.total_delivered,
                    r.total_expected_deliveries,
                    "every member's stream got every message, once",
                ),
                (r.delivered, r.expected_deliveries, "window deliveries"),
                (r.delivery.count, r.delivered, "one latency per delivery"),
            ],
        );
        ordered(&format!("{what} delivery"), &r.delivery);
        // DIRECT conversations deliver to 2 streams, GROUPs to group_size.
        assert!(
            r.fanout >= 2.0 && r.fanout <= r.group_size as f64,
            "{what}: fanout {}",
            r.fanout
        );
    } else {
        assert_eq!(
            r.total_delivered, 0,
            "{what}: the echo server delivers nothing"
        );
    }
    assert!(
        r.processes.iter().all(|p| p.rss_kib > 0),
        "{what}: every watched process measured: {:?}",
        r.processes
    );
    assert!(r.processes.len() >= 2, "{what}: server and client measured");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_part_of_the_benchmark_runs_and_adds_up() {
    confab_tests::init_tracing();
    let logs = tempfile::tempdir().expect("log dir");
    let opts = SuiteOpts::smoke(logs.path().to_path_buf());
    let report = suite::run(&opts).await.expect("the suite runs");

    let echo = report.echo.as_ref().expect("echo measured");
    complete(echo, false);
    // Five over gRPC, two with the sessions over the WebSocket.
    assert_eq!(report.embedded.len(), 7);
    assert!(
        report
            .embedded
            .iter()
            .any(|r| r.label == "embedded websocket max"),
        "{:?}",
        report.embedded.iter().map(|r| &r.label).collect::<Vec<_>>()
    );
    assert_eq!(report.distributed.len(), 4);
    for r in report.embedded.iter().chain(&report.distributed) {
        complete(r, true);
        assert_eq!(r.clients, opts.clients);
    }
    let reading = report
        .embedded
        .iter()
        .find(|r| r.label == "embedded connect max, 10% reading")
        .expect("the run with reads");
    assert!(
        reading.reads_answered > 0 && reading.reads_answered <= reading.reads_sent,
        "reads: {} sent, {} answered",
        reading.reads_sent,
        reading.reads_answered
    );
    let flood = report
        .embedded
        .iter()
        .find(|r| r.label == "embedded connect fixed rate, one user flooding typing")
        .expect("the run with a typing flood");
    assert!(
        flood.typing_frames > 100,
        "a flood: {}",
        flood.typing_frames
    );
    for (idle, streams) in [
        (&report.embedded_idle, opts.idle_streams),
        (&report.gateway_idle, opts.idle_streams),
        (&report.embedded_idle_alone, opts.idle_websockets),
        (&report.embedded_idle_websocket, opts.idle_websockets),
    ] {
        let idle = idle.as_ref().expect("idle streams measured");
        assert_eq!(idle.streams, streams);
        assert!(idle.errors.is_empty(), "{:?}", idle.errors);
        assert!(
            idle.rss_before_kib > 0 && idle.rss_after_kib > 0,
            "{idle:?}"
        );
    }
    // `make stack` from outside: every process it started measured idle,
    // then the steps, the first (the slowest rate) complete.
    let stack = report.user_stack.as_ref().expect("make stack measured");
    let idle: Vec<&str> = stack.idle.iter().map(|p| p.label.as_str()).collect();
    for want in ["broker", "history", "router", "gateway", "PostgreSQL"] {
        assert!(
            idle.contains(&want),
            "make stack idle: {want} missing from {idle:?}"
        );
    }
    assert!(
        stack.idle.iter().all(|p| p.pid > 0 && p.cores >= 0.0) && stack.idle_percent() > 0.0,
        "{:?}",
        stack.idle
    );
    let first = stack
        .steps
        .first()
        .expect("a step through make stack's gateway");
    complete(first, true);
    assert_eq!(first.target_rate, opts.stack_rates.first().copied());
    // The figure is the highest rate among the steps that held.
    let held = stack
        .steps
        .iter()
        .filter_map(|s| s.target_rate)
        .zip(&stack.steps)
        .filter(|(rate, s)| user_stack::holds(s, *rate, Duration::from_millis(100)))
        .map(|(rate, _)| rate)
        .reduce(f64::max);
    assert_eq!(stack.sustained_rate, held, "{stack:?}");
    let floor = report.broker_floor.as_ref().expect("the broker's floor");
    assert_eq!(floor.produce_to_consume.count, opts.floor_records);
    ordered("broker floor", &floor.produce_to_consume);
    let kafka = report.kafka.as_ref().expect("kafka ceiling");
    assert_eq!(kafka.messages, opts.kafka_messages);
    assert_eq!(kafka.produce_to_consume.count, opts.kafka_messages);
    let inserts = report.inserts.as_ref().expect("insert ceiling");
    assert_eq!(inserts.rows, opts.insert_rows);
    let ingest = report.ingest.as_ref().expect("ingest");
    assert_eq!(ingest.messages, opts.ingest_messages);
    assert!(ingest.sequenced_per_sec > 0.0);
    let table = report.history_table.as_ref().expect("history table");
    assert_eq!(table.rows, opts.history_rows);
    let reads = report.history_reads.as_ref().expect("history reads");
    let loaded = report
        .history_reads_loaded
        .as_ref()
        .expect("history reads under load");
    for (r, concurrency) in [(reads, 1), (loaded, 4)] {
        assert_eq!(r.concurrency, concurrency);
        assert_eq!(r.requests, opts.history_requests);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.latency.count, opts.history_requests);
        ordered("GetHistory", &r.latency);
    }
    // The inbox: every page full and every count exact, as generated (all
    // but the creation unread) and with each conversation 10 behind.
    let behind = report.inbox_behind.as_ref().expect("inbox as generated");
    let near = report.inbox_near.as_ref().expect("inbox 10 behind");
    let per_conversation = opts.history_rows / opts.history_conversations;
    for (i, min_unread) in [(behind, per_conversation - 1), (near, 10)] {
        assert!(i.errors.is_empty(), "{:?}", i.errors);
        assert_eq!(i.latency.count, i.requests);
        assert_eq!(i.min_unread, min_unread);
        ordered("ListConversations", &i.latency);
    }

    // Sync from a cursor behind by a change in every conversation (all of
    // the smoke table's): exactly those, every time.
    let sync = report.sync_after_changes.as_ref().expect("sync measured");
    assert_eq!(sync.changes, opts.history_conversations);
    assert!(sync.errors.is_empty(), "{:?}", sync.errors);
    assert_eq!(sync.latency.count, sync.requests);
    ordered("Sync", &sync.latency);
    // CPU per sync of each process it went through, PostgreSQL's summed.
    let labels: Vec<&str> = sync
        .cpu_ms_per_sync
        .iter()
        .map(|(l, _)| l.as_str())
        .collect();
    for want in ["PostgreSQL", "bench client"] {
        assert!(labels.contains(&want), "{labels:?}");
    }
    assert!(
        labels.len() >= 5,
        "gateway, router, history too: {labels:?}"
    );
    let total: f64 = sync.cpu_ms_per_sync.iter().map(|(_, ms)| ms).sum();
    assert!(total > 0.0, "{:?}", sync.cpu_ms_per_sync);

    // The same pages answered plain and in each encoding, twice over:
    // every compressed answer took fewer bytes than the plain one.
    let compression = report.compression.as_ref().expect("compression measured");
    let encodings: Vec<&str> = compression
        .runs
        .iter()
        .map(|r| r.encoding.as_str())
        .collect();
    assert_eq!(
        encodings,
        ["identity", "gzip", "zstd", "deflate", "identity", "gzip", "zstd", "deflate"]
    );
    for round in compression.runs.chunks(4) {
        let plain = round[0].bytes_per_call;
        for compressed in &round[1..] {
            assert!(
                compressed.bytes_per_call > 0.0 && compressed.bytes_per_call < plain * 0.8,
                "{} {} bytes against {plain} plain",
                compressed.encoding,
                compressed.bytes_per_call
            );
        }
        for run in round {
            ordered(&run.encoding, &run.latency);
            let labels: Vec<&str> = run
                .cpu_ms_per_call
                .iter()
                .map(|(l, _)| l.as_str())
                .collect();
            assert!(labels.contains(&"bench client"), "{labels:?}");
        }
    }

    // Every target is reported, met or not.
    let names: Vec<&str> = report.targets.iter().map(|t| t.name.as_str()).collect();
    for want in [
        "embedded sends vs the gRPC ceiling",
        "sends with 10% of sessions reading",
        "messages during a typing flood",
        "sessions over WebSocket: messages/s",
        "idle sessions over WebSocket: memory",
        "distributed throughput",
        "distributed latency",
        "unloaded send->delivery vs the broker's floor",
        "CPU per message, gateway + router + history",
        "idle Connect streams (embedded)",
        "idle Connect streams (gateway)",
        "GetHistory",
        "ListConversations",
        "Sync",
        "history ingest",
        "idle CPU of the whole make stack",
        "make stack sustained throughput",
    ] {
        assert!(
            names.contains(&want),
            "target {want:?} missing from {names:?}"
        );
    }
    // CPU per message of every process of the distributed stack, each
    // measured.
    for r in &report.distributed {
        let labels: Vec<&str> = r.cpu_per_message.iter().map(|c| c.label.as_str()).collect();
        for want in [
            "gateway",
            "router",
            "history",
            "broker",
            "PostgreSQL",
            "bench client",
        ] {
            assert!(
                labels.contains(&want),
                "{}: {want} missing from {labels:?}",
                r.label
            );
        }
        // (A process may use less than a clock tick in a smoke run.)
        assert!(
            r.cpu_per_message
                .iter()
                .all(|c| c.per_delivery_us >= 0.0 && c.per_delivery_us <= c.per_message_us),
            "{}: {:?}",
            r.label,
            r.cpu_per_message
        );
        let services = r.cpu_us_per_message(&["gateway", "router", "history"]);
        assert!(
            services.is_some_and(|us| us > 0.0),
            "{}: {services:?}",
            r.label
        );
    }
    // A 20,000-row table is not the 10M-row table the target is about.
    let get_history = report.targets.iter().find(|t| t.name == "GetHistory");
    assert!(get_history.is_some_and(|t| !t.met));
    let inbox = report
        .targets
        .iter()
        .find(|t| t.name == "ListConversations");
    assert!(inbox.is_some_and(|t| !t.met));

    // The table names every run; the JSON reads back as the same report.
    let text = suite::table(&report);
    for r in report
        .echo
        .iter()
        .chain(&report.embedded)
        .chain(&report.distributed)
        .chain(&stack.steps)
    {
        assert!(text.contains(&r.label), "table lacks {}", r.label);
    }
    assert!(text.contains("make stack idle:"), "{text}");
    let json = serde_json::to_string(&report).expect("json");
    let back: SuiteReport = serde_json::from_str(&json).expect("json reads back");
    // (Floats may differ in their last digit through JSON; the rest may not.)
    let words = |r: &SuiteReport| -> Vec<(String, String, String, bool)> {
        r.targets
            .iter()
            .map(|t| (t.name.clone(), t.goal.clone(), t.measured.clone(), t.met))
            .collect()
    };
    assert_eq!(words(&back), words(&report));
    assert_eq!(back.machine, report.machine);
    assert_eq!(
        back.history_reads.as_ref().map(|r| &r.latency),
        Some(&reads.latency)
    );
    let counts = |r: &SuiteReport| -> Vec<(String, u64, u64, u64)> {
        r.echo
            .iter()
            .chain(&r.embedded)
            .chain(&r.distributed)
            .map(|l| {
                (
                    l.label.clone(),
                    l.total_sent,
                    l.total_acked,
                    l.total_delivered,
                )
            })
            .collect()
    };
    assert_eq!(counts(&back), counts(&report));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_parts_asked_for_run() {
    confab_tests::init_tracing();
    let logs = tempfile::tempdir().expect("log dir");
    let mut opts = SuiteOpts::smoke(logs.path().to_path_buf());
    opts.only = vec![suite::Section::Distributed, suite::Section::Inserts];
    let report = suite::run(&opts).await.expect("the suite runs");

    assert_eq!(report.distributed.len(), 4);
    for r in &report.distributed {
        complete(r, true);
    }
    let inserts = report.inserts.as_ref().expect("insert ceiling");
    assert_eq!(inserts.rows, opts.insert_rows);
    assert!(report.echo.is_none() && report.embedded.is_empty());
    assert!(report.embedded_idle.is_none() && report.gateway_idle.is_none());
    assert!(report.kafka.is_none() && report.ingest.is_none());
    assert!(report.history_table.is_none() && report.history_reads.is_none());
    assert!(report.history_reads_loaded.is_none());
    assert!(report.inbox_behind.is_none() && report.inbox_near.is_none());
    assert!(report.sync_after_changes.is_none());
    let names: Vec<&str> = report.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "unloaded send->delivery vs the broker's floor",
            "CPU per message, gateway + router + history",
            "distributed throughput",
            "distributed latency"
        ],
        "targets only for what ran"
    );
}

/// With `repeats`, the load runs go round after round, every round in the
/// report (the first where one round's runs are, the rest beside it), each
/// run complete, and the table shows each run's rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_runs_repeat_in_rounds() {
    confab_tests::init_tracing();
    let logs = tempfile::tempdir().expect("log dir");
    let mut opts = SuiteOpts::smoke(logs.path().to_path_buf());
    opts.only = vec![suite::Section::Echo, suite::Section::Stack];
    opts.repeats = 3;
    let report = suite::run(&opts).await.expect("the suite runs");
    assert_eq!(report.rounds(), 3);
    assert_eq!(report.later_rounds.len(), 2);
    let echo = report.echo.as_ref().expect("round 1");
    complete(echo, false);
    let stack = report.user_stack.as_ref().expect("make stack, round 1");
    for round in &report.later_rounds {
        let again = round.echo.as_ref().expect("a later round");
        complete(again, false);
        assert_eq!(again.label, echo.label);
        // A make stack of its own each round.
        let again = round
            .user_stack
            .as_ref()
            .expect("make stack, a later round");
        complete(again.steps.first().expect("a step"), true);
        assert!(again.idle_percent() > 0.0, "{again:?}");
    }
    // Its targets are judged on the median round, with the spread shown.
    let idle: Vec<f64> = std::iter::once(stack)
        .chain(
            report
                .later_rounds
                .iter()
                .filter_map(|r| r.user_stack.as_ref()),
        )
        .map(|u| u.idle_percent())
        .collect();
    let mut sorted = idle.clone();
    sorted.sort_by(f64::total_cmp);
    let target = report
        .targets
        .iter()
        .find(|t| t.name == "idle CPU of the whole make stack")
        .expect("the idle target");
    assert_eq!(target.value, sorted[1], "the median of {idle:?}");
    let text = suite::table(&report);
    assert!(
        text.lines().any(|l| l.starts_with("echo unary max")
            && l.contains("acked/s")
            && l.matches(" / ").count() == 4),
        "a row of the rounds of the echo run: {text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("make stack")
            && l.contains("idle % of a core")
            && l.matches(" / ").count() == 4),
        "a row of the rounds of make stack: {text}"
    );
    let json = serde_json::to_string(&report).expect("json");
    let back: SuiteReport = serde_json::from_str(&json).expect("json reads back");
    assert_eq!(back.rounds(), 3);
}

/// The bin targets one `cargo build` command line would build, as cargo
/// itself selects them. `--unit-graph` prints the plan and builds nothing;
/// it is unstable, so the query runs with `RUSTC_BOOTSTRAP=1` (this
/// query only, never a build).
fn bins_built_by(args: &[&str], root: &std::path::Path) -> std::collections::BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(args)
        .args(["--unit-graph", "-Z", "unstable-options"])
        .env("RUSTC_BOOTSTRAP", "1")
        .current_dir(root)
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let graph: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a unit graph");
    let units = graph["units"].as_array().expect("units");
    graph["roots"]
        .as_array()
        .expect("roots")
        .iter()
        .filter_map(|i| units.get(usize::try_from(i.as_u64()?).ok()?))
        .filter(|u| {
            u["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|u| Some(u["target"]["name"].as_str()?.to_string()))
        .collect()
}

/// `make bench` on a fresh target directory builds every binary its
/// suite starts: the build lines of `make bench-build` (as make expands
/// them) are put to cargo, which says which binaries each would build.
/// A stale binary from an earlier build cannot hide a missing one here.
#[test]
fn make_bench_builds_every_binary_the_suite_starts() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    let out = std::process::Command::new("make")
        .args([
            "-n",
            "-s",
            "--no-print-directory",
            "bench-build",
            "CARGO=planned-cargo",
        ])
        .current_dir(root)
        .output()
        .expect("run make");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recipe = String::from_utf8(out.stdout).expect("utf-8");
    let builds: Vec<Vec<&str>> = recipe
        .lines()
        .filter_map(|l| l.strip_prefix("planned-cargo "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(!builds.is_empty(), "no cargo build in:\n{recipe}");
    let mut built = std::collections::BTreeSet::new();
    for args in &builds {
        assert_eq!(args.first(), Some(&"build"), "{args:?}");
        assert!(args.contains(&"--release"), "a release build: {args:?}");
        built.extend(bins_built_by(args, root));
    }
    let missing: Vec<_> = suite::procs::binaries()
        .into_iter()
        .filter(|b| !built.contains(*b))
        .collect();
    assert!(
        missing.is_empty(),
        "make bench-build builds {built:?}, not {missing:?}"
    );
}
