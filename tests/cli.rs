//! The real binary's `health` and `ctl` commands against real gateway
//! processes on 127.0.0.1:0, and `run`/`check` with the config in
//! `CANARY_GATEWAY_CONFIG`. Exit codes are part of the contract.

#[path = "support/gateway_proc.rs"]
mod gateway_proc;
#[path = "support/test_ca.rs"]
mod test_ca;

use std::net::SocketAddr;
use std::time::Duration;

use gateway_proc::{
    BIN, Client, GatewayProc, TOKEN, TOKEN_ENV, TaggedUpstream, admin, spawn_serving, split_counts,
};

/// Runs the binary with `args` (and `env`, and no AWS setting of the
/// machine); exit code, stdout, stderr.
async fn cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args)
        .env_remove("CANARY_ADMIN_URL")
        .env_remove("CANARY_ADMIN_TOKEN")
        .env_remove("CANARY_GATEWAY_CONFIG")
        .envs(env.iter().copied())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the command did not finish")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn config(v1: SocketAddr, v2: SocketAddr) -> String {
    format!(
        "[listener]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\ntoken_env = \"{TOKEN_ENV}\"\n\n\
         [split]\nstable = \"v1\"\n\n[[versions]]\nname = \"v1\"\nweight = 100\nendpoints = [\"{v1}\"]\n\n\
         [[versions]]\nname = \"v2\"\nweight = 0\nendpoints = [\"{v2}\"]\n"
    )
}

async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

#[tokio::test]
async fn health_is_0_when_ready_and_1_otherwise() {
    let (v1, v2) = (
        TaggedUpstream::start("v1").await,
        TaggedUpstream::start("v2").await,
    );
    let gw = GatewayProc::spawn(&config(v1.addr, v2.addr)).await;
    let url = format!("http://{}", gw.admin);
    let (code, _, err) = cli(&["health", "--admin", &url], &[]).await;
    assert_eq!(code, 0, "{err}");
    // CANARY_ADMIN_URL works as well as --admin.
    let (code, _, err) = cli(&["health"], &[("CANARY_ADMIN_URL", &url)]).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&["health", "--admin", &dead_url().await], &[]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach"), "{err}");
    // A list for `ctl` in CANARY_ADMIN_URL is named as such (not "not a
    // URL"), and an explicit --admin wins over it.
    let list = format!("{url},{}", dead_url().await);
    let (code, _, err) = cli(&["health"], &[("CANARY_ADMIN_URL", &list)]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("health checks one gateway"), "{err}");
    let (code, _, err) = cli(&["health", "--admin", &url], &[("CANARY_ADMIN_URL", &list)]).await;
    assert_eq!(code, 0, "{err}");
}

/// A new gateway's /metrics has its counters of fixed label sets at 0
/// before anything happened: a series that first appeared at 1 hid that
/// increment from `increase()` (an alert on the first rollout abort, or
/// the first client error, would not fire).
#[tokio::test]
async fn counters_of_fixed_label_sets_start_at_zero() {
    let (v1, v2) = (
        TaggedUpstream::start("v1").await,
        TaggedUpstream::start("v2").await,
    );
    let gw = GatewayProc::spawn(&config(v1.addr, v2.addr)).await;
    let text = gw.metrics().await;
    for series in [
        "canary_rollout_aborts_total{reason=\"max_error_rate\"} 0",
        "canary_rollout_aborts_total{reason=\"operator\"} 0",
        "canary_rollout_holds_total{reason=\"gate\"} 0",
        "canary_client_errors_total{kind=\"bad_head\"} 0",
        "canary_client_errors_total{kind=\"aborted\"} 0",
        "canary_reloads_total{result=\"error\"} 0",
        "canary_rollout_steps_total 0",
        "canary_body_stalls_total 0",
    ] {
        assert!(text.lines().any(|l| l == series), "{series} in:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("canary_config_polls_total ")),
        "{text}"
    );
}

/// A token that no HTTP header can carry is a usage error that names
/// CANARY_ADMIN_TOKEN, not the header library's "failed to parse header value".
#[tokio::test]
async fn a_token_with_a_control_character_is_named_as_such() {
    let url = dead_url().await;
    let (code, _, err) = cli(
        &["ctl", "--admin", &url, "weights"],
        &[("CANARY_ADMIN_TOKEN", "sec\nret")],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("CANARY_ADMIN_TOKEN holds a character an HTTP header cannot carry"),
        "{err}"
    );
}

/// A port out of range in --admin is a usage error (exit 2), nothing sent:
/// it used to fall back to port 80, sending the token and the change there.
#[tokio::test]
async fn an_admin_url_with_a_port_out_of_range_is_a_usage_error() {
    for url in ["http://127.0.0.1:99901", "http://127.0.0.1:0"] {
        let (code, _, err) = cli(
            &["ctl", "--admin", url, "weights", "set", "v2=50"],
            &[("CANARY_ADMIN_TOKEN", "secret")],
        )
        .await;
        assert_eq!(code, 2, "{url}: {err}");
        assert!(err.contains("is not a port"), "{url}: {err}");
    }
}

/// An `--on-success` other than promote or hold is a usage error (exit 2)
/// before anything is sent, not the gateway's 400 (exit 3).
#[tokio::test]
async fn an_unknown_on_success_is_a_usage_error() {
    let (code, _, err) = cli(
        &[
            "ctl",
            "--admin",
            &dead_url().await,
            "rollout",
            "start",
            "--canary",
            "v2",
            "--on-success",
            "maybe",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("promote, hold"), "{err}");
}

#[tokio::test]
async fn ctl_changes_weights_with_exit_codes_a_pipeline_can_trust() {
    let (v1, v2) = (
        TaggedUpstream::start("v1").await,
        TaggedUpstream::start("v2").await,
    );
    let gw = GatewayProc::spawn(&config(v1.addr, v2.addr)).await;
    let url = format!("http://{}", gw.admin);
    let token = [
        ("CANARY_ADMIN_TOKEN", TOKEN),
        ("CANARY_ADMIN_URL", url.as_str()),
    ];

    let (code, out, err) = cli(&["ctl", "weights", "set", "v2=5", "v1=95"], &token).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("v2") && out.contains("5.00%"), "{out}");
    let (code, out, _) = cli(&["ctl", "--json", "weights"], &token).await;
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["weights"]["v2"], 5, "{json}");

    // Refused (unknown version), unauthorized (no token), unreachable.
    let (code, _, err) = cli(&["ctl", "weights", "set", "v9=1"], &token).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("v9"), "{err}");
    let (code, _, err) = cli(&["ctl", "--admin", &url, "weights", "set", "v2=50"], &[]).await;
    assert_eq!(code, 4, "{err}");
    let (code, _, err) = cli(
        &["ctl", "--admin", &dead_url().await, "status"],
        &[("CANARY_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    assert_eq!(code, 5, "{err}");
    let (code, _, err) = cli(&["ctl", "weights", "set", "v2"], &token).await;
    assert_eq!(code, 2, "{err}");
    // A version named twice: which was meant is not guessed (as the API).
    let (code, _, err) = cli(&["ctl", "weights", "set", "v2=50", "v2=60"], &token).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`v2` is given twice"), "{err}");
    assert_eq!(
        gw.weights().await["weights"]["v2"],
        5,
        "nothing refused may change"
    );

    let (code, out, err) = cli(&["ctl", "promote", "v2"], &token).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("stable v2"), "{out}");
    let (code, _, err) = cli(&["ctl", "rollback"], &token).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&["ctl", "status"], &token).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ready: yes"), "{out}");
}

/// `ctl ... | head -1`: a reader that went away ends the command with 141
/// (as SIGPIPE ends a C program), not with a panic.
#[tokio::test]
async fn a_closed_standard_output_ends_the_command_without_a_panic() {
    let (v1, v2) = (
        TaggedUpstream::start("v1").await,
        TaggedUpstream::start("v2").await,
    );
    let gw = GatewayProc::spawn(&config(v1.addr, v2.addr)).await;
    let url = format!("http://{}", gw.admin);
    // The pipe's reading end is closed before the command starts: its
    // first write finds no reader.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = tokio::process::Command::new(BIN)
        .args(["ctl", "--json", "weights"])
        .env("CANARY_ADMIN_TOKEN", TOKEN)
        .env_remove("CANARY_GATEWAY_CONFIG")
        .env("CANARY_ADMIN_URL", &url)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
        .wait_with_output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the command did not finish")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Runs the binary with `args` (and `env`) on a standard output whose
/// reader went away before it started; its process id, exit code and
/// standard error.
async fn with_stdout_closed(args: &[&str], env: &[(&str, &str)]) -> (u32, Option<i32>, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = tokio::process::Command::new(BIN)
        .args(args)
        .env_remove("CANARY_ADMIN_URL")
        .env_remove("CANARY_ADMIN_TOKEN")
        .env_remove("CANARY_GATEWAY_CONFIG")
        .envs(env.iter().copied())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap_or(0);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the command did not finish")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (pid, out.status.code(), err)
}

/// `check ... | true` and `demo | true` end with 141 like `ctl`, not with
/// a panic; the demo removes its files (the admin token) first.
#[tokio::test]
async fn check_and_demo_end_with_141_on_a_closed_standard_output() {
    let (v1, v2) = (
        TaggedUpstream::start("v1").await,
        TaggedUpstream::start("v2").await,
    );
    let text = config(v1.addr, v2.addr);
    let env = [("CANARY_GATEWAY_CONFIG", text.as_str())];
    let (_, code, err) = with_stdout_closed(&["check"], &env).await;
    assert_eq!(code, Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let any = "127.0.0.1:0";
    let tmp = tempfile::tempdir().unwrap();
    let tmp_env = tmp.path().to_str().unwrap();
    let (_, code, err) = with_stdout_closed(
        &["demo", "--listen", any, "--admin", any],
        &[("TMPDIR", tmp_env)],
    )
    .await;
    assert_eq!(code, Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(entries(tmp.path()), Vec::<String>::new(), "left behind");
}

/// The entries of a directory, by name.
fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Runs `demo` with `TMPDIR` set to `tmp` until it serves (its serving line).
async fn demo_serving(tmp: &std::path::Path) -> gateway_proc::Proc {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env("TMPDIR", tmp);
    tokio::task::spawn_blocking(move || spawn_serving(cmd, Duration::from_secs(30)))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the demo did not start: {e}"))
}

/// The demo's directory (it holds the admin token) is removed on every way
/// out: a start that fails (its port taken) and Ctrl-C.
#[tokio::test]
async fn demo_removes_its_files_on_every_way_out() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let tmp_env = tmp.path().to_str().unwrap();
    let (code, _, err) = cli(
        &["demo", "--listen", &taken, "--admin", "127.0.0.1:0"],
        &[("TMPDIR", tmp_env)],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot bind listener"), "{err}");
    assert_eq!(entries(tmp.path()), Vec::<String>::new(), "left behind");

    let mut demo = demo_serving(tmp.path()).await;
    let dirs = entries(tmp.path());
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let dir = tmp.path().join(&dirs[0]);
    assert!(entries(&dir).contains(&"admin-token".to_string()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "{} is open to others: {mode:o}",
            dir.display()
        );
    }
    let ok = std::process::Command::new("kill")
        .args(["-INT", &demo.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -INT failed");
    let status = tokio::task::spawn_blocking(move || {
        let status = demo.wait();
        (status, demo.log_text())
    })
    .await
    .unwrap();
    assert!(
        status.0.as_ref().unwrap().success(),
        "{:?}\n{}",
        status.0,
        status.1
    );
    assert_eq!(entries(tmp.path()), Vec::<String>::new(), "left behind");
}

/// A `"` or `\` in the temporary directory's path does not break the
/// demo's config: it starts, and its admin token (in that directory) works.
#[tokio::test]
async fn demo_runs_under_a_temporary_directory_with_quotes_and_backslashes() {
    let tmp = tempfile::tempdir().unwrap();
    let odd = tmp.path().join("a \"quoted\" \\ dir");
    std::fs::create_dir(&odd).unwrap();
    let demo = demo_serving(&odd).await;
    let dirs = entries(&odd);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let token = std::fs::read_to_string(odd.join(&dirs[0]).join("admin-token")).unwrap();
    let bearer = format!("Bearer {token}");
    let reply = Client::connect(demo.admin)
        .await
        .get("/weights", &[("authorization", &bearer)])
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["weights"]["v2"], 10, "{}", reply.text());
}

/// `demo` with `--listen` and `--admin` on one port is a usage error (2),
/// as clap's own, before anything starts.
#[tokio::test]
async fn demo_with_one_port_for_listen_and_admin_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp_env = tmp.path().to_str().unwrap();
    for (listen, admin) in [
        ("127.0.0.1:9080", "127.0.0.1:9080"),
        ("0.0.0.0:9080", "127.0.0.1:9080"),
    ] {
        let (code, _, err) = cli(
            &["demo", "--listen", listen, "--admin", admin],
            &[("TMPDIR", tmp_env)],
        )
        .await;
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("--listen") && err.contains("--admin"), "{err}");
        assert!(err.contains("Usage: canary-gateway demo"), "{err}");
    }
    assert_eq!(entries(tmp.path()), Vec::<String>::new());
}

#[tokio::test]
async fn status_wait_converged_waits_for_one_generation() {
    let (v1, v2) = (
        TaggedUpstream::start("v1").await,
        TaggedUpstream::start("v2").await,
    );
    let a = GatewayProc::spawn(&config(v1.addr, v2.addr)).await;
    let b = GatewayProc::spawn(&config(v1.addr, v2.addr)).await;
    let urls = format!("http://{},http://{}", a.admin, b.admin);
    let env = [
        ("CANARY_ADMIN_TOKEN", TOKEN),
        ("CANARY_ADMIN_URL", urls.as_str()),
    ];
    let (code, out, err) = cli(
        &["ctl", "status", "--wait-converged", "--timeout", "10s"],
        &env,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("converged"), "{out}");

    // A change on one task only (two separate file stores): never converges.
    assert_eq!(
        admin(
            a.admin,
            "PUT",
            "/weights",
            r#"{"weights":{"v2":5,"v1":95}}"#
        )
        .await
        .status,
        200
    );
    let (code, _, err) = cli(
        &["ctl", "status", "--wait-converged", "--timeout", "1s"],
        &env,
    )
    .await;
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("generations differ"), "{err}");
}

/// One `--admin` URL on a store that shares no task reports (its `/status`
/// says the other tasks' generations are unknown) is not "converged": that
/// one task compared with itself says nothing about the others.
#[tokio::test]
async fn status_wait_converged_does_not_trust_one_url_that_cannot_see_the_fleet() {
    use serde_json::json;
    let note = "the Cloud Map store keeps no task reports (use the DynamoDB store): the other tasks' generations are unknown";
    let unseen = |kind: &str| {
        json!({"weights": {"generation": 4}, "store": {"kind": kind, "last_error": null},
               "fleet": {"reports_shared": false, "converged": false, "note": note,
                         "tasks": [{"generation": 4, "this_task": true}]}})
    };
    // A store that may share reports later (DynamoDB before its first
    // report): not converged until --timeout (exit 8), and why.
    let url = scripted_rollout(vec![unseen("dynamodb")]).await;
    let (code, out, err) = cli(
        &[
            "ctl",
            "status",
            "--wait-converged",
            "--timeout",
            "1s",
            "--admin",
            &url,
        ],
        &[],
    )
    .await;
    assert_eq!(code, 8, "{out}{err}");
    assert!(!out.contains("converged"), "{out}");
    assert!(err.contains("name every task's admin URL"), "{err}");
    // Cloud Map never shares them: refused at once (exit 1), not after --timeout.
    let url = scripted_rollout(vec![unseen("cloudmap")]).await;
    let started = std::time::Instant::now();
    let (code, out, err) = cli(
        &[
            "ctl",
            "status",
            "--wait-converged",
            "--timeout",
            "30s",
            "--admin",
            &url,
        ],
        &[],
    )
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(!out.contains("converged"), "{out}");
    assert!(err.contains("name every task's admin URL"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Every task named: compared across the URLs, as before.
    let other = scripted_rollout(vec![unseen("cloudmap")]).await;
    let urls = format!("{url},{other}");
    let (code, out, err) = cli(
        &[
            "ctl",
            "status",
            "--wait-converged",
            "--timeout",
            "5s",
            "--admin",
            &urls,
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("converged"), "{out}");
}

#[tokio::test]
async fn run_and_check_read_the_config_from_the_environment() {
    let (v1, v2) = (
        TaggedUpstream::start("v1").await,
        TaggedUpstream::start("v2").await,
    );
    let text = config(v1.addr, v2.addr);
    let gw = GatewayProc::spawn_from_env(&text, &[]).await;
    assert_eq!(
        admin(
            gw.admin,
            "PUT",
            "/weights",
            r#"{"weights":{"v2":7,"v1":93}}"#
        )
        .await
        .status,
        200
    );
    // The state file defaults to the working directory.
    let state = gw.dir().join("gateway.state.json");
    assert!(state.exists(), "no state file in the working directory");
    let status = gw.status().await;
    assert_eq!(
        status["config_source"], "$CANARY_GATEWAY_CONFIG",
        "{status}"
    );
    // A reload re-reads the text the variable held at start.
    let reload = admin(gw.admin, "POST", "/reload", "").await;
    assert_eq!(reload.status, 200, "{}", reload.text());

    let (code, out, err) = cli(&["check"], &[("CANARY_GATEWAY_CONFIG", &text)]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("$CANARY_GATEWAY_CONFIG: ok"), "{out}");
    let (code, _, err) = cli(&["check"], &[]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("CANARY_GATEWAY_CONFIG") && err.contains("--config"),
        "{err}"
    );

    // A duration the clock cannot add is refused by `check`, naming the key.
    let endless = format!("{text}\n[timeouts]\nupstream_response = 9223372036854775807\n");
    let (code, _, err) = cli(&["check"], &[("CANARY_GATEWAY_CONFIG", &endless)]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("timeouts.upstream_response") && err.contains("too long"),
        "{err}"
    );

    // The store's service id comes from its override; missing, the error names it.
    let cloudmap = format!("{text}\n[store]\nkind = \"cloudmap\"\n");
    let (code, _, err) = cli(&["check"], &[("CANARY_GATEWAY_CONFIG", &cloudmap)]).await;
    assert_eq!(code, 1);
    assert!(err.contains("CANARY_STORE_SERVICE_ID"), "{err}");
    let env = [
        ("CANARY_GATEWAY_CONFIG", cloudmap.as_str()),
        ("CANARY_STORE_SERVICE_ID", "srv-abc123"),
    ];
    let (code, out, err) = cli(&["check"], &env).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok"), "{out}");
}

/// Two gateways on one `[state] path` (a shared volume, two containers on
/// one host) would overwrite each other's decisions: a second `run` on a
/// path a running gateway holds fails to start, naming the path, and
/// changes nothing; `check` on it still passes (it only reads); once the
/// first has exited, a new one starts on the path with its decision.
#[tokio::test]
async fn a_second_gateway_on_a_held_state_file_does_not_start() {
    let (v1, v2) = (
        TaggedUpstream::start("v1").await,
        TaggedUpstream::start("v2").await,
    );
    let shared = tempfile::tempdir().unwrap();
    let state = shared.path().join("shared.state.json");
    let text = format!(
        "{}
[state]
path = {}
",
        config(v1.addr, v2.addr),
        toml::Value::String(state.display().to_string())
    );
    let first = GatewayProc::spawn(&text).await;
    let reply = admin(
        first.admin,
        "PUT",
        "/weights",
        r#"{"weights":{"v1":70,"v2":30}}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let saved = std::fs::read(&state).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, &text).unwrap();
    let path_arg = path.display().to_string();
    let (code, _, err) = cli(&["check", "--config", &path_arg], &[(TOKEN_ENV, TOKEN)]).await;
    assert_eq!(code, 0, "check took the lock: {err}");
    let mut second = std::process::Command::new(BIN);
    second
        .args(["run", "--config", &path_arg])
        .env_remove("CANARY_GATEWAY_CONFIG")
        .env(TOKEN_ENV, TOKEN);
    let refused = tokio::task::spawn_blocking(move || {
        spawn_serving(second, Duration::from_secs(20)).map(|_| ())
    })
    .await
    .unwrap();
    let Err(err) = refused else {
        panic!("a second gateway started on the held state file");
    };
    assert!(
        err.starts_with("exited (exit status: ") && !err.starts_with("exited (exit status: 0)"),
        "{err}"
    );
    let line = error_line(&err);
    assert!(
        line.contains(&state.display().to_string())
            && line.contains("another canary-gateway holds it")
            && line.contains("shared.state.json.lock"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&state).unwrap(),
        saved,
        "the state file changed"
    );
    assert_eq!(first.weights().await["weights"]["v2"], 30);

    drop(first);
    let next = GatewayProc::spawn(&text).await;
    let weights = next.weights().await;
    assert_eq!(weights["weights"]["v2"], 30, "{weights}");
}

/// The binary as an unprivileged user (uid 65534 through `setpriv` when the
/// tests run as root, whom file modes do not stop); `None` when that cannot
/// be done here.
#[cfg(target_os = "linux")]
fn unprivileged(args: &[&str]) -> Option<std::process::Command> {
    let mut cmd = if rustix::process::geteuid().is_root() {
        let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let mut cmd = std::process::Command::new(setpriv);
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
        cmd
    } else {
        std::process::Command::new(BIN)
    };
    cmd.args(args)
        .env_remove("CANARY_GATEWAY_CONFIG")
        .env_remove("CANARY_ADMIN_URL")
        .env(TOKEN_ENV, TOKEN);
    Some(cmd)
}

/// A state directory the gateway cannot write in (a read-only volume), with
/// a writable lock file already there: `check` refuses it, and so does
/// `run`, naming the directory. Before, both passed and the gateway served
/// with every change answering 503 ("cannot write it: Permission denied").
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_state_directory_the_gateway_cannot_write_in_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (v1, v2) = (
        TaggedUpstream::start("v1").await,
        TaggedUpstream::start("v2").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    mode(dir.path(), 0o755);
    let state_dir = dir.path().join("state");
    std::fs::create_dir(&state_dir).unwrap();
    let lock = state_dir.join("gw.state.json.lock");
    std::fs::write(&lock, "").unwrap();
    mode(&lock, 0o666);
    let path = dir.path().join("gateway.toml");
    let text = format!(
        "{}\n[state]\npath = {}\n",
        config(v1.addr, v2.addr),
        toml::Value::String(state_dir.join("gw.state.json").display().to_string())
    );
    std::fs::write(&path, &text).unwrap();
    mode(&path, 0o644);
    mode(&state_dir, 0o555);
    let path_arg = path.display().to_string();
    let Some(mut check) = unprivileged(&["check", "--config", &path_arg]) else {
        eprintln!("skipped: running as root without setpriv");
        return;
    };
    let out = tokio::task::spawn_blocking(move || check.output().unwrap())
        .await
        .unwrap();
    let check_err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "check passed: {check_err}");
    let line = error_line(&check_err).to_string();
    assert!(
        line.contains(&format!(
            "cannot write in its directory {}",
            state_dir.display()
        )) && line.contains("Permission denied"),
        "{check_err}"
    );

    let run = unprivileged(&["run", "--config", &path_arg]).unwrap();
    let started = tokio::task::spawn_blocking(move || {
        spawn_serving(run, Duration::from_secs(20)).map(|_| ())
    })
    .await
    .unwrap();
    let Err(run_err) = started else {
        panic!("run served on a state directory it cannot write in");
    };
    assert!(run_err.starts_with("exited (exit status: 1)"), "{run_err}");
    assert_eq!(error_line(&run_err), line, "{run_err}");

    // Writable again: both take it.
    mode(&state_dir, 0o777);
    let mut check = unprivileged(&["check", "--config", &path_arg]).unwrap();
    let out = tokio::task::spawn_blocking(move || check.output().unwrap())
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let leftovers: Vec<_> = std::fs::read_dir(&state_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers,
        ["gw.state.json.lock"],
        "check left a file behind"
    );

    // A sticky directory (as /tmp, /dev/shm) holding a state file of
    // another user (here root's, when the tests run as root): no rename
    // over it would pass.
    use std::os::unix::fs::MetadataExt;
    let state = state_dir.join("gw.state.json");
    let doc = r#"{"stable": "v1", "weights": {"v1": 100, "v2": 0}, "generation": 1, "updated_at_ms": 1, "source": "admin"}"#;
    std::fs::write(&state, doc).unwrap();
    if std::fs::metadata(&state).unwrap().uid() == 0 {
        mode(&state, 0o666);
        mode(&state_dir, 0o1777);
        let mut check = unprivileged(&["check", "--config", &path_arg]).unwrap();
        let out = tokio::task::spawn_blocking(move || check.output().unwrap())
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "check passed: {err}");
        assert!(
            error_line(&err).contains("belongs to another user (uid 0) in a sticky directory"),
            "{err}"
        );
    }
}

/// A rejected reload shows in `/status` `warnings` and in `ctl status` until
/// a reload succeeds: the file on disk is not what runs.
#[tokio::test]
async fn a_rejected_reload_is_shown_until_a_reload_succeeds() {
    let (v1, v2) = (
        TaggedUpstream::start("v1").await,
        TaggedUpstream::start("v2").await,
    );
    let text = config(v1.addr, v2.addr);
    let gw = GatewayProc::spawn(&text).await;
    let url = format!("http://{}", gw.admin);
    let env = [
        ("CANARY_ADMIN_TOKEN", TOKEN),
        ("CANARY_ADMIN_URL", url.as_str()),
    ];
    let path = gw.dir().join("gateway.toml");
    std::fs::write(&path, text.replace("weight = 0", "weight = -3")).unwrap();
    let reload = admin(gw.admin, "POST", "/reload", "").await;
    assert_eq!(reload.status, 422, "{}", reload.text());
    let status = gw.status().await;
    let warnings = status["warnings"].as_array().cloned().unwrap_or_default();
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .is_some_and(|w| w.starts_with("the last config reload (") && w.contains("negative"))),
        "{status:#}"
    );
    let (code, out, err) = cli(&["ctl", "status"], &env).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\nlast reload ("), "{out}");
    assert!(out.contains("warning: the last config reload ("), "{out}");

    std::fs::write(&path, &text).unwrap();
    let reload = admin(gw.admin, "POST", "/reload", "").await;
    assert_eq!(reload.status, 200, "{}", reload.text());
    let status = gw.status().await;
    assert_eq!(status["warnings"], serde_json::json!([]), "{status:#}");
    let (code, out, err) = cli(&["ctl", "status"], &env).await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("last reload"), "{out}");
}

/// The `error:` line a command printed.
fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default()
}

/// Runs `check` and then `run` on the config at `path` with `env`: both
/// must fail, with the same error line. `check`'s standard error.
async fn check_and_run_refuse(path: &str, env: &[(&str, &str)]) -> String {
    let (code, _, check_err) = cli(&["check", "--config", path], env).await;
    assert_eq!(code, 1, "check passed: {check_err}");
    let (code, _, run_err) = cli(&["run", "--config", path], env).await;
    assert_ne!(code, 0, "run started: {run_err}");
    assert_eq!(error_line(&check_err), error_line(&run_err));
    check_err
}

/// `check` refuses what `run` refuses before serving, with its message: a
/// non-loopback admin address without a token, a missing or empty
/// `token_file`, a state file that is not a weights document.
#[tokio::test]
async fn check_refuses_what_run_refuses_with_the_same_message() {
    let (v1, v2) = (
        TaggedUpstream::start("v1").await,
        TaggedUpstream::start("v2").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let path_arg = path.display().to_string();
    let text = config(v1.addr, v2.addr);
    let token = [(TOKEN_ENV, TOKEN)];
    let both = async |env: &[(&str, &str)]| check_and_run_refuse(&path_arg, env).await;

    let open = text.replace(
        "[admin]\naddress = \"127.0.0.1:0\"",
        "[admin]\naddress = \"0.0.0.0:0\"",
    );
    assert_ne!(open, text);
    std::fs::write(&path, &open).unwrap();
    let (code, out, err) = cli(&["check", "--config", &path_arg], &token).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": ok"), "{out}");
    let err = both(&[]).await;
    assert!(err.contains("is not loopback and no admin token"), "{err}");

    let token_file = dir.path().join("token");
    let with_file = text.replace(
        &format!("token_env = \"{TOKEN_ENV}\""),
        &format!("token_file = \"{}\"", token_file.display()),
    );
    assert_ne!(with_file, text);
    std::fs::write(&path, &with_file).unwrap();
    let err = both(&[]).await;
    assert!(err.contains("admin.token_file"), "{err}");
    std::fs::write(&token_file, " \n").unwrap();
    let err = both(&[]).await;
    assert!(err.contains("is empty"), "{err}");

    std::fs::write(&path, &text).unwrap();
    std::fs::write(dir.path().join("gateway.state.json"), "{ not json").unwrap();
    let err = both(&token).await;
    assert!(err.contains("not a valid weights document"), "{err}");
}

/// `check` (as `run`) says what is wrong with a TLS pair that is easy to get
/// wrong: an encrypted key (PKCS#8 or a traditional `Proc-Type: 4,ENCRYPTED`
/// one) is not "no private key found", and a chain with the intermediate
/// first is not "does not match".
#[tokio::test]
async fn check_says_a_tls_key_is_encrypted_or_the_leaf_is_not_first() {
    let (v1, v2) = (
        TaggedUpstream::start("v1").await,
        TaggedUpstream::start("v2").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let path = dir.path().join("gateway.toml");
    let path_arg = path.display().to_string();
    let token = [(TOKEN_ENV, TOKEN)];
    let check = async |key: &std::path::Path| {
        let text = config_with_tls(config(v1.addr, v2.addr), &cert_path, key);
        std::fs::write(&path, text).unwrap();
        let (code, out, err) = cli(&["check", "--config", &path_arg], &token).await;
        (code, format!("{out}{err}"))
    };

    let ca = test_ca::Ca::new();
    let (leaf, leaf_key, _) = ca.leaf(&["localhost"]);
    let key_path = dir.path().join("key.pem");
    std::fs::write(&key_path, &leaf_key).unwrap();
    std::fs::write(&cert_path, format!("{leaf}{}", ca.pem)).unwrap();
    let (code, out) = check(&key_path).await;
    assert_eq!(code, 0, "{out}");

    // The intermediate first, the leaf second.
    std::fs::write(&cert_path, format!("{}{leaf}", ca.pem)).unwrap();
    let (code, out) = check(&key_path).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("matches certificate 2") && out.contains("must start with the leaf"),
        "{out}"
    );
    // A key that matches none of them still does not match.
    let (_, other_key, _) = ca.leaf(&["localhost"]);
    std::fs::write(&key_path, &other_key).unwrap();
    let (code, out) = check(&key_path).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not match"), "{out}");

    std::fs::write(&cert_path, &leaf).unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    for (name, kind) in [
        ("ec-pkcs8-encrypted.key.pem", "ENCRYPTED PRIVATE KEY"),
        ("rsa-pkcs1-encrypted.key.pem", "Proc-Type: 4,ENCRYPTED"),
    ] {
        let key = fixtures.join(name);
        let (code, out) = check(&key).await;
        assert_eq!(code, 1, "{out}");
        let said = format!("{}: the private key is encrypted", key.display());
        assert!(out.contains(&said), "{out}");
        assert!(
            out.contains(kind) && out.contains("listener.tls.key"),
            "{out}"
        );
        assert!(!out.contains("no private key found"), "{out}");
    }
}

/// `text` with a `[listener.tls]` of `cert` and `key`.
fn config_with_tls(text: String, cert: &std::path::Path, key: &std::path::Path) -> String {
    let listener = "[listener]\naddress = \"127.0.0.1:0\"\n";
    text.replace(
        listener,
        &format!(
            "{listener}[listener.tls]\ncert = {}\nkey = {}\n",
            toml::Value::String(cert.display().to_string()),
            toml::Value::String(key.display().to_string()),
        ),
    )
}

/// `check` warns, as `run` does (in its log and `/status`), of a listener
/// certificate that expired: it still passes (the pair serves all the same,
/// and a client that checks nothing keeps working), but a CI `check` before
/// a deploy says so. A valid one gets no such line.
#[tokio::test]
async fn check_warns_of_an_expired_tls_certificate() {
    let (v1, v2) = (
        TaggedUpstream::start("v1").await,
        TaggedUpstream::start("v2").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let path = dir.path().join("gateway.toml");
    let text = config_with_tls(config(v1.addr, v2.addr), &cert_path, &key_path);
    std::fs::write(&path, text).unwrap();
    let path_arg = path.display().to_string();
    let check = async || cli(&["check", "--config", &path_arg], &[(TOKEN_ENV, TOKEN)]).await;

    let ca = test_ca::Ca::new();
    let (leaf, key, _) = ca.leaf(&["localhost"]);
    std::fs::write(&cert_path, &leaf).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let (code, out, err) = check().await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("TLS certificate"), "{err}");

    let (leaf, key) = ca.expired_leaf(&["localhost"]);
    std::fs::write(&cert_path, &leaf).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let (code, out, err) = check().await;
    assert_eq!(code, 0, "{out}{err}");
    let said = format!(
        "warning: the TLS certificate in {} expired on Wed, 01 Jan 2020 00:00:00 GMT",
        cert_path.display()
    );
    assert!(err.contains(&said), "{err}");
    assert!(out.contains("ok"), "{out}");
}

/// An ejection base above its maximum passes `check` (every ejection then
/// lasts the maximum) with a warning that names both keys.
#[tokio::test]
async fn check_warns_of_an_ejection_base_above_its_maximum() {
    let (v1, v2) = (
        TaggedUpstream::start("v1").await,
        TaggedUpstream::start("v2").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let text =
        config(v1.addr, v2.addr) + "\n[upstream]\neject_base = \"10s\"\neject_max = \"1s\"\n";
    std::fs::write(&path, text).unwrap();
    let path_arg = path.display().to_string();
    let (code, out, err) = cli(&["check", "--config", &path_arg], &[(TOKEN_ENV, TOKEN)]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("warning: `upstream.eject_base` (10s) is above `upstream.eject_max` (1s)"),
        "{err}"
    );
}

/// With a store (or discovery, or App Mesh) on AWS, `check` refuses what
/// `run` refuses: no AWS region anywhere it looks without a network call
/// (with the instance metadata service off; with it on, only a warning), and
/// an `aws.endpoint_url` (or, without it, an `AWS_ENDPOINT_URL*` variable)
/// that is no http(s) URL with a host.
#[tokio::test]
async fn check_refuses_a_missing_aws_region_and_a_bad_endpoint_url() {
    let (v1, v2) = (
        TaggedUpstream::start("v1").await,
        TaggedUpstream::start("v2").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let path_arg = path.display().to_string();
    let aws_config = dir.path().join("aws-config");
    std::fs::write(&aws_config, "").unwrap();
    let aws_config = aws_config.display().to_string();
    let dynamodb = format!(
        "{}\n[store]\nkind = \"dynamodb\"\ntable = \"canary\"\nkey = \"svc1\"\n",
        config(v1.addr, v2.addr)
    );
    std::fs::write(&path, &dynamodb).unwrap();
    let no_imds = [
        (TOKEN_ENV, TOKEN),
        ("AWS_CONFIG_FILE", aws_config.as_str()),
        ("AWS_SHARED_CREDENTIALS_FILE", aws_config.as_str()),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let check_err = check_and_run_refuse(&path_arg, &no_imds).await;
    assert!(check_err.contains("no AWS region"), "{check_err}");

    // A region from the environment or the profile file will do.
    let mut with_region = no_imds.to_vec();
    with_region.push(("AWS_DEFAULT_REGION", "eu-west-1"));
    let (code, out, err) = cli(&["check", "--config", &path_arg], &with_region).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": ok") && err.is_empty(), "{out}{err}");
    let profile = dir.path().join("aws-profile");
    std::fs::write(&profile, "[default]\nregion = eu-west-1\n").unwrap();
    let profile = profile.display().to_string();
    let mut in_profile = no_imds.to_vec();
    in_profile[1] = ("AWS_CONFIG_FILE", profile.as_str());
    let (code, _, err) = cli(&["check", "--config", &path_arg], &in_profile).await;
    assert_eq!(code, 0, "{err}");
    // The instance metadata service may have one: only `run` asks it.
    let (code, _, err) = cli(&["check", "--config", &path_arg], &no_imds[..3]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.starts_with("warning: no AWS region") && err.contains("instance metadata"),
        "{err}"
    );

    // A region, but an endpoint URL the SDK cannot call.
    for url in ["localhost:4566", "ftp://localhost:4566", "http://:4566"] {
        std::fs::write(
            &path,
            format!("{dynamodb}\n[aws]\nregion = \"eu-west-1\"\nendpoint_url = \"{url}\"\n"),
        )
        .unwrap();
        let check_err = check_and_run_refuse(&path_arg, &no_imds).await;
        assert!(
            check_err.contains("aws.endpoint_url") && check_err.contains(url),
            "{check_err}"
        );
    }

    // The same URLs from the SDK's environment variables, which the SDK
    // takes when `[aws] endpoint_url` is not set.
    std::fs::write(&path, &dynamodb).unwrap();
    for name in ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"] {
        for url in ["localhost:4566", "http://localhost:99999"] {
            let mut env = with_region.clone();
            env.push((name, url));
            let check_err = check_and_run_refuse(&path_arg, &env).await;
            assert!(
                check_err.contains(&format!("{name}: `{url}` is not an absolute")),
                "{check_err}"
            );
        }
        // Empty is unset; a URL the SDK can call passes.
        for url in ["", "http://localhost:4566"] {
            let mut env = with_region.clone();
            env.push((name, url));
            let (code, _, err) = cli(&["check", "--config", &path_arg], &env).await;
            assert_eq!(code, 0, "{name}={url}: {err}");
        }
    }
    // `[aws] endpoint_url` wins over the variables, so they are not looked at.
    std::fs::write(
        &path,
        format!("{dynamodb}\n[aws]\nendpoint_url = \"http://localhost:4566\"\n"),
    )
    .unwrap();
    let mut env = with_region.clone();
    env.push(("AWS_ENDPOINT_URL", "localhost:4566"));
    let (code, _, err) = cli(&["check", "--config", &path_arg], &env).await;
    assert_eq!(code, 0, "{err}");
}

/// A state file edited to a generation past 2^53-1 (the dashboard's
/// JavaScript cannot show it, and at 2^64-1 the next decision wrapped to 0
/// and was written but never applied) stops `check` and `run` with the same
/// message, naming the file and the generation.
#[tokio::test]
async fn check_and_run_refuse_a_state_file_past_the_highest_generation() {
    let (v1, v2) = (
        TaggedUpstream::start("v1").await,
        TaggedUpstream::start("v2").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let path_arg = path.display().to_string();
    std::fs::write(&path, config(v1.addr, v2.addr)).unwrap();
    let state = dir.path().join("gateway.state.json");
    std::fs::write(
        &state,
        r#"{"stable":"v1","weights":{"v1":90,"v2":10},"generation":18446744073709551615,"updated_at_ms":1,"source":"admin","config_weights":{"v1":90,"v2":10},"config_stable":"v1"}"#,
    )
    .unwrap();
    let token = [(TOKEN_ENV, TOKEN)];
    let check_err = check_and_run_refuse(&path_arg, &token).await;
    let line = error_line(&check_err);
    assert!(
        line.contains("gateway.state.json")
            && line.contains("generation 18446744073709551615 is above 9007199254740991"),
        "{check_err}"
    );
}

/// A stand-in for the rollout API (issue #12's contract): `GET /rollout`
/// walks through `phases`, one per request, then stays on the last.
async fn scripted_rollout(phases: Vec<serde_json::Value>) -> String {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let phases = Arc::new(phases);
    let calls = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (phases, calls) = (phases.clone(), calls.clone());
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let i = calls.fetch_add(1, Ordering::SeqCst).min(phases.len() - 1);
                    let body = phases[i].to_string();
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            bytes::Bytes::from(body),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    url
}

#[tokio::test]
async fn rollout_status_wait_prints_each_step_and_fails_on_abort() {
    use serde_json::json;
    let step = |phase: &str, step: u64, share: f64| json!({"canary": "v2", "phase": phase, "step": step, "share": share});
    let mut aborted = step("aborted", 2, 0.0);
    aborted["abort_reason"] = json!("error rate 0.2 above max_error_rate 0.01");
    let url = scripted_rollout(vec![
        step("progressing", 0, 1.0),
        step("progressing", 0, 1.0),
        step("progressing", 1, 5.0),
        aborted,
    ])
    .await;
    let (code, out, err) = cli(
        &["ctl", "--admin", &url, "rollout", "status", "--wait"],
        &[],
    )
    .await;
    assert_eq!(code, 7, "{out}{err}");
    let steps = out.lines().filter(|l| l.starts_with("rollout of")).count();
    assert_eq!(steps, 3, "one line per step:\n{out}");
    assert!(err.contains("max_error_rate"), "{err}");

    let url = scripted_rollout(vec![
        step("progressing", 0, 1.0),
        step("succeeded", 3, 100.0),
    ])
    .await;
    let (code, out, err) = cli(
        &["ctl", "--admin", &url, "rollout", "status", "--wait"],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");

    let url = scripted_rollout(vec![step("holding", 0, 1.0)]).await;
    let (code, _, err) = cli(
        &[
            "ctl",
            "--admin",
            &url,
            "rollout",
            "status",
            "--wait",
            "--timeout",
            "1s",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 8, "{err}");
}

/// What the tests' load balancer does with one connection.
#[derive(Debug, Clone, Copy)]
enum Backend {
    /// Relays it to this admin API.
    To(SocketAddr),
    /// Closes it at once (a task being replaced).
    Closed,
    /// Answers 503 (a load balancer with no healthy target for a moment).
    Unavailable,
}

/// A TCP load balancer in front of admin APIs: its n-th connection goes to
/// `script[n]` (the last entry from then on). Its URL, and how many
/// connections it took.
async fn load_balancer(
    script: Vec<Backend>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let taken = std::sync::Arc::new(AtomicUsize::new(0));
    let count = taken.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            let backend = script[n.min(script.len() - 1)];
            tokio::spawn(async move {
                match backend {
                    Backend::To(addr) => {
                        if let Ok(mut up) = tokio::net::TcpStream::connect(addr).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                        }
                    }
                    Backend::Closed => drop(client),
                    Backend::Unavailable => {
                        let mut head = Vec::new();
                        let mut chunk = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match client.read(&mut chunk).await {
                                Ok(n) if n > 0 => head.extend_from_slice(&chunk[..n]),
                                _ => return,
                            }
                        }
                        let answer = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                        let _ = client.write_all(answer.as_bytes()).await;
                    }
                }
            });
        }
    });
    (url, taken)
}

/// Two gateways behind one load balancer (separate stores, so each keeps
/// its own rollout): `a` still shows an earlier rollout that ended, made by
/// `end_on_a` (`abort` or `promote`).
async fn gateways_with_an_earlier_rollout_on_a(
    end_on_a: &str,
) -> (GatewayProc, GatewayProc, TaggedUpstream, TaggedUpstream) {
    let (v1, v2) = (
        TaggedUpstream::start("v1").await,
        TaggedUpstream::start("v2").await,
    );
    let a = GatewayProc::spawn(&config(v1.addr, v2.addr)).await;
    let b = GatewayProc::spawn(&config(v1.addr, v2.addr)).await;
    let earlier = r#"{"canary": "v2", "steps": [50, 100], "interval_s": 60}"#;
    assert_eq!(
        admin(a.admin, "POST", "/rollout", earlier).await.status,
        201
    );
    let ended = admin(a.admin, "POST", &format!("/rollout/{end_on_a}"), "{}").await;
    assert_eq!(ended.status, 200, "{}", ended.text());
    (a, b, v1, v2)
}

#[tokio::test]
async fn rollout_wait_rides_out_failed_polls_and_an_earlier_rollout_behind_a_load_balancer() {
    // The start reaches B; then one poll finds the connection closed, one
    // gets a 503, one reaches A, where an earlier rollout was aborted; the
    // rest reach B, where the rollout started succeeds with the little
    // traffic sent through it (min_requests 1). The wait follows B's
    // rollout to its success: exit 0, not the failed poll's 5 or 6, nor
    // A's abort (7).
    let (a, b, _v1, _v2) = gateways_with_an_earlier_rollout_on_a("abort").await;
    let proxy = b.addr;
    // Bounded: at most 1,500 rounds of 5 requests, 20 ms apart; aborted
    // once the wait is over.
    let traffic = tokio::spawn(async move {
        for _ in 0..1_500 {
            split_counts(proxy, 5).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let script = vec![
        Backend::To(b.admin),
        Backend::Closed,
        Backend::Unavailable,
        Backend::To(a.admin),
        Backend::To(b.admin),
    ];
    let (url, taken) = load_balancer(script).await;
    let env = [
        ("CANARY_ADMIN_TOKEN", TOKEN),
        ("CANARY_ADMIN_URL", url.as_str()),
    ];
    let start = [
        "ctl",
        "rollout",
        "start",
        "--canary",
        "v2",
        "--steps",
        "50,100",
        "--interval",
        "1s",
        "--min-requests",
        "1",
        "--wait",
        "--timeout",
        "30s",
    ];
    let (code, out, err) = cli(&start, &env).await;
    traffic.abort();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("succeeded"), "{out}");
    assert!(
        !out.contains("aborted"),
        "printed A's earlier rollout:\n{out}"
    );
    assert!(taken.load(std::sync::atomic::Ordering::SeqCst) > 4);
    let on_b = admin(b.admin, "GET", "/rollout", "").await.json();
    assert_eq!(on_b["phase"], "succeeded", "{on_b}");
}

#[tokio::test]
async fn rollout_wait_is_not_ended_by_an_earlier_rollouts_success() {
    // A shows an earlier rollout that succeeded; the one started (on B) is
    // aborted: the wait exits 7, not 0.
    use std::sync::atomic::Ordering;
    let (a, b, _v1, _v2) = gateways_with_an_earlier_rollout_on_a("promote").await;
    let script = vec![
        Backend::To(b.admin),
        Backend::To(a.admin),
        Backend::To(b.admin),
    ];
    let (url, taken) = load_balancer(script).await;
    let env = [
        ("CANARY_ADMIN_TOKEN".to_string(), TOKEN.to_string()),
        ("CANARY_ADMIN_URL".to_string(), url),
    ];
    let waiting = tokio::spawn(async move {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let start = [
            "ctl",
            "rollout",
            "start",
            "--canary",
            "v2",
            "--steps",
            "50,100",
            "--interval",
            "60s",
            "--wait",
            "--timeout",
            "30s",
        ];
        cli(&start, &env).await
    });
    // Once it has seen A's view and is back on B, B's rollout is aborted
    // (unless the wait already ended, on A's view).
    for _ in 0..200 {
        if taken.load(Ordering::SeqCst) >= 3 || waiting.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let aborted = admin(b.admin, "POST", "/rollout/abort", "{}").await;
    assert_eq!(aborted.status, 200, "{}", aborted.text());
    let (code, out, err) = waiting.await.unwrap();
    assert_eq!(code, 7, "{out}{err}");
    assert!(err.contains("rollout aborted"), "{err}");
}

#[tokio::test]
async fn envoy_admin_paths_answer_as_aliases() {
    let (v1, v2) = (
        TaggedUpstream::start("v1").await,
        TaggedUpstream::start("v2").await,
    );
    let gw = GatewayProc::spawn(&config(v1.addr, v2.addr)).await;
    let mut conn = gateway_proc::Conn::connect(gw.admin).await;
    let ready = conn.send("GET", "/ready", false, "").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.text(), "LIVE\n");
    let stats = conn.send("GET", "/stats/prometheus", false, "").await;
    assert_eq!(stats.status, 200);
    assert!(
        stats.text().contains("canary_version_weight"),
        "{}",
        stats.text()
    );
}

#[tokio::test]
async fn ctl_drives_a_real_rollout_and_exits_by_its_end() {
    let (v1, v2) = (
        TaggedUpstream::start("v1").await,
        TaggedUpstream::start("v2").await,
    );
    let gw = GatewayProc::spawn(&config(v1.addr, v2.addr)).await;
    let url = format!("http://{}", gw.admin);
    let env = [
        ("CANARY_ADMIN_TOKEN", TOKEN),
        ("CANARY_ADMIN_URL", url.as_str()),
    ];
    let start = [
        "ctl",
        "rollout",
        "start",
        "--canary",
        "v2",
        "--steps",
        "10,50,100",
        "--interval",
        "1s",
    ];
    let (code, out, err) = cli(&start, &env).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("rollout of v2"), "{out}");
    // A second one while it runs is refused (409).
    let (code, _, err) = cli(&start, &env).await;
    assert_eq!(code, 3, "{err}");
    let (code, out, err) = cli(&["ctl", "--json", "rollout", "status"], &env).await;
    assert_eq!(code, 0, "{err}");
    let state: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(state["canary"], "v2", "{state}");
    // Promote skips to the end: --wait returns 0 once it has succeeded.
    let (code, _, err) = cli(&["ctl", "rollout", "promote"], &env).await;
    assert_eq!(code, 0, "{err}");
    let wait = ["ctl", "rollout", "status", "--wait", "--timeout", "30s"];
    let (code, out, err) = cli(&wait, &env).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("succeeded"), "{out}");

    // v2 is stable now. A rollout of v1, aborted: --wait exits 7 with the
    // reason, and all traffic is back on the stable version.
    assert_eq!(gw.weights().await["stable"], "v2");
    let mut again = start;
    again[4] = "v1";
    let (code, _, err) = cli(&again, &env).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&["ctl", "rollout", "abort"], &env).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&wait, &env).await;
    assert_eq!(code, 7, "{out}{err}");
    assert!(err.contains("rollout aborted"), "{err}");
    assert_eq!(gw.weights().await["weights"]["v1"], 0);
}

/// An `https://` webhook whose certificate a private CA signed: the
/// gateway trusts the CA that `SSL_CERT_FILE` names (the system's trust
/// store is read that way, as OpenSSL's), and the rollout's events reach
/// the webhook; a gateway that does not trust the CA sends none and logs
/// why.
#[tokio::test]
async fn an_https_webhook_behind_a_private_ca_gets_the_rollouts_events() {
    let (v1, v2) = (
        TaggedUpstream::start("v1").await,
        TaggedUpstream::start("v2").await,
    );
    let (hook, events, ca_pem) = tls_webhook().await;
    let dir = tempfile::tempdir().unwrap();
    let trusted = dir.path().join("ca.pem");
    std::fs::write(&trusted, ca_pem).unwrap();
    // A bundle with an unrelated CA only.
    let other = dir.path().join("other.pem");
    std::fs::write(&other, test_ca::Ca::new().pem).unwrap();
    let plan = format!(
        r#"{{"canary": "v2", "steps": [10, 100], "interval_s": 60, "webhook": "https://localhost:{}/events"}}"#,
        hook.port()
    );
    for (bundle, trusts) in [(&other, false), (&trusted, true)] {
        let bundle = bundle.to_str().unwrap();
        let gw =
            GatewayProc::spawn_from_env(&config(v1.addr, v2.addr), &[("SSL_CERT_FILE", bundle)])
                .await;
        let reply = admin(gw.admin, "POST", "/rollout", &plan).await;
        assert!(reply.status.is_success(), "{}", reply.text());
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if trusts && !events.lock().unwrap().is_empty() {
                    return;
                }
                let log = gw.log_text();
                if !trusts && log.contains("event dropped after") {
                    assert!(log.contains("rollout webhook failed"), "{log}");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(got.is_ok(), "trusted: {trusts}\n{}", gw.log_text());
    }
    // Only the gateway that trusted the CA got through, once.
    let events = events.lock().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "started", "{events:?}");
    assert_eq!(events[0]["canary"], "v2", "{events:?}");
}

/// A webhook over TLS on 127.0.0.1 with a certificate for `localhost`
/// signed by a CA of its own: its address, the JSON bodies it was sent, and
/// the CA's PEM.
async fn tls_webhook() -> (
    SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    String,
) {
    use http_body_util::BodyExt;
    use hyper_util::rt::TokioIo;
    use rustls_pki_types::pem::PemObject;
    use std::sync::{Arc, Mutex};
    let ca = test_ca::Ca::new();
    let (_, key, cert) = ca.leaf(&["localhost"]);
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let kept = events.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, kept) = (acceptor.clone(), kept.clone());
            tokio::spawn(async move {
                // A client that does not trust the CA ends here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let kept = kept.clone();
                        async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            if let Ok(event) = serde_json::from_slice(&body) {
                                kept.lock().unwrap().push(event);
                            }
                            Ok::<_, hyper::Error>(http::Response::new(http_body_util::Empty::<
                                bytes::Bytes,
                            >::new(
                            )))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, events, ca.pem)
}
