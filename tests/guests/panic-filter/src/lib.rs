//! Test guest: a `filter` plugin that panics (a wasm trap) on requests carrying `x-panic`, and
//! otherwise tags them with `x-filtered: yes`. The end-to-end tests use it to check that a
//! trapping plugin fails its own request and nothing else.

use portcullis_sdk::{ConfigError, Filter, FilterAction, HeaderEdits, Identity, Plugin, RequestHead};
use serde::Deserialize;

/// No settings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

/// The plugin.
pub struct PanicFilter;

impl Plugin for PanicFilter {
    type Config = Config;
    fn new(_: Config) -> Result<Self, ConfigError> {
        Ok(PanicFilter)
    }
}

impl Filter for PanicFilter {
    fn on_request(&self, request: &RequestHead, _: Option<&Identity>) -> FilterAction {
        assert!(request.header("x-panic").is_none(), "asked to panic");
        FilterAction::Continue(HeaderEdits::default().set("x-filtered", "yes"))
    }
}

portcullis_sdk::export_filter!(PanicFilter);
