//! What every part of Confab agrees on: the error kinds and their gRPC
//! codes ([`error`]), the checks on what clients send ([`validate`]),
//! configuration from the environment ([`config`]), the names of the
//! metrics ([`metrics`]), every `CONFAB_*` variable ([`vars`]), and the traits at the seams between gateway,
//! router and history ([`seams`]), which embedded and distributed mode each
//! implement, the opaque `Sync` cursors ([`sync_cursor`]) and presence
//! ([`presence`]).

pub mod config;
pub mod error;
pub mod fold;
pub mod log_budget;
pub mod metrics;
pub mod opaque;
pub mod presence;
pub mod seams;
pub mod search;
pub mod sync_cursor;
pub mod time;
pub mod validate;
pub mod vars;
