//! A moto server on 127.0.0.1 for tests against the AWS APIs.
//!
//! Include it in a test crate with `#[path = "support/moto.rs"] mod moto;`.
//! [`MotoServer::start`] runs `tests/support/moto_wrapper.py` (moto plus a fix
//! of App Mesh's date fields) on a free loopback port and waits until it
//! answers; dropping the server kills it. The python comes from, in order:
//!
//! 1. `CANARY_MOTO_PYTHON`: a python with `moto[server]` installed (CI sets it);
//! 2. `python3`, if it has moto [`MOTO_VERSION`];
//! 3. a virtualenv at `target/moto-venv`, created and filled with
//!    `pip install "moto[server]==5.2.5"` on first use. A lock file
//!    (`target/moto-venv.lock`) keeps concurrent test binaries from installing
//!    at once; a marker file says the install finished.
//!
//! [`MotoServer::sdk_config`] gives an SDK config for the server with static
//! test credentials and region us-east-1, so no test reads credentials from the
//! environment or reaches an instance-metadata address.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use aws_sdk_servicediscovery::config::{Credentials, SharedCredentialsProvider};

/// The moto release the tests are written against.
pub const MOTO_VERSION: &str = "5.2.5";
/// Region of every test client.
pub const REGION: &str = "us-east-1";
/// Env var naming a python that already has `moto[server]`.
pub const PYTHON_ENV: &str = "CANARY_MOTO_PYTHON";

/// The wrapper script run by the server.
const WRAPPER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/moto_wrapper.py");
/// Marker written into the virtualenv once the install finished.
const READY_MARKER: &str = ".canary-moto-ready";

/// A running moto server; killed on drop.
#[derive(Debug)]
pub struct MotoServer {
    /// The python process.
    child: Child,
    /// Its loopback port.
    port: u16,
}

impl MotoServer {
    /// Starts a fresh server on a free loopback port and waits until it answers.
    pub fn start() -> MotoServer {
        let python = python();
        let mut child = Command::new(python)
            .arg(WRAPPER)
            .arg("0")
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("moto did not report its port within 60 s");
            }
        };
        let port: u16 = match line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
        {
            Some(port) => port,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("unexpected first line from moto_wrapper.py: {line:?}");
            }
        };
        let server = MotoServer { child, port };
        server.wait_ready(Duration::from_secs(30));
        server
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Forgets every resource (`POST /moto-api/reset`).
    pub fn reset(&self) {
        let status = http(self.port, "POST", "/moto-api/reset").expect("moto reset");
        assert_eq!(status, 200, "moto reset answered {status}");
    }

    /// SDK config for this server: `canary_gateway::aws::sdk_config` with the
    /// server's URL and region us-east-1, and static test credentials.
    pub async fn sdk_config(&self) -> SdkConfig {
        sdk_config_at(&self.endpoint_url()).await
    }

    fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(200) = http(self.port, "GET", "/moto-api/") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "moto on port {} never answered",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The SDK config of [`MotoServer::sdk_config`] for another URL (a proxy in
/// front of moto).
pub async fn sdk_config_at(url: &str) -> SdkConfig {
    canary_gateway::aws::sdk_config(Some(REGION), Some(url))
        .await
        .into_builder()
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "testing", "testing", None, None, "moto",
        )))
        .build()
}

/// One HTTP/1.0 request to 127.0.0.1:`port`; the response status.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {response:?}")))
}

/// The python to run moto with (found or provisioned once per test binary).
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        if let Some(p) = std::env::var_os(PYTHON_ENV) {
            return PathBuf::from(p);
        }
        if has_moto(Path::new("python3")) {
            return PathBuf::from("python3");
        }
        provision_venv()
    })
}

/// Whether `python` imports moto [`MOTO_VERSION`] and werkzeug.
fn has_moto(python: &Path) -> bool {
    Command::new(python)
        .args([
            "-c",
            &format!(
                "import moto, werkzeug, moto.moto_server.werkzeug_app; \
                 assert moto.__version__ == '{MOTO_VERSION}'"
            ),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `target/` (the parent of the tests' `CARGO_TARGET_TMPDIR`).
fn target_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).to_path_buf()
}

/// Creates `target/moto-venv` with moto unless it is there; its python.
fn provision_venv() -> PathBuf {
    let target = target_dir();
    let venv = target.join("moto-venv");
    let python = venv.join("bin").join("python");
    let marker = venv.join(READY_MARKER);
    std::fs::create_dir_all(&target).expect("create target dir");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(target.join("moto-venv.lock"))
        .expect("open moto-venv.lock");
    lock.lock().expect("lock moto-venv.lock");
    if !marker.exists() {
        eprintln!(
            "installing moto[server]=={MOTO_VERSION} into {}",
            venv.display()
        );
        let _ = std::fs::remove_dir_all(&venv);
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
            &format!("moto[server]=={MOTO_VERSION}"),
        ]));
        assert!(
            has_moto(&python),
            "moto is not importable after the install"
        );
        std::fs::write(&marker, MOTO_VERSION).expect("write marker");
    }
    let _ = lock.unlock();
    python
}

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}
