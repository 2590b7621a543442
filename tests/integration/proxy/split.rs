//! Weighted split: the versions' shares of traffic match their weights.

use super::count;
use crate::support::*;

#[tokio::test]
async fn splits_by_weight_and_names_the_version() {
    let (_v1, _v2, gw) = two_versions("response_header = \"x-canary-version\"", 99, 1).await;
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

/// Sends `n` requests over 8 connections to a v1/v2 split of `stable:canary`
/// and checks that the canary's count is within `expected`.
async fn assert_canary_share(
    stable: u32,
    canary: u32,
    n: usize,
    expected: std::ops::RangeInclusive<usize>,
) {
    let (_v1, _v2, gw) = two_versions("", stable, canary).await;
    let counts = split_counts_concurrent(gw.addr, n, 8, &[]).await;
    assert_eq!(count(&counts, "v1") + count(&counts, "v2"), n, "{counts:?}");
    let got = count(&counts, "v2");
    assert!(
        expected.contains(&got),
        "{canary}/{} over {n}: {counts:?}",
        stable + canary
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_ratio_one_in_a_hundred() {
    assert_canary_share(99, 1, 10_000, 70..=130).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_ratio_one_in_a_thousand() {
    assert_canary_share(999, 1, 20_000, 5..=35).await;
}
