//! The default store: a JSON state file beside the config file, written
//! atomically (temp file, fsync, rename, fsync of the directory).

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

    fn load_sync(&self) -> Result<Option<WeightsDoc>, StoreError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // No decision saved yet, unless no file can be written there:
                // then every change would fail later, so the start does now.
                let dir = match self.path.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d,
                    _ => Path::new("."),
                };
                if !dir.is_dir() {
                    return Err(self.error(format!(
                        "its directory {} does not exist: create it, or set [state] path to a file in one that does",
                        dir.display()
                    )));
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
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
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
