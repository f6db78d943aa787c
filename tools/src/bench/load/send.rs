//! One client's sends: due on a schedule at a target rate, or back to
//! back as its permits (sends in flight) allow; over its `Connect` stream
//! or as unary calls.

use super::clients::{Client, Members};
use super::tally::{acked, code_name, msg_id, Clock, Counters, Ledger};
use super::Via;
use crate::bench::Recorder;
use confab_proto::v1::*;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};

/// When and how one client sends.
pub(super) struct SendPlan {
    pub(super) first: Instant,
    pub(super) end: Instant,
    pub(super) period: Option<Duration>,
    pub(super) via: Via,
    pub(super) body: Arc<str>,
}

/// One client's sends: due every `period` from `first` (or back to back,
/// as permits allow) until `end`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn send_loop(
    index: usize,
    client: Client,
    stream: Option<mpsc::Sender<ClientFrame>>,
    plan: SendPlan,
    clock: Arc<Clock>,
    counters: Arc<Counters>,
    members: Arc<Members>,
    ledger: Arc<Ledger>,
    permits: Vec<Arc<Semaphore>>,
    acks: Vec<Arc<Mutex<Recorder>>>,
) {
    let client = Arc::new(client);
    let permits = permits[index].clone();
    let acks = acks[index].clone();
    let mut ticker = plan.period.map(|p| {
        let mut t = tokio::time::interval_at(plan.first.into(), p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    if ticker.is_none() {
        tokio::time::sleep_until(plan.first.into()).await;
    }
    let mut n: u64 = 0;
    loop {
        let due_at = match ticker.as_mut() {
            Some(t) => t.tick().await.into_std(),
            None => Instant::now(),
        };
        if due_at >= plan.end {
            break;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        if ticker.is_none() && Instant::now() >= plan.end {
            break;
        }
        let due = clock.ns(due_at);
        let conv = client.convs[(n as usize) % client.convs.len()].clone();
        let id = msg_id(due, index, n);
        n += 1;
        counters.total_sent.fetch_add(1, Ordering::Relaxed);
        if clock.in_window(due) {
            counters.sent.fetch_add(1, Ordering::Relaxed);
        }
        match (plan.via, &stream) {
            (Via::Connect, Some(tx)) => {
                // The permit comes back with the ack.
                permit.forget();
                let frame = ClientFrame {
                    frame: Some(client_frame::Frame::Send(SendFrame {
                        reply_to_seq: 0,
                        conversation_id: conv.to_string(),
                        client_msg_id: id,
                        body: plan.body.to_string(),
                    })),
                };
                if tx.send(frame).await.is_err() {
                    counters.total_failed.fetch_add(1, Ordering::Relaxed);
                    counters.error("stream closed".into());
                    break;
                }
            }
            _ => {
                let client = client.clone();
                let counters = counters.clone();
                let clock = clock.clone();
                let members = members.clone();
                let ledger = ledger.clone();
                let acks = acks.clone();
                let body = plan.body.to_string();
                tokio::spawn(async move {
                    let req = client.req(SendMessageRequest {
                        reply_to_seq: 0,
                        conversation_id: conv.to_string(),
                        client_msg_id: id,
                        body,
                    });
                    match client.chat.clone().send_message(req).await {
                        Ok(answer) => {
                            let seq = answer.into_inner().message.map_or(0, |m| m.seq);
                            acked(&counters, &clock, &members, &ledger, &conv, seq, due, &acks)
                        }
                        Err(s) => {
                            counters.total_failed.fetch_add(1, Ordering::Relaxed);
                            counters.error(code_name(s.code()));
                        }
                    }
                    drop(permit);
                });
            }
        }
    }
}
