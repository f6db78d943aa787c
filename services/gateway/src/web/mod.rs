//! The gateway's HTTP listener, for browsers (docs/browser.md): from one
//! origin, the web app's files, the `Connect` session over WebSocket
//! ([`ws`]), every unary Chat RPC over gRPC-Web, and, with the public
//! development secret only, tokens for any user name.
//!
//! Nothing here decides anything about chat: gRPC-Web calls go through the
//! same guarded service as gRPC ([`crate::service::chat_routes`]), and a
//! WebSocket opens the same session as `Connect`
//! ([`ChatService::open_session`]).

pub mod ws;

pub use confab_proto::websocket::Format;

use crate::guard::GuardLayer;
use crate::ChatService;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use confab_auth::Authenticator;
use confab_core::config::{list, millis_or, ConfigError, Env};
use confab_runtime::shutdown::Signal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Settings of the HTTP listener.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Where it listens (`CONFAB_HTTP_LISTEN`); `None`: no listener.
    pub listen: Option<String>,
    /// Origins other than the listener's own that may open a WebSocket or
    /// call gRPC-Web from a page (`CONFAB_ALLOWED_ORIGINS`).
    pub allowed_origins: Vec<String>,
    /// The built web app (`CONFAB_WEB_DIR`).
    pub web_dir: PathBuf,
    /// How often a WebSocket is pinged (`CONFAB_WS_PING_MS`); a peer silent
    /// for twice this is closed.
    pub ws_ping: Duration,
}

/// What turns the listener off.
const OFF: &str = "off";

impl WebConfig {
    /// Reads `CONFAB_HTTP_LISTEN` (default `default_listen`; `off`: none),
    /// `CONFAB_ALLOWED_ORIGINS`, `CONFAB_WEB_DIR` and `CONFAB_WS_PING_MS`.
    pub fn from_env(env: &dyn Env, default_listen: Option<&str>) -> Result<Self, ConfigError> {
        let listen = match env.get(confab_core::vars::HTTP_LISTEN) {
            Some(v) if v.trim() == OFF => None,
            Some(v) if !v.trim().is_empty() => Some(v.trim().to_string()),
            _ => default_listen.map(str::to_string),
        };
        let allowed_origins = list(env, confab_core::vars::ALLOWED_ORIGINS);
        for origin in &allowed_origins {
            if HeaderValue::from_str(origin).is_err()
                || !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.ends_with('/')
            {
                return Err(ConfigError {
                    key: confab_core::vars::ALLOWED_ORIGINS.into(),
                    value: origin.clone(),
                    reason: "each origin is scheme://host[:port], like https://chat.example.com (no path, no trailing slash)".into(),
                });
            }
        }
        let ws_ping = millis_or(env, confab_core::vars::WS_PING_MS, Duration::from_secs(20))?;
        if ws_ping.is_zero() {
            return Err(ConfigError {
                key: confab_core::vars::WS_PING_MS.into(),
                value: "0".into(),
                reason: "must be at least 1 millisecond".into(),
            });
        }
        Ok(Self {
            listen,
            allowed_origins,
            web_dir: env
                .get(confab_core::vars::WEB_DIR)
                .map(PathBuf::from)
                .unwrap_or_else(|| "web/dist".into()),
            ws_ping,
        })
    }
}

/// Everything the listener's handlers share.
struct Shared {
    service: ChatService,
    guard: GuardLayer,
    /// Mints tokens for `/v1/dev/token`; only with the development secret.
    dev_tokens: Option<Authenticator>,
    allowed_origins: Vec<String>,
    ws_ping: Duration,
    /// `CONFAB_MAX_MESSAGE_BYTES`: the largest WebSocket message taken in.
    max_message_bytes: usize,
}

/// The listener's routes. `dev_tokens`: the authenticator of the public
/// development secret, which then also mints tokens (`/v1/dev/token`); pass
/// it only when that is the secret in use (docs/security.md says why).
pub fn router(
    mut service: ChatService,
    max_message_bytes: usize,
    config: &WebConfig,
    dev_tokens: Option<Authenticator>,
) -> axum::Router {
    service.max_message_bytes = max_message_bytes;
    let grpc_web = tower::ServiceBuilder::new()
        .layer(tonic_web::GrpcWebLayer::new())
        .service(crate::service::chat_routes(
            service.clone(),
            max_message_bytes,
        ));
    let shared = Arc::new(Shared {
        guard: service.guard(),
        service,
        dev_tokens,
        allowed_origins: config.allowed_origins.clone(),
        ws_ping: config.ws_ping,
        max_message_bytes,
    });
    let files = tower_http::services::ServeDir::new(&config.web_dir)
        .not_found_service(axum::routing::any(not_built).with_state(config.web_dir.clone()));
    axum::Router::new()
        .route("/v1/connect", get(ws::upgrade))
        .route("/v1/auth", get(auth_info))
        .route("/v1/dev/token", post(dev_token))
        .route_service("/confab.v1.Chat/{method}", grpc_web)
        .fallback_service(files)
        .layer(cors(&config.allowed_origins))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            check_origin,
        ))
        .with_state(shared)
}

/// Binds `config.listen` (if any) and serves `router` on it until
/// `shutdown`; returns the bound address. Open WebSockets end with their
/// sessions, which close them with 4014 (UNAVAILABLE) at shutdown.
pub async fn start(
    config: &WebConfig,
    router: axum::Router,
    shutdown: Signal,
) -> std::io::Result<Option<SocketAddr>> {
    let Some(listen) = &config.listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(listen).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {listen} (CONFAB_HTTP_LISTEN): {e}"),
        )
    })?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving the web app, WebSocket and gRPC-Web");
    let app = router.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.wait())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the HTTP listener failed");
        }
    });
    Ok(Some(addr))
}

/// CORS for pages of the allowed origins (gRPC-Web calls, `/v1/auth`,
/// `/v1/dev/token`): the headers a generated client sends, and the gRPC
/// status in the answer's headers.
fn cors(allowed: &[String]) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins: Vec<HeaderValue> = allowed
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("x-grpc-web"),
            header::HeaderName::from_static("x-user-agent"),
            header::HeaderName::from_static("grpc-timeout"),
            header::HeaderName::from_static("traceparent"),
            header::HeaderName::from_static("connect-protocol-version"),
        ])
        .expose_headers([
            header::HeaderName::from_static("grpc-status"),
            header::HeaderName::from_static("grpc-message"),
            header::HeaderName::from_static("grpc-status-details-bin"),
        ])
        .max_age(Duration::from_secs(3600))
}

/// Whether a request with these headers comes from an origin that may use
/// the listener: no `Origin` (not a page), the listener's own origin (the
/// web app it serves), or one of `CONFAB_ALLOWED_ORIGINS`.
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    if allowed.iter().any(|a| a == origin) {
        return Ok(());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let own = ["http://", "https://"]
        .iter()
        .any(|scheme| !host.is_empty() && origin.strip_prefix(scheme) == Some(host));
    if own {
        return Ok(());
    }
    Err(format!(
        "origin {origin:?} is not allowed here: add it to CONFAB_ALLOWED_ORIGINS (comma-separated) or serve the page from this listener"
    ))
}

/// Refuses, with 403 and before anything else runs (a WebSocket upgrade
/// included), a request from a page of an origin that is not allowed.
async fn check_origin(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    match origin_allowed(req.headers(), &shared.allowed_origins) {
        Ok(()) => next.run(req).await,
        Err(why) => {
            tracing::debug!(path = req.uri().path(), reason = %why, "request refused");
            (StatusCode::FORBIDDEN, why).into_response()
        }
    }
}

/// `GET /v1/auth`: whether `/v1/dev/token` exists, so the web app knows to
/// ask for a user name or for a token.
async fn auth_info(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "dev_tokens": shared.dev_tokens.is_some() }))
}

#[derive(serde::Deserialize)]
struct DevTokenRequest {
    user_id: String,
}

/// How long a development token lasts.
const DEV_TOKEN_SECONDS: u64 = 86_400;

/// `POST /v1/dev/token {"user_id": …}`: a token for anyone, signed with the
/// public development secret, which lets anyone mint one anyway (`confab
/// token`). 404 with any other secret.
async fn dev_token(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<DevTokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(auth) = &shared.dev_tokens else {
        return (
            StatusCode::NOT_FOUND,
            "tokens are minted here only with the public development secret; ask your operator for a token",
        )
            .into_response();
    };
    let Json(req) = match body {
        Ok(body) => body,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!(
                    "{}; send {{\"user_id\": \"alice\"}} as application/json",
                    e.body_text()
                ),
            )
                .into_response()
        }
    };
    match auth.mint(&req.user_id, DEV_TOKEN_SECONDS) {
        Ok(token) => Json(serde_json::json!({ "token": token })).into_response(),
        Err(why) => (StatusCode::BAD_REQUEST, why).into_response(),
    }
}

/// The answer for a path that is not a file of the web app: 404, saying
/// so, or how to build the app when it is not built.
async fn not_built(State(dir): State<PathBuf>) -> Response {
    if dir.join("index.html").is_file() {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    (
        StatusCode::NOT_FOUND,
        format!(
            "the web app is not built in {}: run `make run` (it builds web/), or set CONFAB_WEB_DIR to a built web/dist",
            dir.display()
        ),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).expect("host"));
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).expect("origin"));
        }
        h
    }

    #[test]
    fn origins_allowed_are_none_own_and_listed() {
        let allowed = vec!["https://chat.example.com".to_string()];
        assert!(origin_allowed(&headers(None, "127.0.0.1:8080"), &allowed).is_ok());
        assert!(origin_allowed(
            &headers(Some("http://127.0.0.1:8080"), "127.0.0.1:8080"),
            &allowed
        )
        .is_ok());
        assert!(origin_allowed(
            &headers(Some("https://chat.example.com"), "127.0.0.1:8080"),
            &allowed
        )
        .is_ok());
        let refused = origin_allowed(
            &headers(Some("http://evil.example"), "127.0.0.1:8080"),
            &allowed,
        )
        .expect_err("a foreign origin");
        assert!(refused.contains("CONFAB_ALLOWED_ORIGINS"), "{refused}");
        // Another port of the same host is another origin.
        assert!(origin_allowed(
            &headers(Some("http://127.0.0.1:9999"), "127.0.0.1:8080"),
            &allowed
        )
        .is_err());
    }
}
