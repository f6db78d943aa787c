//! A `Connect` session over the gateway's WebSocket (`/v1/connect`,
//! docs/browser.md), with the same [`crate::Session`] API as a gRPC stream:
//! client frames go out as binary protobuf messages, server frames come
//! back, and a close with code `4000 + c` becomes the gRPC status `c` the
//! session ended with. So every session test runs over either transport.

use crate::client::Inbound;
use confab_proto::v1::{ClientFrame, ServerFrame};
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use std::net::SocketAddr;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tonic::{Code, Status};

/// The client's TCP receive buffer.
const RECEIVE_BUFFER: u32 = 128 * 1024;

/// The subprotocols a client offers: `format`, and `token` if any.
pub fn subprotocols(format: &str, token: Option<&str>) -> String {
    match token {
        Some(t) => format!("{format}, confab.bearer.{t}"),
        None => format.to_string(),
    }
}

/// A WebSocket handshake request for `/v1/connect` on `http` offering
/// `protocols` (the `Sec-WebSocket-Protocol` value).
pub fn request(
    http: SocketAddr,
    protocols: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("ws://{http}/v1/connect")
        .into_client_request()
        .expect("a WebSocket request");
    req.headers_mut().insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        protocols.parse().expect("subprotocols are a header value"),
    );
    req
}

/// The status a close frame stands for: `4000 + c` is gRPC code `c`; any
/// other close is UNKNOWN naming the code.
pub fn close_status(code: u16, reason: &str) -> Status {
    match code.checked_sub(4000) {
        Some(c) if c <= 16 => Status::new(Code::from_i32(i32::from(c)), reason),
        _ => Status::unknown(format!("WebSocket closed with {code}: {reason}")),
    }
}

/// Opens a session as the holder of `token` over the WebSocket on `http`,
/// in the binary protobuf format: the frames to send, and the server's
/// frames, ending with the status it closed with.
pub async fn open(
    http: SocketAddr,
    token: &str,
) -> Result<(mpsc::Sender<ClientFrame>, Inbound), Status> {
    // A fixed receive buffer, as a browser's is bounded: else Linux grows
    // it to tens of MiB on loopback and no reader is ever slow.
    let tcp = tokio::net::TcpSocket::new_v4()?;
    tcp.set_recv_buffer_size(RECEIVE_BUFFER)?;
    let tcp = tcp
        .connect(http)
        .await
        .map_err(|e| Status::unavailable(format!("WebSocket connect to {http}: {e}")))?;
    let (socket, _) = tokio_tungstenite::client_async(
        request(http, &subprotocols("confab.v1.proto", Some(token))),
        tcp,
    )
    .await
    .map_err(|e| Status::unavailable(format!("WebSocket handshake: {e}")))?;
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<ClientFrame>(64);
    tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if sink
                .send(Message::Binary(frame.encode_to_vec().into()))
                .await
                .is_err()
            {
                return;
            }
        }
        // The client is done: close, as a gRPC client ends its stream.
        let _ = sink.close().await;
    });
    let inbound = async_stream(
        move |out: mpsc::Sender<Result<ServerFrame, Status>>| async move {
            while let Some(msg) = stream.next().await {
                let item = match msg {
                    Ok(Message::Binary(data)) => ServerFrame::decode(data.as_ref()).map_err(|e| {
                        Status::internal(format!("the gateway sent a bad frame: {e}"))
                    }),
                    Ok(Message::Close(frame)) => {
                        let (code, reason) = frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((u16::from(CloseCode::Status), String::new()));
                        // A normal close, or one without a code (the
                        // answer to the client's own close): the end.
                        if code == u16::from(CloseCode::Normal)
                            || code == u16::from(CloseCode::Status)
                        {
                            return;
                        }
                        let _ = out.send(Err(close_status(code, &reason))).await;
                        return;
                    }
                    Ok(Message::Text(t)) => Err(Status::internal(format!(
                        "the gateway sent text on a binary session: {t}"
                    ))),
                    Ok(_) => continue,
                    Err(e) => Err(Status::unavailable(format!("WebSocket failed: {e}"))),
                };
                let end = item.is_err();
                if out.send(item).await.is_err() || end {
                    return;
                }
            }
        },
    );
    Ok((tx, inbound))
}

/// A stream of what `produce` sends into its channel.
fn async_stream<F, Fut>(produce: F) -> Inbound
where
    F: FnOnce(mpsc::Sender<Result<ServerFrame, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    // Few frames read ahead: what a reader has not taken stays in TCP.
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(produce(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
