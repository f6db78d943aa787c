//! The process-wide Prometheus recorder: histogram buckets, descriptions,
//! and the process collector (CPU, memory, files, threads).

use confab_core::metrics::*;
use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Buckets of [`GRPC_DURATION`] and the other latency histograms, 1 ms to
/// 10 s (a send waits for a commit; its timeout is 10 s).
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of [`DB_BATCH_RECORDS`]: powers of two up to the largest batch
/// (256).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Buckets of [`ROUTER_FANOUT`], up to the largest group (1000 by default).
const FANOUT_BUCKETS: &[f64] = &[
    1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0,
];

/// Every histogram and its buckets (without buckets the exporter would
/// render a summary).
const HISTOGRAMS: &[(&str, &[f64])] = &[
    (GRPC_DURATION, DURATION_BUCKETS),
    (MESSAGE_E2E, DURATION_BUCKETS),
    (SYNC_DURATION, DURATION_BUCKETS),
    (KAFKA_PRODUCE, DURATION_BUCKETS),
    (DB_TRANSACTION, DURATION_BUCKETS),
    (DB_BATCH_RECORDS, BATCH_BUCKETS),
    (ROUTER_FANOUT, FANOUT_BUCKETS),
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder for this process (once: later calls,
/// e.g. from several servers in one test process, return the same handle).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            for (name, buckets) in HISTOGRAMS {
                builder = match builder.set_buckets_for_metric(Matcher::Full((*name).into()), buckets) {
                    Ok(b) => b,
                    Err(_) => unreachable!("no bucket list is empty"),
                };
            }
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if let Err(e) = metrics::set_global_recorder(recorder) {
                // Someone else's recorder came first: serve an empty page
                // rather than fail.
                tracing::warn!(error = %e, "another metrics recorder is installed; /metrics will be empty");
            }
            describe();
            process_collector().describe();
            handle
        })
        .clone()
}

/// The process's CPU time, resident memory, open files and threads
/// (`process_cpu_seconds_total`, `process_resident_memory_bytes`, … as the
/// Prometheus client libraries name them), read when `/metrics` is scraped.
pub(crate) fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// What each kind of metric is, for [`describe`].
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric: its name, kind, unit and help text.
const DESCRIPTIONS: &[(&str, Kind, Option<Unit>, &str)] = &[
    (GRPC_REQUESTS, Kind::Counter, None, "gRPC calls finished, by method and status code"),
    (GRPC_DURATION, Kind::Histogram, Some(Unit::Seconds), "time from a unary gRPC call's arrival to its status"),
    (GRPC_STREAMS_OPENED, Kind::Counter, None, "streaming gRPC calls opened"),
    (GRPC_STREAMS_OPEN, Kind::Gauge, None, "streaming gRPC calls open now"),
    (BREAKER_STATE, Kind::Gauge, None, "circuit breaker state: 0 closed, 1 half-open, 2 open"),
    (BREAKER_TRANSITIONS, Kind::Counter, None, "circuit breaker state changes, by the state changed to"),
    (BREAKER_REJECTED, Kind::Counter, None, "calls a circuit breaker failed fast without reaching its dependency"),
    (MESSAGES_ACCEPTED, Kind::Counter, None, "writes (sends, membership changes) a gateway produced to the ingress topic"),
    (MESSAGES_SEQUENCED, Kind::Counter, None, "messages history assigned a seq"),
    (MESSAGES_REJECTED, Kind::Counter, None, "writes history refused, by reason (not_member, not_found, invalid, limit, other)"),
    (MESSAGES_DELIVERED, Kind::Counter, None, "messages a gateway wrote to client streams (live and from history)"),
    (MESSAGE_E2E, Kind::Histogram, Some(Unit::Seconds), "from a gateway accepting a write to its message's first live delivery on a stream (gateways' clocks)"),
    (KAFKA_PRODUCE, Kind::Histogram, Some(Unit::Seconds), "from producing a record to the broker's acknowledgement, by topic kind"),
    (KAFKA_PRODUCE_ERRORS, Kind::Counter, None, "publishes to the broker that failed, by topic kind"),
    (KAFKA_CONSUMER_LAG, Kind::Gauge, Some(Unit::Count), "records past the group's committed offset in each partition this consumer owns"),
    (KAFKA_REBALANCES, Kind::Counter, None, "partition assignments a consumer received, by group"),
    (DB_BATCH_RECORDS, Kind::Histogram, Some(Unit::Count), "records in each batch history applied in one transaction"),
    (DB_TRANSACTION, Kind::Histogram, Some(Unit::Seconds), "time of one batch transaction (with deadlock retries), by result"),
    (DB_POOL_CONNECTIONS, Kind::Gauge, None, "connections of history's database pool, by state (idle, in_use)"),
    (DB_POOL_MAX, Kind::Gauge, None, "the most connections history's database pool opens"),
    (SESSIONS_OPEN, Kind::Gauge, None, "Connect sessions open on this gateway"),
    (USERS_ONLINE, Kind::Gauge, None, "users with at least one session on this gateway"),
    (ROUTER_FANOUT, Kind::Histogram, Some(Unit::Count), "recipients of each message a router routes"),
    (
        RECEIPTS,
        Kind::Counter,
        None,
        "receipts routed (read positions that moved), by visibility",
    ),
    (
        READS_MERGED,
        Kind::Counter,
        None,
        "read frames merged into a later read of the same conversation on their stream",
    ),
    (
        TYPING_RELAYS,
        Kind::Counter,
        None,
        "typing indicators relayed from this gateway's sessions, by active",
    ),
    (SYNC_CALLS, Kind::Counter, None, "syncs answered, by via (unary, stream) and result (changed, unchanged, error)"),
    (SYNC_DURATION, Kind::Histogram, Some(Unit::Seconds), "time to answer a sync (every page of a sync frame), by via"),
    (RATE_LIMITED, Kind::Counter, None, "calls and stream sends refused by a per-user limit, by limit"),
];

fn describe() {
    for &(name, kind, unit, text) in DESCRIPTIONS {
        match (kind, unit) {
            (Kind::Counter, None) => metrics::describe_counter!(name, text),
            (Kind::Counter, Some(unit)) => metrics::describe_counter!(name, unit, text),
            (Kind::Gauge, None) => metrics::describe_gauge!(name, text),
            (Kind::Gauge, Some(unit)) => metrics::describe_gauge!(name, unit, text),
            (Kind::Histogram, None) => metrics::describe_histogram!(name, text),
            (Kind::Histogram, Some(unit)) => metrics::describe_histogram!(name, unit, text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_twice_shares_the_handle() {
        let a = install();
        let b = install();
        metrics::counter!("confab_test_install_twice_total").increment(1);
        assert!(a.render().contains("confab_test_install_twice_total 1"));
        assert!(b.render().contains("confab_test_install_twice_total 1"));
    }
}
