//! Request and response framing through both servers (the own HTTP/1.1
//! server and hyper's) and both clients (the own client for bodiless
//! requests, hyper's for bodies), against a strict recording upstream:
//! every body arrives whole, Host is checked, absolute-form targets keep
//! their authority, h2c upgrades and underscored names are refused,
//! repeated or conflicting response lengths are cleaned up.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use crate::recorder::*;
use crate::support::{Gateway, config, read_to_close};

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"];

/// A body framing of a test request.
#[derive(Debug, Clone, Copy)]
enum Framing {
    None,
    Length,
    Chunked,
}

const FRAMINGS: [Framing; 3] = [Framing::None, Framing::Length, Framing::Chunked];

fn request(method: &str, target: &str, framing: Framing, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: probe.test\r\nX-Probe: 1\r\n");
    match framing {
        Framing::None => out.push_str("\r\n"),
        Framing::Length => out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len())),
        Framing::Chunked => out.push_str("Transfer-Encoding: chunked\r\n\r\n"),
    }
    let mut out = out.into_bytes();
    match framing {
        Framing::None => {}
        Framing::Length => out.extend_from_slice(body),
        Framing::Chunked => {
            // Two chunks, then the last chunk.
            let (a, b) = body.split_at(body.len() / 2);
            for part in [a, b] {
                if !part.is_empty() {
                    out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                    out.extend_from_slice(part);
                    out.extend_from_slice(b"\r\n");
                }
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    out
}

/// Each method with each framing, on each server: the upstream gets the
/// method, the target, the client's fields in order and every body byte
/// (a GET or HEAD with a chunked body lost it through hyper's client).
#[tokio::test]
async fn every_method_and_framing_reaches_the_upstream_whole() {
    let recorder = Recorder::start().await;
    let gw = Gateway::start(&config("", &[("v1", 1, recorder.addr)])).await;
    let body = b"hello, framing";
    for path in PATHS {
        for method in METHODS {
            for framing in FRAMINGS {
                recorder.clear();
                let target = format!("/m/{method}?framing={framing:?}");
                let raw = request(method, &target, framing, body);
                let what = format!("{method} {framing:?} via {path:?}");
                let response = exchange(gw.addr, path, &raw).await;
                let response = response.unwrap_or_else(|| panic!("no response: {what}"));
                assert_eq!(response.status, 200, "{what}: {response:?}");
                let got = forwarded(&recorder);
                assert_eq!(got.len(), 1, "{what}: {got:?}");
                let got = &got[0];
                assert_eq!(
                    (got.method.as_str(), got.target.as_str()),
                    (method, target.as_str())
                );
                let sent: &[u8] = match framing {
                    Framing::None => b"",
                    _ => body,
                };
                assert_eq!(got.body, sent, "{what}: body");
                assert_eq!(
                    got.end_to_end_fields(),
                    [
                        ("host".into(), "probe.test".into()),
                        ("x-probe".into(), "1".into())
                    ],
                    "{what}: fields"
                );
                if method != "HEAD" {
                    assert_eq!(
                        response.text(),
                        format!("{method} {}", sent.len()),
                        "{what}"
                    );
                }
            }
        }
    }
    gw.shutdown().await;
}

/// RFC 9112, 3.2: an HTTP/1.1 request without Host, or any request with two,
/// gets a 400 and reaches no upstream.
#[tokio::test]
async fn host_must_be_present_once() {
    let recorder = Recorder::start().await;
    let gw = Gateway::start(&config("", &[("v1", 1, recorder.addr)])).await;
    let bad = [
        &b"GET /two HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n"[..],
        b"GET /same-twice HTTP/1.1\r\nHost: a.test\r\nhost: a.test\r\n\r\n",
        b"GET /none HTTP/1.1\r\nX-Host: a.test\r\n\r\n",
        b"POST /two-with-body HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 2\r\n\r\nhi",
        b"GET /none-absolute HTTP/1.1\r\n\r\n",
        // Not Host, but refused alike: a coding the gateway would lose.
        b"POST /gzip HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ];
    for path in PATHS {
        for raw in bad {
            let what = format!("{} via {path:?}", String::from_utf8_lossy(raw));
            let (mut stream, mut buf) = connect(gw.addr, path).await;
            stream.write_all(raw).await.unwrap();
            let response = read_response(&mut stream, &mut buf, false).await;
            assert_eq!(response.map(|r| r.status), Some(400), "{what}");
            let rest = read_to_close(&mut stream, std::time::Duration::from_secs(5)).await;
            assert!(rest.is_some(), "{what}: the connection stays open");
        }
    }
    assert_eq!(
        forwarded(&recorder),
        [],
        "a request with a bad Host was forwarded"
    );
    // HTTP/1.0 needs no Host.
    let response = exchange(gw.addr, Path::Own, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(response.map(|r| r.status), Some(200));
    gw.shutdown().await;
}

/// RFC 9112, 3.2.2: the authority of an absolute-form target replaces Host
/// (the gateway's documented choice), on both clients.
#[tokio::test]
async fn an_absolute_form_authority_replaces_host() {
    let recorder = Recorder::start().await;
    let gw = Gateway::start(&config("", &[("v1", 1, recorder.addr)])).await;
    let cases = [
        (
            &b"GET http://other.test/t?q=1 HTTP/1.1\r\nHost: probe.test\r\n\r\n"[..],
            "other.test",
        ),
        (
            b"POST http://user@other.test:8080/t?q=1 HTTP/1.1\r\nHost: probe.test\r\nContent-Length: 2\r\n\r\nhi",
            "other.test:8080",
        ),
        (
            b"DELETE http://other.test/t?q=1 HTTP/1.1\r\nHost: probe.test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            "other.test",
        ),
    ];
    for path in PATHS {
        for (raw, host) in cases {
            recorder.clear();
            let what = format!("{} via {path:?}", String::from_utf8_lossy(raw));
            let response = exchange(gw.addr, path, raw).await;
            assert_eq!(response.map(|r| r.status), Some(200), "{what}");
            let got = forwarded(&recorder);
            assert_eq!(got.len(), 1, "{what}");
            assert_eq!(got[0].target, "/t?q=1", "{what}");
            assert_eq!(got[0].values("host"), [host], "{what}");
        }
        // Authority form is for CONNECT only (3.2.3): it would otherwise go
        // upstream as `/` with its authority for Host.
        recorder.clear();
        let raw = b"OPTIONS user@other.test HTTP/1.1\r\nHost: probe.test\r\n\r\n";
        let response = exchange(gw.addr, path, raw).await;
        assert_eq!(
            response.map(|r| r.status),
            Some(400),
            "authority form via {path:?}"
        );
        assert_eq!(forwarded(&recorder), []);
    }
    gw.shutdown().await;
}

/// `Upgrade: h2c` is stripped (with HTTP2-Settings): an upstream that would
/// switch never sees it, and the requests after it on the same connection
/// still go through the gateway. A 101 to a request that asked no upgrade is
/// an upstream error, never a tunnel.
#[tokio::test]
async fn h2c_upgrades_are_refused() {
    let switching: Respond = Arc::new(|req: &Recorded| {
        if req.values("upgrade").is_empty() {
            describe(req)
        } else {
            let switch =
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n";
            (switch.to_vec(), false)
        }
    });
    let recorder = Recorder::responding(switching).await;
    let gw = Gateway::start(&config("", &[("v1", 1, recorder.addr)])).await;
    let upgrade = b"GET /up HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    let upgrade_with_body = b"POST /up HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Length: 2\r\n\r\nhi";
    for path in PATHS {
        for raw in [&upgrade[..], &upgrade_with_body[..]] {
            recorder.clear();
            let what = format!("{} via {path:?}", String::from_utf8_lossy(raw));
            let (mut stream, mut buf) = connect(gw.addr, path).await;
            stream.write_all(raw).await.unwrap();
            let response = read_response(&mut stream, &mut buf, false).await;
            assert_eq!(response.map(|r| r.status), Some(200), "{what}");
            stream
                .write_all(b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n")
                .await
                .unwrap();
            let response = read_response(&mut stream, &mut buf, false).await;
            assert_eq!(response.map(|r| r.status), Some(200), "{what}");
            let got = forwarded(&recorder);
            assert_eq!(got.len(), 2, "{what}: {got:?}");
            for field in ["upgrade", "http2-settings", "connection"] {
                assert_eq!(got[0].values(field), Vec::<&str>::new(), "{what}: {field}");
            }
            // Through the gateway: it added its forwarding fields.
            assert_eq!(got[1].values("x-forwarded-proto"), ["http"], "{what}");
        }
    }
    gw.shutdown().await;

    let always_switching: Respond = Arc::new(|_: &Recorded| {
        let switch =
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n";
        (switch.to_vec(), false)
    });
    let recorder = Recorder::responding(always_switching).await;
    let gw = Gateway::start(&config("", &[("v1", 1, recorder.addr)])).await;
    for raw in [
        &b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi",
    ] {
        let response = exchange(gw.addr, Path::Own, raw).await;
        assert_eq!(
            response.map(|r| r.status),
            Some(502),
            "{}",
            String::from_utf8_lossy(raw)
        );
    }
    gw.shutdown().await;
}

/// Field names with `_` are dropped by default (a stack that maps `_` to
/// `-` would read `Transfer_Encoding` as Transfer-Encoding), kept with
/// `[listener] allow_underscores_in_headers = true`.
#[tokio::test]
async fn underscored_field_names_are_dropped_unless_allowed() {
    let requests = [
        &b"POST /te HTTP/1.1\r\nHost: h\r\nTransfer_Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc"[..],
        b"GET /key HTTP/1.1\r\nHost: h\r\nX_Api_Key: secret\r\nX-Kept: 1\r\n\r\n",
    ];
    for allow in [false, true] {
        let recorder = Recorder::start().await;
        let mut text = config("", &[("v1", 1, recorder.addr)]);
        if allow {
            let key = "[listener]\nallow_underscores_in_headers = true\n";
            text = text.replace("[listener]\n", key);
        }
        let gw = Gateway::start(&text).await;
        for path in PATHS {
            for raw in requests {
                recorder.clear();
                let what = format!(
                    "{} via {path:?}, allowed {allow}",
                    String::from_utf8_lossy(raw)
                );
                let response = exchange(gw.addr, path, raw).await;
                assert_eq!(response.map(|r| r.status), Some(200), "{what}");
                let got = forwarded(&recorder);
                assert_eq!(got.len(), 1, "{what}");
                let underscored = got[0]
                    .fields
                    .iter()
                    .filter(|(n, _)| n.contains('_'))
                    .count();
                assert_eq!(
                    underscored,
                    usize::from(allow),
                    "{what}: {:?}",
                    got[0].fields
                );
                if got[0].method == "POST" {
                    assert_eq!(got[0].body, b"abc", "{what}");
                }
            }
        }
        gw.shutdown().await;
    }
}

/// Upstream responses with equal repeated lengths reach the client with
/// one Content-Length; with Content-Length and Transfer-Encoding at once
/// the body is re-framed and the upstream connection is never reused.
#[tokio::test]
async fn repeated_and_conflicting_response_lengths_are_cleaned_up() {
    let repeated: [&'static [u8]; 2] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello",
    ];
    let both = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    let requests = [
        &b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi",
    ];
    for answer in repeated {
        let recorder =
            Recorder::responding(Arc::new(move |_: &Recorded| (answer.to_vec(), false))).await;
        let gw = Gateway::start(&config("", &[("v1", 1, recorder.addr)])).await;
        for path in PATHS {
            for raw in requests {
                let what = format!("{} via {path:?}", String::from_utf8_lossy(raw));
                let response = exchange(gw.addr, path, raw).await.expect(&what);
                assert_eq!(response.values("content-length"), ["5"], "{what}");
                assert_eq!(response.body, b"hello", "{what}");
            }
        }
        gw.shutdown().await;
    }
    let recorder = Recorder::responding(Arc::new(move |_: &Recorded| (both.to_vec(), false))).await;
    let gw = Gateway::start(&config("", &[("v1", 1, recorder.addr)])).await;
    let mut sent = 0;
    for path in PATHS {
        for raw in requests {
            let what = format!("{} via {path:?}", String::from_utf8_lossy(raw));
            let before = recorder
                .connections
                .load(std::sync::atomic::Ordering::SeqCst);
            let response = exchange(gw.addr, path, raw).await.expect(&what);
            sent += 1;
            assert_eq!(
                (response.status, response.body.as_slice()),
                (200, &b"ok"[..]),
                "{what}"
            );
            assert_eq!(
                response.values("content-length"),
                Vec::<&str>::new(),
                "{what}"
            );
            // Each request (and the hand-off's) on a connection of its own.
            let after = recorder
                .connections
                .load(std::sync::atomic::Ordering::SeqCst);
            let expected = 1 + u64::from(path == Path::Hyper);
            assert_eq!(
                after - before,
                expected,
                "{what}: an upstream connection was reused"
            );
        }
    }
    assert_eq!(forwarded(&recorder).len(), sent);
    gw.shutdown().await;
}
