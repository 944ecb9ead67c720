//! `audit-log`: a Portcullis `logging` plugin that writes one JSON audit record per finished
//! exchange to the host's `audit` sink, after the response was sent (it never adds latency and
//! is fail-open, as every logging step is by default).
//!
//! The sink is the plugin's `audit_file` in the gateway configuration (JSON Lines), or the
//! gateway's stdout when none is set. The host hash-chains the records: each carries `prev`,
//! the hash of the record before it, and `hash`, so `portcullis audit verify FILE` finds the
//! first record that was edited, removed or reordered.
//!
//! The record carries the time (RFC 3339, UTC, and `time_ms`), request id, route, method, path,
//! client IP, identity subject, status, latency in milliseconds, bytes in and out, the upstream
//! endpoint and each plugin's decision. Request headers are left out except those named in `headers`; credentials
//! (`authorization`, `proxy-authorization`, `cookie`, `set-cookie`, `x-api-key`, and any in
//! `redact`) are always replaced by `"[redacted]"`. The query string is never recorded: it
//! often carries API keys.
//!
//! Configuration reference: `plugins/audit-log/README.md`.

use portcullis_sdk::{ConfigError, Exchange, Level, Logging, Phase, Plugin};
use serde::Deserialize;

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

/// One audit record, serialized straight from the exchange it borrows (no `serde_json::Value`
/// tree: this runs for every request on the route).
#[derive(serde::Serialize)]
struct Record<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    time_ms: u64,
    request_id: &'a str,
    route: &'a str,
    method: &'a str,
    authority: &'a str,
    path: &'a str,
    client_ip: &'a str,
    subject: Option<&'a str>,
    status: u16,
    latency_ms: f64,
    bytes_in: u64,
    bytes_out: u64,
    endpoint: Option<&'a str>,
    headers: std::collections::BTreeMap<&'a str, &'a str>,
    decisions: Vec<Decision<'a>>,
}

#[derive(serde::Serialize)]
struct Decision<'a> {
    plugin: &'a str,
    phase: &'static str,
    decision: &'a str,
    duration_us: u64,
}

impl AuditLog {
    /// The audit record for `exchange`: one JSON object on one line.
    pub fn record(&self, e: &Exchange) -> String {
        let headers = e
            .request_headers
            .iter()
            .filter(|h| self.0.headers.contains(&h.name))
            .map(|h| {
                let secret = ALWAYS_REDACTED.contains(&h.name.as_str()) || self.0.redact.contains(&h.name);
                (h.name.as_str(), if secret { "[redacted]" } else { h.value.as_str() })
            })
            .collect();
        let decisions = e
            .decisions
            .iter()
            .map(|d| Decision {
                plugin: &d.plugin,
                phase: match d.phase {
                    Phase::Request => "request",
                    Phase::Response => "response",
                },
                decision: &d.decision,
                duration_us: d.duration_us,
            })
            .collect();
        let record = Record {
            kind: "audit",
            time: rfc3339(e.start_ms),
            time_ms: e.start_ms,
            request_id: &e.request_id,
            route: &e.route,
            method: &e.method,
            authority: &e.authority,
            path: &e.path,
            client_ip: &e.client_ip,
            subject: e.identity.as_ref().map(|i| i.subject.as_str()),
            status: e.status,
            latency_ms: e.duration_us as f64 / 1000.0,
            bytes_in: e.bytes_in,
            bytes_out: e.bytes_out,
            endpoint: e.endpoint.as_deref(),
            headers,
            decisions,
        };
        // Sized for a typical record (about 700 bytes with four decisions), so the text is
        // not copied as it grows.
        let mut text = Vec::with_capacity(1024);
        // Only strings, integers and a finite float: serialization cannot fail, and serde_json
        // writes UTF-8.
        match serde_json::to_writer(&mut text, &record) {
            Ok(()) => String::from_utf8(text).unwrap_or_default(),
            Err(_) => String::new(),
        }
    }
}

impl Logging for AuditLog {
    fn record_headers(&self) -> Option<Vec<String>> {
        Some(self.0.headers.clone())
    }

    fn observe(&self, exchange: &Exchange) {
        if let Err(e) = portcullis_sdk::audit_append(&self.record(exchange)) {
            let detail = format!("audit record for request {} not written: {e:?}", exchange.request_id);
            portcullis_sdk::log(Level::Error, &detail);
        }
    }
}

/// `ms` since the Unix epoch as RFC 3339 UTC with milliseconds, e.g.
/// `2026-11-21T22:18:28.123Z`.
///
/// Written digit by digit for years 0000–9999 (every request's record has one: `format!` with
/// seven padded fields cost a fifth of the record's serialization); a later year, which
/// RFC 3339 cannot express in its four digits, is written with as many as it needs.
pub fn rfc3339(ms: u64) -> String {
    let t = civil(ms);
    if !(0..=9999).contains(&t.year) {
        return format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year, t.month, t.day, t.hour, t.minute, t.second, t.milli
        );
    }
    let mut text = *b"0000-00-00T00:00:00.000Z";
    // Each field's digits, right-aligned at the byte offset where it ends.
    for (value, end) in
        [(t.year as u64, 4), (t.month, 7), (t.day, 10), (t.hour, 13), (t.minute, 16), (t.second, 19), (t.milli, 23)]
    {
        let mut v = value;
        let mut at = end;
        while v > 0 {
            at -= 1;
            text[at] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    String::from_utf8(text.to_vec()).unwrap_or_default()
}

/// A UTC time of day on a proleptic Gregorian date.
struct Civil {
    year: i64,
    month: u64,
    day: u64,
    hour: u64,
    minute: u64,
    second: u64,
    milli: u64,
}

/// `ms` since the Unix epoch as a UTC date and time (days to civil date: H. Hinnant's
/// `civil_from_days`).
fn civil(ms: u64) -> Civil {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    Civil {
        year: yoe + era * 400 + i64::from(month <= 2),
        month: month as u64,
        day: day as u64,
        hour: rem / 3600,
        minute: rem % 3600 / 60,
        second: rem % 60,
        milli: ms % 1000,
    }
}

portcullis_sdk::export_logging!(AuditLog);

#[cfg(test)]
mod tests {
    use portcullis_sdk::{Header, Identity, StepDecision, testing};
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
    fn rfc3339_formats_utc_with_milliseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_001), "2000-02-29T00:00:00.001Z");
        assert_eq!(rfc3339(1_795_299_508_123), "2026-11-21T22:18:28.123Z");
        assert_eq!(rfc3339(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(253_402_300_800_000), "10000-01-01T00:00:00.000Z");
    }

    #[test]
    fn rfc3339_digits_match_formatted_fields() {
        // A walk over 1970-2100 in steps that hit every field's carries.
        let mut ms = 0u64;
        while ms < 4_102_444_800_000 {
            let t = civil(ms);
            let formatted = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year, t.month, t.day, t.hour, t.minute, t.second, t.milli
            );
            assert_eq!(rfc3339(ms), formatted);
            ms += 86_399_999 + 7_919;
        }
    }

    #[test]
    fn audit_config_refuses_unknown_fields() {
        assert_eq!(testing::configure::<AuditLog>(r#"{"header": []}"#).err().unwrap().pointer, "/header");
    }
}
