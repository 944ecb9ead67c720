//! Verification keys, each pinned to one algorithm.
//!
//! An asymmetric key (RS, PS, ES, EdDSA) is also handed to the host's `signatures`
//! capability, which checks signatures natively: an RS256 check costs about 30 µs there
//! against about 2 ms in this plugin's WebAssembly (docs/BENCHMARKS.md, entry 28). Keys the host
//! does not take (RSA under 2048 bits, say) and HMAC keys are checked here with
//! `jsonwebtoken`, as before. Every key is parsed by `jsonwebtoken` as well, so what the
//! configuration accepts and the errors it gets do not depend on the host.

use std::borrow::Cow;

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use portcullis_sdk::Level;
use portcullis_sdk::signatures::{self, VerifyingKey};
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
    /// The same key held by the host, which then checks the signatures; none for HMAC keys
    /// and keys the host does not take.
    host: Option<VerifyingKey>,
}

/// A configuration error: JSON pointer suffix and message.
pub(crate) struct KeyError(pub String, pub String);

fn err(pointer: &str, message: impl Into<String>) -> KeyError {
    KeyError(pointer.to_owned(), message.into())
}

impl KeyConfig {
    pub(crate) fn load(&self) -> Result<Key, KeyError> {
        let mut key = self.decode()?;
        key.host = match (&self.pem, &self.jwk) {
            (Some(pem), _) => host_key(key.alg, |alg| VerifyingKey::from_pem(pem, alg)),
            (_, Some(jwk)) => host_key(key.alg, |alg| VerifyingKey::from_jwk(&jwk.to_string(), alg)),
            _ => None,
        };
        Ok(key)
    }

    fn decode(&self) -> Result<Key, KeyError> {
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
        Ok(Key { kid: self.kid.clone(), alg, key, host: None })
    }
}

/// `alg` as the host's `signatures` names it; none for HMAC.
fn host_algorithm(alg: Algorithm) -> Option<signatures::Algorithm> {
    use signatures::Algorithm as H;
    Some(match alg {
        Algorithm::RS256 => H::Rs256,
        Algorithm::RS384 => H::Rs384,
        Algorithm::RS512 => H::Rs512,
        Algorithm::PS256 => H::Ps256,
        Algorithm::PS384 => H::Ps384,
        Algorithm::PS512 => H::Ps512,
        Algorithm::ES256 => H::Es256,
        Algorithm::ES384 => H::Es384,
        Algorithm::EdDSA => H::EdDsa,
        // HMAC (its secret is this plugin's), and algorithms added to jsonwebtoken later.
        _ => return None,
    })
}

/// The host's copy of a key for `alg`, made by `make`; none (and a log line saying why) when
/// the host does not take it, so this plugin checks it.
fn host_key(
    alg: Algorithm,
    make: impl FnOnce(signatures::Algorithm) -> Result<VerifyingKey, signatures::KeyError>,
) -> Option<VerifyingKey> {
    let host_alg = host_algorithm(alg)?;
    match make(host_alg) {
        Ok(key) => Some(key),
        Err(signatures::KeyError::Unsupported(why) | signatures::KeyError::Invalid(why)) => {
            let message = format!("{alg:?} key checked in the plugin, not by the host: {why}");
            portcullis_sdk::log(Level::Info, &message);
            None
        }
    }
}

impl Key {
    /// [`Key::verify_parsed`], parsing the payload first.
    #[cfg(test)]
    pub(crate) fn verify(&self, token: &str) -> Option<serde_json::Value> {
        let payload = crate::unverified_payload(token)?;
        self.verify_parsed(token, &payload).map(Cow::into_owned)
    }

    /// The token's claims when this key verifies its signature; claim checks are done by the
    /// caller with the plugin's clock. `parsed` is the token's payload as the caller parsed it
    /// (its second segment, base64url without padding, as JSON): a key the host checks hands
    /// it back once the signature over that segment holds, instead of decoding it again.
    pub(crate) fn verify_parsed<'p>(
        &self,
        token: &str,
        parsed: &'p serde_json::Value,
    ) -> Option<Cow<'p, serde_json::Value>> {
        if let Some(host) = &self.host {
            return verify_with_host(host, token, parsed);
        }
        let mut validation = Validation::new(self.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<serde_json::Value>(token, &self.key, &validation)
            .ok()
            .map(|data| Cow::Owned(data.claims))
    }
}

/// [`Key::verify_parsed`] with the signature checked by the host: the token must be three
/// base64url parts (RFC 7515 §7.1), the signature over the first two as sent; the claims are
/// `parsed`, the caller's parse of the second.
fn verify_with_host<'p>(
    key: &VerifyingKey,
    token: &str,
    parsed: &'p serde_json::Value,
) -> Option<Cow<'p, serde_json::Value>> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (input, signature) = token.rsplit_once('.')?;
    let (_, payload) = input.split_once('.')?;
    if payload.contains('.') {
        return None;
    }
    let signature = b64.decode(signature).ok()?;
    if !key.verify(input.as_bytes(), &signature) {
        return None;
    }
    Some(Cow::Borrowed(parsed))
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
        let host = serde_json::to_string(jwk).ok().and_then(|text| host_key(alg, |a| VerifyingKey::from_jwk(&text, a)));
        keys.push(Key { kid: jwk.common.key_id.clone(), alg, key, host });
    }
    Ok(keys)
}
