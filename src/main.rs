//! The `canary-gateway` command: run, check, demo.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use canary_gateway::config::{Config, LogFormat};
use canary_gateway::gateway::{self, Dependencies, Listeners};
use canary_gateway::{demo, telemetry};

#[derive(Parser)]
#[command(
    name = "canary-gateway",
    version,
    about = "A canary gateway for AWS ECS: splits HTTP traffic between versions by weight"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and print a one-line summary.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run two demo backends behind the gateway with a 90/10 split.
    Demo {
        #[arg(long, default_value = "127.0.0.1:9080")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => run(config),
        Command::Demo { listen, admin } => run_demo(listen, admin),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> Result<()> {
    let config = Config::load(path)?;
    if let Some(tls) = &config.listener.tls {
        canary_gateway::tls::ListenerTls::load(tls).context("listener.tls")?;
    }
    println!("{}: {}", path.display(), config.summary());
    Ok(())
}

/// One worker thread: a current-thread runtime (everything on the main
/// thread, no cross-thread wake-ups or work stealing); more: the multi-thread one.
fn runtime(worker_threads: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut builder = match worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(path: PathBuf) -> Result<()> {
    let config = Config::load(&path)?;
    telemetry::init_logging(config.log.format, &config.log.level);
    runtime(config.worker_threads)?.block_on(async move {
        let listeners = Listeners::bind(&config).await?;
        let running = gateway::start(config, listeners, Dependencies::default()).await?;
        shutdown_signal().await;
        tracing::info!("shutdown signal received");
        running.shutdown().await;
        Ok(())
    })
}

fn run_demo(listen: std::net::SocketAddr, admin: std::net::SocketAddr) -> Result<()> {
    telemetry::init_logging(LogFormat::Text, "info");
    runtime(None)?.block_on(async move {
        let v1 = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let v2 = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let (v1_addr, v2_addr) = (v1.local_addr()?, v2.local_addr()?);
        tokio::spawn(demo::backend(v1, "v1"));
        tokio::spawn(demo::backend(v2, "v2"));

        let dir = std::env::temp_dir().join(format!("canary-gateway-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let token = format!("{:032x}", rand::random::<u128>());
        let token_file = dir.join("admin-token");
        std::fs::write(&token_file, &token).context("cannot write the demo admin token")?;
        let text = demo::config_text(
            listen,
            admin,
            v1_addr,
            v2_addr,
            &token_file.display().to_string(),
            &dir.join("state.json").display().to_string(),
        );
        let config = Config::parse(&text, "demo config")?;
        let listeners = Listeners::bind(&config).await?;
        let running = gateway::start(config, listeners, Dependencies::default()).await?;
        println!(
            "{}",
            demo::instructions(running.proxy_addr, running.admin_addr, &token)
        );
        shutdown_signal().await;
        running.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    })
}

/// SIGTERM (ECS stopping the task) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
