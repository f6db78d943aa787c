//! Clients of services running in other processes (distributed mode).
//! `RemoteHistory` is the `HistoryApi` that gateways and routers use when
//! history is not in their process: it spreads calls over every configured
//! history address and moves on to the next one when an address is down.

use crate::error::ChatError;
use crate::pipeline::HistoryApi;
use async_trait::async_trait;
use confab_proto::internal::v1::history_reader_client::HistoryReaderClient;
use confab_proto::internal::v1::{GetConversationRequest, ListForUserRequest, ReadHistoryRequest};
use confab_proto::v1::{self as pb, Conversation, GetHistoryRequest, GetHistoryResponse};
use std::error::Error as _;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

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
/// HTTP/2; the internal links do not speak TLS).
pub fn endpoint(address: &str) -> Result<Endpoint, AddressError> {
    let bad = |reason: &str| AddressError {
        address: address.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = address.trim();
    if trimmed.is_empty() {
        return Err(bad("expected host:port"));
    }
    let uri = if trimmed.contains("://") {
        if !trimmed.starts_with("http://") {
            return Err(bad("only http:// is supported between services"));
        }
        trimmed.to_string()
    } else {
        format!("http://{trimmed}")
    };
    let endpoint = Endpoint::from_shared(uri).map_err(|_| bad("expected host:port"))?;
    if endpoint.uri().port_u16().is_none() {
        return Err(bad("the port is missing; expected host:port"));
    }
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
}

impl HistoryClientConfig {
    /// Default timeouts for `addrs`.
    pub fn new(addrs: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            addrs: addrs.into_iter().map(Into::into).collect(),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

/// One history address and its (lazily connected) channel.
struct Target {
    /// The address as configured, for logs.
    addr: String,
    /// The client over that address's channel.
    client: HistoryReaderClient<Channel>,
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
                let channel = endpoint(addr)?
                    .connect_timeout(config.connect_timeout)
                    .connect_lazy();
                Ok(Target {
                    addr: addr.clone(),
                    // A page is up to 500 messages of up to the largest body
                    // (64 KiB bodies make 32 MiB): tonic's 4 MiB default
                    // would fail a resume on a busy conversation.
                    client: HistoryReaderClient::new(channel)
                        .max_decoding_message_size(MAX_PAGE_BYTES),
                })
            })
            .collect::<Result<Vec<_>, AddressError>>()?;
        Ok(Self {
            targets,
            next: AtomicUsize::new(0),
            request_timeout: config.request_timeout,
        })
    }

    fn timed_out(&self) -> ChatError {
        ChatError::Unavailable(format!(
            "history did not answer within {} ms; retry",
            self.request_timeout.as_millis()
        ))
    }

    /// Runs `call` against one address after another, starting at the next
    /// in turn, until one answers with something other than UNAVAILABLE.
    async fn call<M, T, F, Fut>(&self, rpc: &'static str, msg: M, call: F) -> Result<T, ChatError>
    where
        M: Clone,
        F: Fn(HistoryReaderClient<Channel>, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = ChatError::Unavailable(HISTORY_UNAVAILABLE.into());
        for i in 0..n {
            let target = &self.targets[(start + i) % n];
            let mut req = Request::new(msg.clone());
            // History gives up when the caller would have stopped waiting.
            req.set_timeout(self.request_timeout);
            let answer =
                tokio::time::timeout(self.request_timeout, call(target.client.clone(), req)).await;
            let status = match answer {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => status,
                Err(_) => {
                    tracing::warn!(rpc, address = %target.addr, timeout_ms = self.request_timeout.as_millis() as u64, "history did not answer in time");
                    return Err(self.timed_out());
                }
            };
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
        // up by the client from an I/O or protocol error do.
        if status.source().is_some() {
            return ChatError::Unavailable(HISTORY_UNAVAILABLE.into());
        }
        match status.code() {
            // History's own deadline (the grpc-timeout we sent) ran out.
            Code::Cancelled | Code::DeadlineExceeded => self.timed_out(),
            code => ChatError::from_proto(&pb::Error {
                code: code as i32,
                message: status.message().to_string(),
            }),
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
        self.call("get_history", msg, |mut c, r| async move {
            c.get_history(r).await
        })
        .await
    }

    async fn list_conversations(&self, caller: &str) -> Result<Vec<Conversation>, ChatError> {
        let msg = ListForUserRequest {
            user_id: caller.to_string(),
        };
        let resp = self
            .call("list_conversations", msg, |mut c, r| async move {
                c.list_conversations(r).await
            })
            .await?;
        Ok(resp.conversations)
    }

    async fn conversation(&self, conversation_id: &str) -> Result<Conversation, ChatError> {
        let msg = GetConversationRequest {
            conversation_id: conversation_id.to_string(),
        };
        self.call("get_conversation", msg, |mut c, r| async move {
            c.get_conversation(r).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let odd = remote.error_for(&Status::unimplemented("no such method"));
        assert_eq!(odd, ChatError::Internal("no such method".into()));
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
