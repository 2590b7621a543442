//! Child processes: pinned to a core, stopped on drop; the upstream process;
//! tool lookup and versions.

use std::io::{BufRead, BufReader};
use std::net::TcpListener as StdTcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::LOAD_CORE;
use crate::scenarios::ResponseShape;

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Error if the process has already exited.
    pub fn check_alive(&mut self) -> Result<()> {
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

pub fn send_signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn find_exe(name: &str) -> Option<PathBuf> {
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
pub fn pinned(taskset: Option<&Path>, core: &str, program: &Path) -> Command {
    match taskset {
        Some(ts) => {
            let mut c = Command::new(ts);
            c.arg("-c").arg(core).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// The async (tokio) form of [`pinned`], for load generators.
pub fn pinned_async(taskset: Option<&Path>, core: &str, program: &Path) -> tokio::process::Command {
    tokio::process::Command::from(pinned(taskset, core, program))
}

/// nginx's error log in its prefix directory.
pub const NGINX_ERROR_LOG: &str = "nginx-error.log";
/// nginx's own output in its prefix directory.
pub const NGINX_OUT: &str = "nginx.out";

/// Starts nginx on `core` with prefix `dir` and config `conf`; its error
/// log and output go to [`NGINX_ERROR_LOG`] and [`NGINX_OUT`] in `dir`.
pub fn spawn_nginx(
    name: &str,
    exe: &Path,
    taskset: Option<&Path>,
    core: &str,
    dir: &Path,
    conf: &Path,
) -> Result<Proc> {
    let error_log = dir.join(NGINX_ERROR_LOG);
    let outf = std::fs::File::create(dir.join(NGINX_OUT))?;
    let child = pinned(taskset, core, exe)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(&error_log)
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(outf.try_clone()?)
        .stderr(outf)
        .spawn()
        .with_context(|| format!("spawning {name}"))?;
    Ok(Proc {
        name: name.into(),
        child,
    })
}

pub fn free_port() -> Result<u16> {
    let l = StdTcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

pub fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            let start = lines.len().saturating_sub(20);
            lines[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Starts the upstreams `names` (one listener each, answering `shape`) in
/// one process on the load core, and reads their ports.
pub fn spawn_upstreams(
    taskset: Option<&Path>,
    names: &[&str],
    shape: ResponseShape,
) -> Result<(Proc, Vec<u16>)> {
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let list = names.join(",");
    let mut child = pinned(taskset, LOAD_CORE, &exe)
        .args(["--upstream", &list, "--response", &shape.arg()])
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

pub fn pin_self(taskset: Option<&Path>) {
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

pub fn tool_version(exe: &Path, arg: &str) -> String {
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
