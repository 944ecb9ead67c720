//! The standard audit record of one finished exchange: what the host writes for a logging
//! plugin's `audit.append-observed` (contract `portcullis:plugin@0.2.0`, `wit/capabilities.wit`),
//! and what the SDK's native test fake writes for the same call, from this one implementation.
//!
//! The record is one JSON object (RFC 8259) on one line with the members `type`, `time`,
//! `time_ms`, `request_id`, `route`, `method`, `authority`, `path`, `client_ip`, `subject`,
//! `status`, `latency_ms`, `bytes_in`, `bytes_out`, `endpoint`, `headers` and `decisions`, in
//! that order; what each holds is documented once, in `docs/audit.md` ("The standard record").
//!
//! Credentials are redacted whatever the plugin asks: the values of [`ALWAYS_REDACTED`] and of
//! the names the plugin passes (compared without regard to ASCII case).
//!
//! The format is the one `plugins/audit-log` wrote itself before the host took it over
//! (`docs/DECISIONS.md`, "The audit record rendered by the host"); records written either way
//! chain and verify alike.

use std::collections::BTreeMap;

/// Request header names whose values are always replaced by [`REDACTED`] in a record.
pub const ALWAYS_REDACTED: [&str; 5] = ["authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"];

/// What a redacted header's value is recorded as.
pub const REDACTED: &str = "[redacted]";

/// The fields of a finished exchange a record is made of, borrowed from the caller's own
/// exchange type (the host's and the SDK's bindings each have one).
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    /// The gateway's request id.
    pub request_id: &'a str,
    /// The route id.
    pub route: &'a str,
    /// The request method.
    pub method: &'a str,
    /// The request's authority (host and port).
    pub authority: &'a str,
    /// The request path, without its query.
    pub path: &'a str,
    /// The client's IP address, as text.
    pub client_ip: &'a str,
    /// The identity's subject, if an auth step set one.
    pub subject: Option<&'a str>,
    /// The response status code.
    pub status: u16,
    /// When the request started, in ms since the Unix epoch.
    pub start_ms: u64,
    /// How long the exchange took, in µs.
    pub duration_us: u64,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// The upstream endpoint that answered, if one did.
    pub endpoint: Option<&'a str>,
}

/// One plugin step's decision on the exchange.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'a> {
    /// The plugin id.
    pub plugin: &'a str,
    /// `"request"` or `"response"`.
    pub phase: &'static str,
    /// What the step decided (`"allowed"`, `"authenticated"`, …).
    pub decision: &'a str,
    /// How long the step took, in µs.
    pub duration_us: u64,
}

/// Renders the standard record of `exchange`: one JSON object on one line, without `prev` and
/// `hash` (the sink adds those). `headers` are the recorded request headers as (name, value);
/// values of [`ALWAYS_REDACTED`] names and of names in `redact` are written as [`REDACTED`].
/// Cannot fail: every value is a string, an integer or a finite number.
///
/// Written member by member with the names as literals, the bytes serde_json's compact
/// serializer writes for the same record (the tests pin them): a derived `Serialize` escaped
/// every member name as a string too, 57 escaped strings per record of four decisions where 24
/// are values, and the record is rendered for every request of an audited route
/// (docs/BENCHMARKS.md, entry 50). A value with nothing to escape is copied as it is; one
/// with a quote, a backslash or a control character is escaped by serde_json.
pub fn render<'a, R: AsRef<str>>(
    exchange: &Exchange<'a>,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    decisions: impl IntoIterator<Item = Decision<'a>>,
    redact: &[R],
) -> String {
    let secret = |name: &str| {
        ALWAYS_REDACTED.iter().any(|r| r.eq_ignore_ascii_case(name))
            || redact.iter().any(|r| r.as_ref().eq_ignore_ascii_case(name))
    };
    // By name, the last of repeated fields kept (a JSON object's names are unique).
    let headers: BTreeMap<&str, &str> =
        headers.into_iter().map(|(name, value)| (name, if secret(name) { REDACTED } else { value })).collect();
    // Sized for a typical record (about 700 bytes with four decisions), so the text is not
    // copied as it grows.
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(br#"{"type":"audit","time":""#);
    write_rfc3339(&mut out, exchange.start_ms);
    out.push(b'"');
    // The record's members after `time`, in its documented order.
    members(
        &mut out,
        [
            (br#","time_ms":"#, Value::Integer(exchange.start_ms)),
            (br#","request_id":"#, Value::Text(exchange.request_id)),
            (br#","route":"#, Value::Text(exchange.route)),
            (br#","method":"#, Value::Text(exchange.method)),
            (br#","authority":"#, Value::Text(exchange.authority)),
            (br#","path":"#, Value::Text(exchange.path)),
            (br#","client_ip":"#, Value::Text(exchange.client_ip)),
            (br#","subject":"#, Value::Nullable(exchange.subject)),
            (br#","status":"#, Value::Integer(exchange.status.into())),
            (br#","latency_ms":"#, Value::Float(exchange.duration_us as f64 / 1000.0)),
            (br#","bytes_in":"#, Value::Integer(exchange.bytes_in)),
            (br#","bytes_out":"#, Value::Integer(exchange.bytes_out)),
            (br#","endpoint":"#, Value::Nullable(exchange.endpoint)),
        ],
    );
    out.extend_from_slice(br#","headers":{"#);
    for (i, (name, value)) in headers.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(&mut out, name);
        out.push(b':');
        string(&mut out, value);
    }
    out.extend_from_slice(br#"},"decisions":["#);
    for (i, d) in decisions.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        members(
            &mut out,
            [
                (br#"{"plugin":"#, Value::Text(d.plugin)),
                (br#","phase":"#, Value::Text(d.phase)),
                (br#","decision":"#, Value::Text(d.decision)),
                (br#","duration_us":"#, Value::Integer(d.duration_us)),
            ],
        );
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    // Only UTF-8 went in: the literals, `&str`s, digits and serde_json's output.
    String::from_utf8(out).unwrap_or_default()
}

/// A member's value, written as serde_json writes the Rust type it stands for.
enum Value<'a> {
    /// A string.
    Text(&'a str),
    /// A string, or `null`.
    Nullable(Option<&'a str>),
    /// An unsigned integer.
    Integer(u64),
    /// A finite number (the latency).
    Float(f64),
}

/// Each member as its `name` (the literal from the comma or brace before it to the colon after
/// it) followed by its value.
fn members<const N: usize>(out: &mut Vec<u8>, members: [(&[u8], Value<'_>); N]) {
    for (name, value) in members {
        out.extend_from_slice(name);
        match value {
            Value::Text(text) => string(out, text),
            Value::Nullable(Some(text)) => string(out, text),
            Value::Nullable(None) => out.extend_from_slice(b"null"),
            Value::Integer(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
            // serde_json's float format, which the record has always had.
            Value::Float(x) => {
                let _ = serde_json::to_writer(&mut *out, &x);
            }
        }
    }
}

/// `value` as a JSON string (RFC 8259, section 7): copied between quotes when it has nothing
/// serde_json would escape (a quote, a backslash, a control character below U+0020), else
/// written by serde_json, so the bytes are serde_json's either way.
fn string(out: &mut Vec<u8>, value: &str) {
    // A fold without an early exit, which the compiler turns into a vector loop.
    let plain = !value.bytes().fold(false, |escape, b| escape | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if plain {
        out.reserve(value.len() + 2);
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, value);
    }
}

/// Renders the standard record of an `exchange` value of contract 0.2.0's `logging.exchange`
/// record type, as generated by any bindings of `wit/kinds.wit` (the host's wasmtime
/// `bindgen!` and the SDK's wit-bindgen name its fields alike), recording the request headers
/// whose (lowercase) name `$keep` (`Fn(&str) -> bool`) keeps, with `redact` (`&[String]`) as
/// for [`render`]; `$phase` is the bindings' `phase` enum. One expansion for the host and the
/// SDK's test fake, so the record a plugin's unit test sees cannot drift from the gateway's.
#[macro_export]
macro_rules! render_exchange {
    ($exchange:expr, $keep:expr, $redact:expr, $phase:path) => {{
        use $phase as Phase;
        let e = $exchange;
        let observed = $crate::exchange_of!(e);
        let keep = $keep;
        let headers =
            e.request_headers.iter().filter(|h| keep(h.name.as_str())).map(|h| (h.name.as_str(), h.value.as_str()));
        let decisions = e.decisions.iter().map(|d| $crate::Decision {
            plugin: &d.plugin,
            phase: match d.phase {
                Phase::Request => "request",
                Phase::Response => "response",
            },
            decision: &d.decision,
            duration_us: d.duration_us,
        });
        $crate::render(&observed, headers, decisions, $redact)
    }};
}

/// The [`Exchange`] of an `exchange` value (a reference) of contract 0.2.0's `logging.exchange`
/// record type, as generated by any bindings of `wit/kinds.wit`, its strings borrowed.
#[macro_export]
macro_rules! exchange_of {
    ($exchange:expr) => {{
        let e = $exchange;
        $crate::Exchange {
            request_id: &e.request_id,
            route: &e.route,
            method: &e.method,
            authority: &e.authority,
            path: &e.path,
            client_ip: &e.client_ip,
            subject: e.identity.as_ref().map(|i| i.subject.as_str()),
            status: e.status,
            start_ms: e.start_ms,
            duration_us: e.duration_us,
            bytes_in: e.bytes_in,
            bytes_out: e.bytes_out,
            endpoint: e.endpoint.as_deref(),
        }
    }};
}

/// `ms` since the Unix epoch as RFC 3339 UTC with milliseconds, e.g.
/// `2026-11-21T22:18:28.123Z`.
///
/// Written digit by digit for years 0000–9999 (every record has one: `format!` with seven
/// padded fields cost a fifth of the record's serialization); a later year, which RFC 3339
/// cannot express in its four digits, is written with as many as it needs.
pub fn rfc3339(ms: u64) -> String {
    let mut text = Vec::with_capacity(24);
    write_rfc3339(&mut text, ms);
    String::from_utf8(text).unwrap_or_default()
}

/// [`rfc3339`], appended to `out` (ASCII only).
fn write_rfc3339(out: &mut Vec<u8>, ms: u64) {
    use std::io::Write as _;
    let t = civil(ms);
    if !(0..=9999).contains(&t.year) {
        let _ = write!(
            out,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year, t.month, t.day, t.hour, t.minute, t.second, t.milli
        );
        return;
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
    out.extend_from_slice(&text);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange() -> Exchange<'static> {
        Exchange {
            request_id: "r1",
            route: "api",
            method: "GET",
            authority: "example.test",
            path: "/api/x",
            client_ip: "127.0.0.1",
            subject: Some("alice"),
            status: 200,
            start_ms: 1_795_299_508_123,
            duration_us: 1500,
            bytes_in: 0,
            bytes_out: 42,
            endpoint: Some("127.0.0.1:8081"),
        }
    }

    #[test]
    fn record_has_the_documented_members_in_order_and_redacts_credentials() {
        let headers = [
            ("user-agent", "curl"),
            ("Authorization", "Bearer secret"),
            ("x-session", "secret"),
            ("cookie", "secret"),
            ("x-tenant", "a"),
            ("x-tenant", "b"),
        ];
        let decisions = [Decision { plugin: "jwt", phase: "request", decision: "authenticated", duration_us: 30 }];
        let text = render(&exchange(), headers, decisions, &["X-Session"]);
        assert_eq!(
            text,
            concat!(
                r#"{"type":"audit","time":"2026-11-21T22:18:28.123Z","time_ms":1795299508123,"request_id":"r1","#,
                r#""route":"api","method":"GET","authority":"example.test","path":"/api/x","client_ip":"127.0.0.1","#,
                r#""subject":"alice","status":200,"latency_ms":1.5,"bytes_in":0,"bytes_out":42,"#,
                r#""endpoint":"127.0.0.1:8081","headers":{"Authorization":"[redacted]","cookie":"[redacted]","#,
                r#""user-agent":"curl","x-session":"[redacted]","x-tenant":"b"},"#,
                r#""decisions":[{"plugin":"jwt","phase":"request","decision":"authenticated","duration_us":30}]}"#
            )
        );
        assert!(!text.contains("secret"));
    }

    #[test]
    fn absent_subject_and_endpoint_are_null_and_strings_are_escaped() {
        let mut e = exchange();
        e.subject = None;
        e.endpoint = None;
        e.path = "/a\"b\n";
        let text = render(&e, [], [], &[] as &[&str]);
        let record: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(record["subject"], serde_json::Value::Null);
        assert_eq!(record["endpoint"], serde_json::Value::Null);
        assert_eq!(record["path"], "/a\"b\n");
        assert_eq!(record["headers"], serde_json::json!({}));
        assert_eq!(record["decisions"], serde_json::json!([]));
        assert!(!text.contains('\n'), "one line: {text}");
    }

    /// The record as `#[derive(Serialize)]` and serde_json wrote it before [`render`] wrote it
    /// member by member: the reference its bytes are checked against.
    #[derive(serde::Serialize)]
    struct Derived<'a> {
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
        headers: BTreeMap<&'a str, &'a str>,
        decisions: Vec<DerivedDecision<'a>>,
    }

    #[derive(serde::Serialize)]
    struct DerivedDecision<'a> {
        plugin: &'a str,
        phase: &'static str,
        decision: &'a str,
        duration_us: u64,
    }

    #[test]
    fn record_bytes_equal_serde_json_over_the_derived_record() {
        // Values with and without anything to escape: quotes, backslashes, every control
        // character class serde_json writes differently (`\n`, `\t`, `\u0001`), DEL (not
        // escaped), non-ASCII text; numbers at their extremes; absent and present options.
        let texts = [
            "",
            "plain",
            "a\"b",
            "back\\slash",
            "line\nbreak\r",
            "tab\there",
            "\u{1}\u{1f}",
            "del\u{7f}",
            "ünïcødé ✓",
            "/api/orders?x=1&y=\"2\"",
        ];
        for (i, text) in texts.iter().enumerate() {
            let other = texts[(i + 3) % texts.len()];
            let e = Exchange {
                request_id: text,
                route: other,
                method: "POST",
                authority: text,
                path: other,
                client_ip: "::1",
                subject: (i % 2 == 0).then_some(*text),
                status: [200, 404, 503, u16::MAX][i % 4],
                start_ms: [0, 1_795_299_508_123, 253_402_300_800_000, 1][i % 4],
                duration_us: [0, 1, 1500, 123_456_789, u64::MAX / 3][i % 5],
                bytes_in: [0, u64::MAX][i % 2],
                bytes_out: i as u64 * 1000,
                endpoint: (i % 3 != 0).then_some(other),
            };
            let headers = [(*text, other), ("user-agent", *text), ("authorization", "Bearer x"), (other, "dup")];
            let headers = &headers[..i % 5];
            let decisions: Vec<Decision<'_>> = (0..i % 6)
                .map(|n| Decision {
                    plugin: texts[(i + n) % texts.len()],
                    phase: if n % 2 == 0 { "request" } else { "response" },
                    decision: other,
                    duration_us: n as u64 * 7,
                })
                .collect();
            let derived = Derived {
                kind: "audit",
                time: rfc3339(e.start_ms),
                time_ms: e.start_ms,
                request_id: e.request_id,
                route: e.route,
                method: e.method,
                authority: e.authority,
                path: e.path,
                client_ip: e.client_ip,
                subject: e.subject,
                status: e.status,
                latency_ms: e.duration_us as f64 / 1000.0,
                bytes_in: e.bytes_in,
                bytes_out: e.bytes_out,
                endpoint: e.endpoint,
                headers: headers
                    .iter()
                    .map(|&(n, v)| {
                        let secret = ALWAYS_REDACTED.iter().chain(&["x-session"]).any(|r| r.eq_ignore_ascii_case(n));
                        (n, if secret { REDACTED } else { v })
                    })
                    .collect(),
                decisions: decisions
                    .iter()
                    .map(|d| DerivedDecision {
                        plugin: d.plugin,
                        phase: d.phase,
                        decision: d.decision,
                        duration_us: d.duration_us,
                    })
                    .collect(),
            };
            let expected = serde_json::to_string(&derived).unwrap();
            let text = render(&e, headers.iter().copied(), decisions.iter().copied(), &["X-Session"]);
            assert_eq!(text, expected, "case {i}");
            serde_json::from_str::<serde_json::Value>(&text).unwrap();
        }
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
}
