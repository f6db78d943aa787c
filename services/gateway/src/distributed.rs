//! The gateway as its own process: produces writes to the Kafka ingress
//! topic, reads from history over gRPC, and attaches to every router to
//! receive deliveries and outcomes for its sessions.

use crate::router_links::AttachConfig;
use crate::{ChatService, GatewayConfig, Hub};
use confab_auth::{AuthConfig, Authenticator};
use confab_core::config::{required, required_list, ConfigError, Env};
use confab_history_client::{HistoryClientConfig, RemoteHistory};
use confab_kafka::{ensure_topics, KafkaConfig, KafkaPublisher};
use confab_layers::service_token::ServiceToken;
use confab_proto::internal::v1::IngressRecord;
use confab_runtime::process::ServiceConfig;
use confab_runtime::readiness::Readiness;
use confab_runtime::shutdown::Signal;
use confab_runtime::transport::{ClientTls, Transport};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Settings of a gateway process.
#[derive(Debug, Clone)]
pub struct DistributedConfig {
    /// This gateway's sessions and pending requests, under its id
    /// (`CONFAB_GATEWAY_ID`, unique among gateways).
    pub hub: Arc<Hub>,
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
    /// Whether this process should get traffic (see [`Readiness`]).
    pub readiness: Readiness,
    /// The HTTP listener for browsers (`CONFAB_HTTP_LISTEN`, none by
    /// default; docs/browser.md).
    pub web: crate::web::WebConfig,
}

impl ServiceConfig for DistributedConfig {
    const NAME: &'static str = "confab-gateway";
    const DEFAULT_LISTEN: &'static str = "127.0.0.1:50051";

    /// Reads `CONFAB_*` variables.
    fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
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
        let mut history = HistoryClientConfig::from_env(env)?;
        let gateway_id = required(
            env,
            confab_core::vars::GATEWAY_ID,
            "a unique id for this gateway",
        )?;
        let gateway = GatewayConfig::from_env(env)?;
        let kafka = KafkaConfig::from_env(env)?;
        let routers = required_list(
            env,
            confab_core::vars::ROUTER_ADDRS,
            "router addresses (host:port)",
        )?;
        // Certificate files are read now too.
        let transport = Transport::from_env(env, Transport::public())?
            .fit_body(env, gateway.limits.max_body_bytes)?;
        let internal_tls = history.tls.clone();
        // Last, so the variables above are reported first.
        let service_token = ServiceToken::from_env(env)?;
        history.service_token = Some(service_token.clone());
        let web = crate::web::WebConfig::from_env(env, None)?;
        Ok(Self {
            readiness: Readiness::new(),
            web,
            hub: Hub::new(gateway_id),
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

    fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }
}

/// Runs a gateway until `shutdown`.
pub async fn run(
    config: DistributedConfig,
    listener: TcpListener,
    shutdown: Signal,
) -> anyhow::Result<()> {
    let hub = config.hub.clone();
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
    // Tokens come from the deployment's issuer: no development tokens here.
    let web = crate::web::router(
        service.clone(),
        config.transport.max_message_bytes,
        &config.web,
        None,
    );
    crate::web::start(&config.web, web, shutdown.clone()).await?;
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
    use confab_core::config::env_of;
    use confab_core::vars;

    #[test]
    fn history_is_called_as_the_history_client_reads_it_with_the_service_token() {
        let env = env_of(&[
            (vars::JWT_SECRET, "a-test-secret-of-32-bytes-or-so!"),
            (vars::GATEWAY_ID, "gateway-1"),
            (vars::HISTORY_ADDRS, "127.0.0.1:50071"),
            (vars::ROUTER_ADDRS, "127.0.0.1:50061"),
            (vars::SERVICE_TOKEN, "0123456789abcdef0123456789abcdef"),
            ("CONFAB_BREAKER_WINDOW", "40"),
        ]);
        let config = DistributedConfig::from_env(&env).expect("valid");
        assert_eq!(config.history.breaker.window, 40);
        let sent = config.history.service_token.expect("a token for history");
        assert!(sent.matches(b"0123456789abcdef0123456789abcdef"));
        assert_eq!(config.routers, ["127.0.0.1:50061"]);
    }
}
