//! `Sync`: what changed for a user since a cursor. Every transaction that
//! changes conversations stamps them with the next number of its ingress
//! partition's change counter (`store::apply::Stamp`); a partition has one
//! writer at a time and its counter stays locked until the transaction
//! commits, so a partition's numbers follow its commit order. A cursor is
//! the vector of counters a client has seen (opaque to it: base64url of an
//! internal `SyncCursor`, bound to the user); a conversation changed since
//! the cursor when its number is above the cursor's entry for its
//! partition. Read the counters first, then the changed conversations:
//! everything numbered at or below what was read had committed, and what
//! commits after (in any partition, in any order) is numbered above, so the
//! next sync finds it.

use crate::store::{ConversationPage, Listing, Store};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use confab_core::error::ChatError;
use confab_core::validate;
use confab_proto::internal::v1::SyncCursor;
use confab_proto::prost::Message as _;
use confab_proto::v1::{SyncRequest, SyncResponse};

/// Longest cursor accepted; the ones given out are far shorter.
const MAX_CURSOR_LEN: usize = 4096;

/// Most partitions a cursor may name.
const MAX_PARTITIONS: usize = 4096;

/// Where a sync stands: the changes it reports are those above `since`
/// (every conversation when `None`), up to the counters `until` read when
/// it started; `after` is the last conversation id already given.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    since: Option<Vec<u64>>,
    until: Vec<u64>,
    after: String,
}

/// What changed for `user` since `req.cursor`, a page at a time.
pub async fn sync(
    store: &dyn Store,
    user: &str,
    req: SyncRequest,
) -> Result<SyncResponse, ChatError> {
    let limit = validate::conversations_page(req.limit);
    let cursor = decode(user, &req.cursor)?;
    let counters = store.change_counters().await?;
    let window = match cursor {
        None => Window {
            since: None,
            until: counters,
            after: String::new(),
        },
        Some(c) => {
            let seen = c.seen;
            ahead_of(&seen, &counters)?;
            if c.paging {
                ahead_of(&c.until, &counters)?;
                Window {
                    since: (!c.initial).then_some(seen),
                    until: c.until,
                    after: c.after_conversation_id,
                }
            } else {
                Window {
                    since: Some(seen),
                    until: counters,
                    after: String::new(),
                }
            }
        }
    };
    // Nothing changed anywhere since the cursor: no conversation to read.
    if let Some(since) = &window.since {
        if window.after.is_empty() && !changed_since(since, &window.until) {
            return Ok(SyncResponse {
                cursor: encode(user, since, None),
                ..SyncResponse::default()
            });
        }
    }
    let listing = Listing::Changed {
        since: window.since.as_deref(),
        after: &window.after,
    };
    let ConversationPage {
        conversations,
        next,
    } = store.conversations(user, listing, limit).await?;
    let through = next.map(|n| n.conversation_id);
    let removed_conversation_ids = match &window.since {
        // A first sync reports what the user is in, not what it left.
        None => Vec::new(),
        Some(since) => {
            store
                .departed(user, since, &window.after, through.as_deref())
                .await?
        }
    };
    let has_more = through.is_some();
    let cursor = match through {
        Some(after) => encode(
            user,
            &window.until,
            Some(Window {
                after,
                ..window.clone()
            }),
        ),
        None => encode(user, &window.until, None),
    };
    Ok(SyncResponse {
        conversations,
        removed_conversation_ids,
        cursor,
        has_more,
    })
}

/// Whether any partition's counter in `now` is past `since`.
fn changed_since(since: &[u64], now: &[u64]) -> bool {
    now.iter()
        .enumerate()
        .any(|(p, n)| *n > since.get(p).copied().unwrap_or(0))
}

/// INVALID_ARGUMENT when `cursor` names a change past the store's counters
/// `now`: no cursor this store gave out does (one from another deployment,
/// or made up, would skip changes).
fn ahead_of(cursor: &[u64], now: &[u64]) -> Result<(), ChatError> {
    let ahead = cursor
        .iter()
        .enumerate()
        .any(|(p, seen)| *seen > now.get(p).copied().unwrap_or(0));
    if ahead {
        return Err(ChatError::InvalidArgument(
            "cursor is ahead of this server's changes: it is not one Sync returned here; sync again without a cursor".into(),
        ));
    }
    Ok(())
}

/// The cursor that continues `user`'s sync: after a finished sync,
/// everything up to the counters `seen`; while one is paged, its window.
fn encode(user: &str, seen: &[u64], paging: Option<Window>) -> String {
    let cursor = match paging {
        None => SyncCursor {
            user_id: user.to_string(),
            seen: trimmed(seen),
            ..SyncCursor::default()
        },
        Some(w) => SyncCursor {
            user_id: user.to_string(),
            initial: w.since.is_none(),
            seen: w.since.as_deref().map(trimmed).unwrap_or_default(),
            until: trimmed(&w.until),
            after_conversation_id: w.after,
            paging: true,
        },
    };
    URL_SAFE_NO_PAD.encode(cursor.encode_to_vec())
}

/// `v` without its trailing zeros (a partition past the end is 0).
fn trimmed(v: &[u64]) -> Vec<u64> {
    let len = v.iter().rposition(|n| *n != 0).map_or(0, |i| i + 1);
    v[..len].to_vec()
}

/// The cursor `token` for `user`: `None` for an empty one (everything);
/// INVALID_ARGUMENT for one that `Sync` did not give `user`.
fn decode(user: &str, token: &str) -> Result<Option<SyncCursor>, ChatError> {
    if token.is_empty() {
        return Ok(None);
    }
    let not_ours = || {
        ChatError::InvalidArgument(
            "cursor is not one that Sync returned; sync again without a cursor".into(),
        )
    };
    if token.len() > MAX_CURSOR_LEN {
        return Err(not_ours());
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| not_ours())?;
    let cursor = SyncCursor::decode(bytes.as_slice()).map_err(|_| not_ours())?;
    if cursor.user_id != user {
        return Err(ChatError::InvalidArgument(
            "cursor follows another user's changes; sync again without a cursor".into(),
        ));
    }
    let consistent = if cursor.paging {
        !cursor.after_conversation_id.is_empty() && (!cursor.initial || cursor.seen.is_empty())
    } else {
        cursor.until.is_empty() && cursor.after_conversation_id.is_empty() && !cursor.initial
    };
    if !consistent || cursor.seen.len() > MAX_PARTITIONS || cursor.until.len() > MAX_PARTITIONS {
        return Err(not_ours());
    }
    Ok(Some(cursor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(user: &str, token: &str) -> String {
        match decode(user, token) {
            Err(ChatError::InvalidArgument(m)) => m,
            other => panic!("{token:?} for {user}: {other:?}"),
        }
    }

    #[test]
    fn a_cursor_is_small_and_only_its_own_users() {
        let seen = vec![3, 0, 9, 0, 0];
        let token = encode("bob", &seen, None);
        assert!(token.len() < 40, "{token}");
        let back = decode("bob", &token).expect("bob's").expect("a cursor");
        assert_eq!(back.seen, vec![3, 0, 9], "trailing zeros dropped");
        assert!(!back.paging);
        assert_eq!(decode("bob", "").expect("empty"), None);
        assert!(refused("alice", &token).contains("another user's changes"));
        for bad in ["!!", "AAAA", &"A".repeat(MAX_CURSOR_LEN + 1)] {
            assert!(refused("bob", bad).contains("not one that Sync returned"));
        }
        let forged = |c: SyncCursor| URL_SAFE_NO_PAD.encode(c.encode_to_vec());
        let inconsistent = [
            SyncCursor {
                user_id: "bob".into(),
                paging: true,
                ..SyncCursor::default()
            },
            SyncCursor {
                user_id: "bob".into(),
                initial: true,
                ..SyncCursor::default()
            },
            SyncCursor {
                user_id: "bob".into(),
                until: vec![1],
                ..SyncCursor::default()
            },
            SyncCursor {
                user_id: "bob".into(),
                seen: vec![1; MAX_PARTITIONS + 1],
                ..SyncCursor::default()
            },
        ];
        for c in inconsistent {
            assert!(refused("bob", &forged(c.clone())).contains("not one that Sync returned"));
        }
    }

    #[test]
    fn a_cursor_ahead_of_the_counters_is_refused() {
        assert!(ahead_of(&[3, 4], &[3, 4, 1]).is_ok());
        assert!(ahead_of(&[], &[]).is_ok());
        assert!(ahead_of(&[3, 5], &[3, 4]).is_err());
        assert!(ahead_of(&[0, 0, 1], &[3, 4]).is_err());
        assert!(changed_since(&[3, 4], &[3, 4, 1]));
        assert!(changed_since(&[3], &[4]));
        assert!(!changed_since(&[3, 4], &[3, 4]));
        assert!(!changed_since(&[3, 4, 0], &[3, 4]));
    }
}
