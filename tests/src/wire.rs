//! gRPC calls made by hand, frame by frame: for what a generated client
//! never sends (bytes that do not decode, broken compression) and for
//! looking at what a server answered on the wire.

use ::http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use tonic::codegen::Bytes;
use tonic::transport::Channel;
use tower::ServiceExt;

/// One gRPC frame: the compressed flag, the length, the payload.
pub fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a frame under 4 GiB");
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(flag);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payloads of the frames in `body` (uncompressed ones).
pub fn payloads(body: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = body;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let end = (5 + len).min(rest.len());
        out.push(rest[5..end].to_vec());
        rest = &rest[end..];
    }
    out
}

/// What a server answered a hand-made call.
#[derive(Debug)]
pub struct Answer {
    /// The response headers.
    pub headers: HeaderMap,
    /// The status: from the headers (trailers-only) or the trailers.
    pub status: tonic::Status,
    /// The response body's bytes (its frames).
    pub body: Bytes,
}

/// Calls `path` on `addr` with `body` as the request's bytes, as `bearer`
/// (`Bearer …`), with `headers` besides (`grpc-encoding`,
/// `grpc-accept-encoding`, …); reads the whole answer.
pub async fn call(
    addr: SocketAddr,
    path: &str,
    bearer: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answer {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut request = Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", bearer);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(tonic::body::Body::new(Full::new(Bytes::from(body))))
        .expect("request");
    let response = channel.oneshot(request).await.expect("an answer");
    let headers = response.headers().clone();
    let collected = response
        .into_body()
        .collect()
        .await
        .expect("the answer's body");
    let trailers = collected.trailers().cloned();
    let status = tonic::Status::from_header_map(&headers)
        .or_else(|| trailers.as_ref().and_then(tonic::Status::from_header_map))
        .expect("a grpc-status in the headers or the trailers");
    Answer {
        headers,
        status,
        body: collected.to_bytes(),
    }
}
