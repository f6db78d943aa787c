//! Edits, deletes and reactions: each names an earlier TEXT message of its
//! conversation, takes a seq of its own (an EDIT, DELETE or REACTION event,
//! never unread) and changes the message it names, which keeps its
//! current state on its row (docs/architecture.md, "Edits, deletes and
//! reactions").

use super::{outcome, replayed, unstorable, Key};
use crate::store::rows::TargetRow;
use crate::store::timestamp;
use confab_core::error::ChatError;
use confab_core::validate::{self, MAX_EMOJI_PER_MESSAGE, MAX_REACTIONS_PER_MEMBER};
use confab_proto::internal::v1::{
    ingress_record::Command, outcome_record, IngressRecord, OutcomeRecord,
};
use confab_proto::v1::{Conversation, Message, MessageKind};

/// A change to an earlier message, as its record asks for it.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    /// The retry key's client part.
    pub client_msg_id: &'a str,
    /// The message it changes.
    pub seq: u64,
    /// What it does.
    pub what: What<'a>,
}

/// What a change does to the message it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What<'a> {
    /// Replaces its body.
    Edit(&'a str),
    /// Deletes it.
    Delete,
    /// Adds (or with `remove`, takes back) a reaction of the actor's.
    React {
        /// The emoji, fully qualified.
        emoji: &'a str,
        /// Takes it back.
        remove: bool,
    },
}

/// The change `rec` asks for, if it is an edit, a delete or a reaction.
pub fn asked(rec: &IngressRecord) -> Option<Asked<'_>> {
    match rec.command.as_ref()? {
        Command::Edit(e) => Some(Asked {
            client_msg_id: &e.client_msg_id,
            seq: e.seq,
            what: What::Edit(&e.body),
        }),
        Command::Delete(d) => Some(Asked {
            client_msg_id: &d.client_msg_id,
            seq: d.seq,
            what: What::Delete,
        }),
        Command::React(r) => Some(Asked {
            client_msg_id: &r.client_msg_id,
            seq: r.seq,
            what: What::React {
                emoji: &r.emoji,
                remove: r.remove,
            },
        }),
        _ => None,
    }
}

impl Asked<'_> {
    /// Its retry key, for actor `actor` in conversation `conv`.
    pub fn key(&self, conv: &str, actor: &str) -> Key {
        (
            conv.to_string(),
            actor.to_string(),
            self.client_msg_id.to_string(),
        )
    }

    /// The kind of event it is stored as.
    pub fn kind(&self) -> MessageKind {
        match self.what {
            What::Edit(_) => MessageKind::Edit,
            What::Delete => MessageKind::Delete,
            What::React { .. } => MessageKind::Reaction,
        }
    }
}

/// The reactions to the message a reaction names, as the store counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReactionFacts {
    /// Distinct emoji on the message.
    pub emoji: u64,
    /// The actor's reactions to it.
    pub mine: u64,
    /// Whether the actor reacted with the asked emoji.
    pub mine_with: bool,
    /// Whether anyone reacted with the asked emoji.
    pub with: bool,
}

/// What deciding a change reads, in the batch's transaction.
#[derive(Debug, Clone, Default)]
pub struct OpFacts {
    /// The conversation with its members (`None`: it does not exist).
    pub conversation: Option<Conversation>,
    /// A stored message with the change's retry key.
    pub original: Option<Message>,
    /// The message at the change's seq.
    pub target: Option<TargetRow>,
    /// For a reaction: the reactions to the target.
    pub reactions: ReactionFacts,
}

/// What a decided change writes besides its event (which the store
/// appends like any event).
#[derive(Debug, Clone, PartialEq)]
pub enum OpWrite {
    /// Keep the target's body as a version, then replace it.
    Edit {
        /// The target.
        seq: u64,
        /// Its new body.
        body: String,
    },
    /// Make the target a tombstone, erase its versions, the bodies of its
    /// edits and its reactions, and stop counting it as unread.
    Delete {
        /// The target.
        seq: u64,
    },
    /// Add or take back the actor's reaction.
    React {
        /// The target.
        seq: u64,
        /// The emoji, fully qualified.
        emoji: String,
        /// Takes it back.
        remove: bool,
    },
}

/// A change, decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A retry of a stored change: its outcome is the stored event.
    Replay(Message),
    /// A new event (at the conversation's next seq) and its write.
    New(Message, OpWrite),
}

/// Decides `asked` (from `rec`) on `facts`, at `now`.
pub fn op(
    rec: &IngressRecord,
    asked: &Asked<'_>,
    facts: OpFacts,
    now: i64,
) -> Result<Op, ChatError> {
    if let Some(err) = unstorable(rec) {
        return Err(err);
    }
    if let What::React { emoji, .. } = asked.what {
        checked_emoji(emoji)?;
    }
    let conv_id = rec.conversation_id.as_str();
    let actor = rec.actor_id.as_str();
    if let Some(original) = facts.original {
        return same_write(original, asked.kind(), asked.client_msg_id).map(Op::Replay);
    }
    let Some(conv) = facts.conversation else {
        return Err(ChatError::no_conversation(conv_id));
    };
    if !conv.member_ids.iter().any(|m| m == actor) {
        return Err(ChatError::not_member(conv_id));
    }
    let seq = asked.seq;
    let target = match facts.target {
        Some(t) => t,
        None => {
            return Err(ChatError::NotFound(format!(
                "message {seq} does not exist in conversation {conv_id} (its newest seq is {})",
                conv.last_seq
            )))
        }
    };
    let verb = match asked.what {
        What::Edit(_) => "edited",
        What::Delete => "deleted",
        What::React { .. } => "reacted to",
    };
    if target.kind != MessageKind::Text as i32 {
        return Err(ChatError::InvalidArgument(format!(
            "seq {seq} of conversation {conv_id} is {}, not a message: only TEXT messages can be {verb}",
            kind_name(target.kind)
        )));
    }
    if target.deleted_at_ms != 0 {
        return Err(ChatError::FailedPrecondition(format!(
            "message {seq} of conversation {conv_id} was deleted; it cannot be {verb}"
        )));
    }
    let write = match asked.what {
        What::Edit(body) => {
            if target.sender_id != actor {
                return Err(ChatError::PermissionDenied(format!(
                    "message {seq} of conversation {conv_id} was sent by {}: you can only edit your own messages",
                    target.sender_id
                )));
            }
            OpWrite::Edit {
                seq,
                body: body.to_string(),
            }
        }
        What::Delete => {
            // Its sender, or an owner or admin of the group.
            if target.sender_id != actor && !super::manages(super::role_of(&conv, actor)) {
                return Err(ChatError::PermissionDenied(format!(
                    "message {seq} of conversation {conv_id} was sent by {}: only its sender, \
                     or an owner or admin of a group, may delete it",
                    target.sender_id
                )));
            }
            OpWrite::Delete { seq }
        }
        What::React { emoji, remove } => {
            let r = facts.reactions;
            if remove && !r.mine_with {
                return Err(ChatError::NotFound(format!(
                    "you have no {emoji} reaction to message {seq} of conversation {conv_id} to take back"
                )));
            }
            if !remove {
                if r.mine_with {
                    return Err(ChatError::AlreadyExists(format!(
                        "you already reacted {emoji} to message {seq} of conversation {conv_id}"
                    )));
                }
                if !r.with && r.emoji >= MAX_EMOJI_PER_MESSAGE {
                    return Err(ChatError::ResourceExhausted(format!(
                        "message {seq} already has reactions with {MAX_EMOJI_PER_MESSAGE} different emoji, \
                         the most a message may have; react with one of those"
                    )));
                }
                if r.mine >= MAX_REACTIONS_PER_MEMBER {
                    return Err(ChatError::ResourceExhausted(format!(
                        "you already have {MAX_REACTIONS_PER_MEMBER} reactions to message {seq}, \
                         the most a member may have; take one back first"
                    )));
                }
            }
            OpWrite::React {
                seq,
                emoji: emoji.to_string(),
                remove,
            }
        }
    };
    let (body, emoji, reaction_removed) = match asked.what {
        What::Edit(body) => (body.to_string(), String::new(), false),
        What::Delete => (String::new(), String::new(), false),
        What::React { emoji, remove } => (String::new(), emoji.to_string(), remove),
    };
    let event = Message {
        conversation_id: conv_id.to_string(),
        seq: conv.last_seq + 1,
        sender_id: actor.to_string(),
        client_msg_id: asked.client_msg_id.to_string(),
        body,
        created_at: Some(timestamp(now)),
        kind: asked.kind() as i32,
        target_seq: seq,
        emoji,
        reaction_removed,
        ..Message::default()
    };
    Ok(Op::New(event, write))
}

/// The stored write `original` with the retry key of a write of `kind`:
/// returned again when it is that kind of write, refused when the key was
/// used for another kind (a send, or another change).
pub fn same_write(
    original: Message,
    kind: MessageKind,
    client_msg_id: &str,
) -> Result<Message, ChatError> {
    if original.kind == kind as i32 {
        return Ok(original);
    }
    Err(ChatError::AlreadyExists(format!(
        "client_msg_id {client_msg_id:?} was used for {} at seq {} of this conversation; \
         choose a new client_msg_id for each write",
        kind_name(original.kind),
        original.seq
    )))
}

/// How a message kind is named in refusals.
pub fn kind_name(kind: i32) -> &'static str {
    match MessageKind::try_from(kind) {
        Ok(MessageKind::Text) => "a message",
        Ok(MessageKind::System) => "a SYSTEM event",
        Ok(MessageKind::Edit) => "an edit",
        Ok(MessageKind::Delete) => "a delete",
        Ok(MessageKind::Reaction) => "a reaction",
        _ => "an unknown kind of message",
    }
}

/// The emoji of a reaction record as history accepts it: the gateway
/// stores it fully qualified, and a record that is not is refused here
/// too.
pub fn checked_emoji(emoji: &str) -> Result<(), ChatError> {
    let qualified = validate::emoji(emoji)?;
    if qualified != emoji {
        return Err(ChatError::InvalidArgument(format!(
            "emoji {emoji:?} is not fully qualified; send {qualified:?}"
        )));
    }
    Ok(())
}

/// The outcome of a decided change.
pub fn op_outcome(rec: &IngressRecord, op: Op) -> OutcomeRecord {
    match op {
        Op::Replay(original) => replayed(rec, original),
        Op::New(event, _) => outcome(
            rec,
            vec![event.clone()],
            outcome_record::Result::Message(event),
        ),
    }
}
