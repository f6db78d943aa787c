//! Opaque tokens (a `ListConversations` page token, a `Sync` cursor):
//! base64url of an internal protobuf message, so clients pass them back
//! without reading them, and anything else comes back as INVALID_ARGUMENT.

use crate::error::ChatError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use confab_proto::prost::Message;

/// `message` as a token.
pub fn seal(message: &impl Message) -> String {
    URL_SAFE_NO_PAD.encode(message.encode_to_vec())
}

/// The message in `token`, or `not_ours()` for a token longer than
/// `max_len` or not one [`seal`] made.
pub fn open<M: Message + Default>(
    token: &str,
    max_len: usize,
    not_ours: impl Fn() -> ChatError,
) -> Result<M, ChatError> {
    if token.len() > max_len {
        return Err(not_ours());
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| not_ours())?;
    M::decode(bytes.as_slice()).map_err(|_| not_ours())
}
