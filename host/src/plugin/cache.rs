//! The on-disk cache of compiled components, so a restart or `portcullis validate` does not
//! compile an unchanged component again (an 18 MB componentize-py component takes 10–35 s of
//! Cranelift on a 2-core machine; read back from the cache it takes well under a second).
//!
//! **Key.** One file per (component content, engine configuration):
//! `<SHA-256 of the component>-<engine hash>.cwasm`, where the engine hash is wasmtime's
//! `Engine::precompile_compatibility_hash` (wasmtime version, target, and every setting that
//! changes generated code, e.g. fuel metering). wasmtime's `Component::serialize` /
//! `Component::deserialize` do the rest, and `deserialize` itself refuses an artifact from
//! another wasmtime version or configuration.
//!
//! **File.** `PORTCULLIS-CWASM 1\n`, the SHA-256 of the artifact as 64 hex digits and `\n`,
//! then the artifact. An entry whose digest does not match (a torn write, a bad disk) is
//! deleted and the component compiled again; so is one wasmtime refuses. Entries are written
//! to a temporary file and renamed into place, so a reader never sees half an entry and
//! concurrent gateways sharing the directory are safe.
//!
//! **Trust.** Deserializing is loading machine code: whoever can write the directory can run
//! code in the gateway. The digest detects corruption, not tampering. So the directory is
//! created with mode 0700, and it is not used (a warning says why, and components are
//! compiled as without a cache) when it is writable by group or others or not owned by the
//! gateway's user; an entry owned by anyone else or writable by others is ignored.
//!
//! Written here rather than with wasmtime's `cache` feature, which caches core modules keyed
//! the same way but adds zstd and a background worker, and has no place to check ownership.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

const MAGIC: &[u8] = b"PORTCULLIS-CWASM 1\n";

/// A usable cache directory and this engine's configuration hash.
#[derive(Debug)]
pub struct CompileCache {
    dir: PathBuf,
    engine_key: String,
    uid: u32,
}

impl CompileCache {
    /// Opens (creating it, mode 0700) the cache at `dir` for `engine`.
    ///
    /// Errors: the directory cannot be created or written, or is writable by group or others,
    /// or belongs to another user; the message names the directory and the reason.
    pub fn open(dir: &Path, engine: &Engine) -> Result<Self, String> {
        let at = |e: std::io::Error| format!("compile cache {}: {e}", dir.display());
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(at)?;
        let meta = std::fs::metadata(dir).map_err(at)?;
        if meta.permissions().mode() & 0o022 != 0 {
            return Err(format!(
                "compile cache {}: writable by group or others (mode {:o}); not used, since whoever writes it runs code in the gateway",
                dir.display(),
                meta.permissions().mode() & 0o777
            ));
        }
        // Our own uid, without libc: the owner of a file we create.
        let probe = dir.join(format!(".probe-{}", std::process::id()));
        std::fs::write(&probe, b"").map_err(at)?;
        let uid = std::fs::metadata(&probe).map_err(at)?.uid();
        let _ = std::fs::remove_file(&probe);
        if meta.uid() != uid {
            return Err(format!(
                "compile cache {}: owned by uid {}, not this gateway's uid {uid}; not used",
                dir.display(),
                meta.uid()
            ));
        }
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(CompileCache { dir: dir.to_owned(), engine_key: format!("{:016x}", hasher.finish()), uid })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, content_hash: &str) -> PathBuf {
        self.dir.join(format!("{content_hash}-{}.cwasm", self.engine_key))
    }

    /// The component compiled earlier from content `content_hash`, or none: no entry, or an
    /// entry that is corrupt, stale or not trusted (those are removed, with a warning).
    /// The one `unsafe` outside generated bindings: wasmtime has no safe way to load
    /// precompiled code.
    #[allow(unsafe_code)]
    pub fn get(&self, engine: &Engine, content_hash: &str) -> Option<Component> {
        let path = self.entry(content_hash);
        let meta = std::fs::metadata(&path).ok()?;
        if meta.uid() != self.uid || meta.permissions().mode() & 0o022 != 0 {
            tracing::warn!(entry = %path.display(), "compile cache entry not owned by this user or writable by others: ignored");
            return None;
        }
        let bytes = std::fs::read(&path).ok()?;
        match Self::artifact(&bytes) {
            // SAFETY: the artifact was written by `put` (from `Component::serialize`) into a
            // directory only this user can write, its digest matches, and wasmtime checks that
            // it was produced by this wasmtime version with this engine configuration.
            Some(artifact) => match unsafe { Component::deserialize(engine, artifact) } {
                Ok(component) => Some(component),
                Err(e) => {
                    tracing::warn!(entry = %path.display(), error = %format!("{e:#}"), "compile cache entry refused by wasmtime: removed");
                    let _ = std::fs::remove_file(&path);
                    None
                }
            },
            None => {
                tracing::warn!(entry = %path.display(), "compile cache entry is corrupt (digest mismatch): removed");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// The artifact inside an entry's bytes, when the header and digest check out.
    fn artifact(bytes: &[u8]) -> Option<&[u8]> {
        let rest = bytes.strip_prefix(MAGIC)?;
        let (digest, artifact) = (rest.get(..64)?, rest.get(65..)?);
        (rest.get(64) == Some(&b'\n') && digest == crate::sources::hex(&Sha256::digest(artifact)).as_bytes())
            .then_some(artifact)
    }

    /// Stores `component` (compiled from content `content_hash`). A failure to write is
    /// logged and otherwise ignored: the cache only saves time.
    pub fn put(&self, content_hash: &str, component: &Component) {
        let path = self.entry(content_hash);
        let written = component.serialize().map_err(|e| format!("{e:#}")).and_then(|artifact| {
            let tmp = self.dir.join(format!(".{content_hash}.{}.tmp", std::process::id()));
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| e.to_string())?;
            let digest = crate::sources::hex(&Sha256::digest(&artifact));
            let result = file
                .write_all(MAGIC)
                .and_then(|()| file.write_all(digest.as_bytes()))
                .and_then(|()| file.write_all(b"\n"))
                .and_then(|()| file.write_all(&artifact))
                .and_then(|()| file.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &path));
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result.map_err(|e| e.to_string())
        });
        if let Err(e) = written {
            tracing::warn!(entry = %path.display(), error = %e, "could not write the compile cache entry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_its_artifact_only_when_the_digest_matches() {
        let artifact = b"machine code";
        let digest = crate::sources::hex(&Sha256::digest(artifact));
        let entry = [MAGIC, digest.as_bytes(), b"\n", artifact].concat();
        assert_eq!(CompileCache::artifact(&entry), Some(&artifact[..]));
        let mut flipped = entry.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(CompileCache::artifact(&flipped), None);
        assert_eq!(CompileCache::artifact(&entry[..entry.len() - 1]), None, "a torn write");
        assert_eq!(CompileCache::artifact(b"PORTCULLIS-CWASM 2\n"), None);
    }
}
