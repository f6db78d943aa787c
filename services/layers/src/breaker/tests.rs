//! The breaker's unit tests: opening, failing fast, probes, which errors
//! count, its metrics, and its settings from the environment.

use super::layer::BoxFuture;
use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tonic::{Code, Status};
use tower::ServiceExt;
use tower::{Layer, Service};

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

/// Opens `svc`'s breaker, then lets its open period (of [`config`]) pass:
/// the next call is a probe.
async fn open_for_a_probe(svc: &Fake) {
    open(svc).await;
    tokio::time::advance(config().open_for).await;
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
    open_for_a_probe(&svc).await;
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
    open_for_a_probe(&svc).await;
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
    open_for_a_probe(&svc).await;
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
    open_for_a_probe(&svc).await;
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
    open_for_a_probe(&svc).await;
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
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
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
