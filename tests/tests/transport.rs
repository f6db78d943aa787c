//! The transport: TLS on the gateway (`CONFAB_TLS_CERT`, `CONFAB_TLS_KEY`),
//! mutual TLS between services (`CONFAB_TLS_CLIENT_CA` on history and
//! routers, `CONFAB_TLS_CA` and a client certificate on their callers), and
//! the HTTP/2 limits: concurrent streams per connection
//! (`CONFAB_HTTP2_MAX_STREAMS`), the idle timeout
//! (`CONFAB_HTTP2_IDLE_TIMEOUT_MS`) and the largest decoded request
//! (`CONFAB_MAX_MESSAGE_BYTES`). Certificates are made afresh by each test.

use confab_core::seams::HistoryApi;
use confab_gateway::router_links::AttachConfig;
use confab_gateway::Hub;
use confab_history::LocalHistory;
use confab_history_client::{
    endpoint_with, HistoryClientConfig, RemoteHistory, HISTORY_UNAVAILABLE,
};
use confab_layers::service_token::ServiceToken;
use confab_proto::internal::v1::history_reader_client::HistoryReaderClient;
use confab_proto::internal::v1::router_link_client::RouterLinkClient;
use confab_proto::internal::v1::{gateway_frame, GatewayFrame, Hello, ListForUserRequest};
use confab_proto::v1::{ListConversationsRequest, SendMessageRequest};
use confab_router::gateway_links::{GatewayLinks, LinkConfig};
use confab_runtime::transport::{ClientTls, ServerTls, Transport};
use confab_tests::served::{sqlite_store, Served};
use confab_tests::topology::{attach_client, fast_attach, service_token, SERVICE_TOKEN};
use confab_tests::{confab_bin, wait_until, Embedded, Session, User, DEADLINE};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

/// A certificate and its key, as PEM files.
struct Pair {
    cert: PathBuf,
    key: PathBuf,
}

impl Pair {
    fn read(&self) -> (Vec<u8>, Vec<u8>) {
        (
            std::fs::read(&self.cert).expect("cert"),
            std::fs::read(&self.key).expect("key"),
        )
    }
}

/// A throwaway PKI: a CA, a server certificate for `127.0.0.1` and
/// `localhost`, a client certificate from the same CA, and one from another
/// CA that nobody trusts.
struct Pki {
    ca: PathBuf,
    server: Pair,
    client: Pair,
    stranger: Pair,
    _dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, issuer) = authority(dir.path(), "ca");
        let (_, other) = authority(dir.path(), "other-ca");
        Self {
            server: leaf(dir.path(), "server", &["127.0.0.1", "localhost"], &issuer),
            client: leaf(dir.path(), "client", &["gateway.confab.test"], &issuer),
            stranger: leaf(dir.path(), "stranger", &["gateway.confab.test"], &other),
            ca,
            _dir: dir,
        }
    }

    fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.ca).expect("ca")
    }

    /// The server's TLS, requiring client certificates from the CA when
    /// `mutual`.
    fn server_tls(&self, mutual: bool) -> ServerTls {
        let (cert, key) = self.server.read();
        let ca = self.ca_pem();
        ServerTls::from_pem(&cert, &key, mutual.then_some(ca.as_slice())).expect("server tls")
    }

    /// An internal client's TLS, presenting `identity` if given.
    fn client_tls(&self, identity: Option<&Pair>) -> ClientTls {
        let files = identity.map(Pair::read);
        ClientTls::from_pem(
            &self.ca_pem(),
            files.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
            None,
        )
        .expect("client tls")
    }

    fn path(p: &Path) -> &str {
        p.to_str().expect("utf-8 path")
    }
}

fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write pem");
    path
}

fn authority(dir: &Path, name: &str) -> (PathBuf, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("ca key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, format!("confab test {name}"));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("self-signed ca");
    let path = write(dir, &format!("{name}.pem"), &cert.pem());
    (path, Issuer::new(params, key))
}

fn leaf(dir: &Path, name: &str, names: &[&str], issuer: &Issuer<'_, KeyPair>) -> Pair {
    let key = KeyPair::generate().expect("key");
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, name.to_string());
    // One certificate per service, used both to serve and to call.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, issuer).expect("sign");
    Pair {
        cert: write(dir, &format!("{name}.pem"), &cert.pem()),
        key: write(dir, &format!("{name}-key.pem"), &key.serialize_pem()),
    }
}

/// A TLS channel to `addr` trusting the test CA.
async fn tls_channel(addr: SocketAddr, pki: &Pki) -> Channel {
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pki.ca_pem())))
        .expect("tls config")
        .connect()
        .await
        .expect("connect over tls")
}

fn plaintext_channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy()
}

fn list_request(user: &User) -> Request<ListConversationsRequest> {
    user.req(ListConversationsRequest::default())
}

/// grpcurl, from PATH or where `make deps-tools` puts it.
fn grpcurl() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("grpcurl"))
            .find(|p| p.is_file())
    });
    let tools = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/confab/tools/bin/grpcurl"))
        .filter(|p| p.is_file());
    on_path.or(tools).unwrap_or_else(|| {
        panic!("grpcurl is missing: `make deps-tools` installs it (make test does)")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_over_tls_serves_tls_clients_and_grpcurl_but_not_plaintext() {
    let pki = Pki::new();
    let server = Embedded::start_with(&[
        ("CONFAB_TLS_CERT", Pki::path(&pki.server.cert)),
        ("CONFAB_TLS_KEY", Pki::path(&pki.server.key)),
    ])
    .await;
    let channel = tls_channel(server.addr, &pki).await;
    let alice = User::over(channel.clone(), "alice");
    let bob = User::over(channel, "bob");
    let mut live = bob.live().await;
    let group = alice.group("over tls", &["bob"]).await;
    let sent = alice
        .send(&group.id, "m1", "hello over tls")
        .await
        .expect("send over tls");
    let (got, _) = live
        .messages_until(&group.id, sent.seq)
        .await
        .expect("delivered over tls");
    assert_eq!(got.last().map(|m| m.body.as_str()), Some("hello over tls"));

    // A plaintext client gets no HTTP/2 out of a TLS port: its preface is
    // answered with a TLS alert record, then the connection closes.
    let mut raw = TcpStream::connect(server.addr).await.expect("connect");
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("preface");
    let mut reply = Vec::new();
    tokio::time::timeout(DEADLINE, raw.read_to_end(&mut reply))
        .await
        .expect("closed within the deadline")
        .expect("read");
    assert_eq!(reply.first(), Some(&0x15), "a TLS alert: {reply:?}");
    let plain = User::over(plaintext_channel(server.addr), "alice");
    let refused = plain
        .client
        .clone()
        .list_conversations(list_request(&plain))
        .await
        .expect_err("plaintext refused");
    assert_refused_by_transport(&refused);

    // grpcurl verifies the server with the CA and calls it as a user.
    let token = confab_tests::token("alice");
    let out = Command::new(grpcurl())
        .args([
            "-cacert",
            Pki::path(&pki.ca),
            "-H",
            &format!("authorization: Bearer {token}"),
            "-d",
            "{}",
            &server.addr.to_string(),
            "confab.v1.Chat/ListConversations",
        ])
        .output()
        .expect("run grpcurl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "grpcurl over tls: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&group.id), "{stdout}");
    // Without the CA, grpcurl refuses the certificate; with -plaintext,
    // the server does not answer it (grpcurl would retry for 10 s).
    for args in [vec![], vec!["-plaintext"]] {
        let out = Command::new(grpcurl())
            .args(&args)
            .args(["-connect-timeout", "1", &server.addr.to_string(), "list"])
            .output()
            .expect("run grpcurl");
        assert!(!out.status.success(), "grpcurl {args:?} must fail");
    }
    server.stop().await;
}

/// A call that failed in the client's transport: no gRPC status came from
/// the server. Which code the client makes of it depends on where its
/// HTTP/2 layer noticed (the write failing: UNKNOWN "broken pipe"; the
/// connection closing first: CANCELLED; the peer's TLS alert read as a frame:
/// INTERNAL "h2 protocol error"; no connection: UNAVAILABLE): tonic reports
/// the same refusal all these ways.
fn assert_refused_by_transport(status: &Status) {
    let from_transport = std::error::Error::source(status)
        .is_some_and(|e| e.downcast_ref::<tonic::transport::Error>().is_some());
    assert!(
        from_transport,
        "a transport failure, not a server's answer: {status:?}"
    );
    assert!(
        matches!(
            status.code(),
            Code::Unknown | Code::Cancelled | Code::Internal | Code::Unavailable
        ),
        "{status:?}"
    );
}

/// Runs `bin` with only the given CONFAB_* variables set.
fn run_bin(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CONFAB_")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run binary")
}

#[test]
fn bad_tls_settings_exit_64_naming_the_variable_before_binding() {
    let pki = Pki::new();
    let garbage = pki._dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a key, not a certificate").expect("write");
    let cert = Pki::path(&pki.server.cert);
    let key = Pki::path(&pki.server.key);
    let other_key = Pki::path(&pki.client.key);
    let garbage = Pki::path(&garbage);
    let ca = Pki::path(&pki.ca);
    // (variables, the variable the error names, what it says)
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("CONFAB_TLS_CERT", cert)],
            "CONFAB_TLS_KEY",
            "required",
        ),
        (vec![("CONFAB_TLS_KEY", key)], "CONFAB_TLS_CERT", "required"),
        (
            vec![
                ("CONFAB_TLS_CERT", "/nonexistent/cert.pem"),
                ("CONFAB_TLS_KEY", key),
            ],
            "CONFAB_TLS_CERT",
            "cannot read",
        ),
        (
            vec![("CONFAB_TLS_CERT", cert), ("CONFAB_TLS_KEY", garbage)],
            "CONFAB_TLS_KEY",
            "no private key",
        ),
        (
            vec![("CONFAB_TLS_CERT", garbage), ("CONFAB_TLS_KEY", key)],
            "CONFAB_TLS_CERT",
            "no certificate",
        ),
        // A key that belongs to another certificate.
        (
            vec![("CONFAB_TLS_CERT", cert), ("CONFAB_TLS_KEY", other_key)],
            "CONFAB_TLS_CERT",
            "rustls refuses",
        ),
        (
            vec![("CONFAB_TLS_CLIENT_CA", ca)],
            "CONFAB_TLS_CLIENT_CA",
            "only over TLS",
        ),
        (
            vec![("CONFAB_HTTP2_MAX_STREAMS", "0")],
            "CONFAB_HTTP2_MAX_STREAMS",
            "at least 1",
        ),
        (
            vec![("CONFAB_MAX_MESSAGE_BYTES", "2048")],
            "CONFAB_MAX_MESSAGE_BYTES",
            "CONFAB_MAX_BODY_BYTES",
        ),
    ];
    let key_pem = std::fs::read_to_string(&pki.client.key).expect("key");
    let key_line = key_pem.lines().nth(1).expect("a line of key material");
    let gateway = confab_bin().with_file_name("confab-gateway");
    let gateway_env = [
        ("CONFAB_JWT_SECRET", "a-gateway-secret-of-enough-bytes"),
        ("CONFAB_HISTORY_ADDRS", "127.0.0.1:1"),
        ("CONFAB_ROUTER_ADDRS", "127.0.0.1:2"),
        ("CONFAB_GATEWAY_ID", "gw-1"),
        ("CONFAB_SERVICE_TOKEN", SERVICE_TOKEN),
    ];
    for (vars, names, says) in cases {
        // A port nobody uses: the process must exit before binding it.
        let port = confab_tests::free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut dev_env = vec![("CONFAB_LISTEN", listen.as_str())];
        dev_env.extend(vars.iter().copied());
        let dev = run_bin(&confab_bin(), &["dev"], &dev_env);
        let mut env = gateway_env.to_vec();
        env.extend(dev_env.iter().copied());
        let gw = run_bin(&gateway, &[], &env);
        for (what, out) in [("confab dev", dev), ("confab-gateway", gw)] {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{what} {vars:?}: {stderr}");
            assert!(stderr.contains(names), "{what} names {names}: {stderr}");
            assert!(stderr.contains(says), "{what} says {says:?}: {stderr}");
            assert!(!stderr.contains(key_line), "{what} shows no key material");
        }
        std::net::TcpListener::bind(&listen).expect("the port was never bound");
    }
}

/// History's read API over a fresh SQLite store, with `transport`,
/// requiring the test service token.
async fn history_server(dir: &tempfile::TempDir, transport: Transport) -> Served {
    let reader: Arc<dyn HistoryApi> = Arc::new(LocalHistory::new(sqlite_store(dir.path()).await));
    Served::listen(|listener, signal| {
        confab_history::grpc::server(reader)
            .service_token(Some(service_token()))
            .transport(transport)
            .serve(listener, signal)
    })
    .await
}

fn with_service_token<T>(msg: T, token: Option<&ServiceToken>) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(token) = token {
        token.attach(&mut req);
    }
    req
}

/// `ListForUser` on history at `addr` over `tls`.
async fn list_for_user(
    addr: SocketAddr,
    tls: Option<&ClientTls>,
    token: Option<&ServiceToken>,
) -> Result<(), Status> {
    let channel = endpoint_with(&addr.to_string(), tls)
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    HistoryReaderClient::new(channel)
        .list_conversations(with_service_token(
            ListForUserRequest {
                user_id: "alice".into(),
                request: None,
            },
            token,
        ))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_with_a_client_ca_serves_only_callers_with_a_certificate_and_the_token() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let history = history_server(
        &dir,
        Transport {
            tls: Some(pki.server_tls(true)),
            ..Transport::internal()
        },
    )
    .await;
    let token = service_token();
    let addr = history.addr();
    let no_cert = pki.client_tls(None);
    let stranger = pki.client_tls(Some(&pki.stranger));
    let client = pki.client_tls(Some(&pki.client));
    // The handshake itself refuses a caller without a certificate from the
    // CA: the call never reaches the service (which would have answered
    // UNAUTHENTICATED, as no token is sent).
    for (what, tls) in [
        ("plaintext", None),
        ("no client certificate", Some(&no_cert)),
        ("a certificate from another CA", Some(&stranger)),
    ] {
        let refused = list_for_user(addr, tls, None).await.expect_err(what);
        assert_refused_by_transport(&refused);
    }
    // A certificate does not replace the service token.
    let refused = list_for_user(addr, Some(&client), None)
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    list_for_user(addr, Some(&client), Some(&token))
        .await
        .expect("certificate and token");
    // The real client (gateways and routers read through it).
    let remote = RemoteHistory::new(&HistoryClientConfig {
        service_token: Some(token.clone()),
        tls: Some(client.clone()),
        ..HistoryClientConfig::new([addr.to_string()])
    })
    .expect("remote history");
    assert!(remote
        .list_conversations("alice", Default::default())
        .await
        .expect("read over mTLS")
        .conversations
        .is_empty());
    let without_cert = RemoteHistory::new(&HistoryClientConfig {
        service_token: Some(token),
        tls: Some(no_cert),
        ..HistoryClientConfig::new([addr.to_string()])
    })
    .expect("remote history");
    let refused = Status::from(
        without_cert
            .list_conversations("alice", Default::default())
            .await
            .expect_err("no certificate"),
    );
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(refused.message(), HISTORY_UNAVAILABLE);
    history.stop("history").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_with_a_client_ca_take_only_gateways_with_a_certificate() {
    let pki = Pki::new();
    let links = GatewayLinks::new(LinkConfig::default());
    let transport = Transport {
        tls: Some(pki.server_tls(true)),
        ..Transport::internal()
    };
    let router_links = links.clone();
    let router = Served::listen(|listener, signal| {
        confab_router::gateway_links::server(router_links, signal.clone())
            .service_token(Some(service_token()))
            .transport(transport)
            .serve(listener, signal)
    })
    .await;
    let addr = router.addr();

    // Without a certificate the handshake fails: no stream.
    let no_cert = pki.client_tls(None);
    let channel = endpoint_with(&addr.to_string(), Some(&no_cert))
        .expect("endpoint")
        .connect_lazy();
    let hello = GatewayFrame {
        frame: Some(gateway_frame::Frame::Hello(Hello {
            gateway_id: "intruder".into(),
            ..Default::default()
        })),
    };
    let refused = RouterLinkClient::new(channel)
        .attach(with_service_token(
            tokio_stream::iter(vec![hello]),
            Some(&service_token()),
        ))
        .await
        .expect_err("no client certificate");
    assert_refused_by_transport(&refused);
    assert!(links.gateways().is_empty());

    // A gateway presenting its certificate (and the token) attaches.
    let hub = Hub::new("gw-mtls");
    let attach = attach_client(
        &hub,
        AttachConfig {
            service_token: Some(service_token()),
            tls: Some(pki.client_tls(Some(&pki.client))),
            ..fast_attach([addr.to_string()])
        },
    );
    wait_until("the gateway attached over mTLS", || {
        links.gateways() == vec!["gw-mtls".to_string()]
    })
    .await;
    assert_eq!(hub.attached_routers(), 1);
    attach.stop("the attach client").await;
    router.stop("the router").await;
}

/// Embedded mode with 1 KiB bodies and `CONFAB_MAX_MESSAGE_BYTES` just
/// above that (`limit`), and a group of alice and bob, bob's stream live.
struct Limited {
    limit: usize,
    server: Embedded,
    alice: User,
    bob: User,
    group: String,
    live: Session,
}

impl Limited {
    async fn start(title: &str) -> Limited {
        let limit = 1024 + Transport::REQUEST_HEADROOM;
        let limit_text = limit.to_string();
        let server = Embedded::start_with(&[
            ("CONFAB_MAX_BODY_BYTES", "1024"),
            ("CONFAB_MAX_MESSAGE_BYTES", &limit_text),
        ])
        .await;
        let alice = server.user("alice").await;
        let bob = server.user("bob").await;
        let group = alice.group(title, &["bob"]).await.id;
        let live = bob.live().await;
        Limited {
            limit,
            server,
            alice,
            bob,
            group,
            live,
        }
    }

    /// `status` refuses a request over the limit, naming it.
    fn assert_over_the_limit(&self, status: &Status) {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status
                .message()
                .contains(&format!("CONFAB_MAX_MESSAGE_BYTES={}", self.limit)),
            "names the limit: {}",
            status.message()
        );
    }

    /// Alice's unary calls and bob's stream go on: a small send of
    /// alice's (`key`) reaches bob's stream; its seq. Then the server stops.
    async fn still_works(mut self, key: &str) -> u64 {
        let ok = self
            .alice
            .send(&self.group, key, "fits")
            .await
            .expect("alice sends a small one");
        self.live
            .messages_until(&self.group, ok.seq)
            .await
            .expect("bob's stream still delivers");
        self.server.stop().await;
        ok.seq
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_message_limit_is_resource_exhausted_and_others_go_on() {
    let limited = Limited::start("limits").await;
    let huge = "x".repeat(limited.limit + 1);
    let flood = {
        let alice = limited.alice.clone();
        let conv = limited.group.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..20 {
                let req = alice.req(SendMessageRequest {
                    reply_to_seq: 0,
                    conversation_id: conv.clone(),
                    client_msg_id: format!("huge-{i}"),
                    body: huge.clone(),
                });
                statuses.push(
                    alice
                        .client
                        .clone()
                        .send_message(req)
                        .await
                        .expect_err("over the limit"),
                );
            }
            statuses
        })
    };
    // Bob's calls on the same gateway go on meanwhile.
    let mut last = 0;
    for i in 0..20 {
        last = limited
            .bob
            .send(&limited.group, &format!("b{i}"), "small")
            .await
            .expect("bob sends")
            .seq;
    }
    for status in flood.await.expect("flood task") {
        limited.assert_over_the_limit(&status);
    }
    // The refusal did not cost alice her connection, nor bob his stream.
    let seq = limited.still_works("a-small").await;
    assert!(seq > last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_frame_over_the_message_limit_ends_that_stream_only() {
    let limited = Limited::start("frames").await;
    let mut stream = limited.alice.live().await;
    stream
        .send_text(&limited.group, "huge", &"x".repeat(limited.limit + 1))
        .await;
    let status = stream.end_status().await;
    limited.assert_over_the_limit(&status);
    // Bob's stream and alice's unary calls go on.
    limited.still_works("small").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_the_streams_per_connection_cap_wait_for_a_free_stream() {
    let server = Embedded::start_with(&[("CONFAB_HTTP2_MAX_STREAMS", "2")]).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    // Two Connect streams fill alice's connection.
    let first = alice.live().await;
    let _second = alice.live().await;
    // A third call on the same connection is held by the client until a
    // stream frees up (SETTINGS_MAX_CONCURRENT_STREAMS): it neither fails
    // nor gets an answer meanwhile.
    let held = {
        let alice = alice.clone();
        tokio::spawn(async move {
            alice
                .client
                .clone()
                .list_conversations(list_request(&alice))
                .await
        })
    };
    // Another connection is unaffected: bob's calls are answered at once.
    for _ in 0..10 {
        let started = Instant::now();
        bob.client
            .clone()
            .list_conversations(list_request(&bob))
            .await
            .expect("bob's call");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    assert!(!held.is_finished(), "the third call of alice waits");
    drop(first);
    let answered = tokio::time::timeout(DEADLINE, held)
        .await
        .expect("answered once a stream ended")
        .expect("task");
    assert!(answered.is_ok(), "{answered:?}");
    server.stop().await;
}

/// A client connection that records when the server closed it.
struct Watched {
    inner: TcpStream,
    closed: Arc<AtomicBool>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &read {
            Poll::Ready(Ok(())) if buf.filled().len() == before => {
                this.closed.store(true, Ordering::SeqCst)
            }
            Poll::Ready(Err(_)) => this.closed.store(true, Ordering::SeqCst),
            _ => {}
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A channel to `addr` whose connections are watched: how many were made,
/// and whether the last one was closed.
fn watched_channel(addr: SocketAddr) -> (Channel, Arc<AtomicUsize>, Arc<AtomicBool>) {
    let opened = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicBool::new(false));
    let (o, c) = (opened.clone(), closed.clone());
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let (opened, closed) = (o.clone(), c.clone());
        async move {
            let inner = TcpStream::connect(addr).await?;
            opened.fetch_add(1, Ordering::SeqCst);
            closed.store(false, Ordering::SeqCst);
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(Watched { inner, closed }))
        }
    });
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_with_connector_lazy(connector);
    (channel, opened, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_calls_are_closed_after_the_idle_timeout() {
    let idle = Duration::from_millis(300);
    let server = Embedded::start_with(&[("CONFAB_HTTP2_IDLE_TIMEOUT_MS", "300")]).await;
    // Alice keeps a Connect stream open: her connection is never idle.
    let alice = server.user("alice").await;
    let mut live = alice.live().await;

    // A connection that never says anything is closed.
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    let mut buf = [0u8; 1024];
    let closed_after = loop {
        let n = tokio::time::timeout(DEADLINE, silent.read(&mut buf))
            .await
            .expect("closed within the deadline")
            .unwrap_or(0);
        if n == 0 {
            break started.elapsed();
        }
    };
    assert!(closed_after >= idle, "closed after {closed_after:?}");

    // A connection whose call ended is closed after the timeout, and the
    // client's next call opens a new one.
    let (channel, opened, closed) = watched_channel(server.addr);
    let bob = User::over(channel, "bob");
    let group = bob.group("idle", &["alice"]).await;
    let answered = Instant::now();
    wait_until("bob's idle connection closed", || {
        closed.load(Ordering::SeqCst)
    })
    .await;
    assert!(
        answered.elapsed() >= idle - Duration::from_millis(100),
        "closed after {:?}",
        answered.elapsed()
    );
    assert_eq!(opened.load(Ordering::SeqCst), 1);
    let sent = bob
        .send(&group.id, "after-idle", "hello again")
        .await
        .expect("a call after the idle close reconnects");
    assert_eq!(opened.load(Ordering::SeqCst), 2);

    // Alice's stream outlived several idle timeouts and still delivers.
    assert!(answered.elapsed() > idle);
    live.messages_until(&group.id, sent.seq)
        .await
        .expect("alice's stream is still open");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_services_take_compressed_calls_and_refuse_undecodable_ones() {
    use confab_proto::prost::Message as _;
    use tonic::codec::CompressionEncoding;
    let dir = tempfile::tempdir().expect("tempdir");
    let history = history_server(&dir, Transport::internal()).await;
    let addr = history.addr();
    let token = service_token();
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    for encoding in [
        CompressionEncoding::Gzip,
        CompressionEncoding::Deflate,
        CompressionEncoding::Zstd,
    ] {
        HistoryReaderClient::new(channel.clone())
            .send_compressed(encoding)
            .accept_compressed(encoding)
            .list_conversations(with_service_token(
                ListForUserRequest {
                    user_id: "alice".into(),
                    request: None,
                },
                Some(&token),
            ))
            .await
            .unwrap_or_else(|e| panic!("a {encoding}-compressed call: {e:?}"));
        // Health, beside every service, too.
        let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
            .send_compressed(encoding)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .expect("a compressed health check");
        assert_eq!(health.into_inner().status, 1, "SERVING");
    }
    // A request that does not decode is the caller's mistake here too.
    let mut bytes = ListForUserRequest {
        user_id: "USER".into(),
        request: None,
    }
    .encode_to_vec();
    let at = bytes
        .windows(4)
        .position(|w| w == b"USER")
        .expect("user id");
    bytes[at] = 0xff;
    let answer = confab_tests::wire::call(
        addr,
        "/confab.internal.v1.HistoryReader/ListConversations",
        "",
        &[(
            confab_layers::service_token::SERVICE_TOKEN_HEADER,
            SERVICE_TOKEN,
        )],
        confab_tests::wire::frame(0, &bytes),
    )
    .await;
    assert_eq!(answer.status.code(), Code::InvalidArgument, "{answer:?}");
    assert!(
        answer
            .status
            .message()
            .contains("ListForUserRequest.user_id"),
        "{answer:?}"
    );
    history.stop("history").await;
}
