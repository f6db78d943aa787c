//! How Confab's gRPC servers and internal clients use their connections:
//! TLS (rustls) with certificate and key files, mutual TLS between
//! services, HTTP/2 limits (concurrent streams per connection, an idle
//! timeout) and the largest decoded message the gateway accepts.
//!
//! [`Transport`] is what a server is started with
//! ([`crate::grpc::serve_with_transport`]); [`ClientTls`] is what an internal
//! client (history reads, router links) connects with.
//!
//! tonic 0.14 has no idle timeout for server connections (grpc-go's
//! `MaxConnectionIdle`): its builder offers keepalive pings, a maximum
//! connection age and per-request timeouts only. [`IdleIncoming`] adds one:
//! each accepted connection counts its open calls (a layer sees each call
//! start and its response body end), and once a connection has had none for
//! the idle timeout — and has received nothing for a short quiet period, so
//! a call that is just arriving is never cut — its reads end, and the server
//! closes it. That is a plain close, not an HTTP/2 GOAWAY (tonic gives no
//! handle on a single connection to send one); clients reconnect on their
//! next call.

use crate::config::{parse_or, ConfigError, Env};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
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
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming, TlsConnectInfo};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The server's certificate chain (PEM); with [`TLS_KEY_VAR`], the server
/// speaks TLS, and internal clients present it as their client certificate.
pub const TLS_CERT_VAR: &str = "CONFAB_TLS_CERT";
/// The private key (PEM, PKCS#8, PKCS#1 or SEC1) of [`TLS_CERT_VAR`].
pub const TLS_KEY_VAR: &str = "CONFAB_TLS_KEY";
/// CA certificates (PEM) that client certificates must be signed by; when
/// set, the server refuses TLS handshakes without such a certificate (mTLS).
pub const TLS_CLIENT_CA_VAR: &str = "CONFAB_TLS_CLIENT_CA";
/// CA certificates (PEM) that internal clients verify history and routers
/// with; when set, internal links use TLS (`https`).
pub const TLS_CA_VAR: &str = "CONFAB_TLS_CA";
/// The name internal clients expect in the peer's certificate, instead of the
/// host of each address.
pub const TLS_SERVER_NAME_VAR: &str = "CONFAB_TLS_SERVER_NAME";
/// Concurrent HTTP/2 streams (calls) per connection.
pub const HTTP2_MAX_STREAMS_VAR: &str = "CONFAB_HTTP2_MAX_STREAMS";
/// Milliseconds a connection may stay without any call before it is closed;
/// `0` never closes idle connections.
pub const HTTP2_IDLE_TIMEOUT_VAR: &str = "CONFAB_HTTP2_IDLE_TIMEOUT_MS";
/// Largest decoded request message the gateway accepts, in bytes.
pub const MAX_MESSAGE_BYTES_VAR: &str = "CONFAB_MAX_MESSAGE_BYTES";

/// Longest TLS handshake a server waits for.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest quiet period (nothing received) an idle connection must also have
/// had before it is closed: a call whose first bytes were just read is
/// dispatched well within it.
const MAX_QUIET: Duration = Duration::from_secs(1);

/// A certificate, key or CA file that cannot be used; the message never
/// contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// Every source of `e`, joined: tonic and rustls put the reason in a source.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// The certificates of a PEM file; an error unless there is at least one.
fn certificates(pem: &[u8]) -> Result<usize, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("not a PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(TlsError(
            "no certificate in it (expected -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs.len())
}

/// Checks that `pem` holds a private key, without ever showing it.
fn private_key(pem: &[u8]) -> Result<(), TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map(|_| ()).map_err(|_| {
        TlsError("no private key in it (expected a PEM PKCS#8, PKCS#1 or SEC1 key)".into())
    })
}

/// A server's TLS: its identity and, for mutual TLS, the CA its clients'
/// certificates must be signed by. `Debug` does not show the key.
#[derive(Clone)]
pub struct ServerTls {
    identity: Identity,
    client_ca: Option<Certificate>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("identity", &"<redacted>")
            .field("requires_client_cert", &self.client_ca.is_some())
            .finish()
    }
}

impl ServerTls {
    /// TLS with the certificate chain `cert` and its private `key` (PEM);
    /// with `client_ca`, every client must present a certificate signed by
    /// one of its certificates. Checked now: the files parse, the key fits
    /// the certificate, and rustls accepts them.
    pub fn from_pem(cert: &[u8], key: &[u8], client_ca: Option<&[u8]>) -> Result<Self, TlsError> {
        certificates(cert).map_err(|e| TlsError(format!("certificate: {e}")))?;
        private_key(key).map_err(|e| TlsError(format!("key: {e}")))?;
        if let Some(ca) = client_ca {
            certificates(ca).map_err(|e| TlsError(format!("client CA: {e}")))?;
        }
        let tls = Self {
            identity: Identity::from_pem(cert, key),
            client_ca: client_ca.map(Certificate::from_pem),
        };
        tonic::transport::Server::builder()
            .tls_config(tls.config())
            .map_err(|e| TlsError(format!("rustls refuses it: {}", chain(&e))))?;
        Ok(tls)
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_cert(&self) -> bool {
        self.client_ca.is_some()
    }

    /// tonic's server TLS settings.
    pub fn config(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new()
            .identity(self.identity.clone())
            .timeout(TLS_HANDSHAKE_TIMEOUT);
        match &self.client_ca {
            Some(ca) => config.client_ca_root(ca.clone()),
            None => config,
        }
    }
}

/// How a gRPC server uses its connections.
#[derive(Debug, Clone)]
pub struct Transport {
    /// TLS, or plaintext HTTP/2 when `None`.
    pub tls: Option<ServerTls>,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`: calls one connection may
    /// have open at once. A client at the limit waits for a call to end
    /// before it opens another (tonic and other h2 clients queue); a stream
    /// over it is reset with `REFUSED_STREAM`.
    pub max_concurrent_streams: u32,
    /// How long a connection may have no open call before it is closed;
    /// `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Largest decoded request message, in bytes; a larger one is answered
    /// with `RESOURCE_EXHAUSTED`. Applied by the gateway to the Chat API.
    pub max_message_bytes: usize,
}

impl Transport {
    /// Default streams per connection on the gateway: a client's `Connect`
    /// stream and its unary calls fit many times over.
    pub const PUBLIC_MAX_STREAMS: u32 = 100;
    /// Default streams per connection on history and routers: a gateway
    /// sends all its users' history reads over one connection.
    pub const INTERNAL_MAX_STREAMS: u32 = 10_000;
    /// Default idle timeout: five minutes.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    /// Default largest decoded message on the gateway: 1 MiB (requests are
    /// small; a body is at most `CONFAB_MAX_BODY_BYTES`, 16 KiB by default).
    pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

    /// The defaults of a public server (the gateway): no TLS.
    pub fn public() -> Self {
        Self {
            tls: None,
            max_concurrent_streams: Self::PUBLIC_MAX_STREAMS,
            idle_timeout: Some(Self::IDLE_TIMEOUT),
            max_message_bytes: Self::MAX_MESSAGE_BYTES,
        }
    }

    /// The defaults of an internal server (history, router): no TLS.
    pub fn internal() -> Self {
        Self {
            max_concurrent_streams: Self::INTERNAL_MAX_STREAMS,
            ..Self::public()
        }
    }

    /// `defaults` ([`Transport::public`] or [`Transport::internal`]) with
    /// the `CONFAB_TLS_CERT`, `CONFAB_TLS_KEY`, `CONFAB_TLS_CLIENT_CA`,
    /// `CONFAB_HTTP2_MAX_STREAMS`, `CONFAB_HTTP2_IDLE_TIMEOUT_MS` and
    /// `CONFAB_MAX_MESSAGE_BYTES` of `env`. Certificate files are read and
    /// checked now, so a bad one stops the process before it binds.
    pub fn from_env(env: &dyn Env, defaults: Self) -> Result<Self, ConfigError> {
        let max_concurrent_streams = parse_or(
            env,
            HTTP2_MAX_STREAMS_VAR,
            defaults.max_concurrent_streams,
            "a stream count",
        )?;
        if max_concurrent_streams == 0 {
            return Err(ConfigError {
                key: HTTP2_MAX_STREAMS_VAR.into(),
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        let idle_ms = parse_or(
            env,
            HTTP2_IDLE_TIMEOUT_VAR,
            defaults.idle_timeout.map_or(0, |d| d.as_millis() as u64),
            "milliseconds (0: never)",
        )?;
        let max_message_bytes = parse_or(
            env,
            MAX_MESSAGE_BYTES_VAR,
            defaults.max_message_bytes,
            "a size in bytes",
        )?;
        if max_message_bytes < 1024 {
            return Err(ConfigError {
                key: MAX_MESSAGE_BYTES_VAR.into(),
                value: max_message_bytes.to_string(),
                reason: "must be at least 1024".into(),
            });
        }
        Ok(Self {
            tls: server_tls_from_env(env)?,
            max_concurrent_streams,
            idle_timeout: (idle_ms > 0).then(|| Duration::from_millis(idle_ms)),
            max_message_bytes,
        })
    }
}

impl Transport {
    /// Room a request needs beside its message body (ids, title, members).
    pub const REQUEST_HEADROOM: usize = 64 * 1024;

    /// Makes sure a request with a body of `max_body_bytes`
    /// (`CONFAB_MAX_BODY_BYTES`) fits in `max_message_bytes`: when
    /// `CONFAB_MAX_MESSAGE_BYTES` is unset the limit grows to fit, when it is
    /// set too small it is an error naming it.
    pub fn fit_body(mut self, env: &dyn Env, max_body_bytes: usize) -> Result<Self, ConfigError> {
        let needed = max_body_bytes.saturating_add(Self::REQUEST_HEADROOM);
        if self.max_message_bytes >= needed {
            return Ok(self);
        }
        match env.get(MAX_MESSAGE_BYTES_VAR) {
            None => {
                self.max_message_bytes = needed;
                Ok(self)
            }
            Some(value) => Err(ConfigError {
                key: MAX_MESSAGE_BYTES_VAR.into(),
                value,
                reason: format!(
                    "must be at least CONFAB_MAX_BODY_BYTES + {} ({needed}), so that the \
                     largest allowed message fits",
                    Self::REQUEST_HEADROOM
                ),
            }),
        }
    }
}

impl Default for Transport {
    /// [`Transport::public`].
    fn default() -> Self {
        Self::public()
    }
}

/// Reads the file named by `key`; an error naming `key` and the path.
fn read_file(key: &str, path: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError {
        key: key.into(),
        value: path.into(),
        reason: format!("cannot read the file: {e}"),
    })
}

/// A certificate chain and its private key, as PEM.
type PemPair = (Vec<u8>, Vec<u8>);

/// The certificate and key files, read: both or neither.
fn identity_files(env: &dyn Env) -> Result<Option<PemPair>, ConfigError> {
    match (env.get(TLS_CERT_VAR), env.get(TLS_KEY_VAR)) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError {
            key: TLS_KEY_VAR.into(),
            value: String::new(),
            reason: format!(
                "required with {TLS_CERT_VAR}: the PEM file of the certificate's private key"
            ),
        }),
        (None, Some(_)) => Err(ConfigError {
            key: TLS_CERT_VAR.into(),
            value: String::new(),
            reason: format!("required with {TLS_KEY_VAR}: the PEM file of the certificate chain"),
        }),
        (Some(cert), Some(key)) => {
            let cert_pem = read_file(TLS_CERT_VAR, &cert)?;
            certificates(&cert_pem).map_err(|e| ConfigError {
                key: TLS_CERT_VAR.into(),
                value: cert.clone(),
                reason: e.to_string(),
            })?;
            let key_pem = read_file(TLS_KEY_VAR, &key)?;
            private_key(&key_pem).map_err(|e| ConfigError {
                key: TLS_KEY_VAR.into(),
                value: key.clone(),
                reason: e.to_string(),
            })?;
            Ok(Some((cert_pem, key_pem)))
        }
    }
}

/// The server TLS of `env`: `CONFAB_TLS_CERT` and `CONFAB_TLS_KEY`, and
/// `CONFAB_TLS_CLIENT_CA` for mutual TLS.
fn server_tls_from_env(env: &dyn Env) -> Result<Option<ServerTls>, ConfigError> {
    let identity = identity_files(env)?;
    let client_ca = match env.get(TLS_CLIENT_CA_VAR) {
        None => None,
        Some(path) => {
            let pem = read_file(TLS_CLIENT_CA_VAR, &path)?;
            certificates(&pem).map_err(|e| ConfigError {
                key: TLS_CLIENT_CA_VAR.into(),
                value: path.clone(),
                reason: e.to_string(),
            })?;
            Some((path, pem))
        }
    };
    let Some((cert, key)) = identity else {
        return match client_ca {
            None => Ok(None),
            Some((path, _)) => Err(ConfigError {
                key: TLS_CLIENT_CA_VAR.into(),
                value: path,
                reason: format!(
                    "client certificates are checked only over TLS: set {TLS_CERT_VAR} and \
                     {TLS_KEY_VAR} too"
                ),
            }),
        };
    };
    ServerTls::from_pem(
        &cert,
        &key,
        client_ca.as_ref().map(|(_, pem)| pem.as_slice()),
    )
    .map(Some)
    .map_err(|e| ConfigError {
        key: TLS_CERT_VAR.into(),
        value: env.get(TLS_CERT_VAR).unwrap_or_default(),
        reason: format!("with {TLS_KEY_VAR}: {e}"),
    })
}

/// How an internal client (history reads, router links) speaks TLS: the CA
/// it verifies the server with and, for mutual TLS, the certificate it
/// presents. `Debug` does not show the key.
#[derive(Clone)]
pub struct ClientTls {
    ca: Certificate,
    identity: Option<Identity>,
    server_name: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("presents_cert", &self.identity.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl ClientTls {
    /// Verifies servers with the CA certificates `ca` (PEM); presents
    /// `identity` (certificate chain and key, PEM) when given; expects
    /// `server_name` in the server's certificate instead of the address's
    /// host when given.
    pub fn from_pem(
        ca: &[u8],
        identity: Option<(&[u8], &[u8])>,
        server_name: Option<String>,
    ) -> Result<Self, TlsError> {
        certificates(ca).map_err(|e| TlsError(format!("CA: {e}")))?;
        if let Some((cert, key)) = identity {
            certificates(cert).map_err(|e| TlsError(format!("certificate: {e}")))?;
            private_key(key).map_err(|e| TlsError(format!("key: {e}")))?;
        }
        let tls = Self {
            ca: Certificate::from_pem(ca),
            identity: identity.map(|(cert, key)| Identity::from_pem(cert, key)),
            server_name,
        };
        tonic::transport::Endpoint::from_static("https://confab.invalid:443")
            .tls_config(tls.config())
            .map_err(|e| TlsError(format!("rustls refuses it: {}", chain(&e))))?;
        Ok(tls)
    }

    /// `CONFAB_TLS_CA` (and `CONFAB_TLS_CERT` / `CONFAB_TLS_KEY` as the
    /// client certificate, `CONFAB_TLS_SERVER_NAME`): `None` when
    /// `CONFAB_TLS_CA` is unset, and internal links are plaintext.
    pub fn from_env(env: &dyn Env) -> Result<Option<Self>, ConfigError> {
        let identity = identity_files(env)?;
        let Some(path) = env.get(TLS_CA_VAR) else {
            return Ok(None);
        };
        let ca = read_file(TLS_CA_VAR, &path)?;
        let server_name = env.get(TLS_SERVER_NAME_VAR);
        Self::from_pem(
            &ca,
            identity
                .as_ref()
                .map(|(cert, key)| (cert.as_slice(), key.as_slice())),
            server_name,
        )
        .map(Some)
        .map_err(|e| ConfigError {
            key: TLS_CA_VAR.into(),
            value: path,
            reason: e.to_string(),
        })
    }

    /// Whether the client presents a certificate.
    pub fn presents_cert(&self) -> bool {
        self.identity.is_some()
    }

    /// tonic's client TLS settings.
    pub fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new().ca_certificate(self.ca.clone());
        if let Some(identity) = &self.identity {
            config = config.identity(identity.clone());
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        config
    }
}

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
        let ext = req.extensions();
        let peer = ext
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)
            .or_else(|| {
                ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                    .and_then(|i| i.get_ref().remote_addr())
            })?;
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
/// idleness, and the layer ([`IdleLayer`]) that counts their calls.
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
    pub fn layer(&self) -> IdleLayer {
        IdleLayer {
            registry: self.timeout.map(|_| self.registry.clone()),
        }
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
pub struct IdleLayer {
    registry: Option<Arc<Registry>>,
}

impl<S> tower::Layer<S> for IdleLayer {
    type Service = IdleService<S>;

    fn layer(&self, inner: S) -> IdleService<S> {
        IdleService {
            inner,
            registry: self.registry.clone(),
        }
    }
}

/// The service [`IdleLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct IdleService<S> {
    inner: S,
    registry: Option<Arc<Registry>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> tower::Service<http::Request<B>> for IdleService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let guard = self
            .registry
            .as_ref()
            .and_then(|r| r.conn_of(&req))
            .map(|conn| conn.enter());
        let call = self.inner.call(req);
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

/// How tonic words a request over `max_decoding_message_size` (with
/// OUT_OF_RANGE): "Error, decoded message length too large: found N bytes,
/// the limit is: M bytes".
pub const TONIC_TOO_LARGE: &str = "decoded message length too large";

/// The number after `label` in `text`.
fn number_after(text: &str, label: &str) -> Option<usize> {
    let rest = &text[text.find(label)? + label.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The RESOURCE_EXHAUSTED that replaces tonic's answer to a request over the
/// largest decoded message, naming the limit (and `CONFAB_MAX_MESSAGE_BYTES`
/// when it is the configured one, `configured`).
pub fn message_too_large(tonic_message: &str, configured: usize) -> tonic::Status {
    let found = number_after(tonic_message, "found");
    let limit = number_after(tonic_message, "the limit is:");
    let message = match (found, limit) {
        (Some(found), Some(limit)) if limit == configured => format!(
            "message size limit: this request is {found} bytes, at most {limit} are accepted \
             ({MAX_MESSAGE_BYTES_VAR}={limit}); send a smaller request"
        ),
        (Some(found), Some(limit)) => format!(
            "message size limit: this request is {found} bytes, at most {limit} are accepted; \
             send a smaller request"
        ),
        _ => format!("message size limit: {tonic_message}"),
    };
    tonic::Status::resource_exhausted(message)
}

/// Answers a request whose message is over the decoding limit with
/// RESOURCE_EXHAUSTED naming the limit, where tonic 0.14 answers
/// OUT_OF_RANGE ("decoded message length too large").
#[derive(Debug, Clone)]
pub struct MessageLimitLayer {
    configured: usize,
}

impl MessageLimitLayer {
    /// `configured` is `CONFAB_MAX_MESSAGE_BYTES` (named in the answer when
    /// it is the limit that was hit).
    pub fn new(configured: usize) -> Self {
        Self { configured }
    }
}

impl<S> tower::Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;

    fn layer(&self, inner: S) -> MessageLimit<S> {
        MessageLimit {
            inner,
            configured: self.configured,
        }
    }
}

/// The service [`MessageLimitLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct MessageLimit<S> {
    inner: S,
    configured: usize,
}

impl<S, B> tower::Service<http::Request<B>> for MessageLimit<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let call = self.inner.call(req);
        let configured = self.configured;
        Box::pin(async move {
            let response = call.await?;
            // A request that could not be decoded is answered at once, with
            // the status in the headers (trailers-only).
            match tonic::Status::from_header_map(response.headers()) {
                Some(status)
                    if status.code() == tonic::Code::OutOfRange
                        && status.message().contains(TONIC_TOO_LARGE) =>
                {
                    Ok(message_too_large(status.message(), configured).into_http())
                }
                _ => Ok(response),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> HashMap<String, String> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_and_limits_come_from_the_environment() {
        let t = Transport::from_env(&env(&[]), Transport::public()).expect("defaults");
        assert!(t.tls.is_none());
        assert_eq!(t.max_concurrent_streams, 100);
        assert_eq!(t.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(t.max_message_bytes, 1024 * 1024);
        let t = Transport::from_env(&env(&[]), Transport::internal()).expect("defaults");
        assert_eq!(t.max_concurrent_streams, 10_000);
        let t = Transport::from_env(
            &env(&[
                (HTTP2_MAX_STREAMS_VAR, "7"),
                (HTTP2_IDLE_TIMEOUT_VAR, "0"),
                (MAX_MESSAGE_BYTES_VAR, "4096"),
            ]),
            Transport::public(),
        )
        .expect("valid");
        assert_eq!(
            (
                t.max_concurrent_streams,
                t.idle_timeout,
                t.max_message_bytes
            ),
            (7, None, 4096)
        );
        for (key, value) in [
            (HTTP2_MAX_STREAMS_VAR, "0"),
            (HTTP2_MAX_STREAMS_VAR, "many"),
            (HTTP2_IDLE_TIMEOUT_VAR, "-1"),
            (MAX_MESSAGE_BYTES_VAR, "100"),
        ] {
            let err =
                Transport::from_env(&env(&[(key, value)]), Transport::public()).expect_err(value);
            assert_eq!(err.key, key);
        }
    }

    #[test]
    fn the_message_limit_fits_the_largest_body() {
        let big = 2 * 1024 * 1024;
        let t = Transport::public().fit_body(&env(&[]), big).expect("grows");
        assert_eq!(t.max_message_bytes, big + Transport::REQUEST_HEADROOM);
        let t = Transport::public()
            .fit_body(&env(&[]), 16384)
            .expect("fits");
        assert_eq!(t.max_message_bytes, Transport::MAX_MESSAGE_BYTES);
        let vars = env(&[(MAX_MESSAGE_BYTES_VAR, "20000")]);
        let err = Transport::from_env(&vars, Transport::public())
            .expect("valid alone")
            .fit_body(&vars, 16384)
            .expect_err("too small for the body");
        assert_eq!(err.key, MAX_MESSAGE_BYTES_VAR);
    }

    #[test]
    fn tonics_too_large_becomes_resource_exhausted_naming_the_limit() {
        let tonic = "Error, decoded message length too large: found 66615 bytes, \
                     the limit is: 66560 bytes";
        let status = message_too_large(tonic, 66560);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "message size limit: this request is 66615 bytes, at most 66560 are accepted \
             (CONFAB_MAX_MESSAGE_BYTES=66560); send a smaller request"
        );
        let other = message_too_large(tonic, 1024);
        assert!(!other.message().contains("CONFAB_MAX_MESSAGE_BYTES"));
        assert!(other.message().contains("at most 66560"));
    }

    #[test]
    fn certificate_and_key_come_together() {
        let err = Transport::from_env(&env(&[(TLS_CERT_VAR, "/x/cert.pem")]), Transport::public())
            .expect_err("key missing");
        assert_eq!(err.key, TLS_KEY_VAR);
        let err = Transport::from_env(&env(&[(TLS_KEY_VAR, "/x/key.pem")]), Transport::public())
            .expect_err("cert missing");
        assert_eq!(err.key, TLS_CERT_VAR);
        let err = Transport::from_env(
            &env(&[(TLS_CLIENT_CA_VAR, "/nonexistent/ca.pem")]),
            Transport::public(),
        )
        .expect_err("unreadable");
        assert_eq!(err.key, TLS_CLIENT_CA_VAR);
    }

    #[test]
    fn unreadable_and_invalid_files_name_their_variable_and_never_the_key() {
        let dir = std::env::temp_dir().join(format!("confab-transport-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "SECRET-KEY-MATERIAL not a pem").expect("write");
        let garbage = garbage.display().to_string();
        let err = Transport::from_env(
            &env(&[
                (TLS_CERT_VAR, "/nonexistent/cert.pem"),
                (TLS_KEY_VAR, &garbage),
            ]),
            Transport::public(),
        )
        .expect_err("unreadable");
        assert_eq!(err.key, TLS_CERT_VAR);
        assert!(err.reason.contains("cannot read"), "{err}");
        let err = Transport::from_env(
            &env(&[(TLS_CERT_VAR, &garbage), (TLS_KEY_VAR, &garbage)]),
            Transport::public(),
        )
        .expect_err("not a certificate");
        assert_eq!(err.key, TLS_CERT_VAR);
        assert!(err.reason.contains("no certificate"), "{err}");
        assert!(!err.to_string().contains("SECRET"));
        let err = ClientTls::from_env(&env(&[(TLS_CA_VAR, &garbage)])).expect_err("bad CA");
        assert_eq!(err.key, TLS_CA_VAR);
        assert!(ClientTls::from_env(&env(&[]))
            .expect("no CA: plaintext")
            .is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
