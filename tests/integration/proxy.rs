//! Data-path behaviour over real sockets, one file per area under
//! tests/integration/proxy/.

use std::collections::BTreeMap;

#[path = "proxy/bodies.rs"]
mod bodies;
#[path = "proxy/draining.rs"]
mod draining;
#[path = "proxy/ejection.rs"]
mod ejection;
#[path = "proxy/h2c.rs"]
mod h2c;
#[path = "proxy/headers.rs"]
mod headers;
#[path = "proxy/malformed_requests.rs"]
mod malformed_requests;
#[path = "proxy/override_header.rs"]
mod override_header;
#[path = "proxy/slow_clients.rs"]
mod slow_clients;
#[path = "proxy/split.rs"]
mod split;
#[path = "proxy/stickiness.rs"]
mod stickiness;
#[path = "proxy/upgrade.rs"]
mod upgrade;
#[path = "proxy/upstream_connections.rs"]
mod upstream_connections;
#[path = "proxy/upstream_errors.rs"]
mod upstream_errors;
#[path = "proxy/upstream_responses.rs"]
mod upstream_responses;

/// How many answers came from `name`.
fn count(counts: &BTreeMap<String, usize>, name: &str) -> usize {
    counts.get(name).copied().unwrap_or(0)
}

/// Header lines of an `/headers` answer, lower-cased names, in order.
fn header_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect()
}

/// The values of field `name` in `lines`, in order.
fn header_of<'a>(lines: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}
