//! Per-user limits through real clients: each refusal is RESOURCE_EXHAUSTED
//! naming the limit and its value, and another user on the same gateway is
//! served as usual meanwhile.

use confab_proto::v1::{client_frame, server_frame, ConversationKind, Ping, SendAck, SendFrame};
use confab_tests::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

const RATE_MESSAGE: &str =
    "rate limit: at most 2 messages per second per user (burst 4); slow down";

/// 2 messages per second, burst 4.
async fn rate_limited() -> Embedded {
    Embedded::start_with(&[
        ("CONFAB_RATE_MESSAGES_PER_SEC", "2"),
        ("CONFAB_RATE_MESSAGES_BURST", "4"),
    ])
    .await
}

/// Most sends a bucket of burst 4 at 2/s can admit over `elapsed`.
fn most_admitted(elapsed: Duration) -> usize {
    4 + (elapsed.as_secs_f64() * 2.0).ceil() as usize
}

/// Sends as `user` until one is accepted, or fails after `DEADLINE`.
async fn send_until_accepted(user: &User, conv: &str, id: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match user.send(conv, id, "again").await {
            Ok(_) => return,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(Instant::now() < deadline, "the bucket never refilled");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("unexpected refusal: {s:?}"),
        }
    }
}

#[tokio::test]
async fn a_flooding_user_is_refused_while_another_sends_at_normal_latency() {
    let server = rate_limited().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let conv = alice.group("flood", &["bob"]).await;

    // alice floods from four tasks until bob is done.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut flooders = Vec::new();
    for w in 0..4 {
        let (alice, id, stop) = (alice.clone(), conv.id.clone(), stop.clone());
        flooders.push(tokio::spawn(async move {
            let (mut accepted, mut refused) = (0usize, Vec::new());
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) || i < 10 {
                match alice.send(&id, &format!("f{w}-{i}"), "spam").await {
                    Ok(_) => accepted += 1,
                    Err(s) => refused.push(s),
                }
                i += 1;
            }
            (accepted, refused)
        }));
    }
    // bob's burst is his own: every send succeeds, each promptly.
    for i in 0..4 {
        let t = Instant::now();
        bob.send(&conv.id, &format!("b{i}"), "hello")
            .await
            .expect("bob is not limited by alice");
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "bob's send {i} took {took:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (mut accepted, mut refused) = (0, Vec::new());
    for f in flooders {
        let (a, r) = f.await.expect("flooder");
        accepted += a;
        refused.extend(r);
    }
    let elapsed = started.elapsed();
    assert!(!refused.is_empty(), "alice was never refused");
    for s in &refused {
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert_eq!(s.message(), RATE_MESSAGE);
    }
    assert!(
        accepted <= most_admitted(elapsed),
        "{accepted} accepted in {elapsed:?}"
    );
    // The bucket refills: alice gets through again.
    send_until_accepted(&alice, &conv.id, "after").await;
    server.stop().await;
}

#[tokio::test]
async fn stream_sends_share_the_budget_and_are_refused_in_the_ack() {
    let server = rate_limited().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let conv = alice.group("stream", &["bob"]).await;
    let mut session = alice.live().await;
    let started = Instant::now();
    // Half of the frames against unary sends at the same time: one budget,
    // so together they get no more than one bucket allows.
    const FRAMES: usize = 12;
    for i in 0..FRAMES {
        session
            .send(client_frame::Frame::Send(SendFrame {
                conversation_id: conv.id.clone(),
                client_msg_id: format!("s{i}"),
                body: "via stream".into(),
            }))
            .await;
    }
    let unary = futures::future::join_all((0..FRAMES).map(|i| {
        let (alice, id) = (alice.clone(), conv.id.clone());
        async move { alice.send(&id, &format!("u{i}"), "via unary").await }
    }))
    .await;
    let mut acks: Vec<SendAck> = Vec::new();
    while acks.len() < FRAMES {
        if let server_frame::Frame::Ack(a) = session.next_frame().await.expect("ack") {
            acks.push(a);
        }
    }
    let elapsed = started.elapsed();
    let refused: Vec<_> = acks.iter().filter_map(|a| a.error.as_ref()).collect();
    assert!(!refused.is_empty(), "no stream send was refused: {acks:?}");
    for e in &refused {
        assert_eq!(e.code, Code::ResourceExhausted as i32, "{e:?}");
        assert_eq!(e.message, RATE_MESSAGE);
    }
    for r in unary.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), Code::ResourceExhausted, "{r:?}");
        assert_eq!(r.message(), RATE_MESSAGE);
    }
    let accepted = (FRAMES - refused.len()) + unary.iter().filter(|r| r.is_ok()).count();
    assert!(
        accepted <= most_admitted(elapsed),
        "{accepted} accepted in {elapsed:?}: stream and unary sends share one budget"
    );
    // bob is untouched, and so is alice's stream itself.
    bob.send(&conv.id, "b", "fine").await.expect("bob sends");
    session
        .send(client_frame::Frame::Ping(Ping { nonce: 7 }))
        .await;
    loop {
        if let server_frame::Frame::Pong(p) = session.next_frame().await.expect("pong") {
            assert_eq!(p.nonce, 7);
            break;
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn the_stream_cap_refuses_one_more_connect_of_that_user_only() {
    let server = Embedded::start_with(&[("CONFAB_MAX_STREAMS_PER_USER", "2")]).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let first = alice.live().await;
    let _second = alice.live().await;
    let refused = alice
        .session(client_frame::Frame::Ping(Ping { nonce: 3 }))
        .await
        .err()
        .expect("a third stream is refused at open");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(
        refused.message(),
        "stream limit: at most 2 concurrent Connect streams per user; close one before opening another"
    );
    // bob has slots of his own.
    let _bob1 = bob.live().await;
    let _bob2 = bob.live().await;
    // Closing a stream frees its slot once the gateway sees it gone.
    drop(first);
    let deadline = Instant::now() + DEADLINE;
    let _third = loop {
        match alice
            .session(client_frame::Frame::Ping(Ping { nonce: 4 }))
            .await
        {
            Ok(s) => break s,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(Instant::now() < deadline, "the slot was never freed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("unexpected refusal: {s:?}"),
        }
    };
    server.stop().await;
}

#[tokio::test]
async fn conversation_creation_is_limited_per_user() {
    let server = Embedded::start_with(&[("CONFAB_RATE_CONVERSATIONS_PER_MIN", "3")]).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    for i in 0..3 {
        alice
            .create(ConversationKind::Group, &format!("g{i}"), &["bob"])
            .await
            .expect("within the limit");
    }
    let refused = alice
        .create(ConversationKind::Group, "one too many", &[])
        .await
        .expect_err("a fourth within the minute is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(
        refused.message(),
        "conversation limit: at most 3 conversations created per minute per user; wait before creating more"
    );
    // bob's budget is his own, and alice can still write where she is.
    let conv = bob.group("bob's", &["alice"]).await;
    alice
        .send(&conv.id, "m", "still here")
        .await
        .expect("messages are a separate budget");
    server.stop().await;
}

#[test]
fn a_limit_below_one_is_a_configuration_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    for key in [
        "CONFAB_RATE_MESSAGES_PER_SEC",
        "CONFAB_RATE_MESSAGES_BURST",
        "CONFAB_MAX_STREAMS_PER_USER",
        "CONFAB_RATE_CONVERSATIONS_PER_MIN",
    ] {
        let mut env = std::collections::HashMap::new();
        env.insert("CONFAB_JWT_SECRET".to_string(), SECRET.to_string());
        env.insert(
            "CONFAB_DATA_DIR".to_string(),
            dir.path().display().to_string(),
        );
        env.insert(key.to_string(), "0".to_string());
        let err = confab::dev::DevConfig::from_env(&env)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(format!("invalid configuration: {key}=\"0\": must be at least 1").as_str())
        );
    }
}
