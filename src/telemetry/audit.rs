//! The recent audit log of weight changes, for the dashboard: a bounded ring
//! fed where decisions are applied (beside the `audit` log line), newest
//! last. Process-wide, like the metrics.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, OnceLock};

use serde::Serialize;

use crate::store::WeightsDoc;

/// Entries kept.
pub const ENTRIES: usize = 200;

/// One applied change.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditEntry {
    /// When it was applied, ms since the Unix epoch.
    pub at_ms: u64,
    /// Which path made it: config, admin, reload, rollout, store (...).
    pub source: String,
    /// The gateway task that wrote the decision (random per process; empty
    /// for the config file's own weights).
    pub writer: String,
    pub generation: u64,
    pub old_weights: BTreeMap<String, u32>,
    pub new_weights: BTreeMap<String, u32>,
    pub old_stable: String,
    pub stable: String,
}

/// A bounded log of changes.
#[derive(Debug, Default)]
pub struct AuditLog {
    entries: Mutex<VecDeque<AuditEntry>>,
}

impl AuditLog {
    /// Adds the change from `old` to `new`; the oldest entry beyond [`ENTRIES`] goes.
    pub fn record(&self, old: &WeightsDoc, new: &WeightsDoc) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() == ENTRIES {
            entries.pop_front();
        }
        entries.push_back(AuditEntry {
            at_ms: crate::store::unix_ms(),
            source: new.source.clone(),
            writer: new.writer.clone(),
            generation: new.generation,
            old_weights: old.weights.clone(),
            new_weights: new.weights.clone(),
            old_stable: old.stable.clone(),
            stable: new.stable.clone(),
        });
    }

    /// Every entry, oldest first.
    pub fn entries(&self) -> Vec<AuditEntry> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().cloned().collect()
    }
}

/// The process's audit log.
pub fn global() -> &'static AuditLog {
    static LOG: OnceLock<AuditLog> = OnceLock::new();
    LOG.get_or_init(AuditLog::default)
}

/// Records an applied change in the process's audit log.
pub fn record(old: &WeightsDoc, new: &WeightsDoc) {
    global().record(old, new);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(generation: u64, v2: u32, source: &str) -> WeightsDoc {
        WeightsDoc {
            stable: "v1".into(),
            weights: [("v1".to_string(), 100 - v2), ("v2".to_string(), v2)].into(),
            generation,
            updated_at_ms: 0,
            source: source.into(),
            writer: "task-a".into(),
            config_weights: None,
            config_stable: None,
            refused_config: None,
            rollout: None,
        }
    }

    #[test]
    fn keeps_the_latest_changes_in_order() {
        let log = AuditLog::default();
        for g in 0..(ENTRIES as u64 + 5) {
            log.record(&doc(g, 10, "config"), &doc(g + 1, 50, "admin"));
        }
        let entries = log.entries();
        assert_eq!(entries.len(), ENTRIES);
        assert_eq!(entries[0].generation, 6);
        let last = entries.last().unwrap();
        assert_eq!(last.generation, ENTRIES as u64 + 5);
        assert_eq!(last.source, "admin");
        assert_eq!(last.writer, "task-a");
        assert_eq!(last.old_weights["v2"], 10);
        assert_eq!(last.new_weights["v2"], 50);
    }
}
