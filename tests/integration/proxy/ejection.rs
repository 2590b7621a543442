//! Endpoint ejection: with every endpoint ejected a request makes one
//! connect attempt.

use std::net::SocketAddr;

use crate::support::*;

/// Long ejections: no check below races an ejection's end.
const LONG_EJECTIONS: &str = "[upstream]\neject_base = \"60s\"\neject_max = \"120s\"\n";

/// The health `/status` gives the endpoint `addr` of the first version.
fn health(gw: &Gateway, addr: SocketAddr) -> String {
    let control = gw.running.as_ref().unwrap().control.clone();
    let status = control.status();
    let endpoints = &status.versions[0].endpoints;
    let found = endpoints.iter().find(|e| e.address == addr.to_string());
    found.map(|e| e.health.to_owned()).unwrap_or_default()
}

/// With every endpoint of a version ejected, a request makes one connect
/// attempt, not one per endpoint: with endpoints that drop SYNs (ECS tasks
/// gone with their network interface) each would wait `upstream_connect`
/// twice before its 502. Refused ports here: the attempts are counted in
/// `canary_upstream_errors_total{kind="connect"}`.
#[tokio::test]
async fn with_every_endpoint_ejected_a_request_makes_one_connect_attempt() {
    let name = "all-ejected";
    let dead = vec![dead_addr().await, dead_addr().await];
    let gw = Gateway::start(&config_endpoints(
        LONG_EJECTIONS,
        &[(name, 1, dead.clone())],
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(get(gw.addr, "/", &[]).await.status, 502);
        if dead.iter().all(|&d| health(&gw, d) == "ejected") {
            break;
        }
    }
    assert!(dead.iter().all(|&d| health(&gw, d) == "ejected"));
    let connects = async || {
        let text = admin(gw.admin, "GET", "/metrics", None, "").await.text();
        let labels = [("version", name), ("kind", "connect")];
        metric_value(&text, "canary_upstream_errors_total", &labels)
    };
    let before = connects().await;
    for _ in 0..10 {
        let reply = get(gw.addr, "/", &[]).await;
        assert_eq!(reply.status, 502);
        assert_eq!(reply.header("x-canary-error"), Some("upstream-unreachable"));
    }
    assert_eq!(connects().await - before, 10.0);
    gw.shutdown().await;
}
