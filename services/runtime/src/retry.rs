//! One backoff for every loop that retries until something comes back (a
//! router link, the database, the broker, history): capped exponential
//! delays with jitter, from `backon`, so that processes that lost the same
//! dependency do not all come back at the same instant.

use std::time::Duration;

/// Delays that start at `min` and double up to `max`, each stretched by a
/// random 0–100% (so the longest wait is twice `max`); never exhausted.
pub fn backoff(
    min: Duration,
    max: Duration,
) -> impl Iterator<Item = Duration> + Send + Sync + Unpin {
    use backon::BackoffBuilder as _;
    let delays = backon::ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max.max(min))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build();
    // Never exhausted without a limit; the fallback only keeps the type
    // infinite.
    delays.chain(std::iter::repeat(max.max(min)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_at_most_as_much_jitter() {
        let (min, max) = (Duration::from_millis(10), Duration::from_millis(80));
        let delays: Vec<Duration> = backoff(min, max).take(8).collect();
        let bases = [10, 20, 40, 80, 80, 80, 80, 80].map(Duration::from_millis);
        for (d, base) in delays.iter().zip(bases) {
            assert!(*d >= base && *d <= base * 2, "{d:?} for a base of {base:?}");
        }
    }
}
