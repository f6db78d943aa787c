//! The `confab.v1.Chat` service and the server around it (health and
//! reflection next to it, graceful shutdown).

use crate::guard::{Caller, GuardLayer};
use crate::hub::Hub;
use crate::session::Session;
use crate::submit::Submitter;
use crate::user_limits::{Limiter, UserLimits};
use confab_auth::Authenticator;
use confab_core::config::{at_least, millis_at_least, millis_or, ConfigError, Env};
use confab_core::error::ChatError;
use confab_core::seams::{HistoryApi, Publisher};
use confab_core::validate::{self, SizeLimits};
use confab_proto::internal::v1::{
    ingress_record::Command, outcome_record, AddMembersCommand, CreateCommand, DeleteCommand,
    EditCommand, IngressRecord, ReactCommand, ReadCommand, RemoveMemberCommand, SendCommand,
    SetRoleCommand, UpdateCommand,
};
use confab_proto::v1::chat_server::{Chat, ChatServer};
use confab_proto::v1::*;
use confab_runtime::compression::answer;
use confab_runtime::server::Server;
use confab_runtime::shutdown::Signal;
use confab_runtime::transport::Transport;
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Limits on client input.
    pub limits: SizeLimits,
    /// How long a write waits for history's outcome.
    pub send_timeout: Duration,
    /// Live messages a session may have queued before it is disconnected.
    pub session_queue: usize,
    /// Per-user rates and stream cap.
    pub user_limits: UserLimits,
    /// Least time between a stream's reads of one conversation going to
    /// the log (`crate::session::reads`); zero: only one at a time.
    pub read_spacing: Duration,
}

impl GatewayConfig {
    /// Reads `CONFAB_MAX_BODY_BYTES`, `CONFAB_MAX_GROUP_MEMBERS`,
    /// `CONFAB_SEND_TIMEOUT_MS`, `CONFAB_SESSION_QUEUE`,
    /// `CONFAB_RATE_MESSAGES_PER_SEC`, `CONFAB_RATE_MESSAGES_BURST` (default
    /// twice the rate), `CONFAB_MAX_STREAMS_PER_USER`,
    /// `CONFAB_RATE_CONVERSATIONS_PER_MIN`, `CONFAB_RATE_READS_PER_SEC` and
    /// `CONFAB_READ_SPACING_MS`.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let d = Self::default();
        let max_body_bytes = at_least(
            env,
            confab_core::vars::MAX_BODY_BYTES,
            d.limits.max_body_bytes,
            1,
            "a size in bytes",
        )?;
        let max_group_members = at_least(
            env,
            confab_core::vars::MAX_GROUP_MEMBERS,
            d.limits.max_group_members,
            2,
            "a member count",
        )?;
        let send_timeout =
            millis_at_least(env, confab_core::vars::SEND_TIMEOUT_MS, d.send_timeout, 1)?;
        let session_queue = at_least(
            env,
            confab_core::vars::SESSION_QUEUE,
            d.session_queue,
            1,
            "a message count",
        )?;
        let per_user =
            |key: &str, default: u32, expected: &str| at_least(env, key, default, 1, expected);
        let messages_per_sec = per_user(
            confab_core::vars::RATE_MESSAGES_PER_SEC,
            d.user_limits.messages_per_sec,
            "messages per second",
        )?;
        let user_limits = UserLimits {
            messages_per_sec,
            messages_burst: per_user(
                confab_core::vars::RATE_MESSAGES_BURST,
                messages_per_sec.saturating_mul(2),
                "a message count",
            )?,
            max_streams_per_user: per_user(
                confab_core::vars::MAX_STREAMS_PER_USER,
                d.user_limits.max_streams_per_user,
                "a stream count",
            )?,
            conversations_per_min: per_user(
                confab_core::vars::RATE_CONVERSATIONS_PER_MIN,
                d.user_limits.conversations_per_min,
                "conversations per minute",
            )?,
            reads_per_sec: per_user(
                confab_core::vars::RATE_READS_PER_SEC,
                d.user_limits.reads_per_sec,
                "read positions per second",
            )?,
        };
        let read_spacing = millis_or(env, confab_core::vars::READ_SPACING_MS, d.read_spacing)?;
        Ok(Self {
            limits: SizeLimits {
                max_body_bytes,
                max_group_members,
                ..d.limits
            },
            send_timeout,
            session_queue,
            user_limits,
            read_spacing,
        })
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            limits: SizeLimits::default(),
            send_timeout: Duration::from_secs(10),
            session_queue: 4096,
            user_limits: UserLimits::default(),
            read_spacing: Duration::from_millis(100),
        }
    }
}

/// The Chat service.
#[derive(Clone)]
pub struct ChatService {
    /// Settings.
    config: GatewayConfig,
    /// Token checks (done by the guard, [`ChatService::guard`]).
    auth: Authenticator,
    /// Sessions and pending requests.
    hub: Arc<Hub>,
    /// History reads.
    history: Arc<dyn HistoryApi>,
    /// Writes through the ingress log.
    submitter: Submitter,
    /// Ends live sessions at shutdown.
    shutdown: Signal,
    /// Per-user rates and stream cap, shared by every call and session.
    limiter: Limiter,
    /// The largest decoded message (`CONFAB_MAX_MESSAGE_BYTES`), named when a
    /// stream frame is over it.
    pub(crate) max_message_bytes: usize,
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
        let limiter = Limiter::new(config.user_limits);
        Self {
            config,
            auth,
            hub,
            history,
            submitter,
            shutdown,
            limiter,
            max_message_bytes: confab_runtime::transport::Transport::MAX_MESSAGE_BYTES,
        }
    }

    /// The guard every call to this service passes first: authentication
    /// and per-user limits ([`crate::guard`]).
    pub fn guard(&self) -> GuardLayer {
        GuardLayer::new(self.auth.clone(), self.limiter.clone())
    }

    /// Starts the live session of `user`, admitted with `stream_slot`, on
    /// the client frames `inbound`, and returns the frames for the client;
    /// the stream's last item is the status it ends with (none when the
    /// client left). Both transports open sessions here: a gRPC `Connect`
    /// stream, and a WebSocket (`crate::web`), which only translates frames.
    /// The session ends with UNAUTHENTICATED at `valid_until`, when the
    /// caller's token does, and runs in the current span (the call's trace).
    pub fn open_session(
        &self,
        user: String,
        valid_until: std::time::SystemTime,
        stream_slot: crate::user_limits::StreamGuard,
        inbound: crate::session::Inbound,
        peer: Option<std::net::SocketAddr>,
    ) -> FrameStream {
        // Small on purpose: a slow reader backs up into its live queue,
        // which is what detects it (see `Hub::deliver`).
        let (out_tx, out_rx) = mpsc::channel(32);
        let (kill_tx, kill_rx) = mpsc::channel(1);
        let (end_tx, end_rx) = mpsc::channel(1);
        let session = Session {
            user,
            hub: self.hub.clone(),
            history: self.history.clone(),
            submitter: self.submitter.clone(),
            limits: self.config.limits,
            out: out_tx,
            kill: kill_tx,
            end: end_tx,
            queue: self.config.session_queue,
            read_spacing: self.config.read_spacing,
            shutdown: self.shutdown.clone(),
            limiter: self.limiter.clone(),
            stream_slot,
            max_message_bytes: self.max_message_bytes,
            peer,
        };
        let session = session.run_until(inbound, Some(valid_until));
        tokio::spawn(tracing::Instrument::in_current_span(session));
        Box::pin(frames(out_rx, kill_rx, end_rx))
    }

    /// Submits `command`, a change to an earlier message of `conv`, and
    /// returns its event.
    async fn message_change(
        &self,
        user: &str,
        conv: &str,
        command: Command,
    ) -> Result<Message, Status> {
        match self.submitter.submit(user, conv, command).await? {
            outcome_record::Result::Message(m) => Ok(m),
            _ => Err(ChatError::Internal("unexpected outcome".into()).into()),
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

/// The frames a session sends its client, ending with the status the
/// session ended with, if any.
pub type FrameStream = Pin<Box<dyn Stream<Item = Result<ServerFrame, Status>> + Send>>;

#[tonic::async_trait]
impl Chat for ChatService {
    type ConnectStream = FrameStream;

    async fn connect(
        &self,
        mut req: Request<Streaming<ClientFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        let caller = Caller::take(&mut req)?;
        let peer = req.remote_addr();
        // The guard took the slot (or refused the stream) before any
        // session state exists.
        let stream_slot = caller.take_stream_slot().ok_or_else(|| {
            Status::internal(
                "the gateway is misconfigured: Connect was admitted without a stream slot",
            )
        })?;
        let frames = self.open_session(
            caller.user,
            caller.valid_until,
            stream_slot,
            Box::pin(req.into_inner()),
            peer,
        );
        // A stream's frames are compressed all or none: most are a message
        // or an ack, too small to pay for it (confab_runtime::compression).
        let mut response = Response::new(frames);
        confab_runtime::compression::uncompressed(&mut response);
        Ok(response)
    }

    async fn send_message(
        &self,
        mut req: Request<SendMessageRequest>,
    ) -> Result<Response<SendMessageResponse>, Status> {
        let user = Caller::take(&mut req)?.user;
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
            reply_to_seq: r.reply_to_seq,
        });
        match self
            .submitter
            .submit(&user, &r.conversation_id, command)
            .await?
        {
            outcome_record::Result::Message(m) => {
                Ok(answer(SendMessageResponse { message: Some(m) }))
            }
            _ => Err(ChatError::Internal("unexpected outcome".into()).into()),
        }
    }

    async fn create_conversation(
        &self,
        mut req: Request<CreateConversationRequest>,
    ) -> Result<Response<Conversation>, Status> {
        let user = Caller::take(&mut req)?.user;
        let r = req.into_inner();
        let (kind, member_ids) =
            validate::create(&self.config.limits, &user, r.kind, &r.title, &r.member_ids)?;
        let history_visibility = validate::visibility_of(kind, r.history_visibility)?;
        let id = match kind {
            ConversationKind::Direct => validate::direct_conversation_id(&member_ids),
            _ => validate::group_conversation_id(),
        };
        let command = Command::Create(CreateCommand {
            kind: kind as i32,
            title: r.title,
            member_ids,
            history_visibility,
        });
        Ok(answer(self.conversation_write(&user, &id, command).await?))
    }

    async fn add_members(
        &self,
        mut req: Request<AddMembersRequest>,
    ) -> Result<Response<Conversation>, Status> {
        let user = Caller::take(&mut req)?.user;
        let r = req.into_inner();
        let members = validate::add_members(&r.conversation_id, &r.member_ids)?;
        let command = Command::AddMembers(AddMembersCommand {
            member_ids: members.into_iter().collect(),
        });
        Ok(answer(
            self.conversation_write(&user, &r.conversation_id, command)
                .await?,
        ))
    }

    async fn remove_member(
        &self,
        mut req: Request<RemoveMemberRequest>,
    ) -> Result<Response<Conversation>, Status> {
        let user = Caller::take(&mut req)?.user;
        let r = req.into_inner();
        validate::remove_member(&r.conversation_id, &r.member_id)?;
        let command = Command::RemoveMember(RemoveMemberCommand {
            member_id: r.member_id,
        });
        Ok(answer(
            self.conversation_write(&user, &r.conversation_id, command)
                .await?,
        ))
    }

    async fn set_role(
        &self,
        mut req: Request<SetRoleRequest>,
    ) -> Result<Response<Conversation>, Status> {
        let user = Caller::take(&mut req)?.user;
        let r = req.into_inner();
        validate::set_role(&r.conversation_id, &r.user_id, r.role)?;
        let command = Command::SetRole(SetRoleCommand {
            user_id: r.user_id,
            role: r.role,
        });
        Ok(answer(
            self.conversation_write(&user, &r.conversation_id, command)
                .await?,
        ))
    }

    async fn update_conversation(
        &self,
        mut req: Request<UpdateConversationRequest>,
    ) -> Result<Response<Conversation>, Status> {
        let user = Caller::take(&mut req)?.user;
        let r = req.into_inner();
        validate::update(&r.conversation_id, r.title.as_deref(), r.history_visibility)?;
        let command = Command::Update(UpdateCommand {
            title: r.title,
            history_visibility: r.history_visibility,
        });
        Ok(answer(
            self.conversation_write(&user, &r.conversation_id, command)
                .await?,
        ))
    }

    async fn list_conversations(
        &self,
        mut req: Request<ListConversationsRequest>,
    ) -> Result<Response<ListConversationsResponse>, Status> {
        let user = Caller::take(&mut req)?.user;
        Ok(answer(
            self.history
                .list_conversations(&user, req.into_inner())
                .await?,
        ))
    }

    async fn get_history(
        &self,
        mut req: Request<GetHistoryRequest>,
    ) -> Result<Response<GetHistoryResponse>, Status> {
        let user = Caller::take(&mut req)?.user;
        Ok(answer(
            self.history.get_history(&user, req.into_inner()).await?,
        ))
    }

    async fn get_conversation(
        &self,
        mut req: Request<GetConversationRequest>,
    ) -> Result<Response<Conversation>, Status> {
        let user = Caller::take(&mut req)?.user;
        let id = req.into_inner().conversation_id;
        validate::conversation_id(&id)?;
        Ok(answer(self.history.get_conversation(&user, &id).await?))
    }

    async fn mark_read(
        &self,
        mut req: Request<MarkReadRequest>,
    ) -> Result<Response<ReadState>, Status> {
        let user = Caller::take(&mut req)?.user;
        Ok(answer(
            mark_read(&self.submitter, &user, req.into_inner()).await?,
        ))
    }

    async fn get_presence(
        &self,
        mut req: Request<GetPresenceRequest>,
    ) -> Result<Response<GetPresenceResponse>, Status> {
        let user = Caller::take(&mut req)?.user;
        let r = req.into_inner();
        // Checked here too, so a bad request never reaches history.
        validate::presence_ids(&r.user_ids)?;
        Ok(answer(self.history.get_presence(&user, r).await?))
    }

    async fn edit_message(
        &self,
        mut req: Request<EditMessageRequest>,
    ) -> Result<Response<EditMessageResponse>, Status> {
        let user = Caller::take(&mut req)?.user;
        let r = req.into_inner();
        validate::edit(
            &self.config.limits,
            &r.conversation_id,
            r.seq,
            &r.body,
            &r.client_msg_id,
        )?;
        let command = Command::Edit(EditCommand {
            client_msg_id: r.client_msg_id,
            seq: r.seq,
            body: r.body,
        });
        let event = self
            .message_change(&user, &r.conversation_id, command)
            .await?;
        Ok(answer(EditMessageResponse { event: Some(event) }))
    }

    async fn delete_message(
        &self,
        mut req: Request<DeleteMessageRequest>,
    ) -> Result<Response<DeleteMessageResponse>, Status> {
        let user = Caller::take(&mut req)?.user;
        let r = req.into_inner();
        validate::change_of(&r.conversation_id, r.seq, &r.client_msg_id)?;
        let command = Command::Delete(DeleteCommand {
            client_msg_id: r.client_msg_id,
            seq: r.seq,
        });
        let event = self
            .message_change(&user, &r.conversation_id, command)
            .await?;
        Ok(answer(DeleteMessageResponse { event: Some(event) }))
    }

    async fn react(
        &self,
        mut req: Request<ReactRequest>,
    ) -> Result<Response<ReactResponse>, Status> {
        let user = Caller::take(&mut req)?.user;
        let r = req.into_inner();
        let emoji = validate::react(&r.conversation_id, r.seq, &r.emoji, &r.client_msg_id)?;
        let command = Command::React(ReactCommand {
            client_msg_id: r.client_msg_id,
            seq: r.seq,
            emoji,
            remove: r.remove,
        });
        let event = self
            .message_change(&user, &r.conversation_id, command)
            .await?;
        Ok(answer(ReactResponse { event: Some(event) }))
    }

    async fn get_edit_history(
        &self,
        mut req: Request<GetEditHistoryRequest>,
    ) -> Result<Response<GetEditHistoryResponse>, Status> {
        let user = Caller::take(&mut req)?.user;
        let r = req.into_inner();
        validate::conversation_id(&r.conversation_id)?;
        Ok(answer(self.history.get_edit_history(&user, r).await?))
    }

    async fn search_messages(
        &self,
        mut req: Request<SearchMessagesRequest>,
    ) -> Result<Response<SearchMessagesResponse>, Status> {
        let user = Caller::take(&mut req)?.user;
        Ok(answer(
            self.history
                .search_messages(&user, req.into_inner())
                .await?,
        ))
    }

    /// Decoded; [`server`] answers `Sync` with [`crate::sync::SyncRoute`]
    /// before a call gets here, passing history's answer on encoded.
    async fn sync(&self, mut req: Request<SyncRequest>) -> Result<Response<SyncResponse>, Status> {
        let user = Caller::take(&mut req)?.user;
        Ok(answer(
            crate::sync::unary(self.history.as_ref(), &user, req.into_inner()).await?,
        ))
    }
}

/// Moves `user`'s read position as `req` asks, through the log like every
/// write: the unary `MarkRead` and the `read` frame both come here.
pub(crate) async fn mark_read(
    submitter: &Submitter,
    user: &str,
    req: MarkReadRequest,
) -> Result<ReadState, ChatError> {
    validate::conversation_id(&req.conversation_id)?;
    let command = Command::Read(ReadCommand {
        seq: req.seq,
        private: req.private,
    });
    match submitter
        .submit(user, &req.conversation_id, command)
        .await?
    {
        outcome_record::Result::ReadState(state) => Ok(state),
        _ => Err(ChatError::Internal("unexpected outcome".into())),
    }
}

/// The client's stream: frames in order, but a kill status jumps the queue
/// (a slow reader must learn why it is cut off without reading the backlog),
/// while an end status (shutdown) comes after the frames already queued.
fn frames(
    out: mpsc::Receiver<Box<ServerFrame>>,
    kill: mpsc::Receiver<Status>,
    end: mpsc::Receiver<Status>,
) -> impl Stream<Item = Result<ServerFrame, Status>> {
    futures::stream::unfold(Some((out, kill, end)), |state| async move {
        let (mut out, mut kill, mut end) = state?;
        tokio::select! {
            biased;
            Some(status) = kill.recv() => Some((Err(status), None)),
            Some(frame) = out.recv() => Some((Ok(*frame), Some((out, kill, end)))),
            Some(status) = end.recv() => Some((Err(status), None)),
            else => None,
        }
    })
}

/// The Chat API behind its guard ([`ChatService::guard`]: every call
/// authenticated and charged to its caller's limits before its handler
/// runs) over `transport`, whose `max_message_bytes` the service also
/// applies, for [`Server::serve`]. Every mode (`confab dev`,
/// `confab-gateway`, the test topologies) serves the gateway through here.
pub fn server(mut service: ChatService, transport: Transport) -> Server {
    service.max_message_bytes = transport.max_message_bytes;
    // The guard wraps the Chat routes only: health and reflection, routed
    // beside them by the server, stay open.
    let chat = chat_routes(service, transport.max_message_bytes);
    Server::new("gateway", chat, confab_proto::PUBLIC_FILE_DESCRIPTOR_SET).transport(transport)
}

/// The Chat service's routes behind its guard, taking requests of up to
/// `max_message_bytes`: what gRPC ([`server`]) and gRPC-Web
/// ([`crate::web`]) both serve.
pub fn chat_routes(
    mut service: ChatService,
    max_message_bytes: usize,
) -> crate::guard::Guard<crate::sync::SyncRoute<ChatServer<ChatService>>> {
    service.max_message_bytes = max_message_bytes;
    let history = service.history.clone();
    tower::ServiceBuilder::new()
        .layer(service.guard())
        .service(crate::sync::SyncRoute::new(
            confab_runtime::compressed!(ChatServer::new(service))
                .max_decoding_message_size(max_message_bytes),
            history,
            max_message_bytes,
        ))
}
