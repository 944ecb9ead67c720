//! Listeners: accept connections, terminate TLS when configured, and serve HTTP/1.1 and HTTP/2.
//!
//! - Clear text: hyper-util's `auto` builder sniffs the HTTP/2 preface (h2c with prior
//!   knowledge) and otherwise speaks HTTP/1.1.
//! - TLS: the rustls configuration is read from the serving snapshot at each handshake (so
//!   reloaded certificates apply to new connections), and the protocol follows the ALPN result:
//!   `h2` is HTTP/2 only, anything else HTTP/1.1 only (FIELD-NOTES: do not sniff over TLS).
//! - The request head's read time is bounded here, not by hyper's header-read timer: that
//!   timer costs an allocation and a timer-wheel insertion and removal on every request
//!   (about 0.7 k instructions, callgrind; docs/BENCHMARKS.md entry 46), so it is turned off
//!   and the connection's one deadline timer below covers the same waits.
//! - Each connection is driven here rather than by hyper-util's `GracefulShutdown`, so that one
//!   place bounds every stage of it: a connection that starts no request within
//!   `header_read_timeout_ms` (silent, stuck in protocol detection, a stalled first head, or
//!   an HTTP/2 client that sends its preface and SETTINGS and nothing else) is closed; the
//!   keep-alive idle timeout (for HTTP/1.1 also bounded by `header_read_timeout_ms`: the wait
//!   for a next head, a stalled partial head included) and the drain both call hyper's
//!   `graceful_shutdown` (HTTP/1.1: close now when between requests, else after the response
//!   in progress; HTTP/2: GOAWAY, then let open streams finish), and a connection still open
//!   `drain_timeout_ms` later (a client that never acknowledges GOAWAY or PING) is closed hard.
//!   A request counts as in flight until its response body ended or was dropped, so a long
//!   download is not taken for an idle connection.
//! - `max_connections` caps a listener, `max_connections_per_ip` one client IP on it (trusted
//!   proxies exempt).

use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::model::ListenerConfig;
use crate::metrics::{HandshakeLabels, ListenerLabels};
use crate::proxy::{self, ConnInfo};
use crate::snapshot::Snapshot;
use crate::wake::OnWake;

/// HTTP/2 concurrent streams per connection (Envoy's edge recommendation).
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// HTTP/2 initial stream flow-control window, in bytes (64 KiB, Envoy's edge value).
pub const H2_STREAM_WINDOW_BYTES: u32 = 64 * 1024;
/// HTTP/2 initial connection flow-control window, in bytes (1 MiB, Envoy's edge value).
pub const H2_CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;

/// The three ways a connection is served: sniffing (clear text), and one protocol each for
/// the ALPN results of a TLS handshake.
struct Builders {
    sniff: auto::Builder<TokioExecutor>,
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
}

/// Per-listener settings every connection task needs.
struct Listener {
    index: usize,
    /// The configured address, as the `listener` metric label.
    label: String,
    builders: Builders,
    snapshot: Arc<ArcSwap<Snapshot>>,
    hygiene: Arc<proxy::hygiene::Hygiene>,
    max_buffered_body_bytes: u64,
    max_uri_bytes: u64,
    body_idle_timeout: Duration,
    body_timeout: Duration,
    keep_alive_timeout: Duration,
    handshake_timeout: Duration,
    /// How long a new connection may go without starting a request, and an HTTP/1.1
    /// connection between requests (`header_read_timeout_ms`).
    header_read_timeout: Duration,
    /// How long a connection asked to close may linger.
    drain_timeout: Duration,
}

/// When a connection last finished a request, and how many it has in flight.
#[derive(Default)]
struct Activity {
    /// Requests started on the connection, ever.
    started: AtomicU64,
    in_flight: AtomicUsize,
    /// Milliseconds since the connection was accepted, when the last request finished.
    last_done_ms: AtomicU64,
    /// Whether the connection speaks HTTP/2 (then a request head has no read time of its own
    /// to bound between requests: streams are framed).
    http2: AtomicBool,
}

/// One request in flight on a connection, from its head to the end of its response body
/// ([`proxy::handle`] keeps it until then); dropping it (the body ended, or the request or
/// its response was dropped because the client went away) records the time.
pub(crate) struct InFlight {
    activity: Arc<Activity>,
    accepted: Instant,
    /// When the request ended, if the exchange said so ([`InFlight::end_at`]); otherwise the
    /// clock is read when this is dropped.
    ended: Option<Instant>,
}

impl InFlight {
    fn start(activity: Arc<Activity>, accepted: Instant) -> Self {
        activity.started.fetch_add(1, Ordering::AcqRel);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight { activity, accepted, ended: None }
    }

    /// Ends the request at `now`, a clock reading the caller already made (one fewer per
    /// request).
    pub(crate) fn end_at(mut self, now: Instant) {
        self.ended = Some(now);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let ended = self.ended.unwrap_or_else(Instant::now);
        let done_ms = u64::try_from(ended.saturating_duration_since(self.accepted).as_millis()).unwrap_or(u64::MAX);
        self.activity.last_done_ms.store(done_ms, Ordering::Release);
        self.activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts on `listener` (the `index`th of the configuration) until `shutdown` turns true, then
/// drains: open connections are asked to finish (see the module docs) and are closed when
/// `drain_timeout_ms` is up. Each request is served with the snapshot current when it arrived.
pub async fn serve(
    listener: TcpListener,
    index: usize,
    config: &ListenerConfig,
    snapshot: Arc<ArcSwap<Snapshot>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let state = Arc::new(Listener {
        index,
        label: config.address.to_string(),
        builders: builders(config),
        snapshot,
        hygiene: Arc::new(proxy::hygiene::Hygiene::new(config)),
        max_buffered_body_bytes: config.max_buffered_body_bytes,
        max_uri_bytes: config.max_uri_bytes,
        body_idle_timeout: Duration::from_millis(config.body_idle_timeout_ms),
        body_timeout: Duration::from_millis(config.body_timeout_ms),
        keep_alive_timeout: Duration::from_millis(config.keep_alive_timeout_ms),
        handshake_timeout: Duration::from_millis(config.tls.as_ref().map_or(10_000, |t| t.handshake_timeout_ms)),
        header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
        drain_timeout: Duration::from_millis(config.drain_timeout_ms),
    });
    let per_ip = PerIp::new(config.max_connections_per_ip);
    let tls = config.tls.is_some();
    let connections =
        Arc::new(tokio::sync::Semaphore::new(usize::try_from(config.max_connections).unwrap_or(usize::MAX)));
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
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
        let slot = if state.hygiene.trusts(peer.ip()) { Ok(None) } else { per_ip.take(peer.ip()) };
        let Ok(ip_slot) = slot else {
            tracing::warn!(%peer, limit = ?config.max_connections_per_ip, "connection refused: client IP at max_connections_per_ip");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (state, shutdown) = (state.clone(), shutdown.clone());
        let metrics = state.snapshot.load().metrics.clone();
        let open =
            metrics.listener_connections.get_or_create(&ListenerLabels { listener: state.label.clone() }).clone();
        open.inc();
        tasks.spawn(async move {
            let (_permit, _ip_slot) = (permit, ip_slot);
            let _open = scopeguard(move || {
                open.dec();
            });
            if tls {
                serve_tls(stream, peer, state, shutdown).await;
            } else {
                let conn = state.conn_info(peer, "http", None);
                drive(&state.builders.sniff, TokioIo::new(stream), state.clone(), conn, shutdown).await;
            }
        });
    }
    drop(listener);
    let drain = Duration::from_millis(config.drain_timeout_ms);
    let drained = tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(open = tasks.len(), "drain deadline reached; closing the remaining connections");
        tasks.shutdown().await;
    }
}

fn builders(config: &ListenerConfig) -> Builders {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let header_bytes = usize::try_from(config.max_request_header_bytes).unwrap_or(usize::MAX);
    builder
        .http1()
        // Bounded by `drive` instead, without a timer per request (the module docs).
        .header_read_timeout(None)
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
    Builders { http1: builder.clone().http1_only(), http2: builder.clone().http2_only(), sniff: builder }
}

// === impl Listener ===

impl Listener {
    fn conn_info(
        &self,
        peer: std::net::SocketAddr,
        scheme: &'static str,
        client_cert: Option<proxy::ClientCert>,
    ) -> Arc<ConnInfo> {
        Arc::new(ConnInfo {
            peer,
            peer_ip: proxy::hygiene::peer_text(peer.ip()),
            scheme,
            client_cert,
            max_buffered_body_bytes: self.max_buffered_body_bytes,
            max_uri_bytes: self.max_uri_bytes,
            body_idle_timeout: self.body_idle_timeout,
            body_timeout: self.body_timeout,
            hygiene: self.hygiene.clone(),
        })
    }
}

/// Runs the TLS handshake (bounded by `handshake_timeout_ms`) with the snapshot's server
/// configuration, then serves the protocol ALPN chose.
async fn serve_tls(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    state: Arc<Listener>,
    shutdown: watch::Receiver<bool>,
) {
    let Some(config) = state.snapshot.load().listener_tls.get(state.index).cloned().flatten() else {
        tracing::error!(%peer, "listener has TLS settings but the snapshot has no TLS configuration");
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshake = tokio::time::timeout(state.handshake_timeout, acceptor.accept(stream)).await;
    let result = match &handshake {
        Ok(Ok(_)) => "ok",
        Ok(Err(_)) => "failed",
        Err(_) => "timeout",
    };
    let labels = HandshakeLabels { listener: state.label.clone(), result: result.to_owned() };
    state.snapshot.load().metrics.tls_handshakes.get_or_create(&labels).inc();
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let (_, session) = stream.get_ref();
    let h2 = session.alpn_protocol() == Some(b"h2");
    let client_cert = session.peer_certificates().and_then(|chain| chain.first()).map(|der| {
        let facts = crate::tls::describe(der);
        proxy::ClientCert { subject: facts.subject, dns_names: facts.dns_names, uris: facts.uris, sha256: facts.sha256 }
    });
    let conn = state.conn_info(peer, "https", client_cert);
    let builder = if h2 { &state.builders.http2 } else { &state.builders.http1 };
    drive(builder, TokioIo::new(stream), state.clone(), conn, shutdown).await;
}

/// Serves one connection until it ends, asking it to finish gracefully when it has been idle
/// for `keep_alive_timeout_ms` or when shutdown begins.
async fn drive<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    state: Arc<Listener>,
    conn: Arc<ConnInfo>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let accepted = Instant::now();
    let activity = Arc::new(Activity::default());
    let tracked = activity.clone();
    let snapshot = state.snapshot.clone();
    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let (snapshot, conn) = (snapshot.load_full(), conn.clone());
        if request.version() == http::Version::HTTP_2 {
            tracked.http2.store(true, Ordering::Relaxed);
        }
        let in_flight = InFlight::start(tracked.clone(), accepted);
        async move { Ok::<_, Infallible>(proxy::handle(request, snapshot, conn, in_flight).await) }
    });
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let limits = Waits { keep_alive: state.keep_alive_timeout, header_read: state.header_read_timeout };
    let first_request_due = accepted + state.header_read_timeout;
    // When a connection asked to close is closed regardless.
    let mut closing: Option<Instant> = None;
    // One timer for the connection's next deadline (no first request, idle, drain), armed
    // first at the earliest a new connection can have, then only when it fired or the drain
    // began, never per request: a finished request moves the idle deadline later, which the
    // timer finds when it fires at the earlier one, and re-arms (callgrind, 2026-12-07: a
    // reset per request was a timer-wheel move and a poll; docs/BENCHMARKS.md entry 46). It
    // and the shutdown signal are polled only when they woke (`OnWake`, entry 45).
    let first = first_request_due.min(limits.idle_until(&activity, accepted, accepted));
    let mut timer = pin!(OnWake::new(tokio::time::sleep_until(first.into())));
    let mut asked_to_close = pin!(OnWake::new(shutdown.changed()));
    loop {
        tokio::select! {
            biased;
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = asked_to_close.as_mut(), if closing.is_none() => {
                connection.as_mut().graceful_shutdown();
                let at = Instant::now() + state.drain_timeout;
                closing = Some(at);
                if at < timer.get_ref().deadline().into_std() {
                    timer.as_mut().rearm().reset(at.into());
                }
            }
            () = timer.as_mut() => {
                let now = Instant::now();
                let started = activity.started.load(Ordering::Acquire) > 0;
                let idle_until = limits.idle_until(&activity, accepted, now);
                let next = if let Some(at) = closing {
                    if now >= at {
                        tracing::debug!(%peer, "closing a connection still open drain_timeout_ms after it was asked to close");
                        return;
                    }
                    at
                } else if !started && now >= first_request_due {
                    tracing::debug!(%peer, "closing a connection that started no request within header_read_timeout_ms");
                    return;
                } else if activity.in_flight.load(Ordering::Acquire) == 0 && idle_until <= now {
                    // Also before a first request, when the keep-alive is the shorter time:
                    // the deadline is past, so re-arming at it would fire at once, forever.
                    tracing::debug!(%peer, "closing a connection idle past keep_alive_timeout_ms (HTTP/1.1: or header_read_timeout_ms)");
                    connection.as_mut().graceful_shutdown();
                    let at = now + state.drain_timeout;
                    closing = Some(at);
                    at
                } else if started {
                    idle_until
                } else {
                    first_request_due.min(idle_until)
                };
                timer.as_mut().rearm().reset(next.into());
            }
        }
    }
}

/// How long a connection may wait between requests.
#[derive(Debug, Clone, Copy)]
struct Waits {
    /// `keep_alive_timeout_ms`.
    keep_alive: Duration,
    /// `header_read_timeout_ms`, which also bounds an HTTP/1.1 connection's wait for (and
    /// read of) its next request head.
    header_read: Duration,
}

impl Waits {
    /// When the connection counts as idle: its idle time (`keep_alive`, for HTTP/1.1 at most
    /// `header_read`) after its last request ended (or after it was `accepted`), or, while a
    /// request is in flight and that time is past, that long from `now` (its idle time counts
    /// from that request's end).
    fn idle_until(self, activity: &Activity, accepted: Instant, now: Instant) -> Instant {
        let wait = if activity.http2.load(Ordering::Relaxed) {
            self.keep_alive
        } else {
            self.keep_alive.min(self.header_read)
        };
        let at = accepted + Duration::from_millis(activity.last_done_ms.load(Ordering::Acquire)) + wait;
        if activity.in_flight.load(Ordering::Acquire) > 0 && at <= now { now + wait } else { at }
    }
}

/// Open connections per client IP, against `max_connections_per_ip`.
struct PerIp {
    limit: Option<u64>,
    open: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, u64>>>,
}

/// One connection's place in [`PerIp`]; given back when dropped.
struct IpSlot {
    ip: std::net::IpAddr,
    open: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, u64>>>,
}

// === impl PerIp ===

impl PerIp {
    fn new(limit: Option<u64>) -> Self {
        PerIp { limit, open: Arc::default() }
    }

    /// A slot for a connection from `ip`, or `Err` when `ip` is at the limit. Without a
    /// limit nothing is counted.
    fn take(&self, ip: std::net::IpAddr) -> Result<Option<IpSlot>, ()> {
        let Some(limit) = self.limit else { return Ok(None) };
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= limit {
            return Err(());
        }
        *count += 1;
        Ok(Some(IpSlot { ip, open: self.open.clone() }))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Runs `f` when dropped (here: when a connection task ends, however it ends).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
