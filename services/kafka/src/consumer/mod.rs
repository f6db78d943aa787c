//! The consumer-group consumer the sequencers (group "history", ingress
//! topic) and routers (group "router", messages topic) read batches with.
//!
//! Offsets are committed only by [`BatchConsumer::commit`], with offsets the
//! caller got from [`BatchConsumer::next_batch`] and hands back once its work
//! is durable; nothing is committed or stored automatically. A commit covers
//! only partitions this consumer still owns: after a rebalance the new owner
//! re-reads from the last commit, so a dropped commit means re-processing
//! (deduplicated downstream), never a lost record.
//!
//! Modules: `batch_consumer` (joining the group and reading batches),
//! `consumed` (one decoded record), `batch` and `offsets` (what a read
//! returns and the positions to commit), `commit` (committing from any
//! task), `monitor` (lag and broker checks from another task).

mod batch;
mod batch_consumer;
mod commit;
mod consumed;
mod monitor;
mod offsets;
#[cfg(test)]
mod tests;

pub use batch::Batch;
pub use batch_consumer::BatchConsumer;
pub use commit::{CommitReport, Committer};
pub use consumed::Consumed;
pub use monitor::ConsumerMonitor;
pub use offsets::Offsets;
