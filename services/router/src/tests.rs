//! The router's routing, membership cache and receipts, against a
//! recording sink and a history that can fail.

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
    /// The requests completed together with their message's delivery.
    folded: Mutex<Vec<u64>>,
}

impl Recorder {
    /// The seq of each delivery, in order.
    fn delivered_seqs(&self) -> Vec<u64> {
        let deliveries = self.deliveries.lock().expect("lock");
        deliveries.iter().map(|d| d.0).collect()
    }
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
    async fn deliver_and_complete(
        &self,
        recipients: &[String],
        delivery: Arc<Delivery>,
        outcome: OutcomeRecord,
    ) {
        let id = outcome.origin.as_ref().map(|o| o.request_id);
        self.folded.lock().expect("lock").extend(id);
        self.deliver(recipients, delivery).await;
        self.complete(outcome).await;
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
            ..Default::default()
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

#[tokio::test]
async fn a_result_that_is_the_delivered_message_goes_with_it() {
    let sink = Arc::new(Recorder::default());
    let mut router = Router::new(Arc::new(members(names(&["alice", "bob"]))), sink.clone());
    // A send: its result is the message it sequenced.
    let send = |request_id, seq| {
        let mut o = outcome(Some(request_id), vec![event(seq, None)]);
        o.result = Some(outcome_record::Result::Message(event(seq, None)));
        o
    };
    router.route(send(1, 1)).await;
    // A result that is some other message (an edit's target), one the
    // router dropped (a replay of a routed seq), and one without an origin:
    // completed on their own, or not at all.
    let mut edit = outcome(Some(2), vec![event(2, None)]);
    edit.result = Some(outcome_record::Result::Message(event(1, None)));
    router.route(edit).await;
    router.route(replay(3, vec![event(2, None)])).await;
    let mut unasked = send(4, 3);
    unasked.origin = None;
    router.route(unasked).await;
    assert_eq!(*sink.folded.lock().expect("lock"), vec![1]);
    assert_eq!(*sink.completed.lock().expect("lock"), vec![1, 2, 3]);
    let seqs = sink.delivered_seqs();
    assert_eq!(seqs, vec![1, 2, 3], "each message is delivered once");
}

#[tokio::test]
async fn a_record_of_a_lanes_outcomes_is_routed_outcome_by_outcome_in_order() {
    let sink = Arc::new(Recorder::default());
    let mut router = Router::new(Arc::new(members(names(&["alice", "bob"]))), sink.clone());
    let record = OutcomeRecord {
        conversation_id: "c".into(),
        batched: vec![
            outcome(Some(1), vec![event(1, None)]),
            outcome(None, vec![event(2, None)]),
            // A copy the log carried twice, inside the same record.
            outcome(None, vec![event(2, None)]),
            outcome(Some(2), vec![event(3, None)]),
        ],
        ..Default::default()
    };
    router.route_record(record).await;
    // And a record that is one outcome, as before.
    router
        .route_record(outcome(Some(3), vec![event(4, None)]))
        .await;
    let seqs = sink.delivered_seqs();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
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
    async fn sync(
        &self,
        _: &str,
        _: confab_proto::v1::SyncRequest,
    ) -> Result<confab_proto::v1::SyncResponse, ChatError> {
        Err(ChatError::Internal("not used".into()))
    }
    async fn get_presence(
        &self,
        _: &str,
        _: confab_proto::v1::GetPresenceRequest,
    ) -> Result<confab_proto::v1::GetPresenceResponse, ChatError> {
        Err(ChatError::Internal("not used".into()))
    }
    async fn get_edit_history(
        &self,
        _: &str,
        _: confab_proto::v1::GetEditHistoryRequest,
    ) -> Result<confab_proto::v1::GetEditHistoryResponse, ChatError> {
        Err(ChatError::Internal("not used".into()))
    }
    async fn search_messages(
        &self,
        _: &str,
        _: confab_proto::v1::SearchMessagesRequest,
    ) -> Result<confab_proto::v1::SearchMessagesResponse, ChatError> {
        Err(ChatError::Internal("not used".into()))
    }
    async fn direct_partners(&self, _: &str) -> Result<Vec<String>, ChatError> {
        Err(ChatError::Internal("not used".into()))
    }
    async fn record_presence(
        &self,
        _: Vec<confab_proto::internal::v1::PresenceUpdate>,
    ) -> Result<(), ChatError> {
        Err(ChatError::Internal("not used".into()))
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
