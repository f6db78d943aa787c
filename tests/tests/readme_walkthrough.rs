//! Runs the README's walkthrough against a real server: every ```sh block
//! between the walkthrough markers, literally, with bash, in order, in the
//! repository root; the ```json and ```text blocks after a block are what it
//! must print. Only the line `ADDR=127.0.0.1:50051` is changed, to the
//! address of the gateway under test.
//!
//! Two servers, one runner:
//! - `readme_walkthrough_runs_as_written`: `confab dev` (embedded mode), as
//!   the README tells users to start it. Needs the `confab` binary
//!   (`CONFAB_BIN`, else `confab` in the test executable's profile
//!   directory: `cargo build -p confab`).
//! - `readme_walkthrough_runs_against_make_stack`: the distributed stack as
//!   `make stack` starts it (PostgreSQL, the nisshi broker, history, router,
//!   gateway), in a temporary `CONFAB_STACK_DIR` with the gateway on a free
//!   port; then `make stack-down`, which must leave none of the processes
//!   `make stack` recorded running. If the test fails midway, a guard runs
//!   `make stack-down` and keeps the stack directory (its path is printed).
//!
//! Both need bash, make, grpcurl and jq on PATH; the second also what
//! `make stack` needs (PostgreSQL's binaries, the nisshi broker, which the
//! Makefile installs when missing).

use confab_proto::v1::{client_frame, server_frame, ClientFrame, Ping, Pong, ServerFrame};
use confab_tests::make_stack::{log_tails, read, repo_root, MakeStack};
use confab_tests::procs::ChildGuard;
use confab_tests::{confab_bin, free_port};
use futures::StreamExt;
use serde_json::Value;
use std::fs::{self, File};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const START: &str = "<!-- walkthrough:start -->";
const END: &str = "<!-- walkthrough:end -->";
const ADDR_LINE: &str = "ADDR=127.0.0.1:50051";
const SECOND_TERMINAL: &str = "# in a second terminal";
const FAILS_WITH: &str = "# fails with ";

/// How often a wait checks again.
const POLL: Duration = Duration::from_millis(50);
/// How long the server may take to accept connections.
const SERVER_START: Duration = Duration::from_secs(30);
/// How long a stream may take to print its expected frames.
const STREAM_WAIT: Duration = Duration::from_secs(15);
/// How long one block may run (`make -s token` may have to build, or wait
/// for another cargo's lock).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(600);
/// Lines of each log shown when something fails.
const LOG_TAIL: usize = 40;

/// A fenced block of the README.
#[derive(Debug, Clone)]
struct Fence {
    /// The info string (`sh`, `json`, `text`).
    lang: String,
    /// The lines between the fences.
    body: String,
    /// 1-based line of the opening fence in README.md.
    line: usize,
}

/// An `sh` block and the output block after it, if any.
#[derive(Debug)]
struct Step {
    sh: Fence,
    expect: Option<Fence>,
}

impl Step {
    fn first_line(&self) -> &str {
        self.sh.body.lines().next().unwrap_or("").trim()
    }

    /// The gRPC code name of a `# fails with X` block.
    fn fails_with(&self) -> Option<&str> {
        self.first_line().strip_prefix(FAILS_WITH).map(str::trim)
    }

    fn is_second_terminal(&self) -> bool {
        self.first_line() == SECOND_TERMINAL
    }
}

/// What a finished block did.
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// A `# in a second terminal` block, running in the background.
struct Stream {
    step: Step,
    expected: Vec<Value>,
    stdout: PathBuf,
    stderr: PathBuf,
    process: ChildGuard,
}

#[test]
fn readme_walkthrough_runs_as_written() {
    let root = repo_root();
    let steps = readme_steps(&root);
    let work = tempfile::tempdir().expect("temporary directory");
    let server = start_server(&confab_bin(), work.path());
    run_walkthrough(
        &root,
        steps,
        work.path(),
        &server.addr,
        vec![server.log.clone()],
    );
    // "then open http://127.0.0.1:8080": the web app, on the listener's
    // port (a free one here; its default is checked in services/confab).
    serves_the_web_app(server.http);
    drop(server);
}

#[test]
fn readme_walkthrough_runs_against_make_stack() {
    let root = repo_root();
    // A README the runner cannot use fails here, before anything starts.
    let steps = readme_steps(&root);
    let work = tempfile::tempdir().expect("temporary directory");
    let stack = MakeStack::up(&root, &[], &[]);
    run_walkthrough(
        &root,
        steps,
        work.path(),
        &stack.gateway.to_string(),
        stack.logs(),
    );
    // The stack's gateway serves browsers too (its line "web app on
    // http://…"): the app, no development tokens, and a session over the
    // WebSocket with a token of the stack's (development) secret.
    serves_the_web_app(stack.http);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let (status, body) = confab_tests::http::get(stack.http, "/v1/auth")
            .await
            .expect("GET /v1/auth");
        assert_eq!((status, body.as_str()), (200, r#"{"dev_tokens":false}"#));
        let token = confab_auth::Authenticator::new(confab_auth::DEV_SECRET)
            .mint("alice", 60)
            .expect("mint");
        let (tx, mut inbound) = confab_tests::ws::open(stack.http, &token)
            .await
            .expect("a WebSocket session");
        tx.send(ClientFrame {
            frame: Some(client_frame::Frame::Ping(Ping { nonce: 7 })),
        })
        .await
        .expect("send");
        let pong = tokio::time::timeout(confab_tests::DEADLINE, inbound.next())
            .await
            .expect("an answer in time");
        assert!(
            matches!(
                pong,
                Some(Ok(ServerFrame {
                    frame: Some(server_frame::Frame::Pong(Pong { nonce: 7 }))
                }))
            ),
            "{pong:?}"
        );
    });
    stack.down();
}

/// The walkthrough of the README in `root`, checked to set the address with
/// the line the runner replaces.
fn readme_steps(root: &Path) -> Vec<Step> {
    let readme_path = root.join("README.md");
    let readme = fs::read_to_string(&readme_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", readme_path.display()));
    let steps = walkthrough(&readme);
    assert!(
        steps
            .first()
            .is_some_and(|s| s.sh.body.lines().any(|l| l.trim() == ADDR_LINE)),
        "the walkthrough's first sh block must set the address with the line {ADDR_LINE}"
    );
    steps
}

/// Runs `steps` in order against the gateway at `addr`, with the blocks'
/// output and state in `work`. A `# in a second terminal` block runs in the
/// background from its place on (the next block starts once it printed its
/// first frame) and is checked and stopped at the end. A failure shows the
/// tails of `logs`, the server's logs.
fn run_walkthrough(root: &Path, steps: Vec<Step>, work: &Path, addr: &str, logs: Vec<PathBuf>) {
    let runner = Runner {
        root: root.to_path_buf(),
        work: work.to_path_buf(),
        state: work.join("state.sh"),
        addr: addr.to_string(),
        logs,
    };
    let mut streams = Vec::new();
    for (i, step) in steps.into_iter().enumerate() {
        if step.is_second_terminal() {
            streams.push(runner.start_stream(i, step));
        } else {
            runner.run_step(i, &step);
        }
    }
    for stream in &mut streams {
        runner.finish_stream(stream);
    }
}

/// The `sh` blocks between the walkthrough markers, each with the `json` or
/// `text` block that follows it.
fn walkthrough(readme: &str) -> Vec<Step> {
    let lines: Vec<&str> = readme.lines().collect();
    let marker = |m: &str| {
        let at: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].trim() == m).collect();
        assert_eq!(at.len(), 1, "README.md must contain {m} exactly once");
        at[0]
    };
    let (start, end) = (marker(START), marker(END));
    assert!(start < end, "{START} must come before {END}");

    let mut fences = Vec::new();
    let mut i = start + 1;
    while i < end {
        if let Some(info) = lines[i].trim_start().strip_prefix("```") {
            let open = i;
            let mut body = Vec::new();
            i += 1;
            while i < end && lines[i].trim_start() != "```" {
                body.push(lines[i]);
                i += 1;
            }
            assert!(i < end, "README.md:{}: unclosed fence", open + 1);
            fences.push(Fence {
                lang: info.trim().to_string(),
                body: body.join("\n"),
                line: open + 1,
            });
        }
        i += 1;
    }

    let mut steps: Vec<Step> = Vec::new();
    for fence in fences {
        match fence.lang.as_str() {
            "sh" => steps.push(Step {
                sh: fence,
                expect: None,
            }),
            "json" | "text" => match steps.last_mut() {
                Some(step) if step.expect.is_none() => step.expect = Some(fence),
                _ => panic!(
                    "README.md:{}: a ```{} block must directly follow a ```sh block",
                    fence.line, fence.lang
                ),
            },
            other => panic!(
                "README.md:{}: the walkthrough has only sh, json and text blocks, not {other:?}",
                fence.line
            ),
        }
    }
    assert!(!steps.is_empty(), "the walkthrough has no sh blocks");
    // Invalid JSON in the README fails here, before anything runs.
    for e in steps.iter().filter_map(|s| s.expect.as_ref()) {
        if e.lang == "json" {
            expected_json(e);
        }
    }
    steps
}

/// A running `confab dev`.
struct Server {
    addr: String,
    http: SocketAddr,
    log: PathBuf,
    _process: ChildGuard,
}

/// Checks that `http` serves the web app built in web/dist (`make web`,
/// which `make run`, `make stack` and `make test` run first).
fn serves_the_web_app(http: SocketAddr) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (status, body) = runtime
        .block_on(confab_tests::http::get(http, "/"))
        .expect("GET /");
    assert_eq!(
        status, 200,
        "the web app is not served at http://{http}/ (is web/dist built? `make web`): {body}"
    );
    assert!(body.contains("<title>Confab</title>"), "{body}");
}

/// Starts `confab dev` on a free port and waits until it accepts
/// connections. Tries again on another port if the one picked was taken in
/// the meantime.
fn start_server(bin: &Path, work: &Path) -> Server {
    let data = work.join("data");
    let mut failures = String::new();
    for attempt in 1..=3 {
        let addr = format!("127.0.0.1:{}", free_port());
        let sock: SocketAddr = addr.parse().expect("socket address");
        let log = work.join(format!("server-{attempt}.log"));
        let out = File::create(&log).expect("server log");
        let err = out.try_clone().expect("server log");
        // Its HTTP listener on a free port, not the default 8080: tests run
        // side by side. The app is the one `make run` builds.
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(bin)
            .args(["dev", "--listen", &addr, "--data-dir"])
            .arg(&data)
            .env("CONFAB_HTTP_LISTEN", http.to_string())
            .env("CONFAB_WEB_DIR", repo_root().join("web/dist"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut process = ChildGuard::new(child);
        let deadline = Instant::now() + SERVER_START;
        loop {
            if let Some(status) = process.child.try_wait().expect("server status") {
                failures.push_str(&format!(
                    "attempt {attempt} on {addr}: confab exited with {status}:\n{}\n",
                    read(&log)
                ));
                break;
            }
            // The banner is printed once confab itself holds the port, so a
            // connection cannot have reached some other process.
            let banner = read(&log).contains(&format!("serving gRPC on {addr}"));
            if banner && TcpStream::connect_timeout(&sock, Duration::from_millis(500)).is_ok() {
                return Server {
                    addr,
                    http,
                    log,
                    _process: process,
                };
            }
            assert!(
                Instant::now() < deadline,
                "confab dev did not accept connections on {addr} within {SERVER_START:?}; its output:\n{}",
                read(&log)
            );
            std::thread::sleep(POLL);
        }
    }
    panic!("confab dev did not start:\n{failures}");
}

/// Runs blocks with a shared state file, so that variables carry over.
struct Runner {
    root: PathBuf,
    work: PathBuf,
    state: PathBuf,
    addr: String,
    /// The server's logs, whose tails a failure shows.
    logs: Vec<PathBuf>,
}

impl Runner {
    /// The bash script for a block: strict mode, allexport, the state of the
    /// blocks before, the block itself (with our address), and, if `save`,
    /// the state after it.
    fn script(&self, block: &str, save: bool) -> String {
        let mut script = String::from("set -euo pipefail\nset -a\n");
        if self.state.exists() {
            script.push_str(&format!("source {}\n", quote(&self.state)));
        }
        for line in block.lines() {
            if line.trim_end() == ADDR_LINE {
                script.push_str(&format!("ADDR={}\n", self.addr));
            } else {
                script.push_str(line);
                script.push('\n');
            }
        }
        if save {
            script.push_str(&format!("export -p > {}\n", quote(&self.state)));
        }
        script
    }

    /// Starts bash on `script` in the repository root, in its own process
    /// group, with stdout and stderr going to the given files.
    fn spawn(&self, script: &str, stdout: &Path, stderr: &Path) -> ChildGuard {
        let child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(File::create(stdout).expect("stdout file"))
            .stderr(File::create(stderr).expect("stderr file"))
            .process_group(0)
            .spawn()
            .expect("cannot start bash");
        ChildGuard::group_leader(child)
    }

    fn run(&self, i: usize, step: &Step) -> Outcome {
        let stdout = self.work.join(format!("block-{i}.stdout"));
        let stderr = self.work.join(format!("block-{i}.stderr"));
        let mut process = self.spawn(&self.script(&step.sh.body, true), &stdout, &stderr);
        let Some(status) = process.wait_within(BLOCK_TIMEOUT) else {
            panic!(
                "{}",
                self.failure(
                    &step.sh,
                    &format!("still running after {BLOCK_TIMEOUT:?}; killed"),
                    &read(&stdout),
                    &read(&stderr),
                )
            );
        };
        Outcome {
            status,
            stdout: read(&stdout),
            stderr: read(&stderr),
        }
    }

    fn run_step(&self, i: usize, step: &Step) {
        let out = self.run(i, step);
        let fail = |why: &str| -> ! {
            panic!(
                "{}",
                self.failure(
                    &step.sh,
                    &format!("{why} ({})", out.status),
                    &out.stdout,
                    &out.stderr
                )
            )
        };
        if let Some(code) = step.fails_with() {
            let Some(text) = step.expect.as_ref().filter(|e| e.lang == "text") else {
                fail(&format!(
                    "a `{FAILS_WITH}{code}` block needs a ```text block with the error after it"
                ));
            };
            if out.status.success() {
                fail(&format!(
                    "expected the block to fail with {code}, it succeeded"
                ));
            }
            let code_line = format!("Code: {code}");
            if !out.stderr.contains(&code_line) {
                fail(&format!("stderr does not contain {code_line:?}"));
            }
            if !text.body.lines().any(|l| l.trim().starts_with("Message:")) {
                fail(&format!(
                    "README.md:{}: the error block has no Message line",
                    text.line
                ));
            }
            for line in text.body.lines().map(str::trim).filter(|l| !l.is_empty()) {
                if !out.stderr.lines().any(|l| l.trim() == line) {
                    fail(&format!(
                        "stderr lacks the line {line:?} of README.md:{}",
                        text.line
                    ));
                }
            }
            return;
        }
        if !out.status.success() {
            fail("the block failed");
        }
        match &step.expect {
            None => {}
            Some(e) if e.lang == "json" => {
                let expected = expected_json(e);
                let actual = json_values(&out.stdout)
                    .unwrap_or_else(|err| fail(&format!("stdout is not JSON: {err}")));
                if let Some(why) = mismatch_all(&expected, &actual) {
                    fail(&format!(
                        "stdout differs from the ```json block at README.md:{}: {why}",
                        e.line
                    ));
                }
            }
            Some(e) => {
                let lines = |s: &str| -> Vec<String> {
                    s.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(String::from)
                        .collect()
                };
                let (expected, actual) = (lines(&e.body), lines(&out.stdout));
                for line in &expected {
                    if !actual.contains(line) {
                        fail(&format!(
                            "stdout lacks the line {line:?} of README.md:{}",
                            e.line
                        ));
                    }
                }
                if expected != actual {
                    fail(&format!(
                        "stdout is not exactly the lines of README.md:{}: expected {expected:?}, got {actual:?}",
                        e.line
                    ));
                }
            }
        }
    }

    /// Starts a `# in a second terminal` block in the background and waits
    /// for its first frame: a stream only receives live messages once the
    /// server has read the client's first frame, which it answers.
    fn start_stream(&self, i: usize, step: Step) -> Stream {
        let Some(e) = step.expect.as_ref().filter(|e| e.lang == "json") else {
            panic!(
                "README.md:{}: a `{SECOND_TERMINAL}` block needs a ```json block with its frames",
                step.sh.line
            );
        };
        let expected = expected_json(e);
        assert!(
            !expected.is_empty(),
            "README.md:{}: no frames listed",
            e.line
        );
        let stdout = self.work.join(format!("stream-{i}.stdout"));
        let stderr = self.work.join(format!("stream-{i}.stderr"));
        let process = self.spawn(&self.script(&step.sh.body, false), &stdout, &stderr);
        let mut stream = Stream {
            step,
            expected,
            stdout,
            stderr,
            process,
        };
        let first = self.wait_frames(&mut stream, 1);
        if let Some(why) = mismatch(&stream.expected[0], &first[0], "frame 1") {
            panic!(
                "{}",
                self.stream_failure(&stream, &format!("the first frame differs: {why}"))
            );
        }
        stream
    }

    /// Waits for every expected frame of `stream`, checks them, and stops it.
    fn finish_stream(&self, stream: &mut Stream) {
        let frames = self.wait_frames(stream, stream.expected.len());
        if let Some(why) = mismatch_all(&stream.expected, &frames) {
            panic!(
                "{}",
                self.stream_failure(
                    stream,
                    &format!("the frames differ from the ```json block after it: {why}")
                )
            );
        }
        stream.process.kill();
    }

    /// Polls the stream's output until it holds `n` complete JSON values.
    fn wait_frames(&self, stream: &mut Stream, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + STREAM_WAIT;
        loop {
            let frames = complete_json_values(&read(&stream.stdout));
            if frames.len() >= n {
                return frames;
            }
            if let Some(status) = stream.process.child.try_wait().expect("stream status") {
                panic!(
                    "{}",
                    self.stream_failure(
                        stream,
                        &format!("exited with {status} after {} of {n} frames", frames.len())
                    )
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}",
                    self.stream_failure(
                        stream,
                        &format!(
                            "printed {} of {n} frames within {STREAM_WAIT:?}",
                            frames.len()
                        )
                    )
                );
            }
            std::thread::sleep(POLL);
        }
    }

    fn stream_failure(&self, stream: &Stream, why: &str) -> String {
        self.failure(
            &stream.step.sh,
            why,
            &read(&stream.stdout),
            &read(&stream.stderr),
        )
    }

    fn failure(&self, block: &Fence, why: &str, stdout: &str, stderr: &str) -> String {
        format!(
            "README walkthrough against {addr}, ```sh block at README.md:{line}: {why}\n\
             --- block ---\n{body}\n\
             --- stdout ---\n{stdout}\n\
             --- stderr ---\n{stderr}\n{logs}",
            addr = self.addr,
            line = block.line,
            body = block.body,
            logs = log_tails(&self.logs, LOG_TAIL),
        )
    }
}

/// The values of a ```json block.
fn expected_json(block: &Fence) -> Vec<Value> {
    json_values(&block.body)
        .unwrap_or_else(|e| panic!("README.md:{}: invalid JSON: {e}", block.line))
}

/// Every JSON value in `s`, one after the other.
fn json_values(s: &str) -> Result<Vec<Value>, serde_json::Error> {
    serde_json::Deserializer::from_str(s)
        .into_iter::<Value>()
        .collect()
}

/// The complete JSON values at the start of `s` (a stream may be mid-frame).
fn complete_json_values(s: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(s)
        .into_iter::<Value>()
        .map_while(Result::ok)
        .collect()
}

/// Why the `actual` sequence of values does not match `expected`, if it does not.
fn mismatch_all(expected: &[Value], actual: &[Value]) -> Option<String> {
    if expected.len() != actual.len() {
        return Some(format!(
            "expected {} JSON value(s), got {}",
            expected.len(),
            actual.len()
        ));
    }
    expected
        .iter()
        .zip(actual)
        .enumerate()
        .find_map(|(i, (e, a))| mismatch(e, a, &format!("value {}", i + 1)))
}

/// Why `actual` does not match `expected`, if it does not. Objects have the
/// same keys, arrays the same length, a string ending in `...` is a prefix,
/// anything else is equal.
fn mismatch(expected: &Value, actual: &Value, path: &str) -> Option<String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (key, ev) in e {
                let here = format!("{path}.{key}");
                match a.get(key) {
                    None => return Some(format!("{here}: missing")),
                    Some(av) => {
                        if let Some(why) = mismatch(ev, av, &here) {
                            return Some(why);
                        }
                    }
                }
            }
            a.iter()
                .find(|(key, _)| !e.contains_key(*key))
                .map(|(key, v)| format!("{path}.{key}: not in the README (value {v})"))
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                return Some(format!(
                    "{path}: expected {} element(s), got {}: {actual}",
                    e.len(),
                    a.len()
                ));
            }
            e.iter()
                .zip(a)
                .enumerate()
                .find_map(|(i, (ev, av))| mismatch(ev, av, &format!("{path}[{i}]")))
        }
        (Value::String(e), Value::String(a)) if e.ends_with("...") => {
            let prefix = &e[..e.len() - 3];
            (!a.starts_with(prefix))
                .then(|| format!("{path}: expected a string starting with {prefix:?}, got {a:?}"))
        }
        _ => (expected != actual).then(|| format!("{path}: expected {expected}, got {actual}")),
    }
}

/// `path` in single quotes for bash.
fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

#[cfg(test)]
mod matcher {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_need_exactly_the_expected_keys() {
        let e = json!({"a": "1", "b": {"c": true}});
        assert_eq!(
            mismatch(&e, &json!({"a": "1", "b": {"c": true}}), "v"),
            None
        );
        assert!(mismatch(&e, &json!({"a": "1"}), "v").is_some());
        assert!(mismatch(&e, &json!({"a": "1", "b": {"c": true, "d": 1}}), "v").is_some());
        assert!(mismatch(&e, &json!({"a": "2", "b": {"c": true}}), "v").is_some());
    }

    #[test]
    fn ellipsis_is_a_prefix_and_arrays_have_equal_length() {
        assert_eq!(mismatch(&json!("grp-..."), &json!("grp-1234"), "v"), None);
        assert!(mismatch(&json!("grp-..."), &json!("dm-1234"), "v").is_some());
        assert!(mismatch(&json!("grp-..."), &json!(1), "v").is_some());
        assert_eq!(mismatch(&json!(["a", "b"]), &json!(["a", "b"]), "v"), None);
        assert!(mismatch(&json!(["a"]), &json!(["a", "b"]), "v").is_some());
        assert!(mismatch_all(&[json!(1)], &[json!(1), json!(2)]).is_some());
    }

    #[test]
    fn a_partial_value_is_not_a_frame() {
        assert_eq!(
            complete_json_values("{\"pong\": {}}\n{\"message\": {"),
            vec![json!({"pong": {}})]
        );
    }
}
