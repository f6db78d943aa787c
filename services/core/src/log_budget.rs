//! Log lines that could come once per request, limited to one a second per
//! kind: the lines left out meanwhile are counted in the next one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// At most one line every [`LogBudget::EVERY_MS`] for one kind of line in
/// the whole process; keep one in a `static`.
#[derive(Debug)]
pub struct LogBudget {
    /// When the first line was asked for.
    start: OnceLock<Instant>,
    /// Milliseconds after `start` of the last line logged, plus one (0:
    /// none yet).
    last: AtomicU64,
    /// Lines left out since the last one logged.
    left_out: AtomicU64,
}

impl LogBudget {
    /// How often a line may be logged.
    pub const EVERY_MS: u64 = 1000;

    /// A budget with nothing logged yet.
    pub const fn new() -> Self {
        Self {
            start: OnceLock::new(),
            last: AtomicU64::new(0),
            left_out: AtomicU64::new(0),
        }
    }

    /// `Some(lines left out since the last)` when a line may be logged now;
    /// `None` (and the line counted as left out) otherwise.
    pub fn take(&self) -> Option<u64> {
        let now = self.start.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= Self::EVERY_MS;
        if !due
            || self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.left_out.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.left_out.swap(0, Ordering::Relaxed))
    }
}

impl Default for LogBudget {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_then_the_rest_are_counted() {
        let budget = LogBudget::new();
        assert_eq!(budget.take(), Some(0));
        assert_eq!(budget.take(), None);
        assert_eq!(budget.take(), None);
        assert_eq!(budget.left_out.load(Ordering::Relaxed), 2);
    }
}
