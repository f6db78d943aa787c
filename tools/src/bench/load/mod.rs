//! The load generator: N clients over M conversations (a mix of DIRECT and
//! GROUP), sending at a target total rate or as fast as a window of sends in
//! flight allows, over `Connect` streams or unary `SendMessage` calls, while
//! every client holds a `Connect` stream and counts what is delivered to it.
//!
//! Latency is measured from when a send was due (its scheduled time at a
//! target rate, so a stall is charged to every send it delays rather than
//! hidden: no coordinated omission) to its acknowledgement and to each
//! delivery. The due time travels in the `client_msg_id`, so any process
//! can time a delivery without shared state.
//!
//! Here the run from start to report; the clients and their conversations
//! in `clients`, each client's sends in `send`, its stream (acks and
//! deliveries) in `stream`, the counting they share in `tally`.

mod clients;
mod send;
mod stream;
mod tally;
mod timeline;

use super::{per_sec, CpuMark, Latency, ProcStats, Recorder};
use anyhow::{anyhow, bail, Context, Result};
use confab_proto::v1::*;
use futures::StreamExt;
use send::{send_loop, SendPlan};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stream::{open_stream, read_stream};
use tally::{merged, Clock, Counters, Ledger};
pub use timeline::PerSecond;
use tokio::sync::{mpsc, Semaphore};

/// How clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// `SendFrame`s on the client's `Connect` stream, acked on it.
    Connect,
    /// Unary `SendMessage` calls.
    Unary,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOpts {
    /// A name for the report (`embedded connect max`).
    pub label: String,
    /// The gateway (or `confab dev`, or the echo server).
    pub target: SocketAddr,
    /// The HS256 secret tokens are minted with.
    pub secret: String,
    /// Prefix of user ids and titles, unique per run.
    pub run_id: String,
    /// Clients, one user and one HTTP/2 connection each.
    pub clients: usize,
    /// Conversations.
    pub conversations: usize,
    /// Which share of the conversations are GROUPs (0..=1).
    pub group_share: f64,
    /// Members per GROUP.
    pub group_size: usize,
    /// How sends travel.
    pub via: Via,
    /// Total messages per second over all clients; `None`: as fast as
    /// `in_flight` allows.
    pub rate: Option<f64>,
    /// Sends each client may have unacknowledged.
    pub in_flight: usize,
    /// Sending before the measurement starts (not recorded).
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// Body size in bytes.
    pub body_bytes: usize,
    /// How long to wait, after sending stops, for the last acks and
    /// deliveries.
    pub drain: Duration,
    /// Whether the target is Confab: conversations are created and every
    /// client holds a `Connect` stream. `false` for the echo server, which
    /// only answers `SendMessage`.
    pub confab: bool,
    /// Processes whose CPU and memory are reported (label, pid).
    pub watch: Vec<(String, u32)>,
    /// Servers of several processes whose CPU is reported with their
    /// children's (label, root pid: PostgreSQL's postmaster).
    pub watch_servers: Vec<(String, u32)>,
    /// Which share of the clients (0..=1) send a `read` frame for every
    /// message delivered to them, as a client showing each message at once
    /// does (over `Connect` only).
    pub read_share: f64,
    /// Clients that also send `typing` frames as fast as their stream takes
    /// them, from the start to the end of the run (over `Connect` only):
    /// each frame is validated and all but 4 relays a second are dropped
    /// by the gateway, so this measures what a flood costs the others.
    pub typing_flooders: usize,
    /// The HTTP listener (docs/browser.md) whose WebSocket carries every
    /// client's session instead of a gRPC `Connect` stream; unary calls
    /// stay gRPC. `None`: gRPC.
    pub websocket: Option<SocketAddr>,
}

impl LoadOpts {
    /// Defaults against `target`: 100 clients, 50 conversations (20% GROUPs
    /// of 5), `Connect`, as fast as possible with 32 sends in flight each,
    /// 2 s warm-up, 10 s measured, 100-byte bodies.
    pub fn new(label: &str, target: SocketAddr, secret: &str) -> Self {
        Self {
            label: label.to_string(),
            target,
            secret: secret.to_string(),
            run_id: format!("bench{}x{}", std::process::id(), unique()),
            clients: 100,
            conversations: 50,
            group_share: 0.2,
            group_size: 5,
            via: Via::Connect,
            rate: None,
            in_flight: 32,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(10),
            body_bytes: 100,
            drain: Duration::from_secs(15),
            confab: true,
            watch: Vec::new(),
            watch_servers: Vec::new(),
            read_share: 0.0,
            typing_flooders: 0,
            websocket: None,
        }
    }
}

/// The streams and conversations of the first `n` clients with both.
fn clients_flooding(
    streams: &[Option<mpsc::Sender<ClientFrame>>],
    convs: &[Option<Arc<str>>],
    n: usize,
) -> Vec<(mpsc::Sender<ClientFrame>, Arc<str>)> {
    streams
        .iter()
        .zip(convs)
        .filter_map(|(s, c)| Some((s.clone()?, c.clone()?)))
        .take(n)
        .collect()
}

fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    nanos % 1_000_000 * 100 + N.fetch_add(1, Ordering::Relaxed) % 100
}

/// What a run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LoadReport {
    pub label: String,
    pub via: Option<Via>,
    pub clients: usize,
    /// Clients that had a conversation to send in.
    pub senders: usize,
    pub direct_conversations: usize,
    pub group_conversations: usize,
    pub group_size: usize,
    pub body_bytes: usize,
    /// The target total rate; `None`: as fast as possible.
    pub target_rate: Option<f64>,
    pub in_flight: usize,
    /// The measured window.
    pub seconds: f64,
    /// Sends due in the window, and what became of them.
    pub sent: u64,
    pub acked: u64,
    /// Deliveries (one per member's stream) of messages sent in the window.
    pub delivered: u64,
    /// Deliveries due for the window's acknowledged messages.
    pub expected_deliveries: u64,
    pub sent_per_sec: f64,
    pub acked_per_sec: f64,
    pub delivered_per_sec: f64,
    /// Deliveries per acknowledged message (members per conversation).
    pub fanout: f64,
    /// Send → acknowledgement.
    pub ack: Latency,
    /// Send → delivery to each member's stream.
    pub delivery: Latency,
    /// Failures by gRPC code (`RESOURCE_EXHAUSTED`, `stream UNAVAILABLE`,
    /// `missing delivery`, ...), whole run.
    pub errors: BTreeMap<String, u64>,
    /// Whole run, warm-up included: sends, acks, deliveries due and done.
    pub total_sent: u64,
    pub total_acked: u64,
    pub total_expected_deliveries: u64,
    pub total_delivered: u64,
    /// `read` frames the reading clients sent (see [`LoadOpts::read_share`])
    /// and those answered with a read state, whole run.
    #[serde(default)]
    pub reads_sent: u64,
    #[serde(default)]
    pub reads_answered: u64,
    /// `typing` frames the flooding clients sent (see
    /// [`LoadOpts::typing_flooders`]).
    #[serde(default)]
    pub typing_frames: u64,
    /// CPU and memory of the watched processes and of this client, over
    /// the window.
    pub processes: Vec<ProcStats>,
    /// CPU time per message of each of `processes`, over the same window.
    #[serde(default)]
    pub cpu_per_message: Vec<CpuPerMessage>,
    /// The run second by second, from the first send (the warm-up
    /// included) to the last delivery.
    #[serde(default)]
    pub per_second: Vec<PerSecond>,
}

/// A process's CPU time per message over a run's window: what Confab
/// spends on a message, which carries to other machines better than
/// messages/s on this one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CpuPerMessage {
    pub label: String,
    /// µs of CPU per message sent and acknowledged in the window.
    pub per_message_us: f64,
    /// µs of CPU per delivery (one per member's stream) in the window.
    pub per_delivery_us: f64,
}

impl CpuPerMessage {
    /// Each process's CPU over `acked` messages and `delivered` deliveries.
    pub fn of(processes: &[ProcStats], acked: u64, delivered: u64) -> Vec<Self> {
        let per = |cpu: f64, n: u64| if n == 0 { 0.0 } else { cpu * 1e6 / n as f64 };
        processes
            .iter()
            .map(|p| Self {
                label: p.label.clone(),
                per_message_us: per(p.cpu_seconds, acked),
                per_delivery_us: per(p.cpu_seconds, delivered),
            })
            .collect()
    }
}

impl LoadReport {
    /// The µs of CPU per message of the processes labelled `labels`
    /// together (`None` if one of them was not watched).
    pub fn cpu_us_per_message(&self, labels: &[&str]) -> Option<f64> {
        labels
            .iter()
            .map(|l| {
                self.cpu_per_message
                    .iter()
                    .find(|c| c.label == *l)
                    .map(|c| c.per_message_us)
            })
            .sum()
    }

    /// Acknowledged sends that were never delivered to some member, or
    /// deliveries beyond what was due (both whole-run).
    pub fn delivery_mismatch(&self) -> i64 {
        self.total_expected_deliveries as i64 - self.total_delivered as i64
    }
}

/// Runs the load and reports.
pub async fn run(opts: &LoadOpts) -> Result<LoadReport> {
    if opts.clients < 2 || opts.conversations == 0 {
        bail!("need at least 2 clients and 1 conversation");
    }
    if opts.in_flight == 0 {
        bail!("in_flight must be at least 1");
    }
    let groups = ((opts.conversations as f64) * opts.group_share.clamp(0.0, 1.0)).round() as usize;

    let mut clients = clients::connect(opts).await?;
    let (members, direct) = clients::create_conversations(opts, &mut clients, groups).await?;
    let members = Arc::new(members);
    let ledger = Arc::new(Ledger::new(clients.len()));
    // Typing flooders send no messages: what is measured is the others'.
    let sends = |c: &clients::Client| !c.convs.is_empty() && c.index >= opts.typing_flooders;
    let senders = clients.iter().filter(|c| sends(c)).count();

    let counters = Arc::new(Counters::default());
    let setup_done = Instant::now();
    let start = setup_done + Duration::from_millis(200);
    let clock = Arc::new(Clock {
        epoch: setup_done,
        window: (
            (start + opts.warmup - setup_done).as_nanos() as u64,
            (start + opts.warmup + opts.duration - setup_done).as_nanos() as u64,
        ),
        timeline: timeline::Timeline::new(start),
    });
    let window_start = start + opts.warmup;
    let end = window_start + opts.duration;

    // Streams: every client listens (and, over Connect, sends) on one.
    let mut streams: Vec<Option<mpsc::Sender<ClientFrame>>> = Vec::new();
    let mut readers = Vec::new();
    let permits: Vec<Arc<Semaphore>> = (0..clients.len())
        .map(|_| Arc::new(Semaphore::new(opts.in_flight)))
        .collect();
    let ack_recorders: Vec<Arc<Mutex<Recorder>>> = (0..clients.len())
        .map(|_| Arc::new(Mutex::new(Recorder::new())))
        .collect();
    let delivery_recorders: Vec<Arc<Mutex<Recorder>>> = (0..clients.len())
        .map(|_| Arc::new(Mutex::new(Recorder::new())))
        .collect();
    if opts.confab {
        let opened = futures::stream::iter(clients.iter())
            .map(|c| open_stream(c, opts.websocket))
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await;
        let mut by_index: Vec<Option<(mpsc::Sender<ClientFrame>, confab_tests::client::Inbound)>> =
            (0..clients.len()).map(|_| None).collect();
        for o in opened {
            let (i, tx, inbound) = o?;
            by_index[i] = Some((tx, inbound));
        }
        let reading = (clients.len() as f64 * opts.read_share.clamp(0.0, 1.0)).ceil() as usize;
        for (i, s) in by_index.into_iter().enumerate() {
            let (tx, inbound) = s.context("every stream opened")?;
            let reads = (i < reading).then(|| tx.clone());
            streams.push(Some(tx));
            readers.push(tokio::spawn(read_stream(
                inbound,
                reads,
                clock.clone(),
                counters.clone(),
                members.clone(),
                ledger.clone(),
                i,
                permits[i].clone(),
                ack_recorders[i].clone(),
                delivery_recorders[i].clone(),
                opts.body_bytes,
            )));
        }
    } else {
        streams.resize_with(clients.len(), || None);
    }

    // The conversation each client floods with typing frames, if it does.
    let flood_convs: Vec<Option<Arc<str>>> =
        clients.iter().map(|c| c.convs.first().cloned()).collect();
    // Send.
    let body: Arc<str> = "x".repeat(opts.body_bytes).into();
    let period = opts
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(senders as f64 / r));
    let mut sending = Vec::new();
    for (pos, c) in clients.into_iter().filter(|c| sends(c)).enumerate() {
        // Spread the clients' first sends over one period.
        let first = start
            + period
                .map(|p| p.mul_f64(pos as f64 / senders as f64))
                .unwrap_or_default();
        let (index, stream) = (c.index, streams[c.index].clone());
        sending.push(tokio::spawn(send_loop(
            index,
            c,
            stream,
            SendPlan {
                first,
                end,
                period,
                via: opts.via,
                body: body.clone(),
            },
            clock.clone(),
            counters.clone(),
            members.clone(),
            ledger.clone(),
            permits.clone(),
            ack_recorders.clone(),
        )));
    }

    let flooding: Vec<_> = clients_flooding(&streams, &flood_convs, opts.typing_flooders)
        .into_iter()
        .map(|(tx, conv)| tokio::spawn(stream::flood_typing(tx, conv, end)))
        .collect();
    tokio::time::sleep_until(window_start.into()).await;
    let mut marks: Vec<(String, CpuMark)> = opts
        .watch
        .iter()
        .map(|(label, pid)| (label.clone(), CpuMark::now(*pid)))
        .chain(
            opts.watch_servers
                .iter()
                .map(|(label, root)| (label.clone(), CpuMark::server(*root))),
        )
        .collect();
    marks.push(("bench client".into(), CpuMark::now(std::process::id())));
    tokio::time::sleep_until(end.into()).await;
    let processes: Vec<ProcStats> = marks.iter().map(|(l, m)| m.stats(l)).collect();
    for s in sending {
        s.await.context("sender task")?;
    }
    let mut typing_frames = 0;
    for f in flooding {
        typing_frames += f.await.context("typing flood task")?;
    }

    // Drain: every send answered and every due delivery made, or time out.
    let answered = || {
        counters.total_acked.load(Ordering::Relaxed) + counters.total_failed.load(Ordering::Relaxed)
    };
    let drained = confab_tests::poll(
        "every send answered and every due delivery made",
        opts.drain,
        Duration::from_millis(20),
        || {
            let sent = counters.total_sent.load(Ordering::Relaxed);
            let due = counters.total_expected.load(Ordering::Relaxed);
            let done = counters.total_delivered.load(Ordering::Relaxed);
            std::future::ready(Ok((answered() >= sent && done >= due).then_some(())))
        },
    )
    .await;
    // Deliveries still missing are counted below; unanswered sends here.
    let unanswered = counters
        .total_sent
        .load(Ordering::Relaxed)
        .saturating_sub(answered());
    if drained.is_err() && unanswered > 0 {
        *counters
            .errors
            .lock()
            .map_err(|_| anyhow!("errors lock"))?
            .entry("unanswered send".into())
            .or_default() += unanswered;
    }
    // The readers stop before the streams close: a stream that the server
    // ends because its client hung up (a WebSocket's close) is the run's
    // end, not an error of it, and a reader still polling would count it.
    for r in &readers {
        r.abort();
    }
    for r in readers {
        let _ = r.await;
    }
    drop(streams);
    let delivery = merged(&delivery_recorders);
    let ack = merged(&ack_recorders);
    let c = &counters;
    let window = opts.duration;
    let total_expected = c.total_expected.load(Ordering::Relaxed);
    let total_delivered = c.total_delivered.load(Ordering::Relaxed);
    let mut errors = c.errors.lock().map_err(|_| anyhow!("errors lock"))?.clone();
    // Deliveries as sets: every member of every acknowledged message's
    // conversation, against what each stream delivered (a duplicate or a
    // delivery of an unacknowledged send never stands in for a missing one).
    let reconciled = ledger.reconcile(&members);
    if reconciled.missing > 0 {
        errors.insert("missing delivery".into(), reconciled.missing);
    }
    if reconciled.unacknowledged > 0 {
        errors.insert(
            "delivery of an unacknowledged send".into(),
            reconciled.unacknowledged,
        );
    }
    let acked = c.acked.load(Ordering::Relaxed);
    let expected = c.expected.load(Ordering::Relaxed);
    let cpu_per_message = CpuPerMessage::of(&processes, acked, c.delivered.load(Ordering::Relaxed));
    Ok(LoadReport {
        label: opts.label.clone(),
        via: Some(opts.via),
        clients: opts.clients,
        senders,
        direct_conversations: direct,
        group_conversations: opts.conversations - direct,
        group_size: opts.group_size,
        body_bytes: opts.body_bytes,
        target_rate: opts.rate,
        in_flight: opts.in_flight,
        seconds: window.as_secs_f64(),
        sent: c.sent.load(Ordering::Relaxed),
        acked,
        delivered: c.delivered.load(Ordering::Relaxed),
        expected_deliveries: expected,
        sent_per_sec: per_sec(c.sent.load(Ordering::Relaxed), window),
        acked_per_sec: per_sec(acked, window),
        delivered_per_sec: per_sec(c.delivered.load(Ordering::Relaxed), window),
        fanout: if acked == 0 {
            0.0
        } else {
            expected as f64 / acked as f64
        },
        ack: ack.summary(),
        delivery: delivery.summary(),
        errors,
        total_sent: c.total_sent.load(Ordering::Relaxed),
        total_acked: c.total_acked.load(Ordering::Relaxed),
        total_expected_deliveries: total_expected,
        total_delivered,
        reads_sent: c.reads_sent.load(Ordering::Relaxed),
        reads_answered: c.reads_answered.load(Ordering::Relaxed),
        typing_frames,
        processes,
        cpu_per_message,
        per_second: clock.timeline.seconds(),
    })
}

/// The report as a few lines of text.
pub fn describe(r: &LoadReport) -> String {
    let rate = r
        .target_rate
        .map(|x| format!("{x:.0}/s"))
        .unwrap_or_else(|| format!("max ({} in flight per client)", r.in_flight));
    let mut s = format!(
        "{}: {} clients ({} sending), {} DIRECT + {} GROUP(x{}) conversations, {:?}, {rate}, {} B bodies, {:.0} s\n  \
         sent {:.0}/s, acked {:.0}/s, delivered {:.0}/s (fanout {:.2})\n  \
         send->ack      p50/p90/p99/p99.9/max {}\n  \
         send->delivery p50/p90/p99/p99.9/max {}\n",
        r.label,
        r.clients,
        r.senders,
        r.direct_conversations,
        r.group_conversations,
        r.group_size,
        r.via.unwrap_or(Via::Connect),
        r.body_bytes,
        r.seconds,
        r.sent_per_sec,
        r.acked_per_sec,
        r.delivered_per_sec,
        r.fanout,
        r.ack.brief(),
        r.delivery.brief(),
    );
    if !r.errors.is_empty() {
        s.push_str(&format!("  errors: {:?}\n", r.errors));
    }
    for (p, c) in r.processes.iter().zip(&r.cpu_per_message) {
        s.push_str(&format!(
            "  {}: {:.2} cores ({:.1} µs per message, {:.1} per delivery), RSS {} MiB (peak {} MiB)\n",
            p.label,
            p.cores,
            c.per_message_us,
            c.per_delivery_us,
            p.rss_kib / 1024,
            p.peak_rss_kib / 1024
        ));
    }
    s
}
