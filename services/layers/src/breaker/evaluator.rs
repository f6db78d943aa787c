//! Which errors count as failures of the dependency: the
//! [`FailureEvaluator`] trait (any `Fn(&E) -> bool` is one) and
//! [`GrpcFailures`] for gRPC clients.

use tonic::{Code, Status};

/// Decides whether an error says the dependency is failing (counts towards
/// opening the breaker) or only that this request was refused.
pub trait FailureEvaluator<E>: Send + Sync + 'static {
    /// True if `error` counts as a failure of the dependency.
    fn is_failure(&self, error: &E) -> bool;
}

impl<E, F> FailureEvaluator<E> for F
where
    F: Fn(&E) -> bool + Send + Sync + 'static,
{
    fn is_failure(&self, error: &E) -> bool {
        self(error)
    }
}

/// The evaluator for gRPC clients: the dependency is failing when it is
/// unreachable (transport errors, UNAVAILABLE) or too slow (DEADLINE_EXCEEDED,
/// or CANCELLED, which is what a server reports when the deadline it was sent
/// ran out). Answers about the request itself (NOT_FOUND, PERMISSION_DENIED,
/// INVALID_ARGUMENT, ...) show a healthy dependency and do not count.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcFailures;

impl FailureEvaluator<Status> for GrpcFailures {
    fn is_failure(&self, status: &Status) -> bool {
        // Statuses made up by the client from an I/O or protocol error carry
        // a source; those parsed from the server's answer do not.
        std::error::Error::source(status).is_some()
            || matches!(
                status.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
            )
    }
}
