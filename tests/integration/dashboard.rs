//! The dashboard's endpoints over real sockets: the page and its assets, the
//! per-version time series and the audit log (the page itself is tested in
//! Chromium by tests/browser/run.sh).
//!
//! The series and the audit log are process-wide (like the metrics), so these
//! tests use version names no other test uses.

use std::time::Duration;

use crate::support::*;

const TOKEN: &str = "dashboard-test-token";

async fn gateway(versions: &[(&str, u32, std::net::SocketAddr)]) -> (Gateway, tempfile::TempDir) {
    gateway_with_token(versions, TOKEN).await
}

fn json(reply: &Reply) -> serde_json::Value {
    serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.text()))
}

#[tokio::test]
async fn the_page_loads_without_a_token_under_a_strict_policy() {
    let a = Upstream::start("ui-page-a").await;
    let (gw, _secrets) = gateway(&[("ui-page-a", 100, a.addr)]).await;

    let page = admin(gw.admin, "GET", "/ui", None, "").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert!(page.text().contains("<script src=\"/ui/app.js\""));
    for (path, kind) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let asset = admin(gw.admin, "GET", path, None, "").await;
        assert_eq!(asset.status, 200, "{path}");
        assert!(asset.header("content-type").unwrap().starts_with(kind));
        assert!(asset.body.len() > 1000);
    }
    assert_eq!(
        admin(gw.admin, "GET", "/ui/nothing", None, "").await.status,
        404
    );
    let post = admin(gw.admin, "POST", "/ui", Some(TOKEN), "").await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET"));
    gw.shutdown().await;
}

#[tokio::test]
async fn the_series_show_each_versions_traffic_and_need_the_token() {
    let a = Upstream::start("ui-series-a").await;
    let b = Upstream::start("ui-series-b").await;
    let (gw, _secrets) = gateway(&[("ui-series-a", 70, a.addr), ("ui-series-b", 30, b.addr)]).await;

    for token in [None, Some("wrong")] {
        let denied = admin(gw.admin, "GET", "/ui/series", token, "").await;
        assert_eq!(denied.status, 401);
        assert!(!denied.text().contains("ui-series-a"));
    }
    let bad = admin(gw.admin, "GET", "/ui/series?since=soon", Some(TOKEN), "").await;
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("since"), "{}", bad.text());

    let counts = split_counts(gw.addr, 200, &[]).await;
    let (sent_a, sent_b) = (counts["ui-series-a"], counts["ui-series-b"]);
    assert!(sent_b > 20, "{counts:?}");
    // The sampler folds once a second: wait until the requests are in samples.
    let mut seen = serde_json::Value::Null;
    let folded = eventually(Duration::from_secs(5), async || {
        let reply = admin(gw.admin, "GET", "/ui/series", Some(TOKEN), "").await;
        seen = json(&reply);
        let total = |name: &str| -> u64 {
            seen["versions"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|v| v["name"] == name)
                .flat_map(|v| v["requests"].as_array().unwrap().iter())
                .map(|n| n.as_u64().unwrap())
                .sum()
        };
        total("ui-series-a") == sent_a as u64 && total("ui-series-b") == sent_b as u64
    })
    .await;
    assert!(folded, "{seen}");
    let b_series = seen["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "ui-series-b")
        .unwrap();
    let last = b_series["t"].as_array().unwrap().len() - 1;
    assert_eq!(b_series["weight"][last], 30);
    let busy = b_series["requests"]
        .as_array()
        .unwrap()
        .iter()
        .position(|n| n.as_u64() > Some(0))
        .unwrap();
    assert!(b_series["p99_ms"][busy].as_f64().unwrap() > 0.0);
    assert_eq!(b_series["errors"][busy], 0);
    let share = b_series["share"][busy].as_f64().unwrap();
    assert!(share > 0.0 && share < 1.0, "{share}");
    assert_eq!(seen["window_s"], 900);

    // `since` returns only the newer samples.
    let t_last = b_series["t"][last].as_u64().unwrap();
    let newer = json(
        &admin(
            gw.admin,
            "GET",
            &format!("/ui/series?since={t_last}"),
            Some(TOKEN),
            "",
        )
        .await,
    );
    for v in newer["versions"].as_array().unwrap() {
        assert!(
            v["t"]
                .as_array()
                .unwrap()
                .iter()
                .all(|t| t.as_u64() > Some(t_last))
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn the_audit_log_lists_applied_changes_and_needs_the_token() {
    let a = Upstream::start("ui-audit-a").await;
    let b = Upstream::start("ui-audit-b").await;
    let (gw, _secrets) = gateway(&[("ui-audit-a", 90, a.addr), ("ui-audit-b", 10, b.addr)]).await;

    assert_eq!(
        admin(gw.admin, "GET", "/ui/audit", None, "").await.status,
        401
    );
    let set = admin(
        gw.admin,
        "PUT",
        "/weights",
        Some(TOKEN),
        r#"{"weights":{"ui-audit-b":40,"ui-audit-a":60}}"#,
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.text());
    let generation = json(&set)["generation"].clone();
    let refused = admin(
        gw.admin,
        "PUT",
        "/weights",
        Some(TOKEN),
        r#"{"weights":{"ui-audit-b":-1}}"#,
    )
    .await;
    assert_eq!(refused.status, 400);
    let rolled = admin(gw.admin, "POST", "/rollback", Some(TOKEN), "").await;
    assert_eq!(rolled.status, 200);

    let reply = admin(gw.admin, "GET", "/ui/audit", Some(TOKEN), "").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let entries: Vec<serde_json::Value> = json(&reply)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["new_weights"].get("ui-audit-a").is_some())
        .cloned()
        .collect();
    assert_eq!(
        entries.len(),
        2,
        "the refused change is not in the log: {entries:?}"
    );
    assert_eq!(entries[0]["source"], "admin");
    assert_eq!(entries[0]["generation"], generation);
    assert_eq!(entries[0]["old_weights"]["ui-audit-b"], 10);
    assert_eq!(entries[0]["new_weights"]["ui-audit-b"], 40);
    assert_eq!(entries[1]["new_weights"]["ui-audit-b"], 0);
    assert_eq!(entries[1]["new_weights"]["ui-audit-a"], 100);
    assert_eq!(entries[1]["stable"], "ui-audit-a");
    gw.shutdown().await;
}
