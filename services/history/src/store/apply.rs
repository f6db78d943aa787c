//! How a batch is applied, written once for every store: each run is
//! loaded, decided by [`decide`] and written, in order, in one transaction.
//! A store implements [`BatchTx`] with its own SQL (how it locks, how it
//! binds a run's arrays); the order of loads, decisions and writes is here.

use super::decide::ops::{self, Asked, Op, OpFacts, OpWrite, ReactionFacts, What};
use super::decide::reads::{self, Position, Read, ReadFacts};
use super::decide::{self, Change, ReplyFacts, Run, RunRead, SendFacts, SendRecord, Step};
use super::rows::{ChangeStamp, Shared, TargetRow};
use super::StoreError;
use async_trait::async_trait;
use confab_core::error::ChatError;
use confab_core::validate::SizeLimits;
use confab_proto::internal::v1::{
    ingress_record::Command, IngressRecord, OutcomeRecord, ReadCommand,
};
use confab_proto::v1::{Conversation, Message};
use std::collections::HashMap;

/// What [`BatchTx::read_facts`] finds: `None` when there is no such
/// conversation.
pub type FactsOfRead = Result<Option<ReadFacts>, StoreError>;

/// What applying a batch reads and writes, in the batch's transaction. A
/// store with concurrent writers locks what a decision reads before
/// reading it (see each method).
#[async_trait]
pub trait BatchTx: Send {
    /// The last seqs of those of `ids` (sorted) that exist; a store with
    /// concurrent writers locks them, in that order, and reads after the
    /// previous holder committed.
    async fn last_seqs(&mut self, ids: &[&str]) -> Result<HashMap<String, u64>, StoreError>;
    /// The stored sends with these (conversation, sender, client_msg_id)
    /// keys.
    async fn sent(&mut self, keys: &[(&str, &str, &str)]) -> Result<Vec<Message>, StoreError>;
    /// Those of these (conversation, user) pairs that are members.
    async fn members(
        &mut self,
        pairs: &[(&str, &str)],
    ) -> Result<Vec<(String, String)>, StoreError>;
    /// Inserts a run's new messages (TEXT, without membership events), and
    /// their words for search when `index` (see [`super::search`]).
    async fn insert_sent(
        &mut self,
        new: &[Message],
        now: i64,
        index: bool,
    ) -> Result<(), StoreError>;
    /// Sets the last seq of each conversation of `newest` (its newest new
    /// message, which becomes its newest TEXT message too: see
    /// [`DecidedSends::newest`](super::decide::DecidedSends::newest)),
    /// stored at `now` in change `stamp`, and keeps its member list
    /// ([`super::rows::member_list`]; the senders' positions have moved).
    async fn set_last_seqs(
        &mut self,
        newest: &[&Message],
        now: i64,
        stamp: ChangeStamp,
    ) -> Result<(), StoreError>;
    /// Draws the next change number of ingress partition `partition` (see
    /// [`super::rows::NEXT_CHANGE`]), locking its counter until the
    /// transaction ends.
    async fn next_change(&mut self, partition: i32) -> Result<i64, StoreError>;
    /// The conversation with its members (locked, where writers are
    /// concurrent), if it exists.
    async fn conversation(&mut self, id: &str) -> Result<Option<Conversation>, StoreError>;
    /// Makes `users` members of `id` with `role` (`Role` as stored).
    async fn add_members(
        &mut self,
        id: &str,
        users: &[String],
        role: i32,
    ) -> Result<(), StoreError>;
    /// Runs a statement both stores share; how many rows it affected.
    async fn run(&mut self, statement: Shared<'_>) -> Result<u64, StoreError>;
    /// What deciding a read of `seq` by `user` in conversation `id` reads
    /// (`None`: no such conversation), the conversation locked where
    /// writers are concurrent.
    async fn read_facts(&mut self, id: &str, user: &str, seq: u64) -> FactsOfRead;
    /// Moves each sender's read position to its newest new message, given
    /// as (conversation, sender, seq), in one statement.
    async fn sender_reads(&mut self, reads: &[(&str, &str, u64)]) -> Result<(), StoreError>;
    /// What the run's replies, as (conversation, seq, replier), need to
    /// know (see [`rows::reply_facts_sql`]); one per triple whose
    /// conversation exists.
    async fn reply_targets(
        &mut self,
        replies: &[(&str, u64, &str)],
    ) -> Result<Vec<ReplyFacts>, StoreError>;
    /// The message at `seq` of conversation `id` (see [`rows::TARGET`]).
    async fn target(&mut self, id: &str, seq: u64) -> Result<Option<TargetRow>, StoreError>;
    /// The reactions to the message at `seq` of conversation `id` as a
    /// reaction of `user` with `emoji` is decided on them (see
    /// [`rows::REACTION_FACTS`]).
    async fn reaction_facts(
        &mut self,
        id: &str,
        seq: u64,
        user: &str,
        emoji: &str,
    ) -> Result<ReactionFacts, StoreError>;
    /// Replaces the words search keeps for the message at `seq` of
    /// conversation `id`, whose body was `old`, with those of `new` (none:
    /// the message was deleted and its words are erased).
    async fn reindex(
        &mut self,
        id: &str,
        seq: u64,
        old: Option<&str>,
        new: Option<&str>,
    ) -> Result<(), StoreError>;
}

/// The change number of a batch: drawn from its partition's counter when
/// the batch first changes something, after the conversations it changes
/// are locked, and stamped on everything it changes. A batch that changes
/// nothing draws none.
pub struct Stamp {
    /// The ingress partition of the batch.
    partition: i32,
    /// The number, once drawn.
    drawn: Option<ChangeStamp>,
}

impl Stamp {
    /// No number drawn yet, for a batch of `partition`.
    pub fn new(partition: u32) -> Self {
        Self {
            partition: i32::try_from(partition).unwrap_or(i32::MAX),
            drawn: None,
        }
    }

    /// The batch's change number, drawn now if it has none yet.
    async fn get(&mut self, tx: &mut impl BatchTx) -> Result<ChangeStamp, StoreError> {
        if let Some(stamp) = self.drawn {
            return Ok(stamp);
        }
        let stamp = ChangeStamp {
            partition: self.partition,
            no: tx.next_change(self.partition).await?,
        };
        self.drawn = Some(stamp);
        Ok(stamp)
    }
}

/// Applies `batch`, read from ingress partition `partition`, in order in
/// `tx`, runs of sends at most `max_run` long, and returns one outcome per
/// record. Committing is the caller's.
pub async fn batch(
    tx: &mut impl BatchTx,
    partition: u32,
    batch: &[IngressRecord],
    max_run: usize,
    limits: &SizeLimits,
    now: i64,
) -> Result<Vec<OutcomeRecord>, StoreError> {
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut stamp = Stamp::new(partition);
    for run in decide::runs(batch, max_run) {
        match run {
            Run::Sends(run, reads) => {
                let index = limits.search_index;
                sends(tx, &run, &reads, now, index, &mut stamp, &mut outcomes).await?
            }
            Run::One(rec) => match (&rec.command, ops::asked(rec)) {
                (Some(Command::Read(cmd)), _) => {
                    outcomes.push(read(tx, rec, cmd, &mut stamp).await?)
                }
                (_, Some(asked)) => {
                    let index = limits.search_index;
                    outcomes.push(op(tx, rec, &asked, now, index, &mut stamp).await?)
                }
                _ => outcomes.push(change(tx, rec, limits, now, &mut stamp).await?),
            },
        }
    }
    Ok(outcomes)
}

/// Loads what [`decide::sends`] reads for `run` (last seqs first, so a
/// store that locks reads the rest after the lock), and what the reads
/// among its sends read, decides the run, writes its new messages (with
/// their words for search when `index`), then decides and writes each of
/// the reads on the state the sends before it leave ([`reads::at`]), and
/// appends one outcome per record, in record order.
async fn sends(
    tx: &mut impl BatchTx,
    run: &[SendRecord<'_>],
    run_reads: &[RunRead<'_>],
    now: i64,
    index: bool,
    stamp: &mut Stamp,
    outcomes: &mut Vec<OutcomeRecord>,
) -> Result<(), StoreError> {
    let mut facts = SendFacts {
        last_seqs: tx.last_seqs(&decide::conversations(run)).await?,
        ..SendFacts::default()
    };
    let keys = decide::keys(run, &facts.last_seqs);
    if !keys.is_empty() {
        for m in tx.sent(&keys).await? {
            facts.originals.insert(decide::key_of(&m), m);
        }
    }
    let pairs = decide::member_pairs(run, &facts.last_seqs, &facts.originals);
    if !pairs.is_empty() {
        facts.members.extend(tx.members(&pairs).await?);
    }
    let replies = decide::reply_targets(run, &facts.last_seqs, &facts.originals);
    if !replies.is_empty() {
        for found in tx.reply_targets(&replies).await? {
            if found.since_joined {
                facts.since_joined.insert(found.conversation_id.clone());
            }
            if let Some(target) = found.target {
                facts
                    .reply_targets
                    .insert((found.conversation_id, found.seq, found.replier), target);
            }
        }
    }
    let decided = decide::sends(run, &facts, now);
    // The reads' facts as the batch finds them before the run is written.
    let mut stored = Vec::with_capacity(run_reads.len());
    for (rec, cmd, _) in run_reads {
        stored.push(load_read(tx, rec, cmd).await?);
    }
    if !decided.new.is_empty() {
        tx.insert_sent(&decided.new, now, index).await?;
        // The senders' positions first: setting the last seqs keeps the
        // member lists.
        tx.sender_reads(&decided.sender_reads()).await?;
        let stamp = stamp.get(tx).await?;
        tx.set_last_seqs(&decided.newest(), now, stamp).await?;
    }
    let mut moved: HashMap<(&str, &str), Position> = HashMap::new();
    let mut read_outcomes = Vec::with_capacity(run_reads.len());
    for (&(rec, cmd, at), stored) in run_reads.iter().zip(stored) {
        let who = (rec.conversation_id.as_str(), rec.actor_id.as_str());
        let before = decided
            .new_before(at)
            .iter()
            .filter(|m| m.conversation_id == rec.conversation_id);
        let facts = stored.map(|f| reads::at(f, before, &rec.actor_id, moved.get(&who).copied()));
        let read = reads::read(rec, cmd, facts);
        if let Ok(Read::Moved { to, .. }) = &read {
            moved.insert(who, *to);
        }
        read_outcomes.push((at, write_read(tx, rec, cmd, read, stamp).await?));
    }
    let mut send_outcomes = Vec::with_capacity(run.len());
    decided.outcomes(run, &mut send_outcomes);
    let mut send_outcomes = send_outcomes.into_iter();
    let mut sends_out = 0;
    for (at, outcome) in read_outcomes {
        outcomes.extend(send_outcomes.by_ref().take(at - sends_out));
        sends_out = at;
        outcomes.push(outcome);
    }
    outcomes.extend(send_outcomes);
    Ok(())
}

/// Decides a read with [`reads::read`] on the reader's position as `tx`
/// reads it, and writes the new position when it moves.
async fn read(
    tx: &mut impl BatchTx,
    rec: &IngressRecord,
    cmd: &ReadCommand,
    stamp: &mut Stamp,
) -> Result<OutcomeRecord, StoreError> {
    let facts = load_read(tx, rec, cmd).await?;
    write_read(tx, rec, cmd, reads::read(rec, cmd, facts), stamp).await
}

/// What deciding read `rec` reads from `tx` (`None`: nothing to read, the
/// record cannot be stored, or no such conversation).
async fn load_read(tx: &mut impl BatchTx, rec: &IngressRecord, cmd: &ReadCommand) -> FactsOfRead {
    if decide::unstorable(rec).is_none() {
        tx.read_facts(&rec.conversation_id, &rec.actor_id, cmd.seq)
            .await
    } else {
        Ok(None)
    }
}

/// Writes what read `rec` was decided to (the new position, when it
/// moves, in the batch's change) and returns its outcome.
async fn write_read(
    tx: &mut impl BatchTx,
    rec: &IngressRecord,
    cmd: &ReadCommand,
    decided: Result<Read, ChatError>,
    stamp: &mut Stamp,
) -> Result<OutcomeRecord, StoreError> {
    let decided = match decided {
        Ok(decided) => decided,
        Err(err) => return Ok(decide::refused(rec, err)),
    };
    if let Read::Moved { to, .. } = &decided {
        tx.run(Shared::SetRead {
            id: &rec.conversation_id,
            user: &rec.actor_id,
            seq: to.read_seq,
            system: to.read_system,
        })
        .await?;
        let stamp = stamp.get(tx).await?;
        tx.run(Shared::Changed {
            id: &rec.conversation_id,
            stamp,
        })
        .await?;
    }
    Ok(reads::read_outcome(rec, cmd, decided))
}

/// Decides one record that is not a send with [`decide::change`] on its
/// conversation as `tx` reads it, and writes what it comes to.
async fn change(
    tx: &mut impl BatchTx,
    rec: &IngressRecord,
    limits: &SizeLimits,
    now: i64,
    stamp: &mut Stamp,
) -> Result<OutcomeRecord, StoreError> {
    let id = rec.conversation_id.as_str();
    let mut conv = if decide::reads_conversation(rec) {
        tx.conversation(id).await?
    } else {
        None
    };
    loop {
        let steps = match decide::change(rec, conv, limits, now) {
            Err(err) => return Ok(decide::refused(rec, err)),
            Ok(Change::Unchanged(conv)) => return Ok(decide::changed(rec, vec![], *conv)),
            Ok(Change::Write(steps)) => steps,
        };
        if write(tx, id, &steps, now, stamp).await? {
            let conv = require(tx, id).await?;
            return Ok(decide::changed(rec, decide::appended(steps), conv));
        }
        // A concurrent batch created the conversation and committed since
        // it was read: decide again on it (it exists now, so nothing more
        // is written).
        conv = Some(require(tx, id).await?);
    }
}

/// Writes `steps` for conversation `id`; false, with nothing written, if
/// the conversation to create exists already.
async fn write(
    tx: &mut impl BatchTx,
    id: &str,
    steps: &[Step],
    now: i64,
    stamp: &mut Stamp,
) -> Result<bool, StoreError> {
    for step in steps {
        match step {
            Step::CreateConversation {
                kind,
                title,
                visibility,
            } => {
                let (kind, title) = (*kind, title.as_str());
                let created = Shared::CreateConversation {
                    id,
                    kind,
                    title,
                    visibility: *visibility,
                    now,
                };
                // A conversation a concurrent writer created since it was
                // read: nothing is inserted.
                if tx.run(created).await? == 0 {
                    return Ok(false);
                }
            }
            Step::AddMembers { users, role } => tx.add_members(id, users, *role).await?,
            Step::SetRole { user, role } => {
                tx.run(Shared::SetRole {
                    id,
                    user,
                    role: *role,
                })
                .await?;
            }
            Step::SetTitle(title) => {
                tx.run(Shared::SetTitle { id, title }).await?;
            }
            Step::SetVisibility(visibility) => {
                tx.run(Shared::SetVisibility {
                    id,
                    visibility: *visibility,
                })
                .await?;
            }
            Step::RemoveMember(user) => {
                tx.run(Shared::CloseSpan { id, user }).await?;
                tx.run(Shared::RemoveMember { id, user }).await?;
                let stamp = stamp.get(tx).await?;
                tx.run(Shared::Departed { id, user, stamp }).await?;
            }
            Step::Append(message) => {
                tx.run(Shared::InsertMessage { message, now }).await?;
                let stamp = stamp.get(tx).await?;
                tx.run(Shared::EventAppended {
                    id,
                    seq: message.seq,
                    now,
                    stamp,
                })
                .await?;
            }
        }
    }
    if steps.iter().any(|s| matches!(s, Step::AddMembers { .. })) {
        tx.run(Shared::SeatNewMembers { id }).await?;
        tx.run(Shared::OpenSpans { id }).await?;
    }
    if steps.iter().any(|s| {
        matches!(
            s,
            Step::AddMembers { .. } | Step::SetRole { .. } | Step::RemoveMember(_)
        )
    }) {
        tx.run(Shared::KeepMemberList { id }).await?;
    }
    Ok(true)
}

/// The conversation, which this transaction knows exists.
async fn require(tx: &mut impl BatchTx, id: &str) -> Result<Conversation, StoreError> {
    tx.conversation(id).await?.ok_or_else(|| {
        StoreError::Corrupt(format!("conversation {id} vanished inside its transaction"))
    })
}

/// Loads what [`ops::op`] reads for an edit, a delete or a reaction (the
/// conversation first, locked where writers are concurrent), decides it
/// and writes its event and its change to the message it names (and to
/// its words for search when `index`).
async fn op(
    tx: &mut impl BatchTx,
    rec: &IngressRecord,
    asked: &Asked<'_>,
    now: i64,
    index: bool,
    stamp: &mut Stamp,
) -> Result<OutcomeRecord, StoreError> {
    let conv_id = rec.conversation_id.as_str();
    let mut facts = OpFacts::default();
    if decide::unstorable(rec).is_none() {
        facts.conversation = tx.conversation(conv_id).await?;
        if facts.conversation.is_some() {
            let key = asked.key(conv_id, &rec.actor_id);
            facts.original = tx
                .sent(&[(&key.0, &key.1, &key.2)])
                .await?
                .into_iter()
                .next();
            if facts.original.is_none() {
                facts.target = tx.target(conv_id, asked.seq).await?;
                if let What::React { emoji, .. } = asked.what {
                    facts.reactions = tx
                        .reaction_facts(conv_id, asked.seq, &rec.actor_id, emoji)
                        .await?;
                }
            }
        }
    }
    // What search indexed for the target: its words go when it changes.
    let indexed = facts.target.as_ref().map(|t| t.body.clone());
    let decided = match ops::op(rec, asked, facts, now) {
        Ok(decided) => decided,
        Err(err) => return Ok(decide::refused(rec, err)),
    };
    if let Op::New(event, write) = &decided {
        tx.run(Shared::InsertMessage {
            message: event,
            now,
        })
        .await?;
        let stamp = stamp.get(tx).await?;
        tx.run(Shared::EventAppended {
            id: conv_id,
            seq: event.seq,
            now,
            stamp,
        })
        .await?;
        let statements: Vec<Shared<'_>> = match write {
            OpWrite::Edit { seq, body } => vec![
                Shared::KeepVersion {
                    id: conv_id,
                    seq: *seq,
                },
                Shared::Edit {
                    id: conv_id,
                    seq: *seq,
                    body,
                    now,
                },
                Shared::LastTextEdited {
                    id: conv_id,
                    seq: *seq,
                    body,
                    now,
                },
            ],
            OpWrite::Delete { seq } => {
                let by = rec.actor_id.as_str();
                vec![
                    Shared::Erase {
                        id: conv_id,
                        seq: *seq,
                        by,
                        now,
                    },
                    Shared::EraseVersions {
                        id: conv_id,
                        seq: *seq,
                    },
                    Shared::EraseEdits {
                        id: conv_id,
                        seq: *seq,
                    },
                    Shared::EraseReactions {
                        id: conv_id,
                        seq: *seq,
                    },
                    Shared::LastTextDeleted {
                        id: conv_id,
                        seq: *seq,
                        by,
                        now,
                    },
                    Shared::NoLongerCounted { id: conv_id },
                    Shared::NoLongerCountedBelow {
                        id: conv_id,
                        seq: *seq,
                    },
                ]
            }
            OpWrite::React { seq, emoji, remove } => {
                let user = rec.actor_id.as_str();
                let (id, seq) = (conv_id, *seq);
                if *remove {
                    vec![
                        Shared::RemoveReaction {
                            id,
                            seq,
                            user,
                            emoji,
                        },
                        Shared::ReactionsCounted { id, seq, delta: -1 },
                    ]
                } else {
                    vec![
                        Shared::AddReaction {
                            id,
                            seq,
                            user,
                            emoji,
                            now,
                        },
                        Shared::ReactionsCounted { id, seq, delta: 1 },
                    ]
                }
            }
        };
        for statement in statements {
            tx.run(statement).await?;
        }
        // With search off the store keeps no words to replace (SQLite's
        // index is empty; PostgreSQL's are cleared, so the next start with
        // search on indexes the message again and a delete still erases).
        let old = indexed.as_deref().filter(|_| index);
        match write {
            OpWrite::Edit { seq, body } => {
                let new = Some(body.as_str()).filter(|_| index);
                tx.reindex(conv_id, *seq, old, new).await?
            }
            OpWrite::Delete { seq } => tx.reindex(conv_id, *seq, old, None).await?,
            OpWrite::React { .. } => {}
        }
    }
    Ok(ops::op_outcome(rec, decided))
}
