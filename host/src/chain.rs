//! The filter chain: a route's ordered plugin steps, and what each kind's answer does to the
//! exchange.
//!
//! Request phase, in chain order: `auth` may set the identity or deny; `rate-limit` may limit
//! (429 with `Retry-After`); `validation` may refuse (RFC 9457 400/422); `filter` may edit
//! headers or answer itself. Response phase, in reverse order: `filter.on-response`. After the
//! response body is sent: `logging` steps observe the finished exchange. A failing step follows
//! its failure policy: fail-closed answers 500, fail-open skips the step. Everything a plugin
//! returns is checked before use.
//!
//! A step in `shadow` mode runs in the request phase like the others, on a copy of the
//! request and of what the chain knows, and its decision is recorded (metrics with
//! `mode="shadow"`, the logging steps' exchange as `shadow:DECISION`, its span) and then
//! dropped: its edits, identity and local response are discarded and its failures never
//! affect the request. Paired with the enforced step of its kind (the next one in the chain,
//! else the previous), a request on which one passed and the other refused counts as a
//! disagreement of the route. Put a shadow step before the step it shadows, so both run even
//! when the enforced one refuses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use opentelemetry::trace::SpanKind;
use opentelemetry::{Context, KeyValue};

use crate::body::{Body, LazyBody, full};
use crate::config::{FailurePolicy, PluginKind, StepMode};
use crate::error::{GatewayError, problem};
use crate::plugin::audit::Finished;
use crate::plugin::bindings::exports::portcullis::plugin::{
    auth::AuthOutcome,
    filter::FilterAction,
    logging::{Exchange, Phase, StepDecision},
    rate_limit::{Quota, RateLimitOutcome},
    validation::ValidationOutcome,
};
use crate::plugin::bindings::portcullis::plugin::types::{Header, HeaderEdits, Identity, LocalResponse, ResponseHead};
use crate::plugin::{
    Call, CallPhase, FailureKind, Hooks, LoadedPlugin, PluginFailure, PluginRequest, Replied, Reply, Settle, StepPool,
};
use crate::proxy::headers::{self, IdentityHeaders};
use crate::telemetry::{self, SpanOutcome, Telemetry};

/// Largest local response body a plugin may return, in bytes.
pub const MAX_LOCAL_RESPONSE_BYTES: usize = 1024 * 1024;

/// What the chain needs of one step: the seam between the filter chain and the plugin
/// runtime. [`WasmStep`] calls a plugin through its [`StepPool`]; the chain's unit tests use
/// fakes, so ordering, short-circuits, failure policies and edits are tested without Wasm.
pub trait Step: Send + Sync {
    /// The step's plugin id, for decisions, metrics and logs.
    fn id(&self) -> &Arc<str>;
    /// Its kind: which call the chain makes and how the reply applies.
    fn kind(&self) -> PluginKind;
    /// The hooks it implements; the chain calls no other.
    fn hooks(&self) -> Hooks;
    /// For a validation step, the request body bytes it wants buffered.
    fn body_limit(&self) -> Option<u64>;
    /// For a logging step, the header names it records; none for all.
    fn record_headers(&self) -> Option<&[http::HeaderName]>;
    /// Makes `call`, which the chain timed from `started` (its clock reading just before; the
    /// plugin's running-time budget starts there when the call waits for nothing first). A
    /// reply comes with the breaker's [`Settle`], which the chain completes once it has checked
    /// the reply.
    ///
    /// Errors: the [`PluginFailure`] of a call that did not return a reply.
    fn call<'s>(
        &'s self,
        request_id: &str,
        span: &Context,
        call: Call<'_>,
        started: Instant,
    ) -> impl Future<Output = Result<(Replied, Settle<'s>), PluginFailure>> + Send;
    /// Records one call's duration and decision (none for a failure) in the metrics.
    fn record_call(&self, phase: CallPhase, decision: Option<&'static str>, duration: Duration);
    /// Records one call as a shadow step, `failed` included.
    fn record_shadow(&self, decision: &'static str, duration: Duration);
    /// Counts a failure, of the call or of its reply.
    fn count_failure(&self, failure: &PluginFailure);
    /// Whether this (logging) step's plugin declared `audit.append-each-exchange`: the chain
    /// appends its record with [`Step::append_finished`] and never calls its `observe`.
    fn appends_each_exchange(&self) -> bool {
        false
    }
    /// For a step that [`Step::appends_each_exchange`], appends the standard audit record of
    /// `finished` without a call (written at once when `durable`) and returns the reply;
    /// `None` for any other step.
    fn append_finished(&self, _request_id: &str, _finished: &Finished<'_>, _durable: bool) -> Option<Replied> {
        None
    }
}

/// A step served by a Wasm plugin: its configured instance pool.
#[derive(Debug, Clone)]
pub struct WasmStep(pub Arc<StepPool>);

impl WasmStep {
    /// The instance pool.
    pub fn pool(&self) -> &Arc<StepPool> {
        &self.0
    }

    fn plugin(&self) -> &LoadedPlugin {
        self.0.plugin()
    }
}

impl Step for WasmStep {
    fn id(&self) -> &Arc<str> {
        &self.plugin().id
    }

    fn kind(&self) -> PluginKind {
        self.plugin().kind
    }

    fn hooks(&self) -> Hooks {
        self.0.hooks()
    }

    fn body_limit(&self) -> Option<u64> {
        self.0.body_limit()
    }

    fn record_headers(&self) -> Option<&[http::HeaderName]> {
        self.0.record_headers()
    }

    fn call<'s>(
        &'s self,
        request_id: &str,
        span: &Context,
        call: Call<'_>,
        started: Instant,
    ) -> impl Future<Output = Result<(Replied, Settle<'s>), PluginFailure>> + Send {
        self.0.call(request_id, span, call, started)
    }

    fn record_call(&self, phase: CallPhase, decision: Option<&'static str>, duration: Duration) {
        self.plugin().record_call(phase, decision, duration);
    }

    fn record_shadow(&self, decision: &'static str, duration: Duration) {
        self.plugin().record_shadow(decision, duration);
    }

    fn count_failure(&self, failure: &PluginFailure) {
        self.plugin().count_failure(failure);
    }

    fn appends_each_exchange(&self) -> bool {
        self.0.appends_each_exchange()
    }

    fn append_finished(&self, request_id: &str, finished: &Finished<'_>, durable: bool) -> Option<Replied> {
        self.0.append_finished(request_id, finished, durable)
    }
}

/// One link of a chain: a step, its failure policy, whether it is enforced, and the canary
/// that serves a share of its requests.
#[derive(Debug, Clone)]
pub struct ChainStep<S = WasmStep> {
    /// The step.
    pub step: S,
    /// What its failure does (an enforced step's).
    pub policy: FailurePolicy,
    /// Enforced, or shadow (decisions recorded, not applied).
    pub mode: StepMode,
    /// Another plugin (or version) serving a share of this step's requests.
    pub canary: Option<Canary<S>>,
}

/// A share of a step's requests served by another step of its kind. The side is picked by a
/// stable hash of a key, so one client stays on one side, and the canary's plugin id salts it,
/// so two canaries split clients independently.
#[derive(Debug, Clone)]
pub struct Canary<S = WasmStep> {
    /// The canary.
    pub step: S,
    /// Requests out of 10,000 it serves.
    pub per_10k: u32,
    /// What picks the side.
    pub key: CanaryKey,
}

/// What picks a request's side of a canary split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CanaryKey {
    /// The client's IP address.
    ClientIp,
    /// The identity's subject; the client IP for anonymous requests.
    Subject,
    /// The first value of this request header; the client IP without one.
    Header(http::HeaderName),
}

impl CanaryKey {
    /// Parses `client-ip`, `subject` or `header:NAME` (validation checked it); none otherwise.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "client-ip" => Some(CanaryKey::ClientIp),
            "subject" => Some(CanaryKey::Subject),
            _ => text
                .strip_prefix("header:")
                .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
                .map(CanaryKey::Header),
        }
    }

    /// As configured: `client-ip`, `subject` or `header:NAME`.
    pub fn label(&self) -> String {
        match self {
            CanaryKey::ClientIp => "client-ip".into(),
            CanaryKey::Subject => "subject".into(),
            CanaryKey::Header(name) => format!("header:{name}"),
        }
    }
}

impl<S: Step> ChainStep<S> {
    /// The step serving this request: the canary for its share of keys, else the step's own.
    pub fn serving(&self, request: &PluginRequest, identity: Option<&Identity>) -> &S {
        match &self.canary {
            Some(canary) if canary.takes(request, identity) => &canary.step,
            _ => &self.step,
        }
    }
}

impl<S: Step> Canary<S> {
    /// Whether this request is the canary's: the first 8 bytes of SHA-256 over the canary's
    /// plugin id and the key's value, modulo 10,000, fall below its share.
    fn takes(&self, request: &PluginRequest, identity: Option<&Identity>) -> bool {
        use sha2::Digest as _;
        let value = match &self.key {
            CanaryKey::Subject => identity.map(|i| i.subject.as_bytes()),
            CanaryKey::Header(name) => request.headers.get(name).map(HeaderValue::as_bytes),
            CanaryKey::ClientIp => None,
        }
        .unwrap_or(request.client_ip.as_bytes());
        let digest = sha2::Sha256::new()
            .chain_update(self.step.id().as_bytes())
            .chain_update([0])
            .chain_update(value)
            .finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first) % 10_000 < u64::from(self.per_10k)
    }
}

/// A route's ordered steps.
#[derive(Debug)]
pub struct Chain<S = WasmStep> {
    steps: Vec<ChainStep<S>>,
    body_limit: Option<u64>,
    /// Whether a fail-open logging step observes the finished exchange.
    has_logging: bool,
    /// Whether one of them declared `audit.append-each-exchange` ([`Chain::append_finished`]).
    appends_finished: bool,
    /// Whether one of them is called ([`Chain::observe`]).
    calls_observe: bool,
    /// Whether a fail-closed logging step records the exchange before its response is sent.
    has_records: bool,
    /// Whether some step has a response hook (it reads the request then too).
    has_response_hooks: bool,
    /// The header names the logging steps record (their union); none for all.
    logged_headers: Option<Vec<http::HeaderName>>,
    /// Each shadow step's index and its enforced step's (the next of its kind, else the
    /// previous), if there is one.
    shadows: Vec<(usize, Option<usize>)>,
}

/// What the chain learnt about one exchange so far.
#[derive(Debug, Default)]
pub struct ChainState {
    /// Identity from the auth step, shared with the calls it is lent to (contract 0.3.0).
    pub identity: Option<Arc<Identity>>,
    /// Quotas reported by rate-limit steps, sent as RateLimit fields.
    pub quotas: Vec<Quota>,
    /// Each step's decision, for the logging plugins (made WIT records only for them).
    pub decisions: Vec<Decision>,
    /// Query parameters an auth step asked to remove before forwarding (its credential).
    pub remove_query_params: Vec<String>,
    /// Headers to write from secrets into the request sent upstream, after the chain: one per
    /// field name, the last step's that asked.
    pub secret_headers: Vec<crate::secrets::SecretHeader>,
    /// Shadow steps that disagreed with their enforced step on this request.
    pub disagreements: Vec<Arc<str>>,
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
    /// Made by a shadow step: recorded, not applied.
    pub shadow: bool,
}

impl Decision {
    /// `plugin`'s `decision` in `phase`, for a call that took `elapsed` (the reading its
    /// metrics got: one clock reading per step, not two).
    fn of(plugin: &Arc<str>, phase: Phase, decision: &'static str, elapsed: Duration, shadow: bool) -> Self {
        let duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        Decision { plugin: plugin.clone(), phase, decision, duration_us, shadow }
    }

    /// The WIT record, with [`Decision::label`].
    pub fn to_wit(&self) -> StepDecision {
        StepDecision {
            plugin: self.plugin.to_string(),
            phase: self.phase,
            decision: self.label().into_owned(),
            duration_us: self.duration_us,
        }
    }

    /// The decision as logging steps see it: a shadow step's reads `shadow:DECISION` (e.g.
    /// `shadow:denied`), formatted only for one.
    pub fn label(&self) -> std::borrow::Cow<'static, str> {
        if self.shadow { format!("shadow:{}", self.decision).into() } else { self.decision.into() }
    }

    /// The decision as the standard audit record has it, `label` being [`Decision::label`]'s.
    pub fn for_record<'a>(&'a self, label: &'a str) -> portcullis_audit_record::Decision<'a> {
        let phase = match self.phase {
            Phase::Request => "request",
            Phase::Response => "response",
        };
        portcullis_audit_record::Decision {
            plugin: &self.plugin,
            phase,
            decision: label,
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

impl<S> Default for Chain<S> {
    fn default() -> Self {
        Chain {
            steps: Vec::new(),
            body_limit: None,
            has_logging: false,
            appends_finished: false,
            calls_observe: false,
            has_records: false,
            has_response_hooks: false,
            logged_headers: None,
            shadows: Vec::new(),
        }
    }
}

impl<S: Step> Chain<S> {
    /// A chain of `steps`, in order.
    pub fn new(steps: Vec<ChainStep<S>>) -> Self {
        let body_limit = steps
            .iter()
            .flat_map(|s| std::iter::once(&s.step).chain(s.canary.as_ref().map(|c| &c.step)))
            .filter_map(Step::body_limit)
            .max();
        let logging: Vec<_> = steps.iter().filter(|s| s.step.kind() == PluginKind::Logging).collect();
        let has_records = logging.iter().any(|s| s.policy == FailurePolicy::FailClosed);
        let observing: Vec<_> = logging.iter().filter(|s| s.policy == FailurePolicy::FailOpen).collect();
        let has_logging = !observing.is_empty();
        let appends_finished = observing.iter().any(|s| s.step.appends_each_exchange());
        let calls_observe = observing.iter().any(|s| !s.step.appends_each_exchange());
        let logged_headers = logging.iter().try_fold(Vec::new(), |mut names, link| {
            for name in link.step.record_headers()? {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
            Some(names)
        });
        // Shadow steps run in the request phase only.
        let has_response_hooks = steps.iter().any(|s| {
            let canary = s.canary.as_ref().is_some_and(|c| c.step.hooks().response);
            (s.step.hooks().response || canary) && s.mode == StepMode::Enforce
        });
        let enforced_like =
            |i: usize, j: usize| steps[j].mode == StepMode::Enforce && steps[j].step.kind() == steps[i].step.kind();
        let shadows = (0..steps.len())
            .filter(|&i| steps[i].mode == StepMode::Shadow)
            .map(|i| {
                let paired = (i + 1..steps.len())
                    .find(|&j| enforced_like(i, j))
                    .or_else(|| (0..i).rev().find(|&j| enforced_like(i, j)));
                (i, paired)
            })
            .collect();
        Chain {
            steps,
            body_limit,
            has_logging,
            appends_finished,
            calls_observe,
            has_records,
            has_response_hooks,
            logged_headers,
            shadows,
        }
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[ChainStep<S>] {
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

    /// Whether any fail-open logging step observes the finished exchange.
    pub fn has_logging(&self) -> bool {
        self.has_logging
    }

    /// Whether any fail-open logging step declared `audit.append-each-exchange`: the finished
    /// exchange is handed to [`Chain::append_finished`], borrowed.
    pub fn appends_finished(&self) -> bool {
        self.appends_finished
    }

    /// Whether any fail-open logging step is called with the finished exchange, lent as a WIT
    /// record ([`Chain::observe`]).
    pub fn calls_observe(&self) -> bool {
        self.calls_observe
    }

    /// Whether any fail-closed logging step records the exchange before its response is sent
    /// ([`Chain::record`]).
    pub fn has_records(&self) -> bool {
        self.has_records
    }

    /// The fields of `headers` the logging steps record, as WIT records: those they named
    /// (`logging.record-headers`), or all when one did not name any. Empty without logging.
    pub fn logged_headers(&self, headers: &HeaderMap) -> Vec<Header> {
        if !self.has_logging && !self.has_records {
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
        // Whether each step passed (`Some(true)`) or refused; only kept with shadow steps.
        let mut passed: Vec<Option<bool>> =
            if self.shadows.is_empty() { Vec::new() } else { vec![None; self.steps.len()] };
        for (index, link) in self.steps.iter().enumerate() {
            let step = link.serving(request, state.identity.as_deref());
            if !step.hooks().request || step.kind() == PluginKind::Logging {
                continue;
            }
            if link.mode == StepMode::Shadow {
                passed[index] = self.shadow(link, request, body, ids, state, trace).await?;
                continue;
            }
            let identity = state.identity.as_ref();
            let bytes = match (step.kind(), step.body_limit()) {
                (PluginKind::Validation, Some(limit)) => {
                    let bytes = body.bytes().await?.clone();
                    if bytes.len() as u64 > limit {
                        return Err(GatewayError::BodyTooLarge { limit });
                    }
                    Some(bytes)
                }
                _ => None,
            };
            let call = call_for(step.kind(), request, identity, bytes.as_deref());
            let started = Instant::now();
            let span = trace.step(step.id(), step.kind(), "request");
            let outcome = match step.call(&request.request_id, &span, call, started).await {
                Ok((reply, settle)) => {
                    let applied = apply(step.id(), reply, request, ids, state);
                    settle.settle(applied.is_ok());
                    applied
                }
                Err(failure) => Err(failure),
            };
            let elapsed = started.elapsed();
            let (decision, verdict) = match outcome {
                Ok(done) => done,
                Err(failure) => match fail(link, failure, &request.request_id, &span) {
                    Ok(decision) => (decision, Verdict::Continue),
                    Err(e) => {
                        step.record_call(CallPhase::Request, None, elapsed);
                        return Err(e);
                    }
                },
            };
            Trace::end_step(&span, decision);
            step.record_call(CallPhase::Request, Some(decision), elapsed);
            state.decisions.push(Decision::of(step.id(), Phase::Request, decision, elapsed, false));
            if let Some(p) = passed.get_mut(index) {
                *p = (decision != "failed").then_some(matches!(verdict, Verdict::Continue));
            }
            if let Verdict::Respond(response) = verdict {
                self.compare_shadows(&passed, state);
                return Ok(Verdict::Respond(response));
            }
        }
        self.compare_shadows(&passed, state);
        Ok(Verdict::Continue)
    }

    /// Runs shadow step `link` on copies of the request and of what the chain knows, records
    /// its decision and drops the rest. Whether it passed; none when it failed.
    ///
    /// Errors: only the body's own (it broke off or timed out), which the request meets anyway.
    async fn shadow(
        &self,
        link: &ChainStep<S>,
        request: &Arc<PluginRequest>,
        body: &mut LazyBody,
        ids: &IdentityHeaders,
        state: &mut ChainState,
        trace: &Trace,
    ) -> Result<Option<bool>, GatewayError> {
        let step = &link.step;
        let started = Instant::now();
        let bytes = match (step.kind(), step.body_limit()) {
            (PluginKind::Validation, Some(limit)) => {
                Some(body.bytes().await?.clone()).filter(|b| b.len() as u64 <= limit)
            }
            _ => None,
        };
        let mut lent = request.clone();
        let mut scratch = ChainState { identity: state.identity.clone(), ..ChainState::default() };
        let span = trace.step(step.id(), step.kind(), "shadow");
        let outcome = if step.kind() == PluginKind::Validation && bytes.is_none() {
            Err(PluginFailure::new(step.id(), FailureKind::InvalidOutput("the body is over its body-limit".into())))
        } else {
            let call = call_for(step.kind(), &lent, scratch.identity.as_ref(), bytes.as_deref());
            // Timed from before its body was read; the budget starts at the call.
            match step.call(&request.request_id, &span, call, Instant::now()).await {
                Ok((replied, settle)) => {
                    let applied = apply(step.id(), replied, &mut lent, ids, &mut scratch);
                    settle.settle(applied.is_ok());
                    applied
                }
                Err(failure) => Err(failure),
            }
        };
        let (decision, passed) = match outcome {
            Ok((decision, verdict)) => {
                let mode = KeyValue::new("portcullis.step.mode", "shadow");
                telemetry::end(&span, SpanOutcome::Ok, "", [KeyValue::new(DECISION, decision), mode]);
                (decision, Some(matches!(verdict, Verdict::Continue)))
            }
            Err(failure) => {
                step.count_failure(&failure);
                telemetry::end(&span, SpanOutcome::Error, failure.kind.label(), [KeyValue::new(DECISION, "failed")]);
                tracing::debug!(
                    plugin = %failure.plugin, kind = failure.kind.label(), request_id = %request.request_id,
                    detail = %failure.detail, "shadow step failed; the request goes on"
                );
                ("failed", None)
            }
        };
        let elapsed = started.elapsed();
        step.record_shadow(decision, elapsed);
        state.decisions.push(Decision::of(step.id(), Phase::Request, decision, elapsed, true));
        Ok(passed)
    }

    /// Notes each shadow step whose outcome differs from its enforced step's, when both
    /// decided.
    fn compare_shadows(&self, passed: &[Option<bool>], state: &mut ChainState) {
        for &(shadow, enforced) in &self.shadows {
            let both =
                passed.get(shadow).copied().flatten().zip(enforced.and_then(|e| passed.get(e).copied().flatten()));
            if both.is_some_and(|(a, b)| a != b) {
                state.disagreements.push(self.steps[shadow].step.id().clone());
            }
        }
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
        for link in self.steps.iter().rev() {
            let step = link.serving(request, state.identity.as_deref());
            if step.kind() != PluginKind::Filter || !step.hooks().response || link.mode == StepMode::Shadow {
                continue;
            }
            let seen =
                ResponseHead { status: response.status().as_u16(), headers: headers::to_wit(response.headers()) };
            let started = Instant::now();
            let call = Call::OnResponse(request, state.identity.as_ref(), &seen);
            let invalid = |e: String| PluginFailure::new(step.id(), FailureKind::InvalidOutput(e));
            let span = trace.step(step.id(), step.kind(), "response");
            let outcome = match step.call(&request.request_id, &span, call, started).await {
                Ok((replied, settle)) => {
                    let applied = match replied.reply {
                        _ if !replied.secret_headers.is_empty() => {
                            Err(invalid("`secrets.inject` applies to the request phase only".into()))
                        }
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
                Err(failure) => match fail(link, failure, &request.request_id, &span) {
                    Ok(decision) => decision,
                    Err(e) => {
                        step.record_call(CallPhase::Response, None, elapsed);
                        return Err(e);
                    }
                },
            };
            Trace::end_step(&span, decision);
            step.record_call(CallPhase::Response, Some(decision), elapsed);
            state.decisions.push(Decision::of(step.id(), Phase::Response, decision, elapsed, false));
        }
        Ok(())
    }

    /// Hands the exchange, before its response is sent, to every fail-closed logging step (a
    /// regulated route's audit step: `failure_policy = "fail-closed"` on a logging step).
    /// Their `audit.append`s return only once the record is written, and synced when the
    /// sink's `audit_fsync` is `always` ([`Call::Record`]).
    ///
    /// Errors: [`GatewayError::AuditUnavailable`] for the first such step that failed or one
    /// of whose appends failed: the response must not be sent unrecorded. A sink that cannot
    /// write is not the plugin crashing: its breaker is left closed.
    pub async fn record(&self, exchange: &Arc<Exchange>, trace: &Trace) -> Result<(), GatewayError> {
        let recording =
            |l: &&ChainStep<S>| l.step.kind() == PluginKind::Logging && l.policy == FailurePolicy::FailClosed;
        for link in self.steps.iter().filter(recording) {
            let step = &link.step;
            let started = Instant::now();
            let span = trace.step(step.id(), step.kind(), "record");
            let failure = match step.call(&exchange.request_id, &span, Call::Record(exchange), started).await {
                Ok((replied, settle)) => {
                    settle.settle(true);
                    match replied.audit_failure {
                        None => {
                            step.record_call(CallPhase::Observe, Some("observed"), started.elapsed());
                            Trace::end_step(&span, "observed");
                            continue;
                        }
                        Some(why) => PluginFailure::new(
                            step.id(),
                            FailureKind::Unavailable(format!("the audit record was not written: {why}")),
                        ),
                    }
                }
                Err(failure) => failure,
            };
            step.record_call(CallPhase::Observe, None, started.elapsed());
            telemetry::end(&span, SpanOutcome::Error, failure.kind.label(), [KeyValue::new(DECISION, "failed")]);
            step.count_failure(&failure);
            tracing::error!(
                plugin = %step.id(), kind = failure.kind.label(), request_id = %exchange.request_id,
                detail = %failure.detail, "fail-closed logging step failed; the response is refused"
            );
            return Err(GatewayError::AuditUnavailable { plugin: step.id().to_string(), detail: failure.detail });
        }
        Ok(())
    }

    /// Appends the standard audit record of `finished` for every fail-open logging step that
    /// declared `audit.append-each-exchange`, at once and without a call
    /// ([`Step::append_finished`]): no WIT exchange is built and no task spawned for them. Each
    /// keeps its span, call duration and `observed` decision; a failed append is logged and
    /// otherwise ignored, the response being sent.
    pub fn append_finished(&self, request_id: &str, finished: &Finished<'_>, trace: &Trace) {
        for link in &self.steps {
            let step = &link.step;
            if step.kind() != PluginKind::Logging
                || link.policy == FailurePolicy::FailClosed
                || !step.appends_each_exchange()
            {
                continue;
            }
            let started = Instant::now();
            let span = trace.step(step.id(), step.kind(), "observe");
            // Fail-open: a failed append was logged by the step and changes nothing here.
            let _ = step.append_finished(request_id, finished, false);
            step.record_call(CallPhase::Observe, Some("observed"), started.elapsed());
            Trace::end_step(&span, "observed");
        }
    }

    /// Hands the finished exchange to every fail-open logging step the host does not append
    /// for ([`Chain::append_finished`]). Failures are logged and otherwise ignored: the
    /// response is already sent.
    pub async fn observe(&self, exchange: &Arc<Exchange>, trace: &Trace) {
        for link in &self.steps {
            let step = &link.step;
            if step.kind() != PluginKind::Logging
                || link.policy == FailurePolicy::FailClosed
                || step.appends_each_exchange()
            {
                continue;
            }
            let started = Instant::now();
            let span = trace.step(step.id(), step.kind(), "observe");
            let called = step.call(&exchange.request_id, &span, Call::Observe(exchange), started).await;
            step.record_call(CallPhase::Observe, called.is_ok().then_some("observed"), started.elapsed());
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
                        [KeyValue::new(DECISION, "failed")],
                    );
                    step.count_failure(&failure);
                    tracing::warn!(
                    plugin = %step.id(), kind = failure.kind.label(), request_id = %exchange.request_id,
                    detail = %failure.detail, "logging plugin failed"
                    );
                }
            }
        }
    }
}

/// What one request-phase reply of step `id` does.
fn apply(
    id: &str,
    replied: Replied,
    request: &mut Arc<PluginRequest>,
    ids: &IdentityHeaders,
    state: &mut ChainState,
) -> Result<(&'static str, Verdict), PluginFailure> {
    let invalid = |e: String| PluginFailure::new(id, FailureKind::InvalidOutput(e));
    let Replied { reply, secret_headers, audit_failure: _ } = replied;
    if !secret_headers.is_empty() {
        if !matches!(reply, Reply::Auth(_) | Reply::Filter(_)) {
            return Err(invalid("`secrets.inject` is for `auth` and `filter` steps only".into()));
        }
        if let Some(h) = secret_headers.iter().find(|h| headers::check_not_reserved(&h.name, Some(ids)).is_err()) {
            return Err(invalid(format!("`secrets.inject`: `{}` is a field the host writes", h.name)));
        }
    }
    let decided = apply_reply(reply, request, ids, state).map_err(invalid)?;
    // After the step's own edits: the client's fields of these names leave the request now,
    // so no later step sees them; the values are written when the request goes upstream.
    if !secret_headers.is_empty() && matches!(decided.1, Verdict::Continue) {
        let lent = Arc::make_mut(request);
        for header in secret_headers {
            lent.headers.remove(&header.name);
            state.secret_headers.retain(|h| h.name != header.name);
            state.secret_headers.push(header);
        }
    }
    Ok(decided)
}

/// What an auth step's `outcome` decides, applied as [`apply_reply`] does. The outcome comes
/// boxed in [`Reply::Auth`]: it carries the identity and is three times the size of any other
/// reply, and a reply is moved through several frames on every step.
///
/// Errors: as [`apply_reply`].
fn apply_auth(
    outcome: AuthOutcome,
    request: &mut Arc<PluginRequest>,
    ids: &IdentityHeaders,
    state: &mut ChainState,
) -> Result<(&'static str, Verdict), String> {
    Ok(match outcome {
        AuthOutcome::Authenticated(done) => {
            headers::check_identity(&done.identity)?;
            if !done.remove_headers.is_empty() {
                let edits = HeaderEdits { remove: done.remove_headers, set: Vec::new(), append: Vec::new() };
                let headers = &mut Arc::make_mut(request).headers;
                headers::apply_edits(headers, &edits, Some(ids)).map_err(|e| e.to_string())?;
            }
            // The credential leaves the request at once: later steps are lent the query
            // without it, as the upstream gets it.
            if !done.remove_query_params.is_empty() {
                let lent = Arc::make_mut(request);
                lent.query = lent.query.as_deref().and_then(|q| headers::strip_query(q, &done.remove_query_params));
            }
            state.remove_query_params.extend(done.remove_query_params);
            state.identity = Some(Arc::new(done.identity));
            ("authenticated", Verdict::Continue)
        }
        AuthOutcome::Anonymous => ("anonymous", Verdict::Continue),
        AuthOutcome::Denied(local) => {
            let mut response = local_response(local)?;
            if response.status() == StatusCode::UNAUTHORIZED
                && !response.headers().contains_key(header::WWW_AUTHENTICATE)
            {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"portcullis\""));
            }
            ("denied", Verdict::Respond(response))
        }
    })
}

/// What `reply` decides, applied to the request and the chain's state.
///
/// Errors: why the reply cannot be used (an invalid identity, header or quota).
fn apply_reply(
    reply: Reply,
    request: &mut Arc<PluginRequest>,
    ids: &IdentityHeaders,
    state: &mut ChainState,
) -> Result<(&'static str, Verdict), String> {
    Ok(match reply {
        Reply::Auth(outcome) => apply_auth(*outcome, request, ids, state)?,
        Reply::RateLimit(RateLimitOutcome::Allowed(quotas)) => {
            check_quotas(&quotas)?;
            state.quotas.extend(quotas);
            ("allowed", Verdict::Continue)
        }
        Reply::RateLimit(RateLimitOutcome::Limited(limited)) => {
            check_quotas(&limited.quotas)?;
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
            let response =
                problem(status, slug, detail, &request.request_id, Some(("errors", serde_json::Value::Array(errors))));
            ("invalid", Verdict::Respond(response))
        }
        Reply::Filter(FilterAction::Continue(edits)) => {
            if !(edits.remove.is_empty() && edits.set.is_empty() && edits.append.is_empty()) {
                let headers = &mut Arc::make_mut(request).headers;
                headers::apply_edits(headers, &edits, Some(ids)).map_err(|e| e.to_string())?;
            }
            ("continue", Verdict::Continue)
        }
        Reply::Filter(FilterAction::Respond(local)) => ("respond", Verdict::Respond(local_response(local)?)),
        Reply::Observed => ("observed", Verdict::Continue),
    })
}

/// The request-phase call a step of `kind` gets.
fn call_for<'a>(
    kind: PluginKind,
    request: &'a Arc<PluginRequest>,
    identity: Option<&'a Arc<Identity>>,
    body: Option<&'a [u8]>,
) -> Call<'a> {
    match kind {
        PluginKind::Auth => Call::Authenticate(request, identity),
        PluginKind::RateLimit => Call::Check(request, identity),
        PluginKind::Validation => Call::Validate(request, identity, body),
        // Logging steps are skipped before this.
        PluginKind::Filter | PluginKind::Logging => Call::OnRequest(request, identity),
    }
}

/// Applies the failure policy: fail-closed turns the failure into the request's error,
/// fail-open records it and lets the chain go on. Every request-path failure is counted here.
fn fail<S: Step>(
    link: &ChainStep<S>,
    failure: PluginFailure,
    request_id: &str,
    span: &Context,
) -> Result<&'static str, GatewayError> {
    link.step.count_failure(&failure);
    telemetry::end(span, SpanOutcome::Error, failure.kind.label(), [KeyValue::new(DECISION, "failed")]);
    tracing::warn!(
        plugin = %failure.plugin, kind = failure.kind.label(), request_id, detail = %failure.detail,
        policy = ?link.policy, "plugin call failed"
    );
    match link.policy {
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
/// `"name";q=LIMIT;w=WINDOW_S` and `"name";r=REMAINING;t=RESET_S`, seconds rounded up, one
/// list member per quota.
///
/// Both values are written into one buffer that the two fields share without a copy (one
/// allocation for the text, one for the shared `Bytes`); policy names were checked to be plain
/// tokens when the step returned them ([`check_quotas`]).
pub fn add_rate_limit_headers(headers: &mut HeaderMap, quotas: &[Quota]) {
    if quotas.is_empty() {
        return;
    }
    let mut text = String::with_capacity(quotas.len() * 96);
    let mut digits = itoa::Buffer::new();
    let mut render = |text: &mut String, params: &dyn Fn(&Quota) -> [(&'static str, u64); 2]| {
        for (i, q) in quotas.iter().enumerate() {
            text.push_str(if i == 0 { "\"" } else { ", \"" });
            text.push_str(&q.policy);
            text.push('"');
            for (key, value) in params(q) {
                text.push_str(key);
                text.push_str(digits.format(value));
            }
        }
    };
    render(&mut text, &|q| [(";q=", q.limit), (";w=", q.window_ms.div_ceil(1000))]);
    let policy_len = text.len();
    render(&mut text, &|q| [(";r=", q.remaining), (";t=", q.reset_ms.div_ceil(1000))]);
    let both = Bytes::from(text);
    let policy = HeaderValue::from_maybe_shared(both.slice(..policy_len));
    let state = HeaderValue::from_maybe_shared(both.slice(policy_len..));
    if let (Ok(p), Ok(s)) = (policy, state) {
        headers.insert(RATELIMIT_POLICY, p);
        headers.insert(RATELIMIT, s);
    }
}

/// The quota policies field of draft-ietf-httpapi-ratelimit-headers.
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The quota state field of draft-ietf-httpapi-ratelimit-headers.
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

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
    fn step(&self, id: &str, kind: PluginKind, phase: &'static str) -> Context {
        self.telemetry.start(&self.cx, SpanKind::Internal, || {
            let attributes = vec![
                KeyValue::new("portcullis.plugin.id", id.to_owned()),
                KeyValue::new("portcullis.plugin.kind", kind.to_string()),
                KeyValue::new("portcullis.plugin.phase", phase),
            ];
            (format!("plugin {id}"), attributes)
        })
    }

    /// Ends a step's span with its decision (a failed step's span was ended by [`fail`]).
    fn end_step(span: &Context, decision: &'static str) {
        if decision != "failed" {
            telemetry::end(span, SpanOutcome::Ok, "", [KeyValue::new(DECISION, decision)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::plugin::bindings::exports::portcullis::plugin::auth::Authenticated;
    use crate::plugin::bindings::exports::portcullis::plugin::rate_limit::Limited;
    use crate::plugin::bindings::exports::portcullis::plugin::validation::{Invalid, Violation};

    /// What a fake step answers, given the call it was made.
    type Behaviour = Box<dyn Fn(&Call<'_>) -> Result<Reply, FailureKind> + Send + Sync>;

    /// A step without Wasm: it answers with `behaviour` and writes what happened to `log`.
    struct Fake {
        id: Arc<str>,
        kind: PluginKind,
        hooks: Hooks,
        body_limit: Option<u64>,
        behaviour: Behaviour,
        log: Arc<Mutex<Vec<String>>>,
        /// What every call asks to have written from secrets.
        secret_headers: Vec<crate::secrets::SecretHeader>,
        /// Declared `audit.append-each-exchange` (a logging step).
        appends: bool,
    }

    impl Step for Fake {
        fn id(&self) -> &Arc<str> {
            &self.id
        }
        fn kind(&self) -> PluginKind {
            self.kind
        }
        fn hooks(&self) -> Hooks {
            self.hooks
        }
        fn body_limit(&self) -> Option<u64> {
            self.body_limit
        }
        fn record_headers(&self) -> Option<&[http::HeaderName]> {
            None
        }
        fn call<'s>(
            &'s self,
            _request_id: &str,
            _span: &Context,
            call: Call<'_>,
            _started: Instant,
        ) -> impl Future<Output = Result<(Replied, Settle<'s>), PluginFailure>> + Send {
            let phase = if matches!(call, Call::OnResponse(..)) { "response" } else { "request" };
            self.log.lock().unwrap().push(format!("{} {phase}", self.id));
            let secret_headers = self.secret_headers.clone();
            let answer = (self.behaviour)(&call)
                .map(|reply| (Replied { reply, secret_headers, audit_failure: None }, Settle::detached()))
                .map_err(|kind| PluginFailure::new(&self.id, kind));
            std::future::ready(answer)
        }
        fn record_call(&self, _phase: CallPhase, decision: Option<&'static str>, _duration: Duration) {
            self.log.lock().unwrap().push(format!("{} recorded {}", self.id, decision.unwrap_or("none")));
        }
        fn record_shadow(&self, decision: &'static str, _duration: Duration) {
            self.log.lock().unwrap().push(format!("{} shadow {decision}", self.id));
        }
        fn count_failure(&self, failure: &PluginFailure) {
            self.log.lock().unwrap().push(format!("{} failure {}", self.id, failure.kind.label()));
        }
        fn appends_each_exchange(&self) -> bool {
            self.appends
        }
        fn append_finished(&self, request_id: &str, finished: &Finished<'_>, durable: bool) -> Option<Replied> {
            let status = finished.exchange.status;
            self.log.lock().unwrap().push(format!("{} appended {request_id} {status} durable={durable}", self.id));
            self.appends.then(|| Replied { reply: Reply::Observed, secret_headers: Vec::new(), audit_failure: None })
        }
    }

    /// Builds fake chains that share one log.
    #[derive(Default)]
    struct Fakes {
        log: Arc<Mutex<Vec<String>>>,
        steps: Vec<ChainStep<Fake>>,
    }

    impl Fakes {
        fn step(
            mut self,
            id: &str,
            kind: PluginKind,
            policy: FailurePolicy,
            behaviour: impl Fn(&Call<'_>) -> Result<Reply, FailureKind> + Send + Sync + 'static,
        ) -> Self {
            let step = Fake {
                id: id.into(),
                kind,
                hooks: Hooks { request: true, response: false },
                body_limit: (kind == PluginKind::Validation).then_some(16),
                behaviour: Box::new(behaviour),
                log: self.log.clone(),
                secret_headers: Vec::new(),
                appends: false,
            };
            self.steps.push(ChainStep { step, policy, mode: StepMode::Enforce, canary: None });
            self
        }

        /// The last step added runs in shadow mode.
        fn shadow(mut self) -> Self {
            if let Some(last) = self.steps.last_mut() {
                last.mode = StepMode::Shadow;
            }
            self
        }

        /// The last step added asks, on every call, for `name` to be written from a secret.
        fn injecting(mut self, name: &'static str, value: &'static str) -> Self {
            if let Some(last) = self.steps.last_mut() {
                let mut value = HeaderValue::from_static(value);
                value.set_sensitive(true);
                let name = http::HeaderName::from_static(name);
                last.step.secret_headers.push(crate::secrets::SecretHeader { name, value, secret: "token".into() });
            }
            self
        }

        /// The last step added declared `audit.append-each-exchange`.
        fn appending(mut self) -> Self {
            if let Some(last) = self.steps.last_mut() {
                last.step.appends = true;
            }
            self
        }

        /// The last step added gets `hooks`.
        fn hooks(mut self, request: bool, response: bool) -> Self {
            if let Some(last) = self.steps.last_mut() {
                last.step.hooks = Hooks { request, response };
            }
            self
        }

        fn build(self) -> (Chain<Fake>, Arc<Mutex<Vec<String>>>) {
            (Chain::new(self.steps), self.log)
        }
    }

    fn request(query: Option<&str>, headers: &[(&'static str, &'static str)]) -> Arc<PluginRequest> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, HeaderValue::from_static(value));
        }
        Arc::new(PluginRequest {
            method: http::Method::GET,
            scheme: "http",
            authority: "example.test".into(),
            path: "/orders".into(),
            query: query.map(str::to_owned),
            headers: map,
            client_ip: "127.0.0.1".into(),
            client_cert: None,
            request_id: "req-1".into(),
            route: "orders".into(),
        })
    }

    fn ids() -> IdentityHeaders {
        IdentityHeaders {
            subject: http::HeaderName::from_static("x-user-id"),
            roles: http::HeaderName::from_static("x-user-roles"),
            scopes: http::HeaderName::from_static("x-user-scopes"),
            issuer: http::HeaderName::from_static("x-user-issuer"),
            strip: Vec::new(),
        }
    }

    fn trace() -> Trace {
        Trace { telemetry: Arc::new(Telemetry::disabled()), cx: Context::new() }
    }

    fn header(name: &str, value: &str) -> Header {
        Header { name: name.into(), value: value.into() }
    }

    fn set(name: &str, value: &str) -> Reply {
        Reply::Filter(FilterAction::Continue(HeaderEdits {
            remove: Vec::new(),
            set: vec![header(name, value)],
            append: Vec::new(),
        }))
    }

    fn pass() -> Reply {
        Reply::Filter(FilterAction::Continue(HeaderEdits { remove: Vec::new(), set: Vec::new(), append: Vec::new() }))
    }

    /// The request a call lends.
    fn lent<'a>(call: &Call<'a>) -> &'a PluginRequest {
        match *call {
            Call::Authenticate(r, _)
            | Call::Check(r, _)
            | Call::Validate(r, _, _)
            | Call::OnRequest(r, _)
            | Call::OnResponse(r, _, _) => r,
            Call::Observe(_) | Call::Record(_) => panic!("observe lends no request"),
        }
    }

    async fn run(
        chain: &Chain<Fake>,
        request: &mut Arc<PluginRequest>,
        body: &[u8],
    ) -> (Result<Verdict, GatewayError>, ChainState) {
        let mut state = ChainState::default();
        let mut body = LazyBody::new(full(Bytes::copy_from_slice(body)), 1024);
        let verdict = chain.on_request(request, &mut body, &ids(), &mut state, &trace()).await;
        (verdict, state)
    }

    fn lines(log: &Mutex<Vec<String>>) -> Vec<String> {
        log.lock().unwrap().clone()
    }

    fn decisions(state: &ChainState) -> Vec<(String, &'static str)> {
        state.decisions.iter().map(|d| (d.plugin.to_string(), d.decision)).collect()
    }

    #[tokio::test]
    async fn steps_run_in_order_and_each_sees_the_edits_before_it() {
        let (chain, log) = Fakes::default()
            .step("first", PluginKind::Filter, FailurePolicy::FailClosed, |_| Ok(set("x-first", "1")))
            .step("second", PluginKind::Filter, FailurePolicy::FailClosed, |call| {
                let seen = lent(call).headers.get("x-first").map_or("absent", |v| v.to_str().unwrap_or("?"));
                Ok(set("x-second-saw", if seen == "1" { "first" } else { "nothing" }))
            })
            .build();
        let mut request = request(None, &[]);
        let (verdict, state) = run(&chain, &mut request, b"").await;
        assert!(matches!(verdict, Ok(Verdict::Continue)), "{verdict:?}");
        assert_eq!(request.headers["x-first"], "1");
        assert_eq!(request.headers["x-second-saw"], "first");
        assert_eq!(decisions(&state), [("first".into(), "continue"), ("second".into(), "continue")]);
        let calls: Vec<_> = lines(&log).into_iter().filter(|l| l.ends_with(" request")).collect();
        assert_eq!(calls, ["first request", "second request"]);
    }

    #[tokio::test]
    async fn a_denial_answers_and_no_later_step_runs() {
        let (chain, log) = Fakes::default()
            .step("auth", PluginKind::Auth, FailurePolicy::FailClosed, |_| {
                Ok(Reply::Auth(Box::new(AuthOutcome::Denied(LocalResponse {
                    status: 401,
                    headers: vec![],
                    body: vec![],
                }))))
            })
            .step("after", PluginKind::Filter, FailurePolicy::FailClosed, |_| Ok(pass()))
            .build();
        let (verdict, state) = run(&chain, &mut request(None, &[]), b"").await;
        let Ok(Verdict::Respond(response)) = verdict else { panic!("expected a local response: {verdict:?}") };
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        // RFC 9110 §11.6.1: a 401 carries a challenge.
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer realm=\"portcullis\"");
        assert_eq!(decisions(&state), [("auth".into(), "denied")]);
        assert!(!lines(&log).iter().any(|l| l.starts_with("after")), "{:?}", lines(&log));
    }

    #[tokio::test]
    async fn a_shadow_step_is_recorded_not_enforced_and_its_disagreements_are_counted() {
        let deny = |_: &Call<'_>| {
            Ok(Reply::Auth(Box::new(AuthOutcome::Denied(LocalResponse { status: 401, headers: vec![], body: vec![] }))))
        };
        let allow = |_: &Call<'_>| {
            let identity = Identity {
                subject: "alice".into(),
                issuer: None,
                roles: vec![],
                scopes: vec![],
                authentication: crate::plugin::bindings::portcullis::plugin::types::Authentication {
                    acr: None,
                    amr: vec![],
                    auth_time: None,
                },
                claims: vec![],
            };
            Ok(Reply::Auth(Box::new(AuthOutcome::Authenticated(Authenticated {
                identity,
                remove_headers: vec!["authorization".into()],
                remove_query_params: vec![],
            }))))
        };
        let (chain, log) = Fakes::default()
            .step("new-auth", PluginKind::Auth, FailurePolicy::FailClosed, deny)
            .shadow()
            .step("auth", PluginKind::Auth, FailurePolicy::FailClosed, allow)
            .step("tagger", PluginKind::Filter, FailurePolicy::FailClosed, |_| Ok(set("x-shadow-tag", "1")))
            .shadow()
            .step("after", PluginKind::Filter, FailurePolicy::FailClosed, |_| Ok(pass()))
            .build();
        let mut request = request(None, &[("authorization", "Bearer t")]);
        let (verdict, state) = run(&chain, &mut request, b"").await;
        assert!(matches!(verdict, Ok(Verdict::Continue)), "the shadow denial is not enforced: {verdict:?}");
        assert_eq!(state.identity.as_ref().map(|i| i.subject.as_str()), Some("alice"));
        assert!(!request.headers.contains_key("x-shadow-tag"), "a shadow step's edits are discarded");
        let shadowed: Vec<_> = state.decisions.iter().map(|d| (d.plugin.to_string(), d.decision, d.shadow)).collect();
        assert_eq!(
            shadowed,
            [
                ("new-auth".into(), "denied", true),
                ("auth".into(), "authenticated", false),
                ("tagger".into(), "continue", true),
                ("after".into(), "continue", false)
            ]
        );
        assert_eq!(state.decisions[0].to_wit().decision, "shadow:denied");
        // new-auth refused where auth passed; tagger and `after` agree.
        assert_eq!(state.disagreements, [Arc::from("new-auth")]);
        assert!(lines(&log).contains(&"new-auth shadow denied".to_owned()), "{:?}", lines(&log));
    }

    #[tokio::test]
    async fn a_failing_shadow_step_never_affects_the_request() {
        let trap = |_: &Call<'_>| Err(FailureKind::Trap("unreachable".into()));
        let (chain, log) = Fakes::default()
            .step("broken", PluginKind::Filter, FailurePolicy::FailClosed, trap)
            .shadow()
            .step("after", PluginKind::Filter, FailurePolicy::FailClosed, |_| Ok(pass()))
            .build();
        let (verdict, state) = run(&chain, &mut request(None, &[]), b"").await;
        assert!(matches!(verdict, Ok(Verdict::Continue)), "{verdict:?}");
        assert_eq!(decisions(&state), [("broken".into(), "failed"), ("after".into(), "continue")]);
        assert!(state.disagreements.is_empty(), "a failure is not a disagreement");
        assert!(lines(&log).contains(&"broken failure trap".to_owned()), "counted: {:?}", lines(&log));
    }

    #[tokio::test]
    async fn a_secret_header_replaces_the_clients_fields_and_no_later_step_sees_either() {
        let (chain, _) = Fakes::default()
            .step("inject", PluginKind::Filter, FailurePolicy::FailClosed, |_| Ok(set("authorization", "edited")))
            .injecting("authorization", "Bearer gateway-token")
            .step("after", PluginKind::Filter, FailurePolicy::FailClosed, |call| {
                let seen = lent(call).headers.contains_key("authorization");
                Ok(set("x-after-saw", if seen { "a credential" } else { "nothing" }))
            })
            .build();
        let mut request = request(None, &[("authorization", "Bearer client-token")]);
        let (verdict, state) = run(&chain, &mut request, b"").await;
        assert!(matches!(verdict, Ok(Verdict::Continue)), "{verdict:?}");
        assert_eq!(request.headers["x-after-saw"], "nothing");
        assert!(!request.headers.contains_key("authorization"), "the client's field left at once");
        let [written] = &state.secret_headers[..] else { panic!("{:?}", state.secret_headers) };
        assert_eq!((written.name.as_str(), written.value.to_str().unwrap()), ("authorization", "Bearer gateway-token"));
        assert!(!format!("{state:?}").contains("gateway-token"), "Debug shows the secret's name only");
    }

    #[tokio::test]
    async fn a_secret_header_for_a_host_field_or_from_a_rate_limit_step_fails_it() {
        let (identity, _) = Fakes::default()
            .step("inject", PluginKind::Filter, FailurePolicy::FailClosed, |_| Ok(pass()))
            .injecting("x-user-id", "admin")
            .build();
        let (verdict, state) = run(&identity, &mut request(None, &[]), b"").await;
        let Err(GatewayError::PluginFailed(failure)) = verdict else { panic!("expected a failure: {verdict:?}") };
        assert_eq!(failure.kind.label(), "invalid-output");
        assert!(state.secret_headers.is_empty());
        let (limiter, _) = Fakes::default()
            .step("limit", PluginKind::RateLimit, FailurePolicy::FailClosed, |_| {
                Ok(Reply::RateLimit(RateLimitOutcome::Allowed(vec![])))
            })
            .injecting("authorization", "Bearer x")
            .build();
        let (verdict, _) = run(&limiter, &mut request(None, &[]), b"").await;
        assert!(matches!(verdict, Err(GatewayError::PluginFailed(_))), "{verdict:?}");
    }

    #[tokio::test]
    async fn fail_closed_refuses_the_request_and_fail_open_skips_the_step() {
        let trap = |_: &Call<'_>| Err(FailureKind::Trap("unreachable".into()));
        let (closed, log) = Fakes::default()
            .step("broken", PluginKind::Filter, FailurePolicy::FailClosed, trap)
            .step("after", PluginKind::Filter, FailurePolicy::FailClosed, |_| Ok(pass()))
            .build();
        let (verdict, state) = run(&closed, &mut request(None, &[]), b"").await;
        let Err(GatewayError::PluginFailed(failure)) = verdict else { panic!("expected a failure: {verdict:?}") };
        assert_eq!(failure.kind.label(), "trap");
        assert!(state.decisions.is_empty());
        assert_eq!(lines(&log), ["broken request", "broken failure trap", "broken recorded none"]);

        let (open, log) = Fakes::default()
            .step("broken", PluginKind::Filter, FailurePolicy::FailOpen, trap)
            .step("after", PluginKind::Filter, FailurePolicy::FailClosed, |_| Ok(set("x-after", "ran")))
            .build();
        let mut request = request(None, &[]);
        let (verdict, state) = run(&open, &mut request, b"").await;
        assert!(matches!(verdict, Ok(Verdict::Continue)), "{verdict:?}");
        assert_eq!(request.headers["x-after"], "ran");
        assert_eq!(decisions(&state), [("broken".into(), "failed"), ("after".into(), "continue")]);
        assert!(lines(&log).contains(&"broken failure trap".to_owned()));
    }

    #[tokio::test]
    async fn output_the_host_refuses_is_a_failure_of_the_step() {
        let (chain, log) = Fakes::default()
            .step("crlf", PluginKind::Filter, FailurePolicy::FailClosed, |_| Ok(set("x-a", "1\r\nset-cookie: x")))
            .build();
        let mut request = request(None, &[]);
        let (verdict, _) = run(&chain, &mut request, b"").await;
        let Err(GatewayError::PluginFailed(failure)) = verdict else { panic!("expected a failure: {verdict:?}") };
        assert_eq!(failure.kind.label(), "invalid-output");
        assert!(!request.headers.contains_key("x-a"));
        assert!(lines(&log).contains(&"crlf failure invalid-output".to_owned()));

        // A filter may not assert an identity: the identity headers are the gateway's.
        let (chain, _) = Fakes::default()
            .step("spoof", PluginKind::Filter, FailurePolicy::FailOpen, |_| Ok(set("x-user-id", "admin")))
            .build();
        let mut request = super::tests::request(None, &[]);
        let (verdict, state) = run(&chain, &mut request, b"").await;
        assert!(matches!(verdict, Ok(Verdict::Continue)), "{verdict:?}");
        assert!(!request.headers.contains_key("x-user-id"));
        assert_eq!(decisions(&state), [("spoof".into(), "failed")]);
    }

    #[tokio::test]
    async fn the_identity_and_the_credential_removal_reach_every_later_step() {
        let (chain, _) = Fakes::default()
            .step("keys", PluginKind::Auth, FailurePolicy::FailClosed, |_| {
                Ok(Reply::Auth(Box::new(AuthOutcome::Authenticated(Authenticated {
                    identity: Identity::new("alice", vec!["admin".into()]),
                    remove_headers: vec!["x-api-key".into()],
                    remove_query_params: vec!["apikey".into()],
                }))))
            })
            .step("limit", PluginKind::RateLimit, FailurePolicy::FailClosed, |call| {
                let Call::Check(request, identity) = *call else { panic!("a rate-limit step is asked to check") };
                assert_eq!(identity.map(|i| i.subject.as_str()), Some("alice"));
                assert_eq!(request.query.as_deref(), Some("page=2"));
                assert!(!request.headers.contains_key("x-api-key"));
                Ok(Reply::RateLimit(RateLimitOutcome::Allowed(vec![])))
            })
            .build();
        let mut request = request(Some("apikey=s3cret&page=2"), &[("x-api-key", "s3cret"), ("accept", "*/*")]);
        let (verdict, state) = run(&chain, &mut request, b"").await;
        assert!(matches!(verdict, Ok(Verdict::Continue)), "{verdict:?}");
        assert_eq!(state.identity.as_ref().map(|i| i.subject.as_str()), Some("alice"));
        assert_eq!(state.remove_query_params, ["apikey"]);
        assert_eq!(request.headers["accept"], "*/*");
        assert_eq!(decisions(&state), [("keys".into(), "authenticated"), ("limit".into(), "allowed")]);
    }

    #[tokio::test]
    async fn a_limited_request_gets_429_with_retry_after_and_the_quotas() {
        let (chain, _) = Fakes::default()
            .step("limit", PluginKind::RateLimit, FailurePolicy::FailClosed, |_| {
                let quota =
                    Quota { policy: "per-minute".into(), limit: 10, window_ms: 60_000, remaining: 0, reset_ms: 1_500 };
                Ok(Reply::RateLimit(RateLimitOutcome::Limited(Limited { quotas: vec![quota], retry_after_ms: 1_500 })))
            })
            .build();
        let (verdict, state) = run(&chain, &mut request(None, &[]), b"").await;
        let Ok(Verdict::Respond(response)) = verdict else { panic!("expected a local response: {verdict:?}") };
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(state.quotas.len(), 1);
        let mut fields = HeaderMap::new();
        add_rate_limit_headers(&mut fields, &state.quotas);
        assert_eq!(fields["ratelimit"], "\"per-minute\";r=0;t=2");
    }

    #[tokio::test]
    async fn a_validation_step_reads_the_body_and_its_limit_is_413() {
        let validate = |call: &Call<'_>| {
            let Call::Validate(_, _, body) = *call else { panic!("a validation step is asked to validate") };
            Ok(Reply::Validation(if body == Some(b"{}".as_slice()) {
                ValidationOutcome::Valid
            } else {
                ValidationOutcome::Invalid(Invalid {
                    malformed: false,
                    violations: vec![Violation { pointer: "".into(), message: "expected {}".into() }],
                })
            }))
        };
        let (chain, _) =
            Fakes::default().step("schema", PluginKind::Validation, FailurePolicy::FailClosed, validate).build();
        assert_eq!(chain.body_limit(), Some(16));
        let (verdict, _) = run(&chain, &mut request(None, &[]), b"{}").await;
        assert!(matches!(verdict, Ok(Verdict::Continue)), "{verdict:?}");
        let (verdict, _) = run(&chain, &mut request(None, &[]), b"[]").await;
        let Ok(Verdict::Respond(response)) = verdict else { panic!("expected a local response: {verdict:?}") };
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let (verdict, _) = run(&chain, &mut request(None, &[]), &[b' '; 17]).await;
        assert!(matches!(verdict, Err(GatewayError::BodyTooLarge { limit: 16 })), "{verdict:?}");
    }

    #[tokio::test]
    async fn hooks_a_step_lacks_are_never_called_and_responses_run_in_reverse() {
        let (chain, log) = Fakes::default()
            .step("outer", PluginKind::Filter, FailurePolicy::FailClosed, |call| {
                Ok(if matches!(call, Call::OnResponse(..)) { set("x-outer", "1") } else { pass() })
            })
            .hooks(true, true)
            .step("response-only", PluginKind::Filter, FailurePolicy::FailClosed, |_| Ok(set("x-inner", "1")))
            .hooks(false, true)
            .step("request-only", PluginKind::Filter, FailurePolicy::FailClosed, |_| Ok(pass()))
            .build();
        assert!(chain.has_response_hooks());
        let mut request = request(None, &[]);
        let (verdict, mut state) = run(&chain, &mut request, b"").await;
        assert!(matches!(verdict, Ok(Verdict::Continue)), "{verdict:?}");
        let mut response = Response::new(full(Bytes::new()));
        chain.on_response(&request, &mut response, &mut state, &trace()).await.expect("the response phase runs");
        assert_eq!(response.headers()["x-outer"], "1");
        assert_eq!(response.headers()["x-inner"], "1");
        let calls: Vec<_> = lines(&log).into_iter().filter(|l| !l.contains(" recorded ")).collect();
        assert_eq!(calls, ["outer request", "request-only request", "response-only response", "outer response"]);
    }

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

    #[tokio::test]
    async fn a_logging_step_that_declared_the_standard_record_is_appended_for_and_never_called() {
        let observed = |_: &Call<'_>| Ok(Reply::Observed);
        let (chain, log) = Fakes::default()
            .step("audit", PluginKind::Logging, FailurePolicy::FailOpen, observed)
            .appending()
            .step("trail", PluginKind::Logging, FailurePolicy::FailOpen, observed)
            .step("regulated", PluginKind::Logging, FailurePolicy::FailClosed, observed)
            .appending()
            .build();
        assert!(chain.has_logging() && chain.appends_finished() && chain.calls_observe());
        let finished = Finished {
            exchange: portcullis_audit_record::Exchange {
                request_id: "req-1",
                route: "orders",
                method: "GET",
                authority: "example.test",
                path: "/orders",
                client_ip: "127.0.0.1",
                subject: None,
                status: 200,
                start_ms: 0,
                duration_us: 10,
                bytes_in: 0,
                bytes_out: 2,
                endpoint: None,
            },
            request_headers: &[],
            decisions: &[],
        };
        chain.append_finished("req-1", &finished, &trace());
        // Not the fail-closed step: it records before the response is sent ([`Chain::record`]).
        assert_eq!(*log.lock().unwrap(), ["audit appended req-1 200 durable=false", "audit recorded observed"]);
        log.lock().unwrap().clear();
        let exchange = Exchange {
            request_id: "req-1".into(),
            route: "orders".into(),
            method: "GET".into(),
            authority: "example.test".into(),
            path: "/orders".into(),
            query: None,
            client_ip: "127.0.0.1".into(),
            identity: None,
            status: 200,
            start_ms: 0,
            duration_us: 10,
            bytes_in: 0,
            bytes_out: 2,
            request_headers: vec![],
            response_headers: vec![],
            endpoint: None,
            decisions: vec![],
        };
        chain.observe(&Arc::new(exchange), &trace()).await;
        assert_eq!(*log.lock().unwrap(), ["trail request", "trail recorded observed"], "only the undeclared step");

        let (declared, _) =
            Fakes::default().step("audit", PluginKind::Logging, FailurePolicy::FailOpen, observed).appending().build();
        assert!(declared.appends_finished() && !declared.calls_observe(), "no exchange is built for calls");
        let (called, _) =
            Fakes::default().step("trail", PluginKind::Logging, FailurePolicy::FailOpen, observed).build();
        assert!(!called.appends_finished() && called.calls_observe());
    }

    #[test]
    fn a_decision_reads_the_same_in_the_standard_record_as_in_the_lent_exchange() {
        let plugin: Arc<str> = Arc::from("rbac");
        let elapsed = Duration::from_micros(42);
        for (phase, decision, shadow) in
            [(Phase::Request, "allowed", false), (Phase::Request, "denied", true), (Phase::Response, "continue", false)]
        {
            let made = Decision::of(&plugin, phase, decision, elapsed, shadow);
            let (wit, label) = (made.to_wit(), made.label());
            let recorded = made.for_record(&label);
            let wit_phase = match wit.phase {
                Phase::Request => "request",
                Phase::Response => "response",
            };
            assert_eq!(
                (recorded.plugin, recorded.phase, recorded.decision, recorded.duration_us),
                (wit.plugin.as_str(), wit_phase, wit.decision.as_str(), wit.duration_us)
            );
        }
        let shadow = Decision::of(&plugin, Phase::Request, "denied", elapsed, true);
        assert_eq!(shadow.for_record(&shadow.label()).decision, "shadow:denied");
    }

    #[test]
    fn rate_limit_headers_follow_the_ietf_draft() {
        let mut h = HeaderMap::new();
        let q = Quota { policy: "per-second".into(), limit: 10, window_ms: 1000, remaining: 3, reset_ms: 1 };
        add_rate_limit_headers(&mut h, std::slice::from_ref(&q));
        assert_eq!(h["ratelimit-policy"], "\"per-second\";q=10;w=1");
        assert_eq!(h["ratelimit"], "\"per-second\";r=3;t=1");
        let hour = Quota { policy: "per-hour".into(), limit: 500, window_ms: 3_600_000, remaining: 0, reset_ms: 1_001 };
        add_rate_limit_headers(&mut h, &[q, hour]);
        assert_eq!(h["ratelimit-policy"], "\"per-second\";q=10;w=1, \"per-hour\";q=500;w=3600");
        assert_eq!(h["ratelimit"], "\"per-second\";r=3;t=1, \"per-hour\";r=0;t=2");
        assert_eq!(h.get_all("ratelimit").iter().count(), 1, "replaced, not appended");
    }
}
