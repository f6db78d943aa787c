//! Checks on what clients send, shared by the unary API and stream frames,
//! each failing with a message that says what to fix: INVALID_ARGUMENT for
//! a malformed request, RESOURCE_EXHAUSTED for one over a configured limit
//! (body bytes, group members), naming the variable and its value.

use crate::error::ChatError;
use confab_proto::v1::{ConversationKind, HistoryVisibility};
use std::collections::BTreeSet;
use tonic::Status;

/// Default largest message body, in bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024;
/// The longest user id accepted, in bytes.
pub const MAX_USER_ID_LEN: usize = 128;
/// Longest client_msg_id, in bytes.
pub const MAX_CLIENT_MSG_ID_LEN: usize = 128;
/// Longest conversation id, in bytes.
pub const MAX_CONVERSATION_ID_LEN: usize = 128;
/// Longest title, in bytes.
pub const MAX_TITLE_LEN: usize = 256;
/// Largest group, members included.
pub const DEFAULT_MAX_GROUP_MEMBERS: usize = 1000;
/// Default and largest history page.
pub const DEFAULT_PAGE: u32 = 50;
/// Largest history page; larger requests are clamped to it.
pub const MAX_PAGE: u32 = 500;

/// Size limits on what a client may send (message bodies, groups); the
/// gateway's per-user rates are `confab_gateway::user_limits::UserLimits`.
#[derive(Debug, Clone, Copy)]
pub struct SizeLimits {
    /// Largest accepted body, in bytes.
    pub max_body_bytes: usize,
    /// Largest group, in members.
    pub max_group_members: usize,
    /// Whether history keeps the words of messages for search
    /// (`CONFAB_SEARCH_INDEX`; see [`crate::config::search_index`]).
    pub search_index: bool,
}

impl Default for SizeLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_group_members: DEFAULT_MAX_GROUP_MEMBERS,
            search_index: true,
        }
    }
}

/// Checks a conversation id.
pub fn conversation_id(id: &str) -> Result<(), ChatError> {
    if id.is_empty() {
        return Err(ChatError::InvalidArgument(
            "conversation_id is required".into(),
        ));
    }
    if id.len() > MAX_CONVERSATION_ID_LEN {
        return Err(ChatError::InvalidArgument(format!(
            "conversation_id is {} bytes; at most {MAX_CONVERSATION_ID_LEN} are allowed",
            id.len()
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(ChatError::InvalidArgument(
            "conversation_id must not contain control characters".into(),
        ));
    }
    Ok(())
}

/// Rejects NUL, which PostgreSQL text cannot store: both stores must accept
/// exactly the same input.
fn no_nul(field: &str, value: &str) -> Result<(), ChatError> {
    if value.contains('\0') {
        return Err(ChatError::InvalidArgument(format!(
            "{field} must not contain NUL characters"
        )));
    }
    Ok(())
}

/// Checks a message before it is accepted.
pub fn send(
    limits: &SizeLimits,
    conv: &str,
    client_msg_id: &str,
    body: &str,
) -> Result<(), ChatError> {
    conversation_id(conv)?;
    retry_key(client_msg_id)?;
    message_body(limits, body)
}

/// Checks a write's retry key (sends, edits, deletes and reactions share
/// one per sender and conversation).
fn retry_key(client_msg_id: &str) -> Result<(), ChatError> {
    if client_msg_id.is_empty() {
        return Err(ChatError::InvalidArgument(
            "client_msg_id is required: choose a unique id per message and reuse it when retrying"
                .into(),
        ));
    }
    if client_msg_id.len() > MAX_CLIENT_MSG_ID_LEN {
        return Err(ChatError::InvalidArgument(format!(
            "client_msg_id is {} bytes; at most {MAX_CLIENT_MSG_ID_LEN} are allowed",
            client_msg_id.len()
        )));
    }
    no_nul("client_msg_id", client_msg_id)
}

/// Checks a message body (a send's, or an edit's new one).
fn message_body(limits: &SizeLimits, body: &str) -> Result<(), ChatError> {
    if body.is_empty() {
        return Err(ChatError::InvalidArgument("body must not be empty".into()));
    }
    no_nul("body", body)?;
    if body.len() > limits.max_body_bytes {
        return Err(ChatError::ResourceExhausted(format!(
            "body limit: the body is {} bytes, at most {} are allowed \
             (CONFAB_MAX_BODY_BYTES={}); send a shorter body or split it into several messages",
            body.len(),
            limits.max_body_bytes,
            limits.max_body_bytes
        )));
    }
    Ok(())
}

/// Checks the conversation, seq and retry key of an edit, a delete or a
/// reaction: what every change to an earlier message names.
pub fn change_of(conv: &str, seq: u64, client_msg_id: &str) -> Result<(), ChatError> {
    conversation_id(conv)?;
    if seq == 0 {
        return Err(ChatError::InvalidArgument(
            "seq is required: the seq of the message to change (seqs start at 1)".into(),
        ));
    }
    retry_key(client_msg_id)
}

/// Checks an edit.
pub fn edit(
    limits: &SizeLimits,
    conv: &str,
    seq: u64,
    body: &str,
    client_msg_id: &str,
) -> Result<(), ChatError> {
    change_of(conv, seq, client_msg_id)?;
    message_body(limits, body)
}

/// Distinct emoji a message may have reactions with.
pub const MAX_EMOJI_PER_MESSAGE: u64 = 20;
/// Reactions one member may have on one message (with distinct emoji).
pub const MAX_REACTIONS_PER_MEMBER: u64 = 5;
/// Longest emoji accepted, in bytes (the longest in Unicode's list, a
/// family with skin tones, is 35).
pub const MAX_EMOJI_BYTES: usize = 64;

/// Checks a reaction's emoji and returns it fully qualified (so "❤" and
/// "❤️" are one reaction): one grapheme cluster that Unicode lists as an
/// emoji.
pub fn emoji(emoji: &str) -> Result<String, ChatError> {
    if emoji.is_empty() {
        return Err(ChatError::InvalidArgument(
            "emoji is required: one emoji, such as 👍".into(),
        ));
    }
    if emoji.len() > MAX_EMOJI_BYTES {
        return Err(ChatError::InvalidArgument(format!(
            "emoji is {} bytes; one emoji is at most {MAX_EMOJI_BYTES}",
            emoji.len()
        )));
    }
    let clusters = unicode_segmentation::UnicodeSegmentation::graphemes(emoji, true).count();
    if clusters != 1 {
        return Err(ChatError::InvalidArgument(format!(
            "emoji {emoji:?} is {clusters} characters; react with one emoji, such as 👍"
        )));
    }
    match emojis::get(emoji) {
        Some(e) => Ok(e.as_str().to_string()),
        None => Err(ChatError::InvalidArgument(format!(
            "{emoji:?} is not an emoji Unicode lists; react with one, such as 👍"
        ))),
    }
}

/// Checks a reaction; returns its emoji fully qualified (see [`emoji`]).
pub fn react(
    conv: &str,
    seq: u64,
    emoji_text: &str,
    client_msg_id: &str,
) -> Result<String, ChatError> {
    change_of(conv, seq, client_msg_id)?;
    emoji(emoji_text)
}

/// How much of a body a reply's preview shows, in characters.
pub const REPLY_PREVIEW_CHARS: usize = 100;

/// The start of `body` a reply's preview shows.
pub fn preview(body: &str) -> String {
    match body.char_indices().nth(REPLY_PREVIEW_CHARS) {
        Some((end, _)) => body[..end].to_string(),
        None => body.to_string(),
    }
}

/// [`check_user_id`] of `id`, the refusal naming it as `label`.
fn labelled_user_id(label: &str, id: &str) -> Result<(), ChatError> {
    check_user_id(id)
        .map_err(|s| ChatError::InvalidArgument(format!("{label} {}: {}", shown(id), s.message())))
}

/// Checks user ids and returns them deduplicated and sorted.
pub fn user_ids<'a>(
    ids: impl IntoIterator<Item = &'a String>,
) -> Result<BTreeSet<String>, ChatError> {
    let mut set = BTreeSet::new();
    for id in ids {
        labelled_user_id("member id", id)?;
        set.insert(id.clone());
    }
    Ok(set)
}

/// Most users one `GetPresence` asks about.
pub const MAX_PRESENCE_USERS: usize = 100;

/// The users a `GetPresence` asks about, each once, in the order asked:
/// 1 to [`MAX_PRESENCE_USERS`] valid user ids.
pub fn presence_ids(ids: &[String]) -> Result<Vec<String>, ChatError> {
    if ids.is_empty() {
        return Err(ChatError::InvalidArgument(
            "user_ids must list at least one user".into(),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for id in ids {
        labelled_user_id("user id", id)?;
        if seen.insert(id.as_str()) {
            out.push(id.clone());
        }
    }
    if out.len() > MAX_PRESENCE_USERS {
        return Err(ChatError::InvalidArgument(format!(
            "user_ids lists {} users; ask about at most {MAX_PRESENCE_USERS} at a time",
            out.len()
        )));
    }
    Ok(out)
}

/// Characters of a refused value quoted back in an error message.
const MAX_SHOWN: usize = 64;

/// `value` escaped and cut to [`MAX_SHOWN`] characters ("…" when cut): an
/// error message stays small whatever was sent.
fn shown(value: &str) -> String {
    let cut: String = value.chars().take(MAX_SHOWN).collect();
    if cut.len() < value.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// Checks an AddMembers request: the conversation id and the users to add
/// (at least one), returned deduplicated and sorted.
pub fn add_members(
    conversation: &str,
    member_ids: &[String],
) -> Result<BTreeSet<String>, ChatError> {
    conversation_id(conversation)?;
    let members = user_ids(member_ids)?;
    if members.is_empty() {
        return Err(ChatError::InvalidArgument(
            "member_ids must list at least one user to add".into(),
        ));
    }
    Ok(members)
}

/// Checks a RemoveMember request: the conversation id and the member's id.
pub fn remove_member(conversation: &str, member_id: &str) -> Result<(), ChatError> {
    conversation_id(conversation)?;
    user_ids([&member_id.to_owned()])?;
    Ok(())
}

/// Checks a title.
fn check_title(title: &str) -> Result<(), ChatError> {
    if title.len() > MAX_TITLE_LEN {
        return Err(ChatError::InvalidArgument(format!(
            "title is {} bytes; at most {MAX_TITLE_LEN} are allowed",
            title.len()
        )));
    }
    no_nul("title", title)
}

/// Checks a SetRole request: the conversation, the member, and a role.
pub fn set_role(conversation: &str, user_id: &str, role: i32) -> Result<(), ChatError> {
    conversation_id(conversation)?;
    user_ids([&user_id.to_owned()])?;
    match confab_proto::v1::Role::try_from(role) {
        Ok(
            confab_proto::v1::Role::Owner
            | confab_proto::v1::Role::Admin
            | confab_proto::v1::Role::Member,
        ) => Ok(()),
        _ => Err(ChatError::InvalidArgument(
            "role must be OWNER, ADMIN or MEMBER".into(),
        )),
    }
}

/// Checks an UpdateConversation request: a title, a visibility, or both.
pub fn update(conversation: &str, title: Option<&str>, visibility: i32) -> Result<(), ChatError> {
    conversation_id(conversation)?;
    if let Some(title) = title {
        check_title(title)?;
    }
    match HistoryVisibility::try_from(visibility) {
        Ok(HistoryVisibility::Unspecified) if title.is_none() => Err(ChatError::InvalidArgument(
            "nothing to update: set title, history_visibility or both".into(),
        )),
        Ok(_) => Ok(()),
        Err(_) => Err(ChatError::InvalidArgument(format!(
            "history_visibility {visibility} is not SHARED (1) or SINCE_JOINED (2)"
        ))),
    }
}

/// The history visibility a new conversation of `kind` asks for, as
/// stored: SHARED unless set; SINCE_JOINED for groups only.
pub fn visibility_of(kind: ConversationKind, visibility: i32) -> Result<i32, ChatError> {
    match HistoryVisibility::try_from(visibility) {
        Ok(HistoryVisibility::Unspecified | HistoryVisibility::Shared) => {
            Ok(HistoryVisibility::Shared as i32)
        }
        Ok(HistoryVisibility::SinceJoined) if kind == ConversationKind::Group => {
            Ok(HistoryVisibility::SinceJoined as i32)
        }
        Ok(HistoryVisibility::SinceJoined) => Err(ChatError::InvalidArgument(
            "a DIRECT conversation's history is SHARED: its two members read all of it".into(),
        )),
        Err(_) => Err(ChatError::InvalidArgument(format!(
            "history_visibility {visibility} is not SHARED (1) or SINCE_JOINED (2)"
        ))),
    }
}

/// Checks a new conversation and returns its full member set (caller included).
pub fn create(
    limits: &SizeLimits,
    caller: &str,
    kind: i32,
    title: &str,
    member_ids: &[String],
) -> Result<(ConversationKind, Vec<String>), ChatError> {
    let kind = ConversationKind::try_from(kind)
        .ok()
        .filter(|k| *k != ConversationKind::Unspecified)
        .ok_or_else(|| ChatError::InvalidArgument("kind must be DIRECT or GROUP".into()))?;
    check_title(title)?;
    let mut members = user_ids(member_ids)?;
    members.insert(caller.to_string());
    match kind {
        ConversationKind::Direct if members.len() != 2 => {
            return Err(ChatError::InvalidArgument(format!(
                "a DIRECT conversation has exactly two members (you and one other user); got {}",
                members.len()
            )))
        }
        ConversationKind::Group if members.len() > limits.max_group_members => {
            return Err(ChatError::ResourceExhausted(group_limit(
                limits.max_group_members,
                &format!("{} were asked for, you included", members.len()),
            )))
        }
        _ => {}
    }
    Ok((kind, members.into_iter().collect()))
}

/// The refusal of a group that would exceed `max` members (`why` says by
/// how many); history uses it too.
pub fn group_limit(max: usize, why: &str) -> String {
    format!(
        "group size limit: a group has at most {max} members \
         (CONFAB_MAX_GROUP_MEMBERS={max}); {why}"
    )
}

/// Which way a history page is read, and from where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageCursor {
    /// Newest first, seq < the bound (`u64::MAX` = from the end).
    Before(u64),
    /// Oldest first, seq > the bound.
    After(u64),
}

/// One page of a conversation's history to read: which conversation, where
/// from, and at most how many messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page<'a> {
    pub conversation_id: &'a str,
    pub cursor: PageCursor,
    pub limit: u32,
}

impl<'a> Page<'a> {
    /// Up to `limit` messages of `conversation_id` with seq < `bound`,
    /// newest first.
    pub fn before(conversation_id: &'a str, bound: u64, limit: u32) -> Self {
        Page {
            conversation_id,
            cursor: PageCursor::Before(bound),
            limit,
        }
    }

    /// Up to `limit` messages of `conversation_id` with seq > `bound`,
    /// oldest first.
    pub fn after(conversation_id: &'a str, bound: u64, limit: u32) -> Self {
        Page {
            conversation_id,
            cursor: PageCursor::After(bound),
            limit,
        }
    }
}

/// A `ListConversations` page when none is asked for.
pub const DEFAULT_CONVERSATIONS_PAGE: u32 = 50;

/// The largest `ListConversations` page.
pub const MAX_CONVERSATIONS_PAGE: u32 = 200;

/// The effective size of a page asked for as `limit`, for every paged
/// call: 0 means `default`, more than `max` means `max`.
fn page_size(limit: u32, default: u32, max: u32) -> u32 {
    match limit {
        0 => default,
        n => n.min(max),
    }
}

/// The effective size of a `ListConversations` page asked for as `limit`.
pub fn conversations_page(limit: u32) -> u32 {
    page_size(limit, DEFAULT_CONVERSATIONS_PAGE, MAX_CONVERSATIONS_PAGE)
}

/// A `Sync` page when none is asked for.
pub const DEFAULT_SYNC_PAGE: u32 = 200;

/// The largest `Sync` page: a client catching up after 1,000 changes gets
/// them in one answer.
pub const MAX_SYNC_PAGE: u32 = 1000;

/// The effective size of a `Sync` page asked for as `limit`.
pub fn sync_page(limit: u32) -> u32 {
    page_size(limit, DEFAULT_SYNC_PAGE, MAX_SYNC_PAGE)
}

/// Longest search query, in characters.
pub const MAX_SEARCH_QUERY_CHARS: usize = 256;
/// Most words (and CJK runs) in a search query.
pub const MAX_SEARCH_TERMS: usize = 16;
/// Hits per search page when the request leaves it 0.
pub const DEFAULT_SEARCH_PAGE: u32 = 20;
/// Most hits per search page.
pub const MAX_SEARCH_PAGE: u32 = 100;

/// Checks a search query and returns what to find: INVALID_ARGUMENT for
/// one that is empty, too long, or has no letters or digits to find.
pub fn search_query(query: &str) -> Result<Vec<crate::search::Term>, ChatError> {
    if query.trim().is_empty() {
        return Err(ChatError::InvalidArgument(
            "query is required: the words to find".into(),
        ));
    }
    let chars = query.chars().count();
    if chars > MAX_SEARCH_QUERY_CHARS {
        return Err(ChatError::InvalidArgument(format!(
            "query is {chars} characters long; the limit is {MAX_SEARCH_QUERY_CHARS}"
        )));
    }
    let terms = crate::search::terms(query);
    if terms.is_empty() {
        return Err(ChatError::InvalidArgument(
            "query has no words to find: give letters or digits (punctuation and emoji are not indexed)".into(),
        ));
    }
    if terms.len() > MAX_SEARCH_TERMS {
        return Err(ChatError::InvalidArgument(format!(
            "query has {} words; the limit is {MAX_SEARCH_TERMS}",
            terms.len()
        )));
    }
    Ok(terms)
}

/// The hits per search page for a requested `limit` (0: the default).
pub fn search_page(limit: u32) -> u32 {
    page_size(limit, DEFAULT_SEARCH_PAGE, MAX_SEARCH_PAGE)
}

/// Checks a history request and returns the page it asks for, with the
/// effective limit.
pub fn history_page(
    conversation_id: &str,
    before_seq: Option<u64>,
    after_seq: Option<u64>,
    limit: u32,
) -> Result<Page<'_>, ChatError> {
    let cursor = match (before_seq, after_seq) {
        (None, None) => PageCursor::Before(u64::MAX),
        (Some(b), None) => PageCursor::Before(b),
        (None, Some(a)) => PageCursor::After(a),
        _ => {
            return Err(ChatError::InvalidArgument(
                "set before_seq or after_seq, not both".into(),
            ))
        }
    };
    let limit = page_size(limit, DEFAULT_PAGE, MAX_PAGE);
    Ok(Page {
        conversation_id,
        cursor,
        limit,
    })
}

/// Checks that a user id is non-empty, short and printable.
pub fn check_user_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("user id must not be empty"));
    }
    if id.len() > MAX_USER_ID_LEN {
        return Err(Status::invalid_argument(format!(
            "user id is {} bytes; at most {MAX_USER_ID_LEN} are allowed",
            id.len()
        )));
    }
    if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Status::invalid_argument(
            "user id must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_refused_member_id_is_quoted_short() {
        let huge = "x".repeat(1 << 20);
        let e = user_ids([&huge]).expect_err("too long");
        let text = e.to_string();
        assert!(text.len() < 400, "{} bytes", text.len());
        assert!(text.contains("\"xxxx") && text.contains('…'), "{text}");
        let e = user_ids([&"bad\u{7}id".to_string()]).expect_err("control");
        assert!(e.to_string().contains("\"bad\\u{7}id\""), "{e}");
    }

    use super::*;

    #[test]
    fn send_rejects_each_bad_field_with_a_reason() {
        let l = SizeLimits::default();
        assert!(send(&l, "c", "m1", "hi").is_ok());
        let msg = |r: Result<(), ChatError>| r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg(send(&l, "", "m1", "hi")).contains("conversation_id"));
        assert!(msg(send(&l, "c", "", "hi")).contains("client_msg_id"));
        assert!(msg(send(&l, "c", "m1", "")).contains("empty"));
        let big = "x".repeat(DEFAULT_MAX_BODY_BYTES + 1);
        let too_big = send(&l, "c", "m1", &big).expect_err("too big");
        assert_eq!(too_big.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            too_big.to_string(),
            "body limit: the body is 16385 bytes, at most 16384 are allowed \
             (CONFAB_MAX_BODY_BYTES=16384); send a shorter body or split it into several messages"
        );
        let empty = send(&l, "c", "m1", "").expect_err("empty");
        assert_eq!(empty.code(), tonic::Code::InvalidArgument);
        assert!(send(&l, "c", "m1", &"x".repeat(DEFAULT_MAX_BODY_BYTES)).is_ok());
        assert!(msg(send(&l, "c", "m1", "a\0b")).contains("NUL"));
        assert!(msg(send(&l, "c", "m\0", "ab")).contains("NUL"));
        assert!(msg(send(&l, "c\n", "m", "ab")).contains("control"));
        assert!(send(&l, "c", "m1", "line one\nline two\t!").is_ok());
    }

    #[test]
    fn direct_needs_exactly_two_distinct_members_including_caller() {
        let l = SizeLimits::default();
        let direct = ConversationKind::Direct as i32;
        let (_, m) = create(&l, "a", direct, "", &["b".into()]).expect("pair");
        assert_eq!(m, vec!["a".to_string(), "b".to_string()]);
        assert!(create(&l, "a", direct, "", &["a".into(), "b".into()]).is_ok());
        assert!(create(&l, "a", direct, "", &[]).is_err());
        assert!(create(&l, "a", direct, "", &["a".into()]).is_err());
        assert!(create(&l, "a", direct, "", &["b".into(), "c".into()]).is_err());
        assert!(create(&l, "a", 0, "", &["b".into()]).is_err());
        assert!(create(&l, "a", 99, "", &["b".into()]).is_err());
        let (_, g) = create(&l, "a", ConversationKind::Group as i32, "t", &[]).expect("solo group");
        let small = SizeLimits {
            max_group_members: 2,
            ..l
        };
        let err = create(
            &small,
            "a",
            ConversationKind::Group as i32,
            "t",
            &["b".into(), "c".into()],
        );
        assert!(
            matches!(err, Err(ChatError::ResourceExhausted(m)) if m == "group size limit: a group has at most 2 members (CONFAB_MAX_GROUP_MEMBERS=2); 3 were asked for, you included")
        );
        assert_eq!(g, vec!["a".to_string()]);
    }

    #[test]
    fn add_and_remove_members_check_every_id() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let added = add_members("c", &ids(&["b", "a", "b"])).expect("valid");
        assert_eq!(added.into_iter().collect::<Vec<_>>(), ids(&["a", "b"]));
        let none = add_members("c", &[]).expect_err("nobody to add");
        assert_eq!(
            none,
            ChatError::InvalidArgument("member_ids must list at least one user to add".into())
        );
        assert!(add_members("", &ids(&["a"])).is_err());
        assert!(add_members("c", &ids(&["a b"])).is_err());
        assert!(remove_member("c", "a").is_ok());
        assert!(remove_member("c", "").is_err());
        assert!(remove_member("c\u{7}", "a").is_err());
    }

    #[test]
    fn page_bounds() {
        assert_eq!(
            history_page("c", None, None, 0).ok(),
            Some(Page::before("c", u64::MAX, 50))
        );
        assert_eq!(
            history_page("c", Some(10), None, 5).ok(),
            Some(Page::before("c", 10, 5))
        );
        assert_eq!(
            history_page("c", None, Some(3), 10_000).ok(),
            Some(Page::after("c", 3, 500))
        );
        assert!(history_page("c", Some(3), Some(5), 1).is_err());
        assert_eq!(
            history_page("c", None, Some(0), 1).ok(),
            Some(Page::after("c", 0, 1))
        );
    }
}

/// The id of the DIRECT conversation between two users: the same pair
/// always maps to the same id, which is what makes "create again" idempotent.
pub fn direct_conversation_id(members: &[String]) -> String {
    const NS: uuid::Uuid = uuid::Uuid::from_u128(0x6f1c_4a53_8e0d_4d7b_9a62_0c1f_3b5e_d1a7);
    let mut sorted: Vec<&str> = members.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    format!(
        "dm-{}",
        uuid::Uuid::new_v5(&NS, sorted.join("\n").as_bytes())
    )
}

/// A new W3C trace context (`traceparent`) for one request: version 00,
/// random trace and span ids, sampled.
pub fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}

/// A fresh id for a group conversation.
pub fn group_conversation_id() -> String {
    format!("grp-{}", uuid::Uuid::new_v4())
}

#[cfg(test)]
mod id_tests {
    use super::*;

    #[test]
    fn direct_id_ignores_member_order() {
        let a = direct_conversation_id(&["bob".into(), "alice".into()]);
        let b = direct_conversation_id(&["alice".into(), "bob".into()]);
        assert_eq!(a, b);
        assert_ne!(a, direct_conversation_id(&["alice".into(), "carol".into()]));
        assert_ne!(group_conversation_id(), group_conversation_id());
        let tp = new_traceparent();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            vec![2, 32, 16, 2]
        );
        assert!(tp.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
    }
}
