//! History visibility, for every store: in a SINCE_JOINED group a member
//! reads the seqs of its memberships only, in every read (history pages in
//! both directions, reply previews, versions, the newest message of a
//! listing); SHARED reads everything.

use super::changes::reply;
use super::roles::retitle;
use super::{add, apply, record, remove, send};
use crate::queries::LocalHistory;
use crate::store::Store;
use confab_core::seams::HistoryApi;
use confab_proto::internal::v1::{ingress_record::Command, CreateCommand, UpdateCommand};
use confab_proto::v1::{
    ConversationKind, GetEditHistoryRequest, GetHistoryRequest, HistoryVisibility,
};
use std::sync::Arc;
use tonic::Code;

/// Every seq of `conv` that `caller` reads, paged `limit` at a time from
/// the start (`after`) or from the newest (`before`, reversed).
async fn seqs(
    reader: &LocalHistory,
    caller: &str,
    conv: &str,
    limit: u32,
    newest_first: bool,
) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    loop {
        let req = GetHistoryRequest {
            conversation_id: conv.into(),
            after_seq: (!newest_first).then(|| out.last().copied().unwrap_or(0)),
            before_seq: newest_first.then(|| out.last().copied().unwrap_or(u64::MAX)),
            limit,
        };
        let page = reader.get_history(caller, req).await.expect("GetHistory");
        out.extend(page.messages.iter().map(|m| m.seq));
        if !page.has_more {
            break;
        }
    }
    if newest_first {
        out.reverse();
    }
    out
}

pub async fn since_joined_members_read_the_seqs_of_their_memberships(store: Arc<dyn Store>) {
    let reader = LocalHistory::new(store.clone());
    let mut members: Vec<String> = vec!["alice".into(), "bob".into()];
    members.sort();
    apply(
        &store,
        vec![record(
            "v",
            "alice",
            Command::Create(CreateCommand {
                kind: ConversationKind::Group as i32,
                title: "t".into(),
                member_ids: members,
                history_visibility: HistoryVisibility::SinceJoined as i32,
            }),
        )],
    )
    .await;
    apply(
        &store,
        vec![
            send("v", "alice", "m1", "before carol"),
            send("v", "alice", "m2", "also before"),
        ],
    )
    .await;
    apply(&store, vec![add("v", "alice", &["carol"])]).await;
    // seq 4 added carol: she reads from there, and no last message yet.
    assert_eq!(seqs(&reader, "carol", "v", 2, false).await, vec![4]);
    let listed = super::list(&store, "carol", 10).await;
    assert_eq!(
        listed[0].history_visibility,
        HistoryVisibility::SinceJoined as i32
    );
    assert_eq!(listed[0].last_message, None, "seq 3 is before carol joined");
    let bob_listed = super::list(&store, "bob", 10).await;
    assert_eq!(bob_listed[0].last_message.as_ref().map(|m| m.seq), Some(3));

    // A reply to a message before she joined shows her no preview, and
    // its versions are not hers to read.
    let out = apply(
        &store,
        vec![
            reply("v", "alice", "m3", "as I said", 2),
            // carol cannot reply to what she may not read.
            reply("v", "carol", "c1", "what did you say?", 2),
        ],
    )
    .await;
    // The stream goes to carol too: no preview on it in SINCE_JOINED.
    assert_eq!(out[0].events[0].reply_to_seq, 2);
    assert_eq!(out[0].events[0].reply_to, None);
    assert_eq!(super::code_of(&out[1]), Code::InvalidArgument);
    let page = reader
        .get_history(
            "carol",
            GetHistoryRequest {
                conversation_id: "v".into(),
                after_seq: Some(4),
                ..GetHistoryRequest::default()
            },
        )
        .await
        .expect("GetHistory");
    assert_eq!(page.messages[0].reply_to_seq, 2);
    assert_eq!(page.messages[0].reply_to, None);
    let bob_page = reader
        .get_history(
            "bob",
            GetHistoryRequest {
                conversation_id: "v".into(),
                after_seq: Some(4),
                ..GetHistoryRequest::default()
            },
        )
        .await
        .expect("GetHistory");
    assert!(bob_page.messages[0].reply_to.is_some());
    let versions = reader
        .get_edit_history(
            "carol",
            GetEditHistoryRequest {
                conversation_id: "v".into(),
                seq: 2,
            },
        )
        .await
        .expect_err("before she joined");
    assert_eq!(tonic::Status::from(versions).code(), Code::NotFound);
    assert_eq!(
        super::list(&store, "carol", 10).await[0]
            .last_message
            .as_ref()
            .map(|m| m.seq),
        Some(5)
    );

    // Out at seq 6, a message while she is out, back at 8.
    apply(&store, vec![remove("v", "alice", "carol")]).await;
    apply(&store, vec![send("v", "alice", "m4", "carol is out")]).await;
    apply(&store, vec![add("v", "alice", &["carol"])]).await;
    apply(&store, vec![send("v", "alice", "m5", "welcome back")]).await;
    let expected = vec![4, 5, 6, 8, 9];
    for limit in [1, 2, 3, 50] {
        assert_eq!(
            seqs(&reader, "carol", "v", limit, false).await,
            expected,
            "oldest first by {limit}"
        );
        assert_eq!(
            seqs(&reader, "carol", "v", limit, true).await,
            expected,
            "newest first by {limit}"
        );
    }
    assert_eq!(
        seqs(&reader, "bob", "v", 4, false).await,
        (1..=9).collect::<Vec<_>>()
    );

    // SHARED again (a SYSTEM event, seq 10): everything, for everyone.
    let out = apply(
        &store,
        vec![record(
            "v",
            "alice",
            Command::Update(UpdateCommand {
                title: None,
                history_visibility: HistoryVisibility::Shared as i32,
            }),
        )],
    )
    .await;
    assert_eq!(out[0].events.len(), 1);
    assert_eq!(
        seqs(&reader, "carol", "v", 4, false).await,
        (1..=10).collect::<Vec<_>>()
    );
    // A title alone changes nothing else.
    apply(&store, vec![retitle("v", "alice", "open")]).await;
    assert_eq!(
        seqs(&reader, "carol", "v", 50, true).await,
        (1..=11).collect::<Vec<_>>()
    );
}
