//! Sticky users: a user stays on one version across requests, replicas and weight raises.

use std::collections::BTreeMap;

use crate::support::*;

async fn version_of(client: &mut Client, user: &str) -> String {
    let reply = client.get("/", &[("x-user-id", user)]).await.unwrap();
    assert_eq!(
        reply.header("x-canary-version"),
        Some(reply.text().as_str())
    );
    reply.text()
}

#[tokio::test]
async fn sticky_users_stay_put_across_requests_replicas_and_weight_raises() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let split = "sticky_header = \"x-user-id\"\nresponse_header = \"x-canary-version\"";
    let text = config(split, &[("v1", 90, v1.addr), ("v2", 10, v2.addr)]);
    let (a, b) = (Gateway::start(&text).await, Gateway::start(&text).await);
    let (mut ca, mut cb) = (Client::connect(a.addr).await, Client::connect(b.addr).await);

    let users: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let mut before = BTreeMap::new();
    for user in &users {
        let first = version_of(&mut ca, user).await;
        for _ in 0..2 {
            assert_eq!(version_of(&mut ca, user).await, first, "{user} moved");
        }
        assert_eq!(
            version_of(&mut cb, user).await,
            first,
            "replicas disagree on {user}"
        );
        before.insert(user.clone(), first);
    }
    let on_canary = before.values().filter(|v| *v == "v2").count();
    assert!(
        (5..=40).contains(&on_canary),
        "10% of 200 users: {on_canary}"
    );

    // Raise the canary to 50%: canary users stay, some stable users join.
    a.running
        .as_ref()
        .unwrap()
        .control
        .set_weights(
            BTreeMap::from([("v1".into(), 50), ("v2".into(), 50)]),
            "test",
        )
        .await
        .unwrap();
    let mut moved = 0;
    for user in &users {
        let now = version_of(&mut ca, user).await;
        if before[user] == "v2" {
            assert_eq!(now, "v2", "{user} left the canary when it grew");
        } else if now == "v2" {
            moved += 1;
        }
    }
    assert!(
        moved > 20,
        "raising the canary to 50% moved only {moved} users"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// A sticky header that is present but empty (or blank) is no key: such
/// requests are split by weight like keyless ones, over HTTP/1.1 (the own
/// server) and h2c (hyper's), instead of all hashing to one position and
/// one version.
#[tokio::test]
async fn an_empty_sticky_key_is_split_by_weight() {
    use http_body_util::{BodyExt, Empty};
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let split = "sticky_header = \"x-user-id\"\nresponse_header = \"x-canary-version\"";
    let text = config(split, &[("v1", 90, v1.addr), ("v2", 10, v2.addr)]);
    let gw = Gateway::start(&text).await;

    let mut client = Client::connect(gw.addr).await;
    let mut counts = BTreeMap::<String, usize>::new();
    for _ in 0..200 {
        *counts.entry(version_of(&mut client, "").await).or_default() += 1;
    }
    assert!(
        counts.get("v2").is_some_and(|&n| n >= 5),
        "HTTP/1.1: {counts:?}"
    );
    assert!(
        counts.get("v1").is_some_and(|&n| n >= 100),
        "HTTP/1.1: {counts:?}"
    );

    let mut h2 = h2c_client(gw.addr).await;
    for key in ["", " "] {
        let mut counts = BTreeMap::<String, usize>::new();
        for _ in 0..200 {
            let req = http::Request::get(format!("http://{}/", gw.addr))
                .header("x-user-id", key)
                .body(Empty::new())
                .unwrap();
            let resp = h2.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            *counts
                .entry(String::from_utf8_lossy(&body).into_owned())
                .or_default() += 1;
        }
        assert!(
            counts.get("v2").is_some_and(|&n| n >= 5),
            "h2c {key:?}: {counts:?}"
        );
        assert!(
            counts.get("v1").is_some_and(|&n| n >= 100),
            "h2c {key:?}: {counts:?}"
        );
    }
    gw.shutdown().await;
}

/// With `sticky_header = "cookie"`, a user's cookies decide one version
/// whichever way they come: one Cookie line over HTTP/1.1 (the own server),
/// several lines over HTTP/1.1 (the own server and hyper's), or several
/// `cookie` fields over HTTP/2, as browsers split them (RFC 9113, 8.2.3).
/// The key is the whole Cookie value, the fields joined with "; ".
#[tokio::test]
async fn a_cookie_sticky_key_is_the_same_over_http1_and_http2() {
    use crate::recorder::read_response;
    use http_body_util::{BodyExt, Empty};
    use tokio::io::AsyncWriteExt;

    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let split = "sticky_header = \"cookie\"\nresponse_header = \"x-canary-version\"";
    let text = config(split, &[("v1", 50, v1.addr), ("v2", 50, v2.addr)]);
    let gw = Gateway::start(&text).await;
    let mut client = Client::connect(gw.addr).await;
    let mut h2 = h2c_client(gw.addr).await;

    let mut on = BTreeMap::<String, usize>::new();
    for i in 0..50 {
        let (session, theme) = (format!("session=s-{i}"), "theme=dark");
        let line = format!("{session}; {theme}");
        let one_line = version_of_cookies(&mut client, &[&line]).await;
        let two_lines = version_of_cookies(&mut client, &[&session, theme]).await;
        // hyper's HTTP/1 server (the own server leaves a request asking
        // for trailers to it).
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let head = format!(
            "GET / HTTP/1.1\r\nhost: x\r\nte: trailers\r\ncookie: {session}\r\ncookie: {theme}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let answer = read_response(&mut stream, &mut buf, false).await.unwrap();
        let hyper_h1 = String::from_utf8_lossy(&answer.body).into_owned();
        // HTTP/2: one `cookie` field per cookie.
        let req = http::Request::get(format!("http://{}/", gw.addr))
            .header("cookie", &session)
            .header("cookie", theme)
            .body(Empty::new())
            .unwrap();
        let resp = h2.send_request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let over_h2 = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(
            (&two_lines, &hyper_h1, &over_h2),
            (&one_line, &one_line, &one_line),
            "{line}: one HTTP/1.1 line, two HTTP/1.1 lines (own server, hyper's), two HTTP/2 fields"
        );
        *on.entry(one_line).or_default() += 1;
    }
    // 50/50: both versions have users (the key is hashed, not ignored).
    assert!(
        on.get("v1").is_some_and(|&n| n >= 10) && on.get("v2").is_some_and(|&n| n >= 10),
        "{on:?}"
    );
    gw.shutdown().await;
}

/// The version that serves a request with these Cookie lines.
async fn version_of_cookies(client: &mut Client, cookies: &[&str]) -> String {
    let fields: Vec<(&str, &str)> = cookies.iter().map(|c| ("cookie", *c)).collect();
    let reply = client.get("/", &fields).await.unwrap();
    assert_eq!(reply.status, 200);
    reply.text()
}
