//! Which decisions a task mirrors to the route (a recording `RouteSync`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{RouteSync, Synced, follow_route};
use crate::config::Config;
use crate::control::Control;
use crate::future::BoxFuture;
use crate::store::Store;
use crate::store::memory::MemoryStore;

/// Records the weights it is asked to write; with `hang_first` (the
/// second field), the first write is never sent (App Mesh throttling it, its
/// retries going on) until it is abandoned; the third, when set, runs as the
/// next write is made; with the fourth, each write is on its way for 30 ms
/// (sent: waited for even when abandoned). The fifth logs when each write
/// began and ended.
/// The sixth, when set, makes the next write fail (the route cannot be
/// written) and is cleared.
#[derive(Default)]
struct Recorded(
    Mutex<Vec<BTreeMap<String, u32>>>,
    AtomicBool,
    Mutex<Option<Box<dyn FnOnce() + Send>>>,
    AtomicBool,
    Mutex<Vec<String>>,
    AtomicBool,
);

impl RouteSync for Recorded {
    fn sync<'a>(
        &'a self,
        weights: &'a BTreeMap<String, u32>,
        abandon: &'a mut (dyn Future<Output = ()> + Send + Unpin),
    ) -> BoxFuture<'a, Result<Option<Synced>, super::SyncError>> {
        // Sent when the route did not hold them already (App Mesh skips
        // an UpdateRoute that changes nothing).
        let sent = {
            let mut writes = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let sent = writes.last() != Some(weights);
            writes.push(weights.clone());
            sent
        };
        let hang = self.1.swap(false, Ordering::SeqCst);
        let fail = self.5.swap(false, Ordering::SeqCst);
        if let Some(during) = self.2.lock().unwrap_or_else(|e| e.into_inner()).take() {
            during();
        }
        let log = |what: &str| {
            self.4
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("{what} {}", weights["v2"]));
        };
        log("began");
        Box::pin(async move {
            if hang {
                abandon.await;
                return Ok(None);
            }
            if fail {
                return Err("UpdateRoute: AccessDeniedException".into());
            }
            if self.3.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            log("ended");
            Ok(Some(Synced {
                weights: weights.clone(),
                sent,
            }))
        })
    }
}

impl Recorded {
    /// The weights written so far, once there are `n`.
    async fn writes(&self, n: usize) -> Vec<BTreeMap<String, u32>> {
        let wait = async {
            loop {
                let writes = self.0.lock().unwrap().clone();
                if writes.len() >= n {
                    return writes;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .unwrap_or_else(|_| panic!("fewer than {n} writes: {:?}", self.0.lock().unwrap()))
    }
}

const CONFIG: &str = "[listener]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
    [split]\nstable = \"v1\"\n\
    [store]\nkind = \"dynamodb\"\ntable = \"t\"\nkey = \"svc\"\nboot_timeout = \"100ms\"\n\
    [[versions]]\nname = \"v1\"\nweight = 90\nendpoints = [\"127.0.0.1:1\"]\n\
    [[versions]]\nname = \"v2\"\nweight = 10\nendpoints = [\"127.0.0.1:2\"]\n";

#[tokio::test]
async fn a_task_started_without_the_store_never_mirrors_the_files_weights() {
    let store = Arc::new(MemoryStore::default());
    store.set_down(true);
    let config = Config::parse(CONFIG, "test").unwrap();
    let control = Control::start(config, store.clone() as Arc<dyn Store>, "dynamodb")
        .await
        .unwrap();
    assert_eq!(control.weights().weights["v2"], 10, "degraded, on the file");
    let recorded = Arc::new(Recorded::default());
    let sync = tokio::spawn(follow_route(
        control.clone(),
        recorded.clone(),
        Duration::from_millis(5),
    ));
    // Several reconcile rounds on the file's weights (a task that mirrored
    // them would have written them by now), then the first decision of this
    // task's own: the first the route gets.
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.set_down(false);
    let ours = BTreeMap::from([("v1".to_string(), 100), ("v2".to_string(), 0)]);
    control.set_weights(ours.clone(), "admin").await.unwrap();
    let first = recorded.writes(1).await[0].clone();
    assert_eq!(first, ours, "the file's 90/10 went to the route first");
    sync.abort();
}

/// This task's write still going (throttled, retrying) when another
/// task's newer decision arrives: abandoned, and the newer one written, so
/// that the older write can never be the route's last.
#[tokio::test]
async fn a_sync_overtaken_by_a_newer_decision_writes_that_one() {
    let store = Arc::new(MemoryStore::default());
    let recorded = Arc::new(Recorded::default());
    recorded.1.store(true, Ordering::SeqCst);
    let (control, ours, theirs, sync) = own_decision_then_theirs(&store, &recorded, false).await;

    // Another task rolls back; this one adopts it at its poll.
    adopted_and_written(&store, &control, &recorded, ours, theirs).await;
    sync.abort();
}

/// A task that started without the store's decision rolls back while the
/// store is down: its rollback (from the file's weights, maybe a version the
/// fleet left long ago) is not mirrored until the store decides what it
/// becomes: the fleet's decision rolled back.
#[tokio::test]
async fn a_rollback_from_the_files_weights_waits_for_the_store_to_be_mirrored() {
    let store = Arc::new(MemoryStore::default());
    let fleet = crate::store::WeightsDoc {
        stable: "v2".into(),
        weights: BTreeMap::from([("v1".to_string(), 0), ("v2".to_string(), 100)]),
        ..crate::store::memory::doc(4, "other-task", 0)
    };
    *store.doc.lock().unwrap() = Some(fleet);
    store.set_down(true);
    let config = Config::parse(CONFIG, "test").unwrap();
    let control = Control::start(config, store.clone() as Arc<dyn Store>, "dynamodb")
        .await
        .unwrap();
    let recorded = Arc::new(Recorded::default());
    let sync = tokio::spawn(follow_route(
        control.clone(),
        recorded.clone(),
        Duration::from_millis(5),
    ));
    control.rollback("admin").await.unwrap();
    assert_eq!(control.weights().weights["v1"], 100, "at once, here");
    // Reconcile rounds on it (a task mirroring it would have by now).
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.set_down(false);
    control.sync_from_store().await.unwrap();
    let fleet_rolled_back = BTreeMap::from([("v1".to_string(), 0), ("v2".to_string(), 100)]);
    assert_eq!(recorded.writes(1).await[0], fleet_rolled_back);
    sync.abort();
}

/// Starts a task whose own decision (v2 at 50) is in force and in the store,
/// and its route mirror (reconciling every 5 ms); answers once the first
/// reconcile wrote it again (the store still holding it).
async fn own_decision_mirrored(
    store: &Arc<MemoryStore>,
) -> (
    Arc<Control>,
    Arc<Recorded>,
    BTreeMap<String, u32>,
    tokio::task::JoinHandle<()>,
) {
    let config = Config::parse(CONFIG, "test").unwrap();
    let control = Control::start(config, store.clone() as Arc<dyn Store>, "dynamodb")
        .await
        .unwrap();
    let ours = BTreeMap::from([("v1".to_string(), 50), ("v2".to_string(), 50)]);
    control.set_weights(ours.clone(), "admin").await.unwrap();
    let recorded = Arc::new(Recorded::default());
    let sync = tokio::spawn(follow_route(
        control.clone(),
        recorded.clone(),
        Duration::from_millis(5),
    ));
    assert_eq!(recorded.writes(2).await[..2], [ours.clone(), ours.clone()]);
    (control, recorded, ours, sync)
}

/// Another task wrote a newer decision (a rollback) that this task has not
/// polled yet: this task's reconcile must not write its older weights over
/// the route, which holds the newer decision's.
#[tokio::test]
async fn a_reconcile_never_writes_over_a_newer_decision_in_the_store() {
    let store = Arc::new(MemoryStore::default());
    let (control, recorded, ours, sync) = own_decision_mirrored(&store).await;
    let generation = control.weights().generation + 1;
    *store.doc.lock().unwrap() = Some(crate::store::memory::doc(generation, "other-task", 0));
    // No await since the write above: every reconcile write from now on
    // read the newer decision (the double's load never waits).
    let before = recorded.0.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = recorded.0.lock().unwrap().clone();
    assert_eq!(
        after.len(),
        before,
        "reconciles wrote the older weights {ours:?} over the store's newer decision: {:?}",
        &after[before..]
    );
    assert_eq!(
        control.weights().weights,
        ours,
        "not polled: still in force here"
    );
    sync.abort();
}

/// While the store cannot be read, this task cannot know its decision is
/// still the latest: no reconcile writes it; once the store answers that it
/// is, reconciles write it again.
#[tokio::test]
async fn a_reconcile_skips_while_the_store_cannot_be_read() {
    let store = Arc::new(MemoryStore::default());
    let (_control, recorded, ours, sync) = own_decision_mirrored(&store).await;
    store.set_down(true);
    let before = recorded.0.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(recorded.0.lock().unwrap().len(), before, "written blind");
    store.set_down(false);
    assert_eq!(recorded.writes(before + 1).await[before], ours);
    sync.abort();
}

/// Nothing decided in the shared store yet: the task runs the config file's
/// weights (generation 0, its own) and its reconciles keep writing them (no
/// newer decision exists to be undone).
#[tokio::test]
async fn a_reconcile_writes_the_files_weights_while_the_store_holds_no_decision() {
    let store = Arc::new(MemoryStore::default());
    let config = Config::parse(CONFIG, "test").unwrap();
    let control = Control::start(config, store.clone() as Arc<dyn Store>, "dynamodb")
        .await
        .unwrap();
    assert_eq!(control.weights().generation, 0);
    let recorded = Arc::new(Recorded::default());
    let sync = tokio::spawn(follow_route(
        control.clone(),
        recorded.clone(),
        Duration::from_millis(5),
    ));
    let file = BTreeMap::from([("v1".to_string(), 90), ("v2".to_string(), 10)]);
    assert_eq!(
        recorded.writes(3).await[..3],
        [file.clone(), file.clone(), file]
    );
    sync.abort();
}

/// A store only this task writes (`shared()` false, like the file store).
struct OwnStore(MemoryStore);

impl Store for OwnStore {
    fn load(
        &self,
    ) -> BoxFuture<'_, Result<Option<crate::store::WeightsDoc>, crate::store::StoreError>> {
        self.0.load()
    }
    fn save<'a>(
        &'a self,
        doc: &'a crate::store::WeightsDoc,
        read_at: Option<u64>,
    ) -> BoxFuture<'a, Result<(), crate::store::StoreError>> {
        self.0.save(doc, read_at)
    }
    fn shared(&self) -> bool {
        false
    }
}

/// A task restarted on a store of its own (`OwnStore`, like the file) that
/// holds an earlier process's decision at generation 3 (v2 at `saved_v2`,
/// made while the config file said `file_v2`); the route follows it with a
/// 5 ms reconcile. Answers the generation in force and the recorder.
async fn restarted_on_its_own_store(
    saved_v2: u32,
    file_v2: u32,
) -> (u64, Arc<Recorded>, tokio::task::JoinHandle<()>) {
    let store = Arc::new(OwnStore(MemoryStore::default()));
    let earlier = crate::store::WeightsDoc {
        config_weights: Some(BTreeMap::from([
            ("v1".to_string(), 100 - file_v2),
            ("v2".to_string(), file_v2),
        ])),
        ..crate::store::memory::doc(3, "earlier-process", saved_v2)
    };
    *store.0.doc.lock().unwrap() = Some(earlier);
    let config = Config::parse(CONFIG, "test").unwrap();
    let control = Control::start(config, store.clone() as Arc<dyn Store>, "file")
        .await
        .unwrap();
    let recorded = Arc::new(Recorded::default());
    let sync = tokio::spawn(follow_route(
        control.clone(),
        recorded.clone(),
        Duration::from_millis(5),
    ));
    (control.weights().generation, recorded, sync)
}

/// A task's own store holds an older decision (an earlier process's) than
/// the one in force (the config file's edited weights win at start, and
/// are written back): no other task decides, so the reconciles keep
/// repairing the route with the decision in force.
#[tokio::test]
async fn a_reconcile_on_a_store_of_its_own_writes_the_decision_in_force() {
    // Saved while the file said 50/50; it says 90/10 now.
    let (generation, recorded, sync) = restarted_on_its_own_store(50, 50).await;
    assert_eq!(generation, 4, "the edited file wins");
    let file = BTreeMap::from([("v1".to_string(), 90), ("v2".to_string(), 10)]);
    assert_eq!(
        recorded.writes(3).await[..3],
        [file.clone(), file.clone(), file]
    );
    sync.abort();
}

/// After a restart on a store of its own (the file), the decision in force
/// is one an earlier process of this task wrote (another writer id): no
/// other task decides, so the route is still mirrored and reconciled.
#[tokio::test]
async fn a_restarted_task_on_a_store_of_its_own_mirrors_its_earlier_decision() {
    // Saved while the file said 90/10, as it still does: the saved 70/30 stays.
    let (generation, recorded, sync) = restarted_on_its_own_store(30, 10).await;
    assert_eq!(generation, 3, "the saved decision");
    let saved = BTreeMap::from([("v1".to_string(), 70), ("v2".to_string(), 30)]);
    assert_eq!(recorded.writes(2).await[..2], [saved.clone(), saved]);
    sync.abort();
}

/// A live report of `task` in `store`, as the task itself would write it.
fn report(store: &MemoryStore, task: &str, draining: bool) {
    let report = crate::store::TaskReport {
        task: task.into(),
        generation: 1,
        reported_at_ms: crate::store::unix_ms(),
        applied_at_ms: 0,
        ready: true,
        draining,
        degraded: false,
        version: "x".into(),
        appmesh_failing: false,
    };
    store.reports.lock().unwrap().insert(task.into(), report);
}

/// The writes `recorded` holds once `control`'s route mirror has had time
/// for many reconciles (every 5 ms).
async fn after_reconciles(recorded: &Recorded) -> Vec<BTreeMap<String, u32>> {
    tokio::time::sleep(Duration::from_millis(60)).await;
    recorded.0.lock().unwrap().clone()
}

/// The task that wrote the decision in force is gone (a fleet replaced by
/// a deployment): one other task reconciles the route in its place, the
/// live task with the smallest id, so drift is still repaired; never while
/// the writer reports live, nor when a smaller live id can.
#[tokio::test]
async fn a_task_stands_in_at_the_reconcile_for_a_writer_that_is_gone() {
    let store = Arc::new(MemoryStore::default());
    let config = Config::parse(CONFIG, "test").unwrap();
    let control = Control::start(config, store.clone() as Arc<dyn Store>, "dynamodb")
        .await
        .unwrap();
    let theirs = crate::store::memory::doc(3, "other-task", 30);
    *store.doc.lock().unwrap() = Some(theirs.clone());
    control.sync_from_store().await.unwrap();
    assert_eq!(control.weights().weights, theirs.weights);
    // Just adopted: left to its writer, whose first report may not have
    // been read yet, whatever the reports say.
    let recorded = Arc::new(Recorded::default());
    let sync = tokio::spawn(follow_route(
        control.clone(),
        recorded.clone(),
        Duration::from_millis(5),
    ));
    assert_eq!(after_reconciles(&recorded).await, [], "not settled");
    sync.abort();
    control.backdate_applied(Duration::from_secs(60));
    report(&store, "other-task", false);
    // "!" sorts before any task id a gateway makes (HOSTNAME, pid, hex).
    report(&store, "!smaller", false);
    control.report_to_store().await.unwrap();
    let recorded = Arc::new(Recorded::default());
    let sync = tokio::spawn(follow_route(
        control.clone(),
        recorded.clone(),
        Duration::from_millis(5),
    ));
    assert_eq!(after_reconciles(&recorded).await, [], "the writer lives");

    store.reports.lock().unwrap().remove("other-task");
    control.report_to_store().await.unwrap();
    assert_eq!(
        after_reconciles(&recorded).await,
        [],
        "a smaller id stands in"
    );

    report(&store, "!smaller", true);
    control.report_to_store().await.unwrap();
    assert_eq!(
        recorded.writes(2).await[..2],
        [theirs.weights.clone(), theirs.weights.clone()]
    );
    assert_eq!(control.weights().weights, theirs.weights);
    sync.abort();
}

/// The report of `task` in `store` says that its own route syncs fail.
fn fails_its_syncs(store: &MemoryStore, task: &str) {
    report(store, task, false);
    if let Some(r) = store.reports.lock().unwrap().get_mut(task) {
        r.appmesh_failing = true;
    }
}

/// A task on a memory store whose reports `reports` sets, its route
/// mirrored through a recording sync reconciling every 60 s (paused-time
/// tests).
async fn following_with(
    reports: impl FnOnce(&MemoryStore),
) -> (
    Arc<MemoryStore>,
    Arc<Control>,
    Arc<Recorded>,
    tokio::task::JoinHandle<()>,
) {
    let store = Arc::new(MemoryStore::default());
    let config = Config::parse(CONFIG, "test").unwrap();
    let control = Control::start(config, store.clone() as Arc<dyn Store>, "dynamodb")
        .await
        .unwrap();
    reports(&store);
    control.report_to_store().await.unwrap();
    let recorded = Arc::new(Recorded::default());
    let sync = tokio::spawn(follow_route(
        control.clone(),
        recorded.clone(),
        Duration::from_secs(60),
    ));
    (store, control, recorded, sync)
}

/// `other-task`'s decision (`generation`, v2 at `v2`) in the store and
/// adopted at a poll.
async fn theirs_adopted(
    store: &MemoryStore,
    control: &Control,
    generation: u64,
    v2: u32,
) -> crate::store::WeightsDoc {
    let theirs = crate::store::memory::doc(generation, "other-task", v2);
    *store.doc.lock().unwrap() = Some(theirs.clone());
    control.sync_from_store().await.unwrap();
    theirs
}

/// A writer whose own route syncs fail (its `[appmesh]` broken), deciding
/// faster than the reconcile interval (a rollout's steps): its decisions
/// still reach the route through a stand-in, each within about
/// `VERIFY_AFTER` of being made. Before, every new decision put the
/// reconcile off again, and a decision had to settle for the report
/// staleness bound first: none was written while they kept coming.
#[tokio::test(start_paused = true)]
async fn a_failing_writers_decisions_reach_the_route_while_they_keep_coming() {
    let (store, control, recorded, sync) =
        following_with(|store| fails_its_syncs(store, "other-task")).await;
    let mut last = BTreeMap::new();
    for (generation, v2) in (2..).zip([10, 20, 30, 40, 50, 60]) {
        last = theirs_adopted(&store, &control, generation, v2)
            .await
            .weights;
        tokio::time::sleep(Duration::from_secs(7)).await;
    }
    let writes = recorded.0.lock().unwrap().clone();
    assert!(
        writes.len() >= 3,
        "the route got {} of 6 decisions in 42 s: {writes:?}",
        writes.len()
    );
    tokio::time::sleep(Duration::from_secs(13)).await;
    assert_eq!(recorded.0.lock().unwrap().last(), Some(&last));
    // No new decision: the stand-in is back to the reconcile interval
    // (60 s +-20 %), not every 10 s for as long as the writer fails.
    let before = recorded.0.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(150)).await;
    let more = recorded.0.lock().unwrap().len() - before;
    assert!(more <= 4, "{more} writes in 150 s");
    sync.abort();
}

/// The writer's first failing sync of a decision: its report says so only
/// after this task adopted the decision. The decision still reaches the
/// route through this task within about `VERIFY_AFTER`, not at the next
/// reconcile (60 s here, or never when a newer decision comes first).
#[tokio::test(start_paused = true)]
async fn a_decision_whose_writer_fails_after_it_was_adopted_is_written_soon() {
    let (store, control, recorded, sync) =
        following_with(|store| report(store, "other-task", false)).await;
    let theirs = theirs_adopted(&store, &control, 2, 30).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(recorded.0.lock().unwrap().len(), 0, "the writer syncs it");
    fails_its_syncs(&store, "other-task");
    control.report_to_store().await.unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    // Written (and maybe checked again since: the same weights).
    let writes = recorded.0.lock().unwrap().clone();
    assert!(
        !writes.is_empty() && writes.iter().all(|w| *w == theirs.weights),
        "not written within 14 s: {writes:?}"
    );
    sync.abort();
}

/// The writer fails its syncs, and so does the task that stood in for it
/// (both with the route's UpdateRoute refused, say): this task, next in
/// line, writes the decision within about `VERIFY_AFTER` of that task's
/// report saying so, not at its next reconcile (60 s here).
#[tokio::test(start_paused = true)]
async fn when_the_stand_in_fails_too_the_next_task_takes_over_soon() {
    let (store, control, recorded, sync) = following_with(|store| {
        fails_its_syncs(store, "other-task");
        // "!" sorts before any task id a gateway makes: it stands in first.
        report(store, "!smaller", false);
    })
    .await;
    let theirs = theirs_adopted(&store, &control, 2, 30).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(
        recorded.0.lock().unwrap().len(),
        0,
        "the smaller id stands in"
    );
    fails_its_syncs(&store, "!smaller");
    control.report_to_store().await.unwrap();
    tokio::time::sleep(Duration::from_secs(13)).await;
    // Written (and maybe checked again since: the same weights).
    let writes = recorded.0.lock().unwrap().clone();
    assert!(
        !writes.is_empty() && writes.iter().all(|w| *w == theirs.weights),
        "not taken over within 13 s: {writes:?}"
    );
    sync.abort();
}

/// A task whose sync failed while it stood in for a gone writer, once the
/// writer is back: it tries again at its reconcile (the store read first)
/// and, the route written, no longer warns nor reports its syncs failing.
/// Before, it neither synced nor cleared the error until the next
/// decision, and every task's fleet list called it failing.
#[tokio::test]
async fn a_task_whose_stand_in_sync_failed_tries_again_and_clears_its_error() {
    let store = Arc::new(MemoryStore::default());
    let text = format!(
        "{CONFIG}[appmesh]\nmesh = \"m\"\nvirtual_router = \"r\"\nroute = \"rt\"\n\
         virtual_nodes = {{ v1 = \"node-1\", v2 = \"node-2\" }}\n"
    );
    let config = Config::parse(&text, "test").unwrap();
    let control = Control::start(config, store.clone() as Arc<dyn Store>, "dynamodb")
        .await
        .unwrap();
    let theirs = crate::store::memory::doc(3, "other-task", 30);
    *store.doc.lock().unwrap() = Some(theirs.clone());
    control.sync_from_store().await.unwrap();
    control.backdate_applied(Duration::from_secs(60));
    control.report_to_store().await.unwrap();
    let recorded = Arc::new(Recorded::default());
    recorded.5.store(true, Ordering::SeqCst);
    let sync = tokio::spawn(follow_route(
        control.clone(),
        recorded.clone(),
        Duration::from_millis(5),
    ));
    recorded.writes(1).await;
    // The writer is back (it reports live).
    report(&store, "other-task", false);
    control.report_to_store().await.unwrap();
    let cleared = async {
        loop {
            let status = control.status();
            if status
                .appmesh
                .as_ref()
                .is_some_and(|a| a.last_error.is_none())
            {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let status = tokio::time::timeout(Duration::from_secs(5), cleared)
        .await
        .expect("the failed sync's error stayed");
    assert!(status.warnings.is_empty(), "{:?}", status.warnings);
    control.report_to_store().await.unwrap();
    assert!(!store.reports.lock().unwrap()[control.writer()].appmesh_failing);
    sync.abort();
}

/// Starts a task whose own decision (v2 at 50) is in force, mirrored
/// through `recorded` (no reconcile within a test); answers once its first
/// write began, with another task's newer decision (v2 at 0), which
/// reaches the store as that write begins when `stored_during_write`.
async fn own_decision_then_theirs(
    store: &Arc<MemoryStore>,
    recorded: &Arc<Recorded>,
    stored_during_write: bool,
) -> (
    Arc<Control>,
    BTreeMap<String, u32>,
    crate::store::WeightsDoc,
    tokio::task::JoinHandle<()>,
) {
    let config = Config::parse(CONFIG, "test").unwrap();
    let control = Control::start(config, store.clone() as Arc<dyn Store>, "dynamodb")
        .await
        .unwrap();
    let ours = BTreeMap::from([("v1".to_string(), 50), ("v2".to_string(), 50)]);
    control.set_weights(ours.clone(), "admin").await.unwrap();
    let theirs = crate::store::memory::doc(control.weights().generation + 1, "other-task", 0);
    if stored_during_write {
        let (store, newer) = (store.clone(), theirs.clone());
        *recorded.2.lock().unwrap() = Some(Box::new(move || {
            *store.doc.lock().unwrap() = Some(newer);
        }));
    }
    let sync = tokio::spawn(follow_route(
        control.clone(),
        recorded.clone(),
        Duration::from_secs(3600),
    ));
    assert_eq!(recorded.writes(1).await, std::slice::from_ref(&ours));
    (control, ours, theirs, sync)
}

/// `theirs` in the store (again, if it is there already) and adopted at a
/// poll: it is in force, and the route got this task's `ours`, then it.
async fn adopted_and_written(
    store: &MemoryStore,
    control: &Control,
    recorded: &Recorded,
    ours: BTreeMap<String, u32>,
    theirs: crate::store::WeightsDoc,
) {
    *store.doc.lock().unwrap() = Some(theirs.clone());
    control.sync_from_store().await.unwrap();
    assert_eq!(control.weights().weights, theirs.weights);
    assert_eq!(recorded.writes(2).await, [ours, theirs.weights]);
}

/// While this task's write went out, another task wrote a newer decision
/// and mirrored it: this task's older weights may have landed last, so it
/// writes the newer decision too once it adopts it (it would otherwise
/// leave it to the next reconcile of that decision's writer).
#[tokio::test]
async fn a_newer_decision_stored_during_a_write_is_written_too() {
    let store = Arc::new(MemoryStore::default());
    let recorded = Arc::new(Recorded::default());
    let (control, ours, theirs, sync) = own_decision_then_theirs(&store, &recorded, true).await;
    // This task adopts it at its poll.
    adopted_and_written(&store, &control, &recorded, ours, theirs).await;
    sync.abort();
}

/// A write already on its way when a newer decision comes is waited for,
/// not dropped (dropped, it could still land after the newer decision's
/// write), and the newer decision is written after it: its writer may have
/// written it before this task's older write landed.
#[tokio::test]
async fn a_write_on_its_way_is_waited_for_and_the_newer_decision_written_after_it() {
    let store = Arc::new(MemoryStore::default());
    let recorded = Arc::new(Recorded::default());
    recorded.3.store(true, Ordering::SeqCst);
    let (control, ours, theirs, sync) = own_decision_then_theirs(&store, &recorded, false).await;
    // Adopted while this task's write is on its way.
    adopted_and_written(&store, &control, &recorded, ours, theirs).await;
    let log = || recorded.4.lock().unwrap().clone();
    let wait = async {
        while log().len() < 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .unwrap_or_else(|_| panic!("{:?}", log()));
    assert_eq!(log(), ["began 50", "ended 50", "began 0", "ended 0"]);
    sync.abort();
}

/// A write sent is checked again after `VERIFY_AFTER`, well before the
/// next reconcile: an attempt the SDK timed out and sent again may land
/// after the write that answered.
#[tokio::test(start_paused = true)]
async fn a_write_sent_is_checked_again_soon_after() {
    let store = Arc::new(MemoryStore::default());
    let recorded = Arc::new(Recorded::default());
    let (_control, ours, _theirs, sync) = own_decision_then_theirs(&store, &recorded, false).await;
    let began = tokio::time::Instant::now();
    let again = async {
        while recorded.0.lock().unwrap().len() < 2 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), again)
        .await
        .expect("not checked again within a minute (the reconcile is hourly)");
    assert!(began.elapsed() >= super::VERIFY_AFTER.mul_f64(0.8));
    assert_eq!(recorded.0.lock().unwrap()[1], ours);
    sync.abort();
}
