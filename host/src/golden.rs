//! Golden requests: test requests a configuration lists per route (`[[route.golden]]`) with the
//! answer it expects, run in process against a candidate snapshot before it may serve. A
//! snapshot whose golden requests fail is refused like any other bad configuration: at start,
//! by `portcullis validate`, and at every reload (the running snapshot keeps serving), each
//! failing case named by its field (`route[1].golden[0]`) and its `name`.
//!
//! A golden request goes through what the proxy does before the upstream: routing (it must
//! match the route that lists it), the path normalization of the listener, the removal of
//! hop-by-hop and identity fields, and the route's request phase (auth, rate-limit, validation,
//! filters, shadow steps and canaries). No upstream is contacted and no response phase or
//! logging step runs, so no audit record is written. Its outcome is either `forward` (the
//! chain let it through: the request that would go upstream, with injected identity, is what
//! `expect_headers` checks) or the status of the local response or error the gateway would
//! send (whose fields `expect_headers` checks).
//!
//! The plugin calls are real: golden requests count in the plugins' metrics, take from the
//! quotas of their key (their client IP is 192.0.2.1, a documentation address (RFC 5737), unless
//! they set one), and make the outbound calls their plugins make (a JWKS fetch, say).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use opentelemetry::{Context, KeyValue};

use crate::body::{LazyBody, full};
use crate::chain::{ChainState, Trace, Verdict, add_rate_limit_headers};
use crate::config::{GoldenExpect, GoldenValue, Issue, LoadedConfig};
use crate::error::GatewayError;
use crate::plugin::PluginRequest;
use crate::proxy::headers;
use crate::snapshot::Snapshot;
use crate::sources::Sources;

/// One golden request, its `$file` header values read: what [`run`] sends.
#[derive(Debug)]
pub struct Golden {
    /// Its field path, `route[I].golden[K]`.
    field: String,
    /// Its `name`.
    name: String,
    /// The id of the route that lists it.
    route: Arc<str>,
    method: Method,
    /// Host, lowercase, without port.
    host: String,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: bytes::Bytes,
    client_ip: IpAddr,
    expect: GoldenExpect,
    expect_headers: Vec<(HeaderName, String)>,
    expect_decisions: Vec<(String, String)>,
}

/// What a golden request came to.
#[derive(Debug)]
enum Outcome {
    /// The chain let it through; the request head that would go upstream.
    Forward(HeaderMap),
    /// The gateway answered itself with this status and these fields.
    Answer(StatusCode, HeaderMap),
}

/// Every `[[route.golden]]` of `loaded`, with each header value given as `{ "$file" = PATH }`
/// read (and recorded in `sources`, so a changed file reloads).
///
/// Errors: an [`Issue`] per value whose file cannot be read or is not a header value (the
/// message never holds the value).
pub fn prepare(loaded: &LoadedConfig, sources: &mut Sources) -> Result<Vec<Golden>, Vec<Issue>> {
    let mut cases = Vec::new();
    let mut issues = Vec::new();
    for (i, route) in loaded.config.routes.iter().enumerate() {
        for (k, golden) in route.golden.iter().enumerate() {
            let field = format!("route[{i}].golden[{k}]");
            let mut headers = HeaderMap::new();
            for (name, value) in &golden.headers {
                let at = format!("{field}.headers.{name}");
                let text = match value {
                    GoldenValue::Text(text) => text.clone(),
                    GoldenValue::File { file, prefix } => match read_value(loaded, file, sources) {
                        Ok(text) => format!("{}{text}", prefix.as_deref().unwrap_or_default()),
                        Err(why) => {
                            issues.push(Issue::new(at, why));
                            continue;
                        }
                    },
                };
                // Validation checked names and literal values.
                let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&text))
                else {
                    issues.push(Issue::new(at, "is not a valid header value"));
                    continue;
                };
                headers.append(name, value);
            }
            let (path, query) = match golden.path.split_once('?') {
                Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
                None => (golden.path.clone(), None),
            };
            cases.push(Golden {
                field,
                name: golden.name.clone(),
                route: route.id.as_str().into(),
                method: Method::from_bytes(golden.method.as_bytes()).unwrap_or(Method::GET),
                host: golden.host.clone().or_else(|| route.host.clone()).unwrap_or_else(|| "localhost".into()),
                path,
                query,
                headers,
                body: golden.body.clone().unwrap_or_default().into(),
                client_ip: golden.client_ip,
                expect: golden.expect,
                expect_headers: golden
                    .expect_headers
                    .iter()
                    .filter_map(|(n, v)| Some((HeaderName::from_bytes(n.as_bytes()).ok()?, v.clone())))
                    .collect(),
                expect_decisions: golden.expect_decisions.iter().map(|(p, d)| (p.clone(), d.clone())).collect(),
            });
        }
    }
    if issues.is_empty() { Ok(cases) } else { Err(issues) }
}

/// The text of a `$file` header value, without one trailing newline.
fn read_value(loaded: &LoadedConfig, file: &std::path::Path, sources: &mut Sources) -> Result<String, String> {
    let path = loaded.resolve(file);
    let bytes = crate::secrets::read_file(&path, sources)?;
    String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))
}

/// Sends every case through `snapshot` in turn; one [`Issue`] per case whose outcome differs
/// from what it expects, at its field, naming the case, what was expected, what happened and
/// the decisions its steps made.
pub async fn run(snapshot: &Snapshot, cases: &[Golden]) -> Vec<Issue> {
    let mut issues = Vec::new();
    for case in cases {
        if let Err(why) = check(snapshot, case).await {
            issues.push(Issue::new(&case.field, format!("golden request `{}`: {why}", case.name)));
        }
    }
    if !cases.is_empty() {
        tracing::debug!(cases = cases.len(), failed = issues.len(), "golden requests run");
    }
    issues
}

/// Runs one case. Errors: why it failed.
async fn check(snapshot: &Snapshot, case: &Golden) -> Result<(), String> {
    let path = crate::proxy::path::normalize(&case.path)
        .map_err(|e| format!("the listener would refuse its path ({e})"))?
        .into_owned();
    let route = snapshot.route(&case.host, &path, &case.method).ok_or_else(|| {
        format!("{} {}{path} matches no route; a golden request must match its route", case.method, case.host)
    })?;
    if route.id != case.route {
        return Err(format!("{} {path} matches route `{}`, not the route that lists it", case.method, route.id));
    }
    let mut request_headers = case.headers.clone();
    headers::strip_inbound(&mut request_headers, &snapshot.identity, true);
    let request_id = format!("golden-{}", case.field);
    let mut request = Arc::new(PluginRequest {
        method: case.method.clone(),
        scheme: "http",
        authority: case.host.clone(),
        path: path.clone(),
        query: case.query.clone(),
        headers: request_headers,
        client_ip: case.client_ip.to_string(),
        client_cert: None,
        request_id: request_id.clone(),
        route: route.id.clone(),
    });
    let telemetry = snapshot.telemetry.clone();
    let cx = telemetry.start_request(&Context::new(), || {
        let attributes = vec![
            KeyValue::new("portcullis.route", route.id.to_string()),
            KeyValue::new("portcullis.golden", case.name.clone()),
        ];
        (format!("golden {} {}", case.method, route.id), attributes)
    });
    let trace = Trace { telemetry, cx };
    let mut state = ChainState::default();
    let answer = if case.body.len() as u64 > route.max_body_bytes {
        Err(GatewayError::BodyTooLarge { limit: route.max_body_bytes })
    } else {
        let limit = route.chain.body_limit().unwrap_or(0).min(route.max_body_bytes);
        let mut body = LazyBody::new(full(case.body.clone()), limit);
        route.chain.on_request(&mut request, &mut body, &snapshot.identity, &mut state, &trace).await
    };
    crate::telemetry::end(&trace.cx, crate::telemetry::SpanOutcome::Ok, "", []);
    let outcome = match answer {
        Ok(Verdict::Continue) => {
            let mut sent = request.headers.clone();
            if let Some(identity) = &state.identity {
                snapshot.identity.inject(&mut sent, identity);
            }
            // A value written from a secret is named, never shown or compared.
            for secret in &state.secret_headers {
                let named = HeaderValue::from_str(&format!("[secret {}]", secret.secret))
                    .unwrap_or(HeaderValue::from_static("[secret]"));
                sent.insert(secret.name.clone(), named);
            }
            Outcome::Forward(sent)
        }
        Ok(Verdict::Respond(response)) => Outcome::Answer(response.status(), response.headers().clone()),
        Err(e) => {
            let response = e.into_response(&request_id);
            Outcome::Answer(response.status(), response.headers().clone())
        }
    };
    let decisions = describe_decisions(&state);
    let (got, fields) = match &outcome {
        Outcome::Forward(sent) => ("forward".to_owned(), sent),
        Outcome::Answer(status, fields) => (status.as_u16().to_string(), fields),
    };
    let mut fields = fields.clone();
    if matches!(outcome, Outcome::Answer(..)) {
        add_rate_limit_headers(&mut fields, &state.quotas);
    }
    let expected = match case.expect {
        GoldenExpect::Forward => "forward".to_owned(),
        GoldenExpect::Status(status) => status.to_string(),
    };
    if got != expected {
        return Err(format!("expected {expected}, got {got} ({decisions})"));
    }
    let mut wrong = String::new();
    for (name, want) in &case.expect_headers {
        let values: Vec<_> = fields.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes())).collect();
        let have = values.join(", ");
        if values.is_empty() {
            let _ = write!(wrong, "; `{name}` is absent, expected `{want}`");
        } else if have != *want && case.headers.contains_key(name) {
            // What the case sent itself (a test token, say) is not repeated in messages.
            let _ = write!(wrong, "; `{name}` is not `{want}`");
        } else if have != *want {
            let _ = write!(wrong, "; `{name}` is `{have}`, expected `{want}`");
        }
    }
    for (plugin, want) in &case.expect_decisions {
        let made: Vec<_> =
            state.decisions.iter().filter(|d| *d.plugin == **plugin).map(|d| d.to_wit().decision).collect();
        if made.is_empty() {
            let _ = write!(wrong, "; `{plugin}` made no decision, expected `{want}`");
        } else if !made.iter().any(|d| d == want) {
            let _ = write!(wrong, "; `{plugin}` decided `{}`, expected `{want}`", made.join(","));
        }
    }
    match wrong.strip_prefix("; ") {
        None => Ok(()),
        Some(wrong) => Err(format!("{got} as expected, but {wrong} ({decisions})")),
    }
}

/// `decisions: jwt=authenticated, rbac=respond`, or `no step decided`.
fn describe_decisions(state: &ChainState) -> String {
    if state.decisions.is_empty() {
        return "no step decided".into();
    }
    let made: Vec<_> = state.decisions.iter().map(|d| format!("{}={}", d.plugin, d.to_wit().decision)).collect();
    format!("decisions: {}", made.join(", "))
}
