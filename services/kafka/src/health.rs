//! Readiness checks on the broker: the check "kafka" of a service's
//! [`Readiness`], kept current by a task
//! that asks the broker for metadata every [`CHECK_EVERY`]. A consumer's
//! check also refreshes its lag gauges.

use crate::{ConsumerMonitor, KafkaPublisher, KafkaRecord};
use confab_runtime::readiness::{spawn_check, Readiness};
use confab_runtime::shutdown::Signal;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The name of the readiness check.
pub const CHECK: &str = "kafka";

/// How often the broker is checked (and consumer lag measured).
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Bound on each request of a check: a broker that does not answer a
/// metadata request within this counts as unreachable.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Keeps the check "kafka" current from a consumer (history, routers):
/// passing while the broker answers the consumer's metadata requests; each
/// check also sets [`confab_core::metrics::KAFKA_CONSUMER_LAG`] for the
/// partitions the consumer owns. Ends at `shutdown` (the consumer closing
/// makes the check fail, which does not matter by then).
pub fn spawn_consumer_check(
    readiness: &Readiness,
    monitor: ConsumerMonitor,
    shutdown: Signal,
) -> JoinHandle<()> {
    spawn_check(readiness, CHECK, CHECK_EVERY, shutdown, move || {
        let monitor = monitor.clone();
        async move {
            monitor
                .check(CHECK_TIMEOUT)
                .await
                .map(|_| ())
                .map_err(|e| format!("the broker does not answer: {e}"))
        }
    })
}

/// Keeps the check "kafka" current from a producer (gateways): passing
/// while the broker answers metadata requests on the producer's
/// connections.
pub fn spawn_publisher_check<T: KafkaRecord>(
    readiness: &Readiness,
    publisher: KafkaPublisher<T>,
    shutdown: Signal,
) -> JoinHandle<()> {
    spawn_check(readiness, CHECK, CHECK_EVERY, shutdown, move || {
        let publisher = publisher.clone();
        async move {
            publisher
                .probe(CHECK_TIMEOUT)
                .await
                .map_err(|e| format!("the broker does not answer: {e}"))
        }
    })
}
