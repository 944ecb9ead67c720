//! Hot reload: build a whole new snapshot off the request path and swap it in atomically, or
//! keep the running one and report why not.
//!
//! Triggers: a change to the configuration file, a plugin file, a `$file` reference or a
//! certificate (watched through their directories with `notify-debouncer-full`, so editors'
//! atomic renames and Kubernetes ConfigMap `..data` symlink swaps are seen), SIGHUP, and
//! `POST /reload` on the admin listener. Reloads are serialized. Requests in flight keep the
//! snapshot they started with; the old snapshot and its instances are freed when the last of
//! them completes.
//!
//! A file event starts a reload only when it says a writer is done: close-after-write, a
//! rename into or out of place, a removal, a new symlink (inotify's `IN_CLOSE_WRITE`,
//! `IN_MOVED_*`, `IN_DELETE`, `IN_CREATE`). Opening or reading a file starts nothing, and a file
//! still open for writing holds every reload back until it is closed, so a configuration is
//! never applied half written. The reload then runs only if some watched file's content
//! differs from what the serving snapshot was built from ([`Sources`]), and the new snapshot
//! is swapped in only if no file changed while it was being built. SIGHUP and `POST /reload`
//! always rebuild.
//!
//! A reload that leaves a route that had an `auth` step with none is refused unless the route
//! says `public = true`: an empty chain served by mistake is an open door.
//!
//! Listener, admin, `[runtime]` and `[kv]` settings are fixed at start: a reload that changes them
//! keeps the running ones and says which changed. The exception is a listener's TLS material
//! and options (certificates, client CA, ALPN, versions), rebuilt with every snapshot.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::watch;

use crate::config::model::ListenerConfig;
use crate::config::{self, ConfigError, GatewayConfig, Issue, LoadedConfig, PluginKind};
use crate::metrics::ReloadLabels;
use crate::plugin::PluginEngine;
use crate::snapshot::Snapshot;
use crate::sources::Sources;

mod watcher;

pub use watcher::watch_files;

/// How many reload records `/reloads` keeps.
pub const HISTORY: usize = 32;

/// Longest a stream of completed writes can delay a reload, counted from the first: past
/// this, the reload happens even if more keep coming. A file still open for writing delays it
/// regardless, until it is closed.
pub const MAX_COALESCE: Duration = Duration::from_secs(2);

/// How long a watched file open for writing may stay silent (no write, no close) before the
/// reload waiting for it goes ahead anyway, in case its close was never reported.
pub const MAX_WRITE_WAIT: Duration = Duration::from_secs(60);

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
    fixed: Vec<(String, String)>,
    serial: tokio::sync::Mutex<()>,
    history: Mutex<VecDeque<ReloadRecord>>,
}

/// The settings a reload cannot change, as text for comparison, by the name the warning
/// gives them (`listener[0]`, `admin`, `runtime`, `kv`). A listener is compared whole, with every
/// field present and future, except the TLS options rebuilt with every snapshot; whether it
/// has TLS and its `handshake_timeout_ms` are fixed.
fn fixed_settings(config: &GatewayConfig) -> Vec<(String, String)> {
    let mut fixed: Vec<(String, String)> = config
        .listeners
        .iter()
        .enumerate()
        .map(|(i, listener)| (format!("listener[{i}]"), format!("{:?}", fixed_part(listener))))
        .collect();
    fixed.push(("admin".to_owned(), format!("{:?}", config.admin)));
    fixed.push(("runtime".to_owned(), format!("{:?}", config.runtime)));
    fixed.push(("kv".to_owned(), format!("{:?}", config.kv)));
    fixed
}

/// `listener` without the TLS options that each snapshot rebuilds (see [`crate::tls`]).
fn fixed_part(listener: &ListenerConfig) -> ListenerConfig {
    let mut fixed = listener.clone();
    if let Some(tls) = &mut fixed.tls {
        tls.certificates.clear();
        tls.client_ca_file = None;
        tls.client_auth = Default::default();
        tls.alpn.clear();
        tls.min_version = Default::default();
    }
    fixed
}

/// The names of the fixed settings that differ between `running` and `next`; a listener
/// added or removed counts as changed.
fn changed_fixed(running: &[(String, String)], next: &[(String, String)]) -> Vec<String> {
    let names: BTreeSet<&String> = running.iter().chain(next).map(|(name, _)| name).collect();
    let value =
        |all: &'_ [(String, String)], name: &String| all.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    names.into_iter().filter(|name| value(running, name) != value(next, name)).cloned().collect()
}

/// Routes of `running` that had an `auth` step and would have none in `next`: refused
/// ([`Issue`]s, under `route[i].chain`) unless `next` marks the route `public`, in which case
/// they are warnings, as is a route with an auth step that `next` removes altogether.
fn auth_removed(running: &Snapshot, next: &Snapshot, loaded: &LoadedConfig) -> (Vec<Issue>, Vec<String>) {
    use crate::chain::Step as _;
    let authenticated = |chain: &crate::chain::Chain| {
        chain
            .steps()
            .iter()
            .filter(|s| s.step.kind() == PluginKind::Auth && s.mode == crate::config::StepMode::Enforce)
            .map(|s| s.step.id().clone())
            .collect::<Vec<_>>()
    };
    let (mut refused, mut warnings) = (Vec::new(), Vec::new());
    for before in &running.routes {
        let had = authenticated(&before.chain);
        if had.is_empty() {
            continue;
        }
        let had = had.join(", ");
        let Some(i) = loaded.config.routes.iter().position(|r| r.id == *before.id) else {
            warnings.push(format!("route `{}`, which required authentication ({had}), was removed", before.id));
            continue;
        };
        let now = next.routes.iter().find(|r| r.id == before.id).map(|r| authenticated(&r.chain));
        if now.is_some_and(|now| now.is_empty()) {
            if loaded.config.routes[i].public {
                warnings.push(format!(
                    "route `{}` no longer has an auth step ({had} removed; it says public = true)",
                    before.id
                ));
            } else {
                refused.push(Issue::new(
                    format!("route[{i}].chain"),
                    format!(
                        "route `{}` had an auth step ({had}) and this configuration leaves it with none; \
                         set `public = true` on the route if it is meant to serve unauthenticated",
                        before.id
                    ),
                ));
            }
        }
    }
    (refused, warnings)
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
        let plugins = plugin_hashes(&reloader.snapshot.load());
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
    /// A [`ReloadCause::FileChange`] reload whose watched files all still hold what the serving
    /// snapshot was built from does nothing (it is neither recorded nor counted), and one during
    /// which a file changed again swaps nothing (the event of that write starts the next).
    ///
    /// Errors: the [`ConfigError`] listing every problem, a route left without its auth step
    /// among them; for SIGHUP and `POST /reload`, a file that changed while it was read. The
    /// running snapshot keeps serving.
    pub async fn reload(&self, cause: ReloadCause) -> Result<(), ConfigError> {
        let _serial = self.serial.lock().await;
        if cause == ReloadCause::FileChange
            && self.changed_sources(self.snapshot.load_full().sources.clone()).await.is_empty()
        {
            tracing::debug!(config = %self.file.display(), "watched files hold what is serving; nothing to reload");
            return Ok(());
        }
        // Rotated audit files (logrotate's `postrotate` sends SIGHUP or POST /reload).
        self.engine.audit_sinks().reopen();
        let started = Instant::now();
        let mut warnings = Vec::new();
        let outcome = async {
            let file = self.file.clone();
            let loaded = tokio::task::spawn_blocking(move || config::load(&file))
                .await
                .map_err(|e| ConfigError::Read { file: self.file.clone(), source: std::io::Error::other(e) })??;
            for name in changed_fixed(&self.fixed, &fixed_settings(&loaded.config)) {
                warnings.push(format!("{name} settings changed: they need a restart; the running ones are kept"));
            }
            let previous = self.snapshot.load_full();
            let snapshot = Snapshot::build_after(&loaded, &self.engine, Some(&previous)).await?;
            let (refused, mut removed) = auth_removed(&previous, &snapshot, &loaded);
            if !refused.is_empty() {
                return Err(loaded.invalid(refused));
            }
            warnings.append(&mut removed);
            let moved = self.changed_sources(snapshot.sources.clone()).await;
            Ok((snapshot, moved, loaded))
        }
        .await;
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let outcome = match outcome {
            Ok((_, moved, _)) if !moved.is_empty() && cause == ReloadCause::FileChange => {
                tracing::info!(config = %self.file.display(), files = ?moved, "a file changed while reloading; waiting for the next write to settle");
                return Ok(());
            }
            Ok((_, moved, loaded)) if !moved.is_empty() => {
                let issues = moved
                    .iter()
                    .map(|f| {
                        Issue::new(
                            f.display().to_string(),
                            "changed while the reload read it; nothing was swapped: reload again once it is written",
                        )
                    })
                    .collect();
                Err(loaded.invalid(issues))
            }
            Ok((snapshot, _, _)) => Ok(snapshot),
            Err(e) => Err(e),
        };
        let label = if outcome.is_ok() { "ok" } else { "error" };
        self.engine.metrics().config_reloads.get_or_create(&ReloadLabels { result: label.to_owned() }).inc();
        match outcome {
            Ok(snapshot) => {
                let in_use: HashSet<String> = snapshot.plugins.values().map(|p| p.content_hash.clone()).collect();
                // Recorded before the swap, so whoever sees the new snapshot serve finds its record.
                let plugins = plugin_hashes(&snapshot);
                self.remember(ReloadRecord {
                    time_ms: now_ms(),
                    cause,
                    result: label,
                    error: None,
                    warnings: warnings.clone(),
                    duration_ms,
                    plugins,
                });
                let snapshot = Arc::new(snapshot);
                self.snapshot.store(snapshot.clone());
                snapshot.configure_audit_sinks();
                self.engine.retain_compiled(&in_use.iter().map(String::as_str).collect());
                tracing::info!(config = %self.file.display(), ?cause, duration_ms, "configuration reloaded");
                for warning in &warnings {
                    tracing::warn!(config = %self.file.display(), "{warning}");
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(config = %self.file.display(), ?cause, "reload failed, the running configuration keeps serving:\n{e}");
                let error = Some(e.to_string());
                let plugins = plugin_hashes(&self.snapshot.load());
                self.remember(ReloadRecord {
                    time_ms: now_ms(),
                    cause,
                    result: label,
                    error,
                    warnings,
                    duration_ms,
                    plugins,
                });
                Err(e)
            }
        }
    }

    /// The files of `sources` whose content on disk differs from what was recorded, read on a
    /// blocking thread.
    async fn changed_sources(&self, sources: Sources) -> Vec<PathBuf> {
        tokio::task::spawn_blocking(move || sources.changed_on_disk().into_iter().map(Path::to_path_buf).collect())
            .await
            .unwrap_or_default()
    }

    /// The engine the snapshots are built on.
    pub fn engine(&self) -> &Arc<PluginEngine> {
        &self.engine
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

    /// The files the serving snapshot depends on, as (canonical directory, file name).
    fn watched(&self) -> BTreeSet<(PathBuf, std::ffi::OsString)> {
        self.snapshot
            .load()
            .sources
            .paths()
            .filter_map(|path| {
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                Some((std::fs::canonicalize(dir).ok()?, path.file_name()?.to_owned()))
            })
            .collect()
    }
}

/// Reloads on every SIGHUP until `shutdown`. The handler is installed when this is called,
/// not when the future first runs, so a SIGHUP sent once the gateway has started never meets
/// the default action (terminating the process). Call it inside the tokio runtime.
pub fn on_sighup(reloader: Arc<Reloader>, mut shutdown: watch::Receiver<bool>) -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        #[cfg(unix)]
        {
            let Ok(mut hup) = hup else {
                tracing::warn!("cannot install the SIGHUP handler; reload with POST /reload");
                return;
            };
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
}

/// Plugin id → SHA-256 of its component, as `/reloads` shows them.
fn plugin_hashes(snapshot: &Snapshot) -> BTreeMap<String, String> {
    snapshot.plugins.iter().map(|(id, p)| (id.clone(), p.content_hash.clone())).collect()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
