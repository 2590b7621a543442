//! Control path: the rollout's glue with the one writer. Every rollout
//! change (start, step, pause, resume, abort, success) is a weight decision
//! like any other: validated, written to the store with the rollout state in
//! the document, then applied, ordered and audited.

use std::sync::Arc;

use super::decisions::{Decision, all_weight_to};
use super::{Control, ControlError};
use crate::metrics as names;
use crate::rollout::plan::{OnSuccess, Plan, PlanError};
use crate::rollout::state::{Phase, RolloutState};
use crate::rollout::telemetry::Windows;
use crate::rollout::{
    AnalysisRecord, Clock, LocalView, RolloutError, RolloutView, driver, event, notify,
};
use crate::store::WeightsDoc;

/// The source of the decisions a rollout makes on its own: its steps, its
/// analysis's abort or success, its abort when a reload removed its versions.
pub const SOURCE: &str = "rollout";

/// The source of an operator's rollout decisions (start, pause, resume,
/// abort, promote, and `POST /rollback`): the admin API's.
pub const OPERATOR_SOURCE: &str = "admin";

/// Who ends a rollout as succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// The driver, on its analysis of the step it judged.
    Analysis,
    /// An operator, through the admin API (`POST /rollout/promote`).
    Operator,
}

impl By {
    pub fn as_str(self) -> &'static str {
        match self {
            By::Analysis => "analysis",
            By::Operator => "operator",
        }
    }

    /// The decision's `source`.
    fn source(self) -> &'static str {
        match self {
            By::Analysis => SOURCE,
            By::Operator => OPERATOR_SOURCE,
        }
    }
}

/// Why a rollout is aborted, and who decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    /// The analysis found the canary worse than allowed (its reason).
    Analysis(&'static str),
    /// A reload removed the canary or the stable version.
    Config,
    /// `POST /rollout/abort`.
    Operator,
    /// `POST /rollback`.
    Rollback,
}

impl Abort {
    /// The reason label of `canary_rollout_aborts_total`.
    pub fn label(self) -> &'static str {
        match self {
            Abort::Analysis(reason) => reason,
            Abort::Config => "config",
            Abort::Operator => "operator",
            Abort::Rollback => "rollback",
        }
    }

    /// The decision's `source`.
    fn source(self) -> &'static str {
        match self {
            Abort::Analysis(_) | Abort::Config => SOURCE,
            Abort::Operator | Abort::Rollback => OPERATOR_SOURCE,
        }
    }
}

/// An operator's action on the running rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Abort,
    Promote,
}

impl Control {
    /// The rollout in the decision in force (running or ended).
    pub fn rollout(&self) -> Option<RolloutState> {
        self.lock().decision.rollout.clone()
    }

    /// The rollout in force, if it is running (paused counts).
    pub fn running_rollout(&self) -> Option<RolloutState> {
        self.rollout().filter(|r| r.phase.running())
    }

    pub fn rollout_clock(&self) -> Clock {
        self.lock().rollout.clock
    }

    pub fn rollout_windows(&self) -> Arc<Windows> {
        self.lock().rollout.windows.clone()
    }

    /// Changes this gateway's own view of the rollout (and the phase gauge
    /// with it: a hold noted or lifted shows at once).
    pub fn rollout_note(&self, change: impl FnOnce(&mut LocalView)) {
        change(&mut self.lock().rollout.view);
        self.publish_rollout_phase();
    }

    /// Sets the phase gauge to the rollout's phase as `GET /rollout` shows it.
    fn publish_rollout_phase(&self) {
        if let Some(view) = self.rollout_view() {
            view.publish_phase();
        }
    }

    /// `GET /rollout`.
    pub fn rollout_view(&self) -> Option<RolloutView> {
        let state = self.lock();
        let r = state.decision.rollout.as_ref()?;
        let now = state.rollout.clock.now_ms();
        Some(RolloutView::new(r, &state.rollout.view, now))
    }

    /// Whether a config reload on this task removed `r`'s canary or stable
    /// version (see `crate::rollout::Local::removed_by_reload`).
    pub fn rollout_removed_by_reload(&self, r: &RolloutState) -> bool {
        self.lock().rollout.removed_by_reload == Some(r.started_at_ms)
    }

    /// Shows `r` on this task in `phase` (`holding`, `waiting_gate`) for
    /// `why`, if it is the rollout in force and still before its first step
    /// (once step 0 is taken the driver shows the step); `keep`: unless this
    /// task shows it in `phase` already (with what the gate answered, say).
    /// The view is reset if it was about
    /// another rollout.
    pub fn note_first_step_wait(&self, r: &RolloutState, phase: Phase, why: String, keep: bool) {
        let mut state = self.lock();
        let waiting = state.decision.rollout.as_ref().is_some_and(|now| {
            now.started_at_ms == r.started_at_ms
                && now.phase == Phase::Progressing
                && !now.first_step_taken()
        });
        let v = &mut state.rollout.view;
        if !waiting || (keep && v.rollout == r.started_at_ms && v.overlay == Some(phase)) {
            return;
        }
        if v.rollout != r.started_at_ms {
            *v = Default::default();
            v.rollout = r.started_at_ms;
        }
        v.overlay = Some(phase);
        v.why = Some(why);
        v.next_due_ms = None;
        drop(state);
        self.publish_rollout_phase();
    }

    /// Whether `version` has an endpoint that is not ejected.
    pub fn has_healthy_endpoints(&self, version: &str) -> bool {
        let snapshot = self.snapshot.load();
        snapshot
            .versions
            .iter()
            .find(|v| v.name == version)
            .is_some_and(|v| v.endpoints.iter().any(|e| !e.is_ejected()))
    }

    /// With a shared store, adopts the fleet's latest document first, so that
    /// a rollout change is made on the newest state (never on a stale one).
    async fn refresh(&self) {
        if self.store.shared() {
            // A failed read is logged by the poll; the decision's own read
            // (and its conditional write) then decides.
            let _ = self.sync_from_store().await;
        }
    }

    /// A rollout decision, recorded under `source`. `change` sees the
    /// decision in force; its [`RolloutError`] (a conflict) is returned as
    /// it is.
    async fn decide_rollout(
        &self,
        source: &str,
        change: impl FnOnce(&crate::store::WeightsDoc) -> Result<Decision, RolloutError>,
    ) -> Result<(), RolloutError> {
        let mut refused = None;
        let decided = self
            .decide_with(source, |d| {
                change(d).map_err(|e| {
                    let message = e.to_string();
                    refused = Some(e);
                    ControlError::Invalid(message)
                })
            })
            .await;
        match (decided, refused) {
            (Ok(_), _) => Ok(()),
            (Err(_), Some(e)) => Err(e),
            (Err(e), None) => Err(e.into()),
        }
    }

    /// `POST /rollout`: validates the plan and takes its first step, or,
    /// when the canary has no healthy endpoint or a gate must approve step
    /// 0, starts the rollout before it (the canary at weight 0; see
    /// [`driver::first_step_wait`]).
    pub async fn start_rollout(&self, body: &[u8]) -> Result<RolloutView, RolloutError> {
        self.refresh().await;
        let (config, stable) = {
            let state = self.lock();
            (state.config.clone(), state.decision.stable.clone())
        };
        let plan = Plan::from_body(body, &config.rollout, &stable)?;
        if !config.versions.iter().any(|v| v.name == plan.canary) {
            return Err(PlanError {
                field: "canary".into(),
                reason: format!(
                    "unknown version `{}`; the versions are {}",
                    plan.canary,
                    config.version_names().join(", ")
                ),
            }
            .into());
        }
        let now = self.rollout_clock().now_ms();
        // A canary without a healthy endpoint, or a gate that must approve
        // step 0, starts the rollout before its first step: the canary at
        // weight 0 until the driver finds it ready and takes step 0.
        let pending = RolloutState::before_first_step(plan, now);
        let wait = driver::first_step_wait(self, &pending);
        let started = match wait {
            Some(_) => pending,
            None => pending.advanced(now),
        };
        self.check_rollout_fits(&started)?;
        let first = started.clone();
        self.decide_rollout(OPERATOR_SOURCE, |d| {
            if let Some(r) = d.rollout.as_ref().filter(|r| r.phase.running()) {
                return Err(RolloutError::Conflict(format!(
                    "a rollout of `{}` is already running (phase {}); abort it first",
                    r.plan.canary,
                    r.phase.as_str()
                )));
            }
            if d.stable != first.plan.stable {
                return Err(RolloutError::Conflict(
                    "the stable version changed meanwhile; try again".into(),
                ));
            }
            if let Some((v, w)) = d
                .weights
                .iter()
                .find(|(v, w)| **w > 0 && **v != first.plan.stable && **v != first.plan.canary)
            {
                return Err(RolloutError::Conflict(format!(
                    "version `{v}` has weight {w}: a rollout splits the traffic between the stable version and the canary only; set it to 0 first"
                )));
            }
            Ok((d.stable.clone(), first.weights(&d.weights), Some(first)))
        })
        .await?;
        tracing::info!(target: "audit", canary = %started.plan.canary, stable = %started.plan.stable, steps = ?started.plan.settings.steps, interval_s = started.plan.settings.interval_s, waits = ?wait.as_ref().map(|w| &w.1), "rollout started");
        let mut extra = serde_json::json!({ "plan": started.plan });
        match &wait {
            None => metrics::counter!(names::ROLLOUT_STEPS_TOTAL).increment(1),
            Some((phase, why)) => {
                extra["phase"] = serde_json::json!(phase);
                extra["reason"] = serde_json::json!(why);
                // Shown at once (the answer to this POST), unless this
                // task's driver already looked at the rollout (it knows
                // better: what the gate answered, say).
                self.note_first_step_wait(&started, *phase, why.clone(), true);
            }
        }
        notify::send_event(
            started.plan.settings.webhook.as_deref(),
            event("started", &started, extra),
        );
        self.rollout_view().ok_or(RolloutError::None)
    }

    /// Refuses a plan whose state could outgrow the store (Cloud Map holds
    /// 1,024 characters): checked against the largest document the rollout can
    /// write (every step taken, the longest abort reason), so that it never
    /// fails midway with a step or an abort the store cannot take.
    fn check_rollout_fits(&self, started: &RolloutState) -> Result<(), RolloutError> {
        let largest = {
            let state = self.lock();
            WeightsDoc {
                generation: u64::MAX,
                updated_at_ms: u64::MAX,
                source: "rollout (aborted)".into(),
                rollout: Some(started.largest_stored()),
                ..state.decision.clone()
            }
        };
        self.store.check_fits(&largest).map_err(|e| {
            RolloutError::Plan(PlanError {
                field: "steps".into(),
                reason: format!(
                    "a rollout of {} steps does not fit the weight store: {e}; use fewer steps, \
                     shorter webhook and gate URLs, or the DynamoDB store",
                    started.plan.settings.steps.len()
                ),
            })
        })
    }

    /// `POST /rollout/pause|resume|abort|promote`.
    pub async fn rollout_action(&self, action: Action) -> Result<RolloutView, RolloutError> {
        if action != Action::Abort {
            self.refresh().await;
        } else if self.running_rollout().is_none() {
            // An abort is a rollback: it never waits for the store when this
            // task runs the rollout (the rollback is made again from the
            // store's latest decision when written). Only to find a rollout
            // this task has not seen yet does it ask the store, briefly (a
            // read: the 1 s a rollback's write gets on most stores).
            let _ = tokio::time::timeout(crate::store::ROLLBACK_WRITE_WAIT, self.refresh()).await;
        }
        let r = self.rollout().ok_or(RolloutError::None)?;
        if !r.phase.running() {
            return Err(RolloutError::Conflict(format!(
                "the rollout of `{}` is over ({})",
                r.plan.canary,
                r.phase.as_str()
            )));
        }
        match action {
            Action::Abort => {
                self.abort_rollout(
                    &r,
                    Abort::Operator,
                    "aborted by the operator (POST /rollout/abort)",
                )
                .await?
            }
            Action::Promote => self.finish_rollout(&r, By::Operator).await?,
            Action::Pause | Action::Resume => {
                let now = self.rollout_clock().now_ms();
                self.decide_rollout(OPERATOR_SOURCE, |d| {
                    let current = d
                        .rollout
                        .as_ref()
                        .filter(|c| c.started_at_ms == r.started_at_ms)
                        .ok_or_else(|| {
                            RolloutError::Conflict(
                                "the rollout changed meanwhile; try again".into(),
                            )
                        })?;
                    let next = match (action, current.phase) {
                        (Action::Pause, Phase::Progressing) => current.paused(now),
                        (Action::Resume, Phase::Paused) => current.resumed(now),
                        (_, phase) => {
                            return Err(RolloutError::Conflict(format!(
                                "the rollout is {}",
                                phase.as_str()
                            )));
                        }
                    };
                    // Resuming re-applies the step's weights (they may have
                    // been set by hand while paused).
                    Ok((d.stable.clone(), next.weights(&d.weights), Some(next)))
                })
                .await?;
                // Shown at once, as the driver would at its next look: the
                // answer (and `GET /rollout` until then) says why it waits,
                // or no longer says it is paused.
                self.rollout_note(|v| {
                    if v.rollout != r.started_at_ms {
                        *v = Default::default();
                        v.rollout = r.started_at_ms;
                    }
                    v.why =
                        (action == Action::Pause).then(|| crate::rollout::driver::paused_why(None));
                });
                let kind = if action == Action::Pause {
                    "paused"
                } else {
                    "resumed"
                };
                tracing::info!(target: "audit", canary = %r.plan.canary, "rollout {kind}");
                if let Some(now) = self.rollout() {
                    notify::send_event(
                        r.plan.settings.webhook.as_deref(),
                        event(kind, &now, serde_json::json!({})),
                    );
                }
            }
        }
        self.rollout_view().ok_or(RolloutError::None)
    }

    /// Rolls the canary back at once and ends the rollout as aborted:
    /// a rollback (see [`Control::rollback_for`]), recorded under who
    /// decided it (`by`).
    pub async fn abort_rollout(
        &self,
        r: &RolloutState,
        by: Abort,
        reason: &str,
    ) -> Result<(), RolloutError> {
        self.rollback_for(by.source(), reason).await?;
        // Made again from the store's latest decision, the rollback may have
        // found the rollout already over (another task ended it before this
        // one heard): then it was not this abort that ended it.
        if let Some(now) = self.rollout()
            && now.started_at_ms == r.started_at_ms
            && now.phase != Phase::Aborted
        {
            return Err(RolloutError::Conflict(format!(
                "the rollout of `{}` is over ({}); the rollback applied to the decision in force",
                r.plan.canary,
                now.phase.as_str()
            )));
        }
        metrics::counter!(names::ROLLOUT_ABORTS_TOTAL, "reason" => by.label()).increment(1);
        tracing::warn!(target: "audit", canary = %r.plan.canary, reason, "rollout aborted: all traffic back on the stable version");
        let last = self.lock().rollout.view.last_analysis.clone();
        let ended = self.rollout().unwrap_or_else(|| r.clone());
        notify::send_event(
            r.plan.settings.webhook.as_deref(),
            aborted_event(&ended, by, reason, last),
        );
        Ok(())
    }

    /// The step after `seen`, if the rollout is still at `seen`'s step
    /// (`false`: another replica or the operator moved it meanwhile).
    pub async fn advance_rollout(&self, seen: &RolloutState) -> Result<bool, RolloutError> {
        self.refresh().await;
        let now = self.rollout_clock().now_ms();
        let result = self
            .decide_rollout(SOURCE, |d| match d.rollout.as_ref() {
                Some(r) if r.same_step(seen) => {
                    let next = r.advanced(now);
                    Ok((d.stable.clone(), next.weights(&d.weights), Some(next)))
                }
                _ => Err(RolloutError::Conflict("moved on".into())),
            })
            .await;
        match result {
            Ok(()) => {
                metrics::counter!(names::ROLLOUT_STEPS_TOTAL).increment(1);
                if let Some(r) = self.rollout() {
                    tracing::info!(target: "audit", canary = %r.plan.canary, step = r.step, share = r.share(), "rollout step");
                    notify::send_event(
                        r.plan.settings.webhook.as_deref(),
                        event("step", &r, serde_json::json!({})),
                    );
                }
                Ok(true)
            }
            // Moved on meanwhile, or another task wrote first (its decision
            // is applied here): follow the store.
            Err(RolloutError::Conflict(_))
            | Err(RolloutError::Control(ControlError::Conflict(_))) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Ends the rollout as succeeded: the canary promoted (`on_success =
    /// "promote"`) or the last step's weights kept (`"hold"`).
    ///
    /// By the analysis, only if the rollout is still at `seen`'s step, as
    /// judged (as [`Control::advance_rollout`]): an operator's pause (or
    /// resume) written meanwhile stands. By the operator, whatever the step
    /// or phase of the running rollout.
    pub async fn finish_rollout(&self, seen: &RolloutState, by: By) -> Result<(), RolloutError> {
        let now = self.rollout_clock().now_ms();
        self.decide_rollout(by.source(), |d| {
            let r = d
                .rollout
                .as_ref()
                .filter(|r| match by {
                    By::Analysis => r.same_step(seen),
                    By::Operator => r.started_at_ms == seen.started_at_ms && r.phase.running(),
                })
                .ok_or_else(|| {
                    RolloutError::Conflict("the rollout is over or changed meanwhile".into())
                })?;
            let done = r.succeeded(now);
            Ok(match r.plan.settings.on_success {
                OnSuccess::Promote => (
                    r.plan.canary.clone(),
                    all_weight_to(&d.weights, &r.plan.canary),
                    Some(done),
                ),
                OnSuccess::Hold => (d.stable.clone(), done.weights(&d.weights), Some(done)),
            })
        })
        .await?;
        tracing::info!(target: "audit", canary = %seen.plan.canary, by = by.as_str(), on_success = ?seen.plan.settings.on_success, "rollout succeeded");
        if let Some(r) = self.rollout() {
            notify::send_event(
                r.plan.settings.webhook.as_deref(),
                event("succeeded", &r, serde_json::json!({ "by": by.as_str() })),
            );
        }
        Ok(())
    }
}

/// The webhook event of an abort: with the analysis that decided it, and
/// only then (an operator's abort, a rollback or a config abort was decided
/// on no analysis: the last one, maybe a pass, would say otherwise).
pub(crate) fn aborted_event(
    ended: &RolloutState,
    by: Abort,
    reason: &str,
    last: Option<AnalysisRecord>,
) -> serde_json::Value {
    let figures = last.filter(|_| matches!(by, Abort::Analysis(_)));
    event(
        "aborted",
        ended,
        serde_json::json!({ "reason": reason, "analysis": figures }),
    )
}
