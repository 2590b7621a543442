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
    /// The text format of every metric of the process, but the series of
    /// versions `known` refuses (not in the config: a reload removed them).
    ///
    /// A removed version's series then go stale in Prometheus, as a removed
    /// ECS task's or Envoy cluster's do, instead of staying in every scrape
    /// (teams name each release's canary differently: one name after
    /// another, without bound). Filtered here, at the scrape, not freed: the
    /// snapshots hold their handles, and a version added back resumes its
    /// counters. The exporter's registry keeps their entries (a few KB per
    /// name); its `idle_timeout` would free them but orphan the handles a
    /// snapshot holds, losing a quiet version's increments.
    pub fn render(&self, known: impl Fn(&str) -> bool) -> String {
        let mut text = self.prometheus.render();
        self.histograms.render_into(&mut text, &known);
        retain_known_versions(&text, &known)
    }

    /// The exporter's periodic housekeeping (its own histograms, if any).
    pub fn run_upkeep(&self) {
        self.prometheus.run_upkeep();
    }
}

/// `text` without the sample lines whose `version` label `known` refuses.
/// Comment lines (`# HELP`, `# TYPE`) stay: a family with no samples is
/// valid text format.
fn retain_known_versions(text: &str, known: &impl Fn(&str) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if version_label(line).is_none_or(known) {
            out.push_str(line);
        }
    }
    out
}

/// The value of the `version` label of a sample line, if it has one.
/// Version names are plain (letters, digits, `-`, `_`, `.`: see
/// `config::validate_version_name`), so they are never escaped; the label
/// values before it may be, and are skipped with their escapes.
fn version_label(line: &str) -> Option<&str> {
    if line.starts_with('#') {
        return None;
    }
    let (_, mut rest) = line.split_once('{')?;
    loop {
        let (key, value) = rest.split_once("=\"")?;
        let end = closing_quote(value)?;
        if key.trim_start_matches(',').trim() == "version" {
            return Some(&value[..end]);
        }
        rest = value.get(end + 1..)?;
        if !rest.starts_with(',') {
            return None; // `}`: the last label
        }
    }
}

/// The byte index of the quote that ends a label value (past `\"` and `\\`).
fn closing_quote(value: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, b) in value.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => return Some(i),
            _ => {}
        }
    }
    None
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
            for &(name, label, values) in names::ZEROED {
                for &value in values {
                    metrics::counter!(name, label => value).increment(0);
                }
            }
            for &name in names::ZEROED_PLAIN {
                metrics::counter!(name).increment(0);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_of_unknown_versions_are_left_out() {
        let text = "# HELP r requests\n# TYPE r counter\n\
            r{version=\"v1\",status=\"2xx\"} 3\n\
            r{version=\"v3\",status=\"2xx\"} 4\n\
            r{odd=\"a\\\"version=\\\"v1\",version=\"v3\"} 1\n\
            g{figure=\"p99\",version=\"v3\"} 2\n\
            g{figure=\"p99\",version=\"v2\"} 2\n\
            g{version=\"v30\"} 1\n\
            up 1\n\
            h_bucket{le=\"+Inf\"} 1\n";
        let known = |v: &str| matches!(v, "v1" | "v2");
        let kept = retain_known_versions(text, &known);
        assert_eq!(
            kept,
            "# HELP r requests\n# TYPE r counter\n\
            r{version=\"v1\",status=\"2xx\"} 3\n\
            g{figure=\"p99\",version=\"v2\"} 2\n\
            up 1\n\
            h_bucket{le=\"+Inf\"} 1\n"
        );
    }
}
