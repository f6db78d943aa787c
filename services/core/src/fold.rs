//! How a client that follows a conversation's messages in seq order (live
//! frames, `resume`, `GetHistory` pages) keeps the current view: an EDIT,
//! DELETE or REACTION event changes the TEXT message it names, and is
//! itself kept at its own seq. Applying every seq from a snapshot of
//! `GetHistory` gives what a later `GetHistory` returns (tests check this
//! equality after random operations; docs/architecture.md, "Edits,
//! deletes and reactions"). History keeps the same state on its rows; this
//! is the rule for those who only see the log.

use crate::validate::preview;
use confab_proto::v1::{Message, MessageKind, ReactionCount, ReplyPreview, Tombstone};
use std::collections::BTreeMap;

/// What a reply shows of the message it replies to, from that message's
/// sender and current body: the start of the body, or that it was deleted
/// (its body is gone). History and clients build previews with this.
pub fn preview_of(sender_id: &str, body: &str, deleted: bool) -> ReplyPreview {
    ReplyPreview {
        sender_id: sender_id.to_string(),
        body: if deleted {
            String::new()
        } else {
            preview(body)
        },
        deleted,
    }
}

/// A conversation's messages as `me` sees them, by seq.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    me: String,
    messages: BTreeMap<u64, Message>,
}

impl View {
    /// An empty view for user `me` (whose reactions are marked `reacted`).
    pub fn new(me: &str) -> Self {
        Self {
            me: me.to_string(),
            messages: BTreeMap::new(),
        }
    }

    /// The messages, in seq order.
    pub fn messages(&self) -> impl Iterator<Item = &Message> {
        self.messages.values()
    }

    /// Applies the message at the next seq (or one already applied again,
    /// which changes nothing: a repeat is not applied twice).
    pub fn apply(&mut self, m: Message) {
        if self.messages.contains_key(&m.seq) {
            return;
        }
        let kind = MessageKind::try_from(m.kind).unwrap_or(MessageKind::Unspecified);
        match kind {
            MessageKind::Edit => self.edited(&m),
            MessageKind::Delete => self.deleted(&m),
            MessageKind::Reaction => self.reacted(&m),
            MessageKind::Text | MessageKind::System | MessageKind::Unspecified => {}
        }
        self.messages.insert(m.seq, m);
    }

    fn edited(&mut self, edit: &Message) {
        let Some(target) = self.messages.get_mut(&edit.target_seq) else {
            return;
        };
        target.body = edit.body.clone();
        target.edit_count += 1;
        target.edited_at = edit.created_at;
        let shown = preview(&edit.body);
        self.replies_to(edit.target_seq, |p| p.body = shown.clone());
    }

    fn deleted(&mut self, delete: &Message) {
        let target_seq = delete.target_seq;
        let Some(target) = self.messages.get_mut(&target_seq) else {
            return;
        };
        target.body.clear();
        target.reactions.clear();
        target.deleted = Some(Tombstone {
            deleted_by: delete.sender_id.clone(),
            deleted_at: delete.created_at,
        });
        // Its earlier versions are erased: the bodies of its edits too.
        for m in self.messages.values_mut() {
            if m.kind == MessageKind::Edit as i32 && m.target_seq == target_seq {
                m.body.clear();
            }
        }
        self.replies_to(target_seq, |p| {
            p.body.clear();
            p.deleted = true;
        });
    }

    fn reacted(&mut self, reaction: &Message) {
        let mine = reaction.sender_id == self.me;
        let Some(target) = self.messages.get_mut(&reaction.target_seq) else {
            return;
        };
        let at = target
            .reactions
            .binary_search_by(|r| r.emoji.as_str().cmp(reaction.emoji.as_str()));
        match (at, reaction.reaction_removed) {
            (Ok(i), false) => {
                target.reactions[i].count += 1;
                target.reactions[i].reacted |= mine;
            }
            (Err(i), false) => target.reactions.insert(
                i,
                ReactionCount {
                    emoji: reaction.emoji.clone(),
                    count: 1,
                    reacted: mine,
                },
            ),
            (Ok(i), true) => {
                let r = &mut target.reactions[i];
                r.count = r.count.saturating_sub(1);
                if mine {
                    r.reacted = false;
                }
                if r.count == 0 {
                    target.reactions.remove(i);
                }
            }
            (Err(_), true) => {}
        }
    }

    /// Changes the preview of every reply to `seq`.
    fn replies_to(&mut self, seq: u64, change: impl Fn(&mut ReplyPreview)) {
        for m in self.messages.values_mut() {
            if m.reply_to_seq == seq {
                if let Some(p) = m.reply_to.as_mut() {
                    change(p);
                }
            }
        }
    }
}
