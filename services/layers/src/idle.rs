//! Closing idle server connections. tonic 0.14 has no idle timeout for
//! server connections (grpc-go's `MaxConnectionIdle`): [`IdleIncoming`]
//! adds one. Each accepted connection counts its open calls ([`CallCounter`]
//! sees each call start and its response body end), and once a connection
//! has had none for the idle timeout — and has received nothing for a short
//! quiet period, so a call that is just arriving is never cut — its reads
//! end, and the server closes it.

use crate::{Answer, Around, AroundLayer, Inner};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpIncoming};

/// Longest quiet period (nothing received) an idle connection must also have
/// had before it is closed: a call whose first bytes were just read is
/// dispatched well within it.
const MAX_QUIET: Duration = Duration::from_secs(1);

/// The open calls of one connection and since when it has had none.
#[derive(Debug)]
struct Conn {
    state: Mutex<ConnCalls>,
}

#[derive(Debug)]
struct ConnCalls {
    /// Calls whose response has not ended.
    open: usize,
    /// When `open` last became 0 (or the connection was accepted).
    idle_since: Instant,
    /// The connection's task, woken when `open` becomes 0 so it arms its
    /// idle timer.
    waker: Option<Waker>,
}

impl Conn {
    fn new() -> Self {
        Self {
            state: Mutex::new(ConnCalls {
                open: 0,
                idle_since: Instant::now(),
                waker: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ConnCalls> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a call until the guard drops.
    fn enter(self: &Arc<Self>) -> CallGuard {
        self.lock().open += 1;
        CallGuard(self.clone())
    }
}

/// One open call of a connection.
#[derive(Debug)]
struct CallGuard(Arc<Conn>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let waker = {
            let mut calls = self.0.lock();
            calls.open = calls.open.saturating_sub(1);
            if calls.open > 0 {
                return;
            }
            calls.idle_since = Instant::now();
            calls.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The connections of one server by peer address, for the layer that counts
/// their calls.
#[derive(Debug, Default)]
struct Registry {
    conns: Mutex<HashMap<SocketAddr, Arc<Conn>>>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection `req` came over.
    fn conn_of<B>(&self, req: &http::Request<B>) -> Option<Arc<Conn>> {
        let peer = crate::peer_of(req)?;
        self.lock().get(&peer).cloned()
    }
}

/// The idle timeout of one connection.
struct IdleClock {
    conn: Arc<Conn>,
    registry: Arc<Registry>,
    peer: Option<SocketAddr>,
    timeout: Duration,
    quiet: Duration,
    /// When bytes last arrived.
    last_read: Instant,
    timer: Pin<Box<Sleep>>,
    /// The deadline `timer` is set to.
    armed: Option<Instant>,
    /// The connection was closed for idleness: reads end.
    closed: bool,
}

impl IdleClock {
    /// Ready once the connection has had no call for the timeout and
    /// received nothing for the quiet period.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let idle_since = {
            let mut calls = self.conn.lock();
            if calls
                .waker
                .as_ref()
                .is_none_or(|w| !w.will_wake(cx.waker()))
            {
                calls.waker = Some(cx.waker().clone());
            }
            if calls.open > 0 {
                return Poll::Pending;
            }
            calls.idle_since
        };
        let deadline = (idle_since + self.timeout).max(self.last_read + self.quiet);
        if Instant::now() >= deadline {
            return Poll::Ready(());
        }
        if self.armed != Some(deadline) {
            self.timer.as_mut().reset(deadline);
            self.armed = Some(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for IdleClock {
    fn drop(&mut self) {
        if let Some(peer) = self.peer {
            let mut conns = self.registry.lock();
            if conns.get(&peer).is_some_and(|c| Arc::ptr_eq(c, &self.conn)) {
                conns.remove(&peer);
            }
        }
    }
}

/// An accepted connection whose reads end once it has been idle for the
/// timeout (see the module documentation).
pub struct IdleIo<IO> {
    inner: IO,
    idle: Option<IdleClock>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for IdleIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(idle) = &mut this.idle {
            if idle.closed {
                return Poll::Ready(Ok(()));
            }
            if idle.poll_idle(cx).is_ready() {
                idle.closed = true;
                tracing::debug!(peer = ?idle.peer, timeout_ms = idle.timeout.as_millis() as u64,
                    "closing a connection idle for the idle timeout");
                // End of input: the server ends the connection.
                return Poll::Ready(Ok(()));
            }
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Some(idle), Poll::Ready(Ok(()))) = (&mut this.idle, &read) {
            if buf.filled().len() > before {
                idle.last_read = Instant::now();
            }
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for IdleIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<IO: Connected> Connected for IdleIo<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The accepted TCP connections of a server, each an [`IdleIo`] watched for
/// idleness, and the layer ([`CallCounter`]) that counts their calls.
pub struct IdleIncoming {
    inner: TcpIncoming,
    registry: Arc<Registry>,
    timeout: Option<Duration>,
}

impl IdleIncoming {
    /// Connections of `inner`, closed after `timeout` without a call
    /// (`None`: never). Serve them with [`IdleIncoming::layer`] in front of
    /// the services.
    pub fn new(inner: TcpIncoming, timeout: Option<Duration>) -> Self {
        Self {
            inner,
            registry: Arc::default(),
            timeout,
        }
    }

    /// The layer that tells this incoming's connections about their calls.
    pub fn layer(&self) -> AroundLayer<CallCounter> {
        CallCounter {
            registry: self.timeout.map(|_| self.registry.clone()),
        }
        .layer()
    }

    fn wrap(&self, stream: TcpStream) -> IdleIo<TcpStream> {
        let Some(timeout) = self.timeout else {
            return IdleIo {
                inner: stream,
                idle: None,
            };
        };
        let conn = Arc::new(Conn::new());
        let peer = stream.peer_addr().ok();
        if let Some(peer) = peer {
            self.registry.lock().insert(peer, conn.clone());
        }
        let now = Instant::now();
        IdleIo {
            inner: stream,
            idle: Some(IdleClock {
                conn,
                registry: self.registry.clone(),
                peer,
                timeout,
                quiet: timeout.min(MAX_QUIET),
                last_read: now,
                timer: Box::pin(tokio::time::sleep_until(now + timeout)),
                armed: None,
                closed: false,
            }),
        }
    }
}

impl Stream for IdleIncoming {
    type Item = io::Result<IdleIo<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(stream))) => Poll::Ready(Some(Ok(self.wrap(stream)))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Counts each call on its connection from its arrival until its response
/// (for a stream: the whole stream) has ended. Without an idle timeout it
/// does nothing.
#[derive(Debug, Clone)]
pub struct CallCounter {
    registry: Option<Arc<Registry>>,
}

impl Around for CallCounter {
    fn around<S: Inner<B>, B>(&self, inner: &mut S, req: http::Request<B>) -> Answer<S::Error> {
        let guard = self
            .registry
            .as_ref()
            .and_then(|r| r.conn_of(&req))
            .map(|conn| conn.enter());
        let call = inner.call(req);
        match guard {
            None => Box::pin(call),
            Some(guard) => Box::pin(async move {
                let response = call.await?;
                Ok(response.map(|body| {
                    tonic::body::Body::new(CountedBody {
                        inner: body,
                        _guard: guard,
                    })
                }))
            }),
        }
    }
}

/// A response body that keeps its call counted until it is done.
struct CountedBody {
    inner: tonic::body::Body,
    _guard: CallGuard,
}

impl http_body::Body for CountedBody {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
