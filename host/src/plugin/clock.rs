//! The clock plugins read (`clock.now-ms`) and the in-process `kv` store's TTLs run on (a
//! Redis-backed store uses the Redis server's clock).
//!
//! It is the system's wall clock plus an offset that starts at zero. [`Clock::advance`] moves
//! it forward, which lets a test (or a drill) show a rate-limit window or a cached token expire
//! without sleeping; nothing in the gateway itself moves it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch, plus an offset shared by every clone.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicU64>,
}

// === impl Clock ===

impl Clock {
    /// Milliseconds since 1970-01-01T00:00:00Z, as plugins see it.
    pub fn now_ms(&self) -> u64 {
        let system = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        u64::try_from(system.as_millis()).unwrap_or(u64::MAX).saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Moves this clock (and every clone) forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_moves_every_clone() {
        let clock = Clock::default();
        let other = clock.clone();
        let before = other.now_ms();
        clock.advance(Duration::from_secs(3600));
        assert!(other.now_ms() >= before + 3_600_000);
    }
}
