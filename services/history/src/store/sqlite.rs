//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`,
//! so a committed batch survives `kill -9` and power loss. Writers are
//! serialised by a mutex (SQLite has one writer anyway); readers use the pool.
//! The WAL is checkpointed into the database file every
//! [`WAL_AUTOCHECKPOINT_PAGES`] pages rather than SQLite's default 1,000.

use super::decide::{self, Change, Run, Send, SendFacts, Step};
use super::{keyset, now_ms, timestamp, Store, StoreError};
use async_trait::async_trait;
use confab_common::validate::{Limits, PageCursor};
use confab_proto::internal::v1::{IngressRecord, OutcomeRecord};
use confab_proto::prost::Message as _;
use confab_proto::v1::{Conversation, MembershipEvent, Message};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool};
use std::path::Path;
use std::time::Duration;
use tokio::sync::Mutex;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

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
    limits: Limits,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `path` and migrates it.
    pub async fn open(path: &Path, limits: Limits) -> Result<Self, StoreError> {
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
        Ok(Self {
            pool,
            write: Mutex::new(()),
            limits,
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn apply(&self, batch: &[IngressRecord]) -> Result<Vec<OutcomeRecord>, StoreError> {
        let _writer = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        let mut outcomes = Vec::with_capacity(batch.len());
        // Consecutive sends are decided and written a run at a time: a
        // handful of statements for the run instead of five per send (each
        // statement is a round trip to SQLite's worker thread).
        for run in decide::runs(batch, MAX_RUN) {
            match run {
                Run::Sends(run) => apply_sends(&mut tx, &run, now, &mut outcomes).await?,
                Run::One(rec) => {
                    outcomes.push(apply_change(&mut tx, rec, now, &self.limits).await?)
                }
            }
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn conversation(&self, id: &str) -> Result<Option<Conversation>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        load_conversation(&mut conn, id).await
    }

    async fn list_conversations(&self, user: &str) -> Result<Vec<Conversation>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.id, c.kind, c.title, c.last_seq, c.created_at_ms, m2.user_id
             FROM members m
             JOIN conversations c ON c.id = m.conversation_id
             JOIN members m2 ON m2.conversation_id = m.conversation_id
             WHERE m.user_id = ?1
             ORDER BY c.id, m2.user_id",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<Conversation> = Vec::new();
        for row in rows {
            let id: String = row.try_get(0)?;
            if out.last().map(|c| c.id != id).unwrap_or(true) {
                out.push(Conversation {
                    id,
                    kind: row.try_get(1)?,
                    title: row.try_get(2)?,
                    member_ids: vec![],
                    last_seq: row.try_get::<i64, _>(3)? as u64,
                    created_at: Some(timestamp(row.try_get(4)?)),
                });
            }
            if let Some(c) = out.last_mut() {
                c.member_ids.push(row.try_get(5)?);
            }
        }
        Ok(out)
    }

    async fn history(
        &self,
        conversation_id: &str,
        cursor: PageCursor,
        limit: u32,
    ) -> Result<(Vec<Message>, bool), StoreError> {
        let (cmp, order, bound) = keyset(cursor);
        let sql = format!(
            "SELECT * FROM messages WHERE conversation_id = ?1 AND seq {cmp} ?2 ORDER BY seq {order} LIMIT ?3"
        );
        let rows = sqlx::query(&sql)
            .bind(conversation_id)
            .bind(bound)
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.pool)
            .await?;
        let has_more = rows.len() > limit as usize;
        let messages = rows
            .iter()
            .take(limit as usize)
            .map(message_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((messages, has_more))
    }
}

type Tx = sqlx::Transaction<'static, Sqlite>;

/// Most sends decided by one [`apply_sends`] (at 7 parameters a row, far
/// below SQLite's 32,766 parameters a statement).
const MAX_RUN: usize = 512;

/// `(?, ?), (?, ?), ...`: `rows` rows of `cols` parameters.
fn placeholders(rows: usize, cols: usize) -> String {
    let row = format!("({})", vec!["?"; cols].join(", "));
    vec![row; rows].join(", ")
}

/// Loads what [`decide::sends`] reads for `run`, decides it, and writes the
/// new messages: four statements for the whole run (the conversations'
/// last seqs, the dedupe lookup, the membership lookup, one insert) and one
/// update of the last seqs.
async fn apply_sends(
    tx: &mut Tx,
    run: &[Send<'_>],
    now: i64,
    outcomes: &mut Vec<OutcomeRecord>,
) -> Result<(), StoreError> {
    let mut facts = SendFacts::default();
    let convs = decide::conversations(run);
    if !convs.is_empty() {
        let sql = format!(
            "SELECT c.id, c.last_seq FROM (VALUES {}) AS k JOIN conversations c ON c.id = k.column1",
            placeholders(convs.len(), 1)
        );
        let mut q = sqlx::query(&sql);
        for c in &convs {
            q = q.bind(*c);
        }
        for row in q.fetch_all(&mut **tx).await? {
            facts
                .last_seqs
                .insert(row.try_get(0)?, row.try_get::<i64, _>(1)? as u64);
        }
    }

    let keys = decide::keys(run, &facts.last_seqs);
    if !keys.is_empty() {
        let sql = format!(
            "SELECT m.* FROM (VALUES {}) AS k
             JOIN messages m ON m.conversation_id = k.column1 AND m.sender_id = k.column2
                            AND m.client_msg_id = k.column3 AND m.kind = 1",
            placeholders(keys.len(), 3)
        );
        let mut q = sqlx::query(&sql);
        for (c, s, i) in &keys {
            q = q.bind(*c).bind(*s).bind(*i);
        }
        for row in q.fetch_all(&mut **tx).await? {
            let m = message_from_row(&row)?;
            facts.originals.insert(decide::key_of(&m), m);
        }
    }

    let pairs = decide::member_pairs(run, &facts.last_seqs, &facts.originals);
    if !pairs.is_empty() {
        let sql = format!(
            "SELECT m.conversation_id, m.user_id FROM (VALUES {}) AS k
             JOIN members m ON m.conversation_id = k.column1 AND m.user_id = k.column2",
            placeholders(pairs.len(), 2)
        );
        let mut q = sqlx::query(&sql);
        for (c, u) in &pairs {
            q = q.bind(*c).bind(*u);
        }
        for row in q.fetch_all(&mut **tx).await? {
            facts.members.insert((row.try_get(0)?, row.try_get(1)?));
        }
    }

    let decided = decide::sends(run, &facts, now);
    if !decided.new.is_empty() {
        let sql = format!(
            "INSERT INTO messages (conversation_id, seq, sender_id, client_msg_id, kind, body, membership, created_at_ms)
             SELECT column1, column2, column3, column4, column5, column6, NULL, column7 FROM (VALUES {})",
            placeholders(decided.new.len(), 7)
        );
        let mut q = sqlx::query(&sql);
        for m in &decided.new {
            q = q
                .bind(&m.conversation_id)
                .bind(m.seq as i64)
                .bind(&m.sender_id)
                .bind(&m.client_msg_id)
                .bind(m.kind)
                .bind(&m.body)
                .bind(now);
        }
        q.execute(&mut **tx).await?;
        let sql = format!(
            "UPDATE conversations SET last_seq = u.column2
             FROM (VALUES {}) AS u WHERE conversations.id = u.column1",
            placeholders(decided.heads.len(), 2)
        );
        let mut q = sqlx::query(&sql);
        for (c, seq) in &decided.heads {
            q = q.bind(c).bind(*seq as i64);
        }
        q.execute(&mut **tx).await?;
    }
    decided.outcomes(run, outcomes);
    Ok(())
}

/// Decides one record that is not a send with [`decide::change`] and
/// writes what it comes to.
async fn apply_change(
    tx: &mut Tx,
    rec: &IngressRecord,
    now: i64,
    limits: &Limits,
) -> Result<OutcomeRecord, StoreError> {
    let conv_id = rec.conversation_id.as_str();
    let conv = if decide::reads_conversation(rec) {
        load_conversation(tx, conv_id).await?
    } else {
        None
    };
    let steps = match decide::change(rec, conv, limits, now) {
        Err(err) => return Ok(decide::refused(rec, err)),
        Ok(Change::Unchanged(conv)) => return Ok(decide::changed(rec, vec![], conv)),
        Ok(Change::Write(steps)) => steps,
    };
    for step in &steps {
        match step {
            Step::CreateConversation { kind, title } => {
                sqlx::query(
                    "INSERT INTO conversations (id, kind, title, last_seq, created_at_ms) VALUES (?1, ?2, ?3, 0, ?4)",
                )
                .bind(conv_id)
                .bind(kind)
                .bind(title)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            }
            Step::AddMembers(users) => {
                for user in users {
                    insert_member(tx, conv_id, user).await?;
                }
            }
            Step::RemoveMember(user) => {
                sqlx::query("DELETE FROM members WHERE conversation_id = ?1 AND user_id = ?2")
                    .bind(conv_id)
                    .bind(user)
                    .execute(&mut **tx)
                    .await?;
            }
            Step::Append(m) => {
                insert_message(tx, m, now).await?;
                set_last_seq(tx, conv_id, m.seq).await?;
            }
        }
    }
    let conv = require_conversation(tx, conv_id).await?;
    Ok(decide::changed(rec, decide::appended(steps), conv))
}

async fn set_last_seq(tx: &mut Tx, conv: &str, seq: u64) -> Result<(), StoreError> {
    sqlx::query("UPDATE conversations SET last_seq = ?2 WHERE id = ?1")
        .bind(conv)
        .bind(seq as i64)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_member(tx: &mut Tx, conv: &str, user: &str) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO members (conversation_id, user_id) VALUES (?1, ?2)")
        .bind(conv)
        .bind(user)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_message(tx: &mut Tx, m: &Message, now: i64) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO messages (conversation_id, seq, sender_id, client_msg_id, kind, body, membership, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .bind(&m.conversation_id)
    .bind(m.seq as i64)
    .bind(&m.sender_id)
    .bind(&m.client_msg_id)
    .bind(m.kind)
    .bind(&m.body)
    .bind(m.membership.as_ref().map(|e| e.encode_to_vec()))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn require_conversation(tx: &mut Tx, id: &str) -> Result<Conversation, StoreError> {
    load_conversation(tx, id).await?.ok_or_else(|| {
        StoreError::Corrupt(format!("conversation {id} vanished inside its transaction"))
    })
}

async fn load_conversation(
    conn: &mut SqliteConnection,
    id: &str,
) -> Result<Option<Conversation>, StoreError> {
    let Some(row) = sqlx::query(
        "SELECT id, kind, title, last_seq, created_at_ms FROM conversations WHERE id = ?1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let member_ids: Vec<String> = sqlx::query_scalar(
        "SELECT user_id FROM members WHERE conversation_id = ?1 ORDER BY user_id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(Conversation {
        id: row.try_get(0)?,
        kind: row.try_get(1)?,
        title: row.try_get(2)?,
        member_ids,
        last_seq: row.try_get::<i64, _>(3)? as u64,
        created_at: Some(timestamp(row.try_get(4)?)),
    }))
}

fn message_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Message, StoreError> {
    let membership: Option<Vec<u8>> = row.try_get("membership")?;
    let membership = membership
        .map(|b| MembershipEvent::decode(b.as_slice()))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("membership event: {e}")))?;
    Ok(Message {
        conversation_id: row.try_get("conversation_id")?,
        seq: row.try_get::<i64, _>("seq")? as u64,
        sender_id: row.try_get("sender_id")?,
        client_msg_id: row.try_get("client_msg_id")?,
        body: row.try_get("body")?,
        created_at: Some(timestamp(row.try_get("created_at_ms")?)),
        kind: row.try_get("kind")?,
        membership,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_store_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut n = 0;
        crate::store::conformance::run_all(|| {
            n += 1;
            let path = dir.path().join(format!("conformance-{n}.db"));
            async move {
                std::sync::Arc::new(
                    SqliteStore::open(
                        &path,
                        Limits {
                            max_group_members: 5,
                            ..Limits::default()
                        },
                    )
                    .await
                    .expect("open"),
                ) as std::sync::Arc<dyn Store>
            }
        })
        .await;
    }

    #[tokio::test]
    async fn every_connection_syncs_each_commit_and_checkpoints_late() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("pragmas.db"), Limits::default())
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
            let store = SqliteStore::open(&path, Limits::default())
                .await
                .expect("open");
            let out = store
                .apply(&[
                    crate::store::conformance::create_group("g", "alice", &["alice"]),
                    crate::store::conformance::send("g", "alice", "m1", "hello"),
                ])
                .await
                .expect("apply");
            assert_eq!(out.len(), 2);
        }
        let store = SqliteStore::open(&path, Limits::default())
            .await
            .expect("reopen");
        let (msgs, _) = store
            .history("g", PageCursor::After(0), 10)
            .await
            .expect("history");
        assert_eq!(msgs.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(msgs[1].body, "hello");
    }
}
