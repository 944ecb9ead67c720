//! Signed plugin files: Ed25519 signatures in the wasmsign2 format, checked before a
//! component is compiled.
//!
//! **Why wasmsign2.** It implements the WebAssembly tool-conventions signature proposal
//! (`Signatures.md`): a signature over the SHA-256 of the file's sections, carried in a
//! custom section named `signature` placed first (embedded, so the file is still a valid
//! component that other runtimes load unchanged) or in a file beside it (detached). It reads
//! components since 0.2.8, takes the standard PEM and DER key encodings (so the key pairs
//! `portcullis audit keygen` writes sign plugins too) as well as its own, and verifies offline.
//! The `wasmsign2` command line signs and verifies the same files. Sigstore bundles were the
//! other candidate: they fit container registries and keyless signing, but verifying one
//! offline against a configured key needs their bundle and certificate machinery for what
//! here is one public key per release pipeline.
//!
//! The signature does not cover the 8-byte preamble (wasmsign2 #303): a signed core module
//! re-headed as a component would still verify. `portcullis plugin sign` signs components
//! only, so no core module signed by a Portcullis key exists to be re-headed; the gateway
//! loads components only either way.

use std::path::{Path, PathBuf};

use wasmsign2::{Module, PublicKey, PublicKeySet, SecretKey};

/// The keys a plugin may be signed with, with the files they came from.
#[derive(Debug, Default)]
pub struct TrustedKeys {
    keys: Vec<(PathBuf, PublicKey)>,
}

impl TrustedKeys {
    /// The keys in `files` (already resolved paths, with their contents).
    ///
    /// Errors: `(file, reason)` for the first file that is not an Ed25519 public key (PEM, DER
    /// or wasmsign2's raw format).
    pub fn parse(files: &[(PathBuf, Vec<u8>)]) -> Result<TrustedKeys, (PathBuf, String)> {
        let mut keys = Vec::new();
        for (path, bytes) in files {
            let key = public_key(bytes).map_err(|e| (path.clone(), format!("not an Ed25519 public key: {e}")))?;
            keys.push((path.clone(), key));
        }
        Ok(TrustedKeys { keys })
    }

    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks `component`'s signature, embedded or `detached`, against these keys. Returns the
    /// file of the key that signed it.
    ///
    /// Errors: [`SignatureError::Unsigned`] when there is no signature at all;
    /// [`SignatureError::Invalid`] when there is one and no key here verifies it (a file
    /// changed after signing, or signed by another key).
    pub fn verify(&self, component: &[u8], detached: Option<&[u8]>) -> Result<&Path, SignatureError> {
        if detached.is_none() && !is_signed(component) {
            return Err(SignatureError::Unsigned);
        }
        let set = PublicKeySet::new(self.keys.iter().map(|(_, k)| k.clone()).collect());
        let valid = set
            .verify(&mut std::io::Cursor::new(component), detached)
            .map_err(|e| SignatureError::Invalid(format!("{e}")))?;
        self.keys
            .iter()
            .find(|(_, key)| valid.contains(key))
            .map(|(path, _)| path.as_path())
            .ok_or_else(|| SignatureError::Invalid("no trusted key signed it".into()))
    }
}

/// Why a plugin's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The file carries no signature and none is configured beside it.
    #[error("the file is not signed (no `signature` section and no `signature` file)")]
    Unsigned,
    /// A signature is there but no trusted key verifies it; says why.
    #[error("the signature does not verify with any trusted key: {0}")]
    Invalid(String),
}

/// Whether `component` carries an embedded signature (its first section is a custom section
/// named `signature`).
pub fn is_signed(component: &[u8]) -> bool {
    let mut reader = std::io::Cursor::new(component);
    let Ok(stream) = Module::init_from_reader(&mut reader) else { return false };
    let first = Module::iterate(stream).ok().and_then(|mut sections| sections.next());
    first.is_some_and(|s| s.is_ok_and(|s| s.is_signature_header()))
}

/// `component` signed with `secret_key` (PEM, DER or wasmsign2's format): the signed file, and
/// the signature alone (what `--detached` writes). A signature already there is replaced.
///
/// Errors: the key is not an Ed25519 secret key; the file is not a component (core modules
/// are refused: see the module docs); it cannot be parsed.
pub fn sign(component: &[u8], secret_key: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    const COMPONENT: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
    if !component.starts_with(&COMPONENT) {
        return Err("not a WebAssembly component (a core module or another file): only components are signed".into());
    }
    let key = secret_key_of(secret_key).map_err(|e| format!("not an Ed25519 secret key: {e}"))?;
    let module = Module::deserialize(&mut std::io::Cursor::new(component)).map_err(|e| format!("{e}"))?;
    let signed = key.sign(module, None).map_err(|e| format!("{e}"))?;
    let mut bytes = Vec::new();
    signed.clone().serialize(&mut bytes).map_err(|e| format!("{e}"))?;
    let (_, detached) = signed.detach_signature().map_err(|e| format!("{e}"))?;
    Ok((bytes, detached))
}

/// wasmsign2's raw key formats start with this byte: 0x01 public, 0x81 secret.
const RAW_PUBLIC: u8 = 0x01;
const RAW_SECRET: u8 = 0x81;

/// A public key from PEM (SPKI, RFC 8410, read by ed25519-dalek, which also takes what
/// OpenSSL writes), or DER or wasmsign2's raw format (read by wasmsign2).
fn public_key(bytes: &[u8]) -> Result<PublicKey, String> {
    use ed25519_dalek::pkcs8::DecodePublicKey;
    match std::str::from_utf8(bytes).map(str::trim) {
        Ok(pem) if pem.starts_with("-----BEGIN") => {
            let key = ed25519_dalek::VerifyingKey::from_public_key_pem(pem).map_err(|e| e.to_string())?;
            PublicKey::from_bytes(&[&[RAW_PUBLIC][..], key.as_bytes()].concat()).map_err(|e| e.to_string())
        }
        _ => PublicKey::from_any(bytes).map_err(|e| e.to_string()),
    }
}

/// A secret key from PEM (PKCS#8 v1 or v2, as `portcullis audit keygen` and OpenSSL write
/// it), or DER or wasmsign2's raw format.
fn secret_key_of(bytes: &[u8]) -> Result<SecretKey, String> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    match std::str::from_utf8(bytes).map(str::trim) {
        Ok(pem) if pem.starts_with("-----BEGIN") => {
            let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(|e| e.to_string())?;
            SecretKey::from_bytes(&[&[RAW_SECRET][..], &key.to_keypair_bytes()].concat()).map_err(|e| e.to_string())
        }
        _ => SecretKey::from_any(bytes).map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest component: the preamble and no sections.
    const EMPTY_COMPONENT: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

    fn keys() -> (String, TrustedKeys) {
        let (private, public) = super::super::checkpoint::generate().unwrap();
        let trusted = TrustedKeys::parse(&[("release.pub".into(), public.into_bytes())]).unwrap();
        (private, trusted)
    }

    #[test]
    fn a_signed_component_verifies_embedded_and_detached_and_nothing_else_does() {
        let (private, trusted) = keys();
        let (signed, detached) = sign(&EMPTY_COMPONENT, private.as_bytes()).unwrap();
        assert!(is_signed(&signed) && !is_signed(&EMPTY_COMPONENT));
        assert_eq!(trusted.verify(&signed, None).unwrap(), Path::new("release.pub"));
        assert!(trusted.verify(&EMPTY_COMPONENT, Some(&detached)).is_ok());
        assert_eq!(trusted.verify(&EMPTY_COMPONENT, None), Err(SignatureError::Unsigned));
        let (_, stranger) = keys();
        assert!(matches!(stranger.verify(&signed, None), Err(SignatureError::Invalid(_))));
        // A section added after signing.
        let mut changed = signed.clone();
        changed.extend_from_slice(&[0x00, 0x02, 0x01, b'x']);
        assert!(matches!(trusted.verify(&changed, None), Err(SignatureError::Invalid(_))));
    }

    #[test]
    fn core_modules_and_bad_keys_are_refused() {
        let (private, _) = keys();
        let module = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
        assert!(sign(&module, private.as_bytes()).unwrap_err().contains("only components"));
        assert!(sign(&EMPTY_COMPONENT, b"not a key").unwrap_err().contains("not an Ed25519 secret key"));
        let (path, why) = TrustedKeys::parse(&[("k.pub".into(), b"nope".to_vec())]).unwrap_err();
        assert_eq!((path.to_str(), why.contains("not an Ed25519 public key")), (Some("k.pub"), true));
    }
}
