//! The internal services (history, router) are no open door: every call must
//! carry the shared service token (`CONFAB_SERVICE_TOKEN`, sent as
//! `x-confab-service-token`), except health checks, which orchestrators make
//! without it. Reflection needs the token too.

use confab_core::seams::HistoryApi;
use confab_history::LocalHistory;
use confab_history_client::{HistoryClientConfig, RemoteHistory};
use confab_layers::service_token::{ServiceToken, SERVICE_TOKEN_HEADER, SERVICE_TOKEN_REQUIRED};
use confab_proto::internal::v1::history_reader_client::HistoryReaderClient;
use confab_proto::internal::v1::router_link_client::RouterLinkClient;
use confab_proto::internal::v1::{gateway_frame, GatewayFrame, GetConversationRequest, Hello};
use confab_proto::prost::bytes::{Buf, BufMut};
use confab_router::gateway_links::{GatewayLinks, LinkConfig};
use confab_tests::served::{sqlite_store, Served};
use confab_tests::topology::{service_token, Topology, TopologyConfig, SERVICE_TOKEN};
use confab_tests::wait_until;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Same length as the real token, one byte off.
const WRONG_TOKEN: &str = "confab-test-service-token-0123456789abcdeF";

/// The ways to call without the right token: none, a wrong one of the same
/// length, a prefix of the right one, and the right one with a byte more.
fn bad_tokens() -> Vec<Option<String>> {
    vec![
        None,
        Some(WRONG_TOKEN.to_string()),
        Some(SERVICE_TOKEN[..SERVICE_TOKEN.len() - 1].to_string()),
        Some(format!("{SERVICE_TOKEN}x")),
    ]
}

/// `msg` with `token` (if any) in the service token metadata.
fn with_token<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(token) = token {
        req.metadata_mut()
            .insert(SERVICE_TOKEN_HEADER, token.parse().expect("ascii token"));
    }
    req
}

fn assert_refused(status: &Status, token: &Option<String>) {
    assert_eq!(status.code(), Code::Unauthenticated, "token {token:?}");
    assert_eq!(status.message(), SERVICE_TOKEN_REQUIRED, "token {token:?}");
    assert!(!status.message().contains(SERVICE_TOKEN));
}

/// A gRPC channel to `server`.
async fn channel(server: &Served) -> Channel {
    Channel::from_shared(format!("http://{}", server.addr()))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

/// History's read API over a fresh SQLite store, requiring the test token.
async fn history_server(dir: &tempfile::TempDir) -> Served {
    let reader: Arc<dyn HistoryApi> = Arc::new(LocalHistory::new(sqlite_store(dir.path()).await));
    Served::listen(|listener, signal| {
        confab_history::grpc::server(reader)
            .service_token(Some(service_token()))
            .serve(listener, signal)
    })
    .await
}

/// A router's `RouterLink` server, requiring the test token.
async fn router_server(links: Arc<GatewayLinks>) -> Served {
    Served::listen(|listener, signal| {
        confab_router::gateway_links::server(links, signal.clone())
            .service_token(Some(service_token()))
            .serve(listener, signal)
    })
    .await
}

/// Messages as bytes, for the standard services the tests crate has no
/// generated clients for (health, reflection).
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

/// One unary call of `path` with the encoded `msg`.
async fn raw_call(
    channel: Channel,
    path: &'static str,
    msg: Vec<u8>,
    token: Option<&str>,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    grpc.unary(with_token(msg, token), PathAndQuery::from_static(path), Raw)
        .await
        .map(|r| r.into_inner())
}

/// `grpc.health.v1.HealthCheckResponse { status: SERVING }` on the wire.
const SERVING: [u8; 2] = [0x08, 0x01];

/// A health check of `service` ("" for the whole server), without a token.
async fn health(channel: Channel, service: &str) -> Result<Vec<u8>, Status> {
    // HealthCheckRequest { service = 1 }.
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a);
        msg.push(u8::try_from(service.len()).expect("short name"));
        msg.extend_from_slice(service.as_bytes());
    }
    raw_call(channel, "/grpc.health.v1.Health/Check", msg, None).await
}

/// Reflection's `list_services` (ServerReflectionRequest field 7).
async fn reflection_list(channel: Channel, token: Option<&str>) -> Result<Vec<u8>, Status> {
    raw_call(
        channel,
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        vec![0x3a, 0x00],
        token,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_serves_only_callers_with_the_service_token() {
    confab_tests::init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = history_server(&dir).await;
    let channel = channel(&server).await;
    let mut client = HistoryReaderClient::new(channel.clone());
    let ask = || GetConversationRequest {
        conversation_id: "grp-nowhere".into(),
        ..Default::default()
    };

    for token in bad_tokens() {
        let status = client
            .get_conversation(with_token(ask(), token.as_deref()))
            .await
            .expect_err("refused");
        assert_refused(&status, &token);
    }
    // With the token the call reaches history, which answers for itself.
    let status = client
        .get_conversation(with_token(ask(), Some(SERVICE_TOKEN)))
        .await
        .expect_err("no such conversation");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // RemoteHistory (gateways, routers) sends the configured token...
    let addr = server.addr().to_string();
    let remote = RemoteHistory::new(&HistoryClientConfig {
        service_token: Some(service_token()),
        ..HistoryClientConfig::new([addr.clone()])
    })
    .expect("client");
    let err = remote.conversation("grp-nowhere").await.err();
    assert_eq!(err.map(|e| e.code()), Some(Code::NotFound));
    assert_eq!(
        remote
            .list_conversations("alice", Default::default())
            .await
            .expect("served")
            .conversations,
        vec![]
    );
    // ... and without one it is refused like anyone else.
    let bare = RemoteHistory::new(&HistoryClientConfig::new([addr])).expect("client");
    // (A refusal is an INTERNAL error to the gateway's own clients: it is a
    // misconfiguration of the deployment, not of their token.)
    let err = bare.conversation("grp-nowhere").await.expect_err("refused");
    assert_eq!(err.code(), Code::Internal);
    assert!(err.to_string().contains(SERVICE_TOKEN_REQUIRED), "{err}");
    let wrong = RemoteHistory::new(&HistoryClientConfig {
        service_token: Some(ServiceToken::new(WRONG_TOKEN).expect("valid")),
        ..HistoryClientConfig::new([server.addr().to_string()])
    })
    .expect("client");
    let err = wrong
        .list_conversations("alice", Default::default())
        .await
        .expect_err("refused");
    assert!(err.to_string().contains(SERVICE_TOKEN_REQUIRED), "{err}");

    // Health stays open to probes; reflection does not.
    for service in ["", "confab.internal.v1.HistoryReader"] {
        let answer = health(channel.clone(), service).await;
        assert_eq!(answer.ok(), Some(SERVING.to_vec()), "health of {service:?}");
    }
    for token in bad_tokens() {
        let status = reflection_list(channel.clone(), token.as_deref())
            .await
            .expect_err("reflection refused");
        assert_refused(&status, &token);
    }
    let listed = reflection_list(channel, Some(SERVICE_TOKEN))
        .await
        .expect("reflection with the token");
    let listed = String::from_utf8_lossy(&listed);
    assert!(
        listed.contains("confab.internal.v1.HistoryReader"),
        "{listed}"
    );

    server.stop("server").await;
}

/// The `Attach` stream of a gateway named `id` with `token`: the router's
/// answer, and the sender that keeps the stream open.
async fn attach(
    channel: Channel,
    id: &str,
    token: Option<&str>,
) -> (
    Result<tonic::Streaming<confab_proto::internal::v1::RouterFrame>, Status>,
    mpsc::Sender<GatewayFrame>,
) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(GatewayFrame {
        frame: Some(gateway_frame::Frame::Hello(Hello {
            gateway_id: id.into(),
            user_ids: vec!["alice".into()],
            epoch: 0,
            completes_in_deliveries: false,
        })),
    })
    .await
    .expect("queue hello");
    let answer = RouterLinkClient::new(channel)
        .attach(with_token(ReceiverStream::new(rx), token))
        .await
        .map(|r| r.into_inner());
    (answer, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_attaches_only_gateways_with_the_service_token() {
    confab_tests::init_tracing();
    let links = GatewayLinks::new(LinkConfig::default());
    let server = router_server(links.clone()).await;
    let channel = channel(&server).await;

    for token in bad_tokens() {
        let (answer, _tx) = attach(channel.clone(), "gx", token.as_deref()).await;
        match answer {
            Ok(_) => panic!("attached with token {token:?}"),
            Err(status) => assert_refused(&status, &token),
        }
    }
    assert!(links.gateways().is_empty(), "{:?}", links.gateways());

    let (answer, _tx) = attach(channel.clone(), "g-ok", Some(SERVICE_TOKEN)).await;
    assert!(answer.is_ok(), "attached: {:?}", answer.err());
    wait_until("the router to see the gateway", || {
        links.gateways() == vec!["g-ok".to_string()]
    })
    .await;
    assert_eq!(links.gateways_of("alice"), vec!["g-ok".to_string()]);

    for service in ["", "confab.internal.v1.RouterLink"] {
        let answer = health(channel.clone(), service).await;
        assert_eq!(answer.ok(), Some(SERVING.to_vec()), "health of {service:?}");
    }
    let status = reflection_list(channel, None)
        .await
        .expect_err("reflection refused");
    assert_refused(&status, &None);

    drop(answer);
    server.stop("server").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topology_with_the_service_token_works_end_to_end() {
    // Gateways attach to the routers and read history with the token; the
    // routers read membership with it.
    let topo = Topology::start(TopologyConfig {
        gateways: 2,
        routers: 1,
        service_token: Some(service_token()),
        ..TopologyConfig::default()
    })
    .await;
    let alice = topo.gateway(1).user("alice").await;
    let bob = topo.gateway(2).user("bob").await;
    let mut live = bob.live().await;
    topo.wait_user_on("bob", &["g2"]).await;
    let conv = alice.group("token", &["bob"]).await;
    let seq = alice
        .send(&conv.id, "m-1", "through the token")
        .await
        .expect("sent")
        .seq;
    let (got, _) = live.messages_until(&conv.id, seq).await.expect("delivered");
    assert_eq!(
        got.last().map(|m| m.body.as_str()),
        Some("through the token")
    );
    assert!(bob.all_seqs(&conv.id).await.contains(&seq));

    // Its history and routers refuse callers without the token.
    let bare = RemoteHistory::new(&HistoryClientConfig::new([topo.history.addr.to_string()]))
        .expect("client");
    let err = bare.conversation(&conv.id).await.expect_err("refused");
    assert!(err.to_string().contains(SERVICE_TOKEN_REQUIRED), "{err}");
    let channel = Channel::from_shared(format!("http://{}", topo.routers[0].server.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let (answer, _tx) = attach(channel, "intruder", None).await;
    match answer {
        Ok(_) => panic!("an intruder attached"),
        Err(status) => assert_refused(&status, &None),
    }
    topo.stop().await;
}
