//! Control path: the AWS side of the gateway.
//!
//! [`sdk_config`] builds the shared SDK configuration; [`cloudmap`] discovers
//! endpoints, [`cloudmap_store`] keeps the weights document in a Cloud Map
//! service and [`dynamodb_store`] in a DynamoDB item (conditional writes),
//! [`appmesh`] mirrors the weights onto an App Mesh route.

pub mod appmesh;
pub mod backoff;
pub mod cloudmap;
pub mod cloudmap_store;
pub mod dynamodb_store;
pub mod errors;
pub mod prefix;

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_http_client::tls;
use aws_smithy_types::timeout::TimeoutConfig;

/// Connect timeout for every AWS call.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time limit for one attempt of an AWS call (the SDK retries after it).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time limit for an AWS call including its retries.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(20);

/// The SDK configuration shared by every AWS client of the gateway.
///
/// * HTTP: an HTTPS client (rustls with ring; plain `http://` endpoints work too).
/// * Region: `region`, or the standard chain (`AWS_REGION`, profile, IMDS).
/// * Endpoint: `endpoint_url`, or the standard settings (`AWS_ENDPOINT_URL`,
///   `AWS_ENDPOINT_URL_<SERVICE>`, profile), or the AWS default.
/// * Credentials: the standard chain (env, profile, web identity, ECS, IMDS),
///   resolved lazily on the first call.
/// * Timeouts: 3 s connect, 5 s per attempt, 20 s per call.
pub async fn sdk_config(region: Option<&str>, endpoint_url: Option<&str>) -> SdkConfig {
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client)
        .timeout_config(timeouts);
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_owned()));
    }
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{Config, StoreConfig};
use crate::discovery::Discover;
use crate::future::BoxFuture;
use crate::gateway::Dependencies;
use crate::route_sync::RouteSync as RouteSyncDep;

/// The App Mesh route as the gateway's route-sync dependency.
struct MeshRoute(appmesh::RouteSync);

impl RouteSyncDep for MeshRoute {
    fn sync<'a>(
        &'a self,
        weights: &'a BTreeMap<String, u32>,
        abandon: &'a mut (dyn Future<Output = ()> + Send + Unpin),
    ) -> BoxFuture<'a, Result<Option<crate::route_sync::Synced>, crate::route_sync::SyncError>>
    {
        Box::pin(async move {
            self.0
                .sync_until(weights, abandon)
                .await
                .map_err(|e| crate::route_sync::SyncError {
                    throttled: e.throttled(),
                    route_unread: e.route_unread(),
                    message: e.to_string(),
                })
        })
    }
}

/// Why the gateway does not start when it needs AWS and has no region.
pub const NO_REGION: &str = "no AWS region: set [aws] region or AWS_REGION";

/// What of AWS the config asks for.
struct AwsUses {
    /// Cloud Map discovery (a version with a `cloudmap` source).
    discovery: bool,
    /// A shared weight store (Cloud Map or DynamoDB).
    store: bool,
    /// App Mesh route sync.
    mesh: bool,
}

impl AwsUses {
    fn of(config: &Config) -> AwsUses {
        AwsUses {
            discovery: config.uses_cloud_map(),
            store: config.store.poll_interval().is_some(),
            mesh: config.appmesh.is_some(),
        }
    }
}

/// Whether the config asks for AWS clients: Cloud Map discovery, a Cloud
/// Map or DynamoDB weight store, App Mesh route sync.
pub fn uses_aws(config: &Config) -> bool {
    let uses = AwsUses::of(config);
    uses.discovery || uses.store || uses.mesh
}

/// The SDK's environment variables that give an endpoint URL to the
/// services the gateway calls: all of them, then each (its service id in
/// capitals, spaces as `_`).
const ENDPOINT_ENV: [&str; 4] = [
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_SERVICEDISCOVERY",
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AWS_ENDPOINT_URL_APP_MESH",
];

/// The `AWS_ENDPOINT_URL*` variable the SDK would take that is no URL it
/// can call, as `[aws] endpoint_url` is checked: the SDK would take the text
/// and fail every call, so the gateway would serve without its store or
/// discovery for good. Not looked at when no AWS client is needed, when
/// `[aws] endpoint_url` is set (it wins over them), or with
/// `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`; an empty one is taken as
/// unset. The profile's `endpoint_url` is not read.
pub fn endpoint_env_check(config: &Config) -> Result<(), String> {
    let ignored = std::env::var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
        .is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    if !uses_aws(config) || config.aws.endpoint_url.is_some() || ignored {
        return Ok(());
    }
    for name in ENDPOINT_ENV {
        let Some(value) = std::env::var_os(name) else {
            continue;
        };
        let text = value.to_string_lossy();
        if text.is_empty() {
            continue;
        }
        crate::config::check_endpoint_url(&text).map_err(|why| format!("{name}: {why}"))?;
    }
    Ok(())
}

/// What can be told of the region without a network call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionCheck {
    /// No AWS client is needed, or a region is set (config, environment,
    /// profile file).
    Found,
    /// None anywhere and the instance metadata service is off
    /// (`AWS_EC2_METADATA_DISABLED=true`): the start fails with [`NO_REGION`].
    Missing,
    /// None but from the instance metadata service, which only a start asks.
    OnlyFromImds,
}

/// The region the SDK's chain would find, short of its last step: `[aws]
/// region`, then `AWS_REGION`/`AWS_DEFAULT_REGION`, then the profile in the
/// AWS config file. The instance metadata service (IMDS, a network call) is
/// not asked: for `check`.
pub async fn region_without_network(config: &Config) -> RegionCheck {
    use aws_config::meta::region::ProvideRegion as _;
    if !uses_aws(config) || config.aws.region.is_some() {
        return RegionCheck::Found;
    }
    let env = aws_config::environment::region::EnvironmentVariableRegionProvider::new();
    if env.region().await.is_some() {
        return RegionCheck::Found;
    }
    let profile = aws_config::profile::ProfileFileRegionProvider::new();
    if profile.region().await.is_some() {
        return RegionCheck::Found;
    }
    let imds_off =
        std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    if imds_off {
        RegionCheck::Missing
    } else {
        RegionCheck::OnlyFromImds
    }
}

/// Builds the AWS-backed dependencies the config asks for (Cloud Map
/// discovery, the Cloud Map weight store, App Mesh route sync) unless the
/// caller injected them already.
pub async fn fill_dependencies(config: &Config, deps: &mut Dependencies) -> Result<(), String> {
    let uses = AwsUses::of(config);
    let wants_discovery = deps.discovery.is_none() && uses.discovery;
    let wants_store = deps.store.is_none() && uses.store;
    let wants_mesh = deps.route_sync.is_none() && uses.mesh;
    if !(wants_discovery || wants_store || wants_mesh) {
        return Ok(());
    }
    let sdk = sdk_config(
        config.aws.region.as_deref(),
        config.aws.endpoint_url.as_deref(),
    )
    .await;
    if sdk.region().is_none() {
        return Err(NO_REGION.into());
    }
    endpoint_env_check(config)?;
    if wants_discovery {
        let discover: Arc<dyn Discover> = Arc::new(cloudmap::CloudMapDiscover::new(&sdk));
        deps.discovery = Some(Arc::new(move |version, source, sink| {
            tokio::spawn(cloudmap::poll(
                version,
                source,
                discover.clone(),
                sink,
                cloudmap::PollTiming::default(),
            ))
        }));
    }
    if wants_store {
        match &config.store {
            StoreConfig::CloudMap { service_id, .. } => {
                deps.store = Some(Arc::new(cloudmap_store::CloudMapStore::new(
                    &sdk,
                    service_id.clone(),
                )));
            }
            StoreConfig::DynamoDb { table, key, .. } => {
                deps.store = Some(Arc::new(dynamodb_store::DynamoDbStore::new(
                    &sdk,
                    table.clone(),
                    key.clone(),
                )));
            }
            StoreConfig::File => {}
        }
    }
    if wants_mesh && let Some(mesh) = &config.appmesh {
        let route = appmesh::RouteSync::new(
            &sdk,
            appmesh::RouteSyncConfig {
                mesh: mesh.mesh.clone(),
                virtual_router: mesh.virtual_router.clone(),
                route: mesh.route.clone(),
                virtual_nodes: mesh.virtual_nodes.clone(),
            },
        );
        deps.route_sync = Some(Arc::new(MeshRoute(route)));
    }
    Ok(())
}
