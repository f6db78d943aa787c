//! The crate's unit tests: verification and its refusals, leeway, issuer
//! and audience, minting, configuration, bearer metadata and the memory of
//! verified tokens.

use crate::verify::shown;
use crate::{
    check_user_id, now_secs, AuthConfig, Authenticator, DEFAULT_LEEWAY, DEFAULT_RELOAD_INTERVAL,
    MAX_VALID_UNTIL, VERIFIED_TOKENS,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, UNIX_EPOCH};
use tonic::metadata::MetadataMap;
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

/// Sets one required claim's expected value on a configuration.
type Expect = fn(&mut AuthConfig, &str);

#[test]
fn issuer_and_audience_when_configured_are_required_and_matched() {
    let exp = now_secs() + 60;
    let cases: [(&str, &str, &str, &str, Expect); 2] = [
        (
            "iss",
            "issuer",
            "https://idp.example",
            "https://evil.example",
            |c, v| c.issuer = Some(v.into()),
        ),
        ("aud", "audience", "confab", "billing", |c, v| {
            c.audience = Some(v.into())
        }),
    ];
    for (claim, name, expected, other, set) in cases {
        let auth = config(|c| set(c, expected));
        let none = claims_token(SECRET, json!({"sub": "a", "exp": exp}));
        assert_eq!(
            refusal(&auth, &none),
            format!("token has no {claim} claim: expected {claim} \"{expected}\"")
        );
        let wrong = claims_token(SECRET, json!({"sub": "a", "exp": exp, claim: other}));
        assert_eq!(
            refusal(&auth, &wrong),
            format!("token {name} is wrong: expected {claim} \"{expected}\"")
        );
        let right = claims_token(SECRET, json!({"sub": "a", "exp": exp, claim: expected}));
        assert_eq!(auth.verify(&right).ok().as_deref(), Some("a"), "{claim}");
        // Not configured: any value, or none, is fine.
        assert_eq!(config(|_| {}).verify(&wrong).ok().as_deref(), Some("a"));
        // Minted tokens carry the configured claim.
        let minted = auth.mint("b", 60).expect("mint");
        assert_eq!(auth.verify(&minted).ok().as_deref(), Some("b"), "{claim}");
    }
    // An audience among several is enough.
    let auth = config(|c| c.audience = Some("confab".into()));
    let among = claims_token(
        SECRET,
        json!({"sub": "a", "exp": exp, "aud": ["billing", "confab"]}),
    );
    assert_eq!(auth.verify(&among).ok().as_deref(), Some("a"));
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

/// A signed token whose claims are not UTF-8 is malformed, even when the
/// bad bytes are in a claim nobody reads (found by fuzzing: the JSON reader
/// skipped them).
#[test]
fn claims_that_are_not_utf8_are_malformed() {
    let auth = config(|_| {});
    let signed = |payload: &[u8]| {
        let input = format!(
            "{}.{}",
            base64_url(br#"{"alg":"HS256","typ":"JWT"}"#),
            base64_url(payload)
        );
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let signature =
            jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::HS256).expect("sign");
        format!("{input}.{signature}")
    };
    let exp = crate::now_secs() + 3600;
    let claims = |note: &[u8]| {
        let mut c = format!(r#"{{"sub":"alice","exp":{exp},"note":""#).into_bytes();
        c.extend_from_slice(note);
        c.extend_from_slice(br#""}"#);
        c
    };
    assert_eq!(
        auth.verify(&signed(&claims("ünïcode".as_bytes())))
            .expect("UTF-8 claims pass"),
        "alice"
    );
    assert_eq!(
        refusal(&auth, &signed(&claims(b"RS25\xff\xff"))),
        "token is malformed: its claims are not UTF-8 JSON"
    );
}
