//! The distributed store: PostgreSQL through sqlx. Every record gets exactly
//! the decision the SQLite store makes for it (that store is the spec); what
//! differs is how the work is done, so that a batch costs a handful of
//! statements instead of several per record:
//!
//! - A batch is one transaction, processed in order as runs. A maximal run of
//!   consecutive sends is handled in bulk: lock its conversations, one dedupe
//!   lookup, one membership lookup, one `UPDATE ... RETURNING` that allocates
//!   every conversation's seqs, one `INSERT ... SELECT FROM UNNEST`.
//!   Membership records (create, add, remove) are rare and handled one at a
//!   time, in order, between runs.
//! - Concurrent batches on the same conversations are serialised by row locks
//!   on `conversations` (`SELECT ... FOR UPDATE`, always in id order; a batch
//!   with membership records locks all its conversations up front), so seqs
//!   stay gap-free and in record order. Everything a decision reads (dedupe,
//!   membership, last_seq) is read by a statement that starts after the lock
//!   is held, so under READ COMMITTED it sees the previous holder's commit.
//! - A transaction that loses a deadlock or serialization check (SQLSTATE
//!   40P01 / 40001) is retried here a few times before the error is returned.

use super::{keyset, now_ms, refused, replayed, system_message, timestamp, Store, StoreError};
use async_trait::async_trait;
use confab_common::error::ChatError;
use confab_common::validate::{group_limit, Limits, PageCursor};
use confab_proto::internal::v1::{
    ingress_record::Command, outcome_record, IngressRecord, OutcomeRecord, SendCommand,
};
use confab_proto::prost::Message as _;
use confab_proto::v1::{
    membership_event::Change, Conversation, ConversationKind, MembershipEvent, Message, MessageKind,
};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

/// How often a batch is attempted when PostgreSQL aborts it for a deadlock or
/// a serialization failure (both mean "run it again"); see
/// [`PostgresStore::again`].
const MAX_ATTEMPTS: u32 = 5;

/// The columns of `messages`, in the order `message_from_row` reads them.
const MESSAGE_COLUMNS: &str =
    "conversation_id, seq, sender_id, client_msg_id, kind, body, membership, created_at_ms";

/// History kept in a PostgreSQL database.
pub struct PostgresStore {
    /// Connections for reads and write transactions.
    pool: PgPool,
    /// Group size limit enforced when members are added.
    limits: Limits,
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

impl PostgresStore {
    /// Connects to the database at `url` with a pool of at most
    /// `max_connections` and applies the migrations.
    pub async fn connect(
        url: &str,
        limits: Limits,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        Self::connect_with_timeout(url, limits, max_connections, DEFAULT_ACQUIRE_TIMEOUT).await
    }

    /// [`PostgresStore::connect`] where a call that cannot get a connection
    /// (the server is down) fails after `acquire_timeout` instead of the
    /// default, so reads fail fast with UNAVAILABLE during an outage.
    pub async fn connect_with_timeout(
        url: &str,
        limits: Limits,
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
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
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
            lock_conversations(&mut tx, batch.iter()).await?;
        }
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut i = 0;
        while i < batch.len() {
            let run: Vec<(&IngressRecord, &SendCommand)> = batch[i..]
                .iter()
                .map_while(|r| match &r.command {
                    Some(Command::Send(send)) => Some((r, send)),
                    _ => None,
                })
                .collect();
            if run.is_empty() {
                let rec = &batch[i];
                let outcome = match apply_membership(&mut tx, rec, now, &self.limits).await? {
                    Ok(outcome) => outcome,
                    Err(err) => refused(rec, err),
                };
                outcomes.push(outcome);
                i += 1;
            } else {
                i += run.len();
                apply_sends(&mut tx, &run, now, &mut outcomes).await?;
            }
        }
        tx.commit().await?;
        Ok(outcomes)
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn apply(&self, batch: &[IngressRecord]) -> Result<Vec<OutcomeRecord>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        self.again(|| self.apply_once(batch, now)).await
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

    async fn list_conversations(&self, user: &str) -> Result<Vec<Conversation>, StoreError> {
        if user.contains('\0') {
            return Ok(Vec::new());
        }
        let rows = self
            .fetch_all(|| {
                sqlx::query(
                    "SELECT c.id, c.kind, c.title, c.last_seq, c.created_at_ms, m2.user_id
                     FROM members m
                     JOIN conversations c ON c.id = m.conversation_id
                     JOIN members m2 ON m2.conversation_id = m.conversation_id
                     WHERE m.user_id = $1
                     ORDER BY c.id, m2.user_id",
                )
                .bind(user)
            })
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
                    last_seq: seq_from(row.try_get(3)?)?,
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
        if conversation_id.contains('\0') {
            return Ok((Vec::new(), false));
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

    async fn member_history(
        &self,
        caller: &str,
        conversation_id: &str,
        cursor: PageCursor,
        limit: u32,
    ) -> Result<Option<(Vec<Message>, bool)>, StoreError> {
        if conversation_id.contains('\0') || caller.contains('\0') {
            // PostgreSQL text cannot hold NUL: no such member.
            return Ok(None);
        }
        // One statement, one snapshot, one round trip: no row at all when
        // the caller is not a member; otherwise the page, or a single row of
        // NULLs when the page is empty.
        let (page, bound) = page_clause(cursor);
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
fn page_from_rows(rows: &[PgRow], limit: u32) -> Result<(Vec<Message>, bool), StoreError> {
    let mut messages = Vec::with_capacity(rows.len());
    for row in rows {
        let seq: Option<i64> = row.try_get("seq")?;
        if seq.is_some() {
            messages.push(message_from_row(row)?);
        }
    }
    let has_more = messages.len() > limit as usize;
    messages.truncate(limit as usize);
    Ok((messages, has_more))
}

type Tx = sqlx::Transaction<'static, Postgres>;
type Decision = Result<OutcomeRecord, ChatError>;

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

/// The first text field of `rec` that PostgreSQL could not store (text
/// cannot hold NUL), if any.
fn nul_field(rec: &IngressRecord) -> Option<&'static str> {
    let has_nul = |s: &str| s.contains('\0');
    if has_nul(&rec.conversation_id) {
        return Some("conversation_id");
    }
    if has_nul(&rec.actor_id) {
        return Some("actor_id");
    }
    match &rec.command {
        Some(Command::Send(s)) if has_nul(&s.client_msg_id) => Some("client_msg_id"),
        Some(Command::Send(s)) if has_nul(&s.body) => Some("body"),
        Some(Command::Create(c)) if has_nul(&c.title) => Some("title"),
        Some(Command::Create(c)) if c.member_ids.iter().any(|m| has_nul(m)) => Some("member_ids"),
        Some(Command::AddMembers(a)) if a.member_ids.iter().any(|m| has_nul(m)) => {
            Some("member_ids")
        }
        Some(Command::RemoveMember(r)) if has_nul(&r.member_id) => Some("member_id"),
        _ => None,
    }
}

/// The refusal of a record with a NUL character in `field`. Without it such a
/// record would fail its whole batch on every retry.
fn nul_refusal(field: &str) -> ChatError {
    ChatError::InvalidArgument(format!("{field} must not contain NUL characters"))
}

/// An accepted record's outcome.
fn accepted(
    rec: &IngressRecord,
    events: Vec<Message>,
    result: outcome_record::Result,
) -> OutcomeRecord {
    OutcomeRecord {
        origin: rec.origin.clone(),
        conversation_id: rec.conversation_id.clone(),
        events,
        result: Some(result),
        replay: false,
        traceparent: rec.traceparent.clone(),
        accepted_at_ms: rec.accepted_at_ms,
    }
}

// Per-run plans: the statements that look a batch's arrays up in
// `conversations`, `members` or `messages` are planned on every run
// (unnamed statements), not prepared once, and the lookups in `messages`
// and `members` probe the index key by key (LATERAL ... LIMIT 1). On a
// fresh database PostgreSQL cached a hash join over every `kind = 1`
// message for the dedupe lookup (and chose one again for 256 keys while
// the table had never been analyzed), which read the whole table for every
// batch, slower with each message stored (docs/benchmarks.md). Planning
// once per batch costs a fraction of a millisecond.

/// Locks the existing conversations among those of `recs`, in id order, and
/// returns their ids.
async fn lock_conversations<'a>(
    tx: &mut Tx,
    recs: impl Iterator<Item = &'a IngressRecord>,
) -> Result<HashSet<String>, StoreError> {
    let mut ids: Vec<&str> = recs
        .map(|r| r.conversation_id.as_str())
        .filter(|id| !id.contains('\0'))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let locked: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM conversations WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .persistent(false) // planned per run: see above
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    Ok(locked.into_iter().collect())
}

/// The retry key of a send: (conversation, sender, client_msg_id).
type Key<'a> = (&'a str, &'a str, &'a str);

/// The retry key of a send, owned.
fn owned_key(rec: &IngressRecord, send: &SendCommand) -> (String, String, String) {
    (
        rec.conversation_id.clone(),
        rec.actor_id.clone(),
        send.client_msg_id.clone(),
    )
}

/// What a send in a run comes to, before seqs are known.
enum Plan {
    /// Decided without a new message (a refusal or a stored original).
    Done(Box<OutcomeRecord>),
    /// The new message `new[i]`.
    New(usize),
    /// Repeats the key of `new[i]`, which an earlier record of the run sent.
    Repeat(usize),
}

impl Plan {
    fn done(outcome: OutcomeRecord) -> Self {
        Self::Done(Box::new(outcome))
    }
}

/// Applies a run of consecutive sends in bulk, appending one outcome per
/// record to `outcomes`. Decides exactly as the SQLite store does record by
/// record: a stored message with the same key is returned as it is (even if
/// the sender has left), then the conversation must exist, then the sender
/// must be a member; a key repeated inside the run gets the first message.
async fn apply_sends(
    tx: &mut Tx,
    run: &[(&IngressRecord, &SendCommand)],
    now: i64,
    outcomes: &mut Vec<OutcomeRecord>,
) -> Result<(), StoreError> {
    let storable: Vec<(&IngressRecord, &SendCommand)> = run
        .iter()
        .filter(|(rec, _)| nul_field(rec).is_none())
        .copied()
        .collect();

    // Lock first: every read below starts after the previous writer of these
    // conversations has committed.
    let live = lock_conversations(tx, storable.iter().map(|(rec, _)| *rec)).await?;

    // One dedupe lookup for the run's distinct keys (messages exist only in
    // conversations that exist).
    let mut keys: Vec<Key<'_>> = storable
        .iter()
        .filter(|(rec, _)| live.contains(&rec.conversation_id))
        .map(|(rec, send)| {
            (
                rec.conversation_id.as_str(),
                rec.actor_id.as_str(),
                send.client_msg_id.as_str(),
            )
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let mut originals: HashMap<(String, String, String), Message> = HashMap::new();
    if !keys.is_empty() {
        // One index probe per key (a LATERAL subquery with a LIMIT is
        // never turned into a hash join over the table).
        let sql = format!(
            "SELECT {} FROM UNNEST($1::text[], $2::text[], $3::text[]) AS k (conversation_id, sender_id, client_msg_id)
             CROSS JOIN LATERAL (
                 SELECT {} FROM messages x
                 WHERE x.conversation_id = k.conversation_id AND x.sender_id = k.sender_id
                   AND x.client_msg_id = k.client_msg_id AND x.kind = 1
                 LIMIT 1
             ) m",
            prefixed("m", MESSAGE_COLUMNS),
            prefixed("x", MESSAGE_COLUMNS)
        );
        let rows = sqlx::query(&sql)
            .persistent(false) // planned per run: see lock_conversations
            .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.2).collect::<Vec<_>>())
            .fetch_all(&mut **tx)
            .await?;
        for row in &rows {
            let m = message_from_row(row)?;
            originals.insert(
                (
                    m.conversation_id.clone(),
                    m.sender_id.clone(),
                    m.client_msg_id.clone(),
                ),
                m,
            );
        }
    }

    // One membership lookup for the senders that still need the check.
    let mut pairs: Vec<(&str, &str)> = storable
        .iter()
        .filter(|(rec, send)| {
            live.contains(&rec.conversation_id) && !originals.contains_key(&owned_key(rec, send))
        })
        .map(|(rec, _)| (rec.conversation_id.as_str(), rec.actor_id.as_str()))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let mut members: HashSet<(String, String)> = HashSet::new();
    if !pairs.is_empty() {
        let rows = sqlx::query(
            "SELECT k.conversation_id, k.user_id
             FROM UNNEST($1::text[], $2::text[]) AS k (conversation_id, user_id)
             CROSS JOIN LATERAL (
                 SELECT 1 FROM members x
                 WHERE x.conversation_id = k.conversation_id AND x.user_id = k.user_id
                 LIMIT 1
             ) m",
        )
        .persistent(false) // planned per run: see lock_conversations
        .bind(pairs.iter().map(|p| p.0).collect::<Vec<_>>())
        .bind(pairs.iter().map(|p| p.1).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?;
        for row in rows {
            members.insert((row.try_get(0)?, row.try_get(1)?));
        }
    }

    // Decide every record, in order.
    let mut plans: Vec<Plan> = Vec::with_capacity(run.len());
    let mut new: Vec<Message> = Vec::new();
    let mut first_new: HashMap<(String, String, String), usize> = HashMap::new();
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for &(rec, send) in run {
        let conv_id = rec.conversation_id.as_str();
        if let Some(field) = nul_field(rec) {
            plans.push(Plan::done(refused(rec, nul_refusal(field))));
            continue;
        }
        let k = owned_key(rec, send);
        if let Some(original) = originals.get(&k) {
            plans.push(Plan::done(replayed(rec, original.clone())));
            continue;
        }
        if let Some(&i) = first_new.get(&k) {
            plans.push(Plan::Repeat(i));
            continue;
        }
        if !live.contains(conv_id) {
            plans.push(Plan::done(refused(
                rec,
                ChatError::no_conversation(conv_id),
            )));
            continue;
        }
        if !members.contains(&(rec.conversation_id.clone(), rec.actor_id.clone())) {
            plans.push(Plan::done(refused(rec, ChatError::not_member(conv_id))));
            continue;
        }
        *counts.entry(conv_id).or_insert(0) += 1;
        first_new.insert(k, new.len());
        plans.push(Plan::New(new.len()));
        new.push(Message {
            conversation_id: rec.conversation_id.clone(),
            seq: 0, // allocated below
            sender_id: rec.actor_id.clone(),
            client_msg_id: send.client_msg_id.clone(),
            body: send.body.clone(),
            created_at: Some(timestamp(now)),
            kind: MessageKind::Text as i32,
            membership: None,
        });
    }

    if !new.is_empty() {
        // One statement allocates every conversation's seqs: each moves
        // last_seq by its count, and the run's messages take the seqs after
        // the old value, in record order.
        let rows = sqlx::query(
            "UPDATE conversations AS c SET last_seq = c.last_seq + u.n
             FROM UNNEST($1::text[], $2::bigint[]) AS u (id, n)
             WHERE c.id = u.id
             RETURNING c.id, c.last_seq",
        )
        .persistent(false) // planned per run: see lock_conversations
        .bind(counts.keys().copied().collect::<Vec<_>>())
        .bind(counts.values().copied().collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?;
        let mut next: HashMap<String, u64> = HashMap::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get(0)?;
            let last: i64 = row.try_get(1)?;
            let n = counts.get(id.as_str()).copied().ok_or_else(|| {
                StoreError::Corrupt(format!("seqs allocated for unexpected conversation {id}"))
            })?;
            next.insert(id, seq_from(last - n + 1)?);
        }
        for m in &mut new {
            let seq = next.get_mut(&m.conversation_id).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "conversation {} vanished while locked",
                    m.conversation_id
                ))
            })?;
            m.seq = *seq;
            *seq += 1;
        }
        sqlx::query(
            "INSERT INTO messages (conversation_id, seq, sender_id, client_msg_id, kind, body, membership, created_at_ms)
             SELECT u.conversation_id, u.seq, u.sender_id, u.client_msg_id, $6, u.body, NULL, $7
             FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[])
                  AS u (conversation_id, seq, sender_id, client_msg_id, body)",
        )
        .bind(new.iter().map(|m| m.conversation_id.as_str()).collect::<Vec<_>>())
        .bind(new.iter().map(|m| m.seq as i64).collect::<Vec<_>>())
        .bind(new.iter().map(|m| m.sender_id.as_str()).collect::<Vec<_>>())
        .bind(new.iter().map(|m| m.client_msg_id.as_str()).collect::<Vec<_>>())
        .bind(new.iter().map(|m| m.body.as_str()).collect::<Vec<_>>())
        .bind(MessageKind::Text as i32)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }

    for (plan, (rec, _)) in plans.into_iter().zip(run) {
        outcomes.push(match plan {
            Plan::Done(outcome) => *outcome,
            Plan::New(i) => accepted(
                rec,
                vec![new[i].clone()],
                outcome_record::Result::Message(new[i].clone()),
            ),
            Plan::Repeat(i) => replayed(rec, new[i].clone()),
        });
    }
    Ok(())
}

/// `cols` ("a, b") as "p.a, p.b".
fn prefixed(p: &str, cols: &str) -> String {
    cols.split(',')
        .map(|c| format!("{p}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decides and writes one record that is not a send (create, add, remove, or
/// a record without a command), as the SQLite store does.
async fn apply_membership(
    tx: &mut Tx,
    rec: &IngressRecord,
    now: i64,
    limits: &Limits,
) -> Result<Decision, StoreError> {
    let conv_id = rec.conversation_id.as_str();
    let actor = rec.actor_id.as_str();
    let Some(command) = &rec.command else {
        return Ok(Err(ChatError::InvalidArgument(
            "record has no command".into(),
        )));
    };
    if let Some(field) = nul_field(rec) {
        return Ok(Err(nul_refusal(field)));
    }
    let ok = |events: Vec<Message>, result: outcome_record::Result| accepted(rec, events, result);
    match command {
        Command::Send(_) => Err(StoreError::Corrupt(
            "a send reached the membership path".into(),
        )),
        Command::Create(create) => {
            // DIRECT ids are derived from the pair, so an existing row is
            // "create again"; for groups it is a replayed record.
            let existing = |conv: Conversation| -> Decision {
                if !conv.member_ids.iter().any(|m| m == actor) {
                    return Err(ChatError::not_member(conv_id));
                }
                Ok(ok(vec![], outcome_record::Result::Conversation(conv)))
            };
            if let Some(conv) = load_conversation(tx, conv_id, true).await? {
                return Ok(existing(conv));
            }
            // The gateway checks this too; history, the only writer, decides.
            if create.kind == ConversationKind::Group as i32
                && create.member_ids.len() > limits.max_group_members
            {
                return Ok(Err(ChatError::ResourceExhausted(group_limit(
                    limits.max_group_members,
                    &format!("{} were asked for", create.member_ids.len()),
                ))));
            }
            let inserted = sqlx::query(
                "INSERT INTO conversations (id, kind, title, last_seq, created_at_ms)
                 VALUES ($1, $2, $3, 1, $4) ON CONFLICT (id) DO NOTHING",
            )
            .bind(conv_id)
            .bind(create.kind)
            .bind(&create.title)
            .bind(now)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                // A concurrent batch created it and has committed since.
                let conv = require_conversation(tx, conv_id).await?;
                return Ok(existing(conv));
            }
            insert_members(tx, conv_id, &create.member_ids).await?;
            let event = system_message(conv_id, 1, actor, Change::Created, &create.member_ids, now);
            insert_message(tx, &event, now).await?;
            let conv = require_conversation(tx, conv_id).await?;
            Ok(Ok(ok(
                vec![event],
                outcome_record::Result::Conversation(conv),
            )))
        }
        Command::AddMembers(add) => {
            let conv = match group_for_change(tx, conv_id, actor).await? {
                Ok(c) => c,
                Err(e) => return Ok(Err(e)),
            };
            let new: Vec<String> = add
                .member_ids
                .iter()
                .filter(|u| !conv.member_ids.contains(u))
                .cloned()
                .collect();
            if new.is_empty() {
                return Ok(Ok(ok(vec![], outcome_record::Result::Conversation(conv))));
            }
            if conv.member_ids.len() + new.len() > limits.max_group_members {
                return Ok(Err(ChatError::ResourceExhausted(group_limit(
                    limits.max_group_members,
                    &format!(
                        "it has {} and {} would be added",
                        conv.member_ids.len(),
                        new.len()
                    ),
                ))));
            }
            insert_members(tx, conv_id, &new).await?;
            let event = system_message(conv_id, conv.last_seq + 1, actor, Change::Added, &new, now);
            insert_message(tx, &event, now).await?;
            set_last_seq(tx, conv_id, event.seq).await?;
            let conv = require_conversation(tx, conv_id).await?;
            Ok(Ok(ok(
                vec![event],
                outcome_record::Result::Conversation(conv),
            )))
        }
        Command::RemoveMember(remove) => {
            let conv = match group_for_change(tx, conv_id, actor).await? {
                Ok(c) => c,
                Err(e) => return Ok(Err(e)),
            };
            let target = &remove.member_id;
            if !conv.member_ids.contains(target) {
                return Ok(Err(ChatError::NotFound(format!(
                    "{target} is not a member of conversation {conv_id}"
                ))));
            }
            sqlx::query("DELETE FROM members WHERE conversation_id = $1 AND user_id = $2")
                .bind(conv_id)
                .bind(target)
                .execute(&mut **tx)
                .await?;
            let users = vec![target.clone()];
            let event = system_message(
                conv_id,
                conv.last_seq + 1,
                actor,
                Change::Removed,
                &users,
                now,
            );
            insert_message(tx, &event, now).await?;
            set_last_seq(tx, conv_id, event.seq).await?;
            let conv = require_conversation(tx, conv_id).await?;
            Ok(Ok(ok(
                vec![event],
                outcome_record::Result::Conversation(conv),
            )))
        }
    }
}

/// The group `conv_id` (locked), if it exists, is a group and `actor` is in it.
async fn group_for_change(
    tx: &mut Tx,
    conv_id: &str,
    actor: &str,
) -> Result<Result<Conversation, ChatError>, StoreError> {
    let Some(conv) = load_conversation(tx, conv_id, true).await? else {
        return Ok(Err(ChatError::no_conversation(conv_id)));
    };
    if !conv.member_ids.iter().any(|m| m == actor) {
        return Ok(Err(ChatError::not_member(conv_id)));
    }
    if conv.kind != ConversationKind::Group as i32 {
        return Ok(Err(ChatError::InvalidArgument(
            "members of a DIRECT conversation cannot change; create a GROUP instead".into(),
        )));
    }
    Ok(Ok(conv))
}

async fn set_last_seq(tx: &mut Tx, conv: &str, seq: u64) -> Result<(), StoreError> {
    sqlx::query("UPDATE conversations SET last_seq = $2 WHERE id = $1")
        .bind(conv)
        .bind(seq as i64)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_members(tx: &mut Tx, conv: &str, users: &[String]) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO members (conversation_id, user_id) SELECT $1, u FROM UNNEST($2::text[]) AS u",
    )
    .bind(conv)
    .bind(users)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_message(tx: &mut Tx, m: &Message, now: i64) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO messages (conversation_id, seq, sender_id, client_msg_id, kind, body, membership, created_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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

/// The conversation, locked, which this transaction knows exists.
async fn require_conversation(tx: &mut Tx, id: &str) -> Result<Conversation, StoreError> {
    load_conversation(tx, id, true).await?.ok_or_else(|| {
        StoreError::Corrupt(format!("conversation {id} vanished inside its transaction"))
    })
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
        "SELECT c.id, c.kind, c.title, c.last_seq, c.created_at_ms,
                ARRAY(SELECT m.user_id FROM members m WHERE m.conversation_id = c.id ORDER BY m.user_id)
         FROM conversations c WHERE c.id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(Conversation {
        id: row.try_get(0)?,
        kind: row.try_get(1)?,
        title: row.try_get(2)?,
        member_ids: row.try_get(5)?,
        last_seq: seq_from(row.try_get(3)?)?,
        created_at: Some(timestamp(row.try_get(4)?)),
    }))
}

/// A stored seq as the API's unsigned one.
fn seq_from(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative seq {v}")))
}

fn message_from_row(row: &PgRow) -> Result<Message, StoreError> {
    let membership: Option<Vec<u8>> = row.try_get("membership")?;
    let membership = membership
        .map(|b| MembershipEvent::decode(b.as_slice()))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("membership event: {e}")))?;
    Ok(Message {
        conversation_id: row.try_get("conversation_id")?,
        seq: seq_from(row.try_get("seq")?)?,
        sender_id: row.try_get("sender_id")?,
        client_msg_id: row.try_get("client_msg_id")?,
        body: row.try_get("body")?,
        created_at: Some(timestamp(row.try_get("created_at_ms")?)),
        kind: row.try_get("kind")?,
        membership,
    })
}
