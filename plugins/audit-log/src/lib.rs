//! `audit-log`: a Portcullis `logging` plugin that writes one JSON audit record per finished
//! exchange to the host's `audit` sink, after the response was sent (it never adds latency and
//! is fail-open, as every logging step is by default).
//!
//! The sink is the plugin's `audit_file` in the gateway configuration (JSON Lines), or the
//! gateway's stdout when none is set. The host hash-chains the records: each carries `prev`,
//! the hash of the record before it, and `hash`, so `portcullis audit verify FILE` finds the
//! first record that was edited, removed or reordered.
//!
//! The record is the host's standard one (`audit.append-observed`, members documented in
//! `docs/audit.md` and `portcullis-audit-record`): the time (RFC 3339, UTC, and `time_ms`),
//! request id, route, method, authority, path, client IP, identity subject, status, latency in
//! milliseconds, bytes in and out, the upstream endpoint and each plugin's decision. Request
//! headers are left out except those named in `headers` (the plugin's `record-headers`, so the
//! host hands it no others); credentials (`authorization`, `proxy-authorization`, `cookie`,
//! `set-cookie`, `x-api-key`, and any in `redact`) are always replaced by `"[redacted]"`. The
//! query string is never recorded: it often carries API keys. The host renders the record,
//! so the plugin never builds or serializes it (until 2026-12 it did, in the same format), and
//! since the plugin declares it in `configure` (`audit.append-each-exchange`) the host appends
//! it for every exchange without calling `observe`: no exchange is copied into the plugin.
//!
//! Configuration reference: `plugins/audit-log/README.md`.

use portcullis_sdk::{ConfigError, Exchange, Level, Logging, Plugin};
use serde::Deserialize;

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
        for (field, names) in [("headers", &mut config.headers), ("redact", &mut config.redact)] {
            for (i, name) in names.iter_mut().enumerate() {
                if name.is_empty() || name.contains(char::is_whitespace) {
                    return Err(ConfigError::new(format!("/{field}/{i}"), "header names are non-empty tokens"));
                }
                *name = name.to_ascii_lowercase();
            }
        }
        // Every exchange gets the standard record and nothing else: the host appends it
        // itself, without calling `observe` (the exchange is never copied into the plugin).
        portcullis_sdk::audit_append_each_exchange(&config.redact)
            .map_err(|e| ConfigError::new("", format!("the host refused the standard record: {e:?}")))?;
        Ok(AuditLog(config))
    }
}

impl Logging for AuditLog {
    fn record_headers(&self) -> Option<Vec<String>> {
        Some(self.0.headers.clone())
    }

    /// What the host does for each exchange after `new` declared `append-each-exchange` (so the
    /// gateway never calls this): the host renders the record (`audit.append-observed`), the
    /// plugin only names what to redact. Kept as the plugin's statement of its record, which
    /// its unit tests check through the SDK's fake.
    fn observe(&self, exchange: &Exchange) {
        if let Err(e) = portcullis_sdk::audit_append_observed(exchange, &self.0.redact) {
            let detail = format!("audit record for request {} not written: {e:?}", exchange.request_id);
            portcullis_sdk::log(Level::Error, &detail);
        }
    }
}

portcullis_sdk::export_logging!(AuditLog);

#[cfg(test)]
mod tests {
    use portcullis_sdk::{Header, Identity, Phase, StepDecision, testing};
    use serde_json::Value;

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
        let plugin: AuditLog =
            testing::configure(r#"{"headers": ["authorization", "user-agent", "x-session"], "redact": ["x-session"]}"#)
                .unwrap();
        plugin.observe(&exchange());
        let records = testing::audit_records();
        assert_eq!(records.len(), 1);
        let record: Value = serde_json::from_str(&records[0]).unwrap();
        assert_eq!(record["headers"]["authorization"], "[redacted]");
        assert_eq!(record["headers"]["x-session"], "[redacted]");
        assert_eq!(record["headers"]["user-agent"], "curl");
        assert_eq!(record["subject"], "alice");
        assert_eq!(record["latency_ms"], 1.5);
        assert_eq!(record["decisions"][0]["decision"], "authenticated");
        assert!(!records[0].contains("secret"), "{}", records[0]);
    }

    #[test]
    fn configure_declares_the_standard_record_for_each_exchange_with_its_redactions() {
        testing::reset();
        let _plugin: AuditLog = testing::configure(r#"{"headers": ["x-session"], "redact": ["X-Session"]}"#).unwrap();
        assert_eq!(testing::each_exchange(), Some(vec!["x-session".to_owned()]));
    }

    #[test]
    fn a_bad_header_name_is_refused_at_its_own_field() {
        let refused = |config: &str| testing::configure::<AuditLog>(config).err().unwrap().pointer;
        assert_eq!(refused(r#"{"headers": ["user-agent", ""]}"#), "/headers/1");
        assert_eq!(refused(r#"{"headers": ["user-agent"], "redact": ["x session"]}"#), "/redact/0");
    }

    #[test]
    fn audit_config_refuses_unknown_fields() {
        assert_eq!(testing::configure::<AuditLog>(r#"{"header": []}"#).err().unwrap().pointer, "/header");
    }
}
