//! The verified-token cache: tokens this instance has verified, keyed by SHA-256, with the
//! identity they gave and the window in which they stay valid. A hit skips the signature check
//! (an RS256 verification is about 2 ms inside wasm); every claim that depends on time is
//! still honoured through the window. Bounded: when full, expired entries go first, and if
//! none has expired the cache starts over.

use std::collections::HashMap;

use portcullis_sdk::Identity;
use sha2::{Digest, Sha256};

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
    entries: HashMap<[u8; 32], (Identity, Window)>,
    capacity: usize,
}

/// The cache key of `token`.
pub(crate) fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Cache {
    /// A cache of at most `capacity` tokens; `0` disables it.
    pub(crate) fn new(capacity: usize) -> Self {
        Cache { entries: HashMap::new(), capacity }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// The identity of a token verified before, when `now_s` is inside its window. Outside
    /// it the entry is dropped and the token is checked again (which gives the right refusal).
    pub(crate) fn get(&mut self, digest: &[u8; 32], now_s: i64) -> Option<Identity> {
        let (identity, window) = self.entries.get(digest)?;
        if now_s >= window.from_s && now_s <= window.until_s {
            return Some(identity.clone());
        }
        self.entries.remove(digest);
        None
    }

    /// Remembers a verified token.
    pub(crate) fn insert(&mut self, digest: [u8; 32], identity: Identity, window: Window, now_s: i64) {
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
