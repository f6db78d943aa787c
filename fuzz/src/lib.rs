//! The checks behind Confab's fuzz targets (`fuzz_targets/`), in a library
//! that the seed generator (`examples/seed_corpus.rs`) shares.
//!
//! Each target decodes what a client can send, runs the validation the
//! gateway (or history, for what the gateway passes on) runs on it, and
//! asserts, beyond "never panics":
//! - whatever decodes re-encodes and decodes to the same message;
//! - each check accepts exactly what the rules written out here accept
//!   (an independent statement of docs/security.md and the proto comments),
//!   and what it returns is what was asked for;
//! - a refusal has the documented code (INVALID_ARGUMENT, or
//!   RESOURCE_EXHAUSTED naming the limit) and a message.

use confab_core::error::ChatError;
use confab_core::validate::{
    self, Page, PageCursor, SizeLimits, DEFAULT_CONVERSATIONS_PAGE, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_GROUP_MEMBERS, DEFAULT_PAGE, MAX_CLIENT_MSG_ID_LEN, MAX_CONVERSATIONS_PAGE,
    MAX_CONVERSATION_ID_LEN, MAX_PAGE, MAX_TITLE_LEN,
};
use confab_core::sync_cursor;
use confab_core::validate::{check_user_id, MAX_USER_ID_LEN};
use confab_proto::v1::*;
use prost::Message;
use std::collections::BTreeSet;
use std::fmt::Debug;

pub mod seeds;
pub mod token;
pub mod wire;

/// The limits every check runs under: the defaults, and small ones so that
/// the limit refusals are reached too.
pub const LIMITS: [SizeLimits; 2] = [
    SizeLimits {
        max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        max_group_members: DEFAULT_MAX_GROUP_MEMBERS,
        search_index: true,
    },
    SizeLimits {
        max_body_bytes: 8,
        max_group_members: 3,
        search_index: true,
    },
];

/// The caller of every request (the guard has already checked its token).
pub const CALLER: &str = "alice";

/// Target `client_frame`: `data` as a frame of a `Connect` stream.
/// A WebSocket message of `/v1/connect` in either format: see
/// `fuzz_targets/ws_frame.rs`.
pub fn ws_frame(data: &[u8]) {
    use confab_proto::websocket::{Format, FORMATS};
    for format in FORMATS {
        if let Ok(frame) = format.decode(data) {
            // What the session gets is a ClientFrame like a gRPC stream's.
            client_frame(&frame.encode_to_vec());
        }
    }
    // Server frames: the JSON written for one reads back as the same frame.
    if let Ok(frame) = confab_proto::v1::ServerFrame::decode(data) {
        let json = Format::Json.encode(&frame);
        // "{}" is what the gateway writes for a frame the JSON mapping
        // cannot hold (a timestamp out of its range): never one it makes.
        if json != b"{}" {
            let back = Format::Json.decode_server(&json);
            assert_eq!(back.as_ref(), Ok(&frame), "{}", String::from_utf8_lossy(&json));
        }
    }
}

pub fn client_frame(data: &[u8]) {
    let Ok(frame) = ClientFrame::decode(data) else {
        return;
    };
    round_trip(&frame);
    match &frame.frame {
        // The session runs `validate::send`, as `SendMessage` does.
        Some(client_frame::Frame::Send(f)) => {
            for limits in &LIMITS {
                check_send(limits, &f.conversation_id, &f.client_msg_id, &f.body);
            }
        }
        // The session reads what the client missed from history, page by
        // page from the client's seq: history checks each read.
        Some(client_frame::Frame::Resume(r)) => {
            for (conversation_id, last) in &r.last_seq {
                let read = GetHistoryRequest {
                    conversation_id: conversation_id.clone(),
                    after_seq: Some(*last),
                    before_seq: None,
                    limit: MAX_PAGE,
                };
                // Any seq is a valid place to resume from.
                assert_eq!(
                    check_history(&read),
                    Some(Page::after(conversation_id, *last, MAX_PAGE))
                );
            }
        }
        // The session runs what `MarkRead` runs.
        Some(client_frame::Frame::Read(r)) => check_conversation_id(&r.conversation_id),
        // The session checks the id; history, membership.
        Some(client_frame::Frame::Typing(t)) => check_conversation_id(&t.conversation_id),
        // The session asks history what `Sync` asks.
        Some(client_frame::Frame::Sync(r)) => check_sync(r),
        Some(client_frame::Frame::Ping(_)) | None => {}
    }
}

/// Target `requests`: `data` as each unary request of the Chat service.
pub fn requests(data: &[u8]) {
    if let Ok(r) = SendMessageRequest::decode(data) {
        round_trip(&r);
        for limits in &LIMITS {
            check_send(limits, &r.conversation_id, &r.client_msg_id, &r.body);
        }
    }
    if let Ok(r) = CreateConversationRequest::decode(data) {
        round_trip(&r);
        for limits in &LIMITS {
            check_create(limits, r.kind, &r.title, &r.member_ids);
        }
    }
    if let Ok(r) = AddMembersRequest::decode(data) {
        round_trip(&r);
        check_add_members(&r);
    }
    if let Ok(r) = RemoveMemberRequest::decode(data) {
        round_trip(&r);
        check_remove_member(&r);
    }
    if let Ok(r) = GetHistoryRequest::decode(data) {
        round_trip(&r);
        check_history(&r);
    }
    if let Ok(r) = ListConversationsRequest::decode(data) {
        round_trip(&r);
        // Any limit is a page size from 1 to the largest (0: the default);
        // the token is history's to check (see confab-history's page_token).
        let size = validate::conversations_page(r.limit);
        let expected = match r.limit {
            0 => DEFAULT_CONVERSATIONS_PAGE,
            n => n.min(MAX_CONVERSATIONS_PAGE),
        };
        assert_eq!(size, expected);
        assert!((1..=MAX_CONVERSATIONS_PAGE).contains(&size));
    }
    if let Ok(r) = MarkReadRequest::decode(data) {
        round_trip(&r);
        // The gateway checks the id; any seq may be asked for (history
        // refuses one past the newest, which only it knows).
        check_conversation_id(&r.conversation_id);
    }
    // The gateway checks the id; history, membership.
    if let Ok(r) = GetConversationRequest::decode(data) {
        round_trip(&r);
        check_conversation_id(&r.conversation_id);
    }
    if let Ok(r) = SyncRequest::decode(data) {
        round_trip(&r);
        check_sync(&r);
    }
    if let Ok(r) = GetPresenceRequest::decode(data) {
        round_trip(&r);
        check_presence(&r);
    }
    if let Ok(r) = EditMessageRequest::decode(data) {
        round_trip(&r);
        for limits in &LIMITS {
            let checked =
                validate::edit(limits, &r.conversation_id, r.seq, &r.body, &r.client_msg_id);
            // An edit is a send's checks on its body and key, and a seq.
            let as_send = validate::send(limits, &r.conversation_id, &r.client_msg_id, &r.body);
            match (&checked, r.seq) {
                (Ok(()), seq) => assert!(seq > 0 && as_send.is_ok()),
                (Err(e), 0) => invalid(e),
                (Err(e), _) => assert_eq!(Some(e), as_send.as_ref().err()),
            }
        }
    }
    if let Ok(r) = DeleteMessageRequest::decode(data) {
        round_trip(&r);
        check_change_of(&r.conversation_id, r.seq, &r.client_msg_id);
    }
    if let Ok(r) = ReactRequest::decode(data) {
        round_trip(&r);
        check_change_of(&r.conversation_id, r.seq, &r.client_msg_id);
        match validate::emoji(&r.emoji) {
            // Accepted: one emoji, bounded, and already fully qualified
            // as history checks it again.
            Ok(e) => {
                assert!(!r.emoji.is_empty() && r.emoji.len() <= validate::MAX_EMOJI_BYTES);
                assert_eq!(validate::emoji(&e).as_ref(), Ok(&e), "{e:?}");
            }
            Err(e) => invalid(&e),
        }
    }
    if let Ok(r) = GetEditHistoryRequest::decode(data) {
        round_trip(&r);
        check_conversation_id(&r.conversation_id);
    }
    if let Ok(r) = SearchMessagesRequest::decode(data) {
        round_trip(&r);
        match validate::search_query(&r.query) {
            // Accepted: something to find, within the bounds, and every
            // term matches the text it came from.
            Ok(terms) => {
                assert!(!terms.is_empty() && terms.len() <= validate::MAX_SEARCH_TERMS);
                assert!(r.query.chars().count() <= validate::MAX_SEARCH_QUERY_CHARS);
                assert!(
                    confab_core::search::matches(&r.query, &terms),
                    "a query does not find itself: {:?}",
                    r.query
                );
                let s = confab_core::search::snippet(&r.query, &terms, 80);
                let n = s.text.chars().count() as u32;
                assert!(!s.marks.is_empty(), "no highlight in {:?}", r.query);
                assert!(s.marks.iter().all(|&(a, b)| a < b && b <= n), "{s:?}");
                let rank = confab_core::search::rank(&r.query, &terms);
                assert!(rank > 0.0 && rank <= 1.0, "rank {rank}");
            }
            Err(e) => invalid(&e),
        }
        let page = validate::search_page(r.limit);
        assert!((1..=validate::MAX_SEARCH_PAGE).contains(&page));
    }
    if let Ok(r) = SetRoleRequest::decode(data) {
        round_trip(&r);
        let well_formed = conversation_id_ok(&r.conversation_id)
            && user_id_ok(&r.user_id)
            && (1..=3).contains(&r.role);
        match validate::set_role(&r.conversation_id, &r.user_id, r.role) {
            Ok(()) => assert!(well_formed, "accepted a bad SetRole"),
            Err(e) => {
                assert!(!well_formed, "refused a good SetRole: {e:?}");
                invalid(&e);
            }
        }
    }
    if let Ok(r) = UpdateConversationRequest::decode(data) {
        round_trip(&r);
        let title_ok = r
            .title
            .as_deref()
            .is_none_or(|t| t.len() <= MAX_TITLE_LEN && !t.contains('\0'));
        let something = r.title.is_some() || r.history_visibility != 0;
        let well_formed = conversation_id_ok(&r.conversation_id)
            && title_ok
            && something
            && (0..=2).contains(&r.history_visibility);
        match validate::update(&r.conversation_id, r.title.as_deref(), r.history_visibility) {
            Ok(()) => assert!(well_formed, "accepted a bad update"),
            Err(e) => {
                assert!(!well_formed, "refused a good update: {e:?}");
                invalid(&e);
            }
        }
    }
    if let Ok(r) = CreateConversationRequest::decode(data) {
        // SHARED unless set; SINCE_JOINED for groups only.
        if let Ok(kind) = ConversationKind::try_from(r.kind) {
            match validate::visibility_of(kind, r.history_visibility) {
                Ok(v) => assert!(
                    v == 1 || (v == 2 && kind == ConversationKind::Group),
                    "{v}"
                ),
                Err(e) => {
                    assert!(r.history_visibility != 0 && r.history_visibility != 1);
                    invalid(&e);
                }
            }
        }
    }
}

/// An edit, a delete or a reaction names a conversation, a seq and a retry
/// key: refused exactly when one of them is malformed.
fn check_change_of(conversation_id: &str, seq: u64, client_msg_id: &str) {
    let well_formed = conversation_id_ok(conversation_id)
        && seq > 0
        && !client_msg_id.is_empty()
        && client_msg_id.len() <= MAX_CLIENT_MSG_ID_LEN
        && !client_msg_id.contains('\0');
    match validate::change_of(conversation_id, seq, client_msg_id) {
        Ok(()) => assert!(well_formed, "accepted a bad change"),
        Err(e) => {
            assert!(!well_formed, "refused a good change: {e:?}");
            invalid(&e);
        }
    }
}

/// `GetPresence` asks about 1 to 100 distinct valid user ids; they come
/// back once each, in the order asked.
fn check_presence(r: &GetPresenceRequest) {
    let mut distinct: Vec<&String> = Vec::new();
    for id in &r.user_ids {
        if !distinct.contains(&id) {
            distinct.push(id);
        }
    }
    let ok = !r.user_ids.is_empty()
        && r.user_ids.iter().all(|u| user_id_ok(u))
        && distinct.len() <= validate::MAX_PRESENCE_USERS;
    match validate::presence_ids(&r.user_ids) {
        Ok(ids) => {
            assert!(ok, "accepted a bad GetPresence");
            assert_eq!(ids.iter().collect::<Vec<_>>(), distinct);
        }
        Err(e) => {
            assert!(!ok, "refused a good GetPresence: {e:?}");
            invalid(&e);
        }
    }
}

/// What history checks of a `Sync` before reading: the limit is a page
/// size, and the cursor is one `Sync` gave the caller or a precise
/// INVALID_ARGUMENT. A cursor it accepts is the caller's, consistent (a
/// finished sync's counters, or a paged one's window with the last id
/// given), and a finished one encodes back to what it says.
fn check_sync(r: &SyncRequest) {
    let size = validate::conversations_page(r.limit);
    assert!((1..=MAX_CONVERSATIONS_PAGE).contains(&size));
    match sync_cursor::decode(CALLER, &r.cursor) {
        Ok(None) => assert!(r.cursor.is_empty(), "a cursor read as none"),
        Ok(Some(c)) => {
            assert!(!r.cursor.is_empty());
            assert_eq!(c.user_id, CALLER);
            assert!(c.seen.len() <= sync_cursor::MAX_PARTITIONS);
            assert!(c.until.len() <= sync_cursor::MAX_PARTITIONS);
            if c.paging {
                assert!(!c.after_conversation_id.is_empty());
                assert!(!c.initial || c.seen.is_empty());
            } else {
                assert!(c.until.is_empty() && c.after_conversation_id.is_empty() && !c.initial);
                let again = sync_cursor::encode(CALLER, &c.seen, None);
                let back = sync_cursor::decode(CALLER, &again)
                    .expect("a cursor Sync gives decodes")
                    .expect("a cursor");
                let mut seen = c.seen.clone();
                while seen.last() == Some(&0) {
                    seen.pop();
                }
                assert_eq!(back.seen, seen);
            }
            // Never another user's.
            assert!(sync_cursor::decode("mallory", &r.cursor).is_err());
        }
        Err(e) => {
            assert!(!r.cursor.is_empty(), "an empty cursor refused");
            invalid(&e);
        }
    }
}

/// Encoding `m` and decoding the bytes gives `m` back.
pub fn round_trip<M: Message + Default + PartialEq + Debug>(m: &M) {
    let bytes = m.encode_to_vec();
    assert_eq!(bytes.len(), m.encoded_len());
    let again = M::decode(bytes.as_slice()).expect("a re-encoded message decodes");
    assert_eq!(&again, m, "the re-encoded message decodes differently");
}

/// The rule for conversation ids.
fn conversation_id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_CONVERSATION_ID_LEN && !id.chars().any(char::is_control)
}

/// The rule for user ids.
fn user_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_USER_ID_LEN
        && !id.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// A refusal of malformed input.
fn invalid(e: &ChatError) {
    assert!(
        matches!(e, ChatError::InvalidArgument(m) if !m.is_empty()),
        "{e:?}"
    );
}

fn check_conversation_id(id: &str) {
    match validate::conversation_id(id) {
        Ok(()) => assert!(conversation_id_ok(id), "accepted conversation id {id:?}"),
        Err(e) => {
            assert!(!conversation_id_ok(id), "refused conversation id {id:?}");
            invalid(&e);
        }
    }
}

fn check_send(limits: &SizeLimits, conversation_id: &str, client_msg_id: &str, body: &str) {
    check_conversation_id(conversation_id);
    let well_formed = conversation_id_ok(conversation_id)
        && !client_msg_id.is_empty()
        && client_msg_id.len() <= MAX_CLIENT_MSG_ID_LEN
        && !client_msg_id.contains('\0')
        && !body.is_empty()
        && !body.contains('\0');
    let fits = body.len() <= limits.max_body_bytes;
    match validate::send(limits, conversation_id, client_msg_id, body) {
        Ok(()) => assert!(well_formed && fits, "accepted a bad send"),
        Err(ChatError::ResourceExhausted(m)) => {
            assert!(well_formed && !fits, "{m}");
            assert!(m.contains("CONFAB_MAX_BODY_BYTES"), "{m}");
        }
        Err(e) => {
            assert!(!well_formed, "refused a good send: {e:?}");
            invalid(&e);
        }
    }
}

fn check_create(limits: &SizeLimits, kind: i32, title: &str, member_ids: &[String]) {
    let direct = kind == ConversationKind::Direct as i32;
    let group = kind == ConversationKind::Group as i32;
    let well_formed = (direct || group)
        && title.len() <= MAX_TITLE_LEN
        && !title.contains('\0')
        && member_ids.iter().all(|m| user_id_ok(m));
    let mut members: BTreeSet<String> = member_ids.iter().cloned().collect();
    members.insert(CALLER.to_string());
    let size_ok = if direct {
        members.len() == 2
    } else {
        members.len() <= limits.max_group_members
    };
    match validate::create(limits, CALLER, kind, title, member_ids) {
        Ok((k, got)) => {
            assert!(well_formed && size_ok, "accepted a bad create");
            assert_eq!(k as i32, kind);
            assert_eq!(got, members.into_iter().collect::<Vec<_>>());
            if direct {
                // The id the gateway derives for the pair is a valid one.
                let id = validate::direct_conversation_id(&got);
                assert!(validate::conversation_id(&id).is_ok(), "{id}");
            }
        }
        Err(ChatError::ResourceExhausted(m)) => {
            assert!(well_formed && group && !size_ok, "{m}");
            assert!(m.contains("CONFAB_MAX_GROUP_MEMBERS"), "{m}");
        }
        Err(e) => {
            assert!(!well_formed || (direct && !size_ok), "refused: {e:?}");
            invalid(&e);
        }
    }
}

fn check_add_members(r: &AddMembersRequest) {
    let ok = conversation_id_ok(&r.conversation_id)
        && !r.member_ids.is_empty()
        && r.member_ids.iter().all(|m| user_id_ok(m));
    match validate::add_members(&r.conversation_id, &r.member_ids) {
        Ok(members) => {
            assert!(ok, "accepted a bad AddMembers");
            assert_eq!(members, r.member_ids.iter().cloned().collect());
        }
        Err(e) => {
            assert!(!ok, "refused a good AddMembers: {e:?}");
            invalid(&e);
        }
    }
}

fn check_remove_member(r: &RemoveMemberRequest) {
    let ok = conversation_id_ok(&r.conversation_id) && user_id_ok(&r.member_id);
    match validate::remove_member(&r.conversation_id, &r.member_id) {
        Ok(()) => {
            assert!(ok, "accepted a bad RemoveMember");
            assert!(check_user_id(&r.member_id).is_ok());
        }
        Err(e) => {
            assert!(!ok, "refused a good RemoveMember: {e:?}");
            invalid(&e);
        }
    }
}

/// What history checks on a `GetHistory` before reading (the gateway
/// passes the request on as it is); the page when accepted.
fn check_history(r: &GetHistoryRequest) -> Option<Page<'_>> {
    let page = validate::history_page(&r.conversation_id, r.before_seq, r.after_seq, r.limit);
    let expected_limit = match r.limit {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    };
    let page = match (r.before_seq, r.after_seq, page) {
        (Some(_), Some(_), Err(e)) => {
            invalid(&e);
            None
        }
        (Some(_), Some(_), Ok(p)) => panic!("accepted both cursors: {p:?}"),
        (_, _, Err(e)) => panic!("refused a page with at most one cursor: {e:?}"),
        (before, after, Ok(page)) => {
            let Page { cursor, limit, .. } = page;
            let expected = match (before, after) {
                (Some(b), _) => PageCursor::Before(b),
                (None, Some(a)) => PageCursor::After(a),
                (None, None) => PageCursor::Before(u64::MAX),
            };
            assert_eq!(cursor, expected);
            assert_eq!(limit, expected_limit);
            assert!((1..=MAX_PAGE).contains(&limit));
            Some(page)
        }
    };
    check_conversation_id(&r.conversation_id);
    page
}
