//! Clients of services running in other processes (distributed mode).
//! `RemoteHistory` is the `HistoryApi` that gateways and routers use when
//! history is not in their process: it spreads calls over every configured
//! history address and moves on to the next one when an address is down.
//! Each address has its own circuit breaker, so an address that keeps
//! failing is skipped at once instead of being waited on.

use async_trait::async_trait;
use confab_core::config::{millis_or, required_list, ConfigError, Env};
use confab_core::error::ChatError;
use confab_core::seams::HistoryApi;
use confab_core::vars;
use confab_layers::breaker::{
    BreakerConfig, BreakerHandle, CircuitBreaker, CircuitBreakerLayer, CircuitOpen, GrpcFailures,
};
use confab_layers::service_token::ServiceToken;
use confab_proto::codec::RawAnswerClient;
use confab_proto::internal::v1::history_reader_client::HistoryReaderClient;
use confab_proto::internal::v1::history_reader_server::SERVICE_NAME as HISTORY_READER;
use confab_proto::internal::v1::{
    DirectPartnersRequest, DirectPartnersResponse, EditHistoryForUserRequest,
    GetConversationRequest, ListForUserRequest, PresenceForUserRequest, PresenceUpdate,
    ReadHistoryRequest, RecordPresenceRequest, RecordPresenceResponse, SearchForUserRequest,
    SyncForUserRequest,
};
use confab_proto::prost::bytes::Bytes;
use confab_proto::v1::{
    self as pb, Conversation, GetEditHistoryRequest, GetEditHistoryResponse, GetHistoryRequest,
    GetHistoryResponse, GetPresenceRequest, GetPresenceResponse, ListConversationsRequest,
    ListConversationsResponse, SearchMessagesRequest, SearchMessagesResponse, SyncRequest,
    SyncResponse,
};
use confab_runtime::transport::ClientTls;
use std::error::Error as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};
use tower::{Service, ServiceBuilder, ServiceExt};

/// What a caller sees when no history address answered.
pub const HISTORY_UNAVAILABLE: &str = "history is unavailable; retry";

/// An address that cannot be used to reach a service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address {address:?}: {reason}")]
pub struct AddressError {
    /// The address as configured.
    pub address: String,
    /// What a usable address looks like.
    pub reason: String,
}

/// An endpoint for `address`: `host:port` or `http://host:port` (plaintext
/// HTTP/2).
pub fn endpoint(address: &str) -> Result<Endpoint, AddressError> {
    endpoint_with(address, None)
}

/// An endpoint for `address` over `tls` (`host:port` or `https://host:port`)
/// or, without it, plaintext (`host:port` or `http://host:port`).
pub fn endpoint_with(address: &str, tls: Option<&ClientTls>) -> Result<Endpoint, AddressError> {
    let bad = |reason: &str| AddressError {
        address: address.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = address.trim();
    if trimmed.is_empty() {
        return Err(bad("expected host:port"));
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let uri = match trimmed.split_once("://") {
        Some((given, _)) if given == scheme => trimmed.to_string(),
        Some(_) if tls.is_some() => {
            return Err(bad(
                "CONFAB_TLS_CA is set: links to other services use TLS (https://host:port or host:port)",
            ))
        }
        Some(("https", _)) => {
            return Err(bad(
                "https:// needs CONFAB_TLS_CA (the CA that signed the services' certificates)",
            ))
        }
        Some(_) => return Err(bad("only http:// is supported between services")),
        None => format!("{scheme}://{trimmed}"),
    };
    let endpoint = Endpoint::from_shared(uri).map_err(|_| bad("expected host:port"))?;
    if endpoint.uri().port_u16().is_none() {
        return Err(bad("the port is missing; expected host:port"));
    }
    let endpoint = match tls {
        Some(tls) => endpoint
            .tls_config(tls.config())
            .map_err(|e| bad(&format!("TLS: {e}")))?,
        None => endpoint,
    };
    Ok(endpoint
        .tcp_nodelay(true)
        // Notices a peer that vanished without closing the connection.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10)))
}

/// Largest history response accepted from history.
pub const MAX_PAGE_BYTES: usize = 64 * 1024 * 1024;

/// How to reach history.
#[derive(Debug, Clone)]
pub struct HistoryClientConfig {
    /// History addresses (`host:port`), used round-robin.
    pub addrs: Vec<String>,
    /// Longest wait for one call's answer.
    pub request_timeout: Duration,
    /// Longest wait to open a connection before moving on to the next address.
    pub connect_timeout: Duration,
    /// When an address's circuit breaker opens (calls to it fail at once and
    /// go to the next address) and how it recovers.
    pub breaker: BreakerConfig,
    /// The token history requires (`CONFAB_SERVICE_TOKEN`), sent with every
    /// call; `None` sends none.
    pub service_token: Option<ServiceToken>,
    /// TLS to history (`CONFAB_TLS_CA`, presenting `CONFAB_TLS_CERT` when
    /// set); `None`: plaintext.
    pub tls: Option<ClientTls>,
}

impl HistoryClientConfig {
    /// Default timeouts for `addrs`.
    pub fn new(addrs: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            addrs: addrs.into_iter().map(Into::into).collect(),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            breaker: BreakerConfig::default(),
            service_token: None,
            tls: None,
        }
    }

    /// Reads `CONFAB_HISTORY_ADDRS` (required), `CONFAB_HISTORY_TIMEOUT_MS`,
    /// the breaker's `CONFAB_BREAKER_*` and the client TLS of `CONFAB_TLS_*`.
    /// The service token is the caller's to set: it reads it last, so the
    /// variables before it are reported first.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let mut config = Self::new(required_list(
            env,
            vars::HISTORY_ADDRS,
            "history addresses (host:port)",
        )?);
        config.request_timeout =
            millis_or(env, vars::HISTORY_TIMEOUT_MS, Duration::from_millis(5000))?;
        config.breaker = BreakerConfig::from_env(env)?;
        config.tls = ClientTls::from_env(env)?;
        Ok(config)
    }
}

/// Every call to one address: its breaker, then the RPC.
type TargetStack = CircuitBreaker<HistoryRpcs, GrpcFailures>;

/// One history address and its (lazily connected) channel.
struct Target {
    /// The address as configured, for logs.
    addr: String,
    /// The calls to that address, through its breaker.
    stack: TargetStack,
    /// A view of that address's breaker.
    breaker: BreakerHandle,
}

/// The RPCs of `HistoryReader`, as one tower service over a client.
#[derive(Clone)]
struct HistoryRpcs {
    /// One address's channel.
    channel: Channel,
    /// Longest wait for one answer.
    timeout: Duration,
}

/// Marks the DEADLINE_EXCEEDED of a call that this client gave up on (as
/// opposed to one history sent).
#[derive(Debug, thiserror::Error)]
#[error("history did not answer in time")]
struct GaveUp;

type RpcFuture<T> = Pin<Box<dyn Future<Output = Result<Response<T>, Status>> + Send>>;

/// A `HistoryReader` request message: what it answers and how it is sent.
trait HistoryRpc: Clone + Send + Sized + 'static {
    /// The response message.
    type Reply: Send + 'static;
    /// For logs.
    const NAME: &'static str;
    /// Sends `req` over `rpcs`.
    fn send(rpcs: &HistoryRpcs, req: Request<Self>) -> RpcFuture<Self::Reply>;
}

/// `impl HistoryRpc` for each request message: its reply, and the client
/// method that sends it (also its name in logs).
macro_rules! history_rpcs {
    ($($request:ty => $reply:ty, $method:ident;)*) => {$(
        impl HistoryRpc for $request {
            type Reply = $reply;
            const NAME: &'static str = stringify!($method);
            fn send(rpcs: &HistoryRpcs, req: Request<Self>) -> RpcFuture<Self::Reply> {
                let mut client = rpcs.client();
                Box::pin(async move { client.$method(req).await })
            }
        }
    )*};
}

history_rpcs! {
    ReadHistoryRequest => GetHistoryResponse, get_history;
    ListForUserRequest => ListConversationsResponse, list_conversations;
    GetConversationRequest => Conversation, get_conversation;
    SyncForUserRequest => SyncResponse, sync;
    PresenceForUserRequest => GetPresenceResponse, get_presence;
    EditHistoryForUserRequest => GetEditHistoryResponse, get_edit_history;
    SearchForUserRequest => SearchMessagesResponse, search_messages;
    DirectPartnersRequest => DirectPartnersResponse, direct_partners;
    RecordPresenceRequest => RecordPresenceResponse, record_presence;
}

/// `HistoryReader.Sync` whose answer is kept encoded ([`HistoryApi::sync_encoded`]).
#[derive(Clone)]
struct EncodedSync(SyncForUserRequest);

/// `HistoryReader.Sync`'s path, as the generated client sends it.
const SYNC_PATH: &str = "/confab.internal.v1.HistoryReader/Sync";

impl HistoryRpc for EncodedSync {
    type Reply = Bytes;
    const NAME: &'static str = "sync";

    fn send(rpcs: &HistoryRpcs, req: Request<Self>) -> RpcFuture<Bytes> {
        // What the generated client does for `sync`, with a codec that
        // leaves the answer as history encoded it.
        let mut grpc = tonic::client::Grpc::new(rpcs.channel.clone())
            .max_decoding_message_size(MAX_PAGE_BYTES);
        Box::pin(async move {
            grpc.ready()
                .await
                .map_err(|e| Status::unknown(format!("Service was not ready: {e}")))?;
            let mut req = req.map(|EncodedSync(r)| r);
            req.extensions_mut()
                .insert(tonic::GrpcMethod::new(HISTORY_READER, "Sync"));
            let path = tonic::codegen::http::uri::PathAndQuery::from_static(SYNC_PATH);
            grpc.unary(req, path, RawAnswerClient::<SyncForUserRequest>::default())
                .await
        })
    }
}

impl HistoryRpcs {
    /// The generated client over the channel. A page is up to 500 messages
    /// of up to the largest body (64 KiB bodies make 32 MiB): tonic's 4 MiB
    /// default would fail a resume on a busy conversation.
    fn client(&self) -> HistoryReaderClient<Channel> {
        HistoryReaderClient::new(self.channel.clone()).max_decoding_message_size(MAX_PAGE_BYTES)
    }
}

impl<M: HistoryRpc> Service<Request<M>> for HistoryRpcs {
    type Response = Response<M::Reply>;
    type Error = Status;
    type Future = RpcFuture<M::Reply>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        // The generated client waits for its channel itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<M>) -> Self::Future {
        let timeout = self.timeout;
        let answer = M::send(self, req);
        // Timed out here, below the breaker, so a history that hangs counts
        // as failing just like one that refuses connections.
        Box::pin(async move {
            tokio::time::timeout(timeout, answer)
                .await
                .unwrap_or_else(|_| {
                    let mut status = Status::deadline_exceeded(GaveUp.to_string());
                    status.set_source(Arc::new(GaveUp));
                    Err(status)
                })
        })
    }
}

/// `HistoryApi` over gRPC to one or more history processes. Every call goes
/// to the next address in turn; an address that is UNAVAILABLE (down,
/// refusing connections, or its store unreachable) is skipped for the next
/// one, which is safe because every call is a read. Statuses that history
/// returned keep their code and message.
pub struct RemoteHistory {
    /// Every configured address, in configuration order.
    targets: Vec<Target>,
    /// Where the next call starts (round-robin).
    next: AtomicUsize,
    /// Longest wait for one answer.
    request_timeout: Duration,
    /// Sent with every call.
    service_token: Option<ServiceToken>,
}

impl std::fmt::Debug for RemoteHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteHistory")
            .field("breakers", &self.breakers().collect::<Vec<_>>())
            .finish()
    }
}

impl RemoteHistory {
    /// A client for the addresses in `config`. Nothing is connected until the
    /// first call, so history may start after its clients. Must be called
    /// within a Tokio runtime.
    pub fn new(config: &HistoryClientConfig) -> Result<Self, AddressError> {
        if config.addrs.is_empty() {
            return Err(AddressError {
                address: String::new(),
                reason: "at least one history address is required".into(),
            });
        }
        let targets = config
            .addrs
            .iter()
            .map(|addr| {
                let channel = endpoint_with(addr, config.tls.as_ref())?
                    .connect_timeout(config.connect_timeout)
                    .connect_lazy();
                let breaker = CircuitBreakerLayer::new(
                    format!("history {addr}"),
                    config.breaker.clone(),
                    GrpcFailures,
                );
                let handle = breaker.handle();
                let stack = ServiceBuilder::new()
                    // Outermost, one per address: an address that keeps
                    // failing is refused here at once, and the caller moves
                    // on to the next address without waiting on this one.
                    .layer(breaker)
                    .service(HistoryRpcs {
                        channel,
                        timeout: config.request_timeout,
                    });
                Ok(Target {
                    addr: addr.clone(),
                    stack,
                    breaker: handle,
                })
            })
            .collect::<Result<Vec<_>, AddressError>>()?;
        Ok(Self {
            targets,
            next: AtomicUsize::new(0),
            request_timeout: config.request_timeout,
            service_token: config.service_token.clone(),
        })
    }

    /// The circuit breaker of every address, in configuration order, e.g.
    /// to export their states.
    pub fn breakers(&self) -> impl Iterator<Item = &BreakerHandle> {
        self.targets.iter().map(|t| &t.breaker)
    }

    fn timed_out(&self) -> ChatError {
        ChatError::Unavailable(format!(
            "history did not answer within {} ms; retry",
            self.request_timeout.as_millis()
        ))
    }

    /// Sends `msg` to one address after another, starting at the next in
    /// turn, until one answers with something other than UNAVAILABLE. An
    /// address whose breaker is open answers UNAVAILABLE at once.
    async fn call<M: HistoryRpc>(&self, msg: M) -> Result<M::Reply, ChatError>
    where
        TargetStack: Service<Request<M>, Response = Response<M::Reply>, Error = Status>,
    {
        let rpc = M::NAME;
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = ChatError::Unavailable(HISTORY_UNAVAILABLE.into());
        // The hop span this read is made for (a request, a delivery, a
        // routing): history's span continues its trace.
        let trace = confab_runtime::trace::current();
        for i in 0..n {
            let target = &self.targets[(start + i) % n];
            let mut req = Request::new(msg.clone());
            // History gives up when the caller would have stopped waiting.
            req.set_timeout(self.request_timeout);
            if let Some(token) = &self.service_token {
                token.attach(&mut req);
            }
            if let Some(trace) = &trace {
                trace.inject(&mut req);
            }
            let status = match target.stack.clone().oneshot(req).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => status,
            };
            if status.source().is_some_and(|s| s.is::<GaveUp>()) {
                tracing::warn!(rpc, address = %target.addr, timeout_ms = self.request_timeout.as_millis() as u64, "history did not answer in time");
                return Err(self.timed_out());
            }
            let err = self.error_for(&status);
            if err.code() != Code::Unavailable {
                return Err(err);
            }
            tracing::debug!(rpc, address = %target.addr, error = %status.message(), "history address unavailable; trying the next one");
            last = err;
        }
        tracing::warn!(rpc, addresses = n, error = %last, "no history address answered");
        Err(last)
    }

    /// The error a caller sees for `status`. A status history sent keeps its
    /// code and message; a failure of the link itself (no connection, reset
    /// stream) is UNAVAILABLE without transport details.
    fn error_for(&self, status: &Status) -> ChatError {
        // Statuses parsed from history's response carry no source; those made
        // up by the client from an I/O or protocol error, or by a breaker,
        // do. A refusal keeps its retry hint but not the internal address.
        if let Some(source) = status.source() {
            return match source.downcast_ref::<CircuitOpen>() {
                Some(open) => open.renamed("history").into(),
                None => ChatError::Unavailable(HISTORY_UNAVAILABLE.into()),
            };
        }
        match status.code() {
            // History's own deadline (the grpc-timeout we sent) ran out.
            Code::Cancelled | Code::DeadlineExceeded => self.timed_out(),
            code => match ChatError::from_proto(&pb::Error {
                code: code as i32,
                message: status.message().to_string(),
            }) {
                // Said to be history's, so that the gateway's answer is
                // never taken for a refusal of the client's own request
                // (tonic words a broken frame alike on both sides;
                // confab_layers::decoding).
                ChatError::Internal(m) => ChatError::Internal(format!("history failed: {m}")),
                refusal => refusal,
            },
        }
    }
}

#[async_trait]
impl HistoryApi for RemoteHistory {
    async fn get_history(
        &self,
        caller: &str,
        req: GetHistoryRequest,
    ) -> Result<GetHistoryResponse, ChatError> {
        let msg = ReadHistoryRequest {
            caller_id: caller.to_string(),
            request: Some(req),
        };
        self.call(msg).await
    }

    async fn list_conversations(
        &self,
        caller: &str,
        req: ListConversationsRequest,
    ) -> Result<ListConversationsResponse, ChatError> {
        self.call(ListForUserRequest {
            user_id: caller.to_string(),
            request: Some(req),
        })
        .await
    }

    async fn conversation(&self, conversation_id: &str) -> Result<Conversation, ChatError> {
        self.get_conversation("", conversation_id).await
    }

    /// With an empty `caller`, [`HistoryApi::conversation`].
    async fn get_conversation(
        &self,
        caller: &str,
        conversation_id: &str,
    ) -> Result<Conversation, ChatError> {
        self.call(GetConversationRequest {
            conversation_id: conversation_id.to_string(),
            caller_id: caller.to_string(),
        })
        .await
    }

    async fn sync(&self, caller: &str, req: SyncRequest) -> Result<SyncResponse, ChatError> {
        self.call(SyncForUserRequest {
            user_id: caller.to_string(),
            request: Some(req),
        })
        .await
    }

    async fn sync_encoded(&self, caller: &str, req: SyncRequest) -> Result<Bytes, ChatError> {
        self.call(EncodedSync(SyncForUserRequest {
            user_id: caller.to_string(),
            request: Some(req),
        }))
        .await
    }

    async fn get_edit_history(
        &self,
        caller: &str,
        req: GetEditHistoryRequest,
    ) -> Result<GetEditHistoryResponse, ChatError> {
        self.call(EditHistoryForUserRequest {
            caller_id: caller.to_string(),
            request: Some(req),
        })
        .await
    }

    async fn search_messages(
        &self,
        caller: &str,
        req: SearchMessagesRequest,
    ) -> Result<SearchMessagesResponse, ChatError> {
        self.call(SearchForUserRequest {
            caller_id: caller.to_string(),
            request: Some(req),
        })
        .await
    }

    async fn get_presence(
        &self,
        caller: &str,
        req: GetPresenceRequest,
    ) -> Result<GetPresenceResponse, ChatError> {
        self.call(PresenceForUserRequest {
            caller_id: caller.to_string(),
            request: Some(req),
        })
        .await
    }

    async fn direct_partners(&self, user: &str) -> Result<Vec<String>, ChatError> {
        let msg = DirectPartnersRequest {
            user_id: user.to_string(),
        };
        Ok(self.call(msg).await?.user_ids)
    }

    async fn record_presence(&self, updates: Vec<PresenceUpdate>) -> Result<(), ChatError> {
        self.call(RecordPresenceRequest { updates }).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_core::config::env_of;

    /// The encoded `Sync` goes to the method of `HistoryReader` that
    /// takes a `SyncForUserRequest`, as the descriptors name it.
    #[test]
    fn the_encoded_sync_goes_to_history_readers_sync() {
        use confab_proto::prost::Message as _;
        let set =
            confab_proto::prost_types::FileDescriptorSet::decode(confab_proto::FILE_DESCRIPTOR_SET)
                .expect("descriptors");
        let method = set
            .file
            .iter()
            .flat_map(|f| f.service.iter().map(move |s| (f, s)))
            .filter(|(f, s)| format!("{}.{}", f.package(), s.name()) == HISTORY_READER)
            .flat_map(|(_, s)| s.method.iter())
            .find(|m| m.input_type() == ".confab.internal.v1.SyncForUserRequest")
            .expect("a method taking SyncForUserRequest");
        assert_eq!(SYNC_PATH, format!("/{HISTORY_READER}/{}", method.name()));
    }

    #[test]
    fn the_configuration_comes_from_the_environment() {
        let addrs = (vars::HISTORY_ADDRS, "127.0.0.1:50071, 127.0.0.1:50072");
        let config = HistoryClientConfig::from_env(&env_of(&[addrs])).expect("valid");
        assert_eq!(config.addrs, ["127.0.0.1:50071", "127.0.0.1:50072"]);
        assert_eq!(config.request_timeout, Duration::from_secs(5));
        assert_eq!(config.breaker, BreakerConfig::default());
        let config = HistoryClientConfig::from_env(&env_of(&[
            addrs,
            (vars::HISTORY_TIMEOUT_MS, "750"),
            ("CONFAB_BREAKER_WINDOW", "40"),
            ("CONFAB_BREAKER_MIN_CALLS", "8"),
            ("CONFAB_BREAKER_HALF_OPEN_PROBES", "2"),
            ("CONFAB_BREAKER_FAILURE_RATE", "0.75"),
            ("CONFAB_BREAKER_OPEN_MS", "250"),
        ]))
        .expect("valid");
        assert_eq!(config.request_timeout, Duration::from_millis(750));
        let b = &config.breaker;
        assert_eq!((b.window, b.min_calls, b.half_open_probes), (40, 8, 2));
        assert_eq!(b.failure_threshold, 0.75);
        assert_eq!(b.open_for, Duration::from_millis(250));
        for (key, bad) in [
            ("CONFAB_BREAKER_FAILURE_RATE", "1.5"),
            ("CONFAB_BREAKER_WINDOW", "0"),
            (vars::HISTORY_TIMEOUT_MS, "soon"),
        ] {
            let err = HistoryClientConfig::from_env(&env_of(&[addrs, (key, bad)]))
                .expect_err("a bad value");
            assert_eq!(err.key, key);
        }
        let err = HistoryClientConfig::from_env(&env_of(&[])).expect_err("no address");
        assert_eq!(err.key, vars::HISTORY_ADDRS);
    }

    #[test]
    fn addresses_need_a_port_and_plain_http() {
        assert!(endpoint("127.0.0.1:7000").is_ok());
        assert!(endpoint("http://history:7000").is_ok());
        for bad in ["", "history", "https://history:7000", "http://"] {
            assert!(endpoint(bad).is_err(), "{bad:?} accepted");
        }
        let e = RemoteHistory::new(&HistoryClientConfig::new(Vec::<String>::new()))
            .err()
            .map(|e| e.reason);
        assert_eq!(
            e.as_deref(),
            Some("at least one history address is required")
        );
    }

    #[tokio::test]
    async fn statuses_from_history_keep_their_code_and_timeouts_are_unavailable() {
        let remote =
            RemoteHistory::new(&HistoryClientConfig::new(["127.0.0.1:1"])).expect("client");
        let denied = remote.error_for(&Status::permission_denied("not a member"));
        assert_eq!(denied, ChatError::PermissionDenied("not a member".into()));
        let missing = remote.error_for(&Status::not_found("no such conversation"));
        assert_eq!(missing, ChatError::NotFound("no such conversation".into()));
        let down = remote.error_for(&Status::unavailable("database is down; retry"));
        assert_eq!(
            down,
            ChatError::Unavailable("database is down; retry".into())
        );
        let late = remote.error_for(&Status::cancelled("Timeout expired"));
        assert_eq!(late.code(), Code::Unavailable);
        // A refusal by an address's breaker keeps the retry hint, not the address.
        let refused = remote.error_for(&Status::from(CircuitOpen {
            name: "history 10.0.0.7:7000".into(),
            retry_in: Duration::from_secs(5),
        }));
        assert_eq!(
            refused,
            ChatError::Unavailable("history is failing; it will be retried in 5000 ms".into())
        );
        // Any other code is history's failure, said to be history's.
        let odd = remote.error_for(&Status::unimplemented("no such method"));
        assert_eq!(
            odd,
            ChatError::Internal("history failed: no such method".into())
        );
    }

    #[tokio::test]
    async fn an_unreachable_history_is_unavailable_without_transport_details() {
        // A port nobody listens on: the connection is refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let addr = format!("127.0.0.1:{port}");
        let remote =
            RemoteHistory::new(&HistoryClientConfig::new([addr.clone(), addr])).expect("client");
        for _ in 0..3 {
            let err = remote.conversation("grp-x").await.err();
            assert_eq!(
                err,
                Some(ChatError::Unavailable(HISTORY_UNAVAILABLE.into()))
            );
        }
    }
}
