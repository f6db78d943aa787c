//! [`Offsets`]: the positions to commit, per partition the offset of the
//! next record to read, which only move forward.

use super::consumed::Consumed;
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;

/// Positions to commit: per partition, the offset of the next record to
/// read (the highest processed offset + 1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offsets(BTreeMap<i32, i64>);

impl Offsets {
    /// No positions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes that the record at `offset` of `partition` is done. Positions
    /// only move forward.
    pub fn advance(&mut self, partition: i32, offset: i64) {
        let next = offset.saturating_add(1);
        self.0
            .entry(partition)
            .and_modify(|o| *o = (*o).max(next))
            .or_insert(next);
    }

    /// Adds `other`'s positions, keeping the further one per partition.
    pub fn merge(&mut self, other: &Offsets) {
        for (&p, &next) in &other.0 {
            self.advance(p, next - 1);
        }
    }

    /// The next offset to read in `partition`, if any record of it is done.
    pub fn get(&self, partition: i32) -> Option<i64> {
        self.0.get(&partition).copied()
    }

    /// Whether no partition has a position.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many partitions have a position.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// (partition, next offset) pairs in partition order.
    pub fn iter(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.0.iter().map(|(&p, &o)| (p, o))
    }

    /// Keeps the positions of partitions where `keep` holds; returns the
    /// others.
    pub(super) fn split_off_unless(&mut self, keep: impl Fn(i32) -> bool) -> Offsets {
        let (kept, gone) = std::mem::take(&mut self.0)
            .into_iter()
            .partition(|(p, _)| keep(*p));
        self.0 = kept;
        Offsets(gone)
    }

    /// The positions as a list for librdkafka.
    pub(super) fn to_tpl(&self, topic: &str) -> Result<TopicPartitionList, KafkaError> {
        let mut tpl = TopicPartitionList::with_capacity(self.0.len());
        for (&p, &next) in &self.0 {
            tpl.add_partition_offset(topic, p, Offset::Offset(next))?;
        }
        Ok(tpl)
    }
}

impl<T> From<&[Consumed<T>]> for Offsets {
    fn from(records: &[Consumed<T>]) -> Self {
        let mut o = Offsets::new();
        for r in records {
            o.advance(r.partition, r.offset);
        }
        o
    }
}

impl<T> From<&Vec<Consumed<T>>> for Offsets {
    fn from(records: &Vec<Consumed<T>>) -> Self {
        Offsets::from(records.as_slice())
    }
}

impl From<&Offsets> for Offsets {
    fn from(o: &Offsets) -> Self {
        o.clone()
    }
}
