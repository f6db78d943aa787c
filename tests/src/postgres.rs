//! A throwaway PostgreSQL cluster for tests: `initdb` into a temporary
//! directory, `pg_ctl start` on a free port of 127.0.0.1, one fresh database
//! per store, and `pg_ctl -m immediate stop` (a crash) when dropped. As root,
//! the binaries run as the `postgres` user (initdb refuses root). With
//! `DATABASE_URL` set, [`PgCluster::start`] uses that server instead.

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How long `pg_ctl` may wait for the server to start or stop, in seconds.
const PG_CTL_TIMEOUT_SECS: &str = "60";

/// A PostgreSQL server for one test: a local cluster this value owns, or the
/// server named by `DATABASE_URL`.
pub struct PgCluster {
    /// URL of the server's `postgres` database (or `DATABASE_URL` as given).
    admin_url: String,
    /// The local cluster, if this value started one.
    local: Option<Local>,
}

/// A cluster started by [`PgCluster`].
struct Local {
    /// Where `initdb`, `pg_ctl` live.
    bin: PathBuf,
    /// Holds `data/`, `log` and the Unix socket; removed on drop.
    dir: tempfile::TempDir,
    /// The TCP port it listens on (127.0.0.1 only).
    port: u16,
    /// Run the binaries through `runuser -u postgres --` (we are root).
    as_postgres: bool,
    /// `listen_addresses`.
    listen: String,
}

impl PgCluster {
    /// The server named by `DATABASE_URL` if it is set, otherwise a new local
    /// cluster.
    pub fn start() -> Result<PgCluster> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => Ok(PgCluster {
                admin_url: url,
                local: None,
            }),
            _ => Self::start_local(),
        }
    }

    /// A new local cluster, whatever `DATABASE_URL` says (crash tests need
    /// a server they can stop).
    pub fn start_local() -> Result<PgCluster> {
        Self::start_local_on(None)
    }

    /// [`PgCluster::start_local`] that also listens on `ip` (an address of
    /// this namespace that hosts in other network namespaces reach) and
    /// trusts connections from its /16.
    pub fn start_local_on(ip: Option<std::net::Ipv4Addr>) -> Result<PgCluster> {
        let bin = find_bin_dir()?;
        let as_postgres = current_uid()? == 0;
        let dir = tempfile::Builder::new()
            .prefix("confab-pg-")
            .tempdir()
            .context("create a directory for the PostgreSQL cluster")?;
        if as_postgres {
            run(Command::new("chown").arg("postgres").arg(dir.path()))
                .context("give the cluster directory to the postgres user")?;
        }
        let mut local = Local {
            bin,
            dir,
            port: 0,
            as_postgres,
            listen: match ip {
                Some(ip) => format!("127.0.0.1,{ip}"),
                None => "127.0.0.1".into(),
            },
        };
        local
            .run_pg(
                "initdb",
                &[
                    "-D",
                    &local.data().display().to_string(),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
            )
            .context("initdb")?;
        if let Some(ip) = ip {
            let [a, b, ..] = ip.octets();
            let hba = local.data().join("pg_hba.conf");
            let mut rules = std::fs::read_to_string(&hba).context("read pg_hba.conf")?;
            rules.push_str(&format!("host all all {a}.{b}.0.0/16 trust\n"));
            std::fs::write(&hba, rules).context("write pg_hba.conf")?;
        }
        // Another process may take the free port before the server binds
        // it: try a few.
        let mut last_err = None;
        for _ in 0..5 {
            local.port = crate::free_port();
            match local.start() {
                Ok(()) => {
                    return Ok(PgCluster {
                        admin_url: format!(
                            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
                            local.port
                        ),
                        local: Some(local),
                    })
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("no attempt to start PostgreSQL was made")))
    }

    /// The port of a cluster this value started (`None`: `DATABASE_URL`'s).
    pub fn port(&self) -> Option<u16> {
        self.local.as_ref().map(|l| l.port)
    }

    /// The URL of a new, empty database on this server.
    pub async fn fresh_database(&self) -> Result<String> {
        self.create_database(None).await
    }

    /// The URL of a new, empty database whose tables live in `location`
    /// (an empty directory: a tablespace of its own), as on a volume of
    /// their own; the write-ahead log stays with the cluster.
    pub async fn fresh_database_in(&self, location: &Path) -> Result<String> {
        if self.local.as_ref().is_some_and(|l| l.as_postgres) {
            run(Command::new("chown").arg("postgres").arg(location))
                .context("give the tablespace's directory to the postgres user")?;
        }
        self.create_database(Some(location)).await
    }

    async fn create_database(&self, location: Option<&Path>) -> Result<String> {
        use sqlx::Connection as _;
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "confab_test_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut statements = Vec::new();
        if let Some(location) = location {
            let location = location.display().to_string().replace('\'', "''");
            statements.push(format!(
                "CREATE TABLESPACE \"{name}\" LOCATION '{location}'"
            ));
            statements.push(format!("CREATE DATABASE \"{name}\" TABLESPACE \"{name}\""));
        } else {
            statements.push(format!("CREATE DATABASE \"{name}\""));
        }
        let mut conn = sqlx::PgConnection::connect(&self.admin_url)
            .await
            .with_context(|| format!("connect to {}", self.admin_url))?;
        for statement in &statements {
            sqlx::raw_sql(statement)
                .execute(&mut conn)
                .await
                .with_context(|| statement.clone())?;
        }
        conn.close().await.ok();
        Ok(with_database(&self.admin_url, &name))
    }

    /// Kills the server as a crash would (`pg_ctl -m immediate stop`): no
    /// checkpoint, recovery replays the WAL on the next start.
    pub fn stop_immediate(&self) {
        self.local_cluster("stop_immediate")
            .stop_immediate()
            .expect("pg_ctl -m immediate stop");
    }

    /// Starts the server again after [`PgCluster::stop_immediate`], on the same
    /// port and data directory.
    pub fn start_again(&self) {
        self.local_cluster("start_again")
            .start()
            .expect("pg_ctl start after a stop");
    }

    fn local_cluster(&self, what: &str) -> &Local {
        self.local.as_ref().unwrap_or_else(|| {
            panic!("{what} needs a cluster started by the test (PgCluster::start_local), not the DATABASE_URL server")
        })
    }
}

impl PgCluster {
    /// The server's processes (the postmaster and its children: backends,
    /// checkpointer, ...) for CPU accounting; none for a server named by
    /// `DATABASE_URL`.
    pub fn server_pids(&self) -> Vec<u32> {
        let Some(local) = &self.local else {
            return Vec::new();
        };
        let Some(postmaster) = postmaster_pid(&local.data()) else {
            return Vec::new();
        };
        let mut pids = vec![postmaster];
        pids.extend(crate::procs::children(postmaster));
        pids
    }
}

/// The postmaster's pid: the first line of `<datadir>/postmaster.pid`.
pub fn postmaster_pid(pg_data: &Path) -> Option<u32> {
    std::fs::read_to_string(pg_data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(local) = &self.local {
            // Already stopped after stop_immediate is fine; the directory is
            // removed when `local.dir` drops, after this.
            let _ = local.stop_immediate();
        }
    }
}

impl Local {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn start(&self) -> Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses={} -c fsync=on",
            self.port,
            self.dir.path().display(),
            self.listen
        );
        self.run_pg(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-l",
                &self.dir.path().join("log").display().to_string(),
                "-w",
                "-t",
                PG_CTL_TIMEOUT_SECS,
                "-o",
                &options,
                "start",
            ],
        )
        .with_context(|| {
            format!(
                "start PostgreSQL on 127.0.0.1:{}; server log:\n{}",
                self.port,
                self.log_tail()
            )
        })
    }

    fn stop_immediate(&self) -> Result<()> {
        self.run_pg(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-m",
                "immediate",
                "-w",
                "-t",
                PG_CTL_TIMEOUT_SECS,
                "stop",
            ],
        )
    }

    /// Runs `program` from the cluster's binaries, as `postgres` if root.
    fn run_pg(&self, program: &str, args: &[&str]) -> Result<()> {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        // The postgres user may not be allowed into the test's directory.
        cmd.args(args).current_dir(self.dir.path());
        run(&mut cmd)
    }

    /// The end of the server log, for error messages.
    fn log_tail(&self) -> String {
        crate::procs::tail(&self.dir.path().join("log"), 20)
    }
}

/// Runs `cmd` to completion; an error carries its output.
fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb` and `pg_ctl`.
fn find_bin_dir() -> Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version: Option<Vec<u32>> = name.split('.').map(|p| p.parse().ok()).collect();
            let bin = entry.path().join("bin");
            let complete = bin.join("initdb").is_file() && bin.join("pg_ctl").is_file();
            version.filter(|_| complete).map(|v| (v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| {
        anyhow!(
            "PostgreSQL is not installed: no {}/<version>/bin with initdb and pg_ctl. \
             Install it (apt-get install -y postgresql) or set DATABASE_URL to a server \
             where this user may create databases",
            root.display()
        )
    })
}

/// The effective uid of this process (the owner of `/proc/self`).
fn current_uid() -> Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    if let Ok(meta) = std::fs::metadata("/proc/self") {
        return Ok(meta.uid());
    }
    let out = Command::new("id").arg("-u").output().context("run id -u")?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("parse the output of id -u")
}

/// `url` with its database (the path) replaced by `name`, query kept.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.find('?') {
        Some(q) => url.split_at(q),
        None => (url, ""),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    format!("{base}/{name}{query}")
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_names_replace_the_path_and_keep_the_query() {
        assert_eq!(
            with_database("postgres://u@h:5/postgres?sslmode=disable", "x"),
            "postgres://u@h:5/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db", "x"),
            "postgres://u:p@h/x"
        );
        assert_eq!(with_database("postgres://h:5", "x"), "postgres://h:5/x");
        assert_eq!(
            with_database("postgres://h?sslmode=disable", "x"),
            "postgres://h/x?sslmode=disable"
        );
    }
}
