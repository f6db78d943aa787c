//! Programs Confab's users run against real processes on their machine,
//! built on the harness the tests share (`confab-tests`):
//!
//! - [`bench`]: the load generator and the benchmark suite (`confab-bench`,
//!   `make bench`).
//! - [`chaos`]: the chaos run (`confab-chaos`, `make chaos`), which kills and
//!   restarts every part of the distributed stack under load and checks
//!   that nothing was lost, repeated or reordered.
//!
//! Their smoke-sized runs are tests of the `confab-tests` crate
//! (`tests/tests/bench*.rs`, `tests/tests/chaos.rs`), so `make test` runs
//! them.

pub mod bench;
pub mod chaos;
