//! Data path: a cheap monotonic clock for deadlines and ejection periods.

use std::time::Instant;

/// Milliseconds on a process-wide monotonic clock.
pub fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}
