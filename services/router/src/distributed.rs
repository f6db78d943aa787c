//! The router as its own process: consumes the Kafka messages topic in
//! group "router", routes each outcome to the attached gateways, then
//! commits. Its membership cache is dropped on every rebalance, because a
//! partition that comes back may have changed under another router.

use crate::gateway_links::{GatewayLinks, LinkConfig};
use crate::Router;
use confab_core::config::{list, parse_or, ConfigError, Env};
use confab_history_client::{HistoryClientConfig, RemoteHistory};
use confab_kafka::{ensure_topics, BatchConsumer, GroupState, KafkaConfig};
use confab_layers::breaker::BreakerConfig;
use confab_layers::service_token::ServiceToken;
use confab_proto::internal::v1::OutcomeRecord;
use confab_runtime::readiness::Readiness;
use confab_runtime::shutdown::Signal;
use confab_runtime::transport::{ClientTls, Transport};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

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
    /// Whether this process should get traffic: kept by its server and its
    /// dependency checks, served at `/readyz`. Each configuration read has
    /// its own, so processes sharing a test process do not share it.
    pub readiness: Readiness,
}

impl confab_runtime::process::ServiceConfig for RouterConfig {
    fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }
}

impl RouterConfig {
    /// Reads `CONFAB_*` variables.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let history = list(env, confab_core::vars::HISTORY_ADDRS);
        if history.is_empty() {
            return Err(ConfigError {
                key: confab_core::vars::HISTORY_ADDRS.into(),
                value: String::new(),
                reason: "required: comma-separated history addresses (host:port)".into(),
            });
        }
        let mut history = HistoryClientConfig::new(history);
        history.request_timeout = Duration::from_millis(parse_or(
            env,
            confab_core::vars::HISTORY_TIMEOUT_MS,
            5000u64,
            "milliseconds",
        )?);
        history.breaker = BreakerConfig::from_env(env)?;
        let kafka = KafkaConfig::from_env(env)?;
        // Certificate files are read now, so a bad one stops the router
        // before it binds. History is called over TLS with CONFAB_TLS_CA.
        let transport = Transport::from_env(env, Transport::internal())?;
        history.tls = ClientTls::from_env(env)?;
        // Last, so the variables above are reported first.
        let service_token = ServiceToken::from_env(env)?;
        history.service_token = Some(service_token.clone());
        Ok(Self {
            readiness: Readiness::new(),
            kafka,
            history,
            links: LinkConfig::default(),
            service_token,
            transport,
        })
    }
}

/// Runs a router until `shutdown`: the consumer, and the gateway link
/// server on `listener`.
pub async fn run(
    config: RouterConfig,
    listener: TcpListener,
    shutdown: Signal,
) -> anyhow::Result<()> {
    run_with_state(config, listener, shutdown, None).await
}

/// [`run`], and hands the consumer-group state (which messages partitions
/// this router owns) to `state` once the consumer exists, so tests can watch
/// partitions move between routers.
pub async fn run_with_state(
    config: RouterConfig,
    listener: TcpListener,
    shutdown: Signal,
    state: Option<oneshot::Sender<Arc<GroupState>>>,
) -> anyhow::Result<()> {
    ensure_topics(&config.kafka).await?;
    let history = Arc::new(RemoteHistory::new(&config.history)?);
    let links = GatewayLinks::new(config.links.clone());
    let consumer = BatchConsumer::<OutcomeRecord>::new(&config.kafka, GROUP)?;
    if let Some(tx) = state {
        // Nobody listening is fine.
        let _ = tx.send(consumer.state());
    }
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
    while let Some(batch) = consumer
        .next_batch_or_stop(256, Duration::from_millis(1), &shutdown)
        .await
    {
        if state.rebalances() != rebalances {
            rebalances = state.rebalances();
            router = Router::new(history.clone(), links.clone());
            tracing::info!(partitions = ?state.assigned(), "partitions changed; membership cache cleared");
        }
        for consumed in batch.records.iter() {
            router.route(consumed.record.clone()).await;
        }
        consumer.commit_done(&batch).await;
    }
    consumer.close().await;
    tracing::info!("router stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(extra: &[(&str, &str)]) -> HashMap<String, String> {
        [
            ("CONFAB_HISTORY_ADDRS", "127.0.0.1:50071"),
            ("CONFAB_SERVICE_TOKEN", "0123456789abcdef0123456789abcdef"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn the_history_breaker_comes_from_the_environment() {
        let config = RouterConfig::from_env(&env(&[])).expect("valid");
        assert_eq!(config.history.breaker, BreakerConfig::default());
        let config = RouterConfig::from_env(&env(&[
            ("CONFAB_BREAKER_FAILURE_RATE", "0.75"),
            ("CONFAB_BREAKER_OPEN_MS", "250"),
        ]))
        .expect("valid");
        assert_eq!(config.history.breaker.failure_threshold, 0.75);
        assert_eq!(config.history.breaker.open_for, Duration::from_millis(250));
        let err = RouterConfig::from_env(&env(&[("CONFAB_BREAKER_WINDOW", "0")]))
            .expect_err("an empty window");
        assert_eq!(err.key, "CONFAB_BREAKER_WINDOW");
    }
}
