//! The distributed store: PostgreSQL through sqlx. Every record is decided
//! by [`decide`], as in the SQLite store; what is particular here is how
//! the work is done, so that a batch costs a handful of statements instead
//! of several per record:
//!
//! - A batch is one transaction, processed in order as runs. A maximal run of
//!   consecutive sends is handled in bulk: lock its conversations (reading
//!   their last seqs), one dedupe lookup, one membership lookup, one
//!   `INSERT ... SELECT FROM UNNEST`, one `UPDATE` of the last seqs.
//!   Membership records (create, add, remove) are rare and handled one at a
//!   time, in order, between runs.
//! - Concurrent batches on the same conversations are serialised by row locks
//!   on `conversations` (`SELECT ... FOR UPDATE`, always in id order; a batch
//!   with membership records locks all its conversations up front), so seqs
//!   stay gap-free and in record order. Everything a decision reads (dedupe,
//!   membership, last_seq) is read by the locking statement or one that
//!   starts after the lock is held, so under READ COMMITTED it sees the
//!   previous holder's commit.
//! - A transaction that loses a deadlock or serialization check (SQLSTATE
//!   40P01 / 40001) is retried here a few times before the error is returned.

use super::apply::{self, BatchTx};
use super::decide;
use super::rows::{self, ConversationRow, Dialect, Listed, MessageRow, MESSAGE_COLUMNS};
use super::search::{self, SearchQuery, SearchRow};
use super::{keyset, now_ms, ListedRows, Listing, MessagePage, Store, StoreError};
use async_trait::async_trait;
use confab_core::validate::{Page, PageCursor, SizeLimits};
use confab_proto::internal::v1::{
    ingress_record::Command, IngressRecord, OutcomeRecord, PresenceUpdate,
};
use confab_proto::v1::Conversation;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{FromRow as _, Postgres, Row};
use std::time::Duration;

/// The store's schema, `migrations/postgres/` (public for upgrade tests, which
/// apply part of it).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

/// How often a batch is attempted when PostgreSQL aborts it for a deadlock or
/// a serialization failure (both mean "run it again"); see
/// [`PostgresStore::again`].
const MAX_ATTEMPTS: u32 = 5;

/// History kept in a PostgreSQL database.
pub struct PostgresStore {
    /// Connections for reads and write transactions.
    pool: PgPool,
    /// Group size limit enforced when members are added.
    limits: SizeLimits,
}

/// Connections of a [`PostgresStore`]'s pool (see
/// [`PostgresStore::pool_usage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    /// Open and waiting for work.
    pub idle: u32,
    /// Open and lent out (a transaction or a read).
    pub in_use: u32,
    /// The most the pool opens.
    pub max: u32,
}

/// How long a call waits for a connection by default.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// A pooled connection idle for this long is pinged before it is lent out
/// (and replaced if the server is gone). One used more recently is lent as
/// it is: sqlx's default pings every connection on every acquire, a round
/// trip to PostgreSQL in front of every read and transaction, and under
/// load every connection is reused within milliseconds. A server restart
/// takes longer than this, so connections from before it are pinged and
/// replaced. A connection that breaks less than this after its last use
/// fails the one attempt that gets it, which is run again (see
/// [`PostgresStore::again`]), and is closed when that attempt gives it
/// back, which sqlx pings.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_millis(100);

/// The planner's cost of a page read out of order that history's sessions
/// start with, unless `url` sets its own. PostgreSQL's default (4) is for
/// spinning disks; with the working set in memory or on SSD, 1.1 is what
/// the PostgreSQL wiki and most tuning guides give, and it is what lets the
/// planner walk `members_by_user` and the primary keys in order for a
/// listing instead of hashing whole tables (a `Sync` of 1,000
/// conversations: 8 ms of execution against 4; docs/benchmarks.md).
pub const RANDOM_PAGE_COST: &str = "1.1";

/// Session settings history's connections start with, each unless the
/// URL's `options` set it (`?options=-c%20random_page_cost%3D4` sets
/// another):
/// - `random_page_cost`: [`RANDOM_PAGE_COST`];
/// - `jit`: off. History's statements are short; a search of a user's 100
///   conversations is estimated above `jit_above_cost`, and compiling it
///   took 13–24 ms of every call that then ran in 1–2 ms (and 217–257 ms
///   with a generic plan's higher estimate, which also inlines and
///   optimizes), on 1M rows (docs/benchmarks.md).
pub const SESSION_SETTINGS: [(&str, &str); 2] =
    [("random_page_cost", RANDOM_PAGE_COST), ("jit", "off")];

/// How history connects to `url`: as the URL says, with the
/// [`SESSION_SETTINGS`] it does not set itself.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    let options: PgConnectOptions = url.parse()?;
    let own = options.get_options().unwrap_or_default().to_string();
    let missing: Vec<(&str, &str)> = SESSION_SETTINGS
        .into_iter()
        .filter(|(name, _)| !own.contains(name))
        .collect();
    Ok(if missing.is_empty() {
        options
    } else {
        options.options(missing)
    })
}

impl PostgresStore {
    /// Connects to the database at `url` with a pool of at most
    /// `max_connections` and applies the migrations.
    pub async fn connect(
        url: &str,
        limits: SizeLimits,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        Self::connect_with_timeout(url, limits, max_connections, DEFAULT_ACQUIRE_TIMEOUT).await
    }

    /// [`PostgresStore::connect`] where a call that cannot get a connection
    /// (the server is down) fails after `acquire_timeout` instead of the
    /// default, so reads fail fast with UNAVAILABLE during an outage.
    pub async fn connect_with_timeout(
        url: &str,
        limits: SizeLimits,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(acquire_timeout)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IF_IDLE_FOR {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(connect_options(url)?)
            .await?;
        MIGRATOR.run(&pool).await?;
        backfill_search(&pool, limits.search_index).await?;
        Ok(Self { pool, limits })
    }

    /// Runs `attempt` (a read, or a batch's transaction) again when running
    /// it again is the fix:
    /// - PostgreSQL aborted it for a deadlock or a serialization failure,
    ///   up to [`MAX_ATTEMPTS`] in all;
    /// - the connection it was lent had been dropped by the server since
    ///   its last use (see [`PING_IF_IDLE_FOR`]), once per connection of
    ///   the pool. Each dropped connection is closed when the failed
    ///   attempt gives it back.
    ///
    /// A read has no effect. A transaction whose connection was lost may
    /// have committed before the answer was lost; the next attempt then
    /// finds its sends stored and returns them as replays with the same
    /// seqs, as after a crash.
    async fn again<T, F, Fut>(&self, mut attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut aborted = 1;
        let mut dropped = 0;
        loop {
            match attempt().await {
                Err(StoreError::Database(e)) if aborted < MAX_ATTEMPTS && is_retryable(&e) => {
                    tracing::debug!(error = %e, "aborted by the database; running it again");
                    aborted += 1;
                }
                Err(StoreError::Database(e))
                    if dropped < self.pool.options().get_max_connections()
                        && super::connection_lost(&e) =>
                {
                    tracing::debug!(error = %e, "the server had dropped the connection; running it again");
                    dropped += 1;
                }
                other => return other,
            }
        }
    }

    /// The rows of `query()` (a read), through [`PostgresStore::again`].
    async fn fetch_all<'q>(
        &self,
        query: impl Fn() -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<PgRow>, StoreError> {
        self.again(|| async { Ok(query().fetch_all(&self.pool).await?) })
            .await
    }

    /// The connection pool now.
    pub fn pool_usage(&self) -> PoolUsage {
        let open = self.pool.size();
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        PoolUsage {
            idle,
            in_use: open.saturating_sub(idle),
            max: self.pool.options().get_max_connections(),
        }
    }

    /// One attempt at applying `batch` in one transaction.
    async fn apply_once(
        &self,
        partition: u32,
        batch: &[IngressRecord],
        now: i64,
    ) -> Result<Vec<OutcomeRecord>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // A batch made of one run (all sends, or one record) takes its locks in
        // one ordered statement. Otherwise later runs could lock rows in a
        // different order than a concurrent batch, so lock every conversation
        // of the batch now, in id order (later locks are then re-entrant, or on
        // rows created since).
        if batch.len() > 1 && batch.iter().any(|r| !is_send(r)) {
            let mut ids: Vec<&str> = batch
                .iter()
                .filter(|r| decide::unstorable(r).is_none())
                .map(|r| r.conversation_id.as_str())
                .collect();
            ids.sort_unstable();
            ids.dedup();
            tx.last_seqs(&ids).await?;
        }
        let outcomes =
            apply::batch(&mut tx, partition, batch, usize::MAX, &self.limits, now).await?;
        tx.commit().await?;
        Ok(outcomes)
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn apply(
        &self,
        partition: u32,
        batch: &[IngressRecord],
    ) -> Result<Vec<OutcomeRecord>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        self.again(|| self.apply_once(partition, batch, now)).await
    }

    async fn conversation(&self, id: &str) -> Result<Option<Conversation>, StoreError> {
        if id.contains('\0') {
            // PostgreSQL text cannot hold NUL, so no such conversation exists.
            return Ok(None);
        }
        self.again(|| async {
            let mut conn = self.pool.acquire().await?;
            load_conversation(&mut conn, id, false).await
        })
        .await
    }

    async fn listed(&self, user: &str, listing: Listing<'_>, limit: u32) -> ListedRows {
        if user.contains('\0') {
            return Ok(Listed::default());
        }
        self.again(|| listing.gather(user, limit, Dialect::Postgres, &self.pool))
            .await
    }

    async fn change_counters(&self) -> Result<Vec<u64>, StoreError> {
        let rows = self
            .again(|| async {
                Ok(sqlx::query_as(rows::CHANGE_COUNTERS)
                    .fetch_all(&self.pool)
                    .await?)
            })
            .await?;
        rows::counters(rows)
    }

    async fn departed(
        &self,
        user: &str,
        since: &[u64],
        after: &str,
    ) -> Result<Vec<String>, StoreError> {
        if user.contains('\0') {
            return Ok(Vec::new());
        }
        let sql = rows::departed_sql(Dialect::Postgres);
        let rows = self
            .fetch_all(|| {
                sqlx::query(&sql)
                    .bind(user)
                    .bind(after)
                    .bind(Dialect::Postgres.bound(since))
            })
            .await?;
        Ok(rows
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    async fn direct_partners(&self, user: &str) -> Result<Vec<String>, StoreError> {
        self.direct_partners_of(user).await
    }

    async fn shared_with(&self, caller: &str, users: &[&str]) -> Result<Vec<String>, StoreError> {
        self.shared_with_of(caller, users).await
    }

    async fn presence(&self, users: &[&str]) -> Result<Vec<rows::PresenceRow>, StoreError> {
        self.presence_of(users).await
    }

    async fn record_presence(&self, updates: &[PresenceUpdate]) -> Result<(), StoreError> {
        self.record(updates).await
    }

    async fn targets(
        &self,
        id: &str,
        caller: &str,
        seqs: &[u64],
    ) -> Result<Vec<rows::TargetRow>, StoreError> {
        rows::targets(&self.pool, id, caller, seqs).await
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
        let (conversation_id, cursor, limit) = (page.conversation_id, page.cursor, page.limit);
        if conversation_id.contains('\0') {
            return Ok(MessagePage::default());
        }
        let (page, bound) = page_clause(cursor);
        let sql = format!(
            "SELECT {} FROM messages x {page}",
            prefixed("x", MESSAGE_COLUMNS)
        );
        let rows = self
            .fetch_all(|| page_query(&sql, conversation_id, bound, limit))
            .await?;
        page_from_rows(&rows, limit)
    }

    async fn search(&self, q: &SearchQuery<'_>) -> Result<Option<Vec<SearchRow>>, StoreError> {
        if !self.limits.search_index {
            return Ok(None);
        }
        if q.caller.contains('\0') || q.conversation_id.contains('\0') {
            // PostgreSQL text cannot hold NUL: no such member.
            return Ok(Some(Vec::new()));
        }
        let (sql, query) = (search::pg_search_sql(), search::pg_query(q.terms));
        self.again(|| async {
            // Planned for each search (an unnamed statement), never from a
            // cached generic plan, which PostgreSQL may switch to after five
            // runs of a prepared statement and which knows neither the
            // words nor whether one conversation is asked for. The bench
            // saw searches go from about 25 ms to 240 ms (even for a word
            // no message holds, 1M rows) between two runs of one build.
            Ok(sqlx::query_as::<_, SearchRow>(&sql)
                .persistent(false)
                .bind(q.caller)
                .bind(&query)
                .bind(q.conversation_id)
                .bind(q.after.sent_at_ms)
                .bind(&q.after.conversation_id)
                .bind(q.after.seq.min(i64::MAX as u64) as i64)
                .bind(i64::from(q.limit))
                .fetch_all(&self.pool)
                .await?)
        })
        .await
        .map(Some)
    }

    async fn member_history(
        &self,
        caller: &str,
        page: Page<'_>,
    ) -> Result<Option<MessagePage>, StoreError> {
        let (conversation_id, cursor, limit) = (page.conversation_id, page.cursor, page.limit);
        if conversation_id.contains('\0') || caller.contains('\0') {
            // PostgreSQL text cannot hold NUL: no such member.
            return Ok(None);
        }
        // One statement, one snapshot, one round trip: no row at all when
        // the caller is not a member; otherwise the page, or a single row of
        // NULLs when the page is empty.
        let (page, bound) = page_clause(cursor);
        let page = page.replacen(
            "WHERE",
            &format!("WHERE {} AND", rows::visible_in("x.seq", "$1", "$4")),
            1,
        );
        let sql = format!(
            "SELECT {} FROM (SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = $4) AS caller
             LEFT JOIN LATERAL (SELECT {} FROM messages x {page}) AS m ON true",
            prefixed("m", MESSAGE_COLUMNS),
            prefixed("x", MESSAGE_COLUMNS),
        );
        let rows = self
            .fetch_all(|| page_query(&sql, conversation_id, bound, limit).bind(caller))
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        page_from_rows(&rows, limit).map(Some)
    }
}

/// Indexes every live TEXT message for search when the index may be
/// behind: messages stored before search existed (migration 0010 leaves a
/// row in `search_backfill` when there are any) or while it was off (`on`
/// false leaves that row; messages sent, edited or deleted while it is off
/// have no words). A batch per transaction fills the rows without words
/// whose body is still the one read, so this is safe beside live writes,
/// from several history processes at once, and again after a crash.
async fn backfill_search(pool: &PgPool, on: bool) -> Result<(), StoreError> {
    if !on {
        sqlx::query(search::MARK_PENDING).execute(pool).await?;
        return Ok(());
    }
    let pending: Option<i32> = sqlx::query_scalar("SELECT pending FROM search_backfill LIMIT 1")
        .fetch_optional(pool)
        .await?;
    if pending.is_none() {
        return Ok(());
    }
    let (mut conv, mut seq) = (String::new(), 0i64);
    let mut indexed = 0usize;
    loop {
        let rows: Vec<(String, i64, String)> = sqlx::query_as(search::BACKFILL_NEXT)
            .bind(&conv)
            .bind(seq)
            .bind(search::BACKFILL_BATCH)
            .fetch_all(pool)
            .await?;
        let Some(last) = rows.last() else { break };
        (conv, seq) = (last.0.clone(), last.1);
        sqlx::query(&format!(
            "UPDATE messages m SET search_tokens = {}
             FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[])
                  AS u (conversation_id, seq, tokens, body)
             WHERE m.conversation_id = u.conversation_id AND m.seq = u.seq
               AND m.search_tokens IS NULL AND m.body = u.body AND m.deleted_at_ms = 0",
            search::pg_scoped("u.tokens", "u.conversation_id", "tsvector")
        ))
        .bind(rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| search::pg_document(&r.2))
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.2.as_str()).collect::<Vec<_>>())
        .execute(pool)
        .await?;
        indexed += rows.len();
    }
    sqlx::query("DELETE FROM search_backfill")
        .execute(pool)
        .await?;
    tracing::info!(
        messages = indexed,
        "indexed the messages stored before search existed"
    );
    Ok(())
}

/// The end of a page query on `messages x` after `cursor`, and its bound:
/// `$1` is the conversation, `$2` the bound, `$3` the limit plus one (the row
/// past the page says whether there is more). A keyset page on the primary
/// key (conversation_id, seq): an index range scan whatever the table size.
fn page_clause(cursor: PageCursor) -> (String, i64) {
    let (cmp, order, bound) = keyset(cursor);
    (
        format!("WHERE x.conversation_id = $1 AND x.seq {cmp} $2 ORDER BY x.seq {order} LIMIT $3"),
        bound,
    )
}

/// `sql`, a statement ending in a [`page_clause`], with the clause's
/// parameters bound: `$1` the conversation, `$2` the bound, `$3` the limit
/// plus one.
fn page_query<'q>(
    sql: &'q str,
    conversation_id: &'q str,
    bound: i64,
    limit: u32,
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(conversation_id)
        .bind(bound)
        .bind(i64::from(limit) + 1)
}

/// A page of at most `limit` messages from the rows of a [`page_clause`]
/// query, and whether there is more. Rows without a message (the NULLs of
/// an empty `LEFT JOIN`) are skipped.
fn page_from_rows(rows: &[PgRow], limit: u32) -> Result<MessagePage, StoreError> {
    let mut messages = Vec::with_capacity(rows.len());
    for row in rows {
        let seq: Option<i64> = row.try_get("seq")?;
        if seq.is_some() {
            messages.push(MessageRow::from_row(row)?);
        }
    }
    MessagePage::from_rows(messages, limit)
}

mod batch;
mod presence;

type Tx = sqlx::Transaction<'static, Postgres>;

fn is_send(rec: &IngressRecord) -> bool {
    matches!(rec.command, Some(Command::Send(_)))
}

/// A deadlock or serialization failure: the transaction was rolled back and
/// running it again is the documented remedy.
fn is_retryable(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == "40001" || code == "40P01")
}

/// `cols` ("a, b") as "p.a, p.b".
fn prefixed(p: &str, cols: &str) -> String {
    cols.split(',')
        .map(|c| format!("{p}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A conversation with its members. With `lock`, its row is locked first
/// (inside a transaction), and the read is a separate statement so that it
/// sees what the previous lock holder committed.
async fn load_conversation(
    conn: &mut PgConnection,
    id: &str,
    lock: bool,
) -> Result<Option<Conversation>, StoreError> {
    if lock {
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
        if found.is_none() {
            return Ok(None);
        }
    }
    // One statement, so the row and its members come from one snapshot.
    let Some(row) = sqlx::query(
        "SELECT c.id, c.kind, c.title, c.last_seq, c.created_at_ms, c.history_visibility,
                ARRAY(SELECT m.user_id FROM members m WHERE m.conversation_id = c.id ORDER BY m.user_id) AS member_ids,
                ARRAY(SELECT m.read_seq FROM members m WHERE m.conversation_id = c.id ORDER BY m.user_id) AS read_seqs,
                ARRAY(SELECT m.role FROM members m WHERE m.conversation_id = c.id ORDER BY m.user_id) AS roles,
                ARRAY(SELECT m.joined_seq FROM members m WHERE m.conversation_id = c.id ORDER BY m.user_id) AS joined_seqs
         FROM conversations c WHERE c.id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let ids: Vec<String> = row.try_get("member_ids")?;
    let read_seqs: Vec<i64> = row.try_get("read_seqs")?;
    let roles: Vec<i32> = row.try_get("roles")?;
    let joined: Vec<i64> = row.try_get("joined_seqs")?;
    let members = ids
        .into_iter()
        .zip(read_seqs)
        .zip(roles)
        .zip(joined)
        .map(|(((user, read), role), joined)| (user, read, role, joined))
        .collect();
    ConversationRow::from_row(&row)?
        .with_members(rows::members(members)?)
        .map(Some)
}
