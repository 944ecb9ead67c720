//! Quickstart companions for Portcullis.
//!
//! - [`serve_echo`]: an upstream that answers every request with the request it received as
//!   JSON (`method`, `path`, `query`, `headers`, `body`), so a user sees what the gateway
//!   forwarded, injected identity headers included. The end-to-end tests use it too.
//! - `mint-token` (binary): signs demo JWTs with the quickstart's demo-only key.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Serves the echo upstream on `listener` (HTTP/1.1 and h2c) until the task is dropped.
pub async fn serve_echo(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(stream), service_fn(echo)).await;
        });
    }
}

/// Answers with the request as JSON (`method`, `version`, `path`, `query`, `headers`, `body`).
/// Header values are arrays, in the order received.
pub async fn echo(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        let entry = headers.entry(name.as_str()).or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(values) = entry {
            values.push(String::from_utf8_lossy(value.as_bytes()).into_owned().into());
        }
    }
    let doc = serde_json::json!({
        "method": parts.method.as_str(),
        "version": format!("{:?}", parts.version),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let mut response = Response::new(Full::new(Bytes::from(serde_json::to_vec_pretty(&doc).unwrap_or_default())));
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    Ok(response)
}
