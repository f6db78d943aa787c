//! Metrics and health over HTTP: `/metrics`, `/livez` and `/readyz`, served
//! only when asked for (`CONFAB_METRICS_LISTEN`); without it no recorder is
//! installed and recording a metric costs next to nothing.

use crate::readiness::Readiness;
use crate::recorder::{install, process_collector};
use crate::shutdown::{self, Signal, Trigger};
use axum::http::{header, StatusCode};
use axum::routing::get;
use confab_core::metrics::LISTEN_VAR;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;

/// How often histogram samples are folded in when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` (Prometheus text format), `GET /livez` (200 while
/// the process runs) and `GET /readyz` (200 while `readiness` is ready, 503
/// naming what is wrong otherwise) on `listener` until `shutdown`. The
/// recorder is installed when this is called, before the returned future
/// first runs.
pub fn serve_http(
    listener: TcpListener,
    readiness: Readiness,
    shutdown: Signal,
) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
    let handle = install();
    let render = handle.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                process_collector().collect();
                let body = render.render();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        )
        .route("/livez", get(|| async { "live\n" }))
        .route(
            "/readyz",
            get(move || {
                let answer = match readiness.why_not() {
                    None => (StatusCode::OK, "ready\n".to_string()),
                    Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                };
                async move { answer }
            }),
        );
    async move {
        let upkeep = tokio::spawn(async move {
            let mut every = tokio::time::interval(UPKEEP_EVERY);
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        });
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.wait())
            .await;
        upkeep.abort();
        result
    }
}

/// A running metrics server (see [`start`]).
#[derive(Debug)]
pub struct MetricsServer {
    /// Where it serves.
    pub addr: SocketAddr,
    trigger: Trigger,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Binds `listen` and serves the metrics endpoints there, `/readyz`
/// following `readiness`, until [`MetricsServer::stop`]. An error means the
/// address could not be bound.
pub async fn start(listen: &str, readiness: Readiness) -> std::io::Result<MetricsServer> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let (trigger, signal) = shutdown::channel();
    let task = tokio::spawn(serve_http(listener, readiness, signal));
    tracing::info!(%addr, "serving metrics and health over http");
    Ok(MetricsServer {
        addr,
        trigger,
        task,
    })
}

impl MetricsServer {
    /// Stops serving (waiting at most a second for open connections).
    pub async fn stop(self) {
        self.trigger.fire();
        match tokio::time::timeout(Duration::from_secs(1), self.task).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "metrics server failed"),
            Ok(_) => {}
            Err(_) => tracing::debug!("metrics server still had connections open"),
        }
    }
}

/// `CONFAB_METRICS_LISTEN` from `env`; `None` when unset or empty.
pub fn listen_from_env(env: &dyn confab_core::config::Env) -> Option<String> {
    env.get(LISTEN_VAR).filter(|v| !v.trim().is_empty())
}
