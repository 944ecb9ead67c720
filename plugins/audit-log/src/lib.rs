//! `audit-log`: a Portcullis `logging` plugin that writes one JSON audit record per finished
//! exchange through the host's `log` capability (target `portcullis::plugin`, field
//! `plugin=<id>`), after the response was sent.
//!
//! The record carries the time, request id, route, method, path, client IP, identity subject,
//! status, latency in milliseconds, bytes in and out, the upstream endpoint and each plugin's
//! decision. Request headers are left out except those named in `headers`; credentials
//! (`authorization`, `proxy-authorization`, `cookie`, `set-cookie`, `x-api-key`, and any in
//! `redact`) are always replaced by `"[redacted]"`. The query string is never recorded: it
//! often carries API keys.
//!
//! Configuration reference: `plugins/audit-log/README.md`.

use portcullis_sdk::{ConfigError, Exchange, Level, Logging, Phase, Plugin};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// Header names always redacted.
pub const ALWAYS_REDACTED: [&str; 5] = ["authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"];

/// The step configuration (JSON).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Request header names to include in the record (lowercase).
    #[serde(default)]
    pub headers: Vec<String>,
    /// More header names to redact when included.
    #[serde(default)]
    pub redact: Vec<String>,
}

/// The configured plugin.
pub struct AuditLog(Config);

impl Plugin for AuditLog {
    type Config = Config;

    fn new(mut config: Config) -> Result<Self, ConfigError> {
        for (i, name) in config.headers.iter_mut().chain(config.redact.iter_mut()).enumerate() {
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(ConfigError::new(format!("/headers/{i}"), "header names are non-empty tokens"));
            }
            *name = name.to_ascii_lowercase();
        }
        Ok(AuditLog(config))
    }
}

impl AuditLog {
    /// The audit record for `exchange`, as a JSON object.
    pub fn record(&self, e: &Exchange) -> Value {
        let mut headers = Map::new();
        for h in e.request_headers.iter().filter(|h| self.0.headers.contains(&h.name)) {
            let secret = ALWAYS_REDACTED.contains(&h.name.as_str()) || self.0.redact.contains(&h.name);
            let value = if secret { "[redacted]".to_owned() } else { h.value.clone() };
            headers.insert(h.name.clone(), Value::String(value));
        }
        let decisions: Vec<Value> = e
            .decisions
            .iter()
            .map(|d| {
                let phase = match d.phase {
                    Phase::Request => "request",
                    Phase::Response => "response",
                };
                json!({ "plugin": d.plugin, "phase": phase, "decision": d.decision, "duration_us": d.duration_us })
            })
            .collect();
        json!({
            "type": "audit",
            "time_ms": e.start_ms,
            "request_id": e.request_id,
            "route": e.route,
            "method": e.method,
            "authority": e.authority,
            "path": e.path,
            "client_ip": e.client_ip,
            "subject": e.identity.as_ref().map(|i| i.subject.as_str()),
            "status": e.status,
            "latency_ms": e.duration_us as f64 / 1000.0,
            "bytes_in": e.bytes_in,
            "bytes_out": e.bytes_out,
            "endpoint": e.endpoint,
            "headers": headers,
            "decisions": decisions,
        })
    }
}

impl Logging for AuditLog {
    fn observe(&self, exchange: &Exchange) {
        portcullis_sdk::log(Level::Info, &self.record(exchange).to_string());
    }
}

portcullis_sdk::export_logging!(AuditLog);

#[cfg(test)]
mod tests {
    use portcullis_sdk::{Header, Identity, StepDecision, testing};

    use super::*;

    fn exchange() -> Exchange {
        Exchange {
            request_id: "r1".into(),
            route: "api".into(),
            method: "GET".into(),
            authority: "example.test".into(),
            path: "/api/x".into(),
            query: Some("api_key=secret".into()),
            client_ip: "127.0.0.1".into(),
            identity: Some(Identity::new("alice")),
            status: 200,
            start_ms: 1,
            duration_us: 1500,
            bytes_in: 0,
            bytes_out: 42,
            request_headers: vec![
                Header { name: "authorization".into(), value: "Bearer secret".into() },
                Header { name: "user-agent".into(), value: "curl".into() },
                Header { name: "x-session".into(), value: "secret".into() },
            ],
            response_headers: vec![],
            endpoint: Some("127.0.0.1:8081".into()),
            decisions: vec![StepDecision {
                plugin: "jwt".into(),
                phase: Phase::Request,
                decision: "authenticated".into(),
                duration_us: 30,
            }],
        }
    }

    #[test]
    fn audit_record_redacts_credentials_and_never_logs_the_query() {
        testing::reset();
        let plugin: AuditLog = testing::configure(
            r#"{"headers": ["authorization", "user-agent", "x-session"], "redact": ["x-session"]}"#,
        )
        .unwrap();
        plugin.observe(&exchange());
        let logs = testing::logs();
        assert_eq!(logs.len(), 1);
        let record: Value = serde_json::from_str(&logs[0].message).unwrap();
        assert_eq!(record["headers"]["authorization"], "[redacted]");
        assert_eq!(record["headers"]["x-session"], "[redacted]");
        assert_eq!(record["headers"]["user-agent"], "curl");
        assert_eq!(record["subject"], "alice");
        assert_eq!(record["latency_ms"], 1.5);
        assert_eq!(record["decisions"][0]["decision"], "authenticated");
        assert!(!logs[0].message.contains("secret"), "{}", logs[0].message);
    }

    #[test]
    fn audit_config_refuses_unknown_fields() {
        assert_eq!(testing::configure::<AuditLog>(r#"{"header": []}"#).err().unwrap().pointer, "/header");
    }
}
