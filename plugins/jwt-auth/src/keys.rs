//! Verification keys, each pinned to one algorithm.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// One key in `keys`: exactly one of `pem`, `secret` or `jwk`, with its algorithm.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Matched against the token's `kid` header; a key without one matches any `kid`.
    #[serde(default)]
    pub kid: Option<String>,
    /// The one algorithm this key verifies: `RS256`, `RS384`, `RS512`, `PS256`, `PS384`,
    /// `PS512`, `ES256`, `ES384`, `EdDSA`, `HS256`, `HS384` or `HS512`.
    pub alg: String,
    /// A PEM public key (RSA, EC or Ed25519), for the asymmetric algorithms.
    #[serde(default)]
    pub pem: Option<String>,
    /// A shared secret (UTF-8 text, at least 32 bytes), for the HS algorithms.
    #[serde(default)]
    pub secret: Option<String>,
    /// A public JWK (RFC 7517) object.
    #[serde(default)]
    pub jwk: Option<serde_json::Value>,
}

/// A loaded key.
pub(crate) struct Key {
    pub kid: Option<String>,
    pub alg: Algorithm,
    key: DecodingKey,
}

/// A configuration error: JSON pointer suffix and message.
pub(crate) struct KeyError(pub String, pub String);

fn err(pointer: &str, message: impl Into<String>) -> KeyError {
    KeyError(pointer.to_owned(), message.into())
}

impl KeyConfig {
    pub(crate) fn load(&self) -> Result<Key, KeyError> {
        let alg: Algorithm = self.alg.parse().map_err(|_| err("/alg", format!("unknown algorithm `{}`", self.alg)))?;
        let hmac = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
        let key = match (&self.pem, &self.secret, &self.jwk) {
            (Some(pem), None, None) if !hmac => {
                let pem = pem.as_bytes();
                match alg {
                    Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
                    _ => DecodingKey::from_rsa_pem(pem),
                }
                .map_err(|e| err("/pem", format!("not a PEM public key for {alg:?}: {e}")))?
            }
            (None, Some(secret), None) if hmac => {
                if secret.len() < 32 {
                    return Err(err("/secret", "HMAC secrets must be at least 32 bytes (RFC 7518 §3.2)"));
                }
                DecodingKey::from_secret(secret.as_bytes())
            }
            (None, None, Some(jwk)) => {
                let jwk: Jwk = serde_json::from_value(jwk.clone()).map_err(|e| err("/jwk", e.to_string()))?;
                check_jwk_alg(&jwk, alg).map_err(|m| err("/jwk", m))?;
                DecodingKey::from_jwk(&jwk).map_err(|e| err("/jwk", e.to_string()))?
            }
            _ if hmac => return Err(err("", format!("{alg:?} needs exactly `secret`"))),
            _ => return Err(err("", format!("{alg:?} needs exactly one of `pem` or `jwk`"))),
        };
        Ok(Key { kid: self.kid.clone(), alg, key })
    }
}

impl Key {
    /// The token's claims when this key verifies its signature; claim checks are done by the
    /// caller with the plugin's clock.
    pub(crate) fn verify(&self, token: &str) -> Option<serde_json::Value> {
        let mut validation = Validation::new(self.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<serde_json::Value>(token, &self.key, &validation).ok().map(|data| data.claims)
    }
}

/// The algorithm a JWK is pinned to: its `alg` member, or the one its key type implies.
fn jwk_alg(jwk: &Jwk) -> Result<Algorithm, String> {
    if let Some(alg) = jwk.common.key_algorithm {
        return key_algorithm(alg).ok_or_else(|| format!("JWK algorithm {alg:?} is not a signature algorithm"));
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Ok(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Ok(Algorithm::ES256),
            EllipticCurve::P384 => Ok(Algorithm::ES384),
            ref other => Err(format!("unsupported curve {other:?}")),
        },
        AlgorithmParameters::OctetKeyPair(_) => Ok(Algorithm::EdDSA),
        AlgorithmParameters::OctetKey(_) => Err("a symmetric JWK must state its `alg`".into()),
        _ => Err("unsupported JWK key type".into()),
    }
}

fn key_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

fn check_jwk_alg(jwk: &Jwk, configured: Algorithm) -> Result<(), String> {
    let implied = jwk_alg(jwk)?;
    if implied != configured {
        return Err(format!("the JWK is for {implied:?}, not {configured:?}"));
    }
    Ok(())
}

/// Loads every signature key of a JWKS document (JSON text or object). Keys marked
/// `"use": "enc"` are skipped.
pub(crate) fn load_jwks(document: serde_json::Value) -> Result<Vec<Key>, KeyError> {
    let set: JwkSet = match document {
        serde_json::Value::String(text) => serde_json::from_str(&text),
        other => serde_json::from_value(other),
    }
    .map_err(|e| err("", format!("not a JWKS document: {e}")))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let at = format!("/keys/{i}");
        let alg = jwk_alg(jwk).map_err(|m| KeyError(at.clone(), m))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| KeyError(at.clone(), e.to_string()))?;
        keys.push(Key { kid: jwk.common.key_id.clone(), alg, key });
    }
    Ok(keys)
}
