//! [`CircuitOpen`]: the error of a call refused because its breaker is
//! open, its message (when it will be retried) and its conversions to
//! UNAVAILABLE.

use std::sync::Arc;
use std::time::Duration;
use tonic::Status;

/// The error of a call refused because its breaker is open. The caller
/// turns it into UNAVAILABLE (`Status` and `ChatError` have `From` impls).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} is failing; {}", retry_hint(*.retry_in))]
pub struct CircuitOpen {
    /// The breaker's name: which dependency is failing.
    pub name: Arc<str>,
    /// How long until calls are tried again; zero when probe calls are
    /// already checking whether the dependency recovered.
    pub retry_in: Duration,
}

impl CircuitOpen {
    /// The same refusal under another name, e.g. a public one without the
    /// internal address.
    pub fn renamed(&self, name: &str) -> Self {
        Self {
            name: name.into(),
            retry_in: self.retry_in,
        }
    }
}

fn retry_hint(retry_in: Duration) -> String {
    if retry_in.is_zero() {
        "it is being retried now; retry shortly".to_string()
    } else {
        // Rounded up, so a caller waiting that long finds it retried.
        let ms = retry_in.as_micros().div_ceil(1000);
        format!("it will be retried in {ms} ms")
    }
}

impl From<CircuitOpen> for Status {
    /// UNAVAILABLE with the refusal as message and as source, so that a
    /// caller can tell a refusal from an UNAVAILABLE the dependency sent.
    fn from(open: CircuitOpen) -> Self {
        let mut status = Status::unavailable(open.to_string());
        status.set_source(Arc::new(open));
        status
    }
}

impl From<CircuitOpen> for confab_core::error::ChatError {
    fn from(open: CircuitOpen) -> Self {
        Self::Unavailable(open.to_string())
    }
}
