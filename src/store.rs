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
    /// Orders decisions: a higher generation is a newer decision. At most
    /// [`MAX_GENERATION`]: a document above it (edited by hand) is refused
    /// where it is read, like one that does not parse.
    #[serde(deserialize_with = "generation")]
    pub generation: u64,
    /// When the decision was made, milliseconds since the Unix epoch.
    pub updated_at_ms: u64,
    /// Which path made it: admin, reload, rollout, store.
    pub source: String,
    /// Which gateway task wrote it (random per process): breaks ties between
    /// two decisions of the same generation, see [`WeightsDoc::is_newer_than`].
    #[serde(default)]
    pub writer: String,
    /// The config file's weights when the decision was made. A config file whose
    /// weights differ from these was edited since, and that edit is the newer decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_weights: Option<BTreeMap<String, u32>>,
    /// The config file's stable version when the decision was made (file
    /// store only): a file whose stable version differs was edited since,
    /// and that edit is the newer decision. `None`: unknown (a document from
    /// an older gateway, or a shared store, whose start ignores the file),
    /// never taken for an edit. Older gateways ignore the field (no
    /// `deny_unknown_fields`); left out when `None`, so shared stores'
    /// documents (Cloud Map's 1,024 characters) do not grow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_stable: Option<String>,
    /// The progressive rollout, when one was started (see `rollout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::state::RolloutState>,
    /// The config file's weights and stable version that a reload refused
    /// because a rollout ran (file store only), until a reload applies a
    /// text or the file is edited to another: a start that finds the file
    /// still so keeps this decision rather than take the refused text for an
    /// edit made while the gateway was stopped (which would give an aborted
    /// canary traffic again, or undo a promotion). Older gateways ignore the
    /// field; left out when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_config: Option<ConfigWeights>,
}

/// A config file's weights and stable version, as a reload read them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigWeights {
    pub stable: String,
    pub weights: BTreeMap<String, u32>,
}

impl ConfigWeights {
    /// The weights and stable version of `config`'s text.
    pub fn of(config: &crate::config::Config) -> Self {
        ConfigWeights {
            stable: config.split.stable.clone(),
            weights: config.weights(),
        }
    }
}

impl WeightsDoc {
    /// The total order of decisions: generation, then writer id, then time.
    /// Every task compares the same three values, so every task agrees on
    /// which of two documents is the newer one.
    pub fn order(&self) -> (u64, &str, u64) {
        (self.generation, &self.writer, self.updated_at_ms)
    }

    /// Whether `self` comes after `other` in [`WeightsDoc::order`]. A task
    /// applies a document from the store only when it is newer than the
    /// decision in force: a stale read can never revert a decision. (On a
    /// store without compare-and-set, another writer's document of the
    /// generation in force is adopted too, read twice: see
    /// [`Store::compare_and_set`].)
    pub fn is_newer_than(&self, other: &WeightsDoc) -> bool {
        self.order() > other.order()
    }
}

/// The highest generation a decision can have: 2^53 - 1, JavaScript's
/// `Number.MAX_SAFE_INTEGER` (the dashboard and most JSON tools read numbers
/// as doubles, which hold every integer up to it exactly). Far more
/// decisions than a gateway ever makes; a stored document above it was
/// edited by hand, and the next generation of one at it cannot be written.
pub const MAX_GENERATION: u64 = (1 << 53) - 1;

/// The generation of the decision made after one at `generation`.
pub fn next_generation(generation: u64) -> Result<u64, GenerationLimit> {
    generation
        .checked_add(1)
        .filter(|&next| next <= MAX_GENERATION)
        .ok_or(GenerationLimit(generation))
}

/// No decision can follow the one at this generation: it is
/// [`MAX_GENERATION`] (or above, which no store read lets through).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the decision in force has generation {0}, the highest a decision can have ({MAX_GENERATION}, 2^53-1): no newer decision can be recorded; reset the store (delete the state file, or the shared store's document) to start again from generation 0"
)]
pub struct GenerationLimit(pub u64);

/// Reads a document's generation, refusing one above [`MAX_GENERATION`].
fn generation<'de, D: serde::Deserializer<'de>>(de: D) -> Result<u64, D::Error> {
    let generation = u64::deserialize(de)?;
    if generation > MAX_GENERATION {
        return Err(serde::de::Error::custom(format_args!(
            "generation {generation} is above {MAX_GENERATION} (2^53-1), the highest a decision can have"
        )));
    }
    Ok(generation)
}

/// What one gateway task reports about itself into a shared store, so that
/// every task (and `GET /status` `fleet`) sees which decision each task runs.
/// Kept apart from the [`WeightsDoc`]: a report never races with a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    /// The task's writer id (the `writer` of the documents it writes).
    pub task: String,
    /// The generation of the decision the task runs.
    pub generation: u64,
    /// When the task wrote this report (ms since the Unix epoch, its clock).
    pub reported_at_ms: u64,
    /// When the task applied the decision it runs (ms since the Unix epoch).
    #[serde(default)]
    pub applied_at_ms: u64,
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub draining: bool,
    /// Started without the store and has not read it since.
    #[serde(default)]
    pub degraded: bool,
    /// The gateway's own version (the binary's package version).
    #[serde(default)]
    pub version: String,
    /// The task's last App Mesh route sync failed (a route it cannot find or
    /// write): it is not chosen to reconcile the route in place of a writer
    /// that is gone (see [`crate::control::fleet::stands_in`]). Written only
    /// when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub appmesh_failing: bool,
}

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("cloud map store: {0}")]
    CloudMap(String),
    #[error("dynamodb store: {0}")]
    DynamoDb(String),
    #[error("stored weights document is invalid: {0}")]
    Invalid(String),
    /// The store throttled the call; callers back off.
    #[error("throttled by the store: {0}")]
    Throttled(String),
    /// A write whose outcome is unknown: it was sent and may have landed
    /// (its answer was lost and it could not be read back). One that landed
    /// applies on every task at its next poll.
    #[error("the write may have landed but could not be confirmed: {0}")]
    Unconfirmed(String),
    /// The store answered a weights document that cannot be parsed.
    /// `generation`: the generation the store keeps beside it, when it has
    /// one that reads (DynamoDB's `generation` attribute), so that a write
    /// over the document can still be conditional on it.
    #[error("stored weights document is invalid: {message}")]
    Unparseable {
        message: String,
        generation: Option<u64>,
    },
    /// The stored item contradicts itself: a conditional write on the
    /// generation of the document read failed although the document is
    /// still the one read (DynamoDB: the item's `generation` attribute does
    /// not match its document's, after a hand edit). No retry can succeed
    /// until the item is fixed.
    #[error("the stored item is inconsistent, fix it: {0}")]
    Inconsistent(String),
    /// Another task wrote a decision since this one was read: nothing was
    /// written. Holds the store's current document.
    #[error("another gateway task wrote a newer decision first")]
    Conflict(Option<Box<WeightsDoc>>),
}

impl StoreError {
    /// Whether the store refused the call for load (back off before the next one).
    pub fn is_throttled(&self) -> bool {
        matches!(self, StoreError::Throttled(_))
    }

    /// Whether the store answered but its document cannot be parsed.
    pub fn is_unparseable(&self) -> bool {
        matches!(
            self,
            StoreError::Invalid(_) | StoreError::Unparseable { .. }
        )
    }
}

/// A place that keeps the [`WeightsDoc`].
/// How long a rollback waits for its store write before it answers, on a
/// store whose write is one or two calls (file, DynamoDB): see
/// [`Store::rollback_write_wait`].
pub const ROLLBACK_WRITE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

pub trait Store: Send + Sync + 'static {
    /// The stored document, `None` when nothing was stored yet. Shared stores
    /// read as consistently as the service allows (DynamoDB: strongly consistent).
    fn load(&self) -> BoxFuture<'_, Result<Option<WeightsDoc>, StoreError>>;
    /// Replaces the stored document if it is still the one read at generation
    /// `read_at` (`None`: nothing was stored, or a document that does not
    /// parse and has no generation that reads beside it). When another writer came first a
    /// shared store answers [`StoreError::Conflict`] with the current document
    /// and writes nothing; the file store (one task) writes unconditionally.
    fn save<'a>(
        &'a self,
        doc: &'a WeightsDoc,
        read_at: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Whether other replicas share this store (it is polled for their changes).
    fn shared(&self) -> bool;
    /// Whether a write is conditional (compare-and-set, DynamoDB): then two
    /// decisions of the same generation can never both be written, and a
    /// task applies a document from the store only when it is newer than the
    /// decision in force. Cloud Map has no conditional write: two tasks can
    /// both confirm their own document of the same generation, and the store
    /// keeps one of them, whatever its place in the order; a poll adopts that
    /// one (see `Control::sync_from_store`).
    fn compare_and_set(&self) -> bool {
        true
    }
    /// How long a rollback, already in force on the task, waits for its
    /// write to this store before it answers; a write that takes longer goes
    /// on in the store upkeep, and the answer says `rollback_pending` (a hung
    /// AWS call takes up to the SDK's 20 s). Room for one write here, with a
    /// retry: [`ROLLBACK_WRITE_WAIT`] unless the store's writes take longer.
    fn rollback_write_wait(&self) -> std::time::Duration {
        ROLLBACK_WRITE_WAIT
    }
    /// Writes this task's report (replacing only its own earlier one) and
    /// answers every task's report as stored, this one included. `None`: this
    /// store keeps no reports (the file store; Cloud Map, see docs/fleet.md).
    fn report<'a>(
        &'a self,
        _report: &'a TaskReport,
    ) -> BoxFuture<'a, Result<Option<Vec<TaskReport>>, StoreError>> {
        Box::pin(async { Ok(None) })
    }
    /// Removes the report of `task` (a task that stops), best effort.
    fn withdraw<'a>(&'a self, _task: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
    /// Whether `doc` fits what the store can hold (Cloud Map: one attribute
    /// value of at most 1,024 characters). Checked before a change that makes
    /// the document grow later (a rollout's plan and history), so that such a
    /// change is refused up front instead of failing midway.
    fn check_fits(&self, doc: &WeightsDoc) -> Result<(), StoreError> {
        let _ = doc;
        Ok(())
    }
}

pub mod file;

#[cfg(test)]
pub mod memory;

/// Milliseconds since the Unix epoch, for `updated_at_ms`.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod generation_tests {
    use super::*;

    /// The next generation never wraps: at (or past) the highest one it is
    /// an error that says what to do.
    #[test]
    fn the_next_generation_stops_at_the_highest_instead_of_wrapping() {
        assert_eq!(next_generation(0), Ok(1));
        assert_eq!(next_generation(MAX_GENERATION - 1), Ok(MAX_GENERATION));
        assert_eq!(MAX_GENERATION, 9_007_199_254_740_991);
        for at in [MAX_GENERATION, MAX_GENERATION + 1, u64::MAX] {
            let e = next_generation(at).unwrap_err();
            assert_eq!(e, GenerationLimit(at));
            let text = e.to_string();
            assert!(
                text.contains(&at.to_string()) && text.contains("9007199254740991"),
                "{text}"
            );
        }
    }

    /// A document above the highest generation does not read, whatever
    /// store it comes from (they all parse it with serde).
    #[test]
    fn a_document_above_the_highest_generation_is_refused_when_read() {
        let json = |generation: u64| {
            format!(
                r#"{{"stable":"v1","weights":{{"v1":100}},"generation":{generation},"updated_at_ms":1,"source":"admin"}}"#
            )
        };
        let at_max: WeightsDoc = serde_json::from_str(&json(MAX_GENERATION)).unwrap();
        assert_eq!(at_max.generation, MAX_GENERATION);
        for above in [MAX_GENERATION + 1, u64::MAX] {
            let e = serde_json::from_str::<WeightsDoc>(&json(above))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("generation {above} is above 9007199254740991")),
                "{e}"
            );
        }
    }
}
