//! The largest decoded message a server accepts, refused as
//! RESOURCE_EXHAUSTED naming the limit and its variable.

use crate::{Answer, Around, Inner};

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

/// Answers a request whose message is over the decoding limit with
/// RESOURCE_EXHAUSTED naming the limit, where tonic 0.14 answers
/// OUT_OF_RANGE ("decoded message length too large").
#[derive(Debug, Clone)]
pub struct MessageLimit {
    configured: usize,
}

impl MessageLimit {
    /// `configured` is `CONFAB_MAX_MESSAGE_BYTES` (named in the answer when
    /// it is the limit that was hit).
    pub fn new(configured: usize) -> Self {
        Self { configured }
    }
}

impl Around for MessageLimit {
    fn around<S: Inner<B>, B>(&self, inner: &mut S, req: http::Request<B>) -> Answer<S::Error> {
        let call = inner.call(req);
        let configured = self.configured;
        Box::pin(async move {
            let response = call.await?;
            // A request that could not be decoded is answered at once, with
            // the status in the headers (trailers-only).
            match tonic::Status::from_header_map(response.headers()) {
                Some(status) if is_too_large(&status) => {
                    Ok(message_too_large(status.message(), configured).into_http())
                }
                _ => Ok(response),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
