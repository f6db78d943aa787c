//! librdkafka callbacks: its log lines and errors go to `tracing`, and the
//! consumer's context tracks which partitions it owns.

use confab_core::metrics::KAFKA_REBALANCES;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::TopicPartitionList;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Forwards librdkafka's log lines to `tracing` (target `librdkafka`).
fn log_line(client: &str, level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", client, fac, "{message}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", client, fac, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", client, fac, "{message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", client, fac, "{message}"),
    }
}

/// The context of the producer and the admin client: logging only. The
/// name says which client a line comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogContext(pub(crate) &'static str);

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_line(self.0, level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Transport errors while a broker is down are expected and retried;
        // a publish that cannot complete fails on its own timeout.
        tracing::warn!(target: "librdkafka", client = self.0, error = %error, "{reason}");
    }
}

/// Who owns what in a consumer group, as this consumer sees it: kept
/// current by the rebalance callbacks, read by [`crate::BatchConsumer`]
/// before committing and by callers and tests.
#[derive(Debug, Default)]
pub struct GroupState {
    /// The group.
    pub(crate) group: String,
    /// The topic the consumer reads.
    pub(crate) topic: String,
    /// Partitions of `topic` currently assigned to this consumer.
    assigned: Mutex<BTreeSet<i32>>,
    /// Completed assignments (every rebalance ends with one, maybe empty).
    rebalances: AtomicU64,
    /// Revocations (partitions taken away, or all of them before an eager
    /// rebalance).
    revocations: AtomicU64,
    /// Records that could not be decoded and were skipped.
    skipped: AtomicU64,
    /// Commits (per partition) dropped because the partition was no longer
    /// assigned or the group had moved on.
    dropped_commits: AtomicU64,
}

impl GroupState {
    pub(crate) fn new(group: &str, topic: &str) -> Self {
        Self {
            group: group.into(),
            topic: topic.into(),
            ..Self::default()
        }
    }

    /// The state of a consumer of `group` reading `T`'s topic, before it
    /// joins (see [`crate::BatchConsumer::with_state`]): a service's
    /// configuration holds it, like its readiness, so whoever started the
    /// service can watch partitions move.
    pub fn of<T: crate::KafkaRecord>(config: &crate::KafkaConfig, group: &str) -> Arc<Self> {
        Arc::new(Self::new(group, &T::topic(config)))
    }

    fn lock(&self) -> MutexGuard<'_, BTreeSet<i32>> {
        // The set stays consistent even if a holder panicked: every update
        // is a single insert/remove.
        self.assigned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The partitions currently assigned to this consumer.
    pub fn assigned(&self) -> BTreeSet<i32> {
        self.lock().clone()
    }

    /// Whether `partition` is currently assigned to this consumer.
    pub fn owns(&self, partition: i32) -> bool {
        self.lock().contains(&partition)
    }

    /// How many assignments this consumer has received.
    pub fn rebalances(&self) -> u64 {
        self.rebalances.load(Ordering::Relaxed)
    }

    /// How many revocations this consumer has seen.
    pub fn revocations(&self) -> u64 {
        self.revocations.load(Ordering::Relaxed)
    }

    /// How many undecodable records this consumer skipped.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// How many partition commits were dropped (partition not owned).
    pub fn dropped_commits(&self) -> u64 {
        self.dropped_commits.load(Ordering::Relaxed)
    }

    pub(crate) fn count_skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_dropped_commits(&self, n: usize) {
        self.dropped_commits.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The partitions of this consumer's topic in `tpl`.
    fn partitions(&self, tpl: &TopicPartitionList) -> BTreeSet<i32> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }

    pub(crate) fn on_assign(&self, partitions: BTreeSet<i32>) {
        let now = {
            let mut set = self.lock();
            set.extend(partitions.iter().copied());
            set.clone()
        };
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(KAFKA_REBALANCES, "group" => self.group.clone()).increment(1);
        tracing::info!(group = %self.group, topic = %self.topic, added = ?partitions, assigned = ?now, "partitions assigned");
    }

    pub(crate) fn on_revoke(&self, partitions: BTreeSet<i32>) {
        let now = {
            let mut set = self.lock();
            for p in &partitions {
                set.remove(p);
            }
            set.clone()
        };
        self.revocations.fetch_add(1, Ordering::Relaxed);
        tracing::info!(group = %self.group, topic = %self.topic, revoked = ?partitions, assigned = ?now, "partitions revoked; uncommitted work on them goes to their next owner");
    }
}

/// The consumer's context: logging, and partition ownership in a shared
/// [`GroupState`].
pub(crate) struct GroupContext {
    pub(crate) state: Arc<GroupState>,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_line("consumer", level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", client = "consumer", group = %self.state.group, error = %error, "{reason}");
    }
}

impl ConsumerContext for GroupContext {
    /// Revocations are applied before librdkafka gives the partitions up, so
    /// a commit racing with the rebalance sees them gone and is dropped.
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => self.state.on_revoke(self.state.partitions(tpl)),
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                tracing::error!(group = %self.state.group, error = %e, "rebalance failed")
            }
        }
    }

    /// Assignments are recorded once librdkafka has taken them.
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.state.on_assign(self.state.partitions(tpl));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_follows_assign_and_revoke() {
        let s = GroupState::new("g", "t");
        s.on_assign([0, 1, 2].into());
        assert_eq!(s.assigned(), [0, 1, 2].into());
        s.on_revoke([1].into());
        assert!(s.owns(0) && !s.owns(1) && s.owns(2));
        s.on_revoke([0, 2].into());
        assert!(s.assigned().is_empty());
        s.on_assign([3].into());
        assert_eq!(s.assigned(), [3].into());
        assert_eq!((s.rebalances(), s.revocations()), (2, 2));
    }

    #[test]
    fn only_partitions_of_the_consumers_topic_count() {
        let s = GroupState::new("g", "t");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("t", 0);
        tpl.add_partition("other", 1);
        tpl.add_partition("t", 3);
        assert_eq!(s.partitions(&tpl), [0, 3].into());
    }
}
