//! History as its own process: sequences the Kafka ingress topic into
//! PostgreSQL and serves reads over gRPC. Per batch: apply in one
//! transaction, publish every outcome (acknowledged by the broker), then
//! commit the ingress offsets — a crash anywhere replays the batch, which
//! dedupe turns into the same seqs.

use crate::ingest::{apply_with_retry, published, trace_outcomes, trace_records, MAX_BATCH};
use crate::{LocalHistory, PostgresStore, Store};
use confab_common::config::{parse_or, required, ConfigError, Env};
use confab_common::grpc::ServiceToken;
use confab_common::shutdown::Signal;
use confab_common::transport::Transport;
use confab_common::validate::Limits;
use confab_kafka::{ensure_topics, BatchConsumer, GroupState, KafkaConfig, KafkaPublisher};
use confab_proto::internal::v1::{IngressRecord, OutcomeRecord};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

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
    pub limits: Limits,
    /// How long a batch waits for more records after the first.
    pub linger: Duration,
    /// What every caller of the read API must present
    /// (`CONFAB_SERVICE_TOKEN`, required: [`run`] refuses to start without
    /// one; only `confab-history migrate`, which serves nothing, has none).
    pub service_token: Option<ServiceToken>,
    /// The read API's TLS, client certificates and connection limits
    /// (`CONFAB_TLS_*`, `CONFAB_HTTP2_*`).
    pub transport: Transport,
}

impl HistoryConfig {
    /// Reads `CONFAB_*` variables; `CONFAB_SERVICE_TOKEN` is required.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let mut config = Self::from_env_for_migrate(env)?;
        // Certificate files are read now, so a bad one stops history before
        // it binds.
        config.transport = Transport::from_env(env, Transport::internal())?;
        // Last, so the variables above are reported first.
        config.service_token = Some(ServiceToken::from_env(env)?);
        Ok(config)
    }

    /// [`HistoryConfig::from_env`] without the service token, for
    /// `confab-history migrate` (which serves nothing).
    pub fn from_env_for_migrate(env: &dyn Env) -> Result<Self, ConfigError> {
        let defaults = Limits::default();
        Ok(Self {
            database_url: required(env, "CONFAB_DATABASE_URL", "a postgres:// URL")?,
            pool: parse_or(env, "CONFAB_DATABASE_POOL", 8, "a connection count")?,
            acquire_timeout: Duration::from_millis(parse_or(
                env,
                "CONFAB_DATABASE_ACQUIRE_TIMEOUT_MS",
                2000,
                "milliseconds",
            )?),
            kafka: KafkaConfig::from_env(env)?,
            limits: Limits {
                max_group_members: parse_or(
                    env,
                    "CONFAB_MAX_GROUP_MEMBERS",
                    defaults.max_group_members,
                    "a member count",
                )?,
                ..defaults
            },
            linger: Duration::from_millis(parse_or(
                env,
                "CONFAB_BATCH_LINGER_MS",
                2,
                "milliseconds",
            )?),
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
    run_with_state(config, listener, shutdown, None).await
}

/// [`run`], and hands the sequencer's consumer-group state (which ingress
/// partitions this process owns) to `state` once the consumer exists, so
/// tests can watch partitions move between processes.
pub async fn run_with_state(
    config: HistoryConfig,
    listener: TcpListener,
    shutdown: Signal,
    state: Option<oneshot::Sender<Arc<GroupState>>>,
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
    ensure_topics(&config.kafka).await?;
    let outcomes = KafkaPublisher::<OutcomeRecord>::new(&config.kafka)?;
    let consumer = BatchConsumer::<IngressRecord>::new(&config.kafka, GROUP)?;
    if let Some(tx) = state {
        // Nobody listening is fine.
        let _ = tx.send(consumer.state());
    }
    // Readiness follows the database and the broker (and the checks keep
    // the pool and lag gauges current); both end at shutdown.
    crate::health::spawn_database_check(postgres, config.database_url.clone(), shutdown.clone());
    confab_kafka::health::spawn_consumer_check(consumer.monitor(), shutdown.clone());
    let sequencer = tokio::spawn(sequence(
        store.clone(),
        consumer,
        outcomes.clone(),
        config.linger,
        shutdown.clone(),
    ));
    crate::grpc::serve_with_transport(
        Arc::new(LocalHistory::new(store)),
        Some(service_token),
        &config.transport,
        listener,
        shutdown,
    )
    .await?;
    let _ = sequencer.await;
    if let Err(e) = outcomes.flush(Duration::from_secs(5)).await {
        tracing::warn!(error = %e, "outcomes not flushed at shutdown; they are replayed from ingress");
    }
    Ok(())
}

/// The sequencer loop: batch → transaction → outcomes → commit.
pub async fn sequence(
    store: Arc<dyn Store>,
    mut consumer: BatchConsumer<IngressRecord>,
    outcomes: KafkaPublisher<OutcomeRecord>,
    linger: Duration,
    shutdown: Signal,
) {
    while let Some(batch) = consumer
        .next_batch_or_stop(MAX_BATCH, linger, &shutdown)
        .await
    {
        if !batch.is_empty() {
            let records: Vec<IngressRecord> = batch.payloads().cloned().collect();
            let traces = trace_records(&records);
            let mut results = apply_with_retry(0, store.as_ref(), &records).await;
            // Held until the outcomes are out: each span covers its publish.
            let publishing = trace_outcomes(&traces, &mut results);
            publish_all(&outcomes, results).await;
            published(&publishing);
        }
        consumer.commit_done(&batch).await;
    }
    consumer.close().await;
    tracing::info!("sequencer stopped");
}

/// Publishes every outcome, in order, retrying until the broker takes them
/// all: the batch is committed in PostgreSQL, so its outcomes must not be
/// lost, and its offsets are not committed before they are out.
///
/// A round sends the outcomes still owed concurrently: each send is enqueued
/// when first polled, in order, and the idempotent producer keeps that order
/// per partition. If any fails, the next round (after a backoff) sends again
/// everything from the first failure onward, in the same order, so a
/// conversation's later outcome never ends up in the log only ahead of an
/// earlier one. Outcomes after the failure that had gone through are
/// published twice; routers drop seqs they already routed.
async fn publish_all(outcomes: &KafkaPublisher<OutcomeRecord>, results: Vec<OutcomeRecord>) {
    let mut from = 0;
    let mut backoff = Duration::from_millis(50);
    while from < results.len() {
        let sends = results[from..]
            .iter()
            .map(|outcome| outcomes.publish_with(&outcome.conversation_id, outcome, &[]));
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
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
