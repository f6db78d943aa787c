//! The router: reads sequenced outcomes, works out who must see each event
//! and hands it to the gateway side; completes each request on its origin.
//! It keeps no durable state: membership is a cache that the ordered event
//! stream itself keeps current, filled from history on a miss.

pub mod distributed;
pub mod gateway_links;

use confab_core::error::ChatError;
use confab_core::metrics::{RECEIPTS, ROUTER_FANOUT};
use confab_core::seams::{recv_batch, Delivery, DeliverySink, HistoryApi};
use confab_proto::internal::v1::OutcomeRecord;
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
            for event in std::mem::take(&mut outcome.events) {
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
                self.sink.deliver(&recipients, Arc::new(delivery)).await;
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
        if !self.convs.contains_key(conv) {
            match self.load_members(conv).await {
                // The fetched list already reflects this event.
                Ok(c) => self.remember(conv, c.member_ids.into_iter().collect()),
                Err(e) => {
                    tracing::warn!(conversation_id = conv, error = %e, "cannot load members; delivering to the sender only");
                    return vec![event.sender_id.clone()];
                }
            }
            let mut out: Vec<String> = self
                .convs
                .get(conv)
                .map(|c| c.members.iter().cloned().collect())
                .unwrap_or_default();
            if let Some((Ok(Change::Removed), users)) = change {
                out.extend(users.iter().cloned());
            }
            return out;
        }
        let Some(c) = self.convs.get_mut(conv) else {
            return vec![];
        };
        let mut extra = Vec::new();
        match change {
            Some((Ok(Change::Added), users)) => c.members.extend(users.iter().cloned()),
            Some((Ok(Change::Removed), users)) => {
                for u in users {
                    c.members.remove(u);
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
        if !self.convs.contains_key(conv) {
            match self.load_members(conv).await {
                Ok(c) => self.remember(conv, c.member_ids.into_iter().collect()),
                Err(e) => {
                    tracing::warn!(conversation_id = conv, error = %e, "cannot load members; telling the reader only");
                    return vec![fallback.to_string()];
                }
            }
        }
        self.convs
            .get(conv)
            .map(|c| c.members.iter().cloned().collect())
            .unwrap_or_default()
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
mod tests {
    use super::*;
    use async_trait::async_trait;
    use confab_core::error::ChatError;
    use confab_proto::internal::v1::{outcome_record, Origin};
    use confab_proto::v1::{
        Conversation, GetHistoryRequest, GetHistoryResponse, ListConversationsRequest,
        ListConversationsResponse, MembershipEvent, Receipt,
    };
    use confab_runtime::trace::TraceParent;
    use std::sync::Mutex;

    /// History that knows one conversation's current members.
    fn members(users: Vec<String>) -> Flaky {
        Flaky {
            fails: 0.into(),
            members: users,
            asked_in: Mutex::new(vec![]),
        }
    }

    #[derive(Default)]
    struct Recorder {
        deliveries: Mutex<Vec<(u64, Vec<String>)>>,
        /// Each delivery's trace context and acceptance time.
        carried: Mutex<Vec<(String, i64)>>,
        /// The hop span around each delivery, if one was made.
        around: Mutex<Vec<Option<TraceParent>>>,
        completed: Mutex<Vec<u64>>,
        /// Each receipt with its recipients.
        receipts: Mutex<Vec<(Receipt, Vec<String>)>>,
    }

    #[async_trait]
    impl DeliverySink for Recorder {
        async fn deliver(&self, recipients: &[String], delivery: Arc<Delivery>) {
            self.around.lock().expect("lock").push(trace::current());
            let mut r = recipients.to_vec();
            r.sort();
            self.deliveries
                .lock()
                .expect("lock")
                .push((delivery.message.seq, r));
            self.carried
                .lock()
                .expect("lock")
                .push((delivery.traceparent.clone(), delivery.accepted_at_ms));
        }
        async fn receipt(&self, recipients: &[String], receipt: Receipt) {
            let mut r = recipients.to_vec();
            r.sort();
            self.receipts.lock().expect("lock").push((receipt, r));
        }
        async fn complete(&self, outcome: OutcomeRecord) {
            let id = outcome.origin.map(|o| o.request_id).unwrap_or_default();
            self.completed.lock().expect("lock").push(id);
        }
    }

    fn event(seq: u64, change: Option<(Change, &[&str])>) -> Message {
        Message {
            conversation_id: "c".into(),
            seq,
            sender_id: "alice".into(),
            membership: change.map(|(c, users)| MembershipEvent {
                change: c as i32,
                actor_id: "alice".into(),
                user_ids: users.iter().map(|u| u.to_string()).collect(),
            }),
            ..Default::default()
        }
    }

    fn replay(request_id: u64, events: Vec<Message>) -> OutcomeRecord {
        OutcomeRecord {
            replay: true,
            ..outcome(Some(request_id), events)
        }
    }

    fn outcome(request_id: Option<u64>, events: Vec<Message>) -> OutcomeRecord {
        OutcomeRecord {
            replay: false,
            origin: request_id.map(|request_id| Origin {
                gateway_id: "g".into(),
                request_id,
            }),
            conversation_id: "c".into(),
            events,
            result: Some(outcome_record::Result::Message(Message::default())),
            ..Default::default()
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn receipts_reach_every_member_or_only_the_reader_when_private() {
        let sink = Arc::new(Recorder::default());
        // Members not cached: looked up once, then kept.
        let history = Arc::new(members(names(&["alice", "bob", "carol"])));
        let mut router = Router::new(history.clone(), sink.clone());
        let read = |request_id, private| OutcomeRecord {
            receipt: Some(Receipt {
                conversation_id: "c".into(),
                user_id: "bob".into(),
                read_seq: 7,
            }),
            receipt_private: private,
            ..outcome(Some(request_id), vec![])
        };
        router.route(read(1, false)).await;
        router.route(read(2, true)).await;
        let receipts = sink.receipts.lock().expect("lock").clone();
        let recipients: Vec<Vec<String>> = receipts.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(
            recipients,
            [names(&["alice", "bob", "carol"]), names(&["bob"])]
        );
        assert!(receipts
            .iter()
            .all(|(r, _)| r.read_seq == 7 && r.user_id == "bob"));
        assert_eq!(history.asked_in.lock().expect("lock").len(), 1);
        // Each request still completes.
        assert_eq!(*sink.completed.lock().expect("lock"), [1, 2]);
    }

    #[tokio::test]
    async fn recipients_follow_membership_events_in_stream_order() {
        let sink = Arc::new(Recorder::default());
        // History is never asked: creation fills the cache.
        let mut router = Router::new(Arc::new(members(vec![])), sink.clone());
        router
            .route(outcome(
                Some(1),
                vec![event(1, Some((Change::Created, &["alice", "bob"])))],
            ))
            .await;
        router.route(outcome(Some(2), vec![event(2, None)])).await;
        router
            .route(outcome(
                None,
                vec![event(3, Some((Change::Added, &["carol"])))],
            ))
            .await;
        router
            .route(outcome(
                None,
                vec![event(4, Some((Change::Removed, &["bob"])))],
            ))
            .await;
        router.route(outcome(Some(5), vec![event(5, None)])).await;
        let d = sink.deliveries.lock().expect("lock").clone();
        assert_eq!(
            d,
            vec![
                (1, names(&["alice", "bob"])),
                (2, names(&["alice", "bob"])),
                (3, names(&["alice", "bob", "carol"])),
                (4, names(&["alice", "bob", "carol"])), // bob learns of his removal
                (5, names(&["alice", "carol"])),        // and gets nothing after it
            ]
        );
        assert_eq!(
            *sink.completed.lock().expect("lock"),
            vec![1, 2, 5],
            "only requests with an origin complete"
        );
    }

    #[tokio::test]
    async fn deliveries_continue_the_outcomes_trace_and_keep_its_acceptance_time() {
        let sink = Arc::new(Recorder::default());
        let mut router = Router::new(Arc::new(members(vec![])), sink.clone());
        let history = TraceParent::root();
        let mut created = outcome(
            Some(1),
            vec![event(1, Some((Change::Created, &["alice", "bob"])))],
        );
        created.traceparent = history.to_string();
        created.accepted_at_ms = 1_700_000_000_123;
        router.route(created).await;
        // An outcome without context (an older history) starts a trace.
        router.route(outcome(Some(2), vec![event(2, None)])).await;
        let carried = sink.carried.lock().expect("lock").clone();
        let routed = TraceParent::parse(&carried[0].0).expect("a traceparent");
        assert_eq!(routed.trace_id, history.trace_id, "the same trace");
        assert_ne!(routed.span_id, history.span_id, "the router's own span");
        assert_eq!(carried[0].1, 1_700_000_000_123);
        let fresh = TraceParent::parse(&carried[1].0).expect("a traceparent");
        assert_ne!(fresh.trace_id, history.trace_id);
        assert_eq!(carried[1].1, 0, "unknown acceptance time stays unknown");
    }

    #[tokio::test]
    async fn a_cache_miss_asks_history_and_still_tells_the_removed_user() {
        let sink = Arc::new(Recorder::default());
        let mut router = Router::new(Arc::new(members(names(&["alice", "dave"]))), sink.clone());
        // First event seen for this conversation is a removal (e.g. after a restart).
        router
            .route(outcome(
                None,
                vec![event(9, Some((Change::Removed, &["bob"])))],
            ))
            .await;
        router.route(outcome(None, vec![event(10, None)])).await;
        let d = sink.deliveries.lock().expect("lock").clone();
        assert_eq!(
            d,
            vec![
                (9, names(&["alice", "bob", "dave"])),
                (10, names(&["alice", "dave"]))
            ]
        );
    }

    #[tokio::test]
    async fn duplicates_and_replays_are_routed_at_most_once() {
        let sink = Arc::new(Recorder::default());
        let mut router = Router::new(Arc::new(members(names(&["alice", "bob"]))), sink.clone());
        // A replay for a conversation never routed here: dropped, but completed.
        router.route(replay(1, vec![event(4, None)])).await;
        router.route(outcome(None, vec![event(5, None)])).await;
        // The log redelivers 5; a client retry replays 5; both dropped.
        router.route(outcome(None, vec![event(5, None)])).await;
        router.route(replay(2, vec![event(5, None)])).await;
        // A replay of a seq never routed (its first outcome was lost) is pushed.
        router.route(replay(3, vec![event(6, None)])).await;
        let d = sink.deliveries.lock().expect("lock").clone();
        assert_eq!(
            d,
            vec![(5, names(&["alice", "bob"])), (6, names(&["alice", "bob"]))]
        );
        assert_eq!(*sink.completed.lock().expect("lock"), vec![1, 2, 3]);
    }

    /// History that is unreachable for its first `fails` calls.
    struct Flaky {
        fails: std::sync::atomic::AtomicUsize,
        members: Vec<String>,
        /// The hop span each member lookup was made in.
        asked_in: Mutex<Vec<Option<TraceParent>>>,
    }

    #[async_trait]
    impl HistoryApi for Flaky {
        async fn get_history(
            &self,
            _: &str,
            _: GetHistoryRequest,
        ) -> Result<GetHistoryResponse, ChatError> {
            Err(ChatError::Internal("not used".into()))
        }
        async fn list_conversations(
            &self,
            _: &str,
            _: ListConversationsRequest,
        ) -> Result<ListConversationsResponse, ChatError> {
            Ok(ListConversationsResponse::default())
        }
        async fn get_conversation(&self, _: &str, id: &str) -> Result<Conversation, ChatError> {
            Err(ChatError::no_conversation(id))
        }
        async fn conversation(&self, id: &str) -> Result<Conversation, ChatError> {
            use std::sync::atomic::Ordering::SeqCst;
            self.asked_in.lock().expect("lock").push(trace::current());
            if self.fails.load(SeqCst) > 0 {
                self.fails.fetch_sub(1, SeqCst);
                return Err(ChatError::Unavailable(
                    "history is unavailable; retry".into(),
                ));
            }
            Ok(Conversation {
                id: id.into(),
                member_ids: self.members.clone(),
                ..Default::default()
            })
        }
    }

    /// With nothing looking at hop spans, `router.route` is still made
    /// when it looks members up (a failed lookup logs a warning in it, and
    /// the lookup carries its context to history), and skipped when they
    /// are cached; the deliveries carry a context either way.
    #[tokio::test]
    async fn the_route_span_is_made_for_a_member_lookup_when_hops_are_not_observed() {
        use tracing::instrument::WithSubscriber;
        let sink = Arc::new(Recorder::default());
        let history = Arc::new(members(names(&["alice", "bob"])));
        let mut router = Router::new(history.clone(), sink.clone());
        trace::set_hops_observed(false);
        async {
            router.route(outcome(Some(1), vec![event(1, None)])).await;
            router.route(outcome(Some(2), vec![event(2, None)])).await;
        }
        .with_subscriber(tracing_subscriber::registry())
        .await;
        trace::set_hops_observed(true);
        async {
            router.route(outcome(Some(3), vec![event(3, None)])).await;
        }
        .with_subscriber(tracing_subscriber::registry())
        .await;

        let carried: Vec<TraceParent> = sink
            .carried
            .lock()
            .expect("lock")
            .iter()
            .map(|(tp, _)| TraceParent::parse(tp).expect("a traceparent"))
            .collect();
        assert_eq!(carried.len(), 3, "every event delivered");
        let asked_in = history.asked_in.lock().expect("lock").clone();
        assert_eq!(
            asked_in,
            vec![Some(carried[0])],
            "one lookup (the first event), inside the router.route span whose context the delivery carries"
        );
        let around = sink.around.lock().expect("lock").clone();
        assert_eq!(around[0], Some(carried[0]), "the lookup's route: a span");
        assert_eq!(around[1], None, "members cached, not observed: no span");
        assert_eq!(around[2], Some(carried[2]), "observed: a span");
    }

    #[tokio::test(start_paused = true)]
    async fn members_are_retried_while_history_is_briefly_unreachable() {
        let sink = Arc::new(Recorder::default());
        let history = Flaky {
            fails: 5.into(),
            ..members(names(&["alice", "bob"]))
        };
        let mut router = Router::new(Arc::new(history), sink.clone());
        router.route(outcome(None, vec![event(3, None)])).await;
        let d = sink.deliveries.lock().expect("lock").clone();
        assert_eq!(
            d,
            vec![(3, names(&["alice", "bob"]))],
            "every member, not just the sender"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_history_down_for_long_is_given_up_on_after_a_bound() {
        let sink = Arc::new(Recorder::default());
        let history = Flaky {
            fails: usize::MAX.into(),
            ..members(names(&["alice", "bob"]))
        };
        let mut router = Router::new(Arc::new(history), sink.clone());
        let started = tokio::time::Instant::now();
        router.route(outcome(None, vec![event(3, None)])).await;
        assert!(
            started.elapsed() <= MEMBERS_RETRY_FOR,
            "{:?}",
            started.elapsed()
        );
        let d = sink.deliveries.lock().expect("lock").clone();
        assert_eq!(
            d,
            vec![(3, names(&["alice"]))],
            "the sender still gets their own message"
        );
    }
}
