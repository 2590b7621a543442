//! Data path: a log line that may be written at most once per period.
//!
//! A failing upstream fails every request sent to it: thousands of lines a
//! second at warn level would flood the log and bury everything else. The
//! per-request detail goes to debug (with the request id); one warn line
//! per period says it goes on, and how many it stood for.

use std::sync::atomic::{AtomicU64, Ordering};

/// Lets one line through per period, counting the ones it held back.
#[derive(Debug, Default)]
pub struct LogLimit {
    /// When the next line may go out ([`super::clock::now_ms`]).
    next_ms: AtomicU64,
    /// Lines held back since the last one let through.
    held: AtomicU64,
}

impl LogLimit {
    pub const fn new() -> LogLimit {
        LogLimit {
            next_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// Whether a line may go out at `now_ms`, every `period_ms` at most:
    /// then `Some` of how many were held back since the last one.
    pub fn allow(&self, now_ms: u64, period_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms + period_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_count_held_back() {
        let limit = LogLimit::new();
        assert_eq!(limit.allow(5, 1000), Some(0));
        for t in [5, 6, 500, 1004] {
            assert_eq!(limit.allow(t, 1000), None, "at {t}");
        }
        assert_eq!(limit.allow(1005, 1000), Some(4));
        assert_eq!(limit.allow(1006, 1000), None);
        assert_eq!(limit.allow(9000, 1000), Some(1));
    }
}
