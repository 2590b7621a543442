//! Churn phase: weight changes and reloads under steady load.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, StatusCode};

use crate::client::Conn;
use crate::processes::{Proc, send_signal};
use crate::settings::Knobs;
use crate::targets::Target;
use crate::wrk::{Wrk, WrkResult};

pub struct ChurnResult {
    pub wrk: WrkResult,
    pub weight_ok: usize,
    pub weight_failed: Vec<String>,
    pub reloads_sent: usize,
}

pub async fn churn(gw: &mut Target, wrk: &Wrk, knobs: &Knobs, token: &str) -> Result<ChurnResult> {
    let admin = gw
        .admin
        .ok_or_else(|| anyhow!("gateway without admin address"))?;
    let pid = gw
        .proc
        .as_ref()
        .map(Proc::pid)
        .ok_or_else(|| anyhow!("gateway without process"))?;
    let url = gw.url();
    let secs = knobs.churn_duration;
    let conns = knobs.churn_connections;
    let load = async { wrk.run(&url, conns, secs).await };

    let changes = async {
        // Let wrk connect first, and stop changing a second before it ends.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let window = Duration::from_millis(secs * 1000 - 1500);
        let n = knobs.weight_changes;
        let step = window / (n.max(1) as u32 + 1);
        let reload_every = n
            .checked_div(knobs.reloads)
            .map_or(usize::MAX, |every| every.max(1));
        let patterns = [(95, 5), (90, 10), (50, 50), (10, 90), (99, 1), (80, 20)];
        let auth = format!("Bearer {token}");
        let mut ok = 0usize;
        let mut failed = Vec::new();
        let mut reloads = 0usize;
        for i in 0..n {
            let (a, b) = patterns[i % patterns.len()];
            let body = serde_json::json!({"weights": {"v1": a, "v2": b}}).to_string();
            let res = async {
                let mut c = Conn::open(admin).await?;
                c.send(
                    Method::PUT,
                    "/weights",
                    &[
                        (AUTHORIZATION, auth.clone()),
                        (CONTENT_TYPE, "application/json".into()),
                    ],
                    Bytes::from(body),
                )
                .await
            }
            .await;
            match res {
                Ok(r) if r.status() == StatusCode::OK => ok += 1,
                Ok(r) => failed.push(format!(
                    "PUT /weights #{i}: {} {}",
                    r.status(),
                    String::from_utf8_lossy(r.body())
                )),
                Err(e) => failed.push(format!("PUT /weights #{i}: {e:#}")),
            }
            if reloads < knobs.reloads && (i + 1) % reload_every == reload_every / 2 {
                if send_signal(pid, "HUP") {
                    reloads += 1;
                } else {
                    failed.push(format!("kill -HUP {pid} failed"));
                }
            }
            tokio::time::sleep(step).await;
        }
        (ok, failed, reloads)
    };
    let (load, (weight_ok, weight_failed, reloads_sent)) = tokio::join!(load, changes);
    let wrk = load.context("wrk during weight changes")?;
    if let Some(p) = gw.proc.as_mut() {
        p.check_alive()?;
    }
    Ok(ChurnResult {
        wrk,
        weight_ok,
        weight_failed,
        reloads_sent,
    })
}
