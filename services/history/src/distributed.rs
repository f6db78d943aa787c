//! History as its own process: sequences the Kafka ingress topic into
//! PostgreSQL and serves reads over gRPC. Per ingress partition, in a lane
//! of its own: apply a batch in one transaction, publish every outcome
//! (acknowledged by the broker), then commit the partition's offset — a
//! crash anywhere replays the batch, which dedupe turns into the same seqs.

use crate::ingest::{
    apply_with_retry, published, trace_outcomes, trace_records, Traced, MAX_BATCH,
};
use crate::{LocalHistory, PostgresStore, Store};
use confab_core::config::{millis_or, parse_or, required, ConfigError, Env};
use confab_core::validate::SizeLimits;
use confab_kafka::{
    ensure_topics, Batch, BatchConsumer, Committer, GroupState, KafkaConfig, KafkaPublisher,
    Offsets,
};
use confab_layers::service_token::ServiceToken;
use confab_proto::internal::v1::{IngressRecord, OutcomeRecord};
use confab_runtime::process::ServiceConfig;
use confab_runtime::readiness::{watch_part, Readiness};
use confab_runtime::shutdown::{self, Signal};
use confab_runtime::transport::Transport;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Consumer group of the sequencers.
pub const GROUP: &str = "history";

/// Settings of a history process.
#[derive(Debug, Clone)]
pub struct HistoryConfig {
    /// PostgreSQL URL (`CONFAB_DATABASE_URL`).
    pub database_url: String,
    /// Pool size (`CONFAB_DATABASE_POOL`).
    pub pool: u32,
    /// How long a call waits for a database connection before it fails
    /// with UNAVAILABLE (`CONFAB_DATABASE_ACQUIRE_TIMEOUT_MS`, default 2000).
    pub acquire_timeout: Duration,
    /// The broker and topics.
    pub kafka: KafkaConfig,
    /// Group size limit.
    pub limits: SizeLimits,
    /// How long a batch waits for more records after the first.
    pub linger: Duration,
    /// What every caller of the read API must present
    /// (`CONFAB_SERVICE_TOKEN`, required: [`run`] refuses to start without
    /// one; only `confab-history migrate`, which serves nothing, has none).
    pub service_token: Option<ServiceToken>,
    /// The read API's TLS, client certificates and connection limits
    /// (`CONFAB_TLS_*`, `CONFAB_HTTP2_*`).
    pub transport: Transport,
    /// Whether this process should get traffic (see [`Readiness`]).
    pub readiness: Readiness,
    /// Which partitions its consumer owns (see [`GroupState::of`]).
    pub group: Arc<GroupState>,
}

impl ServiceConfig for HistoryConfig {
    const NAME: &'static str = "confab-history";
    const DEFAULT_LISTEN: &'static str = "127.0.0.1:50071";

    /// Reads `CONFAB_*` variables; `CONFAB_SERVICE_TOKEN` is required.
    fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let mut config = Self::from_env_for_migrate(env)?;
        // Certificate files are read now, so a bad one stops history before
        // it binds.
        config.transport = Transport::from_env(env, Transport::internal())?;
        // Last, so the variables above are reported first.
        config.service_token = Some(ServiceToken::from_env(env)?);
        Ok(config)
    }

    fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }
}

impl HistoryConfig {
    /// [`HistoryConfig::from_env`] without the service token, for
    /// `confab-history migrate` (which serves nothing).
    pub fn from_env_for_migrate(env: &dyn Env) -> Result<Self, ConfigError> {
        let defaults = SizeLimits::default();
        let database_url = required(env, confab_core::vars::DATABASE_URL, "a postgres:// URL")?;
        let pool = parse_or(
            env,
            confab_core::vars::DATABASE_POOL,
            8,
            "a connection count",
        )?;
        let acquire_timeout = millis_or(
            env,
            confab_core::vars::DATABASE_ACQUIRE_TIMEOUT_MS,
            Duration::from_millis(2000),
        )?;
        let kafka = KafkaConfig::from_env(env)?;
        Ok(Self {
            readiness: Readiness::new(),
            group: GroupState::of::<IngressRecord>(&kafka, GROUP),
            database_url,
            pool,
            acquire_timeout,
            kafka,
            limits: SizeLimits {
                max_group_members: parse_or(
                    env,
                    confab_core::vars::MAX_GROUP_MEMBERS,
                    defaults.max_group_members,
                    "a member count",
                )?,
                search_index: confab_core::config::search_index(env)?,
                ..defaults
            },
            linger: millis_or(env, confab_core::vars::BATCH_LINGER_MS, Duration::ZERO)?,
            service_token: None,
            transport: Transport::internal(),
        })
    }
}

/// Runs a history process until `shutdown`: the sequencer, and the read API
/// on `listener`.
pub async fn run(
    config: HistoryConfig,
    listener: TcpListener,
    shutdown: Signal,
) -> anyhow::Result<()> {
    let Some(service_token) = config.service_token.clone() else {
        anyhow::bail!("CONFAB_SERVICE_TOKEN is required to serve history");
    };
    let postgres = Arc::new(
        PostgresStore::connect_with_timeout(
            &config.database_url,
            config.limits,
            config.pool,
            config.acquire_timeout,
        )
        .await?,
    );
    let store: Arc<dyn Store> = postgres.clone();
    let topics = ensure_topics(&config.kafka).await?;
    let layout = OutcomeLayout::for_topics(topics);
    let outcomes = KafkaPublisher::<OutcomeRecord>::new(&config.kafka)?;
    let consumer = BatchConsumer::<IngressRecord>::with_state(&config.kafka, config.group.clone())?;
    // Readiness follows the database and the broker (and the checks keep
    // the pool and lag gauges current); both end at shutdown.
    let readiness = &config.readiness;
    crate::health::spawn_database_check(
        readiness,
        postgres,
        config.database_url.clone(),
        shutdown.clone(),
    );
    confab_kafka::health::spawn_consumer_check(readiness, consumer.monitor(), shutdown.clone());
    let sequencer = tokio::spawn(sequence(
        store.clone(),
        consumer,
        outcomes.clone(),
        layout,
        config.linger,
        shutdown.clone(),
    ));
    let (sequencing, failed) = watch_part("sequencer", sequencer, &config.readiness);
    crate::grpc::server(Arc::new(LocalHistory::new(store)))
        .service_token(Some(service_token))
        .transport(config.transport.clone())
        .readiness(config.readiness.clone())
        .serve(listener, shutdown::either(shutdown, failed))
        .await?;
    let sequenced = sequencing.await;
    if let Err(e) = outcomes.flush(Duration::from_secs(5)).await {
        tracing::warn!(error = %e, "outcomes not flushed at shutdown; they are replayed from ingress");
    }
    sequenced?;
    Ok(())
}

/// Why history's sequencer stopped before its shutdown.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0} (the records it had not committed are applied again, deduplicated, once history is back)"
)]
pub struct SequencerFailed(String);

/// Records read but not yet committed, over all lanes, before the reader
/// waits. The broker hands out a backlog a partition at a time, in runs of
/// up to about 11,000 records, so a bound per lane would hold the reader on
/// one busy lane while the others have nothing to do, and a bound smaller
/// than a few runs does the same: at 16 batches (4,096 records) one lane
/// worked at a time and ingest measured 20,800/s; at 128 batches several
/// lanes fill their transactions at once, 28,100/s (measured over five interleaved
/// pairs; docs/benchmarks-log.md). At about 1 KiB per record read, the bound is also what a
/// backlog can cost in memory: about 35 MiB.
pub const READ_AHEAD: usize = 128 * MAX_BATCH;

/// A lane's queued work: records of its partition, and their share of
/// [`READ_AHEAD`] (given back once they are committed).
type LaneWork = (Batch<IngressRecord>, OwnedSemaphorePermit);

/// The sequencer: the consumer reads batches, and every ingress partition's
/// records go, in offset order, to that partition's lane. A lane applies
/// what is queued for it in one transaction, publishes the outcomes
/// (acknowledged by the broker), then commits the partition's position: a
/// crash anywhere replays the uncommitted records, which dedupe turns into
/// the same seqs.
///
/// Lanes run concurrently. Records are keyed by conversation, so a
/// conversation's records are all in one partition and its outcomes stay in
/// seq order; two lanes never wait on each other's rows (and if the topic
/// is ever repartitioned, the transactions' ordered row locks keep them
/// correct). At shutdown the reader stops, every lane finishes what it was
/// given, and the consumer leaves the group.
///
/// A lane that panics stops the reader at once: the other lanes finish and
/// commit what they were given, the dead lane's records stay uncommitted
/// (they are read again by the partition's next owner), and this ends with
/// [`SequencerFailed`] naming the partition (`run` watches it with
/// [`watch_part`]).
pub async fn sequence(
    store: Arc<dyn Store>,
    mut consumer: BatchConsumer<IngressRecord>,
    outcomes: KafkaPublisher<OutcomeRecord>,
    layout: OutcomeLayout,
    linger: Duration,
    shutdown: Signal,
) -> Result<(), SequencerFailed> {
    let (lane_died, died) = shutdown::channel();
    let lane_died = Arc::new(lane_died);
    let stop = shutdown::either(shutdown, died);
    // One task commits for every lane, merging what they finished while
    // its previous commit was on the way: a commit per lane and batch would
    // be most of the broker's work at a few thousand messages a second.
    let (finished, positions) = mpsc::unbounded_channel();
    let commits = tokio::spawn(commit_positions(consumer.committer(), positions));
    let in_flight = Arc::new(Semaphore::new(READ_AHEAD));
    let mut lanes: HashMap<i32, mpsc::UnboundedSender<LaneWork>> = HashMap::new();
    let mut tasks = Vec::new();
    'read: while let Some(batch) = consumer.next_batch_or_stop(MAX_BATCH, linger, &stop).await {
        for (partition, part) in batch.split_by_partition() {
            // A part has at most MAX_BATCH records (an empty one, only
            // skipped records, still takes a permit until it is through).
            let wanted = u32::try_from(part.len().clamp(1, MAX_BATCH)).unwrap_or(1);
            let Ok(permit) = in_flight.clone().acquire_many_owned(wanted).await else {
                break 'read; // never closed
            };
            let lane = lanes.entry(partition).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                let lane = tokio::spawn(run_lane(
                    partition,
                    store.clone(),
                    rx,
                    OutcomeLog {
                        publisher: outcomes.clone(),
                        layout,
                    },
                    finished.clone(),
                ));
                let lane_died = lane_died.clone();
                tasks.push(tokio::spawn(async move {
                    let ended = lane.await;
                    let panicked = ended.is_err();
                    if panicked {
                        tracing::error!(
                            partition,
                            "sequencer lane panicked; stopping the sequencer"
                        );
                        lane_died.fire();
                    }
                    panicked.then_some(partition)
                }));
                tx
            });
            // Only a lane that panicked drops its queue (its watch stops
            // the reader).
            if lane.send((part, permit)).is_err() {
                break 'read;
            }
        }
    }
    drop(lanes);
    drop(finished);
    let mut dead = Vec::new();
    for task in tasks {
        if let Ok(Some(partition)) = task.await {
            dead.push(partition);
        }
    }
    let _ = commits.await;
    consumer.close().await;
    tracing::info!("sequencer stopped");
    match dead.as_slice() {
        [] => Ok(()),
        partitions => Err(SequencerFailed(format!(
            "the lane of ingress partition(s) {partitions:?} panicked"
        ))),
    }
}

/// One partition's lane: takes everything queued (up to [`MAX_BATCH`]
/// records) and applies it in one transaction; a second stage publishes the
/// outcomes in order and then reports the position as finished (to be
/// committed), while the next batch is being applied. Ends once the queue is
/// closed and drained.
///
/// A batch's outcomes are published only after the previous batch's, so
/// each conversation's outcomes reach the log in seq order. A crash after a
/// transaction and before its outcomes are out replays those records, as it
/// did with one stage: their positions are not committed until the outcomes
/// are acknowledged.
async fn run_lane(
    partition: i32,
    store: Arc<dyn Store>,
    mut queue: mpsc::UnboundedReceiver<LaneWork>,
    outcomes: OutcomeLog,
    finished: mpsc::UnboundedSender<Offsets>,
) {
    let log_partition = usize::try_from(partition).unwrap_or_default();
    let (applied, to_publish) = mpsc::channel::<Applied>(1);
    let publisher = tokio::spawn(publish_lane(to_publish, outcomes, finished));
    let mut carry: Option<LaneWork> = None;
    loop {
        let (mut batch, mut permits) = match carry.take() {
            Some(work) => work,
            None => match queue.recv().await {
                Some(work) => work,
                None => break,
            },
        };
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok((next, permit)) if batch.len() + next.len() <= MAX_BATCH => {
                    batch.append(next);
                    permits.merge(permit);
                }
                Ok(next) => {
                    carry = Some(next);
                    break;
                }
                Err(_) => break,
            }
        }
        let done = batch.offsets().clone();
        let records: Vec<IngressRecord> = batch.records.into_iter().map(|c| c.record).collect();
        let results = if records.is_empty() {
            // Only undecodable records: just their positions to commit,
            // after the batches before them.
            Vec::new()
        } else {
            let traces = trace_records(&records);
            let results = apply_with_retry(log_partition, store.as_ref(), &records).await;
            // Each span is held until its outcome is out.
            trace_outcomes(traces, results)
        };
        let next = Applied {
            results,
            done,
            permits,
        };
        if applied.send(next).await.is_err() {
            tracing::error!(partition, "outcome stage ended; stopping the lane");
            break;
        }
    }
    drop(applied);
    let _ = publisher.await;
    tracing::debug!(partition, "sequencer lane drained");
}

/// A batch applied by a lane, for its second stage.
struct Applied {
    /// Its outcomes, in record order, each with its `history.publish` span.
    results: Vec<Traced>,
    /// The positions to commit once the outcomes are out.
    done: Offsets,
    /// Its share of [`READ_AHEAD`], given back once the outcomes are out.
    permits: OwnedSemaphorePermit,
}

/// How a lane's outcomes are laid out on the messages log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeLayout {
    /// One record per outcome, keyed by its conversation.
    EachAlone,
    /// A batch's outcomes together, in as few records as fit in
    /// [`LANE_RECORD_BYTES`] (`OutcomeRecord.batched`), each keyed by its
    /// first outcome's conversation. Only where the two topics have as many
    /// partitions: then every conversation of an ingress partition has the
    /// messages partition of the same number, so the record lands where
    /// each of its outcomes would have alone, and each conversation's
    /// outcomes stay in one partition, in order. Most of the cost of a
    /// Kafka record (producing, acknowledging, storing, fetching and
    /// decoding it) is per record, not per byte.
    PerLane,
}

/// The most a record of a lane's outcomes holds (encoded), well under
/// the 1,000,000 bytes librdkafka and Kafka take by default; an outcome
/// larger than this on its own goes in a record of its own.
pub const LANE_RECORD_BYTES: usize = 256 * 1024;

impl OutcomeLayout {
    /// [`OutcomeLayout::PerLane`] where `topics` are aligned, else
    /// [`OutcomeLayout::EachAlone`] (with a warning: it works, at a cost).
    pub fn for_topics(topics: confab_kafka::TopicPartitions) -> Self {
        if topics.aligned() {
            return Self::PerLane;
        }
        tracing::warn!(
            ingress = topics.ingress,
            messages = topics.messages,
            "the ingress and messages topics have different partition counts; publishing one record per outcome"
        );
        Self::EachAlone
    }

    /// The records that carry `outcomes`, in order.
    pub fn records(self, outcomes: Vec<OutcomeRecord>) -> Vec<OutcomeRecord> {
        match self {
            Self::EachAlone => outcomes,
            Self::PerLane => lane_records(outcomes, LANE_RECORD_BYTES),
        }
    }
}

/// Where a lane publishes its outcomes: the messages log, in `layout`.
struct OutcomeLog {
    publisher: KafkaPublisher<OutcomeRecord>,
    layout: OutcomeLayout,
}

impl OutcomeLog {
    /// Publishes `outcomes`, in order, in the records of [`Self::layout`],
    /// retrying until the broker has them all (see [`publish_all`]).
    async fn publish(&self, outcomes: Vec<OutcomeRecord>) {
        publish_all(&self.publisher, &self.layout.records(outcomes)).await
    }
}

/// `outcomes`, in order, in records of at most `max_bytes` each: runs of
/// outcomes in one `batched` record keyed by its first outcome's
/// conversation, and an outcome alone (one that fills a record by itself,
/// or is the only one left) as itself.
pub fn lane_records(outcomes: Vec<OutcomeRecord>, max_bytes: usize) -> Vec<OutcomeRecord> {
    use prost::Message as _;
    let mut records = Vec::new();
    let mut run: Vec<OutcomeRecord> = Vec::new();
    let mut run_bytes = 0;
    let close = |run: &mut Vec<OutcomeRecord>, records: &mut Vec<OutcomeRecord>| match run.len() {
        0 => {}
        1 => records.extend(run.pop()),
        _ => records.push(OutcomeRecord {
            conversation_id: run[0].conversation_id.clone(),
            batched: std::mem::take(run),
            ..OutcomeRecord::default()
        }),
    };
    for outcome in outcomes {
        // Its bytes inside the record: the field's tag and length too.
        let len = outcome.encoded_len();
        let bytes = 1 + prost::length_delimiter_len(len) + len;
        if run_bytes + bytes > max_bytes {
            close(&mut run, &mut records);
            run_bytes = 0;
        }
        run_bytes += bytes;
        run.push(outcome);
    }
    close(&mut run, &mut records);
    records
}

/// A lane's second stage: publishes each applied batch's outcomes (in
/// order, acknowledged), then hands its positions to [`commit_positions`].
async fn publish_lane(
    mut applied: mpsc::Receiver<Applied>,
    outcomes: OutcomeLog,
    finished: mpsc::UnboundedSender<Offsets>,
) {
    while let Some(batch) = applied.recv().await {
        if !batch.results.is_empty() {
            // Each span is held until its outcome is out.
            let (results, spans): (Vec<OutcomeRecord>, Vec<tracing::Span>) = batch
                .results
                .into_iter()
                .map(|t| (t.outcome, t.span))
                .unzip();
            outcomes.publish(results).await;
            for span in &spans {
                published(span);
            }
        }
        drop(batch.permits);
        // The commit task outlives every lane.
        let _ = finished.send(batch.done);
    }
}

/// Commits the positions lanes report as finished (their outcomes are out),
/// all that arrived since the last commit in one, until every lane is done.
/// A position is committed only after the outcomes of every record before
/// it in its partition are out, because a lane reports its batches in order.
async fn commit_positions(committer: Committer, mut finished: mpsc::UnboundedReceiver<Offsets>) {
    while let Some(mut done) = finished.recv().await {
        while let Ok(more) = finished.try_recv() {
            done.merge(&more);
        }
        committer.commit_done(done).await;
    }
}

/// Publishes every record of outcomes (see [`OutcomeLayout`]), in order,
/// retrying until the broker takes them all: the batch is committed in
/// PostgreSQL, so its outcomes must not be lost, and its offsets are not
/// committed before they are out.
///
/// A round sends the outcomes still owed concurrently: each send is enqueued
/// when first polled, in order, and the idempotent producer keeps that order
/// per partition. If any fails, the next round (after a backoff) sends again
/// everything from the first failure onward, in the same order, so a
/// conversation's later outcome never ends up in the log only ahead of an
/// earlier one. Outcomes after the failure that had gone through are
/// published twice; routers drop seqs they already routed.
async fn publish_all(outcomes: &KafkaPublisher<OutcomeRecord>, results: &[OutcomeRecord]) {
    let mut from = 0;
    // At most 2 s between rounds (1 s doubled by jitter).
    let mut delays =
        confab_runtime::retry::backoff(Duration::from_millis(50), Duration::from_secs(1));
    while from < results.len() {
        let sends = results[from..]
            .iter()
            .map(|t| outcomes.publish_with(&t.conversation_id, t, &[]));
        let verdicts = futures::future::join_all(sends).await;
        let Some((failed, e)) = verdicts
            .into_iter()
            .enumerate()
            .find_map(|(i, v)| v.err().map(|e| (i, e)))
        else {
            return;
        };
        from += failed;
        tracing::warn!(error = %e, left = results.len() - from, "cannot publish outcomes; retrying from the first that failed");
        tokio::time::sleep(delays.next().unwrap_or_default()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_kafka::TopicPartitions;
    use confab_proto::internal::v1::outcome_record;
    use confab_proto::v1::Message;
    use prost::Message as _;

    fn outcome(conv: &str, seq: u64, body_bytes: usize) -> OutcomeRecord {
        let m = Message {
            conversation_id: conv.into(),
            seq,
            body: "x".repeat(body_bytes),
            ..Default::default()
        };
        OutcomeRecord {
            conversation_id: conv.into(),
            events: vec![m.clone()],
            result: Some(outcome_record::Result::Message(m)),
            ..Default::default()
        }
    }

    /// Every outcome the records carry, in order.
    fn carried(records: &[OutcomeRecord]) -> Vec<(String, u64)> {
        records
            .iter()
            .flat_map(|r| {
                if r.batched.is_empty() {
                    vec![r.clone()]
                } else {
                    r.batched.clone()
                }
            })
            .map(|o| (o.conversation_id, o.events[0].seq))
            .collect()
    }

    #[test]
    fn a_lanes_outcomes_share_records_that_keep_their_order_and_size() {
        let outcomes: Vec<OutcomeRecord> = (1..=10)
            .map(|i| outcome(if i % 2 == 0 { "a" } else { "b" }, i, 100))
            .collect();
        let all = carried(&outcomes);
        // Everything fits: one record, keyed by its first outcome.
        let one = lane_records(outcomes.clone(), LANE_RECORD_BYTES);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].conversation_id, "b");
        assert_eq!(
            (
                one[0].origin.clone(),
                one[0].events.len(),
                one[0].result.clone()
            ),
            (None, 0, None),
            "a record of outcomes carries nothing of its own"
        );
        assert_eq!(carried(&one), all);
        // A bound of about three outcomes: records of at most that size.
        let size = outcomes[0].encoded_len() + 3;
        let split = lane_records(outcomes.clone(), 3 * size);
        assert_eq!(carried(&split), all);
        assert!(split.len() >= 4, "{} records", split.len());
        for r in &split {
            assert!(r.encoded_len() <= 3 * size + 8, "{} bytes", r.encoded_len());
        }
        // A record of one would only wrap it: an outcome alone is itself,
        // and one larger than the bound goes alone.
        let big = lane_records(
            vec![
                outcome("a", 1, 100),
                outcome("a", 2, 5000),
                outcome("a", 3, 100),
            ],
            1000,
        );
        assert_eq!(big.len(), 3);
        assert!(big.iter().all(|r| r.batched.is_empty()));
        assert_eq!(
            carried(&big),
            vec![("a".into(), 1), ("a".into(), 2), ("a".into(), 3)]
        );
        assert!(lane_records(vec![], LANE_RECORD_BYTES).is_empty());
    }

    #[test]
    fn outcomes_share_records_only_where_the_topics_are_aligned() {
        let topics = |ingress, messages| TopicPartitions { ingress, messages };
        assert_eq!(
            OutcomeLayout::for_topics(topics(8, 8)),
            OutcomeLayout::PerLane
        );
        assert_eq!(
            OutcomeLayout::for_topics(topics(8, 16)),
            OutcomeLayout::EachAlone
        );
        let outcomes = vec![outcome("a", 1, 10), outcome("b", 2, 10)];
        assert_eq!(OutcomeLayout::EachAlone.records(outcomes.clone()), outcomes);
        assert_eq!(OutcomeLayout::PerLane.records(outcomes).len(), 1);
    }
}
