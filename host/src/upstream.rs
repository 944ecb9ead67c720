//! Upstreams: a named set of endpoints, chosen round robin, reached through hyper-util's pooled
//! client with keep-alive, a connect timeout and a response timeout; over HTTP/1.1 or HTTP/2,
//! in clear text or TLS (hyper-rustls, see [`crate::tls::client_config`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;
use crate::config::model::{UpstreamConfig, UpstreamProtocol};
use crate::error::GatewayError;

/// One upstream.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    endpoints: Vec<Authority>,
    next: AtomicUsize,
    scheme: Scheme,
    client: Client<HttpsConnector<HttpConnector>, Body>,
    connect_timeout: Duration,
    response_timeout: Duration,
}

// === impl Upstream ===

impl Upstream {
    /// Builds the upstream and its connection pool: TLS with `tls` when given (its ALPN says
    /// `h2` or `http/1.1`), clear text otherwise; HTTP/2 uses prior knowledge in clear text.
    /// Endpoints were checked when the configuration was validated; unparsable ones are
    /// skipped.
    pub fn new(name: &str, config: &UpstreamConfig, tls: Option<rustls::ClientConfig>) -> Self {
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
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
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_millis(config.pool_idle_timeout_ms))
            .pool_max_idle_per_host(config.pool_max_idle_per_endpoint)
            .http2_only(http2)
            .timer(TokioTimer::new())
            .build(connector);
        Upstream {
            name: name.to_owned(),
            endpoints: config.endpoints.iter().filter_map(|e| e.parse().ok()).collect(),
            next: AtomicUsize::new(0),
            scheme,
            client,
            connect_timeout,
            response_timeout: Duration::from_millis(config.response_timeout_ms),
        }
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next endpoint, round robin.
    pub fn pick(&self) -> &Authority {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len().max(1);
        &self.endpoints[i]
    }

    /// Sends `request` (its URI is rewritten to `endpoint`, keeping path and query) and waits
    /// for the response head.
    ///
    /// Errors: [`GatewayError::UpstreamTimeout`] when connecting or the response head takes
    /// longer than configured; [`GatewayError::UpstreamFailed`] when the connection is refused
    /// or breaks.
    pub async fn send(&self, endpoint: Authority, mut request: Request<Body>) -> Result<Response<Incoming>, GatewayError> {
        let path = request.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(endpoint.clone());
        parts.path_and_query = Some(path);
        *request.uri_mut() = Uri::from_parts(parts).map_err(|e| self.failed(e.to_string()))?;
        *request.version_mut() = http::Version::HTTP_11;

        let total = self.connect_timeout + self.response_timeout;
        match tokio::time::timeout(total, self.client.request(request)).await {
            Err(_) => Err(GatewayError::UpstreamTimeout {
                upstream: self.name.clone(),
                detail: format!("no response head from {endpoint} within {} ms", total.as_millis()),
            }),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) if e.is_connect() && timed_out(&e) => Err(GatewayError::UpstreamTimeout {
                upstream: self.name.clone(),
                detail: format!("connect to {endpoint} timed out"),
            }),
            Ok(Err(e)) => Err(self.failed(format!("{endpoint}: {}", causes(&e)))),
        }
    }

    fn failed(&self, detail: String) -> GatewayError {
        GatewayError::UpstreamFailed { upstream: self.name.clone(), detail }
    }
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
