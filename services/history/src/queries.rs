//! History's read API with its authorization checks: only members read a
//! conversation. Embedded mode calls it directly; distributed mode serves it
//! over gRPC.

use crate::page_token;
use crate::store::decide::ops::kind_name;
use crate::store::rows::TargetRow;
use crate::store::search::{SearchAfter, SearchQuery};
use crate::store::timestamp;
use crate::store::{Listing, Store};
use async_trait::async_trait;
use confab_core::error::ChatError;
use confab_core::fold::preview_of;
use confab_core::seams::HistoryApi;
use confab_core::search;
use confab_core::validate;
use confab_proto::internal::v1::PresenceUpdate;
use confab_proto::v1::{
    Conversation, GetEditHistoryRequest, GetEditHistoryResponse, GetHistoryRequest,
    GetHistoryResponse, GetPresenceRequest, GetPresenceResponse, Highlight,
    ListConversationsRequest, ListConversationsResponse, Message, MessageKind, MessageVersion,
    Presence, ReactionCount, SearchHit, SearchMessagesRequest, SearchMessagesResponse, SyncRequest,
    SyncResponse,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Largest encoded page: below the 4 MiB that gRPC clients (grpcurl, tonic)
/// accept by default, so a page of large messages is cut short with
/// `has_more` instead of failing in the client.
pub const MAX_PAGE_BYTES: usize = 3 * 1024 * 1024;

/// Keeps the longest prefix of `messages` that encodes within `max` bytes
/// (at least one message); whether anything was dropped.
fn truncate_to_bytes(messages: &mut Vec<confab_proto::v1::Message>, max: usize) -> bool {
    use confab_proto::prost::Message as _;
    let mut total = 0;
    for (i, m) in messages.iter().enumerate() {
        // Field tag and length prefix of each repeated entry: a few bytes.
        total += m.encoded_len() + 8;
        if total > max && i > 0 {
            messages.truncate(i);
            return true;
        }
    }
    false
}

/// Characters of a message a search hit shows around its first match.
pub const SNIPPET_CHARS: usize = 80;

/// A stored seq as the API's.
fn seq_of(seq: i64) -> Result<u64, ChatError> {
    u64::try_from(seq).map_err(|_| ChatError::Internal(format!("history store holds seq {seq}")))
}

/// A stored version number as the API's.
fn version_no(v: i64) -> Result<u32, ChatError> {
    u32::try_from(v).map_err(|_| ChatError::Internal(format!("history store holds version {v}")))
}

/// Reads served straight from a store.
#[derive(Clone)]
pub struct LocalHistory {
    /// Where the history lives.
    store: Arc<dyn Store>,
}

impl LocalHistory {
    /// Reads from `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Fills in what a page's rows do not hold: each reply's preview of
    /// the message it replies to as that message is now, and the reactions
    /// (`reacted`: the seqs that have some) as `caller` sees them.
    async fn shown(
        &self,
        caller: &str,
        conv: &str,
        messages: &mut [Message],
        reacted: &[u64],
    ) -> Result<(), ChatError> {
        let mut replied: Vec<u64> = messages
            .iter()
            .map(|m| m.reply_to_seq)
            .filter(|s| *s > 0)
            .collect();
        replied.sort_unstable();
        replied.dedup();
        if !replied.is_empty() {
            let targets: HashMap<u64, TargetRow> = self
                .store
                .targets(conv, caller, &replied)
                .await?
                .into_iter()
                .filter_map(|t| Some((u64::try_from(t.seq).ok()?, t)))
                .collect();
            for m in messages.iter_mut().filter(|m| m.reply_to_seq > 0) {
                m.reply_to = targets
                    .get(&m.reply_to_seq)
                    .map(|t| preview_of(&t.sender_id, &t.body, t.deleted_at_ms != 0));
            }
        }
        let (Some(first), Some(last)) = (reacted.iter().min(), reacted.iter().max()) else {
            return Ok(());
        };
        let mut counts: HashMap<u64, Vec<ReactionCount>> = HashMap::new();
        for (seq, emoji, n, mine) in self.store.reactions(conv, (*first, *last), caller).await? {
            let Ok(seq) = u64::try_from(seq) else {
                continue;
            };
            counts.entry(seq).or_default().push(ReactionCount {
                emoji,
                count: u64::try_from(n).unwrap_or(0),
                reacted: mine > 0,
            });
        }
        for m in messages.iter_mut() {
            if let Some(c) = counts.remove(&m.seq) {
                m.reactions = c;
            }
        }
        Ok(())
    }

    async fn member_conversation(&self, caller: &str, id: &str) -> Result<Conversation, ChatError> {
        validate::conversation_id(id)?;
        let conv = self.conversation(id).await?;
        if !conv.member_ids.iter().any(|m| m == caller) {
            return Err(ChatError::not_member(id));
        }
        Ok(conv)
    }
}

#[async_trait]
impl HistoryApi for LocalHistory {
    async fn get_history(
        &self,
        caller: &str,
        req: GetHistoryRequest,
    ) -> Result<GetHistoryResponse, ChatError> {
        let page = validate::history_page(
            &req.conversation_id,
            req.before_seq,
            req.after_seq,
            req.limit,
        )?;
        validate::conversation_id(&req.conversation_id)?;
        let read = self.store.member_history(caller, page).await?;
        let page = match read {
            Some(read) => read,
            None => {
                // Not a member, or no such conversation: say which. (If the
                // caller was added in between, read the page now.)
                self.member_conversation(caller, &req.conversation_id)
                    .await?;
                self.store.history(page).await?
            }
        };
        let reacted = page.reacted;
        let (mut messages, mut has_more) = (page.messages, page.has_more);
        self.shown(caller, &req.conversation_id, &mut messages, &reacted)
            .await?;
        if truncate_to_bytes(&mut messages, MAX_PAGE_BYTES) {
            has_more = true;
        }
        Ok(GetHistoryResponse { messages, has_more })
    }

    async fn get_edit_history(
        &self,
        caller: &str,
        req: GetEditHistoryRequest,
    ) -> Result<GetEditHistoryResponse, ChatError> {
        let (conv, seq) = (req.conversation_id.as_str(), req.seq);
        validate::conversation_id(conv)?;
        if seq == 0 {
            return Err(ChatError::InvalidArgument(
                "seq is required: the seq of a TEXT message (seqs start at 1)".into(),
            ));
        }
        self.member_conversation(caller, conv).await?;
        // Only a message the caller may read (see `rows::visible`).
        let Some(target) = self.store.targets(conv, caller, &[seq]).await?.pop() else {
            return Err(ChatError::NotFound(format!(
                "message {seq} does not exist in conversation {conv}"
            )));
        };
        if target.kind != MessageKind::Text as i32 {
            return Err(ChatError::InvalidArgument(format!(
                "seq {seq} of conversation {conv} is {}, not a message: only TEXT messages have versions",
                kind_name(target.kind)
            )));
        }
        if target.deleted_at_ms != 0 {
            // Erased with the message.
            return Ok(GetEditHistoryResponse::default());
        }
        let mut versions = Vec::new();
        for (version, body, at) in self.store.versions(conv, seq).await? {
            versions.push(MessageVersion {
                version: version_no(version)?,
                body,
                written_at: Some(timestamp(at)),
            });
        }
        let current_at = if target.edit_count > 0 {
            target.edited_at_ms
        } else {
            target.created_at_ms
        };
        versions.push(MessageVersion {
            version: version_no(target.edit_count)?,
            body: target.body,
            written_at: Some(timestamp(current_at)),
        });
        Ok(GetEditHistoryResponse { versions })
    }

    async fn search_messages(
        &self,
        caller: &str,
        req: SearchMessagesRequest,
    ) -> Result<SearchMessagesResponse, ChatError> {
        let terms = validate::search_query(&req.query)?;
        if !req.conversation_id.is_empty() {
            // One conversation: the caller's, or say why not.
            self.member_conversation(caller, &req.conversation_id)
                .await?;
        }
        let at = page_token::SearchAt {
            user: caller,
            query: &req.query,
            conversation_id: &req.conversation_id,
        };
        let after = page_token::decode_search(&at, &req.page_token)?;
        let limit = validate::search_page(req.limit);
        let mut rows = self
            .store
            .search(&SearchQuery {
                caller,
                terms: &terms,
                conversation_id: &req.conversation_id,
                after,
                limit: limit + 1,
            })
            .await?
            .ok_or_else(|| {
                ChatError::FailedPrecondition(
                    "search is turned off on this server (CONFAB_SEARCH_INDEX=off)".into(),
                )
            })?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_page_token = match rows.last() {
            Some(last) if more => page_token::encode_search(
                &at,
                &SearchAfter {
                    sent_at_ms: last.created_at_ms,
                    conversation_id: last.conversation_id.clone(),
                    seq: seq_of(last.seq)?,
                },
            ),
            _ => String::new(),
        };
        let mut hits = Vec::with_capacity(rows.len());
        for row in rows {
            let snippet = search::snippet(&row.body, &terms, SNIPPET_CHARS);
            hits.push(SearchHit {
                seq: seq_of(row.seq)?,
                rank: search::rank(&row.body, &terms),
                highlights: snippet
                    .marks
                    .iter()
                    .map(|&(start, end)| Highlight { start, end })
                    .collect(),
                snippet: snippet.text,
                sent_at: Some(timestamp(row.created_at_ms)),
                conversation_id: row.conversation_id,
                sender_id: row.sender_id,
            });
        }
        Ok(SearchMessagesResponse {
            hits,
            next_page_token,
        })
    }

    async fn list_conversations(
        &self,
        caller: &str,
        req: ListConversationsRequest,
    ) -> Result<ListConversationsResponse, ChatError> {
        let after = page_token::decode(caller, &req.page_token)?;
        let limit = validate::conversations_page(req.limit);
        let page = self
            .store
            .conversations(caller, Listing::Recent(after.as_ref()), limit)
            .await?;
        Ok(ListConversationsResponse {
            conversations: page.conversations,
            next_page_token: page
                .next
                .map(|next| page_token::encode(caller, &next))
                .unwrap_or_default(),
        })
    }

    async fn conversation(&self, id: &str) -> Result<Conversation, ChatError> {
        self.store
            .conversation(id)
            .await?
            .ok_or_else(|| ChatError::no_conversation(id))
    }

    /// One listing statement reads it all (members and their positions,
    /// the caller's count, the newest TEXT message) in one snapshot; when
    /// the caller is not listed, the conversation is read to tell a
    /// stranger from a conversation that does not exist (and listed again
    /// if the caller joined in between).
    async fn get_conversation(&self, caller: &str, id: &str) -> Result<Conversation, ChatError> {
        validate::conversation_id(id)?;
        for _ in 0..2 {
            let page = self
                .store
                .conversations(caller, Listing::One(id), 1)
                .await?;
            if let Some(conv) = page.conversations.into_iter().next() {
                return Ok(conv);
            }
            self.member_conversation(caller, id).await?;
        }
        Err(ChatError::Unavailable(format!(
            "the members of conversation {id} kept changing while it was read; ask again"
        )))
    }

    async fn sync(&self, caller: &str, req: SyncRequest) -> Result<SyncResponse, ChatError> {
        crate::sync::sync(self.store.as_ref(), caller, req).await
    }

    async fn get_presence(
        &self,
        caller: &str,
        req: GetPresenceRequest,
    ) -> Result<GetPresenceResponse, ChatError> {
        let ids = validate::presence_ids(&req.user_ids)?;
        let others: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|u| *u != caller)
            .collect();
        let shared: HashSet<String> = self
            .store
            .shared_with(caller, &others)
            .await?
            .into_iter()
            .collect();
        if let Some(stranger) = others.iter().find(|u| !shared.contains(**u)) {
            return Err(ChatError::PermissionDenied(format!(
                "you share no conversation with {stranger}: presence is only shown to users who share one"
            )));
        }
        let all: Vec<&str> = ids.iter().map(String::as_str).collect();
        let rows: HashMap<String, (i64, i64)> = self
            .store
            .presence(&all)
            .await?
            .into_iter()
            .map(|(user, alive, seen)| (user, (alive, seen)))
            .collect();
        let now = confab_core::time::now_ms();
        let presences = ids
            .into_iter()
            .map(|user_id| {
                let (alive_until, last_seen) = rows.get(&user_id).copied().unwrap_or_default();
                let online = alive_until > now;
                Presence {
                    user_id,
                    online,
                    last_seen: (!online && last_seen > 0)
                        .then(|| confab_core::time::timestamp(last_seen)),
                }
            })
            .collect();
        Ok(GetPresenceResponse { presences })
    }

    async fn direct_partners(&self, user: &str) -> Result<Vec<String>, ChatError> {
        Ok(self.store.direct_partners(user).await?)
    }

    async fn record_presence(&self, updates: Vec<PresenceUpdate>) -> Result<(), ChatError> {
        Ok(self.store.record_presence(&updates).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_proto::v1::Message;

    #[test]
    fn pages_are_cut_to_a_byte_budget_but_never_empty() {
        let msg = |seq| Message {
            seq,
            body: "x".repeat(1000),
            ..Default::default()
        };
        let mut page: Vec<Message> = (1..=10).map(msg).collect();
        assert!(truncate_to_bytes(&mut page, 3_500));
        assert_eq!(
            page.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let mut page: Vec<Message> = (1..=10).map(msg).collect();
        assert!(!truncate_to_bytes(&mut page, 1_000_000));
        assert_eq!(page.len(), 10);
        let mut one = vec![msg(1)];
        assert!(
            !truncate_to_bytes(&mut one, 10),
            "a single message always goes out"
        );
        assert_eq!(one.len(), 1);
    }
}
