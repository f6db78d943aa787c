//! A breaker's settings, [`BreakerConfig`]: their defaults, the
//! `CONFAB_BREAKER_*` variables they are read from and the ranges those
//! must be in.

use confab_core::config::{parse_in, ConfigError, Env};
use std::time::Duration;

/// When a breaker opens and how it recovers.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// How many of the most recent calls the failure rate is computed over.
    pub window: usize,
    /// Fewest calls in the window before the breaker may open, so that one
    /// early failure does not count as a 100% failure rate.
    pub min_calls: usize,
    /// Failure rate (0.0 to 1.0) at which a failed call opens the breaker.
    pub failure_threshold: f64,
    /// How long calls fail fast before probe calls are let through.
    pub open_for: Duration,
    /// Probe calls let through at a time while half-open; that many
    /// successes in a row close the breaker.
    pub half_open_probes: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: 20,
            min_calls: 5,
            failure_threshold: 0.5,
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
        }
    }
}

/// Failure rate (0 to 1) at which a breaker opens ([`BreakerConfig::failure_threshold`]).
pub const FAILURE_RATE_VAR: &str = confab_core::vars::BREAKER_FAILURE_RATE;
/// Calls the failure rate is computed over ([`BreakerConfig::window`]).
pub const WINDOW_VAR: &str = confab_core::vars::BREAKER_WINDOW;
/// Fewest calls in the window before a breaker may open ([`BreakerConfig::min_calls`]).
pub const MIN_CALLS_VAR: &str = confab_core::vars::BREAKER_MIN_CALLS;
/// Milliseconds a breaker stays open ([`BreakerConfig::open_for`]).
pub const OPEN_MS_VAR: &str = confab_core::vars::BREAKER_OPEN_MS;
/// Probe calls at a time while half-open ([`BreakerConfig::half_open_probes`]).
pub const HALF_OPEN_PROBES_VAR: &str = confab_core::vars::BREAKER_HALF_OPEN_PROBES;

/// Largest window: its outcomes are kept in memory, for every breaker.
const MAX_WINDOW: usize = 10_000;
/// Longest open period, one hour: a longer one keeps a recovered dependency
/// refused for no gain.
const MAX_OPEN_MS: u64 = 3_600_000;
/// Most probe calls at a time while half-open.
const MAX_PROBES: usize = 1_000;

impl BreakerConfig {
    /// Reads the `CONFAB_BREAKER_*` variables; an unset one keeps its
    /// [default](BreakerConfig::default) (the minimum of calls defaults to at
    /// most the window). A value that does not parse or is out of range is a
    /// [`ConfigError`] naming the variable.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let failure_threshold = parse_in(
            env,
            FAILURE_RATE_VAR,
            defaults.failure_threshold,
            0.0..=1.0,
            "a failure rate from 0 to 1, e.g. 0.5",
        )?;
        let calls = |key: &str, default: usize, max: usize| {
            let expected = format!("a number of calls from 1 to {max}");
            parse_in(env, key, default, 1..=max, &expected)
        };
        let window = calls(WINDOW_VAR, defaults.window, MAX_WINDOW)?;
        let min_calls = parse_in(
            env,
            MIN_CALLS_VAR,
            defaults.min_calls.min(window),
            1..=window,
            &format!("a number of calls from 1 to the window ({WINDOW_VAR}={window})"),
        )?;
        let open_ms = parse_in(
            env,
            OPEN_MS_VAR,
            u64::try_from(defaults.open_for.as_millis()).unwrap_or(MAX_OPEN_MS),
            1..=MAX_OPEN_MS,
            &format!("milliseconds from 1 to {MAX_OPEN_MS}"),
        )?;
        let half_open_probes = calls(HALF_OPEN_PROBES_VAR, defaults.half_open_probes, MAX_PROBES)?;
        Ok(Self {
            window,
            min_calls,
            failure_threshold,
            open_for: Duration::from_millis(open_ms),
            half_open_probes,
        })
    }

    /// The same settings brought into range: a window of at least one call,
    /// at least one and at most `window` calls before opening, at least one
    /// probe.
    pub(super) fn normalised(mut self) -> Self {
        self.window = self.window.max(1);
        self.min_calls = self.min_calls.clamp(1, self.window);
        self.half_open_probes = self.half_open_probes.max(1);
        self
    }
}
