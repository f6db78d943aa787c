//! What history decides for each ingress record, written once for every
//! store: dedupe, membership and limits, seq allocation, and the outcome.
//! A store loads what a decision reads, calls a function here, and writes
//! what it returns in the batch's transaction; nothing here touches a
//! database, so each new rule of the chat model is added here, once.
//!
//! - A run of consecutive sends is decided in bulk: the store loads
//!   [`SendFacts`] for the keys and pairs this module names, and [`sends`]
//!   returns the new messages (seqs allocated) and each record's outcome.
//! - Any other record (create, add, remove) is decided alone by [`change`]
//!   from its conversation as loaded, into [`Step`]s for the store to write.
//! - A read is decided alone by [`reads::read`] from the reader's position
//!   as loaded.

use super::rows::TargetRow;
use super::timestamp;
use confab_core::error::ChatError;
use confab_core::validate::{group_limit, SizeLimits};
use confab_proto::internal::v1::{
    ingress_record::Command, outcome_record, IngressRecord, OutcomeRecord, ReadCommand, SendCommand,
};
use confab_proto::v1::{
    membership_event::Change as Membership, Conversation, ConversationKind, HistoryVisibility,
    MembershipEvent, Message, MessageKind, ReplyPreview, Role,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

pub mod ops;
pub mod reads;

/// The retry key of a send: (conversation, sender, client_msg_id).
pub type Key = (String, String, String);

/// The retry key of a stored send.
pub fn key_of(m: &Message) -> Key {
    (
        m.conversation_id.clone(),
        m.sender_id.clone(),
        m.client_msg_id.clone(),
    )
}

/// A send of a run: its record and its command.
pub type SendRecord<'a> = (&'a IngressRecord, &'a SendCommand);

/// A read of a run: its record, its command, and how many of the run's
/// sends come before it.
pub type RunRead<'a> = (&'a IngressRecord, &'a ReadCommand, usize);

/// A part of a batch that is decided in one go.
pub enum Run<'a> {
    /// Consecutive sends, decided together by [`sends`], with the reads
    /// among and after them, each decided on the state the sends before it
    /// leave ([`reads::at`]): a read no longer splits a run of sends in two.
    Sends(Vec<SendRecord<'a>>, Vec<RunRead<'a>>),
    /// Any other record, decided alone by [`change`].
    One(&'a IngressRecord),
}

/// `batch` in order as [`Run`]s: each maximal stretch of sends and reads
/// that holds a send (at most `max_run` records long) as one run, and every
/// other record on its own (a read with no send in its stretch too).
pub fn runs(batch: &[IngressRecord], max_run: usize) -> Vec<Run<'_>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < batch.len() {
        let (mut sends, mut reads) = (Vec::new(), Vec::new());
        let mut end = i;
        while end < batch.len() && end - i < max_run.max(1) {
            let r = &batch[end];
            match &r.command {
                Some(Command::Send(send)) => sends.push((r, send)),
                Some(Command::Read(read)) => reads.push((r, read, sends.len())),
                _ => break,
            }
            end += 1;
        }
        if sends.is_empty() {
            // Reads with no send among them each stand alone; scanning from
            // the next one would only find the same stretch again.
            let end = end.max(i + 1);
            out.extend(batch[i..end].iter().map(Run::One));
            i = end;
        } else {
            out.push(Run::Sends(sends, reads));
            i = end;
        }
    }
    out
}

/// What deciding a run of sends reads from the store.
#[derive(Debug, Default)]
pub struct SendFacts {
    /// The last seq of each conversation of the run that exists (see
    /// [`conversations`]).
    pub last_seqs: HashMap<String, u64>,
    /// The stored sends whose keys the run repeats (see [`keys`]).
    pub originals: HashMap<Key, Message>,
    /// The (conversation, user) pairs of [`member_pairs`] that are members.
    pub members: HashSet<(String, String)>,
    /// The stored messages that sends of the run reply to (see
    /// [`reply_targets`]), by (conversation, seq, replier), each with
    /// whether the replier may read it (see `rows::visible`).
    pub reply_targets: HashMap<(String, u64, String), (TargetRow, bool)>,
    /// The conversations of the run's replies that are SINCE_JOINED: their
    /// replies carry no preview on the stream (members who may not read the
    /// target get them too); `GetHistory` shows it to those who may.
    pub since_joined: HashSet<String>,
}

/// What the store finds for one (conversation, seq, replier) of
/// [`reply_targets`].
#[derive(Debug, Clone)]
pub struct ReplyFacts {
    /// The conversation.
    pub conversation_id: String,
    /// The seq replied to.
    pub seq: u64,
    /// Who replies.
    pub replier: String,
    /// The conversation is SINCE_JOINED.
    pub since_joined: bool,
    /// The message at `seq`, if stored, and whether `replier` may read it.
    pub target: Option<(TargetRow, bool)>,
}

/// The distinct conversations of a run's storable sends, sorted (the order
/// in which a store that locks them must lock them).
pub fn conversations<'a>(run: &[SendRecord<'a>]) -> Vec<&'a str> {
    distinct(run, |_, _| true, |rec, _| rec.conversation_id.as_str())
}

/// The distinct retry keys to look up for a run, given the last seqs of
/// its conversations (messages exist only in conversations that exist).
pub fn keys<'a>(
    run: &[SendRecord<'a>],
    last_seqs: &HashMap<String, u64>,
) -> Vec<(&'a str, &'a str, &'a str)> {
    distinct(
        run,
        |rec, _| last_seqs.contains_key(&rec.conversation_id),
        |rec, send| {
            (
                rec.conversation_id.as_str(),
                rec.actor_id.as_str(),
                send.client_msg_id.as_str(),
            )
        },
    )
}

/// The distinct (conversation, sender) pairs whose membership a run's
/// decision needs: sends to existing conversations that repeat no stored
/// send.
pub fn member_pairs<'a>(
    run: &[SendRecord<'a>],
    last_seqs: &HashMap<String, u64>,
    originals: &HashMap<Key, Message>,
) -> Vec<(&'a str, &'a str)> {
    distinct(
        run,
        |rec, send| {
            last_seqs.contains_key(&rec.conversation_id) && !originals.contains_key(&key(rec, send))
        },
        |rec, _| (rec.conversation_id.as_str(), rec.actor_id.as_str()),
    )
}

/// What a run's replies need looked up, as (conversation, seq, replier),
/// given what [`SendFacts`] holds so far: replies in existing
/// conversations that repeat no stored send (the seq may be one new in
/// the run: then only the conversation's visibility is found).
pub fn reply_targets<'a>(
    run: &[SendRecord<'a>],
    last_seqs: &HashMap<String, u64>,
    originals: &HashMap<Key, Message>,
) -> Vec<(&'a str, u64, &'a str)> {
    distinct(
        run,
        |rec, send| {
            send.reply_to_seq > 0
                && last_seqs.contains_key(&rec.conversation_id)
                && !originals.contains_key(&key(rec, send))
        },
        |rec, send| {
            (
                rec.conversation_id.as_str(),
                send.reply_to_seq,
                rec.actor_id.as_str(),
            )
        },
    )
}

/// What `pick` makes of each storable send of `run` that `keep` keeps,
/// sorted and without repeats.
fn distinct<'a, T: Ord>(
    run: &[SendRecord<'a>],
    keep: impl Fn(&IngressRecord, &SendCommand) -> bool,
    pick: impl Fn(&'a IngressRecord, &'a SendCommand) -> T,
) -> Vec<T> {
    run.iter()
        .filter(|(rec, send)| unstorable(rec).is_none() && keep(rec, send))
        .map(|&(rec, send)| pick(rec, send))
        .collect::<BTreeSet<T>>()
        .into_iter()
        .collect()
}

fn key(rec: &IngressRecord, send: &SendCommand) -> Key {
    (
        rec.conversation_id.clone(),
        rec.actor_id.clone(),
        send.client_msg_id.clone(),
    )
}

/// How one send of a run is answered.
enum Plan {
    /// Without a new message: a refusal or a stored original.
    Done(Box<OutcomeRecord>),
    /// The new message `new[i]`.
    New(usize),
    /// A repeat, inside the run, of the new message `new[i]`.
    Repeat(usize),
}

/// A run of sends, decided.
pub struct DecidedSends {
    /// Each send's answer, in record order.
    plans: Vec<Plan>,
    /// The messages to insert, with their seqs.
    pub new: Vec<Message>,
}

/// Decides a run of sends, in order, as if one by one: a stored message
/// with the same key is returned as it is (even if the sender has left
/// since), then the conversation must exist, then the sender must be a
/// member; a key repeated inside the run gets the first message. New
/// messages take the seqs after their conversation's last, in record order.
pub fn sends(run: &[SendRecord<'_>], facts: &SendFacts, now: i64) -> DecidedSends {
    let mut plans = Vec::with_capacity(run.len());
    let mut new: Vec<Message> = Vec::new();
    let mut first_new: HashMap<Key, usize> = HashMap::new();
    let mut heads: BTreeMap<String, u64> = BTreeMap::new();
    for &(rec, send) in run {
        let conv_id = rec.conversation_id.as_str();
        if let Some(err) = unstorable(rec) {
            plans.push(Plan::Done(Box::new(refused(rec, err))));
            continue;
        }
        let k = key(rec, send);
        if let Some(original) = facts.originals.get(&k) {
            let plan =
                match ops::same_write(original.clone(), MessageKind::Text, &send.client_msg_id) {
                    Ok(original) => replayed(rec, original),
                    Err(err) => refused(rec, err),
                };
            plans.push(Plan::Done(Box::new(plan)));
            continue;
        }
        if let Some(&i) = first_new.get(&k) {
            plans.push(Plan::Repeat(i));
            continue;
        }
        let Some(&stored_last) = facts.last_seqs.get(conv_id) else {
            plans.push(Plan::Done(Box::new(refused(
                rec,
                ChatError::no_conversation(conv_id),
            ))));
            continue;
        };
        if !facts
            .members
            .contains(&(rec.conversation_id.clone(), rec.actor_id.clone()))
        {
            plans.push(Plan::Done(Box::new(refused(
                rec,
                ChatError::not_member(conv_id),
            ))));
            continue;
        }
        // The conversation's id is allocated once per run, not per send.
        if !heads.contains_key(conv_id) {
            heads.insert(rec.conversation_id.clone(), stored_last);
        }
        let reply_to = match send.reply_to_seq {
            0 => None,
            to => {
                let head = heads.get(conv_id).copied().unwrap_or(stored_last);
                let stored = facts.reply_targets.get(&(
                    rec.conversation_id.clone(),
                    to,
                    rec.actor_id.clone(),
                ));
                if let Some((_, false)) = stored {
                    plans.push(Plan::Done(Box::new(refused(
                        rec,
                        ChatError::InvalidArgument(format!(
                            "reply_to_seq {to} of conversation {conv_id} is not a message you may read \
                             (the conversation shows members the history from when they joined)"
                        )),
                    ))));
                    continue;
                }
                let target = if to <= stored_last {
                    stored.map(|(t, _)| {
                        (
                            t.kind,
                            t.sender_id.as_str(),
                            t.body.as_str(),
                            t.deleted_at_ms != 0,
                        )
                    })
                } else if to <= head {
                    // A message new in this run.
                    new.iter()
                        .find(|m| m.conversation_id == conv_id && m.seq == to)
                        .map(|m| (m.kind, m.sender_id.as_str(), m.body.as_str(), false))
                } else {
                    None
                };
                match reply_preview(conv_id, to, head, target) {
                    Ok(_) if facts.since_joined.contains(conv_id) => None,
                    Ok(preview) => Some(preview),
                    Err(err) => {
                        plans.push(Plan::Done(Box::new(refused(rec, err))));
                        continue;
                    }
                }
            }
        };
        let seq = match heads.get_mut(conv_id) {
            Some(head) => {
                *head += 1;
                *head
            }
            None => stored_last + 1,
        };
        first_new.insert(k, new.len());
        plans.push(Plan::New(new.len()));
        new.push(Message {
            conversation_id: rec.conversation_id.clone(),
            seq,
            sender_id: rec.actor_id.clone(),
            client_msg_id: send.client_msg_id.clone(),
            body: send.body.clone(),
            created_at: Some(timestamp(now)),
            kind: MessageKind::Text as i32,
            reply_to_seq: send.reply_to_seq,
            reply_to,
            ..Message::default()
        });
    }
    DecidedSends { plans, new }
}

/// The preview of a reply to seq `to` of conversation `conv_id`, whose
/// newest seq is `head`, given the target's (kind, sender, body, deleted)
/// when it exists.
fn reply_preview(
    conv_id: &str,
    to: u64,
    head: u64,
    target: Option<(i32, &str, &str, bool)>,
) -> Result<ReplyPreview, ChatError> {
    let Some((kind, sender, body, deleted)) = target else {
        return Err(ChatError::InvalidArgument(format!(
            "reply_to_seq {to} is past the newest seq {head} of conversation {conv_id}; reply to a message that exists"
        )));
    };
    if kind != MessageKind::Text as i32 {
        return Err(ChatError::InvalidArgument(format!(
            "reply_to_seq {to} of conversation {conv_id} is {}: reply to a TEXT message",
            ops::kind_name(kind)
        )));
    }
    Ok(confab_core::fold::preview_of(sender, body, deleted))
}

impl DecidedSends {
    /// The newest new message of each conversation that got one, by
    /// conversation (the order a store locks them in): its seq is the
    /// conversation's new last seq, and it is the conversation's newest
    /// TEXT message.
    pub fn newest(&self) -> Vec<&Message> {
        // `new` is in seq order within each conversation: the last wins.
        let mut newest: BTreeMap<&str, &Message> = BTreeMap::new();
        for m in &self.new {
            newest.insert(&m.conversation_id, m);
        }
        newest.into_values().collect()
    }

    /// The new messages of the run's first `sends` sends, in record order.
    pub fn new_before(&self, sends: usize) -> &[Message] {
        let n = self.plans[..sends.min(self.plans.len())]
            .iter()
            .filter(|p| matches!(p, Plan::New(_)))
            .count();
        &self.new[..n]
    }

    /// The read position each sender of a new message moves to: its newest
    /// new message in each conversation, as (conversation, sender, seq),
    /// sorted. Sending a message reads everything before it.
    pub fn sender_reads(&self) -> Vec<(&str, &str, u64)> {
        let mut newest: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for m in &self.new {
            let seq = newest
                .entry((m.conversation_id.as_str(), m.sender_id.as_str()))
                .or_default();
            *seq = (*seq).max(m.seq);
        }
        newest
            .into_iter()
            .map(|((c, u), seq)| (c, u, seq))
            .collect()
    }

    /// One outcome per send of `run` (the run this was decided from), in
    /// order, appended to `outcomes`.
    pub fn outcomes(self, run: &[SendRecord<'_>], outcomes: &mut Vec<OutcomeRecord>) {
        for (plan, (rec, _)) in self.plans.into_iter().zip(run) {
            outcomes.push(match plan {
                Plan::Done(outcome) => *outcome,
                Plan::New(i) => outcome(
                    rec,
                    vec![self.new[i].clone()],
                    outcome_record::Result::Message(self.new[i].clone()),
                ),
                Plan::Repeat(i) => replayed(rec, self.new[i].clone()),
            });
        }
    }
}

/// A write that a decision asks of its store, made in order in the batch's
/// transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Insert the record's conversation, with no messages yet (last seq 0).
    CreateConversation {
        /// `ConversationKind` as stored.
        kind: i32,
        /// The conversation's title.
        title: String,
        /// `HistoryVisibility` as stored.
        visibility: i32,
    },
    /// Make these users members with this role (`Role` as stored).
    AddMembers {
        /// The new members.
        users: Vec<String>,
        /// Their role.
        role: i32,
    },
    /// Give a member a role.
    SetRole {
        /// The member.
        user: String,
        /// `Role` as stored.
        role: i32,
    },
    /// Change the title.
    SetTitle(String),
    /// Change the history visibility (`HistoryVisibility` as stored).
    SetVisibility(i32),
    /// Remove this member.
    RemoveMember(String),
    /// Insert this message and make its seq the conversation's last.
    Append(Box<Message>),
}

/// What a record that is not a send comes to, unless it is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Nothing to write: the answer is the conversation as it is.
    Unchanged(Box<Conversation>),
    /// Write these steps; the answer is the conversation as they leave it,
    /// with the messages they append as the outcome's events.
    Write(Vec<Step>),
}

/// Decides a record that is not a send (create, add, remove, or a record
/// without a command) from its conversation as the transaction sees it
/// (`None` if it does not exist).
pub fn change(
    rec: &IngressRecord,
    conv: Option<Conversation>,
    limits: &SizeLimits,
    now: i64,
) -> Result<Change, ChatError> {
    let conv_id = rec.conversation_id.as_str();
    let actor = rec.actor_id.as_str();
    let Some(command) = &rec.command else {
        return Err(ChatError::InvalidArgument("record has no command".into()));
    };
    if let Some(err) = unstorable(rec) {
        return Err(err);
    }
    let event = |seq: u64, change: Membership, users: &[String]| {
        Step::Append(Box::new(system_message(
            conv_id, seq, actor, change, users, now,
        )))
    };
    let role_event = |seq: u64, by: &str, user: &str, role: Role| {
        let mut m = system_message(
            conv_id,
            seq,
            by,
            Membership::RoleChanged,
            &[user.to_string()],
            now,
        );
        if let Some(e) = m.membership.as_mut() {
            e.role = role as i32;
        }
        m.body = role_body(by, user, role);
        Step::Append(Box::new(m))
    };
    match command {
        Command::Send(_)
        | Command::Read(_)
        | Command::Edit(_)
        | Command::Delete(_)
        | Command::React(_) => Err(ChatError::Internal(
            "a send, a read or a change to a message reached the membership path".into(),
        )),
        Command::Create(create) => {
            if let Some(existing) = conv {
                // DIRECT ids are derived from the pair, so this is "create
                // again"; for groups it is a replayed record.
                if !existing.member_ids.iter().any(|m| m == actor) {
                    return Err(ChatError::not_member(conv_id));
                }
                return Ok(Change::Unchanged(Box::new(existing)));
            }
            // The gateway checks this too; history, the only writer, decides.
            if create.kind == ConversationKind::Group as i32
                && create.member_ids.len() > limits.max_group_members
            {
                return Err(ChatError::ResourceExhausted(group_limit(
                    limits.max_group_members,
                    &format!("{} were asked for", create.member_ids.len()),
                )));
            }
            // The creator of a group owns it; DIRECT conversations have
            // no roles.
            let group = create.kind == ConversationKind::Group as i32;
            // DIRECT conversations are SHARED (the gateway refuses more).
            let visibility = match HistoryVisibility::try_from(create.history_visibility) {
                Ok(HistoryVisibility::SinceJoined) if group => HistoryVisibility::SinceJoined,
                _ => HistoryVisibility::Shared,
            };
            let mut steps = vec![Step::CreateConversation {
                kind: create.kind,
                title: create.title.clone(),
                visibility: visibility as i32,
            }];
            if group {
                let others: Vec<String> = create
                    .member_ids
                    .iter()
                    .filter(|m| *m != actor)
                    .cloned()
                    .collect();
                steps.push(Step::AddMembers {
                    users: vec![actor.to_string()],
                    role: Role::Owner as i32,
                });
                if !others.is_empty() {
                    steps.push(Step::AddMembers {
                        users: others,
                        role: Role::Member as i32,
                    });
                }
            } else {
                steps.push(Step::AddMembers {
                    users: create.member_ids.clone(),
                    role: Role::Unspecified as i32,
                });
            }
            steps.push(event(1, Membership::Created, &create.member_ids));
            Ok(Change::Write(steps))
        }
        Command::AddMembers(add) => {
            let conv = group_for_change(conv, conv_id, actor)?;
            if !manages(role_of(&conv, actor)) {
                return Err(ChatError::PermissionDenied(format!(
                    "only owners and admins of group {conv_id} add members; ask one of them"
                )));
            }
            let new: Vec<String> = add
                .member_ids
                .iter()
                .filter(|u| !conv.member_ids.contains(u))
                .cloned()
                .collect();
            if new.is_empty() {
                return Ok(Change::Unchanged(Box::new(conv)));
            }
            if conv.member_ids.len() + new.len() > limits.max_group_members {
                return Err(ChatError::ResourceExhausted(group_limit(
                    limits.max_group_members,
                    &format!(
                        "it has {} and {} would be added",
                        conv.member_ids.len(),
                        new.len()
                    ),
                )));
            }
            let added = event(conv.last_seq + 1, Membership::Added, &new);
            Ok(Change::Write(vec![
                Step::AddMembers {
                    users: new,
                    role: Role::Member as i32,
                },
                added,
            ]))
        }
        Command::RemoveMember(remove) => {
            let conv = group_for_change(conv, conv_id, actor)?;
            let target = &remove.member_id;
            if !conv.member_ids.contains(target) {
                return Err(ChatError::NotFound(format!(
                    "{target} is not a member of conversation {conv_id}"
                )));
            }
            let target_role = role_of(&conv, target);
            if target != actor {
                let allowed = match role_of(&conv, actor) {
                    Role::Owner => true,
                    Role::Admin => target_role == Role::Member,
                    _ => false,
                };
                if !allowed {
                    return Err(ChatError::PermissionDenied(format!(
                        "only owners remove owners and admins, and only owners and admins remove \
                         members, of group {conv_id}; anyone may leave"
                    )));
                }
            }
            let removed = event(
                conv.last_seq + 1,
                Membership::Removed,
                std::slice::from_ref(target),
            );
            let mut steps = vec![Step::RemoveMember(target.clone()), removed];
            // The last owner leaving (or removed) hands the group over.
            if target_role == Role::Owner {
                if let Some(heir) = heir(&conv, target) {
                    steps.push(Step::SetRole {
                        user: heir.clone(),
                        role: Role::Owner as i32,
                    });
                    steps.push(role_event(conv.last_seq + 2, target, &heir, Role::Owner));
                }
            }
            Ok(Change::Write(steps))
        }
        Command::SetRole(set) => {
            let conv = group_for_change(conv, conv_id, actor)?;
            let target = &set.user_id;
            let role = Role::try_from(set.role).unwrap_or(Role::Unspecified);
            if role == Role::Unspecified {
                return Err(ChatError::InvalidArgument(
                    "role must be OWNER, ADMIN or MEMBER".into(),
                ));
            }
            if !conv.member_ids.contains(target) {
                return Err(ChatError::NotFound(format!(
                    "{target} is not a member of conversation {conv_id}"
                )));
            }
            let current = role_of(&conv, target);
            let allowed = match role_of(&conv, actor) {
                Role::Owner => true,
                Role::Admin => current != Role::Owner && role != Role::Owner,
                _ => false,
            };
            if !allowed {
                return Err(ChatError::PermissionDenied(format!(
                    "only owners of group {conv_id} make owners or change an owner's role; \
                     owners and admins make members admins and admins members"
                )));
            }
            if current == role {
                return Ok(Change::Unchanged(Box::new(conv)));
            }
            if current == Role::Owner && owners(&conv) == 1 {
                return Err(ChatError::FailedPrecondition(format!(
                    "{target} is the last owner of group {conv_id}; make another member owner first"
                )));
            }
            Ok(Change::Write(vec![
                Step::SetRole {
                    user: target.clone(),
                    role: role as i32,
                },
                role_event(conv.last_seq + 1, actor, target, role),
            ]))
        }
        Command::Update(update) => {
            let conv = group_for_change(conv, conv_id, actor)?;
            if !manages(role_of(&conv, actor)) {
                return Err(ChatError::PermissionDenied(format!(
                    "only owners and admins of group {conv_id} change its title or history visibility"
                )));
            }
            let mut steps = Vec::new();
            let mut seq = conv.last_seq;
            if let Some(title) = update.title.as_ref().filter(|t| **t != conv.title) {
                seq += 1;
                let mut m = system_message(conv_id, seq, actor, Membership::TitleChanged, &[], now);
                if let Some(e) = m.membership.as_mut() {
                    e.title = title.clone();
                }
                m.body = format!("{actor} changed the title to {title}");
                steps.push(Step::SetTitle(title.clone()));
                steps.push(Step::Append(Box::new(m)));
            }
            let visibility = HistoryVisibility::try_from(update.history_visibility)
                .unwrap_or(HistoryVisibility::Unspecified);
            if visibility != HistoryVisibility::Unspecified
                && visibility as i32 != conv.history_visibility
            {
                seq += 1;
                let mut m =
                    system_message(conv_id, seq, actor, Membership::VisibilityChanged, &[], now);
                if let Some(e) = m.membership.as_mut() {
                    e.history_visibility = visibility as i32;
                }
                m.body = match visibility {
                    HistoryVisibility::SinceJoined => {
                        format!("{actor} made the history visible to members from when they joined")
                    }
                    _ => format!("{actor} made the whole history visible to members"),
                };
                steps.push(Step::SetVisibility(visibility as i32));
                steps.push(Step::Append(Box::new(m)));
            }
            if steps.is_empty() {
                return Ok(Change::Unchanged(Box::new(conv)));
            }
            Ok(Change::Write(steps))
        }
    }
}

/// `user`'s role in `conv` (unspecified for a non-member, or in a DIRECT
/// conversation).
pub fn role_of(conv: &Conversation, user: &str) -> Role {
    conv.member_reads
        .iter()
        .find(|m| m.user_id == user)
        .map_or(Role::Unspecified, |m| {
            Role::try_from(m.role).unwrap_or(Role::Unspecified)
        })
}

/// Whether `role` adds and removes members, changes the title and deletes
/// any message.
pub fn manages(role: Role) -> bool {
    matches!(role, Role::Owner | Role::Admin)
}

/// The owners of `conv`.
fn owners(conv: &Conversation) -> usize {
    conv.member_reads
        .iter()
        .filter(|m| m.role == Role::Owner as i32)
        .count()
}

/// Who owns `conv` once owner `leaving` is gone, if it was the last owner
/// and anyone stays: the admin who joined first, else the member who did
/// (ties by user id).
fn heir(conv: &Conversation, leaving: &str) -> Option<String> {
    let staying = || conv.member_reads.iter().filter(|m| m.user_id != leaving);
    if staying().any(|m| m.role == Role::Owner as i32) {
        return None;
    }
    let first = |role: Role| {
        staying()
            .filter(|m| m.role == role as i32)
            .min_by(|a, b| (a.joined_seq, &a.user_id).cmp(&(b.joined_seq, &b.user_id)))
            .map(|m| m.user_id.clone())
    };
    first(Role::Admin).or_else(|| first(Role::Member))
}

/// The body of a ROLE_CHANGED event.
fn role_body(by: &str, user: &str, role: Role) -> String {
    let named = match role {
        Role::Owner => "an owner",
        Role::Admin => "an admin",
        _ => "a member",
    };
    format!("{by} made {user} {named}")
}

/// Whether [`change`] reads `rec`'s conversation: not when `rec` is
/// refused whatever the conversation is (no command, or text no store can
/// keep, which a store could not even look up).
pub fn reads_conversation(rec: &IngressRecord) -> bool {
    rec.command.is_some() && unstorable(rec).is_none()
}

/// The group a membership change applies to, if it exists, is a group and
/// `actor` is in it.
fn group_for_change(
    conv: Option<Conversation>,
    conv_id: &str,
    actor: &str,
) -> Result<Conversation, ChatError> {
    let Some(conv) = conv else {
        return Err(ChatError::no_conversation(conv_id));
    };
    if !conv.member_ids.iter().any(|m| m == actor) {
        return Err(ChatError::not_member(conv_id));
    }
    if conv.kind != ConversationKind::Group as i32 {
        return Err(ChatError::InvalidArgument(
            "a DIRECT conversation has fixed members, no roles and no title to change; create a GROUP instead".into(),
        ));
    }
    Ok(conv)
}

/// The messages a [`Change::Write`] appends: its outcome's events.
pub fn appended(steps: Vec<Step>) -> Vec<Message> {
    steps
        .into_iter()
        .filter_map(|s| match s {
            Step::Append(m) => Some(*m),
            _ => None,
        })
        .collect()
}

/// The refusal of a record with text no store can keep: NUL, which
/// PostgreSQL text cannot hold. The gateway refuses it too; checking here
/// keeps one such record from failing its whole batch on every retry, and
/// both stores accept exactly the same records.
pub fn unstorable(rec: &IngressRecord) -> Option<ChatError> {
    let has_nul = |s: &str| s.contains('\0');
    let field = if has_nul(&rec.conversation_id) {
        "conversation_id"
    } else if has_nul(&rec.actor_id) {
        "actor_id"
    } else {
        match &rec.command {
            Some(Command::Send(s)) if has_nul(&s.client_msg_id) => "client_msg_id",
            Some(Command::Send(s)) if has_nul(&s.body) => "body",
            Some(Command::Create(c)) if has_nul(&c.title) => "title",
            Some(Command::Create(c)) if c.member_ids.iter().any(|m| has_nul(m)) => "member_ids",
            Some(Command::AddMembers(a)) if a.member_ids.iter().any(|m| has_nul(m)) => "member_ids",
            Some(Command::RemoveMember(r)) if has_nul(&r.member_id) => "member_id",
            Some(Command::SetRole(r)) if has_nul(&r.user_id) => "user_id",
            Some(Command::Update(u)) if u.title.as_deref().is_some_and(has_nul) => "title",
            Some(Command::Edit(e)) if has_nul(&e.client_msg_id) => "client_msg_id",
            Some(Command::Edit(e)) if has_nul(&e.body) => "body",
            Some(Command::Delete(d)) if has_nul(&d.client_msg_id) => "client_msg_id",
            Some(Command::React(r)) if has_nul(&r.client_msg_id) => "client_msg_id",
            Some(Command::React(r)) if has_nul(&r.emoji) => "emoji",
            _ => return None,
        }
    };
    Some(ChatError::InvalidArgument(format!(
        "{field} must not contain NUL characters"
    )))
}

/// The SYSTEM message recording a membership change.
pub fn system_message(
    conversation_id: &str,
    seq: u64,
    actor: &str,
    change: Membership,
    users: &[String],
    at_ms: i64,
) -> Message {
    let who = users.join(", ");
    let body = match change {
        Membership::Created => format!("{actor} created the conversation with {who}"),
        Membership::Added => format!("{actor} added {who}"),
        Membership::Removed if users.len() == 1 && users[0] == actor => format!("{actor} left"),
        Membership::Removed => format!("{actor} removed {who}"),
        Membership::RoleChanged | Membership::TitleChanged | Membership::VisibilityChanged => {
            String::new()
        }
        Membership::Unspecified => String::new(),
    };
    Message {
        conversation_id: conversation_id.to_string(),
        seq,
        sender_id: actor.to_string(),
        client_msg_id: String::new(),
        body,
        created_at: Some(timestamp(at_ms)),
        kind: MessageKind::System as i32,
        membership: Some(MembershipEvent {
            change: change as i32,
            actor_id: actor.to_string(),
            user_ids: users.to_vec(),
            ..MembershipEvent::default()
        }),
        ..Message::default()
    }
}

/// The outcome of `rec`: `result` with `events` to deliver (a refusal has
/// none), carrying the record's origin, trace and acceptance time.
pub fn outcome(
    rec: &IngressRecord,
    events: Vec<Message>,
    result: outcome_record::Result,
) -> OutcomeRecord {
    OutcomeRecord {
        origin: rec.origin.clone(),
        conversation_id: rec.conversation_id.clone(),
        events,
        result: Some(result),
        replay: false,
        traceparent: rec.traceparent.clone(),
        accepted_at_ms: rec.accepted_at_ms,
        receipt: None,
        receipt_private: false,
        batched: Vec::new(),
    }
}

/// The outcome of a send whose key was already stored: the original comes
/// back as the result and, marked as a replay, as the event.
pub fn replayed(rec: &IngressRecord, original: Message) -> OutcomeRecord {
    OutcomeRecord {
        replay: true,
        ..outcome(
            rec,
            vec![original.clone()],
            outcome_record::Result::Message(original),
        )
    }
}

/// An outcome that refuses `rec` with `err`.
pub fn refused(rec: &IngressRecord, err: ChatError) -> OutcomeRecord {
    outcome(rec, vec![], outcome_record::Result::Error(err.to_proto()))
}

/// The outcome of a decided [`change`], given the conversation as it is
/// after its steps were written.
pub fn changed(rec: &IngressRecord, events: Vec<Message>, conv: Conversation) -> OutcomeRecord {
    outcome(rec, events, outcome_record::Result::Conversation(conv))
}

#[cfg(test)]
mod tests;
