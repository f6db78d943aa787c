//! The gateway: Confab's public gRPC API. It authenticates and validates,
//! turns writes into ingress records, serves reads from history, and holds
//! the clients' live `Connect` sessions.

pub mod distributed;
pub mod guard;
pub mod hub;
pub mod router_links;
pub mod service;
pub mod session;
pub mod submit;
pub mod sync;
pub mod user_limits;
pub mod web;

pub use hub::Hub;
pub use service::{server, ChatService, GatewayConfig};
