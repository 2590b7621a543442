//! Load benchmark: canary-gateway against nginx and HAProxy doing the same
//! 90/10 canary split, with wrk straight to the upstream as the physical limit.
//!
//! Run with `cargo bench --bench load`. See docs/performance.md for the knobs
//! (LOAD_* environment variables), what is measured and how it is kept fair on
//! a 2-core machine:
//!
//! * core 0: wrk, both upstreams and this orchestrator;
//! * core 1: the proxy under test (one worker thread / process).
//!
//! The same binary also runs the upstream servers: `load --upstream v1,v2`
//! binds one listener per version on 127.0.0.1:0, prints `PORT <n>` for each
//! and answers every request with a fixed ~100-byte body naming the version
//! of the listener. It exits when its stdin closes, so the upstreams never
//! outlive the benchmark.
//!
//! This file runs the phases in order and prints the tables; the jobs live in
//! `settings` (LOAD_* knobs), `processes` and `proc_accounting` (children,
//! /proc CPU and memory), `wrk` (running and parsing it), `targets` (starting
//! the proxies), `client`, `split_check`, `statistics`, `verdicts`, `churn`
//! (weight changes and reloads under load), `upstream` (the raw upstream) and
//! `self_test`.

mod churn;
mod client;
mod proc_accounting;
mod processes;
mod self_test;
mod settings;
mod split_check;
mod statistics;
mod targets;
mod upstream;
mod verdicts;
mod wrk;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::churn::churn;
use crate::client::wait_ready;
use crate::proc_accounting::{background_busy_percent, clock_ticks_per_sec};
use crate::processes::{find_exe, log_tail, pin_self, spawn_upstreams, tool_version};
use crate::self_test::self_test;
use crate::settings::Knobs;
use crate::split_check::check_split;
use crate::statistics::{Sample, Summary, fmt_stat, measure, percent, summarize};
use crate::targets::{Env, Kind, Target, start_gateway, start_haproxy, start_nginx};
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
        return match run_upstream(name) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("upstream {name}: {e:#}");
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

    let mut targets_wanted = knobs.targets.clone();
    let nginx_exe = find_exe("nginx");
    let haproxy_exe = find_exe("haproxy");
    for (kind, exe) in [(Kind::Nginx, &nginx_exe), (Kind::Haproxy, &haproxy_exe)] {
        if exe.is_none() && targets_wanted.contains(&kind) {
            println!(
                "note: {} is not installed: its targets are skipped. Install with:\n  {INSTALL_HINT}",
                kind.name()
            );
            targets_wanted.retain(|k| *k != kind);
        }
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
        "  {} reps x {}s per target and concurrency, {}s warm-up, connections {:?}, wrk threads {}",
        knobs.reps, knobs.duration, knobs.warmup, knobs.connections, knobs.wrk_threads
    );
    println!(
        "  pinning: wrk + upstreams on core {LOAD_CORE}, proxy under test on core {PROXY_CORE}; {cores} cores"
    );
    let mut versions = format!("  {}", tool_version(&wrk_exe, "-v"));
    for exe in [&nginx_exe, &haproxy_exe].into_iter().flatten() {
        let _ = write!(versions, "; {}", tool_version(exe, "-v"));
    }
    println!("{versions}");

    let (upstreams, ports) = spawn_upstreams(taskset.as_deref(), &["v1", "v2"])?;
    let (v1_port, v2_port) = (ports[0], ports[1]);
    let token = format!("load-bench-{}-{}", std::process::id(), v1_port);
    let env = Env {
        dir,
        taskset: taskset.clone(),
        v1_port,
        v2_port,
        token,
    };
    let wrk = Wrk {
        exe: wrk_exe,
        taskset,
        threads: knobs.wrk_threads,
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let code = rt.block_on(run(
        &knobs,
        &env,
        &wrk,
        &targets_wanted,
        nginx_exe,
        haproxy_exe,
    ));
    drop(upstreams);
    code
}

async fn run(
    knobs: &Knobs,
    env: &Env,
    wrk: &Wrk,
    wanted: &[Kind],
    nginx_exe: Option<PathBuf>,
    haproxy_exe: Option<PathBuf>,
) -> Result<ExitCode> {
    let tck = clock_ticks_per_sec();
    let upstream: SocketAddr = ([127, 0, 0, 1], env.v1_port).into();
    let mut none = None;
    wait_ready(upstream, "/", &mut none, Duration::from_secs(5)).await?;
    wait_ready(
        ([127, 0, 0, 1], env.v2_port).into(),
        "/",
        &mut none,
        Duration::from_secs(5),
    )
    .await?;

    // Start every target (setup errors are fatal).
    let mut targets: Vec<Target> = Vec::new();
    for kind in wanted {
        let t = match kind {
            Kind::Direct => Target {
                kind: Kind::Direct,
                addr: upstream,
                proc: None,
                admin: None,
                log: None,
            },
            Kind::Gateway => start_gateway(env).await?,
            Kind::Nginx => match &nginx_exe {
                Some(exe) => start_nginx(env, exe).await?,
                None => continue,
            },
            Kind::Haproxy => match &haproxy_exe {
                Some(exe) => start_haproxy(env, exe).await?,
                None => continue,
            },
        };
        targets.push(t);
    }
    if !wanted.contains(&Kind::Gateway) {
        println!("note: gateway not in LOAD_TARGETS: gateway targets are skipped");
    }

    println!(
        "\n== split check (expect ~90/10, ±{} points) ==",
        knobs.split_tolerance
    );
    for t in targets.iter().filter(|t| t.kind != Kind::Direct) {
        check_split(t, knobs).await?;
    }

    println!("\n== warm-up ({}s per target) ==", knobs.warmup);
    let warm_conns = knobs.connections.iter().copied().max().unwrap_or(50);
    if knobs.warmup > 0 {
        for t in &targets {
            let r = wrk.run(&t.url(), warm_conns, knobs.warmup).await?;
            println!("  {:<8} {:>10.0} req/s", t.kind.name(), r.rps);
        }
    }

    // samples[conn_idx][target_idx]
    let mut samples: Vec<Vec<Vec<Sample>>> =
        vec![vec![Vec::new(); targets.len()]; knobs.connections.len()];
    for (ci, &conns) in knobs.connections.iter().enumerate() {
        println!(
            "\n== {conns} connections: {} reps x {}s ==",
            knobs.reps, knobs.duration
        );
        for rep in 0..knobs.reps {
            // Alternate: rotate the order of the targets every repetition.
            let n = targets.len();
            let mut direct_p99: Option<f64> = None;
            let mut rep_samples: Vec<(usize, Sample)> = Vec::new();
            for k in 0..n {
                let ti = (k + rep) % n;
                let t = &mut targets[ti];
                if let Some(p) = t.proc.as_mut() {
                    p.check_alive()?;
                }
                let s = measure(t, wrk, conns, knobs.duration, tck).await?;
                println!(
                    "  rep {} {:<8} {:>10.0} req/s  p50 {:>8.3} ms  p99 {:>8.3} ms  cpu {:>7} us/req  rss {:>7} MiB  failed {}  busy: load core {}, proxy core {}",
                    rep + 1,
                    t.kind.name(),
                    s.wrk.rps,
                    s.wrk.p50_us / 1e3,
                    s.wrk.p99_us / 1e3,
                    s.cpu_us_per_req.map_or("-".into(), |c| format!("{c:.2}")),
                    s.rss_kib
                        .map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
                    s.wrk.failures(),
                    percent(s.busy_pct.0),
                    percent(s.busy_pct.1),
                );
                if t.kind == Kind::Direct {
                    direct_p99 = Some(s.wrk.p99_us);
                }
                rep_samples.push((ti, s));
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            for (ti, mut s) in rep_samples {
                if targets[ti].kind != Kind::Direct {
                    s.p99_added_us = direct_p99.map(|d| s.wrk.p99_us - d);
                }
                samples[ci][ti].push(s);
            }
        }
    }

    // Report.
    println!(
        "\n== results: median (min-max) over {} reps of {}s ==",
        knobs.reps, knobs.duration
    );
    let mut verdicts = Vec::new();
    let mut total_failures = 0u64;
    let idx = |k: Kind| targets.iter().position(|t| t.kind == k);
    for (ci, &conns) in knobs.connections.iter().enumerate() {
        println!("\n{conns} connections");
        println!(
            "  {:<8} {:>26} {:>22} {:>22} {:>22} {:>20} {:>20}  failed",
            "target", "req/s", "p50 ms", "p99 ms", "p99 added ms", "CPU us/req", "peak RSS MiB",
        );
        let sums: Vec<Option<Summary>> = samples[ci].iter().map(|s| summarize(s)).collect();
        for (ti, t) in targets.iter().enumerate() {
            let Some(s) = &sums[ti] else { continue };
            total_failures += s.failures;
            println!(
                "  {:<8} {:>26} {:>22} {:>22} {:>22} {:>20} {:>20}  {}/{}",
                t.kind.name(),
                fmt_stat(Some(s.rps), 0),
                fmt_stat(Some(s.p50_ms), 3),
                fmt_stat(Some(s.p99_ms), 3),
                fmt_stat(s.p99_added_ms, 3),
                fmt_stat(s.cpu_us, 2),
                fmt_stat(s.rss_mib, 1),
                s.failures,
                s.requests,
            );
            if s.disturbed > 0 {
                println!(
                    "           ^ {} of {} runs disturbed by other processes on core {PROXY_CORE}: rerun on a quiet machine",
                    s.disturbed,
                    samples[ci][ti].len()
                );
            }
        }
        let get = |k: Kind| idx(k).and_then(|i| sums[i].as_ref());
        let (gw, ng, hp) = (get(Kind::Gateway), get(Kind::Nginx), get(Kind::Haproxy));
        for (other, name) in [(ng, "nginx"), (hp, "HAProxy")] {
            if let (Some(g), Some(o)) = (gw, other) {
                println!(
                    "  gateway/{name}: throughput {:.2}x, p99 {:.2}x, CPU/req {}, peak RSS {}",
                    g.rps.median / o.rps.median,
                    g.p99_ms.median / o.p99_ms.median,
                    match (g.cpu_us, o.cpu_us) {
                        (Some(a), Some(b)) => format!("{:.2}x", a.median / b.median),
                        _ => "-".into(),
                    },
                    match (g.rss_mib, o.rss_mib) {
                        (Some(a), Some(b)) => format!("{:.2}x", a.median / b.median),
                        _ => "-".into(),
                    },
                );
            }
        }
        let skip_gw = "gateway not measured";
        for (other, name) in [(ng, "nginx"), (hp, "HAProxy")] {
            let ok = gw
                .zip(other)
                .map(|(g, o)| g.rps.median >= 1.1 * o.rps.median);
            let detail = gw
                .zip(other)
                .map(|(g, o)| format!("{:.2}x", g.rps.median / o.rps.median))
                .unwrap_or_default();
            let why = if gw.is_none() {
                skip_gw.to_owned()
            } else {
                format!("{name} not measured (install: {INSTALL_HINT})")
            };
            verdicts.push(verdict(
                &format!("{conns} conns: throughput >= 1.1x {name}"),
                ok,
                detail,
                &why,
            ));
        }
        // p99 added over direct <= the better of nginx / HAProxy.
        let best_ref = [ng, hp]
            .into_iter()
            .flatten()
            .filter_map(|s| s.p99_added_ms.map(|a| a.median))
            .min_by(f64::total_cmp);
        let gw_added = gw.and_then(|g| g.p99_added_ms.map(|a| a.median));
        verdicts.push(verdict(
            &format!("{conns} conns: p99 added over direct <= best of nginx/HAProxy"),
            gw_added.zip(best_ref).map(|(g, b)| g <= b),
            gw_added
                .zip(best_ref)
                .map(|(g, b)| format!("{g:.3} ms vs {b:.3} ms"))
                .unwrap_or_default(),
            if gw.is_none() {
                skip_gw
            } else {
                "no reference proxy measured"
            },
        ));
        let gw_cpu = gw.and_then(|g| g.cpu_us.map(|c| c.median));
        let ng_cpu = ng.and_then(|n| n.cpu_us.map(|c| c.median));
        verdicts.push(verdict(
            &format!("{conns} conns: CPU/request < nginx"),
            gw_cpu.zip(ng_cpu).map(|(g, n)| g < n),
            gw_cpu
                .zip(ng_cpu)
                .map(|(g, n)| format!("{g:.2} us vs {n:.2} us"))
                .unwrap_or_default(),
            if gw.is_none() {
                skip_gw
            } else {
                "nginx not measured"
            },
        ));
        if conns == 256 {
            let rss = gw.and_then(|g| g.rss_mib.map(|r| r.max));
            verdicts.push(verdict(
                "256 conns: gateway peak RSS < 20 MiB",
                rss.map(|r| r < 20.0),
                rss.map(|r| format!("{r:.1} MiB")).unwrap_or_default(),
                skip_gw,
            ));
        }
    }

    // Weight changes and reloads under steady load.
    let mut churn_failed = false;
    if let Some(gi) = idx(Kind::Gateway) {
        println!(
            "\n== steady load ({} conns, {}s) with {} weight changes and {} SIGHUP reloads ==",
            knobs.churn_connections, knobs.churn_duration, knobs.weight_changes, knobs.reloads
        );
        let gw = &mut targets[gi];
        let c = churn(gw, wrk, knobs, &env.token).await?;
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
        churn_failed = failures > 0 || !c.weight_failed.is_empty();
        verdicts.push(verdict(
            "zero failed requests across weight changes and reloads",
            Some(failures == 0 && c.weight_failed.is_empty()),
            format!(
                "{failures} failed of {} requests, {} admin errors",
                c.wrk.requests,
                c.weight_failed.len()
            ),
            "",
        ));
        if churn_failed && let Some(log) = &gw.log {
            println!("  gateway log tail:\n{}", log_tail(log));
        }
    } else {
        verdicts.push(Verdict::Skip(
            "zero failed requests across weight changes and reloads: gateway not measured".into(),
        ));
    }

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
