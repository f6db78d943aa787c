//! Bearer tokens: JWTs whose `sub` is the user id and whose `exp` is
//! required.
//!
//! Keys: an HS256 shared secret (which also lets `confab token` mint), and/or
//! a file of public keys for RS256 and EdDSA: a PEM public key (RSA or
//! Ed25519), or a JWKS document (RFC 7517) whose keys are chosen by the
//! token header's `kid`. The file is re-read when it changes (its mtime or
//! length is checked at most every [`AuthConfig::reload_interval`], or on
//! [`Authenticator::reload`]), so keys rotate without a restart; a reload
//! that fails keeps the previous keys and logs a warning.
//!
//! Claims: `exp` is required, `nbf` is honoured when present, and when an
//! issuer or audience is configured the `iss` / `aud` claim is required and
//! must match. Both time checks allow a clock skew (leeway): 0 for
//! [`Authenticator::new`] (as before, and what keeps tests deterministic),
//! [`DEFAULT_LEEWAY`] (30 s) for [`AuthConfig::default`] and
//! [`AuthConfig::from_env`]. A token is accepted until `exp + leeway`, and a
//! `Connect` stream is closed at that instant
//! ([`Authenticated::valid_until`]).
//!
//! Every refusal is UNAUTHENTICATED with a message saying what is wrong; the
//! secret and key material never appear in an error or a log line.
//!
//! Modules: `config` (the settings), `keys` (the public key file and its
//! reloads), `authenticator` (the [`Authenticator`], its memory of verified
//! tokens and the bearer metadata), `verify` (the full check of one token),
//! `mint` (HS256 tokens for development), and, for tests only, `signer`.

mod authenticator;
mod config;
mod keys;
mod mint;
#[cfg(any(test, feature = "testing"))]
mod signer;
#[cfg(test)]
mod tests;
mod verify;

pub use authenticator::{
    Authenticated, Authenticator, MAX_VALID_UNTIL, STREAM_EXPIRED, VERIFIED_TOKENS,
};
pub use confab_core::validate::{check_user_id, MAX_USER_ID_LEN};
pub use config::{AuthConfig, DEFAULT_LEEWAY, DEFAULT_RELOAD_INTERVAL, DEV_SECRET};
#[cfg(any(test, feature = "testing"))]
pub use signer::Signer;

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
