//! Control path: where a version's endpoints come from.
//!
//! A version lists its endpoints statically in the config, or names a Cloud Map
//! service. [`Discover`] is the seam between the polling logic and AWS: the
//! real implementation calls DiscoverInstances / DiscoverInstancesRevision, unit
//! tests use a fake.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::future::BoxFuture;

/// Which instances Cloud Map returns (the `HealthStatus` filter of DiscoverInstances).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HealthFilter {
    Healthy,
    #[default]
    HealthyOrElseAll,
    All,
}

/// A Cloud Map service that holds one version's instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudMapSource {
    pub namespace: String,
    pub service: String,
    pub health: HealthFilter,
    /// Attribute filters (`QueryParameters`).
    pub query: BTreeMap<String, String>,
    /// Port for instances registered without `AWS_INSTANCE_PORT`.
    pub port: Option<u16>,
}

/// What `DiscoverInstances` answered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InstanceList {
    /// The endpoints, filtered by `source.health` and `source.query`.
    pub endpoints: Vec<SocketAddr>,
    /// The `InstancesRevision` this list belongs to, when the answer carried
    /// one. It can be older (or newer) than what `DiscoverInstancesRevision`
    /// said just before: the instances may change between the two calls.
    pub revision: Option<i64>,
}

/// Why a discovery call failed. The last known endpoints stay in use.
#[derive(Debug, Clone, thiserror::Error)]
/// Each says where it failed first (`cloudmap: DiscoverInstances ns/svc:
/// ...`, as the stores' errors do), then what; the kind comes last.
pub enum DiscoveryError {
    #[error("{0} (throttled by AWS)")]
    Throttled(String),
    #[error("{0} (timed out)")]
    Timeout(String),
    #[error("{0}")]
    Aws(String),
    /// Cloud Map has no namespace or service of the configured name
    /// (`NamespaceNotFound`, `ServiceNotFound`): most likely a typo in the
    /// config, or a service not created (or deleted) yet.
    #[error("{0} (not in Cloud Map)")]
    NotFound(String),
}

impl DiscoveryError {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            DiscoveryError::Throttled(_) => "throttled",
            DiscoveryError::Timeout(_) => "timeout",
            DiscoveryError::Aws(_) => "aws",
            DiscoveryError::NotFound(_) => "not_found",
        }
    }
}

/// Resolves a Cloud Map service to socket addresses.
pub trait Discover: Send + Sync + 'static {
    /// `DiscoverInstancesRevision`: changes when instances register or deregister.
    fn revision<'a>(
        &'a self,
        source: &'a CloudMapSource,
    ) -> BoxFuture<'a, Result<i64, DiscoveryError>>;
    /// `DiscoverInstances`: the current endpoints, filtered by `source.health`,
    /// with the revision they belong to.
    fn instances<'a>(
        &'a self,
        source: &'a CloudMapSource,
    ) -> BoxFuture<'a, Result<InstanceList, DiscoveryError>>;
}

/// Receives what discovery learns. The control path implements it: it rebuilds
/// the snapshot with the new endpoints, or records the failure for /status and
/// keeps the last known endpoints.
pub trait EndpointSink: Send + Sync + 'static {
    /// A successful answer, possibly empty (then the version has no endpoints).
    fn endpoints_discovered(&self, version: &str, endpoints: Vec<SocketAddr>);
    /// A failed call; the last known endpoints stay in use.
    fn discovery_failed(&self, version: &str, error: &DiscoveryError);
    /// A successful call that showed the endpoints last passed on are still
    /// current (the revision did not move): they are as fresh as a new answer.
    fn endpoints_confirmed(&self, _version: &str) {}
}
