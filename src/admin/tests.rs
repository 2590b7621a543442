//! The admin API as a service, without a socket.

use super::*;
use crate::config::Config;
use crate::store::file::FileStore;

// v1 (90, 10.0.1.5:9000) and v2 (10, 10.0.2.7:9000); the admin API is
// served without a socket here, so no address in it is bound or dialled.
use crate::config::test_text::TWO_VERSIONS as CONFIG;

struct Fixture {
    admin: Admin,
    _dir: tempfile::TempDir,
    state: std::path::PathBuf,
}

async fn fixture(token: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("gw.state.json");
    let config = Config::parse(CONFIG, "test").unwrap();
    let control = Control::start(config, Arc::new(FileStore::new(&state)), "file")
        .await
        .unwrap();
    control.set_listening();
    Fixture {
        admin: Admin {
            tls: None,
            control,
            token: token.map(String::from),
            metrics: crate::telemetry::metrics_handle(),
            reloader: None,
        },
        _dir: dir,
        state,
    }
}

async fn call(
    f: &Fixture,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, serde_json::Value, http::HeaderMap) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = f
        .admin
        .handle(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await;
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(
        String::from_utf8_lossy(&bytes).into_owned(),
    ));
    (status, json, headers)
}

#[tokio::test]
async fn open_endpoints_need_no_token() {
    let f = fixture(Some("t0k")).await;
    assert_eq!(
        call(&f, "GET", "/healthz", None, "").await.0,
        StatusCode::OK
    );
    assert_eq!(call(&f, "GET", "/readyz", None, "").await.0, StatusCode::OK);
    let (status, body, _) = call(&f, "GET", "/ready", None, "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, Some("LIVE\n")));
    assert_eq!(
        call(&f, "GET", "/metrics", None, "").await.0,
        StatusCode::OK
    );
    f.admin.control.start_draining();
    assert_eq!(
        call(&f, "GET", "/readyz", None, "").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (status, body, _) = call(&f, "GET", "/ready", None, "").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("DRAINING\n"))
    );
}

#[tokio::test]
async fn token_is_required_and_a_wrong_one_changes_nothing() {
    let f = fixture(Some("t0k")).await;
    for token in [None, Some("wrong")] {
        let (status, body, headers) =
            call(&f, "PUT", "/weights", token, r#"{"weights":{"v2":50}}"#).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(headers.contains_key(header::WWW_AUTHENTICATE));
        assert!(body["error"].is_string());
    }
    assert_eq!(f.admin.control.weights().weights["v2"], 10);
    assert!(!f.state.exists(), "a refused change must not be saved");
    let (status, body, _) = call(&f, "GET", "/weights", Some("t0k"), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["weights"]["v1"], 90);
    assert_eq!(body["stable"], "v1");
    assert_eq!(body["generation"], 0);
}

#[tokio::test]
async fn put_weights_changes_named_versions_and_saves() {
    let f = fixture(Some("t")).await;
    let (status, body, _) = call(&f, "PUT", "/weights", Some("t"), r#"{"weights":{"v2":5}}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["weights"]["v2"], 5);
    assert_eq!(
        body["weights"]["v1"], 90,
        "unnamed versions keep their weight"
    );
    assert_eq!(body["generation"], 1);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&f.state).unwrap()).unwrap();
    assert_eq!(saved["weights"]["v2"], 5);
    let snap = f.admin.control.snapshot_cell().load_full();
    assert_eq!(snap.versions[1].weight, 5);
}

#[tokio::test]
async fn promote_and_rollback() {
    let f = fixture(Some("t")).await;
    let (status, body, _) = call(&f, "POST", "/promote", Some("t"), r#"{"version":"v2"}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stable"], "v2");
    assert_eq!(body["weights"]["v1"], 0);
    assert_eq!(body["weights"]["v2"], 100);
    call(&f, "PUT", "/weights", Some("t"), r#"{"weights":{"v1":10}}"#).await;
    let (status, body, _) = call(&f, "POST", "/rollback", Some("t"), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stable"], "v2");
    assert_eq!(body["weights"]["v1"], 0);
    assert_eq!(body["generation"], 3);
}

#[tokio::test]
async fn a_rollback_answer_says_whether_the_store_has_it() {
    let f = fixture(Some("t")).await;
    call(&f, "PUT", "/weights", Some("t"), r#"{"weights":{"v2":50}}"#).await;
    let (status, body, _) = call(&f, "POST", "/rollback", Some("t"), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rollback_pending"], false, "{body}");
    assert!(body.get("warning").is_none(), "{body}");

    // The state file cannot be read or written any more.
    call(&f, "PUT", "/weights", Some("t"), r#"{"weights":{"v2":50}}"#).await;
    std::fs::remove_file(&f.state).unwrap();
    std::fs::create_dir(&f.state).unwrap();
    let (status, body, _) = call(&f, "POST", "/rollback", Some("t"), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The fields of GET /weights, as before, with the rollback in force here.
    assert_eq!(body["stable"], "v1");
    assert_eq!(body["weights"]["v2"], 0);
    assert_eq!(body["generation"], 4);
    assert!(
        body["updated_at_ms"].is_u64() && body["source"] == "admin",
        "{body}"
    );
    assert_eq!(body["rollback_pending"], true, "{body}");
    assert!(
        body["warning"]
            .as_str()
            .is_some_and(|w| w.contains("the state file could not be written yet")
                && !w.contains("other tasks")),
        "{body}"
    );
    let snap = f.admin.control.snapshot_cell().load_full();
    assert_eq!(snap.versions[1].weight, 0);
}

#[tokio::test]
async fn bad_input_is_rejected_and_changes_nothing() {
    let f = fixture(Some("t")).await;
    let cases = [
        (
            "PUT",
            "/weights",
            r#"{"weights":{"v3":5}}"#,
            StatusCode::BAD_REQUEST,
            "unknown version",
        ),
        (
            "PUT",
            "/weights",
            r#"{"weights":{"v2":-5}}"#,
            StatusCode::BAD_REQUEST,
            "negative",
        ),
        (
            "PUT",
            "/weights",
            r#"{"weights":{"v2":1.5}}"#,
            StatusCode::BAD_REQUEST,
            "must be an integer (no decimal point or exponent), got 1.5",
        ),
        (
            "PUT",
            "/weights",
            r#"{"weights":{"v2":1E2}}"#,
            StatusCode::BAD_REQUEST,
            "must be an integer (no decimal point or exponent), got 100.0",
        ),
        (
            "PUT",
            "/weights",
            r#"{"weights":{"v2":5.0}}"#,
            StatusCode::BAD_REQUEST,
            "must be an integer (no decimal point or exponent), got 5.0",
        ),
        (
            "PUT",
            "/weights",
            r#"{"weights":{"v2":"x"}}"#,
            StatusCode::BAD_REQUEST,
            "integer",
        ),
        (
            "PUT",
            "/weights",
            r#"{"weights":{"v1":0,"v2":0}}"#,
            StatusCode::BAD_REQUEST,
            "sum to 0",
        ),
        (
            "PUT",
            "/weights",
            r#"{"weights":{"v1":999999,"v2":2}}"#,
            StatusCode::BAD_REQUEST,
            "1000000",
        ),
        (
            "PUT",
            "/weights",
            r#"{"weights":"#,
            StatusCode::BAD_REQUEST,
            "malformed JSON",
        ),
        ("PUT", "/weights", "", StatusCode::BAD_REQUEST, "empty"),
        (
            "POST",
            "/promote",
            r#"{"version":"v9"}"#,
            StatusCode::BAD_REQUEST,
            "unknown version",
        ),
        (
            "POST",
            "/promote",
            r#"{}"#,
            StatusCode::BAD_REQUEST,
            "version",
        ),
        (
            "DELETE",
            "/weights",
            "",
            StatusCode::METHOD_NOT_ALLOWED,
            "method",
        ),
        (
            "GET",
            "/promote",
            "",
            StatusCode::METHOD_NOT_ALLOWED,
            "method",
        ),
        ("GET", "/nope", "", StatusCode::NOT_FOUND, "no such"),
    ];
    for (method, path, body, want, needle) in cases {
        let (status, json, headers) = call(&f, method, path, Some("t"), body).await;
        assert_eq!(status, want, "{method} {path} {body}: {json}");
        let msg = json["error"].as_str().unwrap_or_default();
        assert!(
            msg.contains(needle),
            "{method} {path} {body}: `{msg}` lacks `{needle}`"
        );
        if want == StatusCode::METHOD_NOT_ALLOWED {
            assert!(headers.contains_key(header::ALLOW));
        }
    }
    let big = format!(
        r#"{{"weights":{{"v2":1}},"pad":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    assert_eq!(
        call(&f, "PUT", "/weights", Some("t"), &big).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let w = f.admin.control.weights();
    assert_eq!(
        (w.weights["v1"], w.weights["v2"], w.generation),
        (90, 10, 0)
    );
    assert!(!f.state.exists());
}

#[tokio::test]
async fn status_reports_versions_and_endpoints() {
    let f = fixture(Some("t")).await;
    let (status, body, _) = call(&f, "GET", "/status", Some("t"), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["versions"][0]["name"], "v1");
    assert_eq!(
        body["versions"][0]["endpoints"][0]["address"],
        "10.0.1.5:9000"
    );
    assert_eq!(body["versions"][0]["endpoints"][0]["health"], "healthy");
    assert_eq!(body["weights"]["generation"], 0);
    assert!(body["uptime_seconds"].is_number());
    assert_eq!(body["ready"], true);
}

/// The file watcher's word that the config file keeps changing shows in
/// `/status` (`config_file_unsettled_since_ms` and a warning) until it
/// settles.
#[tokio::test]
async fn status_says_while_the_config_file_keeps_changing() {
    let f = fixture(Some("t")).await;
    let (_, body, _) = call(&f, "GET", "/status", Some("t"), "").await;
    assert!(body["config_file_unsettled_since_ms"].is_null(), "{body}");
    let since = crate::store::unix_ms() - 7_000;
    f.admin.control.set_config_file_unsettled(Some(since));
    let (_, body, _) = call(&f, "GET", "/status", Some("t"), "").await;
    assert_eq!(body["config_file_unsettled_since_ms"], since, "{body}");
    let warnings = body["warnings"].to_string();
    assert!(warnings.contains("keeps changing"), "{warnings}");
    f.admin.control.set_config_file_unsettled(None);
    let (_, body, _) = call(&f, "GET", "/status", Some("t"), "").await;
    assert!(body["config_file_unsettled_since_ms"].is_null(), "{body}");
    assert!(
        !body["warnings"].to_string().contains("keeps changing"),
        "{body}"
    );
}

#[tokio::test]
async fn a_rollback_that_aborts_a_rollout_is_recorded_as_the_operators() {
    let f = fixture(None).await;
    let plan = r#"{"canary": "v2", "steps": [10, 50], "interval_s": 60}"#;
    let (status, _, _) = call(&f, "POST", "/rollout", None, plan).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body, _) = call(&f, "POST", "/rollback", None, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, weights, _) = call(&f, "GET", "/weights", None, "").await;
    assert_eq!(weights["source"], "admin", "{weights}");
    assert_eq!(weights["weights"]["v2"], 0, "{weights}");
    let (_, rollout, _) = call(&f, "GET", "/rollout", None, "").await;
    assert_eq!(rollout["phase"], "aborted", "{rollout}");
}

/// `PUT /weights` (or `POST /promote`) sent while `POST /rollout` is being
/// written: the start holds the decisions' turn, the change waits for it,
/// and is then judged on the decision with the rollout: refused (409), not
/// written over the rollout's first step.
#[tokio::test]
async fn a_weight_change_racing_a_rollouts_start_is_refused() {
    use crate::store::memory::MemoryStore;
    use std::sync::atomic::Ordering;
    use std::task::Poll;
    for (method, path, body) in [
        ("PUT", "/weights", r#"{"weights": {"v2": 50}}"#),
        ("POST", "/promote", r#"{"version": "v2"}"#),
    ] {
        let store = Arc::new(MemoryStore::default());
        let config = Config::parse(CONFIG, "test").unwrap();
        let control = Control::start(config, store.clone(), "dynamodb")
            .await
            .unwrap();
        let admin = Admin {
            tls: None,
            control: control.clone(),
            token: None,
            metrics: crate::telemetry::metrics_handle(),
            reloader: None,
        };
        // The start's refresh reads the store, then its decision does: that
        // read (holding the decisions' turn) hangs until released.
        let loads = store.loads.load(Ordering::SeqCst);
        store.stall_at_load.store(loads + 2, Ordering::SeqCst);
        let start = tokio::spawn({
            let control = control.clone();
            async move {
                control
                    .start_rollout(br#"{"canary": "v2", "steps": [10, 50], "interval_s": 60}"#)
                    .await
            }
        });
        let mut turns = 0;
        while store.loads.load(Ordering::SeqCst) < loads + 2 && turns < 10_000 {
            tokio::task::yield_now().await;
            turns += 1;
        }
        assert_eq!(store.loads.load(Ordering::SeqCst), loads + 2);
        assert!(control.rollout().is_none(), "the start is not in force yet");

        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let mut change = std::pin::pin!(admin.handle(request));
        let first = std::future::poll_fn(|cx| Poll::Ready(change.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "{path} waits for the start's turn");

        store.release.notify_one();
        start.await.unwrap().unwrap();
        let resp = change.await;
        assert_eq!(resp.status(), StatusCode::CONFLICT, "{method} {path}");
        let stored = store.stored().unwrap();
        assert_eq!(stored.weights["v2"], 10, "{method} {path}: {stored:?}");
        assert_eq!(stored.stable, "v1");
        assert!(stored.rollout.is_some_and(|r| r.phase.running()));
    }
}

/// The rollout actions take no fields: `{"canary": "v3"}` to
/// `/rollout/promote` is refused (400, naming the key) before anything
/// changes, not taken as a promote of the running canary. No body and `{}`
/// (what `ctl` sends) are fine.
#[tokio::test]
async fn the_rollout_actions_refuse_a_body_with_fields() {
    let f = fixture(None).await;
    let plan = r#"{"canary": "v2", "steps": [10, 50], "interval_s": 60}"#;
    assert_eq!(
        call(&f, "POST", "/rollout", None, plan).await.0,
        StatusCode::CREATED
    );
    for action in ["pause", "resume", "abort", "promote"] {
        let path = format!("/rollout/{action}");
        let (status, body, _) = call(&f, "POST", &path, None, r#"{"canary":"v3"}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(message.contains("`canary`"), "{path}: {message}");
        for bad in ["[1]", "{oops", r#"{"a":1,"a":1}"#] {
            let (status, _, _) = call(&f, "POST", &path, None, bad).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {bad}");
        }
    }
    let (_, view, _) = call(&f, "GET", "/rollout", None, "").await;
    assert_eq!(
        (view["phase"].as_str(), view["step"].as_u64()),
        (Some("progressing"), Some(0))
    );
    // Each answer says why the rollout waits as `GET /rollout` will: the
    // pause's reason at once, and none once resumed.
    let (status, view, _) = call(&f, "POST", "/rollout/pause", None, "{}").await;
    assert_eq!(
        (status, view["phase"].as_str()),
        (StatusCode::OK, Some("paused"))
    );
    assert!(
        view["why"]
            .as_str()
            .is_some_and(|w| w.starts_with("paused: ")),
        "{view}"
    );
    let (status, view, _) = call(&f, "POST", "/rollout/resume", None, " ").await;
    assert_eq!(
        (status, view["phase"].as_str()),
        (StatusCode::OK, Some("progressing"))
    );
    assert!(view["why"].is_null(), "{view}");
    let (status, view, _) = call(&f, "POST", "/rollout/promote", None, "{}").await;
    assert_eq!(
        (status, view["phase"].as_str()),
        (StatusCode::OK, Some("succeeded"))
    );
}

/// The 409 for a weight change during a rollout names the step as `GET
/// /rollout` (and `ctl rollout status`) count it: from 0.
#[tokio::test]
async fn the_409_during_a_rollout_counts_steps_as_get_rollout_does() {
    let f = fixture(None).await;
    let plan = r#"{"canary": "v2", "steps": [10, 50], "interval_s": 60}"#;
    assert_eq!(
        call(&f, "POST", "/rollout", None, plan).await.0,
        StatusCode::CREATED
    );
    let (_, view, _) = call(&f, "GET", "/rollout", None, "").await;
    let step = view["step"].as_u64().unwrap();
    let (status, body, _) = call(&f, "PUT", "/weights", None, r#"{"weights":{"v2":50}}"#).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let message = body["error"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("(step {step} of 2, counted from 0;")),
        "{message}"
    );
}
