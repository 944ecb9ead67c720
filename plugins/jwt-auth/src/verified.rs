//! The verified-token cache: tokens this instance has verified, keyed by a 128-bit keyed hash
//! (SipHash-1-3 with a key drawn at random per instance), with the identity they gave and the
//! window in which they stay valid. A hit skips the signature check (an RS256 verification is
//! about 2 ms inside wasm); every claim that depends on time is still honoured through the
//! window. Bounded: when full, expired entries go first, and if none has expired the cache
//! starts over.
//!
//! Why a keyed hash and not SHA-256 (as before): SHA-256 of a 600-byte token was 27% of a
//! cached call (issue 19). The key is secret, so a client cannot compute which token collides
//! with a cached one; finding one blind takes about 2^128 tries (2^64 for any collision among
//! its own tokens, which gains it nothing: both would be its own). Storing whole tokens instead
//! would cost up to 80 MiB per instance at 10,000 entries of 8 KiB.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use portcullis_sdk::Identity;
use siphasher::sip128::{Hasher128, SipHasher13};

/// Seconds since the Unix epoch in which a verified token keeps verifying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// First valid second (`nbf`/`iat` minus the leeway).
    pub from_s: i64,
    /// Last valid second (`exp` plus the leeway, or earlier when its keys go stale).
    pub until_s: i64,
}

/// The cache of one plugin instance.
pub(crate) struct Cache {
    entries: HashMap<u128, (Identity, Window)>,
    capacity: usize,
    /// The SipHash key, secret to this instance.
    key: (u64, u64),
}

impl Cache {
    /// A cache of at most `capacity` tokens; `0` disables it.
    pub(crate) fn new(capacity: usize) -> Self {
        // std's `RandomState` is seeded from the platform's random source (WASI `random` here);
        // two of its outputs make the key.
        let seed = std::hash::RandomState::new();
        let word = |n: u8| {
            let mut h = seed.build_hasher();
            h.write_u8(n);
            h.finish()
        };
        Cache { entries: HashMap::new(), capacity, key: (word(0), word(1)) }
    }

    /// The cache key of `token`.
    pub(crate) fn digest(&self, token: &str) -> u128 {
        let mut h = SipHasher13::new_with_keys(self.key.0, self.key.1);
        h.write(token.as_bytes());
        h.finish128().as_u128()
    }

    pub(crate) fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// The identity of a token verified before, when `now_s` is inside its window. Outside
    /// it the entry is dropped and the token is checked again (which gives the right refusal).
    pub(crate) fn get(&mut self, digest: &u128, now_s: i64) -> Option<Identity> {
        let (identity, window) = self.entries.get(digest)?;
        if now_s >= window.from_s && now_s <= window.until_s {
            return Some(identity.clone());
        }
        self.entries.remove(digest);
        None
    }

    /// Remembers a verified token.
    pub(crate) fn insert(&mut self, digest: u128, identity: Identity, window: Window, now_s: i64) {
        if !self.enabled() || window.until_s < now_s {
            return;
        }
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, (_, w)| w.until_s >= now_s);
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
        }
        self.entries.insert(digest, (identity, window));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}
