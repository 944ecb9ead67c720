//! The files a snapshot was built from, each with the SHA-256 of the bytes the build read.
//!
//! Hot reload watches these files, and reloads on a file event only when one of them no
//! longer has the content the serving snapshot was built from: reading a watched file (an
//! editor opening it, `sha256sum`, the reload's own reads) changes nothing, and a file
//! rewritten with identical bytes is a no-op. A digest is taken from the very bytes the build
//! used, or (for files read by another library, such as certificates) just before the build
//! reads them, so a write that lands during a build always leaves a digest that differs from
//! the disk and is picked up by the next event, never one that hides it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Path → SHA-256 (lowercase hex) of its content as the build read it; `None` when it could
/// not be read then (the build reports that file as an error, so a serving snapshot has none).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sources(BTreeMap<PathBuf, Option<String>>);

/// SHA-256 of `bytes`, lowercase hex (64 characters): the content hash of plugins and sources.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// `bytes` as lowercase hex, two characters each (`const-hex`: the audit chain hex-encodes a
/// digest per record).
pub fn hex(bytes: &[u8]) -> String {
    const_hex::encode(bytes)
}

// === impl Sources ===

impl Sources {
    /// Records `path` with the digest of `bytes`, the content the build used.
    pub fn record(&mut self, path: &Path, bytes: &[u8]) {
        self.0.insert(path.to_owned(), Some(sha256_hex(bytes)));
    }

    /// Records `path` with a digest already computed from the content the build used.
    pub fn record_digest(&mut self, path: &Path, digest: String) {
        self.0.insert(path.to_owned(), Some(digest));
    }

    /// Records `path` with the digest of what it holds now, before a library reads it.
    pub fn record_now(&mut self, path: &Path) {
        self.0.insert(path.to_owned(), std::fs::read(path).ok().map(|b| sha256_hex(&b)));
    }

    /// The recorded paths, in order.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.0.keys().map(PathBuf::as_path)
    }

    /// Whether `path` is one of the recorded files.
    pub fn contains(&self, path: &Path) -> bool {
        self.0.contains_key(path)
    }

    /// The recorded files whose content on disk now differs from what was recorded (or that
    /// can no longer be read), in order. Reads every file whole: call it off the request path.
    pub fn changed_on_disk(&self) -> Vec<&Path> {
        self.0
            .iter()
            .filter(|(path, digest)| std::fs::read(path).ok().map(|b| sha256_hex(&b)) != **digest)
            .map(|(path, _)| path.as_path())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, content: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("portcullis-sources-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn unchanged_and_rewritten_identical_files_are_not_changes() {
        let path = temp_file("same", b"a = 1\n");
        let mut sources = Sources::default();
        sources.record(&path, b"a = 1\n");
        assert!(sources.changed_on_disk().is_empty());
        std::fs::write(&path, b"a = 1\n").unwrap();
        assert!(sources.changed_on_disk().is_empty(), "same bytes written again");
        std::fs::write(&path, b"a = 2\n").unwrap();
        assert_eq!(sources.changed_on_disk(), [path.as_path()]);
    }

    #[test]
    fn a_removed_file_is_a_change_and_digests_match_the_engines() {
        let path = temp_file("gone", b"x");
        let mut sources = Sources::default();
        sources.record_now(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(sources.changed_on_disk(), [path.as_path()]);
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
