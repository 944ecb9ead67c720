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
//! Appends from every instance of every plugin sharing a sink are serialized by its lock. A
//! record is written with one `write` call; there is no `fsync` per record.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// Largest record a plugin may append, in bytes (64 KiB).
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// The `prev` of the first record of a file.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Length of `,"prev":"<64>","hash":"<64>"}`.
const SUFFIX_LEN: usize = 9 + 64 + 10 + 64 + 2;

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

/// One chained output: a file or stdout.
pub struct Sink {
    name: String,
    state: Mutex<SinkState>,
}

struct SinkState {
    out: Box<dyn Write + Send>,
    last: String,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("name", &self.name).finish_non_exhaustive()
    }
}

// === impl Sink ===

impl Sink {
    /// Checks `record`, chains it and writes it as one line. Returns its hash.
    ///
    /// Errors: [`AuditError::InvalidRecord`] when the record is not a non-empty JSON object on
    /// one line without `prev`/`hash` members, or is over [`MAX_RECORD_BYTES`];
    /// [`AuditError::Unavailable`] when the write fails.
    pub fn append(&self, record: &str) -> Result<String, AuditError> {
        check_record(record)?;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let hash = chain_hash(&state.last, record);
        let mut line = String::with_capacity(record.len() + SUFFIX_LEN + 1);
        line.push_str(&record[..record.len() - 1]);
        line.push_str(",\"prev\":\"");
        line.push_str(&state.last);
        line.push_str("\",\"hash\":\"");
        line.push_str(&hash);
        line.push_str("\"}\n");
        state
            .out
            .write_all(line.as_bytes())
            .and_then(|()| state.out.flush())
            .map_err(|e| AuditError::Unavailable(format!("{}: {e}", self.name)))?;
        state.last.clone_from(&hash);
        Ok(hash)
    }
}

/// Every sink the process has opened, by path, plus stdout.
#[derive(Debug, Default)]
pub struct AuditSinks {
    files: Mutex<HashMap<PathBuf, Arc<Sink>>>,
    stdout: Mutex<Option<Arc<Sink>>>,
}

// === impl AuditSinks ===

impl AuditSinks {
    /// The sink for `path` (created if absent, appended to if present, continuing its chain),
    /// or the stdout sink for none. The same path always gives the same sink.
    ///
    /// Errors: the file cannot be opened, or its last line is not a chained record (the chain
    /// cannot continue; the message says so rather than start a second chain in one file).
    pub fn open(&self, path: Option<&Path>) -> Result<Arc<Sink>, String> {
        let Some(path) = path else {
            let mut stdout = self.stdout.lock().unwrap_or_else(|e| e.into_inner());
            let sink = stdout.get_or_insert_with(|| {
                Arc::new(Sink {
                    name: "stdout".into(),
                    state: Mutex::new(SinkState { out: Box::new(std::io::stdout()), last: GENESIS.into() }),
                })
            });
            return Ok(sink.clone());
        };
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sink) = files.get(path) {
            return Ok(sink.clone());
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open audit file {}: {e}", path.display()))?;
        let last = last_hash(&mut file).map_err(|e| format!("audit file {}: {e}", path.display()))?;
        let sink = Arc::new(Sink {
            name: path.display().to_string(),
            state: Mutex::new(SinkState { out: Box::new(file), last }),
        });
        files.insert(path.to_owned(), sink.clone());
        Ok(sink)
    }
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
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(record) {
        Err(e) => invalid(&format!("not a JSON object: {e}")),
        Ok(map) if map.is_empty() => invalid("empty object"),
        Ok(map) if map.contains_key("prev") || map.contains_key("hash") => {
            invalid("`prev` and `hash` are added by the host")
        }
        Ok(_) => Ok(()),
    }
}

fn chain_hash(prev: &str, record: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(record.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash of the file's last record, or [`GENESIS`] for an empty file.
fn last_hash(file: &mut File) -> Result<String, String> {
    let len = file.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    if len == 0 {
        return Ok(GENESIS.into());
    }
    let window = (MAX_RECORD_BYTES + SUFFIX_LEN + 2) as u64;
    file.seek(SeekFrom::Start(len.saturating_sub(window))).map_err(|e| e.to_string())?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.trim_end_matches('\n').rsplit('\n').next().unwrap_or("");
    split_line(line).map(|(_, _, hash)| hash.to_owned()).map_err(|why| {
        format!("its last line is not a chained audit record ({why}); move the file aside or repair it to continue")
    })
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
/// Errors: [`Broken`] for the first record that is not a chained record, whose `prev` is not the
/// previous record's hash (the first must have [`GENESIS`]), or whose `hash` does not match its
/// content; or an I/O error reading.
pub fn verify(input: impl BufRead) -> Result<Result<(u64, String), Broken>, std::io::Error> {
    let mut expected = GENESIS.to_owned();
    let mut records = 0;
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        let line_no = i as u64 + 1;
        if line.is_empty() {
            continue;
        }
        records += 1;
        let broken = |reason: String| Ok(Err(Broken { record: records, line: line_no, reason }));
        let (record, prev, hash) = match split_line(&line) {
            Ok(parts) => parts,
            Err(why) => return broken(why),
        };
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
        expected = hash.to_owned();
    }
    Ok(Ok((records, expected)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(records: &[&str]) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.path().join("audit.jsonl");
        let sinks = AuditSinks::default();
        let sink = sinks.open(Some(&path)).unwrap();
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
        let sink = AuditSinks::default().open(Some(&path)).unwrap();
        let third = sink.append(r#"{"c":[1,2]}"#).unwrap();
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
        let sink = AuditSinks::default().open(None).unwrap();
        for bad in ["[1]", "{}", "{\"a\":1}\n", "{\"a\":\n1}", " {\"a\":1}", "{\"hash\":\"x\"}", "{\"a\":"] {
            assert!(matches!(sink.append(bad), Err(AuditError::InvalidRecord(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_file_whose_tail_is_not_chained_is_refused() {
        let dir = tempdir::Dir::new();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "{\"not\":\"chained\"}\n").unwrap();
        assert!(AuditSinks::default().open(Some(&path)).unwrap_err().contains("not a chained audit record"));
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
