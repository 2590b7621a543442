//! The default store: a JSON state file beside the config file, written
//! atomically (temp file, fsync, rename, fsync of the directory). One
//! running gateway holds it: [`FileStore::lock`].

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Store, StoreError, WeightsDoc};
use crate::future::BoxFuture;

/// Keeps the weights document in one file on local disk.
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn new(path: impl Into<PathBuf>) -> FileStore {
        FileStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, reason: impl std::fmt::Display) -> StoreError {
        StoreError::File {
            path: self.path.display().to_string(),
            reason: reason.to_string(),
        }
    }

    /// The directory that holds the state file.
    fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// An error when the state file's directory does not exist: no decision
    /// could ever be saved there.
    fn missing_dir(&self) -> Option<StoreError> {
        let dir = self.dir();
        (!dir.is_dir()).then(|| {
            self.error(format!(
                "its directory {} does not exist: create it, or set [state] path to a file in one that does",
                dir.display()
            ))
        })
    }

    /// The state file's name, for the files written beside it.
    fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "state.json".into())
    }

    /// The prefix of the temporary files a save writes beside the state
    /// file (`.<name>.tmp-<pid>`), renamed over it once written.
    fn temp_prefix(&self) -> String {
        format!(".{}.tmp-", self.file_name())
    }

    /// Whether a gateway can write the state file: creates a file of its
    /// own in the state file's directory and removes it, taking no lock
    /// (`check` and `run` both ask). Every decision is saved by writing a
    /// temporary file there and renaming it over the state file, so a
    /// directory the gateway cannot write (a read-only volume, another
    /// owner) would refuse every change with 503 while it serves.
    pub fn check_writable(&self) -> Result<(), StoreError> {
        if let Some(e) = self.missing_dir() {
            return Err(e);
        }
        let dir = self.dir();
        let probe = dir.join(format!(
            ".{}.check-{}-{:016x}",
            self.file_name(),
            std::process::id(),
            rand::random::<u64>()
        ));
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .map_err(|e| {
                self.error(format!(
                    "cannot write in its directory {}: {e}: every decision is saved there (a temporary file renamed over the state file); make the directory writable by the gateway's user, or set [state] path to a file in one that is",
                    dir.display()
                ))
            })?;
        let owner = self.foreign_owner_in_sticky_dir(&dir, &created);
        drop(created);
        let _ = std::fs::remove_file(&probe);
        match owner {
            Some(uid) => Err(self.error(format!(
                "belongs to another user (uid {uid}) in a sticky directory ({}: as /tmp and /dev/shm, only a file's owner may replace it): every decision is saved by renaming a temporary file over it; remove it, or give it to the gateway's user",
                dir.display()
            ))),
            None => Ok(()),
        }
    }

    /// The owner of the state file when the gateway could not rename over
    /// it: a directory with the sticky bit lets only the owner of a file (or
    /// of the directory) replace it, so a state file an earlier run left as
    /// another user (root, say) in /tmp or /dev/shm takes no decision. The
    /// gateway's user is the owner of `probe`, a file it just made there.
    #[cfg(unix)]
    fn foreign_owner_in_sticky_dir(&self, dir: &Path, probe: &std::fs::File) -> Option<u32> {
        use std::os::unix::fs::MetadataExt;
        let me = probe.metadata().ok()?.uid();
        let dir = std::fs::metadata(dir).ok()?;
        let state = std::fs::symlink_metadata(&self.path).ok()?;
        let sticky = dir.mode() & 0o1000 != 0;
        (sticky && me != 0 && dir.uid() != me && state.uid() != me).then_some(state.uid())
    }

    #[cfg(not(unix))]
    fn foreign_owner_in_sticky_dir(&self, _dir: &Path, _probe: &std::fs::File) -> Option<u32> {
        None
    }

    /// Removes the temporary files that saves of this state file left
    /// behind (a gateway killed between writing one and renaming it: they
    /// would pile up on a persistent volume). Only with the lock held: no
    /// other gateway writes them then. Only names `.<name>.tmp-<digits>`;
    /// best effort (a failure is logged).
    fn remove_stale_temps(&self) {
        let prefix = self.temp_prefix();
        let dir = self.dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot list the state file's directory to remove stale temporary files");
                return;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(file = %path.display(), "removed a temporary file a save of the state file left behind (a gateway stopped mid-save)")
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove a temporary file a save of the state file left behind")
                }
            }
        }
    }

    /// The lock file beside the state file: `<path>.lock`.
    pub fn lock_path(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_os_string();
        name.push(".lock");
        PathBuf::from(name)
    }

    /// Takes the state file for this running gateway, until the answer is
    /// dropped: an exclusive advisory lock (`flock`) on [`FileStore::lock_path`],
    /// created when missing and never removed (removing it would let a
    /// later gateway lock a new file while the first holds the old one).
    /// The state file itself is not locked: every save replaces it by a
    /// rename, which a lock on it would not survive. Two gateways on one
    /// state file (a shared volume, two containers on one host) would
    /// overwrite each other's decisions silently, so a second one is
    /// refused, naming the file. A file system that takes no locks is
    /// logged and the gateway runs unlocked. `check` reads the file and
    /// takes no lock. Once locked, the temporary files earlier saves left
    /// behind are removed.
    pub fn lock(&self) -> Result<StateLock, StoreError> {
        if let Some(e) = self.missing_dir() {
            return Err(e);
        }
        let lock_path = self.lock_path();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| {
                self.error(format!(
                    "cannot open its lock file {}: {e}",
                    lock_path.display()
                ))
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&lock_path)
                    .map(|text| text.trim().to_string())
                    .unwrap_or_default();
                let holder = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" ({holder})")
                };
                return Err(self.error(format!(
                    "another canary-gateway holds it{holder}: its lock file {} is locked. Two gateways on one state file would overwrite each other's decisions: stop the other one, or give each gateway its own [state] path (a fleet of tasks shares a [store] of kind dynamodb or cloudmap instead)",
                    lock_path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                tracing::warn!(
                    lock_file = %lock_path.display(),
                    error = %e,
                    "the state file's file system takes no lock: running without one, so a second gateway on the same [state] path would not be refused"
                );
                return Ok(StateLock {
                    _file: None,
                    path: lock_path,
                });
            }
        }
        // Who holds it, for the error of the next one (best effort).
        let _ = file.set_len(0);
        let _ = (&file).write_all(holder().as_bytes());
        self.remove_stale_temps();
        Ok(StateLock {
            _file: Some(file),
            path: lock_path,
        })
    }

    fn load_sync(&self) -> Result<Option<WeightsDoc>, StoreError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // No decision saved yet, unless no file can be written there:
                // then every change would fail later, so the start does now.
                if let Some(e) = self.missing_dir() {
                    return Err(e);
                }
                return Ok(None);
            }
            Err(e) => return Err(self.error(format!("cannot read it: {e}"))),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            self.error(format!(
                "it is not a valid weights document ({e}); fix it, or delete it to start from the config file's weights"
            ))
        })
    }

    fn save_sync(&self, doc: &WeightsDoc) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(doc).map_err(|e| self.error(e))?;
        let dir = self.dir();
        let tmp = dir.join(format!("{}{}", self.temp_prefix(), std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&json)?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            // Make the rename itself durable.
            if let Ok(d) = std::fs::File::open(&dir) {
                let _ = d.sync_all();
            }
            Ok(())
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            self.error(format!("cannot write it: {e}"))
        })
    }
}

/// A running gateway's hold on its state file ([`FileStore::lock`]),
/// released when dropped (and by the system when the process ends).
#[derive(Debug)]
pub struct StateLock {
    /// The locked lock file; `None` where the file system takes no lock.
    _file: Option<std::fs::File>,
    path: PathBuf,
}

impl StateLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What the lock file says of its holder: the process id and, when known,
/// the host (a container's host name tells two containers apart, whose
/// process ids are alike).
fn holder() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty());
    match host {
        Some(host) => format!("pid {} on host {host}\n", std::process::id()),
        None => format!("pid {}\n", std::process::id()),
    }
}

impl FileStore {
    /// Runs blocking file I/O (fsync can take a while) off the async threads,
    /// so a weight change never stalls the data path.
    async fn off_runtime<T: Send + 'static>(
        &self,
        work: impl FnOnce(&FileStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = FileStore::new(self.path.clone());
        match tokio::task::spawn_blocking(move || work(&store)).await {
            Ok(result) => result,
            Err(e) => Err(self.error(format!("the file task failed: {e}"))),
        }
    }
}

impl Store for FileStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<WeightsDoc>, StoreError>> {
        Box::pin(self.off_runtime(FileStore::load_sync))
    }

    fn save<'a>(
        &'a self,
        doc: &'a WeightsDoc,
        _read_at: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let doc = doc.clone();
        Box::pin(self.off_runtime(move |store| store.save_sync(&doc)))
    }

    fn shared(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state file whose directory does not exist could never be written:
    /// the load (at `check` and at start) says so, instead of every change
    /// failing later; a missing file in an existing directory is a fresh
    /// start.
    #[tokio::test]
    async fn a_state_file_in_a_missing_directory_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir").join("state.json");
        let e = FileStore::new(missing)
            .load()
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no-such-dir") && e.contains("does not exist"),
            "{e}"
        );
        let fresh = FileStore::new(dir.path().join("state.json")).load().await;
        assert!(matches!(fresh, Ok(None)), "{fresh:?}");
    }

    fn doc() -> WeightsDoc {
        WeightsDoc {
            stable: "v1".into(),
            weights: [("v1".to_string(), 95), ("v2".to_string(), 5)].into(),
            generation: 3,
            updated_at_ms: 1,
            source: "admin".into(),
            writer: "w".into(),
            config_weights: None,
            config_stable: None,
            refused_config: None,
            rollout: None,
        }
    }

    /// A hand-edited generation past the highest one stops the load (the
    /// start and `check`), naming the file and the generation: a decision
    /// made on it would wrap to generation 0 and never apply.
    #[tokio::test]
    async fn a_generation_past_the_highest_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("gw.state.json"));
        let mut text = serde_json::to_value(doc()).unwrap();
        text["generation"] = u64::MAX.into();
        std::fs::write(store.path(), text.to_string()).unwrap();
        let e = store.load().await.unwrap_err().to_string();
        assert!(
            e.contains("gw.state.json")
                && e.contains("generation 18446744073709551615 is above 9007199254740991")
                && e.contains("delete it"),
            "{e}"
        );
    }

    /// One hold at a time on a state file, released when dropped; the lock
    /// is on `<path>.lock` (the state file is replaced by every save), and
    /// reading the file (what `check` does) needs none.
    #[tokio::test]
    async fn a_state_file_is_held_by_one_gateway_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("gw.state.json"));
        let held = store.lock().unwrap();
        assert_eq!(held.path(), dir.path().join("gw.state.json.lock"));
        store.save(&doc(), None).await.unwrap();
        let other = FileStore::new(dir.path().join("gw.state.json"));
        let e = other.lock().unwrap_err().to_string();
        assert!(
            e.contains("gw.state.json")
                && e.contains("another canary-gateway holds it")
                && e.contains(&format!("pid {}", std::process::id()))
                && e.contains("its own [state] path"),
            "{e}"
        );
        assert_eq!(other.load().await.unwrap(), Some(doc()));
        drop(held);
        let again = other.lock().unwrap();
        assert!(store.lock().is_err());
        drop(again);
        // A missing directory is named as the load names it.
        let e = FileStore::new(dir.path().join("gone").join("s.json"))
            .lock()
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    /// The temporary files of saves cut short (a `kill -9` between the
    /// write and the rename) are removed when the next gateway takes the
    /// state file; other files beside it stay, the temporary files of
    /// another state file in the same directory too.
    #[tokio::test]
    async fn stale_temporary_files_are_removed_once_the_lock_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("gw.state.json"));
        store.save(&doc(), None).await.unwrap();
        let stale = [".gw.state.json.tmp-1", ".gw.state.json.tmp-48213"];
        let kept = [
            ".gw.state.json.tmp-",
            ".gw.state.json.tmp-12x",
            ".other.state.json.tmp-7",
            "gw.state.json.tmp-7",
            ".gw.state.json.check-7-00",
            "notes.txt",
        ];
        for name in stale.iter().chain(&kept) {
            std::fs::write(dir.path().join(name), "{").unwrap();
        }
        let names = || {
            let mut names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        // `check` (no lock) removes nothing.
        store.check_writable().unwrap();
        assert_eq!(names().len(), stale.len() + kept.len() + 1);
        let held = store.lock().unwrap();
        let mut expected: Vec<String> = kept.iter().map(|n| n.to_string()).collect();
        expected.extend(["gw.state.json".into(), "gw.state.json.lock".into()]);
        expected.sort();
        assert_eq!(names(), expected);
        assert_eq!(store.load().await.unwrap(), Some(doc()));
        drop(held);
    }

    /// A state file's directory that cannot be written in is refused,
    /// naming it, without leaving a file behind where it can.
    #[test]
    fn a_directory_that_cannot_be_written_in_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("gw.state.json"));
        store.check_writable().unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let read_only = dir.path().join("ro");
        std::fs::create_dir(&read_only).unwrap();
        std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o555)).unwrap();
        // File modes do not stop root: /proc/self takes no new file from anyone.
        let unwritable = if std::fs::write(read_only.join("probe"), "").is_ok() {
            PathBuf::from("/proc/self")
        } else {
            read_only
        };
        let e = FileStore::new(unwritable.join("gw.state.json"))
            .check_writable()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(
                "cannot write in its directory {}",
                unwritable.display()
            )) && e.contains("[state] path"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn round_trips_and_reports_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("gw.state.json"));
        assert_eq!(store.load().await.unwrap(), None);
        store.save(&doc(), None).await.unwrap();
        assert_eq!(store.load().await.unwrap(), Some(doc()));
        std::fs::write(store.path(), "{not json").unwrap();
        let err = store.load().await.unwrap_err().to_string();
        assert!(
            err.contains("gw.state.json") && err.contains("delete it"),
            "{err}"
        );
    }
}
