//! Control path: the read-only views the admin API serves (JSON shapes).

use std::collections::BTreeMap;

use serde::Serialize;

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
