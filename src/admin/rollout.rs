//! Control path: the rollout endpoints of the admin API (`/rollout`,
//! `/rollout/pause|resume|abort|promote`) and the rollout's say in the
//! manual ones: a running rollout refuses `PUT /weights` and `POST /promote`
//! (409, abort or pause first) and `POST /rollback` aborts it.

use http::{Method, StatusCode};

use super::{AdminResponse, control_error, error, json};
use crate::control::Control;
use crate::control::rollout::{Abort, Action};
use crate::control::status::WeightsView;
use crate::rollout::RolloutError;
use crate::rollout::state::RolloutState;

/// The methods allowed on a rollout path, `None` for other paths.
pub fn allow(path: &str) -> Option<&'static str> {
    match path {
        "/rollout" => Some("GET, POST"),
        "/rollout/pause" | "/rollout/resume" | "/rollout/abort" | "/rollout/promote" => {
            Some("POST")
        }
        _ => None,
    }
}

/// Answers a request on a rollout path (authorized, body read).
pub async fn handle(control: &Control, method: &Method, path: &str, body: &[u8]) -> AdminResponse {
    // The actions take no fields: refused before anything changes.
    if method == Method::POST
        && path != "/rollout"
        && let Err(r) = super::request::no_fields(body)
    {
        return super::rejected(r);
    }
    let result = match (method, path) {
        (&Method::GET | &Method::HEAD, "/rollout") => {
            control.rollout_view().ok_or(RolloutError::None)
        }
        (&Method::POST, "/rollout") => control.start_rollout(body).await,
        (&Method::POST, "/rollout/pause") => control.rollout_action(Action::Pause).await,
        (&Method::POST, "/rollout/resume") => control.rollout_action(Action::Resume).await,
        (&Method::POST, "/rollout/abort") => control.rollout_action(Action::Abort).await,
        (&Method::POST, "/rollout/promote") => control.rollout_action(Action::Promote).await,
        _ => return error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    };
    match result {
        Ok(view) => {
            let status = if method == Method::POST && path == "/rollout" {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json(status, &view)
        }
        Err(e) => rollout_error(e),
    }
}

fn rollout_error(e: RolloutError) -> AdminResponse {
    match e {
        RolloutError::Plan(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
        RolloutError::Conflict(m) => error(StatusCode::CONFLICT, m),
        RolloutError::None => error(StatusCode::NOT_FOUND, e.to_string()),
        RolloutError::Control(e) => control_error(e),
    }
}

/// The 409 for a manual weight change (`what`) refused while `r` runs (not
/// paused; see `ControlError::RolloutRunning`).
pub fn refused_while_running(r: &RolloutState, what: &str) -> AdminResponse {
    error(
        StatusCode::CONFLICT,
        format!(
            "{what} refused: a rollout of `{}` is running ({}; {}% of the traffic); POST /rollout/abort or /rollout/pause first",
            r.plan.canary,
            r.step_text(),
            r.share()
        ),
    )
}

/// `POST /rollback`: aborts a running rollout (which rolls back), or rolls back.
pub async fn rollback(control: &Control) -> AdminResponse {
    let result = match control.running_rollout() {
        Some(r) => control
            .abort_rollout(&r, Abort::Rollback, "aborted by POST /rollback")
            .await
            .map(|()| control.weights()),
        None => control.rollback("admin").await.map_err(RolloutError::from),
    };
    match result {
        Ok(view) => json(StatusCode::OK, &rollback_answer(control, view)),
        Err(e) => rollout_error(e),
    }
}

/// The answer to `POST /rollback`: the decision in force (the fields of
/// `GET /weights`), whether the store has it yet, and when it has not, a
/// warning: the rollback is in force on this task only until it is written.
fn rollback_answer(control: &Control, view: WeightsView) -> serde_json::Value {
    let pending = control.rollback_pending();
    let mut answer = serde_json::to_value(&view).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(fields) = answer.as_object_mut() {
        fields.insert("rollback_pending".into(), pending.into());
        if pending {
            let warning = if control.store_shared() {
                "rollback applied on this task at once; the store has not taken it yet: \
                 the fleet's other tasks keep their weights until it does (retrying in the \
                 background; /status store.rollback_pending)"
            } else {
                "rollback applied at once; the state file could not be written yet: a \
                 restart before it is would not know of the rollback (retrying in the \
                 background; /status store.rollback_pending)"
            };
            fields.insert("warning".into(), warning.into());
        }
    }
    answer
}
