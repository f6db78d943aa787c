//! One `Connect` stream. A single task owns the session's state, so frames
//! from the client and live messages are handled one at a time. Delivery
//! keeps a cursor per conversation: it never repeats a seq, and fills any
//! gap from history before going on, which is also how resume works.
//!
//! Here: the session's state and its loop (client frames, live messages,
//! routing changes, shutdown and token expiry, one at a time). `frames`
//! answers the client's frames (send, resume, ping); `delivery` sends
//! messages in order behind each conversation's cursor.

mod delivery;
mod frames;
mod reads;
mod typing;

use crate::hub::Hub;
use crate::submit::Submitter;
use crate::user_limits::{Limiter, StreamGuard};
use confab_auth::STREAM_EXPIRED;
use confab_core::seams::{HistoryApi, Live};
use confab_core::validate::SizeLimits;
use confab_proto::v1::{server_frame, ClientFrame, ServerFrame};
use confab_runtime::shutdown::Signal;
use futures::{Stream, StreamExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, Semaphore};
use tonic::Status;

/// A client's frames, from either transport: a gRPC `Connect` stream's
/// body, or a WebSocket's messages (`crate::web::ws`). An `Err` is a frame
/// that could not be taken in, or a broken stream.
pub type Inbound = std::pin::Pin<Box<dyn Stream<Item = Result<ClientFrame, Status>> + Send>>;

/// The next frame of `inbound`: `Ok(None)` when the client half-closed.
async fn next_frame(inbound: &mut Inbound) -> Result<Option<ClientFrame>, Status> {
    inbound.next().await.transpose()
}

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
    pub limits: SizeLimits,
    /// Frames to the client, boxed: a Tokio channel allocates its slots
    /// 32 at a time when it is made, and a `ServerFrame` is 424 bytes, so
    /// unboxed they were a third of an idle stream's memory (12.4 KiB per
    /// idle stream on the gateway boxed, 17.9 KiB unboxed; see
    /// docs/benchmarks-log.md, change 15).
    pub out: mpsc::Sender<Box<ServerFrame>>,
    /// Ends the client's stream with a status at once, dropping frames
    /// still queued (a slow reader, an expired token).
    pub kill: mpsc::Sender<Status>,
    /// Ends the client's stream with a status after the frames already
    /// queued (a shutdown: acks of accepted sends go out first).
    pub end: mpsc::Sender<Status>,
    /// Capacity of the live queue.
    pub queue: usize,
    /// Least time between this stream's reads of one conversation going to
    /// the log ([`reads`]).
    pub read_spacing: Duration,
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
    /// Where the stream comes from, for the log of a frame refused.
    pub peer: Option<std::net::SocketAddr>,
}

/// The method a session serves, as logged.
pub const CONNECT_PATH: &str = "/confab.v1.Chat/Connect";

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
    pub async fn run(self, inbound: Inbound) {
        self.run_until(inbound, None).await
    }

    /// Like [`Session::run`], but ends the stream with UNAUTHENTICATED
    /// ([`STREAM_EXPIRED`]) at `valid_until` (the token's
    /// [`confab_auth::Authenticated::valid_until`]), whether or not
    /// the client sends anything.
    pub async fn run_until(self, mut inbound: Inbound, valid_until: Option<SystemTime>) {
        let deadline = valid_until.map(|t| {
            tokio::time::Instant::now() + t.duration_since(SystemTime::now()).unwrap_or_default()
        });
        let expired = expiry(deadline);
        tokio::pin!(expired);
        let mut state = State {
            cursors: HashMap::new(),
            s: self,
            in_flight: Arc::new(Semaphore::new(MAX_SENDS_IN_FLIGHT)),
            indicators: typing::Indicators::default(),
            reads: reads::Waiting::default(),
        };
        // Live delivery starts after the first frame, so that a first
        // `resume` is always applied before any live message.
        let first = tokio::select! {
            f = next_frame(&mut inbound) => f,
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
                frame = next_frame(&mut inbound), if inbound_open && state.indicators.paused_until.is_none() => match frame {
                    Ok(Some(frame)) => state.handle(frame).await,
                    // Half-closed: keep delivering until the client hangs up.
                    Ok(None) => { inbound_open = false; Ok(()) }
                    Err(status) => return state.inbound_failed(&status),
                },
                msg = live.recv() => match msg {
                    Some(Live::Message(m)) => state.deliver_live(&m).await,
                    // Not sequenced: passed on as it comes, never filled.
                    Some(Live::Receipt(r)) => state.send(server_frame::Frame::Receipt((*r).clone())).await,
                    Some(Live::Typing(t)) => state.send(server_frame::Frame::Typing((*t).clone())).await,
                    Some(Live::Presence(p)) => state.send(server_frame::Frame::Presence((*p).clone())).await,
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
                () = sleep_until_some(state.indicators.paused_until) => {
                    state.indicators.paused_until = None;
                    Ok(())
                }
                () = sleep_until_some(state.indicators.next_expiry()) => {
                    state.expire_typing();
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
    /// Typing indicators this session relayed.
    indicators: typing::Indicators,
    /// Reads waiting behind a read of the same conversation.
    reads: reads::Waiting,
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

    /// The client's side of the stream failed. A frame the gateway could
    /// not take in (over the message size limit, not protobuf, broken
    /// compression) ends the stream with its refusal, as a unary call's
    /// would be answered (`confab_layers::decoding`), after the frames
    /// already queued (the answers to the frames before it); anything else
    /// is a broken stream, a normal disconnect.
    fn inbound_failed(&self, status: &Status) {
        use confab_layers::decoding::{log_refusal, refusal};
        if let Some(answer) = refusal(status, self.s.max_message_bytes) {
            log_refusal(CONNECT_PATH, self.s.peer, &answer);
            let _ = self.s.end.try_send(answer);
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
            .send(Box::new(ServerFrame { frame: Some(frame) }))
            .await
            .map_err(|_| Gone)
    }
}
