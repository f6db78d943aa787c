//! The front door of `confab.v1.Chat`: a tower layer that authenticates
//! every call and charges it to its caller's per-user limits before any
//! handler (or even the request's decoding) runs.
//!
//! [`GuardLayer`] wraps the Chat service's routes only (see
//! [`crate::service::server`]), so health checks and reflection, which are
//! separate routes of the same server, stay open. For each call it
//!
//! 1. looks the gRPC path up in [`METHODS`], the one table of what each
//!    method costs; a path that is not there passes through untouched, for
//!    tonic to answer UNIMPLEMENTED;
//! 2. authenticates the `authorization: Bearer <token>` header
//!    ([`Authenticator::authenticate_claims`]);
//! 3. admits the cost with the [`Limiter`]: a message or a conversation
//!    from the caller's budgets, or, for `Connect`, one of the caller's
//!    stream slots ([`Limiter::open_stream`]);
//! 4. on success puts a [`Caller`] into the request's extensions, which
//!    handlers take with [`Caller::take`]; on refusal answers with the
//!    [`Status`] (UNAUTHENTICATED, or RESOURCE_EXHAUSTED naming the limit,
//!    its variable and value) without calling the handler.
//!
//! What no layer can see: the frames inside a `Connect` stream's body. A
//! stream `send` frame spends the same message budget as `SendMessage`, but
//! that charge is made by the session as it reads the frame
//! (`Session::send_message`), and a refusal comes back in that frame's ack
//! while the stream stays open. Likewise the token's expiry on an open
//! stream is enforced by the session ([`Caller::valid_until`]).

use crate::user_limits::{Cost, Limiter, StreamGuard};
use confab_auth::Authenticator;
use confab_runtime::trace::{self, TraceParent};
use futures::future::Either;
use std::future::{ready, Ready};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::Status;
use tracing::instrument::{Instrument, Instrumented};

/// What admitting a call takes from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Charges `Cost` to the caller's budgets (nothing for [`Cost::Free`],
    /// but the caller must still authenticate).
    Charge(Cost),
    /// Holds one of the caller's `CONFAB_MAX_STREAMS_PER_USER` stream slots
    /// for as long as the stream is open.
    Stream,
}

/// Every method of `confab.v1.Chat` (`proto/confab/v1/chat.proto`) and what
/// a call to it costs: the one place that says so.
///
/// | method | cost |
/// |---|---|
/// | `Connect` | a stream slot, until the stream ends (`CONFAB_MAX_STREAMS_PER_USER`); each `send` frame then costs a message, charged by the session |
/// | `SendMessage`, `EditMessage`, `DeleteMessage`, `React` | a message (`CONFAB_RATE_MESSAGES_PER_SEC`, burst `CONFAB_RATE_MESSAGES_BURST`): each takes a seq |
/// | `CreateConversation` | a conversation (`CONFAB_RATE_CONVERSATIONS_PER_MIN`) |
/// | `MarkRead` | a read position (`CONFAB_RATE_READS_PER_SEC`, burst twice that) |
/// | `AddMembers`, `RemoveMember`, `SetRole`, `UpdateConversation`, `ListConversations`, `GetConversation`, `GetHistory`, `Sync`, `GetPresence`, `GetEditHistory`, `SearchMessages` | nothing beyond a valid token |
pub const METHODS: &[(&str, Admission)] = &[
    ("/confab.v1.Chat/Connect", Admission::Stream),
    (
        "/confab.v1.Chat/SendMessage",
        Admission::Charge(Cost::Message),
    ),
    (
        "/confab.v1.Chat/CreateConversation",
        Admission::Charge(Cost::Conversation),
    ),
    ("/confab.v1.Chat/AddMembers", Admission::Charge(Cost::Free)),
    (
        "/confab.v1.Chat/RemoveMember",
        Admission::Charge(Cost::Free),
    ),
    (
        "/confab.v1.Chat/ListConversations",
        Admission::Charge(Cost::Free),
    ),
    ("/confab.v1.Chat/GetHistory", Admission::Charge(Cost::Free)),
    ("/confab.v1.Chat/MarkRead", Admission::Charge(Cost::Read)),
    (
        "/confab.v1.Chat/GetConversation",
        Admission::Charge(Cost::Free),
    ),
    ("/confab.v1.Chat/Sync", Admission::Charge(Cost::Free)),
    ("/confab.v1.Chat/GetPresence", Admission::Charge(Cost::Free)),
    (
        "/confab.v1.Chat/EditMessage",
        Admission::Charge(Cost::Message),
    ),
    (
        "/confab.v1.Chat/DeleteMessage",
        Admission::Charge(Cost::Message),
    ),
    ("/confab.v1.Chat/React", Admission::Charge(Cost::Message)),
    (
        "/confab.v1.Chat/GetEditHistory",
        Admission::Charge(Cost::Free),
    ),
    (
        "/confab.v1.Chat/SearchMessages",
        Admission::Charge(Cost::Free),
    ),
    ("/confab.v1.Chat/SetRole", Admission::Charge(Cost::Free)),
    (
        "/confab.v1.Chat/UpdateConversation",
        Admission::Charge(Cost::Free),
    ),
];

/// What a call to the gRPC `path` costs, or `None` for a path that is not a
/// Chat method.
pub fn admission(path: &str) -> Option<Admission> {
    METHODS
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, admission)| *admission)
}

/// The authenticated caller of an admitted call, in its request's
/// extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user id (the token's `sub`).
    pub user: String,
    /// When the token stops being accepted: a `Connect` stream ends then.
    pub valid_until: SystemTime,
    /// For `Connect`, the stream's slot, to be taken by the session that
    /// holds it (extensions must be `Clone`, a slot must not be).
    stream_slot: Option<Arc<Mutex<Option<StreamGuard>>>>,
}

impl Caller {
    /// Takes the caller the guard put into `req`, or INTERNAL when the
    /// service is served without [`GuardLayer`] (it then serves nobody
    /// rather than everybody).
    pub fn take<T>(req: &mut tonic::Request<T>) -> Result<Caller, Status> {
        req.extensions_mut().remove::<Caller>().ok_or_else(|| {
            tracing::error!("a Chat call reached its handler without passing the gateway guard");
            Status::internal("the gateway is misconfigured: calls are not authenticated")
        })
    }

    /// The `Connect` stream slot this call was admitted with; `None` for
    /// other calls, or once taken.
    pub fn take_stream_slot(&self) -> Option<StreamGuard> {
        let slot = self.stream_slot.as_ref()?;
        slot.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Authenticates and admits every call to the service it wraps
/// ([`Guard`]); see the module documentation.
#[derive(Clone)]
pub struct GuardLayer {
    /// Checks tokens.
    auth: Authenticator,
    /// The per-user budgets, shared with the sessions.
    limiter: Limiter,
}

impl GuardLayer {
    /// Checks tokens with `auth` and charges calls to `limiter`.
    pub fn new(auth: Authenticator, limiter: Limiter) -> Self {
        Self { auth, limiter }
    }
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            front: self.clone(),
        }
    }
}

/// The service [`GuardLayer`] wraps around the Chat server. It keeps the
/// wrapped service's [`NamedService::NAME`], so it routes like it.
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    front: GuardLayer,
}

impl<S: NamedService> NamedService for Guard<S> {
    const NAME: &'static str = S::NAME;
}

impl GuardLayer {
    /// A `Connect` session opened over another transport (a WebSocket,
    /// `crate::web`), admitted as a `Connect` call with `token` as its
    /// bearer token would be: the caller, holding one of its stream slots.
    pub fn admit_stream(&self, token: &str) -> Result<Caller, Status> {
        let mut headers = http::HeaderMap::new();
        let value = http::HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
            Status::unauthenticated(
                "the token has characters a token cannot have; send the JWT as issued",
            )
        })?;
        headers.insert(http::header::AUTHORIZATION, value);
        self.admit("/confab.v1.Chat/Connect", &headers)?
            .ok_or_else(|| Status::internal("Connect is missing from the gateway's method table"))
    }

    /// The caller of a call to `path` with `headers`, admitted; `None` for
    /// a path that is not a Chat method.
    fn admit(&self, path: &str, headers: &http::HeaderMap) -> Result<Option<Caller>, Status> {
        let Some(admission) = admission(path) else {
            return Ok(None);
        };
        // Only the one header the authenticator reads is copied.
        let mut metadata = http::HeaderMap::new();
        if let Some(value) = headers.get(http::header::AUTHORIZATION) {
            metadata.insert(http::header::AUTHORIZATION, value.clone());
        }
        let who = self
            .auth
            .authenticate_claims(&MetadataMap::from_headers(metadata))?;
        let stream_slot = match admission {
            Admission::Charge(cost) => {
                self.limiter.admit(&who.user, cost)?;
                None
            }
            Admission::Stream => Some(Arc::new(Mutex::new(Some(
                self.limiter.open_stream(&who.user)?,
            )))),
        };
        Ok(Some(Caller {
            user: who.user,
            valid_until: who.valid_until,
            stream_slot,
        }))
    }
}

/// The hop span of an admitted call (`gateway.call`), continuing the
/// client's `traceparent` metadata or starting a trace: what the handler
/// does runs in it (a `Connect` stream's session for as long as it lasts),
/// so writes, reads from history and log lines carry its trace.
pub(crate) fn call_span(path: &str, headers: &http::HeaderMap) -> tracing::Span {
    let method = path.rsplit('/').next().unwrap_or(path);
    let span = confab_runtime::hop_span!("gateway.call", method);
    trace::start(&span, TraceParent::from_headers(headers));
    span
}

impl<S, B> tower::Service<http::Request<B>> for Guard<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<Instrumented<S::Future>, Ready<Result<Self::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.front.admit(req.uri().path(), req.headers()) {
            Ok(caller) => {
                let span = match caller {
                    Some(caller) => {
                        req.extensions_mut().insert(caller);
                        call_span(req.uri().path(), req.headers())
                    }
                    None => tracing::Span::none(),
                };
                Either::Left(self.inner.call(req).instrument(span))
            }
            Err(status) => {
                tracing::debug!(
                    path = req.uri().path(),
                    code = ?status.code(),
                    reason = status.message(),
                    "call refused at the gateway"
                );
                Either::Right(ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user_limits::UserLimits;
    use prost::Message;
    use std::convert::Infallible;
    use tonic::Code;
    use tower::{Layer, Service, ServiceExt};

    const SECRET: &str = "guard-test-secret-0123456789";

    fn guard(limits: UserLimits) -> Guard<tower::util::ServiceFn<Echo>> {
        GuardLayer::new(Authenticator::new(SECRET), Limiter::new(limits)).layer(tower::service_fn(
            echo as fn(http::Request<()>) -> EchoFuture,
        ))
    }

    type EchoFuture = Ready<Result<http::Response<tonic::body::Body>, Infallible>>;
    type Echo = fn(http::Request<()>) -> EchoFuture;

    /// Answers OK, with the caller it was given (if any) in `x-user` and
    /// whether it holds a stream slot in `x-slot`.
    fn echo(req: http::Request<()>) -> EchoFuture {
        let mut resp = http::Response::new(tonic::body::Body::default());
        if let Some(c) = req.extensions().get::<Caller>() {
            let h = resp.headers_mut();
            h.insert("x-user", c.user.parse().expect("ascii"));
            let slot = c.take_stream_slot().is_some();
            h.insert("x-slot", slot.to_string().parse().expect("ascii"));
        }
        ready(Ok(resp))
    }

    fn request(path: &str, user: Option<&str>) -> http::Request<()> {
        let mut req = http::Request::builder().uri(path);
        if let Some(user) = user {
            let token = Authenticator::new(SECRET).mint(user, 60).expect("mint");
            req = req.header("authorization", format!("Bearer {token}"));
        }
        req.body(()).expect("request")
    }

    async fn call(
        g: &mut Guard<tower::util::ServiceFn<Echo>>,
        req: http::Request<()>,
    ) -> http::Response<tonic::body::Body> {
        g.ready()
            .await
            .expect("ready")
            .call(req)
            .await
            .expect("call")
    }

    fn status(resp: &http::Response<tonic::body::Body>) -> Option<Status> {
        Status::from_header_map(resp.headers())
    }

    fn header<'a>(resp: &'a http::Response<tonic::body::Body>, name: &str) -> Option<&'a str> {
        resp.headers().get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn the_table_lists_every_chat_method_of_the_proto() {
        let set = prost_types::FileDescriptorSet::decode(confab_proto::PUBLIC_FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        let mut in_proto: Vec<String> = set
            .file
            .iter()
            .filter(|f| f.package() == "confab.v1")
            .flat_map(|f| f.service.iter())
            .filter(|s| s.name() == "Chat")
            .flat_map(|s| s.method.iter())
            .map(|m| format!("/confab.v1.Chat/{}", m.name()))
            .collect();
        in_proto.sort();
        let mut in_table: Vec<String> = METHODS.iter().map(|(p, _)| p.to_string()).collect();
        in_table.sort();
        assert_eq!(in_table, in_proto);
        assert_eq!(
            admission("/confab.v1.Chat/SendMessage"),
            Some(Admission::Charge(Cost::Message))
        );
        assert_eq!(
            admission("/confab.v1.Chat/MarkRead"),
            Some(Admission::Charge(Cost::Read))
        );
        assert_eq!(admission("/confab.v1.Chat/Nope"), None);
    }

    #[tokio::test]
    async fn calls_without_a_valid_token_never_reach_the_handler() {
        let mut g = guard(UserLimits::default());
        let resp = call(&mut g, request("/confab.v1.Chat/GetHistory", None)).await;
        let s = status(&resp).expect("refused");
        assert_eq!(s.code(), Code::Unauthenticated);
        assert!(s.message().starts_with("missing authorization"), "{s:?}");
        assert_eq!(header(&resp, "x-user"), None);
        let mut bad = request("/confab.v1.Chat/SendMessage", None);
        bad.headers_mut()
            .insert("authorization", "Bearer not.a.jwt".parse().expect("ascii"));
        let s = status(&call(&mut g, bad).await).expect("refused");
        assert_eq!(s.code(), Code::Unauthenticated);
        // Not a Chat method: passed on (tonic answers UNIMPLEMENTED).
        let resp = call(&mut g, request("/confab.v1.Chat/Nope", None)).await;
        assert!(status(&resp).is_none());
    }

    #[tokio::test]
    async fn admitted_calls_carry_their_caller_and_are_charged() {
        let mut g = guard(UserLimits {
            messages_per_sec: 1,
            messages_burst: 2,
            max_streams_per_user: 1,
            conversations_per_min: 1,
            reads_per_sec: 1,
        });
        for _ in 0..2 {
            let resp = call(
                &mut g,
                request("/confab.v1.Chat/SendMessage", Some("alice")),
            )
            .await;
            assert!(status(&resp).is_none());
            assert_eq!(header(&resp, "x-user"), Some("alice"));
            assert_eq!(header(&resp, "x-slot"), Some("false"));
        }
        let resp = call(
            &mut g,
            request("/confab.v1.Chat/SendMessage", Some("alice")),
        )
        .await;
        let s = status(&resp).expect("over the burst");
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(
            s.message().contains("CONFAB_RATE_MESSAGES_PER_SEC=1"),
            "{s:?}"
        );
        assert_eq!(header(&resp, "x-user"), None, "the handler was not called");
        // Free calls still pass; bob has his own budget.
        let resp = call(&mut g, request("/confab.v1.Chat/GetHistory", Some("alice"))).await;
        assert!(status(&resp).is_none());
        let resp = call(&mut g, request("/confab.v1.Chat/SendMessage", Some("bob"))).await;
        assert!(status(&resp).is_none());
    }

    #[tokio::test]
    async fn connect_holds_a_stream_slot_until_the_guard_is_dropped() {
        let limiter = Limiter::new(UserLimits {
            max_streams_per_user: 1,
            ..UserLimits::default()
        });
        let g = GuardLayer::new(Authenticator::new(SECRET), limiter.clone()).layer(
            tower::service_fn(|_req: http::Request<()>| async {
                Ok::<_, Infallible>(http::Response::new(tonic::body::Body::default()))
            }),
        );
        let first = g
            .front
            .admit(
                "/confab.v1.Chat/Connect",
                request("/", Some("alice")).headers(),
            )
            .expect("admitted")
            .expect("a Chat method");
        let err = g
            .front
            .admit(
                "/confab.v1.Chat/Connect",
                request("/", Some("alice")).headers(),
            )
            .expect_err("one stream per user");
        assert_eq!(err.code(), Code::ResourceExhausted);
        // Taking the slot moves it; the caller's clones no longer hold it.
        let slot = first.clone().take_stream_slot().expect("the slot");
        assert!(first.take_stream_slot().is_none(), "taken once");
        drop(first);
        assert!(limiter.open_stream("alice").is_err(), "still held");
        drop(slot);
        assert!(limiter.open_stream("alice").is_ok(), "freed");
    }
}
