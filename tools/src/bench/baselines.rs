//! The ceilings Confab is compared to, measured without Confab code in the
//! data path: raw rdkafka produce→consume through the same broker (with the
//! settings of Confab's producer and consumers), and raw batched inserts into
//! the same PostgreSQL (in the statement shape of history's ingest).

use super::{per_sec, Latency, Recorder};
use anyhow::{anyhow, bail, ensure, Context, Result};
use confab_kafka::KafkaConfig;
use confab_proto::v1::{ConversationKind, MessageKind};
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use serde::Serialize;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// What [`kafka`] measures.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct KafkaOpts {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// The topic is `<topic_prefix>.raw-<pid>-<n>`, new for every run.
    pub topic_prefix: String,
    /// Partitions of that topic.
    pub partitions: i32,
    /// How many records to produce.
    pub messages: u64,
    /// Size of each record's value (at least 16 bytes: send time and index).
    pub payload_bytes: usize,
    /// Most records produced and not acknowledged yet.
    pub in_flight: usize,
}

/// What [`kafka`] measured.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct KafkaReport {
    /// Records produced, and consumed (each once).
    pub messages: u64,
    /// Size of each record's value.
    pub payload_bytes: usize,
    /// From the first send to the last record consumed.
    pub seconds: f64,
    /// Records acknowledged per second, from the first send to the last ack.
    pub produced_per_sec: f64,
    /// Records consumed per second over `seconds`.
    pub consumed_per_sec: f64,
    /// From a send to the broker's acknowledgement (`acks=all`).
    pub produce_ack: Latency,
    /// From a send to the consumer receiving the record.
    pub produce_to_consume: Latency,
}

/// What [`postgres_inserts`] measures.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct InsertOpts {
    /// A fresh, empty database: the schema is created in it.
    pub database_url: String,
    /// How many message rows to insert.
    pub rows: u64,
    /// Rows per transaction (history's is up to 256).
    pub batch: usize,
    /// Concurrent writers, each with a connection and conversations of its own.
    pub writers: usize,
    /// Size of each message body.
    pub body_bytes: usize,
}

/// What [`postgres_inserts`] measured.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct InsertReport {
    /// Rows inserted (and counted in the table afterwards).
    pub rows: u64,
    /// Rows per transaction.
    pub batch: usize,
    /// Concurrent writers.
    pub writers: usize,
    /// From the first transaction's start to the last one's commit.
    pub seconds: f64,
    /// `rows` / `seconds`.
    pub rows_per_sec: f64,
    /// One transaction (begin, insert, commit), per batch.
    pub batch_latency: Latency,
}

/// Send time (ns since the run's origin) and index, little-endian, at the
/// start of every record.
const STAMP_BYTES: usize = 16;

/// Distinct record keys (as conversation ids are in Confab), spread over the
/// partitions by the same partitioner.
const KEYS: u64 = 1024;

/// Bound on topic creation and metadata requests.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Conversations each insert writer owns.
const CONVERSATIONS_PER_WRITER: usize = 4;

/// History's schema (`migrations/postgres`).
const SCHEMA: &str = include_str!("../../../migrations/postgres/0001_init.sql");

/// The Kafka ceiling: `messages` records through a new topic with a raw
/// rdkafka producer and consumer configured as Confab's are. The consumer
/// joins its own group before the first send; done when it has seen every
/// record, or an error after 60 s + 1 s per 1,000 records.
///
/// On nisshi's PostgreSQL engine a fetch costs time in proportion to the
/// consumer's lag and returns few records, so a consumer that falls behind
/// falls further behind: there, large runs measure that, not rdkafka.
pub async fn kafka(opts: &KafkaOpts) -> Result<KafkaReport> {
    ensure!(opts.messages > 0, "nothing to measure: messages is 0");
    ensure!(opts.partitions > 0, "partitions must be positive");
    ensure!(
        opts.payload_bytes >= STAMP_BYTES,
        "payload_bytes must be at least {STAMP_BYTES} (a send time and an index)"
    );
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let topic = format!(
        "{}.raw-{}-{}",
        opts.topic_prefix,
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let deadline = Instant::now() + Duration::from_secs(60 + opts.messages / 1000);
    let admin = create_topic(&opts.bootstrap, &topic, opts.partitions).await?;

    let consumer: Arc<StreamConsumer> = Arc::new(
        bench_client(&opts.bootstrap)?
            .consumer_config(&format!("{topic}.bench"))
            .create()
            .context("create the consumer")?,
    );
    consumer
        .subscribe(&[&topic])
        .with_context(|| format!("subscribe to {topic}"))?;
    let origin = Instant::now();
    let reader = tokio::spawn(consume(consumer.clone(), origin, opts.messages, deadline));
    wait_for_assignment(&consumer, opts.partitions).await?;

    let producer: FutureProducer = bench_client(&opts.bootstrap)?
        .producer_config()
        .create()
        .context("create the producer")?;
    let (tx, rx) = mpsc::unbounded_channel();
    let acker = tokio::spawn(collect_acks(rx));
    let permits = Arc::new(Semaphore::new(opts.in_flight.max(1)));
    let mut payload = vec![b'x'; opts.payload_bytes];
    let first_send = Instant::now();
    for i in 0..opts.messages {
        let permit = tokio::time::timeout_at(deadline.into(), permits.clone().acquire_owned())
            .await
            .map_err(|_| anyhow!("record {i} could not be sent before the deadline"))?
            .context("the in-flight limit was closed")?;
        let key = format!("k{}", i % KEYS);
        let within = deadline.saturating_duration_since(Instant::now());
        let (sent, delivery) = confab_tests::poll(
            "room in the producer queue",
            within,
            Duration::from_millis(1),
            || {
                let sent_ns = u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
                payload[..8].copy_from_slice(&sent_ns.to_le_bytes());
                payload[8..STAMP_BYTES].copy_from_slice(&i.to_le_bytes());
                let sent = Instant::now();
                let record = FutureRecord::to(&topic).key(&key).payload(&payload);
                std::future::ready(match producer.send_result(record) {
                    Ok(delivery) => Ok(Some((sent, delivery))),
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        Ok(None)
                    }
                    Err((e, _)) => Err(anyhow::Error::new(e).context("enqueue a record")),
                })
            },
        )
        .await?;
        if tx.send((sent, delivery, permit)).is_err() {
            break; // The acker failed: its error is returned below.
        }
    }
    drop(tx);
    let (acks, last_ack) = acker.await.context("the ack collector panicked")??;
    let flusher = producer.clone();
    tokio::task::spawn_blocking(move || flusher.flush(Duration::from_secs(10)))
        .await
        .context("flush task")?
        .context("flush the producer")?;
    let (consumed, last_consumed) = reader.await.context("the consumer task panicked")??;
    // Closing a consumer talks to the group coordinator: off the runtime.
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    // Best effort: keep a long-lived broker from filling up with runs.
    let delete = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        admin.delete_topics(&[topic.as_str()], &delete),
    )
    .await;

    let window = last_consumed.saturating_duration_since(first_send);
    Ok(KafkaReport {
        messages: opts.messages,
        payload_bytes: opts.payload_bytes,
        seconds: window.as_secs_f64(),
        produced_per_sec: per_sec(
            opts.messages,
            last_ack.saturating_duration_since(first_send),
        ),
        consumed_per_sec: per_sec(opts.messages, window),
        produce_ack: acks.summary(),
        produce_to_consume: consumed.summary(),
    })
}

/// Confab's Kafka settings for a client of `bootstrap`, named
/// `confab-bench`: the defaults, or what `CONFAB_KAFKA_*` set for the
/// bench (its stack's services get the same).
fn bench_client(bootstrap: &str) -> Result<KafkaConfig> {
    let tuned = KafkaConfig::from_env(&confab_core::config::ProcessEnv)
        .map_err(|e| anyhow!("{}: {}", e.key, e.reason))?;
    Ok(KafkaConfig {
        client_id: "confab-bench".into(),
        brokers: bootstrap.into(),
        ..tuned
    })
}

/// Creates `topic` and waits until the broker's metadata lists all its
/// partitions.
async fn create_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> Result<Arc<AdminClient<DefaultClientContext>>> {
    let admin: Arc<AdminClient<DefaultClientContext>> = Arc::new(
        bench_client(bootstrap)?
            .client_config()
            .create()
            .context("create the admin client")?,
    );
    let opts = AdminOptions::new()
        .request_timeout(Some(ADMIN_TIMEOUT))
        .operation_timeout(Some(ADMIN_TIMEOUT));
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for result in admin
        .create_topics([&new], &opts)
        .await
        .with_context(|| format!("create topic {topic}"))?
    {
        result.map_err(|(t, code)| anyhow!("cannot create topic {t}: {code}"))?;
    }
    let listed_all = || {
        let (a, t) = (admin.clone(), topic.to_string());
        async move {
            let listed = tokio::task::spawn_blocking(move || -> Result<usize, KafkaError> {
                let md = a.inner().fetch_metadata(Some(&t), Duration::from_secs(5))?;
                Ok(md
                    .topics()
                    .iter()
                    .filter(|m| m.name() == t && m.error().is_none())
                    .map(|m| m.partitions().len())
                    .sum())
            })
            .await
            .context("metadata task")?
            .context("fetch metadata")?;
            Ok((listed == partitions as usize).then_some(()))
        }
    };
    let what = format!("topic {topic} to list its {partitions} partitions");
    confab_tests::poll(&what, ADMIN_TIMEOUT, Duration::from_millis(100), listed_all).await?;
    Ok(admin)
}

/// Waits until the group gave `consumer` every partition (its task polls
/// meanwhile), so no record waits for a rebalance.
async fn wait_for_assignment(consumer: &StreamConsumer, partitions: i32) -> Result<()> {
    let what = format!("the consumer to be assigned all {partitions} partitions");
    confab_tests::poll(&what, ADMIN_TIMEOUT, Duration::from_millis(20), || {
        std::future::ready(
            consumer
                .assignment()
                .context("read the assignment")
                .map(|a| (a.count() == partitions as usize).then_some(())),
        )
    })
    .await
}

/// Sends in flight: when sent, the broker's verdict, the in-flight slot.
type InFlight = (Instant, DeliveryFuture, OwnedSemaphorePermit);

/// Waits for every acknowledgement; returns their latencies and the time
/// of the last one. Any failed delivery fails the run.
async fn collect_acks(mut rx: mpsc::UnboundedReceiver<InFlight>) -> Result<(Recorder, Instant)> {
    let mut acks = Recorder::new();
    let mut last = Instant::now();
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            sent = rx.recv(), if open => match sent {
                Some((at, delivery, permit)) => pending.push(async move {
                    let verdict = delivery.await;
                    drop(permit);
                    (at.elapsed(), verdict)
                }),
                None => open = false,
            },
            Some((took, verdict)) = pending.next(), if !pending.is_empty() => match verdict {
                Ok(Ok(_)) => {
                    acks.record(took);
                    last = Instant::now();
                }
                Ok(Err((e, _))) => bail!("a record was not acknowledged: {e}"),
                Err(_) => bail!("the producer dropped a delivery report"),
            },
            else => return Ok((acks, last)),
        }
    }
}

/// Reads until `messages` distinct records arrived (duplicates are
/// skipped); returns produce→consume latencies and the last arrival.
async fn consume(
    consumer: Arc<StreamConsumer>,
    origin: Instant,
    messages: u64,
    deadline: Instant,
) -> Result<(Recorder, Instant)> {
    let mut seen = vec![false; usize::try_from(messages).context("too many messages")?];
    let mut latency = Recorder::new();
    let (mut count, mut duplicates, mut last, mut last_error) = (0u64, 0u64, Instant::now(), None);
    while count < messages {
        let msg = match tokio::time::timeout_at(deadline.into(), consumer.recv()).await {
            Err(_) => bail!(
                "the consumer saw {count} of {messages} records (and {duplicates} duplicates) before the deadline (last error: {last_error:?})"
            ),
            Ok(Err(e)) => {
                last_error = Some(e.to_string());
                continue;
            }
            Ok(Ok(msg)) => msg,
        };
        let now = origin.elapsed();
        let (sent_ns, index) = msg.payload().and_then(stamp).ok_or_else(|| {
            anyhow!(
                "record {}/{} has no bench stamp",
                msg.partition(),
                msg.offset()
            )
        })?;
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| seen.get_mut(i))
            .ok_or_else(|| anyhow!("record index {index} is out of range"))?;
        if std::mem::replace(slot, true) {
            duplicates += 1;
            continue;
        }
        latency.record(now.saturating_sub(Duration::from_nanos(sent_ns)));
        count += 1;
        last = Instant::now();
    }
    Ok((latency, last))
}

/// The send time and index at the start of a record.
fn stamp(payload: &[u8]) -> Option<(u64, u64)> {
    let word = |at: usize| {
        payload
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    Some((word(0)?, word(8)?))
}

/// The database ceiling: `writers` connections insert `rows` message rows
/// in transactions of `batch`, with history's `INSERT ... SELECT FROM
/// UNNEST` (same columns, TEXT kind so the dedupe index is maintained),
/// each writer into conversations of its own with consecutive seqs.
pub async fn postgres_inserts(opts: &InsertOpts) -> Result<InsertReport> {
    ensure!(opts.rows > 0, "nothing to measure: rows is 0");
    ensure!(
        opts.batch > 0 && opts.writers > 0,
        "batch and writers must be positive"
    );
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(opts.writers + 1).context("too many writers")?)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&opts.database_url)
        .await
        .context("connect to the benchmark database")?;
    sqlx::raw_sql(SCHEMA)
        .execute(&pool)
        .await
        .context("create history's schema (the database must be empty)")?;
    let ids: Vec<String> = (0..opts.writers * CONVERSATIONS_PER_WRITER)
        .map(|i| format!("bench-conv-{i}"))
        .collect();
    sqlx::query(
        "INSERT INTO conversations (id, kind, title, last_seq, created_at_ms)
         SELECT u.id, $2, u.id, 0, $3 FROM UNNEST($1::text[]) AS u (id)",
    )
    .bind(&ids)
    .bind(ConversationKind::Group as i32)
    .bind(now_ms())
    .execute(&pool)
    .await
    .context("create the conversations")?;

    let next = Arc::new(AtomicU64::new(0));
    let body: Arc<str> = "x".repeat(opts.body_bytes).into();
    let started = Instant::now();
    let writers: Vec<_> = ids
        .chunks(CONVERSATIONS_PER_WRITER)
        .map(|convs| {
            let job = Writer {
                pool: pool.clone(),
                convs: convs.to_vec(),
                next: next.clone(),
                rows: opts.rows,
                batch: opts.batch as u64,
                body: body.clone(),
            };
            tokio::spawn(job.run())
        })
        .collect();
    let mut latency = Recorder::new();
    for w in writers {
        latency.merge(&w.await.context("an insert writer panicked")??);
    }
    let window = started.elapsed();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&pool)
        .await
        .context("count the rows")?;
    ensure!(
        u64::try_from(stored).ok() == Some(opts.rows),
        "{stored} rows are stored, {} were inserted",
        opts.rows
    );
    pool.close().await;
    Ok(InsertReport {
        rows: opts.rows,
        batch: opts.batch,
        writers: opts.writers,
        seconds: window.as_secs_f64(),
        rows_per_sec: per_sec(opts.rows, window),
        batch_latency: latency.summary(),
    })
}

/// One insert writer: takes the next `batch` row numbers until `rows`.
struct Writer {
    /// Its connection comes from here.
    pool: PgPool,
    /// Its conversations, written round-robin.
    convs: Vec<String>,
    /// The next row number nobody has taken.
    next: Arc<AtomicU64>,
    /// Rows in all.
    rows: u64,
    /// Rows per transaction.
    batch: u64,
    /// Every message's body.
    body: Arc<str>,
}

impl Writer {
    /// Inserts batches until the rows run out; returns their latencies.
    async fn run(self) -> Result<Recorder> {
        let mut seqs = vec![0i64; self.convs.len()];
        let mut latency = Recorder::new();
        loop {
            let start = self.next.fetch_add(self.batch, Ordering::Relaxed);
            if start >= self.rows {
                return Ok(latency);
            }
            let end = (start + self.batch).min(self.rows);
            let n = (end - start) as usize;
            let (mut conv, mut seq, mut sender, mut id, mut body) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for row in start..end {
                let c = (row % self.convs.len() as u64) as usize;
                seqs[c] += 1;
                conv.push(self.convs[c].as_str());
                seq.push(seqs[c]);
                sender.push(format!("bench-user-{}", row % 8));
                id.push(format!("bench-{row}"));
                body.push(&*self.body);
            }
            let t = Instant::now();
            let mut tx = self.pool.begin().await.context("begin a batch")?;
            sqlx::query(
                "INSERT INTO messages (conversation_id, seq, sender_id, client_msg_id, kind, body, membership, created_at_ms)
                 SELECT u.conversation_id, u.seq, u.sender_id, u.client_msg_id, $6, u.body, NULL, $7
                 FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[])
                      AS u (conversation_id, seq, sender_id, client_msg_id, body)",
            )
            .bind(conv)
            .bind(seq)
            .bind(sender)
            .bind(id)
            .bind(body)
            .bind(MessageKind::Text as i32)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .context("insert a batch")?;
            tx.commit().await.context("commit a batch")?;
            latency.record(t.elapsed());
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
