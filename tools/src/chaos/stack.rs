//! The processes of the chaos run, and the faults applied to them.

use super::sample::Watched;
use super::{Config, Fault, Target};
use confab_tests::broker::Broker;
use confab_tests::postgres::PgCluster;
use confab_tests::procs::{ServiceProc, Stopped};
use confab_tests::stack::{ProcStack, Role};
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
}

impl Stack {
    pub(super) async fn start(config: &Config) -> Stack {
        let pg = PgCluster::start_local().expect("postgres for history");
        let database_url = pg.fresh_database().await.expect("history database");
        let broker_pg = PgCluster::start_local().expect("postgres for the broker");
        let broker = Broker::start_postgres(&broker_pg).await;
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
        Stack {
            procs: builder.start(&broker, &database_url),
            pg,
            _broker_pg: broker_pg,
            broker,
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
    pub(super) async fn apply(
        &mut self,
        fault: Fault,
        down_for: Duration,
        grace: Duration,
    ) -> Option<Stopped> {
        let mut stopped = None;
        match fault {
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
            })
            .collect();
        watched.push(Watched {
            label: "broker".into(),
            pids: self.broker.pid().into_iter().collect(),
            metrics: None,
        });
        for (label, pg) in [
            ("postgres", &self.pg),
            ("broker's postgres", &self._broker_pg),
        ] {
            watched.push(Watched {
                label: label.into(),
                pids: pg.server_pids(),
                metrics: None,
            });
        }
        watched
    }

    /// The last lines of every service's log (for a failed run).
    pub(super) fn tails(&self) -> String {
        self.procs.tails(15)
    }
}
