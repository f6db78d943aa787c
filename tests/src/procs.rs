//! Confab's service binaries (`confab-gateway`, `confab-router`,
//! `confab-history`) as real child processes: started with an environment,
//! killed with SIGKILL (a crash) or stopped with SIGTERM (a graceful
//! shutdown, timed), and started again with the same settings. Output goes
//! to a log file that survives restarts and whose tail is in every failure.
//! Also `confab dev` as a process ([`DevProcess`]), and what keeps a child
//! process from outliving a test ([`ChildGuard`]).

use crate::{DEADLINE, GENEROUS_LIMITS, SECRET};
use anyhow::{anyhow, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// One service binary running as a child process.
pub struct ServiceProc {
    /// Binary name (next to `confab`).
    pub name: &'static str,
    /// A short name for reports (`gateway-1`).
    pub label: String,
    /// Its environment (besides `CONFAB_LISTEN`); inherited `CONFAB_*`
    /// variables are removed.
    pub env: Vec<(String, String)>,
    /// Where it listens (`127.0.0.1:port`).
    pub addr: String,
    /// Its log file (appended to across restarts).
    pub log: PathBuf,
    /// Where it serves `/metrics`, `/livez` and `/readyz`, if it was given
    /// an address ([`ServiceProc::serve_metrics`]).
    pub metrics: Option<SocketAddr>,
    /// The network namespace it runs in, if not this one.
    pub host: Option<crate::netns::Host>,
    /// Where its binary is, if not with the current build's
    /// ([`confab_bin`]): another release's, for upgrades.
    pub bin_dir: Option<PathBuf>,
    /// The process, while running.
    child: Option<Child>,
}

/// How a graceful stop went.
#[derive(Debug, Clone, Copy)]
pub struct Stopped {
    /// The exit status, if the process exited in time.
    pub status: Option<ExitStatus>,
    /// From SIGTERM to exit (or to giving up).
    pub took: Duration,
}

impl ServiceProc {
    /// A service that is not started yet.
    pub fn new(
        name: &'static str,
        label: impl Into<String>,
        env: Vec<(String, String)>,
        log: PathBuf,
    ) -> Self {
        Self {
            name,
            label: label.into(),
            env,
            addr: format!("127.0.0.1:{}", crate::free_port()),
            log,
            metrics: None,
            host: None,
            bin_dir: None,
            child: None,
        }
    }

    /// Runs it in `host`'s network namespace, listening on its address
    /// (call before [`ServiceProc::serve_metrics`]).
    pub fn on_host(mut self, host: crate::netns::Host) -> Self {
        self.addr = format!("{}:{}", host.ip, crate::free_port());
        self.host = Some(host);
        self
    }

    /// Gives it `CONFAB_METRICS_LISTEN` on a free port of its address
    /// (127.0.0.1, or its host's).
    pub fn serve_metrics(mut self) -> Self {
        let ip = self
            .host
            .as_ref()
            .map_or(std::net::Ipv4Addr::LOCALHOST, |h| h.ip);
        let addr = SocketAddr::from((ip, crate::free_port()));
        self.env.push((
            confab_core::metrics::LISTEN_VAR.to_string(),
            addr.to_string(),
        ));
        self.metrics = Some(addr);
        self
    }

    /// Its gRPC address, parsed.
    pub fn socket_addr(&self) -> SocketAddr {
        self.addr.parse().expect("a service listens on ip:port")
    }

    /// Its metrics address; panics if it serves none.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
            .unwrap_or_else(|| panic!("{} serves no metrics", self.label))
    }

    /// Starts the binary and waits until it listens; panics with its log
    /// tail if it exits or does not listen in time.
    pub fn start(&mut self) {
        let bin = match &self.bin_dir {
            Some(dir) => dir.join(self.name),
            None => confab_bin().with_file_name(self.name),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = match &self.host {
            // `ip netns exec` execs the binary: the child is the service.
            Some(host) => {
                let [ip, netns, exec, ns] = host.prefix();
                let mut cmd = Command::new(ip);
                cmd.args([netns, exec, ns]).arg(&bin);
                cmd
            }
            None => Command::new(&bin),
        };
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CONFAB_")) {
            cmd.env_remove(k);
        }
        let child = cmd
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("CONFAB_LISTEN", &self.addr)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        self.child = Some(child);
        let started = match self.child.as_mut() {
            Some(child) => wait_listening(child, &self.addr, DEADLINE * 2),
            None => Err("did not start".into()),
        };
        if let Err(e) = started {
            panic!("{}: {e}; log:\n{}", self.label, self.tail(30));
        }
    }

    /// Whether the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// The process id, while started (for CPU and memory readings).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`: no shutdown handling at all. Idempotent.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `limit` for the process to exit; one that
    /// is still running then is killed (and reported with no status).
    pub async fn terminate(&mut self, limit: Duration) -> Stopped {
        let started = Instant::now();
        let Some(mut child) = self.child.take() else {
            return Stopped {
                status: None,
                took: Duration::ZERO,
            };
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {}", self.label);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Stopped {
                    status: Some(status),
                    took: started.elapsed(),
                };
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                return Stopped {
                    status: None,
                    took: started.elapsed(),
                };
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The last `lines` lines of its log.
    pub fn tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for ServiceProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The last `lines` lines of the file at `path` (empty if unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A child process killed (with its process group, when it leads one) and
/// reaped when dropped, so nothing outlives a failed test.
pub struct ChildGuard {
    /// The process.
    pub child: Child,
    /// Whether it leads a process group of its own (spawned with
    /// `process_group(0)`) that goes with it.
    group: bool,
}

impl ChildGuard {
    /// Guards `child` alone.
    pub fn new(child: Child) -> Self {
        Self {
            child,
            group: false,
        }
    }

    /// Guards `child` and the process group it leads.
    pub fn group_leader(child: Child) -> Self {
        Self { child, group: true }
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9` (of the group too, if it leads one), and reaps it.
    pub fn kill(&mut self) {
        if self.group {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for it to exit, checking every 50 ms; after `limit` kills it.
    /// Its exit status, or `None` when it was killed.
    pub fn wait_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut status = None;
        let child = &mut self.child;
        if crate::poll_blocking(limit, || {
            status = child.try_wait().expect("wait for a child");
            status.is_some()
        }) {
            return status;
        }
        self.kill();
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The fields of `/proc/<pid>/stat` after the command (`state ppid pgrp
/// ...`, so field N of proc(5) is at index N - 3); the command may hold
/// spaces and parentheses.
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// State, parent and process group of a process.
fn proc_stat(pid: u32) -> Option<(char, u32, u32)> {
    let fields = stat_fields(pid)?;
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let pgrp = fields.get(2)?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// Whether `pid` is a live process (a zombie has exited: it only waits for
/// its parent to reap it).
pub fn running(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(state, _, _)| state != 'Z')
}

/// The live processes whose (parent, process group) `select` picks.
fn live_where(select: impl Fn(u32, u32) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            proc_stat(pid).is_some_and(|(state, ppid, pgrp)| state != 'Z' && select(ppid, pgrp))
        })
        .collect()
}

/// The live processes in process group `pgrp`.
pub fn group_members(pgrp: u32) -> Vec<u32> {
    live_where(|_, g| g == pgrp)
}

/// The live children of `parent`.
pub fn children(parent: u32) -> Vec<u32> {
    live_where(|ppid, _| ppid == parent)
}

/// Where cargo put the binary `name` of the running build profile:
/// beside the running executable (tools: confab-bench, confab-chaos) or
/// one directory up (tests, which run from `<profile>/deps/`). The path
/// may not exist.
pub fn built_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let beside = exe.with_file_name(name);
    if beside.exists() {
        return beside;
    }
    exe.parent()
        .and_then(Path::parent)
        .map(|profile| profile.join(name))
        .unwrap_or(beside)
}

/// The `confab` binary built next to the test executable (or `CONFAB_BIN`).
pub fn confab_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CONFAB_BIN") {
        return PathBuf::from(p);
    }
    let bin = built_bin("confab");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p confab` first (make test does)",
        bin.display()
    );
    bin
}

/// Ports [`free_port`] hands out: below Linux's ephemeral range
/// (32768–60999), so no outgoing connection takes one between the pick and
/// the bind of the process it is for.
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A free TCP port on 127.0.0.1 that no other test of this run was given.
///
/// A port is handed to a child process before it binds it, so two tests
/// (each in its own process under nextest) must never get the same one:
/// each pick is claimed by a file in a directory every test shares, and
/// claims older than an hour (from earlier runs) are taken back.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let claims = std::env::temp_dir().join("confab-test-ports");
    std::fs::create_dir_all(&claims).expect("port claims directory");
    for _ in 0..10_000 {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let span = u64::from(TEST_PORTS.end - TEST_PORTS.start);
        let port = TEST_PORTS.start + (random % span) as u16;
        let claim = claims.join(port.to_string());
        let stale = std::fs::metadata(&claim)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(3600));
        if stale {
            let _ = std::fs::remove_file(&claim);
        }
        let claimed = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&claim)
            .is_ok();
        if claimed && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {TEST_PORTS:?}");
}

/// `confab dev` running as a real child process; killed when dropped.
pub struct DevProcess {
    /// The process.
    child: Child,
    /// Where it serves.
    pub addr: SocketAddr,
    /// Where its HTTP listener is (web app, WebSocket, gRPC-Web), unless
    /// `env` set `CONFAB_HTTP_LISTEN` otherwise.
    pub http: SocketAddr,
}

impl DevProcess {
    /// Starts the binary on `port` with its data in `data_dir`, and waits
    /// until it accepts connections.
    pub fn start(data_dir: &Path, port: u16) -> Result<Self> {
        Self::start_with(data_dir, port, &[], None)
    }

    /// [`DevProcess::start`] with `env` on top of the test secret and
    /// [`GENEROUS_LIMITS`] (inherited `CONFAB_*` variables are removed), its
    /// output to the file `log` (else stderr).
    pub fn start_with(
        data_dir: &Path,
        port: u16,
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> Result<Self> {
        Self::start_binary(&confab_bin(), data_dir, port, env, log)
    }

    /// [`DevProcess::start_with`] of the `confab` binary at `bin` (another
    /// release's, for upgrades).
    pub fn start_binary(
        bin: &Path,
        data_dir: &Path,
        port: u16,
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> Result<Self> {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        // Not the default 127.0.0.1:8080: tests run side by side.
        let http = SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
        let child = Self::spawn(bin, data_dir, addr, http, env, log)?;
        let mut me = Self { child, addr, http };
        wait_listening(&mut me.child, &addr.to_string(), DEADLINE)
            .map_err(|e| anyhow!("confab dev: {e}"))?;
        Ok(me)
    }

    /// Runs this build's `confab dev` where it must refuse to start, and
    /// returns its exit status once it exits (at most [`DEADLINE`]); an
    /// error if it is still running then (it was killed). Judged by the
    /// process itself, not by a port a test running beside it could have
    /// taken meanwhile.
    pub fn refusal(
        data_dir: &Path,
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> Result<ExitStatus> {
        let addr = SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
        let http = SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
        let mut child = Self::spawn(&confab_bin(), data_dir, addr, http, env, log)?;
        let mut status = None;
        crate::poll_blocking(DEADLINE, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        match status {
            Some(status) => Ok(status),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(anyhow!("confab dev was still running after {DEADLINE:?}"))
            }
        }
    }

    /// Spawns `bin dev` on `addr` (and `http`) over `data_dir`.
    fn spawn(
        bin: &Path,
        data_dir: &Path,
        addr: SocketAddr,
        http: SocketAddr,
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> Result<Child> {
        let mut cmd = Command::new(bin);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CONFAB_")) {
            cmd.env_remove(k);
        }
        let (stdout, stderr) = match log {
            Some(path) => {
                let file = std::fs::File::create(path).context("log file")?;
                (Stdio::from(file.try_clone()?), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::inherit()),
        };
        let child = cmd
            .args(["dev", "--listen", &addr.to_string(), "--data-dir"])
            .arg(data_dir)
            .env("CONFAB_JWT_SECRET", SECRET)
            .env("CONFAB_HTTP_LISTEN", http.to_string())
            .envs(GENEROUS_LIMITS.iter().copied())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .context("spawn confab dev")?;
        Ok(child)
    }

    /// The process id (for its CPU time and memory).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM: a graceful stop, which [`DevProcess::exited`] then sees.
    pub fn terminate(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM confab dev");
    }

    /// Its exit status, once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("the state of confab dev")
    }

    /// SIGTERM, then waits (at most [`DEADLINE`]) for the process to exit;
    /// panics unless it exits 0.
    pub async fn stop(&mut self) {
        self.terminate();
        let exited = crate::poll(
            "confab dev to exit",
            DEADLINE,
            Duration::from_millis(20),
            || {
                let exited = self.exited();
                async move { Ok(exited) }
            },
        )
        .await
        .expect("a graceful stop");
        assert!(exited.success(), "confab dev exited with {exited}");
    }

    /// `kill -9`: no shutdown handling at all.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until `child` accepts connections on `addr`, at most `within`;
/// why not, if it exits first or does not listen in time.
fn wait_listening(child: &mut Child, addr: &str, within: Duration) -> Result<(), String> {
    let mut exited = None;
    let listening = crate::poll_blocking(within, || {
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status);
            return true;
        }
        std::net::TcpStream::connect(addr).is_ok()
    });
    match (exited, listening) {
        (Some(status), _) => Err(format!("exited early ({status})")),
        (None, true) => Ok(()),
        (None, false) => Err(format!("did not listen on {addr} within {within:?}")),
    }
}
