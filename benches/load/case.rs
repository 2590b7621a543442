//! One case of the benchmark: a scenario against one upstream kind. Starts
//! the upstreams and every target afresh (so peak RSS is the case's own),
//! checks the split and the shapes, warms up, then measures each
//! concurrency with the targets alternating every repetition.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::client::wait_ready;
use crate::h2load::H2load;
use crate::idle::open_idle;
use crate::probe::probe;
use crate::proc_accounting::clock_ticks_per_sec;
use crate::processes::{Proc, spawn_upstreams};
use crate::scenarios::{Scenario, UpstreamKind, wrk_script};
use crate::settings::Knobs;
use crate::split_check::check_split;
use crate::statistics::{Sample, measure, percent};
use crate::targets::{Env, Kind, Target, start_gateway, start_haproxy, start_nginx};
use crate::upstream_nginx::spawn_nginx_upstreams;
use crate::wrk::Wrk;

/// The tools a case may need.
pub struct Tools {
    pub wrk: Wrk,
    pub taskset: Option<PathBuf>,
    pub nginx: Option<PathBuf>,
    pub haproxy: Option<PathBuf>,
    pub h2load: Option<PathBuf>,
    pub openssl: Option<PathBuf>,
}

pub struct Case {
    pub scenario: Scenario,
    pub upstream: UpstreamKind,
}

impl Case {
    pub fn label(&self) -> String {
        format!(
            "scenario {} ({}), {} upstream",
            self.scenario.number(),
            self.scenario.title(),
            self.upstream.name()
        )
    }
}

pub struct CaseResult {
    pub kinds: Vec<Kind>,
    /// samples[conn_idx][target_idx]
    pub samples: Vec<Vec<Vec<Sample>>>,
    /// Targets that could not run in this case, with the reason.
    pub skipped: Vec<(Kind, String)>,
    /// The started targets, for the churn phase (the gateway's is used).
    pub targets: Vec<Target>,
    /// The upstreams stay up while the targets do.
    pub upstreams: Proc,
}

pub async fn run_case(
    case: &Case,
    knobs: &Knobs,
    tools: &Tools,
    dir: &Path,
    token: &str,
    wanted: &[Kind],
) -> Result<Option<CaseResult>> {
    let scenario = case.scenario;
    let names = ["v1", "v2"];
    let (upstreams, ports) = match case.upstream {
        UpstreamKind::Service => {
            spawn_upstreams(tools.taskset.as_deref(), &names, scenario.response())?
        }
        UpstreamKind::Nginx => {
            let Some(exe) = &tools.nginx else {
                println!("  skipped: nginx is not installed (the nginx upstream needs it)");
                return Ok(None);
            };
            spawn_nginx_upstreams(
                exe,
                tools.taskset.as_deref(),
                dir,
                &names,
                scenario.response(),
            )?
        }
    };
    let mut none = None;
    for port in &ports {
        wait_ready(
            ([127, 0, 0, 1], *port).into(),
            "/",
            &mut none,
            Duration::from_secs(10),
        )
        .await
        .with_context(|| format!("{} upstream", case.upstream.name()))?;
    }
    let tls = if scenario.tls() {
        let Some(openssl) = &tools.openssl else {
            println!("  skipped: the openssl command is not installed (it makes the certificate)");
            return Ok(None);
        };
        Some(crate::tls::make_certificate(openssl, dir)?)
    } else {
        None
    };
    let mut wrk = tools.wrk.clone();
    if let Some(shape) = scenario.request() {
        let script = dir.join(format!("scenario-{}.lua", scenario.number()));
        std::fs::write(&script, wrk_script(&shape)?)?;
        wrk.script = Some(script);
        wrk.handshake_client = shape.close && scenario.tls() && knobs.handshake_client_own;
        if scenario.http2() {
            let Some(exe) = &tools.h2load else {
                println!("  skipped: h2load is not installed (apt-get install -y nghttp2-client)");
                return Ok(None);
            };
            wrk.h2load = Some(std::sync::Arc::new((
                H2load {
                    exe: exe.clone(),
                    taskset: tools.taskset.clone(),
                },
                shape,
            )));
        }
    }
    let env = Env {
        dir: dir.to_path_buf(),
        taskset: tools.taskset.clone(),
        v1_port: ports[0],
        v2_port: ports[1],
        token: token.to_owned(),
        tls,
    };
    let (targets, skipped) = start_targets(&env, tools, wanted).await?;
    run_targets(case, knobs, &wrk, targets, skipped, &ports, upstreams)
        .await
        .map(Some)
}

async fn start_targets(
    env: &Env,
    tools: &Tools,
    wanted: &[Kind],
) -> Result<(Vec<Target>, Vec<(Kind, String)>)> {
    let upstream: SocketAddr = ([127, 0, 0, 1], env.v1_port).into();
    let mut targets = Vec::new();
    let mut skipped = Vec::new();
    for kind in wanted {
        let t = match kind {
            Kind::Direct => {
                if env.tls.is_some() {
                    // The upstreams speak plain HTTP: no TLS reference.
                    skipped.push((Kind::Direct, "the upstreams do not speak TLS".into()));
                    continue;
                }
                Target {
                    kind: Kind::Direct,
                    addr: upstream,
                    proc: None,
                    admin: None,
                    log: None,
                    tls: false,
                }
            }
            Kind::Gateway => match start_gateway(env).await {
                Ok(t) => t,
                Err(e) if env.tls.is_some() => {
                    skipped.push((
                        Kind::Gateway,
                        format!(
                            "the gateway did not start with [listener.tls] (its TLS termination is not in this build?): {e:#}"
                        ),
                    ));
                    continue;
                }
                Err(e) => return Err(e),
            },
            Kind::Nginx => match &tools.nginx {
                Some(exe) => start_nginx(env, exe).await?,
                None => continue,
            },
            Kind::Haproxy => match &tools.haproxy {
                Some(exe) => start_haproxy(env, exe).await?,
                None => continue,
            },
        };
        targets.push(t);
    }
    for (kind, why) in &skipped {
        println!("  {} skipped: {why}", kind.name());
    }
    Ok((targets, skipped))
}

async fn run_targets(
    case: &Case,
    knobs: &Knobs,
    wrk: &Wrk,
    mut targets: Vec<Target>,
    skipped: Vec<(Kind, String)>,
    ports: &[u16],
    upstreams: Proc,
) -> Result<CaseResult> {
    let scenario = case.scenario;
    let tck = clock_ticks_per_sec();
    if !scenario.tls() {
        println!(
            "  split check (expect ~90/10, ±{} points)",
            knobs.split_tolerance
        );
        for t in targets.iter().filter(|t| t.kind != Kind::Direct) {
            check_split(t, knobs).await?;
        }
        for t in &targets {
            probe(t, scenario, case.upstream, ports)
                .await
                .with_context(|| format!("shape probe through {}", t.kind.name()))?;
        }
    }
    // Memory per idle connection, on each freshly started proxy before any
    // load: later, the allocator reuses what earlier connections freed and
    // the growth says nothing.
    let mut idle_bytes: Vec<Option<f64>> = vec![None; targets.len()];
    if scenario.idle_connections() {
        for (ti, t) in targets.iter().enumerate() {
            if t.kind == Kind::Direct {
                continue;
            }
            let idle = open_idle(t.addr, knobs.idle_connections, &t.pids()).await?;
            idle_bytes[ti] = idle.bytes_per_conn;
            println!(
                "  idle {:<8} {} connections: {} B of resident memory each",
                t.kind.name(),
                knobs.idle_connections,
                idle.bytes_per_conn
                    .map_or("-".into(), |b| format!("{b:.0}"))
            );
        }
    }
    let warm_conns = knobs.connections.iter().copied().max().unwrap_or(50);
    if knobs.warmup > 0 {
        for t in &targets {
            let r = wrk.run(&t.url(), warm_conns, knobs.warmup).await?;
            println!(
                "  warm-up {:<8} {:>10.0} req/s, failed {}{}",
                t.kind.name(),
                r.rps,
                r.failures(),
                r.negotiated
                    .as_ref()
                    .map_or(String::new(), |n| format!(", TLS negotiated: {n}"))
            );
        }
    }
    let mut samples: Vec<Vec<Vec<Sample>>> =
        vec![vec![Vec::new(); targets.len()]; knobs.connections.len()];
    for (ci, &conns) in knobs.connections.iter().enumerate() {
        println!(
            "  -- {conns} connections: {} reps x {}s",
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
                let idle = if scenario.idle_connections() && t.kind != Kind::Direct {
                    Some(open_idle(t.addr, knobs.idle_connections, &t.pids()).await?)
                } else {
                    None
                };
                let mut s = measure(t, wrk, conns, knobs.duration, tck).await?;
                s.idle_bytes = idle_bytes[ti];
                let idle_note = idle.as_ref().map_or(String::new(), |idle| {
                    format!(
                        "  idle connections still open {}/{}",
                        idle.still_open(),
                        knobs.idle_connections
                    )
                });
                drop(idle);
                println!(
                    "  rep {} {:<8} {:>10.0} req/s  p50 {:>8.3} ms  p99 {:>8.3} ms  cpu {:>7} us/req  rss {:>7} MiB  failed {}  busy: load core {}, proxy core {}{idle_note}",
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
    Ok(CaseResult {
        kinds: targets.iter().map(|t| t.kind).collect(),
        samples,
        skipped,
        targets,
        upstreams,
    })
}
