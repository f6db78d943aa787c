//! `ListConversations` page tokens: opaque to clients (base64url of an
//! internal `ConversationsPageToken`), naming whose listing they continue
//! and where it stopped.

use crate::store::ListAfter;
use confab_core::error::ChatError;
use confab_core::opaque;
use confab_proto::internal::v1::ConversationsPageToken;

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
}
