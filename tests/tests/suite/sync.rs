//! `Sync` through real clients on both topologies: a cursor reports
//! exactly the conversations that changed for the caller (messages, a
//! member's read position, membership) and the ones it left, never
//! expires, and the `sync` frame goes live without a gap.

use super::with_users;
use confab_proto::v1::ConversationKind;
use confab_tests::server::Kind;
use confab_tests::*;
use std::collections::BTreeSet;
use tonic::Code;

fn set(ids: &[String]) -> BTreeSet<&str> {
    ids.iter().map(String::as_str).collect()
}

pub async fn a_cursor_returns_exactly_what_changed_and_the_frame_goes_live(kind: Kind) {
    let (server, [alice, bob, carol]) = with_users(kind, ["alice", "bob", "carol"]).await;
    let busy = alice.group("busy", &["bob", "carol"]).await;
    let quiet = alice.group("quiet", &["bob"]).await;
    let leaving = alice.group("leaving", &["bob"]).await;
    let joining = alice.group("joining", &["carol"]).await;
    let direct = alice
        .create(ConversationKind::Direct, "", &["bob"])
        .await
        .expect("direct");
    // A first sync without a cursor: every conversation of bob's, paged.
    let mut copy = SyncCopy::default();
    let mut pages = 0;
    loop {
        let page = bob.sync(&copy.cursor, 2).await.expect("sync");
        pages += 1;
        let more = page.has_more;
        Synced::default().add(&mut copy, page);
        if !more {
            break;
        }
    }
    assert!(pages >= 2, "pages of 2");
    let ids: BTreeSet<&str> = copy.conversations.keys().map(String::as_str).collect();
    let expected = [&busy.id, &quiet.id, &leaving.id, &direct.id];
    assert_eq!(ids, expected.iter().map(|s| s.as_str()).collect());
    // Nothing changed: nothing reported.
    let old = copy.clone();
    let nothing = bob.sync_into(&mut copy).await.expect("sync");
    assert_eq!(nothing, Synced::default());

    // A message, a member's read, an addition and a removal.
    alice.send(&busy.id, "m1", "hello").await.expect("send");
    let read = carol.mark_read(&busy.id, 2, false).await.expect("read");
    assert_eq!(read.read_seq, 2);
    alice.add_members(&joining.id, &["bob"]).await.expect("add");
    alice
        .remove_member(&leaving.id, "bob")
        .await
        .expect("remove");
    let synced = bob.sync_into(&mut copy).await.expect("sync");
    assert_eq!(
        set(&synced.changed),
        [busy.id.as_str(), joining.id.as_str()].into(),
        "quiet and direct did not change"
    );
    assert_eq!(synced.removed, std::slice::from_ref(&leaving.id));
    let now = &copy.conversations[&busy.id];
    assert_eq!((now.last_seq, now.unread_count), (2, 1));
    let carols = now.member_reads.iter().find(|m| m.user_id == "carol");
    assert_eq!(carols.map(|m| m.read_seq), Some(2), "carol's read is seen");
    assert!(!copy.conversations.contains_key(&leaving.id));
    // The cursor from before all of that still works, and says the same.
    let mut from_old = old.clone();
    let again = bob.sync_into(&mut from_old).await.expect("old cursor");
    assert_eq!(set(&again.changed), set(&synced.changed));
    assert_eq!(from_old.conversations, copy.conversations);

    // The `sync` frame: the changes, caught_up, then live, each seq once.
    alice
        .send(&busy.id, "m2", "while away")
        .await
        .expect("send");
    let mut stream = bob.session(server_frame_ping()).await.expect("connect");
    let (pages, caught_up) = stream.sync(&copy.cursor).await;
    assert_eq!(caught_up.error, None);
    let reported: Vec<String> = pages
        .iter()
        .flat_map(|p| p.conversations.iter().map(|c| c.id.clone()))
        .collect();
    assert_eq!(reported, std::slice::from_ref(&busy.id));
    let last = pages[0].conversations[0].last_seq;
    assert_eq!(last, 3);
    alice.send(&busy.id, "m3", "live").await.expect("send");
    let (live, _) = stream
        .messages_until(&busy.id, last + 1)
        .await
        .expect("the live message");
    assert_eq!(seqs(&live), [last + 1], "nothing the sync covered again");

    // Refusals: precise, and the stream goes on.
    let bobs = copy.cursor.clone();
    for (who, cursor) in [(&alice, bobs.as_str()), (&bob, "not a cursor")] {
        let code = who.sync(cursor, 0).await.map(|_| ()).map_err(|s| s.code());
        assert_eq!(
            code,
            Err(Code::InvalidArgument),
            "{cursor:?} for {}",
            who.name
        );
    }
    let (pages, refused) = stream.sync("not a cursor").await;
    assert!(pages.is_empty());
    assert_eq!(
        refused.error.map(|e| Code::from(e.code)),
        Some(Code::InvalidArgument)
    );
    assert!(stream.frames_before_pong(9).await.is_empty());
    server.stop().await;
}

/// The first frame of a session that syncs later: a ping.
fn server_frame_ping() -> confab_proto::v1::client_frame::Frame {
    confab_proto::v1::client_frame::Frame::Ping(confab_proto::v1::Ping { nonce: 1 })
}
