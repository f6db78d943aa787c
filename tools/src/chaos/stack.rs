//! The processes of the chaos run, and the faults applied to them.

use super::sample::Watched;
use super::{Config, Fault, Link, Target};
use confab_tests::broker::Broker;
use confab_tests::netns::{Host, Net, Port};
use confab_tests::postgres::PgCluster;
use confab_tests::procs::{ServiceProc, Stopped};
use confab_tests::stack::{ProcStack, Role};
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::time::Duration;

/// The processes of the run.
pub(super) struct Stack {
    /// Gateways, routers and history instances (two of each).
    procs: ProcStack,
    /// History's database server.
    pg: PgCluster,
    /// The broker's own storage (never faulted: Kafka's disks are not ours).
    _broker_pg: PgCluster,
    /// The broker.
    broker: Broker,
    /// The namespaces the services run in, if they do (removed last).
    net: Option<Net>,
}

impl Stack {
    pub(super) async fn start(config: &Config) -> Stack {
        let mut net = config
            .network
            .then(|| Net::create().unwrap_or_else(|e| panic!("{e:#}")));
        let root_ip = net.as_ref().map(Net::root_ip);
        let pg = PgCluster::start_local_on(root_ip).expect("postgres for history");
        let mut database_url = pg.fresh_database().await.expect("history database");
        if let Some(ip) = root_ip {
            database_url = database_url.replacen("@127.0.0.1:", &format!("@{ip}:"), 1);
        }
        let broker_pg = PgCluster::start_local().expect("postgres for the broker");
        let broker =
            Broker::start_postgres_on(root_ip.unwrap_or(Ipv4Addr::LOCALHOST), &broker_pg).await;
        let history_timeout = ("CONFAB_HISTORY_TIMEOUT_MS", "2000");
        let mut builder = ProcStack::builder("chaos")
            .metrics()
            .histories(2)
            .routers(2)
            .gateways(2)
            .kafka_prefix(format!("chaos{}", std::process::id()))
            .partitions(4)
            .env("CONFAB_KAFKA_SESSION_TIMEOUT_MS", "6000")
            .env("CONFAB_KAFKA_PRODUCE_TIMEOUT_MS", "2000")
            .log("info")
            .env(
                "CONFAB_SHUTDOWN_GRACE_MS",
                config.shutdown_grace.as_millis().to_string(),
            )
            .env_for(Role::History, "CONFAB_DATABASE_ACQUIRE_TIMEOUT_MS", "1000")
            .env_for(Role::Router, history_timeout.0, history_timeout.1)
            .env_for(Role::Gateway, history_timeout.0, history_timeout.1)
            .env_for(Role::Gateway, "CONFAB_SEND_TIMEOUT_MS", "4000");
        if let Some(dir) = &config.log_dir {
            builder = builder.log_dir(dir);
        }
        if let Some(dir) = &config.from_release {
            builder = builder.binaries(dir);
        }
        if let Some(net) = net.as_mut() {
            builder = builder.on_net(net).unwrap_or_else(|e| panic!("{e:#}"));
        }
        Stack {
            procs: builder.start(&broker, &database_url),
            pg,
            _broker_pg: broker_pg,
            broker,
            net,
        }
    }

    /// History's database.
    pub(super) fn database_url(&self) -> &str {
        &self.procs.database_url
    }

    pub(super) fn gateway_addrs(&self) -> Vec<SocketAddr> {
        self.procs
            .gateways
            .iter()
            .map(ServiceProc::socket_addr)
            .collect()
    }

    pub(super) fn service(&mut self, target: Target) -> Option<&mut ServiceProc> {
        let (role, i) = match target {
            Target::Gateway(i) => (Role::Gateway, i),
            Target::Router(i) => (Role::Router, i),
            Target::History(i) => (Role::History, i),
            Target::Broker | Target::Postgres => return None,
        };
        self.procs.of_mut(role).get_mut(i)
    }

    /// Applies `fault`, waits `down_for`, and brings the target back;
    /// returns a graceful stop's result, if it was one.
    pub(super) async fn apply(&mut self, fault: Fault, config: &Config) -> Option<Stopped> {
        let (down_for, cut_for, grace) = (config.down_for, config.cut_for, config.shutdown_grace);
        let mut stopped = None;
        match fault {
            Fault::Cut(link) => {
                let (host, peer, port) = self.link(link);
                host.cut(peer, port)
                    .unwrap_or_else(|e| panic!("cut {link}: {e:#}"));
                tokio::time::sleep(cut_for).await;
                host.restore()
                    .unwrap_or_else(|e| panic!("restore {link}: {e:#}"));
            }
            Fault::Upgrade(Target::Broker | Target::Postgres) => {
                panic!("{fault}: the broker and PostgreSQL are not Confab's to upgrade")
            }
            Fault::Kill(Target::Broker) | Fault::Term(Target::Broker) => {
                self.broker.kill9();
                tokio::time::sleep(down_for).await;
                self.broker.restart().await;
            }
            Fault::Kill(Target::Postgres) | Fault::Term(Target::Postgres) => {
                tokio::task::block_in_place(|| self.pg.stop_immediate());
                tokio::time::sleep(down_for).await;
                tokio::task::block_in_place(|| self.pg.start_again());
            }
            Fault::Kill(target) => {
                let s = self.service(target).expect("a service");
                s.kill9();
                tokio::time::sleep(down_for).await;
                tokio::task::block_in_place(|| s.start());
            }
            Fault::Term(target) | Fault::Upgrade(target) => {
                let s = self.service(target).expect("a service");
                stopped = Some(s.terminate(grace + Duration::from_secs(5)).await);
                tokio::time::sleep(down_for).await;
                if matches!(fault, Fault::Upgrade(_)) {
                    s.bin_dir = None;
                }
                tokio::task::block_in_place(|| s.start());
            }
        }
        stopped
    }

    /// The host whose packets a cut of `link` drops, the peer's address and
    /// the port.
    fn link(&self, link: Link) -> (Host, Ipv4Addr, Port) {
        let net = self.net.as_ref().unwrap_or_else(|| {
            panic!("cut {link}: the run has no network namespaces (Config::network)")
        });
        let host = |p: &ServiceProc| p.host.clone().expect("a service on a host of its own");
        let port = |p: &ServiceProc| p.socket_addr().port();
        let pg_port = self
            .pg
            .port()
            .expect("history's PostgreSQL is the run's own");
        let root = net.root_ip();
        let p = &self.procs;
        match link {
            Link::GatewayBroker(i) => {
                (host(&p.gateways[i]), root, Port::Theirs(self.broker.port()))
            }
            Link::HistoryBroker(i) => (
                host(&p.histories[i]),
                root,
                Port::Theirs(self.broker.port()),
            ),
            Link::HistoryPostgres(i) => (host(&p.histories[i]), root, Port::Theirs(pg_port)),
            Link::RouterGateway(r, g) => {
                let router = host(&p.routers[r]).ip;
                (
                    host(&p.gateways[g]),
                    router,
                    Port::Theirs(port(&p.routers[r])),
                )
            }
            Link::ClientGateway(i) => {
                (host(&p.gateways[i]), root, Port::Ours(port(&p.gateways[i])))
            }
        }
    }

    /// Every process of the run, to read: the services, the broker, and
    /// each PostgreSQL server (its postmaster and backends together).
    pub(super) fn watched(&self) -> Vec<Watched> {
        let mut watched: Vec<Watched> = self
            .procs
            .all()
            .map(|p| Watched {
                label: p.label.clone(),
                pids: p.pid().into_iter().collect(),
                metrics: p.metrics,
                memory_is_cache: false,
            })
            .collect();
        watched.push(Watched {
            label: "broker".into(),
            pids: self.broker.pid().into_iter().collect(),
            metrics: None,
            memory_is_cache: false,
        });
        for (label, pg) in [
            ("postgres", &self.pg),
            ("broker's postgres", &self._broker_pg),
        ] {
            watched.push(Watched {
                label: label.into(),
                pids: pg.server_pids(),
                metrics: None,
                memory_is_cache: true,
            });
        }
        watched
    }

    /// The last lines of every service's log (for a failed run).
    pub(super) fn tails(&self) -> String {
        self.procs.tails(15)
    }
}
