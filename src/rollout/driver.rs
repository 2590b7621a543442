//! Rollout: the task that steps a running rollout on its plan's clock.
//!
//! Every replica runs one (no leader). At each step's due time it judges the
//! traffic it saw since the step began: canary against stable over the same
//! window. A bad canary is rolled back at once (any replica that finds it bad
//! writes the abort); too little evidence, a canary without healthy
//! endpoints or a gate that says no hold the step (re-judged an interval
//! later, the window growing); otherwise the next step is taken, or at the
//! last step the rollout succeeds. A replica whose step was taken by another
//! meanwhile just follows the store.
//!
//! A paused rollout is judged too, on the same schedule and thresholds: a
//! pause stops the step's clock, not the safety net. Its window begins at
//! the pause (a new stored state, as a step's window begins at the step);
//! a bad canary is rolled back exactly as while progressing; too little
//! evidence lets the window grow; a window that passes does nothing but
//! begin the next one (a pause never takes a step).
//!
//! A rollout started before its first step (its canary had no healthy
//! endpoint, or a gate must approve step 0) gives the canary no traffic:
//! every replica looks again until it finds the canary ready (a healthy
//! endpoint, then the gate's 2xx), and the first that does takes step 0.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::analysis::{self, Analysis, Verdict};
use super::state::{Phase, RolloutState};
use super::telemetry::Counts;
use super::{AnalysisRecord, Published, RolloutError, event, notify};
use crate::control::Control;
use crate::control::rollout::{Abort, By};
use crate::metrics as names;

/// How soon a failed decision (the store could not be written) is retried.
const RETRY: Duration = Duration::from_secs(1);

/// How often a rollout before its first step looks again for a healthy
/// endpoint of its canary (ejections end and discovery changes without a
/// notice to the driver).
const ENDPOINT_POLL: Duration = Duration::from_millis(250);

/// The traffic this replica has seen of one step.
struct Window {
    /// The step it is about (see [`RolloutState::same_step`]).
    of: RolloutState,
    start_ms: u64,
    /// Where the window's interval begins: the step's start, or while
    /// paused the pause (both on the plan's clock, the same on every
    /// replica), then each of this replica's paused judgements that passed.
    anchor_ms: u64,
    canary: Counts,
    stable: Counts,
    /// Judgements made in this window (holds).
    judged: u32,
    last_judged_ms: u64,
}

impl Window {
    fn begin(r: &RolloutState, now_ms: u64, control: &Control) -> Window {
        let anchor_ms = match r.phase {
            Phase::Paused => r.paused_at_ms.unwrap_or(now_ms),
            _ => r.step_at_ms,
        };
        Window::begin_at(r, anchor_ms, now_ms, control)
    }

    /// A window of `r` whose interval begins at `anchor_ms`, its evidence
    /// at `now_ms`.
    fn begin_at(r: &RolloutState, anchor_ms: u64, now_ms: u64, control: &Control) -> Window {
        let windows = control.rollout_windows();
        Window {
            of: r.clone(),
            start_ms: now_ms,
            anchor_ms,
            canary: windows.read(&r.plan.canary),
            stable: windows.read(&r.plan.stable),
            judged: 0,
            last_judged_ms: now_ms,
        }
    }

    /// When the step is judged next: an interval after the step began (or
    /// while paused, after the pause or the last judgement that passed; on
    /// the plan's clock, as on every replica), but after at least 3/4 of an
    /// interval of this replica's own evidence; after a hold, an interval
    /// after the last judgement.
    fn due_ms(&self, r: &RolloutState) -> u64 {
        let interval = r.plan.settings.interval_ms();
        if self.judged == 0 {
            (self.anchor_ms.saturating_add(interval))
                .max(self.start_ms.saturating_add(interval * 3 / 4))
        } else {
            self.last_judged_ms.saturating_add(interval)
        }
    }

    /// Judges again [`RETRY`] after `now` (a decision failed).
    fn retry_soon(&mut self, r: &RolloutState, now_ms: u64) {
        let interval = r.plan.settings.interval_ms();
        self.last_judged_ms = (now_ms + RETRY.as_millis() as u64).saturating_sub(interval);
    }
}

/// Steps the rollouts of `control` until the weights channel closes.
pub async fn run(control: Arc<Control>) {
    let mut changes = control.subscribe();
    let clock = control.rollout_clock();
    let mut window: Option<Window> = None;
    // Rollouts this replica aborted: if a racing write undid the abort in the
    // store, it is written again (an aborted rollout stays aborted).
    let mut aborted: BTreeMap<u64, String> = BTreeMap::new();
    // The rollout (before its first step) whose hold for want of a healthy
    // endpoint was counted and sent: once, not at every look.
    let mut held_for_endpoints: Option<u64> = None;
    // The step the gate approved last (see [`GateKey`]): while that step
    // cannot be written (the store down, a rollback pending) the retries
    // take it without asking the gate again.
    let mut approved: Option<GateKey> = None;
    let mut published = Published::default();
    loop {
        changes.borrow_and_update();
        let current = control.rollout();
        if !current.as_ref().is_some_and(before_first_step) {
            held_for_endpoints = None;
        }
        publish(&control, &mut published);
        let r = match current {
            Some(r) if r.phase.running() && aborted.contains_key(&r.started_at_ms) => {
                let reason = aborted.get(&r.started_at_ms).cloned().unwrap_or_default();
                tracing::warn!(canary = %r.plan.canary, "the store lost this replica's abort; writing it again");
                if control
                    .rollback_for(crate::control::rollout::SOURCE, &reason)
                    .await
                    .is_err()
                {
                    tokio::time::sleep(RETRY).await;
                }
                continue;
            }
            // The store kept the same rollout's automated success over this
            // replica's abort (two decisions of one generation, both confirmed
            // on Cloud Map): the abort wins, one generation up.
            Some(r) if r.phase == Phase::Succeeded && aborted.contains_key(&r.started_at_ms) => {
                let reason = aborted.remove(&r.started_at_ms).unwrap_or_default();
                match control
                    .abort_over_lost_success(r.started_at_ms, &reason)
                    .await
                {
                    Ok(true) => {
                        tracing::warn!(canary = %r.plan.canary, "the store lost this replica's abort to the rollout's success; the abort is written again");
                        aborted.insert(r.started_at_ms, reason);
                    }
                    // An operator's promotion (or a success this replica
                    // already follows): it stands.
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "the rollout abort could not be written again; retrying");
                        aborted.insert(r.started_at_ms, reason);
                        tokio::time::sleep(RETRY).await;
                    }
                }
                continue;
            }
            Some(r) if r.phase.running() && missing_version(&control, &r).is_some() => {
                let v = missing_version(&control, &r).unwrap_or_default();
                // Removed by a reload, or missing at a start with a store no
                // other task shares (the config was edited while stopped):
                // no task can ever judge the rollout, it ends.
                if control.rollout_removed_by_reload(&r) || !control.store_shared() {
                    let why = format!("version `{v}` is no longer in the config");
                    aborted.insert(r.started_at_ms, why.clone());
                    if let Err(e) = control.abort_rollout(&r, Abort::Config, &why).await {
                        tracing::error!(error = %e, "the rollout abort could not be recorded; retrying");
                        tokio::time::sleep(RETRY).await;
                    }
                    continue;
                }
                // A shared store, and this task's config never had the
                // version (an older task definition, while a deployment
                // adds it): it neither serves nor judges the rollout, and
                // holds; the tasks that have the version judge it.
                window = None;
                let why = format!(
                    "this task's config has no version `{v}`: it does not judge this rollout (the tasks that have `{v}` do)"
                );
                tracing::info!(canary = %r.plan.canary, %why, "rollout holds on this task");
                control.rollout_note(|view| {
                    if view.rollout != r.started_at_ms {
                        *view = Default::default();
                        view.rollout = r.started_at_ms;
                    }
                    view.overlay = Some(Phase::Holding);
                    view.why = Some(why);
                    view.next_due_ms = None;
                });
                publish(&control, &mut published);
                if changes.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Some(r) if before_first_step(&r) => {
                window = None;
                let wait = first_step(&control, &r, &mut held_for_endpoints, &mut approved).await;
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
                continue;
            }
            // Paused: the step's clock stops, the abort checks go on.
            Some(r) if matches!(r.phase, Phase::Progressing | Phase::Paused) => r,
            _ => {
                window = None;
                control.rollout_note(|v| {
                    v.overlay = None;
                    v.next_due_ms = None;
                });
                if changes.changed().await.is_err() {
                    return;
                }
                continue;
            }
        };
        let now = clock.now_ms();
        let w = match window.take() {
            Some(w) if w.of.same_step(&r) => w,
            _ => {
                control.rollout_note(|v| {
                    if v.rollout != r.started_at_ms {
                        *v = Default::default();
                        v.rollout = r.started_at_ms;
                    }
                    v.overlay = None;
                    v.why = (r.phase == Phase::Paused).then(|| paused_why(None));
                });
                Window::begin(&r, now, &control)
            }
        };
        let due = w.due_ms(&r);
        control.rollout_note(|v| v.next_due_ms = Some(due));
        let w = window.insert(w);
        tokio::select! {
            () = tokio::time::sleep_until(clock.instant_at(due)) => {}
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        }
        let now = clock.now_ms();
        let windows = control.rollout_windows();
        let canary = windows.read(&r.plan.canary).since(&w.canary);
        let stable = windows.read(&r.plan.stable).since(&w.stable);
        let judged = analysis::judge(&r.plan.settings, &canary, &stable);
        w.judged += 1;
        w.last_judged_ms = now;
        let record = AnalysisRecord {
            at_ms: now,
            since_ms: w.start_ms,
            analysis: judged.clone(),
        };
        control.rollout_note(|v| v.last_analysis = Some(record));
        if r.phase == Phase::Paused && judged.verdict != Verdict::Abort {
            // Paused, a window that holds grows on; one that passes takes
            // no step, and the next window begins.
            if judged.verdict == Verdict::Pass {
                *w = Window::begin_at(&r, now, now, &control);
            }
            control.rollout_note(|v| v.why = Some(paused_why(Some(&judged.why))));
            continue;
        }
        match judged.verdict {
            Verdict::Abort => {
                tracing::warn!(canary = %r.plan.canary, why = %judged.why, "the canary is worse than allowed");
                aborted.insert(r.started_at_ms, judged.why.clone());
                if let Err(e) = control
                    .abort_rollout(&r, Abort::Analysis(judged.reason), &judged.why)
                    .await
                {
                    tracing::error!(error = %e, "the rollout abort could not be recorded; retrying");
                    tokio::time::sleep(RETRY).await;
                }
                continue;
            }
            Verdict::Hold => hold(
                &control,
                &r,
                Phase::Holding,
                judged.reason,
                judged.why.clone(),
            ),
            Verdict::Pass if !control.has_healthy_endpoints(&r.plan.canary) => hold(
                &control,
                &r,
                Phase::Holding,
                "no_healthy_endpoints",
                no_healthy_endpoints(&r),
            ),
            Verdict::Pass if r.last_step() => {
                match control.finish_rollout(&r, By::Analysis).await {
                    // Moved on meanwhile (paused, aborted, ended by another
                    // task): follow the store.
                    Ok(()) | Err(RolloutError::Conflict(_)) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "the rollout's success could not be recorded; retrying");
                        w.retry_soon(&r, now);
                    }
                }
            }
            Verdict::Pass => {
                let asked = match &r.plan.settings.gate {
                    None => Ok(()),
                    Some(_) if approved == Some(GateKey::of(&r)) => Ok(()),
                    Some(gate) => ask_gate(gate, &r, Some(&judged)).await,
                };
                if asked.is_ok() {
                    approved = Some(GateKey::of(&r));
                }
                match asked {
                    Ok(()) => match control.advance_rollout(&r).await {
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "the rollout step could not be recorded; retrying");
                            w.retry_soon(&r, now);
                        }
                    },
                    Err(why) => hold(&control, &r, Phase::WaitingGate, "gate", why),
                }
            }
        }
    }
}

/// Which step a gate approved: the rollout (its start), the step in force
/// (when it began: a resume restarts it) and the steps taken. An approval
/// holds for that step only, and only on this replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GateKey(u64, u64, usize);

impl GateKey {
    fn of(r: &RolloutState) -> GateKey {
        GateKey(r.started_at_ms, r.step_at_ms, r.history.len())
    }
}

/// What `GET /rollout` says of a paused rollout on this task: the step
/// waits for a resume, the abort checks still run (`last`: what the last
/// one found).
pub(crate) fn paused_why(last: Option<&str>) -> String {
    let why = "paused: no step is taken until resumed, but the abort checks still run every \
               interval on this task's traffic since the pause";
    match last {
        Some(last) => format!("{why}; last: {last}"),
        None => why.to_string(),
    }
}

/// Whether `r` is progressing but has not taken its first step yet.
fn before_first_step(r: &RolloutState) -> bool {
    r.phase == Phase::Progressing && !r.first_step_taken()
}

/// Why the step holds on a canary without a healthy endpoint.
fn no_healthy_endpoints(r: &RolloutState) -> String {
    let why = format!("the canary `{}` has no healthy endpoints", r.plan.canary);
    if r.first_step_taken() {
        why
    } else {
        format!("{why}: it is given no traffic, and step 0 is taken once it has one")
    }
}

/// What a rollout of `plan` waits for before its first step, as `GET
/// /rollout` shows it (phase, why): a healthy endpoint of the canary
/// (`holding`), then the gate's approval (`waiting_gate`); `None`: ready.
pub fn first_step_wait(control: &Control, r: &RolloutState) -> Option<(Phase, String)> {
    if !control.has_healthy_endpoints(&r.plan.canary) {
        return Some((Phase::Holding, no_healthy_endpoints(r)));
    }
    r.plan.settings.gate.as_ref().map(|_| {
        let share = r.plan.settings.steps.first().copied().unwrap_or(100.0);
        (
            Phase::WaitingGate,
            format!("waiting for the gate to approve step 0 ({share}%)"),
        )
    })
}

/// One look at a rollout before its first step: holds while the canary has
/// no healthy endpoint (counted and sent once), then asks the gate, if any
/// (a refusal holds, asked again an interval later), then takes step 0.
/// How long to wait before the next look (a change of the decision in
/// force ends the wait sooner).
async fn first_step(
    control: &Control,
    r: &RolloutState,
    held: &mut Option<u64>,
    approved: &mut Option<GateKey>,
) -> Duration {
    let interval = r.plan.settings.interval();
    match first_step_wait(control, r) {
        Some((Phase::Holding, why)) => {
            control.note_first_step_wait(r, Phase::Holding, why.clone(), false);
            if *held != Some(r.started_at_ms) {
                *held = Some(r.started_at_ms);
                hold(control, r, Phase::Holding, "no_healthy_endpoints", why);
            }
            return ENDPOINT_POLL;
        }
        // Keeps what the gate answered last, if it did.
        Some((phase, why)) => control.note_first_step_wait(r, phase, why, true),
        None => {}
    }
    *held = None;
    if let Some(gate) = &r.plan.settings.gate
        && *approved != Some(GateKey::of(r))
    {
        if let Err(why) = ask_gate(gate, r, None).await {
            hold(control, r, Phase::WaitingGate, "gate", why);
            let due = control.rollout_clock().now_ms() + interval.as_millis() as u64;
            control.rollout_note(|v| v.next_due_ms = Some(due));
            return interval;
        }
        *approved = Some(GateKey::of(r));
    }
    match control.advance_rollout(r).await {
        Ok(true) => Duration::ZERO,
        // Moved on meanwhile: the store's decision is in force here.
        Ok(false) => RETRY,
        Err(e) => {
            tracing::warn!(error = %e, "the rollout's first step could not be recorded; retrying");
            RETRY
        }
    }
}

/// Asks `r`'s gate whether the next step may be taken (see
/// [`notify::ask_gate`]), showing it the plan, the step in force (`null`
/// before the first step), the next one, and the analysis that passed
/// (`null` before the first step: nothing was judged yet).
async fn ask_gate(gate: &str, r: &RolloutState, analysis: Option<&Analysis>) -> Result<(), String> {
    let timeout = notify::CALL_TIMEOUT.min(r.plan.settings.interval() / 2);
    notify::ask_gate(gate, &gate_body(r, analysis), timeout).await
}

/// The body of a gate call (documented in docs/rollout.md).
fn gate_body(r: &RolloutState, analysis: Option<&Analysis>) -> serde_json::Value {
    let (step, next) = if r.first_step_taken() {
        (Some(r.step), r.step + 1)
    } else {
        (None, 0)
    };
    serde_json::json!({
        "plan": r.plan,
        "step": step,
        "share": r.share(),
        "next_step": next,
        "next_share": r.plan.settings.steps.get(next),
        "analysis": analysis,
    })
}

/// Sets the rollout gauges to the rollout's view on this task (see
/// [`super::RolloutView::publish`]), for the versions in its config.
fn publish(control: &Control, published: &mut Published) {
    if let Some(view) = control.rollout_view() {
        let config = control.config();
        view.publish(|v| config.versions.iter().any(|c| c.name == v), published);
    }
}

/// `r`'s canary or stable version, if the config in force lacks it (a
/// reload removed it, or this task's config never had it).
fn missing_version(control: &Control, r: &RolloutState) -> Option<String> {
    let config = control.config();
    [&r.plan.canary, &r.plan.stable]
        .into_iter()
        .find(|v| !config.versions.iter().any(|c| &c.name == *v))
        .cloned()
}

/// The step holds: this replica's view says why; counted and sent.
fn hold(control: &Control, r: &RolloutState, phase: Phase, reason: &'static str, why: String) {
    tracing::info!(canary = %r.plan.canary, step = r.step, %why, "rollout step holds");
    metrics::counter!(names::ROLLOUT_HOLDS_TOTAL, "reason" => reason).increment(1);
    notify::send_event(
        r.plan.settings.webhook.as_deref(),
        hold_event(r, phase, &why),
    );
    control.rollout_note(|v| {
        v.overlay = Some(phase);
        v.why = Some(why);
    });
}

/// The webhook event of a step that holds in `phase` (`holding`, or
/// `waiting_gate`: event `gate_refused`), with that phase (the stored one
/// is `progressing`: the hold is this task's view, as `GET /rollout` shows).
fn hold_event(r: &RolloutState, phase: Phase, why: &str) -> serde_json::Value {
    let kind = if phase == Phase::WaitingGate {
        "gate_refused"
    } else {
        "holding"
    };
    event(
        kind,
        r,
        serde_json::json!({ "phase": phase, "reason": why }),
    )
}

#[cfg(test)]
mod tests;
