//! A real Kafka-API broker for tests: nisshi 0.7.0 (an Apache-Kafka-compatible
//! broker written in Rust) as a child process on a free port of 127.0.0.1,
//! with the memory storage engine (fast, gone on restart) or the PostgreSQL
//! engine (durable: survives `kill -9` and restart) in its own database of a
//! [`PgCluster`]. Its output goes to a log file whose tail is in every
//! start-up failure. Dropping a [`Broker`] kills it.
//!
//! The binary is `$NISSHI_BIN`, else `~/.cache/confab/tools/bin/nisshi`
//! (where `make deps-broker` installs it), else `nisshi` on `PATH`. There is
//! no fallback and no skipping: a test that needs the broker fails, saying
//! how to install it.

use crate::postgres::PgCluster;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use std::fs::{File, OpenOptions};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the broker may take to start (the PostgreSQL engine creates its
/// schema on first start).
const START_DEADLINE: Duration = Duration::from_secs(60);

/// How long the first rebalance of an empty group waits for more members.
/// Kafka's default is 3 s; tests want assignments at once.
const GROUP_INITIAL_REBALANCE_DELAY: &str = "100ms";

/// A nisshi broker process owned by a test.
pub struct Broker {
    /// The running process, if any (none after [`Broker::kill9`]).
    child: Option<Child>,
    /// The binary.
    bin: PathBuf,
    /// The address it listens on and advertises (127.0.0.1 unless
    /// started with [`Broker::start_on`]).
    ip: std::net::Ipv4Addr,
    /// The port it listens on and advertises.
    port: u16,
    /// `--storage-engine`.
    storage: String,
    /// Holds the log file.
    dir: tempfile::TempDir,
}

impl Broker {
    /// A broker with the memory storage engine: fast, and empty again
    /// after a restart.
    pub async fn start_memory() -> Broker {
        Self::start("memory://nisshi/").await
    }

    /// A broker with the durable PostgreSQL storage engine, in a new
    /// database of `pg`: records, topics and committed offsets survive
    /// `kill -9` and [`Broker::restart`].
    pub async fn start_postgres(pg: &PgCluster) -> Broker {
        Self::start_postgres_on(std::net::Ipv4Addr::LOCALHOST, pg).await
    }

    /// [`Broker::start_postgres`] listening on `ip` (see
    /// [`Broker::start_on`]).
    pub async fn start_postgres_on(ip: std::net::Ipv4Addr, pg: &PgCluster) -> Broker {
        let url = pg
            .fresh_database()
            .await
            .expect("a database for the broker's storage");
        Self::start_on(ip, &with_sslmode_disable(&url)).await
    }

    /// A broker with `storage` as its `--storage-engine`, on a free port.
    pub async fn start(storage: &str) -> Broker {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST, storage).await
    }

    /// [`Broker::start`] listening on (and advertising) `ip`: an address
    /// of this namespace that hosts in other network namespaces reach.
    pub async fn start_on(ip: std::net::Ipv4Addr, storage: &str) -> Broker {
        let bin = nisshi_bin();
        let dir = tempfile::Builder::new()
            .prefix("confab-nisshi-")
            .tempdir()
            .expect("a directory for the broker's log");
        let mut broker = Broker {
            child: None,
            bin,
            ip,
            port: 0,
            storage: storage.to_string(),
            dir,
        };
        // Another process may take the free port before the broker binds
        // it: try a few.
        let mut failures = Vec::new();
        for _ in 0..3 {
            broker.port = crate::free_port();
            match broker.spawn_and_wait().await {
                Ok(()) => return broker,
                Err(e) => failures.push(e),
            }
        }
        // Keep the log for whoever reads the failure.
        broker.dir.disable_cleanup(true);
        panic!(
            "the nisshi broker did not start ({}):\n{}\n--- last lines of {} (kept) ---\n{}",
            broker.bin.display(),
            failures.join("\n"),
            broker.log_path().display(),
            broker.log_tail(40)
        );
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The file its stdout and stderr go to (across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nisshi.log")
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::procs::tail(&self.log_path(), lines)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// `kill -9`: no shutdown handling at all. Idempotent.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the broker if it runs, and starts it again on the same port
    /// with the same storage; returns once it answers metadata requests.
    pub async fn restart(&mut self) {
        self.kill9();
        let mut failures = Vec::new();
        for attempt in 0..3u32 {
            if attempt > 0 {
                // The port is ours, but a just-killed listener may linger.
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            match self.spawn_and_wait().await {
                Ok(()) => return,
                Err(e) => failures.push(e),
            }
        }
        self.dir.disable_cleanup(true);
        panic!(
            "the nisshi broker did not restart on port {}:\n{}\n--- last lines of {} (kept) ---\n{}",
            self.port,
            failures.join("\n"),
            self.log_path().display(),
            self.log_tail(40)
        );
    }

    /// Starts the process and waits until it accepts connections and
    /// answers a metadata request; on failure the process is gone and the
    /// error says why.
    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("open {}: {e}", self.log_path().display()))?;
        let err_log = log
            .try_clone()
            .map_err(|e| format!("clone the log handle: {e}"))?;
        let url = format!("tcp://{}:{}", self.ip, self.port);
        let mut cmd = Command::new(&self.bin);
        cmd.arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", &self.storage])
            .args([
                "--group-initial-rebalance-delay",
                GROUP_INITIAL_REBALANCE_DELAY,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log));
        note(&self.log_path(), &format!("--- starting {cmd:?}"));
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        let result = self.wait_ready().await;
        if result.is_err() {
            self.kill9();
        }
        result
    }

    /// Polls until the port accepts connections and metadata comes back.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        let addr = self.bootstrap();
        let mut last = String::from("not tried yet");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("it exited during start-up: {status}"));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not ready on {addr} within {START_DEADLINE:?}; last attempt: {last}"
                ));
            }
            let sock_addr = addr
                .parse()
                .map_err(|e| format!("bad address {addr}: {e}"))?;
            match TcpStream::connect_timeout(&sock_addr, Duration::from_millis(200)) {
                Err(e) => last = format!("connect: {e}"),
                Ok(_) => match metadata(&addr).await {
                    Ok(brokers) if brokers > 0 => return Ok(()),
                    Ok(_) => last = "metadata lists no broker".into(),
                    Err(e) => last = format!("metadata: {e}"),
                },
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Asks `addr` for cluster metadata with rdkafka; the number of brokers.
async fn metadata(addr: &str) -> Result<usize, String> {
    let addr = addr.to_string();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &addr)
            .set("log_level", "3")
            .create()
            .map_err(|e| e.to_string())?;
        client
            .fetch_metadata(None, Duration::from_secs(2))
            .map(|m| m.brokers().len())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Appends a line of our own to the broker's log.
fn note(log: &Path, line: &str) {
    use std::io::Write as _;
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(log) {
        let _ = writeln!(f, "{line}");
    }
}

/// The nisshi binary: `$NISSHI_BIN`, `~/.cache/confab/tools/bin/nisshi`, or
/// `nisshi` on `PATH`; panics with install instructions when none exists.
pub fn nisshi_bin() -> PathBuf {
    let mut tried = Vec::new();
    if let Some(p) = std::env::var_os("NISSHI_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            is_executable(&p),
            "NISSHI_BIN={} is not an executable file; unset it to use the broker that \
             `make deps-broker` installs",
            p.display()
        );
        return p;
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = Path::new(&home).join(".cache/confab/tools/bin/nisshi");
        if is_executable(&p) {
            return p;
        }
        tried.push(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("nisshi");
            if is_executable(&p) {
                return p;
            }
        }
        tried.push(PathBuf::from("nisshi on PATH"));
    }
    panic!(
        "the nisshi 0.7.0 broker is not installed (looked for $NISSHI_BIN, {}). \
         Install it with `make deps-broker` (about 25 minutes on 2 cores, with the \
         nightly toolchain), or point NISSHI_BIN at the binary.",
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Whether `p` is a file with an execute bit.
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    File::open(p)
        .and_then(|f| f.metadata())
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `url` with `sslmode=disable` unless it names an sslmode already (nisshi
/// needs it on loopback).
fn with_sslmode_disable(url: &str) -> String {
    if url.contains("sslmode=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&sslmode=disable")
    } else {
        format!("{url}?sslmode=disable")
    }
}

#[cfg(test)]
mod tests {
    use super::with_sslmode_disable;

    #[test]
    fn storage_urls_get_sslmode_disable_once() {
        assert_eq!(
            with_sslmode_disable("postgres://p@h:1/db"),
            "postgres://p@h:1/db?sslmode=disable"
        );
        assert_eq!(
            with_sslmode_disable("postgres://p@h:1/db?x=1"),
            "postgres://p@h:1/db?x=1&sslmode=disable"
        );
        assert_eq!(
            with_sslmode_disable("postgres://p@h:1/db?sslmode=disable"),
            "postgres://p@h:1/db?sslmode=disable"
        );
    }
}
