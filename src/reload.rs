//! Control path: config hot reload, on SIGHUP and when the file changes (a
//! config from `CANARY_GATEWAY_CONFIG`, or from a file that is no regular
//! file such as `--config <(...)`, is re-read as it was at start).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::control::status::ReloadStatus;
use crate::control::{Control, Refusal};

/// Something that re-reads the config and applies it.
pub trait Reload: Send + Sync + 'static {
    fn reload<'a>(&'a self, trigger: &'a str) -> crate::future::BoxFuture<'a, ReloadStatus>;

    /// A reload for an edit of the config file (trigger `file-change`) whose
    /// text has fingerprint `seen`: the text the watcher saw settle (the same
    /// at two polls in a row). See [`FileChange`]. By default:
    /// [`Reload::reload`], never tried again.
    fn reload_file_change(&self, seen: u64) -> crate::future::BoxFuture<'_, FileChange> {
        let _ = seen;
        Box::pin(async move { FileChange::Reloaded(self.reload("file-change").await, false) })
    }

    /// The fingerprint of the config file's text that the last reload of
    /// any trigger settled (see [`FileReloads`]), when known and no reload
    /// is under way: the watcher's text in force follows a SIGHUP's or
    /// `POST /reload`'s, so that an edit undone right after one of them is
    /// applied. By default `None`: the watcher goes by its own reloads.
    fn settled_text(&self) -> Option<u64> {
        None
    }

    /// The config file has kept changing since `since_ms` (ms since the
    /// Unix epoch): [`UNSETTLED_WARN_POLLS`] polls in a row found a text
    /// other than the last poll's, so the watcher applied none of them;
    /// `None` once a text settled (the text in force included) or the file
    /// cannot be read. For `/status`, where an operator who edited the file and
    /// saw nothing happen looks. By default: nothing.
    fn file_unsettled(&self, since_ms: Option<u64>) {
        let _ = since_ms;
    }
}

/// What a reload for an edit of the config file did.
#[derive(Debug)]
pub enum FileChange {
    /// Nothing to do: the file holds the text the last reload (a SIGHUP's,
    /// `POST /reload`'s) applied or refused for good.
    Settled,
    /// Nothing done: the file no longer holds the text the watcher saw
    /// settle (it was written again meanwhile, or cannot be read now). The
    /// watcher waits for the new text to settle.
    Moved,
    /// Reloaded, and whether the same text may pass when tried again:
    /// `true` when it failed although the text is a valid config, for a
    /// passing reason (the store could not be written, a rollback is still
    /// pending, another task wrote first...); `false` when it passed, the
    /// text itself was rejected (only another edit mends that), it leaves
    /// invalid weights with the decision in force, it needs a restart, or
    /// it was refused because a rollout runs (final for that text: the
    /// operator reloads it once the rollout is paused or over).
    Reloaded(ReloadStatus, bool),
}

/// Where a reload reads the config from.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    /// The text `CANARY_GATEWAY_CONFIG` held at start.
    Env(String),
    /// The text read at start from a file that cannot be read again (no
    /// regular file: a pipe such as `--config <(...)`), and its path.
    Once(PathBuf, String),
}

impl Source {
    /// The source of a running config, if it can be read again.
    pub fn of(config: &Config) -> Option<Source> {
        match (&config.source, &config.env_text) {
            (Some(path), _) => Some(match &config.once_text {
                Some(text) => Source::Once(path.clone(), text.clone()),
                None => Source::File(path.clone()),
            }),
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
            // The state path as read: a change is reported in
            // `restart_required` and the running one stays (control::reload).
            control.reload(Config::from_env_text(text), trigger).await
        }
        Source::Once(path, text) => {
            control
                .reload(Config::from_file_text(path, text, true), trigger)
                .await
        }
    }
}

/// Reads `path` again and hands the result to the control plane (which keeps
/// the running config when it is invalid).
pub async fn reload_file(control: &Control, path: &Path, trigger: &str) -> ReloadStatus {
    reload_file_retryable(control, path, trigger).await.0
}

/// [`reload_file`], and whether it may pass when tried again on the same
/// file: the refusal came from the gateway's state, e.g. a store that cannot
/// be written ([`Refusal::retryable`]). Not for a text the config rejects,
/// nor for a weights edit refused because a rollout runs: applying that one
/// unasked once the rollout ends would undo its abort or promotion.
pub async fn reload_file_retryable(
    control: &Control,
    path: &Path,
    trigger: &str,
) -> (ReloadStatus, bool) {
    let (status, retry, _) = reload_file_read(control, path, trigger).await;
    (status, retry)
}

/// [`reload_file_retryable`], and the fingerprint of the text it read
/// (`None`: the file could not be read).
async fn reload_file_read(
    control: &Control,
    path: &Path,
    trigger: &str,
) -> (ReloadStatus, bool, Option<u64>) {
    reload_text_read(control, path, read_off_runtime(path).await, trigger).await
}

/// [`reload_file_read`] of the text `read` from `path`.
async fn reload_text_read(
    control: &Control,
    path: &Path,
    read: Result<String, ConfigError>,
    trigger: &str,
) -> (ReloadStatus, bool, Option<u64>) {
    // The state path as read (the default follows the config file, which is
    // read from the same path): a change is reported in `restart_required`
    // and the running one stays (control::reload).
    let seen = read
        .as_ref()
        .ok()
        .map(|text| crate::config::fingerprint(text.as_bytes()));
    let loaded = read.and_then(|text| Config::from_file_text(path, &text, false));
    let (status, refusal) = control.reload_refusal(loaded, trigger).await;
    (status, refusal.is_some_and(Refusal::retryable), seen)
}

/// The reloads of one config file, one at a time, and the text the last
/// one settled (applied, or refused for good: not for a passing reason), by
/// fingerprint. An edit that a SIGHUP (or `POST /reload`) applied is not
/// reloaded a second time when the file watcher's next poll sees it.
pub struct FileReloads {
    path: PathBuf,
    /// Held across each reload: the watcher's check and reload cannot fall
    /// between a SIGHUP's read and its outcome.
    settled: tokio::sync::Mutex<Option<u64>>,
}

impl FileReloads {
    /// The reloads of `path`, whose text in force has fingerprint `start`.
    pub fn new(path: PathBuf, start: Option<u64>) -> FileReloads {
        FileReloads {
            path,
            settled: tokio::sync::Mutex::new(start),
        }
    }

    /// An explicit reload (SIGHUP, `POST /reload`): always made; whether the
    /// same text may pass when tried again, as [`reload_file_retryable`].
    pub async fn reload(&self, control: &Control, trigger: &str) -> (ReloadStatus, bool) {
        let mut settled = self.settled.lock().await;
        let (status, retry, seen) = reload_file_read(control, &self.path, trigger).await;
        *settled = seen.filter(|_| status.ok || !retry);
        (status, retry)
    }

    /// The text the last reload settled, by fingerprint; `None` while a
    /// reload is under way, or when the last one did not settle its text.
    pub fn settled_now(&self) -> Option<u64> {
        self.settled.try_lock().ok().and_then(|settled| *settled)
    }

    /// A reload for an edit the watcher saw settle, with fingerprint
    /// `seen`: [`FileChange::Moved`] when the file holds another text now
    /// (the watcher waits for that one to settle), [`FileChange::Settled`]
    /// when it holds the text the last reload settled.
    pub async fn file_change(&self, control: &Control, seen: u64) -> FileChange {
        let mut settled = self.settled.lock().await;
        // Read once: the text compared is the text reloaded.
        let read = read_off_runtime(&self.path).await;
        let now = read
            .as_ref()
            .ok()
            .map(|text| crate::config::fingerprint(text.as_bytes()));
        if now != Some(seen) {
            return FileChange::Moved;
        }
        if now == *settled {
            return FileChange::Settled;
        }
        let (status, retry, seen) =
            reload_text_read(control, &self.path, read, "file-change").await;
        *settled = seen.filter(|_| status.ok || !retry);
        FileChange::Reloaded(status, retry)
    }
}

/// The config file's text as it is now, read on a blocking thread (a slow
/// disk never holds up a runtime thread), refusing a path that is no
/// regular file (opening a FIFO would wait for a writer).
async fn read_off_runtime(path: &Path) -> Result<String, ConfigError> {
    let owned = path.to_path_buf();
    match tokio::task::spawn_blocking(move || crate::config::read_file(&owned, false)).await {
        Ok(read) => read.map(|(text, _)| text),
        Err(e) => Err(ConfigError::Read {
            path: path.display().to_string(),
            reason: format!("the read failed: {e}"),
        }),
    }
}

/// What a file looked like, to notice changes; `None` when it cannot be
/// read or is no regular file.
async fn fingerprint(path: &Path) -> Option<u64> {
    read_off_runtime(path)
        .await
        .ok()
        .map(|text| crate::config::fingerprint(text.as_bytes()))
}

/// Polls the config file and reloads when its content changes from
/// `baseline`: the [`Config::source_fingerprint`] of the running config (the
/// text it was parsed from), so that an edit made between that read and
/// this call (the start's AWS setup, store read, TLS load) is reloaded too.
/// Without one, the file as it is when this is called. A changed text is
/// reloaded once it has settled: the same at two polls in a row, `every`
/// apart.
pub async fn watch_file(
    reloader: Arc<dyn Reload>,
    path: PathBuf,
    every: Duration,
    baseline: Option<u64>,
) {
    let last = match baseline {
        Some(b) => Some(b),
        None => fingerprint(&path).await,
    };
    watch_from(reloader, path, every, last).await
}

/// The first wait before an edit whose reload failed for a reason other
/// than its text is tried again; each further wait doubles, up to
/// [`RETRY_MAX`], while the file stays as it is.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two tries of the same edit.
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// How many polls in a row must find the config file changed again (a text
/// other than the last poll's, none applied) before the watcher says, once
/// per such run, that the file keeps changing: about 5 s at the gateway's
/// one poll a second. A file written in place in a few writes settles well
/// before; one a sidecar rewrites every half second (a timestamp comment)
/// or a template loop never does, and without a word the operator's edit
/// in it would just never apply.
pub const UNSETTLED_WARN_POLLS: u32 = 5;

/// A run of polls that each found the config file changed again, none of
/// its texts applied.
struct Unsettled {
    /// When the run's first poll found the file changing.
    since: tokio::time::Instant,
    /// The same, in ms since the Unix epoch (for `/status`).
    since_ms: u64,
    /// The run's polls so far.
    polls: u32,
    /// The run was said (logged once, and told to [`Reload::file_unsettled`]).
    warned: bool,
}

/// Notes a poll that found the file changed again: the first poll of a run
/// starts it; the [`UNSETTLED_WARN_POLLS`]th says so, once for the run.
fn note_changing(run: &mut Option<Unsettled>, reloader: &dyn Reload, path: &Path, every: Duration) {
    let run = run.get_or_insert_with(|| Unsettled {
        since: tokio::time::Instant::now(),
        since_ms: crate::store::unix_ms(),
        polls: 0,
        warned: false,
    });
    run.polls = run.polls.saturating_add(1);
    if run.polls < UNSETTLED_WARN_POLLS || run.warned {
        return;
    }
    run.warned = true;
    tracing::warn!(
        config = %path.display(),
        polls = run.polls,
        "the config file {} keeps changing (a different text at each of the last {} polls, {:?} apart): none of it is applied until it stays the same for {:?} (a file rewritten in place may be half-written); stop what rewrites it, or write it whole and rename it into place",
        path.display(),
        run.polls,
        every,
        every,
    );
    reloader.file_unsettled(Some(run.since_ms));
}

/// Ends the run of changes, if any: the file settled on a text (`how`
/// says what follows; the text in force too), or cannot be read. A run
/// that was said is said to be over.
fn end_changing(run: &mut Option<Unsettled>, reloader: &dyn Reload, path: &Path, how: &str) {
    let Some(run) = run.take().filter(|run| run.warned) else {
        return;
    };
    tracing::info!(
        config = %path.display(),
        "the config file {} stopped changing after {:.0} s: {how}",
        path.display(),
        run.since.elapsed().as_secs_f64(),
    );
    reloader.file_unsettled(None);
}

/// An edit not applied yet, to try again at `due`.
struct Retry {
    fingerprint: u64,
    due: tokio::time::Instant,
    wait: Duration,
}

/// The watcher's loop from `last`, the fingerprint of the text in force (or
/// settled). A text that differs from it is applied only once a poll finds
/// it again unchanged (it settled for at least `every`): a file written in
/// place, in several writes (`cat > gateway.toml`, an editor or a
/// config-management tool that does not write by rename), is read while it
/// is half-written, and such a text can be a valid config (one table of
/// two, say) that would drop a version and, once whole again, bring it back
/// at its file weight instead of the decision in force. A text that never
/// settles is neither applied nor reported as a failed reload; a file that
/// keeps changing for [`UNSETTLED_WARN_POLLS`] polls is said once (a warn
/// line, [`Reload::file_unsettled`]). SIGHUP and `POST /reload` apply what
/// the file holds at once.
async fn watch_from(
    reloader: Arc<dyn Reload>,
    path: PathBuf,
    every: Duration,
    mut last: Option<u64>,
) {
    let mut retry: Option<Retry> = None;
    // A changed text seen at the last poll, not applied yet: it settled
    // when this poll sees it again.
    let mut unsettled: Option<u64> = None;
    // The polls in a row that found the file changed again.
    let mut changing: Option<Unsettled> = None;
    // The text the last poll found (none: unreadable).
    let mut seen = last;
    loop {
        tokio::time::sleep(every).await;
        metrics::counter!(crate::metrics::CONFIG_POLLS_TOTAL).increment(1);
        let Some(now) = fingerprint(&path).await else {
            // Gone or unreadable: whatever comes next settles anew, and a
            // run of changes is over (the file does not change: it is not
            // there to read).
            unsettled = None;
            seen = None;
            end_changing(&mut changing, reloader.as_ref(), &path, "it cannot be read");
            continue;
        };
        // Whether this poll found another text than the last poll did.
        let changed = seen.replace(now) != Some(now);
        // A SIGHUP or `POST /reload` settled a text since: that one is in
        // force now (the file going back to the text before it is an edit).
        if let Some(settled) = reloader.settled_text()
            && Some(settled) != last
        {
            last = Some(settled);
            retry = None;
        }
        if Some(now) == last {
            // Back to the text in force: nothing left to apply. A run of
            // changes ends only when a second poll finds it still so: a
            // file cycling through texts, the one in force among them (two
            // writers fighting, a symlink flipping between generations),
            // keeps changing.
            retry = None;
            unsettled = None;
            if changed && changing.is_some() {
                note_changing(&mut changing, reloader.as_ref(), &path, every);
            } else {
                end_changing(
                    &mut changing,
                    reloader.as_ref(),
                    &path,
                    "it holds the text in force again",
                );
            }
            continue;
        }
        if unsettled != Some(now) {
            // Changed since the last poll: the file may still be being
            // written; tried at the next poll if it is still this text.
            unsettled = Some(now);
            note_changing(&mut changing, reloader.as_ref(), &path, every);
            continue;
        }
        end_changing(&mut changing, reloader.as_ref(), &path, "applying it");
        let wait = match &retry {
            Some(r) if r.fingerprint == now => {
                if tokio::time::Instant::now() < r.due {
                    continue;
                }
                (r.wait * 2).min(RETRY_MAX)
            }
            _ => RETRY_FIRST,
        };
        let (status, again) = match reloader.reload_file_change(now).await {
            FileChange::Reloaded(status, again) => (status, again),
            FileChange::Settled => {
                // A reload (a SIGHUP's, POST /reload's) settled this text already.
                last = Some(now);
                retry = None;
                continue;
            }
            FileChange::Moved => {
                // Written again since this poll: the new text settles first.
                unsettled = None;
                continue;
            }
        };
        if status.ok || !again {
            // Applied, or refused for good (its text, or a rollout running
            // when it came): wait for the next edit or an explicit reload.
            last = Some(now);
            retry = None;
        } else {
            tracing::warn!(
                retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                "the config file's edit is not applied yet (not for its text); trying again"
            );
            retry = Some(Retry {
                fingerprint: now,
                due: tokio::time::Instant::now() + wait,
                wait,
            });
        }
    }
}

/// SIGHUP, listened for from the moment [`Hangup::listen`] is called: one
/// sent after that (a certificate-rotation job, an operator) is handled,
/// never the default action, which ends the process. `run` calls it first
/// thing, so that a SIGHUP during the start (AWS setup, the store's first
/// read, the wait for discovery) is handled once the gateway runs.
pub struct Hangup {
    #[cfg(unix)]
    signal: std::io::Result<tokio::signal::unix::Signal>,
}

impl Hangup {
    /// Starts listening; within a tokio runtime.
    pub fn listen() -> Hangup {
        Hangup {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()),
        }
    }

    /// The next SIGHUP; never when none can be heard (said once, in the log).
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            let heard = match &mut self.signal {
                Ok(hup) => hup.recv().await.is_some(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; reload by editing the file or POST /reload");
                    false
                }
            };
            if heard {
                return;
            }
        }
        std::future::pending::<()>().await;
    }
}

/// Reloads on every SIGHUP that `hup` hears; without a reloader (a config
/// that cannot be read again, as the demo's), says so and goes on serving.
pub async fn on_sighup(reloader: Option<Arc<dyn Reload>>, mut hup: Hangup) {
    loop {
        hup.next().await;
        match &reloader {
            Some(r) => {
                r.reload("sighup").await;
            }
            None => {
                tracing::info!(
                    "SIGHUP: no config file to reload (this config is built in); still serving"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A test double's reload status: applied (`ok`) or refused.
    fn status(ok: bool, trigger: &str) -> ReloadStatus {
        ReloadStatus {
            ok,
            trigger: trigger.to_string(),
            at_ms: 0,
            message: if ok { "applied" } else { "refused" }.into(),
            restart_required: Vec::new(),
        }
    }

    /// Fails every file-change reload, saying whether to try again; counts them.
    struct Failing {
        retry: bool,
        calls: Mutex<u32>,
    }

    impl Reload for Failing {
        fn reload<'a>(&'a self, trigger: &'a str) -> crate::future::BoxFuture<'a, ReloadStatus> {
            Box::pin(async move { status(false, trigger) })
        }

        fn reload_file_change(&self, _seen: u64) -> crate::future::BoxFuture<'_, FileChange> {
            Box::pin(async move {
                *self.calls.lock().unwrap() += 1;
                FileChange::Reloaded(self.reload("file-change").await, self.retry)
            })
        }
    }

    /// How many times an edit is tried in ten (paused, auto-advanced) minutes.
    async fn tries_in_ten_minutes(retry: bool) -> u32 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, "before").unwrap();
        let baseline = fingerprint(&path).await;
        std::fs::write(&path, "after").unwrap();
        let reloader = Arc::new(Failing {
            retry,
            calls: Mutex::new(0),
        });
        let watcher = tokio::spawn(watch_file(
            reloader.clone(),
            path,
            Duration::from_secs(1),
            baseline,
        ));
        tokio::time::sleep(Duration::from_secs(600)).await;
        watcher.abort();
        *reloader.calls.lock().unwrap()
    }

    /// Reloads a config file into a real control plane; counts the
    /// file-change reloads.
    struct FileReloader {
        control: Arc<Control>,
        path: PathBuf,
        calls: Mutex<u32>,
    }

    impl Reload for FileReloader {
        fn reload<'a>(&'a self, trigger: &'a str) -> crate::future::BoxFuture<'a, ReloadStatus> {
            Box::pin(reload_file(&self.control, &self.path, trigger))
        }

        fn reload_file_change(&self, _seen: u64) -> crate::future::BoxFuture<'_, FileChange> {
            Box::pin(async move {
                *self.calls.lock().unwrap() += 1;
                let (status, retry) =
                    reload_file_retryable(&self.control, &self.path, "file-change").await;
                FileChange::Reloaded(status, retry)
            })
        }
    }

    /// A config file with `v1` stable, weighted `v1` and `v2`.
    fn two_versions(v1: u32, v2: u32) -> String {
        format!(
            "[listener]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
             [split]\nstable = \"v1\"\n\
             [[versions]]\nname = \"v1\"\nweight = {v1}\nendpoints = [\"127.0.0.1:1\"]\n\
             [[versions]]\nname = \"v2\"\nweight = {v2}\nendpoints = [\"127.0.0.1:2\"]\n"
        )
    }

    /// A weights edit refused because a rollout runs is final for its text:
    /// the watcher does not try it again, so the rollout's abort (or
    /// promotion) is not undone by the edit once the rollout is over. An
    /// explicit reload applies it then.
    #[tokio::test(start_paused = true)]
    async fn an_edit_refused_while_a_rollout_runs_waits_for_an_explicit_reload() {
        use crate::control::rollout::Action;
        use crate::rollout::state::Phase;
        use crate::store::Store;
        use crate::store::file::FileStore;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, two_versions(100, 0)).unwrap();
        let store = Arc::new(FileStore::new(dir.path().join("state.json")));
        let control = Control::start(
            Config::load(&path).unwrap(),
            store as Arc<dyn Store>,
            "file",
        )
        .await
        .unwrap();
        control
            .start_rollout(br#"{"canary": "v2", "steps": [10, 50], "interval_s": 60}"#)
            .await
            .unwrap();
        let reloader = Arc::new(FileReloader {
            control: control.clone(),
            path: path.clone(),
            calls: Mutex::new(0),
        });
        let watcher = tokio::spawn(watch_file(
            reloader.clone(),
            path.clone(),
            Duration::from_secs(1),
            fingerprint(&path).await,
        ));
        std::fs::write(&path, two_versions(80, 20)).unwrap();
        for _ in 0..100 {
            if *reloader.calls.lock().unwrap() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let refused = control.status().last_reload.unwrap();
        assert!(!refused.ok, "{refused:?}");
        assert!(refused.message.contains("rollout of `v2`"), "{refused:?}");
        assert_eq!(control.weights().weights["v2"], 10);

        // The rollout is aborted: the canary is back to 0 and stays there
        // through every retry the watcher would have made (1, 2, 4... 60 s).
        control.rollout_action(Action::Abort).await.unwrap();
        assert_eq!(control.weights().weights["v2"], 0);
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(
            *reloader.calls.lock().unwrap(),
            1,
            "the edit was tried again"
        );
        assert_eq!(control.weights().weights["v2"], 0, "the abort was undone");
        assert_eq!(control.rollout().unwrap().phase, Phase::Aborted);

        // The operator applies it: the running config is still the old one,
        // so the file's weights count as an edit.
        let applied = reloader.reload("sighup").await;
        assert!(applied.ok, "{applied:?}");
        let weights = control.weights().weights;
        assert_eq!((weights["v1"], weights["v2"]), (80, 20));
        watcher.abort();
    }

    /// A watched config path that is (or became) a FIFO is never opened:
    /// opening it would wait for a writer, on a runtime thread (the whole
    /// gateway, on a one-thread runtime) or on a blocking thread the watcher
    /// would wait on for good. The watcher goes on polling: once the path is
    /// a regular file again, its edit is reloaded.
    #[test]
    fn a_watched_path_that_is_a_fifo_blocks_neither_the_runtime_nor_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        let (done, result) = std::sync::mpsc::channel();
        let watched = path.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(async move {
                let reloader = Arc::new(Failing {
                    retry: false,
                    calls: Mutex::new(0),
                });
                let watcher = tokio::spawn(watch_file(
                    reloader.clone(),
                    watched.clone(),
                    Duration::from_secs(1),
                    Some(0),
                ));
                // Ten polls of the FIFO (paused time: no real wait).
                tokio::time::sleep(Duration::from_secs(10)).await;
                let on_fifo = *reloader.calls.lock().unwrap();
                std::fs::remove_file(&watched).unwrap();
                std::fs::write(&watched, "edited").unwrap();
                tokio::time::sleep(Duration::from_secs(10)).await;
                let on_file = *reloader.calls.lock().unwrap();
                watcher.abort();
                let _ = done.send((on_fifo, on_file));
            });
        });
        let outcome = result.recv_timeout(Duration::from_secs(30));
        if outcome.is_err() {
            // Let a read stuck on the FIFO end (it gets a writer, then EOF).
            let _ = std::fs::OpenOptions::new().write(true).open(&path);
        }
        let (on_fifo, on_file) = outcome.expect("the watcher blocked its runtime on the FIFO");
        assert_eq!(on_fifo, 0, "the FIFO was taken for an edit");
        assert_eq!(on_file, 1, "the watcher stopped polling");
    }

    /// A file still being written (a new text at every poll) is not
    /// reloaded, not even for a text that would fail; once a poll finds the
    /// text it found before, it is reloaded, once.
    #[tokio::test(start_paused = true)]
    async fn an_edit_is_reloaded_only_once_it_has_settled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, "before").unwrap();
        let baseline = fingerprint(&path).await;
        let reloader = Arc::new(Failing {
            retry: false,
            calls: Mutex::new(0),
        });
        let watcher = tokio::spawn(watch_file(
            reloader.clone(),
            path.clone(),
            Duration::from_secs(1),
            baseline,
        ));
        // Half-way between two polls, a longer text each time.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut text = String::new();
        for part in 0..10 {
            text.push_str(&format!("part {part}\n"));
            std::fs::write(&path, &text).unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(
            *reloader.calls.lock().unwrap(),
            0,
            "a text being written was reloaded"
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(*reloader.calls.lock().unwrap(), 1);
        watcher.abort();
    }

    /// Applies every file-change reload; counts them and keeps what the
    /// watcher says of a file that keeps changing.
    #[derive(Default)]
    struct Applying {
        calls: Mutex<u32>,
        unsettled: Mutex<Vec<Option<u64>>>,
    }

    impl Reload for Applying {
        fn reload<'a>(&'a self, trigger: &'a str) -> crate::future::BoxFuture<'a, ReloadStatus> {
            Box::pin(async move { status(true, trigger) })
        }

        fn reload_file_change(&self, _seen: u64) -> crate::future::BoxFuture<'_, FileChange> {
            Box::pin(async move {
                *self.calls.lock().unwrap() += 1;
                FileChange::Reloaded(self.reload("file-change").await, false)
            })
        }

        fn file_unsettled(&self, since_ms: Option<u64>) {
            self.unsettled.lock().unwrap().push(since_ms);
        }
    }

    /// A config file rewritten every half second (a sidecar stamping a
    /// comment in it) never settles, so it is not applied: the watcher says
    /// so once (to `/status`, beside its warn line), however long it goes
    /// on. Once the writes stop, the last text settles and is applied, and
    /// the watcher says the file stopped changing. Before, nothing said
    /// anything: the operator's edit just never applied. (The log lines are
    /// checked over the real binary, in the integration test of the same
    /// name: a thread-local log capture here misses lines whose callsites
    /// another test's thread saw first, with no subscriber.)
    #[tokio::test(start_paused = true)]
    async fn a_file_that_keeps_changing_is_said_once_and_applied_once_it_stops() {
        let dir = tempfile::tempdir().unwrap();
        let (path, reloader, watcher) = watching_before(dir.path()).await;
        // Three times as long as it takes to be said: 30 writes, 15 polls.
        for stamp in 0..30 {
            std::fs::write(&path, format!("# written {stamp}\nweights\n")).unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(
            *reloader.calls.lock().unwrap(),
            0,
            "a changing text was applied"
        );
        let told = reloader.unsettled.lock().unwrap().clone();
        assert!(matches!(told.as_slice(), [Some(_)]), "{told:?}");

        // The writes stop: the last text settles at the next polls.
        for _ in 0..100 {
            if *reloader.calls.lock().unwrap() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            *reloader.calls.lock().unwrap(),
            1,
            "the settled text was not applied"
        );
        let told = reloader.unsettled.lock().unwrap().clone();
        assert!(matches!(told.as_slice(), [Some(_), None]), "{told:?}");
        watcher.abort();
    }

    /// A file written in place in a few writes (settled within a few polls)
    /// is not said to keep changing.
    #[tokio::test(start_paused = true)]
    async fn a_file_written_in_a_few_writes_is_not_said_to_keep_changing() {
        let dir = tempfile::tempdir().unwrap();
        let (path, reloader, watcher) = watching_before(dir.path()).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut text = String::new();
        for part in 0..UNSETTLED_WARN_POLLS - 1 {
            text.push_str(&format!("part {part}\n"));
            std::fs::write(&path, &text).unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        for _ in 0..100 {
            if *reloader.calls.lock().unwrap() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(*reloader.calls.lock().unwrap(), 1);
        assert!(reloader.unsettled.lock().unwrap().is_empty());
        watcher.abort();
    }

    /// A watcher on a file holding "before" (in force), started at 250 ms
    /// past a poll, polling every second.
    async fn watching_before(dir: &Path) -> (PathBuf, Arc<Applying>, tokio::task::JoinHandle<()>) {
        let path = dir.join("gateway.toml");
        std::fs::write(&path, "before").unwrap();
        let baseline = fingerprint(&path).await;
        let reloader = Arc::new(Applying::default());
        let watcher = tokio::spawn(watch_file(
            reloader.clone(),
            path.clone(),
            Duration::from_secs(1),
            baseline,
        ));
        tokio::time::sleep(Duration::from_millis(250)).await;
        (path, reloader, watcher)
    }

    /// A file cycling through texts that include the one in force (two
    /// writers fighting, a symlink flipping between generations) keeps
    /// changing: said once, nothing applied. Before, every poll that found
    /// the text in force ended the run, so it was never said.
    #[tokio::test(start_paused = true)]
    async fn a_file_cycling_through_the_text_in_force_is_said_to_keep_changing() {
        let dir = tempfile::tempdir().unwrap();
        let (path, reloader, watcher) = watching_before(dir.path()).await;
        // One text per poll: before, b, c, before, b, c, ...
        for text in ["b", "c", "before"].iter().cycle().take(15) {
            std::fs::write(&path, text).unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let told = reloader.unsettled.lock().unwrap().clone();
        assert!(matches!(told.as_slice(), [Some(_)]), "{told:?}");
        assert_eq!(
            *reloader.calls.lock().unwrap(),
            0,
            "a changing text was applied"
        );
        // It stays at the text in force: the run is over, nothing applied.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let told = reloader.unsettled.lock().unwrap().clone();
        assert!(matches!(told.as_slice(), [Some(_), None]), "{told:?}");
        assert_eq!(*reloader.calls.lock().unwrap(), 0);
        watcher.abort();
    }

    /// A file said to keep changing that is then removed (or cannot be
    /// read) is no longer said to change: `/status` would otherwise keep a
    /// warning about a file that is not there.
    #[tokio::test(start_paused = true)]
    async fn a_changing_file_that_goes_away_is_no_longer_said_to_change() {
        let dir = tempfile::tempdir().unwrap();
        let (path, reloader, watcher) = watching_before(dir.path()).await;
        for stamp in 0..2 * UNSETTLED_WARN_POLLS {
            std::fs::write(&path, format!("# written {stamp}\n")).unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let told = reloader.unsettled.lock().unwrap().clone();
        assert!(matches!(told.as_slice(), [Some(_)]), "{told:?}");
        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let told = reloader.unsettled.lock().unwrap().clone();
        assert!(matches!(told.as_slice(), [Some(_), None]), "{told:?}");
        assert_eq!(*reloader.calls.lock().unwrap(), 0);
        watcher.abort();
    }

    /// Reloads a config file through [`FileReloads`], as the gateway does.
    struct SharedReloads {
        control: Arc<Control>,
        file: FileReloads,
    }

    impl Reload for SharedReloads {
        fn reload<'a>(&'a self, trigger: &'a str) -> crate::future::BoxFuture<'a, ReloadStatus> {
            Box::pin(async move { self.file.reload(&self.control, trigger).await.0 })
        }

        fn reload_file_change(&self, seen: u64) -> crate::future::BoxFuture<'_, FileChange> {
            Box::pin(self.file.file_change(&self.control, seen))
        }

        fn settled_text(&self) -> Option<u64> {
            self.file.settled_now()
        }
    }

    /// An edit applied by SIGHUP and undone a moment later (the operator
    /// saw a mistake, a config tool ran again): the file's text before it is
    /// an edit too, applied by the watcher, not taken as the text in force.
    #[tokio::test(start_paused = true)]
    async fn an_edit_undone_right_after_a_sighup_is_applied() {
        use crate::store::Store;
        use crate::store::file::FileStore;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, two_versions(60, 40)).unwrap();
        let store = Arc::new(FileStore::new(dir.path().join("state.json")));
        let config = Config::load(&path).unwrap();
        let control = Control::start(config, store as Arc<dyn Store>, "file")
            .await
            .unwrap();
        let before = fingerprint(&path).await;
        let reloader = Arc::new(SharedReloads {
            control: control.clone(),
            file: FileReloads::new(path.clone(), before),
        });
        let watcher = tokio::spawn(watch_file(
            reloader.clone(),
            path.clone(),
            Duration::from_secs(1),
            before,
        ));
        let weights = || {
            let w = control.weights().weights;
            (w["v1"], w["v2"])
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::write(&path, two_versions(55, 45)).unwrap();
        assert!(reloader.reload("sighup").await.ok);
        assert_eq!(weights(), (55, 45));
        tokio::time::sleep(Duration::from_millis(400)).await;
        std::fs::write(&path, two_versions(60, 40)).unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(weights(), (60, 40), "the undoing edit was not applied");
        watcher.abort();
    }

    /// A text the config rejects is tried once: only another edit can mend it.
    #[tokio::test(start_paused = true)]
    async fn an_edit_rejected_for_its_text_is_not_tried_again() {
        assert_eq!(tries_in_ten_minutes(false).await, 1);
    }

    /// A refusal for another reason is tried again, waiting twice as long
    /// each time up to a minute: 1+2+4+8+16+32 s, then once a minute.
    #[tokio::test(start_paused = true)]
    async fn an_edit_refused_for_another_reason_is_tried_again_with_backoff() {
        let tries = tries_in_ten_minutes(true).await;
        assert!((10..=20).contains(&tries), "{tries} tries in ten minutes");
    }
}
