//! Metrics and health over HTTP: `/metrics` counts gRPC calls by method and
//! code with a latency histogram and open streams, `/livez` answers while
//! the process runs, `/readyz` while it serves gRPC and no longer once
//! shutdown has started. In-process (embedded mode with the metrics server
//! beside it) and as the `confab` binary with `CONFAB_METRICS_LISTEN`.
//!
//! The distributed services as real binaries on a real broker and
//! PostgreSQL: the product metrics (messages accepted, sequenced, refused,
//! delivered, end-to-end latency, Kafka produce latency, consumer lag and
//! rebalances, database batches, transactions and pool, sessions, router
//! fan-out) after a little traffic, and `/readyz` following the database
//! and the broker through a crash and a restart of each (with the lag of a
//! message waiting for the database).

use confab_proto::v1::{client_frame, Ping};
use confab_tests::broker::Broker;
use confab_tests::http::{self, get, wait_status};
use confab_tests::postgres::PgCluster;
use confab_tests::served::Served;
use confab_tests::stack::{Backing, ProcStack, Role};
use confab_tests::{confab_bin, free_port, test_config, DevProcess, User, DEADLINE};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use tokio::time::Instant;

/// The value of the sample `name{labels...}` in a Prometheus text page
/// (labels in any order; the sample may have more labels than given).
fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            if metric != name {
                return None;
            }
            let rest = rest.strip_suffix('}')?;
            let have: Vec<&str> = rest.split(',').collect();
            labels
                .iter()
                .all(|(k, v)| have.contains(&format!("{k}=\"{v}\"").as_str()))
                .then(|| value.parse().ok())?
        })
}

async fn scrape(addr: SocketAddr) -> String {
    let (status, page) = get(addr, "/metrics").await.expect("scrape /metrics");
    assert_eq!(status, 200, "GET /metrics: {page}");
    page
}

/// Scrapes `addr` until `done(page)` holds; the page. Fails after
/// [`DEADLINE`], naming `what`.
async fn wait_page(addr: SocketAddr, what: &str, done: impl Fn(&str) -> bool) -> String {
    let every = Duration::from_millis(20);
    let waited = http::wait_for(addr, "/metrics", DEADLINE, every, |status, page| {
        status == 200 && done(page)
    })
    .await;
    waited
        .map(|(_, page)| page)
        .unwrap_or_else(|e| panic!("{what} did not happen in time: {e}"))
}

/// Scrapes until `name{labels}` has the value `want`.
async fn wait_sample(addr: SocketAddr, name: &str, labels: &[(&str, &str)], want: f64) -> String {
    wait_page(addr, &format!("{name}{labels:?} reaching {want}"), |page| {
        sample(page, name, labels) == Some(want)
    })
    .await
}

const CHAT: (&str, &str) = ("service", "confab.v1.Chat");

#[tokio::test]
async fn embedded_mode_serves_metrics_and_health() {
    confab_tests::init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = test_config(dir.path(), &[]);

    let http_server = Served::listen(|listener, signal| {
        confab_runtime::endpoints::serve_http(listener, config.readiness.clone(), signal)
    })
    .await;
    let http = http_server.addr();
    let mut server =
        Served::listen(|listener, signal| confab::dev::run(config, listener, signal)).await;
    let grpc = server.addr();

    assert_eq!(get(http, "/livez").await.expect("livez").0, 200);
    wait_status(http, "/readyz", 200).await;
    // The process's own resources, as Prometheus clients name them (CPU
    // time may still round to 0 s this early).
    let page = scrape(http).await;
    for (name, least) in [
        ("process_cpu_seconds_total", 0.0),
        ("process_resident_memory_bytes", 1.0),
        ("process_open_fds", 1.0),
        ("process_threads", 1.0),
    ] {
        let value = page
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok());
        assert!(value.is_some_and(|v| v >= least), "{name} in:\n{page}");
    }

    // Two successful calls, one refused, one that does not decode, one
    // stream.
    let alice = User::connect(grpc, "alice").await;
    for _ in 0..2 {
        alice.list().await.expect("list as alice");
    }
    let mallory = User::with_token(grpc, "mallory", "not-a-token").await;
    let refused = mallory.list().await.expect_err("a bad token is refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    // A request that does not decode is the client's error, not INTERNAL.
    let undecodable = confab_tests::wire::call(
        grpc,
        "/confab.v1.Chat/SendMessage",
        &format!("Bearer {}", confab_tests::client::token("alice")),
        &[],
        confab_tests::wire::frame(0, &[0x0a, 0x09, b'c']),
    )
    .await;
    assert_eq!(
        undecodable.status.code(),
        tonic::Code::InvalidArgument,
        "{undecodable:?}"
    );
    let session = alice
        .session(client_frame::Frame::Ping(Ping { nonce: 1 }))
        .await
        .expect("connect");

    let list = [CHAT, ("method", "ListConversations")];
    let connect = [CHAT, ("method", "Connect")];
    let page = wait_sample(http, "confab_grpc_streams_open", &connect, 1.0).await;
    let ok = [CHAT, ("method", "ListConversations"), ("code", "OK")];
    let unauth = [
        CHAT,
        ("method", "ListConversations"),
        ("code", "UNAUTHENTICATED"),
    ];
    assert_eq!(
        sample(&page, "confab_grpc_requests_total", &ok),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, "confab_grpc_requests_total", &unauth),
        Some(1.0),
        "{page}"
    );
    let send = |code| [CHAT, ("method", "SendMessage"), ("code", code)];
    assert_eq!(
        sample(
            &page,
            "confab_grpc_requests_total",
            &send("INVALID_ARGUMENT")
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, "confab_grpc_requests_total", &send("INTERNAL")),
        None,
        "{page}"
    );
    assert_eq!(
        sample(&page, "confab_grpc_request_duration_seconds_count", &list),
        Some(3.0),
        "{page}"
    );
    let inf = [CHAT, ("method", "ListConversations"), ("le", "+Inf")];
    assert_eq!(
        sample(&page, "confab_grpc_request_duration_seconds_bucket", &inf),
        Some(3.0),
        "{page}"
    );
    assert!(
        sample(&page, "confab_grpc_request_duration_seconds_sum", &list).is_some_and(|s| s > 0.0),
        "{page}"
    );
    assert!(
        page.contains("# TYPE confab_grpc_request_duration_seconds histogram"),
        "{page}"
    );
    assert_eq!(
        sample(&page, "confab_grpc_streams_opened_total", &connect),
        Some(1.0),
        "{page}"
    );
    // Streams are not in the latency histogram: their length is the session's.
    assert_eq!(
        sample(
            &page,
            "confab_grpc_request_duration_seconds_count",
            &connect
        ),
        None,
        "{page}"
    );
    // No user id anywhere in the labels.
    assert!(
        !page.contains("alice") && !page.contains("mallory"),
        "{page}"
    );

    // The client ends its stream: the gauge goes down, the call is counted.
    drop(session);
    let page = wait_sample(http, "confab_grpc_streams_open", &connect, 0.0).await;
    assert_eq!(
        sample(&page, "confab_grpc_requests_total", &connect)
            .expect("the finished stream is counted"),
        1.0,
        "{page}"
    );

    // Not ready from the moment shutdown starts; still live.
    server.fire();
    wait_status(http, "/readyz", 503).await;
    server.stop("server").await;
    assert_eq!(get(http, "/readyz").await.expect("readyz").0, 503);
    assert_eq!(get(http, "/livez").await.expect("livez").0, 200);
    assert_eq!(get(http, "/nope").await.expect("404").0, 404);

    http_server.stop("metrics server").await;
}

#[tokio::test]
async fn confab_binary_serves_metrics_with_confab_metrics_listen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let grpc = free_port();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let http_text = http.to_string();
    let mut dev = DevProcess::start_with(
        dir.path(),
        grpc,
        &[("CONFAB_METRICS_LISTEN", &http_text)],
        None,
    )
    .expect("start confab dev");

    wait_status(http, "/readyz", 200).await;
    assert_eq!(get(http, "/livez").await.expect("livez").0, 200);

    let bob = User::connect(dev.addr, "bob").await;
    bob.list().await.expect("list as bob");
    let eve = User::with_token(dev.addr, "eve", "forged").await;
    let refused = eve.list().await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let unauth = [
        CHAT,
        ("method", "ListConversations"),
        ("code", "UNAUTHENTICATED"),
    ];
    let page = wait_sample(http, "confab_grpc_requests_total", &unauth, 1.0).await;
    let ok = [CHAT, ("method", "ListConversations"), ("code", "OK")];
    assert_eq!(
        sample(&page, "confab_grpc_requests_total", &ok),
        Some(1.0),
        "{page}"
    );
    let list = [CHAT, ("method", "ListConversations")];
    assert_eq!(
        sample(&page, "confab_grpc_request_duration_seconds_count", &list),
        Some(2.0),
        "{page}"
    );

    // SIGTERM: not ready (while the drain lasts), then the process exits 0.
    dev.terminate();
    let deadline = Instant::now() + DEADLINE;
    let mut went_unready = false;
    let exit = loop {
        if let Some(exit) = dev.exited() {
            break exit;
        }
        // The signal takes a moment to be handled; once the process says it
        // is not ready, it must never say ready again before it exits.
        if let Ok((code, _)) = get(http, "/readyz").await {
            if code == 503 {
                went_unready = true;
            }
            assert!(
                !(went_unready && code == 200),
                "/readyz went back to 200 during shutdown"
            );
        }
        assert!(
            Instant::now() < deadline,
            "confab dev did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(exit.code(), Some(0), "confab dev exit status");
}

#[test]
fn a_service_binary_refuses_a_bad_metrics_address() {
    let confab = confab_bin();
    let history = confab.with_file_name("confab-history");
    assert!(
        history.exists(),
        "{} is missing: run `cargo build -p confab-history` (make test does)",
        history.display()
    );
    let mut cmd = Command::new(history);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CONFAB_")) {
        cmd.env_remove(k);
    }
    let out = cmd
        .env("CONFAB_DATABASE_URL", "postgres://127.0.0.1:1/confab")
        .env(
            "CONFAB_SERVICE_TOKEN",
            confab_tests::topology::SERVICE_TOKEN,
        )
        .env("CONFAB_LISTEN", "127.0.0.1:0")
        .env("CONFAB_METRICS_LISTEN", "not an address")
        .output()
        .expect("run confab-history");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr: {stderr}");
    assert!(stderr.contains("CONFAB_METRICS_LISTEN"), "stderr: {stderr}");
}

/// Partitions of each topic in these stacks.
const PARTITIONS: i32 = 2;

/// History, a router and a gateway as real binaries on `broker` and the
/// database at `database_url`, each serving metrics on its own port;
/// returned once each says it is ready.
async fn start_stack(broker: &Broker, database_url: &str) -> ProcStack {
    let stack = ProcStack::builder("metrics")
        .partitions(PARTITIONS as u32)
        .log("info")
        .metrics()
        .start(broker, database_url);
    stack.wait_ready(DEADLINE).await;
    stack
}

/// The metrics address of the service of `role`.
fn metrics(stack: &ProcStack, role: Role) -> SocketAddr {
    stack.first(role).metrics_addr()
}

/// Polls `/readyz` of the service of `role` until it is 200 (`ready`) or
/// 503 with a body naming `failing`; how long that took. Fails after
/// [`DEADLINE`].
async fn wait_ready(stack: &ProcStack, role: Role, ready: bool, failing: &str) -> Duration {
    let waited = http::wait_for(
        metrics(stack, role),
        "/readyz",
        DEADLINE,
        Duration::from_millis(50),
        |status, body| match status {
            200 => ready,
            503 => !ready && body.contains(failing),
            _ => false,
        },
    )
    .await;
    waited.map(|(took, _)| took).unwrap_or_else(|e| {
        panic!(
            "{}'s /readyz did not become {} in time: {e}; log:\n{}",
            role.name(),
            if ready {
                "ready".to_string()
            } else {
                format!("not ready naming {failing:?}")
            },
            stack.first(role).tail(30)
        )
    })
}

/// Every service becomes ready (`ready`) or not ready naming `failing`,
/// each in less than `within` (`how`: what that means, for the failure).
async fn all_become(stack: &ProcStack, ready: bool, failing: &str, within: Duration, how: &str) {
    for role in Role::ALL {
        let took = wait_ready(stack, role, ready, failing).await;
        assert!(took < within, "{} {how} after {took:?}", role.name());
    }
}

/// Scrapes the service of `role` until `done(page)` holds; the page.
async fn wait_role_page(
    stack: &ProcStack,
    role: Role,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    wait_page(
        metrics(stack, role),
        &format!("{}: {what}", role.name()),
        done,
    )
    .await
}

/// The consumer lag of `group` on each partition, as `page` shows it
/// (`None`: no such series).
fn lags(page: &str, group: &str) -> Vec<Option<f64>> {
    (0..PARTITIONS)
        .map(|part| {
            let labels = [("group", group), ("partition", &part.to_string())];
            sample(page, "confab_kafka_consumer_lag_records", &labels)
        })
        .collect()
}

/// Scrapes the service of `role` until its consumer group (named like the
/// role) has a lag of 0 on every partition; the page.
async fn wait_no_lag(stack: &ProcStack, role: Role, what: &str) -> String {
    wait_role_page(stack, role, what, |p| {
        lags(p, role.name()).iter().all(|lag| *lag == Some(0.0))
    })
    .await
}

/// `sample`, or 0 when the series is absent.
fn value(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(page, name, labels).unwrap_or(0.0)
}

#[tokio::test]
async fn distributed_services_count_messages_kafka_database_sessions_and_fanout() {
    let backing = Backing::start().await;
    let stack = start_stack(&backing.broker, &backing.database_url).await;

    // bob listens; alice creates a group with bob and sends N messages;
    // carol, not a member, tries once.
    const N: usize = 6;
    let addr = stack.gateway_addr(0);
    let (alice, bob, carol) = (
        User::connect(addr, "alice").await,
        User::connect(addr, "bob").await,
        User::connect(addr, "carol").await,
    );
    let mut live = bob.live().await;
    let conv = alice.group("metrics", &["bob"]).await;
    let mut last = 0;
    for i in 0..N {
        last = alice
            .send(&conv.id, &format!("m{i}"), "hello")
            .await
            .expect("send")
            .seq;
    }
    let refused = carol
        .send(&conv.id, "c1", "let me in")
        .await
        .expect_err("carol is not a member");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let (got, _) = live.messages_until(&conv.id, last).await.expect("live");
    assert!(got.len() > N, "bob got the creation and every message live");

    // Gateway: accepted writes (the create and N sends, and carol's, which
    // history refused), deliveries, end-to-end latency, produce latency,
    // sessions.
    let n = N as f64;
    let page = wait_role_page(&stack, Role::Gateway, "deliveries counted", |p| {
        value(p, "confab_messages_delivered_total", &[]) >= n + 1.0
    })
    .await;
    assert!(
        value(&page, "confab_messages_accepted_total", &[]) >= n + 2.0,
        "{page}"
    );
    assert!(
        value(&page, "confab_message_e2e_seconds_count", &[]) >= n + 1.0,
        "{page}"
    );
    let e2e_sum = value(&page, "confab_message_e2e_seconds_sum", &[]);
    assert!(
        (0.0..DEADLINE.as_secs_f64() * (n + 1.0)).contains(&e2e_sum),
        "plausible end-to-end latencies: {page}"
    );
    assert!(
        page.contains("# TYPE confab_message_e2e_seconds histogram"),
        "{page}"
    );
    let ingress = [("topic_kind", "ingress")];
    assert!(
        value(&page, "confab_kafka_produce_seconds_count", &ingress) >= n + 2.0,
        "{page}"
    );
    assert!(
        value(
            &page,
            "confab_kafka_produce_seconds_bucket",
            &[("topic_kind", "ingress"), ("le", "+Inf")]
        ) >= n + 2.0,
        "{page}"
    );
    assert_eq!(
        sample(&page, "confab_sessions_open", &[]),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, "confab_users_online", &[]),
        Some(1.0),
        "{page}"
    );

    // History: sequenced (the creation's system message and N sends),
    // refused by reason, batches and transactions, the pool, produce
    // latency of outcomes, lag of every ingress partition, rebalances.
    let page = wait_no_lag(&stack, Role::History, "lag of every partition back to 0").await;
    assert!(
        value(&page, "confab_messages_sequenced_total", &[]) >= n + 1.0,
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            "confab_messages_rejected_total",
            &[("reason", "not_member")]
        ),
        Some(1.0),
        "{page}"
    );
    let batches = value(&page, "confab_db_batch_records_count", &[]);
    assert!(batches >= 1.0, "{page}");
    let records = value(&page, "confab_db_batch_records_sum", &[]);
    assert!(records >= n + 2.0 && records >= batches, "{page}");
    assert!(
        value(
            &page,
            "confab_db_transaction_seconds_count",
            &[("result", "ok")]
        ) >= batches,
        "{page}"
    );
    assert_eq!(
        sample(&page, "confab_db_pool_connections_max", &[]),
        Some(8.0),
        "the default pool: {page}"
    );
    let idle = sample(&page, "confab_db_pool_connections", &[("state", "idle")]);
    let in_use = sample(&page, "confab_db_pool_connections", &[("state", "in_use")]);
    assert!(
        idle.zip(in_use)
            .is_some_and(|(i, u)| i + u >= 1.0 && i + u <= 8.0),
        "{page}"
    );
    assert!(
        value(
            &page,
            "confab_kafka_produce_seconds_count",
            &[("topic_kind", "messages")]
        ) >= n + 2.0,
        "{page}"
    );
    assert!(
        value(
            &page,
            "confab_kafka_rebalances_total",
            &[("group", "history")]
        ) >= 1.0,
        "{page}"
    );

    // Router: fan-out (the creation and N messages to both members), lag,
    // rebalances.
    let page = wait_no_lag(&stack, Role::Router, "lag of every partition back to 0").await;
    let routed = value(&page, "confab_router_fanout_recipients_count", &[]);
    assert!(routed >= n + 1.0, "{page}");
    assert_eq!(
        value(&page, "confab_router_fanout_recipients_sum", &[]),
        2.0 * routed,
        "every message went to alice and bob: {page}"
    );
    assert!(
        value(
            &page,
            "confab_kafka_rebalances_total",
            &[("group", "router")]
        ) >= 1.0,
        "{page}"
    );

    // Nobody's id is a label anywhere.
    for role in Role::ALL {
        let page = scrape(metrics(&stack, role)).await;
        for id in ["alice", "bob", "carol", conv.id.as_str()] {
            assert!(!page.contains(id), "{} labels {id}: {page}", role.name());
        }
    }

    // bob leaves: no session, nobody online.
    drop(live);
    wait_role_page(&stack, Role::Gateway, "the session closed", |p| {
        sample(p, "confab_sessions_open", &[]) == Some(0.0)
            && sample(p, "confab_users_online", &[]) == Some(0.0)
    })
    .await;
}

/// `grpc.health.v1.Health/Check` of the whole server at `addr` (health
/// needs no service token).
async fn grpc_health(addr: &str) -> i32 {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect for a health check");
    let mut client = HealthClient::new(channel);
    client
        .check(HealthCheckRequest {
            service: "confab.internal.v1.HistoryReader".into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status
}

/// `ServingStatus::Serving` and `NotServing` as numbers.
const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

#[tokio::test]
async fn readiness_follows_the_database_and_the_broker() {
    // History's PostgreSQL is stopped and started here; the broker keeps
    // its records in another cluster, so that it survives its restart.
    let pg = PgCluster::start_local().expect("postgres");
    let database_url = pg.fresh_database().await.expect("database");
    let broker_pg = PgCluster::start().expect("postgres for the broker");
    let mut broker = Broker::start_postgres(&broker_pg).await;
    let stack = start_stack(&broker, &database_url).await;
    let alice = User::connect(stack.gateway_addr(0), "alice").await;
    let conv = alice.group("outage", &["bob"]).await;

    // PostgreSQL crashes: history says so within a few seconds; the others
    // do not depend on it directly.
    pg.stop_immediate();
    let took = wait_ready(&stack, Role::History, false, "database").await;
    assert!(took < Duration::from_secs(10), "noticed after {took:?}");
    let (status, body) = get(metrics(&stack, Role::History), "/readyz")
        .await
        .expect("readyz");
    assert_eq!(status, 503);
    assert!(!body.contains("kafka"), "the broker is fine: {body}");
    // grpc.health.v1 says the same.
    assert_eq!(
        grpc_health(&stack.first(Role::History).addr).await,
        NOT_SERVING
    );
    for role in [Role::Router, Role::Gateway] {
        assert_eq!(
            get(metrics(&stack, role), "/readyz")
                .await
                .expect("readyz")
                .0,
            200
        );
    }
    // A message sent meanwhile waits in the ingress topic: history's lag
    // shows it although its sequencer is stuck.
    let sender = User::connect(stack.gateway_addr(0), "alice").await;
    let conv_id = conv.id.clone();
    let waiting = tokio::spawn(async move { sender.send(&conv_id, "during", "stuck").await });
    wait_role_page(
        &stack,
        Role::History,
        "lag while the database is down",
        |p| {
            lags(p, "history")
                .iter()
                .any(|lag| lag.unwrap_or(0.0) >= 1.0)
        },
    )
    .await;
    pg.start_again();
    let took = wait_ready(&stack, Role::History, true, "").await;
    assert!(took < Duration::from_secs(10), "recovered after {took:?}");
    assert_eq!(grpc_health(&stack.first(Role::History).addr).await, SERVING);
    // The send (or its retry, same client_msg_id) is applied, and the lag
    // is gone.
    if !matches!(waiting.await, Ok(Ok(_))) {
        alice
            .send(&conv.id, "during", "stuck")
            .await
            .expect("the retry after the outage");
    }
    wait_no_lag(&stack, Role::History, "no lag after the outage").await;

    // The broker dies: every service says so; back when it is.
    broker.kill9();
    all_become(&stack, false, "kafka", Duration::from_secs(10), "noticed").await;
    broker.restart().await;
    all_become(&stack, true, "", Duration::from_secs(15), "recovered").await;

    // And it still works end to end.
    let alice = User::connect(stack.gateway_addr(0), "alice").await;
    let conv = alice.group("after", &["bob"]).await;
    alice
        .send(&conv.id, "a1", "still here")
        .await
        .expect("send");
}
