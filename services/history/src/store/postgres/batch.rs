//! How a PostgreSQL transaction applies a batch: the [`BatchTx`] of the
//! PostgreSQL store.

use super::{load_conversation, prefixed, Tx};
use crate::store::apply::{BatchTx, FactsOfRead};
use crate::store::decide::ops::ReactionFacts;
use crate::store::decide::ReplyFacts;
use crate::store::rows::TargetRow;
use crate::store::rows::{self, ChangeStamp, MessageRow, Shared, MESSAGE_COLUMNS};
use crate::store::{search, StoreError};
use async_trait::async_trait;
use confab_proto::v1::{Conversation, Message};
use sqlx::postgres::PgRow;
use std::collections::HashMap;
use std::sync::LazyLock;

// Per-run plans: the statements that look a batch's arrays up in
// `conversations`, `members` or `messages` are planned on every run
// (unnamed statements), not prepared once, and the lookups in `messages`
// and `members` probe the index key by key (LATERAL ... LIMIT 1). On a
// fresh database PostgreSQL cached a hash join over every `kind = 1`
// message for the dedupe lookup (and chose one again for 256 keys while
// the table had never been analyzed), which read the whole table for every
// batch, slower with each message stored (docs/benchmarks-log.md). Planning
// once per batch costs a fraction of a millisecond.

/// Sets a run's newest messages on their conversations in change (`$4`
/// partition, `$5` number) at `$3`, and keeps each one's member list
/// ([`rows::keep_member_list`]: the senders' read positions moved first).
static SET_LAST_SEQS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE conversations AS c
         SET last_seq = u.last_seq, last_activity_ms = $3, change_partition = $4, change_no = $5,
             last_text_seq = u.last_seq, last_text_sender = u.sender,
             last_text_client_msg_id = u.client_msg_id, last_text_body = u.body,
             last_text_at_ms = $3, last_text_edit_count = 0, last_text_edited_at_ms = 0,
             last_text_deleted_by = '', last_text_deleted_at_ms = 0, {}
         FROM UNNEST($1::text[], $2::bigint[], $6::text[], $7::text[], $8::text[])
              AS u (id, last_seq, sender, client_msg_id, body)
         WHERE c.id = u.id",
        rows::keep_member_list("c.id", "$4", "$5")
    )
});

/// Concurrent batches are serialised by row locks on `conversations`, taken
/// in id order before anything a decision reads is read.
#[async_trait]
impl BatchTx for Tx {
    /// Locks the existing conversations among `ids` (sorted, so every batch
    /// locks in the same order). Under READ COMMITTED a row locked after
    /// waiting is returned as the previous holder committed it, so the last
    /// seqs are current.
    async fn last_seqs(&mut self, ids: &[&str]) -> Result<HashMap<String, u64>, StoreError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT id, last_seq FROM conversations WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .persistent(false) // planned per run: see above
        .bind(ids)
        .fetch_all(&mut **self)
        .await?;
        rows.into_iter()
            .map(|(id, last)| Ok((id, rows::seq_from(last)?)))
            .collect()
    }

    /// One index probe per key (a LATERAL subquery with a LIMIT is never
    /// turned into a hash join over the table).
    async fn sent(&mut self, keys: &[(&str, &str, &str)]) -> Result<Vec<Message>, StoreError> {
        let sql = format!(
            "SELECT {} FROM UNNEST($1::text[], $2::text[], $3::text[]) AS k (conversation_id, sender_id, client_msg_id)
             CROSS JOIN LATERAL (
                 SELECT {} FROM messages x
                 WHERE x.conversation_id = k.conversation_id AND x.sender_id = k.sender_id
                   AND x.client_msg_id = k.client_msg_id AND x.kind <> 2
                 LIMIT 1
             ) m",
            prefixed("m", MESSAGE_COLUMNS),
            prefixed("x", MESSAGE_COLUMNS)
        );
        let rows: Vec<MessageRow> = sqlx::query_as(&sql)
            .persistent(false) // planned per run: see above
            .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.2).collect::<Vec<_>>())
            .fetch_all(&mut **self)
            .await?;
        rows.into_iter().map(Message::try_from).collect()
    }

    async fn members(
        &mut self,
        pairs: &[(&str, &str)],
    ) -> Result<Vec<(String, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT k.conversation_id, k.user_id
             FROM UNNEST($1::text[], $2::text[]) AS k (conversation_id, user_id)
             CROSS JOIN LATERAL (
                 SELECT 1 FROM members x
                 WHERE x.conversation_id = k.conversation_id AND x.user_id = k.user_id
                 LIMIT 1
             ) m",
        )
        .persistent(false) // planned per run: see above
        .bind(pairs.iter().map(|p| p.0).collect::<Vec<_>>())
        .bind(pairs.iter().map(|p| p.1).collect::<Vec<_>>())
        .fetch_all(&mut **self)
        .await?)
    }

    async fn insert_sent(
        &mut self,
        new: &[Message],
        now: i64,
        index: bool,
    ) -> Result<(), StoreError> {
        sqlx::query(
            &format!(
                "INSERT INTO messages (conversation_id, seq, sender_id, client_msg_id, kind, body, membership, created_at_ms,
                                       reply_to_seq, search_tokens)
                 SELECT u.conversation_id, u.seq, u.sender_id, u.client_msg_id, u.kind, u.body, NULL, $7, u.reply_to_seq,
                        {}
                 FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::int[], $8::bigint[], $9::text[])
                      AS u (conversation_id, seq, sender_id, client_msg_id, body, kind, reply_to_seq, tokens)",
                search::pg_scoped("u.tokens", "u.conversation_id", "tsvector")
            ),
        )
        .bind(new.iter().map(|m| m.conversation_id.as_str()).collect::<Vec<_>>())
        .bind(new.iter().map(|m| m.seq as i64).collect::<Vec<_>>())
        .bind(new.iter().map(|m| m.sender_id.as_str()).collect::<Vec<_>>())
        .bind(new.iter().map(|m| m.client_msg_id.as_str()).collect::<Vec<_>>())
        .bind(new.iter().map(|m| m.body.as_str()).collect::<Vec<_>>())
        .bind(new.iter().map(|m| m.kind).collect::<Vec<_>>())
        .bind(now)
        .bind(new.iter().map(|m| m.reply_to_seq as i64).collect::<Vec<_>>())
        .bind(
            new.iter()
                .map(|m| index.then(|| search::pg_document(&m.body)))
                .collect::<Vec<_>>(),
        )
        .execute(&mut **self)
        .await?;
        Ok(())
    }

    async fn set_last_seqs(
        &mut self,
        newest: &[&Message],
        now: i64,
        stamp: ChangeStamp,
    ) -> Result<(), StoreError> {
        sqlx::query(SET_LAST_SEQS.as_str())
            .persistent(false) // planned per run: see above
            .bind(
                newest
                    .iter()
                    .map(|m| m.conversation_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(newest.iter().map(|m| m.seq as i64).collect::<Vec<_>>())
            .bind(now)
            .bind(stamp.partition)
            .bind(stamp.no)
            .bind(
                newest
                    .iter()
                    .map(|m| m.sender_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                newest
                    .iter()
                    .map(|m| m.client_msg_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(newest.iter().map(|m| m.body.as_str()).collect::<Vec<_>>())
            .execute(&mut **self)
            .await?;
        Ok(())
    }

    async fn next_change(&mut self, partition: i32) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(rows::NEXT_CHANGE)
            .bind(partition)
            .fetch_one(&mut **self)
            .await?)
    }

    async fn conversation(&mut self, id: &str) -> Result<Option<Conversation>, StoreError> {
        load_conversation(self, id, true).await
    }

    async fn add_members(
        &mut self,
        id: &str,
        users: &[String],
        role: i32,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO members (conversation_id, user_id, role) SELECT $1, u, $3 FROM UNNEST($2::text[]) AS u",
        )
        .bind(id)
        .bind(users)
        .bind(role)
        .execute(&mut **self)
        .await?;
        Ok(())
    }

    async fn run(&mut self, statement: Shared<'_>) -> Result<u64, StoreError> {
        Ok(rows::shared(statement)
            .execute(&mut **self)
            .await?
            .rows_affected())
    }

    /// Locks the conversation first, then reads in a separate statement
    /// (which sees what the previous lock holder committed).
    async fn read_facts(&mut self, id: &str, user: &str, seq: u64) -> FactsOfRead {
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut **self)
                .await?;
        if found.is_none() {
            return Ok(None);
        }
        rows::read_facts(&mut **self, id, user, seq).await
    }

    /// One statement for the whole run (its conversations are locked).
    async fn sender_reads(&mut self, reads: &[(&str, &str, u64)]) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE members AS m SET read_seq = u.seq, read_system = c.system_count
             FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS u (conversation_id, user_id, seq)
             JOIN conversations c ON c.id = u.conversation_id
             WHERE m.conversation_id = u.conversation_id AND m.user_id = u.user_id
               AND m.read_seq < u.seq",
        )
        .persistent(false) // planned per run: see above
        .bind(reads.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(reads.iter().map(|r| r.1).collect::<Vec<_>>())
        .bind(reads.iter().map(|r| r.2 as i64).collect::<Vec<_>>())
        .execute(&mut **self)
        .await?;
        Ok(())
    }

    async fn reply_targets(
        &mut self,
        replies: &[(&str, u64, &str)],
    ) -> Result<Vec<ReplyFacts>, StoreError> {
        let sql = rows::reply_facts_sql(
            "UNNEST($1::text[], $2::bigint[], $3::text[]) AS k (conversation_id, seq, replier)",
        );
        let found: Vec<PgRow> = sqlx::query(&sql)
            .persistent(false) // planned per run: see above
            .bind(replies.iter().map(|r| r.0).collect::<Vec<_>>())
            .bind(replies.iter().map(|r| r.1 as i64).collect::<Vec<_>>())
            .bind(replies.iter().map(|r| r.2).collect::<Vec<_>>())
            .fetch_all(&mut **self)
            .await?;
        found.iter().map(rows::reply_facts).collect()
    }

    async fn target(&mut self, id: &str, seq: u64) -> Result<Option<TargetRow>, StoreError> {
        rows::target(&mut **self, id, seq).await
    }

    async fn reindex(
        &mut self,
        id: &str,
        seq: u64,
        _old: Option<&str>,
        new: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "UPDATE messages SET search_tokens = {}
             WHERE conversation_id = $1 AND seq = $2",
            search::pg_scoped("$3", "$1", "tsvector")
        ))
        .bind(id)
        .bind(seq as i64)
        .bind(new.map(search::pg_document))
        .execute(&mut **self)
        .await?;
        Ok(())
    }

    async fn reaction_facts(
        &mut self,
        id: &str,
        seq: u64,
        user: &str,
        emoji: &str,
    ) -> Result<ReactionFacts, StoreError> {
        rows::reaction_facts_of(&mut **self, id, seq, user, emoji).await
    }
}
