//! Reporting: each case's table (median and min-max per target), its
//! ratios and verdicts, and the summary table over all cases.

use crate::case::{Case, CaseResult};
use crate::scenarios::Scenario;
use crate::settings::Knobs;
use crate::statistics::{Stat, Summary, fmt_stat, summarize};
use crate::targets::Kind;
use crate::verdicts::{Verdict, verdict};
use crate::{INSTALL_HINT, PROXY_CORE};

/// One line of the summary: a case at one concurrency.
pub struct SummaryRow {
    pub case: String,
    pub conns: u32,
    pub gateway: Option<Summary>,
    pub nginx: Option<Summary>,
    pub haproxy: Option<Summary>,
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

fn median(s: Option<Stat>) -> Option<f64> {
    s.map(|s| s.median)
}

/// Prints the case's tables; returns its failed-request count.
pub fn report_case(
    case: &Case,
    res: &CaseResult,
    knobs: &Knobs,
    verdicts: &mut Vec<Verdict>,
    rows: &mut Vec<SummaryRow>,
) -> u64 {
    let mut failures = 0u64;
    let idle = case.scenario.idle_connections();
    println!(
        "\n  results, {}: median (min-max) over {} reps of {}s",
        case.label(),
        knobs.reps,
        knobs.duration
    );
    for (ci, &conns) in knobs.connections.iter().enumerate() {
        println!("\n  {conns} connections");
        println!(
            "    {:<8} {:>26} {:>22} {:>22} {:>22} {:>20} {:>20}{}  failed",
            "target",
            "req/s",
            "p50 ms",
            "p99 ms",
            "p99 added ms",
            "CPU us/req",
            "peak RSS MiB",
            if idle { "   idle B/conn" } else { "" },
        );
        let mut sums: Vec<Option<Summary>> = res.samples[ci].iter().map(|s| summarize(s)).collect();
        for (ti, kind) in res.kinds.iter().enumerate() {
            let Some(s) = &sums[ti] else { continue };
            failures += s.failures;
            println!(
                "    {:<8} {:>26} {:>22} {:>22} {:>22} {:>20} {:>20}{}  {}/{}",
                kind.name(),
                fmt_stat(Some(s.rps), 0),
                fmt_stat(s.p50_ms, 3),
                fmt_stat(s.p99_ms, 3),
                fmt_stat(s.p99_added_ms, 3),
                fmt_stat(s.cpu_us, 2),
                fmt_stat(s.rss_mib, 1),
                if idle {
                    format!(" {:>14}", fmt_stat(s.idle_bytes, 0))
                } else {
                    String::new()
                },
                s.failures,
                s.requests,
            );
            if s.disturbed > 0 {
                println!(
                    "             ^ {} of {} runs disturbed by other processes on core {PROXY_CORE}: rerun on a quiet machine",
                    s.disturbed,
                    res.samples[ci][ti].len()
                );
            }
        }
        let mut take = |k: Kind| {
            res.kinds
                .iter()
                .position(|x| *x == k)
                .and_then(|i| sums[i].take())
        };
        let direct = take(Kind::Direct).map(|d| d.rps.median);
        let (gw, ng, hp) = (take(Kind::Gateway), take(Kind::Nginx), take(Kind::Haproxy));
        let short = format!("{} {}", case.scenario.number(), case.upstream.name());
        let measured = Measured {
            direct,
            gw: gw.as_ref(),
            ng: ng.as_ref(),
            hp: hp.as_ref(),
        };
        case_verdicts(case.scenario, &short, conns, &measured, verdicts);
        rows.push(SummaryRow {
            case: short,
            conns,
            gateway: gw,
            nginx: ng,
            haproxy: hp,
        });
    }
    failures
}

/// One case and concurrency as measured: each target's summary.
struct Measured<'a> {
    /// Median req/s with no proxy: the most any proxy can show here.
    direct: Option<f64>,
    gw: Option<&'a Summary>,
    ng: Option<&'a Summary>,
    hp: Option<&'a Summary>,
}

/// Issue #15's targets for one case and concurrency.
fn case_verdicts(
    scenario: Scenario,
    short: &str,
    conns: u32,
    m: &Measured,
    verdicts: &mut Vec<Verdict>,
) {
    let (direct, gw, ng, hp) = (m.direct, m.gw, m.ng, m.hp);
    let label = |what: &str| format!("scenario {short}, {conns} conns: {what}");
    let skip_gw = "gateway not measured";
    let factor = if scenario.tls() { 1.1 } else { 1.25 };
    let peers: &[(Option<&Summary>, &str)] = if scenario.tls() {
        &[(ng, "nginx")]
    } else {
        &[(ng, "nginx"), (hp, "HAProxy")]
    };
    for (other, name) in peers {
        let judged = gw
            .zip(*other)
            .map(|(g, o)| throughput_verdict(g.rps.median, o.rps.median, direct, factor, name));
        let ok = judged.as_ref().map(|(met, _)| *met);
        let detail = judged.map(|(_, detail)| detail).unwrap_or_default();
        let why = if gw.is_none() {
            skip_gw.to_owned()
        } else {
            format!("{name} not measured (install: {INSTALL_HINT})")
        };
        verdicts.push(verdict(
            &label(&format!("throughput >= {factor}x {name}")),
            ok,
            detail,
            &why,
        ));
    }
    if scenario.tls() {
        return;
    }
    let best_ref = [ng, hp]
        .into_iter()
        .flatten()
        .filter_map(|s| median(s.p99_added_ms))
        .min_by(f64::total_cmp);
    let why = |peer: &'static str| if gw.is_none() { skip_gw } else { peer };
    verdicts.push(compared(
        label("p99 added over direct <= best of nginx/HAProxy"),
        gw.and_then(|g| median(g.p99_added_ms)),
        best_ref,
        |g, b| g <= b,
        "ms",
        why("no reference proxy measured"),
    ));
    verdicts.push(compared(
        label("CPU/request <= 0.8x nginx"),
        gw.and_then(|g| median(g.cpu_us)),
        ng.and_then(|n| median(n.cpu_us)),
        |g, n| g <= 0.8 * n,
        "us",
        why("nginx not measured"),
    ));
    verdicts.push(compared(
        label("peak RSS < nginx (master + worker)"),
        gw.and_then(|g| g.rss_mib.map(|r| r.max)),
        ng.and_then(|n| n.rss_mib.map(|r| r.max)),
        |g, n| g < n,
        "MiB",
        why("nginx not measured"),
    ));
    if scenario.idle_connections() {
        let idle = gw.and_then(|g| median(g.idle_bytes));
        verdicts.push(verdict(
            &label("< 2 KiB per idle keep-alive connection"),
            idle.map(|b| b < 2048.0),
            idle.map(|b| format!("{b:.0} B")).unwrap_or_default(),
            skip_gw,
        ));
    }
}

/// Whether the gateway did `factor` times a peer's throughput, and its ratio
/// to the peer's; when a missed target is more than the load core delivered
/// with no proxy at all, the detail says so: no proxy could have met it in
/// this run.
pub fn throughput_verdict(
    gw: f64,
    peer: f64,
    direct: Option<f64>,
    factor: f64,
    name: &str,
) -> (bool, String) {
    let met = gw >= factor * peer;
    let ratio = format!("{:.2}x", gw / peer);
    let detail = match direct {
        Some(d) if !met && d < factor * peer => format!(
            "{ratio}; out of reach in this run: direct (no proxy) did {:.2}x {name}, the load core is the limit",
            d / peer
        ),
        _ => ratio,
    };
    (met, detail)
}

/// A verdict comparing the gateway's value with a reference value.
fn compared(
    label: String,
    gw: Option<f64>,
    reference: Option<f64>,
    ok: impl Fn(f64, f64) -> bool,
    unit: &str,
    skip_why: &str,
) -> Verdict {
    let both = gw.zip(reference);
    verdict(
        &label,
        both.map(|(g, r)| ok(g, r)),
        both.map(|(g, r)| format!("{g:.3} {unit} vs {r:.3} {unit}"))
            .unwrap_or_default(),
        skip_why,
    )
}

/// The summary over every case: gateway, nginx, HAProxy and the ratios.
pub fn print_summary(rows: &[SummaryRow]) {
    println!("\n== summary: medians; ratios gateway/peer (throughput, CPU per request) ==");
    println!(
        "  {:<12} {:>5} {:>10} {:>10} {:>10} {:>9} {:>9} {:>8} {:>8} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9}",
        "scenario",
        "conns",
        "gw req/s",
        "nginx",
        "HAProxy",
        "x nginx",
        "x HAProxy",
        "CPU x ng",
        "gw us/rq",
        "gw p99+ms",
        "ng p99+ms",
        "hp p99+ms",
        "gw MiB",
        "ng MiB",
        "hp MiB",
    );
    let rps = |s: &Option<Summary>| s.as_ref().map(|s| s.rps.median);
    let num = |v: Option<f64>, p: usize| v.map_or("-".into(), |v| format!("{v:.p$}"));
    let added = |s: &Option<Summary>| s.as_ref().and_then(|s| median(s.p99_added_ms));
    let rss = |s: &Option<Summary>| s.as_ref().and_then(|s| s.rss_mib.map(|r| r.max));
    let cpu = |s: &Option<Summary>| s.as_ref().and_then(|s| median(s.cpu_us));
    for r in rows {
        println!(
            "  {:<12} {:>5} {:>10} {:>10} {:>10} {:>9} {:>9} {:>8} {:>8} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9}",
            r.case,
            r.conns,
            num(rps(&r.gateway), 0),
            num(rps(&r.nginx), 0),
            num(rps(&r.haproxy), 0),
            ratio(rps(&r.gateway), rps(&r.nginx)),
            ratio(rps(&r.gateway), rps(&r.haproxy)),
            ratio(cpu(&r.gateway), cpu(&r.nginx)),
            num(cpu(&r.gateway), 2),
            num(added(&r.gateway), 3),
            num(added(&r.nginx), 3),
            num(added(&r.haproxy), 3),
            num(rss(&r.gateway), 1),
            num(rss(&r.nginx), 1),
            num(rss(&r.haproxy), 1),
        );
        if let Some(b) = r.gateway.as_ref().and_then(|g| median(g.idle_bytes)) {
            let peer = |s: &Option<Summary>| num(s.as_ref().and_then(|s| median(s.idle_bytes)), 0);
            println!(
                "  {:<12} {:>5} idle bytes per connection: gateway {b:.0}, nginx {}, HAProxy {}",
                "",
                "",
                peer(&r.nginx),
                peer(&r.haproxy)
            );
        }
    }
}
