//! The harness the integration and end-to-end tests share (and the tools,
//! `confab-bench` and `confab-chaos`, build on): start Confab on port 0
//! (in-process, or the built binaries as real processes), and typed clients
//! that act as one user each.
//!
//! - here: the test settings and [`Embedded`] (`confab dev` in this
//!   process); [`client`]: [`User`] and [`Session`]; [`wait`]: the one
//!   polling loop, [`wait_until`] and the retry of UNAVAILABLE;
//!   [`traffic`]: writers and the checks of what they were acknowledged;
//! - processes: [`procs`] (`confab dev`, one service binary), [`stack`]
//!   (history, routers and gateways on a broker and PostgreSQL),
//!   [`make_stack`] (`make stack` itself), [`broker`], [`postgres`];
//! - in this process: [`served`] (a server task), [`topology`] (the
//!   services joined by gRPC on in-process logs), [`cluster`] (the
//!   distributed `run`s on the real broker), [`server`] (either topology);
//! - [`http`]: the one HTTP client (metrics, health, Prometheus).

use confab::dev::DevConfig;
use served::Served;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub mod broker;
pub mod client;
pub mod cluster;
pub mod http;
pub mod make_stack;
pub mod netns;
pub mod postgres;
pub mod procs;
pub mod release;
pub mod served;
pub mod server;
pub mod small_fs;
pub mod stack;
pub mod topology;
pub mod traffic;
pub mod wait;
pub mod wire;
pub mod ws;

pub use client::{seqs, token, Session, SyncCopy, Synced, User};
pub use procs::{confab_bin, free_port, DevProcess};
pub use traffic::{assert_acked_stored, Conv, Writers};
pub use wait::{
    poll, poll_blocking, retry_unavailable, retry_unavailable_seeing, wait_until, wait_until_within,
};

/// How long any wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The secret every test server uses.
pub const SECRET: &str = "integration-test-secret-0123456789";

/// Initialises logging once per test process (quiet unless CONFAB_LOG is set).
pub fn init_tracing() {
    if std::env::var("CONFAB_LOG").is_ok() {
        confab_runtime::telemetry::init(false);
    }
}

/// Per-user limits high enough that no test hits them unless it means to:
/// most tests send as fast as they can as one user. Tests of the limits set
/// their own values on top.
pub const GENEROUS_LIMITS: &[(&str, &str)] = &[
    ("CONFAB_RATE_MESSAGES_PER_SEC", "1000000"),
    ("CONFAB_RATE_MESSAGES_BURST", "1000000"),
    ("CONFAB_MAX_STREAMS_PER_USER", "10000"),
    ("CONFAB_RATE_CONVERSATIONS_PER_MIN", "1000000"),
];

/// The presence grace period of the test topologies (`CONFAB_PRESENCE_GRACE_MS`):
/// short, so a test sees a user go offline soon, and long enough that a
/// reconnect right away is within it on a loaded machine.
pub const PRESENCE_GRACE_MS: &str = "2000";

/// Gateway settings for test topologies: defaults, with `GENEROUS_LIMITS`.
pub fn test_gateway_config() -> confab_gateway::GatewayConfig {
    let env: HashMap<String, String> = GENEROUS_LIMITS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    confab_gateway::GatewayConfig::from_env(&env).expect("generous limits are valid")
}

/// A configuration for a test server with its data in `data_dir`.
pub fn test_config(data_dir: &Path, overrides: &[(&str, &str)]) -> DevConfig {
    let mut env: HashMap<String, String> = HashMap::new();
    for (k, v) in GENEROUS_LIMITS {
        env.insert(k.to_string(), v.to_string());
    }
    env.insert("CONFAB_JWT_SECRET".into(), SECRET.into());
    env.insert("CONFAB_DATA_DIR".into(), data_dir.display().to_string());
    env.insert("CONFAB_PRESENCE_GRACE_MS".into(), PRESENCE_GRACE_MS.into());
    // Tests run side by side: none takes the default 127.0.0.1:8080.
    env.insert("CONFAB_HTTP_LISTEN".into(), "off".into());
    for (k, v) in overrides {
        env.insert(k.to_string(), v.to_string());
    }
    DevConfig::from_env(&env).expect("test config is valid")
}

/// Embedded mode running inside the test process on a free port.
pub struct Embedded {
    /// Where it serves gRPC.
    pub addr: SocketAddr,
    /// Where its HTTP listener (web app, WebSocket, gRPC-Web) is, when
    /// `CONFAB_HTTP_LISTEN` was given.
    pub http: Option<SocketAddr>,
    /// The server.
    served: Served,
    /// Holds the data directory for the test's lifetime.
    _dir: tempfile::TempDir,
}

impl Embedded {
    /// Starts embedded mode with default settings.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts embedded mode with some `CONFAB_*` settings overridden.
    pub async fn start_with(overrides: &[(&str, &str)]) -> Self {
        init_tracing();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = test_config(dir.path(), overrides);
        let http = config.web.listen.as_deref().map(|a| {
            a.parse()
                .expect("CONFAB_HTTP_LISTEN of a test is an address")
        });
        let served =
            Served::listen(|listener, signal| confab::dev::run(config, listener, signal)).await;
        // The HTTP listener is bound by `run`, after the gRPC one it is given.
        if let Some(http) = http {
            poll(
                "the HTTP listener",
                DEADLINE,
                Duration::from_millis(10),
                || async move { Ok(tokio::net::TcpStream::connect(http).await.ok().map(|_| ())) },
            )
            .await
            .expect("the HTTP listener accepts connections");
        }
        Self {
            http,
            addr: served.addr(),
            served,
            _dir: dir,
        }
    }

    /// A client acting as `user`.
    pub async fn user(&self, user: &str) -> User {
        User::connect(self.addr, user).await
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(self) {
        self.served.stop("server").await;
    }
}
