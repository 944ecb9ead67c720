//! The request path: route, hygiene, chain, upstream, response phase, and the access and
//! logging records once the response body is done.

pub mod headers;
pub mod hygiene;
pub mod path;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::uri::Authority;
use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use opentelemetry::trace::SpanKind;
use opentelemetry::{Context, KeyValue};

use crate::body::{Body, BodyEnd, BodyEndCell, Counted, LazyBody, Timed, boxed};
use crate::chain::{ChainState, Trace, Verdict, add_rate_limit_headers};
use crate::error::GatewayError;
use crate::plugin::PluginRequest;
use crate::plugin::audit::Finished;
use crate::plugin::bindings::exports::portcullis::plugin::logging;
use crate::plugin::bindings::portcullis::plugin::types::Header;
use crate::server::InFlight;
use crate::snapshot::{RouteRuntime, Snapshot};
use crate::telemetry::{self, SpanOutcome};

/// A verified client certificate as plugins see it (WIT `client-cert`).
pub use crate::plugin::bindings::portcullis::plugin::types::ClientCert;

/// What the listener knows about the connection a request came on.
#[derive(Debug)]
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The peer's IP as forwarding fields and plugins see it ([`hygiene::peer_text`]).
    pub peer_ip: HeaderValue,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The client certificate verified in the TLS handshake (mutual TLS).
    pub client_cert: Option<ClientCert>,
    /// Longest wait for the client's next request body chunk (408 beyond).
    pub body_idle_timeout: std::time::Duration,
    /// Longest time to receive a request body, from the request head (408 beyond).
    pub body_timeout: std::time::Duration,
    /// Cap on bodies a chain buffers, in bytes.
    pub max_buffered_body_bytes: u64,
    /// Longest request target, in bytes (414 beyond).
    pub max_uri_bytes: u64,
    /// The listener's request hygiene settings.
    pub hygiene: Arc<hygiene::Hygiene>,
}

/// One request on its way through the gateway, from its head to the access log: created by
/// [`handle`] once the route is known, carried through the chain, the upstream and the response
/// phase, and consumed by [`Exchange::finish`] when the response body ends (or the client
/// leaves).
struct Exchange {
    snapshot: Arc<Snapshot>,
    /// The matched route; none for a request refused before routing or matching none.
    route: Option<Arc<RouteRuntime>>,
    started: Instant,
    /// What plugins see; its headers are the request's own while the chain runs.
    request: Arc<PluginRequest>,
    /// The request fields the route's logging steps record, as received.
    request_headers: Vec<Header>,
    /// How and when the request body ended, and its size; the upstream's response timer
    /// looks at it.
    body_end: Arc<BodyEndCell>,
    trace: Trace,
    /// What the chain learnt: identity, quotas, decisions.
    state: ChainState,
    /// The endpoint the request was sent to, once one was picked.
    endpoint: Option<Authority>,
    /// The response's status, once known.
    status: u16,
    /// The response fields the logging steps record, for those that are called (none when
    /// every fail-open one declared the standard record).
    response_headers: Vec<Header>,
    /// The connection's count of requests in flight holds this one until the exchange ends
    /// (its response body ended or was dropped): the connection's idle and head-read
    /// deadlines run between exchanges, not while a response streams.
    _in_flight: InFlight,
}

/// Serves one request with `snapshot`. Never fails: every error becomes a problem response
/// (RFC 9457). `in_flight` is held until the response body ends or is dropped.
pub(crate) async fn handle(
    request: Request<Incoming>,
    snapshot: Arc<Snapshot>,
    conn: Arc<ConnInfo>,
    in_flight: InFlight,
) -> Response<Body> {
    // The request's clock reading, from which its body's deadline, the body's end, the
    // exchange's end and the logging steps' wall-clock start are measured (docs/BENCHMARKS.md,
    // entry 47).
    let started = Instant::now();
    let (mut parts, body) = request.into_parts();
    let request_id = headers::request_id(&parts.headers);
    let target_len = parts.uri.path_and_query().map_or(0, |p| p.as_str().len()) as u64;
    let refused = if target_len > conn.max_uri_bytes {
        Some(GatewayError::UriTooLong { limit: conn.max_uri_bytes })
    } else {
        conn.hygiene.apply(&mut parts).err()
    };
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
        .unwrap_or_default();
    let route = match refused {
        None => snapshot.route(&host_of(&authority), parts.uri.path(), &parts.method).cloned(),
        Some(_) => None,
    };
    let max_body = route.as_ref().map_or(u64::MAX, |r| r.max_body_bytes);
    // A declared length over the route's limit is refused before reading a byte of it.
    let refused = match refused {
        None if route.is_some() && http_body::Body::size_hint(&body).lower() > max_body => {
            Some(GatewayError::BodyTooLarge { limit: max_body })
        }
        other => other,
    };
    let client_ip = conn.hygiene.client_ip(conn.peer.ip(), &parts.headers);

    let trace_context = conn.hygiene.accepts_trace_context(conn.peer.ip());
    // The client's trace context is parsed only when it sent one the listener accepts.
    let trace_context = headers::strip_inbound(&mut parts.headers, &snapshot.identity, trace_context);
    let trace = start_trace(&snapshot, &conn, &parts, trace_context, &authority, route.as_deref(), &request_id);
    // The exchange keeps the headers as received (those its logging steps record); filters may
    // edit them.
    let request_headers = route.as_ref().map_or_else(Vec::new, |r| r.chain.logged_headers(&parts.headers));
    let request = Arc::new(PluginRequest {
        method: parts.method.clone(),
        scheme: conn.scheme,
        authority,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: std::mem::take(&mut parts.headers),
        // The peer's text, computed once per connection, unless a trusted proxy named another.
        client_ip: match conn.peer_ip.to_str() {
            Ok(text) if client_ip == conn.peer.ip().to_canonical() => text.to_owned(),
            _ => client_ip.to_string(),
        },
        client_cert: conn.client_cert.clone(),
        request_id,
        route: route.as_ref().map_or_else(|| Arc::from("-"), |r| r.id.clone()),
    });
    let body_end = Arc::new(BodyEndCell::new(started.into()));
    let ended = body_end.clone();
    let body = Counted::new(
        Timed::new(
            http_body_util::Limited::new(body, usize::try_from(max_body).unwrap_or(usize::MAX)),
            conn.body_idle_timeout,
            conn.body_timeout,
            started.into(),
        ),
        move |n, end| ended.set(end, n),
    );
    let mut exchange = Exchange {
        snapshot,
        route,
        started,
        request,
        request_headers,
        body_end,
        trace,
        state: ChainState::default(),
        endpoint: None,
        status: 0,
        response_headers: Vec::new(),
        _in_flight: in_flight,
    };

    let refused_early = refused.is_some();
    let answer = match refused {
        Some(e) => Err(e),
        None => exchange.forward(parts, Body::new(body), &conn).await,
    };
    let response = exchange.settle(answer, refused_early, max_body);
    let response = exchange.record(response).await;
    exchange.respond(response)
}

// === impl Exchange ===

impl Exchange {
    /// Runs the chain and, unless it answered itself, the upstream exchange and the response
    /// phase.
    ///
    /// Errors: [`GatewayError::NoRoute`] (404) without a route; the chain's errors (a
    /// fail-closed plugin failure, 413 or 400 for the body a step reads); no endpoint to send
    /// to (503); the upstream's refusal, break or timeout (502, 504).
    async fn forward(
        &mut self,
        mut parts: http::request::Parts,
        body: Body,
        conn: &ConnInfo,
    ) -> Result<Response<Body>, GatewayError> {
        let route = self.route.clone().ok_or(GatewayError::NoRoute)?;
        let chain = &route.chain;
        // Read only when the first step that needs the body runs, so a request refused earlier
        // in the chain (by auth, say) is never buffered.
        let limit = chain.body_limit().unwrap_or(0).min(conn.max_buffered_body_bytes).min(route.max_body_bytes);
        let mut body = LazyBody::new(body, limit);
        let ids = &self.snapshot.identity;
        if let Verdict::Respond(response) =
            chain.on_request(&mut self.request, &mut body, ids, &mut self.state, &self.trace).await?
        {
            return Ok(response);
        }
        // The chain's edits are the request's: take its headers back for the upstream, or copy
        // them when a response hook will be lent the request again.
        parts.headers = if chain.has_response_hooks() {
            self.request.headers.clone()
        } else {
            std::mem::take(&mut Arc::make_mut(&mut self.request).headers)
        };
        let body = body.into_body();
        // The lent request's query lost these when the auth step named them; now the target does.
        if !self.state.remove_query_params.is_empty() {
            parts.uri = headers::strip_query_params(&parts.uri, &self.state.remove_query_params);
        }
        if let Some(identity) = &self.state.identity {
            ids.inject(&mut parts.headers, identity);
        }
        // Written last, into what goes upstream only: no plugin is lent these values.
        for secret in std::mem::take(&mut self.state.secret_headers) {
            parts.headers.insert(secret.name, secret.value);
        }
        conn.hygiene.forward(&mut parts.headers, conn.peer.ip(), &conn.peer_ip, conn.scheme);
        let request_id = &self.request.request_id;
        if let Ok(v) = HeaderValue::from_str(request_id) {
            parts.headers.insert(headers::X_REQUEST_ID, v);
        }
        if !parts.headers.contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(&self.request.authority)
        {
            parts.headers.insert(header::HOST, v);
        }
        let endpoint = route.upstream.pick().inspect_err(|e| {
            tracing::warn!(request_id = %request_id, route = %route.id, error = %e, "no endpoint to send to");
        })?;
        self.endpoint = Some(endpoint.address.clone());
        let telemetry = &self.trace.telemetry;
        let span = telemetry.start(&self.trace.cx, SpanKind::Client, || {
            let attributes = vec![
                KeyValue::new("http.request.method", parts.method.to_string()),
                KeyValue::new("server.address", endpoint.address.host().to_owned()),
                KeyValue::new("server.port", i64::from(endpoint.address.port_u16().unwrap_or(0))),
                KeyValue::new("portcullis.upstream", route.upstream.name().to_owned()),
            ];
            (parts.method.to_string(), attributes)
        });
        // The upstream continues the trace from this exchange's span; a client's `traceparent`
        // that was not accepted was removed in `start_trace`.
        telemetry.inject(&span, &mut parts.headers);
        let request = Request::from_parts(parts, body);
        let sent = route.upstream.send(endpoint, request, &self.body_end, conn.body_timeout);
        let response = match sent.await {
            Ok(response) => response,
            Err(e) => {
                telemetry::end(&span, SpanOutcome::Error, &e.to_string(), []);
                tracing::warn!(request_id = %self.request.request_id, route = %route.id, error = %e, "upstream request failed");
                return Err(e);
            }
        };
        let status = response.status();
        let outcome = if status.is_server_error() { SpanOutcome::Error } else { SpanOutcome::Ok };
        let code = KeyValue::new("http.response.status_code", i64::from(status.as_u16()));
        telemetry::end(&span, outcome, status.as_str(), [code]);
        let (mut response_parts, response_body) = response.into_parts();
        headers::strip_hop_by_hop(&mut response_parts.headers);
        let mut response = Response::from_parts(response_parts, boxed(response_body));
        if let Err(e) = chain.on_response(&self.request, &mut response, &mut self.state, &self.trace).await {
            response = e.into_response(&self.request.request_id);
        }
        Ok(response)
    }

    /// The response to send for `answer`: an error becomes its problem response, unless the
    /// client's body broke off, timed out or grew past `max_body` (bytes), which is the
    /// client's fault and answered as such (400, 408, 413) instead of the upstream's 502 or
    /// 504. After a request `refused` before routing, a broken body or a 408 the connection's
    /// framing cannot be trusted, and the response closes it (RFC 9112 §9.6, and what a
    /// request-smuggling defence needs). Adds the RateLimit fields and `x-request-id`.
    fn settle(&mut self, answer: Result<Response<Body>, GatewayError>, refused: bool, max_body: u64) -> Response<Body> {
        let fault = match self.body_end.get() {
            Some(BodyEnd::Failed) => Some(GatewayError::BadBody("the request body is malformed or incomplete".into())),
            Some(BodyEnd::TimedOut) => {
                Some(GatewayError::RequestTimeout("the request body was not received in time".into()))
            }
            Some(BodyEnd::TooLarge) => Some(GatewayError::BodyTooLarge { limit: max_body }),
            Some(BodyEnd::Complete | BodyEnd::Dropped) | None => None,
        };
        let must_close = refused || fault.is_some();
        let answer = match (answer, fault) {
            (Err(GatewayError::UpstreamFailed { .. } | GatewayError::UpstreamTimeout { .. }), Some(fault)) => {
                Err(fault)
            }
            (answer, _) => answer,
        };
        let request_id = &self.request.request_id;
        let mut response = answer.unwrap_or_else(|e| e.into_response(request_id));
        if must_close || response.status() == http::StatusCode::REQUEST_TIMEOUT {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        add_rate_limit_headers(response.headers_mut(), &self.state.quotas);
        if let Ok(v) = HeaderValue::from_str(request_id) {
            response.headers_mut().insert(headers::X_REQUEST_ID, v);
        }
        response
    }

    /// `response`, once the route's fail-closed logging steps recorded the exchange
    /// ([`crate::chain::Chain::record`]); a 503 problem (`audit-unavailable`) instead when one
    /// could not, so nothing is served unrecorded. They see the response before its body is
    /// sent: `bytes-out` is its declared length (0 when not declared) and `duration-us` the
    /// time until now.
    async fn record(&mut self, response: Response<Body>) -> Response<Body> {
        let Some(route) = self.route.clone().filter(|r| r.chain.has_records()) else { return response };
        let request = &self.request;
        let elapsed = self.started.elapsed();
        let exchange = Arc::new(logging::Exchange {
            request_id: request.request_id.clone(),
            route: request.route.to_string(),
            method: request.method.as_str().to_owned(),
            authority: request.authority.clone(),
            path: request.path.clone(),
            query: request.query.clone(),
            client_ip: request.client_ip.clone(),
            identity: self.state.identity.as_deref().cloned(),
            status: response.status().as_u16(),
            start_ms: start_ms(elapsed),
            duration_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            bytes_in: self.body_end.bytes(),
            bytes_out: http_body::Body::size_hint(response.body()).exact().unwrap_or(0),
            request_headers: self.request_headers.clone(),
            response_headers: route.chain.logged_headers(response.headers()),
            endpoint: self.endpoint.as_ref().map(|e| e.as_str().to_owned()),
            decisions: self.state.decisions.iter().map(crate::chain::Decision::to_wit).collect(),
        });
        // Boxed: the logging steps' calls are most of this future's size (the request's whole
        // future was 19.9 KB with them inline, 4.4 KB without; hyper moves it three times per
        // request, routes without logging steps too; docs/BENCHMARKS.md, entry 45).
        match Box::pin(route.chain.record(&exchange, &self.trace)).await {
            Ok(()) => response,
            Err(e) => {
                let request_id = &self.request.request_id;
                let mut refused = e.into_response(request_id);
                if let Ok(v) = HeaderValue::from_str(request_id) {
                    refused.headers_mut().insert(headers::X_REQUEST_ID, v);
                }
                refused
            }
        }
    }

    /// `response` with its body counted: when the body ends, [`Exchange::finish`] runs.
    fn respond(mut self, response: Response<Body>) -> Response<Body> {
        self.status = response.status().as_u16();
        // Only a called `observe` is lent them: the standard record has no response fields.
        if let Some(route) = self.route.as_ref().filter(|r| r.chain.calls_observe()) {
            self.response_headers = route.chain.logged_headers(response.headers());
        }
        let (parts, body) = response.into_parts();
        let finished = move |bytes_out: u64, end: BodyEnd| self.finish(bytes_out, end == BodyEnd::Complete);
        Response::from_parts(parts, Body::new(Counted::new(body, finished)))
    }

    /// After the response body ended (`complete`) or the client left: the request metrics, one
    /// access log line, the trace's end, and the route's fail-open logging steps: the standard
    /// record appended here for those that declared it ([`crate::chain::Chain::append_finished`]),
    /// the exchange record handed to the others' `observe` in a task of its own.
    fn finish(self, bytes_out: u64, complete: bool) {
        let Exchange {
            snapshot,
            route,
            started,
            request,
            request_headers,
            body_end,
            trace,
            state,
            endpoint,
            status,
            response_headers,
            _in_flight: in_flight,
        } = self;
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(started);
        in_flight.end_at(now);
        let duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let head = Arc::try_unwrap(request).unwrap_or_else(|shared| (*shared).clone());
        match &route {
            Some(route) => {
                route.series.finished(&snapshot.metrics, &head.method, status, elapsed);
                for plugin in &state.disagreements {
                    route.series.shadow_disagreed(&snapshot.metrics, plugin);
                }
            }
            None => snapshot.metrics.request_finished(&head.route, head.method.as_str(), status, elapsed),
        }
        let bytes_in = body_end.bytes();
        let subject = state.identity.as_ref().map_or("-", |i| i.subject.as_str());
        if trace.telemetry.is_recording() {
            let outcome = if status >= 500 { SpanOutcome::Error } else { SpanOutcome::Ok };
            let mut attributes = vec![
                KeyValue::new("http.response.status_code", i64::from(status)),
                KeyValue::new("portcullis.response.complete", complete),
            ];
            if subject != "-" {
                attributes.push(KeyValue::new("enduser.id", subject.to_owned()));
            }
            telemetry::end(&trace.cx, outcome, "server error", attributes);
        }
        let endpoint = endpoint.as_ref().map(Authority::as_str);
        tracing::info!(
            target: "portcullis::access",
            request_id = %head.request_id,
            trace_id = %telemetry::trace_id(&trace.cx),
            span_id = %telemetry::span_id(&trace.cx),
            route = %head.route,
            method = %head.method,
            path = %head.path,
            status,
            latency_ms = duration_us as f64 / 1000.0,
            bytes_in,
            bytes_out,
            endpoint = endpoint.unwrap_or("-"),
            subject,
            complete,
            "request"
        );
        let Some(route) = route.filter(|r| r.chain.has_logging()) else { return };
        let start_ms = start_ms(elapsed);
        if route.chain.appends_finished() {
            // Steps that declared the standard record get it at once, from borrowed fields:
            // no WIT exchange, no task (docs/DECISIONS.md, "A logging step that declares the
            // standard record is not called").
            let labels: Vec<_> = state.decisions.iter().map(crate::chain::Decision::label).collect();
            let decisions: Vec<_> = state.decisions.iter().zip(&labels).map(|(d, label)| d.for_record(label)).collect();
            let finished = Finished {
                exchange: portcullis_audit_record::Exchange {
                    request_id: &head.request_id,
                    route: &head.route,
                    method: head.method.as_str(),
                    authority: &head.authority,
                    path: &head.path,
                    client_ip: &head.client_ip,
                    subject: state.identity.as_ref().map(|i| i.subject.as_str()),
                    status,
                    start_ms,
                    duration_us,
                    bytes_in,
                    bytes_out,
                    endpoint,
                },
                request_headers: &request_headers,
                decisions: &decisions,
            };
            route.chain.append_finished(&head.request_id, &finished, &trace);
        }
        if !route.chain.calls_observe() {
            return;
        }
        let exchange = Arc::new(logging::Exchange {
            request_id: head.request_id,
            route: head.route.to_string(),
            method: head.method.as_str().to_owned(),
            authority: head.authority,
            path: head.path,
            query: head.query,
            client_ip: head.client_ip,
            identity: state.identity.map(Arc::unwrap_or_clone),
            status,
            start_ms,
            duration_us,
            bytes_in,
            bytes_out,
            request_headers,
            response_headers,
            endpoint: endpoint.map(str::to_owned),
            decisions: state.decisions.iter().map(crate::chain::Decision::to_wit).collect(),
        });
        // The completion hook runs inside hyper's connection task, so a runtime is there; if a
        // body were ever dropped elsewhere, the record is dropped rather than panicking.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                route.chain.observe(&exchange, &trace).await;
            });
        }
    }
}

/// Starts the request's trace: the client's W3C trace context when it sent one and the
/// listener accepts it from this peer (`trace_context`, from [`headers::strip_inbound`],
/// which removed an unaccepted `traceparent` and `tracestate`, so neither plugins nor the
/// upstream see them), and the request span under it.
fn start_trace(
    snapshot: &Snapshot,
    conn: &ConnInfo,
    parts: &http::request::Parts,
    trace_context: bool,
    authority: &str,
    route: Option<&RouteRuntime>,
    request_id: &str,
) -> Trace {
    let telemetry = snapshot.telemetry.clone();
    let parent = if trace_context { telemetry.extract(&parts.headers) } else { Context::new() };
    let route = route.map_or("-", |r| &*r.id);
    let cx = telemetry.start_request(&parent, || {
        let mut attributes = vec![
            KeyValue::new("http.request.method", parts.method.to_string()),
            KeyValue::new("url.scheme", conn.scheme),
            KeyValue::new("url.path", parts.uri.path().to_owned()),
            KeyValue::new("server.address", host_of(authority).into_owned()),
            KeyValue::new("client.address", conn.peer.ip().to_string()),
            KeyValue::new("network.protocol.version", protocol_version(parts.version)),
            KeyValue::new("portcullis.route", route.to_owned()),
            KeyValue::new("portcullis.request_id", request_id.to_owned()),
        ];
        if let Some(agent) = parts.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()) {
            attributes.push(KeyValue::new("user_agent.original", agent.to_owned()));
        }
        (format!("{} {route}", parts.method), attributes)
    });
    Trace { telemetry, cx }
}

fn protocol_version(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The wall-clock time a request started, in ms since the Unix epoch (logging steps'
/// `start-ms`): now less `since_start`, the time the request has taken (its monotonic clock).
/// Read only for routes with logging steps, not on every request's way in.
fn start_ms(since_start: Duration) -> u64 {
    let start = SystemTime::now().checked_sub(since_start).unwrap_or(UNIX_EPOCH);
    start.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

/// The host part of an authority, lowercase, without port (IPv6 literals keep their brackets);
/// borrowed from `authority` unless it had to be lowercased.
fn host_of(authority: &str) -> std::borrow::Cow<'_, str> {
    let host = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => &authority[..=end],
            None => return std::borrow::Cow::Owned(authority.to_ascii_lowercase() + "]"),
        }
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_of_drops_the_port_and_lowercases() {
        assert_eq!(super::host_of("Example.COM:8080"), "example.com");
        assert_eq!(super::host_of("example.com"), "example.com");
        assert_eq!(super::host_of("[::1]:80"), "[::1]");
        assert!(matches!(super::host_of("api.example:443"), std::borrow::Cow::Borrowed("api.example")));
    }
}
