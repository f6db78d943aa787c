//! Every per-user limit through real clients, one test per rule: each
//! refusal has its exact status code and a message naming the limit, its
//! variable and value, and meanwhile two other users on the same gateway
//! keep talking (one sends, the other receives on a live stream) as if
//! nothing happened. The flood test pushes one user far over the limit for a
//! bounded time and bounds another user's send latency meanwhile.
//!
//! Calls are refused by the gateway's guard layer before their handler runs
//! (`services/gateway/src/guard.rs`); stream `send` frames by the session,
//! in their ack.

use confab_gateway::GatewayConfig;
use confab_proto::v1::{client_frame, server_frame, ConversationKind, Ping, SendAck};
use confab_tests::cluster::{Cluster, Shape};
use confab_tests::server::{Kind, Server};
use confab_tests::topology::{Topology, TopologyConfig};
use confab_tests::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Code, Status};

/// Starts `kind` with `GENEROUS_LIMITS` overridden by `env` (`CONFAB_*`
/// variables of the gateway; for a cluster, history takes the same input
/// limits, as an operator would set them).
async fn start(kind: Kind, env: &[(&str, &str)]) -> Server {
    match kind {
        Kind::Embedded => Server::Embedded(Embedded::start_with(env).await),
        Kind::EmbeddedWebSocket => {
            let http = format!("127.0.0.1:{}", free_port());
            let mut env = env.to_vec();
            env.push(("CONFAB_HTTP_LISTEN", &http));
            Server::Embedded(Embedded::start_with(&env).await)
        }
        Kind::Cluster => {
            let vars: HashMap<String, String> = GENEROUS_LIMITS
                .iter()
                .chain(env)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let gateway = GatewayConfig::from_env(&vars).expect("valid limits");
            Server::Cluster(Box::new(
                Cluster::start(Shape {
                    gateway,
                    ..Shape::default()
                })
                .await,
            ))
        }
    }
}

/// Two users who keep talking on the same gateway while someone else is
/// refused: carol sends, dave receives on a live stream.
struct Bystanders {
    carol: User,
    dave: Session,
    conv: String,
    said: usize,
}

impl Bystanders {
    async fn join(server: &Server) -> Self {
        let carol = server.user("carol").await;
        let conv = carol.group("bystanders", &["dave"]).await.id;
        let dave = server.user("dave").await.live().await;
        Self {
            carol,
            dave,
            conv,
            said: 0,
        }
    }

    /// One message from carol: acknowledged at once, and on dave's stream.
    async fn talk(&mut self) {
        self.said += 1;
        let body = format!("carol's message {}", self.said);
        // Accepted, not refused: how fast is for the flood tests and the
        // benchmarks (a timing bound here fails on a busy machine).
        let m = self
            .carol
            .send(&self.conv, &format!("c{}", self.said), &body)
            .await
            .expect("carol is not limited by anybody else");
        let (msgs, _) = self
            .dave
            .messages_until(&self.conv, m.seq)
            .await
            .expect("dave receives carol's message live");
        assert_eq!(msgs.last().map(|m| m.body.as_str()), Some(body.as_str()));
    }
}

/// Runs `abuse` over and over from `tasks` tasks while the bystanders talk
/// `times` times, and returns every refusal the abuse got and how many
/// attempts succeeded.
async fn while_abusing<F, Fut>(
    bystanders: &mut Bystanders,
    times: usize,
    tasks: usize,
    abuse: F,
) -> (usize, Vec<Status>)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), Status>> + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let abusers: Vec<_> = (0..tasks)
        .map(|t| {
            let (abuse, stop) = (abuse.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut refused) = (0, Vec::new());
                let mut i = 0;
                // At least a few attempts each, so the abuse overlaps the talk.
                while !stop.load(Ordering::Relaxed) || i < 3 {
                    match abuse(t * 1_000_000 + i).await {
                        Ok(()) => ok += 1,
                        Err(s) => refused.push(s),
                    }
                    i += 1;
                }
                (ok, refused)
            })
        })
        .collect();
    for _ in 0..times {
        bystanders.talk().await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut refused) = (0, Vec::new());
    for a in abusers {
        let (o, r) = a.await.expect("abuser task");
        ok += o;
        refused.extend(r);
    }
    (ok, refused)
}

/// Every status in `refused` is `code` with `message`, and there is one.
fn all_refused(refused: &[Status], code: Code, message: &str) {
    assert!(!refused.is_empty(), "never refused");
    for s in refused {
        assert_eq!(s.code(), code, "{s:?}");
        assert_eq!(s.message(), message);
    }
}

/// Embedded mode allowing `per_sec` messages a second per user, with
/// bursts of `burst`.
async fn embedded_at_rate(per_sec: &str, burst: &str) -> Server {
    let rate = [
        ("CONFAB_RATE_MESSAGES_PER_SEC", per_sec),
        ("CONFAB_RATE_MESSAGES_BURST", burst),
    ];
    start(Kind::Embedded, &rate).await
}

/// `confab_rate_limited_total{limit}` as `/metrics` would serve it now.
fn rate_limited(limit: &str) -> f64 {
    let text = confab_runtime::recorder::install().render();
    let prefix = format!("confab_rate_limited_total{{limit=\"{limit}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Sends as `user` until one is accepted, or fails after `DEADLINE`;
/// returns how long that took.
async fn send_until_accepted(user: &User, conv: &str, id: &str) -> Duration {
    let started = Instant::now();
    loop {
        match user.send(conv, id, "again").await {
            Ok(_) => return started.elapsed(),
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(started.elapsed() < DEADLINE, "the bucket never refilled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("unexpected refusal: {s:?}"),
        }
    }
}

const RATE_1_BURST_5: &str = "rate limit: at most 1 message per second per user, 5 at once \
     (CONFAB_RATE_MESSAGES_PER_SEC=1, CONFAB_RATE_MESSAGES_BURST=5); slow down and retry later";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_per_second_allow_the_burst_then_refill_at_the_rate() {
    confab_runtime::recorder::install();
    let server = embedded_at_rate("1", "5").await;
    let alice = server.user("alice").await;
    let conv = alice.group("burst", &["bob"]).await.id;
    let mut bystanders = Bystanders::join(&server).await;

    // The burst: five at once (one more if a second passed meanwhile).
    let started = Instant::now();
    let mut accepted = 0;
    let refused = loop {
        match alice.send(&conv, &format!("b{accepted}"), "burst").await {
            Ok(_) => accepted += 1,
            Err(s) => break s,
        }
    };
    let most = 5 + started.elapsed().as_secs() as usize;
    assert!((5..=most).contains(&accepted), "{accepted} accepted");
    all_refused(&[refused], Code::ResourceExhausted, RATE_1_BURST_5);
    assert!(
        rate_limited("messages") >= 1.0,
        "refusals are counted in confab_rate_limited_total"
    );

    // While alice keeps trying, carol and dave talk as usual.
    let (a, c) = (alice.clone(), conv.clone());
    let (_, refused) = while_abusing(&mut bystanders, 3, 2, move |i| {
        let (a, c) = (a.clone(), c.clone());
        async move { a.send(&c, &format!("x{i}"), "more").await.map(|_| ()) }
    })
    .await;
    all_refused(&refused, Code::ResourceExhausted, RATE_1_BURST_5);

    // The bucket refills at one per second: one message, then refused again.
    let waited = send_until_accepted(&alice, &conv, "refilled").await;
    assert!(
        waited <= Duration::from_millis(1500),
        "refilled after {waited:?}"
    );
    let again = alice
        .send(&conv, "too soon", "x")
        .await
        .expect_err("only one token came back");
    all_refused(&[again], Code::ResourceExhausted, RATE_1_BURST_5);
    bystanders.talk().await;
    server.stop().await;
}

const RATE_2_BURST_4: &str = "rate limit: at most 2 messages per second per user, 4 at once \
     (CONFAB_RATE_MESSAGES_PER_SEC=2, CONFAB_RATE_MESSAGES_BURST=4); slow down and retry later";

/// Most sends a bucket of burst 4 at 2/s can admit over `elapsed`.
fn most_admitted(elapsed: Duration) -> usize {
    4 + (elapsed.as_secs_f64() * 2.0).ceil() as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_sends_share_the_budget_and_are_refused_in_the_ack() {
    let server = embedded_at_rate("2", "4").await;
    let alice = server.user("alice").await;
    let conv = alice.group("stream", &["bob"]).await;
    let mut bystanders = Bystanders::join(&server).await;
    let mut session = alice.live().await;
    let started = Instant::now();
    // Half of the frames against unary sends at the same time: one budget,
    // so together they get no more than one bucket allows.
    const FRAMES: usize = 12;
    for i in 0..FRAMES {
        session
            .send_text(&conv.id, &format!("s{i}"), "via stream")
            .await;
    }
    let unary = futures::future::join_all((0..FRAMES).map(|i| {
        let (alice, id) = (alice.clone(), conv.id.clone());
        async move { alice.send(&id, &format!("u{i}"), "via unary").await }
    }))
    .await;
    let mut acks: Vec<SendAck> = Vec::new();
    while acks.len() < FRAMES {
        acks.push(session.next_ack().await);
    }
    let elapsed = started.elapsed();
    let refused: Vec<_> = acks.iter().filter_map(|a| a.error.as_ref()).collect();
    assert!(!refused.is_empty(), "no stream send was refused: {acks:?}");
    for e in &refused {
        assert_eq!(e.code, Code::ResourceExhausted as i32, "{e:?}");
        assert_eq!(e.message, RATE_2_BURST_4);
    }
    for r in unary.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), Code::ResourceExhausted, "{r:?}");
        assert_eq!(r.message(), RATE_2_BURST_4);
    }
    let accepted = (FRAMES - refused.len()) + unary.iter().filter(|r| r.is_ok()).count();
    assert!(
        accepted <= most_admitted(elapsed),
        "{accepted} accepted in {elapsed:?}: stream and unary sends share one budget"
    );
    // Others are untouched, and so is alice's stream itself.
    bystanders.talk().await;
    session
        .send(client_frame::Frame::Ping(Ping { nonce: 7 }))
        .await;
    loop {
        if let server_frame::Frame::Pong(p) = session.next_frame().await.expect("pong") {
            assert_eq!(p.nonce, 7);
            break;
        }
    }
    server.stop().await;
}

const STREAMS_2: &str = "stream limit: at most 2 concurrent Connect streams per user \
     (CONFAB_MAX_STREAMS_PER_USER=2); close one before opening another";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_cap_refuses_one_more_connect_of_that_user_only() {
    let server = start(Kind::Embedded, &[("CONFAB_MAX_STREAMS_PER_USER", "2")]).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let mut bystanders = Bystanders::join(&server).await;
    let first = alice.live().await;
    let _second = alice.live().await;
    // alice keeps trying to open a third while carol and dave talk.
    let a = alice.clone();
    let (opened, refused) = while_abusing(&mut bystanders, 3, 2, move |_| {
        let a = a.clone();
        async move {
            a.session(client_frame::Frame::Ping(Ping { nonce: 3 }))
                .await
                .map(|_| ())
        }
    })
    .await;
    assert_eq!(opened, 0, "a third stream was opened");
    all_refused(&refused, Code::ResourceExhausted, STREAMS_2);
    // bob has slots of his own.
    let _bob1 = bob.live().await;
    let _bob2 = bob.live().await;
    // Closing a stream frees its slot once the gateway sees it gone.
    drop(first);
    let deadline = Instant::now() + DEADLINE;
    let _third = loop {
        match alice
            .session(client_frame::Frame::Ping(Ping { nonce: 4 }))
            .await
        {
            Ok(s) => break s,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(Instant::now() < deadline, "the slot was never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("unexpected refusal: {s:?}"),
        }
    };
    bystanders.talk().await;
    server.stop().await;
}

const CONVERSATIONS_3: &str = "conversation limit: at most 3 conversations created per minute \
     per user (CONFAB_RATE_CONVERSATIONS_PER_MIN=3); wait before creating more";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_creation_is_limited_per_user() {
    let server = start(
        Kind::Embedded,
        &[("CONFAB_RATE_CONVERSATIONS_PER_MIN", "3")],
    )
    .await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let mut bystanders = Bystanders::join(&server).await;
    for i in 0..3 {
        alice
            .create(ConversationKind::Group, &format!("g{i}"), &["bob"])
            .await
            .expect("within the limit");
    }
    let a = alice.clone();
    let (created, refused) = while_abusing(&mut bystanders, 3, 2, move |i| {
        let a = a.clone();
        async move {
            a.create(ConversationKind::Group, &format!("more {i}"), &[])
                .await
                .map(|_| ())
        }
    })
    .await;
    // One more may have come back if the test ran for 20 s.
    assert!(created <= 1, "{created} created over the limit");
    all_refused(&refused, Code::ResourceExhausted, CONVERSATIONS_3);
    // bob's budget is his own, and alice can still write where she is.
    let conv = bob.group("bob's", &["alice"]).await;
    alice
        .send(&conv.id, "m", "still here")
        .await
        .expect("messages are a separate budget");
    server.stop().await;
}

/// A group of at most 3: the gateway refuses a create over it, history (the
/// only writer, which decides) an add over it.
async fn members_per_group(kind: Kind) {
    let server = start(kind, &[("CONFAB_MAX_GROUP_MEMBERS", "3")]).await;
    let alice = server.user("alice").await;
    let mut bystanders = Bystanders::join(&server).await;
    let big = alice
        .create(ConversationKind::Group, "big", &["bob", "erin", "frank"])
        .await
        .expect_err("four members");
    all_refused(
        &[big],
        Code::ResourceExhausted,
        "group size limit: a group has at most 3 members (CONFAB_MAX_GROUP_MEMBERS=3); \
         4 were asked for, you included",
    );
    let conv = alice.group("full", &["bob", "erin"]).await;
    let (a, id) = (alice.clone(), conv.id.clone());
    let (added, refused) = while_abusing(&mut bystanders, 3, 1, move |_| {
        let (a, id) = (a.clone(), id.clone());
        async move { a.add_members(&id, &["frank"]).await.map(|_| ()) }
    })
    .await;
    assert_eq!(added, 0);
    all_refused(
        &refused,
        Code::ResourceExhausted,
        "group size limit: a group has at most 3 members (CONFAB_MAX_GROUP_MEMBERS=3); \
         it has 3 and 1 would be added",
    );
    // Nothing was added: the group is as it was, and works.
    let members = {
        let page = alice.history(&conv.id, None, None, 50).await.expect("read");
        assert_eq!(page.messages.len(), 1, "only the creation: {page:?}");
        page.messages[0]
            .membership
            .as_ref()
            .map(|m| m.user_ids.clone())
    };
    assert_eq!(
        members,
        Some(vec!["alice".into(), "bob".into(), "erin".into()])
    );
    alice.send(&conv.id, "m", "still fine").await.expect("send");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_per_group_embedded() {
    members_per_group(Kind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_per_group_distributed() {
    members_per_group(Kind::Cluster).await;
}

const BODY_100: &str = "body limit: the body is 101 bytes, at most 100 are allowed \
     (CONFAB_MAX_BODY_BYTES=100); send a shorter body or split it into several messages";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_resource_exhausted_unary_and_on_streams() {
    let server = start(Kind::Embedded, &[("CONFAB_MAX_BODY_BYTES", "100")]).await;
    let alice = server.user("alice").await;
    let conv = alice.group("bodies", &["bob"]).await.id;
    let mut bystanders = Bystanders::join(&server).await;
    let (a, c) = (alice.clone(), conv.clone());
    let (accepted, refused) = while_abusing(&mut bystanders, 3, 2, move |i| {
        let (a, c) = (a.clone(), c.clone());
        async move {
            a.send(&c, &format!("big{i}"), &"x".repeat(101))
                .await
                .map(|_| ())
        }
    })
    .await;
    assert_eq!(accepted, 0);
    all_refused(&refused, Code::ResourceExhausted, BODY_100);
    // On a stream, the refusal is in the ack and the stream goes on.
    let mut session = alice.live().await;
    session.send_text(&conv, "s-big", &"y".repeat(101)).await;
    let ack = session.next_ack().await;
    let e = ack.error.expect("refused");
    assert_eq!(
        (e.code, e.message.as_str()),
        (Code::ResourceExhausted as i32, BODY_100)
    );
    // At the limit is fine; empty stays a malformed request.
    alice
        .send(&conv, "exact", &"z".repeat(100))
        .await
        .expect("100 bytes");
    let empty = alice.send(&conv, "empty", "").await.expect_err("empty");
    assert_eq!(empty.code(), Code::InvalidArgument, "{empty:?}");
    assert_eq!(empty.message(), "body must not be empty");
    bystanders.talk().await;
    server.stop().await;
}

const FLOOD_RATE: &str = "rate limit: at most 30 messages per second per user, 30 at once \
     (CONFAB_RATE_MESSAGES_PER_SEC=30, CONFAB_RATE_MESSAGES_BURST=30); slow down and retry later";

/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(3);

/// The gateway limits of the flood tests: 30 messages per second.
const FLOOD_LIMITS: &[(&str, &str)] = &[
    ("CONFAB_RATE_MESSAGES_PER_SEC", "30"),
    ("CONFAB_RATE_MESSAGES_BURST", "30"),
];

/// One user floods `SendMessage` from many tasks over several connections
/// to gateway `near` for `FLOOD`, far over the limit (30/s), in the same
/// conversation where bob, on the same gateway, sends one message every
/// 50 ms (20/s, within his own limit). Every one of bob's sends succeeds
/// within a second, and each reaches dave's live stream on gateway `far`.
async fn a_flood_leaves_other_users_latency_bounded(what: &str, near: SocketAddr, far: SocketAddr) {
    let alice = User::connect(near, "alice").await;
    let bob = User::connect(near, "bob").await;
    let conv = alice.group("flooded", &["bob", "dave"]).await.id;
    let mut dave = User::connect(far, "dave").await.live().await;

    // 4 connections × 6 tasks, each sending as fast as it is answered.
    let stop = Arc::new(AtomicBool::new(false));
    let mut flooders = Vec::new();
    for c in 0..4 {
        let conn = User::connect(near, "alice").await;
        for t in 0..6 {
            let (conn, conv, stop) = (conn.clone(), conv.clone(), stop.clone());
            flooders.push(tokio::spawn(async move {
                let (mut accepted, mut refused, mut other) = (0usize, 0usize, Vec::new());
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    match conn.send(&conv, &format!("f{c}-{t}-{i}"), "spam").await {
                        Ok(_) => accepted += 1,
                        Err(s) if s.code() == Code::ResourceExhausted => {
                            assert_eq!(s.message(), FLOOD_RATE);
                            refused += 1;
                        }
                        Err(s) => other.push(s),
                    }
                    i += 1;
                }
                (accepted, refused, other)
            }));
        }
    }

    // bob: one message every 50 ms while the flood lasts.
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut latencies = Vec::new();
    let mut last_seq = 0;
    let mut i = 0;
    while started.elapsed() < FLOOD {
        tick.tick().await;
        let t = Instant::now();
        let m = bob
            .send(&conv, &format!("bob-{i}"), "hello")
            .await
            .unwrap_or_else(|s| panic!("bob's send {i} failed during the flood: {s:?}"));
        latencies.push(t.elapsed());
        last_seq = m.seq;
        i += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let (mut accepted, mut refused, mut other) = (0, 0, Vec::new());
    for f in flooders {
        let (a, r, o) = f.await.expect("flooder");
        accepted += a;
        refused += r;
        other.extend(o);
    }
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    let max = *latencies.last().expect("bob sent");
    eprintln!(
        "{what}: alice {accepted} accepted, {refused} refused, {} other errors; \
         bob {} sends, p50 {:?}, p99 {p99:?}, max {max:?}",
        other.len(),
        latencies.len(),
        latencies[latencies.len() / 2]
    );
    assert!(other.is_empty(), "the flooder got other errors: {other:?}");
    assert!(refused > 0, "alice was never refused");
    assert!(
        accepted as f64 <= 30.0 + 30.0 * (elapsed.as_secs_f64() + 1.0),
        "{accepted} accepted in {elapsed:?}"
    );
    assert!(latencies.len() >= 20, "bob sent only {}", latencies.len());
    assert!(
        max < Duration::from_secs(1),
        "bob's sends were held up by alice's flood: p99 {p99:?}, max {max:?}"
    );
    // Everything bob sent reached dave's live stream, in order.
    let (msgs, _) = dave
        .messages_until(&conv, last_seq)
        .await
        .expect("dave receives everything");
    let bobs: Vec<&str> = msgs
        .iter()
        .filter(|m| m.sender_id == "bob")
        .map(|m| m.client_msg_id.as_str())
        .collect();
    let sent: Vec<String> = (0..i).map(|n| format!("bob-{n}")).collect();
    assert_eq!(bobs, sent.iter().map(String::as_str).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_leaves_other_users_latency_bounded_embedded() {
    let server = Embedded::start_with(FLOOD_LIMITS).await;
    a_flood_leaves_other_users_latency_bounded("embedded", server.addr, server.addr).await;
    server.stop().await;
}

/// The same on the distributed topology in this process (gateways, router
/// and history as separate gRPC services): the flood and bob on gateway 1,
/// dave on gateway 2. (The real broker and PostgreSQL are left out: on a
/// shared 2-core machine their own write latency, flood or not, varies too
/// much for a bound that is about isolation.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_leaves_other_users_latency_bounded_distributed() {
    let vars: HashMap<String, String> = GENEROUS_LIMITS
        .iter()
        .chain(FLOOD_LIMITS)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let topology = Topology::start(TopologyConfig {
        gateway: GatewayConfig::from_env(&vars).expect("valid limits"),
        ..TopologyConfig::default()
    })
    .await;
    let (near, far) = (topology.gateway(1).addr, topology.gateway(2).addr);
    a_flood_leaves_other_users_latency_bounded("distributed", near, far).await;
    topology.stop().await;
}

#[test]
fn a_limit_below_one_is_a_configuration_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    for key in [
        "CONFAB_RATE_MESSAGES_PER_SEC",
        "CONFAB_RATE_MESSAGES_BURST",
        "CONFAB_MAX_STREAMS_PER_USER",
        "CONFAB_RATE_CONVERSATIONS_PER_MIN",
        "CONFAB_RATE_READS_PER_SEC",
        "CONFAB_MAX_BODY_BYTES",
    ] {
        let mut env = std::collections::HashMap::new();
        env.insert("CONFAB_JWT_SECRET".to_string(), SECRET.to_string());
        env.insert(
            "CONFAB_DATA_DIR".to_string(),
            dir.path().display().to_string(),
        );
        env.insert(key.to_string(), "0".to_string());
        let err = confab::dev::DevConfig::from_env(&env)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(format!("invalid configuration: {key}=\"0\": must be at least 1").as_str())
        );
    }
}
