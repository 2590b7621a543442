//! Rollout: the state machine, as it is kept in the store document (so that
//! every replica steps on the same plan and a restart resumes).
//!
//! Stored phases: `progressing`, `paused`, `succeeded`, `aborted`. `holding`
//! and `waiting_gate` are a replica's own view of a progressing step (its
//! analysis found too little evidence, or the gate refused): they are shown
//! by `GET /rollout` but not stored, so that one replica's hold never undoes
//! another's step.
//!
//! A rollout may start before its first step: the canary at weight 0 (all
//! traffic as before) while it has no healthy endpoint or its gate has not
//! approved step 0. That is stored as a `progressing` rollout with no step
//! taken yet (an empty `history`), so that every replica and a restart see
//! it; whichever replica finds the canary ready takes step 0.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::plan::{OnSuccess, Plan};

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Progressing,
    Holding,
    Paused,
    WaitingGate,
    Succeeded,
    Aborted,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Progressing,
        Phase::Holding,
        Phase::Paused,
        Phase::WaitingGate,
        Phase::Succeeded,
        Phase::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Progressing => "progressing",
            Phase::Holding => "holding",
            Phase::Paused => "paused",
            Phase::WaitingGate => "waiting_gate",
            Phase::Succeeded => "succeeded",
            Phase::Aborted => "aborted",
        }
    }

    /// Not over yet.
    pub fn running(self) -> bool {
        !matches!(self, Phase::Succeeded | Phase::Aborted)
    }
}

/// One step taken (as `GET /rollout` shows it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    /// Index into the plan's steps.
    pub step: usize,
    /// The canary's share, percent.
    pub share: f64,
    pub at_ms: u64,
}

/// The longest abort reason kept in the store (Cloud Map caps the whole
/// document at 1,024 characters).
pub const MAX_STORED_REASON: usize = 160;

/// A rollout, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    pub plan: Plan,
    /// Also the rollout's identity.
    pub started_at_ms: u64,
    pub phase: Phase,
    /// Index of the step in force.
    pub step: usize,
    /// When the step in force began (its window is judged an interval later).
    pub step_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at_ms: Option<u64>,
    /// The steps taken: (step index, when), compact for the store. Empty
    /// before the first step (see [`RolloutState::first_step_taken`]).
    #[serde(default)]
    pub history: Vec<(usize, u64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<u64>,
}

/// Shares and times hold no NaN.
impl Eq for RolloutState {}

impl RolloutState {
    /// A rollout at its first step.
    pub fn start(plan: Plan, now_ms: u64) -> RolloutState {
        RolloutState::before_first_step(plan, now_ms).advanced(now_ms)
    }

    /// A rollout started but with no step taken yet: the canary at weight
    /// 0 until [`RolloutState::advanced`] takes step 0.
    pub fn before_first_step(plan: Plan, now_ms: u64) -> RolloutState {
        RolloutState {
            plan,
            started_at_ms: now_ms,
            phase: Phase::Progressing,
            step: 0,
            step_at_ms: now_ms,
            paused_at_ms: None,
            history: Vec::new(),
            reason: None,
            ended_at_ms: None,
        }
    }

    /// Whether step 0 was taken (a rollout may start before it: see
    /// [`RolloutState::before_first_step`]).
    pub fn first_step_taken(&self) -> bool {
        !self.history.is_empty()
    }

    /// The canary's share at the step in force, percent: 0 before the first
    /// step; 100 once promoted (`on_success = "promote"` gives it all the
    /// traffic, whatever the last step's share).
    pub fn share(&self) -> f64 {
        if self.phase == Phase::Succeeded && self.plan.settings.on_success == OnSuccess::Promote {
            return 100.0;
        }
        if !self.first_step_taken() {
            return 0.0;
        }
        self.plan
            .settings
            .steps
            .get(self.step)
            .copied()
            .unwrap_or(100.0)
    }

    /// The step in force for a message, as `GET /rollout` (`step`) and
    /// `ctl` count it: from 0.
    pub fn step_text(&self) -> String {
        format!(
            "step {} of {}, counted from 0",
            self.step,
            self.plan.settings.steps.len()
        )
    }

    pub fn last_step(&self) -> bool {
        self.step + 1 >= self.plan.settings.steps.len()
    }

    /// Same rollout, same step, same window start.
    pub fn same_step(&self, other: &RolloutState) -> bool {
        self.started_at_ms == other.started_at_ms
            && self.first_step_taken() == other.first_step_taken()
            && self.step == other.step
            && self.step_at_ms == other.step_at_ms
            && self.phase == other.phase
    }

    /// The next step, taken at `now_ms` (step 0 before the first step).
    pub fn advanced(&self, now_ms: u64) -> RolloutState {
        let mut next = self.clone();
        next.step = if self.first_step_taken() {
            (self.step + 1).min(self.plan.settings.steps.len().saturating_sub(1))
        } else {
            0
        };
        next.step_at_ms = now_ms;
        next.history.push((next.step, now_ms));
        next
    }

    /// The steps taken, with their shares.
    pub fn steps_taken(&self) -> Vec<StepRecord> {
        self.history
            .iter()
            .map(|&(step, at_ms)| StepRecord {
                step,
                share: self.plan.settings.steps.get(step).copied().unwrap_or(100.0),
                at_ms,
            })
            .collect()
    }

    pub fn paused(&self, now_ms: u64) -> RolloutState {
        RolloutState {
            phase: Phase::Paused,
            paused_at_ms: Some(now_ms),
            ..self.clone()
        }
    }

    /// Resumed: the step in force gets a fresh window from `now_ms`.
    pub fn resumed(&self, now_ms: u64) -> RolloutState {
        RolloutState {
            phase: Phase::Progressing,
            paused_at_ms: None,
            step_at_ms: now_ms,
            ..self.clone()
        }
    }

    pub fn ended(&self, phase: Phase, reason: Option<String>, now_ms: u64) -> RolloutState {
        let reason = reason.map(|r| match r.char_indices().nth(MAX_STORED_REASON) {
            Some((cut, _)) => format!("{}...", &r[..cut]),
            None => r,
        });
        RolloutState {
            phase,
            reason,
            ended_at_ms: Some(now_ms),
            paused_at_ms: None,
            ..self.clone()
        }
    }

    /// This rollout as large as it can grow in the store: every step taken,
    /// aborted with the longest stored reason, every time at 13 digits.
    pub fn largest_stored(&self) -> RolloutState {
        const LATE_MS: u64 = 9_999_999_999_999;
        let steps = self.plan.settings.steps.len();
        RolloutState {
            phase: Phase::Aborted,
            step: steps.saturating_sub(1),
            step_at_ms: LATE_MS,
            paused_at_ms: Some(LATE_MS),
            history: (0..steps).map(|i| (i, LATE_MS)).collect(),
            reason: Some(format!("{}...", "x".repeat(MAX_STORED_REASON))),
            ended_at_ms: Some(LATE_MS),
            ..self.clone()
        }
    }

    /// At the last step, ended as succeeded.
    pub fn succeeded(&self, now_ms: u64) -> RolloutState {
        let mut done = self.clone();
        if !self.first_step_taken() || !self.last_step() {
            done.step = self.plan.settings.steps.len().saturating_sub(1);
            done.step_at_ms = now_ms;
            done.history.push((done.step, now_ms));
        }
        done.ended(Phase::Succeeded, None, now_ms)
    }

    /// The weights for the step in force: the canary's share of `scale`
    /// (see [`scale`]), the rest to stable, other versions at 0. Before the
    /// first step the canary has 0, stable all of `scale`.
    pub fn weights(&self, versions: &BTreeMap<String, u32>) -> BTreeMap<String, u32> {
        let scale = scale(&self.plan.settings.steps);
        let canary = ((self.share() / 100.0) * scale as f64).round() as u32;
        versions
            .keys()
            .map(|k| {
                let w = if *k == self.plan.canary {
                    canary
                } else if *k == self.plan.stable {
                    scale - canary
                } else {
                    0
                };
                (k.clone(), w)
            })
            .collect()
    }
}

/// The weights' total during a rollout: the first of 100, 1000, ... 1,000,000
/// that gives every step a whole weight (so integer steps are on the usual
/// 0-100 scale), whatever total the weights had before: every version's
/// weight is set by the rollout (only stable and the canary have any).
pub fn scale(steps: &[f64]) -> u32 {
    [100u32, 1_000, 10_000, 100_000, 1_000_000]
        .into_iter()
        .find(|&s| {
            steps.iter().all(|&p| {
                let w = p / 100.0 * f64::from(s);
                (w - w.round()).abs() < 1e-6
            })
        })
        .unwrap_or(1_000_000)
}

/// `rollout` once `stable` is the stable version (a promotion, or a config
/// edit, made while it was paused): a running rollout from another stable
/// version cannot go on (its resume or abort would work from the old one).
/// Its canary made stable is its success; any other version ends it as
/// aborted, `by` saying what did.
pub fn after_stable_change(
    rollout: Option<&RolloutState>,
    stable: &str,
    by: &str,
    now_ms: u64,
) -> Option<RolloutState> {
    rollout.map(|r| {
        if !r.phase.running() || r.plan.stable == stable {
            r.clone()
        } else if r.plan.canary == stable {
            r.succeeded(now_ms)
        } else {
            let why = format!("ended by {by} that made `{stable}` stable");
            r.ended(Phase::Aborted, Some(why), now_ms)
        }
    })
}

/// `rollout` aborted with `reason` if it is running; otherwise as it is.
/// Used by every rollback: a rollback ends a running rollout.
pub fn aborted(rollout: Option<&RolloutState>, reason: &str, now_ms: u64) -> Option<RolloutState> {
    rollout.map(|r| {
        if r.phase.running() {
            r.ended(Phase::Aborted, Some(reason.to_string()), now_ms)
        } else {
            r.clone()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::plan::Settings;

    fn rollout(steps: &[f64]) -> RolloutState {
        let plan = Plan {
            canary: "v2".into(),
            stable: "v1".into(),
            settings: Settings {
                steps: steps.to_vec(),
                ..Settings::default()
            },
        };
        RolloutState::start(plan, 1_000)
    }

    fn weights(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(k, w)| (k.to_string(), *w)).collect()
    }

    #[test]
    fn steps_become_weights_on_the_smallest_scale_that_fits() {
        let r = rollout(&[1.0, 50.0, 100.0]);
        let w = r.weights(&weights(&[("v1", 100), ("v2", 0), ("v3", 0)]));
        assert_eq!(w, weights(&[("v1", 99), ("v2", 1), ("v3", 0)]));
        let r = rollout(&[0.1, 100.0]);
        assert_eq!(
            r.weights(&weights(&[("v1", 100), ("v2", 0)])),
            weights(&[("v1", 999), ("v2", 1)])
        );
        let r = rollout(&[0.0001]);
        assert_eq!(r.weights(&weights(&[("v1", 1), ("v2", 0)]))["v2"], 1);
        assert_eq!(scale(&[2.5]), 1_000);
        // Whole percents are on 100 after weights of another total (a
        // rollout of 2.5% steps before, or weights set so): the total of
        // 1,000 did not stick.
        let r = rollout(&[10.0, 50.0]);
        assert_eq!(
            r.weights(&weights(&[("v1", 1_000), ("v2", 0)])),
            weights(&[("v1", 90), ("v2", 10)])
        );
        let r = rollout(&[5.0]);
        assert_eq!(
            r.weights(&weights(&[("v1", 600), ("v2", 40)])),
            weights(&[("v1", 95), ("v2", 5)])
        );
    }

    #[test]
    fn the_phases_move_as_documented() {
        let r = rollout(&[1.0, 50.0, 100.0]);
        assert_eq!((r.phase, r.step, r.share()), (Phase::Progressing, 0, 1.0));
        let r = r.advanced(2_000);
        assert_eq!((r.step, r.step_at_ms, r.history.len()), (1, 2_000, 2));
        let p = r.paused(2_500);
        assert_eq!(p.phase, Phase::Paused);
        let r = p.resumed(9_000);
        assert_eq!(
            (r.phase, r.step_at_ms, r.paused_at_ms),
            (Phase::Progressing, 9_000, None)
        );
        let done = r.succeeded(10_000);
        assert_eq!(
            (done.phase, done.step, done.share()),
            (Phase::Succeeded, 2, 100.0)
        );
        let a = aborted(Some(&r), "error rate", 11_000).unwrap();
        assert_eq!(
            (a.phase, a.reason.as_deref()),
            (Phase::Aborted, Some("error rate"))
        );
        // An ended rollout stays as it ended.
        assert_eq!(aborted(Some(&done), "late", 12_000).unwrap(), done);
        assert_eq!(aborted(None, "x", 1), None);
    }

    /// Before its first step the canary has no traffic; step 0 is the first
    /// taken, and a promote from there walks to the end.
    #[test]
    fn before_the_first_step_the_canary_has_weight_0() {
        let plan = rollout(&[1.0, 50.0, 100.0]).plan;
        let r = RolloutState::before_first_step(plan, 1_000);
        assert!(!r.first_step_taken());
        assert_eq!((r.phase, r.step, r.share()), (Phase::Progressing, 0, 0.0));
        assert!(r.steps_taken().is_empty());
        let w = r.weights(&weights(&[("v1", 90), ("v2", 10), ("v3", 0)]));
        assert_eq!(w, weights(&[("v1", 100), ("v2", 0), ("v3", 0)]));
        let first = r.advanced(1_500);
        assert!(first.first_step_taken() && !first.same_step(&r));
        assert_eq!(
            (first.step, first.step_at_ms, first.share()),
            (0, 1_500, 1.0)
        );
        assert_eq!(first.history, vec![(0, 1_500)]);
        assert_eq!(first.advanced(2_000).step, 1);
        let done = r.succeeded(3_000);
        assert_eq!((done.step, done.share(), done.history.len()), (2, 100.0, 1));
    }

    /// Promoted, the canary has all the traffic whatever the last step's
    /// share; held, it keeps the last step's.
    #[test]
    fn a_promoted_canarys_share_is_100() {
        let mut r = rollout(&[10.0, 50.0]);
        assert_eq!(r.succeeded(2_000).share(), 100.0);
        assert_eq!(r.advanced(1_500).succeeded(2_000).share(), 100.0);
        r.plan.settings.on_success = OnSuccess::Hold;
        let held = r.succeeded(2_000);
        assert_eq!(held.share(), 50.0);
        let w = held.weights(&weights(&[("v1", 100), ("v2", 0)]));
        assert_eq!(w, weights(&[("v1", 50), ("v2", 50)]));
    }
}
