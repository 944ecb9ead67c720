// Shared body of the `tag-filter-a` and `tag-filter-b` test guests, which differ only in `TAG`:
// two builds of "the same plugin", for hot-reload tests that swap one component for the other.
// Sets `x-tag: <TAG><suffix>`, where `suffix` comes from the step configuration.

use portcullis_sdk::{ConfigError, Filter, FilterAction, HeaderEdits, Identity, Plugin, RequestHead};
use serde::Deserialize;

/// Step configuration.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Appended to the tag.
    #[serde(default)]
    suffix: String,
}

/// The plugin.
pub struct TagFilter(String);

impl Plugin for TagFilter {
    type Config = Config;
    fn new(config: Config) -> Result<Self, ConfigError> {
        Ok(TagFilter(format!("{TAG}{}", config.suffix)))
    }
}

impl Filter for TagFilter {
    fn on_request(&self, _: &RequestHead, _: Option<&Identity>) -> FilterAction {
        FilterAction::Continue(HeaderEdits::default().set("x-tag", &self.0))
    }
}

portcullis_sdk::export_filter!(TagFilter);
