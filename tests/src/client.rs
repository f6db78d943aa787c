//! Typed clients that act as one user each: [`User`] (unary calls, with
//! the user's token) and [`Session`] (an open `Connect` stream).

use crate::{poll, retry_unavailable, DEADLINE, SECRET};
use anyhow::{anyhow, Result};
use confab_auth::Authenticator;
use confab_proto::v1::chat_client::ChatClient;
use confab_proto::v1::*;
use futures::StreamExt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// A session's frames from the server, ending with the status it ended
/// with: a gRPC stream's body, or a WebSocket's messages ([`crate::ws`]).
pub type Inbound =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<ServerFrame, Status>> + Send>>;

/// A signed token for `user` with the test secret.
pub fn token(user: &str) -> String {
    Authenticator::new(SECRET).mint(user, 3600).expect("mint")
}

/// One user's client.
#[derive(Clone)]
pub struct User {
    /// The user id.
    pub name: String,
    /// `Bearer <token>`.
    bearer: String,
    /// The gRPC client.
    pub client: ChatClient<Channel>,
    /// Where this user's sessions go: `None`, `Connect` on the gRPC
    /// server; else the WebSocket of the gateway's HTTP listener there.
    websocket: Option<SocketAddr>,
}

impl User {
    /// Connects to `addr` as `name`.
    pub async fn connect(addr: SocketAddr, name: &str) -> Self {
        Self::with_token(addr, name, &token(name)).await
    }

    /// Connects to `addr` presenting `token` (which may be invalid).
    pub async fn with_token(addr: SocketAddr, name: &str, token: &str) -> Self {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        Self {
            name: name.to_string(),
            bearer: format!("Bearer {token}"),
            client: ChatClient::new(channel),
            websocket: None,
        }
    }

    /// A client acting as `name` over `channel` (e.g. one speaking TLS).
    pub fn over(channel: Channel, name: &str) -> Self {
        Self {
            name: name.to_string(),
            bearer: format!("Bearer {}", token(name)),
            client: ChatClient::new(channel),
            websocket: None,
        }
    }

    /// This user with its sessions over the WebSocket of the HTTP listener
    /// at `http` (its unary calls stay gRPC).
    pub fn sessions_over_websocket(mut self, http: SocketAddr) -> Self {
        self.websocket = Some(http);
        self
    }

    /// Wraps `msg` with this user's authorization metadata.
    pub fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut()
            .insert("authorization", self.bearer.parse().expect("ascii token"));
        r
    }

    /// One unary call: `call` on a clone of the client with `msg` and this
    /// user's authorization; the answer's message.
    async fn unary<Req, Resp, F, Fut>(&self, msg: Req, call: F) -> Result<Resp, Status>
    where
        F: FnOnce(ChatClient<Channel>, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        Ok(call(self.client.clone(), self.req(msg)).await?.into_inner())
    }

    /// Creates a GROUP with `others` (and this user).
    pub async fn group(&self, title: &str, others: &[&str]) -> Conversation {
        self.create(ConversationKind::Group, title, others)
            .await
            .expect("create group")
    }

    /// Creates a conversation.
    pub async fn create(
        &self,
        kind: ConversationKind,
        title: &str,
        others: &[&str],
    ) -> Result<Conversation, Status> {
        self.create_with(kind, title, others, HistoryVisibility::Unspecified)
            .await
    }

    /// Creates a conversation with `others` and a history visibility.
    pub async fn create_with(
        &self,
        kind: ConversationKind,
        title: &str,
        others: &[&str],
        visibility: HistoryVisibility,
    ) -> Result<Conversation, Status> {
        let req = CreateConversationRequest {
            history_visibility: visibility as i32,
            kind: kind as i32,
            title: title.into(),
            member_ids: others.iter().map(|s| s.to_string()).collect(),
        };
        self.unary(
            req,
            |mut c, r| async move { c.create_conversation(r).await },
        )
        .await
    }

    /// Creates a GROUP with `others` once the server can: retried while it
    /// answers UNAVAILABLE (a distributed stack whose consumer groups are
    /// still forming), for up to three [`DEADLINE`]s.
    pub async fn group_when_ready(&self, title: &str, others: &[&str]) -> Conversation {
        retry_unavailable("create a group", DEADLINE * 3, || {
            self.create(ConversationKind::Group, title, others)
        })
        .await
    }

    /// Sends until the outcome comes back: UNAVAILABLE means "not known
    /// yet", and retrying with the same key is the documented, safe thing
    /// to do (for up to three [`DEADLINE`]s).
    pub async fn send_until_acked(&self, conv: &str, client_msg_id: &str, body: &str) -> Message {
        retry_unavailable(&format!("send {client_msg_id}"), DEADLINE * 3, || {
            self.send(conv, client_msg_id, body)
        })
        .await
    }

    /// Sends a message; returns it with its seq.
    pub async fn send(
        &self,
        conv: &str,
        client_msg_id: &str,
        body: &str,
    ) -> Result<Message, Status> {
        let req = SendMessageRequest {
            reply_to_seq: 0,
            conversation_id: conv.into(),
            client_msg_id: client_msg_id.into(),
            body: body.into(),
        };
        let resp = self
            .unary(req, |mut c, r| async move { c.send_message(r).await })
            .await?;
        resp.message
            .ok_or_else(|| Status::internal("response without message"))
    }

    /// Adds `members` to `conv`.
    pub async fn add_members(&self, conv: &str, members: &[&str]) -> Result<Conversation, Status> {
        let req = AddMembersRequest {
            conversation_id: conv.into(),
            member_ids: members.iter().map(|m| m.to_string()).collect(),
        };
        self.unary(req, |mut c, r| async move { c.add_members(r).await })
            .await
    }

    /// Removes `member` from `conv` (the user themself: leaves it).
    pub async fn remove_member(&self, conv: &str, member: &str) -> Result<Conversation, Status> {
        let req = RemoveMemberRequest {
            conversation_id: conv.into(),
            member_id: member.into(),
        };
        self.unary(req, |mut c, r| async move { c.remove_member(r).await })
            .await
    }

    /// Moves the user's read position in `conv` to `seq`.
    pub async fn mark_read(
        &self,
        conv: &str,
        seq: u64,
        private: bool,
    ) -> Result<ReadState, Status> {
        let req = MarkReadRequest {
            conversation_id: conv.into(),
            seq,
            private,
        };
        self.unary(req, |mut c, r| async move { c.mark_read(r).await })
            .await
    }

    /// Conversation `conv`, with every member's read position.
    pub async fn get_conversation(&self, conv: &str) -> Result<Conversation, Status> {
        let req = GetConversationRequest {
            conversation_id: conv.into(),
        };
        self.unary(req, |mut c, r| async move { c.get_conversation(r).await })
            .await
    }

    /// The user's entry for `conv` in its conversation list.
    pub async fn listed(&self, conv: &str) -> Result<Conversation, Status> {
        self.list()
            .await?
            .conversations
            .into_iter()
            .find(|c| c.id == conv)
            .ok_or_else(|| Status::not_found(format!("{conv} is not in {}'s list", self.name)))
    }

    /// A page of the user's conversations.
    pub async fn list_page(
        &self,
        page_token: &str,
        limit: u32,
    ) -> Result<ListConversationsResponse, Status> {
        let req = ListConversationsRequest {
            page_token: page_token.into(),
            limit,
        };
        self.unary(req, |mut c, r| async move { c.list_conversations(r).await })
            .await
    }

    /// The user's conversations.
    pub async fn list(&self) -> Result<ListConversationsResponse, Status> {
        self.unary(ListConversationsRequest::default(), |mut c, r| async move {
            c.list_conversations(r).await
        })
        .await
    }

    /// The presence of `users`.
    pub async fn get_presence(&self, users: &[&str]) -> Result<GetPresenceResponse, Status> {
        let req = GetPresenceRequest {
            user_ids: users.iter().map(|u| u.to_string()).collect(),
        };
        self.unary(req, |mut c, r| async move { c.get_presence(r).await })
            .await
    }

    /// One `Sync` page from `cursor`.
    pub async fn sync(&self, cursor: &str, limit: u32) -> Result<SyncResponse, Status> {
        let req = SyncRequest {
            cursor: cursor.into(),
            limit,
        };
        self.unary(req, |mut c, r| async move { c.sync(r).await })
            .await
    }

    /// Every page of a sync from `cursor`, applied to `copy`; what it
    /// reported.
    pub async fn sync_into(&self, copy: &mut SyncCopy) -> Result<Synced, Status> {
        let mut synced = Synced::default();
        loop {
            let page = self.sync(&copy.cursor, 0).await?;
            synced.add(copy, page.clone());
            if !page.has_more {
                return Ok(synced);
            }
        }
    }

    /// A page of history.
    pub async fn history(
        &self,
        conv: &str,
        before: Option<u64>,
        after: Option<u64>,
        limit: u32,
    ) -> Result<GetHistoryResponse, Status> {
        let req = GetHistoryRequest {
            conversation_id: conv.into(),
            before_seq: before,
            after_seq: after,
            limit,
        };
        self.unary(req, |mut c, r| async move { c.get_history(r).await })
            .await
    }

    /// Every message of a conversation, read oldest first through the API.
    pub async fn all_messages(&self, conv: &str) -> Result<Vec<Message>, Status> {
        let mut out: Vec<Message> = Vec::new();
        loop {
            let after = out.last().map_or(0, |m| m.seq);
            let page = self.history(conv, None, Some(after), 500).await?;
            out.extend(page.messages);
            if !page.has_more {
                return Ok(out);
            }
        }
    }

    /// Sends `body` as a reply to seq `to`.
    pub async fn reply(
        &self,
        conv: &str,
        client_msg_id: &str,
        body: &str,
        to: u64,
    ) -> Result<Message, Status> {
        let req = SendMessageRequest {
            conversation_id: conv.into(),
            client_msg_id: client_msg_id.into(),
            body: body.into(),
            reply_to_seq: to,
        };
        let resp = self
            .unary(req, |mut c, r| async move { c.send_message(r).await })
            .await?;
        resp.message
            .ok_or_else(|| Status::internal("response without message"))
    }

    /// Edits the message at `seq`; the EDIT event.
    pub async fn edit(
        &self,
        conv: &str,
        client_msg_id: &str,
        seq: u64,
        body: &str,
    ) -> Result<Message, Status> {
        let req = EditMessageRequest {
            conversation_id: conv.into(),
            seq,
            body: body.into(),
            client_msg_id: client_msg_id.into(),
        };
        let resp = self
            .unary(req, |mut c, r| async move { c.edit_message(r).await })
            .await?;
        resp.event
            .ok_or_else(|| Status::internal("response without event"))
    }

    /// Deletes the message at `seq`; the DELETE event.
    pub async fn delete(
        &self,
        conv: &str,
        client_msg_id: &str,
        seq: u64,
    ) -> Result<Message, Status> {
        let req = DeleteMessageRequest {
            conversation_id: conv.into(),
            seq,
            client_msg_id: client_msg_id.into(),
        };
        let resp = self
            .unary(req, |mut c, r| async move { c.delete_message(r).await })
            .await?;
        resp.event
            .ok_or_else(|| Status::internal("response without event"))
    }

    /// Reacts to the message at `seq` with `emoji` (or takes it back); the
    /// REACTION event.
    pub async fn react(
        &self,
        conv: &str,
        client_msg_id: &str,
        seq: u64,
        emoji: &str,
        remove: bool,
    ) -> Result<Message, Status> {
        let req = ReactRequest {
            conversation_id: conv.into(),
            seq,
            emoji: emoji.into(),
            remove,
            client_msg_id: client_msg_id.into(),
        };
        let resp = self
            .unary(req, |mut c, r| async move { c.react(r).await })
            .await?;
        resp.event
            .ok_or_else(|| Status::internal("response without event"))
    }

    /// Gives `user` `role` in `conv`.
    pub async fn set_role(
        &self,
        conv: &str,
        user: &str,
        role: Role,
    ) -> Result<Conversation, Status> {
        let req = SetRoleRequest {
            conversation_id: conv.into(),
            user_id: user.into(),
            role: role as i32,
        };
        self.unary(req, |mut c, r| async move { c.set_role(r).await })
            .await
    }

    /// Changes `conv`'s title.
    pub async fn retitle(&self, conv: &str, title: &str) -> Result<Conversation, Status> {
        let req = UpdateConversationRequest {
            conversation_id: conv.into(),
            title: Some(title.into()),
            history_visibility: 0,
        };
        self.unary(
            req,
            |mut c, r| async move { c.update_conversation(r).await },
        )
        .await
    }

    /// A page of the caller's search for `query` (in `conv`, or everywhere
    /// when empty), from `page_token`.
    pub async fn search(
        &self,
        query: &str,
        conv: &str,
        page_token: &str,
        limit: u32,
    ) -> Result<SearchMessagesResponse, Status> {
        let req = SearchMessagesRequest {
            query: query.into(),
            conversation_id: conv.into(),
            page_token: page_token.into(),
            limit,
        };
        self.unary(req, |mut c, r| async move { c.search_messages(r).await })
            .await
    }

    /// Every version of the message at `seq`.
    pub async fn edit_history(
        &self,
        conv: &str,
        seq: u64,
    ) -> Result<GetEditHistoryResponse, Status> {
        let req = GetEditHistoryRequest {
            conversation_id: conv.into(),
            seq,
        };
        self.unary(req, |mut c, r| async move { c.get_edit_history(r).await })
            .await
    }

    /// Every seq of a conversation, read oldest first through the API.
    pub async fn all_seqs(&self, conv: &str) -> Vec<u64> {
        self.try_all_seqs(conv).await.expect("history")
    }

    /// Every seq of a conversation, or the first error of a page.
    pub async fn try_all_seqs(&self, conv: &str) -> Result<Vec<u64>, Status> {
        let mut seqs = Vec::new();
        let mut after = 0;
        loop {
            let page = self.history(conv, None, Some(after), 500).await?;
            seqs.extend(page.messages.iter().map(|m| m.seq));
            after = seqs.last().copied().unwrap_or(0);
            if !page.has_more {
                return Ok(seqs);
            }
        }
    }

    /// Waits until the newest message of `conv` has a seq above `seq` (a
    /// failed read is "not yet"), for at most `within`.
    pub async fn wait_newest_above(&self, conv: &str, seq: u64, within: Duration) -> Result<()> {
        let what = format!("a message above seq {seq} in {conv}");
        poll(&what, within, Duration::from_millis(20), || async move {
            let page = self.history(conv, None, None, 1).await.ok();
            let newest = page.and_then(|p| p.messages.first().map(|m| m.seq));
            Ok((newest.unwrap_or(0) > seq).then_some(()))
        })
        .await
    }

    /// Opens a `Connect` session; `first` is sent as its first frame.
    pub async fn session(&self, first: client_frame::Frame) -> Result<Session, Status> {
        if let Some(http) = self.websocket {
            return self.websocket_session(http, first).await;
        }
        let (tx, rx) = mpsc::channel::<ClientFrame>(64);
        tx.send(ClientFrame { frame: Some(first) })
            .await
            .expect("queue first frame");
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let inbound = self
            .client
            .clone()
            .connect(self.req(stream))
            .await?
            .into_inner();
        Ok(Session {
            tx,
            inbound: Box::pin(inbound),
        })
    }

    /// [`User::session`] over the WebSocket at `http`. A gRPC `Connect`
    /// refused at open (a bad token, too many streams) fails the call; a
    /// WebSocket is refused by a close right after the upgrade, so the
    /// answer to `first` is awaited to tell the two apart (every frame but
    /// `typing` is answered).
    async fn websocket_session(
        &self,
        http: SocketAddr,
        first: client_frame::Frame,
    ) -> Result<Session, Status> {
        let token = self.bearer.trim_start_matches("Bearer ");
        let (tx, mut inbound) = crate::ws::open(http, token).await?;
        let answered = !matches!(first, client_frame::Frame::Typing(_));
        tx.send(ClientFrame { frame: Some(first) })
            .await
            .expect("queue first frame");
        if answered {
            let peeked = match tokio::time::timeout(DEADLINE, inbound.next()).await {
                Ok(Some(Err(status))) => return Err(status),
                Ok(first) => first,
                Err(_) => Some(Err(Status::deadline_exceeded("test: no frame in time"))),
            };
            inbound = Box::pin(futures::stream::iter(peeked).chain(inbound));
        }
        Ok(Session { tx, inbound })
    }

    /// A live session that resumes nothing (first frame: ping), returned
    /// once the server has answered, so it is registered for live delivery.
    pub async fn live(&self) -> Session {
        let mut s = self
            .session(client_frame::Frame::Ping(Ping { nonce: 1 }))
            .await
            .expect("connect");
        let pong = s.next_frame().await.expect("pong");
        assert!(
            matches!(pong, server_frame::Frame::Pong(Pong { nonce: 1 })),
            "{pong:?}"
        );
        s
    }
}

/// An open `Connect` stream.
pub struct Session {
    /// Frames to the server.
    pub tx: mpsc::Sender<ClientFrame>,
    /// Frames from the server.
    pub inbound: Inbound,
}

impl Session {
    /// The next frame from the server; `Ok(None)` when the stream ended
    /// without a status (as tonic's `Streaming::message`).
    pub async fn message(&mut self) -> Result<Option<ServerFrame>, Status> {
        self.inbound.next().await.transpose()
    }

    /// Sends a frame.
    pub async fn send(&self, frame: client_frame::Frame) {
        self.tx
            .send(ClientFrame { frame: Some(frame) })
            .await
            .expect("session open");
    }

    /// Sends a `send` frame: `body` to `conv` under `client_msg_id`.
    pub async fn send_text(&self, conv: &str, client_msg_id: &str, body: &str) {
        self.send(client_frame::Frame::Send(SendFrame {
            reply_to_seq: 0,
            conversation_id: conv.into(),
            client_msg_id: client_msg_id.into(),
            body: body.into(),
        }))
        .await;
    }

    /// The next `ack` frame (other frames are skipped).
    pub async fn next_ack(&mut self) -> SendAck {
        loop {
            if let server_frame::Frame::Ack(a) = self.next_frame().await.expect("an ack") {
                return a;
            }
        }
    }

    /// The next `receipt` frame (messages and other frames are skipped).
    pub async fn next_receipt(&mut self) -> Receipt {
        loop {
            if let server_frame::Frame::Receipt(r) = self.next_frame().await.expect("a receipt") {
                return r;
            }
        }
    }

    /// Sends a `sync` frame from `cursor` and returns its pages and the
    /// `caught_up` frame that ends it (other frames are skipped).
    pub async fn sync(&mut self, cursor: &str) -> (Vec<SyncResponse>, CaughtUp) {
        self.send(client_frame::Frame::Sync(SyncRequest {
            cursor: cursor.into(),
            limit: 0,
        }))
        .await;
        let mut pages = Vec::new();
        loop {
            match self.next_frame().await.expect("the sync's frames") {
                server_frame::Frame::Sync(page) => pages.push(page),
                server_frame::Frame::CaughtUp(c) if c.conversation_id.is_empty() => {
                    return (pages, c)
                }
                _ => {}
            }
        }
    }

    /// The next `presence` frame (messages and other frames are skipped).
    pub async fn next_presence(&mut self) -> Presence {
        loop {
            if let server_frame::Frame::Presence(p) =
                self.next_frame().await.expect("a presence frame")
            {
                return p;
            }
        }
    }

    /// Sends a `typing` frame.
    pub async fn typing(&self, conv: &str, active: bool) {
        self.send(client_frame::Frame::Typing(TypingFrame {
            conversation_id: conv.into(),
            active,
        }))
        .await;
    }

    /// The next `typing` frame (messages and other frames are skipped).
    pub async fn next_typing(&mut self) -> Typing {
        loop {
            if let server_frame::Frame::Typing(t) = self.next_frame().await.expect("a typing frame")
            {
                return t;
            }
        }
    }

    /// Sends a `read` frame and returns its answer (other frames are
    /// skipped).
    pub async fn read(&mut self, conv: &str, seq: u64, private: bool) -> ReadAck {
        self.send(client_frame::Frame::Read(MarkReadRequest {
            conversation_id: conv.into(),
            seq,
            private,
        }))
        .await;
        self.next_read_ack().await
    }

    /// The next `read` frame, the answer to a `read` (others are skipped).
    pub async fn next_read_ack(&mut self) -> ReadAck {
        loop {
            if let server_frame::Frame::Read(r) = self.next_frame().await.expect("a read ack") {
                return r;
            }
        }
    }

    /// Sends a ping and returns every frame before its pong, so a test can
    /// tell that nothing else was on its way.
    pub async fn frames_before_pong(&mut self, nonce: u64) -> Vec<server_frame::Frame> {
        self.send(client_frame::Frame::Ping(Ping { nonce })).await;
        let mut before = Vec::new();
        loop {
            match self.next_frame().await.expect("the pong") {
                server_frame::Frame::Pong(p) if p.nonce == nonce => return before,
                other => before.push(other),
            }
        }
    }

    /// The status the stream ends with (frames before it are skipped).
    pub async fn end_status(&mut self) -> Status {
        loop {
            if let Err(status) = self.next_or_status().await {
                return status;
            }
        }
    }

    /// The next frame, failing the test after `DEADLINE`.
    pub async fn next_frame(&mut self) -> Result<server_frame::Frame> {
        let next = tokio::time::timeout(DEADLINE, self.message())
            .await
            .map_err(|_| anyhow!("no frame within {DEADLINE:?}"))?;
        match next {
            Ok(Some(ServerFrame { frame: Some(f) })) => Ok(f),
            Ok(Some(ServerFrame { frame: None })) => Err(anyhow!("empty frame")),
            Ok(None) => Err(anyhow!("stream ended")),
            Err(status) => Err(anyhow!("stream failed: {status:?}")),
        }
    }

    /// The next frame or the status the stream ended with.
    pub async fn next_or_status(&mut self) -> Result<server_frame::Frame, Status> {
        match tokio::time::timeout(DEADLINE, self.message()).await {
            Err(_) => Err(Status::deadline_exceeded("test: no frame in time")),
            Ok(Ok(Some(ServerFrame { frame: Some(f) }))) => Ok(f),
            Ok(Ok(_)) => Err(Status::ok("stream ended")),
            Ok(Err(status)) => Err(status),
        }
    }

    /// Messages of `conv` until one with seq `until` arrives (other frames
    /// are returned separately), in arrival order.
    pub async fn messages_until(
        &mut self,
        conv: &str,
        until: u64,
    ) -> Result<(Vec<Message>, Vec<server_frame::Frame>)> {
        let mut messages = Vec::new();
        let mut others = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.next_frame())
                .await
                .map_err(|_| {
                    anyhow!(
                        "seq {until} of {conv} did not arrive; got {:?}",
                        seqs(&messages)
                    )
                })??;
            match frame {
                server_frame::Frame::Message(m) if m.conversation_id == conv => {
                    let done = m.seq >= until;
                    messages.push(m);
                    if done {
                        return Ok((messages, others));
                    }
                }
                other => others.push(other),
            }
        }
    }
}

/// The seqs of `messages`, in order.
pub fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

/// What a client keeps from `Sync`: each conversation's state as last
/// reported, and the cursor to sync from next.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncCopy {
    /// By conversation id.
    pub conversations: std::collections::BTreeMap<String, Conversation>,
    /// Where the next sync starts.
    pub cursor: String,
}

/// What one sync (every page of it) reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Synced {
    /// The changed conversations' ids, in the order reported.
    pub changed: Vec<String>,
    /// The ids reported removed.
    pub removed: Vec<String>,
}

impl Synced {
    /// Adds `page` to what was reported and applies it to `copy`.
    pub fn add(&mut self, copy: &mut SyncCopy, page: SyncResponse) {
        for c in page.conversations {
            self.changed.push(c.id.clone());
            copy.conversations.insert(c.id.clone(), c);
        }
        for id in page.removed_conversation_ids {
            copy.conversations.remove(&id);
            self.removed.push(id);
        }
        copy.cursor = page.cursor;
    }
}
