//! The `kv` capability's backends: the in-process store ([`memory`], the default) and a shared
//! Redis ([`redis`]), so every plugin that uses `kv` counts and caches fleet-wide by
//! configuration alone (`[kv] backend = "redis"`).
//!
//! Both keep the WIT's meaning: TTLs in milliseconds, atomic `increment`, `compare-and-swap`
//! and `throttle`, one namespace per plugin id, and the same caps ([`MAX_KEY_BYTES`],
//! [`MAX_VALUE_BYTES`], [`MAX_ENTRIES_PER_NAMESPACE`], [`MAX_BYTES_PER_NAMESPACE`]).
//!
//! [`Kv`] is a closed enum rather than a `dyn` trait: the in-process calls stay synchronous
//! and allocation-free, and only the Redis arm awaits (see `docs/DECISIONS.md`, "A fleet on
//! Redis").

pub mod gcra;
pub mod memory;
pub mod redis;

use std::sync::Arc;

pub use gcra::Cell;
pub use memory::KvStore;
pub use redis::RedisKv;

/// Largest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Most live entries per plugin namespace.
pub const MAX_ENTRIES_PER_NAMESPACE: usize = 100_000;
/// Most key and value bytes per plugin namespace (64 MiB).
pub const MAX_BYTES_PER_NAMESPACE: usize = 64 * 1024 * 1024;

/// Why a `kv` call failed; mirrors the WIT `kv-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// Key over [`MAX_KEY_BYTES`] or value over [`MAX_VALUE_BYTES`].
    #[error("key or value too large")]
    TooLarge,
    /// The namespace holds [`MAX_ENTRIES_PER_NAMESPACE`] live entries or
    /// [`MAX_BYTES_PER_NAMESPACE`] bytes.
    #[error("namespace full")]
    QuotaExceeded,
    /// `increment` or `throttle` on a value that is not a decimal integer, or an overflow.
    #[error("not a number")]
    NotANumber,
    /// The shared store did not answer within its timeouts, or refused the command; the text
    /// says why (never with credentials).
    #[error("kv store unavailable: {0}")]
    Unavailable(String),
}

/// The configured backend, shared by every store of the engine.
#[derive(Debug)]
pub enum Kv {
    /// The process's own store (default): fast, per instance.
    Memory(KvStore),
    /// A Redis shared by every gateway configured with it.
    Redis(Arc<RedisKv>),
}

/// The backend's health, for `/status`, `/readyz` and `/metrics`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KvHealth {
    /// `memory` or `redis`.
    pub backend: &'static str,
    /// `up`, or `down` when the last command or probe failed.
    pub state: &'static str,
    /// Why it is down (the last error), when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Where it is: `host:port/db` for Redis, without credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// One plugin's namespace in the store, resolved once when the plugin loads ([`Kv::namespace`]):
/// on the in-process store, the namespace's own map, so a call neither takes the store-wide
/// lock nor hashes the plugin id; on Redis, the key prefix.
#[derive(Debug, Clone)]
pub enum Namespace {
    /// A namespace of the in-process store.
    Memory(memory::Namespace),
    /// A namespace on Redis: the plugin id.
    Redis(Arc<str>),
}

// === impl Kv ===

// Every method takes the namespace [`Kv::namespace`] resolved on this same backend; each has
// one arm per backend and an `another_store` arm for a namespace of the other, which the
// engine never builds (it resolves each plugin's on its own store).

// The Redis calls are boxed: a future is as large as its largest state, and a Redis round
// trip's is kilobytes, which every call on the in-process store would otherwise carry and move
// (a `kv` host call is moved twice on its way to the fiber; docs/BENCHMARKS.md, entry 37).
impl Kv {
    /// `memory` or `redis`.
    pub fn backend(&self) -> &'static str {
        match self {
            Kv::Memory(_) => "memory",
            Kv::Redis(_) => "redis",
        }
    }

    /// The namespace named `name` (a plugin id), created empty on the in-process store when new.
    pub fn namespace(&self, name: &Arc<str>) -> Namespace {
        match self {
            Kv::Memory(m) => Namespace::Memory(m.namespace(name)),
            Kv::Redis(_) => Namespace::Redis(name.clone()),
        }
    }

    /// Current health; the in-process store is always up.
    pub fn health(&self) -> KvHealth {
        match self {
            Kv::Memory(_) => KvHealth { backend: "memory", state: "up", error: None, address: None },
            Kv::Redis(r) => r.health(),
        }
    }

    /// The live value of `key` in namespace `ns`.
    ///
    /// Errors: [`KvError::Unavailable`] (Redis only, or a namespace of another backend: see
    /// `another_store`).
    pub async fn get(&self, ns: &Namespace, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        match (self, ns) {
            (Kv::Memory(m), Namespace::Memory(ns)) => Ok(m.get(ns, key)),
            (Kv::Redis(r), Namespace::Redis(ns)) => Box::pin(r.get(ns, key)).await,
            _ => another_store(),
        }
    }

    /// Stores `value`; `ttl_ms` none keeps it until deleted.
    ///
    /// Errors: [`KvError::TooLarge`], [`KvError::QuotaExceeded`], [`KvError::Unavailable`].
    pub async fn set(&self, ns: &Namespace, key: &str, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), KvError> {
        check_sizes(key, &value)?;
        match (self, ns) {
            (Kv::Memory(m), Namespace::Memory(ns)) => m.set(ns, key, value, ttl_ms),
            (Kv::Redis(r), Namespace::Redis(ns)) => Box::pin(r.set(ns, key, value, ttl_ms)).await,
            _ => another_store(),
        }
    }

    /// Removes `key`; true when a live value was removed.
    ///
    /// Errors: [`KvError::Unavailable`].
    pub async fn delete(&self, ns: &Namespace, key: &str) -> Result<bool, KvError> {
        match (self, ns) {
            (Kv::Memory(m), Namespace::Memory(ns)) => Ok(m.delete(ns, key)),
            (Kv::Redis(r), Namespace::Redis(ns)) => Box::pin(r.delete(ns, key)).await,
            _ => another_store(),
        }
    }

    /// Adds `delta` to the decimal counter at `key`, returning the new value.
    ///
    /// Errors: [`KvError::NotANumber`], [`KvError::TooLarge`], [`KvError::QuotaExceeded`],
    /// [`KvError::Unavailable`].
    pub async fn increment(&self, ns: &Namespace, key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, KvError> {
        check_sizes(key, b"")?;
        match (self, ns) {
            (Kv::Memory(m), Namespace::Memory(ns)) => m.increment(ns, key, delta, ttl_ms),
            (Kv::Redis(r), Namespace::Redis(ns)) => Box::pin(r.increment(ns, key, delta, ttl_ms)).await,
            _ => another_store(),
        }
    }

    /// Writes `value` only when the live value equals `expected` (none: absent).
    ///
    /// Errors: [`KvError::TooLarge`], [`KvError::QuotaExceeded`], [`KvError::Unavailable`].
    pub async fn compare_and_swap(
        &self,
        ns: &Namespace,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, KvError> {
        check_sizes(key, &value)?;
        match (self, ns) {
            (Kv::Memory(m), Namespace::Memory(ns)) => m.compare_and_swap(ns, key, expected, value, ttl_ms),
            (Kv::Redis(r), Namespace::Redis(ns)) => {
                Box::pin(r.compare_and_swap(ns, key, expected, value, ttl_ms)).await
            }
            _ => another_store(),
        }
    }

    /// Takes `quantity` units from the GCRA cell at `key` ([`gcra::take`]); one round trip on
    /// Redis, where the server's clock is now.
    ///
    /// Errors: [`KvError::NotANumber`] when `key` holds something else, [`KvError::TooLarge`],
    /// [`KvError::QuotaExceeded`], [`KvError::Unavailable`].
    pub async fn throttle(
        &self,
        ns: &Namespace,
        key: &str,
        interval_us: u64,
        window_us: u64,
        quantity: i32,
    ) -> Result<Cell, KvError> {
        check_sizes(key, b"")?;
        match (self, ns) {
            (Kv::Memory(m), Namespace::Memory(ns)) => m.throttle(ns, key, interval_us, window_us, quantity),
            (Kv::Redis(r), Namespace::Redis(ns)) => {
                Box::pin(r.throttle(ns, key, interval_us, window_us, quantity)).await
            }
            _ => another_store(),
        }
    }
}

/// A namespace resolved on another backend than the one called: the engine resolves each
/// plugin's on its own store, so this is a host bug, failed as the store being unavailable.
fn another_store<T>() -> Result<T, KvError> {
    Err(KvError::Unavailable("host bug: a namespace of another kv backend".into()))
}

/// Errors: [`KvError::TooLarge`] past [`MAX_KEY_BYTES`] or [`MAX_VALUE_BYTES`].
pub(crate) fn check_sizes(key: &str, value: &[u8]) -> Result<(), KvError> {
    if key.len() > MAX_KEY_BYTES || value.len() > MAX_VALUE_BYTES {
        return Err(KvError::TooLarge);
    }
    Ok(())
}
