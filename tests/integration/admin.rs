//! Control-plane behaviour over real sockets.

use std::time::Duration;

use crate::support::*;

const TOKEN: &str = "admin-test-token";

/// A gateway whose admin token is read from a file.
async fn gateway(versions: &[(&str, u32, std::net::SocketAddr)]) -> (Gateway, tempfile::TempDir) {
    gateway_with_token(versions, TOKEN).await
}

#[tokio::test]
async fn weight_changes_steer_traffic_and_need_the_token() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let (gw, _secrets) = gateway(&[("v1", 90, v1.addr), ("v2", 10, v2.addr)]).await;

    let denied = admin(
        gw.admin,
        "PUT",
        "/weights",
        Some("nope"),
        r#"{"weights":{"v2":100}}"#,
    )
    .await;
    assert_eq!(denied.status, 401);
    assert!(denied.header("www-authenticate").is_some());
    let denied = admin(gw.admin, "GET", "/status", None, "").await;
    assert_eq!(denied.status, 401);

    let ok = admin(
        gw.admin,
        "PUT",
        "/weights",
        Some(TOKEN),
        r#"{"weights":{"v1":0,"v2":100}}"#,
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let counts = split_counts(gw.addr, 50, &[]).await;
    assert_eq!(counts.get("v2"), Some(&50), "{counts:?}");

    let ok = admin(gw.admin, "POST", "/rollback", Some(TOKEN), "").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let counts = split_counts(gw.addr, 50, &[]).await;
    assert_eq!(counts.get("v1"), Some(&50), "{counts:?}");

    let ok = admin(
        gw.admin,
        "POST",
        "/promote",
        Some(TOKEN),
        r#"{"version":"v2"}"#,
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let w: serde_json::Value = serde_json::from_slice(&ok.body).unwrap();
    assert_eq!(w["stable"], "v2");
    assert_eq!(w["generation"], 3);
    let counts = split_counts(gw.addr, 50, &[]).await;
    assert_eq!(counts.get("v2"), Some(&50), "{counts:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn bad_admin_input_over_the_wire_changes_nothing() {
    let v1 = Upstream::start("v1").await;
    let (gw, _secrets) = gateway(&[("v1", 1, v1.addr)]).await;
    for (method, path, body, status) in [
        ("PUT", "/weights", "{oops", 400),
        ("PUT", "/weights", r#"{"weights":{"v1":0}}"#, 400),
        ("PUT", "/weights", r#"{"weights":{"v2":3}}"#, 400),
        ("PATCH", "/weights", "", 405),
    ] {
        let reply = admin(gw.admin, method, path, Some(TOKEN), body).await;
        assert_eq!(
            reply.status,
            status,
            "{method} {path} {body}: {}",
            reply.text()
        );
        let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let huge = "x".repeat(100 * 1024);
    assert_eq!(
        admin(gw.admin, "PUT", "/weights", Some(TOKEN), &huge)
            .await
            .status,
        413
    );
    let w: serde_json::Value = serde_json::from_slice(
        &admin(gw.admin, "GET", "/weights", Some(TOKEN), "")
            .await
            .body,
    )
    .unwrap();
    assert_eq!(w["generation"], 0);
    assert_eq!(w["weights"]["v1"], 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_key_given_twice_is_refused_and_changes_nothing() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let (gw, _secrets) = gateway(&[("v1", 100, v1.addr), ("v2", 0, v2.addr)]).await;
    for (method, path, body, names) in [
        (
            "PUT",
            "/weights",
            r#"{"weights":{"v1":5,"v2":95,"v2":0}}"#,
            "`weights.v2`",
        ),
        (
            "PUT",
            "/weights",
            r#"{"weights":{"v2":100},"weights":{"v1":100}}"#,
            "`weights`",
        ),
        (
            "POST",
            "/promote",
            r#"{"version":"v1","version":"v2"}"#,
            "`version`",
        ),
        (
            "POST",
            "/rollout",
            r#"{"canary":"v2","canary":"v1"}"#,
            "canary",
        ),
    ] {
        let reply = admin(gw.admin, method, path, Some(TOKEN), body).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text());
        let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        let message = json["error"].as_str().unwrap_or_default();
        assert!(
            message.contains("duplicate key") && message.contains(names),
            "{body}: {message}"
        );
    }
    let w: serde_json::Value = serde_json::from_slice(
        &admin(gw.admin, "GET", "/weights", Some(TOKEN), "")
            .await
            .body,
    )
    .unwrap();
    assert_eq!(w["generation"], 0, "{w}");
    assert_eq!(
        (&w["stable"], &w["weights"]["v1"], &w["weights"]["v2"]),
        (&"v1".into(), &100.into(), &0.into()),
        "{w}"
    );
    assert_eq!(
        admin(gw.admin, "GET", "/rollout", Some(TOKEN), "")
            .await
            .status,
        404
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_config_file_edit_is_picked_up_without_a_signal() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let (gw, _secrets) = gateway(&[("v1", 100, v1.addr), ("v2", 0, v2.addr)]).await;
    let path = gw.config_path();
    let original = std::fs::read_to_string(&path).unwrap();
    let edited = original.replace("weight = 100", "weight = 0").replace(
        &format!("weight = 0\nendpoints = [\"{}", v2.addr),
        &format!("weight = 1\nendpoints = [\"{}", v2.addr),
    );
    assert_ne!(edited, std::fs::read_to_string(&path).unwrap());
    std::fs::write(&path, edited).unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || {
            let w: serde_json::Value = serde_json::from_slice(
                &admin(gw.admin, "GET", "/weights", Some(TOKEN), "")
                    .await
                    .body,
            )
            .unwrap();
            w["weights"]["v2"] == 1 && w["weights"]["v1"] == 0
        })
        .await,
        "the edit was not applied: {}",
        admin(gw.admin, "GET", "/status", Some(TOKEN), "")
            .await
            .text()
    );
    let counts = split_counts(gw.addr, 20, &[]).await;
    assert_eq!(counts.get("v2"), Some(&20), "{counts:?}");
    let status: serde_json::Value = serde_json::from_slice(
        &admin(gw.admin, "GET", "/status", Some(TOKEN), "")
            .await
            .body,
    )
    .unwrap();
    assert_eq!(status["last_reload"]["trigger"], "file-change");
    assert_eq!(status["last_reload"]["ok"], true);
    gw.shutdown().await;
}

/// An edit made after the config file was read but before the gateway
/// watches it (the start's AWS setup, the shared store's first read, up to
/// `store.boot_timeout`, and the TLS load come in between) is reloaded: the
/// watcher compares against the text the running config was parsed from,
/// not the file as it is once the start is done.
#[tokio::test]
async fn a_config_edit_made_while_the_gateway_starts_is_applied() {
    use canary_gateway::config::Config;
    use canary_gateway::gateway::{self, Dependencies, Listeners};
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        config("", &[("v1", 100, v1.addr), ("v2", 0, v2.addr)]),
    )
    .unwrap();
    let loaded = Config::load(&path).unwrap();
    // The edit lands between the read and the start.
    let partial = dir.path().join("gateway.toml.partial");
    std::fs::write(
        &partial,
        config("", &[("v1", 0, v1.addr), ("v2", 1, v2.addr)]),
    )
    .unwrap();
    std::fs::rename(&partial, &path).unwrap();
    let listeners = Listeners {
        proxy: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let running = gateway::start(loaded, listeners, Dependencies::default())
        .await
        .unwrap();
    let admin_addr = running.admin_addr;
    assert!(
        eventually(Duration::from_secs(10), async || {
            let w: serde_json::Value =
                serde_json::from_slice(&admin(admin_addr, "GET", "/weights", None, "").await.body)
                    .unwrap_or_default();
            w["weights"]["v2"] == 1 && w["weights"]["v1"] == 0
        })
        .await,
        "the edit made during the start was never applied: {}",
        admin(admin_addr, "GET", "/status", None, "").await.text()
    );
    running.shutdown().await;
}

/// A file edit refused for a reason other than its text (here: the state
/// file's directory went away after the start, so the edit's decision
/// cannot be written) is applied once that reason is gone, with no further
/// edit or signal: the watcher tries it again.
#[tokio::test]
async fn a_file_edit_refused_for_a_passing_reason_is_tried_again() {
    use canary_gateway::config::Config;
    use canary_gateway::gateway::{self, Dependencies, Listeners};
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let path = dir.path().join("gateway.toml");
    let text = |w1, w2| {
        format!(
            "{}\n[state]\npath = \"{}\"\n",
            config("", &[("v1", w1, v1.addr), ("v2", w2, v2.addr)]),
            state_dir.join("gateway.state.json").display()
        )
    };
    std::fs::write(&path, text(100, 0)).unwrap();
    // The start needs the directory (no decision could be saved without it).
    std::fs::create_dir(&state_dir).unwrap();
    let listeners = Listeners {
        proxy: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let running = gateway::start(
        Config::load(&path).unwrap(),
        listeners,
        Dependencies::default(),
    )
    .await
    .unwrap();
    let admin_addr = running.admin_addr;
    let status = async || -> serde_json::Value {
        serde_json::from_slice(&admin(admin_addr, "GET", "/status", None, "").await.body)
            .unwrap_or_default()
    };
    std::fs::remove_dir_all(&state_dir).unwrap();
    let partial = dir.path().join("gateway.toml.partial");
    std::fs::write(&partial, text(0, 1)).unwrap();
    std::fs::rename(&partial, &path).unwrap();
    let mut last = serde_json::Value::Null;
    assert!(
        eventually(Duration::from_secs(10), async || {
            last = status().await;
            last["last_reload"]["trigger"] == "file-change" && last["last_reload"]["ok"] == false
        })
        .await,
        "the edit was not refused: {last:#}"
    );
    // The reason passes; the file stays as it is.
    std::fs::create_dir(&state_dir).unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || {
            let w: serde_json::Value =
                serde_json::from_slice(&admin(admin_addr, "GET", "/weights", None, "").await.body)
                    .unwrap_or_default();
            w["weights"]["v2"] == 1 && w["weights"]["v1"] == 0
        })
        .await,
        "the refused edit was never tried again: {:#}",
        status().await
    );
    assert_eq!(status().await["last_reload"]["ok"], true);
    running.shutdown().await;
}

/// `POST /reload` takes an empty body or `{}`, as `POST /rollback` does: a
/// field is refused (400) and nothing is reloaded, not ignored.
#[tokio::test]
async fn a_reload_with_fields_is_refused_and_reloads_nothing() {
    let v1 = Upstream::start("v1").await;
    let (gw, _secrets) = gateway(&[("v1", 1, v1.addr)]).await;
    for body in [r#"{"force":true}"#, "[]", "reload"] {
        let reply = admin(gw.admin, "POST", "/reload", Some(TOKEN), body).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text());
    }
    let status = admin(gw.admin, "GET", "/status", Some(TOKEN), "").await;
    let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    assert!(status["last_reload"].is_null(), "{status}");
    let reply = admin(gw.admin, "POST", "/reload", Some(TOKEN), "{}").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let status = admin(gw.admin, "GET", "/status", Some(TOKEN), "").await;
    let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(status["last_reload"]["trigger"], "admin", "{status}");
}

/// The admin token is read at start: a reload that points `token_file` or
/// `token_env` elsewhere (a rotation) is reported in `restart_required`,
/// and the old token stays the one in force until a restart.
#[tokio::test]
async fn a_changed_admin_token_source_is_reported_as_restart_required() {
    let v1 = Upstream::start("v1").await;
    let (gw, secrets) = gateway(&[("v1", 1, v1.addr)]).await;
    let path = gw.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let old_file = secrets.path().join("token").display().to_string();
    assert!(text.contains(&old_file), "{text}");
    let new_file = secrets.path().join("rotated");
    std::fs::write(&new_file, "rotated-token").unwrap();
    let rotated = text.replace(&old_file, &new_file.display().to_string());
    let rotated = rotated.replace(
        "[admin]\n",
        "[admin]\ntoken_env = \"CANARY_TEST_ROTATED_TOKEN\"\n",
    );
    std::fs::write(&path, rotated).unwrap();
    let reply = admin(gw.admin, "POST", "/reload", Some(TOKEN), "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let status: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        status["restart_required"],
        serde_json::json!(["admin.token_env", "admin.token_file"]),
        "{status}"
    );
    let status = admin(gw.admin, "GET", "/status", Some(TOKEN), "").await;
    assert_eq!(status.status, 200, "the old token stays in force");
    let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(
        status["last_reload"]["restart_required"],
        serde_json::json!(["admin.token_env", "admin.token_file"]),
        "{status}"
    );
    let denied = admin(gw.admin, "GET", "/status", Some("rotated-token"), "").await;
    assert_eq!(denied.status, 401);
    let running = gw.running.as_ref().unwrap().control.config();
    assert_eq!(
        running.admin.token_file.as_deref(),
        Some(std::path::Path::new(&old_file))
    );
    assert_eq!(running.admin.token_env, None);
    gw.shutdown().await;
}

#[tokio::test]
async fn restart_only_settings_are_reported_not_applied() {
    let v1 = Upstream::start("v1").await;
    let (gw, _secrets) = gateway(&[("v1", 1, v1.addr)]).await;
    let path = gw.config_path();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[runtime]", "");
    std::fs::write(
        &path,
        format!(
            "{text}\n[runtime]\nworker_threads = 3\n\n[appmesh]\nmesh = \"m\"\n\
             virtual_router = \"r\"\nroute = \"web\"\nvirtual_nodes = {{ v1 = \"web-v1\" }}\n"
        ),
    )
    .unwrap();
    let reply = admin(gw.admin, "POST", "/reload", Some(TOKEN), "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let status: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        status["restart_required"],
        serde_json::json!(["runtime.worker_threads", "appmesh"]),
        "{status}"
    );
    let running = gw.running.as_ref().unwrap().control.config();
    assert_eq!(running.worker_threads, None);
    assert!(running.appmesh.is_none(), "no route sync was started");
    let status: serde_json::Value = serde_json::from_slice(
        &admin(gw.admin, "GET", "/status", Some(TOKEN), "")
            .await
            .body,
    )
    .unwrap();
    assert!(status["appmesh"].is_null(), "{status}");
    gw.shutdown().await;
}

/// Cloud Map discovery is set up at start, only when a version uses it: on
/// a gateway started with static endpoints only, a reload that adds a
/// `cloudmap` version or moves one to Cloud Map is refused naming the key
/// (nothing would ever poll it), and the running config keeps serving.
#[tokio::test]
async fn a_reload_into_cloud_map_without_discovery_set_up_is_refused() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let (gw, _secrets) = gateway(&[("v1", 50, v1.addr), ("v2", 50, v2.addr)]).await;
    let path = gw.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let cloudmap =
        |service: &str| format!("cloudmap = {{ namespace = \"ns\", service = \"{service}\" }}");
    let v2_line = endpoints_line(&[v2.addr]);
    let edits = [
        // A new version from Cloud Map.
        (
            format!(
                "{text}\n[[versions]]\nname = \"v3\"\nweight = 0\n{}\n",
                cloudmap("v3")
            ),
            "versions[2].cloudmap",
        ),
        // v2 moves to Cloud Map.
        (
            text.replace(&v2_line, &cloudmap("v2")),
            "versions[1].cloudmap",
        ),
    ];
    for (edited, key) in edits {
        assert_ne!(edited, text);
        std::fs::write(&path, &edited).unwrap();
        let reply = admin(gw.admin, "POST", "/reload", Some(TOKEN), "").await;
        assert_eq!(reply.status, 422, "{}", reply.text());
        let status: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        let message = status["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(key) && message.contains("restart"),
            "{status}"
        );
        let running = gw.running.as_ref().unwrap().control.config();
        assert_eq!(running.version_names(), ["v1", "v2"]);
        assert!(
            running
                .versions
                .iter()
                .all(|v| matches!(v.source, canary_gateway::config::EndpointSource::Static(_))),
            "nothing was applied"
        );
        // The split is as before: both versions answer, no 503.
        let counts = split_counts(gw.addr, 60, &[]).await;
        assert_eq!(counts.values().sum::<usize>(), 60, "{counts:?}");
        assert!(
            counts.get("v1").is_some_and(|&n| n > 0) && counts.get("v2").is_some_and(|&n| n > 0),
            "{counts:?}"
        );
        assert_eq!(counts.len(), 2, "{counts:?}");
    }
    gw.shutdown().await;
}

/// `[state] path` is read at start: a reload that moves it is reported in
/// `restart_required` and the gateway keeps writing the file it started
/// with; a reload of the unchanged file (default path beside it) reports
/// nothing.
#[tokio::test]
async fn a_moved_state_path_is_reported_as_restart_required() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let (gw, _secrets) = gateway(&[("v1", 100, v1.addr), ("v2", 0, v2.addr)]).await;
    let reload = async || -> serde_json::Value {
        let reply = admin(gw.admin, "POST", "/reload", Some(TOKEN), "").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        serde_json::from_slice(&reply.body).unwrap()
    };
    let status = reload().await;
    assert_eq!(
        status["restart_required"],
        serde_json::json!([]),
        "{status}"
    );

    let path = gw.config_path();
    let started_with = gw.dir.path().join("gateway.state.json");
    let moved = gw.dir.path().join("moved.state.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("{text}\n[state]\npath = \"{}\"\n", moved.display()),
    )
    .unwrap();
    let status = reload().await;
    assert_eq!(
        status["restart_required"],
        serde_json::json!(["state.path"]),
        "{status}"
    );
    let running = gw.running.as_ref().unwrap().control.config();
    assert_eq!(running.state_path.as_deref(), Some(started_with.as_path()));

    let put = admin(
        gw.admin,
        "PUT",
        "/weights",
        Some(TOKEN),
        r#"{"weights":{"v2":7}}"#,
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.text());
    let saved = std::fs::read_to_string(&started_with).unwrap();
    assert!(
        saved.contains("\"v2\":7") || saved.contains("\"v2\": 7"),
        "{saved}"
    );
    assert!(!moved.exists(), "the moved path is read only at a restart");
    gw.shutdown().await;
}

/// A raw admin request with exactly these headers (Host included), on a
/// fresh connection.
async fn admin_raw(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut req = http::Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Client::connect(addr)
        .await
        .send(req.body(full(body.to_string())).unwrap())
        .await
        .unwrap()
}

/// A web page of another site cannot change the weights: not by a CORS
/// simple request (a POST without a preflight: `Origin` of another site,
/// `Sec-Fetch-Site: cross-site`), nor, with no token on a loopback admin
/// address, by DNS rebinding (same-origin with itself, under its own name),
/// which cannot read what the token would guard either. The CLI (no Origin)
/// and the dashboard (its own origin) still can.
#[tokio::test]
async fn changes_from_another_sites_page_are_refused() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    // No token: the admin address is loopback.
    let gw = Gateway::start(&config("", &[("v1", 90, v1.addr), ("v2", 10, v2.addr)])).await;
    let own = gw.admin.to_string();
    let own_origin = format!("http://{own}");
    let rebound = format!("evil.example:{}", gw.admin.port());
    let rebound_origin = format!("http://{rebound}");
    let promote = r#"{"version":"v2"}"#;
    for (what, method, path, headers, body) in [
        (
            "a cross-site POST /rollback",
            "POST",
            "/rollback",
            vec![("host", own.as_str()), ("origin", "http://evil.example")],
            "",
        ),
        (
            "a text/plain POST /promote from another site",
            "POST",
            "/promote",
            vec![
                ("host", own.as_str()),
                ("content-type", "text/plain"),
                ("sec-fetch-site", "cross-site"),
            ],
            promote,
        ),
        (
            "a rebound name",
            "POST",
            "/promote",
            vec![
                ("host", rebound.as_str()),
                ("origin", rebound_origin.as_str()),
                ("content-type", "text/plain"),
            ],
            promote,
        ),
    ] {
        let reply = admin_raw(gw.admin, method, path, &headers, body).await;
        assert_eq!(reply.status, 403, "{what}: {}", reply.text());
        assert!(
            reply.json()["error"].as_str().unwrap().contains("refused"),
            "{what}: {}",
            reply.text()
        );
    }
    let w = admin(gw.admin, "GET", "/weights", None, "").await.json();
    assert_eq!(w["weights"]["v2"], 10, "{w}");
    assert_eq!(w["stable"], "v1", "{w}");
    // What the token would guard is not read under a rebound name either;
    // the probes and the metrics stay open.
    for (path, status) in [
        ("/status", 403),
        ("/weights", 403),
        ("/rollout", 403),
        ("/healthz", 200),
        ("/metrics", 200),
    ] {
        let reply = admin_raw(gw.admin, "GET", path, &[("host", rebound.as_str())], "").await;
        assert_eq!(reply.status, status, "GET {path}: {}", reply.text());
    }
    let reply = admin_raw(gw.admin, "GET", "/status", &[("host", own.as_str())], "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // The dashboard, from its own origin.
    let reply = admin_raw(
        gw.admin,
        "PUT",
        "/weights",
        &[
            ("host", own.as_str()),
            ("origin", own_origin.as_str()),
            ("sec-fetch-site", "same-origin"),
            ("content-type", "application/json"),
        ],
        r#"{"weights":{"v1":80,"v2":20}}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // The CLI and curl: no Origin.
    let reply = admin(gw.admin, "POST", "/rollback", None, "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    gw.shutdown().await;

    // With a token, a name is fine, another origin is not.
    let (gw, _secrets) = gateway(&[("v1", 90, v1.addr), ("v2", 10, v2.addr)]).await;
    let auth = format!("Bearer {TOKEN}");
    let named = format!("gateway.internal:{}", gw.admin.port());
    let reply = admin_raw(
        gw.admin,
        "POST",
        "/rollback",
        &[
            ("host", named.as_str()),
            ("authorization", auth.as_str()),
            ("origin", "http://evil.example"),
        ],
        "",
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    let reply = admin_raw(
        gw.admin,
        "POST",
        "/rollback",
        &[("host", named.as_str()), ("authorization", auth.as_str())],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = admin_raw(
        gw.admin,
        "GET",
        "/status",
        &[("host", named.as_str()), ("authorization", auth.as_str())],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    gw.shutdown().await;
}

/// A Cloud Map service without instances, the project's own `Discover`
/// answering as DiscoverInstances does then: no endpoints.
struct NoInstances;

impl canary_gateway::discovery::Discover for NoInstances {
    fn revision<'a>(
        &'a self,
        _source: &'a canary_gateway::discovery::CloudMapSource,
    ) -> canary_gateway::future::BoxFuture<'a, Result<i64, canary_gateway::discovery::DiscoveryError>>
    {
        Box::pin(async { Ok(1) })
    }

    fn instances<'a>(
        &'a self,
        _source: &'a canary_gateway::discovery::CloudMapSource,
    ) -> canary_gateway::future::BoxFuture<
        'a,
        Result<canary_gateway::discovery::InstanceList, canary_gateway::discovery::DiscoveryError>,
    > {
        Box::pin(async {
            Ok(canary_gateway::discovery::InstanceList {
                endpoints: Vec::new(),
                revision: Some(1),
            })
        })
    }
}

/// Weight given to a version without endpoints (its Cloud Map service has
/// no instances yet) is applied, as an operator may set the weights before
/// the canary's tasks register, but the answer's `warning` says that its
/// share of the requests gets 503; a change that leaves it at 0 has none.
#[tokio::test]
async fn weight_for_a_version_without_endpoints_is_applied_with_a_warning() {
    use std::sync::Arc;
    let v1 = Upstream::start("v1").await;
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let text = gateway_config(
        &format!("token_file = \"{}\"\n", token_file.display()),
        "",
        &[
            ("v1", 100, endpoints_line(&[v1.addr])),
            (
                "v2",
                0,
                "cloudmap = { namespace = \"ns\", service = \"app-v2\" }".to_string(),
            ),
        ],
    ) + "\n[aws]\nregion = \"us-east-1\"\n";
    let spawner: canary_gateway::gateway::PollerSpawner = Arc::new(|version, source, sink| {
        tokio::spawn(canary_gateway::aws::cloudmap::poll(
            version,
            source,
            Arc::new(NoInstances),
            sink,
            canary_gateway::aws::cloudmap::PollTiming::default(),
        ))
    });
    let deps = canary_gateway::gateway::Dependencies {
        discovery: Some(spawner),
        ..Default::default()
    };
    let gw = Gateway::start_with(&text, deps).await;
    let reply = admin(gw.admin, "GET", "/readyz", None, "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let change = async |method: &str, path: &str, body: &str| {
        let reply = admin(gw.admin, method, path, Some(TOKEN), body).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        serde_json::from_slice::<serde_json::Value>(&reply.body).unwrap()
    };
    let set = change("PUT", "/weights", r#"{"weights":{"v1":50,"v2":50}}"#).await;
    assert_eq!(set["weights"]["v2"], 50, "{set}");
    assert_eq!(
        set["warning"],
        "`v2` has weight 50 but no endpoints (cloudmap:ns/app-v2): its share of the requests gets 503 until it has some",
        "{set}"
    );
    let applied = admin(gw.admin, "GET", "/weights", Some(TOKEN), "").await;
    let applied: serde_json::Value = serde_json::from_slice(&applied.body).unwrap();
    assert_eq!(applied["weights"]["v2"], 50, "{applied}");
    assert!(applied.get("warning").is_none(), "{applied}");

    let set = change("PUT", "/weights", r#"{"weights":{"v1":100,"v2":0}}"#).await;
    assert!(set.get("warning").is_none(), "{set}");

    let promoted = change("POST", "/promote", r#"{"version":"v2"}"#).await;
    assert_eq!(promoted["stable"], "v2", "{promoted}");
    let warning = promoted["warning"].as_str().unwrap_or_default();
    assert!(
        warning.starts_with("`v2` has weight 100 but no endpoints"),
        "{promoted}"
    );
    gw.shutdown().await;
}
