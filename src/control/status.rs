//! Control path: the read-only views the admin API serves (JSON shapes).

use std::collections::BTreeMap;

use std::sync::atomic::Ordering;

use serde::Serialize;

use super::{Control, publish_endpoint_gauges, view};
use crate::metrics as names;
use crate::store::unix_ms;

/// `GET /weights` (and the answer to every change).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WeightsView {
    pub stable: String,
    pub weights: BTreeMap<String, u32>,
    pub generation: u64,
    /// When the decision in force was made (ms since the Unix epoch).
    pub updated_at_ms: u64,
    /// Which path made it: config, admin, reload, store, rollout.
    pub source: String,
}

/// One endpoint in `GET /status`.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointStatus {
    pub address: String,
    /// `healthy`, or `ejected` while in an ejection period.
    pub health: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejected_for_ms: Option<u64>,
    pub outstanding: u32,
}

/// Where a version's endpoints come from and how fresh they are.
#[derive(Debug, Clone, Serialize, Default)]
pub struct DiscoveryStatus {
    /// `static` or `cloudmap:<namespace>/<service>`.
    pub source: String,
    /// Seconds since the last successful discovery (None: never, or static).
    pub age_seconds: Option<f64>,
    pub last_error: Option<String>,
    pub consecutive_errors: u64,
}

/// One version in `GET /status`.
#[derive(Debug, Clone, Serialize)]
pub struct VersionStatus {
    pub name: String,
    pub weight: u32,
    pub stable: bool,
    pub endpoints: Vec<EndpointStatus>,
    pub discovery: DiscoveryStatus,
}

/// The result of the last config reload.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    pub ok: bool,
    /// What started it: sighup, file-change, admin.
    pub trigger: String,
    pub at_ms: u64,
    pub message: String,
    /// Changed settings that only take effect after a restart.
    pub restart_required: Vec<String>,
}

/// The weight store's health.
#[derive(Debug, Clone, Serialize, Default)]
pub struct StoreStatus {
    pub kind: String,
    pub last_ok_ms: Option<u64>,
    pub last_error: Option<String>,
}

/// App Mesh route sync's health.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AppMeshStatus {
    pub route: String,
    pub last_ok_ms: Option<u64>,
    pub last_error: Option<String>,
    /// The weights last written to the route (0-100).
    pub synced_weights: Option<BTreeMap<String, u32>>,
}

/// `GET /status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_ready_reason: Option<String>,
    pub draining: bool,
    pub weights: WeightsView,
    pub versions: Vec<VersionStatus>,
    /// The config file in force.
    pub config_source: String,
    pub last_reload: Option<ReloadStatus>,
    pub store: StoreStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub appmesh: Option<AppMeshStatus>,
    pub uptime_seconds: f64,
}

impl Control {
    /// Refreshes the gauges that change without a snapshot swap (endpoint
    /// health after ejections); called before every scrape.
    pub fn publish_gauges(&self) {
        publish_endpoint_gauges(&self.snapshot.load());
        let state = self.lock();
        for (version, (_, last_ok)) in &state.discovery {
            if let Some(at) = last_ok {
                metrics::gauge!(names::DISCOVERY_AGE_SECONDS, "version" => version.clone())
                    .set(at.elapsed().as_secs_f64());
            }
        }
    }

    /// Marks the listener as bound.
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::SeqCst);
    }

    /// From now on /readyz answers 503.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// `Ok` when the gateway serves; otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("draining: shutting down".into());
        }
        if !self.listening.load(Ordering::SeqCst) {
            return Err("the listener is not bound yet".into());
        }
        let snapshot = self.snapshot.load();
        let stable = snapshot.stable_version();
        if stable.endpoints.is_empty() {
            let source = self
                .lock()
                .discovery
                .get(&stable.name)
                .map(|(d, _)| d.source.clone())
                .unwrap_or_default();
            return Err(format!(
                "the stable version `{}` has no endpoints yet ({source})",
                stable.name
            ));
        }
        Ok(())
    }

    /// Records the App Mesh sync's outcome for /status.
    pub fn appmesh_synced(&self, result: Result<BTreeMap<String, u32>, String>) {
        let mut state = self.lock();
        if let Some(a) = state.appmesh.as_mut() {
            match result {
                Ok(w) => {
                    a.last_ok_ms = Some(unix_ms());
                    a.last_error = None;
                    a.synced_weights = Some(w);
                }
                Err(e) => a.last_error = Some(e),
            }
        }
    }

    /// `GET /status`.
    pub fn status(&self) -> Status {
        let readiness = self.readiness();
        let snapshot = self.snapshot.load_full();
        let state = self.lock();
        let versions = snapshot
            .versions
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let (mut discovery, last_ok) =
                    state.discovery.get(&v.name).cloned().unwrap_or_default();
                discovery.age_seconds = last_ok.map(|t| t.elapsed().as_secs_f64());
                VersionStatus {
                    name: v.name.clone(),
                    weight: v.weight,
                    stable: i == snapshot.stable,
                    endpoints: v
                        .endpoints
                        .iter()
                        .map(|e| EndpointStatus {
                            address: e.addr().to_string(),
                            health: if e.is_ejected() { "ejected" } else { "healthy" },
                            ejected_for_ms: e.ejected_for_ms(),
                            outstanding: e.outstanding(),
                        })
                        .collect(),
                    discovery,
                }
            })
            .collect();
        Status {
            ready: readiness.is_ok(),
            not_ready_reason: readiness.err(),
            draining: self.is_draining(),
            weights: view(&state.decision),
            versions,
            config_source: state.config.source_label(),
            last_reload: state.last_reload.clone(),
            store: state.store.clone(),
            appmesh: state.appmesh.clone(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
        }
    }
}
