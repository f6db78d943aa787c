//! Topic creation and a broker health check.

use crate::context::LogContext;
use crate::{Error, KafkaConfig};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The partition counts of Confab's two topics, as the broker listed them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicPartitions {
    /// `<prefix>.ingress`.
    pub ingress: usize,
    /// `<prefix>.messages`.
    pub messages: usize,
}

impl TopicPartitions {
    /// Whether every conversation has the same partition number on both
    /// topics (both are keyed by conversation id with one partitioner), so
    /// that the outcomes of one ingress partition all belong on the
    /// messages partition of the same number.
    pub fn aligned(&self) -> bool {
        self.ingress == self.messages
    }
}

/// Creates `<prefix>.ingress` and `<prefix>.messages` with the configured
/// partitions and replication; a topic that already exists is fine (its
/// partition count is kept, with a warning if it differs). Returns once the
/// broker's metadata lists both topics, so producers and consumers started
/// next find them, with their partition counts.
pub async fn ensure_topics(config: &KafkaConfig) -> Result<TopicPartitions, Error> {
    let topics = [config.ingress_topic(), config.messages_topic()];
    let admin: Arc<AdminClient<LogContext>> = Arc::new(
        config
            .client_config()
            .create_with_context(LogContext("admin"))?,
    );
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                config.partitions,
                TopicReplication::Fixed(config.replication),
            )
        })
        .collect();
    let opts = AdminOptions::new()
        .request_timeout(Some(config.admin_timeout))
        .operation_timeout(Some(config.admin_timeout));
    for result in admin.create_topics(new.iter(), &opts).await? {
        match result {
            Ok(topic) => tracing::info!(
                topic,
                partitions = config.partitions,
                replication = config.replication,
                "topic created"
            ),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic, "topic already exists")
            }
            Err((topic, code)) => return Err(Error::CreateTopic { topic, code }),
        }
    }
    // Wait until the metadata lists them (creation may propagate lazily).
    let deadline = Instant::now() + config.admin_timeout;
    loop {
        let found = partition_counts(&admin, config.admin_timeout).await?;
        let missing: Vec<&String> = topics
            .iter()
            .filter(|t| found.get(*t).copied().unwrap_or(0) == 0)
            .collect();
        if missing.is_empty() {
            for t in &topics {
                let n = found.get(t).copied().unwrap_or(0);
                if n != config.partitions as usize {
                    tracing::warn!(topic = %t, partitions = n, configured = config.partitions, "topic exists with another partition count; keeping it");
                }
            }
            let count = |t: &String| found.get(t).copied().unwrap_or(0);
            return Ok(TopicPartitions {
                ingress: count(&topics[0]),
                messages: count(&topics[1]),
            });
        }
        if Instant::now() >= deadline {
            return Err(Error::Task(format!(
                "topics {missing:?} were created but the broker's metadata does not list them after {:?}",
                config.admin_timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks that the broker answers a metadata request within the admin
/// timeout (for readiness probes).
pub async fn check_broker(config: &KafkaConfig) -> Result<(), Error> {
    let admin: Arc<AdminClient<LogContext>> = Arc::new(
        config
            .client_config()
            .create_with_context(LogContext("admin"))?,
    );
    partition_counts(&admin, config.admin_timeout)
        .await
        .map(|_| ())
}

/// Partitions of every topic the broker lists (a blocking call, off the
/// runtime's worker threads).
async fn partition_counts(
    admin: &Arc<AdminClient<LogContext>>,
    timeout: Duration,
) -> Result<BTreeMap<String, usize>, Error> {
    let admin = admin.clone();
    tokio::task::spawn_blocking(move || -> Result<BTreeMap<String, usize>, Error> {
        let metadata = admin.inner().fetch_metadata(None, timeout)?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| (t.name().to_string(), t.partitions().len()))
            .collect())
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))?
}
