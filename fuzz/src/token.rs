//! Target `token`: bearer tokens against the gateway's [`Authenticator`].
//!
//! The first byte of the input picks what the rest is:
//! - [`RAW`]: a token (lossy UTF-8), verified by every server below, and
//!   sent as `authorization: Bearer <token>` metadata, which must give the
//!   same answer;
//! - [`METADATA`]: the raw bytes of the `authorization` metadata value;
//! - [`CLAIMS`]: claims and a header chosen by `arbitrary`, *signed with a
//!   key a server trusts* (HS256, Ed25519, RSA) or one none trusts, so the
//!   checks after the signature (exp, nbf, iss, aud, sub) are reached;
//! - [`SIGNED_JSON`]: `header JSON \n claims JSON`, raw bytes, signed with
//!   the HS256 secret whatever the header says (algorithm confusion).
//!
//! Never a panic; every refusal is UNAUTHENTICATED with a bounded message
//! that shows neither the secret nor the token; an accepted token is one
//! the server holds the key for, its `sub` a valid user id, its `exp` not
//! passed, its `nbf` reached, its `iss` / `aud` those configured.

use arbitrary::{Arbitrary, Unstructured};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use confab_auth::{now_secs, AuthConfig, Authenticated, Authenticator, Signer};
use confab_core::validate::check_user_id;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::Code;

/// Mode byte: the rest is a raw token.
pub const RAW: u8 = 0;
/// Mode byte: the rest is the `authorization` metadata value.
pub const METADATA: u8 = 1;
/// Mode byte: the rest drives [`SignedClaims`] through `arbitrary`.
pub const CLAIMS: u8 = 2;
/// Mode byte: the rest is `header \n claims`, HS256-signed as they are.
pub const SIGNED_JSON: u8 = 3;

/// The HS256 secret of the servers that have one.
pub const SECRET: &str = "confab-fuzz-secret-never-in-an-error";
/// The issuer and audience of the server that requires them.
pub const ISSUER: &str = "https://idp.example";
/// See [`ISSUER`].
pub const AUDIENCE: &str = "confab";

/// A key tokens may be signed with.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// HS256 with [`SECRET`].
    Hs256,
    /// EdDSA with `ed-1` (in `jwks-1.json`, and the PEM server's key).
    Ed1,
    /// EdDSA with `ed-2`: no server trusts it.
    Ed2,
    /// RS256 with `rsa-1` (in `jwks-1.json`).
    Rsa1,
}

/// One server configuration: an authenticator and what it must accept.
pub struct Server {
    /// For messages.
    pub name: &'static str,
    /// What the gateway would run.
    pub auth: Authenticator,
    /// The keys whose tokens it may accept.
    pub trusts: &'static [Key],
    /// Its configuration: the leeway, and the `iss` and `aud` it requires.
    pub config: AuthConfig,
}

impl Server {
    /// A server trusting `trusts`, configured by `f` (from a leeway of 0
    /// and key files never re-read during a run).
    fn new(name: &'static str, trusts: &'static [Key], f: impl Fn(&mut AuthConfig)) -> Self {
        let mut config = AuthConfig {
            leeway: Duration::ZERO,
            reload_interval: Duration::from_secs(24 * 3600),
            ..AuthConfig::default()
        };
        f(&mut config);
        let auth = Authenticator::from_config(config.clone()).expect("fuzz server config");
        Server {
            name,
            auth,
            trusts,
            config,
        }
    }
}

/// The test keys in `tests/fixtures/tokens`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/tokens"
    ))
    .join(name)
}

/// The servers every token is shown to, built once.
pub fn servers() -> &'static [Server] {
    static SERVERS: OnceLock<Vec<Server>> = OnceLock::new();
    SERVERS.get_or_init(|| {
        vec![
            Server::new("hs256", &[Key::Hs256], |c| {
                c.hs256_secret = Some(SECRET.into());
            }),
            Server::new("hs256 with iss, aud and leeway", &[Key::Hs256], |c| {
                c.hs256_secret = Some(SECRET.into());
                c.issuer = Some(ISSUER.into());
                c.audience = Some(AUDIENCE.into());
                c.leeway = Duration::from_secs(30);
            }),
            Server::new("jwks", &[Key::Ed1, Key::Rsa1], |c| {
                c.public_keys = Some(fixture("jwks-1.json"));
                c.leeway = Duration::from_secs(30);
            }),
            Server::new("hs256 and an Ed25519 PEM", &[Key::Hs256, Key::Ed1], |c| {
                c.hs256_secret = Some(SECRET.into());
                c.public_keys = Some(fixture("ed-1.pub.pem"));
            }),
        ]
    })
}

/// The signer of `key`, built once.
pub fn signer(key: Key) -> &'static Signer {
    static SIGNERS: OnceLock<Vec<Signer>> = OnceLock::new();
    let signers = SIGNERS.get_or_init(|| {
        let pem = |name: &str| {
            let bytes = std::fs::read(fixture(name)).expect("fixture key");
            Signer::from_pem(&bytes).expect("fixture key parses")
        };
        vec![
            Signer::hs256(SECRET),
            pem("ed-1.key.pem"),
            pem("ed-2.key.pem"),
            pem("rsa-1.key.pem"),
        ]
    });
    &signers[key as usize]
}

/// The target.
pub fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        RAW => raw(&String::from_utf8_lossy(rest)),
        METADATA => metadata(rest),
        CLAIMS => {
            if let Ok(input) = SignedClaims::arbitrary_take_rest(Unstructured::new(rest)) {
                signed_claims(&input);
            }
        }
        _ => signed_json(rest),
    }
}

fn raw(token: &str) {
    for server in servers() {
        let result = server.auth.verify_claims(token);
        match &result {
            Ok(a) => accepted(server, a),
            Err(status) => refused(status, token),
        }
        // The metadata path gives the same answer, when the value can be
        // sent at all.
        let value = format!("Bearer {token}");
        let Ok(value) = MetadataValue::try_from(value.as_str()) else {
            continue;
        };
        if value.to_str().is_err() {
            continue;
        }
        let mut md = MetadataMap::new();
        md.insert("authorization", value);
        let via_metadata = server.auth.authenticate_claims(&md);
        let trimmed = server.auth.verify_claims(token.trim());
        assert_eq!(
            via_metadata.map_err(|s| s.message().to_string()),
            trimmed.map_err(|s| s.message().to_string()),
            "{}: metadata and raw token differ",
            server.name
        );
    }
}

fn metadata(value: &[u8]) {
    let Ok(value) = MetadataValue::try_from(value) else {
        return;
    };
    let mut md = MetadataMap::new();
    md.insert("authorization", value);
    for server in servers() {
        match server.auth.authenticate_claims(&md) {
            Ok(a) => accepted(server, &a),
            Err(status) => refused(&status, ""),
        }
    }
}

/// A token header and claims, signed with [`SignedClaims::key`].
#[derive(Arbitrary, Debug)]
pub struct SignedClaims {
    /// The signing key.
    pub key: Key,
    /// The header's `kid`.
    pub kid: Kid,
    /// Claims, later ones replacing earlier ones of the same name.
    pub claims: Vec<(Claim, Json)>,
}

/// A `kid` header.
#[derive(Arbitrary, Debug)]
pub enum Kid {
    /// No kid.
    None,
    /// One of the fixture key names.
    Known(KnownKid),
    /// Anything.
    Other(String),
}

/// The kids of the fixture keys.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum KnownKid {
    /// `ed-1`.
    Ed1,
    /// `ed-2`.
    Ed2,
    /// `rsa-1`.
    Rsa1,
}

/// A claim name.
#[derive(Arbitrary, Debug)]
pub enum Claim {
    /// `sub`.
    Sub,
    /// `exp`.
    Exp,
    /// `nbf`.
    Nbf,
    /// `iat`.
    Iat,
    /// `iss`.
    Iss,
    /// `aud`.
    Aud,
    /// Anything.
    Other(String),
}

/// A claim value.
#[derive(Arbitrary, Debug)]
pub enum Json {
    /// `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// An unsigned number.
    U64(u64),
    /// A signed number.
    I64(i64),
    /// A float (NaN and infinities become `null`).
    F64(f64),
    /// Now plus this many seconds (a time near the present).
    FromNow(i32),
    /// Any string.
    Str(String),
    /// A string the servers care about.
    Known(Known),
    /// An array of those.
    List(Vec<Known>),
}

/// Strings the servers compare claims with, and near misses.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Known {
    /// A valid user id.
    Alice,
    /// [`ISSUER`].
    Issuer,
    /// [`AUDIENCE`].
    Audience,
    /// Empty.
    Empty,
    /// An invalid user id (whitespace).
    Spaced,
    /// A user id one byte too long.
    TooLong,
}

impl Known {
    fn text(self) -> String {
        match self {
            Known::Alice => "alice".into(),
            Known::Issuer => ISSUER.into(),
            Known::Audience => AUDIENCE.into(),
            Known::Empty => String::new(),
            Known::Spaced => "a b".into(),
            Known::TooLong => "x".repeat(confab_core::validate::MAX_USER_ID_LEN + 1),
        }
    }
}

impl Json {
    fn value(&self, now: u64) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::U64(n) => Value::from(*n),
            Json::I64(n) => Value::from(*n),
            Json::F64(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Json::FromNow(d) => Value::from(now as i64 + i64::from(*d)),
            Json::Str(s) => Value::String(s.clone()),
            Json::Known(k) => Value::String(k.text()),
            Json::List(l) => Value::Array(l.iter().map(|k| Value::String(k.text())).collect()),
        }
    }
}

impl SignedClaims {
    /// The claims as JSON.
    pub fn to_json(&self, now: u64) -> Map<String, Value> {
        let mut map = Map::new();
        for (claim, value) in &self.claims {
            let name = match claim {
                Claim::Sub => "sub",
                Claim::Exp => "exp",
                Claim::Nbf => "nbf",
                Claim::Iat => "iat",
                Claim::Iss => "iss",
                Claim::Aud => "aud",
                Claim::Other(s) => s.as_str(),
            };
            map.insert(name.to_string(), value.value(now));
        }
        map
    }

    /// The token.
    pub fn token(&self, now: u64) -> Option<String> {
        let signer = signer(self.key);
        let signer = match &self.kid {
            Kid::None => signer.clone(),
            Kid::Known(k) => signer.clone().with_kid(match k {
                KnownKid::Ed1 => "ed-1",
                KnownKid::Ed2 => "ed-2",
                KnownKid::Rsa1 => "rsa-1",
            }),
            Kid::Other(s) => signer.clone().with_kid(s),
        };
        signer.sign(&Value::Object(self.to_json(now))).ok()
    }
}

fn signed_claims(input: &SignedClaims) {
    let now = now_secs();
    let claims = input.to_json(now);
    let Some(token) = input.token(now) else {
        return;
    };
    on_every_server(&token, |server, a, before, after| {
        assert!(
            server.trusts.contains(&input.key),
            "{}: accepted a token signed with {:?}",
            server.name,
            input.key
        );
        matches_claims(server, a, &claims, before, after);
    });
}

fn signed_json(rest: &[u8]) {
    let (header, claims) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&br#"{"alg":"HS256","typ":"JWT"}"#[..], rest),
    };
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let Ok(signature) = jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::HS256) else {
        return;
    };
    let token = format!("{input}.{signature}");
    on_every_server(&token, |server, a, before, after| {
        // An HMAC signature is only ever taken as HS256, and only by a
        // server that holds the secret.
        assert!(server.trusts.contains(&Key::Hs256), "{}", server.name);
        let header: Value = serde_json::from_slice(header).expect("accepted header is JSON");
        assert_eq!(header["alg"], "HS256", "{}", server.name);
        let claims: Value = serde_json::from_slice(claims).expect("accepted claims are JSON");
        let claims = claims.as_object().expect("accepted claims are an object");
        matches_claims(server, a, claims, before, after);
    });
}

/// Verifies `token` on every server: a refusal must hold what every
/// refusal holds; an acceptance what every acceptance holds, then `check`,
/// given the clock just before and just after the call.
fn on_every_server(token: &str, check: impl Fn(&Server, &Authenticated, u64, u64)) {
    for server in servers() {
        let before = now_secs();
        let result = server.auth.verify_claims(token);
        let after = now_secs();
        match &result {
            Err(status) => refused(status, token),
            Ok(a) => {
                accepted(server, a);
                check(server, a, before, after);
            }
        }
    }
}

/// What holds for every refusal.
fn refused(status: &tonic::Status, token: &str) {
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let m = status.message();
    assert!(!m.is_empty());
    assert!(m.len() <= 1024, "refusal message of {} bytes", m.len());
    assert!(!m.contains(SECRET), "the secret in a refusal: {m}");
    assert!(
        token.len() <= 100 || !m.contains(token),
        "the token in a refusal: {m}"
    );
}

/// What holds for every accepted token.
fn accepted(server: &Server, a: &Authenticated) {
    assert!(
        check_user_id(&a.user).is_ok(),
        "{}: sub {:?}",
        server.name,
        a.user
    );
    assert!(
        a.valid_until > SystemTime::now() - Duration::from_secs(2),
        "{}: accepted a token that is no longer valid",
        server.name
    );
}

/// An accepted token's claims are what the server requires.
fn matches_claims(
    server: &Server,
    a: &Authenticated,
    claims: &Map<String, Value>,
    before: u64,
    after: u64,
) {
    let name = server.name;
    assert_eq!(
        claims.get("sub").and_then(Value::as_str),
        Some(a.user.as_str()),
        "{name}"
    );
    assert_eq!(
        claims.get("exp").and_then(Value::as_u64),
        Some(a.exp),
        "{name}"
    );
    // Valid only before exp (plus the leeway), at the time of the check.
    assert!(
        before < a.exp.saturating_add(server.config.leeway.as_secs()),
        "{name}: expired"
    );
    if let Some(nbf) = claims.get("nbf").and_then(Value::as_u64) {
        assert!(
            nbf <= after.saturating_add(server.config.leeway.as_secs()),
            "{name}: nbf {nbf} not reached"
        );
    }
    if let Some(issuer) = server.config.issuer.as_deref() {
        assert_eq!(
            claims.get("iss").and_then(Value::as_str),
            Some(issuer),
            "{name}"
        );
    }
    if let Some(audience) = server.config.audience.as_deref() {
        let aud = claims.get("aud");
        let ok = aud.and_then(Value::as_str) == Some(audience)
            || aud
                .and_then(Value::as_array)
                .is_some_and(|l| l.iter().any(|v| v.as_str() == Some(audience)));
        assert!(ok, "{name}: aud {aud:?}");
    }
}
