//! The full check of one token: its algorithm and key (HS256 secret, PEM
//! or JWKS `kid`), its signature, and its claims (`exp`, `nbf`, `sub`,
//! `iss`, `aud`), each refusal saying what is wrong.

use crate::authenticator::{Authenticated, Authenticator, MAX_VALID_UNTIL};
use crate::check_user_id;
use crate::keys::PublicKeys;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::time::{Duration, UNIX_EPOCH};
use tonic::Status;

/// The longest value from a token or the config (`kid`, `iss`, `aud`) echoed back in an error, in characters.
const MAX_SHOWN: usize = 64;

/// RFC 7519: the claims set is UTF-8 JSON. The JSON reader checks the
/// bytes of the claims it reads, but skips an ignored claim's string
/// without checking them, so a signed payload that is not UTF-8 passed
/// (found by fuzzing). Called once the signature holds, so anything else
/// wrong with the token is reported as before.
fn claims_are_utf8(token: &str) -> bool {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    token
        .split('.')
        .nth(1)
        .and_then(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
        .is_some_and(|bytes| std::str::from_utf8(&bytes).is_ok())
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

impl Authenticator {
    /// [`Authenticator::verify_claims`] without the memory of tokens.
    pub(crate) fn verify_in_full(&self, token: &str) -> Result<Authenticated, Status> {
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
        if !claims_are_utf8(token) {
            return Err(unauthenticated(
                "token is malformed: its claims are not UTF-8 JSON".into(),
            ));
        }
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

/// `s` quoted for an error message: escaped, and cut to a bounded length.
pub(crate) fn shown(s: &str) -> String {
    let cut: String = s.chars().take(MAX_SHOWN).collect();
    if cut.len() < s.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}
