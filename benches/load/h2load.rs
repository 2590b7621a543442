//! h2load (Debian's nghttp2-client) for scenario 7: HTTP/2 over TLS from the
//! client; running it and parsing its report. h2load reports min/max/mean
//! request times, no percentiles: the p99 columns stay empty there.

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};

use crate::LOAD_CORE;
use crate::processes::pinned_async;
use crate::scenarios::{RequestShape, alb_headers};
use crate::wrk::{WrkResult, output_of};

/// Concurrent streams per connection.
pub const STREAMS: u32 = 10;

pub struct H2load {
    pub exe: PathBuf,
    pub taskset: Option<PathBuf>,
}

impl H2load {
    pub async fn run(
        &self,
        url: &str,
        connections: u32,
        secs: u64,
        shape: &RequestShape,
    ) -> Result<WrkResult> {
        let mut cmd = pinned_async(self.taskset.as_deref(), LOAD_CORE, &self.exe);
        cmd.arg("-t1")
            .arg(format!("-c{connections}"))
            .arg(format!("-m{STREAMS}"))
            .arg(format!("-D{secs}"));
        for (k, v) in alb_headers(shape) {
            // Connection-specific headers are not allowed in HTTP/2.
            if !k.eq_ignore_ascii_case("connection") {
                cmd.arg("-H").arg(format!("{k}: {v}"));
            }
        }
        cmd.arg(format!(
            "{}{}",
            url.trim_end_matches('/'),
            crate::scenarios::ALB_PATH
        ));
        parse_h2load(&output_of(cmd, "h2load").await?)
    }
}

/// `finished in 5.00s, 51234.40 req/s, ...`, `requests: N total, N started,
/// N done, N succeeded, N failed, N errored, N timeout`, `status codes: N 2xx, ...`.
pub fn parse_h2load(out: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    let (mut have_rps, mut have_reqs) = (false, false);
    let field = |line: &str, name: &str| -> Option<u64> {
        line.split(',')
            .find(|p| p.trim().ends_with(name))
            .and_then(|p| p.split_whitespace().rev().nth(1)?.parse().ok())
    };
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("finished in") {
            r.rps = v
                .split(',')
                .nth(1)
                .and_then(|p| p.trim().strip_suffix(" req/s")?.parse().ok())
                .ok_or_else(|| anyhow!("h2load: bad finished line {t:?}"))?;
            have_rps = true;
        } else if let Some(v) = t.strip_prefix("requests:") {
            let done = field(v, "succeeded").ok_or_else(|| anyhow!("h2load: {t:?}"))?;
            let total = field(v, "done").ok_or_else(|| anyhow!("h2load: {t:?}"))?;
            r.requests = total;
            r.socket_errors = total.saturating_sub(done)
                + field(v, "errored").unwrap_or(0)
                + field(v, "timeout").unwrap_or(0);
            have_reqs = true;
        } else if let Some(v) = t.strip_prefix("status codes:") {
            r.non_2xx = ["3xx", "4xx", "5xx"]
                .iter()
                .filter_map(|k| field(v, k))
                .sum();
        }
    }
    if !(have_rps && have_reqs) {
        bail!("h2load output incomplete:\n{out}");
    }
    // No percentiles in h2load's report.
    r.p50_us = f64::NAN;
    r.p99_us = f64::NAN;
    Ok(r)
}
