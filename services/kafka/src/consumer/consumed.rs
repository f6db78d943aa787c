//! [`Consumed`]: one record read from the log, decoded, with its topic,
//! partition, offset, key, headers and timestamp; and the decoding of a
//! librdkafka message into one (a record that does not decode is skipped).

use crate::record::{KafkaRecord, IDEMPOTENCY_KEY_HEADER, TRACEPARENT_HEADER};
use rdkafka::message::{BorrowedMessage, Headers, Message};

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

/// Decodes one message into a [`Consumed`], or `None` (logged) when it
/// cannot be decoded.
pub(super) fn decode<T: KafkaRecord>(
    msg: &BorrowedMessage<'_>,
    group: &str,
) -> Option<Consumed<T>> {
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
