//! The distributed topology end to end: one of each service on the real
//! broker and PostgreSQL.

use confab_proto::internal::v1::{IngressRecord, OutcomeRecord};
use confab_tests::cluster::{Cluster, Shape};
use confab_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_travels_through_kafka_and_postgres_to_a_live_session() {
    let cluster = Cluster::start(Shape::default()).await;
    let alice = cluster.user(0, "alice").await;
    let bob = cluster.user(0, "bob").await;
    let conv = alice.group("lunch", &["bob"]).await;
    let mut bob_s = bob.live().await;
    let sent = alice.send(&conv.id, "m1", "hi bob").await.expect("send");
    assert_eq!(sent.seq, 2);
    let (msgs, _) = bob_s.messages_until(&conv.id, 2).await.expect("delivered");
    assert_eq!(seqs(&msgs), vec![2]);
    let again = alice.send(&conv.id, "m1", "hi bob").await.expect("retry");
    assert_eq!(again.seq, 2);
    assert_eq!(bob.all_seqs(&conv.id).await, vec![1, 2]);

    // Both topics carry the idempotency key and one trace per request: the
    // outcome on the messages topic continues the trace of its ingress
    // record, from history's span (same trace id, another span id).
    let key = format!("{}/alice/m1", conv.id);
    let ingress = observe::<IngressRecord>(&cluster, "observer-ingress", |c| {
        c.idempotency_key() == Some(key.as_str())
    })
    .await;
    let outcome = observe::<OutcomeRecord>(&cluster, "observer-messages", |c| {
        c.idempotency_key() == Some(key.as_str()) && !c.record.replay
    })
    .await;
    let trace = ingress
        .traceparent()
        .expect("ingress record has a traceparent header");
    assert!(trace.starts_with("00-") && trace.len() == 55, "{trace}");
    let ids = |tp: &str| tp.split('-').map(str::to_string).collect::<Vec<_>>();
    let continued = outcome
        .traceparent()
        .expect("outcome record has a traceparent header");
    assert_eq!(
        ids(continued)[1],
        ids(trace)[1],
        "the outcome continues the request's trace"
    );
    assert_ne!(ids(continued)[2], ids(trace)[2], "from a span of history's");
    assert_eq!(ingress.record.traceparent, trace);
    assert_eq!(outcome.record.traceparent, continued);
    cluster.stop().await;
}

/// The first record of `T`'s topic matching `pred`, read by a new consumer
/// group from the beginning.
async fn observe<T: confab_kafka::KafkaRecord>(
    cluster: &Cluster,
    group: &str,
    pred: impl Fn(&confab_kafka::Consumed<T>) -> bool,
) -> confab_kafka::Consumed<T> {
    let mut consumer =
        confab_kafka::BatchConsumer::<T>::new(&cluster.kafka, group).expect("consumer");
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let batch = tokio::time::timeout(
            left,
            consumer.next_batch(100, std::time::Duration::from_millis(5)),
        )
        .await
        .expect("the record arrives in time")
        .expect("consume");
        if let Some(found) = batch.records.into_iter().find(|c| pred(c)) {
            consumer.close().await;
            return found;
        }
    }
}
