//! [`OnWake`]: a future polled only when it woke, for the timers and signals a connection or
//! an exchange waits on beside its I/O.
//!
//! A `select!` polls every branch on every wake-up of its task. A connection's task wakes
//! about three times per request (the request arrives, the upstream's response head, its
//! body) and each wake-up polled the connection's deadline timer and the shutdown signal as
//! well (a timer poll is about 120 instructions, the `watch` receiver's `changed()` about 200,
//! and an unbiased `select!` draws a random start, about 55): some 1.1 k instructions per
//! request on the client's connection, 0.35 k on the upstream's, 0.7 k in the exchange's
//! response deadline (callgrind, `bench/callgrind.py`, 2026-12-07; docs/BENCHMARKS.md entry
//! 45). These fire about never. Wrapped in [`OnWake`], such a future is handed a waker of its
//! own; it is polled again only after that waker fired (or after [`OnWake::rearm`]), and on
//! other wake-ups costs a comparison of the task's waker and an atomic load.
//!
//! The same idea as `futures::stream::FuturesUnordered`'s per-future wakers, for one future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

pin_project_lite::pin_project! {
    /// `inner`, polled only when its own waker fired since its last poll, when it was never
    /// polled, or after [`OnWake::rearm`]. `inner`'s wake-ups are passed on to the waker of the
    /// latest poll (registered when it changes and after each firing).
    ///
    /// Correct for any future that keeps the `Future` contract (a `Pending` future arranges to
    /// wake its waker when it can progress); a future whose state the owner changes from
    /// outside (a reset timer) must be re-armed after the change, or its new state is not
    /// looked at until its old registration fires.
    #[must_use = "futures do nothing unless polled"]
    pub struct OnWake<F> {
        #[pin]
        inner: F,
        own: Arc<Own>,
        waker: Waker,
        // The task waker last registered in `own`, owned by the polling task: on a wake-up
        // that was not `own`'s, comparing against it is all the registration costs.
        task: Option<Waker>,
    }
}

/// The waker [`OnWake`] polls its future with: records that it fired and wakes the task.
#[derive(Default)]
struct Own {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Own {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

// === impl OnWake ===

impl<F: Future> OnWake<F> {
    /// Wraps `inner`; its first poll goes through. One allocation (the shared waker).
    pub fn new(inner: F) -> Self {
        let own = Arc::new(Own { fired: AtomicBool::new(true), task: AtomicWaker::new() });
        let waker = Waker::from(own.clone());
        OnWake { inner, own, waker, task: None }
    }

    /// The wrapped future, to change (reset a timer, say): the next poll goes through.
    pub fn rearm(self: Pin<&mut Self>) -> Pin<&mut F> {
        let this = self.project();
        this.own.fired.store(true, Ordering::Release);
        this.inner
    }

    /// The wrapped future, to read (a timer's deadline).
    pub fn get_ref(&self) -> &F {
        &self.inner
    }
}

impl<F: Future> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // `own` keeps a registered waker until it fires (`AtomicWaker::wake` takes it): register
        // when the task's waker is new and after each firing, before the flag is cleared, so
        // that a wake-up after the clearing reaches this task. A wake-up between reading the
        // flag and registering is not lost: the flag is still set and `inner` is polled below.
        let fired = this.own.fired.load(Ordering::Acquire);
        let known = this.task.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if fired || !known {
            this.own.task.register(cx.waker());
        }
        if !known {
            *this.task = Some(cx.waker().clone());
        }
        if !fired || !this.own.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner.poll(&mut Context::from_waker(this.waker))
    }
}

impl<F> std::fmt::Debug for OnWake<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnWake").field("fired", &self.own.fired.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    /// Counts its polls; ready once `ready` is set, waking whoever polled it last when
    /// `wake` is called.
    #[derive(Default)]
    struct Probe {
        polls: AtomicUsize,
        ready: AtomicBool,
        waker: std::sync::Mutex<Option<Waker>>,
    }

    impl Probe {
        fn wake(&self) {
            if let Some(w) = self.waker.lock().unwrap().take() {
                w.wake();
            }
        }
    }

    struct Polled<'a>(&'a Probe);

    impl Future for Polled<'_> {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.0.polls.fetch_add(1, Ordering::SeqCst);
            if self.0.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.0.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// A task waker that counts its wake-ups.
    #[derive(Default)]
    struct Task(AtomicUsize);

    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_inner_future_is_polled_first_then_only_after_its_own_wake_up() {
        let probe = Probe::default();
        let task = Arc::new(Task::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let mut on_wake = pin!(OnWake::new(Polled(&probe)));

        assert!(on_wake.as_mut().poll(&mut cx).is_pending());
        assert_eq!(probe.polls.load(Ordering::SeqCst), 1, "the first poll goes through");
        for _ in 0..5 {
            assert!(on_wake.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(probe.polls.load(Ordering::SeqCst), 1, "other wake-ups of the task do not poll it");

        probe.ready.store(true, Ordering::SeqCst);
        probe.wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "its wake-up wakes the task");
        assert!(on_wake.as_mut().poll(&mut cx).is_ready());
        assert_eq!(probe.polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn rearm_lets_the_next_poll_through() {
        let probe = Probe::default();
        let waker = Waker::from(Arc::new(Task::default()));
        let mut cx = Context::from_waker(&waker);
        let mut on_wake = pin!(OnWake::new(Polled(&probe)));
        assert!(on_wake.as_mut().poll(&mut cx).is_pending());
        probe.ready.store(true, Ordering::SeqCst);
        assert!(on_wake.as_mut().poll(&mut cx).is_pending(), "not polled without a wake-up");
        let polls = on_wake.as_mut().rearm().0.polls.load(Ordering::SeqCst);
        assert_eq!(polls, 1, "re-arming does not poll");
        assert!(on_wake.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn the_latest_task_waker_is_the_one_woken() {
        let probe = Probe::default();
        let (first, second) = (Arc::new(Task::default()), Arc::new(Task::default()));
        let mut on_wake = pin!(OnWake::new(Polled(&probe)));
        let w1 = Waker::from(first.clone());
        assert!(on_wake.as_mut().poll(&mut Context::from_waker(&w1)).is_pending());
        let w2 = Waker::from(second.clone());
        assert!(on_wake.as_mut().poll(&mut Context::from_waker(&w2)).is_pending());
        probe.wake();
        assert_eq!((first.0.load(Ordering::SeqCst), second.0.load(Ordering::SeqCst)), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_fires_through_it_at_its_reset_deadline() {
        let start = tokio::time::Instant::now();
        let mut timer = pin!(OnWake::new(tokio::time::sleep_until(start + Duration::from_secs(60))));
        // Polled once (registered with the wheel), then moved earlier from outside: the
        // wheel's wake-up at the new deadline reaches the task through `OnWake`'s waker (a
        // lost one shows as the timeout below). That `rearm` makes the next poll go through is
        // `rearm_lets_the_next_poll_through`'s.
        assert!(futures_poll_once(timer.as_mut()).await.is_pending());
        timer.as_mut().rearm().reset(start + Duration::from_secs(1));
        let fired = tokio::time::timeout(Duration::from_secs(120), timer.as_mut()).await;
        assert!(fired.is_ok(), "the reset timer's wake-up was lost");
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    /// Polls `f` once.
    async fn futures_poll_once<F: Future + ?Sized>(mut f: Pin<&mut F>) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await
    }
}
