//! `Connect` over WebSocket (`/v1/connect`, docs/browser.md). This only
//! translates: WebSocket messages into the session's client frames, its
//! server frames into messages, and the status a session ends with into a
//! close code (`4000 +` the gRPC code). The session is the one `Connect`
//! runs ([`crate::ChatService::open_session`]), with its limits, its slow
//! reader detection and its shutdown.
//!
//! What is the WebSocket's own: choosing the frame format and reading the
//! token from the subprotocols (a browser cannot set headers on a
//! WebSocket, and a URL ends up in access logs), the size of a message
//! (1009), a message of the wrong kind (1003), and keepalive: the gateway
//! pings, and a peer it has not heard from in two ping intervals is closed
//! with 4004 and its session ended.

use super::{Format, Shared};
use crate::guard::Caller;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use confab_proto::v1::ClientFrame;
use futures::{FutureExt, SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::Status;
use tracing::Instrument;

/// The prefix of the subprotocol that carries the token.
pub const BEARER: &str = "confab.bearer.";

/// Close code of a session that ended with gRPC status `code`.
pub const STATUS_CLOSE_BASE: u16 = 4000;
/// Close code of a message over `CONFAB_MAX_MESSAGE_BYTES` (RFC 6455).
pub const TOO_BIG: u16 = 1009;
/// Close code of a message of the kind the format does not use (RFC 6455).
pub const UNSUPPORTED: u16 = 1003;
/// Close code of a message that breaks the WebSocket protocol (RFC 6455).
pub const PROTOCOL: u16 = 1002;
/// Close code of a peer that stopped answering pings: DEADLINE_EXCEEDED.
pub const NO_PONG: u16 = STATUS_CLOSE_BASE + tonic::Code::DeadlineExceeded as u16;

/// Most frames written together before a flush.
const MAX_BATCH: usize = 64;

/// Frames are written to the socket once this much is buffered (and at
/// each flush): what lets a batch go out in one write.
const WRITE_BUFFER: usize = 16 * 1024;

/// `frame` as a WebSocket message of `format`.
fn message(format: Format, frame: &confab_proto::v1::ServerFrame) -> Message {
    match format {
        Format::Proto => Message::Binary(format.encode(frame).into()),
        // The JSON mapping writes UTF-8.
        Format::Json => Message::Text(
            String::from_utf8_lossy(&format.encode(frame))
                .into_owned()
                .into(),
        ),
    }
}

/// What each socket reads into at a time.
const READ_BUFFER: usize = 4 * 1024;

/// Longest close reason WebSocket allows, in bytes.
const MAX_REASON: usize = 123;

/// The frame format and the token the client offered as subprotocols.
fn offered(headers: &HeaderMap) -> (Option<Format>, Option<String>) {
    let items = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    let mut format = None;
    let mut token = None;
    for item in items {
        if let Some(t) = item.strip_prefix(BEARER) {
            token.get_or_insert_with(|| t.to_string());
        } else if let Some(f) = Format::named(item) {
            format.get_or_insert(f);
        }
    }
    (format, token)
}

/// `GET /v1/connect`: admits the session as the guard admits `Connect`
/// (the token, a stream slot) and upgrades. A refusal is sent after the
/// upgrade, as a close code with its reason, because a browser sees
/// nothing of a refused handshake.
pub(super) async fn upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let (format, token) = offered(&headers);
    let admitted = match (format, token) {
        (None, _) => Err(Status::invalid_argument(
            "offer a frame format as a subprotocol: confab.v1.proto or confab.v1.json",
        )),
        (Some(_), None) => Err(Status::unauthenticated(
            "missing token: offer it as the subprotocol confab.bearer.<token>",
        )),
        (Some(_), Some(token)) => shared.guard.admit_stream(&token),
    };
    let span = crate::guard::call_span(crate::session::CONNECT_PATH, &headers);
    let limit = shared.max_message_bytes;
    ws.protocols(confab_proto::websocket::FORMATS.map(Format::subprotocol))
        .max_message_size(limit)
        .max_frame_size(limit)
        // tungstenite reads into a buffer of 128 KiB by default, for each
        // socket, touched by the first read: most of what an idle session
        // would cost. Frames are small; a large one grows its own buffer.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| {
            run(
                socket,
                shared,
                format.unwrap_or(Format::Proto),
                admitted,
                peer,
            )
            .instrument(span)
        })
}

/// A close message: `code` with `reason` cut to what WebSocket allows.
fn close(code: u16, reason: &str) -> Message {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: reason[..end].into(),
    }))
}

/// The close message of a session that ended with `status`.
pub fn close_for(status: &Status) -> Message {
    close(STATUS_CLOSE_BASE + status.code() as u16, status.message())
}

/// What a message the client sent is for the session: a frame, the reason
/// it is not one (INVALID_ARGUMENT, which ends the session as an
/// undecodable `Connect` frame does), or a close of the WebSocket's own.
enum Read {
    Frame(Result<ClientFrame, Status>),
    Close(Message),
    /// Keepalive; nothing for the session.
    Nothing,
    /// The client closed, or the connection is gone.
    Gone,
}

fn read(format: Format, msg: Option<Result<Message, axum::Error>>, limit: usize) -> Read {
    let undecodable = |why: String| {
        Status::invalid_argument(format!("{}: {why}", confab_proto::codec::UNDECODABLE))
    };
    match msg {
        None | Some(Ok(Message::Close(_))) => Read::Gone,
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Read::Nothing,
        Some(Ok(Message::Binary(data))) if format == Format::Proto => {
            Read::Frame(format.decode(&data).map_err(undecodable))
        }
        Some(Ok(Message::Text(text))) if format == Format::Json => {
            Read::Frame(format.decode(text.as_bytes()).map_err(undecodable))
        }
        Some(Ok(Message::Binary(_) | Message::Text(_))) => Read::Close(close(
            UNSUPPORTED,
            &format!(
                "this WebSocket speaks {}: send each frame as a {} message",
                format.subprotocol(),
                format.message_kind()
            ),
        )),
        Some(Err(e)) => match e.into_inner().downcast::<tungstenite::Error>() {
            Ok(e) => match *e {
                tungstenite::Error::Capacity(_) => Read::Close(close(
                    TOO_BIG,
                    &format!("a message is over CONFAB_MAX_MESSAGE_BYTES ({limit} bytes)"),
                )),
                tungstenite::Error::Protocol(p) => Read::Close(close(PROTOCOL, &p.to_string())),
                _ => Read::Gone,
            },
            Err(_) => Read::Gone,
        },
    }
}

/// How long a close waits for the client's close in answer.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

type Sink = futures::stream::SplitSink<WebSocket, Message>;
type Source = futures::stream::SplitStream<WebSocket>;

/// Sends the close `msg`, then reads (and drops) what the client still
/// sends until its close in answer, for at most [`CLOSE_LINGER`]: closing
/// the connection at once could reset it, losing the close frame (and its
/// code) when the client had sent something the gateway had not read.
async fn closing(mut sink: Sink, mut stream: Source, msg: Message) {
    if sink.send(msg).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Runs one WebSocket: its session's frames out, the client's frames in
/// (one at a time, so a client that sends faster than its session takes
/// frames is held back by TCP, as a gRPC stream is), and the pings.
async fn run(
    socket: WebSocket,
    shared: Arc<Shared>,
    format: Format,
    admitted: Result<Caller, Status>,
    peer: SocketAddr,
) {
    let (mut sink, mut stream) = socket.split();
    let caller = match admitted {
        Ok(caller) => caller,
        Err(status) => {
            tracing::debug!(code = ?status.code(), reason = status.message(), %peer, "WebSocket refused");
            return closing(sink, stream, close_for(&status)).await;
        }
    };
    let Some(slot) = caller.take_stream_slot() else {
        let status = Status::internal("the gateway admitted a session without a stream slot");
        return closing(sink, stream, close_for(&status)).await;
    };
    let (tx, rx) = mpsc::channel(1);
    // Whether client messages are still read: not after one the session
    // could not take in, nor once the session is over.
    let mut reading = true;
    let mut frames = shared.service.open_session(
        caller.user,
        caller.valid_until,
        slot,
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)),
        Some(peer),
    );
    let ping_every = shared.ws_ping;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = tokio::time::Instant::now();
    let mut pending: Option<Result<ClientFrame, Status>> = None;
    loop {
        tokio::select! {
            biased;
            frame = frames.next() => {
                // This frame, and whatever others are ready, go out in one
                // write: a busy session makes one system call per batch,
                // not one per frame.
                let mut next = frame;
                for _ in 0..MAX_BATCH {
                    match next {
                        Some(Ok(frame)) => {
                            if sink.feed(message(format, &frame)).await.is_err() {
                                return;
                            }
                        }
                        Some(Err(status)) => {
                            let _ = sink.flush().await;
                            return closing(sink, stream, close_for(&status)).await;
                        }
                        None => {
                            let _ = sink.flush().await;
                            return closing(sink, stream, close(1000, "")).await;
                        }
                    }
                    match frames.next().now_or_never() {
                        Some(more) => next = more,
                        None => break,
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
            permit = tx.reserve(), if pending.is_some() => {
                let keep_reading = match (permit, pending.take()) {
                    (Ok(permit), Some(item)) => {
                        // The session ends on a frame it could not take
                        // in: nothing more is read.
                        let ok = item.is_ok();
                        permit.send(item);
                        ok
                    }
                    // The session is over; its status is on its way.
                    _ => false,
                };
                reading = keep_reading;
            }
            msg = stream.next(), if pending.is_none() && reading => {
                heard = tokio::time::Instant::now();
                match read(format, msg, shared.max_message_bytes) {
                    Read::Frame(frame) => pending = Some(frame),
                    Read::Nothing => {}
                    Read::Close(msg) => {
                        tracing::debug!(%peer, "WebSocket closed for a bad message");
                        return closing(sink, stream, msg).await;
                    }
                    Read::Gone => {
                        let _ = sink.close().await;
                        return;
                    }
                }
            }
            _ = ping.tick() => {
                // A frame waiting for its session was heard: while the
                // session takes no frames (busy, or pausing a typing flood),
                // the socket is not read, and the peer's pongs wait behind
                // that frame.
                if pending.is_some() {
                    heard = tokio::time::Instant::now();
                }
                if heard.elapsed() >= ping_every * 2 {
                    tracing::debug!(%peer, "WebSocket peer stopped answering pings; closing");
                    let reason = format!(
                        "no answer to pings for {} ms; reconnect and resume",
                        (ping_every * 2).as_millis()
                    );
                    // Nobody will answer the close either: do not wait.
                    let _ = tokio::time::timeout(CLOSE_LINGER, sink.send(close(NO_PONG, &reason))).await;
                    return;
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_format_and_token_come_from_the_subprotocols() {
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("confab.v1.json, confab.bearer.a.b-c_d"),
        );
        assert_eq!(
            offered(&h),
            (Some(Format::Json), Some("a.b-c_d".to_string()))
        );
        assert_eq!(offered(&HeaderMap::new()), (None, None));
    }

    #[test]
    fn close_reasons_fit_a_close_frame() {
        let long = "é".repeat(100);
        let Message::Close(Some(frame)) = close_for(&Status::unauthenticated(long)) else {
            panic!("a close frame");
        };
        assert_eq!(frame.code, 4016);
        assert!(frame.reason.len() <= MAX_REASON);
    }
}
