//! The storage trait that SQLite (embedded) and PostgreSQL (distributed)
//! implement; the decisions both make for each ingress record are in
//! [`decide`], so a store only loads and writes.

pub mod apply;
pub mod decide;
pub mod postgres;
pub mod rows;
pub mod search;
pub mod sqlite;

#[cfg(any(test, feature = "testing"))]
pub mod conformance;

use async_trait::async_trait;
use confab_core::error::ChatError;
use confab_core::validate::{Page, PageCursor};
use confab_proto::internal::v1::{IngressRecord, OutcomeRecord, PresenceUpdate};
use confab_proto::v1::{Conversation, Message};

/// A storage failure (not a refusal of the request: those are `ChatError`s
/// inside the outcome).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row could not be decoded.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl From<StoreError> for ChatError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "store call failed");
        match e {
            StoreError::Database(e)
                if matches!(e, sqlx::Error::PoolTimedOut) || connection_lost(&e) =>
            {
                ChatError::Unavailable("history store is unavailable; retry".into())
            }
            _ => ChatError::Internal("history store failed; see server logs".into()),
        }
    }
}

impl StoreError {
    /// Whether the database could not write because its disk is full:
    /// SQLite's SQLITE_FULL (13, what it makes of ENOSPC), PostgreSQL's
    /// `disk_full` (53100, "could not extend file"), or an I/O error that
    /// says so. A PostgreSQL whose WAL cannot be written stops instead
    /// (PANIC): that is a lost connection.
    pub fn out_of_space(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(d)) => d
                .code()
                .is_some_and(|code| matches!(code.as_ref(), "13" | "53100")),
            StoreError::Database(sqlx::Error::Io(e)) => e.kind() == std::io::ErrorKind::StorageFull,
            _ => false,
        }
    }
}

/// Whether `e` says the connection is gone rather than the statement
/// wrong: an I/O error, or a server that ended the session (SQLSTATE class
/// 08, connection exception; 57P01–57P03, the server shutting down, crashed
/// or starting).
pub fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// A page of messages, whether more exist past it, and the seqs of its
/// messages that have reactions (read apart: see [`Store::reactions`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MessagePage {
    /// The messages, as their rows keep them.
    pub messages: Vec<Message>,
    /// More exist past them.
    pub has_more: bool,
    /// The seqs of those with reactions, in page order.
    pub reacted: Vec<u64>,
}

impl MessagePage {
    /// The messages and whether more exist.
    pub fn parts(self) -> (Vec<Message>, bool) {
        (self.messages, self.has_more)
    }

    /// The first `limit` of `rows`, and whether there were more.
    pub fn from_rows(
        rows: impl IntoIterator<Item = rows::MessageRow>,
        limit: u32,
    ) -> Result<Self, StoreError> {
        let mut page = MessagePage::default();
        for row in rows {
            if page.messages.len() == limit as usize {
                page.has_more = true;
                break;
            }
            let reacted = row.reacted();
            let m = Message::try_from(row)?;
            if reacted {
                page.reacted.push(m.seq);
            }
            page.messages.push(m);
        }
        Ok(page)
    }
}

/// The rows of a page of a user's conversations (see [`Store::listed`]).
pub type ListedRows = Result<rows::Listed, StoreError>;

pub use rows::Listing;

/// Where a listing of a user's conversations continues: after the one with
/// this activity time and id (most recent activity first, then by id; a
/// listing in id order uses the id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListAfter {
    /// When its newest message or event was stored (ms since the epoch).
    pub last_activity_ms: i64,
    /// Its id.
    pub conversation_id: String,
}

/// A page of a user's conversations, and where the next page starts when
/// more follow.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConversationPage {
    /// The conversations.
    pub conversations: Vec<Conversation>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<ListAfter>,
}

/// Where conversations and messages are kept.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies records of ingress partition `partition` in order in one
    /// transaction and returns one outcome per record. A refused record is
    /// an outcome with an error, not an Err. What the transaction changes
    /// is stamped with the partition's next change number (see
    /// [`rows::NEXT_CHANGE`]).
    async fn apply(
        &self,
        partition: u32,
        batch: &[IngressRecord],
    ) -> Result<Vec<OutcomeRecord>, StoreError>;
    /// A conversation with its members, if it exists.
    async fn conversation(&self, id: &str) -> Result<Option<Conversation>, StoreError>;
    /// The rows of up to `limit` of `user`'s conversations as `listing`
    /// picks and orders them (see [`Listing::sql`]).
    async fn listed(&self, user: &str, listing: Listing<'_>, limit: u32) -> ListedRows;
    /// Every partition's newest change number (see
    /// [`rows::CHANGE_COUNTERS`]).
    async fn change_counters(&self) -> Result<Vec<u64>, StoreError>;
    /// The conversations `user` left or was removed from since the cursor
    /// `since` and is not a member of again, with ids after `after`, in id
    /// order (see [`rows::departed_sql`]).
    async fn departed(
        &self,
        user: &str,
        since: &[u64],
        after: &str,
    ) -> Result<Vec<String>, StoreError>;
    /// The members other than `user` of `user`'s DIRECT conversations
    /// (see [`rows::DIRECT_PARTNERS`]).
    async fn direct_partners(&self, user: &str) -> Result<Vec<String>, StoreError>;
    /// Which of `users` share a conversation with `caller`.
    async fn shared_with(&self, caller: &str, users: &[&str]) -> Result<Vec<String>, StoreError>;
    /// The presence rows of `users` that have one (see
    /// [`rows::presence_sql`]).
    async fn presence(&self, users: &[&str]) -> Result<Vec<rows::PresenceRow>, StoreError>;
    /// Records presence updates, as if one after another (see
    /// [`rows::record_presence`]).
    async fn record_presence(&self, updates: &[PresenceUpdate]) -> Result<(), StoreError>;
    /// Up to `limit` of `user`'s conversations as `listing` picks and
    /// orders them, each with its members and their read positions,
    /// `user`'s read position and unread count, and its newest TEXT
    /// message.
    async fn conversations(
        &self,
        user: &str,
        listing: Listing<'_>,
        limit: u32,
    ) -> Result<ConversationPage, StoreError> {
        let rows = self.listed(user, listing, limit.saturating_add(1)).await?;
        rows::conversation_page(rows, &listing, limit as usize)
    }
    /// The messages of `page`, and whether more exist past them.
    async fn history(&self, page: Page<'_>) -> Result<MessagePage, StoreError>;
    /// The messages at `seqs` of conversation `id` that exist and that
    /// `caller` may read (the targets of a page's replies).
    async fn targets(
        &self,
        id: &str,
        caller: &str,
        seqs: &[u64],
    ) -> Result<Vec<rows::TargetRow>, StoreError>;
    /// The reactions to the messages at seqs `from` to `to` of conversation
    /// `id`, as `caller` sees them (see [`rows::PAGE_REACTIONS`]).
    async fn reactions(
        &self,
        id: &str,
        seqs: (u64, u64),
        caller: &str,
    ) -> Result<Vec<rows::ReactionRow>, StoreError>;
    /// The earlier versions of the message at `seq` of conversation `id`
    /// (see [`rows::VERSIONS`]).
    async fn versions(&self, id: &str, seq: u64) -> Result<Vec<rows::VersionRow>, StoreError>;
    /// [`Store::history`] for `caller`: the seqs of `page` that `caller`
    /// may read (see [`rows::visible_in`]), or `None` if the conversation
    /// does not exist or `caller` is not a member of it (ask
    /// [`Store::conversation`] which).
    async fn member_history(
        &self,
        caller: &str,
        page: Page<'_>,
    ) -> Result<Option<MessagePage>, StoreError>;
    /// Up to `query.limit` of the live TEXT messages that `query.caller`
    /// may read and whose current body matches `query.terms`, newest first
    /// after `query.after` (see [`search`]); `None` when search is off
    /// (`CONFAB_SEARCH_INDEX=off`).
    async fn search(
        &self,
        query: &search::SearchQuery<'_>,
    ) -> Result<Option<Vec<search::SearchRow>>, StoreError>;
}

/// The keyset of a page after `cursor`, for a store's SQL: how a seq
/// compares with the bound (`<` or `>`), the seq order (`DESC` or `ASC`),
/// and the bound as a BIGINT (a bound past `i64::MAX` is past every seq).
pub fn keyset(cursor: PageCursor) -> (&'static str, &'static str, i64) {
    let bigint = |bound: u64| bound.min(i64::MAX as u64) as i64;
    match cursor {
        PageCursor::Before(b) => ("<", "DESC", bigint(b)),
        PageCursor::After(a) => (">", "ASC", bigint(a)),
    }
}

pub use confab_core::time::{now_ms, timestamp};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_connection_is_unavailable_and_other_failures_are_internal() {
        let io = || sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(connection_lost(&io()));
        assert!(!connection_lost(&sqlx::Error::RowNotFound));
        assert!(!connection_lost(&sqlx::Error::PoolTimedOut));
        let code = |e: StoreError| tonic::Status::from(ChatError::from(e)).code();
        assert_eq!(code(StoreError::Database(io())), tonic::Code::Unavailable);
        assert_eq!(
            code(StoreError::Database(sqlx::Error::PoolTimedOut)),
            tonic::Code::Unavailable
        );
        assert_eq!(
            code(StoreError::Database(sqlx::Error::RowNotFound)),
            tonic::Code::Internal
        );
        assert_eq!(code(StoreError::Corrupt("x".into())), tonic::Code::Internal);
    }
}
