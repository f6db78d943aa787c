//! The client's frames on a session: `send` (limited and validated at
//! once, acknowledged when history has decided), `resume` (what the client
//! missed, then `caught_up`) and `ping`.

use super::delivery::FillError;
use super::{Cursor, Gone, State, MAX_SENDS_IN_FLIGHT};
use crate::sync::SyncCall;
use crate::user_limits::Cost;
use confab_core::error::ChatError;
use confab_core::validate;
use confab_proto::internal::v1::{ingress_record::Command, outcome_record, SendCommand};
use confab_proto::v1::{
    client_frame, server_frame, CaughtUp, ClientFrame, Pong, SendAck, SendFrame, ServerFrame,
    SyncRequest,
};
use confab_runtime::trace;
use tracing::Instrument;

impl State {
    pub(super) async fn handle(&mut self, frame: ClientFrame) -> Result<(), Gone> {
        match frame.frame {
            Some(client_frame::Frame::Send(send)) => self.send_message(send).await,
            Some(client_frame::Frame::Resume(resume)) => {
                let mut positions: Vec<_> = resume.last_seq.into_iter().collect();
                positions.sort();
                for (conv, last) in positions {
                    self.resume(&conv, last).await?;
                }
                Ok(())
            }
            Some(client_frame::Frame::Ping(ping)) => {
                self.send(server_frame::Frame::Pong(Pong { nonce: ping.nonce }))
                    .await
            }
            Some(client_frame::Frame::Read(read)) => self.mark_read(read).await,
            Some(client_frame::Frame::Typing(typing)) => self.typing(typing).await,
            Some(client_frame::Frame::Sync(req)) => self.sync(req).await,
            None => Ok(()),
        }
    }

    /// Validates at once; the ack follows when history has decided, without
    /// holding up this session's deliveries.
    ///
    /// The per-frame limits live here, not in [`crate::guard`]: a frame
    /// travels inside the stream's body, where no layer in front of the
    /// service can see it. So each `send` frame is charged to the same
    /// message budget as a unary `SendMessage` right here, and a refusal
    /// (like a too-large body or too many sends in flight) comes back in
    /// that frame's ack while the stream stays open.
    async fn send_message(&mut self, f: SendFrame) -> Result<(), Gone> {
        let ack = move |f: &SendFrame, seq: u64, error: Option<ChatError>| {
            server_frame::Frame::Ack(SendAck {
                conversation_id: f.conversation_id.clone(),
                client_msg_id: f.client_msg_id.clone(),
                seq,
                error: error.map(|e| e.to_proto()),
            })
        };
        if let Err(e) = self.s.limiter.admit(&self.s.user, Cost::Message) {
            return self.send(ack(&f, 0, Some(e))).await;
        }
        if let Err(e) = validate::send(
            &self.s.limits,
            &f.conversation_id,
            &f.client_msg_id,
            &f.body,
        ) {
            return self.send(ack(&f, 0, Some(e))).await;
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            let e = ChatError::ResourceExhausted(format!(
                "{MAX_SENDS_IN_FLIGHT} sends are already waiting for their ack on this stream; wait for acks before sending more"
            ));
            return self.send(ack(&f, 0, Some(e))).await;
        };
        let submitter = self.s.submitter.clone();
        let out = self.s.out.clone();
        let user = self.s.user.clone();
        // A stream opened with a client `traceparent`: the write is a child
        // of its `gateway.call` span. Otherwise each send starts a trace of
        // its own (one trace per message, not one per stream).
        let stream_span = if trace::current_continues() {
            tracing::Span::current()
        } else {
            tracing::Span::none()
        };
        tokio::spawn(async move {
            let _permit = permit;
            let command = Command::Send(SendCommand {
                client_msg_id: f.client_msg_id.clone(),
                body: f.body.clone(),
                reply_to_seq: f.reply_to_seq,
            });
            let frame = match submitter
                .submit(&user, &f.conversation_id, command)
                .instrument(stream_span)
                .await
            {
                Ok(outcome_record::Result::Message(m)) => ack(&f, m.seq, None),
                Ok(_) => ack(
                    &f,
                    0,
                    Some(ChatError::Internal("unexpected outcome".into())),
                ),
                Err(e) => ack(&f, 0, Some(e)),
            };
            let _ = out.send(Box::new(ServerFrame { frame: Some(frame) })).await;
        });
        Ok(())
    }

    /// A `sync` frame: every page of the answer as a `sync` frame, then a
    /// `caught_up` frame without a conversation id (with the error, if the
    /// sync was refused). This session was live before the sync read
    /// anything, and live frames that arrive meanwhile wait in its queue;
    /// a conversation in the answer that this stream does not carry yet is
    /// carried from its `last_seq` on (the client has its state up to
    /// there), so nothing is missed in between and no seq comes twice.
    async fn sync(&mut self, mut req: SyncRequest) -> Result<(), Gone> {
        let mut call = SyncCall::start("stream");
        let error = loop {
            let page = match call
                .page(self.s.history.as_ref(), &self.s.user, req.clone())
                .await
            {
                Ok(page) => page,
                Err(e) => break Some(e),
            };
            for c in &page.conversations {
                self.cursors.entry(c.id.clone()).or_insert(Cursor {
                    first: c.last_seq.saturating_add(1),
                    last: c.last_seq,
                });
            }
            for id in &page.removed_conversation_ids {
                self.cursors.remove(id);
            }
            let more = page.has_more;
            req.cursor = page.cursor.clone();
            self.send(server_frame::Frame::Sync(page)).await?;
            if !more {
                break None;
            }
        };
        call.finish(error.is_none());
        self.send(server_frame::Frame::CaughtUp(CaughtUp {
            conversation_id: String::new(),
            seq: 0,
            error: error.map(|e| e.to_proto()),
        }))
        .await
    }

    /// Sends what the client missed after `last`, then `caught_up`.
    async fn resume(&mut self, conv: &str, last: u64) -> Result<(), Gone> {
        let sent = match self.cursors.get(conv).copied() {
            // Already streaming this conversation: send only what lies below
            // what this stream has carried, never a seq twice.
            Some(c) if last < c.first.saturating_sub(1) => {
                let r = self.fill(conv, last, c.first).await;
                if r.is_ok() {
                    self.cursors.insert(
                        conv.to_string(),
                        Cursor {
                            first: last + 1,
                            last: c.last,
                        },
                    );
                }
                r
            }
            Some(c) => {
                let c = Cursor {
                    first: c.first,
                    last: c.last.max(last),
                };
                self.cursors.insert(conv.to_string(), c);
                self.fill(conv, c.last, u64::MAX).await
            }
            None => {
                self.cursors.insert(
                    conv.to_string(),
                    Cursor {
                        // A client may claim to have seen up to u64::MAX.
                        first: last.saturating_add(1),
                        last,
                    },
                );
                self.fill(conv, last, u64::MAX).await
            }
        };
        let (seq, error) = match sent {
            Ok(()) => (self.cursors.get(conv).map(|c| c.last).unwrap_or(last), None),
            Err(FillError::Gone) => return Err(Gone),
            Err(FillError::Refused(e)) => {
                // Not readable by this user: nothing of it is streamed. Any
                // other failure (history unavailable) keeps the cursor at
                // what this stream carried, so the stream never skips: the
                // next live message first fills the gap from history, or
                // ends the stream with UNAVAILABLE if it still cannot.
                if matches!(
                    e,
                    ChatError::PermissionDenied(_)
                        | ChatError::NotFound(_)
                        | ChatError::InvalidArgument(_)
                ) {
                    self.cursors.remove(conv);
                }
                (0, Some(e.to_proto()))
            }
        };
        self.send(server_frame::Frame::CaughtUp(CaughtUp {
            conversation_id: conv.to_string(),
            seq,
            error,
        }))
        .await
    }
}
