//! The [`Authenticator`]: what it is built from, its memory of verified
//! tokens in front of the full check (in `verify`), and reading the token
//! from `authorization: Bearer` metadata.

use crate::config::AuthConfig;
use crate::keys::KeyFile;
use crate::now_secs;
use confab_core::config::{ConfigError, Env};
use jsonwebtoken::{DecodingKey, EncodingKey};
use std::sync::Arc;
use std::time::SystemTime;
use tonic::metadata::MetadataMap;
use tonic::Status;

/// The latest [`Authenticated::valid_until`], Unix seconds
/// (9999-12-31T23:59:59Z): a later `exp` counts as this.
pub const MAX_VALID_UNTIL: u64 = 253_402_300_799;

/// The message a `Connect` stream ends with when its token expires.
pub const STREAM_EXPIRED: &str = "token expired: reconnect with a new token";

/// Tokens whose verification an [`Authenticator`] remembers (about 1.5 MiB
/// at most); past this many the least used are forgotten first.
pub const VERIFIED_TOKENS: usize = 4096;

/// Who a token is for, and until when it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The user id (`sub`).
    pub user: String,
    /// The token's `exp`, Unix seconds.
    pub exp: u64,
    /// `exp` plus the leeway: the last instant the token is accepted, and
    /// when a stream opened with it is closed (at most [`MAX_VALID_UNTIL`]).
    pub valid_until: SystemTime,
}

/// Checks tokens, and mints them when it has the HS256 secret.
#[derive(Clone)]
pub struct Authenticator {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// HS256 verification and signing.
    pub(crate) hs256: Option<(DecodingKey, EncodingKey)>,
    /// RS256 / EdDSA public keys.
    pub(crate) public: Option<KeyFile>,
    pub(crate) issuer: Option<String>,
    pub(crate) audience: Option<String>,
    /// Whole seconds.
    pub(crate) leeway: u64,
    /// Tokens that passed [`Authenticator::verify_claims`], with what they
    /// came to and the key generation they were verified under.
    verified: quick_cache::sync::Cache<String, (Authenticated, u64)>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field(
                "hs256_secret",
                &self.inner.hs256.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "public_keys",
                &self
                    .inner
                    .public
                    .as_ref()
                    .map(|k| k.path.display().to_string()),
            )
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .field("leeway_secs", &self.inner.leeway)
            .finish()
    }
}

impl Authenticator {
    /// An authenticator for the HS256 `secret` alone, with no leeway.
    pub fn new(secret: &str) -> Self {
        Self::from_parts(Some(secret), None, None, None, 0)
    }

    /// An authenticator for `config`; fails when it has no key at all or
    /// the public key file cannot be loaded.
    pub fn from_config(config: AuthConfig) -> Result<Self, String> {
        if config.hs256_secret.is_none() && config.public_keys.is_none() {
            return Err("no token key configured: set an HS256 secret or a public key file".into());
        }
        if config.hs256_secret.as_deref() == Some("") {
            return Err("the HS256 secret is empty".into());
        }
        let public = config
            .public_keys
            .map(|p| KeyFile::open(p, config.reload_interval))
            .transpose()?;
        Ok(Self::from_parts(
            config.hs256_secret.as_deref(),
            public,
            config.issuer,
            config.audience,
            config.leeway.as_secs(),
        ))
    }

    /// [`AuthConfig::from_env`] then [`Authenticator::configured`].
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        Self::configured(AuthConfig::from_env(env)?)
    }

    /// [`Authenticator::from_config`] for a configuration read from the
    /// environment: a key file that cannot be loaded is reported against
    /// `CONFAB_JWT_PUBLIC_KEYS`, no key at all against `CONFAB_JWT_SECRET`.
    pub fn configured(config: AuthConfig) -> Result<Self, ConfigError> {
        let (key, value) = match &config.public_keys {
            Some(p) => (confab_core::vars::JWT_PUBLIC_KEYS, p.display().to_string()),
            None => (confab_core::vars::JWT_SECRET, String::new()),
        };
        Self::from_config(config).map_err(|reason| ConfigError {
            key: key.into(),
            value,
            reason,
        })
    }

    fn from_parts(
        secret: Option<&str>,
        public: Option<KeyFile>,
        issuer: Option<String>,
        audience: Option<String>,
        leeway: u64,
    ) -> Self {
        let hs256 = secret.map(|s| {
            (
                DecodingKey::from_secret(s.as_bytes()),
                EncodingKey::from_secret(s.as_bytes()),
            )
        });
        Self {
            inner: Arc::new(Inner {
                hs256,
                public,
                issuer,
                audience,
                leeway,
                verified: quick_cache::sync::Cache::new(VERIFIED_TOKENS),
            }),
        }
    }

    /// Which public keys are in use: bumped by every load of the key file
    /// (which [`KeyFile::refresh`] does here when it is due). 0 without a
    /// key file; the HS256 secret never changes.
    fn key_generation(&self) -> u64 {
        match &self.inner.public {
            Some(file) => {
                file.refresh();
                file.state
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .generation
            }
            None => 0,
        }
    }

    /// Re-reads the public key file now. On failure the previous keys stay
    /// in use (and a warning is logged). Without a key file, does nothing.
    pub fn reload(&self) -> Result<(), String> {
        match &self.inner.public {
            Some(file) => file.reload(),
            None => Ok(()),
        }
    }

    /// The user id of a raw token, or UNAUTHENTICATED saying what is wrong.
    pub fn verify(&self, token: &str) -> Result<String, Status> {
        self.verify_claims(token).map(|a| a.user)
    }

    /// The user and expiry of a raw token, or UNAUTHENTICATED saying what
    /// is wrong.
    ///
    /// A token that passed is remembered (up to [`VERIFIED_TOKENS`]), so a
    /// client that sends the same token with every unary call has its
    /// signature and claims checked once: the same token again is accepted
    /// while it is not expired and the keys are those it was verified with.
    /// Anything else, an expired token or one from before a key rotation,
    /// is verified in full, as is every token that was refused.
    pub fn verify_claims(&self, token: &str) -> Result<Authenticated, Status> {
        let generation = self.key_generation();
        // An entry expires with its token: a hit past `exp` (or from before
        // a key reload) is checked in full, which refuses it and forgets it.
        let stale = match self.inner.verified.get(token) {
            Some((who, at)) if at == generation && !self.expired(who.exp) => return Ok(who),
            remembered => remembered.is_some(),
        };
        let checked = self.verify_in_full(token);
        // Only a pass, or a remembered token that no longer passes, changes
        // the memory: refusals write nothing.
        match &checked {
            Ok(who) => self
                .inner
                .verified
                .insert(token.to_string(), (who.clone(), generation)),
            Err(_) if stale => {
                self.inner.verified.remove(token);
            }
            Err(_) => {}
        }
        checked
    }

    /// Whether a token that expires at `exp` is no longer accepted: RFC
    /// 7519 holds it valid only *before* `exp`, plus the leeway.
    pub(crate) fn expired(&self, exp: u64) -> bool {
        now_secs() >= exp.saturating_add(self.inner.leeway)
    }

    /// How many verified tokens are remembered.
    #[cfg(test)]
    pub(crate) fn remembered(&self) -> usize {
        self.inner.verified.len()
    }

    /// The user id from `authorization: Bearer <token>` metadata.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<String, Status> {
        self.authenticate_claims(metadata).map(|a| a.user)
    }

    /// The user and expiry from `authorization: Bearer <token>` metadata.
    pub fn authenticate_claims(&self, metadata: &MetadataMap) -> Result<Authenticated, Status> {
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
        self.verify_claims(token.trim())
    }
}
