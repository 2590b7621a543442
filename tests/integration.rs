//! Integration tests: real gateways and upstreams on 127.0.0.1:0, real HTTP.
//! One test binary (faster to link); each area in its own module.

#[path = "integration/support.rs"]
mod support;

#[path = "integration/proxy.rs"]
mod proxy;

#[path = "integration/admin.rs"]
mod admin;

#[path = "integration/lifecycle.rs"]
mod lifecycle;

#[path = "integration/own_server.rs"]
mod own_server;

#[path = "integration/recorder.rs"]
mod recorder;

#[path = "integration/framing.rs"]
mod framing;

#[path = "integration/request_rules.rs"]
mod request_rules;

#[path = "integration/client_errors.rs"]
mod client_errors;

#[path = "integration/client_gone.rs"]
mod client_gone;

#[path = "integration/properties.rs"]
mod properties;

#[path = "integration/tls.rs"]
mod tls;

#[path = "support/test_ca.rs"]
mod test_ca;

#[path = "integration/deploy.rs"]
mod deploy;

#[path = "integration/rollout.rs"]
mod rollout;

#[path = "support/moto.rs"]
mod moto;

#[path = "support/cloudmap_fixture.rs"]
mod cloudmap_fixture;

#[path = "integration/logging.rs"]
mod logging;

#[path = "integration/dashboard.rs"]
mod dashboard;
