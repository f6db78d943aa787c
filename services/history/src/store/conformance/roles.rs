//! Roles in groups, for every store: the creator owns a group, owners and
//! admins manage it, a group always keeps an owner, and every role or title
//! change is a SYSTEM event with a seq.

use super::{add, apply, code_of, create, create_group, record, remove, send};
use crate::store::Store;
use confab_proto::internal::v1::{
    ingress_record::Command, outcome_record::Result as R, IngressRecord, OutcomeRecord,
    SetRoleCommand, UpdateCommand,
};
use confab_proto::v1::{membership_event::Change, ConversationKind, MessageKind, Role};
use std::sync::Arc;
use tonic::Code;

/// A record giving `user` `role` in `conv`.
pub fn set_role(conv: &str, actor: &str, user: &str, role: Role) -> IngressRecord {
    record(
        conv,
        actor,
        Command::SetRole(SetRoleCommand {
            user_id: user.into(),
            role: role as i32,
        }),
    )
}

/// A record changing `conv`'s title.
pub fn retitle(conv: &str, actor: &str, title: &str) -> IngressRecord {
    record(
        conv,
        actor,
        Command::Update(UpdateCommand {
            title: Some(title.into()),
            history_visibility: 0,
        }),
    )
}

fn accepted(o: &OutcomeRecord) {
    assert!(
        matches!(o.result, Some(R::Conversation(_)) | Some(R::Message(_))),
        "{o:?}"
    );
}

/// The roles of `conv`'s members, by user id.
async fn roles(store: &Arc<dyn Store>, conv: &str) -> Vec<(String, Role, u64)> {
    let c = store
        .conversation(conv)
        .await
        .expect("read")
        .expect("exists");
    c.member_reads
        .iter()
        .map(|m| {
            (
                m.user_id.clone(),
                Role::try_from(m.role).expect("a role"),
                m.joined_seq,
            )
        })
        .collect()
}

pub async fn owners_and_admins_manage_a_group_that_always_keeps_an_owner(store: Arc<dyn Store>) {
    apply(
        &store,
        vec![create_group("g", "alice", &["alice", "bob", "carol"])],
    )
    .await;
    assert_eq!(
        roles(&store, "g").await,
        vec![
            ("alice".into(), Role::Owner, 1),
            ("bob".into(), Role::Member, 1),
            ("carol".into(), Role::Member, 1)
        ]
    );
    // A member manages nothing.
    let out = apply(
        &store,
        vec![
            add("g", "bob", &["dave"]),
            remove("g", "bob", "carol"),
            set_role("g", "bob", "bob", Role::Admin),
            retitle("g", "bob", "mine"),
        ],
    )
    .await;
    for o in &out {
        assert_eq!(code_of(o), Code::PermissionDenied, "{o:?}");
    }
    // The owner makes bob an admin: a SYSTEM event with a seq.
    let out = apply(&store, vec![set_role("g", "alice", "bob", Role::Admin)]).await;
    let ev = &out[0].events[0];
    assert_eq!((ev.seq, ev.kind), (2, MessageKind::System as i32));
    let m = ev.membership.clone().expect("membership");
    assert_eq!(
        (m.change, m.user_ids, m.role),
        (
            Change::RoleChanged as i32,
            vec!["bob".to_string()],
            Role::Admin as i32
        )
    );
    assert_eq!(ev.body, "alice made bob an admin");
    // An admin adds and removes members, makes admins, retitles.
    let out = apply(
        &store,
        vec![
            add("g", "bob", &["dave", "erin"]),
            remove("g", "bob", "carol"),
            set_role("g", "bob", "dave", Role::Admin),
            retitle("g", "bob", "lunch club"),
            // but does not touch owners, nor make one.
            remove("g", "bob", "alice"),
            set_role("g", "bob", "alice", Role::Member),
            set_role("g", "bob", "erin", Role::Owner),
            // Nothing to change.
            set_role("g", "bob", "dave", Role::Admin),
            set_role("g", "alice", "erin", Role::Unspecified),
            set_role("g", "alice", "zed", Role::Admin),
        ],
    )
    .await;
    for o in &out[..4] {
        accepted(o);
    }
    let title = &out[3].events[0];
    assert_eq!(
        (
            title.body.as_str(),
            title.membership.clone().expect("event").title.as_str()
        ),
        ("bob changed the title to lunch club", "lunch club")
    );
    for o in &out[4..7] {
        assert_eq!(code_of(o), Code::PermissionDenied, "{o:?}");
    }
    assert!(out[7].events.is_empty(), "an unchanged role writes nothing");
    assert_eq!(code_of(&out[8]), Code::InvalidArgument);
    assert_eq!(code_of(&out[9]), Code::NotFound);
    let conv = store.conversation("g").await.expect("read").expect("g");
    assert_eq!(conv.title, "lunch club");
    // dave and erin joined at the ADDED event, seq 3.
    assert_eq!(
        roles(&store, "g").await,
        vec![
            ("alice".into(), Role::Owner, 1),
            ("bob".into(), Role::Admin, 1),
            ("dave".into(), Role::Admin, 3),
            ("erin".into(), Role::Member, 3)
        ]
    );
    // An admin deletes any message; the last owner cannot step down.
    let sent = apply(&store, vec![send("g", "erin", "e1", "spam")]).await;
    let seq = match &sent[0].result {
        Some(R::Message(m)) => m.seq,
        other => panic!("{other:?}"),
    };
    let out = apply(
        &store,
        vec![
            super::changes::delete("g", "bob", "d1", seq),
            set_role("g", "alice", "alice", Role::Member),
        ],
    )
    .await;
    accepted(&out[0]);
    assert_eq!(code_of(&out[1]), Code::FailedPrecondition);
    // The last owner leaving hands the group to the admin who joined
    // first (bob: joined at 1, before dave).
    let out = apply(&store, vec![remove("g", "alice", "alice")]).await;
    let events = &out[0].events;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1].seq, events[0].seq + 1);
    let handed = events[1].membership.clone().expect("membership");
    assert_eq!(
        (handed.change, handed.user_ids, handed.role, handed.actor_id),
        (
            Change::RoleChanged as i32,
            vec!["bob".to_string()],
            Role::Owner as i32,
            "alice".to_string()
        )
    );
    // With an owner left, no hand-over: bob makes dave an owner, leaves.
    apply(&store, vec![set_role("g", "bob", "dave", Role::Owner)]).await;
    let out = apply(&store, vec![remove("g", "bob", "bob")]).await;
    assert_eq!(out[0].events.len(), 1);
    // Without admins, the member who joined first inherits.
    apply(&store, vec![remove("g", "dave", "dave")]).await;
    assert_eq!(
        roles(&store, "g").await,
        vec![("erin".into(), Role::Owner, 3)]
    );

    // DIRECT conversations have no roles and no title to change.
    apply(
        &store,
        vec![create(
            "dm",
            "alice",
            ConversationKind::Direct,
            &["alice", "bob"],
        )],
    )
    .await;
    assert_eq!(
        roles(&store, "dm").await,
        vec![
            ("alice".into(), Role::Unspecified, 1),
            ("bob".into(), Role::Unspecified, 1)
        ]
    );
    let out = apply(
        &store,
        vec![
            set_role("dm", "alice", "bob", Role::Admin),
            retitle("dm", "alice", "us"),
        ],
    )
    .await;
    assert_eq!(code_of(&out[0]), Code::InvalidArgument);
    assert_eq!(code_of(&out[1]), Code::InvalidArgument);
}
