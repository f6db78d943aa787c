//! The decisions' unit tests, on facts built by hand: runs of sends (seqs,
//! repeats, stored originals), creating a conversation, the group limit,
//! and NUL refused with the field named.

use super::*;
use crate::store::conformance::{create_group, send};

fn facts(last: &[(&str, u64)], members: &[(&str, &str)]) -> SendFacts {
    SendFacts {
        last_seqs: last.iter().map(|(c, s)| (c.to_string(), *s)).collect(),
        originals: HashMap::new(),
        members: members
            .iter()
            .map(|(c, u)| (c.to_string(), u.to_string()))
            .collect(),
        reply_targets: HashMap::new(),
        since_joined: HashSet::new(),
    }
}

fn sends_of(batch: &[IngressRecord]) -> Vec<SendRecord<'_>> {
    match runs(batch, usize::MAX).into_iter().next() {
        Some(Run::Sends(run, _)) => run,
        _ => panic!("not a run of sends"),
    }
}

#[test]
fn a_run_takes_the_seqs_after_each_conversations_last_and_repeats_share_one() {
    let batch = [
        send("a", "alice", "1", "x"),
        send("b", "alice", "1", "y"),
        send("a", "alice", "1", "x again"),
        send("a", "alice", "2", "z"),
        send("a", "mallory", "3", "no"),
        send("c", "alice", "4", "nowhere"),
    ];
    let run = sends_of(&batch);
    let decided = sends(
        &run,
        &facts(&[("a", 4), ("b", 0)], &[("a", "alice"), ("b", "alice")]),
        0,
    );
    assert_eq!(
        decided
            .new
            .iter()
            .map(|m| (m.conversation_id.as_str(), m.seq))
            .collect::<Vec<_>>(),
        vec![("a", 5), ("b", 1), ("a", 6)]
    );
    let heads: Vec<(&str, u64)> = decided
        .newest()
        .iter()
        .map(|m| (m.conversation_id.as_str(), m.seq))
        .collect();
    assert_eq!(heads, [("a", 6), ("b", 1)]);
    let mut out = Vec::new();
    decided.outcomes(&run, &mut out);
    use outcome_record::Result as R;
    let seq = |o: &OutcomeRecord| match &o.result {
        Some(R::Message(m)) => Ok((m.seq, o.replay)),
        Some(R::Error(e)) => Err(tonic::Code::from_i32(e.code)),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        out.iter().map(seq).collect::<Vec<_>>(),
        vec![
            Ok((5, false)),
            Ok((1, false)),
            Ok((5, true)),
            Ok((6, false)),
            Err(tonic::Code::PermissionDenied),
            Err(tonic::Code::NotFound),
        ]
    );
}

#[test]
fn a_stored_original_is_returned_even_after_the_sender_left() {
    let batch = [send("a", "alice", "1", "x")];
    let run = sends_of(&batch);
    let original = Message {
        conversation_id: "a".into(),
        seq: 3,
        sender_id: "alice".into(),
        client_msg_id: "1".into(),
        body: "x".into(),
        kind: MessageKind::Text as i32,
        ..Message::default()
    };
    let mut f = facts(&[("a", 9)], &[]);
    f.originals.insert(key_of(&original), original);
    let decided = sends(&run, &f, 0);
    assert!(decided.new.is_empty() && decided.newest().is_empty());
    let mut out = Vec::new();
    decided.outcomes(&run, &mut out);
    assert!(out[0].replay);
}

#[test]
fn creating_writes_the_conversation_its_members_and_seq_one() {
    let rec = create_group("g", "alice", &["alice", "bob"]);
    let Ok(Change::Write(steps)) = change(&rec, None, &SizeLimits::default(), 0) else {
        panic!("not a write");
    };
    assert!(matches!(steps[0], Step::CreateConversation { .. }));
    // The creator owns the group; the others are members.
    assert_eq!(
        steps[1..3],
        [
            Step::AddMembers {
                users: vec!["alice".into()],
                role: Role::Owner as i32
            },
            Step::AddMembers {
                users: vec!["bob".into()],
                role: Role::Member as i32
            }
        ]
    );
    let events = appended(steps);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].seq, 1);
    assert_eq!(events[0].kind, MessageKind::System as i32);
}

#[test]
fn a_group_over_the_limit_is_refused_before_anything_is_written() {
    let rec = create_group("g", "alice", &["alice", "bob", "carol"]);
    let limits = SizeLimits {
        max_group_members: 2,
        ..SizeLimits::default()
    };
    let err = change(&rec, None, &limits, 0).expect_err("refused");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
}

#[test]
fn nul_is_refused_by_every_store_with_the_field_named() {
    let rec = send("g", "alice", "1", "bad\0body");
    let err = unstorable(&rec).expect("refused");
    assert!(err.to_string().starts_with("body "), "{err}");
    assert!(unstorable(&send("g", "alice", "1", "fine")).is_none());
}

#[test]
fn reads_join_the_run_of_sends_they_are_among_and_others_stand_alone() {
    use crate::store::conformance::read;
    let batch = [
        read("a", "bob", 1, false),
        send("a", "alice", "1", "x"),
        read("a", "bob", 2, false),
        send("a", "alice", "2", "y"),
        read("a", "bob", 3, false),
        create_group("g", "alice", &["alice", "bob"]),
        read("a", "bob", 3, false),
    ];
    // Each run as (its sends' ids, or the one record's conversation; its
    // reads as (seq, sends before it)).
    type Shape<'a> = (Vec<&'a str>, Vec<(u64, usize)>);
    let shape: Vec<Shape> = runs(&batch, usize::MAX)
        .iter()
        .map(|run| match run {
            Run::Sends(sends, reads) => (
                sends
                    .iter()
                    .map(|(_, s)| s.client_msg_id.as_str())
                    .collect(),
                reads.iter().map(|(_, r, at)| (r.seq, *at)).collect(),
            ),
            Run::One(rec) => (vec![rec.conversation_id.as_str()], vec![]),
        })
        .collect();
    assert_eq!(
        shape,
        [
            (vec!["1", "2"], vec![(1, 0), (2, 1), (3, 2)]),
            (vec!["g"], vec![]),
            (vec!["a"], vec![]),
        ]
    );
    // Reads with no send among them stand alone, each once.
    let alone = [
        read("a", "bob", 1, false),
        read("b", "bob", 1, false),
        create_group("g", "alice", &["alice", "bob"]),
    ];
    let shape: Vec<&str> = runs(&alone, usize::MAX)
        .iter()
        .map(|run| match run {
            Run::Sends(..) => "run",
            Run::One(rec) => rec.conversation_id.as_str(),
        })
        .collect();
    assert_eq!(shape, ["a", "b", "g"]);
}
