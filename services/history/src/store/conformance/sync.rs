//! Sync: a cursor never expires and never skips a change, and reports no
//! conversation that did not change.

use super::reads::{read, Lcg};
use super::{add, create_group, remove, send};
use crate::store::Store;
use crate::sync;
use confab_core::error::ChatError;
use confab_core::opaque;
use confab_proto::internal::v1::{IngressRecord, SyncCursor};
use confab_proto::v1::{Conversation, SyncRequest};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Ingress partitions of these tests: conversation `c{i}` is in `i % 3`.
const PARTITIONS: u32 = 3;

/// The partition of conversation `c{i}`.
fn partition(conv: &str) -> u32 {
    conv.trim_start_matches('c').parse::<u32>().unwrap_or(0) % PARTITIONS
}

/// Applies `batch` as the ingress log would hand it over: each partition's
/// records (in order) in a transaction of that partition.
async fn apply_by_partition(store: &Arc<dyn Store>, batch: Vec<IngressRecord>) {
    for p in 0..PARTITIONS {
        let part: Vec<IngressRecord> = batch
            .iter()
            .filter(|r| partition(&r.conversation_id) == p)
            .cloned()
            .collect();
        if !part.is_empty() {
            store.apply(p, &part).await.expect("apply");
        }
    }
}

/// Everything a sync of `user` from `cursor` reports, page by page of
/// `limit`: each changed conversation's state (at most once), the removed
/// ids, the pages it took, and the cursor to sync from next.
struct Synced {
    changed: BTreeMap<String, Conversation>,
    removed: BTreeSet<String>,
    pages: usize,
    cursor: String,
}

async fn sync_all(store: &Arc<dyn Store>, user: &str, cursor: &str, limit: u32) -> Synced {
    let mut out = Synced {
        changed: BTreeMap::new(),
        removed: BTreeSet::new(),
        pages: 0,
        cursor: cursor.to_string(),
    };
    loop {
        let page = sync::sync(
            store.as_ref(),
            user,
            SyncRequest {
                cursor: out.cursor.clone(),
                limit,
            },
        )
        .await
        .expect("sync");
        out.pages += 1;
        assert!(page.conversations.len() <= limit as usize);
        for c in page.conversations {
            let id = c.id.clone();
            assert!(out.changed.insert(id.clone(), c).is_none(), "{id} twice");
        }
        for id in page.removed_conversation_ids {
            assert!(out.removed.insert(id.clone()), "{id} removed twice");
        }
        out.cursor = page.cursor;
        if !page.has_more {
            return out;
        }
    }
}

/// `user`'s conversations now, each as a sync reports it.
async fn truth(store: &Arc<dyn Store>, user: &str) -> BTreeMap<String, Conversation> {
    sync_all(store, user, "", 200).await.changed
}

/// A random batch over conversations `c0..c{convs}` and users `u0..u3`.
fn random_batch(rng: &mut Lcg, convs: u64, next_id: &mut u64) -> Vec<IngressRecord> {
    let users = ["u0", "u1", "u2", "u3"];
    (0..=rng.below(4))
        .map(|_| {
            let conv = format!("c{}", rng.below(convs));
            let user = users[rng.below(4) as usize];
            let other = users[1 + rng.below(3) as usize];
            *next_id += 1;
            match rng.below(12) {
                0..=5 => send(&conv, user, &format!("m{next_id}"), "x"),
                // Past the newest seq now and then: refused, no change.
                6..=8 => read(&conv, user, rng.below(12), rng.below(3) == 0),
                // u0 is never removed, so anyone can be added back.
                9 | 10 => add(&conv, "u0", &[other]),
                // A member leaving, or removed by u0.
                _ => remove(&conv, [other, "u0"][rng.below(2) as usize], other),
            }
        })
        .collect()
}

/// A user syncs, goes away while others send, read, add and remove members
/// across conversations of three partitions, then syncs with its cursor:
/// it gets exactly the conversations whose state changed (new ones
/// included) and the ones it was removed from, each once, in pages; a sync
/// with the returned cursor gets nothing. Checked after every round, and
/// at the end from the very first cursor (a client away the whole time).
pub async fn a_cursor_reports_exactly_what_changed(store: Arc<dyn Store>) {
    const CONVS: u64 = 7;
    // A cursor from before any change at all names no partition.
    let empty = sync_all(&store, "u1", "", 2).await;
    assert!(empty.changed.is_empty() && empty.removed.is_empty());
    for i in 0..CONVS {
        let conv = format!("c{i}");
        let members: &[&str] = if i % 2 == 0 {
            &["u0", "u1", "u2"]
        } else {
            &["u0", "u2"]
        };
        apply_by_partition(&store, vec![create_group(&conv, "u0", members)]).await;
    }
    let since_empty = sync_all(&store, "u1", &empty.cursor, 2).await;
    assert_eq!(since_empty.changed.len(), 4, "every one is new to u1");
    let first = sync_all(&store, "u1", "", 2).await;
    assert_eq!(first.changed.len(), 4, "every conversation of u1's");
    assert!(first.pages >= 2, "pages of 2: {}", first.pages);
    assert!(first.removed.is_empty());
    let (first_cursor, first_view) = (first.cursor.clone(), truth(&store, "u1").await);
    let mut cursor = first.cursor;
    let mut rng = Lcg(5);
    let mut next_id = 0;
    let (mut changes, mut removals) = (0, 0);
    for round in 0..40 {
        let before = truth(&store, "u1").await;
        for _ in 0..rng.below(5) {
            apply_by_partition(&store, random_batch(&mut rng, CONVS, &mut next_id)).await;
        }
        let now = truth(&store, "u1").await;
        let synced = sync_all(&store, "u1", &cursor, 2).await;
        check(round, &before, &now, &synced);
        changes += synced.changed.len();
        removals += synced.removed.len();
        let again = sync_all(&store, "u1", &synced.cursor, 2).await;
        assert!(
            again.changed.is_empty() && again.removed.is_empty() && again.pages == 1,
            "round {round}: nothing changed since {:?}",
            again.changed.keys()
        );
        cursor = synced.cursor;
    }
    assert!(
        changes > 30 && removals > 2,
        "a thin mix: {changes} changes, {removals} removals"
    );
    let now = truth(&store, "u1").await;
    let away = sync_all(&store, "u1", &first_cursor, 3).await;
    check(99, &first_view, &now, &away);
}

/// A conversation the user was removed from is reported once, on the page
/// whose id range holds it: here the last of several pages, so a page that
/// ends before it must not report it too.
pub async fn a_departure_is_reported_on_its_page_only(store: Arc<dyn Store>) {
    for i in 0..4 {
        let conv = format!("c{i}");
        apply_by_partition(&store, vec![create_group(&conv, "u0", &["u0", "u1"])]).await;
    }
    let start = sync_all(&store, "u1", "", 1000).await;
    apply_by_partition(
        &store,
        vec![
            send("c0", "u0", "d0", "x"),
            send("c1", "u0", "d1", "x"),
            remove("c3", "u0", "u1"),
        ],
    )
    .await;
    let synced = sync_all(&store, "u1", &start.cursor, 1).await;
    assert_eq!(
        synced.changed.keys().collect::<Vec<_>>(),
        ["c0", "c1"],
        "the changed ones, a page each"
    );
    assert_eq!(synced.removed, BTreeSet::from(["c3".to_string()]));
    assert!(synced.pages >= 2, "pages of one: {}", synced.pages);
}

/// `synced` (a sync from when `before` was the truth, now `now`) reports
/// every conversation whose state differs, with its state now, and no
/// other; and as removed every conversation the user was in and is not,
/// and none it is in.
fn check(
    round: u32,
    before: &BTreeMap<String, Conversation>,
    now: &BTreeMap<String, Conversation>,
    synced: &Synced,
) {
    let differs: BTreeSet<&String> = now
        .iter()
        .filter(|(id, c)| before.get(*id) != Some(*c))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        synced.changed.keys().collect::<BTreeSet<_>>(),
        differs,
        "round {round}: reported vs changed"
    );
    for (id, c) in &synced.changed {
        assert_eq!(Some(c), now.get(id), "round {round}: {id} as it is now");
    }
    for id in before.keys().filter(|id| !now.contains_key(*id)) {
        assert!(synced.removed.contains(id), "round {round}: left {id}");
    }
    for id in &synced.removed {
        assert!(
            !now.contains_key(id),
            "round {round}: {id} removed but a member"
        );
    }
}

/// Writers of two partitions commit concurrently (two at once on each
/// partition too, as during a rebalance) while a client syncs again and
/// again, applying what it gets to its copy: once the writers stop and it
/// syncs a last time, its copy is the truth. A change that committed
/// after a later-numbered one and was skipped would leave it stale.
pub async fn concurrent_commits_are_never_skipped(store: Arc<dyn Store>) {
    const CONVS: u64 = 6;
    for i in 0..CONVS {
        let conv = format!("c{i}");
        apply_by_partition(&store, vec![create_group(&conv, "u0", &["u0", "u1", "u2"])]).await;
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut rng = Lcg(100 + w);
                let mut next_id = w * 1_000_000;
                for _ in 0..40 {
                    let batch: Vec<IngressRecord> = random_batch(&mut rng, CONVS, &mut next_id)
                        .into_iter()
                        // Writers 0 and 1 write partition 0, 2 and 3 the
                        // others.
                        .filter(|r| (partition(&r.conversation_id) == 0) == (w < 2))
                        .collect();
                    apply_by_partition(&store, batch).await;
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let syncer = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut copy: BTreeMap<String, Conversation> = BTreeMap::new();
            let mut cursor = String::new();
            let mut syncs = 0;
            loop {
                // Read before syncing: the sync after the writers stopped
                // is the last.
                let last = done.load(std::sync::atomic::Ordering::SeqCst);
                let synced = sync_all(&store, "u1", &cursor, 3).await;
                copy.extend(synced.changed);
                for id in &synced.removed {
                    copy.remove(id);
                }
                cursor = synced.cursor;
                syncs += 1;
                if last {
                    return (copy, syncs);
                }
                tokio::task::yield_now().await;
            }
        })
    };
    for w in writers {
        w.await.expect("writer");
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (copy, syncs) = syncer.await.expect("syncer");
    assert!(syncs > 2, "the client synced while writers wrote: {syncs}");
    assert_eq!(copy, truth(&store, "u1").await);
}

/// A cursor that is garbage, another user's, or ahead of the store's
/// changes is INVALID_ARGUMENT, never a silent full resync.
pub async fn bad_cursors_are_refused(store: Arc<dyn Store>) {
    apply_by_partition(&store, vec![create_group("c0", "u0", &["u0", "u1"])]).await;
    let cursor = sync_all(&store, "u1", "", 50).await.cursor;
    let refused = |user: &'static str, cursor: String| {
        let store = store.clone();
        async move {
            let req = SyncRequest { cursor, limit: 0 };
            match sync::sync(store.as_ref(), user, req).await {
                Err(ChatError::InvalidArgument(m)) => m,
                other => panic!("{user}: {other:?}"),
            }
        }
    };
    assert!(refused("u0", cursor.clone())
        .await
        .contains("another user's"));
    assert!(refused("u1", "not base64!".into())
        .await
        .contains("not one that Sync returned"));
    let mut ahead: SyncCursor = opaque::open(&cursor, usize::MAX, || {
        ChatError::Internal("a cursor Sync gave".into())
    })
    .expect("a cursor");
    ahead.seen.resize(2, 0);
    ahead.seen[1] += 1_000;
    let ahead = opaque::seal(&ahead);
    assert!(refused("u1", ahead).await.contains("ahead of this server"));
    // The real one still works, and a huge limit is cut to the largest page.
    let req = SyncRequest {
        cursor,
        limit: u32::MAX,
    };
    let page = sync::sync(store.as_ref(), "u1", req).await.expect("sync");
    assert!(page.conversations.is_empty() && !page.has_more);
}
