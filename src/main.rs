//! The `canary-gateway` command: run, check, demo, health, ctl.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};

use canary_gateway::cli::{self, CtlArgs, HealthArgs};
use canary_gateway::config::{self, Config, LogFormat};
use canary_gateway::gateway::{self, Dependencies, Listeners};
use canary_gateway::reload::Hangup;
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
    /// Run the gateway (config: --config FILE, else the TOML in CANARY_GATEWAY_CONFIG).
    Run {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config (as `run` reads it) and print a one-line summary:
    /// also what `run` refuses before serving (admin token, TLS files, the
    /// state file of the file store, an AWS region), without AWS calls or
    /// binding ports.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Exit 0 when the gateway's /readyz answers 200, else 1 (a container health check).
    Health(HealthArgs),
    /// Change and watch a running gateway through its admin API (for people and pipelines).
    Ctl(CtlArgs),
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
        Command::Check { config } => check(config.as_deref()),
        Command::Run { config } => run(config.as_deref()),
        Command::Health(args) => return client_command(cli::ctl::health(&args)),
        Command::Ctl(args) => return client_command(cli::ctl::run(args)),
        Command::Demo { listen, admin } => {
            // Both on one port: a usage error (exit 2), as clap's own.
            if config::ports_overlap(listen, admin) {
                let mut command = Cli::command();
                command.build();
                command
                    .find_subcommand_mut("demo")
                    .unwrap_or(&mut Cli::command())
                    .error(
                        clap::error::ErrorKind::ArgumentConflict,
                        format!("--listen {listen} and --admin {admin} take the same port"),
                    )
                    .exit();
            }
            run_demo(listen, admin)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a `health` or `ctl` command on a small runtime; its error's exit code.
fn client_command(
    command: impl std::future::Future<Output = Result<(), cli::CliError>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(cli::exit::FAILED);
        }
    };
    match runtime.block_on(command) {
        Ok(()) => ExitCode::from(cli::exit::OK),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The config file, or without one the TOML in `CANARY_GATEWAY_CONFIG`.
fn load_config(path: Option<&std::path::Path>) -> Result<Config> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => Config::from_env()?,
    })
}

fn check(path: Option<&std::path::Path>) -> Result<()> {
    let config = load_config(path)?;
    // What `run` refuses before serving, with its messages (no AWS, no bind).
    let warnings = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(gateway::preflight(&config))?;
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    // A closed standard output (`check | true`) ends with 141, not a panic.
    cli::print_line(format_args!(
        "{}: {}",
        config.source_label(),
        config.summary()
    ));
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

fn run(path: Option<&std::path::Path>) -> Result<()> {
    let config = load_config(path)?;
    telemetry::init_logging(config.log.format, &config.log.level);
    runtime(config.worker_threads)?.block_on(async move {
        // First: a signal sent while the gateway starts is handled, not fatal.
        let mut shutdown = Shutdown::listen();
        let hup = Hangup::listen();
        let listeners = Listeners::bind(&config).await?;
        let start = gateway::start_with_hangup(config, listeners, Dependencies::default(), hup);
        let running = tokio::select! {
            running = start => running?,
            () = shutdown.wait() => {
                // Nothing serves yet: stop at once (ECS's stopTimeout runs).
                tracing::info!("shutdown signal received while starting");
                return Ok(());
            }
        };
        shutdown.wait().await;
        tracing::info!("shutdown signal received");
        running.shutdown().await;
        Ok(())
    })
}

fn run_demo(listen: std::net::SocketAddr, admin: std::net::SocketAddr) -> Result<()> {
    telemetry::init_logging(LogFormat::Text, "info");
    runtime(None)?.block_on(async move {
        let mut shutdown = Shutdown::listen();
        let hup = Hangup::listen();
        let v1 = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let v2 = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let (v1_addr, v2_addr) = (v1.local_addr()?, v2.local_addr()?);
        tokio::spawn(demo::backend(v1, "v1"));
        tokio::spawn(demo::backend(v2, "v2"));

        // Removed when dropped: on every way out below, `?` included.
        let dir = demo::create_dir().context("cannot create the demo's directory")?;
        let utf8 = |path: std::path::PathBuf| {
            path.to_str().map(str::to_string).with_context(|| {
                format!(
                    "the temporary directory {} is not UTF-8: set TMPDIR to another",
                    path.display()
                )
            })
        };
        let token = format!("{:032x}", rand::random::<u128>());
        let token_file = dir.path().join("admin-token");
        std::fs::write(&token_file, &token).context("cannot write the demo admin token")?;
        let text = demo::config_text(
            listen,
            admin,
            v1_addr,
            v2_addr,
            &utf8(token_file)?,
            &utf8(dir.path().join("state.json"))?,
        );
        let config = Config::parse(&text, "demo config")?;
        let listeners = Listeners::bind(&config).await?;
        let start = gateway::start_with_hangup(config, listeners, Dependencies::default(), hup);
        let running = tokio::select! {
            running = start => running?,
            () = shutdown.wait() => return Ok(()),
        };
        let instructions = demo::instructions(running.proxy_addr, running.admin_addr, &token);
        // No one reads the token or the instructions (`demo | true`): the
        // demo stops at once, its files removed, with 141 as `ctl` does.
        let written = cli::write_line(instructions);
        if written.is_ok() {
            shutdown.wait().await;
        }
        running.shutdown().await;
        drop(dir);
        if let Err(e) = written {
            cli::output_failed(&e);
        }
        Ok(())
    })
}

/// SIGTERM (ECS stopping the task) or SIGINT (Ctrl-C), listened for from
/// [`Shutdown::listen`] on: one sent while the gateway starts stops it
/// cleanly (exit 0) instead of the default action's kill.
struct Shutdown {
    #[cfg(unix)]
    term: std::io::Result<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: std::io::Result<tokio::signal::unix::Signal>,
}

impl Shutdown {
    /// Starts listening; within the runtime.
    fn listen() -> Shutdown {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Shutdown {
                term: signal(SignalKind::terminate()),
                int: signal(SignalKind::interrupt()),
            }
        }
        #[cfg(not(unix))]
        Shutdown {}
    }

    /// Resolves at the first SIGTERM or SIGINT since [`Shutdown::listen`].
    async fn wait(&mut self) {
        #[cfg(unix)]
        {
            let (term, int) = (&mut self.term, &mut self.int);
            if let Err(e) = &term {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
            }
            if let Err(e) = &int {
                tracing::warn!(error = %e, "cannot listen for SIGINT");
            }
            match (&*term, &*int) {
                (Err(_), Err(_)) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
                _ => {
                    tokio::select! {
                        _ = next_signal(term) => {}
                        _ = next_signal(int) => {}
                    }
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The next of these signals; never when they cannot be heard.
#[cfg(unix)]
async fn next_signal(signal: &mut std::io::Result<tokio::signal::unix::Signal>) {
    if let Ok(s) = signal
        && s.recv().await.is_some()
    {
        return;
    }
    std::future::pending::<()>().await;
}
