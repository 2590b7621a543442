//! The real `canary-gateway` binary as a child process, with tagged upstreams
//! and a small HTTP client, for tests that run it against moto.
//!
//! Include it with `#[path = "support/gateway_proc.rs"] mod gateway_proc;`.
//! [`GatewayProc::spawn`] runs `canary-gateway run --config FILE` with a clean
//! AWS environment (static test credentials, no instance metadata, no profile
//! files) and waits for its `canary-gateway serving listener=... admin=...`
//! log line; dropping it kills the process. The upstreams, client, polling,
//! metric parsing and process handling are the shared ones
//! (tests/support/shared.rs), re-exported here.

#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

#[path = "shared.rs"]
mod shared;
pub use shared::{
    BIN, Client, Proc, Reply, ServerTask, TaggedUpstream, Upstream, count_split, endpoints_line,
    eventually, gateway_config, metric_sum, metric_value, serve_connections, spawn_serving,
};

/// The admin token every test gateway gets (through [`TOKEN_ENV`]).
pub const TOKEN: &str = "aws-gateway-test-token";
/// The variable named by `[admin] token_env`.
pub const TOKEN_ENV: &str = "CANARY_TEST_ADMIN_TOKEN";
/// How long a gateway may take to log "canary-gateway serving" (the start
/// waits up to 10 s for the stable version's first discovery).
const START_LIMIT: Duration = Duration::from_secs(40);
/// Time limit of one HTTP exchange with a gateway.
const REQUEST_LIMIT: Duration = Duration::from_secs(30);

/// A running gateway process (`addr`, `admin`, `log` through [`Proc`]);
/// killed on drop.
pub struct GatewayProc {
    proc: Proc,
    /// The directory that holds the config file.
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for GatewayProc {
    type Target = Proc;
    fn deref(&self) -> &Proc {
        &self.proc
    }
}

impl std::ops::DerefMut for GatewayProc {
    fn deref_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

/// The binary with a clean AWS environment (only what the test gives: no
/// AWS setting of the machine leaks in) and the admin token.
fn command(dir: &tempfile::TempDir) -> Command {
    let nowhere: PathBuf = dir.path().join("no-such-aws-file");
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", &nowhere)
        .env("AWS_SHARED_CREDENTIALS_FILE", &nowhere)
        .env(TOKEN_ENV, TOKEN);
    cmd
}

impl GatewayProc {
    /// Writes `config` into a fresh directory and starts the binary on it.
    pub async fn spawn(config: &str) -> GatewayProc {
        Self::spawn_with_env(config, &[]).await
    }

    /// [`GatewayProc::spawn`] with `env` set too (`AWS_ENDPOINT_URL`, say:
    /// the clean AWS environment has only what the test gives).
    pub async fn spawn_with_env(config: &str, env: &[(&str, &str)]) -> GatewayProc {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = command(&dir);
        cmd.args(["run", "--config"])
            .arg(&path)
            .envs(env.iter().copied());
        match tokio::task::spawn_blocking(move || shared::spawn_serving(cmd, START_LIMIT))
            .await
            .unwrap()
        {
            Ok(proc) => GatewayProc { proc, _dir: dir },
            Err(e) => panic!("the gateway did not start: {e}\nconfig:\n{config}"),
        }
    }

    /// Starts the binary with no `--config`: the config is the TOML in
    /// `CANARY_GATEWAY_CONFIG`, with `env` set too; it runs in a fresh
    /// directory (`dir()`), where its state file goes by default.
    pub async fn spawn_from_env(config: &str, env: &[(&str, &str)]) -> GatewayProc {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = command(&dir);
        cmd.arg("run")
            .current_dir(dir.path())
            .env("CANARY_GATEWAY_CONFIG", config)
            .envs(env.iter().copied());
        match tokio::task::spawn_blocking(move || shared::spawn_serving(cmd, START_LIMIT))
            .await
            .unwrap()
        {
            Ok(proc) => GatewayProc { proc, _dir: dir },
            Err(e) => panic!("the gateway did not start: {e}\nconfig:\n{config}"),
        }
    }

    /// The directory the gateway was started in (and holds its config file).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
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

/// A keep-alive HTTP/1.1 connection whose exchanges panic on a connection
/// error or after [`REQUEST_LIMIT`] (a thin layer over [`Client`]).
pub struct Conn(Client);

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Conn {
        Conn(Client::connect_within(addr, REQUEST_LIMIT).await)
    }

    /// One request, with the admin token when `auth`.
    pub async fn send(&mut self, method: &str, path: &str, auth: bool, body: &str) -> Reply {
        let addr = self.0.addr();
        let req = shared::admin_request(addr, method, path, auth.then_some(TOKEN), body);
        self.0
            .send(req)
            .await
            .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
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
    let mut client = Client::connect_within(addr, REQUEST_LIMIT).await;
    count_split(&mut client, n, &[], true).await
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

/// A TCP relay on 127.0.0.1 to `target`. While down it accepts and at once
/// closes every connection (the service behind it is unreachable); once up it
/// forwards bytes both ways.
pub struct Relay {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    task: ServerTask,
}

impl Relay {
    /// A relay that starts down.
    pub async fn start_down(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(false));
        let flag = up.clone();
        let task = serve_connections(listener, move |mut inbound| {
            // While down, the connection is closed at once (dropped unserved).
            let up = flag.load(Ordering::SeqCst);
            async move {
                if !up {
                    return;
                }
                if let Ok(mut outbound) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
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
    task: ServerTask,
}

impl BlackHole {
    pub async fn start() -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = ServerTask::spawn(async move {
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
