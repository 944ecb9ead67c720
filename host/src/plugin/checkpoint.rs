//! Signed checkpoints of an audit chain, and the keys that make and check them.
//!
//! A hash chain alone proves nothing to an auditor: whoever can write the file can edit a
//! record and recompute every later hash, or cut the tail. A checkpoint fixes the chain's state
//! at one moment with a signature the writer of the file cannot make:
//!
//! ```text
//! {"portcullis_audit":"checkpoint","alg":"ed25519","key_id":"3f9a…","file_start":"000…000",
//!  "records":1200,"head":"9f2c…","time_ms":1796083200000,"sig":"…"}
//! ```
//!
//! `records` is how many records of this file come before the checkpoint and `head` the hash
//! of the last of them; `file_start` is the `prev` of the file's first record (64 zeros, or the
//! hash of the rotated file it continues), so a checkpoint names one file of one chain. `sig`
//! is base64url (RFC 4648 §5, unpadded) of the signature over
//! `portcullis-audit-checkpoint/1\n{alg}\n{key_id}\n{file_start}\n{records}\n{head}\n{time_ms}`.
//!
//! Two algorithms:
//!
//! - `ed25519` (RFC 8032): the gateway holds the private key (PKCS#8 PEM, RFC 8410, as
//!   `openssl genpkey -algorithm ed25519` or `portcullis audit keygen` writes it); the auditor
//!   needs only the public key and cannot sign either. The key id is the first 8 bytes of the
//!   SHA-256 of the 32-byte public key, in hex.
//! - `hmac-sha256` (RFC 2104): one shared key of at least [`MIN_HMAC_KEY_BYTES`]; whoever checks
//!   can also sign, so it suits an auditor who trusts the key's holders. The key id is the
//!   first 8 bytes of HMAC-SHA256(key, `portcullis audit key id`), in hex: it names the key
//!   without revealing anything that helps guess it.
//!
//! The verifier takes the algorithm from the key it is given, never from the checkpoint: a
//! checkpoint claiming `hmac-sha256` checked against an Ed25519 public key would otherwise be
//! forgeable by anyone holding that public key (the algorithm confusion of RFC 8725 §2.1).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer as _, Verifier as _};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub use crate::config::SigningAlgorithm;

/// The shortest HMAC key accepted, in bytes: SHA-256's output length (RFC 2104 §3 advises no
/// shorter).
pub const MIN_HMAC_KEY_BYTES: usize = 32;

const DOMAIN: &str = "portcullis-audit-checkpoint/1";

/// A key that signs checkpoints. `Debug` shows the algorithm and key id only.
#[derive(Clone)]
pub struct SigningKey {
    kind: SigningKind,
    key_id: String,
}

#[derive(Clone)]
enum SigningKind {
    Hmac(std::sync::Arc<[u8]>),
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({} {})", self.algorithm(), self.key_id)
    }
}

impl PartialEq for SigningKey {
    fn eq(&self, other: &Self) -> bool {
        self.algorithm() == other.algorithm() && self.key_id == other.key_id
    }
}

impl SigningKey {
    /// The key `algorithm` reads from `bytes`: for `ed25519`, a PKCS#8 PEM private key (RFC
    /// 8410); for `hmac-sha256`, the key itself.
    ///
    /// Errors: not a PEM Ed25519 private key, or an HMAC key shorter than
    /// [`MIN_HMAC_KEY_BYTES`]. The message never quotes the bytes.
    pub fn new(algorithm: SigningAlgorithm, bytes: &[u8]) -> Result<SigningKey, String> {
        match algorithm {
            SigningAlgorithm::HmacSha256 => {
                if bytes.len() < MIN_HMAC_KEY_BYTES {
                    return Err(format!(
                        "an hmac-sha256 key needs at least {MIN_HMAC_KEY_BYTES} bytes; this one has {}",
                        bytes.len()
                    ));
                }
                Ok(SigningKey { key_id: hmac_key_id(bytes), kind: SigningKind::Hmac(bytes.into()) })
            }
            SigningAlgorithm::Ed25519 => {
                let pem = std::str::from_utf8(bytes).map_err(|_| "not a PEM private key (not text)".to_owned())?;
                let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem.trim())
                    .map_err(|e| format!("not an Ed25519 private key in PKCS#8 PEM: {e}"))?;
                let key_id = ed25519_key_id(&key.verifying_key());
                Ok(SigningKey { kind: SigningKind::Ed25519(Box::new(key)), key_id })
            }
        }
    }

    /// Which algorithm it signs with.
    pub fn algorithm(&self) -> SigningAlgorithm {
        match self.kind {
            SigningKind::Hmac(_) => SigningAlgorithm::HmacSha256,
            SigningKind::Ed25519(_) => SigningAlgorithm::Ed25519,
        }
    }

    /// The key id: 16 hex digits (see the module docs).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The key that checks what this one signs.
    pub fn verifying(&self) -> VerifyingKey {
        let kind = match &self.kind {
            SigningKind::Hmac(key) => VerifyingKind::Hmac(key.clone()),
            SigningKind::Ed25519(key) => VerifyingKind::Ed25519(key.verifying_key()),
        };
        VerifyingKey { kind, key_id: self.key_id.clone() }
    }

    fn sign(&self, message: &[u8]) -> String {
        let sig = match &self.kind {
            SigningKind::Hmac(key) => hmac(key, message).to_vec(),
            SigningKind::Ed25519(key) => key.sign(message).to_bytes().to_vec(),
        };
        URL_SAFE_NO_PAD.encode(sig)
    }
}

/// A key that checks checkpoints: an Ed25519 public key, or the HMAC key.
#[derive(Clone)]
pub struct VerifyingKey {
    kind: VerifyingKind,
    key_id: String,
}

#[derive(Clone)]
enum VerifyingKind {
    Hmac(std::sync::Arc<[u8]>),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyingKey({} {})", self.algorithm(), self.key_id)
    }
}

impl VerifyingKey {
    /// The key in a key file's `bytes`: a PEM `PUBLIC KEY` (SPKI, RFC 8410) or `PRIVATE KEY`
    /// (PKCS#8) is an Ed25519 key; anything else is an HMAC key, one trailing newline removed
    /// (as `[secret]` files are read).
    ///
    /// Errors: a PEM block that is not an Ed25519 key; an HMAC key shorter than
    /// [`MIN_HMAC_KEY_BYTES`].
    pub fn parse(bytes: &[u8]) -> Result<VerifyingKey, String> {
        let text = std::str::from_utf8(bytes).ok().map(str::trim);
        match text {
            Some(pem) if pem.starts_with("-----BEGIN PUBLIC KEY-----") => {
                let key = ed25519_dalek::VerifyingKey::from_public_key_pem(pem)
                    .map_err(|e| format!("not an Ed25519 public key in SPKI PEM: {e}"))?;
                Ok(VerifyingKey { key_id: ed25519_key_id(&key), kind: VerifyingKind::Ed25519(key) })
            }
            Some(pem) if pem.starts_with("-----BEGIN PRIVATE KEY-----") => {
                Ok(SigningKey::new(SigningAlgorithm::Ed25519, pem.as_bytes())?.verifying())
            }
            _ => {
                let mut key = bytes;
                if let Some(rest) = key.strip_suffix(b"\n") {
                    key = rest.strip_suffix(b"\r").unwrap_or(rest);
                }
                Ok(SigningKey::new(SigningAlgorithm::HmacSha256, key)?.verifying())
            }
        }
    }

    /// Which algorithm it checks.
    pub fn algorithm(&self) -> SigningAlgorithm {
        match self.kind {
            VerifyingKind::Hmac(_) => SigningAlgorithm::HmacSha256,
            VerifyingKind::Ed25519(_) => SigningAlgorithm::Ed25519,
        }
    }

    /// The key id: 16 hex digits.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    fn verify(&self, message: &[u8], sig: &str) -> bool {
        let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else { return false };
        match &self.kind {
            VerifyingKind::Hmac(key) => {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
                mac.update(message);
                mac.verify_slice(&sig).is_ok()
            }
            VerifyingKind::Ed25519(key) => {
                ed25519_dalek::Signature::from_slice(&sig).is_ok_and(|sig| key.verify(message, &sig).is_ok())
            }
        }
    }
}

/// One signed checkpoint (see the module docs for its fields).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// `hmac-sha256` or `ed25519`.
    pub alg: String,
    /// The signing key's id.
    pub key_id: String,
    /// The `prev` of the file's first record.
    pub file_start: String,
    /// Records of the file before the checkpoint.
    pub records: u64,
    /// The hash of the last of them (the file's start when there are none).
    pub head: String,
    /// When it was signed, in ms since the Unix epoch.
    pub time_ms: u64,
    /// The signature, base64url without padding.
    pub sig: String,
}

impl Checkpoint {
    /// A checkpoint of `records` records ending in `head`, signed by `key` now (`time_ms`).
    pub fn signed(key: &SigningKey, file_start: &str, records: u64, head: &str, time_ms: u64) -> Checkpoint {
        let mut checkpoint = Checkpoint {
            alg: key.algorithm().to_string(),
            key_id: key.key_id.clone(),
            file_start: file_start.to_owned(),
            records,
            head: head.to_owned(),
            time_ms,
            sig: String::new(),
        };
        checkpoint.sig = key.sign(checkpoint.message().as_bytes());
        checkpoint
    }

    fn message(&self) -> String {
        let Checkpoint { alg, key_id, file_start, records, head, time_ms, sig: _ } = self;
        format!("{DOMAIN}\n{alg}\n{key_id}\n{file_start}\n{records}\n{head}\n{time_ms}")
    }

    /// The checkpoint as a host record of the chain, and as the line exported to the
    /// checkpoint file: `{"portcullis_audit":"checkpoint",…}`.
    pub fn to_record(&self) -> String {
        let mut record = serde_json::to_string(self).expect("strings and integers serialize");
        record.replace_range(..1, r#"{"portcullis_audit":"checkpoint","#);
        record
    }

    /// The checkpoint in a record or exported line: none when `text` is not a checkpoint
    /// record.
    ///
    /// Errors: a checkpoint record missing a field or with one of the wrong type.
    pub fn from_record(text: &str) -> Option<Result<Checkpoint, String>> {
        // The host writes them so; a plugin cannot write a `portcullis_audit` member.
        if !text.starts_with(r#"{"portcullis_audit":"checkpoint","#) {
            return None;
        }
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        if value.get("portcullis_audit")? != "checkpoint" {
            return None;
        }
        Some(serde_json::from_value(value).map_err(|e| format!("a malformed checkpoint: {e}")))
    }

    /// Checks the signature with whichever of `keys` has its key id.
    ///
    /// Errors: no key has its id; that key is of another algorithm than the checkpoint
    /// claims; the signature does not verify (the checkpoint, or the records it covers, were
    /// forged).
    pub fn check(&self, keys: &[VerifyingKey]) -> Result<(), String> {
        let key = keys.iter().find(|k| k.key_id == self.key_id).ok_or_else(|| {
            let given: Vec<&str> = keys.iter().map(|k| k.key_id.as_str()).collect();
            format!("signed with key id {}, which no key given has (given: {})", self.key_id, given.join(", "))
        })?;
        if key.algorithm().to_string() != self.alg {
            return Err(format!("claims {} but key {} is an {} key", self.alg, self.key_id, key.algorithm()));
        }
        if !key.verify(self.message().as_bytes(), &self.sig) {
            return Err("the signature does not verify: the checkpoint was forged or altered".into());
        }
        Ok(())
    }
}

/// A new Ed25519 key pair: (PKCS#8 PEM private key, SPKI PEM public key), from the operating
/// system's random source.
///
/// Errors: the random source failed.
pub fn generate() -> Result<(String, String), String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no randomness: {e}"))?;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let private = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| e.to_string())?;
    let public = key.verifying_key().to_public_key_pem(LineEnding::LF).map_err(|e| e.to_string())?;
    Ok((private.to_string(), public))
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

fn hmac_key_id(key: &[u8]) -> String {
    crate::sources::hex(&hmac(key, b"portcullis audit key id")[..8])
}

fn ed25519_key_id(key: &ed25519_dalek::VerifyingKey) -> String {
    crate::sources::hex(&Sha256::digest(key.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    const HMAC_KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn checkpoints_verify_with_their_key_and_nothing_else() {
        let (private, public) = generate().unwrap();
        let ed = SigningKey::new(SigningAlgorithm::Ed25519, private.as_bytes()).unwrap();
        let mac = SigningKey::new(SigningAlgorithm::HmacSha256, HMAC_KEY).unwrap();
        let public = VerifyingKey::parse(public.as_bytes()).unwrap();
        assert_eq!(public.key_id(), ed.key_id());
        for key in [&ed, &mac] {
            let checkpoint = Checkpoint::signed(key, "00", 3, "ab", 7);
            checkpoint.check(&[public.clone(), key.verifying()]).unwrap();
            let text = checkpoint.to_record();
            assert!(text.starts_with(r#"{"portcullis_audit":"checkpoint","alg":""#), "{text}");
            assert_eq!(Checkpoint::from_record(&text).unwrap().unwrap(), checkpoint);
            let mut moved = checkpoint.clone();
            moved.records = 2;
            assert!(moved.check(&[key.verifying()]).unwrap_err().contains("does not verify"));
        }
        let other = SigningKey::new(SigningAlgorithm::HmacSha256, &[7u8; 32]).unwrap();
        let err = Checkpoint::signed(&other, "00", 1, "ab", 7).check(&[public]).unwrap_err();
        assert!(err.contains("no key given has"), "{err}");
    }

    #[test]
    fn the_algorithm_comes_from_the_key_never_from_the_checkpoint() {
        let (_, public) = generate().unwrap();
        let ed = VerifyingKey::parse(public.as_bytes()).unwrap();
        // A forger holding the public key signs an "hmac-sha256" checkpoint with its text.
        let forged_key = SigningKey::new(SigningAlgorithm::HmacSha256, public.as_bytes()).unwrap();
        let mut forged = Checkpoint::signed(&forged_key, "00", 1, "ab", 7);
        forged.key_id = ed.key_id().to_owned();
        assert!(forged.check(&[ed]).unwrap_err().contains("claims hmac-sha256"));
    }

    #[test]
    fn bad_keys_are_refused_without_quoting_them() {
        let short = SigningKey::new(SigningAlgorithm::HmacSha256, b"hunter2").unwrap_err();
        assert!(short.contains("at least 32 bytes") && !short.contains("hunter2"), "{short}");
        let not_pem = SigningKey::new(SigningAlgorithm::Ed25519, b"hunter2hunter2").unwrap_err();
        assert!(not_pem.contains("PKCS#8") && !not_pem.contains("hunter2"), "{not_pem}");
        assert_eq!(
            VerifyingKey::parse(b"0123456789abcdef0123456789abcdef\n").unwrap().algorithm().to_string(),
            "hmac-sha256"
        );
    }
}
