//! How a Confab service runs as a process: serving gRPC ([`server`]) over
//! the configured [`transport`], the process main ([`process`]), shutdown,
//! logs and spans ([`telemetry`], [`trace`]), metrics and health over HTTP
//! ([`endpoints`], [`recorder`]) and readiness.

pub mod compression;
pub mod endpoints;
pub mod process;
pub mod readiness;
pub mod recorder;
pub mod retry;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod trace;
pub mod transport;
