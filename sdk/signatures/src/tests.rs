//! Every algorithm against tokens minted by `jsonwebtoken` (RustCrypto), an implementation
//! independent of the `ring` code under test, with the repository's fixture keys and keys
//! generated here.

use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header, encode};
use ring::rand::SystemRandom;
use ring::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use serde_json::json;

use super::{Algorithm, KeyError, VerifyingKey, base64url};

const RSA_PRIVATE: &str = include_str!("../../../examples/quickstart/keys/demo-only-private-key.pem");
const RSA_PUBLIC: &str = include_str!("../../../examples/quickstart/keys/demo-public-key.pem");
const JWKS: &str = include_str!("../../../examples/quickstart/keys/jwks.json");
const EC_PRIVATE: &str = include_str!("../../../tests/fixtures/ec-private.pem");
const EC_PUBLIC: &str = include_str!("../../../tests/fixtures/ec-public.pem");
const ATTACKER_PRIVATE: &str = include_str!("../../../tests/fixtures/attacker-private.pem");

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn rsa_jwk() -> String {
    let jwks: serde_json::Value = serde_json::from_str(JWKS).unwrap();
    jwks["keys"][0].to_string()
}

fn token(alg: jsonwebtoken::Algorithm, key: &EncodingKey) -> String {
    encode(&Header::new(alg), &json!({ "sub": "alice", "exp": 1_800_000_000 }), key).unwrap()
}

/// Whether `key` verifies `token` (compact JWS), and refuses it with one bit of the payload
/// or of the signature flipped.
fn verifies(key: &VerifyingKey, token: &str) -> bool {
    let (input, signature) = token.rsplit_once('.').unwrap();
    let signature = base64url(signature).unwrap();
    let valid = key.verify(input.as_bytes(), &signature);
    let mut tampered = input.as_bytes().to_vec();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(!key.verify(&tampered, &signature), "a changed message must not verify");
    let mut bad = signature.clone();
    bad[0] ^= 0x80;
    assert!(!key.verify(input.as_bytes(), &bad), "a changed signature must not verify");
    assert!(!key.verify(input.as_bytes(), &signature[1..]), "a short signature must not verify");
    valid
}

#[test]
fn every_rsa_algorithm_verifies_from_jwk_spki_and_pkcs1() {
    use jsonwebtoken::Algorithm as J;
    let private = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let attacker = EncodingKey::from_rsa_pem(ATTACKER_PRIVATE.as_bytes()).unwrap();
    // PKCS #1 `RSA PUBLIC KEY`: the SubjectPublicKeyInfo's key bits, re-wrapped.
    let spki_der = x509_parser::pem::parse_x509_pem(RSA_PUBLIC.as_bytes()).unwrap().1.contents;
    let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki_der).unwrap();
    let pkcs1 = format!(
        "-----BEGIN RSA PUBLIC KEY-----\n{}\n-----END RSA PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&*info.subject_public_key.data)
    );
    for (ours, theirs) in [
        (Algorithm::Rs256, J::RS256),
        (Algorithm::Rs384, J::RS384),
        (Algorithm::Rs512, J::RS512),
        (Algorithm::Ps256, J::PS256),
        (Algorithm::Ps384, J::PS384),
        (Algorithm::Ps512, J::PS512),
    ] {
        let jwk = rsa_jwk().replace("\"RS256\"", &format!("\"{}\"", ours.name()));
        let keys = [
            VerifyingKey::from_jwk(&jwk, ours).unwrap(),
            VerifyingKey::from_pem(RSA_PUBLIC, ours).unwrap(),
            VerifyingKey::from_pem(&pkcs1, ours).unwrap(),
        ];
        for key in &keys {
            assert_eq!(key.algorithm(), ours);
            assert!(verifies(key, &token(theirs, &private)), "{ours:?}");
            assert!(!verifies(key, &token(theirs, &attacker)), "{ours:?}: another key's signature");
        }
    }
    // A key pinned to PKCS #1 v1.5 never takes a PSS signature of the same key, and the reverse.
    let rs = VerifyingKey::from_pem(RSA_PUBLIC, Algorithm::Rs256).unwrap();
    let ps = VerifyingKey::from_pem(RSA_PUBLIC, Algorithm::Ps256).unwrap();
    assert!(!verifies(&rs, &token(J::PS256, &private)));
    assert!(!verifies(&ps, &token(J::RS256, &private)));
}

#[test]
fn ecdsa_and_eddsa_verify_from_jwk_and_pem() {
    use jsonwebtoken::Algorithm as J;
    // P-256: the fixture key pair, as PEM and as a JWK built from its point.
    let es256 = token(J::ES256, &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap());
    let pem = VerifyingKey::from_pem(EC_PUBLIC, Algorithm::Es256).unwrap();
    assert!(verifies(&pem, &es256));
    let spki = x509_parser::pem::parse_x509_pem(EC_PUBLIC.as_bytes()).unwrap().1.contents;
    let point = &spki[spki.len() - 65..];
    let jwk = json!({ "kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..]) }).to_string();
    assert!(verifies(&VerifyingKey::from_jwk(&jwk, Algorithm::Es256).unwrap(), &es256));

    // P-384 and Ed25519: key pairs made here with ring, tokens signed by jsonwebtoken.
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    let jwk = json!({ "kty": "EC", "crv": "P-384", "x": b64(&point[1..49]), "y": b64(&point[49..]) }).to_string();
    let es384 = token(J::ES384, &EncodingKey::from_ec_der(pkcs8.as_ref()));
    assert!(verifies(&VerifyingKey::from_jwk(&jwk, Algorithm::Es384).unwrap(), &es384));
    assert!(!verifies(&VerifyingKey::from_jwk(&jwk, Algorithm::Es384).unwrap(), &es256));

    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let x = b64(pair.public_key().as_ref());
    let jwk = json!({ "kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA", "use": "sig" }).to_string();
    let eddsa = token(J::EdDSA, &EncodingKey::from_ed_der(pkcs8.as_ref()));
    let key = VerifyingKey::from_jwk(&jwk, Algorithm::EdDsa).unwrap();
    assert!(verifies(&key, &eddsa));
    // The same key as a SubjectPublicKeyInfo PEM (RFC 8410 §4: a fixed 12-byte prefix).
    let mut der = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    der.extend_from_slice(pair.public_key().as_ref());
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&der)
    );
    assert!(verifies(&VerifyingKey::from_pem(&pem, Algorithm::EdDsa).unwrap(), &eddsa));
}

#[test]
fn the_rfc_7515_es256_example_verifies() {
    let jwk = json!({ "kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                      "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0" });
    let key = VerifyingKey::from_jwk(&jwk.to_string(), Algorithm::Es256).unwrap();
    let jws = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
    assert!(verifies(&key, jws));
}

fn invalid(result: Result<VerifyingKey, KeyError>) -> String {
    match result {
        Err(KeyError::Invalid(why)) => why,
        other => panic!("expected an invalid key, got {other:?}"),
    }
}

fn unsupported(result: Result<VerifyingKey, KeyError>) -> String {
    match result {
        Err(KeyError::Unsupported(why)) => why,
        other => panic!("expected an unsupported key, got {other:?}"),
    }
}

#[test]
fn keys_that_do_not_fit_their_algorithm_are_refused_with_the_reason() {
    // The key type decides which algorithms a key can be pinned to.
    assert_eq!(invalid(VerifyingKey::from_pem(EC_PUBLIC, Algorithm::Rs256)), "an EC P-256 key cannot check RS256");
    assert_eq!(invalid(VerifyingKey::from_pem(EC_PUBLIC, Algorithm::Es384)), "an EC P-256 key cannot check ES384");
    assert_eq!(invalid(VerifyingKey::from_pem(RSA_PUBLIC, Algorithm::Es256)), "an RSA key cannot check ES256");
    // A JWK's own `alg` and `use` are honoured.
    assert_eq!(invalid(VerifyingKey::from_jwk(&rsa_jwk(), Algorithm::Ps256)), "the JWK is for `RS256`, not `PS256`");
    let enc = rsa_jwk().replace("\"sig\"", "\"enc\"");
    assert!(invalid(VerifyingKey::from_jwk(&enc, Algorithm::Rs256)).contains("encryption"));
    // Malformed input.
    assert!(invalid(VerifyingKey::from_jwk("[]", Algorithm::Rs256)).starts_with("not a JWK"));
    assert_eq!(invalid(VerifyingKey::from_jwk(r#"{"kty":"RSA","e":"AQAB"}"#, Algorithm::Rs256)), "the JWK has no `n`");
    let bad_b64 = r#"{"kty":"OKP","crv":"Ed25519","x":"not*base64"}"#;
    assert!(invalid(VerifyingKey::from_jwk(bad_b64, Algorithm::EdDsa)).starts_with("the JWK's `x` is not base64url"));
    let short = json!({ "kty": "EC", "crv": "P-256", "x": b64(&[1; 31]), "y": b64(&[1; 32]) }).to_string();
    assert_eq!(invalid(VerifyingKey::from_jwk(&short, Algorithm::Es256)), "P-256 coordinates are 32 bytes each");
    assert!(invalid(VerifyingKey::from_pem("no PEM here", Algorithm::Rs256)).starts_with("not a PEM block"));
    let even_e = rsa_jwk().replace("\"AQAB\"", "\"AQAC\"");
    assert!(invalid(VerifyingKey::from_jwk(&even_e, Algorithm::Rs256)).contains("exponent"));
}

#[test]
fn keys_this_host_does_not_check_are_unsupported_so_a_plugin_can_fall_back() {
    let oct = json!({ "kty": "oct", "k": b64(&[7; 32]) }).to_string();
    assert!(unsupported(VerifyingKey::from_jwk(&oct, Algorithm::Rs256)).contains("key type `oct`"));
    let p521 = json!({ "kty": "EC", "crv": "P-521", "x": b64(&[1; 66]), "y": b64(&[1; 66]) }).to_string();
    assert!(unsupported(VerifyingKey::from_jwk(&p521, Algorithm::Es256)).contains("curve `P-521`"));
    // RSA-1024: well-formed, below ring's 2048-bit floor.
    let small = json!({ "kty": "RSA", "n": b64(&[0xc3; 128]), "e": "AQAB" }).to_string();
    assert_eq!(
        unsupported(VerifyingKey::from_jwk(&small, Algorithm::Rs256)),
        "an RSA modulus of 1024 bits; the host checks 2048 to 8192 bits"
    );
    // The fixture P-256 key with its point compressed (0x02/0x03 and x only): ring reads only
    // uncompressed points.
    let mut spki = x509_parser::pem::parse_x509_pem(EC_PUBLIC.as_bytes()).unwrap().1.contents;
    let point = spki.split_off(spki.len() - 65);
    let mut compressed = spki;
    // SEQUENCE and BIT STRING lengths shrink by the 32 bytes of y.
    compressed[1] -= 32;
    let bit_string_length = compressed.len() - 2;
    compressed[bit_string_length] -= 32;
    compressed.push(0x02 | (point[64] & 1));
    compressed.extend_from_slice(&point[1..33]);
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&compressed)
    );
    assert!(unsupported(VerifyingKey::from_pem(&pem, Algorithm::Es256)).contains("uncompressed"));
    let certificate = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    assert!(unsupported(VerifyingKey::from_pem(certificate, Algorithm::Rs256)).contains("`CERTIFICATE`"));
}

#[test]
fn algorithm_names_are_the_jws_ones() {
    for alg in Algorithm::ALL {
        assert_eq!(Algorithm::from_name(alg.name()), Some(alg));
    }
    assert_eq!(Algorithm::from_name("HS256"), None);
    assert_eq!(Algorithm::from_name("none"), None);
}

use x509_parser::prelude::FromDer as _;
