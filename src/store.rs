//! Control path: where weight decisions are kept so that they survive restarts
//! and are shared by every replica.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::future::BoxFuture;

/// The durable record of the operator's latest weight decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightsDoc {
    /// The stable version (changes on promote).
    pub stable: String,
    /// Weight of every version.
    pub weights: BTreeMap<String, u32>,
    /// Orders decisions: a higher generation is a newer decision.
    pub generation: u64,
    /// When the decision was made, milliseconds since the Unix epoch.
    pub updated_at_ms: u64,
    /// Which path made it: admin, reload, rollout, store.
    pub source: String,
    /// The config file's weights when the decision was made. A config file whose
    /// weights differ from these was edited since, and that edit is the newer decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_weights: Option<BTreeMap<String, u32>>,
    /// The progressive rollout, when one was started (see `rollout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::state::RolloutState>,
}

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("cloud map store: {0}")]
    CloudMap(String),
    #[error("stored weights document is invalid: {0}")]
    Invalid(String),
}

/// A place that keeps the [`WeightsDoc`].
pub trait Store: Send + Sync + 'static {
    /// The stored document, `None` when nothing was stored yet.
    fn load(&self) -> BoxFuture<'_, Result<Option<WeightsDoc>, StoreError>>;
    /// Replace the stored document.
    fn save<'a>(&'a self, doc: &'a WeightsDoc) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Whether other replicas share this store (it is polled for their changes).
    fn shared(&self) -> bool;
}

pub mod file;

/// Milliseconds since the Unix epoch, for `updated_at_ms`.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
