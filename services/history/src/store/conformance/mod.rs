//! One behaviour suite for every `Store` implementation: each backend's tests
//! call `run_all` with a factory that returns a fresh, empty store.

pub mod changes;
mod presence;
mod reads;
pub mod roles;
pub mod search;
mod sync;
pub mod upgrade;
mod visibility;

pub use reads::read;

use super::{Listing, MessagePage, Store};
use confab_core::validate::{Page, SizeLimits};
use confab_proto::internal::v1::{
    ingress_record::Command, outcome_record::Result as R, AddMembersCommand, CreateCommand,
    IngressRecord, Origin, OutcomeRecord, RemoveMemberCommand, SendCommand,
};
use confab_proto::v1::{membership_event::Change, Conversation, ConversationKind, MessageKind};
use std::future::Future;
use std::sync::Arc;
use tonic::Code;

/// The limits of the suite's stores: groups of at most 5 members.
pub fn limits() -> SizeLimits {
    SizeLimits {
        max_group_members: 5,
        ..SizeLimits::default()
    }
}

/// Runs every conformance test, each on a fresh store from `fresh` with
/// the limits given ([`limits`], unless a test needs others).
pub async fn run_all<F, Fut>(mut fresh_with: F)
where
    F: FnMut(SizeLimits) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let mut fresh = || fresh_with(limits());
    seqs_start_at_one_and_have_no_gaps(fresh().await).await;
    retried_sends_return_the_original(fresh().await).await;
    refusals_carry_precise_codes(fresh().await).await;
    text_no_store_can_keep_is_refused_alone(fresh().await).await;
    direct_conversations_are_created_once(fresh().await).await;
    membership_changes_are_sequenced(fresh().await).await;
    pages_are_bounded_and_ordered(fresh().await).await;
    member_pages_are_the_same_pages_for_members_only(fresh().await).await;
    conversations_are_listed_per_member(fresh().await).await;
    concurrent_batches_stay_gap_free(fresh().await).await;
    outcomes_carry_the_trace_and_acceptance_time(fresh().await).await;
    reads::read_positions_move_forward_for_members_only(fresh().await).await;
    reads::system_events_and_earlier_history_are_never_unread(fresh().await).await;
    reads::unread_counts_match_a_brute_force_count(fresh().await).await;
    reads::reads_in_a_run_of_sends_decide_as_one_by_one(fresh().await, fresh().await).await;
    reads::conversations_are_listed_most_recent_first_in_pages(fresh().await).await;
    sync::a_cursor_reports_exactly_what_changed(fresh().await).await;
    sync::a_departure_is_reported_on_its_page_only(fresh().await).await;
    sync::concurrent_commits_are_never_skipped(fresh().await).await;
    sync::bad_cursors_are_refused(fresh().await).await;
    presence::presence_goes_to_direct_partners_and_keeps_the_last_seen_time(fresh().await).await;
    changes::changes_show_on_the_message_they_name(fresh().await).await;
    changes::changes_are_refused_precisely_and_retried_safely(fresh().await).await;
    changes::folding_the_log_gives_the_history(fresh().await).await;
    roles::owners_and_admins_manage_a_group_that_always_keeps_an_owner(fresh().await).await;
    visibility::since_joined_members_read_the_seqs_of_their_memberships(fresh().await).await;
    search::search_finds_what_each_member_may_read(fresh().await).await;
    search::search_follows_edits_deletes_and_membership(fresh().await).await;
    search::bad_searches_are_refused_precisely(fresh().await).await;
    groups_of_any_size_list_every_member(
        fresh_with(SizeLimits {
            max_group_members: super::rows::MEMBER_LIST_MAX + 3,
            ..limits()
        })
        .await,
    )
    .await;
}

fn record(conv: &str, actor: &str, command: Command) -> IngressRecord {
    IngressRecord {
        origin: Some(Origin {
            gateway_id: "gw-test".into(),
            request_id: 7,
        }),
        actor_id: actor.into(),
        conversation_id: conv.into(),
        command: Some(command),
        traceparent: String::new(),
        accepted_at_ms: 0,
    }
}

/// A record creating group `conv` with `members` (the creator included).
pub fn create_group(conv: &str, actor: &str, members: &[&str]) -> IngressRecord {
    create(conv, actor, ConversationKind::Group, members)
}

pub fn create(conv: &str, actor: &str, kind: ConversationKind, members: &[&str]) -> IngressRecord {
    let mut member_ids: Vec<String> = members.iter().map(|m| m.to_string()).collect();
    member_ids.sort();
    record(
        conv,
        actor,
        Command::Create(CreateCommand {
            kind: kind as i32,
            title: "t".into(),
            member_ids,
            history_visibility: 0,
        }),
    )
}

/// A record sending `body` as `actor`.
pub fn send(conv: &str, actor: &str, client_msg_id: &str, body: &str) -> IngressRecord {
    record(
        conv,
        actor,
        Command::Send(SendCommand {
            client_msg_id: client_msg_id.into(),
            body: body.into(),
            reply_to_seq: 0,
        }),
    )
}

pub fn add(conv: &str, actor: &str, users: &[&str]) -> IngressRecord {
    record(
        conv,
        actor,
        Command::AddMembers(AddMembersCommand {
            member_ids: users.iter().map(|u| u.to_string()).collect(),
        }),
    )
}

pub fn remove(conv: &str, actor: &str, user: &str) -> IngressRecord {
    record(
        conv,
        actor,
        Command::RemoveMember(RemoveMemberCommand {
            member_id: user.into(),
        }),
    )
}

/// Every outcome (accepted, replayed, refused) keeps its record's trace
/// context and acceptance time, which go on to the router and the
/// delivering gateway.
async fn outcomes_carry_the_trace_and_acceptance_time(store: Arc<dyn Store>) {
    let stamped = |mut r: IngressRecord, n: i64| {
        r.traceparent = format!("00-{:032x}-{:016x}-01", n + 1, n + 2);
        r.accepted_at_ms = 1_700_000_000_000 + n;
        r
    };
    let batch = vec![
        stamped(create_group("g", "alice", &["alice", "bob"]), 1),
        stamped(send("g", "alice", "m1", "hi"), 2),
        stamped(send("g", "alice", "m1", "hi"), 3),
        stamped(send("g", "carol", "m2", "let me in"), 4),
    ];
    let out = apply(&store, batch.clone()).await;
    assert!(out[2].replay, "{:?}", out[2]);
    assert_eq!(code_of(&out[3]), Code::PermissionDenied);
    for (record, outcome) in batch.iter().zip(&out) {
        assert_eq!(outcome.traceparent, record.traceparent, "{outcome:?}");
        assert_eq!(outcome.accepted_at_ms, record.accepted_at_ms, "{outcome:?}");
    }
}

/// The first `limit` conversations of `user`.
async fn list(store: &Arc<dyn Store>, user: &str, limit: u32) -> Vec<Conversation> {
    store
        .conversations(user, Listing::Recent(None), limit)
        .await
        .expect("list")
        .conversations
}

/// A group larger than a kept member list (`rows::MEMBER_LIST_MAX`) lists
/// every member all the same, and keeps its list again once it is small;
/// [`apply`] checks each listing against the member rows.
async fn groups_of_any_size_list_every_member(store: Arc<dyn Store>) {
    use super::rows::MEMBER_LIST_MAX;
    let users: Vec<String> = (0..MEMBER_LIST_MAX + 3)
        .map(|i| format!("u{i:02}"))
        .collect();
    let all: Vec<&str> = users.iter().map(String::as_str).collect();
    let member_count = |listed: Vec<Conversation>| {
        let [big] = &listed[..] else {
            panic!("one conversation listed: {listed:?}")
        };
        big.member_reads.len()
    };
    let created = apply(&store, vec![create_group("big", "u00", &all)]).await;
    assert!(
        matches!(created[0].result, Some(R::Conversation(_))),
        "{created:?}"
    );
    apply(
        &store,
        vec![send("big", "u07", "s1", "x"), read("big", "u09", 2, false)],
    )
    .await;
    assert_eq!(member_count(list(&store, "u05", 10).await), users.len());
    for (i, user) in all[MEMBER_LIST_MAX..].iter().enumerate() {
        apply(&store, vec![remove("big", "u00", user)]).await;
        apply(
            &store,
            vec![send("big", "u01", &format!("s{}", i + 2), "x")],
        )
        .await;
    }
    apply(&store, vec![read("big", "u09", 3, false)]).await;
    assert_eq!(member_count(list(&store, "u05", 10).await), MEMBER_LIST_MAX);
}

/// Applies `n` sends by `actor` to `conv`, in one batch.
async fn sends(store: &Arc<dyn Store>, conv: &str, actor: &str, n: usize) {
    let batch = (0..n)
        .map(|i| send(conv, actor, &format!("m{i}"), "x"))
        .collect();
    apply(store, batch).await;
}

async fn apply(store: &Arc<dyn Store>, batch: Vec<IngressRecord>) -> Vec<OutcomeRecord> {
    let out = store.apply(0, &batch).await.expect("apply");
    assert_eq!(out.len(), batch.len(), "one outcome per record");
    let convs: std::collections::BTreeSet<&str> =
        batch.iter().map(|r| r.conversation_id.as_str()).collect();
    for conv in convs {
        member_list_is_current(store, conv).await;
    }
    out
}

/// A listing of `conv` shows the members its member rows hold: the list
/// a conversation keeps in its row (`rows::member_list`) changed with them.
async fn member_list_is_current(store: &Arc<dyn Store>, conv: &str) {
    let Some(stored) = store.conversation(conv).await.expect("conversation") else {
        return;
    };
    let Some(member) = stored.member_ids.first() else {
        return;
    };
    let listed = store
        .conversations(member, Listing::One(conv), 1)
        .await
        .expect("listing")
        .conversations;
    assert_eq!(listed.len(), 1, "{conv} listed for its member {member}");
    assert_eq!(
        (&listed[0].member_ids, &listed[0].member_reads),
        (&stored.member_ids, &stored.member_reads),
        "the members {conv}'s listing shows"
    );
}

fn seq_of(o: &OutcomeRecord) -> u64 {
    match &o.result {
        Some(R::Message(m)) => m.seq,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn seqs_of_events(o: &OutcomeRecord) -> Vec<u64> {
    o.events.iter().map(|m| m.seq).collect()
}

fn code_of(o: &OutcomeRecord) -> Code {
    match &o.result {
        Some(R::Error(e)) => Code::from_i32(e.code),
        other => panic!("expected an error, got {other:?}"),
    }
}

async fn all_seqs(store: &Arc<dyn Store>, conv: &str) -> Vec<u64> {
    let (msgs, more) = store
        .history(Page::after(conv, 0, 500))
        .await
        .expect("history")
        .parts();
    assert!(!more);
    msgs.iter().map(|m| m.seq).collect()
}

async fn seqs_start_at_one_and_have_no_gaps(store: Arc<dyn Store>) {
    let out = apply(&store, vec![create_group("c", "alice", &["alice", "bob"])]).await;
    assert_eq!(out[0].events.len(), 1);
    assert_eq!(out[0].events[0].seq, 1, "creation is seq 1");
    let batch = (0..10)
        .map(|i| {
            send(
                "c",
                if i % 2 == 0 { "alice" } else { "bob" },
                &format!("m{i}"),
                "hi",
            )
        })
        .collect();
    let out = apply(&store, batch).await;
    assert_eq!(
        out.iter().map(seq_of).collect::<Vec<_>>(),
        (2..=11).collect::<Vec<_>>()
    );
    for o in &out {
        assert_eq!(o.events.len(), 1, "a new message is one event");
        assert_eq!(
            o.origin.as_ref().map(|x| x.request_id),
            Some(7),
            "origin is echoed"
        );
    }
    assert_eq!(all_seqs(&store, "c").await, (1..=11).collect::<Vec<_>>());
    let conv = store.conversation("c").await.expect("get").expect("exists");
    assert_eq!(conv.last_seq, 11);
}

async fn retried_sends_return_the_original(store: Arc<dyn Store>) {
    apply(&store, vec![create_group("c", "alice", &["alice", "bob"])]).await;
    let first = apply(&store, vec![send("c", "alice", "k1", "original")]).await;
    // Same key in a later batch, and twice inside one batch.
    let again = apply(
        &store,
        vec![
            send("c", "alice", "k1", "changed body"),
            send("c", "alice", "k2", "x"),
            send("c", "alice", "k2", "x"),
        ],
    )
    .await;
    assert_eq!(seq_of(&again[0]), seq_of(&first[0]));
    // A retry is not a new event: the original comes back, marked as a replay.
    assert!(again[0].replay, "a retry is marked as a replay");
    assert_eq!(seqs_of_events(&again[0]), vec![seq_of(&first[0])]);
    assert!(!first[0].replay && !again[1].replay);
    match &again[0].result {
        Some(R::Message(m)) => assert_eq!(m.body, "original"),
        other => panic!("{other:?}"),
    }
    assert_eq!(seq_of(&again[1]), seq_of(&again[2]));
    assert!(again[2].replay);
    assert_eq!(seqs_of_events(&again[2]), vec![seq_of(&again[1])]);
    // The key is per sender: bob may use the same client_msg_id.
    let bob = apply(&store, vec![send("c", "bob", "k1", "bob's")]).await;
    assert_ne!(seq_of(&bob[0]), seq_of(&first[0]));
    assert_eq!(all_seqs(&store, "c").await, vec![1, 2, 3, 4]);
}

async fn refusals_carry_precise_codes(store: Arc<dyn Store>) {
    apply(&store, vec![create_group("c", "alice", &["alice"])]).await;
    let out = apply(
        &store,
        vec![
            send("nope", "alice", "m", "x"),
            send("c", "mallory", "m", "x"),
            add("c", "mallory", &["eve"]),
        ],
    )
    .await;
    assert_eq!(code_of(&out[0]), Code::NotFound);
    assert_eq!(code_of(&out[1]), Code::PermissionDenied);
    assert_eq!(code_of(&out[2]), Code::PermissionDenied);
    assert!(out.iter().all(|o| o.events.is_empty()));
    // A refusal inside a batch does not undo the others.
    let out = apply(
        &store,
        vec![
            send("c", "mallory", "m", "x"),
            send("c", "alice", "m", "ok"),
        ],
    )
    .await;
    assert_eq!(code_of(&out[0]), Code::PermissionDenied);
    assert_eq!(seq_of(&out[1]), 2);
}

/// NUL, which PostgreSQL text cannot hold, is refused by every store with
/// the field named, and the rest of the batch goes on.
async fn text_no_store_can_keep_is_refused_alone(store: Arc<dyn Store>) {
    let out = apply(
        &store,
        vec![
            create_group("g", "alice", &["alice"]),
            send("g", "alice", "m1", "bad\0body"),
            send("g", "alice", "m2", "fine"),
            create_group("h\0", "alice", &["alice"]),
            add("g", "alice", &["b\0b"]),
        ],
    )
    .await;
    assert_eq!(code_of(&out[1]), Code::InvalidArgument);
    assert!(
        matches!(&out[1].result, Some(R::Error(e)) if e.message.starts_with("body ")),
        "{:?}",
        out[1].result
    );
    assert_eq!(seq_of(&out[2]), 2);
    assert_eq!(code_of(&out[3]), Code::InvalidArgument);
    assert_eq!(code_of(&out[4]), Code::InvalidArgument);
    assert!(store.conversation("h\0").await.expect("get").is_none());
    assert_eq!(all_seqs(&store, "g").await, vec![1, 2]);
}

async fn direct_conversations_are_created_once(store: Arc<dyn Store>) {
    let first = apply(
        &store,
        vec![create(
            "dm",
            "alice",
            ConversationKind::Direct,
            &["alice", "bob"],
        )],
    )
    .await;
    let again = apply(
        &store,
        vec![create(
            "dm",
            "bob",
            ConversationKind::Direct,
            &["alice", "bob"],
        )],
    )
    .await;
    assert_eq!(first[0].events.len(), 1);
    assert!(again[0].events.is_empty());
    match (&first[0].result, &again[0].result) {
        (Some(R::Conversation(a)), Some(R::Conversation(b))) => {
            assert_eq!(a.id, b.id);
            assert_eq!(b.member_ids, vec!["alice".to_string(), "bob".to_string()]);
            assert_eq!(b.kind, ConversationKind::Direct as i32);
        }
        other => panic!("{other:?}"),
    }
    let out = apply(
        &store,
        vec![add("dm", "alice", &["carol"]), remove("dm", "alice", "bob")],
    )
    .await;
    assert_eq!(code_of(&out[0]), Code::InvalidArgument);
    assert_eq!(code_of(&out[1]), Code::InvalidArgument);
}

async fn membership_changes_are_sequenced(store: Arc<dyn Store>) {
    apply(&store, vec![create_group("g", "alice", &["alice", "bob"])]).await;
    let out = apply(
        &store,
        vec![
            add("g", "alice", &["carol", "bob"]),
            send("g", "carol", "c1", "hi"),
            remove("g", "alice", "carol"),
            send("g", "carol", "c2", "still here?"),
            send("g", "carol", "c1", "retry"),
            remove("g", "bob", "bob"),
            remove("g", "alice", "zed"),
            add("g", "alice", &["u1", "u2", "u3", "u4"]),
        ],
    )
    .await;
    let added = &out[0].events[0];
    assert_eq!((added.seq, added.kind), (2, MessageKind::System as i32));
    let ev = added.membership.as_ref().expect("membership");
    assert_eq!(
        (ev.change, ev.user_ids.clone()),
        (Change::Added as i32, vec!["carol".to_string()])
    );
    assert_eq!(seq_of(&out[1]), 3);
    assert_eq!(out[2].events[0].seq, 4);
    assert_eq!(
        code_of(&out[3]),
        Code::PermissionDenied,
        "removed members cannot send"
    );
    assert_eq!(
        seq_of(&out[4]),
        3,
        "but their retries still return the original"
    );
    assert_eq!(out[5].events[0].body, "bob left");
    assert_eq!(code_of(&out[6]), Code::NotFound);
    // alice is alone now; the test store allows 5 members, so four fit.
    assert_eq!(out[7].events.len(), 1);
    let conv = store.conversation("g").await.expect("get").expect("exists");
    assert_eq!(
        conv.member_ids,
        vec![
            "alice".to_string(),
            "u1".into(),
            "u2".into(),
            "u3".into(),
            "u4".into()
        ]
    );
    let out = apply(
        &store,
        vec![
            add("g", "alice", &["u5"]),
            create_group("g6", "alice", &["alice", "u1", "u2", "u3", "u4", "u5"]),
        ],
    )
    .await;
    let refusal = |o: &OutcomeRecord| match &o.result {
        Some(R::Error(e)) => (Code::from_i32(e.code), e.message.clone()),
        other => panic!("expected an error, got {other:?}"),
    };
    assert_eq!(
        refusal(&out[0]),
        (
            Code::ResourceExhausted,
            "group size limit: a group has at most 5 members (CONFAB_MAX_GROUP_MEMBERS=5); \
             it has 5 and 1 would be added"
                .to_string()
        )
    );
    assert_eq!(
        refusal(&out[1]),
        (
            Code::ResourceExhausted,
            "group size limit: a group has at most 5 members (CONFAB_MAX_GROUP_MEMBERS=5); \
             6 were asked for"
                .to_string()
        ),
        "history decides even when a gateway lets a create through"
    );
    assert!(store.conversation("g6").await.expect("get").is_none());
    assert_eq!(all_seqs(&store, "g").await, (1..=6).collect::<Vec<_>>());
}

async fn member_pages_are_the_same_pages_for_members_only(store: Arc<dyn Store>) {
    apply(&store, vec![create_group("c", "alice", &["alice", "bob"])]).await;
    sends(&store, "c", "alice", 12).await;
    // 13 messages: seq 1 (creation) ..= 13.
    for page in [
        Page::before("c", u64::MAX, 5),
        Page::before("c", 4, 10),
        Page::after("c", 8, 5),
        Page::after("c", 0, 13),
        Page::after("c", 13, 5),
        Page::before("c", 1, 5),
    ] {
        let plain = store.history(page).await.expect("history");
        for member in ["alice", "bob"] {
            let read = store
                .member_history(member, page)
                .await
                .expect("member history");
            assert_eq!(read.as_ref(), Some(&plain), "{member} at {page:?}");
        }
        let outsider = store
            .member_history("mallory", page)
            .await
            .expect("member history");
        assert_eq!(outsider, None, "a non-member reads nothing");
    }
    for (caller, page, expected, why) in [
        (
            "alice",
            Page::after("c", 13, 5),
            Some((Vec::new(), false)),
            "an empty page is a page",
        ),
        (
            "alice",
            Page::after("nope", 0, 5),
            None,
            "no such conversation",
        ),
        // Not an error either.
        (
            "alice\0",
            Page::after("c", 0, 5),
            None,
            "a NUL in the caller is no member",
        ),
    ] {
        let read = store.member_history(caller, page).await.expect(why);
        assert_eq!(read.map(MessagePage::parts), expected, "{why}");
    }
}

async fn pages_are_bounded_and_ordered(store: Arc<dyn Store>) {
    apply(&store, vec![create_group("c", "alice", &["alice"])]).await;
    sends(&store, "c", "alice", 24).await;
    // 25 messages: seq 1 (creation) ..= 25.
    let (page, more) = store
        .history(Page::before("c", u64::MAX, 10))
        .await
        .expect("h")
        .parts();
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (16..=25).rev().collect::<Vec<_>>()
    );
    assert!(more);
    let (page, more) = store
        .history(Page::before("c", 6, 10))
        .await
        .expect("h")
        .parts();
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![5, 4, 3, 2, 1]
    );
    assert!(!more);
    let (page, more) = store
        .history(Page::after("c", 20, 5))
        .await
        .expect("h")
        .parts();
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![21, 22, 23, 24, 25]
    );
    assert!(!more, "exactly the last five: nothing more");
    let (page, more) = store
        .history(Page::after("c", 25, 5))
        .await
        .expect("h")
        .parts();
    assert!(page.is_empty() && !more);
    let (page, _) = store
        .history(Page::after("other", 0, 5))
        .await
        .expect("h")
        .parts();
    assert!(page.is_empty());
}

async fn conversations_are_listed_per_member(store: Arc<dyn Store>) {
    apply(
        &store,
        vec![
            create_group("a", "alice", &["alice", "bob"]),
            create_group("b", "bob", &["bob"]),
            send("a", "bob", "m", "x"),
        ],
    )
    .await;
    let alice = list(&store, "alice", 50).await;
    assert_eq!(alice.len(), 1);
    assert_eq!((alice[0].id.as_str(), alice[0].last_seq), ("a", 2));
    assert_eq!(alice[0].member_ids, vec!["alice".to_string(), "bob".into()]);
    let bob = list(&store, "bob", 50).await;
    assert_eq!(
        bob.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    assert!(list(&store, "nobody", 50).await.is_empty());
}

async fn concurrent_batches_stay_gap_free(store: Arc<dyn Store>) {
    apply(&store, vec![create_group("c", "alice", &["alice", "bob"])]).await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for b in 0..5 {
                let batch: Vec<_> = (0..10)
                    .map(|i| {
                        send(
                            "c",
                            if t % 2 == 0 { "alice" } else { "bob" },
                            &format!("t{t}-b{b}-{i}"),
                            "x",
                        )
                    })
                    .collect();
                store.apply(0, &batch).await.expect("apply");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let seqs = all_seqs(&store, "c").await;
    assert_eq!(seqs, (1..=401).collect::<Vec<_>>());
}
