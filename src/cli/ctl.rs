//! `canary-gateway ctl ...` and `canary-gateway health`: what each
//! subcommand asks the admin API.

use std::time::Duration;

use clap::{Args, Subcommand};
use http::Method;
use serde_json::{Value, json};

use super::client::AdminClient;
use super::{CliError, DEFAULT_ADMIN_URL, duration_arg, render, wait};

/// `canary-gateway health`: exit 0 when `/readyz` answers 200, else 1.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The admin API's URL.
    #[arg(long, env = "CANARY_ADMIN_URL", default_value = DEFAULT_ADMIN_URL)]
    pub admin: String,
    /// How long to wait for the answer.
    #[arg(long, default_value = "3s", value_parser = duration_arg)]
    pub timeout: Duration,
}

/// `canary-gateway ctl`: the admin API for people and pipelines.
#[derive(Debug, Args)]
#[command(after_help = "The bearer token comes from CANARY_ADMIN_TOKEN.\n\
    Exit codes: 0 done, 1 failed, 2 bad command line, 3 refused (4xx), 4 unauthorized, \
    5 unreachable, 6 gateway error (5xx), 7 rollout aborted, 8 timed out waiting.")]
pub struct CtlArgs {
    /// The admin API's URL; repeat it to name several gateway tasks (used by
    /// `status --wait-converged`, and by `rollout ... --wait` when one cannot
    /// be reached; other commands use the first).
    #[arg(long, global = true, env = "CANARY_ADMIN_URL", default_value = DEFAULT_ADMIN_URL, value_delimiter = ',')]
    pub admin: Vec<String>,
    /// Print the admin API's JSON instead of a readable summary.
    #[arg(long, global = true)]
    pub json: bool,
    /// The bearer token (from the environment only, never the command line).
    #[arg(skip = std::env::var("CANARY_ADMIN_TOKEN").ok())]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// The gateway's status: weights, generation, versions, readiness, store.
    Status {
        /// Wait until every task reports the same weights generation.
        #[arg(long)]
        wait_converged: bool,
        /// How long --wait-converged waits.
        #[arg(long, default_value = "60s", value_parser = duration_arg)]
        timeout: Duration,
    },
    /// Show the weights, or change them: `weights set v2=5 v1=95`.
    Weights {
        #[command(subcommand)]
        action: Option<WeightsAction>,
    },
    /// Make a version the stable one with all the traffic.
    Promote { version: String },
    /// All traffic back to the stable version.
    Rollback,
    /// Progressive rollouts.
    Rollout {
        #[command(subcommand)]
        action: RolloutAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum WeightsAction {
    /// Set weights: NAME=WEIGHT ... (versions not named keep theirs).
    Set {
        #[arg(required = true, value_parser = weight_arg)]
        weights: Vec<(String, u32)>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RolloutAction {
    /// Start a rollout of a canary.
    Start(Box<RolloutStart>),
    /// The rollout's state; --wait follows it to its end.
    Status(RolloutWait),
    /// Hold at the current step.
    Pause,
    /// Go on from a pause.
    Resume,
    /// Stop and send all traffic back to stable.
    Abort,
    /// Skip to the end: the rollout succeeds with its on_success (promote:
    /// the canary takes all traffic and becomes stable; hold: the last
    /// step's weights stay).
    Promote,
}

#[derive(Debug, Args)]
pub struct RolloutWait {
    /// Follow the rollout (the one just started, else the one in force) until
    /// it succeeds (exit 0) or aborts (exit 7); a poll that fails, or that
    /// shows an earlier rollout, is asked again.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long (exit 8); default: no limit (but polls
    /// failing for 5 minutes in a row end the wait).
    #[arg(long, value_parser = duration_arg)]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct RolloutStart {
    #[arg(long)]
    pub canary: String,
    /// The canary's share at each step, in percent: 1,5,25,100.
    #[arg(long, value_delimiter = ',')]
    pub steps: Option<Vec<f64>>,
    /// Time between steps: 60s, 5m.
    #[arg(long, value_parser = duration_arg)]
    pub interval: Option<Duration>,
    #[arg(long)]
    pub min_requests: Option<u64>,
    #[arg(long)]
    pub max_error_rate: Option<f64>,
    #[arg(long)]
    pub max_p99_ms: Option<f64>,
    #[arg(long)]
    pub max_p99_ratio: Option<f64>,
    #[arg(long)]
    pub confidence: Option<f64>,
    /// promote | hold
    #[arg(long, value_parser = ["promote", "hold"])]
    pub on_success: Option<String>,
    #[arg(long)]
    pub webhook: Option<String>,
    #[arg(long)]
    pub gate: Option<String>,
    #[command(flatten)]
    pub follow: RolloutWait,
}

fn weight_arg(text: &str) -> Result<(String, u32), String> {
    let (name, weight) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: expected NAME=WEIGHT, e.g. v2=5"))?;
    let weight = weight
        .trim()
        .parse()
        .map_err(|_| format!("`{text}`: the weight must be a non-negative integer"))?;
    Ok((name.trim().to_string(), weight))
}

/// The `PUT /weights` body of `weights set`. A version named twice is a
/// usage error (exit 2) and nothing is sent: as the API does for a key given
/// twice, which of the two was meant is not guessed.
fn weights_body(weights: Vec<(String, u32)>) -> Result<Value, CliError> {
    let mut map = serde_json::Map::new();
    for (name, weight) in weights {
        if map.contains_key(&name) {
            return Err(CliError::Usage(format!(
                "weights set: `{name}` is given twice; name each version once"
            )));
        }
        map.insert(name, json!(weight));
    }
    Ok(json!({ "weights": map }))
}

/// Per-call timeout of the admin client (a weight change may wait on the store).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// `canary-gateway health`: any failure, unreachable included, is
/// [`CliError::Failed`] (exit 1), as a container health check expects.
pub async fn health(args: &HealthArgs) -> Result<(), CliError> {
    // `ctl` takes a list of gateways in CANARY_ADMIN_URL; a health check is
    // about this task's gateway alone.
    if args.admin.contains(',') {
        return Err(CliError::Failed(format!(
            "health checks one gateway, this task's: --admin (or CANARY_ADMIN_URL) holds a list, `{}`; give the health check --admin with this task's URL, e.g. {DEFAULT_ADMIN_URL}",
            args.admin
        )));
    }
    let client = AdminClient::new(&args.admin, None, args.timeout)
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let answer = (client.call(Method::GET, "/readyz", None).await)
        .map_err(|e| CliError::Failed(e.to_string()))?;
    if answer.status == 200 {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "not ready ({}): {}",
            answer.status,
            answer.body.trim()
        )))
    }
}

/// Runs a `ctl` command, printing its result.
pub async fn run(args: CtlArgs) -> Result<(), CliError> {
    let clients = args
        .admin
        .iter()
        .map(|url| AdminClient::new(url, args.token.clone(), CALL_TIMEOUT))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(first) = clients.first() else {
        return Err(CliError::Usage("--admin: give a URL".into()));
    };
    let out = Output { json: args.json };
    match args.command {
        CtlCommand::Status {
            wait_converged: false,
            ..
        } => {
            let status = first.json(Method::GET, "/status", None).await?;
            out.print(&status, render::status);
        }
        CtlCommand::Status {
            wait_converged: true,
            timeout,
        } => {
            let statuses = wait::converged(&clients, timeout).await?;
            if args.json {
                out.print(&Value::Array(statuses), |_| String::new());
            } else {
                for s in &statuses {
                    crate::cli::print_line(render::status(s));
                }
                crate::cli::print_line("converged");
            }
        }
        CtlCommand::Weights { action: None } => {
            let weights = first.json(Method::GET, "/weights", None).await?;
            out.print(&weights, render::weights);
        }
        CtlCommand::Weights {
            action: Some(WeightsAction::Set { weights }),
        } => {
            let body = weights_body(weights)?;
            let view = first.json(Method::PUT, "/weights", Some(&body)).await?;
            out.print(&view, render::weights);
        }
        CtlCommand::Promote { version } => {
            let body = json!({ "version": version });
            let view = first.json(Method::POST, "/promote", Some(&body)).await?;
            out.print(&view, render::weights);
        }
        CtlCommand::Rollback => {
            let view = first
                .json(Method::POST, "/rollback", Some(&json!({})))
                .await?;
            out.print(&view, render::weights);
        }
        CtlCommand::Rollout { action } => rollout(&clients, action, out).await?,
    }
    Ok(())
}

/// `ctl rollout ...`: on the first of `clients`; `--wait` asks the others
/// too when one cannot be reached (see [`wait::rollout`]).
async fn rollout(
    clients: &[AdminClient],
    action: RolloutAction,
    out: Output,
) -> Result<(), CliError> {
    let Some(client) = clients.first() else {
        return Err(CliError::Usage("--admin: give a URL".into()));
    };
    let verb = match action {
        RolloutAction::Start(start) => {
            let body = start_body(&start);
            let answer = client.json(Method::POST, "/rollout", Some(&body)).await?;
            if !start.follow.wait {
                out.print(&answer, render::rollout);
                return Ok(());
            }
            // Follows this rollout, not one a task behind a load balancer
            // still shows.
            let started = answer.get("started_at_ms").and_then(Value::as_u64);
            return wait::rollout(clients, started, start.follow.timeout, out.json).await;
        }
        RolloutAction::Status(w) => {
            if w.wait {
                return wait::rollout(clients, None, w.timeout, out.json).await;
            }
            let state = client.json(Method::GET, "/rollout", None).await?;
            out.print(&state, render::rollout);
            return Ok(());
        }
        RolloutAction::Pause => "pause",
        RolloutAction::Resume => "resume",
        RolloutAction::Abort => "abort",
        RolloutAction::Promote => "promote",
    };
    let answer = client
        .json(Method::POST, &format!("/rollout/{verb}"), Some(&json!({})))
        .await?;
    out.print(&answer, render::rollout);
    Ok(())
}

/// The `POST /rollout` body: only the fields given (the gateway's `[rollout]`
/// defaults fill in the rest).
fn start_body(s: &RolloutStart) -> Value {
    let mut body = serde_json::Map::new();
    body.insert("canary".into(), json!(s.canary));
    if let Some(steps) = &s.steps {
        body.insert("steps".into(), json!(steps));
    }
    if let Some(interval) = s.interval {
        let secs = interval.as_secs_f64();
        let value = if secs.fract() == 0.0 {
            json!(secs as u64)
        } else {
            json!(secs)
        };
        body.insert("interval_s".into(), value);
    }
    let numbers = [
        ("max_error_rate", s.max_error_rate),
        ("max_p99_ms", s.max_p99_ms),
        ("max_p99_ratio", s.max_p99_ratio),
        ("confidence", s.confidence),
    ];
    for (key, value) in numbers {
        if let Some(v) = value {
            body.insert(key.into(), json!(v));
        }
    }
    if let Some(n) = s.min_requests {
        body.insert("min_requests".into(), json!(n));
    }
    for (key, value) in [
        ("on_success", &s.on_success),
        ("webhook", &s.webhook),
        ("gate", &s.gate),
    ] {
        if let Some(v) = value {
            body.insert(key.into(), json!(v));
        }
    }
    Value::Object(body)
}

/// Prints JSON (`--json`) or the readable form.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    pub fn print(&self, value: &Value, readable: impl Fn(&Value) -> String) {
        if self.json {
            crate::cli::print_line(serde_json::to_string_pretty(value).unwrap_or_default());
        } else {
            crate::cli::print_line(readable(value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_args_and_the_rollout_body() {
        assert_eq!(weight_arg("v2=5"), Ok(("v2".into(), 5)));
        assert!(weight_arg("v2").is_err());
        assert!(weight_arg("v2=-1").is_err());
        assert_eq!(
            weights_body(vec![("v2".into(), 5), ("v1".into(), 95)]).ok(),
            Some(json!({"weights": {"v2": 5, "v1": 95}}))
        );
        let twice = weights_body(vec![("v2".into(), 5), ("v2".into(), 6)]);
        assert!(
            matches!(&twice, Err(CliError::Usage(m)) if m.contains("`v2` is given twice")),
            "{twice:?}"
        );
        let start = RolloutStart {
            canary: "v2".into(),
            steps: Some(vec![1.0, 5.0, 0.5]),
            interval: Some(Duration::from_secs(60)),
            min_requests: None,
            max_error_rate: Some(0.01),
            max_p99_ms: None,
            max_p99_ratio: None,
            confidence: None,
            on_success: Some("hold".into()),
            webhook: None,
            gate: None,
            follow: RolloutWait {
                wait: false,
                timeout: None,
            },
        };
        assert_eq!(
            start_body(&start),
            json!({"canary": "v2", "steps": [1.0, 5.0, 0.5], "interval_s": 60,
                   "max_error_rate": 0.01, "on_success": "hold"})
        );
    }
}
