//! The names of Confab's metrics, shared by every service and by the
//! dashboards and alerts in `deploy/` (which break if one is renamed), and
//! the bounded label values some of them take.

/// The variable naming the address of the metrics and health server
/// (`host:port`). Unset or empty: no server (and no recorder).
pub const LISTEN_VAR: &str = crate::vars::METRICS_LISTEN;

/// Counter: finished RPCs by `service`, `method` and `code`.
pub const GRPC_REQUESTS: &str = "confab_grpc_requests_total";
/// Histogram (seconds): time from a unary RPC's arrival to its status, by
/// `service` and `method`.
pub const GRPC_DURATION: &str = "confab_grpc_request_duration_seconds";
/// Counter: streaming RPCs opened, by `service` and `method`.
pub const GRPC_STREAMS_OPENED: &str = "confab_grpc_streams_opened_total";
/// Gauge: streaming RPCs open now, by `service` and `method`.
pub const GRPC_STREAMS_OPEN: &str = "confab_grpc_streams_open";
/// Gauge: each circuit breaker's state, by `breaker` (its name, one per
/// configured address): 0 closed, 1 half-open, 2 open.
pub const BREAKER_STATE: &str = "confab_breaker_state";
/// Counter: circuit breaker transitions, by `breaker` and `to` (`closed`,
/// `half_open`, `open`).
pub const BREAKER_TRANSITIONS: &str = "confab_breaker_transitions_total";
/// Counter: calls a circuit breaker refused without reaching its dependency
/// (open, or half-open with every probe slot taken), by `breaker`.
pub const BREAKER_REJECTED: &str = "confab_breaker_rejected_total";

/// Counter (gateway): ingress records produced, i.e. writes (sends and
/// membership changes) the broker acknowledged and history will decide.
pub const MESSAGES_ACCEPTED: &str = "confab_messages_accepted_total";
/// Counter (history): messages assigned a seq (sends and the system
/// messages of membership changes; replays of stored ones are not counted).
pub const MESSAGES_SEQUENCED: &str = "confab_messages_sequenced_total";
/// Counter (history): ingress records history refused, by `reason`
/// ([`REJECT_REASONS`], from the refusal's error code; [`STORE_FULL`]
/// when the store's disk was full).
pub const MESSAGES_REJECTED: &str = "confab_messages_rejected_total";
/// Counter (gateway): messages written to a client's `Connect` stream, live
/// or from history (resume, gap fill).
pub const MESSAGES_DELIVERED: &str = "confab_messages_delivered_total";
/// Histogram (seconds, gateway): from the moment a gateway accepted the
/// write (`accepted_at_ms`, carried in the ingress record, the outcome and
/// the router's delivery; that gateway's clock) to the moment a gateway
/// first writes the message to a stream live (the delivering gateway's
/// clock). A message without an acceptance time (from an older gateway)
/// counts from its `created_at` (history's clock).
pub const MESSAGE_E2E: &str = "confab_message_e2e_seconds";
/// The `reason` of writes refused because the store's disk was full.
pub const STORE_FULL: &str = "store_full";
/// The values of `reason` on [`MESSAGES_REJECTED`] that come from a
/// refusal's code (see [`reject_reason`]; and [`STORE_FULL`]).
pub const REJECT_REASONS: [&str; 5] = ["not_member", "not_found", "invalid", "limit", "other"];

/// Histogram (seconds): from handing a record to the Kafka producer to the
/// broker's acknowledgement, by `topic_kind` (`ingress`, `messages`).
pub const KAFKA_PRODUCE: &str = "confab_kafka_produce_seconds";
/// Counter: publishes that failed (timeout, broker down, refused), by
/// `topic_kind`.
pub const KAFKA_PRODUCE_ERRORS: &str = "confab_kafka_produce_errors_total";
/// Gauge: records in a partition past its group's committed offset (high
/// watermark − committed), by `group` and `partition`, for the partitions
/// the process's consumer owns (0 for partitions it owned before).
pub const KAFKA_CONSUMER_LAG: &str = "confab_kafka_consumer_lag_records";
/// Counter: partition assignments a consumer received (each rebalance ends
/// with one), by `group`.
pub const KAFKA_REBALANCES: &str = "confab_kafka_rebalances_total";

/// Histogram (records): the size of each batch history applied in one
/// transaction.
pub const DB_BATCH_RECORDS: &str = "confab_db_batch_records";
/// Histogram (seconds): one batch's transaction (with its deadlock
/// retries), by `result` (`ok`, `error`).
pub const DB_TRANSACTION: &str = "confab_db_transaction_seconds";
/// Gauge: connections of history's PostgreSQL pool, by `state` (`idle`,
/// `in_use`).
pub const DB_POOL_CONNECTIONS: &str = "confab_db_pool_connections";
/// Gauge: the most connections history's PostgreSQL pool opens.
pub const DB_POOL_MAX: &str = "confab_db_pool_connections_max";

/// Gauge (gateway): `Connect` sessions registered now (live delivery on).
pub const SESSIONS_OPEN: &str = "confab_sessions_open";
/// Gauge (gateway): users with at least one session on this gateway.
pub const USERS_ONLINE: &str = "confab_users_online";

/// Histogram (users): recipients of each message a router routes.
pub const ROUTER_FANOUT: &str = "confab_router_fanout_recipients";

/// Counter (router): receipts routed (read positions that moved), by
/// `visibility`: `members` (every member's sessions) or `private` (the
/// reader's own only).
pub const RECEIPTS: &str = "confab_receipts_total";

/// Counter (gateway): `read` frames that waited behind a read of the same
/// conversation on their stream and went merged into one read.
pub const READS_MERGED: &str = "confab_reads_merged_total";

/// Counter (gateway): typing indicators relayed from this gateway's
/// sessions, by `active` (`true`: started or renewed, `false`: stopped or
/// expired).
pub const TYPING_RELAYS: &str = "confab_typing_relays_total";

/// Counter (gateway): syncs answered, by `via` (`unary`: the `Sync` call,
/// `stream`: a `sync` frame) and `result` (`changed`: something changed,
/// `unchanged`: nothing, `error`).
pub const SYNC_CALLS: &str = "confab_sync_calls_total";

/// Histogram (gateway, seconds): time to answer a sync (every page of a
/// `sync` frame), by `via`.
pub const SYNC_DURATION: &str = "confab_sync_duration_seconds";

/// Counter (gateway): calls and stream sends refused by a per-user limit,
/// by `limit` (`messages`, `conversations`, `streams`).
pub const RATE_LIMITED: &str = "confab_rate_limited_total";

/// The `reason` of [`MESSAGES_REJECTED`] for a refusal with this gRPC code.
pub fn reject_reason(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::PermissionDenied => "not_member",
        tonic::Code::NotFound => "not_found",
        tonic::Code::InvalidArgument => "invalid",
        tonic::Code::ResourceExhausted => "limit",
        _ => "other",
    }
}

/// The canonical name of a gRPC code, as in the gRPC spec.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_reasons_come_from_the_code() {
        use tonic::Code;
        let reasons: Vec<&str> = [
            Code::PermissionDenied,
            Code::NotFound,
            Code::InvalidArgument,
            Code::ResourceExhausted,
            Code::Internal,
        ]
        .into_iter()
        .map(reject_reason)
        .collect();
        assert_eq!(reasons, REJECT_REASONS);
    }
}
