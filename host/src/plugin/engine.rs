//! The process's one wasmtime [`Engine`]: async support (host calls that wait never block a
//! tokio worker), epoch interruption with one ticker thread, the pooling allocator, a bounded
//! wasm stack, and caches of compiled components keyed by content hash: in memory, and on disk
//! across restarts ([`super::cache`]). It also tracks which plugins are compiling now, for
//! `/readyz` and `/status`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::audit::AuditSinks;
use super::bindings::Gateway;
use super::cache::CompileCache;
use super::clock::Clock;
use super::host::{HostState, Shared};
use super::kv::{Kv, KvStore, RedisKv};
use super::outbound::Outbound;
use crate::config::{KvBackend, KvConfig, RuntimeConfig};
use crate::metrics::Metrics;
use crate::telemetry::Telemetry;

/// How often the epoch advances. A call's deadline is rounded up to whole ticks, so a plugin
/// with `deadline_ms = 100` is interrupted between 100 and 105 ms.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Plugin instances alive at once in the whole process (the pooling allocator's capacity), by
/// default; `[runtime] instance_slots` sets it.
pub const MAX_INSTANCES: u32 = 4096;

/// Largest linear memory any plugin may be configured with (the pool reserves address space for
/// it; each store is then held to its plugin's `memory_mib` by `StoreLimits`).
pub const MAX_MEMORY_BYTES: usize = 4096 * 1024 * 1024;

/// The engine, its linker with every host capability, and the shared state behind them.
pub struct PluginEngine {
    engine: Engine,
    linker: Linker<HostState>,
    shared: Arc<Shared>,
    audit: AuditSinks,
    fuel_metering: bool,
    compiled: Mutex<HashMap<String, Component>>,
    disk: Option<CompileCache>,
    loading: Mutex<Vec<Loading>>,
    ticker_stop: Arc<AtomicBool>,
}

/// A plugin being compiled now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadingStatus {
    /// Plugin id.
    pub plugin: String,
    /// Component size, in bytes.
    pub bytes: u64,
    /// Time since its compilation started, in ms.
    pub elapsed_ms: u64,
}

struct Loading {
    plugin: String,
    bytes: u64,
    started: std::time::Instant,
}

/// Where [`PluginEngine::compile`] found a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompiledFrom {
    /// Compiled earlier in this process from the same content.
    Memory,
    /// Read back from the on-disk compile cache.
    Disk,
    /// Compiled now with Cranelift.
    Cranelift,
}

impl CompiledFrom {
    /// `memory`, `disk` or `compiled`, for logs.
    pub fn label(self) -> &'static str {
        match self {
            CompiledFrom::Memory => "memory",
            CompiledFrom::Disk => "disk",
            CompiledFrom::Cranelift => "compiled",
        }
    }
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine").finish_non_exhaustive()
    }
}

// === impl PluginEngine ===

impl PluginEngine {
    /// Creates the engine with `runtime`'s settings and starts its epoch ticker thread
    /// (stopped when this is dropped). The wasm stack per call is `max_wasm_stack_kib`: deep
    /// recursion traps with `stack overflow` instead of exhausting the host's stack.
    ///
    /// Errors: wasmtime refuses the configuration (for example, the host cannot reserve the
    /// pooling allocator's address space), or the outbound TLS client cannot be built.
    pub fn new(runtime: &RuntimeConfig) -> wasmtime::Result<Arc<Self>> {
        Self::with_telemetry(runtime, Arc::new(Telemetry::disabled()))
    }

    /// [`PluginEngine::new`] whose gateways record and export spans through `telemetry`
    /// (plugins' outbound requests get their own client spans and `traceparent`).
    ///
    /// Errors: as [`PluginEngine::new`].
    pub fn with_telemetry(runtime: &RuntimeConfig, telemetry: Arc<Telemetry>) -> wasmtime::Result<Arc<Self>> {
        Self::with_settings(runtime, &KvConfig::default(), telemetry)
    }

    /// [`PluginEngine::with_telemetry`] whose `kv` capability is backed as `kv` says: in
    /// process, or on a shared Redis (connected lazily: a gateway starts while Redis is down).
    /// Must run inside a Tokio runtime when `kv` names Redis.
    ///
    /// Errors: as [`PluginEngine::new`]; an unreadable `kv.password_file`, an unset
    /// `kv.password_env`, or an unusable `kv.url`, each named in the message.
    pub fn with_settings(
        runtime: &RuntimeConfig,
        kv: &KvConfig,
        telemetry: Arc<Telemetry>,
    ) -> wasmtime::Result<Arc<Self>> {
        let stack = usize::try_from(runtime.max_wasm_stack_kib * 1024).unwrap_or(usize::MAX);
        let mut pool = PoolingAllocationConfig::default();
        // By default sized for a 1,000-route configuration whose old and new snapshots coexist
        // during a reload. Slots are address space until used; running out fails a call as
        // `unavailable` (503), never the process.
        let instances = runtime.instance_slots;
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(4))
            .total_memories(instances)
            .total_tables(instances.saturating_mul(4))
            // One fiber stack per instance: a store keeps the stack of its last call (wasmtime's
            // `last_fiber_stack`), so every pooled instance holds one. With fewer stacks than
            // instances, calls past the 1,024th pool in use failed as unavailable.
            .total_stacks(instances)
            .max_memory_size(MAX_MEMORY_BYTES);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(runtime.fuel_metering)
            .max_wasm_stack(stack)
            // Host calls run on the async fiber's stack too: keep 1 MiB above the wasm stack.
            .async_stack_size(stack + 1024 * 1024)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // `PORTCULLIS_WASM_PERFMAP=1`: wasmtime writes `/tmp/perf-PID.map`, so `perf report`
        // names the plugins' compiled functions (bench/perf-guests.py). Off by default: the file
        // grows with every component loaded and is of use only when profiling.
        if std::env::var_os("PORTCULLIS_WASM_PERFMAP").is_some_and(|v| v == "1") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        // WASI with a context that grants nothing (no preopens, every socket address denied,
        // empty environment and stdio) and `wasi:http` whose every request is denied: a
        // toolchain's runtime that merely imports them loads, and a call gets an error value.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        // Every contract the host serves, each under its own versioned names
        // (`portcullis:plugin/kv@0.3.0`, `…@0.2.0`, `…@0.1.0`): a component's imports resolve
        // to its own contract's.
        Gateway::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        super::bindings::v2::Gateway::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        super::bindings::v1::Gateway::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (ticking, stop) = (engine.clone(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("portcullis-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticking.increment_epoch();
                }
            })
            .map_err(wasmtime::Error::from)?;

        let clock = Clock::default();
        let metrics = Arc::new(Metrics::default());
        let kv = match kv.backend {
            KvBackend::Memory => Kv::Memory(KvStore::new(clock.clone())),
            KvBackend::Redis => {
                let password = kv_password(kv).map_err(wasmtime::Error::msg)?;
                Kv::Redis(RedisKv::new(kv, password, &metrics).map_err(wasmtime::Error::msg)?)
            }
        };
        let shared = Arc::new(Shared {
            kv: Arc::new(kv),
            metrics,
            outbound: Outbound::new().map_err(wasmtime::Error::from)?,
            telemetry,
            clock,
        });
        let audit = AuditSinks::with_metrics(shared.metrics.clone());
        let disk = runtime.cache_dir().and_then(|dir| match CompileCache::open(&dir, &engine) {
            Ok(cache) => Some(cache),
            Err(why) => {
                tracing::warn!("{why}; components are compiled at every start");
                None
            }
        });
        Ok(Arc::new(PluginEngine {
            engine,
            linker,
            shared,
            audit,
            fuel_metering: runtime.fuel_metering,
            compiled: Mutex::new(HashMap::new()),
            disk,
            loading: Mutex::new(Vec::new()),
            ticker_stop,
        }))
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker with WASI (empty context) and the Portcullis capabilities.
    pub fn linker(&self) -> &Linker<HostState> {
        &self.linker
    }

    /// The `kv` backend shared by every plugin (namespaced per plugin id).
    pub fn kv(&self) -> &Arc<Kv> {
        &self.shared.kv
    }

    /// The tracer and trace context propagator.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.shared.telemetry
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The clock plugins read and the in-process `kv` store's TTLs run on (a Redis store uses
    /// the server's clock). Tests move it with [`Clock::advance`].
    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    /// What every store shares.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The audit sinks opened so far (they outlive snapshots).
    pub fn audit_sinks(&self) -> &AuditSinks {
        &self.audit
    }

    /// Whether the engine counts fuel (`[runtime] fuel_metering`).
    pub fn fuel_metering(&self) -> bool {
        self.fuel_metering
    }

    /// The on-disk compile cache's directory, when one is in use.
    pub fn compile_cache_dir(&self) -> Option<&std::path::Path> {
        self.disk.as_ref().map(CompileCache::dir)
    }

    /// Compiles `bytes` (content hash `hash`, lowercase hex SHA-256) into a component, or
    /// returns the one compiled earlier from the same content, in this process or (read from
    /// the disk cache) in an earlier one. Blocking: tens of milliseconds for a Rust plugin,
    /// 10–35 s of Cranelift for a 12–18 MB JavaScript or Python one; call it on a blocking
    /// thread.
    ///
    /// Returns the component and where it came from.
    /// Errors: the bytes are not a valid component.
    pub fn compile(&self, bytes: &[u8], hash: &str) -> wasmtime::Result<(Component, CompiledFrom)> {
        if let Some(c) = self.compiled.lock().unwrap_or_else(|e| e.into_inner()).get(hash) {
            return Ok((c.clone(), CompiledFrom::Memory));
        }
        let (component, from) = match self.disk.as_ref().and_then(|d| d.get(&self.engine, hash)) {
            Some(component) => (component, CompiledFrom::Disk),
            None => {
                let component = Component::new(&self.engine, bytes)?;
                if let Some(disk) = &self.disk {
                    disk.put(hash, &component);
                }
                (component, CompiledFrom::Cranelift)
            }
        };
        self.compiled.lock().unwrap_or_else(|e| e.into_inner()).insert(hash.to_owned(), component.clone());
        Ok((component, from))
    }

    /// Marks plugin `plugin` (`bytes` long) as compiling until the returned guard is dropped.
    pub fn begin_loading(self: &Arc<Self>, plugin: &str, bytes: u64) -> LoadingGuard {
        let started = std::time::Instant::now();
        self.loading.lock().unwrap_or_else(|e| e.into_inner()).push(Loading {
            plugin: plugin.to_owned(),
            bytes,
            started,
        });
        LoadingGuard { engine: self.clone(), plugin: plugin.to_owned(), started }
    }

    /// The plugins being compiled now, for `/readyz` and `/status`.
    pub fn loading(&self) -> Vec<LoadingStatus> {
        let loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        loading
            .iter()
            .map(|l| LoadingStatus {
                plugin: l.plugin.clone(),
                bytes: l.bytes,
                elapsed_ms: u64::try_from(l.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            })
            .collect()
    }
}

/// Keeps a plugin listed by [`PluginEngine::loading`] while it compiles.
pub struct LoadingGuard {
    engine: Arc<PluginEngine>,
    plugin: String,
    started: std::time::Instant,
}

impl Drop for LoadingGuard {
    fn drop(&mut self) {
        let mut loading = self.engine.loading.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = loading.iter().position(|l| l.plugin == self.plugin && l.started == self.started) {
            loading.swap_remove(i);
        }
    }
}

impl PluginEngine {
    /// Drops cached components whose hash is not in `in_use`, so a long run of reloads with
    /// new builds does not accumulate compiled code. Snapshots still serving keep their own
    /// references.
    pub fn retain_compiled(&self, in_use: &std::collections::HashSet<&str>) {
        self.compiled.lock().unwrap_or_else(|e| e.into_inner()).retain(|hash, _| in_use.contains(hash.as_str()));
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// The Redis password from `kv.password_file` (its first line) or `kv.password_env`.
///
/// Errors: the file cannot be read, or the variable is unset or not UTF-8; the message names
/// the field, never the value.
fn kv_password(kv: &KvConfig) -> Result<Option<String>, String> {
    if let Some(file) = &kv.password_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("kv.password_file: cannot read {}: {e}", file.display()))?;
        return Ok(Some(text.lines().next().unwrap_or_default().to_owned()));
    }
    if let Some(var) = &kv.password_env {
        return std::env::var(var).map(Some).map_err(|e| format!("kv.password_env: `{var}`: {e}"));
    }
    Ok(None)
}
