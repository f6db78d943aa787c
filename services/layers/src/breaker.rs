//! A circuit breaker as a tower middleware. It watches the outcomes of calls
//! to one dependency; when too many of the recent ones failed it opens, and
//! calls fail at once instead of waiting on a dependency that is down. After a
//! pause a few probe calls go through, and their outcome closes or re-opens it.
//!
//! Every transition is a log line and shows in the metrics
//! [`confab_core::metrics::BREAKER_STATE`] and [`confab_core::metrics::BREAKER_TRANSITIONS`];
//! refused calls count in [`confab_core::metrics::BREAKER_REJECTED`]. The settings
//! come from `CONFAB_BREAKER_*` variables ([`BreakerConfig::from_env`]).

use confab_core::config::{parse_or, ConfigError, Env};
use confab_core::metrics::{BREAKER_REJECTED, BREAKER_STATE, BREAKER_TRANSITIONS};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::ops::RangeInclusive;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::{Code, Status};
use tower::{Layer, Service};

/// When a breaker opens and how it recovers.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// How many of the most recent calls the failure rate is computed over.
    pub window: usize,
    /// Fewest calls in the window before the breaker may open, so that one
    /// early failure does not count as a 100% failure rate.
    pub min_calls: usize,
    /// Failure rate (0.0 to 1.0) at which a failed call opens the breaker.
    pub failure_threshold: f64,
    /// How long calls fail fast before probe calls are let through.
    pub open_for: Duration,
    /// Probe calls let through at a time while half-open; that many
    /// successes in a row close the breaker.
    pub half_open_probes: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: 20,
            min_calls: 5,
            failure_threshold: 0.5,
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
        }
    }
}

/// Failure rate (0 to 1) at which a breaker opens ([`BreakerConfig::failure_threshold`]).
pub const FAILURE_RATE_VAR: &str = "CONFAB_BREAKER_FAILURE_RATE";
/// Calls the failure rate is computed over ([`BreakerConfig::window`]).
pub const WINDOW_VAR: &str = "CONFAB_BREAKER_WINDOW";
/// Fewest calls in the window before a breaker may open ([`BreakerConfig::min_calls`]).
pub const MIN_CALLS_VAR: &str = "CONFAB_BREAKER_MIN_CALLS";
/// Milliseconds a breaker stays open ([`BreakerConfig::open_for`]).
pub const OPEN_MS_VAR: &str = "CONFAB_BREAKER_OPEN_MS";
/// Probe calls at a time while half-open ([`BreakerConfig::half_open_probes`]).
pub const HALF_OPEN_PROBES_VAR: &str = "CONFAB_BREAKER_HALF_OPEN_PROBES";

/// Largest window: its outcomes are kept in memory, for every breaker.
const MAX_WINDOW: usize = 10_000;
/// Longest open period, one hour: a longer one keeps a recovered dependency
/// refused for no gain.
const MAX_OPEN_MS: u64 = 3_600_000;
/// Most probe calls at a time while half-open.
const MAX_PROBES: usize = 1_000;

impl BreakerConfig {
    /// Reads the `CONFAB_BREAKER_*` variables; an unset one keeps its
    /// [default](BreakerConfig::default) (the minimum of calls defaults to at
    /// most the window). A value that does not parse or is out of range is a
    /// [`ConfigError`] naming the variable.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let failure_threshold = parse_in(
            env,
            FAILURE_RATE_VAR,
            defaults.failure_threshold,
            0.0..=1.0,
            "a failure rate from 0 to 1, e.g. 0.5",
        )?;
        let window = parse_in(
            env,
            WINDOW_VAR,
            defaults.window,
            1..=MAX_WINDOW,
            &format!("a number of calls from 1 to {MAX_WINDOW}"),
        )?;
        let min_calls = parse_in(
            env,
            MIN_CALLS_VAR,
            defaults.min_calls.min(window),
            1..=window,
            &format!("a number of calls from 1 to the window ({WINDOW_VAR}={window})"),
        )?;
        let open_ms = parse_in(
            env,
            OPEN_MS_VAR,
            u64::try_from(defaults.open_for.as_millis()).unwrap_or(MAX_OPEN_MS),
            1..=MAX_OPEN_MS,
            &format!("milliseconds from 1 to {MAX_OPEN_MS}"),
        )?;
        let half_open_probes = parse_in(
            env,
            HALF_OPEN_PROBES_VAR,
            defaults.half_open_probes,
            1..=MAX_PROBES,
            &format!("a number of calls from 1 to {MAX_PROBES}"),
        )?;
        Ok(Self {
            window,
            min_calls,
            failure_threshold,
            open_for: Duration::from_millis(open_ms),
            half_open_probes,
        })
    }

    /// The same settings brought into range: a window of at least one call,
    /// at least one and at most `window` calls before opening, at least one
    /// probe.
    fn normalised(mut self) -> Self {
        self.window = self.window.max(1);
        self.min_calls = self.min_calls.clamp(1, self.window);
        self.half_open_probes = self.half_open_probes.max(1);
        self
    }
}

/// `key` from `env` parsed and within `range`, or `default` when unset.
fn parse_in<T: FromStr + PartialOrd>(
    env: &dyn Env,
    key: &str,
    default: T,
    range: RangeInclusive<T>,
    expected: &str,
) -> Result<T, ConfigError> {
    let value = parse_or(env, key, default, expected)?;
    // `contains` is false for NaN, which parses as a float.
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError {
            key: key.to_string(),
            value: env.get(key).unwrap_or_default(),
            reason: format!("expected {expected}"),
        })
    }
}

/// Where a breaker is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; their outcomes are counted.
    Closed,
    /// Calls fail at once. It stays open until the first call after the open
    /// period, which moves it to half-open.
    Open,
    /// A limited number of probe calls go through; the others fail at once.
    HalfOpen,
}

impl BreakerState {
    /// A stable lowercase name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The value of the [`BREAKER_STATE`] gauge: 0 closed, 1 half-open,
    /// 2 open.
    pub fn metric_value(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}

/// The error of a call refused because its breaker is open. The caller
/// turns it into UNAVAILABLE (`Status` and `ChatError` have `From` impls).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} is failing; {}", retry_hint(*.retry_in))]
pub struct CircuitOpen {
    /// The breaker's name: which dependency is failing.
    pub name: Arc<str>,
    /// How long until calls are tried again; zero when probe calls are
    /// already checking whether the dependency recovered.
    pub retry_in: Duration,
}

impl CircuitOpen {
    /// The same refusal under another name, e.g. a public one without the
    /// internal address.
    pub fn renamed(&self, name: &str) -> Self {
        Self {
            name: name.into(),
            retry_in: self.retry_in,
        }
    }
}

fn retry_hint(retry_in: Duration) -> String {
    if retry_in.is_zero() {
        "it is being retried now; retry shortly".to_string()
    } else {
        // Rounded up, so a caller waiting that long finds it retried.
        let ms = retry_in.as_micros().div_ceil(1000);
        format!("it will be retried in {ms} ms")
    }
}

impl From<CircuitOpen> for Status {
    /// UNAVAILABLE with the refusal as message and as source, so that a
    /// caller can tell a refusal from an UNAVAILABLE the dependency sent.
    fn from(open: CircuitOpen) -> Self {
        let mut status = Status::unavailable(open.to_string());
        status.set_source(Arc::new(open));
        status
    }
}

impl From<CircuitOpen> for confab_core::error::ChatError {
    fn from(open: CircuitOpen) -> Self {
        Self::Unavailable(open.to_string())
    }
}

/// Decides whether an error says the dependency is failing (counts towards
/// opening the breaker) or only that this request was refused.
pub trait FailureEvaluator<E>: Send + Sync + 'static {
    /// True if `error` counts as a failure of the dependency.
    fn is_failure(&self, error: &E) -> bool;
}

impl<E, F> FailureEvaluator<E> for F
where
    F: Fn(&E) -> bool + Send + Sync + 'static,
{
    fn is_failure(&self, error: &E) -> bool {
        self(error)
    }
}

/// The evaluator for gRPC clients: the dependency is failing when it is
/// unreachable (transport errors, UNAVAILABLE) or too slow (DEADLINE_EXCEEDED,
/// or CANCELLED, which is what a server reports when the deadline it was sent
/// ran out). Answers about the request itself (NOT_FOUND, PERMISSION_DENIED,
/// INVALID_ARGUMENT, ...) show a healthy dependency and do not count.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcFailures;

impl FailureEvaluator<Status> for GrpcFailures {
    fn is_failure(&self, status: &Status) -> bool {
        // Statuses made up by the client from an I/O or protocol error carry
        // a source; those parsed from the server's answer do not.
        std::error::Error::source(status).is_some()
            || matches!(
                status.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
            )
    }
}

/// A cheap view of one breaker, for metrics and tests.
#[derive(Clone)]
pub struct BreakerHandle {
    /// The breaker itself.
    core: Arc<Core>,
}

impl BreakerHandle {
    /// The breaker's name, as in its logs.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// The current state (no lock on the breaker).
    pub fn state(&self) -> BreakerState {
        *self.core.state_tx.borrow()
    }

    /// A receiver that sees every state change, e.g. to export it as a metric.
    pub fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.core.state_tx.subscribe()
    }
}

impl fmt::Debug for BreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerHandle")
            .field("name", &self.name())
            .field("state", &self.state())
            .finish()
    }
}

/// Wraps services in one circuit breaker. Every service this layer wraps
/// shares that one breaker, so build one layer per dependency instance.
pub struct CircuitBreakerLayer<V> {
    /// The breaker shared by every service made by this layer.
    core: Arc<Core>,
    /// Which errors count as failures.
    evaluator: Arc<V>,
}

impl<V> Clone for CircuitBreakerLayer<V> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
            evaluator: self.evaluator.clone(),
        }
    }
}

impl<V> CircuitBreakerLayer<V> {
    /// A closed breaker called `name` (in logs and refusals) that counts the
    /// errors `evaluator` accepts as failures.
    pub fn new(name: impl Into<Arc<str>>, config: BreakerConfig, evaluator: V) -> Self {
        let config = config.normalised();
        let (state_tx, _) = watch::channel(BreakerState::Closed);
        let name: Arc<str> = name.into();
        metrics::gauge!(BREAKER_STATE, "breaker" => name.to_string())
            .set(BreakerState::Closed.metric_value());
        let core = Core {
            name,
            inner: Mutex::new(Inner {
                phase: Phase::Closed(Window::new(config.window)),
                generation: 0,
            }),
            config,
            state_tx,
        };
        Self {
            core: Arc::new(core),
            evaluator: Arc::new(evaluator),
        }
    }

    /// A view of the breaker.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            core: self.core.clone(),
        }
    }
}

impl<S, V> Layer<S> for CircuitBreakerLayer<V> {
    type Service = CircuitBreaker<S, V>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker {
            inner,
            core: self.core.clone(),
            evaluator: self.evaluator.clone(),
            admission: None,
        }
    }
}

/// A service behind a circuit breaker (see the module documentation).
pub struct CircuitBreaker<S, V> {
    /// The service that reaches the dependency.
    inner: S,
    /// The breaker's state, shared with every clone.
    core: Arc<Core>,
    /// Which errors count as failures.
    evaluator: Arc<V>,
    /// The breaker's verdict for the next call, taken in `poll_ready`.
    admission: Option<Result<Permit, CircuitOpen>>,
}

impl<S: Clone, V> Clone for CircuitBreaker<S, V> {
    fn clone(&self) -> Self {
        // A verdict belongs to the call it was taken for, not to the clone.
        Self {
            inner: self.inner.clone(),
            core: self.core.clone(),
            evaluator: self.evaluator.clone(),
            admission: None,
        }
    }
}

impl<S, V> CircuitBreaker<S, V> {
    /// A view of the breaker.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            core: self.core.clone(),
        }
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, R, V> Service<R> for CircuitBreaker<S, V>
where
    S: Service<R>,
    S::Response: Send + 'static,
    S::Future: Send + 'static,
    S::Error: From<CircuitOpen> + Send + 'static,
    V: FailureEvaluator<S::Error>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let admission = self.admission.get_or_insert_with(|| self.core.admit());
        if admission.is_err() {
            // Refused: the inner service is not needed (nor woken up).
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(e)) => {
                if let Some(Ok(permit)) = self.admission.take() {
                    permit.finish(self.evaluator.is_failure(&e));
                }
                Poll::Ready(Err(e))
            }
            other => other,
        }
    }

    fn call(&mut self, request: R) -> Self::Future {
        let admission = self
            .admission
            .take()
            .expect("poll_ready must return Ready before call");
        let permit = match admission {
            Ok(permit) => permit,
            Err(open) => return Box::pin(std::future::ready(Err(open.into()))),
        };
        let answer = self.inner.call(request);
        let evaluator = self.evaluator.clone();
        Box::pin(async move {
            let result = answer.await;
            permit.finish(result.as_ref().is_err_and(|e| evaluator.is_failure(e)));
            result
        })
    }
}

/// One breaker's state, shared by its services and handles.
struct Core {
    /// Which dependency this breaker guards, for logs and refusals.
    name: Arc<str>,
    /// The settings, normalised.
    config: BreakerConfig,
    /// The phase, changed under this lock only.
    inner: Mutex<Inner>,
    /// The current state, for `state()` and subscribers.
    state_tx: watch::Sender<BreakerState>,
}

struct Inner {
    /// Where the breaker is, with what that phase counts.
    phase: Phase,
    /// Bumped on every transition, so that a call that started in an earlier
    /// phase does not count in this one.
    generation: u64,
}

enum Phase {
    /// Outcomes of the most recent calls.
    Closed(Window),
    /// Calls are refused until then.
    Open { until: Instant },
    /// Probe calls under way, and how many succeeded so far.
    HalfOpen { in_flight: usize, succeeded: usize },
}

/// The outcomes (true = failed) of the last `capacity` calls.
struct Window {
    /// Oldest first.
    outcomes: VecDeque<bool>,
    /// How many of `outcomes` are failures.
    failures: usize,
    /// How many outcomes are kept.
    capacity: usize,
}

impl Window {
    fn new(capacity: usize) -> Self {
        Self {
            outcomes: VecDeque::with_capacity(capacity),
            failures: 0,
            capacity,
        }
    }

    fn push(&mut self, failed: bool) {
        if self.outcomes.len() == self.capacity && self.outcomes.pop_front() == Some(true) {
            self.failures -= 1;
        }
        self.outcomes.push_back(failed);
        self.failures += usize::from(failed);
    }

    fn failure_rate(&self) -> f64 {
        self.failures as f64 / self.outcomes.len().max(1) as f64
    }
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent even if a holder panicked: every
        // critical section is a handful of assignments.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets a call through (with a permit to report its outcome) or refuses it.
    fn admit(self: &Arc<Self>) -> Result<Permit, CircuitOpen> {
        let mut inner = self.lock();
        let now = Instant::now();
        if let Phase::Open { until } = inner.phase {
            if now < until {
                return Err(self.refusal(until - now));
            }
            self.transition(
                &mut inner,
                Phase::HalfOpen {
                    in_flight: 0,
                    succeeded: 0,
                },
            );
            tracing::info!(breaker = %self.name, probes = self.config.half_open_probes, "circuit breaker half-open; letting probe calls through");
        }
        let probe = match &mut inner.phase {
            Phase::HalfOpen { in_flight, .. } if *in_flight >= self.config.half_open_probes => {
                return Err(self.refusal(Duration::ZERO));
            }
            Phase::HalfOpen { in_flight, .. } => {
                *in_flight += 1;
                true
            }
            _ => false,
        };
        Ok(Permit {
            core: self.clone(),
            generation: inner.generation,
            probe,
            finished: false,
        })
    }

    fn refusal(&self, retry_in: Duration) -> CircuitOpen {
        metrics::counter!(BREAKER_REJECTED, "breaker" => self.name.to_string()).increment(1);
        CircuitOpen {
            name: self.name.clone(),
            retry_in,
        }
    }

    /// Counts the outcome of a call let through by `permit`: failed, or
    /// `None` when it was dropped before it finished.
    fn record(&self, permit: &Permit, failed: Option<bool>) {
        let mut inner = self.lock();
        if inner.generation != permit.generation {
            return;
        }
        enum Next {
            Stay,
            Open { failure_rate: f64, calls: usize },
            Close { probes: usize },
        }
        let next = match &mut inner.phase {
            Phase::Closed(window) => match failed {
                None => Next::Stay,
                Some(failed) => {
                    window.push(failed);
                    let calls = window.outcomes.len();
                    let failure_rate = window.failure_rate();
                    // Only a failure opens it: a dependency that just
                    // answered is not refused on the strength of older calls.
                    if failed
                        && calls >= self.config.min_calls
                        && failure_rate >= self.config.failure_threshold
                    {
                        Next::Open {
                            failure_rate,
                            calls,
                        }
                    } else {
                        Next::Stay
                    }
                }
            },
            Phase::HalfOpen {
                in_flight,
                succeeded,
            } => {
                *in_flight = in_flight.saturating_sub(1);
                match failed {
                    // A probe that never finished says nothing; its slot is free.
                    None => Next::Stay,
                    Some(true) => Next::Open {
                        failure_rate: 1.0 / (*succeeded + 1) as f64,
                        calls: *succeeded + 1,
                    },
                    Some(false) => {
                        *succeeded += 1;
                        if *succeeded >= self.config.half_open_probes {
                            Next::Close { probes: *succeeded }
                        } else {
                            Next::Stay
                        }
                    }
                }
            }
            // Opening bumps the generation, so no permit of this one exists.
            Phase::Open { .. } => Next::Stay,
        };
        match next {
            Next::Stay => {}
            Next::Open {
                failure_rate,
                calls,
            } => self.open(&mut inner, failure_rate, calls),
            Next::Close { probes } => {
                self.transition(&mut inner, Phase::Closed(Window::new(self.config.window)));
                tracing::info!(breaker = %self.name, probes, failure_rate = 0.0, "circuit breaker closed; the dependency answers again");
            }
        }
    }

    fn open(&self, inner: &mut Inner, failure_rate: f64, calls: usize) {
        let until = Instant::now() + self.config.open_for;
        self.transition(inner, Phase::Open { until });
        tracing::warn!(
            breaker = %self.name,
            failure_rate,
            calls,
            open_for_ms = self.config.open_for.as_millis() as u64,
            "circuit breaker opened; calls fail fast until it is retried"
        );
    }

    fn transition(&self, inner: &mut Inner, phase: Phase) {
        let state = match phase {
            Phase::Closed(_) => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        };
        inner.phase = phase;
        inner.generation += 1;
        self.state_tx.send_replace(state);
        // Under the lock, so the gauge ends at the last state.
        metrics::gauge!(BREAKER_STATE, "breaker" => self.name.to_string())
            .set(state.metric_value());
        metrics::counter!(
            BREAKER_TRANSITIONS,
            "breaker" => self.name.to_string(),
            "to" => state.as_str()
        )
        .increment(1);
    }
}

/// A call let through; reports its outcome once, or on drop that it never
/// finished (freeing its probe slot).
struct Permit {
    /// The breaker that let it through.
    core: Arc<Core>,
    /// The breaker's generation when it was let through.
    generation: u64,
    /// Whether it holds one of the half-open probe slots.
    probe: bool,
    /// Whether the outcome was reported.
    finished: bool,
}

impl Permit {
    fn finish(mut self, failed: bool) {
        self.finished = true;
        self.core.record(&self, Some(failed));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.finished && self.probe {
            self.core.record(self, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;

    /// What the fake dependency answers to a request.
    #[derive(Debug, Clone, Copy)]
    enum Answer {
        Ok,
        Fail(Code),
        Hang,
    }

    /// A dependency that answers as each request says, counting the calls
    /// that reached it.
    #[derive(Clone, Default)]
    struct Dependency {
        reached: Arc<AtomicUsize>,
    }

    impl Service<Answer> for Dependency {
        type Response = ();
        type Error = Status;
        type Future = BoxFuture<(), Status>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, answer: Answer) -> Self::Future {
            self.reached.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                match answer {
                    Answer::Ok => Ok(()),
                    Answer::Fail(code) => Err(Status::new(code, "fake")),
                    Answer::Hang => std::future::pending().await,
                }
            })
        }
    }

    type Fake = CircuitBreaker<Dependency, GrpcFailures>;

    /// A breaker over a fake dependency, and how many calls reached it.
    fn breaker(config: BreakerConfig) -> (Fake, Arc<AtomicUsize>) {
        let dependency = Dependency::default();
        let reached = dependency.reached.clone();
        let layer = CircuitBreakerLayer::new("fake", config, GrpcFailures);
        (layer.layer(dependency), reached)
    }

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: 10,
            min_calls: 4,
            failure_threshold: 0.5,
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
        }
    }

    async fn send(svc: &Fake, answer: Answer) -> Result<(), Status> {
        svc.clone().oneshot(answer).await
    }

    /// The refusal in `result`, if the breaker refused the call.
    fn refusal(result: Result<(), Status>) -> Option<CircuitOpen> {
        let status = result.err()?;
        let open = std::error::Error::source(&status)?
            .downcast_ref::<CircuitOpen>()
            .cloned()?;
        assert_eq!(status.code(), Code::Unavailable);
        Some(open)
    }

    /// Opens `svc` (config()) with four unavailable calls.
    async fn open(svc: &Fake) {
        for _ in 0..4 {
            assert!(refusal(send(svc, Answer::Fail(Code::Unavailable)).await).is_none());
        }
        assert_eq!(svc.handle().state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_at_the_threshold_and_not_before_the_minimum_of_calls() {
        let (svc, reached) = breaker(config());
        // Three failures out of three: 100%, but fewer than min_calls.
        for _ in 0..3 {
            let e = send(&svc, Answer::Fail(Code::Unavailable)).await;
            assert!(refusal(e).is_none());
        }
        assert_eq!(svc.handle().state(), BreakerState::Closed);
        // A success never opens it, even at 3 of 4 failed; successes bring
        // the rate down: 3 of 7 failed is under 50%.
        for _ in 0..4 {
            send(&svc, Answer::Ok).await.expect("ok");
        }
        assert_eq!(svc.handle().state(), BreakerState::Closed);
        // 4 of 8 is 50%: open.
        let e = send(&svc, Answer::Fail(Code::DeadlineExceeded)).await;
        assert!(refusal(e).is_none(), "the call that opens it reached it");
        assert_eq!(svc.handle().state(), BreakerState::Open);
        assert_eq!(reached.load(Ordering::SeqCst), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_forgets_old_failures() {
        let (svc, _) = breaker(BreakerConfig {
            window: 4,
            ..config()
        });
        for _ in 0..3 {
            let _ = send(&svc, Answer::Fail(Code::Unavailable)).await;
        }
        // Each success pushes one failure out of the last four calls.
        for _ in 0..4 {
            send(&svc, Answer::Ok).await.expect("ok");
        }
        let _ = send(&svc, Answer::Fail(Code::Unavailable)).await;
        assert_eq!(svc.handle().state(), BreakerState::Closed, "1 of 4");
    }

    #[tokio::test(start_paused = true)]
    async fn fails_fast_while_open_without_calling_the_dependency() {
        let (svc, reached) = breaker(config());
        let mut states = svc.handle().subscribe();
        open(&svc).await;
        assert!(states.has_changed().expect("sender alive"));
        assert_eq!(*states.borrow_and_update(), BreakerState::Open);

        tokio::time::advance(Duration::from_millis(1500)).await;
        let before = Instant::now();
        let open = refusal(send(&svc, Answer::Ok).await).expect("refused");
        assert_eq!(before.elapsed(), Duration::ZERO);
        assert_eq!(open.retry_in, Duration::from_millis(3500));
        assert_eq!(
            Status::from(open.clone()).message(),
            "fake is failing; it will be retried in 3500 ms"
        );
        assert_eq!(
            confab_core::error::ChatError::from(open).code(),
            Code::Unavailable
        );
        for _ in 0..10 {
            assert!(refusal(send(&svc, Answer::Ok).await).is_some());
        }
        assert_eq!(
            reached.load(Ordering::SeqCst),
            4,
            "refused calls never reach it"
        );
        assert_eq!(svc.handle().state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_successful_probe_closes_it() {
        let (svc, reached) = breaker(config());
        open(&svc).await;
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            svc.handle().state(),
            BreakerState::Open,
            "until a call comes"
        );

        // The probe is in flight: half-open, other calls are refused.
        let mut probe_svc = svc.clone();
        let probe = probe_svc.ready().await.expect("ready").call(Answer::Ok);
        assert_eq!(svc.handle().state(), BreakerState::HalfOpen);
        let busy = refusal(send(&svc, Answer::Ok).await).expect("refused");
        assert_eq!(busy.retry_in, Duration::ZERO);
        assert_eq!(
            busy.to_string(),
            "fake is failing; it is being retried now; retry shortly"
        );

        probe.await.expect("probe answered");
        assert_eq!(svc.handle().state(), BreakerState::Closed);
        send(&svc, Answer::Ok).await.expect("closed again");
        assert_eq!(reached.load(Ordering::SeqCst), 4 + 2);
        // A fresh window: one failure after closing does not re-open it.
        let _ = send(&svc, Answer::Fail(Code::Unavailable)).await;
        assert_eq!(svc.handle().state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_it_for_another_period() {
        let (svc, reached) = breaker(config());
        open(&svc).await;
        tokio::time::advance(Duration::from_secs(5)).await;
        let e = send(&svc, Answer::Fail(Code::Unavailable)).await;
        assert!(refusal(e).is_none(), "the probe reached the dependency");
        assert_eq!(svc.handle().state(), BreakerState::Open);
        let open = refusal(send(&svc, Answer::Ok).await).expect("refused");
        assert_eq!(open.retry_in, Duration::from_secs(5));
        assert_eq!(reached.load(Ordering::SeqCst), 5);

        tokio::time::advance(Duration::from_secs(5)).await;
        send(&svc, Answer::Ok).await.expect("second probe");
        assert_eq!(svc.handle().state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn every_probe_must_succeed_when_there_are_several() {
        let (svc, _) = breaker(BreakerConfig {
            half_open_probes: 2,
            ..config()
        });
        open(&svc).await;
        tokio::time::advance(Duration::from_secs(5)).await;
        send(&svc, Answer::Ok).await.expect("first probe");
        assert_eq!(svc.handle().state(), BreakerState::HalfOpen);
        // A refusal about the request shows a healthy dependency.
        let e = send(&svc, Answer::Fail(Code::NotFound)).await;
        assert_eq!(e.map_err(|s| s.code()), Err(Code::NotFound));
        assert_eq!(svc.handle().state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_frees_its_slot() {
        let (svc, _) = breaker(config());
        open(&svc).await;
        tokio::time::advance(Duration::from_secs(5)).await;
        let mut probe_svc = svc.clone();
        let probe = probe_svc.ready().await.expect("ready").call(Answer::Hang);
        assert!(refusal(send(&svc, Answer::Ok).await).is_some());
        drop(probe);
        assert_eq!(svc.handle().state(), BreakerState::HalfOpen);
        send(&svc, Answer::Ok).await.expect("the next probe");
        assert_eq!(svc.handle().state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_about_the_request_never_open_it() {
        let (svc, reached) = breaker(config());
        for code in [
            Code::NotFound,
            Code::PermissionDenied,
            Code::InvalidArgument,
            Code::ResourceExhausted,
        ]
        .into_iter()
        .cycle()
        .take(40)
        {
            let e = send(&svc, Answer::Fail(code)).await;
            assert_eq!(e.map_err(|s| s.code()), Err(code));
        }
        assert_eq!(svc.handle().state(), BreakerState::Closed);
        assert_eq!(reached.load(Ordering::SeqCst), 40);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_answer_from_before_opening_does_not_count() {
        let (svc, _) = breaker(config());
        // A call that started while closed...
        let mut slow_svc = svc.clone();
        let slow = slow_svc.ready().await.expect("ready").call(Answer::Hang);
        open(&svc).await;
        tokio::time::advance(Duration::from_secs(5)).await;
        // ...is not a probe: dropping it leaves the probe slot to a real one.
        drop(slow);
        send(&svc, Answer::Ok).await.expect("probe");
        assert_eq!(svc.handle().state(), BreakerState::Closed);
    }

    #[test]
    fn grpc_evaluator_counts_unreachable_and_slow_only() {
        let counts = |s: &Status| GrpcFailures.is_failure(s);
        assert!(counts(&Status::unavailable("down")));
        assert!(counts(&Status::deadline_exceeded("slow")));
        assert!(counts(&Status::cancelled("Timeout expired")));
        let mut transport = Status::unknown("h2 protocol error");
        transport.set_source(Arc::new(std::io::Error::other("reset")));
        assert!(counts(&transport));
        for s in [
            Status::not_found("x"),
            Status::permission_denied("x"),
            Status::invalid_argument("x"),
            Status::internal("x"),
        ] {
            assert!(!counts(&s), "{s:?}");
        }
        let custom = |e: &std::io::Error| e.kind() == std::io::ErrorKind::TimedOut;
        assert!(custom.is_failure(&std::io::Error::from(std::io::ErrorKind::TimedOut)));
    }

    /// A recorder keeping every counter and gauge by name and labels, e.g.
    /// `confab_breaker_state{breaker=fake}`, for the thread it is set on.
    #[derive(Default)]
    struct Captured(Mutex<std::collections::HashMap<String, Arc<metrics::atomics::AtomicU64>>>);

    impl Captured {
        fn cell(&self, key: &metrics::Key) -> Arc<metrics::atomics::AtomicU64> {
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let id = format!("{}{{{}}}", key.name(), labels.join(","));
            self.0
                .lock()
                .expect("not poisoned")
                .entry(id)
                .or_default()
                .clone()
        }

        fn value(&self, id: &str) -> Option<u64> {
            let cells = self.0.lock().expect("not poisoned");
            cells.get(id).map(|c| c.load(Ordering::SeqCst))
        }

        fn counter(&self, id: &str) -> u64 {
            self.value(id).unwrap_or(0)
        }

        fn gauge(&self, id: &str) -> Option<f64> {
            self.value(id).map(f64::from_bits)
        }
    }

    impl metrics::Recorder for Captured {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(
            &self,
            key: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Counter {
            metrics::Counter::from_arc(self.cell(key))
        }
        fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::from_arc(self.cell(key))
        }
        fn register_histogram(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            metrics::Histogram::noop()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn its_state_transitions_and_refusals_are_metrics() {
        let recorder = Captured::default();
        // This test's runtime runs every call on this thread.
        let _local = metrics::set_default_local_recorder(&recorder);
        const STATE: &str = "confab_breaker_state{breaker=fake}";
        const REJECTED: &str = "confab_breaker_rejected_total{breaker=fake}";
        let to = |state: &str| {
            recorder.counter(&format!(
                "confab_breaker_transitions_total{{breaker=fake,to={state}}}"
            ))
        };
        let (svc, _) = breaker(config());
        assert_eq!(recorder.gauge(STATE), Some(0.0), "closed from the start");
        assert_eq!(recorder.counter(REJECTED), 0);

        open(&svc).await;
        assert_eq!(recorder.gauge(STATE), Some(2.0));
        assert_eq!(to("open"), 1);
        for _ in 0..3 {
            assert!(refusal(send(&svc, Answer::Ok).await).is_some());
        }
        assert_eq!(recorder.counter(REJECTED), 3);

        tokio::time::advance(Duration::from_secs(5)).await;
        let mut probe_svc = svc.clone();
        let probe = probe_svc.ready().await.expect("ready").call(Answer::Ok);
        assert_eq!(recorder.gauge(STATE), Some(1.0));
        assert_eq!(to("half_open"), 1);
        // Refused while the probe is under way: failed fast too.
        assert!(refusal(send(&svc, Answer::Ok).await).is_some());
        assert_eq!(recorder.counter(REJECTED), 4);

        probe.await.expect("probe answered");
        assert_eq!(recorder.gauge(STATE), Some(0.0));
        assert_eq!((to("open"), to("half_open"), to("closed")), (1, 1, 1));
        send(&svc, Answer::Ok).await.expect("closed");
        assert_eq!(recorder.counter(REJECTED), 4, "calls let through are not");
    }

    fn env(vars: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn from_env_defaults_when_unset() {
        let config = BreakerConfig::from_env(&env(&[])).expect("defaults");
        assert_eq!(config, BreakerConfig::default());
        // Empty counts as unset.
        let config = BreakerConfig::from_env(&env(&[(WINDOW_VAR, "")])).expect("defaults");
        assert_eq!(config, BreakerConfig::default());
    }

    #[test]
    fn from_env_reads_every_variable() {
        let config = BreakerConfig::from_env(&env(&[
            (FAILURE_RATE_VAR, "0.25"),
            (WINDOW_VAR, "50"),
            (MIN_CALLS_VAR, " 10 "),
            (OPEN_MS_VAR, "1500"),
            (HALF_OPEN_PROBES_VAR, "3"),
        ]))
        .expect("valid");
        assert_eq!(
            config,
            BreakerConfig {
                window: 50,
                min_calls: 10,
                failure_threshold: 0.25,
                open_for: Duration::from_millis(1500),
                half_open_probes: 3,
            }
        );
        // The bounds are valid; a small window lowers the default minimum.
        let config = BreakerConfig::from_env(&env(&[
            (FAILURE_RATE_VAR, "1"),
            (WINDOW_VAR, "3"),
            (OPEN_MS_VAR, "3600000"),
        ]))
        .expect("valid");
        assert_eq!(
            (config.failure_threshold, config.window, config.min_calls),
            (1.0, 3, 3)
        );
        assert_eq!(config.open_for, Duration::from_secs(3600));
        let config = BreakerConfig::from_env(&env(&[(FAILURE_RATE_VAR, "0")])).expect("valid");
        assert_eq!(config.failure_threshold, 0.0);
    }

    #[test]
    fn from_env_rejects_bad_and_out_of_range_values_naming_the_variable() {
        for (key, value) in [
            (FAILURE_RATE_VAR, "half"),
            (FAILURE_RATE_VAR, "1.5"),
            (FAILURE_RATE_VAR, "-0.1"),
            (FAILURE_RATE_VAR, "NaN"),
            (FAILURE_RATE_VAR, "inf"),
            (FAILURE_RATE_VAR, "50%"),
            (WINDOW_VAR, "0"),
            (WINDOW_VAR, "-1"),
            (WINDOW_VAR, "10001"),
            (WINDOW_VAR, "99999999999999999999999"),
            (MIN_CALLS_VAR, "0"),
            (MIN_CALLS_VAR, "21"),
            (OPEN_MS_VAR, "0"),
            (OPEN_MS_VAR, "3600001"),
            (OPEN_MS_VAR, "5s"),
            (HALF_OPEN_PROBES_VAR, "0"),
            (HALF_OPEN_PROBES_VAR, "1001"),
        ] {
            let err = BreakerConfig::from_env(&env(&[(key, value)]))
                .expect_err(&format!("{key}={value} is refused"));
            assert_eq!((err.key.as_str(), err.value.as_str()), (key, value));
            assert!(err.reason.starts_with("expected "), "{err}");
        }
        let err = BreakerConfig::from_env(&env(&[(WINDOW_VAR, "4"), (MIN_CALLS_VAR, "5")]))
            .expect_err("more than the window");
        assert_eq!(
            err.to_string(),
            "invalid configuration: CONFAB_BREAKER_MIN_CALLS=\"5\": expected a number of calls from 1 to the window (CONFAB_BREAKER_WINDOW=4)"
        );
        let err = BreakerConfig::from_env(&env(&[(FAILURE_RATE_VAR, "2")])).expect_err("over 1");
        assert_eq!(
            err.to_string(),
            "invalid configuration: CONFAB_BREAKER_FAILURE_RATE=\"2\": expected a failure rate from 0 to 1, e.g. 0.5"
        );
    }

    #[test]
    fn settings_are_brought_into_range() {
        let c = BreakerConfig {
            window: 0,
            min_calls: 9,
            half_open_probes: 0,
            ..BreakerConfig::default()
        }
        .normalised();
        assert_eq!((c.window, c.min_calls, c.half_open_probes), (1, 1, 1));
    }
}
