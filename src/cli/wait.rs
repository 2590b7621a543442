//! Waiting, for pipelines: `ctl status --wait-converged` and
//! `ctl rollout status --wait`.

use std::time::Duration;

use http::Method;
use serde_json::Value;

use super::CliError;
use super::client::AdminClient;
use super::render::{self, field};

/// How often the admin API is asked again while waiting.
const POLL: Duration = Duration::from_millis(500);

/// The weights generations a task's `/status` reports: its own, and those
/// of the fleet's live tasks when the store shares their reports
/// (`fleet.tasks[]`, stale ones left out).
fn generations(status: &Value) -> Vec<u64> {
    let mut out: Vec<u64> = status
        .pointer("/weights/generation")
        .and_then(Value::as_u64)
        .into_iter()
        .collect();
    if let Some(Value::Array(tasks)) = status.pointer("/fleet/tasks") {
        out.extend(
            tasks
                .iter()
                .filter(|t| t.get("stale") != Some(&Value::Bool(true)))
                .filter_map(|t| t.get("generation").and_then(Value::as_u64)),
        );
    }
    out
}

/// Why the fleet has not converged yet, or `None` when it has: every task
/// reports the same generation (through the store when it shares the tasks'
/// reports: `fleet.converged`; else across the `--admin` URLs given), reads
/// the store without error, has read it at all (not `degraded`) and has no
/// rollback waiting to be written.
fn not_converged(statuses: &[Value]) -> Option<String> {
    for s in statuses {
        if s.pointer("/fleet/reports_shared") == Some(&Value::Bool(true))
            && s.pointer("/fleet/converged") != Some(&Value::Bool(true))
        {
            return Some(format!(
                "the store's task reports do not agree yet: generations {:?}",
                generations(s)
            ));
        }
    }
    let all: Vec<u64> = statuses.iter().flat_map(generations).collect();
    if all.is_empty() {
        return Some("no generation reported".into());
    }
    if all.iter().any(|g| *g != all[0]) {
        return Some(format!("generations differ: {all:?}"));
    }
    for s in statuses {
        if let Some(e) = s.pointer("/store/last_error").and_then(Value::as_str) {
            return Some(format!("the store answers with an error: {e}"));
        }
        if s.pointer("/store/degraded") == Some(&Value::Bool(true)) {
            return Some("a task has not read the store yet (degraded)".into());
        }
        if s.pointer("/store/rollback_pending") == Some(&Value::Bool(true)) {
            return Some("a rollback is not in the store yet".into());
        }
    }
    None
}

/// Polls every task's `/status` until it has converged (see `not_converged`), or fails
/// after `timeout`. A task that cannot be reached is asked again (it may be
/// restarting); a refusal (bad token) ends the wait.
pub async fn converged(clients: &[AdminClient], timeout: Duration) -> Result<Vec<Value>, CliError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut why;
    loop {
        let mut statuses = Vec::with_capacity(clients.len());
        why = None;
        for client in clients {
            match client.json(Method::GET, "/status", None).await {
                Ok(s) => statuses.push(s),
                Err(e @ CliError::Unreachable { .. }) | Err(e @ CliError::Gateway { .. }) => {
                    why = Some(e.to_string());
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if why.is_none() {
            why = not_converged(&statuses);
            if why.is_none() {
                return Ok(statuses);
            }
        }
        if tokio::time::Instant::now() + POLL > deadline {
            return Err(CliError::TimedOut {
                after: timeout,
                what: why.unwrap_or_default(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What changes from step to step (printed once per change).
fn progress(state: &Value) -> (String, String, String) {
    let s = |keys: &[&str]| {
        field(state, keys)
            .map(|v| v.to_string())
            .unwrap_or_default()
    };
    (
        s(&["phase"]),
        s(&["step", "current_step"]),
        s(&["share", "canary_share", "current_share"]),
    )
}

/// Follows `GET /rollout` until it ends: `succeeded` is success, `aborted`
/// an error (exit 7); prints each step as it comes.
pub async fn rollout(
    client: &AdminClient,
    timeout: Option<Duration>,
    json: bool,
) -> Result<(), CliError> {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut last = None;
    loop {
        let state = client.json(Method::GET, "/rollout", None).await?;
        let now = progress(&state);
        if last.as_ref() != Some(&now) {
            if json {
                println!("{}", serde_json::to_string(&state).unwrap_or_default());
            } else {
                println!("{}", render::rollout(&state));
            }
            last = Some(now);
        }
        match field(&state, &["phase"]).and_then(Value::as_str) {
            Some("succeeded") => return Ok(()),
            Some("aborted") => {
                let reason = field(&state, &["abort_reason", "reason"])
                    .map(|r| match r {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .unwrap_or_else(|| "no reason given".into());
                return Err(CliError::Aborted(reason));
            }
            _ => {}
        }
        if let (Some(deadline), Some(t)) = (deadline, timeout)
            && tokio::time::Instant::now() + POLL > deadline
        {
            return Err(CliError::TimedOut {
                after: t,
                what: format!(
                    "the rollout is still {}",
                    last.map(|l| l.0).unwrap_or_default()
                ),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn convergence_needs_one_generation_and_a_readable_store() {
        let at = |g: u64| json!({"weights": {"generation": g}, "store": {"last_error": null}});
        assert_eq!(not_converged(&[at(3), at(3)]), None);
        assert!(not_converged(&[at(3), at(4)]).unwrap().contains("differ"));
        assert!(not_converged(&[]).is_some());
        let fleet = json!({"weights": {"generation": 3}, "fleet": {"tasks": [{"generation": 3}, {"generation": 2}]}});
        assert!(not_converged(&[fleet]).is_some());
        // Through the store: its verdict counts, stale tasks are left out.
        let shared = |converged: bool| {
            json!({"weights": {"generation": 3}, "fleet": {
            "reports_shared": true, "converged": converged,
            "tasks": [{"generation": 3}, {"generation": 2, "stale": true}]}})
        };
        assert_eq!(not_converged(&[shared(true)]), None);
        assert!(
            not_converged(&[shared(false)])
                .unwrap()
                .contains("task reports")
        );
        let broken = json!({"weights": {"generation": 3}, "store": {"last_error": "throttled"}});
        assert!(not_converged(&[broken]).unwrap().contains("throttled"));
        let degraded = json!({"weights": {"generation": 3}, "store": {"degraded": true}});
        assert!(not_converged(&[degraded]).unwrap().contains("degraded"));
        let pending = json!({"weights": {"generation": 3}, "store": {"rollback_pending": true}});
        assert!(not_converged(&[pending]).unwrap().contains("rollback"));
    }
}
