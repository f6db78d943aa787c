//! One `Connect` stream. A single task owns the session's state, so frames
//! from the client and live messages are handled one at a time. Delivery
//! keeps a cursor per conversation: it never repeats a seq, and fills any
//! gap from history before going on, which is also how resume works.

use crate::hub::Hub;
use crate::submit::Submitter;
use crate::user_limits::{Cost, Limiter, StreamGuard};
use confab_auth::STREAM_EXPIRED;
use confab_core::error::ChatError;
use confab_core::metrics::{MESSAGES_DELIVERED, MESSAGE_E2E};
use confab_core::seams::{Delivery, HistoryApi};
use confab_core::validate::{self, Limits};
use confab_proto::internal::v1::{ingress_record::Command, outcome_record, SendCommand};
use confab_proto::v1::{
    client_frame, membership_event::Change, server_frame, CaughtUp, ClientFrame, GetHistoryRequest,
    Message, Pong, SendAck, SendFrame, ServerFrame,
};
use confab_runtime::shutdown::Signal;
use confab_runtime::trace::{self, HOP};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, Semaphore};
use tonic::{Status, Streaming};
use tracing::Instrument;

/// The seqs of one conversation sent on this stream: every seq in
/// `first..=last` has been sent, nothing above `last`.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// Lowest seq this stream is responsible for.
    first: u64,
    /// Highest seq sent.
    last: u64,
}

/// Everything a session task needs.
pub struct Session {
    /// The authenticated user.
    pub user: String,
    /// Registry of sessions.
    pub hub: Arc<Hub>,
    /// History reads (resume and gap fill).
    pub history: Arc<dyn HistoryApi>,
    /// Writes.
    pub submitter: Submitter,
    /// Input limits.
    pub limits: Limits,
    /// Frames to the client.
    pub out: mpsc::Sender<ServerFrame>,
    /// Ends the client's stream with a status at once, dropping frames
    /// still queued (a slow reader, an expired token).
    pub kill: mpsc::Sender<Status>,
    /// Ends the client's stream with a status after the frames already
    /// queued (a shutdown: acks of accepted sends go out first).
    pub end: mpsc::Sender<Status>,
    /// Capacity of the live queue.
    pub queue: usize,
    /// Gateway shutdown.
    pub shutdown: Signal,
    /// Per-user limits; a `send` frame spends the same message budget as a
    /// unary `SendMessage`.
    pub limiter: Limiter,
    /// This stream's slot in the user's stream cap, freed when the session
    /// task ends.
    pub stream_slot: StreamGuard,
    /// The largest decoded message (`CONFAB_MAX_MESSAGE_BYTES`).
    pub max_message_bytes: usize,
}

/// Longest wait for the routers to confirm a new session's presence.
pub const PRESENCE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Sends one stream may have waiting for their outcome; more are refused
/// with RESOURCE_EXHAUSTED in the ack rather than queued without bound.
pub const MAX_SENDS_IN_FLIGHT: usize = 256;

/// How a stream ends when its gateway shuts down (UNAVAILABLE).
pub const SHUTTING_DOWN: &str =
    "the gateway is shutting down; reconnect (to any gateway) and resume from the last seq you received";

/// Why the session loop stopped sending.
struct Gone;

/// Resolves at `deadline`, or never when there is none.
async fn expiry(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Session {
    /// Runs the session until the client leaves, is kicked, or shutdown.
    pub async fn run(self, inbound: Streaming<ClientFrame>) {
        self.run_until(inbound, None).await
    }

    /// Like [`Session::run`], but ends the stream with UNAUTHENTICATED
    /// ([`STREAM_EXPIRED`]) at `valid_until` (the token's
    /// [`confab_auth::Authenticated::valid_until`]), whether or not
    /// the client sends anything.
    pub async fn run_until(
        self,
        mut inbound: Streaming<ClientFrame>,
        valid_until: Option<SystemTime>,
    ) {
        let deadline = valid_until.map(|t| {
            tokio::time::Instant::now() + t.duration_since(SystemTime::now()).unwrap_or_default()
        });
        let expired = expiry(deadline);
        tokio::pin!(expired);
        let mut state = State {
            cursors: HashMap::new(),
            s: self,
            in_flight: Arc::new(Semaphore::new(MAX_SENDS_IN_FLIGHT)),
        };
        // Live delivery starts after the first frame, so that a first
        // `resume` is always applied before any live message.
        let first = tokio::select! {
            f = inbound.message() => f,
            _ = state.s.out.closed() => return,
            _ = state.s.shutdown.clone().wait() => return state.shutting_down().await,
            _ = &mut expired => return state.expired(),
        };
        let first = match first {
            Ok(f) => f,
            Err(status) => return state.inbound_failed(&status),
        };
        let (tx, mut live) = mpsc::channel(state.s.queue);
        // Routing changes from now on may have skipped this session.
        let mut routing = state.s.hub.routing_changes();
        routing.borrow_and_update();
        let mut recheck_at: Option<tokio::time::Instant> = None;
        let registration = state
            .s
            .hub
            .register(&state.s.user, tx, state.s.kill.clone());
        // Every router must know this user is here before the first frame is
        // answered: then any message sequenced after that answer reaches this
        // session. Bounded, so a stuck router delays a session, never blocks it.
        if !state
            .s
            .hub
            .presence_settled(registration.epoch, PRESENCE_WAIT)
            .await
        {
            tracing::warn!(user_id = %state.s.user, "routers did not confirm presence in time; going live anyway");
        }
        let mut inbound_open = first.is_some();
        if let Some(frame) = first {
            if state.handle(frame).await.is_err() {
                return;
            }
        }
        let shutdown = state.s.shutdown.clone().wait();
        tokio::pin!(shutdown);
        loop {
            let step = tokio::select! {
                biased;
                _ = &mut shutdown => return state.shutting_down().await,
                _ = &mut expired => return state.expired(),
                _ = state.s.out.closed() => return,
                frame = inbound.message(), if inbound_open => match frame {
                    Ok(Some(frame)) => state.handle(frame).await,
                    // Half-closed: keep delivering until the client hangs up.
                    Ok(None) => { inbound_open = false; Ok(()) }
                    Err(status) => return state.inbound_failed(&status),
                },
                msg = live.recv() => match msg {
                    Some(m) => state.deliver_live(&m).await,
                    // The hub dropped us (too slow); the kill status is on its way.
                    None => return,
                },
                changed = routing.changed() => {
                    if changed.is_ok() {
                        // Spread over a moment, so a router change does not
                        // send every session to history at once.
                        recheck_at.get_or_insert_with(|| tokio::time::Instant::now() + recheck_jitter());
                    }
                    Ok(())
                }
                () = sleep_until_some(recheck_at) => {
                    recheck_at = None;
                    match state.recheck().await {
                        Ok(true) => Ok(()),
                        // History did not answer: try again in a while.
                        Ok(false) => {
                            recheck_at = Some(tokio::time::Instant::now() + RECHECK_RETRY);
                            Ok(())
                        }
                        Err(Gone) => Err(Gone),
                    }
                }
            };
            if step.is_err() {
                return;
            }
        }
    }
}

/// How long after a failed recheck (history unavailable) it is tried again.
const RECHECK_RETRY: Duration = Duration::from_secs(1);

/// Up to half a second, different for every session.
fn recheck_jitter() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or_default();
    Duration::from_millis(u64::from(nanos % 500))
}

/// Completes at `at`, or never when there is nothing scheduled.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

struct State {
    cursors: HashMap<String, Cursor>,
    s: Session,
    in_flight: Arc<Semaphore>,
}

impl State {
    /// Lets the acks of sends already accepted on this stream go out (each
    /// is bounded by the send timeout), then ends the stream with
    /// UNAVAILABLE telling the client to reconnect and resume.
    async fn shutting_down(&self) {
        let _ = self
            .in_flight
            .acquire_many(MAX_SENDS_IN_FLIGHT as u32)
            .await;
        let _ = self.s.end.try_send(Status::unavailable(SHUTTING_DOWN));
    }

    /// The client's side of the stream failed: a frame over the message
    /// size limit ends the stream with RESOURCE_EXHAUSTED naming the limit;
    /// anything else is a broken stream, a normal disconnect.
    fn inbound_failed(&self, status: &Status) {
        if confab_layers::message_limit::is_too_large(status) {
            let _ = self
                .s
                .kill
                .try_send(confab_layers::message_limit::message_too_large(
                    status.message(),
                    self.s.max_message_bytes,
                ));
        }
    }

    fn expired(&self) {
        tracing::debug!(user_id = %self.s.user, "token expired; closing the stream");
        let _ = self
            .s
            .kill
            .try_send(Status::unauthenticated(STREAM_EXPIRED));
    }

    async fn send(&self, frame: server_frame::Frame) -> Result<(), Gone> {
        self.s
            .out
            .send(ServerFrame { frame: Some(frame) })
            .await
            .map_err(|_| Gone)
    }

    async fn handle(&mut self, frame: ClientFrame) -> Result<(), Gone> {
        match frame.frame {
            Some(client_frame::Frame::Send(send)) => self.send_message(send).await,
            Some(client_frame::Frame::Resume(resume)) => {
                let mut positions: Vec<_> = resume.last_seq.into_iter().collect();
                positions.sort();
                for (conv, last) in positions {
                    self.resume(&conv, last).await?;
                }
                Ok(())
            }
            Some(client_frame::Frame::Ping(ping)) => {
                self.send(server_frame::Frame::Pong(Pong { nonce: ping.nonce }))
                    .await
            }
            None => Ok(()),
        }
    }

    /// Validates at once; the ack follows when history has decided, without
    /// holding up this session's deliveries.
    ///
    /// The per-frame limits live here, not in [`crate::guard`]: a frame
    /// travels inside the stream's body, where no layer in front of the
    /// service can see it. So each `send` frame is charged to the same
    /// message budget as a unary `SendMessage` right here, and a refusal
    /// (like a too-large body or too many sends in flight) comes back in
    /// that frame's ack while the stream stays open.
    async fn send_message(&mut self, f: SendFrame) -> Result<(), Gone> {
        let ack = move |f: &SendFrame, seq: u64, error: Option<ChatError>| {
            server_frame::Frame::Ack(SendAck {
                conversation_id: f.conversation_id.clone(),
                client_msg_id: f.client_msg_id.clone(),
                seq,
                error: error.map(|e| e.to_proto()),
            })
        };
        if let Err(e) = self.s.limiter.admit(&self.s.user, Cost::Message) {
            return self.send(ack(&f, 0, Some(e))).await;
        }
        if let Err(e) = validate::send(
            &self.s.limits,
            &f.conversation_id,
            &f.client_msg_id,
            &f.body,
        ) {
            return self.send(ack(&f, 0, Some(e))).await;
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            let e = ChatError::ResourceExhausted(format!(
                "{MAX_SENDS_IN_FLIGHT} sends are already waiting for their ack on this stream; wait for acks before sending more"
            ));
            return self.send(ack(&f, 0, Some(e))).await;
        };
        let submitter = self.s.submitter.clone();
        let out = self.s.out.clone();
        let user = self.s.user.clone();
        // A stream opened with a client `traceparent`: the write is a child
        // of its `gateway.call` span. Otherwise each send starts a trace of
        // its own (one trace per message, not one per stream).
        let stream_span = if trace::current_continues() {
            tracing::Span::current()
        } else {
            tracing::Span::none()
        };
        tokio::spawn(async move {
            let _permit = permit;
            let command = Command::Send(SendCommand {
                client_msg_id: f.client_msg_id.clone(),
                body: f.body.clone(),
            });
            let frame = match submitter
                .submit(&user, &f.conversation_id, command)
                .instrument(stream_span)
                .await
            {
                Ok(outcome_record::Result::Message(m)) => ack(&f, m.seq, None),
                Ok(_) => ack(
                    &f,
                    0,
                    Some(ChatError::Internal("unexpected outcome".into())),
                ),
                Err(e) => ack(&f, 0, Some(e)),
            };
            let _ = out.send(ServerFrame { frame: Some(frame) }).await;
        });
        Ok(())
    }

    /// Sends what the client missed after `last`, then `caught_up`.
    async fn resume(&mut self, conv: &str, last: u64) -> Result<(), Gone> {
        let sent = match self.cursors.get(conv).copied() {
            // Already streaming this conversation: send only what lies below
            // what this stream has carried, never a seq twice.
            Some(c) if last < c.first.saturating_sub(1) => {
                let r = self.fill(conv, last, c.first).await;
                if r.is_ok() {
                    self.cursors.insert(
                        conv.to_string(),
                        Cursor {
                            first: last + 1,
                            last: c.last,
                        },
                    );
                }
                r
            }
            Some(c) => {
                let c = Cursor {
                    first: c.first,
                    last: c.last.max(last),
                };
                self.cursors.insert(conv.to_string(), c);
                self.fill(conv, c.last, u64::MAX).await
            }
            None => {
                self.cursors.insert(
                    conv.to_string(),
                    Cursor {
                        // A client may claim to have seen up to u64::MAX.
                        first: last.saturating_add(1),
                        last,
                    },
                );
                self.fill(conv, last, u64::MAX).await
            }
        };
        let (seq, error) = match sent {
            Ok(()) => (self.cursors.get(conv).map(|c| c.last).unwrap_or(last), None),
            Err(FillError::Gone) => return Err(Gone),
            Err(FillError::Refused(e)) => {
                // Not readable by this user: nothing of it is streamed. Any
                // other failure (history unavailable) keeps the cursor at
                // what this stream carried, so the stream never skips: the
                // next live message first fills the gap from history, or
                // ends the stream with UNAVAILABLE if it still cannot.
                if matches!(
                    e,
                    ChatError::PermissionDenied(_)
                        | ChatError::NotFound(_)
                        | ChatError::InvalidArgument(_)
                ) {
                    self.cursors.remove(conv);
                }
                (0, Some(e.to_proto()))
            }
        };
        self.send(server_frame::Frame::CaughtUp(CaughtUp {
            conversation_id: conv.to_string(),
            seq,
            error,
        }))
        .await
    }

    /// Sends the messages of `conv` with `after < seq < before` from history,
    /// oldest first, advancing the cursor past each.
    async fn fill(&mut self, conv: &str, after: u64, before: u64) -> Result<(), FillError> {
        let mut from = after;
        loop {
            let page = self
                .s
                .history
                .get_history(
                    &self.s.user,
                    GetHistoryRequest {
                        conversation_id: conv.to_string(),
                        after_seq: Some(from),
                        before_seq: None,
                        limit: validate::MAX_PAGE,
                    },
                )
                .await
                .map_err(FillError::Refused)?;
            for m in page.messages {
                if m.seq >= before {
                    return Ok(());
                }
                from = m.seq;
                self.emit(m).await.map_err(|_| FillError::Gone)?;
            }
            if !page.has_more {
                return Ok(());
            }
        }
    }

    /// Sends `m` and moves the cursor, when it is past the cursor.
    async fn emit(&mut self, m: Message) -> Result<(), Gone> {
        let conv = m.conversation_id.clone();
        let seq = m.seq;
        let removed_self = m.membership.as_ref().is_some_and(|e| {
            e.change == Change::Removed as i32 && e.user_ids.contains(&self.s.user)
        });
        match self.cursors.get_mut(&conv) {
            Some(c) if seq > c.last => c.last = seq,
            Some(c) if seq >= c.first => return Ok(()),
            Some(_) => {}
            None => {
                self.cursors.insert(
                    conv.clone(),
                    Cursor {
                        first: seq,
                        last: seq,
                    },
                );
            }
        }
        self.send(server_frame::Frame::Message(m)).await?;
        metrics::counter!(MESSAGES_DELIVERED).increment(1);
        if removed_self {
            // Whatever comes after is not for us; a re-add starts afresh.
            self.cursors.remove(&conv);
        }
        Ok(())
    }

    /// After a routing change (a router link lost, or a router that did not
    /// know this gateway's users took partitions), messages may have been
    /// routed past this session: compare every conversation it streams with
    /// history's newest seq and send what it is missing. `Ok(false)` when
    /// history could not be asked (the caller retries).
    async fn recheck(&mut self) -> Result<bool, Gone> {
        if self.cursors.is_empty() {
            return Ok(true);
        }
        let conversations = match self.s.history.list_conversations(&self.s.user).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(user_id = %self.s.user, error = %e, "cannot recheck after a routing change; retrying");
                return Ok(false);
            }
        };
        for conv in conversations {
            let Some(c) = self.cursors.get(&conv.id).copied() else {
                continue;
            };
            if conv.last_seq > c.last {
                tracing::debug!(user_id = %self.s.user, conversation_id = %conv.id, from = c.last, to = conv.last_seq, "sending what routing skipped");
                match self.fill(&conv.id, c.last, u64::MAX).await {
                    Ok(()) => {}
                    Err(FillError::Gone) => return Err(Gone),
                    Err(FillError::Refused(_)) => return Ok(false),
                }
            }
        }
        Ok(true)
    }

    /// A live message, in its `gateway.deliver` hop span (continuing the
    /// router's trace context): see [`State::deliver_message`]. The span is
    /// skipped for a delivery in order (no gap to fill, so nothing inside
    /// logs above DEBUG) when [`trace::hops_observed`] says nothing would
    /// see it (there is one per session per message).
    async fn deliver_live(&mut self, d: &Delivery) -> Result<(), Gone> {
        let m = &d.message;
        if !trace::hops_observed() && !self.has_gap_before(m) {
            return self.deliver_message(m, d.accepted_at_ms).await;
        }
        // Not inside the stream's own span: this is the message's trace.
        let span = tracing::info_span!(
            parent: None,
            "gateway.deliver",
            user_id = %self.s.user,
            conversation_id = %m.conversation_id,
            seq = m.seq,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            parent_span_id = tracing::field::Empty,
        );
        trace::start_from(&span, &d.traceparent);
        self.deliver_message(m, d.accepted_at_ms)
            .instrument(span)
            .await
    }

    /// Whether delivering `m` first fills a gap from history (see
    /// [`State::deliver_message`]).
    fn has_gap_before(&self, m: &Message) -> bool {
        self.cursors
            .get(&m.conversation_id)
            .is_some_and(|c| m.seq > c.last + 1)
    }

    /// A live message: dropped if already sent, preceded by history if
    /// something before it was missed.
    async fn deliver_message(&mut self, m: &Message, accepted_at_ms: i64) -> Result<(), Gone> {
        if let Some(c) = self.cursors.get(&m.conversation_id).copied() {
            if m.seq <= c.last {
                return Ok(());
            }
            if m.seq > c.last + 1 {
                match self.fill(&m.conversation_id, c.last, m.seq).await {
                    Ok(()) => {}
                    Err(FillError::Gone) => return Err(Gone),
                    // Going on would skip the gap for good; ending the stream
                    // lets the client resume exactly where it is.
                    Err(FillError::Refused(e)) => {
                        tracing::warn!(user_id = %self.s.user, conversation_id = %m.conversation_id, error = %e, "cannot fill gap; ending the stream");
                        let _ = self.s.kill.try_send(Status::unavailable(
                            "messages you missed could not be read from history; reconnect and resume from the last seq you received",
                        ));
                        return Err(Gone);
                    }
                }
            }
        }
        self.emit(m.clone()).await?;
        // Past the cursor checks above, and after the gap fill (all below
        // `m.seq`), `emit` has just written `m`: its first delivery here.
        record_e2e(m, accepted_at_ms);
        tracing::debug!(target: HOP, "delivered");
        Ok(())
    }
}

/// Records [`MESSAGE_E2E`] for a message delivered live now: the time since
/// a gateway accepted its write (`accepted_at_ms`, that gateway's clock) or,
/// when that is unknown (0: from an older gateway), since history stamped
/// it (`created_at`, history's clock). A clock behind this gateway's counts
/// as 0.
fn record_e2e(m: &Message, accepted_at_ms: i64) {
    let since_ms = if accepted_at_ms > 0 {
        accepted_at_ms
    } else {
        let Some(created) = &m.created_at else {
            return;
        };
        created
            .seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(created.nanos) / 1_000_000)
    };
    let now_ms = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let seconds = now_ms.saturating_sub(since_ms).max(0) as f64 / 1000.0;
    metrics::histogram!(MESSAGE_E2E).record(seconds);
}

enum FillError {
    Gone,
    Refused(ChatError),
}
