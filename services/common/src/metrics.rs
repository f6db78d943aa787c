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
//! configured address) and `to` one of its three states; the product
//! metrics below name their (small, fixed) label values. No user,
//! conversation or request ids.
//!
//! Readiness ([`Readiness`]) is the serving flag that [`crate::grpc::serve`]
//! keeps, and named checks of the process's dependencies ("database",
//! "kafka"), each kept current by a task ([`spawn_check`]): `/readyz` is 200
//! only while the process serves and every check passes, and names what
//! fails otherwise. [`Readiness::subscribe`] follows the same verdict.

use crate::shutdown::{self, Signal, Trigger};
use axum::http::{header, StatusCode};
use axum::routing::get;
use http_body::{Frame, SizeHint};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
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

/// Counter (gateway): ingress records produced, i.e. writes (sends and
/// membership changes) the broker acknowledged and history will decide.
pub const MESSAGES_ACCEPTED: &str = "confab_messages_accepted_total";
/// Counter (history): messages assigned a seq (sends and the system
/// messages of membership changes; replays of stored ones are not counted).
pub const MESSAGES_SEQUENCED: &str = "confab_messages_sequenced_total";
/// Counter (history): ingress records history refused, by `reason`
/// ([`REJECT_REASONS`], from the refusal's error code).
pub const MESSAGES_REJECTED: &str = "confab_messages_rejected_total";
/// Counter (gateway): messages written to a client's `Connect` stream, live
/// or from history (resume, gap fill).
pub const MESSAGES_DELIVERED: &str = "confab_messages_delivered_total";
/// Histogram (seconds, gateway): from the moment a gateway accepted the
/// write (`accepted_at_ms`, carried in the ingress record, the outcome and
/// the router's delivery; that gateway's clock) to the moment a gateway
/// first writes the message to a stream live (the delivering gateway's
/// clock). A message without an acceptance time (from an older gateway)
/// counts from its `created_at` (history's clock).
pub const MESSAGE_E2E: &str = "confab_message_e2e_seconds";
/// The values of `reason` on [`MESSAGES_REJECTED`].
pub const REJECT_REASONS: [&str; 5] = ["not_member", "not_found", "invalid", "limit", "other"];

/// Histogram (seconds): from handing a record to the Kafka producer to the
/// broker's acknowledgement, by `topic_kind` (`ingress`, `messages`).
pub const KAFKA_PRODUCE: &str = "confab_kafka_produce_seconds";
/// Counter: publishes that failed (timeout, broker down, refused), by
/// `topic_kind`.
pub const KAFKA_PRODUCE_ERRORS: &str = "confab_kafka_produce_errors_total";
/// Gauge: records in a partition past its group's committed offset (high
/// watermark − committed), by `group` and `partition`, for the partitions
/// the process's consumer owns (0 for partitions it owned before).
pub const KAFKA_CONSUMER_LAG: &str = "confab_kafka_consumer_lag_records";
/// Counter: partition assignments a consumer received (each rebalance ends
/// with one), by `group`.
pub const KAFKA_REBALANCES: &str = "confab_kafka_rebalances_total";

/// Histogram (records): the size of each batch history applied in one
/// transaction.
pub const DB_BATCH_RECORDS: &str = "confab_db_batch_records";
/// Histogram (seconds): one batch's transaction (with its deadlock
/// retries), by `result` (`ok`, `error`).
pub const DB_TRANSACTION: &str = "confab_db_transaction_seconds";
/// Gauge: connections of history's PostgreSQL pool, by `state` (`idle`,
/// `in_use`).
pub const DB_POOL_CONNECTIONS: &str = "confab_db_pool_connections";
/// Gauge: the most connections history's PostgreSQL pool opens.
pub const DB_POOL_MAX: &str = "confab_db_pool_connections_max";

/// Gauge (gateway): `Connect` sessions registered now (live delivery on).
pub const SESSIONS_OPEN: &str = "confab_sessions_open";
/// Gauge (gateway): users with at least one session on this gateway.
pub const USERS_ONLINE: &str = "confab_users_online";

/// Histogram (users): recipients of each message a router routes.
pub const ROUTER_FANOUT: &str = "confab_router_fanout_recipients";

/// Counter (gateway): calls and stream sends refused by a per-user limit,
/// by `limit` (`messages`, `conversations`, `streams`).
pub const RATE_LIMITED: &str = "confab_rate_limited_total";

/// The `reason` of [`MESSAGES_REJECTED`] for a refusal with this gRPC code.
pub fn reject_reason(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::PermissionDenied => "not_member",
        tonic::Code::NotFound => "not_found",
        tonic::Code::InvalidArgument => "invalid",
        tonic::Code::ResourceExhausted => "limit",
        _ => "other",
    }
}

/// Buckets of [`GRPC_DURATION`] and the other latency histograms, 1 ms to
/// 10 s (a send waits for a commit; its timeout is 10 s).
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of [`DB_BATCH_RECORDS`]: powers of two up to the largest batch
/// (256).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Buckets of [`ROUTER_FANOUT`], up to the largest group (1000 by default).
const FANOUT_BUCKETS: &[f64] = &[
    1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0,
];

/// Every histogram and its buckets (without buckets the exporter would
/// render a summary).
const HISTOGRAMS: &[(&str, &[f64])] = &[
    (GRPC_DURATION, DURATION_BUCKETS),
    (MESSAGE_E2E, DURATION_BUCKETS),
    (KAFKA_PRODUCE, DURATION_BUCKETS),
    (DB_TRANSACTION, DURATION_BUCKETS),
    (DB_BATCH_RECORDS, BATCH_BUCKETS),
    (ROUTER_FANOUT, FANOUT_BUCKETS),
];

/// How often histogram samples are folded in when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder for this process (once: later calls,
/// e.g. from several servers in one test process, return the same handle).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            for (name, buckets) in HISTOGRAMS {
                builder = match builder.set_buckets_for_metric(Matcher::Full((*name).into()), buckets) {
                    Ok(b) => b,
                    Err(_) => unreachable!("no bucket list is empty"),
                };
            }
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if let Err(e) = metrics::set_global_recorder(recorder) {
                // Someone else's recorder came first: serve an empty page
                // rather than fail.
                tracing::warn!(error = %e, "another metrics recorder is installed; /metrics will be empty");
            }
            describe();
            process_collector().describe();
            handle
        })
        .clone()
}

/// The process's CPU time, resident memory, open files and threads
/// (`process_cpu_seconds_total`, `process_resident_memory_bytes`, … as the
/// Prometheus client libraries name them), read when `/metrics` is scraped.
fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
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
    metrics::describe_counter!(
        MESSAGES_ACCEPTED,
        "writes (sends, membership changes) a gateway produced to the ingress topic"
    );
    metrics::describe_counter!(MESSAGES_SEQUENCED, "messages history assigned a seq");
    metrics::describe_counter!(
        MESSAGES_REJECTED,
        "writes history refused, by reason (not_member, not_found, invalid, limit, other)"
    );
    metrics::describe_counter!(
        MESSAGES_DELIVERED,
        "messages a gateway wrote to client streams (live and from history)"
    );
    metrics::describe_histogram!(
        MESSAGE_E2E,
        metrics::Unit::Seconds,
        "from a gateway accepting a write to its message's first live delivery on a stream (gateways' clocks)"
    );
    metrics::describe_histogram!(
        KAFKA_PRODUCE,
        metrics::Unit::Seconds,
        "from producing a record to the broker's acknowledgement, by topic kind"
    );
    metrics::describe_counter!(
        KAFKA_PRODUCE_ERRORS,
        "publishes to the broker that failed, by topic kind"
    );
    metrics::describe_gauge!(
        KAFKA_CONSUMER_LAG,
        metrics::Unit::Count,
        "records past the group's committed offset in each partition this consumer owns"
    );
    metrics::describe_counter!(
        KAFKA_REBALANCES,
        "partition assignments a consumer received, by group"
    );
    metrics::describe_histogram!(
        DB_BATCH_RECORDS,
        metrics::Unit::Count,
        "records in each batch history applied in one transaction"
    );
    metrics::describe_histogram!(
        DB_TRANSACTION,
        metrics::Unit::Seconds,
        "time of one batch transaction (with deadlock retries), by result"
    );
    metrics::describe_gauge!(
        DB_POOL_CONNECTIONS,
        "connections of history's database pool, by state (idle, in_use)"
    );
    metrics::describe_gauge!(
        DB_POOL_MAX,
        "the most connections history's database pool opens"
    );
    metrics::describe_gauge!(SESSIONS_OPEN, "Connect sessions open on this gateway");
    metrics::describe_gauge!(
        USERS_ONLINE,
        "users with at least one session on this gateway"
    );
    metrics::describe_histogram!(
        ROUTER_FANOUT,
        metrics::Unit::Count,
        "recipients of each message a router routes"
    );
    metrics::describe_counter!(
        RATE_LIMITED,
        "calls and stream sends refused by a per-user limit, by limit"
    );
}

/// Whether this process should get traffic: the serving flag that whoever
/// serves gRPC keeps ([`Readiness::set`]), and named checks of the
/// process's dependencies ([`Readiness::check`]). Ready means serving and
/// every check passing. Clones share the state. Starts not ready.
#[derive(Debug, Clone)]
pub struct Readiness(Arc<ReadinessState>);

#[derive(Debug)]
struct ReadinessState {
    /// Whether the process serves (set by [`crate::grpc::serve`]).
    serving: AtomicBool,
    /// The registered checks by id: their name and whether they pass.
    checks: Mutex<BTreeMap<u64, (String, bool)>>,
    /// Source of check ids.
    next_id: AtomicU64,
    /// The verdict, for subscribers; changed only under the `checks` lock.
    verdict: watch::Sender<bool>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self(Arc::new(ReadinessState {
            serving: AtomicBool::new(false),
            checks: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            verdict: watch::channel(false).0,
        }))
    }
}

/// Why a process is not ready: what [`Readiness::why_not`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady {
    /// The process does not serve (not started yet, or shutting down).
    pub not_serving: bool,
    /// The names of the checks that fail, sorted, each once.
    pub failing: Vec<String>,
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.not_serving {
            parts.push("not serving".to_string());
        }
        if !self.failing.is_empty() {
            parts.push(format!("failing checks: {}", self.failing.join(", ")));
        }
        write!(f, "not ready: {}", parts.join("; "))
    }
}

impl Readiness {
    /// New state: not serving, no checks.
    pub fn new() -> Self {
        Self::default()
    }

    fn checks(&self) -> MutexGuard<'_, BTreeMap<u64, (String, bool)>> {
        // Every update is a single insert, remove or flag write: a poisoned
        // lock still holds consistent data.
        self.0
            .checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets the serving flag.
    pub fn set(&self, serving: bool) {
        let checks = self.checks();
        self.0.serving.store(serving, Ordering::SeqCst);
        self.publish(&checks);
    }

    /// Whether the process serves (whatever the checks say).
    pub fn is_serving(&self) -> bool {
        self.0.serving.load(Ordering::SeqCst)
    }

    /// Whether the process serves and every check passes.
    pub fn is_ready(&self) -> bool {
        self.why_not().is_none()
    }

    /// `None` when ready; otherwise what is wrong.
    pub fn why_not(&self) -> Option<NotReady> {
        let checks = self.checks();
        Self::verdict(self.is_serving(), &checks)
    }

    fn verdict(serving: bool, checks: &BTreeMap<u64, (String, bool)>) -> Option<NotReady> {
        let failing: BTreeSet<&String> = checks
            .values()
            .filter(|(_, ok)| !ok)
            .map(|(name, _)| name)
            .collect();
        (!serving || !failing.is_empty()).then(|| NotReady {
            not_serving: !serving,
            failing: failing.into_iter().cloned().collect(),
        })
    }

    /// Tells subscribers about the verdict; callers hold the `checks` lock.
    fn publish(&self, checks: &BTreeMap<u64, (String, bool)>) {
        let ready = Self::verdict(self.is_serving(), checks).is_none();
        self.0.verdict.send_if_modified(|v| {
            let changed = *v != ready;
            *v = ready;
            changed
        });
    }

    /// Registers a check called `name` (e.g. "database", "kafka"), failing
    /// until it is first [`ReadinessCheck::set`]; it is removed when the
    /// returned handle is dropped. Several checks may share a name (e.g.
    /// two services in one test process): the name fails while any of them
    /// does.
    pub fn check(&self, name: &str) -> ReadinessCheck {
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let mut checks = self.checks();
        checks.insert(id, (name.to_string(), false));
        self.publish(&checks);
        drop(checks);
        ReadinessCheck {
            readiness: self.clone(),
            id,
        }
    }

    /// The verdict (ready or not) now and at every change, for whoever
    /// mirrors it elsewhere (e.g. the `grpc.health.v1` status).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.verdict.subscribe()
    }
}

/// One named readiness check (see [`Readiness::check`]); dropping it
/// removes the check.
#[derive(Debug)]
pub struct ReadinessCheck {
    readiness: Readiness,
    id: u64,
}

impl ReadinessCheck {
    /// Records whether the check passes now.
    pub fn set(&self, ok: bool) {
        let mut checks = self.readiness.checks();
        if let Some(entry) = checks.get_mut(&self.id) {
            entry.1 = ok;
        }
        self.readiness.publish(&checks);
    }
}

impl Drop for ReadinessCheck {
    fn drop(&mut self) {
        let mut checks = self.readiness.checks();
        checks.remove(&self.id);
        self.readiness.publish(&checks);
    }
}

/// The process's readiness: [`crate::grpc::serve`] sets it when it starts
/// serving and clears it as soon as its shutdown starts; the checks of
/// [`spawn_check`] are registered with it. (A process running several gRPC
/// servers, as some tests do, shares it: the last serving change wins.)
pub fn process_readiness() -> Readiness {
    static READY: OnceLock<Readiness> = OnceLock::new();
    READY.get_or_init(Readiness::new).clone()
}

/// Runs `probe` every `every` until `shutdown`, keeping the readiness check
/// `name` of the [`process_readiness`] current: it fails from the start
/// until the first probe passes, and whenever a probe fails or takes longer
/// than `every` plus a second. Changes are logged (warn when failing, with
/// the probe's error; info when passing again). The check is removed when
/// the task ends.
pub fn spawn_check<F, Fut>(
    name: &'static str,
    every: Duration,
    shutdown: Signal,
    mut probe: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let check = process_readiness().check(name);
    let limit = every + Duration::from_secs(1);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<bool> = None;
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = ticks.tick() => {}
            }
            let result = tokio::select! {
                biased;
                _ = &mut stop => break,
                r = tokio::time::timeout(limit, probe()) => r,
            };
            let result = result
                .unwrap_or_else(|_| Err(format!("no answer within {} ms", limit.as_millis())));
            let ok = result.is_ok();
            match (&result, last) {
                (Err(e), Some(true) | None) => {
                    tracing::warn!(check = name, error = %e, "readiness check failing")
                }
                (Ok(()), Some(false)) => {
                    tracing::info!(check = name, "readiness check passing again")
                }
                _ => {}
            }
            last = Some(ok);
            check.set(ok);
        }
        drop(check);
    })
}

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
pub fn code_name(code: tonic::Code) -> &'static str {
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
    fn readiness_needs_serving_and_every_check() {
        let r = Readiness::new();
        let verdicts = r.subscribe();
        r.set(true);
        assert!(r.is_ready() && *verdicts.borrow());
        let db = r.check("database");
        let kafka = r.check("kafka");
        let kafka2 = r.check("kafka");
        // A new check fails until it first passes.
        assert_eq!(
            r.why_not(),
            Some(NotReady {
                not_serving: false,
                failing: vec!["database".into(), "kafka".into()],
            })
        );
        assert!(!*verdicts.borrow());
        db.set(true);
        kafka.set(true);
        assert_eq!(r.why_not().map(|w| w.failing), Some(vec!["kafka".into()]));
        kafka2.set(true);
        assert!(r.is_ready() && *verdicts.borrow());
        db.set(false);
        r.set(false);
        let why = r.why_not().expect("not ready");
        assert_eq!(
            why.to_string(),
            "not ready: not serving; failing checks: database"
        );
        // A dropped check no longer counts.
        drop(db);
        r.set(true);
        assert!(r.is_ready());
        drop(kafka);
        drop(kafka2);
        assert!(r.is_ready());
    }

    #[tokio::test]
    async fn readiness_changes_reach_subscribers() {
        let r = Readiness::new();
        let mut rx = r.subscribe();
        assert!(!*rx.borrow_and_update());
        r.set(true);
        rx.changed().await.expect("a change");
        assert!(*rx.borrow_and_update());
        let c = r.check("kafka");
        rx.changed().await.expect("a change");
        assert!(!*rx.borrow_and_update());
        c.set(true);
        rx.changed().await.expect("a change");
        assert!(*rx.borrow_and_update());
        // Setting the same value again is not a change.
        c.set(true);
        r.set(true);
        assert!(!rx.has_changed().expect("open"));
    }

    #[test]
    fn reject_reasons_come_from_the_code() {
        use tonic::Code;
        let reasons: Vec<&str> = [
            Code::PermissionDenied,
            Code::NotFound,
            Code::InvalidArgument,
            Code::ResourceExhausted,
            Code::Internal,
        ]
        .into_iter()
        .map(reject_reason)
        .collect();
        assert_eq!(reasons, REJECT_REASONS);
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
