// Shared body of the `tag-filter-a` and `tag-filter-b` test guests, which differ only in `TAG`:
// two builds of "the same plugin", for hot-reload tests that swap one component for the other.
// Sets `x-tag: <TAG><suffix>`, where `suffix` comes from the step configuration. With
// `response = true` it also implements the response hook (and says so in `hooks`), setting
// `x-tag-response: <TAG><suffix>` on the response, and `x-tag-echo` to the request's `x-echo`
// (the request is lent to the response hook too). On the request it also sets `x-tag-query`
// to the query it was lent, when there is one (so tests see what later steps see).

use portcullis_sdk::{
    ConfigError, Filter, FilterAction, HeaderEdits, HookSet, Plugin, Request, ResponseHead,
};
use serde::Deserialize;

/// Step configuration.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Appended to the tag.
    #[serde(default)]
    suffix: String,
    /// Whether to tag responses too.
    #[serde(default)]
    response: bool,
}

/// The plugin: its tag, and whether it tags responses.
pub struct TagFilter(String, bool);

impl Plugin for TagFilter {
    type Config = Config;
    fn new(config: Config) -> Result<Self, ConfigError> {
        Ok(TagFilter(format!("{TAG}{}", config.suffix), config.response))
    }
}

impl Filter for TagFilter {
    fn hooks(&self) -> HookSet {
        if self.1 { HookSet::ON_REQUEST | HookSet::ON_RESPONSE } else { HookSet::ON_REQUEST }
    }

    fn on_request(&self, request: &Request<'_>) -> FilterAction {
        let mut edits = HeaderEdits::default().set("x-tag", &self.0);
        if let Some(query) = request.query() {
            edits = edits.set("x-tag-query", query);
        }
        FilterAction::Continue(edits)
    }

    fn on_response(&self, request: &Request<'_>, _: &ResponseHead) -> FilterAction {
        let mut edits = HeaderEdits::default().set("x-tag-response", &self.0);
        if let Some(echo) = request.header("x-echo") {
            edits = edits.set("x-tag-echo", &echo);
        }
        FilterAction::Continue(edits)
    }
}

portcullis_sdk::export_filter!(TagFilter);
