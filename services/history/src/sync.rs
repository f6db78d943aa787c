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
use confab_core::error::ChatError;
use confab_core::sync_cursor::{decode, encode, Paging};
use confab_core::validate;
use confab_proto::v1::{SyncRequest, SyncResponse};

/// What changed for `user` since `req.cursor`, a page at a time.
pub async fn sync(
    store: &dyn Store,
    user: &str,
    req: SyncRequest,
) -> Result<SyncResponse, ChatError> {
    let limit = validate::sync_page(req.limit);
    let cursor = decode(user, &req.cursor)?;
    let counters = store.change_counters().await?;
    // Where this sync stands: changes above `since` (all when `None`), up
    // to the counters `until` read when it started, after id `after`.
    let window = match cursor {
        None => Paging {
            since: None,
            until: counters,
            after: String::new(),
        },
        Some(c) => {
            let seen = c.seen;
            ahead_of(&seen, &counters)?;
            if c.paging {
                ahead_of(&c.until, &counters)?;
                Paging {
                    since: (!c.initial).then_some(seen),
                    until: c.until,
                    after: c.after_conversation_id,
                }
            } else {
                Paging {
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
    // The departures are read beside the page (one round trip less) and
    // cut to it once its end is known.
    let departed = async {
        match &window.since {
            // A first sync reports what the user is in, not what it left.
            None => Ok(Vec::new()),
            Some(since) => store.departed(user, since, &window.after).await,
        }
    };
    let (page, departed) = tokio::try_join!(store.conversations(user, listing, limit), departed)?;
    let ConversationPage {
        conversations,
        next,
    } = page;
    let through = next.map(|n| n.conversation_id);
    let removed_conversation_ids = match &through {
        None => departed,
        Some(last) => departed
            .into_iter()
            .filter(|id| id.as_str() <= last.as_str())
            .collect(),
    };
    let has_more = through.is_some();
    let cursor = match through {
        Some(after) => encode(
            user,
            &window.until,
            Some(Paging {
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

#[cfg(test)]
mod tests {
    use super::*;

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
