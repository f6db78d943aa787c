//! The distributed topology end to end: one of each service on the real
//! broker and PostgreSQL.

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
    cluster.stop().await;
}
