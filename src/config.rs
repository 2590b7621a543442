//! Control path: the gateway's configuration, in two stages.
//!
//! [`raw`] mirrors the TOML file (serde, unknown keys denied); [`Config::parse`]
//! turns it into a validated [`Config`] whose errors name the key and the reason.
//! Nothing downstream ever sees an invalid value.

pub mod duration;
pub mod env;
mod line;
pub mod raw;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use crate::discovery::{CloudMapSource, HealthFilter};
use crate::tls::UpstreamTls;
use crate::tls::upstream::UpstreamTlsConfig;
use raw::{RawConfig, RawVersion};

/// At most this many versions, like an App Mesh route's weighted targets.
pub const MAX_VERSIONS: usize = 10;
/// The largest allowed sum of weights: shares down to one in a million.
pub const MAX_TOTAL_WEIGHT: u64 = 1_000_000;

/// Why a config was rejected. Always names the file or the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the file: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{path}{}: `{key}`: {reason}", line.map(|n| format!(":{n}")).unwrap_or_default())]
    Invalid {
        path: String,
        /// The line of the key in the text, when it is in the file.
        line: Option<usize>,
        key: String,
        reason: String,
    },
}

impl ConfigError {
    /// The error with the line of its key in `text` (the text validated),
    /// when it is there.
    pub fn located(self, text: &str) -> ConfigError {
        match self {
            ConfigError::Invalid {
                path,
                line: None,
                key,
                reason,
            } => ConfigError::Invalid {
                line: line::of_key(text, &key),
                path,
                key,
                reason,
            },
            other => other,
        }
    }
}

/// A validated gateway configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from, if any.
    pub source: Option<PathBuf>,
    /// The text of `CANARY_GATEWAY_CONFIG` it was read from, if so.
    pub env_text: Option<String>,
    /// The text of a config file that cannot be read again, if it is one:
    /// no regular file (a pipe such as `--config <(...)`, a FIFO, a device).
    /// It was read once; reloads re-apply this text, as they do the
    /// environment's, and no watcher polls it.
    pub once_text: Option<String>,
    /// The [`fingerprint`] of the file's bytes as read for this config: the
    /// file watcher compares against it, so that an edit made after the file
    /// was read (while the gateway starts) is reloaded, not taken as the start.
    pub source_fingerprint: Option<u64>,
    pub listener: ListenerConfig,
    pub admin: AdminConfig,
    pub split: SplitConfig,
    pub versions: Vec<VersionConfig>,
    pub timeouts: Timeouts,
    pub upstream: UpstreamConfig,
    pub log: LogConfig,
    /// Where admin decisions are saved (the file store).
    pub state_path: Option<PathBuf>,
    pub store: StoreConfig,
    pub discovery: DiscoveryConfig,
    pub aws: AwsConfig,
    pub appmesh: Option<AppMeshConfig>,
    /// Tokio worker threads; `None` means one per core.
    pub worker_threads: Option<usize>,
    /// Defaults of a progressive rollout's plan (`[rollout]`).
    pub rollout: crate::rollout::plan::Settings,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    /// Keep incoming X-Forwarded-Proto/-Port (set by the ALB) instead of overwriting them.
    pub trust_forwarded_headers: bool,
    /// TLS termination (`[listener.tls]`).
    pub tls: Option<ListenerTlsConfig>,
    /// Forward request header fields whose names contain `_` (dropped by
    /// default: stacks that read `_` as `-` would see other fields).
    pub allow_underscores_in_headers: bool,
}

/// `[listener.tls]`: the PEM certificate chain and private key files.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients may resume a session (TLS 1.2 session ids, TLS 1.3 tickets
    /// naming a server-side cache entry) instead of a full handshake.
    pub session_resumption: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub address: SocketAddr,
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SplitConfig {
    pub stable: String,
    pub sticky_header: Option<HeaderName>,
    pub override_header: Option<HeaderName>,
    pub response_header: Option<HeaderName>,
}

/// Where a version's endpoints come from.
#[derive(Debug, Clone, PartialEq)]
pub enum EndpointSource {
    Static(Vec<SocketAddr>),
    CloudMap(CloudMapSource),
}

#[derive(Debug, Clone, PartialEq)]
pub struct VersionConfig {
    pub name: String,
    pub weight: u32,
    pub source: EndpointSource,
    /// TLS to this version's upstreams (`tls = true`).
    pub tls: Option<Arc<UpstreamTls>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    pub upstream_connect: Duration,
    pub upstream_response: Duration,
    /// Time allowed from the first byte of a request head to its end (slowloris).
    pub request_header: Duration,
    /// Idle keep-alive connections are closed after this; longer than the ALB's 60 s.
    pub idle: Duration,
    pub shutdown_grace: Duration,
    /// A request in flight whose bodies make no progress in either direction
    /// for this long (client not reading, upstream not sending) is ended.
    pub body_stall: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            // Longer than Linux's first SYN retransmission (1 s): one SYN lost
            // in a connect burst (a full accept queue) is not a failed request.
            upstream_connect: Duration::from_secs(3),
            upstream_response: Duration::from_secs(15),
            request_header: Duration::from_secs(10),
            idle: Duration::from_secs(75),
            shutdown_grace: Duration::from_secs(25),
            body_stall: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpstreamConfig {
    /// Consecutive gateway failures (connect, reset before any response
    /// byte, no head within `upstream_response`) that eject an endpoint.
    pub eject_after_failures: u32,
    /// First ejection period; doubles for each further ejection in a row.
    pub eject_base: Duration,
    pub eject_max: Duration,
    pub max_idle_per_endpoint: usize,
    /// Pooled upstream connections idle longer than this are not reused.
    pub pool_idle_timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            eject_after_failures: 3,
            eject_base: Duration::from_secs(5),
            eject_max: Duration::from_secs(60),
            max_idle_per_endpoint: 4096,
            pool_idle_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    pub access_log: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    /// The state file (see [`Config::state_path`]).
    File,
    /// A Cloud Map service's attributes, shared by the fleet.
    CloudMap {
        service_id: String,
        poll_interval: Duration,
        boot_timeout: Duration,
    },
    /// One item of a DynamoDB table (partition key `pk` = `key`), shared by the
    /// fleet and written with a condition: the recommended fleet store.
    DynamoDb {
        table: String,
        key: String,
        poll_interval: Duration,
        boot_timeout: Duration,
    },
}

/// Default of `store.poll_interval`.
pub const DEFAULT_STORE_POLL: Duration = Duration::from_secs(2);
/// Default of `store.boot_timeout`.
pub const DEFAULT_STORE_BOOT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `discovery.stale_after`.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(300);

impl StoreConfig {
    /// `file`, `cloudmap` or `dynamodb`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreConfig::File => "file",
            StoreConfig::CloudMap { .. } => "cloudmap",
            StoreConfig::DynamoDb { .. } => "dynamodb",
        }
    }

    /// How often a shared store is polled for other tasks' decisions (`None`: not shared).
    pub fn poll_interval(&self) -> Option<Duration> {
        match self {
            StoreConfig::File => None,
            StoreConfig::CloudMap { poll_interval, .. }
            | StoreConfig::DynamoDb { poll_interval, .. } => Some(*poll_interval),
        }
    }

    /// How long the start waits for the first read of a shared store.
    pub fn boot_timeout(&self) -> Duration {
        match self {
            StoreConfig::File => DEFAULT_STORE_BOOT_TIMEOUT,
            StoreConfig::CloudMap { boot_timeout, .. }
            | StoreConfig::DynamoDb { boot_timeout, .. } => *boot_timeout,
        }
    }
}

/// Settings of every discovery source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiscoveryConfig {
    /// Endpoints of a source that has failed for longer than this are still
    /// used but reported stale (/status, `canary_discovery_stale`).
    pub stale_after: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            stale_after: DEFAULT_STALE_AFTER,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AwsConfig {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AppMeshConfig {
    pub mesh: String,
    pub virtual_router: String,
    pub route: String,
    pub virtual_nodes: BTreeMap<String, String>,
    /// How often the task that wrote the decision in force rewrites the
    /// route (repairs drift, retries after a failure).
    pub reconcile_interval: Duration,
}

/// Default of `appmesh.reconcile_interval`.
pub const DEFAULT_APPMESH_RECONCILE: Duration = Duration::from_secs(60);

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let (text, regular) = read_file(path, true)?;
        Config::from_file_text(path, &text, !regular)
    }

    /// The config read from the file at `path` as `text`; `once`: the file
    /// is no regular file and cannot be read again (see
    /// [`Config::once_text`]): its state file defaults to
    /// `gateway.state.json` in the working directory, as for the
    /// environment's config (a file beside `/dev/fd/63` cannot be kept).
    pub fn from_file_text(path: &Path, text: &str, once: bool) -> Result<Config, ConfigError> {
        let mut config = env::parse_with_overrides(text, &path.display().to_string())?;
        config.source = Some(path.to_path_buf());
        config.source_fingerprint = Some(fingerprint(text.as_bytes()));
        config.once_text = once.then(|| text.to_string());
        if config.state_path.is_none() {
            config.state_path = Some(if once {
                PathBuf::from(env::DEFAULT_STATE_FILE)
            } else {
                default_state_path(path)
            });
        }
        Ok(config)
    }

    /// Validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| parse_error(text, origin, &e))?;
        Validator { origin }
            .config(raw)
            .map_err(|e| e.located(text))
    }

    /// A one-line summary for `check`.
    pub fn summary(&self) -> String {
        let versions: Vec<String> = self
            .versions
            .iter()
            .map(|v| {
                let source = match &v.source {
                    EndpointSource::Static(e) => format!("{} endpoint(s)", e.len()),
                    EndpointSource::CloudMap(c) => {
                        format!("cloudmap {}/{}", c.namespace, c.service)
                    }
                };
                format!("{}={} ({source})", v.name, v.weight)
            })
            .collect();
        format!(
            "ok: listener {}, admin {}, stable {}, versions {}",
            self.listener.address,
            self.admin.address,
            self.split.stable,
            versions.join(", ")
        )
    }

    /// The version names, in config order.
    pub fn version_names(&self) -> Vec<String> {
        self.versions.iter().map(|v| v.name.clone()).collect()
    }

    /// Whether a version has its endpoints from Cloud Map.
    pub fn uses_cloud_map(&self) -> bool {
        self.versions
            .iter()
            .any(|v| matches!(v.source, EndpointSource::CloudMap(_)))
    }

    /// The weights written in the config, by version.
    pub fn weights(&self) -> BTreeMap<String, u32> {
        self.versions
            .iter()
            .map(|v| (v.name.clone(), v.weight))
            .collect()
    }

    /// Settings that a reload cannot change, with a label for each.
    pub fn restart_only_differences(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.listener != new.listener {
            changed.push("listener");
        }
        if self.admin.address != new.admin.address {
            changed.push("admin.address");
        }
        // The token is read once, at start: a reload that names another
        // variable or file would leave the old token in force.
        if self.admin.token_env != new.admin.token_env {
            changed.push("admin.token_env");
        }
        if self.admin.token_file != new.admin.token_file {
            changed.push("admin.token_file");
        }
        if self.worker_threads != new.worker_threads {
            changed.push("runtime.worker_threads");
        }
        if self.store != new.store {
            changed.push("store");
        }
        // The store was opened on this file at start: another one would be
        // read only at the next restart.
        if self.state_path != new.state_path {
            changed.push("state.path");
        }
        if self.aws != new.aws {
            changed.push("aws");
        }
        if self.appmesh != new.appmesh {
            changed.push("appmesh");
        }
        if self.log.format != new.log.format || self.log.level != new.log.level {
            changed.push("log.format/log.level");
        }
        if self.versions.iter().any(|old| {
            new.versions
                .iter()
                .any(|v| v.name == old.name && v.tls.is_some() != old.tls.is_some())
        }) {
            changed.push("versions.tls");
        }
        changed
    }

    /// Keeps each running version's upstream TLS on or off as it is: pooled
    /// connections of the other kind would otherwise go on being reused
    /// (`ca_file` and `server_name` changes apply; turning `tls` on or off
    /// needs a restart).
    pub fn keep_upstream_tls_from(&mut self, old: &Config) {
        for v in &mut self.versions {
            if let Some(running) = old.versions.iter().find(|o| o.name == v.name)
                && running.tls.is_some() != v.tls.is_some()
            {
                v.tls = running.tls.clone();
            }
        }
    }
}

/// What a config file's bytes look like, to notice edits (see
/// [`Config::source_fingerprint`] and the file watcher).
pub fn fingerprint(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Reads the config file at `path`: its text, and whether it is a regular
/// file. A directory is refused; so is anything else that is no regular
/// file unless `once` (the start: a pipe such as `--config <(...)` is read
/// once there), as opening a FIFO waits for a writer. Blocking: call it off
/// the runtime's threads.
pub fn read_file(path: &Path, once: bool) -> Result<(String, bool), ConfigError> {
    let error = |reason: String| ConfigError::Read {
        path: path.display().to_string(),
        reason,
    };
    let kind = std::fs::metadata(path)
        .map_err(|e| error(e.to_string()))?
        .file_type();
    if kind.is_dir() {
        return Err(error("it is a directory: give the config file".into()));
    }
    if !kind.is_file() && !once {
        return Err(error(
            "it is no regular file now (a FIFO, a socket or a device), so it was not read: a reload reads a regular file".into(),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    Ok((text, kind.is_file()))
}

/// `gateway.toml` -> `gateway.state.json` beside it.
pub fn default_state_path(config: &Path) -> PathBuf {
    let stem = config
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "gateway".to_string());
    config.with_file_name(format!("{stem}.state.json"))
}

/// The TOML parser's error in `text`: at a key (a value of the wrong type,
/// an unknown key) named as the validation's errors name theirs
/// (`gateway.toml:19: `log.access_log`: invalid type: ...`), else with the
/// line it points at (text that is not TOML).
fn parse_error(text: &str, origin: &str, error: &toml::de::Error) -> ConfigError {
    let reason = error.message().trim().to_string();
    let Some(span) = error.span() else {
        return ConfigError::Syntax {
            path: origin.to_string(),
            message: reason,
        };
    };
    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
    match line::key_at(text, span.start) {
        Some(key) => ConfigError::Invalid {
            path: origin.to_string(),
            line: Some(line),
            key,
            reason,
        },
        None => ConfigError::Syntax {
            path: origin.to_string(),
            message: format!("line {line}: {reason}"),
        },
    }
}

struct Validator<'a> {
    origin: &'a str,
}

/// Whether two listening addresses take one port: on one address or under a
/// wildcard (0.0.0.0 or `[::]` takes the port on every address), where the
/// second bind would fail. Port 0 (any free port) never overlaps.
pub fn ports_overlap(l: SocketAddr, a: SocketAddr) -> bool {
    l.port() == a.port()
        && l.port() != 0
        && (l.ip() == a.ip() || l.ip().is_unspecified() || a.ip().is_unspecified())
}

impl Validator<'_> {
    fn invalid(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.origin.to_string(),
            line: None,
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let listener = ListenerConfig {
            address: self.address("listener.address", &raw.listener.address)?,
            trust_forwarded_headers: raw.listener.trust_forwarded_headers.unwrap_or(false),
            allow_underscores_in_headers: raw
                .listener
                .allow_underscores_in_headers
                .unwrap_or(false),
            tls: raw.listener.tls.as_ref().map(|t| ListenerTlsConfig {
                cert: PathBuf::from(&t.cert),
                key: PathBuf::from(&t.key),
                session_resumption: t.session_resumption.unwrap_or(true),
            }),
        };
        if let Some(tls) = &listener.tls {
            if tls.cert.as_os_str().is_empty() {
                return Err(self.invalid("listener.tls.cert", "must name a PEM file"));
            }
            if tls.key.as_os_str().is_empty() {
                return Err(self.invalid("listener.tls.key", "must name a PEM file"));
            }
        }
        let admin = AdminConfig {
            address: match &raw.admin.address {
                Some(a) => self.address("admin.address", a)?,
                None => SocketAddr::from(([127, 0, 0, 1], 9901)),
            },
            token_env: raw.admin.token_env.clone(),
            token_file: raw.admin.token_file.as_ref().map(PathBuf::from),
        };
        let (l, a) = (listener.address, admin.address);
        if ports_overlap(l, a) {
            return Err(self.invalid(
                "admin.address",
                format!("must not take listener.address's port ({l} and {a} overlap)"),
            ));
        }
        if let Some(env) = &admin.token_env
            && env.is_empty()
        {
            return Err(self.invalid("admin.token_env", "must name an environment variable"));
        }

        let versions = self.versions(&raw.versions)?;
        let split = SplitConfig {
            stable: raw.split.stable.clone(),
            sticky_header: self.header("split.sticky_header", &raw.split.sticky_header)?,
            override_header: self.header("split.override_header", &raw.split.override_header)?,
            response_header: self.response_header(&raw.split.response_header)?,
        };
        if !versions.iter().any(|v| v.name == split.stable) {
            return Err(self.invalid(
                "split.stable",
                format!(
                    "names no version: `{}` is not among [[versions]]",
                    split.stable
                ),
            ));
        }

        let t = &raw.timeouts;
        let d = Timeouts::default();
        let timeouts = Timeouts {
            upstream_connect: self.duration(
                "timeouts.upstream_connect",
                &t.upstream_connect,
                d.upstream_connect,
            )?,
            upstream_response: self.duration(
                "timeouts.upstream_response",
                &t.upstream_response,
                d.upstream_response,
            )?,
            request_header: self.duration(
                "timeouts.request_header",
                &t.request_header,
                d.request_header,
            )?,
            idle: self.duration("timeouts.idle", &t.idle, d.idle)?,
            shutdown_grace: self.duration_allow_zero(
                "timeouts.shutdown_grace",
                &t.shutdown_grace,
                d.shutdown_grace,
            )?,
            body_stall: self.duration("timeouts.body_stall", &t.body_stall, d.body_stall)?,
        };

        let u = &raw.upstream;
        let du = UpstreamConfig::default();
        let upstream = UpstreamConfig {
            eject_after_failures: match u.eject_after_failures {
                Some(0) => {
                    return Err(self.invalid("upstream.eject_after_failures", "must be at least 1"));
                }
                Some(n) => n,
                None => du.eject_after_failures,
            },
            eject_base: self.duration("upstream.eject_base", &u.eject_base, du.eject_base)?,
            eject_max: self.duration("upstream.eject_max", &u.eject_max, du.eject_max)?,
            max_idle_per_endpoint: u.max_idle_per_endpoint.unwrap_or(du.max_idle_per_endpoint),
            pool_idle_timeout: self.duration(
                "upstream.pool_idle_timeout",
                &u.pool_idle_timeout,
                du.pool_idle_timeout,
            )?,
        };

        let log = LogConfig {
            format: match raw.log.format.as_deref() {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(
                        self.invalid("log.format", format!("`{other}` is not one of: text, json"))
                    );
                }
            },
            level: self.log_level(raw.log.level.as_deref())?,
            access_log: raw.log.access_log.unwrap_or(false),
        };

        let store = self.store(&raw.store)?;
        let discovery = DiscoveryConfig {
            stale_after: self.duration(
                "discovery.stale_after",
                &raw.discovery.stale_after,
                DEFAULT_STALE_AFTER,
            )?,
        };

        let aws = AwsConfig {
            region: self.region(&raw.aws.region)?,
            endpoint_url: self.endpoint_url(&raw.aws.endpoint_url)?,
        };

        let appmesh = match &raw.appmesh {
            None => None,
            Some(a) => {
                for name in a.virtual_nodes.keys() {
                    if !versions.iter().any(|v| &v.name == name) {
                        return Err(self
                            .invalid(format!("appmesh.virtual_nodes.{name}"), "names no version"));
                    }
                }
                if a.virtual_nodes.is_empty() {
                    return Err(
                        self.invalid("appmesh.virtual_nodes", "must map at least one version")
                    );
                }
                Some(AppMeshConfig {
                    mesh: a.mesh.clone(),
                    virtual_router: a.virtual_router.clone(),
                    route: a.route.clone(),
                    virtual_nodes: a.virtual_nodes.clone(),
                    reconcile_interval: self.duration(
                        "appmesh.reconcile_interval",
                        &a.reconcile_interval,
                        DEFAULT_APPMESH_RECONCILE,
                    )?,
                })
            }
        };

        let worker_threads = match raw.runtime.worker_threads {
            Some(0) => return Err(self.invalid("runtime.worker_threads", "must be at least 1")),
            // More threads than that only costs memory (a proxy core is
            // busy with one); far more fails the start (a thread that
            // cannot be spawned, an allocation that cannot be made).
            Some(n) if n > MAX_WORKER_THREADS => {
                return Err(self.invalid(
                    "runtime.worker_threads",
                    format!(
                        "{n} is above the maximum of {MAX_WORKER_THREADS} (one per core is enough)"
                    ),
                ));
            }
            other => other,
        };

        Ok(Config {
            source: None,
            env_text: None,
            once_text: None,
            source_fingerprint: None,
            listener,
            admin,
            split,
            versions,
            timeouts,
            upstream,
            log,
            state_path: match raw.state.path.as_deref() {
                Some(p) if p.trim().is_empty() => {
                    return Err(self.invalid(
                        "state.path",
                        "is empty (a file path, e.g. /var/lib/canary-gateway/state.json)",
                    ));
                }
                p => p.map(PathBuf::from),
            },
            store,
            discovery,
            aws,
            appmesh,
            worker_threads,
            rollout: crate::rollout::plan::Settings::from_toml(raw.rollout.as_ref())
                .map_err(|e| self.invalid(format!("rollout.{}", e.field), e.reason))?,
        })
    }

    /// The `[store]` table.
    fn store(&self, raw: &raw::RawStore) -> Result<StoreConfig, ConfigError> {
        let kind = raw.kind.as_deref().unwrap_or("file");
        let only = |key: &str, present: bool, kinds: &str| {
            if present {
                Err(self.invalid(format!("store.{key}"), format!("only applies to {kinds}")))
            } else {
                Ok(())
            }
        };
        let shared = "kind = \"cloudmap\" or \"dynamodb\"";
        let required = |key: &str, value: &Option<String>| {
            match value.as_deref() {
            Some(v) if !v.trim().is_empty() => Ok(v.to_string()),
            Some(_) => Err(self.invalid(format!("store.{key}"), "must not be empty")),
            None => Err(self.invalid(
                format!("store.{key}"),
                match env::variable_for(&format!("store.{key}")) {
                    Some(var) => format!(
                        "is required with kind = \"{kind}\": set it here or in the environment variable {var}"
                    ),
                    None => format!("is required with kind = \"{kind}\""),
                },
            )),
        }
        };
        let timing = || -> Result<(Duration, Duration), ConfigError> {
            Ok((
                self.duration(
                    "store.poll_interval",
                    &raw.poll_interval,
                    DEFAULT_STORE_POLL,
                )?,
                self.duration(
                    "store.boot_timeout",
                    &raw.boot_timeout,
                    DEFAULT_STORE_BOOT_TIMEOUT,
                )?,
            ))
        };
        match kind {
            "file" => {
                only(
                    "service_id",
                    raw.service_id.is_some(),
                    "kind = \"cloudmap\"",
                )?;
                only("table", raw.table.is_some(), "kind = \"dynamodb\"")?;
                only("key", raw.key.is_some(), "kind = \"dynamodb\"")?;
                only("poll_interval", raw.poll_interval.is_some(), shared)?;
                only("boot_timeout", raw.boot_timeout.is_some(), shared)?;
                Ok(StoreConfig::File)
            }
            "cloudmap" => {
                only("table", raw.table.is_some(), "kind = \"dynamodb\"")?;
                only("key", raw.key.is_some(), "kind = \"dynamodb\"")?;
                let service_id = required("service_id", &raw.service_id)?;
                if !service_id.starts_with("srv-") {
                    return Err(self.invalid(
                        "store.service_id",
                        format!("`{service_id}` is not a Cloud Map service id (srv-...)"),
                    ));
                }
                let (poll_interval, boot_timeout) = timing()?;
                Ok(StoreConfig::CloudMap {
                    service_id,
                    poll_interval,
                    boot_timeout,
                })
            }
            "dynamodb" => {
                only(
                    "service_id",
                    raw.service_id.is_some(),
                    "kind = \"cloudmap\"",
                )?;
                let table = required("table", &raw.table)?;
                let key = required("key", &raw.key)?;
                let (poll_interval, boot_timeout) = timing()?;
                Ok(StoreConfig::DynamoDb {
                    table,
                    key,
                    poll_interval,
                    boot_timeout,
                })
            }
            other => Err(self.invalid(
                "store.kind",
                format!("`{other}` is not one of: file, cloudmap, dynamodb"),
            )),
        }
    }

    fn versions(&self, raw: &[RawVersion]) -> Result<Vec<VersionConfig>, ConfigError> {
        if raw.is_empty() {
            return Err(self.invalid("versions", "at least one [[versions]] entry is required"));
        }
        if raw.len() > MAX_VERSIONS {
            return Err(self.invalid(
                "versions",
                format!(
                    "{} versions given, at most {MAX_VERSIONS} are allowed",
                    raw.len()
                ),
            ));
        }
        let mut names = HashSet::new();
        let mut versions = Vec::with_capacity(raw.len());
        let mut total: u64 = 0;
        for (i, v) in raw.iter().enumerate() {
            let key = |field: &str| format!("versions[{i}].{field}");
            validate_version_name(&v.name).map_err(|reason| self.invalid(key("name"), reason))?;
            if !names.insert(v.name.as_str()) {
                return Err(
                    self.invalid(key("name"), format!("duplicate version name `{}`", v.name))
                );
            }
            let weight = weight_from_toml(&v.weight)
                .map_err(|reason| self.invalid(key("weight"), reason))?;
            total += u64::from(weight);
            let source = match (&v.endpoints, &v.cloudmap) {
                (Some(_), Some(_)) => {
                    return Err(self.invalid(
                        key("endpoints"),
                        "give either `endpoints` or `cloudmap`, not both",
                    ));
                }
                (None, None) => {
                    return Err(self.invalid(
                        key("endpoints"),
                        format!(
                            "version `{}` has no endpoint source: give `endpoints` or `cloudmap`",
                            v.name
                        ),
                    ));
                }
                (Some(list), None) => {
                    if list.is_empty() {
                        return Err(
                            self.invalid(key("endpoints"), "must list at least one address")
                        );
                    }
                    let mut addrs = Vec::with_capacity(list.len());
                    for (j, a) in list.iter().enumerate() {
                        addrs.push(self.address(&format!("versions[{i}].endpoints[{j}]"), a)?);
                    }
                    EndpointSource::Static(addrs)
                }
                (None, Some(c)) => {
                    let health = match c.health.as_deref() {
                        None | Some("HEALTHY_OR_ELSE_ALL") => HealthFilter::HealthyOrElseAll,
                        Some("HEALTHY") => HealthFilter::Healthy,
                        Some("ALL") => HealthFilter::All,
                        Some(other) => {
                            return Err(self.invalid(
                                key("cloudmap.health"),
                                format!(
                                    "`{other}` is not one of: HEALTHY, HEALTHY_OR_ELSE_ALL, ALL"
                                ),
                            ));
                        }
                    };
                    if c.namespace.is_empty() || c.service.is_empty() {
                        return Err(self
                            .invalid(key("cloudmap"), "namespace and service must not be empty"));
                    }
                    if c.port == Some(0) {
                        return Err(self.invalid(key("cloudmap.port"), "must be 1-65535"));
                    }
                    EndpointSource::CloudMap(CloudMapSource {
                        namespace: c.namespace.clone(),
                        service: c.service.clone(),
                        health,
                        query: c.query.clone(),
                        port: c.port,
                    })
                }
            };
            let tls = self.upstream_tls(v, &key)?;
            versions.push(VersionConfig {
                name: v.name.clone(),
                weight,
                source,
                tls,
            });
        }
        check_total(total).map_err(|reason| self.invalid("versions.weight", reason))?;
        Ok(versions)
    }

    /// A version's upstream TLS: built (its CA file read) now, so that a bad
    /// file is an error at start or reload, never at the first request.
    fn upstream_tls(
        &self,
        v: &RawVersion,
        key: &dyn Fn(&str) -> String,
    ) -> Result<Option<Arc<UpstreamTls>>, ConfigError> {
        if v.tls != Some(true) {
            for (field, set) in [
                ("ca_file", v.ca_file.is_some()),
                ("server_name", v.server_name.is_some()),
            ] {
                if set {
                    return Err(self.invalid(key(field), "only applies with `tls = true`"));
                }
            }
            return Ok(None);
        }
        let config = UpstreamTlsConfig {
            ca_file: v.ca_file.as_ref().map(PathBuf::from),
            server_name: v.server_name.clone(),
        };
        UpstreamTls::new(config).map(Some).map_err(|e| {
            // The key whose value failed: the name, or the CA file (or the
            // system's CAs it stands in for).
            let field = match e {
                crate::tls::TlsError::ServerName(_) => "server_name",
                _ => "ca_file",
            };
            self.invalid(key(field), e.to_string())
        })
    }

    fn address(&self, key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
        value.parse().map_err(|_| {
            self.invalid(
                key,
                format!("`{value}` is not a socket address (expected IP:port, e.g. 10.0.1.5:9000)"),
            )
        })
    }

    /// `aws.region`: a region's name (`eu-west-1`): lowercase letters,
    /// digits and inner hyphens. The SDK takes any text, `""` included, as
    /// a region set, and then every call fails (its endpoint is built from
    /// the name).
    fn region(&self, value: &Option<String>) -> Result<Option<String>, ConfigError> {
        let Some(name) = value else {
            return Ok(None);
        };
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !ok {
            return Err(self.invalid(
                "aws.region",
                format!(
                    "{name:?} is not an AWS region name (lowercase letters, digits and hyphens, e.g. eu-west-1); leave the key out to take AWS_REGION"
                ),
            ));
        }
        Ok(Some(name.clone()))
    }

    /// `aws.endpoint_url`: an absolute http(s) URL with a host. The SDK
    /// takes any text and then fails every call, so the gateway would serve
    /// without its store or discovery for good.
    fn endpoint_url(&self, value: &Option<String>) -> Result<Option<String>, ConfigError> {
        let Some(text) = value else {
            return Ok(None);
        };
        check_endpoint_url(text).map_err(|reason| self.invalid("aws.endpoint_url", reason))?;
        Ok(Some(text.clone()))
    }

    /// `split.response_header`: a name of the operator's own. The gateway
    /// sets it on every response in place of an upstream field of that
    /// name, so a field that frames the message, is hop-by-hop, or that
    /// clients and caches read (`content-length` would break every
    /// response) is refused.
    fn response_header(&self, value: &Option<String>) -> Result<Option<HeaderName>, ConfigError> {
        const KEY: &str = "split.response_header";
        let name = self.header(KEY, value)?;
        if let Some(name) = &name {
            use http::header;
            let taken = [
                header::CONTENT_LENGTH,
                header::CONTENT_TYPE,
                header::CONTENT_ENCODING,
                header::CONTENT_RANGE,
                header::CONTENT_LOCATION,
                header::CONTENT_DISPOSITION,
                header::CONTENT_LANGUAGE,
                header::LOCATION,
                header::SET_COOKIE,
                header::DATE,
                header::ETAG,
                header::LAST_MODIFIED,
                header::CACHE_CONTROL,
                header::EXPIRES,
                header::VARY,
                header::AGE,
                header::RETRY_AFTER,
                header::WWW_AUTHENTICATE,
                header::PROXY_AUTHENTICATE,
                header::STRICT_TRANSPORT_SECURITY,
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                header::SERVER,
                header::HOST,
            ];
            let own = *name == crate::proxy::headers::X_REQUEST_ID;
            if own || taken.contains(name) || crate::proxy::headers::is_hop_by_hop(name) {
                return Err(self.invalid(
                    KEY,
                    format!(
                        "`{name}` is a standard or hop-by-hop field that the gateway would overwrite on every response; use a name of your own, e.g. x-canary-version"
                    ),
                ));
            }
        }
        Ok(name)
    }

    /// `log.level`: a level, or `tracing` filter directives
    /// (`info,canary_gateway::proxy=debug`). A bare word that is no level
    /// (`warning`) would parse as a target's name and silence every other
    /// line, errors included; a filter that does not parse would be
    /// replaced by `info` without a word.
    fn log_level(&self, value: Option<&str>) -> Result<String, ConfigError> {
        const KEY: &str = "log.level";
        const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
        let Some(value) = value else {
            return Ok("info".to_string());
        };
        if value.trim().is_empty() {
            return Err(self.invalid(
                KEY,
                "is empty (one of: trace, debug, info, warn, error, off)",
            ));
        }
        for directive in value.split(',').map(str::trim) {
            if !directive.contains('=') && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(directive))
            {
                return Err(self.invalid(
                    KEY,
                    format!(
                        "`{directive}` is not a level (one of: trace, debug, info, warn, error, off); a filter for one target is written target=level"
                    ),
                ));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(value) {
            return Err(self.invalid(KEY, format!("`{value}` is not a log filter: {e}")));
        }
        Ok(value.to_string())
    }

    fn header(&self, key: &str, value: &Option<String>) -> Result<Option<HeaderName>, ConfigError> {
        match value {
            None => Ok(None),
            Some(v) => HeaderName::from_bytes(v.as_bytes())
                .map(Some)
                .map_err(|_| self.invalid(key, format!("`{v}` is not a valid HTTP header name"))),
        }
    }

    fn duration(
        &self,
        key: &str,
        value: &Option<toml::Value>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration_allow_zero(key, value, default)?;
        if d.is_zero() {
            return Err(self.invalid(key, "must be greater than zero"));
        }
        Ok(d)
    }

    fn duration_allow_zero(
        &self,
        key: &str,
        value: &Option<toml::Value>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(v) => duration::from_toml(v).map_err(|reason| self.invalid(key, reason)),
        }
    }
}

/// Version names become metric labels, header values and JSON keys: keep them plain.
pub fn validate_version_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1 to 64 characters".to_string());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "`{name}` may only contain letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// A weight as written in TOML: a non-negative integer.
fn weight_from_toml(value: &toml::Value) -> Result<u32, String> {
    match value {
        toml::Value::Integer(i) if *i < 0 => Err(format!("must not be negative, got {i}")),
        toml::Value::Integer(i) if *i as u64 > MAX_TOTAL_WEIGHT => Err(format!(
            "{i} is above the maximum total of {MAX_TOTAL_WEIGHT}"
        )),
        toml::Value::Integer(i) => Ok(*i as u32),
        // `{f:?}`: 10.0 shows as written, not as "10".
        toml::Value::Float(f) => Err(format!(
            "must be an integer (no decimal point or exponent), got {f:?}"
        )),
        other => Err(format!(
            "must be a non-negative integer, got {}",
            other.type_str()
        )),
    }
}

/// The sum of weights must be 1..=1,000,000.
/// The most worker threads `runtime.worker_threads` may ask for.
pub const MAX_WORKER_THREADS: usize = 256;

pub fn check_total(total: u64) -> Result<(), String> {
    if total == 0 {
        return Err(
            "the weights sum to 0: at least one version needs a positive weight".to_string(),
        );
    }
    if total > MAX_TOTAL_WEIGHT {
        return Err(format!(
            "the weights sum to {total}, above the maximum of {MAX_TOTAL_WEIGHT}"
        ));
    }
    Ok(())
}

/// Whether `text` is an endpoint URL the AWS SDK can call: an absolute
/// http:// or https:// URL with a host (and a port in 1-65535, if any). The
/// error says why not, with examples: for `aws.endpoint_url` and for the
/// SDK's `AWS_ENDPOINT_URL*` environment variables.
pub fn check_endpoint_url(text: &str) -> Result<(), String> {
    let bad = |why: String| {
        format!(
            "`{text}` is not an absolute http:// or https:// URL with a host ({why}; e.g. https://dynamodb.eu-west-1.amazonaws.com or http://localhost:4566)"
        )
    };
    let uri: http::Uri = text
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {}
        Some(other) => return Err(bad(format!("scheme `{other}`"))),
        None => return Err(bad("no scheme".into())),
    }
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return Err(bad("no host".into()));
    };
    // `port()` is `None` both without a port and for one out of range.
    let host_port = authority.as_str().rsplit('@').next().unwrap_or_default();
    let after_host = host_port.strip_prefix(authority.host()).unwrap_or_default();
    if let Some(port) = after_host.strip_prefix(':')
        && port.parse::<u16>().ok().filter(|&p| p != 0).is_none()
    {
        return Err(bad(format!("`{port}` is not a port (1-65535)")));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_text;
#[cfg(test)]
mod tests;
