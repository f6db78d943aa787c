//! Token settings: [`AuthConfig`], its defaults and its environment
//! variables (`CONFAB_JWT_*`), and the development secret embedded mode
//! falls back to.

use confab_core::config::{secs_or, ConfigError, Env};
use std::path::PathBuf;
use std::time::Duration;

/// The secret used in embedded mode when none is configured. Public, so
/// anybody can mint tokens: fine on a laptop, never in production.
pub const DEV_SECRET: &str = "confab-development-secret-do-not-use-in-production";

/// Clock skew allowed on `exp` and `nbf` unless configured otherwise.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// How often the public key file is checked for changes by default.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Token settings.
#[derive(Clone)]
pub struct AuthConfig {
    /// HS256 shared secret; also what
    /// [`Authenticator::mint`](crate::Authenticator::mint) signs with.
    pub hs256_secret: Option<String>,
    /// A PEM public key (RSA → RS256, Ed25519 → EdDSA) or a JWKS file.
    pub public_keys: Option<PathBuf>,
    /// When set, `iss` is required and must equal it.
    pub issuer: Option<String>,
    /// When set, `aud` is required and must contain it.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (whole seconds count).
    pub leeway: Duration,
    /// How often [`AuthConfig::public_keys`] is checked for changes.
    pub reload_interval: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            hs256_secret: None,
            public_keys: None,
            issuer: None,
            audience: None,
            leeway: DEFAULT_LEEWAY,
            reload_interval: DEFAULT_RELOAD_INTERVAL,
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("public_keys", &self.public_keys)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("reload_interval", &self.reload_interval)
            .finish()
    }
}

/// Shortest HS256 secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

impl AuthConfig {
    /// Reads `CONFAB_JWT_SECRET`, `CONFAB_JWT_PUBLIC_KEYS` (path of a PEM or
    /// JWKS file), `CONFAB_JWT_ISSUER`, `CONFAB_JWT_AUDIENCE`,
    /// `CONFAB_JWT_LEEWAY_SECS` (default 30) and
    /// `CONFAB_JWT_RELOAD_SECS` (default 10). An HS256 secret shorter than
    /// [`MIN_SECRET_BYTES`] is refused here, for every mode. Having no key
    /// at all is not an error here: the caller decides (embedded mode falls
    /// back to [`DEV_SECRET`]).
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let d = Self::default();
        let leeway = secs_or(env, confab_core::vars::JWT_LEEWAY_SECS, d.leeway)?;
        let reload_interval = secs_or(env, confab_core::vars::JWT_RELOAD_SECS, d.reload_interval)?;
        let hs256_secret = env.get(confab_core::vars::JWT_SECRET);
        if hs256_secret
            .as_ref()
            .is_some_and(|s| s.len() < MIN_SECRET_BYTES)
        {
            return Err(ConfigError {
                key: confab_core::vars::JWT_SECRET.into(),
                value: "<redacted>".into(),
                reason: format!("must be at least {MIN_SECRET_BYTES} bytes"),
            });
        }
        Ok(Self {
            hs256_secret,
            public_keys: env
                .get(confab_core::vars::JWT_PUBLIC_KEYS)
                .map(PathBuf::from),
            issuer: env.get(confab_core::vars::JWT_ISSUER),
            audience: env.get(confab_core::vars::JWT_AUDIENCE),
            leeway,
            reload_interval,
        })
    }
}
