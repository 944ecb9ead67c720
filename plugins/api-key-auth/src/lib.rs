//! `api-key-auth`: a Portcullis `auth` plugin that authenticates requests by API key (the
//! equivalent of Kong's `key-auth`).
//!
//! - The key is read from a header (`x-api-key` by default) and, when `query_param` is set, from
//!   that query parameter. A key in the query is always removed before the request goes
//!   upstream; a header key is removed too unless `hide_credentials = false`.
//! - Keys are configured as SHA-256 hashes (`sha256`, lowercase hex), or as plain `key` text
//!   that is hashed when the configuration loads; either way only hashes are kept in memory.
//!   The presented key is hashed and compared with every configured hash in constant time
//!   (`subtle`), so response timing reveals neither which key nor how much of it matched.
//! - Each key maps to an identity (subject, roles, scopes) that a later `rbac` step can check,
//!   and a key can itself be scoped to operations: with `operations` (methods and path
//!   patterns), a request the key's operations do not cover gets 403, whatever comes after.
//! - A key may carry `expires` (RFC 3339, UTC): from then on it is refused as unknown. For
//!   rotation, add the new key and give the old one an `expires` a little ahead (the overlap
//!   window in which clients move over), in one reload.
//! - `keys` is an array, or JSON text holding one (as the host's `{ "$file" = "keys.json" }`
//!   reference gives it), so keys can live in a separate file that hot reload watches.
//! - No key: 401 (or anonymous with `require_key = false`). Unknown key: 401. Responses are
//!   RFC 9457 problem documents with a `WWW-Authenticate: ApiKey` challenge naming where the
//!   key goes.
//!
//! Configuration reference: `plugins/api-key-auth/README.md`.

use portcullis_sdk::{
    Auth, AuthOutcome, Authenticated, ConfigError, Identity, LocalResponse, PathPattern, Plugin, Request,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// One configured key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key's SHA-256, 64 hex digits (`printf %s "$KEY" | sha256sum`).
    #[serde(default)]
    pub sha256: Option<String>,
    /// The key itself (hashed at load). Prefer `sha256` in files that are shared.
    #[serde(default)]
    pub key: Option<String>,
    /// Identity subject for requests with this key.
    pub subject: String,
    /// Roles granted.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Scopes granted.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The operations this key may perform; empty: every operation.
    #[serde(default)]
    pub operations: Vec<Operation>,
    /// When the key stops being accepted, RFC 3339 in UTC (`2026-12-31T00:00:00Z`).
    #[serde(default)]
    pub expires: Option<String>,
}

/// One operation a scoped key may perform.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    /// Methods (case-insensitive); empty: every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path pattern ([`PathPattern`]: `*` one segment, a final `**` any rest).
    pub path: String,
}

/// A configured key, as kept in memory.
struct Key {
    identity: Identity,
    /// Empty: every operation.
    operations: Vec<(Vec<String>, PathPattern)>,
    /// Seconds since the Unix epoch.
    expires_s: Option<u64>,
}

/// `keys`: inline, or JSON text from a `$file` reference.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Keys {
    /// An array of keys.
    Inline(Vec<KeyConfig>),
    /// JSON text of an array of keys.
    Text(String),
}

/// The step configuration (JSON).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The keys.
    pub keys: Keys,
    /// Header carrying the key. Default `x-api-key`.
    #[serde(default = "defaults::header")]
    pub header: String,
    /// Query parameter carrying the key, if keys may come in the URL. Default: none.
    #[serde(default)]
    pub query_param: Option<String>,
    /// Remove the header carrying the key before forwarding. Default true.
    #[serde(default = "defaults::yes")]
    pub hide_credentials: bool,
    /// When false, a request without a key continues as anonymous. Default true.
    #[serde(default = "defaults::yes")]
    pub require_key: bool,
}

mod defaults {
    pub fn header() -> String {
        "x-api-key".into()
    }
    pub fn yes() -> bool {
        true
    }
}

/// The configured plugin.
pub struct ApiKeyAuth {
    config: Config,
    hashes: Vec<[u8; 32]>,
    keys: Vec<Key>,
}

/// Seconds since the Unix epoch of an RFC 3339 UTC time, `YYYY-MM-DDTHH:MM:SS[.frac]Z`.
pub fn parse_rfc3339_utc(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<u64>().ok();
    let shape = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't')
        && b[13] == b':'
        && b[16] == b':'
        && matches!(b[b.len() - 1], b'Z' | b'z');
    if !shape {
        return None;
    }
    let fraction = text.get(19..text.len() - 1)?;
    let digits = |f: &str| f.len() > 1 && f.starts_with('.') && f[1..].bytes().all(|b| b.is_ascii_digit());
    if !(fraction.is_empty() || digits(fraction)) {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm), for the proleptic Gregorian calendar.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let m = (month + 9) % 12;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// SHA-256 of `key`.
pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Plugin for ApiKeyAuth {
    type Config = Config;

    fn new(mut config: Config) -> Result<Self, ConfigError> {
        let keys = match std::mem::replace(&mut config.keys, Keys::Inline(Vec::new())) {
            Keys::Inline(keys) => keys,
            Keys::Text(text) => serde_json::from_str(&text)
                .map_err(|e| ConfigError::new("/keys", format!("not a JSON array of keys: {e}")))?,
        };
        if keys.is_empty() {
            return Err(ConfigError::new("/keys", "at least one key is required"));
        }
        let mut hashes = Vec::new();
        let mut scoped = Vec::new();
        for (i, k) in keys.into_iter().enumerate() {
            let at = |field: &str| format!("/keys/{i}{field}");
            let h = match (&k.sha256, &k.key) {
                (Some(hex), None) => parse_hex(&hex.to_ascii_lowercase())
                    .ok_or_else(|| ConfigError::new(at("/sha256"), "must be 64 hex digits"))?,
                (None, Some(key)) if key.len() >= 16 => hash(key),
                (None, Some(_)) => return Err(ConfigError::new(at("/key"), "keys must be at least 16 characters")),
                _ => return Err(ConfigError::new(at(""), "give exactly one of `sha256` or `key`")),
            };
            if hashes.contains(&h) {
                return Err(ConfigError::new(at(""), "duplicate key"));
            }
            if k.subject.is_empty() {
                return Err(ConfigError::new(at("/subject"), "must not be empty"));
            }
            let mut operations = Vec::new();
            for (j, op) in k.operations.iter().enumerate() {
                let pattern = PathPattern::parse(&op.path)
                    .map_err(|m| ConfigError::new(at(&format!("/operations/{j}/path")), m))?;
                if let Some(n) =
                    op.methods.iter().position(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()))
                {
                    return Err(ConfigError::new(at(&format!("/operations/{j}/methods/{n}")), "must be a method name"));
                }
                operations.push((op.methods.iter().map(|m| m.to_ascii_uppercase()).collect(), pattern));
            }
            let expires_s = match &k.expires {
                None => None,
                Some(text) => Some(parse_rfc3339_utc(text).ok_or_else(|| {
                    ConfigError::new(at("/expires"), "must be an RFC 3339 time in UTC, e.g. 2026-12-31T00:00:00Z")
                })?),
            };
            hashes.push(h);
            let identity = Identity::new(k.subject).with_roles(k.roles).with_scopes(k.scopes);
            scoped.push(Key { identity, operations, expires_s });
        }
        config.header = config.header.to_ascii_lowercase();
        if config.header.is_empty() || !config.header.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
            return Err(ConfigError::new("/header", "must be a header name"));
        }
        if config.query_param.as_deref().is_some_and(|q| q.is_empty() || q.contains(['&', '=', '#'])) {
            return Err(ConfigError::new("/query_param", "must be a plain parameter name"));
        }
        Ok(ApiKeyAuth { config, hashes, keys: scoped })
    }
}

impl ApiKeyAuth {
    /// The identity for `key`, comparing its hash with every configured hash in constant time;
    /// none for an unknown key or one past its `expires`.
    pub fn lookup(&self, key: &str) -> Option<&Identity> {
        self.find(key).map(|k| &k.identity)
    }

    fn find(&self, key: &str) -> Option<&Key> {
        let presented = hash(key);
        let mut found = None;
        for (i, h) in self.hashes.iter().enumerate() {
            if bool::from(h.ct_eq(&presented)) {
                found = Some(i);
            }
        }
        let key = &self.keys[found?];
        // The clock is a host call: read only for keys that expire.
        key.expires_s.is_none_or(|expires| portcullis_sdk::now_ms() / 1000 < expires).then_some(key)
    }

    fn challenge(&self, detail: &str) -> LocalResponse {
        let mut challenge = format!("ApiKey header=\"{}\"", self.config.header);
        if let Some(q) = &self.config.query_param {
            challenge.push_str(&format!(", query=\"{q}\""));
        }
        LocalResponse::problem(401, "urn:portcullis:problem:unauthorized", "Unauthorized", detail)
            .with_header("www-authenticate", &challenge)
    }
}

impl Auth for ApiKeyAuth {
    fn authenticate(&self, request: &Request<'_>) -> AuthOutcome {
        let from_header = request.header(&self.config.header).map(|v| v.trim().to_owned());
        let from_query = match (&from_header, &self.config.query_param) {
            (None, Some(q)) => request.query_param(q).map(portcullis_sdk::percent_decode),
            _ => None,
        };
        let key = match (from_header, from_query) {
            (Some(k), _) => k,
            (None, Some(Some(k))) => k,
            (None, Some(None)) => return AuthOutcome::Denied(self.challenge("The API key is malformed")),
            (None, None) if self.config.require_key => {
                return AuthOutcome::Denied(self.challenge("An API key is required"));
            }
            (None, None) => return AuthOutcome::Anonymous,
        };
        let Some(key) = self.find(&key) else {
            return AuthOutcome::Denied(self.challenge("The API key is invalid"));
        };
        let allowed = key.operations.is_empty()
            || key.operations.iter().any(|(methods, path)| {
                (methods.is_empty() || methods.iter().any(|m| m == request.method())) && path.matches(request.path())
            });
        if !allowed {
            return AuthOutcome::Denied(LocalResponse::problem(
                403,
                "urn:portcullis:problem:forbidden",
                "Forbidden",
                "The API key is not allowed to perform this operation",
            ));
        }
        let mut done = Authenticated::new(key.identity.clone());
        if self.config.hide_credentials {
            done = done.hiding_header(&self.config.header);
        }
        if let Some(q) = &self.config.query_param {
            done = done.hiding_query_param(q);
        }
        done.into()
    }
}

portcullis_sdk::export_auth!(ApiKeyAuth);

#[cfg(test)]
mod tests {
    use portcullis_sdk::testing;

    use super::*;

    const CONFIG: &str = r#"{
        "query_param": "apikey",
        "keys": [
            {"key": "k-reader-0123456789", "subject": "svc-reader", "roles": ["reader"]},
            {"sha256": "SHA", "subject": "svc-admin", "roles": ["admin"], "scopes": ["items:write"]}
        ]
    }"#;

    fn plugin() -> ApiKeyAuth {
        let hex: String = hash("k-admin-0123456789").iter().map(|b| format!("{b:02x}")).collect();
        testing::configure(&CONFIG.replace("SHA", &hex)).unwrap()
    }

    fn identity(outcome: AuthOutcome) -> Authenticated {
        match outcome {
            AuthOutcome::Authenticated(done) => done,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keys_from_header_or_query_map_to_identities_and_are_hidden() {
        let p = plugin();
        let by_header =
            identity(p.authenticate(&testing::request("GET", "/").header("X-Api-Key", "k-reader-0123456789").build()));
        assert_eq!(by_header.identity.subject, "svc-reader");
        assert_eq!(by_header.remove_headers, ["x-api-key"]);
        let by_query = identity(p.authenticate(&testing::request("GET", "/?page=1&apikey=k-admin-0123456789").build()));
        assert_eq!(by_query.identity.subject, "svc-admin");
        assert_eq!(by_query.identity.scopes, ["items:write"]);
        assert_eq!(by_query.remove_query_params, ["apikey"]);
        let encoded = identity(p.authenticate(&testing::request("GET", "/?apikey=k-admin%2D0123456789").build()));
        assert_eq!(encoded.identity.subject, "svc-admin");
    }

    #[test]
    fn missing_and_unknown_keys_get_401_with_a_challenge() {
        let p = plugin();
        for request in [
            testing::request("GET", "/").build(),
            testing::request("GET", "/").header("x-api-key", "wrong-key-0123456789").build(),
            testing::request("GET", "/?apikey=%zz").build(),
        ] {
            let AuthOutcome::Denied(r) = p.authenticate(&request) else { panic!("{request:?}") };
            assert_eq!(r.status, 401);
            assert!(r.headers.iter().any(|h| h.name == "www-authenticate" && h.value.contains("x-api-key")));
        }
        let optional: ApiKeyAuth =
            testing::configure(r#"{"require_key": false, "keys": [{"key": "k-0123456789abcdef", "subject": "s"}]}"#)
                .unwrap();
        assert!(matches!(optional.authenticate(&testing::request("GET", "/").build()), AuthOutcome::Anonymous));
    }

    #[test]
    fn scoped_keys_get_403_outside_their_operations_and_expired_keys_are_unknown() {
        testing::reset();
        testing::set_now_ms(1_767_225_600_000 - 1000); // 2025-12-31T23:59:59Z
        let p: ApiKeyAuth = testing::configure(
            r#"{"keys": [
                {"key": "k-reports-0123456789", "subject": "reporting", "operations": [
                    {"methods": ["get"], "path": "/reports/**"},
                    {"methods": ["POST"], "path": "/reports/*/exports"}
                ]},
                {"key": "k-old-0123456789ab", "subject": "old", "expires": "2026-01-01T00:00:00Z"}
            ]}"#,
        )
        .unwrap();
        let call = |method: &str, path: &str, key: &str| {
            p.authenticate(&testing::request(method, path).header("x-api-key", key).build())
        };
        assert!(matches!(call("GET", "/reports/2026/q1", "k-reports-0123456789"), AuthOutcome::Authenticated(_)));
        assert!(matches!(call("POST", "/reports/7/exports", "k-reports-0123456789"), AuthOutcome::Authenticated(_)));
        for (method, path) in [("DELETE", "/reports/7"), ("GET", "/admin"), ("POST", "/reports/7")] {
            let AuthOutcome::Denied(r) = call(method, path, "k-reports-0123456789") else { panic!("{method} {path}") };
            assert_eq!(r.status, 403, "{method} {path}");
        }
        // The overlap window of a rotation: valid until `expires`, then unknown (401).
        assert!(matches!(call("GET", "/", "k-old-0123456789ab"), AuthOutcome::Authenticated(_)));
        testing::advance_ms(1000);
        let AuthOutcome::Denied(r) = call("GET", "/", "k-old-0123456789ab") else { panic!("expired key accepted") };
        assert_eq!(r.status, 401);
    }

    #[test]
    fn rfc3339_times_parse_to_unix_seconds() {
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_utc("2026-01-01T00:00:00Z"), Some(1_767_225_600));
        assert_eq!(parse_rfc3339_utc("2024-02-29T12:30:15.250Z"), Some(1_709_209_815));
        for bad in ["2026-01-01", "2026-13-01T00:00:00Z", "2026-01-01T00:00:00+01:00", "2026-01-01T00:00:00.Z"] {
            assert_eq!(parse_rfc3339_utc(bad), None, "{bad}");
        }
        let err = |json: &str| testing::configure::<ApiKeyAuth>(json).err().unwrap().pointer;
        assert_eq!(
            err(r#"{"keys": [{"key": "k-0123456789abcdef", "subject": "s", "expires": "soon"}]}"#),
            "/keys/0/expires"
        );
        assert_eq!(
            err(r#"{"keys": [{"key": "k-0123456789abcdef", "subject": "s", "operations": [{"path": "x"}]}]}"#),
            "/keys/0/operations/0/path"
        );
    }

    #[test]
    fn keys_load_from_file_text_and_bad_keys_are_refused() {
        let text = serde_json::to_string(r#"[{"key": "k-from-file-0123456789", "subject": "f"}]"#).unwrap();
        let p: ApiKeyAuth = testing::configure(&format!(r#"{{"keys": {text}}}"#)).unwrap();
        assert_eq!(p.lookup("k-from-file-0123456789").unwrap().subject, "f");
        let err = |json: &str| testing::configure::<ApiKeyAuth>(json).err().unwrap().pointer;
        assert_eq!(err(r#"{"keys": [{"key": "short", "subject": "s"}]}"#), "/keys/0/key");
        assert_eq!(err(r#"{"keys": [{"sha256": "abc", "subject": "s"}]}"#), "/keys/0/sha256");
        assert_eq!(err(r#"{"keys": [{"subject": "s"}]}"#), "/keys/0");
        assert_eq!(err(r#"{"keys": []}"#), "/keys");
        assert_eq!(
            err(
                r#"{"keys": [{"key": "k-0123456789abcdef", "subject": "a"}, {"key": "k-0123456789abcdef", "subject": "b"}]}"#
            ),
            "/keys/1"
        );
    }
}
