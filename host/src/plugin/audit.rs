//! The host side of the `audit` capability: append-only JSON Lines sinks whose records are
//! hash-chained, and the verifier behind `portcullis audit verify`.
//!
//! Each record a plugin appends is one JSON object on one line. The host appends two members,
//! `"prev"` (the previous record's hash; 64 zeros for the first record of a file) and `"hash"`,
//! SHA-256 in lowercase hex of `prev` followed by the record text exactly as the plugin gave it:
//!
//! ```text
//! {"time":"…","status":200,"prev":"000…000","hash":"9f2c…"}
//! ```
//!
//! So the record text is recovered from a line by cutting the fixed-length suffix
//! `,"prev":"…","hash":"…"` before the closing brace. Editing, deleting, inserting or reordering
//! records breaks the chain at the first record touched. (A truncated tail cannot be detected
//! from the file alone; ship the latest hash elsewhere, e.g. to the log, for that.)
//!
//! Sinks belong to the engine, not to a snapshot: a reload keeps appending to the same chain.
//! Appends from every instance of every plugin sharing a sink are serialized by its lock.
//!
//! Appends are buffered: an append chains the record and adds its line to the sink's buffer,
//! which is written with one `write` call every [`FLUSH_INTERVAL`] (by a thread of the sink's
//! own), as soon as it holds [`FLUSH_BYTES`], when the file is rotated, and when the sink is
//! dropped or [`AuditSinks::flush`]ed (at shutdown). This takes the system call off the
//! request's thread and out of the step's time: one `write` for a few hundred records under
//! load. What it costs, and the bound on it: if the process dies (a crash, `SIGKILL`), the
//! records of at most the last 25 ms, or 64 KiB, are lost without a `gap` record; the hashes
//! of those records were already returned to the plugin. There is no `fsync`, as before
//! buffering, so an operating-system crash may also lose what the page cache held.
//!
//! A write that fails loses every record of that buffer: they are counted as failed and the
//! chain goes back to the last record written, so the next `gap` record accounts for them. The
//! buffer never holds more than [`FLUSH_BYTES`] and one record.
//!
//! The host writes records of its own into the chain, marked `"portcullis_audit"`:
//!
//! - `recovered`: the file ended in a torn line (a crash or a full disk mid-write); on open
//!   it was truncated back to its last complete record (`truncated_bytes`) and the chain goes
//!   on. A whole last line that is not a chained record is still refused: that file is not
//!   this chain, and nothing of it is cut.
//! - `gap`: appends failed (a full disk, say; each failed write is truncated away, so the file
//!   never holds half a line) and `lost_records` records were not written; the first append
//!   that succeeds again writes this first.
//! - `continued`: the first record of a file that follows a rotated one (`mv audit.jsonl
//!   audit.jsonl.1`, then a reload or SIGHUP, logrotate's `postrotate` convention): its `prev`
//!   and `from` are the old file's last hash, so the chain runs on across files.
//!
//! - `checkpoint`: a signed checkpoint of the chain (`audit_signing`; [`super::checkpoint`]):
//!   how many records of this file precede it and the hash of the last, signed with an HMAC
//!   or Ed25519 key the file's writers cannot use to forge. One is signed every
//!   `checkpoint_interval_ms` while records are appended, at shutdown, before a rotation and
//!   before the key changes; the file is synced first, then the checkpoint is exported to the
//!   log (target `portcullis::audit`), `GET /status` and `checkpoint_file`. Plugins cannot
//!   write a `portcullis_audit` member.
//!
//! Written and failed records are counted per sink (`portcullis_audit_records_total{sink,
//! result}` and `GET /status`).
//!
//! **Durable appends.** A fail-closed logging step records before its response is sent, and
//! its appends go through [`Sink::append_durably`]: written at once (with whatever was
//! buffered), and synced when the sink's `audit_fsync` is `always`. With `audit_fsync =
//! "always"` the flush thread's timed writes are synced too.
//!
//! **What is detected, by whom** (docs/audit.md has the whole threat model): `audit verify`
//! alone finds a record edited, removed, inserted or reordered by someone who did not rehash
//! the chain. `audit verify --key` also finds a rehashed rewrite of any record before the last
//! checkpoint (its signature, or its count and head, no longer match). `--checkpoints` with
//! the checkpoints exported off the box also finds a cut tail and a rewrite of the whole file,
//! up to the last exported checkpoint. Records after the last checkpoint (at most one
//! interval's) are covered by no signature until the next one.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use sha2::{Digest, Sha256};

use super::bindings::exports::portcullis::plugin::logging::{Exchange, Phase};
use super::bindings::portcullis::plugin::types::Header;
use super::checkpoint::{Checkpoint, SigningKey, VerifyingKey};
use crate::config::AuditFsync;
use crate::metrics::{AuditLabels, Metrics};

/// Largest record a plugin may append, in bytes (64 KiB).
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// The `prev` of the first record of a file.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Length of `,"prev":"<64>","hash":"<64>"}`.
const SUFFIX_LEN: usize = 9 + 64 + 10 + 64 + 2;
/// How often a sink's buffer is written.
pub const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(25);
/// Buffered bytes that make an append write the buffer at once (64 KiB).
pub const FLUSH_BYTES: usize = 64 * 1024;

/// Why an append failed; mirrors the WIT `audit-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The record is not acceptable; says why.
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// The sink could not be written; says why.
    #[error("audit sink unavailable: {0}")]
    Unavailable(String),
}

/// How a sink makes its records durable and signs its chain: from the `[plugin.ID]` that
/// names the sink (`audit_fsync`, `audit_signing`). A new sink starts with them; an open one
/// takes new ones when a snapshot that has them starts serving ([`Sink::configure`]), so a
/// reload that is refused changes nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SinkOptions {
    /// Whether every write is followed by `fdatasync`.
    pub fsync: AuditFsync,
    /// Signed checkpoints, when configured.
    pub signing: Option<Signing>,
}

/// Signed checkpoints of a sink's chain (see [`super::checkpoint`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Signing {
    /// The key that signs.
    pub key: SigningKey,
    /// How often a checkpoint is signed while records are appended.
    pub interval: Duration,
    /// The file every checkpoint is also appended to.
    pub export: Option<PathBuf>,
}

/// One chained output: a file or stdout.
pub struct Sink {
    name: String,
    state: Mutex<SinkState>,
    written: AtomicU64,
    failed: AtomicU64,
    counters: Option<(Counter, Counter)>,
}

struct SinkState {
    out: Output,
    /// The hash of the last record chained (written or buffered): the next one's `prev`.
    last: String,
    /// The hash of the last record written: where the chain resumes when a write fails.
    written_last: String,
    /// Chained lines not written yet.
    pending: Vec<u8>,
    /// How many of them are plugins' records (not the host's own).
    pending_records: u64,
    /// The lost records that a `gap` record among them accounts for.
    pending_gap: u64,
    /// Records lost and not yet accounted for by a `gap` record, for the next one.
    lost: u64,
    last_error: Option<String>,
    options: SinkOptions,
    /// Records in the current file (for stdout, since the start), buffered ones included.
    records: u64,
    /// Of them, those written.
    written_records: u64,
    /// The `prev` of the current file's first record: where its part of the chain starts.
    file_start: String,
    /// `written_records` just after the last checkpoint was written.
    checkpointed: u64,
    next_checkpoint: Instant,
    last_checkpoint: Option<Checkpoint>,
    /// Why the last checkpoint could not be exported to its file, until one is.
    export_error: Option<String>,
}

enum Output {
    Stdout(std::io::Stdout),
    File {
        file: File,
        path: PathBuf,
        /// Bytes in the file as this sink wrote it, for truncating a failed write away.
        len: u64,
    },
}

/// A sink as `GET /status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SinkStatus {
    /// The file, or `stdout`.
    pub sink: String,
    /// Records written since the process started.
    pub written: u64,
    /// Records that could not be written.
    pub failed: u64,
    /// The last write error, while the sink has not written since.
    pub last_error: Option<String>,
    /// `never` or `always`.
    pub fsync: &'static str,
    /// How checkpoints are signed: `ALGORITHM key KEY_ID`; none when they are not.
    pub signing: Option<String>,
    /// The last signed checkpoint: what an auditor compares the file with.
    pub checkpoint: Option<Checkpoint>,
    /// Records of the current file after the last checkpoint: not covered by a signature yet.
    pub unsigned_records: u64,
    /// Why the last checkpoint could not be appended to `checkpoint_file`, until one is.
    pub checkpoint_error: Option<String>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("name", &self.name).finish_non_exhaustive()
    }
}

// === impl Sink ===

impl Sink {
    fn new(name: String, state: SinkState, metrics: Option<&Metrics>) -> Sink {
        let counters = metrics.map(|m| {
            let written =
                m.audit_records.get_or_create(&AuditLabels { sink: name.clone(), result: "written".into() }).clone();
            let failed =
                m.audit_records.get_or_create(&AuditLabels { sink: name.clone(), result: "failed".into() }).clone();
            (written, failed)
        });
        Sink { name, state: Mutex::new(state), written: AtomicU64::new(0), failed: AtomicU64::new(0), counters }
    }

    /// Checks `record`, chains it and buffers it as one line (see the module docs for when it
    /// is written). Returns its hash. After lost records, a `gap` record saying how many goes
    /// first.
    ///
    /// Errors: [`AuditError::InvalidRecord`] when the record is not a non-empty JSON object on
    /// one line without `prev`/`hash` members, or is over [`MAX_RECORD_BYTES`];
    /// [`AuditError::Unavailable`] when this append filled the buffer and writing it failed
    /// (its records, this one included, are counted as failed and nothing of them stays in
    /// the file). A failure of a timed write is not reported to any append: it is counted,
    /// logged, shown by `GET /status` and accounted for by the next `gap` record.
    pub fn append(&self, record: &str) -> Result<String, AuditError> {
        check_record(record)?;
        self.chain(record, false)
    }

    /// As [`Sink::append`], but returns only once the record is written (with what was
    /// buffered before it), and synced to the disk when the sink's `audit_fsync` is `always`:
    /// the append of a fail-closed step, made before its response is sent. One `write` (and
    /// `fdatasync`) per call, on the calling thread.
    ///
    /// Errors: as [`Sink::append`], and [`AuditError::Unavailable`] whenever the write (or
    /// sync) fails; the record is then not in the file (counted as failed, and accounted for
    /// by the next `gap` record).
    pub fn append_durably(&self, record: &str) -> Result<String, AuditError> {
        check_record(record)?;
        self.chain(record, true)
    }

    /// Appends a record the host rendered itself (`audit.append-observed`: the standard record
    /// of [`portcullis_audit_record::render`], one JSON object on one line without reserved
    /// members by construction), so only its size is checked; buffered as [`Sink::append`], or
    /// written at once as [`Sink::append_durably`] when `durable`.
    ///
    /// Errors: [`AuditError::InvalidRecord`] when it is over [`MAX_RECORD_BYTES`] (a request
    /// with many large recorded headers); [`AuditError::Unavailable`] as for those two.
    pub fn append_rendered(&self, record: &str, durable: bool) -> Result<String, AuditError> {
        if record.len() > MAX_RECORD_BYTES {
            return Err(AuditError::InvalidRecord("over 64 KiB".to_owned()));
        }
        self.chain(record, durable)
    }

    /// Chains a checked `record` and buffers its line; writes the buffer when it is full, or
    /// at once when `durable`.
    fn chain(&self, record: &str, durable: bool) -> Result<String, AuditError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let hash = state.chain_record(record);
        if durable || state.pending.len() >= FLUSH_BYTES {
            self.flush_locked(&mut state).map_err(AuditError::Unavailable)?;
        }
        Ok(hash)
    }

    /// Writes the buffered records now.
    ///
    /// Errors: the write failed (`sink: reason`); those records are lost and counted.
    pub fn flush(&self) -> Result<(), String> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.flush_locked(&mut state)
    }

    /// Writes the buffered records and, when the sink signs, a checkpoint covering them: what
    /// shutdown, rotation and a key change do, so the file's last records are signed.
    ///
    /// Errors: as [`Sink::flush`], or the checkpoint could not be written or synced.
    pub fn seal(&self) -> Result<(), String> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.seal_locked(&mut state)
    }

    fn seal_locked(&self, state: &mut SinkState) -> Result<(), String> {
        match state.options.signing.is_some() {
            true => self.checkpoint_locked(state),
            false => self.flush_locked(state),
        }
    }

    /// What the flush thread does every [`FLUSH_INTERVAL`]: writes the buffer, and signs a
    /// checkpoint when one is due.
    fn tick(&self) -> Result<(), String> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let due = state.options.signing.is_some() && Instant::now() >= state.next_checkpoint;
        if due { self.checkpoint_locked(&mut state) } else { self.flush_locked(&mut state) }
    }

    /// Writes the buffer, then, if records were written since the last checkpoint, signs one
    /// covering them, chains and writes it, syncs the file (always: an exported checkpoint
    /// must never cover records a crash can still take back, or it would look like a cut
    /// tail), and exports it: to the log (target `portcullis::audit`), `GET /status` and the
    /// `checkpoint_file`. A failed export is logged and shown; the checkpoint is in the chain.
    ///
    /// Errors: a write or the sync failed; nothing was exported.
    fn checkpoint_locked(&self, state: &mut SinkState) -> Result<(), String> {
        let Some(signing) = state.options.signing.clone() else { return self.flush_locked(state) };
        state.next_checkpoint = Instant::now() + signing.interval;
        self.flush_locked(state)?;
        if state.written_records == state.checkpointed {
            return Ok(());
        }
        let checkpoint =
            Checkpoint::signed(&signing.key, &state.file_start, state.written_records, &state.written_last, now_ms());
        let line = checkpoint.to_record();
        state.chain(&line);
        self.flush_locked(state)?;
        state.sync().map_err(|e| format!("{}: fdatasync: {e}", self.name))?;
        state.checkpointed = state.written_records;
        tracing::info!(
            target: "portcullis::audit",
            sink = %self.name,
            records = checkpoint.records,
            head = %checkpoint.head,
            checkpoint = %line,
            "audit checkpoint signed"
        );
        state.export_error = signing.export.as_deref().and_then(|path| export(path, &line).err());
        if let Some(e) = &state.export_error {
            tracing::error!(sink = %self.name, error = %e, "audit checkpoint not exported to its file");
        }
        state.last_checkpoint = Some(checkpoint);
        Ok(())
    }

    /// Takes `options` if they differ from the sink's: before a change of signing key (or its
    /// removal), what was appended is sealed with a checkpoint of the old key.
    pub fn configure(&self, options: &SinkOptions) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.options == *options {
            return;
        }
        if state.options.signing.as_ref().map(|s| &s.key) != options.signing.as_ref().map(|s| &s.key)
            && let Err(e) = self.checkpoint_locked(&mut state)
        {
            tracing::error!(sink = %self.name, error = %e, "cannot sign the last checkpoint under the old key");
        }
        state.options = options.clone();
        if let Some(signing) = &options.signing {
            state.next_checkpoint = Instant::now() + signing.interval;
        }
        tracing::info!(sink = %self.name, signing = ?options.signing.as_ref().map(|s| &s.key), fsync = ?options.fsync, "audit sink settings applied");
    }

    fn flush_locked(&self, state: &mut SinkState) -> Result<(), String> {
        match state.flush() {
            Ok(written) => {
                if written > 0 {
                    state.last_error = None;
                }
                self.count(written, 0);
                Ok(())
            }
            Err((lost, e)) => {
                let why = format!("{}: {e}", self.name);
                state.last_error = Some(why.clone());
                self.count(0, lost);
                Err(why)
            }
        }
    }

    fn count(&self, written: u64, failed: u64) {
        self.written.fetch_add(written, Ordering::Relaxed);
        self.failed.fetch_add(failed, Ordering::Relaxed);
        if let Some((w, f)) = &self.counters {
            w.inc_by(written);
            f.inc_by(failed);
        }
    }

    /// Counts and the last error, for `GET /status`.
    pub fn status(&self) -> SinkStatus {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // Records up to and including the last checkpoint of the current file.
        let signed = match &state.last_checkpoint {
            Some(c) if c.file_start == state.file_start => c.records + 1,
            _ => 0,
        };
        SinkStatus {
            sink: self.name.clone(),
            written: self.written.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            last_error: state.last_error.clone(),
            fsync: match state.options.fsync {
                AuditFsync::Never => "never",
                AuditFsync::Always => "always",
            },
            signing: state.options.signing.as_ref().map(|s| format!("{} key {}", s.key.algorithm(), s.key.key_id())),
            checkpoint: state.last_checkpoint.clone(),
            unsigned_records: state.written_records.saturating_sub(signed),
            checkpoint_error: state.export_error.clone(),
        }
    }

    /// Opens the configured path again when the file there is no longer the one being written
    /// (renamed or removed by log rotation), continuing the chain in the new file.
    ///
    /// Errors: the new file cannot be opened or its tail is not a chained record; the sink
    /// keeps writing to the old file.
    fn reopen(&self) -> Result<(), String> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Output::File { file, path, .. } = &state.out else { return Ok(()) };
        if same_file(file, path) {
            return Ok(());
        }
        let path = path.clone();
        let opened = open_chained(&path)?;
        let len = opened.file.metadata().map_err(|e| e.to_string())?.len();
        // What was appended before the rotation belongs to the old file, signed there.
        if let Err(e) = self.seal_locked(&mut state) {
            tracing::error!(sink = %self.name, error = %e, "the rotated audit file's last records were not sealed");
        }
        let from = state.last.clone();
        state.out = Output::File { file: opened.file, path: path.clone(), len };
        state.checkpointed = 0;
        match opened.last {
            // A fresh file: its first record says which chain it continues.
            None => {
                (state.records, state.written_records, state.file_start) = (0, 0, from.clone());
                let record = format!(r#"{{"portcullis_audit":"continued","from":"{from}","time_ms":{}}}"#, now_ms());
                state.chain(&record);
                self.flush_locked(&mut state).map_err(|e| format!("audit file {}: {e}", path.display()))?;
            }
            Some(last) => {
                state.last.clone_from(&last);
                state.written_last = last;
                (state.records, state.written_records, state.file_start) =
                    (opened.records, opened.records, opened.file_start);
            }
        }
        tracing::info!(file = %path.display(), "audit file reopened (rotated); the chain continues");
        Ok(())
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Err(e) = self.seal() {
            tracing::error!(sink = %self.name, error = %e, "audit records lost, or left unsigned, in the last write");
        }
    }
}

/// Writes `sink`'s buffer every [`FLUSH_INTERVAL`] until the sink is dropped.
fn start_flusher(sink: &Arc<Sink>) {
    let weak = Arc::downgrade(sink);
    let started = std::thread::Builder::new().name("portcullis-audit".into()).spawn(move || {
        loop {
            std::thread::sleep(FLUSH_INTERVAL);
            let Some(sink) = weak.upgrade() else { return };
            if let Err(e) = sink.tick() {
                tracing::warn!(error = %e, "audit write failed; its records are lost and counted");
            }
        }
    });
    if let Err(e) = started {
        // Appends still reach the file, FLUSH_BYTES at a time and at shutdown.
        tracing::error!(sink = %sink.name, error = %e, "cannot start the audit flush thread");
    }
}

// === impl SinkState ===

impl SinkState {
    /// A sink's state: writing `out`, whose chain ends in `last` after `records` records, the
    /// first of which had `file_start` as its `prev`.
    fn new(out: Output, last: String, records: u64, file_start: String, options: SinkOptions) -> Self {
        let next_checkpoint = Instant::now() + options.signing.as_ref().map_or(Duration::ZERO, |s| s.interval);
        SinkState {
            out,
            written_last: last.clone(),
            last,
            pending: Vec::new(),
            pending_records: 0,
            pending_gap: 0,
            lost: 0,
            last_error: None,
            options,
            records,
            written_records: records,
            file_start,
            checkpointed: 0,
            next_checkpoint,
            last_checkpoint: None,
            export_error: None,
        }
    }

    /// Chains a plugin's `record` (after a `gap` record for records lost before it). Returns
    /// its hash.
    fn chain_record(&mut self, record: &str) -> String {
        // `lost` grows only when a write fails, which also empties the buffer: no gap record
        // is waiting in it then.
        if self.lost > 0 {
            let gap = format!(r#"{{"portcullis_audit":"gap","lost_records":{},"time_ms":{}}}"#, self.lost, now_ms());
            self.chain(&gap);
            self.pending_gap = std::mem::take(&mut self.lost);
        }
        self.pending_records += 1;
        self.chain(record)
    }

    /// Syncs the file's data to the disk (`fdatasync`); nothing for stdout.
    fn sync(&mut self) -> std::io::Result<()> {
        match &mut self.out {
            Output::Stdout(_) => Ok(()),
            Output::File { file, .. } => file.sync_data(),
        }
    }

    /// Chains `record` after `last` and buffers its line. Returns its hash.
    fn chain(&mut self, record: &str) -> String {
        let hash = chain_hash(&self.last, record);
        self.pending.reserve(record.len() + SUFFIX_LEN + 1);
        self.pending.extend_from_slice(&record.as_bytes()[..record.len() - 1]);
        self.pending.extend_from_slice(b",\"prev\":\"");
        self.pending.extend_from_slice(self.last.as_bytes());
        self.pending.extend_from_slice(b"\",\"hash\":\"");
        self.pending.extend_from_slice(hash.as_bytes());
        self.pending.extend_from_slice(b"\"}\n");
        self.last.clone_from(&hash);
        self.records += 1;
        hash
    }

    /// Writes the buffer with one call (and `fdatasync` when `audit_fsync` is `always`).
    /// Returns how many plugin records it held. On failure truncates the file back, so no
    /// half line stays, rewinds the chain to the last record written, and counts the buffer's
    /// records as lost (for the next `gap` record).
    ///
    /// Errors: (records lost, the write's or sync's error).
    fn flush(&mut self) -> Result<u64, (u64, std::io::Error)> {
        if self.pending.is_empty() {
            return Ok(0);
        }
        let sync = self.options.fsync == AuditFsync::Always;
        let result = match &mut self.out {
            Output::Stdout(out) => out.write_all(&self.pending).and_then(|()| out.flush()),
            Output::File { file, len, .. } => {
                match file.write_all(&self.pending).and_then(|()| if sync { file.sync_data() } else { Ok(()) }) {
                    Ok(()) => {
                        *len += self.pending.len() as u64;
                        Ok(())
                    }
                    Err(e) => {
                        let _ = file.set_len(*len);
                        Err(e)
                    }
                }
            }
        };
        self.pending.clear();
        let records = std::mem::take(&mut self.pending_records);
        let gap = std::mem::take(&mut self.pending_gap);
        match result {
            Ok(()) => {
                self.written_last.clone_from(&self.last);
                self.written_records = self.records;
                Ok(records)
            }
            Err(e) => {
                self.lost += gap + records;
                self.last.clone_from(&self.written_last);
                self.records = self.written_records;
                Err((records, e))
            }
        }
    }
}

/// Every sink the process has opened, by path, plus stdout.
#[derive(Debug, Default)]
pub struct AuditSinks {
    files: Mutex<HashMap<PathBuf, Arc<Sink>>>,
    stdout: Mutex<Option<Arc<Sink>>>,
    metrics: Option<Arc<Metrics>>,
}

// === impl AuditSinks ===

impl AuditSinks {
    /// Sinks whose records are counted in `metrics`.
    pub fn with_metrics(metrics: Arc<Metrics>) -> Self {
        AuditSinks { metrics: Some(metrics), ..Default::default() }
    }

    /// The sink for `path` (created if absent, appended to if present, continuing its chain),
    /// or the stdout sink for none. The same path always gives the same sink. A torn last line
    /// is cut away and the recovery recorded in the chain (see the module docs).
    ///
    /// Errors: the file cannot be opened, or its last complete line is not a chained record
    /// (the chain cannot continue; the message says so rather than start a second chain in
    /// one file).
    ///
    /// A new sink starts with `options`; an open one keeps its own until
    /// [`Sink::configure`] (when the snapshot asking for them starts serving).
    pub fn open(&self, path: Option<&Path>, options: &SinkOptions) -> Result<Arc<Sink>, String> {
        let metrics = self.metrics.as_deref();
        let Some(path) = path else {
            let mut stdout = self.stdout.lock().unwrap_or_else(|e| e.into_inner());
            let sink = stdout.get_or_insert_with(|| {
                let out = Output::Stdout(std::io::stdout());
                let state = SinkState::new(out, GENESIS.into(), 0, GENESIS.into(), options.clone());
                let sink = Arc::new(Sink::new("stdout".into(), state, metrics));
                start_flusher(&sink);
                sink
            });
            return Ok(sink.clone());
        };
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sink) = files.get(path) {
            return Ok(sink.clone());
        }
        let opened = open_chained(path)?;
        let len = opened.file.metadata().map_err(|e| format!("audit file {}: {e}", path.display()))?.len();
        let out = Output::File { file: opened.file, path: path.to_owned(), len };
        let last = opened.last.unwrap_or_else(|| GENESIS.into());
        let state = SinkState::new(out, last, opened.records, opened.file_start, options.clone());
        let sink = Arc::new(Sink::new(path.display().to_string(), state, metrics));
        start_flusher(&sink);
        files.insert(path.to_owned(), sink.clone());
        Ok(sink)
    }

    /// Reopens every file sink whose path now names another file or none (log rotation);
    /// called on every reload and SIGHUP. Failures are logged; those sinks keep their file.
    pub fn reopen(&self) {
        let sinks: Vec<Arc<Sink>> = self.files.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for sink in sinks {
            if let Err(e) = sink.reopen() {
                tracing::error!(sink = %sink.name, error = %e, "cannot reopen the audit file; still writing to the old one");
            }
        }
    }

    /// Writes every sink's buffered records now, and a last checkpoint where sinks sign (at
    /// shutdown). Failures are logged and counted.
    pub fn flush(&self) {
        let mut sinks: Vec<Arc<Sink>> =
            self.files.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        sinks.extend(self.stdout.lock().unwrap_or_else(|e| e.into_inner()).clone());
        for sink in sinks {
            if let Err(e) = sink.seal() {
                tracing::error!(error = %e, "audit write failed at shutdown; its records are lost or unsigned");
            }
        }
    }

    /// Every sink's counts, files by path then stdout.
    pub fn status(&self) -> Vec<SinkStatus> {
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<SinkStatus> = files.values().map(|s| s.status()).collect();
        all.sort_by(|a, b| a.sink.cmp(&b.sink));
        all.extend(self.stdout.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|s| s.status()));
        all
    }
}

/// An audit file opened for appending, and where its part of the chain is.
struct Opened {
    file: File,
    /// The last record's hash; none for an empty file.
    last: Option<String>,
    /// How many records it holds.
    records: u64,
    /// The `prev` of its first record ([`GENESIS`] for an empty file).
    file_start: String,
}

/// Opens `path` for appending (creating it) and finds where its chain ends, after cutting a
/// torn last line away and recording that in the chain; counts its records (one read of the
/// file, at start and after a rotation, for the checkpoints' record counts).
///
/// Errors: the file cannot be opened, read or repaired, or its last complete line is not
/// chained.
fn open_chained(path: &Path) -> Result<Opened, String> {
    let (mut file, last) = open_tail(path)?;
    let (records, file_start) = count_records(&mut file).map_err(|e| format!("audit file {}: {e}", path.display()))?;
    Ok(Opened { file, last, records, file_start })
}

/// How many lines `file` holds, and the `prev` of the first; none for what is not a regular
/// file (a device such as `/dev/full` reads forever).
fn count_records(file: &mut File) -> std::io::Result<(u64, String)> {
    if !file.metadata()?.is_file() {
        return Ok((0, GENESIS.to_owned()));
    }
    file.seek(SeekFrom::Start(0))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 16, &*file);
    let mut first = Vec::new();
    reader.read_until(b'\n', &mut first)?;
    let file_start = std::str::from_utf8(&first)
        .ok()
        .and_then(|line| split_line(line.trim_end_matches('\n')).ok().map(|(_, prev, _)| prev.to_owned()))
        .unwrap_or_else(|| GENESIS.to_owned());
    let mut records = u64::from(!first.is_empty());
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        records += buf.iter().filter(|b| **b == b'\n').count() as u64;
        let n = buf.len();
        reader.consume(n);
    }
    Ok((records, file_start))
}

/// Appends `line` to the checkpoint file at `path` (created if absent) and syncs it.
///
/// Errors: it cannot be opened, written or synced.
fn export(path: &Path, line: &str) -> Result<(), String> {
    let at = |e: std::io::Error| format!("checkpoint file {}: {e}", path.display());
    let mut file = OpenOptions::new().create(true).append(true).open(path).map_err(at)?;
    file.write_all(format!("{line}\n").as_bytes()).and_then(|()| file.sync_data()).map_err(at)
}

/// [`open_chained`] without the count.
fn open_tail(path: &Path) -> Result<(File, Option<String>), String> {
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open audit file {}: {e}", path.display()))?;
    let at = |e: String| format!("audit file {}: {e}", path.display());
    let (last, torn) = last_hash(&mut file).map_err(at)?;
    if torn == 0 {
        return Ok((file, last));
    }
    let len = file.metadata().map_err(|e| at(e.to_string()))?.len();
    file.set_len(len - torn).map_err(|e| at(e.to_string()))?;
    tracing::warn!(file = %path.display(), truncated_bytes = torn, "audit file ended in a torn line; cut back to its last complete record");
    let out = Output::File { file, path: path.to_owned(), len: len - torn };
    let mut state =
        SinkState::new(out, last.unwrap_or_else(|| GENESIS.into()), 0, GENESIS.into(), SinkOptions::default());
    let record = format!(r#"{{"portcullis_audit":"recovered","truncated_bytes":{torn},"time_ms":{}}}"#, now_ms());
    let hash = state.chain(&record);
    state.flush().map_err(|(_, e)| at(e.to_string()))?;
    let Output::File { file, .. } = state.out else { unreachable!("built as a file above") };
    Ok((file, Some(hash)))
}

/// Whether `path` still names the open `file` (same device and inode); elsewhere than Unix,
/// whether `path` exists.
fn same_file(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        path.exists()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The standard audit record of `exchange` (`audit.append-observed`; its members are
/// documented in `docs/audit.md`): of the request headers the exchange carries, those named in
/// `recorded` (the step's `record-headers`; none: all), with the values of
/// [`portcullis_audit_record::ALWAYS_REDACTED`] and of the names in `redact` redacted. The
/// exchange carries the header fields of every logging step of the route, so a step's record
/// would otherwise hold fields another step asked for.
pub(crate) fn render_observed(exchange: &Exchange, recorded: Option<&[http::HeaderName]>, redact: &[String]) -> String {
    portcullis_audit_record::render_exchange!(exchange, recorded_by(recorded), redact, Phase)
}

/// A finished exchange as the proxy holds it, borrowed: what the standard record of a logging
/// step that declared `audit.append-each-exchange` is rendered from ([`render_finished`]),
/// without the WIT `exchange` a call would be lent (its strings copied, its decisions'
/// labels formatted).
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    /// The record's scalar members and strings.
    pub exchange: portcullis_audit_record::Exchange<'a>,
    /// The request header fields the route's logging steps record, as received.
    pub request_headers: &'a [Header],
    /// Each step's decision, in the order made.
    pub decisions: &'a [portcullis_audit_record::Decision<'a>],
}

/// The standard audit record of `finished`, as [`render_observed`] writes it for the same
/// exchange lent as a WIT record (checked equal in `plugin::host`'s tests).
pub(crate) fn render_finished(
    finished: &Finished<'_>,
    recorded: Option<&[http::HeaderName]>,
    redact: &[String],
) -> String {
    let keep = recorded_by(recorded);
    let headers =
        finished.request_headers.iter().filter(|h| keep(h.name.as_str())).map(|h| (h.name.as_str(), h.value.as_str()));
    portcullis_audit_record::render(&finished.exchange, headers, finished.decisions.iter().copied(), redact)
}

/// Whether a request header field of this (lowercase) name is in a step's record: named in
/// its `record-headers` (`recorded`), or any when it named none.
fn recorded_by(recorded: Option<&[http::HeaderName]>) -> impl Fn(&str) -> bool + '_ {
    move |name| recorded.is_none_or(|names| names.iter().any(|n| n.as_str() == name))
}

fn check_record(record: &str) -> Result<(), AuditError> {
    let invalid = |why: &str| Err(AuditError::InvalidRecord(why.to_owned()));
    if record.len() > MAX_RECORD_BYTES {
        return invalid("over 64 KiB");
    }
    if record.contains(['\n', '\r']) {
        return invalid("contains a line break; a record is one line");
    }
    if !record.starts_with('{') || !record.ends_with('}') {
        return invalid("must be a JSON object with no surrounding whitespace");
    }
    match top_level_keys(record) {
        Err(e) => invalid(&format!("not a JSON object: {e}")),
        Ok(Keys { count: 0, .. }) => invalid("empty object"),
        Ok(Keys { reserved: true, .. }) => invalid(
            "`prev`, `hash` and `portcullis_audit` are the host's: it adds them, and marks its own records with the last",
        ),
        Ok(_) => Ok(()),
    }
}

/// What [`check_record`] needs of a record's members: how many, and whether one is named `prev`
/// or `hash`.
#[derive(Default)]
struct Keys {
    count: usize,
    reserved: bool,
}

/// Parses `record` as one JSON object (RFC 8259) without building it: keys are compared in
/// place, values are checked and skipped.
///
/// Errors: serde_json's, for anything but a whole, well-formed object.
fn top_level_keys(record: &str) -> Result<Keys, serde_json::Error> {
    use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
    /// A key, seen in place (serde_json unescapes into a scratch buffer, not a `String`).
    struct Reserved(bool);
    impl<'de> Deserialize<'de> for Reserved {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Name;
            impl Visitor<'_> for Name {
                type Value = Reserved;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a member name")
                }
                fn visit_str<E>(self, name: &str) -> Result<Reserved, E> {
                    Ok(Reserved(name == "prev" || name == "hash" || name == "portcullis_audit"))
                }
            }
            d.deserialize_str(Name)
        }
    }
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Keys;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
            let mut keys = Keys::default();
            while let Some(Reserved(reserved)) = map.next_key()? {
                map.next_value::<IgnoredAny>()?;
                keys.count += 1;
                keys.reserved |= reserved;
            }
            Ok(keys)
        }
    }
    let mut parser = serde_json::Deserializer::from_str(record);
    let keys = (&mut parser).deserialize_map(Members)?;
    parser.end()?;
    Ok(keys)
}

fn chain_hash(prev: &str, record: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(record.as_bytes());
    crate::sources::hex(&h.finalize())
}

/// The hash of the file's last complete record (none for a file without one), and how many
/// bytes of a torn last line (no final newline) follow it.
///
/// Errors: the last complete line is not a chained record, or the file cannot be read.
fn last_hash(file: &mut File) -> Result<(Option<String>, u64), String> {
    let len = file.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    if len == 0 {
        return Ok((None, 0));
    }
    let window = (2 * (MAX_RECORD_BYTES + SUFFIX_LEN) + 2) as u64;
    let start = len.saturating_sub(window);
    file.seek(SeekFrom::Start(start)).map_err(|e| e.to_string())?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(|e| e.to_string())?;
    // Bytes after the last newline are a line cut short mid-write.
    let complete = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let torn = (tail.len() - complete) as u64;
    if complete == 0 && start == 0 {
        return Ok((None, torn));
    }
    let text = String::from_utf8_lossy(&tail[..complete]);
    let line = text.trim_end_matches('\n').rsplit('\n').next().unwrap_or("");
    let last = split_line(line).map(|(_, _, hash)| hash.to_owned()).map_err(|why| {
        format!("its last line is not a chained audit record ({why}); move the file aside or repair it to continue")
    })?;
    Ok((Some(last), torn))
}

/// Splits a written line into (record text, prev, hash).
fn split_line(line: &str) -> Result<(String, &str, &str), String> {
    if line.len() < SUFFIX_LEN + 2 || !line.is_char_boundary(line.len() - SUFFIX_LEN) {
        return Err("too short for a chained record".into());
    }
    let (body, suffix) = line.split_at(line.len() - SUFFIX_LEN);
    let prev = suffix.strip_prefix(",\"prev\":\"").and_then(|s| s.get(..64));
    let hash = suffix.get(73..).and_then(|s| s.strip_prefix("\",\"hash\":\"")).and_then(|s| s.get(..64));
    let ends = suffix.ends_with("\"}");
    match (prev, hash, ends) {
        (Some(prev), Some(hash), true) if is_hex64(prev) && is_hex64(hash) => Ok((format!("{body}}}"), prev, hash)),
        _ => Err("no `\"prev\":\"…\",\"hash\":\"…\"}` suffix".into()),
    }
}

/// Whether `record` is the host's `continued` record naming `prev` as the chain it follows.
fn continues(record: &str, prev: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(record)
        .is_ok_and(|v| v["portcullis_audit"] == "continued" && v["from"] == prev)
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Where a chain breaks.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("record {record} (line {line}): {reason}")]
pub struct Broken {
    /// 1-based index of the first bad record.
    pub record: u64,
    /// 1-based line number.
    pub line: u64,
    /// What is wrong with it.
    pub reason: String,
}

/// Checks a whole chain read from `input`. Returns the number of records and the last hash.
///
/// Errors: as [`verify_signed`] without keys.
pub fn verify(input: impl BufRead) -> Result<Result<(u64, String), Broken>, std::io::Error> {
    Ok(verify_signed(input, &[], &[])?.map(|report| (report.records, report.last)))
}

/// What [`verify_signed`] found in a file whose chain is intact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Records in the file.
    pub records: u64,
    /// The last record's hash.
    pub last: String,
    /// The `prev` of the first record: [`GENESIS`], or the last hash of the file it continues.
    pub file_start: String,
    /// Checkpoint records in the file (each checked against the keys, when keys were given).
    pub checkpoints: u64,
    /// Records covered by the last checkpoint in the file (0 without one).
    pub signed: u64,
    /// Of the exported checkpoints, the one of this file covering the most records (the file
    /// holds those records unchanged).
    pub exported: Option<Checkpoint>,
}

impl Report {
    /// Records after the last checkpoint in the file: covered by no signature yet.
    pub fn unsigned(&self) -> u64 {
        match self.checkpoints {
            0 => self.records,
            _ => self.records - self.signed - 1,
        }
    }
}

/// Checks a whole chain read from `input`, its checkpoints, and the file against checkpoints
/// exported from it.
///
/// Every record must be chained (see [`verify`]'s rules below). Every checkpoint record must
/// name this file (`file_start`), the number of records before it and the hash of the one
/// just before it, and, when `keys` are given, be signed by one of them (the key decides the
/// algorithm). Each of `exported` whose `file_start` is this file's (already checked
/// against the keys by the caller) must find its `head` as the hash of record number
/// `records`: the file was neither cut before it nor rewritten up to it.
///
/// Errors: [`Broken`] for the first record that is not a chained record, whose `prev` is not
/// the previous record's hash (the first must have [`GENESIS`], or be a `continued` record
/// whose `from` is its `prev`: a file after a rotation), whose `hash` does not match its
/// content, or that is a checkpoint failing the checks above; for a file shorter than an
/// exported checkpoint (then `record` is the first missing one); or an I/O error reading.
pub fn verify_signed(
    input: impl BufRead,
    keys: &[VerifyingKey],
    exported: &[Checkpoint],
) -> Result<Result<Report, Broken>, std::io::Error> {
    let mut expected = GENESIS.to_owned();
    let mut report = Report {
        records: 0,
        last: GENESIS.to_owned(),
        file_start: GENESIS.to_owned(),
        checkpoints: 0,
        signed: 0,
        exported: None,
    };
    let mut line_no = 0;
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        line_no = i as u64 + 1;
        if line.is_empty() {
            continue;
        }
        report.records += 1;
        let records = report.records;
        let broken = |reason: String| Ok(Err(Broken { record: records, line: line_no, reason }));
        let (record, prev, hash) = match split_line(&line) {
            Ok(parts) => parts,
            Err(why) => return broken(why),
        };
        if records == 1 && prev != GENESIS && continues(&record, prev) {
            expected = prev.to_owned();
        }
        if records == 1 {
            report.file_start.clone_from(&expected);
        }
        if prev != expected {
            return broken(format!(
                "`prev` is {prev}, expected {expected}: a record before it was changed, removed or reordered"
            ));
        }
        if chain_hash(prev, &record) != hash {
            return broken("`hash` does not match the record: the record was changed".into());
        }
        if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&record).is_err() {
            return broken("the record is not a JSON object".into());
        }
        match Checkpoint::from_record(&record) {
            None => {}
            Some(Err(why)) => return broken(why),
            Some(Ok(checkpoint)) => {
                if checkpoint.file_start != report.file_start
                    || checkpoint.records != records - 1
                    || checkpoint.head != prev
                {
                    return broken(format!(
                        "the checkpoint covers {} records ending in {}, but {} records ending in {prev} precede it: \
                         records before it were changed, removed or added",
                        checkpoint.records,
                        checkpoint.head,
                        records - 1
                    ));
                }
                if !keys.is_empty()
                    && let Err(why) = checkpoint.check(keys)
                {
                    return broken(format!("checkpoint: {why}"));
                }
                report.checkpoints += 1;
                report.signed = checkpoint.records;
            }
        }
        for out in exported.iter().filter(|c| c.file_start == report.file_start && c.records == records) {
            if out.head != hash {
                return broken(format!(
                    "its hash is {hash}, but the checkpoint exported at {} ms says {}: the file was rewritten",
                    out.time_ms, out.head
                ));
            }
            if report.exported.as_ref().is_none_or(|e| e.records < out.records) {
                report.exported = Some(out.clone());
            }
        }
        expected = hash.to_owned();
    }
    report.last = expected;
    let file_start = &report.file_start;
    let longest = exported.iter().filter(|c| c.file_start == *file_start).max_by_key(|c| c.records);
    if let Some(cut) = longest.filter(|c| c.records > report.records) {
        return Ok(Err(Broken {
            record: report.records + 1,
            line: line_no + 1,
            reason: format!(
                "missing: the checkpoint exported at {} ms covers {} records, the file holds {}: its tail was cut",
                cut.time_ms, cut.records, report.records
            ),
        }));
    }
    Ok(Ok(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(records: &[&str]) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.path().join("audit.jsonl");
        let sinks = AuditSinks::default();
        let sink = sinks.open(Some(&path), &SinkOptions::default()).unwrap();
        for r in records {
            sink.append(r).unwrap();
        }
        (dir, path)
    }

    fn check(path: &Path) -> Result<(u64, String), Broken> {
        verify(std::io::BufReader::new(File::open(path).unwrap())).unwrap()
    }

    #[test]
    fn appended_records_verify_and_reopening_continues_the_chain() {
        let (_dir, path) = chain(&[r#"{"a":1}"#, r#"{"b":"x"}"#]);
        let (n, last) = check(&path).unwrap();
        assert_eq!(n, 2);
        let sink = AuditSinks::default().open(Some(&path), &SinkOptions::default()).unwrap();
        let third = sink.append(r#"{"c":[1,2]}"#).unwrap();
        sink.flush().unwrap();
        assert_eq!(check(&path).unwrap(), (3, third.clone()));
        assert_ne!(last, third);
    }

    #[test]
    fn tampering_is_reported_at_the_first_broken_record() {
        let (_dir, path) = chain(&[r#"{"status":200}"#, r#"{"status":403}"#, r#"{"status":200}"#]);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("403", "200", 1)).unwrap();
        assert_eq!(check(&path).unwrap_err().record, 2);
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        let broken = check(&path).unwrap_err();
        assert_eq!((broken.record, broken.line), (2, 2));
        assert!(broken.reason.contains("prev"), "{broken}");
    }

    #[test]
    fn verify_reports_garbage_lines_instead_of_panicking() {
        // A suffix of the right length whose 64-byte `prev` slice would split a character.
        let suffix_len_line = format!("{{\"a\":1,\"prev\":\"a{}x", "é".repeat(69));
        for garbage in ["x", "{}", suffix_len_line.as_str(), "\u{0}\u{0}\u{0}"] {
            let broken = verify(std::io::Cursor::new(format!("{garbage}\n"))).unwrap().unwrap_err();
            assert_eq!(broken.record, 1, "{garbage:?}");
        }
    }

    #[test]
    fn bad_records_are_refused() {
        let sink = AuditSinks::default().open(None, &SinkOptions::default()).unwrap();
        for bad in [
            "[1]",
            "{}",
            "{\"a\":1}\n",
            "{\"a\":\n1}",
            " {\"a\":1}",
            "{\"hash\":\"x\"}",
            "{\"a\":",
            "{\"a\":1}{",
            r#"{"pr\u0065v":"x"}"#,
        ] {
            assert!(matches!(sink.append(bad), Err(AuditError::InvalidRecord(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_file_whose_tail_is_not_chained_is_refused() {
        let dir = tempdir::Dir::new();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "{\"not\":\"chained\"}\n").unwrap();
        assert!(
            AuditSinks::default()
                .open(Some(&path), &SinkOptions::default())
                .unwrap_err()
                .contains("not a chained audit record")
        );
    }

    #[test]
    fn a_torn_last_line_is_cut_away_and_the_recovery_chained() {
        let (_dir, path) = chain(&[r#"{"a":1}"#]);
        let whole = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{whole}{{\"b\":2,\"prev\":\"00")).unwrap();
        let sink = AuditSinks::default().open(Some(&path), &SinkOptions::default()).unwrap();
        sink.append(r#"{"c":3}"#).unwrap();
        sink.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[1].starts_with(r#"{"portcullis_audit":"recovered","truncated_bytes":17,"#), "{}", lines[1]);
        assert_eq!(check(&path).unwrap().0, 3);
        // A file that is nothing but a torn line starts over.
        std::fs::write(&path, "{\"half").unwrap();
        let sink = AuditSinks::default().open(Some(&path), &SinkOptions::default()).unwrap();
        sink.append(r#"{"d":4}"#).unwrap();
        sink.flush().unwrap();
        assert_eq!(check(&path).unwrap().0, 2);
    }

    #[test]
    fn failed_appends_are_counted_leave_nothing_and_a_gap_record_follows() {
        let (_dir, path) = chain(&[r#"{"a":1}"#]);
        let sink = AuditSinks::default().open(Some(&path), &SinkOptions::default()).unwrap();
        let swap = |file: File| {
            let mut state = sink.state.lock().unwrap();
            let Output::File { file: open, .. } = &mut state.out else { unreachable!() };
            *open = file;
        };
        // A handle that cannot write stands in for a full disk.
        swap(File::open(&path).unwrap());
        sink.append(r#"{"lost":1}"#).unwrap();
        sink.append(r#"{"lost":2}"#).unwrap();
        // The flush thread may have tried first; either way both are lost and counted.
        let _ = sink.flush();
        let status = sink.status();
        assert_eq!((status.written, status.failed, status.last_error.is_some()), (0, 2, true));
        // A buffer filled while writes fail: the append that fills it is told.
        let big = format!(r#"{{"lost":"{}"}}"#, "x".repeat(FLUSH_BYTES / 2));
        // (Two appends fill it; a timed write between them starts it over.)
        let refused = (0..4).any(|_| matches!(sink.append(&big), Err(AuditError::Unavailable(_))));
        assert!(refused, "no append was told the write failed");
        let failed = sink.status().failed;
        assert!(failed >= 4, "{failed}");
        swap(OpenOptions::new().append(true).open(&path).unwrap());
        sink.append(r#"{"back":true}"#).unwrap();
        sink.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&format!(r#"{{"portcullis_audit":"gap","lost_records":{failed},"#)), "{text}");
        assert!(!text.contains("lost\":"), "{text}");
        assert_eq!(check(&path).unwrap().0, 3);
        assert_eq!(sink.status().last_error, None);
    }

    #[test]
    fn a_rotated_file_is_reopened_and_the_chain_continues_in_the_new_one() {
        let (dir, path) = chain(&[]);
        let sinks = AuditSinks::default();
        let sink = sinks.open(Some(&path), &SinkOptions::default()).unwrap();
        let last = sink.append(r#"{"a":1}"#).unwrap();
        sink.flush().unwrap();
        sinks.reopen();
        assert_eq!(check(&path).unwrap().0, 1, "not rotated: nothing changes");
        let rotated = dir.path().join("audit.jsonl.1");
        std::fs::rename(&path, &rotated).unwrap();
        sink.append(r#"{"pre-rotation":1}"#).unwrap();
        sinks.reopen();
        sink.append(r#"{"b":2}"#).unwrap();
        sink.flush().unwrap();
        let (in_old, old_last) = check(&rotated).unwrap();
        assert_eq!(in_old, 2, "what was appended before the rotation is in the old file");
        assert_ne!(old_last, last);
        let last = old_last;
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(&format!(r#"{{"portcullis_audit":"continued","from":"{last}","#)), "{text}");
        assert_eq!(check(&path).unwrap().0, 2, "a continued file verifies on its own");
        // A first record with a foreign `prev` that does not say so is still broken.
        std::fs::write(&path, text.replacen("continued", "continuez", 1)).unwrap();
        assert_eq!(check(&path).unwrap_err().record, 1);
    }

    #[test]
    fn buffered_records_are_written_within_the_flush_interval() {
        let (_dir, path) = chain(&[]);
        let sinks = AuditSinks::default();
        let sink = sinks.open(Some(&path), &SinkOptions::default()).unwrap();
        let hash = sink.append(r#"{"a":1}"#).unwrap();
        let deadline = std::time::Instant::now() + FLUSH_INTERVAL * 40;
        while check(&path).unwrap().0 == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(FLUSH_INTERVAL / 5);
        }
        assert_eq!(check(&path).unwrap(), (1, hash));
        assert_eq!(sink.status().written, 1);
        // At shutdown, what is left is written at once.
        sink.append(r#"{"b":2}"#).unwrap();
        sinks.flush();
        assert_eq!(check(&path).unwrap().0, 2);
    }

    fn signing(key: &SigningKey, export: Option<PathBuf>) -> SinkOptions {
        let interval = Duration::from_secs(3600);
        SinkOptions { fsync: AuditFsync::Never, signing: Some(Signing { key: key.clone(), interval, export }) }
    }

    fn hmac_key(byte: u8) -> SigningKey {
        SigningKey::new(crate::config::SigningAlgorithm::HmacSha256, &[byte; 32]).unwrap()
    }

    /// What a forger with write access and no key does: rewrites `from` into `to` and rehashes
    /// every record, setting each checkpoint's `head` to the new chain (its signature it cannot
    /// redo).
    fn rehash(text: &str, from: &str, to: &str) -> String {
        let mut prev = GENESIS.to_owned();
        let mut out = String::new();
        for line in text.lines() {
            let (record, old_prev, _) = split_line(line).unwrap();
            let mut record = record.replacen(from, to, 1);
            if record.contains(r#""portcullis_audit":"checkpoint""#) {
                record = record.replace(old_prev, &prev);
            }
            let hash = chain_hash(&prev, &record);
            out.push_str(&format!("{},\"prev\":\"{prev}\",\"hash\":\"{hash}\"}}\n", &record[..record.len() - 1]));
            prev = hash;
        }
        out
    }

    fn check_signed(text: &str, keys: &[VerifyingKey], exported: &[Checkpoint]) -> Result<Report, Broken> {
        verify_signed(std::io::Cursor::new(text.to_owned()), keys, exported).unwrap()
    }

    #[test]
    fn checkpoints_sign_the_chain_and_find_a_rehashed_rewrite_and_a_cut_tail() {
        let (dir, path) = chain(&[]);
        let export = dir.path().join("checkpoints.jsonl");
        let key = hmac_key(1);
        let sink = AuditSinks::default().open(Some(&path), &signing(&key, Some(export.clone()))).unwrap();
        sink.append(r#"{"status":200}"#).unwrap();
        sink.append(r#"{"status":403}"#).unwrap();
        sink.seal().unwrap();
        sink.seal().unwrap(); // nothing new: no second checkpoint
        sink.append(r#"{"status":201}"#).unwrap();
        sink.seal().unwrap();
        let status = sink.status();
        assert_eq!((status.checkpoint.as_ref().map(|c| c.records), status.unsigned_records), (Some(4), 0));
        drop(sink);
        let text = std::fs::read_to_string(&path).unwrap();
        let exported: Vec<Checkpoint> = std::fs::read_to_string(&export)
            .unwrap()
            .lines()
            .map(|l| Checkpoint::from_record(l).unwrap().unwrap())
            .collect();
        assert_eq!(exported.iter().map(|c| c.records).collect::<Vec<_>>(), [2, 4]);
        let keys = [key.verifying()];
        let report = check_signed(&text, &keys, &exported).unwrap();
        assert_eq!((report.records, report.checkpoints, report.signed, report.unsigned()), (5, 2, 4, 0));
        assert_eq!(report.exported.as_ref().map(|c| c.records), Some(4));

        // Rehashed: the chain holds without a key, the signatures do not.
        let forged = rehash(&text, r#""status":403"#, r#""status":200"#);
        assert_eq!(check_signed(&forged, &[], &[]).unwrap().records, 5);
        let broken = check_signed(&forged, &keys, &[]).unwrap_err();
        assert_eq!(broken.record, 3, "{broken}");
        assert!(broken.reason.contains("does not verify"), "{broken}");
        // Rewritten, with the checkpoints after the change removed: the exported ones know.
        let lines: Vec<&str> = text.lines().collect();
        let mut unsigned = lines[..2].join("\n");
        unsigned.push('\n');
        let unsigned = rehash(&unsigned, r#""status":403"#, r#""status":200"#);
        let broken = check_signed(&unsigned, &keys, &exported).unwrap_err();
        assert!(broken.reason.contains("exported"), "{broken}");

        // Cut after the first checkpoint: only the exported checkpoints know.
        let cut = format!("{}\n", lines[..3].join("\n"));
        assert_eq!(check_signed(&cut, &keys, &[]).unwrap().unsigned(), 0);
        let broken = check_signed(&cut, &keys, &exported).unwrap_err();
        assert_eq!(broken.record, 4, "{broken}");
        assert!(broken.reason.contains("its tail was cut"), "{broken}");

        // Another key, or none that matches, does not pass.
        let broken = check_signed(&text, &[hmac_key(2).verifying()], &[]).unwrap_err();
        assert!(broken.reason.contains("no key given"), "{broken}");
    }

    #[test]
    fn a_key_change_seals_the_records_under_the_old_key_first() {
        let (_dir, path) = chain(&[]);
        let (old, new) = (hmac_key(1), hmac_key(2));
        let sinks = AuditSinks::default();
        let sink = sinks.open(Some(&path), &signing(&old, None)).unwrap();
        sink.append(r#"{"a":1}"#).unwrap();
        sink.configure(&signing(&new, None));
        sink.append(r#"{"b":2}"#).unwrap();
        sinks.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let report = check_signed(&text, &[old.verifying(), new.verifying()], &[]).unwrap();
        assert_eq!((report.checkpoints, report.signed), (2, 3));
        assert!(check_signed(&text, &[new.verifying()], &[]).is_err(), "the first checkpoint is the old key's");
    }

    #[test]
    fn a_host_rendered_record_chains_like_any_other_and_is_refused_only_when_oversized() {
        let (_dir, path) = chain(&[]);
        let sink = AuditSinks::default().open(Some(&path), &SinkOptions::default()).unwrap();
        sink.append(r#"{"given":1}"#).unwrap();
        let hash = sink.append_rendered(r#"{"type":"audit","status":200}"#, true).unwrap();
        assert_eq!(check(&path).unwrap(), (2, hash), "written at once when durable, chained after the given one");
        let huge = format!(r#"{{"type":"audit","path":"{}"}}"#, "x".repeat(MAX_RECORD_BYTES));
        assert!(
            matches!(sink.append_rendered(&huge, false), Err(AuditError::InvalidRecord(why)) if why == "over 64 KiB")
        );
        let last = sink.append_rendered(r#"{"type":"audit","status":204}"#, false).unwrap();
        sink.flush().unwrap();
        assert_eq!(check(&path).unwrap(), (3, last), "buffered when not durable; the refused one left nothing");
    }

    #[test]
    fn a_durable_append_is_in_the_file_when_it_returns() {
        let (_dir, path) = chain(&[]);
        let options = SinkOptions { fsync: AuditFsync::Always, signing: None };
        let sink = AuditSinks::default().open(Some(&path), &options).unwrap();
        sink.append(r#"{"buffered":1}"#).unwrap();
        let hash = sink.append_durably(r#"{"durable":1}"#).unwrap();
        assert_eq!(check(&path).unwrap(), (2, hash));
        assert!(matches!(sink.append(r#"{"portcullis_audit":"checkpoint"}"#), Err(AuditError::InvalidRecord(_))));
    }

    /// A scratch directory removed on drop (no extra dev-dependency for four tests).
    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!("portcullis-audit-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}
