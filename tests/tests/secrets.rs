//! Secrets never appear in logs or error messages: the real binaries, logging
//! at debug level, are called with valid tokens, forged and expired ones,
//! garbage, the secrets themselves pasted as tokens, and wrong service
//! tokens; then neither any log line nor any error a client saw contains the
//! JWT secret, the service token, or any token that was presented.

use confab_auth::Authenticator;
use confab_layers::service_token::SERVICE_TOKEN_HEADER;
use confab_proto::internal::v1::history_reader_client::HistoryReaderClient;
use confab_proto::internal::v1::router_link_client::RouterLinkClient;
use confab_proto::internal::v1::{gateway_frame, GatewayFrame, GetConversationRequest, Hello};
use confab_proto::v1::{client_frame, Ping};
use confab_tests::stack::{ProcStack, Role};
use confab_tests::*;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// The deployment's JWT secret (HS256).
const JWT_SECRET: &str = "leak-test-jwt-secret-Qm4rT8zW1xK9pL2v";
/// The deployment's service token.
const SERVICE_TOKEN: &str = "leak-test-service-token-Hc7nB3yV6fJ0sD5gA8eR";
/// A service token that is not the deployment's.
const WRONG_SERVICE_TOKEN: &str = "leak-test-wrong-service-token-Yt2uN9bM4kE7wQ1z";

/// Everything a client saw and every token it presented.
#[derive(Default)]
struct Seen {
    /// Every token presented, valid or not.
    presented: Vec<String>,
    /// Every refusal and error, with its metadata.
    errors: Vec<String>,
}

impl Seen {
    fn error(&mut self, what: &str, status: &Status) {
        self.errors.push(format!("{what}: {status:?}"));
    }

    /// `result` is a refusal with `code`; it is recorded.
    fn refused<T: std::fmt::Debug>(&mut self, what: &str, result: Result<T, Status>, code: Code) {
        match result {
            Ok(v) => panic!("{what}: accepted: {v:?}"),
            Err(s) => {
                assert_eq!(s.code(), code, "{what}: {s:?}");
                self.error(what, &s);
            }
        }
    }
}

/// Unix seconds now.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Tokens a client might present that must be refused, by what is wrong.
fn bad_tokens() -> Vec<(&'static str, String)> {
    let forged = Authenticator::new("another-secret-that-is-not-the-real-one")
        .mint("alice", 3600)
        .expect("mint");
    let expired = Authenticator::new(JWT_SECRET)
        .mint_expiring_at("alice", now() - 3600)
        .expect("mint");
    // A valid token with its last signature character changed.
    let valid = Authenticator::new(JWT_SECRET)
        .mint("alice", 3600)
        .expect("mint");
    let mut tampered = valid.clone();
    let last = tampered.pop().expect("non-empty");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    vec![
        ("forged signature", forged),
        ("expired", expired),
        ("tampered signature", tampered),
        ("garbage", "garbage-token-Jx8Kq2Lm5Np7Rs9Tv".to_string()),
        ("the JWT secret pasted as a token", JWT_SECRET.to_string()),
        (
            "the service token pasted as a token",
            SERVICE_TOKEN.to_string(),
        ),
    ]
}

/// Calls the Chat API at `addr` as alice, bob and with every bad token,
/// unary and streaming, and records what it saw.
async fn exercise_gateway(addr: SocketAddr, seen: &mut Seen) {
    let auth = Authenticator::new(JWT_SECRET);
    let user = |name: &'static str| {
        let auth = auth.clone();
        async move {
            let token = auth.mint(name, 3600).expect("mint");
            (User::with_token(addr, name, &token).await, token)
        }
    };
    let (alice, alice_token) = user("alice").await;
    let (bob, bob_token) = user("bob").await;
    seen.presented.extend([alice_token, bob_token]);

    // Valid traffic: a group, messages unary and on a stream, reads.
    // The consumer groups may still be forming.
    let conv = retry_unavailable_seeing(
        "create",
        DEADLINE * 2,
        || alice.create(confab_proto::v1::ConversationKind::Group, "leak", &["bob"]),
        |e| seen.error("create while starting", e),
    )
    .await
    .id;
    let mut bobs = bob.live().await;
    let m = alice.send(&conv, "m1", "hello").await.expect("send");
    bobs.messages_until(&conv, m.seq)
        .await
        .expect("bob receives");
    bobs.send_text(&conv, "b1", "hi").await;
    assert_eq!(bobs.next_ack().await.error, None);
    alice.history(&conv, None, None, 10).await.expect("history");
    // Errors with a valid token: not a member, bad input.
    let (mallory, mallory_token) = user("mallory").await;
    seen.presented.push(mallory_token);
    seen.refused(
        "not a member",
        mallory.send(&conv, "x", "let me in").await,
        Code::PermissionDenied,
    );
    seen.refused(
        "empty body",
        alice.send(&conv, "m2", "").await,
        Code::InvalidArgument,
    );

    // Every bad token, on a unary call, on a stream, and as a bare header
    // without "Bearer ".
    for (what, token) in bad_tokens() {
        seen.presented.push(token.clone());
        let client = User::with_token(addr, "alice", &token).await;
        seen.refused(
            &format!("send with {what}"),
            client.send(&conv, "x", "x").await,
            Code::Unauthenticated,
        );
        seen.refused(
            &format!("list with {what}"),
            client
                .client
                .clone()
                .list_conversations(client.req(Default::default()))
                .await,
            Code::Unauthenticated,
        );
        seen.refused(
            &format!("connect with {what}"),
            client
                .session(client_frame::Frame::Ping(Ping { nonce: 1 }))
                .await
                .map(|_| ()),
            Code::Unauthenticated,
        );
        let mut req = Request::new(confab_proto::v1::ListConversationsRequest::default());
        req.metadata_mut()
            .insert("authorization", token.parse().expect("ascii"));
        seen.refused(
            &format!("{what} without Bearer"),
            client.client.clone().list_conversations(req).await,
            Code::Unauthenticated,
        );
    }
}

/// Calls history's read API and a router's link at `history` and `router`
/// with the wrong service token, none, and the right one.
async fn exercise_internal(history: &str, router: &str, seen: &mut Seen) {
    let channel = |addr: &str| {
        let uri = format!("http://{addr}");
        async move {
            Channel::from_shared(uri)
                .expect("uri")
                .connect()
                .await
                .expect("connect")
        }
    };
    let with = |token: Option<&str>| {
        let mut req = Request::new(GetConversationRequest {
            conversation_id: "grp-nope".into(),
            ..Default::default()
        });
        if let Some(t) = token {
            req.metadata_mut()
                .insert(SERVICE_TOKEN_HEADER, t.parse().expect("ascii"));
        }
        req
    };
    let mut reader = HistoryReaderClient::new(channel(history).await);
    for (what, token) in [
        ("history, wrong service token", Some(WRONG_SERVICE_TOKEN)),
        ("history, JWT secret as service token", Some(JWT_SECRET)),
        ("history, no service token", None),
    ] {
        seen.refused(
            what,
            reader.get_conversation(with(token)).await,
            Code::Unauthenticated,
        );
    }
    // The right token gets an answer about the request (no such conversation).
    match reader.get_conversation(with(Some(SERVICE_TOKEN))).await {
        Ok(c) => panic!("a conversation that does not exist: {c:?}"),
        Err(s) => {
            assert_ne!(s.code(), Code::Unauthenticated, "{s:?}");
            seen.error("history, right service token", &s);
        }
    }
    let mut link = RouterLinkClient::new(channel(router).await);
    for token in [WRONG_SERVICE_TOKEN, JWT_SECRET] {
        let hello = GatewayFrame {
            frame: Some(gateway_frame::Frame::Hello(Hello {
                gateway_id: "gw-intruder".into(),
                ..Default::default()
            })),
        };
        let mut req = Request::new(tokio_stream::iter([hello]));
        req.metadata_mut()
            .insert(SERVICE_TOKEN_HEADER, token.parse().expect("ascii"));
        seen.refused(
            "router attach with a wrong service token",
            link.attach(req).await.map(|_| ()),
            Code::Unauthenticated,
        );
    }
}

/// Where `needle` occurs in `haystack`, for the failure message.
fn find(haystack: &str, needle: &str) -> Option<String> {
    let at = haystack.find(needle)?;
    let line_start = haystack[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_end = haystack[at..].find('\n').map_or(haystack.len(), |i| at + i);
    Some(haystack[line_start..line_end].to_string())
}

/// Neither `text` (named `what`) contains a secret or a presented token.
fn assert_no_secrets(what: &str, text: &str, seen: &Seen) {
    let mut secrets: Vec<(&str, &str)> = vec![
        ("the JWT secret", JWT_SECRET),
        ("the service token", SERVICE_TOKEN),
        ("the wrong service token", WRONG_SERVICE_TOKEN),
    ];
    secrets.extend(
        seen.presented
            .iter()
            .map(|t| ("a presented token", t.as_str())),
    );
    for (name, secret) in secrets {
        if let Some(line) = find(text, secret) {
            panic!("{name} appears in {what}: {line}");
        }
    }
}

/// The distributed binaries (gateway, router, history) on a real broker and
/// PostgreSQL, every one logging at debug level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_or_errors_of_the_distributed_services() {
    let mut stack = ProcStack::builder("secrets")
        .partitions(2)
        .log("debug")
        .service_token(SERVICE_TOKEN)
        .jwt_secret(JWT_SECRET)
        .default_limits()
        .start_fresh()
        .await;
    let mut seen = Seen::default();
    exercise_gateway(stack.gateway_addr(0), &mut seen).await;
    exercise_internal(
        &stack.first(Role::History).addr,
        &stack.first(Role::Router).addr,
        &mut seen,
    )
    .await;

    for (label, stopped) in stack.terminate(DEADLINE).await {
        assert!(
            stopped.status.is_some_and(|s| s.success()),
            "{label} stopped cleanly: {stopped:?}\n{}",
            stack.tails(20)
        );
    }
    for p in stack.all() {
        let log = std::fs::read_to_string(&p.log).expect("log");
        assert!(
            log.lines().count() > 20,
            "{} logged at debug level:\n{log}",
            p.label
        );
        assert_no_secrets(&format!("the {} log", p.label), &log, &seen);
    }
    assert_no_secrets("an error a client saw", &seen.errors.join("\n"), &seen);
    // The gateway did log the refusals (without the tokens).
    let gateway = stack.first(Role::Gateway);
    let gateway_log = std::fs::read_to_string(&gateway.log).expect("log");
    assert!(
        gateway_log.contains("call refused at the gateway"),
        "{}",
        gateway.tail(40)
    );
}

/// `confab dev`, logging at debug level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_log_or_errors_of_confab_dev() {
    let dir = tempfile::tempdir().expect("data dir");
    let log_path = dir.path().join("dev.log");
    let mut dev = DevProcess::start_with(
        &dir.path().join("data"),
        free_port(),
        &[("CONFAB_JWT_SECRET", JWT_SECRET), ("CONFAB_LOG", "debug")],
        Some(&log_path),
    )
    .expect("start confab dev");
    let addr = dev.addr;
    let mut seen = Seen::default();
    exercise_gateway(addr, &mut seen).await;
    dev.terminate();
    let mut status = None;
    wait_until("confab dev exits", || {
        status = dev.exited();
        status.is_some()
    })
    .await;
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(status.is_some_and(|s| s.success()), "{log}");
    assert!(log.lines().count() > 20, "logged at debug level:\n{log}");
    assert_no_secrets("the confab dev log", &log, &seen);
    assert_no_secrets("an error a client saw", &seen.errors.join("\n"), &seen);
}
