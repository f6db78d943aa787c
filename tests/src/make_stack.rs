//! `make stack` from a test: the distributed stack as users start it
//! (PostgreSQL, the nisshi broker, history, router, gateway, and Prometheus
//! with `PROMETHEUS=1`), in a temporary `CONFAB_STACK_DIR` with the gateway
//! on a free port, and `make stack-down`, which must leave nothing of what
//! `make stack` recorded running. A [`MakeStack`] dropped without
//! [`MakeStack::down`] (a failed test) runs `make stack-down`, kills what
//! that left of the recorded processes, and keeps the stack directory (its
//! path is printed).
//!
//! On a running stack, [`MakeStack::restart`], [`MakeStack::status`] and
//! [`MakeStack::stack_logs`] run `make stack-restart SERVICE=…`, `make
//! stack-status` and `make stack-logs`; [`MakeStack::setting`] reads what
//! `make stack` recorded in `<stack dir>/settings`. [`make_in`] runs any
//! target on a stack directory of the caller's (one where nothing runs, say).

use crate::free_port;
use crate::postgres::postmaster_pid;
use crate::procs::{group_members, running, tail, ChildGuard};
use std::fs::{self, File};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

/// How long `make stack` may run: it builds the services (or waits for
/// another cargo's lock) and, once per machine, installs the broker.
const STACK_UP: Duration = Duration::from_secs(1800);
/// How long `make stack-down` may run (each process gets 10 s to stop).
const STACK_DOWN: Duration = Duration::from_secs(180);
/// How long the processes may take to vanish once `make stack-down` is done.
const STACK_GONE: Duration = Duration::from_secs(30);
/// Lines of each log shown when something fails.
const LOG_TAIL: usize = 40;
/// How long `make stack-restart` may run: stopping the service (10 s
/// before SIGKILL) and waiting for it to listen again (60 s).
pub const STACK_RESTART: Duration = Duration::from_secs(120);
/// How long `make stack-status` or `make stack-logs` may run.
pub const STACK_INSPECT: Duration = Duration::from_secs(60);

/// The repository root (the parent of the harness crate's directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// What `make stack` recorded in `<stack dir>/pids`: `name pid` lines, each
/// process leading its own process group (the script starts them with
/// `setsid`), and a `postgres-cluster <datadir>` line.
#[derive(Debug, Clone, Default)]
pub struct Started {
    /// The recorded processes, by name.
    pub processes: Vec<(String, u32)>,
    /// The PostgreSQL cluster's data directory.
    pub pg_data: Option<PathBuf>,
}

impl Started {
    /// Parses the `pids` file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut started = Self::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (name, what) = line
                .trim()
                .split_once(' ')
                .ok_or_else(|| format!("not `name pid`: {line:?}"))?;
            if name == "postgres-cluster" {
                started.pg_data = Some(PathBuf::from(what.trim()));
            } else {
                let pid = what
                    .trim()
                    .parse()
                    .map_err(|_| format!("not `name pid`: {line:?}"))?;
                started.processes.push((name.to_string(), pid));
            }
        }
        Ok(started)
    }

    /// What of it (and the postmaster `postmaster`) is still running,
    /// described.
    fn leftovers(&self, postmaster: Option<u32>) -> Vec<String> {
        let mut left = Vec::new();
        for (name, pid) in &self.processes {
            let members = group_members(*pid);
            if running(*pid) || !members.is_empty() {
                left.push(format!(
                    "{name} (pid {pid}, its process group: {members:?})"
                ));
            }
        }
        if let Some(pid) = postmaster.filter(|p| running(*p)) {
            left.push(format!("postgres (postmaster pid {pid})"));
        }
        left
    }
}

/// How a `make` run ended: its status (`None`: killed after its timeout)
/// and its stdout and stderr, interleaved.
pub struct MakeRun {
    /// Its exit status.
    pub status: Option<ExitStatus>,
    /// What it printed.
    pub output: String,
}

impl MakeRun {
    /// Whether it exited 0.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// How it ended and what it printed, for a failure message.
    pub fn describe(&self, target: &str, timeout: Duration) -> String {
        let how = match self.status {
            Some(status) => format!("exited with {status}"),
            None => format!("still running after {timeout:?}; killed"),
        };
        format!("`make {target}` {how}\n--- its output ---\n{}", self.output)
    }
}

/// The distributed stack started by `make stack`; see the module
/// documentation.
pub struct MakeStack {
    root: PathBuf,
    /// `CONFAB_STACK_DIR`; `None` once kept.
    dir: Option<tempfile::TempDir>,
    /// `CONFAB_STACK_DIR`'s path.
    pub path: PathBuf,
    /// `CONFAB_STACK_GATEWAY`.
    pub gateway: SocketAddr,
    /// The gateway's HTTP listener (web app, WebSocket, gRPC-Web):
    /// `CONFAB_STACK_HTTP_PORT`, not the default 8080 another stack may hold.
    pub http: SocketAddr,
    /// More variables for make.
    env: Vec<(String, String)>,
    /// `CARGO_TARGET_DIR` and `STACK_PROFILE` for make, so that it starts
    /// the binaries built with this program; the Makefile's defaults when
    /// unknown.
    build: Option<(PathBuf, &'static str)>,
    /// False once `make stack-down` succeeded and everything was gone.
    running: bool,
}

impl MakeStack {
    /// Runs `make stack <args>` in the repository `root` with the gateway
    /// on a free port, its state in a new temporary directory and `env`
    /// set; fails the test unless it succeeds with every recorded process
    /// running.
    pub fn up(root: &Path, args: &[&str], env: &[(&str, String)]) -> MakeStack {
        let dir = tempfile::Builder::new()
            .prefix("confab-stack-")
            .tempdir()
            .expect("temporary stack directory");
        // Run as root, the script runs PostgreSQL as the postgres user, which
        // must be able to reach the cluster below this directory.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .expect("chmod the stack directory");
        // The guard exists before make runs: a stack that fails halfway has
        // already started processes.
        let stack = MakeStack {
            root: root.to_path_buf(),
            path: dir.path().to_path_buf(),
            dir: Some(dir),
            gateway: SocketAddr::from(([127, 0, 0, 1], free_port())),
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            build: build_dir(),
            running: true,
        };
        let target: Vec<&str> = std::iter::once("stack")
            .chain(args.iter().copied())
            .collect();
        let run = stack.make(&target, STACK_UP);
        assert!(
            run.succeeded(),
            "{}\n{}",
            run.describe(&target.join(" "), STACK_UP),
            stack.diagnostics()
        );
        let started = stack.started().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            started.pg_data.is_some() && !started.processes.is_empty(),
            "{} records no postgres-cluster line or no process: {started:?}",
            stack.path.join("pids").display()
        );
        let dead: Vec<_> = started
            .processes
            .iter()
            .filter(|(_, pid)| !running(*pid))
            .collect();
        assert!(
            dead.is_empty(),
            "`make stack` succeeded, but these processes it recorded are not running: {dead:?}\n{}",
            stack.diagnostics()
        );
        stack
    }

    /// The logs the services write (`<stack dir>/logs`), and PostgreSQL's.
    pub fn logs(&self) -> Vec<PathBuf> {
        let mut logs: Vec<PathBuf> = fs::read_dir(self.path.join("logs"))
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        logs.sort();
        let pg = self.path.join("pg").join("postgres.log");
        if pg.exists() {
            logs.push(pg);
        }
        logs
    }

    /// The tails of every log, for a failure message.
    pub fn diagnostics(&self) -> String {
        let logs = self.logs();
        if logs.is_empty() {
            return format!("(no logs under {})", self.path.display());
        }
        log_tails(&logs, LOG_TAIL)
    }

    /// What `<stack dir>/pids` records.
    pub fn started(&self) -> Result<Started, String> {
        let pids = self.path.join("pids");
        let text = fs::read_to_string(&pids)
            .map_err(|e| format!("cannot read {}: {e}", pids.display()))?;
        Started::parse(&text).map_err(|e| format!("{}: {e}", pids.display()))
    }

    /// Runs `make args...` in the repository root with this stack's
    /// settings, in its own process group, killed after `timeout`.
    fn make(&self, args: &[&str], timeout: Duration) -> MakeRun {
        self.run(args, &[], timeout)
    }

    /// Runs `make args...` in the repository root with this stack's
    /// settings and then `env` (which wins), in its own process group,
    /// killed after `timeout`.
    pub fn run(&self, args: &[&str], env: &[(&str, String)], timeout: Duration) -> MakeRun {
        let mut all: Vec<(String, String)> = vec![
            ("CONFAB_STACK_GATEWAY".to_string(), self.gateway.to_string()),
            (
                "CONFAB_STACK_HTTP_PORT".to_string(),
                self.http.port().to_string(),
            ),
        ];
        all.extend(self.env.iter().cloned());
        // The stack on the build this program was built in: a test's debug
        // build (so a test run builds once; users' `make stack` runs
        // release binaries, which a test of stack_ops checks), the bench's
        // release build.
        if let Some((dir, profile)) = &self.build {
            all.push(("CARGO_TARGET_DIR".to_string(), dir.display().to_string()));
            all.push(("STACK_PROFILE".to_string(), profile.to_string()));
        }
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        make_in(&self.root, &self.path, args, &all, timeout)
    }

    /// `make stack-restart SERVICE=<service>`, with `env` on top of this
    /// stack's settings (to show that the recorded ones win).
    pub fn restart(&self, service: &str, env: &[(&str, String)]) -> MakeRun {
        let arg = format!("SERVICE={service}");
        self.run(&["stack-restart", &arg], env, STACK_RESTART)
    }

    /// `make stack-status`.
    pub fn status(&self) -> MakeRun {
        self.run(&["stack-status"], &[], STACK_INSPECT)
    }

    /// `make stack-logs`, of `service` only if given, `LINES=<lines>` if
    /// given.
    pub fn stack_logs(&self, service: Option<&str>, lines: Option<usize>) -> MakeRun {
        let mut args = vec!["stack-logs".to_string()];
        args.extend(service.map(|s| format!("SERVICE={s}")));
        args.extend(lines.map(|n| format!("LINES={n}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args, &[], STACK_INSPECT)
    }

    /// `<stack dir>/settings`: how `make stack` started each process, for
    /// `make stack-restart` and `make stack-status`.
    pub fn settings_path(&self) -> PathBuf {
        self.path.join("settings")
    }

    /// The value of the variable `name` (e.g. `SERVICE_TOKEN`) in
    /// `<stack dir>/settings`, read as the script reads it (bash `source`);
    /// fails the test if it is unset or empty.
    pub fn setting(&self, name: &str) -> String {
        let settings = self.settings_path();
        let out = Command::new("bash")
            .args(["-c", r#"set -u; . "$1"; printf %s "${!2}""#, "setting"])
            .arg(&settings)
            .arg(name)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run bash to read {}: {e}", settings.display()));
        let value = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && !value.is_empty(),
            "{} sets no {name} ({}): `make stack` must record it there",
            settings.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        value
    }

    /// The pid `<stack dir>/pids` records for `name` (which leads its
    /// process group); fails the test if there is none.
    pub fn pid_of(&self, name: &str) -> u32 {
        let started = self.started().unwrap_or_else(|e| panic!("{e}"));
        started
            .processes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, pid)| *pid)
            .unwrap_or_else(|| {
                panic!(
                    "{} records no {name}: {started:?}",
                    self.path.join("pids").display()
                )
            })
    }

    /// Runs `make stack-down` and checks that it succeeds and that nothing
    /// `make stack` recorded is left: no process in the group of any
    /// recorded pid, and no postmaster (pid gone, `postmaster.pid` removed).
    pub fn down(mut self) {
        // Read before stack-down, which deletes the record.
        let started = self.started().unwrap_or_else(|e| panic!("{e}"));
        let pg_data = started.pg_data.clone().expect("a postgres-cluster line");
        let postmaster = postmaster_pid(&pg_data);
        let run = self.make(&["stack-down"], STACK_DOWN);
        assert!(
            run.succeeded(),
            "{}\n{}",
            run.describe("stack-down", STACK_DOWN),
            self.diagnostics()
        );
        let mut left = Vec::new();
        let gone = crate::poll_blocking(STACK_GONE, || {
            left = started.leftovers(postmaster);
            left.is_empty()
        });
        assert!(
            gone,
            "{STACK_GONE:?} after `make stack-down` succeeded, still running: {}\n--- its output ---\n{}\n{}",
            left.join("; "),
            run.output,
            self.diagnostics()
        );
        let pid_file = pg_data.join("postmaster.pid");
        assert!(
            !pid_file.exists(),
            "{} still exists after `make stack-down`: the cluster was not shut down cleanly\n{}",
            pid_file.display(),
            self.diagnostics()
        );
        self.running = false;
    }
}

impl Drop for MakeStack {
    fn drop(&mut self) {
        if self.running {
            // What was recorded, read before stack-down deletes it.
            let started = self.started().unwrap_or_default();
            let postmaster = started.pg_data.as_deref().and_then(postmaster_pid);
            let run = self.make(&["stack-down"], STACK_DOWN);
            if !run.succeeded() {
                eprintln!(
                    "cleaning up after a failure: {}",
                    run.describe("stack-down", STACK_DOWN)
                );
            }
            // Last resort, for what stack-down left behind.
            for (name, pid) in &started.processes {
                if running(*pid) || !group_members(*pid).is_empty() {
                    eprintln!("cleaning up after a failure: killing {name} (process group {pid})");
                    let _ = Command::new("kill")
                        .args(["-KILL", "--", &format!("-{pid}")])
                        .stderr(Stdio::null())
                        .status();
                }
            }
            if let Some(pid) = postmaster.filter(|p| running(*p)) {
                eprintln!("cleaning up after a failure: stopping postmaster {pid} (SIGQUIT)");
                let _ = Command::new("kill")
                    .args(["-QUIT", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                eprintln!("stack directory kept: {}", dir.keep().display());
            }
        }
    }
}

/// Runs `make args...` in the repository `root` with `CONFAB_STACK_DIR`
/// set to `stack_dir` and `env` on top, in its own process group, killed
/// after `timeout`; its output goes to `<stack_dir>/make-<target>.out` too.
/// The broker, PostgreSQL and Prometheus settings of the environment this
/// test runs in are removed (free ports of the script's choosing,
/// Prometheus only when asked for), as are make's own (a make of its own)
/// and the variables the stack targets read (`SERVICE`, `LINES`: only the
/// caller's `args` set them).
pub fn make_in(
    root: &Path,
    stack_dir: &Path,
    args: &[&str],
    env: &[(String, String)],
    timeout: Duration,
) -> MakeRun {
    let log = stack_dir.join(format!("make-{}.out", args[0]));
    let out = File::create(&log).expect("make output file");
    let err = out.try_clone().expect("make output file");
    let mut command = Command::new("make");
    command
        .args(args)
        .current_dir(root)
        .env("CONFAB_STACK_DIR", stack_dir)
        .env_remove("CONFAB_STACK_PG_PORT")
        .env_remove("CONFAB_STACK_KAFKA_PORT")
        .env_remove("CONFAB_STACK_PROMETHEUS")
        .env_remove("PROMETHEUS")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .env_remove("SERVICE")
        .env_remove("LINES")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run make {}: {e}", args.join(" ")));
    let status = ChildGuard::group_leader(child).wait_within(timeout);
    MakeRun {
        status,
        output: read(&log),
    }
}

/// The `CARGO_TARGET_DIR` this executable was built in and its profile,
/// if it lies at `<target>/<profile>/deps/<test>` (a test) or
/// `<target>/<profile>/<binary>` (the bench), the profile `debug` or
/// `release`.
pub fn build_dir() -> Option<(PathBuf, &'static str)> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors().skip(1).take(2).find_map(|dir| {
        let profile = match dir.file_name()?.to_str()? {
            "debug" => "debug",
            "release" => "release",
            _ => return None,
        };
        Some((dir.parent()?.to_path_buf(), profile))
    })
}

/// A file's text, or a note saying why there is none.
pub fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

/// The last `lines` lines of each of `logs`, headed by its path.
pub fn log_tails(logs: &[PathBuf], lines: usize) -> String {
    logs.iter()
        .map(|log| {
            format!(
                "--- last {lines} lines of {} ---\n{}\n",
                log.display(),
                tail(log, lines)
            )
        })
        .collect()
}
