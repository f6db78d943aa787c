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

/// The `Chat` implementation of [`Echo`]: `send_message` as given, and each
/// of the other methods (named with their request and response types)
/// refused as unimplemented, so the echo server answers nothing but the
/// calls it is measured with.
macro_rules! echo_chat {
    ($(fn $method:ident($request:ty) -> $response:ty;)*) => {
        #[tonic::async_trait]
        impl Chat for Echo {
            type ConnectStream = Frames;

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

            $(
                async fn $method(&self, _: Request<$request>) -> Result<Response<$response>, Status> {
                    Err(Status::unimplemented(
                        "the echo server only answers SendMessage",
                    ))
                }
            )*
        }
    };
}

echo_chat! {
    fn connect(Streaming<ClientFrame>) -> Frames;
    fn create_conversation(CreateConversationRequest) -> Conversation;
    fn add_members(AddMembersRequest) -> Conversation;
    fn remove_member(RemoveMemberRequest) -> Conversation;
    fn list_conversations(ListConversationsRequest) -> ListConversationsResponse;
    fn get_history(GetHistoryRequest) -> GetHistoryResponse;
    fn mark_read(MarkReadRequest) -> ReadState;
    fn get_conversation(GetConversationRequest) -> Conversation;
    fn sync(SyncRequest) -> SyncResponse;
    fn get_presence(GetPresenceRequest) -> GetPresenceResponse;
    fn edit_message(EditMessageRequest) -> EditMessageResponse;
    fn delete_message(DeleteMessageRequest) -> DeleteMessageResponse;
    fn react(ReactRequest) -> ReactResponse;
    fn get_edit_history(GetEditHistoryRequest) -> GetEditHistoryResponse;
    fn search_messages(SearchMessagesRequest) -> SearchMessagesResponse;
    fn set_role(SetRoleRequest) -> Conversation;
    fn update_conversation(UpdateConversationRequest) -> Conversation;
}

/// Serves the echo service on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(ChatServer::new(Echo))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}
