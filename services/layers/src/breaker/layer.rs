//! The breaker as tower middleware: [`CircuitBreakerLayer`] (one breaker
//! per layer), the [`CircuitBreaker`] service that asks it in `poll_ready`
//! and reports each call's outcome, and [`BreakerHandle`], a view of it.

use super::config::BreakerConfig;
use super::evaluator::FailureEvaluator;
use super::refusal::CircuitOpen;
use super::state::{BreakerState, Core, Permit};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::watch;
use tower::{Layer, Service};

/// A cheap view of one breaker, for metrics and tests.
#[derive(Clone)]
pub struct BreakerHandle {
    /// The breaker itself.
    core: Arc<Core>,
}

impl BreakerHandle {
    /// The breaker's name, as in its logs.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// The current state (no lock on the breaker).
    pub fn state(&self) -> BreakerState {
        *self.core.state_tx.borrow()
    }

    /// A receiver that sees every state change, e.g. to export it as a metric.
    pub fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.core.state_tx.subscribe()
    }
}

impl fmt::Debug for BreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerHandle")
            .field("name", &self.name())
            .field("state", &self.state())
            .finish()
    }
}

/// Wraps services in one circuit breaker. Every service this layer wraps
/// shares that one breaker, so build one layer per dependency instance.
pub struct CircuitBreakerLayer<V> {
    /// The breaker shared by every service made by this layer.
    core: Arc<Core>,
    /// Which errors count as failures.
    evaluator: Arc<V>,
}

impl<V> Clone for CircuitBreakerLayer<V> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
            evaluator: self.evaluator.clone(),
        }
    }
}

impl<V> CircuitBreakerLayer<V> {
    /// A closed breaker called `name` (in logs and refusals) that counts the
    /// errors `evaluator` accepts as failures.
    pub fn new(name: impl Into<Arc<str>>, config: BreakerConfig, evaluator: V) -> Self {
        Self {
            core: Arc::new(Core::new(name.into(), config)),
            evaluator: Arc::new(evaluator),
        }
    }

    /// A view of the breaker.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            core: self.core.clone(),
        }
    }
}

impl<S, V> Layer<S> for CircuitBreakerLayer<V> {
    type Service = CircuitBreaker<S, V>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker {
            inner,
            core: self.core.clone(),
            evaluator: self.evaluator.clone(),
            admission: None,
        }
    }
}

/// A service behind a circuit breaker (see the module documentation).
pub struct CircuitBreaker<S, V> {
    /// The service that reaches the dependency.
    inner: S,
    /// The breaker's state, shared with every clone.
    core: Arc<Core>,
    /// Which errors count as failures.
    evaluator: Arc<V>,
    /// The breaker's verdict for the next call, taken in `poll_ready`.
    admission: Option<Result<Permit, CircuitOpen>>,
}

impl<S: Clone, V> Clone for CircuitBreaker<S, V> {
    fn clone(&self) -> Self {
        // A verdict belongs to the call it was taken for, not to the clone.
        Self {
            inner: self.inner.clone(),
            core: self.core.clone(),
            evaluator: self.evaluator.clone(),
            admission: None,
        }
    }
}

impl<S, V> CircuitBreaker<S, V> {
    /// A view of the breaker.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            core: self.core.clone(),
        }
    }
}

pub(super) type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, R, V> Service<R> for CircuitBreaker<S, V>
where
    S: Service<R>,
    S::Response: Send + 'static,
    S::Future: Send + 'static,
    S::Error: From<CircuitOpen> + Send + 'static,
    V: FailureEvaluator<S::Error>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let admission = self.admission.get_or_insert_with(|| self.core.admit());
        if admission.is_err() {
            // Refused: the inner service is not needed (nor woken up).
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(e)) => {
                if let Some(Ok(permit)) = self.admission.take() {
                    permit.finish(self.evaluator.is_failure(&e));
                }
                Poll::Ready(Err(e))
            }
            other => other,
        }
    }

    fn call(&mut self, request: R) -> Self::Future {
        let admission = self
            .admission
            .take()
            .expect("poll_ready must return Ready before call");
        let permit = match admission {
            Ok(permit) => permit,
            Err(open) => return Box::pin(std::future::ready(Err(open.into()))),
        };
        let answer = self.inner.call(request);
        let evaluator = self.evaluator.clone();
        Box::pin(async move {
            let result = answer.await;
            permit.finish(result.as_ref().is_err_and(|e| evaluator.is_failure(e)));
            result
        })
    }
}
