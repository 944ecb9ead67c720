//! `oauth2-introspection`: a Portcullis `auth` plugin for opaque OAuth 2.0 bearer tokens
//! (RFC 6750), checked against the authorization server's token introspection endpoint
//! (RFC 7662) through the host's `http-client` capability.
//!
//! - The token comes from `Authorization: Bearer` (RFC 6750 §2.1), capped at `max_token_bytes`.
//! - The plugin POSTs `token=…&token_type_hint=access_token` (RFC 7662 §2.1) with HTTP Basic
//!   client authentication (`client_secret_basic`, RFC 6749 §2.3.1: id and secret
//!   form-urlencoded first).
//! - `"active": true` (and an `exp`, when present, in the future; `aud` containing one of
//!   `audiences` when configured) gives an identity: subject from `sub`, else `username`, else
//!   `client_id`; issuer from `iss`; scopes from `scope` (space separated); roles from the
//!   member named by `roles_claim`.
//! - Results are cached in `kv`, shared by every instance, keyed by the token's SHA-256 (the
//!   token itself is never stored): an active token until its `exp`, at most `cache_max_ms`;
//!   an inactive one for `negative_cache_ms`, so a flood of bad tokens does not become a flood
//!   of introspection calls.
//! - An unreachable or failing endpoint (timeout, connection error, non-200, unparseable body)
//!   yields 503 `auth-unavailable` and is not cached; the client can retry.
//! - Refusals are 401 problem responses with an RFC 6750 §3 challenge; the description never
//!   says more than "invalid".
//!
//! Configuration reference: `plugins/oauth2-introspection/README.md`.

use base64::Engine as _;
use portcullis_sdk::{
    Auth, AuthOutcome, ConfigError, Header, HttpError, Identity, LocalResponse, OutboundRequest, Plugin, Request, kv,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The step configuration (JSON).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The introspection endpoint, an absolute `http`/`https` URL whose origin is in the
    /// plugin's `allowed_origins`.
    pub endpoint: String,
    /// OAuth client id of the gateway at the authorization server.
    pub client_id: String,
    /// Its secret: text (use `{ "$file" = … }` to keep it out of the main configuration), or
    /// `{ secret = "NAME" }`, a `[secret]` granted to the plugin, which the host writes into
    /// the introspection request so the plaintext never enters plugin memory.
    pub client_secret: ClientSecret,
    /// Accepted `aud` values; when empty, `aud` is not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Member of the introspection response holding roles (array, or space/comma separated).
    #[serde(default = "defaults::roles_claim")]
    pub roles_claim: String,
    /// Total time for one introspection call, in ms (the host caps it at 10 000).
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u32,
    /// Longest time an active result is reused, in ms (never past the token's `exp`).
    #[serde(default = "defaults::cache_max_ms")]
    pub cache_max_ms: u64,
    /// How long an inactive result is reused, in ms; 0 disables negative caching.
    #[serde(default = "defaults::negative_cache_ms")]
    pub negative_cache_ms: u64,
    /// When false, a request without a token continues as anonymous.
    #[serde(default = "defaults::yes")]
    pub require_token: bool,
    /// Largest accepted token, in bytes.
    #[serde(default = "defaults::max_token_bytes")]
    pub max_token_bytes: usize,
    /// The `realm` of the challenge.
    #[serde(default = "defaults::realm")]
    pub realm: String,
}

mod defaults {
    pub fn roles_claim() -> String {
        "roles".into()
    }
    pub fn timeout_ms() -> u32 {
        2_000
    }
    pub fn cache_max_ms() -> u64 {
        300_000
    }
    pub fn negative_cache_ms() -> u64 {
        10_000
    }
    pub fn yes() -> bool {
        true
    }
    pub fn max_token_bytes() -> usize {
        4096
    }
    pub fn realm() -> String {
        "portcullis".into()
    }
}

/// `client_secret`: the text, or a gateway `[secret]` by name.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ClientSecret {
    /// The secret itself.
    Text(String),
    /// A secret the host holds.
    Held {
        /// Its `[secret.NAME]` name, in the plugin's `secrets` grant.
        secret: String,
    },
}

/// How the introspection request authenticates the gateway (`client_secret_basic`).
enum ClientAuth {
    /// The `authorization` value, built at load from a secret in the configuration.
    Header(String),
    /// Written by the host from a held secret.
    Held(portcullis_sdk::secrets::Credential),
}

/// What is cached per token hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
enum Cached {
    Active { sub: String, iss: Option<String>, roles: Vec<String>, scopes: Vec<String> },
    Inactive,
}

/// The configured plugin.
pub struct Introspection {
    config: Config,
    auth: ClientAuth,
}

/// `application/x-www-form-urlencoded` encoding of one value (WHATWG URL §5.2).
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(char::from(b)),
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

impl Plugin for Introspection {
    type Config = Config;

    fn new(config: Config) -> Result<Self, ConfigError> {
        let lower = config.endpoint.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            return Err(ConfigError::new("/endpoint", "must be an absolute http or https URL"));
        }
        if config.client_id.is_empty() {
            return Err(ConfigError::new("/client_id", "must not be empty"));
        }
        if !portcullis_sdk::is_quotable(&config.realm) {
            return Err(ConfigError::new("/realm", "must not contain quotes, backslashes or control characters"));
        }
        if config.timeout_ms == 0 || config.timeout_ms > 10_000 {
            return Err(ConfigError::new("/timeout_ms", "must be 1 to 10000"));
        }
        let auth = match &config.client_secret {
            ClientSecret::Text(secret) => {
                let credentials = format!("{}:{}", form_encode(&config.client_id), form_encode(secret.trim_end()));
                ClientAuth::Header(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials)))
            }
            ClientSecret::Held { secret } if secret.is_empty() => {
                return Err(ConfigError::new("/client_secret/secret", "names a [secret.NAME] granted to the plugin"));
            }
            ClientSecret::Held { secret } => {
                ClientAuth::Held(portcullis_sdk::secrets::client_secret_basic(&config.client_id, secret))
            }
        };
        Ok(Introspection { config, auth })
    }
}

/// Why a request could not be authenticated.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The token is not active (or too large): 401.
    Invalid,
    /// The endpoint could not answer: 503.
    Unavailable,
}

fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(Value::String(s)) => s.split([' ', ',']).filter(|p| !p.is_empty()).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

impl Introspection {
    fn cache_key(token: &str) -> String {
        let digest = Sha256::digest(token.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("tok:{hex}")
    }

    /// The identity for `token`, from the cache or the endpoint.
    fn introspect(&self, token: &str) -> Result<Identity, Failure> {
        if token.len() > self.config.max_token_bytes {
            return Err(Failure::Invalid);
        }
        let key = Self::cache_key(token);
        let cached = kv::get(&key).ok().flatten().and_then(|bytes| serde_json::from_slice::<Cached>(&bytes).ok());
        let result = match cached {
            Some(hit) => hit,
            None => {
                let (result, ttl_ms) = self.ask(token)?;
                if ttl_ms > 0
                    && let Ok(bytes) = serde_json::to_vec(&result)
                {
                    // A full store only costs a cache miss next time.
                    let _ = kv::set(&key, &bytes, Some(ttl_ms));
                }
                result
            }
        };
        match result {
            Cached::Active { sub, iss, roles, scopes } => {
                let identity = Identity::new(sub).with_roles(roles).with_scopes(scopes);
                Ok(match iss {
                    Some(iss) => identity.with_issuer(iss),
                    None => identity,
                })
            }
            Cached::Inactive => Err(Failure::Invalid),
        }
    }

    /// Calls the endpoint: the result and how long to cache it, in ms.
    fn ask(&self, token: &str) -> Result<(Cached, u64), Failure> {
        let mut request = OutboundRequest {
            method: "POST".into(),
            url: self.config.endpoint.clone(),
            headers: vec![
                Header { name: "content-type".into(), value: "application/x-www-form-urlencoded".into() },
                Header { name: "accept".into(), value: "application/json".into() },
            ],
            body: format!("token={}&token_type_hint=access_token", form_encode(token)).into_bytes(),
            timeout_ms: Some(self.config.timeout_ms),
        };
        let sent = match &self.auth {
            ClientAuth::Header(value) => {
                request.headers.push(Header { name: "authorization".into(), value: value.clone() });
                portcullis_sdk::http_send(&request)
            }
            ClientAuth::Held(credential) => portcullis_sdk::secrets::send(&request, credential),
        };
        let response = sent.map_err(|e| {
            let why = match e {
                HttpError::Timeout => "timeout".to_owned(),
                other => format!("{other:?}"),
            };
            portcullis_sdk::log(portcullis_sdk::Level::Warn, &format!("token introspection failed: {why}"));
            Failure::Unavailable
        })?;
        if response.status != 200 {
            portcullis_sdk::log(
                portcullis_sdk::Level::Warn,
                &format!("token introspection answered HTTP {}", response.status),
            );
            return Err(Failure::Unavailable);
        }
        let body: Value = serde_json::from_slice(&response.body).map_err(|_| Failure::Unavailable)?;
        let negative = (Cached::Inactive, self.config.negative_cache_ms);
        if body.get("active") != Some(&Value::Bool(true)) {
            return Ok(negative);
        }
        let now_ms = portcullis_sdk::now_ms();
        let exp_ms = body.get("exp").and_then(Value::as_u64).map(|s| s.saturating_mul(1000));
        if exp_ms.is_some_and(|e| e <= now_ms) {
            return Ok(negative);
        }
        if !self.config.audiences.is_empty() {
            let auds = strings(body.get("aud"));
            if !auds.iter().any(|a| self.config.audiences.contains(a)) {
                return Ok(negative);
            }
        }
        let subject = ["sub", "username", "client_id"]
            .iter()
            .find_map(|k| body.get(*k).and_then(Value::as_str).filter(|s| !s.is_empty()));
        let Some(sub) = subject else { return Ok(negative) };
        let result = Cached::Active {
            sub: sub.to_owned(),
            iss: body.get("iss").and_then(Value::as_str).map(str::to_owned),
            roles: strings(body.get(&self.config.roles_claim)),
            scopes: strings(body.get("scope")),
        };
        let ttl = exp_ms.map_or(self.config.cache_max_ms, |e| (e - now_ms).min(self.config.cache_max_ms));
        Ok((result, ttl))
    }

    fn challenge(&self, error: bool) -> LocalResponse {
        if error {
            LocalResponse::bearer_unauthorized(&self.config.realm, Some("invalid_token"), "The access token is invalid")
        } else {
            LocalResponse::bearer_unauthorized(&self.config.realm, None, "An access token is required")
        }
    }
}

impl Auth for Introspection {
    fn authenticate(&self, request: &Request<'_>) -> AuthOutcome {
        let Some(token) = request.bearer_token() else {
            return if self.config.require_token {
                AuthOutcome::Denied(self.challenge(false))
            } else {
                AuthOutcome::Anonymous
            };
        };
        match self.introspect(&token) {
            Ok(identity) => AuthOutcome::authenticated(identity),
            Err(Failure::Invalid) => AuthOutcome::Denied(self.challenge(true)),
            Err(Failure::Unavailable) => AuthOutcome::Denied(
                LocalResponse::problem(
                    503,
                    "urn:portcullis:problem:auth-unavailable",
                    "Service Unavailable",
                    "The authorization server could not be reached",
                )
                .with_header("retry-after", "1"),
            ),
        }
    }
}

portcullis_sdk::export_auth!(Introspection);

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use portcullis_sdk::{OutboundResponse, testing};

    use super::*;

    fn plugin() -> Introspection {
        testing::configure(
            r#"{"endpoint": "http://127.0.0.1:9/introspect", "client_id": "gate way", "client_secret": "s3cret",
                "negative_cache_ms": 5000, "cache_max_ms": 60000}"#,
        )
        .unwrap()
    }

    fn serve(calls: &Rc<Cell<u32>>, answer: impl Fn(&str) -> Result<OutboundResponse, HttpError> + 'static) {
        let calls = calls.clone();
        testing::set_http_handler(move |req| {
            calls.set(calls.get() + 1);
            assert_eq!(req.method, "POST");
            let auth = req.headers.iter().find(|h| h.name == "authorization").unwrap();
            assert_eq!(
                auth.value,
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("gate+way:s3cret"))
            );
            let body = String::from_utf8(req.body.clone()).unwrap();
            let token = body.strip_prefix("token=").unwrap().split('&').next().unwrap().to_owned();
            answer(&token)
        });
    }

    fn json(body: Value) -> Result<OutboundResponse, HttpError> {
        Ok(OutboundResponse { status: 200, headers: vec![], body: body.to_string().into_bytes() })
    }

    fn auth(p: &Introspection, token: &str) -> AuthOutcome {
        p.authenticate(&testing::request("GET", "/").header("authorization", &format!("Bearer {token}")).build())
    }

    #[test]
    fn active_tokens_map_to_identities_and_are_cached_until_exp() {
        testing::reset();
        testing::set_now_ms(1_000_000_000);
        let calls = Rc::new(Cell::new(0));
        serve(&calls, |token| {
            json(serde_json::json!({"active": token == "good", "sub": "alice", "scope": "items:read items:write",
                                   "roles": ["reader"], "exp": 1_000_030, "iss": "https://as.test"}))
        });
        let p = plugin();
        let AuthOutcome::Authenticated(done) = auth(&p, "good") else { panic!() };
        assert_eq!(done.identity.subject, "alice");
        assert_eq!(done.identity.scopes, ["items:read", "items:write"]);
        assert_eq!(done.identity.roles, ["reader"]);
        assert!(matches!(auth(&p, "good"), AuthOutcome::Authenticated(_)));
        assert_eq!(calls.get(), 1, "the second request is served from the cache");
        testing::advance_ms(31_000);
        assert!(matches!(auth(&p, "good"), AuthOutcome::Denied(_)), "expired: asked again and refused");
        assert_eq!(calls.get(), 2);
    }

    #[test]
    fn a_held_client_secret_is_written_by_the_host_not_the_plugin() {
        testing::reset();
        testing::grant_secret("introspection", b"s3cret", false);
        testing::set_http_handler(|req| {
            let auth = req.headers.iter().find(|h| h.name == "authorization").expect("credential written");
            // The fake renders the host's Basic credential unencoded.
            assert_eq!(auth.value, "Basic gate way:s3cret");
            json(serde_json::json!({"active": true, "sub": "alice"}))
        });
        let p: Introspection = testing::configure(
            r#"{"endpoint": "http://127.0.0.1:9/introspect", "client_id": "gate way", "client_secret": {"secret": "introspection"}}"#,
        )
        .unwrap();
        assert!(matches!(auth(&p, "good"), AuthOutcome::Authenticated(_)));
        let err = testing::configure::<Introspection>(
            r#"{"endpoint": "http://127.0.0.1:9/i", "client_id": "g", "client_secret": {"secret": ""}}"#,
        );
        assert_eq!(err.err().unwrap().pointer, "/client_secret/secret");
    }

    #[test]
    fn inactive_tokens_are_401_and_negatively_cached_briefly() {
        testing::reset();
        let calls = Rc::new(Cell::new(0));
        serve(&calls, |_| json(serde_json::json!({"active": false})));
        let p = plugin();
        let AuthOutcome::Denied(r) = auth(&p, "bad") else { panic!() };
        assert_eq!(r.status, 401);
        assert!(matches!(auth(&p, "bad"), AuthOutcome::Denied(_)));
        assert_eq!(calls.get(), 1);
        testing::advance_ms(5_001);
        let _ = auth(&p, "bad");
        assert_eq!(calls.get(), 2);
    }

    #[test]
    fn an_unreachable_endpoint_is_503_and_not_cached() {
        testing::reset();
        let calls = Rc::new(Cell::new(0));
        serve(&calls, |_| Err(HttpError::Timeout));
        let p = plugin();
        let AuthOutcome::Denied(r) = auth(&p, "any") else { panic!() };
        assert_eq!(r.status, 503);
        let _ = auth(&p, "any");
        assert_eq!(calls.get(), 2);
        serve(&calls, |_| Ok(OutboundResponse { status: 500, headers: vec![], body: vec![] }));
        let AuthOutcome::Denied(r) = auth(&p, "any") else { panic!() };
        assert_eq!(r.status, 503);
    }

    #[test]
    fn oversized_tokens_and_missing_tokens() {
        testing::reset();
        let p = plugin();
        let AuthOutcome::Denied(r) = auth(&p, &"a".repeat(5000)) else { panic!() };
        assert_eq!(r.status, 401);
        let AuthOutcome::Denied(r) = p.authenticate(&testing::request("GET", "/").build()) else { panic!() };
        assert!(r.headers.iter().any(|h| h.value == "Bearer realm=\"portcullis\""));
        assert_eq!(form_encode("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
    }
}
