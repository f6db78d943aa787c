//! The consumer-group consumer the sequencers (group "history", ingress
//! topic) and routers (group "router", messages topic) read batches with.
//!
//! Offsets are committed only by [`BatchConsumer::commit`], with offsets the
//! caller got from [`BatchConsumer::next_batch`] and hands back once its work
//! is durable; nothing is committed or stored automatically. A commit covers
//! only partitions this consumer still owns: after a rebalance the new owner
//! re-reads from the last commit, so a dropped commit means re-processing
//! (deduplicated downstream), never a lost record.

use crate::context::{GroupContext, GroupState};
use crate::record::{KafkaRecord, IDEMPOTENCY_KEY_HEADER, TRACEPARENT_HEADER};
use crate::{Error, KafkaConfig};
use confab_core::metrics::KAFKA_CONSUMER_LAG;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// One record read from the log, decoded, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Consumed<T> {
    /// The decoded record.
    pub record: T,
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Its key (the conversation id), if it had a UTF-8 one.
    pub key: Option<String>,
    /// Its headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Its timestamp in milliseconds since the epoch, if it had one.
    pub timestamp_ms: Option<i64>,
}

impl<T> Consumed<T> {
    /// The first header called `name`, if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The `confab-idempotency-key` header.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.header(IDEMPOTENCY_KEY_HEADER)
    }

    /// The `traceparent` header.
    pub fn traceparent(&self) -> Option<&str> {
        self.header(TRACEPARENT_HEADER)
    }
}

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
    fn split_off_unless(&mut self, keep: impl Fn(i32) -> bool) -> Offsets {
        let (kept, gone) = std::mem::take(&mut self.0)
            .into_iter()
            .partition(|(p, _)| keep(*p));
        self.0 = kept;
        Offsets(gone)
    }

    /// The positions as a list for librdkafka.
    fn to_tpl(&self, topic: &str) -> Result<TopicPartitionList, KafkaError> {
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

impl<T> From<&Batch<T>> for Offsets {
    fn from(batch: &Batch<T>) -> Self {
        batch.offsets.clone()
    }
}

impl From<&Offsets> for Offsets {
    fn from(o: &Offsets) -> Self {
        o.clone()
    }
}

/// What [`BatchConsumer::next_batch`] read: the decoded records, and the
/// positions after them, which also cover records that were skipped
/// because they could not be decoded (so a poison record never blocks its
/// partition).
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
    fn absorb(&mut self, partition: i32, offset: i64, record: Option<Consumed<T>>) {
        self.offsets.advance(partition, offset);
        match record {
            Some(r) => self.records.push(r),
            None => self.skipped += 1,
        }
    }

    /// Whether nothing at all was read.
    fn nothing_read(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Drops what was read from partitions for which `owned` does not hold
    /// (revoked since: their next owner reads them again); returns how many
    /// records were dropped.
    fn retain_owned(&mut self, owned: impl Fn(i32) -> bool) -> usize {
        let before = self.records.len();
        self.records.retain(|r| owned(r.partition));
        self.offsets.split_off_unless(&owned);
        before - self.records.len()
    }
}

/// What a commit did, per partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitReport {
    /// Positions now committed in the group.
    pub committed: Offsets,
    /// Positions not committed because this consumer no longer owned the
    /// partition (or the group had moved on): the partition's next owner
    /// re-processes those records.
    pub dropped: Offsets,
}

/// Commit failures that mean "the group has moved on without you": the
/// partitions have (or will get) another owner, who re-reads them.
fn group_moved_on(err: &KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::FencedInstanceId
                | RDKafkaErrorCode::AssignmentLost
                | RDKafkaErrorCode::State
        )
    )
}

/// Decodes one message into a [`Consumed`], or `None` (logged) when it
/// cannot be decoded.
fn decode<T: KafkaRecord>(msg: &BorrowedMessage<'_>, group: &str) -> Option<Consumed<T>> {
    let payload = match msg.payload() {
        Some(p) if !p.is_empty() => p,
        _ => {
            tracing::warn!(
                group,
                topic = msg.topic(),
                partition = msg.partition(),
                offset = msg.offset(),
                "skipping a record without payload"
            );
            return None;
        }
    };
    let record = match T::decode(payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(group, topic = msg.topic(), partition = msg.partition(), offset = msg.offset(), error = %e, "skipping a record that does not decode");
            return None;
        }
    };
    let headers = msg
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Consumed {
        record,
        topic: msg.topic().to_string(),
        partition: msg.partition(),
        offset: msg.offset(),
        key: msg
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_string),
        headers,
        timestamp_ms: msg.timestamp().to_millis(),
    })
}

/// A member of a consumer group reading one topic in batches, committing
/// by hand. See the module documentation for the guarantees.
pub struct BatchConsumer<T> {
    /// The librdkafka consumer (shared with blocking commit calls).
    consumer: Arc<StreamConsumer<GroupContext>>,
    /// Ownership and counters, kept by the rebalance callbacks.
    state: Arc<GroupState>,
    /// The group.
    group: String,
    /// The topic.
    topic: String,
    /// Read but not yet returned (kept across a cancelled `next_batch`).
    pending: Batch<T>,
    /// Bound on blocking calls to the broker (commit, committed offsets).
    request_timeout: Duration,
    /// Records of type `T` only.
    _record: PhantomData<fn() -> T>,
}

impl<T: KafkaRecord> BatchConsumer<T> {
    /// Joins `group` reading `T`'s topic (see [`KafkaRecord::topic`]).
    /// Must be called inside a Tokio runtime.
    pub fn new(config: &KafkaConfig, group: &str) -> Result<Self, Error> {
        Self::with_topic(config, group, &T::topic(config))
    }

    /// Joins `group` reading `topic`.
    pub fn with_topic(config: &KafkaConfig, group: &str, topic: &str) -> Result<Self, Error> {
        let state = Arc::new(GroupState::new(group, topic));
        let consumer: StreamConsumer<GroupContext> = config
            .consumer_config(group)
            .create_with_context(GroupContext {
                state: state.clone(),
            })?;
        consumer.subscribe(&[topic])?;
        Ok(Self {
            consumer: Arc::new(consumer),
            state,
            group: group.to_string(),
            topic: topic.to_string(),
            pending: Batch::default(),
            request_timeout: config.admin_timeout,
            _record: PhantomData,
        })
    }

    /// Partition ownership and counters (rebalances, skipped records,
    /// dropped commits), shared and kept current while this consumer polls.
    pub fn state(&self) -> Arc<GroupState> {
        self.state.clone()
    }

    /// The topic this consumer reads.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// A handle that measures this consumer's lag and whether the broker
    /// answers, from another task (see [`ConsumerMonitor::check`]). It does
    /// not keep the consumer alive.
    pub fn monitor(&self) -> ConsumerMonitor {
        ConsumerMonitor {
            consumer: Arc::downgrade(&self.consumer),
            state: self.state.clone(),
            reported: Arc::new(Mutex::new(BTreeSet::new())),
        }
    }

    /// Waits for the next record, then reads on for up to `linger` or until
    /// `max` records are decoded. Records that do not decode are logged,
    /// counted and skipped; their positions are in the batch's offsets all
    /// the same, so the batch may have no records but still something to
    /// commit.
    ///
    /// Rebalance callbacks run while this is waiting, so call it regularly
    /// (within `max.poll.interval.ms`). It is cancellation safe: what was
    /// read before a cancellation is returned by the next call. Records of
    /// partitions revoked in the meantime are not returned (their next owner
    /// reads them). Fails only on a fatal consumer error; transient ones are
    /// logged and librdkafka recovers from them.
    pub async fn next_batch(&mut self, max: usize, linger: Duration) -> Result<Batch<T>, Error> {
        let max = max.max(1);
        let consumer = self.consumer.clone();
        while self.pending.nothing_read() {
            let msg = consumer.recv().await;
            self.take_in(msg)?;
        }
        let deadline = Instant::now() + linger;
        while self.pending.records.len() < max {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Err(_elapsed) => break,
                Ok(msg) => self.take_in(msg)?,
            }
        }
        let mut batch = std::mem::take(&mut self.pending);
        let state = &self.state;
        let dropped = batch.retain_owned(|p| state.owns(p));
        if dropped > 0 {
            tracing::info!(group = %self.group, topic = %self.topic, dropped, "dropped records of revoked partitions before handing them out");
        }
        Ok(batch)
    }

    /// Adds one `recv` result to the pending batch.
    fn take_in(&mut self, msg: Result<BorrowedMessage<'_>, KafkaError>) -> Result<(), Error> {
        match msg {
            Ok(m) => {
                let record = decode::<T>(&m, &self.group);
                if record.is_none() {
                    self.state.count_skipped();
                }
                self.pending.absorb(m.partition(), m.offset(), record);
                Ok(())
            }
            Err(e @ KafkaError::MessageConsumptionFatal(_)) => {
                tracing::error!(group = %self.group, topic = %self.topic, error = %e, "fatal consumer error");
                Err(e.into())
            }
            Err(e) => {
                tracing::warn!(group = %self.group, topic = %self.topic, error = %e, "consumer error");
                Ok(())
            }
        }
    }

    /// The next batch, or `None` once `shutdown` fires: the loop every
    /// service runs around its work. A consumer error is logged and retried
    /// after a pause (librdkafka recovers from transient ones).
    pub async fn next_batch_or_stop(
        &mut self,
        max: usize,
        linger: Duration,
        shutdown: &confab_runtime::shutdown::Signal,
    ) -> Option<Batch<T>> {
        loop {
            let batch = tokio::select! {
                biased;
                _ = shutdown.clone().wait() => return None,
                b = self.next_batch(max, linger) => b,
            };
            match batch {
                Ok(b) => return Some(b),
                Err(e) => {
                    tracing::error!(group = %self.group, topic = %self.topic, error = %e, "consumer failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Commits what `batch` read once its work is durable. A failure is not
    /// fatal: the records are read again by the partition's next owner and
    /// deduplicated downstream, so it is only logged.
    pub async fn commit_done(&self, batch: &Batch<T>) {
        self.committer().commit_done(batch.offsets()).await
    }

    /// Commits `done` (a [`Batch`], its [`Offsets`], or some of its records)
    /// synchronously, for the partitions this consumer still owns; the rest
    /// is dropped with a log line (their next owner re-processes them).
    /// Call it only once the work on those records is durable. A failed
    /// commit loses nothing either: the records are read again.
    pub async fn commit(&self, done: impl Into<Offsets>) -> Result<CommitReport, Error> {
        self.committer().commit(done).await
    }

    /// A handle that commits for this consumer from other tasks while it
    /// goes on reading (see [`Committer`]). Drop every committer before
    /// [`BatchConsumer::close`], which waits for them.
    pub fn committer(&self) -> Committer {
        Committer {
            consumer: self.consumer.clone(),
            state: self.state.clone(),
            group: self.group.clone(),
            topic: self.topic.clone(),
            request_timeout: self.request_timeout,
        }
    }

    /// The group's committed positions for every partition of the topic
    /// (partitions without a commit are absent).
    pub async fn committed(&self) -> Result<Offsets, Error> {
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let timeout = self.request_timeout;
        tokio::task::spawn_blocking(move || -> Result<Offsets, Error> {
            let metadata = consumer.fetch_metadata(Some(&topic), timeout)?;
            let mut tpl = TopicPartitionList::new();
            for t in metadata.topics().iter().filter(|t| t.name() == topic) {
                for p in t.partitions() {
                    tpl.add_partition(&topic, p.id());
                }
            }
            let committed = consumer.committed_offsets(tpl, timeout)?;
            let mut out = Offsets::new();
            for e in committed.elements_for_topic(&topic) {
                if let Offset::Offset(next) = e.offset() {
                    out.advance(e.partition(), next - 1);
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    }

    /// Leaves the group (revoking this consumer's partitions, so the group
    /// rebalances at once instead of after the session timeout) without
    /// blocking the async runtime. Dropping the consumer does the same,
    /// blocking the current thread while it leaves.
    pub async fn close(self) {
        let consumer = self.consumer;
        let _ = tokio::task::spawn_blocking(move || {
            // A monitor's check may hold the consumer for a moment (each of
            // its requests is bounded): let it finish, so that the group is
            // left here and now rather than whenever that check ends.
            let deadline = std::time::Instant::now() + CLOSE_WAIT;
            while Arc::strong_count(&consumer) > 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            drop(consumer)
        })
        .await;
    }
}

/// Commits positions for a [`BatchConsumer`] from any task, so that work on
/// a batch can finish (and be committed) while the consumer reads the next
/// ones. The same rules as [`BatchConsumer::commit`]: only partitions the
/// consumer still owns, and only once the work is durable.
#[derive(Clone)]
pub struct Committer {
    /// The consumer's librdkafka handle.
    consumer: Arc<StreamConsumer<GroupContext>>,
    /// Which partitions it owns.
    state: Arc<GroupState>,
    /// The group.
    group: String,
    /// The topic.
    topic: String,
    /// Bound on the blocking commit call.
    request_timeout: Duration,
}

impl Committer {
    /// [`BatchConsumer::commit_done`]: commits `done`, logging a failure.
    pub async fn commit_done(&self, done: impl Into<Offsets>) {
        if let Err(e) = self.commit(done).await {
            tracing::warn!(group = %self.group, topic = %self.topic, error = %e, "cannot commit offsets; the records will be processed again");
        }
    }

    /// [`BatchConsumer::commit`].
    pub async fn commit(&self, done: impl Into<Offsets>) -> Result<CommitReport, Error> {
        let mut owned = done.into();
        let state = &self.state;
        let mut dropped = owned.split_off_unless(|p| state.owns(p));
        if !dropped.is_empty() {
            self.state.count_dropped_commits(dropped.len());
            tracing::info!(group = %self.group, topic = %self.topic, dropped = ?dropped, "not committing positions of revoked partitions; their new owner re-processes them");
        }
        if owned.is_empty() {
            return Ok(CommitReport {
                committed: owned,
                dropped,
            });
        }
        let tpl = owned.to_tpl(&self.topic)?;
        let consumer = self.consumer.clone();
        let commit = tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync));
        let result = tokio::time::timeout(self.request_timeout, commit)
            .await
            .map_err(|_| {
                Error::Task(format!(
                    "commit did not finish within {:?}",
                    self.request_timeout
                ))
            })?
            .map_err(|e| Error::Task(e.to_string()))?;
        match result {
            Ok(()) => Ok(CommitReport {
                committed: owned,
                dropped,
            }),
            Err(e) if group_moved_on(&e) => {
                self.state.count_dropped_commits(owned.len());
                tracing::info!(group = %self.group, topic = %self.topic, error = %e, positions = ?owned, "commit refused: the group rebalanced; the partitions' owner re-processes these records");
                dropped.merge(&owned);
                Ok(CommitReport {
                    committed: Offsets::new(),
                    dropped,
                })
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// How long [`BatchConsumer::close`] waits for a monitor's check, or a
/// committer, that holds the consumer.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Watches a [`BatchConsumer`] from another task: whether the broker
/// answers, and the lag of every partition the consumer owns, published as
/// [`KAFKA_CONSUMER_LAG`]. Made by [`BatchConsumer::monitor`]; clones share
/// what they reported.
#[derive(Clone)]
pub struct ConsumerMonitor {
    /// The consumer, while it exists.
    consumer: Weak<StreamConsumer<GroupContext>>,
    /// Which partitions it owns.
    state: Arc<GroupState>,
    /// Partitions whose lag gauge this monitor has set.
    reported: Arc<Mutex<BTreeSet<i32>>>,
}

impl ConsumerMonitor {
    /// Asks the broker for the topic's metadata (an error means the broker
    /// did not answer within `timeout`, or the consumer is closed). Then,
    /// for every partition the consumer owns, measures the lag (see
    /// [`measure_lag`]): the high watermark minus the group's committed
    /// offset, sets
    /// [`KAFKA_CONSUMER_LAG`]`{group, partition}` and returns it. Partitions
    /// it reported before but no longer owns are set to 0 (their new owner
    /// reports them). A failure to measure the lag is logged and leaves the
    /// gauges as they were; only the metadata request decides the result.
    pub async fn check(&self, timeout: Duration) -> Result<BTreeMap<i32, i64>, Error> {
        let monitor = self.clone();
        tokio::task::spawn_blocking(move || monitor.check_blocking(timeout))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
    }

    fn check_blocking(&self, timeout: Duration) -> Result<BTreeMap<i32, i64>, Error> {
        let consumer = self
            .consumer
            .upgrade()
            .ok_or_else(|| Error::Task("the consumer is closed".into()))?;
        let (group, topic) = (&self.state.group, &self.state.topic);
        consumer.fetch_metadata(Some(topic), timeout)?;
        let owned = self.state.assigned();
        let lags = match measure_lag(&consumer, topic, &owned, timeout) {
            Ok(lags) => lags,
            Err(e) => {
                tracing::debug!(%group, %topic, error = %e, "cannot measure consumer lag now");
                return Ok(BTreeMap::new());
            }
        };
        let mut reported = self
            .reported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for p in reported.iter().filter(|p| !owned.contains(p)) {
            metrics::gauge!(KAFKA_CONSUMER_LAG, "group" => group.clone(), "partition" => p.to_string())
                .set(0.0);
        }
        reported.retain(|p| owned.contains(p));
        for (&p, &lag) in &lags {
            metrics::gauge!(KAFKA_CONSUMER_LAG, "group" => group.clone(), "partition" => p.to_string())
                .set(lag as f64);
            reported.insert(p);
        }
        Ok(lags)
    }
}

/// Per partition of `owned` whose high watermark the consumer knows: high
/// watermark − committed offset (without a commit: − the low watermark if
/// known, else from offset 0), at least 0. The committed offsets come from
/// the broker (an OffsetFetch); the watermarks are librdkafka's cached ones
/// ([`cached_watermarks`]), not a ListOffsets request: nisshi's PostgreSQL
/// engine does not answer ListOffsets, and an unanswered request holds up
/// the consumer's fetches on the same connection.
fn measure_lag(
    consumer: &StreamConsumer<GroupContext>,
    topic: &str,
    owned: &BTreeSet<i32>,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, KafkaError> {
    if owned.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut tpl = TopicPartitionList::with_capacity(owned.len());
    for &p in owned {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let mut lags = BTreeMap::new();
    for &p in owned {
        let Some((low, high)) = cached_watermarks(consumer, topic, p) else {
            continue; // Nothing fetched from it yet.
        };
        let from = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(next)) => next,
            _ => low.unwrap_or(0),
        };
        lags.insert(p, (high - from).max(0));
    }
    Ok(lags)
}

/// The partition's low (if known) and high watermarks as librdkafka last
/// saw them: the high one comes with every fetch response, so it stays
/// current while the consumer fetches, even when the application does not
/// take records (until librdkafka's local queue is full). `None` before the
/// first fetch response. No request is sent.
#[allow(unsafe_code)] // rdkafka 0.39 has no safe wrapper for this call.
fn cached_watermarks(
    consumer: &StreamConsumer<GroupContext>,
    topic: &str,
    partition: i32,
) -> Option<(Option<i64>, i64)> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let invalid = i64::from(rdkafka::bindings::RD_KAFKA_OFFSET_INVALID);
    let (mut low, mut high) = (invalid, invalid);
    // SAFETY: `native_ptr` is the live `rd_kafka_t` of `consumer`, which is
    // borrowed for the whole call (so it is not destroyed meanwhile);
    // `topic` is a NUL-terminated string that outlives the call and is only
    // read; `low` and `high` are valid for writes. The function copies
    // librdkafka's cached partition state under librdkafka's own lock and
    // is documented as thread-safe.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    if err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || high < 0 {
        return None;
    }
    Some(((low >= 0).then_some(low), high))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
