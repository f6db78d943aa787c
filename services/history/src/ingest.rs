//! The sequencer loop: one task per ingress partition takes what is queued,
//! applies it as one transaction and emits the outcomes, in order, keyed by
//! conversation so every conversation's events stay in seq order downstream.

use crate::store::decide::refused;
use crate::store::{Store, StoreError};
use confab_core::error::ChatError;
use confab_core::log_budget::LogBudget;
use confab_core::metrics::{
    reject_reason, DB_BATCH_RECORDS, DB_TRANSACTION, MESSAGES_REJECTED, MESSAGES_SEQUENCED,
    STORE_FULL,
};
use confab_core::seams::{recv_batch, Publisher};
use confab_proto::internal::v1::{outcome_record, IngressRecord, OutcomeRecord};
use confab_runtime::trace::{self, TraceParent, HOP};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument, Span};

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
        let traces = trace_records(&batch);
        let results = apply_with_retry(partition, store.as_ref(), &batch).await;
        for traced in trace_outcomes(traces, results) {
            let key = traced.outcome.conversation_id.clone();
            if outcomes
                .publish(&key, traced.outcome)
                .instrument(traced.span.clone())
                .await
                .is_err()
            {
                tracing::warn!(partition, "outcome log closed; stopping sequencer");
                return;
            }
            published(&traced.span);
        }
    }
    tracing::debug!(partition, "sequencer drained");
}

/// Logs "published" in an outcome's `history.publish` span, once the log
/// has taken the outcome.
pub fn published(span: &Span) {
    span.in_scope(|| tracing::debug!(target: HOP, "published"));
}

/// A record's `history.sequence` hop span, and the trace context it starts.
pub struct Sequencing {
    /// The hop span (disabled unless [`trace::hops_observed`]).
    span: Span,
    /// The context the span starts, handed on to the outcome.
    context: TraceParent,
}

/// An outcome, and the `history.publish` span to hold while it is
/// published.
pub struct Traced {
    /// The outcome, carrying the publish span's trace context.
    pub outcome: OutcomeRecord,
    /// Its `history.publish` hop span.
    pub span: Span,
}

/// One `history.sequence` hop span per record, continuing the record's
/// trace context (a new trace for a record without one), with that span's
/// context. Made before the batch's transaction, so each covers it. Only
/// debug events are logged in these spans and their `history.publish`
/// children, so they are disabled unless [`trace::hops_observed`]; the
/// contexts are drawn and handed on either way.
pub fn trace_records(records: &[IngressRecord]) -> Vec<Sequencing> {
    records
        .iter()
        .map(|record| {
            let span = trace::observed_span(|| {
                confab_runtime::hop_span!(
                    parent: None,
                    "history.sequence",
                    conversation_id = %record.conversation_id,
                    request_id = record.origin.as_ref().map(|o| o.request_id).unwrap_or_default(),
                )
            });
            let context = trace::start_from(&span, &record.traceparent);
            Sequencing { span, context }
        })
        .collect()
}

/// Logs what history decided for each record in its `history.sequence`
/// span (`traces`, from [`trace_records`], one per record, in the order of
/// the outcomes) and starts the outcome's `history.publish` span, whose
/// context the outcome carries on (its `traceparent` and Kafka header).
pub fn trace_outcomes(traces: Vec<Sequencing>, outcomes: Vec<OutcomeRecord>) -> Vec<Traced> {
    let mut traces = traces.into_iter();
    outcomes
        .into_iter()
        .map(|mut outcome| {
            let (sequence, parent) = match traces.next() {
                Some(Sequencing { span, context }) => (span, Some(context)),
                None => (Span::none(), TraceParent::parse(&outcome.traceparent)),
            };
            sequence.in_scope(|| {
                let seq = outcome.events.first().map(|m| m.seq).unwrap_or_default();
                let events = outcome.events.len();
                match &outcome.result {
                    Some(outcome_record::Result::Error(e)) => {
                        let code = tonic::Code::from_i32(e.code);
                        tracing::debug!(target: HOP, ?code, reason = %e.message, "refused");
                    }
                    _ if outcome.replay => {
                        tracing::debug!(target: HOP, seq, "already stored; replayed")
                    }
                    _ => tracing::debug!(target: HOP, seq, events, "sequenced"),
                }
            });
            let publish = trace::observed_span(|| {
                confab_runtime::hop_span!(
                    parent: &sequence,
                    "history.publish",
                )
            });
            outcome.traceparent = trace::start(&publish, parent).to_string();
            Traced {
                outcome,
                span: publish,
            }
        })
        .collect()
}

/// The records stay queued in memory while the database is unreachable; the
/// clients waiting on them time out with UNAVAILABLE ("may have been
/// accepted") and their retries are deduplicated once it is back.
///
/// A database whose disk is full refuses the batch instead (see
/// [`out_of_space`]): nothing of it was written, so each record is refused
/// with RESOURCE_EXHAUSTED and the lane goes on to the next batch, which
/// is written as soon as there is space again. Waiting would only hold
/// every client of the lane to its deadline without saying why.
pub async fn apply_with_retry(
    partition: usize,
    store: &dyn Store,
    batch: &[IngressRecord],
) -> Vec<OutcomeRecord> {
    // At most 2 s between attempts (1 s doubled by jitter).
    let mut delays =
        confab_runtime::retry::backoff(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        let started = std::time::Instant::now();
        let applied = store
            .apply(u32::try_from(partition).unwrap_or(u32::MAX), batch)
            .await;
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
            Err(e) if e.out_of_space() => return out_of_space(partition, &e, batch),
            Err(e) => {
                tracing::error!(partition, error = %e, records = batch.len(), "batch failed; retrying");
                tokio::time::sleep(delays.next().unwrap_or_default()).await;
            }
        }
    }
}

/// What to say to a client whose write found the store's disk full.
pub const OUT_OF_SPACE: &str = "history's store is out of disk space, so this write was not \
     stored; retry it with the same client_msg_id once the operator has freed space";

/// Refuses every record of a batch that the store could not write for
/// want of disk space, and logs it (at most one line a second).
fn out_of_space(partition: usize, e: &StoreError, batch: &[IngressRecord]) -> Vec<OutcomeRecord> {
    static BUDGET: LogBudget = LogBudget::new();
    if let Some(left_out) = BUDGET.take() {
        tracing::error!(
            partition,
            error = %e,
            records = batch.len(),
            batches_unlogged = left_out,
            "the store's disk is full: refusing writes until there is space"
        );
    }
    metrics::counter!(MESSAGES_REJECTED, "reason" => STORE_FULL).increment(batch.len() as u64);
    batch
        .iter()
        .map(|rec| refused(rec, ChatError::ResourceExhausted(OUT_OF_SPACE.into())))
        .collect()
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
