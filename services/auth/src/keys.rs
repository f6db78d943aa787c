//! The public key file (`CONFAB_JWT_PUBLIC_KEYS`): a PEM public key or a
//! JWKS document, loaded into verification keys and re-read when it
//! changes, keeping the previous keys when a reload fails.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

/// A verification key and the one algorithm it is used with.
#[derive(Clone)]
pub(crate) struct PublicKey {
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
}

/// The contents of the public key file.
pub(crate) enum PublicKeys {
    /// A PEM file: one key, whatever the token's `kid`.
    Pem(PublicKey),
    /// A JWKS file: keys by `kid`.
    Jwks(HashMap<String, PublicKey>),
}

impl PublicKeys {
    pub(crate) fn algorithms(&self) -> Vec<Algorithm> {
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
pub(crate) struct KeyFile {
    pub(crate) path: PathBuf,
    reload_interval: Duration,
    pub(crate) state: RwLock<KeyFileState>,
}

pub(crate) struct KeyFileState {
    pub(crate) keys: PublicKeys,
    /// Counts the loads of `keys`: a token verified under another
    /// generation is verified again.
    pub(crate) generation: u64,
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
    pub(crate) fn open(path: PathBuf, reload_interval: Duration) -> Result<Self, String> {
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
    pub(crate) fn refresh(&self) {
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
    pub(crate) fn reload(&self) -> Result<(), String> {
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
