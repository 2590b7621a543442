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
                // The task that answers is in its own list: counted once.
                .filter(|t| t.get("this_task") != Some(&Value::Bool(true)))
                .filter_map(|t| t.get("generation").and_then(Value::as_u64)),
        );
    }
    out
}

/// When one `--admin` URL was given and its `/status` says the other tasks'
/// generations are unknown (`fleet.note`, the store shares no reports):
/// why convergence cannot be seen from it. Comparing that one task with
/// itself would say "converged" while other tasks may run old weights.
fn unseen_fleet(statuses: &[Value]) -> Option<String> {
    let [only] = statuses else {
        return None;
    };
    if only.pointer("/fleet/reports_shared") == Some(&Value::Bool(true)) {
        return None;
    }
    let note = only.pointer("/fleet/note").and_then(Value::as_str)?;
    Some(format!(
        "one --admin URL cannot show whether the fleet converged ({note}); \
         name every task's admin URL: --admin http://TASK1:9901,http://TASK2:9901,..."
    ))
}

/// Whether waiting cannot help: the store keeps no task reports at all
/// (Cloud Map), so [`unseen_fleet`] holds for good.
fn never_shared(statuses: &[Value]) -> bool {
    statuses
        .iter()
        .any(|s| s.pointer("/store/kind").and_then(Value::as_str) == Some("cloudmap"))
}

/// Why the fleet has not converged yet, or `None` when it has: every task
/// reports the same generation (through the store when it shares the tasks'
/// reports: `fleet.converged`; else across the `--admin` URLs given, and
/// never from one URL whose store shares no reports: see [`unseen_fleet`]),
/// reads the store without error, has read it at all (not `degraded`) and
/// has no rollback waiting to be written.
fn not_converged(statuses: &[Value]) -> Option<String> {
    if let Some(why) = unseen_fleet(statuses) {
        return Some(why);
    }
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
        // Per --admin URL (in the order given): its task's generation, then
        // those of the other tasks it sees reports of.
        let per_url: Vec<String> = statuses
            .iter()
            .map(|s| format!("{:?}", generations(s)))
            .collect();
        return Some(format!("generations differ: {}", per_url.join(" / ")));
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

/// Why `status` may not show a decision written just before the wait
/// began, or `None` when it does: on a shared store a task knows of another
/// task's decision only from its next poll, and until then reports the
/// fleet converged on the generation before (one `--admin` URL that is not
/// the writer's, or several that all are not). So its last poll must have
/// begun at or after `since`, its own clock when the wait began (its first
/// `/status`'s `now_ms`). The file store has no other task; a gateway too
/// old to say when it polled is taken as it answers.
fn unpolled_since(status: &Value, since: u64, url: &str) -> Option<String> {
    if status.pointer("/store/kind").and_then(Value::as_str) == Some("file") {
        return None;
    }
    status.get("now_ms")?;
    let polled = status
        .pointer("/store/read_began_ms")
        .and_then(Value::as_u64);
    if polled.is_some_and(|p| p >= since) {
        return None;
    }
    Some(format!(
        "{url} has not polled the store since the wait began (a decision written just before may not have reached it)"
    ))
}

/// Polls every task's `/status` until it has converged (see `not_converged`), or fails
/// after `timeout`. A task that cannot be reached is asked again (it may be
/// restarting); a refusal (bad token) ends the wait, as does one `--admin`
/// URL on a store that keeps no task reports (Cloud Map: exit 1, waiting
/// cannot show the other tasks).
pub async fn converged(clients: &[AdminClient], timeout: Duration) -> Result<Vec<Value>, CliError> {
    let deadline = tokio::time::Instant::now() + timeout;
    // Each task's clock at its first answer (see `unpolled_since`).
    let mut since: Vec<Option<u64>> = vec![None; clients.len()];
    let mut why;
    loop {
        let mut statuses = Vec::with_capacity(clients.len());
        why = None;
        for (client, since) in clients.iter().zip(&mut since) {
            match client.json(Method::GET, "/status", None).await {
                Ok(s) => {
                    if since.is_none() {
                        *since = s.get("now_ms").and_then(Value::as_u64);
                    }
                    statuses.push(s)
                }
                Err(e @ CliError::Unreachable { .. }) | Err(e @ CliError::Gateway { .. }) => {
                    why = Some(e.to_string());
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if why.is_none() {
            if let Some(why) = unseen_fleet(&statuses).filter(|_| never_shared(&statuses)) {
                return Err(CliError::Failed(format!("cannot tell: {why}")));
            }
            why = not_converged(&statuses).or_else(|| {
                statuses
                    .iter()
                    .zip(clients)
                    .zip(&since)
                    .find_map(|((s, c), since)| {
                        since.and_then(|since| unpolled_since(s, since, &c.url))
                    })
            });
            if why.is_none() {
                return Ok(statuses);
            }
        }
        if tokio::time::Instant::now() + POLL > deadline {
            let mut what = why.unwrap_or_default();
            if clients.len() > 1 {
                // Which URL said what: per-URL figures come in this order.
                let urls: Vec<&str> = clients.iter().map(|c| c.url.as_str()).collect();
                what.push_str(&format!(
                    " (the --admin URLs in order: {})",
                    urls.join(", ")
                ));
            }
            return Err(CliError::TimedOut {
                after: timeout,
                what,
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

/// The longest pause between two polls of `rollout --wait` that failed in
/// a row (the first pause is [`POLL`], doubled at each failure).
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Without `--timeout`, how long the polls of `rollout --wait` may fail in
/// a row before the wait ends with the last failure.
const FAILING_FOR: Duration = Duration::from_secs(300);

/// Whether a failed poll of the rollout `pinned` is asked again: the admin
/// API unreachable (a task being replaced) or failing (5xx), or a 404 from
/// a task that has not seen the rollout yet (behind a load balancer).
fn transient(e: &CliError, pinned: Option<u64>) -> bool {
    match e {
        CliError::Unreachable { .. } | CliError::Gateway { .. } => true,
        CliError::Refused { status: 404, .. } => pinned.is_some(),
        _ => false,
    }
}

/// Follows `GET /rollout` until the rollout that started at `started_at_ms`
/// (the one `POST /rollout` answered with; `None`: the one the first answer
/// shows) ends: `succeeded` is success, `aborted` an error (exit 7); prints
/// each step as it comes. Each poll asks one of `clients`, the next one
/// after a failure. An answer about an earlier rollout (a task that has not
/// caught up, behind a load balancer) is not this rollout's end: it is asked
/// again, as is a poll that failed (see `transient`), backing off up to
/// `MAX_BACKOFF`, until `timeout` (exit 8), or without one until the
/// polls have failed for `FAILING_FOR` in a row. A later rollout in its
/// place ends the wait (exit 1): this one's end was not seen.
pub async fn rollout(
    clients: &[AdminClient],
    started_at_ms: Option<u64>,
    timeout: Option<Duration>,
    json: bool,
) -> Result<(), CliError> {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut pinned = started_at_ms;
    let mut last = None;
    let mut next = 0;
    let mut failing_since = None;
    let mut backoff = POLL;
    loop {
        let Some(client) = clients.get(next % clients.len().max(1)) else {
            return Err(CliError::Usage("--admin: give a URL".into()));
        };
        let (pause, waiting) = match client.json(Method::GET, "/rollout", None).await {
            Ok(state) => {
                failing_since = None;
                backoff = POLL;
                let started = field(&state, &["started_at_ms"]).and_then(Value::as_u64);
                pinned = pinned.or(started);
                match (pinned, started) {
                    (Some(ours), Some(shown)) if shown < ours => {
                        next += 1;
                        let waiting = format!(
                            "{} still shows an earlier rollout (started_at_ms {shown}, this one {ours})",
                            client.url
                        );
                        (POLL, waiting)
                    }
                    (Some(ours), Some(shown)) if shown > ours => {
                        return Err(CliError::Failed(format!(
                            "a later rollout (started_at_ms {shown}) replaced the one followed \
                             (started_at_ms {ours}) before its end was seen"
                        )));
                    }
                    _ => {
                        let now = progress(&state);
                        if last.as_ref() != Some(&now) {
                            if json {
                                crate::cli::print_line(
                                    serde_json::to_string(&state).unwrap_or_default(),
                                );
                            } else {
                                crate::cli::print_line(render::rollout(&state));
                            }
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
                        let waiting = format!("the rollout is still {}", now.0);
                        last = Some(now);
                        (POLL, waiting)
                    }
                }
            }
            Err(e) if transient(&e, pinned) => {
                let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                if deadline.is_none() && since.elapsed() >= FAILING_FOR {
                    return Err(e);
                }
                eprintln!("{e}; asking again");
                next += 1;
                let pause = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                (pause, e.to_string())
            }
            Err(e) => return Err(e),
        };
        if let (Some(deadline), Some(t)) = (deadline, timeout)
            && tokio::time::Instant::now() + pause > deadline
        {
            return Err(CliError::TimedOut {
                after: t,
                what: waiting,
            });
        }
        tokio::time::sleep(pause).await;
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
        let why = not_converged(&[at(3), at(4)]).unwrap();
        assert!(why.contains("generations differ: [3] / [4]"), "{why}");
        // A task is in its own fleet list: counted once.
        let own = json!({"weights": {"generation": 3}, "fleet": {"tasks": [
            {"generation": 3, "this_task": true}, {"generation": 2}]}});
        assert_eq!(generations(&own), [3, 2]);
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
        // One URL on a store that shares no reports: the others are unknown.
        let alone = json!({"weights": {"generation": 3}, "fleet": {
            "reports_shared": false, "converged": false, "note": "generations are unknown",
            "tasks": [{"generation": 3}]}});
        let why = not_converged(std::slice::from_ref(&alone)).unwrap();
        assert!(
            why.contains("name every task") && why.contains("unknown"),
            "{why}"
        );
        // Several URLs: compared across them.
        assert_eq!(not_converged(&[alone.clone(), alone]), None);
        // The file store: one task, no note.
        let file = json!({"weights": {"generation": 3}, "fleet": {"reports_shared": false, "converged": true}});
        assert_eq!(not_converged(&[file]), None);
        let broken = json!({"weights": {"generation": 3}, "store": {"last_error": "throttled"}});
        assert!(not_converged(&[broken]).unwrap().contains("throttled"));
        let degraded = json!({"weights": {"generation": 3}, "store": {"degraded": true}});
        assert!(not_converged(&[degraded]).unwrap().contains("degraded"));
        let pending = json!({"weights": {"generation": 3}, "store": {"rollback_pending": true}});
        assert!(not_converged(&[pending]).unwrap().contains("rollback"));
    }

    /// On a shared store a task's view counts once it polled at or after the
    /// wait began; the file store's, and an older gateway's, at once.
    #[test]
    fn a_shared_stores_view_counts_from_a_poll_after_the_wait_began() {
        let polled = |kind: &str, at: Option<u64>| json!({"now_ms": 2_000, "store": {"kind": kind, "read_began_ms": at}});
        let why = unpolled_since(&polled("dynamodb", Some(1_999)), 2_000, "http://b:9901").unwrap();
        assert!(
            why.contains("http://b:9901") && why.contains("since the wait began"),
            "{why}"
        );
        assert!(unpolled_since(&polled("dynamodb", None), 2_000, "u").is_some());
        assert!(unpolled_since(&polled("cloudmap", Some(1_000)), 2_000, "u").is_some());
        assert_eq!(
            unpolled_since(&polled("dynamodb", Some(2_000)), 2_000, "u"),
            None
        );
        assert_eq!(unpolled_since(&polled("file", None), 2_000, "u"), None);
        let older = json!({"store": {"kind": "dynamodb"}});
        assert_eq!(unpolled_since(&older, 2_000, "u"), None);
    }
}
