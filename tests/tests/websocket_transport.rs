//! What is the WebSocket's own (docs/browser.md): its frame formats, the
//! token in a subprotocol, origins, and how it closes for each thing a
//! client gets wrong: each with a precise close code (or HTTP status) and a
//! reason, and nobody else disturbed. The session behind it is `Connect`'s,
//! tested over WebSocket by `websocket.rs`.

use confab_proto::v1::{client_frame, server_frame, ClientFrame, Ping, SendFrame, ServerFrame};
use confab_proto::websocket::Format;
use confab_tests::ws::{request, subprotocols};
use confab_tests::*;
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// `confab dev` in this process with its HTTP listener on a free port.
async fn start(env: &[(&str, &str)]) -> (Embedded, SocketAddr) {
    let http = format!("127.0.0.1:{}", free_port());
    let mut env = env.to_vec();
    env.push(("CONFAB_HTTP_LISTEN", &http));
    let server = Embedded::start_with(&env).await;
    let addr = server.http.expect("an HTTP listener");
    (server, addr)
}

/// Opens `/v1/connect` offering `protocols`.
async fn open(http: SocketAddr, protocols: &str) -> Socket {
    let (socket, response) = tokio_tungstenite::connect_async(request(http, protocols))
        .await
        .expect("the upgrade");
    assert_eq!(response.status(), 101);
    socket
}

/// A socket in `format` with `user`'s token.
async fn open_as(http: SocketAddr, format: Format, user: &str) -> Socket {
    open(
        http,
        &subprotocols(format.subprotocol(), Some(&token(user))),
    )
    .await
}

/// The close code and reason the socket ends with (other messages are
/// skipped).
async fn closed_with(socket: &mut Socket) -> (u16, String) {
    let wait = async {
        while let Some(msg) = socket.next().await {
            match msg {
                Ok(Message::Close(Some(frame))) => {
                    return (u16::from(frame.code), frame.reason.to_string())
                }
                Ok(Message::Close(None)) => return (1005, String::new()),
                Ok(_) => {}
                Err(e) => panic!("the socket failed before its close: {e}"),
            }
        }
        panic!("the socket ended without a close frame");
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .expect("a close in time")
}

/// The next server frame of a binary socket.
async fn next_frame(socket: &mut Socket) -> server_frame::Frame {
    let wait = async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Binary(data))) => {
                    return ServerFrame::decode(data.as_ref())
                        .expect("a server frame")
                        .frame
                        .expect("a frame")
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .expect("a frame in time")
}

fn ping(nonce: u64) -> Message {
    Message::Binary(
        ClientFrame {
            frame: Some(client_frame::Frame::Ping(Ping { nonce })),
        }
        .encode_to_vec()
        .into(),
    )
}

/// A socket read all along by a task of its own (so it answers every ping,
/// as a browser does): its frames, and a way to send.
struct Peer {
    out: futures::stream::SplitSink<Socket, Message>,
    frames: tokio::sync::mpsc::Receiver<server_frame::Frame>,
}

impl Peer {
    fn new(socket: Socket) -> Self {
        let (out, mut input) = socket.split();
        let (tx, frames) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            while let Some(Ok(msg)) = input.next().await {
                if let Message::Binary(data) = msg {
                    let frame = ServerFrame::decode(data.as_ref()).expect("a server frame");
                    if tx.send(frame.frame.expect("a frame")).await.is_err() {
                        return;
                    }
                }
            }
        });
        Self { out, frames }
    }

    async fn next(&mut self) -> server_frame::Frame {
        tokio::time::timeout(DEADLINE, self.frames.recv())
            .await
            .expect("a frame in time")
            .expect("the socket is open")
    }
}

/// bob, on a binary socket, still gets alice's messages: whatever else
/// happened was nobody else's business.
async fn undisturbed(server: &Embedded, http: SocketAddr, bob: &mut Peer) {
    let alice = server.user("alice").await;
    let conv = alice.group("still here", &["bob"]).await;
    let sent = alice
        .send(&conv.id, "after", "still works")
        .await
        .expect("send");
    loop {
        if let server_frame::Frame::Message(m) = bob.next().await {
            if m.conversation_id == conv.id && m.seq == sent.seq {
                assert_eq!(m.body, "still works");
                break;
            }
        }
    }
    // And a new socket opens as before.
    let mut again = open_as(http, Format::Proto, "dave").await;
    again.send(ping(9)).await.expect("send");
    assert!(matches!(next_frame(&mut again).await, server_frame::Frame::Pong(p) if p.nonce == 9));
}

/// bob's live socket, answered once (so it is registered for delivery).
async fn live_bob(http: SocketAddr) -> Peer {
    let mut bob = Peer::new(open_as(http, Format::Proto, "bob").await);
    bob.out.send(ping(1)).await.expect("send");
    assert!(matches!(bob.next().await, server_frame::Frame::Pong(p) if p.nonce == 1));
    bob
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_frames_are_the_protobuf_json_mapping_for_people_debugging() {
    let (server, http) = start(&[]).await;
    let alice = server.user("alice").await;
    let conv = alice.group("json", &["bob"]).await;
    let mut socket = open_as(http, Format::Json, "alice").await;
    let send = format!(
        r#"{{"send":{{"conversationId":"{}","clientMsgId":"j1","body":"hello in JSON"}}}}"#,
        conv.id
    );
    socket.send(Message::Text(send.into())).await.expect("send");
    let mut ack = None;
    let mut message = None;
    while ack.is_none() || message.is_none() {
        let msg = tokio::time::timeout(DEADLINE, socket.next())
            .await
            .expect("frames in time")
            .expect("open")
            .expect("a message");
        let Message::Text(text) = msg else {
            continue;
        };
        let frame = Format::Json
            .decode_server(text.as_bytes())
            .unwrap_or_else(|e| panic!("{text}: {e}"));
        match frame.frame {
            Some(server_frame::Frame::Ack(a)) => {
                assert!(text.contains(r#""clientMsgId":"j1""#), "{text}");
                ack = Some(a)
            }
            Some(server_frame::Frame::Message(m)) => message = Some(m),
            _ => {}
        }
    }
    let (ack, message) = (ack.expect("ack"), message.expect("message"));
    assert_eq!(ack.seq, 2, "{ack:?}");
    assert!(ack.error.is_none());
    assert_eq!((message.seq, message.body.as_str()), (2, "hello in JSON"));
    // A binary message on a JSON socket is the wrong kind.
    socket
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .expect("send");
    let (code, reason) = closed_with(&mut socket).await;
    assert_eq!(code, 1003, "{reason}");
    assert!(
        reason.contains("confab.v1.json") && reason.contains("text"),
        "{reason}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_oversized_frames_close_precisely_and_disturb_nobody() {
    let (server, http) = start(&[]).await;
    let mut bob = live_bob(http).await;

    // Not a ClientFrame: INVALID_ARGUMENT, as a gRPC stream's frame.
    let mut s = open_as(http, Format::Proto, "mallory").await;
    s.send(Message::Binary(vec![0xff, 0xff, 0xff].into()))
        .await
        .expect("send");
    let (code, reason) = closed_with(&mut s).await;
    assert_eq!(code, 4003, "{reason}");
    assert!(reason.contains("does not decode"), "{reason}");

    // JSON on a binary socket.
    let mut s = open_as(http, Format::Proto, "mallory").await;
    s.send(Message::Text("{}".into())).await.expect("send");
    let (code, reason) = closed_with(&mut s).await;
    assert_eq!(code, 1003, "{reason}");
    assert!(reason.contains("binary"), "{reason}");

    // Over CONFAB_MAX_MESSAGE_BYTES (1 MiB by default).
    let mut s = open_as(http, Format::Proto, "mallory").await;
    let big = vec![0u8; 1024 * 1024 + 1];
    // The gateway may close while the message is still on its way.
    let _ = s.send(Message::Binary(big.into())).await;
    let (code, reason) = closed_with(&mut s).await;
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.contains("CONFAB_MAX_MESSAGE_BYTES"), "{reason}");

    undisturbed(&server, http, &mut bob).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_formats_and_origins_are_checked_before_a_session_exists() {
    let (server, http) = start(&[]).await;
    let mut bob = live_bob(http).await;
    let cases = [
        (subprotocols("confab.v1.proto", None), 4016, "missing token"),
        (
            subprotocols("confab.v1.proto", Some("not.a.jwt")),
            4016,
            "malformed",
        ),
        (
            subprotocols(
                "confab.v1.proto",
                Some(
                    &confab_auth::Authenticator::new("another-secret-entirely")
                        .mint("alice", 60)
                        .expect("mint"),
                ),
            ),
            4016,
            "signature",
        ),
    ];
    for (protocols, want, says) in cases {
        let mut s = open(http, &protocols).await;
        // Frames on their way when the refusal comes do not lose its code.
        let _ = s.send(ping(1)).await;
        let _ = s.send(ping(2)).await;
        let (code, reason) = closed_with(&mut s).await;
        assert_eq!(code, want, "{protocols}: {reason}");
        assert!(reason.contains(says), "{protocols}: {reason}");
    }
    // No subprotocol at all: INVALID_ARGUMENT naming the formats.
    let (mut s, _) = tokio_tungstenite::connect_async(format!("ws://{http}/v1/connect"))
        .await
        .expect("the upgrade");
    let (code, reason) = closed_with(&mut s).await;
    assert_eq!(code, 4003, "{reason}");
    assert!(reason.contains("confab.v1.proto"), "{reason}");

    // A page of another origin is refused before the upgrade; the
    // listener's own origin is not.
    let mut req = request(
        http,
        &subprotocols("confab.v1.proto", Some(&token("alice"))),
    );
    req.headers_mut().insert(
        tokio_tungstenite::tungstenite::http::header::ORIGIN,
        "http://evil.example".parse().expect("origin"),
    );
    match tokio_tungstenite::connect_async(req).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            assert!(body.contains("CONFAB_ALLOWED_ORIGINS"), "{body}");
        }
        other => panic!("a foreign origin was not refused: {other:?}"),
    }
    let mut req = request(
        http,
        &subprotocols("confab.v1.proto", Some(&token("alice"))),
    );
    req.headers_mut().insert(
        tokio_tungstenite::tungstenite::http::header::ORIGIN,
        format!("http://{http}").parse().expect("origin"),
    );
    tokio_tungstenite::connect_async(req)
        .await
        .expect("the listener's own origin is allowed");

    undisturbed(&server, http, &mut bob).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origins_get_cors_and_others_get_403() {
    let (server, http) = start(&[("CONFAB_ALLOWED_ORIGINS", "https://chat.example.com")]).await;
    let preflight = |origin: &str| {
        format!(
            "OPTIONS /confab.v1.Chat/SendMessage HTTP/1.1\r\nHost: {http}\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: authorization,content-type,x-grpc-web\r\n\
             Connection: close\r\n\r\n"
        )
    };
    let ok = raw_http(http, &preflight("https://chat.example.com")).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let lower = ok.to_ascii_lowercase();
    assert!(
        lower.contains("access-control-allow-origin: https://chat.example.com"),
        "{ok}"
    );
    assert!(lower.contains("authorization"), "{ok}");
    let refused = raw_http(http, &preflight("https://evil.example")).await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    // Tokens are minted only with the public development secret: this
    // server has a real one.
    let (status, body) = confab_tests::http::get(http, "/v1/auth")
        .await
        .expect("GET");
    assert_eq!((status, body.as_str()), (200, r#"{"dev_tokens":false}"#));
    let minted = raw_http(
        http,
        &format!(
            "POST /v1/dev/token HTTP/1.1\r\nHost: {http}\r\nContent-Type: application/json\r\n\
             Content-Length: 19\r\nConnection: close\r\n\r\n{{\"user_id\":\"alice\"}}"
        ),
    )
    .await;
    assert!(minted.starts_with("HTTP/1.1 404"), "{minted}");
    assert!(!minted.contains("eyJ"), "no token: {minted}");
    server.stop().await;
}

/// A WebSocket session of `user` on a bare TCP connection: the handshake
/// made by hand, then nothing read (so no ping is answered) or written.
async fn dead_peer(http: SocketAddr, user: &str) -> TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(http).await.expect("connect");
    let request = format!(
        "GET /v1/connect HTTP/1.1\r\nHost: {http}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {}\r\n\r\n",
        subprotocols("confab.v1.proto", Some(&token(user)))
    );
    tcp.write_all(request.as_bytes()).await.expect("handshake");
    // The 101 answer, up to its blank line, one byte at a time so nothing
    // after it is taken.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte)
            .await
            .expect("the handshake's answer");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp
}

/// Everything the peer sends until it closes the connection.
async fn read_all(tcp: &mut TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut raw))
        .await
        .expect("the gateway closes the connection")
        .expect("read");
    raw
}

/// The code and reason of the close frame among the unmasked server frames
/// in `raw` (RFC 6455 section 5.2).
fn close_frame(mut raw: &[u8]) -> Option<(u16, String)> {
    while raw.len() >= 2 {
        let opcode = raw[0] & 0x0f;
        let (len, start) = match raw[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([raw[2], raw[3]])), 4),
            127 => return None,
            n => (usize::from(n), 2),
        };
        let payload = raw.get(start..start + len)?;
        if opcode == 0x8 && payload.len() >= 2 {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            return Some((code, String::from_utf8_lossy(&payload[2..]).into_owned()));
        }
        raw = &raw[start + len..];
    }
    None
}

/// Writes `request` as is and reads the whole answer.
async fn raw_http(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write the request");
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw))
        .await
        .expect("an answer in time")
        .expect("read the answer");
    String::from_utf8_lossy(&raw).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_answering_pings_is_closed_and_its_session_ends() {
    // One stream per user: the dead peer's slot must be freed for the next.
    let (server, http) = start(&[
        ("CONFAB_WS_PING_MS", "200"),
        ("CONFAB_MAX_STREAMS_PER_USER", "1"),
    ])
    .await;
    let mut bob = live_bob(http).await;
    // A peer that answers pings (tungstenite does as it reads) stays: bob
    // reads all along, through many ping intervals.
    // carol opens a session and then reads nothing, so answers no ping: a
    // bare TCP connection that makes the handshake by hand and stops.
    let mut dead = dead_peer(http, "carol").await;
    // While she holds her one slot, another session of hers is refused.
    let mut second = open_as(http, Format::Proto, "carol").await;
    let (code, reason) = closed_with(&mut second).await;
    assert_eq!(code, 4008, "{reason}");
    assert!(reason.contains("CONFAB_MAX_STREAMS_PER_USER"), "{reason}");
    // The gateway closes her within two intervals and a ping, which ends
    // her session and frees her slot: a new session of hers is admitted.
    let mut again = poll("carol's slot freed", DEADLINE, Duration::from_millis(50), || async {
        let mut s = open_as(http, Format::Proto, "carol").await;
        s.send(ping(3)).await.expect("send");
        match tokio::time::timeout(DEADLINE, s.next()).await {
            Ok(Some(Ok(Message::Binary(data)))) => {
                let frame = ServerFrame::decode(data.as_ref()).expect("a frame");
                assert!(matches!(frame.frame, Some(server_frame::Frame::Pong(ref p)) if p.nonce == 3));
                Ok(Some(s))
            }
            Ok(Some(Ok(Message::Close(Some(c))))) if u16::from(c.code) == 4008 => Ok(None),
            other => panic!("neither admitted nor refused: {other:?}"),
        }
    })
    .await
    .expect("carol's dead session ends");
    // What the gateway sent her: pings, then a close that says why.
    let sent = read_all(&mut dead).await;
    let close = close_frame(&sent).expect("a close frame after the pings");
    assert_eq!(close.0, 4004, "{}", close.1);
    assert!(close.1.contains("pings"), "{}", close.1);
    again.send(ping(4)).await.expect("send");
    assert!(matches!(next_frame(&mut again).await, server_frame::Frame::Pong(p) if p.nonce == 4));
    // bob, reading all along, was pinged and answered, and is still there.
    undisturbed(&server, http, &mut bob).await;
    // A send over the socket is acknowledged as on a gRPC stream.
    let alice = server.user("alice").await;
    let conv = alice.group("acks", &["bob"]).await;
    bob.out
        .send(Message::Binary(
            ClientFrame {
                frame: Some(client_frame::Frame::Send(SendFrame {
                    conversation_id: conv.id.clone(),
                    client_msg_id: "b1".into(),
                    body: "from a socket".into(),
                    reply_to_seq: 0,
                })),
            }
            .encode_to_vec()
            .into(),
        ))
        .await
        .expect("send");
    loop {
        if let server_frame::Frame::Ack(a) = bob.next().await {
            assert_eq!((a.client_msg_id.as_str(), a.seq), ("b1", 2), "{a:?}");
            break;
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_held_back_by_its_own_typing_flood_is_not_taken_for_dead() {
    // Two ping intervals (400 ms) are shorter than the pause a typing
    // flood earns (up to the end of its one-second window), during which
    // the session reads no frame, so the socket is not read either.
    let (server, http) = start(&[("CONFAB_WS_PING_MS", "200")]).await;
    let alice = server.user("alice").await;
    let conv = alice.group("typing", &["bob"]).await;
    let mut peer = Peer::new(open_as(http, Format::Proto, "alice").await);
    let typing = Message::Binary(
        ClientFrame {
            frame: Some(client_frame::Frame::Typing(confab_proto::v1::TypingFrame {
                conversation_id: conv.id.clone(),
                active: true,
            })),
        }
        .encode_to_vec()
        .into(),
    );
    for _ in 0..200 {
        peer.out.feed(typing.clone()).await.expect("send");
    }
    peer.out.send(ping(42)).await.expect("send");
    // The ping is answered once the pause is over: the session was not
    // closed for the pongs it could not read meanwhile.
    loop {
        match peer.next().await {
            server_frame::Frame::Pong(p) if p.nonce == 42 => break,
            _ => {}
        }
    }
    server.stop().await;
}
