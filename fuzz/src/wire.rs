//! Target `wire`: raw bytes as the body of a call, through the path a
//! server decodes a request on: tonic's framing and decompression (every
//! encoding Confab servers take) and Confab's request codec
//! (`confab_proto::codec::RequestCodec`), for every unary request type of
//! `confab.v1.Chat` and for `Connect`'s stream of `ClientFrame`s. What
//! comes out is answered as Confab answers it
//! (`confab_layers::decoding::refusal`).
//!
//! Asserted beyond "never panics": every call ends with OK (the bytes were
//! requests), or a refusal that is the client's error (INVALID_ARGUMENT,
//! RESOURCE_EXHAUSTED over the size limit, UNIMPLEMENTED for an encoding no
//! server takes); never INTERNAL or UNKNOWN, which blame the server.

use confab_layers::decoding::refusal;
use confab_proto::codec::RequestCodec;
use confab_proto::v1::*;
use http_body_util::{BodyExt, Full};
use prost::bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use tonic::codec::{CompressionEncoding, Streaming};
use tonic::server::{Grpc, StreamingService, UnaryService};
use tonic::{Code, Request, Response, Status};

/// The largest decoded message in these runs: small, so that inputs reach
/// the limit too.
pub const LIMIT: usize = 4096;

/// The `grpc-encoding` of a call, by the input's second byte.
const ENCODINGS: [Option<&str>; 5] = [None, Some("gzip"), Some("deflate"), Some("zstd"), Some("br")];

/// Answers every request with an empty message.
#[derive(Clone, Copy)]
struct Empty;

impl<U: Send + 'static> UnaryService<U> for Empty {
    type Response = ();
    type Future = Pin<Box<dyn Future<Output = Result<Response<()>, Status>> + Send>>;

    fn call(&mut self, _: Request<U>) -> Self::Future {
        Box::pin(async { Ok(Response::new(())) })
    }
}

/// Reads a stream to its end; ends it with the refusal of the first frame
/// that could not be taken in, as the gateway's session does.
#[derive(Clone, Copy)]
struct Drain;

type Out = Pin<Box<dyn tokio_stream::Stream<Item = Result<(), Status>> + Send>>;

impl StreamingService<ClientFrame> for Drain {
    type Response = ();
    type ResponseStream = Out;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Out>, Status>> + Send>>;

    fn call(&mut self, request: Request<Streaming<ClientFrame>>) -> Self::Future {
        Box::pin(async move {
            let mut inbound = request.into_inner();
            let end = loop {
                match inbound.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => break None,
                    Err(status) => break Some(refusal(&status, LIMIT).unwrap_or(status)),
                }
            };
            let out: Out = Box::pin(tokio_stream::iter(end.map(Err)));
            Ok(Response::new(out))
        })
    }
}

/// A server's `Grpc` for requests of type `U`, taking every encoding.
fn grpc<U: prost::Message + Default + Send + 'static>() -> Grpc<RequestCodec<(), U>> {
    let mut grpc = Grpc::new(RequestCodec::<(), U>::default())
        .apply_max_message_size_config(Some(LIMIT), None);
    for encoding in [
        CompressionEncoding::Gzip,
        CompressionEncoding::Deflate,
        CompressionEncoding::Zstd,
    ] {
        grpc = grpc.accept_compressed(encoding);
    }
    grpc
}

/// The status a server's answer carries, headers first (trailers-only).
async fn status_of(response: http::Response<tonic::body::Body>) -> Status {
    if let Some(status) = Status::from_header_map(response.headers()) {
        return status;
    }
    let collected = response
        .into_body()
        .collect()
        .await
        .expect("a server's body does not fail");
    collected
        .trailers()
        .and_then(Status::from_header_map)
        .expect("a status in the trailers")
}

async fn unary<U: prost::Message + Default + Send + 'static>(
    request: http::Request<Full<Bytes>>,
) -> Status {
    let response = grpc::<U>().unary(Empty, request).await;
    let status = status_of(response).await;
    // What `confab_layers::decoding::RequestDecoding` answers instead.
    refusal(&status, LIMIT).unwrap_or(status)
}

/// Runs one call: `data[0]` picks the method, `data[1]` the encoding, the
/// rest is the request body as sent.
pub fn wire(data: &[u8]) {
    let [method, encoding, body @ ..] = data else {
        return;
    };
    let encoding = ENCODINGS[usize::from(*encoding) % ENCODINGS.len()];
    let mut request = http::Request::post("/confab.v1.Chat/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(encoding) = encoding {
        request = request.header("grpc-encoding", encoding);
    }
    let request = request
        .body(Full::new(Bytes::copy_from_slice(body)))
        .expect("a request");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let status = runtime.block_on(async move {
        match method % 18 {
            0 => {
                let response = grpc::<ClientFrame>().streaming(Drain, request).await;
                status_of(response).await
            }
            1 => unary::<SendMessageRequest>(request).await,
            2 => unary::<CreateConversationRequest>(request).await,
            3 => unary::<AddMembersRequest>(request).await,
            4 => unary::<RemoveMemberRequest>(request).await,
            5 => unary::<SetRoleRequest>(request).await,
            6 => unary::<UpdateConversationRequest>(request).await,
            7 => unary::<ListConversationsRequest>(request).await,
            8 => unary::<GetHistoryRequest>(request).await,
            9 => unary::<MarkReadRequest>(request).await,
            10 => unary::<GetConversationRequest>(request).await,
            11 => unary::<SyncRequest>(request).await,
            12 => unary::<GetPresenceRequest>(request).await,
            13 => unary::<EditMessageRequest>(request).await,
            14 => unary::<DeleteMessageRequest>(request).await,
            15 => unary::<ReactRequest>(request).await,
            16 => unary::<GetEditHistoryRequest>(request).await,
            _ => unary::<SearchMessagesRequest>(request).await,
        }
    });
    match status.code() {
        Code::Ok | Code::InvalidArgument | Code::ResourceExhausted => {}
        Code::Unimplemented if encoding == Some("br") => {}
        other => panic!("{other:?} blames the server for what the client sent: {status:?}"),
    }
    assert!(
        status.code() == Code::Ok || !status.message().is_empty(),
        "a refusal says what to fix: {status:?}"
    );
}
