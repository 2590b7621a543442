//! Exponential back-off with jitter, shared by the Cloud Map poller and the
//! App Mesh route sync.

use std::time::Duration;

use rand::RngExt;

/// The shortest back-off delay.
pub const MIN_DELAY: Duration = Duration::from_millis(1);

/// Multiplies `base` by a random factor in `[1 - spread, 1 + spread]`
/// (`spread` is clamped to `0..=1`).
pub fn jitter(base: Duration, spread: f64) -> Duration {
    let spread = spread.clamp(0.0, 1.0);
    if spread == 0.0 || base.is_zero() {
        return base;
    }
    let factor = rand::rng().random_range((1.0 - spread)..=(1.0 + spread));
    base.mul_f64(factor)
}

/// Exponential back-off: `initial`, doubled after each failure, capped at `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Delay after the first failure.
    initial: Duration,
    /// Upper bound of the delay (before jitter).
    max: Duration,
    /// Delay after the next failure, before jitter.
    next: Duration,
}

impl Backoff {
    /// A back-off that starts at `initial` and doubles up to `max`.
    /// `initial` is at least 1 ms (a zero delay would spin) and at most `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let max = max.max(MIN_DELAY);
        let initial = initial.clamp(MIN_DELAY, max);
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay to wait after one more failure, with ±20% jitter (so
    /// replicas spread out, yet never retry much sooner than the nominal delay).
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        jitter(nominal, 0.2)
    }

    /// Back to `initial` after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let nominal = [1, 2, 4, 8, 16, 30, 30];
        for secs in nominal {
            let d = backoff.next_delay().as_secs_f64();
            let secs = secs as f64;
            assert!(
                d >= secs * 0.8 - 1e-9 && d <= secs * 1.2 + 1e-9,
                "{d} vs {secs}"
            );
        }
        backoff.reset();
        let d = backoff.next_delay().as_secs_f64();
        assert!((0.8..=1.2).contains(&d));
    }

    #[test]
    fn jitter_stays_in_range_and_handles_edges() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_millis(1000), 0.2).as_millis();
            assert!((800..=1200).contains(&d), "{d}");
        }
        assert_eq!(jitter(Duration::ZERO, 0.2), Duration::ZERO);
        assert_eq!(jitter(Duration::from_secs(1), 0.0), Duration::from_secs(1));
        assert!(jitter(Duration::from_secs(1), 5.0) <= Duration::from_secs(2));
    }

    #[test]
    fn zero_delays_are_raised_to_the_minimum() {
        let mut backoff = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert!(backoff.next_delay() >= MIN_DELAY.mul_f64(0.8));
    }
}
