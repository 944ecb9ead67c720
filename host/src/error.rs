//! Gateway errors and the one place they become HTTP responses: RFC 9457
//! `application/problem+json` bodies with a stable `type` URI, a title, and no internal detail.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{Body, full};
use crate::plugin::PluginFailure;

/// What went wrong while serving one request, from the client's point of view.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No route matches host, path and method (404).
    #[error("no route matches the request")]
    NoRoute,
    /// The request is ambiguous or malformed before routing (400): a path that cannot be
    /// normalized, `Host` and authority disagreeing, a refused header name. The reason is
    /// safe to show.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request target is longer than the listener allows (414).
    #[error("request target longer than {limit} bytes")]
    UriTooLong {
        /// The limit, in bytes.
        limit: u64,
    },
    /// A fail-closed plugin step failed: 500, or 503 when the call was not made because the
    /// plugin's breaker is open or no instance was free. The failure is logged, never sent.
    #[error(transparent)]
    PluginFailed(PluginFailure),
    /// The request body is larger than the chain buffers (413).
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The request body did not arrive within the listener's body timeouts (408, RFC 9110
    /// §15.5.9); the connection is closed.
    #[error("request timeout: {0}")]
    RequestTimeout(String),
    /// The request body could not be read (400).
    #[error("request body could not be read: {0}")]
    BadBody(String),
    /// No connection to the upstream could be made, or it broke (502).
    #[error("upstream `{upstream}` failed: {detail}")]
    UpstreamFailed {
        /// Upstream name.
        upstream: String,
        /// Why, for the log.
        detail: String,
    },
    /// Every endpoint of the upstream is marked unhealthy by active checks or ejected (503).
    #[error("upstream `{upstream}` has no healthy endpoint")]
    NoHealthyUpstream {
        /// Upstream name.
        upstream: String,
    },
    /// A fail-closed logging step could not record the exchange (its audit record was not
    /// written, or the step failed), so the response was not sent (503).
    #[error("audit step `{plugin}` failed: {detail}")]
    AuditUnavailable {
        /// The step's plugin id.
        plugin: String,
        /// Why, for the log.
        detail: String,
    },
    /// The upstream did not connect or answer in time (504).
    #[error("upstream `{upstream}` timed out: {detail}")]
    UpstreamTimeout {
        /// Upstream name.
        upstream: String,
        /// Which timeout, for the log.
        detail: String,
    },
}

// === impl GatewayError ===

impl GatewayError {
    /// The status code sent for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            GatewayError::PluginFailed(f) if f.kind.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::PluginFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BadBody(_) => StatusCode::BAD_REQUEST,
            GatewayError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayError::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::NoHealthyUpstream { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::AuditUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The problem `type` slug; the full URI is `urn:portcullis:problem:<slug>`.
    pub fn slug(&self) -> &'static str {
        match self {
            GatewayError::NoRoute => "no-route",
            GatewayError::BadRequest(_) => "bad-request",
            GatewayError::UriTooLong { .. } => "uri-too-long",
            GatewayError::PluginFailed(f) if f.kind.is_unavailable() => "plugin-unavailable",
            GatewayError::PluginFailed(_) => "plugin-failed",
            GatewayError::BodyTooLarge { .. } => "body-too-large",
            GatewayError::BadBody(_) => "bad-body",
            GatewayError::RequestTimeout(_) => "request-timeout",
            GatewayError::UpstreamFailed { .. } => "upstream-failed",
            GatewayError::UpstreamTimeout { .. } => "upstream-timeout",
            GatewayError::NoHealthyUpstream { .. } => "no-healthy-upstream",
            GatewayError::AuditUnavailable { .. } => "audit-unavailable",
        }
    }

    /// What the client is told: safe to disclose, no internal detail.
    fn public_detail(&self) -> String {
        match self {
            GatewayError::NoRoute => "No route of this gateway matches the request.".into(),
            GatewayError::BadRequest(why) => format!("The request is malformed: {why}."),
            GatewayError::UriTooLong { limit } => format!("The request target exceeds {limit} bytes."),
            GatewayError::PluginFailed(f) if f.kind.is_unavailable() => {
                "A policy plugin is temporarily unavailable.".into()
            }
            GatewayError::PluginFailed(_) => "A policy plugin failed while handling the request.".into(),
            GatewayError::BodyTooLarge { limit } => format!("The request body exceeds {limit} bytes."),
            GatewayError::BadBody(_) => "The request body could not be read.".into(),
            GatewayError::RequestTimeout(_) => "The request body was not received in time.".into(),
            GatewayError::UpstreamFailed { .. } => "The upstream service could not be reached.".into(),
            GatewayError::UpstreamTimeout { .. } => "The upstream service did not answer in time.".into(),
            GatewayError::NoHealthyUpstream { .. } => {
                "No healthy instance of the upstream service is available.".into()
            }
            GatewayError::AuditUnavailable { .. } => {
                "The request could not be recorded in the audit trail, so its response is withheld.".into()
            }
        }
    }

    /// The response for this error, carrying the request id.
    pub fn into_response(self, request_id: &str) -> Response<Body> {
        let status = self.status();
        problem(status, self.slug(), &self.public_detail(), request_id, None)
    }
}

/// An RFC 9457 problem response: `type` is `urn:portcullis:problem:<slug>`, `title` the status'
/// reason phrase, plus `detail`, `status`, the `request_id` and any `extra` members.
pub fn problem(
    status: StatusCode,
    slug: &str,
    detail: &str,
    request_id: &str,
    extra: Option<(&str, serde_json::Value)>,
) -> Response<Body> {
    let mut doc = serde_json::json!({
        "type": format!("urn:portcullis:problem:{slug}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
        "request_id": request_id,
    });
    if let (Some((key, value)), Some(map)) = (extra, doc.as_object_mut()) {
        map.insert(key.to_owned(), value);
    }
    let mut response = Response::new(full(Bytes::from(doc.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    response
}
