//! The breaker itself: its states, the window of recent outcomes, the
//! transitions between closed, open and half-open (each a log line and
//! metrics), and the permit a call let through reports its outcome with.

use super::config::BreakerConfig;
use super::refusal::CircuitOpen;
use confab_core::metrics::{BREAKER_REJECTED, BREAKER_STATE, BREAKER_TRANSITIONS};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Where a breaker is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; their outcomes are counted.
    Closed,
    /// Calls fail at once. It stays open until the first call after the open
    /// period, which moves it to half-open.
    Open,
    /// A limited number of probe calls go through; the others fail at once.
    HalfOpen,
}

impl BreakerState {
    /// A stable lowercase name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The value of the [`BREAKER_STATE`] gauge: 0 closed, 1 half-open,
    /// 2 open.
    pub fn metric_value(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}

/// One breaker's state, shared by its services and handles.
pub(super) struct Core {
    /// Which dependency this breaker guards, for logs and refusals.
    pub(super) name: Arc<str>,
    /// The settings, normalised.
    config: BreakerConfig,
    /// The phase, changed under this lock only.
    inner: Mutex<Inner>,
    /// The current state, for `state()` and subscribers.
    pub(super) state_tx: watch::Sender<BreakerState>,
}

struct Inner {
    /// Where the breaker is, with what that phase counts.
    phase: Phase,
    /// Bumped on every transition, so that a call that started in an earlier
    /// phase does not count in this one.
    generation: u64,
}

enum Phase {
    /// Outcomes of the most recent calls.
    Closed(Window),
    /// Calls are refused until then.
    Open { until: Instant },
    /// Probe calls under way, and how many succeeded so far.
    HalfOpen { in_flight: usize, succeeded: usize },
}

/// The outcomes (true = failed) of the last `capacity` calls.
struct Window {
    /// Oldest first.
    outcomes: VecDeque<bool>,
    /// How many of `outcomes` are failures.
    failures: usize,
    /// How many outcomes are kept.
    capacity: usize,
}

impl Window {
    fn new(capacity: usize) -> Self {
        Self {
            outcomes: VecDeque::with_capacity(capacity),
            failures: 0,
            capacity,
        }
    }

    fn push(&mut self, failed: bool) {
        if self.outcomes.len() == self.capacity && self.outcomes.pop_front() == Some(true) {
            self.failures -= 1;
        }
        self.outcomes.push_back(failed);
        self.failures += usize::from(failed);
    }

    fn failure_rate(&self) -> f64 {
        self.failures as f64 / self.outcomes.len().max(1) as f64
    }
}

impl Core {
    /// A closed breaker called `name`, with `config` brought into range.
    pub(super) fn new(name: Arc<str>, config: BreakerConfig) -> Self {
        let config = config.normalised();
        let (state_tx, _) = watch::channel(BreakerState::Closed);
        metrics::gauge!(BREAKER_STATE, "breaker" => name.to_string())
            .set(BreakerState::Closed.metric_value());
        Core {
            name,
            inner: Mutex::new(Inner {
                phase: Phase::Closed(Window::new(config.window)),
                generation: 0,
            }),
            config,
            state_tx,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent even if a holder panicked: every
        // critical section is a handful of assignments.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets a call through (with a permit to report its outcome) or refuses it.
    pub(super) fn admit(self: &Arc<Self>) -> Result<Permit, CircuitOpen> {
        let mut inner = self.lock();
        let now = Instant::now();
        if let Phase::Open { until } = inner.phase {
            if now < until {
                return Err(self.refusal(until - now));
            }
            self.transition(
                &mut inner,
                Phase::HalfOpen {
                    in_flight: 0,
                    succeeded: 0,
                },
            );
            tracing::info!(breaker = %self.name, probes = self.config.half_open_probes, "circuit breaker half-open; letting probe calls through");
        }
        let probe = match &mut inner.phase {
            Phase::HalfOpen { in_flight, .. } if *in_flight >= self.config.half_open_probes => {
                return Err(self.refusal(Duration::ZERO));
            }
            Phase::HalfOpen { in_flight, .. } => {
                *in_flight += 1;
                true
            }
            _ => false,
        };
        Ok(Permit {
            core: self.clone(),
            generation: inner.generation,
            probe,
            finished: false,
        })
    }

    fn refusal(&self, retry_in: Duration) -> CircuitOpen {
        metrics::counter!(BREAKER_REJECTED, "breaker" => self.name.to_string()).increment(1);
        CircuitOpen {
            name: self.name.clone(),
            retry_in,
        }
    }

    /// Counts the outcome of a call let through by `permit`: failed, or
    /// `None` when it was dropped before it finished.
    fn record(&self, permit: &Permit, failed: Option<bool>) {
        let mut inner = self.lock();
        if inner.generation != permit.generation {
            return;
        }
        enum Next {
            Stay,
            Open { failure_rate: f64, calls: usize },
            Close { probes: usize },
        }
        let next = match &mut inner.phase {
            Phase::Closed(window) => match failed {
                None => Next::Stay,
                Some(failed) => {
                    window.push(failed);
                    let calls = window.outcomes.len();
                    let failure_rate = window.failure_rate();
                    // Only a failure opens it: a dependency that just
                    // answered is not refused on the strength of older calls.
                    if failed
                        && calls >= self.config.min_calls
                        && failure_rate >= self.config.failure_threshold
                    {
                        Next::Open {
                            failure_rate,
                            calls,
                        }
                    } else {
                        Next::Stay
                    }
                }
            },
            Phase::HalfOpen {
                in_flight,
                succeeded,
            } => {
                *in_flight = in_flight.saturating_sub(1);
                match failed {
                    // A probe that never finished says nothing; its slot is free.
                    None => Next::Stay,
                    Some(true) => Next::Open {
                        failure_rate: 1.0 / (*succeeded + 1) as f64,
                        calls: *succeeded + 1,
                    },
                    Some(false) => {
                        *succeeded += 1;
                        if *succeeded >= self.config.half_open_probes {
                            Next::Close { probes: *succeeded }
                        } else {
                            Next::Stay
                        }
                    }
                }
            }
            // Opening bumps the generation, so no permit of this one exists.
            Phase::Open { .. } => Next::Stay,
        };
        match next {
            Next::Stay => {}
            Next::Open {
                failure_rate,
                calls,
            } => self.open(&mut inner, failure_rate, calls),
            Next::Close { probes } => {
                self.transition(&mut inner, Phase::Closed(Window::new(self.config.window)));
                tracing::info!(breaker = %self.name, probes, failure_rate = 0.0, "circuit breaker closed; the dependency answers again");
            }
        }
    }

    fn open(&self, inner: &mut Inner, failure_rate: f64, calls: usize) {
        let until = Instant::now() + self.config.open_for;
        self.transition(inner, Phase::Open { until });
        tracing::warn!(
            breaker = %self.name,
            failure_rate,
            calls,
            open_for_ms = self.config.open_for.as_millis() as u64,
            "circuit breaker opened; calls fail fast until it is retried"
        );
    }

    fn transition(&self, inner: &mut Inner, phase: Phase) {
        let state = match phase {
            Phase::Closed(_) => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        };
        inner.phase = phase;
        inner.generation += 1;
        self.state_tx.send_replace(state);
        // Under the lock, so the gauge ends at the last state.
        metrics::gauge!(BREAKER_STATE, "breaker" => self.name.to_string())
            .set(state.metric_value());
        metrics::counter!(
            BREAKER_TRANSITIONS,
            "breaker" => self.name.to_string(),
            "to" => state.as_str()
        )
        .increment(1);
    }
}

/// A call let through; reports its outcome once, or on drop that it never
/// finished (freeing its probe slot).
pub(super) struct Permit {
    /// The breaker that let it through.
    core: Arc<Core>,
    /// The breaker's generation when it was let through.
    generation: u64,
    /// Whether it holds one of the half-open probe slots.
    probe: bool,
    /// Whether the outcome was reported.
    finished: bool,
}

impl Permit {
    pub(super) fn finish(mut self, failed: bool) {
        self.finished = true;
        self.core.record(&self, Some(failed));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.finished && self.probe {
            self.core.record(self, None);
        }
    }
}
