//! Confab's distributed-mode log: the rdkafka implementation of
//! [`confab_core::seams::Publisher`] for the two topics
//! (`<prefix>.ingress`, `<prefix>.messages`), the consumer-group consumer the
//! history sequencers and the routers read them with, and topic creation.
//!
//! Guarantees, and where they come from:
//! - **A publish that returned `Ok` is in the log**: the producer is
//!   idempotent with `acks=all`, and `publish` waits for the broker's
//!   acknowledgement. A publish that fails (after at most
//!   [`KafkaConfig::produce_timeout`]) may or may not have been written; the
//!   error says that retrying with the same `client_msg_id` is safe, because
//!   history deduplicates on it.
//! - **No record is lost by a consumer**: offsets are never committed
//!   automatically. [`BatchConsumer::commit`] commits only what the caller
//!   hands back after its work is durable, and only for partitions this
//!   consumer still owns. Anything else is re-delivered to the partition's
//!   next owner: at-least-once on the topics, deduplicated downstream.
//! - **Per-conversation order**: records are keyed by conversation id, so a
//!   conversation lives on one partition, which one consumer of a group owns
//!   at a time and reads in offset order.

mod admin;
mod config;
mod consumer;
mod context;
pub mod health;
mod producer;
mod record;

pub use admin::{check_broker, ensure_topics, TopicPartitions};
pub use config::KafkaConfig;
pub use consumer::{
    Batch, BatchConsumer, CommitReport, Committer, Consumed, ConsumerMonitor, Offsets,
};
pub use context::GroupState;
pub use producer::{Delivered, KafkaPublisher, PRODUCER_RECREATED};
pub use record::{KafkaRecord, IDEMPOTENCY_KEY_HEADER, TRACEPARENT_HEADER};

/// What can go wrong talking to the broker outside the `Publisher` trait
/// (which speaks [`confab_core::error::ChatError`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// librdkafka reported an error.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Creating a topic failed for another reason than "already exists".
    #[error("cannot create topic {topic}: {code}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// What the broker answered.
        code: rdkafka::types::RDKafkaErrorCode,
    },
    /// A blocking client call could not run (the runtime is shutting down).
    #[error("kafka client task failed: {0}")]
    Task(String),
}
