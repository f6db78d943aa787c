//! Promise 1 in embedded mode: every acknowledged message survives `kill -9`
//! of the real `confab dev` process and a restart on the same data; so do
//! read positions that were returned, sync cursors taken before, and when
//! a user was last seen.

use confab_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let grace = [("CONFAB_PRESENCE_GRACE_MS", "100")];
    let mut server = DevProcess::start_with(dir.path(), port, &grace, None).expect("start");
    let alice = User::connect(server.addr, "alice").await;
    let conv = alice.group("durable", &["bob"]).await;
    let quiet = alice.group("quiet", &["bob"]).await;
    let bob = User::connect(server.addr, "bob").await;
    let mut copy = SyncCopy::default();
    bob.sync_into(&mut copy).await.expect("first sync");
    assert_eq!(copy.conversations.len(), 2);
    // Bob comes and goes: alice sees when he was last seen.
    drop(bob.live().await);
    let bob_last_seen = last_seen(&alice, "bob").await;
    // Senders run until the process dies under them; whatever was acked counts.
    let writers = Writers::start(&alice, &conv.id, 4);
    // Kill once a good number of messages is committed.
    alice
        .wait_newest_above(&conv.id, 200, DEADLINE)
        .await
        .expect("messages committed in time");
    let read = bob.mark_read(&conv.id, 150, false).await.expect("read");
    assert_eq!(read.read_seq, 150);
    server.kill9();
    // Committed messages whose ack was still on its way when the process
    // died are not counted: a few fewer than the 200 committed.
    let acked_before_kill = writers.acked_at_least(150).await;
    drop(server);
    let server = DevProcess::start(dir.path(), port).expect("restart");
    let alice = User::connect(server.addr, "alice").await;
    let page_seqs = alice.all_seqs(&conv.id).await;
    assert_acked_stored(&acked_before_kill, &page_seqs);
    // Retrying an acked send after the restart returns the original seq.
    let (id, seq) = &acked_before_kill[acked_before_kill.len() / 2];
    let again = alice.send(&conv.id, id, "keep me").await.expect("retry");
    assert_eq!(again.seq, *seq);
    // And new messages continue the sequence.
    let next = alice
        .send(&conv.id, "after-restart", "hello again")
        .await
        .expect("send");
    assert_eq!(next.seq, page_seqs.len() as u64 + 1);
    // Bob's cursor from before the crash: only the busy conversation
    // changed, as it is now, with his read position.
    let bob = User::connect(server.addr, "bob").await;
    let synced = bob.sync_into(&mut copy).await.expect("sync after restart");
    assert_eq!(
        (synced.changed, synced.removed),
        (vec![conv.id.clone()], vec![])
    );
    let busy = &copy.conversations[&conv.id];
    assert_eq!((busy.last_seq, busy.read_seq), (next.seq, 150));
    assert_eq!(copy.conversations[&quiet.id].last_seq, 1);
    let again = bob.sync_into(&mut copy).await.expect("sync again");
    assert_eq!(again, Synced::default());
    // When bob was last seen survived too.
    assert_eq!(last_seen(&alice, "bob").await, bob_last_seen);
}

/// When `user` was last seen, as `asker` gets it once `user` is offline.
async fn last_seen(asker: &User, user: &str) -> confab_proto::prost_types::Timestamp {
    poll(
        &format!("{user} offline"),
        DEADLINE,
        std::time::Duration::from_millis(20),
        || async move {
            let asked = asker.get_presence(&[user]).await?;
            Ok(asked
                .presences
                .into_iter()
                .find(|p| p.user_id == user && !p.online)
                .and_then(|p| p.last_seen))
        },
    )
    .await
    .expect("offline, with a last seen time")
}
