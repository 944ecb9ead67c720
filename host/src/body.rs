//! Body types on the proxy path: one boxed body type both ways, and a wrapper that counts bytes
//! and reports when the body is finished (or dropped, when the peer went away).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Full};

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

/// Called once with the number of data bytes that went through, when the body ended (`true`)
/// or was dropped before its end (`false`).
pub type OnDone = Box<dyn FnOnce(u64, bool) + Send>;

/// Counts the data bytes of `inner` and calls `on_done` once. Size hints pass through, so
/// hyper frames the body exactly as it would the inner one. Generic so the request body is
/// wrapped as it comes from hyper and boxed once.
pub struct Counted<B: HttpBody = Body> {
    inner: B,
    bytes: u64,
    on_done: Option<OnDone>,
}

// === impl Counted ===

impl<B: HttpBody> Counted<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, on_done: OnDone) -> Self {
        Counted { inner, bytes: 0, on_done: Some(on_done) }
    }

    fn finish(&mut self, complete: bool) {
        if let Some(done) = self.on_done.take() {
            done(self.bytes, complete);
        }
    }
}

impl<B> HttpBody for Counted<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => self.finish(true),
            Poll::Ready(Some(Err(_))) => self.finish(false),
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

impl<B: HttpBody> Drop for Counted<B> {
    fn drop(&mut self) {
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}
