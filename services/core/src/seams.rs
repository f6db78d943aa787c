//! The seams between the three services. Embedded mode implements them with
//! in-process queues and direct calls; the distributed mode implements the
//! same traits over Kafka and gRPC, so the service logic is written once.

use crate::error::ChatError;
use async_trait::async_trait;
use confab_proto::internal::v1::{OutcomeRecord, PresenceUpdate};
use confab_proto::prost::bytes::Bytes;
use confab_proto::prost::Message as _;
use confab_proto::v1::{
    Conversation, GetEditHistoryRequest, GetEditHistoryResponse, GetHistoryRequest,
    GetHistoryResponse, GetPresenceRequest, GetPresenceResponse, ListConversationsRequest,
    ListConversationsResponse, Message, Receipt, SearchMessagesRequest, SearchMessagesResponse,
    SyncRequest, SyncResponse, Typing,
};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Appends records to a log topic keyed by conversation id.
#[async_trait]
pub trait Publisher<T>: Send + Sync + 'static {
    /// Returns once the log has accepted the record.
    async fn publish(&self, key: &str, record: T) -> Result<(), ChatError>;
}

/// The read side of history, used by gateways (for clients) and routers
/// (for membership).
#[async_trait]
pub trait HistoryApi: Send + Sync + 'static {
    /// A page of history, if `caller` is a member.
    async fn get_history(
        &self,
        caller: &str,
        req: GetHistoryRequest,
    ) -> Result<GetHistoryResponse, ChatError>;
    /// A page of the caller's conversations.
    async fn list_conversations(
        &self,
        caller: &str,
        req: ListConversationsRequest,
    ) -> Result<ListConversationsResponse, ChatError>;
    /// A conversation with its current members (no caller check: internal).
    async fn conversation(&self, conversation_id: &str) -> Result<Conversation, ChatError>;
    /// A conversation of `caller`'s, with every member's read position,
    /// `caller`'s unread count and its newest TEXT message.
    async fn get_conversation(
        &self,
        caller: &str,
        conversation_id: &str,
    ) -> Result<Conversation, ChatError>;
    /// What changed for `caller` since the request's cursor.
    async fn sync(&self, caller: &str, req: SyncRequest) -> Result<SyncResponse, ChatError>;
    /// [`HistoryApi::sync`] as the encoded `SyncResponse`, for a caller
    /// that only passes it on (the gateway's unary `Sync`): a client of a
    /// remote history hands over the bytes history sent without decoding
    /// them; the default encodes [`HistoryApi::sync`]'s answer.
    async fn sync_encoded(&self, caller: &str, req: SyncRequest) -> Result<Bytes, ChatError> {
        Ok(self.sync(caller, req).await?.encode_to_vec().into())
    }
    /// The presence of users that share a conversation with `caller`
    /// (PERMISSION_DENIED for the first that does not).
    async fn get_presence(
        &self,
        caller: &str,
        req: GetPresenceRequest,
    ) -> Result<GetPresenceResponse, ChatError>;
    /// The members other than `user` of `user`'s DIRECT conversations.
    async fn direct_partners(&self, user: &str) -> Result<Vec<String>, ChatError>;
    /// Records who is online and who was last seen when.
    async fn record_presence(&self, updates: Vec<PresenceUpdate>) -> Result<(), ChatError>;
    /// Every version of a TEXT message of a conversation of `caller`'s.
    async fn get_edit_history(
        &self,
        caller: &str,
        req: GetEditHistoryRequest,
    ) -> Result<GetEditHistoryResponse, ChatError>;
    /// `caller`'s full-text search over what it may read.
    async fn search_messages(
        &self,
        caller: &str,
        req: SearchMessagesRequest,
    ) -> Result<SearchMessagesResponse, ChatError>;
}

/// A sequenced message on its way to sessions, with what travels along it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// The W3C trace context of the router's span that routed it (empty:
    /// none); the gateway's delivery span continues it.
    pub traceparent: String,
    /// When its write was accepted by a gateway (Unix milliseconds on that
    /// gateway's clock; 0: unknown): where `confab_message_e2e_seconds`
    /// starts.
    pub accepted_at_ms: i64,
}

impl Delivery {
    /// `message` without trace context or acceptance time.
    pub fn bare(message: Message) -> Self {
        Self {
            message,
            ..Self::default()
        }
    }
}

/// What reaches a session live: a sequenced message, or a member's read
/// position that moved or typing indicator (neither is sequenced: they
/// never fill a gap). Shared, so handing one to every session of every
/// recipient copies a pointer.
#[derive(Debug, Clone, PartialEq)]
pub enum Live {
    /// A sequenced message.
    Message(Arc<Delivery>),
    /// A read position that moved.
    Receipt(Arc<Receipt>),
    /// A member typing, or stopping.
    Typing(Arc<Typing>),
    /// A DIRECT partner came online or went offline.
    Presence(Arc<confab_proto::v1::Presence>),
}

impl Live {
    /// Whether it may be dropped for a session too slow to take it:
    /// typing and presence are replaced by the next one (and presence can
    /// be asked for), while a message or a receipt dropped would be lost,
    /// so a session too slow for those is disconnected to resume.
    pub fn droppable(&self) -> bool {
        matches!(self, Live::Typing(_) | Live::Presence(_))
    }
}

/// Where routers hand sequenced messages, receipts and outcomes.
#[async_trait]
pub trait DeliverySink: Send + Sync + 'static {
    /// Pushes `delivery` to every session of every user in `recipients`.
    async fn deliver(&self, recipients: &[String], delivery: Arc<Delivery>);
    /// Pushes `receipt` to every session of every user in `recipients`.
    async fn receipt(&self, recipients: &[String], receipt: Receipt);
    /// Completes the request that produced `outcome` on its origin gateway.
    async fn complete(&self, outcome: OutcomeRecord);
    /// [`deliver`](Self::deliver), then [`complete`](Self::complete), for an
    /// outcome whose result is `delivery`'s message: a sink that sends both
    /// over a wire may send them as one frame where they go to the same
    /// place.
    async fn deliver_and_complete(
        &self,
        recipients: &[String],
        delivery: Arc<Delivery>,
        outcome: OutcomeRecord,
    ) {
        self.deliver(recipients, delivery).await;
        self.complete(outcome).await;
    }
}

/// The partition of `key` among `partitions` (stable within a process).
pub fn partition_of(key: &str, partitions: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % partitions.max(1) as u64) as usize
}

/// The embedded mode's log: a topic of bounded in-memory partitions with one
/// consumer each. Durability comes from the database, not from this queue:
/// nothing is acknowledged to a client before history has committed it.
pub struct MemTopic<T> {
    /// One sender per partition.
    senders: Vec<mpsc::Sender<T>>,
}

impl<T: Send + 'static> MemTopic<T> {
    /// A topic of `partitions` queues holding `capacity` records each, and
    /// the receivers its consumers read from, in partition order.
    pub fn new(partitions: usize, capacity: usize) -> (Self, Vec<mpsc::Receiver<T>>) {
        let (senders, receivers) = (0..partitions.max(1))
            .map(|_| mpsc::channel(capacity.max(1)))
            .unzip();
        (Self { senders }, receivers)
    }
}

#[async_trait]
impl<T: Send + 'static> Publisher<T> for MemTopic<T> {
    async fn publish(&self, key: &str, record: T) -> Result<(), ChatError> {
        let p = partition_of(key, self.senders.len());
        self.senders[p]
            .send(record)
            .await
            .map_err(|_| ChatError::Unavailable("the server is shutting down; retry".into()))
    }
}

/// Waits for one record, then takes whatever else is queued, up to `max`.
pub async fn recv_batch<T>(rx: &mut mpsc::Receiver<T>, max: usize) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut batch = vec![first];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(r) => batch.push(r),
            Err(_) => break,
        }
    }
    Some(batch)
}
