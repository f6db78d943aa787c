//! Bytes that do not decode, and compressed calls: what a client that
//! sends them is answered, what the server logs, and that nobody else's
//! messages notice. Requests are made by hand (`confab_tests::wire`) where
//! a generated client would never send them.

use confab_proto::prost::Message as _;
use confab_proto::v1::chat_client::ChatClient;
use confab_proto::v1::*;
use confab_tests::client::token;
use confab_tests::wire::{self, frame, payloads};
use confab_tests::Embedded;
use std::io::Write;
use std::sync::{Arc, Mutex};
use tonic::codec::CompressionEncoding;
use tonic::Code;

/// What the server logs while the returned guard lives, on this thread
/// (these tests run the server on the test's own thread).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || logs.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("logs")).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Marks a payload, to show it never reaches the log.
const MARKER: &str = "PAYLOAD-MARKER";

/// `SendMessageRequest` bytes whose body is not UTF-8.
fn send_with_bad_body(conv: &str) -> Vec<u8> {
    let mut bytes = SendMessageRequest {
        conversation_id: conv.into(),
        client_msg_id: MARKER.into(),
        body: "BODY".into(),
        reply_to_seq: 0,
    }
    .encode_to_vec();
    let at = bytes
        .windows(4)
        .position(|w| w == b"BODY")
        .expect("the body");
    bytes[at..at + 4].copy_from_slice(&[0xff, 0xfe, 0xfd, 0xfc]);
    bytes
}

fn bearer(user: &str) -> String {
    format!("Bearer {}", token(user))
}

#[tokio::test]
async fn a_unary_request_that_does_not_decode_is_invalid_argument_naming_the_field() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let server = Embedded::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let group = alice.group("decode", &["bob"]).await.id;
    let mut live = bob.live().await;

    let send = "/confab.v1.Chat/SendMessage";
    let bad_utf8 = wire::call(
        server.addr,
        send,
        &bearer("alice"),
        &[],
        frame(0, &send_with_bad_body(&group)),
    )
    .await;
    assert_eq!(
        bad_utf8.status.code(),
        Code::InvalidArgument,
        "{bad_utf8:?}"
    );
    let message = bad_utf8.status.message();
    assert!(
        message.starts_with("the request does not decode")
            && message.contains("SendMessageRequest.body")
            && message.contains("UTF-8"),
        "names the field and what is wrong with it: {message}"
    );
    // A truncated message: its last field cut short.
    let whole = SendMessageRequest {
        conversation_id: group.clone(),
        client_msg_id: "cut".into(),
        body: "cut short".into(),
        reply_to_seq: 0,
    }
    .encode_to_vec();
    let truncated = wire::call(
        server.addr,
        send,
        &bearer("alice"),
        &[],
        frame(0, &whole[..whole.len() - 3]),
    )
    .await;
    assert_eq!(
        truncated.status.code(),
        Code::InvalidArgument,
        "{truncated:?}"
    );
    assert!(
        truncated.status.message().contains("SendMessageRequest"),
        "{truncated:?}"
    );

    // Neither was stored; alice's next send and bob's stream go on.
    let sent = alice.send(&group, "after", "fine").await.expect("a send");
    let (messages, _) = live
        .messages_until(&group, sent.seq)
        .await
        .expect("bob's stream delivers");
    assert_eq!(
        messages.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        ["fine"],
        "nothing but the good send reached bob"
    );

    // Logged at WARN with the method and the peer, never the payload.
    let text = logs.text();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("refused")).collect();
    assert!(
        !lines.is_empty() && lines.len() <= 2,
        "one line per refusal at most: {text}"
    );
    for line in &lines {
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains(send), "names the method: {line}");
        assert!(line.contains("peer=\"127.0.0.1:"), "names the peer: {line}");
        assert!(line.contains("INVALID_ARGUMENT"), "{line}");
    }
    assert!(!text.contains(MARKER), "no payload in the log: {text}");
    server.stop().await;
}

#[tokio::test]
async fn a_stream_frame_that_does_not_decode_ends_the_stream_with_invalid_argument() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let server = Embedded::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let group = alice.group("decode", &["bob"]).await.id;
    let mut live = bob.live().await;

    // A ping, answered; then a frame that does not decode.
    let ping = ClientFrame {
        frame: Some(client_frame::Frame::Ping(Ping { nonce: 7 })),
    }
    .encode_to_vec();
    let mut bad = ClientFrame {
        frame: Some(client_frame::Frame::Send(SendFrame {
            conversation_id: group.clone(),
            client_msg_id: MARKER.into(),
            body: "BODY".into(),
            ..SendFrame::default()
        })),
    }
    .encode_to_vec();
    let at = bad.windows(4).position(|w| w == b"BODY").expect("body");
    bad[at..at + 4].copy_from_slice(&[0xc3, 0x28, 0xa0, 0xa1]);
    let mut body = frame(0, &ping);
    body.extend(frame(0, &bad));
    let answer = wire::call(
        server.addr,
        "/confab.v1.Chat/Connect",
        &bearer("alice"),
        &[],
        body,
    )
    .await;
    assert_eq!(answer.status.code(), Code::InvalidArgument, "{answer:?}");
    assert!(
        answer.status.message().contains("SendFrame.body"),
        "{answer:?}"
    );
    let frames: Vec<ServerFrame> = payloads(&answer.body)
        .iter()
        .map(|p| ServerFrame::decode(p.as_slice()).expect("a server frame"))
        .collect();
    assert!(
        frames
            .iter()
            .any(|f| matches!(&f.frame, Some(server_frame::Frame::Pong(p)) if p.nonce == 7)),
        "the ping before it was answered: {frames:?}"
    );
    assert!(
        !frames
            .iter()
            .any(|f| matches!(f.frame, Some(server_frame::Frame::Ack(_)))),
        "nothing acked: {frames:?}"
    );

    // Bob's stream and alice's calls go on.
    let sent = alice.send(&group, "after", "fine").await.expect("a send");
    let (messages, _) = live
        .messages_until(&group, sent.seq)
        .await
        .expect("bob's stream delivers");
    assert_eq!(messages.len(), 1, "{messages:?}");
    let text = logs.text();
    assert!(
        text.lines().any(|l| l.contains("refused")
            && l.contains("/confab.v1.Chat/Connect")
            && l.contains("peer=\"127.0.0.1:")),
        "{text}"
    );
    assert!(!text.contains(MARKER), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn broken_frames_are_invalid_argument() {
    let server = Embedded::start().await;
    let alice = server.user("alice").await;
    let group = alice.group("frames", &[]).await.id;
    let request = SendMessageRequest {
        conversation_id: group.clone(),
        client_msg_id: "x".into(),
        body: "hello".into(),
        reply_to_seq: 0,
    }
    .encode_to_vec();
    let send = "/confab.v1.Chat/SendMessage";
    // Flagged compressed, but not gzip.
    let garbage = wire::call(
        server.addr,
        send,
        &bearer("alice"),
        &[("grpc-encoding", "gzip")],
        frame(1, &request),
    )
    .await;
    // Flagged compressed in a call that names no compression.
    let unnamed = wire::call(server.addr, send, &bearer("alice"), &[], frame(1, &request)).await;
    // A body that ends inside its frame.
    let whole = frame(0, &request);
    let cut = wire::call(
        server.addr,
        send,
        &bearer("alice"),
        &[],
        whole[..whole.len() - 2].to_vec(),
    )
    .await;
    // No frame at all.
    let empty = wire::call(server.addr, send, &bearer("alice"), &[], Vec::new()).await;
    for answer in [garbage, unnamed, cut, empty] {
        assert_eq!(answer.status.code(), Code::InvalidArgument, "{answer:?}");
        assert!(
            answer
                .status
                .message()
                .starts_with("the request's frame could not be read")
                || answer
                    .status
                    .message()
                    .starts_with("the request has no message"),
            "{answer:?}"
        );
    }
    // An encoding no server takes: UNIMPLEMENTED, saying which.
    let snappy = wire::call(
        server.addr,
        send,
        &bearer("alice"),
        &[("grpc-encoding", "snappy")],
        frame(1, &request),
    )
    .await;
    assert_eq!(snappy.status.code(), Code::Unimplemented, "{snappy:?}");
    assert!(snappy.status.message().contains("snappy"), "{snappy:?}");
    // Nothing was stored.
    assert!(alice
        .all_messages(&group)
        .await
        .expect("history")
        .iter()
        .all(|m| m.body != "hello"));
    server.stop().await;
}

#[tokio::test]
async fn compressed_requests_are_taken_and_large_answers_compressed() {
    let server = Embedded::start().await;
    let alice = server.user("alice").await;
    let group = alice.group("compressed", &[]).await.id;
    for (n, encoding) in [
        CompressionEncoding::Gzip,
        CompressionEncoding::Deflate,
        CompressionEncoding::Zstd,
    ]
    .into_iter()
    .enumerate()
    {
        // A generated client that compresses everything it sends.
        let mut client = ChatClient::new(
            tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
                .expect("uri")
                .connect()
                .await
                .expect("connect"),
        )
        .send_compressed(encoding)
        .accept_compressed(encoding);
        for i in 0..10 {
            let sent = client
                .send_message(alice.req(SendMessageRequest {
                    conversation_id: group.clone(),
                    client_msg_id: format!("{encoding}-{i}"),
                    body: format!(
                        "message {i} sent {encoding}-compressed, {}",
                        "long ".repeat(20)
                    ),
                    reply_to_seq: 0,
                }))
                .await
                .expect("a compressed send");
            assert_eq!(
                sent.into_inner().message.expect("the message").seq,
                (n * 10 + i + 2) as u64,
                "after the conversation's creation"
            );
        }
        let page = client
            .get_history(alice.req(GetHistoryRequest {
                conversation_id: group.clone(),
                limit: 100,
                ..GetHistoryRequest::default()
            }))
            .await
            .expect("a page")
            .into_inner();
        assert_eq!(page.messages.len(), n * 10 + 11, "every message so far");
    }

    // On the wire: a page over the threshold is answered compressed in the
    // encoding the client accepts; a small answer is not.
    let page_request = GetHistoryRequest {
        conversation_id: group.clone(),
        limit: 100,
        ..GetHistoryRequest::default()
    }
    .encode_to_vec();
    let large = wire::call(
        server.addr,
        "/confab.v1.Chat/GetHistory",
        &bearer("alice"),
        &[("grpc-accept-encoding", "zstd,gzip")],
        frame(0, &page_request),
    )
    .await;
    assert_eq!(large.status.code(), Code::Ok, "{large:?}");
    assert_eq!(
        large.headers.get("grpc-encoding").map(|v| v.as_bytes()),
        Some(&b"zstd"[..])
    );
    assert_eq!(
        large.body.first(),
        Some(&1),
        "the frame is flagged compressed"
    );
    let compressed_len = large.body.len();
    let plain = wire::call(
        server.addr,
        "/confab.v1.Chat/GetHistory",
        &bearer("alice"),
        &[],
        frame(0, &page_request),
    )
    .await;
    assert_eq!(plain.body.first(), Some(&0));
    assert!(
        compressed_len * 3 < plain.body.len(),
        "compressed {compressed_len} bytes, plain {}",
        plain.body.len()
    );
    let small = wire::call(
        server.addr,
        "/confab.v1.Chat/ListConversations",
        &bearer("alice"),
        &[("grpc-accept-encoding", "gzip")],
        frame(0, &ListConversationsRequest::default().encode_to_vec()),
    )
    .await;
    assert_eq!(small.status.code(), Code::Ok, "{small:?}");
    assert_eq!(
        small.body.first(),
        Some(&0),
        "a small answer goes uncompressed"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_stream_takes_compressed_frames() {
    let server = Embedded::start().await;
    let alice = server.user("alice").await;
    let group = alice.group("stream", &[]).await.id;
    let mut client = ChatClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect"),
    )
    .send_compressed(CompressionEncoding::Gzip)
    .accept_compressed(CompressionEncoding::Gzip);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(ClientFrame {
        frame: Some(client_frame::Frame::Send(SendFrame {
            conversation_id: group.clone(),
            client_msg_id: "s1".into(),
            body: "over a compressed stream".into(),
            ..SendFrame::default()
        })),
    })
    .await
    .expect("queued");
    let mut inbound = client
        .connect(alice.req(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await
        .expect("a stream")
        .into_inner();
    let ack = loop {
        let frame = tokio::time::timeout(confab_tests::DEADLINE, inbound.message())
            .await
            .expect("a frame in time")
            .expect("the stream goes on")
            .expect("a frame");
        if let Some(server_frame::Frame::Ack(ack)) = frame.frame {
            break ack;
        }
    };
    assert_eq!(ack.client_msg_id, "s1");
    assert!(ack.error.is_none(), "{ack:?}");
    drop(tx);
    server.stop().await;
}
