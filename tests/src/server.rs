//! One running Confab of either topology behind one type, so an integration
//! test is written once and runs against embedded mode (everything in one
//! process on SQLite and the in-process log) and against the distributed
//! topology (every service through its distributed `run`, on the real broker
//! and real PostgreSQL).

use crate::cluster::{Cluster, Shape};
use crate::{Embedded, User};
use confab_core::validate::SizeLimits;
use confab_gateway::GatewayConfig;
use std::net::SocketAddr;

/// Which topology to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `confab dev` in this process.
    Embedded,
    /// Gateway, router and history as separate services on the real broker
    /// and PostgreSQL, in this process.
    Cluster,
    /// `confab dev` in this process, with every session over the
    /// WebSocket of its HTTP listener (docs/browser.md) instead of gRPC
    /// `Connect`; unary calls stay gRPC.
    EmbeddedWebSocket,
}

/// The settings tests change; `None` keeps the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    /// Largest message body (`CONFAB_MAX_BODY_BYTES`).
    pub max_body_bytes: Option<usize>,
    /// Live messages a session may have queued (`CONFAB_SESSION_QUEUE`).
    pub session_queue: Option<usize>,
    /// Least time between a stream's reads of one conversation going to
    /// the log, in ms (`CONFAB_READ_SPACING_MS`).
    pub read_spacing_ms: Option<u64>,
}

impl Settings {
    /// The same settings as `CONFAB_*` overrides for embedded mode.
    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if let Some(n) = self.max_body_bytes {
            env.push(("CONFAB_MAX_BODY_BYTES", n.to_string()));
        }
        if let Some(n) = self.session_queue {
            env.push(("CONFAB_SESSION_QUEUE", n.to_string()));
        }
        if let Some(n) = self.read_spacing_ms {
            env.push(("CONFAB_READ_SPACING_MS", n.to_string()));
        }
        env
    }

    /// The same settings as a cluster shape (one of each service).
    fn shape(&self) -> Shape {
        let defaults = crate::test_gateway_config();
        Shape {
            gateway: GatewayConfig {
                limits: SizeLimits {
                    max_body_bytes: self
                        .max_body_bytes
                        .unwrap_or(defaults.limits.max_body_bytes),
                    ..defaults.limits
                },
                session_queue: self.session_queue.unwrap_or(defaults.session_queue),
                read_spacing: self
                    .read_spacing_ms
                    .map_or(defaults.read_spacing, std::time::Duration::from_millis),
                ..defaults
            },
            ..Shape::default()
        }
    }
}

/// A running server of either topology.
pub enum Server {
    /// Embedded mode.
    Embedded(Embedded),
    /// The distributed topology (boxed: it is much larger).
    Cluster(Box<Cluster>),
}

impl Server {
    /// Starts a server of `kind` with `settings`; returns once it serves
    /// (for a cluster: once every gateway is attached to every router).
    pub async fn start(kind: Kind, settings: Settings) -> Server {
        match kind {
            Kind::Embedded | Kind::EmbeddedWebSocket => {
                let mut env = settings.env();
                if kind == Kind::EmbeddedWebSocket {
                    env.push((
                        "CONFAB_HTTP_LISTEN",
                        format!("127.0.0.1:{}", crate::free_port()),
                    ));
                }
                let overrides: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (*k, v.as_str())).collect();
                Server::Embedded(Embedded::start_with(&overrides).await)
            }
            Kind::Cluster => Server::Cluster(Box::new(Cluster::start(settings.shape()).await)),
        }
    }

    /// Which topology this is.
    pub fn kind(&self) -> Kind {
        match self {
            Server::Embedded(e) if e.http.is_some() => Kind::EmbeddedWebSocket,
            Server::Embedded(_) => Kind::Embedded,
            Server::Cluster(_) => Kind::Cluster,
        }
    }

    /// Where clients connect (for a cluster: gateway 0).
    pub fn addr(&self) -> SocketAddr {
        self.gateway_addr(0)
    }

    /// Where clients of gateway `i` connect (embedded mode has only 0).
    pub fn gateway_addr(&self, i: usize) -> SocketAddr {
        match self {
            Server::Embedded(e) => {
                assert_eq!(i, 0, "embedded mode has one gateway");
                e.addr
            }
            Server::Cluster(c) => c.gateway_addr(i),
        }
    }

    /// A client acting as `name` (for a cluster: on gateway 0).
    pub async fn user(&self, name: &str) -> User {
        self.user_on(0, name).await
    }

    /// A client of gateway `gateway` acting as `name`.
    pub async fn user_on(&self, gateway: usize, name: &str) -> User {
        self.over_sessions(User::connect(self.gateway_addr(gateway), name).await)
    }

    /// A client (of gateway 0) presenting `token`, which may be invalid.
    pub async fn user_with_token(&self, name: &str, token: &str) -> User {
        self.over_sessions(User::with_token(self.addr(), name, token).await)
    }

    /// `user` with its sessions on this server's session transport.
    fn over_sessions(&self, user: User) -> User {
        match self {
            Server::Embedded(Embedded {
                http: Some(http), ..
            }) => user.sessions_over_websocket(*http),
            _ => user,
        }
    }

    /// The cluster, if this is one.
    pub fn cluster(&self) -> Option<&Cluster> {
        match self {
            Server::Embedded(_) => None,
            Server::Cluster(c) => Some(c),
        }
    }

    /// Stops it gracefully and checks that every part stopped cleanly.
    pub async fn stop(self) {
        match self {
            Server::Embedded(e) => e.stop().await,
            Server::Cluster(c) => c.stop().await,
        }
    }
}
