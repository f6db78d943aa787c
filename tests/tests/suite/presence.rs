//! Presence through real clients on both topologies: DIRECT partners see a
//! user come online and go offline (a reconnect within the grace period
//! does not flap), `GetPresence` answers for users who share a conversation
//! and refuses strangers.

use super::with_users;
use confab_proto::v1::{server_frame, ConversationKind};
use confab_tests::server::Kind;
use tonic::Code;

pub async fn direct_partners_see_presence_without_flapping(kind: Kind) {
    let (server, [alice, bob, carol]) = with_users(kind, ["alice", "bob", "carol"]).await;
    alice
        .create(ConversationKind::Direct, "", &["bob"])
        .await
        .expect("direct");
    // Carol shares only a group with alice: no presence frames for her.
    alice.group("team", &["carol"]).await;
    let mut bob1 = bob.live().await;
    let mut carol1 = carol.live().await;

    let alice1 = alice.live().await;
    let online = bob1.next_presence().await;
    assert_eq!(
        (online.user_id.as_str(), online.online, online.last_seen),
        ("alice", true, None)
    );
    let asked = bob.get_presence(&["alice"]).await.expect("presence");
    assert_eq!(asked.presences.len(), 1);
    assert!(asked.presences[0].online);
    // A reconnect right away, within the grace period: nothing to tell.
    drop(alice1);
    let alice2 = alice.live().await;
    drop(alice2);
    // Then she is gone: the next frame bob gets says offline (had the
    // reconnect flapped, it would say offline, then online, first).
    let offline = bob1.next_presence().await;
    assert_eq!((offline.user_id.as_str(), offline.online), ("alice", false));
    let last_seen = offline.last_seen.expect("a last seen time");
    // And nothing after it: a flap would have sent online and offline
    // again by now.
    let after = bob1.frames_before_pong(4).await;
    assert!(
        !after
            .iter()
            .any(|f| matches!(f, server_frame::Frame::Presence(_))),
        "{after:?}"
    );
    // Anyone sharing a conversation may ask, in the order asked, once each.
    for who in [&bob, &carol] {
        let asked = who
            .get_presence(&["alice", who.name.as_str(), "alice"])
            .await
            .expect("presence");
        let got: Vec<(&str, bool)> = asked
            .presences
            .iter()
            .map(|p| (p.user_id.as_str(), p.online))
            .collect();
        assert_eq!(got, [("alice", false), (who.name.as_str(), true)]);
        assert_eq!(asked.presences[0].last_seen, Some(last_seen));
    }
    // Strangers and bad requests: precise refusals.
    let code = |r: Result<confab_proto::v1::GetPresenceResponse, tonic::Status>| {
        r.map(|_| ())
            .map_err(|s| (s.code(), s.message().to_string()))
    };
    let (c, m) =
        code(carol.get_presence(&["alice", "bob"]).await).expect_err("bob is a stranger to carol");
    assert_eq!(c, Code::PermissionDenied);
    assert!(m.contains("bob"), "{m}");
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    for bad in [&[][..], &["has space"][..], &many[..]] {
        let (c, _) = code(bob.get_presence(bad).await).expect_err("refused");
        assert_eq!(c, Code::InvalidArgument, "{bad:?}");
    }
    // Carol, who shares no DIRECT conversation with alice, got no frame.
    let before = carol1.frames_before_pong(5).await;
    assert!(
        !before
            .iter()
            .any(|f| matches!(f, server_frame::Frame::Presence(_))),
        "{before:?}"
    );
    server.stop().await;
}
