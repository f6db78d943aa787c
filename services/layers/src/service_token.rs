//! The secret that internal services (router, history) require of their
//! callers, and the interceptor that refuses calls without it.

use confab_core::config::{ConfigError, Env};
use std::sync::Arc;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};

/// The variable holding the token shared by the services of one deployment.
pub const SERVICE_TOKEN_VAR: &str = confab_core::vars::SERVICE_TOKEN;

/// The metadata key callers of an internal service put the token in.
pub const SERVICE_TOKEN_HEADER: &str = "x-confab-service-token";

/// Shortest service token accepted, in bytes.
pub const SERVICE_TOKEN_MIN_BYTES: usize = 32;

/// What a caller without the right token sees (UNAUTHENTICATED).
pub const SERVICE_TOKEN_REQUIRED: &str =
    "this is an internal service: callers must present the service token";

/// The secret that internal services (router, history) require of their
/// callers, and that gateways and routers present to them. Never printed:
/// its `Debug` is redacted.
#[derive(Clone)]
pub struct ServiceToken {
    /// The token as configured.
    value: Arc<str>,
    /// The same, ready to put into request metadata.
    metadata: AsciiMetadataValue,
}

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceToken(<redacted>)")
    }
}

impl ServiceToken {
    /// `token`, if it is at least [`SERVICE_TOKEN_MIN_BYTES`] of visible
    /// ASCII (e.g. base64); the error names [`SERVICE_TOKEN_VAR`] and never
    /// the token.
    pub fn new(token: &str) -> Result<Self, ConfigError> {
        let bad = |reason: &str| ConfigError {
            key: SERVICE_TOKEN_VAR.into(),
            value: "<redacted>".into(),
            reason: reason.into(),
        };
        if token.len() < SERVICE_TOKEN_MIN_BYTES {
            return Err(bad(&format!(
                "must be at least {SERVICE_TOKEN_MIN_BYTES} bytes \
                 (e.g. `head -c 24 /dev/urandom | base64`)"
            )));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                "must be visible ASCII without spaces (e.g. base64 of random bytes)",
            ));
        }
        let metadata = MetadataValue::try_from(token)
            .map_err(|_| bad("must be visible ASCII without spaces"))?;
        Ok(Self {
            value: token.into(),
            metadata,
        })
    }

    /// [`SERVICE_TOKEN_VAR`], which is required.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        match env.get(SERVICE_TOKEN_VAR) {
            Some(token) => Self::new(&token),
            None => Err(ConfigError {
                key: SERVICE_TOKEN_VAR.into(),
                value: String::new(),
                reason: format!(
                    "required: the token shared by gateways, routers and history \
                     (at least {SERVICE_TOKEN_MIN_BYTES} bytes)"
                ),
            }),
        }
    }

    /// Whether `presented` is this token, in time that does not depend on
    /// where `presented` differs from it (`subtle`'s constant-time
    /// comparison; only a length mismatch returns early, and the length of
    /// a token is no secret worth the bytes it would take to hide).
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq as _;
        self.value.as_bytes().ct_eq(presented).into()
    }

    /// Puts the token into `request`'s metadata, for an internal service.
    pub fn attach<T>(&self, request: &mut tonic::Request<T>) {
        request
            .metadata_mut()
            .insert(SERVICE_TOKEN_HEADER, self.metadata.clone());
    }
}

/// A tonic interceptor that refuses, with UNAUTHENTICATED, every call that
/// does not carry the [`ServiceToken`] in [`SERVICE_TOKEN_HEADER`]; without
/// a token it admits every call. A server puts it on its service and on
/// reflection, not on health checks, which orchestrators call without it.
#[derive(Debug, Clone)]
pub struct RequireToken(Option<ServiceToken>);

impl RequireToken {
    /// Requires `token` of callers; `None` requires nothing.
    pub fn new(token: Option<ServiceToken>) -> Self {
        Self(token)
    }
}

impl tonic::service::Interceptor for RequireToken {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(token) = &self.0 else {
            return Ok(req);
        };
        let admitted = req
            .metadata()
            .get(SERVICE_TOKEN_HEADER)
            .is_some_and(|presented| token.matches(presented.as_bytes()));
        if admitted {
            Ok(req)
        } else {
            tracing::debug!("call without the service token refused");
            Err(tonic::Status::unauthenticated(SERVICE_TOKEN_REQUIRED))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(token: &str) -> HashMap<String, String> {
        HashMap::from([(SERVICE_TOKEN_VAR.to_string(), token.to_string())])
    }

    #[test]
    fn the_token_is_required_long_enough_and_never_shown() {
        let missing = ServiceToken::from_env(&HashMap::new()).expect_err("missing");
        assert_eq!(missing.key, SERVICE_TOKEN_VAR);
        assert!(missing.reason.starts_with("required"));
        let short = ServiceToken::from_env(&env("short-secret-token")).expect_err("short");
        assert_eq!(short.key, SERVICE_TOKEN_VAR);
        assert!(!short.to_string().contains("short-secret-token"));
        assert!(short.reason.contains("at least 32 bytes"));
        let spaced = ServiceToken::new(&format!("{} x", "a".repeat(32))).expect_err("space");
        assert!(spaced.reason.contains("visible ASCII"));
        let token = ServiceToken::from_env(&env(&"s".repeat(32))).expect("valid");
        assert_eq!(format!("{token:?}"), "ServiceToken(<redacted>)");
    }

    #[test]
    fn matches_only_the_exact_token() {
        let token = ServiceToken::new("0123456789abcdef0123456789abcdef").expect("valid");
        assert!(token.matches(b"0123456789abcdef0123456789abcdef"));
        for wrong in [
            &b""[..],
            b"0123456789abcdef0123456789abcde",
            b"0123456789abcdef0123456789abcdeF",
            b"0123456789abcdef0123456789abcdef0",
            b"x123456789abcdef0123456789abcdef",
        ] {
            assert!(!token.matches(wrong), "{wrong:?}");
        }
    }
}
