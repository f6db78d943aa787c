//! Sending messages in order: each conversation's cursor (never a seq
//! twice), gaps filled from history, live messages with their hop span and
//! end-to-end latency, and the recheck after a routing change.

use super::{Cursor, Gone, State};
use confab_core::error::ChatError;
use confab_core::metrics::{MESSAGES_DELIVERED, MESSAGE_E2E};
use confab_core::seams::Delivery;
use confab_core::validate;
use confab_core::validate::MAX_CONVERSATIONS_PAGE;
use confab_proto::v1::{
    server_frame, Conversation, GetHistoryRequest, ListConversationsRequest, Message,
};
use confab_runtime::trace::{self, HOP};
use std::time::SystemTime;
use tonic::Status;
use tracing::Instrument;

impl State {
    /// Sends the messages of `conv` with `after < seq < before` from history,
    /// oldest first, advancing the cursor past each.
    pub(super) async fn fill(
        &mut self,
        conv: &str,
        after: u64,
        before: u64,
    ) -> Result<(), FillError> {
        let mut from = after;
        loop {
            let page = self
                .s
                .history
                .get_history(
                    &self.s.user,
                    GetHistoryRequest {
                        conversation_id: conv.to_string(),
                        after_seq: Some(from),
                        before_seq: None,
                        limit: validate::MAX_PAGE,
                    },
                )
                .await
                .map_err(FillError::Refused)?;
            for m in page.messages {
                if m.seq >= before {
                    return Ok(());
                }
                from = m.seq;
                self.emit(m).await.map_err(|_| FillError::Gone)?;
            }
            if !page.has_more {
                return Ok(());
            }
        }
    }

    /// Sends `m` and moves the cursor, when it is past the cursor.
    ///
    /// A member's removal keeps the cursor: nothing is routed to them while
    /// they are out, and if they are added again, the gap from their
    /// removal to the event that added them is filled from history like any
    /// gap, so the stream carries exactly what their history shows them:
    /// the messages sent while they were out when the conversation's
    /// history is SHARED, none of them when it is SINCE_JOINED (history's
    /// one visibility rule decides; docs/architecture.md).
    async fn emit(&mut self, m: Message) -> Result<(), Gone> {
        let conv = m.conversation_id.clone();
        let seq = m.seq;
        match self.cursors.get_mut(&conv) {
            Some(c) if seq > c.last => c.last = seq,
            Some(c) if seq >= c.first => return Ok(()),
            Some(_) => {}
            None => {
                self.cursors.insert(
                    conv.clone(),
                    Cursor {
                        first: seq,
                        last: seq,
                    },
                );
            }
        }
        self.send(server_frame::Frame::Message(m)).await?;
        metrics::counter!(MESSAGES_DELIVERED).increment(1);
        Ok(())
    }

    /// Every conversation of this session's user, page by page.
    async fn all_conversations(&self) -> Result<Vec<Conversation>, ChatError> {
        let mut all = Vec::new();
        let mut req = ListConversationsRequest {
            page_token: String::new(),
            limit: MAX_CONVERSATIONS_PAGE,
        };
        loop {
            let page = self
                .s
                .history
                .list_conversations(&self.s.user, req.clone())
                .await?;
            all.extend(page.conversations);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            req.page_token = page.next_page_token;
        }
    }

    /// After a routing change (a router link lost, or a router that did not
    /// know this gateway's users took partitions), messages may have been
    /// routed past this session: compare every conversation it streams with
    /// history's newest seq and send what it is missing. `Ok(false)` when
    /// history could not be asked (the caller retries).
    pub(super) async fn recheck(&mut self) -> Result<bool, Gone> {
        if self.cursors.is_empty() {
            return Ok(true);
        }
        let conversations = match self.all_conversations().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(user_id = %self.s.user, error = %e, "cannot recheck after a routing change; retrying");
                return Ok(false);
            }
        };
        for conv in conversations {
            let Some(c) = self.cursors.get(&conv.id).copied() else {
                continue;
            };
            if conv.last_seq > c.last {
                tracing::debug!(user_id = %self.s.user, conversation_id = %conv.id, from = c.last, to = conv.last_seq, "sending what routing skipped");
                match self.fill(&conv.id, c.last, u64::MAX).await {
                    Ok(()) => {}
                    Err(FillError::Gone) => return Err(Gone),
                    Err(FillError::Refused(_)) => return Ok(false),
                }
            }
        }
        Ok(true)
    }

    /// A live message, in its `gateway.deliver` hop span (continuing the
    /// router's trace context): see [`State::deliver_message`]. The span is
    /// skipped for a delivery in order (no gap to fill, so nothing inside
    /// logs above DEBUG) when [`trace::hops_observed`] says nothing would
    /// see it (there is one per session per message).
    pub(super) async fn deliver_live(&mut self, d: &Delivery) -> Result<(), Gone> {
        let m = &d.message;
        if !trace::hops_observed() && !self.has_gap_before(m) {
            return self.deliver_message(m, d.accepted_at_ms).await;
        }
        // Not inside the stream's own span: this is the message's trace.
        let span = confab_runtime::hop_span!(
            parent: None,
            "gateway.deliver",
            user_id = %self.s.user,
            conversation_id = %m.conversation_id,
            seq = m.seq,
        );
        trace::start_from(&span, &d.traceparent);
        self.deliver_message(m, d.accepted_at_ms)
            .instrument(span)
            .await
    }

    /// Whether delivering `m` first fills a gap from history (see
    /// [`State::deliver_message`]).
    fn has_gap_before(&self, m: &Message) -> bool {
        self.cursors
            .get(&m.conversation_id)
            .is_some_and(|c| m.seq > c.last + 1)
    }

    /// A live message: dropped if already sent, preceded by history if
    /// something before it was missed.
    async fn deliver_message(&mut self, m: &Message, accepted_at_ms: i64) -> Result<(), Gone> {
        if let Some(c) = self.cursors.get(&m.conversation_id).copied() {
            if m.seq <= c.last {
                return Ok(());
            }
            if m.seq > c.last + 1 {
                match self.fill(&m.conversation_id, c.last, m.seq).await {
                    Ok(()) => {}
                    Err(FillError::Gone) => return Err(Gone),
                    // Going on would skip the gap for good; ending the stream
                    // lets the client resume exactly where it is.
                    Err(FillError::Refused(e)) => {
                        tracing::warn!(user_id = %self.s.user, conversation_id = %m.conversation_id, error = %e, "cannot fill gap; ending the stream");
                        let _ = self.s.kill.try_send(Status::unavailable(
                            "messages you missed could not be read from history; reconnect and resume from the last seq you received",
                        ));
                        return Err(Gone);
                    }
                }
            }
        }
        self.emit(m.clone()).await?;
        // Past the cursor checks above, and after the gap fill (all below
        // `m.seq`), `emit` has just written `m`: its first delivery here.
        record_e2e(m, accepted_at_ms);
        tracing::debug!(target: HOP, "delivered");
        Ok(())
    }
}

/// Records [`MESSAGE_E2E`] for a message delivered live now: the time since
/// a gateway accepted its write (`accepted_at_ms`, that gateway's clock) or,
/// when that is unknown (0: from an older gateway), since history stamped
/// it (`created_at`, history's clock). A clock behind this gateway's counts
/// as 0.
fn record_e2e(m: &Message, accepted_at_ms: i64) {
    let since_ms = if accepted_at_ms > 0 {
        accepted_at_ms
    } else {
        let Some(created) = &m.created_at else {
            return;
        };
        created
            .seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(created.nanos) / 1_000_000)
    };
    let now_ms = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let seconds = now_ms.saturating_sub(since_ms).max(0) as f64 / 1000.0;
    metrics::histogram!(MESSAGE_E2E).record(seconds);
}

pub(super) enum FillError {
    Gone,
    Refused(ChatError),
}
