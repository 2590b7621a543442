//! wrk: running it and parsing its report. A scenario's request shape is a
//! Lua script (`-s`); scenario 7 hands the run to h2load instead.

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, Result, anyhow, bail};

use crate::LOAD_CORE;
use crate::h2load::H2load;
use crate::processes::pinned_async;
use crate::scenarios::RequestShape;

#[derive(Clone, Debug, Default)]
pub struct WrkResult {
    pub requests: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub non_2xx: u64,
    pub socket_errors: u64,
    /// What the TLS handshakes negotiated, when the client reports it
    /// (the bench's handshake client).
    pub negotiated: Option<String>,
}

impl WrkResult {
    /// Non-2xx answers and socket errors; a run that completed no request
    /// at all counts as one failure (nothing was checked).
    pub fn failures(&self) -> u64 {
        self.non_2xx + self.socket_errors + u64::from(self.requests == 0)
    }
}

/// "614.00us" / "1.23ms" / "2.00s" / "1.00m" -> microseconds.
pub fn parse_duration_us(s: &str) -> Result<f64> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| anyhow!("latency {s:?} has no unit"))?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| anyhow!("latency {s:?}: bad number"))?;
    let factor = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => bail!("latency {s:?}: unknown unit {unit:?}"),
    };
    Ok(v * factor)
}

pub fn parse_wrk(out: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    let (mut have_rps, mut have_p50, mut have_p99, mut have_reqs) = (false, false, false, false);
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v
                .trim()
                .parse()
                .map_err(|_| anyhow!("wrk: bad Requests/sec line {t:?}"))?;
            have_rps = true;
        } else if let Some(v) = t.strip_prefix("50%") {
            r.p50_us = parse_duration_us(v.trim())?;
            have_p50 = true;
        } else if let Some(v) = t.strip_prefix("99%") {
            r.p99_us = parse_duration_us(v.trim())?;
            have_p99 = true;
        } else if t.contains(" requests in ") {
            r.requests = t
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| anyhow!("wrk: bad requests line {t:?}"))?;
            have_reqs = true;
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = v
                .trim()
                .parse()
                .map_err(|_| anyhow!("wrk: bad Non-2xx line {t:?}"))?;
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in v.split(',') {
                let n = part
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<u64>().ok())
                    .ok_or_else(|| anyhow!("wrk: bad Socket errors line {t:?}"))?;
                r.socket_errors += n;
            }
        }
    }
    if !(have_rps && have_p50 && have_p99 && have_reqs) {
        bail!("wrk output incomplete (is this `wrk --latency` output?):\n{out}");
    }
    Ok(r)
}

#[derive(Clone)]
pub struct Wrk {
    pub exe: PathBuf,
    pub taskset: Option<PathBuf>,
    pub threads: u32,
    /// The scenario's Lua script (None: wrk's plain `GET /`).
    pub script: Option<PathBuf>,
    /// HTTP/2 scenario: h2load with this request shape instead of wrk.
    pub h2load: Option<std::sync::Arc<(H2load, RequestShape)>>,
    /// Scenario 6: the bench's own TLS client (`handshake_client`) instead of wrk.
    pub handshake_client: bool,
}

impl Wrk {
    pub async fn run(&self, url: &str, connections: u32, secs: u64) -> Result<WrkResult> {
        if let Some(h2) = &self.h2load {
            return h2.0.run(url, connections, secs, &h2.1).await;
        }
        if self.handshake_client {
            let exe = std::env::current_exe().context("locating the bench executable")?;
            let addr = url
                .strip_prefix("https://")
                .ok_or_else(|| anyhow!("the handshake client needs an https URL, not {url}"))?
                .trim_end_matches('/');
            let mut cmd = pinned_async(self.taskset.as_deref(), LOAD_CORE, &exe);
            cmd.args(["--handshake-client", addr])
                .args(["--connections", &connections.to_string()])
                .args(["--seconds", &secs.to_string()]);
            return crate::handshake_client::parse_report(
                &output_of(cmd, "handshake client").await?,
            );
        }
        let threads = self.threads.min(connections).max(1);
        let mut cmd = pinned_async(self.taskset.as_deref(), LOAD_CORE, &self.exe);
        cmd.arg("-t")
            .arg(threads.to_string())
            .arg("-c")
            .arg(connections.to_string())
            .arg("-d")
            .arg(format!("{secs}s"))
            .arg("--timeout")
            .arg("5s")
            .arg("--latency");
        if let Some(script) = &self.script {
            cmd.arg("-s").arg(script);
        }
        cmd.arg(url);
        parse_wrk(&output_of(cmd, "wrk").await?)
    }
}

/// Runs a load generator to its end; its stdout, or an error with both
/// outputs when it fails.
pub async fn output_of(mut cmd: tokio::process::Command, name: &str) -> Result<String> {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = cmd
        .output()
        .await
        .with_context(|| format!("running {name}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{name} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}
