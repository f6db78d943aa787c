//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`,
//! so a committed batch survives `kill -9` and power loss. Writers are
//! serialised by a mutex (SQLite has one writer anyway); readers use the pool.
//! The WAL is checkpointed into the database file every
//! [`WAL_AUTOCHECKPOINT_PAGES`] pages rather than SQLite's default 1,000.

use super::apply::{self, BatchTx, FactsOfRead};
use super::decide::ops::ReactionFacts;
use super::decide::ReplyFacts;
use super::rows::{self, ChangeStamp, ConversationRow, Dialect, MessageRow, Shared, TargetRow};
use super::search::{self, SearchQuery, SearchRow};
use super::{keyset, now_ms, ListedRows, Listing, MessagePage, Store, StoreError};
use async_trait::async_trait;
use confab_core::validate::{Page, SizeLimits};
use confab_proto::internal::v1::{IngressRecord, OutcomeRecord, PresenceUpdate};
use confab_proto::v1::{Conversation, Message};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection, SqlitePool};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use tokio::sync::Mutex;

/// The store's schema, `migrations/sqlite/` (public for upgrade tests, which
/// apply part of it).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

/// WAL pages after which a commit checkpoints them into the database file
/// (SQLite's `wal_autocheckpoint`; its default is 1,000 pages, 4 MB).
///
/// The checkpoint runs inside the committing writer's turn, so it holds up
/// every send behind it, and it writes each changed page once however many
/// commits changed it. A chat table's hot pages (the newest leaf of each
/// active conversation in the table and in the dedupe index) change in
/// nearly every commit, so checkpointing a tenth as often writes far fewer
/// pages per message: embedded Connect sends +10% on average over seven
/// interleaved pairs of runs (docs/benchmarks-log.md). The cost is a WAL
/// of up to about 40 MB on disk and as much to replay when the file is opened after a crash; durability is unchanged,
/// since every commit still syncs the WAL (`synchronous=FULL`).
pub const WAL_AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// History kept in a SQLite database file.
pub struct SqliteStore {
    /// Connections for reads and the write transaction.
    pool: SqlitePool,
    /// Serialises write transactions so they never fight over the lock.
    write: Mutex<()>,
    /// Group size limit enforced when members are added.
    limits: SizeLimits,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `path` and migrates it.
    pub async fn open(path: &Path, limits: SizeLimits) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES.to_string());
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        backfill_search(&pool, limits.search_index).await?;
        Ok(Self {
            pool,
            write: Mutex::new(()),
            limits,
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn apply(
        &self,
        partition: u32,
        batch: &[IngressRecord],
    ) -> Result<Vec<OutcomeRecord>, StoreError> {
        let _writer = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        let outcomes =
            apply::batch(&mut tx, partition, batch, MAX_RUN, &self.limits, now_ms()).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn conversation(&self, id: &str) -> Result<Option<Conversation>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        load_conversation(&mut conn, id).await
    }

    async fn listed(&self, user: &str, listing: Listing<'_>, limit: u32) -> ListedRows {
        listing
            .gather(user, limit, Dialect::Sqlite, &self.pool)
            .await
    }

    async fn change_counters(&self) -> Result<Vec<u64>, StoreError> {
        rows::counters(
            sqlx::query_as(rows::CHANGE_COUNTERS)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn departed(
        &self,
        user: &str,
        since: &[u64],
        after: &str,
    ) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(&rows::departed_sql(Dialect::Sqlite))
            .bind(user)
            .bind(after)
            .bind(Dialect::Sqlite.bound(since))
            .fetch_all(&self.pool)
            .await?)
    }

    async fn direct_partners(&self, user: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(rows::DIRECT_PARTNERS)
            .bind(user)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn shared_with(&self, caller: &str, users: &[&str]) -> Result<Vec<String>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let sql = rows::shared_with_sql(users.len());
        let q = users
            .iter()
            .fold(sqlx::query_scalar(&sql).bind(caller), |q, u| q.bind(*u));
        Ok(q.fetch_all(&self.pool).await?)
    }

    async fn presence(&self, users: &[&str]) -> Result<Vec<rows::PresenceRow>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let sql = rows::presence_sql(users.len());
        let q = users.iter().fold(sqlx::query_as(&sql), |q, u| q.bind(*u));
        Ok(q.fetch_all(&self.pool).await?)
    }

    /// Serialised with the batches (one writer).
    async fn record_presence(&self, updates: &[PresenceUpdate]) -> Result<(), StoreError> {
        let _writer = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        rows::record_presence::<sqlx::Sqlite>(&mut tx, updates).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn targets(
        &self,
        id: &str,
        caller: &str,
        seqs: &[u64],
    ) -> Result<Vec<rows::TargetRow>, StoreError> {
        rows::targets(&self.pool, id, caller, seqs).await
    }

    /// The conversation's members, then the page (one writer commits
    /// between the two at most; a member removed in between reads the page
    /// it could read when it asked).
    async fn member_history(
        &self,
        caller: &str,
        page: Page<'_>,
    ) -> Result<Option<MessagePage>, StoreError> {
        match self.conversation(page.conversation_id).await? {
            Some(c) if c.member_ids.iter().any(|m| m == caller) => {
                Ok(Some(self.page(page, Some(caller)).await?))
            }
            _ => Ok(None),
        }
    }

    async fn search(&self, q: &SearchQuery<'_>) -> Result<Option<Vec<SearchRow>>, StoreError> {
        if !self.limits.search_index {
            return Ok(None);
        }
        let sql = search::sqlite_search_sql(!q.conversation_id.is_empty());
        Ok(sqlx::query_as::<_, SearchRow>(&sql)
            .bind(q.caller)
            .bind(search::fts_query(q.terms))
            .bind(q.conversation_id)
            .bind(q.after.sent_at_ms)
            .bind(&q.after.conversation_id)
            .bind(q.after.seq.min(i64::MAX as u64) as i64)
            .bind(i64::from(q.limit))
            .fetch_all(&self.pool)
            .await
            .map(Some)?)
    }

    async fn reactions(
        &self,
        id: &str,
        seqs: (u64, u64),
        caller: &str,
    ) -> Result<Vec<rows::ReactionRow>, StoreError> {
        rows::page_reactions(&self.pool, id, seqs, caller).await
    }

    async fn versions(&self, id: &str, seq: u64) -> Result<Vec<rows::VersionRow>, StoreError> {
        rows::versions(&self.pool, id, seq).await
    }

    async fn history(&self, page: Page<'_>) -> Result<MessagePage, StoreError> {
        self.page(page, None).await
    }
}

impl SqliteStore {
    /// The messages of `page`, those `caller` may read when it is given
    /// (see [`rows::visible_in`]).
    async fn page(&self, page: Page<'_>, caller: Option<&str>) -> Result<MessagePage, StoreError> {
        let (conversation_id, cursor, limit) = (page.conversation_id, page.cursor, page.limit);
        let (cmp, order, bound) = keyset(cursor);
        let visible = match caller {
            Some(_) => format!("AND {}", rows::visible_in("x.seq", "$1", "$4")),
            None => String::new(),
        };
        let sql = format!(
            "SELECT * FROM messages x WHERE x.conversation_id = $1 AND x.seq {cmp} $2 {visible}
             ORDER BY x.seq {order} LIMIT $3"
        );
        let mut q = sqlx::query_as::<_, MessageRow>(&sql)
            .bind(conversation_id)
            .bind(bound)
            .bind(i64::from(limit) + 1);
        if let Some(caller) = caller {
            q = q.bind(caller);
        }
        let rows = q.fetch_all(&self.pool).await?;
        MessagePage::from_rows(rows, limit)
    }
}

type Tx = sqlx::Transaction<'static, Sqlite>;

/// Most sends in one run (at 7 parameters a row, far below SQLite's 32,766
/// parameters a statement). A run is a handful of statements instead of
/// five per send, and each statement is a round trip to SQLite's worker
/// thread.
const MAX_RUN: usize = 512;

/// `(?, ?), (?, ?), ...`: `rows` rows of `cols` parameters.
fn placeholders(rows: usize, cols: usize) -> String {
    let row = format!("({})", vec!["?"; cols].join(", "));
    vec![row; rows].join(", ")
}

/// One writer at a time (the store's mutex), so nothing is locked: what a
/// statement reads is what the previous batch committed.
#[async_trait]
impl BatchTx for Tx {
    async fn last_seqs(&mut self, ids: &[&str]) -> Result<HashMap<String, u64>, StoreError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = format!(
            "SELECT c.id, c.last_seq FROM (VALUES {}) AS k JOIN conversations c ON c.id = k.column1",
            placeholders(ids.len(), 1)
        );
        let mut q = sqlx::query_as::<_, (String, i64)>(&sql);
        for id in ids {
            q = q.bind(*id);
        }
        q.fetch_all(&mut **self)
            .await?
            .into_iter()
            .map(|(id, last)| Ok((id, rows::seq_from(last)?)))
            .collect()
    }

    async fn sent(&mut self, keys: &[(&str, &str, &str)]) -> Result<Vec<Message>, StoreError> {
        let sql = format!(
            "SELECT m.* FROM (VALUES {}) AS k
             JOIN messages m ON m.conversation_id = k.column1 AND m.sender_id = k.column2
                            AND m.client_msg_id = k.column3 AND m.kind <> 2",
            placeholders(keys.len(), 3)
        );
        let mut q = sqlx::query_as::<_, MessageRow>(&sql);
        for (c, s, i) in keys {
            q = q.bind(*c).bind(*s).bind(*i);
        }
        q.fetch_all(&mut **self)
            .await?
            .into_iter()
            .map(Message::try_from)
            .collect()
    }

    async fn members(
        &mut self,
        pairs: &[(&str, &str)],
    ) -> Result<Vec<(String, String)>, StoreError> {
        let sql = format!(
            "SELECT m.conversation_id, m.user_id FROM (VALUES {}) AS k
             JOIN members m ON m.conversation_id = k.column1 AND m.user_id = k.column2",
            placeholders(pairs.len(), 2)
        );
        let mut q = sqlx::query_as(&sql);
        for (c, u) in pairs {
            q = q.bind(*c).bind(*u);
        }
        Ok(q.fetch_all(&mut **self).await?)
    }

    async fn insert_sent(
        &mut self,
        new: &[Message],
        now: i64,
        index: bool,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO messages (conversation_id, seq, sender_id, client_msg_id, kind, body, membership, created_at_ms, reply_to_seq)
             SELECT column1, column2, column3, column4, column5, column6, NULL, column7, column8 FROM (VALUES {})",
            placeholders(new.len(), 8)
        );
        let mut q = sqlx::query(&sql);
        for m in new {
            q = q
                .bind(&m.conversation_id)
                .bind(m.seq as i64)
                .bind(&m.sender_id)
                .bind(&m.client_msg_id)
                .bind(m.kind)
                .bind(&m.body)
                .bind(now)
                .bind(m.reply_to_seq as i64);
        }
        q.execute(&mut **self).await?;
        if !index {
            return Ok(());
        }
        let words: Vec<_> = new
            .iter()
            .map(|m| (m.conversation_id.as_str(), m.seq as i64, m.body.as_str()))
            .collect();
        index_words(&mut **self, &words).await
    }

    async fn set_last_seqs(
        &mut self,
        newest: &[&Message],
        now: i64,
        stamp: ChangeStamp,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE conversations SET last_seq = u.column2, last_activity_ms = ?,
                 change_partition = ?, change_no = ?,
                 last_text_seq = u.column2, last_text_sender = u.column3,
                 last_text_client_msg_id = u.column4, last_text_body = u.column5,
                 last_text_at_ms = ?, last_text_edit_count = 0, last_text_edited_at_ms = 0,
                 last_text_deleted_by = '', last_text_deleted_at_ms = 0, {}
             FROM (VALUES {}) AS u WHERE conversations.id = u.column1",
            rows::keep_member_list("conversations.id", "?", "?"),
            placeholders(newest.len(), 5)
        );
        let mut q = sqlx::query(&sql)
            .bind(now)
            .bind(stamp.partition)
            .bind(stamp.no)
            .bind(now)
            .bind(stamp.partition)
            .bind(stamp.no);
        for m in newest {
            q = q
                .bind(&m.conversation_id)
                .bind(m.seq as i64)
                .bind(&m.sender_id)
                .bind(&m.client_msg_id)
                .bind(&m.body);
        }
        q.execute(&mut **self).await?;
        Ok(())
    }

    async fn next_change(&mut self, partition: i32) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(rows::NEXT_CHANGE)
            .bind(partition)
            .fetch_one(&mut **self)
            .await?)
    }

    /// One statement for the whole run: a statement per sender cost a
    /// tenth of embedded throughput.
    async fn sender_reads(&mut self, reads: &[(&str, &str, u64)]) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE members SET
                 read_seq = u.column3,
                 read_system = (SELECT c.system_count FROM conversations c WHERE c.id = u.column1)
             FROM (VALUES {}) AS u
             WHERE members.conversation_id = u.column1 AND members.user_id = u.column2
               AND members.read_seq < u.column3",
            placeholders(reads.len(), 3)
        );
        let mut q = sqlx::query(&sql);
        for &(c, u, seq) in reads {
            q = q.bind(c).bind(u).bind(seq as i64);
        }
        q.execute(&mut **self).await?;
        Ok(())
    }

    async fn conversation(&mut self, id: &str) -> Result<Option<Conversation>, StoreError> {
        load_conversation(self, id).await
    }

    async fn read_facts(&mut self, id: &str, user: &str, seq: u64) -> FactsOfRead {
        rows::read_facts(&mut **self, id, user, seq).await
    }

    async fn reply_targets(
        &mut self,
        replies: &[(&str, u64, &str)],
    ) -> Result<Vec<ReplyFacts>, StoreError> {
        let source = format!(
            "(SELECT column1 AS conversation_id, column2 AS seq, column3 AS replier FROM (VALUES {})) AS k",
            placeholders(replies.len(), 3)
        );
        let sql = rows::reply_facts_sql(&source);
        let mut q = sqlx::query(&sql);
        for &(c, seq, replier) in replies {
            q = q.bind(c).bind(seq as i64).bind(replier);
        }
        let found = q.fetch_all(&mut **self).await?;
        found.iter().map(rows::reply_facts).collect()
    }

    async fn target(&mut self, id: &str, seq: u64) -> Result<Option<TargetRow>, StoreError> {
        rows::target(&mut **self, id, seq).await
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

    /// A contentless FTS5 table forgets a row's words only when told them
    /// (its `'delete'` command); with `secure-delete` on, they leave the
    /// file.
    async fn reindex(
        &mut self,
        id: &str,
        seq: u64,
        old: Option<&str>,
        new: Option<&str>,
    ) -> Result<(), StoreError> {
        let rowid = search::fts_rowid("c.search_no", "$2");
        if let Some(old) = old {
            sqlx::query(&format!(
                "INSERT INTO message_search (message_search, rowid, tokens)
                 SELECT 'delete', {rowid}, $3 FROM conversations c WHERE c.id = $1"
            ))
            .bind(id)
            .bind(seq as i64)
            .bind(search::fts_document(old))
            .execute(&mut **self)
            .await?;
        }
        match new {
            Some(new) => index_words(&mut **self, &[(id, seq as i64, new)]).await,
            None => Ok(()),
        }
    }

    async fn run(&mut self, statement: Shared<'_>) -> Result<u64, StoreError> {
        Ok(rows::shared(statement)
            .execute(&mut **self)
            .await?
            .rows_affected())
    }

    /// One statement for all of them (a group has at most a few thousand
    /// parameters' worth of members).
    async fn add_members(
        &mut self,
        id: &str,
        users: &[String],
        role: i32,
    ) -> Result<(), StoreError> {
        if users.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO members (conversation_id, user_id, role) VALUES {}",
            placeholders(users.len(), 3)
        );
        let mut q = sqlx::query(&sql);
        for user in users {
            q = q.bind(id).bind(user).bind(role);
        }
        q.execute(&mut **self).await?;
        Ok(())
    }
}

/// Adds the words of messages given as (conversation, seq, body) to the
/// search index, in one statement.
async fn index_words(
    conn: &mut SqliteConnection,
    messages: &[(&str, i64, &str)],
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO message_search (rowid, tokens)
         SELECT {}, k.column2 FROM (VALUES {}) AS k JOIN conversations c ON c.id = k.column3",
        search::fts_rowid("c.search_no", "k.column1"),
        placeholders(messages.len(), 3)
    );
    let mut q = sqlx::query(&sql);
    for (conv, seq, body) in messages {
        q = q.bind(*seq).bind(search::fts_document(body)).bind(*conv);
    }
    q.execute(conn).await?;
    Ok(())
}

/// Indexes every live TEXT message for search when the index may be
/// behind: messages stored before search existed (migration 0010 leaves a
/// row in `search_backfill` when there are any) or while it was off. The
/// index is emptied and filled again in one transaction, before the store
/// takes writes: a crash leaves it pending and untouched. With search off
/// (`on` false) the index is emptied, so it holds no words that a delete
/// would have to erase, and the row is left for the next start.
async fn backfill_search(pool: &SqlitePool, on: bool) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    if !on {
        sqlx::query("INSERT INTO message_search (message_search) VALUES ('delete-all')")
            .execute(&mut *tx)
            .await?;
        sqlx::query(search::MARK_PENDING).execute(&mut *tx).await?;
        tx.commit().await?;
        return Ok(());
    }
    let pending: Option<i64> = sqlx::query_scalar("SELECT pending FROM search_backfill LIMIT 1")
        .fetch_optional(&mut *tx)
        .await?;
    if pending.is_none() {
        return Ok(());
    }
    sqlx::query("INSERT INTO message_search (message_search) VALUES ('delete-all')")
        .execute(&mut *tx)
        .await?;
    let (mut conv, mut seq) = (String::new(), 0i64);
    let mut indexed = 0usize;
    loop {
        let rows: Vec<(String, i64, String)> = sqlx::query_as(search::BACKFILL_NEXT)
            .bind(&conv)
            .bind(seq)
            .bind(search::BACKFILL_BATCH)
            .fetch_all(&mut *tx)
            .await?;
        let Some(last) = rows.last() else { break };
        (conv, seq) = (last.0.clone(), last.1);
        let words: Vec<_> = rows
            .iter()
            .map(|(c, s, body)| (c.as_str(), *s, body.as_str()))
            .collect();
        index_words(&mut tx, &words).await?;
        indexed += rows.len();
    }
    sqlx::query("DELETE FROM search_backfill")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(
        messages = indexed,
        "indexed the messages stored before search existed"
    );
    Ok(())
}

async fn load_conversation(
    conn: &mut SqliteConnection,
    id: &str,
) -> Result<Option<Conversation>, StoreError> {
    let Some(row) = sqlx::query_as::<_, ConversationRow>(
        "SELECT id, kind, title, last_seq, created_at_ms, history_visibility FROM conversations WHERE id = ?1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let members: Vec<rows::MemberRow> = sqlx::query_as(rows::MEMBERS)
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
    row.with_members(rows::members(members)?).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_upgrade_from_the_first_schema_keeps_history_and_counts_it_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("first-release.db");
        {
            let pool = SqlitePoolOptions::new()
                .connect_with(
                    SqliteConnectOptions::new()
                        .filename(&path)
                        .create_if_missing(true),
                )
                .await
                .expect("open");
            let first = sqlx::migrate::Migrator {
                migrations: std::borrow::Cow::Owned(MIGRATOR.migrations[..1].to_vec()),
                ..sqlx::migrate::Migrator::DEFAULT
            };
            first.run(&pool).await.expect("the first migration");
            sqlx::raw_sql(crate::store::conformance::upgrade::FIRST_RELEASE_ROWS)
                .execute(&pool)
                .await
                .expect("first-release rows");
            pool.close().await;
        }
        let store = SqliteStore::open(&path, SizeLimits::default())
            .await
            .expect("the later migrations");
        crate::store::conformance::upgrade::an_upgrade_keeps_history_and_counts_it_read(
            std::sync::Arc::new(store),
        )
        .await;
    }

    #[tokio::test]
    async fn sqlite_store_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut n = 0;
        crate::store::conformance::run_all(|limits| {
            n += 1;
            let path = dir.path().join(format!("conformance-{n}.db"));
            async move {
                std::sync::Arc::new(SqliteStore::open(&path, limits).await.expect("open"))
                    as std::sync::Arc<dyn Store>
            }
        })
        .await;
    }

    #[tokio::test]
    async fn search_turned_off_and_on_again_finds_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("search.db");
        crate::store::conformance::search::search_turned_off_and_on_again_finds_everything(|on| {
            let path = path.clone();
            async move {
                let limits = SizeLimits {
                    search_index: on,
                    ..SizeLimits::default()
                };
                let store = SqliteStore::open(&path, limits).await.expect("open");
                std::sync::Arc::new(store) as std::sync::Arc<dyn Store>
            }
        })
        .await;
    }

    /// Read with a connection of its own, from the file.
    #[tokio::test]
    async fn a_delete_erases_the_message_from_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("erase.db");
        let store = SqliteStore::open(&path, SizeLimits::default())
            .await
            .expect("open");
        let pool = SqlitePool::connect_with(SqliteConnectOptions::new().filename(&path))
            .await
            .expect("a second connection");
        let count: crate::store::conformance::changes::Count = Box::new(move |sql| {
            let pool = pool.clone();
            Box::pin(async move {
                sqlx::query_scalar(sql)
                    .fetch_one(&pool)
                    .await
                    .expect("count")
            })
        });
        crate::store::conformance::changes::a_delete_erases_the_message(
            std::sync::Arc::new(store),
            count,
            // The index's own pages: secure-delete takes the word out of them.
            "SELECT COUNT(*) FROM message_search_data WHERE instr(block, CAST('secret' AS BLOB)) > 0",
        )
        .await;
    }

    #[tokio::test]
    async fn every_connection_syncs_each_commit_and_checkpoints_late() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("pragmas.db"), SizeLimits::default())
            .await
            .expect("open");
        // Hold every connection of the pool at once, so each is checked.
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(store.pool.acquire().await.expect("acquire"));
        }
        for conn in &mut held {
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut **conn)
                .await
                .expect("journal_mode");
            let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&mut **conn)
                .await
                .expect("synchronous");
            let pages: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
                .fetch_one(&mut **conn)
                .await
                .expect("wal_autocheckpoint");
            assert_eq!(mode, "wal");
            assert_eq!(sync, 2, "synchronous=FULL");
            assert_eq!(pages, i64::from(WAL_AUTOCHECKPOINT_PAGES));
        }
    }

    #[tokio::test]
    async fn committed_messages_survive_reopening_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("durable.db");
        {
            let store = SqliteStore::open(&path, SizeLimits::default())
                .await
                .expect("open");
            let out = store
                .apply(
                    0,
                    &[
                        crate::store::conformance::create_group("g", "alice", &["alice"]),
                        crate::store::conformance::send("g", "alice", "m1", "hello"),
                    ],
                )
                .await
                .expect("apply");
            assert_eq!(out.len(), 2);
        }
        let store = SqliteStore::open(&path, SizeLimits::default())
            .await
            .expect("reopen");
        let (msgs, _) = store
            .history(Page::after("g", 0, 10))
            .await
            .expect("history")
            .parts();
        assert_eq!(msgs.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(msgs[1].body, "hello");
    }
}
