//! `confab-bench`'s idle-stream and history-read measurements, small: idle
//! streams against `confab dev` as a real process, and `GetHistory` through
//! a gateway and history (in this process, over gRPC) on a generated
//! PostgreSQL table. Nothing here asserts a speed.

use confab_auth::Authenticator;
use confab_core::seams::{HistoryApi, MemTopic};
use confab_core::validate::SizeLimits;
use confab_gateway::{ChatService, Hub};
use confab_history::{LocalHistory, PostgresStore, Store};
use confab_history_client::{HistoryClientConfig, RemoteHistory};
use confab_proto::internal::v1::IngressRecord;
use confab_tests::postgres::PgCluster;
use confab_tests::served::Served;
use confab_tests::{free_port, test_gateway_config, DevProcess, SECRET};
use confab_tools::bench::idle::{self, IdleOpts};
use confab_tools::bench::reads::{self, GenerateOpts, ReadOpts};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_idle_streams_over_ten_connections_are_measured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = DevProcess::start(dir.path(), free_port()).expect("start confab dev");
    let report = idle::run(&IdleOpts {
        addr: server.addr,
        server_pid: server.pid(),
        secret: SECRET.into(),
        user_prefix: "idle-".into(),
        streams: 300,
        connections: 10,
        websocket: None,
    })
    .await
    .expect("idle run");
    assert_eq!(report.streams, 300, "{report:?}");
    assert_eq!(report.connections, 10, "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(report.rss_before_kib > 0, "{report:?}");
    assert!(report.rss_after_kib >= report.rss_before_kib, "{report:?}");
    eprintln!("idle: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_idle_websocket_sessions_are_measured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = DevProcess::start(dir.path(), free_port()).expect("start confab dev");
    let report = idle::run(&IdleOpts {
        addr: server.addr,
        server_pid: server.pid(),
        secret: SECRET.into(),
        user_prefix: "idle-ws-".into(),
        streams: 300,
        connections: 1,
        websocket: Some(server.http),
    })
    .await
    .expect("idle run");
    assert_eq!(report.streams, 300, "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(report.rss_after_kib >= report.rss_before_kib, "{report:?}");
    eprintln!("idle over WebSocket: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_of_a_generated_table_are_read_through_the_gateway() {
    let pg = PgCluster::start_local().expect("start PostgreSQL");
    let url = pg.fresh_database().await.expect("fresh database");
    let generated = reads::generate(&GenerateOpts {
        database_url: url.clone(),
        rows: 20_000,
        conversations: 10,
        reader: "bench-reader".into(),
        body_bytes: 100,
    })
    .await
    .expect("generate");
    assert_eq!((generated.rows, generated.conversations), (20_000, 10));
    assert!(generated.table_bytes > 0, "{generated:?}");

    // History on the generated database (its migrations are already
    // applied), served over gRPC, and one gateway reading it.
    let store: Arc<dyn Store> = Arc::new(
        PostgresStore::connect(&url, SizeLimits::default(), 4)
            .await
            .expect("history store"),
    );
    let local: Arc<dyn HistoryApi> = Arc::new(LocalHistory::new(store));
    let history = Served::listen(|listener, signal| {
        confab_history::grpc::server(local).serve(listener, signal)
    })
    .await;

    let remote = RemoteHistory::new(&HistoryClientConfig::new([history.addr().to_string()]))
        .expect("history address");
    // Reads only: nothing consumes the ingress log.
    let (ingress, _partitions) = MemTopic::<IngressRecord>::new(1, 16);
    let gateway = Served::listen(|listener, signal| {
        let service = ChatService::new(
            test_gateway_config(),
            Authenticator::new(SECRET),
            Hub::new("g1"),
            Arc::new(ingress),
            Arc::new(remote),
            signal.clone(),
        );
        confab_gateway::server(service, confab_runtime::transport::Transport::public())
            .serve(listener, signal)
    })
    .await;

    let report = reads::measure(&ReadOpts {
        gateway: gateway.addr(),
        secret: SECRET.into(),
        reader: "bench-reader".into(),
        conversations: 10,
        rows_per_conversation: 2_000,
        page: 50,
        first: 0,
        requests: 500,
        concurrency: 4,
    })
    .await
    .expect("measure");
    eprintln!("reads: {generated:?}\n{report:?}");
    assert_eq!(report.requests, 500, "{report:?}");
    assert_eq!(report.page, 50);
    assert!(report.errors.is_empty(), "{report:?}");
    let l = &report.latency;
    assert_eq!(l.count, 500, "{report:?}");
    assert!(l.p50_us <= l.p99_us && l.p99_us <= l.max_us, "{report:?}");
    // The generated rows follow the read-position model: the reader has
    // read the creation (seq 1), and every TEXT message after it is unread.
    let reader = confab_tests::User::connect(gateway.addr(), "bench-reader").await;
    let listed = reader.list_page("", 0).await.expect("list").conversations;
    assert_eq!(listed.len(), 10);
    for c in &listed {
        assert_eq!((c.read_seq, c.unread_count), (1, 1_999), "{}", c.id);
    }
    // Pages whose every message changed read as history shows an edited
    // message with two reactions.
    reads::change_every_message(&url, "bench-reader", 0, 5)
        .await
        .expect("change every message");
    let page = reader
        .history("bench-read-2", Some(100), None, 50)
        .await
        .expect("a changed page")
        .messages;
    assert_eq!(page.len(), 50);
    for m in &page {
        assert_eq!(m.edit_count, 1, "{m:?}");
        assert!(m.body.ends_with(" (edited)"), "{m:?}");
        let counts: Vec<(&str, u64, bool)> = m
            .reactions
            .iter()
            .map(|r| (r.emoji.as_str(), r.count, r.reacted))
            .collect();
        assert_eq!(
            counts,
            vec![("❤\u{fe0f}", 1, false), ("👍", 1, true)],
            "{m:?}"
        );
    }
    let versions = reader
        .edit_history("bench-read-2", 50)
        .await
        .expect("versions");
    assert_eq!(versions.versions.len(), 2);
    let changed = reads::measure(&ReadOpts {
        gateway: gateway.addr(),
        secret: SECRET.into(),
        reader: "bench-reader".into(),
        conversations: 5,
        rows_per_conversation: 2_000,
        page: 50,
        first: 0,
        requests: 200,
        concurrency: 2,
    })
    .await
    .expect("measure changed pages");
    assert!(changed.errors.is_empty(), "{changed:?}");

    gateway.stop("gateway").await;
    history.stop("history").await;
}
