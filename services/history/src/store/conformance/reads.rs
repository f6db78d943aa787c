//! Read positions and unread counts, for every store.

use super::{add, apply, changes, code_of, create_group, record, remove, send};
use crate::store::{Listing, Store};
use confab_core::validate::Page;
use confab_proto::internal::v1::{
    ingress_record::Command, outcome_record::Result as R, OutcomeRecord, ReadCommand,
};
use confab_proto::v1::{Conversation, MessageKind, ReadState, Role};
use std::collections::BTreeMap;
use std::sync::Arc;
use tonic::Code;

/// A record reading `conv` up to `seq` as `actor`.
pub fn read(conv: &str, actor: &str, seq: u64, private: bool) -> super::IngressRecord {
    record(conv, actor, Command::Read(ReadCommand { seq, private }))
}

fn state_of(o: &OutcomeRecord) -> ReadState {
    match &o.result {
        Some(R::ReadState(s)) => s.clone(),
        other => panic!("expected a read state, got {other:?}"),
    }
}

/// Conversation `conv` as `user` gets it alone (`GetConversation`'s listing).
async fn one(store: &Arc<dyn Store>, user: &str, conv: &str) -> Option<Conversation> {
    store
        .conversations(user, crate::store::Listing::One(conv), 1)
        .await
        .expect("listing one")
        .conversations
        .pop()
}

/// `user`'s entry of conversation `conv` in its own listing.
async fn listed(store: &Arc<dyn Store>, user: &str, conv: &str) -> Option<Conversation> {
    super::list(store, user, 200)
        .await
        .into_iter()
        .find(|c| c.id == conv)
}

/// A read position moves forward only, never past the newest seq, and only
/// for members; a move carries a receipt (marked private when asked), a
/// read of a lower seq carries none, and a read of the position it has
/// carries its receipt again (a read replayed after a crash must still
/// reach the members).
pub async fn read_positions_move_forward_for_members_only(store: Arc<dyn Store>) {
    apply(&store, vec![create_group("g", "alice", &["alice", "bob"])]).await;
    super::sends(&store, "g", "alice", 4).await;
    // seq 1: created; 2..=5: alice's messages.
    let fresh = listed(&store, "bob", "g").await.expect("bob's");
    assert_eq!((fresh.read_seq, fresh.unread_count), (1, 4));
    let out = apply(
        &store,
        vec![
            read("g", "bob", 3, false),
            read("g", "bob", 2, false),
            read("g", "bob", 4, true),
            read("g", "bob", 6, false),
            read("g", "carol", 2, false),
            read("nope", "bob", 1, false),
            read("g", "bob", 4, false),
        ],
    )
    .await;
    let moved = state_of(&out[0]);
    assert_eq!((moved.read_seq, moved.unread_count), (3, 2));
    let receipt = out[0].receipt.clone().expect("a move has a receipt");
    assert_eq!(
        (
            receipt.conversation_id.as_str(),
            receipt.user_id.as_str(),
            receipt.read_seq
        ),
        ("g", "bob", 3)
    );
    assert!(!out[0].receipt_private);
    let lower = state_of(&out[1]);
    assert_eq!(
        (lower.read_seq, lower.unread_count),
        (3, 2),
        "a lower seq is a no-op"
    );
    assert!(out[1].receipt.is_none(), "nothing moved, no receipt");
    assert_eq!(state_of(&out[2]).read_seq, 4);
    assert!(out[2].receipt.is_some() && out[2].receipt_private);
    assert_eq!(code_of(&out[3]), Code::InvalidArgument, "past the newest");
    assert_eq!(code_of(&out[4]), Code::PermissionDenied, "not a member");
    assert_eq!(code_of(&out[5]), Code::NotFound);
    for o in &out[3..6] {
        assert!(o.receipt.is_none() && o.events.is_empty(), "{o:?}");
    }
    assert_eq!(state_of(&out[6]).read_seq, 4, "read again");
    let again = out[6].receipt.clone().expect("the receipt again");
    assert_eq!((again.read_seq, out[6].receipt_private), (4, false));
    let after = listed(&store, "bob", "g").await.expect("bob's");
    assert_eq!((after.read_seq, after.unread_count), (4, 1));
    // Every member's position as any member sees it, and each one's count.
    let seen = one(&store, "alice", "g").await.expect("alice's");
    let mut positions: Vec<(String, u64, u64)> = Vec::new();
    for m in seen.member_reads {
        let own = one(&store, &m.user_id, "g").await.expect("the member's");
        positions.push((m.user_id, m.read_seq, own.unread_count));
    }
    assert_eq!(
        positions,
        [("alice".to_string(), 5, 0), ("bob".to_string(), 4, 1)]
    );
    assert!(one(&store, "alice", "nope").await.is_none());
    // Alice sent every message: nothing is unread for her, and her own
    // sends moved her position to her newest message.
    let alice = listed(&store, "alice", "g").await.expect("alice's");
    assert_eq!((alice.read_seq, alice.unread_count), (5, 0));
}

/// Membership events never count as unread, and a member added later has
/// read everything before it joined.
pub async fn system_events_and_earlier_history_are_never_unread(store: Arc<dyn Store>) {
    apply(&store, vec![create_group("g", "alice", &["alice", "bob"])]).await;
    apply(
        &store,
        vec![
            send("g", "alice", "a1", "x"),
            add("g", "alice", &["carol"]),
            send("g", "alice", "a2", "x"),
            add("g", "alice", &["dave"]),
            remove("g", "alice", "dave"),
        ],
    )
    .await;
    // 1 created, 2 a1, 3 carol added, 4 a2, 5 dave added, 6 dave removed.
    let bob = listed(&store, "bob", "g").await.expect("bob's");
    assert_eq!((bob.read_seq, bob.unread_count), (1, 2));
    let carol = listed(&store, "carol", "g").await.expect("carol's");
    assert_eq!((carol.read_seq, carol.unread_count), (3, 1));
    assert!(listed(&store, "dave", "g").await.is_none());
    // Reading up to a SYSTEM event leaves the texts after it.
    let out = apply(&store, vec![read("g", "bob", 3, false)]).await;
    assert_eq!(state_of(&out[0]).unread_count, 1);
    let out = apply(&store, vec![read("g", "bob", 6, false)]).await;
    assert_eq!(state_of(&out[0]).unread_count, 0);
    // Dave again: a new member, seated at its new ADDED event.
    apply(&store, vec![add("g", "alice", &["dave"])]).await;
    let dave = listed(&store, "dave", "g").await.expect("dave's");
    assert_eq!((dave.read_seq, dave.unread_count), (7, 0));
}

/// A tiny deterministic generator (no dependency, the same run every time).
pub(super) struct Lcg(pub(super) u64);

impl Lcg {
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Random interleavings of sends, reads, joins, leaves, edits, deletes and
/// reactions by several users,
/// in batches of every size: after each batch, every member's unread count
/// is the brute-force count from history (the TEXT messages after its read
/// position that others sent).
pub async fn unread_counts_match_a_brute_force_count(store: Arc<dyn Store>) {
    const USERS: [&str; 5] = ["u0", "u1", "u2", "u3", "u4"];
    let convs = ["c0", "c1"];
    for conv in convs {
        apply(&store, vec![create_group(conv, "u0", &["u0", "u1", "u2"])]).await;
    }
    let mut rng = Lcg(17);
    let mut next_id = 0u64;
    // What the mix did, so the test cannot pass by doing nothing.
    let (mut sent, mut moved, mut unread_seen, mut deleted) = (0, 0, 0, 0);
    // The newest seq of each conversation, from the outcomes.
    let mut last: BTreeMap<&str, u64> = convs.iter().map(|c| (*c, 1)).collect();
    for round in 0..100 {
        let mut batch = Vec::new();
        for _ in 0..=rng.below(6) {
            let conv = convs[rng.below(2) as usize];
            // Mostly a member as of the last batch; now and then anyone.
            let stored = store.conversation(conv).await.expect("conversation");
            let members = stored
                .as_ref()
                .map(|c| c.member_ids.clone())
                .unwrap_or_default();
            // Adds and removals mostly by an owner (who may make them).
            let owner = stored
                .as_ref()
                .and_then(|c| c.member_reads.iter().find(|m| m.role == Role::Owner as i32))
                .map(|m| m.user_id.clone());
            let user = match members.len() as u64 {
                n if n > 0 && rng.below(5) > 0 => members[rng.below(n) as usize].clone(),
                _ => USERS[rng.below(5) as usize].to_string(),
            };
            let user = user.as_str();
            let other = USERS[rng.below(5) as usize];
            next_id += 1;
            let id = format!("m{next_id}");
            // A change names a seq near the newest, mostly a TEXT message
            // (refused otherwise, or when it is not the actor's to change).
            let near = last[conv].saturating_sub(rng.below(6)).max(1);
            batch.push(match rng.below(16) {
                0..=4 => send(conv, user, &id, "x"),
                10 => changes::edit(conv, user, &id, near, "edited"),
                11 | 12 => changes::delete(conv, user, &id, near),
                13 | 14 => changes::react(conv, user, &id, near, "👍", rng.below(3) == 0),
                15 => add(conv, owner.as_deref().unwrap_or(user), &[other]),
                5..=7 => {
                    // Mostly near the newest seq; now and then anywhere,
                    // one past the newest (refused) included.
                    let newest = last[conv];
                    let seq = match rng.below(3) {
                        0 => rng.below(newest + 2),
                        _ => newest.saturating_sub(rng.below(3)),
                    };
                    read(conv, user, seq, rng.below(2) == 0)
                }
                8 => add(conv, owner.as_deref().unwrap_or(user), &[other]),
                _ => remove(conv, owner.as_deref().unwrap_or(user), other),
            });
        }
        // Refusals (strangers, seqs past the end, ...) are part of the mix.
        for o in apply(&store, batch).await {
            sent += u32::from(matches!(o.result, Some(R::Message(_))) && !o.replay);
            deleted += u32::from(
                o.events
                    .iter()
                    .any(|e| e.kind == MessageKind::Delete as i32 && !o.replay),
            );
            moved += u32::from(o.receipt.is_some());
            for e in &o.events {
                if let Some(seq) = last.get_mut(e.conversation_id.as_str()) {
                    *seq = (*seq).max(e.seq);
                }
            }
        }
        for conv in convs {
            let texts = texts_by_seq(&store, conv).await;
            for user in USERS {
                let Some(entry) = listed(&store, user, conv).await else {
                    continue;
                };
                let brute = texts
                    .range(entry.read_seq + 1..)
                    .filter(|(_, sender)| sender.as_str() != user)
                    .count() as u64;
                assert_eq!(
                    entry.unread_count, brute,
                    "round {round}: {user} in {conv} at read_seq {} (last {})",
                    entry.read_seq, entry.last_seq
                );
                assert!(entry.read_seq <= entry.last_seq);
                unread_seen += u32::from(entry.unread_count > 0);
            }
        }
    }
    assert!(
        sent > 20 && moved > 10 && unread_seen > 20 && deleted > 3,
        "a thin mix: {sent} messages, {moved} reads that moved, {unread_seen} non-zero counts, {deleted} deletes"
    );
}

/// The TEXT messages of `conv` by seq, with their senders.
async fn texts_by_seq(store: &Arc<dyn Store>, conv: &str) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    let mut after = 0;
    loop {
        let (page, more) = store
            .history(Page::after(conv, after, 500))
            .await
            .expect("history")
            .parts();
        for m in &page {
            after = m.seq;
            // Deleted messages are no longer unread.
            if m.kind == MessageKind::Text as i32 && m.deleted.is_none() {
                out.insert(m.seq, m.sender_id.clone());
            }
        }
        if !more {
            return out;
        }
    }
}

/// A user's conversations come most recent activity first (ties by id),
/// in pages that continue where the last one stopped, each conversation
/// once; each carries its newest TEXT message, never a SYSTEM event.
pub async fn conversations_are_listed_most_recent_first_in_pages(store: Arc<dyn Store>) {
    for i in 0..5 {
        let conv = format!("c{i}");
        apply(
            &store,
            vec![create_group(&conv, "alice", &["alice", "bob"])],
        )
        .await;
        apply(&store, vec![send(&conv, "bob", "m", &format!("hello {i}"))]).await;
    }
    // c0 gets a message again, then a membership event after it.
    apply(
        &store,
        vec![
            send("c0", "bob", "again", "newest"),
            add("c0", "alice", &["carol"]),
        ],
    )
    .await;
    let all = super::list(&store, "alice", 200).await;
    assert_eq!(all.len(), 5);
    assert_eq!(all[0].id, "c0", "the newest activity comes first");
    let key = |c: &Conversation| {
        let at = c.last_activity_at.expect("activity time");
        (std::cmp::Reverse((at.seconds, at.nanos)), c.id.clone())
    };
    assert!(all.windows(2).all(|w| key(&w[0]) < key(&w[1])), "{all:?}");
    let last = all[0].last_message.clone().expect("c0 has messages");
    assert_eq!(
        (last.seq, last.body.as_str()),
        (3, "newest"),
        "not the ADDED event"
    );
    // Exactly the stored message, as GetHistory and GetConversation give it.
    let (stored, _) = store
        .history(confab_core::validate::Page::after("c0", 2, 1))
        .await
        .expect("history")
        .parts();
    assert_eq!(Some(&last), stored.first());
    assert_eq!(
        one(&store, "alice", "c0")
            .await
            .and_then(|c| c.last_message),
        Some(last.clone())
    );
    assert!(one(&store, "alice", "no-such").await.is_none());
    for c in &all {
        let m = c.last_message.as_ref().expect("every one has a message");
        assert_eq!(m.kind, MessageKind::Text as i32);
        assert_eq!(m.conversation_id, c.id);
    }
    // Pages of two: three pages, the same conversations in the same order.
    let mut paged = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = store
            .conversations("alice", Listing::Recent(after.as_ref()), 2)
            .await
            .expect("page");
        pages += 1;
        assert!(page.conversations.len() <= 2);
        paged.extend(page.conversations);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        paged.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        all.iter().map(|c| c.id.as_str()).collect::<Vec<_>>()
    );
    // A full last page says so: no next page.
    let exact = store
        .conversations("alice", Listing::Recent(None), 5)
        .await
        .expect("list");
    assert!(exact.next.is_none());
    assert!(super::list(&store, "nobody", 2).await.is_empty());
}

/// Reads among a run of sends (decided after the run's sends, each on the
/// state the sends before it leave) come to exactly what applying the
/// records one by one comes to: the same outcome for every record (read
/// states, receipts, refusals, seqs) and the same positions after. Random
/// batches of sends and reads, own messages, repeated and lower reads,
/// reads one or two past the newest and reads by strangers among them, go
/// whole to `batched` and one record per batch to `alone`.
pub async fn reads_in_a_run_of_sends_decide_as_one_by_one(
    batched: Arc<dyn Store>,
    alone: Arc<dyn Store>,
) {
    const USERS: [&str; 4] = ["u0", "u1", "u2", "stranger"];
    let convs = ["c0", "c1"];
    for store in [&batched, &alone] {
        for conv in convs {
            apply(store, vec![create_group(conv, "u0", &USERS[..3])]).await;
        }
    }
    // What an outcome says, without the acceptance time of its messages.
    let said = |mut o: OutcomeRecord| {
        for m in &mut o.events {
            m.created_at = None;
        }
        if let Some(R::Message(m)) = &mut o.result {
            m.created_at = None;
        }
        o
    };
    let mut rng = Lcg(29);
    let mut last: BTreeMap<&str, u64> = convs.iter().map(|c| (*c, 1)).collect();
    let (mut moved_in_runs, mut refused_in_runs) = (0, 0);
    for round in 0..61 {
        let mut batch = Vec::new();
        let mut newest = last.clone();
        if round == 60 {
            // Fixed: a member reads the run's new message, then a lower
            // seq, then the same again: the later reads are decided on the
            // position the first moved, not the one stored before the run.
            let n = newest["c0"];
            batch.push(send("c0", "u0", "fixed-send", "x"));
            batch.push(read("c0", "u2", n + 1, false));
            batch.push(read("c0", "u2", n, false));
            batch.push(read("c0", "u2", n + 1, false));
        }
        for i in 0..=rng.below(12) {
            let conv = convs[rng.below(2) as usize];
            let user = USERS[rng.below(4) as usize];
            if rng.below(2) == 0 {
                *newest.get_mut(conv).expect("conv") += 1;
                batch.push(send(conv, user, &format!("r{round}-{i}"), "x"));
            } else {
                let seq = newest[conv] + 2 - rng.below(newest[conv] + 2).min(rng.below(5));
                batch.push(read(conv, user, seq, rng.below(3) == 0));
            }
        }
        let whole = apply(&batched, batch.clone()).await;
        let mut one_by_one = Vec::new();
        for rec in &batch {
            one_by_one.extend(apply(&alone, vec![rec.clone()]).await);
        }
        let in_a_run = batch
            .iter()
            .any(|r| matches!(r.command, Some(Command::Send(_))));
        for ((rec, a), b) in batch.iter().zip(whole).zip(one_by_one) {
            if in_a_run && matches!(rec.command, Some(Command::Read(_))) {
                moved_in_runs += u32::from(a.receipt.is_some());
                refused_in_runs += u32::from(matches!(a.result, Some(R::Error(_))));
            }
            let b = said(b);
            for e in &b.events {
                if let Some(seq) = last.get_mut(e.conversation_id.as_str()) {
                    *seq = (*seq).max(e.seq);
                }
            }
            assert_eq!(said(a), b, "round {round}: {rec:?}");
        }
        for conv in convs {
            for user in &USERS[..3] {
                let (a, b) = (
                    listed(&batched, user, conv).await,
                    listed(&alone, user, conv).await,
                );
                let key = |c: Option<Conversation>| c.map(|c| (c.read_seq, c.unread_count));
                assert_eq!(key(a), key(b), "round {round}: {user} in {conv}");
            }
        }
    }
    assert!(
        moved_in_runs > 20 && refused_in_runs > 5,
        "the mix moved {moved_in_runs} and refused {refused_in_runs} reads inside runs"
    );
}
