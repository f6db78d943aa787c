//! The gRPC links of the distributed mode, in one process: history, routers
//! and gateways talk only over gRPC on 127.0.0.1 (the logs stay in-process).
//! Deliveries cross gateways in seq order, outcomes come back to the origin
//! gateway through whichever router owns the conversation, presence decides
//! where messages go, history errors keep their codes across the link, and a
//! gateway re-attaches to a restarted router.

use confab_core::error::ChatError;
use confab_core::seams::HistoryApi;
use confab_history_client::{HistoryClientConfig, RemoteHistory, HISTORY_UNAVAILABLE};
use confab_proto::internal::v1::router_link_client::RouterLinkClient;
use confab_proto::internal::v1::{
    gateway_frame, router_frame, GatewayFrame, Hello, RouterFrame, UsersOffline,
};
use confab_proto::v1::{Conversation, GetHistoryRequest, Message};
use confab_tests::topology::{Topology, TopologyConfig};
use confab_tests::*;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

fn shape(gateways: usize, routers: usize) -> TopologyConfig {
    TopologyConfig {
        gateways,
        routers,
        ..TopologyConfig::default()
    }
}

/// A topology of this shape, alice on g1, and a group she made with bob.
async fn with_group(
    gateways: usize,
    routers: usize,
    title: &str,
) -> (Topology, User, Conversation) {
    let topo = Topology::start(shape(gateways, routers)).await;
    let alice = topo.gateway(1).user("alice").await;
    let conv = alice.group(title, &["bob"]).await;
    (topo, alice, conv)
}

/// Every message of `conv` received by `session` up to seq `until`.
async fn received(session: &mut Session, conv: &str, until: u64) -> Vec<Message> {
    session
        .messages_until(conv, until)
        .await
        .expect("deliveries")
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_crosses_gateways_in_seq_order_and_the_sender_gets_its_seq() {
    let topo = Topology::start(shape(2, 1)).await;
    let alice = topo.gateway(1).user("alice").await;
    let bob = topo.gateway(2).user("bob").await;
    // Creating is a write too: its outcome comes back to g1 through the router.
    let conv = alice.group("across", &["bob"]).await;
    let mut alice_live = alice.live().await;
    let mut bob_live = bob.live().await;
    topo.wait_user_on("alice", &["g1"]).await;
    topo.wait_user_on("bob", &["g2"]).await;

    let mut acked = Vec::new();
    for i in 0..20 {
        let m = alice
            .send(&conv.id, &format!("m{i}"), &format!("hello {i}"))
            .await
            .expect("send");
        acked.push(m.seq);
    }
    let want: Vec<u64> = (2..=21).collect();
    assert_eq!(acked, want, "each send returns its seq");
    let at_bob = received(&mut bob_live, &conv.id, 21).await;
    assert_eq!(
        seqs(&at_bob),
        want,
        "bob on g2 gets every seq once, in order"
    );
    assert_eq!(at_bob[0].body, "hello 0");
    let at_alice = received(&mut alice_live, &conv.id, 21).await;
    assert_eq!(seqs(&at_alice), want, "alice's own session on g1 too");
    // Reads go through RemoteHistory to the history process.
    assert_eq!(bob.all_seqs(&conv.id).await, (1..=21).collect::<Vec<_>>());
    topo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_split_the_partitions_and_each_reaches_both_gateways() {
    let topo = Topology::start(shape(2, 2)).await;
    assert_eq!(topo.routers[0].partitions, vec![0, 1]);
    assert_eq!(topo.routers[1].partitions, vec![2, 3]);
    let alice = topo.gateway(1).user("alice").await;
    let bob = topo.gateway(2).user("bob").await;
    let mut alice_live = alice.live().await;
    let mut bob_live = bob.live().await;
    topo.wait_user_on("alice", &["g1"]).await;
    topo.wait_user_on("bob", &["g2"]).await;

    // Group ids are random: create until both routers own one of them.
    let mut convs = Vec::new();
    let mut routers_used = BTreeSet::new();
    while routers_used.len() < 2 {
        assert!(convs.len() < 64, "64 conversations all on one router");
        let conv = alice
            .group(&format!("split {}", convs.len()), &["bob"])
            .await;
        routers_used.insert(topo.router_of(&conv.id));
        convs.push(conv.id);
    }
    for (i, conv) in convs.iter().enumerate() {
        let m = alice
            .send(conv, "only", &format!("to conversation {i}"))
            .await
            .expect("send completes through the owning router");
        assert_eq!(m.seq, 2);
    }
    // Each session sees each conversation's creation and message, in order,
    // whichever router routed it.
    for live in [&mut alice_live, &mut bob_live] {
        let mut seen: Vec<(String, u64)> = Vec::new();
        while seen.iter().filter(|(_, seq)| *seq == 2).count() < convs.len() {
            match live.next_frame().await.expect("frame") {
                confab_proto::v1::server_frame::Frame::Message(m) => {
                    seen.push((m.conversation_id, m.seq))
                }
                other => panic!("unexpected frame {other:?}"),
            }
        }
        for conv in &convs {
            let of_conv: Vec<u64> = seen
                .iter()
                .filter(|(c, _)| c == conv)
                .map(|(_, s)| *s)
                .collect();
            assert_eq!(of_conv, vec![1, 2], "{conv}");
        }
    }
    topo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_with_sessions_on_both_gateways_gets_each_message_on_both() {
    let (topo, alice, conv) = with_group(2, 1, "both").await;
    let mut bob_on_g1 = topo.gateway(1).user("bob").await.live().await;
    let mut bob_on_g2 = topo.gateway(2).user("bob").await.live().await;
    topo.wait_user_on("bob", &["g1", "g2"]).await;
    for i in 0..5 {
        alice
            .send(&conv.id, &format!("m{i}"), "hi bob")
            .await
            .expect("send");
    }
    let want: Vec<u64> = (2..=6).collect();
    assert_eq!(seqs(&received(&mut bob_on_g1, &conv.id, 6).await), want);
    assert_eq!(seqs(&received(&mut bob_on_g2, &conv.id, 6).await), want);
    topo.stop().await;
}

/// A gateway of our own on the router's link: hello, then whatever it sends.
struct FakeGateway {
    /// Frames to the router.
    tx: mpsc::Sender<GatewayFrame>,
    /// Frames from the router.
    inbound: Streaming<RouterFrame>,
}

impl FakeGateway {
    async fn attach(addr: std::net::SocketAddr, id: &str, users: &[&str]) -> Self {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect to router");
        let (tx, rx) = mpsc::channel(16);
        tx.send(GatewayFrame {
            frame: Some(gateway_frame::Frame::Hello(Hello {
                gateway_id: id.into(),
                user_ids: users.iter().map(|u| u.to_string()).collect(),
                epoch: 0,
                // Completions come as `Complete` frames, as to an older gateway.
                completes_in_deliveries: false,
            })),
        })
        .await
        .expect("queue hello");
        let inbound = RouterLinkClient::new(channel)
            .attach(ReceiverStream::new(rx))
            .await
            .expect("attach")
            .into_inner();
        Self { tx, inbound }
    }

    /// The next delivery: (conversation, seq, recipients).
    /// Presence acknowledgements in between are skipped.
    async fn next_delivery(&mut self) -> (String, u64, Vec<String>) {
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.inbound.message())
                .await
                .expect("a frame in time")
                .expect("link open")
                .and_then(|f| f.frame);
            match frame {
                Some(router_frame::Frame::Deliver(d)) => {
                    let m = d.message.expect("delivery carries a message");
                    return (m.conversation_id, m.seq, d.recipient_ids);
                }
                Some(router_frame::Frame::PresenceAck(_)) => continue,
                other => panic!("expected a delivery, got {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_offline_stops_delivery_to_that_gateway() {
    let topo = Topology::start(shape(2, 1)).await;
    // A real gateway announces a user's last session closing.
    let bob_live = topo.gateway(2).user("bob").await.live().await;
    topo.wait_user_on("bob", &["g2"]).await;
    drop(bob_live);
    topo.wait_user_on("bob", &[]).await;

    // And the router stops pushing to a gateway for a user it took offline.
    let router = &topo.routers[0];
    let mut gx = FakeGateway::attach(router.server.addr, "gx", &["bob", "carol"]).await;
    topo.wait_user_on("carol", &["gx"]).await;
    gx.tx
        .send(GatewayFrame {
            frame: Some(gateway_frame::Frame::UsersOffline(UsersOffline {
                user_ids: vec!["bob".into()],
                epoch: 1,
            })),
        })
        .await
        .expect("send offline");
    topo.wait_user_on("bob", &[]).await;

    let alice = topo.gateway(1).user("alice").await;
    let three = alice.group("three", &["bob", "carol"]).await;
    alice.send(&three.id, "m1", "hi both").await.expect("send");
    // Only bob is in this one: nothing for gx. Each call returns after its
    // deliveries were queued, so gx's next frame shows whether it got any.
    let pair = alice.group("pair", &["bob"]).await;
    alice.send(&pair.id, "m1", "hi bob").await.expect("send");
    let carol = alice.group("carol", &["carol"]).await;

    let carol_only = vec!["carol".to_string()];
    assert_eq!(
        gx.next_delivery().await,
        (three.id.clone(), 1, carol_only.clone())
    );
    assert_eq!(
        gx.next_delivery().await,
        (three.id.clone(), 2, carol_only.clone())
    );
    assert_eq!(gx.next_delivery().await, (carol.id.clone(), 1, carol_only));
    topo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_errors_keep_their_code_across_the_link() {
    let (topo, alice, conv) = with_group(1, 1, "private").await;
    let remote = topo.remote_history();
    let page = |conversation_id: &str| GetHistoryRequest {
        conversation_id: conversation_id.into(),
        ..Default::default()
    };

    let denied = remote.get_history("mallory", page(&conv.id)).await.err();
    assert_eq!(denied, Some(ChatError::not_member(&conv.id)));
    let missing = remote.get_history("alice", page("grp-missing")).await.err();
    assert_eq!(missing, Some(ChatError::no_conversation("grp-missing")));
    let both = GetHistoryRequest {
        before_seq: Some(5),
        after_seq: Some(1),
        ..page(&conv.id)
    };
    let invalid = remote.get_history("alice", both).await.err();
    assert_eq!(invalid.map(|e| e.code()), Some(Code::InvalidArgument));
    let unknown = remote.conversation("grp-missing").await.err();
    assert_eq!(unknown, Some(ChatError::no_conversation("grp-missing")));
    let listed = remote
        .list_conversations("bob", Default::default())
        .await
        .expect("list")
        .conversations;
    assert_eq!(
        listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        vec![conv.id.as_str()]
    );

    // A client of the gateway sees the very status history returned.
    let mallory = topo.gateway(1).user("mallory").await;
    let status = mallory
        .history(&conv.id, None, None, 10)
        .await
        .expect_err("not a member");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        ChatError::not_member(&conv.id).to_string()
    );
    let status = alice
        .history("grp-missing", None, None, 10)
        .await
        .expect_err("unknown conversation");
    assert_eq!(status.code(), Code::NotFound);

    // A dead address next to a live one: every call still answers.
    let dead = format!("127.0.0.1:{}", free_port());
    let live = topo.history.addr.to_string();
    let failover =
        RemoteHistory::new(&HistoryClientConfig::new([dead.clone(), live])).expect("client");
    for _ in 0..4 {
        let c = failover.conversation(&conv.id).await.expect("fails over");
        assert_eq!(c.member_ids, vec!["alice".to_string(), "bob".to_string()]);
        // Errors from the live history keep their code after a failover too.
        let e = failover.get_history("mallory", page(&conv.id)).await.err();
        assert_eq!(e, Some(ChatError::not_member(&conv.id)));
    }
    let only_dead = RemoteHistory::new(&HistoryClientConfig::new([dead])).expect("client");
    assert_eq!(
        only_dead.conversation(&conv.id).await.err(),
        Some(ChatError::Unavailable(HISTORY_UNAVAILABLE.into()))
    );
    topo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_reattaches_after_its_router_restarts() {
    let (mut topo, alice, conv) = with_group(2, 1, "restart").await;
    let mut bob_live = topo.gateway(2).user("bob").await.live().await;
    topo.wait_user_on("bob", &["g2"]).await;
    assert_eq!(
        alice.send(&conv.id, "a", "before").await.expect("send").seq,
        2
    );
    assert_eq!(seqs(&received(&mut bob_live, &conv.id, 2).await), vec![2]);

    topo.routers[0].server.stop_server().await;
    wait_until("the router to lose its gateways", || {
        topo.routers[0].links.gateways().is_empty()
    })
    .await;
    topo.routers[0].server.start_server().await;
    // The gateways come back on their own, and say hello with their users.
    topo.wait_all_attached().await;
    topo.wait_user_on("bob", &["g2"]).await;

    let m = alice.send(&conv.id, "b", "after").await.expect("send");
    assert_eq!(m.seq, 3, "the outcome reaches g1 over its new link");
    assert_eq!(seqs(&received(&mut bob_live, &conv.id, 3).await), vec![3]);
    topo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_routed_while_gateways_were_detached_reach_open_sessions_after_reattach() {
    let mut config = shape(2, 1);
    config.gateway.send_timeout = Duration::from_millis(500);
    let mut topo = Topology::start(config).await;
    let alice = topo.gateway(1).user("alice").await;
    let conv = alice.group("skipped", &["bob"]).await;
    let mut bob_live = topo.gateway(2).user("bob").await.live().await;
    topo.wait_user_on("bob", &["g2"]).await;
    alice.send(&conv.id, "a", "before").await.expect("send");
    assert_eq!(seqs(&received(&mut bob_live, &conv.id, 2).await), vec![2]);

    topo.routers[0].server.stop_server().await;
    wait_until("the router to lose its gateways", || {
        topo.routers[0].links.gateways().is_empty()
    })
    .await;
    // Sequenced and routed while no gateway is attached: pushed to nobody,
    // and its outcome dropped (the sender is told to retry).
    let err = alice
        .send(&conv.id, "b", "while detached")
        .await
        .expect_err("no outcome can come back");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    wait_until("the router to route it to nobody", || {
        topo.routers[0].links.orphaned_outcomes() >= 1
    })
    .await;
    topo.routers[0].server.start_server().await;
    topo.wait_all_attached().await;
    // Nothing else is sent: bob's open stream gets seq 3 because the gateway
    // checks history for what routing skipped once the router knows it again.
    assert_eq!(seqs(&received(&mut bob_live, &conv.id, 3).await), vec![3]);
    topo.stop().await;
}

/// A resume that history cannot answer is refused in `caughtUp`, and the
/// stream never skips what it did not deliver: the next live message first
/// fills the gap, or ends the stream with UNAVAILABLE while history is
/// still down. (Found by the long chaos run: clients that ignored the
/// `caughtUp` error saw seqs jump.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_history_could_not_answer_never_lets_the_stream_skip() {
    use confab_proto::v1::{client_frame, server_frame, Resume};
    use std::collections::HashMap;
    let (mut topo, alice, conv) = with_group(1, 1, "outage").await;
    for k in ["a", "b"] {
        alice.send(&conv.id, k, "before").await.expect("send");
    }
    topo.history.stop_server().await;
    let bob = topo.gateway(1).user("bob").await;
    let mut stream = bob
        .session(client_frame::Frame::Resume(Resume {
            last_seq: HashMap::from([(conv.id.clone(), 1)]),
        }))
        .await
        .expect("connect");
    match stream.next_frame().await.expect("a frame") {
        server_frame::Frame::CaughtUp(c) => {
            assert!(c.error.is_some(), "history is down: {c:?}")
        }
        other => panic!("expected caughtUp with an error, got {other:?}"),
    }
    // Sequenced and routed while reads fail: bob's stream must not show
    // seq 4 without 2 and 3.
    let m = alice.send(&conv.id, "c", "during").await.expect("send");
    assert_eq!(m.seq, 4);
    let end = loop {
        match stream.next_or_status().await {
            Ok(server_frame::Frame::Message(m)) => {
                panic!("seq {} delivered over a gap", m.seq)
            }
            Ok(_) => {}
            Err(status) => break status,
        }
    };
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    // History is back: resuming from 1 gives 2, 3, 4.
    topo.history.start_server().await;
    let deadline = std::time::Instant::now() + DEADLINE;
    let msgs = loop {
        let mut again = bob
            .session(client_frame::Frame::Resume(Resume {
                last_seq: HashMap::from([(conv.id.clone(), 1)]),
            }))
            .await
            .expect("connect");
        match again.messages_until(&conv.id, 4).await {
            Ok((msgs, _)) => break msgs,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "history never came back: {e}"
            ),
        }
    };
    assert_eq!(seqs(&msgs), vec![2, 3, 4]);
    topo.stop().await;
}
