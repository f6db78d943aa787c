//! Every `CONFAB_*` environment variable, declared once: its name, its
//! default and what it means. Services read configuration through these
//! names (with [`crate::config`]); `docs/operations.md` lists the same
//! variables, and a test fails when the two disagree.

/// One configuration variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Var {
    /// The environment variable.
    pub name: &'static str,
    /// Its value when unset, as the operations guide states it.
    pub default: &'static str,
    /// Which processes read it and what it sets.
    pub meaning: &'static str,
}

macro_rules! vars {
    ($($(#[$doc:meta])* $id:ident = $name:literal, $default:literal, $meaning:literal;)*) => {
        $($(#[$doc])* pub const $id: &str = $name;)*
        /// Every variable, in the order of the operations guide.
        pub const ALL: &[Var] = &[$(Var { name: $name, default: $default, meaning: $meaning }),*];
    };
}

vars! {
    /// gRPC address of this process.
    LISTEN = "CONFAB_LISTEN", "127.0.0.1:50051",
        "all: gRPC address (router 127.0.0.1:50061, history 127.0.0.1:50071)";
    /// `confab dev`: directory of `confab.db`.
    DATA_DIR = "CONFAB_DATA_DIR", "./data", "confab dev: directory of confab.db";
    /// `confab dev`: partitions of the in-process log.
    PARTITIONS = "CONFAB_PARTITIONS", "4", "confab dev: partitions of the in-process log";
    /// HS256 secret for user tokens.
    JWT_SECRET = "CONFAB_JWT_SECRET", "required",
        "gateway, confab dev (which falls back to the public development secret): HS256 secret, at least 16 bytes";
    /// Public keys (PEM or JWKS) for RS256 / EdDSA user tokens.
    JWT_PUBLIC_KEYS = "CONFAB_JWT_PUBLIC_KEYS", "unset",
        "gateway: a PEM public key or a JWKS file, re-read when it changes";
    /// Required `iss` of user tokens.
    JWT_ISSUER = "CONFAB_JWT_ISSUER", "unset", "gateway: tokens must carry this iss";
    /// Required `aud` of user tokens.
    JWT_AUDIENCE = "CONFAB_JWT_AUDIENCE", "unset", "gateway: tokens must carry this aud";
    /// Clock skew allowed on `exp` and `nbf`.
    JWT_LEEWAY_SECS = "CONFAB_JWT_LEEWAY_SECS", "30", "gateway: clock skew allowed on exp and nbf";
    /// How often the key file is checked for changes.
    JWT_RELOAD_SECS = "CONFAB_JWT_RELOAD_SECS", "10", "gateway: how often the key file is checked";
    /// Largest message body.
    MAX_BODY_BYTES = "CONFAB_MAX_BODY_BYTES", "16384", "gateway: largest message body in bytes";
    /// Largest group.
    MAX_GROUP_MEMBERS = "CONFAB_MAX_GROUP_MEMBERS", "1000", "gateway, history: largest group";
    /// How long a write waits for its outcome.
    SEND_TIMEOUT_MS = "CONFAB_SEND_TIMEOUT_MS", "10000",
        "gateway: how long a write waits for its outcome before UNAVAILABLE";
    /// Live messages queued per session.
    SESSION_QUEUE = "CONFAB_SESSION_QUEUE", "4096",
        "gateway: live messages queued per session before it is disconnected";
    /// Certificate chain (PEM) of the process.
    TLS_CERT = "CONFAB_TLS_CERT", "unset: plaintext", "all: PEM certificate chain";
    /// Private key (PEM) of the process.
    TLS_KEY = "CONFAB_TLS_KEY", "unset: plaintext", "all: PEM private key";
    /// CA certificates (PEM) every client certificate must be signed by.
    TLS_CLIENT_CA = "CONFAB_TLS_CLIENT_CA", "unset", "all: require client certificates (mutual TLS)";
    /// CA certificates (PEM) internal servers are verified with.
    TLS_CA = "CONFAB_TLS_CA", "unset: plaintext links", "gateway, router: TLS to history and routers";
    /// The name internal servers' certificates must carry.
    TLS_SERVER_NAME = "CONFAB_TLS_SERVER_NAME", "the host of each address",
        "gateway, router: name expected in internal certificates";
    /// Concurrent calls per connection.
    HTTP2_MAX_STREAMS = "CONFAB_HTTP2_MAX_STREAMS", "100",
        "all: concurrent calls per connection (10000 on history and router)";
    /// Idle connections are closed after this long.
    HTTP2_IDLE_TIMEOUT_MS = "CONFAB_HTTP2_IDLE_TIMEOUT_MS", "300000",
        "all: a connection with no call open for this long is closed; 0: never";
    /// Largest decoded request message.
    MAX_MESSAGE_BYTES = "CONFAB_MAX_MESSAGE_BYTES", "1048576", "gateway: largest decoded request";
    /// Messages a user may send per second.
    RATE_MESSAGES_PER_SEC = "CONFAB_RATE_MESSAGES_PER_SEC", "20", "gateway: messages per user per second";
    /// Messages a user may send at once.
    RATE_MESSAGES_BURST = "CONFAB_RATE_MESSAGES_BURST", "twice the rate", "gateway: burst of messages per user";
    /// Concurrent `Connect` streams per user.
    MAX_STREAMS_PER_USER = "CONFAB_MAX_STREAMS_PER_USER", "8", "gateway: concurrent Connect streams per user";
    /// Conversations a user may create per minute.
    RATE_CONVERSATIONS_PER_MIN = "CONFAB_RATE_CONVERSATIONS_PER_MIN", "30",
        "gateway: conversations a user may create per minute";
    /// How long shutdown may drain.
    SHUTDOWN_GRACE_MS = "CONFAB_SHUTDOWN_GRACE_MS", "10000", "all: how long shutdown may drain";
    /// Log filter.
    LOG = "CONFAB_LOG", "info", "all: log filter (or RUST_LOG)";
    /// Log format.
    LOG_FORMAT = "CONFAB_LOG_FORMAT", "text", "all: json for one JSON object per line";
    /// Where spans are exported (OTLP/gRPC).
    OTLP_ENDPOINT = "CONFAB_OTLP_ENDPOINT", "unset: no export", "all: export spans to this http://host:port";
    /// Which spans are exported.
    OTLP_FILTER = "CONFAB_OTLP_FILTER", "confab=info", "all: which spans are exported";
    /// Kafka bootstrap servers.
    KAFKA_BROKERS = "CONFAB_KAFKA_BROKERS", "127.0.0.1:9092", "all distributed: Kafka bootstrap servers";
    /// Topic name prefix.
    KAFKA_PREFIX = "CONFAB_KAFKA_PREFIX", "confab", "all distributed: topics are <prefix>.ingress and <prefix>.messages";
    /// Partitions of each topic, when created.
    KAFKA_PARTITIONS = "CONFAB_KAFKA_PARTITIONS", "8", "all distributed: partitions of each topic, when created";
    /// Replication factor of each topic, when created.
    KAFKA_REPLICATION = "CONFAB_KAFKA_REPLICATION", "1", "all distributed: replication factor, when created";
    /// How long one record may take to be acknowledged.
    KAFKA_PRODUCE_TIMEOUT_MS = "CONFAB_KAFKA_PRODUCE_TIMEOUT_MS", "5000",
        "gateway, history: how long a record may take to be acknowledged";
    /// How long a silent consumer keeps its partitions.
    KAFKA_SESSION_TIMEOUT_MS = "CONFAB_KAFKA_SESSION_TIMEOUT_MS", "10000",
        "history, router: how long a silent consumer keeps its partitions";
    /// History addresses.
    HISTORY_ADDRS = "CONFAB_HISTORY_ADDRS", "required", "gateway, router: history addresses";
    /// Longest wait for one history call.
    HISTORY_TIMEOUT_MS = "CONFAB_HISTORY_TIMEOUT_MS", "5000", "gateway, router: longest wait for one history call";
    /// Failure rate that opens a circuit breaker.
    BREAKER_FAILURE_RATE = "CONFAB_BREAKER_FAILURE_RATE", "0.5", "gateway, router: failure rate that opens a breaker";
    /// Calls the failure rate is computed over.
    BREAKER_WINDOW = "CONFAB_BREAKER_WINDOW", "20", "gateway, router: calls the failure rate is computed over";
    /// Fewest calls before a breaker may open.
    BREAKER_MIN_CALLS = "CONFAB_BREAKER_MIN_CALLS", "5", "gateway, router: fewest calls before a breaker may open";
    /// How long an open breaker fails calls at once.
    BREAKER_OPEN_MS = "CONFAB_BREAKER_OPEN_MS", "5000", "gateway, router: how long an open breaker fails calls";
    /// Probe calls let through while half-open.
    BREAKER_HALF_OPEN_PROBES = "CONFAB_BREAKER_HALF_OPEN_PROBES", "1", "gateway, router: probes while half-open";
    /// Every router's address.
    ROUTER_ADDRS = "CONFAB_ROUTER_ADDRS", "required", "gateway: every router's address";
    /// This gateway's id.
    GATEWAY_ID = "CONFAB_GATEWAY_ID", "required", "gateway: this gateway's id, unique among gateways";
    /// The secret shared by the services of one deployment.
    SERVICE_TOKEN = "CONFAB_SERVICE_TOKEN", "required", "all distributed: the shared service token";
    /// History's database.
    DATABASE_URL = "CONFAB_DATABASE_URL", "required", "history: postgres:// URL";
    /// Database connections.
    DATABASE_POOL = "CONFAB_DATABASE_POOL", "8", "history: database connections";
    /// How long a call waits for a database connection.
    DATABASE_ACQUIRE_TIMEOUT_MS = "CONFAB_DATABASE_ACQUIRE_TIMEOUT_MS", "2000",
        "history: how long a call waits for a database connection";
    /// How long a batch waits for more ingress records.
    BATCH_LINGER_MS = "CONFAB_BATCH_LINGER_MS", "2", "history: how long a batch waits for more records";
    /// Address of the metrics and health server.
    METRICS_LISTEN = "CONFAB_METRICS_LISTEN", "unset", "all: host:port of /metrics, /livez and /readyz";
}

/// The variable in `name`'s table row, if any.
pub fn get(name: &str) -> Option<&'static Var> {
    ALL.iter().find(|v| v.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The variables named in `docs/operations.md`, with the lines that
    /// name them.
    fn documented() -> Vec<(String, String)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/operations.md");
        let text = std::fs::read_to_string(path).expect("docs/operations.md");
        let mut out = Vec::new();
        for line in text.lines() {
            let mut rest = line;
            while let Some(i) = rest.find("`CONFAB_") {
                let name: String = rest[i + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                rest = &rest[i + 1..];
                // `CONFAB_RATE_*` names a family, and `CONFAB_STACK_*` are
                // settings of `deploy/local/stack.sh`, not of a service.
                if name.ends_with('_') || name.starts_with("CONFAB_STACK_") {
                    continue;
                }
                out.push((name, line.to_string()));
            }
        }
        out
    }

    #[test]
    fn the_operations_guide_and_the_table_name_the_same_variables() {
        let docs = documented();
        let named: BTreeSet<&str> = docs.iter().map(|(n, _)| n.as_str()).collect();
        let table: BTreeSet<&str> = ALL.iter().map(|v| v.name).collect();
        let undocumented: Vec<_> = table.difference(&named).collect();
        let unknown: Vec<_> = named.difference(&table).collect();
        assert!(
            undocumented.is_empty() && unknown.is_empty(),
            "in the table but not in docs/operations.md: {undocumented:?}; \
             in docs/operations.md but not in the table: {unknown:?}"
        );
    }

    #[test]
    fn every_default_in_the_table_is_the_guides() {
        let docs = documented();
        for var in ALL {
            let rows: Vec<&String> = docs
                .iter()
                .filter(|(n, line)| n == var.name && line.starts_with('|'))
                .map(|(_, line)| line)
                .collect();
            assert!(
                !rows.is_empty(),
                "{} has no row in docs/operations.md",
                var.name
            );
            assert!(
                rows.iter().any(|row| row.contains(var.default)),
                "{}: the table's default {:?} is in none of its rows in docs/operations.md",
                var.name,
                var.default
            );
        }
    }

    #[test]
    fn names_are_unique() {
        let names: BTreeSet<&str> = ALL.iter().map(|v| v.name).collect();
        assert_eq!(names.len(), ALL.len());
        assert_eq!(get(HISTORY_ADDRS).map(|v| v.default), Some("required"));
    }
}
