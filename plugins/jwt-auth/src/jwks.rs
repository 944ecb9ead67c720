//! Keys from a JWKS URL (RFC 7517 §5), fetched through the host's `http-client` and cached.
//!
//! - **Shared cache.** The fetched document is stored in `kv` with the time it was fetched and
//!   its max-age, so every instance of the plugin (and every reload) shares one copy; each
//!   instance parses a document once and keeps the parsed keys until a newer one appears.
//! - **Max-age.** A document is fresh for the response's `Cache-Control: max-age` (clamped to
//!   1 s – 24 h), or `max_age_ms` when the response has none.
//! - **Refetch.** When the document is stale, or a token names a `kid` the document lacks (a
//!   key rotation), the document is fetched again, but at most once per
//!   `refetch_cooldown_ms` across all instances: a `kv` compare-and-swap on an attempt marker
//!   makes the refresh single-flight and stops random `kid`s from becoming a flood of fetches.
//! - **Stale keys.** When the endpoint fails, the last good keys stay in use for `max_stale_ms`
//!   past their max-age, then are dropped and tokens fail with 401 until a fetch succeeds.
//!
//! Failures are logged with the URL and reason; the client only ever sees "invalid token".

use portcullis_sdk::{ConfigError, Header, Level, OutboundRequest, kv};
use serde::Deserialize;

use crate::keys::{self, Key};

/// `jwks_cache` in the configuration; times in milliseconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Freshness when the response has no `Cache-Control: max-age`. Default 5 min.
    #[serde(default = "defaults::max_age_ms")]
    pub max_age_ms: u64,
    /// Least time between two fetches of one URL. Default 30 s.
    #[serde(default = "defaults::refetch_cooldown_ms")]
    pub refetch_cooldown_ms: u64,
    /// How long past its max-age a document's keys stay in use while the endpoint fails.
    /// Default 1 h.
    #[serde(default = "defaults::max_stale_ms")]
    pub max_stale_ms: u64,
    /// Total time for one fetch. Default 2 s (the host caps it at 10 s).
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u32,
}

mod defaults {
    pub fn max_age_ms() -> u64 {
        300_000
    }
    pub fn refetch_cooldown_ms() -> u64 {
        30_000
    }
    pub fn max_stale_ms() -> u64 {
        3_600_000
    }
    pub fn timeout_ms() -> u32 {
        2_000
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_age_ms: defaults::max_age_ms(),
            refetch_cooldown_ms: defaults::refetch_cooldown_ms(),
            max_stale_ms: defaults::max_stale_ms(),
            timeout_ms: defaults::timeout_ms(),
        }
    }
}

impl CacheConfig {
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        const DAY: u64 = 86_400_000;
        if self.max_age_ms == 0 || self.max_age_ms > DAY {
            return Err(ConfigError::new("/jwks_cache/max_age_ms", "must be 1 ms to 24 h"));
        }
        if self.refetch_cooldown_ms > DAY {
            return Err(ConfigError::new("/jwks_cache/refetch_cooldown_ms", "must be at most 24 h"));
        }
        if self.max_stale_ms > 7 * DAY {
            return Err(ConfigError::new("/jwks_cache/max_stale_ms", "must be at most 7 days"));
        }
        if self.timeout_ms == 0 || self.timeout_ms > 10_000 {
            return Err(ConfigError::new("/jwks_cache/timeout_ms", "must be 1 to 10000"));
        }
        Ok(())
    }
}

/// One issuer's JWKS URL and the `kv` keys of its shared cache.
pub(crate) struct Remote {
    url: String,
    doc_key: String,
    attempt_key: String,
    cache: CacheConfig,
}

/// An instance's parsed copy of the shared document.
#[derive(Default)]
pub(crate) struct Local {
    fetched_ms: u64,
    max_age_ms: u64,
    keys: Vec<Key>,
}

impl Local {
    fn fresh(&self, now: u64) -> bool {
        self.fetched_ms > 0 && now < self.fetched_ms.saturating_add(self.max_age_ms)
    }

    fn knows(&self, kid: Option<&str>) -> bool {
        kid.is_none_or(|kid| self.keys.iter().any(|k| k.kid.as_deref() == Some(kid)))
    }

    /// When this copy stops being fresh, in ms since the Unix epoch (0 before the first one).
    pub(crate) fn fresh_until_ms(&self) -> u64 {
        self.fetched_ms.saturating_add(self.max_age_ms)
    }

    /// The keys in use.
    pub(crate) fn keys(&self) -> &[Key] {
        &self.keys
    }
}

impl Remote {
    pub(crate) fn new(url: String, cache: &CacheConfig) -> Result<Remote, String> {
        let lower = url.to_ascii_lowercase();
        if !(lower.starts_with("https://") || lower.starts_with("http://")) {
            return Err("must be an absolute http or https URL".into());
        }
        // kv keys are capped at 512 bytes; URLs are not.
        let id: String = url
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
            .to_string();
        Ok(Remote {
            doc_key: format!("jwks:{id}:doc"),
            attempt_key: format!("jwks:{id}:attempt"),
            url,
            cache: cache.clone(),
        })
    }

    /// Brings `local` up to date for a token whose `kid` is `kid`, at `now` (ms): adopts a
    /// newer shared document, fetches when the document is stale or lacks `kid` (at most once
    /// per cooldown across instances), and drops keys past their stale bound.
    pub(crate) fn refresh(&self, local: &mut Local, kid: Option<&str>, now: u64) {
        if local.fresh(now) && local.knows(kid) {
            return;
        }
        self.adopt_shared(local);
        if !(local.fresh(now) && local.knows(kid)) {
            let won = kv::compare_and_swap(
                &self.attempt_key,
                None,
                now.to_string().as_bytes(),
                Some(self.cache.refetch_cooldown_ms.max(1)),
            );
            // An unreachable shared store (Redis down) must not stop the keys refreshing:
            // each instance then fetches for itself, as without a shared store.
            if matches!(won, Ok(true) | Err(_)) {
                match self.fetch() {
                    Ok((text, max_age_ms)) => self.install(local, &text, now, max_age_ms),
                    Err(why) => portcullis_sdk::log_with(
                        Level::Warn,
                        "JWKS fetch failed",
                        &[("url", &self.url), ("reason", &why)],
                    ),
                }
            }
        }
        let usable_until = local.fetched_ms.saturating_add(local.max_age_ms).saturating_add(self.cache.max_stale_ms);
        if !local.keys.is_empty() && now >= usable_until {
            portcullis_sdk::log_with(Level::Error, "JWKS keys dropped: stale past max_stale_ms", &[("url", &self.url)]);
            local.keys.clear();
        }
    }

    /// Parses the shared document when it is newer than `local`'s.
    fn adopt_shared(&self, local: &mut Local) {
        let Ok(Some(bytes)) = kv::get(&self.doc_key) else { return };
        let Ok(text) = String::from_utf8(bytes) else { return };
        let mut parts = text.splitn(3, '|');
        let (Some(fetched), Some(max_age), Some(doc)) = (parts.next(), parts.next(), parts.next()) else { return };
        let (Ok(fetched), Ok(max_age)) = (fetched.parse::<u64>(), max_age.parse::<u64>()) else { return };
        if fetched > local.fetched_ms
            && let Ok(keys) = keys::load_jwks(serde_json::Value::String(doc.to_owned()))
        {
            *local = Local { fetched_ms: fetched, max_age_ms: max_age, keys };
        }
    }

    /// Parses `text` into `local` and shares it.
    fn install(&self, local: &mut Local, text: &str, now: u64, max_age_ms: u64) {
        match keys::load_jwks(serde_json::Value::String(text.to_owned())) {
            Ok(keys) => {
                *local = Local { fetched_ms: now, max_age_ms, keys };
                let shared = format!("{now}|{max_age_ms}|{text}");
                let ttl = max_age_ms.saturating_add(self.cache.max_stale_ms);
                if kv::set(&self.doc_key, shared.as_bytes(), Some(ttl)).is_err() {
                    portcullis_sdk::log_with(
                        Level::Warn,
                        "JWKS document not shared (too large for kv)",
                        &[("url", &self.url)],
                    );
                }
            }
            Err(e) => {
                portcullis_sdk::log_with(Level::Warn, "JWKS document refused", &[("url", &self.url), ("reason", &e.1)])
            }
        }
    }

    /// GETs the document: its text and max-age in ms.
    fn fetch(&self) -> Result<(String, u64), String> {
        let request = OutboundRequest {
            method: "GET".into(),
            url: self.url.clone(),
            headers: vec![Header { name: "accept".into(), value: "application/jwk-set+json, application/json".into() }],
            body: Vec::new(),
            timeout_ms: Some(self.cache.timeout_ms),
        };
        let response = portcullis_sdk::http_send(&request).map_err(|e| format!("{e:?}"))?;
        if response.status != 200 {
            return Err(format!("HTTP {}", response.status));
        }
        let max_age_ms = response
            .headers
            .iter()
            .filter(|h| h.name == "cache-control")
            .flat_map(|h| h.value.split(','))
            .find_map(|d| d.trim().strip_prefix("max-age=").and_then(|v| v.trim_matches('"').parse::<u64>().ok()))
            .map_or(self.cache.max_age_ms, |s| s.saturating_mul(1000).clamp(1_000, 86_400_000));
        let text = String::from_utf8(response.body).map_err(|_| "the document is not UTF-8".to_owned())?;
        Ok((text, max_age_ms))
    }
}
