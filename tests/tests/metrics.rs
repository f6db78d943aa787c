//! Metrics and health over HTTP: `/metrics` counts gRPC calls by method and
//! code with a latency histogram and open streams, `/livez` answers while
//! the process runs, `/readyz` while it serves gRPC and no longer once
//! shutdown has started. In-process (embedded mode with the metrics server
//! beside it) and as the `confab` binary with `CONFAB_METRICS_LISTEN`.

use confab_common::metrics;
use confab_common::shutdown;
use confab_proto::v1::{client_frame, ListConversationsRequest, Ping};
use confab_tests::{confab_bin, free_port, test_config, User, DEADLINE, SECRET};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// One `GET` over plain HTTP/1.1: the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head:?}")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `path` until its status is `want` (connection errors count as "not
/// yet"); fails after [`DEADLINE`].
async fn wait_status(addr: SocketAddr, path: &str, want: u16) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let got = get(addr, path).await;
        if matches!(got, Ok((status, _)) if status == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} on {addr} did not answer {want} in time: last {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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

/// Scrapes until `name{labels}` has the value `want`.
async fn wait_sample(addr: SocketAddr, name: &str, labels: &[(&str, &str)], want: f64) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let page = scrape(addr).await;
        if sample(&page, name, labels) == Some(want) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} did not reach {want} in time; page:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const CHAT: (&str, &str) = ("service", "confab.v1.Chat");

#[tokio::test]
async fn embedded_mode_serves_metrics_and_health() {
    confab_tests::init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = test_config(dir.path(), &[]);

    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind metrics");
    let http = http_listener.local_addr().expect("addr");
    let (http_trigger, http_signal) = shutdown::channel();
    let http_task = tokio::spawn(metrics::serve_http(
        http_listener,
        metrics::process_readiness(),
        http_signal,
    ));

    let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind grpc");
    let grpc = grpc_listener.local_addr().expect("addr");
    let (trigger, signal) = shutdown::channel();
    let server = tokio::spawn(confab::dev::run(config, grpc_listener, signal));

    assert_eq!(get(http, "/livez").await.expect("livez").0, 200);
    wait_status(http, "/readyz", 200).await;

    // Two successful calls, one refused, one stream.
    let alice = User::connect(grpc, "alice").await;
    for _ in 0..2 {
        alice
            .client
            .clone()
            .list_conversations(alice.req(ListConversationsRequest {}))
            .await
            .expect("list as alice");
    }
    let mallory = User::with_token(grpc, "mallory", "not-a-token").await;
    let refused = mallory
        .client
        .clone()
        .list_conversations(mallory.req(ListConversationsRequest {}))
        .await
        .expect_err("a bad token is refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
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
    trigger.fire();
    wait_status(http, "/readyz", 503).await;
    let result = tokio::time::timeout(DEADLINE, server).await;
    assert!(
        matches!(result, Ok(Ok(Ok(())))),
        "server stopped cleanly: {result:?}"
    );
    assert_eq!(get(http, "/readyz").await.expect("readyz").0, 503);
    assert_eq!(get(http, "/livez").await.expect("livez").0, 200);
    assert_eq!(get(http, "/nope").await.expect("404").0, 404);

    http_trigger.fire();
    let stopped = tokio::time::timeout(DEADLINE, http_task).await;
    assert!(
        matches!(stopped, Ok(Ok(Ok(())))),
        "metrics server stopped: {stopped:?}"
    );
}

#[tokio::test]
async fn confab_binary_serves_metrics_with_confab_metrics_listen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let child = Command::new(confab_bin())
        .args(["dev", "--listen", &grpc.to_string(), "--data-dir"])
        .arg(dir.path())
        .env("CONFAB_JWT_SECRET", SECRET)
        .env("CONFAB_METRICS_LISTEN", http.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn confab dev");
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = child.id();
    let mut child = Reap(child);

    wait_status(http, "/readyz", 200).await;
    assert_eq!(get(http, "/livez").await.expect("livez").0, 200);

    let bob = User::connect(grpc, "bob").await;
    bob.client
        .clone()
        .list_conversations(bob.req(ListConversationsRequest {}))
        .await
        .expect("list as bob");
    let eve = User::with_token(grpc, "eve", "forged").await;
    let refused = eve
        .client
        .clone()
        .list_conversations(eve.req(ListConversationsRequest {}))
        .await
        .expect_err("refused");
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
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let deadline = Instant::now() + DEADLINE;
    let mut went_unready = false;
    let exit = loop {
        if let Some(exit) = child.0.try_wait().expect("try_wait") {
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
