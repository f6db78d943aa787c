//! Bearer tokens: HS256 JWTs whose `sub` is the user id and whose `exp` is
//! required. The secret itself is never logged or echoed in an error.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};
use tonic::metadata::MetadataMap;
use tonic::Status;

/// The secret used in embedded mode when none is configured. Public, so
/// anybody can mint tokens: fine on a laptop, never in production.
pub const DEV_SECRET: &str = "confab-development-secret-do-not-use-in-production";

/// The longest user id accepted, in bytes.
pub const MAX_USER_ID_LEN: usize = 128;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// Checks and mints tokens with one shared secret.
#[derive(Clone)]
pub struct Authenticator {
    /// Verifies signatures.
    decoding: DecodingKey,
    /// Signs tokens for `confab token`.
    encoding: EncodingKey,
    /// HS256, `exp` required, no leeway.
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator { secret: <redacted> }")
    }
}

impl Authenticator {
    /// An authenticator for the HS256 `secret`.
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// A token for `user` valid for `ttl_secs` from now.
    pub fn mint(&self, user: &str, ttl_secs: u64) -> Result<String, String> {
        self.mint_expiring_at(user, now_secs() + ttl_secs)
    }

    /// A token for `user` that expires at `exp` (Unix seconds), which may
    /// be in the past (tests use that).
    pub fn mint_expiring_at(&self, user: &str, exp: u64) -> Result<String, String> {
        check_user_id(user).map_err(|s| s.message().to_string())?;
        let claims = Claims {
            sub: user.to_string(),
            exp,
            iat: Some(now_secs()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| format!("cannot sign token: {e}"))
    }

    /// The user id of a raw token, or UNAUTHENTICATED saying what is wrong.
    pub fn verify(&self, token: &str) -> Result<String, Status> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired: get a new one",
                    ErrorKind::InvalidSignature => "token signature is invalid",
                    ErrorKind::InvalidAlgorithm => "token must be signed with HS256",
                    ErrorKind::MissingRequiredClaim(c) if c == "exp" => {
                        "token has no exp claim: tokens must expire"
                    }
                    ErrorKind::MissingRequiredClaim(_) => "token has no sub claim",
                    _ => "token is malformed: expected a JWT",
                };
                Status::unauthenticated(why)
            })?;
        check_user_id(&data.claims.sub)
            .map_err(|s| Status::unauthenticated(format!("token sub: {}", s.message())))?;
        Ok(data.claims.sub)
    }

    /// The user id from `authorization: Bearer <token>` metadata.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<String, Status> {
        let value = metadata.get("authorization").ok_or_else(|| {
            Status::unauthenticated(
                "missing authorization metadata: send 'authorization: Bearer <token>'",
            )
        })?;
        let value = value
            .to_str()
            .map_err(|_| Status::unauthenticated("authorization metadata is not valid ASCII"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("authorization metadata must be 'Bearer <token>'")
            })?;
        self.verify(token.trim())
    }
}

/// Checks that a user id is non-empty, short and printable.
pub fn check_user_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("user id must not be empty"));
    }
    if id.len() > MAX_USER_ID_LEN {
        return Err(Status::invalid_argument(format!(
            "user id is {} bytes; at most {MAX_USER_ID_LEN} are allowed",
            id.len()
        )));
    }
    if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Status::invalid_argument(
            "user id must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn claims_token(secret: &str, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    }

    #[test]
    fn minted_token_round_trips() {
        let auth = Authenticator::new("s3cret");
        let token = auth.mint("alice", 60).expect("mint");
        assert_eq!(auth.verify(&token).ok().as_deref(), Some("alice"));
    }

    #[test]
    fn wrong_secret_expired_and_missing_exp_are_unauthenticated() {
        let auth = Authenticator::new("s3cret");
        let other = Authenticator::new("other").mint("alice", 60).expect("mint");
        let err = auth.verify(&other).expect_err("wrong secret");
        assert_eq!(err.code(), Code::Unauthenticated);
        assert!(err.message().contains("signature"), "{}", err.message());

        let expired = claims_token(
            "s3cret",
            serde_json::json!({"sub": "a", "exp": now_secs() - 10}),
        );
        let err = auth.verify(&expired).expect_err("expired");
        assert!(err.message().contains("expired"), "{}", err.message());

        let no_exp = claims_token("s3cret", serde_json::json!({"sub": "a"}));
        let err = auth.verify(&no_exp).expect_err("no exp");
        assert!(err.message().contains("exp"), "{}", err.message());

        let err = auth.verify("not-a-jwt").expect_err("garbage");
        assert_eq!(err.code(), Code::Unauthenticated);
        assert!(!err.message().contains("s3cret"));
    }

    #[test]
    fn metadata_must_be_bearer() {
        let auth = Authenticator::new("k");
        let mut md = MetadataMap::new();
        assert_eq!(
            auth.authenticate(&md).map_err(|e| e.code()),
            Err(Code::Unauthenticated)
        );
        md.insert("authorization", "Basic abc".parse().expect("ascii"));
        assert_eq!(
            auth.authenticate(&md).map_err(|e| e.code()),
            Err(Code::Unauthenticated)
        );
        let token = auth.mint("bob", 60).expect("mint");
        md.insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
        assert_eq!(auth.authenticate(&md).ok().as_deref(), Some("bob"));
    }

    #[test]
    fn user_ids_are_bounded() {
        assert!(check_user_id("alice").is_ok());
        assert!(check_user_id("").is_err());
        assert!(check_user_id("a b").is_err());
        assert!(check_user_id(&"x".repeat(129)).is_err());
    }
}
