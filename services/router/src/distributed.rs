//! The router as its own process: consumes the Kafka messages topic in
//! group "router", routes each outcome to the attached gateways, then
//! commits. Its membership cache is dropped on every rebalance, because a
//! partition that comes back may have changed under another router.

use crate::gateway_links::{GatewayLinks, LinkConfig};
use crate::Router;
use confab_core::config::{ConfigError, Env};
use confab_history_client::{HistoryClientConfig, RemoteHistory};
use confab_kafka::{ensure_topics, BatchConsumer, GroupState, KafkaConfig};
use confab_layers::service_token::ServiceToken;
use confab_proto::internal::v1::OutcomeRecord;
use confab_runtime::process::ServiceConfig;
use confab_runtime::readiness::Readiness;
use confab_runtime::shutdown::Signal;
use confab_runtime::transport::Transport;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Consumer group of the routers.
pub const GROUP: &str = "router";

/// Settings of a router process.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The broker and topics.
    pub kafka: KafkaConfig,
    /// History addresses (`CONFAB_HISTORY_ADDRS`), for membership, with the
    /// breaker of each (`CONFAB_BREAKER_*`); its `service_token` is what
    /// history requires.
    pub history: HistoryClientConfig,
    /// Gateway link limits.
    pub links: LinkConfig,
    /// What every gateway must present to attach (`CONFAB_SERVICE_TOKEN`,
    /// required; the same one is sent to history).
    pub service_token: ServiceToken,
    /// The gateway link server's TLS, client certificates and connection
    /// limits (`CONFAB_TLS_*`, `CONFAB_HTTP2_*`).
    pub transport: Transport,
    /// Whether this process should get traffic (see [`Readiness`]).
    pub readiness: Readiness,
    /// Which partitions its consumer owns (see [`GroupState::of`]).
    pub group: Arc<GroupState>,
    /// How long a user whose last session ended still counts as online
    /// (`CONFAB_PRESENCE_GRACE_MS`).
    pub presence_grace: std::time::Duration,
}

impl ServiceConfig for RouterConfig {
    const NAME: &'static str = "confab-router";
    const DEFAULT_LISTEN: &'static str = "127.0.0.1:50061";

    /// Reads `CONFAB_*` variables.
    fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let mut history = HistoryClientConfig::from_env(env)?;
        let kafka = KafkaConfig::from_env(env)?;
        // Certificate files are read now, so a bad one stops the router
        // before it binds. History is called over TLS with CONFAB_TLS_CA.
        let transport = Transport::from_env(env, Transport::internal())?;
        // Last, so the variables above are reported first.
        let service_token = ServiceToken::from_env(env)?;
        history.service_token = Some(service_token.clone());
        Ok(Self {
            readiness: Readiness::new(),
            group: GroupState::of::<OutcomeRecord>(&kafka, GROUP),
            kafka,
            history,
            links: LinkConfig::default(),
            presence_grace: confab_core::presence::grace_from_env(env)?,
            service_token,
            transport,
        })
    }

    fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }
}

/// Runs a router until `shutdown`: the consumer, and the gateway link
/// server on `listener`.
pub async fn run(
    config: RouterConfig,
    listener: TcpListener,
    shutdown: Signal,
) -> anyhow::Result<()> {
    ensure_topics(&config.kafka).await?;
    let history = Arc::new(RemoteHistory::new(&config.history)?);
    let links = GatewayLinks::new(config.links.clone());
    let consumer = BatchConsumer::<OutcomeRecord>::with_state(&config.kafka, config.group.clone())?;
    // Readiness follows the broker (and the check keeps the lag gauges
    // current); it ends at shutdown.
    confab_kafka::health::spawn_consumer_check(
        &config.readiness,
        consumer.monitor(),
        shutdown.clone(),
    );
    // At shutdown the routing loop finishes its batch, commits and leaves
    // the group first; the gateway links close after, so nothing it
    // routed is cut off on the way.
    let (close_links, links_stop) = confab_runtime::shutdown::channel();
    // Presence: every user's first session on any gateway and last one
    // ending, as the gateways announce them here. Ends with the links.
    let presence = tokio::spawn(confab_core::presence::run(
        links.presence_changes(),
        history.clone(),
        links.clone(),
        config.presence_grace,
    ));
    let routing = tokio::spawn(route(consumer, history, links.clone(), shutdown));
    let serving = tokio::spawn(async move {
        crate::gateway_links::server(links, links_stop.clone())
            .service_token(Some(config.service_token.clone()))
            .transport(config.transport.clone())
            .readiness(config.readiness.clone())
            .serve(listener, links_stop)
            .await
    });
    let _ = routing.await;
    close_links.fire();
    serving.await??;
    presence.abort();
    Ok(())
}

/// The routing loop: batch → route each outcome in order → commit.
pub async fn route(
    mut consumer: BatchConsumer<OutcomeRecord>,
    history: Arc<RemoteHistory>,
    links: Arc<GatewayLinks>,
    shutdown: Signal,
) {
    let state = consumer.state();
    let mut router = Router::new(history.clone(), links.clone());
    let mut rebalances = state.rebalances();
    while let Some(mut batch) = consumer
        .next_batch_or_stop(256, Duration::from_millis(1), &shutdown)
        .await
    {
        if state.rebalances() != rebalances {
            rebalances = state.rebalances();
            router = Router::new(history.clone(), links.clone());
            tracing::info!(partitions = ?state.assigned(), "partitions changed; membership cache cleared");
        }
        // Taken, not cloned: only the batch's positions are needed after.
        for consumed in batch.records.iter_mut() {
            router
                .route_record(std::mem::take(&mut consumed.record))
                .await;
        }
        consumer.commit_done(&batch).await;
    }
    consumer.close().await;
    tracing::info!("router stopped");
}
