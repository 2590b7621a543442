//! Logging, the Prometheus recorder, and the dashboard's own time series
//! ([`series`]) and audit log ([`audit`]).

pub mod audit;
pub mod histogram;
pub mod series;

use std::sync::{Arc, OnceLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::config::LogFormat;
use crate::metrics as names;
use histogram::Histograms;

/// Request duration buckets, in seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0,
];

/// The Prometheus exporter, with the request-duration histogram kept in
/// fixed buckets of our own ([`histogram`]) instead of the exporter's sample
/// queue: that one is recorded on every request.
struct Recorder {
    prometheus: PrometheusRecorder,
    histograms: Arc<Histograms>,
}

impl metrics::Recorder for Recorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_counter(key, unit, description)
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_gauge(key, unit, description)
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_histogram(key, unit, description)
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.prometheus.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.prometheus.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        if key.name() == names::REQUEST_DURATION_SECONDS {
            Histogram::from_arc(self.histograms.get_or_create(key, &DURATION_BUCKETS))
        } else {
            self.prometheus.register_histogram(key, metadata)
        }
    }
}

/// Renders every metric of the process in the Prometheus text format.
#[derive(Clone)]
pub struct MetricsHandle {
    prometheus: PrometheusHandle,
    histograms: Arc<Histograms>,
}

impl MetricsHandle {
    pub fn render(&self) -> String {
        let mut text = self.prometheus.render();
        self.histograms.render_into(&mut text);
        text
    }

    /// The exporter's periodic housekeeping (its own histograms, if any).
    pub fn run_upkeep(&self) {
        self.prometheus.run_upkeep();
    }
}

/// Installs the process-wide Prometheus recorder once and returns its handle.
/// Must run before the first snapshot is built, so that the handles the
/// snapshot registers are real.
pub fn metrics_handle() -> MetricsHandle {
    static HANDLE: OnceLock<MetricsHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let prometheus = PrometheusBuilder::new().build_recorder();
            let handle = MetricsHandle {
                prometheus: prometheus.handle(),
                histograms: Arc::new(Histograms::default()),
            };
            let recorder = Recorder {
                prometheus,
                histograms: handle.histograms.clone(),
            };
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            handle
        })
        .clone()
}

/// Sets up `tracing` output: text or JSON, filtered by `level` unless
/// RUST_LOG says otherwise. Safe to call more than once.
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref(), level);
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The log filter: RUST_LOG's directives (`env`) if they parse, else
/// `level`. rustls is held to errors unless the filter names it: its
/// warnings are about what one peer sent (an IP address as SNI, which
/// wrk and many clients do; an alert), a line per connection that says
/// nothing to the operator and costs a write per handshake.
pub fn log_filter(env: Option<&str>, level: &str) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    let parsed = |spec: &str| EnvFilter::try_new(spec).ok().map(|f| (spec.to_owned(), f));
    let (spec, filter) = env
        .and_then(parsed)
        .or_else(|| parsed(level))
        .unwrap_or_else(|| ("info".to_owned(), EnvFilter::new("info")));
    if spec.contains("rustls") {
        return filter;
    }
    match "rustls=error".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}
