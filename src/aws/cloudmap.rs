//! Control path: endpoints from AWS Cloud Map.
//!
//! [`CloudMapDiscover`] implements [`Discover`] with DiscoverInstances and
//! DiscoverInstancesRevision; [`poll`] keeps one version's endpoints current.

pub mod endpoints;
mod poller;

pub use poller::{PollTiming, poll};

use aws_config::SdkConfig;
use aws_sdk_servicediscovery::Client;
use aws_sdk_servicediscovery::types::HealthStatusFilter;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::aws::errors::{self, ErrorClass};
use crate::aws::prefix::StripEndpointPrefix;
use crate::discovery::{CloudMapSource, Discover, DiscoveryError, HealthFilter, InstanceList};
use crate::future::BoxFuture;

/// DiscoverInstances returns at most this many instances (the API's maximum;
/// its default is 100).
const MAX_RESULTS: i32 = 1000;

/// A Cloud Map client for `sdk_config`. With a custom endpoint URL it sends
/// DiscoverInstances to that URL as is, not to `data-<host>` (see
/// [`crate::aws::prefix`]).
pub fn servicediscovery_client(sdk_config: &SdkConfig) -> Client {
    let mut builder = aws_sdk_servicediscovery::config::Builder::from(sdk_config);
    if has_custom_endpoint(sdk_config) {
        builder = builder.interceptor(StripEndpointPrefix);
    }
    Client::from_conf(builder.build())
}

/// Whether Cloud Map calls go to a configured endpoint rather than AWS's own.
fn has_custom_endpoint(sdk_config: &SdkConfig) -> bool {
    sdk_config.endpoint_url().is_some()
        || std::env::var_os("AWS_ENDPOINT_URL_SERVICEDISCOVERY").is_some()
}

/// [`Discover`] backed by the Cloud Map API.
#[derive(Debug, Clone)]
pub struct CloudMapDiscover {
    /// The Cloud Map client.
    client: Client,
}

impl CloudMapDiscover {
    /// A discoverer using [`servicediscovery_client`].
    pub fn new(sdk_config: &SdkConfig) -> Self {
        Self::from_client(servicediscovery_client(sdk_config))
    }

    /// A discoverer using a client built by the caller.
    pub fn from_client(client: Client) -> Self {
        CloudMapDiscover { client }
    }

    async fn fetch_revision(&self, source: &CloudMapSource) -> Result<i64, DiscoveryError> {
        let out = self
            .client
            .discover_instances_revision()
            .namespace_name(&source.namespace)
            .service_name(&source.service)
            .send()
            .await
            .map_err(|e| discovery_error(&e, "DiscoverInstancesRevision", source))?;
        out.instances_revision().ok_or_else(|| {
            DiscoveryError::Aws(format!(
                "cloudmap: DiscoverInstancesRevision {}/{}: no revision in the answer",
                source.namespace, source.service
            ))
        })
    }

    async fn fetch_instances(
        &self,
        source: &CloudMapSource,
    ) -> Result<InstanceList, DiscoveryError> {
        let mut request = self
            .client
            .discover_instances()
            .namespace_name(&source.namespace)
            .service_name(&source.service)
            .health_status(health_filter(source.health))
            .max_results(MAX_RESULTS);
        for (key, value) in &source.query {
            request = request.query_parameters(key, value);
        }
        let out = request
            .send()
            .await
            .map_err(|e| discovery_error(&e, "DiscoverInstances", source))?;
        let mut found = Vec::with_capacity(out.instances().len());
        for instance in out.instances() {
            let id = instance.instance_id().unwrap_or("?");
            let empty = Default::default();
            let attributes = instance.attributes().unwrap_or(&empty);
            match endpoints::endpoint_from_attributes(attributes, source.port) {
                Ok(addr) => found.push(addr),
                Err(reason) => tracing::warn!(
                    namespace = %source.namespace,
                    service = %source.service,
                    instance = id,
                    %reason,
                    "skipping Cloud Map instance"
                ),
            }
        }
        Ok(InstanceList {
            endpoints: endpoints::dedup(found),
            revision: out.instances_revision(),
        })
    }
}

impl Discover for CloudMapDiscover {
    fn revision<'a>(
        &'a self,
        source: &'a CloudMapSource,
    ) -> BoxFuture<'a, Result<i64, DiscoveryError>> {
        Box::pin(self.fetch_revision(source))
    }

    fn instances<'a>(
        &'a self,
        source: &'a CloudMapSource,
    ) -> BoxFuture<'a, Result<InstanceList, DiscoveryError>> {
        Box::pin(self.fetch_instances(source))
    }
}

/// The API's health filter for ours.
fn health_filter(filter: HealthFilter) -> HealthStatusFilter {
    match filter {
        HealthFilter::Healthy => HealthStatusFilter::Healthy,
        HealthFilter::HealthyOrElseAll => HealthStatusFilter::HealthyOrElseAll,
        HealthFilter::All => HealthStatusFilter::All,
    }
}

/// Maps an SDK error of `call` for `source` to a [`DiscoveryError`]: where
/// it failed (`cloudmap: DiscoverInstances web/app-v2: `, as the stores'
/// errors say theirs), then the error in short.
fn discovery_error<E>(
    err: &SdkError<E, HttpResponse>,
    call: &str,
    source: &CloudMapSource,
) -> DiscoveryError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = format!(
        "cloudmap: {call} {}/{}: {}",
        source.namespace,
        source.service,
        errors::describe(err)
    );
    match errors::classify(err) {
        ErrorClass::Throttled => DiscoveryError::Throttled(message),
        ErrorClass::Timeout => DiscoveryError::Timeout(message),
        ErrorClass::Other
            if matches!(
                errors::error_code(err),
                Some("NamespaceNotFound" | "ServiceNotFound")
            ) =>
        {
            DiscoveryError::NotFound(message)
        }
        ErrorClass::Other => DiscoveryError::Aws(message),
    }
}
