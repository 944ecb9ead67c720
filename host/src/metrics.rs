//! Prometheus metrics (`prometheus-client`), served on the admin listener at `/metrics` in the
//! OpenMetrics text format, which Prometheus scrapes.
//!
//! Names follow the Prometheus conventions: a `portcullis_` prefix, base units in the name
//! (`_seconds`, `_bytes`), `_total` on counters. Label values are bounded: route, upstream,
//! endpoint, plugin and listener names come from the configuration; methods outside RFC 9110's
//! registered set are `OTHER`; statuses are classes (`2xx`); kinds, results, phases and
//! decisions come from fixed lists. Raw paths are never labels.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `portcullis_http_requests_total` | counter | `route`, `method`, `status_class` |
//! | `portcullis_http_request_duration_seconds` | histogram | `route` |
//! | `portcullis_upstream_request_duration_seconds` | histogram | `upstream`, `endpoint` |
//! | `portcullis_upstream_errors_total` | counter | `upstream`, `endpoint`, `kind` (`5xx`, `timeout`, `failed`) |
//! | `portcullis_upstream_endpoint_available` | gauge | `upstream`, `endpoint` |
//! | `portcullis_plugin_call_duration_seconds` | histogram | `plugin`, `phase` (`request`, `response`, `observe`) |
//! | `portcullis_plugin_decisions_total` | counter | `plugin`, `decision`, `mode` (`enforce`, `shadow`) |
//! | `portcullis_shadow_disagreements_total` | counter | `route`, `plugin` (the shadow step) |
//! | `portcullis_plugin_failures_total` | counter | `plugin`, `kind` |
//! | `portcullis_plugin_instances` | gauge | `plugin`, `state` (`idle`, `busy`) |
//! | `portcullis_plugin_breaker_open` | gauge | `plugin` |
//! | `portcullis_plugin_log_events_dropped_total` | counter | `plugin` |
//! | `portcullis_plugin_signature_checks_total` | counter | `plugin`, `algorithm` (JWS name), `result` (`valid`, `invalid`) |
//! | `portcullis_config_reloads_total` | counter | `result` |
//! | `portcullis_listener_connections` | gauge | `listener` |
//! | `portcullis_tls_handshakes_total` | counter | `listener`, `result` (`ok`, `failed`, `timeout`) |

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a plugin failure.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Plugin id.
    pub plugin: String,
    /// Failure kind label (`timeout`, `out-of-memory`, `trap`, …).
    pub kind: String,
}

/// Labels of a configuration reload.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` or `error`.
    pub result: String,
}

/// Labels naming a plugin.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    /// Plugin id.
    pub plugin: String,
}

/// Labels of a signature check made through the `signatures` capability.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignatureLabels {
    /// Plugin id.
    pub plugin: String,
    /// The key's JWS algorithm name (`RS256`, `ES256`, `EdDSA`, …).
    pub algorithm: String,
    /// `valid` or `invalid`.
    pub result: String,
}

/// Labels of a finished request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route id, `-` when none matched.
    pub route: String,
    /// Method, or `OTHER`.
    pub method: String,
    /// `1xx` … `5xx`.
    pub status_class: String,
}

/// Labels naming a route.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route id, `-` when none matched.
    pub route: String,
}

/// Labels naming an upstream endpoint.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// Upstream name.
    pub upstream: String,
    /// `host:port`.
    pub endpoint: String,
}

/// Labels of an upstream error.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    /// Upstream name.
    pub upstream: String,
    /// `host:port`.
    pub endpoint: String,
    /// `5xx`, `timeout` or `failed` (refused or broken connection).
    pub kind: String,
}

/// Labels of a plugin call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// Plugin id.
    pub plugin: String,
    /// `request`, `response` or `observe`.
    pub phase: String,
}

/// Labels of a plugin decision.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// Plugin id.
    pub plugin: String,
    /// `authenticated`, `anonymous`, `denied` (auth); `allowed`, `limited` (rate limit);
    /// `valid`, `invalid` (validation); `continue`, `respond` (filter); `observed` (logging);
    /// `failed` (a fail-open step that failed).
    pub decision: String,
    /// `enforce`, or `shadow` for a step whose decision is recorded and not enforced.
    pub mode: String,
}

/// Labels of a shadow step's disagreements with the enforced step of its kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabels {
    /// Route id.
    pub route: String,
    /// The shadow step's plugin id.
    pub plugin: String,
}

/// Labels of plugin instances.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    /// Plugin id.
    pub plugin: String,
    /// `idle` (pooled, ready) or `busy` (in a call).
    pub state: String,
}

/// Labels of an audit sink's record count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuditLabels {
    /// The audit file, or `stdout`.
    pub sink: String,
    /// `written` or `failed`.
    pub result: String,
}

/// Labels naming a listener.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// The configured `address`.
    pub listener: String,
}

/// Labels of a TLS handshake.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// The configured `address`.
    pub listener: String,
    /// `ok`, `failed` or `timeout`.
    pub result: String,
}

/// Labels of a `kv` backend operation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KvLabels {
    /// `redis`.
    pub backend: String,
    /// `get`, `set`, `delete`, `increment`, `compare-and-swap`, `throttle` or `probe`.
    pub op: String,
}

/// Labels of a failed `kv` backend operation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KvErrorLabels {
    /// `redis`.
    pub backend: String,
    /// As [`KvLabels::op`].
    pub op: String,
    /// `timeout` (no answer in time) or `error` (refused connection, server error).
    pub reason: String,
}

/// Labels naming a `kv` backend.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KvBackendLabels {
    /// `redis`.
    pub backend: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Request and upstream latencies: 0.5 ms to about 16 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Plugin call latencies: 5 µs to about 80 ms.
fn call_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_005, 2.0, 15))
}

/// The gateway's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    /// `portcullis_plugin_failures_total{plugin,kind}`: failed plugin calls by kind, including
    /// calls refused by an open breaker (`breaker-open`).
    pub plugin_failures: Family<FailureLabels, Counter>,
    /// `portcullis_plugin_log_events_dropped_total{plugin}`: log events past a plugin's per-call
    /// budget.
    pub log_events_dropped: Family<PluginLabels, Counter>,
    /// `portcullis_plugin_signature_checks_total{plugin,algorithm,result}`: signatures checked
    /// by the host for plugins (`signatures.verifying-key.verify`). A rising `invalid` count is
    /// forged or corrupted credentials.
    pub signature_checks: Family<SignatureLabels, Counter>,
    /// `portcullis_plugin_breaker_open{plugin}`: 1 while a plugin's breaker is open or half-open.
    pub breaker_open: Family<PluginLabels, Gauge>,
    /// `portcullis_config_reloads_total{result}`: reload attempts, `ok` or `error`.
    pub config_reloads: Family<ReloadLabels, Counter>,
    /// `portcullis_http_requests_total{route,method,status_class}`: finished requests.
    pub http_requests: Family<RequestLabels, Counter>,
    /// `portcullis_http_request_duration_seconds{route}`: request head received to response
    /// body sent.
    pub http_request_duration: Histograms<RouteLabels>,
    /// `portcullis_upstream_request_duration_seconds{upstream,endpoint}`: request sent to
    /// response head received (connect included).
    pub upstream_duration: Histograms<EndpointLabels>,
    /// `portcullis_upstream_errors_total{upstream,endpoint,kind}`.
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    /// `portcullis_upstream_endpoint_available{upstream,endpoint}`: 1 when requests may go to
    /// it (refreshed at each scrape).
    pub endpoint_available: Family<EndpointLabels, Gauge>,
    /// `portcullis_plugin_call_duration_seconds{plugin,phase}`: one call, host conversions
    /// included.
    pub plugin_call_duration: Histograms<PhaseLabels>,
    /// `portcullis_plugin_decisions_total{plugin,decision,mode}`.
    pub plugin_decisions: Family<DecisionLabels, Counter>,
    /// `portcullis_shadow_disagreements_total{route,plugin}`: requests on which a shadow step
    /// and the enforced step of its kind decided differently (one passed, one refused).
    pub shadow_disagreements: Family<ShadowLabels, Counter>,
    /// `portcullis_plugin_instances{plugin,state}` (refreshed at each scrape).
    pub plugin_instances: Family<InstanceLabels, Gauge>,
    /// `portcullis_listener_connections{listener}`: open client connections.
    pub listener_connections: Family<ListenerLabels, Gauge>,
    /// `portcullis_tls_handshakes_total{listener,result}`.
    pub tls_handshakes: Family<HandshakeLabels, Counter>,
    /// `portcullis_audit_records_total{sink,result}`: audit records `written` or `failed`.
    pub audit_records: Family<AuditLabels, Counter>,
    /// `portcullis_kv_command_duration_seconds{backend,op}`: one call to a shared `kv` store,
    /// sent to answered (or timed out).
    pub kv_command_duration: Histograms<KvLabels>,
    /// `portcullis_kv_errors_total{backend,op,reason}`: calls to a shared `kv` store that failed.
    pub kv_errors: Family<KvErrorLabels, Counter>,
    /// `portcullis_kv_backend_up{backend}`: 1 while the shared `kv` store answers.
    pub kv_up: Family<KvBackendLabels, Gauge>,
}

// === impl Metrics ===

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let metrics = Metrics {
            registry: Mutex::new(Registry::default()),
            plugin_failures: Family::default(),
            log_events_dropped: Family::default(),
            signature_checks: Family::default(),
            breaker_open: Family::default(),
            config_reloads: Family::default(),
            http_requests: Family::default(),
            http_request_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            upstream_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            upstream_errors: Family::default(),
            endpoint_available: Family::default(),
            plugin_call_duration: Family::new_with_constructor(call_histogram as fn() -> Histogram),
            plugin_decisions: Family::default(),
            shadow_disagreements: Family::default(),
            plugin_instances: Family::default(),
            listener_connections: Family::default(),
            tls_handshakes: Family::default(),
            audit_records: Family::default(),
            kv_command_duration: Family::new_with_constructor(call_histogram as fn() -> Histogram),
            kv_errors: Family::default(),
            kv_up: Family::default(),
        };
        let m = &metrics;
        registry.register(
            "plugin_failures",
            "Failed plugin calls, by plugin and failure kind",
            m.plugin_failures.clone(),
        );
        registry.register(
            "plugin_log_events_dropped",
            "Plugin log events dropped past the per-call budget",
            m.log_events_dropped.clone(),
        );
        registry.register(
            "plugin_signature_checks",
            "Signatures checked by the host for plugins, by plugin, algorithm and result",
            m.signature_checks.clone(),
        );
        registry.register(
            "plugin_breaker_open",
            "1 while a plugin's crash-loop breaker is open",
            m.breaker_open.clone(),
        );
        registry.register("config_reloads", "Configuration reload attempts, by result", m.config_reloads.clone());
        registry.register(
            "http_requests",
            "Finished requests, by route, method and status class",
            m.http_requests.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time from the request head to the end of the response body, by route",
            prometheus_client::registry::Unit::Seconds,
            m.http_request_duration.clone(),
        );
        registry.register_with_unit(
            "upstream_request_duration",
            "Time from sending the request upstream to its response head, by endpoint",
            prometheus_client::registry::Unit::Seconds,
            m.upstream_duration.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream 5xx answers, timeouts and failed connections, by endpoint",
            m.upstream_errors.clone(),
        );
        registry.register(
            "upstream_endpoint_available",
            "1 when an endpoint may receive requests",
            m.endpoint_available.clone(),
        );
        registry.register_with_unit(
            "plugin_call_duration",
            "Duration of one plugin call, by plugin and phase",
            prometheus_client::registry::Unit::Seconds,
            m.plugin_call_duration.clone(),
        );
        registry.register(
            "plugin_decisions",
            "Plugin step decisions, by plugin, decision and mode (enforce or shadow)",
            m.plugin_decisions.clone(),
        );
        registry.register(
            "shadow_disagreements",
            "Requests on which a shadow step and the enforced step of its kind decided differently",
            m.shadow_disagreements.clone(),
        );
        registry.register(
            "plugin_instances",
            "Plugin instances alive, by plugin and state",
            m.plugin_instances.clone(),
        );
        registry.register(
            "audit_records",
            "Audit records written or failed (disk full, say), by sink",
            m.audit_records.clone(),
        );
        registry.register(
            "listener_connections",
            "Open client connections, by listener",
            m.listener_connections.clone(),
        );
        registry.register_with_unit(
            "kv_command_duration",
            "Duration of one call to the shared kv store, by backend and operation",
            prometheus_client::registry::Unit::Seconds,
            m.kv_command_duration.clone(),
        );
        registry.register(
            "kv_errors",
            "Failed calls to the shared kv store, by operation and reason",
            m.kv_errors.clone(),
        );
        registry.register("kv_backend_up", "1 while the shared kv store answers", m.kv_up.clone());
        registry.register("tls_handshakes", "TLS handshakes, by listener and result", m.tls_handshakes.clone());
        *metrics.registry.lock().unwrap_or_else(|e| e.into_inner()) = registry;
        metrics
    }
}

impl Metrics {
    /// Counts one failure of `plugin` of kind `kind`.
    pub fn plugin_failed(&self, plugin: &str, kind: &str) {
        self.plugin_failures.get_or_create(&FailureLabels { plugin: plugin.to_owned(), kind: kind.to_owned() }).inc();
    }

    /// Records one finished request: `status` (100..=599) on `route`, taking `duration`.
    pub fn request_finished(&self, route: &str, method: &str, status: u16, duration: Duration) {
        let labels = RequestLabels {
            route: route.to_owned(),
            method: method_label(method).to_owned(),
            status_class: format!("{}xx", status / 100),
        };
        self.http_requests.get_or_create(&labels).inc();
        self.http_request_duration
            .get_or_create(&RouteLabels { route: route.to_owned() })
            .observe(duration.as_secs_f64());
    }

    /// The text exposition (OpenMetrics text format, which Prometheus scrapes).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The methods that are their own label value: RFC 9110's and `PATCH`.
const KNOWN_METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

/// The method as a bounded label: RFC 9110's methods and `PATCH` as they are, others `OTHER`.
fn method_label(method: &str) -> &str {
    if KNOWN_METHODS.contains(&method) { method } else { "OTHER" }
}

/// One route's request series, resolved when the route is built: its duration histogram now,
/// each (method label, status class) counter on first use. A finished request then records
/// itself with two atomic updates, no label `String` and no family look-up.
#[derive(Debug)]
pub struct RouteSeries {
    route: String,
    duration: Histogram,
    /// By method label (the known methods, then `OTHER`) and status class (1xx..5xx).
    requests: [[std::sync::OnceLock<Counter>; 5]; KNOWN_METHODS.len() + 1],
}

impl RouteSeries {
    /// The series of route `route` in `metrics`.
    pub fn new(metrics: &Metrics, route: &str) -> Self {
        let duration = metrics.http_request_duration.get_or_create(&RouteLabels { route: route.to_owned() }).clone();
        RouteSeries { route: route.to_owned(), duration, requests: Default::default() }
    }

    /// Counts one request on which shadow step `plugin` disagreed with its enforced step.
    pub fn shadow_disagreed(&self, metrics: &Metrics, plugin: &str) {
        let labels = ShadowLabels { route: self.route.clone(), plugin: plugin.to_owned() };
        metrics.shadow_disagreements.get_or_create(&labels).inc();
    }

    /// Records one finished request: `status` 100..=599, `duration` from the request head to
    /// the end of the response body.
    pub fn finished(&self, metrics: &Metrics, method: &http::Method, status: u16, duration: Duration) {
        let m = KNOWN_METHODS.iter().position(|k| *k == method.as_str()).unwrap_or(KNOWN_METHODS.len());
        let class = usize::from((status / 100).clamp(1, 5) - 1);
        let counter = self.requests[m][class].get_or_init(|| {
            let labels = RequestLabels {
                route: self.route.clone(),
                method: KNOWN_METHODS.get(m).copied().unwrap_or("OTHER").to_owned(),
                status_class: format!("{}xx", class + 1),
            };
            metrics.http_requests.get_or_create(&labels).clone()
        });
        counter.inc();
        self.duration.observe(duration.as_secs_f64());
    }
}
