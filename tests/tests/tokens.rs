//! Tokens (issue 5, token part): RS256 and EdDSA keys from a PEM or a JWKS
//! file, rotation by rewriting the file, and a `Connect` stream closed with
//! UNAUTHENTICATED when its token expires.

use confab_auth::{now_secs, AuthConfig, Authenticator, Signer, STREAM_EXPIRED};
use confab_proto::v1::server_frame;
use confab_tests::{Embedded, User, DEADLINE, SECRET};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tonic::Code;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tokens")
        .join(name)
}

/// The signer for fixture key `name` (`rsa-1`, `ed-2`, ...), naming itself
/// with `kid`.
fn signer(name: &str, kid: &str) -> Signer {
    let pem = std::fs::read(fixture(&format!("{name}.key.pem"))).expect("fixture key");
    Signer::from_pem(&pem).expect("private key").with_kid(kid)
}

fn token(signer: &Signer, user: &str) -> String {
    signer.sign_user(user, now_secs() + 600).expect("sign")
}

/// An authenticator for the key file `path` (no HS256 secret, no leeway),
/// checking the file on every token.
fn keys_at(path: &Path) -> Authenticator {
    Authenticator::from_config(AuthConfig {
        public_keys: Some(path.to_path_buf()),
        leeway: Duration::ZERO,
        reload_interval: Duration::ZERO,
        ..AuthConfig::default()
    })
    .expect("key file loads")
}

/// Asserts `token` is refused with UNAUTHENTICATED and exactly `message`.
fn refused(auth: &Authenticator, token: &str, message: &str) {
    let err = auth.verify(token).expect_err("refused");
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    assert_eq!(err.message(), message);
    assert!(!err.message().contains("BEGIN"), "no key material");
}

/// `auth` accepts a token for `user` signed with the key `key` under the
/// key id `kid`.
fn accepted(auth: &Authenticator, key: &str, kid: &str, user: &str) {
    let verified = auth.verify(&token(&signer(key, kid), user));
    assert_eq!(verified.ok().as_deref(), Some(user), "{key} as {kid}");
}

/// `auth` refuses each of alice's tokens signed with the key `key` under
/// the key id `kid`, saying `message`: `(key, kid, message)`.
fn refused_all(auth: &Authenticator, signed: &[(&str, &str, &str)]) {
    for (key, kid, message) in signed {
        refused(auth, &token(&signer(key, kid), "alice"), message);
    }
}

#[test]
fn rs256_and_eddsa_from_pem() {
    let rsa = keys_at(&fixture("rsa-1.pub.pem"));
    accepted(&rsa, "rsa-1", "any", "alice");
    refused_all(
        &rsa,
        &[
            ("rsa-2", "any", "token signature is invalid"),
            (
                "ed-1",
                "any",
                "token algorithm EdDSA is not allowed with this key, which is for RS256",
            ),
        ],
    );
    refused(
        &rsa,
        &Signer::hs256(SECRET)
            .sign_user("alice", now_secs() + 60)
            .expect("sign"),
        "token algorithm HS256 is not allowed: this server accepts RS256",
    );

    let ed = keys_at(&fixture("ed-1.pub.pem"));
    accepted(&ed, "ed-1", "x", "bob");
    refused(
        &ed,
        &token(&signer("ed-2", "x"), "bob"),
        "token signature is invalid",
    );
    refused(
        &ed,
        &signer("ed-1", "x")
            .sign_user("bob", now_secs() - 5)
            .expect("sign"),
        "token expired: get a new one",
    );
}

#[test]
fn jwks_picks_the_key_by_kid() {
    let auth = keys_at(&fixture("jwks-1.json"));
    accepted(&auth, "rsa-1", "rsa-1", "alice");
    accepted(&auth, "ed-1", "ed-1", "bob");
    refused_all(
        &auth,
        &[
            (
                "rsa-2",
                "rsa-2",
                "token kid \"rsa-2\" is unknown: no such key in the key set",
            ),
            // Right kid, wrong key: the signature does not verify.
            ("rsa-2", "rsa-1", "token signature is invalid"),
            // An RSA signature presented under the Ed25519 key's kid.
            (
                "rsa-1",
                "ed-1",
                "token algorithm RS256 is not allowed with this key, which is for EdDSA",
            ),
        ],
    );
    let no_kid = Signer::from_pem(&std::fs::read(fixture("ed-1.key.pem")).expect("key"))
        .expect("key")
        .sign_user("bob", now_secs() + 60)
        .expect("sign");
    refused(
        &auth,
        &no_kid,
        "token has no kid header: the key set has several keys, so the token must name one",
    );
    // A hostile kid is escaped and cut short in the message.
    let long = format!("{}\n", "k".repeat(500));
    let err = auth
        .verify(&token(&signer("ed-1", &long), "bob"))
        .expect_err("unknown kid");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().len() < 150, "{}", err.message());
    assert!(!err.message().contains('\n'));
}

#[test]
fn claims_rules_apply_to_public_key_tokens() {
    let auth = Authenticator::from_config(AuthConfig {
        public_keys: Some(fixture("jwks-1.json")),
        issuer: Some("https://idp.example".into()),
        audience: Some("confab".into()),
        leeway: Duration::ZERO,
        ..AuthConfig::default()
    })
    .expect("config");
    let ed = signer("ed-1", "ed-1");
    let now = now_secs();
    let sign = |claims: serde_json::Value| ed.sign(&claims).expect("sign");
    let good = serde_json::json!({
        "sub": "alice", "exp": now + 60, "iss": "https://idp.example", "aud": "confab"
    });
    let verified = auth.verify_claims(&sign(good.clone())).expect("valid");
    assert_eq!(verified.user, "alice");
    assert_eq!(verified.exp, now + 60);
    let with = |k: &str, v: serde_json::Value| {
        let mut c = good.clone();
        c[k] = v;
        sign(c)
    };
    let without = |k: &str| {
        let mut c = good.clone();
        c.as_object_mut().expect("object").remove(k);
        sign(c)
    };
    refused(
        &auth,
        &with("iss", "https://evil.example".into()),
        "token issuer is wrong: expected iss \"https://idp.example\"",
    );
    refused(
        &auth,
        &without("iss"),
        "token has no iss claim: expected iss \"https://idp.example\"",
    );
    refused(
        &auth,
        &with("aud", "billing".into()),
        "token audience is wrong: expected aud \"confab\"",
    );
    refused(
        &auth,
        &without("aud"),
        "token has no aud claim: expected aud \"confab\"",
    );
    refused(
        &auth,
        &without("exp"),
        "token has no exp claim: tokens must expire",
    );
    refused(
        &auth,
        &with("exp", (now - 1).into()),
        "token expired: get a new one",
    );
    refused(
        &auth,
        &with("nbf", (now + 60).into()),
        "token is not valid yet: its nbf is in the future",
    );
}

/// Writes `contents` to `path` with mtime `at`, so a change is seen even
/// on a file system with coarse timestamps.
fn write_at(path: &Path, contents: &[u8], at: SystemTime) {
    std::fs::write(path, contents).expect("write key file");
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(at))
        .expect("set mtime");
}

/// Writes the fixture `name` to `path` with mtime `at`.
fn write_fixture_at(path: &Path, name: &str, at: SystemTime) {
    write_at(path, &std::fs::read(fixture(name)).expect("fixture"), at);
}

/// A key file `file` in a new temporary directory, holding the fixture
/// `name`, last modified 100 s ago (`t0`): the directory, the path, `t0`.
fn key_file(file: &str, name: &str) -> (tempfile::TempDir, PathBuf, SystemTime) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(file);
    let t0 = SystemTime::now() - Duration::from_secs(100);
    write_fixture_at(&path, name, t0);
    (dir, path, t0)
}

#[test]
fn rewriting_the_jwks_file_rotates_keys() {
    let (_dir, path, t0) = key_file("jwks.json", "jwks-1.json");
    let auth = keys_at(&path);
    let old = token(&signer("rsa-1", "rsa-1"), "alice");
    let new = token(&signer("rsa-2", "rsa-2"), "alice");
    assert!(auth.verify(&old).is_ok());
    refused(
        &auth,
        &new,
        "token kid \"rsa-2\" is unknown: no such key in the key set",
    );

    // Rotate: rsa-1 and ed-1 are gone, rsa-2 and ed-2 are in. Noticed by
    // its mtime on the next token (the check interval is zero here).
    write_fixture_at(&path, "jwks-2.json", t0 + Duration::from_secs(10));
    assert_eq!(auth.verify(&new).ok().as_deref(), Some("alice"));
    assert!(auth.verify(&token(&signer("ed-2", "ed-2"), "bob")).is_ok());
    refused(
        &auth,
        &old,
        "token kid \"rsa-1\" is unknown: no such key in the key set",
    );

    // A broken rewrite keeps the keys in use, on the mtime check and on
    // an explicit reload.
    write_at(&path, b"{\"keys\": [", t0 + Duration::from_secs(20));
    assert!(auth.verify(&new).is_ok());
    let err = auth.reload().expect_err("broken file");
    assert!(err.contains("not a JWKS document"), "{err}");
    assert!(auth.verify(&new).is_ok());

    // Back to the first set via an explicit reload, whatever the mtime.
    write_fixture_at(&path, "jwks-1.json", t0 + Duration::from_secs(20));
    auth.reload().expect("reload");
    assert!(auth.verify(&old).is_ok());
    refused(
        &auth,
        &new,
        "token kid \"rsa-2\" is unknown: no such key in the key set",
    );
}

#[test]
fn the_check_interval_bounds_how_often_the_file_is_read() {
    let (_dir, path, t0) = key_file("keys.pem", "ed-1.pub.pem");
    let auth = Authenticator::from_config(AuthConfig {
        public_keys: Some(path.clone()),
        reload_interval: Duration::from_secs(3600),
        ..AuthConfig::default()
    })
    .expect("config");
    let one = token(&signer("ed-1", "k"), "alice");
    let two = token(&signer("ed-2", "k"), "alice");
    write_fixture_at(&path, "ed-2.pub.pem", t0 + Duration::from_secs(10));
    // Within the interval the old key is still in use...
    assert!(auth.verify(&one).is_ok());
    refused(&auth, &two, "token signature is invalid");
    // ...until the file is looked at again.
    auth.reload().expect("reload");
    assert!(auth.verify(&two).is_ok());
    refused(&auth, &one, "token signature is invalid");
}

#[test]
fn bad_key_files_are_refused_at_startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [(&str, &[u8], &str); 3] = [
        ("empty.json", b"{\"keys\": []}", "no RS256 or EdDSA signing key"),
        ("nokid.json", br#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#, "has no kid"),
        ("junk.pem", b"hello", "expected a PEM public key or a JWKS document"),
    ];
    for (name, contents, want) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).expect("write");
        let err = Authenticator::from_config(AuthConfig {
            public_keys: Some(path),
            ..AuthConfig::default()
        })
        .expect_err(name);
        assert!(err.contains(want), "{name}: {err}");
    }
}

/// Waits for `session` to end; returns its status (or the frames it got
/// first, in the panic message, if it does not end in time).
async fn closing_status(session: &mut confab_tests::Session) -> tonic::Status {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut frames = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, session.message()).await {
            Err(_) => panic!("stream not closed within {DEADLINE:?}; got {frames:?}"),
            Ok(Ok(Some(frame))) => frames.push(frame),
            Ok(Ok(None)) => panic!("stream ended without a status; got {frames:?}"),
            Ok(Err(status)) => return status,
        }
    }
}

#[tokio::test]
async fn a_stream_is_closed_when_its_token_expires() {
    // No leeway, so the stream ends at exp itself.
    let server = Embedded::start_with(&[("CONFAB_JWT_LEEWAY_SECS", "0")]).await;
    let bob = server.user("bob").await;
    let conv = bob.group("expiry", &["carol"]).await;
    let mut bob_stream = bob.live().await;

    let exp = now_secs() + 2;
    let short = Authenticator::new(SECRET)
        .mint_expiring_at("alice", exp)
        .expect("mint");
    let alice = User::with_token(server.addr, "alice", &short).await;
    let mut alice_stream = alice.live().await;

    // Bob's stream carries traffic while Alice's waits for its expiry.
    let before = bob.send(&conv.id, "b1", "before").await.expect("send");
    bob_stream
        .messages_until(&conv.id, before.seq)
        .await
        .expect("bob receives before");

    let status = closing_status(&mut alice_stream).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(status.message(), STREAM_EXPIRED);
    assert!(now_secs() >= exp, "closed at expiry, not before");

    // Alice's unary calls are refused too; Bob is unaffected.
    let err = alice
        .history(&conv.id, None, None, 10)
        .await
        .expect_err("expired");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "token expired: get a new one");
    let after = bob.send(&conv.id, "b2", "after").await.expect("send");
    let (got, _) = bob_stream
        .messages_until(&conv.id, after.seq)
        .await
        .expect("bob still receives");
    assert_eq!(got.last().map(|m| m.seq), Some(after.seq));
    bob_stream
        .send(confab_proto::v1::client_frame::Frame::Ping(
            confab_proto::v1::Ping { nonce: 7 },
        ))
        .await;
    loop {
        match bob_stream.next_frame().await.expect("bob's stream is open") {
            server_frame::Frame::Pong(p) => {
                assert_eq!(p.nonce, 7);
                break;
            }
            _ => continue,
        }
    }
    server.stop().await;
}
