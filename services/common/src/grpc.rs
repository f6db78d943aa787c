//! One way to serve a Confab gRPC service: next to it the standard health
//! service and server reflection (v1, and v1alpha which grpcurl 1.8 speaks),
//! HTTP/2 keepalive to find peers that vanished, a graceful stop that
//! marks the service not serving before draining, and per-call metrics
//! ([`crate::metrics`]) with the process's readiness.

use crate::shutdown::Signal;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

/// Serves `routes` (the service named `service_name`, e.g.
/// `<ChatServer<_> as NamedService>::NAME`) on `listener` until `shutdown`;
/// reflection describes `descriptor_set`.
pub async fn serve(
    what: &'static str,
    service_name: &'static str,
    routes: Routes,
    descriptor_set: &'static [u8],
    listener: TcpListener,
    shutdown: Signal,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(service_name, ServingStatus::Serving)
        .await;
    let reflection = |b: tonic_reflection::server::Builder<'static>| {
        b.register_encoded_file_descriptor_set(descriptor_set)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (v1, v1alpha) = match (
        reflection(tonic_reflection::server::Builder::configure()).build_v1(),
        reflection(tonic_reflection::server::Builder::configure()).build_v1alpha(),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        _ => unreachable!("the embedded descriptor sets are valid"),
    };
    let layer = crate::metrics::GrpcMetricsLayer::new(&[
        descriptor_set,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]);
    let readiness = crate::metrics::process_readiness();
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, service = service_name, "{what} serving grpc");
    let stop = {
        let health = health.clone();
        let readiness = readiness.clone();
        async move {
            shutdown.wait().await;
            readiness.set(false);
            // Load balancers and peers see "not serving" before connections drain.
            health
                .set_service_status(service_name, ServingStatus::NotServing)
                .await;
            tracing::info!("{what} shutting down");
        }
    };
    let routes = routes
        .add_service(health_service)
        .add_service(v1)
        .add_service(v1alpha);
    // The listener is bound: connections from now on are served.
    readiness.set(true);
    let served = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(layer)
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), stop)
        .await;
    readiness.set(false);
    served
}

/// The body of every service binary's `main`: refuse a bad configuration
/// with exit code 64 before binding, set up logging, bind `CONFAB_LISTEN`
/// (or `default_listen`) and, when set, `CONFAB_METRICS_LISTEN` (metrics and
/// health over HTTP, up until the service has drained), run until
/// SIGINT/SIGTERM, and exit with 0 or 1.
pub fn main<C, E, F, Fut>(
    name: &'static str,
    env: &dyn crate::config::Env,
    config: Result<C, crate::config::ConfigError>,
    default_listen: &str,
    run: F,
) -> !
where
    F: FnOnce(C, TcpListener, Signal) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    use crate::config::EXIT_CONFIG;
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let listen = env
        .get("CONFAB_LISTEN")
        .unwrap_or_else(|| default_listen.to_string());
    let metrics_listen = crate::metrics::listen_from_env(env);
    crate::telemetry::init(env.get("CONFAB_LOG_FORMAT").is_some_and(|f| f == "json"));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            std::process::exit(1);
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
            Some(addr) => match crate::metrics::start(addr).await {
                Ok(m) => Some(m),
                Err(e) => {
                    eprintln!(
                        "{name}: cannot listen on {addr} ({}): {e}",
                        crate::metrics::LISTEN_VAR
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
        let code = match run(config, listener, signal).await {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "{name} failed");
                1
            }
        };
        if let Some(m) = metrics {
            m.stop().await;
        }
        code
    });
    std::process::exit(code);
}
