//! A shared [`Store`] test double in memory, for unit tests of the control
//! path: a conditional write like DynamoDB's, an outage switch, and a way to
//! make the next loads answer a given (e.g. older) document.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::{Store, StoreError, TaskReport, WeightsDoc};
use crate::future::BoxFuture;

/// A v1/v2 decision for unit tests: v2 at `v2` of 100, the rest on stable
/// v1, made by `writer` at `generation` (its time follows the generation).
pub fn doc(generation: u64, writer: &str, v2: u32) -> WeightsDoc {
    WeightsDoc {
        stable: "v1".into(),
        weights: std::collections::BTreeMap::from([
            ("v1".to_string(), 100 - v2),
            ("v2".to_string(), v2),
        ]),
        generation,
        updated_at_ms: 1_000 + generation,
        source: "admin".into(),
        writer: writer.into(),
        config_weights: None,
        config_stable: None,
        refused_config: None,
        rollout: None,
    }
}

/// The double's state.
#[derive(Default)]
pub struct MemoryStore {
    /// The stored document.
    pub doc: Mutex<Option<WeightsDoc>>,
    /// When set, every call fails (the store is down).
    pub down: AtomicBool,
    /// When set, loads answer this instead of the stored document (a stale read).
    pub stale: Mutex<Option<WeightsDoc>>,
    /// Successful saves.
    pub saves: AtomicUsize,
    /// When set, the next load waits for [`MemoryStore::release`] (a slow AWS call).
    pub stall_next_load: AtomicBool,
    /// When non-zero, the load of this number (counted from 1, as `loads`)
    /// waits for [`MemoryStore::release`]: a decision's own read, say, after
    /// the reads before it answered.
    pub stall_at_load: AtomicUsize,
    /// Releases a stalled load.
    pub release: tokio::sync::Notify,
    /// When set, every call is throttled.
    pub throttled: AtomicBool,
    /// When set, loads fail (the weights item unreadable) and reports work.
    pub fail_loads: AtomicBool,
    /// Loads asked for.
    pub loads: AtomicUsize,
    /// The tasks' reports by task id.
    pub reports: Mutex<std::collections::BTreeMap<String, TaskReport>>,
    /// Reports written.
    pub report_writes: AtomicUsize,
    /// When non-zero, the next this many saves fail (a full disk, until an
    /// operator makes room), each taking one off.
    pub fail_saves: AtomicUsize,
    /// When set, saves are unconditional and the store says it has no
    /// compare-and-set (like Cloud Map's).
    pub no_compare_and_set: AtomicBool,
}

impl MemoryStore {
    /// The stored document.
    pub fn stored(&self) -> Option<WeightsDoc> {
        self.doc.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes the store down or brings it back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn check_up(&self) -> Result<(), StoreError> {
        if self.throttled.load(Ordering::SeqCst) {
            return Err(StoreError::Throttled("ThrottlingException (test)".into()));
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::DynamoDb("connection refused (test)".into()));
        }
        Ok(())
    }
}

impl Store for MemoryStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<WeightsDoc>, StoreError>> {
        Box::pin(async move {
            let n = self.loads.fetch_add(1, Ordering::SeqCst) + 1;
            let numbered = self
                .stall_at_load
                .compare_exchange(n, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
            if self.stall_next_load.swap(false, Ordering::SeqCst) || numbered {
                self.release.notified().await;
            }
            self.check_up()?;
            if self.fail_loads.load(Ordering::SeqCst) {
                return Err(StoreError::Invalid("unreadable (test)".into()));
            }
            if let Some(stale) = self.stale.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                return Ok(Some(stale));
            }
            Ok(self.stored())
        })
    }

    fn save<'a>(
        &'a self,
        doc: &'a WeightsDoc,
        read_at: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.check_up()?;
            let failing = self
                .fail_saves
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if failing.is_ok() {
                return Err(StoreError::DynamoDb(
                    "no space left on device (test)".into(),
                ));
            }
            let mut slot = self.doc.lock().unwrap_or_else(|e| e.into_inner());
            let current = slot.as_ref().map(|d| d.generation);
            if current.is_some()
                && current != read_at
                && !self.no_compare_and_set.load(Ordering::SeqCst)
            {
                return Err(StoreError::Conflict(slot.clone().map(Box::new)));
            }
            *slot = Some(doc.clone());
            self.saves.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn compare_and_set(&self) -> bool {
        !self.no_compare_and_set.load(Ordering::SeqCst)
    }

    fn report<'a>(
        &'a self,
        report: &'a TaskReport,
    ) -> BoxFuture<'a, Result<Option<Vec<TaskReport>>, StoreError>> {
        Box::pin(async move {
            self.check_up()?;
            self.report_writes.fetch_add(1, Ordering::SeqCst);
            let mut reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
            reports.insert(report.task.clone(), report.clone());
            Ok(Some(reports.values().cloned().collect()))
        })
    }

    fn withdraw<'a>(&'a self, task: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.check_up()?;
            self.reports
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(task);
            Ok(())
        })
    }
}
