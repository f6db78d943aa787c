//! The promises of ARCHITECTURE.md through real tonic clients, written once
//! and run against both topologies (`tests/embedded.rs`,
//! `tests/distributed.rs`): order and gap-freedom, dedupe, multi-session
//! delivery, resume, membership changes and every error case.

pub mod changes;
pub mod presence;
pub mod sync;

use confab_proto::v1::{
    client_frame, server_frame, Conversation, ConversationKind, HistoryVisibility, Ping, ReadState,
    Resume,
};
use confab_tests::server::{Kind, Server, Settings};
use confab_tests::*;
use std::collections::HashMap;
use tonic::Code;

/// A server of `kind` with default settings, and a client for each of
/// `names`.
async fn with_users<const N: usize>(kind: Kind, names: [&str; N]) -> (Server, [User; N]) {
    with_users_and(kind, Settings::default(), names).await
}

/// `with_users` on a server with `settings`.
async fn with_users_and<const N: usize>(
    kind: Kind,
    settings: Settings,
    names: [&str; N],
) -> (Server, [User; N]) {
    let server = Server::start(kind, settings).await;
    let mut users = Vec::with_capacity(N);
    for name in names {
        users.push(server.user(name).await);
    }
    let mut users = users.into_iter();
    let users = std::array::from_fn(|_| users.next().expect("a user per name"));
    (server, users)
}

pub async fn concurrent_senders_get_one_gap_free_order_that_every_member_sees(kind: Kind) {
    let server = Server::start(kind, Settings::default()).await;
    let names = ["alice", "bob", "carol", "dave"];
    let alice = server.user("alice").await;
    let conv = alice.group("busy", &names[1..]).await;
    let mut sessions = Vec::new();
    for n in names {
        sessions.push(server.user(n).await.live().await);
    }
    const PER_USER: usize = 50;
    let mut senders = Vec::new();
    for n in names {
        let user = server.user(n).await;
        let conv = conv.id.clone();
        senders.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..PER_USER {
                let m = user
                    .send(&conv, &format!("{n}-{i}"), &format!("{n} says {i}"))
                    .await
                    .expect("send");
                acked.push(m.seq);
            }
            acked
        }));
    }
    let mut all_acked = Vec::new();
    for s in senders {
        let acked = s.await.expect("sender");
        // One sender's messages are sequenced in the order it sent them.
        assert!(acked.windows(2).all(|w| w[0] < w[1]), "{acked:?}");
        all_acked.extend(acked);
    }
    all_acked.sort_unstable();
    let last = 1 + (names.len() * PER_USER) as u64;
    assert_eq!(
        all_acked,
        (2..=last).collect::<Vec<_>>(),
        "acks are the seqs 2..=last, once each"
    );
    assert_eq!(
        alice.all_seqs(&conv.id).await,
        (1..=last).collect::<Vec<_>>()
    );
    for (n, mut s) in names.iter().zip(sessions) {
        let (msgs, _) = s.messages_until(&conv.id, last).await.expect("deliveries");
        // Live delivery started after creation (seq 1).
        assert_eq!(
            seqs(&msgs),
            (2..=last).collect::<Vec<_>>(),
            "{n} sees every seq once, in order"
        );
    }
    server.stop().await;
}

pub async fn a_retried_send_returns_the_original_and_stores_nothing_twice(kind: Kind) {
    let server = Server::start(kind, Settings::default()).await;
    let alice = server.user("alice").await;
    let conv = alice.group("retry", &["bob"]).await;
    let first = alice.send(&conv.id, "once", "hello").await.expect("send");
    let again = alice
        .send(&conv.id, "once", "hello (retried)")
        .await
        .expect("retry");
    assert_eq!((again.seq, again.body.as_str()), (first.seq, "hello"));
    // Concurrent retries of a new key: all get the same seq.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let a = alice.clone();
        let id = conv.id.clone();
        tasks.push(tokio::spawn(async move {
            a.send(&id, "racy", "x").await.expect("send").seq
        }));
    }
    let mut racy = Vec::new();
    for t in tasks {
        racy.push(t.await.expect("task"));
    }
    racy.dedup();
    assert_eq!(racy.len(), 1, "one seq for one client_msg_id: {racy:?}");
    // The stream's send frame dedupes too.
    let mut s = alice.live().await;
    s.send_text(&conv.id, "once", "again").await;
    let ack = s.next_ack().await;
    assert_eq!((ack.seq, ack.error), (first.seq, None));
    assert_eq!(alice.all_seqs(&conv.id).await, vec![1, 2, 3]);
    server.stop().await;
}

pub async fn every_session_of_every_member_gets_the_message_sender_included(kind: Kind) {
    let (server, [alice, bob, carol]) = with_users(kind, ["alice", "bob", "carol"]).await;
    let conv = alice.group("multi", &["bob"]).await;
    let mut bob1 = bob.live().await;
    let mut bob2 = bob.live().await;
    let mut alice1 = alice.live().await;
    let mut carol1 = carol.live().await;
    // Sent over alice's own stream: she gets the ack and the message.
    alice1.send_text(&conv.id, "m1", "hi all").await;
    for s in [&mut bob1, &mut bob2, &mut alice1] {
        let (msgs, _) = s.messages_until(&conv.id, 2).await.expect("delivered");
        assert_eq!(seqs(&msgs), vec![2]);
        assert_eq!(
            (msgs[0].sender_id.as_str(), msgs[0].body.as_str()),
            ("alice", "hi all")
        );
    }
    // carol is not a member: the next thing she sees is her own pong.
    carol1
        .send(client_frame::Frame::Ping(Ping { nonce: 9 }))
        .await;
    let f = carol1.next_frame().await.expect("frame");
    assert!(matches!(f, server_frame::Frame::Pong(_)), "carol got {f:?}");
    server.stop().await;
}

pub async fn resume_sends_exactly_what_was_missed_while_others_keep_sending(kind: Kind) {
    let (server, [alice, bob]) = with_users(kind, ["alice", "bob"]).await;
    let conv = alice.group("resume", &["bob"]).await;
    for i in 0..20 {
        alice
            .send(&conv.id, &format!("before-{i}"), "x")
            .await
            .expect("send");
    }
    // bob saw up to seq 8, then his stream broke.
    let last_seen = 8u64;
    const DURING: usize = 300;
    let writer = {
        let alice = alice.clone();
        let id = conv.id.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for i in 0..DURING {
                last = alice
                    .send(&id, &format!("during-{i}"), "y")
                    .await
                    .expect("send")
                    .seq;
            }
            last
        })
    };
    let mut s = bob
        .session(client_frame::Frame::Resume(Resume {
            last_seq: HashMap::from([(conv.id.clone(), last_seen)]),
        }))
        .await
        .expect("resume");
    let final_seq = writer.await.expect("writer");
    assert_eq!(final_seq, 21 + DURING as u64);
    let (msgs, others) = s
        .messages_until(&conv.id, final_seq)
        .await
        .expect("catch up");
    assert_eq!(
        seqs(&msgs),
        (last_seen + 1..=final_seq).collect::<Vec<_>>(),
        "every missed seq once, in order, then live"
    );
    let caught_up: Vec<_> = others
        .iter()
        .filter_map(|f| match f {
            server_frame::Frame::CaughtUp(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(caught_up.len(), 1, "{others:?}");
    assert!(caught_up[0].error.is_none());
    assert!(caught_up[0].seq > last_seen);
    server.stop().await;
}

/// A resume from the largest seq there is is caught up at once and the
/// stream goes on (the session computed `seq + 1`, overflowing: its task
/// panicked and the stream just ended; found writing the fuzz targets).
pub async fn resuming_from_the_largest_seq_is_caught_up_and_the_stream_goes_on(kind: Kind) {
    let (server, [alice, bob]) = with_users(kind, ["alice", "bob"]).await;
    let conv = alice.group("max-seq", &["bob"]).await;
    alice.send(&conv.id, "m1", "x").await.expect("send");
    let mut s = bob
        .session(client_frame::Frame::Resume(Resume {
            last_seq: HashMap::from([(conv.id.clone(), u64::MAX)]),
        }))
        .await
        .expect("resume");
    match s.next_frame().await.expect("caught up") {
        server_frame::Frame::CaughtUp(c) => {
            assert_eq!(c.conversation_id, conv.id);
            assert!(c.error.is_none(), "{c:?}");
            assert_eq!(c.seq, u64::MAX);
        }
        other => panic!("expected caught_up, got {other:?}"),
    }
    s.send(client_frame::Frame::Ping(Ping { nonce: 9 })).await;
    let f = s.next_frame().await.expect("pong");
    assert!(
        matches!(f, server_frame::Frame::Pong(ref p) if p.nonce == 9),
        "{f:?}"
    );
    server.stop().await;
}

pub async fn membership_changes_are_sequenced_events_and_removal_stops_delivery(kind: Kind) {
    let (server, [alice, bob, carol]) = with_users(kind, ["alice", "bob", "carol"]).await;
    let conv = alice.group("team", &["bob"]).await;
    assert_eq!(conv.last_seq, 1);
    let mut carol_s = carol.live().await;
    let mut bob_s = bob.live().await;
    let after_add = alice.add_members(&conv.id, &["carol"]).await.expect("add");
    assert_eq!((after_add.last_seq, after_add.member_ids.len()), (2, 3));
    let (msgs, _) = carol_s
        .messages_until(&conv.id, 2)
        .await
        .expect("carol sees her addition");
    assert_eq!(
        msgs[0].membership.as_ref().map(|m| m.user_ids.clone()),
        Some(vec!["carol".to_string()])
    );
    alice.send(&conv.id, "m", "welcome").await.expect("send");
    let (msgs, _) = carol_s
        .messages_until(&conv.id, 3)
        .await
        .expect("carol sees messages");
    assert_eq!(msgs[0].body, "welcome");
    // alice removes carol: carol sees her removal and nothing after it.
    alice
        .remove_member(&conv.id, "carol")
        .await
        .expect("remove");
    alice
        .send(&conv.id, "secret", "carol is gone")
        .await
        .expect("send");
    let (msgs, _) = carol_s
        .messages_until(&conv.id, 4)
        .await
        .expect("removal event");
    assert_eq!(msgs[0].body, "alice removed carol");
    let (msgs, _) = bob_s
        .messages_until(&conv.id, 5)
        .await
        .expect("bob sees everything");
    assert_eq!(seqs(&msgs), vec![2, 3, 4, 5]);
    carol_s
        .send(client_frame::Frame::Ping(Ping { nonce: 5 }))
        .await;
    let f = carol_s.next_frame().await.expect("frame");
    assert!(
        matches!(f, server_frame::Frame::Pong(_)),
        "carol must not get seq 5: {f:?}"
    );
    let err = carol
        .history(&conv.id, None, None, 10)
        .await
        .expect_err("no longer a member");
    assert_eq!(err.code(), Code::PermissionDenied);
    // bob leaves.
    let after = bob.remove_member(&conv.id, "bob").await.expect("leave");
    assert_eq!(after.member_ids, vec!["alice".to_string()]);
    let list = bob.list().await.expect("list");
    assert!(list.conversations.is_empty());
    let list = alice.list().await.expect("list");
    assert_eq!(list.conversations.len(), 1);
    assert_eq!(list.conversations[0].last_seq, 6);
    server.stop().await;
}

/// A member removed and added again: their stream carries what their
/// history shows them, the messages sent while they were out in a SHARED
/// conversation and none of them in a SINCE_JOINED one, then the event
/// that added them and what follows.
pub async fn a_re_added_members_stream_carries_what_their_history_shows(kind: Kind) {
    let (server, [alice, bob]) = with_users(kind, ["alice", "bob"]).await;
    let mut bob_s = bob.live().await;
    for (visibility, while_out_shown) in [
        (HistoryVisibility::Shared, true),
        (HistoryVisibility::SinceJoined, false),
    ] {
        let conv = alice
            .create_with(ConversationKind::Group, "back again", &["bob"], visibility)
            .await
            .expect("create");
        alice
            .send(&conv.id, "before", "before")
            .await
            .expect("send");
        let (msgs, _) = bob_s.messages_until(&conv.id, 2).await.expect("bob reads");
        assert_eq!(seqs(&msgs), vec![1, 2], "the creation, then a message");
        alice.remove_member(&conv.id, "bob").await.expect("remove");
        let (msgs, _) = bob_s
            .messages_until(&conv.id, 3)
            .await
            .expect("bob sees his removal");
        assert_eq!(msgs[0].body, "alice removed bob");
        alice
            .send(&conv.id, "while-out", "while bob was out")
            .await
            .expect("send");
        alice.add_members(&conv.id, &["bob"]).await.expect("re-add");
        let back = alice
            .send(&conv.id, "back", "welcome back")
            .await
            .expect("send");
        assert_eq!(back.seq, 6);
        let (msgs, _) = bob_s
            .messages_until(&conv.id, 6)
            .await
            .expect("bob's stream goes on");
        // Exactly what his history now shows after his removal.
        let history: Vec<u64> = bob
            .all_messages(&conv.id)
            .await
            .expect("bob's history")
            .iter()
            .map(|m| m.seq)
            .filter(|s| *s > 3)
            .collect();
        assert_eq!(seqs(&msgs), history, "{visibility:?}");
        let expected = if while_out_shown {
            vec![4, 5, 6]
        } else {
            vec![5, 6]
        };
        assert_eq!(seqs(&msgs), expected, "{visibility:?}");
    }
    server.stop().await;
}

pub async fn direct_conversations_are_unique_per_pair(kind: Kind) {
    let (server, [alice, bob]) = with_users(kind, ["alice", "bob"]).await;
    let a = alice
        .create(ConversationKind::Direct, "", &["bob"])
        .await
        .expect("create");
    let b = bob
        .create(ConversationKind::Direct, "", &["alice", "bob"])
        .await
        .expect("create again");
    assert_eq!(a.id, b.id);
    assert_eq!(b.last_seq, 1, "no second creation event");
    assert_eq!(a.member_ids, vec!["alice".to_string(), "bob".into()]);
    let other = alice
        .create(ConversationKind::Direct, "", &["carol"])
        .await
        .expect("another pair");
    assert_ne!(other.id, a.id);
    server.stop().await;
}

pub async fn history_pages_by_seq_in_both_directions(kind: Kind) {
    let server = Server::start(kind, Settings::default()).await;
    let alice = server.user("alice").await;
    let conv = alice.group("pages", &[]).await;
    for i in 0..59 {
        alice
            .send(&conv.id, &format!("p{i}"), &format!("{i}"))
            .await
            .expect("send");
    }
    // 60 seqs. From the end, newest first, default limit 50.
    let page = alice.history(&conv.id, None, None, 0).await.expect("page");
    assert_eq!(seqs(&page.messages), (11..=60).rev().collect::<Vec<_>>());
    assert!(page.has_more);
    let page = alice
        .history(&conv.id, Some(11), None, 50)
        .await
        .expect("older");
    assert_eq!(seqs(&page.messages), (1..=10).rev().collect::<Vec<_>>());
    assert!(!page.has_more);
    let page = alice
        .history(&conv.id, None, Some(55), 3)
        .await
        .expect("newer");
    assert_eq!(seqs(&page.messages), vec![56, 57, 58]);
    assert!(page.has_more);
    let page = alice
        .history(&conv.id, None, None, 100_000)
        .await
        .expect("clamped");
    assert_eq!(page.messages.len(), 60);
    server.stop().await;
}

/// `r` failed with `code`, its message mentioning `says`.
fn expect_refused(r: Result<confab_proto::v1::Message, tonic::Status>, code: Code, says: &str) {
    let e = r.expect_err("must fail");
    assert_eq!(e.code(), code, "{e:?}");
    assert!(
        e.message().contains(says),
        "message {:?} should mention {says:?}",
        e.message()
    );
}

/// `user` may neither send to nor read `conv`: both fail with `code`, the
/// send saying `says`.
async fn refused_send_and_read(user: &User, conv: &str, code: Code, says: &str) {
    expect_refused(user.send(conv, "m", "let me in").await, code, says);
    let e = user
        .history(conv, None, None, 10)
        .await
        .expect_err("a refused read");
    assert_eq!(e.code(), code);
}

pub async fn bad_requests_get_precise_statuses_and_disturb_nobody(kind: Kind) {
    let server = Server::start(
        kind,
        Settings {
            max_body_bytes: Some(100),
            ..Settings::default()
        },
    )
    .await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let mallory = server.user("mallory").await;
    let conv = alice.group("guarded", &["bob"]).await;
    let mut bob_s = bob.live().await;

    let expect = expect_refused;
    // Authentication.
    let anon = server.user_with_token("x", "").await;
    let mut req = tonic::Request::new(confab_proto::v1::SendMessageRequest::default());
    req.metadata_mut().remove("authorization");
    let e = anon
        .client
        .clone()
        .send_message(req)
        .await
        .expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("authorization"), "{e:?}");
    let forged = server
        .user_with_token(
            "alice",
            &confab_auth::Authenticator::new("another-secret-entirely")
                .mint("alice", 60)
                .expect("mint"),
        )
        .await;
    expect(
        forged.send(&conv.id, "f", "x").await,
        Code::Unauthenticated,
        "signature",
    );
    let expired_token = confab_auth::Authenticator::new(SECRET)
        .mint_expiring_at("alice", 1_000)
        .expect("mint");
    let expired = server.user_with_token("alice", &expired_token).await;
    refused_send_and_read(&expired, &conv.id, Code::Unauthenticated, "expired").await;
    let e = expired
        .session(client_frame::Frame::Ping(Ping::default()))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(
        e,
        Some(Code::Unauthenticated),
        "Connect checks the token when the stream opens"
    );
    let garbage = server.user_with_token("alice", "not.a.jwt").await;
    expect(
        garbage.send(&conv.id, "g", "x").await,
        Code::Unauthenticated,
        "malformed",
    );

    // Authorization and existence.
    refused_send_and_read(&mallory, &conv.id, Code::PermissionDenied, "not a member").await;
    let e = mallory
        .add_members(&conv.id, &["mallory"])
        .await
        .expect_err("add self");
    assert_eq!(e.code(), Code::PermissionDenied);
    refused_send_and_read(&alice, "grp-nope", Code::NotFound, "does not exist").await;

    // Validation.
    expect(
        alice.send(&conv.id, "m", "").await,
        Code::InvalidArgument,
        "body must not be empty",
    );
    expect(
        alice.send(&conv.id, "m", &"x".repeat(101)).await,
        Code::ResourceExhausted,
        "at most 100 are allowed (CONFAB_MAX_BODY_BYTES=100)",
    );
    expect(
        alice.send(&conv.id, "", "hi").await,
        Code::InvalidArgument,
        "client_msg_id is required",
    );
    expect(
        alice.send("", "m", "hi").await,
        Code::InvalidArgument,
        "conversation_id is required",
    );
    for others in [&[][..], &["bob", "carol"][..]] {
        let e = alice
            .create(ConversationKind::Direct, "", others)
            .await
            .expect_err("direct size");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("exactly two members"), "{e:?}");
    }
    let e = alice
        .create(ConversationKind::Unspecified, "", &["bob"])
        .await
        .expect_err("kind");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = alice
        .history(&conv.id, Some(5), Some(5), 10)
        .await
        .expect_err("both cursors");
    assert_eq!(e.code(), Code::InvalidArgument);

    // Stream sends report errors in the ack, and the stream goes on.
    let mut s = mallory.live().await;
    s.send_text(&conv.id, "z", "x").await;
    s.send_text(&conv.id, "", "x").await;
    let mut codes = Vec::new();
    while codes.len() < 2 {
        codes.push(s.next_ack().await.error.map(|e| e.code));
    }
    codes.sort();
    assert_eq!(
        codes,
        vec![
            Some(Code::InvalidArgument as i32),
            Some(Code::PermissionDenied as i32)
        ]
    );
    s.send(client_frame::Frame::Ping(Ping { nonce: 3 })).await;
    assert!(matches!(
        s.next_frame().await.expect("pong"),
        server_frame::Frame::Pong(_)
    ));

    // None of that reached anyone: bob's next message is alice's real one, seq 2.
    let ok = alice
        .send(&conv.id, "real", "still works")
        .await
        .expect("send");
    assert_eq!(ok.seq, 2);
    let (msgs, _) = bob_s.messages_until(&conv.id, 2).await.expect("bob");
    assert_eq!(seqs(&msgs), vec![2]);
    assert_eq!(alice.all_seqs(&conv.id).await, vec![1, 2]);
    server.stop().await;
}

pub async fn a_reader_that_falls_behind_is_disconnected_and_can_resume(kind: Kind) {
    let server = Server::start(
        kind,
        Settings {
            session_queue: Some(8),
            max_body_bytes: Some(65536),
            ..Settings::default()
        },
    )
    .await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let conv = alice.group("flood", &["bob"]).await;
    let mut slow = bob.live().await;
    // bob does not read while far more is sent than the HTTP/2 window
    // (2 MiB in hyper's client) and the server's queues hold.
    let body = "z".repeat(32 * 1024);
    // 8 concurrent senders × 25 = 6.4 MB, 3 × what bob's buffers hold. A
    // WebSocket has TCP's buffers instead of a window: the gateway's send
    // buffer grows up to 4 MiB (net.ipv4.tcp_wmem), so twice as much.
    let per_sender = match kind {
        Kind::EmbeddedWebSocket => 50,
        _ => 25,
    };
    let mut senders = Vec::new();
    for w in 0..8 {
        let (alice, id, body) = (alice.clone(), conv.id.clone(), body.clone());
        senders.push(tokio::spawn(async move {
            let mut last = 0;
            for i in 0..per_sender {
                let m = alice.send(&id, &format!("f{w}-{i}"), &body).await;
                last = last.max(m.expect("send").seq);
            }
            last
        }));
    }
    let mut last = 0;
    for s in senders {
        last = last.max(s.await.expect("sender"));
    }
    assert_eq!(last, 1 + 8 * per_sender);
    let status = slow.end_status().await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("resume"), "{status:?}");
    // alice was never slowed down or refused, and bob can resume.
    let mut again = bob
        .session(client_frame::Frame::Resume(Resume {
            last_seq: HashMap::from([(conv.id.clone(), 1)]),
        }))
        .await
        .expect("resume");
    let (msgs, _) = again
        .messages_until(&conv.id, last)
        .await
        .expect("catch up");
    assert_eq!(seqs(&msgs), (2..=last).collect::<Vec<_>>());
    server.stop().await;
}

/// A page of large messages is cut to what a gRPC client accepts by default
/// (4 MiB) and says `has_more`; paging on returns every message once.
pub async fn large_pages_are_cut_to_fit_and_page_on(kind: Kind) {
    let settings = Settings {
        max_body_bytes: Some(64 * 1024),
        ..Settings::default()
    };
    let server = Server::start(kind, settings).await;
    let alice = server.user("alice").await;
    let conv = alice.group("big", &[]).await;
    let body = "b".repeat(64 * 1024);
    let mut senders = Vec::new();
    for w in 0..4 {
        let (alice, id, body) = (alice.clone(), conv.id.clone(), body.clone());
        senders.push(tokio::spawn(async move {
            for i in 0..16 {
                alice
                    .send(&id, &format!("big{w}-{i}"), &body)
                    .await
                    .expect("send");
            }
        }));
    }
    for s in senders {
        s.await.expect("sender");
    }
    // 65 seqs, about 4 MiB of bodies: one page of 500 cannot hold them.
    let first = alice
        .history(&conv.id, None, Some(0), 500)
        .await
        .expect("page");
    assert!(first.has_more, "a cut page says there is more");
    assert!(first.messages.len() < 65 && !first.messages.is_empty());
    let all = alice.all_seqs(&conv.id).await;
    assert_eq!(all, (1..=65).collect::<Vec<_>>());
    server.stop().await;
}

/// Alice's group with bob and carol, and dave, who is not in it.
async fn group_and_outsider(kind: Kind, title: &str) -> (Server, [User; 4], Conversation) {
    group_and_outsider_on(kind, Settings::default(), title).await
}

/// `group_and_outsider` on a server with `settings`.
async fn group_and_outsider_on(
    kind: Kind,
    settings: Settings,
    title: &str,
) -> (Server, [User; 4], Conversation) {
    let (server, users) = with_users_and(kind, settings, ["alice", "bob", "carol", "dave"]).await;
    let conv = users[0].group(title, &["bob", "carol"]).await;
    (server, users, conv)
}

/// `alice` sends `n` messages to her new group `conv`; returns once
/// `stream` has them all, as seqs 2..=n+1 (seq 1 created the group).
async fn sent_and_delivered(alice: &User, conv: &str, n: u64, stream: &mut Session) {
    for i in 0..n {
        alice.send(conv, &format!("m{i}"), "x").await.expect("send");
    }
    let mut delivered = 0;
    while delivered < n {
        if let server_frame::Frame::Message(m) = stream.next_frame().await.expect("a message") {
            delivered += 1;
            assert_eq!(m.seq, delivered + 1);
        }
    }
}

/// A public `read` frame of `seq` in `conv`.
fn read_frame(conv: &str, seq: u64) -> client_frame::Frame {
    client_frame::Frame::Read(confab_proto::v1::MarkReadRequest {
        conversation_id: conv.to_string(),
        seq,
        private: false,
    })
}

/// The read positions of `reader`'s receipts on `stream`, up to the one of
/// `last`.
async fn receipts_up_to(stream: &mut Session, reader: &str, last: u64) -> Vec<u64> {
    let mut receipts = Vec::new();
    while receipts.last() != Some(&last) {
        let r = stream.next_receipt().await;
        assert_eq!(r.user_id, reader);
        receipts.push(r.read_seq);
    }
    receipts
}

/// A session marking every message read as it arrives: the reads that come
/// while one of the conversation's reads is on its way wait and go as one
/// read of the highest seq, so a stream's reads of a conversation reach the
/// log in the order sent. Every frame gets its answer, the position ends at
/// the last, and the others get fewer receipts than reads, in order.
pub async fn reads_on_a_stream_merge_while_one_is_in_flight(kind: Kind) {
    let (server, [alice, bob, _carol, _dave], conv) = group_and_outsider(kind, "merged").await;
    let mut alice1 = alice.live().await;
    let mut bob1 = bob.live().await;
    const N: u64 = 40;
    sent_and_delivered(&alice, &conv.id, N, &mut bob1).await;
    for seq in 2..=N + 1 {
        bob1.send(read_frame(&conv.id, seq)).await;
    }
    let mut answered = Vec::new();
    while answered.len() < N as usize {
        let ack = bob1.next_read_ack().await;
        let read_seq = ack.state.as_ref().map(|s| s.read_seq);
        assert!(
            ack.error.is_none() && read_seq >= Some(ack.seq),
            "{ack:?}: not answered with a position at or above its seq"
        );
        if ack.seq == 2 {
            // The first went alone, before any of the others.
            assert_eq!(read_seq, Some(2), "{ack:?}");
        }
        answered.push(ack.seq);
    }
    answered.sort_unstable();
    assert_eq!(
        answered,
        (2..=N + 1).collect::<Vec<_>>(),
        "one answer per frame"
    );
    let receipts = receipts_up_to(&mut alice1, "bob", N + 1).await;
    assert_eq!(
        receipts[0], 2,
        "the stream's first read went first: {receipts:?}"
    );
    assert!(
        receipts.windows(2).all(|w| w[0] < w[1]),
        "receipts in the order the position moved: {receipts:?}"
    );
    assert!(
        receipts.len() <= N as usize / 2,
        "{} receipts for {N} reads sent at once: they did not merge",
        receipts.len()
    );
    let listed = bob.listed(&conv.id).await.expect("bob's list");
    assert_eq!((listed.read_seq, listed.unread_count), (N + 1, 0));
    server.stop().await;
}

/// A stream's reads of one conversation go to the log at least
/// `CONFAB_READ_SPACING_MS` apart: reads sent right after one was answered
/// wait out the spacing and go as one read of the highest seq, so the
/// others get one receipt for them, and no sooner than the spacing after
/// the read before.
pub async fn a_streams_reads_of_a_conversation_are_spaced_out(kind: Kind) {
    const SPACING_MS: u64 = 1500;
    let settings = Settings {
        read_spacing_ms: Some(SPACING_MS),
        ..Settings::default()
    };
    let (server, [alice, bob, _carol, _dave], conv) =
        group_and_outsider_on(kind, settings, "spaced").await;
    let mut alice1 = alice.live().await;
    let mut bob1 = bob.live().await;
    sent_and_delivered(&alice, &conv.id, 3, &mut bob1).await;
    let read = |seq| read_frame(&conv.id, seq);
    let first_sent = std::time::Instant::now();
    bob1.send(read(2)).await;
    let ack = bob1.next_read_ack().await;
    assert_eq!(
        (ack.seq, ack.state.map(|s| s.read_seq), ack.error),
        (2, Some(2), None)
    );
    // Answered, but sooner than the spacing: these two wait, and merge.
    bob1.send(read(3)).await;
    bob1.send(read(4)).await;
    for seq in [3, 4] {
        let ack = bob1.next_read_ack().await;
        assert_eq!(
            (ack.seq, ack.state.map(|s| s.read_seq), ack.error),
            (seq, Some(4), None),
            "both frames are answered with the merged read's state"
        );
    }
    let waited = first_sent.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(SPACING_MS),
        "the reads after the first were answered {waited:?} after it was sent, sooner than the spacing of {SPACING_MS} ms"
    );
    let receipts = receipts_up_to(&mut alice1, "bob", 4).await;
    assert_eq!(
        receipts,
        [2, 4],
        "one receipt for the two reads that waited"
    );
    server.stop().await;
}

/// A client writing typing frames far faster than anyone types is read from
/// only at the allowed rate (20 frames a second; the rest wait in its own
/// stream), and the others get at most 4 indicators a second from it. Its
/// message after the flood still arrives.
pub async fn a_typing_flood_is_held_back(kind: Kind) {
    let (server, [alice, bob, _carol, _dave], conv) = group_and_outsider(kind, "flood").await;
    let alice1 = alice.live().await;
    let mut bob1 = bob.live().await;
    let started = std::time::Instant::now();
    // 45 frames: the 21st and 42nd go over the budget of their second, so
    // the frames after them and the message wait for the next second.
    for i in 0..45 {
        alice1.typing(&conv.id, i % 2 == 0).await;
    }
    alice1.send_text(&conv.id, "after-flood", "made it").await;
    let mut relayed = 0;
    loop {
        match bob1.next_frame().await.expect("the flood and the message") {
            server_frame::Frame::Typing(t) => {
                assert_eq!((t.user_id.as_str(), t.error), ("alice", None));
                relayed += 1;
            }
            server_frame::Frame::Message(m) if m.client_msg_id == "after-flood" => break,
            _ => {}
        }
    }
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(2),
        "the message after 45 typing frames was read after {waited:?}, so the flood was read faster than 20 frames a second"
    );
    // Three seconds of budget at most 4 relays each.
    assert!((4..=12).contains(&relayed), "{relayed} indicators relayed");
    server.stop().await;
}

pub async fn read_positions_count_exactly_and_receipts_reach_every_session(kind: Kind) {
    let (server, [alice, bob, carol, dave], conv) = group_and_outsider(kind, "reads").await;
    let mut alice1 = alice.live().await;
    let mut bob1 = bob.live().await;
    let mut bob2 = bob.live().await;
    let mut carol1 = carol.live().await;
    for i in 0..3 {
        alice
            .send(&conv.id, &format!("r{i}"), "x")
            .await
            .expect("send");
    }
    // seq 1 created the group; 2..=4 are alice's.
    let listed = bob.listed(&conv.id).await.expect("bob's list");
    assert_eq!(
        (listed.last_seq, listed.read_seq, listed.unread_count),
        (4, 1, 3)
    );
    let own = alice.listed(&conv.id).await.expect("alice's list");
    assert_eq!(
        (own.read_seq, own.unread_count),
        (4, 0),
        "her own messages are read"
    );

    let state = bob.mark_read(&conv.id, 3, false).await.expect("mark read");
    assert_eq!((state.read_seq, state.unread_count), (3, 1));
    // Every member's sessions hear of it, bob's own included.
    for s in [&mut alice1, &mut bob1, &mut bob2, &mut carol1] {
        let r = s.next_receipt().await;
        assert_eq!(
            (r.conversation_id.as_str(), r.user_id.as_str(), r.read_seq),
            (conv.id.as_str(), "bob", 3)
        );
    }
    // Backwards is a no-op, and no receipt.
    let state = bob.mark_read(&conv.id, 2, false).await.expect("mark read");
    assert_eq!((state.read_seq, state.unread_count), (3, 1));
    // A private read on the stream: bob's other session hears of it, the
    // others do not.
    let ack = bob1.read(&conv.id, 4, true).await;
    let state = ack.state.expect("a read state");
    assert_eq!(
        (state.read_seq, state.unread_count, ack.error),
        (4, 0, None)
    );
    assert_eq!(bob2.next_receipt().await.read_seq, 4);
    for (s, nonce) in [(&mut alice1, 1), (&mut carol1, 2)] {
        let before = s.frames_before_pong(nonce).await;
        assert!(
            !before
                .iter()
                .any(|f| matches!(f, server_frame::Frame::Receipt(_))),
            "no receipt for a no-op or a private read: {before:?}"
        );
    }
    let listed = bob.listed(&conv.id).await.expect("bob's list");
    assert_eq!((listed.read_seq, listed.unread_count), (4, 0));
    // "Seen by": every member's position, for any member to see.
    let seen = carol.get_conversation(&conv.id).await.expect("carol's");
    let positions: Vec<(&str, u64)> = seen
        .member_reads
        .iter()
        .map(|m| (m.user_id.as_str(), m.read_seq))
        .collect();
    assert_eq!(positions, [("alice", 4), ("bob", 4), ("carol", 1)]);
    assert_eq!((seen.read_seq, seen.unread_count), (1, 3), "carol's own");
    assert_eq!(seen.last_message.map(|m| m.seq), Some(4));
    for (who, id, code) in [
        (&dave, conv.id.as_str(), Code::PermissionDenied),
        (&bob, "no-such", Code::NotFound),
        (&bob, "", Code::InvalidArgument),
    ] {
        let got = who
            .get_conversation(id)
            .await
            .map(|_| ())
            .map_err(|s| s.code());
        assert_eq!(got, Err(code), "{} asking for {id:?}", who.name);
    }

    // Precise refusals, and nothing moves.
    let code = |r: Result<ReadState, tonic::Status>| r.map(|_| ()).map_err(|s| s.code());
    assert_eq!(
        code(bob.mark_read(&conv.id, 5, false).await),
        Err(Code::InvalidArgument)
    );
    assert_eq!(
        code(dave.mark_read(&conv.id, 1, false).await),
        Err(Code::PermissionDenied)
    );
    assert_eq!(
        code(bob.mark_read("no-such", 1, false).await),
        Err(Code::NotFound)
    );
    assert_eq!(
        code(bob.mark_read("", 1, false).await),
        Err(Code::InvalidArgument)
    );
    let ack = bob1.read(&conv.id, 99, false).await;
    assert_eq!(ack.state, None);
    assert_eq!(
        ack.error.map(|e| Code::from(e.code)),
        Some(Code::InvalidArgument)
    );
    assert_eq!(bob.listed(&conv.id).await.expect("list").read_seq, 4);
    server.stop().await;
}

pub async fn conversations_are_listed_newest_first_in_pages(kind: Kind) {
    let (server, [alice, bob]) = with_users(kind, ["alice", "bob"]).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let conv = alice.group(&format!("inbox-{i}"), &["bob"]).await;
        alice
            .send(&conv.id, "m", &format!("hello {i}"))
            .await
            .expect("send");
        ids.push(conv.id);
    }
    // The first conversation gets the newest message: it comes first.
    alice.send(&ids[0], "again", "newest").await.expect("send");
    let all = bob.list_page("", 0).await.expect("list");
    assert_eq!(all.next_page_token, "", "5 fit in the default page");
    assert_eq!(all.conversations.len(), 5);
    let first = &all.conversations[0];
    assert_eq!(first.id, ids[0]);
    let last = first.last_message.as_ref().expect("a last message");
    assert_eq!((last.body.as_str(), first.unread_count), ("newest", 2));
    // Pages of two continue where the last stopped, each conversation once.
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = bob.list_page(&token, 2).await.expect("page");
        assert!(page.conversations.len() <= 2);
        paged.extend(page.conversations.into_iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let order: Vec<String> = all.conversations.iter().map(|c| c.id.clone()).collect();
    assert_eq!(paged, order);
    // A huge limit is the largest page; tokens are checked.
    assert_eq!(
        bob.list_page("", u32::MAX)
            .await
            .expect("list")
            .conversations
            .len(),
        5
    );
    let bobs = bob.list_page("", 2).await.expect("page").next_page_token;
    for (who, token) in [(&alice, bobs.as_str()), (&bob, "not-a-token")] {
        let code = who
            .list_page(token, 2)
            .await
            .map(|_| ())
            .map_err(|s| s.code());
        assert_eq!(
            code,
            Err(Code::InvalidArgument),
            "{token:?} for {}",
            who.name
        );
    }
    server.stop().await;
}

pub async fn typing_reaches_the_other_members_and_ends_by_itself(kind: Kind) {
    let (server, [alice, bob, carol, dave], conv) = group_and_outsider(kind, "typing").await;
    let mut alice1 = alice.live().await;
    let mut bob1 = bob.live().await;
    let mut carol1 = carol.live().await;
    let mut dave1 = dave.live().await;
    // Started, renewed at once (not relayed again), stopped.
    alice1.typing(&conv.id, true).await;
    alice1.typing(&conv.id, true).await;
    alice1.typing(&conv.id, false).await;
    for s in [&mut bob1, &mut carol1] {
        let seen: Vec<(String, bool)> = [s.next_typing().await, s.next_typing().await]
            .into_iter()
            .map(|t| {
                assert_eq!(
                    (t.conversation_id.as_str(), t.error),
                    (conv.id.as_str(), None)
                );
                (t.user_id, t.active)
            })
            .collect();
        assert_eq!(
            seen,
            [("alice".to_string(), true), ("alice".to_string(), false)]
        );
    }
    // Not stored, not sequenced: history has only the creation.
    assert_eq!(alice.all_seqs(&conv.id).await, vec![1]);
    // A stranger's indicator is refused to him and relayed to nobody.
    dave1.typing(&conv.id, true).await;
    let refused = dave1.next_typing().await;
    assert_eq!(
        refused.error.map(|e| Code::from(e.code)),
        Some(Code::PermissionDenied)
    );
    // Started and never renewed: the server ends it after its time.
    bob1.typing(&conv.id, true).await;
    let started = alice1.next_typing().await;
    assert_eq!((started.user_id.as_str(), started.active), ("bob", true));
    let ended = alice1.next_typing().await;
    assert_eq!((ended.user_id.as_str(), ended.active), ("bob", false));
    // (Alice got none of her own: the first she got was bob's.) Nothing
    // more reached the others: no repeat of alice's, no refusal.
    for s in [&mut carol1, &mut bob1] {
        let before = s.frames_before_pong(3).await;
        assert!(
            !before.iter().any(|f| matches!(
                f,
                server_frame::Frame::Typing(t) if t.user_id == "alice" || t.error.is_some()
            )),
            "{before:?}"
        );
    }
    server.stop().await;
}
