//! Requests the gateway answers itself or completes before they go up, on
//! both servers (the own HTTP/1.1 server and hyper's, HTTP/1 and HTTP/2)
//! and both clients: CONNECT gets a 501 (the gateway tunnels nothing), a
//! Host value that is no `uri-host [ ":" port ]` a 400 (RFC 9112, 3.2),
//! both counted as the client's `bad_head`; an HTTP/1.0 request without
//! Host goes up with its endpoint's address as one; an upstream's 204
//! reaches the client without Content-Length (RFC 9110, 8.6).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Empty;
use tokio::io::AsyncWriteExt;

use crate::recorder::*;
use crate::support::{Gateway, admin, config, eventually, h2c_client, metric_value, read_to_close};

async fn bad_heads(gw: &Gateway) -> f64 {
    let text = admin(gw.admin, "GET", "/metrics", None, "").await.text();
    metric_value(&text, "canary_client_errors_total", &[("kind", "bad_head")])
}

/// Waits until the `bad_head` client errors reach `at_least`.
async fn bad_heads_reach(gw: &Gateway, at_least: f64) -> bool {
    eventually(Duration::from_secs(10), async || {
        bad_heads(gw).await >= at_least
    })
    .await
}

/// The version's requests in any status class.
async fn version_requests(gw: &Gateway, version: &str) -> f64 {
    let text = admin(gw.admin, "GET", "/metrics", None, "").await.text();
    metric_value(&text, "canary_requests_total", &[("version", version)])
}

/// Sends each request on a fresh connection on each path: the gateway
/// answers `status` itself and closes the connection, nothing reaches the
/// upstream, each is counted as a `bad_head` and none as `version`'s (a
/// name of the test's own: the metrics are the process's).
async fn refused_on_every_path(version: &str, requests: &[&[u8]], status: u16) {
    let recorder = Recorder::start().await;
    let gw = Gateway::start(&config("", &[(version, 1, recorder.addr)])).await;
    let before = bad_heads(&gw).await;
    let mut refused = 0.0;
    for path in PATHS {
        for raw in requests {
            let what = format!("{} via {path:?}", String::from_utf8_lossy(raw));
            let (mut stream, mut buf) = connect(gw.addr, path).await;
            stream.write_all(raw).await.unwrap();
            let response = read_response(&mut stream, &mut buf, false).await;
            assert_eq!(response.map(|r| r.status), Some(status), "{what}");
            let rest = read_to_close(&mut stream, Duration::from_secs(5)).await;
            assert!(rest.is_some(), "{what}: the connection stays open");
            refused += 1.0;
            assert!(
                bad_heads_reach(&gw, before + refused).await,
                "{what}: not counted as a bad_head"
            );
        }
    }
    assert_eq!(forwarded(&recorder), [], "a refused request went upstream");
    // Only the hand-off requests were a version's.
    let handed_off = requests.len() as f64;
    let counted = async || version_requests(&gw, version).await >= handed_off;
    assert!(eventually(Duration::from_secs(5), counted).await);
    assert_eq!(version_requests(&gw, version).await, handed_off);
    gw.shutdown().await;
}

/// RFC 9110, 9.3.6 and 15.6.2: a proxy that tunnels nothing answers
/// CONNECT 501 itself; it never goes upstream as `CONNECT /`.
#[tokio::test]
async fn connect_is_answered_501() {
    let requests = [
        &b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"[..],
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nContent-Length: 2\r\n\r\nhi",
    ];
    refused_on_every_path("connect", &requests, 501).await;
}

/// The same over HTTP/2: the stream gets the 501, the connection serves on.
#[tokio::test]
async fn connect_is_answered_501_over_http2() {
    let recorder = Recorder::start().await;
    let gw = Gateway::start(&config("", &[("v1", 1, recorder.addr)])).await;
    let before = bad_heads(&gw).await;
    let mut sender = h2c_client(gw.addr).await;
    let connect = http::Request::connect("example.com:443")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(connect).await.unwrap();
    assert_eq!(response.status(), 501);
    assert!(bad_heads_reach(&gw, before + 1.0).await);
    let get = http::Request::get("http://h/after")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(get).await.unwrap();
    assert_eq!(response.status(), 200);
    let got = forwarded(&recorder);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].target, "/after");
    gw.shutdown().await;
}

/// RFC 9112, 3.2: a Host value that is not `uri-host [ ":" port ]` gets a
/// 400, with or without a body (the own client and hyper's).
#[tokio::test]
async fn an_invalid_host_value_is_refused() {
    let requests = [
        &b"GET /space HTTP/1.1\r\nHost: a b\r\n\r\n"[..],
        b"GET /at HTTP/1.1\r\nHost: a/b@c\r\n\r\n",
        b"GET /port HTTP/1.1\r\nHost: a:80x\r\n\r\n",
        b"GET /bracket HTTP/1.1\r\nHost: [::1\r\n\r\n",
        b"POST /space HTTP/1.1\r\nHost: a b\r\nContent-Length: 2\r\n\r\nhi",
        b"POST /chunked HTTP/1.1\r\nHost: a/b@c\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    ];
    refused_on_every_path("badhost", &requests, 400).await;
}

/// Valid Host values pass as they came (reg-names, IPv4, IP-literals,
/// ports, escapes), and over HTTP/2 an invalid `host` field (no
/// `:authority`) gets a 400 on its stream.
#[tokio::test]
async fn valid_host_values_pass_and_http2_hosts_are_checked() {
    let recorder = Recorder::start().await;
    let gw = Gateway::start(&config("", &[("v1", 1, recorder.addr)])).await;
    for host in [
        "a.test",
        "a.test:8080",
        "10.0.0.1:80",
        "[::1]:8443",
        "my_svc%2Dx",
        "",
    ] {
        for path in PATHS {
            recorder.clear();
            let raw = format!("GET /h HTTP/1.1\r\nHost: {host}\r\n\r\n");
            let response = exchange(gw.addr, path, raw.as_bytes()).await;
            assert_eq!(
                response.map(|r| r.status),
                Some(200),
                "{host:?} via {path:?}"
            );
            assert_eq!(forwarded(&recorder)[0].values("host"), [host]);
        }
    }
    let before = bad_heads(&gw).await;
    let mut sender = h2c_client(gw.addr).await;
    let get = http::Request::get("/h2")
        .header("host", "a/b@c")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(get).await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(bad_heads_reach(&gw, before + 1.0).await);
    recorder.clear();
    let get = http::Request::get("/h2")
        .header("host", "b.test")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(get).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(forwarded(&recorder)[0].values("host"), ["b.test"]);
    // Without an authority, two Host fields are refused as on HTTP/1.1:
    // never forwarded for the upstream to pick one.
    recorder.clear();
    let before = bad_heads(&gw).await;
    let get = http::Request::get("/h2")
        .header("host", "b.test")
        .header("host", "evil.test")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(get).await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(bad_heads_reach(&gw, before + 1.0).await);
    assert!(forwarded(&recorder).is_empty());
    gw.shutdown().await;
}

/// RFC 9112, 3.2: the upstream gets HTTP/1.1, which must carry Host; an
/// HTTP/1.0 request without one goes up with the upstream endpoint's
/// address as its Host, through either client.
#[tokio::test]
async fn an_http10_request_without_host_goes_up_with_one() {
    let recorder = Recorder::start().await;
    let gw = Gateway::start(&config("", &[("v1", 1, recorder.addr)])).await;
    let endpoint = recorder.addr.to_string();
    let requests = [
        &b"GET /old HTTP/1.0\r\n\r\n"[..],
        b"POST /old HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi",
        b"GET /old-with-host HTTP/1.0\r\nHost: kept.test\r\n\r\n",
    ];
    for path in PATHS {
        for raw in requests {
            recorder.clear();
            let what = format!("{} via {path:?}", String::from_utf8_lossy(raw));
            let response = exchange(gw.addr, path, raw).await;
            assert_eq!(response.map(|r| r.status), Some(200), "{what}");
            let got = forwarded(&recorder);
            assert_eq!(got.len(), 1, "{what}");
            let expected = match got[0].target.as_str() {
                "/old-with-host" => "kept.test",
                _ => endpoint.as_str(),
            };
            assert_eq!(got[0].values("host"), [expected], "{what}");
        }
    }
    gw.shutdown().await;
}

/// RFC 9110, 8.6: a 204 carries no Content-Length; an upstream's that does
/// reaches the client without it, on both servers and both clients, and
/// the connection serves on.
#[tokio::test]
async fn a_204_goes_out_without_content_length() {
    let answer = b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-Kept: 1\r\n\r\n";
    let recorder =
        Recorder::responding(Arc::new(move |_: &Recorded| (answer.to_vec(), false))).await;
    let gw = Gateway::start(&config("", &[("v1", 1, recorder.addr)])).await;
    let requests = [
        &b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi",
        b"DELETE / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    ];
    for path in PATHS {
        let (mut stream, mut buf) = connect(gw.addr, path).await;
        for raw in requests {
            let what = format!("{} via {path:?}", String::from_utf8_lossy(raw));
            stream.write_all(raw).await.unwrap();
            let response = read_response(&mut stream, &mut buf, false).await;
            let response = response.expect(&what);
            assert_eq!(response.status, 204, "{what}");
            assert_eq!(response.values("x-kept"), ["1"], "{what}");
            assert_eq!(
                response.values("content-length"),
                Vec::<&str>::new(),
                "{what}"
            );
            assert_eq!(
                response.values("transfer-encoding"),
                Vec::<&str>::new(),
                "{what}"
            );
        }
    }
    // Over HTTP/2 too.
    let mut sender = h2c_client(gw.addr).await;
    let get = http::Request::get("http://h/").body(Empty::new()).unwrap();
    let response = sender.send_request(get).await.unwrap();
    assert_eq!(response.status(), 204);
    assert!(!response.headers().contains_key("content-length"));
    gw.shutdown().await;
}

/// A head whose method cannot be one (a TLS ClientHello on the plain port,
/// a typo'd method, noise) is answered 400 and closed at once, not after
/// `request_header` (60 s here) while the gateway waits for a blank line.
#[tokio::test]
async fn a_head_that_cannot_be_a_request_is_refused_before_it_ends() {
    let recorder = Recorder::start().await;
    let text = config("", &[("v1", 1, recorder.addr)]) + "\n[timeouts]\nrequest_header = \"60s\"\n";
    let gw = Gateway::start(&text).await;
    for raw in [
        &b"G@T / HTTP/1.1\r\nHost: a\r\n"[..],
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(raw).await.unwrap();
        let answer = read_to_close(&mut stream, Duration::from_secs(5)).await;
        let answer = answer.expect("still waiting for the head's end");
        assert!(
            answer.starts_with(b"HTTP/1.1 400"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert_eq!(forwarded(&recorder), []);
    gw.shutdown().await;
}
