//! `GetHistory` on a big table: [`generate`] fills a database with millions
//! of messages server-side, [`measure`] reads random 50-message pages of it
//! through a gateway and checks every page. The messages are sentences of
//! [`corpus`] with their words for search, as history stores them.

use super::corpus::{self, Corpus};
use super::{per_sec, Latency, Recorder};
use anyhow::{anyhow, bail, ensure, Context, Result};
use confab_auth::Authenticator;
use confab_core::validate::SizeLimits;
use confab_history::store::decide::system_message;
use confab_history::store::search::{pg_document, pg_scoped};
use confab_history::PostgresStore;
use confab_proto::prost::Message as _;
use confab_proto::v1::chat_client::ChatClient;
use confab_proto::v1::membership_event::Change;
use confab_proto::v1::{ConversationKind, GetHistoryRequest, Message, Role};
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
/// Drops the keys of `messages` and its search index for the bulk load
/// ([`REBUILD_KEYS`] puts them back); an index is much cheaper built once,
/// sorted, than updated row by row.
const DROP_KEYS: &str = "ALTER TABLE messages DROP CONSTRAINT messages_conversation_id_fkey;
    ALTER TABLE messages DROP CONSTRAINT messages_pkey;
    DROP INDEX messages_dedupe;
    DROP INDEX messages_search";
/// The keys of `messages` and its search index exactly as the migrations
/// create them (`migrations/postgres/0001_init.sql`, `0007` and `0010`:
/// same names, same definitions, so `pg_dump --schema-only` cannot tell
/// the difference; [`generate`] checks that against the catalog).
const REBUILD_KEYS: &str = "ALTER TABLE messages ADD PRIMARY KEY (conversation_id, seq);
    CREATE UNIQUE INDEX messages_dedupe
        ON messages (conversation_id, sender_id, client_msg_id)
        WHERE kind <> 2;
    ALTER TABLE messages ADD CONSTRAINT messages_conversation_id_fkey
        FOREIGN KEY (conversation_id) REFERENCES conversations (id);
    CREATE INDEX messages_search ON messages USING gin (search_tokens)
        WITH (fastupdate = off) WHERE search_tokens IS NOT NULL";
/// The indexes and constraints of `messages` as the catalog describes
/// them, one per line, in order: what [`generate`] must leave as it
/// found.
const MESSAGES_SCHEMA: &str = "SELECT coalesce(string_agg(d, E'\\n' ORDER BY d), '') FROM (
        SELECT indexdef AS d FROM pg_indexes
        WHERE schemaname = current_schema() AND tablename = 'messages'
        UNION ALL
        SELECT conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
        WHERE conrelid = 'messages'::regclass
    ) AS s";
/// Generated TEXT messages whose body and search words [`generate`]
/// compares with what history would write.
const CHECKED_ROWS: u64 = 300;

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
    /// A member of every conversation, its owner (the other is
    /// `<reader>.writer`).
    pub reader: String,
    /// About how many bytes a TEXT message body has on average: bodies are
    /// sentences of [`Corpus::new`]`(body_bytes)`, some with a reference
    /// number.
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
    /// The search index's share of `table_bytes`.
    #[serde(default)]
    pub search_index_bytes: u64,
    /// The mean body of the TEXT messages, in bytes.
    #[serde(default)]
    pub mean_body_bytes: f64,
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

/// How many messages [`generate`] writes in conversation `conv` when it
/// fills `rows` rows over `conversations` conversations (0 for one it does
/// not create).
pub fn rows_in(rows: u64, conversations: u64, conv: u64) -> u64 {
    if conv >= conversations {
        return 0;
    }
    rows / conversations + u64::from(conv < rows % conversations)
}

/// The row number [`generate`] gives message `seq` of conversation `conv`
/// when it fills `rows` rows over `conversations` conversations (the first
/// `rows % conversations` of them hold one row more), or `None` if it
/// generates no such message.
pub fn row_of(rows: u64, conversations: u64, conv: u64, seq: u64) -> Option<u64> {
    if seq == 0 || seq > rows_in(rows, conversations, conv) {
        return None;
    }
    let (base, extra) = (rows / conversations, rows % conversations);
    let first = if conv < extra {
        conv * (base + 1)
    } else {
        extra * (base + 1) + (conv - extra) * base
    };
    Some(first + seq - 1)
}

pub use confab_core::metrics::code_name;

/// Fills `opts.database_url` (migrating it first, as `confab-history` would)
/// with `rows` messages in `conversations` GROUP conversations of `reader`
/// (their owner) and `<reader>.writer`: seq 1 is the SYSTEM message of the
/// create, the rest TEXT messages from both in turn, each a sentence of
/// [`corpus`] chosen by its row number (one in four with a reference number
/// after it), with its words for search as history writes them (each
/// sentence and reference tokenized here; PostgreSQL only scopes and joins
/// them). Generated by PostgreSQL in chunks of [`CHUNK_ROWS`], in seq order,
/// in one transaction that drops the keys and the search index of
/// `messages` and rebuilds them after the load (a failure leaves the
/// database as it was); the indexes and constraints after are checked to
/// be the migrations', and a sample of rows to hold what history would
/// have written. Run it before any history serves the database; progress
/// goes to stderr.
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
    sqlx::raw_sql("SET maintenance_work_mem = '1GB'")
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
    // As a create seats them: the creator owns the group, both joined at
    // seq 1, each with a span from there (migration 0009).
    sqlx::query(
        "INSERT INTO members (conversation_id, user_id, read_seq, read_system, role, joined_seq)
         SELECT 'bench-read-' || i, u.user_id, 1, 1, u.role, 1
         FROM generate_series(0::bigint, $1::bigint - 1) AS i,
              UNNEST($2::text[], $3::int[]) AS u (user_id, role)",
    )
    .bind(opts.conversations as i64)
    .bind(vec![opts.reader.clone(), writer.clone()])
    .bind(vec![Role::Owner as i32, Role::Member as i32])
    .execute(&mut *tx)
    .await
    .context("insert the members")?;
    sqlx::query(
        "INSERT INTO member_spans (conversation_id, user_id, from_seq, to_seq)
         SELECT 'bench-read-' || i, u, 1, 9223372036854775807
         FROM generate_series(0::bigint, $1::bigint - 1) AS i, UNNEST($2::text[]) AS u",
    )
    .bind(opts.conversations as i64)
    .bind(vec![opts.reader.clone(), writer.clone()])
    .execute(&mut *tx)
    .await
    .context("insert the members' spans")?;

    let schema: String = sqlx::query_scalar(MESSAGES_SCHEMA)
        .fetch_one(&mut *tx)
        .await
        .context("read the indexes and constraints of messages")?;
    sqlx::raw_sql(DROP_KEYS)
        .execute(&mut *tx)
        .await
        .context("drop the keys of messages for the bulk load")?;
    let corpus = Corpus::new(opts.body_bytes);
    load_messages(
        &mut tx, opts, &corpus, base, extra, &writer, &created, membership, now,
    )
    .await?;
    eprintln!(
        "generate: rows loaded at {:.1} s; building the keys and the search index",
        started.elapsed().as_secs_f64()
    );
    sqlx::raw_sql(REBUILD_KEYS)
        .execute(&mut *tx)
        .await
        .context("rebuild the keys of messages")?;
    let rebuilt: String = sqlx::query_scalar(MESSAGES_SCHEMA)
        .fetch_one(&mut *tx)
        .await
        .context("read the indexes and constraints of messages again")?;
    ensure!(
        rebuilt == schema,
        "the generator left messages with other indexes or constraints than the migrations'\n\
         before:\n{schema}\nafter:\n{rebuilt}"
    );
    check_rows(&mut tx, opts, &corpus).await?;
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
    sqlx::raw_sql("VACUUM (ANALYZE) conversations, members, member_spans, messages")
        .execute(&mut conn)
        .await
        .context("vacuum")?;
    sqlx::raw_sql("CHECKPOINT")
        .execute(&mut conn)
        .await
        .context("checkpoint")?;
    let (table_bytes, index_bytes): (i64, i64) = sqlx::query_as(
        "SELECT pg_total_relation_size('messages'), pg_relation_size('messages_search')",
    )
    .fetch_one(&mut conn)
    .await
    .context("size of messages")?;
    conn.close().await.ok();
    Ok(GenerateReport {
        rows: opts.rows,
        conversations: opts.conversations,
        seconds: started.elapsed().as_secs_f64(),
        table_bytes: u64::try_from(table_bytes).unwrap_or(0),
        search_index_bytes: u64::try_from(index_bytes).unwrap_or(0),
        mean_body_bytes: mean_body_bytes(opts, &corpus),
    })
}

/// The mean body of the TEXT messages [`generate`] writes, in bytes.
fn mean_body_bytes(opts: &GenerateOpts, corpus: &Corpus) -> f64 {
    let (mut bytes, mut texts) = (0u64, 0u64);
    for conv in 0..opts.conversations {
        for seq in 2..=rows_in(opts.rows, opts.conversations, conv) {
            if let Some(g) = row_of(opts.rows, opts.conversations, conv, seq) {
                bytes += corpus.body_len(corpus::pick(g, corpus.sentences.len())) as u64;
                texts += 1;
            }
        }
    }
    bytes as f64 / texts.max(1) as f64
}

/// Checks that three conversations' rows lie together in the table, in
/// about seq order, and [`CHECKED_ROWS`] generated TEXT messages, spread
/// over the conversations: each body is the text [`corpus::pick`] chose
/// for its row (what the search benchmark's checks assume), and its search
/// words are exactly what history writes for that body ([`pg_document`] of
/// the whole body, scoped: so putting a sentence's and a reference's
/// together in PostgreSQL tokenized nothing differently).
async fn check_rows(conn: &mut PgConnection, opts: &GenerateOpts, corpus: &Corpus) -> Result<()> {
    let mut sample: Vec<(u64, u64, u64)> = Vec::new();
    for k in 0..CHECKED_ROWS {
        let conv = (k * 7_919) % opts.conversations;
        let last = rows_in(opts.rows, opts.conversations, conv);
        if last < 2 {
            continue;
        }
        let seq = 2 + (k * 104_729) % (last - 1);
        if let Some(g) = row_of(opts.rows, opts.conversations, conv, seq) {
            sample.push((conv, seq, g));
        }
    }
    // Rows went in in (conversation, seq) order, so a conversation's rows
    // lie together, about in seq order, as GetHistory's pages are meant to
    // find them (not quite in order: rows differ in size, and PostgreSQL
    // puts a row that fits into space left on an earlier page).
    for conv in [0, opts.conversations / 2, opts.conversations - 1] {
        let near: Option<f64> = sqlx::query_scalar(
            "SELECT avg(CASE WHEN abs((ctid::text::point)[0] - (prev::text::point)[0]) <= 1
                        THEN 1.0 ELSE 0.0 END)::float8
             FROM (SELECT ctid, lag(ctid) OVER (ORDER BY seq) AS prev
                   FROM messages WHERE conversation_id = $1) AS t
             WHERE prev IS NOT NULL",
        )
        .bind(conversation_id(conv))
        .fetch_one(&mut *conn)
        .await
        .context("read where a conversation's rows are")?;
        ensure!(
            near.is_none_or(|n| n >= 0.9),
            "the rows of {} are scattered in the table: {:.0}% of its messages are on the \
             page of the one before or the next",
            conversation_id(conv),
            near.unwrap_or(0.0) * 100.0
        );
    }
    if sample.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = sample.iter().map(|s| conversation_id(s.0)).collect();
    let seqs: Vec<i64> = sample.iter().map(|s| s.1 as i64).collect();
    let stored: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT m.conversation_id, m.seq, m.body
         FROM UNNEST($1::text[], $2::bigint[]) AS u (conversation_id, seq)
         JOIN messages m ON m.conversation_id = u.conversation_id AND m.seq = u.seq",
    )
    .bind(&ids)
    .bind(&seqs)
    .fetch_all(&mut *conn)
    .await
    .context("read a sample of the generated messages")?;
    ensure!(
        stored.len() == sample.len(),
        "{} of {} sampled messages found",
        stored.len(),
        sample.len()
    );
    let expected: BTreeMap<(String, i64), String> = sample
        .iter()
        .map(|&(conv, seq, g)| {
            let body = corpus.body(corpus::pick(g, corpus.sentences.len()));
            ((conversation_id(conv), seq as i64), body)
        })
        .collect();
    for (conv, seq, body) in &stored {
        let want = expected.get(&(conv.clone(), *seq));
        ensure!(
            want == Some(body),
            "message {seq} of {conv} says {body:?}, not {want:?} as corpus::pick says"
        );
    }
    let documents: Vec<String> = stored.iter().map(|s| pg_document(&s.2)).collect();
    let right: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*)
         FROM UNNEST($1::text[], $2::bigint[], $3::text[]) AS u (conversation_id, seq, doc)
         JOIN messages m ON m.conversation_id = u.conversation_id AND m.seq = u.seq
         WHERE m.search_tokens = {}",
        pg_scoped("u.doc", "u.conversation_id", "tsvector")
    ))
    .bind(stored.iter().map(|s| s.0.as_str()).collect::<Vec<_>>())
    .bind(stored.iter().map(|s| s.1).collect::<Vec<_>>())
    .bind(&documents)
    .fetch_one(&mut *conn)
    .await
    .context("compare the sample's search words with history's")?;
    ensure!(
        right == stored.len() as i64,
        "{} of {} sampled messages have the search words history would write for their body",
        right,
        stored.len()
    );
    Ok(())
}

/// Inserts every message, in chunks of global row numbers `g`: the first
/// `extra` conversations hold `base + 1` rows, the others `base`, and row
/// `g` is (conversation, seq) in that order ([`row_of`]), and rows go in
/// in that order (each conversation's rows together, as a long-lived
/// table's mostly are). A TEXT message's body is what [`corpus::pick`]
/// chose for `g`; its search words are its sentence's document, scoped,
/// and its reference's after them (`tsvector || tsvector` shifts the
/// second's positions past the first's, as in the document of the whole
/// body).
#[allow(clippy::too_many_arguments)]
async fn load_messages(
    conn: &mut PgConnection,
    opts: &GenerateOpts,
    corpus: &Corpus,
    base: u64,
    extra: u64,
    writer: &str,
    created: &Message,
    membership: Vec<u8>,
    now: i64,
) -> Result<()> {
    let started = Instant::now();
    let (sentence, reference) = corpus::pick_sql("q.x", corpus.sentences.len());
    let (ref_text, ref_doc) = corpus::reference_sql("p.reference");
    let conv = "('bench-read-' || p.conv)";
    let sentence_words = pg_scoped("$11[p.sentence + 1]", conv, "tsvector");
    let ref_words = pg_scoped(&ref_doc, conv, "tsvector");
    // A plain projection of generate_series, so rows go in in (conversation,
    // seq) order: a join with the sentences would let the planner hash the
    // rows and put them in the sentences' order. `q.x` is corpus::mix of
    // the row number; the sentences are picked from the arrays by index.
    let sql = format!(
        "INSERT INTO messages
             (conversation_id, seq, sender_id, client_msg_id, kind, body, membership, created_at_ms,
              search_tokens)
         SELECT 'bench-read-' || p.conv, p.seq,
                CASE WHEN p.seq = 1 OR p.seq % 2 = 0 THEN $5 ELSE $6 END,
                CASE WHEN p.seq = 1 THEN '' ELSE 'bench-' || p.seq END,
                CASE WHEN p.seq = 1 THEN 2 ELSE 1 END,
                CASE WHEN p.seq = 1 THEN $7
                     ELSE $10[p.sentence + 1] || coalesce({ref_text}, '') END,
                CASE WHEN p.seq = 1 THEN $8 END,
                $9 + p.seq,
                CASE WHEN p.seq > 1 THEN
                    {sentence_words} || coalesce({ref_words}, ''::tsvector) END
         FROM (SELECT q.conv, q.seq, {sentence} AS sentence, {reference} AS reference
               FROM (SELECT CASE WHEN g < $4 * ($3 + 1) THEN g / ($3 + 1)
                                 ELSE $4 + (g - $4 * ($3 + 1)) / $3 END AS conv,
                            CASE WHEN g < $4 * ($3 + 1) THEN g % ($3 + 1)
                                 ELSE (g - $4 * ($3 + 1)) % $3 END + 1 AS seq,
                            {} AS x
                     FROM generate_series($1::bigint, $2::bigint - 1) AS g) AS q) AS p",
        corpus::mix_sql("g"),
    );
    let mut start = 0;
    while start < opts.rows {
        let end = (start + CHUNK_ROWS).min(opts.rows);
        sqlx::query(&sql)
            .bind(start as i64)
            .bind(end as i64)
            .bind(base as i64)
            .bind(extra as i64)
            .bind(&opts.reader)
            .bind(writer)
            .bind(&created.body)
            .bind(&membership)
            .bind(now)
            .bind(&corpus.sentences)
            .bind(&corpus.documents)
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
pub(super) struct XorShift(u64);

impl XorShift {
    pub(super) fn new(seed: u64) -> Self {
        // splitmix64 of the seed, never 0.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    /// Uniform enough in `0..n` (`n > 0`).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Whether `messages` is the page of `page` messages before `before`,
/// newest first.
pub(super) fn right_page(messages: &[Message], before: u64, page: u32) -> bool {
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

/// What [`change_every_message`]'s edit appends to each body.
pub const EDITED: &str = " (edited)";

/// Makes every TEXT message of generated conversations `first ..first +
/// count` of `database_url` edited once (its original kept as version 0,
/// its search words those of the new body) and reacted to by both members
/// (`reader` 👍, its writer ❤️), as history's edits and reactions leave a
/// message: for `GetHistory` on pages whose every message changed. The
/// EDIT and REACTION events that would have made these changes are not
/// added: a page is read the same wherever the events are.
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
    // The edit appends EDITED to each body, so its document is the old one
    // followed by the suffix's (`||` shifts the suffix's positions).
    let edited = pg_document(EDITED);
    sqlx::query(
        "INSERT INTO message_versions (conversation_id, seq, version, body, written_at_ms)
         SELECT conversation_id, seq, 0, body, created_at_ms FROM messages
         WHERE conversation_id = ANY($1) AND kind = 1",
    )
    .bind(&ids)
    .execute(&mut conn)
    .await
    .context("change every message: keep the originals")?;
    sqlx::query(
        "INSERT INTO reactions (conversation_id, seq, user_id, emoji, created_at_ms)
         SELECT m.conversation_id, m.seq, r.user_id, r.emoji, m.created_at_ms + 2000
         FROM messages m, (VALUES ($2, '👍'), ($3, '❤️')) AS r (user_id, emoji)
         WHERE m.conversation_id = ANY($1) AND m.kind = 1",
    )
    .bind(&ids)
    .bind(reader)
    .bind(&writer)
    .execute(&mut conn)
    .await
    .context("change every message: react")?;
    sqlx::query(&format!(
        "UPDATE messages SET body = body || $2, edit_count = 1,
             edited_at_ms = created_at_ms + 1000, reaction_count = 2,
             search_tokens = search_tokens || {}
         WHERE conversation_id = ANY($1) AND kind = 1",
        pg_scoped("$3", "conversation_id", "tsvector")
    ))
    .bind(&ids)
    .bind(EDITED)
    .bind(&edited)
    .execute(&mut conn)
    .await
    .context("change every message: edit")?;
    // As `generate` leaves the table: a long-lived table's edits were
    // vacuumed and checkpointed long before their pages are read again, so
    // the timed reads neither write hint bits on the changed rows nor step
    // over their old versions, nor share the disk with the checkpointer.
    sqlx::raw_sql("VACUUM (ANALYZE) messages, reactions, message_versions")
        .execute(&mut conn)
        .await
        .context("change every message: vacuum")?;
    sqlx::raw_sql("CHECKPOINT")
        .execute(&mut conn)
        .await
        .context("change every message: checkpoint")?;
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
    fn row_numbers_are_the_generators() {
        // The generator's SQL: row g is (conversation, seq) this way.
        let (rows, conversations) = (1_003u64, 10u64);
        let (base, extra) = (rows / conversations, rows % conversations);
        for g in 0..rows {
            let (conv, seq) = if g < extra * (base + 1) {
                (g / (base + 1), g % (base + 1) + 1)
            } else {
                let rest = g - extra * (base + 1);
                (extra + rest / base, rest % base + 1)
            };
            assert_eq!(row_of(rows, conversations, conv, seq), Some(g), "{g}");
        }
        assert_eq!(rows_in(rows, conversations, 2), 101);
        assert_eq!(rows_in(rows, conversations, 3), 100);
        assert_eq!(rows_in(rows, conversations, 10), 0);
        assert_eq!(row_of(rows, conversations, 2, 101), Some(302));
        assert_eq!(row_of(rows, conversations, 3, 101), None);
        assert_eq!(row_of(rows, conversations, 3, 0), None);
        assert_eq!(row_of(rows, conversations, 10, 1), None);
        assert_eq!(row_of(rows, 0, 0, 1), None);
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
