//! The body of every service binary's `main`, and the flags they share.

use crate::readiness::Readiness;
use crate::shutdown::Signal;
use confab_core::config::{ConfigError, Env, Overlay};
use confab_core::vars;
use std::time::Duration;
use tokio::net::TcpListener;

/// The flags every service binary of the distributed stack takes. Each
/// mirrors a `CONFAB_*` variable, and the flag wins (see
/// docs/operations.md for all of them).
#[derive(clap::Args)]
pub struct ServiceFlags {
    /// address to serve gRPC on [env: CONFAB_LISTEN]
    #[arg(long)]
    pub listen: Option<String>,
    /// Kafka bootstrap servers [env: CONFAB_KAFKA_BROKERS]
    #[arg(long)]
    pub kafka_brokers: Option<String>,
}

impl ServiceFlags {
    /// The process environment with these flags over it.
    pub fn overlay(self) -> Overlay {
        Overlay::default()
            .flag(vars::LISTEN, self.listen)
            .flag(vars::KAFKA_BROKERS, self.kafka_brokers)
    }
}

/// `--history-addrs`, for the services that call history (gateway, router).
#[derive(clap::Args)]
pub struct HistoryFlags {
    /// comma-separated history addresses [env: CONFAB_HISTORY_ADDRS]
    #[arg(long)]
    pub history_addrs: Option<String>,
}

impl HistoryFlags {
    /// `overlay` with these flags over it.
    pub fn over(self, overlay: Overlay) -> Overlay {
        overlay.flag(vars::HISTORY_ADDRS, self.history_addrs)
    }
}

/// How long a service may drain after SIGTERM before it exits anyway
/// (milliseconds, default 10 000).
pub const GRACE_VAR: &str = confab_core::vars::SHUTDOWN_GRACE_MS;

/// A service's configuration, as [`main`] needs it.
pub trait ServiceConfig: Sized {
    /// The binary's name, for messages and telemetry.
    const NAME: &'static str;
    /// Where it serves gRPC unless `CONFAB_LISTEN` says otherwise.
    const DEFAULT_LISTEN: &'static str;
    /// Reads and checks the configuration, files included.
    fn from_env(env: &dyn Env) -> Result<Self, ConfigError>;
    /// The readiness the service's server and checks keep, which the
    /// metrics endpoint serves at `/readyz`.
    fn readiness(&self) -> Readiness;
}

/// The body of every service binary's `main`: read `C` from `env`, refuse a
/// bad configuration with exit code 64 before binding, set up logging, bind
/// `CONFAB_LISTEN` (or `C::DEFAULT_LISTEN`) and, when set, `CONFAB_METRICS_LISTEN` (metrics and
/// health over HTTP, up until the service has drained), run until
/// SIGINT/SIGTERM, drain for at most [`GRACE_VAR`], and exit with 0 (or 1 on
/// failure or when the grace period ran out).
pub fn main<C, E, F, Fut>(env: &dyn Env, run: F) -> !
where
    C: ServiceConfig,
    F: FnOnce(C, TcpListener, Signal) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    use confab_core::config::EXIT_CONFIG;
    let name = C::NAME;
    let config = match C::from_env(env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let grace = match confab_core::config::parse_or(env, GRACE_VAR, 10_000u64, "milliseconds") {
        Ok(ms) => Duration::from_millis(ms),
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let listen = env
        .get(confab_core::vars::LISTEN)
        .unwrap_or_else(|| C::DEFAULT_LISTEN.to_string());
    let metrics_listen = crate::endpoints::listen_from_env(env);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    // Within the runtime: span export (CONFAB_OTLP_ENDPOINT) runs on it.
    let telemetry = match runtime.block_on(async { crate::telemetry::init_from_env(name, env) }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let code = runtime.block_on(async move {
        let listener = match TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("{name}: cannot listen on {listen}: {e}");
                return EXIT_CONFIG;
            }
        };
        let metrics = match &metrics_listen {
            None => None,
            Some(addr) => match crate::endpoints::start(addr, config.readiness()).await {
                Ok(m) => Some(m),
                Err(e) => {
                    eprintln!(
                        "{name}: cannot listen on {addr} ({}): {e}",
                        confab_core::metrics::LISTEN_VAR
                    );
                    return EXIT_CONFIG;
                }
            },
        };
        let (trigger, signal) = crate::shutdown::channel();
        tokio::spawn(async move {
            crate::shutdown::os_signal().await;
            trigger.fire();
        });
        let grace_over = {
            let signal = signal.clone();
            async move {
                signal.wait().await;
                tracing::info!(grace_ms = grace.as_millis() as u64, "{name} draining");
                tokio::time::sleep(grace).await;
            }
        };
        let code = tokio::select! {
            result = run(config, listener, signal) => match result {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "{name} failed");
                    1
                }
            },
            () = grace_over => {
                // Nothing is lost: uncommitted input is consumed again by
                // whoever owns it next, and clients retry or resume.
                tracing::error!(
                    grace_ms = grace.as_millis() as u64,
                    "{name}: shutdown grace period over; exiting with work in flight"
                );
                1
            }
        };
        if let Some(m) = metrics {
            m.stop().await;
        }
        code
    });
    telemetry.shutdown();
    std::process::exit(code);
}
