//! Minting: HS256 tokens signed with the configured secret, carrying the
//! configured issuer and audience (what `confab token` and embedded mode
//! use).

use crate::authenticator::Authenticator;
use crate::{check_user_id, now_secs};
use jsonwebtoken::{Algorithm, Header};
use serde::Serialize;

#[derive(Debug, Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

impl Authenticator {
    /// A token for `user` valid for `ttl_secs` from now.
    pub fn mint(&self, user: &str, ttl_secs: u64) -> Result<String, String> {
        self.mint_expiring_at(user, now_secs() + ttl_secs)
    }

    /// A token for `user` that expires at `exp` (Unix seconds), which may
    /// be in the past (tests use that). HS256 only; it carries the
    /// configured issuer and audience.
    pub fn mint_expiring_at(&self, user: &str, exp: u64) -> Result<String, String> {
        check_user_id(user).map_err(|s| s.message().to_string())?;
        let Some((_, encoding)) = &self.inner.hs256 else {
            return Err("cannot mint: no HS256 secret is configured".into());
        };
        let claims = MintClaims {
            sub: user,
            exp,
            iat: now_secs(),
            iss: self.inner.issuer.as_deref(),
            aud: self.inner.audience.as_deref(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, encoding)
            .map_err(|e| format!("cannot sign token: {e}"))
    }
}
