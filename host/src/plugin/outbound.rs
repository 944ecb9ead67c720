//! The host side of the `http-client` capability: outbound HTTP(S) from plugins, to the origins
//! on each plugin's allow-list only, with bounded time and response size.
//!
//! The client is hyper-util's pooled client over rustls (ring, webpki roots; TLS 1.2 and 1.3,
//! SNI and hostname verification). Redirects are not followed: a 3xx is returned to the plugin
//! as is, so a redirect can never lead outside the allow-list.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::bindings::portcullis::plugin::http_client::{HttpError, OutboundRequest, OutboundResponse};
use super::bindings::portcullis::plugin::types::Header;
pub use crate::config::Origin;
use crate::telemetry::Telemetry;

/// Largest response body returned to a plugin, in bytes (1 MiB).
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Largest request body a plugin may send, in bytes (64 KiB).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Total time for one exchange when the plugin asks for none, in ms.
pub const DEFAULT_TIMEOUT_MS: u32 = 5_000;
/// Longest total time a plugin may ask for, in ms.
pub const MAX_TIMEOUT_MS: u32 = 10_000;
/// Time allowed to establish a connection (TCP and TLS), in ms.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Outbound requests one plugin call may make.
pub const MAX_REQUESTS_PER_CALL: u32 = 4;

/// The shared outbound client.
#[derive(Debug, Clone)]
pub struct Outbound {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

// === impl Outbound ===

impl Outbound {
    /// A client with a connection pool (idle connections closed after 30 s).
    ///
    /// Errors: rustls refuses its safe default protocol versions with the ring provider (a
    /// build problem, not a runtime condition).
    pub fn new() -> Result<Self, rustls::Error> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_millis(CONNECT_TIMEOUT_MS)));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Ok(Outbound { client })
    }

    /// Sends `request` if its origin is in `allowed`, and reads the whole response.
    ///
    /// Errors, as the plugin sees them: `not-allowed` (origin not on the list), `invalid-request`
    /// (bad method, URL, header, or a body over [`MAX_REQUEST_BYTES`]), `connect` (DNS, TCP or
    /// TLS failure, or the connection broke), `timeout` (past the request's `timeout-ms`, default
    /// [`DEFAULT_TIMEOUT_MS`], capped at [`MAX_TIMEOUT_MS`]), `too-large` (a response body over
    /// [`MAX_RESPONSE_BYTES`]).
    /// With `credential` (a header written from a secret), the request carries it, replacing
    /// any field of that name the plugin set. With `trace`, the request carries that span's
    /// `traceparent` (W3C Trace Context), replacing any the plugin set.
    pub async fn send(
        &self,
        allowed: &[Origin],
        request: OutboundRequest,
        credential: Option<crate::secrets::SecretHeader>,
        trace: Option<(&Telemetry, &opentelemetry::Context)>,
    ) -> Result<OutboundResponse, HttpError> {
        let uri: Uri = request.url.parse().map_err(|e| HttpError::InvalidRequest(format!("bad URL: {e}")))?;
        let origin = Origin::of(&uri)
            .ok_or_else(|| HttpError::InvalidRequest("the URL must be absolute http or https".into()))?;
        if !allowed.contains(&origin) {
            return Err(HttpError::NotAllowed(format!("{origin} is not in this plugin's allowed_origins")));
        }
        let method = Method::from_bytes(request.method.as_bytes())
            .map_err(|_| HttpError::InvalidRequest(format!("bad method {:?}", request.method)))?;
        if request.body.len() > MAX_REQUEST_BYTES {
            return Err(HttpError::InvalidRequest(format!("request body over {MAX_REQUEST_BYTES} bytes")));
        }
        let mut builder = Request::builder().method(method).uri(uri);
        for h in &request.headers {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| HttpError::InvalidRequest(format!("bad header name {:?}", h.name)))?;
            if crate::proxy::headers::is_hop_by_hop(&name)
                || name == http::header::HOST
                || name == http::header::CONTENT_LENGTH
            {
                continue;
            }
            let value = HeaderValue::from_str(&h.value)
                .map_err(|_| HttpError::InvalidRequest(format!("bad value for header {}", h.name)))?;
            builder = builder.header(name, value);
        }
        let mut outbound =
            builder.body(Full::new(Bytes::from(request.body))).map_err(|e| HttpError::InvalidRequest(e.to_string()))?;
        if let Some(credential) = credential {
            outbound.headers_mut().insert(credential.name, credential.value);
        }
        if let Some((telemetry, cx)) = trace {
            telemetry.inject(cx, outbound.headers_mut());
        }
        let timeout =
            Duration::from_millis(u64::from(request.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS).min(MAX_TIMEOUT_MS)));
        let exchange = async {
            let response = self.client.request(outbound).await.map_err(|e| HttpError::Connect(error_chain(&e)))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES).collect().await.map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    HttpError::TooLarge
                } else {
                    HttpError::Connect(format!("reading the response: {e}"))
                }
            })?;
            let headers = parts
                .headers
                .iter()
                .map(|(n, v)| Header { name: n.as_str().to_owned(), value: crate::proxy::headers::value_text(v) })
                .collect();
            Ok(OutboundResponse { status: parts.status.as_u16(), headers, body: body.to_bytes().to_vec() })
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| HttpError::Timeout)?
    }
}

/// The host of an absolute URL, or `-` (a span attribute; never the path or query).
pub fn host_of(url: &str) -> String {
    url.parse::<Uri>().ok().and_then(|u| u.host().map(str::to_owned)).unwrap_or_else(|| "-".to_owned())
}

/// The error and its sources, `a: b: c`, for the plugin's message.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_outside_the_allow_list_are_refused_before_any_connection() {
        let outbound = Outbound::new().unwrap();
        let allowed = [Origin::parse("http://127.0.0.1:9").unwrap()];
        let request = |url: &str| OutboundRequest {
            method: "GET".into(),
            url: url.into(),
            headers: vec![],
            body: vec![],
            timeout_ms: Some(100),
        };
        assert!(matches!(
            outbound.send(&allowed, request("http://127.0.0.2:9/"), None, None).await,
            Err(HttpError::NotAllowed(_))
        ));
        assert!(matches!(
            outbound.send(&allowed, request("https://127.0.0.1:9/"), None, None).await,
            Err(HttpError::NotAllowed(_))
        ));
        assert!(matches!(
            outbound.send(&allowed, request("/relative"), None, None).await,
            Err(HttpError::InvalidRequest(_))
        ));
        assert!(matches!(
            outbound.send(&allowed, request("http://127.0.0.1:9/"), None, None).await,
            Err(HttpError::Connect(_))
        ));
    }
}
