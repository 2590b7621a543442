//! Header rewriting: hop-by-hop fields removed, forwarding fields set, method, path and query kept.

use bytes::Bytes;
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{header_lines, header_of};
use crate::support::*;

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_set() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let request = "GET /headers?a=1&b=two HTTP/1.1\r\n\
        Host: example.test\r\n\
        Connection: keep-alive, X-Secret\r\n\
        X-Secret: hidden\r\n\
        Keep-Alive: timeout=5\r\n\
        TE: gzip\r\n\
        Trailer: x-foo\r\n\
        Upgrade: h2c\r\n\
        Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
        Proxy-Connection: keep-alive\r\n\
        X-Kept: yes\r\n\
        Accept: text/plain\r\n\
        X-Forwarded-For: 1.2.3.4\r\n\
        \r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut stream, &mut buf).await.unwrap();
    assert_eq!(raw_status(head.as_bytes()), Some(200), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.parse().unwrap())
        })
        .expect("a content-length");
    while buf.len() < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8(buf).unwrap();
    let lines = header_lines(&text);
    assert_eq!(header_of(&lines, "uri"), ["/headers?a=1&b=two"], "{text}");
    for gone in [
        "connection",
        "x-secret",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "transfer-encoding",
    ] {
        assert!(
            header_of(&lines, gone).is_empty(),
            "{gone} reached the upstream:\n{text}"
        );
    }
    assert_eq!(header_of(&lines, "host"), ["example.test"]);
    assert_eq!(header_of(&lines, "x-kept"), ["yes"]);
    assert_eq!(header_of(&lines, "accept"), ["text/plain"]);
    assert_eq!(header_of(&lines, "x-forwarded-for"), ["1.2.3.4, 127.0.0.1"]);
    assert_eq!(header_of(&lines, "x-forwarded-proto"), ["http"]);
    let port = gw.addr.port().to_string();
    assert_eq!(header_of(&lines, "x-forwarded-port"), [port.as_str()]);
    let id = header_of(&lines, "x-request-id");
    assert_eq!(id.len(), 1, "{text}");
    assert_eq!(id[0].len(), 36, "not a UUID: {}", id[0]);

    // A client id passes through unchanged; no X-Forwarded-For: just the peer.
    let reply = get(gw.addr, "/headers", &[("x-request-id", "abc-123")]).await;
    let lines = header_lines(&reply.text());
    assert_eq!(header_of(&lines, "x-request-id"), ["abc-123"]);
    assert_eq!(header_of(&lines, "x-forwarded-for"), ["127.0.0.1"]);

    // `TE: trailers` is hop-by-hop but re-sent: the client can take trailers.
    let reply = get(gw.addr, "/headers", &[("te", "trailers")]).await;
    let lines = header_lines(&reply.text());
    assert_eq!(header_of(&lines, "te"), ["trailers"], "{}", reply.text());
    gw.shutdown().await;
}

#[tokio::test]
async fn method_path_and_query_are_kept_and_response_hop_by_hop_headers_removed() {
    let echo = EchoHeadUpstream::start(
        "Connection: X-Upstream-Secret\r\n\
         X-Upstream-Secret: 1\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Authenticate: Basic\r\n\
         Trailer: x-foo\r\n\
         Upgrade: h2c\r\n\
         X-Kept: yes\r\n",
    )
    .await;
    let gw = Gateway::start(&config(
        "response_header = \"x-canary-version\"",
        &[("v1", 1, echo.addr)],
    ))
    .await;
    let mut client = Client::connect(gw.addr).await;
    for method in ["GET", "DELETE", "OPTIONS", "PATCH", "PURGE"] {
        let req = Request::builder()
            .method(method)
            .uri("/a/b%20c/?x=1&y=%2F&x=2")
            .header("host", "h.test")
            .body(body(Bytes::new()))
            .unwrap();
        let reply = client.send(req).await.unwrap();
        assert_eq!(reply.status, 200);
        let text = reply.text();
        assert!(
            text.starts_with(&format!("{method} /a/b%20c/?x=1&y=%2F&x=2 HTTP/1.1\r\n")),
            "{text}"
        );
        for gone in [
            "connection",
            "x-upstream-secret",
            "keep-alive",
            "proxy-authenticate",
            "trailer",
            "upgrade",
        ] {
            assert!(
                !reply.headers.contains_key(gone),
                "{gone} reached the client: {:?}",
                reply.headers
            );
        }
        assert_eq!(reply.header("x-kept"), Some("yes"));
        assert_eq!(reply.header("x-canary-version"), Some("v1"));
    }
    gw.shutdown().await;
}

/// Sends `request` as is on a new connection and returns the response's
/// head and body (the answer has a Content-Length).
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut stream, &mut buf).await.unwrap_or_default();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    while buf.len() < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the body's end: {head}");
        buf.extend_from_slice(&chunk[..n]);
    }
    (head, String::from_utf8(buf).unwrap())
}

/// A client's Connection header cannot take the Host away (nor the body's
/// framing): such a request goes through hyper's server (the own server
/// leaves every request whose Connection names fields to it), and the
/// upstream still gets the Host. The other named fields go.
#[tokio::test]
async fn connection_naming_the_host_keeps_it() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "plain GET",
            b"GET /headers HTTP/1.1\r\nHost: example.test\r\nConnection: host\r\n\r\n",
            "example.test",
        ),
        (
            "among others",
            b"GET /headers HTTP/1.1\r\nHost: example.test\r\n\
              Connection: keep-alive, Host, X-Secret\r\nX-Secret: 1\r\n\r\n",
            "example.test",
        ),
        (
            "chunked with trailers",
            b"POST /headers HTTP/1.1\r\nHost: example.test\r\n\
              Connection: host, transfer-encoding, x-secret\r\nX-Secret: 1\r\n\
              Transfer-Encoding: chunked\r\nTrailer: x-sig\r\n\r\n\
              5\r\nhello\r\n0\r\nx-sig: 1\r\n\r\n",
            "example.test",
        ),
        (
            "absolute form: the target's authority",
            b"GET http://target.test/headers HTTP/1.1\r\nHost: example.test\r\n\
              Connection: host\r\n\r\n",
            "target.test",
        ),
    ];
    for (case, request, host) in cases {
        let (head, text) = exchange(gw.addr, request).await;
        assert_eq!(raw_status(head.as_bytes()), Some(200), "{case}: {head}");
        let lines = header_lines(&text);
        assert_eq!(header_of(&lines, "host"), [host], "{case}:\n{text}");
        for gone in ["connection", "x-secret"] {
            assert!(
                header_of(&lines, gone).is_empty(),
                "{case}: {gone} reached the upstream:\n{text}"
            );
        }
    }

    // Naming the framing fields loses no body either.
    let (head, text) = exchange(
        gw.addr,
        b"POST /count HTTP/1.1\r\nHost: example.test\r\n\
          Connection: host, transfer-encoding, content-length\r\n\
          Transfer-Encoding: chunked\r\nTrailer: x-sig\r\n\r\n\
          5\r\nhello\r\n0\r\nx-sig: 1\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(head.as_bytes()), Some(200), "{head}");
    assert_eq!(text, "5");
    let (head, text) = exchange(
        gw.addr,
        b"POST /count HTTP/1.1\r\nHost: example.test\r\n\
          Connection: host, content-length\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(raw_status(head.as_bytes()), Some(200), "{head}");
    assert_eq!(text, "5");
    gw.shutdown().await;
}

/// A blank `x-request-id` (empty, or spaces) is no id: the upstream gets a
/// generated one in its place, on every path (the access log off: the id
/// is made as the upstream's head is written): the own server, hyper's
/// HTTP/1.1 server (HTTP/1.0), h2c with the own client (no body) and with
/// hyper's (a body).
#[tokio::test]
async fn a_blank_request_id_goes_up_as_a_generated_one() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;
    let generated = |what: &str, text: &str| {
        let lines = header_lines(text);
        let ids = header_of(&lines, "x-request-id");
        assert_eq!(ids.len(), 1, "{what}: {text}");
        assert_eq!(ids[0].len(), 36, "{what}: not generated: {text}");
    };
    for (what, raw) in [
        (
            "own server",
            "GET /headers HTTP/1.1\r\nHost: a\r\nX-Request-Id:\r\nConnection: close\r\n\r\n",
        ),
        (
            "own server, spaces",
            "GET /headers HTTP/1.1\r\nHost: a\r\nx-request-id:  \t \r\nConnection: close\r\n\r\n",
        ),
        (
            "hyper's server",
            "GET /headers HTTP/1.0\r\nHost: a\r\nx-request-id: \r\n\r\n",
        ),
    ] {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(raw.as_bytes()).await.unwrap();
        let reply = read_to_close(&mut stream, std::time::Duration::from_secs(10))
            .await
            .expect("the gateway closes after the response");
        let text = String::from_utf8_lossy(&reply).into_owned();
        assert_eq!(raw_status(&reply), Some(200), "{what}: {text}");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        generated(what, body);
    }
    let mut h2 = h2c_client_for::<TestBody>(gw.addr).await;
    for (what, method, value, upload) in [
        ("h2c", "GET", "", ""),
        ("h2c, spaces", "GET", "  ", ""),
        ("h2c with a body", "POST", "", "hello"),
        ("h2c with a body, spaces", "POST", " \t", "hello"),
    ] {
        let req = Request::builder()
            .method(method)
            .uri("http://a/headers")
            .header("x-request-id", value)
            .body(body(Bytes::from_static(upload.as_bytes())))
            .unwrap();
        let reply = read_reply(h2.send_request(req).await.unwrap())
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{what}");
        generated(what, &reply.text());
    }
    gw.shutdown().await;
}
