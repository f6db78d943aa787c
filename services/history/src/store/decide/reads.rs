//! Read positions: where a member has read up to, and what is left unread.
//!
//! Seqs have no gaps, so the TEXT messages among a conversation's first `n`
//! seqs are `n` minus the SYSTEM events among them. A store keeps the
//! conversation's SYSTEM events (`system_count`) and, per member, the read
//! position with the SYSTEM events at or below it (`read_system`); then
//!
//! `unread = (last_seq - system_count) - (read_seq - read_system)`
//!
//! counts exactly the TEXT messages after the read position, at the same
//! cost whatever their number. A member's own messages never count: sending
//! one moves the sender's read position to it ([`DecidedSends::sender_reads`](super::DecidedSends::sender_reads)).

use super::{outcome, unstorable};
use confab_core::error::ChatError;
use confab_proto::internal::v1::{outcome_record, IngressRecord, OutcomeRecord, ReadCommand};
use confab_proto::v1::{Message, ReadState, Receipt};

/// A member's read position as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// The newest seq read.
    pub read_seq: u64,
    /// The SYSTEM events at or below `read_seq`.
    pub read_system: u64,
}

/// What deciding a read reads from the store, in the batch's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadFacts {
    /// The conversation's newest seq.
    pub last_seq: u64,
    /// The conversation's SYSTEM events.
    pub system_count: u64,
    /// The reader's position, if the reader is a member.
    pub position: Option<Position>,
    /// The SYSTEM events at or below the seq the read asks for.
    pub system_at_seq: u64,
}

impl ReadFacts {
    /// What `position` leaves unread.
    pub fn unread(&self, position: Position) -> u64 {
        let texts = self.last_seq.saturating_sub(self.system_count);
        let read_texts = position.read_seq.saturating_sub(position.read_system);
        texts.saturating_sub(read_texts)
    }
}

/// What a read comes to, unless it is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The position does not move (the read asked for less than it): the
    /// answer is the position as it is.
    Unchanged(ReadState),
    /// The read asked for the position it has: nothing moves, and its
    /// receipt goes out again. That is what a read replayed after a crash
    /// looks like (history committed it, then died before publishing the
    /// outcome), so the members still hear of it; for a client repeating a
    /// read, it repeats a receipt of a position the members have.
    Again(ReadState),
    /// The store writes `to`; the answer is the position it leaves.
    Moved {
        /// The new position.
        to: Position,
        /// The answer.
        state: ReadState,
    },
}

/// Decides `rec`, a read of `cmd.seq` by its actor, from `facts` (`None`:
/// no such conversation). A read position only moves forward, and never
/// past the newest seq.
pub fn read(
    rec: &IngressRecord,
    cmd: &ReadCommand,
    facts: Option<ReadFacts>,
) -> Result<Read, ChatError> {
    if let Some(err) = unstorable(rec) {
        return Err(err);
    }
    let conv_id = rec.conversation_id.as_str();
    let Some(facts) = facts else {
        return Err(ChatError::no_conversation(conv_id));
    };
    let Some(position) = facts.position else {
        return Err(ChatError::not_member(conv_id));
    };
    if cmd.seq > facts.last_seq {
        return Err(ChatError::InvalidArgument(format!(
            "seq {} is past the newest seq {} of conversation {conv_id}; mark read at most {}",
            cmd.seq, facts.last_seq, facts.last_seq
        )));
    }
    let state = |p: Position| ReadState {
        conversation_id: conv_id.to_string(),
        read_seq: p.read_seq,
        unread_count: facts.unread(p),
    };
    if cmd.seq < position.read_seq || cmd.seq == 0 {
        return Ok(Read::Unchanged(state(position)));
    }
    if cmd.seq == position.read_seq {
        return Ok(Read::Again(state(position)));
    }
    let to = Position {
        read_seq: cmd.seq,
        read_system: facts.system_at_seq,
    };
    Ok(Read::Moved {
        to,
        state: state(to),
    })
}

/// The facts a read decides on at its place in a run of sends
/// ([`super::Run::Sends`]): `stored`, as the batch found them before the
/// run was written, after `before` (the run's new messages ahead of the
/// read, in its conversation) and the run's earlier reads by the same
/// reader (`moved`: the position the last one that moved left): the
/// newest seq is the newest of them, and the reader's position is where
/// their own messages among them (sending reads everything before) or
/// those reads took it, whichever is further. Exactly what deciding the
/// records one by one reads.
pub fn at<'m>(
    stored: ReadFacts,
    before: impl IntoIterator<Item = &'m Message>,
    reader: &str,
    moved: Option<Position>,
) -> ReadFacts {
    let mut facts = stored;
    let further = |p: &mut Position, to: Position| {
        if to.read_seq > p.read_seq {
            *p = to;
        }
    };
    for m in before {
        facts.last_seq = facts.last_seq.max(m.seq);
        if let (true, Some(p)) = (m.sender_id == reader, facts.position.as_mut()) {
            let to = Position {
                read_seq: m.seq,
                read_system: stored.system_count,
            };
            further(p, to);
        }
    }
    if let (Some(p), Some(to)) = (facts.position.as_mut(), moved) {
        further(p, to);
    }
    facts
}

/// The outcome of a decided read: the read state and, when the position
/// moved (or a read of it is repeated), the receipt routers push to the
/// members (only to the reader's own sessions when the read was private).
pub fn read_outcome(rec: &IngressRecord, cmd: &ReadCommand, decided: Read) -> OutcomeRecord {
    let (state, moved) = match decided {
        Read::Unchanged(state) => (state, false),
        Read::Again(state) | Read::Moved { state, .. } => (state, true),
    };
    let receipt = moved.then(|| Receipt {
        conversation_id: rec.conversation_id.clone(),
        user_id: rec.actor_id.clone(),
        read_seq: state.read_seq,
    });
    OutcomeRecord {
        receipt,
        receipt_private: moved && cmd.private,
        ..outcome(rec, vec![], outcome_record::Result::ReadState(state))
    }
}
