//! Fuzz entry points: each takes arbitrary bytes, never panics on bad input, and panics only to
//! report a broken invariant (which the fuzzer then records as a crash).
//!
//! They are shared by the cargo-fuzz targets in `fuzz/` (run with a nightly toolchain:
//! `cargo +nightly fuzz run routing`) and by `tests/tests/fuzz_corpus.rs`, which replays each
//! target's seed corpus (`fuzz/corpus/<target>/`) plus deterministic mutations of it on every
//! `cargo test`, so what the fuzzer once found stays fixed.

use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::chain::local_response;
use crate::plugin::bindings::portcullis::plugin::types::{Header, HeaderEdits, LocalResponse};
use crate::proxy::headers::{IdentityHeaders, apply_edits};
use crate::proxy::path::normalize;
use crate::router::Router;

/// Configuration text (TOML, lossy UTF-8): parsing and checking never panic, and a refusal
/// always names a field and a reason.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match crate::config::check_text(&text) {
        Ok(config) => assert!(!config.listeners.is_empty(), "an accepted configuration has a listener"),
        Err(issues) => {
            assert!(!issues.is_empty(), "a refusal lists at least one problem");
            for issue in issues {
                assert!(!issue.field.is_empty() && !issue.message.is_empty(), "{issue:?}");
            }
        }
    }
}

/// The routes [`routing`] matches against: a protected prefix, an API prefix, matchit patterns
/// and a catch-all.
const ROUTES: &str = r#"
[[listener]]
address = "127.0.0.1:0"
[upstream.app]
endpoints = ["127.0.0.1:1"]
[[route]]
id = "admin"
path_prefix = "/admin"
upstream = "app"
[[route]]
id = "api"
path_prefix = "/api/"
methods = ["GET", "POST"]
upstream = "app"
[[route]]
id = "user"
path = "/users/{id}"
upstream = "app"
[[route]]
id = "files"
path = "/files/{*rest}"
upstream = "app"
[[route]]
id = "vhost"
host = "admin.test"
path_prefix = "/"
upstream = "app"
[[route]]
id = "root"
path_prefix = "/"
upstream = "app"
"#;

fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let config = crate::config::check_text(ROUTES).unwrap_or_else(|e| panic!("the fuzz routes are valid: {e:?}"));
        Router::build(&config.routes).unwrap_or_else(|e| panic!("the fuzz routes build: {e:?}"))
    })
}

/// A request path (the first byte picks method and host, the rest is the path, lossy UTF-8)
/// normalized and routed as the proxy does. Invariants:
/// - a normalized path starts with `/` and has no dot segment, no empty segment and no encoded
///   unreserved character left, and normalizing it again changes nothing;
/// - a normalized path under `/admin` always matches the `admin` route (or the host's own
///   route), so no spelling of a path slips past a route's chain.
pub fn routing(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    let method = [Method::GET, Method::POST, Method::DELETE, Method::OPTIONS][usize::from(selector & 3)].clone();
    let host = ["", "api.test", "admin.test"][usize::from((selector >> 2) % 3)];
    let path = String::from_utf8_lossy(rest);
    let Ok(normal) = normalize(&path) else { return };
    assert!(normal.starts_with('/'), "{path:?} -> {normal:?}");
    let inner = &normal[1..];
    for segment in inner.split('/').take(inner.split('/').count().saturating_sub(1)) {
        assert!(!segment.is_empty(), "empty segment: {path:?} -> {normal:?}");
    }
    for segment in inner.split('/') {
        assert!(segment != "." && segment != "..", "dot segment: {path:?} -> {normal:?}");
    }
    let lower = normal.to_ascii_lowercase();
    for encoded in ["%2e", "%2d", "%5f", "%7e", "%41", "%61", "%30"] {
        assert!(!lower.contains(encoded), "encoded unreserved {encoded}: {path:?} -> {normal:?}");
    }
    assert_eq!(normalize(&normal).ok().as_deref(), Some(&*normal), "normalizing twice changed {path:?}");
    let found = router().find(host, &normal, &method);
    let under_admin = normal == "/admin" || normal.starts_with("/admin/");
    if under_admin && host != "admin.test" {
        assert_eq!(found, Some(0), "{path:?} -> {normal:?} escaped the admin route");
    }
}

/// Plugin output at the WIT boundary, decoded from bytes: a local response (status, headers,
/// body) and header edits. Invariants:
/// - an accepted local response has a status in 200..=599 and no framing (`content-length`),
///   `host` or hop-by-hop header;
/// - header edits apply all or nothing, and never touch the identity headers, `host` or
///   `content-length`.
pub fn plugin_output(data: &[u8]) {
    let status = u16::from_be_bytes([data.first().copied().unwrap_or(0), data.get(1).copied().unwrap_or(0)]);
    let parts: Vec<String> = data
        .get(2..)
        .unwrap_or_default()
        .split(|&b| b == 0xff)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let headers: Vec<Header> =
        parts.chunks_exact(2).map(|pair| Header { name: pair[0].clone(), value: pair[1].clone() }).collect();
    let body = parts.last().map(|p| p.as_bytes().to_vec()).unwrap_or_default();

    let local = LocalResponse { status, headers: headers.clone(), body };
    if let Ok(response) = local_response(local) {
        assert!((200..=599).contains(&response.status().as_u16()));
        for name in response.headers().keys() {
            assert!(!crate::proxy::headers::is_hop_by_hop(name), "hop-by-hop {name} accepted");
            assert!(name != http::header::CONTENT_LENGTH && name != http::header::HOST, "{name} accepted");
        }
    }

    let identity = IdentityHeaders {
        subject: HeaderName::from_static("x-user-id"),
        roles: HeaderName::from_static("x-user-roles"),
        scopes: HeaderName::from_static("x-user-scopes"),
        issuer: HeaderName::from_static("x-user-issuer"),
        strip: vec![],
    };
    let mut original = HeaderMap::new();
    original.insert("x-user-id", HeaderValue::from_static("alice"));
    original.insert(http::header::HOST, HeaderValue::from_static("gw.test"));
    original.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("3"));
    original.insert("x-other", HeaderValue::from_static("1"));
    let third = headers.len() / 3;
    let edits = HeaderEdits {
        remove: headers[..third].iter().map(|h| h.name.clone()).collect(),
        set: headers[third..2 * third].to_vec(),
        append: headers[2 * third..].to_vec(),
    };
    let mut edited = original.clone();
    match apply_edits(&mut edited, &edits, Some(&identity)) {
        Ok(()) => {
            for name in ["x-user-id", "host", "content-length"] {
                assert_eq!(
                    edited.get_all(name).iter().collect::<Vec<_>>(),
                    original.get_all(name).iter().collect::<Vec<_>>(),
                    "{name} was edited"
                );
            }
        }
        Err(_) => assert_eq!(edited, original, "a refused edit changed the headers"),
    }
}

/// A verifying key a plugin hands the `signatures` capability, decoded from bytes: the first
/// byte picks the algorithm (its value modulo 9, in the WIT's order) and the form (even: JWK
/// text, odd: PEM text), the rest is the key text (lossy UTF-8), and the same bytes serve as a
/// message and signature to check. Invariants: parsing never panics; an accepted key is pinned
/// to the algorithm asked for; a refusal says why; checking any bytes against any accepted key
/// never panics, and a signature that is not of the algorithm's length never verifies.
pub fn signature_keys(data: &[u8]) {
    use portcullis_signatures::{Algorithm, KeyError, VerifyingKey};
    let Some((&selector, rest)) = data.split_first() else { return };
    let algorithm = Algorithm::ALL[usize::from(selector) % Algorithm::ALL.len()];
    let text = String::from_utf8_lossy(rest);
    let key = if selector % 2 == 0 {
        VerifyingKey::from_jwk(&text, algorithm)
    } else {
        VerifyingKey::from_pem(&text, algorithm)
    };
    match key {
        Ok(key) => {
            assert_eq!(key.algorithm(), algorithm, "a key is pinned to the algorithm asked for");
            let (message, signature) = rest.split_at(rest.len() / 2);
            let fixed = match algorithm {
                Algorithm::Es256 | Algorithm::EdDsa => Some(64),
                Algorithm::Es384 => Some(96),
                _ => None,
            };
            let verified = key.verify(message, signature);
            if fixed.is_some_and(|n| n != signature.len()) {
                assert!(!verified, "a {algorithm:?} signature of {} bytes verified", signature.len());
            }
        }
        Err(KeyError::Unsupported(why) | KeyError::Invalid(why)) => assert!(!why.is_empty(), "a refusal says why"),
    }
}
