//! Writes go through the log: the gateway produces an ingress record that
//! names itself as origin, then waits for history's outcome to come back.

use crate::hub::Hub;
use confab_core::error::ChatError;
use confab_core::metrics::MESSAGES_ACCEPTED;
use confab_core::seams::Publisher;
use confab_proto::internal::v1::{ingress_record::Command, outcome_record, IngressRecord, Origin};
use confab_runtime::trace::{self, HOP};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Turns a request into an ingress record and waits for its outcome.
#[derive(Clone)]
pub struct Submitter {
    /// Where ingress records go.
    ingress: Arc<dyn Publisher<IngressRecord>>,
    /// Where the outcome comes back.
    hub: Arc<Hub>,
    /// How long a caller waits for the outcome.
    timeout: Duration,
}

impl Submitter {
    /// A submitter that waits at most `timeout` per request.
    pub fn new(
        ingress: Arc<dyn Publisher<IngressRecord>>,
        hub: Arc<Hub>,
        timeout: Duration,
    ) -> Self {
        Self {
            ingress,
            hub,
            timeout,
        }
    }

    /// Produces `command` for `conversation_id` as `actor`; returns history's
    /// result, or UNAVAILABLE if it does not arrive in time.
    ///
    /// Runs in a `gateway.write` hop span (when [`trace::hops_observed`]),
    /// a child of the caller's (`gateway.call`, see [`crate::guard`]); its
    /// context (drawn whether or not the span is made) goes into the
    /// record (and so the Kafka header), and the record is stamped with the
    /// acceptance time that `confab_message_e2e_seconds` counts from.
    pub async fn submit(
        &self,
        actor: &str,
        conversation_id: &str,
        command: Command,
    ) -> Result<outcome_record::Result, ChatError> {
        // Nothing inside logs above DEBUG (errors go back to the caller).
        let span = trace::observed_span(|| {
            confab_runtime::hop_span!(
                "gateway.write",
                conversation_id,
                request_id = tracing::field::Empty,
            )
        });
        let trace = trace::start(&span, trace::current());
        async {
            let mut pending = self.hub.pending();
            span.record("request_id", pending.request_id);
            let record = IngressRecord {
                origin: Some(Origin {
                    gateway_id: self.hub.gateway_id().to_string(),
                    request_id: pending.request_id,
                }),
                actor_id: actor.to_string(),
                conversation_id: conversation_id.to_string(),
                command: Some(command),
                traceparent: trace.to_string(),
                accepted_at_ms: confab_core::time::now_ms(),
            };
            let wait = async {
                self.ingress.publish(conversation_id, record).await?;
                metrics::counter!(MESSAGES_ACCEPTED).increment(1);
                tracing::debug!(target: HOP, "write accepted");
                let outcome = (&mut pending.rx)
                    .await
                    .map_err(|_| ChatError::Unavailable("the server is shutting down; retry".into()))?;
                outcome
                    .result
                    .ok_or_else(|| ChatError::Internal("history returned an empty outcome".into()))
            };
            let result = match tokio::time::timeout(self.timeout, wait).await {
                Ok(Ok(outcome_record::Result::Error(e))) => Err(ChatError::from_proto(&e)),
                Ok(result) => result,
                Err(_) => Err(ChatError::Unavailable(format!(
                    "no outcome within {} ms: the request may have been applied; retrying with the same client_msg_id is safe and returns the original seq",
                    self.timeout.as_millis()
                ))),
            };
            match &result {
                Ok(outcome_record::Result::Message(m)) => {
                    tracing::debug!(target: HOP, seq = m.seq, "completed")
                }
                Ok(_) => tracing::debug!(target: HOP, "completed"),
                Err(e) => tracing::debug!(target: HOP, code = ?e.code(), error = %e, "completed"),
            }
            result
        }
        .instrument(span.clone())
        .await
    }
}
