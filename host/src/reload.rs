//! Hot reload: build a whole new snapshot off the request path and swap it in atomically, or
//! keep the running one and report why not.
//!
//! Triggers: a change to the configuration file, a plugin file or a `$file` reference (watched
//! through their directories with `notify-debouncer-full`, so editors' atomic renames and
//! Kubernetes ConfigMap `..data` symlink swaps are seen), SIGHUP, and `POST /reload` on the
//! admin listener. Reloads are serialized. Requests in flight keep the snapshot they started
//! with; the old snapshot and its instances are freed when the last of them completes.
//! Listener, admin and `[runtime]` settings are fixed at start: a reload that changes them
//! keeps the running ones and says so. The exception is a listener's TLS material and options
//! (certificates, client CA, ALPN, versions), rebuilt with every snapshot.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use notify_debouncer_full::notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::config::{self, ConfigError, GatewayConfig};
use crate::metrics::ReloadLabels;
use crate::plugin::PluginEngine;
use crate::snapshot::Snapshot;

/// How many reload records `/reloads` keeps.
pub const HISTORY: usize = 32;

/// Longest a stream of file events can delay a reload: past this, the reload happens even if
/// writes continue.
pub const MAX_COALESCE: Duration = Duration::from_secs(2);

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReloadCause {
    /// The first load, at start.
    Start,
    /// A watched file changed.
    FileChange,
    /// SIGHUP.
    Signal,
    /// `POST /reload` on the admin listener, or [`crate::Gateway::reload`].
    Request,
}

/// One reload attempt, as `GET /reloads` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadRecord {
    /// When it finished, in ms since the Unix epoch.
    pub time_ms: u64,
    /// What started it.
    pub cause: ReloadCause,
    /// `ok` or `error`.
    pub result: &'static str,
    /// Every problem, one per line (file: field: reason), when it failed.
    pub error: Option<String>,
    /// Settings that changed but need a restart.
    pub warnings: Vec<String>,
    /// How long building the snapshot took, in ms.
    pub duration_ms: f64,
    /// Plugin id → SHA-256 of its component, for the snapshot serving after this attempt.
    pub plugins: BTreeMap<String, String>,
}

/// Performs reloads and remembers them.
pub struct Reloader {
    file: PathBuf,
    engine: Arc<PluginEngine>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    fixed: String,
    serial: tokio::sync::Mutex<()>,
    history: Mutex<VecDeque<ReloadRecord>>,
}

/// The settings a reload cannot change, as text for comparison. A listener's TLS settings
/// other than whether it has TLS and its handshake timeout are not among them: its rustls
/// configuration is rebuilt with every snapshot.
fn fixed_settings(config: &GatewayConfig) -> String {
    let listeners: Vec<String> = config
        .listeners
        .iter()
        .map(|l| {
            let tls = l.tls.as_ref().map(|t| t.handshake_timeout_ms);
            let limits = (l.max_request_header_bytes, l.max_request_headers, l.max_uri_bytes, l.max_connections);
            let timeouts = (
                l.header_read_timeout_ms,
                l.body_idle_timeout_ms,
                l.body_timeout_ms,
                l.keep_alive_timeout_ms,
                l.drain_timeout_ms,
            );
            format!(
                "{:?}",
                (
                    l.address,
                    l.max_buffered_body_bytes,
                    l.headers_with_underscores,
                    &l.trusted_proxies,
                    limits,
                    timeouts,
                    tls
                )
            )
        })
        .collect();
    format!("{listeners:?}{:?}{:?}", config.admin, config.runtime)
}

// === impl Reloader ===

impl Reloader {
    /// A reloader for `file`, whose current snapshot (built from `config`) is in `snapshot`.
    pub fn new(
        file: &Path,
        config: &GatewayConfig,
        engine: Arc<PluginEngine>,
        snapshot: Arc<ArcSwap<Snapshot>>,
    ) -> Self {
        let reloader = Reloader {
            file: file.to_owned(),
            engine,
            fixed: fixed_settings(config),
            snapshot,
            serial: tokio::sync::Mutex::new(()),
            history: Mutex::new(VecDeque::new()),
        };
        let plugins = reloader.plugin_hashes();
        reloader.remember(ReloadRecord {
            time_ms: now_ms(),
            cause: ReloadCause::Start,
            result: "ok",
            error: None,
            warnings: Vec::new(),
            duration_ms: 0.0,
            plugins,
        });
        reloader
    }

    /// Reloads: reads and checks the configuration, compiles changed plugins (unchanged ones
    /// come from the compile cache), configures new instance pools, builds the router, and
    /// swaps the new snapshot in only when all of that succeeded. Logs one line either way.
    ///
    /// Errors: the [`ConfigError`] listing every problem; the running snapshot keeps serving.
    pub async fn reload(&self, cause: ReloadCause) -> Result<(), ConfigError> {
        let _serial = self.serial.lock().await;
        let started = Instant::now();
        let mut warnings = Vec::new();
        let outcome = async {
            let file = self.file.clone();
            let loaded = tokio::task::spawn_blocking(move || config::load(&file))
                .await
                .map_err(|e| ConfigError::Read { file: self.file.clone(), source: std::io::Error::other(e) })??;
            if fixed_settings(&loaded.config) != self.fixed {
                warnings.push(
                    "listener, admin and runtime settings changed: they need a restart; the running ones are kept"
                        .to_owned(),
                );
            }
            let previous = self.snapshot.load_full();
            Snapshot::build_after(&loaded, &self.engine, Some(&previous)).await
        }
        .await;
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (result, error) = match outcome {
            Ok(snapshot) => {
                let in_use: HashSet<String> = snapshot.plugins.values().map(|p| p.content_hash.clone()).collect();
                self.snapshot.store(Arc::new(snapshot));
                self.engine.retain_compiled(&in_use.iter().map(String::as_str).collect());
                tracing::info!(config = %self.file.display(), ?cause, duration_ms, "configuration reloaded");
                for warning in &warnings {
                    tracing::warn!(config = %self.file.display(), "{warning}");
                }
                (Ok(()), None)
            }
            Err(e) => {
                tracing::error!(config = %self.file.display(), ?cause, "reload failed, the running configuration keeps serving:\n{e}");
                let text = e.to_string();
                (Err(e), Some(text))
            }
        };
        let label = if result.is_ok() { "ok" } else { "error" };
        self.engine.metrics().config_reloads.get_or_create(&ReloadLabels { result: label.to_owned() }).inc();
        let plugins = self.plugin_hashes();
        self.remember(ReloadRecord { time_ms: now_ms(), cause, result: label, error, warnings, duration_ms, plugins });
        result
    }

    /// The recent reload attempts, oldest first (at most [`HISTORY`]).
    pub fn history(&self) -> Vec<ReloadRecord> {
        self.history.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    fn remember(&self, record: ReloadRecord) {
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(record);
    }

    fn plugin_hashes(&self) -> BTreeMap<String, String> {
        self.snapshot.load().plugins.iter().map(|(id, p)| (id.clone(), p.content_hash.clone())).collect()
    }

    /// The files the serving snapshot depends on, as (canonical directory, file name).
    fn watched(&self) -> BTreeSet<(PathBuf, std::ffi::OsString)> {
        self.snapshot
            .load()
            .sources
            .iter()
            .filter_map(|path| {
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                Some((std::fs::canonicalize(dir).ok()?, path.file_name()?.to_owned()))
            })
            .collect()
    }
}

/// Watches the serving snapshot's files and reloads when one changes, until `shutdown`.
/// A reload waits until no event has arrived for `debounce` (at most [`MAX_COALESCE`] after
/// the first), so a burst of writes costs one reload; `notify-debouncer-full` alone emits on
/// a fixed delay after each first event, which under continuous writes meant a reload every
/// `debounce`. Paths outside the watched set are ignored, except `..`-prefixed names
/// (Kubernetes' `..data` swap).
pub async fn watch_files(reloader: Arc<Reloader>, debounce: Duration, mut shutdown: watch::Receiver<bool>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let handler = move |result: DebounceEventResult| match result {
        Ok(events) => {
            let _ = tx.send(events.into_iter().flat_map(|e| e.event.paths).collect());
        }
        Err(errors) => tracing::warn!(?errors, "file watch error"),
    };
    // The crate's own delay only needs to pair rename events; the quiet period below is the
    // operator's `debounce_ms`.
    let mut debouncer = match new_debouncer(debounce.min(Duration::from_millis(20)), None, handler) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch files; reload with SIGHUP or POST /reload");
            return;
        }
    };
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    loop {
        let wanted = reloader.watched();
        let wanted_dirs: BTreeSet<PathBuf> = wanted.iter().map(|(d, _)| d.clone()).collect();
        for dir in wanted_dirs.difference(&dirs) {
            if let Err(e) = debouncer.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory");
            }
        }
        for dir in dirs.difference(&wanted_dirs) {
            let _ = debouncer.unwatch(dir);
        }
        dirs = wanted_dirs;

        let paths = tokio::select! {
            paths = rx.recv() => match paths { Some(p) => p, None => return },
            _ = shutdown.changed() => return,
        };
        let mut relevant = paths.iter().any(|p| touches(p, &wanted));
        let first = Instant::now();
        while relevant && first.elapsed() < MAX_COALESCE {
            match tokio::time::timeout(debounce, rx.recv()).await {
                Ok(Some(_more)) => {}
                Ok(None) => return,
                Err(_quiet) => break,
            }
        }
        while let Ok(more) = rx.try_recv() {
            relevant |= more.iter().any(|p| touches(p, &wanted));
        }
        if relevant {
            let _ = reloader.reload(ReloadCause::FileChange).await;
        }
    }
}

fn touches(path: &Path, wanted: &BTreeSet<(PathBuf, std::ffi::OsString)>) -> bool {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return false };
    let in_dir = |d: &PathBuf| d == dir;
    wanted.iter().any(|(d, n)| in_dir(d) && (n == name || name.to_string_lossy().starts_with("..")))
}

/// Reloads on every SIGHUP until `shutdown`.
pub async fn on_sighup(reloader: Arc<Reloader>, mut shutdown: watch::Receiver<bool>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
        loop {
            tokio::select! {
                Some(()) = hup.recv() => { let _ = reloader.reload(ReloadCause::Signal).await; }
                _ = shutdown.changed() => return,
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (reloader, shutdown.changed().await);
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
