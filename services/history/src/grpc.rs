//! History's read side over gRPC (`confab.internal.v1.HistoryReader`), for
//! gateways and routers running in other processes. Errors keep the code and
//! message of the `ChatError` behind them, so a client of the gateway sees the
//! same status whether history is local or remote.

use confab_core::error::ChatError;
use confab_core::seams::HistoryApi;
use confab_proto::internal::v1::history_reader_server::{HistoryReader, HistoryReaderServer};
use confab_proto::internal::v1::{
    DirectPartnersRequest, DirectPartnersResponse, EditHistoryForUserRequest,
    GetConversationRequest, ListForUserRequest, PresenceForUserRequest, ReadHistoryRequest,
    RecordPresenceRequest, RecordPresenceResponse, SearchForUserRequest, SyncForUserRequest,
};
use confab_proto::v1::{
    Conversation, GetEditHistoryResponse, GetHistoryResponse, GetPresenceResponse,
    ListConversationsResponse, SearchMessagesResponse, SyncResponse,
};
use confab_runtime::server::Server;
use confab_runtime::trace::{self, TraceParent};
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// Serves `HistoryReader` from any `HistoryApi` (in practice `LocalHistory`).
#[derive(Clone)]
pub struct HistoryReaderService {
    /// Where the reads are answered.
    reader: Arc<dyn HistoryApi>,
}

impl HistoryReaderService {
    /// A service answering from `reader`.
    pub fn new(reader: Arc<dyn HistoryApi>) -> Self {
        Self { reader }
    }
}

/// Internal callers must say who they act for; an empty id is a bug in the
/// caller, not a user without rights.
fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    if value.is_empty() {
        return Err(ChatError::InvalidArgument(format!("{field} is required")).into());
    }
    Ok(value)
}

/// The `history.read` hop span of a read, continuing the caller's
/// `traceparent` metadata (a gateway's request or delivery, a router's
/// routing) or starting a trace.
fn read_span(method: &'static str, metadata: &tonic::metadata::MetadataMap) -> tracing::Span {
    let span = confab_runtime::hop_span!("history.read", method);
    trace::start(&span, TraceParent::from_metadata(metadata));
    span
}

#[tonic::async_trait]
impl HistoryReader for HistoryReaderService {
    async fn get_history(
        &self,
        req: Request<ReadHistoryRequest>,
    ) -> Result<Response<GetHistoryResponse>, Status> {
        let span = read_span("GetHistory", req.metadata());
        let r = req.into_inner();
        let caller = required("caller_id", &r.caller_id)?;
        let request = r
            .request
            .ok_or_else(|| ChatError::InvalidArgument("request is required".into()))?;
        Ok(confab_runtime::compression::answer(
            self.reader
                .get_history(caller, request)
                .instrument(span)
                .await?,
        ))
    }

    async fn list_conversations(
        &self,
        req: Request<ListForUserRequest>,
    ) -> Result<Response<ListConversationsResponse>, Status> {
        let span = read_span("ListConversations", req.metadata());
        let r = req.into_inner();
        let user = required("user_id", &r.user_id)?;
        Ok(confab_runtime::compression::answer(
            self.reader
                .list_conversations(user, r.request.unwrap_or_default())
                .instrument(span)
                .await?,
        ))
    }

    async fn get_conversation(
        &self,
        req: Request<GetConversationRequest>,
    ) -> Result<Response<Conversation>, Status> {
        let span = read_span("GetConversation", req.metadata());
        let r = req.into_inner();
        let id = required("conversation_id", &r.conversation_id)?;
        let conv = if r.caller_id.is_empty() {
            self.reader.conversation(id).instrument(span).await?
        } else {
            let caller = r.caller_id.as_str();
            self.reader
                .get_conversation(caller, id)
                .instrument(span)
                .await?
        };
        Ok(confab_runtime::compression::answer(conv))
    }

    async fn get_edit_history(
        &self,
        req: Request<EditHistoryForUserRequest>,
    ) -> Result<Response<GetEditHistoryResponse>, Status> {
        let span = read_span("GetEditHistory", req.metadata());
        let r = req.into_inner();
        let caller = required("caller_id", &r.caller_id)?;
        Ok(confab_runtime::compression::answer(
            self.reader
                .get_edit_history(caller, r.request.unwrap_or_default())
                .instrument(span)
                .await?,
        ))
    }

    async fn search_messages(
        &self,
        req: Request<SearchForUserRequest>,
    ) -> Result<Response<SearchMessagesResponse>, Status> {
        let span = read_span("SearchMessages", req.metadata());
        let r = req.into_inner();
        let caller = required("caller_id", &r.caller_id)?;
        Ok(confab_runtime::compression::answer(
            self.reader
                .search_messages(caller, r.request.unwrap_or_default())
                .instrument(span)
                .await?,
        ))
    }

    async fn get_presence(
        &self,
        req: Request<PresenceForUserRequest>,
    ) -> Result<Response<GetPresenceResponse>, Status> {
        let span = read_span("GetPresence", req.metadata());
        let r = req.into_inner();
        let caller = required("caller_id", &r.caller_id)?;
        Ok(confab_runtime::compression::answer(
            self.reader
                .get_presence(caller, r.request.unwrap_or_default())
                .instrument(span)
                .await?,
        ))
    }

    async fn direct_partners(
        &self,
        req: Request<DirectPartnersRequest>,
    ) -> Result<Response<DirectPartnersResponse>, Status> {
        let span = read_span("DirectPartners", req.metadata());
        let user = req.into_inner().user_id;
        let user = required("user_id", &user)?;
        let user_ids = self.reader.direct_partners(user).instrument(span).await?;
        Ok(confab_runtime::compression::answer(
            DirectPartnersResponse { user_ids },
        ))
    }

    async fn record_presence(
        &self,
        req: Request<RecordPresenceRequest>,
    ) -> Result<Response<RecordPresenceResponse>, Status> {
        let span = read_span("RecordPresence", req.metadata());
        let updates = req.into_inner().updates;
        for u in &updates {
            confab_core::validate::check_user_id(&u.user_id)?;
        }
        self.reader
            .record_presence(updates)
            .instrument(span)
            .await?;
        Ok(confab_runtime::compression::answer(
            RecordPresenceResponse {},
        ))
    }

    async fn sync(
        &self,
        req: Request<SyncForUserRequest>,
    ) -> Result<Response<SyncResponse>, Status> {
        let span = read_span("Sync", req.metadata());
        let r = req.into_inner();
        let user = required("user_id", &r.user_id)?;
        Ok(confab_runtime::compression::answer(
            self.reader
                .sync(user, r.request.unwrap_or_default())
                .instrument(span)
                .await?,
        ))
    }
}

/// The `HistoryReader` server over `reader`, for [`Server::serve`]: a
/// history process requires the service token of every caller
/// ([`Server::service_token`]); in-process tests may leave it open.
pub fn server(reader: Arc<dyn HistoryApi>) -> Server {
    Server::new(
        "history",
        confab_runtime::compressed!(HistoryReaderServer::new(HistoryReaderService::new(reader))),
        confab_proto::FILE_DESCRIPTOR_SET,
    )
}
