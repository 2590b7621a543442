//! Removes the host prefix that some operations add to the endpoint.
//!
//! Cloud Map sends DiscoverInstances and DiscoverInstancesRevision to
//! `data-servicediscovery.<region>.amazonaws.com`: the operation stores the
//! [`EndpointPrefix`] `data-` in the config bag, and the orchestrator prepends
//! it to the resolved endpoint's host. With a custom endpoint URL such as
//! `http://127.0.0.1:5000` (moto, a VPC endpoint, a proxy) that yields the host
//! `data-127.0.0.1`, which does not resolve. Installed only when an endpoint URL
//! is configured, [`StripEndpointPrefix`] unsets the prefix before each attempt;
//! endpoint resolution runs after `read_before_attempt`.

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::endpoint::EndpointPrefix;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// Interceptor that sends prefixed operations to the configured endpoint as is.
#[derive(Debug, Clone, Copy, Default)]
pub struct StripEndpointPrefix;

impl Intercept for StripEndpointPrefix {
    fn name(&self) -> &'static str {
        "StripEndpointPrefix"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state().unset::<EndpointPrefix>();
        Ok(())
    }
}
