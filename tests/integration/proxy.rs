//! Data-path behaviour over real sockets.

use crate::support::*;

#[tokio::test]
async fn splits_by_weight_and_names_the_version() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let gw = Gateway::start(&config(
        "response_header = \"x-canary-version\"",
        &[("v1", 99, v1.addr), ("v2", 1, v2.addr)],
    ))
    .await;
    let counts = split_counts(gw.addr, 2000, &[]).await;
    let canary = counts.get("v2").copied().unwrap_or(0);
    assert!((15..=25).contains(&canary), "{counts:?}");
    let reply = get(gw.addr, "/", &[]).await;
    assert_eq!(
        reply.header("x-canary-version"),
        Some(reply.text().as_str())
    );
    gw.shutdown().await;
}

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use canary_gateway::discovery::EndpointSink;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn count(counts: &BTreeMap<String, usize>, name: &str) -> usize {
    counts.get(name).copied().unwrap_or(0)
}

/// Header lines of an `/headers` answer, lower-cased names, in order.
fn header_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect()
}

fn header_of<'a>(lines: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

// ---- 1. split ratios ----

/// Sends `n` requests over 8 connections to a v1/v2 split of `stable:canary`
/// and checks that the canary's count is within `expected`.
async fn assert_canary_share(
    stable: u32,
    canary: u32,
    n: usize,
    expected: std::ops::RangeInclusive<usize>,
) {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let gw = Gateway::start(&config(
        "",
        &[("v1", stable, v1.addr), ("v2", canary, v2.addr)],
    ))
    .await;
    let counts = split_counts_concurrent(gw.addr, n, 8, &[]).await;
    assert_eq!(count(&counts, "v1") + count(&counts, "v2"), n, "{counts:?}");
    let got = count(&counts, "v2");
    assert!(
        expected.contains(&got),
        "{canary}/{} over {n}: {counts:?}",
        stable + canary
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_ratio_one_in_a_hundred() {
    assert_canary_share(99, 1, 10_000, 70..=130).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_ratio_one_in_a_thousand() {
    assert_canary_share(999, 1, 20_000, 5..=35).await;
}

// ---- 2. stickiness ----

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

// ---- 3. override header ----

#[tokio::test]
async fn override_header_picks_a_version_and_unknown_names_fall_back() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let split = "override_header = \"x-canary-version\"\nresponse_header = \"x-canary-version\"";
    let gw = Gateway::start(&config(split, &[("v1", 100, v1.addr), ("v2", 0, v2.addr)])).await;
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

// ---- 4. header rewriting ----

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

// ---- 5. bodies ----

const BIG: u64 = 256 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_streamed_upload_arrives_whole() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;
    // Four distinct 1 MiB blocks in a varying order, streamed through a
    // small channel: memory stays bounded, reordering would show.
    let blocks: Vec<Bytes> = (0..4u8)
        .map(|b| {
            Bytes::from(
                (0..1024 * 1024u32)
                    .map(|i| (i as u8) ^ b.wrapping_mul(97))
                    .collect::<Vec<u8>>(),
            )
        })
        .collect();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, Infallible>>(4);
    let producer = tokio::spawn(async move {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for i in 0..(BIG / (1024 * 1024)) as usize {
            let block = blocks[(i * 7 + i / 5) % 4].clone();
            hasher.update(&block);
            if tx.send(Ok(http_body::Frame::data(block))).await.is_err() {
                break;
            }
        }
        hasher.digest()
    });
    let req = Request::post("/upload")
        .header("host", "h.test")
        .body(boxed(ChannelBody(rx)))
        .unwrap();
    let reply = Client::connect(gw.addr).await.send(req).await.unwrap();
    let digest = producer.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), format!("{BIG} {digest:016x}"));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_streamed_download_arrives_whole() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("/download?bytes={BIG}"))
        .header("host", "h.test")
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let (mut total, mut wrong) = (0u64, 0u64);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            total += data.len() as u64;
            wrong += data.iter().filter(|&&b| b != b'x').count() as u64;
        }
    }
    assert_eq!(total, BIG);
    assert_eq!(wrong, 0);
    // The connection is still good for another request.
    let req = Request::get("/")
        .header("host", "h.test")
        .body(Empty::new())
        .unwrap();
    sender.ready().await.unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "v1");
    gw.shutdown().await;
}

#[tokio::test]
async fn chunked_request_bodies_and_trailers_pass_through() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;

    // A chunked upload written by hand (no content-length).
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut stream, &mut buf).await.unwrap();
    assert_eq!(raw_status(head.as_bytes()), Some(200), "{head}");
    let expected = format!("11 {:016x}", xxhash_rust::xxh3::xxh3_64(b"hello world"));
    while !String::from_utf8_lossy(&buf).contains(&expected) {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed before the body: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }

    // A streamed upload from the client (ChannelBody: chunked).
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        for part in ["abc", "def", "ghi"] {
            tx.send(Ok(http_body::Frame::data(Bytes::from(part))))
                .await
                .unwrap();
        }
    });
    let req = Request::put("/upload")
        .header("host", "h")
        .body(boxed(ChannelBody(rx)))
        .unwrap();
    let reply = Client::connect(gw.addr).await.send(req).await.unwrap();
    assert_eq!(
        reply.text(),
        format!("9 {:016x}", xxhash_rust::xxh3::xxh3_64(b"abcdefghi"))
    );

    // Trailers reach a client that asked for them, from a raw upstream that
    // writes them by hand...
    let chunked = FixedUpstream::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n\
          4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\nx-checksum: abc123\r\n\r\n",
    )
    .await;
    let gw2 = Gateway::start(&config("", &[("v1", 1, chunked.addr)])).await;
    let mut client = Client::connect(gw2.addr).await;
    for _ in 0..2 {
        let reply = client
            .get("/trailers", &[("te", "trailers")])
            .await
            .unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "one,two,three");
        let trailers = reply.trailers.expect("trailers");
        assert_eq!(trailers.get("x-checksum").unwrap(), "abc123");
    }
    // Without `TE: trailers` the body still arrives whole.
    let reply = client.get("/trailers", &[]).await.unwrap();
    assert_eq!(reply.text(), "one,two,three");
    assert!(reply.trailers.is_none());
    gw2.shutdown().await;
    gw.shutdown().await;
}

// ---- 6. status codes ----

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

// ---- 7. h2c ----

#[tokio::test]
async fn h2c_prior_knowledge_is_proxied() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let split = "override_header = \"x-canary-version\"\nresponse_header = \"x-canary-version\"";
    let gw = Gateway::start(&config(split, &[("v1", 50, v1.addr), ("v2", 50, v2.addr)])).await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);

    let send = |path: &str, over: Option<&str>| {
        let mut sender = sender.clone();
        let mut req = Request::get(format!("http://{}{path}", gw.addr));
        if let Some(v) = over {
            req = req.header("x-canary-version", v);
        }
        let req = req.body(Empty::new()).unwrap();
        async move {
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.version(), http::Version::HTTP_2);
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            (parts, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    // Many streams at once on one connection, split about 50/50.
    let replies = futures_join_all((0..200).map(|_| send("/", None))).await;
    let mut counts = BTreeMap::new();
    for (parts, text) in &replies {
        assert_eq!(parts.status, 200);
        assert_eq!(
            parts.headers.get("x-canary-version").unwrap(),
            text.as_str()
        );
        *counts.entry(text.clone()).or_insert(0usize) += 1;
    }
    assert!((80..=120).contains(&count(&counts, "v2")), "{counts:?}");
    for _ in 0..10 {
        let (_, text) = send("/", Some("v2")).await;
        assert_eq!(text, "v2");
    }
    // The upstream got an HTTP/1.1 request with a Host header.
    let (_, text) = send("/headers?q=1", None).await;
    let lines = header_lines(&text);
    assert_eq!(header_of(&lines, "uri"), ["/headers?q=1"], "{text}");
    assert_eq!(
        header_of(&lines, "host"),
        [gw.addr.to_string().as_str()],
        "{text}"
    );
    gw.shutdown().await;
}

/// Runs futures concurrently on this task and collects their outputs.
async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let set: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    let mut set: Vec<Option<_>> = set.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, out) in set.iter_mut().zip(outputs.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

// ---- 8. upgrade tunnel ----

#[tokio::test]
async fn upgrade_tunnels_bytes_both_ways() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut stream, &mut buf).await.unwrap();
    assert_eq!(raw_status(head.as_bytes()), Some(101), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(lower.contains("connection: upgrade"), "{head}");
    for message in [&b"hello"[..], b"second message", &[0u8, 255, 13, 10]] {
        stream.write_all(message).await.unwrap();
        while buf.len() < message.len() {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
                .await
                .expect("echo in time")
                .unwrap();
            assert!(n > 0, "tunnel closed");
            buf.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(buf.drain(..message.len()).as_slice(), message);
    }
    gw.shutdown().await;
}

// ---- 9. upstream errors ----

#[tokio::test]
async fn unreachable_upstream_is_502() {
    let dead = dead_addr().await;
    let gw = Gateway::start(&config("", &[("v1", 1, dead)])).await;
    let mut client = Client::connect(gw.addr).await;
    for _ in 0..5 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!(reply.status, 502);
        assert_eq!(reply.header("x-canary-error"), Some("upstream-unreachable"));
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn version_without_endpoints_is_503() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let split = "override_header = \"x-canary-version\"";
    let gw = Gateway::start(&config(split, &[("v1", 1, v1.addr), ("v2", 0, v2.addr)])).await;
    let control = gw.running.as_ref().unwrap().control.clone();
    assert_eq!(
        get(gw.addr, "/", &[("x-canary-version", "v2")])
            .await
            .text(),
        "v2"
    );
    control.endpoints_discovered("v2", vec![]);
    let reply = get(gw.addr, "/", &[("x-canary-version", "v2")]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("x-canary-error"), Some("no-endpoints"));
    // The other version is unaffected.
    assert_eq!(get(gw.addr, "/", &[]).await.text(), "v1");
    gw.shutdown().await;
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let v1 = Upstream::start("v1").await;
    let extra = "[timeouts]\nupstream_response = \"300ms\"";
    let gw = Gateway::start(&config(extra, &[("v1", 1, v1.addr)])).await;
    let mut client = Client::connect(gw.addr).await;
    let reply = client.get("/sleep?ms=3000", &[]).await.unwrap();
    assert_eq!(reply.status, 504);
    assert_eq!(reply.header("x-canary-error"), Some("upstream-timeout"));
    // A fast answer still works, on the same client connection.
    let reply = client.get("/sleep?ms=1", &[]).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "v1");
    // A pooled upstream connection keeps its timer between requests: it is
    // moved to each request's deadline, so a slow-but-in-time answer passes
    // after a quick one, and a late one still times out.
    for ms in [1, 150, 1, 150] {
        let reply = client.get(&format!("/sleep?ms={ms}"), &[]).await.unwrap();
        assert_eq!(reply.status, 200, "sleep {ms} ms");
    }
    let reply = client.get("/sleep?ms=3000", &[]).await.unwrap();
    assert_eq!(reply.status, 504);
    gw.shutdown().await;
}

#[tokio::test]
async fn failed_connects_are_retried_and_dead_endpoints_ejected() {
    let live = Upstream::start("v1").await;
    let dead = dead_addr().await;
    let gw = Gateway::start(&config_endpoints(
        // Long ejections: the check below cannot race the ejection's end.
        "[upstream]\neject_base = \"60s\"\neject_max = \"120s\"",
        &[("v1", 1, vec![dead, live.addr])],
    ))
    .await;
    let control = gw.running.as_ref().unwrap().control.clone();
    for i in 0..60 {
        // A fresh connection each time: no pooled upstream connection hides the choice.
        let reply = get(gw.addr, "/", &[]).await;
        assert_eq!(reply.status, 200, "request {i}: {:?}", reply.headers);
        assert_eq!(reply.text(), "v1");
    }
    let status = control.status();
    let endpoints = &status.versions[0].endpoints;
    let health = |addr: std::net::SocketAddr| {
        endpoints
            .iter()
            .find(|e| e.address == addr.to_string())
            .map(|e| e.health)
    };
    assert_eq!(health(dead), Some("ejected"), "{endpoints:?}");
    assert_eq!(health(live.addr), Some("healthy"), "{endpoints:?}");
    gw.shutdown().await;
}

// ---- 10. malformed requests ----

async fn raw_exchange(addr: std::net::SocketAddr, request: Vec<u8>) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.split();
    let writing = async {
        // The gateway may answer and close before reading it all.
        let _ = write.write_all(&request).await;
    };
    let reading = async {
        let mut out = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
        out
    };
    let ((), out) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(writing, reading)
    })
    .await
    .expect("the gateway answered and closed");
    out
}

#[tokio::test]
async fn malformed_requests_get_4xx_and_the_gateway_keeps_serving() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;

    let out = raw_exchange(
        gw.addr,
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
            .to_vec(),
    )
    .await;
    assert_eq!(
        raw_status(&out),
        Some(400),
        "{}",
        String::from_utf8_lossy(&out)
    );

    let out = raw_exchange(gw.addr, b"GARBAGE\r\n\r\n".to_vec()).await;
    assert_eq!(
        raw_status(&out),
        Some(400),
        "{}",
        String::from_utf8_lossy(&out)
    );

    let mut big = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 100 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let out = raw_exchange(gw.addr, big).await;
    let status = raw_status(&out);
    assert_eq!(
        status,
        Some(431),
        "oversized head: {:?}",
        String::from_utf8_lossy(&out[..out.len().min(200)])
    );

    let mut many = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
    for i in 0..500 {
        many.extend_from_slice(format!("x-h{i}: 1\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let out = raw_exchange(gw.addr, many).await;
    assert_eq!(
        raw_status(&out),
        Some(431),
        "{}",
        String::from_utf8_lossy(&out)
    );

    assert_eq!(v1.hits(), 0, "a malformed request reached the upstream");
    let reply = get(gw.addr, "/", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "v1");
    gw.shutdown().await;
}

// ---- 11. slow and idle clients ----

#[tokio::test]
async fn slowloris_connections_are_closed() {
    let v1 = Upstream::start("v1").await;
    let extra = "[timeouts]\nrequest_header = \"300ms\"";
    let gw = Gateway::start(&config(extra, &[("v1", 1, v1.addr)])).await;

    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let out = read_to_close(&mut slow, Duration::from_secs(10))
        .await
        .expect("the slow connection was not closed");
    assert!(
        raw_status(&out).is_none_or(|s| (400..500).contains(&s)),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(v1.hits(), 0);

    // A slow head on a kept-alive connection, after a first request: also closed.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut stream, &mut buf).await.unwrap();
    assert_eq!(raw_status(head.as_bytes()), Some(200));
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    read_to_close(&mut stream, Duration::from_secs(10))
        .await
        .expect("the slow second request was not closed");

    // Complete requests are answered.
    let reply = get(gw.addr, "/", &[]).await;
    assert_eq!(reply.status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_live_until_the_idle_timeout() {
    let v1 = Upstream::start("v1").await;
    // The short request_header timeout must not cut idle keep-alive connections.
    let extra = "[timeouts]\nrequest_header = \"200ms\"";
    let gw = Gateway::start(&config(extra, &[("v1", 1, v1.addr)])).await;
    let mut client = Client::connect(gw.addr).await;
    assert_eq!(client.get("/", &[]).await.unwrap().text(), "v1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(client.get("/", &[]).await.unwrap().text(), "v1");
    gw.shutdown().await;

    let extra = "[timeouts]\nidle = \"1s\"";
    let gw = Gateway::start(&config(extra, &[("v1", 1, v1.addr)])).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut stream, &mut buf).await.unwrap();
    assert_eq!(raw_status(head.as_bytes()), Some(200));
    let out = read_to_close(&mut stream, Duration::from_secs(10))
        .await
        .expect("the idle connection was not closed");
    buf.extend_from_slice(&out);
    assert_eq!(buf, b"v1", "nothing but the first body before the close");
    gw.shutdown().await;
}

// ---- 12. draining ----

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_refuses_new_connections() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;
    let addr = gw.addr;
    let in_flight = tokio::spawn(async move { get(addr, "/sleep?ms=1500", &[]).await });
    assert!(eventually(Duration::from_secs(5), async || v1.hits() == 1).await);
    gw.shutdown().await;
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "v1");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

// ---- connection handling details ----

#[tokio::test]
async fn upstream_connections_are_reused_including_after_bodiless_responses() {
    for response in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\n\r\n",
    ] {
        let upstream = FixedUpstream::start(response).await;
        let gw = Gateway::start(&config("", &[("v1", 1, upstream.addr)])).await;
        let mut client = Client::connect(gw.addr).await;
        for _ in 0..10 {
            let reply = client.get("/", &[]).await.unwrap();
            assert!(reply.status.is_success() || reply.status == 304);
        }
        let head = Request::head("/")
            .header("host", "h")
            .body(body(Bytes::new()))
            .unwrap();
        assert!(client.send(head).await.unwrap().body.is_empty());
        let connections = upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            connections,
            1,
            "{} opened {connections} upstream connections for 11 sequential requests",
            String::from_utf8_lossy(&response[..response.len().min(40)])
        );
        gw.shutdown().await;
    }
}

#[tokio::test]
async fn upstream_connection_close_is_honoured_without_errors() {
    let upstream = FixedUpstream::start(
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
    )
    .await;
    let gw = Gateway::start(&config("", &[("v1", 1, upstream.addr)])).await;
    let mut client = Client::connect(gw.addr).await;
    for i in 0..20 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!(reply.status, 200, "request {i}: {:?}", reply.headers);
        assert_eq!(reply.text(), "ok");
        assert!(reply.header("connection").is_none(), "{:?}", reply.headers);
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_drops_is_retried_only_when_safe() {
    // Answers the first request of each connection and hangs up on the next
    // one: the keep-alive race (an upstream closing an idle connection just
    // as a request goes out on it), made certain.
    let upstream = FixedUpstream::scripted(|n| {
        (n == 0).then_some((
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
            false,
        ))
    })
    .await;
    let gw = Gateway::start(&config("", &[("v1", 1, upstream.addr)])).await;
    let mut client = Client::connect(gw.addr).await;
    for i in 0..5 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!(reply.status, 200, "GET {i}: {:?}", reply.headers);
        assert_eq!(reply.text(), "ok");
    }
    assert_eq!(
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        5
    );
    // A POST may have been processed before the connection dropped: it is
    // never sent twice.
    let post = Request::post("/")
        .header("host", "h")
        .body(body(Bytes::new()))
        .unwrap();
    let reply = client.send(post).await.unwrap();
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("x-canary-error"), Some("upstream-reset"));
    assert_eq!(
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        5
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_pool_idle_timeout() {
    let upstream = FixedUpstream::start(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let extra = "[upstream]\npool_idle_timeout = \"300ms\"";
    let gw = Gateway::start(&config(extra, &[("v1", 1, upstream.addr)])).await;
    assert_eq!(get(gw.addr, "/", &[]).await.text(), "ok");
    // Nothing else goes to this upstream: the pool must still let go of the
    // connection once it has been idle for the timeout.
    let closed = eventually(Duration::from_secs(5), async || {
        upstream.closed.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    assert!(closed, "the idle upstream connection was never closed");
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
    let gw = Gateway::start(&config("", &[("v1", 1, upstream.addr)])).await;
    for _ in 0..2 {
        let mut client = Client::connect(gw.addr).await;
        assert!(client.get("/", &[]).await.is_err());
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn expect_100_continue_is_honoured() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut stream, &mut buf))
        .await
        .expect("no 100 Continue")
        .unwrap();
    assert_eq!(raw_status(head.as_bytes()), Some(100), "{head}");
    stream.write_all(b"hello").await.unwrap();
    let head = read_head(&mut stream, &mut buf).await.unwrap();
    assert_eq!(raw_status(head.as_bytes()), Some(200), "{head}");
    let expected = format!("5 {:016x}", xxhash_rust::xxh3::xxh3_64(b"hello"));
    while buf.len() < expected.len() {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&buf), expected);
    gw.shutdown().await;
}

#[tokio::test]
async fn h2c_connection_may_wait_before_its_first_request() {
    let v1 = Upstream::start("v1").await;
    let extra = "[timeouts]\nrequest_header = \"200ms\"";
    let gw = Gateway::start(&config(extra, &[("v1", 1, v1.addr)])).await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // A pre-opened connection, idle for longer than the request-head timeout
    // (but far less than the idle timeout), is still good.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let req = Request::get(format!("http://{}/", gw.addr))
        .body(Empty::new())
        .unwrap();
    let resp = sender
        .send_request(req)
        .await
        .expect("the h2c connection was closed");
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "v1");
    gw.shutdown().await;
}

#[tokio::test]
async fn an_ejected_endpoint_that_answers_again_is_healthy_at_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let gw = Gateway::start(&config_endpoints(
        "[upstream]\neject_base = \"60s\"\neject_max = \"120s\"",
        &[("v1", 1, vec![addr])],
    ))
    .await;
    let control = gw.running.as_ref().unwrap().control.clone();
    let health = || control.status().versions[0].endpoints[0].health;
    for _ in 0..3 {
        assert_eq!(get(gw.addr, "/", &[]).await.status, 502);
    }
    assert_eq!(health(), "ejected");
    // The only endpoint is still tried while ejected; once it answers, the
    // ejection ends (no waiting out its period).
    let _up = Upstream::serve("v1", tokio::net::TcpListener::bind(addr).await.unwrap());
    assert_eq!(get(gw.addr, "/", &[]).await.text(), "v1");
    assert_eq!(health(), "healthy");
    gw.shutdown().await;
}

#[tokio::test]
async fn an_upstream_that_stops_reading_an_upload_times_out() {
    use tokio::io::AsyncWriteExt;
    // Accepts connections and never reads from them.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            sockets.push(s);
        }
    });
    let text = config("", &[("v1", 1, upstream)]) + "\n[timeouts]\nupstream_response = \"300ms\"\n";
    let gw = Gateway::start(&text).await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let size: u64 = 256 * 1024 * 1024;
    stream
        .write_all(
            format!("POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let sender = tokio::spawn(async move {
        let chunk = vec![b'u'; 64 * 1024];
        for _ in 0..(size / chunk.len() as u64) {
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        use tokio::io::AsyncReadExt;
        let mut tmp = [0u8; 4096];
        loop {
            let n = reader.read(&mut tmp).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&tmp[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the stalled upload hung the request");
    let head = String::from_utf8_lossy(&buf);
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    assert!(head.contains("upstream-timeout"), "{head}");
    sender.abort();
    held.abort();
}

#[tokio::test]
async fn request_trailers_reach_the_upstream() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(
            b"POST /request-trailers HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTrailer: x-sig\r\n\r\n\
              5\r\nhello\r\n0\r\nx-sig: 42\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut stream, &mut buf).await.unwrap();
    assert_eq!(raw_status(head.as_bytes()), Some(200), "{head}");
    while !String::from_utf8_lossy(&buf).contains("x-sig: 42") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "no trailer echoed: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn trailers_from_a_hyper_upstream_reach_the_client() {
    // ...and from a hyper upstream (which declares them in a Trailer header).
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;
    let reply = get(gw.addr, "/trailers", &[("te", "trailers")]).await;
    assert_eq!(reply.text(), "one,two,three");
    let trailers = reply.trailers.expect("trailers");
    assert_eq!(trailers.get("x-checksum").unwrap(), "abc123");
    gw.shutdown().await;
}
