//! The filter chain: a route's ordered plugin steps, and what each kind's answer does to the
//! exchange.
//!
//! Request phase, in chain order: `auth` may set the identity or deny; `rate-limit` may limit
//! (429 with `Retry-After`); `validation` may refuse (RFC 9457 400/422); `filter` may edit
//! headers or answer itself. Response phase, in reverse order: `filter.on-response`. After the
//! response body is sent: `logging` steps observe the finished exchange. A failing step follows
//! its failure policy: fail-closed answers 500, fail-open skips the step. Everything a plugin
//! returns is checked before use.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use opentelemetry::trace::SpanKind;
use opentelemetry::{Context, KeyValue};

use crate::body::{Body, LazyBody, full};
use crate::config::{FailurePolicy, PluginKind};
use crate::error::{GatewayError, problem};
use crate::plugin::bindings::exports::portcullis::plugin::{
    auth::AuthOutcome,
    filter::FilterAction,
    logging::{Exchange, Phase, StepDecision},
    rate_limit::{Quota, RateLimitOutcome},
    validation::ValidationOutcome,
};
use crate::plugin::bindings::portcullis::plugin::types::{Header, HeaderEdits, Identity, LocalResponse, ResponseHead};
use crate::plugin::{Call, CallPhase, FailureKind, LoadedPlugin, PluginFailure, PluginRequest, Reply, StepPool};
use crate::proxy::headers::{self, IdentityHeaders};
use crate::telemetry::{self, SpanOutcome, Telemetry};

/// Largest local response body a plugin may return, in bytes.
pub const MAX_LOCAL_RESPONSE_BYTES: usize = 1024 * 1024;

/// One step: a configured plugin pool and its failure policy.
#[derive(Debug, Clone)]
pub struct Step {
    /// The plugin configured for this step.
    pub pool: Arc<StepPool>,
    /// What a failure does.
    pub policy: FailurePolicy,
}

/// A route's ordered steps.
#[derive(Debug, Default)]
pub struct Chain {
    steps: Vec<Step>,
    body_limit: Option<u64>,
    has_logging: bool,
    /// Whether some step has a response hook (it reads the request then too).
    has_response_hooks: bool,
    /// The header names the logging steps record (their union); none for all.
    logged_headers: Option<Vec<http::HeaderName>>,
}

/// What the chain learnt about one exchange so far.
#[derive(Debug, Default)]
pub struct ChainState {
    /// Identity from the auth step.
    pub identity: Option<Identity>,
    /// Quotas reported by rate-limit steps, sent as RateLimit fields.
    pub quotas: Vec<Quota>,
    /// Each step's decision, for the logging plugins (made WIT records only for them).
    pub decisions: Vec<Decision>,
    /// Query parameters an auth step asked to remove before forwarding (its credential).
    pub remove_query_params: Vec<String>,
}

/// What one step decided: [`StepDecision`] without its strings, which only a route with a
/// logging step needs ([`Decision::to_wit`]).
#[derive(Debug, Clone)]
pub struct Decision {
    /// The step's plugin id.
    pub plugin: Arc<str>,
    /// Request or response phase.
    pub phase: Phase,
    /// `authenticated`, `continue`, `failed`, …
    pub decision: &'static str,
    /// Time spent in the call, in µs.
    pub duration_us: u64,
}

impl Decision {
    /// The WIT record.
    pub fn to_wit(&self) -> StepDecision {
        StepDecision {
            plugin: self.plugin.to_string(),
            phase: self.phase,
            decision: self.decision.to_owned(),
            duration_us: self.duration_us,
        }
    }
}

/// Go on to the upstream, or answer now.
#[derive(Debug)]
pub enum Verdict {
    /// Forward the request.
    Continue,
    /// Answer with this response instead.
    Respond(Response<Body>),
}

// === impl Chain ===

impl Chain {
    /// A chain of `steps`, in order.
    pub fn new(steps: Vec<Step>) -> Self {
        let body_limit = steps.iter().filter_map(|s| s.pool.body_limit()).max();
        let logging: Vec<_> = steps.iter().filter(|s| s.pool.plugin().kind == PluginKind::Logging).collect();
        let has_logging = !logging.is_empty();
        let logged_headers = logging.iter().try_fold(Vec::new(), |mut names, step| {
            for name in step.pool.record_headers()? {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
            Some(names)
        });
        let has_response_hooks = steps.iter().any(|s| s.pool.hooks().response);
        Chain { steps, body_limit, has_logging, has_response_hooks, logged_headers }
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Bytes of request body some step needs buffered, if any (the largest of them).
    pub fn body_limit(&self) -> Option<u64> {
        self.body_limit
    }

    /// Whether any step's response hook runs: it is lent the request again, headers included,
    /// so they must outlive the upstream exchange.
    pub fn has_response_hooks(&self) -> bool {
        self.has_response_hooks
    }

    /// Whether any step observes the finished exchange.
    pub fn has_logging(&self) -> bool {
        self.has_logging
    }

    /// The fields of `headers` the logging steps record, as WIT records: those they named
    /// (`logging.record-headers`), or all when one did not name any. Empty without logging.
    pub fn logged_headers(&self, headers: &HeaderMap) -> Vec<Header> {
        if !self.has_logging {
            return Vec::new();
        }
        match &self.logged_headers {
            None => headers::to_wit(headers),
            Some(names) => names
                .iter()
                .flat_map(|name| headers.get_all(name).iter().map(move |v| headers::wit_header(name, v)))
                .collect(),
        }
    }

    /// Runs the request phase. `request` is what plugins see, its headers what goes upstream:
    /// filter edits and an auth step's credential removal apply to it in place. `body` is read
    /// when the first step that asked for it runs. Steps without a request hook are skipped.
    ///
    /// Errors: [`GatewayError::PluginFailed`] when a fail-closed step fails;
    /// [`GatewayError::BodyTooLarge`] (413) when the body exceeds the `body-limit` of a step
    /// that reads it; [`GatewayError::BadBody`] when it cannot be read.
    pub async fn on_request(
        &self,
        request: &mut Arc<PluginRequest>,
        body: &mut LazyBody,
        ids: &IdentityHeaders,
        state: &mut ChainState,
        trace: &Trace,
    ) -> Result<Verdict, GatewayError> {
        for step in &self.steps {
            if !step.pool.hooks().request {
                continue;
            }
            let plugin = step.pool.plugin();
            let identity = state.identity.as_ref();
            let bytes = match (plugin.kind, step.pool.body_limit()) {
                (PluginKind::Validation, Some(limit)) => {
                    let bytes = body.bytes().await?.clone();
                    if bytes.len() as u64 > limit {
                        return Err(GatewayError::BodyTooLarge { limit });
                    }
                    Some(bytes)
                }
                _ => None,
            };
            let call = match plugin.kind {
                PluginKind::Auth => Call::Authenticate(request),
                PluginKind::RateLimit => Call::Check(request, identity),
                PluginKind::Validation => Call::Validate(request, identity, bytes.as_deref()),
                PluginKind::Filter => Call::OnRequest(request, identity),
                PluginKind::Logging => continue,
            };
            let started = Instant::now();
            let span = trace.step(plugin, "request");
            let outcome = match step.pool.call(&request.request_id, &span, call).await {
                Ok((reply, settle)) => {
                    let applied = self.apply(step, reply, request, ids, state);
                    settle.settle(applied.is_ok());
                    applied
                }
                Err(failure) => Err(failure),
            };
            let elapsed = started.elapsed();
            let (decision, verdict) = match outcome {
                Ok(done) => done,
                Err(failure) => match fail(step, failure, &request.request_id, &span) {
                    Ok(decision) => (decision, Verdict::Continue),
                    Err(e) => {
                        plugin.record_call(CallPhase::Request, None, elapsed);
                        return Err(e);
                    }
                },
            };
            Trace::end_step(&span, decision);
            plugin.record_call(CallPhase::Request, Some(decision), elapsed);
            state.decisions.push(Decision {
                plugin: plugin.id.clone(),
                phase: Phase::Request,
                decision,
                duration_us: micros(started),
            });
            if let Verdict::Respond(response) = verdict {
                return Ok(Verdict::Respond(response));
            }
        }
        Ok(Verdict::Continue)
    }

    /// What one request-phase reply does.
    fn apply(
        &self,
        step: &Step,
        reply: Reply,
        request: &mut Arc<PluginRequest>,
        ids: &IdentityHeaders,
        state: &mut ChainState,
    ) -> Result<(&'static str, Verdict), PluginFailure> {
        let id = &step.pool.plugin().id;
        let invalid = |e: String| PluginFailure::new(id, FailureKind::InvalidOutput(e));
        Ok(match reply {
            Reply::Auth(AuthOutcome::Authenticated(done)) => {
                headers::check_identity(&done.identity).map_err(invalid)?;
                if !done.remove_headers.is_empty() {
                    let edits = HeaderEdits { remove: done.remove_headers, set: Vec::new(), append: Vec::new() };
                    let headers = &mut Arc::make_mut(request).headers;
                    headers::apply_edits(headers, &edits, Some(ids)).map_err(|e| invalid(e.to_string()))?;
                }
                // The credential leaves the request at once: later steps are lent the query
                // without it, as the upstream gets it.
                if !done.remove_query_params.is_empty() {
                    let lent = Arc::make_mut(request);
                    lent.query = lent.query.as_deref().and_then(|q| headers::strip_query(q, &done.remove_query_params));
                }
                state.remove_query_params.extend(done.remove_query_params);
                state.identity = Some(done.identity);
                ("authenticated", Verdict::Continue)
            }
            Reply::Auth(AuthOutcome::Anonymous) => ("anonymous", Verdict::Continue),
            Reply::Auth(AuthOutcome::Denied(local)) => {
                let mut response = local_response(local).map_err(invalid)?;
                if response.status() == StatusCode::UNAUTHORIZED
                    && !response.headers().contains_key(header::WWW_AUTHENTICATE)
                {
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"portcullis\""));
                }
                ("denied", Verdict::Respond(response))
            }
            Reply::RateLimit(RateLimitOutcome::Allowed(quotas)) => {
                check_quotas(&quotas).map_err(invalid)?;
                state.quotas.extend(quotas);
                ("allowed", Verdict::Continue)
            }
            Reply::RateLimit(RateLimitOutcome::Limited(limited)) => {
                check_quotas(&limited.quotas).map_err(invalid)?;
                state.quotas.extend(limited.quotas);
                let mut response = problem(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    "The request exceeds a rate limit quota.",
                    &request.request_id,
                    None,
                );
                let retry = limited.retry_after_ms.div_ceil(1000).max(1);
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry));
                ("limited", Verdict::Respond(response))
            }
            Reply::Validation(ValidationOutcome::Valid) => ("valid", Verdict::Continue),
            Reply::Validation(ValidationOutcome::Invalid(invalid)) => {
                let (status, slug, detail) = if invalid.malformed {
                    (StatusCode::BAD_REQUEST, "malformed-request", "The request could not be parsed.")
                } else {
                    (StatusCode::UNPROCESSABLE_ENTITY, "invalid-request", "The request breaks the route's rules.")
                };
                let errors: Vec<_> = invalid
                    .violations
                    .iter()
                    .map(|v| serde_json::json!({ "pointer": v.pointer, "detail": v.message }))
                    .collect();
                let response = problem(
                    status,
                    slug,
                    detail,
                    &request.request_id,
                    Some(("errors", serde_json::Value::Array(errors))),
                );
                ("invalid", Verdict::Respond(response))
            }
            Reply::Filter(FilterAction::Continue(edits)) => {
                if !(edits.remove.is_empty() && edits.set.is_empty() && edits.append.is_empty()) {
                    let headers = &mut Arc::make_mut(request).headers;
                    headers::apply_edits(headers, &edits, Some(ids)).map_err(|e| invalid(e.to_string()))?;
                }
                ("continue", Verdict::Continue)
            }
            Reply::Filter(FilterAction::Respond(local)) => {
                ("respond", Verdict::Respond(local_response(local).map_err(invalid)?))
            }
            Reply::Observed => ("observed", Verdict::Continue),
        })
    }

    /// Runs `filter.on-response` steps in reverse order on `response`, skipping filters that
    /// do not implement it.
    ///
    /// Errors: [`GatewayError::PluginFailed`] when a fail-closed step fails.
    pub async fn on_response(
        &self,
        request: &Arc<PluginRequest>,
        response: &mut Response<Body>,
        state: &mut ChainState,
        trace: &Trace,
    ) -> Result<(), GatewayError> {
        for step in self.steps.iter().rev() {
            let plugin = step.pool.plugin();
            if plugin.kind != PluginKind::Filter || !step.pool.hooks().response {
                continue;
            }
            let seen =
                ResponseHead { status: response.status().as_u16(), headers: headers::to_wit(response.headers()) };
            let started = Instant::now();
            let call = Call::OnResponse(request, state.identity.as_ref(), &seen);
            let invalid = |e: String| PluginFailure::new(&plugin.id, FailureKind::InvalidOutput(e));
            let span = trace.step(plugin, "response");
            let outcome = match step.pool.call(&request.request_id, &span, call).await {
                Ok((reply, settle)) => {
                    let applied = match reply {
                        Reply::Filter(FilterAction::Continue(edits)) => {
                            headers::apply_edits(response.headers_mut(), &edits, None)
                                .map(|()| "continue")
                                .map_err(|e| invalid(e.to_string()))
                        }
                        Reply::Filter(FilterAction::Respond(local)) => {
                            local_response(local).map(|r| *response = r).map(|()| "respond").map_err(invalid)
                        }
                        _ => Err(invalid("unexpected reply kind".into())),
                    };
                    settle.settle(applied.is_ok());
                    applied
                }
                Err(failure) => Err(failure),
            };
            let elapsed = started.elapsed();
            let decision = match outcome {
                Ok(d) => d,
                Err(failure) => match fail(step, failure, &request.request_id, &span) {
                    Ok(decision) => decision,
                    Err(e) => {
                        plugin.record_call(CallPhase::Response, None, elapsed);
                        return Err(e);
                    }
                },
            };
            Trace::end_step(&span, decision);
            plugin.record_call(CallPhase::Response, Some(decision), elapsed);
            state.decisions.push(Decision {
                plugin: plugin.id.clone(),
                phase: Phase::Response,
                decision,
                duration_us: micros(started),
            });
        }
        Ok(())
    }

    /// Hands the finished exchange to every logging step. Failures are logged and otherwise
    /// ignored: the response is already sent.
    pub async fn observe(&self, exchange: &Exchange, trace: &Trace) {
        for step in &self.steps {
            let plugin = step.pool.plugin();
            if plugin.kind != PluginKind::Logging {
                continue;
            }
            let started = Instant::now();
            let span = trace.step(plugin, "observe");
            let called = step.pool.call(&exchange.request_id, &span, Call::Observe(exchange)).await;
            plugin.record_call(CallPhase::Observe, called.is_ok().then_some("observed"), started.elapsed());
            match called {
                Ok((_, settle)) => {
                    settle.settle(true);
                    Trace::end_step(&span, "observed");
                }
                Err(failure) => {
                    telemetry::end(
                        &span,
                        SpanOutcome::Error,
                        failure.kind.label(),
                        vec![KeyValue::new(DECISION, "failed")],
                    );
                    plugin.count_failure(&failure);
                    tracing::warn!(
                    plugin = %plugin.id, kind = failure.kind.label(), request_id = %exchange.request_id,
                    detail = %failure.detail, "logging plugin failed"
                    );
                }
            }
        }
    }
}

/// Applies the failure policy: fail-closed turns the failure into the request's error,
/// fail-open records it and lets the chain go on. Every request-path failure is counted here.
fn fail(step: &Step, failure: PluginFailure, request_id: &str, span: &Context) -> Result<&'static str, GatewayError> {
    step.pool.plugin().count_failure(&failure);
    telemetry::end(span, SpanOutcome::Error, failure.kind.label(), vec![KeyValue::new(DECISION, "failed")]);
    tracing::warn!(
        plugin = %failure.plugin, kind = failure.kind.label(), request_id, detail = %failure.detail,
        policy = ?step.policy, "plugin call failed"
    );
    match step.policy {
        FailurePolicy::FailClosed => Err(GatewayError::PluginFailed(failure)),
        FailurePolicy::FailOpen => Ok("failed"),
    }
}

/// Checks and converts a plugin's local response.
///
/// Errors: a status outside 200..=599, a refused header, or a body over
/// [`MAX_LOCAL_RESPONSE_BYTES`].
pub fn local_response(local: LocalResponse) -> Result<Response<Body>, String> {
    if !(200..=599).contains(&local.status) {
        return Err(format!("status {} is outside 200..=599", local.status));
    }
    let status = StatusCode::from_u16(local.status).map_err(|e| e.to_string())?;
    if local.body.len() > MAX_LOCAL_RESPONSE_BYTES {
        return Err(format!("body of {} bytes exceeds {MAX_LOCAL_RESPONSE_BYTES}", local.body.len()));
    }
    let mut response = Response::new(full(Bytes::from(local.body)));
    *response.status_mut() = status;
    for h in &local.headers {
        let (name, value) = headers::plugin_header(h, None).map_err(|e| e.to_string())?;
        response.headers_mut().append(name, value);
    }
    Ok(response)
}

/// Policy names become structured-field strings: keep them to visible ASCII without `"` or `\`.
fn check_quotas(quotas: &[Quota]) -> Result<(), String> {
    match quotas
        .iter()
        .find(|q| q.policy.is_empty() || !q.policy.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'))
    {
        Some(q) => Err(format!("quota policy name {:?} is not a plain token", q.policy)),
        None => Ok(()),
    }
}

/// Adds `RateLimit-Policy` and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers):
/// `"name";q=LIMIT;w=WINDOW_S` and `"name";r=REMAINING;t=RESET_S`, seconds rounded up.
pub fn add_rate_limit_headers(headers: &mut HeaderMap, quotas: &[Quota]) {
    if quotas.is_empty() {
        return;
    }
    let policy = quotas
        .iter()
        .map(|q| format!("\"{}\";q={};w={}", q.policy, q.limit, q.window_ms.div_ceil(1000)))
        .collect::<Vec<_>>()
        .join(", ");
    let state = quotas
        .iter()
        .map(|q| format!("\"{}\";r={};t={}", q.policy, q.remaining, q.reset_ms.div_ceil(1000)))
        .collect::<Vec<_>>()
        .join(", ");
    if let (Ok(p), Ok(s)) = (HeaderValue::from_str(&policy), HeaderValue::from_str(&state)) {
        headers.insert("ratelimit-policy", p);
        headers.insert("ratelimit", s);
    }
}

/// Span attribute naming a step's decision (`allowed`, `denied`, `failed`, ...).
const DECISION: &str = "portcullis.plugin.decision";

/// A request's trace: the telemetry and the request span's context, parent of one span per
/// plugin step (`INTERNAL`, named `plugin {id}`).
#[derive(Debug, Clone)]
pub struct Trace {
    /// The process's tracer.
    pub telemetry: Arc<Telemetry>,
    /// The request span's context.
    pub cx: Context,
}

// === impl Trace ===

impl Trace {
    /// The span of one call of `plugin` in `phase` (`request`, `response`, `observe`); without
    /// export, the request's context.
    fn step(&self, plugin: &LoadedPlugin, phase: &'static str) -> Context {
        self.telemetry.start(&self.cx, SpanKind::Internal, || {
            let attributes = vec![
                KeyValue::new("portcullis.plugin.id", plugin.id.to_string()),
                KeyValue::new("portcullis.plugin.kind", plugin.kind.to_string()),
                KeyValue::new("portcullis.plugin.phase", phase),
            ];
            (format!("plugin {}", plugin.id), attributes)
        })
    }

    /// Ends a step's span with its decision (a failed step's span was ended by [`fail`]).
    fn end_step(span: &Context, decision: &'static str) {
        if decision != "failed" {
            telemetry::end(span, SpanOutcome::Ok, "", vec![KeyValue::new(DECISION, decision)]);
        }
    }
}

fn micros(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_response_refuses_bad_status_headers_and_size() {
        let ok = LocalResponse { status: 403, headers: vec![], body: b"no".to_vec() };
        assert_eq!(local_response(ok).unwrap().status(), 403);
        let bad_status = LocalResponse { status: 999, headers: vec![], body: vec![] };
        assert!(local_response(bad_status).is_err());
        let informational = LocalResponse { status: 101, headers: vec![], body: vec![] };
        assert!(local_response(informational).is_err());
        let crlf = LocalResponse {
            status: 200,
            headers: vec![Header { name: "x-a".into(), value: "1\r\nset-cookie: x".into() }],
            body: vec![],
        };
        assert!(local_response(crlf).is_err());
        let huge = LocalResponse { status: 200, headers: vec![], body: vec![0; MAX_LOCAL_RESPONSE_BYTES + 1] };
        assert!(local_response(huge).is_err());
    }

    #[test]
    fn rate_limit_headers_follow_the_ietf_draft() {
        let mut h = HeaderMap::new();
        let q = Quota { policy: "per-second".into(), limit: 10, window_ms: 1000, remaining: 3, reset_ms: 1 };
        add_rate_limit_headers(&mut h, &[q]);
        assert_eq!(h["ratelimit-policy"], "\"per-second\";q=10;w=1");
        assert_eq!(h["ratelimit"], "\"per-second\";r=3;t=1");
    }
}
