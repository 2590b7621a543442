//! Reloads against the decision in force: what an edit of the file changes
//! and what it keeps (rollbacks, endpoints, a rollout).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::Config;
use crate::control::Control;
use crate::control::rollout::Action;
use crate::discovery::EndpointSink;
use crate::rollout::state::Phase;
use crate::store::Store;
use crate::store::file::FileStore;

/// A config with `v1` stable and `versions`: (name, weight, source line).
fn config(versions: &[(&str, u32, &str)]) -> Config {
    config_with("v1", versions)
}

fn config_with(stable: &str, versions: &[(&str, u32, &str)]) -> Config {
    let mut text = format!(
        "[listener]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[split]\nstable = \"{stable}\"\n"
    );
    for (name, weight, source) in versions {
        text += &format!("[[versions]]\nname = \"{name}\"\nweight = {weight}\n{source}\n");
    }
    Config::parse(&text, "test").unwrap()
}

fn stat(port: u16) -> String {
    format!("endpoints = [\"127.0.0.1:{port}\"]")
}

async fn start(dir: &tempfile::TempDir, config: Config) -> Arc<Control> {
    let store = Arc::new(FileStore::new(dir.path().join("state.json")));
    Control::start(config, store as Arc<dyn Store>, "file")
        .await
        .unwrap()
}

fn weights(control: &Control) -> BTreeMap<String, u32> {
    control.weights().weights
}

fn w(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs.iter().map(|(n, w)| (n.to_string(), *w)).collect()
}

/// v1 (stable, 90) and v2 (10), each on an endpoint of its own.
const TWO: [(&str, u32, &str); 2] = [
    ("v1", 90, "endpoints = [\"127.0.0.1:1\"]"),
    ("v2", 10, "endpoints = [\"127.0.0.1:2\"]"),
];

/// A gateway on [`TWO`] in `dir` whose admin set `weights`, then stopped.
async fn decided_then_stopped(dir: &tempfile::TempDir, weights: &[(&str, u32)]) {
    let control = start(dir, config(&TWO)).await;
    control.set_weights(w(weights), "admin").await.unwrap();
}

#[tokio::test]
async fn adding_a_version_keeps_a_rollback_on_reload_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let two = TWO.to_vec();
    let control = start(&dir, config(&two)).await;
    control.rollback("admin").await.unwrap();
    assert_eq!(weights(&control), w(&[("v1", 100), ("v2", 0)]));

    // The next release is added to the file: the rollback stays.
    let line = stat(3);
    let three = [two.clone(), vec![("v3", 0, line.as_str())]].concat();
    let status = control.reload(Ok(config(&three)), "test").await;
    assert!(status.ok, "{status:?}");
    assert_eq!(weights(&control), w(&[("v1", 100), ("v2", 0), ("v3", 0)]));
    // And at a restart with one more in the file.
    drop(control);
    let line = stat(4);
    let four = [three.clone(), vec![("v4", 0, line.as_str())]].concat();
    let control = start(&dir, config(&four)).await;
    assert_eq!(
        weights(&control),
        w(&[("v1", 100), ("v2", 0), ("v3", 0), ("v4", 0)])
    );

    // Removing a version that holds no traffic keeps it too.
    let status = control.reload(Ok(config(&two)), "test").await;
    assert!(status.ok, "{status:?}");
    assert_eq!(weights(&control), w(&[("v1", 100), ("v2", 0)]));

    // Editing a weight is a decision, and wins.
    let edited = [("v1", 80, stat(1)), ("v2", 20, stat(2))];
    let edited: Vec<_> = edited
        .iter()
        .map(|(n, w, s)| (*n, *w, s.as_str()))
        .collect();
    let status = control.reload(Ok(config(&edited)), "test").await;
    assert!(status.ok, "{status:?}");
    assert_eq!(weights(&control), w(&[("v1", 80), ("v2", 20)]));

    // The versions that carried all the traffic leave: the file's weights.
    control
        .set_weights(w(&[("v1", 0), ("v2", 100)]), "admin")
        .await
        .unwrap();
    let line = stat(1);
    let alone = [("v1", 80, line.as_str())];
    let status = control.reload(Ok(config(&alone)), "test").await;
    assert!(status.ok, "{status:?}");
    assert_eq!(weights(&control), w(&[("v1", 80)]));
}

#[tokio::test]
async fn a_changed_cloud_map_source_keeps_the_endpoints_until_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let source = "cloudmap = { namespace = \"ns\", service = \"v2\" }";
    let line = stat(1);
    let control = start(&dir, config(&[("v1", 90, &line), ("v2", 10, source)])).await;
    let addr = "127.0.0.1:2".parse().unwrap();
    control.endpoints_discovered("v2", vec![addr]);
    let endpoints = |control: &Control| {
        let status = control.status();
        let v2 = status.versions.iter().find(|v| v.name == "v2").unwrap();
        v2.endpoints
            .iter()
            .map(|e| e.address.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(endpoints(&control), ["127.0.0.1:2"]);

    let changed = "cloudmap = { namespace = \"ns\", service = \"v2\", health = \"ALL\" }";
    let status = control
        .reload(
            Ok(config(&[("v1", 90, &line), ("v2", 10, changed)])),
            "test",
        )
        .await;
    assert!(status.ok, "{status:?}");
    assert_eq!(
        endpoints(&control),
        ["127.0.0.1:2"],
        "kept until it answers"
    );
    // Its first answer replaces them, an empty one too.
    control.endpoints_discovered("v2", Vec::new());
    assert!(endpoints(&control).is_empty());
}

#[tokio::test]
async fn a_weights_edit_waits_for_a_running_rollout_and_a_new_stable_ends_a_paused_one() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [stat(1), stat(2), stat(3)];
    let file = |v1: u32, v2: u32, stable: &str| {
        let three = [
            ("v1", v1, &lines[0]),
            ("v2", v2, &lines[1]),
            ("v3", 0, &lines[2]),
        ];
        let three: Vec<_> = three.iter().map(|(n, w, s)| (*n, *w, s.as_str())).collect();
        config_with(stable, &three)
    };
    let control = start(&dir, file(100, 0, "v1")).await;
    control
        .start_rollout(br#"{"canary": "v2", "steps": [10, 50], "interval_s": 60}"#)
        .await
        .unwrap();
    let during = weights(&control);
    assert_eq!(during["v2"], 10);

    // Progressing: refused, nothing changes.
    let status = control.reload(Ok(file(50, 50, "v1")), "test").await;
    assert!(!status.ok, "{status:?}");
    assert!(
        status.message.contains("rollout of `v2`"),
        "{}",
        status.message
    );
    assert_eq!(weights(&control), during);
    assert_eq!(
        control.config().versions[0].weight,
        100,
        "the old config stays"
    );
    // Adding a version is no weights edit.
    let line = stat(4);
    let four = [
        ("v1", 100, lines[0].as_str()),
        ("v2", 0, &lines[1]),
        ("v3", 0, &lines[2]),
        ("v4", 0, &line),
    ];
    let status = control.reload(Ok(config(&four)), "test").await;
    assert!(status.ok, "{status:?}");
    assert_eq!(control.running_rollout().unwrap().phase, Phase::Progressing);

    // Paused: a new stable version in the file ends the rollout, which
    // could neither resume nor abort from the old one.
    control.rollout_action(Action::Pause).await.unwrap();
    let v3 = [
        ("v1", 0, &lines[0]),
        ("v2", 0, &lines[1]),
        ("v3", 100, &lines[2]),
    ];
    let v3: Vec<_> = v3.iter().map(|(n, w, s)| (*n, *w, s.as_str())).collect();
    let status = control.reload(Ok(config_with("v3", &v3)), "test").await;
    assert!(status.ok, "{status:?}");
    let ended = control.rollout().unwrap();
    assert_eq!(ended.phase, Phase::Aborted);
    assert!(
        ended
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("`v3` stable"),
        "{ended:?}"
    );
    assert!(control.running_rollout().is_none());
    assert_eq!(control.weights().stable, "v3");
}

#[tokio::test]
async fn promoting_during_a_paused_rollout_ends_it() {
    let lines = [stat(1), stat(2), stat(3)];
    let three = [
        ("v1", 100, lines[0].as_str()),
        ("v2", 0, &lines[1]),
        ("v3", 0, &lines[2]),
    ];
    for (promoted, phase) in [("v2", Phase::Succeeded), ("v3", Phase::Aborted)] {
        let dir = tempfile::tempdir().unwrap();
        let control = start(&dir, config(&three)).await;
        control
            .start_rollout(br#"{"canary": "v2", "steps": [10, 50], "interval_s": 60}"#)
            .await
            .unwrap();
        control.rollout_action(Action::Pause).await.unwrap();
        control.promote(promoted, "admin").await.unwrap();
        assert_eq!(control.rollout().unwrap().phase, phase, "{promoted}");
        // Nothing left to resume, or to abort onto the old stable version.
        assert!(control.rollout_action(Action::Resume).await.is_err());
        assert!(control.rollout_action(Action::Abort).await.is_err());
        assert_eq!(control.weights().stable, promoted);
        assert_eq!(weights(&control)[promoted], 100);
    }
}

#[tokio::test]
async fn a_restart_without_the_versions_that_carried_the_traffic_starts_on_the_file() {
    let dir = tempfile::tempdir().unwrap();
    decided_then_stopped(&dir, &[("v1", 0), ("v2", 100)]).await;
    // v1's weight is the file's as before: no edit, and the saved decision
    // leaves v1 at 0 alone.
    let line = stat(1);
    let control = start(&dir, config(&[("v1", 90, &line)])).await;
    assert_eq!(weights(&control), w(&[("v1", 90)]));
    // That decision is saved: the admin one does not come back later.
    let doc = saved(&dir).await;
    assert_eq!((doc.generation, doc.weights), (2, w(&[("v1", 90)])));
}

/// The versions that carried all the traffic leave and another comes in
/// (v2 replaced by v3): the file's weights apply, never the newcomer's file
/// weight alone against the kept versions' 0 (v3 taking 100%), on a restart
/// as on a reload.
#[tokio::test]
async fn replacing_the_versions_that_carried_the_traffic_applies_the_files_weights() {
    let lines = [stat(1), stat(3)];
    let replaced = [("v1", 90, lines[0].as_str()), ("v3", 10, &lines[1])];

    let dir = tempfile::tempdir().unwrap();
    decided_then_stopped(&dir, &[("v1", 0), ("v2", 100)]).await;
    let control = start(&dir, config(&replaced)).await;
    assert_eq!(weights(&control), w(&[("v1", 90), ("v3", 10)]));
    assert_eq!(control.weights().source, "config");
    let doc = saved(&dir).await;
    assert_eq!(
        (doc.generation, doc.weights),
        (2, w(&[("v1", 90), ("v3", 10)]))
    );
    drop(control);

    let dir = tempfile::tempdir().unwrap();
    let control = start(&dir, config(&TWO)).await;
    control
        .set_weights(w(&[("v1", 0), ("v2", 100)]), "admin")
        .await
        .unwrap();
    let status = control.reload(Ok(config(&replaced)), "test").await;
    assert!(status.ok, "{status:?}");
    assert_eq!(weights(&control), w(&[("v1", 90), ("v3", 10)]));
    assert_eq!(saved(&dir).await.weights, w(&[("v1", 90), ("v3", 10)]));

    // A kept version that still carries traffic keeps the decision: the
    // newcomer gets its file weight.
    control
        .set_weights(w(&[("v1", 50), ("v3", 50)]), "admin")
        .await
        .unwrap();
    let line = stat(4);
    let again = [("v1", 90, lines[0].as_str()), ("v4", 10, &line)];
    let status = control.reload(Ok(config(&again)), "test").await;
    assert!(status.ok, "{status:?}");
    assert_eq!(weights(&control), w(&[("v1", 50), ("v4", 10)]));
}

/// A state file naming none of the config's versions (edited by hand) is
/// not "restored": the file's weights serve, as a decision of the config's,
/// and that is what is saved.
#[tokio::test]
async fn a_saved_decision_of_versions_the_config_lacks_is_not_restored() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("state.json"),
        r#"{"stable":"v9","weights":{"v9":5},"generation":3,"updated_at_ms":1,"source":"admin"}"#,
    )
    .unwrap();
    let control = start(&dir, config(&TWO)).await;
    let view = control.weights();
    assert_eq!(view.weights, w(&[("v1", 90), ("v2", 10)]));
    assert_eq!(
        (view.stable.as_str(), view.source.as_str(), view.generation),
        ("v1", "config", 4)
    );
    assert_eq!(saved(&dir).await.source, "config");
}

/// A shared store: another task's decision that gives all the traffic to
/// versions this task lacks is not run here with this task's own newcomer
/// taking it all, neither adopted by a poll nor at start.
#[tokio::test]
async fn a_fleet_decision_carried_by_versions_this_task_lacks_is_not_adopted() {
    use crate::store::memory::{MemoryStore, doc};
    let store = Arc::new(MemoryStore::default());
    let lines = [stat(1), stat(3)];
    let replaced = config(&[("v1", 90, lines[0].as_str()), ("v3", 10, &lines[1])]);
    let control = Control::start(replaced.clone(), store.clone(), "memory")
        .await
        .unwrap();
    // Another task (v1 and v2) decides v1 20, v2 80: v1 carries some, adopted.
    *store.doc.lock().unwrap() = Some(doc(1, "other", 80));
    control.sync_from_store().await.unwrap();
    assert_eq!(weights(&control), w(&[("v1", 20), ("v3", 10)]));
    // Then v1 0, v2 100: nothing this task has carries it, not adopted.
    *store.doc.lock().unwrap() = Some(doc(2, "other", 100));
    control.sync_from_store().await.unwrap();
    assert_eq!(weights(&control), w(&[("v1", 20), ("v3", 10)]));
    assert_eq!(control.weights().generation, 1);

    // A task starting on that store serves its file's weights.
    let joining = Control::start(replaced, store.clone(), "memory")
        .await
        .unwrap();
    assert_eq!(weights(&joining), w(&[("v1", 90), ("v3", 10)]));
}

/// The decision in the state file.
async fn saved(dir: &tempfile::TempDir) -> crate::store::WeightsDoc {
    FileStore::new(dir.path().join("state.json"))
        .load()
        .await
        .unwrap()
        .expect("a saved decision")
}

#[tokio::test]
async fn a_stable_version_edited_while_stopped_wins_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    decided_then_stopped(&dir, &[("v1", 70), ("v2", 30)]).await;
    assert_eq!(saved(&dir).await.config_stable.as_deref(), Some("v1"));

    // Only the stable version changes in the file: an edit, it wins as on
    // a reload (the file's weights, one generation up).
    let control = start(&dir, config_with("v2", &TWO)).await;
    let view = control.weights();
    assert_eq!(view.stable, "v2");
    assert_eq!(view.weights, w(&[("v1", 90), ("v2", 10)]));
    assert_eq!((view.generation, view.source.as_str()), (2, "config"));
    // Reloading the same file changes nothing.
    let status = control.reload(Ok(config_with("v2", &TWO)), "test").await;
    assert!(status.ok, "{status:?}");
    assert_eq!(control.weights().stable, "v2");
    assert_eq!(control.weights().generation, 2);
}

#[tokio::test]
async fn a_saved_decision_without_the_files_stable_version_is_restored() {
    // A state file written by an older gateway (no `config_stable`), with a
    // field from a newer one: it loads, and an unknown stable version is no
    // edit.
    let dir = tempfile::tempdir().unwrap();
    decided_then_stopped(&dir, &[("v1", 70), ("v2", 30)]).await;
    let path = dir.path().join("state.json");
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let fields = doc.as_object_mut().unwrap();
    assert!(fields.remove("config_stable").is_some());
    fields.insert("from_a_newer_gateway".into(), serde_json::json!({"x": 1}));
    std::fs::write(&path, doc.to_string()).unwrap();

    let control = start(&dir, config_with("v2", &TWO)).await;
    let view = control.weights();
    assert_eq!(view.stable, "v1");
    assert_eq!(view.weights, w(&[("v1", 70), ("v2", 30)]));
    assert_eq!(view.generation, 1);
}

#[tokio::test]
async fn the_files_edit_that_wins_at_start_is_saved() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [stat(1), stat(2)];
    let file = |v1: u32, v2: u32| config(&[("v1", v1, &lines[0]), ("v2", v2, &lines[1])]);
    let control = start(&dir, file(90, 10)).await;
    control
        .set_weights(w(&[("v1", 70), ("v2", 30)]), "admin")
        .await
        .unwrap();
    drop(control);

    // Edited while stopped: the file wins, and that decision is saved.
    let control = start(&dir, file(80, 20)).await;
    assert_eq!(control.weights().generation, 2);
    let doc = saved(&dir).await;
    assert_eq!((doc.generation, doc.source.as_str()), (2, "config"));
    assert_eq!(doc.weights, w(&[("v1", 80), ("v2", 20)]));
    assert_eq!(doc.config_weights, Some(w(&[("v1", 80), ("v2", 20)])));
    drop(control);

    // Edited back: another edit, never the admin decision of generation 1.
    let control = start(&dir, file(90, 10)).await;
    let view = control.weights();
    assert_eq!(view.weights, w(&[("v1", 90), ("v2", 10)]));
    assert_eq!((view.generation, view.source.as_str()), (3, "config"));
    assert_eq!(saved(&dir).await.generation, 3);
}

/// Started with static endpoints only, no Cloud Map discovery was set up:
/// a reload into a `cloudmap` source is refused naming its key, final for
/// that text (the file watcher does not try it again), and nothing applies.
#[tokio::test]
async fn a_cloud_map_source_without_discovery_set_up_is_refused_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (stat(1), stat(2));
    let control = start(&dir, config(&[("v1", 90, &one), ("v2", 10, &two)])).await;
    let source = "cloudmap = { namespace = \"ns\", service = \"v2\" }";
    for (edited, key) in [
        (
            config(&[("v1", 90, &one), ("v2", 10, &two), ("v3", 0, source)]),
            "versions[2].cloudmap",
        ),
        (
            config(&[("v1", 80, &one), ("v2", 20, source)]),
            "versions[1].cloudmap",
        ),
    ] {
        let (status, refusal) = control.reload_refusal(Ok(edited), "test").await;
        assert!(!status.ok, "{status:?}");
        assert!(
            status.message.contains(key) && status.message.contains("restart the gateway"),
            "{status:?}"
        );
        assert_eq!(refusal, Some(super::Refusal::RestartRequired));
        assert!(!super::Refusal::RestartRequired.retryable());
        assert_eq!(control.config().version_names(), ["v1", "v2"]);
        assert_eq!(weights(&control), w(&[("v1", 90), ("v2", 10)]));
    }
    // Once discovery is there (a gateway given a poller spawner), it applies.
    control.set_cloud_map_discovery(true);
    let status = control
        .reload(Ok(config(&[("v1", 90, &one), ("v2", 10, source)])), "test")
        .await;
    assert!(status.ok, "{status:?}");
}

/// A version added to the file while a decision uses most of the total
/// weight budget leaves invalid weights: refused, and final for that text
/// (the file watcher does not try it again and again); an explicit reload
/// after a decision that makes room applies it.
#[tokio::test]
async fn a_version_added_past_the_weight_budget_is_refused_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two, three) = (stat(1), stat(2), stat(3));
    let control = start(&dir, config(&[("v1", 90, &one), ("v2", 10, &two)])).await;
    control
        .set_weights(w(&[("v1", 999_990), ("v2", 10)]), "admin")
        .await
        .unwrap();
    let path = dir.path().join("gateway.toml");
    let mut text = String::from(
        "[listener]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[split]\nstable = \"v1\"\n",
    );
    for (name, weight, source) in [("v1", 90, &one), ("v2", 10, &two), ("v3", 5, &three)] {
        text += &format!("[[versions]]\nname = \"{name}\"\nweight = {weight}\n{source}\n");
    }
    std::fs::write(&path, text).unwrap();

    let (status, retry) =
        crate::reload::reload_file_retryable(&control, &path, "file-change").await;
    assert!(!status.ok, "{status:?}");
    assert!(
        status.message.contains("invalid weights") && status.message.contains("1000005"),
        "{status:?}"
    );
    assert!(!retry, "refused for good: the watcher must not retry it");
    let (_, refusal) = control
        .reload_refusal(Config::load(&path), "file-change")
        .await;
    assert_eq!(refusal, Some(super::Refusal::InvalidWeights));
    assert_eq!(control.config().version_names(), ["v1", "v2"]);
    assert_eq!(weights(&control), w(&[("v1", 999_990), ("v2", 10)]));

    // Room made by a decision: an explicit reload of the same text applies.
    control
        .set_weights(w(&[("v1", 90), ("v2", 10)]), "admin")
        .await
        .unwrap();
    let status = crate::reload::reload_file(&control, &path, "admin").await;
    assert!(status.ok, "{status:?}");
    assert_eq!(weights(&control), w(&[("v1", 90), ("v2", 10), ("v3", 5)]));
}
