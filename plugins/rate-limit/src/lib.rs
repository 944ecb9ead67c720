//! `rate-limit`: a Portcullis `rate-limit` plugin enforcing one or more quotas per key with the
//! generic cell rate algorithm (GCRA, ITU-T I.371; the algorithm behind Redis' `redis-cell` and
//! Envoy's and Stripe's limiters).
//!
//! **Why GCRA rather than a token bucket:** it is a token bucket stated as one number per key,
//! the *theoretical arrival time* (TAT). One value means one atomic `kv.throttle` per quota
//! per request (one round trip on a shared Redis, where the update runs as a server-side
//! script), so every instance of the plugin and every gateway sharing a store counts exactly,
//! with no refill timer and no separate "last refill" field to keep consistent.
//! A quota of `requests` per `window_ms` admits a burst of `requests` and then one request every
//! `window_ms / requests`; an idle key's state expires from `kv` once it is fully replenished.
//!
//! Each request is checked against every quota in order. When one refuses, the quotas already
//! taken for that request are given back, so a request refused by an hourly quota does not use
//! up the per-second one. The host renders the quotas as `RateLimit-Policy` and `RateLimit`
//! fields (draft-ietf-httpapi-ratelimit-headers) on every response and answers 429 with
//! `Retry-After` (RFC 6585 §4) when limited.
//!
//! When the store is unavailable (a shared Redis down or slow), the quota cannot be checked:
//! the call fails ([`portcullis_sdk::fail`]) and the step's failure policy decides. With
//! `fail-closed` (the default) the request gets 503; with `fail-open` it goes through and the
//! failure is counted in `portcullis_plugin_failures_total{kind="kv-unavailable"}`. A full
//! store still admits the request, with a warning.
//!
//! Configuration reference: `plugins/rate-limit/README.md`.

use portcullis_sdk::{
    ConfigError, KvError, Limited, Plugin, Quota, RateLimit, RateLimitOutcome, Request, kv, kv::Cell,
};
use serde::Deserialize;

/// What requests are counted together.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum KeyBy {
    /// The identity subject from an earlier auth step; anonymous requests fall back to the
    /// client IP (keys `sub:…` and `ip:…` never collide).
    Subject,
    /// The client IP address the host saw.
    ClientIp,
    /// The value of a request header (e.g. a tenant id); requests without it fall back to the
    /// client IP.
    Header(String),
    /// Everyone on the route shares one quota.
    Route,
}

/// Where a key's counter lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// One counter per route (the default): the same client has separate quotas on two routes.
    #[default]
    Route,
    /// One counter per plugin step configuration, shared by every route using it.
    Global,
}

/// One quota.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Policy name, a token such as `per-second`; shown in the RateLimit fields.
    pub name: String,
    /// Requests allowed per window (also the largest burst). At least 1.
    pub requests: u64,
    /// Window length in milliseconds, 1 ms to 31 days.
    pub window_ms: u64,
}

impl LimitConfig {
    /// The GCRA emission interval: one request per `window_ms / requests`, in µs (at least 1).
    fn interval_us(&self) -> u64 {
        (self.window_ms * 1000 / self.requests).max(1)
    }
}

/// The step configuration (JSON).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How requests are grouped. Default: `"client-ip"`.
    #[serde(default = "defaults::key")]
    pub key: KeyBy,
    /// Per route (default) or shared across routes.
    #[serde(default)]
    pub scope: Scope,
    /// The quotas, checked in order. At least one.
    pub limits: Vec<LimitConfig>,
}

mod defaults {
    pub fn key() -> super::KeyBy {
        super::KeyBy::ClientIp
    }
}

/// The configured plugin.
pub struct RateLimiter {
    config: Config,
}

const MAX_WINDOW_MS: u64 = 31 * 24 * 3600 * 1000;

impl Plugin for RateLimiter {
    type Config = Config;

    fn new(config: Config) -> Result<Self, ConfigError> {
        if config.limits.is_empty() {
            return Err(ConfigError::new("/limits", "at least one limit is required"));
        }
        for (i, l) in config.limits.iter().enumerate() {
            let token = !l.name.is_empty() && l.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !token {
                return Err(ConfigError::new(format!("/limits/{i}/name"), "use letters, digits, `-`, `_` and `.`"));
            }
            if config.limits[..i].iter().any(|o| o.name == l.name) {
                return Err(ConfigError::new(format!("/limits/{i}/name"), "duplicate limit name"));
            }
            if l.requests == 0 || l.requests > 1_000_000_000 {
                return Err(ConfigError::new(format!("/limits/{i}/requests"), "must be 1 to 1000000000"));
            }
            if l.window_ms == 0 || l.window_ms > MAX_WINDOW_MS {
                return Err(ConfigError::new(format!("/limits/{i}/window_ms"), "must be 1 ms to 31 days"));
            }
        }
        if let KeyBy::Header(name) = &config.key
            && (name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)))
        {
            return Err(ConfigError::new("/key/header", "must be a header name"));
        }
        Ok(RateLimiter { config })
    }
}

impl RateLimiter {
    /// The counter key for this request, without the policy name: `rl:ROUTE:WHO` (scope
    /// `route`) or `rl::WHO` (scope `global`), WHO being `sub:SUBJECT`, `hdr:VALUE`, `ip:ADDRESS`
    /// or `route`. Every gateway sharing a store must build the same keys: this format is the
    /// fleet's, not an implementation detail.
    fn key(&self, request: &Request<'_>) -> String {
        let mut key = String::with_capacity(64);
        key.push_str("rl:");
        if self.config.scope == Scope::Route {
            key.push_str(request.route());
        }
        key.push(':');
        let ip = |key: &mut String| {
            key.push_str("ip:");
            key.push_str(request.client_ip());
        };
        // The subject only is asked of the host (one string), not the whole identity.
        let subject = if self.config.key == KeyBy::Subject { request.subject() } else { None };
        match (&self.config.key, subject) {
            (KeyBy::Subject, Some(subject)) => {
                key.push_str("sub:");
                key.push_str(subject);
            }
            (KeyBy::Header(name), _) => match request.header(name) {
                Some(v) => {
                    key.push_str("hdr:");
                    key.push_str(&v);
                }
                None => ip(&mut key),
            },
            (KeyBy::Route, _) => key.push_str("route"),
            (KeyBy::Subject | KeyBy::ClientIp, _) => ip(&mut key),
        }
        // kv keys are capped at 512 bytes; a long header value is cut, which only merges keys
        // that share their first 400 bytes.
        if key.len() > 400 {
            let mut cut = 400;
            while !key.is_char_boundary(cut) {
                cut -= 1;
            }
            key.truncate(cut);
        }
        key
    }

    /// Takes one request from quota `limit` under `key`: one atomic `kv.throttle`, so one
    /// round trip on a shared store. Now is the store's clock.
    fn take(limit: &LimitConfig, key: &str) -> Result<Cell, KvError> {
        kv::throttle(key, limit.interval_us(), limit.window_ms * 1000, 1)
    }

    /// Gives back one request taken from `key` (best effort: when the key has expired there
    /// is nothing to give back).
    fn give_back(limit: &LimitConfig, key: &str) {
        let _ = kv::throttle(key, limit.interval_us(), limit.window_ms * 1000, -1);
    }
}

fn quota(limit: &LimitConfig, cell: &Cell) -> Quota {
    Quota {
        policy: limit.name.clone(),
        limit: limit.requests,
        window_ms: limit.window_ms,
        remaining: cell.remaining.min(limit.requests),
        reset_ms: cell.reset_us.div_ceil(1000),
    }
}

impl RateLimit for RateLimiter {
    fn check(&self, request: &Request<'_>) -> RateLimitOutcome {
        let base = self.key(request);
        let mut taken: Vec<(usize, String)> = Vec::new();
        let mut quotas = Vec::new();
        for (i, limit) in self.config.limits.iter().enumerate() {
            let mut key = String::with_capacity(base.len() + 1 + limit.name.len());
            key.push_str(&base);
            key.push(':');
            key.push_str(&limit.name);
            let decision = match Self::take(limit, &key) {
                Ok(cell) => cell,
                // A shared store that cannot be reached: the quota cannot be checked, so the
                // call fails and the step's failure policy decides (fail-closed: 503; fail-open:
                // admitted and counted). Quotas already taken are given back first.
                Err(KvError::Unavailable(why)) => {
                    for (j, key) in &taken {
                        Self::give_back(&self.config.limits[*j], key);
                    }
                    portcullis_sdk::fail(&format!("rate-limit store unavailable: {why}"));
                }
                Err(e) => {
                    // The store is full, or the key holds something else: admit the request
                    // rather than lock every client out, and say so in the log.
                    portcullis_sdk::log(
                        portcullis_sdk::Level::Warn,
                        &format!("rate-limit store error, request admitted: {e:?}"),
                    );
                    continue;
                }
            };
            quotas.push(quota(limit, &decision));
            if !decision.allowed {
                for (j, key) in &taken {
                    Self::give_back(&self.config.limits[*j], key);
                }
                return RateLimitOutcome::Limited(Limited {
                    quotas,
                    retry_after_ms: decision.retry_after_us.div_ceil(1000),
                });
            }
            taken.push((i, key));
        }
        RateLimitOutcome::Allowed(quotas)
    }
}

portcullis_sdk::export_rate_limit!(RateLimiter);

#[cfg(test)]
mod tests {
    use portcullis_sdk::{Identity, testing};

    use super::*;

    fn limiter(json: &str) -> RateLimiter {
        testing::configure(json).unwrap()
    }

    fn check(p: &RateLimiter, ip: &str) -> RateLimitOutcome {
        p.check(&testing::request("GET", "/").client_ip(ip).build())
    }

    #[test]
    fn admits_the_burst_then_limits_until_the_window_replenishes() {
        testing::reset();
        testing::set_now_ms(1_000_000);
        let p = limiter(r#"{"limits": [{"name": "per-minute", "requests": 3, "window_ms": 60000}]}"#);
        for remaining in [2, 1, 0] {
            match check(&p, "10.0.0.1") {
                RateLimitOutcome::Allowed(q) => assert_eq!(q[0].remaining, remaining),
                other => panic!("{other:?}"),
            }
        }
        let RateLimitOutcome::Limited(l) = check(&p, "10.0.0.1") else { panic!("fourth request allowed") };
        assert_eq!(l.retry_after_ms, 20_000, "one request every 20 s");
        assert!(matches!(check(&p, "10.0.0.2"), RateLimitOutcome::Allowed(_)), "other clients have their own quota");
        testing::advance_ms(20_000);
        assert!(matches!(check(&p, "10.0.0.1"), RateLimitOutcome::Allowed(_)));
        assert!(matches!(check(&p, "10.0.0.1"), RateLimitOutcome::Limited(_)));
        testing::advance_ms(60_000);
        for _ in 0..3 {
            assert!(matches!(check(&p, "10.0.0.1"), RateLimitOutcome::Allowed(_)));
        }
    }

    #[test]
    fn a_refusal_by_one_quota_gives_back_the_others() {
        testing::reset();
        testing::set_now_ms(5_000_000);
        let p = limiter(
            r#"{"limits": [{"name": "per-second", "requests": 10, "window_ms": 1000},
                           {"name": "per-hour", "requests": 2, "window_ms": 3600000}]}"#,
        );
        assert!(matches!(check(&p, "a"), RateLimitOutcome::Allowed(_)));
        assert!(matches!(check(&p, "a"), RateLimitOutcome::Allowed(_)));
        for _ in 0..5 {
            let RateLimitOutcome::Limited(l) = check(&p, "a") else { panic!("hourly quota not enforced") };
            assert_eq!(l.quotas.len(), 2);
            assert_eq!(l.quotas[1].policy, "per-hour");
        }
        // Only the two admitted requests count against the per-second quota.
        let RateLimitOutcome::Limited(l) = check(&p, "a") else { panic!() };
        assert_eq!(l.quotas[0].remaining, 7);
    }

    #[test]
    fn keys_by_subject_header_and_route() {
        testing::reset();
        let by_subject = limiter(r#"{"key": "subject", "limits": [{"name": "q", "requests": 1, "window_ms": 60000}]}"#);
        let req = testing::request("GET", "/").build();
        let alice = testing::request("GET", "/").identity(Some(Identity::new("alice"))).build();
        assert!(matches!(by_subject.check(&alice), RateLimitOutcome::Allowed(_)));
        assert!(matches!(by_subject.check(&alice), RateLimitOutcome::Limited(_)));
        assert!(matches!(by_subject.check(&req), RateLimitOutcome::Allowed(_)), "anonymous falls back to the IP");
        let by_header =
            limiter(r#"{"key": {"header": "x-tenant"}, "limits": [{"name": "q", "requests": 1, "window_ms": 60000}]}"#);
        let t1 = testing::request("GET", "/").header("x-tenant", "t1").build();
        let t2 = testing::request("GET", "/").header("x-tenant", "t2").build();
        assert!(matches!(by_header.check(&t1), RateLimitOutcome::Allowed(_)));
        assert!(matches!(by_header.check(&t2), RateLimitOutcome::Allowed(_)));
        assert!(matches!(by_header.check(&t1), RateLimitOutcome::Limited(_)));
        let by_route = limiter(r#"{"key": "route", "limits": [{"name": "q", "requests": 1, "window_ms": 60000}]}"#);
        let other_route = testing::request("GET", "/").route("other").build();
        assert!(matches!(by_route.check(&req), RateLimitOutcome::Allowed(_)));
        assert!(matches!(by_route.check(&other_route), RateLimitOutcome::Allowed(_)));
        assert!(matches!(by_route.check(&alice), RateLimitOutcome::Limited(_)));
    }

    #[test]
    fn counter_keys_keep_the_fleet_format() {
        // Gateways of different versions sharing one store must count in the same keys.
        testing::reset();
        let limits = r#""limits": [{"name": "per-second", "requests": 9, "window_ms": 1000}]"#;
        let req = testing::request("GET", "/").route("r0").client_ip("192.0.2.7").header("x-tenant", "t1");
        let alice = Some(Identity::new("alice"));
        for (config, identity, key) in [
            (r#""key": "subject""#, alice.clone(), "rl:r0:sub:alice:per-second"),
            (r#""key": "subject""#, None, "rl:r0:ip:192.0.2.7:per-second"),
            (r#""key": "client-ip", "scope": "global""#, None, "rl::ip:192.0.2.7:per-second"),
            (r#""key": {"header": "x-tenant"}"#, None, "rl:r0:hdr:t1:per-second"),
            (r#""key": {"header": "x-missing"}"#, None, "rl:r0:ip:192.0.2.7:per-second"),
            (r#""key": "route""#, None, "rl:r0:route:per-second"),
        ] {
            testing::reset();
            let p = limiter(&format!("{{{config}, {limits}}}"));
            assert!(matches!(p.check(&req.clone().identity(identity).build()), RateLimitOutcome::Allowed(_)));
            assert!(portcullis_sdk::kv::get(key).unwrap().is_some(), "{config}: no counter at {key}");
        }
    }

    #[test]
    fn an_unavailable_store_fails_the_call_and_gives_back_what_it_took() {
        testing::reset();
        testing::set_now_ms(1_000_000);
        let p = limiter(r#"{"limits": [{"name": "q", "requests": 2, "window_ms": 60000}]}"#);
        assert!(matches!(check(&p, "a"), RateLimitOutcome::Allowed(_)));
        testing::set_kv_unavailable(Some("connection refused"));
        let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&p, "a")));
        assert!(failed.is_err(), "a quota that cannot be read must not be admitted by the plugin");
        assert!(testing::logs().iter().any(|l| l.message.contains("connection refused")));
        testing::set_kv_unavailable(None);
        assert!(matches!(check(&p, "a"), RateLimitOutcome::Allowed(_)));
        assert!(matches!(check(&p, "a"), RateLimitOutcome::Limited(_)));
    }

    #[test]
    fn configuration_errors_name_the_field() {
        let err = |json: &str| testing::configure::<RateLimiter>(json).err().unwrap().pointer;
        assert_eq!(err(r#"{"limits": []}"#), "/limits");
        assert_eq!(err(r#"{"limits": [{"name": "a b", "requests": 1, "window_ms": 1}]}"#), "/limits/0/name");
        assert_eq!(err(r#"{"limits": [{"name": "a", "requests": 0, "window_ms": 1}]}"#), "/limits/0/requests");
        assert_eq!(err(r#"{"limits": [{"name": "a", "requests": 1, "window_ms": 0}]}"#), "/limits/0/window_ms");
        assert_eq!(err(r#"{"key": "nope", "limits": []}"#), "/key");
    }
}
