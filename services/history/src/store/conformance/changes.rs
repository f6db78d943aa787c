//! Replies, edits, deletes and reactions, for every store: each is a seq
//! of its own, the message it names shows its current state wherever it
//! is read, and a client folding the log arrives at what `GetHistory`
//! shows.

use super::reads::Lcg;
use super::{apply, code_of, create_group, record, send, seq_of};
use crate::queries::LocalHistory;
use crate::store::Store;
use confab_core::fold::View;
use confab_core::seams::HistoryApi;
use confab_proto::internal::v1::{
    ingress_record::Command, outcome_record::Result as R, DeleteCommand, EditCommand,
    IngressRecord, OutcomeRecord, ReactCommand, SendCommand,
};
use confab_proto::v1::{
    GetEditHistoryRequest, GetHistoryRequest, Message, MessageKind, ReactionCount,
};
use std::sync::Arc;
use tonic::Code;

/// A record sending `body` as `actor`, replying to seq `to`.
pub fn reply(conv: &str, actor: &str, id: &str, body: &str, to: u64) -> IngressRecord {
    record(
        conv,
        actor,
        Command::Send(SendCommand {
            client_msg_id: id.into(),
            body: body.into(),
            reply_to_seq: to,
        }),
    )
}

/// A record editing the message at `seq` to `body`.
pub fn edit(conv: &str, actor: &str, id: &str, seq: u64, body: &str) -> IngressRecord {
    record(
        conv,
        actor,
        Command::Edit(EditCommand {
            client_msg_id: id.into(),
            seq,
            body: body.into(),
        }),
    )
}

/// A record deleting the message at `seq`.
pub fn delete(conv: &str, actor: &str, id: &str, seq: u64) -> IngressRecord {
    record(
        conv,
        actor,
        Command::Delete(DeleteCommand {
            client_msg_id: id.into(),
            seq,
        }),
    )
}

/// A record reacting to the message at `seq` (or taking it back).
pub fn react(
    conv: &str,
    actor: &str,
    id: &str,
    seq: u64,
    emoji: &str,
    remove: bool,
) -> IngressRecord {
    record(
        conv,
        actor,
        Command::React(ReactCommand {
            client_msg_id: id.into(),
            seq,
            emoji: emoji.into(),
            remove,
        }),
    )
}

fn event_of(o: &OutcomeRecord) -> Message {
    match &o.result {
        Some(R::Message(m)) => m.clone(),
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Every message of `conv` as `caller` reads it with `GetHistory`, pages
/// of 7 from the start.
pub(super) async fn history_of(reader: &LocalHistory, caller: &str, conv: &str) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::new();
    loop {
        let page = reader
            .get_history(
                caller,
                GetHistoryRequest {
                    conversation_id: conv.into(),
                    after_seq: Some(out.last().map_or(0, |m| m.seq)),
                    limit: 7,
                    ..GetHistoryRequest::default()
                },
            )
            .await
            .expect("GetHistory");
        out.extend(page.messages);
        if !page.has_more {
            return out;
        }
    }
}

/// A reply shows what it replies to; an edit, a delete and a reaction each
/// take a seq, and the message shows its current state: body and edit
/// count, tombstone, per-emoji counts with the caller's own marked.
pub async fn changes_show_on_the_message_they_name(store: Arc<dyn Store>) {
    let reader = LocalHistory::new(store.clone());
    apply(&store, vec![create_group("g", "alice", &["alice", "bob"])]).await;
    let out = apply(
        &store,
        vec![
            send("g", "alice", "m1", "hello there"),
            reply("g", "bob", "m2", "hi!", 2),
            // A reply to a message of the same batch, and one to itself
            // being refused: seq 4 is not there yet.
            reply("g", "alice", "m3", "and again", 3),
            reply("g", "alice", "m4", "too far", 9),
            reply("g", "alice", "m5", "to an event", 1),
        ],
    )
    .await;
    assert_eq!(seq_of(&out[1]), 3);
    let replied = event_of(&out[1]);
    assert_eq!(replied.reply_to_seq, 2);
    let preview = replied.reply_to.clone().expect("a preview");
    assert_eq!(
        (
            preview.sender_id.as_str(),
            preview.body.as_str(),
            preview.deleted
        ),
        ("alice", "hello there", false)
    );
    assert_eq!(event_of(&out[2]).reply_to.expect("preview").body, "hi!");
    assert_eq!(code_of(&out[3]), Code::InvalidArgument);
    assert_eq!(code_of(&out[4]), Code::InvalidArgument);

    let out = apply(
        &store,
        vec![
            edit("g", "alice", "e1", 2, "hello, there"),
            edit("g", "alice", "e2", 2, "hello, there!"),
            react("g", "bob", "r1", 2, "👍", false),
            react("g", "alice", "r2", 2, "👍", false),
            react("g", "alice", "r3", 2, "🎉", false),
            react("g", "alice", "r4", 2, "🎉", true),
        ],
    )
    .await;
    let seqs: Vec<u64> = out.iter().map(seq_of).collect();
    assert_eq!(
        seqs,
        vec![5, 6, 7, 8, 9, 10],
        "each change takes the next seq"
    );
    let edit_event = event_of(&out[0]);
    assert_eq!(
        (
            edit_event.kind,
            edit_event.target_seq,
            edit_event.body.as_str()
        ),
        (MessageKind::Edit as i32, 2, "hello, there")
    );
    let shown = history_of(&reader, "bob", "g").await;
    assert_eq!(shown.len(), 10, "one entry per seq");
    let m2 = &shown[1];
    assert_eq!((m2.body.as_str(), m2.edit_count), ("hello, there!", 2));
    assert!(m2.edited_at.is_some());
    assert_eq!(
        m2.reactions,
        vec![ReactionCount {
            emoji: "👍".into(),
            count: 2,
            reacted: true
        }],
        "bob's view: his 👍 and alice's; alice's 🎉 taken back"
    );
    assert_eq!(
        shown[2].reply_to.as_ref().expect("preview").body,
        "hello, there!"
    );
    let versions = reader
        .get_edit_history(
            "bob",
            GetEditHistoryRequest {
                conversation_id: "g".into(),
                seq: 2,
            },
        )
        .await
        .expect("versions");
    let bodies: Vec<(u32, &str)> = versions
        .versions
        .iter()
        .map(|v| (v.version, v.body.as_str()))
        .collect();
    assert_eq!(
        bodies,
        vec![
            (0, "hello there"),
            (1, "hello, there"),
            (2, "hello, there!")
        ]
    );
    let listed = super::list(&store, "bob", 10).await;
    let last = listed[0].last_message.clone().expect("a last message");
    assert_eq!(
        (last.seq, last.body.as_str()),
        (4, "and again"),
        "events are not the last message"
    );

    // Deleting: a tombstone, the reply shows "deleted", the versions and
    // reactions are gone.
    let out = apply(&store, vec![delete("g", "alice", "d1", 2)]).await;
    assert_eq!(seq_of(&out[0]), 11);
    let shown = history_of(&reader, "bob", "g").await;
    let m2 = &shown[1];
    assert_eq!(m2.body, "");
    assert!(m2.reactions.is_empty());
    let tomb = m2.deleted.clone().expect("a tombstone");
    assert_eq!(tomb.deleted_by, "alice");
    assert!(tomb.deleted_at.is_some());
    let preview = shown[2].reply_to.clone().expect("preview");
    assert!(preview.deleted && preview.body.is_empty());
    assert_eq!(
        shown[4].body, "",
        "the edit's body is erased with the message"
    );
    let versions = reader
        .get_edit_history(
            "bob",
            GetEditHistoryRequest {
                conversation_id: "g".into(),
                seq: 2,
            },
        )
        .await
        .expect("versions");
    assert!(versions.versions.is_empty());
    let stranger = reader
        .get_edit_history(
            "mallory",
            GetEditHistoryRequest {
                conversation_id: "g".into(),
                seq: 4,
            },
        )
        .await
        .expect_err("a stranger");
    assert_eq!(tonic::Status::from(stranger).code(), Code::PermissionDenied);

    // The newest TEXT message deleted: the listing shows its tombstone.
    apply(&store, vec![delete("g", "alice", "d2", 4)]).await;
    let listed = super::list(&store, "bob", 10).await;
    let last = listed[0].last_message.clone().expect("a last message");
    assert_eq!((last.seq, last.body.as_str()), (4, ""));
    assert!(last.deleted.is_some());
}

/// Every refusal names what is wrong; a retry returns the original
/// outcome and applies nothing twice.
pub async fn changes_are_refused_precisely_and_retried_safely(store: Arc<dyn Store>) {
    apply(&store, vec![create_group("g", "alice", &["alice", "bob"])]).await;
    apply(
        &store,
        vec![
            send("g", "alice", "m1", "mine"),
            send("g", "bob", "m2", "his"),
        ],
    )
    .await;
    // seq 1 created, 2 alice's, 3 bob's.
    let cases: Vec<(IngressRecord, Code, &str)> = vec![
        (
            edit("g", "alice", "x1", 3, "no"),
            Code::PermissionDenied,
            "someone else's message",
        ),
        (
            delete("g", "bob", "x2", 2),
            Code::PermissionDenied,
            "a plain member deleting another's",
        ),
        (
            react("g", "alice", "x3", 1, "👍", false),
            Code::InvalidArgument,
            "a SYSTEM event",
        ),
        (
            react("g", "alice", "x4", 99, "👍", false),
            Code::NotFound,
            "a seq that does not exist",
        ),
        (
            react("g", "alice", "x5", 2, "a", false),
            Code::InvalidArgument,
            "an emoji that is not one",
        ),
        (
            react("g", "alice", "x6", 2, "❤", false),
            Code::InvalidArgument,
            "an emoji not fully qualified",
        ),
        (
            react("g", "alice", "x7", 2, "👍", true),
            Code::NotFound,
            "taking back what is not there",
        ),
        (
            edit("g", "carol", "x8", 2, "hi"),
            Code::PermissionDenied,
            "a stranger",
        ),
        (
            edit("nope", "alice", "x9", 2, "hi"),
            Code::NotFound,
            "no such conversation",
        ),
        (
            edit("g", "alice", "m1", 2, "hi"),
            Code::AlreadyExists,
            "a client_msg_id used by a send",
        ),
        (
            send("g", "alice", "x3", "hi"),
            Code::Ok,
            "a refused change used no client_msg_id",
        ),
    ];
    for (rec, code, why) in cases {
        let out = apply(&store, vec![rec]).await;
        match code {
            Code::Ok => {
                seq_of(&out[0]);
            }
            code => assert_eq!(code_of(&out[0]), code, "{why}: {:?}", out[0]),
        }
    }
    // Retries: the original event, nothing applied twice.
    let first = apply(&store, vec![react("g", "bob", "r1", 2, "👍", false)]).await;
    let again = apply(
        &store,
        vec![
            react("g", "bob", "r1", 2, "👍", false),
            react("g", "bob", "r2", 2, "👍", false),
            send("g", "bob", "r1", "same id as the reaction"),
        ],
    )
    .await;
    assert_eq!(event_of(&again[0]), event_of(&first[0]));
    assert!(again[0].replay);
    assert_eq!(code_of(&again[1]), Code::AlreadyExists, "one 👍 per member");
    assert_eq!(
        code_of(&again[2]),
        Code::AlreadyExists,
        "a reaction's id reused by a send"
    );
    let edited = apply(&store, vec![edit("g", "alice", "e1", 2, "v1")]).await;
    let retried = apply(&store, vec![edit("g", "alice", "e1", 2, "v2")]).await;
    assert_eq!(
        event_of(&retried[0]),
        event_of(&edited[0]),
        "a retry keeps the first body"
    );
    let deleted = apply(&store, vec![delete("g", "alice", "d1", 2)]).await;
    let retried = apply(
        &store,
        vec![
            delete("g", "alice", "d1", 2),
            delete("g", "alice", "d2", 2),
            edit("g", "alice", "e2", 2, "too late"),
            react("g", "bob", "r3", 2, "🎉", false),
        ],
    )
    .await;
    assert_eq!(event_of(&retried[0]), event_of(&deleted[0]));
    assert_eq!(
        code_of(&retried[1]),
        Code::FailedPrecondition,
        "deleted already"
    );
    assert_eq!(
        code_of(&retried[2]),
        Code::FailedPrecondition,
        "editing a tombstone"
    );
    assert_eq!(
        code_of(&retried[3]),
        Code::FailedPrecondition,
        "reacting to a tombstone"
    );

    // The limits: reactions per member, then emoji per message.
    let emoji = [
        "😀", "😃", "😄", "😁", "😆", "😅", "🤣", "😂", "🙂", "🙃", "😉", "😊", "😇", "🥰", "😍",
        "🤩", "😘", "😗", "😚", "😙", "😋",
    ];
    let mut batch = Vec::new();
    for (i, e) in emoji.iter().take(6).enumerate() {
        batch.push(react("g", "alice", &format!("a{i}"), 3, e, false));
    }
    let out = apply(&store, batch).await;
    assert!(out[..5]
        .iter()
        .all(|o| matches!(o.result, Some(R::Message(_)))));
    assert_eq!(
        code_of(&out[5]),
        Code::ResourceExhausted,
        "a sixth reaction of one member"
    );
    // The test stores take groups of 5: bob and three more react.
    let users = ["bob", "u0", "u1", "u2"];
    let mut batch = vec![record(
        "g",
        "alice",
        Command::AddMembers(confab_proto::internal::v1::AddMembersCommand {
            member_ids: users[1..].iter().map(|u| u.to_string()).collect(),
        }),
    )];
    for (i, e) in emoji.iter().enumerate().skip(5) {
        let user = users[i % 4];
        batch.push(react("g", user, &format!("b{i}"), 3, e, false));
    }
    let out = apply(&store, batch).await;
    assert!(
        matches!(out[0].result, Some(R::Conversation(_))),
        "{:?}",
        out[0]
    );
    let refused: Vec<Code> = out[1..]
        .iter()
        .filter(|o| matches!(o.result, Some(R::Error(_))))
        .map(code_of)
        .collect();
    assert_eq!(
        refused,
        vec![Code::ResourceExhausted],
        "the 21st emoji on one message"
    );
}

/// Random sends, replies, edits, deletes and reactions by three members,
/// in batches: every member folding the events in seq order arrives at
/// exactly what `GetHistory` shows it.
pub async fn folding_the_log_gives_the_history(store: Arc<dyn Store>) {
    const USERS: [&str; 3] = ["u0", "u1", "u2"];
    const EMOJI: [&str; 4] = ["👍", "❤️", "😂", "🎉"];
    let reader = LocalHistory::new(store.clone());
    let created = apply(&store, vec![create_group("g", "u0", &USERS)]).await;
    let mut views: Vec<View> = USERS.iter().map(|u| View::new(u)).collect();
    let mut events: Vec<Message> = created[0].events.clone();
    let mut rng = Lcg(5);
    let mut texts: Vec<(u64, &str)> = Vec::new();
    let mut applied = [0u32; 5];
    for round in 0..60 {
        let mut batch = Vec::new();
        for i in 0..=rng.below(5) {
            let user = USERS[rng.below(3) as usize];
            let id = format!("{round}-{i}");
            let target = (!texts.is_empty()).then(|| texts[rng.below(texts.len() as u64) as usize]);
            let own = texts
                .iter()
                .filter(|(_, s)| *s == user)
                .map(|(seq, _)| *seq)
                .collect::<Vec<_>>();
            let own = (!own.is_empty()).then(|| own[rng.below(own.len() as u64) as usize]);
            batch.push(match (rng.below(6), target, own) {
                (1, Some((to, _)), _) => reply("g", user, &id, &format!("re {id}"), to),
                (2, _, Some(seq)) => edit("g", user, &id, seq, &format!("edited {id}")),
                (3, _, Some(seq)) if rng.below(3) == 0 => delete("g", user, &id, seq),
                (4 | 5, Some((seq, _)), _) => react(
                    "g",
                    user,
                    &id,
                    seq,
                    EMOJI[rng.below(4) as usize],
                    rng.below(3) == 0,
                ),
                _ => send("g", user, &id, &format!("text {id}")),
            });
        }
        for o in apply(&store, batch).await {
            for e in &o.events {
                if o.replay {
                    continue;
                }
                let kind = MessageKind::try_from(e.kind).expect("a kind");
                applied[match kind {
                    MessageKind::Text => 0,
                    MessageKind::Edit => 1,
                    MessageKind::Delete => 2,
                    MessageKind::Reaction => 3,
                    _ => 4,
                }] += 1;
                if kind == MessageKind::Text {
                    let sender = USERS.iter().find(|u| **u == e.sender_id).expect("a member");
                    texts.push((e.seq, sender));
                }
                events.push(e.clone());
            }
        }
    }
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "gap-free, in order"
    );
    for (user, view) in USERS.iter().zip(views.iter_mut()) {
        for e in &events {
            view.apply(e.clone());
        }
        let shown = history_of(&reader, user, "g").await;
        let folded: Vec<Message> = view.messages().cloned().collect();
        assert_eq!(folded, shown, "{user}'s fold of the log against GetHistory");
    }
    let [texts_n, edits, deletes, reactions, _] = applied;
    assert!(
        texts_n > 30 && edits > 10 && deletes > 3 && reactions > 20,
        "a thin mix: {applied:?}"
    );
}

/// What [`a_delete_erases_the_message`] asks of a store's tables: how many
/// rows the statement (`SELECT COUNT(*) ...`) counts, read with the store's
/// own connection, not through its API.
pub type Count =
    Box<dyn Fn(&'static str) -> futures::future::BoxFuture<'static, i64> + Send + Sync>;

/// A delete erases the message's body, its earlier versions, the bodies of
/// its edits, its reactions and its words for search from the tables (not
/// hidden: the rows are read directly through `count`; `search_words`
/// counts the store's search entries that hold the word "secret").
pub async fn a_delete_erases_the_message(
    store: Arc<dyn Store>,
    count: Count,
    search_words: &'static str,
) {
    apply(&store, vec![create_group("e", "alice", &["alice", "bob"])]).await;
    apply(
        &store,
        vec![
            send("e", "alice", "m1", "secret one"),
            edit("e", "alice", "e1", 2, "secret two"),
            edit("e", "alice", "e2", 2, "secret three"),
            react("e", "bob", "r1", 2, "👍", false),
        ],
    )
    .await;
    let checks: [(&str, &'static str); 5] = [
        ("search words", search_words),
        (
            "bodies",
            "SELECT COUNT(*) FROM messages WHERE conversation_id = 'e' AND body LIKE '%secret%'",
        ),
        (
            "versions",
            "SELECT COUNT(*) FROM message_versions WHERE conversation_id = 'e'",
        ),
        (
            "reactions",
            "SELECT COUNT(*) FROM reactions WHERE conversation_id = 'e'",
        ),
        (
            "the listing's copy",
            "SELECT COUNT(*) FROM conversations WHERE id = 'e' AND last_text_body LIKE '%secret%'",
        ),
    ];
    for (what, sql) in checks {
        assert!(count(sql).await > 0, "{what} are there before the delete");
    }
    let out = apply(&store, vec![delete("e", "alice", "d1", 2)]).await;
    seq_of(&out[0]);
    for (what, sql) in checks {
        assert_eq!(count(sql).await, 0, "{what} are erased by the delete");
    }
}
