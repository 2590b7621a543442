//! Control path: config hot reload, on SIGHUP and when the file changes (a
//! config from `CANARY_GATEWAY_CONFIG` is re-read as the variable was at start).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::control::Control;
use crate::control::status::ReloadStatus;

/// Something that re-reads the config and applies it.
pub trait Reload: Send + Sync + 'static {
    fn reload<'a>(&'a self, trigger: &'a str) -> crate::future::BoxFuture<'a, ReloadStatus>;
}

/// Where a reload reads the config from.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    /// The text `CANARY_GATEWAY_CONFIG` held at start.
    Env(String),
}

impl Source {
    /// The source of a running config, if it can be read again.
    pub fn of(config: &Config) -> Option<Source> {
        match (&config.source, &config.env_text) {
            (Some(path), _) => Some(Source::File(path.clone())),
            (None, Some(text)) => Some(Source::Env(text.clone())),
            (None, None) => None,
        }
    }
}

/// Reads `source` again and hands the result to the control plane (which
/// keeps the running config when it is invalid).
pub async fn reload_source(control: &Control, source: &Source, trigger: &str) -> ReloadStatus {
    match source {
        Source::File(path) => reload_file(control, path, trigger).await,
        Source::Env(text) => {
            let running = control.config();
            let loaded = Config::from_env_text(text).map(|mut c| {
                c.state_path = running.state_path.clone();
                c
            });
            control.reload(loaded, trigger).await
        }
    }
}

/// Reads `path` again and hands the result to the control plane (which keeps
/// the running config when it is invalid).
pub async fn reload_file(control: &Control, path: &Path, trigger: &str) -> ReloadStatus {
    let running = control.config();
    let loaded = Config::load(path).map(|mut c| {
        // The default state path follows the config file; keep the running one.
        if c.state_path != running.state_path {
            c.state_path = running.state_path.clone();
        }
        c
    });
    control.reload(loaded, trigger).await
}

/// What a file looked like, to notice changes.
fn fingerprint(path: &Path) -> Option<u64> {
    std::fs::read(path)
        .ok()
        .map(|bytes| crate::config::fingerprint(&bytes))
}

/// Polls the config file and reloads when its content changes from
/// `baseline`: the [`Config::source_fingerprint`] of the running config (the
/// text it was parsed from), so that an edit made between that read and
/// this call (the start's AWS setup, store read, TLS load) is reloaded too.
/// Without one, the file as it is when this is called.
pub fn watch_file(
    reloader: Arc<dyn Reload>,
    path: PathBuf,
    every: Duration,
    baseline: Option<u64>,
) -> impl std::future::Future<Output = ()> + Send {
    let last = baseline.or_else(|| fingerprint(&path));
    watch_from(reloader, path, every, last)
}

async fn watch_from(
    reloader: Arc<dyn Reload>,
    path: PathBuf,
    every: Duration,
    mut last: Option<u64>,
) {
    loop {
        tokio::time::sleep(every).await;
        let now = fingerprint(&path);
        if now.is_some() && now != last {
            last = now;
            reloader.reload("file-change").await;
        }
    }
}

/// Reloads on every SIGHUP. The handler is installed before this returns (a
/// SIGHUP that arrived before it would otherwise end the process); the
/// returned future does the reloading.
pub fn on_sighup(reloader: Arc<dyn Reload>) -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        #[cfg(unix)]
        match hup {
            Ok(mut hup) => {
                while hup.recv().await.is_some() {
                    reloader.reload("sighup").await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload by editing the file or POST /reload");
            }
        }
        #[cfg(not(unix))]
        {
            let _ = reloader;
            std::future::pending::<()>().await;
        }
    }
}
