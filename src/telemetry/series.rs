//! Per-version time series for the dashboard: one sample a second over the
//! last 15 minutes (requests, errors, p50, p99, weight, actual share), kept by
//! the gateway itself so the page works without Prometheus.
//!
//! The data path only bumps relaxed atomics ([`VersionRecorder::record`], one
//! call where a request's metrics are recorded); a sampler thread folds them
//! into each version's ring once a second. Like the Prometheus registry, the
//! series are process-wide and keyed by version name: a version keeps its
//! history across snapshot swaps and reloads.
//!
//! A gateway holds a [`Presence`] for each version of its config. When the
//! last one is let go (a reload removed the version), the version's weight
//! becomes 0 and its track ages out: it stays while its history is in the
//! window (the dashboard shows what it did before the removal), and once it
//! has been out for a whole ring ([`SAMPLES`] folds) it is dropped. Teams name
//! each release's canary differently, so a track per name ever seen would
//! grow without bound. A version added back before that keeps its track.
//!
//! Size: [`SAMPLES`] samples of 28 bytes, about 25 KB per version in the
//! config or removed less than 15 minutes ago.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;

/// Samples kept per version: 15 minutes at one a second.
pub const SAMPLES: usize = 900;

/// Upper bounds of the latency buckets, in microseconds (the last bucket is
/// everything above). p50/p99 are interpolated inside a bucket.
const BOUNDS_US: [u32; 31] = [
    100, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000,
    30_000, 50_000, 75_000, 100_000, 150_000, 200_000, 300_000, 500_000, 750_000, 1_000_000,
    1_500_000, 2_000_000, 3_000_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];
const BUCKETS: usize = BOUNDS_US.len() + 1;
/// A latency that no sample had (an empty second).
const NONE: u32 = u32::MAX;

/// What the data path counts for one version during the current second.
#[derive(Debug, Default)]
pub struct VersionRecorder {
    requests: AtomicU64,
    /// 5xx answers: the upstream's and the gateway's own 502/503/504 (a
    /// client's 4xx is not the version's error).
    errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
    /// The weight in force, set when a snapshot is built.
    weight: AtomicU32,
}

impl VersionRecorder {
    /// Counts one finished request: a few relaxed atomic additions.
    #[inline]
    pub fn record(&self, status: http::StatusCode, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status.is_server_error() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let us = u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX);
        let slot = BOUNDS_US.partition_point(|b| *b < us);
        self.latency[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// The weight now in force (control path, at snapshot build).
    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
    }

    /// Takes the counts of the second that just ended.
    fn take(&self) -> (u32, u32, [u64; BUCKETS], u32) {
        let requests = self.requests.swap(0, Ordering::Relaxed);
        let errors = self.errors.swap(0, Ordering::Relaxed);
        let latency = std::array::from_fn(|i| self.latency[i].swap(0, Ordering::Relaxed));
        let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        (
            clamp(requests),
            clamp(errors),
            latency,
            self.weight.load(Ordering::Relaxed),
        )
    }
}

/// The latency at quantile `q` (0..1) of bucket counts, in microseconds,
/// interpolated linearly inside its bucket; [`NONE`] with no samples.
fn quantile_us(counts: &[u64; BUCKETS], q: f64) -> u32 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return NONE;
    }
    let rank = (q * total as f64).max(1.0);
    let mut below = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        if c > 0 && (below + c) as f64 >= rank {
            let lo = if i == 0 { 0 } else { BOUNDS_US[i - 1] };
            let Some(&hi) = BOUNDS_US.get(i) else {
                return lo; // above the last bound: report the bound
            };
            let within = (rank - below as f64) / c as f64;
            return lo + ((hi - lo) as f64 * within).round() as u32;
        }
        below += c;
    }
    NONE
}

/// One second of one version.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    /// Unix time of the end of the second, in seconds.
    t: u32,
    requests: u32,
    errors: u32,
    p50_us: u32,
    p99_us: u32,
    weight: u32,
    /// This version's share of the second's requests, in basis points.
    share_bp: u16,
}

/// One version's recorder and its ring of samples.
struct Track {
    recorder: Arc<VersionRecorder>,
    ring: VecDeque<Sample>,
    /// The [`Presence`]s of this version (gateways whose config has it).
    holders: u32,
    /// Folds since the last [`Presence`] was let go; `None` while held, or
    /// never held (a snapshot built outside a gateway, in tests).
    out_for: Option<u32>,
}

impl Track {
    fn new() -> Track {
        Track {
            recorder: Arc::default(),
            ring: VecDeque::with_capacity(SAMPLES),
            holders: 0,
            out_for: None,
        }
    }

    /// Counts one more fold out of every config; false once the track has
    /// been out for a whole ring (nothing in it from before the removal).
    fn age(&mut self) -> bool {
        match &mut self.out_for {
            None => true,
            Some(folds) => {
                *folds = folds.saturating_add(1);
                (*folds as usize) < SAMPLES
            }
        }
    }
}

/// A gateway's claim that a version is in its config (see the module
/// docs): while one is held, the version's track is kept; letting go of the
/// last one sets its weight to 0 and starts its ageing out.
pub struct Presence<'a> {
    series: &'a Series,
    version: String,
}

impl std::fmt::Debug for Presence<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Presence").field(&self.version).finish()
    }
}

impl Drop for Presence<'_> {
    fn drop(&mut self) {
        let mut tracks = self.series.lock();
        let Some(track) = tracks.get_mut(&self.version) else {
            return;
        };
        track.holders = track.holders.saturating_sub(1);
        if track.holders == 0 {
            track.recorder.set_weight(0);
            track.out_for = Some(0);
        }
    }
}

/// Every version's series.
#[derive(Default)]
pub struct Series {
    tracks: Mutex<BTreeMap<String, Track>>,
}

/// `GET /ui/series`: columns of samples per version, oldest first.
#[derive(Debug, Serialize, PartialEq)]
pub struct SeriesView {
    pub interval_s: u32,
    pub window_s: u32,
    pub versions: Vec<VersionSeries>,
}

/// One version's samples, as columns (compact JSON).
#[derive(Debug, Serialize, PartialEq)]
pub struct VersionSeries {
    pub name: String,
    /// Unix seconds at the end of each sample's second.
    pub t: Vec<u32>,
    pub requests: Vec<u32>,
    /// 5xx answers (upstream and the gateway's own 502/503/504).
    pub errors: Vec<u32>,
    /// Median latency in ms; null in a second without requests.
    pub p50_ms: Vec<Option<f64>>,
    pub p99_ms: Vec<Option<f64>>,
    pub weight: Vec<u32>,
    /// Share of the second's requests (0..1) that went to this version.
    pub share: Vec<f64>,
}

impl Series {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Track>> {
        self.tracks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The recorder of `version`, made on first use (the same afterwards,
    /// while its track is kept).
    pub fn recorder(&self, version: &str) -> Arc<VersionRecorder> {
        let mut tracks = self.lock();
        tracks
            .entry(version.to_string())
            .or_insert_with(Track::new)
            .recorder
            .clone()
    }

    /// Claims `version` for a gateway's config until the [`Presence`] is
    /// dropped: its track is kept (made if need be) and stops ageing out.
    pub fn hold(&self, version: &str) -> Presence<'_> {
        let mut tracks = self.lock();
        let track = tracks.entry(version.to_string()).or_insert_with(Track::new);
        track.holders = track.holders.saturating_add(1);
        track.out_for = None;
        Presence {
            series: self,
            version: version.to_string(),
        }
    }

    /// Closes the second ending at unix time `t`: every version's counts
    /// become one sample, the oldest beyond [`SAMPLES`] is dropped, and a
    /// track out of every config for a whole ring is dropped.
    pub fn fold(&self, t: u32) {
        let mut tracks = self.lock();
        let taken: Vec<_> = tracks.values().map(|tr| tr.recorder.take()).collect();
        let total: u64 = taken.iter().map(|(r, ..)| u64::from(*r)).sum();
        for (track, (requests, errors, latency, weight)) in tracks.values_mut().zip(taken) {
            let share_bp = (u64::from(requests) * 10_000)
                .checked_div(total)
                .map_or(0, |bp| bp as u16);
            if track.ring.len() == SAMPLES {
                track.ring.pop_front();
            }
            track.ring.push_back(Sample {
                t,
                requests,
                errors,
                p50_us: quantile_us(&latency, 0.50),
                p99_us: quantile_us(&latency, 0.99),
                weight,
                share_bp,
            });
        }
        tracks.retain(|_, track| track.age());
    }

    /// The samples after unix time `since` (all with 0).
    pub fn view(&self, since: u32) -> SeriesView {
        let tracks = self.lock();
        let ms = |us: u32| (us != NONE).then(|| f64::from(us) / 1000.0);
        let versions = tracks
            .iter()
            .map(|(name, track)| {
                let samples: Vec<&Sample> = track.ring.iter().filter(|s| s.t > since).collect();
                VersionSeries {
                    name: name.clone(),
                    t: samples.iter().map(|s| s.t).collect(),
                    requests: samples.iter().map(|s| s.requests).collect(),
                    errors: samples.iter().map(|s| s.errors).collect(),
                    p50_ms: samples.iter().map(|s| ms(s.p50_us)).collect(),
                    p99_ms: samples.iter().map(|s| ms(s.p99_us)).collect(),
                    weight: samples.iter().map(|s| s.weight).collect(),
                    share: samples
                        .iter()
                        .map(|s| f64::from(s.share_bp) / 10_000.0)
                        .collect(),
                }
            })
            .collect();
        SeriesView {
            interval_s: 1,
            window_s: SAMPLES as u32,
            versions,
        }
    }
}

/// Unix time in whole seconds.
fn unix_s() -> u32 {
    u32::try_from(crate::store::unix_ms() / 1000).unwrap_or(u32::MAX)
}

/// The process's series; the first call starts the sampler thread, which
/// folds the counts at every whole second (a thread, not a task: it outlives
/// any one runtime and costs one wake-up a second).
pub fn global() -> &'static Series {
    static SERIES: OnceLock<Series> = OnceLock::new();
    static SAMPLER: OnceLock<()> = OnceLock::new();
    let series = SERIES.get_or_init(Series::default);
    SAMPLER.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("canary-series".into())
            .spawn(move || {
                loop {
                    let ms = crate::store::unix_ms();
                    std::thread::sleep(Duration::from_millis(1000 - ms % 1000));
                    series.fold(unix_s());
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the time-series sampler; /ui/series stays empty");
        }
    });
    series
}

/// The recorder of `version` in the process's series.
pub fn recorder(version: &str) -> Arc<VersionRecorder> {
    global().recorder(version)
}

/// Claims `version` in the process's series (see [`Series::hold`]).
pub fn hold(version: &str) -> Presence<'static> {
    global().hold(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn a_second_becomes_one_sample_per_version_with_shares_and_quantiles() {
        let series = Series::default();
        let stable = series.recorder("v1");
        let canary = series.recorder("v2");
        assert!(Arc::ptr_eq(&stable, &series.recorder("v1")));
        stable.set_weight(90);
        canary.set_weight(10);
        for i in 0..90u64 {
            stable.record(StatusCode::OK, Duration::from_micros(900 + i));
        }
        for _ in 0..8 {
            canary.record(StatusCode::OK, Duration::from_millis(40));
        }
        canary.record(StatusCode::BAD_GATEWAY, Duration::from_millis(40));
        canary.record(StatusCode::NOT_FOUND, Duration::from_millis(40));
        series.fold(1000);
        series.fold(1001); // an idle second

        let view = series.view(0);
        let v1 = &view.versions[0];
        let v2 = &view.versions[1];
        assert_eq!((v1.name.as_str(), v2.name.as_str()), ("v1", "v2"));
        assert_eq!(v1.t, vec![1000, 1001]);
        assert_eq!(v1.requests, vec![90, 0]);
        assert_eq!(v2.requests, vec![10, 0]);
        assert_eq!(v2.errors, vec![1, 0], "a 404 is the client's, not an error");
        assert_eq!(v1.share[0], 0.9);
        assert_eq!(v2.share[0], 0.1);
        assert_eq!(v1.weight, vec![90, 90]);
        assert_eq!(v2.weight, vec![10, 10]);
        let p50 = v1.p50_ms[0].unwrap();
        assert!((0.75..=1.0).contains(&p50), "{p50}");
        let p99 = v2.p99_ms[0].unwrap();
        assert!((30.0..=50.0).contains(&p99), "{p99}");
        assert_eq!(v1.p50_ms[1], None, "no requests, no latency");

        let newer = series.view(1000);
        assert_eq!(newer.versions[0].t, vec![1001]);
    }

    #[test]
    fn the_ring_keeps_the_last_fifteen_minutes() {
        let series = Series::default();
        let r = series.recorder("v1");
        for t in 0..(SAMPLES as u32 + 50) {
            r.record(StatusCode::OK, Duration::from_millis(1));
            series.fold(t);
        }
        let view = series.view(0);
        assert_eq!(view.versions[0].t.len(), SAMPLES);
        assert_eq!(view.versions[0].t[0], 50);
    }

    /// The names in a view, in order.
    fn names(series: &Series) -> Vec<String> {
        series
            .view(0)
            .versions
            .into_iter()
            .map(|v| v.name)
            .collect()
    }

    #[test]
    fn a_removed_version_weighs_0_and_ages_out_after_a_whole_ring() {
        let series = Series::default();
        let stable = series.hold("v1");
        let canary = series.hold("v3");
        series.recorder("v1").set_weight(90);
        series.recorder("v3").set_weight(10);
        series
            .recorder("v3")
            .record(StatusCode::OK, Duration::from_millis(1));
        series.fold(1);
        drop(canary); // a reload removed v3
        series.fold(2);
        let view = series.view(0);
        let v3 = &view.versions[1];
        assert_eq!(v3.name, "v3");
        assert_eq!(v3.weight, vec![10, 0], "weight 0 once out of the config");
        assert_eq!(v3.share, vec![1.0, 0.0]);
        assert_eq!(v3.requests, vec![1, 0], "its history is kept meanwhile");
        // Out for one fold; one fewer than a ring's worth more keeps it.
        for t in 3..(SAMPLES as u32 + 1) {
            series.fold(t);
        }
        assert_eq!(names(&series), ["v1", "v3"]);
        series.fold(SAMPLES as u32 + 1);
        assert_eq!(names(&series), ["v1"], "out for a whole ring: dropped");
        assert_eq!(series.lock().len(), 1, "and its memory with it");
        drop(stable);
    }

    #[test]
    fn a_version_added_back_within_the_window_keeps_its_track() {
        let series = Series::default();
        let _stable = series.hold("v1");
        let first = series.hold("v3");
        let recorder = series.recorder("v3");
        recorder.set_weight(10);
        recorder.record(StatusCode::OK, Duration::from_millis(1));
        series.fold(1);
        drop(first);
        for t in 2..(SAMPLES as u32 - 10) {
            series.fold(t);
        }
        let _again = series.hold("v3"); // re-added by a reload
        series.recorder("v3").set_weight(20);
        for t in (SAMPLES as u32 - 10)..(3 * SAMPLES as u32) {
            series.fold(t);
        }
        assert!(Arc::ptr_eq(&recorder, &series.recorder("v3")));
        let view = series.view(0);
        let v3 = &view.versions[1];
        assert_eq!(v3.name, "v3");
        assert_eq!(v3.t.len(), SAMPLES);
        assert_eq!(v3.weight.last(), Some(&20));
    }

    #[test]
    fn a_version_two_gateways_hold_stays_until_both_let_go() {
        let series = Series::default();
        let a = series.hold("shared");
        let b = series.hold("shared");
        series.recorder("shared").set_weight(5);
        drop(a);
        for t in 0..(2 * SAMPLES as u32) {
            series.fold(t);
        }
        assert_eq!(series.view(0).versions[0].weight.last(), Some(&5));
        drop(b);
        for t in 0..(SAMPLES as u32) {
            series.fold(t);
        }
        assert!(names(&series).is_empty());
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let mut counts = [0u64; BUCKETS];
        assert_eq!(quantile_us(&counts, 0.5), NONE);
        counts[BUCKETS - 1] = 1;
        assert_eq!(quantile_us(&counts, 0.99), 60_000_000);
        let mut counts = [0u64; BUCKETS];
        counts[1] = 100; // (100, 200] us
        assert_eq!(quantile_us(&counts, 0.5), 150);
        assert_eq!(quantile_us(&counts, 0.99), 199);
    }
}
