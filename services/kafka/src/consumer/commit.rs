//! Committing: [`Committer`] commits positions from any task, only for the
//! partitions the consumer still owns; a refusal because the group
//! rebalanced drops the commit ([`CommitReport`]) rather than failing it.

use super::offsets::Offsets;
use crate::context::{GroupContext, GroupState};
use crate::Error;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;
use std::sync::{mpsc, Arc};
use std::time::Duration;
use tokio::sync::oneshot;

/// What a commit did, per partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitReport {
    /// Positions now committed in the group.
    pub committed: Offsets,
    /// Positions not committed because this consumer no longer owned the
    /// partition (or the group had moved on): the partition's next owner
    /// re-processes those records.
    pub dropped: Offsets,
}

/// Commit failures that mean "the group has moved on without you": the
/// partitions have (or will get) another owner, who re-reads them.
pub(super) fn group_moved_on(err: &KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::FencedInstanceId
                | RDKafkaErrorCode::AssignmentLost
                | RDKafkaErrorCode::State
        )
    )
}

/// One commit for a consumer's commit thread: the positions, and where its
/// result goes.
pub(super) struct CommitJob {
    tpl: TopicPartitionList,
    reply: oneshot::Sender<KafkaResult<()>>,
}

/// Starts the thread that runs `consumer`'s synchronous commits one at a
/// time, until every sender of the returned channel is dropped (then it
/// drops its handle on the consumer). A thread of its own rather than the
/// runtime's blocking pool: librdkafka's synchronous commit has no bound of
/// its own, and a Tokio runtime waits for its blocking tasks when it shuts
/// down, so one commit that never returned would hang the process's exit.
/// Here it holds up only this thread; callers stop waiting after their
/// timeout either way.
pub(super) fn commit_thread(
    consumer: Arc<StreamConsumer<GroupContext>>,
) -> Result<mpsc::Sender<CommitJob>, Error> {
    let (jobs, queue) = mpsc::channel::<CommitJob>();
    std::thread::Builder::new()
        .name("kafka-commit".into())
        .spawn(move || {
            for job in queue {
                // A caller that stopped waiting (a commit before this one
                // hung) has its records read again: committing its older
                // positions now could only move the group back.
                if job.reply.is_closed() {
                    continue;
                }
                let _ = job.reply.send(consumer.commit(&job.tpl, CommitMode::Sync));
            }
        })
        .map_err(|e| Error::Task(format!("cannot start the commit thread: {e}")))?;
    Ok(jobs)
}

/// Commits positions for a [`BatchConsumer`](super::BatchConsumer) from any
/// task, so that work on a batch can finish (and be committed) while the
/// consumer reads the next ones. The same rules as
/// [`BatchConsumer::commit`](super::BatchConsumer::commit): only partitions the
/// consumer still owns, and only once the work is durable.
#[derive(Clone)]
pub struct Committer {
    /// The consumer's commit thread ([`commit_thread`]).
    pub(super) commits: mpsc::Sender<CommitJob>,
    /// Which partitions it owns.
    pub(super) state: Arc<GroupState>,
    /// The group.
    pub(super) group: String,
    /// The topic.
    pub(super) topic: String,
    /// Bound on the blocking commit call.
    pub(super) request_timeout: Duration,
}

impl Committer {
    /// [`BatchConsumer::commit_done`](super::BatchConsumer::commit_done):
    /// commits `done`, logging a failure.
    pub async fn commit_done(&self, done: impl Into<Offsets>) {
        if let Err(e) = self.commit(done).await {
            tracing::warn!(group = %self.group, topic = %self.topic, error = %e, "cannot commit offsets; the records will be processed again");
        }
    }

    /// [`BatchConsumer::commit`](super::BatchConsumer::commit).
    pub async fn commit(&self, done: impl Into<Offsets>) -> Result<CommitReport, Error> {
        let mut owned = done.into();
        let state = &self.state;
        let mut dropped = owned.split_off_unless(|p| state.owns(p));
        if !dropped.is_empty() {
            self.state.count_dropped_commits(dropped.len());
            tracing::info!(group = %self.group, topic = %self.topic, dropped = ?dropped, "not committing positions of revoked partitions; their new owner re-processes them");
        }
        if owned.is_empty() {
            return Ok(CommitReport {
                committed: owned,
                dropped,
            });
        }
        let tpl = owned.to_tpl(&self.topic)?;
        let (reply, answer) = oneshot::channel();
        self.commits
            .send(CommitJob { tpl, reply })
            .map_err(|_| Error::Task("the consumer's commit thread has stopped".into()))?;
        let result = tokio::time::timeout(self.request_timeout, answer)
            .await
            .map_err(|_| {
                Error::Task(format!(
                    "commit did not finish within {:?}",
                    self.request_timeout
                ))
            })?
            .map_err(|_| Error::Task("the commit thread dropped the commit".into()))?;
        match result {
            Ok(()) => Ok(CommitReport {
                committed: owned,
                dropped,
            }),
            Err(e) if group_moved_on(&e) => {
                self.state.count_dropped_commits(owned.len());
                tracing::info!(group = %self.group, topic = %self.topic, error = %e, positions = ?owned, "commit refused: the group rebalanced; the partitions' owner re-processes these records");
                dropped.merge(&owned);
                Ok(CommitReport {
                    committed: Offsets::new(),
                    dropped,
                })
            }
            Err(e) => Err(e.into()),
        }
    }
}
