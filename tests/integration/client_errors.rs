//! Whose fault is it: a client's broken request is a 4xx (or a closed
//! connection) and a client-error count, never a version's 5xx or upstream
//! error; error responses leak no upstream detail; cancelled requests give
//! their endpoint's count back; bodies that stall end the request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::recorder::*;
use crate::support::{
    FixedUpstream, Gateway, ServerTask, Upstream, admin, config, dead_addr, eventually, h2c_client,
    h2c_client_for, metric_value, read_head, read_to_close, serve_connections,
};

async fn metrics(gw: &Gateway) -> String {
    admin(gw.admin, "GET", "/metrics", None, "").await.text()
}

async fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(&metrics(gw).await, name, labels)
}

/// Waits until `name{labels}` reaches `at_least`.
async fn metric_reaches(gw: &Gateway, name: &str, labels: &[(&str, &str)], at_least: f64) -> bool {
    eventually(Duration::from_secs(10), async || {
        metric(gw, name, labels).await >= at_least
    })
    .await
}

/// Asserts that `version` counted no 5xx and no upstream error.
async fn assert_no_version_errors(gw: &Gateway, version: &str) {
    let text = metrics(gw).await;
    let five = [("version", version), ("status", "5xx")];
    let five = metric_value(&text, "canary_requests_total", &five);
    let upstream = metric_value(
        &text,
        "canary_upstream_errors_total",
        &[("version", version)],
    );
    assert_eq!((five, upstream), (0.0, 0.0), "{text}");
}

/// `version`'s upstream timeouts and 5xx, once they reach `expected`
/// (waited for: a request's completion is counted when it drops).
async fn version_timeouts_and_5xx(gw: &Gateway, version: &str, expected: (f64, f64)) -> (f64, f64) {
    let counted = async || {
        let text = metrics(gw).await;
        let timeouts = [("version", version), ("kind", "timeout")];
        let fives = [("version", version), ("status", "5xx")];
        (
            metric_value(&text, "canary_upstream_errors_total", &timeouts),
            metric_value(&text, "canary_requests_total", &fives),
        )
    };
    eventually(Duration::from_secs(5), async || counted().await == expected).await;
    counted().await
}

/// A head hyper's server cannot parse (it answers 400 itself, without the
/// gateway's service) is counted as the client's `bad_head` too, on every
/// path the connection can take.
#[tokio::test]
async fn heads_hyper_refuses_are_counted_as_the_clients() {
    let upstream = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("hyperhead", 1, upstream.addr)])).await;
    let before = metric(&gw, "canary_client_errors_total", &[("kind", "bad_head")]).await;
    let bad = b"GET / HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n";
    for (i, path) in PATHS.into_iter().enumerate() {
        let response = exchange(gw.addr, path, bad).await;
        let status = response.as_ref().map(|r| r.status);
        assert_eq!(status, Some(400), "{path:?}");
        let counted = metric_reaches(
            &gw,
            "canary_client_errors_total",
            &[("kind", "bad_head")],
            before + i as f64 + 1.0,
        );
        assert!(counted.await, "{path:?}: not counted as a client error");
    }
    assert_no_version_errors(&gw, "hyperhead").await;
    gw.shutdown().await;
}

/// Malformed chunked bodies (nginx and HAProxy answer 400) are the client's
/// error: a 400 or a closed connection, counted in
/// `canary_client_errors_total`, never in the version's 5xx or upstream
/// errors; the upstream connection that got half of one is not reused.
#[tokio::test]
async fn malformed_chunked_bodies_are_the_clients_error() {
    let recorder = Recorder::start().await;
    let gw = Gateway::start(&config("", &[("cerr", 1, recorder.addr)])).await;
    let bodies: [&[u8]; 5] = [
        b"0x3\r\nabc\r\n0\r\n\r\n",
        b"fffffffffffffffffff1\r\nabc\r\n0\r\n\r\n",
        b"3\nabc\r\n0\r\n\r\n",
        b"3\r\nabcd\r\n0\r\n\r\n",
        b"3\r\nabc0\r\n\r\n",
    ];
    let before = metric(&gw, "canary_client_errors_total", &[("kind", "bad_body")]).await;
    let good = b"POST /good HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\ngood";
    for (i, body) in bodies.iter().enumerate() {
        let what = String::from_utf8_lossy(body);
        let mut raw =
            b"POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        raw.extend_from_slice(body);
        let response = exchange(gw.addr, Path::Own, &raw).await;
        if let Some(response) = &response {
            assert_eq!(response.status, 400, "{what}: {response:?}");
        }
        // The next request must not land on a connection that carries half
        // of the bad one.
        let response = exchange(gw.addr, Path::Own, good)
            .await
            .expect("a response");
        assert_eq!(
            (response.status, response.text().as_str()),
            (200, "POST 4"),
            "after {what}"
        );
        let counted = metric_reaches(
            &gw,
            "canary_client_errors_total",
            &[("kind", "bad_body")],
            before + i as f64 + 1.0,
        );
        assert!(counted.await, "{what}: not counted as a client error");
    }
    assert!(forwarded(&recorder).iter().all(|r| r.target == "/good"));
    assert_no_version_errors(&gw, "cerr").await;
    gw.shutdown().await;
}

/// A chunked body whose framing breaks after its head went up (the own
/// server decodes it as it goes) is the client's error too: a 400, the
/// connection closed, counted; the upstream connection that got half of it
/// is not reused.
#[tokio::test]
async fn chunked_framing_broken_on_the_way_is_the_clients_error() {
    let recorder = Recorder::start().await;
    let gw = Gateway::start(&config("", &[("late", 1, recorder.addr)])).await;
    let before = metric(&gw, "canary_client_errors_total", &[("kind", "bad_body")]).await;
    let bad: [&[u8]; 3] = [b"loX\r\n", b"lo\r\nzz\r\n", b"lo\r\n0\r\nno colon\r\n\r\n"];
    for (i, rest) in bad.iter().enumerate() {
        let what = String::from_utf8_lossy(rest);
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream
            .write_all(
                b"PUT /late HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            )
            .await
            .unwrap();
        // The head is up: its upstream connection is open (the one before
        // got half a request and is not reused).
        let open = eventually(Duration::from_secs(10), async || {
            recorder.connections.load(Ordering::SeqCst) > i as u64
        });
        assert!(open.await, "{what}: the head never went up");
        stream.write_all(rest).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer));
        read.await.expect("the connection stays open").unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 400 "),
            "{what}: {}",
            String::from_utf8_lossy(&answer)
        );
        let counted = metric_reaches(
            &gw,
            "canary_client_errors_total",
            &[("kind", "bad_body")],
            before + i as f64 + 1.0,
        );
        assert!(counted.await, "{what}: not counted as a client error");
    }
    assert_eq!(forwarded(&recorder), []);
    assert_no_version_errors(&gw, "late").await;
    gw.shutdown().await;
}

/// A client that goes away in the middle of its body is the client's error.
#[tokio::test]
async fn a_client_gone_mid_body_is_the_clients_error() {
    let recorder = Recorder::start().await;
    let gw = Gateway::start(&config("", &[("gone", 1, recorder.addr)])).await;
    let before = metric(&gw, "canary_client_errors_total", &[("kind", "aborted")]).await;
    for (i, framing) in ["Content-Length: 100", "Transfer-Encoding: chunked"]
        .iter()
        .enumerate()
    {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        let head = format!("PUT /gone HTTP/1.1\r\nHost: h\r\n{framing}\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(b"a\r\n0123456789").await.unwrap();
        // The request is in flight: its upstream connection is open (the
        // one before got half a request and is not reused).
        let open = eventually(Duration::from_secs(10), async || {
            recorder.connections.load(Ordering::SeqCst) > i as u64
        });
        assert!(open.await);
        drop(stream);
    }
    let counted = metric_reaches(
        &gw,
        "canary_client_errors_total",
        &[("kind", "aborted")],
        before + 2.0,
    );
    assert!(counted.await, "{}", metrics(&gw).await);
    assert_no_version_errors(&gw, "gone").await;
    assert_eq!(forwarded(&recorder), []);
    gw.shutdown().await;
}

/// A client that stops its upload after the upstream's answer began (an
/// early answer, on hyper's server) broke the exchange: hyper's client then
/// fails the response body too, which is not the version's failure (no
/// reset, no 5xx: the request counts under the status it was answered).
#[tokio::test]
async fn a_client_gone_mid_upload_after_the_answer_began_is_no_version_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\npartial";
                let _ = socket.write_all(answer).await;
                while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    let gw = Gateway::start(&config("", &[("leaver", 1, addr)])).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    // `TE: trailers` keeps the request on hyper's server.
    stream
        .write_all(b"POST /up HTTP/1.1\r\nHost: h\r\nTE: trailers\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !got.windows(7).any(|w| w == b"partial") {
        let mut more = [0u8; 4096];
        let n = stream.read(&mut more).await.unwrap();
        assert!(
            n > 0,
            "closed before the answer began: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&more[..n]);
    }
    // The upload ends unfinished; the client still reads.
    stream.shutdown().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while matches!(stream.read(&mut [0u8; 4096]).await, Ok(n) if n > 0) {}
    })
    .await;
    let answered = [("version", "leaver"), ("status", "2xx")];
    assert!(
        metric_reaches(&gw, "canary_requests_total", &answered, 1.0).await,
        "{}",
        metrics(&gw).await
    );
    assert_no_version_errors(&gw, "leaver").await;
    gw.shutdown().await;
}

/// An HTTP/2 client that resets its stream (RST_STREAM CANCEL) in the
/// middle of its upload went away: `aborted`, as when its connection
/// closes mid-body, never `bad_body` (a malformed body) nor a version's
/// error; the stream gets no answer, so no status class counts it and the
/// access log says 499, not a 400 that was never sent. Which task sees the
/// reset first (hyper's stream task, which drops the request, or the
/// upstream connection's, which fails its body) depends on the scheduling:
/// a runtime of several threads, as the gateway's, and several uploads.
#[test]
fn an_h2_stream_reset_mid_upload_is_an_aborted_request() {
    gone_mid_upload(Gone::StreamReset);
}

/// The same for an HTTP/2 client whose connection is reset (a TCP RST)
/// mid-upload: the error hyper reports is the HTTP/2 layer's, around the
/// socket's (which gives no `source()`), and is the client gone too, not
/// `bad_body`.
#[test]
fn an_h2_connection_reset_mid_upload_is_an_aborted_request() {
    gone_mid_upload(Gone::ConnectionReset);
}

/// How an HTTP/2 client leaves its upload.
#[derive(Clone, Copy)]
enum Gone {
    /// RST_STREAM CANCEL, each upload a stream of one connection.
    StreamReset,
    /// The TCP connection reset, each upload on a connection of its own.
    ConnectionReset,
}

fn gone_mid_upload(gone: Gone) {
    // Every thread of the runtime logs into `captured` (at debug: a client
    // error's line names its kind).
    let captured = crate::support::Captured::default();
    let sink = captured.clone();
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            // Held for the thread's life, which the runtime's drop ends.
            std::mem::forget(tracing::dispatcher::set_default(&dispatch));
        })
        .build()
        .unwrap();
    runtime.block_on(resets_mid_upload(&captured, gone));
}

async fn resets_mid_upload(captured: &crate::support::Captured, gone: Gone) {
    use crate::support::h2_frame::*;
    use crate::support::{RawH2, h2_header_block};
    const UPLOADS: u32 = 30;
    let recorder = Recorder::start().await;
    let text = config("", &[("reset-upload", 1, recorder.addr)]) + "\n[log]\naccess_log = true\n";
    let gw = Gateway::start(&text).await;
    let aborted = [("kind", "aborted")];
    let aborted_before = metric(&gw, "canary_client_errors_total", &aborted).await;
    let connect = async || {
        let tcp = TcpStream::connect(gw.addr).await.unwrap();
        // Closed with a reset, not a FIN.
        tcp.set_zero_linger().unwrap();
        RawH2::start(tcp).await
    };
    let mut h2 = connect().await;
    let head = h2_header_block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "h"),
        (":path", "/upload"),
        ("content-length", "100000"),
    ]);
    for i in 0..UPLOADS {
        let stream = match gone {
            Gone::StreamReset => 2 * i + 1,
            Gone::ConnectionReset => {
                h2 = connect().await;
                1
            }
        };
        h2.send_on(stream, HEADERS, END_HEADERS, &head)
            .await
            .unwrap();
        h2.send_on(stream, DATA, 0, &[b'a'; 10_000]).await.unwrap();
        // The request is in flight: its upstream connection is open (the
        // one before got half a request and is not reused).
        let open = eventually(Duration::from_secs(10), async || {
            recorder.connections.load(Ordering::SeqCst) > u64::from(i)
        });
        assert!(open.await);
        match gone {
            Gone::StreamReset => {
                let cancel = CANCEL.to_be_bytes();
                h2.send_on(stream, RST_STREAM, 0, &cancel).await.unwrap();
            }
            Gone::ConnectionReset => h2 = connect().await,
        }
    }
    let version = [("version", "reset-upload")];
    let total = f64::from(UPLOADS);
    let ended = metric_reaches(
        &gw,
        "canary_request_duration_seconds_count",
        &version,
        total,
    );
    assert!(ended.await, "{}", metrics(&gw).await);
    // No status class: nothing was answered (the old count was a 4xx).
    let answered = metric(&gw, "canary_requests_total", &version).await;
    assert_eq!(answered, 0.0, "{}", metrics(&gw).await);
    assert_no_version_errors(&gw, "reset-upload").await;
    let counted = metric_reaches(
        &gw,
        "canary_client_errors_total",
        &aborted,
        aborted_before + total,
    );
    assert!(counted.await, "{}", metrics(&gw).await);
    let logged = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    let lines: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains(" access: ") && l.contains("version=reset-upload "))
        .collect();
    assert_eq!(lines.len(), UPLOADS as usize, "{logged}");
    for line in lines {
        assert!(line.contains(" status=499 "), "{line}");
    }
    // Not `bad_body` (`canary_client_errors_total` is the process's, shared
    // with tests that count malformed bodies: its debug line tells).
    let bad_body = canary_gateway::proxy::error_response::ClientError::BadBody.to_string();
    let bad = logged.lines().find(|l| l.contains(&bad_body));
    assert_eq!(bad, None);
    assert_eq!(forwarded(&recorder), []);
    drop(h2);
    gw.shutdown().await;
}

/// 502/503/504 bodies carry a short fixed text, the `x-canary-error` kind
/// and the request id; never an upstream address.
#[tokio::test]
async fn error_responses_name_no_upstream() {
    let dead = dead_addr().await;
    let gw = Gateway::start(&config("", &[("v1", 1, dead)])).await;
    let requests = [
        &b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: given-1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi",
    ];
    for path in PATHS {
        for raw in requests {
            let what = format!("{} via {path:?}", String::from_utf8_lossy(raw));
            let response = exchange(gw.addr, path, raw).await.expect(&what);
            assert_eq!(response.status, 502, "{what}");
            assert_eq!(response.values("x-canary-error"), ["upstream-unreachable"]);
            assert_eq!(response.text(), "502 upstream unreachable\n", "{what}");
            let id = response.values("x-request-id");
            assert_eq!(id.len(), 1, "{what}: {response:?}");
            if raw.windows(7).any(|w| w == b"given-1") {
                assert_eq!(id, ["given-1"], "{what}");
            }
        }
    }
    gw.shutdown().await;
    // A reset mid-response.
    let upstream = FixedUpstream::start(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").await;
    let gw = Gateway::start(&config("", &[("v1", 1, upstream.addr)])).await;
    let response = exchange(gw.addr, Path::Own, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let response = response.expect("a response");
    assert_eq!(response.status, 502);
    assert_eq!(response.text(), "502 upstream connection failed\n");
    assert!(!response.text().contains("127.0.0.1"));
    gw.shutdown().await;
}

/// An upstream that accepts requests and never answers; counts request
/// heads and closes a connection when the gateway closes it.
async fn silent_upstream() -> (SocketAddr, Arc<AtomicU64>, ServerTask) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(AtomicU64::new(0));
    let counter = heads.clone();
    let task = serve_connections(listener, move |mut stream| {
        let counter = counter.clone();
        async move {
            let mut buf = Vec::new();
            if read_head(&mut stream, &mut buf).await.is_some() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            let mut rest = [0u8; 1024];
            while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
        }
    });
    (addr, heads, task)
}

/// Requests cancelled before their response head (h2 stream resets) give
/// their endpoint's outstanding count back: after 1,000 of them the count is
/// zero, or power of two choices would shun the endpoint for good.
#[tokio::test]
async fn cancelled_requests_give_their_endpoint_count_back() {
    let (addr, heads, _upstream) = silent_upstream().await;
    let gw = Gateway::start(&config("", &[("v1", 1, addr)])).await;
    let sender = h2c_client(gw.addr).await;
    let outstanding = || {
        let status = gw.running.as_ref().unwrap().control.status();
        status.versions[0].endpoints[0].outstanding
    };
    let mut sent = 0;
    for _ in 0..10 {
        let tasks = spawn_h2_gets(&sender, gw.addr, 100);
        sent += 100;
        let arrived = eventually(Duration::from_secs(20), async || {
            heads.load(Ordering::SeqCst) >= sent
        });
        assert!(
            arrived.await,
            "{} of {sent} requests arrived",
            heads.load(Ordering::SeqCst)
        );
        assert!(outstanding() >= 100);
        for task in tasks {
            task.abort();
        }
    }
    let back = eventually(Duration::from_secs(10), async || outstanding() == 0).await;
    assert!(
        back,
        "{} requests still counted after 1,000 were cancelled",
        outstanding()
    );
    gw.shutdown().await;
}

/// Requests whose clients give up before any answer (a stream reset on
/// HTTP/2, a closed connection on hyper's HTTP/1 server) while the
/// upstream still thinks were never answered: no status class of
/// `canary_requests_total` counts them (not as 2xx, which would make a
/// hanging canary look healthy), `canary_client_errors_total{kind="aborted"}`
/// does; the request-duration histogram has their time.
#[tokio::test]
async fn requests_abandoned_before_any_answer_count_under_no_status() {
    let (addr, heads, _upstream) = silent_upstream().await;
    let gw = Gateway::start(&config("", &[("hangs", 1, addr)])).await;
    let aborted = [("kind", "aborted")];
    let aborted_before = metric(&gw, "canary_client_errors_total", &aborted).await;
    let arrived = async |n: u64| {
        let arrived = eventually(Duration::from_secs(10), async || {
            heads.load(Ordering::SeqCst) >= n
        });
        assert!(
            arrived.await,
            "{} of {n} arrived",
            heads.load(Ordering::SeqCst)
        );
    };
    // HTTP/2: streams reset.
    let sender = h2c_client(gw.addr).await;
    let tasks = spawn_h2_gets(&sender, gw.addr, 5);
    arrived(5).await;
    for task in tasks {
        task.abort();
    }
    // HTTP/1 on hyper's server (`TE: trailers`): the connection closed.
    for i in 0..3 {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        let get = b"GET /slow HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n";
        stream.write_all(get).await.unwrap();
        arrived(6 + i).await;
        drop(stream);
    }
    // Each ended request is in the duration histogram, recorded where its
    // status class would be.
    let hangs = [("version", "hangs")];
    let ended = metric_reaches(&gw, "canary_request_duration_seconds_count", &hangs, 8.0);
    assert!(ended.await, "{}", metrics(&gw).await);
    let text = metrics(&gw).await;
    let answered = metric_value(&text, "canary_requests_total", &hangs);
    assert_eq!(answered, 0.0, "{text}");
    let counted = metric_reaches(
        &gw,
        "canary_client_errors_total",
        &aborted,
        aborted_before + 8.0,
    );
    assert!(counted.await, "{}", metrics(&gw).await);
    gw.shutdown().await;
}

/// Held by the tests that read the body-stall counters (process-wide) and
/// assert what did not change.
static STALL_COUNTERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `[timeouts] body_stall`: an upstream that stops mid-body, a client that
/// stops reading its response, a client that stops sending its upload: each
/// ends the request after the stall time and is counted.
#[tokio::test]
async fn stalled_bodies_end_the_request() {
    let _counters = STALL_COUNTERS.lock().await;
    // The upstream sends half its body and then nothing.
    let half = FixedUpstream::start(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf").await;
    let big = Upstream::start("big").await;
    let recorder = Recorder::start().await;
    let text = config(
        "",
        &[
            ("up", 1, recorder.addr),
            ("half", 0, half.addr),
            ("big", 0, big.addr),
        ],
    ) + "\n[timeouts]\nbody_stall = \"400ms\"\n";
    let text = text.replace("[split]\n", "[split]\noverride_header = \"x-version\"\n");
    let gw = Gateway::start(&text).await;
    let mut count = metric(&gw, "canary_body_stalls_total", &[]).await;
    let client_stalls = [("kind", "body_stall")];
    let clients_before = metric(&gw, "canary_client_errors_total", &client_stalls).await;
    for path in PATHS {
        let (mut stream, mut buf) = connect(gw.addr, path).await;
        let get = b"GET / HTTP/1.1\r\nHost: h\r\nX-Version: half\r\n\r\n";
        stream.write_all(get).await.unwrap();
        let head = read_head(&mut stream, &mut buf).await;
        assert!(
            head.is_some_and(|h| h.starts_with("HTTP/1.1 200")),
            "{path:?}"
        );
        let rest = read_to_close(&mut stream, Duration::from_secs(10)).await;
        assert!(
            rest.is_some(),
            "{path:?}: an upstream stalled mid-body held the connection"
        );
        count += 1.0;
        assert!(
            eventually(Duration::from_secs(5), async || metric(
                &gw,
                "canary_body_stalls_total",
                &[]
            )
            .await
                >= count)
            .await
        );
    }
    // An upstream that stopped is not the client's error: its version's
    // (an upstream timeout and a 5xx each, whatever the head said).
    assert_eq!(
        metric(&gw, "canary_client_errors_total", &client_stalls).await,
        clients_before
    );
    let stalled = PATHS.len() as f64;
    assert_eq!(
        version_timeouts_and_5xx(&gw, "half", (stalled, stalled)).await,
        (stalled, stalled)
    );
    // The client stops reading a large response: chunked, and with a
    // length (on the own server, relayed through the thread's buffer). The client's
    // error, as on HTTP/2.
    let mut clients = clients_before;
    for (path, query) in PATHS.into_iter().flat_map(|p| [(p, ""), (p, "&length=1")]) {
        let (mut stream, _) = connect(gw.addr, path).await;
        let get = format!(
            "GET /download?bytes=268435456{query} HTTP/1.1\r\nHost: h\r\nX-Version: big\r\n\r\n"
        );
        stream.write_all(get.as_bytes()).await.unwrap();
        count += 1.0;
        let ended = eventually(Duration::from_secs(10), async || {
            metric(&gw, "canary_body_stalls_total", &[]).await >= count
        });
        assert!(
            ended.await,
            "{path:?} {query}: a client that stopped reading held the request"
        );
        clients += 1.0;
        assert!(
            metric(&gw, "canary_client_errors_total", &client_stalls).await >= clients,
            "{path:?} {query}: a client that stopped reading is the client's error"
        );
    }
    // The client stops sending its upload: 408, the client's error.
    let before = metric(&gw, "canary_client_errors_total", &[("kind", "body_stall")]).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(
            b"POST /up HTTP/1.1\r\nHost: h\r\nX-Version: up\r\nContent-Length: 10\r\n\r\nabc",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    let response = read_response(&mut stream, &mut buf, false).await;
    assert_eq!(response.map(|r| r.status), Some(408));
    assert!(metric(&gw, "canary_client_errors_total", &[("kind", "body_stall")]).await > before);
    assert_no_version_errors(&gw, "up").await;
    gw.shutdown().await;
}

/// `[timeouts] body_stall` per HTTP/2 stream (the connection's pings and
/// other streams keep its socket busy): a client that stops reading its
/// response (its window exhausted) and an upstream that stops mid-body
/// each end their stream (reset) after the stall time, are counted, and
/// drop their upstream connection; only the first is the client's error.
/// The connection keeps serving other streams.
#[tokio::test]
async fn stalled_http2_streams_are_reset() {
    let _counters = STALL_COUNTERS.lock().await;
    // More than the client's window and every socket buffer on the way hold.
    let size = 32 << 20;
    let mut big = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n").into_bytes();
    big.resize(big.len() + size, b'x');
    let big = FixedUpstream::start(Vec::leak(big)).await;
    let half = FixedUpstream::start(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf").await;
    let text = config("", &[("h2half", 1, half.addr), ("h2big", 0, big.addr)])
        + "\n[timeouts]\nbody_stall = \"400ms\"\n";
    let text = text.replace("[split]\n", "[split]\noverride_header = \"x-version\"\n");
    let gw = Gateway::start(&text).await;
    let mut sender = h2c_client(gw.addr).await;
    let get = |version: &str| {
        http::Request::get(format!("http://{}/", gw.addr))
            .header("x-version", version)
            .body(Empty::new())
            .unwrap()
    };
    let stalls = "canary_body_stalls_total";
    let client_stall = [("kind", "body_stall")];

    // The client stops reading.
    let (count, client) = (
        metric(&gw, stalls, &[]).await,
        metric(&gw, "canary_client_errors_total", &client_stall).await,
    );
    let response = sender.send_request(get("h2big")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        metric_reaches(&gw, stalls, &[], count + 1.0).await,
        "a client that stopped reading held its stream"
    );
    let client_errors = metric(&gw, "canary_client_errors_total", &client_stall).await;
    assert!(
        client_errors > client,
        "a client not reading is the client's error"
    );
    let read = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect()).await;
    let read = read.expect("the stalled stream was not reset");
    assert!(read.is_err(), "the stalled stream ended as if complete");
    let dropped = eventually(Duration::from_secs(10), async || {
        big.closed.load(Ordering::SeqCst) == 1
    });
    assert!(
        dropped.await,
        "the upstream connection of the stalled stream was kept"
    );

    // The upstream stops mid-body: not the client's fault.
    let (count, client) = (
        metric(&gw, stalls, &[]).await,
        metric(&gw, "canary_client_errors_total", &client_stall).await,
    );
    let response = sender.send_request(get("h2half")).await.unwrap();
    assert_eq!(response.status(), 200);
    let read = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect()).await;
    let read = read.expect("an upstream stalled mid-body held the stream");
    assert!(read.is_err(), "half a body ended as if complete");
    assert!(metric(&gw, stalls, &[]).await > count);
    assert_eq!(
        metric(&gw, "canary_client_errors_total", &client_stall).await,
        client,
        "an upstream stopping was counted as the client's error"
    );
    let dropped = eventually(Duration::from_secs(10), async || {
        half.closed.load(Ordering::SeqCst) == 1
    });
    assert!(
        dropped.await,
        "the upstream connection of the stalled stream was kept"
    );
    // The version's failure; the client that stopped reading was not.
    assert_eq!(
        version_timeouts_and_5xx(&gw, "h2half", (1.0, 1.0)).await,
        (1.0, 1.0)
    );
    assert_no_version_errors(&gw, "h2big").await;

    // The connection still serves other streams.
    let response = sender.send_request(get("h2half")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(half.connections.load(Ordering::SeqCst), 2);
    gw.shutdown().await;
}

/// An HTTP/2 stream whose upload still moves is no stall while its
/// response body waits: an upstream that answers its head at once and its
/// body at the end of a slow upload gets it whole. An upload that stops
/// there is the client's stall.
#[tokio::test]
async fn http2_uploads_that_move_keep_their_stream() {
    use crate::support::ChannelBody;
    // Head at once, body once the whole chunked upload has arrived.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _upstream = serve_connections(listener, |mut stream| async move {
        let mut buf = Vec::new();
        while read_head(&mut stream, &mut buf).await.is_some() {
            let head = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n";
            stream.write_all(head).await.unwrap();
            let mut chunk = [0u8; 4096];
            while !buf.ends_with(b"0\r\n\r\n") {
                match stream.read(&mut chunk).await {
                    Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            }
            buf.clear();
            stream.write_all(b"done").await.unwrap();
        }
    });
    let text = config("", &[("h2up", 1, addr)]) + "\n[timeouts]\nbody_stall = \"400ms\"\n";
    let gw = Gateway::start(&text).await;
    let mut sender = h2c_client_for(gw.addr).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let req = http::Request::post(format!("http://{}/", gw.addr))
        .body(ChannelBody(rx))
        .unwrap();
    // Three times the stall time in all, a piece every 150 ms.
    tokio::spawn(async move {
        for _ in 0..8 {
            let piece = http_body::Frame::data(bytes::Bytes::from_static(b"piece"));
            if tx.send(Ok(piece)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    let read = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect()).await;
    let body = read
        .expect("no answer")
        .expect("the stream was reset while its upload moved");
    assert_eq!(body.to_bytes(), "done");

    // The client stops sending its upload after the response head: its
    // error, and the stream is reset.
    let _counters = STALL_COUNTERS.lock().await;
    let client_stall = [("kind", "body_stall")];
    let before = metric(&gw, "canary_client_errors_total", &client_stall).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let req = http::Request::post(format!("http://{}/", gw.addr))
        .body(ChannelBody(rx))
        .unwrap();
    let piece = http_body::Frame::data(bytes::Bytes::from_static(b"piece"));
    tx.send(Ok(piece)).await.unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    let read = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect()).await;
    assert!(read.expect("a stalled upload held its stream").is_err());
    assert!(metric(&gw, "canary_client_errors_total", &client_stall).await > before);
    drop(tx);
    gw.shutdown().await;
}

/// `n` GETs of `/` on the HTTP/2 connection `sender`, each in its own task.
fn spawn_h2_gets(
    sender: &hyper::client::conn::http2::SendRequest<Empty<bytes::Bytes>>,
    addr: SocketAddr,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<(), hyper::Error>>> {
    (0..n)
        .map(|_| {
            let mut sender = sender.clone();
            let req = http::Request::get(format!("http://{addr}/"))
                .body(Empty::new())
                .unwrap();
            tokio::spawn(async move { sender.send_request(req).await.map(|_| ()) })
        })
        .collect()
}

/// An upload the client stops sending on a connection hyper's server serves
/// (`TE: trailers`) ends at about `body_stall`, not up to twice that: the
/// quiet time was counted in ticks of the shorter of `body_stall` and
/// `upstream_response` (here 2 s and 1.2 s: cut at 3.6 s, now by 2.5 s).
#[tokio::test]
async fn a_stalled_upload_on_hyper_s_server_ends_at_about_body_stall() {
    let _counters = STALL_COUNTERS.lock().await;
    let recorder = Recorder::start().await;
    let text = config("", &[("up", 1, recorder.addr)])
        + "\n[timeouts]\nbody_stall = \"2s\"\nupstream_response = \"1200ms\"\n";
    let gw = Gateway::start(&text).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let started = std::time::Instant::now();
    stream
        .write_all(b"POST /up HTTP/1.1\r\nHost: h\r\nTE: trailers\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let response = read_response(&mut stream, &mut buf, false).await;
    let took = started.elapsed();
    assert_eq!(response.map(|r| r.status), Some(408));
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "cut after {took:?} for a body_stall of 2 s"
    );
    gw.shutdown().await;
}
