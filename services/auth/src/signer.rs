//! [`Signer`]: signs arbitrary claims with any key, standing in for an
//! identity provider in tests and fuzzing. Test-only (the `testing`
//! feature): a production build cannot sign what it is handed.

use crate::now_secs;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// Signs arbitrary claims: HS256 with a secret, RS256 or EdDSA with a PKCS#8
/// private key PEM, optionally naming the key with a `kid` header. For
/// tests and fuzzing that stand in for an identity provider (only with the
/// `testing` feature); the gateway itself only verifies.
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
