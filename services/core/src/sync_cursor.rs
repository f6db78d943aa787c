//! `Sync` cursors: opaque to clients (base64url of an internal
//! `SyncCursor`), naming whose changes they follow and, per ingress
//! partition, the newest change the client has seen (see history's `sync`
//! module and docs/architecture.md). Here so that the gateway's fuzz
//! targets check the decoding history runs.

use crate::error::ChatError;
use crate::opaque;
use confab_proto::internal::v1::SyncCursor;

/// Longest cursor accepted; the ones given out are far shorter.
pub const MAX_CURSOR_LEN: usize = 4096;

/// Most partitions a cursor may name.
pub const MAX_PARTITIONS: usize = 4096;

/// Where a paged sync stands (see [`encode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paging {
    /// The cursor it started from; `None`: it started without one.
    pub since: Option<Vec<u64>>,
    /// The counters read when it started.
    pub until: Vec<u64>,
    /// The last conversation id given so far.
    pub after: String,
}

/// The cursor that continues `user`'s sync: after a finished sync,
/// everything up to the counters `seen`; while one is paged, `paging`.
pub fn encode(user: &str, seen: &[u64], paging: Option<Paging>) -> String {
    let cursor = match paging {
        None => SyncCursor {
            user_id: user.to_string(),
            seen: trimmed(seen),
            ..SyncCursor::default()
        },
        Some(p) => SyncCursor {
            user_id: user.to_string(),
            initial: p.since.is_none(),
            seen: p.since.as_deref().map(trimmed).unwrap_or_default(),
            until: trimmed(&p.until),
            after_conversation_id: p.after,
            paging: true,
        },
    };
    opaque::seal(&cursor)
}

/// `v` without its trailing zeros (a partition past the end is 0).
fn trimmed(v: &[u64]) -> Vec<u64> {
    let len = v.iter().rposition(|n| *n != 0).map_or(0, |i| i + 1);
    v[..len].to_vec()
}

/// The cursor `token` for `user`: `None` for an empty one (everything);
/// INVALID_ARGUMENT for one that `Sync` did not give `user`.
pub fn decode(user: &str, token: &str) -> Result<Option<SyncCursor>, ChatError> {
    if token.is_empty() {
        return Ok(None);
    }
    let not_ours = || {
        ChatError::InvalidArgument(
            "cursor is not one that Sync returned; sync again without a cursor".into(),
        )
    };
    let cursor: SyncCursor = opaque::open(token, MAX_CURSOR_LEN, not_ours)?;
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
        let forged = |c: SyncCursor| opaque::seal(&c);
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
}
