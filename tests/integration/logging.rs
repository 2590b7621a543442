//! What the data path logs: an upstream outage fails every request, and
//! must not write a warn line for each (thousands a second would flood the
//! log): the per-request detail goes to debug with the request id, the
//! warn line is rate-limited. Nor may a dependency's warning about what
//! one client sent (rustls').

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Client, Gateway, config, dead_addr, eventually, serve_connections};

/// A log sink for the test's thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What this thread logs at `level` and above, until the guard drops.
fn capture(level: tracing::Level) -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

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
/// requests reached it, and the last head it read.
struct SilentUpstream {
    addr: std::net::SocketAddr,
    arrived: Arc<AtomicU64>,
    head: Arc<Mutex<String>>,
    _task: crate::support::ServerTask,
}

impl SilentUpstream {
    async fn start() -> SilentUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let arrived = Arc::new(AtomicU64::new(0));
        let counter = arrived.clone();
        let head = Arc::new(Mutex::new(String::new()));
        let got = head.clone();
        let task = serve_connections(listener, move |mut stream| {
            let (counter, got) = (counter.clone(), got.clone());
            async move {
                let mut buf = [0u8; 4096];
                if let Ok(n @ 1..) = stream.read(&mut buf).await {
                    *got.lock().unwrap() = String::from_utf8_lossy(&buf[..n]).into_owned();
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            }
        });
        SilentUpstream {
            addr,
            arrived,
            head,
            _task: task,
        }
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
    let head = upstream.head.lock().unwrap().clone();
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_default();
    assert!(!id.is_empty(), "{head}");
    assert!(line.contains(&format!(" request_id=\"{id}\" ")), "{line}");
    assert!(line.contains(" path=\"/slow\" "), "{line}");
    gw.shutdown().await;
}

/// Requests the shutdown's grace cut while their upstream still thought
/// are logged with 444, not as a client that went away (499), on both
/// HTTP/1.1 servers (the own one, and hyper's for `TE: trailers`).
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
    // Logged by the time the shutdown is over (the process then exits).
    gw.shutdown().await;
    let lines = access_lines(&captured, "cut");
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        assert!(line.contains(" status=444 "), "{line}");
        assert!(line.contains(" complete=false"), "{line}");
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
