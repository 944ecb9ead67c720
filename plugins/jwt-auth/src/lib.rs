//! `jwt-auth`: a Portcullis `auth` plugin that verifies JSON Web Tokens (RFC 7519) sent as
//! bearer tokens (RFC 6750).
//!
//! - Several issuers per step, each with its own audiences, keys and claim mapping; a token is
//!   checked against the issuer its `iss` names, with that issuer's keys only.
//! - Keys come from the configuration: PEM keys (`pem`), HMAC secrets (`secret`) and JWKs
//!   (`jwk`), a JWKS document (`jwks`, RFC 7517 §5) inline or from a file through the host's
//!   `{ "$file" = "keys/jwks.json" }` reference, or a JWKS URL (`jwks_url`) fetched through the
//!   host's `http-client` and cached (see the `jwks` module for max-age, refetch on an
//!   unknown `kid` with a cooldown, single-flight refresh and bounded stale keys).
//! - RS, PS, ES and EdDSA signatures are checked by the host's `signatures` capability,
//!   natively (about 30 µs for RS256, against about 2 ms compiled into this plugin); HMAC keys,
//!   and keys the host does not take, are checked here with `jsonwebtoken` (see `keys`).
//! - The token comes from `Authorization: Bearer` by default, or from the headers and cookies
//!   listed in `token_sources`.
//! - Each key is pinned to one algorithm. A token whose `alg` differs from its key's is refused,
//!   so `alg: none` and HS256-signed-with-the-RSA-public-key tokens never verify. Tokens whose
//!   header embeds keys or key URLs (`jwk`, `jku`, `x5u`, `x5c`) are refused outright.
//! - Claims (RFC 7519 §4.1): `exp` is required and, like `nbf` and `iat`, must be a JSON number
//!   (a string `exp` is refused: CVE-2026-25537 was about lenient types); `iss` must equal the
//!   configured issuer; `aud` (string or array) must contain a configured audience when any is
//!   configured; `sub` must be a non-empty string. Time checks allow `leeway_seconds`.
//! - Identity: `sub` is the subject, `iss` the issuer, the claim at `roles_claim` (a dotted path,
//!   e.g. `realm_access.roles`; an array or a space/comma separated string) the roles, and
//!   `scope` (space separated, RFC 8693 §4.2) or `scp` (array) the scopes.
//! - Refusals are 401 problem responses with an RFC 6750 §3 `WWW-Authenticate: Bearer` challenge
//!   (`error="invalid_token"` and a short description). The description never says which key
//!   is missing or why a signature failed.
//!
//! Configuration reference: `plugins/jwt-auth/README.md`.

mod claims;
mod jwks;
mod keys;

use std::cell::RefCell;

use base64::Engine as _;
use portcullis_sdk::{Auth, AuthOutcome, ConfigError, Identity, LocalResponse, Plugin, Request};
use serde::Deserialize;

pub use keys::KeyConfig;

/// One trusted issuer: its `iss`, audiences, keys and claim mapping.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The expected `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values; when empty, `aud` is not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Individually configured keys.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// A JWKS document: JSON text (as `$file` gives it) or an inline object.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// A JWKS URL fetched through `http-client` (its origin must be in `allowed_origins`).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Dotted path of the claim holding roles.
    #[serde(default = "defaults::roles_claim")]
    pub roles_claim: String,
    /// Claims that must be present besides `exp`, `iss` and `sub`.
    #[serde(default)]
    pub required_claims: Vec<String>,
}

/// Where a token may be found, tried in order: `{ "header": NAME, "scheme": SCHEME }` (scheme
/// optional; with it the value must be `<scheme> <token>`, scheme matched case-insensitively)
/// or `{ "cookie": NAME }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenSource {
    /// A header.
    Header(HeaderSource),
    /// A cookie.
    Cookie(CookieSource),
}

/// A token in a header.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderSource {
    /// Header name.
    pub header: String,
    /// Authentication scheme before the token, e.g. `Bearer`; none: the whole value.
    #[serde(default)]
    pub scheme: Option<String>,
}

/// A token in a cookie.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CookieSource {
    /// Cookie name.
    pub cookie: String,
}

/// The step configuration (JSON). Either `issuers`, or one issuer given at the top level
/// (`issuer`, `audiences`, `keys`, `jwks`, `jwks_url`, `roles_claim`, `required_claims`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Trusted issuers; a token is checked against the one its `iss` names.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Shorthand for a single issuer.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Shorthand: that issuer's audiences.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Shorthand: that issuer's keys.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// Shorthand: that issuer's JWKS document.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// Shorthand: that issuer's JWKS URL.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Shorthand: that issuer's roles claim.
    #[serde(default)]
    pub roles_claim: Option<String>,
    /// Shorthand: that issuer's required claims.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Where tokens are read from, in order. Default: `Authorization: Bearer`.
    #[serde(default = "defaults::token_sources")]
    pub token_sources: Vec<TokenSource>,
    /// Allowed clock skew for `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "defaults::leeway_seconds")]
    pub leeway_seconds: u64,
    /// When false, a request without a token continues as anonymous instead of getting 401.
    #[serde(default = "defaults::yes")]
    pub require_token: bool,
    /// Largest accepted token, in bytes.
    #[serde(default = "defaults::max_token_bytes")]
    pub max_token_bytes: usize,
    /// The `realm` of the `WWW-Authenticate` challenge.
    #[serde(default = "defaults::realm")]
    pub realm: String,
    /// JWKS URL caching.
    #[serde(default)]
    pub jwks_cache: jwks::CacheConfig,
    /// Verified tokens remembered per instance, keyed by a secret-keyed hash, so a token seen again
    /// skips the signature check; `0` turns the cache off.
    #[serde(default = "defaults::verified_cache_entries")]
    pub verified_cache_entries: usize,
}

mod defaults {
    pub fn leeway_seconds() -> u64 {
        30
    }
    pub fn roles_claim() -> String {
        "roles".into()
    }
    pub fn yes() -> bool {
        true
    }
    pub fn max_token_bytes() -> usize {
        8 * 1024
    }
    pub fn verified_cache_entries() -> usize {
        10_000
    }
    pub fn realm() -> String {
        "portcullis".into()
    }
    pub fn token_sources() -> Vec<super::TokenSource> {
        vec![super::TokenSource::Header(super::HeaderSource {
            header: "authorization".into(),
            scheme: Some("Bearer".into()),
        })]
    }
}

/// An issuer ready to verify tokens.
pub(crate) struct Issuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub roles_claim: String,
    pub required_claims: Vec<String>,
    keys: Vec<keys::Key>,
    remote: Option<jwks::Remote>,
}

/// The configured plugin.
pub struct JwtAuth {
    config: Config,
    issuers: Vec<Issuer>,
    /// Keys fetched from each issuer's `jwks_url`, parsed once per document version.
    remote_keys: RefCell<Vec<jwks::Local>>,
    /// Tokens verified by this instance and the identity they gave.
    verified: RefCell<verified::Cache>,
}

impl Plugin for JwtAuth {
    type Config = Config;

    fn new(mut config: Config) -> Result<Self, ConfigError> {
        let mut configs = std::mem::take(&mut config.issuers);
        let at_issuers = configs.len();
        if let Some(issuer) = config.issuer.take() {
            configs.push(IssuerConfig {
                issuer,
                audiences: std::mem::take(&mut config.audiences),
                keys: std::mem::take(&mut config.keys),
                jwks: config.jwks.take(),
                jwks_url: config.jwks_url.take(),
                roles_claim: config.roles_claim.take().unwrap_or_else(defaults::roles_claim),
                required_claims: std::mem::take(&mut config.required_claims),
            });
        } else if !config.keys.is_empty()
            || config.jwks.is_some()
            || config.jwks_url.is_some()
            || !config.audiences.is_empty()
        {
            return Err(ConfigError::new(
                "/issuer",
                "is required when `keys`, `jwks`, `jwks_url` or `audiences` are given at the top level",
            ));
        }
        if configs.is_empty() {
            return Err(ConfigError::new(
                "/issuers",
                "at least one issuer is required (`issuers`, or `issuer` with its keys)",
            ));
        }
        let mut issuers = Vec::new();
        for (i, c) in configs.into_iter().enumerate() {
            // Errors point into `issuers` for listed issuers and at the top level for the
            // shorthand.
            let base = if i < at_issuers { format!("/issuers/{i}") } else { String::new() };
            issuers.push(Issuer::load(c, &base, &config.jwks_cache)?);
        }
        for (i, a) in issuers.iter().enumerate() {
            if issuers[..i].iter().any(|b| b.issuer == a.issuer) {
                return Err(ConfigError::new(format!("/issuers/{i}/issuer"), "duplicate issuer"));
            }
        }
        if !portcullis_sdk::is_quotable(&config.realm) {
            return Err(ConfigError::new("/realm", "must not contain quotes, backslashes or control characters"));
        }
        if config.token_sources.is_empty() {
            return Err(ConfigError::new("/token_sources", "at least one source is required"));
        }
        config.jwks_cache.check()?;
        let remote_keys = RefCell::new(issuers.iter().map(|_| jwks::Local::default()).collect());
        let verified = RefCell::new(verified::Cache::new(config.verified_cache_entries));
        Ok(JwtAuth { config, issuers, remote_keys, verified })
    }
}

impl Issuer {
    fn load(c: IssuerConfig, base: &str, cache: &jwks::CacheConfig) -> Result<Issuer, ConfigError> {
        if c.issuer.is_empty() {
            return Err(ConfigError::new(format!("{base}/issuer"), "must not be empty"));
        }
        let mut keys = Vec::new();
        for (i, key) in c.keys.iter().enumerate() {
            keys.push(key.load().map_err(|e| ConfigError::new(format!("{base}/keys/{i}{}", e.0), e.1))?);
        }
        if let Some(doc) = c.jwks {
            keys.extend(keys::load_jwks(doc).map_err(|e| ConfigError::new(format!("{base}/jwks{}", e.0), e.1))?);
        }
        let remote = match c.jwks_url {
            Some(url) => {
                Some(jwks::Remote::new(url, cache).map_err(|m| ConfigError::new(format!("{base}/jwks_url"), m))?)
            }
            None => None,
        };
        if keys.is_empty() && remote.is_none() {
            return Err(ConfigError::new(
                base.to_owned(),
                "at least one key is required in `keys`, `jwks` or `jwks_url`",
            ));
        }
        Ok(Issuer {
            issuer: c.issuer,
            audiences: c.audiences,
            roles_claim: c.roles_claim,
            required_claims: c.required_claims,
            keys,
            remote,
        })
    }
}

/// Why a token was refused: the RFC 6750 error description sent to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a well-formed JWS compact token.
    Malformed,
    /// Over `max_token_bytes`.
    TooLarge,
    /// No key verifies it (unknown `kid`, wrong `alg`, bad signature, embedded keys).
    Invalid,
    /// `exp` has passed.
    Expired,
    /// `nbf` (or `iat`) is in the future.
    NotYetValid,
    /// `iss` or `aud` does not match, or a required claim is missing or mistyped.
    ClaimsRejected,
}

impl Refusal {
    fn description(self) -> &'static str {
        match self {
            Refusal::Malformed => "The access token is malformed",
            Refusal::TooLarge => "The access token is too large",
            Refusal::Invalid => "The access token is invalid",
            Refusal::Expired => "The access token expired",
            Refusal::NotYetValid => "The access token is not yet valid",
            Refusal::ClaimsRejected => "The access token is not valid for this service",
        }
    }
}

impl JwtAuth {
    /// Verifies `token` at `now_s` (seconds since the Unix epoch) and returns the identity.
    ///
    /// The token's unverified `iss` picks the issuer; that issuer's keys (configured, or
    /// fetched from its `jwks_url` and cached) must verify the signature before any claim is
    /// trusted.
    ///
    /// A token this instance verified before is answered from the verified-token cache while
    /// `now_s` is inside its validity window (and, for keys from a `jwks_url`, while the copy
    /// of the document that verified it is fresh), without the signature check.
    ///
    /// Errors: the [`Refusal`] the client is told.
    pub fn verify(&self, token: &str, now_s: i64) -> Result<Identity, Refusal> {
        if token.len() > self.config.max_token_bytes {
            return Err(Refusal::TooLarge);
        }
        let digest = {
            let cache = self.verified.borrow();
            cache.enabled().then(|| cache.digest(token))
        };
        if let Some(digest) = &digest
            && let Some(identity) = self.verified.borrow_mut().get(digest, now_s)
        {
            return Ok(identity);
        }
        let (identity, window) = self.verify_signed(token, now_s)?;
        if let Some(digest) = digest {
            self.verified.borrow_mut().insert(digest, identity.clone(), window, now_s);
        }
        Ok(identity)
    }

    /// The signature and claims check behind [`JwtAuth::verify`]: the identity and the window
    /// (seconds) in which the same token would verify again.
    fn verify_signed(&self, token: &str, now_s: i64) -> Result<(Identity, verified::Window), Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)?;
        if header.jwk.is_some() || header.jku.is_some() || header.x5u.is_some() || header.x5c.is_some() {
            return Err(Refusal::Invalid);
        }
        // The payload is parsed once: for its `iss` now, and as the claims once a key the host
        // checks has verified the signature over it. One that is not base64url without padding
        // holding JSON is malformed: no key could verify it (jsonwebtoken decodes alike).
        let payload = unverified_payload(token).ok_or(Refusal::Malformed)?;
        let claimed_issuer = payload.get("iss").and_then(serde_json::Value::as_str).ok_or(Refusal::Malformed)?;
        let (index, issuer) =
            self.issuers.iter().enumerate().find(|(_, i)| i.issuer == claimed_issuer).ok_or(Refusal::ClaimsRejected)?;
        let matches =
            |k: &&keys::Key| k.alg == header.alg && (k.kid.is_none() || header.kid.is_none() || k.kid == header.kid);
        let mut claims = issuer.keys.iter().filter(matches).find_map(|k| k.verify_parsed(token, &payload));
        // A token verified by a fetched key is remembered only while that copy is fresh: a key
        // removed from the JWKS stops verifying once the next copy is adopted.
        let mut keys_fresh_until_s = i64::MAX;
        if claims.is_none()
            && let Some(remote) = &issuer.remote
        {
            let mut cache = self.remote_keys.borrow_mut();
            let local = &mut cache[index];
            remote.refresh(local, header.kid.as_deref(), portcullis_sdk::now_ms());
            claims = local.keys().iter().filter(matches).find_map(|k| k.verify_parsed(token, &payload));
            keys_fresh_until_s = i64::try_from(local.fresh_until_ms() / 1000).unwrap_or(i64::MAX);
        }
        let claims = claims.ok_or(Refusal::Invalid)?;
        let identity = claims::check(issuer, self.config.leeway_seconds, &claims, now_s)?;
        let mut window = claims::window(self.config.leeway_seconds, &claims);
        window.until_s = window.until_s.min(keys_fresh_until_s);
        Ok((identity, window))
    }

    /// The token from the first configured source that has one.
    fn token(&self, request: &Request<'_>) -> Option<String> {
        self.config.token_sources.iter().find_map(|source| match source {
            TokenSource::Header(HeaderSource { header, scheme: Some(scheme) }) => {
                let value = request.header(header)?;
                let (got, token) = value.split_once(' ')?;
                let token = token.trim();
                (got.eq_ignore_ascii_case(scheme) && !token.is_empty()).then(|| token.to_owned())
            }
            TokenSource::Header(HeaderSource { header, scheme: None }) => {
                request.header(header).map(|v| v.trim().to_owned()).filter(|t| !t.is_empty())
            }
            TokenSource::Cookie(CookieSource { cookie }) => request
                .header_values("cookie")
                .iter()
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(name, _)| name == cookie)
                .map(|(_, value)| value.trim_matches('"').to_owned())
                .filter(|t| !t.is_empty()),
        })
    }

    fn challenge(&self, refusal: Option<Refusal>) -> LocalResponse {
        match refusal {
            None => LocalResponse::bearer_unauthorized(&self.config.realm, None, "An access token is required"),
            Some(r) => LocalResponse::bearer_unauthorized(&self.config.realm, Some("invalid_token"), r.description()),
        }
    }
}

impl Auth for JwtAuth {
    fn authenticate(&self, request: &Request<'_>) -> AuthOutcome {
        let Some(token) = self.token(request) else {
            return if self.config.require_token {
                AuthOutcome::Denied(self.challenge(None))
            } else {
                AuthOutcome::Anonymous
            };
        };
        let now_s = i64::try_from(portcullis_sdk::now_ms() / 1000).unwrap_or(i64::MAX);
        match self.verify(&token, now_s) {
            Ok(identity) => AuthOutcome::authenticated(identity),
            Err(refusal) => AuthOutcome::Denied(self.challenge(Some(refusal))),
        }
    }
}

/// A token's payload (its second segment: base64url without padding, RFC 7515 §2) as JSON,
/// read without verifying it; none when it is not that.
pub(crate) fn unverified_payload(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

mod verified;

portcullis_sdk::export_auth!(JwtAuth);

#[cfg(test)]
mod tests;
