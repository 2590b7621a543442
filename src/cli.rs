//! The command line for people and pipelines: `canary-gateway health` (the
//! container's health check) and `canary-gateway ctl ...` (the admin API
//! from a shell or a CI job), with exit codes a pipeline can trust.
//!
//! - [`client`]: a small HTTP/1.1 client for the admin API;
//! - [`ctl`]: the subcommands and what each one calls;
//! - [`render`]: readable output for people (`--json` prints the API's JSON);
//! - [`wait`]: `status --wait-converged` and `rollout status --wait`.

pub mod client;
pub mod ctl;
pub mod render;
pub mod wait;

use std::time::Duration;

pub use ctl::{CtlArgs, HealthArgs};

/// Exit codes of `health` and `ctl` (documented in docs/admin-api.md).
pub mod exit {
    /// Done, or (health) ready.
    pub const OK: u8 = 0;
    /// Anything else: not ready (health), an unexpected answer.
    pub const FAILED: u8 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: u8 = 2;
    /// The gateway refused the request (4xx: bad input, unknown version, conflict).
    pub const REFUSED: u8 = 3;
    /// Missing or wrong token (401/403).
    pub const UNAUTHORIZED: u8 = 4;
    /// No answer from the admin API (connection refused, timeout, not HTTP).
    pub const UNREACHABLE: u8 = 5;
    /// The gateway answered with a 5xx (e.g. the weight store cannot be written).
    pub const GATEWAY_ERROR: u8 = 6;
    /// The rollout was aborted (rollback to stable).
    pub const ROLLOUT_ABORTED: u8 = 7;
    /// `--wait-converged` / `--wait` gave up after `--timeout`.
    pub const TIMED_OUT: u8 = 8;
    /// Standard output was closed before everything was written
    /// (`ctl ... | head -1`): what a shell reports for a program that
    /// SIGPIPE ended (128 + 13).
    pub const OUTPUT_CLOSED: u8 = 141;
}

/// Why a command failed; each kind has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the admin API at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("unauthorized ({status}): {message} (set CANARY_ADMIN_TOKEN)")]
    Unauthorized { status: u16, message: String },
    #[error("refused ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the gateway failed ({status}): {message}")]
    Gateway { status: u16, message: String },
    #[error("rollout aborted: {0}")]
    Aborted(String),
    #[error("timed out after {after:?}: {what}")]
    TimedOut { after: Duration, what: String },
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::Unreachable { .. } => exit::UNREACHABLE,
            CliError::Unauthorized { .. } => exit::UNAUTHORIZED,
            CliError::Refused { .. } => exit::REFUSED,
            CliError::Gateway { .. } => exit::GATEWAY_ERROR,
            CliError::Aborted(_) => exit::ROLLOUT_ABORTED,
            CliError::TimedOut { .. } => exit::TIMED_OUT,
            CliError::Failed(_) => exit::FAILED,
        }
    }
}

/// Writes `line` and a newline to standard output. A reader that went away
/// (`ctl ... | head -1`) ends the process with [`exit::OUTPUT_CLOSED`], as
/// SIGPIPE ends a C program, where `println!` would panic; any other write
/// error ends it with [`exit::FAILED`].
pub fn print_line(line: impl std::fmt::Display) {
    if let Err(e) = write_line(line) {
        output_failed(&e);
    }
}

/// Writes `line` and a newline to standard output, flushed; the error for a
/// caller with something to clean up before [`output_failed`].
pub fn write_line(line: impl std::fmt::Display) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush())
}

/// Ends the process after a failed write to standard output: with
/// [`exit::OUTPUT_CLOSED`] when its reader went away, else with
/// [`exit::FAILED`] and the error on standard error.
pub fn output_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(exit::OUTPUT_CLOSED.into());
    }
    eprintln!("error: cannot write to standard output: {e}");
    std::process::exit(exit::FAILED.into());
}

/// The admin URL when `--admin` is not given and `CANARY_ADMIN_URL` is unset.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9901";

/// A duration argument: "60s", "500ms", "2m", or seconds.
pub fn duration_arg(text: &str) -> Result<Duration, String> {
    crate::config::duration::parse(text)
}
