//! What the load generator's tasks count and time: the counters, the clock
//! sends are stamped with (the due time travels in the `client_msg_id`),
//! and the booking of an acknowledged send.

use super::clients::Members;
use crate::bench::Recorder;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;

/// Counters every task updates.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) sent: AtomicU64,
    pub(super) acked: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) expected: AtomicU64,
    pub(super) total_sent: AtomicU64,
    pub(super) total_acked: AtomicU64,
    pub(super) total_failed: AtomicU64,
    pub(super) total_expected: AtomicU64,
    pub(super) total_delivered: AtomicU64,
    /// `read` frames sent, and answered without an error (whole run).
    pub(super) reads_sent: AtomicU64,
    pub(super) reads_answered: AtomicU64,
    pub(super) errors: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    pub(super) fn error(&self, what: String) {
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(what).or_default() += 1;
        }
    }
}

/// The clock sends are stamped with.
pub(super) struct Clock {
    pub(super) epoch: Instant,
    /// Window start and end, in ns since `epoch`.
    pub(super) window: (u64, u64),
    /// Acks and deliveries by the second they arrived in.
    pub(super) timeline: super::timeline::Timeline,
}

impl Clock {
    pub(super) fn ns(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    pub(super) fn in_window(&self, t: u64) -> bool {
        t >= self.window.0 && t < self.window.1
    }

    /// Time since `t` (ns since epoch).
    pub(super) fn since(&self, t: u64) -> Duration {
        self.epoch.elapsed().saturating_sub(Duration::from_nanos(t))
    }
}

/// `client_msg_id`: `<due ns>.<client>.<n>`.
pub(super) fn msg_id(due_ns: u64, client: usize, n: u64) -> String {
    format!("{due_ns}.{client}.{n}")
}

/// The due time in a `client_msg_id` this generator made.
pub(super) fn due_of(client_msg_id: &str) -> Option<u64> {
    client_msg_id.split('.').next()?.parse().ok()
}

pub(super) fn code_name(code: Code) -> String {
    confab_core::metrics::code_name(code).to_string()
}

/// What became of every send, as sets: which (conversation, seq) were
/// acknowledged, and which each client's stream delivered, so that a
/// duplicate never hides a loss.
pub(super) struct Ledger {
    /// Seqs acknowledged, by conversation.
    acked: Mutex<HashMap<Arc<str>, Vec<u64>>>,
    /// Per client: what its stream delivered.
    delivered: Vec<Mutex<Stream>>,
}

/// One stream's deliveries, by conversation: the highest seq and every seq.
type Stream = HashMap<Arc<str>, (u64, HashSet<u64>)>;

/// How one delivery compares with the ones before it on its stream.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Delivery {
    /// The first of this seq, after every seq before it.
    New,
    /// This seq again.
    Duplicate,
    /// The first of this seq, after a higher one.
    OutOfOrder,
}

/// What [`Ledger::reconcile`] finds.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Reconciled {
    /// (member, acknowledged message) pairs never delivered.
    pub(super) missing: u64,
    /// Deliveries of messages no ack reported (a send whose answer was an
    /// error or never came, stored all the same).
    pub(super) unacknowledged: u64,
}

impl Ledger {
    pub(super) fn new(clients: usize) -> Self {
        Self {
            acked: Mutex::new(HashMap::new()),
            delivered: (0..clients).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn ack(&self, conv: &str, seq: u64) {
        if let Ok(mut acked) = self.acked.lock() {
            match acked.get_mut(conv) {
                Some(seqs) => seqs.push(seq),
                None => {
                    acked.insert(Arc::from(conv), vec![seq]);
                }
            }
        }
    }

    /// Books `seq` of `conv` delivered to `client`.
    pub(super) fn deliver(&self, client: usize, conv: &str, seq: u64) -> Delivery {
        let Some(Ok(mut delivered)) = self.delivered.get(client).map(|d| d.lock()) else {
            return Delivery::New;
        };
        // The conversation's entry, made once (not a key per delivery).
        if !delivered.contains_key(conv) {
            delivered.insert(Arc::from(conv), Default::default());
        }
        let Some((highest, seen)) = delivered.get_mut(conv) else {
            return Delivery::New;
        };
        if !seen.insert(seq) {
            return Delivery::Duplicate;
        }
        if seq < *highest {
            return Delivery::OutOfOrder;
        }
        *highest = seq;
        Delivery::New
    }

    /// Every acknowledged message against every member's deliveries.
    pub(super) fn reconcile(&self, members: &Members) -> Reconciled {
        let mut out = Reconciled::default();
        let Ok(acked) = self.acked.lock() else {
            return out;
        };
        let empty = HashSet::new();
        let mut acked_sets: HashMap<&str, HashSet<u64>> = HashMap::new();
        for (conv, seqs) in acked.iter() {
            acked_sets.insert(conv, seqs.iter().copied().collect());
        }
        for (conv, seqs) in acked_sets.iter() {
            for &member in members.get(*conv).map(Vec::as_slice).unwrap_or_default() {
                let Some(Ok(delivered)) = self.delivered.get(member).map(|d| d.lock()) else {
                    continue;
                };
                let got = delivered.get(*conv).map(|(_, s)| s).unwrap_or(&empty);
                out.missing += seqs.difference(got).count() as u64;
            }
        }
        for delivered in &self.delivered {
            let Ok(delivered) = delivered.lock() else {
                continue;
            };
            for (conv, (_, seen)) in delivered.iter() {
                let acked = acked_sets.get(&**conv).unwrap_or(&empty);
                out.unacknowledged += seen.difference(acked).count() as u64;
            }
        }
        out
    }
}

/// Books an acknowledged send: `seq` of `conv`.
#[allow(clippy::too_many_arguments)]
pub(super) fn acked(
    counters: &Counters,
    clock: &Clock,
    members: &Members,
    ledger: &Ledger,
    conv: &str,
    seq: u64,
    due: u64,
    acks: &Mutex<Recorder>,
) {
    ledger.ack(conv, seq);
    clock.timeline.ack();
    let fanout = members.get(conv).map_or(0, |m| m.len() as u64);
    counters.total_acked.fetch_add(1, Ordering::Relaxed);
    counters.total_expected.fetch_add(fanout, Ordering::Relaxed);
    if clock.in_window(due) {
        counters.acked.fetch_add(1, Ordering::Relaxed);
        counters.expected.fetch_add(fanout, Ordering::Relaxed);
        if let Ok(mut r) = acks.lock() {
            r.record(clock.since(due));
        }
    }
}

/// The samples of every one of `recorders`, together.
pub(super) fn merged(recorders: &[Arc<Mutex<Recorder>>]) -> Recorder {
    let mut all = Recorder::new();
    for r in recorders {
        if let Ok(r) = r.lock() {
            all.merge(&r);
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A duplicate is not a delivery, so it cannot stand in for a missing
    /// one; a seq after a higher one is out of order; what no ack reported
    /// is counted apart.
    #[test]
    fn deliveries_are_counted_as_sets() {
        let ledger = Ledger::new(2);
        for seq in [2, 3, 4] {
            ledger.ack("c", seq);
        }
        let members: Members = [(Arc::from("c"), vec![0, 1])].into_iter().collect();
        assert_eq!(ledger.deliver(0, "c", 2), Delivery::New);
        assert_eq!(ledger.deliver(0, "c", 4), Delivery::New);
        assert_eq!(ledger.deliver(0, "c", 3), Delivery::OutOfOrder);
        assert_eq!(ledger.deliver(0, "c", 4), Delivery::Duplicate);
        assert_eq!(ledger.deliver(1, "c", 2), Delivery::New);
        assert_eq!(ledger.deliver(1, "c", 2), Delivery::Duplicate);
        assert_eq!(ledger.deliver(1, "c", 9), Delivery::New);
        assert_eq!(
            ledger.reconcile(&members),
            Reconciled {
                // Client 1 never got 3 nor 4; its duplicate of 2 counts for nothing.
                missing: 2,
                unacknowledged: 1,
            }
        );
    }

    #[test]
    fn due_times_round_trip_through_client_msg_ids() {
        let id = msg_id(123_456_789, 7, 42);
        assert_eq!(due_of(&id), Some(123_456_789));
        assert_eq!(due_of("not-ours"), None);
        assert!(id.len() <= 128);
    }
}
