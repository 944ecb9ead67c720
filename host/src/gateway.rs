//! A running gateway: the snapshot, the listeners and the admin listener, and their shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{self, ConfigError};
use crate::plugin::PluginEngine;
use crate::reload::{ReloadCause, Reloader};
use crate::snapshot::Snapshot;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid; the message lists every problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener address could not be bound.
    #[error("cannot bind {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// An OpenTelemetry variable is unusable; the message names it.
    #[error("tracing export: {0}")]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    /// The WebAssembly engine could not be created.
    #[error("cannot create the plugin engine: {0}")]
    Engine(String),
    /// The admin token cannot be read.
    #[error("{}: {source}", file.display())]
    Admin {
        /// The configuration file.
        file: std::path::PathBuf,
        /// What is wrong.
        source: crate::admin::access::AccessError,
    },
}

/// A started gateway. Dropping it does not stop it; call [`Gateway::shutdown`].
pub struct Gateway {
    listener_addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    reloader: Arc<Reloader>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// For its audit sinks, written out at shutdown.
    engine: Arc<PluginEngine>,
}

// === impl Gateway ===

impl Gateway {
    /// Loads `config_file`, builds the snapshot (compiling and configuring every plugin), binds
    /// every listener and the admin listener, and starts serving. Span export is configured
    /// from the `OTEL_*` environment ([`crate::telemetry::ExportSettings::from_vars`]).
    ///
    /// Errors: [`StartError::Config`] for any problem in the file or its plugins;
    /// [`StartError::Bind`] when an address is taken; [`StartError::Telemetry`] for an
    /// unusable `OTEL_*` variable; [`StartError::Admin`] for an unreadable admin token;
    /// [`StartError::Engine`].
    pub async fn start(config_file: &Path) -> Result<Gateway, StartError> {
        let config = config::load(config_file)?.config;
        let telemetry = Arc::new(crate::telemetry::Telemetry::from_env()?);
        if let Some(endpoint) = telemetry.endpoint() {
            tracing::info!(%endpoint, "exporting spans over OTLP/HTTP");
        }
        let engine = PluginEngine::with_settings(&config.runtime, &config.kv, telemetry)
            .map_err(|e| StartError::Engine(format!("{e:#}")))?;
        Self::start_with_engine(config_file, engine).await
    }

    /// [`Gateway::start`] with an existing engine, whose compiled components and `kv` store
    /// are then shared (tests run many gateways on one engine).
    ///
    /// Errors: as [`Gateway::start`].
    pub async fn start_with_engine(config_file: &Path, engine: Arc<PluginEngine>) -> Result<Gateway, StartError> {
        let loaded = config::load(config_file)?;
        let wanted = match loaded.config.kv.backend {
            config::KvBackend::Memory => "memory",
            config::KvBackend::Redis => "redis",
        };
        if wanted != engine.kv().backend() {
            tracing::warn!(
                configured = wanted,
                serving = engine.kv().backend(),
                "[kv] is fixed by the engine this gateway was started with; its backend is used"
            );
        }
        // The admin listener answers while plugins compile (tens of seconds for a JavaScript
        // or Python component without a warm cache): `/readyz` says which are still loading.
        let booting = if loaded.config.admin.enabled {
            let address = loaded.config.admin.address;
            let listener = TcpListener::bind(address).await.map_err(|source| StartError::Bind { address, source })?;
            let access = Arc::new(
                crate::admin::access::AdminAccess::new(&loaded)
                    .map_err(|source| StartError::Admin { file: config_file.to_owned(), source })?,
            );
            let (stop, stopped) = watch::channel(false);
            let serving = tokio::spawn(crate::admin::serve_starting(listener, access.clone(), engine.clone(), stopped));
            Some((serving, stop, access))
        } else {
            None
        };
        let built = Snapshot::build(&loaded, &engine).await;
        let admin = match booting {
            Some((serving, stop, access)) => {
                let _ = stop.send(true);
                let listener = serving.await.map_err(|e| StartError::Engine(format!("admin listener task: {e}")))?;
                Some((listener, access))
            }
            None => None,
        };
        let built = built?;
        built.configure_audit_sinks();
        let snapshot = Arc::new(ArcSwap::from_pointee(built));
        let (shutdown, _) = watch::channel(false);
        let ready = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        let reloader = Arc::new(Reloader::new(config_file, &loaded.config, engine.clone(), snapshot.clone()));
        if loaded.config.reload.watch {
            let debounce = std::time::Duration::from_millis(loaded.config.reload.debounce_ms);
            tasks.spawn(crate::reload::watch_files(reloader.clone(), debounce, shutdown.subscribe()));
        }
        tasks.spawn(crate::reload::on_sighup(reloader.clone(), shutdown.subscribe()));
        tasks.spawn(crate::health::run_checks(snapshot.clone(), shutdown.subscribe()));

        let admin_addr = match admin {
            Some((listener, access)) => {
                let address = loaded.config.admin.address;
                let bound = listener.local_addr().map_err(|source| StartError::Bind { address, source })?;
                let state = crate::admin::AdminState {
                    ready: ready.clone(),
                    snapshot: snapshot.clone(),
                    metrics: engine.metrics().clone(),
                    reloader: reloader.clone(),
                    access,
                };
                tasks.spawn(crate::admin::serve(listener, state, shutdown.subscribe()));
                Some(bound)
            }
            None => None,
        };

        let mut listener_addrs = Vec::new();
        for (index, listener_config) in loaded.config.listeners.into_iter().enumerate() {
            let address = listener_config.address;
            let listener = TcpListener::bind(address).await.map_err(|source| StartError::Bind { address, source })?;
            listener_addrs.push(listener.local_addr().map_err(|source| StartError::Bind { address, source })?);
            let (snapshot, rx) = (snapshot.clone(), shutdown.subscribe());
            tasks.spawn(async move { crate::server::serve(listener, index, &listener_config, snapshot, rx).await });
        }
        ready.store(true, Ordering::Release);
        tracing::info!(listeners = ?listener_addrs, admin = ?admin_addr, config = %config_file.display(), "portcullis is serving");
        Ok(Gateway { listener_addrs, admin_addr, snapshot, reloader, shutdown, tasks, engine })
    }

    /// The bound addresses of the listeners, in configuration order.
    pub fn listener_addrs(&self) -> &[SocketAddr] {
        &self.listener_addrs
    }

    /// The bound admin address, when enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The snapshot currently serving.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Reloads the configuration now, as SIGHUP or `POST /reload` do.
    ///
    /// Errors: every problem found; the running snapshot keeps serving.
    pub async fn reload(&self) -> Result<(), ConfigError> {
        self.reloader.reload(ReloadCause::Request).await
    }

    /// The recent reload attempts, oldest first.
    pub fn reloads(&self) -> Vec<crate::reload::ReloadRecord> {
        self.reloader.history()
    }

    /// Stops accepting, lets in-flight requests finish (up to each listener's
    /// `drain_timeout_ms`), and returns when every listener is done.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        // The last requests' audit records and spans: write and export them before the
        // process may exit.
        self.engine.audit_sinks().flush();
        let telemetry = self.snapshot.load().telemetry.clone();
        if telemetry.is_recording() {
            let _ = tokio::task::spawn_blocking(move || telemetry.flush()).await;
        }
    }

    /// Serves until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(self) {
        wait_for_signal().await;
        tracing::info!("shutting down: draining in-flight requests");
        self.shutdown().await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
