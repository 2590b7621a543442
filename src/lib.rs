//! canary-gateway: a native canary gateway for AWS ECS.
//!
//! It takes the place of the App Mesh virtual gateway (an Envoy container
//! behind the ALB): each request goes to the stable version or a canary by
//! weights that change at runtime, with sticky users and a QA override.
//!
//! ```text
//!  DATA PATH (per request, lock-free)
//!
//!   client ──► proxy::server ──► Proxy::handle ──► choose version ──► upstream::pick ──► pooled
//!              (h1 / h2c,        load() the        (override,         (power of two      HTTP/1.1
//!               timeouts,        Snapshot once)     sticky hash,       choices, ejection)  connection
//!               drain)                              Weyl sequence)                          │
//!                          no request body: proxy::exchange, in the request's own task ◄───┤
//!                          a body or an upgrade: hyper's client, a task per connection ◄───┤
//!   client ◄───────────────── response streamed back (ProxyBody records metrics at its end) ◄┘
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
