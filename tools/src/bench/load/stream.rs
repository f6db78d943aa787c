//! Each client's `Connect` stream (over gRPC, or over the gateway's
//! WebSocket with `LoadOpts::websocket`): opened with a ping, then read
//! until the run ends for acks (over `Connect`) and deliveries.

use super::clients::{Client, Members};
use super::tally::{acked, code_name, due_of, Clock, Counters, Delivery, Ledger};
use crate::bench::Recorder;
use anyhow::{anyhow, Result};
use confab_proto::v1::*;
use confab_tests::client::Inbound;
use futures::StreamExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tonic::Code;

/// Opens `c`'s `Connect` stream and waits for the answer to its first
/// frame (a ping), so the session is registered for live delivery.
pub(super) async fn open_stream(
    c: &Client,
    websocket: Option<std::net::SocketAddr>,
) -> Result<(usize, mpsc::Sender<ClientFrame>, Inbound)> {
    let opened =
        |s: tonic::Status| anyhow!("open stream for {}: {:?} {}", c.user, s.code(), s.message());
    let (tx, mut inbound) = match websocket {
        Some(http) => {
            let token = c.bearer.to_str().unwrap_or_default();
            confab_tests::ws::open(http, token.trim_start_matches("Bearer "))
                .await
                .map_err(opened)?
        }
        None => {
            let (tx, rx) = mpsc::channel::<ClientFrame>(1024);
            let inbound = c
                .chat
                .clone()
                .connect(c.req(tokio_stream::wrappers::ReceiverStream::new(rx)))
                .await
                .map_err(opened)?
                .into_inner();
            (tx, Box::pin(inbound) as Inbound)
        }
    };
    tx.send(ClientFrame {
        frame: Some(client_frame::Frame::Ping(Ping { nonce: 1 })),
    })
    .await
    .map_err(|_| anyhow!("queue the first frame"))?;
    match tokio::time::timeout(Duration::from_secs(20), inbound.next()).await {
        Ok(Some(Ok(ServerFrame {
            frame: Some(server_frame::Frame::Pong(_)),
        }))) => Ok((c.index, tx, inbound)),
        other => Err(anyhow!("{}: no pong on a new stream: {other:?}", c.user)),
    }
}

/// Reads one client's stream until it ends or is aborted: acks (over
/// Connect) and deliveries; with `reads`, answers every delivery with a
/// `read` frame of its seq on that stream.
#[allow(clippy::too_many_arguments)]
pub(super) async fn read_stream(
    mut inbound: Inbound,
    reads: Option<mpsc::Sender<ClientFrame>>,
    clock: Arc<Clock>,
    counters: Arc<Counters>,
    members: Arc<Members>,
    ledger: Arc<Ledger>,
    index: usize,
    permits: Arc<Semaphore>,
    acks: Arc<Mutex<Recorder>>,
    deliveries: Arc<Mutex<Recorder>>,
    body_bytes: usize,
) {
    loop {
        let frame = match inbound.next().await.transpose() {
            Ok(Some(ServerFrame { frame: Some(f) })) => f,
            Ok(Some(_)) => continue,
            Ok(None) => {
                counters.error("stream ended".into());
                break;
            }
            Err(s) => {
                counters.error(format!("stream {}", code_name(s.code())));
                break;
            }
        };
        match frame {
            server_frame::Frame::Ack(a) => {
                permits.add_permits(1);
                let Some(due) = due_of(&a.client_msg_id) else {
                    continue;
                };
                if let Some(e) = a.error {
                    counters.total_failed.fetch_add(1, Ordering::Relaxed);
                    counters.error(code_name(Code::from(e.code)));
                    continue;
                }
                acked(
                    &counters,
                    &clock,
                    &members,
                    &ledger,
                    &a.conversation_id,
                    a.seq,
                    due,
                    &acks,
                );
            }
            server_frame::Frame::Message(m) => {
                if let Some(reads) = &reads {
                    let read = client_frame::Frame::Read(MarkReadRequest {
                        conversation_id: m.conversation_id.clone(),
                        seq: m.seq,
                        private: false,
                    });
                    if reads.send(ClientFrame { frame: Some(read) }).await.is_ok() {
                        counters.reads_sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let Some(due) = due_of(&m.client_msg_id) else {
                    continue;
                };
                if m.body.len() != body_bytes {
                    counters.error("wrong body".into());
                }
                match ledger.deliver(index, &m.conversation_id, m.seq) {
                    Delivery::New => {}
                    Delivery::Duplicate => {
                        counters.error("duplicate delivery".into());
                        continue;
                    }
                    Delivery::OutOfOrder => counters.error("out-of-order delivery".into()),
                }
                counters.total_delivered.fetch_add(1, Ordering::Relaxed);
                clock.timeline.delivery(clock.since(due));
                if clock.in_window(due) {
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut r) = deliveries.lock() {
                        r.record(clock.since(due));
                    }
                }
            }
            server_frame::Frame::CaughtUp(c) => {
                if let Some(e) = c.error {
                    counters.error(format!("caughtUp {}", code_name(Code::from(e.code))));
                }
            }
            server_frame::Frame::Read(r) => match r.error {
                Some(e) => counters.error(format!("read {}", code_name(Code::from(e.code)))),
                None => {
                    counters.reads_answered.fetch_add(1, Ordering::Relaxed);
                }
            },
            // The load sends no syncs; receipts are not what it measures.
            server_frame::Frame::Pong(_)
            | server_frame::Frame::Receipt(_)
            | server_frame::Frame::Typing(_)
            | server_frame::Frame::Presence(_)
            | server_frame::Frame::Sync(_) => {}
        }
    }
}

/// Sends `typing` frames in `conv` on `tx`, started and stopped in turn, as
/// fast as the stream takes them, until `end`; how many it sent.
pub(super) async fn flood_typing(
    tx: mpsc::Sender<ClientFrame>,
    conv: Arc<str>,
    end: std::time::Instant,
) -> u64 {
    let end = tokio::time::Instant::from_std(end);
    let mut sent = 0u64;
    while tokio::time::Instant::now() < end {
        let frame = client_frame::Frame::Typing(TypingFrame {
            conversation_id: conv.to_string(),
            active: sent.is_multiple_of(2),
        });
        let send = tx.send(ClientFrame { frame: Some(frame) });
        match tokio::time::timeout_at(end, send).await {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
    }
    sent
}
