//! Where the broker is, what the topics are called and how long to wait.

use confab_core::config::{at_least, millis_at_least, ConfigError, Env};
use rdkafka::ClientConfig;
use std::time::Duration;

/// Settings shared by the producer, the consumers and topic creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub brokers: String,
    /// Topic names are `<prefix>.ingress` and `<prefix>.messages`.
    pub prefix: String,
    /// Partitions of each topic when [`crate::ensure_topics`] creates it.
    pub partitions: i32,
    /// Replication factor of each topic when [`crate::ensure_topics`]
    /// creates it (1 for a single local broker; 3 in production).
    pub replication: i32,
    /// How long a publish may take before it fails with UNAVAILABLE: the
    /// producer's `message.timeout.ms` (`delivery.timeout.ms`), so a down
    /// broker fails fast instead of after librdkafka's 5-minute default.
    pub produce_timeout: Duration,
    /// `session.timeout.ms` of consumers: how long a silent consumer keeps
    /// its partitions before the group gives them to another member.
    pub session_timeout: Duration,
    /// `max.poll.interval.ms` of consumers: a consumer that does not ask for
    /// its next batch within this leaves the group (its partitions move).
    pub max_poll_interval: Duration,
    /// Timeout of admin requests (topic creation) and metadata requests.
    pub admin_timeout: Duration,
    /// `linger.ms` of the producer: how long it waits to fill a batch
    /// (half a millisecond by default: docs/operations.md, "Latency
    /// settings").
    pub linger: Duration,
    /// `fetch.wait.max.ms` of consumers: how long a fetch waits for new
    /// records. Every message crosses two consumers on its way to a
    /// session, so a longer wait adds latency at low rates; a shorter one
    /// makes an idle consumer ask more often, and a broker that answers a
    /// waiting fetch by polling (nisshi) spends CPU on each ask
    /// (docs/operations.md, "Broker fetch wait").
    pub fetch_wait: Duration,
    /// `client.id`, seen in broker logs.
    pub client_id: String,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            prefix: "confab".into(),
            partitions: 8,
            replication: 1,
            produce_timeout: Duration::from_secs(5),
            session_timeout: Duration::from_secs(10),
            max_poll_interval: Duration::from_secs(300),
            admin_timeout: Duration::from_secs(30),
            linger: Duration::from_micros(500),
            fetch_wait: Duration::from_millis(10),
            client_id: "confab".into(),
        }
    }
}

impl KafkaConfig {
    /// The defaults with `brokers` set.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            ..Self::default()
        }
    }

    /// Reads `CONFAB_KAFKA_BROKERS`, `CONFAB_KAFKA_PREFIX`,
    /// `CONFAB_KAFKA_PARTITIONS`, `CONFAB_KAFKA_REPLICATION`,
    /// `CONFAB_KAFKA_PRODUCE_TIMEOUT_MS`, `CONFAB_KAFKA_SESSION_TIMEOUT_MS`,
    /// `CONFAB_KAFKA_FETCH_WAIT_MS` and `CONFAB_KAFKA_LINGER_MS`; unset
    /// ones keep their defaults.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let d = Self::default();
        let ms = |key: &str, default: Duration| millis_at_least(env, key, default, 1);
        let positive = |key: &str, default: i32| at_least(env, key, default, 1, "a number");
        Ok(Self {
            brokers: env
                .get(confab_core::vars::KAFKA_BROKERS)
                .unwrap_or(d.brokers),
            prefix: env.get(confab_core::vars::KAFKA_PREFIX).unwrap_or(d.prefix),
            partitions: positive(confab_core::vars::KAFKA_PARTITIONS, d.partitions)?,
            replication: positive(confab_core::vars::KAFKA_REPLICATION, d.replication)?,
            produce_timeout: ms(
                confab_core::vars::KAFKA_PRODUCE_TIMEOUT_MS,
                d.produce_timeout,
            )?,
            session_timeout: ms(
                confab_core::vars::KAFKA_SESSION_TIMEOUT_MS,
                d.session_timeout,
            )?,
            fetch_wait: ms(confab_core::vars::KAFKA_FETCH_WAIT_MS, d.fetch_wait)?,
            linger: confab_core::config::parse_in(
                env,
                confab_core::vars::KAFKA_LINGER_MS,
                d.linger.as_secs_f64() * 1000.0,
                0.0..=1000.0,
                "milliseconds from 0 to 1000 (fractions allowed)",
            )
            .map(|ms| Duration::from_secs_f64(ms / 1000.0))?,
            ..d
        })
    }

    /// `<prefix>.<kind>`: the topic of records of `kind` (see
    /// [`crate::KafkaRecord::TOPIC_KIND`]).
    pub fn topic(&self, kind: &str) -> String {
        format!("{}.{kind}", self.prefix)
    }

    /// `<prefix>.ingress`: writes from gateways to history.
    pub fn ingress_topic(&self) -> String {
        self.topic(<confab_proto::internal::v1::IngressRecord as crate::KafkaRecord>::TOPIC_KIND)
    }

    /// `<prefix>.messages`: history's outcomes, to routers.
    pub fn messages_topic(&self) -> String {
        self.topic(<confab_proto::internal::v1::OutcomeRecord as crate::KafkaRecord>::TOPIC_KIND)
    }

    /// Settings every client shares (public for the bench's baselines, which
    /// measure the broker with exactly Confab's settings).
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            // Reconnect to a restarted broker within a second, not ten.
            .set("reconnect.backoff.ms", "50")
            .set("reconnect.backoff.max.ms", "1000");
        c
    }

    /// The idempotent producer's settings.
    pub fn producer_config(&self) -> ClientConfig {
        let timeout_ms = millis(self.produce_timeout).max(1);
        let mut c = self.client_config();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            // The whole budget of one record, queueing and retries included.
            .set("message.timeout.ms", timeout_ms.to_string())
            .set("request.timeout.ms", timeout_ms.min(30_000).to_string())
            // A float in librdkafka: 0.5 is half a millisecond.
            .set(
                "linger.ms",
                (self.linger.as_secs_f64() * 1000.0).to_string(),
            )
            // Kafka's (Java client's) partitioner: murmur2 of the key.
            .set("partitioner", "murmur2_random");
        c
    }

    /// The settings of a consumer in `group`: nothing is committed or even
    /// stored automatically, and a new group starts from the beginning.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut c = self.client_config();
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // librdkafka's 500 ms default would add up to a second to each
            // delivery (see `fetch_wait`).
            .set("fetch.wait.max.ms", millis(self.fetch_wait).to_string())
            .set(
                "session.timeout.ms",
                millis(self.session_timeout).to_string(),
            )
            .set(
                "max.poll.interval.ms",
                millis(self.max_poll_interval).to_string(),
            );
        c
    }
}

/// `d` in whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn topic_names_follow_the_prefix() {
        let c = KafkaConfig::default();
        assert_eq!(c.ingress_topic(), "confab.ingress");
        assert_eq!(c.messages_topic(), "confab.messages");
        let c = KafkaConfig {
            prefix: "t1".into(),
            ..c
        };
        assert_eq!(c.ingress_topic(), "t1.ingress");
        assert_eq!(c.messages_topic(), "t1.messages");
    }

    #[test]
    fn producer_is_idempotent_and_bounded_by_the_produce_timeout() {
        let c = KafkaConfig {
            produce_timeout: Duration::from_millis(2500),
            ..KafkaConfig::new("h:1")
        };
        let p = c.producer_config();
        for (key, value) in [
            ("bootstrap.servers", "h:1"),
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("message.timeout.ms", "2500"),
            ("request.timeout.ms", "2500"),
        ] {
            assert_eq!(p.get(key), Some(value), "{key}");
        }
    }

    #[test]
    fn consumers_never_commit_or_store_offsets_on_their_own() {
        let c = KafkaConfig::default().consumer_config("history");
        assert_eq!(c.get("group.id"), Some("history"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("auto.offset.reset"), Some("earliest"));
    }

    #[test]
    fn environment_overrides_defaults_and_rejects_nonsense() {
        let mut env: HashMap<String, String> = HashMap::new();
        env.insert("CONFAB_KAFKA_BROKERS".into(), "k1:9092,k2:9092".into());
        env.insert("CONFAB_KAFKA_PARTITIONS".into(), "12".into());
        env.insert("CONFAB_KAFKA_PRODUCE_TIMEOUT_MS".into(), "1500".into());
        let c = KafkaConfig::from_env(&env).expect("valid");
        assert_eq!(c.brokers, "k1:9092,k2:9092");
        assert_eq!(c.prefix, "confab");
        assert_eq!(c.partitions, 12);
        assert_eq!(c.produce_timeout, Duration::from_millis(1500));

        env.insert("CONFAB_KAFKA_PARTITIONS".into(), "0".into());
        let err = KafkaConfig::from_env(&env).expect_err("0 partitions");
        assert_eq!(err.key, "CONFAB_KAFKA_PARTITIONS");
        env.insert("CONFAB_KAFKA_PARTITIONS".into(), "4".into());
        env.insert("CONFAB_KAFKA_PRODUCE_TIMEOUT_MS".into(), "soon".into());
        let err = KafkaConfig::from_env(&env).expect_err("not a number");
        assert_eq!(err.key, "CONFAB_KAFKA_PRODUCE_TIMEOUT_MS");
    }

    #[test]
    fn the_fetch_wait_reaches_the_consumers() {
        let default = KafkaConfig::default().consumer_config("router");
        assert_eq!(default.get("fetch.wait.max.ms"), Some("10"));
        let env: HashMap<String, String> =
            [("CONFAB_KAFKA_FETCH_WAIT_MS".to_string(), "100".to_string())].into();
        let c = KafkaConfig::from_env(&env).expect("valid");
        assert_eq!(c.fetch_wait, Duration::from_millis(100));
        assert_eq!(
            c.consumer_config("router").get("fetch.wait.max.ms"),
            Some("100")
        );
        let env: HashMap<String, String> =
            [("CONFAB_KAFKA_FETCH_WAIT_MS".to_string(), "0".to_string())].into();
        let err = KafkaConfig::from_env(&env).expect_err("no wait at all");
        assert_eq!(err.key, "CONFAB_KAFKA_FETCH_WAIT_MS");
    }

    #[test]
    fn the_linger_reaches_the_producer_in_fractions_of_a_millisecond() {
        let default = KafkaConfig::default().producer_config();
        assert_eq!(default.get("linger.ms"), Some("0.5"));
        let env: HashMap<String, String> =
            [("CONFAB_KAFKA_LINGER_MS".to_string(), "2.25".to_string())].into();
        let c = KafkaConfig::from_env(&env).expect("valid");
        assert_eq!(c.linger, Duration::from_micros(2250));
        assert_eq!(c.producer_config().get("linger.ms"), Some("2.25"));
        for bad in ["-1", "soon", "NaN", "1001"] {
            let env: HashMap<String, String> =
                [("CONFAB_KAFKA_LINGER_MS".to_string(), bad.to_string())].into();
            let err = KafkaConfig::from_env(&env).expect_err(bad);
            assert_eq!(err.key, "CONFAB_KAFKA_LINGER_MS");
        }
    }
}
