//! Readable output of admin API answers for people (scripts use `--json`).
//! Unknown or missing fields are skipped, never an error.

use serde_json::Value;

/// The first of `keys` present in `v`.
pub fn field<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|k| v.get(*k).filter(|x| !x.is_null()))
}

fn text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// `GET /weights` and every weight change's answer.
pub fn weights(v: &Value) -> String {
    let mut out = format!(
        "generation {} (source {}), stable {}",
        text(v.get("generation")),
        text(v.get("source")),
        text(v.get("stable"))
    );
    if let Some(Value::Object(w)) = v.get("weights") {
        let total: u64 = w.values().filter_map(Value::as_u64).sum();
        for (name, weight) in w {
            let share = match (weight.as_u64(), total) {
                (Some(x), t) if t > 0 => format!("{:.2}%", x as f64 * 100.0 / t as f64),
                _ => "-".into(),
            };
            out.push_str(&format!(
                "\n  {name:<12} {:>8}  {share:>8}",
                text(Some(weight))
            ));
        }
    }
    // A rollback the store has not taken yet (`POST /rollback`), or a
    // version given weight that has no endpoints (`PUT /weights`,
    // `POST /promote`).
    if let Some(Value::String(warning)) = v.get("warning") {
        out.push_str(&format!("\nwarning: {warning}"));
    }
    out
}

/// `GET /status`.
pub fn status(v: &Value) -> String {
    let mut out = match v.get("weights") {
        Some(w) => weights(w),
        None => String::new(),
    };
    let ready = v.get("ready").and_then(Value::as_bool).unwrap_or(false);
    out.push_str(&format!(
        "\nready: {}",
        if ready {
            "yes".to_string()
        } else {
            format!("no ({})", text(v.get("not_ready_reason")))
        }
    ));
    if let Some(Value::Array(versions)) = v.get("versions") {
        for version in versions {
            let endpoints = version
                .get("endpoints")
                .and_then(Value::as_array)
                .map(|e| e.len())
                .unwrap_or(0);
            out.push_str(&format!(
                "\n  {:<12} {} endpoint(s), discovery {}",
                text(version.get("name")),
                endpoints,
                text(version.pointer("/discovery/source"))
            ));
        }
    }
    if let Some(store) = v.get("store") {
        out.push_str(&format!(
            "\nstore: {} (last error: {})",
            text(store.get("kind")),
            text(store.get("last_error"))
        ));
    }
    // A rejected reload: the config on disk is not the one running.
    if let Some(reload) = v.get("last_reload")
        && reload.get("ok") == Some(&Value::Bool(false))
    {
        out.push_str(&format!(
            "\nlast reload ({}) failed: {}",
            text(reload.get("trigger")),
            text(reload.get("message"))
        ));
    }
    if let Some(Value::Array(warnings)) = v.get("warnings") {
        for w in warnings {
            out.push_str(&format!("\nwarning: {}", text(Some(w))));
        }
    }
    if let Some(tls) = v.get("tls") {
        out.push_str(&format!(
            "\ntls: {} (last error: {})",
            text(tls.get("cert")),
            text(tls.get("last_error"))
        ));
    }
    out
}

/// `GET /rollout` and the answers of its verbs.
pub fn rollout(v: &Value) -> String {
    let mut out = format!(
        "rollout of {}: phase {}, step {}, canary share {}%",
        text(field(v, &["canary"]).or_else(|| v.pointer("/plan/canary"))),
        text(field(v, &["phase"])),
        text(field(v, &["step", "current_step"])),
        text(field(v, &["share", "canary_share", "current_share"]))
    );
    if let Some(next) = next_step(v) {
        out.push_str(&format!(", next step {next}"));
    }
    if let Some(reason) = field(v, &["abort_reason", "reason", "why"]) {
        out.push_str(&format!("\n  reason: {}", text(Some(reason))));
    }
    out
}

/// When the next step is due, in words: from `next_step_in_s`, else from
/// `next_step_due_ms` (epoch milliseconds) and this machine's clock.
fn next_step(v: &Value) -> Option<String> {
    let seconds = match field(v, &["next_step_in_s"]).and_then(Value::as_f64) {
        Some(s) => s,
        None => {
            let due = field(v, &["next_step_due_ms", "next_step_at_ms"])?;
            let Some(due) = due.as_u64() else {
                return Some(format!("at {}", text(Some(due))));
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            due.saturating_sub(now) as f64 / 1000.0
        }
    };
    Some(in_words(seconds))
}

/// `in 12 s`, `in 3 min 5 s`, `in 2 h 10 min`; `due now` at 0 or less.
fn in_words(seconds: f64) -> String {
    // `as` saturates, and reads NaN as 0.
    let s = seconds.ceil() as u64;
    if s == 0 {
        return "due now".into();
    }
    match s {
        0..60 => format!("in {s} s"),
        60..3600 => format!("in {} min {} s", s / 60, s % 60),
        _ => format!("in {} h {} min", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The next step's due time reads as a wait, never as epoch milliseconds.
    #[test]
    fn the_next_step_is_shown_as_a_wait() {
        let view = serde_json::json!({
            "canary": "v2", "phase": "progressing", "step": 0, "share": 10.0,
            "next_step_due_ms": 1_796_363_901_625_u64, "next_step_in_s": 11.2,
        });
        let out = rollout(&view);
        assert!(
            out.ends_with("canary share 10.0%, next step in 12 s"),
            "{out}"
        );
        assert!(!out.contains("1796363901625"), "{out}");
        // Without next_step_in_s: from the due time and the clock.
        let due = serde_json::json!({"canary": "v2", "next_step_due_ms": 1_u64});
        assert!(
            rollout(&due).ends_with("next step due now"),
            "{}",
            rollout(&due)
        );
        assert_eq!(in_words(125.0), "in 2 min 5 s");
        assert_eq!(in_words(7_260.0), "in 2 h 1 min");
    }

    #[test]
    fn a_rollback_not_in_the_store_yet_is_shown_with_the_weights() {
        let pending = serde_json::json!({
            "stable": "v1", "weights": {"v1": 100, "v2": 0}, "generation": 4,
            "source": "admin", "rollback_pending": true,
            "warning": "rollback applied on this task at once; the store has not taken it yet",
        });
        let out = weights(&pending);
        assert!(
            out.starts_with("generation 4 (source admin), stable v1"),
            "{out}"
        );
        assert!(
            out.ends_with(
                "\nwarning: rollback applied on this task at once; the store has not taken it yet"
            ),
            "{out}"
        );
        let written =
            serde_json::json!({"stable": "v1", "weights": {"v1": 100}, "rollback_pending": false});
        assert!(!weights(&written).contains("warning"));
    }

    #[test]
    fn a_failed_reload_is_shown_in_the_status() {
        let failed = serde_json::json!({
            "ready": true,
            "last_reload": {"ok": false, "trigger": "sighup", "at_ms": 1, "message": "bad weight",
                            "restart_required": []},
        });
        assert!(
            status(&failed).contains("\nlast reload (sighup) failed: bad weight"),
            "{}",
            status(&failed)
        );
        let applied = serde_json::json!({
            "ready": true,
            "last_reload": {"ok": true, "trigger": "sighup", "at_ms": 1, "message": "applied",
                            "restart_required": []},
        });
        assert!(!status(&applied).contains("last reload"));
    }
}
