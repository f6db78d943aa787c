//! History's ingest rate, isolated: the ingress topic is filled first, with
//! records built as the gateway builds them, then the real `confab-history`
//! binary is started on it and timed until everything is stored; with
//! search indexing on or off (`CONFAB_SEARCH_INDEX`, [`run_with`]). The
//! messages say what the generated table's do ([`corpus`]).

use super::corpus::{self, Corpus};
use super::{clock_ticks_per_sec, per_sec, server_cpu_ticks, CpuMark, ProcStats};
use anyhow::{anyhow, ensure, Context, Result};
use confab_core::validate::{group_conversation_id, new_traceparent};
use confab_kafka::{ensure_topics, KafkaConfig, KafkaPublisher};
use confab_proto::internal::v1::{
    ingress_record::Command, CreateCommand, IngressRecord, Origin, SendCommand,
};
use confab_proto::v1::ConversationKind;
use confab_tests::procs::ServiceProc;
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::time::{Duration, Instant};

/// What [`run`] measures.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct IngestOpts {
    /// `CONFAB_KAFKA_BROKERS`.
    pub bootstrap: String,
    /// History's database (fresh: history migrates it).
    pub database_url: String,
    /// `CONFAB_KAFKA_PREFIX`: topics of this run's own.
    pub prefix: String,
    /// `CONFAB_KAFKA_PARTITIONS`.
    pub partitions: usize,
    /// Sends to sequence.
    pub messages: u64,
    /// GROUP conversations they are spread over (created first).
    pub conversations: u64,
    /// About how many bytes a message body has on average: bodies are the
    /// texts of [`Corpus::new`]`(body_bytes)`, as in the generated table
    /// (real words, so that indexing them for search costs what it would).
    pub body_bytes: usize,
    /// History's log file.
    pub log: std::path::PathBuf,
}

/// What [`run`] measured.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct IngestReport {
    /// Sends stored.
    pub messages: u64,
    /// Conversations created before them.
    pub conversations: u64,
    /// From the last reading with nothing stored to the first with every
    /// send stored (readings are 50 ms apart).
    pub seconds: f64,
    /// `messages` / `seconds`.
    pub sequenced_per_sec: f64,
    /// History's CPU and memory over `seconds`.
    pub history: ProcStats,
    /// `CONFAB_SEARCH_INDEX` as history was given it (`None`: unset, its
    /// default).
    #[serde(default)]
    pub search_index: Option<bool>,
    /// Sends stored with their words for search.
    #[serde(default)]
    pub indexed: u64,
    /// CPU time of the whole PostgreSQL server (every process of it)
    /// over `seconds`, when [`IngestSetup::postmaster`] was given.
    #[serde(default)]
    pub postgres_cpu_seconds: Option<f64>,
}

impl IngestReport {
    /// History's CPU time per message stored, in µs.
    pub fn history_us_per_message(&self) -> f64 {
        self.history.cpu_seconds * 1e6 / self.messages.max(1) as f64
    }

    /// PostgreSQL's CPU time per message stored, in µs, if measured.
    pub fn postgres_us_per_message(&self) -> Option<f64> {
        self.postgres_cpu_seconds
            .map(|s| s * 1e6 / self.messages.max(1) as f64)
    }
}

/// How [`run_with`] runs history, beyond [`IngestOpts`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IngestSetup {
    /// `CONFAB_SEARCH_INDEX` for history: `Some(true)` "on", `Some(false)`
    /// "off" (and then no stored send may have search words, nor may one
    /// lack them with "on"); `None`: unset.
    pub search_index: Option<bool>,
    /// The PostgreSQL server's postmaster, to report the CPU time of the
    /// server (the postmaster, its children, and those it reaped) over the
    /// window.
    pub postmaster: Option<u32>,
}

/// The gateway id the records claim to come from.
const GATEWAY_ID: &str = "bench-ingest";

/// Users; each conversation has three of them.
const USERS: u64 = 5;

/// Records being published at once while filling the topic.
const PREFILL_IN_FLIGHT: usize = 512;

/// How often the database is read.
const POLL: Duration = Duration::from_millis(50);

/// Fills `<prefix>.ingress` with `conversations` creates then `messages`
/// sends (Confab's publisher: same keys, encoding and headers as the
/// gateway's), starts `confab-history` on it, and waits (60 s + 1 s per 500
/// messages at most) until the database holds every send. History is
/// stopped afterwards.
pub async fn run(opts: &IngestOpts) -> Result<IngestReport> {
    run_with(opts, &IngestSetup::default()).await
}

/// [`run`], with history's search indexing set and PostgreSQL's CPU
/// measured as `setup` says.
pub async fn run_with(opts: &IngestOpts, setup: &IngestSetup) -> Result<IngestReport> {
    ensure!(
        opts.messages > 0 && opts.conversations > 0,
        "messages and conversations must be positive"
    );
    let config = KafkaConfig {
        prefix: opts.prefix.clone(),
        partitions: i32::try_from(opts.partitions).context("too many partitions")?,
        produce_timeout: Duration::from_secs(10),
        ..KafkaConfig::new(&opts.bootstrap)
    };
    ensure_topics(&config)
        .await
        .context("create the ingress and messages topics")?;
    let publisher = KafkaPublisher::<IngressRecord>::new(&config).context("create the producer")?;
    let convs: Vec<(String, Vec<String>)> = (0..opts.conversations)
        .map(|c| {
            let mut members: Vec<String> = (0..3)
                .map(|k| format!("bench-user-{}", (c + k) % USERS))
                .collect();
            members.sort_unstable();
            (group_conversation_id(), members)
        })
        .collect();
    // Every create is in the log before any send: a conversation's send is
    // behind its create on the conversation's partition.
    publish_all(&publisher, opts.conversations, |c| {
        let (id, members) = &convs[c as usize];
        let create = Command::Create(CreateCommand {
            history_visibility: 0,
            kind: ConversationKind::Group as i32,
            title: format!("bench {c}"),
            member_ids: members.clone(),
        });
        record(c, &members[0], id, create)
    })
    .await?;
    let corpus = Corpus::new(opts.body_bytes);
    publish_all(&publisher, opts.messages, |i| {
        let (id, members) = &convs[(i % opts.conversations) as usize];
        let sender = &members[((i / opts.conversations) % 3) as usize];
        let send = Command::Send(SendCommand {
            reply_to_seq: 0,
            client_msg_id: format!("bench-{i}"),
            body: corpus.body(corpus::pick(i, corpus.sentences.len())),
        });
        record(opts.conversations + i, sender, id, send)
    })
    .await?;
    publisher
        .flush(Duration::from_secs(30))
        .await
        .context("flush the producer")?;

    let search_index = setup.search_index.map(|on| {
        (
            confab_core::vars::SEARCH_INDEX,
            if on { "on" } else { "off" }.to_string(),
        )
    });
    let env: Vec<(String, String)> = [
        ("CONFAB_KAFKA_BROKERS", opts.bootstrap.clone()),
        ("CONFAB_KAFKA_PREFIX", opts.prefix.clone()),
        ("CONFAB_KAFKA_PARTITIONS", opts.partitions.to_string()),
        ("CONFAB_DATABASE_URL", opts.database_url.clone()),
        (
            "CONFAB_SERVICE_TOKEN",
            confab_tests::topology::SERVICE_TOKEN.into(),
        ),
        ("CONFAB_LOG", "info".into()),
    ]
    .into_iter()
    .chain(search_index)
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&opts.database_url)
        .await
        .context("connect to history's database")?;
    let history = ServiceProc::new("confab-history", "history", env, opts.log.clone());
    let launched = Instant::now();
    // `start` waits (blocking) until history listens, and panics if it
    // does not.
    let mut history = tokio::task::spawn_blocking(move || {
        let mut history = history;
        history.start();
        history
    })
    .await
    .map_err(|e| anyhow!("confab-history did not start: {}", panic_text(e)))?;
    let measured = measure(&mut history, &pool, opts, setup, launched).await;
    history.terminate(Duration::from_secs(10)).await;
    let checked = match measured {
        Ok(report) => indexed(&pool, setup, report).await,
        Err(e) => Err(e),
    };
    pool.close().await;
    checked
}

/// `report` with the sends stored with search words counted, checked
/// against `setup.search_index` when it was set.
async fn indexed(
    pool: &PgPool,
    setup: &IngestSetup,
    mut report: IngestReport,
) -> Result<IngestReport> {
    let (texts, with_words): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(search_tokens) FROM messages WHERE kind = 1")
            .fetch_one(pool)
            .await
            .context("count the sends stored with search words")?;
    let (texts, with_words) = (
        u64::try_from(texts).unwrap_or(0),
        u64::try_from(with_words).unwrap_or(0),
    );
    let expected = match setup.search_index {
        Some(true) => Some(texts),
        Some(false) => Some(0),
        None => None,
    };
    if let Some(want) = expected {
        ensure!(
            with_words == want,
            "history stored {with_words} of {texts} sends with search words, \
             with {}={}",
            confab_core::vars::SEARCH_INDEX,
            if want == 0 { "off" } else { "on" }
        );
    }
    report.search_index = setup.search_index;
    report.indexed = with_words;
    Ok(report)
}

/// An ingress record as the gateway's `Submitter` makes it.
fn record(request_id: u64, actor: &str, conversation_id: &str, command: Command) -> IngressRecord {
    IngressRecord {
        origin: Some(Origin {
            gateway_id: GATEWAY_ID.into(),
            request_id,
        }),
        actor_id: actor.to_string(),
        conversation_id: conversation_id.to_string(),
        command: Some(command),
        traceparent: new_traceparent(),
        accepted_at_ms: super::baselines::now_ms(),
    }
}

/// Publishes `make(0..count)`, keyed by conversation, a bounded number at
/// a time; fails on the first record the broker does not take.
async fn publish_all(
    publisher: &KafkaPublisher<IngressRecord>,
    count: u64,
    make: impl Fn(u64) -> IngressRecord,
) -> Result<()> {
    stream::iter(0..count)
        .map(|i| {
            let rec = make(i);
            async move {
                publisher
                    .publish_with(&rec.conversation_id, &rec, &[])
                    .await
                    .map(|_| ())
                    .map_err(|e| anyhow!("publish to the ingress topic: {e}"))
            }
        })
        .buffer_unordered(PREFILL_IN_FLIGHT)
        .try_collect()
        .await
}

/// Conversations stored, and sends stored (every conversation's seqs past
/// its creation event at seq 1); nothing before history has migrated.
async fn stored(pool: &PgPool) -> Result<(u64, u64), sqlx::Error> {
    let (convs, seqs): (i64, i64) =
        sqlx::query_as("SELECT count(*), coalesce(sum(last_seq), 0)::bigint FROM conversations")
            .fetch_one(pool)
            .await?;
    Ok((
        u64::try_from(convs).unwrap_or(0),
        u64::try_from(seqs - convs).unwrap_or(0),
    ))
}

/// Reads the database until every send is stored; the window runs from the
/// last reading with nothing stored to the first with everything.
/// (`launched`: when history was started, should it store something before
/// the first reading.)
async fn measure(
    history: &mut ServiceProc,
    pool: &PgPool,
    opts: &IngestOpts,
    setup: &IngestSetup,
    launched: Instant,
) -> Result<IngestReport> {
    let pid = history.pid().context("history has no process id")?;
    let within = Duration::from_secs(60 + opts.messages / 500);
    let postgres = || setup.postmaster.and_then(server_cpu_ticks);
    let seen = std::cell::RefCell::new(Seen {
        before: (launched, CpuMark::now(pid), postgres()),
        stored: (0, 0),
        last_error: None,
    });
    let history = std::cell::RefCell::new(history);
    let (seen, running) = (&seen, &history);
    let finished = confab_tests::poll("every send stored", within, POLL, || async move {
        let at = (Instant::now(), CpuMark::now(pid), postgres());
        let read = stored(pool).await;
        let mut s = seen.borrow_mut();
        s.stored = match read {
            Ok(n) => n,
            Err(e) => {
                s.last_error = Some(e.to_string());
                (0, 0)
            }
        };
        let (convs, sends) = s.stored;
        if convs == 0 && sends == 0 {
            s.before = at;
        }
        // Done takes at least one conversation, so it comes after the last
        // reading with nothing stored.
        if convs >= opts.conversations.max(1) && sends >= opts.messages {
            let window = s.before.0.elapsed();
            let postgres_cpu_seconds = match (s.before.2, postgres()) {
                (Some(from), Some(to)) => {
                    Some(to.saturating_sub(from) as f64 / clock_ticks_per_sec() as f64)
                }
                _ => None,
            };
            return Ok(Some(IngestReport {
                messages: opts.messages,
                conversations: opts.conversations,
                seconds: window.as_secs_f64(),
                sequenced_per_sec: per_sec(opts.messages, window),
                history: s.before.1.stats("confab-history"),
                search_index: setup.search_index,
                indexed: 0,
                postgres_cpu_seconds,
            }));
        }
        if !running.borrow_mut().is_running() {
            return Err(anyhow!("history exited"));
        }
        Ok(None)
    })
    .await;
    finished.map_err(|problem| {
        let s = seen.borrow();
        let (convs, sends) = s.stored;
        anyhow!(
            "{problem} with {convs} of {} conversations and {sends} of {} sends stored (last database error: {:?}); history's log:\n{}",
            opts.conversations,
            opts.messages,
            s.last_error,
            history.borrow().tail(30)
        )
    })
}

/// What [`measure`] has seen of the database so far.
struct Seen {
    /// The last reading with nothing stored (when, history's CPU then, and
    /// PostgreSQL's in clock ticks if measured).
    before: (Instant, CpuMark, Option<u64>),
    /// Conversations and sends stored at the last reading.
    stored: (u64, u64),
    /// The last error reading the database.
    last_error: Option<String>,
}

/// What a panicked task said.
fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into()),
        Err(e) => e.to_string(),
    }
}
