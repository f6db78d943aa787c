//! Presence rows: whom a user's presence goes to, who may ask for it, and
//! a last seen time that stays until a newer one.

use super::{apply, create, create_group};
use crate::store::Store;
use confab_proto::internal::v1::PresenceUpdate;
use confab_proto::v1::ConversationKind;
use std::sync::Arc;

fn update(user: &str, alive_until_ms: i64, last_seen_ms: i64) -> PresenceUpdate {
    PresenceUpdate {
        user_id: user.into(),
        alive_until_ms,
        last_seen_ms,
    }
}

pub async fn presence_goes_to_direct_partners_and_keeps_the_last_seen_time(store: Arc<dyn Store>) {
    apply(
        &store,
        vec![
            create("dm", "alice", ConversationKind::Direct, &["alice", "bob"]),
            create_group("g", "alice", &["alice", "carol"]),
        ],
    )
    .await;
    let partners = |user: &'static str| {
        let store = store.clone();
        async move { store.direct_partners(user).await.expect("partners") }
    };
    assert_eq!(partners("alice").await, ["bob"]);
    assert_eq!(partners("bob").await, ["alice"]);
    assert!(partners("carol").await.is_empty(), "a group is not DIRECT");
    let mut shared = store
        .shared_with("carol", &["alice", "bob", "nobody"])
        .await
        .expect("shared");
    shared.sort();
    assert_eq!(shared, ["alice"]);
    assert!(store
        .shared_with("carol", &[])
        .await
        .expect("none")
        .is_empty());

    let rows = |users: &'static [&'static str]| {
        let store = store.clone();
        async move {
            let mut rows = store.presence(users).await.expect("presence");
            rows.sort();
            rows
        }
    };
    assert!(rows(&["alice"]).await.is_empty(), "never seen");
    store
        .record_presence(&[update("alice", 1_000, 0), update("bob", 1_000, 0)])
        .await
        .expect("online");
    store
        .record_presence(&[update("alice", 0, 500)])
        .await
        .expect("offline");
    assert_eq!(
        rows(&["alice", "bob", "carol"]).await,
        [("alice".to_string(), 0, 500), ("bob".to_string(), 1_000, 0)]
    );
    // Online again: the last seen time stays until the next one.
    store
        .record_presence(&[update("alice", 2_000, 0)])
        .await
        .expect("online again");
    assert_eq!(rows(&["alice"]).await, [("alice".to_string(), 2_000, 500)]);
    // Updates of one user in one call count in order: the last online
    // time, and the last last-seen time that is set.
    store
        .record_presence(&[
            update("alice", 3_000, 0),
            update("carol", 3_000, 0),
            update("alice", 0, 2_500),
            update("alice", 0, 0),
            update("carol", 0, 2_900),
        ])
        .await
        .expect("several at once");
    assert_eq!(
        rows(&["alice", "carol"]).await,
        [
            ("alice".to_string(), 0, 2_500),
            ("carol".to_string(), 0, 2_900)
        ]
    );
    // A mass reconnect's worth in one call (more than one statement's).
    let many: Vec<PresenceUpdate> = (0..2_500)
        .map(|i| update(&format!("crowd{i}"), 4_000 + i, 0))
        .collect();
    store.record_presence(&many).await.expect("a crowd");
    let ids: Vec<String> = (0..2_500).map(|i| format!("crowd{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut crowd = Vec::new();
    for chunk in ids.chunks(100) {
        crowd.extend(store.presence(chunk).await.expect("presence"));
    }
    crowd.sort();
    let mut expected: Vec<(String, i64, i64)> = (0..2_500)
        .map(|i| (format!("crowd{i}"), 4_000 + i, 0))
        .collect();
    expected.sort();
    assert_eq!(crowd, expected);
}
