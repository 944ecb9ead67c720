//! The public keys behind Portcullis' `signatures` capability (`wit/capabilities.wit`): a
//! JSON Web Key (RFC 7517) or PEM public key (RFC 7468) pinned to one JWS signature algorithm
//! (RFC 7518 §3.1, RFC 8037), checked with `ring`.
//!
//! The host serves the capability with this crate, and the SDK's native test fake uses the
//! same code, so a plugin's unit tests check signatures exactly as the gateway does.
//!
//! **Why `ring`.** It is already in the gateway (rustls' provider), its RSA, ECDSA and Ed25519
//! verification is constant-time assembly, and an RS256 check costs about 30 µs natively on
//! the bench machine, against about 360 µs for the RustCrypto `rsa` crate natively and about
//! 2 ms for that crate compiled into a plugin (docs/BENCHMARKS.md, entry 28). It takes RSA
//! moduli of 2048 to 8192 bits; a smaller or larger key is [`KeyError::Unsupported`], so a
//! plugin can fall back to its own check for it.
//!
//! ```
//! use portcullis_signatures::{Algorithm, VerifyingKey};
//! // RFC 7515, appendix A.3: an ES256 JWS and its key.
//! let jwk = r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
//!              "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
//! let key = VerifyingKey::from_jwk(jwk, Algorithm::Es256).unwrap();
//! let jws = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
//! let (input, signature) = jws.rsplit_once('.').unwrap();
//! let signature = portcullis_signatures::base64url(signature).unwrap();
//! assert!(key.verify(input.as_bytes(), &signature));
//! assert!(!key.verify(b"another message", &signature));
//! ```

use base64::Engine as _;
use ring::signature::{self as sig, RsaPublicKeyComponents, UnparsedPublicKey, VerificationAlgorithm};
use serde::Deserialize;
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::{PublicKey, RSAPublicKey};
use x509_parser::x509::SubjectPublicKeyInfo;

/// A JWS signature algorithm this crate checks (RFC 7518 §3.1; `EdDSA` from RFC 8037 §3.1, with
/// Ed25519 keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256, MGF1 with SHA-256, a 32-byte salt.
    Ps256,
    /// RSASSA-PSS with SHA-384, MGF1 with SHA-384, a 48-byte salt.
    Ps384,
    /// RSASSA-PSS with SHA-512, MGF1 with SHA-512, a 64-byte salt.
    Ps512,
    /// ECDSA on P-256 with SHA-256; signatures are `r || s`, 64 bytes.
    Es256,
    /// ECDSA on P-384 with SHA-384; signatures are `r || s`, 96 bytes.
    Es384,
    /// EdDSA with Ed25519 (RFC 8032); signatures are 64 bytes.
    EdDsa,
}

impl Algorithm {
    /// Every algorithm, in the WIT enum's order.
    pub const ALL: [Algorithm; 9] = [
        Algorithm::Rs256,
        Algorithm::Rs384,
        Algorithm::Rs512,
        Algorithm::Ps256,
        Algorithm::Ps384,
        Algorithm::Ps512,
        Algorithm::Es256,
        Algorithm::Es384,
        Algorithm::EdDsa,
    ];

    /// The JWS `alg` name, e.g. `RS256` or `EdDSA`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Rs384 => "RS384",
            Algorithm::Rs512 => "RS512",
            Algorithm::Ps256 => "PS256",
            Algorithm::Ps384 => "PS384",
            Algorithm::Ps512 => "PS512",
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
            Algorithm::EdDsa => "EdDSA",
        }
    }

    /// The algorithm a JWS `alg` name stands for; none for names this crate does not check
    /// (`HS256`, `none`, …).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Some(match name {
            "RS256" => Algorithm::Rs256,
            "RS384" => Algorithm::Rs384,
            "RS512" => Algorithm::Rs512,
            "PS256" => Algorithm::Ps256,
            "PS384" => Algorithm::Ps384,
            "PS512" => Algorithm::Ps512,
            "ES256" => Algorithm::Es256,
            "ES384" => Algorithm::Es384,
            "EdDSA" => Algorithm::EdDsa,
            _ => return None,
        })
    }

    /// The kind of key the algorithm needs.
    fn key_type(self) -> KeyType {
        match self {
            Algorithm::Rs256
            | Algorithm::Rs384
            | Algorithm::Rs512
            | Algorithm::Ps256
            | Algorithm::Ps384
            | Algorithm::Ps512 => KeyType::Rsa,
            Algorithm::Es256 => KeyType::P256,
            Algorithm::Es384 => KeyType::P384,
            Algorithm::EdDsa => KeyType::Ed25519,
        }
    }
}

/// Why a key was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// A well-formed key this crate does not check: another key type or curve, or an RSA
    /// modulus outside 2048 to 8192 bits.
    Unsupported(String),
    /// Not a public key, or not one for the algorithm asked.
    Invalid(String),
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::Unsupported(why) => write!(f, "unsupported key: {why}"),
            KeyError::Invalid(why) => write!(f, "invalid key: {why}"),
        }
    }
}

impl std::error::Error for KeyError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyType {
    fn describe(self) -> &'static str {
        match self {
            KeyType::Rsa => "an RSA key",
            KeyType::P256 => "an EC P-256 key",
            KeyType::P384 => "an EC P-384 key",
            KeyType::Ed25519 => "an Ed25519 key",
        }
    }
}

/// Smallest and largest RSA modulus `ring` verifies with, in bits.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

/// A public key pinned to one [`Algorithm`].
#[derive(Debug, Clone)]
pub struct VerifyingKey {
    algorithm: Algorithm,
    material: Material,
}

#[derive(Debug, Clone)]
enum Material {
    /// Modulus and public exponent, big-endian without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// An uncompressed EC point (`0x04 || x || y`, SEC 1 §2.3.3) or an Ed25519 public key.
    Bytes(Vec<u8>),
}

/// The members of a JWK this crate reads (RFC 7517 §4, RFC 7518 §6, RFC 8037 §2).
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    usage: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// Decodes base64url text (RFC 4648 §5), as JOSE writes it: without padding, though trailing
/// `=` is tolerated.
///
/// Errors: the text is not base64url; the message says where.
pub fn base64url(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).map_err(|e| e.to_string())
}

fn member(jwk_member: Option<&String>, name: &str) -> Result<Vec<u8>, KeyError> {
    let text = jwk_member.ok_or_else(|| KeyError::Invalid(format!("the JWK has no `{name}`")))?;
    base64url(text).map_err(|e| KeyError::Invalid(format!("the JWK's `{name}` is not base64url: {e}")))
}

impl VerifyingKey {
    /// A key for `algorithm` from one JWK, as JSON text.
    ///
    /// Errors: [`KeyError::Invalid`] for text that is not a JWK object, a missing or
    /// undecodable member, an `alg` other than `algorithm`, `use` `enc`, or a key of another
    /// type than `algorithm` needs; [`KeyError::Unsupported`] for key types and curves not
    /// checked here (`oct`, `P-521`, `Ed448`, …) and RSA moduli outside 2048 to 8192 bits.
    pub fn from_jwk(jwk: &str, algorithm: Algorithm) -> Result<VerifyingKey, KeyError> {
        let jwk: Jwk = serde_json::from_str(jwk).map_err(|e| KeyError::Invalid(format!("not a JWK: {e}")))?;
        if let Some(alg) = &jwk.alg
            && alg != algorithm.name()
        {
            return Err(KeyError::Invalid(format!("the JWK is for `{alg}`, not `{}`", algorithm.name())));
        }
        if jwk.usage.as_deref() == Some("enc") {
            return Err(KeyError::Invalid("the JWK is for encryption (`\"use\": \"enc\"`)".into()));
        }
        let (found, material) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
            ("RSA", _) => (KeyType::Rsa, rsa(&member(jwk.n.as_ref(), "n")?, &member(jwk.e.as_ref(), "e")?)?),
            ("EC", Some(crv @ ("P-256" | "P-384"))) => {
                let (found, width) = if crv == "P-256" { (KeyType::P256, 32) } else { (KeyType::P384, 48) };
                let (x, y) = (member(jwk.x.as_ref(), "x")?, member(jwk.y.as_ref(), "y")?);
                if x.len() != width || y.len() != width {
                    return Err(KeyError::Invalid(format!("{crv} coordinates are {width} bytes each")));
                }
                let mut point = Vec::with_capacity(1 + 2 * width);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (found, Material::Bytes(point))
            }
            ("OKP", Some("Ed25519")) => {
                let x = member(jwk.x.as_ref(), "x")?;
                if x.len() != 32 {
                    return Err(KeyError::Invalid("an Ed25519 public key is 32 bytes".into()));
                }
                (KeyType::Ed25519, Material::Bytes(x))
            }
            ("EC" | "OKP", crv) => {
                return Err(KeyError::Unsupported(format!(
                    "curve `{}`; the host checks P-256, P-384 and Ed25519",
                    crv.unwrap_or("")
                )));
            }
            (kty, _) => {
                return Err(KeyError::Unsupported(format!("key type `{kty}`; the host checks RSA, EC and OKP keys")));
            }
        };
        pinned(algorithm, found, material)
    }

    /// A key for `algorithm` from the first block of PEM text: `PUBLIC KEY` (SubjectPublicKeyInfo,
    /// RFC 5280 §4.1.2.7, of an RSA, EC P-256/P-384 or Ed25519 key) or `RSA PUBLIC KEY` (PKCS #1,
    /// RFC 8017 §A.1.1).
    ///
    /// Errors: [`KeyError::Invalid`] for text without a PEM block, an undecodable block, or a
    /// key of another type than `algorithm` needs; [`KeyError::Unsupported`] for other labels
    /// (certificates, private keys), other key types and curves, RSA moduli outside 2048 to
    /// 8192 bits, and EC points in compressed form.
    pub fn from_pem(pem: &str, algorithm: Algorithm) -> Result<VerifyingKey, KeyError> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| KeyError::Invalid(format!("not a PEM block: {e}")))?;
        let (found, material) = match block.label.as_str() {
            "PUBLIC KEY" => spki(&block.contents)?,
            "RSA PUBLIC KEY" => {
                let (_, key) = RSAPublicKey::from_der(&block.contents)
                    .map_err(|e| KeyError::Invalid(format!("not a PKCS #1 RSA public key: {e}")))?;
                (KeyType::Rsa, rsa(key.modulus, key.exponent)?)
            }
            label => {
                return Err(KeyError::Unsupported(format!(
                    "a PEM `{label}` block; the host reads `PUBLIC KEY` and `RSA PUBLIC KEY`"
                )));
            }
        };
        pinned(algorithm, found, material)
    }

    /// The algorithm this key is pinned to.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Whether `signature` is this key's signature of `message` under its algorithm. False for
    /// any signature that does not verify, including one of the wrong length.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let rsa = |params: &'static sig::RsaParameters| match &self.material {
            Material::Rsa { n, e } => RsaPublicKeyComponents { n, e }.verify(params, message, signature).is_ok(),
            Material::Bytes(_) => false,
        };
        let other = |algorithm: &'static dyn VerificationAlgorithm| match &self.material {
            Material::Bytes(key) => UnparsedPublicKey::new(algorithm, key).verify(message, signature).is_ok(),
            Material::Rsa { .. } => false,
        };
        match self.algorithm {
            Algorithm::Rs256 => rsa(&sig::RSA_PKCS1_2048_8192_SHA256),
            Algorithm::Rs384 => rsa(&sig::RSA_PKCS1_2048_8192_SHA384),
            Algorithm::Rs512 => rsa(&sig::RSA_PKCS1_2048_8192_SHA512),
            Algorithm::Ps256 => rsa(&sig::RSA_PSS_2048_8192_SHA256),
            Algorithm::Ps384 => rsa(&sig::RSA_PSS_2048_8192_SHA384),
            Algorithm::Ps512 => rsa(&sig::RSA_PSS_2048_8192_SHA512),
            Algorithm::Es256 => other(&sig::ECDSA_P256_SHA256_FIXED),
            Algorithm::Es384 => other(&sig::ECDSA_P384_SHA384_FIXED),
            Algorithm::EdDsa => other(&sig::ED25519),
        }
    }
}

/// The key, when `found` is the type `algorithm` needs.
fn pinned(algorithm: Algorithm, found: KeyType, material: Material) -> Result<VerifyingKey, KeyError> {
    if found != algorithm.key_type() {
        return Err(KeyError::Invalid(format!("{} cannot check {}", found.describe(), algorithm.name())));
    }
    Ok(VerifyingKey { algorithm, material })
}

/// RSA material from big-endian `n` and `e` (leading zeros allowed, as DER writes them).
fn rsa(n: &[u8], e: &[u8]) -> Result<Material, KeyError> {
    let strip = |bytes: &[u8]| bytes[bytes.iter().take_while(|b| **b == 0).count()..].to_vec();
    let (n, e) = (strip(n), strip(e));
    let bits = n.first().map_or(0, |top| 8 * n.len() - top.leading_zeros() as usize);
    if !RSA_BITS.contains(&bits) {
        return Err(KeyError::Unsupported(format!(
            "an RSA modulus of {bits} bits; the host checks {} to {} bits",
            RSA_BITS.start(),
            RSA_BITS.end()
        )));
    }
    // ring's bounds on the public exponent: odd, at least 3, at most 2^33 - 1.
    let exponent = (e.len() <= 5).then(|| e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)));
    if !exponent.is_some_and(|e| e >= 3 && e % 2 == 1 && e < 1 << 33) {
        return Err(KeyError::Invalid("the RSA public exponent must be odd, at least 3 and below 2^33".into()));
    }
    Ok(Material::Rsa { n, e })
}

/// The key in a DER SubjectPublicKeyInfo.
fn spki(der: &[u8]) -> Result<(KeyType, Material), KeyError> {
    let invalid = |e: &dyn std::fmt::Display| KeyError::Invalid(format!("not a SubjectPublicKeyInfo: {e}"));
    let (_, info) = SubjectPublicKeyInfo::from_der(der).map_err(|e| invalid(&e))?;
    let oid = info.algorithm.algorithm.to_id_string();
    match info.parsed().map_err(|e| invalid(&e))? {
        PublicKey::RSA(key) => Ok((KeyType::Rsa, rsa(key.modulus, key.exponent)?)),
        PublicKey::EC(point) => {
            let curve = info.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|o| o.to_id_string());
            let found = match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => KeyType::P256,
                Some("1.3.132.0.34") => KeyType::P384,
                other => {
                    return Err(KeyError::Unsupported(format!(
                        "the EC curve {}; the host checks P-256 and P-384",
                        other.unwrap_or("(none named)")
                    )));
                }
            };
            let width = if found == KeyType::P256 { 32 } else { 48 };
            let point = point.data();
            if point.len() != 1 + 2 * width || point[0] != 0x04 {
                return Err(KeyError::Unsupported(
                    "an EC point that is not in uncompressed form (SEC 1 §2.3.3); the host reads uncompressed points"
                        .into(),
                ));
            }
            Ok((found, Material::Bytes(point.to_vec())))
        }
        PublicKey::Unknown(key) if oid == "1.3.101.112" => {
            if key.len() != 32 {
                return Err(KeyError::Invalid("an Ed25519 public key is 32 bytes".into()));
            }
            Ok((KeyType::Ed25519, Material::Bytes(key.to_vec())))
        }
        _ => Err(KeyError::Unsupported(format!(
            "the key algorithm {oid}; the host checks RSA, EC P-256/P-384 and Ed25519"
        ))),
    }
}

#[cfg(test)]
mod tests;
