//! The one immutable state the data path reads: versions, their weights and
//! endpoints, the precomputed split table and the proxy settings.
//!
//! Only the control path builds snapshots (validating everything first) and
//! swaps them whole; a request `load()`s the current one once and never sees a
//! half-applied change.

pub mod split;

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use metrics::{Counter, Histogram};

use crate::config::{Config, Timeouts, UpstreamConfig, check_total};
use crate::metrics as names;
use crate::proxy::upstream::Endpoint;
use split::SplitTable;

/// Why a snapshot could not be built; the old one stays in service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("unknown version `{0}`")]
    UnknownVersion(String),
    #[error("{0}")]
    Weights(String),
}

/// Status classes a request is counted under.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Upstream error kinds.
pub const ERROR_KINDS: [&str; 4] = ["connect", "timeout", "reset", "no_endpoints"];
/// `timeout` in [`ERROR_KINDS`].
pub const TIMEOUT_KIND: usize = 1;
/// `reset` in [`ERROR_KINDS`].
pub const RESET_KIND: usize = 2;

/// Metric handles of one version, registered once per snapshot build so the hot
/// path only bumps atomics.
#[derive(Debug)]
pub struct VersionMetrics {
    pub requests: [Counter; 5],
    pub duration: Histogram,
    pub errors: [Counter; 4],
    /// The dashboard's per-second series of this version.
    pub series: std::sync::Arc<crate::telemetry::series::VersionRecorder>,
    /// The version's failed requests at warn level: one line a second at
    /// most, per version, so that one version's outage never hides
    /// another's failures (the canary's, say) from the log.
    pub failure_log: crate::proxy::log_limit::LogLimit,
}

impl VersionMetrics {
    fn new(version: &str) -> VersionMetrics {
        let v = version.to_string();
        VersionMetrics {
            requests: STATUS_CLASSES.map(|class| {
                metrics::counter!(names::REQUESTS_TOTAL, "version" => v.clone(), "status" => class)
            }),
            duration: metrics::histogram!(names::REQUEST_DURATION_SECONDS, "version" => v.clone()),
            errors: ERROR_KINDS.map(|kind| {
                metrics::counter!(names::UPSTREAM_ERRORS_TOTAL, "version" => v.clone(), "kind" => kind)
            }),
            series: crate::telemetry::series::recorder(version),
            failure_log: crate::proxy::log_limit::LogLimit::new(),
        }
    }
}

/// One version as the data path sees it.
#[derive(Debug)]
pub struct Version {
    pub name: String,
    /// The name as a header value (for the response header).
    pub header_value: HeaderValue,
    pub weight: u32,
    pub endpoints: Box<[Arc<Endpoint>]>,
    pub metrics: VersionMetrics,
    /// TLS to the upstreams (`tls = true`).
    pub tls: Option<Arc<crate::tls::UpstreamTls>>,
    /// The rollout analysis's counters (kept across snapshot builds).
    pub analysis: Arc<crate::rollout::telemetry::VersionWindow>,
}

/// Settings of the proxy that come from the config file.
#[derive(Debug)]
pub struct ProxySettings {
    pub sticky_header: Option<HeaderName>,
    pub override_header: Option<HeaderName>,
    pub response_header: Option<HeaderName>,
    pub timeouts: Timeouts,
    pub upstream: UpstreamConfig,
    pub access_log: bool,
    pub trust_forwarded_headers: bool,
    /// Keep request header fields whose names contain `_`.
    pub allow_underscores_in_headers: bool,
    /// Upstream TLS by version name.
    pub upstream_tls: BTreeMap<String, Arc<crate::tls::UpstreamTls>>,
}

impl ProxySettings {
    pub fn from_config(config: &Config) -> ProxySettings {
        ProxySettings {
            sticky_header: config.split.sticky_header.clone(),
            override_header: config.split.override_header.clone(),
            response_header: config.split.response_header.clone(),
            timeouts: config.timeouts,
            upstream: config.upstream,
            access_log: config.log.access_log,
            trust_forwarded_headers: config.listener.trust_forwarded_headers,
            allow_underscores_in_headers: config.listener.allow_underscores_in_headers,
            upstream_tls: config
                .versions
                .iter()
                .filter_map(|v| Some((v.name.clone(), v.tls.clone()?)))
                .collect(),
        }
    }
}

/// What the data path reads, immutable once built.
#[derive(Debug)]
pub struct Snapshot {
    /// The weights generation (orders weight decisions across the fleet).
    pub generation: u64,
    /// Index of the stable version in `versions`.
    pub stable: usize,
    pub versions: Box<[Arc<Version>]>,
    pub split: SplitTable,
    pub settings: Arc<ProxySettings>,
}

/// Everything a snapshot is made of, as the control path holds it.
pub struct SnapshotInput<'a> {
    /// Version names in config order.
    pub versions: &'a [String],
    pub stable: &'a str,
    pub weights: &'a BTreeMap<String, u32>,
    pub endpoints: &'a BTreeMap<String, Vec<Arc<Endpoint>>>,
    pub generation: u64,
    pub settings: Arc<ProxySettings>,
    /// The gateway's per-version rollout counters.
    pub windows: &'a crate::rollout::telemetry::Windows,
}

impl Snapshot {
    /// Validates and precomputes a snapshot.
    pub fn build(input: SnapshotInput<'_>) -> Result<Snapshot, SnapshotError> {
        for name in input.weights.keys() {
            if !input.versions.contains(name) {
                return Err(SnapshotError::UnknownVersion(name.clone()));
            }
        }
        let stable = input
            .versions
            .iter()
            .position(|v| v == input.stable)
            .ok_or_else(|| SnapshotError::UnknownVersion(input.stable.to_string()))?;
        let weights: Vec<u32> = input
            .versions
            .iter()
            .map(|v| input.weights.get(v).copied().unwrap_or(0))
            .collect();
        check_total(weights.iter().map(|&w| u64::from(w)).sum()).map_err(SnapshotError::Weights)?;
        let versions = input
            .versions
            .iter()
            .zip(&weights)
            .map(|(name, &weight)| {
                metrics::gauge!(names::VERSION_WEIGHT, "version" => name.clone())
                    .set(f64::from(weight));
                crate::telemetry::series::recorder(name).set_weight(weight);
                Arc::new(Version {
                    name: name.clone(),
                    header_value: HeaderValue::from_str(name)
                        .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
                    weight,
                    endpoints: input
                        .endpoints
                        .get(name)
                        .cloned()
                        .unwrap_or_default()
                        .into(),
                    metrics: VersionMetrics::new(name),
                    tls: input.settings.upstream_tls.get(name).cloned(),
                    analysis: input.windows.get_or_create(name),
                })
            })
            .collect();
        metrics::gauge!(names::GENERATION).set(input.generation as f64);
        Ok(Snapshot {
            generation: input.generation,
            stable,
            split: SplitTable::new(&weights, stable, input.versions),
            versions,
            settings: input.settings,
        })
    }

    /// The version whose name is `name` (for the override header).
    #[inline]
    pub fn version_named(&self, name: &[u8]) -> Option<usize> {
        self.versions.iter().position(|v| v.name.as_bytes() == name)
    }

    pub fn stable_version(&self) -> &Arc<Version> {
        &self.versions[self.stable]
    }

    /// The current weights by version name.
    pub fn weights(&self) -> BTreeMap<String, u32> {
        self.versions
            .iter()
            .map(|v| (v.name.clone(), v.weight))
            .collect()
    }
}
