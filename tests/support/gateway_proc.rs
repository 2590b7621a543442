//! The real `canary-gateway` binary as a child process, with tagged upstreams
//! and a small HTTP client, for tests that run it against moto.
//!
//! Include it with `#[path = "support/gateway_proc.rs"] mod gateway_proc;`.
//! [`GatewayProc::spawn`] runs `canary-gateway run --config FILE` with a clean
//! AWS environment (static test credentials, no instance metadata, no profile
//! files) and waits for its `canary-gateway serving listener=... admin=...`
//! log line; dropping it kills the process.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_canary-gateway");
/// The admin token every test gateway gets (through [`TOKEN_ENV`]).
pub const TOKEN: &str = "aws-gateway-test-token";
/// The variable named by `[admin] token_env`.
pub const TOKEN_ENV: &str = "CANARY_TEST_ADMIN_TOKEN";
/// How long a gateway may take to log "canary-gateway serving" (the start
/// waits up to 10 s for the stable version's first discovery).
const START_LIMIT: Duration = Duration::from_secs(40);
/// Time limit of one HTTP exchange with a gateway.
const REQUEST_LIMIT: Duration = Duration::from_secs(30);

/// A running gateway process; killed on drop.
pub struct GatewayProc {
    child: Child,
    /// The traffic listener.
    pub addr: SocketAddr,
    /// The admin API.
    pub admin: SocketAddr,
    /// Every stderr line so far.
    pub log: Arc<Mutex<Vec<String>>>,
    /// The directory that holds the config file.
    _dir: tempfile::TempDir,
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GatewayProc {
    /// Writes `config` into a fresh directory and starts the binary on it.
    pub async fn spawn(config: &str) -> GatewayProc {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config).unwrap();
        match tokio::task::spawn_blocking(move || start(&path, dir))
            .await
            .unwrap()
        {
            Ok(proc) => proc,
            Err(e) => panic!("the gateway did not start: {e}\nconfig:\n{config}"),
        }
    }

    /// The log so far, one line each.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// `GET /weights` as JSON.
    pub async fn weights(&self) -> serde_json::Value {
        let reply = admin(self.admin, "GET", "/weights", "").await;
        assert_eq!(reply.status, 200, "GET /weights: {}", reply.text());
        reply.json()
    }

    /// `GET /status` as JSON.
    pub async fn status(&self) -> serde_json::Value {
        let reply = admin(self.admin, "GET", "/status", "").await;
        assert_eq!(reply.status, 200, "GET /status: {}", reply.text());
        reply.json()
    }

    /// `GET /readyz`.
    pub async fn readyz(&self) -> Reply {
        admin(self.admin, "GET", "/readyz", "").await
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> String {
        let reply = admin(self.admin, "GET", "/metrics", "").await;
        assert_eq!(reply.status, 200);
        reply.text()
    }

    /// `PUT /weights` with `{"weights": weights}`.
    pub async fn put_weights(&self, weights: &[(&str, u32)]) -> Reply {
        let map: BTreeMap<&str, u32> = weights.iter().copied().collect();
        let body = serde_json::json!({ "weights": map }).to_string();
        admin(self.admin, "PUT", "/weights", &body).await
    }

    /// Polls /readyz until it answers 200; panics with the log after `limit`.
    pub async fn wait_ready(&self, limit: Duration) {
        let mut last = String::new();
        let ok = eventually(limit, async || {
            let reply = self.readyz().await;
            last = reply.text();
            reply.status == 200
        })
        .await;
        assert!(
            ok,
            "not ready after {limit:?}: {last}\nlog:\n{}",
            self.log_text()
        );
    }
}

/// Starts the binary and waits for its "serving" line.
fn start(config: &Path, dir: tempfile::TempDir) -> Result<GatewayProc, String> {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"]).arg(config);
    // Only what the test gives: no AWS setting of the machine leaks in.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(key);
        }
    }
    let nowhere: PathBuf = dir.path().join("no-such-aws-file");
    cmd.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", &nowhere)
        .env("AWS_SHARED_CREDENTIALS_FILE", &nowhere)
        .env(TOKEN_ENV, TOKEN)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {BIN}: {e}"))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("canary-gateway serving") {
                    let _ = tx.send(Some(line.clone()));
                }
                log.lock().unwrap().push(line);
            }
            let _ = tx.send(None);
        });
    }
    let line = match rx.recv_timeout(START_LIMIT) {
        Ok(Some(line)) => line,
        outcome => {
            if outcome.is_err() {
                let _ = child.kill();
            }
            let status = child.wait().map_err(|e| e.to_string())?;
            std::thread::sleep(Duration::from_millis(50));
            return Err(format!(
                "{} ({status}); log:\n{}",
                if outcome.is_err() {
                    "no serving line in time"
                } else {
                    "exited"
                },
                log.lock().unwrap().join("\n")
            ));
        }
    };
    let field = |name: &str| -> Result<SocketAddr, String> {
        let start = line
            .find(&format!("{name}="))
            .ok_or_else(|| format!("no {name}= in {line:?}"))?
            + name.len()
            + 1;
        line[start..]
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad {name}= in {line:?}"))
    };
    let addr = field("listener");
    let admin = field("admin");
    let (addr, admin) = match (addr, admin) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    Ok(GatewayProc {
        child,
        addr,
        admin,
        log,
        _dir: dir,
    })
}

/// An upstream on 127.0.0.1 that answers every request with its name.
pub struct TaggedUpstream {
    pub name: &'static str,
    pub addr: SocketAddr,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TaggedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TaggedUpstream {
    pub async fn start(name: &'static str) -> TaggedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        async move {
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(name))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TaggedUpstream {
            name,
            addr,
            hits,
            task,
        }
    }

    /// Requests answered so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// A response read in full.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// A keep-alive HTTP/1.1 connection.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Conn {
        let stream = tokio::time::timeout(REQUEST_LIMIT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connect to {addr} timed out"))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn { sender, addr }
    }

    /// One request; panics on a connection error or after [`REQUEST_LIMIT`].
    pub async fn send(&mut self, method: &str, path: &str, auth: bool, body: &str) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json");
        if auth {
            req = req.header("authorization", format!("Bearer {TOKEN}"));
        }
        let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        let exchange = async {
            self.sender.ready().await?;
            let resp = self.sender.send_request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, hyper::Error>(Reply {
                status: parts.status,
                body,
            })
        };
        match tokio::time::timeout(REQUEST_LIMIT, exchange).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => panic!("{method} {path} on {}: {e}", self.addr),
            Err(_) => panic!(
                "{method} {path} on {}: no answer in {REQUEST_LIMIT:?}",
                self.addr
            ),
        }
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.send("GET", path, false, "").await
    }
}

/// One admin request (with the token) on a fresh connection.
pub async fn admin(addr: SocketAddr, method: &str, path: &str, body: &str) -> Reply {
    Conn::connect(addr)
        .await
        .send(method, path, true, body)
        .await
}

/// Sends `n` GETs of `/` over one keep-alive connection; counts the answers by
/// body. Panics on any status but 200.
pub async fn split_counts(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut conn = Conn::connect(addr).await;
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let reply = conn.get("/").await;
        assert_eq!(reply.status, 200, "proxied GET /: {}", reply.text());
        *counts.entry(reply.text()).or_insert(0) += 1;
    }
    counts
}

/// The `weights` of a `/weights` view (or of a 409's `current`), by version.
pub fn weights_of(view: &serde_json::Value) -> BTreeMap<String, u64> {
    view["weights"]
        .as_object()
        .unwrap_or_else(|| panic!("no weights in {view}"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(u64::MAX)))
        .collect()
}

/// Polls `check` every 50 ms until it is true, for at most `limit`.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sum of every sample of metric `name` (any labels) in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, v| sum + v)
}

/// A TCP relay on 127.0.0.1 to `target`. While down it accepts and at once
/// closes every connection (the service behind it is unreachable); once up it
/// forwards bytes both ways.
pub struct Relay {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    /// A relay that starts down.
    pub async fn start_down(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(false));
        let flag = up.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !flag.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Relay { addr, up, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on connections are forwarded.
    pub fn set_up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// A server on 127.0.0.1 that accepts connections and never answers (a hung
/// AWS endpoint).
pub struct BlackHole {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BlackHole {
    pub async fn start() -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        BlackHole { addr, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
