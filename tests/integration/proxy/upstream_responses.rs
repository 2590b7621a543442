//! Upstream responses: status codes pass through unchanged; close-delimited, informational, broken and transfer-coded responses.

use crate::support::*;
use std::time::Duration;

use http_body_util::BodyExt;

#[tokio::test]
async fn upstream_status_codes_pass_through_unchanged() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;
    let mut client = Client::connect(gw.addr).await;
    for code in [200u16, 201, 204, 301, 404, 418, 500, 502, 503, 504] {
        let reply = client.get(&format!("/status/{code}"), &[]).await.unwrap();
        assert_eq!(reply.status.as_u16(), code);
        assert!(
            reply.header("x-canary-error").is_none(),
            "{code}: {:?}",
            reply.headers
        );
        assert_eq!(reply.header("x-upstream"), Some("v1"));
        if code != 204 && code != 301 {
            assert_eq!(reply.text(), "v1", "{code}");
        }
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn close_delimited_and_informational_responses_pass_through() {
    let upstream = FixedUpstream::scripted(|_| {
        Some((
            &b"HTTP/1.0 200 OK\r\nx-old: 1\r\n\r\nread until close"[..],
            true,
        ))
    })
    .await;
    let gw = Gateway::start(&config("", &[("v1", 1, upstream.addr)])).await;
    let mut client = Client::connect(gw.addr).await;
    for _ in 0..2 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "read until close");
        assert_eq!(reply.header("x-old"), Some("1"));
    }
    assert_eq!(
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    gw.shutdown().await;

    let upstream = FixedUpstream::start(
        b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
    )
    .await;
    let gw = Gateway::start(&config("", &[("v1", 1, upstream.addr)])).await;
    let reply = get(gw.addr, "/", &[]).await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.text(), "ok");
    gw.shutdown().await;
}

#[tokio::test]
async fn broken_upstream_responses_fail_cleanly() {
    for response in [
        &b"not http at all\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
    ] {
        let upstream = FixedUpstream::start(response).await;
        let gw = Gateway::start(&config("", &[("v1", 1, upstream.addr)])).await;
        let reply = get(gw.addr, "/", &[]).await;
        assert_eq!(reply.status, 502, "{}", String::from_utf8_lossy(response));
        assert_eq!(reply.header("x-canary-error"), Some("upstream-reset"));
        gw.shutdown().await;
    }
    // A body cut short: the client must see an error, not a short body.
    let upstream = FixedUpstream::scripted(|_| {
        Some((
            &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"[..],
            true,
        ))
    })
    .await;
    // A version name of its own: the metrics are the process's, shared
    // with the other tests' gateways.
    let gw = Gateway::start(&config("", &[("cutshort", 1, upstream.addr)])).await;
    for _ in 0..2 {
        let mut client = Client::connect(gw.addr).await;
        assert!(client.get("/", &[]).await.is_err());
    }
    // The same over HTTP/2 (hyper's server, the own client's body).
    let mut h2 = h2c_client(gw.addr).await;
    let request = http::Request::get("/")
        .body(http_body_util::Empty::new())
        .unwrap();
    // The stream is reset, before or after its head went out.
    if let Ok(response) = h2.send_request(request).await {
        assert!(response.into_body().collect().await.is_err());
    }
    // Failed by the version: counted as upstream resets and 5xx, which the
    // canary analysis reads, not as the 2xx their heads said.
    let of_version =
        |labels: &[(&'static str, &'static str)]| [&[("version", "cutshort")][..], labels].concat();
    let counted = async || {
        let text = admin(gw.admin, "GET", "/metrics", None, "").await.text();
        let resets = metric_value(
            &text,
            "canary_upstream_errors_total",
            &of_version(&[("kind", "reset")]),
        );
        let fives = metric_value(
            &text,
            "canary_requests_total",
            &of_version(&[("status", "5xx")]),
        );
        let twos = metric_value(
            &text,
            "canary_requests_total",
            &of_version(&[("status", "2xx")]),
        );
        (resets, fives, twos)
    };
    assert!(
        eventually(Duration::from_secs(5), async || counted().await
            == (3.0, 3.0, 0.0))
        .await,
        "{:?}",
        counted().await
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn responses_under_other_transfer_codings_are_the_upstreams_error() {
    // `gzip, chunked`: the field is hop-by-hop and the body re-framed, so
    // the client would read gzip as the content. A 502, counted against the
    // version (its own name: the metrics are the process's).
    let upstream = FixedUpstream::start(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let gw = Gateway::start(&config("", &[("gzipped", 1, upstream.addr)])).await;
    // The own server and client (GET, POST), and hyper's client under
    // hyper's server (a request asking for trailers) and HTTP/2.
    let replies = [
        get(gw.addr, "/", &[]).await,
        send(gw.addr, "POST", "/", &[], "up").await,
        send(gw.addr, "POST", "/", &[("te", "trailers")], "up").await,
    ];
    for reply in &replies {
        assert_eq!(reply.status, 502, "{:?} {:?}", reply.headers, reply.body);
        assert_eq!(reply.header("x-canary-error"), Some("upstream-reset"));
    }
    let mut h2 = h2c_client_for(gw.addr).await;
    let post = http::Request::post("/")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"up")))
        .unwrap();
    let response = h2.send_request(post).await.unwrap();
    assert_eq!(response.status(), 502);
    // A HEAD answer has no body to lose a coding from.
    let mut client = Client::connect(gw.addr).await;
    let head = http::Request::head("/")
        .header("host", "a")
        .body(full(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(client.send(head).await.unwrap().status, 200);
    let text = admin(gw.admin, "GET", "/metrics", None, "").await.text();
    let of_version = [("version", "gzipped"), ("kind", "reset")];
    assert_eq!(
        metric_value(&text, "canary_upstream_errors_total", &of_version),
        4.0
    );
    gw.shutdown().await;
}

/// An upstream response whose Connection header names its Content-Length
/// (`Connection: content-length`) keeps its length on the way to the
/// client: without it a response on a kept-alive connection would be
/// unframed (the own server took its framing from the upstream's length),
/// and the client would read the next response as this one's body.
#[tokio::test]
async fn connection_naming_the_length_keeps_the_response_framed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = FixedUpstream::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: content-length\r\n\r\nhello",
    )
    .await;
    let gw = Gateway::start(&config("", &[("v1", 1, upstream.addr)])).await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    for i in 0..2 {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut stream, &mut buf))
            .await
            .unwrap()
            .unwrap_or_default();
        let lower = head.to_ascii_lowercase();
        assert!(lower.starts_with("http/1.1 200"), "{i}: {head}");
        assert!(lower.contains("\r\ncontent-length: 5\r\n"), "{i}: {head}");
        assert!(!lower.contains("transfer-encoding"), "{i}: {head}");
        while buf.len() < 5 {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "{i}: closed");
            buf.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(buf.drain(..5).collect::<Vec<u8>>(), b"hello", "{i}");
    }
    // Over HTTP/2 (hyper's server) as well.
    let mut h2 = h2c_client(gw.addr).await;
    let request = http::Request::get("/")
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = h2.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "hello"
    );
    gw.shutdown().await;
}

/// The upstream's reason phrase reaches the client as it sent it (as nginx
/// and HAProxy pass it on): a custom text on an unknown code (`299 Custom
/// Reason Here`, Laravel's `419 Page Expired`) or a known one; a code with
/// no text and none from the upstream gets an empty one (never `<none>`),
/// a known code without one its canonical text. On the own server (its
/// direct head and its general rewrite, for a head whose Connection names
/// a field) and on hyper's HTTP/1.1 server (HTTP/1.0, `TE: trailers`), with
/// the own client and with hyper's (a body).
#[tokio::test]
async fn the_upstreams_reason_phrase_reaches_the_client() {
    // Upstream status line, then what the client gets; a head whose
    // Connection names a field takes the own server's general rewrite.
    const NAMING: &str = "connection: x-gone\r\nx-gone: 1\r\n";
    let cases: [(&str, &str, &str); 9] = [
        (
            "HTTP/1.1 299 Custom Reason Here",
            "",
            "HTTP/1.1 299 Custom Reason Here",
        ),
        ("HTTP/1.1 419 Page Expired", "", "HTTP/1.1 419 Page Expired"),
        ("HTTP/1.1 200 Fine", "", "HTTP/1.1 200 Fine"),
        (
            "HTTP/1.1 404 Nicht gefunden",
            "",
            "HTTP/1.1 404 Nicht gefunden",
        ),
        ("HTTP/1.1 599", "", "HTTP/1.1 599 "),
        ("HTTP/1.1 200 ", "", "HTTP/1.1 200 OK"),
        (
            "HTTP/1.1 299 Custom Reason Here",
            NAMING,
            "HTTP/1.1 299 Custom Reason Here",
        ),
        ("HTTP/1.1 599", NAMING, "HTTP/1.1 599 "),
        ("HTTP/1.1 200 ", NAMING, "HTTP/1.1 200 OK"),
    ];
    let mut upstreams = Vec::new();
    for (line, rest, _) in cases {
        let response = format!("{line}\r\n{rest}content-length: 2\r\n\r\nhi");
        let response: &'static [u8] = Box::leak(response.into_bytes().into_boxed_slice());
        upstreams.push(FixedUpstream::start(response).await);
    }
    let names: Vec<String> = (0..upstreams.len()).map(|i| format!("u{i}")).collect();
    let versions: Vec<(&str, u32, std::net::SocketAddr)> = names
        .iter()
        .zip(&upstreams)
        .enumerate()
        .map(|(i, (name, up))| (name.as_str(), u32::from(i == 0), up.addr))
        .collect();
    let gw = Gateway::start(&config("override_header = \"x-force\"\n", &versions)).await;
    let requests = [
        (
            "own server",
            "GET / HTTP/1.1\r\nHost: a\r\nX-Force: {v}\r\nConnection: close\r\n\r\n",
        ),
        (
            "HTTP/1.0",
            "GET / HTTP/1.0\r\nHost: a\r\nX-Force: {v}\r\n\r\n",
        ),
        (
            "TE: trailers",
            "GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nX-Force: {v}\r\nConnection: close\r\n\r\n",
        ),
        (
            "hyper's client",
            "POST / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nX-Force: {v}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        ),
    ];
    for (i, name) in names.iter().enumerate() {
        let (line, rest, want) = cases[i];
        for (what, request) in requests {
            let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
            let request = request.replace("{v}", name);
            tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
                .await
                .unwrap();
            let reply = read_to_close(&mut stream, Duration::from_secs(10))
                .await
                .expect("the gateway closes after the response");
            let text = String::from_utf8_lossy(&reply).into_owned();
            // Code and reason (hyper answers an HTTP/1.0 client in HTTP/1.0).
            let status = |line: &str| line.split_once(' ').map(|(_, s)| s.to_string());
            let got = text.split("\r\n").next().unwrap_or_default();
            assert_eq!(
                status(got),
                status(want),
                "{what}, upstream {line:?} {rest:?}: {text}"
            );
            assert!(text.ends_with("\r\n\r\nhi"), "{what} ({name}): {text}");
        }
    }
    gw.shutdown().await;
}
