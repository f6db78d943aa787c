//! The distributed stack as real processes, built one way everywhere:
//! `confab-history`, `confab-router` and `confab-gateway` binaries
//! ([`ServiceProc`]) on a Kafka-API broker and PostgreSQL, wired to each
//! other through their `CONFAB_*` variables.
//!
//! ```no_run
//! # async fn f() {
//! use confab_tests::stack::{ProcStack, Role};
//! let stack = ProcStack::builder("graceful")
//!     .gateways(2)
//!     .partitions(2)
//!     .log("info")
//!     .env_for(Role::Gateway, "CONFAB_SHUTDOWN_GRACE_MS", "500")
//!     .start_fresh() // PostgreSQL and a memory broker of its own
//!     .await;
//! let alice = stack.user(0, "alice").await;
//! # }
//! ```
//!
//! Every service gets the service token and (unless turned off)
//! [`crate::GENEROUS_LIMITS`], the broker and a topic prefix of its own;
//! history gets the database; routers and gateways every history address;
//! gateways every router address, a gateway id and the JWT secret. What a
//! test sets with [`StackBuilder::env`] and [`StackBuilder::env_for`] comes
//! last and wins. Services are started history first, then routers, then
//! gateways, each once it listens.

use crate::broker::Broker;
use crate::postgres::PgCluster;
use crate::procs::{ServiceProc, Stopped};
use crate::topology::SERVICE_TOKEN;
use crate::{User, GENEROUS_LIMITS, SECRET};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What a service process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `confab-history`.
    History,
    /// `confab-router`.
    Router,
    /// `confab-gateway`.
    Gateway,
}

impl Role {
    /// Every role, in the order they start.
    pub const ALL: [Role; 3] = [Role::History, Role::Router, Role::Gateway];

    /// `history`, `router` or `gateway`.
    pub fn name(self) -> &'static str {
        match self {
            Role::History => "history",
            Role::Router => "router",
            Role::Gateway => "gateway",
        }
    }

    /// Its binary.
    pub fn binary(self) -> &'static str {
        match self {
            Role::History => "confab-history",
            Role::Router => "confab-router",
            Role::Gateway => "confab-gateway",
        }
    }
}

/// PostgreSQL with a fresh database for history, and a broker on the
/// memory engine: what most stacks run on.
pub struct Backing {
    /// The database server ([`PgCluster::start`]: `DATABASE_URL`'s, or a
    /// local cluster).
    pub pg: PgCluster,
    /// History's database on it.
    pub database_url: String,
    /// The broker.
    pub broker: Broker,
}

impl Backing {
    /// Starts PostgreSQL, makes history's database, starts the broker.
    pub async fn start() -> Backing {
        let pg = PgCluster::start().expect("postgres");
        let database_url = pg.fresh_database().await.expect("database");
        let broker = Broker::start_memory().await;
        Backing {
            pg,
            database_url,
            broker,
        }
    }
}

/// How to build a [`ProcStack`]; see the module documentation.
#[derive(Debug, Clone)]
pub struct StackBuilder {
    name: String,
    kafka_prefix: String,
    histories: usize,
    routers: usize,
    gateways: usize,
    service_token: String,
    jwt_secret: String,
    generous_limits: bool,
    metrics: bool,
    /// Settings in order; `None`: every service.
    env: Vec<(Option<Role>, String, String)>,
    log_dir: Option<PathBuf>,
    bin_dir: Option<PathBuf>,
    hosts: Vec<crate::netns::Host>,
}

impl StackBuilder {
    /// Runs each service in a network namespace of its own, made on `net`
    /// (histories, routers, gateways, in that order), listening on its
    /// address there.
    pub fn on_net(mut self, net: &mut crate::netns::Net) -> anyhow::Result<Self> {
        for _ in 0..self.histories + self.routers + self.gateways {
            self.hosts.push(net.host()?);
        }
        Ok(self)
    }

    /// Runs the binaries in `dir` (another release's) instead of the
    /// current build's.
    pub fn binaries(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// Routers.
    pub fn routers(mut self, n: usize) -> Self {
        self.routers = n;
        self
    }

    /// History instances.
    pub fn histories(mut self, n: usize) -> Self {
        self.histories = n;
        self
    }

    /// Gateways.
    pub fn gateways(mut self, n: usize) -> Self {
        self.gateways = n;
        self
    }

    /// `CONFAB_KAFKA_PARTITIONS` (the services' default otherwise).
    pub fn partitions(self, n: u32) -> Self {
        self.env("CONFAB_KAFKA_PARTITIONS", n.to_string())
    }

    /// `CONFAB_LOG` (the services' default otherwise).
    pub fn log(self, filter: &str) -> Self {
        self.env("CONFAB_LOG", filter)
    }

    /// `CONFAB_KAFKA_PREFIX`; by default the stack's name and a free port
    /// number, so stacks sharing a broker have topics of their own.
    pub fn kafka_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.kafka_prefix = prefix.into();
        self
    }

    /// `CONFAB_SERVICE_TOKEN` (default [`SERVICE_TOKEN`]).
    pub fn service_token(mut self, token: &str) -> Self {
        self.service_token = token.to_string();
        self
    }

    /// The gateways' `CONFAB_JWT_SECRET` (default [`SECRET`]).
    pub fn jwt_secret(mut self, secret: &str) -> Self {
        self.jwt_secret = secret.to_string();
        self
    }

    /// The services' own default limits instead of [`GENEROUS_LIMITS`].
    pub fn default_limits(mut self) -> Self {
        self.generous_limits = false;
        self
    }

    /// Every service serves metrics and health on a port of its own
    /// ([`ServiceProc::serve_metrics`]).
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// A setting of every service.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((None, key.to_string(), value.into()));
        self
    }

    /// A setting of the services of one role.
    pub fn env_for(mut self, role: Role, key: &str, value: impl Into<String>) -> Self {
        self.env.push((Some(role), key.to_string(), value.into()));
        self
    }

    /// Where the services' logs go (kept); a temporary directory otherwise.
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.log_dir = Some(dir.into());
        self
    }

    /// The services on `broker` with history's database at `database_url`,
    /// started.
    pub fn start(self, broker: &Broker, database_url: &str) -> ProcStack {
        let mut stack = self.build(&broker.bootstrap(), database_url);
        stack.start_all();
        stack
    }

    /// The services on a [`Backing`] of their own, started.
    pub async fn start_fresh(self) -> ProcStack {
        let backing = Backing::start().await;
        let mut stack = self.start(&backing.broker, &backing.database_url);
        stack.backing = Some(backing);
        stack
    }

    /// The processes, wired but not started.
    fn build(self, bootstrap: &str, database_url: &str) -> ProcStack {
        let (log_dir, temp) = match &self.log_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).expect("log directory");
                (dir.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix(&format!("confab-{}-", self.name))
                    .tempdir()
                    .expect("log directory");
                (t.path().to_path_buf(), Some(t))
            }
        };
        let base: Vec<(String, String)> =
            std::iter::once(("CONFAB_SERVICE_TOKEN", self.service_token.clone()))
                .chain(
                    GENEROUS_LIMITS
                        .iter()
                        .filter(|_| self.generous_limits)
                        .map(|(k, v)| (*k, v.to_string())),
                )
                .chain([
                    ("CONFAB_KAFKA_BROKERS", bootstrap.to_string()),
                    ("CONFAB_KAFKA_PREFIX", self.kafka_prefix.clone()),
                ])
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        let mut hosts = self.hosts.clone().into_iter();
        let mut procs = |role: Role, n: usize, wiring: Vec<(String, String)>| -> Vec<ServiceProc> {
            (0..n)
                .map(|i| {
                    let label = if n == 1 {
                        role.name().to_string()
                    } else {
                        format!("{}-{i}", role.name())
                    };
                    let mut env = base.clone();
                    env.extend(wiring.iter().cloned());
                    if role == Role::Gateway {
                        let id = if n == 1 {
                            format!("gw-{}", self.name)
                        } else {
                            format!("gw-{}-{i}", self.name)
                        };
                        env.push(("CONFAB_GATEWAY_ID".into(), id));
                    }
                    env.extend(
                        self.env
                            .iter()
                            .filter(|(only, _, _)| only.is_none_or(|r| r == role))
                            .map(|(_, k, v)| (k.clone(), v.clone())),
                    );
                    let log = log_dir.join(format!("{label}.log"));
                    let mut p = ServiceProc::new(role.binary(), label, env, log);
                    if let Some(host) = hosts.next() {
                        p = p.on_host(host);
                    }
                    p.bin_dir = self.bin_dir.clone();
                    if self.metrics {
                        p.serve_metrics()
                    } else {
                        p
                    }
                })
                .collect()
        };
        let histories = procs(
            Role::History,
            self.histories,
            vec![("CONFAB_DATABASE_URL".into(), database_url.to_string())],
        );
        let history_addrs = addrs(&histories);
        let routers = procs(
            Role::Router,
            self.routers,
            vec![("CONFAB_HISTORY_ADDRS".into(), history_addrs.clone())],
        );
        let gateways = procs(
            Role::Gateway,
            self.gateways,
            vec![
                ("CONFAB_HISTORY_ADDRS".into(), history_addrs),
                ("CONFAB_ROUTER_ADDRS".into(), addrs(&routers)),
                ("CONFAB_JWT_SECRET".into(), self.jwt_secret.clone()),
            ],
        );
        ProcStack {
            histories,
            routers,
            gateways,
            bootstrap: bootstrap.to_string(),
            kafka_prefix: self.kafka_prefix,
            database_url: database_url.to_string(),
            backing: None,
            _logs: temp,
        }
    }
}

/// `ip:port,ip:port` of `procs`.
fn addrs(procs: &[ServiceProc]) -> String {
    procs
        .iter()
        .map(|p| p.addr.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// History, routers and gateways as processes; each is killed when the
/// stack is dropped, then the [`Backing`] it owns, if any, goes.
pub struct ProcStack {
    /// History instances (`history`, or `history-0`, `history-1`, …).
    pub histories: Vec<ServiceProc>,
    /// Routers.
    pub routers: Vec<ServiceProc>,
    /// Gateways.
    pub gateways: Vec<ServiceProc>,
    /// The broker's `host:port`.
    pub bootstrap: String,
    /// `CONFAB_KAFKA_PREFIX`: the topics are `<prefix>.ingress`, ….
    pub kafka_prefix: String,
    /// History's database.
    pub database_url: String,
    /// PostgreSQL and the broker, when the stack started them.
    backing: Option<Backing>,
    /// A temporary log directory, kept as long as the stack.
    _logs: Option<tempfile::TempDir>,
}

impl ProcStack {
    /// A builder of one history, one router and one gateway named `name`
    /// (in labels, the gateway id and the topic prefix).
    pub fn builder(name: &str) -> StackBuilder {
        StackBuilder {
            name: name.to_string(),
            kafka_prefix: format!("{name}{}", crate::free_port()),
            histories: 1,
            routers: 1,
            gateways: 1,
            service_token: SERVICE_TOKEN.to_string(),
            jwt_secret: SECRET.to_string(),
            generous_limits: true,
            metrics: false,
            env: Vec::new(),
            log_dir: None,
            bin_dir: None,
            hosts: Vec::new(),
        }
    }

    /// Every service, in start order, to kill or restart.
    pub fn all_mut(&mut self) -> impl Iterator<Item = &mut ServiceProc> {
        self.histories
            .iter_mut()
            .chain(&mut self.routers)
            .chain(&mut self.gateways)
    }

    /// Starts every service that is not running (again, after
    /// [`ProcStack::kill9_all`]: same ports, same settings), history first.
    pub fn start_all(&mut self) {
        for p in self.all_mut() {
            if !p.is_running() {
                p.start();
            }
        }
    }

    /// `kill -9` of every service.
    pub fn kill9_all(&mut self) {
        for p in self.all_mut() {
            p.kill9();
        }
    }

    /// The services of `role`.
    pub fn of(&self, role: Role) -> &[ServiceProc] {
        match role {
            Role::History => &self.histories,
            Role::Router => &self.routers,
            Role::Gateway => &self.gateways,
        }
    }

    /// The services of `role`, to stop or restart.
    pub fn of_mut(&mut self, role: Role) -> &mut [ServiceProc] {
        match role {
            Role::History => &mut self.histories,
            Role::Router => &mut self.routers,
            Role::Gateway => &mut self.gateways,
        }
    }

    /// The first service of `role`.
    pub fn first(&self, role: Role) -> &ServiceProc {
        &self.of(role)[0]
    }

    /// Every service, in start order.
    pub fn all(&self) -> impl Iterator<Item = &ServiceProc> {
        self.histories
            .iter()
            .chain(&self.routers)
            .chain(&self.gateways)
    }

    /// The PostgreSQL and broker the stack started, if it did.
    pub fn backing(&self) -> Option<&Backing> {
        self.backing.as_ref()
    }

    /// Where clients of gateway `i` connect.
    pub fn gateway_addr(&self, i: usize) -> SocketAddr {
        self.gateways[i].socket_addr()
    }

    /// A client of gateway `i` acting as `name`.
    pub async fn user(&self, i: usize, name: &str) -> User {
        User::connect(self.gateway_addr(i), name).await
    }

    /// The last `lines` lines of every service's log, each headed by its
    /// label and path, for failure messages.
    pub fn tails(&self, lines: usize) -> String {
        self.all()
            .map(|p| {
                format!(
                    "--- last lines of {} ({}) ---\n{}\n",
                    p.label,
                    p.log.display(),
                    p.tail(lines)
                )
            })
            .collect()
    }

    /// Waits until every service says it is ready (`/readyz` 200; needs
    /// [`StackBuilder::metrics`]), each within `within`.
    pub async fn wait_ready(&self, within: Duration) {
        for p in self.all() {
            let ready = crate::http::wait_for(
                p.metrics_addr(),
                "/readyz",
                within,
                Duration::from_millis(50),
                |status, _| status == 200,
            )
            .await;
            if let Err(e) = ready {
                panic!("{} is not ready: {e}\n{}", p.label, self.tails(30));
            }
        }
    }

    /// SIGTERM to every running service, gateways first, then routers and
    /// history, each given `limit` to exit; how each stop went, by label.
    pub async fn terminate(&mut self, limit: Duration) -> Vec<(String, Stopped)> {
        let mut stopped = Vec::new();
        for p in self
            .gateways
            .iter_mut()
            .chain(&mut self.routers)
            .chain(&mut self.histories)
        {
            stopped.push((p.label.clone(), p.terminate(limit).await));
        }
        stopped
    }
}
