//! One way to serve a Confab gRPC service: next to it the standard health
//! service and server reflection (v1, and v1alpha which grpcurl 1.8 speaks),
//! HTTP/2 keepalive to find peers that vanished, optional TLS and the
//! connection limits of [`Transport`], a graceful stop that
//! marks the service not serving before draining, and per-call metrics
//! ([`crate::metrics`]) with the process's readiness. Internal services
//! (router, history) are served with a [`ServiceToken`] that every caller
//! must present ([`serve_with_auth`]).

use crate::config::{ConfigError, Env};
use crate::shutdown::Signal;
use crate::transport::{IdleIncoming, MessageLimitLayer, Transport};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

/// The variable holding the token shared by the services of one deployment.
pub const SERVICE_TOKEN_VAR: &str = "CONFAB_SERVICE_TOKEN";

/// The metadata key callers of an internal service put the token in.
pub const SERVICE_TOKEN_HEADER: &str = "x-confab-service-token";

/// Shortest service token accepted, in bytes.
pub const SERVICE_TOKEN_MIN_BYTES: usize = 32;

/// What a caller without the right token sees (UNAUTHENTICATED).
pub const SERVICE_TOKEN_REQUIRED: &str =
    "this is an internal service: callers must present the service token";

/// Calls to this service are answered without a token, so orchestrators can
/// probe (`grpc.health.v1.Health/Check` and `/Watch`).
const OPEN_PREFIX: &str = "/grpc.health.v1.Health/";

/// The secret that internal services (router, history) require of their
/// callers, and that gateways and routers present to them. Never printed:
/// its `Debug` is redacted.
#[derive(Clone)]
pub struct ServiceToken {
    /// The token as configured.
    value: Arc<str>,
    /// The same, ready to put into request metadata.
    metadata: AsciiMetadataValue,
}

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceToken(<redacted>)")
    }
}

impl ServiceToken {
    /// `token`, if it is at least [`SERVICE_TOKEN_MIN_BYTES`] of visible
    /// ASCII (e.g. base64); the error names [`SERVICE_TOKEN_VAR`] and never
    /// the token.
    pub fn new(token: &str) -> Result<Self, ConfigError> {
        let bad = |reason: &str| ConfigError {
            key: SERVICE_TOKEN_VAR.into(),
            value: "<redacted>".into(),
            reason: reason.into(),
        };
        if token.len() < SERVICE_TOKEN_MIN_BYTES {
            return Err(bad(&format!(
                "must be at least {SERVICE_TOKEN_MIN_BYTES} bytes \
                 (e.g. `head -c 24 /dev/urandom | base64`)"
            )));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                "must be visible ASCII without spaces (e.g. base64 of random bytes)",
            ));
        }
        let metadata = MetadataValue::try_from(token)
            .map_err(|_| bad("must be visible ASCII without spaces"))?;
        Ok(Self {
            value: token.into(),
            metadata,
        })
    }

    /// [`SERVICE_TOKEN_VAR`], which is required.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        match env.get(SERVICE_TOKEN_VAR) {
            Some(token) => Self::new(&token),
            None => Err(ConfigError {
                key: SERVICE_TOKEN_VAR.into(),
                value: String::new(),
                reason: format!(
                    "required: the token shared by gateways, routers and history \
                     (at least {SERVICE_TOKEN_MIN_BYTES} bytes)"
                ),
            }),
        }
    }

    /// Whether `presented` is this token, in time that does not depend on
    /// where `presented` differs from it (`subtle`'s constant-time
    /// comparison; only a length mismatch returns early, and the length of
    /// a token is no secret worth the bytes it would take to hide).
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq as _;
        self.value.as_bytes().ct_eq(presented).into()
    }

    /// Puts the token into `request`'s metadata, for an internal service.
    pub fn attach<T>(&self, request: &mut tonic::Request<T>) {
        request
            .metadata_mut()
            .insert(SERVICE_TOKEN_HEADER, self.metadata.clone());
    }
}

/// Refuses, with UNAUTHENTICATED, every call that does not carry the
/// [`ServiceToken`] in [`SERVICE_TOKEN_HEADER`] — except health checks.
/// Without a token it lets everything through.
#[derive(Debug, Clone)]
pub struct ServiceAuthLayer {
    token: Option<ServiceToken>,
}

impl ServiceAuthLayer {
    /// Requires `token` of callers; `None` requires nothing.
    pub fn new(token: Option<ServiceToken>) -> Self {
        Self { token }
    }
}

impl<S> tower::Layer<S> for ServiceAuthLayer {
    type Service = ServiceAuth<S>;

    fn layer(&self, inner: S) -> ServiceAuth<S> {
        ServiceAuth {
            inner,
            token: self.token.clone(),
        }
    }
}

/// The service [`ServiceAuthLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct ServiceAuth<S> {
    inner: S,
    token: Option<ServiceToken>,
}

impl<S> ServiceAuth<S> {
    fn admits<B>(&self, req: &http::Request<B>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        if req.uri().path().starts_with(OPEN_PREFIX) {
            return true;
        }
        req.headers()
            .get(SERVICE_TOKEN_HEADER)
            .is_some_and(|presented| token.matches(presented.as_bytes()))
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> tower::Service<http::Request<B>> for ServiceAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if self.admits(&req) {
            Box::pin(self.inner.call(req))
        } else {
            tracing::debug!(
                path = req.uri().path(),
                "call without the service token refused"
            );
            let refused = tonic::Status::unauthenticated(SERVICE_TOKEN_REQUIRED).into_http();
            Box::pin(std::future::ready(Ok(refused)))
        }
    }
}

/// Serves `routes` (the service named `service_name`, e.g.
/// `<ChatServer<_> as NamedService>::NAME`) on `listener` until `shutdown`;
/// reflection describes `descriptor_set`. Anyone may call: this is for the
/// gateway (which authenticates its users itself) and in-process tests.
pub async fn serve(
    what: &'static str,
    service_name: &'static str,
    routes: Routes,
    descriptor_set: &'static [u8],
    listener: TcpListener,
    shutdown: Signal,
) -> Result<(), tonic::transport::Error> {
    serve_with_auth(
        what,
        service_name,
        routes,
        descriptor_set,
        listener,
        shutdown,
        None,
    )
    .await
}

/// [`serve`], and with `auth` every call except health checks (reflection
/// included) must present that token ([`ServiceAuthLayer`]). Plaintext, with
/// the connection limits of [`Transport::internal`].
pub async fn serve_with_auth(
    what: &'static str,
    service_name: &'static str,
    routes: Routes,
    descriptor_set: &'static [u8],
    listener: TcpListener,
    shutdown: Signal,
    auth: Option<ServiceToken>,
) -> Result<(), tonic::transport::Error> {
    serve_with_transport(
        what,
        service_name,
        routes,
        descriptor_set,
        listener,
        shutdown,
        auth,
        &Transport::internal(),
    )
    .await
}

/// [`serve_with_auth`] over `transport`: TLS (and client certificates) when
/// configured, at most `max_concurrent_streams` calls per connection, and
/// connections without a call closed after `idle_timeout`
/// ([`crate::transport`]). `max_message_bytes` is the caller's to apply to
/// its service (tonic sets it per service).
#[allow(clippy::too_many_arguments)]
pub async fn serve_with_transport(
    what: &'static str,
    service_name: &'static str,
    routes: Routes,
    descriptor_set: &'static [u8],
    listener: TcpListener,
    shutdown: Signal,
    auth: Option<ServiceToken>,
    transport: &Transport,
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
    tracing::info!(
        addr = ?addr,
        service = service_name,
        tls = transport.tls.is_some(),
        client_certs = transport.tls.as_ref().is_some_and(|t| t.requires_client_cert()),
        "{what} serving grpc"
    );
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
    let builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(transport.max_concurrent_streams);
    let builder = match &transport.tls {
        Some(tls) => builder.tls_config(tls.config())?,
        None => builder,
    };
    let incoming = IdleIncoming::new(
        TcpIncoming::from(listener).with_nodelay(Some(true)),
        transport.idle_timeout,
    );
    // The listener is bound: connections from now on are served.
    readiness.set(true);
    // grpc.health.v1 follows readiness: NOT_SERVING while a dependency
    // check fails (Kafka, the database) and from the start of shutdown.
    let follow = {
        let health = health.clone();
        let mut verdict = readiness.subscribe();
        tokio::spawn(async move {
            loop {
                let status = if *verdict.borrow_and_update() {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                health.set_service_status(service_name, status).await;
                if verdict.changed().await.is_err() {
                    break;
                }
            }
        })
    };
    let served = builder
        // Calls are counted on their connection for its idle timeout from
        // the outermost layer; metrics next, so refused calls are counted
        // as UNAUTHENTICATED and requests over the message limit as
        // RESOURCE_EXHAUSTED (tonic says OUT_OF_RANGE).
        .layer(
            tower::ServiceBuilder::new()
                .layer(incoming.layer())
                .layer(layer)
                .layer(MessageLimitLayer::new(transport.max_message_bytes))
                .layer(ServiceAuthLayer::new(auth)),
        )
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, stop)
        .await;
    follow.abort();
    readiness.set(false);
    served
}

/// How long a service may drain after SIGTERM before it exits anyway
/// (milliseconds, default 10 000).
pub const GRACE_VAR: &str = "CONFAB_SHUTDOWN_GRACE_MS";

/// The body of every service binary's `main`: refuse a bad configuration
/// with exit code 64 before binding, set up logging, bind `CONFAB_LISTEN`
/// (or `default_listen`) and, when set, `CONFAB_METRICS_LISTEN` (metrics and
/// health over HTTP, up until the service has drained), run until
/// SIGINT/SIGTERM, drain for at most [`GRACE_VAR`], and exit with 0 (or 1 on
/// failure or when the grace period ran out).
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
    let grace = match crate::config::parse_or(env, GRACE_VAR, 10_000u64, "milliseconds") {
        Ok(ms) => Duration::from_millis(ms),
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let listen = env
        .get("CONFAB_LISTEN")
        .unwrap_or_else(|| default_listen.to_string());
    let metrics_listen = crate::metrics::listen_from_env(env);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(token: &str) -> HashMap<String, String> {
        HashMap::from([(SERVICE_TOKEN_VAR.to_string(), token.to_string())])
    }

    #[test]
    fn the_token_is_required_long_enough_and_never_shown() {
        let missing = ServiceToken::from_env(&HashMap::new()).expect_err("missing");
        assert_eq!(missing.key, SERVICE_TOKEN_VAR);
        assert!(missing.reason.starts_with("required"));
        let short = ServiceToken::from_env(&env("short-secret-token")).expect_err("short");
        assert_eq!(short.key, SERVICE_TOKEN_VAR);
        assert!(!short.to_string().contains("short-secret-token"));
        assert!(short.reason.contains("at least 32 bytes"));
        let spaced = ServiceToken::new(&format!("{} x", "a".repeat(32))).expect_err("space");
        assert!(spaced.reason.contains("visible ASCII"));
        let token = ServiceToken::from_env(&env(&"s".repeat(32))).expect("valid");
        assert_eq!(format!("{token:?}"), "ServiceToken(<redacted>)");
    }

    #[test]
    fn matches_only_the_exact_token() {
        let token = ServiceToken::new("0123456789abcdef0123456789abcdef").expect("valid");
        assert!(token.matches(b"0123456789abcdef0123456789abcdef"));
        for wrong in [
            &b""[..],
            b"0123456789abcdef0123456789abcde",
            b"0123456789abcdef0123456789abcdeF",
            b"0123456789abcdef0123456789abcdef0",
            b"x123456789abcdef0123456789abcdef",
        ] {
            assert!(!token.matches(wrong), "{wrong:?}");
        }
    }
}
