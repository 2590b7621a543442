//! The test support every test crate shares: tagged upstreams, a small
//! HTTP/1.1 client, polling, split counting, admin calls, Prometheus text
//! parsing, gateway config text and the real binary as a child process.
//!
//! Include it with `#[path = "…/support/shared.rs"] mod shared;` and
//! `pub use shared::*;` (tests/integration/support.rs and
//! tests/support/gateway_proc.rs do).

#![allow(dead_code, unused_imports)]

#[path = "client.rs"]
mod client;
#[path = "config_text.rs"]
mod config_text;
#[path = "metrics_text.rs"]
mod metrics_text;
#[path = "process.rs"]
mod process;
#[path = "server_task.rs"]
mod server_task;
#[path = "upstream.rs"]
mod upstream;

pub use client::*;
pub use config_text::*;
pub use metrics_text::*;
pub use process::*;
pub use server_task::*;
pub use upstream::*;
