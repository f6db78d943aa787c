//! The sequencer loop: one task per ingress partition takes what is queued,
//! applies it as one transaction and emits the outcomes, in order, keyed by
//! conversation so every conversation's events stay in seq order downstream.

use crate::store::Store;
use confab_common::pipeline::{recv_batch, Publisher};
use confab_proto::internal::v1::{IngressRecord, OutcomeRecord};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Largest batch applied in one transaction.
pub const MAX_BATCH: usize = 256;

/// Starts one sequencer per partition. Each ends once its queue is closed
/// and drained, so dropping the producers drains the pipeline.
pub fn spawn(
    store: Arc<dyn Store>,
    partitions: Vec<mpsc::Receiver<IngressRecord>>,
    outcomes: Arc<dyn Publisher<OutcomeRecord>>,
) -> Vec<JoinHandle<()>> {
    partitions
        .into_iter()
        .enumerate()
        .map(|(partition, rx)| {
            tokio::spawn(run_partition(
                partition,
                store.clone(),
                rx,
                outcomes.clone(),
            ))
        })
        .collect()
}

async fn run_partition(
    partition: usize,
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<IngressRecord>,
    outcomes: Arc<dyn Publisher<OutcomeRecord>>,
) {
    while let Some(batch) = recv_batch(&mut rx, MAX_BATCH).await {
        let results = apply_with_retry(partition, store.as_ref(), &batch).await;
        for outcome in results {
            let key = outcome.conversation_id.clone();
            if outcomes.publish(&key, outcome).await.is_err() {
                tracing::warn!(partition, "outcome log closed; stopping sequencer");
                return;
            }
        }
    }
    tracing::debug!(partition, "sequencer drained");
}

/// The records stay queued in memory while the database is unreachable; the
/// clients waiting on them time out with UNAVAILABLE ("may have been
/// accepted") and their retries are deduplicated once it is back.
pub async fn apply_with_retry(
    partition: usize,
    store: &dyn Store,
    batch: &[IngressRecord],
) -> Vec<OutcomeRecord> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match store.apply(batch).await {
            Ok(out) => {
                tracing::trace!(partition, records = batch.len(), "batch sequenced");
                return out;
            }
            Err(e) => {
                tracing::error!(partition, error = %e, records = batch.len(), "batch failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}
