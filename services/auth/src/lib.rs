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

use confab_core::config::{parse_or, ConfigError, Env};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::metadata::MetadataMap;
use tonic::Status;

/// The secret used in embedded mode when none is configured. Public, so
/// anybody can mint tokens: fine on a laptop, never in production.
pub const DEV_SECRET: &str = "confab-development-secret-do-not-use-in-production";

pub use confab_core::validate::{check_user_id, MAX_USER_ID_LEN};

/// Clock skew allowed on `exp` and `nbf` unless configured otherwise.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// How often the public key file is checked for changes by default.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// The latest [`Authenticated::valid_until`], Unix seconds
/// (9999-12-31T23:59:59Z): a later `exp` counts as this.
pub const MAX_VALID_UNTIL: u64 = 253_402_300_799;

/// The message a `Connect` stream ends with when its token expires.
pub const STREAM_EXPIRED: &str = "token expired: reconnect with a new token";

/// The longest value from a token or the config (`kid`, `iss`, `aud`) echoed back in an error, in characters.
const MAX_SHOWN: usize = 64;

/// Tokens whose verification an [`Authenticator`] remembers (about 1.5 MiB
/// at most); past this many the least used are forgotten first.
pub const VERIFIED_TOKENS: usize = 4096;

/// Token settings.
#[derive(Clone)]
pub struct AuthConfig {
    /// HS256 shared secret; also what [`Authenticator::mint`] signs with.
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

impl AuthConfig {
    /// Reads `CONFAB_JWT_SECRET`, `CONFAB_JWT_PUBLIC_KEYS` (path of a PEM or
    /// JWKS file), `CONFAB_JWT_ISSUER`, `CONFAB_JWT_AUDIENCE`,
    /// `CONFAB_JWT_LEEWAY_SECS` (default 30) and
    /// `CONFAB_JWT_RELOAD_SECS` (default 10). Having no key at all is not
    /// an error here: the caller decides (embedded mode falls back to
    /// [`DEV_SECRET`]).
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let d = Self::default();
        let leeway = parse_or(
            env,
            "CONFAB_JWT_LEEWAY_SECS",
            d.leeway.as_secs(),
            "whole seconds",
        )?;
        let reload = parse_or(
            env,
            "CONFAB_JWT_RELOAD_SECS",
            d.reload_interval.as_secs(),
            "whole seconds",
        )?;
        Ok(Self {
            hs256_secret: env.get("CONFAB_JWT_SECRET"),
            public_keys: env.get("CONFAB_JWT_PUBLIC_KEYS").map(PathBuf::from),
            issuer: env.get("CONFAB_JWT_ISSUER"),
            audience: env.get("CONFAB_JWT_AUDIENCE"),
            leeway: Duration::from_secs(leeway),
            reload_interval: Duration::from_secs(reload),
        })
    }
}

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

/// Optional here so that a missing claim is reported by the validation
/// (which names it) rather than as malformed JSON.
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
}

/// A verification key and the one algorithm it is used with.
#[derive(Clone)]
struct PublicKey {
    alg: Algorithm,
    key: DecodingKey,
}

/// The contents of the public key file.
enum PublicKeys {
    /// A PEM file: one key, whatever the token's `kid`.
    Pem(PublicKey),
    /// A JWKS file: keys by `kid`.
    Jwks(HashMap<String, PublicKey>),
}

impl PublicKeys {
    fn algorithms(&self) -> Vec<Algorithm> {
        let mut algs: Vec<Algorithm> = match self {
            PublicKeys::Pem(k) => vec![k.alg],
            PublicKeys::Jwks(m) => m.values().map(|k| k.alg).collect(),
        };
        algs.sort_by_key(|a| format!("{a:?}"));
        algs.dedup();
        algs
    }
}

/// The public key file and what was last loaded from it.
struct KeyFile {
    path: PathBuf,
    reload_interval: Duration,
    state: RwLock<KeyFileState>,
}

struct KeyFileState {
    keys: PublicKeys,
    /// Counts the loads of `keys`: a token verified under another
    /// generation is verified again.
    generation: u64,
    /// (mtime, length) of the file last read, successfully or not.
    seen: Option<(SystemTime, u64)>,
    /// When the file was last looked at.
    checked: Instant,
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl KeyFile {
    fn open(path: PathBuf, reload_interval: Duration) -> Result<Self, String> {
        let seen = file_stamp(&path);
        let keys = load_keys(&path)?;
        Ok(Self {
            path,
            reload_interval,
            state: RwLock::new(KeyFileState {
                keys,
                generation: 0,
                seen,
                checked: Instant::now(),
            }),
        })
    }

    /// Re-reads the file if the interval has passed and it changed.
    fn refresh(&self) {
        {
            let state = self.state.read().unwrap_or_else(|p| p.into_inner());
            if state.checked.elapsed() < self.reload_interval {
                return;
            }
        }
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if state.checked.elapsed() < self.reload_interval {
            return; // Another caller just did it.
        }
        state.checked = Instant::now();
        let stamp = file_stamp(&self.path);
        if stamp.is_some() && stamp == state.seen {
            return;
        }
        state.seen = stamp;
        if let Err(e) = self.reload_into(&mut state) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot reload token keys; keeping the previous ones");
        }
    }

    /// Re-reads the file now, whatever its mtime.
    fn reload(&self) -> Result<(), String> {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        state.checked = Instant::now();
        state.seen = file_stamp(&self.path);
        let result = self.reload_into(&mut state);
        if let Err(e) = &result {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot reload token keys; keeping the previous ones");
        }
        result
    }

    fn reload_into(&self, state: &mut KeyFileState) -> Result<(), String> {
        state.keys = load_keys(&self.path)?;
        state.generation += 1;
        tracing::info!(path = %self.path.display(), algorithms = ?state.keys.algorithms(), "token keys loaded");
        Ok(())
    }
}

/// Reads a PEM public key or a JWKS document. Errors name the file and
/// what is wrong with it, never its contents.
fn load_keys(path: &Path) -> Result<PublicKeys, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim_start();
    if text.starts_with('{') {
        load_jwks(path, text).map(PublicKeys::Jwks)
    } else if text.starts_with("-----BEGIN") {
        if let Ok(key) = DecodingKey::from_rsa_pem(text.as_bytes()) {
            return Ok(PublicKeys::Pem(PublicKey {
                alg: Algorithm::RS256,
                key,
            }));
        }
        if let Ok(key) = DecodingKey::from_ed_pem(text.as_bytes()) {
            return Ok(PublicKeys::Pem(PublicKey {
                alg: Algorithm::EdDSA,
                key,
            }));
        }
        Err(format!(
            "{}: the PEM is neither an RSA nor an Ed25519 public key",
            path.display()
        ))
    } else {
        Err(format!(
            "{}: expected a PEM public key or a JWKS document (JSON)",
            path.display()
        ))
    }
}

/// The RS256 and EdDSA signing keys of a JWKS document, by `kid`. Keys of
/// other kinds (EC, encryption keys, other algorithms) are skipped with a
/// warning; a document with none left is an error.
fn load_jwks(path: &Path, text: &str) -> Result<HashMap<String, PublicKey>, String> {
    #[derive(Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let doc: Document = serde_json::from_str(text).map_err(|e| {
        format!(
            "{}: not a JWKS document (a JSON object with a \"keys\" array): error at line {} column {}",
            path.display(),
            e.line(),
            e.column()
        )
    })?;
    let mut keys = HashMap::new();
    for (i, value) in doc.keys.into_iter().enumerate() {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            tracing::warn!(path = %path.display(), index = i, "skipping a JWKS key of an unsupported kind");
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone().filter(|k| !k.is_empty()) else {
            return Err(format!(
                "{}: key #{i} has no kid; every key in a JWKS file needs one",
                path.display()
            ));
        };
        match jwk_key(&jwk) {
            Ok(key) => {
                if keys.insert(kid.clone(), key).is_some() {
                    return Err(format!(
                        "{}: kid {kid:?} appears more than once",
                        path.display()
                    ));
                }
            }
            Err(why) => {
                tracing::warn!(path = %path.display(), kid = %kid, "skipping JWKS key: {why}")
            }
        }
    }
    if keys.is_empty() {
        return Err(format!(
            "{}: no RS256 or EdDSA signing key in the JWKS document",
            path.display()
        ));
    }
    Ok(keys)
}

fn jwk_key(jwk: &Jwk) -> Result<PublicKey, String> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption) | Some(PublicKeyUse::Other(_))
    ) {
        return Err("not a signature key (use is not \"sig\")".into());
    }
    let (alg, declared) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (Algorithm::RS256, KeyAlgorithm::RS256),
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            (Algorithm::EdDSA, KeyAlgorithm::EdDSA)
        }
        _ => return Err("only RSA (RS256) and Ed25519 (EdDSA) keys are supported".into()),
    };
    if let Some(a) = jwk.common.key_algorithm {
        if a != declared {
            return Err(format!(
                "its alg is {a:?}; only RS256 and EdDSA are supported"
            ));
        }
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable key: {e}"))?;
    Ok(PublicKey { alg, key })
}

/// Checks tokens, and mints them when it has the HS256 secret.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    /// HS256 verification and signing.
    hs256: Option<(DecodingKey, EncodingKey)>,
    /// RS256 / EdDSA public keys.
    public: Option<KeyFile>,
    issuer: Option<String>,
    audience: Option<String>,
    /// Whole seconds.
    leeway: u64,
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

    /// [`AuthConfig::from_env`] then [`Authenticator::from_config`]; a key
    /// file that cannot be loaded is reported against
    /// `CONFAB_JWT_PUBLIC_KEYS`, no key at all against `CONFAB_JWT_SECRET`.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let config = AuthConfig::from_env(env)?;
        let (key, value) = match &config.public_keys {
            Some(p) => ("CONFAB_JWT_PUBLIC_KEYS", p.display().to_string()),
            None => ("CONFAB_JWT_SECRET", String::new()),
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
    fn expired(&self, exp: u64) -> bool {
        now_secs() >= exp.saturating_add(self.inner.leeway)
    }

    /// How many verified tokens are remembered.
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.inner.verified.len()
    }

    /// [`Authenticator::verify_claims`] without the memory of tokens.
    fn verify_in_full(&self, token: &str) -> Result<Authenticated, Status> {
        let unauthenticated = |m: String| Status::unauthenticated(m);
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| unauthenticated("token is malformed: expected a JWT".into()))?;
        let data = match header.alg {
            Algorithm::HS256 => {
                let Some((decoding, _)) = &self.inner.hs256 else {
                    return Err(unauthenticated(self.not_allowed(header.alg)));
                };
                self.decode(token, header.alg, decoding)?
            }
            Algorithm::RS256 | Algorithm::EdDSA => {
                let Some(file) = &self.inner.public else {
                    return Err(unauthenticated(self.not_allowed(header.alg)));
                };
                file.refresh();
                let state = file.state.read().unwrap_or_else(|p| p.into_inner());
                let key = match (&state.keys, header.kid.as_deref()) {
                    (PublicKeys::Pem(k), _) => k,
                    (PublicKeys::Jwks(keys), Some(kid)) => keys.get(kid).ok_or_else(|| {
                        unauthenticated(format!(
                            "token kid {} is unknown: no such key in the key set",
                            shown(kid)
                        ))
                    })?,
                    (PublicKeys::Jwks(keys), None) if keys.len() == 1 => {
                        keys.values().next().expect("one key")
                    }
                    (PublicKeys::Jwks(_), None) => {
                        return Err(unauthenticated(
                            "token has no kid header: the key set has several keys, so the token must name one".into(),
                        ))
                    }
                };
                if key.alg != header.alg {
                    return Err(unauthenticated(format!(
                        "token algorithm {:?} is not allowed with this key, which is for {:?}",
                        header.alg, key.alg
                    )));
                }
                self.decode(token, header.alg, &key.key)?
            }
            other => return Err(unauthenticated(self.not_allowed(other))),
        };
        // Both are required claims, so the validation has checked them.
        let (Some(sub), Some(exp)) = (data.sub, data.exp) else {
            return Err(unauthenticated(
                "token must have a sub and an exp claim".into(),
            ));
        };
        // RFC 7519: the token is valid only *before* exp (plus leeway); the
        // library also accepts the second of exp itself. Being strict keeps
        // unary calls consistent with `valid_until`, when streams close.
        if self.expired(exp) {
            return Err(unauthenticated("token expired: get a new one".into()));
        }
        check_user_id(&sub)
            .map_err(|s| Status::unauthenticated(format!("token sub: {}", s.message())))?;
        Ok(Authenticated {
            user: sub,
            exp,
            // Capped: `exp` may be any u64, more than SystemTime holds
            // (adding it panicked; found by fuzzing).
            valid_until: UNIX_EPOCH
                + Duration::from_secs(exp.saturating_add(self.inner.leeway).min(MAX_VALID_UNTIL)),
        })
    }

    /// "token algorithm X is not allowed: this server accepts ...".
    fn not_allowed(&self, alg: Algorithm) -> String {
        let mut accepted = Vec::new();
        if self.inner.hs256.is_some() {
            accepted.push(Algorithm::HS256);
        }
        if let Some(file) = &self.inner.public {
            let state = file.state.read().unwrap_or_else(|p| p.into_inner());
            accepted.extend(state.keys.algorithms());
        }
        let accepted: Vec<String> = accepted.iter().map(|a| format!("{a:?}")).collect();
        format!(
            "token algorithm {alg:?} is not allowed: this server accepts {}",
            accepted.join(", ")
        )
    }

    /// Checks the signature with `key` and the claims.
    fn decode(&self, token: &str, alg: Algorithm, key: &DecodingKey) -> Result<Claims, Status> {
        use jsonwebtoken::errors::ErrorKind;
        let inner = &self.inner;
        let mut validation = Validation::new(alg);
        validation.leeway = inner.leeway;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &inner.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &inner.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let expected = |what: &Option<String>| shown(what.as_deref().unwrap_or_default());
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map(|d| d.claims)
            .map_err(|e| first_missing_claim(e, token, key, &validation, &required))
            .map_err(|e| {
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired: get a new one".to_string(),
                    ErrorKind::ImmatureSignature => {
                        "token is not valid yet: its nbf is in the future".to_string()
                    }
                    ErrorKind::InvalidSignature => "token signature is invalid".to_string(),
                    ErrorKind::InvalidAlgorithm => {
                        format!("token algorithm {alg:?} is not allowed with this key")
                    }
                    ErrorKind::InvalidIssuer => format!(
                        "token issuer is wrong: expected iss {}",
                        expected(&inner.issuer)
                    ),
                    ErrorKind::InvalidAudience => format!(
                        "token audience is wrong: expected aud {}",
                        expected(&inner.audience)
                    ),
                    ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
                        "exp" => "token has no exp claim: tokens must expire".to_string(),
                        "iss" => format!(
                            "token has no iss claim: expected iss {}",
                            expected(&inner.issuer)
                        ),
                        "aud" => format!(
                            "token has no aud claim: expected aud {}",
                            expected(&inner.audience)
                        ),
                        _ => "token has no sub claim".to_string(),
                    },
                    ErrorKind::Json(_) => {
                        "token claims are malformed: sub must be a string, exp and nbf numbers"
                            .to_string()
                    }
                    _ => "token is malformed: expected a JWT".to_string(),
                };
                Status::unauthenticated(why)
            })
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

/// jsonwebtoken checks the required claims in the order of a `HashSet`,
/// which differs from one check to the next: when `e` is a missing claim,
/// the one reported is the first of `required` that is missing, so the
/// same token always gets the same answer (found by fuzzing).
fn first_missing_claim(
    e: jsonwebtoken::errors::Error,
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
    required: &[&str],
) -> jsonwebtoken::errors::Error {
    use jsonwebtoken::errors::ErrorKind;
    if !matches!(e.kind(), ErrorKind::MissingRequiredClaim(_)) {
        return e;
    }
    for claim in required {
        let mut one = validation.clone();
        one.set_required_spec_claims(&[*claim]);
        match jsonwebtoken::decode::<Claims>(token, key, &one) {
            Err(missing) if matches!(missing.kind(), ErrorKind::MissingRequiredClaim(_)) => {
                return missing
            }
            _ => {}
        }
    }
    e
}

/// Signs arbitrary claims: HS256 with a secret, RS256 or EdDSA with a PKCS#8
/// private key PEM, optionally naming the key with a `kid` header. For
/// tools and tests that stand in for an identity provider; the gateway
/// itself only verifies.
#[derive(Clone)]
pub struct Signer {
    alg: Algorithm,
    kid: Option<String>,
    key: EncodingKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Signer {
    /// HS256 with `secret`.
    pub fn hs256(secret: &str) -> Self {
        Self {
            alg: Algorithm::HS256,
            kid: None,
            key: EncodingKey::from_secret(secret.as_bytes()),
        }
    }

    /// RS256 for an RSA private key, EdDSA for an Ed25519 one.
    pub fn from_pem(private_pem: &[u8]) -> Result<Self, String> {
        let (alg, key) = match EncodingKey::from_rsa_pem(private_pem) {
            Ok(k) => (Algorithm::RS256, k),
            Err(_) => match EncodingKey::from_ed_pem(private_pem) {
                Ok(k) => (Algorithm::EdDSA, k),
                Err(_) => {
                    return Err(
                        "the PEM is neither an RSA nor an Ed25519 private key (PKCS#8)".into(),
                    )
                }
            },
        };
        Ok(Self {
            alg,
            kid: None,
            key,
        })
    }

    /// The same key, naming itself `kid` in the token header.
    pub fn with_kid(mut self, kid: &str) -> Self {
        self.kid = Some(kid.to_string());
        self
    }

    /// "HS256", "RS256" or "EdDSA".
    pub fn algorithm(&self) -> String {
        format!("{:?}", self.alg)
    }

    /// A token carrying `claims` (a JSON object) as they are.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, String> {
        let mut header = Header::new(self.alg);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.key)
            .map_err(|e| format!("cannot sign token: {e}"))
    }

    /// A token for `user` expiring at `exp` (Unix seconds).
    pub fn sign_user(&self, user: &str, exp: u64) -> Result<String, String> {
        self.sign(&serde_json::json!({"sub": user, "exp": exp, "iat": now_secs()}))
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `s` quoted for an error message: escaped, and cut to a bounded length.
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(MAX_SHOWN).collect();
    if cut.len() < s.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;
    use tonic::Code;

    const SECRET: &str = "s3cret-for-unit-tests";

    fn claims_token(secret: &str, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    }

    fn config(f: impl FnOnce(&mut AuthConfig)) -> Authenticator {
        let mut c = AuthConfig {
            hs256_secret: Some(SECRET.into()),
            leeway: Duration::ZERO,
            ..AuthConfig::default()
        };
        f(&mut c);
        Authenticator::from_config(c).expect("config")
    }

    /// The refusal of `token`: its code is UNAUTHENTICATED, its message is
    /// returned, and it carries no secret.
    fn refusal(auth: &Authenticator, token: &str) -> String {
        let err = auth.verify(token).expect_err("refused");
        assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
        assert!(!err.message().contains(SECRET), "{}", err.message());
        err.message().to_string()
    }

    #[test]
    fn minted_token_round_trips() {
        let auth = Authenticator::new("s3cret");
        let token = auth.mint("alice", 60).expect("mint");
        assert_eq!(auth.verify(&token).ok().as_deref(), Some("alice"));
    }

    #[test]
    fn authenticated_carries_exp_and_valid_until_includes_leeway() {
        let exp = now_secs() + 100;
        let strict = Authenticator::new(SECRET);
        let token = strict.mint_expiring_at("alice", exp).expect("mint");
        let a = strict.verify_claims(&token).expect("valid");
        assert_eq!(a.user, "alice");
        assert_eq!(a.exp, exp);
        assert_eq!(a.valid_until, UNIX_EPOCH + Duration::from_secs(exp));
        let lenient = config(|c| c.leeway = Duration::from_secs(30));
        let a = lenient.verify_claims(&token).expect("valid");
        assert_eq!(a.valid_until, UNIX_EPOCH + Duration::from_secs(exp + 30));
    }

    #[test]
    fn wrong_secret_expired_and_missing_exp_are_unauthenticated() {
        let auth = Authenticator::new(SECRET);
        let other = Authenticator::new("other").mint("alice", 60).expect("mint");
        assert_eq!(refusal(&auth, &other), "token signature is invalid");

        let expired = claims_token(SECRET, json!({"sub": "a", "exp": now_secs() - 10}));
        assert_eq!(refusal(&auth, &expired), "token expired: get a new one");

        let no_exp = claims_token(SECRET, json!({"sub": "a"}));
        assert_eq!(
            refusal(&auth, &no_exp),
            "token has no exp claim: tokens must expire"
        );
        let no_sub = claims_token(SECRET, json!({"exp": now_secs() + 60}));
        assert_eq!(refusal(&auth, &no_sub), "token has no sub claim");
        let bad_exp = claims_token(SECRET, json!({"sub": "a", "exp": "tomorrow"}));
        assert!(refusal(&auth, &bad_exp).starts_with("token claims are malformed"));

        assert_eq!(
            refusal(&auth, "not-a-jwt"),
            "token is malformed: expected a JWT"
        );
    }

    #[test]
    fn leeway_applies_to_exp_and_nbf() {
        let now = now_secs();
        let strict = config(|_| {});
        let lenient = config(|c| c.leeway = Duration::from_secs(300));
        let expired = claims_token(SECRET, json!({"sub": "a", "exp": now - 100}));
        assert_eq!(refusal(&strict, &expired), "token expired: get a new one");
        assert_eq!(lenient.verify(&expired).ok().as_deref(), Some("a"));
        // Expired from the second of exp itself (RFC 7519: valid before exp).
        let at_exp = claims_token(SECRET, json!({"sub": "a", "exp": now}));
        assert_eq!(refusal(&strict, &at_exp), "token expired: get a new one");
        let at_leeway = claims_token(SECRET, json!({"sub": "a", "exp": now - 300}));
        assert_eq!(
            refusal(&lenient, &at_leeway),
            "token expired: get a new one"
        );
        let long_expired = claims_token(SECRET, json!({"sub": "a", "exp": now - 1000}));
        assert_eq!(
            refusal(&lenient, &long_expired),
            "token expired: get a new one"
        );

        let early = claims_token(
            SECRET,
            json!({"sub": "a", "exp": now + 3600, "nbf": now + 100}),
        );
        assert_eq!(
            refusal(&strict, &early),
            "token is not valid yet: its nbf is in the future"
        );
        assert_eq!(lenient.verify(&early).ok().as_deref(), Some("a"));
        let past_nbf = claims_token(
            SECRET,
            json!({"sub": "a", "exp": now + 3600, "nbf": now - 5}),
        );
        assert_eq!(strict.verify(&past_nbf).ok().as_deref(), Some("a"));
    }

    #[test]
    fn issuer_when_configured_is_required_and_matched() {
        let exp = now_secs() + 60;
        let auth = config(|c| c.issuer = Some("https://idp.example".into()));
        let none = claims_token(SECRET, json!({"sub": "a", "exp": exp}));
        assert_eq!(
            refusal(&auth, &none),
            "token has no iss claim: expected iss \"https://idp.example\""
        );
        let wrong = claims_token(
            SECRET,
            json!({"sub": "a", "exp": exp, "iss": "https://evil.example"}),
        );
        assert_eq!(
            refusal(&auth, &wrong),
            "token issuer is wrong: expected iss \"https://idp.example\""
        );
        let right = claims_token(
            SECRET,
            json!({"sub": "a", "exp": exp, "iss": "https://idp.example"}),
        );
        assert_eq!(auth.verify(&right).ok().as_deref(), Some("a"));
        // Not configured: any iss, or none, is fine.
        assert_eq!(config(|_| {}).verify(&wrong).ok().as_deref(), Some("a"));
        // Minted tokens carry the configured issuer.
        let minted = auth.mint("b", 60).expect("mint");
        assert_eq!(auth.verify(&minted).ok().as_deref(), Some("b"));
    }

    #[test]
    fn audience_when_configured_is_required_and_matched() {
        let exp = now_secs() + 60;
        let auth = config(|c| c.audience = Some("confab".into()));
        let none = claims_token(SECRET, json!({"sub": "a", "exp": exp}));
        assert_eq!(
            refusal(&auth, &none),
            "token has no aud claim: expected aud \"confab\""
        );
        let wrong = claims_token(SECRET, json!({"sub": "a", "exp": exp, "aud": "billing"}));
        assert_eq!(
            refusal(&auth, &wrong),
            "token audience is wrong: expected aud \"confab\""
        );
        let right = claims_token(SECRET, json!({"sub": "a", "exp": exp, "aud": "confab"}));
        assert_eq!(auth.verify(&right).ok().as_deref(), Some("a"));
        let among = claims_token(
            SECRET,
            json!({"sub": "a", "exp": exp, "aud": ["billing", "confab"]}),
        );
        assert_eq!(auth.verify(&among).ok().as_deref(), Some("a"));
        // Not configured: a token with an aud is still accepted.
        assert_eq!(config(|_| {}).verify(&wrong).ok().as_deref(), Some("a"));
        let minted = auth.mint("b", 60).expect("mint");
        assert_eq!(auth.verify(&minted).ok().as_deref(), Some("b"));
    }

    #[test]
    fn an_exp_beyond_what_system_time_holds_is_capped_not_a_panic() {
        // Found by fuzzing: valid_until = UNIX_EPOCH + exp panicked for an
        // exp past i64::MAX seconds, in a correctly signed token.
        let lenient = config(|c| c.leeway = Duration::from_secs(30));
        for exp in [u64::MAX, i64::MAX as u64, MAX_VALID_UNTIL] {
            let token = claims_token(SECRET, json!({"sub": "a", "exp": exp}));
            for auth in [&Authenticator::new(SECRET), &lenient] {
                let a = auth.verify_claims(&token).expect("valid");
                assert_eq!(a.exp, exp);
                assert_eq!(
                    a.valid_until,
                    UNIX_EPOCH + Duration::from_secs(MAX_VALID_UNTIL)
                );
            }
        }
    }

    #[test]
    fn several_missing_claims_always_get_the_same_answer() {
        // jsonwebtoken reports whichever its HashSet yields first; ours is
        // the first in a fixed order (exp, sub, iss, aud). Found by fuzzing.
        let auth = config(|c| {
            c.issuer = Some("https://idp.example".into());
            c.audience = Some("confab".into());
        });
        let neither = claims_token(SECRET, json!({"sub": "a", "exp": now_secs() + 60}));
        let nothing = claims_token(SECRET, json!({"nbf": 1}));
        for _ in 0..32 {
            assert_eq!(
                refusal(&auth, &neither),
                "token has no iss claim: expected iss \"https://idp.example\""
            );
            assert_eq!(
                refusal(&auth, &nothing),
                "token has no exp claim: tokens must expire"
            );
        }
    }

    #[test]
    fn algorithms_without_a_key_are_not_allowed() {
        let auth = Authenticator::new(SECRET);
        let claims = json!({"sub": "a", "exp": now_secs() + 60});
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("sign");
        assert_eq!(
            refusal(&auth, &hs512),
            "token algorithm HS512 is not allowed: this server accepts HS256"
        );
        // An RS256 header without RS256 keys: refused before any
        // signature check (no algorithm confusion with the HS256 secret).
        let header = base64_url(br#"{"alg":"RS256","typ":"JWT"}"#);
        let body = base64_url(claims.to_string().as_bytes());
        let forged = format!("{header}.{body}.c2ln");
        assert_eq!(
            refusal(&auth, &forged),
            "token algorithm RS256 is not allowed: this server accepts HS256"
        );
        let none = format!("{}.{body}.", base64_url(br#"{"alg":"none"}"#));
        assert_eq!(refusal(&auth, &none), "token is malformed: expected a JWT");
    }

    fn base64_url(bytes: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn mint_needs_the_secret() {
        let pem = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/tokens/ed-1.pub.pem"
        ));
        let auth = Authenticator::from_config(AuthConfig {
            public_keys: Some(pem),
            ..AuthConfig::default()
        })
        .expect("config");
        assert_eq!(
            auth.mint("a", 60).err().as_deref(),
            Some("cannot mint: no HS256 secret is configured")
        );
        let hs = Authenticator::new(SECRET).mint("a", 60).expect("mint");
        let err = auth.verify(&hs).expect_err("no secret");
        assert_eq!(
            err.message(),
            "token algorithm HS256 is not allowed: this server accepts EdDSA"
        );
    }

    #[test]
    fn config_needs_a_key_and_never_shows_the_secret() {
        let err = Authenticator::from_config(AuthConfig::default()).expect_err("no key");
        assert!(err.contains("no token key configured"), "{err}");
        let err = Authenticator::from_config(AuthConfig {
            public_keys: Some("/nonexistent/keys.json".into()),
            ..AuthConfig::default()
        })
        .expect_err("missing file");
        assert!(err.contains("cannot read /nonexistent/keys.json"), "{err}");
        let c = AuthConfig {
            hs256_secret: Some(SECRET.into()),
            ..AuthConfig::default()
        };
        assert!(!format!("{c:?}").contains(SECRET));
        let a = Authenticator::from_config(c).expect("config");
        assert!(!format!("{a:?}").contains(SECRET));
    }

    #[test]
    fn from_env_reads_every_knob() {
        let mut env: HashMap<String, String> = HashMap::new();
        let c = AuthConfig::from_env(&env).expect("defaults");
        assert_eq!(c.leeway, DEFAULT_LEEWAY);
        assert_eq!(c.reload_interval, DEFAULT_RELOAD_INTERVAL);
        assert!(c.hs256_secret.is_none() && c.public_keys.is_none());
        let err = Authenticator::from_env(&env).expect_err("no key");
        assert_eq!(err.key, "CONFAB_JWT_SECRET");
        for (k, v) in [
            ("CONFAB_JWT_SECRET", SECRET),
            ("CONFAB_JWT_ISSUER", "idp"),
            ("CONFAB_JWT_AUDIENCE", "confab"),
            ("CONFAB_JWT_LEEWAY_SECS", "5"),
            ("CONFAB_JWT_RELOAD_SECS", "2"),
            ("CONFAB_JWT_PUBLIC_KEYS", "/etc/confab/jwks.json"),
        ] {
            env.insert(k.into(), v.into());
        }
        let c = AuthConfig::from_env(&env).expect("config");
        assert_eq!(c.hs256_secret.as_deref(), Some(SECRET));
        assert_eq!(c.issuer.as_deref(), Some("idp"));
        assert_eq!(c.audience.as_deref(), Some("confab"));
        assert_eq!(c.leeway, Duration::from_secs(5));
        assert_eq!(c.reload_interval, Duration::from_secs(2));
        assert_eq!(c.public_keys, Some(PathBuf::from("/etc/confab/jwks.json")));
        let err = Authenticator::from_env(&env).expect_err("no such file");
        assert_eq!(err.key, "CONFAB_JWT_PUBLIC_KEYS");
        env.remove("CONFAB_JWT_PUBLIC_KEYS");
        let auth = Authenticator::from_env(&env).expect("secret only");
        let token = auth.mint("alice", 60).expect("mint");
        assert_eq!(auth.verify(&token).ok().as_deref(), Some("alice"));
        env.insert("CONFAB_JWT_LEEWAY_SECS".into(), "soon".into());
        let err = AuthConfig::from_env(&env).expect_err("bad leeway");
        assert_eq!(err.key, "CONFAB_JWT_LEEWAY_SECS");
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
        let exp = now_secs() + 60;
        let token = auth.mint_expiring_at("bob", exp).expect("mint");
        md.insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
        assert_eq!(auth.authenticate(&md).ok().as_deref(), Some("bob"));
        let a = auth.authenticate_claims(&md).expect("claims");
        assert_eq!(a.user, "bob");
        assert_eq!(a.exp, exp);
    }

    #[test]
    fn shown_values_are_escaped_and_bounded() {
        assert_eq!(shown("k1"), "\"k1\"");
        assert_eq!(shown("a\nb"), "\"a\\nb\"");
        assert!(shown(&"x".repeat(1000)).len() < 80);
    }

    #[test]
    fn user_ids_are_bounded() {
        assert!(check_user_id("alice").is_ok());
        assert!(check_user_id("").is_err());
        assert!(check_user_id("a b").is_err());
        assert!(check_user_id(&"x".repeat(129)).is_err());
    }

    #[test]
    fn a_verified_token_is_remembered_until_it_expires() {
        let auth = config(|_| {});
        let token = claims_token(SECRET, json!({"sub": "alice", "exp": now_secs() + 2}));
        let first = auth.verify_claims(&token).expect("valid");
        assert_eq!(auth.remembered(), 1);
        assert_eq!(auth.verify_claims(&token).expect("remembered"), first);
        assert_eq!(auth.remembered(), 1, "the same token is remembered once");
        // Once it expires it is refused as any expired token is, and
        // forgotten.
        let deadline = Instant::now() + Duration::from_secs(10);
        let err = loop {
            match auth.verify_claims(&token) {
                Ok(_) => assert!(Instant::now() < deadline, "still accepted after exp"),
                Err(e) => break e,
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(err.code(), Code::Unauthenticated);
        assert_eq!(err.message(), "token expired: get a new one");
        assert_eq!(auth.remembered(), 0);
    }

    #[test]
    fn refused_tokens_are_not_remembered_and_the_memory_is_bounded() {
        let auth = config(|_| {});
        let forged = claims_token(
            "another-secret",
            json!({"sub": "alice", "exp": now_secs() + 600}),
        );
        assert_eq!(refusal(&auth, &forged), "token signature is invalid");
        assert_eq!(refusal(&auth, &forged), "token signature is invalid");
        assert_eq!(auth.remembered(), 0);
        for i in 0..VERIFIED_TOKENS + 10 {
            let token = claims_token(
                SECRET,
                json!({"sub": format!("user-{i}"), "exp": now_secs() + 600}),
            );
            assert_eq!(auth.verify(&token).expect("valid"), format!("user-{i}"));
            assert!(auth.remembered() <= VERIFIED_TOKENS);
        }
        // Full, it forgets some tokens to remember new ones, never all at
        // once.
        assert!(
            auth.remembered() > VERIFIED_TOKENS / 2,
            "{} remembered",
            auth.remembered()
        );
    }
}
