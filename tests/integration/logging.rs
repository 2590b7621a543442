//! What the data path logs: an upstream outage fails every request, and
//! must not write a warn line for each (thousands a second would flood the
//! log): the per-request detail goes to debug with the request id, the
//! warn line is rate-limited. Nor may a dependency's warning about what
//! one client sent (rustls').

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use bytes::Bytes;
use http_body_util::Full;

use crate::support::{
    Captured, Client, FixedUpstream, Gateway, capture, config, dead_addr, eventually,
    h2c_client_for, serve_connections,
};

/// 300 requests to two versions whose only endpoints refuse connections:
/// 300 502s, each logged at debug with its request id, and at most one
/// warn line per second for each version (one version's outage does not
/// hide the other's failures); each endpoint's ejection is warned once (it
/// is ejected for 5 s at first).
#[tokio::test]
async fn an_outage_does_not_flood_the_log() {
    // The test runtime has one thread: the gateway's tasks log here too.
    let (captured, _guard) = capture(tracing::Level::DEBUG);
    let versions = [
        ("down-a", 1, dead_addr().await),
        ("down-b", 1, dead_addr().await),
    ];
    let gw = Gateway::start(&config("", &versions)).await;
    let started = Instant::now();
    let mut client = Client::connect(gw.addr).await;
    let requests = 300;
    for _ in 0..requests {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!(reply.status, 502);
    }
    let seconds = started.elapsed().as_secs() as usize;
    gw.shutdown().await;
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let failed: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("request failed"))
        .collect();
    let warned = failed.iter().filter(|l| l.contains(" WARN ")).count();
    for (name, _, _) in versions {
        let field = format!("version={name} ");
        let lines = failed
            .iter()
            .filter(|l| l.contains(" WARN ") && l.contains(&field))
            .count();
        assert!(
            (1..=seconds + 1).contains(&lines),
            "{lines} warn lines for {name} in {seconds} s:\n{text}"
        );
    }
    // The endpoint is ejected after 3 failures; those while it is ejected
    // (it stays its version's only one, still tried) do not count: a warn
    // line per ejection, at most one per ejection period.
    let ejected = text
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("endpoint ejected"))
        .count();
    assert!(
        (2..=2 * (1 + seconds / 5)).contains(&ejected),
        "{ejected} ejection warn lines in {seconds} s"
    );
    let detailed = failed
        .iter()
        .filter(|l| l.contains("DEBUG") && l.contains("request_id="))
        .count();
    assert_eq!(detailed + warned, requests, "{text}");
}

/// An upstream that reads each request and never answers: how many
/// requests reached it, and the heads it read (in their order).
struct SilentUpstream {
    addr: std::net::SocketAddr,
    arrived: Arc<AtomicU64>,
    heads: Arc<Mutex<Vec<String>>>,
    _task: crate::support::ServerTask,
}

impl SilentUpstream {
    async fn start() -> SilentUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let arrived = Arc::new(AtomicU64::new(0));
        let counter = arrived.clone();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let got = heads.clone();
        let task = serve_connections(listener, move |mut stream| {
            let (counter, got) = (counter.clone(), got.clone());
            async move {
                let mut buf = [0u8; 4096];
                if let Ok(n @ 1..) = stream.read(&mut buf).await {
                    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                    got.lock().unwrap().push(head);
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            }
        });
        SilentUpstream {
            addr,
            arrived,
            heads,
            _task: task,
        }
    }

    /// The `x-request-id` of the request that reached it for `path`.
    fn id_for(&self, path: &str) -> String {
        let heads = self.heads.lock().unwrap();
        let head = heads
            .iter()
            .find(|h| h.contains(&format!(" {path} HTTP/1.1")));
        let id = head.and_then(|h| h.lines().find_map(|l| l.strip_prefix("x-request-id: ")));
        id.unwrap_or_default().to_string()
    }

    /// Waits until `n` requests have reached it.
    async fn reached(&self, n: u64) -> bool {
        eventually(Duration::from_secs(10), async || {
            self.arrived.load(Ordering::SeqCst) == n
        })
        .await
    }
}

/// The access log lines `captured` holds for `version`.
fn access_lines(captured: &Captured, version: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    let field = format!("version={version} ");
    text.lines()
        .filter(|l| l.contains("access") && l.contains(&field))
        .map(str::to_string)
        .collect()
}

/// A request whose client closed its connection before any answer (the
/// upstream still thinking) is logged with nginx's 499, "client closed
/// request": it was never answered, least of all with a 200.
#[tokio::test]
async fn a_request_its_client_gave_up_on_is_logged_as_499() {
    // The test runtime has one thread: the gateway's tasks log here too.
    let (captured, _guard) = capture(tracing::Level::INFO);
    let upstream = SilentUpstream::start().await;
    let text = config("", &[("gave-up", 1, upstream.addr)]) + "\n[log]\naccess_log = true\n";
    let gw = Gateway::start(&text).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    // `TE: trailers`: hyper's server, which sees the client close.
    let get = b"GET /slow HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n";
    stream.write_all(get).await.unwrap();
    assert!(upstream.reached(1).await);
    drop(stream);
    let logged = eventually(Duration::from_secs(10), async || {
        !access_lines(&captured, "gave-up").is_empty()
    });
    assert!(logged.await, "no access log line");
    let line = access_lines(&captured, "gave-up").concat();
    assert!(line.contains(" status=499 "), "{line}");
    assert!(line.contains(" complete=false"), "{line}");
    // Dropped while the upstream thought, it still names its request.
    let id = upstream.id_for("/slow");
    assert!(!id.is_empty(), "{:?}", upstream.heads);
    assert!(line.contains(&format!(" request_id=\"{id}\" ")), "{line}");
    assert!(line.contains(" path=\"/slow\" "), "{line}");
    assert!(
        line.contains(&format!(" upstream={} ", upstream.addr)),
        "{line}"
    );
    gw.shutdown().await;
}

/// Requests the shutdown's grace cut while their upstream still thought
/// are logged with 444, not as a client that went away (499), on both
/// HTTP/1.1 servers (the own one, and hyper's for `TE: trailers`) and over
/// h2c; each line names the id the upstream got and its endpoint (the
/// request's future is dropped: they are noted as its head goes up).
#[tokio::test]
async fn a_request_the_shutdown_cut_is_logged_as_444() {
    let (captured, _guard) = capture(tracing::Level::INFO);
    let upstream = SilentUpstream::start().await;
    let text = config("", &[("cut", 1, upstream.addr)])
        + "\n[log]\naccess_log = true\n[timeouts]\nshutdown_grace = \"300ms\"\n";
    let gw = Gateway::start(&text).await;
    let mut clients = Vec::new();
    for (i, extra) in ["", "TE: trailers\r\n"].into_iter().enumerate() {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        let get = format!("GET /cut-{i} HTTP/1.1\r\nHost: h\r\n{extra}\r\n");
        stream.write_all(get.as_bytes()).await.unwrap();
        assert!(upstream.reached(i as u64 + 1).await);
        clients.push(stream);
    }
    // Over h2c, without a body (the own client) and with one (hyper's).
    let h2 = crate::support::h2c_client_for::<Full<Bytes>>(gw.addr).await;
    let mut streams = Vec::new();
    for (i, body) in ["", "a body"].into_iter().enumerate() {
        let path = format!("/cut-h2-{i}");
        let req = http::Request::post(format!("http://h{path}"))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        streams.push(tokio::spawn(h2.clone().send_request(req)));
        assert!(upstream.reached(i as u64 + 3).await);
    }
    // Logged by the time the shutdown is over (the process then exits).
    gw.shutdown().await;
    let lines = access_lines(&captured, "cut");
    assert_eq!(lines.len(), 4, "{lines:?}");
    for line in &lines {
        assert!(line.contains(" status=444 "), "{line}");
        assert!(line.contains(" complete=false"), "{line}");
        assert!(
            line.contains(&format!(" upstream={} ", upstream.addr)),
            "{line}"
        );
    }
    for path in ["/cut-0", "/cut-1", "/cut-h2-0", "/cut-h2-1"] {
        let id = upstream.id_for(path);
        assert!(!id.is_empty(), "{path}: {:?}", upstream.heads);
        let line = lines
            .iter()
            .find(|l| l.contains(&format!(" path=\"{path}\" ")));
        let line = line.cloned().unwrap_or_default();
        assert!(line.contains(&format!(" request_id=\"{id}\" ")), "{line}");
    }
    for stream in streams {
        let answer = stream.await.unwrap();
        assert!(answer.is_err(), "{answer:?}");
    }
    // The clients were not answered: their connections were closed.
    for mut stream in clients {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest));
        assert!(matches!(read.await, Ok(Ok(0)) | Ok(Err(_))), "{rest:?}");
    }
}

/// What a warning from rustls and one of the gateway's own leave in the
/// log under the gateway's filter made from `env` (RUST_LOG) and `level`.
fn logged(env: Option<&str>, level: &str) -> String {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(canary_gateway::telemetry::log_filter(env, level))
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        tracing::warn!(target: "rustls::msgs::handshake", "Illegal SNI extension");
        tracing::error!(target: "rustls::conn", "a rustls error");
        tracing::warn!(target: "canary_gateway::proxy", "the gateway's own");
    });
    let text = out.0.lock().unwrap().clone();
    String::from_utf8(text).unwrap()
}

/// rustls' warnings are about what one peer sent (an IP address as SNI, an
/// alert), a line per connection: held back unless the filter names rustls.
#[test]
fn rustls_warnings_about_a_peer_are_held_back_unless_asked_for() {
    for (env, level) in [
        (None, "info"),
        (None, "debug"),
        (Some("warn"), "info"),
        (Some("not a filter=="), "info"),
    ] {
        let text = logged(env, level);
        assert!(
            text.contains("the gateway's own"),
            "{env:?} {level}: {text}"
        );
        assert!(text.contains("a rustls error"), "{env:?} {level}: {text}");
        assert!(!text.contains("Illegal SNI"), "{env:?} {level}: {text}");
    }
    // Named in RUST_LOG or in the configured level: as asked.
    assert!(logged(Some("info,rustls=warn"), "info").contains("Illegal SNI"));
    assert!(logged(None, "info,rustls=warn").contains("Illegal SNI"));
    // A level that does not parse falls back to info.
    assert!(logged(None, "x=notalevel").contains("the gateway's own"));
}

/// A rollback on the file store is written to this task's state file: the
/// audit line says so, not "the store" of a fleet.
#[tokio::test]
async fn a_rollback_on_the_file_store_names_the_state_file_in_the_log() {
    use crate::support::{Upstream, admin, gateway_with_token};
    const TOKEN: &str = "logging-test-token";

    // The test runtime has one thread: the gateway's tasks log here too.
    let (captured, _guard) = capture(tracing::Level::INFO);
    let (v1, v2) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let (gw, _secrets) =
        gateway_with_token(&[("v1", 90, v1.addr), ("v2", 10, v2.addr)], TOKEN).await;
    let reply = admin(gw.admin, "POST", "/rollback", Some(TOKEN), "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    gw.shutdown().await;
    let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("rollback applied on this task"))
        .unwrap_or_default();
    assert!(
        line.contains(" WARN ") && line.contains("writing it to the state file"),
        "{text}"
    );
}

/// Each access log line names the request's path (without the query) and
/// its id: the client's `x-request-id` when it sent one, else the one the
/// gateway generated, the same the upstream got and an error answer
/// carries; on the own server, on hyper's and for the gateway's own 502.
#[tokio::test]
async fn access_log_lines_carry_the_request_id_and_path() {
    // The test runtime has one thread: the gateway's tasks log here too.
    let (captured, _guard) = capture(tracing::Level::INFO);
    let echo = crate::support::EchoHeadUpstream::start("").await;
    let versions = [("echo", 1, echo.addr), ("down", 0, dead_addr().await)];
    let text =
        config("override_header = \"x-force\"\n", &versions) + "\n[log]\naccess_log = true\n";
    let gw = Gateway::start(&text).await;
    let mut client = Client::connect(gw.addr).await;
    let access_lines = || {
        let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
        text.lines()
            .filter(|l| l.contains(" access: "))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let id_sent_up = |body: &[u8]| {
        let head = String::from_utf8_lossy(body).into_owned();
        head.lines()
            .find_map(|l| l.strip_prefix("x-request-id: ").map(str::to_string))
            .unwrap_or_default()
    };
    let cases: [(&str, &[(&str, &str)]); 4] = [
        // The own server, the client's id.
        ("/own/given?secret=1", &[("x-request-id", "client-id-1")]),
        // The own server, an id of the gateway's.
        ("/own/generated?secret=1", &[]),
        // hyper's server (asks for trailers), an id of the gateway's.
        ("/hyper/generated?secret=1", &[("te", "trailers")]),
        // The gateway's own 502: its id is in the answer.
        ("/down?secret=1", &[("x-force", "down")]),
    ];
    for (i, (target, headers)) in cases.iter().enumerate() {
        let reply = client.get(target, headers).await.unwrap();
        let id = if reply.status == 502 {
            reply.headers["x-request-id"].to_str().unwrap().to_string()
        } else {
            assert_eq!(reply.status, 200);
            id_sent_up(&reply.body)
        };
        assert!(!id.is_empty(), "{target}: no id");
        if let Some((_, given)) = headers.iter().find(|(k, _)| *k == "x-request-id") {
            assert_eq!(&id, given);
        }
        let logged = eventually(Duration::from_secs(10), async || access_lines().len() > i);
        assert!(logged.await, "no access log line for {target}");
        let line = access_lines()[i].clone();
        let path = target.split('?').next().unwrap_or_default();
        assert!(
            line.contains(&format!(" path=\"{path}\" ")),
            "{target}: {line}"
        );
        assert!(
            line.contains(&format!(" request_id=\"{id}\" ")),
            "{target}: {line}"
        );
        assert!(!line.contains("secret"), "{line}");
    }
    gw.shutdown().await;
}

/// A blank `x-request-id` (empty, or spaces) is no id: the gateway makes
/// one in its place, the one the upstream gets, the access log names and
/// an error answer carries; on the own server, on hyper's (HTTP/1.1 and
/// h2c) and for the gateway's own 502.
#[tokio::test]
async fn a_blank_request_id_is_replaced_by_a_generated_one() {
    // The test runtime has one thread: the gateway's tasks log here too.
    let (captured, _guard) = capture(tracing::Level::INFO);
    let echo = crate::support::EchoHeadUpstream::start("").await;
    let versions = [("echo", 1, echo.addr), ("down", 0, dead_addr().await)];
    let text =
        config("override_header = \"x-force\"\n", &versions) + "\n[log]\naccess_log = true\n";
    let gw = Gateway::start(&text).await;
    let access_lines = || {
        let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
        text.lines()
            .filter(|l| l.contains(" access: "))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    // The id the upstream got: its one x-request-id line.
    let id_sent_up = |body: &[u8]| {
        let head = String::from_utf8_lossy(body).to_ascii_lowercase();
        let ids: Vec<String> = head
            .lines()
            .filter_map(|l| {
                l.strip_prefix("x-request-id:")
                    .map(|v| v.trim().to_string())
            })
            .collect();
        assert_eq!(ids.len(), 1, "{head}");
        ids[0].clone()
    };
    let mut client = Client::connect(gw.addr).await;
    let mut h2 = crate::support::h2c_client(gw.addr).await;
    // Targets under /h2/ go over h2c.
    let cases: [(&str, &[(&str, &str)]); 7] = [
        // The own server.
        ("/own/empty", &[("x-request-id", "")]),
        ("/own/spaces", &[("x-request-id", "   ")]),
        // hyper's server (asks for trailers).
        ("/hyper/empty", &[("x-request-id", ""), ("te", "trailers")]),
        // The gateway's own 502.
        ("/own/down", &[("x-request-id", ""), ("x-force", "down")]),
        // h2c: values come untrimmed.
        ("/h2/empty", &[("x-request-id", "")]),
        ("/h2/spaces", &[("x-request-id", " \t ")]),
        ("/h2/down", &[("x-request-id", " "), ("x-force", "down")]),
    ];
    for (i, (target, headers)) in cases.iter().enumerate() {
        let (status, id) = if target.starts_with("/h2/") {
            let mut req = http::Request::get(format!("http://a{target}"));
            for (k, v) in *headers {
                req = req.header(*k, *v);
            }
            let req = req.body(http_body_util::Empty::new()).unwrap();
            let resp = h2.send_request(req).await.unwrap();
            let status = resp.status();
            let header = resp.headers().get("x-request-id").cloned();
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            match status.as_u16() {
                502 => (502, header.unwrap().to_str().unwrap().to_string()),
                _ => (status.as_u16(), id_sent_up(&body)),
            }
        } else {
            let reply = client.get(target, headers).await.unwrap();
            match reply.status.as_u16() {
                502 => (502, reply.header("x-request-id").unwrap().to_string()),
                status => (status, id_sent_up(&reply.body)),
            }
        };
        let want = if target.ends_with("down") { 502 } else { 200 };
        assert_eq!(status, want, "{target}");
        assert_eq!(id.len(), 36, "{target}: {id:?} is no generated id");
        let logged = eventually(Duration::from_secs(10), async || access_lines().len() > i);
        assert!(logged.await, "no access log line for {target}");
        let line = access_lines()[i].clone();
        assert!(line.contains(&format!(" path=\"{target}\" ")), "{line}");
        assert!(
            line.contains(&format!(" request_id=\"{id}\" ")),
            "{target}: {line}"
        );
    }
    gw.shutdown().await;
}

/// A 502 or 504 from an upstream names the endpoint that failed, in the
/// `request failed` line (warn, or debug past the first a second) and in
/// the access line: with several tasks behind a version, the one that
/// hangs or resets must be found. Over HTTP/1.1 (the own server and
/// client, without a body and with one) and h2c (the own client without a
/// body, hyper's with one).
#[tokio::test]
async fn a_failed_request_names_its_endpoint_in_the_log() {
    // The test runtime has one thread: the gateway's tasks log here too.
    let (captured, _guard) = capture(tracing::Level::DEBUG);
    let hangs = SilentUpstream::start().await;
    // Reads the request head and closes the connection.
    let closes = FixedUpstream::scripted(|_| None).await;
    let versions = [("hangs", 1, hangs.addr), ("closes", 0, closes.addr)];
    let text = config("override_header = \"x-force\"\n", &versions)
        + "\n[log]\naccess_log = true\n[timeouts]\nupstream_response = \"300ms\"\n";
    let gw = Gateway::start(&text).await;
    let h2 = h2c_client_for::<Full<Bytes>>(gw.addr).await;
    let log = || String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    for (version, addr, status) in [("hangs", hangs.addr, 504), ("closes", closes.addr, 502)] {
        let force = [("x-force", version)];
        let mut ids = Vec::new();
        for body in ["", "a body"] {
            let method = if body.is_empty() { "GET" } else { "POST" };
            let reply = crate::support::send(gw.addr, method, "/h1", &force, body).await;
            assert_eq!(reply.status, status, "{version} {method} over HTTP/1.1");
            ids.push(reply.header("x-request-id").unwrap_or_default().to_string());
            let req = http::Request::post("http://h/h2")
                .header("x-force", version)
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let resp = h2.clone().send_request(req).await.unwrap();
            assert_eq!(resp.status(), status, "{version} {body:?} over h2c");
            let id = resp
                .headers()
                .get("x-request-id")
                .map(|v| v.to_str().unwrap());
            ids.push(id.unwrap_or_default().to_string());
        }
        let field = format!(" upstream={addr} ");
        for id in ids {
            assert!(!id.is_empty(), "{version}: no id");
            let request_id = format!(" request_id=\"{id}\" ");
            let lines = async |what: &str| {
                let found = eventually(Duration::from_secs(10), async || {
                    log()
                        .lines()
                        .any(|l| l.contains(what) && l.contains(&request_id))
                });
                assert!(found.await, "no {what} line for {id}:\n{}", log());
                let text = log();
                let line = text
                    .lines()
                    .find(|l| l.contains(what) && l.contains(&request_id));
                line.unwrap_or_default().to_string()
            };
            let failed = lines("request failed").await;
            assert!(failed.contains(&field), "{failed}");
            let access = lines(" access: ").await;
            assert!(access.contains(&field), "{access}");
            assert!(access.contains(&format!(" status={status} ")), "{access}");
        }
    }
    gw.shutdown().await;
}

/// A client's huge `x-request-id` goes upstream whole, but the access log
/// writes its first 128 bytes, marked `...(cut)`; an id with a tab or bytes
/// that are no UTF-8 stays on its one line (escaped, or replaced).
#[tokio::test]
async fn a_huge_or_odd_request_id_is_logged_cut_and_on_one_line() {
    let (captured, _guard) = capture(tracing::Level::INFO);
    let echo = crate::support::EchoHeadUpstream::start("").await;
    let text = config("", &[("echo", 1, echo.addr)]) + "\n[log]\naccess_log = true\n";
    let gw = Gateway::start(&text).await;
    let huge = "i".repeat(60_000);
    let cases: [(&[u8], &str); 3] = [
        (
            huge.as_bytes(),
            &format!(" request_id=\"{}...(cut)\" ", &huge[..128]),
        ),
        (b"a\tb\"c", r#" request_id="a\tb\"c" "#),
        (b"id-\xff", " request_id=\"id-\u{fffd}\" "),
    ];
    for (i, (id, logged)) in cases.iter().enumerate() {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        let mut request =
            b"GET /id HTTP/1.1\r\nHost: h\r\nConnection: close\r\nx-request-id: ".to_vec();
        request.extend_from_slice(id);
        request.extend_from_slice(b"\r\n\r\n");
        stream.write_all(&request).await.unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.unwrap();
        assert!(
            reply.starts_with(b"HTTP/1.1 200"),
            "{i}: {}",
            String::from_utf8_lossy(&reply)
        );
        // The upstream got the id whole (the echo's head is text: checked
        // for the UTF-8 ones).
        let mut up = b"x-request-id: ".to_vec();
        up.extend_from_slice(id);
        assert!(
            std::str::from_utf8(id).is_err() || reply.windows(up.len()).any(|w| w == up),
            "{i}: id not sent up whole"
        );
        let access = async || {
            let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
            text.lines().filter(|l| l.contains(" access: ")).count() > i
        };
        assert!(
            eventually(Duration::from_secs(10), access).await,
            "{i}: no line"
        );
        let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
        let line = text
            .lines()
            .filter(|l| l.contains(" access: "))
            .nth(i)
            .unwrap()
            .to_string();
        assert!(line.contains(logged), "{i}: {line}");
        assert!(line.len() < 1024, "{i}: {} bytes", line.len());
    }
    gw.shutdown().await;
}
