//! `Sync`, as a unary call or a `sync` frame: history answers, the gateway
//! counts each sync ([`SYNC_CALLS`]) and times it ([`SYNC_DURATION`]).

use crate::guard::Caller;
use confab_core::error::ChatError;
use confab_core::metrics::{SYNC_CALLS, SYNC_DURATION};
use confab_core::seams::HistoryApi;
use confab_proto::codec::RawAnswerServer;
use confab_proto::prost::bytes::Bytes;
use confab_proto::prost::Message as _;
use confab_proto::v1::{SyncRequest, SyncResponse};
use confab_proto::SyncShape;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;

/// One sync, from its first page to its last.
pub struct SyncCall {
    /// `unary` or `stream`.
    via: &'static str,
    started: Instant,
    /// Whether any page reported a change.
    changed: bool,
}

impl SyncCall {
    /// A sync starting now; `via` is `unary` or `stream`.
    pub fn start(via: &'static str) -> Self {
        Self {
            via,
            started: Instant::now(),
            changed: false,
        }
    }

    /// One page of `user`'s sync from `history`.
    pub async fn page(
        &mut self,
        history: &dyn HistoryApi,
        user: &str,
        req: SyncRequest,
    ) -> Result<SyncResponse, ChatError> {
        let page = history.sync(user, req).await?;
        self.changed |= !page.conversations.is_empty() || !page.removed_conversation_ids.is_empty();
        Ok(page)
    }

    /// Counts and times the sync, which ended as `ok` says.
    pub fn finish(self, ok: bool) {
        let result = match (ok, self.changed) {
            (false, _) => "error",
            (true, true) => "changed",
            (true, false) => "unchanged",
        };
        metrics::counter!(SYNC_CALLS, "via" => self.via, "result" => result).increment(1);
        metrics::histogram!(SYNC_DURATION, "via" => self.via)
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// The unary `Sync` as the gateway serves it ([`SyncRoute`]): one page,
/// passed on as history encoded it.
pub async fn unary_encoded(
    history: &dyn HistoryApi,
    user: &str,
    req: SyncRequest,
) -> Result<Bytes, ChatError> {
    let mut call = SyncCall::start("unary");
    let page = history.sync_encoded(user, req).await.and_then(|bytes| {
        call.changed |= reports_change(&bytes)?;
        Ok(bytes)
    });
    call.finish(page.is_ok());
    page
}

/// Whether an encoded `SyncResponse` reports a conversation or a removal,
/// read without decoding its conversations.
fn reports_change(encoded: &[u8]) -> Result<bool, ChatError> {
    let shape = SyncShape::decode(encoded).map_err(undecodable)?;
    Ok(!shape.conversations.is_empty() || !shape.removed_conversation_ids.is_empty())
}

/// The unary `Sync` decoded ([`unary_encoded`]'s answer), for a
/// `ChatServer` served without [`SyncRoute`].
pub async fn unary(
    history: &dyn HistoryApi,
    user: &str,
    req: SyncRequest,
) -> Result<SyncResponse, ChatError> {
    let page = unary_encoded(history, user, req).await?;
    SyncResponse::decode(page).map_err(undecodable)
}

/// INTERNAL for an answer from history that is not a `SyncResponse`.
fn undecodable(e: confab_proto::prost::DecodeError) -> ChatError {
    ChatError::Internal(format!("history's Sync answer does not decode: {e}"))
}

/// The Chat routes with `Sync` answered by [`unary_encoded`]: history's
/// answer goes to the client as the bytes history sent, so the gateway
/// neither decodes nor encodes the conversations (about 4 ms of its CPU
/// for a page of 1,000; docs/benchmarks.md). Every other call goes to
/// `inner`, the generated `ChatServer`.
#[derive(Clone)]
pub struct SyncRoute<S> {
    inner: S,
    history: Arc<dyn HistoryApi>,
    /// Largest request accepted, as for every other call.
    max_message_bytes: usize,
}

/// `Sync`'s path.
pub const SYNC_PATH: &str = "/confab.v1.Chat/Sync";

impl<S> SyncRoute<S> {
    /// `inner` with `Sync` answered from `history`.
    pub fn new(inner: S, history: Arc<dyn HistoryApi>, max_message_bytes: usize) -> Self {
        Self {
            inner,
            history,
            max_message_bytes,
        }
    }
}

impl<S: NamedService> NamedService for SyncRoute<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for SyncRoute<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
    S::Future: Send + 'static,
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != SYNC_PATH {
            return Box::pin(self.inner.call(req));
        }
        let handler = EncodedSync {
            history: self.history.clone(),
        };
        let max = self.max_message_bytes;
        Box::pin(async move {
            let mut grpc = confab_runtime::compressed!(tonic::server::Grpc::new(
                RawAnswerServer::<SyncRequest>::default()
            ))
            .apply_max_message_size_config(Some(max), None);
            Ok(grpc.unary(handler, req).await)
        })
    }
}

/// `Sync` for [`SyncRoute`].
struct EncodedSync {
    history: Arc<dyn HistoryApi>,
}

impl tonic::server::UnaryService<SyncRequest> for EncodedSync {
    type Response = Bytes;
    type Future = BoxFuture<tonic::Response<Bytes>, tonic::Status>;

    fn call(&mut self, mut req: tonic::Request<SyncRequest>) -> Self::Future {
        let history = self.history.clone();
        Box::pin(async move {
            let user = Caller::take(&mut req)?.user;
            let page = unary_encoded(history.as_ref(), &user, req.into_inner()).await?;
            let len = page.len();
            Ok(confab_runtime::compression::answer_of_len(page, len))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_proto::v1::Conversation;

    /// The shape read from an encoded `SyncResponse` sees its conversations
    /// and removals under the same tags.
    #[test]
    fn an_encoded_answer_reports_what_it_carries() {
        let encoded = |r: SyncResponse| r.encode_to_vec();
        let empty = SyncResponse {
            cursor: "c".into(),
            has_more: true,
            ..SyncResponse::default()
        };
        assert!(!reports_change(&encoded(empty)).expect("decodes"));
        let changed = SyncResponse {
            conversations: vec![Conversation {
                id: "g".into(),
                ..Conversation::default()
            }],
            cursor: "c".into(),
            ..SyncResponse::default()
        };
        let shape = SyncShape::decode(encoded(changed.clone()).as_slice()).expect("decodes");
        assert_eq!(shape.conversations.len(), 1);
        assert_eq!(
            Conversation::decode(shape.conversations[0].clone()).expect("a conversation"),
            changed.conversations[0]
        );
        assert!(reports_change(&encoded(changed)).expect("decodes"));
        let removed = SyncResponse {
            removed_conversation_ids: vec!["g".into()],
            ..SyncResponse::default()
        };
        assert!(reports_change(&encoded(removed)).expect("decodes"));
        assert!(reports_change(&[0xff, 0xff]).is_err());
    }
}
