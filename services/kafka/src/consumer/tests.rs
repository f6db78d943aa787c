//! The consumer's unit tests: positions, batches (poison records, splitting
//! by partition, revoked partitions), what a commit keeps, and headers.

use super::commit::group_moved_on;
use super::*;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Offset;

fn rec(partition: i32, offset: i64) -> Consumed<u32> {
    Consumed {
        record: offset as u32,
        topic: "t".into(),
        partition,
        offset,
        key: None,
        headers: vec![("traceparent".into(), b"00-abc".to_vec())],
        timestamp_ms: None,
    }
}

#[test]
fn positions_are_the_highest_offset_plus_one_per_partition() {
    let records = vec![rec(0, 5), rec(1, 9), rec(0, 6), rec(0, 4), rec(2, 0)];
    let o = Offsets::from(&records);
    assert_eq!(o.iter().collect::<Vec<_>>(), vec![(0, 7), (1, 10), (2, 1)]);
    assert_eq!(o.get(3), None);
}

#[test]
fn positions_never_move_back() {
    let mut o = Offsets::new();
    o.advance(0, 10);
    o.advance(0, 3);
    assert_eq!(o.get(0), Some(11));
    let mut other = Offsets::new();
    other.advance(0, 2);
    other.advance(1, 7);
    o.merge(&other);
    assert_eq!(o.iter().collect::<Vec<_>>(), vec![(0, 11), (1, 8)]);
}

#[test]
fn skipped_records_advance_positions_without_being_returned() {
    let mut b: Batch<u32> = Batch::default();
    assert!(b.nothing_read());
    b.absorb(0, 0, Some(rec(0, 0)));
    b.absorb(0, 1, None); // poison at the end of partition 0
    b.absorb(1, 4, None); // a partition with only poison
    assert!(!b.nothing_read());
    assert_eq!(b.len(), 1);
    assert_eq!(b.skipped(), 2);
    assert_eq!(
        b.offsets().iter().collect::<Vec<_>>(),
        vec![(0, 2), (1, 5)],
        "the poison records' offsets are committed with the batch"
    );
}

#[test]
fn a_batch_of_only_poison_still_has_something_to_commit() {
    let mut b: Batch<u32> = Batch::default();
    b.absorb(3, 41, None);
    assert!(b.is_empty());
    assert_eq!(Offsets::from(&b).get(3), Some(42));
}

#[test]
fn a_batch_splits_into_partitions_that_add_back_up() {
    let mut b: Batch<u32> = Batch::default();
    for (p, o) in [(0, 1), (1, 1), (0, 2), (2, 8), (1, 2)] {
        b.absorb(p, o, Some(rec(p, o)));
    }
    b.absorb(0, 3, None); // poison after partition 0's records
    b.absorb(4, 7, None); // a partition with only poison
    let whole = b.clone();
    let parts = b.split_by_partition();
    type Shape = (i32, Vec<i64>, Vec<(i32, i64)>);
    let shape: Vec<Shape> = parts
        .iter()
        .map(|(p, part)| {
            (
                *p,
                part.records.iter().map(|r| r.offset).collect(),
                part.offsets().iter().collect(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            (0, vec![1, 2], vec![(0, 4)]),
            (1, vec![1, 2], vec![(1, 3)]),
            (2, vec![8], vec![(2, 9)]),
            (4, vec![], vec![(4, 8)]),
        ],
        "each part has its own records in offset order and its own position, poison included"
    );
    assert!(parts
        .iter()
        .all(|(p, part)| part.records.iter().all(|r| r.partition == *p)));

    let mut joined: Batch<u32> = Batch::default();
    for (_, part) in parts {
        joined.append(part);
    }
    assert_eq!(joined.offsets(), whole.offsets());
    assert_eq!(joined.skipped(), whole.skipped());
    assert_eq!(joined.len(), whole.len());
}

#[test]
fn appending_a_later_batch_moves_positions_forward_only() {
    let mut first: Batch<u32> = Batch::default();
    first.absorb(0, 5, Some(rec(0, 5)));
    let mut later: Batch<u32> = Batch::default();
    later.absorb(0, 6, Some(rec(0, 6)));
    later.absorb(0, 7, None);
    first.append(later);
    assert_eq!(
        first.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![5, 6]
    );
    assert_eq!(first.offsets().get(0), Some(8));
    assert_eq!(first.skipped(), 1);
}

#[test]
fn records_of_revoked_partitions_are_dropped_with_their_positions() {
    let mut b: Batch<u32> = Batch::default();
    for (p, o) in [(0, 1), (1, 1), (0, 2), (2, 8)] {
        b.absorb(p, o, Some(rec(p, o)));
    }
    b.absorb(1, 2, None);
    let dropped = b.retain_owned(|p| p != 1);
    assert_eq!(dropped, 1);
    assert_eq!(
        b.records
            .iter()
            .map(|r| (r.partition, r.offset))
            .collect::<Vec<_>>(),
        vec![(0, 1), (0, 2), (2, 8)]
    );
    assert_eq!(b.offsets().iter().collect::<Vec<_>>(), vec![(0, 3), (2, 9)]);
}

#[test]
fn only_owned_positions_are_kept_for_a_commit() {
    let mut o = Offsets::from(&vec![rec(0, 1), rec(1, 1), rec(3, 5)]);
    let dropped = o.split_off_unless(|p| p == 0 || p == 3);
    assert_eq!(o.iter().collect::<Vec<_>>(), vec![(0, 2), (3, 6)]);
    assert_eq!(dropped.iter().collect::<Vec<_>>(), vec![(1, 2)]);
    let tpl = o.to_tpl("t").expect("tpl");
    let mut listed: Vec<(i32, Offset)> = tpl
        .elements_for_topic("t")
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect();
    listed.sort_by_key(|(p, _)| *p);
    assert_eq!(listed, vec![(0, Offset::Offset(2)), (3, Offset::Offset(6))]);
}

#[test]
fn rebalance_errors_mean_the_commit_is_dropped_not_failed() {
    for code in [
        RDKafkaErrorCode::IllegalGeneration,
        RDKafkaErrorCode::UnknownMemberId,
        RDKafkaErrorCode::RebalanceInProgress,
    ] {
        assert!(
            group_moved_on(&KafkaError::ConsumerCommit(code)),
            "{code:?}"
        );
    }
    assert!(!group_moved_on(&KafkaError::ConsumerCommit(
        RDKafkaErrorCode::RequestTimedOut
    )));
}

#[test]
fn headers_are_read_by_name() {
    let r = rec(0, 0);
    assert_eq!(r.traceparent(), Some("00-abc"));
    assert_eq!(r.idempotency_key(), None);
}
