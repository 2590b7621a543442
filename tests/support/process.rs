//! The real `canary-gateway` binary as a child process: started, its log
//! collected, its addresses read from its `canary-gateway serving` line;
//! killed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_canary-gateway");

/// A running gateway process; killed on drop.
pub struct Proc {
    pub child: Child,
    /// The traffic listener.
    pub addr: SocketAddr,
    /// The admin API.
    pub admin: SocketAddr,
    /// Every stderr line so far.
    pub log: Arc<Mutex<Vec<String>>>,
    /// The thread that collects [`Proc::log`]; ends at the log's end.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// The log so far, one line each.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for the process to exit and for its last log line to be
    /// collected ([`Proc::log_text`] is then the whole log).
    pub fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let status = self.child.wait()?;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        Ok(status)
    }
}

/// Runs `cmd` (a run of [`BIN`]; `RUST_LOG=info`, stderr collected) and waits
/// up to `limit` for its "canary-gateway serving" line (plain or JSON log).
/// `Err` with the log when it exits first or says nothing in time.
pub fn spawn_serving(mut cmd: Command, limit: Duration) -> Result<Proc, String> {
    let mut child = cmd
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {BIN}: {e}"))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("canary-gateway serving") {
                    let _ = tx.send(Some(line.clone()));
                }
                log.lock().unwrap().push(line);
            }
            let _ = tx.send(None);
        })
    };
    let outcome = rx.recv_timeout(limit);
    let Ok(Some(line)) = outcome else {
        // Exited, or never said it serves: make sure it is gone either way.
        let _ = child.kill();
        let status = child.wait().map_err(|e| e.to_string())?;
        // The log to its last line: the reader ends at the log's end.
        let _ = reader.join();
        return Err(format!(
            "{} ({status}); log:\n{}",
            if outcome.is_err() {
                "no serving line in time"
            } else {
                "exited"
            },
            log.lock().unwrap().join("\n")
        ));
    };
    match (
        serving_field(&line, "listener"),
        serving_field(&line, "admin"),
    ) {
        (Some(addr), Some(admin)) => Ok(Proc {
            child,
            addr,
            admin,
            log,
            reader: Some(reader),
        }),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("cannot parse the addresses in: {line}"))
        }
    }
}

/// The address `name=` of a serving line, plain (`name=addr`) or JSON
/// (`"fields": {"name": "addr"}`).
fn serving_field(line: &str, name: &str) -> Option<SocketAddr> {
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
        return json["fields"][name].as_str()?.parse().ok();
    }
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    line[start..].split_whitespace().next()?.parse().ok()
}
