//! The sequencer loop: one task per ingress partition takes what is queued,
//! applies it as one transaction and emits the outcomes, in order, keyed by
//! conversation so every conversation's events stay in seq order downstream.

use crate::store::Store;
use confab_common::metrics::{
    reject_reason, DB_BATCH_RECORDS, DB_TRANSACTION, MESSAGES_REJECTED, MESSAGES_SEQUENCED,
};
use confab_common::pipeline::{recv_batch, Publisher};
use confab_proto::internal::v1::{outcome_record, IngressRecord, OutcomeRecord};
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
        let started = std::time::Instant::now();
        let applied = store.apply(batch).await;
        metrics::histogram!(
            DB_TRANSACTION,
            "result" => if applied.is_ok() { "ok" } else { "error" }
        )
        .record(started.elapsed().as_secs_f64());
        match applied {
            Ok(out) => {
                tracing::trace!(partition, records = batch.len(), "batch sequenced");
                metrics::histogram!(DB_BATCH_RECORDS).record(batch.len() as f64);
                count_outcomes(&out);
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

/// Counts what history decided: every new message (the events of outcomes
/// that are not replays) in [`MESSAGES_SEQUENCED`], every refusal in
/// [`MESSAGES_REJECTED`] by its reason.
fn count_outcomes(outcomes: &[OutcomeRecord]) {
    let mut sequenced = 0u64;
    for outcome in outcomes {
        match &outcome.result {
            Some(outcome_record::Result::Error(e)) => {
                let reason = reject_reason(tonic::Code::from_i32(e.code));
                metrics::counter!(MESSAGES_REJECTED, "reason" => reason).increment(1);
            }
            _ if !outcome.replay => sequenced += outcome.events.len() as u64,
            _ => {}
        }
    }
    if sequenced > 0 {
        metrics::counter!(MESSAGES_SEQUENCED).increment(sequenced);
    }
}
