//! `ListConversations` and `SearchMessages` page tokens: opaque to clients
//! (base64url of an internal `ConversationsPageToken` or
//! `SearchPageToken`), naming whose listing or search they continue and
//! where it stopped.

use crate::store::search::SearchAfter;
use crate::store::ListAfter;
use confab_core::error::ChatError;
use confab_core::opaque;
use confab_proto::internal::v1::{ConversationsPageToken, SearchPageToken};

/// Longest token accepted; the ones given out are far shorter.
const MAX_TOKEN_LEN: usize = 1024;

/// The token that continues `user`'s listing after `after`.
pub fn encode(user: &str, after: &ListAfter) -> String {
    let token = ConversationsPageToken {
        user_id: user.to_string(),
        last_activity_ms: after.last_activity_ms,
        conversation_id: after.conversation_id.clone(),
    };
    opaque::seal(&token)
}

/// Where `token` continues `user`'s listing: `None` (from the start) for
/// an empty one; INVALID_ARGUMENT for one that `ListConversations` did not
/// give `user`.
pub fn decode(user: &str, token: &str) -> Result<Option<ListAfter>, ChatError> {
    if token.is_empty() {
        return Ok(None);
    }
    let not_ours = || {
        ChatError::InvalidArgument(
            "page_token is not one that ListConversations returned; list again without one".into(),
        )
    };
    let token: ConversationsPageToken = opaque::open(token, MAX_TOKEN_LEN, not_ours)?;
    if token.user_id != user {
        return Err(ChatError::InvalidArgument(
            "page_token continues another user's listing; list again without one".into(),
        ));
    }
    if token.conversation_id.is_empty() {
        return Err(not_ours());
    }
    Ok(Some(ListAfter {
        last_activity_ms: token.last_activity_ms,
        conversation_id: token.conversation_id,
    }))
}

/// Longest search token accepted: a query of the longest length in 4-byte
/// characters, and the rest.
const MAX_SEARCH_TOKEN_LEN: usize = 4096;

/// What a search page continues: whose search, for what, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchAt<'a> {
    /// Who searches.
    pub user: &'a str,
    /// The query as asked.
    pub query: &'a str,
    /// The conversation searched, or "" for all.
    pub conversation_id: &'a str,
}

/// The token that continues `at` after the hit `after`.
pub fn encode_search(at: &SearchAt<'_>, after: &SearchAfter) -> String {
    opaque::seal(&SearchPageToken {
        user_id: at.user.to_string(),
        query: at.query.to_string(),
        conversation_id: at.conversation_id.to_string(),
        sent_at_ms: after.sent_at_ms,
        after_conversation_id: after.conversation_id.clone(),
        after_seq: after.seq,
    })
}

/// Where `token` continues the search `at`: the first page for an empty
/// one; INVALID_ARGUMENT for one that `SearchMessages` did not give for
/// this same search.
pub fn decode_search(at: &SearchAt<'_>, token: &str) -> Result<SearchAfter, ChatError> {
    if token.is_empty() {
        return Ok(SearchAfter::FIRST);
    }
    let not_ours = || {
        ChatError::InvalidArgument(
            "page_token is not one that SearchMessages returned; search again without one".into(),
        )
    };
    let token: SearchPageToken = opaque::open(token, MAX_SEARCH_TOKEN_LEN, not_ours)?;
    if token.user_id != at.user
        || token.query != at.query
        || token.conversation_id != at.conversation_id
    {
        return Err(ChatError::InvalidArgument(
            "page_token continues another search (another user, query or conversation); search again without one".into(),
        ));
    }
    if token.after_conversation_id.is_empty() {
        return Err(not_ours());
    }
    Ok(SearchAfter {
        sent_at_ms: token.sent_at_ms,
        conversation_id: token.after_conversation_id,
        seq: token.after_seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_continues_only_its_own_users_listing() {
        let after = ListAfter {
            last_activity_ms: 1_700_000_000_123,
            conversation_id: "grp-1".into(),
        };
        let token = encode("bob", &after);
        assert_eq!(decode("bob", &token).expect("bob's"), Some(after));
        assert_eq!(decode("bob", "").expect("empty"), None);
        let refused = |user: &str, token: &str| match decode(user, token) {
            Err(ChatError::InvalidArgument(m)) => m,
            other => panic!("{token:?} for {user}: {other:?}"),
        };
        assert!(refused("alice", &token).contains("another user's listing"));
        for bad in ["!!", "AAAA", &"A".repeat(MAX_TOKEN_LEN + 1)] {
            assert!(refused("bob", bad).contains("not one that ListConversations returned"));
        }
    }

    #[test]
    fn a_search_token_continues_only_its_own_search() {
        let at = SearchAt {
            user: "bob",
            query: "東京 meeting",
            conversation_id: "",
        };
        let after = SearchAfter {
            sent_at_ms: 1_700_000_000_123,
            conversation_id: "grp-1".into(),
            seq: 7,
        };
        let token = encode_search(&at, &after);
        assert_eq!(decode_search(&at, &token).expect("bob's"), after);
        assert_eq!(decode_search(&at, "").expect("first"), SearchAfter::FIRST);
        let refused = |at: &SearchAt<'_>, token: &str| match decode_search(at, token) {
            Err(ChatError::InvalidArgument(m)) => m,
            other => panic!("{token:?}: {other:?}"),
        };
        for other in [
            SearchAt {
                user: "alice",
                ..at.clone()
            },
            SearchAt {
                query: "東京",
                ..at.clone()
            },
            SearchAt {
                conversation_id: "grp-1",
                ..at.clone()
            },
        ] {
            assert!(refused(&other, &token).contains("another search"));
        }
        for bad in ["!!", "AAAA", &"A".repeat(MAX_SEARCH_TOKEN_LEN + 1)] {
            assert!(refused(&at, bad).contains("not one that SearchMessages returned"));
        }
    }
}
