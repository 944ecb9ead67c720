//! Connection-affine HTTP/1.1 upstream connections: a client connection that sent a request to
//! an endpoint keeps that upstream connection for its next request to the same endpoint, and
//! gives it to the endpoint's idle list when the client leaves.
//!
//! Why not hyper-util's pooled client for these: it hands every connection back to a shared
//! pool behind a mutex when a response ends, through a task it spawns per request and a
//! channel hop, about 12.5 k instructions and 9 heap allocations per request over a dedicated
//! connection in the yardstick (`tests/examples/yardstick.rs`, numbers in
//! `docs/BENCHMARKS.md`). An HTTP/1 client connection is sequential (its next request starts
//! after its last response ended, RFC 9112 §9.3), so an upstream connection held per client
//! connection is always free when it is needed again: no pool look-up, no spawned task. The
//! upstream connection still runs on its own task (hyper's client `Connection`), which the
//! yardstick measured as cheaper than driving both connections from the request's task.
//!
//! What stays with the pooled client ([`super::Upstream`]): HTTP/2 upstreams, requests from
//! HTTP/2 client connections (many streams at once share one [`Affinity`]), and health checks.
//!
//! Lifetimes: a connection is *leased* from when a request takes it until that request's
//! response body is dropped (at its end, or early when the client went away, in which case
//! hyper closes the connection); otherwise it is *parked* in an [`Affinity`] or an
//! endpoint's [`Idle`] list. A connection parked longer than `pool_idle_timeout_ms` is closed by
//! its own task; one the endpoint closed is skipped when found. At most
//! `pool_max_idle_per_endpoint` connections wait in an endpoint's idle list; more are closed.

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

/// Upstream connections one client connection holds, at most [`HELD`], each with the idle
/// list of its endpoint.
#[derive(Default)]
pub struct Affinity {
    held: Mutex<Vec<(Arc<Idle>, Conn)>>,
}

/// How many upstream connections one client connection keeps (one per endpoint it used last);
/// the oldest goes to its endpoint's idle list when a new one comes.
const HELD: usize = 8;

/// An endpoint's parked connections, newest last.
pub(super) struct Idle {
    conns: Mutex<Vec<Conn>>,
    /// `pool_max_idle_per_endpoint`.
    max: usize,
    /// `pool_idle_timeout_ms`.
    timeout: Duration,
}

/// One HTTP/1.1 connection to an endpoint. It does not point back at its endpoint's idle
/// list (which holds it): an upstream replaced by a reload frees its list and closes what
/// was parked there.
pub(super) struct Conn {
    sender: SendRequest<Body>,
    /// When it was last parked ([`stamp`]); 0 while leased.
    parked: Arc<AtomicU64>,
}

/// A response body from an affine connection: when dropped, the connection counts as parked
/// (idle) from then on.
pub struct Leased {
    inner: Incoming,
    parked: Option<Arc<AtomicU64>>,
}

type Io = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

// === impl Affinity ===

impl Affinity {
    /// The connection this client connection holds to `home`'s endpoint, if any.
    pub(super) fn take(&self, home: &Arc<Idle>) -> Option<Conn> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let at = held.iter().position(|(h, _)| Arc::ptr_eq(h, home))?;
        Some(held.swap_remove(at).1)
    }

    /// Keeps `conn` to `home`'s endpoint for this client connection's next request (its
    /// response may still be streaming: the next request comes after it ended). Connections
    /// to endpoints of replaced upstreams (their list has no other owner) are closed.
    pub(super) fn keep(&self, home: &Arc<Idle>, conn: Conn) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.retain(|(h, _)| Arc::strong_count(h) > 1);
        if held.len() >= HELD {
            let (oldest, conn) = held.remove(0);
            oldest.park(conn);
        }
        held.push((home.clone(), conn));
    }
}

impl Drop for Affinity {
    fn drop(&mut self) {
        let held = self.held.get_mut().unwrap_or_else(PoisonError::into_inner);
        for (home, conn) in held.drain(..) {
            home.park(conn);
        }
    }
}

impl fmt::Debug for Affinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self.held.lock().map_or(0, |h| h.len());
        f.debug_struct("Affinity").field("held", &held).finish()
    }
}

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
            // Still reading a response a departed client connection left behind.
            busy.push(conn);
        }
        conns.extend(busy.into_iter().rev());
        found
    }

    /// Parks `conn` here, or closes it when the list is full or the connection is.
    fn park(&self, conn: Conn) {
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
        let (sender, connection) = http1::Builder::new().handshake(io).await?;
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
    loop {
        let wait = match parked.load(Ordering::Acquire) {
            0 => timeout,
            at => timeout.saturating_sub(Duration::from_millis(stamp().saturating_sub(at))),
        };
        if wait.is_zero() {
            tracing::debug!("closing an upstream connection idle for {} ms", timeout.as_millis());
            return;
        }
        tokio::select! {
            biased;
            ended = &mut connection => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
                return;
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
}

// === impl Leased ===

impl Leased {
    /// A body from the pooled client: nothing to return.
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
        f.debug_struct("Leased").field("affine", &self.parked.is_some()).finish()
    }
}
