//! The real binary as an operator runs it: check, restarts, SIGTERM, SIGHUP,
//! reloads under load, metrics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::support::*;

const TOKEN: &str = "lifecycle-token";

/// The config text [`write_config`] writes.
fn config_text(versions: &[(&str, u32, SocketAddr)], extra: &str) -> String {
    let mut text = config(
        "response_header = \"x-canary-version\"\noverride_header = \"x-canary-version\"",
        versions,
    );
    text = text.replace("[admin]\n", "[admin]\ntoken_env = \"LIFECYCLE_TOKEN\"\n");
    text.push_str(extra);
    text
}

fn write_config(dir: &Path, versions: &[(&str, u32, SocketAddr)], extra: &str) -> PathBuf {
    let path = dir.join("gateway.toml");
    let text = config_text(versions, extra);
    // Written whole and renamed into place: the gateway's file watcher (or a
    // SIGHUP sent right after) never reads half a file. A half-written file
    // would be rejected and re-read once complete, but it counts as a failed
    // reload, which the tests here assert never happens.
    let partial = dir.join("gateway.toml.partial");
    std::fs::write(&partial, text).unwrap();
    std::fs::rename(&partial, &path).unwrap();
    path
}

/// Starts the binary and waits for its "serving" log line.
fn spawn(config: &Path) -> Result<Proc, String> {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"]).arg(config);
    spawn_command(cmd)
}

fn spawn_command(mut cmd: Command) -> Result<Proc, String> {
    cmd.env("LIFECYCLE_TOKEN", TOKEN);
    spawn_serving(cmd, Duration::from_secs(20))
}

fn signal(proc: &Proc, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &proc.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

async fn weights(admin_addr: SocketAddr) -> serde_json::Value {
    let reply = admin(admin_addr, "GET", "/weights", Some(TOKEN), "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    serde_json::from_slice(&reply.body).unwrap()
}

#[test]
fn check_validates_and_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        config(
            "",
            &[
                ("v1", 90, "127.0.0.1:1".parse().unwrap()),
                ("v2", 10, "127.0.0.1:2".parse().unwrap()),
            ],
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("ok"), "{stdout}");

    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("weight = 10", "weight = -3"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("gw.toml")
            && stderr.contains("versions[1].weight")
            && stderr.contains("negative"),
        "{stderr}"
    );

    let out = Command::new(BIN)
        .args(["check", "--config", "/no/such/file.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/file.toml"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

/// `check` with an override variable set (CANARY_STORE_TABLE always is on
/// the reference ECS task): an error in the file names its line in the file
/// (the shipped ECS config starts with 11 comment lines), and an error about
/// a key the variable set names the variable.
#[test]
fn check_with_an_override_points_into_the_file_and_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    let check = |text: &str| {
        std::fs::write(&path, text).unwrap();
        let mut cmd = Command::new(BIN);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CANARY_") {
                cmd.env_remove(key);
            }
        }
        let out = cmd
            .args(["check", "--config"])
            .arg(&path)
            .env("CANARY_STORE_TABLE", "canary-gateway-weights")
            // ECS injects it from Secrets Manager; without it `check`, as
            // `run`, refuses the task's non-loopback admin address.
            .env("CANARY_ADMIN_TOKEN", "check-token")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ecs = include_str!("../../deploy/gateway.ecs.toml");
    let (ok, stderr) = check(ecs);
    assert!(ok, "{stderr}");

    let typed = ecs.replace(
        "trust_forwarded_headers = true",
        "trust_forwarded_headers = \"yes\"",
    );
    let line = typed
        .lines()
        .position(|l| l.starts_with("trust_forwarded_headers"))
        .unwrap()
        + 1;
    let (ok, stderr) = check(&typed);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            ":{line}: `listener.trust_forwarded_headers`: invalid type"
        )),
        "line {line} expected: {stderr}"
    );

    let cloudmap = config("", &[("v1", 1, "127.0.0.1:1".parse().unwrap())])
        + "\n[store]\nkind = \"cloudmap\"\nservice_id = \"srv-0123\"\n";
    let (ok, stderr) = check(&cloudmap);
    assert!(!ok);
    assert!(
        stderr.contains("`store.table`") && stderr.contains("CANARY_STORE_TABLE"),
        "{stderr}"
    );
}

#[tokio::test]
async fn admin_decisions_survive_a_restart_and_config_edits_win() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &[("v1", 90, v1.addr), ("v2", 10, v2.addr)], "");

    let gw = spawn(&path).unwrap();
    let reply = admin(gw.admin, "POST", "/rollback", Some(TOKEN), "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    signal(&gw, "-TERM");
    drop(gw);
    assert!(dir.path().join("gateway.state.json").exists());

    // The rolled-back canary takes no traffic after the restart.
    let gw = spawn(&path).unwrap();
    let w = weights(gw.admin).await;
    assert_eq!(w["weights"]["v2"], 0, "{w}");
    let counts = split_counts(gw.addr, 200, &[]).await;
    assert_eq!(counts.get("v2"), None, "{counts:?}");
    drop(gw);

    // Editing the file's weights is a newer decision: it wins.
    write_config(dir.path(), &[("v1", 70, v1.addr), ("v2", 30, v2.addr)], "");
    let gw = spawn(&path).unwrap();
    let w = weights(gw.admin).await;
    assert_eq!(w["weights"]["v2"], 30, "{w}");
}

/// An edit of the file's stable version alone, made while the gateway is
/// stopped, is a newer decision than the saved one: it wins at the next
/// start, as on a reload.
#[tokio::test]
async fn a_stable_version_edited_while_stopped_wins_at_the_next_start() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let dir = tempfile::tempdir().unwrap();
    let path = decided_then_stopped(dir.path(), &v1, &v2, "PUT", "/weights", ADMIN_70_30).await;

    // The same weights, v2 stable (the first version listed is stable).
    write_config(dir.path(), &[("v2", 10, v2.addr), ("v1", 90, v1.addr)], "");
    let gw = spawn(&path).unwrap();
    let w = weights(gw.admin).await;
    assert_eq!(w["stable"], "v2", "{w}");
    assert_eq!(
        (&w["weights"]["v1"], &w["weights"]["v2"]),
        (&90.into(), &10.into()),
        "{w}"
    );
    assert_eq!(
        (&w["generation"], &w["source"]),
        (&2.into(), &"config".into()),
        "{w}"
    );
    // A reload of the same file keeps it.
    let reply = admin(gw.admin, "POST", "/reload", Some(TOKEN), "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let w = weights(gw.admin).await;
    assert_eq!(
        (&w["stable"], &w["generation"]),
        (&"v2".into(), &2.into()),
        "{w}"
    );
}

/// The file's edit that wins at start is saved: editing the file back later
/// is another edit, and the admin decision it replaced never comes back.
#[tokio::test]
async fn an_edit_that_wins_at_start_is_saved_and_generations_never_go_back() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("gateway.state.json");
    let path = decided_then_stopped(dir.path(), &v1, &v2, "PUT", "/weights", ADMIN_70_30).await;

    write_config(dir.path(), &[("v1", 80, v1.addr), ("v2", 20, v2.addr)], "");
    let gw = spawn(&path).unwrap();
    let w = weights(gw.admin).await;
    assert_eq!(
        (&w["weights"]["v2"], &w["generation"]),
        (&20.into(), &2.into()),
        "{w}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(
        (&doc["weights"]["v2"], &doc["generation"]),
        (&20.into(), &2.into()),
        "{doc}"
    );
    assert_eq!(doc["config_weights"]["v2"], 20, "{doc}");
    signal(&gw, "-TERM");
    drop(gw);

    write_config(dir.path(), &[("v1", 90, v1.addr), ("v2", 10, v2.addr)], "");
    let gw = spawn(&path).unwrap();
    let w = weights(gw.admin).await;
    assert_eq!(
        (&w["weights"]["v2"], &w["generation"]),
        (&10.into(), &3.into()),
        "{w}"
    );
    assert_eq!(w["source"], "config", "{w}");
}

/// An admin decision for `decided_then_stopped`.
const ADMIN_70_30: &str = r#"{"weights":{"v1":70,"v2":30}}"#;

/// A gateway on a 90/10 config in `dir` takes one admin call (a decision,
/// saved in the state file) and is stopped; the config's path.
async fn decided_then_stopped(
    dir: &Path,
    v1: &Upstream,
    v2: &Upstream,
    method: &str,
    target: &str,
    body: &str,
) -> PathBuf {
    let path = write_config(dir, &[("v1", 90, v1.addr), ("v2", 10, v2.addr)], "");
    let gw = spawn(&path).unwrap();
    let reply = admin(gw.admin, method, target, Some(TOKEN), body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    signal(&gw, "-TERM");
    drop(gw);
    path
}

/// The decision in force gives all the traffic to v2 (v1 at 0); the config
/// replaces v2 with v3 (v1 90, v3 10). On a SIGHUP, and on a restart with
/// that decision saved, the file's weights apply (v1 90, v3 10): never the
/// decision's 0 for v1 beside v3's file weight, which sent every request
/// to v3, a version never tested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_the_version_that_carries_the_traffic_applies_the_files_weights() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let v3 = Upstream::start("v3").await;
    let dir = tempfile::tempdir().unwrap();
    let all_on_v2 = r#"{"weights":{"v1":0,"v2":100}}"#;
    let check = async |gw: &Proc| {
        let w = weights(gw.admin).await;
        assert_eq!(w["weights"], serde_json::json!({"v1": 90, "v3": 10}), "{w}");
        let counts = split_counts(gw.addr, 100, &[]).await;
        assert!(counts.get("v1").is_some_and(|&n| n > 50), "{counts:?}");
    };

    // Reload.
    let path = write_config(dir.path(), &[("v1", 90, v1.addr), ("v2", 10, v2.addr)], "");
    let gw = spawn(&path).unwrap();
    let reply = admin(gw.admin, "PUT", "/weights", Some(TOKEN), all_on_v2).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    write_config(dir.path(), &[("v1", 90, v1.addr), ("v3", 10, v3.addr)], "");
    signal(&gw, "-HUP");
    assert!(
        eventually(Duration::from_secs(10), async || {
            weights(gw.admin).await["weights"].get("v3").is_some()
        })
        .await
    );
    check(&gw).await;
    signal(&gw, "-TERM");
    drop(gw);

    // Restart.
    std::fs::remove_file(dir.path().join("gateway.state.json")).unwrap();
    let path = decided_then_stopped(dir.path(), &v1, &v2, "PUT", "/weights", all_on_v2).await;
    write_config(dir.path(), &[("v1", 90, v1.addr), ("v3", 10, v3.addr)], "");
    let gw = spawn(&path).unwrap();
    check(&gw).await;
    let log = gw.log.lock().unwrap().join("\n");
    assert!(
        log.contains("does not fit the config file") && !log.contains("restored the saved"),
        "{log}"
    );
}

/// A state file edited by hand into weights no gateway writes (all zero)
/// is not served: the file's weights are, and the log calls the saved
/// decision invalid instead of blaming an edit of the config's versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_with_invalid_weights_is_named_and_the_files_weights_serve() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let dir = tempfile::tempdir().unwrap();
    let path = decided_then_stopped(dir.path(), &v1, &v2, "POST", "/rollback", "").await;
    let state = dir.path().join("gateway.state.json");
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    doc["weights"] = serde_json::json!({ "v1": 0, "v2": 0 });
    std::fs::write(&state, doc.to_string()).unwrap();

    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"]).arg(&path);
    let mut gw = Starting::spawn(cmd);
    let warned = gw
        .line_with("serving the file's weights", Duration::from_secs(20))
        .unwrap();
    assert!(
        warned.contains("is invalid")
            && warned.contains("sum to 0")
            && !warned.contains("versions carrying"),
        "{warned}"
    );
    let serving = gw
        .line_with("canary-gateway serving", Duration::from_secs(20))
        .unwrap();
    let counts = split_counts(listener_of(&serving), 200, &[]).await;
    assert!(counts.get("v2").is_some_and(|&n| n > 0), "{counts:?}");
}

#[tokio::test]
async fn a_corrupt_state_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &[("v1", 1, "127.0.0.1:1".parse().unwrap())], "");
    std::fs::write(dir.path().join("gateway.state.json"), "{ nope").unwrap();
    let err = spawn(&path).err().expect("must not start");
    assert!(
        err.contains("gateway.state.json") && err.contains("delete"),
        "{err}"
    );
}

#[tokio::test]
async fn refuses_an_open_admin_port_without_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &[("v1", 1, "127.0.0.1:1".parse().unwrap())], "");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[admin]\ntoken_env = \"LIFECYCLE_TOKEN\"\naddress = \"127.0.0.1:0\"",
        "[admin]\ntoken_env = \"UNSET_TOKEN_VAR\"\naddress = \"0.0.0.0:0\"",
    );
    assert!(text.contains("0.0.0.0:0"), "{text}");
    std::fs::write(&path, text).unwrap();
    let err = spawn(&path).err().expect("must not start");
    assert!(err.contains("not loopback"), "{err}");
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests() {
    let v1 = Upstream::start("v1").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &[("v1", 1, v1.addr)], "");
    let mut gw = spawn(&path).unwrap();
    let addr = gw.addr;
    let in_flight = tokio::spawn(async move { get(addr, "/sleep?ms=1500", &[]).await });
    assert!(eventually(Duration::from_secs(5), async || v1.hits() == 1).await);
    signal(&gw, "-TERM");
    assert!(
        eventually(Duration::from_secs(5), async || {
            admin(gw.admin, "GET", "/readyz", None, "").await.status == 503
        })
        .await,
        "readyz must fail while draining"
    );
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "v1");
    // The keep-alive connection closes after it: the answer says so, or
    // the client would send its next request into a closing socket.
    assert_eq!(
        reply.header("connection"),
        Some("close"),
        "{:?}",
        reply.headers
    );
    let status = tokio::task::spawn_blocking(move || gw.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn reloads_and_weight_changes_under_load_fail_no_request() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &[("v1", 90, v1.addr), ("v2", 10, v2.addr)], "");
    let gw = spawn(&path).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), gw.addr);
        clients.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            // Bounded: at most 200k requests per client, stopped by the flag long before.
            for _ in 0..200_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match client.get("/", &[]).await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    for i in 0..30u32 {
        let canary = i % 20;
        write_config(
            dir.path(),
            &[("v1", 100 - canary, v1.addr), ("v2", canary, v2.addr)],
            "",
        );
        signal(&gw, "-HUP");
        let reply = admin(
            gw.admin,
            "PUT",
            "/weights",
            Some(TOKEN),
            &format!(r#"{{"weights":{{"v2":{}}}}}"#, i + 1),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let before = ok.load(Ordering::SeqCst);
        assert!(
            eventually(Duration::from_secs(5), async || ok.load(Ordering::SeqCst)
                > before + 20)
            .await
        );
    }
    // Every SIGHUP reloaded (the file watcher may add reloads of its own).
    assert!(
        eventually(Duration::from_secs(5), async || {
            let text = admin(gw.admin, "GET", "/metrics", None, "").await.text();
            metric_value(&text, "canary_reloads_total", &[("result", "ok")]) >= 30.0
        })
        .await
    );
    let text = admin(gw.admin, "GET", "/metrics", None, "").await.text();
    assert_eq!(
        metric_value(&text, "canary_reloads_total", &[("result", "error")]),
        0.0
    );
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::SeqCst), 0, "failed requests");
    assert!(ok.load(Ordering::SeqCst) > 1000);
    assert!(v2.hits() > 0 && v1.hits() > 0);
}

#[tokio::test]
async fn an_invalid_reload_keeps_the_running_config() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &[("v1", 50, v1.addr), ("v2", 50, v2.addr)], "");
    let gw = spawn(&path).unwrap();
    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("stable = \"v1\"", "stable = \"v7\""),
    )
    .unwrap();
    signal(&gw, "-HUP");
    assert!(
        eventually(Duration::from_secs(5), async || {
            let s = admin(gw.admin, "GET", "/status", Some(TOKEN), "").await;
            let v: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
            v["last_reload"]["ok"] == false
                && v["last_reload"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("split.stable")
        })
        .await
    );
    let counts = split_counts(gw.addr, 100, &[]).await;
    let v2 = counts.get("v2").copied().unwrap_or(0);
    assert!(
        (45..=55).contains(&v2),
        "the old 50/50 split must stay: {counts:?}"
    );
    let metrics = admin(gw.admin, "GET", "/metrics", None, "").await.text();
    assert!(
        metric_value(&metrics, "canary_reloads_total", &[("result", "error")]) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn metrics_match_the_requests_sent() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &[("v1", 90, v1.addr), ("v2", 10, v2.addr)], "");
    let gw = spawn(&path).unwrap();
    let mut client = Client::connect(gw.addr).await;
    for (n, path, version, status) in [
        (7, "/", "v2", 200),
        (5, "/status/404", "v1", 404),
        (3, "/status/503", "v1", 503),
    ] {
        for _ in 0..n {
            let reply = client
                .get(path, &[("x-canary-version", version)])
                .await
                .unwrap();
            assert_eq!(reply.status, status);
        }
    }
    let text = admin(gw.admin, "GET", "/metrics", None, "").await.text();
    let m = |name, labels: &[(&str, &str)]| metric_value(&text, name, labels);
    assert_eq!(
        m(
            "canary_requests_total",
            &[("version", "v2"), ("status", "2xx")]
        ),
        7.0,
        "{text}"
    );
    assert_eq!(
        m(
            "canary_requests_total",
            &[("version", "v1"), ("status", "4xx")]
        ),
        5.0
    );
    assert_eq!(
        m(
            "canary_requests_total",
            &[("version", "v1"), ("status", "5xx")]
        ),
        3.0
    );
    assert_eq!(
        m(
            "canary_request_duration_seconds_count",
            &[("version", "v2")]
        ),
        7.0
    );
    assert_eq!(m("canary_version_weight", &[("version", "v2")]), 10.0);
    assert_eq!(m("canary_endpoints", &[("version", "v1")]), 1.0);
    assert_eq!(m("canary_generation", &[]), 0.0);
    assert!(text.contains("canary_open_connections"));
    assert!(text.contains("canary_in_flight_requests"));
    assert!(
        !text.contains("/status/404"),
        "labels must never carry raw paths"
    );
}

/// A version a reload removes leaves `/metrics` (its series go stale in
/// Prometheus, as a removed ECS task's do, instead of piling up name after
/// name); added back, its counters resume where they were. Its dashboard
/// series stays for its window, at weight 0.
#[tokio::test]
async fn a_version_removed_by_a_reload_leaves_the_metrics_until_added_back() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let v3 = Upstream::start("v3").await;
    let dir = tempfile::tempdir().unwrap();
    let all = [
        ("v1", 80, v1.addr),
        ("v2", 10, v2.addr),
        ("v3", 10, v3.addr),
    ];
    let path = write_config(dir.path(), &all, "");
    let gw = spawn(&path).unwrap();
    let mut client = Client::connect(gw.addr).await;
    let to_v3 = [("x-canary-version", "v3")];
    for _ in 0..4 {
        assert_eq!(client.get("/", &to_v3).await.unwrap().status, 200);
    }
    let metrics = async || admin(gw.admin, "GET", "/metrics", None, "").await.text();
    let v3_2xx = [("version", "v3"), ("status", "2xx")];
    let text = metrics().await;
    assert_eq!(metric_value(&text, "canary_requests_total", &v3_2xx), 4.0);

    let reload = async || {
        let reply = admin(gw.admin, "POST", "/reload", Some(TOKEN), "").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    };
    write_config(dir.path(), &[("v1", 90, v1.addr), ("v2", 10, v2.addr)], "");
    reload().await;
    let text = metrics().await;
    assert!(!text.contains("version=\"v3\""), "{text}");
    for (version, weight) in [("v1", 90.0), ("v2", 10.0)] {
        let this = [("version", version)];
        assert_eq!(metric_value(&text, "canary_version_weight", &this), weight);
        let duration = format!("canary_request_duration_seconds_count{{version=\"{version}\"}}");
        assert!(text.contains(&duration), "{text}");
    }
    // The dashboard keeps v3's last 15 minutes, weighing 0 from now on.
    let v3_weight = async || {
        let reply = admin(gw.admin, "GET", "/ui/series", Some(TOKEN), "").await;
        let view: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        let versions = view["versions"].as_array().cloned().unwrap_or_default();
        let v3 = versions.into_iter().find(|v| v["name"] == "v3")?;
        v3["weight"].as_array()?.last()?.as_u64()
    };
    let zeroed = eventually(Duration::from_secs(5), async || {
        v3_weight().await == Some(0)
    })
    .await;
    assert!(zeroed, "{:?}", v3_weight().await);

    write_config(dir.path(), &all, "");
    reload().await;
    assert_eq!(client.get("/", &to_v3).await.unwrap().status, 200);
    let text = metrics().await;
    assert_eq!(
        metric_value(&text, "canary_requests_total", &v3_2xx),
        5.0,
        "{text}"
    );
    let v3_weight_gauge = [("version", "v3")];
    assert_eq!(
        metric_value(&text, "canary_version_weight", &v3_weight_gauge),
        10.0
    );
}

#[tokio::test]
async fn demo_serves_a_ninety_ten_split() {
    // Its files in a directory of the test's own: killed, it cannot remove them.
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env("TMPDIR", tmp.path());
    let gw = spawn_command(cmd).unwrap();
    let counts = split_counts(gw.addr, 200, &[]).await;
    let v2 = counts
        .iter()
        .filter(|(k, _)| k.contains("v2"))
        .map(|(_, n)| n)
        .sum::<usize>();
    let v1 = counts
        .iter()
        .filter(|(k, _)| k.contains("v1"))
        .map(|(_, n)| n)
        .sum::<usize>();
    assert_eq!(v1 + v2, 200, "{counts:?}");
    assert!((14..=26).contains(&v2), "{counts:?}");
    assert_eq!(
        admin(gw.admin, "GET", "/readyz", None, "").await.status,
        200
    );
}

#[tokio::test]
async fn access_and_audit_lines_are_logged() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &[("v1", 90, v1.addr), ("v2", 10, v2.addr)],
        "\n[log]\naccess_log = true\nformat = \"json\"\n",
    );
    let gw = spawn(&path).unwrap();
    assert_eq!(
        get(gw.addr, "/status/201", &[("x-canary-version", "v2")])
            .await
            .status,
        201
    );
    let reply = admin(
        gw.admin,
        "PUT",
        "/weights",
        Some(TOKEN),
        r#"{"weights":{"v2":20}}"#,
    )
    .await;
    assert_eq!(reply.status, 200);
    let find = |needle: &'static str| {
        let log = gw.log.clone();
        move || {
            log.lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
                .cloned()
        }
    };
    let access = find("\"target\":\"access\"");
    let audit = find("\"target\":\"audit\"");
    assert!(
        eventually(Duration::from_secs(5), async || access().is_some()
            && audit().is_some())
        .await
    );
    let access: serde_json::Value = serde_json::from_str(&access().unwrap()).unwrap();
    assert_eq!(access["fields"]["version"], "v2");
    assert_eq!(access["fields"]["status"], 201);
    assert_eq!(access["fields"]["upstream"], v2.addr.to_string());
    assert!(access["fields"]["latency_ms"].is_number());
    let audit: serde_json::Value = serde_json::from_str(&audit().unwrap()).unwrap();
    assert_eq!(audit["fields"]["source"], "admin");
    assert_eq!(audit["fields"]["generation"], 1);
    assert!(
        audit["fields"]["old"]
            .as_str()
            .unwrap()
            .contains("\"v2\": 10"),
        "{audit}"
    );
    assert!(
        audit["fields"]["new"]
            .as_str()
            .unwrap()
            .contains("\"v2\": 20"),
        "{audit}"
    );
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_one_gib_upload_streams_through_in_bounded_memory() {
    let v1 = Upstream::start("v1").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &[("v1", 1, v1.addr)], "");
    let gw = spawn(&path).unwrap();
    let before = peak_rss_kib(gw.child.id());

    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 4096; // 1 GiB
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        let chunk = bytes::Bytes::from(vec![b'g'; CHUNK]);
        for _ in 0..CHUNKS {
            if tx
                .send(Ok(http_body::Frame::data(chunk.clone())))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let req = http::Request::post("/count")
        .header("host", "h")
        .body(boxed(ChannelBody(rx)))
        .unwrap();
    let reply = tokio::time::timeout(
        Duration::from_secs(120),
        Client::connect(gw.addr).await.send(req),
    )
    .await
    .expect("the upload finished in time")
    .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), (CHUNK * CHUNKS).to_string());
    let after = peak_rss_kib(gw.child.id());
    // Streaming: the gateway's peak memory grows by far less than the body.
    assert!(
        after < before + 64 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB"
    );
}

/// The binary with its log read line by line, for tests that act before it
/// serves; killed on drop.
struct Starting {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Drop for Starting {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Starting {
    fn spawn(mut cmd: Command) -> Starting {
        use std::io::BufRead;
        let mut child = cmd
            .env("RUST_LOG", "info")
            .env("LIFECYCLE_TOKEN", TOKEN)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Starting {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// The first log line from now on containing `needle`, within `limit`;
    /// `Err` with the log (and the exit status) when the log ends first.
    fn line_with(&mut self, needle: &str, limit: Duration) -> Result<String, String> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(e) => {
                    let status = match e {
                        std::sync::mpsc::RecvTimeoutError::Disconnected => {
                            format!("exited: {:?}", self.child.wait())
                        }
                        std::sync::mpsc::RecvTimeoutError::Timeout => "still running".into(),
                    };
                    return Err(format!(
                        "no line with `{needle}` ({status}); log:\n{}",
                        self.log.join("\n")
                    ));
                }
            }
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }
}

/// `listener=ADDR` of a plain serving line.
fn listener_of(line: &str) -> SocketAddr {
    let start = line.find("listener=").unwrap() + "listener=".len();
    line[start..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The binary started on a DynamoDB store at `store` (a listener the test
/// holds: the start's first store read waits there unanswered for up to
/// `boot_timeout`), with AWS settings of its own and none of the
/// environment's.
fn start_on_a_silent_store(
    dir: &Path,
    v1: SocketAddr,
    store: SocketAddr,
    boot_timeout: &str,
) -> Starting {
    let path = write_config(
        dir,
        &[("v1", 1, v1)],
        &format!(
            "\n[store]\nkind = \"dynamodb\"\ntable = \"t\"\nkey = \"k\"\nboot_timeout = \"{boot_timeout}\"\n\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"http://{store}\"\n"
        ),
    );
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("AWS_") || key.starts_with("CANARY_") {
            cmd.env_remove(key);
        }
    }
    let nowhere = dir.join("no-such-aws-file");
    cmd.args(["run", "--config"])
        .arg(&path)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", &nowhere)
        .env("AWS_SHARED_CREDENTIALS_FILE", &nowhere);
    Starting::spawn(cmd)
}

/// A SIGHUP sent while the gateway starts (here during the shared store's
/// first read, which the test holds unanswered: the start's AWS setup and
/// store read come before any handler of the old code) does not end the
/// process: it is a reload once the gateway runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_during_the_start_is_a_reload_not_the_end() {
    let v1 = Upstream::start("v1").await;
    let store = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut gw = start_on_a_silent_store(dir.path(), v1.addr, store.local_addr().unwrap(), "2s");
    // The store's first read has begun: the start is under way.
    let (_held, _) = tokio::time::timeout(Duration::from_secs(20), store.accept())
        .await
        .expect("the gateway never read the store")
        .unwrap();
    gw.signal("-HUP");
    let serving = gw
        .line_with("canary-gateway serving", Duration::from_secs(20))
        .unwrap();
    // The reload may be logged before or after the serving line.
    if !gw.log.iter().any(|line| line.contains("sighup")) {
        gw.line_with("sighup", Duration::from_secs(10)).unwrap();
    }
    let reply = get(listener_of(&serving), "/", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(gw.child.try_wait().unwrap().is_none());
}

/// One SIGHUP that applies an edit is one reload: the file watcher's next
/// poll finds the text the SIGHUP applied and does not reload it again (it
/// did, a second later, as its own `file-change` reload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_a_sighup_applied_is_not_reloaded_again_by_the_watcher() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &[("v1", 90, v1.addr), ("v2", 10, v2.addr)], "");
    let gw = spawn(&path).unwrap();
    let metrics = async || admin(gw.admin, "GET", "/metrics", None, "").await.text();
    let status = async || {
        let reply = admin(gw.admin, "GET", "/status", Some(TOKEN), "").await;
        serde_json::from_slice::<serde_json::Value>(&reply.body).unwrap()
    };
    write_config(dir.path(), &[("v1", 80, v1.addr), ("v2", 20, v2.addr)], "");
    signal(&gw, "-HUP");
    assert!(
        eventually(Duration::from_secs(10), async || {
            status().await["last_reload"]["trigger"] == "sighup"
        })
        .await
    );
    let applied = status().await["last_reload"].clone();
    assert_eq!(applied["ok"], true, "{applied}");
    assert_eq!(weights(gw.admin).await["weights"]["v2"], 20);
    let reloads = metric_value(
        &metrics().await,
        "canary_reloads_total",
        &[("result", "ok")],
    );
    // Two more polls of the file: the second began after the first ended,
    // which began after the SIGHUP's reload.
    let polls = metric_value(&metrics().await, "canary_config_polls_total", &[]);
    assert!(
        eventually(Duration::from_secs(10), async || {
            metric_value(&metrics().await, "canary_config_polls_total", &[]) >= polls + 2.0
        })
        .await
    );
    assert_eq!(status().await["last_reload"], applied);
    let text = metrics().await;
    assert_eq!(
        metric_value(&text, "canary_reloads_total", &[("result", "ok")]),
        reloads,
        "{text}"
    );
}

/// A config file rewritten in place, a line at a time with pauses shorter
/// than the watcher's settle time (a text is applied once two polls, a
/// second apart, find it unchanged), is applied once, whole: no
/// intermediate text is reloaded (before, one that held only the `v1`
/// table applied, dropping `v2` from the 50/50 decision in force, and when
/// whole again `v2` came back at its file weight; the others were logged as
/// failed reloads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_written_in_place_is_applied_only_once_whole() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let dir = tempfile::tempdir().unwrap();
    let versions = [("v1", 90, v1.addr), ("v2", 10, v2.addr)];
    let path = write_config(
        dir.path(),
        &versions,
        "\n[timeouts]\nshutdown_grace = \"8s\"\n",
    );
    let gw = spawn(&path).unwrap();
    let metrics = async || admin(gw.admin, "GET", "/metrics", None, "").await.text();
    let status = async || {
        let reply = admin(gw.admin, "GET", "/status", Some(TOKEN), "").await;
        serde_json::from_slice::<serde_json::Value>(&reply.body).unwrap()
    };
    let reply = admin(
        gw.admin,
        "PUT",
        "/weights",
        Some(TOKEN),
        r#"{"weights":{"v1":50,"v2":50}}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let decided = weights(gw.admin).await;
    let text = metrics().await;
    let reloads = |text: &str, result: &str| {
        metric_value(text, "canary_reloads_total", &[("result", result)])
    };
    let (ok_before, errors_before) = (reloads(&text, "ok"), reloads(&text, "error"));

    // The same file, but for the grace and a restart-only key at its end
    // (seen in `restart_required` only if the whole text applied).
    let whole = config_text(
        &versions,
        "\n[timeouts]\nshutdown_grace = \"9s\"\n\n[runtime]\nworker_threads = 2\n",
    );
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&path).unwrap();
        for line in whole.split_inclusive('\n') {
            file.write_all(line.as_bytes()).unwrap();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let mut last = serde_json::Value::Null;
    assert!(
        eventually(Duration::from_secs(10), async || {
            last = status().await["last_reload"].clone();
            last["trigger"] == "file-change"
        })
        .await,
        "the whole file was never applied: {last}"
    );
    assert_eq!(last["ok"], true, "{last}");
    assert_eq!(
        last["restart_required"],
        serde_json::json!(["runtime.worker_threads"]),
        "not the whole text: {last}"
    );
    let text = metrics().await;
    assert_eq!(reloads(&text, "error"), errors_before, "{text}");
    assert_eq!(reloads(&text, "ok"), ok_before + 1.0, "{text}");
    let now = weights(gw.admin).await;
    assert_eq!(now["weights"], decided["weights"], "{now}");
    assert_eq!(now["generation"], decided["generation"], "{now}");
}

/// A config file a sidecar rewrites every 200 ms (whole, by rename, with a
/// timestamp comment) never settles, so the operator's weights edit in it
/// is not applied: the gateway says why, once, in a warn line naming the
/// file, and in `/status` (`config_file_unsettled_since_ms`, a warning).
/// Once the rewrites stop, the edit applies and both clear. Before,
/// nothing said anything: the edit just never applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_that_keeps_changing_is_said_and_applied_once_it_stops() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &[("v1", 90, v1.addr), ("v2", 10, v2.addr)], "");
    let gw = spawn(&path).unwrap();
    let status = async || {
        let reply = admin(gw.admin, "GET", "/status", Some(TOKEN), "").await;
        serde_json::from_slice::<serde_json::Value>(&reply.body).unwrap()
    };
    assert!(status().await["config_file_unsettled_since_ms"].is_null());
    // The lines logged so far that contain `needle` (copied: no lock is
    // held by a failing assertion, which would poison it for the reader).
    let said = |needle: &str| {
        gw.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect::<Vec<_>>()
    };

    // The operator's edit, stamped anew every 400 ms by the sidecar.
    let edited = config_text(&[("v1", 70, v1.addr), ("v2", 30, v2.addr)], "");
    let stop = Arc::new(AtomicBool::new(false));
    let sidecar = {
        let (stop, dir) = (stop.clone(), dir.path().to_path_buf());
        std::thread::spawn(move || {
            let mut stamp = 0u64;
            while !stop.load(Ordering::SeqCst) {
                stamp += 1;
                let text = format!("# rendered {stamp}\n{edited}");
                let partial = dir.join("gateway.toml.partial");
                std::fs::write(&partial, text).unwrap();
                std::fs::rename(&partial, dir.join("gateway.toml")).unwrap();
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let mut last = serde_json::Value::Null;
    assert!(
        eventually(Duration::from_secs(20), async || {
            last = status().await;
            last["config_file_unsettled_since_ms"].is_u64()
        })
        .await,
        "/status never said the file keeps changing: {last}"
    );
    assert!(
        last["warnings"].to_string().contains("keeps changing"),
        "{last}"
    );
    // Whether a changing text is applied is the unit test's (paused time,
    // reload::tests): here a sidecar thread stalled for a second on a busy
    // machine would let one text settle and apply, legitimately.
    // The reader thread may not have passed the line on yet.
    assert!(
        eventually(Duration::from_secs(5), async || !said("keeps changing")
            .is_empty())
        .await,
        "no warn line"
    );
    let warned = said("keeps changing");
    assert!(warned[0].contains("WARN"), "{warned:?}");
    assert!(
        warned[0].contains(&path.display().to_string()),
        "{warned:?}"
    );

    stop.store(true, Ordering::SeqCst);
    sidecar.join().unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || {
            last = status().await;
            last["config_file_unsettled_since_ms"].is_null()
                && last["last_reload"]["trigger"] == "file-change"
        })
        .await,
        "the edit was never applied once the file settled: {last}"
    );
    assert_eq!(last["last_reload"]["ok"], true, "{last}");
    assert!(
        !last["warnings"].to_string().contains("keeps changing"),
        "{last}"
    );
    let w = weights(gw.admin).await;
    assert_eq!(
        (&w["weights"]["v1"], &w["weights"]["v2"]),
        (&70.into(), &30.into()),
        "{w}"
    );
    assert!(
        eventually(Duration::from_secs(5), async || !said("stopped changing")
            .is_empty())
        .await,
        "no line saying the file stopped changing"
    );
    // Once per run of changes (counted exactly by the unit test; here a
    // stalled sidecar could make two runs).
    let warned = said("keeps changing");
    assert!(warned.len() <= 2, "said at every poll: {warned:?}");
}

/// A config path that is no regular file (a FIFO here; `--config <(...)`
/// gives a pipe) is read once at start: it is not watched (said once, at
/// info), and a SIGHUP applies the text read at start again. Before, the
/// watcher and the SIGHUP opened the FIFO again, each blocking a runtime
/// thread for good (a pipe read empty instead: a false failed reload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_from_a_fifo_is_read_once_and_not_watched() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), &[("v1", 90, v1.addr), ("v2", 10, v2.addr)], "");
    let text = std::fs::read_to_string(&file).unwrap();
    let fifo = dir.path().join("config.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::write(&fifo, text))
    };
    let mut cmd = Command::new(BIN);
    // The state file defaults to the working directory's gateway.state.json.
    cmd.args(["run", "--config"])
        .arg(&fifo)
        .current_dir(dir.path());
    let gw = spawn_command(cmd).unwrap();
    writer.join().unwrap().unwrap();
    let logged = |needle: &str| gw.log.lock().unwrap().iter().any(|l| l.contains(needle));
    assert!(
        eventually(Duration::from_secs(5), async || logged("is not watched")).await,
        "{:?}",
        gw.log.lock().unwrap()
    );
    signal(&gw, "-HUP");
    let status = async || {
        let reply = admin(gw.admin, "GET", "/status", Some(TOKEN), "").await;
        serde_json::from_slice::<serde_json::Value>(&reply.body).unwrap()
    };
    // Bounded as a whole: a gateway whose threads all wait on the FIFO
    // never answers.
    let reloaded = tokio::time::timeout(
        Duration::from_secs(15),
        eventually(Duration::from_secs(10), async || {
            status().await["last_reload"]["trigger"] == "sighup"
        }),
    )
    .await;
    assert!(reloaded == Ok(true), "{:?}", gw.log.lock().unwrap());
    let status = status().await;
    assert_eq!(status["last_reload"]["ok"], true, "{status}");
    assert_eq!(status["config_source"], fifo.display().to_string());
    assert_eq!(weights(gw.admin).await["weights"]["v2"], 10);
    let metrics = admin(gw.admin, "GET", "/metrics", None, "").await.text();
    assert_eq!(
        metric_value(&metrics, "canary_reloads_total", &[("result", "error")]),
        0.0
    );
}

/// The demo has no config file to reload: a SIGHUP says so in the log and
/// the demo goes on serving (it used to end the process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_to_the_demo_does_not_end_it() {
    // Its files in a directory of the test's own: killed, it cannot remove them.
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env("TMPDIR", tmp.path());
    let mut gw = Starting::spawn(cmd);
    let serving = gw
        .line_with("canary-gateway serving", Duration::from_secs(20))
        .unwrap();
    gw.signal("-HUP");
    gw.line_with("no config file to reload", Duration::from_secs(10))
        .unwrap();
    let reply = get(listener_of(&serving), "/", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(gw.child.try_wait().unwrap().is_none());
}

/// A SIGTERM sent while the gateway starts stops it cleanly (exit 0), not
/// by the signal's default action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_during_the_start_stops_it_cleanly() {
    let v1 = Upstream::start("v1").await;
    let store = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut gw = start_on_a_silent_store(dir.path(), v1.addr, store.local_addr().unwrap(), "20s");
    let (_held, _) = tokio::time::timeout(Duration::from_secs(20), store.accept())
        .await
        .expect("the gateway never read the store")
        .unwrap();
    gw.signal("-TERM");
    gw.line_with(
        "shutdown signal received while starting",
        Duration::from_secs(10),
    )
    .unwrap();
    let status = gw.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// An upgraded connection (a WebSocket tunnel) counts in
/// `canary_open_connections` and holds the drain: it keeps carrying bytes
/// after the drain began, is cut when the grace period ends (not before),
/// and the process then exits cleanly.
#[tokio::test]
async fn an_upgraded_connection_is_counted_and_runs_through_the_grace_period() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let v1 = Upstream::start("v1").await;
    let dir = tempfile::tempdir().unwrap();
    let grace = Duration::from_secs(3);
    let path = write_config(
        dir.path(),
        &[("v1", 1, v1.addr)],
        "\n[timeouts]\nshutdown_grace = \"3s\"\n",
    );
    let mut gw = spawn(&path).unwrap();

    let mut tunnel = TcpStream::connect(gw.addr).await.unwrap();
    tunnel
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = crate::support::read_head(&mut tunnel, &mut buf)
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    async fn echo(tunnel: &mut TcpStream, message: &[u8]) {
        tunnel.write_all(message).await.unwrap();
        let mut got = vec![0u8; message.len()];
        tunnel.read_exact(&mut got).await.unwrap();
        assert_eq!(got, message);
    }
    echo(&mut tunnel, b"hello").await;
    let text = admin(gw.admin, "GET", "/metrics", None, "").await.text();
    assert_eq!(
        metric_value(&text, "canary_open_connections", &[]),
        1.0,
        "the tunnel is an open connection"
    );

    // An idle keep-alive connection: its close says the drain has begun.
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut idle_buf = Vec::new();
    assert!(
        crate::support::read_head(&mut idle, &mut idle_buf)
            .await
            .is_some()
    );
    let text = admin(gw.admin, "GET", "/metrics", None, "").await.text();
    assert_eq!(metric_value(&text, "canary_open_connections", &[]), 2.0);

    let term = std::time::Instant::now();
    signal(&gw, "-TERM");
    assert!(
        crate::support::read_to_close(&mut idle, Duration::from_secs(10))
            .await
            .is_some()
    );
    drop(idle);
    // The client sees the close before the connection's task has ended
    // (and counted itself out): polled.
    let open = async || {
        let text = admin(gw.admin, "GET", "/metrics", None, "").await.text();
        metric_value(&text, "canary_open_connections", &[])
    };
    assert!(
        eventually(Duration::from_secs(5), async || open().await == 1.0).await,
        "open connections: {}",
        open().await
    );
    // Draining: the tunnel still carries bytes.
    echo(&mut tunnel, b"during the drain").await;
    // Cut at the grace period's end.
    assert!(
        crate::support::read_to_close(&mut tunnel, Duration::from_secs(20))
            .await
            .is_some(),
        "the tunnel outlived the grace period"
    );
    assert!(
        term.elapsed() >= grace - Duration::from_millis(500),
        "{:?}",
        term.elapsed()
    );
    let status = tokio::task::spawn_blocking(move || gw.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

/// A version a reload removes leaves no live gauges behind: its weight,
/// endpoint counts and discovery staleness go to 0 (the exporter keeps a
/// series; a removed version stale at removal would keep its alert firing
/// and its weight in `sum(canary_version_weight)`).
#[tokio::test]
async fn the_gauges_of_a_version_removed_by_a_reload_go_to_zero() {
    let v1 = Upstream::start("v1").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let admin_lines = "token_env = \"LIFECYCLE_TOKEN\"\n";
    let extra = "\n[discovery]\nstale_after = \"100ms\"\n\n[aws]\nregion = \"us-east-1\"\n\
                 endpoint_url = \"http://127.0.0.1:1\"\n";
    let v1_line = endpoints_line(&[v1.addr]);
    let text = gateway_config(
        admin_lines,
        "",
        &[
            ("v1", 90, v1_line.clone()),
            (
                "gone",
                10,
                "cloudmap = { namespace = \"ns\", service = \"gone\" }".to_string(),
            ),
        ],
    );
    std::fs::write(&path, format!("{text}{extra}")).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"])
        .arg(&path)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PROFILE");
    let gw = spawn_command(cmd).unwrap();
    let metrics = async || admin(gw.admin, "GET", "/metrics", None, "").await.text();
    let gone = [("version", "gone")];
    // Cloud Map is unreachable: the version's discovery goes stale.
    assert!(
        eventually(Duration::from_secs(20), async || {
            metric_value(&metrics().await, "canary_discovery_stale", &gone) == 1.0
        })
        .await,
        "{}",
        metrics().await
    );
    let text = metrics().await;
    assert_eq!(metric_value(&text, "canary_version_weight", &gone), 10.0);
    assert_eq!(metric_sum(&text, "canary_version_weight"), 100.0);

    let text = gateway_config(admin_lines, "", &[("v1", 100, v1_line)]);
    let partial = dir.path().join("gateway.toml.partial");
    std::fs::write(&partial, format!("{text}{extra}")).unwrap();
    std::fs::rename(&partial, &path).unwrap();
    let reply = admin(gw.admin, "POST", "/reload", Some(TOKEN), "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let w = weights(gw.admin).await;
    assert!(w["weights"].get("gone").is_none(), "{w}");

    let text = metrics().await;
    for name in [
        "canary_discovery_stale",
        "canary_version_weight",
        "canary_endpoints",
        "canary_endpoints_healthy",
        "canary_discovery_age_seconds",
    ] {
        assert_eq!(metric_value(&text, name, &gone), 0.0, "{name}\n{text}");
    }
    assert_eq!(metric_sum(&text, "canary_version_weight"), 100.0, "{text}");
    assert_eq!(
        metric_value(&text, "canary_version_weight", &[("version", "v1")]),
        100.0
    );
}

/// An admin token variable that is set but not UTF-8 stops the start with
/// an error naming it: never quietly no token.
#[cfg(unix)]
#[tokio::test]
async fn a_token_variable_that_is_not_utf8_stops_the_start() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &[("v1", 1, "127.0.0.1:1".parse().unwrap())], "");
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"]).arg(&path).env(
        "LIFECYCLE_TOKEN",
        std::ffi::OsStr::from_bytes(b"token-\xff"),
    );
    let err = spawn_serving(cmd, Duration::from_secs(20))
        .err()
        .expect("must not start");
    assert!(
        err.contains("LIFECYCLE_TOKEN") && err.contains("UTF-8"),
        "{err}"
    );
}
