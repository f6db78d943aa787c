//! The idempotent producer behind `Publisher<IngressRecord>` and
//! `Publisher<OutcomeRecord>`.

use crate::context::LogContext;
use crate::record::{KafkaRecord, IDEMPOTENCY_KEY_HEADER, TRACEPARENT_HEADER};
use crate::{Error, KafkaConfig};
use async_trait::async_trait;
use confab_core::error::ChatError;
use confab_core::metrics::{KAFKA_PRODUCE, KAFKA_PRODUCE_ERRORS};
use confab_core::seams::Publisher;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

/// Counter: producers replaced because librdkafka declared the previous one
/// dead (a fatal error of the idempotent producer).
pub const PRODUCER_RECREATED: &str = "confab_kafka_producer_recreated_total";

/// Extra time, past the producer's own `message.timeout.ms`, before a
/// publish gives up waiting for librdkafka's verdict (which scans for
/// expired records about once a second).
const VERDICT_GRACE: Duration = Duration::from_secs(2);

/// Where a published record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Its partition.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
}

/// Publishes records of type `T` to their topic (see [`KafkaRecord::topic`])
/// with an idempotent producer (`enable.idempotence=true`, `acks=all`).
/// Clones share one producer; publishers of different record types can share
/// one too ([`KafkaPublisher::sharing`]).
///
/// **Fatal errors**: an idempotent producer can hit an error librdkafka
/// declares fatal (e.g. the broker lost its sequence state for the producer
/// id after a `kill -9`: OutOfOrderSequenceNumber, UnknownProducerId), after
/// which every produce on it fails for good. The publish that notices it
/// still fails (UNAVAILABLE: a retry is safe), but first the dead producer is
/// replaced, once, by a new one made from the same settings, for every
/// publisher sharing it; the caller's retry goes out on the new one. Each
/// replacement is logged at error level and counted in
/// [`PRODUCER_RECREATED`].
pub struct KafkaPublisher<T> {
    /// The producer, shared by clones and [`KafkaPublisher::sharing`].
    producer: Arc<SharedProducer>,
    /// Where records go.
    topic: String,
    /// The bound on one publish.
    produce_timeout: Duration,
    /// Records of type `T` only.
    _record: PhantomData<fn(T)>,
}

/// The current producer of a family of publishers, and what it takes to
/// make a new one.
struct SharedProducer {
    /// The producer's settings.
    config: ClientConfig,
    /// The producer in use. The lock is only held to read or swap the
    /// `Arc`, never across an await.
    current: RwLock<Arc<FutureProducer<LogContext>>>,
    /// How many times `current` was replaced.
    recreated: AtomicU64,
}

impl SharedProducer {
    fn new(config: ClientConfig) -> Result<Self, Error> {
        let producer = Self::create(&config)?;
        Ok(Self {
            config,
            current: RwLock::new(Arc::new(producer)),
            recreated: AtomicU64::new(0),
        })
    }

    fn create(config: &ClientConfig) -> Result<FutureProducer<LogContext>, Error> {
        Ok(config.create_with_context(LogContext("producer"))?)
    }

    /// The producer in use now.
    fn current(&self) -> Arc<FutureProducer<LogContext>> {
        // A swap cannot leave the `Arc` half-written: a poisoned lock still
        // holds a usable producer.
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Called after a publish on `used` failed: if `used` has a fatal error
    /// and is still the current producer, replaces it with a new one. The
    /// identity check makes concurrent failures on the same dead producer
    /// replace it once; a failure on a producer that is fine (broker down,
    /// timeout) changes nothing.
    ///
    /// A producer whose records the broker keeps refusing for reasons of
    /// idempotence state (`failed_with` is one of [`out_of_step`]) is
    /// replaced too: librdkafka does not always treat those as fatal (nisshi
    /// answers UNKNOWN after a restart that lost the producer's sequence),
    /// and retrying on the same producer id fails forever.
    fn recover(
        &self,
        used: Arc<FutureProducer<LogContext>>,
        failed_with: Option<RDKafkaErrorCode>,
    ) {
        let (code, reason) = match (used.client().fatal_error(), failed_with) {
            (Some(fatal), _) => fatal,
            (None, Some(code)) if out_of_step(code) => (
                code,
                "the broker refused the producer's records: its idempotence state is out of step with the broker's".to_string(),
            ),
            _ => return,
        };
        let replaced = {
            let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
            if !Arc::ptr_eq(&current, &used) {
                None // Someone else already replaced it.
            } else {
                // Creating a producer does not contact the broker: quick
                // enough to do under the lock, and it keeps other
                // publishers from picking up the dead one meanwhile.
                match Self::create(&self.config) {
                    Ok(fresh) => Some(std::mem::replace(&mut *current, Arc::new(fresh))),
                    Err(e) => {
                        tracing::error!(code = ?code, reason = %reason, error = %e, "the Kafka producer has a fatal error and a new one cannot be created; the next failed publish tries again");
                        None
                    }
                }
            }
        };
        if let Some(dead) = replaced {
            let n = self.recreated.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(code = ?code, reason = %reason, recreated = n, "the Kafka producer cannot go on (a fatal error, or its idempotence state is out of step with the broker's) and was replaced by a new one; failed publishes are retried on it");
            metrics::describe_counter!(
                PRODUCER_RECREATED,
                "Kafka producers replaced after a fatal error of the idempotent producer"
            );
            metrics::counter!(PRODUCER_RECREATED).increment(1);
            retire(dead);
        }
        retire(used);
    }
}

/// Produce errors after which the producer's id and sequence numbers are of
/// no use any more (a fresh producer gets a new id).
fn out_of_step(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Unknown
            | RDKafkaErrorCode::OutOfOrderSequenceNumber
            | RDKafkaErrorCode::UnknownProducerId
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::InvalidProducerIdMapping
            | RDKafkaErrorCode::ProducerFenced
    )
}

/// Drops a handle of a dead producer on a blocking thread when there is a
/// runtime to run it on: dropping a producer's last handle purges it, waits
/// up to 500 ms for its callbacks and joins its thread.
fn retire(producer: Arc<FutureProducer<LogContext>>) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn_blocking(move || drop(producer))),
        Err(_) => drop(producer),
    }
}

impl<T> Clone for KafkaPublisher<T> {
    fn clone(&self) -> Self {
        Self {
            producer: self.producer.clone(),
            topic: self.topic.clone(),
            produce_timeout: self.produce_timeout,
            _record: PhantomData,
        }
    }
}

impl<T: KafkaRecord> KafkaPublisher<T> {
    /// A publisher to `T`'s topic. Creating it does not contact the broker.
    pub fn new(config: &KafkaConfig) -> Result<Self, Error> {
        Self::with_topic(config, T::topic(config))
    }

    /// A publisher to another topic (tests, tools).
    pub fn with_topic(config: &KafkaConfig, topic: impl Into<String>) -> Result<Self, Error> {
        Ok(Self {
            producer: Arc::new(SharedProducer::new(config.producer_config())?),
            topic: topic.into(),
            produce_timeout: config.produce_timeout,
            _record: PhantomData,
        })
    }

    /// A publisher of `T` to `T`'s topic that shares `other`'s producer
    /// (one connection pool and one idempotence sequence for both topics).
    pub fn sharing<U>(other: &KafkaPublisher<U>, config: &KafkaConfig) -> Self {
        Self {
            producer: other.producer.clone(),
            topic: T::topic(config),
            produce_timeout: other.produce_timeout,
            _record: PhantomData,
        }
    }

    /// The topic records go to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publishes `record` under `key` (the conversation id) with the
    /// idempotency-key header and `extra_headers` (e.g.
    /// [`crate::TRACEPARENT_HEADER`]); returns once the broker has
    /// acknowledged it, or fails with UNAVAILABLE after at most the
    /// configured produce timeout (plus a moment for librdkafka's verdict).
    pub async fn publish_with(
        &self,
        key: &str,
        record: &T,
        extra_headers: &[(&str, &str)],
    ) -> Result<Delivered, ChatError> {
        let payload = record.encode_to_vec();
        let idempotency_key = record.idempotency_key();
        let mut headers = OwnedHeaders::new_with_capacity(1 + extra_headers.len());
        if let Some(k) = &idempotency_key {
            headers = headers.insert(Header {
                key: IDEMPOTENCY_KEY_HEADER,
                value: Some(k.as_bytes()),
            });
        }
        if let Some(tp) = record.traceparent() {
            if !extra_headers
                .iter()
                .any(|(name, _)| *name == TRACEPARENT_HEADER)
            {
                headers = headers.insert(Header {
                    key: TRACEPARENT_HEADER,
                    value: Some(tp.as_bytes()),
                });
            }
        }
        for (name, value) in extra_headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let rec = FutureRecord::to(&self.topic)
            .key(key)
            .payload(payload.as_slice())
            .headers(headers);
        let producer = self.producer.current();
        let started = std::time::Instant::now();
        // The queue timeout only matters when librdkafka's local queue is
        // full; the record's own timeout (message.timeout.ms) bounds the rest.
        let send = producer.send(rec, self.produce_timeout);
        let outcome = tokio::time::timeout(self.produce_timeout + VERDICT_GRACE, send).await;
        let mut failed_with = None;
        let err = match outcome {
            Ok(Ok(delivery)) => {
                metrics::histogram!(KAFKA_PRODUCE, "topic_kind" => T::TOPIC_KIND)
                    .record(started.elapsed().as_secs_f64());
                return Ok(Delivered {
                    partition: delivery.partition,
                    offset: delivery.offset,
                });
            }
            Ok(Err((err, _message))) => {
                tracing::warn!(topic = %self.topic, key, idempotency_key = ?idempotency_key, error = %err, "publish failed");
                failed_with = err.rdkafka_error_code();
                publish_error(&err, self.produce_timeout)
            }
            Err(_elapsed) => {
                tracing::warn!(topic = %self.topic, key, idempotency_key = ?idempotency_key, "publish got no verdict in time");
                unavailable(self.produce_timeout)
            }
        };
        metrics::counter!(KAFKA_PRODUCE_ERRORS, "topic_kind" => T::TOPIC_KIND).increment(1);
        // A dead producer is replaced now; this publish still fails, and
        // the caller's retry goes out on the new one.
        self.producer.recover(producer, failed_with);
        Err(err)
    }

    /// Whether the broker answers: a metadata request for this publisher's
    /// topic on its producer's connections, bounded by `timeout` (for
    /// readiness checks; nothing is produced).
    pub async fn probe(&self, timeout: Duration) -> Result<(), Error> {
        let producer = self.producer.current();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map(|_| ())
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
        .map_err(Error::from)
    }

    /// Waits up to `timeout` for every record in flight to be acknowledged
    /// (call before dropping the publisher at shutdown).
    pub async fn flush(&self, timeout: Duration) -> Result<(), Error> {
        let producer = self.producer.current();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
            .map_err(Error::from)
    }

    /// Records queued or in flight, not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        self.producer.current().in_flight_count()
    }

    /// How many times the producer this publisher shares was replaced after
    /// a fatal error (for tests).
    #[cfg(any(test, feature = "testing"))]
    pub fn producer_recreations(&self) -> u64 {
        self.producer.recreated.load(Ordering::Relaxed)
    }

    /// Tests only: makes the current producer fail fatally, as librdkafka
    /// does when the broker loses the idempotent producer's state
    /// (OutOfOrderSequenceNumber), so that every produce on it fails.
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    #[allow(unsafe_code)] // The only way to reach librdkafka's test hook.
    pub fn inject_fatal_error_for_tests(&self) {
        let producer = self.producer.current();
        let reason = c"injected by inject_fatal_error_for_tests";
        // SAFETY: `native_ptr` is the live `rd_kafka_t` of `producer`, which
        // this function holds (so it is not destroyed meanwhile);
        // `rd_kafka_test_fatal_error` is thread-safe (it takes the client's
        // own locks), and `reason` is a NUL-terminated string it only reads
        // during the call.
        let code = unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                producer.client().native_ptr(),
                rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            )
        };
        tracing::warn!(?code, "injected a fatal error into the Kafka producer");
    }
}

/// The message every failed publish carries: the outcome is unknown, and a
/// retry is deduplicated.
fn unavailable(timeout: Duration) -> ChatError {
    ChatError::Unavailable(format!(
        "the message broker is unreachable (no acknowledgement within {} ms); \
         the request may have been accepted: retrying with the same client_msg_id is safe",
        timeout.as_millis()
    ))
}

/// Maps a producer error to what the caller sees.
fn publish_error(err: &KafkaError, timeout: Duration) -> ChatError {
    match err.rdkafka_error_code() {
        // Not retryable as-is: a bug (sizes are validated before this).
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => {
            ChatError::Internal("the record is too large for the message broker".into())
        }
        _ => unavailable(timeout),
    }
}

#[async_trait]
impl<T: KafkaRecord> Publisher<T> for KafkaPublisher<T> {
    async fn publish(&self, key: &str, record: T) -> Result<(), ChatError> {
        self.publish_with(key, &record, &[]).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_say_retrying_with_the_same_key_is_safe() {
        let err = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        let e = publish_error(&err, Duration::from_millis(1500));
        let ChatError::Unavailable(msg) = e else {
            panic!("expected UNAVAILABLE, got {e:?}");
        };
        assert!(msg.contains("unreachable"), "{msg}");
        assert!(msg.contains("1500 ms"), "{msg}");
        assert!(msg.contains("same client_msg_id is safe"), "{msg}");
        let too_big = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(matches!(
            publish_error(&too_big, Duration::from_secs(1)),
            ChatError::Internal(_)
        ));
    }

    /// A publisher to a port nobody listens on (creating it contacts
    /// nothing; a publish there would wait out its timeout).
    fn nowhere() -> (
        KafkaConfig,
        KafkaPublisher<confab_proto::internal::v1::IngressRecord>,
    ) {
        let config = KafkaConfig {
            produce_timeout: Duration::from_millis(300),
            ..KafkaConfig::new("127.0.0.1:1")
        };
        let publisher = KafkaPublisher::new(&config).expect("publisher");
        (config, publisher)
    }

    #[tokio::test]
    async fn a_producer_the_broker_keeps_refusing_for_its_sequence_state_is_replaced() {
        let (_config, publisher) = nowhere();
        let first = publisher.producer.current();
        // A broker that is merely down or slow: keep the producer.
        publisher
            .producer
            .recover(first.clone(), Some(RDKafkaErrorCode::MessageTimedOut));
        publisher.producer.recover(first.clone(), None);
        assert!(Arc::ptr_eq(&first, &publisher.producer.current()));
        // Refused for its idempotence state: a new producer (a new id).
        publisher
            .producer
            .recover(first.clone(), Some(RDKafkaErrorCode::Unknown));
        let second = publisher.producer.current();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(publisher.producer_recreations(), 1);
        // A late failure on the replaced one changes nothing.
        publisher
            .producer
            .recover(first, Some(RDKafkaErrorCode::OutOfOrderSequenceNumber));
        assert!(Arc::ptr_eq(&second, &publisher.producer.current()));
        assert_eq!(publisher.producer_recreations(), 1);
    }

    #[tokio::test]
    async fn a_fatal_error_replaces_the_producer_once_for_every_sharer() {
        use confab_proto::internal::v1::{IngressRecord, OutcomeRecord};
        let (config, publisher) = nowhere();
        let clone = publisher.clone();
        let outcomes = KafkaPublisher::<OutcomeRecord>::sharing(&publisher, &config);
        let before = publisher.producer.current();
        assert!(before.client().fatal_error().is_none());

        publisher.inject_fatal_error_for_tests();
        let (code, reason) = before.client().fatal_error().expect("fatal now");
        assert_eq!(code, RDKafkaErrorCode::OutOfOrderSequenceNumber);
        assert!(reason.contains("inject_fatal_error_for_tests"), "{reason}");
        // The publish that meets the dead producer fails at once, as
        // UNAVAILABLE, and replaces it for everyone.
        let err = publisher
            .publish_with("k", &IngressRecord::default(), &[])
            .await
            .expect_err("a dead producer cannot produce");
        assert!(matches!(err, ChatError::Unavailable(_)), "{err:?}");
        let after = publisher.producer.current();
        assert!(!Arc::ptr_eq(&before, &after), "a new producer");
        assert!(after.client().fatal_error().is_none());
        assert!(Arc::ptr_eq(&after, &clone.producer.current()));
        assert!(Arc::ptr_eq(&after, &outcomes.producer.current()));
        assert_eq!(outcomes.producer_recreations(), 1);

        // Late failures on the dead producer (publishes that started before
        // the swap) change nothing; neither do failures on a healthy one.
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| publisher.producer.recover(before.clone(), None));
            }
        });
        publisher.producer.recover(after.clone(), None);
        assert!(Arc::ptr_eq(&after, &publisher.producer.current()));
        assert_eq!(publisher.producer_recreations(), 1);
        // The new producer is a working one: no broker here, so a publish
        // fails on its timeout, not at once.
        let err = outcomes
            .publish_with("k", &OutcomeRecord::default(), &[])
            .await
            .expect_err("no broker");
        assert!(matches!(err, ChatError::Unavailable(_)), "{err:?}");
        assert_eq!(publisher.producer_recreations(), 1);
    }
}
