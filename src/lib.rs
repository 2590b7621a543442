//! canary-gateway: a native canary gateway for AWS ECS.
//!
//! It takes the place of the App Mesh virtual gateway (an Envoy container
//! behind the ALB): each request goes to the stable version or a canary by
//! weights that change at runtime, with sticky users and a QA override.
//!
//! ```text
//!  DATA PATH (per request, lock-free)
//!
//!   client ──► proxy::server ──► proxy::h1 ─────► choose version ──► upstream::pick ──► pooled
//!              (timeouts,        simple requests  (override,         (power of two      HTTP/1.1
//!               drain)           (no body or a    sticky hash,       choices, ejection)  connection
//!                 │              Content-Length   Weyl sequence;                            │
//!                 │              one): own server Snapshot load()ed                         │
//!                 │              ──► Proxy::serve_simple              once per request)     │
//!                 └─ any other request (chunked, upgrade, h2c, ...):                        │
//!                    hyper's server ──► Proxy::handle ──────┘                               │
//!                  simple or no request body: proxy::upstream_client, in the request's task ◄┤
//!                  any other body or an upgrade: hyper's client, a task per connection ◄─────┤
//!   client ◄────────── response streamed back (metrics recorded once, at its end) ◄─────────┘
//!                      (a long body with a length: proxy::relay, one buffer per thread)
//!
//!  CONTROL PATH (one writer)
//!
//!   config file (SIGHUP, file change) ─┐
//!   admin API (PUT /weights, promote) ─┤                     validate, build      ┌─────────────┐
//!   discovery (Cloud Map polling) ─────┼──► control::Control ─────────────────► │ ArcSwap<    │
//!   store (state file / fleet store) ──┘     (store first,    new Snapshot,      │  Snapshot>  │
//!                                             then apply)     swap it whole      └─────────────┘
//!                                                  └──► App Mesh route sync, metrics, audit log
//! ```
//!
//! Modules, by path:
//!
//! - data path: [`proxy`] (listener, the own HTTP/1.1 server and client, version
//!   choice, upstream pools, body streaming and relaying, error responses);
//! - control path: [`config`] (two-stage: raw TOML, then a validated `Config`),
//!   [`admin`] (the admin API), [`discovery`] (endpoint sources) with [`aws`]
//!   (Cloud Map discovery and store, DynamoDB store, App Mesh), [`store`] (where weight decisions
//!   are kept), [`reload`] (SIGHUP and file changes), [`route_sync`] (mirroring
//!   decisions to the App Mesh route), [`rollout`] (progressive delivery: steps
//!   judged against stable), all feeding [`control`], the one writer;
//! - [`snapshot`]: the immutable state that joins the two paths;
//! - [`cli`]: `health` and `ctl`, the admin API from a shell or a pipeline;
//! - [`gateway`] assembles a running gateway; [`demo`] is the built-in demo;
//!   [`telemetry`] sets up logs and the Prometheus recorder; [`metrics`] names
//!   every metric; [`future`] holds the boxed future the async traits return;
//!   [`tls`] terminates TLS on the listener and speaks it to upstreams.

#![forbid(unsafe_code)]

pub mod admin;
pub mod aws;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod discovery;
pub mod future;
pub mod gateway;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod rollout;
pub mod route_sync;
pub mod snapshot;
pub mod store;
pub mod telemetry;
pub mod tls;

/// The in-memory `metrics` recorder the unit tests assert on (shared with
/// the integration tests).
#[cfg(test)]
#[path = "../tests/support/recorder.rs"]
mod test_recorder;
