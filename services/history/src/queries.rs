//! History's read API with its authorization checks: only members read a
//! conversation. Embedded mode calls it directly; distributed mode serves it
//! over gRPC.

use crate::store::Store;
use async_trait::async_trait;
use confab_common::error::ChatError;
use confab_common::pipeline::HistoryApi;
use confab_common::validate;
use confab_proto::v1::{Conversation, GetHistoryRequest, GetHistoryResponse};
use std::sync::Arc;

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
        let (cursor, limit) = validate::history_page(req.before_seq, req.after_seq, req.limit)?;
        self.member_conversation(caller, &req.conversation_id)
            .await?;
        let (messages, has_more) = self
            .store
            .history(&req.conversation_id, cursor, limit)
            .await?;
        Ok(GetHistoryResponse { messages, has_more })
    }

    async fn list_conversations(&self, caller: &str) -> Result<Vec<Conversation>, ChatError> {
        Ok(self.store.list_conversations(caller).await?)
    }

    async fn conversation(&self, id: &str) -> Result<Conversation, ChatError> {
        self.store
            .conversation(id)
            .await?
            .ok_or_else(|| ChatError::no_conversation(id))
    }
}
