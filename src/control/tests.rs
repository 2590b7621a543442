//! Fleet decisions against a shared `Store` test double: total order,
//! newer-only apply, lost races, rollback without the store, degraded start.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Control, ControlError};
use crate::config::Config;
use crate::store::Store;
use crate::store::memory::{MemoryStore, doc};

const CONFIG: &str = "[listener]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
    [split]\nstable = \"v1\"\n\
    [store]\nkind = \"dynamodb\"\ntable = \"t\"\nkey = \"svc\"\nboot_timeout = \"300ms\"\n\
    [[versions]]\nname = \"v1\"\nweight = 90\nendpoints = [\"127.0.0.1:1\"]\n\
    [[versions]]\nname = \"v2\"\nweight = 10\nendpoints = [\"127.0.0.1:2\"]\n";

async fn task(store: &Arc<MemoryStore>) -> Arc<Control> {
    let config = Config::parse(CONFIG, "test").unwrap();
    Control::start(config, store.clone() as Arc<dyn Store>, "dynamodb")
        .await
        .unwrap()
}

fn w(v1: u32, v2: u32) -> BTreeMap<String, u32> {
    BTreeMap::from([("v1".to_string(), v1), ("v2".to_string(), v2)])
}

#[test]
fn decisions_are_ordered_by_generation_then_writer_then_time() {
    assert!(doc(2, "a", 0).is_newer_than(&doc(1, "z", 0)));
    assert!(doc(2, "b", 0).is_newer_than(&doc(2, "a", 0)));
    let mut later = doc(2, "a", 0);
    later.updated_at_ms += 1;
    assert!(later.is_newer_than(&doc(2, "a", 0)));
    assert!(!doc(2, "a", 0).is_newer_than(&doc(2, "a", 0)));
    assert!(!doc(1, "z", 0).is_newer_than(&doc(2, "a", 0)));
}

#[tokio::test]
async fn an_older_document_from_the_store_is_ignored() {
    let store = Arc::new(MemoryStore::default());
    let control = task(&store).await;
    *store.doc.lock().unwrap() = Some(doc(5, "other", 30));
    control.sync_from_store().await.unwrap();
    assert_eq!(control.weights().generation, 5);
    assert_eq!(control.weights().weights, w(70, 30));

    // A stale read (an older generation) never reverts the decision in force.
    *store.stale.lock().unwrap() = Some(doc(4, "other", 10));
    control.sync_from_store().await.unwrap();
    assert_eq!(control.weights().weights, w(70, 30));
    assert_eq!(control.weights().generation, 5);
    // Nor does one of the same generation that sorts before it.
    *store.stale.lock().unwrap() = Some(doc(5, "aaa", 10));
    control.sync_from_store().await.unwrap();
    assert_eq!(control.weights().weights, w(70, 30));
    // One that sorts after it (same generation, a later writer id) applies.
    *store.stale.lock().unwrap() = Some(doc(5, "zzz", 20));
    control.sync_from_store().await.unwrap();
    assert_eq!(control.weights().weights, w(80, 20));
}

#[tokio::test]
async fn a_change_on_a_task_that_has_not_polled_yet_builds_on_the_stores_decision() {
    // Two tasks behind a load balancer, polling rarely: `ctl weights set`
    // twice in a row lands on a, then on b, which has not polled a's change.
    let store = Arc::new(MemoryStore::default());
    let a = task(&store).await;
    let b = task(&store).await;
    let first = a
        .set_weights(
            BTreeMap::from([("v1".into(), 80), ("v2".into(), 20)]),
            "admin",
        )
        .await
        .unwrap();
    assert_eq!(first.generation, 1);
    assert_eq!(b.weights().generation, 0, "b has not polled a's change");
    // b reads the store first and makes its change on a's decision: v1,
    // which the request does not name, keeps a's 80 (not b's 90).
    let second = b
        .set_weights(BTreeMap::from([("v2".into(), 25)]), "admin")
        .await
        .unwrap();
    assert_eq!(second.generation, 2);
    assert_eq!(second.weights, w(80, 25));
    assert_eq!(b.weights().weights, w(80, 25));
    let stored = store.stored().unwrap();
    assert_eq!((stored.generation, stored.weights), (2, w(80, 25)));
    assert_eq!(stored.writer, b.writer());
    // A promotion through b's peer builds on it the same way.
    let promoted = a.promote("v2", "admin").await.unwrap();
    assert_eq!(promoted.generation, 3);
    assert_eq!(promoted.weights, w(0, 105));
}

#[tokio::test]
async fn two_tasks_deciding_at_once_one_gets_a_conflict() {
    let store = Arc::new(MemoryStore::default());
    *store.doc.lock().unwrap() = Some(doc(1, "seed", 10));
    let a = task(&store).await;
    let b = task(&store).await;
    let won = a.set_weights(w(75, 25), "admin").await.unwrap();
    assert_eq!(won.generation, 2);
    // b read the store before a's write landed (a real race): its
    // conditional write is refused, and it now runs a's decision.
    *store.stale.lock().unwrap() = Some(doc(1, "seed", 10));
    match b.set_weights(w(50, 50), "admin").await {
        Err(ControlError::Conflict(current)) => {
            assert_eq!(current.generation, 2);
            assert_eq!(current.weights, w(75, 25));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(b.weights().weights, w(75, 25));
    assert_eq!(store.stored().unwrap().weights, w(75, 25));
    // The retry, made from the current decision, wins.
    *store.stale.lock().unwrap() = None;
    let retried = b.set_weights(w(50, 50), "admin").await.unwrap();
    assert_eq!(retried.generation, 3);
    assert_eq!(store.stored().unwrap().weights, w(50, 50));
    assert_eq!(store.stored().unwrap().writer, b.writer());
}

#[tokio::test]
async fn a_write_that_loses_the_race_after_reading_is_a_conflict() {
    let store = Arc::new(MemoryStore::default());
    let a = task(&store).await;
    // Another writer slips in between this task's read and its write: the
    // double's conditional write refuses it (like DynamoDB's).
    *store.doc.lock().unwrap() = Some(doc(3, "other", 40));
    *store.stale.lock().unwrap() = Some(doc(0, "other", 40));
    let result = a.set_weights(w(99, 1), "admin").await;
    assert!(
        matches!(result, Err(ControlError::Conflict(_))),
        "{result:?}"
    );
    assert_eq!(store.stored().unwrap().generation, 3);
    assert_eq!(store.saves.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_poll_in_flight_never_delays_a_rollback() {
    let store = Arc::new(MemoryStore::default());
    let control = task(&store).await;
    control.set_weights(w(50, 50), "admin").await.unwrap();
    store.stall_next_load.store(true, Ordering::SeqCst);
    let poll = {
        let control = control.clone();
        tokio::spawn(async move { control.sync_from_store().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!poll.is_finished(), "the poll is stalled in its store call");
    let view = tokio::time::timeout(Duration::from_secs(2), control.rollback("admin"))
        .await
        .expect("the rollback waited for the stalled poll")
        .unwrap();
    assert_eq!(view.weights, w(100, 0));
    assert_eq!(store.stored().unwrap().weights, w(100, 0));
    store.release.notify_one();
    poll.await.unwrap().unwrap();
    assert_eq!(control.weights().weights, w(100, 0));
}

#[tokio::test]
async fn a_rollback_applies_while_the_store_is_down_and_lands_when_it_returns() {
    let store = Arc::new(MemoryStore::default());
    let control = task(&store).await;
    control.set_weights(w(50, 50), "admin").await.unwrap();
    store.set_down(true);

    // Other changes need the store.
    let refused = control.set_weights(w(60, 40), "admin").await;
    assert!(
        matches!(refused, Err(ControlError::StoreLoad(_))),
        "{refused:?}"
    );
    let message = refused.unwrap_err().short();
    assert!(!message.contains("connection refused"), "{message}");

    let view = control.rollback("admin").await.unwrap();
    assert_eq!(view.weights, w(100, 0));
    assert_eq!(control.weights().weights, w(100, 0));
    let status = control.status();
    assert!(status.store.rollback_pending);
    assert!(
        status
            .warnings
            .iter()
            .any(|w| w.contains("rollback pending in the store")),
        "{:?}",
        status.warnings
    );
    // A poll while the store is down changes nothing and keeps it pending.
    assert!(control.sync_from_store().await.is_err());
    assert!(control.status().store.rollback_pending);

    // Meanwhile another task wrote a newer decision; the rollback still lands on top.
    *store.doc.lock().unwrap() = Some(doc(7, "other", 35));
    store.set_down(false);
    control.sync_from_store().await.unwrap();
    let stored = store.stored().unwrap();
    assert_eq!(stored.weights, w(100, 0));
    assert_eq!(stored.generation, 8);
    assert_eq!(stored.writer, control.writer());
    assert!(!control.status().store.rollback_pending);
    assert_eq!(control.weights().generation, 8);
}

/// At exit (SIGTERM), a rollback pending in the store is tried again every
/// quarter second while its write fails at once (a full disk): a store
/// that takes writes again within the limit (an operator made room) gets
/// it. Before, the one try failed and the task exited at once without it.
/// A store that never does is given up on at the retry limit.
#[tokio::test(start_paused = true)]
async fn a_rollback_pending_at_exit_is_tried_again_until_a_write_passes() {
    let store = Arc::new(MemoryStore::default());
    let control = task(&store).await;
    control.set_weights(w(50, 50), "admin").await.unwrap();
    store.set_down(true);
    control.rollback("admin").await.unwrap();
    assert!(control.rollback_pending());
    store.set_down(false);
    store.fail_saves.store(3, Ordering::SeqCst);
    let saves = store.saves.load(Ordering::SeqCst);
    control
        .flush_rollback_before_exit(Duration::from_secs(5), Duration::from_secs(5), false)
        .await;
    assert!(!control.rollback_pending(), "the rollback was not written");
    assert_eq!(store.fail_saves.load(Ordering::SeqCst), 0);
    assert_eq!(store.saves.load(Ordering::SeqCst), saves + 1);
    assert_eq!(store.stored().unwrap().weights, w(100, 0));

    // A write that keeps failing: tried for `retry_for`, not past it.
    control.set_weights(w(50, 50), "admin").await.unwrap();
    store.set_down(true);
    control.rollback("admin").await.unwrap();
    store.set_down(false);
    store.fail_saves.store(usize::MAX, Ordering::SeqCst);
    let start = tokio::time::Instant::now();
    control
        .flush_rollback_before_exit(Duration::from_secs(2), Duration::from_secs(1), true)
        .await;
    let took = start.elapsed();
    assert!(control.rollback_pending());
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1250),
        "{took:?}"
    );
    let tries = usize::MAX - store.fail_saves.load(Ordering::SeqCst);
    assert_eq!(tries, 5, "one try, then one every 250 ms for 1 s");
}

/// Polls (no sleep as synchronisation) until `what` holds, for up to 2 s.
async fn until(what: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline {
        if what() {
            return true;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    what()
}

#[tokio::test]
async fn a_rollback_applies_at_once_while_the_store_hangs() {
    let store = Arc::new(MemoryStore::default());
    let control = task(&store).await;
    control.set_weights(w(50, 50), "admin").await.unwrap();
    // The store's next answer never comes (an AWS call hanging until its
    // SDK timeouts): the rollback does not wait for it.
    store.stall_next_load.store(true, Ordering::SeqCst);
    let view = tokio::time::timeout(Duration::from_secs(2), control.rollback("admin"))
        .await
        .expect("the rollback waited for the hung store")
        .unwrap();
    assert_eq!(view.weights, w(100, 0));
    assert_eq!(view.stable, "v1");
    let snapshot = control.snapshot_cell().load_full();
    assert_eq!(
        snapshot.versions[0].weight, 100,
        "the data path rolled back"
    );
    assert_eq!(snapshot.versions[1].weight, 0);
    assert!(control.status().store.rollback_pending);
    assert_eq!(store.stored().unwrap().weights, w(50, 50));

    // The store answers again: the rollback lands.
    store.release.notify_one();
    control.sync_from_store().await.unwrap();
    let stored = store.stored().unwrap();
    assert_eq!(stored.weights, w(100, 0));
    assert_eq!(stored.writer, control.writer());
    assert!(!control.status().store.rollback_pending);
    assert_eq!(control.weights().generation, stored.generation);
}

#[tokio::test]
async fn a_rollback_never_waits_for_a_decision_stuck_on_the_store() {
    let store = Arc::new(MemoryStore::default());
    let control = task(&store).await;
    control.set_weights(w(50, 50), "admin").await.unwrap();
    store.stall_next_load.store(true, Ordering::SeqCst);
    let loads = store.loads.load(Ordering::SeqCst);
    // A change holds the decisions' turn while its store read hangs.
    let stuck = {
        let control = control.clone();
        tokio::spawn(async move { control.set_weights(w(60, 40), "admin").await })
    };
    assert!(until(|| store.loads.load(Ordering::SeqCst) > loads).await);
    assert!(!stuck.is_finished());
    let view = tokio::time::timeout(Duration::from_secs(2), control.rollback("admin"))
        .await
        .expect("the rollback waited for the decision stuck on the store")
        .unwrap();
    assert_eq!(view.weights, w(100, 0));
    assert_eq!(control.weights().weights, w(100, 0));

    // The stuck change completes after the rollback: the rollback came
    // first (409), and the change is neither applied nor written.
    store.release.notify_one();
    let late = stuck.await.unwrap();
    assert!(matches!(late, Err(ControlError::Conflict(_))), "{late:?}");
    assert_eq!(control.weights().weights, w(100, 0));
    // And the rollback lands on the decision before it in the store.
    control.sync_from_store().await.unwrap();
    let stored = store.stored().unwrap();
    assert_eq!(stored.weights, w(100, 0));
    assert_eq!(stored.generation, 2);
    assert!(!control.status().store.rollback_pending);
}

#[tokio::test]
async fn a_reload_writing_the_store_during_a_rollback_never_undoes_it() {
    let store = Arc::new(MemoryStore::default());
    let control = task(&store).await;
    store.stall_next_load.store(true, Ordering::SeqCst);
    let loads = store.loads.load(Ordering::SeqCst);
    // A file edit (v2 at 30) is a decision: its store read hangs.
    let edited = Config::parse(
        &CONFIG
            .replace("weight = 90", "weight = 70")
            .replace("weight = 10", "weight = 30"),
        "test",
    )
    .unwrap();
    let reload = {
        let control = control.clone();
        tokio::spawn(async move { control.reload(Ok(edited), "admin").await })
    };
    assert!(until(|| store.loads.load(Ordering::SeqCst) > loads).await);
    let view = tokio::time::timeout(Duration::from_secs(2), control.rollback("admin"))
        .await
        .expect("the rollback waited for the reload")
        .unwrap();
    assert_eq!(view.weights, w(100, 0));

    store.release.notify_one();
    let status = reload.await.unwrap();
    assert!(status.ok, "{status:?}");
    // The edit is in force rolled back: the rollback stays.
    assert_eq!(control.weights().weights, w(100, 0));
    assert_eq!(store.stored().unwrap().weights, w(70, 30));
    control.sync_from_store().await.unwrap();
    assert_eq!(store.stored().unwrap().weights, w(100, 0));
    assert_eq!(control.weights().weights, w(100, 0));
}

#[tokio::test]
async fn a_rollout_abort_applies_at_once_while_the_store_hangs() {
    use crate::rollout::state::Phase;
    let store = Arc::new(MemoryStore::default());
    let control = task(&store).await;
    let plan = br#"{"canary": "v2", "steps": [10, 50, 100], "interval_s": 10}"#;
    control.start_rollout(plan).await.unwrap();
    assert!(control.weights().weights["v2"] > 0);
    // POST /rollout/abort on a hung store: no store read before it applies.
    store.stall_next_load.store(true, Ordering::SeqCst);
    let view = tokio::time::timeout(
        Duration::from_secs(2),
        control.rollout_action(super::rollout::Action::Abort),
    )
    .await
    .expect("the abort waited for the hung store")
    .unwrap();
    assert_eq!(view.phase, Phase::Aborted);
    assert_eq!(control.weights().weights, w(100, 0));
    assert!(control.rollback_pending());

    store.release.notify_one();
    control.sync_from_store().await.unwrap();
    let stored = store.stored().unwrap();
    assert_eq!(stored.weights, w(100, 0));
    assert_eq!(stored.rollout.map(|r| r.phase), Some(Phase::Aborted));
    assert!(!control.rollback_pending());
}

#[tokio::test]
async fn a_pending_rollback_is_made_again_from_the_stores_latest_decision() {
    let store = Arc::new(MemoryStore::default());
    let control = task(&store).await;
    control.set_weights(w(50, 50), "admin").await.unwrap();
    store.set_down(true);
    let view = control.rollback("admin").await.unwrap();
    assert_eq!(view.weights, w(100, 0));
    assert!(control.status().store.rollback_pending);

    // Meanwhile another task promoted v2.
    let promoted = crate::store::WeightsDoc {
        stable: "v2".into(),
        ..doc(7, "other", 100)
    };
    *store.doc.lock().unwrap() = Some(promoted);
    store.set_down(false);
    control.sync_from_store().await.unwrap();
    // The rollback is that decision's: v2 stays stable and keeps the traffic.
    let stored = store.stored().unwrap();
    assert_eq!(stored.stable, "v2");
    assert_eq!(stored.weights, w(0, 100));
    assert_eq!(stored.generation, 8);
    assert_eq!(stored.writer, control.writer());
    assert_eq!(control.weights().stable, "v2");
    assert_eq!(control.weights().weights, w(0, 100));
    assert!(!control.status().store.rollback_pending);
}

#[tokio::test]
async fn a_rollback_on_a_degraded_task_never_writes_the_configs_weights() {
    let store = Arc::new(MemoryStore::default());
    *store.doc.lock().unwrap() = Some(crate::store::WeightsDoc {
        stable: "v2".into(),
        ..doc(4, "other", 100)
    });
    store.set_down(true);
    let control = task(&store).await;
    assert!(control.status().store.degraded);
    // The task runs the config's weights (v1 stable, generation 0).
    let view = control.rollback("admin").await.unwrap();
    assert_eq!(view.stable, "v1");
    store.set_down(false);
    control.sync_from_store().await.unwrap();
    let stored = store.stored().unwrap();
    assert_eq!(stored.stable, "v2", "{stored:?}");
    assert_eq!(stored.weights, w(0, 100));
    assert_eq!(stored.generation, 5);
    assert_eq!(control.weights().stable, "v2");
}

#[tokio::test]
async fn a_rollback_after_a_newer_decision_rolls_back_from_it() {
    let store = Arc::new(MemoryStore::default());
    let a = task(&store).await;
    let b = task(&store).await;
    a.set_weights(w(50, 50), "admin").await.unwrap();
    a.promote("v2", "admin").await.unwrap();
    // b never polled: its rollback is re-based on a's promotion (stable v2).
    let view = b.rollback("rollout").await.unwrap();
    assert_eq!(view.stable, "v2");
    assert_eq!(view.weights, w(0, 100));
    assert_eq!(store.stored().unwrap().generation, 3);
}

#[tokio::test]
async fn a_task_starts_degraded_without_the_store_and_converges() {
    let store = Arc::new(MemoryStore::default());
    *store.doc.lock().unwrap() = Some(doc(4, "other", 20));
    store.set_down(true);
    let control = task(&store).await;
    let status = control.status();
    assert!(status.store.degraded, "{status:?}");
    assert_eq!(control.weights().weights, w(90, 10), "the config's weights");
    assert!(status.warnings.iter().any(|w| w.contains("degraded")));

    store.set_down(false);
    control.sync_from_store().await.unwrap();
    assert!(!control.status().store.degraded);
    assert_eq!(control.weights().weights, w(80, 20));
    assert_eq!(control.weights().generation, 4);
}

#[tokio::test]
async fn the_store_poll_backs_off_while_throttled_only() {
    let store = Arc::new(MemoryStore::default());
    let control = task(&store).await;
    let poll = Duration::from_millis(20);
    let upkeep = tokio::spawn(super::keep_store(control.clone(), Some(poll)));
    let loads_during = async |window: Duration| {
        let before = store.loads.load(Ordering::SeqCst);
        tokio::time::sleep(window).await;
        store.loads.load(Ordering::SeqCst) - before
    };
    // Throttled for a second: 20, 40, 80, ... ms apart (about 6 loads, not 50).
    store.throttled.store(true, Ordering::SeqCst);
    let throttled = loads_during(Duration::from_secs(1)).await;
    // Down but not throttling: the poll keeps its pace (about 50 loads).
    store.throttled.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(700)).await;
    store.set_down(true);
    let down = loads_during(Duration::from_secs(1)).await;
    upkeep.abort();
    assert!(throttled <= 10, "{throttled} loads while throttled");
    assert!(down >= 20, "{down} loads while down");
}

const CLOUDMAP_CONFIG: &str = "[listener]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
    [split]\nstable = \"v1\"\n[discovery]\nstale_after = \"100ms\"\n\
    [[versions]]\nname = \"v1\"\nweight = 90\nendpoints = [\"127.0.0.1:1\"]\n\
    [[versions]]\nname = \"v2\"\nweight = 10\ncloudmap = { namespace = \"ns\", service = \"v2\" }\n";

#[tokio::test]
async fn readiness_waits_for_the_first_discovery_and_old_endpoints_go_stale() {
    use crate::discovery::{DiscoveryError, EndpointSink};

    let config = Config::parse(CLOUDMAP_CONFIG, "test").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::store::file::FileStore::new(
        dir.path().join("s.json"),
    ));
    let control = Control::start(config, store, "file").await.unwrap();
    control.set_listening();
    let why = control.readiness().unwrap_err();
    assert!(why.contains("`v2` (cloudmap:ns/v2)"), "{why}");

    control.endpoints_discovered("v2", vec!["127.0.0.1:2".parse().unwrap()]);
    control.readiness().unwrap();
    control.discovery_failed("v2", &DiscoveryError::Aws("unreachable".into()));
    // Failing, but for less than stale_after since the last success.
    let v2 =
        |s: &super::status::Status| s.versions.iter().find(|v| v.name == "v2").cloned().unwrap();
    assert!(!v2(&control.status()).discovery.stale);
    std::thread::sleep(Duration::from_millis(150));
    let status = control.status();
    assert!(v2(&status).discovery.stale, "{status:?}");
    assert_eq!(
        v2(&status).endpoints.len(),
        1,
        "the last endpoints stay in use"
    );
    assert!(
        status
            .warnings
            .iter()
            .any(|w| w.contains("`v2`") && w.contains("stale")),
        "{:?}",
        status.warnings
    );
    // Still ready: stale endpoints are served, and reported.
    control.readiness().unwrap();
    // A success clears it.
    control.endpoints_confirmed("v2");
    assert!(!v2(&control.status()).discovery.stale);
}

// ---------------------------------------------------------------- fleet ----

/// The generations the store holds, by task.
fn reported(store: &MemoryStore) -> BTreeMap<String, u64> {
    let reports = store.reports.lock().unwrap();
    reports
        .values()
        .map(|r| (r.task.clone(), r.generation))
        .collect()
}

#[tokio::test]
async fn every_task_reports_its_generation_and_sees_the_others() {
    let store = Arc::new(MemoryStore::default());
    let (a, b) = (task(&store).await, task(&store).await);
    b.report_to_store().await.unwrap();
    a.set_weights(w(70, 30), "admin").await.unwrap();
    a.report_to_store().await.unwrap();
    // a runs generation 1, b still reports 0: not converged.
    let fleet = a.status().fleet;
    assert_eq!(fleet.tasks.len(), 2, "{fleet:?}");
    assert!(fleet.tasks[0].this_task && fleet.tasks[0].report.task == a.writer());
    assert_eq!(fleet.tasks[0].report.generation, 1);
    assert_eq!(fleet.tasks[1].report.generation, 0);
    assert!(!fleet.converged && fleet.reports_shared);

    b.sync_from_store().await.unwrap();
    b.report_to_store().await.unwrap();
    a.report_to_store().await.unwrap();
    for control in [&a, &b] {
        let fleet = control.status().fleet;
        assert_eq!(fleet.tasks.len(), 2, "{fleet:?}");
        assert!(fleet.tasks.iter().all(|t| t.report.generation == 1));
        assert!(fleet.converged && fleet.generation == Some(1), "{fleet:?}");
    }
    // The reports never touched the decision.
    assert_eq!(store.stored().unwrap().generation, 1);
    assert_eq!(store.saves.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_stopped_task_is_withdrawn_and_a_silent_one_goes_stale() {
    let store = Arc::new(MemoryStore::default());
    let (a, b) = (task(&store).await, task(&store).await);
    a.report_to_store().await.unwrap();
    b.report_to_store().await.unwrap();
    b.withdraw_report().await;
    a.report_to_store().await.unwrap();
    assert_eq!(a.status().fleet.tasks.len(), 1);

    // A task that vanished without withdrawing, last heard of 12 s ago at an
    // older generation (the bound with the default 2 s poll is 11 s).
    a.set_weights(w(50, 50), "admin").await.unwrap();
    let mut gone = crate::store::TaskReport {
        task: "gone".into(),
        generation: 0,
        reported_at_ms: crate::store::unix_ms() - 12_000,
        applied_at_ms: 0,
        ready: true,
        draining: false,
        degraded: false,
        version: String::new(),
        appmesh_failing: false,
    };
    store
        .reports
        .lock()
        .unwrap()
        .insert("gone".into(), gone.clone());
    a.report_to_store().await.unwrap();
    let fleet = a.status().fleet;
    assert_eq!(fleet.tasks.len(), 2);
    assert!(
        fleet.tasks[1].stale && fleet.tasks[1].age_s >= 12.0,
        "{fleet:?}"
    );
    assert!(fleet.converged, "{fleet:?}");
    // Fresh, it counts: not converged.
    gone.reported_at_ms = crate::store::unix_ms();
    store.reports.lock().unwrap().insert("gone".into(), gone);
    a.report_to_store().await.unwrap();
    let fleet = a.status().fleet;
    assert!(!fleet.tasks[1].stale && !fleet.converged, "{fleet:?}");
}

#[tokio::test]
async fn the_upkeep_reports_at_start_after_each_decision_and_once_per_poll() {
    let store = Arc::new(MemoryStore::default());
    let control = task(&store).await;
    let me = control.writer().to_string();
    let until = async |what: &dyn Fn() -> bool| {
        for _ in 0..200 {
            if what() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    };
    // A poll interval of an hour: only the start and decisions report.
    let upkeep = tokio::spawn(super::keep_store(
        control.clone(),
        Some(Duration::from_secs(3600)),
    ));
    assert!(until(&|| reported(&store).get(&me) == Some(&0)).await);
    control.set_weights(w(60, 40), "admin").await.unwrap();
    assert!(until(&|| reported(&store).get(&me) == Some(&1)).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(store.report_writes.load(Ordering::SeqCst), 2);
    assert_eq!(
        store.loads.load(Ordering::SeqCst),
        2,
        "boot read + the decision's read"
    );
    upkeep.abort();

    // A short poll: one report per poll, no more.
    let upkeep = tokio::spawn(super::keep_store(
        control.clone(),
        Some(Duration::from_millis(20)),
    ));
    let (loads, writes) = (
        store.loads.load(Ordering::SeqCst),
        store.report_writes.load(Ordering::SeqCst),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    upkeep.abort();
    let loads = store.loads.load(Ordering::SeqCst) - loads;
    let writes = store.report_writes.load(Ordering::SeqCst) - writes;
    assert!(loads >= 5, "{loads} polls");
    assert!(writes <= loads + 1, "{writes} reports for {loads} polls");
}

#[tokio::test]
async fn with_the_file_store_the_fleet_is_this_task_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::store::file::FileStore::new(
        dir.path().join("s.json"),
    ));
    let config = Config::parse(
        &CONFIG.replace(
            "kind = \"dynamodb\"\ntable = \"t\"\nkey = \"svc\"\nboot_timeout = \"300ms\"\n",
            "",
        ),
        "test",
    )
    .unwrap();
    let control = Control::start(config, store, "file").await.unwrap();
    control.set_weights(w(80, 20), "admin").await.unwrap();
    control.report_to_store().await.unwrap();
    let fleet = control.status().fleet;
    assert_eq!(fleet.tasks.len(), 1, "{fleet:?}");
    assert!(fleet.tasks[0].this_task && fleet.tasks[0].report.generation == 1);
    assert!(fleet.converged && !fleet.reports_shared && fleet.note.is_none());
}

#[tokio::test]
async fn a_report_that_cannot_be_written_is_shown_and_decisions_go_on() {
    let store = Arc::new(MemoryStore::default());
    let control = task(&store).await;
    store.set_down(true);
    assert!(control.report_to_store().await.is_err());
    let fleet = control.status().fleet;
    assert!(!fleet.converged, "{fleet:?}");
    assert!(
        fleet
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("connection refused")),
        "{fleet:?}"
    );
    assert!(fleet.note.is_some(), "{fleet:?}");
    store.set_down(false);
    control.set_weights(w(60, 40), "admin").await.unwrap();
    control.report_to_store().await.unwrap();
    let fleet = control.status().fleet;
    assert!(
        fleet.converged && fleet.last_error.is_none() && fleet.note.is_none(),
        "{fleet:?}"
    );
}

// ------------------------------------------- rollbacks vs other decisions ----

/// A promotion written while a rollback applied here: the rollback stays the
/// decision, also in the store (not a rollback of the promotion, which would
/// keep the promoted version).
#[tokio::test]
async fn a_promotion_written_during_a_rollback_never_wins_it() {
    let store = Arc::new(MemoryStore::default());
    let control = task(&store).await;
    control.set_weights(w(50, 50), "admin").await.unwrap();
    store.stall_next_load.store(true, Ordering::SeqCst);
    let loads = store.loads.load(Ordering::SeqCst);
    let promoting = {
        let control = control.clone();
        tokio::spawn(async move { control.promote("v2", "admin").await })
    };
    assert!(until(|| store.loads.load(Ordering::SeqCst) > loads).await);
    control.rollback("admin").await.unwrap();
    store.release.notify_one();
    let late = promoting.await.unwrap();
    assert!(matches!(late, Err(ControlError::Conflict(_))), "{late:?}");
    // One task only: the answer does not blame another one alone.
    let said = late.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        said.contains("the weights changed meanwhile") && said.contains("this task's own rollback"),
        "{said}"
    );
    control.sync_from_store().await.unwrap();
    let stored = store.stored().unwrap();
    assert_eq!((stored.stable.as_str(), stored.weights), ("v1", w(100, 0)));
    assert_eq!(control.weights().stable, "v1");
    assert_eq!(control.weights().weights, w(100, 0));
}

/// A reload that edits the weights while a rollback is still pending is
/// refused (it would be recorded, then rolled back when the rollback is
/// written); once the rollback is in the store it applies.
#[tokio::test]
async fn a_weights_edit_waits_for_a_pending_rollback() {
    let store = Arc::new(MemoryStore::default());
    let control = task(&store).await;
    control.set_weights(w(50, 50), "admin").await.unwrap();
    store.set_down(true);
    control.rollback("admin").await.unwrap();
    assert!(control.rollback_pending());
    let edited = || {
        Config::parse(
            &CONFIG
                .replace("weight = 90", "weight = 70")
                .replace("weight = 10", "weight = 30"),
            "test",
        )
    };
    let status = control.reload(edited(), "test").await;
    assert!(!status.ok, "{status:?}");
    assert!(
        status.message.contains("rollback is still pending"),
        "{status:?}"
    );
    assert_eq!(control.weights().weights, w(100, 0));
    // The store is back: the reload writes the rollback first, then the edit.
    store.set_down(false);
    let status = control.reload(edited(), "test").await;
    assert!(status.ok, "{status:?}");
    assert_eq!(control.weights().weights, w(70, 30));
    control.sync_from_store().await.unwrap();
    assert_eq!(store.stored().unwrap().weights, w(70, 30));
    assert_eq!(control.weights().weights, w(70, 30));
}

/// Two tasks reload the same edit: the second loses the store's race, and
/// still applies the reload (with the first's decision), instead of staying
/// on the old config for good.
#[tokio::test]
async fn the_fleet_reloading_one_edit_all_apply_it() {
    let store = Arc::new(MemoryStore::default());
    let (a, b) = (task(&store).await, task(&store).await);
    let edited = || {
        Config::parse(
            &CONFIG
                .replace("weight = 90", "weight = 70")
                .replace("weight = 10", "weight = 30")
                .replace(
                    "boot_timeout = \"300ms\"",
                    "boot_timeout = \"300ms\"\n[timeouts]\nupstream_response = \"7s\"",
                ),
            "test",
        )
    };
    let first = a.reload(edited(), "test").await;
    assert!(first.ok, "{first:?}");
    let second = b.reload(edited(), "test").await;
    assert!(second.ok, "{second:?}");
    for task in [&a, &b] {
        assert_eq!(task.weights().weights, w(70, 30));
        assert_eq!(
            task.config().timeouts.upstream_response,
            Duration::from_secs(7)
        );
    }
    assert_eq!(a.weights().generation, b.weights().generation);
}

/// An abort on a task that has not heard that another task ended the
/// rollout is no abort: it says so, and counts none.
#[tokio::test]
async fn an_abort_of_a_rollout_another_task_ended_is_a_conflict() {
    use crate::control::rollout::Action;
    let store = Arc::new(MemoryStore::default());
    let (a, b) = (task(&store).await, task(&store).await);
    a.start_rollout(br#"{"canary": "v2", "steps": [10, 50], "interval_s": 60}"#)
        .await
        .unwrap();
    b.sync_from_store().await.unwrap();
    assert!(b.running_rollout().is_some());
    a.rollout_action(Action::Promote).await.unwrap();
    let aborted = b.rollout_action(Action::Abort).await;
    assert!(
        matches!(aborted, Err(crate::rollout::RolloutError::Conflict(_))),
        "{aborted:?}"
    );
    assert_eq!(
        b.rollout().unwrap().phase,
        crate::rollout::state::Phase::Succeeded
    );
    assert_eq!(b.weights().stable, "v2");
}

/// The fleet reloading an edit that adds a version and makes it stable:
/// the task that loses the store's race runs the decision recorded first,
/// fitted to the new config (not to the old one, which lacks the version).
#[tokio::test]
async fn a_fleet_reload_that_makes_a_new_version_stable_applies_everywhere() {
    let store = Arc::new(MemoryStore::default());
    let (a, b) = (task(&store).await, task(&store).await);
    let edited = || {
        Config::parse(
            &(CONFIG
                .replace("stable = \"v1\"", "stable = \"v3\"")
                .replace("weight = 90", "weight = 50")
                .replace("weight = 10", "weight = 0")
                + "[[versions]]\nname = \"v3\"\nweight = 50\nendpoints = [\"127.0.0.1:3\"]\n"),
            "test",
        )
    };
    assert!(a.reload(edited(), "test").await.ok);
    let second = b.reload(edited(), "test").await;
    assert!(second.ok, "{second:?}");
    b.sync_from_store().await.unwrap();
    for task in [&a, &b] {
        let view = task.weights();
        assert_eq!(view.stable, "v3");
        assert_eq!(
            view.weights,
            BTreeMap::from([("v1".into(), 50), ("v2".into(), 0), ("v3".into(), 50)])
        );
    }
}

/// A task whose config lacks the versions the fleet's decision runs (an
/// older task definition) starts on its file's weights, can still decide
/// (its decisions go above the store's generation), and its rollback rolls
/// the fleet's decision back, never to the file's stable version.
#[tokio::test]
async fn a_task_whose_config_misses_the_fleets_versions_starts_and_never_rolls_the_fleet_to_its_file()
 {
    let fleet = crate::store::WeightsDoc {
        stable: "v2".into(),
        ..doc(4, "other-task", 100)
    };
    let old_file = || {
        Config::parse(
            &CONFIG
                .replace("weight = 90", "weight = 100")
                .replace("name = \"v2\"\nweight = 10", "name = \"v3\"\nweight = 0"),
            "test",
        )
        .unwrap()
    };
    let three = |v1: u32, v3: u32| BTreeMap::from([("v1".to_string(), v1), ("v3".to_string(), v3)]);

    let store = Arc::new(MemoryStore::default());
    *store.doc.lock().unwrap() = Some(fleet.clone());
    let control = Control::start(old_file(), store.clone() as Arc<dyn Store>, "dynamodb")
        .await
        .unwrap();
    assert_eq!(control.weights().weights, three(100, 0));
    control.set_weights(three(90, 10), "admin").await.unwrap();
    assert_eq!(store.stored().unwrap().generation, 5);

    let store = Arc::new(MemoryStore::default());
    *store.doc.lock().unwrap() = Some(fleet.clone());
    let control = Control::start(old_file(), store.clone() as Arc<dyn Store>, "dynamodb")
        .await
        .unwrap();
    control.rollback("admin").await.unwrap();
    let stored = store.stored().unwrap();
    assert_eq!(
        (stored.stable.as_str(), stored.weights),
        ("v2", fleet.weights)
    );
    assert!(stored.generation > fleet.generation);
    assert_eq!(control.weights().weights, three(100, 0), "its own, here");
    assert!(!control.rollback_pending());
}

/// A task whose poll fails (its weights item unreadable) while its report
/// can be written keeps reporting: the fleet sees what it runs instead of
/// losing it from view, and from `converged`.
#[tokio::test]
async fn a_task_whose_poll_fails_keeps_reporting() {
    let store = Arc::new(MemoryStore::default());
    let control = task(&store).await;
    let me = control.writer().to_string();
    let upkeep = tokio::spawn(super::keep_store(
        control.clone(),
        Some(Duration::from_millis(20)),
    ));
    let reported_once = async || {
        for _ in 0..500 {
            if reported(&store).contains_key(&me) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    };
    assert!(reported_once().await);
    store.fail_loads.store(true, Ordering::SeqCst);
    let writes = store.report_writes.load(Ordering::SeqCst);
    // Reports are due once per report interval (the default poll's).
    let more = async {
        while store.report_writes.load(Ordering::SeqCst) <= writes {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let reported_again = tokio::time::timeout(Duration::from_secs(10), more).await;
    upkeep.abort();
    assert!(reported_again.is_ok(), "no report while the polls failed");
}

// ------------------------------------------------------------- rollouts ----

/// The driver judged the last step good while the rollout progressed; the
/// operator paused it before the success was written. The pause stands: the
/// analysis ends only the step it judged (as a step is taken only from the
/// step judged), and the operator's own promote still ends a paused rollout.
#[tokio::test]
async fn an_analysis_success_never_ends_a_rollout_paused_meanwhile() {
    use super::rollout::Action;
    use crate::rollout::RolloutError;
    use crate::rollout::state::Phase;
    let store = Arc::new(MemoryStore::default());
    let control = task(&store).await;
    control
        .start_rollout(br#"{"canary": "v2", "steps": [50], "interval_s": 60}"#)
        .await
        .unwrap();
    // What the driver judged: the last step, progressing.
    let judged = control.running_rollout().unwrap();
    assert!(judged.last_step() && judged.phase == Phase::Progressing);
    control.rollout_action(Action::Pause).await.unwrap();

    let late = control
        .finish_rollout(&judged, super::rollout::By::Analysis)
        .await;
    assert!(matches!(late, Err(RolloutError::Conflict(_))), "{late:?}");
    assert_eq!(control.rollout().unwrap().phase, Phase::Paused);
    let stored = store.stored().unwrap();
    assert_eq!(stored.rollout.unwrap().phase, Phase::Paused);
    assert_eq!((stored.stable.as_str(), stored.weights), ("v1", w(50, 50)));

    // The operator's promote is no judgement of a step: it ends it.
    control.rollout_action(Action::Promote).await.unwrap();
    assert_eq!(control.rollout().unwrap().phase, Phase::Succeeded);
    assert_eq!(control.weights().stable, "v2");
}

/// An operator's rollout decisions (here the start and an abort) are
/// recorded as the operator's (`admin`), in `GET /weights`, the store and
/// the audit log; the rollout's own steps are `rollout`.
#[tokio::test]
async fn an_operators_rollout_decisions_are_recorded_as_the_operators() {
    use super::rollout::Action;
    let store = Arc::new(MemoryStore::default());
    let control = task(&store).await;
    control
        .start_rollout(br#"{"canary": "v2", "steps": [10, 50], "interval_s": 60}"#)
        .await
        .unwrap();
    assert_eq!(control.weights().source, "admin");
    let judged = control.running_rollout().unwrap();
    assert!(control.advance_rollout(&judged).await.unwrap());
    assert_eq!(control.weights().source, "rollout");
    control.rollout_action(Action::Abort).await.unwrap();
    assert_eq!(control.weights().source, "admin");
    assert_eq!(store.stored().unwrap().source, "admin");
    let mine: Vec<String> = crate::telemetry::audit::global()
        .entries()
        .into_iter()
        .filter(|e| e.writer == control.writer())
        .map(|e| e.source)
        .collect();
    assert_eq!(mine, ["admin", "rollout", "admin"]);
}

/// Two tasks judge the last step at once: b finds the canary good and ends
/// the rollout `succeeded`, a finds it bad and aborts. a's abort, made again
/// from b's success, wins (an abort on the evidence of one task is never
/// lost to another task's automated success): all the traffic back on the
/// rollout's stable version, the rollout `aborted`, in the store and on both.
#[tokio::test]
async fn an_abort_wins_over_the_same_rollouts_automated_success() {
    use super::rollout::{Abort, Action, By};
    use crate::rollout::state::Phase;
    for on_success in ["promote", "hold"] {
        for abort in [Abort::Analysis("max_error_rate"), Abort::Operator] {
            let store = Arc::new(MemoryStore::default());
            let (a, b) = (task(&store).await, task(&store).await);
            let plan = format!(
                r#"{{"canary": "v2", "steps": [10, 50], "interval_s": 60, "on_success": "{on_success}"}}"#
            );
            a.start_rollout(plan.as_bytes()).await.unwrap();
            let first = a.running_rollout().unwrap();
            assert!(a.advance_rollout(&first).await.unwrap());
            b.sync_from_store().await.unwrap();
            let judged = b.running_rollout().unwrap();
            assert!(judged.last_step());

            b.finish_rollout(&judged, By::Analysis).await.unwrap();
            let aborted = match abort {
                Abort::Operator => a.rollout_action(Action::Abort).await.map(|_| ()),
                _ => a.abort_rollout(&judged, abort, "error rate 20%").await,
            };
            let case = format!("{on_success}, {abort:?}");
            assert!(aborted.is_ok(), "{case}: {aborted:?}");
            b.sync_from_store().await.unwrap();
            let stored = store.stored().unwrap();
            assert_eq!(
                (stored.stable.as_str(), &stored.weights),
                ("v1", &w(100, 0)),
                "{case}"
            );
            for r in [
                stored.rollout.unwrap(),
                a.rollout().unwrap(),
                b.rollout().unwrap(),
            ] {
                assert_eq!(r.phase, Phase::Aborted, "{case}: {r:?}");
                assert!(r.reason.is_some(), "{case}: {r:?}");
            }
            for task in [&a, &b] {
                assert_eq!(task.weights().stable, "v1", "{case}");
                assert_eq!(task.weights().weights, w(100, 0), "{case}");
            }
        }
    }
}

/// The operator's promote of the rollout is another matter: an abort made
/// on a task that had not heard of it rolls the promotion back as any
/// rollback does (its stable version, now the canary, keeps the traffic)
/// and is no abort of the rollout.
#[tokio::test]
async fn an_analysis_abort_never_undoes_an_operators_promote() {
    use super::rollout::{Abort, Action};
    use crate::rollout::state::Phase;
    let store = Arc::new(MemoryStore::default());
    let (a, b) = (task(&store).await, task(&store).await);
    a.start_rollout(br#"{"canary": "v2", "steps": [10, 50], "interval_s": 60}"#)
        .await
        .unwrap();
    b.sync_from_store().await.unwrap();
    let judged = b.running_rollout().unwrap();
    a.rollout_action(Action::Promote).await.unwrap();
    let aborted = b
        .abort_rollout(&judged, Abort::Analysis("max_error_rate"), "error rate 20%")
        .await;
    assert!(
        matches!(aborted, Err(crate::rollout::RolloutError::Conflict(_))),
        "{aborted:?}"
    );
    let stored = store.stored().unwrap();
    assert_eq!((stored.stable.as_str(), stored.weights), ("v2", w(0, 100)));
    assert_eq!(stored.rollout.unwrap().phase, Phase::Succeeded);
    assert_eq!(b.weights().stable, "v2");
}

/// An `aborted` event carries the analysis only when the analysis decided
/// the abort: a config abort, an operator's or a rollback's carries none
/// (the last analysis, a hold or a pass, would contradict it).
#[test]
fn an_aborted_event_carries_the_analysis_that_decided_it_only() {
    use super::rollout::{Abort, aborted_event};
    use crate::rollout::AnalysisRecord;
    use crate::rollout::telemetry::Counts;
    let plan = crate::rollout::plan::Plan {
        canary: "v2".into(),
        stable: "v1".into(),
        settings: Default::default(),
    };
    let r = crate::rollout::state::RolloutState::start(plan, 1_000);
    let last = AnalysisRecord {
        at_ms: 2_000,
        since_ms: 1_000,
        analysis: crate::rollout::analysis::judge(
            &r.plan.settings,
            &Counts::default(),
            &Counts::default(),
        ),
    };
    for (by, carried) in [
        (Abort::Analysis("max_error_rate"), true),
        (Abort::Config, false),
        (Abort::Operator, false),
        (Abort::Rollback, false),
    ] {
        let e = aborted_event(&r, by, "why", Some(last.clone()));
        assert_eq!(e["event"], "aborted");
        assert_eq!(e["reason"], "why");
        assert_eq!(!e["analysis"].is_null(), carried, "{by:?}: {e}");
    }
}

/// Cloud Map (no compare-and-set): tasks a and b both wrote generation 1 and
/// both read their own write back; the store kept a's, whose writer id sorts
/// before b's. b adopts a's decision: the store is authoritative.
#[tokio::test]
async fn without_compare_and_set_the_store_keeps_one_of_two_same_generation_writes_and_every_task_adopts_it()
 {
    let store = Arc::new(MemoryStore::default());
    store.no_compare_and_set.store(true, Ordering::SeqCst);
    let b = task(&store).await;
    let c = task(&store).await;
    let mine = b.set_weights(w(70, 30), "admin").await.unwrap();
    assert_eq!(mine.generation, 1);
    // a's write of the same generation landed last; a's writer id sorts first.
    let kept = doc(1, "!task-a", 40);
    assert!(kept.writer.as_str() < b.writer());
    *store.doc.lock().unwrap() = Some(kept.clone());
    // Another task adopts it (newer than what it runs).
    c.sync_from_store().await.unwrap();
    assert_eq!(c.weights().weights, w(60, 40));
    // b adopts it within two polls, although its own sorts after it.
    b.sync_from_store().await.unwrap();
    b.sync_from_store().await.unwrap();
    let now = b.weights();
    assert_eq!((now.generation, now.weights), (1, w(60, 40)));
    assert!(b.status().store.last_error.is_none());

    // A read that flips back (Cloud Map propagating) does not flip the task
    // at once: two reads in a row must agree.
    *store.stale.lock().unwrap() = Some(doc(1, b.writer(), 30));
    b.sync_from_store().await.unwrap();
    assert_eq!(b.weights().weights, w(60, 40));
    *store.stale.lock().unwrap() = None;
    b.sync_from_store().await.unwrap();
    b.sync_from_store().await.unwrap();
    assert_eq!(b.weights().weights, w(60, 40));
}

/// With compare-and-set (DynamoDB) two documents of one generation are
/// never both written: one of the same generation that sorts first is a
/// stale read, ignored however often it is read.
#[tokio::test]
async fn with_compare_and_set_a_same_generation_document_that_sorts_first_is_ignored() {
    let store = Arc::new(MemoryStore::default());
    let b = task(&store).await;
    b.set_weights(w(70, 30), "admin").await.unwrap();
    *store.stale.lock().unwrap() = Some(doc(1, "!task-a", 40));
    for _ in 0..3 {
        b.sync_from_store().await.unwrap();
    }
    assert_eq!(b.weights().weights, w(70, 30));
}

/// Every read of the weights document fails while the task's reports (and
/// a write) succeed: `/status` `store.last_error` keeps the read's error,
/// says that the store answered with a document it cannot read, and
/// `last_ok_ms` stays where it was; a successful read clears it.
#[tokio::test]
async fn a_failing_read_is_not_hidden_by_a_successful_report() {
    let store = Arc::new(MemoryStore::default());
    let control = task(&store).await;
    control.sync_from_store().await.unwrap();
    control.report_to_store().await.unwrap();
    let ok_before = control.status().store.last_ok_ms;
    assert!(ok_before.is_some());

    store.fail_loads.store(true, Ordering::SeqCst);
    assert!(control.sync_from_store().await.is_err());
    control.report_to_store().await.unwrap();
    let status = control.status().store;
    let error = status.last_error.unwrap_or_default();
    assert!(
        error.contains("the store answered, but its weights document is unreadable"),
        "{error}"
    );
    assert_eq!(status.last_ok_ms, ok_before);

    store.fail_loads.store(false, Ordering::SeqCst);
    control.sync_from_store().await.unwrap();
    let status = control.status().store;
    assert_eq!(status.last_error, None);
    assert!(status.last_ok_ms >= ok_before);
}

// ------------------------------------------- a store that lost its document ----

/// The store's document is deleted while a task runs generation 3: the task
/// writes its decision back at its next poll (compare-and-set store: at
/// once), warns in /status, and a task that started against the empty store
/// (on the config file's weights) adopts it at its next poll.
#[tokio::test]
async fn a_task_writes_its_decision_back_into_an_emptied_store() {
    let store = Arc::new(MemoryStore::default());
    let old = task(&store).await;
    *store.doc.lock().unwrap() = Some(doc(3, "other", 40));
    old.sync_from_store().await.unwrap();
    assert_eq!(old.weights().generation, 3);

    *store.doc.lock().unwrap() = None;
    let fresh = task(&store).await;
    assert_eq!(
        (fresh.weights().generation, fresh.weights().weights),
        (0, w(90, 10))
    );
    // The task on the config file's weights writes nothing back.
    fresh.sync_from_store().await.unwrap();
    assert_eq!(store.stored(), None);

    old.sync_from_store().await.unwrap();
    let stored = store.stored().unwrap();
    assert_eq!((stored.generation, stored.weights), (3, w(60, 40)));
    assert_eq!(stored.writer, "other");
    assert_eq!(stored.source, "admin");
    let warnings = old.status().warnings.join("\n");
    assert!(
        warnings.contains("wrote its decision (generation 3) back"),
        "{warnings}"
    );

    fresh.sync_from_store().await.unwrap();
    assert_eq!(
        (fresh.weights().generation, fresh.weights().weights),
        (3, w(60, 40))
    );
    // Written once: the next poll finds the store in step.
    let saves = store.saves.load(Ordering::SeqCst);
    old.sync_from_store().await.unwrap();
    assert_eq!(store.saves.load(Ordering::SeqCst), saves);
}

/// The store is restored to an older generation: written back only once two
/// consecutive reads agree, conditional on the generation read.
#[tokio::test]
async fn a_store_restored_to_an_older_generation_is_written_over_after_two_reads() {
    let store = Arc::new(MemoryStore::default());
    let control = task(&store).await;
    *store.doc.lock().unwrap() = Some(doc(3, "other", 40));
    control.sync_from_store().await.unwrap();

    *store.doc.lock().unwrap() = Some(doc(1, "other", 5));
    control.sync_from_store().await.unwrap();
    assert_eq!(
        store.stored().unwrap().generation,
        1,
        "written after one read"
    );
    assert!(
        control
            .status()
            .warnings
            .join("\n")
            .contains("generation 1 (older)"),
        "{:?}",
        control.status().warnings
    );
    control.sync_from_store().await.unwrap();
    let stored = store.stored().unwrap();
    assert_eq!((stored.generation, stored.weights), (3, w(60, 40)));
    assert_eq!(control.weights().weights, w(60, 40));
}

/// Without compare-and-set (Cloud Map) even an empty read waits for a
/// second one that agrees; a read in between that answers the decision
/// starts over.
#[tokio::test]
async fn without_compare_and_set_an_empty_store_is_written_after_two_reads() {
    let store = Arc::new(MemoryStore::default());
    store.no_compare_and_set.store(true, Ordering::SeqCst);
    let control = task(&store).await;
    *store.doc.lock().unwrap() = Some(doc(3, "other", 40));
    control.sync_from_store().await.unwrap();

    *store.doc.lock().unwrap() = None;
    control.sync_from_store().await.unwrap();
    assert_eq!(store.stored(), None);
    *store.stale.lock().unwrap() = Some(doc(3, "other", 40));
    control.sync_from_store().await.unwrap();
    *store.stale.lock().unwrap() = None;
    control.sync_from_store().await.unwrap();
    assert_eq!(
        store.stored(),
        None,
        "two reads that did not follow each other"
    );
    control.sync_from_store().await.unwrap();
    assert_eq!(store.stored().unwrap().generation, 3);
}

#[tokio::test]
async fn a_weighted_version_without_endpoints_is_warned_about() {
    use crate::discovery::EndpointSink;
    let store = Arc::new(MemoryStore::default());
    let control = task(&store).await;
    let quiet = control.status().warnings;
    assert!(quiet.is_empty(), "{quiet:?}");
    control.endpoints_discovered("v2", Vec::new());
    let warnings = control.status().warnings.join("\n");
    assert!(
        warnings.contains("the version `v2` has weight 10 but no endpoints"),
        "{warnings}"
    );
    // At weight 0 it takes no requests: nothing to warn about.
    control.set_weights(w(100, 0), "admin").await.unwrap();
    let warnings = control.status().warnings;
    assert!(warnings.is_empty(), "{warnings:?}");
}

/// A rollback the state file could not take is pending, and /status says
/// so in the file store's terms: no fleet, a restart would miss it.
#[tokio::test]
async fn a_rollback_the_state_file_missed_is_pending_in_file_terms() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let store = Arc::new(crate::store::file::FileStore::new(state.join("s.json")));
    let control = Control::start(Config::parse(CONFIG, "test").unwrap(), store, "file")
        .await
        .unwrap();
    control.set_weights(w(50, 50), "admin").await.unwrap();
    std::fs::remove_dir_all(&state).unwrap();

    let view = control.rollback("admin").await.unwrap();
    assert_eq!(view.weights, w(100, 0));
    let status = control.status();
    assert!(status.store.rollback_pending);
    let warning = status
        .warnings
        .iter()
        .find(|w| w.contains("rollback pending"))
        .cloned()
        .unwrap_or_default();
    assert!(
        warning.contains("in the state file") && warning.contains("a restart"),
        "{:?}",
        status.warnings
    );
    assert!(!warning.contains("store"), "{warning}");
}

/// A decision in force at the highest generation takes no newer one: a
/// change is refused with the reason and nothing changes, instead of a
/// generation that wraps to 0 and is written but never applied.
#[tokio::test]
async fn no_decision_is_made_past_the_highest_generation() {
    use crate::store::MAX_GENERATION;
    let store = Arc::new(MemoryStore::default());
    *store.doc.lock().unwrap() = Some(doc(MAX_GENERATION, "other", 30));
    let control = task(&store).await;
    assert_eq!(control.weights().generation, MAX_GENERATION);
    let e = control
        .set_weights(BTreeMap::from([("v2".into(), 50)]), "admin")
        .await
        .unwrap_err();
    assert!(matches!(e, ControlError::GenerationLimit(_)), "{e:?}");
    assert!(e.to_string().contains("9007199254740991"), "{e}");
    let e = control.rollback("admin").await.unwrap_err();
    assert!(matches!(e, ControlError::GenerationLimit(_)), "{e:?}");
    assert_eq!(control.weights().weights, w(70, 30));
    assert_eq!(store.stored(), Some(doc(MAX_GENERATION, "other", 30)));
}

/// The warnings of a task that found the store behind.
fn behind_warnings(control: &Control) -> String {
    control.status().warnings.join("\n")
}

/// Two tasks of a Cloud Map store (no compare-and-set: each waits for a
/// second read) find its document deleted; one writes its decision back
/// first. The other's next read finds the decision again: its warning no
/// longer says the store holds no document and that it writes its decision
/// back (both false now), but that another task wrote it back.
#[tokio::test]
async fn a_store_another_task_wrote_back_is_no_longer_warned_about_as_empty() {
    let store = Arc::new(MemoryStore::default());
    store.no_compare_and_set.store(true, Ordering::SeqCst);
    let (a, b) = (task(&store).await, task(&store).await);
    *store.doc.lock().unwrap() = Some(doc(3, "other", 40));
    a.sync_from_store().await.unwrap();
    b.sync_from_store().await.unwrap();

    *store.doc.lock().unwrap() = None;
    a.sync_from_store().await.unwrap();
    b.sync_from_store().await.unwrap();
    for t in [&a, &b] {
        let warnings = behind_warnings(t);
        assert!(
            warnings.contains("holds no weights document while this task runs generation 3"),
            "{warnings}"
        );
    }
    b.sync_from_store().await.unwrap();
    assert_eq!(store.stored().map(|d| d.generation), Some(3));
    let saves = store.saves.load(Ordering::SeqCst);

    a.sync_from_store().await.unwrap();
    assert_eq!(store.saves.load(Ordering::SeqCst), saves, "a wrote too");
    let warnings = behind_warnings(&a);
    assert!(
        !warnings.contains("holds no weights document")
            && !warnings.contains("this task writes its decision back"),
        "{warnings}"
    );
    assert!(
        warnings.contains(
            "the weight store had lost the fleet's decision (no document); it holds generation 3 again: another task wrote it back"
        ),
        "{warnings}"
    );
    // The note goes with the decision it was about.
    a.set_weights(w(50, 50), "admin").await.unwrap();
    let warnings = a.status().warnings;
    assert!(warnings.is_empty(), "{warnings:?}");
}

/// DynamoDB restored to an older generation: each task waits for a second
/// read that agrees; one writes its decision back over it first, and the
/// other's next read finds it: no "older" warning stays behind.
#[tokio::test]
async fn a_restored_store_another_task_wrote_over_is_no_longer_warned_about_as_older() {
    let store = Arc::new(MemoryStore::default());
    let (a, b) = (task(&store).await, task(&store).await);
    *store.doc.lock().unwrap() = Some(doc(3, "other", 40));
    a.sync_from_store().await.unwrap();
    b.sync_from_store().await.unwrap();

    *store.doc.lock().unwrap() = Some(doc(1, "other", 5));
    a.sync_from_store().await.unwrap();
    b.sync_from_store().await.unwrap();
    assert!(
        behind_warnings(&a).contains("generation 1 (older)"),
        "{}",
        behind_warnings(&a)
    );
    b.sync_from_store().await.unwrap();
    assert_eq!(store.stored().map(|d| d.generation), Some(3));

    a.sync_from_store().await.unwrap();
    let warnings = behind_warnings(&a);
    assert!(
        !warnings.contains("(older)") && !warnings.contains("this task writes its decision back"),
        "{warnings}"
    );
    assert!(
        warnings
            .contains("(generation 1); it holds generation 3 again: another task wrote it back"),
        "{warnings}"
    );
}

/// The store goes down while a task runs (no rollback pending): `/status`
/// warns that it cannot be read, what fails meanwhile (changes answer 503)
/// and what does not (the decision in force serves), naming the error; the
/// warning goes with the first poll that reads the store again.
#[tokio::test]
async fn an_unreadable_store_is_warned_about_until_a_poll_reads_it() {
    let store = Arc::new(MemoryStore::default());
    *store.doc.lock().unwrap() = Some(doc(2, "other", 20));
    let control = task(&store).await;
    assert!(control.status().warnings.is_empty());

    store.set_down(true);
    assert!(control.sync_from_store().await.is_err());
    let status = control.status();
    assert!(!status.store.rollback_pending && !status.store.degraded);
    let warnings = status.warnings.join("\n");
    assert!(
        warnings.contains(
            "the weight store cannot be read (dynamodb store: connection refused (test))"
        ) && warnings.contains("answer 503 until it can")
            && warnings.contains("the running decision (generation 2) keeps serving"),
        "{warnings}"
    );
    let refused = control.set_weights(w(50, 50), "admin").await;
    assert!(
        matches!(refused, Err(ControlError::StoreLoad(_))),
        "{refused:?}"
    );

    store.set_down(false);
    control.sync_from_store().await.unwrap();
    let warnings = control.status().warnings;
    assert!(warnings.is_empty(), "{warnings:?}");
}

/// This task's write of the decision in force to the App Mesh route fails
/// (the route is gone, the split does not fit its foreign targets): a
/// warning names the route and the error until a write succeeds. A failed
/// write of an older decision is no warning once a newer one is in force.
#[tokio::test]
async fn a_failed_app_mesh_sync_of_the_decision_in_force_is_warned_about() {
    let text = format!(
        "{CONFIG}[appmesh]\nmesh = \"m\"\nvirtual_router = \"r\"\nroute = \"rt\"\n\
         virtual_nodes = {{ v1 = \"node-1\", v2 = \"node-2\" }}\n"
    );
    let store = Arc::new(MemoryStore::default());
    let control = Control::start(
        Config::parse(&text, "test").unwrap(),
        store.clone() as Arc<dyn Store>,
        "dynamodb",
    )
    .await
    .unwrap();
    let generation = control
        .set_weights(w(50, 50), "admin")
        .await
        .unwrap()
        .generation;
    control.appmesh_synced(
        generation,
        Err("DescribeRoute: NotFoundException: no route rt (HTTP 404)".into()),
    );
    let warnings = control.status().warnings.join("\n");
    assert!(
        warnings.contains(&format!(
            "the App Mesh route m/r/rt could not be synced to generation {generation} (DescribeRoute: NotFoundException: no route rt (HTTP 404))"
        )),
        "{warnings}"
    );
    // Its report says so: it is not chosen to reconcile in a gone
    // writer's place.
    let failing = async || {
        control.report_to_store().await.unwrap();
        store.reports.lock().unwrap()[control.writer()].appmesh_failing
    };
    assert!(failing().await);
    // Said again at once when it flips (the upkeep is woken to report).
    assert!(!control.report_due());
    control.appmesh_synced(generation, Ok(w(50, 50)));
    assert!(control.report_due(), "a sync that works again is reported");
    control.report_to_store().await.unwrap();

    control.appmesh_synced(generation, Ok(w(50, 50)));
    let warnings = control.status().warnings;
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(!failing().await);

    // Throttled to the end: warned about, but not reported as failing
    // (the account's API rate, which every task meets: another task
    // standing in would only add calls).
    control.appmesh_synced(
        generation,
        Err(crate::route_sync::SyncError {
            message: "gave up after 4 attempts: throttled".into(),
            throttled: true,
            route_unread: false,
        }),
    );
    assert!(!control.status().warnings.is_empty());
    assert!(!failing().await);
    control.appmesh_synced(generation, Ok(w(50, 50)));
    // Only a later check of the route failed (synced to this generation
    // before): said as such, not as traffic that does not follow it.
    control.appmesh_synced(
        generation,
        Err(crate::route_sync::SyncError {
            message: "DescribeRoute: AccessDeniedException (HTTP 403)".into(),
            throttled: false,
            route_unread: true,
        }),
    );
    let warnings = control.status().warnings.join("\n");
    assert!(
        warnings.contains("could not be checked (DescribeRoute: AccessDeniedException (HTTP 403)); it was synced to generation"),
        "{warnings}"
    );
    assert!(!warnings.contains("does not follow"), "{warnings}");
    // The route read, found changed from outside, and the repair refused:
    // traffic does not follow the decision.
    control.appmesh_synced(
        generation,
        Err("UpdateRoute: ForbiddenException (HTTP 403)".into()),
    );
    let warnings = control.status().warnings.join("\n");
    assert!(warnings.contains("does not follow"), "{warnings}");
    control.appmesh_synced(generation, Ok(w(50, 50)));

    // The sync of an older decision failed after a newer one came: it is
    // not the route's state for the decision in force.
    control.appmesh_synced(generation, Err("UpdateRoute: throttled".into()));
    control.set_weights(w(70, 30), "admin").await.unwrap();
    let warnings = control.status().warnings;
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(
        control
            .status()
            .appmesh
            .and_then(|a| a.last_error)
            .is_some()
    );
}

/// A version a reload removes has its rollout counters freed (a few KB a
/// name, and every release's canary has a new name), but not while the
/// running rollout may still read them: then once the rollout is over.
#[tokio::test]
async fn a_removed_versions_rollout_counters_are_freed_once_no_rollout_reads_them() {
    use super::rollout::Action;
    let store = Arc::new(MemoryStore::default());
    let three = format!(
        "{CONFIG}[[versions]]\nname = \"v3\"\nweight = 0\nendpoints = [\"127.0.0.1:3\"]\n\
         [[versions]]\nname = \"v4\"\nweight = 0\nendpoints = [\"127.0.0.1:4\"]\n"
    );
    let config = Config::parse(&three, "test").unwrap();
    let control = Control::start(config, store.clone() as Arc<dyn Store>, "dynamodb")
        .await
        .unwrap();
    for v in control.snapshot_cell().load().versions.iter() {
        v.analysis.record(200, Duration::from_millis(1));
    }
    control.set_weights(w(100, 0), "admin").await.unwrap();
    control
        .start_rollout(br#"{"canary": "v3", "steps": [10, 50], "interval_s": 60}"#)
        .await
        .unwrap();
    let windows = control.rollout_windows();
    let requests = |v: &str| windows.read(v).requests;

    // v4 and v3 leave the config; the rollout on v3 still runs.
    let status = control.reload(Config::parse(CONFIG, "test"), "test").await;
    assert!(status.ok, "{status:?}");
    assert_eq!(requests("v4"), 0, "freed");
    assert_eq!(requests("v3"), 1, "kept for the running rollout");
    assert_eq!((requests("v1"), requests("v2")), (1, 1));

    control.rollout_action(Action::Abort).await.unwrap();
    assert_eq!(requests("v3"), 0, "freed once the rollout is over");
    assert_eq!((requests("v1"), requests("v2")), (1, 1));

    // Added back: counters of its own again, from zero.
    let status = control.reload(Config::parse(&three, "test"), "test").await;
    assert!(status.ok, "{status:?}");
    let snapshot = control.snapshot_cell().load_full();
    let v3 = snapshot.version_named(b"v3").unwrap();
    snapshot.versions[v3]
        .analysis
        .record(200, Duration::from_millis(1));
    assert_eq!(requests("v3"), 1);
}
