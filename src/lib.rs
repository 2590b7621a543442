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
//!               drain)           (no body): own   sticky hash,       choices, ejection)  connection
//!                 │              HTTP/1.1 server  Weyl sequence;                            │
//!                 │              ──► Proxy::serve_simple              Snapshot load()ed     │
//!                 └─ any other request (body, upgrade, h2c, ...):     once per request)     │
//!                    hyper's server ──► Proxy::handle ──────┘                               │
//!                          no request body: proxy::exchange, in the request's own task ◄───┤
//!                          a body or an upgrade: hyper's client, a task per connection ◄───┤
//!   client ◄────────── response streamed back (metrics recorded once, at its end) ◄─────────┘
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
//! Modules: [`proxy`] is the data path; [`config`], [`admin`], [`discovery`],
//! [`store`] and [`control`] the control path; [`snapshot`] is what joins them.

pub mod admin;
pub mod aws;
pub mod config;
pub mod control;
pub mod demo;
pub mod discovery;
pub mod gateway;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod snapshot;
pub mod store;
pub mod telemetry;
