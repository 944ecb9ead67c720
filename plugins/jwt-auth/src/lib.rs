//! `jwt-auth`: a Portcullis `auth` plugin that verifies JSON Web Tokens (RFC 7519) sent as
//! `Authorization: Bearer <token>` (RFC 6750 §2.1).
//!
//! - Keys come from the configuration: PEM keys (`pem`), HMAC secrets (`secret`) and JWKs
//!   (`jwk`), and a JWKS document (`jwks`, RFC 7517 §5) inline or from a file through the
//!   host's `{ "$file" = "keys/jwks.json" }` reference.
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
mod keys;

use portcullis_sdk::{Auth, AuthOutcome, ConfigError, Identity, LocalResponse, Plugin, RequestHead};
use serde::Deserialize;

pub use keys::KeyConfig;

/// The step configuration (JSON).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
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
    /// Allowed clock skew for `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "defaults::leeway_seconds")]
    pub leeway_seconds: u64,
    /// Dotted path of the claim holding roles.
    #[serde(default = "defaults::roles_claim")]
    pub roles_claim: String,
    /// Claims that must be present besides `exp`, `iss` and `sub`.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// When false, a request without a token continues as anonymous instead of getting 401.
    #[serde(default = "defaults::yes")]
    pub require_token: bool,
    /// Largest accepted token, in bytes.
    #[serde(default = "defaults::max_token_bytes")]
    pub max_token_bytes: usize,
    /// The `realm` of the `WWW-Authenticate` challenge.
    #[serde(default = "defaults::realm")]
    pub realm: String,
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
    pub fn realm() -> String {
        "portcullis".into()
    }
}

/// The configured plugin.
pub struct JwtAuth {
    config: Config,
    keys: Vec<keys::Key>,
}

impl Plugin for JwtAuth {
    type Config = Config;

    fn new(mut config: Config) -> Result<Self, ConfigError> {
        if config.issuer.is_empty() {
            return Err(ConfigError::new("/issuer", "must not be empty"));
        }
        if config.realm.contains(['"', '\\']) || config.realm.chars().any(char::is_control) {
            return Err(ConfigError::new("/realm", "must not contain quotes, backslashes or control characters"));
        }
        let mut keys = Vec::new();
        for (i, key) in config.keys.iter().enumerate() {
            keys.push(key.load().map_err(|e| ConfigError::new(format!("/keys/{i}{}", e.0), e.1))?);
        }
        if let Some(jwks) = config.jwks.take() {
            keys.extend(keys::load_jwks(jwks).map_err(|e| ConfigError::new(format!("/jwks{}", e.0), e.1))?);
        }
        if keys.is_empty() {
            return Err(ConfigError::new("", "at least one key is required in `keys` or `jwks`"));
        }
        Ok(JwtAuth { config, keys })
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
    /// Errors: the [`Refusal`] the client is told.
    pub fn verify(&self, token: &str, now_s: i64) -> Result<Identity, Refusal> {
        if token.len() > self.config.max_token_bytes {
            return Err(Refusal::TooLarge);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)?;
        if header.jwk.is_some() || header.jku.is_some() || header.x5u.is_some() || header.x5c.is_some() {
            return Err(Refusal::Invalid);
        }
        let claims = self
            .keys
            .iter()
            .filter(|k| k.alg == header.alg && (header.kid.is_none() || k.kid == header.kid))
            .find_map(|k| k.verify(token))
            .ok_or(Refusal::Invalid)?;
        claims::check(&self.config, &claims, now_s)
    }

    fn challenge(&self, refusal: Option<Refusal>) -> LocalResponse {
        let realm = &self.config.realm;
        let (header, detail) = match refusal {
            None => (format!("Bearer realm=\"{realm}\""), "An access token is required"),
            Some(r) => (
                format!("Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"", r.description()),
                r.description(),
            ),
        };
        LocalResponse::problem(401, "urn:portcullis:problem:unauthorized", "Unauthorized", detail)
            .with_header("www-authenticate", &header)
    }
}

impl Auth for JwtAuth {
    fn authenticate(&self, request: &RequestHead) -> AuthOutcome {
        let Some(token) = request.bearer_token() else {
            return if self.config.require_token {
                AuthOutcome::Denied(self.challenge(None))
            } else {
                AuthOutcome::Anonymous
            };
        };
        let now_s = i64::try_from(portcullis_sdk::now_ms() / 1000).unwrap_or(i64::MAX);
        match self.verify(token, now_s) {
            Ok(identity) => AuthOutcome::authenticated(identity),
            Err(refusal) => AuthOutcome::Denied(self.challenge(Some(refusal))),
        }
    }
}

portcullis_sdk::export_auth!(JwtAuth);

#[cfg(test)]
mod tests;
