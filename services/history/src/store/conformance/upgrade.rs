//! An upgrade over history written by the first release (schema 0001): the
//! later migrations keep every message and count what was stored as read.

use super::{apply, list, read, send};
use crate::store::Store;
use confab_core::seams::HistoryApi;
use confab_core::validate::Page;
use confab_proto::internal::v1::outcome_record::Result as R;
use std::sync::Arc;

/// Rows as the first release wrote them, in SQL both stores run: a group
/// of alice, bob and carol with seq 1 (created), 2 and 3 (texts), 4 (carol
/// added) and 5 (carol's text).
pub const FIRST_RELEASE_ROWS: &str = "
    INSERT INTO conversations (id, kind, title, last_seq, created_at_ms)
        VALUES ('old', 2, 'before', 5, 1000);
    INSERT INTO members (conversation_id, user_id)
        VALUES ('old', 'alice'), ('old', 'bob'), ('old', 'carol');
    INSERT INTO messages
        (conversation_id, seq, sender_id, client_msg_id, kind, body, membership, created_at_ms)
        VALUES ('old', 1, 'alice', '', 2, 'created', NULL, 1000),
               ('old', 2, 'alice', 'a1', 1, 'one', NULL, 2000),
               ('old', 3, 'bob', 'b1', 1, 'two', NULL, 3000),
               ('old', 4, 'alice', '', 2, 'carol added', NULL, 4000),
               ('old', 5, 'carol', 'c1', 1, 'three', NULL, 5000);
";

/// `store`, opened over [`FIRST_RELEASE_ROWS`] written with the first
/// migration only: every message is there, everything stored counts as
/// read, and counts go on exactly from there.
pub async fn an_upgrade_keeps_history_and_counts_it_read(store: Arc<dyn Store>) {
    let (page, _) = store
        .history(Page::after("old", 0, 50))
        .await
        .expect("history")
        .parts();
    let seqs: Vec<u64> = page.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    for user in ["alice", "bob", "carol"] {
        let c = &list(&store, user, 50).await[0];
        assert_eq!((c.read_seq, c.unread_count), (5, 0), "{user}");
        let at = c.last_activity_at.expect("activity");
        assert_eq!((at.seconds, at.nanos), (5, 0), "the newest message's time");
        assert_eq!(c.last_message.as_ref().map(|m| m.seq), Some(5));
    }
    // What was stored before search existed is found.
    let reader = crate::queries::LocalHistory::new(store.clone());
    let found = reader
        .search_messages(
            "bob",
            confab_proto::v1::SearchMessagesRequest {
                query: "two".into(),
                ..Default::default()
            },
        )
        .await
        .expect("search");
    let seqs: Vec<u64> = found.hits.iter().map(|h| h.seq).collect();
    assert_eq!(seqs, [3], "indexed when the store opened");
    // Two SYSTEM events among five seqs: counts after new writes are exact.
    apply(&store, vec![send("old", "alice", "a2", "four")]).await;
    let bob = &list(&store, "bob", 50).await[0];
    assert_eq!((bob.last_seq, bob.unread_count), (6, 1));
    // A position read before the upgrade does not move back...
    let out = apply(&store, vec![read("old", "bob", 4, false)]).await;
    assert!(
        matches!(&out[0].result, Some(R::ReadState(s)) if s.read_seq == 5 && s.unread_count == 1),
        "{out:?}"
    );
    // ...and one past the old rows counts their SYSTEM events: seq 7 is
    // carol's, after bob's read of 6.
    apply(&store, vec![send("old", "carol", "c2", "five")]).await;
    let out = apply(&store, vec![read("old", "bob", 6, false)]).await;
    assert!(
        matches!(&out[0].result, Some(R::ReadState(s)) if s.read_seq == 6 && s.unread_count == 1),
        "{out:?}"
    );
    let out = apply(&store, vec![send("old", "bob", "b1", "two")]).await;
    assert!(out[0].replay, "the first release's retry keys still hold");
}
