//! Listeners: accept connections and serve HTTP/1.1 and HTTP/2 (h2c, prior knowledge or
//! upgrade-free sniffing by hyper-util's `auto` builder), with hyper's timer installed so the
//! header-read timeout applies (FIELD-NOTES: without a timer it silently does nothing).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::model::ListenerConfig;
use crate::proxy::{self, ConnInfo};
use crate::snapshot::Snapshot;

/// How long in-flight requests may take to finish after shutdown begins.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 concurrent streams per connection (Envoy's edge recommendation).
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// HTTP/2 initial stream flow-control window, in bytes (64 KiB, Envoy's edge value).
pub const H2_STREAM_WINDOW_BYTES: u32 = 64 * 1024;
/// HTTP/2 initial connection flow-control window, in bytes (1 MiB, Envoy's edge value).
pub const H2_CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;

/// Accepts on `listener` until `shutdown` turns true, then drains in-flight connections for up
/// to [`DRAIN_TIMEOUT`]. Each request is served with the snapshot current when it arrived.
pub async fn serve(
    listener: TcpListener,
    config: &ListenerConfig,
    snapshot: Arc<ArcSwap<Snapshot>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let header_bytes = usize::try_from(config.max_request_header_bytes).unwrap_or(usize::MAX);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.header_read_timeout_ms))
        .max_headers(usize::try_from(config.max_request_headers).unwrap_or(100))
        .max_buf_size(header_bytes.max(8192))
        .keep_alive(true);
    // hyper keeps its HTTP/2 rapid-reset (CVE-2023-44487) protection on by default.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(H2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(H2_CONNECTION_WINDOW_BYTES)
        .max_header_list_size(u32::try_from(config.max_request_header_bytes).unwrap_or(u32::MAX));
    let connections = Arc::new(tokio::sync::Semaphore::new(usize::try_from(config.max_connections).unwrap_or(usize::MAX)));
    let graceful = GracefulShutdown::new();
    let max_body = config.max_buffered_body_bytes;
    let hygiene = Arc::new(proxy::hygiene::Hygiene::new(config));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = config.max_connections, "connection refused: listener at max_connections");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(ConnInfo {
            peer,
            scheme: "http",
            max_buffered_body_bytes: max_body,
            max_uri_bytes: config.max_uri_bytes,
            hygiene: hygiene.clone(),
        });
        let snapshot = snapshot.clone();
        let service = service_fn(move |request| {
            let (snapshot, conn) = (snapshot.load_full(), conn.clone());
            async move { Ok::<_, Infallible>(proxy::handle(request, snapshot, conn).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = watched.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("drain deadline reached; closing remaining connections");
    }
}
