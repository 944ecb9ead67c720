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

/// Accepts on `listener` until `shutdown` turns true, then drains in-flight connections for up
/// to [`DRAIN_TIMEOUT`]. Each request is served with the snapshot current when it arrived.
pub async fn serve(
    listener: TcpListener,
    config: &ListenerConfig,
    snapshot: Arc<ArcSwap<Snapshot>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.header_read_timeout_ms))
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(100);
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
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(ConnInfo { peer, scheme: "http", max_buffered_body_bytes: max_body, hygiene: hygiene.clone() });
        let snapshot = snapshot.clone();
        let service = service_fn(move |request| {
            let (snapshot, conn) = (snapshot.load_full(), conn.clone());
            async move { Ok::<_, Infallible>(proxy::handle(request, snapshot, conn).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
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
