//! Split check: each proxy sends about 10% of requests to v2.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hyper::{Method, StatusCode};

use crate::client::Conn;
use crate::settings::Knobs;
use crate::targets::Target;

#[derive(Default)]
pub struct SplitCount {
    pub v1: usize,
    pub v2: usize,
    pub other: usize,
}

pub async fn count_versions(addr: SocketAddr, total: usize) -> Result<SplitCount> {
    const CONNS: usize = 8;
    let mut tasks = Vec::new();
    for i in 0..CONNS {
        let n = total / CONNS + usize::from(i < total % CONNS);
        tasks.push(tokio::spawn(async move {
            let mut c = SplitCount::default();
            let mut conn = Conn::open(addr).await?;
            for _ in 0..n {
                let r = conn.send(Method::GET, "/", &[], Bytes::new()).await?;
                // Every upstream kind names its version in X-Version.
                let version = r.headers().get("x-version").map(|v| v.as_bytes());
                match (r.status(), version) {
                    (StatusCode::OK, Some(b"v1")) => c.v1 += 1,
                    (StatusCode::OK, Some(b"v2")) => c.v2 += 1,
                    _ => c.other += 1,
                }
            }
            Ok::<_, anyhow::Error>(c)
        }));
    }
    let mut sum = SplitCount::default();
    for t in tasks {
        let c = t.await??;
        sum.v1 += c.v1;
        sum.v2 += c.v2;
        sum.other += c.other;
    }
    Ok(sum)
}

/// Sends `knobs.split_requests` through the target and checks ~90/10.
pub async fn check_split(t: &Target, knobs: &Knobs) -> Result<()> {
    let total = knobs.split_requests;
    let c = count_versions(t.addr, total)
        .await
        .with_context(|| format!("split check through {}", t.kind.name()))?;
    let share = |n: usize| 100.0 * n as f64 / total.max(1) as f64;
    println!(
        "  split {:<8} {total} requests: v1 {} ({:.1}%), v2 {} ({:.1}%), other {}",
        t.kind.name(),
        c.v1,
        share(c.v1),
        c.v2,
        share(c.v2),
        c.other
    );
    if c.other > 0 || (share(c.v2) - 10.0).abs() > knobs.split_tolerance {
        bail!(
            "{} does not split 90/10: v1 {:.1}% v2 {:.1}% other {} (tolerance ±{} points)",
            t.kind.name(),
            share(c.v1),
            share(c.v2),
            c.other,
            knobs.split_tolerance
        );
    }
    Ok(())
}
