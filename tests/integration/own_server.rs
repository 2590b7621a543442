//! The gateway's own HTTP/1.1 server (simple requests) and its hand-off to
//! hyper's server, seen from raw client sockets.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Reads one response with a Content-Length body: its head (lower-cased)
/// and body. `buf` keeps bytes read past it.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (String, Vec<u8>) {
    let head = read_head(stream, buf).await.expect("a response head");
    let head = head.to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    while buf.len() < length {
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed in the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    (head, buf.drain(..length).collect())
}

/// A new connection to `addr` with `raw` written on it.
async fn send_raw(addr: std::net::SocketAddr, raw: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    stream
}

#[tokio::test]
async fn simple_requests_and_uploads_share_a_connection() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;
    // One connection: GETs on the own server, then an upload that hands the
    // connection to hyper's server, then GETs there.
    let mut client = Client::connect(gw.addr).await;
    let reply = client.get("/", &[]).await.unwrap();
    assert_eq!((reply.status.as_u16(), reply.text().as_str()), (200, "v1"));
    let upload = Request::post("/upload")
        .header("host", "h")
        .body(body(Bytes::from_static(b"hello")))
        .unwrap();
    let reply = client.send(upload).await.unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.text().starts_with("5 "), "{}", reply.text());
    for _ in 0..3 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!((reply.status.as_u16(), reply.text().as_str()), (200, "v1"));
    }
    assert_eq!(v1.hits(), 5);
    gw.shutdown().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let echo = EchoHeadUpstream::start("").await;
    let gw = Gateway::start(&config("", &[("v1", 1, echo.addr)])).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    // Two simple requests, then one the own server hands to hyper's (a body),
    // then a simple one again: all in one write.
    stream
        .write_all(
            b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n\
              GET /second HTTP/1.1\r\nHost: a\r\n\r\n\
              DELETE /third HTTP/1.1\r\nHost: a\r\ncontent-length: 0\r\n\r\n\
              GET /fourth HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    for line in [
        "GET /first HTTP/1.1",
        "GET /second HTTP/1.1",
        "DELETE /third HTTP/1.1",
        "GET /fourth HTTP/1.1",
    ] {
        let (head, body) = read_response(&mut stream, &mut buf).await;
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        let body = String::from_utf8(body).unwrap();
        assert!(body.starts_with(line), "{line}: {body}");
    }
    gw.shutdown().await;
}

/// Uploads with a Content-Length stay on the own server: the body is
/// streamed from the client's socket (larger than one read, arriving in
/// parts), exactly its length is taken (the pipelined requests after it are
/// served next, in order), and one upstream connection carries uploads and
/// plain requests alike (hyper's server would have sent the uploads on a
/// pool of their own).
#[tokio::test]
async fn uploads_with_a_length_stream_through_the_own_server() {
    use crate::recorder::{Recorder, forwarded};
    let recorder = Recorder::start().await;
    let gw = Gateway::start(&config("", &[("v1", 1, recorder.addr)])).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let big: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let head = format!(
        "POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&big[..10]).await.unwrap();
    for part in big[10..].chunks(30_000) {
        stream.write_all(part).await.unwrap();
    }
    stream
        .write_all(
            b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n\
              PUT /small HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
              GET /last HTTP/1.1\r\nHost: h\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    for _ in 0..4 {
        let (head, _) = read_response(&mut stream, &mut buf).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
    }
    let got: Vec<_> = forwarded(&recorder)
        .into_iter()
        .map(|r| (r.method, r.target, r.body))
        .collect();
    let want = [
        ("POST", "/big", big),
        ("GET", "/next", vec![]),
        ("PUT", "/small", b"hello".to_vec()),
        ("GET", "/last", vec![]),
    ]
    .map(|(m, t, b)| (m.to_owned(), t.to_owned(), b));
    assert!(
        got == want,
        "requests differ: {:?}",
        got.iter()
            .map(|r| (&r.0, &r.1, r.2.len()))
            .collect::<Vec<_>>()
    );
    let connections = recorder
        .connections
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(connections, 1);
    gw.shutdown().await;
}

/// `Expect: 100-continue` uploads are the own server's: the client that
/// waits gets `100 Continue` once the head went up, one that sent its body
/// along gets none; `Expect` does not go up, and the connection stays on the
/// own server (the next request's field names go up in their letter case,
/// where hyper's client would lower-case them).
#[tokio::test]
async fn expect_continue_uploads_stay_on_the_own_server() {
    use crate::recorder::{Recorder, forwarded};
    let recorder = Recorder::start().await;
    let gw = Gateway::start(&config("", &[("v1", 1, recorder.addr)])).await;
    let mut stream = send_raw(
        gw.addr,
        b"POST /waits HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    let mut buf = Vec::new();
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut stream, &mut buf))
        .await
        .expect("no 100 Continue")
        .expect("a head");
    assert_eq!(head, "HTTP/1.1 100 Continue\r\n\r\n");
    assert!(buf.is_empty(), "more than the 100: {buf:?}");
    stream.write_all(b"hello").await.unwrap();
    let (head, _) = read_response(&mut stream, &mut buf).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    stream
        .write_all(
            b"PUT /sends HTTP/1.1\r\nHost: h\r\nexpect: 100-Continue\r\nContent-Length: 3\r\n\r\nabc\
              GET /next HTTP/1.1\r\nHost: h\r\nX-Case: Kept\r\n\r\n",
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let (head, _) = read_response(&mut stream, &mut buf).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
    }
    let got = forwarded(&recorder);
    let summary: Vec<_> = got
        .iter()
        .map(|r| (r.method.as_str(), r.target.as_str(), r.body.as_slice()))
        .collect();
    assert_eq!(
        summary,
        [
            ("POST", "/waits", &b"hello"[..]),
            ("PUT", "/sends", b"abc"),
            ("GET", "/next", b""),
        ]
    );
    for r in &got {
        assert!(
            r.values("expect").is_empty(),
            "Expect went up: {:?}",
            r.fields
        );
    }
    assert!(
        got[2]
            .fields
            .iter()
            .any(|(n, v)| n == "X-Case" && v == "Kept"),
        "not the own server's head: {:?}",
        got[2].fields
    );
    assert_eq!(recorder.connections.load(Ordering::SeqCst), 1);
    gw.shutdown().await;
}

/// Chunked uploads are the own server's: one whose whole body came with its
/// head in plain framing goes up as it came; one with chunk extensions or
/// trailer fields is framed again (both dropped, as hyper's client drops
/// undeclared trailers); one still on its way goes up as it comes. Each
/// goes up chunked, with no Content-Length, its field names in their letter
/// case (hyper's client would lower-case them). One that declares trailers
/// goes to hyper's server, which sends them.
#[tokio::test]
async fn chunked_uploads_stay_on_the_own_server() {
    use crate::recorder::{Recorded, Recorder, forwarded};
    fn own_server_sent(r: &Recorded) {
        assert!(
            r.fields.iter().any(|(n, v)| n == "X-Case" && v == "Kept"),
            "not the own server's head: {:?}",
            r.fields
        );
        assert!(r.chunked);
        assert_eq!(r.values("transfer-encoding"), ["chunked"]);
        assert!(r.values("content-length").is_empty(), "{:?}", r.fields);
    }
    let recorder = Recorder::start().await;
    let gw = Gateway::start(&config("", &[("v1", 1, recorder.addr)])).await;
    let mut stream = send_raw(
        gw.addr,
        b"POST /chunked HTTP/1.1\r\nHost: h\r\nX-Case: Kept\r\nTransfer-Encoding: chunked\r\n\r\n\
              A\r\n0123456789\r\n5\r\nhello\r\n0\r\n\r\n\
              POST /ext HTTP/1.1\r\nHost: h\r\nX-Case: Kept\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;n=v\r\nhello\r\n0\r\nx-sig: 1\r\n\r\n\
              GET /next HTTP/1.1\r\nHost: h\r\nX-Case: Kept\r\n\r\n",
    )
    .await;
    let mut buf = Vec::new();
    for _ in 0..3 {
        let (head, _) = read_response(&mut stream, &mut buf).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
    }
    let got = forwarded(&recorder);
    let summary: Vec<_> = got
        .iter()
        .map(|r| (r.target.as_str(), r.body.as_slice()))
        .collect();
    assert_eq!(
        summary,
        [
            ("/chunked", &b"0123456789hello"[..]),
            ("/ext", b"hello"),
            ("/next", b""),
        ]
    );
    own_server_sent(&got[0]);
    own_server_sent(&got[1]);
    assert!(got[1].trailers.is_empty(), "{:?}", got[1].trailers);
    assert!(
        got[2].fields.iter().any(|(n, _)| n == "X-Case"),
        "{:?}",
        got[2].fields
    );
    assert_eq!(recorder.connections.load(Ordering::SeqCst), 1);

    // Declared trailers: hyper's server, which sends them up.
    recorder.clear();
    let mut stream = send_raw(
        gw.addr,
        b"POST /trailers HTTP/1.1\r\nHost: h\r\nX-Case: Kept\r\nTrailer: x-sig\r\n\
              Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-sig: 1\r\n\r\n",
    )
    .await;
    let (head, _) = read_response(&mut stream, &mut Vec::new()).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let got = forwarded(&recorder);
    assert_eq!(got[0].body, b"hello");
    assert_eq!(got[0].trailers, [("x-sig".to_string(), "1".to_string())]);
    assert!(
        !got[0].fields.iter().any(|(n, _)| n == "X-Case"),
        "{:?}",
        got[0].fields
    );
    gw.shutdown().await;

    // The body still on its way: its head goes up before the body's end (a
    // gateway with no pooled connection opens one), the rest as it comes.
    let recorder = Recorder::start().await;
    let gw = Gateway::start(&config("", &[("v1", 1, recorder.addr)])).await;
    let mut stream = send_raw(
        gw.addr,
        b"POST /later HTTP/1.1\r\nHost: h\r\nX-Case: Kept\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while recorder.connections.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request never went up"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let big = vec![b'b'; 100_000];
    stream.write_all(b"lo\r\n186a0;x=y\r\n").await.unwrap();
    stream.write_all(&big).await.unwrap();
    stream
        .write_all(b"\r\n0\r\n\r\nGET /after HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    for _ in 0..2 {
        let (head, _) = read_response(&mut stream, &mut buf).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
    }
    let got = forwarded(&recorder);
    assert_eq!(got.len(), 2, "{got:?}");
    own_server_sent(&got[0]);
    let mut want = b"hello".to_vec();
    want.extend_from_slice(&big);
    assert!(
        got[0].body == want,
        "body of {} bytes differs",
        got[0].body.len()
    );
    assert_eq!(got[1].target, "/after");
    assert_eq!(recorder.connections.load(Ordering::SeqCst), 1);

    // A chunked body, the same way.
    let mut stream = send_raw(
        gw.addr,
        b"POST /chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut stream, &mut buf))
        .await
        .expect("no 100 Continue")
        .expect("a head");
    assert_eq!(head, "HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"5\r\nhello\r\n0\r\n\r\n").await.unwrap();
    let (head, _) = read_response(&mut stream, &mut buf).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let last = forwarded(&recorder).pop().expect("a request");
    assert_eq!(
        (last.target.as_str(), last.body.as_slice()),
        ("/chunked", &b"hello"[..])
    );
    assert!(
        last.values("expect").is_empty(),
        "Expect went up: {:?}",
        last.fields
    );
    gw.shutdown().await;
}

/// A client waiting for `100 Continue` whose request cannot go up gets the
/// error instead, and the connection closes (the body may still come).
#[tokio::test]
async fn expect_continue_without_an_upstream_gets_the_error_and_a_close() {
    let gw = Gateway::start(&config("", &[("v1", 1, dead_addr().await)])).await;
    let mut stream = send_raw(
        gw.addr,
        b"POST /waits HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("the connection stayed open")
        .unwrap();
    assert_eq!(
        raw_status(&rest),
        Some(502),
        "{}",
        String::from_utf8_lossy(&rest)
    );
}

/// A long response body with a length (over the relay's threshold, 32 KiB
/// after what comes with the head).
const LONG: usize = 1024 * 1024 + 7;

fn long_body() -> Vec<u8> {
    (0..LONG).map(|i| (i * 31 % 251) as u8).collect()
}

fn long_response(claimed: usize, body: &[u8]) -> &'static [u8] {
    let mut bytes = format!("HTTP/1.1 200 OK\r\ncontent-length: {claimed}\r\n\r\n").into_bytes();
    bytes.extend_from_slice(body);
    Box::leak(bytes.into_boxed_slice())
}

/// Long bodies with a length go from the upstream's socket to the client's
/// through the thread's buffer: every byte in order, exactly the length (the upstream
/// connection carries the next requests, the client's pipelined requests
/// are answered next); an upstream that closes partway closes the client's
/// connection rather than leaving it waiting.
#[tokio::test]
async fn long_responses_with_a_length_arrive_whole_and_exact() {
    let body = long_body();
    let up = FixedUpstream::start(long_response(LONG, &body)).await;
    let gw = Gateway::start(&config("", &[("v1", 1, up.addr)])).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(
            b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n\
              GET /b HTTP/1.1\r\nHost: a\r\n\r\n\
              GET /c HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    for n in 0..3 {
        let (head, got) = read_response(&mut stream, &mut buf).await;
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{n}: {head}");
        assert_eq!(got.len(), LONG, "{n}");
        assert!(got == body, "{n}: the body arrived changed");
    }
    assert!(buf.is_empty(), "bytes after the last response");
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);

    // Bytes after the body (an upstream out of step) never reach the
    // client, and that connection is not used again.
    let mut junk = long_response(LONG, &body).to_vec();
    junk.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\njunk");
    let junky = FixedUpstream::start(Box::leak(junk.into_boxed_slice())).await;
    let gw3 = Gateway::start(&config("", &[("v1", 1, junky.addr)])).await;
    let mut stream = TcpStream::connect(gw3.addr).await.unwrap();
    let mut buf = Vec::new();
    for n in 0..2 {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let (head, got) = read_response(&mut stream, &mut buf).await;
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{n}: {head}");
        assert!(got == body, "{n}: the body arrived changed");
        assert!(buf.is_empty(), "{n}: bytes after the response");
    }
    assert_eq!(junky.connections.load(Ordering::SeqCst), 2);
    gw3.shutdown().await;

    // The upstream promises 1 MiB, sends 200 KiB and closes.
    fn cut(_: usize) -> Option<(&'static [u8], bool)> {
        static CUT: std::sync::LazyLock<&'static [u8]> =
            std::sync::LazyLock::new(|| long_response(LONG, &long_body()[..200 * 1024]));
        Some((*CUT, true))
    }
    let got = answer_then_close(cut).await;
    let text = String::from_utf8_lossy(&got[..got.len().min(200)]).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text}");
    let body_start = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(&got[body_start..], &body[..200 * 1024]);
    gw.shutdown().await;
}

/// What a client gets for a GET through a gateway in front of an upstream
/// that answers with `script`; the client's connection must close within
/// 10 s.
async fn answer_then_close(script: Script) -> Vec<u8> {
    let up = FixedUpstream::scripted(script).await;
    let gw = Gateway::start(&config("", &[("v1", 1, up.addr)])).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the client's connection stayed open");
    gw.shutdown().await;
    got
}

/// `body` in chunks of `size` (sizes in upper-case hex, as some servers
/// write them; the gateway's own framing is lower-case), then `end`.
fn chunked(body: &[u8], size: usize, end: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in body.chunks(size) {
        out.extend_from_slice(format!("{:X}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(end);
    out
}

fn leak(parts: &[&[u8]]) -> &'static [u8] {
    Box::leak(parts.concat().into_boxed_slice())
}

const CHUNKED_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";

/// Chunked bodies in plain framing pass through as they came (one buffer
/// per thread, not re-framed chunk by chunk), pipelined requests answered
/// in order on one upstream connection; chunk extensions and trailer fields
/// go the framed way from their line on (the client decodes the same body);
/// bytes after the body close that upstream connection; an upstream that
/// closes mid-body closes the client's connection.
#[tokio::test]
async fn chunked_responses_pass_through_as_they_came() {
    let body = long_body();
    // 8 KiB chunks, then one of 300,000 bytes (more than one read).
    let framed = [
        chunked(&body[..500_000], 8192, b""),
        chunked(&body[500_000..800_000], 300_000, b""),
        chunked(&body[800_000..], 8192, b"0\r\n\r\n"),
    ]
    .concat();
    let plain = leak(&[CHUNKED_HEAD, &framed]);
    let up = FixedUpstream::start(plain).await;
    let gw = Gateway::start(&config("", &[("v1", 1, up.addr)])).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    for n in 0..2 {
        let head = read_head(&mut stream, &mut buf).await.unwrap();
        assert!(
            head.contains("\r\ntransfer-encoding: chunked\r\n"),
            "{n}: {head}"
        );
        while buf.len() < framed.len() {
            let mut more = [0u8; 65536];
            let read = stream.read(&mut more).await.unwrap();
            assert!(read > 0, "{n}: closed in the body");
            buf.extend_from_slice(&more[..read]);
        }
        let got: Vec<u8> = buf.drain(..framed.len()).collect();
        assert!(got == framed, "{n}: the body's bytes changed");
    }
    assert!(buf.is_empty(), "bytes after the last response");
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    gw.shutdown().await;

    // An extension halfway and trailer fields: decoded, the same body.
    let with_ext = leak(&[
        CHUNKED_HEAD,
        &chunked(&body[..600_000], 8192, b""),
        b"10;name=value\r\n",
        &body[600_000..600_016],
        b"\r\n",
        &chunked(&body[600_016..], 8192, b"0\r\nX-Sum: 1\r\n\r\n"),
    ]);
    // Bytes after the body: the upstream is out of step.
    let junk = leak(&[CHUNKED_HEAD, &framed, b"HTTP/1.1 200 OK\r\n"]);
    // Each also to HTTP/2 clients (hyper's server, the body read frame by
    // frame).
    for (answer, connections) in [(plain, 1), (with_ext, 1), (junk, 4)] {
        let up = FixedUpstream::start(answer).await;
        let gw = Gateway::start(&config("", &[("v1", 1, up.addr)])).await;
        let mut client = Client::connect(gw.addr).await;
        for n in 0..2 {
            let reply = client.get("/", &[]).await.unwrap();
            assert_eq!(reply.status, 200);
            assert!(reply.body == body, "{n}: the body arrived changed");
            assert!(reply.trailers.is_none(), "{n}: trailers not asked for");
        }
        let mut h2 = h2c_client(gw.addr).await;
        for n in 0..2 {
            let req = Request::get(format!("http://{}/", gw.addr))
                .body(http_body_util::Empty::new())
                .unwrap();
            let reply = read_reply(h2.send_request(req).await.unwrap())
                .await
                .unwrap();
            assert_eq!(reply.status, 200);
            assert!(reply.body == body, "HTTP/2 {n}: the body arrived changed");
        }
        assert_eq!(up.connections.load(Ordering::SeqCst), connections);
        gw.shutdown().await;
    }

    // The upstream sends 200 KiB of chunks and closes.
    fn cut(_: usize) -> Option<(&'static [u8], bool)> {
        static CUT: std::sync::LazyLock<&'static [u8]> = std::sync::LazyLock::new(|| {
            leak(&[
                CHUNKED_HEAD,
                &chunked(&long_body()[..200 * 1024], 8192, b""),
            ])
        });
        Some((*CUT, true))
    }
    let got = answer_then_close(cut).await;
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(!got.ends_with(b"0\r\n\r\n"), "a cut body ended as if whole");
}

/// Between requests an idle connection lets go of its buffers and of the
/// last request's state (on the watchdog's tick, every 100 ms here); a busy
/// one keeps them. Whichever it did, every request after it is served
/// whole: single requests, a burst, a pipelined pair, and a head split
/// across two writes with ticks in between.
#[tokio::test]
async fn connections_that_idle_between_requests_serve_every_next_one() {
    let echo = EchoHeadUpstream::start("").await;
    let extra = "[timeouts]\nrequest_header = \"400ms\"";
    let gw = Gateway::start(&config(extra, &[("v1", 1, echo.addr)])).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    let idle = || tokio::time::sleep(Duration::from_millis(350));
    let expect = async |stream: &mut TcpStream, buf: &mut Vec<u8>, path: &str| {
        let (head, body) = read_response(stream, buf).await;
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{path}: {head}");
        let line = format!("GET {path} HTTP/1.1");
        let body = String::from_utf8(body).unwrap();
        assert!(body.starts_with(&line), "{line}: {body}");
    };
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
    // One request, then idle: nothing is kept after a first request.
    stream.write_all(get("/one").as_bytes()).await.unwrap();
    expect(&mut stream, &mut buf, "/one").await;
    idle().await;
    // A burst: from the second request on, the connection keeps its state.
    for i in 0..4 {
        let path = format!("/burst-{i}");
        stream.write_all(get(&path).as_bytes()).await.unwrap();
        expect(&mut stream, &mut buf, &path).await;
    }
    // Idle past several ticks: the kept state goes; a pipelined pair next.
    idle().await;
    let pair = get("/pair-1") + &get("/pair-2");
    stream.write_all(pair.as_bytes()).await.unwrap();
    expect(&mut stream, &mut buf, "/pair-1").await;
    expect(&mut stream, &mut buf, "/pair-2").await;
    // Half a head, ticks pass (within the 400 ms head timeout), the rest.
    idle().await;
    let split = get("/split");
    let (first, rest) = split.split_at(12);
    stream.write_all(first.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    stream.write_all(rest.as_bytes()).await.unwrap();
    expect(&mut stream, &mut buf, "/split").await;
    stream.write_all(get("/last").as_bytes()).await.unwrap();
    expect(&mut stream, &mut buf, "/last").await;
    assert!(buf.is_empty(), "bytes after the last response");
    gw.shutdown().await;
}

#[tokio::test]
async fn request_fields_are_rewritten_in_any_letter_case() {
    let echo = EchoHeadUpstream::start("").await;
    let gw = Gateway::start(&config("", &[("v1", 1, echo.addr)])).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(
            b"GET /p?q=1 HTTP/1.1\r\nHost: h.test\r\nConnection: Keep-Alive\r\n\
              Keep-Alive: timeout=5\r\nProxy-Authorization: secret\r\n\
              X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Proto: https\r\nX-Kept: Yes\r\n\r\n",
        )
        .await
        .unwrap();
    let (_, body) = read_response(&mut stream, &mut Vec::new()).await;
    let sent = String::from_utf8(body).unwrap();
    let lower = sent.to_ascii_lowercase();
    assert!(sent.starts_with("GET /p?q=1 HTTP/1.1\r\n"), "{sent}");
    for gone in [
        "connection:",
        "keep-alive:",
        "proxy-authorization:",
        "https",
    ] {
        assert!(!lower.contains(gone), "{gone} was forwarded: {sent}");
    }
    assert!(sent.contains("Host: h.test\r\n"), "{sent}");
    assert!(sent.contains("X-Kept: Yes\r\n"), "{sent}");
    assert!(
        lower.contains("x-forwarded-for: 192.0.2.1, 127.0.0.1\r\n"),
        "{sent}"
    );
    assert!(lower.contains("x-forwarded-proto: http\r\n"), "{sent}");
    assert_eq!(lower.matches("x-request-id: ").count(), 1, "{sent}");
    gw.shutdown().await;
}

#[tokio::test]
async fn response_fields_are_rewritten_and_a_date_added() {
    let upstream = FixedUpstream::start(
        b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\n\
          Upgrade: h2c\r\nTrailer: x-sum\r\nX-Canary-Version: spoofed\r\nX-Kept: yes\r\n\
          Content-Length: 2\r\n\r\nok",
    )
    .await;
    let gw = Gateway::start(&config(
        "response_header = \"x-canary-version\"",
        &[("v1", 1, upstream.addr)],
    ))
    .await;
    let reply = get(gw.addr, "/", &[]).await;
    assert_eq!((reply.status.as_u16(), reply.text().as_str()), (200, "ok"));
    for gone in ["keep-alive", "proxy-authenticate", "upgrade", "trailer"] {
        assert!(reply.header(gone).is_none(), "{gone}: {:?}", reply.headers);
    }
    assert_eq!(reply.header("x-canary-version"), Some("v1"));
    assert_eq!(reply.headers.get_all("x-canary-version").iter().count(), 1);
    assert_eq!(reply.header("x-kept"), Some("yes"));
    let date = reply.header("date").expect("a date header");
    assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
    gw.shutdown().await;
}

#[tokio::test]
async fn connection_close_and_http_1_0_close_after_the_response() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;
    for request in [
        &b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.0\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let all = read_to_close(&mut stream, Duration::from_secs(10))
            .await
            .expect("the gateway closes the connection");
        let text = String::from_utf8_lossy(&all).to_ascii_lowercase();
        assert_eq!(raw_status(&all), Some(200), "{text}");
        assert!(text.ends_with("\r\n\r\nv1"), "{text}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections() {
    let v1 = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, v1.addr)])).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (_, body) = read_response(&mut stream, &mut Vec::new()).await;
    assert_eq!(body, b"v1");
    // The configured grace is 25 s: a connection left open until then would
    // outlast the limit below.
    let shutdown = tokio::spawn(gw.shutdown());
    let rest = read_to_close(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(
        rest.as_deref(),
        Some(&b""[..]),
        "idle connection not closed by the drain"
    );
    shutdown.await.unwrap();
}

/// A message head normalized for comparison: the first line, then the field
/// lines with lower-case names, sorted, without Date, and with a generated
/// request id blanked.
fn normalized(head: &str) -> Vec<String> {
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default().to_string();
    let mut fields: Vec<String> = lines
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            let name = name.to_ascii_lowercase();
            let value = value.trim();
            match name.as_str() {
                "date" => None,
                "x-request-id" if value.len() == 36 => Some(format!("{name}: <generated>")),
                _ => Some(format!("{name}: {value}")),
            }
        })
        .collect();
    fields.sort();
    std::iter::once(first).chain(fields).collect()
}

/// The same requests through the own server (a fresh connection) and
/// through hyper's server (a connection handed over by a request the own
/// server leaves to it): the upstream must receive the same head and the
/// client the same response.
#[tokio::test]
async fn own_and_hyper_servers_forward_the_same() {
    let echo =
        EchoHeadUpstream::start("X-Upstream: 1\r\nKeep-Alive: timeout=5\r\nProxy-Foo: x\r\n").await;
    let gw = Gateway::start(&config(
        "response_header = \"x-canary-version\"\nsticky_header = \"x-user\"",
        &[("v1", 1, echo.addr)],
    ))
    .await;
    let requests = [
        &b"GET /a?b=c&d=%2F HTTP/1.1\r\nHost: h\r\n\r\n"[..],
        b"DELETE /x HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 192.0.2.1\r\nX-Request-Id: given\r\n\r\n",
        b"GET /h HTTP/1.1\r\nHost: h\r\nProxy-Authorization: x\r\nKeep-Alive: 5\r\nConnection: keep-alive\r\n\r\n",
        b"OPTIONS /o HTTP/1.1\r\nHost: h\r\nX-User: u1\r\nAccept: */*\r\nContent-Length: 0\r\n\r\n",
        b"POST /p HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
    ];
    let mut own = TcpStream::connect(gw.addr).await.unwrap();
    let mut handed = TcpStream::connect(gw.addr).await.unwrap();
    let (mut own_buf, mut handed_buf) = (Vec::new(), Vec::new());
    // TE: trailers is a request the own server leaves to hyper's.
    handed
        .write_all(b"GET /first HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut handed, &mut handed_buf).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    for raw in requests {
        own.write_all(raw).await.unwrap();
        handed.write_all(raw).await.unwrap();
        let (own_head, own_body) = read_response(&mut own, &mut own_buf).await;
        let (hyper_head, hyper_body) = read_response(&mut handed, &mut handed_buf).await;
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        let request = String::from_utf8_lossy(raw);
        assert_eq!(normalized(&own_head), normalized(&hyper_head), "{request}");
        assert_eq!(
            normalized(&text(own_body)),
            normalized(&text(hyper_body)),
            "upstream heads for {request}"
        );
        assert!(own_head.contains("\r\ndate: "), "{own_head}");
    }
    gw.shutdown().await;

    // Requests with bodies (every framing: a Content-Length one goes through
    // the own server and client on a fresh connection) and HEAD, against the recording upstream: the same
    // method, target, end-to-end fields and body bytes arrive, and the
    // client gets the same response.
    let recorder = crate::recorder::Recorder::start().await;
    let gw = Gateway::start(&config("", &[("v1", 1, recorder.addr)])).await;
    let bodied = [
        &b"POST /p HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nContent-Length: 5\r\n\r\nhello"[..],
        b"PUT /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n",
        b"GET /g HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HEAD /h HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
        b"OPTIONS /o HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi",
        b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n",
        b"DELETE /d HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    ];
    use crate::recorder::{Path, exchange, forwarded};
    for raw in bodied {
        let request = String::from_utf8_lossy(raw);
        let mut seen = Vec::new();
        for path in [Path::Own, Path::Hyper] {
            recorder.clear();
            let response = exchange(gw.addr, path, raw).await.expect(&request);
            let got = forwarded(&recorder);
            assert_eq!(got.len(), 1, "{request} via {path:?}");
            let got = &got[0];
            let fields: Vec<_> = response
                .fields
                .iter()
                .filter(|(n, _)| n != "date")
                .cloned()
                .collect();
            seen.push((
                (
                    got.method.clone(),
                    got.target.clone(),
                    got.end_to_end_fields(),
                    got.body.clone(),
                ),
                (response.status, fields, response.body),
            ));
        }
        assert_eq!(seen[0], seen[1], "{request}");
    }
    gw.shutdown().await;
}

/// The same upstream responses through the own server and through hyper's
/// server (after a hand-off): the client must get the same status, fields
/// (but Date) and body, framing included.
#[tokio::test]
async fn own_and_hyper_servers_answer_the_same() {
    let responses: [Script; 12] = [
        |_| {
            Some((&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..], false))
        },
        |_| Some((&b"HTTP/1.0 200 OK\r\nX-Old: 1\r\n\r\nuntil close"[..], true)),
        |_| {
            Some((&b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\nX-Kept: 2\r\nContent-Length: 2\r\n\r\nok"[..], false))
        },
        |_| Some((&b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"[..], false)),
        |_| {
            Some((
                &b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nKeep-Alive: timeout=1\r\n\r\nno!"
                    [..],
                false,
            ))
        },
        |_| {
            Some((&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"[..], false))
        },
        // Informational responses before the final one.
        |_| {
            Some((&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nok"[..], false))
        },
        |_| {
            Some((
                &b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nX-A: 1\r\n\r\n"[..],
                false,
            ))
        },
        // Trailers (not asked for by the client: dropped).
        |_| {
            Some((&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n"[..], false))
        },
        // Declared trailers (not asked for by the client: the Trailer
        // field goes too).
        |_| {
            Some((&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n"[..], false))
        },
        |_| {
            Some((
                &b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok"[..],
                false,
            ))
        },
        |_| {
            Some((
                &b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nclose-delimited on 1.1"[..],
                true,
            ))
        },
    ];
    for script in responses {
        let upstream = FixedUpstream::scripted(script).await;
        let gw = Gateway::start(&config(
            "response_header = \"x-canary-version\"",
            &[("v1", 1, upstream.addr)],
        ))
        .await;
        let mut own = Client::connect(gw.addr).await;
        let mut handed = Client::connect(gw.addr).await;
        // TE: trailers is a request the own server leaves to hyper's.
        handed.get("/", &[("te", "trailers")]).await.unwrap();
        let own_reply = own.get("/", &[]).await.unwrap();
        let hyper_reply = handed.get("/", &[]).await.unwrap();
        // A body takes hyper's client (from either server).
        let post = Request::post("/")
            .header("host", "h")
            .body(body(Bytes::from_static(b"hi")))
            .unwrap();
        let hyper_client_reply = Client::connect(gw.addr).await.send(post).await.unwrap();
        let head = || {
            Request::head("/")
                .header("host", "h")
                .body(body(Bytes::new()))
                .unwrap()
        };
        let own_head = Client::connect(gw.addr).await.send(head()).await.unwrap();
        let hyper_head = handed.send(head()).await.unwrap();
        let fields = |r: &Reply| {
            let mut f: Vec<(String, String)> = r
                .headers
                .iter()
                .filter(|(n, _)| *n != "date")
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_string()))
                .collect();
            f.sort();
            f
        };
        assert_eq!(own_reply.status, hyper_reply.status);
        assert_eq!(fields(&own_reply), fields(&hyper_reply), "{own_reply:?}");
        assert_eq!(own_reply.body, hyper_reply.body);
        assert!(own_reply.header("date").is_some());
        let with_body = &hyper_client_reply;
        assert_eq!(own_reply.status, with_body.status, "{with_body:?}");
        assert_eq!(fields(&own_reply), fields(with_body), "{with_body:?}");
        assert_eq!(own_reply.body, with_body.body);
        assert_eq!(own_head.status, hyper_head.status);
        assert_eq!(fields(&own_head), fields(&hyper_head), "{own_head:?}");
        assert_eq!((own_head.body.len(), hyper_head.body.len()), (0, 0));
        gw.shutdown().await;
    }
}
