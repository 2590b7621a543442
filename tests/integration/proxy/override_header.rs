//! The override header picks a version; unknown names fall back to the split.

use crate::support::*;

#[tokio::test]
async fn override_header_picks_a_version_and_unknown_names_fall_back() {
    let split = "override_header = \"x-canary-version\"\nresponse_header = \"x-canary-version\"";
    let (_v1, v2, gw) = two_versions(split, 100, 0).await;
    let mut client = Client::connect(gw.addr).await;
    for _ in 0..20 {
        let reply = client
            .get("/", &[("x-canary-version", "v2")])
            .await
            .unwrap();
        assert_eq!(reply.text(), "v2");
        assert_eq!(reply.header("x-canary-version"), Some("v2"));
        assert_eq!(reply.header("x-upstream"), Some("v2"));
    }
    // An unknown name is ignored: the normal split (all v1 at 100/0) applies.
    for name in ["v3", "", "V2"] {
        let reply = client
            .get("/", &[("x-canary-version", name)])
            .await
            .unwrap();
        assert_eq!(reply.text(), "v1", "override {name:?}");
        assert_eq!(reply.header("x-canary-version"), Some("v1"));
    }
    let reply = client.get("/", &[]).await.unwrap();
    assert_eq!(reply.header("x-canary-version"), Some("v1"));
    assert_eq!(v2.hits(), 20);
    gw.shutdown().await;
}

/// The gateway's own 502, 504 and 503 name the version the request was
/// sent to in `response_header`, as a response from that version does: a
/// QA user who forces a version sees that it is the one failing. Over the
/// own HTTP/1.1 server and over HTTP/2 (hyper's server). A request refused
/// before a version is chosen (no Host: 400) names none.
#[tokio::test]
async fn the_gateways_own_errors_name_the_version_the_request_went_to() {
    use canary_gateway::discovery::EndpointSink;
    use http_body_util::{BodyExt, Empty};
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let dead = dead_addr().await;
    let split = "override_header = \"x-canary-version\"\nresponse_header = \"x-served-by\"";
    let text = config(
        split,
        &[("v1", 100, v1.addr), ("v2", 0, v2.addr), ("v3", 0, dead)],
    ) + "\n[timeouts]\nupstream_response = \"300ms\"\n";
    let gw = Gateway::start(&text).await;
    let control = gw.running.as_ref().unwrap().control.clone();
    let mut h1 = Client::connect(gw.addr).await;
    let mut h2 = h2c_client(gw.addr).await;
    // The client's own error on a routed request (a chunked body broken
    // after its head went up: 400) names the version too.
    let mut raw = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = b"PUT / HTTP/1.1\r\nHost: h\r\nx-canary-version: v2\r\n\
        Transfer-Encoding: chunked\r\n\r\n5\r\nhel";
    tokio::io::AsyncWriteExt::write_all(&mut raw, head)
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, b"loX\r\n")
        .await
        .unwrap();
    let out = read_to_close(&mut raw, std::time::Duration::from_secs(10))
        .await
        .expect("the broken upload's connection stayed open");
    let out = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(out.starts_with("http/1.1 400 "), "{out}");
    assert!(out.contains("\r\nx-served-by: v2\r\n"), "{out}");
    // (forced version, path, status, x-canary-error)
    let cases = [
        ("v3", "/", 502, "upstream-unreachable"),
        ("v2", "/sleep?ms=3000", 504, "upstream-timeout"),
        ("v2", "/", 503, "no-endpoints"),
    ];
    for (version, path, status, error) in cases {
        if status == 503 {
            control.endpoints_discovered("v2", vec![]);
        }
        let forced = [("x-canary-version", version)];
        let reply = h1.get(path, &forced).await.unwrap();
        let what = format!("HTTP/1.1 {version} {path}");
        assert_eq!(reply.status, status, "{what}");
        assert_eq!(reply.header("x-canary-error"), Some(error), "{what}");
        assert!(reply.header("x-request-id").is_some(), "{what}");
        assert_eq!(reply.header("x-served-by"), Some(version), "{what}");

        let req = http::Request::get(format!("http://{}{path}", gw.addr))
            .header("x-canary-version", version)
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = h2.send_request(req).await.unwrap();
        let what = format!("HTTP/2 {version} {path}");
        assert_eq!(resp.status(), status, "{what}");
        let headers = resp.headers().clone();
        resp.into_body().collect().await.unwrap();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(header("x-canary-error"), Some(error), "{what}");
        assert_eq!(header("x-served-by"), Some(version), "{what}");
    }
    // A version's answer names it, as before.
    let reply = h1.get("/", &[]).await.unwrap();
    assert_eq!(reply.header("x-served-by"), Some("v1"));
    // Refused before any version was chosen: none named.
    let mut raw = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut raw,
        b"GET / HTTP/1.1\r\nx-canary-version: v1\r\n\r\n",
    )
    .await
    .unwrap();
    let out = read_to_close(&mut raw, std::time::Duration::from_secs(10))
        .await
        .expect("the refused connection stayed open");
    let out = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(out.starts_with("http/1.1 400 "), "{out}");
    assert!(!out.contains("x-served-by"), "{out}");
    gw.shutdown().await;
}
