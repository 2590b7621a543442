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
    /// takes no lock.
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
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "state.json".into());
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
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
