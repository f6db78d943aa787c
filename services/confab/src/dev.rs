//! Embedded mode: gateway, router and history in one process, joined by
//! in-process log topics, with history in a SQLite file. `SendMessage`
//! returns only after SQLite has committed the message, so an acknowledged
//! message survives `kill -9`.

use confab_auth::{AuthConfig, Authenticator, DEV_SECRET};
use confab_core::config::{millis_or, parse_or, ConfigError, Env};
use confab_core::seams::MemTopic;
use confab_gateway::web::WebConfig;
use confab_gateway::{ChatService, GatewayConfig, Hub};

/// Where `confab dev` serves the web app, WebSocket and gRPC-Web.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";
use confab_history::{LocalHistory, SqliteStore};
use confab_runtime::readiness::{all_of, watch_part, Readiness};
use confab_runtime::shutdown::{either, Signal};
use confab_runtime::transport::Transport;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Settings of `confab dev`.
#[derive(Debug, Clone)]
pub struct DevConfig {
    /// Address to serve gRPC on.
    pub listen: String,
    /// Directory holding the SQLite database.
    pub data_dir: PathBuf,
    /// Token keys and claims (`CONFAB_JWT_*`); with neither a secret nor
    /// public keys, the public development secret.
    pub auth: AuthConfig,
    /// Gateway settings (limits, timeouts, queues).
    pub gateway: GatewayConfig,
    /// Partitions of each in-process topic.
    pub partitions: usize,
    /// How long shutdown waits for in-flight work.
    pub grace: Duration,
    /// Address of the metrics and health server (`CONFAB_METRICS_LISTEN`);
    /// `None`: none. See [`start_metrics`].
    pub metrics_listen: Option<String>,
    /// TLS and connection limits of the gRPC server (`CONFAB_TLS_CERT`,
    /// `CONFAB_TLS_KEY`, `CONFAB_TLS_CLIENT_CA`, `CONFAB_HTTP2_*`,
    /// `CONFAB_MAX_MESSAGE_BYTES`).
    pub transport: Transport,
    /// Whether this process should get traffic: kept by its server and its
    /// dependency checks, served at `/readyz`. Each configuration read has
    /// its own, so processes sharing a test process do not share it.
    pub readiness: Readiness,
    /// How long a user whose last session ended still counts as online
    /// (`CONFAB_PRESENCE_GRACE_MS`).
    pub presence_grace: Duration,
    /// The HTTP listener for browsers (`CONFAB_HTTP_LISTEN`, default
    /// `127.0.0.1:8080`; docs/browser.md).
    pub web: WebConfig,
}

impl DevConfig {
    /// Reads `CONFAB_*` variables from `env`.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let mut gateway = GatewayConfig::from_env(env)?;
        // The embedded history's setting, kept with the limits it applies.
        gateway.limits.search_index = confab_core::config::search_index(env)?;
        // Certificate files are read now, so a bad one stops before binding.
        let transport = Transport::from_env(env, Transport::public())?
            .fit_body(env, gateway.limits.max_body_bytes)?;
        let config = Self {
            readiness: Readiness::new(),
            listen: env
                .get(confab_core::vars::LISTEN)
                .unwrap_or_else(|| "127.0.0.1:50051".into()),
            data_dir: env
                .get(confab_core::vars::DATA_DIR)
                .map(PathBuf::from)
                .unwrap_or_else(|| "data".into()),
            auth: AuthConfig::from_env(env)?,
            gateway,
            partitions: parse_or(
                env,
                confab_core::vars::PARTITIONS,
                4usize,
                "a partition count",
            )?,
            grace: millis_or(
                env,
                confab_core::vars::SHUTDOWN_GRACE_MS,
                Duration::from_millis(10000),
            )?,
            metrics_listen: confab_runtime::endpoints::listen_from_env(env),
            transport,
            presence_grace: confab_core::presence::grace_from_env(env)?,
            web: WebConfig::from_env(env, Some(DEFAULT_HTTP_LISTEN))?,
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, value: String, reason: &str| ConfigError {
            key: key.into(),
            value,
            reason: reason.into(),
        };
        if self.partitions == 0 || self.partitions > 1024 {
            return Err(bad(
                confab_core::vars::PARTITIONS,
                self.partitions.to_string(),
                "must be between 1 and 1024",
            ));
        }
        Ok(())
    }

    /// Whether tokens are checked with the public development secret.
    pub fn uses_dev_secret(&self) -> bool {
        self.auth.hs256_secret.is_none() && self.auth.public_keys.is_none()
    }

    /// The token checker for this configuration.
    pub fn authenticator(&self) -> Result<Authenticator, String> {
        let mut auth = self.auth.clone();
        if self.uses_dev_secret() {
            auth.hs256_secret = Some(DEV_SECRET.into());
        }
        Authenticator::from_config(auth)
    }

    /// The SQLite database file.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("confab.db")
    }
}

/// Starts the metrics and health server on `config.metrics_listen`, if set
/// (`Ok(None)` otherwise). It reports the process readiness, which the
/// gateway's gRPC server sets while it serves; keep it running until
/// [`run`] has returned, so `/readyz` answers 503 during the drain.
pub async fn start_metrics(
    config: &DevConfig,
) -> std::io::Result<Option<confab_runtime::endpoints::MetricsServer>> {
    match &config.metrics_listen {
        None => Ok(None),
        Some(listen) => confab_runtime::endpoints::start(listen, config.readiness.clone())
            .await
            .map(Some),
    }
}

/// Runs everything until `shutdown` fires, then drains in order: the
/// gateway stops taking requests, the sequencers finish what was accepted,
/// the routers deliver it.
pub async fn run(config: DevConfig, listener: TcpListener, shutdown: Signal) -> anyhow::Result<()> {
    if config.uses_dev_secret() {
        tracing::warn!("CONFAB_JWT_SECRET is not set: using the public development secret; anyone can mint tokens");
    }
    let store = Arc::new(SqliteStore::open(&config.db_path(), config.gateway.limits).await?);
    tracing::info!(path = %config.db_path().display(), "history in sqlite");
    let (ingress, ingress_partitions) = MemTopic::new(config.partitions, 4096);
    let (outcomes, outcome_partitions) = MemTopic::new(config.partitions, 4096);
    let history = Arc::new(LocalHistory::new(store.clone()));
    let hub = Hub::new("embedded");
    let sequencers = confab_history::ingest::spawn(store, ingress_partitions, Arc::new(outcomes));
    let routers = confab_router::spawn(outcome_partitions, history.clone(), hub.clone());
    // Presence: this gateway is the only one, so its sessions are all.
    let presence = tokio::spawn(confab_core::presence::run(
        hub.presence_changes(),
        history.clone(),
        hub.clone(),
        config.presence_grace,
    ));
    let service = ChatService::new(
        config.gateway.clone(),
        config.authenticator().map_err(anyhow::Error::msg)?,
        hub,
        Arc::new(ingress),
        history,
        shutdown.clone(),
    );
    // A sequencer or router task that panics makes the process not ready
    // and stops it (to be restarted), as history's sequencer does in the
    // distributed mode, instead of serving while a partition is dead.
    let (sequencing, sequencer_failed) =
        watch_part("sequencer", all_of(sequencers), &config.readiness);
    let (routing, router_failed) = watch_part("router", all_of(routers), &config.readiness);
    let stop = either(shutdown, either(sequencer_failed, router_failed));
    // The public development secret mints tokens for the web app's
    // sign-in too (docs/security.md).
    let dev_tokens = match config.uses_dev_secret() {
        true => Some(config.authenticator().map_err(anyhow::Error::msg)?),
        false => None,
    };
    let web = confab_gateway::web::router(
        service.clone(),
        config.transport.max_message_bytes,
        &config.web,
        dev_tokens,
    );
    confab_gateway::web::start(&config.web, web, stop.clone()).await?;
    confab_gateway::service::server(service, config.transport.clone())
        .readiness(config.readiness.clone())
        .serve(listener, stop)
        .await?;
    let drain = async { (sequencing.await, routing.await) };
    let drained = tokio::time::timeout(config.grace, drain).await;
    presence.abort();
    let (sequenced, routed) = match drained {
        Ok(both) => both,
        Err(_) => {
            tracing::warn!(
                grace_ms = config.grace.as_millis() as u64,
                "shutdown grace period over; exiting with work in flight"
            );
            return Ok(());
        }
    };
    sequenced?;
    routed?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// What the README promises after `make run`: the web app on
    /// http://127.0.0.1:8080, beside gRPC on 127.0.0.1:50051.
    #[test]
    fn make_run_serves_browsers_on_8080_and_grpc_on_50051() {
        let config = DevConfig::from_env(&HashMap::<String, String>::new()).expect("defaults");
        assert_eq!(config.listen, "127.0.0.1:50051");
        assert_eq!(config.web.listen.as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(config.web.web_dir, PathBuf::from("web/dist"));
        let off = HashMap::from([("CONFAB_HTTP_LISTEN".to_string(), "off".to_string())]);
        let config = DevConfig::from_env(&off).expect("off");
        assert_eq!(config.web.listen, None);
    }
}
