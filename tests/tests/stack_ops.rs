//! Operating a running `make stack` by hand: `make stack-restart`, `make
//! stack-status` and `make stack-logs` (deploy/local/stack.sh `restart`,
//! `status`, `logs`).
//!
//! - `each_killed_service_comes_back_with_make_stack_restart`: `make stack`
//!   in a temporary `CONFAB_STACK_DIR` (JWT secret: the test secret, so the
//!   typed client's tokens work), and a client sending to a group, one
//!   message after another, each retried with the same `client_msg_id`
//!   until acknowledged. For gateway, router, history and broker in turn:
//!   `kill -9` of the process group `<stack dir>/pids` records, `make
//!   stack-status` reports it dead (and fails), `make stack-restart
//!   SERVICE=<name>` (run with a different JWT secret, service token,
//!   gateway address and target directory in its environment: it must use
//!   what `make stack` recorded) starts it again on its port, `make
//!   stack-status` succeeds again, and three messages first sent after the
//!   restart are acknowledged and read back. At the end every acknowledged
//!   message is in the conversation's history exactly once at its seq, the
//!   seqs are 1, 2, 3, … without a gap, and nothing was stored that the
//!   client was not acknowledged. `<stack dir>/settings` is mode 600; the
//!   service token is in no log, no output of make, no command line.
//!   `make stack-down` then leaves nothing running.
//! - `stack_commands_refuse_without_a_running_stack`: on an empty stack
//!   directory, `make stack-status`, `make stack-restart` (with a service,
//!   without, with an unknown one) and `make stack-logs` fail, saying why.
//!
//! Needs what `make stack` needs (PostgreSQL's binaries, the nisshi broker,
//! which the Makefile installs when missing) and the service binaries
//! (`cargo build -p confab -p confab-gateway -p confab-router -p
//! confab-history`, as `make test` does).

use confab_proto::v1::{Message, MessageKind};
use confab_tests::make_stack::{
    build_dir, make_in, repo_root, MakeRun, MakeStack, STACK_INSPECT, STACK_RESTART,
};
use confab_tests::procs::running;
use confab_tests::{poll_blocking, retry_unavailable, User, SECRET};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Code, Status};

/// The services killed and restarted, in this order.
const SERVICES: [&str; 4] = ["gateway", "router", "history", "broker"];
/// How long `make stack-status` may take to see a killed service dead.
const DEAD_WAIT: Duration = Duration::from_secs(30);
/// How long a restarted service (and those that depend on it) may take
/// until `make stack-status` succeeds: a consumer group waits for the
/// killed member's session to time out (10 s) before it rebalances.
const READY_WAIT: Duration = Duration::from_secs(120);
/// How long the client may go without a new acknowledgement once the stack
/// is ready again (a write waiting on a part that was down times out after
/// 10 s; the retry then goes through).
const ACK_WAIT: Duration = Duration::from_secs(120);
/// The longest one send may take before the client gives up on it and
/// retries it (the gateway answers within its 10 s send timeout).
const ATTEMPT: Duration = Duration::from_secs(30);
/// The client's rate: a send every this often, well under the gateway's
/// 20 messages per user per second.
const PACE: Duration = Duration::from_millis(100);
/// Retries back off from this to [`RETRY_MAX`] (the services' own backoff,
/// `confab_runtime::retry::backoff`).
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_millis(500);
/// How many messages sent after a restart must be acknowledged (and are
/// read back) before the next service is killed.
const FRESH_ACKS: usize = 3;
/// Lines of `make stack-logs SERVICE=gateway LINES=…`.
const LOG_LINES: usize = 5;

#[test]
fn each_killed_service_comes_back_with_make_stack_restart() {
    let started = Instant::now();
    let root = repo_root();
    let stack = MakeStack::up(&root, &[], &[("CONFAB_JWT_SECRET", SECRET.to_string())]);

    let settings = stack.settings_path();
    let mode = fs::metadata(&settings)
        .unwrap_or_else(|e| panic!("`make stack` wrote no {}: {e}", settings.display()))
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(
        mode,
        0o600,
        "{} holds the service token: it must be readable by its owner only (mode 600), not {mode:o}",
        settings.display()
    );
    let token = stack.setting("SERVICE_TOKEN");
    assert!(
        token.len() >= 32,
        "the recorded service token has {} characters; the services need at least 32",
        token.len()
    );
    let mut outputs: Vec<(String, String)> = Vec::new();
    outputs.push((
        "make stack-status".into(),
        wait_status(&stack, "the new stack to be ready", READY_WAIT, |run| {
            run.succeeded()
        }),
    ));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let user = runtime.block_on(User::connect(stack.gateway, "alice"));
    let conv = runtime
        .block_on(user.group_when_ready("stack ops", &["bob"]))
        .id;
    let sender = Sender::start(&runtime, user.clone(), conv.clone());
    sender.wait_new_acks(&stack, Instant::now(), "the first messages");

    for service in SERVICES {
        let pid = stack.pid_of(service);
        let environment = settings_env(pid);
        let has_token = environment.contains(&format!("CONFAB_SERVICE_TOKEN={token}"));
        assert!(
            has_token == (service != "broker"),
            "{service} was started {} the recorded service token in its environment: {}",
            if has_token { "with" } else { "without" },
            if has_token {
                "the broker has no use for it"
            } else {
                "history, router and gateway need it"
            }
        );
        let killed = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status()
            .expect("run kill");
        assert!(
            killed.success(),
            "kill -9 of {service}'s process group {pid} failed: is it running?"
        );
        outputs.push((
            format!("make stack-status ({service} dead)"),
            wait_status(
                &stack,
                &format!("{service} reported dead"),
                DEAD_WAIT,
                |run| !run.succeeded() && status_line(&run.output, service).contains(" dead "),
            ),
        ));

        // What make stack recorded must win over whatever the caller's
        // environment says.
        let run = stack.restart(
            service,
            &[
                ("CONFAB_JWT_SECRET", "not-the-stack-secret".to_string()),
                (
                    "CONFAB_SERVICE_TOKEN",
                    "not-the-stack-service-token-0123456789".to_string(),
                ),
                ("CONFAB_STACK_GATEWAY", "127.0.0.1:9".to_string()),
                ("CARGO_TARGET_DIR", "/nonexistent/target".to_string()),
            ],
        );
        assert!(
            run.succeeded(),
            "{}\n{}",
            run.describe(&format!("stack-restart SERVICE={service}"), STACK_RESTART),
            stack.diagnostics()
        );
        outputs.push((format!("make stack-restart SERVICE={service}"), run.output));
        let restarted = Instant::now();
        let new_pid = stack.pid_of(service);
        assert!(
            new_pid != pid && running(new_pid),
            "after `make stack-restart SERVICE={service}`, {} records pid {new_pid} for it (before: {pid}), which {}",
            stack.path.join("pids").display(),
            if running(new_pid) { "is the old one" } else { "is not running" }
        );

        let after = settings_env(new_pid);
        assert!(
            after == environment,
            "`make stack-restart SERVICE={service}` must start it with the CONFAB_* and RUST_* variables `make stack` gave it, whatever the caller's environment says;\nbefore: {:?}\nafter: {:?}",
            redacted(&environment, &token),
            redacted(&after, &token)
        );
        outputs.push((
            format!("make stack-status ({service} restarted)"),
            wait_status(
                &stack,
                &format!("every process ready after restarting {service}"),
                READY_WAIT,
                |run| run.succeeded(),
            ),
        ));
        let fresh = sender.wait_new_acks(
            &stack,
            restarted,
            &format!("messages sent after restarting {service}"),
        );
        for (key, seq) in fresh {
            let read = runtime.block_on(retry_unavailable(
                &format!("read back {key} (seq {seq})"),
                ACK_WAIT,
                || user.history(&conv, None, Some(seq - 1), 1),
            ));
            assert!(
                read.messages
                    .first()
                    .is_some_and(|m| m.seq == seq && m.client_msg_id == key),
                "after restarting {service}, {key} was acknowledged with seq {seq}, but GetHistory after seq {} returned {:?}",
                seq - 1,
                read.messages
            );
        }
        println!(
            "{service}: killed, restarted (pid {pid} -> {new_pid}), sending again after {:?}",
            restarted.elapsed()
        );
    }

    let all = stack.stack_logs(None, None);
    assert!(
        all.succeeded(),
        "{}",
        all.describe("stack-logs", STACK_INSPECT)
    );
    for name in ["broker", "history", "router", "gateway", "postgres"] {
        assert!(
            all.output
                .contains(&format!("==> {name}: last 50 lines of ")),
            "`make stack-logs` shows no 50-line section for {name}:\n{}",
            all.output
        );
    }
    let one = stack.stack_logs(Some("gateway"), Some(LOG_LINES));
    assert!(
        one.succeeded(),
        "{}",
        one.describe("stack-logs SERVICE=gateway", STACK_INSPECT)
    );
    let headers: Vec<&str> = one
        .output
        .lines()
        .filter(|l| l.starts_with("==> "))
        .collect();
    let lines = one.output.lines().count();
    assert!(
        headers.len() == 1
            && headers[0].starts_with(&format!("==> gateway: last {LOG_LINES} lines of "))
            && lines <= LOG_LINES + 1,
        "`make stack-logs SERVICE=gateway LINES={LOG_LINES}` must show the gateway's log alone, at most {LOG_LINES} lines under one header:\n{}",
        one.output
    );
    outputs.push(("make stack-logs".into(), all.output));
    outputs.push(("make stack-logs SERVICE=gateway".into(), one.output));

    let acked = sender.stop(&stack);
    let stored = runtime.block_on(retry_unavailable(
        "read the whole conversation",
        ACK_WAIT,
        || user.all_messages(&conv),
    ));
    check_stored(&acked, &stored);

    // The service token: in the settings file only.
    for (what, output) in &outputs {
        assert!(
            !output.contains(&token),
            "the service token appears in the output of {what}: it must never be printed"
        );
    }
    for file in files_under(&stack.path) {
        if file == settings || file.starts_with(stack.path.join("pg").join("data")) {
            continue;
        }
        let bytes = fs::read(&file).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&token),
            "the service token appears in {}: only {} may hold it",
            file.display(),
            settings.display()
        );
    }
    for (name, pid) in stack.started().unwrap_or_else(|e| panic!("{e}")).processes {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(&token),
            "the service token is on {name}'s command line, which every user can read: pass it in the environment"
        );
    }

    drop(runtime);
    stack.down();
    let mut once: Vec<Duration> = acked
        .iter()
        .filter(|a| a.attempts == 1)
        .map(|a| a.took)
        .collect();
    once.sort();
    println!(
        "{} messages acknowledged, {} of them after a retry; send to ack when not retried: median {:?}, max {:?}; took {:?}",
        acked.len(),
        acked.iter().filter(|a| a.attempts > 1).count(),
        once.get(once.len() / 2).copied().unwrap_or_default(),
        once.last().copied().unwrap_or_default(),
        started.elapsed()
    );
}

/// `make stack` runs what a user deploys: `make build-services` builds the
/// services in release, and the script starts them from `<target>/release`
/// unless told otherwise (the other tests run it on their debug build).
#[test]
fn make_stack_runs_release_binaries() {
    let root = repo_root();
    let planned = Command::new("make")
        .args(["-n", "-s", "build-services", "CARGO=planned-cargo"])
        .current_dir(&root)
        .env_remove("STACK_PROFILE")
        .env_remove("MAKEFLAGS")
        .output()
        .expect("make -n build-services");
    let planned = String::from_utf8_lossy(&planned.stdout);
    assert!(
        planned
            .lines()
            .any(|l| l.trim() == "planned-cargo build --release -p confab -p confab-gateway -p confab-router -p confab-history"),
        "make build-services must build the services in release; it plans:\n{planned}"
    );
    let dir = tempfile::Builder::new()
        .prefix("confab-stack-release-")
        .tempdir()
        .expect("temporary stack directory");
    let target = dir.path().join("target");
    let says = format!("{}/release/confab-history is missing", target.display());
    refused_start(
        &root,
        &dir.path().join("stack"),
        &[("CARGO_TARGET_DIR", target.display().to_string())],
        &says,
    );
}

/// Runs `deploy/local/stack.sh up` on `stack_dir` with `env` (and none of
/// the caller's stack settings), and checks that it refuses, saying `says`,
/// and records no process.
fn refused_start(root: &Path, stack_dir: &Path, env: &[(&str, String)], says: &str) {
    let run = Command::new(root.join("deploy/local/stack.sh"))
        .arg("up")
        .current_dir(root)
        .env("CONFAB_STACK_DIR", stack_dir)
        .env_remove("CONFAB_STACK_PROFILE")
        .env_remove("CONFAB_STACK_BROKER_STORAGE")
        .env_remove("CONFAB_KAFKA_PARTITIONS")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("deploy/local/stack.sh up");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && stderr.contains(says),
        "the stack must refuse to start saying {says:?}; it exited {:?}: {stderr}",
        run.status
    );
    assert!(
        !stack_dir.join("pids").exists(),
        "a refused start must not record processes"
    );
}

/// History's database and the broker's log belong together: `make stack`
/// refuses a stack directory whose data was made with another broker
/// storage or partition count (or before the layout was recorded), saying
/// which, and starts nothing.
#[test]
fn make_stack_refuses_data_of_another_broker_layout() {
    let root = repo_root();
    let (target, profile) = build_dir().expect("a test built in <target>/<profile>/deps");
    for (recorded, says) in [
        (
            Some("broker=postgres partitions=8"),
            "broker=postgres partitions=8",
        ),
        (
            Some("broker=sqlite partitions=4"),
            "broker=sqlite partitions=4",
        ),
        (None, "broker=postgres partitions=8"),
    ] {
        let dir = tempfile::Builder::new()
            .prefix("confab-stack-layout-")
            .tempdir()
            .expect("temporary stack directory");
        fs::create_dir_all(dir.path().join("pg/data")).expect("a data directory");
        if let Some(layout) = recorded {
            fs::write(dir.path().join("layout"), format!("{layout}\n")).expect("layout");
        }
        let want = format!("was made with {says}, not broker=sqlite partitions=2");
        refused_start(
            &root,
            dir.path(),
            &[
                ("CONFAB_STACK_PROFILE", profile.to_string()),
                ("CARGO_TARGET_DIR", target.display().to_string()),
            ],
            &want,
        );
    }
}

#[test]
fn stack_commands_refuse_without_a_running_stack() {
    let root = repo_root();
    let dir = tempfile::Builder::new()
        .prefix("confab-stack-none-")
        .tempdir()
        .expect("temporary stack directory");
    let refuse = |args: &[&str], says: &str| {
        let run = make_in(&root, dir.path(), args, &[], STACK_INSPECT);
        assert!(
            run.status.is_some() && !run.succeeded() && run.output.contains(says),
            "`make {}` with no stack running must fail saying {says:?}; it {}",
            args.join(" "),
            run.describe(&args.join(" "), STACK_INSPECT)
        );
    };
    refuse(&["stack-status"], "stack: not running");
    refuse(&["stack-restart", "SERVICE=gateway"], "stack: not running");
    refuse(
        &["stack-restart"],
        "usage: make stack-restart SERVICE=gateway|router|history|broker",
    );
    refuse(
        &["stack-restart", "SERVICE=postgres"],
        "cannot restart 'postgres': name one of broker, history, router, gateway",
    );
    refuse(&["stack-logs"], "no logs in");
    refuse(&["stack-logs", "SERVICE=nope"], "no log named 'nope'");
    assert!(
        !dir.path().join("pids").exists() && !dir.path().join("settings").exists(),
        "a refused command must not create {}/pids or settings",
        dir.path().display()
    );
}

/// One acknowledged send: its key, its seq, and how many attempts it took.
#[derive(Debug, Clone)]
struct Acked {
    key: String,
    seq: u64,
    attempts: u32,
    /// When it was first sent.
    first_sent: Instant,
    /// From then to its acknowledgement.
    took: Duration,
}

/// A client sending to one conversation, one message after another, each
/// retried with the same `client_msg_id` until acknowledged.
struct Sender {
    acked: Arc<Mutex<Vec<Acked>>>,
    /// A send that failed with something retrying cannot fix.
    fatal: Arc<Mutex<Option<String>>>,
    /// Every kind of failure retried, with how often.
    retried: Arc<Mutex<BTreeMap<String, u32>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sender {
    fn start(runtime: &tokio::runtime::Runtime, user: User, conv: String) -> Sender {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let fatal = Arc::new(Mutex::new(None));
        let retried = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = runtime.spawn({
            let (acked, fatal, retried, stop) =
                (acked.clone(), fatal.clone(), retried.clone(), stop.clone());
            async move {
                use backon::Retryable as _;
                let mut pace = tokio::time::interval(PACE);
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for i in 0.. {
                    pace.tick().await;
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let key = format!("m{i}");
                    let first_sent = Instant::now();
                    let mut attempts = 1;
                    // Until acknowledged: stopping does not abandon a send
                    // (the test's deadlines bound this loop).
                    let attempt = || async {
                        tokio::time::timeout(ATTEMPT, user.send(&conv, &key, "still here"))
                            .await
                            .unwrap_or_else(|_| {
                                Err(Status::deadline_exceeded(format!(
                                    "no answer within {ATTEMPT:?} (client side)"
                                )))
                            })
                    };
                    let outcome = attempt
                        .retry(confab_runtime::retry::backoff(RETRY_MIN, RETRY_MAX))
                        .sleep(tokio::time::sleep)
                        .when(retryable)
                        .notify(|status: &Status, _| {
                            attempts += 1;
                            *retried
                                .lock()
                                .expect("retried")
                                .entry(format!("{:?}: {}", status.code(), status.message()))
                                .or_default() += 1;
                        })
                        .await;
                    let seq = match outcome {
                        Ok(message) => message.seq,
                        Err(status) => {
                            *fatal.lock().expect("fatal") = Some(format!(
                                "send {key} failed with {status:?}, which retrying cannot fix"
                            ));
                            return;
                        }
                    };
                    acked.lock().expect("acked").push(Acked {
                        key,
                        seq,
                        attempts,
                        first_sent,
                        took: first_sent.elapsed(),
                    });
                }
            }
        });
        Sender {
            acked,
            fatal,
            retried,
            stop,
            task,
        }
    }

    /// Fails the test if the client met an error it cannot retry.
    fn check_fatal(&self, stack: &MakeStack) {
        if let Some(why) = self.fatal.lock().expect("fatal").clone() {
            panic!("{why}\n{}", stack.diagnostics());
        }
    }

    /// Waits (up to [`ACK_WAIT`]) for the acknowledgements of
    /// [`FRESH_ACKS`] messages first sent after `after`; their keys and
    /// seqs.
    fn wait_new_acks(&self, stack: &MakeStack, after: Instant, what: &str) -> Vec<(String, u64)> {
        let mut found = Vec::new();
        let acked = poll_blocking(ACK_WAIT, || {
            self.check_fatal(stack);
            found = self
                .acked
                .lock()
                .expect("acked")
                .iter()
                .filter(|a| a.first_sent >= after)
                .map(|a| (a.key.clone(), a.seq))
                .collect();
            found.len() >= FRESH_ACKS
        });
        assert!(
            acked,
            "{} acknowledgements, not {FRESH_ACKS}, of {what} within {ACK_WAIT:?}; the client retried: {:?}\n{}",
            found.len(),
            self.retried.lock().expect("retried"),
            stack.diagnostics()
        );
        found
    }

    /// Stops after the send under way is acknowledged; every send
    /// acknowledged.
    fn stop(&self, stack: &MakeStack) -> Vec<Acked> {
        self.stop.store(true, Ordering::SeqCst);
        let done = poll_blocking(ACK_WAIT, || self.task.is_finished());
        assert!(
            done,
            "the client's last send was not acknowledged within {ACK_WAIT:?}; it retried: {:?}\n{}",
            self.retried.lock().expect("retried"),
            stack.diagnostics()
        );
        self.check_fatal(stack);
        println!(
            "the client retried: {:?}",
            self.retried.lock().expect("retried")
        );
        self.acked.lock().expect("acked").clone()
    }
}

/// What a send may fail with while a part of the stack is down, and be
/// retried with the same `client_msg_id` after: UNAVAILABLE (the documented
/// answer, and a connection refused or reset), and what a connection that
/// breaks under a call turns into.
fn retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => true,
        Code::Internal => {
            let m = status.message().to_lowercase();
            m.contains("h2") || m.contains("transport") || m.contains("connection")
        }
        _ => false,
    }
}

/// Every acknowledged message is stored exactly once, at the seq it was
/// acknowledged with; every stored message of the client was acknowledged
/// (none was abandoned, so none may be stored unacknowledged); the seqs are
/// 1, 2, 3, … without a gap.
fn check_stored(acked: &[Acked], stored: &[Message]) {
    assert!(
        acked.len() >= FRESH_ACKS * (SERVICES.len() + 1),
        "only {} messages were acknowledged: too few to judge",
        acked.len()
    );
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "the conversation's seqs have a gap or a repeat"
    );
    let mut by_key: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for m in stored
        .iter()
        .filter(|m| m.kind == MessageKind::Text as i32 && m.sender_id == "alice")
    {
        by_key.entry(&m.client_msg_id).or_default().push(m.seq);
    }
    for a in acked {
        let found = by_key.get(a.key.as_str()).cloned().unwrap_or_default();
        assert!(
            found == [a.seq],
            "{} was acknowledged with seq {} after {} attempts, but the history holds it at {found:?}: {}",
            a.key,
            a.seq,
            a.attempts,
            if found.is_empty() { "lost" } else { "stored twice or elsewhere" }
        );
    }
    let unacked: Vec<&&str> = by_key
        .keys()
        .filter(|k| !acked.iter().any(|a| a.key == **k))
        .collect();
    assert!(
        unacked.is_empty(),
        "stored but never acknowledged (the client retried every send until acknowledged): {unacked:?}"
    );
}

/// The `CONFAB_*` and `RUST_*` variables in the environment of process
/// `pid` (what the stack's settings give it), sorted.
fn settings_env(pid: u32) -> Vec<String> {
    let path = format!("/proc/{pid}/environ");
    let raw = fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let mut vars: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .filter(|v| {
            v.starts_with("CONFAB_")
                || v.starts_with("RUST_LOG=")
                || v.starts_with("RUST_BACKTRACE=")
        })
        .collect();
    vars.sort();
    vars
}

/// `vars` with the service token replaced, to show in a failure.
fn redacted(vars: &[String], token: &str) -> Vec<String> {
    vars.iter()
        .map(|v| v.replace(token, "<the service token>"))
        .collect()
}

/// Runs `make stack-status` until `done` holds for it, for at most
/// `within`; its output then.
fn wait_status(
    stack: &MakeStack,
    what: &str,
    within: Duration,
    done: impl Fn(&MakeRun) -> bool,
) -> String {
    let mut last = None;
    let ok = poll_blocking(within, || {
        let run = stack.status();
        let ok = done(&run);
        last = Some(run);
        ok
    });
    let last = last.expect("make stack-status ran");
    assert!(
        ok,
        "timed out after {within:?} waiting for {what}; the last {}\n{}",
        last.describe("stack-status", STACK_INSPECT),
        stack.diagnostics()
    );
    last.output
}

/// The line of `make stack-status`'s output for `name` (empty if none).
fn status_line<'a>(output: &'a str, name: &str) -> &'a str {
    output
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or("")
}

/// Every file below `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => out.extend(files_under(&path)),
            Ok(t) if t.is_file() => out.push(path),
            _ => {}
        }
    }
    out
}
