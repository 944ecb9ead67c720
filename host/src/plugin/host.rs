//! The store's state type and the host side of every capability (`log`, `kv`, `clock`,
//! `http-client`, `audit`, `secrets`, `signatures`), implemented on it as wasmtime's
//! `wasi-config` does.
//!
//! WASI is linked because language runtimes import it (Rust's `std`, StarlingMonkey, CPython),
//! with an empty context: no environment, arguments, preopened directories, socket addresses
//! or inherited stdio; `wasi:http`'s outgoing handler (`DenyHttp`) denies every request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::audit::{AuditError, Sink};
use super::bindings::exports::portcullis::plugin::logging::Exchange;
use super::clock::Clock;
use super::failure::CapabilityDenied;
use super::kv::{Kv, KvError as StoreError, Namespace as KvNamespace};
use super::outbound::{self, MAX_REQUESTS_PER_CALL, Origin, Outbound};
use crate::config::Capability;
use crate::metrics::{Metrics, PluginLabels, SignatureLabels};
use crate::secrets::{CredentialRequest, SecretError, SecretGrants, SecretHeader};
use crate::telemetry::{self, SpanOutcome};

/// Longest log message kept from a plugin, in bytes; longer ones are truncated.
pub const MAX_LOG_MESSAGE_BYTES: usize = 16 * 1024;

/// Verifying keys (`signatures.verifying-key`) one plugin instance may hold at once. Keys live
/// in the host's memory, outside the plugin's memory limit; at most 8192-bit RSA moduli, so
/// this bounds them to about 1 MiB per instance.
pub const MAX_VERIFYING_KEYS: u32 = 1024;

/// What a plugin may do, fixed at load.
#[derive(Debug)]
pub struct Grants {
    /// Plugin id, also the `kv` namespace's name.
    pub plugin_id: Arc<str>,
    /// Its `kv` namespace, resolved on the engine's store at load.
    pub kv: KvNamespace,
    /// Granted capabilities beyond `log` and `clock`.
    pub capabilities: Vec<Capability>,
    /// Log events kept per call.
    pub max_log_events_per_call: u32,
    /// Origins reachable with `http-client`.
    pub origins: Vec<Origin>,
    /// Where `audit.append` writes, when `audit` is granted.
    pub audit: Option<Arc<Sink>>,
    /// The options this plugin's configuration gives that sink, applied when its snapshot
    /// starts serving ([`Sink::configure`]).
    pub audit_options: super::audit::SinkOptions,
    /// The secrets it may use by name, and read.
    pub secrets: SecretGrants,
}

impl Grants {
    /// The plugin's audit sink.
    ///
    /// Errors: [`AuditError::Unavailable`] when it has none (no `audit` grant).
    pub fn audit_sink(&self) -> Result<&Arc<Sink>, AuditError> {
        self.audit.as_ref().ok_or_else(|| AuditError::Unavailable("no audit sink is configured".into()))
    }
}

/// What every store of the engine shares: the `kv` store, metrics, the outbound HTTP client and
/// the clock.
#[derive(Debug)]
pub struct Shared {
    /// The `kv` backend.
    pub kv: Arc<Kv>,
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    /// The `http-client` backend.
    pub outbound: Outbound,
    /// Spans and `traceparent` for outbound requests.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// The clock plugins read and TTLs run on.
    pub clock: Clock,
}

/// Per-store state: WASI's empty context, resource limits, and the plugin's grants.
pub struct HostState {
    wasi: WasiCtx,
    http: wasmtime_wasi_http::WasiHttpCtx,
    deny_http: DenyHttp,
    table: ResourceTable,
    /// Memory, table and instance limits for this store.
    pub(crate) limits: StoreLimits,
    grants: Arc<Grants>,
    shared: Arc<Shared>,
    /// The request the current call serves, for log lines.
    request_id: String,
    /// The current call's span (its plugin step), parent of outbound request spans.
    trace: opentelemetry::Context,
    /// Log events emitted during the current call.
    log_events: u32,
    /// Outbound requests made during the current call.
    http_requests: u32,
    /// When the current call started, its running-time budget, and the time spent waiting on
    /// outbound requests (which does not count against the budget).
    started: Instant,
    budget: Duration,
    waited: Duration,
    /// Why a `kv` call of the current call found the store unavailable, if one did: a trap
    /// that follows is the plugin failing its request for that reason.
    kv_unavailable: Option<String>,
    /// Headers the current call asked to have written from secrets (`secrets.inject`).
    secret_headers: Vec<SecretHeader>,
    /// Whether the current call's `audit.append`s must be written before they return (a
    /// fail-closed logging step's).
    durable: bool,
    /// Why one of them failed, if one did.
    audit_failure: Option<String>,
    /// Verifying keys the instance holds (`signatures`), at most [`MAX_VERIFYING_KEYS`].
    verifying_keys: u32,
    /// The exchange the current `observe` call received, for `audit.append-observed`, and the
    /// request header fields the step records (its `record-headers`; none: all).
    observed: Option<(Arc<Exchange>, Option<RecordedFields>)>,
    /// The resource-table entry every call's request is lent through, pushed at the first
    /// lend and kept for the store's life ([`HostState::lend`]).
    pub(crate) lent: Option<wasmtime::component::Resource<super::request::RequestView>>,
    /// Whether the current call is `configure` (the one call `audit.append-each-exchange`
    /// may come from).
    configuring: bool,
    /// What `audit.append-each-exchange` declared in `configure`: the names to redact.
    each_exchange: Option<Vec<String>>,
}

/// A logging step's `record-headers`, as header names.
pub(crate) type RecordedFields = Arc<[http::HeaderName]>;

/// A record to append: as the plugin gave it (checked), or rendered by the host.
enum Appended<'a> {
    Given(&'a str),
    Rendered(&'a str),
}

// === impl HostState ===

impl HostState {
    /// State for one plugin instance, limited to `memory_bytes` of linear memory.
    pub fn new(grants: Arc<Grants>, shared: Arc<Shared>, memory_bytes: usize) -> Self {
        HostState {
            wasi: WasiCtx::builder().build(),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            deny_http: DenyHttp,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(memory_bytes)
                .instances(64)
                .tables(64)
                .memories(8)
                .trap_on_grow_failure(true)
                .build(),
            grants,
            shared,
            request_id: String::new(),
            trace: opentelemetry::Context::new(),
            log_events: 0,
            http_requests: 0,
            started: Instant::now(),
            budget: Duration::ZERO,
            waited: Duration::ZERO,
            kv_unavailable: None,
            secret_headers: Vec::new(),
            durable: false,
            audit_failure: None,
            verifying_keys: 0,
            observed: None,
            lent: None,
            configuring: false,
            each_exchange: None,
        }
    }

    /// Resets per-call state before a call made for `request_id` under the span `trace`
    /// with `budget` of running time (the plugin's deadline) from `started` (about now: the
    /// caller's clock reading). Appends are buffered until [`HostState::append_durably`] says
    /// otherwise.
    pub(crate) fn begin_call(
        &mut self,
        request_id: &str,
        trace: &opentelemetry::Context,
        budget: Duration,
        started: Instant,
    ) {
        self.request_id.clear();
        self.request_id.push_str(request_id);
        self.trace = trace.clone();
        self.log_events = 0;
        self.http_requests = 0;
        self.started = started;
        self.budget = budget;
        self.waited = Duration::ZERO;
        self.kv_unavailable = None;
        self.secret_headers.clear();
        self.durable = false;
        self.audit_failure = None;
        self.observed = None;
        self.configuring = false;
    }

    /// Marks the call [`HostState::begin_call`] began as `configure`.
    pub(crate) fn begin_configure(&mut self) {
        self.configuring = true;
        self.each_exchange = None;
    }

    /// Ends what [`HostState::begin_configure`] began: the load-time calls after `configure`
    /// (`body-limit`, `hooks`, `record-headers`) cannot declare `append-each-exchange`.
    pub(crate) fn end_configure(&mut self) {
        self.configuring = false;
    }

    /// What the `configure` call that just returned declared with
    /// `audit.append-each-exchange`: the header names to redact in the standard record the
    /// host appends for each exchange; none when it did not call it.
    pub(crate) fn take_each_exchange(&mut self) -> Option<Vec<String>> {
        self.each_exchange.take()
    }

    /// Hands `audit.append-observed` the exchange the current `observe` call receives and the
    /// header fields the step records (`recorded`: its `record-headers`, none for all), until
    /// [`HostState::end_observe`].
    pub(crate) fn begin_observe(&mut self, exchange: &Arc<Exchange>, recorded: Option<RecordedFields>) {
        self.observed = Some((Arc::clone(exchange), recorded));
    }

    /// Lets go of the exchange [`HostState::begin_observe`] kept.
    pub(crate) fn end_observe(&mut self) {
        self.observed = None;
    }

    /// Appends `record` to the plugin's sink: buffered, or written before it returns in a
    /// fail-closed logging step's call, whose first failure is kept for
    /// [`HostState::take_audit_failure`].
    ///
    /// Errors: the sink's ([`Sink::append`], [`Sink::append_rendered`]), or
    /// [`AuditError::Unavailable`] when the plugin has no sink.
    fn append_record(&mut self, record: Appended<'_>) -> Result<String, AuditError> {
        let sink = self.grants.audit_sink()?;
        let appended = match (record, self.durable) {
            (Appended::Given(record), false) => sink.append(record),
            (Appended::Given(record), true) => sink.append_durably(record),
            (Appended::Rendered(record), durable) => sink.append_rendered(record, durable),
        };
        if let (Err(e), true, None) = (&appended, self.durable, &self.audit_failure) {
            self.audit_failure = Some(e.to_string());
        }
        appended
    }

    /// Makes the current call's `audit.append`s durable: written before they return, and
    /// failures kept for [`HostState::take_audit_failure`].
    pub(crate) fn append_durably(&mut self) {
        self.durable = true;
    }

    /// Why one of the current call's durable appends failed, if one did.
    pub(crate) fn take_audit_failure(&mut self) -> Option<String> {
        self.audit_failure.take()
    }

    /// The headers the call that just returned asked to have written from secrets, in order.
    pub(crate) fn take_secret_headers(&mut self) -> Vec<SecretHeader> {
        std::mem::take(&mut self.secret_headers)
    }

    /// Why the current call's `kv` store was unavailable, when a `kv` call failed so.
    pub(crate) fn kv_unavailable(&self) -> Option<&str> {
        self.kv_unavailable.as_deref()
    }

    /// Awaits a `kv` call: the wait on a shared store does not count against the running-time
    /// budget (it is I/O, as outbound HTTP is), and an unavailable store is remembered. The
    /// in-process store never waits: its time is the call's own, and no clock is read for it.
    async fn kv_wait<T>(&mut self, call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let started = matches!(*self.shared.kv, Kv::Redis(_)).then(Instant::now);
        let outcome = call.await;
        if let Some(started) = started {
            self.waited += started.elapsed();
        }
        if let Err(StoreError::Unavailable(why)) = &outcome {
            tracing::debug!(plugin = %self.grants.plugin_id, request_id = %self.request_id, error = %why, "kv store unavailable");
            self.kv_unavailable = Some(why.clone());
        }
        outcome
    }

    /// Called when the epoch deadline passes: the running time left, or none when the call
    /// has used its budget. Time spent waiting on outbound HTTP is not running time, so a call
    /// that waited gets its deadline moved by that much.
    pub(crate) fn budget_left(&self) -> Option<Duration> {
        let ran = self.started.elapsed().saturating_sub(self.waited);
        self.budget.checked_sub(ran).filter(|left| !left.is_zero())
    }

    /// Traps the guest unless `capability` is granted. Load-time checks refuse components that
    /// import capabilities they are not granted, so this is defence in depth.
    fn require(&self, capability: Capability, name: &'static str) -> wasmtime::Result<()> {
        if self.grants.capabilities.contains(&capability) {
            Ok(())
        } else {
            Err(wasmtime::Error::new(CapabilityDenied(name)))
        }
    }
}

impl HostState {
    /// The store's resource table (WASI's handles and lent requests).
    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl wasmtime_wasi_http::WasiHttpView for HostState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.deny_http }
    }
}

/// The `wasi:http/outgoing-handler` behind every plugin: each request is answered with
/// `error-code.HTTP-request-denied`, so a runtime that imports raw HTTP (StarlingMonkey's
/// `fetch`) loads, and a plugin that calls it gets an error value, never a trap. Outbound HTTP
/// goes through the granted `http-client` capability instead.
struct DenyHttp;

impl wasmtime_wasi_http::WasiHttpHooks for DenyHttp {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                )>,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// `k=v k=v`, for the log line.
struct FieldList<'a>(&'a [(String, String)]);

impl std::fmt::Display for FieldList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{k}={v:?}")?;
        }
        Ok(())
    }
}

/// The host side of the capability interfaces, the same in contracts 0.1.0, 0.2.0 and 0.3.0 but
/// generated as distinct Rust types, so implemented once here for the module `$m` of each;
/// 0.2.0's additions to `kv` (`throttle`) and `audit` (`append-observed`) come in as the two
/// blocks.
macro_rules! capabilities {
    ($m:ident, $errors:ident, $down:path, $up:path, { $($throttle:tt)* }, { $($audit:tt)* }) => {
impl $m::log::Host for HostState {
    fn emit(&mut self, level: $m::log::Level, mut message: String, fields: Vec<(String, String)>) -> wasmtime::Result<()> {
        self.log_events += 1;
        if self.log_events > self.grants.max_log_events_per_call {
            let labels = PluginLabels { plugin: self.grants.plugin_id.to_string() };
            self.shared.metrics.log_events_dropped.get_or_create(&labels).inc();
            return Ok(());
        }
        if message.len() > MAX_LOG_MESSAGE_BYTES {
            let mut cut = MAX_LOG_MESSAGE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let plugin = &*self.grants.plugin_id;
        let request_id = self.request_id.as_str();
        let fields = (!fields.is_empty()).then(|| FieldList(&fields).to_string());
        let fields = fields.as_deref();
        match level {
            $m::log::Level::Trace => tracing::trace!(target: "portcullis::plugin", plugin, request_id, fields, "{message}"),
            $m::log::Level::Debug => tracing::debug!(target: "portcullis::plugin", plugin, request_id, fields, "{message}"),
            $m::log::Level::Info => tracing::info!(target: "portcullis::plugin", plugin, request_id, fields, "{message}"),
            $m::log::Level::Warn => tracing::warn!(target: "portcullis::plugin", plugin, request_id, fields, "{message}"),
            $m::log::Level::Error => tracing::error!(target: "portcullis::plugin", plugin, request_id, fields, "{message}"),
        }
        Ok(())
    }
}

impl $m::kv::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, $m::kv::KvError>> {
        self.require(Capability::Kv, "kv")?;
        let (shared, grants) = (self.shared.clone(), self.grants.clone());
        let outcome = self.kv_wait(shared.kv.get(&grants.kv, &key)).await;
        Ok(outcome.map_err($errors))
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> wasmtime::Result<Result<(), $m::kv::KvError>> {
        self.require(Capability::Kv, "kv")?;
        let (shared, grants) = (self.shared.clone(), self.grants.clone());
        let outcome = self.kv_wait(shared.kv.set(&grants.kv, &key, value, ttl_ms)).await;
        Ok(outcome.map_err($errors))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, $m::kv::KvError>> {
        self.require(Capability::Kv, "kv")?;
        let (shared, grants) = (self.shared.clone(), self.grants.clone());
        let outcome = self.kv_wait(shared.kv.delete(&grants.kv, &key)).await;
        Ok(outcome.map_err($errors))
    }

    async fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<i64, $m::kv::KvError>> {
        self.require(Capability::Kv, "kv")?;
        let (shared, grants) = (self.shared.clone(), self.grants.clone());
        let outcome = self.kv_wait(shared.kv.increment(&grants.kv, &key, delta, ttl_ms)).await;
        Ok(outcome.map_err($errors))
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<bool, $m::kv::KvError>> {
        self.require(Capability::Kv, "kv")?;
        let (shared, grants) = (self.shared.clone(), self.grants.clone());
        let cas = shared.kv.compare_and_swap(&grants.kv, &key, expected.as_deref(), value, ttl_ms);
        let outcome = self.kv_wait(cas).await;
        Ok(outcome.map_err($errors))
    }

    $($throttle)*
}

fn $errors(e: StoreError) -> $m::kv::KvError {
    match e {
        StoreError::TooLarge => $m::kv::KvError::TooLarge,
        StoreError::QuotaExceeded => $m::kv::KvError::QuotaExceeded,
        StoreError::NotANumber => $m::kv::KvError::NotANumber,
        StoreError::Unavailable(why) => $m::kv::KvError::Unavailable(why),
    }
}

impl $m::clock::Host for HostState {
    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(self.shared.clock.now_ms())
    }
}

impl $m::http_client::Host for HostState {
    async fn send(
        &mut self,
        request: $m::http_client::OutboundRequest,
    ) -> wasmtime::Result<Result<$m::http_client::OutboundResponse, $m::http_client::HttpError>> {
        self.require(Capability::HttpClient, "http-client")?;
        Ok($up(self.send_outbound($down(request), None).await))
    }
}

impl $m::audit::Host for HostState {
    fn append(&mut self, record: String) -> wasmtime::Result<Result<String, $m::audit::AuditError>> {
        self.require(Capability::Audit, "audit")?;
        let appended = self.append_record(Appended::Given(&record));
        Ok(appended.map_err(|e| match e {
            AuditError::InvalidRecord(why) => $m::audit::AuditError::InvalidRecord(why),
            AuditError::Unavailable(why) => $m::audit::AuditError::Unavailable(why),
        }))
    }

    $($audit)*
}

    };
}

use super::bindings::portcullis::plugin as current;
use super::bindings::v1::portcullis::plugin as v1;
use super::bindings::v2::portcullis::plugin as v2;

impl HostState {
    /// Sends an `http-client` request, with `credential` set among its headers by the host.
    async fn send_outbound(
        &mut self,
        request: current::http_client::OutboundRequest,
        credential: Option<SecretHeader>,
    ) -> Result<current::http_client::OutboundResponse, current::http_client::HttpError> {
        self.http_requests += 1;
        if self.http_requests > MAX_REQUESTS_PER_CALL {
            let why = format!("at most {MAX_REQUESTS_PER_CALL} outbound requests per plugin call");
            return Err(current::http_client::HttpError::NotAllowed(why));
        }
        let url = request.url.clone();
        let started = Instant::now();
        let telemetry = &self.shared.telemetry;
        let span = telemetry.start(&self.trace, SpanKind::Client, || {
            let attributes = vec![
                KeyValue::new("http.request.method", request.method.clone()),
                KeyValue::new("server.address", outbound::host_of(&url)),
                KeyValue::new("portcullis.plugin.id", self.grants.plugin_id.to_string()),
            ];
            (request.method.clone(), attributes)
        });
        let sent = self.shared.outbound.send(&self.grants.origins, request, credential, Some((telemetry, &span)));
        let outcome = sent.await;
        match &outcome {
            Ok(response) => {
                let failed = if response.status >= 500 { SpanOutcome::Error } else { SpanOutcome::Ok };
                let status = KeyValue::new("http.response.status_code", i64::from(response.status));
                telemetry::end(&span, failed, "upstream 5xx", [status]);
            }
            Err(e) => telemetry::end(&span, SpanOutcome::Error, &format!("{e:?}"), []),
        }
        self.waited += started.elapsed();
        if let Err(e) = &outcome {
            tracing::debug!(plugin = %self.grants.plugin_id, request_id = %self.request_id, %url, error = ?e, "outbound request failed");
        }
        outcome
    }

    /// The header `asked` for, from this plugin's granted secrets.
    fn credential(&self, asked: &CredentialRequest<'_>) -> Result<SecretHeader, SecretError> {
        let header = self.grants.secrets.header(asked);
        if let Err(e) = &header {
            tracing::debug!(plugin = %self.grants.plugin_id, request_id = %self.request_id, error = %e, "secret refused");
        }
        header
    }

    /// Holds `key` for the plugin, within [`MAX_VERIFYING_KEYS`].
    fn hold_key(
        &mut self,
        key: Result<portcullis_signatures::VerifyingKey, portcullis_signatures::KeyError>,
    ) -> wasmtime::Result<Result<Resource<portcullis_signatures::VerifyingKey>, portcullis_signatures::KeyError>> {
        let key = match key {
            Ok(key) if self.verifying_keys < MAX_VERIFYING_KEYS => key,
            Ok(_) => {
                let why = format!("at most {MAX_VERIFYING_KEYS} verifying keys per plugin instance; drop unused ones");
                return Ok(Err(portcullis_signatures::KeyError::Unsupported(why)));
            }
            Err(e) => return Ok(Err(e)),
        };
        let handle = self.table.push(key)?;
        self.verifying_keys += 1;
        Ok(Ok(handle))
    }

    /// Checks `signature` over `message` with a held key, counting the check.
    fn verify_with(
        &mut self,
        key: &Resource<portcullis_signatures::VerifyingKey>,
        message: &[u8],
        signature: &[u8],
    ) -> wasmtime::Result<bool> {
        let key = self.table.get(key)?;
        let valid = key.verify(message, signature);
        let labels = SignatureLabels {
            plugin: self.grants.plugin_id.to_string(),
            algorithm: key.algorithm().name().to_owned(),
            result: if valid { "valid" } else { "invalid" }.to_owned(),
        };
        self.shared.metrics.signature_checks.get_or_create(&labels).inc();
        Ok(valid)
    }

    /// Renders the standard record of the exchange the current `observe` call received and
    /// appends it (`audit.append-observed`).
    fn append_observed_record(&mut self, redact: &[String]) -> wasmtime::Result<Result<String, AuditError>> {
        self.require(Capability::Audit, "audit")?;
        let Some((exchange, recorded)) = &self.observed else {
            let why = "append-observed records the exchange of an `observe` call; this call has none";
            return Ok(Err(AuditError::InvalidRecord(why.into())));
        };
        let record = super::audit::render_observed(exchange, recorded.as_deref(), redact);
        Ok(self.append_record(Appended::Rendered(&record)))
    }
}

/// `kv.throttle` of contract module `$m` (new in 0.2.0), an item of its `kv::Host` impl.
macro_rules! throttle {
    ($m:ident, $errors:ident) => {
        async fn throttle(
            &mut self,
            key: String,
            interval_us: u64,
            window_us: u64,
            quantity: i32,
        ) -> wasmtime::Result<Result<$m::kv::Cell, $m::kv::KvError>> {
            self.require(Capability::Kv, "kv")?;
            let (shared, grants) = (self.shared.clone(), self.grants.clone());
            let take = shared.kv.throttle(&grants.kv, &key, interval_us, window_us, quantity);
            let outcome = self.kv_wait(take).await;
            Ok(outcome.map_err($errors).map(|c| $m::kv::Cell {
                allowed: c.allowed,
                remaining: c.remaining,
                reset_us: c.reset_us,
                retry_after_us: c.retry_after_us,
            }))
        }
    };
}

/// `audit.append-observed` of contract module `$m` (new in 0.2.0), an item of its
/// `audit::Host` impl.
macro_rules! append_observed {
    ($m:ident) => {
        fn append_observed(&mut self, redact: Vec<String>) -> wasmtime::Result<Result<String, $m::audit::AuditError>> {
            Ok(self.append_observed_record(&redact)?.map_err(|e| match e {
                AuditError::InvalidRecord(why) => $m::audit::AuditError::InvalidRecord(why),
                AuditError::Unavailable(why) => $m::audit::AuditError::Unavailable(why),
            }))
        }
    };
}

/// The host's request for the header `$credential` (a `$m::secrets::Credential`) asks for.
macro_rules! asked {
    ($m:ident, $credential:expr) => {
        match &$credential {
            $m::secrets::Credential::Header(h) => {
                CredentialRequest::Header { name: &h.name, secret: &h.secret, prefix: &h.prefix }
            }
            $m::secrets::Credential::Basic(b) => {
                CredentialRequest::Basic { user: &b.user, secret: &b.secret, form_encode: b.form_encode }
            }
        }
    };
}

/// `$alg` (a `$m::signatures::Algorithm`) as the host's key type names it.
macro_rules! algorithm {
    ($m:ident, $alg:expr) => {{
        use portcullis_signatures::Algorithm;
        use $m::signatures::Algorithm as Wit;
        match $alg {
            Wit::Rs256 => Algorithm::Rs256,
            Wit::Rs384 => Algorithm::Rs384,
            Wit::Rs512 => Algorithm::Rs512,
            Wit::Ps256 => Algorithm::Ps256,
            Wit::Ps384 => Algorithm::Ps384,
            Wit::Ps512 => Algorithm::Ps512,
            Wit::Es256 => Algorithm::Es256,
            Wit::Es384 => Algorithm::Es384,
            Wit::EdDsa => Algorithm::EdDsa,
        }
    }};
}

/// The host's secret error `$e` as contract module `$m` names it.
macro_rules! secret_error {
    ($m:ident, $e:expr) => {
        match $e {
            SecretError::NotGranted(name) => $m::secrets::SecretError::NotGranted(name),
            SecretError::Invalid(why) => $m::secrets::SecretError::Invalid(why),
        }
    };
}

/// The host's key error `$e` as contract module `$m` names it.
macro_rules! key_error {
    ($m:ident, $e:expr) => {
        match $e {
            portcullis_signatures::KeyError::Unsupported(why) => $m::signatures::KeyError::Unsupported(why),
            portcullis_signatures::KeyError::Invalid(why) => $m::signatures::KeyError::Invalid(why),
        }
    };
}

/// The capabilities new in 0.2.0 and the same in 0.3.0 (`secrets`, `signatures`), for contract
/// module `$m`; `$down` and `$up` convert its `http-client` types to and from the current ones.
macro_rules! secrets_and_signatures {
    ($m:ident, $down:path, $up:path) => {
        impl $m::secrets::Host for HostState {
            fn inject(
                &mut self,
                credential: $m::secrets::Credential,
            ) -> wasmtime::Result<Result<(), $m::secrets::SecretError>> {
                let header = self.credential(&asked!($m, credential));
                Ok(header.map(|h| self.secret_headers.push(h)).map_err(|e| secret_error!($m, e)))
            }

            async fn send(
                &mut self,
                request: $m::http_client::OutboundRequest,
                credential: $m::secrets::Credential,
            ) -> wasmtime::Result<Result<$m::http_client::OutboundResponse, $m::http_client::HttpError>> {
                self.require(Capability::HttpClient, "http-client")?;
                let header = match self.credential(&asked!($m, credential)) {
                    Ok(header) => header,
                    Err(SecretError::NotGranted(name)) => {
                        let why = format!("secret `{name}` is not granted to this plugin");
                        return Ok(Err($m::http_client::HttpError::NotAllowed(why)));
                    }
                    Err(SecretError::Invalid(why)) => return Ok(Err($m::http_client::HttpError::InvalidRequest(why))),
                };
                Ok($up(self.send_outbound($down(request), Some(header)).await))
            }

            fn reveal(&mut self, secret: String) -> wasmtime::Result<Result<Vec<u8>, $m::secrets::SecretError>> {
                let revealed = self.grants.secrets.reveal(&secret);
                Ok(revealed.map(|v| v.expose().to_vec()).map_err(|e| secret_error!($m, e)))
            }
        }

        impl $m::signatures::Host for HostState {}

        impl $m::signatures::HostVerifyingKey for HostState {
            fn from_jwk(
                &mut self,
                jwk: String,
                alg: $m::signatures::Algorithm,
            ) -> wasmtime::Result<Result<Resource<portcullis_signatures::VerifyingKey>, $m::signatures::KeyError>> {
                let key = portcullis_signatures::VerifyingKey::from_jwk(&jwk, algorithm!($m, alg));
                Ok(self.hold_key(key)?.map_err(|e| key_error!($m, e)))
            }

            fn from_pem(
                &mut self,
                pem: String,
                alg: $m::signatures::Algorithm,
            ) -> wasmtime::Result<Result<Resource<portcullis_signatures::VerifyingKey>, $m::signatures::KeyError>> {
                let key = portcullis_signatures::VerifyingKey::from_pem(&pem, algorithm!($m, alg));
                Ok(self.hold_key(key)?.map_err(|e| key_error!($m, e)))
            }

            fn verify(
                &mut self,
                key: Resource<portcullis_signatures::VerifyingKey>,
                message: Vec<u8>,
                signature: Vec<u8>,
            ) -> wasmtime::Result<bool> {
                self.verify_with(&key, &message, &signature)
            }

            fn drop(&mut self, key: Resource<portcullis_signatures::VerifyingKey>) -> wasmtime::Result<()> {
                self.table.delete(key)?;
                self.verifying_keys -= 1;
                Ok(())
            }
        }

        impl $m::types::Host for HostState {}
    };
}

capabilities!(
    current,
    current_kv_error,
    std::convert::identity,
    std::convert::identity,
    {
        throttle!(current, current_kv_error);
    },
    {
        append_observed!(current);

        fn append_each_exchange(
            &mut self,
            redact: Vec<String>,
        ) -> wasmtime::Result<Result<(), current::audit::AuditError>> {
            self.require(Capability::Audit, "audit")?;
            if !self.configuring {
                let why =
                    "append-each-exchange declares what a logging step does per exchange; call it from `configure`";
                return Ok(Err(current::audit::AuditError::InvalidRecord(why.into())));
            }
            self.each_exchange = Some(redact);
            Ok(Ok(()))
        }
    }
);
secrets_and_signatures!(current, std::convert::identity, std::convert::identity);
capabilities!(
    v2,
    v2_kv_error,
    super::previous::outbound_request,
    super::previous::outbound_result,
    {
        throttle!(v2, v2_kv_error);
    },
    {
        append_observed!(v2);
    }
);
secrets_and_signatures!(v2, super::previous::outbound_request, super::previous::outbound_result);
// 0.1.0's `kv` has no `throttle`, its `audit` no `append-observed`; it has no `secrets` or
// `signatures`.
capabilities!(v1, v1_kv_error, super::legacy::outbound_request, super::legacy::outbound_result, {}, {});
impl v1::types::Host for HostState {}

/// A store's state for unit tests: plugin id `test`, granted `capabilities`, an in-process `kv`
/// store, no outbound origins or secrets, and `audit` as its audit sink.
#[cfg(test)]
pub(crate) fn state_for_tests(
    capabilities: Vec<Capability>,
    metrics: Arc<Metrics>,
    audit: Option<Arc<Sink>>,
) -> HostState {
    let clock = Clock::default();
    let shared = Arc::new(Shared {
        kv: Arc::new(Kv::Memory(super::kv::KvStore::new(clock.clone()))),
        metrics,
        outbound: Outbound::new().expect("an outbound client without custom roots builds"),
        telemetry: Arc::new(crate::telemetry::Telemetry::disabled()),
        clock,
    });
    let grants = Arc::new(Grants {
        plugin_id: "test".into(),
        kv: shared.kv.namespace(&"test".into()),
        capabilities,
        max_log_events_per_call: 10,
        origins: Vec::new(),
        audit,
        audit_options: super::audit::SinkOptions::default(),
        secrets: SecretGrants::default(),
    });
    HostState::new(grants, shared, 1 << 20)
}

#[cfg(test)]
mod tests {
    use current::audit::{AuditError as WitAuditError, Host as _};

    use super::super::audit::{AuditSinks, SinkOptions};
    use super::super::bindings::exports::portcullis::plugin::logging::{Phase, StepDecision};
    use super::super::bindings::portcullis::plugin::types::{Authentication, Header, Identity};
    use super::*;

    fn exchange() -> Exchange {
        Exchange {
            request_id: "r-1".into(),
            route: "api".into(),
            method: "POST".into(),
            authority: "example.test".into(),
            path: "/api/orders".into(),
            query: Some("api_key=k-123".into()),
            client_ip: "192.0.2.7".into(),
            identity: Some(Identity {
                subject: "alice".into(),
                issuer: None,
                roles: vec![],
                scopes: vec![],
                authentication: Authentication { acr: None, amr: vec![], auth_time: None },
                claims: vec![],
            }),
            status: 201,
            start_ms: 1_795_299_508_123,
            duration_us: 2_632,
            bytes_in: 58,
            bytes_out: 11,
            request_headers: vec![
                Header { name: "user-agent".into(), value: "curl".into() },
                Header { name: "authorization".into(), value: "Bearer t-456".into() },
                Header { name: "x-session".into(), value: "s-789".into() },
                // Another logging step's field: the exchange carries every step's.
                Header { name: "x-other-step".into(), value: "o-1".into() },
            ],
            response_headers: vec![],
            endpoint: Some("127.0.0.1:8081".into()),
            decisions: vec![StepDecision {
                plugin: "jwt".into(),
                phase: Phase::Request,
                decision: "authenticated".into(),
                duration_us: 30,
            }],
        }
    }

    #[test]
    fn the_record_of_a_borrowed_finished_exchange_is_the_record_of_the_lent_one() {
        let e = exchange();
        let decisions: Vec<_> = e
            .decisions
            .iter()
            .map(|d| portcullis_audit_record::Decision {
                plugin: &d.plugin,
                phase: "request",
                decision: &d.decision,
                duration_us: d.duration_us,
            })
            .collect();
        let finished = super::super::audit::Finished {
            exchange: portcullis_audit_record::exchange_of!(&e),
            request_headers: &e.request_headers,
            decisions: &decisions,
        };
        let recorded: Vec<http::HeaderName> =
            ["user-agent", "x-session"].iter().map(|n| http::HeaderName::from_static(n)).collect();
        let redact = ["X-Session".to_owned()];
        for recorded in [Some(&recorded[..]), None] {
            let lent = super::super::audit::render_observed(&e, recorded, &redact);
            assert_eq!(super::super::audit::render_finished(&finished, recorded, &redact), lent);
            assert!(lent.contains(r#""decisions":[{"plugin":"jwt""#) && lent.contains("[redacted]"), "{lent}");
        }
    }

    #[test]
    fn append_each_exchange_is_declared_in_configure_only_and_needs_the_audit_capability() {
        let metrics = Arc::new(Metrics::default());
        let mut state = state_for_tests(vec![Capability::Audit], metrics.clone(), None);
        let context = opentelemetry::Context::new();
        state.begin_call("r-1", &context, Duration::from_secs(1), Instant::now());
        match state.append_each_exchange(vec!["x-session".into()]).unwrap() {
            Err(WitAuditError::InvalidRecord(why)) => assert!(why.contains("configure"), "{why}"),
            other => panic!("expected invalid-record outside configure, got {other:?}"),
        }
        assert_eq!(state.take_each_exchange(), None);
        state.begin_call("configure", &context, Duration::from_secs(1), Instant::now());
        state.begin_configure();
        state.append_each_exchange(vec!["x-session".into()]).unwrap().unwrap();
        assert_eq!(state.take_each_exchange(), Some(vec!["x-session".to_owned()]));
        // Neither the load-time calls after `configure` nor the next call are `configure`.
        state.end_configure();
        assert!(state.append_each_exchange(Vec::new()).unwrap().is_err());
        assert_eq!(state.take_each_exchange(), None, "a refused declaration declares nothing");
        state.begin_call("r-2", &context, Duration::from_secs(1), Instant::now());
        assert!(state.append_each_exchange(Vec::new()).unwrap().is_err());

        let mut ungranted = state_for_tests(Vec::new(), metrics, None);
        ungranted.begin_call("configure", &context, Duration::from_secs(1), Instant::now());
        ungranted.begin_configure();
        assert!(ungranted.append_each_exchange(Vec::new()).is_err(), "a trap without the `audit` capability");
    }

    #[test]
    fn append_observed_records_the_exchange_of_the_observe_call_and_only_during_one() {
        let dir = std::env::temp_dir().join(format!("portcullis-host-audit-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let metrics = Arc::new(Metrics::default());
        let sink = AuditSinks::with_metrics(metrics.clone()).open(Some(&path), &SinkOptions::default()).unwrap();
        let mut state = state_for_tests(vec![Capability::Audit], metrics, Some(sink.clone()));
        let outside = |state: &mut HostState| match state.append_observed(Vec::new()).unwrap() {
            Err(WitAuditError::InvalidRecord(why)) => why,
            other => panic!("expected invalid-record outside observe, got {other:?}"),
        };
        assert!(outside(&mut state).contains("observe"), "no exchange before an observe call");

        let observed = Arc::new(exchange());
        let recorded: Arc<[http::HeaderName]> =
            ["user-agent", "authorization", "x-session"].iter().map(|n| http::HeaderName::from_static(n)).collect();
        state.begin_call("r-1", &opentelemetry::Context::new(), Duration::from_secs(1), Instant::now());
        state.begin_observe(&observed, Some(recorded.clone()));
        let hash = state.append_observed(vec!["X-Session".into()]).unwrap().unwrap();
        state.end_observe();
        assert!(outside(&mut state).contains("observe"), "the exchange is let go after the call");
        // A step that named no fields (`record-headers` none) records every one the exchange has.
        state.begin_observe(&observed, None);
        state.append_observed(Vec::new()).unwrap().unwrap();
        state.begin_observe(&observed, Some(recorded.clone()));
        state.begin_call("r-2", &opentelemetry::Context::new(), Duration::from_secs(1), Instant::now());
        assert!(outside(&mut state).contains("observe"), "a new call starts without one");

        sink.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let line = text.lines().next().unwrap();
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(record["hash"], hash.as_str());
        let expected = super::super::audit::render_observed(&observed, Some(&recorded), &["X-Session".to_owned()]);
        assert!(line.starts_with(&expected[..expected.len() - 1]), "the host's standard record: {line}");
        assert!(record["headers"].get("x-other-step").is_none(), "only this step's fields: {line}");
        assert_eq!(record["headers"]["authorization"], "[redacted]");
        assert_eq!(record["headers"]["x-session"], "[redacted]");
        assert_eq!(record["headers"]["user-agent"], "curl");
        for secret in ["k-123", "t-456", "s-789"] {
            assert!(!line.contains(secret), "{secret} in {line}");
        }
        assert_eq!(record["subject"], "alice");
        assert_eq!(record["latency_ms"], 2.632);
        assert_eq!(record["decisions"][0]["decision"], "authenticated");
        let all: serde_json::Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
        assert_eq!(all["headers"]["x-other-step"], "o-1", "no record-headers: every field");
        assert_eq!(all["headers"]["x-session"], "s-789", "redacted only when asked");
        let (records, _) = super::super::audit::verify(std::io::Cursor::new(text.clone())).unwrap().unwrap();
        assert_eq!(records, 2, "they chain and verify as any record");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
