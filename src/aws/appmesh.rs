//! Control path: mirrors the gateway's weights onto an App Mesh route, for
//! meshes that still route some traffic through App Mesh during the migration.

pub mod scale;
pub mod targets;

pub use scale::{scale_to, scale_to_percent};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_appmesh::Client;
use aws_sdk_appmesh::types::RouteSpec;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::aws::backoff::Backoff;
use crate::aws::errors::{self, ErrorClass};
use crate::metrics;
use crate::route_sync::Synced;

/// Attempts of one sync before giving up on conflicts or throttling.
const MAX_ATTEMPTS: u32 = 4;
/// First delay between attempts; it doubles.
const RETRY_INITIAL: Duration = Duration::from_millis(200);
/// Upper bound of the delay between attempts.
const RETRY_MAX: Duration = Duration::from_secs(3);

/// Why a route sync failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppMeshError {
    /// An App Mesh call failed with an error that retrying does not fix.
    #[error("App Mesh {operation} failed: {message}")]
    Aws {
        operation: &'static str,
        message: String,
    },
    /// Conflicts or throttling on every attempt (`throttled`: the last
    /// one was throttled).
    #[error("App Mesh route sync gave up after {attempts} attempts: {message}")]
    GaveUp {
        attempts: u32,
        message: String,
        throttled: bool,
        /// The call the last attempt failed in.
        operation: &'static str,
    },
    /// No version mapped to a virtual node has a non-zero weight: the route
    /// would send traffic nowhere, so it is left as it is.
    #[error("no version mapped to a virtual node has a non-zero weight")]
    NoWeight,
    /// The route has no action with weighted targets.
    #[error("the route has no action with weighted targets")]
    NoWeightedTargets,
    /// DescribeRoute returned no route spec.
    #[error("DescribeRoute returned no route spec")]
    NoSpec,
    /// A value App Mesh does not accept.
    #[error("invalid route: {0}")]
    Invalid(String),
}

impl AppMeshError {
    /// Whether the sync failed reading the route (DescribeRoute), before
    /// it knew whether a write was needed.
    pub fn route_unread(&self) -> bool {
        matches!(
            self,
            AppMeshError::Aws {
                operation: "DescribeRoute",
                ..
            } | AppMeshError::GaveUp {
                operation: "DescribeRoute",
                ..
            } | AppMeshError::NoSpec
        )
    }

    /// App Mesh throttled the sync to its end (the account's API rate).
    pub fn throttled(&self) -> bool {
        matches!(
            self,
            AppMeshError::GaveUp {
                throttled: true,
                ..
            }
        )
    }
}

/// Which route to keep in step with the gateway's weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSyncConfig {
    /// The mesh name.
    pub mesh: String,
    /// The virtual router that holds the route.
    pub virtual_router: String,
    /// The route name.
    pub route: String,
    /// Gateway version name -> App Mesh virtual node name. Versions not listed
    /// are ignored; the mapped versions' weights are scaled to 100.
    pub virtual_nodes: BTreeMap<String, String>,
}

/// Keeps an App Mesh route's weighted targets in step with the gateway's weights.
#[derive(Debug, Clone)]
pub struct RouteSync {
    /// The App Mesh client.
    client: Client,
    /// The route and the version mapping.
    config: RouteSyncConfig,
    /// The last sync gave up throttled: the next one makes one attempt
    /// (the SDK's own retries), not [`MAX_ATTEMPTS`], so that a throttling
    /// API is not called a dozen times per sync and reconcile.
    throttled: Arc<AtomicBool>,
}

/// How one attempt failed.
enum AttemptError {
    /// Worth another attempt (conflict, throttling, timeout).
    Retry {
        message: String,
        throttled: bool,
        operation: &'static str,
    },
    /// Final.
    Fatal(AppMeshError),
}

impl RouteSync {
    /// A sync for `config` with an App Mesh client for `sdk_config`.
    pub fn new(sdk_config: &SdkConfig, config: RouteSyncConfig) -> Self {
        Self::from_client(Client::new(sdk_config), config)
    }

    /// A sync using a client built by the caller.
    pub fn from_client(client: Client, config: RouteSyncConfig) -> Self {
        RouteSync {
            client,
            config,
            throttled: Arc::default(),
        }
    }

    /// The route and the version mapping.
    pub fn config(&self) -> &RouteSyncConfig {
        &self.config
    }

    /// Sets the route's weights from `weights` (version -> gateway weight):
    /// DescribeRoute, rewrite the weighted targets (see
    /// [`targets::apply_weights`]: foreign targets kept, the mapped versions
    /// scaled into the rest of 100), then UpdateRoute with the whole spec
    /// (skipped when nothing changes). Conflicts and throttling are retried
    /// with back-off a few times. Returns the percent written per mapped
    /// version. Counted in [`metrics::APPMESH_SYNCS_TOTAL`].
    pub async fn sync(
        &self,
        weights: &BTreeMap<String, u32>,
    ) -> Result<BTreeMap<String, u32>, AppMeshError> {
        let mut never = std::future::pending::<()>();
        let synced = self.sync_until(weights, &mut never).await?;
        Ok(synced.map(|s| s.weights).unwrap_or_default())
    }

    /// [`RouteSync::sync`], abandoned (`Ok(None)`) when `abandon` completes
    /// while no UpdateRoute is on its way: during a DescribeRoute or the
    /// back-off between attempts. An UpdateRoute once sent is always waited
    /// for: dropped, it could still land after a newer decision's write.
    pub async fn sync_until(
        &self,
        weights: &BTreeMap<String, u32>,
        abandon: &mut (dyn Future<Output = ()> + Send + Unpin),
    ) -> Result<Option<Synced>, AppMeshError> {
        let result = self.sync_with_retries(weights, abandon).await;
        let label = match &result {
            Ok(Some(_)) => "ok",
            Ok(None) => return result,
            Err(_) => "error",
        };
        ::metrics::counter!(metrics::APPMESH_SYNCS_TOTAL, "result" => label).increment(1);
        match &result {
            Ok(Some(synced)) if synced.sent => {
                tracing::info!(route = %self.config.route, written = ?synced.weights, "App Mesh route synced")
            }
            Ok(_) => {
                tracing::debug!(route = %self.config.route, "App Mesh route already holds the weights")
            }
            Err(error) => {
                tracing::debug!(route = %self.config.route, %error, "App Mesh route sync failed")
            }
        }
        result
    }

    /// The gateway weight of each version mapped to a virtual node (0 when
    /// the version has none).
    pub fn mapped_weights(&self, weights: &BTreeMap<String, u32>) -> BTreeMap<String, u32> {
        self.config
            .virtual_nodes
            .keys()
            .map(|version| (version.clone(), weights.get(version).copied().unwrap_or(0)))
            .collect()
    }

    async fn sync_with_retries(
        &self,
        weights: &BTreeMap<String, u32>,
        abandon: &mut (dyn Future<Output = ()> + Send + Unpin),
    ) -> Result<Option<Synced>, AppMeshError> {
        let mapped = self.mapped_weights(weights);
        if mapped.values().all(|&w| w == 0) {
            return Err(AppMeshError::NoWeight);
        }
        let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
        let mut attempt = 1;
        let attempts = if self.throttled.load(Ordering::Relaxed) {
            1
        } else {
            MAX_ATTEMPTS
        };
        loop {
            let outcome = self.attempt(&mapped, abandon).await;
            if matches!(outcome, Ok(Some(_)) | Err(AttemptError::Fatal(_))) {
                self.throttled.store(false, Ordering::Relaxed);
            }
            match outcome {
                Ok(synced) => return Ok(synced),
                Err(AttemptError::Fatal(error)) => return Err(error),
                Err(AttemptError::Retry {
                    message,
                    throttled,
                    operation,
                }) if attempt >= attempts => {
                    self.throttled.store(throttled, Ordering::Relaxed);
                    return Err(AppMeshError::GaveUp {
                        attempts: attempt,
                        message,
                        throttled,
                        operation,
                    });
                }
                Err(AttemptError::Retry { message, .. }) => {
                    let delay = backoff.next_delay();
                    tracing::debug!(attempt, %message, ?delay, "retrying App Mesh route sync");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = &mut *abandon => return Ok(None),
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// One DescribeRoute + UpdateRoute round; `Ok(None)` when `abandon`
    /// came during the DescribeRoute.
    async fn attempt(
        &self,
        mapped: &BTreeMap<String, u32>,
        abandon: &mut (dyn Future<Output = ()> + Send + Unpin),
    ) -> Result<Option<Synced>, AttemptError> {
        let mut spec = tokio::select! {
            spec = self.describe() => spec?,
            () = &mut *abandon => return Ok(None),
        };
        let (changed, written) =
            targets::apply_weights(&mut spec, mapped, &self.config.virtual_nodes)
                .map_err(AttemptError::Fatal)?;
        if changed {
            self.client
                .update_route()
                .mesh_name(&self.config.mesh)
                .virtual_router_name(&self.config.virtual_router)
                .route_name(&self.config.route)
                .spec(spec)
                .send()
                .await
                .map_err(|e| attempt_error("UpdateRoute", &e))?;
        }
        Ok(Some(Synced {
            weights: written,
            sent: changed,
        }))
    }

    /// The route's current spec.
    async fn describe(&self) -> Result<RouteSpec, AttemptError> {
        let out = self
            .client
            .describe_route()
            .mesh_name(&self.config.mesh)
            .virtual_router_name(&self.config.virtual_router)
            .route_name(&self.config.route)
            .send()
            .await
            .map_err(|e| attempt_error("DescribeRoute", &e))?;
        out.route()
            .and_then(|r| r.spec.clone())
            .ok_or(AttemptError::Fatal(AppMeshError::NoSpec))
    }
}

/// Classifies an SDK error: conflicts, throttling and timeouts are retried.
fn attempt_error<E>(operation: &'static str, err: &SdkError<E, HttpResponse>) -> AttemptError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = format!("{operation}: {}", errors::describe(err));
    let conflict = errors::error_code(err) == Some("ConflictException");
    match errors::classify(err) {
        ErrorClass::Throttled => AttemptError::Retry {
            message,
            throttled: true,
            operation,
        },
        ErrorClass::Timeout => AttemptError::Retry {
            message,
            throttled: false,
            operation,
        },
        ErrorClass::Other if conflict => AttemptError::Retry {
            message,
            throttled: false,
            operation,
        },
        ErrorClass::Other => AttemptError::Fatal(AppMeshError::Aws {
            operation,
            message: errors::describe(err),
        }),
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_appmesh::operation::update_route::UpdateRouteError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    use super::*;

    fn service(code: &str, status: u16) -> SdkError<UpdateRouteError, HttpResponse> {
        let err = UpdateRouteError::generic(ErrorMetadata::builder().code(code).build());
        let raw = HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
        SdkError::service_error(err, raw)
    }

    #[test]
    fn conflicts_throttling_and_timeouts_are_retried() {
        for (code, status) in [
            ("ConflictException", 409),
            ("TooManyRequestsException", 429),
            ("TooManyRequestsException", 400),
        ] {
            assert!(
                matches!(
                    attempt_error("UpdateRoute", &service(code, status)),
                    AttemptError::Retry { .. }
                ),
                "{code}"
            );
        }
        let timeout: SdkError<UpdateRouteError, HttpResponse> = SdkError::timeout_error("slow");
        assert!(matches!(
            attempt_error("UpdateRoute", &timeout),
            AttemptError::Retry { .. }
        ));
    }

    #[test]
    fn other_errors_are_final() {
        for (code, status) in [
            ("BadRequestException", 400),
            ("NotFoundException", 404),
            ("ForbiddenException", 403),
        ] {
            match attempt_error("UpdateRoute", &service(code, status)) {
                AttemptError::Fatal(AppMeshError::Aws { operation, message }) => {
                    assert_eq!(operation, "UpdateRoute");
                    assert!(message.contains(code), "{message}");
                }
                _ => panic!("{code} should be final"),
            }
        }
    }

    #[test]
    fn mapped_weights_are_the_mapped_versions_only() {
        let sync_config = RouteSyncConfig {
            mesh: "m".into(),
            virtual_router: "r".into(),
            route: "rt".into(),
            virtual_nodes: BTreeMap::from([
                ("v1".to_string(), "node-1".to_string()),
                ("v2".to_string(), "node-2".to_string()),
            ]),
        };
        let conf = aws_sdk_appmesh::Config::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let sync = RouteSync::from_client(Client::from_conf(conf), sync_config);
        let weights = BTreeMap::from([
            ("v1".to_string(), 999_999),
            ("unmapped".to_string(), 5_000_000),
        ]);
        assert_eq!(
            sync.mapped_weights(&weights),
            BTreeMap::from([("v1".to_string(), 999_999), ("v2".to_string(), 0)])
        );
    }
}
