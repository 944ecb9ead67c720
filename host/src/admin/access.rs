//! Who may use the admin listener: a `Host` check against DNS rebinding, a same-origin check
//! on state-changing requests against cross-site request forgery, an optional bearer token,
//! and a rate limit on `POST /reload`.
//!
//! - **Host.** IP literals (any port), `localhost` and the configured `hostnames` are served;
//!   anything else gets 421 (RFC 9110 §15.5.20). A browser tricked by DNS rebinding sends the
//!   attacker's name, never an address.
//! - **Origin.** A request other than `GET`/`HEAD` carrying an `Origin` that is not
//!   `http://{Host}`, `Origin: null`, or `Sec-Fetch-Site: cross-site`/`same-site` gets 403:
//!   browsers send these on cross-origin form posts and `fetch`; curl, Prometheus and deploy
//!   tools send none.
//! - **Token.** With `token_file` or `token_env`, every endpoint but `/healthz`, `/readyz` and
//!   the dashboard's static files (`/`, `/dashboard/…`, which hold no data) needs
//!   `Authorization: Bearer TOKEN` (RFC 6750 §2.1), else 401 with `WWW-Authenticate`.
//!   Tokens are compared by SHA-256 digest, so the comparison's time says nothing about the
//!   token.
//! - **Reloads.** A bucket of `max_reloads_per_minute`, refilled evenly; 429 beyond.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, header};
use sha2::{Digest, Sha256};

use crate::config::LoadedConfig;

/// Why a request to the admin listener was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `Host` names neither an address, `localhost` nor a configured host name (421).
    #[error("`Host` {0:?} is not this admin listener's")]
    Misdirected(String),
    /// A browser's cross-origin state-changing request (403).
    #[error("cross-origin requests may not change state")]
    CrossOrigin,
    /// No or the wrong bearer token (401).
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// The token file cannot be read (503): refused rather than served open.
    #[error("the admin token file cannot be read")]
    TokenUnavailable,
}

/// Why the admin settings cannot be used at start.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// `token_env` names a variable that is unset or empty.
    #[error("admin.token_env: the environment variable `{0}` is unset or empty")]
    MissingEnv(String),
    /// `token_file` cannot be read or is empty.
    #[error("admin.token_file: {}: {reason}", file.display())]
    BadFile {
        /// The resolved path.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Where the token comes from.
#[derive(Debug)]
enum Token {
    /// Read on every request.
    File(PathBuf),
    /// SHA-256 of the value read at start.
    Digest([u8; 32]),
}

/// A token bucket: `capacity` tokens, refilled evenly over a minute.
#[derive(Debug)]
struct Bucket {
    capacity: f64,
    tokens: f64,
    at: Instant,
}

/// The admin listener's access rules, built once at start.
#[derive(Debug)]
pub struct AdminAccess {
    hostnames: Vec<String>,
    token: Option<Token>,
    reloads: Mutex<Bucket>,
}

// === impl AdminAccess ===

impl AdminAccess {
    /// The rules of `loaded`'s `[admin]` table.
    ///
    /// Errors: [`AccessError`] when `token_env` is unset or empty, or `token_file` cannot be
    /// read or is empty.
    pub fn new(loaded: &LoadedConfig) -> Result<Self, AccessError> {
        let admin = &loaded.config.admin;
        let token = match (&admin.token_file, &admin.token_env) {
            (Some(file), _) => {
                let file = loaded.resolve(file);
                read_token(&file).map_err(|reason| AccessError::BadFile { file: file.clone(), reason })?;
                Some(Token::File(file))
            }
            (None, Some(var)) => {
                let value = std::env::var(var).ok().filter(|v| !v.trim().is_empty());
                let value = value.ok_or_else(|| AccessError::MissingEnv(var.clone()))?;
                Some(Token::Digest(Sha256::digest(value.trim_end_matches(['\r', '\n']).as_bytes()).into()))
            }
            (None, None) => None,
        };
        let capacity = f64::from(admin.max_reloads_per_minute);
        Ok(AdminAccess {
            hostnames: admin.hostnames.iter().map(|h| h.to_ascii_lowercase()).collect(),
            token,
            reloads: Mutex::new(Bucket { capacity, tokens: capacity, at: Instant::now() }),
        })
    }

    /// Checks a request for `path` against the Host, Origin and token rules, in that order.
    ///
    /// Errors: the first [`Refusal`] that applies.
    pub fn check(&self, method: &Method, path: &str, headers: &HeaderMap) -> Result<(), Refusal> {
        let host = headers.get(header::HOST).map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
        if let Some(host) = &host
            && !self.host_allowed(host)
        {
            return Err(Refusal::Misdirected(host.chars().take(100).collect()));
        }
        if !matches!(*method, Method::GET | Method::HEAD) && cross_origin(headers, host.as_deref()) {
            return Err(Refusal::CrossOrigin);
        }
        // Probes, and the dashboard's static page and assets (no data: the page asks for the
        // token and sends it with every request for data).
        if matches!(path, "/healthz" | "/readyz" | "/") || path.starts_with("/dashboard/") {
            return Ok(());
        }
        let expected = match &self.token {
            None => return Ok(()),
            Some(Token::Digest(d)) => *d,
            Some(Token::File(file)) => match read_token(file) {
                Ok(token) => Sha256::digest(token.as_bytes()).into(),
                Err(reason) => {
                    tracing::error!(file = %file.display(), %reason, "admin token file unreadable; refusing admin requests");
                    return Err(Refusal::TokenUnavailable);
                }
            },
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| <[u8; 32]>::from(Sha256::digest(token.trim().as_bytes())));
        if given == Some(expected) { Ok(()) } else { Err(Refusal::Unauthorized) }
    }

    /// Takes one reload from the bucket.
    ///
    /// Errors: how long until one is available, when the bucket is empty.
    pub fn take_reload(&self) -> Result<(), Duration> {
        let mut bucket = self.reloads.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(bucket.at).as_secs_f64() * bucket.capacity / 60.0;
        bucket.tokens = (bucket.tokens + refill).min(bucket.capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) * 60.0 / bucket.capacity))
        }
    }

    /// Whether `host` (a `Host` value, port included) may be served.
    fn host_allowed(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            // `[v6]` or `[v6]:port`.
            Some(rest) => return rest.split_once(']').is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok()),
            None => host.rsplit_once(':').map_or(host, |(name, _)| name),
        };
        name.parse::<std::net::Ipv4Addr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || self.hostnames.iter().any(|h| h.eq_ignore_ascii_case(name))
    }
}

/// Whether a browser says the request comes from another origin than `http://{host}`.
fn cross_origin(headers: &HeaderMap, host: Option<&str>) -> bool {
    let fetch_site = headers.get("sec-fetch-site").map(|v| v.as_bytes());
    if matches!(fetch_site, Some(b"cross-site" | b"same-site")) {
        return true;
    }
    match headers.get(header::ORIGIN) {
        None => false,
        Some(origin) => host.is_none_or(|host| {
            !origin.as_bytes().eq_ignore_ascii_case(format!("http://{host}").as_bytes())
                && !origin.as_bytes().eq_ignore_ascii_case(format!("https://{host}").as_bytes())
        }),
    }
}

/// The token in `file`, without one trailing newline.
///
/// Errors: the file cannot be read, or holds no token.
fn read_token(file: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let token = text.strip_suffix('\n').map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
    if token.trim().is_empty() { Err("the file holds no token".to_owned()) } else { Ok(token.to_owned()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn access(hostnames: &[&str]) -> AdminAccess {
        AdminAccess {
            hostnames: hostnames.iter().map(|h| (*h).to_owned()).collect(),
            token: Some(Token::Digest(Sha256::digest(b"s3cret").into())),
            reloads: Mutex::new(Bucket { capacity: 2.0, tokens: 2.0, at: Instant::now() }),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(n, v)| (header::HeaderName::from_static(n), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn host_must_be_an_address_localhost_or_a_configured_name() {
        let a = access(&["gw-admin.internal"]);
        for ok in ["127.0.0.1:9901", "10.1.2.3", "[::1]:9901", "localhost:9901", "LOCALHOST", "gw-admin.internal:80"] {
            assert!(a.host_allowed(ok), "{ok}");
        }
        for bad in ["attacker.example", "attacker.example:9901", "127.0.0.1.attacker.example", "[evil]:1", ""] {
            assert!(!a.host_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn state_changes_need_the_same_origin_and_reads_need_the_token() {
        let a = access(&[]);
        let token = ("authorization", "Bearer s3cret");
        let host = ("host", "127.0.0.1:9901");
        assert_eq!(a.check(&Method::POST, "/reload", &headers(&[host, token])), Ok(()));
        let foreign = headers(&[host, token, ("origin", "http://attacker.example")]);
        assert_eq!(a.check(&Method::POST, "/reload", &foreign), Err(Refusal::CrossOrigin));
        let same = headers(&[host, token, ("origin", "http://127.0.0.1:9901")]);
        assert_eq!(a.check(&Method::POST, "/reload", &same), Ok(()));
        let cross_site = headers(&[host, token, ("sec-fetch-site", "cross-site")]);
        assert_eq!(a.check(&Method::POST, "/reload", &cross_site), Err(Refusal::CrossOrigin));
        assert_eq!(a.check(&Method::GET, "/metrics", &headers(&[host])), Err(Refusal::Unauthorized));
        let wrong = headers(&[host, ("authorization", "Bearer s3cre")]);
        assert_eq!(a.check(&Method::GET, "/metrics", &wrong), Err(Refusal::Unauthorized));
        assert_eq!(a.check(&Method::GET, "/healthz", &headers(&[host])), Ok(()));
        let rebound = headers(&[("host", "attacker.example:9901"), token]);
        assert!(matches!(a.check(&Method::GET, "/healthz", &rebound), Err(Refusal::Misdirected(_))));
    }

    #[test]
    fn reloads_beyond_the_bucket_wait_for_a_refill() {
        let a = access(&[]);
        assert!(a.take_reload().is_ok() && a.take_reload().is_ok());
        let wait = a.take_reload().unwrap_err();
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30), "{wait:?}");
    }
}
