//! Promise 1 in distributed mode, like `durability.rs` for `confab dev`:
//! the real `confab-gateway`, `confab-router` and `confab-history` binaries
//! run as processes on a real broker and PostgreSQL; while senders run, all
//! three are killed with SIGKILL, then started again on the same storage.
//! Every acknowledged message must be in history under its seq, without
//! gaps, and retrying an acknowledged send must return its original seq.

use confab_tests::broker::Broker;
use confab_tests::postgres::PgCluster;
use confab_tests::stack::{ProcStack, Role};
use confab_tests::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9_of_every_service() {
    let pg = PgCluster::start().expect("postgres");
    let database_url = pg.fresh_database().await.expect("database");
    let broker = Broker::start_postgres(&pg).await;
    let mut stack = ProcStack::builder("durable")
        .partitions(4)
        .log("info")
        .env_for(Role::Gateway, "CONFAB_SEND_TIMEOUT_MS", "3000")
        .start(&broker, &database_url);
    let gateway = stack.gateway_addr(0);
    let alice = User::connect(gateway, "alice").await;
    // Consumer groups may still be forming.
    let conv = alice.group_when_ready("durable", &["bob"]).await;
    let quiet = alice.group_when_ready("quiet", &["bob"]).await;
    let bob = User::connect(gateway, "bob").await;
    let mut copy = SyncCopy::default();
    bob.sync_into(&mut copy).await.expect("first sync");
    assert_eq!(copy.conversations.len(), 2);
    // Writers send until the processes die under them; whatever was
    // acknowledged counts.
    let writers = Writers::start(&alice, &conv.id, 4);
    let committed = alice.wait_newest_above(&conv.id, 60, DEADLINE * 3).await;
    if let Err(e) = committed {
        panic!(
            "messages were not committed in time ({e}); gateway log:\n{}",
            stack.gateways[0].tail(30)
        );
    }
    let read = bob.mark_read(&conv.id, 30, false).await.expect("read");
    assert_eq!(read.read_seq, 30);
    stack.kill9_all();
    let acked = writers.acked_at_least(40).await;

    stack.start_all();
    let alice = User::connect(gateway, "alice").await;
    // Reads come back first; the acknowledged messages are all there.
    let stored = poll(
        "history to come back",
        DEADLINE * 2,
        Duration::from_millis(50),
        || async { Ok(alice.try_all_seqs(&conv.id).await.ok()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", stack.histories[0].tail(30)));
    assert_acked_stored(&acked, &stored);
    // Retrying acknowledged sends returns their original seqs, and nothing new is stored.
    for (key, seq) in acked.iter().step_by(acked.len() / 3 + 1) {
        let again = alice.send_until_acked(&conv.id, key, "keep me").await;
        assert_eq!(again.seq, *seq, "retry of {key}");
    }
    let next = alice
        .send_until_acked(&conv.id, "after-restart", "hello again")
        .await;
    assert!(
        next.seq > *stored.last().unwrap_or(&0),
        "the sequence continues after the crash"
    );
    // Records the broker accepted before the crash but history had not
    // sequenced yet (never acknowledged) may be sequenced after the restart:
    // that is allowed; a gap or a second copy is not.
    let all = alice.all_seqs(&conv.id).await;
    assert_eq!(
        all,
        (1..=all.len() as u64).collect::<Vec<_>>(),
        "gap-free after the restart"
    );
    assert!(all.contains(&next.seq));
    let page = alice
        .history(&conv.id, None, Some(0), 500)
        .await
        .expect("history");
    let mut keys: Vec<&str> = page
        .messages
        .iter()
        .map(|m| m.client_msg_id.as_str())
        .filter(|k| !k.is_empty())
        .collect();
    let before = keys.len();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), before, "no client_msg_id is stored twice");
    // Bob's cursor from before the crash: only the busy conversation
    // changed, as it is now, with his read position.
    let bob = User::connect(gateway, "bob").await;
    let synced = bob.sync_into(&mut copy).await.expect("sync after restart");
    assert_eq!(
        (synced.changed, synced.removed),
        (vec![conv.id.clone()], vec![])
    );
    let busy = &copy.conversations[&conv.id];
    assert_eq!(
        (busy.last_seq, busy.read_seq),
        (*all.last().unwrap_or(&0), 30)
    );
    assert_eq!(copy.conversations[&quiet.id].last_seq, 1);
    let again = bob.sync_into(&mut copy).await.expect("sync again");
    assert_eq!(again, Synced::default());
    drop(stack);
}
