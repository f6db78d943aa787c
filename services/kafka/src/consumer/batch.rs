//! [`Batch`]: what one read returns, the decoded records and the positions
//! after them (skipped records included), split by partition or joined
//! with a later batch.

use super::consumed::Consumed;
use super::offsets::Offsets;
use std::collections::BTreeMap;

impl<T> From<&Batch<T>> for Offsets {
    fn from(batch: &Batch<T>) -> Self {
        batch.offsets.clone()
    }
}

/// What [`BatchConsumer::next_batch`](super::BatchConsumer::next_batch) read:
/// the decoded records, and the positions after them, which also cover records
/// that were skipped because they could not be decoded (so a poison record
/// never blocks its partition).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch<T> {
    /// The decoded records, in the order they were read (offset order
    /// within each partition).
    pub records: Vec<Consumed<T>>,
    /// Positions after every record read, the skipped ones included.
    offsets: Offsets,
    /// Records skipped because they could not be decoded.
    skipped: usize,
}

impl<T> Default for Batch<T> {
    fn default() -> Self {
        Self {
            records: Vec::new(),
            offsets: Offsets::new(),
            skipped: 0,
        }
    }
}

impl<T> Batch<T> {
    /// What to commit once every record of this batch is durable.
    pub fn offsets(&self) -> &Offsets {
        &self.offsets
    }

    /// Records skipped because they could not be decoded.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// The number of decoded records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there are no decoded records (there may be skipped ones).
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The decoded records without their provenance.
    pub fn payloads(&self) -> impl Iterator<Item = &T> {
        self.records.iter().map(|c| &c.record)
    }

    /// Splits the batch into one batch per partition (in partition order),
    /// each with its records (in offset order) and its position, so that
    /// partitions can be worked on, and committed, independently. A
    /// partition whose records were all skipped gets an empty batch that
    /// still has its position. Skipped counts go with the first part.
    pub fn split_by_partition(self) -> Vec<(i32, Batch<T>)> {
        let mut parts: BTreeMap<i32, Batch<T>> = self
            .offsets
            .iter()
            .map(|(p, next)| {
                let mut part = Batch::default();
                part.offsets.advance(p, next - 1);
                (p, part)
            })
            .collect();
        for record in self.records {
            parts
                .entry(record.partition)
                .or_insert_with(|| {
                    let mut part = Batch::default();
                    part.offsets.advance(record.partition, record.offset);
                    part
                })
                .records
                .push(record);
        }
        let mut parts: Vec<(i32, Batch<T>)> = parts.into_iter().collect();
        if let Some((_, first)) = parts.first_mut() {
            first.skipped = self.skipped;
        }
        parts
    }

    /// Appends `later`, read after this batch: its records follow these,
    /// positions move forward, skipped counts add up.
    pub fn append(&mut self, later: Batch<T>) {
        self.records.extend(later.records);
        self.offsets.merge(&later.offsets);
        self.skipped += later.skipped;
    }

    /// Notes one record read from the log: decoded, or skipped.
    pub(super) fn absorb(&mut self, partition: i32, offset: i64, record: Option<Consumed<T>>) {
        self.offsets.advance(partition, offset);
        match record {
            Some(r) => self.records.push(r),
            None => self.skipped += 1,
        }
    }

    /// Whether nothing at all was read.
    pub(super) fn nothing_read(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Drops what was read from partitions for which `owned` does not hold
    /// (revoked since: their next owner reads them again); returns how many
    /// records were dropped.
    pub(super) fn retain_owned(&mut self, owned: impl Fn(i32) -> bool) -> usize {
        let before = self.records.len();
        self.records.retain(|r| owned(r.partition));
        self.offsets.split_off_unless(&owned);
        before - self.records.len()
    }
}
