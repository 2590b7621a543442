//! Rollout: per-version telemetry for the canary analysis, recorded once per
//! request by the data path (one relaxed atomic addition, two for an error;
//! no lock).
//!
//! The counters only grow; the analysis reads them at the start and at the
//! end of a window and takes the difference ([`Counts::since`]). Latency goes
//! into a log-linear histogram (16 buckets per power of two above 32 µs, each
//! at most 6.25% wide; exact microseconds below), fine enough for a p99 from
//! a few hundred samples.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Exact microseconds below this.
const LINEAR: u64 = 32;
/// Sub-buckets per power of two (2^4).
const SUB_BITS: u32 = 4;
/// The largest exponent kept (2^37 µs is about 38 hours).
const MAX_EXP: u32 = 36;
/// Number of latency buckets.
pub const BUCKETS: usize =
    LINEAR as usize + ((MAX_EXP - SUB_BITS) as usize) * (1 << SUB_BITS) as usize;

/// The bucket of a latency in microseconds.
#[inline]
pub fn bucket(micros: u64) -> usize {
    if micros < LINEAR {
        return micros as usize;
    }
    let micros = micros.min((1 << (MAX_EXP + 1)) - 1);
    let exp = 63 - micros.leading_zeros();
    let sub = (micros >> (exp - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    LINEAR as usize + ((exp - SUB_BITS - 1) as usize) * (1 << SUB_BITS) as usize + sub as usize
}

/// The midpoint of bucket `i`, in milliseconds.
pub fn bucket_value_ms(i: usize) -> f64 {
    if i < LINEAR as usize {
        return (i as f64 + 0.5) / 1000.0;
    }
    let j = i - LINEAR as usize;
    let per = 1usize << SUB_BITS;
    let exp = (j / per) as u32 + SUB_BITS + 1;
    let sub = (j % per) as u64;
    let width = 1u64 << (exp - SUB_BITS);
    let lower = ((1u64 << SUB_BITS) + sub) * width;
    (lower as f64 + width as f64 / 2.0) / 1000.0
}

/// One version's counters (they only grow). The request count is the sum
/// of the latency buckets less the abandoned requests.
#[derive(Debug)]
pub struct VersionWindow {
    errors: AtomicU64,
    /// Requests dropped before any answer (the client gave up): latency
    /// samples, but neither successes nor errors.
    abandoned: AtomicU64,
    latency: Box<[AtomicU64]>,
}

impl Default for VersionWindow {
    fn default() -> Self {
        VersionWindow {
            errors: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            latency: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl VersionWindow {
    /// Records one request answered with `status` after `elapsed` (to the
    /// answer's head). Errors are 5xx answers: the upstream's, and the
    /// gateway's own 502/503/504 for this version. A request the client
    /// broke before any answer is not recorded at all (see the proxy's
    /// `Completion`).
    #[inline]
    pub fn record(&self, status: u16, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency[bucket(micros)].fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            // After the bucket: a reader that sees the error sees the request.
            self.errors.fetch_add(1, Ordering::Release);
        }
    }

    /// Records a request dropped before any answer after waiting
    /// `elapsed` (its client gave up, or the shutdown's grace ran out): a
    /// latency sample, so that a version too slow for its clients shows in
    /// the p99, but no request, neither a success nor an error.
    #[inline]
    pub fn record_abandoned(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency[bucket(micros)].fetch_add(1, Ordering::Relaxed);
        // After the bucket, like an error.
        self.abandoned.fetch_add(1, Ordering::Release);
    }

    /// The counters now.
    pub fn read(&self) -> Counts {
        // Errors and abandoned requests first: each is then always in the
        // buckets read after it.
        let errors = self.errors.load(Ordering::Acquire);
        let abandoned = self.abandoned.load(Ordering::Acquire);
        let latency: Vec<u64> = self
            .latency
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        Counts {
            requests: latency.iter().sum::<u64>().saturating_sub(abandoned),
            errors,
            latency,
        }
    }
}

/// A reading of a version's counters, or the difference of two.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Counts {
    /// Requests answered (abandoned ones are latency samples only).
    pub requests: u64,
    pub errors: u64,
    /// Samples per latency bucket (see [`bucket`]).
    pub latency: Vec<u64>,
}

impl Counts {
    /// What was counted between `earlier` and `self`.
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            latency: self
                .latency
                .iter()
                .enumerate()
                .map(|(i, c)| c.saturating_sub(earlier.latency.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }
}

/// The counters of every version of one gateway, kept across snapshot
/// builds while the version is in the config (or in the running rollout,
/// see [`Windows::retain`]).
#[derive(Debug, Default)]
pub struct Windows {
    by_version: Mutex<BTreeMap<String, Arc<VersionWindow>>>,
}

impl Windows {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<VersionWindow>>> {
        self.by_version.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counters of `version`, made on first use.
    pub fn get_or_create(&self, version: &str) -> Arc<VersionWindow> {
        self.lock().entry(version.to_string()).or_default().clone()
    }

    /// A reading of `version`'s counters (zeros for a version it has no
    /// counters of). A reading makes none: the driver reads a rollout's
    /// versions, which this gateway's config may not have.
    pub fn read(&self, version: &str) -> Counts {
        match self.lock().get(version) {
            Some(window) => window.read(),
            None => Counts {
                latency: vec![0; BUCKETS],
                ..Counts::default()
            },
        }
    }

    /// Frees the counters of the versions `keep` refuses (a reload removed
    /// them: each costs a few KB, and teams name every release's canary
    /// differently). The caller keeps those of the running rollout: its
    /// windows hold readings of these very counters, and fresh ones would
    /// read lower (no evidence until they caught up). A version that comes
    /// back later starts from zeros, which only a window begun before its
    /// removal could mistake; no rollout runs on it then.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().retain(|name, _| keep(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_fine() {
        let mut last = 0;
        for micros in [
            0u64,
            1,
            31,
            32,
            33,
            47,
            48,
            63,
            64,
            100,
            1000,
            12_345,
            1 << 30,
            u64::MAX,
        ] {
            let b = bucket(micros);
            assert!(b >= last, "{micros}");
            assert!(b < BUCKETS, "{micros}");
            last = b;
        }
        // The midpoint is within 6.25% of any value of its bucket.
        for micros in [40u64, 100, 999, 5_000, 123_456, 9_999_999] {
            let mid = bucket_value_ms(bucket(micros)) * 1000.0;
            assert!(
                (mid - micros as f64).abs() / micros as f64 <= 0.0625,
                "{micros} -> {mid}"
            );
        }
        assert_eq!(bucket_value_ms(bucket(7)), 0.0075);
    }

    #[test]
    fn windows_count_errors_and_subtract() {
        let windows = Windows::default();
        let w = windows.get_or_create("v2");
        w.record(200, Duration::from_millis(3));
        let before = windows.read("v2");
        w.record(503, Duration::from_millis(40));
        w.record(404, Duration::from_millis(2));
        let window = windows.read("v2").since(&before);
        assert_eq!((window.requests, window.errors), (2, 1));
        assert_eq!(window.latency.iter().sum::<u64>(), 2);
        assert_eq!(windows.read("other").requests, 0);
    }

    #[test]
    fn removed_versions_counters_are_freed_and_reads_make_none() {
        let windows = Windows::default();
        for name in ["v1", "v2", "c1"] {
            windows
                .get_or_create(name)
                .record(200, Duration::from_millis(1));
        }
        assert_eq!(windows.read("gone").latency.len(), BUCKETS);
        windows.retain(|name| name != "c1");
        let kept: Vec<String> = windows.lock().keys().cloned().collect();
        assert_eq!(kept, ["v1", "v2"], "reads make no counters; c1 freed");
        assert_eq!(windows.read("v2").requests, 1, "the others keep theirs");
        assert_eq!(windows.read("c1").requests, 0);
        // Back in the config: fresh counters from zero.
        windows
            .get_or_create("c1")
            .record(200, Duration::from_millis(1));
        assert_eq!(windows.read("c1").requests, 1);
    }

    #[test]
    fn abandoned_requests_are_latency_samples_only() {
        let windows = Windows::default();
        let w = windows.get_or_create("slow");
        w.record(200, Duration::from_millis(3));
        let before = windows.read("slow");
        w.record(200, Duration::from_millis(3));
        w.record_abandoned(Duration::from_secs(30));
        w.record_abandoned(Duration::from_secs(30));
        let window = windows.read("slow").since(&before);
        assert_eq!((window.requests, window.errors), (1, 0));
        assert_eq!(window.latency.iter().sum::<u64>(), 3);
        let p99 = crate::rollout::analysis::quantile_ms(&window.latency, 0.99);
        assert!(p99 > 25_000.0, "{p99}");
    }
}
