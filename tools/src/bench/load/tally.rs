//! What the load generator's tasks count and time: the counters, the clock
//! sends are stamped with (the due time travels in the `client_msg_id`),
//! and the booking of an acknowledged send.

use crate::bench::Recorder;
use std::collections::{BTreeMap, HashMap};
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

/// Books an acknowledged send.
pub(super) fn acked(
    counters: &Counters,
    clock: &Clock,
    members: &HashMap<Arc<str>, u64>,
    conv: &str,
    due: u64,
    acks: &Mutex<Recorder>,
) {
    let fanout = members.get(conv).copied().unwrap_or(0);
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

    #[test]
    fn due_times_round_trip_through_client_msg_ids() {
        let id = msg_id(123_456_789, 7, 42);
        assert_eq!(due_of(&id), Some(123_456_789));
        assert_eq!(due_of("not-ours"), None);
        assert!(id.len() <= 128);
    }
}
