//! Unit tests through the SDK's native fake host, with tokens minted by `jsonwebtoken`.

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use portcullis_sdk::{Auth, AuthOutcome, testing};
use serde_json::{Value, json};

use crate::{JwtAuth, Refusal};

const RSA_PRIVATE: &str = include_str!("../../../examples/quickstart/keys/demo-only-private-key.pem");
const RSA_PUBLIC: &str = include_str!("../../../examples/quickstart/keys/demo-public-key.pem");
const JWKS: &str = include_str!("../../../examples/quickstart/keys/jwks.json");
const EC_PRIVATE: &str = include_str!("../../../tests/fixtures/ec-private.pem");
const EC_PUBLIC: &str = include_str!("../../../tests/fixtures/ec-public.pem");
const ATTACKER_PRIVATE: &str = include_str!("../../../tests/fixtures/attacker-private.pem");
const SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";
const NOW: i64 = 1_800_000_000;

fn plugin() -> JwtAuth {
    let config = json!({
        "issuer": "https://issuer.test",
        "audiences": ["api"],
        "keys": [
            { "kid": "ec", "alg": "ES256", "pem": EC_PUBLIC },
            { "kid": "hs", "alg": "HS256", "secret": SECRET },
            { "kid": "rsa-pem", "alg": "RS256", "pem": RSA_PUBLIC },
        ],
        "jwks": JWKS,
        "roles_claim": "realm.roles",
    });
    testing::configure(&config.to_string()).unwrap()
}

fn claims() -> Value {
    json!({ "sub": "alice", "iss": "https://issuer.test", "aud": "api", "exp": NOW + 600, "iat": NOW,
            "realm": { "roles": ["reader", "writer"] }, "scope": "read write" })
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).unwrap()
}

fn rs256(claims: &Value) -> String {
    sign(Algorithm::RS256, Some("demo-rs256"), &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(), claims)
}

fn b64(v: &Value) -> String {
    use std::fmt::Write;
    // base64url without padding, written here to craft tokens no library would sign.
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = v.to_string().into_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            let _ = out.write_char(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn jwt_accepts_rs256_from_the_jwks_and_maps_the_identity() {
    let identity = plugin().verify(&rs256(&claims()), NOW).unwrap();
    assert_eq!(identity.subject, "alice");
    assert_eq!(identity.issuer.as_deref(), Some("https://issuer.test"));
    assert_eq!(identity.roles, ["reader", "writer"]);
    assert_eq!(identity.scopes, ["read", "write"]);
}

#[test]
fn jwt_accepts_es256_and_hs256_with_their_pinned_keys() {
    let es = sign(Algorithm::ES256, Some("ec"), &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(), &claims());
    assert!(plugin().verify(&es, NOW).is_ok());
    let hs = sign(Algorithm::HS256, Some("hs"), &EncodingKey::from_secret(SECRET.as_bytes()), &claims());
    assert!(plugin().verify(&hs, NOW).is_ok());
}

#[test]
fn jwt_accepts_an_aud_array_containing_the_audience() {
    let mut c = claims();
    c["aud"] = json!(["other", "api"]);
    assert!(plugin().verify(&rs256(&c), NOW).is_ok());
}

#[test]
fn jwt_refuses_alg_none() {
    let header = json!({ "alg": "none", "typ": "JWT" });
    let token = format!("{}.{}.", b64(&header), b64(&claims()));
    assert_eq!(plugin().verify(&token, NOW).unwrap_err(), Refusal::Malformed);
}

#[test]
fn jwt_refuses_hs256_signed_with_the_rsa_public_key() {
    let confused = sign(Algorithm::HS256, Some("rsa-pem"), &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()), &claims());
    assert_eq!(plugin().verify(&confused, NOW).unwrap_err(), Refusal::Invalid);
    let no_kid = sign(Algorithm::HS256, None, &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()), &claims());
    assert_eq!(plugin().verify(&no_kid, NOW).unwrap_err(), Refusal::Invalid);
}

#[test]
fn jwt_refuses_a_bad_signature_and_an_unknown_kid() {
    let attacker = EncodingKey::from_rsa_pem(ATTACKER_PRIVATE.as_bytes()).unwrap();
    assert_eq!(plugin().verify(&sign(Algorithm::RS256, Some("demo-rs256"), &attacker, &claims()), NOW).unwrap_err(), Refusal::Invalid);
    let unknown = sign(Algorithm::RS256, Some("nope"), &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(), &claims());
    assert_eq!(plugin().verify(&unknown, NOW).unwrap_err(), Refusal::Invalid);
}

#[test]
fn jwt_refuses_embedded_jwk_headers() {
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("demo-rs256".into());
    header.jku = Some("https://attacker.test/jwks.json".into());
    let token = encode(&header, &claims(), &key).unwrap();
    assert_eq!(plugin().verify(&token, NOW).unwrap_err(), Refusal::Invalid);
}

#[test]
fn jwt_checks_time_claims_with_leeway() {
    let p = plugin();
    let mut c = claims();
    c["exp"] = json!(NOW - 10);
    assert!(p.verify(&rs256(&c), NOW).is_ok(), "within the 30 s leeway");
    c["exp"] = json!(NOW - 31);
    assert_eq!(p.verify(&rs256(&c), NOW).unwrap_err(), Refusal::Expired);
    let mut c = claims();
    c["nbf"] = json!(NOW + 120);
    assert_eq!(p.verify(&rs256(&c), NOW).unwrap_err(), Refusal::NotYetValid);
}

#[test]
fn jwt_refuses_exp_as_a_string_or_missing() {
    let mut c = claims();
    c["exp"] = json!((NOW + 600).to_string());
    assert_eq!(plugin().verify(&rs256(&c), NOW).unwrap_err(), Refusal::ClaimsRejected);
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(plugin().verify(&rs256(&c), NOW).unwrap_err(), Refusal::ClaimsRejected);
}

#[test]
fn jwt_refuses_wrong_issuer_audience_or_subject() {
    for (claim, value) in [("iss", json!("https://evil.test")), ("aud", json!("other")), ("sub", json!(""))] {
        let mut c = claims();
        c[claim] = value;
        assert_eq!(plugin().verify(&rs256(&c), NOW).unwrap_err(), Refusal::ClaimsRejected, "{claim}");
    }
}

#[test]
fn jwt_refuses_oversized_tokens() {
    let mut c = claims();
    c["padding"] = json!("x".repeat(10_000));
    assert_eq!(plugin().verify(&rs256(&c), NOW).unwrap_err(), Refusal::TooLarge);
}

#[test]
fn jwt_denies_a_missing_token_with_a_bearer_challenge() {
    testing::reset();
    let outcome = plugin().authenticate(&testing::request("GET", "/api").build());
    let AuthOutcome::Denied(response) = outcome else { panic!("expected a denial") };
    assert_eq!(response.status, 401);
    let challenge = response.headers.iter().find(|h| h.name == "www-authenticate").unwrap();
    assert_eq!(challenge.value, "Bearer realm=\"portcullis\"");
}

#[test]
fn jwt_uses_the_host_clock() {
    testing::reset();
    let token = rs256(&claims());
    let request = testing::request("GET", "/api").header("Authorization", &format!("Bearer {token}")).build();
    testing::set_now_ms(u64::try_from(NOW).unwrap() * 1000);
    assert!(matches!(plugin().authenticate(&request), AuthOutcome::Authenticated(_)));
    testing::advance_ms(3_600_000);
    let AuthOutcome::Denied(response) = plugin().authenticate(&request) else { panic!("expected expiry") };
    let challenge = response.headers.iter().find(|h| h.name == "www-authenticate").unwrap();
    assert!(challenge.value.contains("error=\"invalid_token\""), "{}", challenge.value);
}

#[test]
fn jwt_config_errors_name_the_field() {
    let bad_alg = json!({ "issuer": "i", "keys": [{ "alg": "none", "secret": SECRET }] });
    assert_eq!(testing::configure::<JwtAuth>(&bad_alg.to_string()).err().unwrap().pointer, "/keys/0/alg");
    let short = json!({ "issuer": "i", "keys": [{ "alg": "HS256", "secret": "short" }] });
    assert_eq!(testing::configure::<JwtAuth>(&short.to_string()).err().unwrap().pointer, "/keys/0/secret");
    let misspelt = json!({ "issuer": "i", "audience": ["a"], "jwks": JWKS });
    assert_eq!(testing::configure::<JwtAuth>(&misspelt.to_string()).err().unwrap().pointer, "/audience");
    let none = json!({ "issuer": "i" });
    assert!(testing::configure::<JwtAuth>(&none.to_string()).is_err());
}
