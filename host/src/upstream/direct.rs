//! The gateway's own HTTP/1.1 connections to an endpoint: a per-endpoint LIFO list that a
//! request takes a connection from and gives it back to as soon as its response head arrived.
//!
//! Why not hyper-util's pooled client for these: it hands every connection back to a shared
//! pool through a task it spawns per request and a channel hop, about 12.5 k instructions and
//! 9 heap allocations per request over a dedicated connection in the yardstick
//! (`tests/examples/yardstick.rs`, numbers in `docs/BENCHMARKS.md`). Here a request pops the
//! most recently parked connection that can take a request now (`SendRequest::is_ready`: its
//! last response body was read to the end), sends, and parks it again at once, still reading
//! that body; the next request finds it ready or takes the one before. No task is spawned per
//! request and no channel hop is made; the upstream connection runs on its own task (hyper's
//! client `Connection`), which the yardstick measured as cheaper than driving both
//! connections from the request's task.
//!
//! Why shared and not held per client connection (the first version: each client connection
//! kept one upstream connection per endpoint): `bench/ab.py` found that this wins 6–7% of
//! throughput on the five-step chain (60.5 against 65.1 µs of server CPU per request), and
//! no less without plugins. With 50 client connections each holding its own, every request
//! ran on a connection untouched for 50 requests (cold caches, in hyper and in the kernel);
//! the LIFO list keeps a few connections hot.
//!
//! What stays with the pooled client ([`super::Upstream`]): HTTP/2 upstreams, and health
//! checks.
//!
//! Lifetimes: a connection is *leased* from when a request takes it until that request's
//! response body is dropped (at its end, or early when the client went away, in which case
//! hyper closes the connection); it is *parked* from then on. A connection parked longer than
//! `pool_idle_timeout_ms` is closed by its own task; one the endpoint closed is skipped when
//! found. At most `pool_max_idle_per_endpoint` connections are kept in an endpoint's list
//! (those still reading a body count); more are closed.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tower_service::Service;

use crate::body::{Body, BoxError};
use crate::wake::OnWake;

/// An endpoint's parked connections, newest last.
pub(super) struct Idle {
    conns: Mutex<Vec<Conn>>,
    /// `pool_max_idle_per_endpoint`.
    max: usize,
    /// `pool_idle_timeout_ms`.
    timeout: Duration,
}

/// One HTTP/1.1 connection to an endpoint. It does not point back at its endpoint's list
/// (which holds it): an upstream replaced by a reload frees its list and closes what was
/// parked there.
pub(super) struct Conn {
    sender: SendRequest<Body>,
    /// When it was last parked ([`stamp`]); 0 while leased.
    parked: Arc<AtomicU64>,
}

/// A response body from a direct connection: when dropped, the connection counts as parked
/// (idle) from then on.
pub struct Leased {
    inner: Incoming,
    parked: Option<Arc<AtomicU64>>,
}

type Io = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

/// The most a direct connection buffers, in bytes (hyper's `max_buf_size`; hyper's default is
/// about 408 KiB): its largest read, the request bytes it gathers before a write, and the
/// bound on a response head (Envoy's default `max_response_headers_kb` is 60 KiB). hyper checks
/// the head's bound between reads, so a head up to about twice this can pass; a longer one is
/// a 502.
///
/// Writes are flattened (`writev(false)`): the request head and its body's chunks are copied
/// into one buffer and sent with one `write`, not queued and sent with `writev`. For the small
/// bodies an API gateway mostly forwards that is about 0.4 k instructions per request fewer
/// (callgrind, `docs/BENCHMARKS.md` entry 47). The buffer keeps its largest size while the
/// connection lives, which this bound and `pool_max_idle_per_endpoint` cap: at most this plus
/// one chunk of the client's body (a chunk is at most the listener's read buffer,
/// `max_request_header_bytes`: 64 KiB by default) per connection, about 8 MiB per endpoint at
/// the default 64 connections, and only after large uploads. The listener's connections keep
/// hyper's queued writes: their number is the clients', not bounded by configuration.
const BUFFER_BYTES: usize = 64 * 1024;

// === impl Idle ===

impl Idle {
    /// An empty list keeping at most `max` connections, each for at most `timeout`.
    pub(super) fn new(max: usize, timeout: Duration) -> Arc<Self> {
        Arc::new(Idle { conns: Mutex::new(Vec::new()), max, timeout })
    }

    /// The most recently parked connection that is still open and free; closed ones are
    /// dropped on the way.
    pub(super) fn take(&self) -> Option<Conn> {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        let mut busy = Vec::new();
        let mut found = None;
        while let Some(conn) = conns.pop() {
            if conn.sender.is_closed() {
                continue;
            }
            if conn.sender.is_ready() {
                found = Some(conn);
                break;
            }
            // Still reading the body of the response it was parked with.
            busy.push(conn);
        }
        conns.extend(busy.into_iter().rev());
        found
    }

    /// Parks `conn` here (its response may still be streaming), or closes it when the list
    /// is full or the connection is.
    pub(super) fn park(&self, conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        if conns.len() < self.max {
            conns.push(conn);
        }
    }
}

/// Now, in ms since the first stamp plus one (0 means leased).
fn stamp() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
}

impl fmt::Debug for Idle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parked = self.conns.lock().map_or(0, |c| c.len());
        f.debug_struct("Idle").field("parked", &parked).field("max", &self.max).finish()
    }
}

// === impl Conn ===

impl Conn {
    /// Opens a connection to `endpoint` (`http://host:port` or `https://host:port`) through
    /// `connector` (its connect timeout, `TCP_NODELAY`, TLS with ALPN `http/1.1`), completes the
    /// HTTP/1.1 handshake and starts the connection's task, which closes it after `home`'s
    /// idle timeout parked.
    ///
    /// Errors: the connector's (refused, timed out, TLS failure) or hyper's.
    pub(super) async fn open(
        connector: &HttpsConnector<HttpConnector>,
        endpoint: Uri,
        home: &Arc<Idle>,
    ) -> Result<Self, BoxError> {
        let io: Io = connector.clone().call(endpoint).await?;
        let (sender, connection) = http1::Builder::new().writev(false).max_buf_size(BUFFER_BYTES).handshake(io).await?;
        let parked = Arc::new(AtomicU64::new(0));
        tokio::spawn(drive(connection, parked.clone(), home.timeout));
        Ok(Conn { sender, parked })
    }

    /// Whether the endpoint can take a request on it now; waits, up to `patience`, for a
    /// response still being read to end.
    pub(super) async fn ready(&mut self, patience: Duration) -> bool {
        if self.sender.is_ready() {
            return true;
        }
        matches!(tokio::time::timeout(patience, self.sender.ready()).await, Ok(Ok(())))
    }

    /// Sends `request` (origin-form target, `Host` set) and waits for the response head.
    /// Marks the connection leased until the response body is dropped.
    ///
    /// Errors: hyper's, with the request back when it was not written (the connection closed
    /// before it was sent), so it can go on another connection.
    pub(super) async fn send(
        &mut self,
        request: Request<Body>,
    ) -> Result<Response<Leased>, hyper::client::conn::TrySendError<Request<Body>>> {
        self.parked.store(0, Ordering::Release);
        let response = self.sender.try_send_request(request).await?;
        let parked = Some(self.parked.clone());
        Ok(response.map(|inner| Leased { inner, parked }))
    }
}

/// Runs one connection until it ends, the endpoint closes it, or it has been parked for the
/// idle timeout.
async fn drive(connection: http1::Connection<Io, Body>, parked: Arc<AtomicU64>, timeout: Duration) {
    let mut connection = std::pin::pin!(connection);
    // Polled only when it fired (`OnWake`), not on each of the connection's wake-ups.
    let mut idle = std::pin::pin!(OnWake::new(tokio::time::sleep(timeout)));
    loop {
        tokio::select! {
            biased;
            ended = &mut connection => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
                return;
            }
            () = idle.as_mut() => {}
        }
        let wait = match parked.load(Ordering::Acquire) {
            0 => timeout,
            at => timeout.saturating_sub(Duration::from_millis(stamp().saturating_sub(at))),
        };
        if wait.is_zero() {
            tracing::debug!("closing an upstream connection idle for {} ms", timeout.as_millis());
            return;
        }
        idle.as_mut().rearm().reset(Instant::now() + wait);
    }
}

// === impl Leased ===

impl Leased {
    /// A body from the pooled client: nothing to stamp.
    pub fn pooled(inner: Incoming) -> Self {
        Leased { inner, parked: None }
    }
}

impl HttpBody for Leased {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Leased {
    fn drop(&mut self) {
        if let Some(parked) = &self.parked {
            parked.store(stamp(), Ordering::Release);
        }
    }
}

impl fmt::Debug for Leased {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leased").field("direct", &self.parked.is_some()).finish()
    }
}
