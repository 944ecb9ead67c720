//! The plugin runtime: compiled components, their configured instance pools, and bounded calls.
//!
//! A [`LoadedPlugin`] is one `[plugin.ID]`: its component compiled once (cached by content hash
//! in the [`PluginEngine`]), its imports checked against its grants, pre-instantiated, and
//! checked to export the interface of its kind; it owns the plugin's crash-loop breaker.
//! A [`StepPool`] is that plugin with one step's configuration: instances are configured once
//! and reused (a warm filter call measured ~2.5 µs with the host's conversions, where a fresh
//! instance costs tens of µs before `configure`), every call runs under an epoch deadline,
//! memory limits and optional fuel, and an instance that fails is discarded, never returned to
//! the pool.

// First: its `same_shapes!` is used by `legacy` and `previous`.
#[macro_use]
mod shapes;

pub mod audit;
pub mod bindings;
pub mod breaker;
mod cache;
pub mod checkpoint;
pub mod clock;
mod engine;
mod failure;
mod host;
pub mod imports;
mod instance;
pub mod kv;
mod legacy;
pub mod outbound;
mod previous;
pub mod request;
pub mod signing;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::Semaphore;
use wasmtime::component::{Component, InstancePre};
use wasmtime::{Store, UpdateDeadline};

use breaker::{Admission, Breaker};
pub use engine::{
    CompiledFrom, EPOCH_TICK, LoadingGuard, LoadingStatus, MAX_INSTANCES, MAX_MEMORY_BYTES, PluginEngine,
};
pub use failure::{CapabilityDenied, FailureKind, PluginFailure};
pub use host::{Grants, HostState, MAX_LOG_MESSAGE_BYTES, Shared};
pub use instance::{Call, Contract, Hooks, Replied, Reply};
use instance::{Instance, KindIndices};
pub use request::PluginRequest;

use crate::config::{FailurePolicy, Isolation, PluginConfig, PluginKind};
use crate::metrics::{DecisionLabels, PhaseLabels};

/// The configuration a plugin's `configure` refused: JSON pointer and message.
pub use bindings::portcullis::plugin::types::ConfigError as PluginConfigError;

/// One `[plugin.ID]`, compiled and ready to instantiate.
pub struct LoadedPlugin {
    /// Plugin id.
    pub id: Arc<str>,
    /// Kind, from the configuration.
    pub kind: PluginKind,
    /// Failure policy, from the configuration or the kind's default.
    pub policy: FailurePolicy,
    /// SHA-256 of the component file, lowercase hex.
    pub content_hash: String,
    /// The contract the component was built against.
    pub contract: Contract,
    /// The interfaces the component imports (e.g. `wasi:io/streams@0.2.12`), as `GET /plugins`
    /// shows them.
    pub imports: Vec<String>,
    engine: Arc<PluginEngine>,
    pre: InstancePre<HostState>,
    indices: KindIndices,
    grants: Arc<Grants>,
    memory_bytes: usize,
    deadline: Duration,
    max_instances: usize,
    max_uses: u64,
    isolation: Isolation,
    fuel: Option<u64>,
    breaker: Breaker,
    failures: std::sync::atomic::AtomicU64,
    /// This plugin's metric series, looked up once instead of on every call.
    series: CallSeries,
}

/// Which hook a call was, as the `phase` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallPhase {
    /// `authenticate`, `check`, `validate` or `on-request`.
    Request,
    /// `on-response`.
    Response,
    /// `observe`.
    Observe,
}

/// A plugin's call-latency histograms by phase, its decision counters and its breaker gauge,
/// resolved at load so a call records itself without building a label or taking a lock.
struct CallSeries {
    request: Histogram,
    response: Histogram,
    observe: Histogram,
    /// Calls as a shadow step.
    shadow: Histogram,
    /// One counter per decision its kind can make ([`decisions_of`]), enforced and shadow.
    decisions: Vec<(&'static str, Counter)>,
    shadow_decisions: Vec<(&'static str, Counter)>,
    breaker_open: prometheus_client::metrics::gauge::Gauge,
}

/// Every decision a plugin of `kind` can be recorded with (the chain's `apply` and `fail`).
fn decisions_of(kind: PluginKind) -> &'static [&'static str] {
    match kind {
        PluginKind::Auth => &["authenticated", "anonymous", "denied", "failed"],
        PluginKind::RateLimit => &["allowed", "limited", "failed"],
        PluginKind::Validation => &["valid", "invalid", "failed"],
        PluginKind::Logging => &["observed"],
        PluginKind::Filter => &["continue", "respond", "failed"],
    }
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin").field("id", &self.id).field("kind", &self.kind).finish_non_exhaustive()
    }
}

/// Why a step could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum StepLoadError {
    /// The plugin's `configure` refused the step's configuration.
    #[error("{}{}", if .0.pointer.is_empty() { String::new() } else { format!("{}: ", .0.pointer) }, .0.message)]
    Refused(PluginConfigError),
    /// The plugin could not be instantiated or failed during `configure`.
    #[error("{0}")]
    Failed(PluginFailure),
}

/// What a plugin is handed beyond its component and configuration, resolved by the snapshot's
/// build: its `audit_file` (resolved against the configuration file's directory) and that
/// sink's options, and the secrets it is granted.
#[derive(Debug, Default)]
pub struct Provisions<'a> {
    /// Where `audit` appends; none: stdout.
    pub audit_file: Option<&'a std::path::Path>,
    /// How that sink syncs and signs.
    pub audit_options: audit::SinkOptions,
    /// The secrets of `secrets` and `readable_secrets`.
    pub secrets: crate::secrets::SecretGrants,
}

// === impl LoadedPlugin ===

impl LoadedPlugin {
    /// Prepares `component` as plugin `id` configured by `config`, with its `provisions`. Its imports were
    /// checked before it was compiled ([`imports::check`]); `imports` lists them.
    ///
    /// Errors (as text for the configuration report): an import the linker cannot satisfy
    /// with the type the component expects; no export of `config.kind` with the contract's
    /// functions; `fuel` without fuel metering; an audit file that cannot be opened or does
    /// not end with a chained record.
    pub fn new(
        engine: Arc<PluginEngine>,
        id: &str,
        config: &PluginConfig,
        component: &Component,
        content_hash: String,
        imports: Vec<String>,
        provisions: Provisions<'_>,
    ) -> Result<Self, String> {
        let Provisions { audit_file, audit_options, secrets } = provisions;
        // Each series in its own call: a `get_or_create` guard still alive (as temporaries in
        // one struct literal are) while another creates a series deadlocks on the family's lock.
        let histogram = |phase: &str| {
            let labels = PhaseLabels { plugin: id.to_owned(), phase: phase.to_owned() };
            engine.metrics().plugin_call_duration.get_or_create(&labels).clone()
        };
        let decision = |mode: &str, decision: &'static str| {
            let labels = DecisionLabels { plugin: id.to_owned(), decision: decision.to_owned(), mode: mode.to_owned() };
            (decision, engine.metrics().plugin_decisions.get_or_create(&labels).clone())
        };
        let breaker_labels = crate::metrics::PluginLabels { plugin: id.to_owned() };
        let series = CallSeries {
            request: histogram("request"),
            response: histogram("response"),
            observe: histogram("observe"),
            shadow: histogram("shadow"),
            decisions: decisions_of(config.kind).iter().map(|d| decision("enforce", d)).collect(),
            shadow_decisions: decisions_of(config.kind).iter().map(|d| decision("shadow", d)).collect(),
            breaker_open: engine.metrics().breaker_open.get_or_create(&breaker_labels).clone(),
        };
        let origins = config.allowed_origins.clone();
        let audit = if config.capabilities.contains(&crate::config::Capability::Audit) {
            Some(engine.audit_sinks().open(audit_file, &audit_options)?)
        } else {
            None
        };
        if config.fuel.is_some() && !engine.fuel_metering() {
            return Err("`fuel` needs `fuel_metering = true` in [runtime] when the gateway starts".into());
        }
        let pre = engine.linker().instantiate_pre(component).map_err(|e| format!("{e:#}"))?;
        let (indices, contract) = KindIndices::new(config.kind, &pre)
            .map_err(|e| format!("the component does not export the `{}` kind's interface: {e:#}", config.kind))?;
        let policy = config.failure_policy.unwrap_or(match config.kind {
            PluginKind::Logging => FailurePolicy::FailOpen,
            _ => FailurePolicy::FailClosed,
        });
        Ok(LoadedPlugin {
            id: id.into(),
            kind: config.kind,
            policy,
            content_hash,
            contract,
            imports,
            grants: Arc::new(Grants {
                plugin_id: id.into(),
                kv: engine.kv().namespace(&id.into()),
                capabilities: config.capabilities.clone(),
                max_log_events_per_call: config.max_log_events_per_call,
                origins,
                audit,
                audit_options,
                secrets,
            }),
            engine,
            pre,
            indices,
            memory_bytes: usize::try_from(config.memory_mib * 1024 * 1024).unwrap_or(MAX_MEMORY_BYTES),
            deadline: Duration::from_millis(config.deadline_ms),
            max_instances: config.max_instances,
            max_uses: config.max_uses_per_instance,
            isolation: config.isolation,
            fuel: config.fuel,
            failures: std::sync::atomic::AtomicU64::new(0),
            series,
            breaker: Breaker::new(&config.breaker),
        })
    }

    /// What the plugin is granted.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// The crash-loop breaker's state.
    pub fn breaker_state(&self) -> breaker::BreakerState {
        self.breaker.state()
    }

    /// Counts `failure` in `portcullis_plugin_failures_total`. Every failure of this plugin
    /// passes here once, whether the call failed or the host refused what it returned.
    pub fn count_failure(&self, failure: &PluginFailure) {
        self.engine.metrics().plugin_failed(&self.id, failure.kind.label());
        self.failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records one call's duration in `phase` (`request`, `response`, `observe`) and its
    /// decision, when it made one, in the metrics.
    pub fn record_call(&self, phase: CallPhase, decision: Option<&'static str>, duration: std::time::Duration) {
        let histogram = match phase {
            CallPhase::Request => &self.series.request,
            CallPhase::Response => &self.series.response,
            CallPhase::Observe => &self.series.observe,
        };
        histogram.observe(duration.as_secs_f64());
        let Some(decision) = decision else { return };
        match self.series.decisions.iter().find(|(d, _)| *d == decision) {
            Some((_, counter)) => {
                counter.inc();
            }
            // Not one of the kind's decisions: a host bug, still counted.
            None => self.count_unknown_decision(decision, "enforce"),
        }
    }

    /// Records one call as a shadow step: its duration (`phase="shadow"`) and its decision
    /// (`mode="shadow"`).
    pub fn record_shadow(&self, decision: &'static str, duration: std::time::Duration) {
        self.series.shadow.observe(duration.as_secs_f64());
        match self.series.shadow_decisions.iter().find(|(d, _)| *d == decision) {
            Some((_, counter)) => {
                counter.inc();
            }
            None => self.count_unknown_decision(decision, "shadow"),
        }
    }

    fn count_unknown_decision(&self, decision: &str, mode: &str) {
        let labels =
            DecisionLabels { plugin: self.id.to_string(), decision: decision.to_owned(), mode: mode.to_owned() };
        self.engine.metrics().plugin_decisions.get_or_create(&labels).inc();
    }

    /// Failed calls since this plugin (this component and configuration) was loaded.
    pub fn failure_count(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records a call outcome in the breaker and publishes its state, without a lock or a
    /// clock read for a healthy plugin's call ([`Breaker::record_now`], [`Breaker::is_closed`]).
    fn record_outcome(&self, ok: bool, probe: bool) {
        if self.breaker.record_now(ok, probe) {
            tracing::error!(plugin = %self.id, "crash-loop breaker opened: calls fail fast until a probe succeeds");
        }
        // Written on change only. The series is the plugin id's, shared with the plugin this one
        // replaced in a reload, which may have left it at 1: the next call here corrects it.
        let open = i64::from(!self.breaker.is_closed());
        if self.series.breaker_open.get() != open {
            self.series.breaker_open.set(open);
        }
    }

    /// The per-call deadline.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    fn ticks(deadline: Duration) -> u64 {
        let tick = EPOCH_TICK.as_millis().max(1);
        u64::try_from(deadline.as_millis().div_ceil(tick)).unwrap_or(u64::MAX)
    }

    /// A new instance, its start functions run under `budget` of wall time (a 12–18 MB
    /// JavaScript or Python component initializes its runtime here; under the call deadline,
    /// 100 ms, that failed on a machine busy compiling).
    async fn instantiate(&self, budget: Duration) -> wasmtime::Result<Instance> {
        let mut state = HostState::new(self.grants.clone(), self.engine.shared().clone(), self.memory_bytes);
        state.begin_call("instantiate", &opentelemetry::Context::new(), budget, Instant::now());
        let mut store = Store::new(self.engine.engine(), state);
        store.limiter(|s| &mut s.limits);
        // Past the deadline, a call that spent time waiting on outbound HTTP gets that time
        // back; otherwise it traps (`Trap::Interrupt`, reported as a timeout).
        store.epoch_deadline_callback(|ctx| {
            Ok(match ctx.data().budget_left() {
                Some(left) => UpdateDeadline::Continue(Self::ticks(left)),
                None => UpdateDeadline::Interrupt,
            })
        });
        store.set_epoch_deadline(Self::ticks(budget));
        if self.engine.fuel_metering() {
            store.set_fuel(u64::MAX)?;
        }
        let instance = self.pre.instantiate_async(&mut store).await?;
        let guest = self.indices.load(&mut store, &instance)?;
        Ok(Instance { store, guest, uses: 0 })
    }
}

/// The breaker outcome of a call that returned: the caller checks the reply and settles it
/// once, so output the host refuses counts as a failure exactly like a trap. Dropped unsettled
/// (the call's future was cancelled), a half-open probe gives its slot back and nothing is
/// recorded.
#[must_use = "settle the call's outcome once the reply is checked"]
pub struct Settle<'a> {
    /// The plugin whose breaker records the outcome; none for a step without one.
    plugin: Option<&'a LoadedPlugin>,
    probe: bool,
    settled: bool,
}

impl Settle<'_> {
    /// The settle of a step that has no breaker (a test's fake step): settling records nothing.
    pub fn detached() -> Settle<'static> {
        Settle { plugin: None, probe: false, settled: false }
    }

    /// Records whether the call, including the host's checks of its reply, succeeded.
    pub fn settle(mut self, ok: bool) {
        self.settled = true;
        if let Some(plugin) = self.plugin {
            plugin.record_outcome(ok, self.probe);
        }
    }
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        if !self.settled
            && self.probe
            && let Some(plugin) = self.plugin
        {
            plugin.breaker.abandon_probe();
        }
    }
}

/// The least time `configure` gets, whatever the plugin's `deadline_ms`.
const CONFIGURE_DEADLINE_FLOOR: Duration = Duration::from_secs(5);

/// A plugin configured for one step: a pool of configured instances.
pub struct StepPool {
    plugin: Arc<LoadedPlugin>,
    config: String,
    idle: Mutex<Vec<Instance>>,
    permits: Semaphore,
    body_limit: Option<u64>,
    hooks: Hooks,
    record_headers: Option<Arc<[http::HeaderName]>>,
    /// For a logging step whose `configure` called `audit.append-each-exchange`: the names it
    /// redacts. The host then appends the standard record of each exchange itself and never
    /// calls the step's `observe`.
    each_exchange: Option<Vec<String>>,
}

impl std::fmt::Debug for StepPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepPool").field("plugin", &self.plugin.id).finish_non_exhaustive()
    }
}

// === impl StepPool ===

impl StepPool {
    /// Configures a first instance with `config` (JSON text) to prove the plugin accepts it,
    /// then lets it go: instances are created on first use and reused after, so a large
    /// configuration costs memory only for the steps that serve traffic.
    ///
    /// Errors: [`StepLoadError::Refused`] with the plugin's own reason when it rejects the
    /// configuration; [`StepLoadError::Failed`] when it cannot be instantiated or traps.
    pub async fn new(plugin: Arc<LoadedPlugin>, config: String) -> Result<Self, StepLoadError> {
        let mut pool = StepPool {
            permits: Semaphore::new(plugin.max_instances),
            plugin,
            config,
            idle: Mutex::new(Vec::new()),
            body_limit: None,
            hooks: Hooks { request: true, response: false },
            record_headers: None,
            each_exchange: None,
        };
        let mut first = pool.fresh().await?;
        pool.each_exchange = first.store.data_mut().take_each_exchange();
        if pool.each_exchange.is_some() && pool.plugin.kind != PluginKind::Logging {
            return Err(StepLoadError::Refused(PluginConfigError {
                pointer: String::new(),
                message: format!(
                    "`audit.append-each-exchange` is for logging plugins; this one is loaded as `{}`",
                    pool.plugin.kind
                ),
            }));
        }
        pool.body_limit = first
            .body_limit()
            .await
            .map_err(|e| StepLoadError::Failed(PluginFailure::from_wasmtime(&pool.plugin.id, &e)))?;
        pool.hooks = first
            .hooks()
            .await
            .map_err(|e| StepLoadError::Failed(PluginFailure::from_wasmtime(&pool.plugin.id, &e)))?;
        let names = first
            .record_headers()
            .await
            .map_err(|e| StepLoadError::Failed(PluginFailure::from_wasmtime(&pool.plugin.id, &e)))?;
        pool.record_headers = names
            .map(|names| {
                names
                    .iter()
                    .map(|n| {
                        http::HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                            StepLoadError::Refused(PluginConfigError {
                                pointer: String::new(),
                                message: format!("`record-headers` returned {n:?}, which is not a header name"),
                            })
                        })
                    })
                    .collect::<Result<Arc<[_]>, _>>()
            })
            .transpose()?;
        Ok(pool)
    }

    /// The plugin.
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.plugin
    }

    /// Instances pooled and ready, and instances in a call now.
    pub fn instance_counts(&self) -> (usize, usize) {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).len();
        let busy = self.plugin.max_instances.saturating_sub(self.permits.available_permits());
        (idle, busy)
    }

    /// The hooks the chain calls on this step (the others are never called).
    pub fn hooks(&self) -> Hooks {
        self.hooks
    }

    /// For a logging step, the header names it wants in exchange records; none for all.
    pub fn record_headers(&self) -> Option<&[http::HeaderName]> {
        self.record_headers.as_deref()
    }

    /// For a validation step, the request body bytes it wants buffered.
    pub fn body_limit(&self) -> Option<u64> {
        self.body_limit
    }

    /// A new instance, configured. Instantiation and configuration may initialize a language
    /// runtime or parse keys, so each gets ten times the call deadline, at least five seconds: the deadline is wall time, and a Python plugin's
    /// `configure` that takes milliseconds alone took over a second while Cranelift compiled
    /// a JavaScript component on both cores (the limit was one second until then).
    async fn fresh(&self) -> Result<Instance, StepLoadError> {
        let id = &self.plugin.id;
        let configure_deadline = (self.plugin.deadline * 10).max(CONFIGURE_DEADLINE_FLOOR);
        let mut instance = self.plugin.instantiate(configure_deadline).await.map_err(|e| {
            StepLoadError::Failed(PluginFailure::new(id, FailureKind::Unavailable(format!("instantiation: {e:#}"))))
        })?;
        instance.store.data_mut().begin_call(
            "configure",
            &opentelemetry::Context::new(),
            configure_deadline,
            Instant::now(),
        );
        instance.store.data_mut().begin_configure();
        instance.store.set_epoch_deadline(LoadedPlugin::ticks(configure_deadline));
        if self.plugin.engine.fuel_metering() {
            instance
                .store
                .set_fuel(u64::MAX)
                .map_err(|e| StepLoadError::Failed(PluginFailure::from_wasmtime(id, &e)))?;
        }
        let configured = instance.configure(&self.config).await;
        instance.store.data_mut().end_configure();
        match configured {
            Ok(Ok(())) => Ok(instance),
            Ok(Err(refused)) => Err(StepLoadError::Refused(refused)),
            Err(e) => Err(StepLoadError::Failed(PluginFailure::from_wasmtime(id, &e))),
        }
    }

    /// Makes `call` on a pooled instance (or a fresh one when none is idle, or always with
    /// `isolation = "request"`), under the plugin's deadline, fuel and limits, unless the
    /// plugin's breaker is open. A failed call is recorded in the breaker here; a reply comes
    /// with the [`Settle`] the caller completes after checking it. The caller counts failures
    /// with [`LoadedPlugin::count_failure`].
    ///
    /// Errors: a [`PluginFailure`]: timeout, out of fuel or memory, trap, capability denied,
    /// breaker open, or no instance available within the deadline (all `max_instances` busy).
    pub async fn call(
        &self,
        request_id: &str,
        trace: &opentelemetry::Context,
        call: Call<'_>,
        started: Instant,
    ) -> Result<(Replied, Settle<'_>), PluginFailure> {
        if let (Some(redact), Call::Observe(exchange) | Call::Record(exchange)) = (&self.each_exchange, &call) {
            let durable = matches!(call, Call::Record(_));
            return Ok((self.append_each_exchange(request_id, exchange, redact, durable), Settle::detached()));
        }
        let plugin = &*self.plugin;
        let admission = plugin.breaker.admit_now();
        if admission == Admission::Refused {
            return Err(PluginFailure::new(&plugin.id, FailureKind::BreakerOpen));
        }
        let settle = Settle { plugin: Some(plugin), probe: admission == Admission::Probe, settled: false };
        match self.call_instance(request_id, trace, call, started).await {
            Ok(reply) => Ok((reply, settle)),
            // A shared store that is down is not the plugin crashing: the breaker is left
            // alone (a probe gives its slot back).
            Err(failure @ PluginFailure { kind: FailureKind::KvUnavailable(_), .. }) => Err(failure),
            Err(failure) => {
                settle.settle(false);
                Err(failure)
            }
        }
    }

    /// Whether the step's plugin declared `audit.append-each-exchange` in `configure`: the host
    /// appends its standard record itself ([`StepPool::append_finished`]) and never calls its
    /// `observe`.
    pub fn appends_each_exchange(&self) -> bool {
        self.each_exchange.is_some()
    }

    /// For a step that declared `audit.append-each-exchange`, what its `observe` would do, done
    /// by the host without a call and without the WIT exchange: renders the standard record of
    /// `finished` ([`audit::render_finished`]) and appends it as
    /// [`StepPool::append_each_exchange`] does. `None` for any other step: it is called.
    pub fn append_finished(&self, request_id: &str, finished: &audit::Finished<'_>, durable: bool) -> Option<Replied> {
        let redact = self.each_exchange.as_deref()?;
        let record = audit::render_finished(finished, self.record_headers.as_deref(), redact);
        Some(self.append_standard(request_id, &record, durable))
    }

    /// What the step's `observe` would do after declaring `audit.append-each-exchange`, done by
    /// the host without a call: renders the standard record of `exchange` (this step's
    /// `record-headers` fields, `redact`ed) and appends it ([`StepPool::append_standard`]).
    fn append_each_exchange(
        &self,
        request_id: &str,
        exchange: &bindings::exports::portcullis::plugin::logging::Exchange,
        redact: &[String],
        durable: bool,
    ) -> Replied {
        let record = audit::render_observed(exchange, self.record_headers.as_deref(), redact);
        self.append_standard(request_id, &record, durable)
    }

    /// Appends a standard `record` to the plugin's sink, written at once when `durable` (a
    /// fail-closed step's). No plugin code runs, so the breaker is left alone; a failed append
    /// is logged, and for a durable one returned as the reply's `audit_failure`, which fails
    /// the step as a failed `append-observed` would.
    fn append_standard(&self, request_id: &str, record: &str, durable: bool) -> Replied {
        let appended = self.plugin.grants.audit_sink().and_then(|sink| sink.append_rendered(record, durable));
        let audit_failure = appended.err().map(|e| {
            tracing::error!(plugin = %self.plugin.id, request_id, error = %e, "audit record not written");
            e.to_string()
        });
        Replied { reply: Reply::Observed, secret_headers: Vec::new(), audit_failure: audit_failure.filter(|_| durable) }
    }

    /// The call on an instance of the pool. The running-time budget starts at `started` when a
    /// slot and an idle instance were there at once (the usual case: no second clock reading
    /// per step), else once the wait or the instantiation is over.
    async fn call_instance(
        &self,
        request_id: &str,
        trace: &opentelemetry::Context,
        call: Call<'_>,
        started: Instant,
    ) -> Result<Replied, PluginFailure> {
        let id = &self.plugin.id;
        // A free slot is the usual case: take it without arming a timer.
        // The rare paths below (waiting for a permit, instantiating) are boxed: an unboxed
        // future is as large as its largest state, and this one is moved into its caller's
        // on every step of every request (docs/BENCHMARKS.md, entry 31).
        let mut waited = false;
        let _permit = match self.permits.try_acquire() {
            Ok(permit) => permit,
            Err(_) => Box::pin(tokio::time::timeout(self.plugin.deadline, self.permits.acquire()))
                .await
                .map_err(|_| PluginFailure::new(id, FailureKind::Unavailable("every instance is busy".into())))?
                .map_err(|_| PluginFailure::new(id, FailureKind::Unavailable("pool closed".into())))
                .inspect(|_| waited = true)?,
        };
        let reuse = self.plugin.isolation == Isolation::Reuse;
        let idle = if reuse { self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() } else { None };
        let mut instance = match idle {
            Some(instance) => instance,
            None => Box::pin(self.fresh()).await.inspect(|_| waited = true).map_err(|e| match e {
                StepLoadError::Failed(f) => f,
                StepLoadError::Refused(r) => PluginFailure::new(
                    id,
                    FailureKind::Unavailable(format!("configure refused on a new instance: {}", r.message)),
                ),
            })?,
        };
        let started = if waited { Instant::now() } else { started };
        instance.store.data_mut().begin_call(request_id, trace, self.plugin.deadline, started);
        if let Call::Observe(exchange) | Call::Record(exchange) = call {
            // `audit.append-observed` records this exchange, with this step's own header
            // fields only: the exchange carries every logging step's of the route.
            instance.store.data_mut().begin_observe(exchange, self.record_headers.clone());
        }
        if matches!(call, Call::Record(_)) {
            instance.store.data_mut().append_durably();
        }
        instance.store.set_epoch_deadline(LoadedPlugin::ticks(self.plugin.deadline));
        if let Some(fuel) = self.plugin.fuel {
            instance.store.set_fuel(fuel).map_err(|e| PluginFailure::from_wasmtime(id, &e))?;
        }
        let reply = match instance.invoke(call).await {
            Ok(reply) => reply,
            Err(e) => {
                let mut failure = PluginFailure::from_wasmtime(id, &e);
                if let (FailureKind::Trap(_), Some(why)) = (&failure.kind, instance.store.data().kv_unavailable()) {
                    failure.kind = FailureKind::KvUnavailable(why.to_owned());
                }
                return Err(failure);
            }
        };
        instance.store.data_mut().end_observe();
        let secret_headers = instance.store.data_mut().take_secret_headers();
        let audit_failure = instance.store.data_mut().take_audit_failure();
        instance.uses += 1;
        if reuse && instance.uses < self.plugin.max_uses {
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(instance);
        }
        Ok(Replied { reply, secret_headers, audit_failure })
    }
}
