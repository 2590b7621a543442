//! Upstream errors: 502, 503 and 504, retries, ejection, an upstream that stops reading.

use std::time::Duration;

use canary_gateway::discovery::EndpointSink;

use crate::support::*;

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
    let split = "override_header = \"x-canary-version\"";
    let (_v1, _v2, gw) = two_versions(split, 1, 0).await;
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

/// An upstream that answers an upload before reading it (413) and closes,
/// its kernel resetting the connection for the unread bytes: the client
/// gets that answer, not a 502, and the version is charged no upstream
/// error (canary analysis would read a refusal as a failure). The answer
/// says nothing of the close: the connection must still not be used again
/// (the next upload would find it dead and fail). Over HTTP/1.1 with each
/// framing (see [`Framing`]) and over HTTP/2.
#[tokio::test]
async fn an_early_answer_to_an_upload_reaches_the_client() {
    let upstream = FixedUpstream::scripted(|_| {
        Some((
            &b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!"[..],
            true,
        ))
    })
    .await;
    // A version name of its own: the metrics registry is the test process's.
    let gw = Gateway::start(&config("", &[("early", 1, upstream.addr)])).await;
    let size: usize = 8 << 20;
    for framing in FRAMINGS {
        for _ in 0..3 {
            let response = upload_part(&gw, size, size, framing).await;
            assert_413_not_charged(&gw, text_of(response), "early", framing).await;
        }
    }
    // And over HTTP/2: the upload's stream gets the answer.
    let mut sender = h2c_client_for(gw.addr).await;
    for _ in 0..3 {
        use http_body_util::BodyExt;
        let body = http_body_util::Full::new(bytes::Bytes::from(vec![b'u'; size]));
        let req = http::Request::post(format!("http://{}/up", gw.addr))
            .body(body)
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        let response = (status, String::from_utf8_lossy(&text).into_owned());
        assert_413_not_charged(&gw, Some(response), "early", "HTTP/2").await;
    }
    gw.shutdown().await;
}

/// The client got the upstream's 413 ("big!"), and `version` was charged
/// no upstream error (canary analysis would read a refusal as a failure).
async fn assert_413_not_charged(
    gw: &Gateway,
    response: Option<(u16, String)>,
    version: &str,
    case: impl std::fmt::Debug,
) {
    assert_eq!(response, Some((413, "big!".to_owned())), "{case:?}");
    let text = admin(gw.admin, "GET", "/metrics", None, "").await.text();
    assert_eq!(
        metric_value(
            &text,
            "canary_upstream_errors_total",
            &[("version", version)]
        ),
        0.0,
        "{text}"
    );
}

/// A response's status and body text.
fn text_of(response: Option<crate::recorder::RawResponse>) -> Option<(u16, String)> {
    response.map(|r| (r.status, r.text()))
}

/// An upstream that reads an upload's head, then runs `after_head` on the
/// connection, the head and the body bytes read with it (it holds the
/// socket for as long as it runs).
async fn upload_upstream<F, Fut>(after_head: F) -> (std::net::SocketAddr, ServerTask)
where
    F: Fn(tokio::net::TcpStream, String, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let after_head = std::sync::Arc::new(after_head);
    let task = serve_connections(listener, move |mut stream| {
        let after_head = after_head.clone();
        async move {
            let mut buf = Vec::new();
            if let Some(head) = read_head(&mut stream, &mut buf).await {
                after_head(stream, head, buf).await;
            }
        }
    });
    (addr, task)
}

/// An upstream that answers `answer` to a request head and holds the
/// connection open without reading any more of it.
async fn answers_and_holds(answer: &'static [u8]) -> (std::net::SocketAddr, ServerTask) {
    upload_upstream(move |mut stream, _, _| async move {
        use tokio::io::AsyncWriteExt;
        let _ = stream.write_all(answer).await;
        std::future::pending::<()>().await;
    })
    .await
}

/// An upstream that answers a 413 ("big!") to a request head, then reads
/// and drops the rest of the upload until the connection closes.
async fn answers_and_drains() -> (std::net::SocketAddr, ServerTask) {
    upload_upstream(|mut stream, _, _| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let answer = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!";
        let _ = stream.write_all(answer).await;
        let mut sink = vec![0u8; 64 * 1024];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await
}

/// How an upload's body is framed: a Content-Length one and a chunked one
/// go through the gateway's own server and client (a chunked one decoded
/// as it goes), a chunked one that declares trailers through hyper's; an
/// early answer must reach the client each way.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Length,
    Chunked,
    /// Chunked, with `Trailer` declared (hyper's server and client).
    ChunkedHyper,
}

const FRAMINGS: [Framing; 3] = [Framing::Length, Framing::Chunked, Framing::ChunkedHyper];

impl Framing {
    /// The head of a POST whose body of `size` bytes is framed this way.
    fn head(self, size: usize) -> Vec<u8> {
        match self {
            Framing::Length => {
                format!("POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n\r\n").into()
            }
            Framing::Chunked => {
                b"POST /up HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec()
            }
            Framing::ChunkedHyper => {
                b"POST /up HTTP/1.1\r\nhost: x\r\ntrailer: x-t\r\ntransfer-encoding: chunked\r\n\r\n"
                    .to_vec()
            }
        }
    }

    /// `data` as it goes on the wire in a body framed this way.
    fn part(self, data: &[u8]) -> Vec<u8> {
        match self {
            Framing::Length => data.to_vec(),
            Framing::Chunked | Framing::ChunkedHyper => {
                let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
                framed.extend_from_slice(data);
                framed.extend_from_slice(b"\r\n");
                framed
            }
        }
    }
}

/// Sends a POST head for a body of `size` bytes framed as `framing`, and
/// the first `send` of them (all of them: the body ends), then keeps the
/// connection open; the response it gets.
async fn upload_part(
    gw: &Gateway,
    size: usize,
    send: usize,
    framing: Framing,
) -> Option<crate::recorder::RawResponse> {
    // Within 10 s, far below the configured timeouts: an answer after one
    // of those would be the gateway's, not the upstream's.
    upload_and_go_on(gw, size, send, framing).await.0
}

/// Writes a POST head for a body of `size` bytes framed as `framing` and
/// the first `send` of them (all of them: the body ends), then holds the
/// connection open until dropped.
async fn send_upload(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    size: usize,
    send: usize,
    framing: Framing,
) {
    use tokio::io::AsyncWriteExt;
    if writer.write_all(&framing.head(size)).await.is_err() {
        return;
    }
    let chunk = vec![b'u'; 64 * 1024];
    let mut left = send;
    while left > 0 {
        let n = left.min(chunk.len());
        if writer.write_all(&framing.part(&chunk[..n])).await.is_err() {
            return;
        }
        left -= n;
    }
    if let Framing::Chunked | Framing::ChunkedHyper = framing
        && send == size
    {
        let _ = writer.write_all(b"0\r\n\r\n").await;
    }
    // Holds the connection open, the rest of the body never sent.
    std::future::pending::<()>().await;
}

/// Timeouts long enough that only an answer passed on promptly arrives
/// within `upload_part`'s bound.
const PATIENT: &str = "\n[timeouts]\nupstream_response = \"60s\"\nbody_stall = \"60s\"\n";

/// An upstream that answers an upload early and stops reading it, without
/// closing: the answer reaches the client at once (not a 504 once the
/// upload has stalled for `upstream_response`), and counts as no upstream
/// error.
#[tokio::test]
async fn an_early_answer_from_an_upstream_that_stops_reading_reaches_the_client() {
    let (addr, _upstream) =
        answers_and_holds(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!").await;
    let gw = Gateway::start(&(config("", &[("stops-reading", 1, addr)]) + PATIENT)).await;
    // 64 MiB: far more than the sockets between them hold.
    let size = 64 << 20;
    for framing in FRAMINGS {
        let response = upload_part(&gw, size, size, framing).await;
        assert_413_not_charged(&gw, text_of(response), "stops-reading", framing).await;
    }
    gw.shutdown().await;
}

/// A client that sends part of its body and pauses: an upstream that
/// answers meanwhile (a 401 on the head alone) is passed on at once, not
/// after the body-stall timeout.
#[tokio::test]
async fn an_early_answer_reaches_a_slow_client() {
    let (addr, _upstream) =
        answers_and_holds(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\nno").await;
    let gw = Gateway::start(&(config("", &[("slow-client", 1, addr)]) + PATIENT)).await;
    for framing in FRAMINGS {
        let response = upload_part(&gw, 1 << 20, 1024, framing).await;
        assert_eq!(
            response.map(|r| (r.status, r.text())),
            Some((401, "no".to_owned())),
            "{framing:?}"
        );
    }
    gw.shutdown().await;
}

/// Interim responses (100 Continue) while an upload goes up are not an
/// early answer: the whole body still reaches the upstream, whose final
/// answer the client gets.
#[tokio::test]
async fn an_interim_response_does_not_end_an_upload() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let size: usize = 8 << 20;
    let (addr, _upstream) = upload_upstream(move |mut stream, head, buf| async move {
        let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
        // Only a chunked body's end is known without counting its framing.
        let chunked = head.contains("chunked");
        let mut got = buf.len();
        let mut tail = Vec::new();
        let mut tmp = vec![0u8; 64 * 1024];
        while (!chunked && got < size) || (chunked && !tail.ends_with(b"\r\n0\r\n\r\n")) {
            match stream.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    got += n;
                    tail.extend_from_slice(&tmp[..n]);
                    tail.drain(..tail.len().saturating_sub(7));
                }
            }
        }
        let body = if chunked {
            "whole".to_owned()
        } else {
            got.to_string()
        };
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(answer.as_bytes()).await;
        std::future::pending::<()>().await;
    })
    .await;
    for (framing, whole) in [
        (Framing::Length, size.to_string()),
        (Framing::Chunked, "whole".into()),
        (Framing::ChunkedHyper, "whole".into()),
    ] {
        // A gateway per framing: this upstream answers one request per
        // connection, and the connection goes back to the pool.
        let gw = Gateway::start(&(config("", &[("interim", 1, addr)]) + PATIENT)).await;
        let response = upload_part(&gw, size, size, framing).await;
        assert_eq!(
            response.map(|r| (r.status, r.text())),
            Some((200, whole)),
            "{framing:?}"
        );
        gw.shutdown().await;
    }
}

/// An early answer with a long body while the client is still sending:
/// the client gets all of it before the connection closes (closing a
/// socket with unread bytes resets it and throws away what it has not yet
/// sent).
#[tokio::test]
async fn a_long_early_answer_arrives_whole_before_the_connection_closes() {
    const LONG: usize = 32 << 20;
    let (addr, _upstream) = upload_upstream(|mut stream, _, _| async move {
        use tokio::io::AsyncWriteExt;
        let head = format!("HTTP/1.1 413 Payload Too Large\r\ncontent-length: {LONG}\r\n\r\n");
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(&vec![b'x'; LONG]).await;
        std::future::pending::<()>().await;
    })
    .await;
    // hyper's server (the chunked upload with trailers) keeps reading the upload after
    // the answer, for the upstream that no longer reads it: the connection
    // lasts until the linger after the answer ends it (5 s); the shutdown
    // waits for it for `shutdown_grace` at most.
    let gw = Gateway::start(
        &(config("", &[("long-answer", 1, addr)]) + PATIENT + "shutdown_grace = \"1s\"\n"),
    )
    .await;
    let size = 256 << 20;
    for framing in FRAMINGS {
        let response = upload_part(&gw, size, size, framing).await;
        let response = response.map(|r| (r.status, r.body.len()));
        assert_eq!(response, Some((413, LONG)), "{framing:?}");
    }
    gw.shutdown().await;
}

/// A client still sending an upload that its upstream answered already
/// (and stopped reading): the upstream connection carrying it is not given
/// to the next request, which would wait for that upload to end (or for
/// `body_stall`), but gets its own.
#[tokio::test]
async fn a_connection_busy_with_an_answered_upload_is_not_reused() {
    let (addr, _upstream) =
        answers_and_holds(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!").await;
    for framing in FRAMINGS {
        // A gateway per framing: this upstream answers one request per
        // connection, and the small upload's connection goes back to the pool.
        let gw = Gateway::start(&(config("", &[("busy", 1, addr)]) + PATIENT)).await;
        // Far more than the sockets on the way hold: the upload never ends.
        let (first, _still_sending) = upload_and_go_on(&gw, 1 << 30, 1 << 30, framing).await;
        assert_eq!(text_of(first), Some((413, "big!".into())), "{framing:?}");
        let next = upload_part(&gw, 1024, 1024, framing).await;
        assert_eq!(text_of(next), Some((413, "big!".into())), "{framing:?}");
        gw.shutdown().await;
    }
}

/// [`upload_part`], the client going on (sending, then holding its
/// connection open) for as long as the returned guard is kept.
async fn upload_and_go_on(
    gw: &Gateway,
    size: usize,
    send: usize,
    framing: Framing,
) -> (Option<crate::recorder::RawResponse>, AbortOnDrop) {
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut reader, writer) = stream.into_split();
    let sending = AbortOnDrop(tokio::spawn(send_upload(writer, size, send, framing)));
    let mut buf = Vec::new();
    let response = crate::recorder::read_response(&mut reader, &mut buf, false).await;
    (response, sending)
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An upload answered early that the client goes on sending and the
/// upstream goes on reading (and dropping): the gateway does not pass it on
/// for ever. The client's connection ends a few seconds after the answer,
/// as nginx's lingering close ends it: the own server stops reading at the
/// answer and drops what still comes for at most 5 s; hyper's server (a
/// chunked upload declaring trailers) passes the body on for at most 5 s
/// after the answer.
#[tokio::test]
async fn an_answered_upload_that_goes_on_is_cut_a_few_seconds_after_the_answer() {
    let (addr, _upstream) = answers_and_drains().await;
    // A request head's timeout far longer than the bound below (body bytes
    // after an answer look like a next request's head starting).
    let patient = PATIENT.to_owned() + "request_header = \"60s\"\n";
    let gw = Gateway::start(&(config("", &[("goes-on", 1, addr)]) + &patient)).await;
    for framing in FRAMINGS {
        let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let (mut reader, writer) = stream.into_split();
        let _sending = AbortOnDrop(tokio::spawn(send_without_end(writer, framing)));
        let mut buf = Vec::new();
        let response = crate::recorder::read_response(&mut reader, &mut buf, false).await;
        assert_eq!(text_of(response), Some((413, "big!".into())), "{framing:?}");
        let answered = std::time::Instant::now();
        // Far longer than the linger; without one the connection lasts as
        // long as the client sends.
        let ended = tokio::time::timeout(Duration::from_secs(30), async {
            use tokio::io::AsyncReadExt;
            let mut rest = [0u8; 1024];
            while matches!(reader.read(&mut rest).await, Ok(n) if n > 0) {}
        })
        .await;
        assert!(
            ended.is_ok(),
            "{framing:?}: still open 30 s after the answer"
        );
        let took = answered.elapsed();
        assert!(took < Duration::from_secs(20), "{framing:?}: {took:?}");
    }
    // An HTTP/2 stream: its body is no longer taken (the stream is reset).
    let mut sender = h2c_client_for(gw.addr).await;
    let (dropped, body_dropped) = tokio::sync::oneshot::channel::<()>();
    let body = EndlessBody {
        tick: Box::pin(tokio::time::sleep(Duration::ZERO)),
        _dropped: dropped,
    };
    let req = http::Request::post(format!("http://{}/up", gw.addr))
        .body(body)
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let answered = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(30), body_dropped).await;
    assert!(
        ended.is_ok(),
        "HTTP/2: body still taken 30 s after the answer"
    );
    let took = answered.elapsed();
    assert!(took < Duration::from_secs(20), "HTTP/2: {took:?}");
    gw.shutdown().await;
}

/// Writes a POST head and then body bytes framed as `framing`, 1 KiB every
/// 20 ms, never ending the body, until a write fails.
async fn send_without_end(mut writer: tokio::net::tcp::OwnedWriteHalf, framing: Framing) {
    use tokio::io::AsyncWriteExt;
    let part = framing.part(&[b'u'; 1024]);
    if writer
        .write_all(&framing.head(1_000_000_000))
        .await
        .is_err()
    {
        return;
    }
    while writer.write_all(&part).await.is_ok() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A request body that never ends: 1 KiB every 20 ms; `_dropped` closes
/// its channel when the client stops sending the body.
struct EndlessBody {
    tick: std::pin::Pin<Box<tokio::time::Sleep>>,
    _dropped: tokio::sync::oneshot::Sender<()>,
}

impl hyper::body::Body for EndlessBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::ready!(self.tick.as_mut().poll(cx));
        let next = tokio::time::Instant::now() + Duration::from_millis(20);
        self.tick.as_mut().reset(next);
        let part = bytes::Bytes::from(vec![b'u'; 1024]);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(part))))
    }
}

/// The rest of an upload answered early is that request's body, not a next
/// request's head: a client that finishes sending it within the linger
/// keeps its connection, also when that takes longer than `request_header`
/// (which times request heads only), and its next request is answered.
#[tokio::test]
async fn the_rest_of_an_answered_upload_is_not_timed_as_a_request_head() {
    use tokio::io::AsyncWriteExt;
    let (addr, _upstream) = answers_and_drains().await;
    let patient = PATIENT.to_owned() + "request_header = \"1s\"\n";
    let gw = Gateway::start(&(config("", &[("rest-of-body", 1, addr)]) + &patient)).await;
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // Hyper's server's way (the own server closes the connection after an
    // early answer, the rest of the body read and dropped: `lingering_close`).
    let chunked = Framing::ChunkedHyper;
    writer.write_all(&chunked.head(0)).await.unwrap();
    let mut buf = Vec::new();
    let first = crate::recorder::read_response(&mut reader, &mut buf, false).await;
    assert_eq!(text_of(first), Some((413, "big!".into())));
    // Two and a half times `request_header`, well within the linger (5 s).
    let part = chunked.part(&[b'u'; 1024]);
    let until = std::time::Instant::now() + Duration::from_millis(2500);
    while std::time::Instant::now() < until {
        writer.write_all(&part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer.write_all(b"0\r\n\r\n").await.unwrap();
    writer
        .write_all(b"GET /next HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let next = crate::recorder::read_response(&mut reader, &mut buf, false).await;
    assert_eq!(text_of(next), Some((413, "big!".into())));
    gw.shutdown().await;
}
