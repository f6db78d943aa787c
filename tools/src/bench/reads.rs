//! `GetHistory` on a big table: [`generate`] fills a database with millions
//! of messages server-side, [`measure`] reads random 50-message pages of it
//! through a gateway and checks every page.

use super::{per_sec, Latency, Recorder};
use anyhow::{anyhow, bail, ensure, Context, Result};
use confab_auth::Authenticator;
use confab_core::validate::SizeLimits;
use confab_history::store::decide::system_message;
use confab_history::PostgresStore;
use confab_proto::prost::Message as _;
use confab_proto::v1::chat_client::ChatClient;
use confab_proto::v1::membership_event::Change;
use confab_proto::v1::{ConversationKind, GetHistoryRequest, Message};
use serde::Serialize;
use sqlx::{Connection as _, PgConnection};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

/// Rows per `INSERT ... SELECT` of [`generate`] (one progress line each).
const CHUNK_ROWS: u64 = 1_000_000;
/// Unrecorded requests before [`measure`] starts the clock.
const WARMUP_REQUESTS: u64 = 200;
/// How long one `GetHistory` may take before it counts as `client_timeout`.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Drops the keys of `messages` for the bulk load ([`REBUILD_KEYS`] puts
/// them back); an index is much cheaper built once, sorted, than updated
/// row by row.
const DROP_KEYS: &str = "ALTER TABLE messages DROP CONSTRAINT messages_conversation_id_fkey;
    ALTER TABLE messages DROP CONSTRAINT messages_pkey;
    DROP INDEX messages_dedupe";
/// The keys of `messages` exactly as the migration creates them
/// (`migrations/postgres/0001_init.sql`: same names, same definitions, so
/// `pg_dump --schema-only` cannot tell the difference).
const REBUILD_KEYS: &str = "ALTER TABLE messages ADD PRIMARY KEY (conversation_id, seq);
    CREATE UNIQUE INDEX messages_dedupe
        ON messages (conversation_id, sender_id, client_msg_id)
        WHERE kind <> 2;
    ALTER TABLE messages ADD CONSTRAINT messages_conversation_id_fkey
        FOREIGN KEY (conversation_id) REFERENCES conversations (id)";

/// What to generate.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct GenerateOpts {
    /// A database (migrated or empty) with no `bench-read-*` conversations.
    pub database_url: String,
    /// Messages in all, the SYSTEM message at seq 1 of each conversation
    /// included.
    pub rows: u64,
    /// GROUP conversations (`bench-read-0` ...), `rows` spread evenly.
    pub conversations: u64,
    /// A member of every conversation (the other is `<reader>.writer`).
    pub reader: String,
    /// Bytes of each TEXT message body.
    pub body_bytes: usize,
}

/// What [`generate`] did.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct GenerateReport {
    /// Messages inserted.
    pub rows: u64,
    /// Conversations created.
    pub conversations: u64,
    /// Wall time, migrations, `VACUUM (ANALYZE)` and `CHECKPOINT` included.
    pub seconds: f64,
    /// `pg_total_relation_size('messages')`: heap, TOAST and indexes.
    pub table_bytes: u64,
}

/// What to read.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ReadOpts {
    /// A gateway serving a database filled by [`generate`].
    pub gateway: SocketAddr,
    /// The gateway's `CONFAB_JWT_SECRET`.
    pub secret: String,
    /// The [`GenerateOpts::reader`] of the data.
    pub reader: String,
    /// [`GenerateOpts::conversations`].
    pub conversations: u64,
    /// Messages every conversation has at least (`rows / conversations`).
    pub rows_per_conversation: u64,
    /// Messages per page (`limit`).
    pub page: u32,
    /// The first conversation read: pages come from conversations
    /// `first ..first + conversations`.
    #[serde(default)]
    pub first: u64,
    /// Recorded requests.
    pub requests: u64,
    /// Concurrent callers, each with its own connection.
    pub concurrency: usize,
}

/// What [`measure`] saw.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ReadReport {
    /// Requests issued (after the warm-up).
    pub requests: u64,
    /// Messages per page.
    pub page: u32,
    /// Clients reading at once.
    pub concurrency: usize,
    /// Wall time of the recorded requests.
    pub seconds: f64,
    /// Requests per second.
    pub per_sec: f64,
    /// Latency of the calls that returned OK (right page or not).
    pub latency: Latency,
    /// Failed calls by gRPC code name, and `wrong_page` / `client_timeout`.
    pub errors: BTreeMap<String, u64>,
}

/// The id of the `i`th generated conversation.
pub fn conversation_id(i: u64) -> String {
    format!("bench-read-{i}")
}

pub use confab_core::metrics::code_name;

/// Fills `opts.database_url` (migrating it first, as `confab-history` would)
/// with `rows` messages in `conversations` GROUP conversations of `reader`
/// and `<reader>.writer`: seq 1 is the SYSTEM message of the create, the
/// rest TEXT messages from both in turn. Generated by PostgreSQL in chunks
/// of [`CHUNK_ROWS`], in seq order, in one transaction that drops the keys
/// of `messages` and rebuilds them after the load (a failure leaves the
/// database as it was). Run it before any history serves the database;
/// progress goes to stderr.
pub async fn generate(opts: &GenerateOpts) -> Result<GenerateReport> {
    ensure!(
        opts.conversations > 0 && opts.rows >= opts.conversations,
        "need at least one conversation and one row (its create) per conversation, \
         got {} rows for {} conversations",
        opts.rows,
        opts.conversations
    );
    let started = Instant::now();
    // The real store's migrator, so `_sqlx_migrations` is what
    // `confab-history` expects when it starts on this database.
    PostgresStore::connect(&opts.database_url, SizeLimits::default(), 1)
        .await
        .map_err(|e| anyhow!("migrate {}: {e}", opts.database_url))?;
    let mut conn = PgConnection::connect(&opts.database_url)
        .await
        .with_context(|| format!("connect to {}", opts.database_url))?;
    sqlx::raw_sql("SET maintenance_work_mem = '256MB'")
        .execute(&mut conn)
        .await
        .context("set maintenance_work_mem")?;
    let mut tx = conn.begin().await.context("begin")?;

    let (base, extra) = (
        opts.rows / opts.conversations,
        opts.rows % opts.conversations,
    );
    let writer = format!("{}.writer", opts.reader);
    let now = confab_history::store::now_ms();
    // Exactly what a create of `[reader, writer]` by `reader` writes at seq 1.
    let created = system_message(
        "",
        1,
        &opts.reader,
        Change::Created,
        &[opts.reader.clone(), writer.clone()],
        now,
    );
    let membership = created
        .membership
        .as_ref()
        .map(|m| m.encode_to_vec())
        .unwrap_or_default();

    sqlx::query(
        // Seq 1 is each conversation's one SYSTEM event; its members have
        // read up to it, as history seats the members of a new group.
        "INSERT INTO conversations
             (id, kind, title, last_seq, created_at_ms, system_count, last_activity_ms)
         SELECT 'bench-read-' || i, $1, 'bench read ' || i,
                CASE WHEN i < $2 THEN $3 + 1 ELSE $3 END, $4, 1, $4
         FROM generate_series(0::bigint, $5::bigint - 1) AS i",
    )
    .bind(ConversationKind::Group as i32)
    .bind(extra as i64)
    .bind(base as i64)
    .bind(now)
    .bind(opts.conversations as i64)
    .execute(&mut *tx)
    .await
    .context("insert the conversations (is this database already filled?)")?;
    sqlx::query(
        "INSERT INTO members (conversation_id, user_id, read_seq, read_system)
         SELECT 'bench-read-' || i, u, 1, 1
         FROM generate_series(0::bigint, $1::bigint - 1) AS i, UNNEST($2::text[]) AS u",
    )
    .bind(opts.conversations as i64)
    .bind(vec![opts.reader.clone(), writer.clone()])
    .execute(&mut *tx)
    .await
    .context("insert the members")?;

    sqlx::raw_sql(DROP_KEYS)
        .execute(&mut *tx)
        .await
        .context("drop the keys of messages for the bulk load")?;
    load_messages(
        &mut tx, opts, base, extra, &writer, &created, membership, now,
    )
    .await?;
    sqlx::raw_sql(REBUILD_KEYS)
        .execute(&mut *tx)
        .await
        .context("rebuild the keys of messages")?;
    // Each conversation's newest TEXT message on its row, as history keeps
    // it (migration 0006).
    sqlx::query(
        "UPDATE conversations AS c
         SET last_text_seq = m.seq, last_text_sender = m.sender_id,
             last_text_client_msg_id = m.client_msg_id, last_text_body = m.body,
             last_text_at_ms = m.created_at_ms
         FROM messages AS m
         WHERE m.conversation_id = c.id AND m.seq = c.last_seq AND m.kind = 1",
    )
    .execute(&mut *tx)
    .await
    .context("keep each conversation's newest TEXT message on its row")?;
    tx.commit().await.context("commit the generated rows")?;
    eprintln!(
        "generate: keys rebuilt at {:.1} s; vacuuming and checkpointing",
        started.elapsed().as_secs_f64()
    );
    // Leave the table as a long-lived one is: statistics current, hint bits
    // and visibility map set (else the first read of each page writes it),
    // and nothing dirty left for the checkpointer to write while pages are
    // being timed.
    sqlx::raw_sql("VACUUM (ANALYZE) conversations, members, messages")
        .execute(&mut conn)
        .await
        .context("vacuum")?;
    sqlx::raw_sql("CHECKPOINT")
        .execute(&mut conn)
        .await
        .context("checkpoint")?;
    let table_bytes: i64 = sqlx::query_scalar("SELECT pg_total_relation_size('messages')")
        .fetch_one(&mut conn)
        .await
        .context("size of messages")?;
    conn.close().await.ok();
    Ok(GenerateReport {
        rows: opts.rows,
        conversations: opts.conversations,
        seconds: started.elapsed().as_secs_f64(),
        table_bytes: u64::try_from(table_bytes).unwrap_or(0),
    })
}

/// Inserts every message, in chunks of global row numbers `g`: the first
/// `extra` conversations hold `base + 1` rows, the others `base`, and row
/// `g` is (conversation, seq) in that order.
#[allow(clippy::too_many_arguments)]
async fn load_messages(
    conn: &mut PgConnection,
    opts: &GenerateOpts,
    base: u64,
    extra: u64,
    writer: &str,
    created: &Message,
    membership: Vec<u8>,
    now: i64,
) -> Result<()> {
    let started = Instant::now();
    let body_bytes = i32::try_from(opts.body_bytes).context("body_bytes")?;
    let mut start = 0;
    while start < opts.rows {
        let end = (start + CHUNK_ROWS).min(opts.rows);
        sqlx::query(
            "INSERT INTO messages
                 (conversation_id, seq, sender_id, client_msg_id, kind, body, membership, created_at_ms)
             SELECT 'bench-read-' || p.conv, p.seq,
                    CASE WHEN p.seq = 1 OR p.seq % 2 = 0 THEN $5 ELSE $6 END,
                    CASE WHEN p.seq = 1 THEN '' ELSE 'bench-' || p.seq END,
                    CASE WHEN p.seq = 1 THEN 2 ELSE 1 END,
                    CASE WHEN p.seq = 1 THEN $8
                         ELSE rpad('message ' || p.seq || ' ', $7, 'abcdefghijklmnopqrstuvwxyz') END,
                    CASE WHEN p.seq = 1 THEN $9 END,
                    $10 + p.seq
             FROM (SELECT CASE WHEN g < $4 * ($3 + 1) THEN g / ($3 + 1)
                               ELSE $4 + (g - $4 * ($3 + 1)) / $3 END AS conv,
                          CASE WHEN g < $4 * ($3 + 1) THEN g % ($3 + 1)
                               ELSE (g - $4 * ($3 + 1)) % $3 END + 1 AS seq
                   FROM generate_series($1::bigint, $2::bigint - 1) AS g) AS p",
        )
        .bind(start as i64)
        .bind(end as i64)
        .bind(base as i64)
        .bind(extra as i64)
        .bind(&opts.reader)
        .bind(writer)
        .bind(body_bytes)
        .bind(&created.body)
        .bind(&membership)
        .bind(now)
        .execute(&mut *conn)
        .await
        .with_context(|| format!("insert messages {start}..{end}"))?;
        start = end;
        eprintln!(
            "generate: {start}/{} rows ({:.1} s)",
            opts.rows,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// A tiny xorshift64* generator: enough to spread reads, no dependency.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed, never 0.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    /// Uniform enough in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Whether `messages` is the page of `page` messages before `before`,
/// newest first.
fn right_page(messages: &[Message], before: u64, page: u32) -> bool {
    messages.len() == page as usize
        && messages
            .iter()
            .enumerate()
            .all(|(i, m)| m.seq + 1 + i as u64 == before)
}

/// One phase's results.
#[derive(Default)]
struct Tally {
    latency: Recorder,
    errors: BTreeMap<String, u64>,
}

/// `total` random page reads over `clients`, each client a task; `salt`
/// makes each phase's pages different.
async fn run_phase(
    opts: &ReadOpts,
    clients: &[ChatClient<Channel>],
    auth: &MetadataValue<Ascii>,
    total: u64,
    salt: u64,
) -> Result<Tally> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(clients.len());
    for (t, client) in clients.iter().enumerate() {
        let (mut client, auth, next) = (client.clone(), auth.clone(), next.clone());
        let (first, conversations, rows, page) = (
            opts.first,
            opts.conversations,
            opts.rows_per_conversation,
            opts.page,
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = XorShift::new(salt.wrapping_mul(1_000_003).wrapping_add(t as u64));
            let mut tally = Tally::default();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let conv = conversation_id(first + rng.below(conversations));
                let before = u64::from(page) + 1 + rng.below(rows - u64::from(page));
                let mut req = tonic::Request::new(GetHistoryRequest {
                    conversation_id: conv,
                    before_seq: Some(before),
                    after_seq: None,
                    limit: page,
                });
                req.metadata_mut().insert("authorization", auth.clone());
                let at = Instant::now();
                let got = tokio::time::timeout(CALL_TIMEOUT, client.get_history(req)).await;
                let took = at.elapsed();
                let error = match got {
                    Err(_) => Some("client_timeout"),
                    Ok(Err(status)) => Some(code_name(status.code())),
                    Ok(Ok(resp)) => {
                        tally.latency.record(took);
                        (!right_page(&resp.into_inner().messages, before, page))
                            .then_some("wrong_page")
                    }
                };
                if let Some(e) = error {
                    *tally.errors.entry(e.to_string()).or_insert(0) += 1;
                }
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for task in tasks {
        let tally = task.await.context("a reader task panicked")?;
        all.latency.merge(&tally.latency);
        for (k, v) in tally.errors {
            *all.errors.entry(k).or_insert(0) += v;
        }
    }
    Ok(all)
}

/// The `authorization` value of a token for `user` signed with `secret`.
pub(super) fn bearer(secret: &str, user: &str) -> Result<MetadataValue<Ascii>> {
    let token = Authenticator::new(secret)
        .mint(user, 3600)
        .map_err(|e| anyhow!("mint a token for {user}: {e}"))?;
    format!("Bearer {token}")
        .parse()
        .context("the token as metadata")
}

/// A client of the gateway at `addr`, on a connection of its own.
pub(super) async fn gateway_client(addr: SocketAddr) -> Result<ChatClient<Channel>> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .context("gateway uri")?
        .connect()
        .await
        .with_context(|| format!("connect to the gateway at {addr}"))?;
    Ok(ChatClient::new(channel))
}

/// Makes every TEXT message of generated conversations `first ..first +
/// count` of `database_url` edited once (its original kept as version 0)
/// and reacted to by both members (`reader` 👍, its writer ❤️), as
/// history's edits and reactions leave a message: for `GetHistory` on
/// pages whose every message changed. The EDIT and REACTION events that
/// would have made these changes are not added: a page is read the same
/// wherever the events are.
pub async fn change_every_message(
    database_url: &str,
    reader: &str,
    first: u64,
    count: u64,
) -> Result<()> {
    let mut conn = PgConnection::connect(database_url)
        .await
        .context("connect to the generated database")?;
    let ids: Vec<String> = (first..first + count).map(conversation_id).collect();
    let writer = format!("{reader}.writer");
    for sql in [
        "INSERT INTO message_versions (conversation_id, seq, version, body, written_at_ms)
         SELECT conversation_id, seq, 0, body, created_at_ms FROM messages
         WHERE conversation_id = ANY($1) AND kind = 1",
        "INSERT INTO reactions (conversation_id, seq, user_id, emoji, created_at_ms)
         SELECT m.conversation_id, m.seq, r.user_id, r.emoji, m.created_at_ms + 2000
         FROM messages m, (VALUES ($2, '👍'), ($3, '❤️')) AS r (user_id, emoji)
         WHERE m.conversation_id = ANY($1) AND m.kind = 1",
        "UPDATE messages SET body = body || ' (edited)', edit_count = 1,
             edited_at_ms = created_at_ms + 1000, reaction_count = 2
         WHERE conversation_id = ANY($1) AND kind = 1",
        "ANALYZE messages",
        "ANALYZE reactions",
    ] {
        let q = sqlx::query(sql);
        let q = if sql.contains("$1") {
            let q = q.bind(&ids);
            if sql.contains("$2") {
                q.bind(reader).bind(&writer)
            } else {
                q
            }
        } else {
            q
        };
        q.execute(&mut conn)
            .await
            .with_context(|| format!("change every message: {sql}"))?;
    }
    Ok(())
}

/// Reads `requests` random pages (after [`WARMUP_REQUESTS`] unrecorded ones)
/// from `concurrency` tasks, each on its own connection: a random
/// conversation, `before_seq` random in `page + 1 ..= rows_per_conversation`,
/// and the page must be exactly the `page` seqs before it.
pub async fn measure(opts: &ReadOpts) -> Result<ReadReport> {
    if opts.conversations == 0 || opts.page == 0 || opts.concurrency == 0 {
        bail!("conversations, page and concurrency must be at least 1");
    }
    ensure!(
        opts.rows_per_conversation > u64::from(opts.page),
        "pages of {} need more than {} rows per conversation, not {}",
        opts.page,
        opts.page,
        opts.rows_per_conversation
    );
    let auth = bearer(&opts.secret, &opts.reader)?;
    let mut clients = Vec::with_capacity(opts.concurrency);
    for _ in 0..opts.concurrency {
        clients.push(gateway_client(opts.gateway).await?);
    }
    run_phase(opts, &clients, &auth, WARMUP_REQUESTS, 1).await?;
    let started = Instant::now();
    let tally = run_phase(opts, &clients, &auth, opts.requests, 2).await?;
    let window = started.elapsed();
    Ok(ReadReport {
        requests: opts.requests,
        page: opts.page,
        concurrency: opts.concurrency,
        seconds: window.as_secs_f64(),
        per_sec: per_sec(opts.requests, window),
        latency: tally.latency.summary(),
        errors: tally.errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_checked_newest_first_and_whole() {
        let page = |seqs: &[u64]| -> Vec<Message> {
            seqs.iter()
                .map(|&seq| Message {
                    seq,
                    ..Default::default()
                })
                .collect()
        };
        assert!(right_page(&page(&[9, 8, 7]), 10, 3));
        assert!(!right_page(&page(&[9, 8]), 10, 3));
        assert!(!right_page(&page(&[7, 8, 9]), 10, 3));
        assert!(!right_page(&page(&[8, 7, 6]), 10, 3));
    }

    #[test]
    fn the_generator_stays_in_range_and_differs_per_seed() {
        let (mut a, mut b) = (XorShift::new(1), XorShift::new(2));
        let xs: Vec<u64> = (0..1000).map(|_| a.below(7)).collect();
        assert!(xs.iter().all(|&x| x < 7));
        assert!((0..7).all(|v| xs.contains(&v)));
        assert_ne!(xs, (0..1000).map(|_| b.below(7)).collect::<Vec<_>>());
    }
}
