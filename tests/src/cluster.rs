//! The distributed topology inside one test process: every service runs
//! through its real `distributed::run` on a port-0 listener, joined by a
//! real Kafka-API broker (nisshi, PostgreSQL storage engine) and a real
//! PostgreSQL cluster, both started here. Routers and history expose their
//! consumer-group state ([`Node::assigned`]) so tests can see partition
//! ownership move.

use crate::broker::Broker;
use crate::postgres::PgCluster;
use crate::served::Served;
use crate::{init_tracing, User, DEADLINE, SECRET};
use confab_core::config::env_of;
use confab_core::validate::SizeLimits;
use confab_core::vars;
use confab_gateway::distributed::DistributedConfig;
use confab_gateway::{GatewayConfig, Hub};
use confab_history::distributed::HistoryConfig;
use confab_history_client::HistoryClientConfig;
use confab_kafka::{GroupState, KafkaConfig};
use confab_router::distributed::RouterConfig;
use confab_runtime::process::ServiceConfig;
use confab_runtime::shutdown;
use confab_runtime::transport::Transport;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;

/// How many of each service, and their settings.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Gateway processes.
    pub gateways: usize,
    /// Router processes.
    pub routers: usize,
    /// History processes.
    pub histories: usize,
    /// Partitions of each topic.
    pub partitions: i32,
    /// Gateway settings (limits, queues, timeouts).
    pub gateway: GatewayConfig,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            gateways: 1,
            routers: 1,
            histories: 1,
            partitions: 4,
            gateway: crate::test_gateway_config(),
        }
    }
}

/// One service running in this process.
pub struct Node {
    /// Where it serves gRPC.
    pub addr: SocketAddr,
    /// The service task, until stopped.
    served: Option<Served>,
    /// Its consumer-group state (routers and history), kept current by its
    /// consumer.
    group: Option<Arc<GroupState>>,
}

impl Node {
    /// Starts `run` on a fresh port-0 listener.
    async fn spawn<F, Fut>(run: F) -> Self
    where
        F: FnOnce(TcpListener, shutdown::Signal) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let served = Served::listen(run).await;
        Self {
            addr: served.addr(),
            served: Some(served),
            group: None,
        }
    }

    /// `n` services started like [`Node::spawn`], each running `run` on a
    /// configuration made by `make`, whose consumer keeps the state `group`
    /// finds in it.
    async fn spawn_consumers<C, Fut>(
        n: usize,
        make: impl Fn() -> C,
        group: impl Fn(&C) -> Arc<GroupState>,
        run: fn(C, TcpListener, shutdown::Signal) -> Fut,
    ) -> Vec<Self>
    where
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            let config = make();
            let state = group(&config);
            let mut node = Self::spawn(|l, s| run(config, l, s)).await;
            node.group = Some(state);
            nodes.push(node);
        }
        nodes
    }

    /// Which partitions its consumer owns, as its rebalance callbacks saw
    /// (routers and history; empty for gateways).
    pub fn assigned(&self) -> BTreeSet<i32> {
        self.group
            .as_ref()
            .map(|g| g.assigned())
            .unwrap_or_default()
    }

    /// Its consumer-group state (routers and history).
    pub fn group(&self) -> Option<Arc<GroupState>> {
        self.group.clone()
    }

    /// Whether it is still running.
    pub fn is_running(&self) -> bool {
        self.served.as_ref().is_some_and(|s| !s.is_finished())
    }

    /// Graceful stop (SIGTERM-like); waits for it to finish.
    pub async fn stop(&mut self) {
        if let Some(served) = self.served.take() {
            served.stop_within("service", DEADLINE * 2).await;
        }
    }
}

/// A running distributed topology.
pub struct Cluster {
    /// Gateways, with their hubs.
    pub gateways: Vec<(Node, Arc<Hub>)>,
    /// Routers.
    pub routers: Vec<Node>,
    /// History processes.
    pub histories: Vec<Node>,
    /// The broker and topics the services use.
    pub kafka: KafkaConfig,
    /// URL of the history database.
    pub database_url: String,
    /// The broker (dropped after the services).
    pub broker: Broker,
    /// The database cluster (dropped last).
    pub pg: PgCluster,
}

static CLUSTERS: AtomicU64 = AtomicU64::new(0);

impl Cluster {
    /// Starts PostgreSQL, the broker, then history, routers and gateways,
    /// and returns once every gateway is attached to every router.
    pub async fn start(shape: Shape) -> Self {
        let pg = PgCluster::start().expect("postgres");
        let database_url = pg.fresh_database().await.expect("database");
        Self::start_on(shape, pg, database_url).await
    }

    /// [`Cluster::start`] with history's database `database_url` on `pg`
    /// (which the broker uses too).
    pub async fn start_on(shape: Shape, pg: PgCluster, database_url: String) -> Self {
        init_tracing();
        let broker = Broker::start_postgres(&pg).await;
        let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        // History and routers read their configuration as a user gives it.
        let mut env = env_of(&[
            (vars::KAFKA_BROKERS, &broker.bootstrap()),
            (
                vars::KAFKA_PREFIX,
                &format!("test{}-{n}", std::process::id()),
            ),
            (vars::KAFKA_PARTITIONS, &shape.partitions.to_string()),
            (vars::KAFKA_PRODUCE_TIMEOUT_MS, "5000"),
            (vars::KAFKA_SESSION_TIMEOUT_MS, "6000"),
            (vars::DATABASE_URL, &database_url),
            (vars::DATABASE_POOL, "4"),
            (vars::SERVICE_TOKEN, crate::topology::SERVICE_TOKEN),
            (vars::PRESENCE_GRACE_MS, crate::PRESENCE_GRACE_MS),
        ]);
        let kafka = KafkaConfig::from_env(&env).expect("the broker's configuration");
        let histories = Node::spawn_consumers(
            shape.histories,
            || HistoryConfig {
                limits: shape.gateway.limits,
                ..HistoryConfig::from_env(&env).expect("history's configuration")
            },
            |c| c.group.clone(),
            confab_history::distributed::run,
        )
        .await;
        let history_addrs: Vec<String> = histories.iter().map(|h| h.addr.to_string()).collect();
        env.insert(vars::HISTORY_ADDRS.into(), history_addrs.join(","));
        let history = HistoryClientConfig::from_env(&env).expect("the history client's");
        let routers = Node::spawn_consumers(
            shape.routers,
            || RouterConfig::from_env(&env).expect("the router's configuration"),
            |c| c.group.clone(),
            confab_router::distributed::run,
        )
        .await;
        let router_addrs: Vec<String> = routers.iter().map(|r| r.addr.to_string()).collect();
        let mut gateways = Vec::new();
        for i in 0..shape.gateways {
            let config = DistributedConfig {
                readiness: confab_runtime::readiness::Readiness::new(),
                hub: Hub::new(format!("gw-{i}")),
                auth: confab_auth::Authenticator::new(SECRET),
                gateway: shape.gateway.clone(),
                kafka: kafka.clone(),
                history: HistoryClientConfig {
                    service_token: Some(crate::topology::service_token()),
                    ..history.clone()
                },
                routers: router_addrs.clone(),
                service_token: crate::topology::service_token(),
                transport: Transport::public(),
                internal_tls: None,
                // No HTTP listener: the cluster's sessions are gRPC.
                web: confab_gateway::web::WebConfig::from_env(
                    &std::collections::HashMap::<String, String>::new(),
                    None,
                )
                .expect("the default HTTP listener settings"),
            };
            let hub = config.hub.clone();
            let node = Node::spawn(|l, s| confab_gateway::distributed::run(config, l, s)).await;
            gateways.push((node, hub));
        }
        let cluster = Self {
            gateways,
            routers,
            histories,
            kafka,
            database_url,
            broker,
            pg,
        };
        cluster.wait_attached(shape.routers).await;
        cluster
    }

    /// Waits until every gateway is attached to `routers` routers.
    pub async fn wait_attached(&self, routers: usize) {
        let deadline = Instant::now() + DEADLINE * 2;
        for (node, hub) in &self.gateways {
            let left = deadline.saturating_duration_since(Instant::now());
            let what = format!("gateway {} attached to {routers} routers", node.addr);
            crate::wait_until_within(&what, left, || {
                assert!(node.is_running(), "gateway {} stopped", node.addr);
                hub.attached_routers() == routers
            })
            .await;
        }
    }

    /// The address of gateway `i`.
    pub fn gateway_addr(&self, i: usize) -> SocketAddr {
        self.gateways[i].0.addr
    }

    /// A client of gateway `i` acting as `user`.
    pub async fn user(&self, i: usize, user: &str) -> User {
        User::connect(self.gateway_addr(i), user).await
    }

    /// Stops every service gracefully (gateways first), then the broker and
    /// the database go with the value.
    pub async fn stop(mut self) {
        for (node, _) in &mut self.gateways {
            node.stop().await;
        }
        for node in &mut self.routers {
            node.stop().await;
        }
        for node in &mut self.histories {
            node.stop().await;
        }
    }
}

/// Group-size limit used by cluster tests that need a small one.
pub fn limits(max_body_bytes: usize) -> SizeLimits {
    SizeLimits {
        max_body_bytes,
        ..SizeLimits::default()
    }
}
