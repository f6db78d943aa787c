//! [`ConsumerMonitor`]: from another task, whether the broker answers and
//! the lag of every partition the consumer owns (the committed offsets
//! against librdkafka's cached watermarks), published as a gauge.

use crate::context::{GroupContext, GroupState};
use crate::Error;
use confab_core::metrics::KAFKA_CONSUMER_LAG;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Watches a [`BatchConsumer`](super::BatchConsumer) from another task: whether
/// the broker answers, and the lag of every partition the consumer owns,
/// published as [`KAFKA_CONSUMER_LAG`]. Made by
/// [`BatchConsumer::monitor`](super::BatchConsumer::monitor); clones share what
/// they reported.
#[derive(Clone)]
pub struct ConsumerMonitor {
    /// The consumer, while it exists.
    pub(super) consumer: Weak<StreamConsumer<GroupContext>>,
    /// Which partitions it owns.
    pub(super) state: Arc<GroupState>,
    /// Partitions whose lag gauge this monitor has set.
    pub(super) reported: Arc<Mutex<BTreeSet<i32>>>,
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
