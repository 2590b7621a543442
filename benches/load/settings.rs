//! Settings: the LOAD_* environment variables the benchmark reads.

use anyhow::{Result, anyhow, bail};

use crate::scenarios::{Scenario, UpstreamKind};
use crate::targets::Kind;

pub struct Knobs {
    /// Seconds per measured wrk run.
    pub duration: u64,
    /// Repetitions per (concurrency, target).
    pub reps: usize,
    /// Seconds of warm-up per target.
    pub warmup: u64,
    pub connections: Vec<u32>,
    pub wrk_threads: u32,
    pub targets: Vec<Kind>,
    pub split_requests: usize,
    /// Allowed deviation of the v2 share from 10%, in percentage points.
    pub split_tolerance: f64,
    pub weight_changes: usize,
    pub reloads: usize,
    /// Seconds of steady load during the weight changes and reloads.
    pub churn_duration: u64,
    pub churn_connections: u32,
    pub keep_dir: bool,
    /// LOAD_SCENARIOS: which scenarios run, in this order.
    pub scenarios: Vec<Scenario>,
    /// LOAD_UPSTREAMS: the upstream kinds of scenarios 2-8.
    pub upstreams: Vec<UpstreamKind>,
    /// LOAD_IDLE_CONNECTIONS: idle keep-alive connections of scenario 8.
    pub idle_connections: usize,
    /// LOAD_HANDSHAKE_CLIENT: scenario 6's load client, `rustls` (the
    /// bench's own, `handshake_client`; default) or `wrk`.
    pub handshake_client_own: bool,
}

/// A comma-separated list, each item parsed by `parse`; the default when
/// the variable is unset or empty.
fn env_list<T: PartialEq>(
    name: &str,
    parse: impl Fn(&str) -> Result<T>,
    default: Vec<T>,
) -> Result<Vec<T>> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => {
            let mut out: Vec<T> = Vec::new();
            for item in v.split(',') {
                let t = parse(item.trim())?;
                if !out.contains(&t) {
                    out.push(t);
                }
            }
            Ok(out)
        }
        _ => Ok(default),
    }
}

pub fn env_parse<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| anyhow!("{name}={v:?} is not a valid value")),
        _ => Ok(default),
    }
}

impl Knobs {
    pub fn from_env() -> Result<Self> {
        let quick = std::env::var("LOAD_QUICK").is_ok_and(|v| v == "1");
        let connections = match std::env::var("LOAD_CONNECTIONS") {
            Ok(v) if !v.trim().is_empty() => v
                .split(',')
                .map(|c| {
                    c.trim()
                        .parse::<u32>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| anyhow!("LOAD_CONNECTIONS: bad value {c:?}"))
                })
                .collect::<Result<Vec<_>>>()?,
            _ => vec![50, 256],
        };
        let targets = match std::env::var("LOAD_TARGETS") {
            Ok(v) if !v.trim().is_empty() => {
                let mut t = v
                    .split(',')
                    .map(|s| Kind::parse(s.trim()))
                    .collect::<Result<Vec<_>>>()?;
                // Direct is the reference for "p99 added": always measured.
                if !t.contains(&Kind::Direct) {
                    t.insert(0, Kind::Direct);
                }
                t.dedup();
                t
            }
            _ => vec![Kind::Direct, Kind::Gateway, Kind::Nginx, Kind::Haproxy],
        };
        let knobs = Knobs {
            duration: env_parse("LOAD_DURATION", if quick { 2 } else { 8 })?,
            reps: env_parse("LOAD_REPS", if quick { 1 } else { 3 })?,
            warmup: env_parse("LOAD_WARMUP", if quick { 1 } else { 3 })?,
            connections,
            wrk_threads: env_parse("LOAD_WRK_THREADS", 1)?,
            targets,
            split_requests: env_parse("LOAD_SPLIT_REQUESTS", 2000)?,
            split_tolerance: env_parse("LOAD_SPLIT_TOLERANCE", 3.0)?,
            weight_changes: env_parse("LOAD_WEIGHT_CHANGES", 100)?,
            reloads: env_parse("LOAD_RELOADS", 5)?,
            churn_duration: env_parse("LOAD_CHURN_DURATION", if quick { 4 } else { 10 })?,
            churn_connections: env_parse("LOAD_CHURN_CONNECTIONS", 50)?,
            keep_dir: std::env::var("LOAD_KEEP_DIR").is_ok_and(|v| v == "1"),
            scenarios: env_list(
                "LOAD_SCENARIOS",
                Scenario::parse,
                [1, 2, 3, 4, 8].map(|n| Scenario::ALL[n - 1]).to_vec(),
            )?,
            upstreams: env_list(
                "LOAD_UPSTREAMS",
                UpstreamKind::parse,
                vec![UpstreamKind::Service, UpstreamKind::Nginx],
            )?,
            idle_connections: env_parse("LOAD_IDLE_CONNECTIONS", 1000)?,
            handshake_client_own: match std::env::var("LOAD_HANDSHAKE_CLIENT").as_deref() {
                Err(_) | Ok("" | "rustls") => true,
                Ok("wrk") => false,
                Ok(other) => bail!("LOAD_HANDSHAKE_CLIENT: {other:?} is not `rustls` or `wrk`"),
            },
        };
        if knobs.duration == 0 || knobs.reps == 0 || knobs.wrk_threads == 0 {
            bail!("LOAD_DURATION, LOAD_REPS and LOAD_WRK_THREADS must be > 0");
        }
        if knobs.churn_duration < 2 {
            bail!("LOAD_CHURN_DURATION must be >= 2");
        }
        Ok(knobs)
    }
}
