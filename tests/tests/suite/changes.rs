//! Replies, edits, deletes and reactions through real clients on both
//! topologies: each is a seq that reaches members' live streams, a client
//! folding the stream arrives at what `GetHistory` shows, counts stay
//! exact, `Sync` reports the change, and refusals are precise.

use super::with_users;
use confab_core::fold::View;
use confab_proto::v1::{
    client_frame, membership_event::Change, server_frame, ConversationKind, HistoryVisibility,
    MessageKind, ReactionCount, Resume, Role,
};
use confab_tests::server::Kind;
use confab_tests::*;
use std::collections::HashMap;
use tonic::Code;

pub async fn changes_reach_live_streams_and_fold_into_the_history(kind: Kind) {
    let (server, [alice, bob]) = with_users(kind, ["alice", "bob"]).await;
    let conv = alice.group("changes", &["bob"]).await;
    let id = conv.id.as_str();
    // bob follows the conversation live from seq 1 (the creation).
    let created = bob.all_messages(id).await.expect("history");
    let mut view = View::new("bob");
    for m in created {
        view.apply(m);
    }
    let mut live = bob.live().await;
    let mut copy = SyncCopy::default();
    bob.sync_into(&mut copy).await.expect("first sync");

    let m = alice.send(id, "m1", "helo bob").await.expect("send");
    assert_eq!(m.seq, 2);
    let r = bob.reply(id, "r1", "hi!", 2).await.expect("reply");
    assert_eq!((r.seq, r.reply_to_seq), (3, 2));
    assert_eq!(r.reply_to.clone().expect("preview").body, "helo bob");
    let e = alice.edit(id, "e1", 2, "hello bob").await.expect("edit");
    assert_eq!(
        (e.seq, e.kind, e.target_seq),
        (4, MessageKind::Edit as i32, 2)
    );
    // A retry returns the original event, whatever its body says now.
    let again = alice.edit(id, "e1", 2, "hello, bob").await.expect("retry");
    assert_eq!(again, e);
    let like = bob.react(id, "k1", 2, "👍", false).await.expect("react");
    assert_eq!((like.seq, like.emoji.as_str()), (5, "👍"));
    // "❤" is stored fully qualified.
    let heart = alice.react(id, "k2", 3, "❤", false).await.expect("react");
    assert_eq!(heart.emoji, "❤\u{fe0f}");

    let (frames, _) = live.messages_until(id, 6).await.expect("live changes");
    assert_eq!(
        seqs(&frames),
        vec![2, 3, 4, 5, 6],
        "each change is a seq on the stream"
    );
    for f in frames {
        view.apply(f);
    }
    let shown = bob.all_messages(id).await.expect("history");
    assert_eq!(
        view.messages().cloned().collect::<Vec<_>>(),
        shown,
        "the fold is the history"
    );
    assert_eq!(
        (shown[1].body.as_str(), shown[1].edit_count),
        ("hello bob", 1)
    );
    assert_eq!(
        shown[1].reactions,
        vec![ReactionCount {
            emoji: "👍".into(),
            count: 1,
            reacted: true
        }]
    );
    let versions = bob.edit_history(id, 2).await.expect("versions");
    let bodies: Vec<&str> = versions.versions.iter().map(|v| v.body.as_str()).collect();
    assert_eq!(bodies, vec!["helo bob", "hello bob"]);

    // Changes are not unread; bob's reply read everything before it.
    assert_eq!(bob.listed(id).await.expect("listed").unread_count, 0);
    let synced = bob.sync_into(&mut copy).await.expect("sync");
    assert_eq!(
        synced.changed,
        vec![conv.id.clone()],
        "Sync reports the changed conversation"
    );

    // A delete: alice's message 2 becomes a tombstone for everyone.
    let d = alice.delete(id, "d1", 2).await.expect("delete");
    assert_eq!(d.seq, 7);
    let (frames, _) = live.messages_until(id, 7).await.expect("the delete");
    for f in frames {
        view.apply(f);
    }
    let shown = bob.all_messages(id).await.expect("history");
    assert_eq!(view.messages().cloned().collect::<Vec<_>>(), shown);
    assert!(shown[1].deleted.is_some() && shown[1].body.is_empty());
    assert!(shown[2].reply_to.clone().expect("preview").deleted);
    let synced = bob.sync_into(&mut copy).await.expect("sync");
    assert_eq!(synced.changed, vec![conv.id.clone()]);
    // Nothing else arrived on the stream in between.
    let others = live.frames_before_pong(7).await;
    assert!(
        others
            .iter()
            .all(|f| !matches!(f, server_frame::Frame::Message(_))),
        "{others:?}"
    );
    server.stop().await;
}

pub async fn changes_are_refused_precisely(kind: Kind) {
    let (server, [alice, bob, mallory]) = with_users(kind, ["alice", "bob", "mallory"]).await;
    let conv = alice.group("refusals", &["bob"]).await;
    let id = conv.id.as_str();
    alice.send(id, "m1", "mine").await.expect("send");
    let code = |r: Result<confab_proto::v1::Message, tonic::Status>| match r {
        Ok(m) => panic!("accepted: {m:?}"),
        Err(s) => (s.code(), s.message().to_string()),
    };
    let cases = [
        (
            code(bob.edit(id, "x1", 2, "mine now").await),
            Code::PermissionDenied,
            "own messages",
        ),
        (
            code(bob.delete(id, "x2", 2).await),
            Code::PermissionDenied,
            "its sender",
        ),
        (
            code(alice.react(id, "x3", 1, "👍", false).await),
            Code::InvalidArgument,
            "not a message",
        ),
        (
            code(alice.react(id, "x4", 42, "👍", false).await),
            Code::NotFound,
            "does not exist",
        ),
        (
            code(alice.react(id, "x5", 2, "ok", false).await),
            Code::InvalidArgument,
            "react with one emoji",
        ),
        (
            code(alice.react(id, "x6", 2, "👍👍", false).await),
            Code::InvalidArgument,
            "react with one emoji",
        ),
        (
            code(alice.edit(id, "x7", 0, "seq?").await),
            Code::InvalidArgument,
            "seq is required",
        ),
        (
            code(alice.edit(id, "x8", 2, "").await),
            Code::InvalidArgument,
            "body must not be empty",
        ),
        (
            code(alice.reply(id, "x9", "to nothing", 99).await),
            Code::InvalidArgument,
            "past the newest seq",
        ),
        (
            code(mallory.react(id, "x10", 2, "👍", false).await),
            Code::PermissionDenied,
            "not a member",
        ),
        (
            code(alice.delete(id, "m1", 2).await),
            Code::AlreadyExists,
            "choose a new client_msg_id",
        ),
    ];
    for (got, want, says) in cases {
        assert_eq!(got.0, want, "{got:?}");
        assert!(got.1.contains(says), "{got:?} should say {says:?}");
    }
    // Nothing of that disturbed the conversation.
    assert_eq!(alice.all_seqs(id).await, vec![1, 2]);
    server.stop().await;
}

pub async fn owners_and_admins_manage_groups(kind: Kind) {
    let (server, [alice, bob, carol]) = with_users(kind, ["alice", "bob", "carol"]).await;
    let conv = alice.group("roles", &["bob"]).await;
    let id = conv.id.as_str();
    let refused = bob
        .add_members(id, &["carol"])
        .await
        .expect_err("a member adds");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let after = alice
        .set_role(id, "bob", Role::Admin)
        .await
        .expect("set role");
    let bob_read = after
        .member_reads
        .iter()
        .find(|m| m.user_id == "bob")
        .expect("bob");
    assert_eq!(bob_read.role, Role::Admin as i32);
    bob.add_members(id, &["carol"])
        .await
        .expect("an admin adds");
    let titled = bob.retitle(id, "the lunch club").await.expect("retitle");
    assert_eq!(titled.title, "the lunch club");
    let bad = bob
        .set_role(id, "carol", Role::Unspecified)
        .await
        .expect_err("no role");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let last = alice
        .set_role(id, "alice", Role::Member)
        .await
        .expect_err("the last owner");
    assert_eq!(last.code(), Code::FailedPrecondition, "{last:?}");
    // carol sees every change as a SYSTEM event of the history.
    let kinds: Vec<(u64, i32)> = carol
        .all_messages(id)
        .await
        .expect("history")
        .iter()
        .filter_map(|m| m.membership.as_ref().map(|e| (m.seq, e.change)))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (1, Change::Created as i32),
            (2, Change::RoleChanged as i32),
            (3, Change::Added as i32),
            (4, Change::TitleChanged as i32)
        ]
    );
    server.stop().await;
}

pub async fn since_joined_members_resume_and_sync_only_what_they_may_read(kind: Kind) {
    let (server, [alice, carol]) = with_users(kind, ["alice", "carol"]).await;
    let direct = alice
        .create_with(
            ConversationKind::Direct,
            "",
            &["carol"],
            HistoryVisibility::SinceJoined,
        )
        .await
        .expect_err("a DIRECT conversation is SHARED");
    assert_eq!(direct.code(), Code::InvalidArgument, "{direct:?}");
    let conv = alice
        .create_with(
            ConversationKind::Group,
            "private past",
            &[],
            HistoryVisibility::SinceJoined,
        )
        .await
        .expect("create");
    let id = conv.id.as_str();
    assert_eq!(
        conv.history_visibility,
        HistoryVisibility::SinceJoined as i32
    );
    alice.send(id, "m1", "before carol").await.expect("send");
    alice.add_members(id, &["carol"]).await.expect("add");
    alice.send(id, "m2", "hello carol").await.expect("send");
    // carol resumes from the start: her seqs only (3, when she was added,
    // and 4), then caught up.
    let mut s = carol
        .session(client_frame::Frame::Resume(Resume {
            last_seq: HashMap::from([(conv.id.clone(), 0)]),
        }))
        .await
        .expect("resume");
    let (msgs, others) = s.messages_until(id, 4).await.expect("resumed");
    assert_eq!(seqs(&msgs), vec![3, 4]);
    assert!(
        others
            .iter()
            .all(|f| !matches!(f, server_frame::Frame::CaughtUp(c) if c.error.is_some())),
        "{others:?}"
    );
    let mut copy = SyncCopy::default();
    carol.sync_into(&mut copy).await.expect("sync");
    let state = &copy.conversations[&conv.id];
    assert_eq!(state.last_message.as_ref().map(|m| m.seq), Some(4));
    assert_eq!(carol.all_seqs(id).await, vec![3, 4]);
    assert_eq!(alice.all_seqs(id).await, vec![1, 2, 3, 4]);
    server.stop().await;
}

/// `SearchMessages` through the gateway: a message is found as soon as its
/// send returns, in English, Chinese, Japanese and Korean; an edit changes
/// what is found and a delete removes it as soon as each returns; only
/// members find a conversation's messages; pages continue without repeats;
/// bad queries are refused precisely.
pub async fn search_finds_what_members_may_read(kind: Kind) {
    let (_server, [alice, bob, carol]) = with_users(kind, ["alice", "bob", "carol"]).await;
    let conv = alice.group("search", &["bob"]).await;
    let id = conv.id.as_str();
    let seqs = |r: &confab_proto::v1::SearchMessagesResponse| -> Vec<u64> {
        r.hits.iter().map(|h| h.seq).collect()
    };
    let bodies = [
        "The quarterly report is due on Friday.",
        "我们明天在东京开会，别忘了带资料。",
        "明日の会議は東京駅の近くで行います。",
        "내일 서울에서 회의가 있습니다.",
    ];
    let mut sent = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let m = alice.send(id, &format!("m{i}"), body).await.expect("send");
        sent.push(m.seq);
    }
    let (report, tokyo_cn, tokyo_jp, seoul) = (sent[0], sent[1], sent[2], sent[3]);
    for (query, want) in [
        ("REPORT friday", vec![report]),
        ("东京", vec![tokyo_cn]),
        ("東京駅", vec![tokyo_jp]),
        ("서울", vec![seoul]),
        ("京", vec![tokyo_jp, tokyo_cn]),
    ] {
        let found = bob.search(query, "", "", 20).await.expect("search");
        assert_eq!(seqs(&found), want, "{query:?}");
    }
    let found = bob.search("東京駅", id, "", 20).await.expect("search");
    let hit = &found.hits[0];
    assert_eq!(
        (hit.conversation_id.as_str(), hit.sender_id.as_str()),
        (id, "alice")
    );
    let h = &hit.highlights[0];
    let marked: String = hit
        .snippet
        .chars()
        .skip(h.start as usize)
        .take((h.end - h.start) as usize)
        .collect();
    assert_eq!(marked, "東京駅");
    assert!(hit.rank > 0.0 && hit.sent_at.is_some(), "{hit:?}");

    // Paging: one hit a page, newest first, each once.
    let mut token = String::new();
    let mut paged = Vec::new();
    loop {
        let page = bob.search("京", "", &token, 1).await.expect("page");
        paged.extend(seqs(&page));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(paged, [tokyo_jp, tokyo_cn]);

    alice
        .edit(id, "e1", report, "The annual budget is due on Monday.")
        .await
        .expect("edit");
    assert!(seqs(&bob.search("report", "", "", 20).await.expect("search")).is_empty());
    assert_eq!(
        seqs(&bob.search("budget", "", "", 20).await.expect("search")),
        [report]
    );
    alice.delete(id, "d1", seoul).await.expect("delete");
    assert!(seqs(&bob.search("서울", "", "", 20).await.expect("search")).is_empty());

    // carol is not a member: nothing to find, and the conversation is not hers.
    assert!(carol
        .search("budget", "", "", 20)
        .await
        .expect("search")
        .hits
        .is_empty());
    let refused = carol
        .search("budget", id, "", 20)
        .await
        .expect_err("not hers");
    assert_eq!(refused.code(), Code::PermissionDenied);
    for (query, says) in [("", "query is required"), ("!!! 👍", "no words to find")] {
        let refused = bob.search(query, "", "", 20).await.expect_err("bad query");
        assert_eq!(refused.code(), Code::InvalidArgument, "{query:?}");
        assert!(refused.message().contains(says), "{}", refused.message());
    }
    let long = "x".repeat(300);
    let refused = bob.search(&long, "", "", 20).await.expect_err("too long");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("the limit is 256"),
        "{}",
        refused.message()
    );
}
