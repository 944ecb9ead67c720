//! The crash-loop breaker of one plugin, in the circuit-breaker pattern Envoy's outlier
//! detection and most service meshes use.
//!
//! Closed: calls go through; failures are counted in a sliding window, and `failures` of them
//! within `window` open the breaker. Open: calls are refused at once (the step then answers per
//! its failure policy) until the open period ends. Half-open: exactly one probe call goes
//! through; success closes the breaker, failure opens it again for twice as long (up to
//! `max_open`).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::BreakerConfig;

/// What the breaker lets a call do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Allowed,
    /// Half-open: go ahead as the one probe; report the result with `probe = true`.
    Probe,
    /// Open: do not call the plugin.
    Refused,
}

/// The breaker's state, as the admin listener shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused.
    Open,
    /// One probe call is being let through.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half-open`.
    pub fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

#[derive(Debug)]
enum State {
    Closed { recent: VecDeque<Instant> },
    Open { until: Instant, backoff: Duration },
    HalfOpen { probing: bool, backoff: Duration },
}

/// One plugin's breaker.
#[derive(Debug)]
pub struct Breaker {
    failures: usize,
    window: Duration,
    open: Duration,
    max_open: Duration,
    state: Mutex<State>,
    /// Whether `state` is closed, written with it under its lock: the call path reads it
    /// without the lock or a clock (every call of a healthy plugin).
    closed: AtomicBool,
}

// === impl Breaker ===

impl Breaker {
    /// A closed breaker with `config`'s thresholds.
    pub fn new(config: &BreakerConfig) -> Self {
        Breaker {
            failures: usize::try_from(config.failures).unwrap_or(usize::MAX).max(1),
            window: Duration::from_millis(config.window_ms),
            open: Duration::from_millis(config.open_ms),
            max_open: Duration::from_millis(config.max_open_ms),
            state: Mutex::new(State::Closed { recent: VecDeque::new() }),
            closed: AtomicBool::new(true),
        }
    }

    /// Whether a call may go ahead now: [`Breaker::admit`] at the clock's now, without taking
    /// the lock or reading the clock while the breaker is closed.
    pub fn admit_now(&self) -> Admission {
        if self.is_closed() { Admission::Allowed } else { self.admit(Instant::now()) }
    }

    /// Whether the breaker is closed, without its lock ([`Breaker::state`] takes it).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether a call may go ahead at `now`.
    pub fn admit(&self, now: Instant) -> Admission {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *state {
            State::Closed { .. } => Admission::Allowed,
            State::Open { until, backoff } if now >= *until => {
                *state = State::HalfOpen { probing: true, backoff: *backoff };
                Admission::Probe
            }
            State::Open { .. } | State::HalfOpen { probing: true, .. } => Admission::Refused,
            State::HalfOpen { probing, .. } => {
                *probing = true;
                Admission::Probe
            }
        }
    }

    /// [`Breaker::record`] at the clock's now, without taking the lock or reading the clock
    /// for a success that was not a probe: such a success never changes the state (closed,
    /// successes are not counted; open or half-open, only the probe's outcome counts).
    pub fn record_now(&self, ok: bool, probe: bool) -> bool {
        if ok && !probe { false } else { self.record(Instant::now(), ok, probe) }
    }

    /// Records a call's outcome at `now`. `probe` is true for a call admitted as
    /// [`Admission::Probe`]. Returns true when this opened the breaker.
    pub fn record(&self, now: Instant, ok: bool, probe: bool) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match (&mut *state, ok, probe) {
            (State::HalfOpen { .. }, true, true) => {
                *state = State::Closed { recent: VecDeque::new() };
                self.closed.store(true, Ordering::Release);
                false
            }
            (State::HalfOpen { backoff, .. }, false, true) => {
                let backoff = (*backoff * 2).min(self.max_open);
                *state = State::Open { until: now + backoff, backoff };
                true
            }
            (State::Closed { recent }, false, _) => {
                recent.push_back(now);
                while recent.front().is_some_and(|t| now.duration_since(*t) > self.window) {
                    recent.pop_front();
                }
                if recent.len() >= self.failures {
                    *state = State::Open { until: now + self.open, backoff: self.open };
                    self.closed.store(false, Ordering::Release);
                    return true;
                }
                false
            }
            _ => false,
        }
    }

    /// Forgets a probe that never reported (its call was cancelled, e.g. the client went
    /// away), so the next call can probe instead of the breaker refusing forever.
    pub fn abandon_probe(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let State::HalfOpen { probing, .. } = &mut *state {
            *probing = false;
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        match &*self.state.lock().unwrap_or_else(|e| e.into_inner()) {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(&BreakerConfig { failures: 3, window_ms: 1_000, open_ms: 100, max_open_ms: 250 })
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn breaker_opens_after_failures_within_the_window() {
        let (b, t0) = (breaker(), Instant::now());
        assert!(!b.record(t0, false, false));
        assert!(!b.record(t0 + ms(10), false, false));
        assert_eq!(b.admit(t0 + ms(20)), Admission::Allowed);
        assert!(b.record(t0 + ms(20), false, false), "third failure opens");
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(t0 + ms(50)), Admission::Refused);
    }

    #[test]
    fn breaker_forgets_failures_outside_the_window() {
        let (b, t0) = (breaker(), Instant::now());
        b.record(t0, false, false);
        b.record(t0 + ms(10), false, false);
        assert!(!b.record(t0 + ms(1_500), false, false), "the first two fell out of the window");
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn breaker_lets_one_probe_through_and_closes_on_success() {
        let (b, t0) = (breaker(), Instant::now());
        for i in 0..3 {
            b.record(t0 + ms(i), false, false);
        }
        assert_eq!(b.admit(t0 + ms(150)), Admission::Probe);
        assert_eq!(b.admit(t0 + ms(151)), Admission::Refused, "one probe at a time");
        b.record(t0 + ms(152), true, true);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(t0 + ms(153)), Admission::Allowed);
    }

    #[test]
    fn breaker_allows_a_new_probe_after_an_abandoned_one() {
        let (b, t0) = (breaker(), Instant::now());
        for i in 0..3 {
            b.record(t0 + ms(i), false, false);
        }
        assert_eq!(b.admit(t0 + ms(150)), Admission::Probe);
        b.abandon_probe();
        assert_eq!(b.admit(t0 + ms(160)), Admission::Probe);
    }

    #[test]
    fn breaker_backs_off_when_the_probe_fails() {
        let (b, t0) = (breaker(), Instant::now());
        for i in 0..3 {
            b.record(t0 + ms(i), false, false);
        }
        assert_eq!(b.admit(t0 + ms(110)), Admission::Probe);
        assert!(b.record(t0 + ms(110), false, true));
        assert_eq!(b.admit(t0 + ms(250)), Admission::Refused, "open for 200 ms now");
        assert_eq!(b.admit(t0 + ms(311)), Admission::Probe);
        b.record(t0 + ms(311), false, true);
        assert_eq!(b.admit(t0 + ms(311 + 240)), Admission::Refused, "capped at 250 ms");
        assert_eq!(b.admit(t0 + ms(311 + 251)), Admission::Probe);
    }

    #[test]
    fn breaker_fast_path_follows_every_transition() {
        // admit_now reads the clock: an open period long enough that the test cannot outlast it.
        let b = Breaker::new(&BreakerConfig { failures: 2, window_ms: 60_000, open_ms: 60_000, max_open_ms: 60_000 });
        let t0 = Instant::now();
        assert_eq!(b.admit_now(), Admission::Allowed);
        b.record(t0, false, false);
        assert_eq!(b.admit_now(), Admission::Allowed, "one failure of two");
        assert!(b.record(t0, false, false));
        assert_eq!(b.admit_now(), Admission::Refused, "open");
        assert_eq!(b.admit(t0 + ms(60_001)), Admission::Probe);
        assert_eq!(b.admit_now(), Admission::Refused, "half-open, its probe out");
        b.record(t0 + ms(60_002), true, true);
        assert_eq!(b.admit_now(), Admission::Allowed, "the probe closed it");
    }

    #[test]
    fn breaker_success_that_is_no_probe_changes_no_state() {
        // What lets `record_now` skip it: in every state, `record` of such a success is a no-op.
        let (b, t0) = (breaker(), Instant::now());
        assert!(!b.record(t0, true, false));
        assert!(!b.record_now(true, false));
        assert_eq!(b.state(), BreakerState::Closed);
        for i in 0..3 {
            b.record(t0 + ms(i), false, false);
        }
        assert!(!b.record(t0 + ms(5), true, false));
        assert!(!b.record_now(true, false));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(t0 + ms(150)), Admission::Probe);
        assert!(!b.record(t0 + ms(151), true, false));
        assert!(!b.record_now(true, false));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // A failure and a probe's outcome still go through `record`.
        assert!(b.record_now(false, true), "the failed probe opens it again");
        assert_eq!(b.state(), BreakerState::Open);
    }
}
