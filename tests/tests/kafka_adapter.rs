//! The Kafka adapter (`confab-kafka`) against a real broker: nisshi 0.7.0 as
//! a child process (memory engine, or the durable PostgreSQL engine in a
//! throwaway cluster). A missing broker is a failure that says how to
//! install it, never a skip.

use confab_core::error::ChatError;
use confab_core::seams::Publisher;
use confab_kafka::{
    ensure_topics, BatchConsumer, CommitReport, Consumed, Delivered, KafkaConfig, KafkaPublisher,
    KafkaRecord, Offsets, TRACEPARENT_HEADER,
};
use confab_proto::internal::v1::{
    ingress_record::Command, outcome_record, CreateCommand, IngressRecord, Origin, OutcomeRecord,
    SendCommand,
};
use confab_proto::v1::Message;
use confab_tests::broker::Broker;
use confab_tests::postgres::PgCluster;
use confab_tests::wait_until_within;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long any wait on the broker may take before the test fails
/// (rebalances included).
const DEADLINE: Duration = Duration::from_secs(60);

/// A configuration for `broker` with topics of their own.
fn config(broker: &Broker, partitions: i32) -> KafkaConfig {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    confab_tests::init_tracing();
    KafkaConfig {
        prefix: format!(
            "test{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ),
        partitions,
        produce_timeout: Duration::from_secs(10),
        ..KafkaConfig::new(broker.bootstrap())
    }
}

/// A send of `body` to `conv` whose origin request id is `id` (the
/// identity the tests track records by).
fn send(conv: &str, id: u64) -> IngressRecord {
    IngressRecord {
        origin: Some(Origin {
            gateway_id: "gw-test".into(),
            request_id: id,
        }),
        actor_id: format!("user-{}", id % 3),
        conversation_id: conv.into(),
        command: Some(Command::Send(SendCommand {
            reply_to_seq: 0,
            client_msg_id: format!("m-{id}"),
            body: format!("message {id} to {conv}"),
        })),
        traceparent: String::new(),
        accepted_at_ms: 0,
    }
}

fn id_of(c: &Consumed<IngressRecord>) -> u64 {
    c.record
        .origin
        .as_ref()
        .map(|o| o.request_id)
        .unwrap_or(u64::MAX)
}

/// Publishes `records` (conversation order kept: each conversation's
/// records one after another, conversations concurrently); returns where
/// each went, by id.
async fn publish_all(
    publisher: &KafkaPublisher<IngressRecord>,
    records: &[IngressRecord],
) -> BTreeMap<u64, Delivered> {
    let mut by_conv: BTreeMap<&str, Vec<&IngressRecord>> = BTreeMap::new();
    for r in records {
        by_conv.entry(&r.conversation_id).or_default().push(r);
    }
    let tasks = by_conv.into_values().map(|recs| async move {
        let mut out = Vec::new();
        for r in recs {
            let d = publisher
                .publish_with(&r.conversation_id, r, &[])
                .await
                .unwrap_or_else(|e| panic!("publish {r:?}: {e}"));
            out.push((r.origin.as_ref().map(|o| o.request_id).unwrap_or(0), d));
        }
        out
    });
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The end offset (last offset + 1) of each partition written to.
fn end_offsets(delivered: impl IntoIterator<Item = Delivered>) -> Offsets {
    let mut o = Offsets::new();
    for d in delivered {
        o.advance(d.partition, d.offset);
    }
    o
}

/// Reads batches until `done` holds for everything read so far (or fails
/// after `DEADLINE`); commits each batch when `commit` is set. Returns the
/// records and the positions after them (skipped records included).
async fn read_until(
    consumer: &mut BatchConsumer<IngressRecord>,
    what: &str,
    commit: bool,
    mut done: impl FnMut(&[Consumed<IngressRecord>]) -> bool,
) -> (Vec<Consumed<IngressRecord>>, Offsets) {
    let deadline = Instant::now() + DEADLINE;
    let mut all = Vec::new();
    let mut positions = Offsets::new();
    while !done(&all) {
        let left = deadline.saturating_duration_since(Instant::now());
        let batch = tokio::time::timeout(left, consumer.next_batch(100, Duration::from_millis(50)))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out waiting for {what}; read {} records: {:?}",
                    all.len(),
                    all.iter().map(id_of).collect::<Vec<_>>()
                )
            })
            .expect("next_batch");
        positions.merge(batch.offsets());
        if commit {
            let report = consumer.commit(&batch).await.expect("commit");
            assert!(report.dropped.is_empty(), "{report:?}");
        }
        all.extend(batch.records);
    }
    (all, positions)
}

/// A broker on the memory engine, topics of `partitions` partitions on it,
/// and an ingress publisher.
async fn topics(partitions: i32) -> (Broker, KafkaConfig, KafkaPublisher<IngressRecord>) {
    let broker = Broker::start_memory().await;
    let cfg = config(&broker, partitions);
    ensure_topics(&cfg).await.expect("create topics");
    let publisher = KafkaPublisher::<IngressRecord>::new(&cfg).expect("publisher");
    (broker, cfg, publisher)
}

/// `got` holds the records `ids`, each once (`what` they are).
fn each_once(got: &[Consumed<IngressRecord>], ids: std::ops::Range<u64>, what: &str) {
    let got: Vec<u64> = got.iter().map(id_of).collect();
    assert_eq!(
        got.iter().copied().collect::<BTreeSet<_>>(),
        ids.clone().collect(),
        "{what}: {got:?}"
    );
    assert_eq!(got.len() as u64, ids.end - ids.start, "{what}: {got:?}");
}

/// A new consumer of group `g`, and what it reads without committing until
/// it has `n` records and has skipped the poison record.
async fn read_past_poison(
    cfg: &KafkaConfig,
    what: &str,
    n: usize,
) -> (
    BatchConsumer<IngressRecord>,
    Vec<Consumed<IngressRecord>>,
    Offsets,
) {
    let mut consumer = BatchConsumer::<IngressRecord>::new(cfg, "g").expect("consumer");
    let state = consumer.state();
    let (got, positions) = read_until(&mut consumer, what, false, |all| {
        all.len() >= n && state.skipped() >= 1
    })
    .await;
    (consumer, got, positions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_come_back_in_per_key_order_with_contents_and_headers() {
    let broker = Broker::start_memory().await;
    let cfg = config(&broker, 4);
    ensure_topics(&cfg).await.expect("create topics");
    ensure_topics(&cfg)
        .await
        .expect("creating existing topics again is fine");
    let publisher = KafkaPublisher::<IngressRecord>::new(&cfg).expect("publisher");
    assert_eq!(publisher.topic(), cfg.ingress_topic());

    // 8 conversations, 25 records each; every conversation's records are
    // published one after another, the conversations concurrently. Some go
    // through the Publisher trait, some carry a traceparent, and each
    // conversation starts with a create (keyed by origin, not by retry key).
    let convs: Vec<String> = (0..8).map(|c| format!("grp-{c}")).collect();
    let mut expected: HashMap<u64, (IngressRecord, Option<String>)> = HashMap::new();
    let mut by_conv: Vec<Vec<(IngressRecord, Option<String>)>> = vec![Vec::new(); convs.len()];
    for id in 0..200u64 {
        let c = (id % 8) as usize;
        let mut r = send(&convs[c], id);
        if id < 8 {
            r.command = Some(Command::Create(CreateCommand {
                history_visibility: 0,
                kind: 2,
                title: format!("room {c}"),
                member_ids: vec!["user-0".into(), "user-1".into()],
            }));
        }
        let trace = (id % 3 == 0).then(|| format!("00-{id:032x}-{:016x}-01", id + 1));
        expected.insert(id, (r.clone(), trace.clone()));
        by_conv[c].push((r, trace));
    }
    let delivered: Mutex<BTreeMap<u64, Delivered>> = Mutex::default();
    let started = Instant::now();
    futures::future::join_all(by_conv.iter().map(|recs| {
        let publisher = &publisher;
        let delivered = &delivered;
        async move {
            for (r, trace) in recs {
                let id = r.origin.as_ref().map(|o| o.request_id).unwrap_or(0);
                match trace {
                    Some(t) => {
                        let d = publisher
                            .publish_with(&r.conversation_id, r, &[(TRACEPARENT_HEADER, t)])
                            .await
                            .expect("publish_with");
                        delivered.lock().expect("lock").insert(id, d);
                    }
                    None => Publisher::publish(publisher, &r.conversation_id, r.clone())
                        .await
                        .expect("publish"),
                }
            }
        }
    }))
    .await;
    let publish_time = started.elapsed();

    let mut consumer = BatchConsumer::<IngressRecord>::new(&cfg, "history").expect("consumer");
    assert_eq!(consumer.topic(), cfg.ingress_topic());
    let started = Instant::now();
    let (got, _) = read_until(&mut consumer, "all 200 records", true, |all| {
        all.len() >= 200
    })
    .await;
    let consume_time = started.elapsed();
    eprintln!("published 200 records in {publish_time:?}, consumed them in {consume_time:?}");

    assert_eq!(got.len(), 200, "each record exactly once");
    let mut partition_of_conv: HashMap<String, i32> = HashMap::new();
    let mut last_offset: HashMap<i32, i64> = HashMap::new();
    let mut order: HashMap<String, Vec<u64>> = HashMap::new();
    for c in &got {
        let id = id_of(c);
        let (want, trace) = expected.get(&id).expect("a record that was published");
        assert_eq!(&c.record, want, "decoded contents of {id}");
        assert_eq!(c.topic, cfg.ingress_topic());
        assert_eq!(c.key.as_deref(), Some(want.conversation_id.as_str()));
        assert_eq!(
            c.idempotency_key(),
            want.idempotency_key().as_deref(),
            "idempotency header of {id}"
        );
        assert_eq!(c.traceparent(), trace.as_deref(), "traceparent of {id}");
        let p = *partition_of_conv
            .entry(want.conversation_id.clone())
            .or_insert(c.partition);
        assert_eq!(p, c.partition, "one partition per conversation");
        if let Some(d) = delivered.lock().expect("lock").get(&id) {
            assert_eq!((d.partition, d.offset), (c.partition, c.offset));
        }
        let last = last_offset.entry(c.partition).or_insert(-1);
        assert!(c.offset > *last, "offsets increase within a partition");
        *last = c.offset;
        order
            .entry(want.conversation_id.clone())
            .or_default()
            .push(id);
    }
    for (conv, ids) in &order {
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, &sorted, "records of {conv} in publish order");
        assert_eq!(ids.len(), 25);
    }
    // Sends keyed by the retry key, creates by their origin.
    let create = got.iter().find(|c| id_of(c) == 3).expect("create 3");
    assert_eq!(create.idempotency_key(), Some("gw-test/3"));
    let sent = got.iter().find(|c| id_of(c) == 11).expect("send 11");
    assert_eq!(sent.idempotency_key(), Some("grp-3/user-2/m-11"));
    let used: BTreeSet<i32> = partition_of_conv.values().copied().collect();
    assert!(
        used.len() > 1,
        "8 conversations spread over partitions: {used:?}"
    );
    assert_eq!(consumer.state().skipped(), 0);
    consumer.close().await;

    // Outcomes go to the messages topic, through the same producer.
    let outcomes = KafkaPublisher::<OutcomeRecord>::sharing(&publisher, &cfg);
    assert_eq!(outcomes.topic(), cfg.messages_topic());
    let stored = Message {
        conversation_id: "grp-3".into(),
        seq: 4,
        sender_id: "user-2".into(),
        client_msg_id: "m-11".into(),
        body: "message 11 to grp-3".into(),
        ..Default::default()
    };
    let outcome = OutcomeRecord {
        origin: Some(Origin {
            gateway_id: "gw-test".into(),
            request_id: 11,
        }),
        conversation_id: "grp-3".into(),
        events: vec![stored.clone()],
        result: Some(outcome_record::Result::Message(stored)),
        ..Default::default()
    };
    Publisher::publish(&outcomes, "grp-3", outcome.clone())
        .await
        .expect("publish an outcome");
    let mut router = BatchConsumer::<OutcomeRecord>::new(&cfg, "router").expect("consumer");
    assert_eq!(router.topic(), cfg.messages_topic());
    let deadline = Instant::now() + DEADLINE;
    let got = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let batch = tokio::time::timeout(left, router.next_batch(10, Duration::from_millis(50)))
            .await
            .expect("the outcome arrives")
            .expect("next_batch");
        if let Some(c) = batch.records.into_iter().next() {
            break c;
        }
    };
    assert_eq!(got.record, outcome);
    assert_eq!(got.key.as_deref(), Some("grp-3"));
    assert_eq!(
        got.idempotency_key(),
        Some("grp-3/user-2/m-11"),
        "an outcome carries the key of the send it answers"
    );
    assert_eq!(got.partition, sent.partition, "same key, same partition");
    router.close().await;
    publisher
        .flush(Duration::from_secs(5))
        .await
        .expect("flush");
    assert_eq!(publisher.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncommitted_records_are_redelivered_and_committed_ones_are_not() {
    let (broker, cfg, publisher) = topics(2).await;
    let records: Vec<IngressRecord> = (0..10)
        .map(|id| send(if id % 2 == 0 { "dm-a" } else { "dm-b" }, id))
        .collect();
    let mut delivered = publish_all(&publisher, &records).await;
    // A poison record (not a protobuf IngressRecord) after them.
    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .expect("raw producer");
    let poison = raw
        .send(
            FutureRecord::to(&cfg.ingress_topic())
                .key("dm-a")
                .payload(&[0xff_u8, 0xff, 0xff][..]),
            Duration::from_secs(5),
        )
        .await
        .expect("produce the poison record");
    delivered.insert(
        u64::MAX,
        Delivered {
            partition: poison.partition,
            offset: poison.offset,
        },
    );
    let end = end_offsets(delivered.values().copied());

    // A reads everything and commits nothing.
    let (a, got, _) = read_past_poison(&cfg, "10 records and the poison one", 10).await;
    assert_eq!(got.len(), 10);
    assert_eq!(
        a.state().skipped(),
        1,
        "the poison record is skipped and counted"
    );
    a.close().await;

    // B gets all of it again, and commits the first six only.
    let (b, got, _) = read_past_poison(&cfg, "the uncommitted records again", 10).await;
    let ids: BTreeSet<u64> = got.iter().map(id_of).collect();
    assert_eq!(ids, (0..10).collect(), "nothing committed: all redelivered");
    let first_six: Vec<Consumed<IngressRecord>> =
        got.into_iter().filter(|c| id_of(c) < 6).collect();
    let report: CommitReport = b.commit(first_six.as_slice()).await.expect("commit");
    assert!(report.dropped.is_empty());
    assert_eq!(report.committed, Offsets::from(first_six.as_slice()));
    b.close().await;

    // C starts after the six: only 6..9 (and the poison record, skipped).
    let (c, got, positions) = read_past_poison(&cfg, "records 6..9", 4).await;
    each_once(&got, 6..10, "committed records are not redelivered");
    // Committing what was read, the poison record included, moves every
    // partition to its end: the poison record cannot block it.
    let report = c.commit(&positions).await.expect("commit");
    assert_eq!(report.committed, end);
    assert_eq!(c.committed().await.expect("committed offsets"), end);
    c.close().await;

    // D sees only what is published afterwards.
    let more: Vec<IngressRecord> = vec![send("dm-a", 10), send("dm-b", 11)];
    publish_all(&publisher, &more).await;
    let mut d = BatchConsumer::<IngressRecord>::new(&cfg, "g").expect("consumer d");
    let (got, _) = read_until(&mut d, "records 10 and 11", true, |all| all.len() >= 2).await;
    let ids: BTreeSet<u64> = got.iter().map(id_of).collect();
    assert_eq!(ids, [10, 11].into());
    assert_eq!(
        d.state().skipped(),
        0,
        "the poison record was committed past"
    );
    d.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_measures_lag_per_owned_partition_and_probes_see_a_dead_broker() {
    // The durable engine: it does not answer ListOffsets, so the monitor
    // must not need it.
    let pg = PgCluster::start().expect("postgres for the broker");
    let mut broker = Broker::start_postgres(&pg).await;
    let cfg = config(&broker, 2);
    ensure_topics(&cfg).await.expect("create topics");
    let publisher = KafkaPublisher::<IngressRecord>::new(&cfg).expect("publisher");
    let records: Vec<IngressRecord> = (0..10)
        .map(|id| send(if id % 2 == 0 { "dm-a" } else { "dm-b" }, id))
        .collect();
    let end = end_offsets(publish_all(&publisher, &records).await.into_values());

    // Read everything, commit nothing: every record is lag.
    let mut consumer = BatchConsumer::<IngressRecord>::new(&cfg, "lag").expect("consumer");
    let monitor = consumer.monitor();
    let (_, positions) =
        read_until(&mut consumer, "every record", false, |all| all.len() >= 10).await;
    let owned = consumer.state().assigned();
    assert_eq!(owned, [0, 1].into(), "one consumer owns both partitions");
    let lags = monitor.check(Duration::from_secs(5)).await.expect("check");
    let expected: BTreeMap<i32, i64> = owned
        .iter()
        .map(|&p| (p, end.get(p).unwrap_or(0)))
        .collect();
    assert_eq!(lags, expected, "nothing committed: lag is every record");

    // Committed: no lag.
    consumer.commit(&positions).await.expect("commit");
    let lags = monitor.check(Duration::from_secs(5)).await.expect("check");
    assert_eq!(lags, owned.iter().map(|&p| (p, 0)).collect());

    // Two more on one partition, uncommitted: lag 2 there.
    let more = publish_all(&publisher, &[send("dm-a", 10), send("dm-a", 11)]).await;
    let busy = more.values().next().expect("delivered").partition;
    let (_, _) = read_until(&mut consumer, "the two new records", false, |all| {
        all.len() >= 2
    })
    .await;
    let lags = monitor.check(Duration::from_secs(5)).await.expect("check");
    assert_eq!(lags.get(&busy), Some(&2), "{lags:?}");
    assert_eq!(lags.values().sum::<i64>(), 2, "{lags:?}");

    // A closed consumer cannot be checked.
    consumer.close().await;
    let err = monitor
        .check(Duration::from_secs(1))
        .await
        .expect_err("the consumer is closed");
    assert!(err.to_string().contains("closed"), "{err}");

    // The producer's probe answers while the broker does, and fails within
    // about its timeout once it is gone.
    publisher
        .probe(Duration::from_secs(1))
        .await
        .expect("the broker answers");
    broker.kill9();
    let started = Instant::now();
    publisher
        .probe(Duration::from_secs(1))
        .await
        .expect_err("the broker is gone");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "noticed after {:?}",
        started.elapsed()
    );
}

/// What one worker of the group saw and committed.
#[derive(Default)]
struct Ledger {
    /// (worker, id) of every record handed out.
    seen: Vec<(&'static str, u64)>,
    /// Ids of records whose positions were committed.
    committed: Vec<u64>,
}

/// Runs a consumer until `stop` turns true, recording into `ledger`;
/// commits each batch while `commits` holds. Returns the consumer, still in
/// the group.
fn worker(
    name: &'static str,
    mut consumer: BatchConsumer<IngressRecord>,
    ledger: Arc<Mutex<Ledger>>,
    commits: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<BatchConsumer<IngressRecord>> {
    tokio::spawn(async move {
        loop {
            let batch = tokio::select! {
                _ = stop.wait_for(|s| *s) => return consumer,
                b = consumer.next_batch(50, Duration::from_millis(20)) => b.expect("next_batch"),
            };
            ledger
                .lock()
                .expect("lock")
                .seen
                .extend(batch.records.iter().map(|c| (name, id_of(c))));
            if commits.load(Ordering::SeqCst) {
                let report = consumer.commit(&batch).await.expect("commit");
                let done: Vec<u64> = batch
                    .records
                    .iter()
                    .filter(|c| report.committed.get(c.partition).is_some())
                    .map(id_of)
                    .collect();
                ledger.lock().expect("lock").committed.extend(done);
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_split_the_partitions_and_the_survivor_takes_over_without_loss() {
    let (_broker, cfg, publisher) = topics(4).await;

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let a = BatchConsumer::<IngressRecord>::new(&cfg, "router").expect("consumer a");
    let b = BatchConsumer::<IngressRecord>::new(&cfg, "router").expect("consumer b");
    let (state_a, state_b) = (a.state(), b.state());
    let a_commits = Arc::new(AtomicBool::new(true));
    let (stop_a, stop_a_rx) = watch::channel(false);
    let (stop_b, stop_b_rx) = watch::channel(false);
    let task_a = worker("a", a, ledger.clone(), a_commits.clone(), stop_a_rx);
    let task_b = worker(
        "b",
        b,
        ledger.clone(),
        Arc::new(AtomicBool::new(true)),
        stop_b_rx,
    );

    let split = wait_until_within(
        "the two consumers to split the 4 partitions",
        DEADLINE,
        || {
            let (pa, pb) = (state_a.assigned(), state_b.assigned());
            !pa.is_empty()
                && !pb.is_empty()
                && pa.is_disjoint(&pb)
                && pa.union(&pb).copied().collect::<BTreeSet<i32>>() == (0..4).collect()
        },
    )
    .await;
    eprintln!(
        "split after {split:?}: a={:?} b={:?}",
        state_a.assigned(),
        state_b.assigned()
    );

    // Phase 1: both consume and commit.
    let convs: Vec<String> = (0..24).map(|c| format!("grp-{c}")).collect();
    let phase1: Vec<IngressRecord> = (0..240)
        .map(|id| send(&convs[id as usize % 24], id))
        .collect();
    let mut delivered = publish_all(&publisher, &phase1).await;
    wait_until_within("phase 1 consumed and committed", DEADLINE, || {
        let l = ledger.lock().expect("lock");
        let committed: BTreeSet<u64> = l.committed.iter().copied().collect();
        (0..240).all(|id| committed.contains(&id))
    })
    .await;
    let (a_seen_1, b_seen_1) = {
        let l = ledger.lock().expect("lock");
        (
            l.seen.iter().filter(|(w, _)| *w == "a").count(),
            l.seen.iter().filter(|(w, _)| *w == "b").count(),
        )
    };
    assert!(
        a_seen_1 > 0 && b_seen_1 > 0,
        "both consumed: a={a_seen_1} b={b_seen_1}"
    );

    // Phase 2: A stops committing, reads its share, then leaves.
    a_commits.store(false, Ordering::SeqCst);
    let phase2: Vec<IngressRecord> = (240..480)
        .map(|id| send(&convs[id as usize % 24], id))
        .collect();
    delivered.extend(publish_all(&publisher, &phase2).await);
    wait_until_within("phase 2 read by a and b", DEADLINE, || {
        let l = ledger.lock().expect("lock");
        let seen: BTreeSet<u64> = l.seen.iter().map(|(_, id)| *id).collect();
        (0..480).all(|id| seen.contains(&id))
    })
    .await;
    let held_by_a: BTreeSet<u64> = {
        let l = ledger.lock().expect("lock");
        let committed: BTreeSet<u64> = l.committed.iter().copied().collect();
        l.seen
            .iter()
            .filter(|(w, id)| *w == "a" && !committed.contains(id))
            .map(|(_, id)| *id)
            .collect()
    };
    assert!(
        !held_by_a.is_empty(),
        "a holds records it read but did not commit"
    );
    let rebalances_before = state_b.rebalances();
    stop_a.send(true).expect("stop a");
    let a = task_a.await.expect("worker a");
    a.close().await;

    let takeover = wait_until_within("b to own all 4 partitions", DEADLINE, || {
        state_b.assigned() == (0..4).collect()
    })
    .await;
    eprintln!("b took over all partitions {takeover:?} after a left");
    assert!(state_b.rebalances() > rebalances_before);
    wait_until_within("everything committed", DEADLINE, || {
        let l = ledger.lock().expect("lock");
        let committed: BTreeSet<u64> = l.committed.iter().copied().collect();
        (0..480).all(|id| committed.contains(&id))
    })
    .await;
    stop_b.send(true).expect("stop b");
    let b = task_b.await.expect("worker b");

    // Both workers have stopped: the ledger is final.
    let l = std::mem::take(&mut *ledger.lock().expect("lock"));
    // No record lost: every one was consumed at least once, and what a
    // held uncommitted was consumed again by b.
    let seen: BTreeSet<u64> = l.seen.iter().map(|(_, id)| *id).collect();
    assert_eq!(seen, (0..480).collect(), "every record consumed");
    let seen_by_b: BTreeSet<u64> = l
        .seen
        .iter()
        .filter(|(w, _)| *w == "b")
        .map(|(_, id)| *id)
        .collect();
    assert!(
        held_by_a.is_subset(&seen_by_b),
        "b re-read what a had not committed; missing {:?}",
        held_by_a.difference(&seen_by_b).collect::<Vec<_>>()
    );
    // Every committed record exactly once.
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for id in &l.committed {
        *counts.entry(*id).or_default() += 1;
    }
    let twice: Vec<(&u64, &usize)> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "committed more than once: {twice:?}");
    assert_eq!(counts.len(), 480);
    // The group's positions are at the end of every partition.
    let end = end_offsets(delivered.values().copied());
    assert_eq!(b.committed().await.expect("committed offsets"), end);
    eprintln!(
        "seen {} records for 480 produced ({} redelivered after the takeover)",
        l.seen.len(),
        l.seen.len() - 480
    );
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_while_the_broker_is_down_fails_with_unavailable_within_the_timeout() {
    let produce_timeout = Duration::from_secs(3);
    let bound = produce_timeout + Duration::from_secs(5);
    let mut broker = Broker::start_memory().await;
    let cfg = KafkaConfig {
        produce_timeout,
        ..config(&broker, 2)
    };
    ensure_topics(&cfg).await.expect("create topics");
    let publisher = KafkaPublisher::<IngressRecord>::new(&cfg).expect("publisher");
    Publisher::publish(&publisher, "dm-a", send("dm-a", 1))
        .await
        .expect("publish while the broker is up");

    broker.kill9();
    let started = Instant::now();
    let err = Publisher::publish(&publisher, "dm-a", send("dm-a", 2))
        .await
        .expect_err("publish with the broker down");
    let took = started.elapsed();
    eprintln!(
        "publish to a killed broker failed after {took:?} (timeout {produce_timeout:?}): {err}"
    );
    assert_unavailable(&err);
    assert!(took <= bound, "failed after {took:?}, bound {bound:?}");

    // A publisher that never reached any broker fails the same way.
    let nowhere = KafkaConfig {
        brokers: format!("127.0.0.1:{}", confab_tests::free_port()),
        ..cfg.clone()
    };
    let lost = KafkaPublisher::<IngressRecord>::new(&nowhere).expect("publisher");
    let started = Instant::now();
    let err = lost
        .publish_with("dm-a", &send("dm-a", 3), &[])
        .await
        .expect_err("publish with no broker at all");
    let took = started.elapsed();
    eprintln!("publish with no broker failed after {took:?}: {err}");
    assert_unavailable(&err);
    assert!(took <= bound, "failed after {took:?}, bound {bound:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_dead_of_a_fatal_error_is_replaced_and_publishing_resumes() {
    let (_broker, cfg, publisher) = topics(2).await;
    let clone = publisher.clone();
    let outcomes = KafkaPublisher::<OutcomeRecord>::sharing(&publisher, &cfg);
    let first: Vec<IngressRecord> = (0..4)
        .map(|id| send(if id % 2 == 0 { "dm-a" } else { "dm-b" }, id))
        .collect();
    let mut delivered = publish_all(&publisher, &first).await;

    // What librdkafka does when the broker lost the idempotent producer's
    // sequence state (OutOfOrderSequenceNumber after a kill -9): the
    // producer is dead for good, every produce on it fails.
    publisher.inject_fatal_error_for_tests();
    assert_eq!(publisher.producer_recreations(), 0);

    // The publish that meets the dead producer may fail (UNAVAILABLE: a
    // retry is safe); it replaces the producer, and a retry goes through.
    let record = send("dm-a", 4);
    let started = Instant::now();
    let mut failures = 0;
    let d = loop {
        match publisher.publish_with("dm-a", &record, &[]).await {
            Ok(d) => break d,
            Err(e) => {
                assert_unavailable(&e);
                failures += 1;
                assert!(
                    started.elapsed() < DEADLINE,
                    "no publish went through after the fatal error ({failures} failures): {e}"
                );
            }
        }
    };
    eprintln!(
        "published after the fatal error in {:?} ({failures} failed attempts first)",
        started.elapsed()
    );
    delivered.insert(4, d);
    assert_eq!(
        publisher.producer_recreations(),
        1,
        "the dead producer was replaced exactly once"
    );

    // Every sharer of the producer uses the new one: their first attempts
    // succeed.
    let rest: Vec<IngressRecord> = (5..10)
        .map(|id| send(if id % 2 == 0 { "dm-a" } else { "dm-b" }, id))
        .collect();
    delivered.extend(publish_all(&clone, &rest).await);
    let outcome = OutcomeRecord {
        conversation_id: "dm-b".into(),
        ..Default::default()
    };
    Publisher::publish(&outcomes, "dm-b", outcome)
        .await
        .expect("an outcome through the shared, replaced producer");
    assert_eq!(outcomes.producer_recreations(), 1);
    publisher
        .flush(Duration::from_secs(5))
        .await
        .expect("flush the new producer");
    assert_eq!(publisher.in_flight(), 0);

    // Everything acknowledged is in the log once, in per-key order.
    let mut consumer = BatchConsumer::<IngressRecord>::new(&cfg, "history").expect("consumer");
    let (got, _) = read_until(&mut consumer, "10 records", true, |all| all.len() >= 10).await;
    let ids: BTreeSet<u64> = got.iter().map(id_of).collect();
    assert_eq!(ids, (0..10).collect(), "every acknowledged record");
    assert_eq!(got.len(), 10, "each once");
    for c in &got {
        let d = delivered[&id_of(c)];
        assert_eq!((c.partition, c.offset), (d.partition, d.offset));
    }
    for conv in ["dm-a", "dm-b"] {
        let order: Vec<u64> = got
            .iter()
            .filter(|c| c.record.conversation_id == conv)
            .map(id_of)
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "records of {conv} in publish order");
    }
    consumer.close().await;
}

fn assert_unavailable(err: &ChatError) {
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("broker is unreachable"), "{msg}");
    assert!(
        msg.contains("retrying with the same client_msg_id is safe"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_engine_keeps_records_and_committed_offsets_across_kill9() {
    let pg = PgCluster::start().unwrap_or_else(|e| {
        panic!(
            "this test needs PostgreSQL (the postgresql package, or DATABASE_URL): \
             could not start a throwaway cluster: {e:#}"
        )
    });
    let mut broker = Broker::start_postgres(&pg).await;
    let cfg = config(&broker, 2);
    ensure_topics(&cfg).await.expect("create topics");
    let publisher = KafkaPublisher::<IngressRecord>::new(&cfg).expect("publisher");
    let records: Vec<IngressRecord> = (0..20)
        .map(|id| send(["dm-a", "dm-b", "grp-c"][id as usize % 3], id))
        .collect();
    let delivered = publish_all(&publisher, &records).await;

    let mut consumer = BatchConsumer::<IngressRecord>::new(&cfg, "history").expect("consumer");
    let (got, _) = read_until(&mut consumer, "20 records", false, |all| all.len() >= 20).await;
    let first: Vec<Consumed<IngressRecord>> = got.into_iter().filter(|c| id_of(c) < 10).collect();
    let report = consumer.commit(first.as_slice()).await.expect("commit");
    assert!(report.dropped.is_empty());
    let committed = consumer.committed().await.expect("committed offsets");
    assert_eq!(committed, Offsets::from(first.as_slice()));
    consumer.close().await;

    broker.kill9();
    let started = Instant::now();
    broker.restart().await;
    eprintln!(
        "postgres-engine broker restarted in {:?}",
        started.elapsed()
    );

    // The group resumes after its commits: 10..19 only.
    let mut consumer = BatchConsumer::<IngressRecord>::new(&cfg, "history").expect("consumer");
    assert_eq!(
        consumer.committed().await.expect("committed offsets"),
        committed,
        "committed offsets survive kill -9"
    );
    let (got, _) = read_until(&mut consumer, "records 10..19", true, |all| all.len() >= 10).await;
    each_once(&got, 10..20, "the records after the committed ones");

    // Every record is still there, unchanged, at the offset it was given.
    let mut audit = BatchConsumer::<IngressRecord>::new(&cfg, "audit").expect("consumer");
    let (all, _) = read_until(&mut audit, "all 20 records", true, |all| all.len() >= 20).await;
    assert_eq!(all.len(), 20);
    for c in &all {
        let id = id_of(c);
        assert_eq!(c.record, records[id as usize], "contents of {id}");
        let d = delivered[&id];
        assert_eq!((c.partition, c.offset), (d.partition, d.offset));
    }
    audit.close().await;

    // The publisher from before the restart publishes again (a caller
    // retries an UNAVAILABLE with the same record).
    let deadline = Instant::now() + DEADLINE;
    let extra = send("dm-a", 20);
    let mut failures = 0;
    loop {
        match publisher.publish_with("dm-a", &extra, &[]).await {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "publish after restart: {e}");
                assert_unavailable(&e);
                failures += 1;
            }
        }
    }
    eprintln!("the old publisher published after the restart ({failures} failed attempts first)");
    let (got, _) = read_until(
        &mut consumer,
        "the record published after the restart",
        true,
        |all| all.iter().any(|c| id_of(c) == 20),
    )
    .await;
    assert!(got.iter().all(|c| id_of(c) == 20), "only the new record");
    consumer.close().await;
}

/// What a [`Hooked`] store does with each batch it is given to apply.
#[async_trait::async_trait]
trait ApplyHook: Send + Sync {
    async fn apply(
        &self,
        inner: &confab_history::PostgresStore,
        partition: u32,
        batch: &[IngressRecord],
    ) -> Result<Vec<OutcomeRecord>, confab_history::StoreError>;
}

/// History's PostgreSQL store with `hook` around every `apply`.
struct Hooked<H> {
    inner: confab_history::PostgresStore,
    hook: H,
}

/// Holds the first batch it is given until a second batch is being applied
/// at the same time (for [`OVERLAP_WAIT`] at most), then applies both
/// through PostgreSQL: whether two of history's lanes ever work at once.
struct Overlap {
    /// Batches being applied now.
    applying: AtomicU32,
    /// Set once two were applied at the same time.
    overlapped: watch::Sender<bool>,
    /// Set once the first batch stopped waiting.
    waited: AtomicBool,
    /// Whether a second batch came while the first waited.
    joined_in_time: AtomicBool,
}

/// How long the first batch waits for a second lane.
const OVERLAP_WAIT: Duration = Duration::from_secs(20);

#[async_trait::async_trait]
impl ApplyHook for Overlap {
    async fn apply(
        &self,
        inner: &confab_history::PostgresStore,
        partition: u32,
        batch: &[IngressRecord],
    ) -> Result<Vec<OutcomeRecord>, confab_history::StoreError> {
        if self.applying.fetch_add(1, Ordering::SeqCst) >= 1 {
            self.overlapped.send_replace(true);
        }
        if !self.waited.swap(true, Ordering::SeqCst) {
            let mut overlapped = self.overlapped.subscribe();
            let joined = tokio::time::timeout(OVERLAP_WAIT, overlapped.wait_for(|o| *o)).await;
            self.joined_in_time.store(joined.is_ok(), Ordering::SeqCst);
        }
        let applied = confab_history::Store::apply(inner, partition, batch).await;
        self.applying.fetch_sub(1, Ordering::SeqCst);
        applied
    }
}

/// Panics on a batch holding a send whose body is [`PANIC_BODY`].
struct PanicOn;

/// The body [`PanicOn`] panics on.
const PANIC_BODY: &str = "this send makes the lane panic";

#[async_trait::async_trait]
impl ApplyHook for PanicOn {
    async fn apply(
        &self,
        inner: &confab_history::PostgresStore,
        partition: u32,
        batch: &[IngressRecord],
    ) -> Result<Vec<OutcomeRecord>, confab_history::StoreError> {
        let poisoned = batch
            .iter()
            .any(|r| matches!(&r.command, Some(Command::Send(s)) if s.body == PANIC_BODY));
        assert!(!poisoned, "a bug in applying partition {partition}'s batch");
        confab_history::Store::apply(inner, partition, batch).await
    }
}

#[async_trait::async_trait]
impl<H: ApplyHook + 'static> confab_history::Store for Hooked<H> {
    async fn apply(
        &self,
        partition: u32,
        batch: &[IngressRecord],
    ) -> Result<Vec<OutcomeRecord>, confab_history::StoreError> {
        self.hook.apply(&self.inner, partition, batch).await
    }

    async fn conversation(
        &self,
        id: &str,
    ) -> Result<Option<confab_proto::v1::Conversation>, confab_history::StoreError> {
        self.inner.conversation(id).await
    }

    async fn listed(
        &self,
        user: &str,
        listing: confab_history::store::Listing<'_>,
        limit: u32,
    ) -> Result<confab_history::store::rows::Listed, confab_history::StoreError> {
        self.inner.listed(user, listing, limit).await
    }

    async fn change_counters(&self) -> Result<Vec<u64>, confab_history::StoreError> {
        self.inner.change_counters().await
    }

    async fn direct_partners(&self, user: &str) -> Result<Vec<String>, confab_history::StoreError> {
        self.inner.direct_partners(user).await
    }

    async fn shared_with(
        &self,
        caller: &str,
        users: &[&str],
    ) -> Result<Vec<String>, confab_history::StoreError> {
        self.inner.shared_with(caller, users).await
    }

    async fn presence(
        &self,
        users: &[&str],
    ) -> Result<Vec<confab_history::store::rows::PresenceRow>, confab_history::StoreError> {
        self.inner.presence(users).await
    }

    async fn record_presence(
        &self,
        updates: &[confab_proto::internal::v1::PresenceUpdate],
    ) -> Result<(), confab_history::StoreError> {
        self.inner.record_presence(updates).await
    }

    async fn departed(
        &self,
        user: &str,
        since: &[u64],
        after: &str,
    ) -> Result<Vec<String>, confab_history::StoreError> {
        self.inner.departed(user, since, after).await
    }

    async fn history(
        &self,
        page: confab_core::validate::Page<'_>,
    ) -> Result<confab_history::store::MessagePage, confab_history::StoreError> {
        self.inner.history(page).await
    }

    async fn targets(
        &self,
        id: &str,
        caller: &str,
        seqs: &[u64],
    ) -> Result<Vec<confab_history::store::rows::TargetRow>, confab_history::StoreError> {
        self.inner.targets(id, caller, seqs).await
    }

    async fn member_history(
        &self,
        caller: &str,
        page: confab_core::validate::Page<'_>,
    ) -> Result<Option<confab_history::store::MessagePage>, confab_history::StoreError> {
        self.inner.member_history(caller, page).await
    }

    async fn reactions(
        &self,
        id: &str,
        seqs: (u64, u64),
        caller: &str,
    ) -> Result<Vec<confab_history::store::rows::ReactionRow>, confab_history::StoreError> {
        self.inner.reactions(id, seqs, caller).await
    }

    async fn versions(
        &self,
        id: &str,
        seq: u64,
    ) -> Result<Vec<confab_history::store::rows::VersionRow>, confab_history::StoreError> {
        self.inner.versions(id, seq).await
    }

    async fn search(
        &self,
        query: &confab_history::store::search::SearchQuery<'_>,
    ) -> Result<Option<Vec<confab_history::store::search::SearchRow>>, confab_history::StoreError>
    {
        self.inner.search(query).await
    }
}

/// The ids of GROUP conversations created through `publisher`, one on
/// each of `partitions` ingress partitions, in partition order.
async fn group_per_partition(
    publisher: &KafkaPublisher<IngressRecord>,
    partitions: usize,
) -> Vec<String> {
    let mut convs: BTreeMap<i32, String> = BTreeMap::new();
    let mut request = 1_000_000u64;
    while convs.len() < partitions {
        assert!(
            request < 1_000_064,
            "64 conversations on too few partitions"
        );
        let id = confab_core::validate::group_conversation_id();
        let create = IngressRecord {
            origin: Some(Origin {
                gateway_id: "gw-test".into(),
                request_id: request,
            }),
            actor_id: "user-0".into(),
            conversation_id: id.clone(),
            command: Some(Command::Create(CreateCommand {
                history_visibility: 0,
                kind: confab_proto::v1::ConversationKind::Group as i32,
                title: "lanes".into(),
                member_ids: vec!["user-0".into(), "user-1".into(), "user-2".into()],
            })),
            traceparent: String::new(),
            accepted_at_ms: 0,
        };
        request += 1;
        let at = publisher
            .publish_with(&id, &create, &[])
            .await
            .expect("publish a create");
        convs.entry(at.partition).or_insert(id);
    }
    convs.into_values().collect()
}

/// A lane that panics stops history's sequencer at once and makes the
/// process not ready (the watch fires, so the process stops serving and
/// exits to be restarted) instead of leaving it ready while nothing is
/// sequenced; the dead lane's records stay uncommitted, so the sequencer
/// that takes over stores every send once, gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_that_panics_makes_history_not_ready_and_loses_nothing() {
    use confab_history::distributed::{sequence, OutcomeLayout};
    use confab_runtime::readiness::watch_part;

    let broker = Broker::start_memory().await;
    let cfg = config(&broker, 2);
    ensure_topics(&cfg).await.expect("create topics");
    let pg = PgCluster::start().unwrap_or_else(|e| panic!("PostgreSQL: {e:#}"));
    let url = pg.fresh_database().await.expect("fresh database");
    let store = |url: String| async move {
        confab_history::PostgresStore::connect(
            &url,
            confab_core::validate::SizeLimits::default(),
            4,
        )
        .await
        .expect("connect to PostgreSQL")
    };
    let publisher = KafkaPublisher::<IngressRecord>::new(&cfg).expect("producer");
    let convs = group_per_partition(&publisher, 2).await;
    // Ten sends in each; the sixth of the first conversation's poisons its lane.
    let mut sends = Vec::new();
    for i in 0..20u64 {
        let mut record = send(&convs[(i % 2) as usize], i);
        if i == 10 {
            if let Some(Command::Send(s)) = &mut record.command {
                s.body = PANIC_BODY.into();
            }
        }
        sends.push(record);
    }
    for record in &sends {
        publisher
            .publish_with(&record.conversation_id, record, &[])
            .await
            .expect("publish a send");
    }
    let group = format!("{}-history", cfg.prefix);
    let readiness = confab_runtime::readiness::Readiness::new();
    readiness.set(true);
    let (_never, shutdown) = confab_runtime::shutdown::channel();
    let sequencer = tokio::spawn(sequence(
        Arc::new(Hooked {
            inner: store(url.clone()).await,
            hook: PanicOn,
        }),
        BatchConsumer::<IngressRecord>::new(&cfg, &group).expect("consumer"),
        KafkaPublisher::<OutcomeRecord>::new(&cfg).expect("outcome producer"),
        OutcomeLayout::PerLane,
        Duration::from_millis(2),
        shutdown.clone(),
    ));
    assert!(readiness.is_ready(), "ready before the lane fails");
    let (watch, failed) = watch_part("sequencer", sequencer, &readiness);
    tokio::time::timeout(Duration::from_secs(60), failed.wait())
        .await
        .expect("the watch fires once the lane panicked");
    let why = readiness.why_not().expect("not ready").to_string();
    assert!(why.contains("sequencer"), "{why}");
    let error = watch.await.expect_err("the sequencer failed").to_string();
    assert!(error.contains("panicked"), "{error}");

    // The process that takes over (a restart) stores everything once.
    let (stop, signal) = confab_runtime::shutdown::channel();
    let takeover = tokio::spawn(sequence(
        Arc::new(store(url.clone()).await),
        BatchConsumer::<IngressRecord>::new(&cfg, &group).expect("consumer"),
        KafkaPublisher::<OutcomeRecord>::new(&cfg).expect("outcome producer"),
        OutcomeLayout::PerLane,
        Duration::from_millis(2),
        signal,
    ));
    let db = sqlx::PgPool::connect(&url).await.expect("connect");
    let stored: Vec<(String, i64, i64, i64)> = confab_tests::poll(
        "every send stored by the sequencer that took over",
        Duration::from_secs(120),
        Duration::from_millis(100),
        || async {
            let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
                "SELECT conversation_id, count(*) FILTER (WHERE kind = 1),
                        count(DISTINCT seq), max(seq)
                 FROM messages WHERE conversation_id = ANY($1) GROUP BY 1 ORDER BY 1",
            )
            .bind(&convs)
            .fetch_all(&db)
            .await?;
            let done = rows.len() == 2 && rows.iter().all(|r| r.1 == 10);
            Ok(done.then_some(rows))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    stop.fire();
    takeover
        .await
        .expect("the sequencer ends at shutdown")
        .expect("no lane failed");
    for (conv, sends, distinct, last) in stored {
        // Seq 1 is the creation event; then every send once, gap-free.
        assert_eq!((sends, distinct, last), (10, 11, 11), "{conv}");
    }
}

/// A backlog on two partitions, more than one partition's run of records
/// in a fetch, is sequenced by both partitions' lanes at once: history's
/// reader reads past the first partition's records (up to its
/// `READ_AHEAD`) instead of waiting for that lane to finish. Then every
/// send is stored once, gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_sequences_a_backlog_of_two_partitions_in_two_lanes_at_once() {
    use confab_history::distributed::{sequence, OutcomeLayout, READ_AHEAD};
    use futures::{StreamExt, TryStreamExt};

    let broker = Broker::start_memory().await;
    let cfg = config(&broker, 2);
    ensure_topics(&cfg).await.expect("create topics");
    let pg = PgCluster::start().unwrap_or_else(|e| panic!("PostgreSQL: {e:#}"));
    let url = pg.fresh_database().await.expect("fresh database");
    let inner = confab_history::PostgresStore::connect(
        &url,
        confab_core::validate::SizeLimits::default(),
        4,
    )
    .await
    .expect("connect to PostgreSQL");
    let publisher = KafkaPublisher::<IngressRecord>::new(&cfg).expect("producer");

    let convs = group_per_partition(&publisher, 2).await;
    // Each partition holds a quarter of the read-ahead: more than one
    // partition's run, all of it readable before a lane is done.
    let per_partition = (READ_AHEAD / 4) as u64;
    let sends: Vec<IngressRecord> = (0..per_partition * 2)
        .map(|i| send(&convs[(i % 2) as usize], i))
        .collect();
    futures::stream::iter(&sends)
        .map(|r| publisher.publish_with(&r.conversation_id, r, &[]))
        .buffer_unordered(512)
        .try_collect::<Vec<_>>()
        .await
        .expect("publish the backlog");

    let (overlapped, _) = watch::channel(false);
    let store = Arc::new(Hooked {
        inner,
        hook: Overlap {
            applying: AtomicU32::new(0),
            overlapped,
            waited: AtomicBool::new(false),
            joined_in_time: AtomicBool::new(false),
        },
    });
    let consumer = BatchConsumer::<IngressRecord>::new(&cfg, &format!("{}-history", cfg.prefix))
        .expect("consumer");
    let outcomes = KafkaPublisher::<OutcomeRecord>::new(&cfg).expect("outcome producer");
    let (stop, signal) = confab_runtime::shutdown::channel();
    let sequencer = tokio::spawn(sequence(
        store.clone(),
        consumer,
        outcomes,
        OutcomeLayout::PerLane,
        Duration::from_millis(2),
        signal,
    ));

    let db = sqlx::PgPool::connect(&url).await.expect("connect");
    let stored: Vec<(String, i64, i64)> = confab_tests::poll(
        "every send stored",
        Duration::from_secs(120),
        Duration::from_millis(100),
        || async {
            let rows: Vec<(String, i64, i64)> = sqlx::query_as(
                "SELECT conversation_id, count(*) FILTER (WHERE kind = 1), max(seq)
                 FROM messages WHERE conversation_id = ANY($1) GROUP BY 1 ORDER BY 1",
            )
            .bind(&convs)
            .fetch_all(&db)
            .await?;
            let done = rows.len() == 2 && rows.iter().all(|r| r.1 as u64 == per_partition);
            Ok(done.then_some(rows))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    stop.fire();
    sequencer
        .await
        .expect("the sequencer ends at shutdown")
        .expect("no lane failed");

    assert!(
        store.hook.joined_in_time.load(Ordering::SeqCst),
        "no second lane applied a batch while the first lane's batch was held for \
         {OVERLAP_WAIT:?}: the reader waited on the first lane instead of reading on"
    );
    for (conv, sends, last) in stored {
        // Seq 1 is the creation event; then every send once, gap-free.
        assert_eq!(last as u64, per_partition + 1, "seqs of {conv}");
        assert_eq!(sends as u64, per_partition, "sends stored in {conv}");
    }

    // The lanes published each batch's outcomes together (the topics have
    // as many partitions): far fewer records than outcomes, every outcome
    // on the log once, each conversation's in seq order.
    let (records, seqs) = outcomes_on_the_log(&cfg, |seqs| {
        convs
            .iter()
            .all(|c| seqs.get(c).map_or(0, Vec::len) as u64 > per_partition)
    })
    .await;
    let outcomes: usize = seqs.values().map(Vec::len).sum();
    assert!(
        records * 10 <= outcomes,
        "{records} records for {outcomes} outcomes"
    );
    for conv in &convs {
        let want: Vec<u64> = (1..=per_partition + 1).collect();
        assert_eq!(seqs.get(conv.as_str()), Some(&want), "outcomes of {conv}");
    }
}

/// Reads the messages topic from the start until `done` holds for the
/// event seqs read so far, by conversation in the order read: how many
/// records carried them, and those seqs.
async fn outcomes_on_the_log(
    cfg: &KafkaConfig,
    done: impl Fn(&HashMap<String, Vec<u64>>) -> bool,
) -> (usize, HashMap<String, Vec<u64>>) {
    let mut consumer =
        BatchConsumer::<OutcomeRecord>::new(cfg, "outcomes-read-back").expect("consumer");
    let deadline = Instant::now() + DEADLINE;
    let mut records = 0;
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    while !done(&seqs) {
        let left = deadline.saturating_duration_since(Instant::now());
        let batch = tokio::time::timeout(left, consumer.next_batch(100, Duration::from_millis(50)))
            .await
            .unwrap_or_else(|_| panic!("timed out with {records} records read"))
            .expect("next_batch");
        for consumed in batch.records {
            records += 1;
            let record = consumed.record;
            let carried = if record.batched.is_empty() {
                vec![record]
            } else {
                record.batched
            };
            for outcome in carried {
                for event in outcome.events {
                    seqs.entry(event.conversation_id)
                        .or_default()
                        .push(event.seq);
                }
            }
        }
    }
    consumer.close().await;
    (records, seqs)
}
