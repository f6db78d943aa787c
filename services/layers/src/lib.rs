//! Confab's tower layers, one per module, each with the one job its name
//! says; [`confab_runtime`'s server] composes them in front of every gRPC
//! service, and clients put [`breaker`] in front of their calls.

pub mod breaker;
pub mod grpc_metrics;
pub mod idle;
pub mod message_limit;
pub mod service_token;

/// The future of a layer's service that answers some calls itself.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;
