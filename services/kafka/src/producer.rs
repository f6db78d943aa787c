//! The idempotent producer behind `Publisher<IngressRecord>` and
//! `Publisher<OutcomeRecord>`.

use crate::context::LogContext;
use crate::record::{KafkaRecord, IDEMPOTENCY_KEY_HEADER, TRACEPARENT_HEADER};
use crate::{Error, KafkaConfig};
use async_trait::async_trait;
use confab_common::error::ChatError;
use confab_common::pipeline::Publisher;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use std::marker::PhantomData;
use std::time::Duration;

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
pub struct KafkaPublisher<T> {
    /// The librdkafka producer (cheap to clone: reference-counted).
    producer: FutureProducer<LogContext>,
    /// Where records go.
    topic: String,
    /// The bound on one publish.
    produce_timeout: Duration,
    /// Records of type `T` only.
    _record: PhantomData<fn(T)>,
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
        let producer: FutureProducer<LogContext> = config
            .producer_config()
            .create_with_context(LogContext("producer"))?;
        Ok(Self {
            producer,
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
        // The queue timeout only matters when librdkafka's local queue is
        // full; the record's own timeout (message.timeout.ms) bounds the rest.
        let send = self.producer.send(rec, self.produce_timeout);
        let outcome = tokio::time::timeout(self.produce_timeout + VERDICT_GRACE, send).await;
        match outcome {
            Ok(Ok(delivery)) => Ok(Delivered {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Err((err, _message))) => {
                tracing::warn!(topic = %self.topic, key, idempotency_key = ?idempotency_key, error = %err, "publish failed");
                Err(publish_error(&err, self.produce_timeout))
            }
            Err(_elapsed) => {
                tracing::warn!(topic = %self.topic, key, idempotency_key = ?idempotency_key, "publish got no verdict in time");
                Err(unavailable(self.produce_timeout))
            }
        }
    }

    /// Waits up to `timeout` for every record in flight to be acknowledged
    /// (call before dropping the publisher at shutdown).
    pub async fn flush(&self, timeout: Duration) -> Result<(), Error> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
            .map_err(Error::from)
    }

    /// Records queued or in flight, not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
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
}
