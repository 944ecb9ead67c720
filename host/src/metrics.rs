//! Prometheus metrics (text exposition format, `prometheus-client`), served on the admin
//! listener at `/metrics`. Names follow the Prometheus conventions (`_total` for counters).
//! Label values are bounded: plugin ids come from the configuration and failure kinds from a
//! fixed list.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
    /// `portcullis_plugin_breaker_open{plugin}`: 1 while a plugin's breaker is open or half-open.
    pub breaker_open: Family<PluginLabels, Gauge>,
    /// `portcullis_config_reloads_total{result}`: reload attempts, `ok` or `error`.
    pub config_reloads: Family<ReloadLabels, Counter>,
}

// === impl Metrics ===

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let plugin_failures = Family::<FailureLabels, Counter>::default();
        registry.register("plugin_failures", "Failed plugin calls, by plugin and failure kind", plugin_failures.clone());
        let log_events_dropped = Family::<PluginLabels, Counter>::default();
        registry.register(
            "plugin_log_events_dropped",
            "Plugin log events dropped past the per-call budget",
            log_events_dropped.clone(),
        );
        let breaker_open = Family::<PluginLabels, Gauge>::default();
        registry.register("plugin_breaker_open", "1 while a plugin's crash-loop breaker is open", breaker_open.clone());
        let config_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register("config_reloads", "Configuration reload attempts, by result", config_reloads.clone());
        Metrics { registry: Mutex::new(registry), plugin_failures, log_events_dropped, breaker_open, config_reloads }
    }
}

impl Metrics {
    /// Counts one failure of `plugin` of kind `kind`.
    pub fn plugin_failed(&self, plugin: &str, kind: &str) {
        self.plugin_failures.get_or_create(&FailureLabels { plugin: plugin.to_owned(), kind: kind.to_owned() }).inc();
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
