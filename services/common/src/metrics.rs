//! Prometheus metrics and health over HTTP: the process-wide recorder, the
//! `/metrics`, `/livez` and `/readyz` endpoints, readiness, and the tower
//! layer that [`crate::grpc::serve`] puts in front of every gRPC service.
//!
//! The HTTP server runs only when asked for (`CONFAB_METRICS_LISTEN`, see
//! [`LISTEN_VAR`]); without it no recorder is installed and recording a
//! metric costs next to nothing.
//!
//! Labels are bounded: `service` and `method` come from the descriptor sets
//! a server serves (any other path counts as `unknown`), `code` is one of the
//! 17 gRPC code names, `breaker` is a circuit breaker's name (one per
//! configured address) and `to` one of its three states. No user,
//! conversation or request ids.

use crate::shutdown::{self, Signal, Trigger};
use axum::http::{header, StatusCode};
use axum::routing::get;
use http_body::{Frame, SizeHint};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tonic::codegen::Bytes;

/// The variable naming the address of the metrics and health server
/// (`host:port`). Unset or empty: no server (and no recorder).
pub const LISTEN_VAR: &str = "CONFAB_METRICS_LISTEN";

/// Counter: finished RPCs by `service`, `method` and `code`.
pub const GRPC_REQUESTS: &str = "confab_grpc_requests_total";
/// Histogram (seconds): time from a unary RPC's arrival to its status, by
/// `service` and `method`.
pub const GRPC_DURATION: &str = "confab_grpc_request_duration_seconds";
/// Counter: streaming RPCs opened, by `service` and `method`.
pub const GRPC_STREAMS_OPENED: &str = "confab_grpc_streams_opened_total";
/// Gauge: streaming RPCs open now, by `service` and `method`.
pub const GRPC_STREAMS_OPEN: &str = "confab_grpc_streams_open";
/// Gauge: each circuit breaker's state, by `breaker` (its name, one per
/// configured address): 0 closed, 1 half-open, 2 open.
pub const BREAKER_STATE: &str = "confab_breaker_state";
/// Counter: circuit breaker transitions, by `breaker` and `to` (`closed`,
/// `half_open`, `open`).
pub const BREAKER_TRANSITIONS: &str = "confab_breaker_transitions_total";
/// Counter: calls a circuit breaker refused without reaching its dependency
/// (open, or half-open with every probe slot taken), by `breaker`.
pub const BREAKER_REJECTED: &str = "confab_breaker_rejected_total";

/// Buckets of [`GRPC_DURATION`], 1 ms to 10 s (a send waits for a commit;
/// its timeout is 10 s).
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often histogram samples are folded in when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder for this process (once: later calls,
/// e.g. from several servers in one test process, return the same handle).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = match PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(GRPC_DURATION.into()), DURATION_BUCKETS)
            {
                Ok(b) => b,
                Err(_) => unreachable!("the bucket list is not empty"),
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if let Err(e) = metrics::set_global_recorder(recorder) {
                // Someone else's recorder came first: serve an empty page
                // rather than fail.
                tracing::warn!(error = %e, "another metrics recorder is installed; /metrics will be empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(
        GRPC_REQUESTS,
        "gRPC calls finished, by method and status code"
    );
    metrics::describe_histogram!(
        GRPC_DURATION,
        metrics::Unit::Seconds,
        "time from a unary gRPC call's arrival to its status"
    );
    metrics::describe_counter!(GRPC_STREAMS_OPENED, "streaming gRPC calls opened");
    metrics::describe_gauge!(GRPC_STREAMS_OPEN, "streaming gRPC calls open now");
    metrics::describe_gauge!(
        BREAKER_STATE,
        "circuit breaker state: 0 closed, 1 half-open, 2 open"
    );
    metrics::describe_counter!(
        BREAKER_TRANSITIONS,
        "circuit breaker state changes, by the state changed to"
    );
    metrics::describe_counter!(
        BREAKER_REJECTED,
        "calls a circuit breaker failed fast without reaching its dependency"
    );
}

/// Whether this process should get traffic: a flag shared by whoever
/// serves and the `/readyz` endpoint. Starts not ready.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// A new flag, not ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    /// Reads the flag.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The process's readiness: [`crate::grpc::serve`] sets it when it starts
/// serving and clears it as soon as its shutdown starts. (A process running
/// several gRPC servers, as some tests do, shares it: the last change wins.)
pub fn process_readiness() -> Readiness {
    static READY: OnceLock<Readiness> = OnceLock::new();
    READY.get_or_init(Readiness::new).clone()
}

/// Serves `GET /metrics` (Prometheus text format), `GET /livez` (200 while
/// the process runs) and `GET /readyz` (200 while `readiness` is set, 503
/// otherwise) on `listener` until `shutdown`. The recorder is installed when
/// this is called, before the returned future first runs.
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
                let ready = readiness.is_ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
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

/// Binds `listen` and serves the metrics endpoints there, with the
/// [`process_readiness`], until [`MetricsServer::stop`]. An error means the
/// address could not be bound.
pub async fn start(listen: &str) -> std::io::Result<MetricsServer> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let (trigger, signal) = shutdown::channel();
    let task = tokio::spawn(serve_http(listener, process_readiness(), signal));
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
pub fn listen_from_env(env: &dyn crate::config::Env) -> Option<String> {
    env.get(LISTEN_VAR).filter(|v| !v.trim().is_empty())
}

/// What the layer knows about one gRPC path.
#[derive(Debug)]
struct MethodInfo {
    service: String,
    method: String,
    streaming: bool,
}

/// Records [`GRPC_REQUESTS`], [`GRPC_DURATION`], [`GRPC_STREAMS_OPENED`]
/// and [`GRPC_STREAMS_OPEN`] for every call through a tonic server.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    methods: Arc<HashMap<String, Arc<MethodInfo>>>,
    unknown: Arc<MethodInfo>,
}

impl GrpcMetricsLayer {
    /// A layer that knows the methods in these encoded
    /// `FileDescriptorSet`s; calls to any other path are labelled `unknown`.
    pub fn new(descriptor_sets: &[&[u8]]) -> Self {
        use prost::Message;
        let mut methods = HashMap::new();
        for set in descriptor_sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                tracing::warn!("undecodable descriptor set; its methods count as unknown");
                continue;
            };
            for file in &set.file {
                let package = file.package();
                for service in &file.service {
                    let full = if package.is_empty() {
                        service.name().to_string()
                    } else {
                        format!("{package}.{}", service.name())
                    };
                    for m in &service.method {
                        methods.insert(
                            format!("/{full}/{}", m.name()),
                            Arc::new(MethodInfo {
                                service: full.clone(),
                                method: m.name().to_string(),
                                streaming: m.client_streaming() || m.server_streaming(),
                            }),
                        );
                    }
                }
            }
        }
        Self {
            methods: Arc::new(methods),
            unknown: Arc::new(MethodInfo {
                service: "unknown".into(),
                method: "unknown".into(),
                streaming: false,
            }),
        }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    layer: GrpcMetricsLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let info = self
            .layer
            .methods
            .get(req.uri().path())
            .unwrap_or(&self.layer.unknown)
            .clone();
        let mut call = Call::start(info);
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = match response.await {
                Ok(r) => r,
                Err(e) => {
                    call.finish(tonic::Code::Unknown);
                    return Err(e);
                }
            };
            // Errors before any message (e.g. UNAUTHENTICATED) come as
            // "trailers-only": the status is in the headers.
            if let Some(code) = grpc_status(response.headers()) {
                call.finish(code);
                return Ok(response);
            }
            Ok(response.map(|body| {
                tonic::body::Body::new(MeteredBody {
                    inner: body,
                    call: Some(call),
                })
            }))
        })
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?;
    let code = value.to_str().ok()?.trim().parse::<i32>().ok()?;
    Some(tonic::Code::from_i32(code))
}

/// The canonical name of a gRPC code, as in the gRPC spec.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// One call in flight; records its outcome once. Dropped unfinished (the
/// response body went away before its status): `CANCELLED`.
#[derive(Debug)]
struct Call {
    info: Arc<MethodInfo>,
    started: Instant,
    done: bool,
}

impl Call {
    fn start(info: Arc<MethodInfo>) -> Self {
        if info.streaming {
            let labels = [
                ("service", info.service.clone()),
                ("method", info.method.clone()),
            ];
            metrics::counter!(GRPC_STREAMS_OPENED, &labels).increment(1);
            metrics::gauge!(GRPC_STREAMS_OPEN, &labels).increment(1.0);
        }
        Self {
            info,
            started: Instant::now(),
            done: false,
        }
    }

    fn finish(&mut self, code: tonic::Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let info = &self.info;
        let labels = [
            ("service", info.service.clone()),
            ("method", info.method.clone()),
        ];
        metrics::counter!(
            GRPC_REQUESTS,
            "service" => info.service.clone(),
            "method" => info.method.clone(),
            "code" => code_name(code),
        )
        .increment(1);
        if info.streaming {
            metrics::gauge!(GRPC_STREAMS_OPEN, &labels).decrement(1.0);
        } else {
            metrics::histogram!(GRPC_DURATION, &labels)
                .record(self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}

/// A response body that records its call's status from the trailers.
struct MeteredBody {
    inner: tonic::body::Body,
    call: Option<Call>,
}

impl MeteredBody {
    fn finish(&mut self, code: tonic::Code) {
        if let Some(mut call) = self.call.take() {
            call.finish(code);
        }
    }
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.finish(code);
                }
            }
            Poll::Ready(Some(Err(status))) => this.finish(status.code()),
            Poll::Ready(None) => this.finish(tonic::Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_knows_methods_and_streaming_from_descriptors() {
        let layer = GrpcMetricsLayer::new(&[
            confab_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ]);
        let send = &layer.methods["/confab.v1.Chat/SendMessage"];
        assert_eq!(
            (send.service.as_str(), send.method.as_str(), send.streaming),
            ("confab.v1.Chat", "SendMessage", false)
        );
        assert!(layer.methods["/confab.v1.Chat/Connect"].streaming);
        assert!(layer.methods["/grpc.health.v1.Health/Watch"].streaming);
        assert!(!layer.methods.contains_key("/confab.v1.Chat/user-123"));
    }

    #[test]
    fn readiness_is_a_shared_flag() {
        let a = Readiness::new();
        let b = a.clone();
        assert!(!b.is_ready());
        a.set(true);
        assert!(b.is_ready());
        a.set(false);
        assert!(!b.is_ready());
    }

    #[test]
    fn install_twice_shares_the_handle() {
        let a = install();
        let b = install();
        metrics::counter!("confab_test_install_twice_total").increment(1);
        assert!(a.render().contains("confab_test_install_twice_total 1"));
        assert!(b.render().contains("confab_test_install_twice_total 1"));
    }
}
