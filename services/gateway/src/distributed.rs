//! The gateway as its own process: produces writes to the Kafka ingress
//! topic, reads from history over gRPC, and attaches to every router to
//! receive deliveries and outcomes for its sessions.

use crate::router_links::AttachConfig;
use crate::{ChatService, GatewayConfig, Hub};
use confab_auth::{AuthConfig, Authenticator};
use confab_core::config::{list, parse_or, required, ConfigError, Env};
use confab_history_client::{HistoryClientConfig, RemoteHistory};
use confab_kafka::{ensure_topics, KafkaConfig, KafkaPublisher};
use confab_layers::breaker::BreakerConfig;
use confab_layers::service_token::ServiceToken;
use confab_proto::internal::v1::IngressRecord;
use confab_runtime::readiness::Readiness;
use confab_runtime::shutdown::Signal;
use confab_runtime::transport::{ClientTls, Transport};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Settings of a gateway process.
#[derive(Debug, Clone)]
pub struct DistributedConfig {
    /// This gateway's id, unique among gateways (`CONFAB_GATEWAY_ID`).
    pub gateway_id: String,
    /// The token checker (`CONFAB_JWT_*`), built once from the
    /// configuration: its key files are read when the configuration is.
    pub auth: Authenticator,
    /// Limits, timeouts and queues.
    pub gateway: GatewayConfig,
    /// The broker and topics.
    pub kafka: KafkaConfig,
    /// History addresses (`CONFAB_HISTORY_ADDRS`), with the breaker of each
    /// (`CONFAB_BREAKER_*`); its `service_token` is what history requires.
    pub history: HistoryClientConfig,
    /// Router addresses (`CONFAB_ROUTER_ADDRS`).
    pub routers: Vec<String>,
    /// What routers require to attach (`CONFAB_SERVICE_TOKEN`, required; the
    /// same one is sent to history).
    pub service_token: ServiceToken,
    /// The public server's TLS and connection limits (`CONFAB_TLS_*`,
    /// `CONFAB_HTTP2_*`, `CONFAB_MAX_MESSAGE_BYTES`).
    pub transport: Transport,
    /// TLS to history and routers (`CONFAB_TLS_CA`; the gateway presents
    /// `CONFAB_TLS_CERT`); `None`: plaintext.
    pub internal_tls: Option<ClientTls>,
    /// Whether this process should get traffic: kept by its server and its
    /// dependency checks, served at `/readyz`. Each configuration read has
    /// its own, so processes sharing a test process do not share it.
    pub readiness: Readiness,
}

impl confab_runtime::process::ServiceConfig for DistributedConfig {
    fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }
}

impl DistributedConfig {
    /// Reads `CONFAB_*` variables.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let need_list = |key: &str| {
            let v = list(env, key);
            if v.is_empty() {
                Err(ConfigError {
                    key: key.into(),
                    value: String::new(),
                    reason: "required: comma-separated addresses (host:port)".into(),
                })
            } else {
                Ok(v)
            }
        };
        let auth = AuthConfig::from_env(env)?;
        if auth.hs256_secret.is_none() && auth.public_keys.is_none() {
            return Err(ConfigError {
                key: confab_core::vars::JWT_SECRET.into(),
                value: String::new(),
                reason:
                    "required: the HS256 secret tokens are signed with (or CONFAB_JWT_PUBLIC_KEYS)"
                        .into(),
            });
        }
        // Key files are read now, once, so a bad one stops the gateway
        // before it binds.
        let auth = Authenticator::configured(auth)?;
        let mut history = HistoryClientConfig::new(need_list(confab_core::vars::HISTORY_ADDRS)?);
        history.request_timeout = Duration::from_millis(parse_or(
            env,
            confab_core::vars::HISTORY_TIMEOUT_MS,
            5000u64,
            "milliseconds",
        )?);
        history.breaker = BreakerConfig::from_env(env)?;
        let gateway_id = required(
            env,
            confab_core::vars::GATEWAY_ID,
            "a unique id for this gateway",
        )?;
        let gateway = GatewayConfig::from_env(env)?;
        let kafka = KafkaConfig::from_env(env)?;
        let routers = need_list(confab_core::vars::ROUTER_ADDRS)?;
        // Certificate files are read now too.
        let transport = Transport::from_env(env, Transport::public())?
            .fit_body(env, gateway.limits.max_body_bytes)?;
        let internal_tls = ClientTls::from_env(env)?;
        history.tls = internal_tls.clone();
        // Last, so the variables above are reported first.
        let service_token = ServiceToken::from_env(env)?;
        history.service_token = Some(service_token.clone());
        Ok(Self {
            readiness: Readiness::new(),
            gateway_id,
            auth,
            gateway,
            kafka,
            history,
            routers,
            service_token,
            transport,
            internal_tls,
        })
    }
}

/// Runs a gateway until `shutdown`.
pub async fn run(
    config: DistributedConfig,
    listener: TcpListener,
    shutdown: Signal,
) -> anyhow::Result<()> {
    let hub = Hub::new(config.gateway_id.clone());
    run_with_hub(config, hub, listener, shutdown).await
}

/// Runs a gateway around `hub` (tests keep a handle on it to watch its
/// router links).
pub async fn run_with_hub(
    config: DistributedConfig,
    hub: Arc<Hub>,
    listener: TcpListener,
    shutdown: Signal,
) -> anyhow::Result<()> {
    ensure_topics(&config.kafka).await?;
    let ingress = KafkaPublisher::<IngressRecord>::new(&config.kafka)?;
    // Readiness follows the broker; the check ends at shutdown.
    confab_kafka::health::spawn_publisher_check(
        &config.readiness,
        ingress.clone(),
        shutdown.clone(),
    );
    let history = Arc::new(RemoteHistory::new(&config.history)?);
    // Router links outlive the server: outcomes of calls still in flight
    // at shutdown arrive over them.
    let (detach, attach_stop) = confab_runtime::shutdown::channel();
    let attach = tokio::spawn(crate::router_links::run(
        hub.clone(),
        AttachConfig {
            service_token: Some(config.service_token.clone()),
            tls: config.internal_tls.clone(),
            breaker: config.history.breaker.clone(),
            ..AttachConfig::new(config.routers.clone())
        },
        attach_stop,
    ));
    let service = ChatService::new(
        config.gateway,
        config.auth.clone(),
        hub,
        Arc::new(ingress.clone()),
        history,
        shutdown.clone(),
    );
    // Stops taking connections and calls (GOAWAY), ends every stream with
    // UNAVAILABLE once its pending acks are out, and returns when the calls
    // in flight have their answers.
    let served = crate::service::server(service, config.transport.clone())
        .readiness(config.readiness.clone())
        .serve(listener, shutdown)
        .await;
    if let Err(e) = ingress.flush(Duration::from_secs(5)).await {
        tracing::warn!(error = %e, "ingress not flushed at shutdown");
    }
    detach.fire();
    let _ = attach.await;
    served?;
    tracing::info!("gateway stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(extra: &[(&str, &str)]) -> HashMap<String, String> {
        [
            ("CONFAB_JWT_SECRET", "a-test-secret-of-32-bytes-or-so!"),
            ("CONFAB_GATEWAY_ID", "gateway-1"),
            ("CONFAB_HISTORY_ADDRS", "127.0.0.1:50071"),
            ("CONFAB_ROUTER_ADDRS", "127.0.0.1:50061"),
            ("CONFAB_SERVICE_TOKEN", "0123456789abcdef0123456789abcdef"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn the_history_breaker_comes_from_the_environment() {
        let config = DistributedConfig::from_env(&env(&[])).expect("valid");
        assert_eq!(config.history.breaker, BreakerConfig::default());
        let config = DistributedConfig::from_env(&env(&[
            ("CONFAB_BREAKER_WINDOW", "40"),
            ("CONFAB_BREAKER_MIN_CALLS", "8"),
            ("CONFAB_BREAKER_HALF_OPEN_PROBES", "2"),
        ]))
        .expect("valid");
        let b = &config.history.breaker;
        assert_eq!((b.window, b.min_calls, b.half_open_probes), (40, 8, 2));
        let err = DistributedConfig::from_env(&env(&[("CONFAB_BREAKER_FAILURE_RATE", "1.5")]))
            .expect_err("a rate over 1");
        assert_eq!(err.key, "CONFAB_BREAKER_FAILURE_RATE");
    }
}
