//! Requests a server could not take in: what they are answered, how they
//! are logged. One rule for unary calls ([`RequestDecoding`], a layer in
//! front of every server) and for stream frames (the gateway's session
//! calls [`refusal`] and [`log_refusal`]):
//! - over the largest decoded message: RESOURCE_EXHAUSTED naming the limit
//!   and its variable (tonic says OUT_OF_RANGE);
//! - a message that does not decode as protobuf: INVALID_ARGUMENT naming
//!   the field (`confab_proto::codec::RequestCodec`; tonic says INTERNAL);
//! - a frame whose compression is broken: INVALID_ARGUMENT (tonic says
//!   INTERNAL).
//!
//! - a body that ends inside a frame, or a unary call with no frame at
//!   all: INVALID_ARGUMENT (tonic says INTERNAL).
//!
//! tonic words some of these alike whichever side reads the frame, so a
//! server must not answer its own clients' failures in those words: the
//! gateway says "history failed: …" for history's INTERNAL answers
//! (`confab_history_client`), and the gateway's session applies
//! [`refusal`] only to what it read from its own client.
//!
//! Each is the client's mistake, counted under its own code, and logged at
//! WARN with the method and the peer (never the payload), at most one line
//! a second, with the number of lines left out since the last.

use crate::{Answer, Around, Inner};
use confab_core::log_budget::LogBudget;
use std::net::SocketAddr;

/// The variable setting the largest decoded message a server accepts.
pub const MAX_MESSAGE_BYTES_VAR: &str = confab_core::vars::MAX_MESSAGE_BYTES;

/// Whether tonic refused a message over `max_decoding_message_size`: the
/// only OUT_OF_RANGE tonic makes up, and a code no Confab service answers,
/// so the code alone decides (`tests/tests/tonic_contract.rs` pins it, so a
/// tonic upgrade that changes it fails a test instead of a status code).
pub fn is_too_large(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::OutOfRange
}

/// The number after `label` in `text`.
fn number_after(text: &str, label: &str) -> Option<usize> {
    let rest = &text[text.find(label)? + label.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The RESOURCE_EXHAUSTED that replaces tonic's answer to a request over the
/// largest decoded message, naming the limit (and `CONFAB_MAX_MESSAGE_BYTES`
/// when it is the configured one, `configured`). The sizes are read from
/// tonic's wording ("… found N bytes, the limit is: M bytes") for the text
/// only; if it changes, the answer still says what was refused.
pub fn message_too_large(tonic_message: &str, configured: usize) -> tonic::Status {
    let found = number_after(tonic_message, "found");
    let limit = number_after(tonic_message, "the limit is:");
    let message = match (found, limit) {
        (Some(found), Some(limit)) if limit == configured => format!(
            "message size limit: this request is {found} bytes, at most {limit} are accepted \
             ({MAX_MESSAGE_BYTES_VAR}={limit}); send a smaller request"
        ),
        (Some(found), Some(limit)) => format!(
            "message size limit: this request is {found} bytes, at most {limit} are accepted; \
             send a smaller request"
        ),
        _ => format!("message size limit: {tonic_message}"),
    };
    tonic::Status::resource_exhausted(message)
}

/// How tonic words a failure to take in a request's frame (decompressing
/// it, or a compression flag that is neither 0 nor 1); the same failure on
/// a client's side ends "while receiving response …" instead.
const TONIC_REQUEST_FRAME: &str = "while sending request";

/// How tonic words a body that ends inside a frame (its length prefix
/// promised more).
const TONIC_BODY_ENDED: &str = "Unexpected EOF decoding stream.";

/// How tonic words a unary call whose body holds no frame.
const TONIC_NO_MESSAGE: &str = "Missing request message.";

/// How tonic words a frame flagged compressed in a call that named no
/// compression (INTERNAL, as the gRPC compression spec asks; Confab answers
/// INVALID_ARGUMENT like any other frame a client got wrong, so that it
/// counts as the client's error and is not retried).
const TONIC_FLAG_WITHOUT_ENCODING: &str =
    "protocol error: received message with compressed-flag but no grpc-encoding";

/// What a server answers, instead of `status`, for a request (or stream
/// frame) it could not take in; `None` when `status` is not about the
/// request's bytes. `configured` is `CONFAB_MAX_MESSAGE_BYTES`.
pub fn refusal(status: &tonic::Status, configured: usize) -> Option<tonic::Status> {
    use tonic::Code;
    match status.code() {
        _ if is_too_large(status) => Some(message_too_large(status.message(), configured)),
        // RESOURCE_EXHAUSTED from tonic: a compressed frame that inflates
        // past the limit.
        Code::ResourceExhausted if status.message().starts_with("Error decompressing") => {
            Some(tonic::Status::resource_exhausted(format!(
                "message size limit: {}; send a smaller request",
                status.message()
            )))
        }
        Code::InvalidArgument
            if status
                .message()
                .starts_with(confab_proto::codec::UNDECODABLE) =>
        {
            Some(status.clone())
        }
        Code::Internal if status.message() == TONIC_NO_MESSAGE => {
            Some(tonic::Status::invalid_argument(
                "the request has no message: a unary call sends one frame, its request message",
            ))
        }
        Code::Internal if status.message() == TONIC_BODY_ENDED => {
            Some(tonic::Status::invalid_argument(
                "the request's frame could not be read: the body ended inside a message \
                 (its length prefix promised more bytes); send whole frames",
            ))
        }
        Code::Internal
            if status.message().ends_with(TONIC_REQUEST_FRAME)
                || status.message().starts_with(TONIC_FLAG_WITHOUT_ENCODING) =>
        {
            Some(tonic::Status::invalid_argument(format!(
                "the request's frame could not be read: {}; a frame flagged 1 must be compressed \
                 with the call's grpc-encoding (gzip, deflate or zstd)",
                status
                    .message()
                    .trim_end_matches(TONIC_REQUEST_FRAME)
                    .trim_end_matches([',', ' '])
            )))
        }
        _ => None,
    }
}

/// Logs a refused request once, at WARN: the method, the peer and the
/// answer (never the payload), at most one line a second; the lines left
/// out meanwhile are counted in the next.
pub fn log_refusal(method: &str, peer: Option<SocketAddr>, answer: &tonic::Status) {
    static BUDGET: LogBudget = LogBudget::new();
    let Some(left_out) = BUDGET.take() else {
        return;
    };
    let peer = peer.map(|p| p.to_string());
    tracing::warn!(
        method,
        peer = peer.as_deref().unwrap_or("unknown"),
        code = confab_core::metrics::code_name(answer.code()),
        reason = answer.message(),
        refused_unlogged = left_out,
        "refused a request the server could not take in"
    );
}

/// Answers a unary request that tonic could not take in with its
/// [`refusal`], and logs it ([`log_refusal`]). Such a request is answered
/// at once, before any handler, with the status in the headers
/// (trailers-only); stream frames are the stream handler's (the gateway's
/// session).
#[derive(Debug, Clone)]
pub struct RequestDecoding {
    configured: usize,
}

impl RequestDecoding {
    /// `configured` is `CONFAB_MAX_MESSAGE_BYTES` (named in the answer when
    /// it is the limit that was hit).
    pub fn new(configured: usize) -> Self {
        Self { configured }
    }
}

impl Around for RequestDecoding {
    fn around<S: Inner<B>, B>(&self, inner: &mut S, req: http::Request<B>) -> Answer<S::Error> {
        // A refcount, not a copy: needed only for a refusal's log line.
        let uri = req.uri().clone();
        let peer = crate::peer_of(&req);
        let call = inner.call(req);
        let configured = self.configured;
        Box::pin(async move {
            let response = call.await?;
            let refused = tonic::Status::from_header_map(response.headers())
                .and_then(|status| refusal(&status, configured));
            match refused {
                Some(answer) => {
                    log_refusal(uri.path(), peer, &answer);
                    Ok(answer.into_http())
                }
                None => Ok(response),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_to_take_in_a_request_are_refusals() {
        let limit = 1024;
        let undecodable = confab_proto::codec::undecodable(
            <confab_proto::v1::SendMessageRequest as prost::Message>::decode(&[0x0a, 0x05][..])
                .expect_err("truncated"),
        );
        let kept = refusal(&undecodable, limit).expect("a refusal");
        assert_eq!(kept.code(), tonic::Code::InvalidArgument);
        assert!(kept.message().contains("SendMessageRequest"), "{kept:?}");
        let inflated = tonic::Status::internal(
            "Error decompressing: corrupt deflate stream, while sending request",
        );
        let answer = refusal(&inflated, limit).expect("a refusal");
        assert_eq!(answer.code(), tonic::Code::InvalidArgument);
        assert!(
            answer
                .message()
                .starts_with(
                    "the request's frame could not be read: Error decompressing: corrupt deflate stream;"
                ),
            "{answer:?}"
        );
        for tonic_words in [TONIC_BODY_ENDED, TONIC_NO_MESSAGE] {
            let answer = refusal(&tonic::Status::internal(tonic_words), limit).expect("a refusal");
            assert_eq!(answer.code(), tonic::Code::InvalidArgument);
        }
        // The same failure on a client's side, a handler's own statuses:
        // not the request's bytes.
        for other in [
            tonic::Status::internal(format!("history failed: {TONIC_BODY_ENDED}")),
            tonic::Status::internal(
                "Error decompressing: corrupt deflate stream, while receiving response with status: 200 OK",
            ),
            tonic::Status::internal("failed to decode Protobuf message: x"),
            tonic::Status::invalid_argument("body: empty"),
            tonic::Status::unavailable("history is unavailable"),
        ] {
            assert!(refusal(&other, limit).is_none(), "{other:?}");
        }
    }

    #[test]
    fn tonics_too_large_becomes_resource_exhausted_naming_the_limit() {
        let tonic = "Error, decoded message length too large: found 66615 bytes, \
                     the limit is: 66560 bytes";
        let status = message_too_large(tonic, 66560);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "message size limit: this request is 66615 bytes, at most 66560 are accepted \
             (CONFAB_MAX_MESSAGE_BYTES=66560); send a smaller request"
        );
        let other = message_too_large(tonic, 1024);
        assert!(!other.message().contains("CONFAB_MAX_MESSAGE_BYTES"));
        assert!(other.message().contains("at most 66560"));
    }
}
