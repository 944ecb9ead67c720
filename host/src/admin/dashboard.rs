//! The operator dashboard on the admin listener: one static page (`GET /`) with its script,
//! style sheet and the vendored uPlot charting library (`/dashboard/…`, see
//! `dashboard/vendor/README.md`), compiled into the binary. The page holds no data: its script
//! reads `/routes`, `/plugins`, `/status`, `/reloads` and `/metrics` every 2 s and shows
//! routes with their chains, each plugin's digest, breaker, failures, mean call latency and
//! decisions, upstream endpoint health, the reload history with errors, and request rates per
//! route. It is read-only: with an admin token configured, the page asks for it (kept in the
//! tab's `sessionStorage`) and sends it as a bearer token; only then does it offer `POST
//! /reload`. Served with a Content-Security-Policy that allows this origin's scripts, styles
//! and fetches only (no inline script, no CDN), so text from configurations and plugins can
//! only ever be text.

use bytes::Bytes;
use http::{HeaderValue, Response, header};

use crate::body::{Body, full};

const INDEX: &str = include_str!("dashboard/index.html");
const APP: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");
const UPLOT: &str = include_str!("dashboard/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("dashboard/vendor/uPlot.min.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The response for dashboard file `path` (`/`, `/dashboard/app.js`, …); none for any other
/// path.
pub(super) fn asset(path: &str) -> Option<Response<Body>> {
    let (body, content_type) = match path {
        "/" | "/dashboard/" => (INDEX, "text/html; charset=utf-8"),
        "/dashboard/app.js" => (APP, "text/javascript; charset=utf-8"),
        "/dashboard/style.css" => (STYLE, "text/css; charset=utf-8"),
        "/dashboard/uPlot.iife.min.js" => (UPLOT, "text/javascript; charset=utf-8"),
        "/dashboard/uPlot.min.css" => (UPLOT_CSS, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut response = Response::new(full(Bytes::from_static(body.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(response)
}
