//! The in-process backend of the `kv` capability: one namespace per plugin id, TTLs, atomic
//! increment, compare-and-swap and throttle, and caps on entries and bytes per namespace.
//!
//! Values live as long as the process, across configuration reloads, because the store belongs
//! to the [`PluginEngine`](crate::plugin::PluginEngine), not to a snapshot.

use std::collections::HashMap;
use std::sync::Mutex;

use super::gcra::{self, Cell};
use super::{KvError, MAX_BYTES_PER_NAMESPACE, MAX_ENTRIES_PER_NAMESPACE, check_sizes};
use crate::plugin::clock::Clock;

/// Writes to a namespace between two sweeps of its expired entries.
const SWEEP_EVERY_WRITES: u32 = 4096;

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    /// Expiry in the store clock's milliseconds.
    expires: Option<u64>,
}

impl Entry {
    fn live(&self, now: u64) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

/// One plugin's keys, with the bytes they hold.
#[derive(Debug, Default)]
pub struct Space {
    map: HashMap<String, Entry>,
    bytes: usize,
    writes: u32,
}

impl Space {
    fn live(&self, key: &str, now: u64) -> Option<&Entry> {
        self.map.get(key).filter(|e| e.live(now))
    }

    /// Inserts after making room: expired entries are swept every few thousand writes, and
    /// when the namespace would exceed a cap.
    ///
    /// Errors: [`KvError::QuotaExceeded`] when live entries alone fill a cap.
    fn put(&mut self, key: &str, entry: Entry, now: u64) -> Result<(), KvError> {
        self.writes += 1;
        if self.writes >= SWEEP_EVERY_WRITES {
            self.sweep(now);
        }
        let new = key.len() + entry.value.len();
        // A key already held (every request of a rate-limit key after its first): replaced in
        // place, one look-up and no copy of the key.
        if let Some(held) = self.map.get_mut(key) {
            let old = key.len() + held.value.len();
            if self.bytes - old + new <= MAX_BYTES_PER_NAMESPACE {
                self.bytes = self.bytes - old + new;
                *held = entry;
                return Ok(());
            }
        }
        if !self.fits(key, new) {
            self.sweep(now);
            if !self.fits(key, new) {
                return Err(KvError::QuotaExceeded);
            }
        }
        let old = self.map.get(key).map_or(0, |e| key.len() + e.value.len());
        self.bytes = self.bytes - old + new;
        self.map.insert(key.to_owned(), entry);
        Ok(())
    }

    /// Stores `value` at `key` as [`Space::put`] does, copied into the held entry's buffer when
    /// the key is already held and no sweep is due: a counter's or a GCRA cell's every update
    /// after its first allocates nothing.
    ///
    /// Errors: [`KvError::QuotaExceeded`], as [`Space::put`].
    fn put_copy(&mut self, key: &str, value: &[u8], expires: Option<u64>, now: u64) -> Result<(), KvError> {
        if self.writes + 1 < SWEEP_EVERY_WRITES
            && let Some(held) = self.map.get_mut(key)
        {
            let (old, new) = (key.len() + held.value.len(), key.len() + value.len());
            if self.bytes - old + new <= MAX_BYTES_PER_NAMESPACE {
                self.writes += 1;
                self.bytes = self.bytes - old + new;
                held.value.clear();
                held.value.extend_from_slice(value);
                held.expires = expires;
                return Ok(());
            }
        }
        self.put(key, Entry { value: value.to_vec(), expires }, now)
    }

    /// Whether `key` with `new` bytes of key and value fits the caps.
    fn fits(&self, key: &str, new: usize) -> bool {
        let old = self.map.get(key).map(|e| key.len() + e.value.len());
        (old.is_some() || self.map.len() < MAX_ENTRIES_PER_NAMESPACE)
            && self.bytes - old.unwrap_or(0) + new <= MAX_BYTES_PER_NAMESPACE
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.map.remove(key)?;
        self.bytes -= key.len() + entry.value.len();
        Some(entry)
    }

    fn sweep(&mut self, now: u64) {
        self.writes = 0;
        let mut freed = 0;
        self.map.retain(|k, e| {
            let keep = e.live(now);
            if !keep {
                freed += k.len() + e.value.len();
            }
            keep
        });
        self.bytes -= freed;
    }
}

/// The store. Each namespace has its own lock, so plugins do not contend with each other.
/// TTLs run on the engine's [`Clock`], the one plugins read.
#[derive(Debug, Default)]
pub struct KvStore {
    namespaces: Mutex<HashMap<String, Namespace>>,
    clock: Clock,
}

/// One namespace's map, behind its own lock ([`KvStore::namespace`]).
pub type Namespace = std::sync::Arc<Mutex<Space>>;

// === impl KvStore ===

impl KvStore {
    /// An empty store whose TTLs run on `clock`.
    pub fn new(clock: Clock) -> Self {
        KvStore { namespaces: Mutex::default(), clock }
    }

    /// The namespace named `ns`, created empty when new. Namespaces live as long as the store,
    /// so a plugin resolves its own once, when it loads.
    pub fn namespace(&self, ns: &str) -> Namespace {
        let mut all = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(space) = all.get(ns) {
            return space.clone();
        }
        all.entry(ns.to_owned()).or_default().clone()
    }

    fn with<R>(&self, ns: &Namespace, f: impl FnOnce(&mut Space, u64) -> R) -> R {
        let now = self.clock.now_ms();
        let mut space = ns.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut space, now)
    }

    /// The live value of `key` in namespace `ns`.
    pub fn get(&self, ns: &Namespace, key: &str) -> Option<Vec<u8>> {
        self.with(ns, |space, now| space.live(key, now).map(|e| e.value.clone()))
    }

    /// Stores `value`; `ttl_ms` none keeps it until deleted.
    ///
    /// Errors: [`KvError::TooLarge`], [`KvError::QuotaExceeded`].
    pub fn set(&self, ns: &Namespace, key: &str, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), KvError> {
        check_sizes(key, &value)?;
        self.with(ns, |space, now| space.put(key, Entry { value, expires: expiry(now, ttl_ms) }, now))
    }

    /// Removes `key`; true when a live value was removed.
    pub fn delete(&self, ns: &Namespace, key: &str) -> bool {
        self.with(ns, |space, now| space.remove(key).is_some_and(|e| e.live(now)))
    }

    /// Adds `delta` to the decimal counter at `key` and returns the new value; an absent key
    /// starts at 0 with `ttl_ms`, an existing one keeps its expiry.
    ///
    /// Errors: [`KvError::NotANumber`], [`KvError::TooLarge`], [`KvError::QuotaExceeded`].
    pub fn increment(&self, ns: &Namespace, key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, KvError> {
        check_sizes(key, b"")?;
        self.with(ns, |space, now| {
            let (current, expires) = match space.live(key, now) {
                Some(e) => (parse_counter(&e.value)?, e.expires),
                None => (0, expiry(now, ttl_ms)),
            };
            let next = current.checked_add(delta).ok_or(KvError::NotANumber)?;
            space.put_copy(key, itoa::Buffer::new().format(next).as_bytes(), expires, now)?;
            Ok(next)
        })
    }

    /// Writes `value` only when the live value equals `expected` (none: absent); true when
    /// written.
    ///
    /// Errors: [`KvError::TooLarge`], [`KvError::QuotaExceeded`].
    pub fn compare_and_swap(
        &self,
        ns: &Namespace,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, KvError> {
        check_sizes(key, &value)?;
        self.with(ns, |space, now| {
            if space.live(key, now).map(|e| e.value.as_slice()) != expected {
                return Ok(false);
            }
            space.put(key, Entry { value, expires: expiry(now, ttl_ms) }, now)?;
            Ok(true)
        })
    }

    /// Takes `quantity` units from the GCRA cell at `key` at the store clock's now
    /// ([`gcra::take`]), under the namespace's lock.
    ///
    /// Errors: [`KvError::NotANumber`] when `key` holds something else, [`KvError::TooLarge`],
    /// [`KvError::QuotaExceeded`].
    pub fn throttle(
        &self,
        ns: &Namespace,
        key: &str,
        interval_us: u64,
        window_us: u64,
        quantity: i32,
    ) -> Result<Cell, KvError> {
        check_sizes(key, b"")?;
        self.with(ns, |space, now| {
            let stored = match space.live(key, now) {
                Some(e) => {
                    Some(parse_counter(&e.value).and_then(|v| u64::try_from(v).map_err(|_| KvError::NotANumber))?)
                }
                None => None,
            };
            let step = gcra::take(stored, now.saturating_mul(1000), interval_us, window_us, quantity);
            if let Some((tat, ttl_ms)) = step.store {
                space.put_copy(key, itoa::Buffer::new().format(tat).as_bytes(), expiry(now, Some(ttl_ms)), now)?;
            }
            Ok(step.cell)
        })
    }
}

fn expiry(now: u64, ttl_ms: Option<u64>) -> Option<u64> {
    ttl_ms.map(|t| now.saturating_add(t))
}

fn parse_counter(value: &[u8]) -> Result<i64, KvError> {
    std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()).ok_or(KvError::NotANumber)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::kv::{MAX_KEY_BYTES, MAX_VALUE_BYTES};

    #[test]
    fn kv_increment_counts_from_zero_and_keeps_namespaces_apart() {
        let kv = KvStore::default();
        let a = kv.namespace("a");
        let b = kv.namespace("b");
        assert_eq!(kv.increment(&a, "k", 1, None), Ok(1));
        assert_eq!(kv.increment(&a, "k", 5, None), Ok(6));
        assert_eq!(kv.increment(&b, "k", 1, None), Ok(1));
        assert_eq!(kv.get(&a, "k").as_deref(), Some(&b"6"[..]));
        assert_eq!(kv.get(&kv.namespace("a"), "k").as_deref(), Some(&b"6"[..]), "a name resolves to its one namespace");
    }

    #[test]
    fn kv_increment_refuses_non_numbers() {
        let kv = KvStore::default();
        let a = kv.namespace("a");
        kv.set(&a, "k", b"x".to_vec(), None).unwrap();
        assert_eq!(kv.increment(&a, "k", 1, None), Err(KvError::NotANumber));
    }

    #[test]
    fn kv_expired_values_read_as_absent() {
        let kv = KvStore::default();
        let a = kv.namespace("a");
        kv.set(&a, "k", b"v".to_vec(), Some(0)).unwrap();
        assert_eq!(kv.get(&a, "k"), None);
        assert!(!kv.delete(&a, "k"));
    }

    #[test]
    fn kv_byte_cap_refuses_live_data_and_reclaims_expired() {
        let kv = KvStore::default();
        let a = kv.namespace("a");
        let value = vec![0u8; MAX_VALUE_BYTES];
        let fits = MAX_BYTES_PER_NAMESPACE / (MAX_VALUE_BYTES + 8);
        for i in 0..fits {
            kv.set(&a, &format!("k{i:06}"), value.clone(), Some(1)).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        // Everything above has expired: the next writes reclaim it instead of failing.
        for i in 0..fits {
            kv.set(&a, &format!("n{i:06}"), value.clone(), None).unwrap();
        }
        assert_eq!(kv.set(&a, "one-too-many", value.clone(), None), Err(KvError::QuotaExceeded));
        // Replacing an existing key with a value of the same size still fits.
        assert_eq!(kv.set(&a, "n000000", value.clone(), None), Ok(()));
        // Shrinking a held value frees its bytes for another key ...
        assert_eq!(kv.set(&a, "n000001", vec![], None), Ok(()));
        assert_eq!(kv.set(&a, "one-too-many", value.clone(), None), Ok(()));
        // ... and growing it back past the cap is refused, leaving the held value as it was.
        assert_eq!(kv.set(&a, "n000001", value, None), Err(KvError::QuotaExceeded));
        assert_eq!(kv.get(&a, "n000001").as_deref(), Some(&b""[..]));
    }

    #[test]
    fn kv_counters_updated_in_place_keep_the_byte_count() {
        let kv = KvStore::default();
        let a = kv.namespace("a");
        for _ in 0..12 {
            kv.increment(&a, "k", 1, Some(60_000)).unwrap();
        }
        kv.throttle(&a, "c", 1_000, 1_000_000, 1).unwrap();
        kv.throttle(&a, "c", 1_000, 1_000_000, 1).unwrap();
        let space = a.lock().unwrap();
        let held: usize = space.map.iter().map(|(k, e)| k.len() + e.value.len()).sum();
        assert_eq!(space.bytes, held, "the count follows values that grew (9 -> 10) in place");
        assert_eq!(space.map["k"].value, b"12");
        assert!(space.map["k"].expires.is_some(), "an increment keeps the key's expiry");
    }

    #[test]
    fn kv_ttl_runs_on_the_store_clock() {
        let clock = Clock::default();
        let kv = KvStore::new(clock.clone());
        let a = kv.namespace("a");
        kv.set(&a, "k", b"v".to_vec(), Some(60_000)).unwrap();
        assert!(kv.get(&a, "k").is_some());
        clock.advance(std::time::Duration::from_secs(61));
        assert_eq!(kv.get(&a, "k"), None);
    }

    #[test]
    fn kv_compare_and_swap_writes_only_on_match() {
        let kv = KvStore::default();
        let a = kv.namespace("a");
        assert_eq!(kv.compare_and_swap(&a, "k", None, b"1".to_vec(), None), Ok(true));
        assert_eq!(kv.compare_and_swap(&a, "k", None, b"2".to_vec(), None), Ok(false));
        assert_eq!(kv.compare_and_swap(&a, "k", Some(b"1"), b"2".to_vec(), None), Ok(true));
        assert_eq!(kv.get(&a, "k").as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn kv_throttle_takes_from_one_cell_on_the_store_clock() {
        let clock = Clock::default();
        let kv = KvStore::new(clock.clone());
        let a = kv.namespace("a");
        let (interval, window) = (200_000, 1_000_000);
        for left in (0..5).rev() {
            assert_eq!(kv.throttle(&a, "c", interval, window, 1).map(|c| c.remaining), Ok(left));
        }
        assert!(!kv.throttle(&a, "c", interval, window, 1).unwrap().allowed);
        clock.advance(std::time::Duration::from_millis(200));
        assert!(kv.throttle(&a, "c", interval, window, 1).unwrap().allowed);
        kv.set(&a, "text", b"x".to_vec(), None).unwrap();
        assert_eq!(kv.throttle(&a, "text", interval, window, 1), Err(KvError::NotANumber));
        clock.advance(std::time::Duration::from_secs(2));
        assert_eq!(kv.get(&a, "c"), None, "a full cell expires");
    }

    #[test]
    fn kv_refuses_oversized_keys_and_values() {
        let kv = KvStore::default();
        let a = kv.namespace("a");
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(kv.set(&a, &long, vec![], None), Err(KvError::TooLarge));
        assert_eq!(kv.set(&a, "k", vec![0; MAX_VALUE_BYTES + 1], None), Err(KvError::TooLarge));
    }
}
