//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`,
//! so a committed batch survives `kill -9` and power loss. Writers are
//! serialised by a mutex (SQLite has one writer anyway); readers use the pool.
//! The WAL is checkpointed into the database file every
//! [`WAL_AUTOCHECKPOINT_PAGES`] pages rather than SQLite's default 1,000.

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
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool};
use std::collections::{HashMap, HashSet};
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
/// interleaved pairs of runs (docs/benchmarks.md, change 7). The cost is a WAL of up to about 40 MB on disk and as much to
/// replay when the file is opened after a crash; durability is unchanged,
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
        let mut i = 0;
        while i < batch.len() {
            // Consecutive sends are decided and written a run at a time: a
            // handful of statements for the run instead of five per send
            // (each statement is a round trip to SQLite's worker thread).
            let run: Vec<(&IngressRecord, &SendCommand)> = batch[i..]
                .iter()
                .take(MAX_RUN)
                .map_while(|r| match &r.command {
                    Some(Command::Send(send)) => Some((r, send)),
                    _ => None,
                })
                .collect();
            if run.len() > 1 {
                i += run.len();
                apply_sends(&mut tx, &run, now, &mut outcomes).await?;
                continue;
            }
            let rec = &batch[i];
            let outcome = match apply_one(&mut tx, rec, now, &self.limits).await? {
                Ok(outcome) => outcome,
                Err(err) => refused(rec, err),
            };
            outcomes.push(outcome);
            i += 1;
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

/// The retry key of a send.
type Key = (String, String, String);

/// How one send of a run is answered.
enum Plan {
    /// Without a new message: a refusal or a stored original.
    Done(Box<OutcomeRecord>),
    /// The new message `new[i]`.
    New(usize),
    /// A repeat, inside the run, of the new message `new[i]`.
    Repeat(usize),
}

/// Decides and writes a run of sends exactly as [`apply_one`] would one by
/// one, in order: a stored message with the same key is returned as it is
/// (even if the sender has left), then the conversation must exist, then
/// the sender must be a member; a key repeated inside the run gets the
/// first message. Five statements for the whole run: the dedupe lookup,
/// the conversations' last seqs, the membership lookup, one insert, one
/// update of the last seqs.
async fn apply_sends(
    tx: &mut Tx,
    run: &[(&IngressRecord, &SendCommand)],
    now: i64,
    outcomes: &mut Vec<OutcomeRecord>,
) -> Result<(), StoreError> {
    let key = |rec: &IngressRecord, send: &SendCommand| -> Key {
        (
            rec.conversation_id.clone(),
            rec.actor_id.clone(),
            send.client_msg_id.clone(),
        )
    };
    let mut keys: Vec<Key> = run.iter().map(|(rec, send)| key(rec, send)).collect();
    keys.sort_unstable();
    keys.dedup();
    let sql = format!(
        "SELECT m.* FROM (VALUES {}) AS k
         JOIN messages m ON m.conversation_id = k.column1 AND m.sender_id = k.column2
                        AND m.client_msg_id = k.column3 AND m.kind = 1",
        placeholders(keys.len(), 3)
    );
    let mut q = sqlx::query(&sql);
    for (c, s, i) in &keys {
        q = q.bind(c).bind(s).bind(i);
    }
    let mut originals: HashMap<Key, Message> = HashMap::new();
    for row in q.fetch_all(&mut **tx).await? {
        let m = message_from_row(&row)?;
        originals.insert(
            (
                m.conversation_id.clone(),
                m.sender_id.clone(),
                m.client_msg_id.clone(),
            ),
            m,
        );
    }

    let mut convs: Vec<&str> = run
        .iter()
        .map(|(rec, _)| rec.conversation_id.as_str())
        .collect();
    convs.sort_unstable();
    convs.dedup();
    let sql = format!(
        "SELECT c.id, c.last_seq FROM (VALUES {}) AS k JOIN conversations c ON c.id = k.column1",
        placeholders(convs.len(), 1)
    );
    let mut q = sqlx::query(&sql);
    for c in &convs {
        q = q.bind(*c);
    }
    let mut last: HashMap<String, u64> = HashMap::new();
    for row in q.fetch_all(&mut **tx).await? {
        last.insert(row.try_get(0)?, row.try_get::<i64, _>(1)? as u64);
    }

    let mut pairs: Vec<(&str, &str)> = run
        .iter()
        .filter(|(rec, _)| last.contains_key(&rec.conversation_id))
        .map(|(rec, _)| (rec.conversation_id.as_str(), rec.actor_id.as_str()))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let mut members: HashSet<(String, String)> = HashSet::new();
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
            members.insert((row.try_get(0)?, row.try_get(1)?));
        }
    }

    // Decide every send, in order.
    let mut plans: Vec<Plan> = Vec::with_capacity(run.len());
    let mut new: Vec<Message> = Vec::new();
    let mut first_new: HashMap<Key, usize> = HashMap::new();
    for &(rec, send) in run {
        let conv_id = rec.conversation_id.as_str();
        let k = key(rec, send);
        if let Some(original) = originals.get(&k) {
            plans.push(Plan::Done(Box::new(replayed(rec, original.clone()))));
            continue;
        }
        if let Some(&i) = first_new.get(&k) {
            plans.push(Plan::Repeat(i));
            continue;
        }
        let Some(seq) = last.get_mut(conv_id) else {
            plans.push(Plan::Done(Box::new(refused(
                rec,
                ChatError::no_conversation(conv_id),
            ))));
            continue;
        };
        if !members.contains(&(rec.conversation_id.clone(), rec.actor_id.clone())) {
            plans.push(Plan::Done(Box::new(refused(
                rec,
                ChatError::not_member(conv_id),
            ))));
            continue;
        }
        *seq += 1;
        first_new.insert(k, new.len());
        plans.push(Plan::New(new.len()));
        new.push(Message {
            conversation_id: rec.conversation_id.clone(),
            seq: *seq,
            sender_id: rec.actor_id.clone(),
            client_msg_id: send.client_msg_id.clone(),
            body: send.body.clone(),
            created_at: Some(timestamp(now)),
            kind: MessageKind::Text as i32,
            membership: None,
        });
    }

    if !new.is_empty() {
        let sql = format!(
            "INSERT INTO messages (conversation_id, seq, sender_id, client_msg_id, kind, body, membership, created_at_ms)
             SELECT column1, column2, column3, column4, column5, column6, NULL, column7 FROM (VALUES {})",
            placeholders(new.len(), 7)
        );
        let mut q = sqlx::query(&sql);
        for m in &new {
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
        // The last seq of every conversation that got a message.
        let mut heads: HashMap<&str, u64> = HashMap::new();
        for m in &new {
            heads.insert(m.conversation_id.as_str(), m.seq);
        }
        let sql = format!(
            "UPDATE conversations SET last_seq = u.column2
             FROM (VALUES {}) AS u WHERE conversations.id = u.column1",
            placeholders(heads.len(), 2)
        );
        let mut q = sqlx::query(&sql);
        for (c, seq) in &heads {
            q = q.bind(*c).bind(*seq as i64);
        }
        q.execute(&mut **tx).await?;
    }

    let ok = |rec: &IngressRecord, m: &Message| OutcomeRecord {
        origin: rec.origin.clone(),
        conversation_id: rec.conversation_id.clone(),
        events: vec![m.clone()],
        result: Some(outcome_record::Result::Message(m.clone())),
        replay: false,
        traceparent: rec.traceparent.clone(),
        accepted_at_ms: rec.accepted_at_ms,
    };
    for (plan, (rec, _)) in plans.into_iter().zip(run) {
        outcomes.push(match plan {
            Plan::Done(outcome) => *outcome,
            Plan::New(i) => ok(rec, &new[i]),
            Plan::Repeat(i) => replayed(rec, new[i].clone()),
        });
    }
    Ok(())
}
type Decision = Result<OutcomeRecord, ChatError>;

/// Decides and writes one record inside the batch's transaction.
async fn apply_one(
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
    let ok = |events: Vec<Message>, result: outcome_record::Result| OutcomeRecord {
        origin: rec.origin.clone(),
        conversation_id: rec.conversation_id.clone(),
        events,
        result: Some(result),
        replay: false,
        traceparent: rec.traceparent.clone(),
        accepted_at_ms: rec.accepted_at_ms,
    };
    match command {
        Command::Send(send) => {
            // A retry returns the original, even if the sender has left since.
            if let Some(original) = find_sent(tx, conv_id, actor, &send.client_msg_id).await? {
                return Ok(Ok(replayed(rec, original)));
            }
            let Some(last_seq) = last_seq(tx, conv_id).await? else {
                return Ok(Err(ChatError::no_conversation(conv_id)));
            };
            if !is_member(tx, conv_id, actor).await? {
                return Ok(Err(ChatError::not_member(conv_id)));
            }
            let msg = Message {
                conversation_id: conv_id.to_string(),
                seq: last_seq + 1,
                sender_id: actor.to_string(),
                client_msg_id: send.client_msg_id.clone(),
                body: send.body.clone(),
                created_at: Some(timestamp(now)),
                kind: MessageKind::Text as i32,
                membership: None,
            };
            insert_message(tx, &msg, now).await?;
            set_last_seq(tx, conv_id, msg.seq).await?;
            Ok(Ok(ok(
                vec![msg.clone()],
                outcome_record::Result::Message(msg),
            )))
        }
        Command::Create(create) => {
            if let Some(existing) = load_conversation(tx, conv_id).await? {
                // DIRECT ids are derived from the pair, so this is "create again";
                // for groups it is a replayed record.
                if !existing.member_ids.iter().any(|m| m == actor) {
                    return Ok(Err(ChatError::not_member(conv_id)));
                }
                return Ok(Ok(ok(
                    vec![],
                    outcome_record::Result::Conversation(existing),
                )));
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
            sqlx::query(
                "INSERT INTO conversations (id, kind, title, last_seq, created_at_ms) VALUES (?1, ?2, ?3, 1, ?4)",
            )
            .bind(conv_id)
            .bind(create.kind)
            .bind(&create.title)
            .bind(now)
            .execute(&mut **tx)
            .await?;
            for user in &create.member_ids {
                insert_member(tx, conv_id, user).await?;
            }
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
            for user in &new {
                insert_member(tx, conv_id, user).await?;
            }
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
            sqlx::query("DELETE FROM members WHERE conversation_id = ?1 AND user_id = ?2")
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

/// The group `conv_id`, if it exists, is a group and `actor` is in it.
async fn group_for_change(
    tx: &mut Tx,
    conv_id: &str,
    actor: &str,
) -> Result<Result<Conversation, ChatError>, StoreError> {
    let Some(conv) = load_conversation(tx, conv_id).await? else {
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

async fn find_sent(
    tx: &mut Tx,
    conv: &str,
    sender: &str,
    client_msg_id: &str,
) -> Result<Option<Message>, StoreError> {
    let row = sqlx::query(
        "SELECT * FROM messages WHERE conversation_id = ?1 AND sender_id = ?2 AND client_msg_id = ?3 AND kind = 1",
    )
    .bind(conv)
    .bind(sender)
    .bind(client_msg_id)
    .fetch_optional(&mut **tx)
    .await?;
    row.as_ref().map(message_from_row).transpose()
}

async fn last_seq(tx: &mut Tx, conv: &str) -> Result<Option<u64>, StoreError> {
    let seq: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM conversations WHERE id = ?1")
        .bind(conv)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(seq.map(|s| s as u64))
}

async fn set_last_seq(tx: &mut Tx, conv: &str, seq: u64) -> Result<(), StoreError> {
    sqlx::query("UPDATE conversations SET last_seq = ?2 WHERE id = ?1")
        .bind(conv)
        .bind(seq as i64)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn is_member(tx: &mut Tx, conv: &str, user: &str) -> Result<bool, StoreError> {
    let found: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM members WHERE conversation_id = ?1 AND user_id = ?2")
            .bind(conv)
            .bind(user)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(found.is_some())
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
