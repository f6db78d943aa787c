//! confab-bench's parts, small, against a real nisshi broker and a real
//! PostgreSQL: the Kafka ceiling, the database ceiling and history's ingest
//! report exactly what they were asked to do, consistently. No speed is
//! asserted.

use confab_tests::broker::Broker;
use confab_tests::postgres::PgCluster;
use confab_tools::bench::baselines::{self, InsertOpts, KafkaOpts};
use confab_tools::bench::ingest::{self, IngestOpts};
use confab_tools::bench::Latency;
use std::collections::BTreeMap;

/// Percentiles that are ordered, over `count` samples.
fn assert_latency(what: &str, l: &Latency, count: u64) {
    assert_eq!(l.count, count, "{what}: {l:?}");
    assert!(
        0 < l.p50_us && l.p50_us <= l.p99_us && l.p99_us <= l.max_us,
        "{what}: {l:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_kafka_ceiling_sees_every_record_once() {
    let pg = PgCluster::start_local().expect("postgres for the broker");
    let broker = Broker::start_postgres(&pg).await;
    let opts = KafkaOpts {
        bootstrap: broker.bootstrap(),
        topic_prefix: "benchparts".into(),
        partitions: 4,
        messages: 2_000,
        payload_bytes: 200,
        in_flight: 256,
    };
    let r = baselines::kafka(&opts).await.expect("kafka baseline");
    eprintln!("{r:?}");
    assert_eq!((r.messages, r.payload_bytes), (2_000, 200));
    assert_latency("produce_ack", &r.produce_ack, 2_000);
    assert_latency("produce_to_consume", &r.produce_to_consume, 2_000);
    assert!(r.seconds > 0.0 && r.produced_per_sec > 0.0 && r.consumed_per_sec > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_ceiling_inserts_every_row() {
    let pg = PgCluster::start_local().expect("postgres");
    let opts = InsertOpts {
        database_url: pg.fresh_database().await.expect("database"),
        rows: 5_000,
        batch: 256,
        writers: 2,
        body_bytes: 100,
    };
    let r = baselines::postgres_inserts(&opts)
        .await
        .expect("insert baseline");
    eprintln!("{r:?}");
    assert_eq!((r.rows, r.batch, r.writers), (5_000, 256, 2));
    // 5,000 rows in batches of 256: 19 full ones and one of 136.
    assert_latency("batch_latency", &r.batch_latency, 5_000u64.div_ceil(256));
    assert!(r.seconds > 0.0 && r.rows_per_sec > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_ingests_a_prefilled_topic_without_gaps_or_duplicates() {
    let pg = PgCluster::start_local().expect("postgres");
    let broker = Broker::start_postgres(&pg).await;
    let database_url = pg.fresh_database().await.expect("history database");
    let logs = tempfile::tempdir().expect("log directory");
    let opts = IngestOpts {
        bootstrap: broker.bootstrap(),
        database_url: database_url.clone(),
        prefix: format!("benchparts{}", std::process::id()),
        partitions: 4,
        messages: 2_000,
        conversations: 20,
        body_bytes: 100,
        log: logs.path().join("history.log"),
    };
    let r = ingest::run(&opts).await.expect("ingest");
    eprintln!("{r:?}");
    assert_eq!((r.messages, r.conversations), (2_000, 20));
    assert!(r.seconds > 0.0 && r.sequenced_per_sec > 0.0, "{r:?}");
    assert!(r.history.pid > 0 && r.history.cpu_seconds > 0.0, "{r:?}");
    assert!(r.history.peak_rss_kib > 0, "{r:?}");

    // Every send stored once, and each conversation's seqs are 1..=n: its
    // creation event, then its 100 sends.
    let pool = sqlx::PgPool::connect(&database_url).await.expect("connect");
    let texts: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT client_msg_id) FROM messages WHERE kind = 1")
            .fetch_one(&pool)
            .await
            .expect("count sends");
    assert_eq!(texts, 2_000);
    let rows: Vec<(String, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT m.conversation_id, count(*), count(DISTINCT m.seq), min(m.seq), max(m.seq), max(c.last_seq)
         FROM messages m JOIN conversations c ON c.id = m.conversation_id
         GROUP BY m.conversation_id",
    )
    .fetch_all(&pool)
    .await
    .expect("per-conversation seqs");
    let per_conv: BTreeMap<String, [i64; 5]> = rows
        .into_iter()
        .map(|(id, n, distinct, min, max, last)| (id, [n, distinct, min, max, last]))
        .collect();
    assert_eq!(per_conv.len(), 20, "{per_conv:?}");
    for (id, seqs) in &per_conv {
        assert_eq!(
            seqs,
            &[101, 101, 1, 101, 101],
            "conversation {id}: rows, distinct seqs, first seq, last seq, last_seq"
        );
    }
}
