//! A run over time: acks and deliveries by the second they arrived in, and
//! the delivery latency of each second, for the plot `make bench` draws of
//! every run (a broker or a table that slows as it fills shows as a slope).

use crate::bench::Recorder;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One second of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PerSecond {
    /// Seconds since the run began sending (the warm-up included).
    pub second: u32,
    /// Acknowledgements that arrived in this second.
    pub acked: u64,
    /// Deliveries that arrived in this second, and their send→delivery
    /// latency.
    pub delivered: u64,
    pub delivery_p50_us: u64,
    pub delivery_p99_us: u64,
}

#[derive(Default, Clone)]
struct Second {
    acked: u64,
    delivery: Recorder,
}

/// Shared by every task of a run; each thread books into a shard of its
/// own, so tasks on different threads never wait for each other.
pub(super) struct Timeline {
    epoch: Instant,
    shards: Vec<Mutex<Vec<Second>>>,
}

/// Shards: more than the runtime's worker threads.
const SHARDS: usize = 16;

thread_local! {
    static SHARD: usize = {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS
    };
}

impl Timeline {
    pub(super) fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            shards: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    fn book(&self, f: impl FnOnce(&mut Second)) {
        let second = self.epoch.elapsed().as_secs() as usize;
        let shard = SHARD.with(|s| *s);
        if let Some(Ok(mut seconds)) = self.shards.get(shard).map(|s| s.lock()) {
            if seconds.len() <= second {
                seconds.resize_with(second + 1, Second::default);
            }
            f(&mut seconds[second]);
        }
    }

    /// An acknowledgement arrived now.
    pub(super) fn ack(&self) {
        self.book(|s| s.acked += 1);
    }

    /// A delivery arrived now, `latency` after its send was due.
    pub(super) fn delivery(&self, latency: Duration) {
        self.book(|s| s.delivery.record(latency));
    }

    /// Every second so far, the shards added up.
    pub(super) fn seconds(&self) -> Vec<PerSecond> {
        let mut all: Vec<Second> = Vec::new();
        for shard in &self.shards {
            let Ok(seconds) = shard.lock() else { continue };
            if all.len() < seconds.len() {
                all.resize_with(seconds.len(), Second::default);
            }
            for (sum, s) in all.iter_mut().zip(seconds.iter()) {
                sum.acked += s.acked;
                sum.delivery.merge(&s.delivery);
            }
        }
        all.into_iter()
            .enumerate()
            .map(|(i, s)| {
                let latency = s.delivery.summary();
                PerSecond {
                    second: u32::try_from(i).unwrap_or(u32::MAX),
                    acked: s.acked,
                    delivered: s.delivery.len(),
                    delivery_p50_us: latency.p50_us,
                    delivery_p99_us: latency.p99_us,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_add_up_across_threads() {
        let t = std::sync::Arc::new(Timeline::new(Instant::now()));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        t.ack();
                        t.delivery(Duration::from_micros(1000 + i));
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().expect("thread");
        }
        let seconds = t.seconds();
        assert_eq!(seconds.iter().map(|s| s.acked).sum::<u64>(), 400);
        assert_eq!(seconds.iter().map(|s| s.delivered).sum::<u64>(), 400);
        let busiest = seconds
            .iter()
            .max_by_key(|s| s.delivered)
            .expect("a second");
        assert!(
            (1000..1100).contains(&busiest.delivery_p50_us)
                && busiest.delivery_p50_us <= busiest.delivery_p99_us,
            "{busiest:?}"
        );
    }
}
