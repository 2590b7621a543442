//! Measurements (one wrk run with CPU and memory accounting) and their
//! statistics.

use anyhow::{Context, Result};

use crate::proc_accounting::{cpu_jiffies_of, cpu_ticks, peak_rss_kib};
use crate::targets::Target;
use crate::wrk::{Wrk, WrkResult};
use crate::{DISTURBED_PERCENT, LOAD_CPU, PROXY_CORE, PROXY_CPU};

#[derive(Clone, Debug)]
pub struct Sample {
    pub wrk: WrkResult,
    /// Proxy CPU (utime+stime, all processes/threads) per request, in µs.
    pub cpu_us_per_req: Option<f64>,
    /// Summed VmHWM of the proxy's processes after the run, in KiB.
    pub rss_kib: Option<u64>,
    /// p99 minus the p99 of the direct run of the same repetition, in µs.
    pub p99_added_us: Option<f64>,
    /// Core 1 was busy with other processes during the run.
    pub disturbed: bool,
    /// How busy the load core (wrk, upstreams) and the proxy core were, in
    /// percent: whichever is near 100 limits the run.
    pub busy_pct: (Option<f64>, Option<f64>),
    /// Scenario 8: proxy RSS growth per idle keep-alive connection, in
    /// bytes (measured once per target, on the fresh process).
    pub idle_bytes: Option<f64>,
}

pub fn percent(p: Option<f64>) -> String {
    p.map_or("-".into(), |p| format!("{p:.0}%"))
}

/// Busy share of a core between two /proc/stat readings, in percent.
pub fn busy_pct(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((b0, t0), (b1, t1)) = (before?, after?);
    let span = t1.checked_sub(t0).filter(|s| *s > 0)?;
    Some(100.0 * b1.saturating_sub(b0) as f64 / span as f64)
}

pub async fn measure(t: &Target, wrk: &Wrk, conns: u32, secs: u64, tck: f64) -> Result<Sample> {
    let pids = t.pids();
    let before = cpu_ticks(&pids);
    let core_before = cpu_jiffies_of(PROXY_CPU);
    let load_before = cpu_jiffies_of(LOAD_CPU);
    let r = wrk
        .run(&t.url(), conns, secs)
        .await
        .with_context(|| format!("wrk against {}", t.kind.name()))?;
    let pids_after = t.pids();
    let after = cpu_ticks(&pids_after);
    // Time the proxy core spent on anything but the proxy (a build, a test...).
    // Kernel work for the proxy's sockets can land here too, so only a large
    // share means the run was disturbed.
    let mut disturbed = false;
    let core_after = cpu_jiffies_of(PROXY_CPU);
    let busy = (
        busy_pct(load_before, cpu_jiffies_of(LOAD_CPU)),
        busy_pct(core_before, core_after),
    );
    if let (Some((b0, t0)), Some((b1, t1))) = (core_before, core_after) {
        let other = b1.saturating_sub(b0) as f64 - after.saturating_sub(before) as f64;
        let span = t1.saturating_sub(t0).max(1) as f64;
        let pct = 100.0 * other.max(0.0) / span;
        if pct > DISTURBED_PERCENT {
            disturbed = true;
            eprintln!(
                "  warning: core {PROXY_CORE} spent {pct:.0}% of this run outside {}: another process competes, this sample is noisy",
                t.kind.name()
            );
        }
    }
    let (cpu, rss) = if t.proc.is_some() {
        let cpu_us = after.saturating_sub(before) as f64 * 1e6 / tck;
        (
            Some(cpu_us / r.requests.max(1) as f64),
            Some(peak_rss_kib(&pids_after)),
        )
    } else {
        (None, None)
    };
    Ok(Sample {
        wrk: r,
        cpu_us_per_req: cpu,
        rss_kib: rss,
        p99_added_us: None,
        disturbed,
        busy_pct: busy,
        idle_bytes: None,
    })
}

#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn stat(values: impl IntoIterator<Item = f64>) -> Option<Stat> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Stat {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

pub struct Summary {
    pub rps: Stat,
    /// None when the load generator reports no percentiles (h2load).
    pub p50_ms: Option<Stat>,
    pub p99_ms: Option<Stat>,
    pub p99_added_ms: Option<Stat>,
    pub cpu_us: Option<Stat>,
    pub rss_mib: Option<Stat>,
    pub idle_bytes: Option<Stat>,
    pub failures: u64,
    pub requests: u64,
    pub disturbed: usize,
}

pub fn summarize(samples: &[Sample]) -> Option<Summary> {
    Some(Summary {
        rps: stat(samples.iter().map(|s| s.wrk.rps))?,
        p50_ms: stat(samples.iter().map(|s| s.wrk.p50_us / 1e3)),
        p99_ms: stat(samples.iter().map(|s| s.wrk.p99_us / 1e3)),
        p99_added_ms: stat(
            samples
                .iter()
                .filter_map(|s| s.p99_added_us.map(|v| v / 1e3)),
        ),
        cpu_us: stat(samples.iter().filter_map(|s| s.cpu_us_per_req)),
        rss_mib: stat(
            samples
                .iter()
                .filter_map(|s| s.rss_kib.map(|k| k as f64 / 1024.0)),
        ),
        idle_bytes: stat(samples.iter().filter_map(|s| s.idle_bytes)),
        failures: samples.iter().map(|s| s.wrk.failures()).sum(),
        requests: samples.iter().map(|s| s.wrk.requests).sum(),
        disturbed: samples.iter().filter(|s| s.disturbed).count(),
    })
}

pub fn fmt_stat(s: Option<Stat>, prec: usize) -> String {
    match s {
        Some(s) => format!("{:.p$} ({:.p$}-{:.p$})", s.median, s.min, s.max, p = prec),
        None => "-".into(),
    }
}
