//! Upstreams: a named set of endpoints, chosen round robin or by fewest requests in flight
//! among the available ones ([`crate::health`]), reached with keep-alive, a connect timeout and
//! a response timeout; over HTTP/1.1 or HTTP/2, in clear text or TLS (hyper-rustls, see
//! [`crate::tls::client_config`]).
//!
//! Requests to HTTP/1.1 upstreams go over the gateway's own connections to each endpoint
//! (see [`direct`] for why); requests to HTTP/2 upstreams and health checks over hyper-util's
//! pooled client.

pub mod direct;

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

pub use self::direct::Leased;
use self::direct::{Conn, Idle};
use crate::body::{Body, BodyEndCell, BoxError};
use crate::config::model::{HealthCheckConfig, LoadBalancing, OutlierConfig, UpstreamConfig, UpstreamProtocol};
use crate::error::GatewayError;
use crate::health::{EndpointHealth, EndpointStatus, Outcome};
use crate::metrics::{EndpointLabels, Metrics, UpstreamErrorLabels};
use crate::wake::OnWake;

/// One endpoint of an upstream and what is known about its health.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host:port`.
    pub address: Authority,
    /// Shared with the next snapshot's endpoint of the same upstream and address.
    pub health: Arc<EndpointHealth>,
    /// Its `portcullis_upstream_request_duration_seconds` series, looked up once.
    latency: prometheus_client::metrics::histogram::Histogram,
    /// `scheme://host:port`, where direct connections are opened.
    origin: Uri,
    /// Its parked direct connections (HTTP/1.1 upstreams).
    idle: Arc<Idle>,
}

/// One upstream.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    endpoints: Vec<Endpoint>,
    next: AtomicUsize,
    load_balancing: LoadBalancing,
    health_check: Option<HealthCheckConfig>,
    outlier: OutlierConfig,
    metrics: Arc<Metrics>,
    scheme: Scheme,
    client: Client<HttpsConnector<HttpConnector>, Body>,
    /// The client's connector, for direct connections; none for HTTP/2 upstreams.
    direct: Option<HttpsConnector<HttpConnector>>,
    connect_timeout: Duration,
    response_timeout: Duration,
}

// === impl Upstream ===

impl Upstream {
    /// Builds the upstream and its connection pool: TLS with `tls` when given (its ALPN says
    /// `h2` or `http/1.1`), clear text otherwise; HTTP/2 uses prior knowledge in clear text.
    /// Endpoints were checked when the configuration was validated; unparsable ones are
    /// skipped. An endpoint that `previous` (the same upstream in the snapshot being replaced)
    /// also has keeps its health.
    pub fn new(
        name: &str,
        config: &UpstreamConfig,
        tls: Option<rustls::ClientConfig>,
        previous: Option<&Upstream>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        let idle_timeout = Duration::from_millis(config.pool_idle_timeout_ms);
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let server_name = config.tls.as_ref().and_then(|t| t.server_name.clone());
        let scheme = if tls.is_some() { Scheme::HTTPS } else { Scheme::HTTP };
        // Clear-text upstreams get an unused client configuration: the connector passes
        // `http` URIs through untouched.
        let tls = tls.unwrap_or_else(crate::tls::unused_client_config);
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
        let builder = match server_name.and_then(|n| rustls::pki_types::ServerName::try_from(n).ok()) {
            Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name)),
            None => builder,
        };
        let http2 = config.protocol == UpstreamProtocol::Http2;
        let connector = if http2 {
            builder.enable_http2().wrap_connector(connector)
        } else {
            builder.enable_http1().wrap_connector(connector)
        };
        let direct = (!http2).then(|| connector.clone());
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_endpoint)
            .http2_only(http2)
            .timer(TokioTimer::new())
            .build(connector);
        Upstream {
            name: name.to_owned(),
            endpoints: config
                .endpoints
                .iter()
                .filter_map(|e| e.parse::<Authority>().ok())
                .map(|address| {
                    let known = previous.and_then(|p| p.endpoints.iter().find(|e| e.address == address));
                    let health = known.map_or_else(Arc::default, |e| e.health.clone());
                    let labels = EndpointLabels { upstream: name.to_owned(), endpoint: address.to_string() };
                    let latency = metrics.upstream_duration.get_or_create(&labels).clone();
                    let origin = Uri::builder()
                        .scheme(scheme.clone())
                        .authority(address.clone())
                        .path_and_query("/")
                        .build()
                        .expect("a scheme and an authority make a URI");
                    let idle = Idle::new(config.pool_max_idle_per_endpoint, idle_timeout);
                    Endpoint { address, health, latency, origin, idle }
                })
                .collect(),
            next: AtomicUsize::new(0),
            load_balancing: config.load_balancing,
            health_check: config.health_check.clone(),
            outlier: config.outlier_detection.clone(),
            metrics,
            scheme,
            client,
            direct,
            connect_timeout,
            response_timeout: Duration::from_millis(config.response_timeout_ms),
        }
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its endpoints, in configuration order.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Its active health check settings, when configured.
    pub fn health_check(&self) -> Option<&HealthCheckConfig> {
        self.health_check.as_ref()
    }

    /// Each endpoint's health, for `/status`.
    pub fn status(&self) -> Vec<EndpointStatus> {
        self.endpoints.iter().map(|e| e.health.status(e.address.as_str())).collect()
    }

    /// Chooses an available endpoint by the upstream's `load_balancing`.
    ///
    /// Errors: [`GatewayError::NoHealthyUpstream`] (503) when active checks or ejections leave
    /// none.
    pub fn pick(&self) -> Result<&Endpoint, GatewayError> {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let available = (0..n).map(|k| &self.endpoints[(start + k) % n.max(1)]).filter(|e| e.health.is_available());
        let chosen = match self.load_balancing {
            LoadBalancing::RoundRobin => available.into_iter().next(),
            LoadBalancing::LeastRequests => available.min_by_key(|e| e.health.outstanding()),
        };
        chosen.ok_or_else(|| GatewayError::NoHealthyUpstream { upstream: self.name.clone() })
    }

    /// Sends `request` to `endpoint` (its URI is rewritten, keeping path and query), waits for
    /// the response head, and records the outcome for outlier detection: a 5xx, a connection
    /// error or a timeout counts as a failure, and enough in a row eject the endpoint unless it
    /// is the last one available.
    ///
    /// To an HTTP/1.1 upstream the request goes over the endpoint's most recently used
    /// connection that is free, or a new one ([`direct`]); a connection that turns out closed
    /// before the request was written is replaced once. To HTTP/2 upstreams, the pooled client
    /// carries it.
    ///
    /// `sent` is how the request body ends. `response_timeout_ms` runs from that end, not
    /// from the request head: a client uploading slowly is bounded by the listener's body
    /// timeouts (408 for the client), never timed against the upstream. The wait for the end
    /// is capped at `connect_timeout_ms` + `body_timeout` (ms), in case the body stops being
    /// read. An exchange that fails after the client's body broke, timed out or grew too large
    /// is the client's fault and is not counted against the endpoint.
    ///
    /// Errors: [`GatewayError::UpstreamTimeout`] when connecting or the response head takes
    /// longer than configured; [`GatewayError::UpstreamFailed`] when the connection is refused
    /// or breaks.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        request: Request<Body>,
        sent: &BodyEndCell,
        body_timeout: Duration,
    ) -> Result<Response<Leased>, GatewayError> {
        let in_flight = endpoint.health.start();
        // The exchange's timer starts when the endpoint's count did: one clock reading for both.
        let result = self.exchange(endpoint, request, in_flight.started().into(), Some((sent, body_timeout))).await;
        if result.is_err() && sent.client_fault() {
            return result;
        }
        let took = in_flight.elapsed();
        endpoint.latency.observe(took.as_secs_f64());
        let (outcome, error) = match &result {
            Ok(response) if response.status().is_server_error() => (Outcome::Failure, Some("5xx")),
            Ok(_) => (Outcome::Success, None),
            Err(GatewayError::UpstreamTimeout { .. }) => (Outcome::Failure, Some("timeout")),
            Err(_) => (Outcome::Failure, Some("failed")),
        };
        if let Some(kind) = error {
            let labels = UpstreamErrorLabels {
                upstream: self.name.clone(),
                endpoint: endpoint.address.to_string(),
                kind: kind.to_owned(),
            };
            self.metrics.upstream_errors.get_or_create(&labels).inc();
        }
        if let Some(health) = in_flight.finish(outcome, took, &self.outlier) {
            let others = self.endpoints.iter().any(|e| !Arc::ptr_eq(&e.health, &health) && e.health.is_available());
            if others {
                crate::health::eject(&health, &self.outlier, &self.name, endpoint.address.as_str());
            }
        }
        result
    }

    /// One active health check of `endpoint`: whether `GET path` answers 2xx or 3xx within the
    /// check's timeout. Checks go over the pooled client, never over a connection requests use.
    pub async fn probe(&self, endpoint: &Endpoint) -> bool {
        let Some(check) = &self.health_check else { return true };
        let request = Request::get(check.path.as_str())
            .header(http::header::HOST, endpoint.address.as_str())
            .header(http::header::USER_AGENT, "portcullis-health-check")
            .body(crate::body::full(bytes::Bytes::new()));
        let Ok(request) = request else { return false };
        let answer = tokio::time::timeout(
            Duration::from_millis(check.timeout_ms),
            self.exchange(endpoint, request, Instant::now(), None),
        );
        match answer.await {
            Ok(Ok(response)) => response.status().is_success() || response.status().is_redirection(),
            _ => false,
        }
    }

    /// One request to `endpoint`, started at `start` (the caller's clock reading, about now), due
    /// within connect + response timeout from it, and with `sent` also within the response
    /// timeout after `sent`'s body ends (that wait capped at the second member plus the connect
    /// timeout).
    async fn exchange(
        &self,
        endpoint: &Endpoint,
        mut request: Request<Body>,
        start: Instant,
        sent: Option<(&BodyEndCell, Duration)>,
    ) -> Result<Response<Leased>, GatewayError> {
        let path = request.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        // Health checks (no `sent`) go over the pooled client.
        let direct = self.direct.as_ref().filter(|_| sent.is_some());
        // A connection of our own takes the origin form (RFC 9112 §3.2.1); the pooled client
        // wants the absolute form and writes the origin form itself.
        *request.uri_mut() = if direct.is_some() {
            Uri::from(path)
        } else {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(self.scheme.clone());
            parts.authority = Some(endpoint.address.clone());
            parts.path_and_query = Some(path);
            Uri::from_parts(parts).map_err(|e| self.failed(e.to_string()))?
        };
        *request.version_mut() = http::Version::HTTP_11;

        // Polled only when its timer fired (`OnWake`), not on each wake-up of the exchange
        // (docs/BENCHMARKS.md, entry 45); pinned here so `select!` moves no future.
        let response_due = pin!(OnWake::new(response_due(start, self.connect_timeout, self.response_timeout, sent)));
        let dispatch = async {
            match direct {
                Some(connector) => self.direct_request(connector, endpoint, request).await,
                None => match self.client.request(request).await {
                    Ok(response) => Ok(response.map(Leased::pooled)),
                    Err(e) if e.is_connect() => Err(Failure::Connect(e.into())),
                    Err(e) => Err(Failure::Exchange(e.into())),
                },
            }
        };
        let answer = tokio::select! {
            biased;
            answer = dispatch => Some(answer),
            () = response_due => None,
        };
        let address = &endpoint.address;
        match answer {
            None => Err(GatewayError::UpstreamTimeout {
                upstream: self.name.clone(),
                detail: format!(
                    "no response head from {address} within {} ms of the request's end",
                    self.response_timeout.as_millis()
                ),
            }),
            Some(Ok(response)) => Ok(response),
            Some(Err(Failure::Connect(e))) if timed_out(&*e) => Err(GatewayError::UpstreamTimeout {
                upstream: self.name.clone(),
                detail: format!("connect to {address} timed out"),
            }),
            Some(Err(Failure::Connect(e) | Failure::Exchange(e))) => {
                Err(self.failed(format!("{address}: {}", causes(&*e))))
            }
        }
    }

    /// `request` over a direct connection: the most recently parked free one, else a new
    /// one; a reused connection found closed before the request was written gives way to a
    /// new one. The connection is parked again as soon as the response head arrived.
    async fn direct_request(
        &self,
        connector: &HttpsConnector<HttpConnector>,
        endpoint: &Endpoint,
        mut request: Request<Body>,
    ) -> Result<Response<Leased>, Failure> {
        if let Some(mut conn) = endpoint.idle.take()
            && conn.ready(self.connect_timeout).await
        {
            match conn.send(request).await {
                Ok(response) => {
                    endpoint.idle.park(conn);
                    return Ok(response);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(Failure::Exchange(e.into_error().into())),
                },
            }
        }
        // Boxed: opening (connect, TLS, handshake) is the rare path and its future is most of
        // this one's size, which every request's future would otherwise carry and move.
        let mut conn =
            Box::pin(Conn::open(connector, endpoint.origin.clone(), &endpoint.idle)).await.map_err(Failure::Connect)?;
        let response = conn.send(request).await.map_err(|e| Failure::Exchange(e.into_error().into()))?;
        endpoint.idle.park(conn);
        Ok(response)
    }

    fn failed(&self, detail: String) -> GatewayError {
        GatewayError::UpstreamFailed { upstream: self.name.clone(), detail }
    }
}

/// Resolves when an exchange's response head is overdue: `connect + response` from `start`, or
/// `response` after the end of the body `sent` is sending (that end counted no later than
/// `connect + body_timeout` from `start`), whichever is later.
///
/// One timer, which reads the body's end ([`BodyEndCell::ended_at`]) when it fires instead of
/// being woken by it: an exchange whose head comes in time (the usual case) registers one timer
/// and never re-arms it; while the body is still being sent it looks again every `response`.
/// It was a `join!` of a sleep with a body-end wait under a timeout followed by a sleep, three
/// timers and a `Notify` per request (callgrind, 2026-12-06: `docs/BENCHMARKS.md`).
async fn response_due(start: Instant, connect: Duration, response: Duration, sent: Option<(&BodyEndCell, Duration)>) {
    let sleep = tokio::time::sleep_until(start + connect + response);
    tokio::pin!(sleep);
    loop {
        sleep.as_mut().await;
        let Some((cell, body_timeout)) = sent else { return };
        let now = tokio::time::Instant::now();
        let cap = start + connect + body_timeout;
        let due = match cell.ended_at() {
            Some(end) => end.min(cap) + response,
            None => (now + response).min(cap + response),
        };
        if due <= now {
            return;
        }
        sleep.as_mut().reset(due);
    }
}

/// Why an exchange failed before a response head.
enum Failure {
    /// Opening the connection (TCP, TLS).
    Connect(BoxError),
    /// Writing the request or reading the response head.
    Exchange(BoxError),
}

/// Whether an I/O timeout is anywhere in `error`'s source chain.
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            return true;
        }
        next = e.source();
    }
    false
}

/// `error: cause: cause`, for the log.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        text.push_str(": ");
        text.push_str(&e.to_string());
        next = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::response_due;
    use crate::body::{BodyEnd, BodyEndCell};

    /// Whether `due` has resolved by now (paused time), polling it once. The first poll starts
    /// its clock, as the exchange's `select!` does at once.
    async fn overdue(due: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>) -> bool {
        tokio::select! {
            biased;
            () = due.as_mut() => true,
            () = std::future::ready(()) => false,
        }
    }

    const CONNECT: Duration = Duration::from_secs(1);
    const RESPONSE: Duration = Duration::from_secs(2);
    const BODY: Duration = Duration::from_secs(10);

    async fn step(seconds: f64) {
        tokio::time::advance(Duration::from_secs_f64(seconds)).await;
    }

    /// Asserts that `due` is not overdue just before `seconds` from now and is just after.
    async fn due_in(due: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>, seconds: f64) {
        step(seconds - 0.1).await;
        assert!(!overdue(due).await, "not due before {seconds} s");
        step(0.2).await;
        assert!(overdue(due).await, "due at {seconds} s");
    }

    #[tokio::test(start_paused = true)]
    async fn the_response_is_due_connect_plus_response_timeout_after_the_request() {
        let due = response_due(tokio::time::Instant::now(), CONNECT, RESPONSE, None);
        tokio::pin!(due);
        assert!(!overdue(&mut due).await);
        due_in(&mut due, 3.0).await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_response_is_due_a_response_timeout_after_the_body_ends() {
        let cell = BodyEndCell::new(tokio::time::Instant::now());
        let due = response_due(tokio::time::Instant::now(), CONNECT, RESPONSE, Some((&cell, BODY)));
        tokio::pin!(due);
        assert!(!overdue(&mut due).await);
        // Still sending at 3 s (connect + response): not due yet.
        step(4.0).await;
        assert!(!overdue(&mut due).await);
        cell.set(BodyEnd::Complete, 58);
        due_in(&mut due, 2.0).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_ends_early_leaves_the_first_deadline() {
        let cell = BodyEndCell::new(tokio::time::Instant::now());
        cell.set(BodyEnd::Complete, 0);
        let due = response_due(tokio::time::Instant::now(), CONNECT, RESPONSE, Some((&cell, BODY)));
        tokio::pin!(due);
        assert!(!overdue(&mut due).await);
        due_in(&mut due, 3.0).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_ends_is_counted_as_ended_at_connect_plus_body_timeout() {
        let cell = BodyEndCell::new(tokio::time::Instant::now());
        let due = response_due(tokio::time::Instant::now(), CONNECT, RESPONSE, Some((&cell, BODY)));
        tokio::pin!(due);
        assert!(!overdue(&mut due).await);
        // The timer looks again every response timeout while the body is open.
        for _ in 0..12 {
            step(1.0).await;
            assert!(!overdue(&mut due).await);
        }
        // Due at 1 + 10 + 2 s.
        due_in(&mut due, 1.0).await;
    }
}
