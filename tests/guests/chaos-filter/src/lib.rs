//! Test guest: a `filter` plugin that misbehaves when the request asks it to, so the end-to-end
//! tests can check that a failing plugin fails its own request and nothing else.
//!
//! - `x-chaos: panic`: panics (a wasm `unreachable` trap).
//! - `x-chaos: loop`: loops forever (stopped by the host's epoch deadline).
//! - `x-chaos: crlf`: asks to set a header whose value contains CR LF (invalid output).
//! - `x-chaos: status`: answers a local response with status 999 (invalid output).
//! - otherwise: sets `x-filtered: yes` and, when an earlier step established an identity,
//!   `x-seen-subject: <subject>`.

use portcullis_sdk::{ConfigError, Filter, FilterAction, HeaderEdits, Identity, LocalResponse, Plugin, RequestHead};
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

impl Filter for ChaosFilter {
    fn on_request(&self, request: &RequestHead, identity: Option<&Identity>) -> FilterAction {
        match request.header("x-chaos") {
            Some("panic") => panic!("asked to panic"),
            Some("loop") => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Some("crlf") => FilterAction::Continue(HeaderEdits::default().set("x-injected", "a\r\nx-evil: 1")),
            Some("status") => FilterAction::Respond(LocalResponse::new(999)),
            _ => {
                let mut edits = HeaderEdits::default().set("x-filtered", "yes");
                if let Some(identity) = identity {
                    edits = edits.set("x-seen-subject", &identity.subject);
                }
                FilterAction::Continue(edits)
            }
        }
    }
}

portcullis_sdk::export_filter!(ChaosFilter);
