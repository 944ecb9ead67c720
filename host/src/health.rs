//! Upstream endpoint health: what active health checks and passive outlier detection have
//! learned about each endpoint, and the checker task.
//!
//! - **Active checks** (`[upstream.NAME.health_check]`): `GET path` on every endpoint each
//!   `interval_ms`, through the upstream's own client (so TLS and HTTP/2 settings apply). A
//!   2xx or 3xx within `timeout_ms` is a pass. `unhealthy_threshold` failures in a row mark the
//!   endpoint unhealthy, `healthy_threshold` passes in a row healthy again (Envoy's model).
//!   Endpoints start healthy.
//! - **Passive outlier detection** (`[upstream.NAME.outlier_detection]`, on by default): a
//!   request that gets a 5xx from the endpoint, or cannot connect or times out, is a failure;
//!   `consecutive_failures` in a row eject the endpoint for `base_ejection_ms`, doubled on each
//!   ejection that follows (up to `max_ejection_ms`), reset by a success after the return.
//!   Passive detection never ejects the last available endpoint: it is a guess from traffic,
//!   and taking a whole upstream down on a guess turns a partial outage into a full one
//!   (Envoy's `max_ejection_percent` guards the same thing). Active checks can mark every
//!   endpoint down; requests then get 503 at once instead of waiting on dead endpoints.
//!
//! The health of an endpoint survives reloads: a new snapshot takes the [`EndpointHealth`] of
//! every (upstream, endpoint) pair the previous one had.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::model::{HealthCheckConfig, OutlierConfig};
use crate::snapshot::Snapshot;

/// How often the checker looks for endpoints that are due, in ms.
pub const CHECKER_TICK_MS: u64 = 50;

/// Weight of the newest sample in the latency and error-rate averages (exponentially weighted).
const EWMA_WEIGHT: f64 = 0.1;

/// What is known about one endpoint. Shared by the snapshots that route to it.
#[derive(Debug)]
pub struct EndpointHealth {
    born: Instant,
    /// Last active check verdict.
    active_healthy: AtomicBool,
    /// Whether any active check has run.
    checked: AtomicBool,
    active_passes: AtomicU32,
    active_failures: AtomicU32,
    /// When the next active check is due, in ms since `born`.
    next_check_ms: AtomicU64,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    /// Ejected until this time, in ms since `born` (0: not ejected).
    ejected_until_ms: AtomicU64,
    outstanding: AtomicUsize,
    requests: AtomicU64,
    failures: AtomicU64,
    /// f64 bits: exponentially weighted response-head latency, in ms.
    latency_ms: AtomicU64,
    /// f64 bits: exponentially weighted failure ratio, 0..=1.
    error_rate: AtomicU64,
}

/// How one request to an endpoint went, for passive detection and the averages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response below 500.
    Success,
    /// A 5xx response, a refused or broken connection, or a timeout.
    Failure,
}

/// [`EndpointHealth`] as `/status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointStatus {
    /// `host:port`.
    pub address: String,
    /// Whether requests may go to it now.
    pub available: bool,
    /// `healthy`, `unhealthy`, or `unchecked` (no active check configured or run yet).
    pub active: &'static str,
    /// Milliseconds left in the current ejection; 0 when not ejected.
    pub ejected_for_ms: u64,
    /// Times passive detection has ejected it.
    pub ejections: u32,
    /// Requests in flight now.
    pub outstanding: usize,
    /// Requests sent since the gateway started.
    pub requests: u64,
    /// Of those, failures (5xx, connection errors, timeouts).
    pub failures: u64,
    /// Recent failure ratio (exponentially weighted), 0..=1.
    pub recent_error_rate: f64,
    /// Recent response-head latency (exponentially weighted), in ms.
    pub recent_latency_ms: f64,
}

/// One request in flight to an endpoint; dropping it without [`InFlight::finish`] (the client
/// went away) records nothing but the end of the request.
pub struct InFlight {
    health: Arc<EndpointHealth>,
    started: Instant,
}

// === impl EndpointHealth ===

impl Default for EndpointHealth {
    fn default() -> Self {
        EndpointHealth {
            born: Instant::now(),
            active_healthy: AtomicBool::new(true),
            checked: AtomicBool::new(false),
            active_passes: AtomicU32::new(0),
            active_failures: AtomicU32::new(0),
            next_check_ms: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            outstanding: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            latency_ms: AtomicU64::new(0f64.to_bits()),
            error_rate: AtomicU64::new(0f64.to_bits()),
        }
    }
}

impl EndpointHealth {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether requests may be sent to it: not marked unhealthy by active checks, not ejected.
    pub fn is_available(&self) -> bool {
        self.active_healthy.load(Ordering::Acquire) && !self.is_ejected()
    }

    fn is_ejected(&self) -> bool {
        // Never ejected (0) is the usual case: no clock read for it.
        let until = self.ejected_until_ms.load(Ordering::Acquire);
        until != 0 && self.now_ms() < until
    }

    /// Requests in flight.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }

    /// Starts a request.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight { health: self.clone(), started: Instant::now() }
    }

    /// Records an active check result against the thresholds.
    pub fn record_check(&self, passed: bool, config: &HealthCheckConfig) {
        self.checked.store(true, Ordering::Release);
        if passed {
            self.active_failures.store(0, Ordering::Release);
            let passes = self.active_passes.fetch_add(1, Ordering::AcqRel) + 1;
            if passes >= config.healthy_threshold {
                self.active_healthy.store(true, Ordering::Release);
            }
        } else {
            self.active_passes.store(0, Ordering::Release);
            let failures = self.active_failures.fetch_add(1, Ordering::AcqRel) + 1;
            if failures >= config.unhealthy_threshold {
                self.active_healthy.store(false, Ordering::Release);
            }
        }
    }

    /// Records a passive failure; returns whether `outlier` asks for an ejection now (the
    /// caller decides, since it knows whether other endpoints are available).
    fn record_outcome(&self, outcome: Outcome, latency: Duration, outlier: &OutlierConfig) -> bool {
        let sample = |cell: &AtomicU64, value: f64| {
            let old = f64::from_bits(cell.load(Ordering::Relaxed));
            cell.store((old + EWMA_WEIGHT * (value - old)).to_bits(), Ordering::Relaxed);
        };
        sample(&self.latency_ms, latency.as_secs_f64() * 1000.0);
        sample(&self.error_rate, if outcome == Outcome::Failure { 1.0 } else { 0.0 });
        match outcome {
            Outcome::Success => {
                self.consecutive_failures.store(0, Ordering::Release);
                false
            }
            Outcome::Failure => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
                outlier.enabled && failures >= outlier.consecutive_failures && !self.is_ejected()
            }
        }
    }

    /// Ejects it for `base_ejection_ms` doubled per earlier ejection, at most `max_ejection_ms`.
    fn eject(&self, outlier: &OutlierConfig) {
        let earlier = self.ejections.fetch_add(1, Ordering::AcqRel).min(16);
        let duration = outlier.base_ejection_ms.saturating_mul(1 << earlier).min(outlier.max_ejection_ms);
        self.ejected_until_ms.store(self.now_ms().saturating_add(duration), Ordering::Release);
        self.consecutive_failures.store(0, Ordering::Release);
    }

    /// Whether an active check is due; if so, schedules the next one `interval_ms` later.
    fn take_due_check(&self, interval_ms: u64) -> bool {
        let now = self.now_ms();
        let due = self.next_check_ms.load(Ordering::Acquire);
        now >= due
            && self.next_check_ms.compare_exchange(due, now + interval_ms, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// The status of this endpoint at `address`.
    pub fn status(&self, address: &str) -> EndpointStatus {
        let until = self.ejected_until_ms.load(Ordering::Acquire);
        EndpointStatus {
            address: address.to_owned(),
            available: self.is_available(),
            active: match (self.checked.load(Ordering::Acquire), self.active_healthy.load(Ordering::Acquire)) {
                (false, _) => "unchecked",
                (true, true) => "healthy",
                (true, false) => "unhealthy",
            },
            ejected_for_ms: until.saturating_sub(self.now_ms()),
            ejections: self.ejections.load(Ordering::Acquire),
            outstanding: self.outstanding(),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            recent_error_rate: f64::from_bits(self.error_rate.load(Ordering::Relaxed)),
            recent_latency_ms: f64::from_bits(self.latency_ms.load(Ordering::Relaxed)),
        }
    }
}

// === impl InFlight ===

impl InFlight {
    /// When [`EndpointHealth::start`] was called.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Time since [`EndpointHealth::start`].
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Ends the request with `outcome`, which took `took` (from [`InFlight::elapsed`]). Under
    /// `outlier`, returns whether the endpoint has now failed often enough in a row to be
    /// ejected; [`crate::upstream::Upstream`] then ejects it unless it is the last one
    /// available.
    pub fn finish(self, outcome: Outcome, took: Duration, outlier: &OutlierConfig) -> Option<Arc<EndpointHealth>> {
        let eject = self.health.record_outcome(outcome, took, outlier);
        eject.then(|| self.health.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.health.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Ejects `health` under `outlier` (see [`EndpointHealth`]); logs it.
pub fn eject(health: &EndpointHealth, outlier: &OutlierConfig, upstream: &str, endpoint: &str) {
    health.eject(outlier);
    let ms = health.ejected_until_ms.load(Ordering::Acquire).saturating_sub(health.now_ms());
    tracing::warn!(upstream, endpoint, ejected_ms = ms, "endpoint ejected after consecutive failures");
}

/// Runs the active health checks of the serving snapshot's upstreams until `shutdown`: every
/// [`CHECKER_TICK_MS`], each endpoint whose check is due gets one, concurrently, each bounded
/// by its `timeout_ms`.
pub async fn run_checks(snapshot: Arc<ArcSwap<Snapshot>>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(CHECKER_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let current = snapshot.load_full();
        for upstream in current.upstreams.values() {
            let Some(check) = upstream.health_check() else { continue };
            for endpoint in upstream.endpoints() {
                if !endpoint.health.take_due_check(check.interval_ms) {
                    continue;
                }
                let (upstream, endpoint) = (upstream.clone(), endpoint.clone());
                tokio::spawn(async move {
                    let passed = upstream.probe(&endpoint).await;
                    if let Some(check) = upstream.health_check() {
                        let was = endpoint.health.is_available();
                        endpoint.health.record_check(passed, check);
                        let now = endpoint.health.is_available();
                        if was != now {
                            tracing::warn!(upstream = upstream.name(), endpoint = %endpoint.address, healthy = now, "active health check changed the endpoint's state");
                        }
                    }
                });
            }
        }
    }
}
