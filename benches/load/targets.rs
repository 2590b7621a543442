//! Targets under load: direct, canary-gateway, nginx and HAProxy, started
//! from the config templates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::client::{wait_ready, wait_tcp};
use crate::proc_accounting::process_tree;
use crate::processes::{
    NGINX_ERROR_LOG, NGINX_OUT, Proc, free_port, log_tail, pinned, spawn_nginx,
};
use crate::tls::TlsFiles;
use crate::{ADMIN_TOKEN_ENV, GATEWAY_TEMPLATE, HAPROXY_TEMPLATE, NGINX_TEMPLATE, PROXY_CORE};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Direct,
    Gateway,
    Nginx,
    Haproxy,
}

impl Kind {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "direct" => Kind::Direct,
            "gateway" | "canary-gateway" => Kind::Gateway,
            "nginx" => Kind::Nginx,
            "haproxy" => Kind::Haproxy,
            other => bail!("LOAD_TARGETS: unknown target {other:?} (direct,gateway,nginx,haproxy)"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Gateway => "gateway",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }
}

/// A target under load: where wrk points and which processes to account.
pub struct Target {
    pub kind: Kind,
    pub addr: SocketAddr,
    /// The proxy's root process (None for direct).
    pub proc: Option<Proc>,
    pub admin: Option<SocketAddr>,
    pub log: Option<PathBuf>,
    /// Listens with TLS (scenarios 5-7).
    pub tls: bool,
}

impl Target {
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/", self.addr)
    }

    /// The root pid and all of its descendants (nginx master + workers).
    pub fn pids(&self) -> Vec<u32> {
        match &self.proc {
            Some(p) => process_tree(p.pid()),
            None => Vec::new(),
        }
    }
}

pub fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    out
}

pub struct Env {
    pub dir: PathBuf,
    pub taskset: Option<PathBuf>,
    pub v1_port: u16,
    pub v2_port: u16,
    pub token: String,
    /// The certificate the proxies listen with, for the TLS scenarios.
    pub tls: Option<TlsFiles>,
}

/// What a target polls before it counts as ready: an HTTP 200 on `/`, or,
/// with TLS (the bench's own client speaks plain HTTP), an accepted TCP
/// connection.
async fn wait_target(addr: SocketAddr, env: &Env, proc: &mut Option<Proc>) -> Result<()> {
    if env.tls.is_some() {
        wait_tcp(addr, proc, Duration::from_secs(10)).await
    } else {
        wait_ready(addr, "/", proc, Duration::from_secs(10)).await
    }
}

/// The gateway binary measured: `LOAD_GATEWAY_BIN` when set (an A/B of two
/// builds with the same bench executable), else the one `cargo bench`
/// built. That one is built with the dev-dependencies' features (tokio's
/// `test-util`); measured against a plain `cargo build --release` binary in
/// interleaved runs, no difference beyond the noise (docs/performance.md).
pub fn gateway_exe() -> PathBuf {
    std::env::var_os("LOAD_GATEWAY_BIN")
        .filter(|p| !p.is_empty())
        .map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_canary-gateway")),
            PathBuf::from,
        )
}

pub async fn start_gateway(env: &Env) -> Result<Target> {
    let exe = gateway_exe();
    let port = free_port()?;
    let admin_port = free_port()?;
    let state = env.dir.join("gateway.state.json");
    match std::fs::remove_file(&state) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).context("removing the previous case's gateway state");
        }
        _ => {}
    }
    let config = render(
        GATEWAY_TEMPLATE,
        &[
            ("PORT", port.to_string()),
            ("ADMIN_PORT", admin_port.to_string()),
            ("V1_PORT", env.v1_port.to_string()),
            ("V2_PORT", env.v2_port.to_string()),
            ("STATE", state.display().to_string()),
            (
                "LISTENER_TLS",
                env.tls.as_ref().map_or_else(String::new, |t| {
                    format!(
                        // Full handshakes, as nginx and HAProxy are set up.
                        "\n[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\nsession_resumption = false\n",
                        t.cert.display(),
                        t.key.display()
                    )
                }),
            ),
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
        wait_target(addr, env, &mut proc).await
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
        tls: env.tls.is_some(),
    })
}

pub async fn start_nginx(env: &Env, exe: &Path) -> Result<Target> {
    let port = free_port()?;
    let config = render(
        NGINX_TEMPLATE,
        &[
            ("PORT", port.to_string()),
            ("V1_PORT", env.v1_port.to_string()),
            ("V2_PORT", env.v2_port.to_string()),
            ("DIR", env.dir.display().to_string()),
            (
                "LISTEN_TLS",
                env.tls.as_ref().map_or("", TlsFiles::nginx_listen).into(),
            ),
            (
                "TLS",
                env.tls
                    .as_ref()
                    .map_or_else(String::new, TlsFiles::nginx_directives),
            ),
        ],
    );
    let conf_path = env.dir.join("nginx.conf");
    std::fs::write(&conf_path, config)?;
    let log = env.dir.join(NGINX_ERROR_LOG);
    let out = env.dir.join(NGINX_OUT);
    let mut proc = Some(spawn_nginx(
        "nginx",
        exe,
        env.taskset.as_deref(),
        PROXY_CORE,
        &env.dir,
        &conf_path,
    )?);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_target(addr, env, &mut proc).await.with_context(|| {
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
        tls: env.tls.is_some(),
    })
}

pub async fn start_haproxy(env: &Env, exe: &Path) -> Result<Target> {
    let port = free_port()?;
    let config = render(
        HAPROXY_TEMPLATE,
        &[
            ("PORT", port.to_string()),
            ("V1_PORT", env.v1_port.to_string()),
            ("V2_PORT", env.v2_port.to_string()),
            (
                "BIND_TLS",
                env.tls
                    .as_ref()
                    .map_or_else(String::new, TlsFiles::haproxy_bind),
            ),
            (
                "GLOBAL_TLS",
                env.tls
                    .as_ref()
                    .map_or("", |_| "    tune.ssl.cachesize 0\n")
                    .into(),
            ),
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
    wait_target(addr, env, &mut proc)
        .await
        .with_context(|| format!("haproxy not ready; output:\n{}", log_tail(&log)))?;
    Ok(Target {
        kind: Kind::Haproxy,
        addr,
        proc,
        admin: None,
        log: Some(log),
        tls: env.tls.is_some(),
    })
}
