//! The driver on paused tokio time: a `Store` test double, a gateway's
//! control plane without sockets, and traffic fed straight into the
//! per-version counters.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::Config;
use crate::store::memory::MemoryStore;

use crate::test_recorder as recorder;

async fn control(store: Arc<MemoryStore>) -> Arc<Control> {
    let text = "[listener]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
                [split]\nstable = \"v1\"\n\
                [[versions]]\nname = \"v1\"\nweight = 100\nendpoints = [\"127.0.0.1:9\"]\n\
                [[versions]]\nname = \"v2\"\nweight = 0\nendpoints = [\"127.0.0.1:9\"]\n";
    let config = Config::parse(text, "test").unwrap();
    Control::start(config, store, "memory").await.unwrap()
}

/// A control plane on `store` with its driver running and [`PLAN`] started.
async fn started(store: Arc<MemoryStore>) -> Arc<Control> {
    let control = control(store).await;
    tokio::spawn(run(control.clone()));
    control.start_rollout(PLAN.as_bytes()).await.unwrap();
    control
}

const PLAN: &str =
    r#"{"canary": "v2", "steps": [10, 50, 100], "interval_s": 10, "min_requests": 50}"#;

/// One second of traffic: `per_s` requests split by the weights in force,
/// every `fail_every`-th canary request a 500, canary latency `canary_ms`.
fn second_of_traffic(control: &Control, per_s: u64, fail_every: u64, canary_ms: u64) {
    let snapshot = control.snapshot_cell().load_full();
    let total: u64 = snapshot.versions.iter().map(|v| u64::from(v.weight)).sum();
    for v in snapshot.versions.iter() {
        let n = per_s * u64::from(v.weight) / total.max(1);
        for i in 1..=n {
            let (status, ms) = if v.name == "v2" {
                (
                    if fail_every > 0 && i.is_multiple_of(fail_every) {
                        500
                    } else {
                        200
                    },
                    canary_ms,
                )
            } else {
                (200, 3)
            };
            v.analysis.record(status, Duration::from_millis(ms));
        }
    }
}

async fn run_for(
    control: &Arc<Control>,
    seconds: u64,
    per_s: u64,
    fail_every: u64,
    canary_ms: u64,
) {
    for _ in 0..seconds {
        second_of_traffic(control, per_s, fail_every, canary_ms);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn phase(control: &Control) -> Phase {
    control.rollout_view().map(|v| v.phase).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_healthy_canary_walks_every_step_and_is_promoted() {
    let store = Arc::new(MemoryStore::default());
    let control = started(store.clone()).await;
    assert_eq!(control.weights().weights["v2"], 10);
    run_for(&control, 11, 1000, 0, 3).await;
    assert_eq!(
        control.rollout().unwrap().step,
        1,
        "{:?}",
        control.rollout_view()
    );
    assert_eq!(control.weights().weights["v2"], 50);
    run_for(&control, 25, 1000, 0, 3).await;
    let r = control.rollout().unwrap();
    assert_eq!(r.phase, Phase::Succeeded);
    let w = control.weights();
    assert_eq!(
        (w.stable.as_str(), w.weights["v2"], w.weights["v1"]),
        ("v2", 100, 0)
    );
    // Every step is in the history, on the plan's clock, and in the store.
    let steps: Vec<usize> = r.history.iter().map(|h| h.0).collect();
    assert_eq!(steps, vec![0, 1, 2]);
    assert!(
        r.history.windows(2).all(|w| w[1].1 - w[0].1 >= 10_000),
        "{:?}",
        r.history
    );
    let stored = store.stored().unwrap();
    assert_eq!(stored.rollout.unwrap().phase, Phase::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn a_failing_canary_is_aborted_after_one_interval() {
    let control = started(Arc::new(MemoryStore::default())).await;
    run_for(&control, 11, 1000, 5, 3).await;
    let view = control.rollout_view().unwrap();
    assert_eq!(view.phase, Phase::Aborted, "{view:?}");
    assert!(
        view.abort_reason
            .as_deref()
            .unwrap()
            .contains("max_error_rate"),
        "{view:?}"
    );
    // The canary's share is the one it has now, rolled back; `step` still
    // names the step it was aborted at.
    assert_eq!((view.step, view.share), (0, 0.0), "{view:?}");
    let w = control.weights();
    assert_eq!((w.weights["v1"], w.weights["v2"]), (100, 0));
    let a = view.last_analysis.unwrap();
    assert_eq!(a.analysis.canary.errors * 5, a.analysis.canary.requests);
}

#[tokio::test(start_paused = true)]
async fn too_little_traffic_holds_and_more_evidence_moves_on() {
    let control = started(Arc::new(MemoryStore::default())).await;
    // 10% of 20 a second: 20 canary requests in the first window, 50 needed.
    run_for(&control, 11, 20, 0, 3).await;
    assert_eq!(phase(&control), Phase::Holding);
    let view = control.rollout_view().unwrap();
    assert!(view.why.unwrap().contains("not enough evidence"));
    assert_eq!(view.step, 0);
    // The window grows while the step holds: enough after three intervals.
    run_for(&control, 20, 20, 0, 3).await;
    assert_eq!(control.rollout().unwrap().step, 1);
    assert_eq!(phase(&control), Phase::Progressing);
}

/// The phase gauge follows this task's view of the phase as soon as it
/// changes: a hold lifted when the next step begins reads `progressing` at
/// once, as `GET /rollout` does, not a whole step later.
#[tokio::test(start_paused = true)]
async fn the_phase_gauge_follows_a_lifted_hold_at_once() {
    let recorder = recorder::CountingRecorder::default();
    let _local = metrics::set_default_local_recorder(&recorder);
    let gauge = |p: Phase| recorder.gauge(crate::metrics::ROLLOUT_PHASE, &[("phase", p.as_str())]);
    let control = started(Arc::new(MemoryStore::default())).await;
    run_for(&control, 11, 20, 0, 3).await;
    assert_eq!(phase(&control), Phase::Holding);
    assert_eq!(gauge(Phase::Holding), Some(1.0));
    // More evidence: the step is taken at one of the next looks.
    for _ in 0..40 {
        if control.rollout().unwrap().step == 1 {
            break;
        }
        run_for(&control, 1, 20, 0, 3).await;
    }
    assert_eq!(control.rollout().unwrap().step, 1);
    assert_eq!(phase(&control), Phase::Progressing);
    assert_eq!(
        (gauge(Phase::Progressing), gauge(Phase::Holding)),
        (Some(1.0), Some(0.0)),
        "{:?}",
        control.rollout_view()
    );
}

#[tokio::test(start_paused = true)]
async fn a_slower_canary_is_aborted_on_the_p99_ratio() {
    let control = started(Arc::new(MemoryStore::default())).await;
    run_for(&control, 11, 1000, 0, 40).await;
    let view = control.rollout_view().unwrap();
    assert_eq!(view.phase, Phase::Aborted);
    assert!(view.abort_reason.unwrap().contains("max_p99_ratio"));
}

#[tokio::test(start_paused = true)]
async fn pause_stops_the_clock_and_resume_restarts_the_window() {
    let control = started(Arc::new(MemoryStore::default())).await;
    control
        .rollout_action(crate::control::rollout::Action::Pause)
        .await
        .unwrap();
    run_for(&control, 30, 1000, 0, 3).await;
    assert_eq!(
        (phase(&control), control.rollout().unwrap().step),
        (Phase::Paused, 0)
    );
    control
        .rollout_action(crate::control::rollout::Action::Resume)
        .await
        .unwrap();
    run_for(&control, 9, 1000, 0, 3).await;
    assert_eq!(control.rollout().unwrap().step, 0);
    run_for(&control, 2, 1000, 0, 3).await;
    assert_eq!(control.rollout().unwrap().step, 1);
}

/// A pause stops the step's clock, not the abort checks: a canary that
/// goes bad while paused is rolled back an interval after the pause, as it
/// would be while progressing.
#[tokio::test(start_paused = true)]
async fn a_canary_that_fails_while_paused_is_aborted() {
    let control = started(Arc::new(MemoryStore::default())).await;
    run_for(&control, 3, 1000, 0, 3).await;
    control
        .rollout_action(crate::control::rollout::Action::Pause)
        .await
        .unwrap();
    let paused_at = control.rollout().unwrap().paused_at_ms.unwrap();
    // Every canary request fails from the pause on.
    run_for(&control, 11, 1000, 1, 3).await;
    let view = control.rollout_view().unwrap();
    assert_eq!(view.phase, Phase::Aborted, "{view:?}");
    assert!(
        view.abort_reason
            .as_deref()
            .is_some_and(|r| r.contains("max_error_rate")),
        "{view:?}"
    );
    assert_eq!(control.weights().weights["v2"], 0);
    let a = view.last_analysis.unwrap();
    assert_eq!(a.analysis.verdict, Verdict::Abort);
    // Judged on the window since the pause, an interval after it.
    assert!(
        a.since_ms >= paused_at && a.at_ms >= paused_at + 10_000,
        "{a:?}"
    );
    assert_eq!(a.analysis.canary.errors, a.analysis.canary.requests);
}

/// A healthy paused canary is judged every interval, but a pass takes no
/// step: the rollout stays paused at its step until resumed.
#[tokio::test(start_paused = true)]
async fn a_healthy_paused_canary_is_judged_but_never_advanced() {
    let control = started(Arc::new(MemoryStore::default())).await;
    control
        .rollout_action(crate::control::rollout::Action::Pause)
        .await
        .unwrap();
    let paused_at = control.rollout().unwrap().paused_at_ms.unwrap();
    run_for(&control, 35, 1000, 0, 3).await;
    let view = control.rollout_view().unwrap();
    assert_eq!((view.phase, view.step), (Phase::Paused, 0), "{view:?}");
    assert_eq!(control.weights().weights["v2"], 10);
    let a = view.last_analysis.clone().unwrap();
    assert_eq!(a.analysis.verdict, Verdict::Pass, "{view:?}");
    // Three windows of an interval each since the pause: a passing window
    // is followed by a fresh one (no paused window grows past its interval).
    assert!(a.at_ms >= paused_at + 30_000, "{a:?}");
    assert!(a.at_ms - a.since_ms <= 10_000, "{a:?}");
    assert!(
        view.why
            .as_deref()
            .is_some_and(|w| w.contains("abort checks still run")),
        "{view:?}"
    );
}

/// With a fleet, any task that finds the paused canary bad writes the
/// abort, and every task follows it.
#[tokio::test(start_paused = true)]
async fn an_abort_of_a_paused_rollout_decided_by_one_gateway_reaches_the_other() {
    let (store, a, b) = fleet().await;
    a.start_rollout(PLAN.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    b.rollout_action(crate::control::rollout::Action::Pause)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(phase(&a), Phase::Paused);
    // Only A serves traffic, and its canary fails: B has no evidence.
    run_for(&a, 11, 1000, 1, 3).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stored = store.stored().unwrap();
    assert_eq!(stored.rollout.unwrap().phase, Phase::Aborted);
    for c in [&a, &b] {
        assert_eq!(phase(c), Phase::Aborted);
        assert_eq!(c.weights().weights["v2"], 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_canary_without_healthy_endpoints_is_given_no_more_traffic() {
    use crate::discovery::EndpointSink;
    let control = started(Arc::new(MemoryStore::default())).await;
    run_for(&control, 9, 1000, 0, 3).await;
    // Its endpoints go away just before the step is judged: good figures,
    // but no next step onto nothing.
    control.endpoints_discovered("v2", Vec::new());
    run_for(&control, 2, 1000, 0, 3).await;
    let view = control.rollout_view().unwrap();
    assert_eq!((view.phase, view.step), (Phase::Holding, 0), "{view:?}");
    assert!(view.why.unwrap().contains("no healthy endpoints"));
    assert_eq!(control.weights().weights["v2"], 10);
}

/// A rollout started while its canary has no healthy endpoint (discovery
/// has not seen the new tasks yet) is accepted before its first step: the
/// canary at weight 0, stored so that every task and a restart see it,
/// paused, resumed and aborted like any; step 0 is taken once the canary
/// has a healthy endpoint.
#[tokio::test(start_paused = true)]
async fn a_rollout_onto_a_canary_without_healthy_endpoints_waits_for_one_at_weight_0() {
    use crate::control::rollout::Action;
    use crate::discovery::EndpointSink;
    let store = Arc::new(MemoryStore::default());
    let control = control(store.clone()).await;
    tokio::spawn(run(control.clone()));
    control.endpoints_discovered("v2", Vec::new());
    let view = control.start_rollout(PLAN.as_bytes()).await.unwrap();
    assert_eq!(
        (view.phase, view.step, view.share),
        (Phase::Holding, 0, 0.0),
        "{view:?}"
    );
    assert!(view.history.is_empty(), "{view:?}");
    let why = view.why.unwrap_or_default();
    assert!(why.contains("`v2` has no healthy endpoints"), "{why}");
    let stored = store.stored().unwrap();
    assert_eq!(stored.weights["v2"], 0);
    let r = stored.rollout.unwrap();
    assert!(
        r.phase == Phase::Progressing && !r.first_step_taken(),
        "{r:?}"
    );
    // Another task (or this one restarted) reads the same state.
    let other = self::control(store.clone()).await;
    assert_eq!(other.rollout().unwrap(), r);
    assert_eq!(other.weights().weights["v2"], 0);

    // Intervals go by, with traffic: all of it on stable, no step taken.
    run_for(&control, 25, 1000, 0, 3).await;
    let view = control.rollout_view().unwrap();
    assert_eq!((view.phase, view.share), (Phase::Holding, 0.0), "{view:?}");
    assert!(view.history.is_empty() && view.last_analysis.is_none());
    assert_eq!(control.weights().weights["v2"], 0);
    assert_eq!(control.rollout_windows().read("v2").requests, 0);

    // Paused and resumed in that state: still no traffic to the canary.
    control.rollout_action(Action::Pause).await.unwrap();
    assert_eq!(phase(&control), Phase::Paused);
    control.rollout_action(Action::Resume).await.unwrap();
    assert!(until(|| phase(&control) == Phase::Holding).await);
    assert_eq!(control.weights().weights["v2"], 0);

    // Discovery sees the canary's task: step 0 is taken.
    control.endpoints_discovered("v2", vec!["127.0.0.1:9".parse().unwrap()]);
    assert!(until(|| control.weights().weights["v2"] == 10).await);
    let view = control.rollout_view().unwrap();
    assert_eq!(
        (view.phase, view.step, view.share, view.history.len()),
        (Phase::Progressing, 0, 10.0, 1),
        "{view:?}"
    );
    assert_eq!(store.stored().unwrap().weights["v2"], 10);
    // And it walks on from there.
    run_for(&control, 11, 1000, 0, 3).await;
    assert_eq!(control.rollout().unwrap().step, 1);

    // An abort works before the first step too.
    control.rollout_action(Action::Abort).await.unwrap();
    control.endpoints_discovered("v2", Vec::new());
    control.start_rollout(PLAN.as_bytes()).await.unwrap();
    assert_eq!(phase(&control), Phase::Holding);
    control.rollout_action(Action::Abort).await.unwrap();
    let view = control.rollout_view().unwrap();
    assert_eq!((view.phase, view.share), (Phase::Aborted, 0.0), "{view:?}");
    assert_eq!(control.weights().weights["v2"], 0);
}

/// Two gateways' control planes on one shared store, each with its driver
/// and a store poll every 500 ms.
async fn fleet() -> (Arc<MemoryStore>, Arc<Control>, Arc<Control>) {
    let store = Arc::new(MemoryStore::default());
    let (a, b) = (control(store.clone()).await, control(store.clone()).await);
    for c in [&a, &b] {
        tokio::spawn(run(c.clone()));
        let c = c.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = c.sync_from_store().await;
            }
        });
    }
    (store, a, b)
}

#[tokio::test(start_paused = true)]
async fn a_fleet_steps_on_one_clock_and_takes_each_step_once() {
    let (store, a, b) = fleet().await;
    b.start_rollout(PLAN.as_bytes()).await.unwrap();
    for _ in 0..40 {
        second_of_traffic(&a, 1000, 0, 3);
        second_of_traffic(&b, 1000, 0, 3);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let stored = store.stored().unwrap().rollout.unwrap();
    assert_eq!(stored.phase, Phase::Succeeded);
    let steps: Vec<usize> = stored.history.iter().map(|h| h.0).collect();
    assert_eq!(steps, vec![0, 1, 2], "{:?}", stored.history);
    // Each step an interval after the one before: never two at once.
    assert!(
        stored.history.windows(2).all(|w| w[1].1 - w[0].1 >= 10_000),
        "{:?}",
        stored.history
    );
    for c in [&a, &b] {
        assert_eq!(c.rollout().unwrap().phase, Phase::Succeeded);
        assert_eq!(c.weights().stable, "v2");
    }
}

#[tokio::test(start_paused = true)]
async fn an_abort_decided_by_one_gateway_reaches_the_other() {
    let (store, a, b) = fleet().await;
    a.start_rollout(PLAN.as_bytes()).await.unwrap();
    // Only A serves traffic, and its canary fails: B has no evidence.
    run_for(&a, 11, 1000, 5, 3).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let on_b = b.rollout_view().unwrap();
    assert_eq!(on_b.phase, Phase::Aborted, "{on_b:?}");
    assert!(
        on_b.last_analysis
            .is_none_or(|a| a.analysis.verdict != Verdict::Abort)
    );
    assert_eq!(b.weights().weights["v2"], 0);
    let stored = store.stored().unwrap();
    assert_eq!(stored.rollout.as_ref().unwrap().phase, Phase::Aborted);

    // A racing write puts the running rollout back (a lost abort): the
    // gateway that aborted it writes the abort again.
    let mut undone = stored.clone();
    undone.generation += 1;
    undone.weights.insert("v1".into(), 90);
    undone.weights.insert("v2".into(), 10);
    if let Some(r) = undone.rollout.as_mut() {
        r.phase = Phase::Progressing;
        r.reason = None;
    }
    *store.doc.lock().unwrap() = Some(undone);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = store.stored().unwrap();
    assert_eq!(again.rollout.unwrap().phase, Phase::Aborted);
    assert_eq!(again.weights["v2"], 0);
    assert!(again.generation > stored.generation + 1);
    assert_eq!(b.weights().weights["v2"], 0);
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_removes_the_canary_aborts_its_rollout() {
    let control = started(Arc::new(MemoryStore::default())).await;
    let text = "[listener]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
                [split]\nstable = \"v1\"\n\
                [[versions]]\nname = \"v1\"\nweight = 100\nendpoints = [\"127.0.0.1:9\"]\n";
    let status = control.reload(Config::parse(text, "test"), "test").await;
    assert!(status.ok, "{status:?}");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let view = control.rollout_view().unwrap();
    assert_eq!(view.phase, Phase::Aborted, "{view:?}");
    assert!(
        view.abort_reason
            .unwrap()
            .contains("`v2` is no longer in the config")
    );
    // v1 alone carries the traffic (at the weight the step gave it: removing
    // a version is no edit of the others' weights).
    let weights = control.weights().weights;
    assert_eq!(weights.keys().collect::<Vec<_>>(), ["v1"]);
    assert!(weights["v1"] > 0, "{weights:?}");
}

#[tokio::test(start_paused = true)]
async fn an_abort_applies_at_once_while_the_store_is_down_and_lands_when_it_returns() {
    let store = Arc::new(MemoryStore::default());
    let control = started(store.clone()).await;
    tokio::spawn(crate::control::keep_store(
        control.clone(),
        Some(Duration::from_millis(500)),
    ));
    store.set_down(true);
    run_for(&control, 11, 1000, 5, 3).await;
    // Applied here at once, though nothing could be written.
    let view = control.rollout_view().unwrap();
    assert_eq!(view.phase, Phase::Aborted, "{view:?}");
    assert_eq!(control.weights().weights["v2"], 0);
    let stored = store.stored().unwrap();
    assert_eq!(stored.rollout.as_ref().unwrap().phase, Phase::Progressing);
    // The store comes back: the abort is written.
    store.set_down(false);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stored = store.stored().unwrap();
    assert_eq!(stored.rollout.unwrap().phase, Phase::Aborted);
    assert_eq!(stored.weights["v2"], 0);
}

/// Lets the spawned tasks run (paused time: no real waiting) until `what`
/// holds, for up to 2 s of the test's clock.
async fn until(what: impl Fn() -> bool) -> bool {
    for _ in 0..2_000 {
        if what() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    what()
}

/// During a deployment that adds v3, a task of the older task definition
/// (no v3 in its config) adopts the rollout of v3 that a newer task started:
/// it holds (it can neither serve nor judge the canary) and never aborts
/// it; the newer tasks walk it on.
#[tokio::test(start_paused = true)]
async fn a_task_without_the_canary_holds_and_never_aborts_its_rollout() {
    let store = Arc::new(MemoryStore::default());
    let three = "[listener]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
                 [split]\nstable = \"v1\"\n\
                 [[versions]]\nname = \"v1\"\nweight = 100\nendpoints = [\"127.0.0.1:9\"]\n\
                 [[versions]]\nname = \"v2\"\nweight = 0\nendpoints = [\"127.0.0.1:9\"]\n\
                 [[versions]]\nname = \"v3\"\nweight = 0\nendpoints = [\"127.0.0.1:9\"]\n";
    let newer = Control::start(
        Config::parse(three, "test").unwrap(),
        store.clone(),
        "memory",
    )
    .await
    .unwrap();
    let older = control(store.clone()).await;
    for c in [&newer, &older] {
        tokio::spawn(run(c.clone()));
    }
    newer
        .start_rollout(PLAN.replace("v2", "v3").as_bytes())
        .await
        .unwrap();
    older.sync_from_store().await.unwrap();
    assert!(older.rollout().is_some());
    let settled = || {
        older
            .rollout_view()
            .is_some_and(|v| v.phase == Phase::Holding)
            || older.running_rollout().is_none()
    };
    assert!(until(settled).await);
    let view = older.rollout_view().unwrap();
    assert_eq!(view.phase, Phase::Holding, "{view:?}");
    assert!(
        view.why.as_deref().unwrap_or("").contains("`v3`"),
        "{view:?}"
    );
    assert_eq!(
        store.stored().unwrap().rollout.unwrap().phase,
        Phase::Progressing
    );

    // The newer task, which serves the canary, judges it and steps on.
    run_for(&newer, 11, 1000, 0, 3).await;
    older.sync_from_store().await.unwrap();
    let stored = store.stored().unwrap().rollout.unwrap();
    assert_eq!((stored.phase, stored.step), (Phase::Progressing, 1));
    assert_eq!(older.rollout_view().unwrap().phase, Phase::Holding);
    assert!(newer.weights().weights["v3"] > 0);
}

/// A hold's webhook event carries the phase `GET /rollout` shows for it
/// (`holding`, `waiting_gate`), not the stored `progressing`.
#[test]
fn a_holds_event_carries_the_holds_phase() {
    let plan = crate::rollout::plan::Plan {
        canary: "v2".into(),
        stable: "v1".into(),
        settings: Default::default(),
    };
    let r = RolloutState::start(plan, 1_000);
    for (phase, kind, shown) in [
        (Phase::Holding, "holding", "holding"),
        (Phase::WaitingGate, "gate_refused", "waiting_gate"),
    ] {
        let e = hold_event(&r, phase, "why");
        assert_eq!(
            (
                e["event"].as_str(),
                e["phase"].as_str(),
                e["reason"].as_str()
            ),
            (Some(kind), Some(shown), Some("why")),
            "{e}"
        );
        assert_eq!(e["canary"], "v2");
    }
}

/// One gateway on a store without compare-and-set (like Cloud Map's), with
/// its driver and a store poll every 500 ms.
async fn polled_without_compare_and_set() -> (Arc<MemoryStore>, Arc<Control>) {
    let store = Arc::new(MemoryStore::default());
    store
        .no_compare_and_set
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let control = control(store.clone()).await;
    tokio::spawn(run(control.clone()));
    let c = control.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = c.sync_from_store().await;
        }
    });
    (store, control)
}

/// Cloud Map: this gateway (B) aborted the rollout on its evidence while
/// another (A, whose writer id sorts first) wrote the same generation; both
/// read their own write back, the store kept A's. B adopts A's decision and
/// its driver decides the abort again, one generation up: whether A's was the
/// next step or the rollout's automated success, the abort wins.
#[tokio::test(start_paused = true)]
async fn an_abort_the_store_lost_to_a_same_generation_write_is_decided_again() {
    for success in [false, true] {
        let (store, b) = polled_without_compare_and_set().await;
        b.start_rollout(PLAN.as_bytes()).await.unwrap();
        let started = store.stored().unwrap();
        run_for(&b, 11, 1000, 5, 3).await;
        let own = store.stored().unwrap();
        assert_eq!(own.rollout.as_ref().unwrap().phase, Phase::Aborted);
        assert_eq!(own.writer, b.writer());
        let now = b.rollout_clock().now_ms();
        let r = started.rollout.clone().unwrap();
        let (stable, weights, rollout) = if success {
            let done = r.succeeded(now);
            let weights = std::collections::BTreeMap::from([("v1".into(), 0), ("v2".into(), 100)]);
            ("v2", weights, done)
        } else {
            let next = r.advanced(now);
            ("v1", next.weights(&started.weights), next)
        };
        let kept = crate::store::WeightsDoc {
            stable: stable.into(),
            weights,
            generation: own.generation,
            updated_at_ms: own.updated_at_ms,
            source: crate::control::rollout::SOURCE.into(),
            writer: "!task-a".into(),
            config_weights: None,
            config_stable: None,
            refused_config: None,
            rollout: Some(rollout),
        };
        assert!(kept.writer.as_str() < b.writer());
        *store.doc.lock().unwrap() = Some(kept);
        // Two polls, then the driver's abort.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let again = store.stored().unwrap();
        let phase = again.rollout.as_ref().map(|r| r.phase);
        assert_eq!(
            (
                again.generation,
                phase,
                again.stable.as_str(),
                again.weights["v2"]
            ),
            (own.generation + 1, Some(Phase::Aborted), "v1", 0),
            "success: {success}: {again:?}"
        );
        assert_eq!(again.writer, b.writer());
        let in_force = b.weights();
        assert_eq!(
            (
                in_force.generation,
                in_force.stable.as_str(),
                in_force.weights["v2"]
            ),
            (own.generation + 1, "v1", 0)
        );
    }
}
