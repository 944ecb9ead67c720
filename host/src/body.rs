//! Body types on the proxy path: one boxed body type both ways, and a wrapper that counts bytes
//! and reports when the body is finished (or dropped, when the peer went away).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tokio::time::{Instant, Sleep};

use crate::error::GatewayError;

/// Error type of proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response the gateway handles.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A complete in-memory body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// Boxes any body into [`Body`].
pub fn boxed<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A request body read into memory only when a chain step asks for it.
pub struct LazyBody {
    streaming: Option<Body>,
    buffered: Option<Bytes>,
    limit: u64,
}

impl LazyBody {
    /// Wraps `body`; at most `limit` bytes will be buffered.
    pub fn new(body: Body, limit: u64) -> Self {
        LazyBody { streaming: Some(body), buffered: None, limit }
    }

    /// The whole body, read on first use.
    ///
    /// Errors: [`GatewayError::BodyTooLarge`] (413) past the limit, declared or actual;
    /// [`GatewayError::BadBody`] (400) when the body breaks off.
    pub async fn bytes(&mut self) -> Result<&Bytes, GatewayError> {
        if let Some(body) = self.streaming.take() {
            self.buffered = Some(buffer(body, self.limit).await?);
        }
        Ok(self.buffered.get_or_insert_with(Bytes::new))
    }

    /// The body to forward: the buffered bytes, or the untouched stream.
    pub fn into_body(self) -> Body {
        match (self.streaming, self.buffered) {
            (Some(body), _) => body,
            (None, Some(bytes)) => full(bytes),
            (None, None) => full(Bytes::new()),
        }
    }
}

/// Reads the whole body, up to `limit` bytes.
///
/// Errors: [`GatewayError::BodyTooLarge`] (413) past `limit`, declared or actual;
/// [`GatewayError::RequestTimeout`] (408) when a [`Timed`] body runs out of time;
/// [`GatewayError::BadBody`] (400) when the body breaks off.
pub async fn buffer(mut body: Body, limit: u64) -> Result<Bytes, GatewayError> {
    if body.size_hint().lower() > limit {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    let mut buffered = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| match e.downcast_ref::<BodyTimeout>() {
            Some(timeout) => GatewayError::RequestTimeout(timeout.to_string()),
            None if e.is::<http_body_util::LengthLimitError>() => GatewayError::BodyTooLarge { limit },
            None => GatewayError::BadBody(e.to_string()),
        })?;
        if let Ok(data) = frame.into_data() {
            if (buffered.len() + data.len()) as u64 > limit {
                return Err(GatewayError::BodyTooLarge { limit });
            }
            buffered.extend_from_slice(&data);
        }
    }
    Ok(buffered.freeze())
}

/// How a counted body finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BodyEnd {
    /// Every frame was read.
    Complete,
    /// The inner body yielded an error (a bad chunk, a peer that went away mid-body).
    Failed,
    /// A [`Timed`] body ran out of time.
    TimedOut,
    /// A `Limited` body grew past its limit.
    TooLarge,
    /// It was dropped before its end (nobody read the rest).
    Dropped,
}

/// Remembers how and when a body ended and how many data bytes it had (set from [`Counted`]'s
/// completion hook, which may run on another task), for the request handler after the exchange
/// and for the upstream's response timer, which looks at it when it fires
/// ([`BodyEndCell::ended_at`]) instead of being woken: setting it takes no lock and wakes no
/// task.
#[derive(Debug)]
pub struct BodyEndCell {
    end: std::sync::atomic::AtomicU8,
    /// When the body ended, in µs after `created`; read only once `end` is set.
    ended_after_us: std::sync::atomic::AtomicU64,
    /// Data bytes the body had when it ended.
    bytes: std::sync::atomic::AtomicU64,
    created: Instant,
}

impl Default for BodyEndCell {
    /// An empty cell measuring from now.
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl BodyEndCell {
    const UNSET: u8 = u8::MAX;

    /// An empty cell; the end's time is measured from `created` (the request's start, a clock
    /// reading the caller already made).
    pub fn new(created: Instant) -> Self {
        BodyEndCell {
            end: std::sync::atomic::AtomicU8::new(Self::UNSET),
            ended_after_us: std::sync::atomic::AtomicU64::new(0),
            bytes: std::sync::atomic::AtomicU64::new(0),
            created,
        }
    }

    /// Records `end`, now, after `bytes` data bytes.
    pub fn set(&self, end: BodyEnd, bytes: u64) {
        let after = u64::try_from(self.created.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.ended_after_us.store(after, std::sync::atomic::Ordering::Relaxed);
        self.bytes.store(bytes, std::sync::atomic::Ordering::Relaxed);
        self.end.store(end as u8, std::sync::atomic::Ordering::Release);
    }

    /// How the body ended; none while it has not.
    pub fn get(&self) -> Option<BodyEnd> {
        let ends = [BodyEnd::Complete, BodyEnd::Failed, BodyEnd::TimedOut, BodyEnd::TooLarge, BodyEnd::Dropped];
        let code = self.end.load(std::sync::atomic::Ordering::Acquire);
        ends.into_iter().find(|e| *e as u8 == code)
    }

    /// Data bytes the body had when it ended (0 while it has not).
    pub fn bytes(&self) -> u64 {
        self.get().map_or(0, |_| self.bytes.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// When the body ended, however it ended; none while it has not.
    pub fn ended_at(&self) -> Option<Instant> {
        self.get()?;
        let after = self.ended_after_us.load(std::sync::atomic::Ordering::Relaxed);
        Some(self.created + Duration::from_micros(after))
    }

    /// Whether the body ended through the client's fault: broken, too slow or too large.
    pub fn client_fault(&self) -> bool {
        matches!(self.get(), Some(BodyEnd::Failed | BodyEnd::TimedOut | BodyEnd::TooLarge))
    }
}

/// Called once with the number of data bytes that went through and how the body finished.
pub type OnDone = Box<dyn FnOnce(u64, BodyEnd) + Send>;

/// Counts the data bytes of `inner` and calls `on_done` once. Size hints pass through, so
/// hyper frames the body exactly as it would the inner one. Generic over the body, so the
/// request body is wrapped as it comes from hyper and boxed once, and over `on_done`, so a
/// closure lives in that one box instead of one of its own (an allocation per body:
/// docs/BENCHMARKS.md entry 46).
pub struct Counted<B: HttpBody = Body, F: FnOnce(u64, BodyEnd) = OnDone> {
    inner: B,
    bytes: u64,
    on_done: Option<F>,
}

// === impl Counted ===

impl<B: HttpBody, F: FnOnce(u64, BodyEnd)> Counted<B, F> {
    /// Wraps `inner`.
    pub fn new(inner: B, on_done: F) -> Self {
        Counted { inner, bytes: 0, on_done: Some(on_done) }
    }

    fn finish(&mut self, end: BodyEnd) {
        if let Some(done) = self.on_done.take() {
            done(self.bytes, end);
        }
    }
}

impl<B, F> HttpBody for Counted<B, F>
where
    B: HttpBody<Data = Bytes> + Unpin,
    F: FnOnce(u64, BodyEnd) + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => self.finish(BodyEnd::Complete),
            Poll::Ready(Some(Err(e))) => {
                let end = if e.is::<BodyTimeout>() {
                    BodyEnd::TimedOut
                } else if e.is::<http_body_util::LengthLimitError>() {
                    BodyEnd::TooLarge
                } else {
                    BodyEnd::Failed
                };
                self.finish(end);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: HttpBody, F: FnOnce(u64, BodyEnd)> Drop for Counted<B, F> {
    fn drop(&mut self) {
        let end = if self.inner.is_end_stream() { BodyEnd::Complete } else { BodyEnd::Dropped };
        self.finish(end);
    }
}

/// A request body that did not arrive in time (see [`Timed`]).
#[derive(Debug, thiserror::Error)]
pub enum BodyTimeout {
    /// No data for longer than the idle timeout.
    #[error("no request body data for {0} ms")]
    Idle(u128),
    /// The whole body took longer than the total timeout.
    #[error("request body not complete within {0} ms")]
    Total(u128),
}

/// A body with an idle timeout (longest wait for the client's next frame) and a total
/// deadline; running past either yields a [`BodyTimeout`] error and then ends. hyper has
/// neither (FIELD-NOTES), and without them a client can hold a request open by trickling its
/// body. A body that is already at its end costs no timer, and the timers are armed only when
/// the body first has to wait for the client: a body read with its head (most small bodies)
/// never touches the timer wheel or reads the clock.
///
/// The idle time runs while the body waits for the client: from the first wait, then from
/// each frame. Time the reader took between frames before that (an upstream slow to take the
/// body, a plugin reading it) is not the client's silence and is not counted.
pub struct Timed<B> {
    inner: B,
    idle: Duration,
    total: Duration,
    /// When the body started (the request head); the total deadline runs from it.
    started: Instant,
    /// The idle and total timers, once the body has had to wait.
    timers: Option<Timers>,
    failed: bool,
}

/// The idle timer, then the total one.
type Timers = (Pin<Box<Sleep>>, Pin<Box<Sleep>>);

// === impl Timed ===

impl<B: HttpBody> Timed<B> {
    /// Wraps `inner`, whose request head came at `started` (about now: the caller's clock
    /// reading): the body must not wait for the client longer than `idle` at a time, and must be
    /// whole within `total` of `started`.
    pub fn new(inner: B, idle: Duration, total: Duration, started: Instant) -> Self {
        Timed { inner, idle, total, started, timers: None, failed: false }
    }
}

impl<B> HttpBody for Timed<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into);
        let (idle, total) = (self.idle, self.total);
        if self.timers.is_none() {
            match &polled {
                Poll::Pending => {
                    let idle_due = tokio::time::sleep(idle);
                    let total_due = tokio::time::sleep_until(self.started + total);
                    self.timers = Some((Box::pin(idle_due), Box::pin(total_due)));
                }
                Poll::Ready(_) => return polled,
            }
        }
        let Some((idle_sleep, total_sleep)) = self.timers.as_mut() else { return polled };
        let expired = match &polled {
            Poll::Ready(Some(Ok(_))) => {
                idle_sleep.as_mut().reset(Instant::now() + idle);
                None
            }
            Poll::Pending if total_sleep.as_mut().poll(cx).is_ready() => Some(BodyTimeout::Total(total.as_millis())),
            Poll::Pending if idle_sleep.as_mut().poll(cx).is_ready() => Some(BodyTimeout::Idle(idle.as_millis())),
            _ => None,
        };
        match expired {
            Some(timeout) => {
                self.failed = true;
                Poll::Ready(Some(Err(Box::new(timeout))))
            }
            None => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use bytes::Bytes;
    use http_body::{Body as HttpBody, Frame};
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    use super::{BodyTimeout, BoxError, Timed};

    /// A client's body: each chunk sent on the channel is a frame; the body ends when the
    /// sender is dropped.
    struct Client(mpsc::Receiver<Bytes>);

    impl HttpBody for Client {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
        }
    }

    const IDLE: Duration = Duration::from_secs(2);
    const TOTAL: Duration = Duration::from_secs(10);

    fn timed() -> (mpsc::Sender<Bytes>, Timed<Client>) {
        let (tx, rx) = mpsc::channel(8);
        (tx, Timed::new(Client(rx), IDLE, TOTAL, Instant::now()))
    }

    /// The next frame's outcome: data, the timeout's kind, or the end.
    async fn next(body: &mut Timed<Client>) -> String {
        match body.frame().await {
            Some(Ok(frame)) => format!("data {}", frame.into_data().map_or(0, |d| d.len())),
            Some(Err(e)) => match e.downcast_ref::<BodyTimeout>() {
                Some(BodyTimeout::Idle(_)) => "idle".into(),
                Some(BodyTimeout::Total(_)) => "total".into(),
                None => format!("error {e}"),
            },
            None => "end".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_silent_for_the_idle_time_while_the_body_waits_for_it_times_out() {
        let (tx, mut body) = timed();
        tx.send(Bytes::from_static(b"abc")).await.unwrap();
        assert_eq!(next(&mut body).await, "data 3");
        let waited = Instant::now();
        assert_eq!(next(&mut body).await, "idle");
        assert_eq!(waited.elapsed(), IDLE);
        assert_eq!(next(&mut body).await, "end", "a timed-out body ends");
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_reader_takes_between_frames_is_not_the_clients_silence() {
        let (tx, mut body) = timed();
        tx.send(Bytes::from_static(b"abc")).await.unwrap();
        assert_eq!(next(&mut body).await, "data 3");
        // The reader (an upstream slow to take the body) comes back after longer than the idle
        // time; the client sends its next chunk a second into the wait.
        tokio::time::advance(IDLE * 2).await;
        let send = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tx.send(Bytes::from_static(b"de")).await.unwrap();
        });
        assert_eq!(next(&mut body).await, "data 2");
        send.await.unwrap();
        assert_eq!(next(&mut body).await, "end");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_trickled_within_the_idle_time_still_ends_at_the_total_deadline() {
        let (tx, mut body) = timed();
        let started = Instant::now();
        let trickle = tokio::spawn(async move {
            while tx.send(Bytes::from_static(b"x")).await.is_ok() {
                tokio::time::sleep(IDLE * 3 / 8).await;
            }
        });
        let mut frames = 0;
        loop {
            match next(&mut body).await.as_str() {
                "data 1" => frames += 1,
                outcome => {
                    assert_eq!(outcome, "total");
                    break;
                }
            }
        }
        assert_eq!(started.elapsed(), TOTAL);
        assert_eq!(frames, 14, "a frame every 0.75 s until the deadline");
        drop(body);
        trickle.await.unwrap();
    }
}
