//! The history client's circuit breaker over real sockets: once an address
//! has failed often enough, calls to it are refused at once with UNAVAILABLE
//! saying when history will be retried, and the address is used again as soon
//! as a history server answers on it. Its state and refusals show in the
//! Prometheus metrics.

use confab_core::error::ChatError;
use confab_core::seams::HistoryApi;
use confab_history::LocalHistory;
use confab_history_client::{HistoryClientConfig, RemoteHistory, HISTORY_UNAVAILABLE};
use confab_layers::breaker::{BreakerConfig, BreakerState};
use confab_tests::free_port;
use confab_tests::served::{sqlite_store, Served};
use confab_tests::topology::{attach_client, fast_attach};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Code, Status};

/// What a refused call says, up to the time until the retry.
const REFUSED: &str = "history is failing; it will be retried in ";

fn client(addr: &str, request_timeout: Duration, open_for: Duration) -> RemoteHistory {
    let mut config = HistoryClientConfig::new([addr]);
    config.connect_timeout = Duration::from_secs(5);
    config.request_timeout = request_timeout;
    config.breaker = BreakerConfig {
        window: 10,
        min_calls: 3,
        failure_threshold: 0.5,
        open_for,
        half_open_probes: 1,
    };
    RemoteHistory::new(&config).expect("history address")
}

/// Calls `remote` once, returning the error and how long the call took.
async fn timed_call(remote: &RemoteHistory) -> (ChatError, Duration) {
    let started = Instant::now();
    let err = remote
        .conversation("grp-none")
        .await
        .expect_err("no conversation is there");
    (err, started.elapsed())
}

fn state(remote: &RemoteHistory) -> BreakerState {
    remote.breakers().next().expect("one address").state()
}

/// The value of the sample of `name` with (at least) `labels` in what
/// `/metrics` would serve now.
fn sample(name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = confab_runtime::recorder::install().render();
    let prefix = format!("{name}{{");
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(&prefix)?;
        let (set, value) = rest.rsplit_once("} ")?;
        labels
            .iter()
            .all(|(k, v)| set.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_history_fails_fast_once_its_breaker_opens_and_recovers_when_it_comes_back() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // The recorder first, so that the breaker's first state is recorded.
    confab_runtime::recorder::install();
    let remote = client(&addr, Duration::from_secs(5), Duration::from_secs(1));
    let mut states = remote.breakers().next().expect("one address").subscribe();
    let name = format!("history {addr}");
    let breaker = [("breaker", name.as_str())];
    let to = |state: &'static str| {
        sample(
            "confab_breaker_transitions_total",
            &[("breaker", name.as_str()), ("to", state)],
        )
    };
    assert_eq!(sample("confab_breaker_state", &breaker), Some(0.0));

    // Nothing listens: each refused connection is a failure; the third opens
    // the breaker.
    for _ in 0..3 {
        let (err, _) = timed_call(&remote).await;
        assert_eq!(err, ChatError::Unavailable(HISTORY_UNAVAILABLE.into()));
    }
    assert_eq!(state(&remote), BreakerState::Open);
    assert_eq!(*states.borrow_and_update(), BreakerState::Open);
    assert_eq!(sample("confab_breaker_state", &breaker), Some(2.0));
    assert_eq!(to("open"), Some(1.0));

    // Open: refused at once, far within the 5 s connect timeout, and the
    // client of a gateway would see UNAVAILABLE saying when to come back.
    for _ in 0..5 {
        let (err, took) = timed_call(&remote).await;
        assert!(err.to_string().starts_with(REFUSED), "{err}");
        assert!(took < Duration::from_millis(500), "refusal took {took:?}");
        let status = Status::from(err);
        assert_eq!(status.code(), Code::Unavailable);
    }
    assert_eq!(sample("confab_breaker_rejected_total", &breaker), Some(5.0));

    // History comes up on that address.
    let dir = tempfile::tempdir().expect("temp dir");
    let history: Arc<dyn HistoryApi> = Arc::new(LocalHistory::new(sqlite_store(dir.path()).await));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the history port");
    let server = Served::spawn_on(listener, |listener, signal| {
        confab_history::grpc::server(history).serve(listener, signal)
    });

    // After the open period a probe reaches it, and it answers for itself.
    let deadline = Instant::now() + Duration::from_secs(15);
    let answer = loop {
        let (err, _) = timed_call(&remote).await;
        if err.code() != Code::Unavailable {
            break err;
        }
        assert!(
            Instant::now() < deadline,
            "history still unavailable: {err}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(answer, ChatError::no_conversation("grp-none"));
    assert_eq!(state(&remote), BreakerState::Closed);
    assert_eq!(*states.borrow_and_update(), BreakerState::Closed);
    assert_eq!(sample("confab_breaker_state", &breaker), Some(0.0));
    // Each half-open ended in a close or, if a probe found history not
    // ready yet, in opening again.
    assert_eq!(to("closed"), Some(1.0));
    assert!(to("half_open") >= Some(1.0));
    assert_eq!(to("open"), to("half_open"));

    // Answers about the request do not count against history.
    for _ in 0..10 {
        let (err, _) = timed_call(&remote).await;
        assert_eq!(err, ChatError::no_conversation("grp-none"));
    }
    assert_eq!(state(&remote), BreakerState::Closed);

    server.stop("history").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_that_hangs_is_refused_at_once_instead_of_waited_on() {
    // Accepts connections (the kernel does, into the backlog) and never
    // answers: every call waits for the whole request timeout.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = hang.local_addr().expect("address").to_string();
    let timeout = Duration::from_millis(1500);
    let remote = client(&addr, timeout, Duration::from_secs(30));

    for _ in 0..3 {
        let (err, took) = timed_call(&remote).await;
        assert_eq!(err.code(), Code::Unavailable);
        assert!(took >= timeout, "answered after {took:?}: {err}");
    }
    assert_eq!(state(&remote), BreakerState::Open);

    let (err, took) = timed_call(&remote).await;
    assert!(err.to_string().starts_with(REFUSED), "{err}");
    assert!(took < Duration::from_millis(500), "refusal took {took:?}");
    drop(hang);
}

/// The gateway's links to routers go through a breaker too: a router that
/// keeps refusing opens it (a metric and a log line), and the gateway
/// attaches once the router is back and a probe gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_that_refuses_attaches_opens_its_breaker_until_it_is_back() {
    use confab_gateway::router_links::AttachConfig;
    use confab_router::gateway_links::{GatewayLinks, LinkConfig};
    confab_runtime::recorder::install();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let name = format!("router {addr}");
    let hub = confab_gateway::Hub::new("gw-breaker");
    let attach = attach_client(
        &hub,
        AttachConfig {
            backoff_max: Duration::from_millis(50),
            breaker: BreakerConfig {
                window: 3,
                min_calls: 3,
                failure_threshold: 0.5,
                open_for: Duration::from_millis(300),
                half_open_probes: 1,
            },
            ..fast_attach([addr.clone()])
        },
    );
    // Nobody listens: after three refused connections the breaker opens.
    confab_tests::wait_until("the router breaker to open", || {
        sample("confab_breaker_state", &[("breaker", &name)]) == Some(2.0)
    })
    .await;
    assert!(
        sample(
            "confab_breaker_transitions_total",
            &[("breaker", &name), ("to", "open")]
        )
        .is_some_and(|n| n >= 1.0),
        "the opening is counted"
    );
    // The router comes up on that address: a probe attaches, the breaker closes.
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    let links = GatewayLinks::new(LinkConfig::default());
    let router = Served::spawn_on(listener, |listener, signal| {
        confab_router::gateway_links::server(links.clone(), signal.clone()).serve(listener, signal)
    });
    confab_tests::wait_until("the gateway to attach to the router that came back", || {
        hub.attached_routers() == 1 && links.gateways() == vec!["gw-breaker".to_string()]
    })
    .await;
    assert_eq!(
        sample("confab_breaker_state", &[("breaker", &name)]),
        Some(0.0),
        "closed again"
    );
    attach.stop("the attach client").await;
    router.stop("the router").await;
}
