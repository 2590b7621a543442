//! Control path: which generation each gateway task runs. Every task writes
//! its own report into the shared store (on each poll and right after it
//! applies a decision) and keeps the fleet's reports it got back; `GET /status`
//! `fleet` lists them, stale ones marked and left out of convergence.

use std::time::Duration;

use serde::Serialize;

use super::{Control, State};
use crate::metrics as names;
use crate::store::{StoreError, TaskReport, unix_ms};

/// Slack added to three report intervals before a report counts as stale
/// (the poll is jittered ±20 % and one AWS call may be slow).
const STALE_SLACK: Duration = Duration::from_secs(5);
/// Write units per second the fleet's periodic reports may take from the
/// reports item, half of what one DynamoDB partition (one item) takes.
const REPORT_WRITE_UNITS: f64 = 500.0;
/// The stored size of one task's entry, in KB (a ~190-byte report and its key).
const ENTRY_KB: f64 = 0.25;
/// How long a stopping task waits for its report's removal.
const WITHDRAW_LIMIT: Duration = Duration::from_secs(2);

/// One task in `GET /status` `fleet.tasks`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FleetTask {
    #[serde(flatten)]
    pub report: TaskReport,
    /// Seconds since the task wrote its report (by this task's clock).
    pub age_s: f64,
    /// Not renewed within `fleet.stale_after_s`: the task is likely gone, and
    /// it is left out of `converged`.
    pub stale: bool,
    /// The task that answers this `/status`.
    pub this_task: bool,
}

/// `GET /status` `fleet`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FleetStatus {
    /// This task first, then the other tasks' reports by task id.
    pub tasks: Vec<FleetTask>,
    /// Every task that is not stale runs the same generation. Always false
    /// while the other tasks' reports are unknown on a shared store (see `note`).
    pub converged: bool,
    /// That generation, when converged.
    pub generation: Option<u64>,
    pub stale_after_s: f64,
    /// Whether the other tasks' reports were read from the store (false: the
    /// file store, which has one task; the Cloud Map store, which keeps none;
    /// a DynamoDB store before the first report). Only this task is listed then.
    pub reports_shared: bool,
    /// Why convergence cannot be observed, when it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Why this task's last report could not be written (e.g. the task role
    /// lacks `dynamodb:UpdateItem`); the others' reports then age.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// How old a report may be before it is stale: three report intervals and slack.
pub fn stale_after(report_every: Duration) -> Duration {
    report_every * 3 + STALE_SLACK
}

/// How often each of `tasks` tasks renews its report: every poll, unless the
/// fleet is so large that its reports would take more than
/// `REPORT_WRITE_UNITS` per second from the one reports item (an UpdateItem
/// costs a write unit per KB of the whole item, so the cost grows with the
/// square of the fleet): then less often (100 tasks: 5 s, 300 tasks: 45 s).
pub fn report_interval(poll: Duration, tasks: usize) -> Duration {
    let n = tasks as f64;
    let item_kb = (n * ENTRY_KB).ceil().max(1.0);
    poll.max(Duration::from_secs_f64(n * item_kb / REPORT_WRITE_UNITS))
}

/// The fleet as this task sees it: its own live report (always fresh, it
/// replaces whatever the store holds for it) and the stored reports of the
/// others. `unknown`: the store is shared but no reports were read (why):
/// never converged then, as other tasks may run anything.
pub fn fleet_view(
    own: TaskReport,
    stored: Option<&[TaskReport]>,
    unknown: Option<String>,
    now_ms: u64,
    stale_after: Duration,
) -> FleetStatus {
    let mut others: Vec<&TaskReport> = stored
        .unwrap_or_default()
        .iter()
        .filter(|r| r.task != own.task)
        .collect();
    others.sort_by(|a, b| a.task.cmp(&b.task));
    let task = |report: TaskReport, this_task: bool| {
        let age = Duration::from_millis(now_ms.saturating_sub(report.reported_at_ms));
        FleetTask {
            age_s: age.as_secs_f64(),
            stale: !this_task && age > stale_after,
            this_task,
            report,
        }
    };
    let mut tasks = vec![task(own, true)];
    tasks.extend(others.into_iter().map(|r| task(r.clone(), false)));
    let generation = tasks[0].report.generation;
    let unknown = unknown.filter(|_| stored.is_none());
    let converged = unknown.is_none()
        && tasks
            .iter()
            .filter(|t| !t.stale)
            .all(|t| t.report.generation == generation);
    FleetStatus {
        converged,
        generation: converged.then_some(generation),
        stale_after_s: stale_after.as_secs_f64(),
        reports_shared: stored.is_some(),
        note: unknown,
        last_error: None,
        tasks,
    }
}

/// Whether the task `own` stands in for `writer`, the task that wrote the
/// decision in force, at the App Mesh reconcile (see
/// [`crate::route_sync::follow_route`]): the writer has no live report (it
/// was stopped or replaced, or is draining) or reports that its own route
/// syncs fail (a route it cannot find or write), and of the other tasks that
/// report live, none that could stand in (neither draining, nor started
/// without the store, nor failing its own route syncs) has a smaller task
/// id. So after a fleet is replaced, one task repairs the route's drift,
/// not none and not every one.
pub fn stands_in(
    own: &str,
    writer: &str,
    reports: &[TaskReport],
    now_ms: u64,
    stale_after: Duration,
) -> bool {
    let mut others = reports
        .iter()
        .filter(|r| r.task != own && live(r, now_ms, stale_after));
    !others
        .any(|r| !r.appmesh_failing && (r.task == writer || (!r.degraded && r.task.as_str() < own)))
}

/// Whether this task's last App Mesh sync failed (see
/// [`super::status::AppMeshStatus::failing`]).
fn appmesh_failing(state: &State) -> bool {
    state
        .appmesh
        .as_ref()
        .is_some_and(super::status::AppMeshStatus::failing)
}

/// Whether `writer` reports live (not stale, not draining) that its own
/// route syncs fail: known alive, so a stand-in need not wait for the
/// decision to settle before writing it in its place.
pub fn writer_failing(
    writer: &str,
    reports: &[TaskReport],
    now_ms: u64,
    stale_after: Duration,
) -> bool {
    reports
        .iter()
        .any(|r| r.task == writer && r.appmesh_failing && live(r, now_ms, stale_after))
}

/// Whether `report` is live: not stale at `now_ms`, not draining.
fn live(report: &TaskReport, now_ms: u64, stale_after: Duration) -> bool {
    Duration::from_millis(now_ms.saturating_sub(report.reported_at_ms)) <= stale_after
        && !report.draining
}

impl Control {
    /// How often this task renews its report (see [`report_interval`]).
    fn report_every(&self, state: &State) -> Duration {
        let poll = state
            .config
            .store
            .poll_interval()
            .unwrap_or(crate::config::DEFAULT_STORE_POLL);
        report_interval(poll, state.fleet.as_ref().map_or(1, Vec::len))
    }

    /// How old another task's report may be before it is stale.
    fn report_stale_after(&self, state: &State) -> Duration {
        stale_after(self.report_every(state))
    }

    /// Whether this task's report should be written now: never written,
    /// something it says changed, or the last one is due for renewal (a
    /// quarter early, as the poll that renews it is jittered).
    pub fn report_due(&self) -> bool {
        let state = self.lock();
        match state.reported {
            None => true,
            Some((generation, draining, failing, at)) => {
                generation != state.decision.generation
                    || draining != self.is_draining()
                    || failing != appmesh_failing(&state)
                    || at.elapsed() >= self.report_every(&state).mul_f64(0.75)
            }
        }
    }

    /// This task's report now.
    fn own_report(&self, state: &State, ready: bool) -> TaskReport {
        TaskReport {
            task: self.writer.clone(),
            generation: state.decision.generation,
            reported_at_ms: unix_ms(),
            applied_at_ms: state.applied_at_ms,
            ready,
            draining: self.is_draining(),
            degraded: state.store.degraded,
            version: env!("CARGO_PKG_VERSION").to_string(),
            appmesh_failing: appmesh_failing(state),
        }
    }

    /// `GET /status` `fleet` (called with the state lock held).
    pub(super) fn fleet_status(&self, state: &State, ready: bool) -> FleetStatus {
        let unknown = self.store.shared().then(|| {
            if state.store.kind == "cloudmap" {
                "the Cloud Map store keeps no task reports (use the DynamoDB store): the other tasks' generations are unknown".to_string()
            } else {
                "no task reports read from the store yet (see fleet.last_error)".to_string()
            }
        });
        FleetStatus {
            last_error: state.report_error.clone(),
            ..fleet_view(
                self.own_report(state, ready),
                state.fleet.as_deref(),
                unknown,
                unix_ms(),
                self.report_stale_after(state),
            )
        }
    }

    /// Writes this task's report into the store and keeps the fleet's reports
    /// it answers. A store that keeps no reports costs nothing.
    pub async fn report_to_store(&self) -> Result<(), StoreError> {
        let ready = self.readiness().is_ok();
        let own = self.own_report(&self.lock(), ready);
        let said = (
            own.generation,
            own.draining,
            own.appmesh_failing,
            std::time::Instant::now(),
        );
        match self.store.report(&own).await {
            Ok(None) => {
                self.lock().reported = Some(said);
                Ok(())
            }
            Ok(Some(reports)) => {
                self.store_outcome("report", Ok(()));
                let mut state = self.lock();
                state.fleet = Some(reports);
                state.reported = Some(said);
                if state.report_error.take().is_some() {
                    tracing::info!("this task's generation report is written again");
                }
                Ok(())
            }
            Err(e) => {
                self.store_outcome("report", Err(&e));
                let message = e.to_string();
                let mut state = self.lock();
                // Once per distinct error: a missing permission fails every poll.
                if state.report_error.as_ref() != Some(&message) {
                    tracing::warn!(error = %e, "could not report this task's generation to the store");
                }
                state.report_error = Some(message);
                Err(e)
            }
        }
    }

    /// Whether this task stands in for `writer` at the App Mesh reconcile
    /// (see [`stands_in`]). Only once the decision has been in force here
    /// for as long as a report takes to go stale: by then every live task's
    /// report has been read (a writer that just started and decided is not
    /// taken for gone before its first report came). Without the fleet's
    /// reports (the Cloud Map store keeps none; a DynamoDB store before the
    /// first one is read) every task does: a task cannot tell whether the
    /// writer is gone. Never on a store of this task's own (every decision
    /// in force is its own there), nor while this task drains.
    ///
    /// A writer that reports its own syncs failing is known alive: then no
    /// settling is waited for, so that its decisions reach the route
    /// through a stand-in even when they come faster than that (a rollout's
    /// steps on a task whose `[appmesh]` is broken).
    pub fn stands_in_for(&self, writer: &str) -> bool {
        if !self.store.shared() || self.is_draining() {
            return false;
        }
        let state = self.lock();
        let now = unix_ms();
        let stale_after = self.report_stale_after(&state);
        let settled = Duration::from_millis(now.saturating_sub(state.applied_at_ms)) >= stale_after;
        let reports = state.fleet.as_deref();
        let failing = reports.is_some_and(|r| writer_failing(writer, r, now, stale_after));
        (settled || failing)
            && reports
                .is_none_or(|reports| stands_in(&self.writer, writer, reports, now, stale_after))
    }

    /// Whether `writer` (of a decision in force here) reports that its own
    /// App Mesh syncs fail (see [`writer_failing`]).
    pub fn writer_fails_route_syncs(&self, writer: &str) -> bool {
        if !self.store.shared() {
            return false;
        }
        let state = self.lock();
        let stale_after = self.report_stale_after(&state);
        state
            .fleet
            .as_deref()
            .is_some_and(|r| writer_failing(writer, r, unix_ms(), stale_after))
    }

    /// Makes the decision in force look applied `ago` earlier (tests of what
    /// waits for a decision to settle).
    #[cfg(test)]
    pub(crate) fn backdate_applied(&self, ago: Duration) {
        let mut state = self.lock();
        state.applied_at_ms = state.applied_at_ms.saturating_sub(ago.as_millis() as u64);
    }

    /// Asks the store upkeep to report now (a decision was applied, draining began).
    pub(super) fn report_soon(&self) {
        self.report_wake.notify_one();
    }

    /// Removes this task's report from the store (the task stops), best
    /// effort and bounded: a report left behind goes stale and is pruned.
    pub async fn withdraw_report(&self) {
        match tokio::time::timeout(WITHDRAW_LIMIT, self.store.withdraw(&self.writer)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not remove this task's report"),
            Err(_) => tracing::warn!("removing this task's report timed out"),
        }
    }

    /// The fleet gauges (before a scrape).
    pub(super) fn publish_fleet_gauges(&self, fleet: &FleetStatus) {
        let fresh = fleet.tasks.iter().filter(|t| !t.stale).count();
        metrics::gauge!(names::FLEET_TASKS).set(fresh as f64);
        metrics::gauge!(names::FLEET_CONVERGED).set(if fleet.converged { 1.0 } else { 0.0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(task: &str, generation: u64, reported_at_ms: u64) -> TaskReport {
        TaskReport {
            task: task.into(),
            generation,
            reported_at_ms,
            applied_at_ms: 0,
            ready: true,
            draining: false,
            degraded: false,
            version: "x".into(),
            appmesh_failing: false,
        }
    }

    const BOUND: Duration = Duration::from_secs(11);

    #[test]
    fn own_task_is_first_and_live_even_when_the_store_holds_an_older_report() {
        let stored = [report("b", 3, 99_000), report("a", 1, 10_000)];
        let view = fleet_view(report("a", 4, 100_000), Some(&stored), None, 100_000, BOUND);
        let names: Vec<_> = view.tasks.iter().map(|t| t.report.task.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(view.tasks[0].this_task && !view.tasks[0].stale);
        assert_eq!(view.tasks[0].report.generation, 4);
        assert!(!view.converged);
        assert_eq!(view.generation, None);
        assert!(view.reports_shared);
    }

    #[test]
    fn stale_reports_are_marked_and_left_out_of_convergence() {
        let stored = [report("b", 4, 95_000), report("c", 2, 88_999)];
        let view = fleet_view(report("a", 4, 100_000), Some(&stored), None, 100_000, BOUND);
        let c = &view.tasks[2];
        assert!(c.stale, "{c:?}");
        assert!((c.age_s - 11.001).abs() < 1e-9, "{c:?}");
        assert!(!view.tasks[1].stale);
        assert!(view.converged);
        assert_eq!(view.generation, Some(4));
        // Within the bound, c's older generation counts: not converged.
        let stored = [report("b", 4, 95_000), report("c", 2, 89_000)];
        let view = fleet_view(report("a", 4, 100_000), Some(&stored), None, 100_000, BOUND);
        assert!(!view.tasks[2].stale && !view.converged);
    }

    #[test]
    fn without_shared_reports_only_this_task_is_listed() {
        let view = fleet_view(report("a", 7, 100_000), None, None, 100_000, BOUND);
        assert_eq!(view.tasks.len(), 1);
        assert!(view.converged && !view.reports_shared);
        assert_eq!(view.generation, Some(7));
        // A shared store without reports: the others are unknown, never converged.
        let why = Some("no reports".to_string());
        let view = fleet_view(report("a", 7, 100_000), None, why.clone(), 100_000, BOUND);
        assert_eq!(view.tasks.len(), 1);
        assert!(!view.converged && view.generation.is_none());
        assert_eq!(view.note, why);
        // Once reports are read, the note goes.
        let view = fleet_view(report("a", 7, 100_000), Some(&[]), why, 100_000, BOUND);
        assert!(view.converged && view.note.is_none());
    }

    #[test]
    fn a_report_from_a_clock_ahead_is_fresh() {
        let stored = [report("b", 1, 105_000)];
        let view = fleet_view(report("a", 1, 100_000), Some(&stored), None, 100_000, BOUND);
        assert_eq!(view.tasks[1].age_s, 0.0);
        assert!(view.converged);
    }

    #[test]
    fn one_live_task_stands_in_for_a_writer_that_is_gone() {
        let now = 100_000;
        let live = |task: &str| report(task, 4, 99_000);
        let gone = report("w", 4, 80_000);
        // The writer reports live: it reconciles itself.
        let reports = [live("w"), live("b"), live("c")];
        assert!(!stands_in("b", "w", &reports, now, BOUND));
        // Its report went stale, or was withdrawn: the smallest live id.
        for reports in [
            vec![gone.clone(), live("b"), live("c")],
            vec![live("b"), live("c")],
        ] {
            assert!(stands_in("b", "w", &reports, now, BOUND), "{reports:?}");
            assert!(!stands_in("c", "w", &reports, now, BOUND), "{reports:?}");
        }
        // A draining writer is on its way out.
        let draining = TaskReport {
            draining: true,
            ..live("w")
        };
        assert!(stands_in("b", "w", &[draining, live("b")], now, BOUND));
        // A smaller id that is stale, draining, degraded or failing its
        // route syncs does not hold c back; this task's own stored report (older) never counts.
        let degraded = TaskReport {
            degraded: true,
            ..live("a")
        };
        let leaving = TaskReport {
            draining: true,
            ..live("b")
        };
        let failing = TaskReport {
            appmesh_failing: true,
            ..live("b0")
        };
        let reports = [
            report("a0", 4, 1),
            degraded,
            leaving,
            failing,
            live("c"),
            report("c", 1, 1),
            live("d"),
        ];
        assert!(stands_in("c", "w", &reports, now, BOUND));
        assert!(!stands_in("d", "w", &reports, now, BOUND));
        // A writer whose own syncs fail holds no one back.
        let failing_writer = TaskReport {
            appmesh_failing: true,
            ..live("w")
        };
        assert!(stands_in(
            "b",
            "w",
            &[failing_writer, live("b")],
            now,
            BOUND
        ));
        // Alone in the fleet.
        assert!(stands_in("c", "w", &[], now, BOUND));
    }

    #[test]
    fn the_bound_is_three_report_intervals_and_slack() {
        assert_eq!(stale_after(Duration::from_secs(2)), Duration::from_secs(11));
    }

    #[test]
    fn large_fleets_report_less_often_than_every_poll() {
        let poll = Duration::from_secs(2);
        for tasks in [1, 3, 20, 60] {
            assert_eq!(report_interval(poll, tasks), poll, "{tasks}");
        }
        assert_eq!(report_interval(poll, 100), Duration::from_secs(5));
        assert_eq!(report_interval(poll, 300), Duration::from_secs(45));
        // The write units per second the fleet's reports take stay bounded.
        for tasks in [1usize, 10, 63, 64, 100, 200, 300, 1000] {
            let every = report_interval(poll, tasks).as_secs_f64();
            let item_kb = (tasks as f64 * ENTRY_KB).ceil().max(1.0);
            let units = tasks as f64 / every * item_kb;
            assert!(units <= REPORT_WRITE_UNITS + 1e-9, "{tasks}: {units}");
        }
    }
}
