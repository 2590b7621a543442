//! Data-path behaviour over real sockets.

use crate::support::*;

#[tokio::test]
async fn splits_by_weight_and_names_the_version() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let gw = Gateway::start(&config(
        "response_header = \"x-canary-version\"",
        &[("v1", 99, v1.addr), ("v2", 1, v2.addr)],
    ))
    .await;
    let counts = split_counts(gw.addr, 2000, &[]).await;
    let canary = counts.get("v2").copied().unwrap_or(0);
    assert!((15..=25).contains(&canary), "{counts:?}");
    let reply = get(gw.addr, "/", &[]).await;
    assert_eq!(
        reply.header("x-canary-version"),
        Some(reply.text().as_str())
    );
    gw.shutdown().await;
}
