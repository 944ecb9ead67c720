//! The plugin runtime: compiled components, their configured instance pools, and bounded calls.
//!
//! A [`LoadedPlugin`] is one `[plugin.ID]`: its component compiled once (cached by content hash
//! in the [`PluginEngine`]), pre-instantiated, and checked to export the interface of its kind.
//! A [`StepPool`] is that plugin with one step's configuration: instances are configured once
//! and reused (a warm call costs well under a microsecond of overhead where a fresh instance
//! costs tens: DESIGN.md), every call runs under an epoch deadline and memory limits, and an
//! instance that fails is discarded, never returned to the pool.

pub mod bindings;
mod engine;
mod failure;
mod host;
mod instance;
pub mod kv;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use wasmtime::Store;
use wasmtime::component::{Component, InstancePre};

pub use engine::{EPOCH_TICK, MAX_MEMORY_BYTES, MAX_WASM_STACK_BYTES, PluginEngine};
pub use failure::{FailureKind, PluginFailure};
pub use host::{Grants, HostState, MAX_LOG_MESSAGE_BYTES};
pub use instance::{Call, Reply};
use instance::{Instance, KindIndices};

use crate::config::{FailurePolicy, PluginConfig, PluginKind};

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
    engine: Arc<PluginEngine>,
    pre: InstancePre<HostState>,
    indices: KindIndices,
    grants: Arc<Grants>,
    memory_bytes: usize,
    deadline: Duration,
    max_instances: usize,
    max_uses: u64,
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

// === impl LoadedPlugin ===

impl LoadedPlugin {
    /// Prepares `component` as plugin `id` configured by `config`.
    ///
    /// Errors (as text for the configuration report): an import the host does not provide
    /// (for example `wasi:sockets` or an unknown interface), or no export of `config.kind`.
    pub fn new(
        engine: Arc<PluginEngine>,
        id: &str,
        config: &PluginConfig,
        component: &Component,
        content_hash: String,
    ) -> Result<Self, String> {
        let pre = engine.linker().instantiate_pre(component).map_err(|e| format!("{e:#}"))?;
        let indices = KindIndices::new(config.kind, &pre).map_err(|e| {
            format!("the component does not export the `{}` kind's interface: {e:#}", config.kind)
        })?;
        let policy = config.failure_policy.unwrap_or(match config.kind {
            PluginKind::Logging => FailurePolicy::FailOpen,
            _ => FailurePolicy::FailClosed,
        });
        Ok(LoadedPlugin {
            id: id.into(),
            kind: config.kind,
            policy,
            content_hash,
            grants: Arc::new(Grants { plugin_id: id.into(), capabilities: config.capabilities.clone() }),
            engine,
            pre,
            indices,
            memory_bytes: usize::try_from(config.memory_mib * 1024 * 1024).unwrap_or(MAX_MEMORY_BYTES),
            deadline: Duration::from_millis(config.deadline_ms),
            max_instances: config.max_instances,
            max_uses: config.max_uses_per_instance,
        })
    }

    /// The per-call deadline.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    fn ticks(deadline: Duration) -> u64 {
        let tick = EPOCH_TICK.as_millis().max(1);
        u64::try_from(deadline.as_millis().div_ceil(tick)).unwrap_or(u64::MAX)
    }

    async fn instantiate(&self) -> wasmtime::Result<Instance> {
        let state = HostState::new(self.grants.clone(), self.engine.kv().clone(), self.memory_bytes);
        let mut store = Store::new(self.engine.engine(), state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(Self::ticks(self.deadline));
        let instance = self.pre.instantiate_async(&mut store).await?;
        let guest = self.indices.load(&mut store, &instance)?;
        Ok(Instance { store, guest, uses: 0 })
    }
}

/// A plugin configured for one step: a pool of configured instances.
pub struct StepPool {
    plugin: Arc<LoadedPlugin>,
    config: String,
    idle: Mutex<Vec<Instance>>,
    permits: Semaphore,
    body_limit: Option<u64>,
}

impl std::fmt::Debug for StepPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepPool").field("plugin", &self.plugin.id).finish_non_exhaustive()
    }
}

// === impl StepPool ===

impl StepPool {
    /// Configures a first instance with `config` (JSON text) and keeps it warm.
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
        };
        let mut first = pool.fresh().await?;
        pool.body_limit = first
            .body_limit()
            .await
            .map_err(|e| StepLoadError::Failed(PluginFailure::from_wasmtime(&pool.plugin.id, &e)))?;
        pool.idle.get_mut().unwrap_or_else(|e| e.into_inner()).push(first);
        Ok(pool)
    }

    /// The plugin.
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.plugin
    }

    /// For a validation step, the request body bytes it wants buffered.
    pub fn body_limit(&self) -> Option<u64> {
        self.body_limit
    }

    /// A new instance, configured. Configuration may parse keys, so it gets ten times the call
    /// deadline, at least one second.
    async fn fresh(&self) -> Result<Instance, StepLoadError> {
        let id = &self.plugin.id;
        let mut instance = self
            .plugin
            .instantiate()
            .await
            .map_err(|e| StepLoadError::Failed(PluginFailure::new(id, FailureKind::Unavailable(format!("{e:#}")))))?;
        let configure_deadline = (self.plugin.deadline * 10).max(Duration::from_secs(1));
        instance.store.set_epoch_deadline(LoadedPlugin::ticks(configure_deadline));
        match instance.configure(&self.config).await {
            Ok(Ok(())) => Ok(instance),
            Ok(Err(refused)) => Err(StepLoadError::Refused(refused)),
            Err(e) => Err(StepLoadError::Failed(PluginFailure::from_wasmtime(id, &e))),
        }
    }

    /// Makes `call` on a pooled instance (or a fresh one when none is idle), under the plugin's
    /// deadline and limits.
    ///
    /// Errors: a [`PluginFailure`]: timeout, out of memory, trap, or no instance available
    /// within the deadline (all `max_instances` busy).
    pub async fn call(&self, request_id: &str, call: Call<'_>) -> Result<Reply, PluginFailure> {
        let id = &self.plugin.id;
        let _permit = tokio::time::timeout(self.plugin.deadline, self.permits.acquire())
            .await
            .map_err(|_| PluginFailure::new(id, FailureKind::Unavailable("every instance is busy".into())))?
            .map_err(|_| PluginFailure::new(id, FailureKind::Unavailable("pool closed".into())))?;
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut instance = match idle {
            Some(instance) => instance,
            None => self.fresh().await.map_err(|e| match e {
                StepLoadError::Failed(f) => f,
                StepLoadError::Refused(r) => PluginFailure::new(
                    id,
                    FailureKind::Unavailable(format!("configure refused on a new instance: {}", r.message)),
                ),
            })?,
        };
        instance.store.data_mut().request_id.clear();
        instance.store.data_mut().request_id.push_str(request_id);
        instance.store.set_epoch_deadline(LoadedPlugin::ticks(self.plugin.deadline));
        let reply = instance.invoke(call).await.map_err(|e| PluginFailure::from_wasmtime(id, &e))?;
        instance.uses += 1;
        if instance.uses < self.plugin.max_uses {
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(instance);
        }
        Ok(reply)
    }
}
