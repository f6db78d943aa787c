//! Confab's tower layers, one per module, each with the one job its name
//! says. `confab_runtime`'s server composes [`idle`], [`grpc_metrics`] and
//! [`decoding`] in front of every gRPC service and puts
//! [`service_token`]'s check on internal services; clients put [`breaker`]
//! in front of their calls.

pub mod breaker;
pub mod decoding;
pub mod grpc_metrics;
pub mod idle;
pub mod service_token;

/// The address a request came from, over TCP or TLS.
pub fn peer_of<B>(req: &http::Request<B>) -> Option<std::net::SocketAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
}

use std::task::{Context, Poll};
use tonic::body::Body;

/// The future of a layer's service that answers some calls itself.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

/// The service an [`Around`] wraps: a server's routes.
pub trait Inner<B>:
    tower::Service<
    http::Request<B>,
    Response = http::Response<Body>,
    Future: Send + 'static,
    Error: Send + 'static,
>
{
}

impl<B, S> Inner<B> for S
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
}

/// What an [`Around`] answers a call with.
pub type Answer<E> = BoxFuture<Result<http::Response<Body>, E>>;

/// What one of this crate's server layers does with each call, around the
/// service it wraps; [`AroundLayer`] makes it a tower layer.
pub trait Around: Clone {
    /// Answers `req`: calls `inner` (which is ready) and may change or
    /// replace its answer.
    fn around<S: Inner<B>, B>(&self, inner: &mut S, req: http::Request<B>) -> Answer<S::Error>;

    /// This as a tower layer.
    fn layer(self) -> AroundLayer<Self> {
        AroundLayer(self)
    }
}

/// The tower layer of an [`Around`].
#[derive(Debug, Clone)]
pub struct AroundLayer<A>(A);

impl<A: Clone, S> tower::Layer<S> for AroundLayer<A> {
    type Service = Wrapped<A, S>;

    fn layer(&self, inner: S) -> Wrapped<A, S> {
        Wrapped {
            around: self.0.clone(),
            inner,
        }
    }
}

/// A service wrapped by an [`Around`].
#[derive(Debug, Clone)]
pub struct Wrapped<A, S> {
    around: A,
    inner: S,
}

impl<A: Around, S: Inner<B>, B> tower::Service<http::Request<B>> for Wrapped<A, S> {
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Answer<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.around.around(&mut self.inner, req)
    }
}
