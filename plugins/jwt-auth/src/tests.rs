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
const RSA1024_PRIVATE: &str = include_str!("../../../tests/fixtures/rsa1024-private.pem");
const RSA1024_PUBLIC: &str = include_str!("../../../tests/fixtures/rsa1024-public.pem");
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
    assert_eq!(identity.authentication.acr, None);
}

#[test]
fn jwt_passes_on_how_the_subject_authenticated() {
    let mut c = claims();
    c["acr"] = json!("urn:example:mfa");
    c["amr"] = json!(["pwd", "otp"]);
    c["auth_time"] = json!(NOW - 60);
    let identity = plugin().verify(&rs256(&c), NOW).unwrap();
    assert_eq!(identity.authentication.acr.as_deref(), Some("urn:example:mfa"));
    assert_eq!(identity.authentication.amr, ["pwd", "otp"]);
    assert_eq!(identity.authentication.auth_time, Some(u64::try_from(NOW - 60).unwrap()));
    c["auth_time"] = json!("yesterday");
    assert_eq!(plugin().verify(&rs256(&c), NOW).unwrap_err(), Refusal::ClaimsRejected, "a NumericDate or nothing");
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
    assert_eq!(
        plugin().verify(&sign(Algorithm::RS256, Some("demo-rs256"), &attacker, &claims()), NOW).unwrap_err(),
        Refusal::Invalid
    );
    let unknown =
        sign(Algorithm::RS256, Some("nope"), &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(), &claims());
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

// RFC 7515 Appendix A: the specification's own examples.
const RFC7515_A1_HS256: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const RFC7515_A1_KEY: &str = "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
const RFC7515_A3_ES256: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
const RFC7515_A5_NONE: &str = "eyJhbGciOiJub25lIn0.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.";

fn rfc_key(alg: &str, jwk: Value) -> crate::keys::Key {
    let config: crate::KeyConfig = serde_json::from_value(json!({ "alg": alg, "jwk": jwk })).unwrap();
    config.load().ok().unwrap()
}

#[test]
fn jwt_rfc7515_appendix_examples_verify_and_tampered_ones_fail() {
    let hs = rfc_key("HS256", json!({ "kty": "oct", "alg": "HS256", "k": RFC7515_A1_KEY }));
    let claims = hs.verify(RFC7515_A1_HS256).expect("RFC 7515 A.1 must verify");
    assert_eq!(claims["iss"], "joe");
    let es = rfc_key(
        "ES256",
        json!({ "kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0" }),
    );
    assert!(es.verify(RFC7515_A3_ES256).is_some(), "RFC 7515 A.3 must verify");
    // The same signatures over another payload, or with another key, must not.
    let forged_payload = format!(
        "eyJhbGciOiJFUzI1NiJ9.{}.{}",
        b64(&json!({"iss": "joe", "admin": true})),
        RFC7515_A3_ES256.rsplit('.').next().unwrap()
    );
    assert!(es.verify(&forged_payload).is_none());
    assert!(es.verify(RFC7515_A1_HS256).is_none(), "a key never verifies another algorithm");
    assert!(hs.verify(RFC7515_A3_ES256).is_none());
    // A.5, the unsecured JWS: refused as malformed before any key is tried.
    let p: JwtAuth = testing::configure(&json!({ "issuer": "joe", "keys": [{ "alg": "HS256", "jwk": { "kty": "oct", "alg": "HS256", "k": RFC7515_A1_KEY } }] }).to_string()).unwrap();
    assert_eq!(p.verify(RFC7515_A5_NONE, 1_300_819_000).unwrap_err(), Refusal::Malformed);
    // A.1 has a valid signature but no `sub`: the claims, not the signature, refuse it.
    assert_eq!(p.verify(RFC7515_A1_HS256, 1_300_819_000).unwrap_err(), Refusal::ClaimsRejected);
}

fn hs256(secret: &str, kid: &str, claims: &Value) -> String {
    sign(Algorithm::HS256, Some(kid), &EncodingKey::from_secret(secret.as_bytes()), claims)
}

#[test]
fn jwt_several_issuers_each_with_their_own_keys_and_audiences() {
    testing::reset();
    let other_secret = "another-issuer-secret-of-at-least-32-bytes";
    let p: JwtAuth = testing::configure(
        &json!({ "issuers": [
            { "issuer": "https://a.test", "audiences": ["api"], "keys": [{ "kid": "a", "alg": "HS256", "secret": SECRET }] },
            { "issuer": "https://b.test", "keys": [{ "kid": "b", "alg": "HS256", "secret": other_secret }], "roles_claim": "groups" },
        ]})
        .to_string(),
    )
    .unwrap();
    let a = json!({ "sub": "alice", "iss": "https://a.test", "aud": "api", "exp": NOW + 60 });
    let b = json!({ "sub": "bob", "iss": "https://b.test", "exp": NOW + 60, "groups": ["ops"] });
    assert_eq!(p.verify(&hs256(SECRET, "a", &a), NOW).unwrap().subject, "alice");
    assert_eq!(p.verify(&hs256(other_secret, "b", &b), NOW).unwrap().roles, ["ops"]);
    // Issuer B's token signed with issuer A's key: B's keys are the only ones tried.
    assert_eq!(p.verify(&hs256(SECRET, "b", &b), NOW).unwrap_err(), Refusal::Invalid);
    let unknown = json!({ "sub": "eve", "iss": "https://evil.test", "exp": NOW + 60 });
    assert_eq!(p.verify(&hs256(SECRET, "a", &unknown), NOW).unwrap_err(), Refusal::ClaimsRejected);
}

#[test]
fn jwt_reads_tokens_from_configured_headers_and_cookies() {
    testing::reset();
    testing::set_now_ms(u64::try_from(NOW).unwrap() * 1000);
    let p: JwtAuth = testing::configure(
        &json!({ "issuer": "https://issuer.test", "keys": [{ "alg": "HS256", "secret": SECRET }],
                 "token_sources": [{ "cookie": "access_token" }, { "header": "x-jwt" }] })
        .to_string(),
    )
    .unwrap();
    let token = hs256(SECRET, "k", &claims());
    let cookie = testing::request("GET", "/").header("cookie", &format!("theme=dark; access_token={token}")).build();
    assert!(matches!(p.authenticate(&cookie), AuthOutcome::Authenticated(_)));
    let header = testing::request("GET", "/").header("x-jwt", &token).build();
    assert!(matches!(p.authenticate(&header), AuthOutcome::Authenticated(_)));
    let bearer = testing::request("GET", "/").header("authorization", &format!("Bearer {token}")).build();
    assert!(matches!(p.authenticate(&bearer), AuthOutcome::Denied(_)), "Authorization is not a configured source");
}

/// A fake JWKS endpoint: serves `doc` (shared so a test can rotate it) or fails.
fn serve_jwks(doc: &std::rc::Rc<std::cell::RefCell<Option<String>>>, fetches: &std::rc::Rc<std::cell::Cell<u32>>) {
    let (doc, fetches) = (doc.clone(), fetches.clone());
    testing::set_http_handler(move |req| {
        assert_eq!(req.url, "https://idp.test/jwks.json");
        fetches.set(fetches.get() + 1);
        match doc.borrow().clone() {
            Some(body) => {
                Ok(portcullis_sdk::OutboundResponse { status: 200, headers: vec![], body: body.into_bytes() })
            }
            None => Err(portcullis_sdk::HttpError::Connect("connection refused".into())),
        }
    });
}

fn jwks_of(kids: &[&str]) -> String {
    let keys: Vec<Value> = kids
        .iter()
        .map(|kid| json!({ "kty": "oct", "alg": "HS256", "kid": kid, "k": b64_bytes(SECRET.as_bytes()) }))
        .collect();
    json!({ "keys": keys }).to_string()
}

fn b64_bytes(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn jwt_jwks_url_is_cached_refetched_on_rotation_after_a_cooldown_and_kept_stale_within_bounds() {
    testing::reset();
    let start_ms = u64::try_from(NOW).unwrap() * 1000;
    testing::set_now_ms(start_ms);
    let doc = std::rc::Rc::new(std::cell::RefCell::new(Some(jwks_of(&["k1"]))));
    let fetches = std::rc::Rc::new(std::cell::Cell::new(0));
    serve_jwks(&doc, &fetches);
    let p: JwtAuth = testing::configure(
        &json!({ "issuer": "https://issuer.test", "jwks_url": "https://idp.test/jwks.json",
                 "jwks_cache": { "max_age_ms": 60000, "refetch_cooldown_ms": 10000, "max_stale_ms": 120000 } })
        .to_string(),
    )
    .unwrap();
    let now_s = |p: &JwtAuth, kid: &str| {
        let at = i64::try_from(portcullis_sdk::now_ms() / 1000).unwrap();
        let mut c = claims();
        c["exp"] = json!(at + 600);
        p.verify(&hs256(SECRET, kid, &c), at)
    };
    assert!(now_s(&p, "k1").is_ok());
    assert!(now_s(&p, "k1").is_ok());
    assert_eq!(fetches.get(), 1, "cached");
    // A second instance shares the fetched document through kv.
    let other: JwtAuth = testing::configure(
        &json!({ "issuer": "https://issuer.test", "jwks_url": "https://idp.test/jwks.json" }).to_string(),
    )
    .unwrap();
    assert!(now_s(&other, "k1").is_ok());
    assert_eq!(fetches.get(), 1, "shared, not fetched again");
    // Rotation: k2 appears at the IdP. Within the cooldown an unknown kid does not refetch.
    *doc.borrow_mut() = Some(jwks_of(&["k1", "k2"]));
    assert_eq!(now_s(&p, "k2").unwrap_err(), Refusal::Invalid);
    assert_eq!(fetches.get(), 1);
    testing::advance_ms(10_001);
    assert!(now_s(&p, "k2").is_ok(), "refetched after the cooldown");
    assert_eq!(fetches.get(), 2);
    for _ in 0..5 {
        let _ = now_s(&p, "random-kid");
    }
    assert!(fetches.get() <= 3, "unknown kids cannot cause a fetch storm");
    // The IdP goes down: keys past max-age stay in use until max_stale_ms, then 401.
    *doc.borrow_mut() = None;
    testing::advance_ms(90_000);
    assert!(now_s(&p, "k1").is_ok(), "stale keys are still used while the endpoint fails");
    testing::advance_ms(120_000);
    assert_eq!(now_s(&p, "k1").unwrap_err(), Refusal::Invalid, "past max_stale_ms the keys are dropped");
    // It comes back: the next attempt after the cooldown restores service.
    *doc.borrow_mut() = Some(jwks_of(&["k1"]));
    testing::advance_ms(10_001);
    assert!(now_s(&p, "k1").is_ok());
}

#[test]
fn jwt_remembers_verified_tokens_only_inside_their_window() {
    let p = plugin();
    let token = rs256(&claims());
    assert!(p.verify(&token, NOW).is_ok());
    assert_eq!(p.verified.borrow().len(), 1);
    assert_eq!(p.verify(&token, NOW + 1).unwrap().roles, ["reader", "writer"], "answered from the cache");
    // A different string (one signature character changed) never matches a cached entry.
    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(p.verify(&forged, NOW + 1).unwrap_err(), Refusal::Invalid);
    // Outside the window (exp + 30 s leeway, iat - 30 s) the token is checked again.
    assert_eq!(p.verify(&token, NOW + 631).unwrap_err(), Refusal::Expired);
    assert_eq!(p.verified.borrow().len(), 0, "the expired entry is gone");
    assert_eq!(p.verify(&token, NOW - 31).unwrap_err(), Refusal::NotYetValid);
    assert!(p.verify(&token, NOW + 630).is_ok(), "the last second of the leeway");
}

#[test]
fn jwt_verified_cache_is_bounded_and_can_be_turned_off() {
    let config =
        json!({ "issuer": "https://issuer.test", "audiences": ["api"], "jwks": JWKS, "verified_cache_entries": 2 });
    let p: JwtAuth = testing::configure(&config.to_string()).unwrap();
    for sub in ["a", "b", "c"] {
        let mut c = claims();
        c["sub"] = json!(sub);
        assert_eq!(p.verify(&rs256(&c), NOW).unwrap().subject, sub);
        assert!(p.verified.borrow().len() <= 2);
    }
    let config =
        json!({ "issuer": "https://issuer.test", "audiences": ["api"], "jwks": JWKS, "verified_cache_entries": 0 });
    let off: JwtAuth = testing::configure(&config.to_string()).unwrap();
    assert!(off.verify(&rs256(&claims()), NOW).is_ok());
    assert_eq!(off.verified.borrow().len(), 0);
}

#[test]
fn jwt_asymmetric_signatures_are_checked_by_the_host_and_hmac_ones_here() {
    testing::reset();
    let p = plugin();
    assert!(p.verify(&rs256(&claims()), NOW).is_ok());
    assert_eq!(testing::signature_checks(), (1, 0), "the RS256 signature went to the host");
    let es = sign(Algorithm::ES256, Some("ec"), &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(), &claims());
    assert!(p.verify(&es, NOW).is_ok());
    assert_eq!(testing::signature_checks(), (2, 0), "and the ES256 one (a PEM key)");
    assert!(p.verify(&hs256(SECRET, "hs", &claims()), NOW).is_ok());
    assert_eq!(testing::signature_checks(), (2, 0), "HMAC is checked in the plugin");
    // A forged signature costs one host check and is refused; nothing about it is cached.
    let attacker = EncodingKey::from_rsa_pem(ATTACKER_PRIVATE.as_bytes()).unwrap();
    let forged = sign(Algorithm::RS256, Some("demo-rs256"), &attacker, &claims());
    for _ in 0..2 {
        assert_eq!(p.verify(&forged, NOW).unwrap_err(), Refusal::Invalid);
    }
    assert_eq!(testing::signature_checks(), (2, 2));
    // A token that is not three parts, or whose signature is not base64url, never reaches it.
    let token = rs256(&claims());
    assert_eq!(p.verify(&format!("{token}.x"), NOW).unwrap_err(), Refusal::Malformed);
    let (input, _) = token.rsplit_once('.').unwrap();
    assert_eq!(p.verify(&format!("{input}.*"), NOW).unwrap_err(), Refusal::Invalid);
    assert_eq!(testing::signature_checks(), (2, 2));
}

#[test]
fn jwt_checks_keys_the_host_does_not_take_itself() {
    testing::reset();
    // RSA-1024 is below the host's 2048-bit floor: the plugin checks it with jsonwebtoken, as
    // it did before the host could, and says so once in the log.
    let config = json!({ "issuer": "https://issuer.test", "audiences": ["api"],
                         "keys": [{ "kid": "small", "alg": "RS256", "pem": RSA1024_PUBLIC }] });
    let p: JwtAuth = testing::configure(&config.to_string()).unwrap();
    let logged = testing::logs();
    assert_eq!(logged.len(), 1);
    assert_eq!(
        logged[0].message,
        "RS256 key checked in the plugin, not by the host: an RSA modulus of 1024 bits; the host checks 2048 to 8192 bits"
    );
    let small = EncodingKey::from_rsa_pem(RSA1024_PRIVATE.as_bytes()).unwrap();
    assert_eq!(p.verify(&sign(Algorithm::RS256, Some("small"), &small, &claims()), NOW).unwrap().subject, "alice");
    let attacker = EncodingKey::from_rsa_pem(ATTACKER_PRIVATE.as_bytes()).unwrap();
    let forged = sign(Algorithm::RS256, Some("small"), &attacker, &claims());
    assert_eq!(p.verify(&forged, NOW).unwrap_err(), Refusal::Invalid);
    assert_eq!(testing::signature_checks(), (0, 0), "the host was never asked");
}

#[test]
fn a_signed_token_whose_payload_carries_base64_padding_is_malformed() {
    // The compact serialization has no padding (RFC 7515 §2), and no key decodes a padded
    // payload: such a token is refused as malformed before any key (or JWKS fetch) is tried,
    // even with a valid signature over it, checked by the host (RS256) or here (HS256).
    let p = plugin();
    let keys = [
        (Algorithm::RS256, "demo-rs256", EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap()),
        (Algorithm::HS256, "hs", EncodingKey::from_secret(SECRET.as_bytes())),
    ];
    for (alg, kid, key) in &keys {
        let header = b64(&json!({"alg": format!("{alg:?}"), "typ": "JWT", "kid": kid}));
        let mut c = claims();
        let mut payload = b64(&c);
        while payload.len().is_multiple_of(4) {
            c["n"] = json!(format!("{}x", c["n"].as_str().unwrap_or_default()));
            payload = b64(&c);
        }
        let padded = format!("{payload}{}", "=".repeat(4 - payload.len() % 4));
        let token = |body: &str| {
            let input = format!("{header}.{body}");
            let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, *alg).unwrap();
            format!("{input}.{signature}")
        };
        assert_eq!(p.verify(&token(&payload), NOW).unwrap().subject, "alice", "{alg:?}: unpadded, it verifies");
        assert_eq!(p.verify(&token(&padded), NOW).unwrap_err(), Refusal::Malformed, "{alg:?}");
    }
}
