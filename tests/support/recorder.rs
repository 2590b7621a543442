//! A `metrics` recorder that keeps counters and gauges in memory, for asserting on metrics
//! in tests: `metrics::with_local_recorder(&recorder, || runtime.block_on(...))`
//! on a current-thread runtime.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
    Unit,
};

/// Counters and gauges by name and sorted `label=value` pairs.
#[derive(Debug, Default, Clone)]
pub struct CountingRecorder {
    /// Every counter registered so far.
    counters: Arc<Mutex<BTreeMap<String, Arc<Cell>>>>,
    /// Every gauge registered so far.
    gauges: Arc<Mutex<BTreeMap<String, Arc<GaugeCell>>>>,
}

/// One gauge's value (an `f64`'s bits).
#[derive(Debug, Default)]
struct GaugeCell(AtomicU64);

impl GaugeCell {
    fn update(&self, f: impl Fn(f64) -> f64) {
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |bits| {
                Some(f(f64::from_bits(bits)).to_bits())
            });
    }
}

impl GaugeFn for GaugeCell {
    fn increment(&self, value: f64) {
        self.update(|v| v + value);
    }
    fn decrement(&self, value: f64) {
        self.update(|v| v - value);
    }
    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::SeqCst);
    }
}

/// One counter's value.
#[derive(Debug, Default)]
struct Cell(AtomicU64);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::SeqCst);
    }
}

/// `name{a=1,b=2}` with labels sorted by key.
fn render(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

impl CountingRecorder {
    /// The value of counter `name` with exactly these labels (0 if never touched).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let key = render(name, labels);
        self.counters
            .lock()
            .unwrap()
            .get(&key)
            .map(|c| c.0.load(Ordering::SeqCst))
            .unwrap_or(0)
    }

    /// The value of gauge `name` with exactly these labels (`None` if never
    /// touched).
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let key = render(name, labels);
        self.gauges
            .lock()
            .unwrap()
            .get(&key)
            .map(|g| f64::from_bits(g.0.load(Ordering::SeqCst)))
    }
}

impl Recorder for CountingRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
        let rendered = render(key.name(), &labels);
        let cell = self
            .counters
            .lock()
            .unwrap()
            .entry(rendered)
            .or_default()
            .clone();
        Counter::from_arc(cell)
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
        let rendered = render(key.name(), &labels);
        let cell = self
            .gauges
            .lock()
            .unwrap()
            .entry(rendered)
            .or_default()
            .clone();
        Gauge::from_arc(cell)
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}
