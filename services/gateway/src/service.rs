//! The `confab.v1.Chat` service and the server around it (health and
//! reflection next to it, graceful shutdown).

use crate::hub::Hub;
use crate::session::Session;
use crate::submit::Submitter;
use confab_common::auth::Authenticator;
use confab_common::error::ChatError;
use confab_common::pipeline::{HistoryApi, Publisher};
use confab_common::shutdown::Signal;
use confab_common::validate::{self, Limits};
use confab_proto::internal::v1::{
    ingress_record::Command, outcome_record, AddMembersCommand, CreateCommand, IngressRecord,
    RemoveMemberCommand, SendCommand,
};
use confab_proto::v1::chat_server::{Chat, ChatServer};
use confab_proto::v1::*;
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Limits on client input.
    pub limits: Limits,
    /// How long a write waits for history's outcome.
    pub send_timeout: Duration,
    /// Live messages a session may have queued before it is disconnected.
    pub session_queue: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            send_timeout: Duration::from_secs(10),
            session_queue: 4096,
        }
    }
}

/// The Chat service.
#[derive(Clone)]
pub struct ChatService {
    /// Settings.
    config: GatewayConfig,
    /// Token checks.
    auth: Authenticator,
    /// Sessions and pending requests.
    hub: Arc<Hub>,
    /// History reads.
    history: Arc<dyn HistoryApi>,
    /// Writes through the ingress log.
    submitter: Submitter,
    /// Ends live sessions at shutdown.
    shutdown: Signal,
}

impl ChatService {
    /// A service producing to `ingress` and reading from `history`.
    pub fn new(
        config: GatewayConfig,
        auth: Authenticator,
        hub: Arc<Hub>,
        ingress: Arc<dyn Publisher<IngressRecord>>,
        history: Arc<dyn HistoryApi>,
        shutdown: Signal,
    ) -> Self {
        let submitter = Submitter::new(ingress, hub.clone(), config.send_timeout);
        Self {
            config,
            auth,
            hub,
            history,
            submitter,
            shutdown,
        }
    }

    async fn conversation_write(
        &self,
        user: &str,
        conv: &str,
        command: Command,
    ) -> Result<Conversation, Status> {
        match self.submitter.submit(user, conv, command).await? {
            outcome_record::Result::Conversation(c) => Ok(c),
            _ => Err(ChatError::Internal("unexpected outcome".into()).into()),
        }
    }
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<ServerFrame, Status>> + Send>>;

#[tonic::async_trait]
impl Chat for ChatService {
    type ConnectStream = FrameStream;

    async fn connect(
        &self,
        req: Request<Streaming<ClientFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        let user = self.auth.authenticate(req.metadata())?;
        // Small on purpose: a slow reader backs up into its live queue,
        // which is what detects it (see `Hub::deliver`).
        let (out_tx, out_rx) = mpsc::channel(32);
        let (kill_tx, kill_rx) = mpsc::channel(1);
        let session = Session {
            user,
            hub: self.hub.clone(),
            history: self.history.clone(),
            submitter: self.submitter.clone(),
            limits: self.config.limits,
            out: out_tx,
            kill: kill_tx,
            queue: self.config.session_queue,
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(session.run(req.into_inner()));
        Ok(Response::new(Box::pin(frames(out_rx, kill_rx))))
    }

    async fn send_message(
        &self,
        req: Request<SendMessageRequest>,
    ) -> Result<Response<SendMessageResponse>, Status> {
        let user = self.auth.authenticate(req.metadata())?;
        let r = req.into_inner();
        validate::send(
            &self.config.limits,
            &r.conversation_id,
            &r.client_msg_id,
            &r.body,
        )?;
        let command = Command::Send(SendCommand {
            client_msg_id: r.client_msg_id,
            body: r.body,
        });
        match self
            .submitter
            .submit(&user, &r.conversation_id, command)
            .await?
        {
            outcome_record::Result::Message(m) => {
                Ok(Response::new(SendMessageResponse { message: Some(m) }))
            }
            _ => Err(ChatError::Internal("unexpected outcome".into()).into()),
        }
    }

    async fn create_conversation(
        &self,
        req: Request<CreateConversationRequest>,
    ) -> Result<Response<Conversation>, Status> {
        let user = self.auth.authenticate(req.metadata())?;
        let r = req.into_inner();
        let (kind, member_ids) =
            validate::create(&self.config.limits, &user, r.kind, &r.title, &r.member_ids)?;
        let id = match kind {
            ConversationKind::Direct => validate::direct_conversation_id(&member_ids),
            _ => validate::group_conversation_id(),
        };
        let command = Command::Create(CreateCommand {
            kind: kind as i32,
            title: r.title,
            member_ids,
        });
        Ok(Response::new(
            self.conversation_write(&user, &id, command).await?,
        ))
    }

    async fn add_members(
        &self,
        req: Request<AddMembersRequest>,
    ) -> Result<Response<Conversation>, Status> {
        let user = self.auth.authenticate(req.metadata())?;
        let r = req.into_inner();
        validate::conversation_id(&r.conversation_id)?;
        let members = validate::user_ids(&r.member_ids)?;
        if members.is_empty() {
            return Err(Status::invalid_argument(
                "member_ids must list at least one user to add",
            ));
        }
        let command = Command::AddMembers(AddMembersCommand {
            member_ids: members.into_iter().collect(),
        });
        Ok(Response::new(
            self.conversation_write(&user, &r.conversation_id, command)
                .await?,
        ))
    }

    async fn remove_member(
        &self,
        req: Request<RemoveMemberRequest>,
    ) -> Result<Response<Conversation>, Status> {
        let user = self.auth.authenticate(req.metadata())?;
        let r = req.into_inner();
        validate::conversation_id(&r.conversation_id)?;
        validate::user_ids([&r.member_id])?;
        let command = Command::RemoveMember(RemoveMemberCommand {
            member_id: r.member_id,
        });
        Ok(Response::new(
            self.conversation_write(&user, &r.conversation_id, command)
                .await?,
        ))
    }

    async fn list_conversations(
        &self,
        req: Request<ListConversationsRequest>,
    ) -> Result<Response<ListConversationsResponse>, Status> {
        let user = self.auth.authenticate(req.metadata())?;
        let conversations = self.history.list_conversations(&user).await?;
        Ok(Response::new(ListConversationsResponse { conversations }))
    }

    async fn get_history(
        &self,
        req: Request<GetHistoryRequest>,
    ) -> Result<Response<GetHistoryResponse>, Status> {
        let user = self.auth.authenticate(req.metadata())?;
        Ok(Response::new(
            self.history.get_history(&user, req.into_inner()).await?,
        ))
    }
}

/// The client's stream: frames in order, but a kill status jumps the queue
/// (a slow reader must learn why it is cut off without reading the backlog).
fn frames(
    out: mpsc::Receiver<ServerFrame>,
    kill: mpsc::Receiver<Status>,
) -> impl Stream<Item = Result<ServerFrame, Status>> {
    futures::stream::unfold(Some((out, kill)), |state| async move {
        let (mut out, mut kill) = state?;
        tokio::select! {
            biased;
            Some(status) = kill.recv() => Some((Err(status), None)),
            frame = out.recv() => frame.map(|f| (Ok(f), Some((out, kill)))),
        }
    })
}

/// Serves the Chat API, health and reflection on `listener` until
/// `shutdown` fires, then drains.
pub async fn run(
    service: ChatService,
    listener: TcpListener,
    shutdown: Signal,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ChatServer<ChatService>>().await;
    let reflection = |b: tonic_reflection::server::Builder<'static>| {
        b.register_encoded_file_descriptor_set(confab_proto::PUBLIC_FILE_DESCRIPTOR_SET)
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
    tracing::info!(addr = ?addr, "gateway serving gRPC");
    let stop = {
        let health = health.clone();
        async move {
            shutdown.wait().await;
            health.set_not_serving::<ChatServer<ChatService>>().await;
            tracing::info!("gateway shutting down");
        }
    };
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ChatServer::new(service))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)
        .await
}
