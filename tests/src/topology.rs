//! The distributed topology inside one test process: history, routers and
//! gateways each serve their own gRPC port on 127.0.0.1 and talk to each other
//! only over gRPC (`HistoryReader` through `RemoteHistory`, `RouterLink`
//! through the gateways' attach clients). The logs stay in-process
//! (`MemTopic`), and history is SQLite in a temporary directory, so what is
//! under test is the gRPC links.

use crate::served::{sqlite_store, Served};
use crate::{init_tracing, wait_until, User, DEADLINE, SECRET};
use confab_auth::Authenticator;
use confab_core::seams::{partition_of, HistoryApi, MemTopic, Publisher};
use confab_gateway::router_links::AttachConfig;
use confab_gateway::{ChatService, GatewayConfig, Hub};
use confab_history::LocalHistory;
use confab_history_client::{HistoryClientConfig, RemoteHistory};
use confab_layers::service_token::ServiceToken;
use confab_proto::internal::v1::{IngressRecord, OutcomeRecord};
use confab_router::gateway_links::{GatewayLinks, LinkConfig};
use confab_runtime::server::Server;
use confab_runtime::shutdown::Signal;
use confab_runtime::transport::Transport;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The shape of a test topology.
#[derive(Debug, Clone)]
pub struct TopologyConfig {
    /// Gateways, named `g1`, `g2`, ….
    pub gateways: usize,
    /// Routers; the outcome log's partitions are split between them.
    pub routers: usize,
    /// Partitions of each in-process log.
    pub partitions: usize,
    /// Settings of every gateway.
    pub gateway: GatewayConfig,
    /// Settings of every router's gateway links.
    pub links: LinkConfig,
    /// When set, history and the routers require this token
    /// ([`service_token`]) and the gateways and routers present it. `None` by
    /// default: some tests dial history and routers directly.
    pub service_token: Option<ServiceToken>,
}

/// The environment every service process of a test or bench stack shares:
/// the service token, [`crate::GENEROUS_LIMITS`], then `settings` (which
/// come last, so they win over the limits).
pub fn service_env<'a>(
    settings: impl IntoIterator<Item = (&'a str, String)>,
) -> Vec<(String, String)> {
    std::iter::once(("CONFAB_SERVICE_TOKEN", SERVICE_TOKEN.to_string()))
        .chain(
            crate::GENEROUS_LIMITS
                .iter()
                .map(|(k, v)| (*k, v.to_string())),
        )
        .chain(settings)
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// The fixed service token of the tests (`CONFAB_SERVICE_TOKEN`).
pub const SERVICE_TOKEN: &str = "confab-test-service-token-0123456789abcdef";

/// [`SERVICE_TOKEN`], parsed.
pub fn service_token() -> ServiceToken {
    ServiceToken::new(SERVICE_TOKEN).expect("the test token is valid")
}

impl Default for TopologyConfig {
    fn default() -> Self {
        Self {
            gateways: 2,
            routers: 1,
            partitions: 4,
            gateway: crate::test_gateway_config(),
            links: LinkConfig::default(),
            service_token: None,
        }
    }
}

/// Settings of a gateway's attach client to `routers` that tries again
/// soon: after 20 ms, backing off to 200 ms.
pub fn fast_attach(routers: impl IntoIterator<Item = impl Into<String>>) -> AttachConfig {
    AttachConfig {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..AttachConfig::new(routers)
    }
}

/// `hub`'s attach client with `config`, running until stopped.
pub fn attach_client(hub: &Arc<Hub>, config: AttachConfig) -> Served {
    let hub = hub.clone();
    Served::spawn(move |signal| confab_gateway::router_links::run(hub, config, signal))
}

/// Binds 127.0.0.1 on `port` (0: any free port), retrying briefly while the
/// port of a server that just stopped is still being released.
async fn bind(port: u16) -> TcpListener {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => return l,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot bind port {port}: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// How a restartable server serves on a listener.
type Serve = Arc<
    dyn Fn(TcpListener, Signal) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>
        + Send
        + Sync,
>;

/// A gRPC server of the topology that a test can stop and serve again on
/// the same port: history's `HistoryReader`, a router's `RouterLink`.
pub struct Restartable {
    /// Where it serves.
    pub addr: SocketAddr,
    /// What it is, for failures.
    what: &'static str,
    /// Serves on a listener.
    serve: Serve,
    /// The server, while it runs.
    server: Option<Served>,
}

impl Restartable {
    /// Serves `state` on a free port with the server `server` makes of it,
    /// requiring `token` of callers if one is given.
    async fn start<S, M>(
        what: &'static str,
        state: S,
        token: Option<ServiceToken>,
        server: M,
    ) -> Self
    where
        S: Clone + Send + Sync + 'static,
        M: Fn(S, Signal) -> Server + Send + Sync + 'static,
    {
        let serve: Serve = Arc::new(move |listener, signal: Signal| {
            let served = server(state.clone(), signal.clone())
                .service_token(token.clone())
                .serve(listener, signal);
            Box::pin(async move { Ok(served.await?) })
        });
        let listener = bind(0).await;
        let addr = listener.local_addr().expect("server address");
        let mut me = Self {
            addr,
            what,
            serve,
            server: None,
        };
        me.serve_on(listener);
        me
    }

    fn serve_on(&mut self, listener: TcpListener) {
        assert!(self.server.is_none(), "the {} is running", self.what);
        let serve = self.serve.clone();
        self.server = Some(Served::spawn_on(listener, move |l, s| serve(l, s)));
    }

    /// Stops the server (history's sequencers go on: writes are still
    /// applied, only reads fail with UNAVAILABLE; a router's routing tasks
    /// keep consuming, and with no gateway attached deliver nothing).
    pub async fn stop_server(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop(self.what).await;
        }
    }

    /// Serves again on the same port.
    pub async fn start_server(&mut self) {
        let listener = bind(self.addr.port()).await;
        self.serve_on(listener);
    }
}

/// History: sequencers on the in-process ingress log, its read API over
/// gRPC.
pub type HistoryNode = Restartable;

/// One router: its share of the outcome partitions, and its `RouterLink`
/// server, which can be restarted on the same port.
pub struct RouterNode {
    /// `RouterLink`, and where it is served.
    pub server: Restartable,
    /// The gateways attached to this router, and their users.
    pub links: Arc<GatewayLinks>,
    /// The outcome partitions this router consumes.
    pub partitions: Vec<usize>,
}

/// One gateway: the Chat API, and its attach client to every router.
pub struct GatewayNode {
    /// Its gateway id (`g1`, `g2`, …).
    pub id: String,
    /// Where the Chat API is served.
    pub addr: SocketAddr,
    /// Its sessions and pending requests.
    pub hub: Arc<Hub>,
    /// The Chat server.
    server: Served,
    /// The attach client.
    attach: Served,
}

impl GatewayNode {
    /// A client of this gateway acting as `user`.
    pub async fn user(&self, user: &str) -> User {
        User::connect(self.addr, user).await
    }
}

/// History, routers and gateways of one test, joined by gRPC.
pub struct Topology {
    /// The shape it was started with.
    pub config: TopologyConfig,
    /// History.
    pub history: HistoryNode,
    /// The routers, in order.
    pub routers: Vec<RouterNode>,
    /// The gateways, in order (`g1` first).
    pub gateways: Vec<GatewayNode>,
    /// The ingress log the gateways produce to.
    ingress: Option<Arc<MemTopic<IngressRecord>>>,
    /// Sequencer and routing tasks; they end once the logs drain.
    pipeline: Vec<JoinHandle<()>>,
    /// Holds the SQLite database for the test's lifetime.
    _dir: tempfile::TempDir,
}

impl Topology {
    /// Starts a topology of this shape and waits until every gateway is
    /// attached to every router.
    pub async fn start(config: TopologyConfig) -> Self {
        init_tracing();
        let dir = tempfile::tempdir().expect("tempdir");
        let store = sqlite_store(dir.path()).await;
        let (ingress, ingress_partitions) = MemTopic::<IngressRecord>::new(config.partitions, 4096);
        let (outcomes, outcome_partitions) =
            MemTopic::<OutcomeRecord>::new(config.partitions, 4096);
        let mut pipeline =
            confab_history::ingest::spawn(store.clone(), ingress_partitions, Arc::new(outcomes));

        let local: Arc<dyn HistoryApi> = Arc::new(LocalHistory::new(store));
        let history = Restartable::start(
            "history server",
            local,
            config.service_token.clone(),
            |local, _| confab_history::grpc::server(local),
        )
        .await;
        let history_addr = history.addr;

        // Contiguous shares: with 4 partitions and 2 routers, 0-1 and 2-3.
        let routers_n = config.routers.max(1);
        let mut shares: Vec<Vec<(usize, mpsc::Receiver<OutcomeRecord>)>> =
            (0..routers_n).map(|_| Vec::new()).collect();
        for (p, rx) in outcome_partitions.into_iter().enumerate() {
            shares[p * routers_n / config.partitions.max(1)].push((p, rx));
        }
        let mut routers = Vec::new();
        for share in shares {
            let links = GatewayLinks::new(config.links.clone());
            let (partitions, receivers): (Vec<usize>, Vec<_>) = share.into_iter().unzip();
            pipeline.extend(confab_router::spawn(
                receivers,
                Self::remote_history_at(history_addr, config.service_token.clone()),
                links.clone(),
            ));
            let node = RouterNode {
                server: Restartable::start(
                    "router link server",
                    links.clone(),
                    config.service_token.clone(),
                    confab_router::gateway_links::server,
                )
                .await,
                links,
                partitions,
            };
            routers.push(node);
        }

        let ingress = Arc::new(ingress);
        let router_addrs: Vec<String> = routers.iter().map(|r| r.server.addr.to_string()).collect();
        let mut gateways = Vec::new();
        for i in 1..=config.gateways {
            let id = format!("g{i}");
            let hub = Hub::new(id.clone());
            let listener = bind(0).await;
            let addr = listener.local_addr().expect("gateway addr");
            let publisher: Arc<dyn Publisher<IngressRecord>> = ingress.clone();
            let history = Self::remote_history_at(history_addr, config.service_token.clone());
            let gateway_config = config.gateway.clone();
            let service_hub = hub.clone();
            let server = Served::spawn(move |signal: Signal| {
                let service = ChatService::new(
                    gateway_config,
                    Authenticator::new(SECRET),
                    service_hub,
                    publisher,
                    history,
                    signal.clone(),
                );
                confab_gateway::server(service, Transport::public()).serve(listener, signal)
            });
            let attach = attach_client(
                &hub,
                AttachConfig {
                    service_token: config.service_token.clone(),
                    ..fast_attach(router_addrs.clone())
                },
            );
            gateways.push(GatewayNode {
                id,
                addr,
                hub,
                server,
                attach,
            });
        }
        let topology = Self {
            config,
            history,
            routers,
            gateways,
            ingress: Some(ingress),
            pipeline,
            _dir: dir,
        };
        topology.wait_all_attached().await;
        topology
    }

    /// A `RemoteHistory` client of history at `addr`, presenting `token`.
    fn remote_history_at(addr: SocketAddr, token: Option<ServiceToken>) -> Arc<RemoteHistory> {
        let config = HistoryClientConfig {
            service_token: token,
            ..HistoryClientConfig::new([addr.to_string()])
        };
        Arc::new(RemoteHistory::new(&config).expect("history address"))
    }

    /// A new gRPC client of history, as the gateways and routers use it.
    pub fn remote_history(&self) -> Arc<RemoteHistory> {
        Self::remote_history_at(self.history.addr, self.config.service_token.clone())
    }

    /// The gateway `g<n>` (1-based, as named).
    pub fn gateway(&self, n: usize) -> &GatewayNode {
        &self.gateways[n - 1]
    }

    /// The index of the router that routes `conversation_id`.
    pub fn router_of(&self, conversation_id: &str) -> usize {
        let p = partition_of(conversation_id, self.config.partitions);
        self.routers
            .iter()
            .position(|r| r.partitions.contains(&p))
            .expect("every partition has a router")
    }

    /// Waits until every router has every gateway attached.
    pub async fn wait_all_attached(&self) {
        let mut want: Vec<String> = self.gateways.iter().map(|g| g.id.clone()).collect();
        want.sort();
        wait_until("every gateway attached to every router", || {
            self.routers.iter().all(|r| r.links.gateways() == want)
        })
        .await;
    }

    /// Waits until every router knows that `user` has a session on exactly
    /// the gateways `gateway_ids` (so deliveries to `user` go there).
    pub async fn wait_user_on(&self, user: &str, gateway_ids: &[&str]) {
        let mut want: Vec<String> = gateway_ids.iter().map(|s| s.to_string()).collect();
        want.sort();
        wait_until(&format!("routers to see {user} on {want:?}"), || {
            self.routers
                .iter()
                .all(|r| r.links.gateways_of(user) == want)
        })
        .await;
    }

    /// Stops everything: the gateways first, then the pipeline drains, then
    /// the routers and history.
    pub async fn stop(mut self) {
        for g in self.gateways.drain(..) {
            g.attach.stop("gateway attach client").await;
            g.server.stop("gateway").await;
        }
        // The last producer gone, the sequencers and then the routing tasks
        // drain and end.
        self.ingress = None;
        for task in self.pipeline.drain(..) {
            let ended = tokio::time::timeout(DEADLINE, task).await;
            assert!(
                matches!(ended, Ok(Ok(()))),
                "pipeline task ended: {ended:?}"
            );
        }
        for r in &mut self.routers {
            r.server.stop_server().await;
        }
        self.history.stop_server().await;
    }
}
