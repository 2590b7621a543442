//! Progressive delivery: the gateway rolls a canary out by itself.
//!
//! A rollout walks the canary through its plan's steps (its share of the
//! traffic, percent). Each interval the canary is judged against the stable
//! version over the same window ([`analysis`], from the per-version counters
//! the data path keeps in [`telemetry`]): a canary worse than allowed is
//! rolled back at once; too little evidence holds the step; an optional gate
//! must approve each step ([`notify`]). The rollout's state lives in the
//! store document ([`state`]), so every replica steps on the same plan and a
//! restart resumes; [`driver`] is the task that does the stepping, through
//! the control path's one writer (`control::rollout`).

pub mod analysis;
pub mod driver;
pub mod notify;
pub mod plan;
pub mod state;
pub mod telemetry;

use std::sync::Arc;

use serde::Serialize;

use crate::metrics as names;
use analysis::Analysis;
use state::{Phase, RolloutState, StepRecord};
use telemetry::Windows;

/// Why a rollout request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error("{0}")]
    Conflict(String),
    #[error("no rollout has been started")]
    None,
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
}

/// The plan's clock: Unix milliseconds that follow tokio's clock (so that
/// unit tests with paused time step the rollout too).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_ms: u64,
    base: tokio::time::Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            base_ms: crate::store::unix_ms(),
            base: tokio::time::Instant::now(),
        }
    }
}

impl Clock {
    pub fn now_ms(&self) -> u64 {
        self.base_ms + self.base.elapsed().as_millis() as u64
    }

    /// The tokio instant of the Unix time `ms` (now, if it is past).
    pub fn instant_at(&self, ms: u64) -> tokio::time::Instant {
        let wait = std::time::Duration::from_millis(ms.saturating_sub(self.now_ms()));
        let now = tokio::time::Instant::now();
        // A time beyond what the clock can hold (a corrupt stored plan): the
        // farthest a clock surely holds, never a panic.
        now.checked_add(wait)
            .unwrap_or_else(|| now + std::time::Duration::from_secs(1_000_000_000))
    }
}

/// The last analysis this gateway made, and when.
#[derive(Debug, Clone, Serialize)]
pub struct AnalysisRecord {
    pub at_ms: u64,
    /// The window's start.
    pub since_ms: u64,
    #[serde(flatten)]
    pub analysis: Analysis,
}

/// What this gateway alone knows of the rollout in force (its own analysis
/// and whether it holds); the rest is in the store document.
#[derive(Debug, Clone, Default)]
pub struct LocalView {
    /// The rollout this view is about (its `started_at_ms`).
    pub rollout: u64,
    /// `holding` or `waiting_gate` while the stored phase is `progressing`.
    pub overlay: Option<Phase>,
    pub why: Option<String>,
    pub next_due_ms: Option<u64>,
    pub last_analysis: Option<AnalysisRecord>,
}

/// A gateway's rollout machinery: the per-version counters the data path
/// feeds, the plan's clock, and this gateway's view.
#[derive(Debug, Default)]
pub struct Local {
    pub windows: Arc<Windows>,
    pub clock: Clock,
    pub view: LocalView,
    /// The running rollout (its `started_at_ms`) whose canary or stable
    /// version a config reload on this gateway removed: the driver aborts
    /// it. A rollout of a version this gateway's config never had is aborted
    /// too on a store no other task shares (the config was edited while the
    /// gateway was stopped); on a shared one (an older task definition
    /// during a deployment) it is held here, never aborted.
    pub removed_by_reload: Option<u64>,
}

/// `GET /rollout`.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutView {
    pub phase: Phase,
    pub canary: String,
    pub stable: String,
    /// Index of the step in force.
    pub step: usize,
    /// The canary's share of the traffic, percent: that step's (0 before the
    /// first step; 0 once aborted, the canary rolled back; 100 once
    /// promoted).
    pub share: f64,
    pub steps: Vec<f64>,
    pub started_at_ms: u64,
    pub step_started_at_ms: u64,
    /// When this gateway judges the step next (none unless progressing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_step_due_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_step_in_s: Option<f64>,
    /// Why the step holds (holding, waiting_gate), or that a paused
    /// rollout's abort checks still run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    pub last_analysis: Option<AnalysisRecord>,
    pub history: Vec<StepRecord>,
    pub abort_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<u64>,
    pub plan: plan::Settings,
}

impl RolloutView {
    pub fn new(r: &RolloutState, local: &LocalView, now_ms: u64) -> RolloutView {
        let mine = local.rollout == r.started_at_ms;
        let progressing = r.phase == Phase::Progressing;
        let due = local.next_due_ms.filter(|_| mine && progressing);
        RolloutView {
            phase: match local.overlay {
                Some(overlay) if mine && progressing => overlay,
                _ => r.phase,
            },
            canary: r.plan.canary.clone(),
            stable: r.plan.stable.clone(),
            step: r.step,
            // Once aborted the canary is rolled back: its share is 0, not
            // the step's it was aborted at (`step` still names that one).
            share: if r.phase == Phase::Aborted {
                0.0
            } else {
                r.share()
            },
            steps: r.plan.settings.steps.clone(),
            started_at_ms: r.started_at_ms,
            step_started_at_ms: r.step_at_ms,
            next_step_due_ms: due,
            next_step_in_s: due.map(|d| d.saturating_sub(now_ms) as f64 / 1000.0),
            why: local
                .why
                .clone()
                .filter(|_| mine && (progressing || r.phase == Phase::Paused)),
            last_analysis: local.last_analysis.clone().filter(|_| mine),
            history: r.steps_taken(),
            abort_reason: r.reason.clone().filter(|_| r.phase == Phase::Aborted),
            ended_at_ms: r.ended_at_ms,
            plan: r.plan.settings.clone(),
        }
    }

    /// Sets [`names::ROLLOUT_PHASE`] to this view's phase (1 for it, 0 for
    /// the others): as soon as this task's view of the phase changes (a hold
    /// noted, or lifted when the next step begins), not at the driver's next
    /// look, a whole step later.
    pub fn publish_phase(&self) {
        for phase in Phase::ALL {
            metrics::gauge!(names::ROLLOUT_PHASE, "phase" => phase.as_str())
                .set(if phase == self.phase { 1.0 } else { 0.0 });
        }
    }

    /// Sets the rollout gauges to this view, for the versions `known` has
    /// (in this task's config). `published` holds the labelled series the
    /// last call set: those this view does not set (a previous rollout's
    /// canary, a version a reload removed) go to 0, as the exporter would
    /// otherwise keep them at their last value (`{version="v2"} 100` after
    /// v2's promotion, through every later rollout).
    pub fn publish(&self, known: impl Fn(&str) -> bool, published: &mut Published) {
        self.publish_phase();
        let mut now = Published::default();
        if known(&self.canary) {
            metrics::gauge!(names::ROLLOUT_CANARY_SHARE, "version" => self.canary.clone())
                .set(self.share);
            now.0
                .insert((names::ROLLOUT_CANARY_SHARE, self.canary.clone()));
        }
        if let Some(a) = &self.last_analysis {
            for (version, f) in [
                (&self.canary, &a.analysis.canary),
                (&self.stable, &a.analysis.stable),
            ] {
                if !known(version) {
                    continue;
                }
                let values = [
                    f.requests as f64,
                    f.errors as f64,
                    f.error_rate,
                    f.p50_ms,
                    f.p99_ms,
                ];
                for (figure, value) in FIGURES.into_iter().zip(values) {
                    metrics::gauge!(names::ROLLOUT_ANALYSIS, "version" => version.clone(), "figure" => figure)
                        .set(value);
                }
                now.0.insert((names::ROLLOUT_ANALYSIS, version.clone()));
            }
            if let Some(p) = a.analysis.p_value {
                metrics::gauge!(names::ROLLOUT_ANALYSIS_P_VALUE).set(p);
            }
        }
        for (name, version) in published.0.difference(&now.0) {
            zero_series(name, version);
        }
        *published = now;
    }
}

/// The `version`-labelled rollout series a task set last (see
/// [`RolloutView::publish`]): the gauge's name and the version.
#[derive(Debug, Default)]
pub struct Published(std::collections::BTreeSet<(&'static str, String)>);

/// The analysis figures of [`names::ROLLOUT_ANALYSIS`].
const FIGURES: [&str; 5] = ["requests", "errors", "error_rate", "p50_ms", "p99_ms"];

/// Sets the rollout gauge `name`'s series of `version` to 0.
fn zero_series(name: &str, version: &str) {
    if name == names::ROLLOUT_ANALYSIS {
        for figure in FIGURES {
            metrics::gauge!(names::ROLLOUT_ANALYSIS, "version" => version.to_string(), "figure" => figure)
                .set(0.0);
        }
    } else {
        metrics::gauge!(name.to_string(), "version" => version.to_string()).set(0.0);
    }
}

/// Sets every rollout gauge of `version` to 0 (a reload removed it).
pub fn zero_version_gauges(version: &str) {
    zero_series(names::ROLLOUT_CANARY_SHARE, version);
    zero_series(names::ROLLOUT_ANALYSIS, version);
}

/// A webhook event about `r`.
pub fn event(kind: &str, r: &RolloutState, extra: serde_json::Value) -> serde_json::Value {
    let mut e = serde_json::json!({
        "event": kind,
        "canary": r.plan.canary,
        "stable": r.plan.stable,
        "phase": r.phase,
        "step": r.step,
        "share": r.share(),
        "started_at_ms": r.started_at_ms,
    });
    if let (Some(map), serde_json::Value::Object(more)) = (e.as_object_mut(), extra) {
        map.extend(more);
    }
    e
}
