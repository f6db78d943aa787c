//! A circuit breaker as a tower middleware. It watches the outcomes of calls
//! to one dependency; when too many of the recent ones failed it opens, and
//! calls fail at once instead of waiting on a dependency that is down. After a
//! pause a few probe calls go through, and their outcome closes or re-opens it.
//!
//! Every transition is a log line and shows in the metrics
//! [`confab_core::metrics::BREAKER_STATE`] and [`confab_core::metrics::BREAKER_TRANSITIONS`];
//! refused calls count in [`confab_core::metrics::BREAKER_REJECTED`]. The settings
//! come from `CONFAB_BREAKER_*` variables ([`BreakerConfig::from_env`]).
//!
//! Modules: `config` (the settings and their variables), `state` (the state
//! machine over a window of recent outcomes), `layer` (the tower layer, the
//! service and the handle), `evaluator` (which errors count as failures),
//! `refusal` (the error of a refused call).

mod config;
mod evaluator;
mod layer;
mod refusal;
mod state;
#[cfg(test)]
mod tests;

pub use self::config::{
    BreakerConfig, FAILURE_RATE_VAR, HALF_OPEN_PROBES_VAR, MIN_CALLS_VAR, OPEN_MS_VAR, WINDOW_VAR,
};
pub use self::evaluator::{FailureEvaluator, GrpcFailures};
pub use self::layer::{BreakerHandle, CircuitBreaker, CircuitBreakerLayer};
pub use self::refusal::CircuitOpen;
pub use self::state::BreakerState;
