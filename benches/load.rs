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

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const NGINX_TEMPLATE: &str = include_str!("load/nginx.conf");
const HAPROXY_TEMPLATE: &str = include_str!("load/haproxy.cfg");
const GATEWAY_TEMPLATE: &str = include_str!("load/gateway.toml");

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

// ---------------------------------------------------------------------------
// Knobs
// ---------------------------------------------------------------------------

struct Knobs {
    /// Seconds per measured wrk run.
    duration: u64,
    /// Repetitions per (concurrency, target).
    reps: usize,
    /// Seconds of warm-up per target.
    warmup: u64,
    connections: Vec<u32>,
    wrk_threads: u32,
    targets: Vec<Kind>,
    split_requests: usize,
    /// Allowed deviation of the v2 share from 10%, in percentage points.
    split_tolerance: f64,
    weight_changes: usize,
    reloads: usize,
    /// Seconds of steady load during the weight changes and reloads.
    churn_duration: u64,
    churn_connections: u32,
    keep_dir: bool,
}

fn env_parse<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| anyhow!("{name}={v:?} is not a valid value")),
        _ => Ok(default),
    }
}

impl Knobs {
    fn from_env() -> Result<Self> {
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

// ---------------------------------------------------------------------------
// Targets and processes
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Direct,
    Gateway,
    Nginx,
    Haproxy,
}

impl Kind {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "direct" => Kind::Direct,
            "gateway" | "canary-gateway" => Kind::Gateway,
            "nginx" => Kind::Nginx,
            "haproxy" => Kind::Haproxy,
            other => bail!("LOAD_TARGETS: unknown target {other:?} (direct,gateway,nginx,haproxy)"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Gateway => "gateway",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Error if the process has already exited.
    fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => bail!("{} exited early ({status})", self.name),
            Ok(None) => Ok(()),
            Err(e) => bail!("{}: wait failed: {e}", self.name),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            send_signal(self.child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn send_signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A target under load: where wrk points and which processes to account.
struct Target {
    kind: Kind,
    addr: SocketAddr,
    /// The proxy's root process (None for direct).
    proc: Option<Proc>,
    admin: Option<SocketAddr>,
    log: Option<PathBuf>,
}

impl Target {
    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The root pid and all of its descendants (nginx master + workers).
    fn pids(&self) -> Vec<u32> {
        match &self.proc {
            Some(p) => process_tree(p.pid()),
            None => Vec::new(),
        }
    }
}

fn find_exe(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in [
        "/usr/local/sbin",
        "/usr/sbin",
        "/sbin",
        "/usr/local/bin",
        "/usr/bin",
    ] {
        dirs.push(PathBuf::from(extra));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// A command for `program`, pinned to `core` with taskset when available.
fn pinned(taskset: Option<&Path>, core: &str, program: &Path) -> Command {
    match taskset {
        Some(ts) => {
            let mut c = Command::new(ts);
            c.arg("-c").arg(core).arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn free_port() -> Result<u16> {
    let l = StdTcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    out
}

fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            let start = lines.len().saturating_sub(20);
            lines[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Starts the upstreams `names` (one listener each) in one process on the
/// load core, and reads their ports.
fn spawn_upstreams(taskset: Option<&Path>, names: &[&str]) -> Result<(Proc, Vec<u16>)> {
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let list = names.join(",");
    let mut child = pinned(taskset, LOAD_CORE, &exe)
        .args(["--upstream", &list])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("spawning upstreams {list}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("upstreams {list}: no stdout"))?;
    let proc = Proc {
        name: format!("upstreams {list}"),
        child,
    };
    let mut stdout = BufReader::new(stdout);
    let mut ports = Vec::new();
    for name in names {
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .with_context(|| format!("reading the port of upstream {name}"))?;
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or_else(|| anyhow!("upstream {name}: unexpected line {line:?}"))?;
        ports.push(port);
    }
    Ok((proc, ports))
}

// ---------------------------------------------------------------------------
// /proc accounting
// ---------------------------------------------------------------------------

/// Fields after the `(comm)` of /proc/PID/stat; index 0 is field 3 (state).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn process_tree(root: u32) -> Vec<u32> {
    let mut all: Vec<(u32, u32)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1)?.parse::<u32>().ok()) {
                all.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    tree
}

/// utime + stime of all threads of `pids`, in clock ticks.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| {
            let f = stat_fields(*pid)?;
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .sum()
}

/// Sum of VmHWM (peak RSS) over `pids`, in KiB.
fn peak_rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| {
            let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .sum()
}

/// (busy, total) jiffies of `cpu` ("cpu" for all, "cpu1" for core 1) from /proc/stat.
fn cpu_jiffies_of(cpu: &str) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s
        .lines()
        .find(|l| l.split_whitespace().next() == Some(cpu))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    // idle + iowait
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Share of the machine that other processes keep busy, sampled for 1 s.
fn background_busy_percent() -> Option<f64> {
    let (b0, t0) = cpu_jiffies_of("cpu")?;
    std::thread::sleep(Duration::from_secs(1));
    let (b1, t1) = cpu_jiffies_of("cpu")?;
    let dt = t1.checked_sub(t0).filter(|d| *d > 0)?;
    Some(100.0 * b1.saturating_sub(b0) as f64 / dt as f64)
}

fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(100.0)
}

// ---------------------------------------------------------------------------
// wrk
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
struct WrkResult {
    requests: u64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    non_2xx: u64,
    socket_errors: u64,
}

impl WrkResult {
    fn failures(&self) -> u64 {
        self.non_2xx + self.socket_errors
    }
}

/// "614.00us" / "1.23ms" / "2.00s" / "1.00m" -> microseconds.
fn parse_duration_us(s: &str) -> Result<f64> {
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

fn parse_wrk(out: &str) -> Result<WrkResult> {
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

struct Wrk {
    exe: PathBuf,
    taskset: Option<PathBuf>,
    threads: u32,
}

impl Wrk {
    async fn run(&self, url: &str, connections: u32, secs: u64) -> Result<WrkResult> {
        let threads = self.threads.min(connections).max(1);
        let mut cmd = match &self.taskset {
            Some(ts) => {
                let mut c = tokio::process::Command::new(ts);
                c.arg("-c").arg(LOAD_CORE).arg(&self.exe);
                c
            }
            None => tokio::process::Command::new(&self.exe),
        };
        cmd.arg("-t")
            .arg(threads.to_string())
            .arg("-c")
            .arg(connections.to_string())
            .arg("-d")
            .arg(format!("{secs}s"))
            .arg("--timeout")
            .arg("5s")
            .arg("--latency")
            .arg(url)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = cmd.output().await.context("running wrk")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "wrk failed ({}): {}{}",
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        parse_wrk(&stdout)
    }
}

// ---------------------------------------------------------------------------
// Minimal HTTP/1.1 client (hyper), used for readiness, split checks, admin
// ---------------------------------------------------------------------------

struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Self> {
        let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connect to {addr} timed out"))??;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            sender,
            host: addr.to_string(),
        })
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(hyper::header::HeaderName, String)],
        body: Bytes,
    ) -> Result<Response<Bytes>> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.host);
        for (k, v) in headers {
            b = b.header(k, v);
        }
        let req = b.body(Full::new(body))?;
        let fut = async {
            self.sender.ready().await?;
            let resp = self.sender.send_request(req).await?;
            let (parts, body) = resp.into_parts();
            let bytes = body.collect().await?.to_bytes();
            Ok::<_, anyhow::Error>(Response::from_parts(parts, bytes))
        };
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .map_err(|_| anyhow!("request to {} timed out", self.host))?
    }
}

async fn get_once(addr: SocketAddr, path: &str) -> Result<Response<Bytes>> {
    Conn::open(addr)
        .await?
        .send(Method::GET, path, &[], Bytes::new())
        .await
}

/// Poll `GET path` on `addr` until it answers 200.
async fn wait_ready(
    addr: SocketAddr,
    path: &str,
    proc: &mut Option<Proc>,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        if let Some(p) = proc.as_mut() {
            p.check_alive()?;
        }
        match get_once(addr, path).await {
            Ok(r) if r.status() == StatusCode::OK => return Ok(()),
            Ok(r) => last = format!("status {}", r.status()),
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("http://{addr}{path} not ready after {timeout:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// Starting the proxies
// ---------------------------------------------------------------------------

struct Env {
    dir: PathBuf,
    taskset: Option<PathBuf>,
    v1_port: u16,
    v2_port: u16,
    token: String,
}

async fn start_gateway(env: &Env) -> Result<Target> {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_canary-gateway"));
    let port = free_port()?;
    let admin_port = free_port()?;
    let config = render(
        GATEWAY_TEMPLATE,
        &[
            ("PORT", port.to_string()),
            ("ADMIN_PORT", admin_port.to_string()),
            ("V1_PORT", env.v1_port.to_string()),
            ("V2_PORT", env.v2_port.to_string()),
        ],
    );
    let conf_path = env.dir.join("gateway.toml");
    std::fs::write(&conf_path, config)?;
    let log = env.dir.join("gateway.log");
    let logf = std::fs::File::create(&log)?;
    let child = pinned(env.taskset.as_deref(), PROXY_CORE, &exe)
        .arg("run")
        .arg("--config")
        .arg(&conf_path)
        .env(ADMIN_TOKEN_ENV, &env.token)
        .env(
            "RUST_LOG",
            std::env::var("LOAD_GATEWAY_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .spawn()
        .with_context(|| format!("spawning {}", exe.display()))?;
    let mut proc = Some(Proc {
        name: "canary-gateway".into(),
        child,
    });
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let ready = async {
        wait_ready(admin, "/readyz", &mut proc, Duration::from_secs(20)).await?;
        wait_ready(addr, "/", &mut proc, Duration::from_secs(5)).await
    };
    ready.await.with_context(|| {
        format!(
            "canary-gateway did not become ready (`{} run --config {}`); log tail:\n{}",
            exe.display(),
            conf_path.display(),
            log_tail(&log)
        )
    })?;
    Ok(Target {
        kind: Kind::Gateway,
        addr,
        proc,
        admin: Some(admin),
        log: Some(log),
    })
}

async fn start_nginx(env: &Env, exe: &Path) -> Result<Target> {
    let port = free_port()?;
    let config = render(
        NGINX_TEMPLATE,
        &[
            ("PORT", port.to_string()),
            ("V1_PORT", env.v1_port.to_string()),
            ("V2_PORT", env.v2_port.to_string()),
            ("DIR", env.dir.display().to_string()),
        ],
    );
    let conf_path = env.dir.join("nginx.conf");
    std::fs::write(&conf_path, config)?;
    let log = env.dir.join("nginx-error.log");
    let out = env.dir.join("nginx.out");
    let outf = std::fs::File::create(&out)?;
    let child = pinned(env.taskset.as_deref(), PROXY_CORE, exe)
        .arg("-p")
        .arg(&env.dir)
        .arg("-e")
        .arg(&log)
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(outf.try_clone()?)
        .stderr(outf)
        .spawn()
        .context("spawning nginx")?;
    let mut proc = Some(Proc {
        name: "nginx".into(),
        child,
    });
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_ready(addr, "/", &mut proc, Duration::from_secs(10))
        .await
        .with_context(|| {
            format!(
                "nginx not ready; output:\n{}\n{}",
                log_tail(&out),
                log_tail(&log)
            )
        })?;
    Ok(Target {
        kind: Kind::Nginx,
        addr,
        proc,
        admin: None,
        log: Some(log),
    })
}

async fn start_haproxy(env: &Env, exe: &Path) -> Result<Target> {
    let port = free_port()?;
    let config = render(
        HAPROXY_TEMPLATE,
        &[
            ("PORT", port.to_string()),
            ("V1_PORT", env.v1_port.to_string()),
            ("V2_PORT", env.v2_port.to_string()),
        ],
    );
    let conf_path = env.dir.join("haproxy.cfg");
    std::fs::write(&conf_path, config)?;
    let log = env.dir.join("haproxy.out");
    let logf = std::fs::File::create(&log)?;
    // -db: foreground, no daemon, no master-worker: one process.
    let child = pinned(env.taskset.as_deref(), PROXY_CORE, exe)
        .arg("-db")
        .arg("-f")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .spawn()
        .context("spawning haproxy")?;
    let mut proc = Some(Proc {
        name: "haproxy".into(),
        child,
    });
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_ready(addr, "/", &mut proc, Duration::from_secs(10))
        .await
        .with_context(|| format!("haproxy not ready; output:\n{}", log_tail(&log)))?;
    Ok(Target {
        kind: Kind::Haproxy,
        addr,
        proc,
        admin: None,
        log: Some(log),
    })
}

// ---------------------------------------------------------------------------
// Split check
// ---------------------------------------------------------------------------

#[derive(Default)]
struct SplitCount {
    v1: usize,
    v2: usize,
    other: usize,
}

async fn count_versions(addr: SocketAddr, total: usize) -> Result<SplitCount> {
    const CONNS: usize = 8;
    let mut tasks = Vec::new();
    for i in 0..CONNS {
        let n = total / CONNS + usize::from(i < total % CONNS);
        tasks.push(tokio::spawn(async move {
            let mut c = SplitCount::default();
            let mut conn = Conn::open(addr).await?;
            for _ in 0..n {
                let r = conn.send(Method::GET, "/", &[], Bytes::new()).await?;
                if r.status() != StatusCode::OK {
                    c.other += 1;
                } else if r.body().starts_with(b"v1 ") {
                    c.v1 += 1;
                } else if r.body().starts_with(b"v2 ") {
                    c.v2 += 1;
                } else {
                    c.other += 1;
                }
            }
            Ok::<_, anyhow::Error>(c)
        }));
    }
    let mut sum = SplitCount::default();
    for t in tasks {
        let c = t.await??;
        sum.v1 += c.v1;
        sum.v2 += c.v2;
        sum.other += c.other;
    }
    Ok(sum)
}

/// Sends `knobs.split_requests` through the target and checks ~90/10.
async fn check_split(t: &Target, knobs: &Knobs) -> Result<()> {
    let total = knobs.split_requests;
    let c = count_versions(t.addr, total)
        .await
        .with_context(|| format!("split check through {}", t.kind.name()))?;
    let share = |n: usize| 100.0 * n as f64 / total.max(1) as f64;
    println!(
        "  split {:<8} {total} requests: v1 {} ({:.1}%), v2 {} ({:.1}%), other {}",
        t.kind.name(),
        c.v1,
        share(c.v1),
        c.v2,
        share(c.v2),
        c.other
    );
    if c.other > 0 || (share(c.v2) - 10.0).abs() > knobs.split_tolerance {
        bail!(
            "{} does not split 90/10: v1 {:.1}% v2 {:.1}% other {} (tolerance ±{} points)",
            t.kind.name(),
            share(c.v1),
            share(c.v2),
            c.other,
            knobs.split_tolerance
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Measurements and statistics
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Sample {
    wrk: WrkResult,
    /// Proxy CPU (utime+stime, all processes/threads) per request, in µs.
    cpu_us_per_req: Option<f64>,
    /// Summed VmHWM of the proxy's processes after the run, in KiB.
    rss_kib: Option<u64>,
    /// p99 minus the p99 of the direct run of the same repetition, in µs.
    p99_added_us: Option<f64>,
    /// Core 1 was busy with other processes during the run.
    disturbed: bool,
    /// How busy the load core (wrk, upstreams) and the proxy core were, in
    /// percent: whichever is near 100 limits the run.
    busy_pct: (Option<f64>, Option<f64>),
}

fn percent(p: Option<f64>) -> String {
    p.map_or("-".into(), |p| format!("{p:.0}%"))
}

/// Busy share of a core between two /proc/stat readings, in percent.
fn busy_pct(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((b0, t0), (b1, t1)) = (before?, after?);
    let span = t1.checked_sub(t0).filter(|s| *s > 0)?;
    Some(100.0 * b1.saturating_sub(b0) as f64 / span as f64)
}

async fn measure(t: &Target, wrk: &Wrk, conns: u32, secs: u64, tck: f64) -> Result<Sample> {
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
    })
}

#[derive(Clone, Copy, Debug)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(values: impl IntoIterator<Item = f64>) -> Option<Stat> {
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

struct Summary {
    rps: Stat,
    p50_ms: Stat,
    p99_ms: Stat,
    p99_added_ms: Option<Stat>,
    cpu_us: Option<Stat>,
    rss_mib: Option<Stat>,
    failures: u64,
    requests: u64,
    disturbed: usize,
}

fn summarize(samples: &[Sample]) -> Option<Summary> {
    Some(Summary {
        rps: stat(samples.iter().map(|s| s.wrk.rps))?,
        p50_ms: stat(samples.iter().map(|s| s.wrk.p50_us / 1e3))?,
        p99_ms: stat(samples.iter().map(|s| s.wrk.p99_us / 1e3))?,
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
        failures: samples.iter().map(|s| s.wrk.failures()).sum(),
        requests: samples.iter().map(|s| s.wrk.requests).sum(),
        disturbed: samples.iter().filter(|s| s.disturbed).count(),
    })
}

fn fmt_stat(s: Option<Stat>, prec: usize) -> String {
    match s {
        Some(s) => format!("{:.p$} ({:.p$}-{:.p$})", s.median, s.min, s.max, p = prec),
        None => "-".into(),
    }
}

// ---------------------------------------------------------------------------
// Verdicts
// ---------------------------------------------------------------------------

enum Verdict {
    Pass(String),
    Fail(String),
    Skip(String),
}

fn verdict(label: &str, ok: Option<bool>, detail: String, skip_why: &str) -> Verdict {
    match ok {
        Some(true) => Verdict::Pass(format!("{label}: {detail}")),
        Some(false) => Verdict::Fail(format!("{label}: {detail}")),
        None => Verdict::Skip(format!("{label}: {skip_why}")),
    }
}

fn print_verdicts(vs: &[Verdict]) {
    for v in vs {
        match v {
            Verdict::Pass(s) => println!("  PASS  {s}"),
            Verdict::Fail(s) => println!("  FAIL  {s}"),
            Verdict::Skip(s) => println!("  SKIP  {s}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Weight changes and reloads under load
// ---------------------------------------------------------------------------

struct ChurnResult {
    wrk: WrkResult,
    weight_ok: usize,
    weight_failed: Vec<String>,
    reloads_sent: usize,
}

async fn churn(gw: &mut Target, wrk: &Wrk, knobs: &Knobs, token: &str) -> Result<ChurnResult> {
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

// ---------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------

fn pin_self(taskset: Option<&Path>) {
    if let Some(ts) = taskset {
        let ok = Command::new(ts)
            .args(["-cp", LOAD_CORE, &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("warning: could not pin the orchestrator to core {LOAD_CORE}");
        }
    }
}

fn tool_version(exe: &Path, arg: &str) -> String {
    Command::new(exe)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_default()
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

// ---------------------------------------------------------------------------
// Upstream server (runs in a child process of the benchmark)
// ---------------------------------------------------------------------------

fn upstream_body(name: &str) -> Bytes {
    let mut s = format!("{name} says hello from the canary-gateway load benchmark upstream");
    while s.len() < UPSTREAM_BODY_LEN - 1 {
        s.push('.');
    }
    s.truncate(UPSTREAM_BODY_LEN - 1);
    s.push('\n');
    Bytes::from(s)
}

fn run_upstream(names: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut listeners = Vec::new();
        for name in names.split(',') {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let port = listener.local_addr()?.port();
            let mut out = std::io::stdout().lock();
            writeln!(out, "PORT {port}")?;
            out.flush()?;
            listeners.push((std::sync::Arc::<str>::from(name), listener));
        }
        // Exit when the benchmark goes away (stdin closes).
        tokio::spawn(async {
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 64];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => std::process::exit(0),
                    Ok(_) => {}
                }
            }
        });
        let mut accepting = Vec::new();
        for (name, listener) in listeners {
            accepting.push(tokio::spawn(accept_loop(listener, name)));
        }
        for task in accepting {
            task.await?;
        }
        Ok(())
    })
}

async fn accept_loop(listener: tokio::net::TcpListener, name: std::sync::Arc<str>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                // e.g. EMFILE: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_fixed(stream, name.clone()));
    }
}

/// Answers every request head on `stream` with the upstream's fixed
/// response (the benchmark's requests carry no body), pipelined ones in one
/// write. A raw loop rather than an HTTP server: the upstreams share core 0
/// with wrk, and every cycle they spend there is one the load generator
/// lacks; the proxy under test must be what limits a run.
async fn serve_fixed(mut stream: TcpStream, name: std::sync::Arc<str>) {
    use tokio::io::AsyncWriteExt;
    let mut response = FixedResponse::new(name);
    let mut buf = Vec::with_capacity(4096);
    let mut out = Vec::new();
    loop {
        buf.reserve(4096);
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut used = 0;
        while let Some(end) = buf[used..].windows(4).position(|w| w == b"\r\n\r\n") {
            used += end + 4;
            response.append_to(&mut out);
        }
        buf.drain(..used);
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

/// The upstream's response: the ~100-byte body naming the version,
/// `x-version`, and a Date as an origin server sends it; made again when the
/// second changes.
struct FixedResponse {
    name: std::sync::Arc<str>,
    second: u64,
    bytes: Vec<u8>,
}

impl FixedResponse {
    fn new(name: std::sync::Arc<str>) -> FixedResponse {
        FixedResponse {
            name,
            second: u64::MAX,
            bytes: Vec::new(),
        }
    }

    fn append_to(&mut self, out: &mut Vec<u8>) {
        let now = std::time::SystemTime::now();
        let second = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second {
            self.second = second;
            let body = upstream_body(&self.name);
            self.bytes = format!(
                "HTTP/1.1 200 OK\r\nx-version: {}\r\ncontent-type: text/plain\r\n\
                 content-length: {}\r\ndate: {}\r\n\r\n",
                self.name,
                body.len(),
                httpdate::fmt_http_date(now)
            )
            .into_bytes();
            self.bytes.extend_from_slice(&body);
        }
        out.extend_from_slice(&self.bytes);
    }
}

// Self-check of the wrk parser and the upstream body, without any process:
// `cargo bench --bench load -- --self-test`.
const WRK_SAMPLE: &str = "Running 2s test @ http://127.0.0.1:1/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   614.21us  100.00us   3.00ms   90.00%
    Req/Sec    80.00k     1.00k   82.00k    70.00%
  Latency Distribution
     50%  600.00us
     75%  700.00us
     90%  800.00us
     99%    1.50ms
  160000 requests in 2.00s, 30.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  80000.00
Transfer/sec:     15.00MB
";

fn self_test() -> Result<()> {
    let r = parse_wrk(WRK_SAMPLE)?;
    ensure!(r.requests == 160_000, "requests {}", r.requests);
    ensure!((r.rps - 80_000.0).abs() < 1e-6, "rps {}", r.rps);
    ensure!((r.p50_us - 600.0).abs() < 1e-6, "p50 {}", r.p50_us);
    ensure!((r.p99_us - 1500.0).abs() < 1e-6, "p99 {}", r.p99_us);
    ensure!(r.failures() == 7, "failures {}", r.failures());
    ensure!(parse_wrk("garbage").is_err(), "garbage parsed");
    ensure!(parse_duration_us("2.5s")? == 2.5e6, "seconds unit");
    ensure!(
        parse_duration_us("12").is_err(),
        "unitless latency accepted"
    );
    ensure!(
        upstream_body("v1").len() == UPSTREAM_BODY_LEN,
        "body length"
    );
    ensure!(upstream_body("v2").starts_with(b"v2 "), "body prefix");
    let s = stat([3.0, 1.0, 2.0]).ok_or_else(|| anyhow!("empty stat"))?;
    ensure!(s.median == 2.0 && s.min == 1.0 && s.max == 3.0, "stat");
    println!("self-test ok");
    Ok(())
}
