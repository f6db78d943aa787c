//! One small table of Confab's error kinds, each with its gRPC code. Errors
//! cross process boundaries as `confab.v1.Error` and become a `tonic::Status`
//! at the edge, keeping the message that says what to fix.

use confab_proto::v1 as pb;
use tonic::{Code, Status};

/// Why a request could not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    /// The request itself is wrong; the message says how.
    #[error("{0}")]
    InvalidArgument(String),
    /// The conversation (or member) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The caller is not allowed to do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// A limit was hit.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The request is well formed but the state it applies to does not
    /// allow it (a message that was deleted).
    #[error("{0}")]
    FailedPrecondition(String),
    /// What the request would create exists (a reaction made already, a
    /// client_msg_id used for another kind of write).
    #[error("{0}")]
    AlreadyExists(String),
    /// A dependency is down or the outcome is unknown; retrying is safe.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected state; details are in the server log.
    #[error("{0}")]
    Internal(String),
}

impl ChatError {
    /// The gRPC code of this kind of error.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
        }
    }

    /// The wire form carried in records and ack frames.
    pub fn to_proto(&self) -> pb::Error {
        pb::Error {
            code: self.code() as i32,
            message: self.to_string(),
        }
    }

    /// Rebuilds an error from its wire form.
    pub fn from_proto(e: &pb::Error) -> Self {
        let m = e.message.clone();
        match Code::from_i32(e.code) {
            Code::InvalidArgument => Self::InvalidArgument(m),
            Code::NotFound => Self::NotFound(m),
            Code::PermissionDenied => Self::PermissionDenied(m),
            Code::ResourceExhausted => Self::ResourceExhausted(m),
            Code::FailedPrecondition => Self::FailedPrecondition(m),
            Code::AlreadyExists => Self::AlreadyExists(m),
            Code::Unavailable => Self::Unavailable(m),
            _ => Self::Internal(m),
        }
    }

    /// Shorthand for the most common refusal.
    pub fn not_member(conversation_id: &str) -> Self {
        Self::PermissionDenied(format!(
            "you are not a member of conversation {conversation_id}"
        ))
    }

    /// Shorthand for an unknown conversation.
    pub fn no_conversation(conversation_id: &str) -> Self {
        Self::NotFound(format!("conversation {conversation_id} does not exist"))
    }
}

impl From<ChatError> for Status {
    fn from(e: ChatError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_round_trips_code_and_message() {
        for e in [
            ChatError::InvalidArgument("a".into()),
            ChatError::NotFound("b".into()),
            ChatError::PermissionDenied("c".into()),
            ChatError::ResourceExhausted("d".into()),
            ChatError::Unavailable("e".into()),
            ChatError::Internal("f".into()),
        ] {
            assert_eq!(ChatError::from_proto(&e.to_proto()), e);
            let status = Status::from(e.clone());
            assert_eq!(status.code(), e.code());
            assert_eq!(status.message(), e.to_string());
        }
    }
}
