//! Test guest: a logging plugin whose `observe` is called for every exchange. It appends one
//! record of its own format per exchange with `audit.append`:
//! `{"trail": REQUEST_ID, "status": STATUS, "route": ROUTE, "decisions": ["PLUGIN=DECISION", ...],
//! "response": {"content-type": VALUE}}`, so a test sees that the exchange reached the plugin
//! whole (request id, status, route, every step's decision, and the response field it records:
//! `record-headers` is `content-type`) and that a plugin that does not declare
//! `audit.append-each-exchange` keeps its `observe`.

use portcullis_sdk::{ConfigError, Exchange, Level, Logging, Plugin};
use serde::Deserialize;

/// No configuration.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

/// The plugin.
pub struct TrailLogger;

impl Plugin for TrailLogger {
    type Config = Config;
    fn new(_: Config) -> Result<Self, ConfigError> {
        Ok(TrailLogger)
    }
}

impl Logging for TrailLogger {
    fn record_headers(&self) -> Option<Vec<String>> {
        Some(vec!["content-type".to_owned()])
    }

    fn observe(&self, exchange: &Exchange) {
        let decisions: Vec<String> =
            exchange.decisions.iter().map(|d| format!("{}={}", d.plugin, d.decision)).collect();
        let response: serde_json::Map<String, serde_json::Value> =
            exchange.response_headers.iter().map(|h| (h.name.clone(), h.value.clone().into())).collect();
        let record = serde_json::json!({
            "trail": exchange.request_id,
            "status": exchange.status,
            "route": exchange.route,
            "decisions": decisions,
            "response": response,
        });
        if let Err(e) = portcullis_sdk::audit_append(&record.to_string()) {
            portcullis_sdk::log(Level::Error, &format!("trail record not written: {e:?}"));
        }
    }
}

portcullis_sdk::export_logging!(TrailLogger);
