//! The store's state type and the host side of every capability (`log`, `kv`, `clock`,
//! `http-client`), implemented on it as wasmtime's `wasi-config` does.
//!
//! WASI is linked because Rust's `std` imports it, with an empty context: no environment,
//! arguments, preopened directories, sockets or inherited stdio.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::portcullis::plugin::{clock, http_client, kv, log, types};
use super::failure::CapabilityDenied;
use super::kv::{KvError as StoreError, KvStore};
use crate::config::Capability;
use crate::metrics::{Metrics, PluginLabels};

/// Longest log message kept from a plugin, in bytes; longer ones are truncated.
pub const MAX_LOG_MESSAGE_BYTES: usize = 16 * 1024;

/// What a plugin may do, fixed at load.
#[derive(Debug)]
pub struct Grants {
    /// Plugin id, also the `kv` namespace.
    pub plugin_id: Arc<str>,
    /// Granted capabilities beyond `log` and `clock`.
    pub capabilities: Vec<Capability>,
    /// Log events kept per call.
    pub max_log_events_per_call: u32,
}

/// Per-store state: WASI's empty context, resource limits, and the plugin's grants.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Memory, table and instance limits for this store.
    pub(crate) limits: StoreLimits,
    grants: Arc<Grants>,
    kv: Arc<KvStore>,
    metrics: Arc<Metrics>,
    /// The request the current call serves, for log lines.
    request_id: String,
    /// Log events emitted during the current call.
    log_events: u32,
}

// === impl HostState ===

impl HostState {
    /// State for one plugin instance, limited to `memory_bytes` of linear memory.
    pub fn new(grants: Arc<Grants>, kv: Arc<KvStore>, metrics: Arc<Metrics>, memory_bytes: usize) -> Self {
        HostState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(memory_bytes)
                .instances(64)
                .tables(64)
                .memories(8)
                .trap_on_grow_failure(true)
                .build(),
            grants,
            kv,
            metrics,
            request_id: String::new(),
            log_events: 0,
        }
    }

    /// Resets per-call state before a call made for `request_id`.
    pub(crate) fn begin_call(&mut self, request_id: &str) {
        self.request_id.clear();
        self.request_id.push_str(request_id);
        self.log_events = 0;
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

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl types::Host for HostState {}

impl log::Host for HostState {
    fn emit(
        &mut self,
        level: log::Level,
        mut message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        self.log_events += 1;
        if self.log_events > self.grants.max_log_events_per_call {
            let labels = PluginLabels { plugin: self.grants.plugin_id.to_string() };
            self.metrics.log_events_dropped.get_or_create(&labels).inc();
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
            log::Level::Trace => tracing::trace!(target: "portcullis::plugin", plugin, request_id, fields, "{message}"),
            log::Level::Debug => tracing::debug!(target: "portcullis::plugin", plugin, request_id, fields, "{message}"),
            log::Level::Info => tracing::info!(target: "portcullis::plugin", plugin, request_id, fields, "{message}"),
            log::Level::Warn => tracing::warn!(target: "portcullis::plugin", plugin, request_id, fields, "{message}"),
            log::Level::Error => tracing::error!(target: "portcullis::plugin", plugin, request_id, fields, "{message}"),
        }
        Ok(())
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

impl kv::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, kv::KvError>> {
        self.require(Capability::Kv, "kv")?;
        Ok(Ok(self.kv.get(&self.grants.plugin_id, &key)))
    }

    fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> wasmtime::Result<Result<(), kv::KvError>> {
        self.require(Capability::Kv, "kv")?;
        Ok(self.kv.set(&self.grants.plugin_id, &key, value, ttl_ms).map_err(wit_kv_error))
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, kv::KvError>> {
        self.require(Capability::Kv, "kv")?;
        Ok(Ok(self.kv.delete(&self.grants.plugin_id, &key)))
    }

    fn increment(&mut self, key: String, delta: i64, ttl_ms: Option<u64>) -> wasmtime::Result<Result<i64, kv::KvError>> {
        self.require(Capability::Kv, "kv")?;
        Ok(self.kv.increment(&self.grants.plugin_id, &key, delta, ttl_ms).map_err(wit_kv_error))
    }

    fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<bool, kv::KvError>> {
        self.require(Capability::Kv, "kv")?;
        Ok(self
            .kv
            .compare_and_swap(&self.grants.plugin_id, &key, expected.as_deref(), value, ttl_ms)
            .map_err(wit_kv_error))
    }
}

fn wit_kv_error(e: StoreError) -> kv::KvError {
    match e {
        StoreError::TooLarge => kv::KvError::TooLarge,
        StoreError::QuotaExceeded => kv::KvError::QuotaExceeded,
        StoreError::NotANumber => kv::KvError::NotANumber,
    }
}

impl clock::Host for HostState {
    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        Ok(u64::try_from(now.as_millis())?)
    }
}

impl http_client::Host for HostState {
    /// Outbound HTTP is part of the contract from 0.1.0 so plugins can be written against it;
    /// the host does not send requests yet, and says so to the plugin as an error value.
    async fn send(
        &mut self,
        request: http_client::OutboundRequest,
    ) -> wasmtime::Result<Result<http_client::OutboundResponse, http_client::HttpError>> {
        self.require(Capability::HttpClient, "http-client")?;
        let why = format!("outbound HTTP is not available in this Portcullis version (to {})", request.url);
        Ok(Err(http_client::HttpError::NotAllowed(why)))
    }
}
