//! Stage one of the config: the TOML file as written, with no meaning attached.
//! Every table denies unknown keys so that a typo is an error, not a silent default.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listener: RawListener,
    #[serde(default)]
    pub admin: RawAdmin,
    pub split: RawSplit,
    #[serde(default)]
    pub versions: Vec<RawVersion>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub state: RawState,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub discovery: RawDiscovery,
    #[serde(default)]
    pub aws: RawAws,
    pub appmesh: Option<RawAppMesh>,
    #[serde(default)]
    pub runtime: RawRuntime,
    /// Defaults of `POST /rollout` (checked field by field in `rollout::plan`).
    pub rollout: Option<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub address: String,
    pub trust_forwarded_headers: Option<bool>,
    pub tls: Option<RawListenerTls>,
    pub allow_underscores_in_headers: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    pub cert: String,
    pub key: String,
    pub session_resumption: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub address: Option<String>,
    pub token_env: Option<String>,
    pub token_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSplit {
    pub stable: String,
    pub sticky_header: Option<String>,
    pub override_header: Option<String>,
    pub response_header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVersion {
    pub name: String,
    /// Kept as a raw value so that a negative or fractional weight gets a precise error.
    pub weight: toml::Value,
    pub endpoints: Option<Vec<String>>,
    pub cloudmap: Option<RawCloudMap>,
    /// Upstream TLS: `tls = true`, optional `ca_file` and `server_name`.
    pub tls: Option<bool>,
    pub ca_file: Option<String>,
    pub server_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCloudMap {
    pub namespace: String,
    pub service: String,
    pub health: Option<String>,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    pub port: Option<u16>,
}

/// Durations are written as `"1s"`, `"250ms"`, `"2m"`, or a number of seconds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub upstream_connect: Option<toml::Value>,
    pub upstream_response: Option<toml::Value>,
    pub request_header: Option<toml::Value>,
    pub idle: Option<toml::Value>,
    pub shutdown_grace: Option<toml::Value>,
    pub body_stall: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub eject_after_failures: Option<u32>,
    pub eject_base: Option<toml::Value>,
    pub eject_max: Option<toml::Value>,
    pub max_idle_per_endpoint: Option<usize>,
    pub pool_idle_timeout: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
    pub access_log: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub kind: Option<String>,
    pub service_id: Option<String>,
    pub table: Option<String>,
    pub key: Option<String>,
    pub poll_interval: Option<toml::Value>,
    pub boot_timeout: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    pub stale_after: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAws {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAppMesh {
    pub mesh: String,
    pub virtual_router: String,
    pub route: String,
    pub virtual_nodes: BTreeMap<String, String>,
    pub reconcile_interval: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub worker_threads: Option<usize>,
}
