//! Rows as both stores keep them (the same tables in PostgreSQL and SQLite,
//! see `migrations/`), decoded once into the API's types.

use super::{timestamp, StoreError};
use confab_proto::prost::Message as _;
use confab_proto::v1::{Conversation, MembershipEvent, Message};

/// A row of `messages`.
#[derive(sqlx::FromRow)]
pub struct MessageRow {
    conversation_id: String,
    seq: i64,
    sender_id: String,
    client_msg_id: String,
    kind: i32,
    body: String,
    /// An encoded `MembershipEvent`, for SYSTEM messages.
    membership: Option<Vec<u8>>,
    created_at_ms: i64,
}

impl TryFrom<MessageRow> for Message {
    type Error = StoreError;

    fn try_from(row: MessageRow) -> Result<Self, StoreError> {
        let membership = row
            .membership
            .map(|b| MembershipEvent::decode(b.as_slice()))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("membership event: {e}")))?;
        Ok(Message {
            conversation_id: row.conversation_id,
            seq: seq_from(row.seq)?,
            sender_id: row.sender_id,
            client_msg_id: row.client_msg_id,
            body: row.body,
            created_at: Some(timestamp(row.created_at_ms)),
            kind: row.kind,
            membership,
        })
    }
}

/// A row of `conversations`, and for listings one of its members.
#[derive(sqlx::FromRow)]
pub struct ConversationRow {
    id: String,
    kind: i32,
    title: String,
    last_seq: i64,
    created_at_ms: i64,
}

impl ConversationRow {
    /// The conversation with `member_ids`.
    pub fn with_members(self, member_ids: Vec<String>) -> Result<Conversation, StoreError> {
        Ok(Conversation {
            id: self.id,
            kind: self.kind,
            title: self.title,
            member_ids,
            last_seq: seq_from(self.last_seq)?,
            created_at: Some(timestamp(self.created_at_ms)),
        })
    }
}

/// A conversation and one of its members: a row of [`LISTED_COLUMNS`].
#[derive(sqlx::FromRow)]
pub struct ListedRow {
    #[sqlx(flatten)]
    conversation: ConversationRow,
    user_id: String,
}

/// What a listing selects from `conversations c` joined with each of its
/// members `m2`, ordered by conversation and member.
pub const LISTED_COLUMNS: &str = "c.id, c.kind, c.title, c.last_seq, c.created_at_ms, m2.user_id";

/// Conversations with their members from [`ListedRow`]s, one per
/// (conversation, member), grouped by conversation.
pub fn conversations_from_rows(rows: Vec<ListedRow>) -> Result<Vec<Conversation>, StoreError> {
    let mut out: Vec<Conversation> = Vec::new();
    for row in rows {
        match out.last_mut() {
            Some(c) if c.id == row.conversation.id => c.member_ids.push(row.user_id),
            _ => out.push(row.conversation.with_members(vec![row.user_id])?),
        }
    }
    Ok(out)
}

/// A stored seq as the API's unsigned one.
pub fn seq_from(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative seq {v}")))
}

/// A statement both stores run as it is, written with `$N` parameters
/// (SQLite takes `$N` as parameter N, as PostgreSQL does).
#[derive(Debug, Clone, Copy)]
pub enum Shared<'q> {
    /// Inserts conversation `id` with no messages yet (last seq 0), unless
    /// it exists: no row is affected then.
    CreateConversation {
        /// The conversation.
        id: &'q str,
        /// `ConversationKind` as stored.
        kind: i32,
        /// Its title.
        title: &'q str,
        /// Milliseconds since the epoch.
        now: i64,
    },
    /// Removes `user` from conversation `id`.
    RemoveMember {
        /// The conversation.
        id: &'q str,
        /// The member.
        user: &'q str,
    },
    /// Inserts `message`.
    InsertMessage {
        /// The message.
        message: &'q Message,
        /// Milliseconds since the epoch.
        now: i64,
    },
    /// Makes `seq` the last seq of conversation `id`.
    SetLastSeq {
        /// The conversation.
        id: &'q str,
        /// Its new last seq.
        seq: u64,
    },
}

type Query<'q, DB> = sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>;

/// `statement` as a query for either store.
pub fn shared<'q, DB>(statement: Shared<'q>) -> Query<'q, DB>
where
    DB: sqlx::Database,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i32: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<Vec<u8>>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    match statement {
        Shared::CreateConversation {
            id,
            kind,
            title,
            now,
        } => sqlx::query(
            "INSERT INTO conversations (id, kind, title, last_seq, created_at_ms)
             VALUES ($1, $2, $3, 0, $4) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(kind)
        .bind(title)
        .bind(now),
        Shared::RemoveMember { id, user } => {
            sqlx::query("DELETE FROM members WHERE conversation_id = $1 AND user_id = $2")
                .bind(id)
                .bind(user)
        }
        Shared::InsertMessage { message: m, now } => sqlx::query(
            "INSERT INTO messages (conversation_id, seq, sender_id, client_msg_id, kind, body, membership, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(m.conversation_id.as_str())
        .bind(m.seq as i64)
        .bind(m.sender_id.as_str())
        .bind(m.client_msg_id.as_str())
        .bind(m.kind)
        .bind(m.body.as_str())
        .bind(m.membership.as_ref().map(|e| e.encode_to_vec()))
        .bind(now),
        Shared::SetLastSeq { id, seq } => {
            sqlx::query("UPDATE conversations SET last_seq = $2 WHERE id = $1")
                .bind(id)
                .bind(seq as i64)
        }
    }
}
