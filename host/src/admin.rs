//! The admin listener: `GET /healthz` (the process is alive) and `GET /readyz` (a snapshot is
//! loaded and every listener is bound). Both answer JSON. Bound to loopback by default.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{Body, full};
use crate::error::problem;

/// Serves the admin endpoints until `shutdown` turns true.
pub async fn serve(listener: TcpListener, ready: Arc<AtomicBool>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let ready = ready.clone();
        let service = service_fn(move |request| {
            let ready = ready.clone();
            async move { Ok::<_, Infallible>(route(&request, &ready)) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route(request: &Request<Incoming>, ready: &AtomicBool) -> Response<Body> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, r#"{"status":"ok"}"#),
        (&Method::GET, "/readyz") if ready.load(Ordering::Acquire) => json(StatusCode::OK, r#"{"status":"ready"}"#),
        (&Method::GET, "/readyz") => json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"starting"}"#),
        _ => problem(StatusCode::NOT_FOUND, "no-route", "Unknown admin endpoint.", "-", None),
    }
}

fn json(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    response
}
