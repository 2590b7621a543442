//! Scenario 8: idle keep-alive connections held open next to the load,
//! each having made one ALB-shaped request (as an ALB leaves its pooled
//! connections to a target), and the proxy's memory per idle connection.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::client::Conn;
use crate::probe::probe_request;
use crate::proc_accounting::rss_kib;
use crate::scenarios::Scenario;

pub struct Idle {
    pub conns: Vec<Conn>,
    /// Proxy RSS growth per idle connection, in bytes.
    pub bytes_per_conn: Option<f64>,
}

/// Opens `n` connections to `addr`, one request each, and reads how much
/// the proxy's resident memory (`pids`) grew per connection.
pub async fn open_idle(addr: SocketAddr, n: usize, pids: &[u32]) -> Result<Idle> {
    let before = (!pids.is_empty()).then(|| rss_kib(pids));
    let req = probe_request(Scenario::AlbGet)?;
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = Conn::open(addr)
            .await
            .with_context(|| format!("idle connection {i}"))?;
        let r = c
            .send(req.method.clone(), req.path, &req.headers, req.body.clone())
            .await
            .with_context(|| format!("request on idle connection {i}"))?;
        anyhow::ensure!(
            r.status().is_success(),
            "idle connection {i}: {}",
            r.status()
        );
        conns.push(c);
    }
    // Let the proxy finish with the last requests before reading its memory.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bytes_per_conn =
        before.map(|b| (rss_kib(pids) as f64 - b as f64) * 1024.0 / n.max(1) as f64);
    Ok(Idle {
        conns,
        bytes_per_conn,
    })
}

impl Idle {
    /// How many of the idle connections the proxy has not closed.
    pub fn still_open(&self) -> usize {
        self.conns.iter().filter(|c| !c.sender.is_closed()).count()
    }
}
