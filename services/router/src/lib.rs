//! The router: reads sequenced outcomes, works out who must see each event
//! and hands it to the gateway side; completes each request on its origin.
//! It keeps no durable state: membership is a cache that the ordered event
//! stream itself keeps current, filled from history on a miss.

pub mod distributed;
pub mod gateway_links;

use confab_core::error::ChatError;
use confab_core::metrics::{RECEIPTS, ROUTER_FANOUT};
use confab_core::seams::{recv_batch, Delivery, DeliverySink, HistoryApi};
use confab_proto::internal::v1::{outcome_record, OutcomeRecord};
use confab_proto::v1::{membership_event::Change, Message};
use confab_runtime::trace::{self, HOP};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument, Span};

/// How long a router keeps asking history for a conversation's members.
const MEMBERS_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Most conversations whose members one router task caches.
const MEMBER_CACHE_CAPACITY: usize = 100_000;

/// Starts one routing task per partition of the outcome log. Each ends once
/// its queue is closed and drained.
pub fn spawn(
    partitions: Vec<mpsc::Receiver<OutcomeRecord>>,
    history: Arc<dyn HistoryApi>,
    sink: Arc<dyn DeliverySink>,
) -> Vec<JoinHandle<()>> {
    partitions
        .into_iter()
        .enumerate()
        .map(|(partition, mut rx)| {
            let mut router = Router::new(history.clone(), sink.clone());
            tokio::spawn(async move {
                while let Some(batch) = recv_batch(&mut rx, 256).await {
                    for outcome in batch {
                        router.route(outcome).await;
                    }
                }
                tracing::debug!(partition, "router drained");
            })
        })
        .collect()
}

/// Routes the outcomes of one partition. Conversations map to exactly one
/// partition, so its cache sees every membership change of its conversations
/// in seq order.
pub struct Router {
    /// Recently seen conversations.
    convs: HashMap<String, Conv>,
    /// Where members are looked up on a cache miss.
    history: Arc<dyn HistoryApi>,
    /// Where deliveries and completions go.
    sink: Arc<dyn DeliverySink>,
}

/// What a router knows of one conversation.
struct Conv {
    /// Its members, as of the last event routed.
    members: BTreeSet<String>,
    /// The highest seq routed; anything at or below it is a duplicate.
    last_routed: u64,
}

impl Router {
    /// A router with an empty cache.
    pub fn new(history: Arc<dyn HistoryApi>, sink: Arc<dyn DeliverySink>) -> Self {
        Self {
            convs: HashMap::new(),
            history,
            sink,
        }
    }

    /// Routes a record of the messages log: each of the outcomes it carries
    /// together (`batched`: a history lane's, in order), or the one it is.
    pub async fn route_record(&mut self, mut record: OutcomeRecord) {
        if record.batched.is_empty() {
            return self.route(record).await;
        }
        for outcome in std::mem::take(&mut record.batched) {
            self.route(outcome).await;
        }
    }

    /// Delivers the outcome's events, then completes its request.
    ///
    /// Events the log carries twice (at-least-once) and replays of messages
    /// already routed are dropped by seq. A replay for a conversation this
    /// router has not seen is dropped too: its sessions may be far ahead, and
    /// sessions that missed it fill the gap from history on the next message
    /// or on resume.
    ///
    /// Runs in a `router.route` hop span continuing the outcome's trace
    /// context; the deliveries carry the span's context on to the gateways.
    /// With every conversation's members cached, nothing inside logs above
    /// DEBUG, and the span is made only when [`trace::hops_observed`]; the
    /// context is drawn and carried on either way.
    pub async fn route(&mut self, outcome: OutcomeRecord) {
        // Only a membership lookup (a conversation not cached) logs above
        // DEBUG in here, and calls history in this trace.
        let span = if trace::hops_observed()
            || outcome
                .events
                .iter()
                .any(|e| !self.convs.contains_key(&e.conversation_id))
        {
            confab_runtime::hop_span!(
                "router.route",
                conversation_id = %outcome.conversation_id,
            )
        } else {
            Span::none()
        };
        let trace = trace::start_from(&span, &outcome.traceparent);
        let mut outcome = outcome;
        async {
            outcome.traceparent = trace.to_string();
            let events = std::mem::take(&mut outcome.events);
            let last = events.len();
            // Whether the outcome went with its message (see below).
            let mut completed = false;
            for (i, event) in events.into_iter().enumerate() {
                let seen = self
                    .convs
                    .get(&event.conversation_id)
                    .map(|c| c.last_routed);
                match seen {
                    Some(last) if event.seq <= last => {
                        tracing::debug!(target: HOP, seq = event.seq, "already routed; dropped");
                        continue;
                    }
                    None if outcome.replay => {
                        tracing::debug!(
                            target: HOP,
                            seq = event.seq,
                            "replay for a conversation not routed here; dropped"
                        );
                        continue;
                    }
                    _ => {}
                }
                let recipients = self.recipients(&event).await;
                metrics::histogram!(ROUTER_FANOUT).record(recipients.len() as f64);
                if let Some(c) = self.convs.get_mut(&event.conversation_id) {
                    c.last_routed = event.seq;
                }
                tracing::debug!(target: HOP, seq = event.seq, recipients = recipients.len(), "routed");
                let delivery = Delivery {
                    message: event,
                    traceparent: outcome.traceparent.clone(),
                    accepted_at_ms: outcome.accepted_at_ms,
                };
                // A send's outcome is its message: it goes to the origin
                // gateway with the delivery, after which nothing is left to
                // route (no receipt).
                let folds = i + 1 == last
                    && outcome.origin.is_some()
                    && outcome.receipt.is_none()
                    && matches!(&outcome.result, Some(outcome_record::Result::Message(m)) if *m == delivery.message);
                if folds {
                    let outcome = std::mem::take(&mut outcome);
                    self.sink
                        .deliver_and_complete(&recipients, Arc::new(delivery), outcome)
                        .await;
                    completed = true;
                } else {
                    self.sink.deliver(&recipients, Arc::new(delivery)).await;
                }
            }
            if completed {
                return;
            }
            if let Some(receipt) = outcome.receipt.take() {
                let recipients = if outcome.receipt_private {
                    vec![receipt.user_id.clone()]
                } else {
                    self.members(&receipt.conversation_id, &receipt.user_id)
                        .await
                };
                tracing::debug!(target: HOP, read_seq = receipt.read_seq, recipients = recipients.len(), "receipt routed");
                let visibility = if outcome.receipt_private {
                    "private"
                } else {
                    "members"
                };
                metrics::counter!(RECEIPTS, "visibility" => visibility).increment(1);
                self.sink.receipt(&recipients, receipt).await;
            }
            if outcome.origin.is_some() {
                self.sink.complete(outcome).await;
            }
        }
        .instrument(span)
        .await
    }

    /// Who sees `event`: the members after it, plus anyone it removed (so
    /// they learn they were removed).
    async fn recipients(&mut self, event: &Message) -> Vec<String> {
        let conv = event.conversation_id.as_str();
        let change = event
            .membership
            .as_ref()
            .map(|m| (Change::try_from(m.change), &m.user_ids));
        if let Some((Ok(Change::Created), users)) = change {
            self.remember(conv, users.iter().cloned().collect());
            return users.clone();
        }
        let loaded = match self.cache_members(conv).await {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::warn!(conversation_id = conv, error = %e, "cannot load members; delivering to the sender only");
                return vec![event.sender_id.clone()];
            }
        };
        let Some(c) = self.convs.get_mut(conv) else {
            return vec![];
        };
        // A list just fetched already reflects this event; a cached one
        // follows it now. Removed users learn of their removal either way.
        let mut extra = Vec::new();
        match change {
            Some((Ok(Change::Added), users)) if !loaded => c.members.extend(users.iter().cloned()),
            Some((Ok(Change::Removed), users)) => {
                for u in users {
                    if !loaded {
                        c.members.remove(u);
                    }
                    extra.push(u.clone());
                }
            }
            _ => {}
        }
        c.members.iter().cloned().chain(extra).collect()
    }

    /// The current members of `conv` (from the cache, else from history);
    /// just `fallback` when history cannot say.
    async fn members(&mut self, conv: &str, fallback: &str) -> Vec<String> {
        if let Err(e) = self.cache_members(conv).await {
            tracing::warn!(conversation_id = conv, error = %e, "cannot load members; telling the reader only");
            return vec![fallback.to_string()];
        }
        self.convs
            .get(conv)
            .map(|c| c.members.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Makes sure the members of `conv` are cached, loading them from
    /// history on a miss; whether they were just loaded.
    async fn cache_members(&mut self, conv: &str) -> Result<bool, ChatError> {
        if self.convs.contains_key(conv) {
            return Ok(false);
        }
        let c = self.load_members(conv).await?;
        self.remember(conv, c.member_ids.into_iter().collect());
        Ok(true)
    }

    /// The conversation's members from history, retried for a while: the
    /// event exists, so its conversation does, and a failure is history
    /// being unreachable. Holding the partition briefly beats members
    /// missing the message live (they would only get it with the next one).
    async fn load_members(&self, conv: &str) -> Result<confab_proto::v1::Conversation, ChatError> {
        let give_up = tokio::time::Instant::now() + MEMBERS_RETRY_FOR;
        // At most 1 s between attempts (500 ms doubled by jitter).
        let mut delays = confab_runtime::retry::backoff(
            std::time::Duration::from_millis(50),
            std::time::Duration::from_millis(500),
        );
        loop {
            let delay = delays.next().unwrap_or_default();
            match self.history.conversation(conv).await {
                Ok(c) => return Ok(c),
                Err(e @ (ChatError::Unavailable(_) | ChatError::Internal(_)))
                    if tokio::time::Instant::now() + delay < give_up =>
                {
                    tracing::debug!(conversation_id = conv, error = %e, "members not loaded; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn remember(&mut self, conv: &str, members: BTreeSet<String>) {
        if self.convs.len() >= MEMBER_CACHE_CAPACITY && !self.convs.contains_key(conv) {
            // Cheap bound: forget everything; misses refill from history.
            self.convs.clear();
        }
        let last_routed = self.convs.get(conv).map(|c| c.last_routed).unwrap_or(0);
        self.convs.insert(
            conv.to_string(),
            Conv {
                members,
                last_routed,
            },
        );
    }
}

#[cfg(test)]
mod tests;
