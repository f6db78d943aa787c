//! What the chaos run's checker found, and how it is printed: one line per
//! invariant, `ok` or `FAIL`.

use confab_tests::procs::Stopped;
use std::fmt;
use std::time::Duration;

/// What the checker found. Every count but the informational ones must be 0.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Sends acknowledged with a seq.
    pub acknowledged: u64,
    /// Sends given up at the end without an ack (allowed: their fate is
    /// unknown to the client, and either outcome is correct).
    pub unacknowledged: u64,
    /// Messages stored in PostgreSQL.
    pub stored: u64,
    /// Messages received over `Connect` streams.
    pub delivered: u64,
    /// Deliveries PostgreSQL says were due (member × message).
    pub due: u64,
    /// Acknowledged, but not in PostgreSQL under that seq with that key.
    pub acked_missing: u64,
    /// One `client_msg_id` stored twice, or acknowledged with two seqs.
    pub stored_twice: u64,
    /// A stream carried a seq it had already carried (before or after a resume).
    pub delivered_twice: u64,
    /// Holes in a conversation's seqs in PostgreSQL.
    pub store_gaps: u64,
    /// A stream jumped over seqs (later filled or not).
    pub delivery_gaps: u64,
    /// A stream carried a seq lower than one it had already carried.
    pub out_of_order: u64,
    /// Due deliveries never received once everything was back.
    pub undelivered: u64,
    /// A delivered message whose content differs from what is stored.
    pub mismatched: u64,
    /// Calls that failed with a status a retry cannot fix.
    pub unexpected_errors: u64,
    /// Examples of those errors.
    pub error_examples: Vec<String>,
    /// Graceful stops that did not exit 0 within the grace period.
    pub bad_stops: u64,
    /// Graceful stops and how long each took.
    pub stops: Vec<(String, Stopped)>,
    /// The longest time one client could not get a send acknowledged.
    pub longest_outage: Duration,
    /// The bound on that.
    pub max_outage: Duration,
    /// The slowest answer to any call (send or read), OK or not.
    pub slowest_call: Duration,
    /// The bound on that.
    pub max_call: Duration,
    /// History reads answered OK, and answered UNAVAILABLE.
    pub reads: (u64, u64),
    /// Faults applied, in order, with the time each target was down.
    pub faults: Vec<(String, Duration)>,
    /// `Connect` streams opened again after breaking.
    pub reconnects: u64,
    /// How long the load phase ran.
    pub load_time: Duration,
    /// What was read of every process, when the run read it.
    pub samples: Option<super::sample::Samples>,
    /// Series that grew without levelling off after the faults.
    pub growth: Vec<String>,
}

impl Report {
    /// The sum of every violation.
    pub fn violations(&self) -> u64 {
        self.acked_missing
            + self.stored_twice
            + self.delivered_twice
            + self.store_gaps
            + self.delivery_gaps
            + self.out_of_order
            + self.undelivered
            + self.mismatched
            + self.unexpected_errors
            + self.bad_stops
            + self.growth.len() as u64
            + u64::from(self.longest_outage > self.max_outage)
            + u64::from(self.slowest_call > self.max_call)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "faults:")?;
        for (fault, down) in &self.faults {
            writeln!(f, "  {fault} (down {} ms)", down.as_millis())?;
        }
        for (who, stop) in &self.stops {
            let status = stop
                .status
                .map_or("killed after the limit".to_string(), |s| s.to_string());
            writeln!(
                f,
                "  graceful stop of {who}: {status} in {} ms",
                stop.took.as_millis()
            )?;
        }
        let secs = self.load_time.as_secs_f64().max(0.001);
        writeln!(
            f,
            "traffic: {} acknowledged ({:.0}/s), {} unacknowledged at the end, {} stored, {} delivered of {} due, {} stream reconnects",
            self.acknowledged,
            self.acknowledged as f64 / secs,
            self.unacknowledged,
            self.stored,
            self.delivered,
            self.due,
            self.reconnects
        )?;
        writeln!(
            f,
            "reads: {} answered, {} UNAVAILABLE (failing fast while a dependency was down)",
            self.reads.0, self.reads.1
        )?;
        let line = |f: &mut fmt::Formatter<'_>, name: &str, n: u64, detail: String| {
            let verdict = if n == 0 { "ok  " } else { "FAIL" };
            writeln!(f, "{verdict} {name}: {n}{detail}")
        };
        line(
            f,
            "acknowledged-but-missing",
            self.acked_missing,
            format!(" (of {} acknowledged)", self.acknowledged),
        )?;
        line(
            f,
            "duplicated",
            self.stored_twice + self.delivered_twice,
            format!(
                " (stored or acknowledged twice: {}, delivered twice: {})",
                self.stored_twice, self.delivered_twice
            ),
        )?;
        line(
            f,
            "gaps",
            self.store_gaps + self.delivery_gaps,
            format!(
                " (in storage: {}, in delivery: {})",
                self.store_gaps, self.delivery_gaps
            ),
        )?;
        line(
            f,
            "out-of-order deliveries",
            self.out_of_order,
            String::new(),
        )?;
        line(
            f,
            "undelivered",
            self.undelivered,
            format!(" (of {} due)", self.due),
        )?;
        line(
            f,
            "delivered content differs from storage",
            self.mismatched,
            String::new(),
        )?;
        line(
            f,
            "unexpected errors",
            self.unexpected_errors,
            if self.error_examples.is_empty() {
                String::new()
            } else {
                format!(" (e.g. {})", self.error_examples.join("; "))
            },
        )?;
        line(
            f,
            "graceful stops not clean within the grace period",
            self.bad_stops,
            format!(" (of {})", self.stops.len()),
        )?;
        for (name, took, limit) in [
            (
                "longest time a client could not send",
                self.longest_outage,
                self.max_outage,
            ),
            ("slowest answer to a call", self.slowest_call, self.max_call),
        ] {
            let detail = format!(
                " violation ({} ms; limit {} ms)",
                took.as_millis(),
                limit.as_millis()
            );
            line(f, name, u64::from(took > limit), detail)?;
        }
        if let Some(samples) = &self.samples {
            writeln!(
                f,
                "readings (first, last, highest; the memory of {} is a bounded cache, shown and not judged):",
                samples.caches.iter().cloned().collect::<Vec<_>>().join(", ")
            )?;
            for line in samples.summary() {
                writeln!(f, "  {line}")?;
            }
            line(
                f,
                "growth that did not level off",
                self.growth.len() as u64,
                if self.growth.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", self.growth.join("; "))
                },
            )?;
        }
        write!(f, "violations: {}", self.violations())
    }
}
