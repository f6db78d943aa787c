//! How Confab's gRPC servers and internal clients use their connections:
//! TLS (rustls) with certificate and key files, mutual TLS between
//! services, HTTP/2 limits (concurrent streams per connection, an idle
//! timeout) and the largest decoded message the gateway accepts.
//!
//! [`Transport`] is what a server is started with
//! ([`crate::server::Server::transport`]); [`ClientTls`] is what an internal
//! client (history reads, router links) connects with.
//!
//! The idle timeout is enforced by `confab_layers::idle`. tonic 0.14 has no idle timeout for server connections (grpc-go's
//! `MaxConnectionIdle`): its builder offers keepalive pings, a maximum
//! connection age and per-request timeouts only. [`IdleIncoming`] adds one:
//! each accepted connection counts its open calls (a layer sees each call
//! start and its response body end), and once a connection has had none for
//! the idle timeout — and has received nothing for a short quiet period, so
//! a call that is just arriving is never cut — its reads end, and the server
//! closes it. That is a plain close, not an HTTP/2 GOAWAY (tonic gives no
//! handle on a single connection to send one); clients reconnect on their
//! next call.

use confab_core::config::{at_least, parse_or, ConfigError, Env};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The server's certificate chain (PEM); with [`TLS_KEY_VAR`], the server
/// speaks TLS, and internal clients present it as their client certificate.
pub const TLS_CERT_VAR: &str = confab_core::vars::TLS_CERT;
/// The private key (PEM, PKCS#8, PKCS#1 or SEC1) of [`TLS_CERT_VAR`].
pub const TLS_KEY_VAR: &str = confab_core::vars::TLS_KEY;
/// CA certificates (PEM) that client certificates must be signed by; when
/// set, the server refuses TLS handshakes without such a certificate (mTLS).
pub const TLS_CLIENT_CA_VAR: &str = confab_core::vars::TLS_CLIENT_CA;
/// CA certificates (PEM) that internal clients verify history and routers
/// with; when set, internal links use TLS (`https`).
pub const TLS_CA_VAR: &str = confab_core::vars::TLS_CA;
/// The name internal clients expect in the peer's certificate, instead of the
/// host of each address.
pub const TLS_SERVER_NAME_VAR: &str = confab_core::vars::TLS_SERVER_NAME;
/// Concurrent HTTP/2 streams (calls) per connection.
pub const HTTP2_MAX_STREAMS_VAR: &str = confab_core::vars::HTTP2_MAX_STREAMS;
/// Milliseconds a connection may stay without any call before it is closed;
/// `0` never closes idle connections.
pub const HTTP2_IDLE_TIMEOUT_VAR: &str = confab_core::vars::HTTP2_IDLE_TIMEOUT_MS;
pub use confab_layers::decoding::MAX_MESSAGE_BYTES_VAR;

/// Longest TLS handshake a server waits for.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
        let max_concurrent_streams = at_least(
            env,
            HTTP2_MAX_STREAMS_VAR,
            defaults.max_concurrent_streams,
            1,
            "a stream count",
        )?;
        let idle_ms = parse_or(
            env,
            HTTP2_IDLE_TIMEOUT_VAR,
            defaults.idle_timeout.map_or(0, |d| d.as_millis() as u64),
            "milliseconds (0: never)",
        )?;
        let max_message_bytes = at_least(
            env,
            MAX_MESSAGE_BYTES_VAR,
            defaults.max_message_bytes,
            1024,
            "a size in bytes",
        )?;
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

/// The PEM file at `path` (named by `key`), read and checked by `check`.
fn read_pem<T, E: std::fmt::Display>(
    key: &str,
    path: &str,
    check: impl Fn(&[u8]) -> Result<T, E>,
) -> Result<Vec<u8>, ConfigError> {
    let pem = read_file(key, path)?;
    check(&pem).map_err(|e| ConfigError {
        key: key.into(),
        value: path.into(),
        reason: e.to_string(),
    })?;
    Ok(pem)
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
            let cert_pem = read_pem(TLS_CERT_VAR, &cert, certificates)?;
            let key_pem = read_pem(TLS_KEY_VAR, &key, private_key)?;
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
            let pem = read_pem(TLS_CLIENT_CA_VAR, &path, certificates)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

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
