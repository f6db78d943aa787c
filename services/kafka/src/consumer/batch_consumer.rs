//! [`BatchConsumer`]: a member of a consumer group reading one topic in
//! batches, handing out the commit and monitor handles, and leaving the
//! group.

use super::batch::Batch;
use super::commit::{commit_thread, CommitJob, CommitReport, Committer};
use super::consumed::decode;
use super::monitor::ConsumerMonitor;
use super::offsets::Offsets;
use crate::context::{GroupContext, GroupState};
use crate::record::KafkaRecord;
use crate::{Error, KafkaConfig};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// A member of a consumer group reading one topic in batches, committing
/// by hand. See the module documentation for the guarantees.
pub struct BatchConsumer<T> {
    /// The librdkafka consumer (shared with the commit thread).
    consumer: Arc<StreamConsumer<GroupContext>>,
    /// Its commit thread, which runs while a sender lives (this one and
    /// every [`Committer`]'s).
    commits: std::sync::mpsc::Sender<CommitJob>,
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
        Self::with_state(config, GroupState::of::<T>(config, group))
    }

    /// Joins the group of `state` reading its topic, and keeps `state`
    /// current: a process that made `state` beforehand (see
    /// [`GroupState::of`]) can show it before the consumer exists.
    pub fn with_state(config: &KafkaConfig, state: Arc<GroupState>) -> Result<Self, Error> {
        let (group, topic) = (state.group.clone(), state.topic.clone());
        let consumer: StreamConsumer<GroupContext> = config
            .consumer_config(&group)
            .create_with_context(GroupContext {
                state: state.clone(),
            })?;
        consumer.subscribe(&[&topic])?;
        let consumer = Arc::new(consumer);
        Ok(Self {
            commits: commit_thread(consumer.clone())?,
            consumer,
            state,
            group,
            topic,
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
            commits: self.commits.clone(),
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
        // The commit thread ends, dropping its handle, once no sender is
        // left (a committer still held keeps it, which the wait below
        // allows for).
        drop(self.commits);
        let _ = tokio::task::spawn_blocking(move || {
            // A monitor's check may hold the consumer for a moment (each of
            // its requests is bounded), and the commit thread until it has
            // ended: let them finish, so that the group is left here and
            // now rather than whenever they let go.
            let deadline = std::time::Instant::now() + CLOSE_WAIT;
            while Arc::strong_count(&consumer) > 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            drop(consumer)
        })
        .await;
    }
}

/// How long [`BatchConsumer::close`] waits for a monitor's check, or a
/// committer, that holds the consumer.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
