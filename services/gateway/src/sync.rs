//! `Sync`, as a unary call or a `sync` frame: history answers, the gateway
//! counts each sync ([`SYNC_CALLS`]) and times it ([`SYNC_DURATION`]).

use confab_core::error::ChatError;
use confab_core::metrics::{SYNC_CALLS, SYNC_DURATION};
use confab_core::seams::HistoryApi;
use confab_proto::v1::{SyncRequest, SyncResponse};
use std::time::Instant;

/// One sync, from its first page to its last.
pub struct SyncCall {
    /// `unary` or `stream`.
    via: &'static str,
    started: Instant,
    /// Whether any page reported a change.
    changed: bool,
}

impl SyncCall {
    /// A sync starting now; `via` is `unary` or `stream`.
    pub fn start(via: &'static str) -> Self {
        Self {
            via,
            started: Instant::now(),
            changed: false,
        }
    }

    /// One page of `user`'s sync from `history`.
    pub async fn page(
        &mut self,
        history: &dyn HistoryApi,
        user: &str,
        req: SyncRequest,
    ) -> Result<SyncResponse, ChatError> {
        let page = history.sync(user, req).await?;
        self.changed |= !page.conversations.is_empty() || !page.removed_conversation_ids.is_empty();
        Ok(page)
    }

    /// Counts and times the sync, which ended as `ok` says.
    pub fn finish(self, ok: bool) {
        let result = match (ok, self.changed) {
            (false, _) => "error",
            (true, true) => "changed",
            (true, false) => "unchanged",
        };
        metrics::counter!(SYNC_CALLS, "via" => self.via, "result" => result).increment(1);
        metrics::histogram!(SYNC_DURATION, "via" => self.via)
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// The unary `Sync`: one page.
pub async fn unary(
    history: &dyn HistoryApi,
    user: &str,
    req: SyncRequest,
) -> Result<SyncResponse, ChatError> {
    let mut call = SyncCall::start("unary");
    let page = call.page(history, user, req).await;
    call.finish(page.is_ok());
    page
}
