//! `request-validation`: a Portcullis `validation` plugin that checks requests before they reach
//! the upstream (the equivalent of Kong's `request-validator` and APISIX's
//! `request-validation`).
//!
//! - `methods`: allowed methods; `content_types`: allowed media types of a request with a body
//!   (parameters such as `charset` are ignored; compared case-insensitively);
//! - `required_headers` and `required_query`: names that must be present;
//! - `body_schema`: a JSON Schema (draft 2020-12 unless the schema's `$schema` says otherwise)
//!   the body must satisfy, via the `jsonschema` crate with remote and file `$ref` resolution
//!   compiled out; `format` keywords are asserted;
//! - `max_body_bytes`: the body limit the host enforces before this step runs (413 beyond).
//!
//! The body is buffered only when `body_schema` is set or `max_body_bytes` is given, and only
//! when the chain reaches this step. A body that is not JSON (or not UTF-8) is malformed: 400.
//! Every other violation is collected, not just the first, and answered as 422; the host
//! renders them as an RFC 9457 problem whose `errors` list each violation's JSON pointer
//! (RFC 6901): `/method`, `/headers/NAME`, `/query/NAME`, or the pointer into the body.
//! Messages never quote the offending body value (`masked` errors), so a rejected secret does
//! not end up in a response or a log.
//!
//! Configuration reference: `plugins/request-validation/README.md`.

use portcullis_sdk::{ConfigError, Invalid, Plugin, Request, Validation, ValidationOutcome, Violation};
use serde::Deserialize;

/// Default and largest body limit, in bytes.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// Violations reported per request at most.
pub const MAX_VIOLATIONS: usize = 50;

/// The step configuration (JSON).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Allowed methods; empty allows all.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Allowed media types for requests with a body; empty allows all.
    #[serde(default)]
    pub content_types: Vec<String>,
    /// Header names that must be present.
    #[serde(default)]
    pub required_headers: Vec<String>,
    /// Query parameter names that must be present.
    #[serde(default)]
    pub required_query: Vec<String>,
    /// JSON Schema for the body: an object, or JSON text (as `$file` gives it).
    #[serde(default)]
    pub body_schema: Option<serde_json::Value>,
    /// Largest body accepted, in bytes (at most 1 MiB, the host's buffering cap).
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
}

/// The configured plugin.
pub struct RequestValidation {
    config: Config,
    schema: Option<jsonschema::Validator>,
}

impl Plugin for RequestValidation {
    type Config = Config;

    fn new(mut config: Config) -> Result<Self, ConfigError> {
        for (i, m) in config.methods.iter_mut().enumerate() {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(ConfigError::new(format!("/methods/{i}"), "must be a method name"));
            }
            *m = m.to_ascii_uppercase();
        }
        for (i, t) in config.content_types.iter_mut().enumerate() {
            if !t.contains('/') || t.contains(';') {
                return Err(ConfigError::new(
                    format!("/content_types/{i}"),
                    "must be a media type like `application/json`",
                ));
            }
            *t = t.trim().to_ascii_lowercase();
        }
        for h in &mut config.required_headers {
            *h = h.to_ascii_lowercase();
        }
        if let Some(max) = config.max_body_bytes
            && max > DEFAULT_MAX_BODY_BYTES
        {
            return Err(ConfigError::new("/max_body_bytes", format!("must be at most {DEFAULT_MAX_BODY_BYTES}")));
        }
        let schema = match config.body_schema.take() {
            None => None,
            Some(value) => {
                let value = match value {
                    serde_json::Value::String(text) => serde_json::from_str(&text)
                        .map_err(|e| ConfigError::new("/body_schema", format!("not JSON: {e}")))?,
                    other => other,
                };
                let validator = jsonschema::options().should_validate_formats(true).build(&value).map_err(|e| {
                    ConfigError::new("/body_schema", format!("not a valid JSON Schema: {}", e.masked()))
                })?;
                Some(validator)
            }
        };
        Ok(RequestValidation { config, schema })
    }
}

fn violation(pointer: impl Into<String>, message: impl Into<String>) -> Violation {
    Violation { pointer: pointer.into(), message: message.into() }
}

/// RFC 6901 escaping of one reference token.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

impl Validation for RequestValidation {
    fn body_limit(&self) -> Option<u64> {
        match (self.schema.is_some(), self.config.max_body_bytes) {
            (_, Some(max)) => Some(max),
            (true, None) => Some(DEFAULT_MAX_BODY_BYTES),
            (false, None) => None,
        }
    }

    fn validate(&self, request: &Request<'_>, body: Option<&[u8]>) -> ValidationOutcome {
        let c = &self.config;
        let mut violations = Vec::new();
        if !c.methods.is_empty() && !c.methods.iter().any(|m| m == request.method()) {
            violations.push(violation("/method", format!("method must be one of {}", c.methods.join(", "))));
        }
        let has_body = body.is_some_and(|b| !b.is_empty())
            || request.header("content-length").is_some_and(|l| l != "0")
            || request.header("transfer-encoding").is_some();
        if has_body && !c.content_types.is_empty() {
            let media =
                request.header("content-type").map(|t| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
            if !media.as_ref().is_some_and(|m| c.content_types.contains(m)) {
                violations.push(violation(
                    "/headers/content-type",
                    format!("content type must be one of {}", c.content_types.join(", ")),
                ));
            }
        }
        for h in &c.required_headers {
            if request.header(h).is_none() {
                violations.push(violation(format!("/headers/{}", escape(h)), "this header is required"));
            }
        }
        for q in &c.required_query {
            if request.query_param(q).is_none() {
                violations.push(violation(format!("/query/{}", escape(q)), "this query parameter is required"));
            }
        }
        if let Some(schema) = &self.schema {
            let body = body.unwrap_or_default();
            let instance: serde_json::Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => {
                    let message = if body.is_empty() {
                        "a JSON body is required".to_owned()
                    } else {
                        format!("the body is not JSON: {e}")
                    };
                    return ValidationOutcome::Invalid(Invalid {
                        malformed: true,
                        violations: vec![violation("", message)],
                    });
                }
            };
            for error in schema.iter_errors(&instance).take(MAX_VIOLATIONS) {
                violations.push(violation(error.instance_path().as_str(), error.masked().to_string()));
            }
        }
        if violations.is_empty() {
            ValidationOutcome::Valid
        } else {
            violations.truncate(MAX_VIOLATIONS);
            ValidationOutcome::Invalid(Invalid { malformed: false, violations })
        }
    }
}

portcullis_sdk::export_validation!(RequestValidation);

#[cfg(test)]
mod tests {
    use portcullis_sdk::testing;

    use super::*;

    const CONFIG: &str = r#"{
        "methods": ["POST", "put"],
        "content_types": ["application/json"],
        "required_headers": ["X-Tenant"],
        "body_schema": {
            "type": "object",
            "required": ["name", "price"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "price": {"type": "number", "minimum": 0},
                "tags": {"type": "array", "items": {"type": "string"}}
            },
            "additionalProperties": false
        }
    }"#;

    fn plugin() -> RequestValidation {
        testing::configure(CONFIG).unwrap()
    }

    fn post(body: &str) -> ValidationOutcome {
        let request = testing::request("POST", "/items")
            .header("content-type", "application/json; charset=utf-8")
            .header("x-tenant", "t1")
            .build();
        plugin().validate(&request, Some(body.as_bytes()))
    }

    fn pointers(outcome: ValidationOutcome) -> Vec<String> {
        match outcome {
            ValidationOutcome::Invalid(i) if !i.malformed => i.violations.into_iter().map(|v| v.pointer).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_valid_body_passes_and_every_violation_is_listed_with_its_pointer() {
        assert!(matches!(post(r#"{"name": "bolt", "price": 0.25, "tags": ["m3"]}"#), ValidationOutcome::Valid));
        let mut got = pointers(post(r#"{"name": "", "price": -1, "tags": ["ok", 7]}"#));
        got.sort();
        assert_eq!(got, ["/name", "/price", "/tags/1"]);
        assert_eq!(pointers(post(r#"{"name": "x"}"#)), [""], "a missing required member points at its parent");
    }

    #[test]
    fn malformed_bodies_are_400_and_messages_do_not_echo_values() {
        let ValidationOutcome::Invalid(i) = post("{not json") else { panic!() };
        assert!(i.malformed);
        let ValidationOutcome::Invalid(i) = post(r#"{"name": "s3cret-value", "price": "s3cret-value"}"#) else {
            panic!()
        };
        assert!(!i.violations.iter().any(|v| v.message.contains("s3cret")), "{:?}", i.violations);
    }

    #[test]
    fn method_content_type_headers_and_query_are_checked() {
        let p: RequestValidation = testing::configure(
            r#"{"methods": ["POST"], "content_types": ["application/json"], "required_headers": ["x-tenant"], "required_query": ["page"]}"#,
        )
        .unwrap();
        assert_eq!(p.body_limit(), None, "no schema, no limit: the body is not buffered");
        let request = testing::request("GET", "/items")
            .header("content-type", "text/plain")
            .header("content-length", "3")
            .build();
        let mut got = pointers(p.validate(&request, None));
        got.sort();
        assert_eq!(got, ["/headers/content-type", "/headers/x-tenant", "/method", "/query/page"]);
        let ok = testing::request("POST", "/items?page=2").header("x-tenant", "t").build();
        assert!(matches!(p.validate(&ok, None), ValidationOutcome::Valid), "no body, no content type needed");
    }

    #[test]
    fn configuration_errors_name_the_field() {
        let err = |json: &str| testing::configure::<RequestValidation>(json).err().unwrap().pointer;
        assert_eq!(err(r#"{"body_schema": {"type": "nope"}}"#), "/body_schema");
        assert_eq!(err(r#"{"body_schema": "{not json"}"#), "/body_schema");
        assert_eq!(err(r#"{"content_types": ["json"]}"#), "/content_types/0");
        assert_eq!(err(r#"{"max_body_bytes": 99999999}"#), "/max_body_bytes");
        assert_eq!(plugin().body_limit(), Some(DEFAULT_MAX_BODY_BYTES));
        let from_file: RequestValidation = testing::configure(r#"{"body_schema": "{\"type\": \"object\"}"}"#).unwrap();
        assert!(from_file.schema.is_some());
    }
}
