//! Test guest: a `filter` plugin that misbehaves when the request asks it to, so the end-to-end
//! tests can check that a failing plugin fails its own request and nothing else.
//!
//! `x-chaos` selects the behaviour:
//! - `panic`: panics (a wasm `unreachable` trap).
//! - `loop`: loops forever (stopped by the host's epoch deadline, or by fuel).
//! - `oom`: allocates 1 MiB blocks until memory runs out (the host's memory limit).
//! - `recurse-big`: recurses with 64 KiB frames, which Rust keeps on the shadow stack in linear
//!   memory (overflows it: out-of-bounds memory access).
//! - `recurse-small`: recurses with tiny frames (overflows the wasm stack).
//! - `crlf`: asks to set a header whose value contains CR LF (invalid output).
//! - `status`: answers a local response with status 999 (invalid output).
//! - `big-body`: answers a local response with a 10 MiB body (invalid output).
//! - `log-flood`: emits 10,000 log events, then continues.
//! - `count`: increments the `kv` counter `hits` and sets `x-count` to its value.
//! - `cas`: adds one to the `kv` counter `cas` by get and compare-and-swap alone, retrying
//!   until its swap wins; sets `x-cas` to the value it wrote and `x-cas-attempts`.
//! - `kv-set`: stores `x-kv-value` under `x-kv-key` (TTL `x-kv-ttl-ms`, if sent); `x-kv:
//!   stored`.
//! - `kv-get`: sets `x-kv` to the value under `x-kv-key`, or `absent`.
//! - `calls`: sets `x-calls` to how many `calls` requests this instance has served (memory
//!   that survives between requests only when instances are reused).
//! - `keys`: makes `signatures` verifying keys (the demo RSA key) until the host refuses one,
//!   sets `x-keys-held` to how many it held and `x-keys-refused` to why, then drops them and
//!   makes one more (`x-keys-after-drop: ok`, or why not).
//! - otherwise: sets `x-filtered: yes` and, when an earlier step established an identity,
//!   `x-seen-subject: <subject>`.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use portcullis_sdk::{ConfigError, Filter, FilterAction, HeaderEdits, Level, LocalResponse, Plugin, Request};
use serde::Deserialize;

/// No settings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

/// The plugin.
pub struct ChaosFilter;

impl Plugin for ChaosFilter {
    type Config = Config;
    fn new(_: Config) -> Result<Self, ConfigError> {
        Ok(ChaosFilter)
    }
}

/// Requests with `x-chaos: calls` served by this instance.
static CALLS: AtomicU64 = AtomicU64::new(0);

#[inline(never)]
fn recurse_big(n: u64) -> u64 {
    let frame = black_box([n as u8; 64 * 1024]);
    if n == 0 { u64::from(frame[0]) } else { recurse_big(n - 1) + u64::from(black_box(&frame)[(n % 1024) as usize]) }
}

#[inline(never)]
fn recurse_small(n: u64) -> u64 {
    if n == 0 { 0 } else { 1 + recurse_small(black_box(n - 1)) }
}

impl Filter for ChaosFilter {
    fn on_request(&self, request: &Request<'_>) -> FilterAction {
        match request.header("x-chaos").as_deref() {
            Some("panic") => panic!("asked to panic"),
            Some("loop") => {
                let mut n: u64 = 0;
                loop {
                    n = black_box(n.wrapping_add(1));
                }
            }
            Some("oom") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(black_box(vec![1u8; 1 << 20]));
                }
            }
            Some("recurse-big") => {
                FilterAction::Continue(HeaderEdits::default().set("x-depth", &recurse_big(1 << 20).to_string()))
            }
            Some("recurse-small") => {
                FilterAction::Continue(HeaderEdits::default().set("x-depth", &recurse_small(1 << 40).to_string()))
            }
            Some("crlf") => FilterAction::Continue(HeaderEdits::default().set("x-injected", "a\r\nx-evil: 1")),
            Some("status") => FilterAction::Respond(LocalResponse::new(999)),
            Some("big-body") => FilterAction::Respond(LocalResponse::new(200).with_body(vec![b'x'; 10 << 20])),
            Some("log-flood") => {
                for i in 0..10_000 {
                    portcullis_sdk::log(Level::Info, &format!("flood {i}"));
                }
                FilterAction::Continue(HeaderEdits::default().set("x-filtered", "yes"))
            }
            Some("calls") => {
                let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
                FilterAction::Continue(HeaderEdits::default().set("x-calls", &calls.to_string()))
            }
            Some("cas") => {
                // A counter kept by compare-and-swap alone: read, add one, write if unchanged.
                let mut attempts = 0u32;
                let value = loop {
                    attempts += 1;
                    let current = portcullis_sdk::kv::get("cas").expect("kv get");
                    let n: u64 = current.as_deref().map_or(0, |v| {
                        std::str::from_utf8(v).ok().and_then(|t| t.parse().ok()).expect("a decimal counter")
                    });
                    let next = (n + 1).to_string();
                    if portcullis_sdk::kv::compare_and_swap("cas", current.as_deref(), next.as_bytes(), None)
                        .expect("kv cas")
                    {
                        break next;
                    }
                };
                FilterAction::Continue(
                    HeaderEdits::default().set("x-cas", &value).set("x-cas-attempts", &attempts.to_string()),
                )
            }
            Some("kv-set") => {
                let key = request.header("x-kv-key").unwrap_or_default();
                let value = request.header("x-kv-value").unwrap_or_default();
                let ttl = request.header("x-kv-ttl-ms").and_then(|t| t.parse().ok());
                portcullis_sdk::kv::set(&key, value.as_bytes(), ttl).expect("kv set");
                FilterAction::Continue(HeaderEdits::default().set("x-kv", "stored"))
            }
            Some("kv-get") => {
                let key = request.header("x-kv-key").unwrap_or_default();
                let value = match portcullis_sdk::kv::get(&key).expect("kv get") {
                    Some(v) => String::from_utf8_lossy(&v).into_owned(),
                    None => "absent".to_owned(),
                };
                FilterAction::Continue(HeaderEdits::default().set("x-kv", &value))
            }
            Some("keys") => {
                use portcullis_sdk::signatures::{Algorithm, VerifyingKey};
                const PEM: &str = include_str!("../../../../examples/quickstart/keys/demo-public-key.pem");
                let mut held = Vec::new();
                let refused = loop {
                    match VerifyingKey::from_pem(PEM, Algorithm::Rs256) {
                        Ok(key) => held.push(key),
                        Err(e) => break format!("{e:?}"),
                    }
                    if held.len() > 100_000 {
                        break "never refused".to_owned();
                    }
                };
                let count = held.len();
                drop(held);
                let after =
                    VerifyingKey::from_pem(PEM, Algorithm::Rs256).map_or_else(|e| format!("{e:?}"), |_| "ok".into());
                FilterAction::Continue(
                    HeaderEdits::default()
                        .set("x-keys-held", &count.to_string())
                        .set("x-keys-refused", &refused)
                        .set("x-keys-after-drop", &after),
                )
            }
            Some("count") => {
                let hits = portcullis_sdk::kv::increment("hits", 1, None).unwrap_or(-1);
                FilterAction::Continue(HeaderEdits::default().set("x-count", &hits.to_string()))
            }
            _ => {
                let mut edits = HeaderEdits::default().set("x-filtered", "yes");
                if let Some(subject) = request.subject() {
                    edits = edits.set("x-seen-subject", subject);
                }
                FilterAction::Continue(edits)
            }
        }
    }
}

portcullis_sdk::export_filter!(ChaosFilter);
