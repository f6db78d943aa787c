//! History's read side over gRPC (`confab.internal.v1.HistoryReader`), for
//! gateways and routers running in other processes. Errors keep the code and
//! message of the `ChatError` behind them, so a client of the gateway sees the
//! same status whether history is local or remote.

use confab_common::error::ChatError;
use confab_common::pipeline::HistoryApi;
use confab_common::shutdown::Signal;
use confab_proto::internal::v1::history_reader_server::{HistoryReader, HistoryReaderServer};
use confab_proto::internal::v1::{GetConversationRequest, ListForUserRequest, ReadHistoryRequest};
use confab_proto::v1::{Conversation, GetHistoryResponse, ListConversationsResponse};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

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

#[tonic::async_trait]
impl HistoryReader for HistoryReaderService {
    async fn get_history(
        &self,
        req: Request<ReadHistoryRequest>,
    ) -> Result<Response<GetHistoryResponse>, Status> {
        let r = req.into_inner();
        let caller = required("caller_id", &r.caller_id)?;
        let request = r
            .request
            .ok_or_else(|| ChatError::InvalidArgument("request is required".into()))?;
        Ok(Response::new(
            self.reader.get_history(caller, request).await?,
        ))
    }

    async fn list_conversations(
        &self,
        req: Request<ListForUserRequest>,
    ) -> Result<Response<ListConversationsResponse>, Status> {
        let r = req.into_inner();
        let user = required("user_id", &r.user_id)?;
        let conversations = self.reader.list_conversations(user).await?;
        Ok(Response::new(ListConversationsResponse { conversations }))
    }

    async fn get_conversation(
        &self,
        req: Request<GetConversationRequest>,
    ) -> Result<Response<Conversation>, Status> {
        let r = req.into_inner();
        let id = required("conversation_id", &r.conversation_id)?;
        Ok(Response::new(self.reader.conversation(id).await?))
    }
}

/// Serves `HistoryReader`, health and reflection on `listener` until
/// `shutdown` fires, then finishes the calls in flight.
pub async fn serve(
    reader: Arc<dyn HistoryApi>,
    listener: TcpListener,
    shutdown: Signal,
) -> Result<(), tonic::transport::Error> {
    type Server = HistoryReaderServer<HistoryReaderService>;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<Server>().await;
    let reflection = |b: tonic_reflection::server::Builder<'static>| {
        b.register_encoded_file_descriptor_set(confab_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure()).build_v1();
    // grpcurl 1.8 speaks the v1alpha reflection protocol.
    let reflection_v1alpha =
        reflection(tonic_reflection::server::Builder::configure()).build_v1alpha();
    let (reflection_v1, reflection_v1alpha) = match (reflection_v1, reflection_v1alpha) {
        (Ok(a), Ok(b)) => (a, b),
        _ => unreachable!("the embedded descriptor sets are valid"),
    };
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "history serving grpc");
    let stop = {
        let health = health.clone();
        async move {
            shutdown.wait().await;
            health.set_not_serving::<Server>().await;
            tracing::info!("history reader shutting down");
        }
    };
    tonic::transport::Server::builder()
        // Finds callers that vanished without closing their connection.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(HistoryReaderServer::new(HistoryReaderService::new(reader)))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), stop)
        .await
}
