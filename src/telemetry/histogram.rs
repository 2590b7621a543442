//! Fixed-bucket histograms for the per-request duration.
//!
//! The Prometheus exporter queues every histogram sample until its next
//! upkeep, then sorts them into buckets: an allocation-prone queue on the
//! request path and a burst of work every second. Here recording a sample is
//! a bucket search and two relaxed atomic additions, and rendering reads the
//! counters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{HistogramFn, Key};

/// One histogram: cumulative counts per upper bound, plus the sum.
#[derive(Debug)]
pub struct FixedHistogram {
    bounds: &'static [f64],
    /// `counts[i]`: samples in `(bounds[i-1], bounds[i]]`; the last slot is +Inf.
    counts: Box<[AtomicU64]>,
    /// The sum of the samples, in nanoseconds (seconds * 1e9, rounded).
    sum_nanos: AtomicU64,
}

impl FixedHistogram {
    pub fn new(bounds: &'static [f64]) -> FixedHistogram {
        FixedHistogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// The count of samples at or below each bound, then the total, and the sum.
    pub fn read(&self) -> (Vec<u64>, f64) {
        let mut cumulative = 0;
        let counts = self
            .counts
            .iter()
            .map(|c| {
                cumulative += c.load(Ordering::Relaxed);
                cumulative
            })
            .collect();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (counts, sum)
    }
}

impl HistogramFn for FixedHistogram {
    #[inline]
    fn record(&self, value: f64) {
        // NaN and negative samples count in the first bucket and add nothing.
        let value = if value.is_finite() {
            value.max(0.0)
        } else {
            0.0
        };
        let slot = self.bounds.partition_point(|b| *b < value);
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add((value * 1e9) as u64, Ordering::Relaxed);
    }
}

/// The fixed histograms, by metric key, for rendering.
#[derive(Debug, Default)]
pub struct Histograms {
    by_key: Mutex<BTreeMap<Key, Arc<FixedHistogram>>>,
}

impl Histograms {
    /// The histogram of `key`, made on first use (the same one afterwards, so
    /// that re-registering on every snapshot build keeps the counts).
    pub fn get_or_create(&self, key: &Key, bounds: &'static [f64]) -> Arc<FixedHistogram> {
        let mut by_key = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        by_key
            .entry(key.clone())
            .or_insert_with(|| Arc::new(FixedHistogram::new(bounds)))
            .clone()
    }

    /// Appends the histograms in the Prometheus text format, but those of
    /// versions `known` refuses (removed by a reload). Those are kept, not
    /// freed: an older snapshot may still hold the handle, and a version
    /// added back resumes its counts (about 150 bytes a name).
    pub fn render_into(&self, out: &mut String, known: &impl Fn(&str) -> bool) {
        let by_key = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        let mut last_name = "";
        let shown = by_key.iter().filter(|(key, _)| {
            key.labels()
                .all(|label| label.key() != "version" || known(label.value()))
        });
        for (key, histogram) in shown {
            let name = key.name();
            if name != last_name {
                let _ = writeln!(out, "# TYPE {name} histogram");
                last_name = name;
            }
            let mut labels = String::new();
            for label in key.labels() {
                let _ = write!(labels, "{}=\"{}\",", label.key(), escape(label.value()));
            }
            let (counts, sum) = histogram.read();
            for (bound, count) in histogram.bounds.iter().zip(&counts) {
                let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {count}");
            }
            let total = counts.last().copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {total}");
            let labels = labels.trim_end_matches(',');
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
        }
    }
}

/// A label value escaped for the text format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    static BOUNDS: [f64; 3] = [0.001, 0.01, 0.1];

    #[test]
    fn samples_land_in_cumulative_buckets_and_render() {
        let histograms = Histograms::default();
        let key = Key::from_parts("d_seconds", vec![metrics::Label::new("version", "v\"1")]);
        let h = histograms.get_or_create(&key, &BOUNDS);
        for v in [0.0005, 0.001, 0.005, 0.05, 3.0, f64::NAN] {
            h.record(v);
        }
        assert!(Arc::ptr_eq(&h, &histograms.get_or_create(&key, &BOUNDS)));
        let (counts, sum) = h.read();
        assert_eq!(counts, vec![3, 4, 5, 6]);
        assert!((sum - 3.0565).abs() < 1e-6, "{sum}");
        let other = Key::from_parts("d_seconds", vec![metrics::Label::new("version", "gone")]);
        histograms.get_or_create(&other, &BOUNDS).record(0.5);
        let mut text = String::new();
        histograms.render_into(&mut text, &|v: &str| v != "gone");
        assert!(!text.contains("gone"), "{text}");
        assert!(text.starts_with("# TYPE d_seconds histogram\n"), "{text}");
        assert!(
            text.contains("d_seconds_bucket{version=\"v\\\"1\",le=\"0.01\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("d_seconds_bucket{version=\"v\\\"1\",le=\"+Inf\"} 6\n"),
            "{text}"
        );
        assert!(
            text.contains("d_seconds_count{version=\"v\\\"1\"} 6\n"),
            "{text}"
        );
        assert!(
            text.contains("d_seconds_sum{version=\"v\\\"1\"} 3.0565"),
            "{text}"
        );
    }
}
