//! The in-process backend of the `kv` capability: one namespace per plugin id, TTLs, atomic
//! increment and compare-and-swap, and a cap on entries per namespace.
//!
//! Values live as long as the process, across configuration reloads, because the store belongs
//! to the [`PluginEngine`](super::PluginEngine), not to a snapshot.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Largest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Most live entries per plugin namespace.
pub const MAX_ENTRIES_PER_NAMESPACE: usize = 100_000;

/// Why a `kv` call failed; mirrors the WIT `kv-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// Key over [`MAX_KEY_BYTES`] or value over [`MAX_VALUE_BYTES`].
    #[error("key or value too large")]
    TooLarge,
    /// The namespace holds [`MAX_ENTRIES_PER_NAMESPACE`] live entries.
    #[error("namespace full")]
    QuotaExceeded,
    /// `increment` on a value that is not a decimal i64, or an overflow.
    #[error("not a number")]
    NotANumber,
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

/// The store. Each namespace has its own lock, so plugins do not contend with each other.
#[derive(Debug, Default)]
pub struct KvStore {
    namespaces: Mutex<HashMap<String, Namespace>>,
}

type Namespace = std::sync::Arc<Mutex<HashMap<String, Entry>>>;

// === impl KvStore ===

impl KvStore {
    fn namespace(&self, ns: &str) -> Namespace {
        let mut all = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        all.entry(ns.to_owned()).or_default().clone()
    }

    fn with<R>(&self, ns: &str, f: impl FnOnce(&mut HashMap<String, Entry>, Instant) -> R) -> R {
        let namespace = self.namespace(ns);
        let mut map = namespace.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut map, Instant::now())
    }

    /// The live value of `key` in namespace `ns`.
    pub fn get(&self, ns: &str, key: &str) -> Option<Vec<u8>> {
        self.with(ns, |map, now| map.get(key).filter(|e| e.live(now)).map(|e| e.value.clone()))
    }

    /// Stores `value`; `ttl_ms` none keeps it until deleted.
    ///
    /// Errors: [`KvError::TooLarge`], [`KvError::QuotaExceeded`].
    pub fn set(&self, ns: &str, key: &str, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), KvError> {
        check_sizes(key, &value)?;
        self.with(ns, |map, now| {
            make_room(map, key, now)?;
            map.insert(key.to_owned(), Entry { value, expires: expiry(now, ttl_ms) });
            Ok(())
        })
    }

    /// Removes `key`; true when a live value was removed.
    pub fn delete(&self, ns: &str, key: &str) -> bool {
        self.with(ns, |map, now| map.remove(key).is_some_and(|e| e.live(now)))
    }

    /// Adds `delta` to the decimal counter at `key` and returns the new value; an absent key
    /// starts at 0 with `ttl_ms`, an existing one keeps its expiry.
    ///
    /// Errors: [`KvError::NotANumber`], [`KvError::TooLarge`], [`KvError::QuotaExceeded`].
    pub fn increment(&self, ns: &str, key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, KvError> {
        check_sizes(key, b"")?;
        self.with(ns, |map, now| {
            let (current, expires) = match map.get(key).filter(|e| e.live(now)) {
                Some(e) => (parse_counter(&e.value)?, e.expires),
                None => (0, expiry(now, ttl_ms)),
            };
            let next = current.checked_add(delta).ok_or(KvError::NotANumber)?;
            make_room(map, key, now)?;
            map.insert(key.to_owned(), Entry { value: next.to_string().into_bytes(), expires });
            Ok(next)
        })
    }

    /// Writes `value` only when the live value equals `expected` (none: absent); true when
    /// written.
    ///
    /// Errors: [`KvError::TooLarge`], [`KvError::QuotaExceeded`].
    pub fn compare_and_swap(
        &self,
        ns: &str,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, KvError> {
        check_sizes(key, &value)?;
        self.with(ns, |map, now| {
            let current = map.get(key).filter(|e| e.live(now)).map(|e| e.value.as_slice());
            if current != expected {
                return Ok(false);
            }
            make_room(map, key, now)?;
            map.insert(key.to_owned(), Entry { value, expires: expiry(now, ttl_ms) });
            Ok(true)
        })
    }
}

fn check_sizes(key: &str, value: &[u8]) -> Result<(), KvError> {
    if key.len() > MAX_KEY_BYTES || value.len() > MAX_VALUE_BYTES {
        return Err(KvError::TooLarge);
    }
    Ok(())
}

fn expiry(now: Instant, ttl_ms: Option<u64>) -> Option<Instant> {
    ttl_ms.map(|t| now + std::time::Duration::from_millis(t))
}

fn parse_counter(value: &[u8]) -> Result<i64, KvError> {
    std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()).ok_or(KvError::NotANumber)
}

/// Before inserting a new key into a full namespace, reclaim expired entries; refuse if still
/// full.
fn make_room(map: &mut HashMap<String, Entry>, key: &str, now: Instant) -> Result<(), KvError> {
    if map.len() < MAX_ENTRIES_PER_NAMESPACE || map.contains_key(key) {
        return Ok(());
    }
    map.retain(|_, e| e.live(now));
    if map.len() >= MAX_ENTRIES_PER_NAMESPACE {
        return Err(KvError::QuotaExceeded);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_increment_counts_from_zero_and_keeps_namespaces_apart() {
        let kv = KvStore::default();
        assert_eq!(kv.increment("a", "k", 1, None), Ok(1));
        assert_eq!(kv.increment("a", "k", 5, None), Ok(6));
        assert_eq!(kv.increment("b", "k", 1, None), Ok(1));
        assert_eq!(kv.get("a", "k").as_deref(), Some(&b"6"[..]));
    }

    #[test]
    fn kv_increment_refuses_non_numbers() {
        let kv = KvStore::default();
        kv.set("a", "k", b"x".to_vec(), None).unwrap();
        assert_eq!(kv.increment("a", "k", 1, None), Err(KvError::NotANumber));
    }

    #[test]
    fn kv_expired_values_read_as_absent() {
        let kv = KvStore::default();
        kv.set("a", "k", b"v".to_vec(), Some(0)).unwrap();
        assert_eq!(kv.get("a", "k"), None);
        assert!(!kv.delete("a", "k"));
    }

    #[test]
    fn kv_compare_and_swap_writes_only_on_match() {
        let kv = KvStore::default();
        assert_eq!(kv.compare_and_swap("a", "k", None, b"1".to_vec(), None), Ok(true));
        assert_eq!(kv.compare_and_swap("a", "k", None, b"2".to_vec(), None), Ok(false));
        assert_eq!(kv.compare_and_swap("a", "k", Some(b"1"), b"2".to_vec(), None), Ok(true));
        assert_eq!(kv.get("a", "k").as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn kv_refuses_oversized_keys_and_values() {
        let kv = KvStore::default();
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(kv.set("a", &long, vec![], None), Err(KvError::TooLarge));
        assert_eq!(kv.set("a", "k", vec![0; MAX_VALUE_BYTES + 1], None), Err(KvError::TooLarge));
    }
}
