//! The generic cell rate algorithm (GCRA, ITU-T I.371), as `kv.throttle` runs it: one stored
//! number per cell, the theoretical arrival time (TAT) in microseconds since the Unix epoch.
//! `redis.rs` runs the same steps in Lua on the Redis server (`THROTTLE` there); the unit tests
//! below and the fleet tests hold the two to one meaning.

/// A cell after [`take`]; mirrors the WIT `kv.cell`. Times in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// Whether the units were taken.
    pub allowed: bool,
    /// Units that could still be taken now.
    pub remaining: u64,
    /// Until the cell is full again.
    pub reset_us: u64,
    /// When refused, until the units could be taken; 0 when allowed.
    pub retry_after_us: u64,
}

/// What [`take`] decided: the TAT to store (none: leave the cell as it is) and its TTL in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The cell as the caller sees it.
    pub cell: Cell,
    /// New TAT and its time to live in milliseconds (the cell expires once full).
    pub store: Option<(u64, u64)>,
}

/// One GCRA step at `now_us` on the cell whose TAT is `stored` (none: absent, a full cell).
///
/// `quantity` units each cost `interval_us` (at least 1); units may be taken up to
/// `window_us` ahead of now. A refused take stores nothing. A negative `quantity` gives units
/// back, never below now, and does nothing to an absent cell.
pub fn take(stored: Option<u64>, now_us: u64, interval_us: u64, window_us: u64, quantity: i32) -> Step {
    let interval = interval_us.max(1);
    let cost = interval.saturating_mul(u64::from(quantity.unsigned_abs()));
    let remaining = |tat: u64| window_us.saturating_sub(tat.saturating_sub(now_us)) / interval;
    let ttl_ms = |tat: u64| tat.saturating_sub(now_us).div_ceil(1000) + 1;
    if quantity < 0 {
        let Some(tat) = stored else {
            return Step {
                cell: Cell { allowed: true, remaining: remaining(now_us), reset_us: 0, retry_after_us: 0 },
                store: None,
            };
        };
        let back = tat.saturating_sub(cost).max(now_us);
        let cell = Cell { allowed: true, remaining: remaining(back), reset_us: back - now_us, retry_after_us: 0 };
        return Step { cell, store: Some((back, ttl_ms(back))) };
    }
    let tat = stored.unwrap_or(0).max(now_us);
    let new_tat = tat.saturating_add(cost);
    let allow_at = new_tat.saturating_sub(window_us);
    if now_us < allow_at {
        let cell = Cell {
            allowed: false,
            remaining: remaining(tat),
            reset_us: tat - now_us,
            retry_after_us: allow_at - now_us,
        };
        return Step { cell, store: None };
    }
    let cell = Cell { allowed: true, remaining: remaining(new_tat), reset_us: new_tat - now_us, retry_after_us: 0 };
    Step { cell, store: Some((new_tat, ttl_ms(new_tat))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 5 per second: interval 200 ms, window 1 s.
    const I: u64 = 200_000;
    const W: u64 = 1_000_000;

    #[test]
    fn gcra_admits_a_burst_of_the_window_then_one_per_interval() {
        let now = 10_000_000;
        let mut tat = None;
        for left in (0..5).rev() {
            let step = take(tat, now, I, W, 1);
            assert!(step.cell.allowed);
            assert_eq!(step.cell.remaining, left);
            tat = step.store.map(|(t, _)| t);
        }
        let refused = take(tat, now, I, W, 1);
        assert!(!refused.cell.allowed);
        assert_eq!(refused.store, None);
        assert_eq!(refused.cell.retry_after_us, I);
        assert_eq!(refused.cell.reset_us, W);
        // One interval later exactly one more fits.
        assert!(take(tat, now + I, I, W, 1).cell.allowed);
        assert!(!take(take(tat, now + I, I, W, 1).store.map(|(t, _)| t), now + I, I, W, 1).cell.allowed);
    }

    #[test]
    fn gcra_stores_with_a_ttl_until_full_and_gives_back_never_below_now() {
        let now = 5_000_000;
        let step = take(None, now, I, W, 2);
        assert_eq!(step.store, Some((now + 2 * I, 401)));
        let back = take(step.store.map(|(t, _)| t), now, I, W, -5);
        assert_eq!(back.store, Some((now, 1)));
        assert_eq!(back.cell.remaining, 5);
        assert_eq!(take(None, now, I, W, -1).store, None);
    }

    #[test]
    fn gcra_refuses_a_take_larger_than_the_window() {
        let step = take(None, 1_000, I, W, 6);
        assert!(!step.cell.allowed);
        assert_eq!(step.cell.remaining, 5);
    }
}
