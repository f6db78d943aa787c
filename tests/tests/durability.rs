//! Promise 1 in embedded mode: every acknowledged message survives `kill -9`
//! of the real `confab dev` process and a restart on the same data.

use confab_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut server = DevProcess::start(dir.path(), port).expect("start");
    let alice = User::connect(server.addr, "alice").await;
    let conv = alice.group("durable", &["bob"]).await;
    // Senders run until the process dies under them; whatever was acked counts.
    let mut writers = Vec::new();
    for w in 0..4 {
        let alice = alice.clone();
        let id = conv.id.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0.. {
                match alice.send(&id, &format!("w{w}-{i}"), "keep me").await {
                    Ok(m) => acked.push((format!("w{w}-{i}"), m.seq)),
                    Err(_) => return acked,
                }
            }
            acked
        }));
    }
    let acked_before_kill = {
        let alice = alice.clone();
        let id = conv.id.clone();
        // Kill once a good number of messages is committed.
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let page = alice.history(&id, None, None, 1).await.expect("history");
            if page.messages.first().map(|m| m.seq).unwrap_or(0) > 200 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "messages were not committed in time"
            );
            tokio::task::yield_now().await;
        }
        server.kill9();
        let mut all = Vec::new();
        for w in writers {
            all.extend(w.await.expect("writer"));
        }
        all
    };
    // Committed messages whose ack was still on its way when the process
    // died are not counted: a few fewer than the 200 committed.
    assert!(
        acked_before_kill.len() >= 150,
        "{} acked",
        acked_before_kill.len()
    );
    drop(server);
    let server = DevProcess::start(dir.path(), port).expect("restart");
    let alice = User::connect(server.addr, "alice").await;
    let page_seqs = alice.all_seqs(&conv.id).await;
    let stored: std::collections::HashSet<u64> = page_seqs.iter().copied().collect();
    for (id, seq) in &acked_before_kill {
        assert!(
            stored.contains(seq),
            "acked message {id} (seq {seq}) was lost"
        );
    }
    assert_eq!(
        page_seqs,
        (1..=page_seqs.len() as u64).collect::<Vec<_>>(),
        "no gaps after the crash"
    );
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
}
