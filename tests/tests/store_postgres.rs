//! The PostgreSQL history store against a real PostgreSQL server: a throwaway
//! cluster started by each test (or the server named by `DATABASE_URL`), one
//! fresh database per store. PostgreSQL missing is a failure, not a skip.

use confab_core::validate::{Page, SizeLimits};
use confab_history::store::conformance::{self, create_group, send};
use confab_history::store::{Listing, Store};
use confab_history::PostgresStore;
use confab_proto::internal::v1::outcome_record::Result as R;
use confab_proto::internal::v1::{
    ingress_record::Command, AddMembersCommand, IngressRecord, OutcomeRecord,
};
use confab_tests::postgres::PgCluster;
use std::collections::BTreeMap;
use std::sync::Arc;
use tonic::Code;

fn cluster() -> PgCluster {
    PgCluster::start().unwrap_or_else(|e| {
        panic!(
            "these tests need PostgreSQL (the postgresql package, or DATABASE_URL): \
             could not start a throwaway cluster: {e:#}"
        )
    })
}

async fn store_on(url: &str, limits: SizeLimits) -> PostgresStore {
    PostgresStore::connect(url, limits, 4)
        .await
        .unwrap_or_else(|e| panic!("connect the store to {url}: {e}"))
}

async fn fresh_store(cluster: &PgCluster) -> (String, PostgresStore) {
    let url = cluster.fresh_database().await.expect("fresh database");
    let store = store_on(&url, SizeLimits::default()).await;
    (url, store)
}

fn seq_of(o: &OutcomeRecord) -> u64 {
    match &o.result {
        Some(R::Message(m)) => m.seq,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn add(conv: &str, actor: &str, users: &[&str]) -> IngressRecord {
    IngressRecord {
        origin: None,
        actor_id: actor.into(),
        conversation_id: conv.into(),
        command: Some(Command::AddMembers(AddMembersCommand {
            member_ids: users.iter().map(|u| u.to_string()).collect(),
        })),
        traceparent: String::new(),
        accepted_at_ms: 0,
    }
}

async fn all_messages(store: &dyn Store, conv: &str) -> Vec<confab_proto::v1::Message> {
    let mut out = Vec::new();
    loop {
        let after = out
            .last()
            .map(|m: &confab_proto::v1::Message| m.seq)
            .unwrap_or(0);
        let (page, more) = store
            .history(Page::after(conv, after, 500))
            .await
            .expect("history")
            .parts();
        out.extend(page);
        if !more {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_passes_the_conformance_suite() {
    let cluster = cluster();
    conformance::run_all(|limits| {
        let cluster = &cluster;
        async move {
            let url = cluster.fresh_database().await.expect("fresh database");
            Arc::new(store_on(&url, limits).await) as Arc<dyn Store>
        }
    })
    .await;
}

/// A database written by the first release (only the first migration, and
/// rows as it wrote them) opened by this one: the later migrations keep
/// every message and count what was stored as read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_from_the_first_schema_keeps_history_and_counts_it_read() {
    let cluster = cluster();
    let url = cluster.fresh_database().await.expect("fresh database");
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    let first = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            confab_history::store::postgres::MIGRATOR.migrations[..1].to_vec(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    first.run(&pool).await.expect("the first migration");
    sqlx::raw_sql(conformance::upgrade::FIRST_RELEASE_ROWS)
        .execute(&pool)
        .await
        .expect("first-release rows");
    pool.close().await;
    let store = store_on(&url, SizeLimits::default()).await;
    conformance::upgrade::an_upgrade_keeps_history_and_counts_it_read(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_500_sends_for_10_conversations_is_sequenced_in_record_order() {
    let cluster = cluster();
    let (_, store) = fresh_store(&cluster).await;
    let convs: Vec<String> = (0..10).map(|c| format!("g{c}")).collect();
    let created = store
        .apply(
            0,
            &convs
                .iter()
                .map(|c| create_group(c, "alice", &["alice", "bob"]))
                .collect::<Vec<_>>(),
        )
        .await
        .expect("create");
    assert!(created.iter().all(|o| o.events.len() == 1));

    // Conversations interleaved irregularly, both senders.
    let batch: Vec<IngressRecord> = (0..500)
        .map(|i| {
            let conv = &convs[(i * 7 + i / 13) % 10];
            let sender = if i % 3 == 0 { "bob" } else { "alice" };
            send(conv, sender, &format!("m{i}"), &format!("body {i}"))
        })
        .collect();
    let out = store.apply(0, &batch).await.expect("apply 500");
    assert_eq!(out.len(), 500);

    // Per conversation, the records' seqs are 2, 3, ... in record order.
    let mut expected_next: BTreeMap<&str, u64> = BTreeMap::new();
    let mut bodies: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (rec, o) in batch.iter().zip(&out) {
        let next = expected_next.entry(&rec.conversation_id).or_insert(2);
        assert_eq!(
            seq_of(o),
            *next,
            "record for {} out of order",
            rec.conversation_id
        );
        *next += 1;
        assert_eq!(o.events.len(), 1, "a new message is one event");
        assert_eq!(o.conversation_id, rec.conversation_id);
        let Some(Command::Send(s)) = &rec.command else {
            unreachable!("the batch is sends")
        };
        assert_eq!(o.events[0].body, s.body);
        assert_eq!(o.events[0].sender_id, rec.actor_id);
        bodies
            .entry(&rec.conversation_id)
            .or_default()
            .push(s.body.clone());
    }
    assert_eq!(expected_next.len(), 10, "every conversation got messages");

    for conv in &convs {
        let msgs = all_messages(&store, conv).await;
        let last = expected_next[conv.as_str()] - 1;
        assert_eq!(
            msgs.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (1..=last).collect::<Vec<_>>(),
            "{conv} is gap-free"
        );
        assert_eq!(
            msgs[1..].iter().map(|m| m.body.clone()).collect::<Vec<_>>(),
            bodies[conv.as_str()],
            "{conv} keeps record order"
        );
        let c = store
            .conversation(conv)
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(c.last_seq, last);
    }

    // The same batch again is 500 retries: the originals, no new seqs.
    let again = store.apply(0, &batch).await.expect("apply again");
    assert_eq!(
        again.iter().map(seq_of).collect::<Vec<_>>(),
        out.iter().map(seq_of).collect::<Vec<_>>()
    );
    assert!(again.iter().all(|o| o.replay && o.events.len() == 1));
    for conv in &convs {
        let c = store
            .conversation(conv)
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(c.last_seq, expected_next[conv.as_str()] - 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mixed_batches_across_conversations_stay_gap_free() {
    let cluster = cluster();
    let (_, store) = fresh_store(&cluster).await;
    let store: Arc<dyn Store> = Arc::new(store);
    let convs: Vec<String> = (0..10).map(|c| format!("g{c}")).collect();
    store
        .apply(
            0,
            &convs
                .iter()
                .map(|c| create_group(c, "alice", &["alice"]))
                .collect::<Vec<_>>(),
        )
        .await
        .expect("create");
    // Each task visits the conversations in its own order, with a membership
    // change in the middle of every batch (so batches hold several runs and
    // lock rows across them).
    let mut tasks = Vec::new();
    for t in 0..4usize {
        let store = store.clone();
        let convs = convs.clone();
        tasks.push(tokio::spawn(async move {
            for b in 0..8usize {
                let mut batch = Vec::new();
                for i in 0..30usize {
                    let c = if t % 2 == 0 { i % 10 } else { 9 - i % 10 };
                    batch.push(send(&convs[c], "alice", &format!("t{t}-b{b}-{i}"), "x"));
                    if i == 15 {
                        batch.push(add(&convs[(t + b) % 10], "alice", &[&format!("u{t}-{b}")]));
                    }
                }
                let out = store.apply(0, &batch).await.expect("apply");
                // Within one batch, a conversation's new seqs are consecutive
                // and in record order: the batch held its lock throughout.
                let mut last: BTreeMap<&str, u64> = BTreeMap::new();
                for (rec, o) in batch.iter().zip(&out) {
                    assert_eq!(o.events.len(), 1, "{o:?}");
                    let seq = o.events[0].seq;
                    if let Some(prev) = last.insert(&rec.conversation_id, seq) {
                        assert_eq!(seq, prev + 1, "{} in batch t{t}-b{b}", rec.conversation_id);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let mut total = 0;
    for conv in &convs {
        let seqs: Vec<u64> = all_messages(store.as_ref(), conv)
            .await
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{conv}");
        total += seqs.len();
    }
    // 10 creations, 4 tasks x 8 batches x (30 sends + 1 add).
    assert_eq!(total, 10 + 4 * 8 * 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_batch_survives_an_immediate_stop() {
    let cluster = PgCluster::start_local().unwrap_or_else(|e| {
        panic!("this test needs a local PostgreSQL (the postgresql package): {e:#}")
    });
    let (url, store) = fresh_store(&cluster).await;
    let mut batch = vec![create_group("g", "alice", &["alice", "bob"])];
    batch.extend((0..50).map(|i| send("g", "bob", &format!("m{i}"), &format!("body {i}"))));
    let out = store.apply(0, &batch).await.expect("apply");
    assert_eq!(seq_of(&out[50]), 51);

    cluster.stop_immediate();
    cluster.start_again();

    // The store that was connected before the crash reconnects by itself.
    let msgs = all_messages(&store, "g").await;
    assert_eq!(
        msgs.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=51).collect::<Vec<_>>()
    );
    assert_eq!(msgs[50].body, "body 49");
    // And a new connection (migrations already applied) reads the same.
    let reopened = store_on(&url, SizeLimits::default()).await;
    let conv = reopened
        .conversation("g")
        .await
        .expect("get")
        .expect("survived");
    assert_eq!(conv.last_seq, 51);
    assert_eq!(conv.member_ids, vec!["alice".to_string(), "bob".into()]);
    let (page, more) = reopened
        .history(Page::before("g", u64::MAX, 1))
        .await
        .expect("history")
        .parts();
    assert!(more);
    assert_eq!((page[0].seq, page[0].body.as_str()), (51, "body 49"));
    // And it accepts writes again, continuing the sequence.
    let out = reopened
        .apply(0, &[send("g", "alice", "after", "after the crash")])
        .await
        .expect("apply after restart");
    assert_eq!(seq_of(&out[0]), 52);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_postgres_cannot_store_is_refused_without_failing_the_batch() {
    let cluster = cluster();
    let (_, store) = fresh_store(&cluster).await;
    let out = store
        .apply(
            0,
            &[
                create_group("g", "alice", &["alice"]),
                send("g", "alice", "m1", "bad\0body"),
                send("g", "alice", "m2", "fine"),
                create_group("h\0", "alice", &["alice"]),
            ],
        )
        .await
        .expect("apply");
    match &out[1].result {
        Some(R::Error(e)) => {
            assert_eq!(Code::from_i32(e.code), Code::InvalidArgument);
            assert!(e.message.contains("NUL"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(seq_of(&out[2]), 2);
    assert!(
        matches!(&out[3].result, Some(R::Error(e)) if Code::from_i32(e.code) == Code::InvalidArgument)
    );
    assert!(store.conversation("h\0").await.expect("get").is_none());
    assert!(store
        .history(Page::after("h\0", 0, 5))
        .await
        .expect("history")
        .parts()
        .0
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_keys_history_by_conversation_and_seq() {
    let cluster = cluster();
    let (url, _store) = fresh_store(&cluster).await;
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'messages' ORDER BY indexname",
    )
    .fetch_all(&pool)
    .await
    .expect("indexes");
    let def = |name: &str| {
        indexes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("index {name} missing: {indexes:?}"))
    };
    assert!(
        def("messages_pkey").ends_with("(conversation_id, seq)"),
        "{indexes:?}"
    );
    let dedupe = def("messages_dedupe");
    assert!(
        dedupe.contains("UNIQUE")
            && dedupe.contains("(conversation_id, sender_id, client_msg_id) WHERE (kind <> 2)"),
        "{dedupe}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_turned_off_and_on_again_finds_everything() {
    let cluster = cluster();
    let url = cluster.fresh_database().await.expect("fresh database");
    conformance::search::search_turned_off_and_on_again_finds_everything(|on| {
        let url = url.clone();
        async move {
            let limits = SizeLimits {
                search_index: on,
                ..SizeLimits::default()
            };
            Arc::new(store_on(&url, limits).await) as Arc<dyn confab_history::Store>
        }
    })
    .await;
}

/// A delete erases, read with a connection of the test's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_erases_the_message_from_the_tables() {
    let cluster = cluster();
    let (url, store) = fresh_store(&cluster).await;
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    let count: confab_history::store::conformance::changes::Count = Box::new(move |sql| {
        let pool = pool.clone();
        Box::pin(async move {
            sqlx::query_scalar(sql)
                .fetch_one(&pool)
                .await
                .expect("count")
        })
    });
    confab_history::store::conformance::changes::a_delete_erases_the_message(
        std::sync::Arc::new(store),
        count,
        "SELECT COUNT(*) FROM messages WHERE conversation_id = 'e' AND search_tokens::text LIKE '%secret%'",
    )
    .await;
}

/// GetHistory's queries use the primary key (conversation_id, seq) as an
/// index range scan, in both directions, on a table large enough that the
/// planner would not pick an index it does not need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_are_index_range_scans() {
    let pg = cluster();
    let (url, _store) = fresh_store(&pg).await;
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    // 200 conversations × 1,000 messages, written directly.
    sqlx::query(
        "INSERT INTO conversations (id, kind, title, last_seq, created_at_ms)
         SELECT 'c' || g, 2, '', 1000, 0 FROM generate_series(1, 200) g",
    )
    .execute(&pool)
    .await
    .expect("conversations");
    sqlx::query(
        "INSERT INTO messages (conversation_id, seq, sender_id, client_msg_id, kind, body, membership, created_at_ms)
         SELECT 'c' || c, s, 'u', 'm' || s, 1, 'hello', NULL, 0
         FROM generate_series(1, 200) c, generate_series(1, 1000) s",
    )
    .execute(&pool)
    .await
    .expect("messages");
    sqlx::query("ANALYZE messages")
        .execute(&pool)
        .await
        .expect("analyze");
    for (cmp, order) in [("<", "DESC"), (">", "ASC")] {
        let sql = format!(
            "EXPLAIN SELECT conversation_id, seq, sender_id, client_msg_id, kind, body, membership, created_at_ms
             FROM messages WHERE conversation_id = 'c77' AND seq {cmp} 500 ORDER BY seq {order} LIMIT 51"
        );
        let plan: Vec<String> = sqlx::query_scalar(&sql)
            .fetch_all(&pool)
            .await
            .expect("explain");
        let plan = plan.join("\n");
        assert!(
            plan.contains("Index Scan") && plan.contains("messages_pkey"),
            "{plan}"
        );
        assert!(
            !plan.contains("Seq Scan") && !plan.contains("Sort"),
            "{plan}"
        );
    }
}

/// A search probes the GIN index once per conversation of the caller's
/// (each probe reads that conversation's postings only), on a table where
/// every message holds the word: no scan of the table, and no probe of
/// conversations the caller is not in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_probe_the_index_per_conversation_of_the_caller() {
    use confab_history::store::search;
    let pg = cluster();
    let (url, _store) = fresh_store(&pg).await;
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    // 200 conversations × 500 messages; the caller is in 10 of them.
    sqlx::query(
        "INSERT INTO conversations (id, kind, title, last_seq, created_at_ms)
         SELECT 'c' || g, 2, '', 500, 0 FROM generate_series(1, 200) g",
    )
    .execute(&pool)
    .await
    .expect("conversations");
    sqlx::query(
        "INSERT INTO members (conversation_id, user_id, role)
         SELECT 'c' || g, 'reader', 3 FROM generate_series(1, 10) g",
    )
    .execute(&pool)
    .await
    .expect("members");
    sqlx::query(&format!(
        "INSERT INTO messages (conversation_id, seq, sender_id, client_msg_id, kind, body, membership, created_at_ms,
                               search_tokens)
         SELECT 'c' || c, s, 'u', 'm' || s, 1, $1, NULL, s,
                {}
         FROM generate_series(1, 200) c, generate_series(1, 500) s",
        search::pg_scoped("$2", "('c' || c)", "tsvector")
    ))
    .bind("the weekly report is ready")
    .bind(search::pg_document("the weekly report is ready"))
    .execute(&pool)
    .await
    .expect("messages");
    sqlx::query("ANALYZE")
        .execute(&pool)
        .await
        .expect("analyze");
    let terms = confab_core::search::terms("report");
    let explain = format!("EXPLAIN (ANALYZE, COSTS OFF) {}", search::pg_search_sql());
    let plan: Vec<String> = sqlx::query_scalar(&explain)
        .bind("reader")
        .bind(search::pg_query(&terms))
        .bind("")
        .bind(i64::MAX)
        .bind("")
        .bind(0i64)
        .bind(20i64)
        .fetch_all(&pool)
        .await
        .expect("explain");
    let plan = plan.join("\n");
    assert!(
        plan.contains("Bitmap Index Scan on messages_search"),
        "{plan}"
    );
    assert!(!plan.contains("Seq Scan on messages"), "{plan}");
    // One probe per conversation of the caller's, 500 rows each.
    assert!(plan.contains("loops=10"), "{plan}");
    assert!(!plan.contains("loops=200"), "{plan}");
}

/// The pool lends a connection used in the last `PING_IF_IDLE_FOR` without
/// pinging it first. When the server drops every connection between two
/// reads, the read that gets a dropped connection runs again on another
/// one: no read fails, and the store keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_on_when_the_server_drops_every_connection() {
    let cluster = cluster();
    let (url, store) = fresh_store(&cluster).await;
    store
        .apply(0, &[create_group("g", "alice", &["alice"])])
        .await
        .expect("create");
    let read = || store.history(Page::before("g", u64::MAX, 10));
    // Several reads at once, so the pool holds more than one connection.
    let warm = futures::future::join_all((0..4).map(|_| read())).await;
    assert!(warm.iter().all(Result::is_ok), "{warm:?}");

    let admin = sqlx::PgPool::connect(&url).await.expect("admin connection");
    let terminate = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()";
    let dropped: Vec<bool> = sqlx::query_scalar(terminate)
        .fetch_all(&admin)
        .await
        .expect("terminate the store's connections");
    assert!(
        dropped.len() >= 2 && dropped.iter().all(|d| *d),
        "{dropped:?}"
    );
    for i in 0..20 {
        let (page, _) = read()
            .await
            .unwrap_or_else(|e| panic!("read {i} after the drop: {e}"))
            .parts();
        assert_eq!(page.len(), 1, "the creation event");
    }
    // Writes go on as well (a transaction that gets a dropped connection
    // is retried by the sequencer; here every connection is fresh).
    let out = store
        .apply(0, &[send("g", "alice", "m1", "after the drop")])
        .await
        .expect("apply");
    assert_eq!(seq_of(&out[0]), 2);
}

/// History's sessions plan with `random_page_cost` 1.1 and without JIT
/// unless the URL sets them, so a `Sync` listing picks the page of a user's 1,000
/// conversations by walking `members_by_user` and the primary keys in order
/// instead of hashing both whole tables (twice as slow; docs/benchmarks.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_walk_the_indexes_in_order() {
    use confab_history::store::postgres::{connect_options, RANDOM_PAGE_COST};
    use confab_history::store::{rows::Dialect, Listing};
    use sqlx::ConnectOptions;
    let pg = cluster();
    let (url, _store) = fresh_store(&pg).await;
    let show = |url: String| async move {
        let mut conn = connect_options(&url)
            .expect("options")
            .connect()
            .await
            .expect("connect");
        let cost: String = sqlx::query_scalar("SHOW random_page_cost")
            .fetch_one(&mut conn)
            .await
            .expect("show");
        let jit: String = sqlx::query_scalar("SHOW jit")
            .fetch_one(&mut conn)
            .await
            .expect("show");
        (conn, cost, jit)
    };
    let (_, chosen, jit) = show(format!("{url}&options=-c%20random_page_cost%3D3")).await;
    assert_eq!(chosen, "3", "the URL's own choice is kept");
    assert_eq!(jit, "off", "and the other settings still apply");
    let (_, _, jit) = show(format!("{url}&options=-c%20jit%3Don")).await;
    assert_eq!(jit, "on", "the URL's own choice is kept");
    let (mut conn, cost, jit) = show(url.clone()).await;
    assert_eq!((cost.as_str(), jit.as_str()), (RANDOM_PAGE_COST, "off"));
    sqlx::raw_sql(
        "INSERT INTO conversations (id, kind, title, last_seq, created_at_ms, change_no)
         SELECT 'c' || g, 2, '', 10, 0, g FROM generate_series(1000, 1999) g;
         INSERT INTO members (conversation_id, user_id)
         SELECT 'c' || g, u FROM generate_series(1000, 1999) g, unnest(ARRAY['r', 'w']) u;
         ANALYZE conversations, members;",
    )
    .execute(&mut conn)
    .await
    .expect("fill");
    let since = [0u64, 0, 0];
    let listing = Listing::Changed {
        since: Some(&since),
        after: "",
    };
    let sql = listing.sql(Dialect::Postgres);
    let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {sql}"))
        .bind("r")
        .bind("")
        .bind(1001i64)
        .bind(Dialect::Postgres.bound(&since))
        .fetch_all(&mut conn)
        .await
        .expect("explain");
    // The page: members of the user in id order, each joined by primary
    // key; then each conversation's member list by primary key.
    let plan = plan.join("\n");
    assert!(plan.contains("members_by_user"), "{plan}");
    assert!(plan.contains("members_pkey on members m2"), "{plan}");
    assert!(
        !plan.contains("Hash") && !plan.contains("Seq Scan"),
        "{plan}"
    );
}

/// A write by the previous release during a rolling upgrade moves a
/// member's position and the conversation's stamp but not the member list
/// the conversation keeps (migration 0011): no listing shows the stale list,
/// and this release's next write keeps the list again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_list_the_previous_release_left_behind_is_not_read() {
    let cluster = cluster();
    let (url, store) = fresh_store(&cluster).await;
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    let store: Arc<dyn Store> = Arc::new(store);
    let apply = |batch: Vec<IngressRecord>| {
        let store = store.clone();
        async move { store.apply(0, &batch).await.expect("apply") }
    };
    apply(vec![create_group("g", "alice", &["alice", "bob"])]).await;
    apply(vec![
        send("g", "alice", "m1", "hi"),
        send("g", "alice", "m2", "again"),
    ])
    .await;
    // The read positions alice's listing of g shows.
    let shown = || async {
        let page = store
            .conversations("alice", Listing::One("g"), 1)
            .await
            .expect("listing");
        page.conversations[0]
            .member_reads
            .iter()
            .map(|m| (m.user_id.clone(), m.read_seq))
            .collect::<Vec<_>>()
    };
    let kept = || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT member_list FROM conversations
             WHERE id = 'g' AND member_list_no = change_no
               AND member_list_partition = change_partition",
        )
        .fetch_optional(&pool)
        .await
        .expect("kept list")
        .flatten()
    };
    assert_eq!(shown().await, [("alice".into(), 3), ("bob".into(), 1)]);
    assert!(kept().await.is_some(), "this release keeps the list");

    // bob reads to 3 as the previous release writes it: his position and a
    // new stamp, not the list.
    sqlx::query("UPDATE members SET read_seq = 3 WHERE conversation_id = 'g' AND user_id = 'bob'")
        .execute(&pool)
        .await
        .expect("bob's read");
    sqlx::query("UPDATE conversations SET change_no = change_no + 1 WHERE id = 'g'")
        .execute(&pool)
        .await
        .expect("the stamp");
    assert!(kept().await.is_none(), "the list is behind the stamp");
    assert_eq!(shown().await, [("alice".into(), 3), ("bob".into(), 3)]);

    // An event of this release carries only a current list into its stamp.
    apply(vec![conformance::changes::edit(
        "g", "alice", "e1", 2, "hi!",
    )])
    .await;
    assert!(
        kept().await.is_none(),
        "a stale list stays behind the stamp"
    );
    assert_eq!(shown().await, [("alice".into(), 3), ("bob".into(), 3)]);

    apply(vec![send("g", "bob", "m3", "seen")]).await;
    assert!(kept().await.is_some(), "kept again by this release's write");
    assert_eq!(shown().await, [("alice".into(), 3), ("bob".into(), 5)]);
    apply(vec![conformance::changes::edit(
        "g", "bob", "e2", 5, "seen!",
    )])
    .await;
    assert!(
        kept().await.is_some(),
        "a current list carried into the stamp"
    );
}
