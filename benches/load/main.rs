//! Load benchmark: canary-gateway against nginx and HAProxy doing the same
//! 90/10 canary split, with wrk straight to the upstream as the physical limit,
//! in the scenarios of `scenarios` (LOAD_SCENARIOS), each against the bench's
//! service-shaped upstream and a real nginx upstream (LOAD_UPSTREAMS).
//!
//! Run with `cargo bench --bench load`. See docs/performance.md for the knobs
//! (LOAD_* environment variables), what is measured and how it is kept fair on
//! a 2-core machine:
//!
//! * core 0: wrk (h2load in scenario 7, the bench's own TLS client in 6), both
//!   upstreams and this orchestrator;
//! * core 1: the proxy under test (one worker thread / process).
//!
//! The same binary also runs the upstream servers: `load --upstream v1,v2
//! --response small|service:<bytes>|chunked:<bytes>:<chunk>` binds one listener per version on
//! 127.0.0.1:0, prints `PORT <n>` for each and answers every request with a
//! fixed response naming the version of the listener. It exits when its
//! stdin closes, so the upstreams never outlive the benchmark.
//! `load --handshake-client ADDR --connections N --seconds S` runs scenario
//! 6's client (`handshake_client`).
//!
//! This file runs the cases in order and prints the summary; the jobs live in
//! `settings` (LOAD_* knobs), `scenarios` (request and response shapes),
//! `case` (one scenario against one upstream kind), `report` (tables,
//! verdicts, summary), `processes` and `proc_accounting` (children, /proc CPU
//! and memory), `wrk`, `h2load` and `handshake_client` (the load clients), `targets`
//! (starting the proxies), `tls` (the certificate), `client`, `split_check`,
//! `probe` (what really goes through), `idle` (scenario 8), `statistics`,
//! `verdicts`, `churn` (weight changes and reloads under load), `upstream`
//! and `upstream_nginx` (the two upstream kinds) and `self_test`.

mod case;
mod churn;
mod client;
mod h2load;
mod handshake_client;
mod idle;
mod probe;
mod proc_accounting;
mod processes;
mod report;
mod scenarios;
mod self_test;
mod settings;
mod split_check;
mod statistics;
mod targets;
mod tls;
mod upstream;
mod upstream_nginx;
mod verdicts;
mod wrk;

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::case::{Case, Tools, run_case};
use crate::churn::churn;
use crate::proc_accounting::background_busy_percent;
use crate::processes::{find_exe, log_tail, pin_self, tool_version};
use crate::report::{SummaryRow, print_summary, report_case};
use crate::scenarios::ResponseShape;
use crate::self_test::self_test;
use crate::settings::Knobs;
use crate::targets::Kind;
use crate::upstream::run_upstream;
use crate::verdicts::{Verdict, print_verdicts, verdict};
use crate::wrk::Wrk;

const NGINX_TEMPLATE: &str = include_str!("nginx.conf");
const HAPROXY_TEMPLATE: &str = include_str!("haproxy.cfg");
const GATEWAY_TEMPLATE: &str = include_str!("gateway.toml");

/// Core for wrk, the upstreams and the orchestrator.
const LOAD_CORE: &str = "0";
/// Core for the proxy under test.
const PROXY_CORE: &str = "1";
/// The /proc/stat line of the proxy core.
const PROXY_CPU: &str = "cpu1";
/// The /proc/stat line of the load core.
const LOAD_CPU: &str = "cpu0";
/// Share of a run (percent) that core 1 may spend outside the proxy before
/// the sample is flagged as disturbed.
const DISTURBED_PERCENT: f64 = 15.0;
const ADMIN_TOKEN_ENV: &str = "CANARY_ADMIN_TOKEN";
const UPSTREAM_BODY_LEN: usize = 100;
const INSTALL_HINT: &str = "apt-get update && apt-get install -y wrk nginx haproxy";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--self-test") {
        return match self_test() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("self-test failed: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // `cargo bench` passes `--bench` (and maybe filters): unknown arguments are ignored.
    if let Some(i) = args.iter().position(|a| a == "--upstream") {
        let name = args.get(i + 1).map(String::as_str).unwrap_or("v1");
        let shape = match args.iter().position(|a| a == "--response") {
            Some(j) => ResponseShape::parse_arg(args.get(j + 1).map_or("", String::as_str)),
            None => Ok(ResponseShape::Small),
        };
        return match shape.and_then(|shape| run_upstream(name, shape)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("upstream {name}: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if args.iter().any(|a| a == "--handshake-client") {
        return match handshake_client::run_from_args(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("handshake client: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match bench() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("\nload benchmark FAILED (setup): {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench() -> Result<ExitCode> {
    let knobs = Knobs::from_env()?;
    let Some(wrk_exe) = find_exe("wrk") else {
        println!("load benchmark SKIPPED: wrk is not installed.");
        println!("Install the load generator and the reference proxies with:\n  {INSTALL_HINT}");
        return Ok(ExitCode::SUCCESS);
    };
    let taskset = find_exe("taskset");
    if taskset.is_none() {
        eprintln!(
            "warning: taskset not found (util-linux): processes are NOT pinned, results are not fair"
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        eprintln!("warning: {cores} core(s) available; the 0/1 core split needs 2");
    }
    pin_self(taskset.as_deref());
    if let Some(busy) = background_busy_percent().filter(|b| *b > 10.0) {
        eprintln!(
            "warning: the machine is already {busy:.0}% busy (a build?): results will be noisy"
        );
    }

    let mut wanted = knobs.targets.clone();
    let nginx_exe = find_exe("nginx");
    let haproxy_exe = find_exe("haproxy");
    for (kind, exe) in [(Kind::Nginx, &nginx_exe), (Kind::Haproxy, &haproxy_exe)] {
        if exe.is_none() && wanted.contains(&kind) {
            println!(
                "note: {} is not installed: its targets are skipped. Install with:\n  {INSTALL_HINT}",
                kind.name()
            );
            wanted.retain(|k| *k != kind);
        }
    }
    if !wanted.contains(&Kind::Gateway) {
        println!("note: gateway not in LOAD_TARGETS: gateway targets are skipped");
    } else {
        println!("gateway binary: {}", targets::gateway_exe().display());
    }

    let tmp = tempfile::Builder::new()
        .prefix("canary-load-")
        .tempdir()
        .context("creating a temp dir")?;
    let dir = tmp.path().to_path_buf();
    if knobs.keep_dir {
        // Leak the guard so the directory (configs, logs) survives.
        std::mem::forget(tmp);
        println!("work dir (kept): {}", dir.display());
    }

    println!("canary-gateway load benchmark");
    println!(
        "  scenarios {:?}, upstreams {:?}; {} reps x {}s per target and concurrency, {}s warm-up, connections {:?}, wrk threads {}",
        knobs
            .scenarios
            .iter()
            .map(|s| s.number())
            .collect::<Vec<_>>(),
        knobs.upstreams.iter().map(|u| u.name()).collect::<Vec<_>>(),
        knobs.reps,
        knobs.duration,
        knobs.warmup,
        knobs.connections,
        knobs.wrk_threads
    );
    println!(
        "  pinning: wrk + upstreams on core {LOAD_CORE}, proxy under test on core {PROXY_CORE}; {cores} cores"
    );
    let mut versions = format!("  {}", tool_version(&wrk_exe, "-v"));
    for exe in [&nginx_exe, &haproxy_exe].into_iter().flatten() {
        let _ = write!(versions, "; {}", tool_version(exe, "-v"));
    }
    println!("{versions}");

    let tools = Tools {
        wrk: Wrk {
            exe: wrk_exe,
            taskset: taskset.clone(),
            threads: knobs.wrk_threads,
            script: None,
            h2load: None,
            handshake_client: false,
        },
        taskset,
        nginx: nginx_exe,
        haproxy: haproxy_exe,
        h2load: find_exe("h2load"),
        openssl: find_exe("openssl"),
    };
    let token = format!("load-bench-{}", std::process::id());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(&knobs, &tools, &dir, &token, &wanted))
}

async fn run(
    knobs: &Knobs,
    tools: &Tools,
    dir: &std::path::Path,
    token: &str,
    wanted: &[Kind],
) -> Result<ExitCode> {
    let mut verdicts = Vec::new();
    let mut rows: Vec<SummaryRow> = Vec::new();
    let mut total_failures = 0u64;
    let mut churn_done = false;
    let mut churn_failed = false;
    for scenario in &knobs.scenarios {
        for upstream in scenario.upstream_kinds(&knobs.upstreams) {
            let case = Case {
                scenario: *scenario,
                upstream,
            };
            println!("\n== {} ==", case.label());
            let Some(mut res) = run_case(&case, knobs, tools, dir, token, wanted).await? else {
                continue;
            };
            total_failures += report_case(&case, &res, knobs, &mut verdicts, &mut rows);
            if res.skipped.iter().any(|(k, _)| *k == Kind::Gateway) {
                verdicts.push(Verdict::Skip(format!(
                    "scenario {}: the gateway refused [listener.tls] (TLS termination not in this build; see the case output)",
                    scenario.number(),
                )));
            }
            // Weight changes and reloads under load, once per run, in the
            // first case with a plain-HTTP gateway.
            if churn_done || scenario.tls() {
                continue;
            }
            let Some(gw) = res.targets.iter_mut().find(|t| t.kind == Kind::Gateway) else {
                continue;
            };
            churn_done = true;
            let wrk = case_wrk(tools, dir, *scenario)?;
            churn_failed = churn_phase(gw, &wrk, knobs, token, &case, &mut verdicts).await?;
            drop(res.upstreams);
        }
    }
    if !churn_done {
        verdicts.push(Verdict::Skip(
            "zero failed requests across weight changes and reloads: gateway not measured".into(),
        ));
    }
    print_summary(&rows);
    println!("\n== targets ==");
    print_verdicts(&verdicts);

    if total_failures > 0 || churn_failed {
        println!(
            "\nload benchmark FAILED: {total_failures} failed requests in measured runs{}",
            if churn_failed {
                ", and failures during weight changes/reloads"
            } else {
                ""
            }
        );
        return Ok(ExitCode::FAILURE);
    }
    println!("\nload benchmark done (performance targets are reported, not enforced)");
    Ok(ExitCode::SUCCESS)
}

/// The load generator with the scenario's script (written by the case).
fn case_wrk(tools: &Tools, dir: &std::path::Path, scenario: scenarios::Scenario) -> Result<Wrk> {
    let mut wrk = tools.wrk.clone();
    let script = dir.join(format!("scenario-{}.lua", scenario.number()));
    if script.is_file() {
        wrk.script = Some(script);
    }
    Ok(wrk)
}

/// Steady load with weight changes and SIGHUP reloads; true when a request
/// or an admin call failed.
async fn churn_phase(
    gw: &mut targets::Target,
    wrk: &Wrk,
    knobs: &Knobs,
    token: &str,
    case: &Case,
    verdicts: &mut Vec<Verdict>,
) -> Result<bool> {
    println!(
        "\n== steady load ({} conns, {}s, {}) with {} weight changes and {} SIGHUP reloads ==",
        knobs.churn_connections,
        knobs.churn_duration,
        case.label(),
        knobs.weight_changes,
        knobs.reloads
    );
    let c = churn(gw, wrk, knobs, token).await?;
    println!(
        "  {} requests, {:.0} req/s, non-2xx {}, socket errors {}; weight changes ok {}/{}; reloads sent {}",
        c.wrk.requests,
        c.wrk.rps,
        c.wrk.non_2xx,
        c.wrk.socket_errors,
        c.weight_ok,
        knobs.weight_changes,
        c.reloads_sent
    );
    for f in c.weight_failed.iter().take(10) {
        println!("  admin error: {f}");
    }
    let failures = c.wrk.failures();
    let failed = failures > 0 || !c.weight_failed.is_empty();
    verdicts.push(verdict(
        "zero failed requests across weight changes and reloads",
        Some(!failed),
        format!(
            "{failures} failed of {} requests, {} admin errors",
            c.wrk.requests,
            c.weight_failed.len()
        ),
        "",
    ));
    if failed && let Some(log) = &gw.log {
        println!("  gateway log tail:\n{}", log_tail(log));
    }
    Ok(failed)
}
