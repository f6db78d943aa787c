//! The gRPC ceiling: a bare tonic server whose `SendMessage` answers with
//! the request's payload and nothing else (no auth, no validation, no
//! storage). It speaks Confab's own `Chat` service so the load generator
//! drives it with exactly the calls and payloads it sends Confab.
//! `confab-bench echo-server` runs it as its own process, like `confab dev`.

use confab_proto::v1::chat_server::{Chat, ChatServer};
use confab_proto::v1::*;
use std::pin::Pin;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// The echo service.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

type Frames = Pin<Box<dyn Stream<Item = Result<ServerFrame, Status>> + Send>>;

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented(
        "the echo server only answers SendMessage",
    ))
}

#[tonic::async_trait]
impl Chat for Echo {
    type ConnectStream = Frames;

    async fn connect(
        &self,
        _: Request<Streaming<ClientFrame>>,
    ) -> Result<Response<Frames>, Status> {
        unimplemented()
    }

    async fn send_message(
        &self,
        request: Request<SendMessageRequest>,
    ) -> Result<Response<SendMessageResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(SendMessageResponse {
            message: Some(Message {
                conversation_id: r.conversation_id,
                seq: 1,
                client_msg_id: r.client_msg_id,
                body: r.body,
                kind: MessageKind::Text as i32,
                ..Default::default()
            }),
        }))
    }

    async fn create_conversation(
        &self,
        _: Request<CreateConversationRequest>,
    ) -> Result<Response<Conversation>, Status> {
        unimplemented()
    }

    async fn add_members(
        &self,
        _: Request<AddMembersRequest>,
    ) -> Result<Response<Conversation>, Status> {
        unimplemented()
    }

    async fn remove_member(
        &self,
        _: Request<RemoveMemberRequest>,
    ) -> Result<Response<Conversation>, Status> {
        unimplemented()
    }

    async fn list_conversations(
        &self,
        _: Request<ListConversationsRequest>,
    ) -> Result<Response<ListConversationsResponse>, Status> {
        unimplemented()
    }

    async fn get_history(
        &self,
        _: Request<GetHistoryRequest>,
    ) -> Result<Response<GetHistoryResponse>, Status> {
        unimplemented()
    }
}

/// Serves the echo service on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(ChatServer::new(Echo))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}
