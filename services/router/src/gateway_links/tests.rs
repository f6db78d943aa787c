//! The gateway links' unit tests: deliveries split per gateway, presence
//! and its acks, completions to their origin, slow gateways dropped, and a
//! gateway's new link replacing its old one.

use super::*;
use confab_core::seams::{Delivery, DeliverySink};
use confab_proto::internal::v1::{
    gateway_frame, router_frame, GatewayFrame, OutcomeRecord, RouterFrame,
};
use confab_proto::internal::v1::{Origin, UsersOffline, UsersOnline};
use confab_proto::v1::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn message(seq: u64) -> Arc<Delivery> {
    Arc::new(Delivery::bare(Message {
        conversation_id: "c".into(),
        seq,
        ..Default::default()
    }))
}

/// The recipients and seq of the next frame, which must be a delivery.
fn next_delivery(rx: &mut mpsc::Receiver<RouterFrame>) -> (Vec<String>, u64) {
    match rx.try_recv().ok().and_then(|f| f.frame) {
        Some(router_frame::Frame::Deliver(d)) => (
            d.recipient_ids,
            d.message.map(|m| m.seq).unwrap_or_default(),
        ),
        other => panic!("expected a delivery, got {other:?}"),
    }
}

#[tokio::test]
async fn each_gateway_gets_one_delivery_with_just_its_users() {
    let links = GatewayLinks::new(LinkConfig::default());
    let mut g1 = links.open("g1", names(&["alice", "bob"]), true);
    let mut g2 = links.open("g2", names(&["bob", "carol"]), true);
    links
        .deliver(&names(&["alice", "bob", "carol", "dave"]), message(7))
        .await;
    assert_eq!(next_delivery(&mut g1.frames), (names(&["alice", "bob"]), 7));
    assert_eq!(next_delivery(&mut g2.frames), (names(&["bob", "carol"]), 7));
    assert!(g1.frames.try_recv().is_err() && g2.frames.try_recv().is_err());
    // Nobody of these recipients is attached: nothing is sent.
    links.deliver(&names(&["dave"]), message(8)).await;
    assert!(g1.frames.try_recv().is_err() && g2.frames.try_recv().is_err());
}

#[tokio::test]
async fn presence_frames_move_users_and_a_closed_link_forgets_its_users() {
    let links = GatewayLinks::new(LinkConfig::default());
    let mut g1 = links.open("g1", names(&["alice"]), true);
    let online = |users: &[&str], epoch| GatewayFrame {
        frame: Some(gateway_frame::Frame::UsersOnline(UsersOnline {
            user_ids: names(users),
            epoch,
        })),
    };
    let offline = |users: &[&str], epoch| GatewayFrame {
        frame: Some(gateway_frame::Frame::UsersOffline(UsersOffline {
            user_ids: names(users),
            epoch,
        })),
    };
    let mut acks = || match g1.frames.try_recv().ok().and_then(|f| f.frame) {
        Some(router_frame::Frame::PresenceAck(a)) => Some(a.epoch),
        _ => None,
    };
    links.apply("g1", g1.id, online(&["bob"], 1));
    assert_eq!(links.gateways_of("bob"), names(&["g1"]));
    assert_eq!(acks(), Some(1), "each applied change is acknowledged");
    links.apply("g1", g1.id, offline(&["alice"], 2));
    assert!(links.gateways_of("alice").is_empty());
    assert_eq!(acks(), Some(2));
    // Frames of a stale link change nothing and are not acknowledged.
    links.apply("g1", g1.id + 100, online(&["carol"], 3));
    assert!(links.gateways_of("carol").is_empty());
    assert_eq!(acks(), None);
    links.close("g1", g1.id, None);
    assert!(links.gateways().is_empty());
    assert!(links.gateways_of("bob").is_empty());
}

#[tokio::test]
async fn outcomes_go_to_their_origin_gateway_only() {
    let links = GatewayLinks::new(LinkConfig::default());
    let mut g1 = links.open("g1", vec![], true);
    let mut g2 = links.open("g2", vec![], true);
    let outcome = |gateway: &str, request_id| OutcomeRecord {
        origin: Some(Origin {
            gateway_id: gateway.into(),
            request_id,
        }),
        ..Default::default()
    };
    links.complete(outcome("g2", 5)).await;
    links.complete(outcome("elsewhere", 6)).await;
    match g2.frames.try_recv().ok().and_then(|f| f.frame) {
        Some(router_frame::Frame::Complete(c)) => {
            assert_eq!(
                c.outcome.and_then(|o| o.origin).map(|o| o.request_id),
                Some(5)
            )
        }
        other => panic!("expected a completion, got {other:?}"),
    }
    assert!(g1.frames.try_recv().is_err() && g2.frames.try_recv().is_err());
}

#[tokio::test]
async fn a_completion_rides_on_its_origin_gateways_delivery() {
    let links = GatewayLinks::new(LinkConfig::default());
    let mut g1 = links.open("g1", names(&["alice"]), true);
    let mut g2 = links.open("g2", names(&["bob"]), true);
    let outcome = |gateway: &str, request_id| OutcomeRecord {
        origin: Some(Origin {
            gateway_id: gateway.into(),
            request_id,
        }),
        ..Default::default()
    };
    let next = |rx: &mut mpsc::Receiver<RouterFrame>| rx.try_recv().ok().and_then(|f| f.frame);
    // g2 wrote it and has a recipient: one frame there, a plain one on g1.
    links
        .deliver_and_complete(&names(&["alice", "bob"]), message(1), outcome("g2", 7))
        .await;
    match next(&mut g2.frames) {
        Some(router_frame::Frame::Deliver(d)) => {
            assert_eq!(d.recipient_ids, names(&["bob"]));
            assert_eq!(d.completes.map(|o| o.request_id), Some(7));
        }
        other => panic!("expected a delivery, got {other:?}"),
    }
    match next(&mut g1.frames) {
        Some(router_frame::Frame::Deliver(d)) => assert_eq!(d.completes, None),
        other => panic!("expected a delivery, got {other:?}"),
    }
    // g1 wrote it but has none of the recipients: a completion of its own.
    links
        .deliver_and_complete(&names(&["bob"]), message(2), outcome("g1", 8))
        .await;
    assert_eq!(next_delivery(&mut g2.frames), (names(&["bob"]), 2));
    match next(&mut g1.frames) {
        Some(router_frame::Frame::Complete(c)) => assert_eq!(
            c.outcome.and_then(|o| o.origin).map(|o| o.request_id),
            Some(8)
        ),
        other => panic!("expected a completion, got {other:?}"),
    }
    assert!(g1.frames.try_recv().is_err() && g2.frames.try_recv().is_err());
    // An older gateway (its hello did not say it takes completions in
    // deliveries) gets its delivery plain and the completion after it.
    let mut old = links.open("g3", names(&["carol"]), false);
    links
        .deliver_and_complete(&names(&["carol"]), message(3), outcome("g3", 9))
        .await;
    match next(&mut old.frames) {
        Some(router_frame::Frame::Deliver(d)) => assert_eq!(d.completes, None),
        other => panic!("expected a delivery, got {other:?}"),
    }
    assert!(matches!(
        next(&mut old.frames),
        Some(router_frame::Frame::Complete(_))
    ));
}

#[tokio::test]
async fn a_gateway_that_stays_full_past_the_bound_is_dropped() {
    let links = GatewayLinks::new(LinkConfig {
        queue: 1,
        max_stall: Duration::from_millis(50),
        ..LinkConfig::default()
    });
    let mut g1 = links.open("g1", names(&["alice"]), true);
    links.deliver(&names(&["alice"]), message(1)).await;
    // The queue is full and nobody reads it.
    links.deliver(&names(&["alice"]), message(2)).await;
    assert!(links.gateways().is_empty());
    assert!(links.gateways_of("alice").is_empty());
    let status = g1.kill.try_recv().expect("kill status");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        matches!(
            g1.gone.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ),
        "the reader is told to stop"
    );
}

#[tokio::test]
async fn a_new_link_of_the_same_gateway_replaces_the_old_one() {
    let links = GatewayLinks::new(LinkConfig::default());
    let mut old = links.open("g1", names(&["alice"]), true);
    let new = links.open("g1", names(&["bob"]), true);
    assert_eq!(
        old.kill.try_recv().map(|s| s.code()).ok(),
        Some(tonic::Code::Unavailable)
    );
    assert!(links.gateways_of("alice").is_empty());
    // The old stream's reader ending does not remove the new link.
    links.close("g1", old.id, None);
    assert_eq!(links.gateways_of("bob"), names(&["g1"]));
    links.close("g1", new.id, None);
    assert!(links.gateways().is_empty());
}
