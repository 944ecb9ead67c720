//! The file watcher behind hot reload: which file events start a reload, and when.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify_debouncer_full::notify::event::{AccessKind, AccessMode, ModifyKind};
use notify_debouncer_full::notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use tokio::sync::{mpsc, watch};

use super::{MAX_COALESCE, MAX_WRITE_WAIT, ReloadCause, Reloader};

/// What a file event says about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// A writer has it open and is writing: wait for it.
    Writing,
    /// A writer is done with it (closed after writing, renamed, removed, a new symlink): the
    /// moment to reload.
    Done,
}

/// The signal of one event kind, for a path that may be a symlink; `None` for events that
/// say nothing about content (open, read, close without writing, attribute changes), which
/// must never start a reload: the reload itself opens every file.
fn signal_of(kind: &EventKind, path: &Path) -> Option<Signal> {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Signal::Done),
        EventKind::Modify(ModifyKind::Name(_)) | EventKind::Remove(_) => Some(Signal::Done),
        // A new symlink is whole at once; a new regular file is written next and closed; a new
        // directory (Kubernetes' timestamped one) says nothing until `..data` is renamed.
        EventKind::Create(_) => match path.symlink_metadata().map(|m| m.file_type()) {
            Ok(t) if t.is_symlink() => Some(Signal::Done),
            Ok(t) if t.is_file() => Some(Signal::Writing),
            _ => None,
        },
        // Only inotify reports close-after-write; elsewhere a write is the last word we get.
        EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any | ModifyKind::Other) if cfg!(target_os = "linux") => {
            Some(Signal::Writing)
        }
        EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any | ModifyKind::Other) => Some(Signal::Done),
        _ => None,
    }
}

/// Watches the serving snapshot's files and reloads when one changes, until `shutdown`.
/// A reload waits for a writer to say it is done with a watched file ([`Signal::Done`]), then
/// until no watched file is open for writing and no event has arrived for `debounce` (at most
/// [`MAX_COALESCE`] after the first while nothing is open for writing), so a burst of writes
/// costs one reload and a file written slowly is not read half way. Paths outside the watched
/// set are ignored, except `..`-prefixed names in a watched directory (Kubernetes' `..data`
/// swap). The watches are registered when this is called (inside the tokio runtime), before
/// the future first runs, and its first pass reloads (a no-op unless something changed) after
/// the same wait as any event, so a write made while the gateway was starting is neither
/// missed nor read half way.
pub fn watch_files(
    reloader: Arc<Reloader>,
    debounce: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<(PathBuf, Signal)>>();
    let handler = move |result: DebounceEventResult| match result {
        Ok(events) => {
            let signals: Vec<(PathBuf, Signal)> = events
                .into_iter()
                .flat_map(|e| {
                    let kind = e.event.kind;
                    e.event.paths.into_iter().filter_map(move |p| signal_of(&kind, &p).map(|s| (p, s)))
                })
                .collect();
            if !signals.is_empty() {
                let _ = tx.send(signals);
            }
        }
        Err(errors) => tracing::warn!(?errors, "file watch error"),
    };
    // The crate's own delay only needs to pair rename events; the quiet period below is the
    // operator's `debounce_ms`. The watches are in place when this returns, so no write after
    // the gateway has started goes unseen.
    let debouncer = new_debouncer(debounce.min(Duration::from_millis(20)), None, handler);
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    let mut debouncer = debouncer.map(|mut d| {
        update_watches(&mut d, &reloader.watched(), &mut dirs);
        d
    });
    async move {
        let debouncer = match debouncer.as_mut() {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch files; reload with SIGHUP or POST /reload");
                return;
            }
        };
        // Watched files a writer has open, across reloads: no reload reads them until closed.
        let mut writing: BTreeSet<PathBuf> = BTreeSet::new();
        // The first pass checks at once for a write between the snapshot's build and the
        // watches' start (a no-op when every file still holds what was built), but through the
        // same quiet period and open-for-writing wait as any event: a writer already at work
        // when the gateway started is not read half way.
        let mut first_pass = true;
        loop {
            let wanted = reloader.watched();
            update_watches(debouncer, &wanted, &mut dirs);
            if !std::mem::take(&mut first_pass) {
                let signals = tokio::select! {
                    signals = rx.recv() => match signals { Some(s) => s, None => return },
                    _ = shutdown.changed() => return,
                };
                if !absorb(&signals, &wanted, &mut writing) {
                    continue;
                }
            }
            let (first, mut last) = (Instant::now(), Instant::now());
            loop {
                let more = tokio::select! {
                    more = tokio::time::timeout(debounce, rx.recv()) => more,
                    _ = shutdown.changed() => return,
                };
                match more {
                    Ok(Some(signals)) => {
                        absorb(&signals, &wanted, &mut writing);
                        last = Instant::now();
                    }
                    Ok(None) => return,
                    Err(_quiet) if writing.is_empty() => break,
                    Err(_quiet) if last.elapsed() >= MAX_WRITE_WAIT => {
                        tracing::warn!(files = ?writing, "watched files open for writing but silent for {} s; reloading", MAX_WRITE_WAIT.as_secs());
                        writing.clear();
                        break;
                    }
                    Err(_quiet) => {}
                }
                if writing.is_empty() && first.elapsed() >= MAX_COALESCE {
                    break;
                }
            }
            let _ = reloader.reload(ReloadCause::FileChange).await;
        }
    }
}

/// Watches the directories of `wanted` not yet in `dirs` and unwatches those no longer wanted.
fn update_watches<W: notify_debouncer_full::notify::Watcher, C: notify_debouncer_full::FileIdCache>(
    debouncer: &mut notify_debouncer_full::Debouncer<W, C>,
    wanted: &BTreeSet<(PathBuf, std::ffi::OsString)>,
    dirs: &mut BTreeSet<PathBuf>,
) {
    let wanted_dirs: BTreeSet<PathBuf> = wanted.iter().map(|(d, _)| d.clone()).collect();
    for dir in wanted_dirs.difference(dirs) {
        if let Err(e) = debouncer.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory");
        }
    }
    for dir in dirs.difference(&wanted_dirs) {
        let _ = debouncer.unwatch(dir);
    }
    *dirs = wanted_dirs;
}

/// Applies `signals` to the set of watched files open for writing; true when one says a writer
/// is done with a watched file.
fn absorb(
    signals: &[(PathBuf, Signal)],
    wanted: &BTreeSet<(PathBuf, std::ffi::OsString)>,
    writing: &mut BTreeSet<PathBuf>,
) -> bool {
    let mut done = false;
    for (path, signal) in signals.iter().filter(|(p, _)| touches(p, wanted)) {
        match signal {
            Signal::Writing => {
                writing.insert(path.clone());
            }
            Signal::Done => {
                writing.remove(path);
                done = true;
            }
        }
    }
    done
}

/// Whether an event on `path` concerns a watched file: one of its names in its directory, or a
/// `..`-prefixed name there (Kubernetes swaps `..data` to update every key at once).
fn touches(path: &Path, wanted: &BTreeSet<(PathBuf, std::ffi::OsString)>) -> bool {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return false };
    wanted.iter().any(|(d, n)| d == dir && (n == name || name.to_string_lossy().starts_with("..")))
}
