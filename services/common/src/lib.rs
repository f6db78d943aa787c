//! What every Confab service shares: configuration from the environment,
//! token checks, the error → gRPC status table, telemetry and shutdown.

pub mod auth;
pub mod breaker;
pub mod config;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod pipeline;
pub mod remote;
pub mod shutdown;
pub mod telemetry;
pub mod trace;
pub mod transport;
pub mod validate;
