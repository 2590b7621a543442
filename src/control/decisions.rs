//! Control path: weight decisions. Validate, write the store, then apply;
//! adopt the fleet store's newer decisions.

use std::collections::BTreeMap;

use super::status::WeightsView;
use super::{Control, ControlError, State, view};
use crate::config::{Config, check_total};
use crate::metrics as names;
use crate::store::{StoreError, WeightsDoc, unix_ms};

impl Control {
    pub fn weights(&self) -> WeightsView {
        view(&self.lock().decision)
    }

    /// `PUT /weights`: sets the named versions' weights; the others keep theirs.
    pub async fn set_weights(
        &self,
        changes: BTreeMap<String, u32>,
        source: &str,
    ) -> Result<WeightsView, ControlError> {
        self.decide(source, |d| {
            let mut weights = d.weights.clone();
            for (name, w) in changes {
                match weights.get_mut(&name) {
                    Some(slot) => *slot = w,
                    None => return Err(ControlError::UnknownVersion(name)),
                }
            }
            Ok((d.stable.clone(), weights))
        })
        .await
    }

    /// `POST /promote`: `version` takes all the weight and becomes stable.
    /// A paused rollout from another stable version ends with it (see
    /// [`crate::rollout::state::after_stable_change`]; the admin API refuses
    /// a promotion while one progresses).
    pub async fn promote(&self, version: &str, source: &str) -> Result<WeightsView, ControlError> {
        self.decide_with(source, |d| {
            if !d.weights.contains_key(version) {
                return Err(ControlError::UnknownVersion(version.to_string()));
            }
            let rollout = crate::rollout::state::after_stable_change(
                d.rollout.as_ref(),
                version,
                "POST /promote",
                unix_ms(),
            );
            Ok((
                version.to_string(),
                all_weight_to(&d.weights, version),
                rollout,
            ))
        })
        .await
    }

    /// `POST /rollback` (and an automated rollout's abort): the stable version
    /// takes all the weight at once. An emergency rollback always takes effect
    /// on this task: when another task decided first it rolls back from that
    /// decision; when the store cannot be written it applies here anyway and
    /// the store upkeep keeps writing it (`/status`: rollback pending in the store).
    pub async fn rollback(&self, source: &str) -> Result<WeightsView, ControlError> {
        self.rollback_for(source, &format!("rollback ({source})"))
            .await
    }

    /// A rollback that also ends a running rollout as aborted, for `reason`
    /// (the rollout's abort goes this way, so it always applies too).
    pub async fn rollback_for(
        &self,
        source: &str,
        reason: &str,
    ) -> Result<WeightsView, ControlError> {
        for _ in 0..ROLLBACK_ATTEMPTS {
            match self.decide_with(source, |d| to_stable(d, reason)).await {
                // The newer decision was applied here: roll back from it.
                Err(ControlError::Conflict(_)) => continue,
                Err(ControlError::Store(e) | ControlError::StoreLoad(e)) => {
                    return Ok(self.rollback_locally(source, reason, &e).await);
                }
                other => return other,
            }
        }
        let busy = crate::store::StoreError::Invalid(
            "other tasks kept writing decisions while this rollback was made".into(),
        );
        Ok(self.rollback_locally(source, reason, &busy).await)
    }

    /// Applies a rollback on this task without the store and leaves it to the
    /// store upkeep (see [`Control::flush_pending_rollback`]).
    async fn rollback_locally(
        &self,
        source: &str,
        reason: &str,
        why: &crate::store::StoreError,
    ) -> WeightsView {
        let _turn = self.decisions.lock().await;
        let mut state = self.lock();
        let (stable, weights, rollout) = match to_stable(&state.decision, reason) {
            Ok(change) => change,
            Err(_) => (
                state.decision.stable.clone(),
                state.decision.weights.clone(),
                state.decision.rollout.clone(),
            ),
        };
        let doc = self.next_decision(&state, (stable, weights, rollout), source);
        tracing::error!(target: "audit", error = %why, generation = doc.generation, "rollback applied on this task only: the store could not take it; retrying in the background");
        if let Err(e) = self.apply(&mut state, doc) {
            tracing::error!(error = %e, "the rollback could not be applied");
            return view(&state.decision);
        }
        state.rollback_pending = true;
        state.store.rollback_pending = true;
        metrics::counter!(names::STORE_ROLLBACKS_DEFERRED_TOTAL).increment(1);
        metrics::gauge!(names::STORE_ROLLBACK_PENDING).set(1.0);
        self.pending_wake.notify_one();
        view(&state.decision)
    }

    /// Writes a rollback that was applied without the store (re-based on the
    /// store's latest generation so that it is the newest decision). `Ok(true)`
    /// when nothing is pending any more.
    pub async fn flush_pending_rollback(&self) -> Result<bool, ControlError> {
        let _turn = self.decisions.lock().await;
        self.flush_pending_locked().await
    }

    /// At exit: one more try, within `limit`, to write a rollback still
    /// pending in the store; when it cannot, says loudly that the fleet's
    /// other tasks keep the weights the rollback replaced.
    pub async fn flush_rollback_before_exit(&self, limit: std::time::Duration) {
        if !self.lock().rollback_pending {
            return;
        }
        let why = match tokio::time::timeout(limit, self.flush_pending_rollback()).await {
            Ok(Ok(true)) => {
                tracing::info!(target: "audit", "the pending rollback was written to the store at exit");
                return;
            }
            Ok(Ok(false)) => "other tasks kept writing decisions".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {limit:?}"),
        };
        tracing::error!(target: "audit", error = %why, "exiting with a rollback the store never took: the fleet's other tasks keep the weights it replaced; roll back again (POST /rollback) once the store answers");
    }

    /// [`Control::flush_pending_rollback`] with the decisions lock held.
    async fn flush_pending_locked(&self) -> Result<bool, ControlError> {
        for _ in 0..ROLLBACK_ATTEMPTS {
            let pending = {
                let state = self.lock();
                if !state.rollback_pending {
                    return Ok(true);
                }
                state.decision.clone()
            };
            let latest = self.read_store().await?;
            let read_at = latest.as_ref().map(|d| d.generation);
            let doc = WeightsDoc {
                generation: pending.generation.max(read_at.map_or(0, |g| g + 1)),
                updated_at_ms: unix_ms().max(pending.updated_at_ms),
                ..pending
            };
            match self.write_store(&doc, read_at).await {
                Ok(()) => {
                    let mut state = self.lock();
                    state.rollback_pending = false;
                    state.store.rollback_pending = false;
                    metrics::gauge!(names::STORE_ROLLBACK_PENDING).set(0.0);
                    tracing::info!(target: "audit", generation = doc.generation, "the pending rollback is in the store now");
                    self.apply(&mut state, doc)?;
                    return Ok(true);
                }
                Err(ControlError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Makes a weight decision: validate, write the store, then apply. A
    /// rollout in the document is carried over.
    ///
    /// With a shared store the write is conditional on the generation the
    /// store held when read: when another task wrote first (or this task had
    /// not seen the latest decision yet) the answer is
    /// [`ControlError::Conflict`] and the store's decision is applied here.
    pub(super) async fn decide(
        &self,
        source: &str,
        change: impl FnOnce(&WeightsDoc) -> Result<(String, BTreeMap<String, u32>), ControlError>,
    ) -> Result<WeightsView, ControlError> {
        self.decide_with(source, |d| {
            change(d).map(|(stable, weights)| (stable, weights, d.rollout.clone()))
        })
        .await
    }

    /// [`Control::decide`] that also sets the document's rollout.
    pub(super) async fn decide_with(
        &self,
        source: &str,
        change: impl FnOnce(&WeightsDoc) -> Result<Decision, ControlError>,
    ) -> Result<WeightsView, ControlError> {
        let _turn = self.decisions.lock().await;
        // A rollback waiting for the store goes first: it is older.
        if !self.flush_pending_locked().await? {
            return Err(ControlError::Store(StoreError::Invalid(
                "a rollback is still pending in the store".into(),
            )));
        }
        let (doc, versions) = {
            let state = self.lock();
            let (stable, weights, rollout) = change(&state.decision)?;
            let versions: Vec<String> = state.config.version_names();
            validate_weights(&versions, &stable, &weights)?;
            let doc = self.next_decision(&state, (stable, weights, rollout), source);
            (doc, versions)
        };
        let doc = self.record(doc).await?;
        let mut state = self.lock();
        // A reload may have changed the versions while the store was written.
        let now: Vec<String> = state.config.version_names();
        if now != versions {
            return Err(ControlError::Invalid(
                "the config was reloaded during the change; try again".into(),
            ));
        }
        // A poll may have applied a decision written after this one: newer only.
        if doc.is_newer_than(&state.decision) {
            self.apply(&mut state, doc.clone())?;
        }
        Ok(view(&doc))
    }

    /// A new decision by this task, one generation after the one in force.
    fn next_decision(&self, state: &State, decision: Decision, source: &str) -> WeightsDoc {
        let (stable, weights, rollout) = decision;
        WeightsDoc {
            stable,
            weights,
            generation: state.decision.generation + 1,
            updated_at_ms: unix_ms(),
            source: source.to_string(),
            writer: self.writer.clone(),
            config_weights: Some(state.config.weights()),
            rollout,
        }
    }

    /// Writes a decision to the store. A shared store is read first (its
    /// generation is the write's condition); a document whose generation is
    /// not above the store's was made from an older decision and is refused
    /// with [`ControlError::Conflict`] (the store's decision is applied).
    pub(super) async fn record(&self, doc: WeightsDoc) -> Result<WeightsDoc, ControlError> {
        let mut read_at = None;
        if self.store.shared()
            && let Some(latest) = self.read_store().await?
        {
            if latest.generation >= doc.generation {
                return Err(self.conflict(Some(latest)));
            }
            read_at = Some(latest.generation);
        }
        self.write_store(&doc, read_at).await?;
        Ok(doc)
    }

    /// One read of the store, accounted (metrics, /status).
    async fn read_store(&self) -> Result<Option<WeightsDoc>, ControlError> {
        let loaded = self.store.load().await;
        self.store_outcome("load", loaded.as_ref().map(|_| ()));
        loaded.map_err(|e| {
            tracing::error!(error = %e, "weight change refused: the store could not be read");
            ControlError::StoreLoad(e)
        })
    }

    /// One conditional write of the store, accounted (metrics, /status).
    async fn write_store(
        &self,
        doc: &WeightsDoc,
        read_at: Option<u64>,
    ) -> Result<(), ControlError> {
        match self.store.save(doc, read_at).await {
            Ok(()) => {
                self.store_outcome("save", Ok(()));
                Ok(())
            }
            Err(StoreError::Conflict(current)) => {
                metrics::counter!(names::STORE_OPERATIONS_TOTAL, "op" => "save", "result" => "conflict").increment(1);
                tracing::warn!(
                    generation = doc.generation,
                    "weight change refused: another task wrote the store first"
                );
                Err(self.conflict(current.map(|d| *d)))
            }
            Err(e) => {
                self.store_outcome("save", Err(&e));
                tracing::error!(error = %e, "weight change refused: the store could not be written");
                Err(ControlError::Store(e))
            }
        }
    }

    /// Counts a store call and keeps its outcome for /status.
    pub(super) fn store_outcome(&self, op: &'static str, outcome: Result<(), &StoreError>) {
        let mut state = self.lock();
        match outcome {
            Ok(()) => {
                metrics::counter!(names::STORE_OPERATIONS_TOTAL, "op" => op, "result" => "ok")
                    .increment(1);
                state.store.last_ok_ms = Some(unix_ms());
                state.store.last_error = None;
                if op == "load" && state.store.degraded {
                    state.store.degraded = false;
                    metrics::gauge!(names::STORE_DEGRADED).set(0.0);
                    tracing::info!("the weight store is readable again: no longer degraded");
                }
            }
            Err(e) => {
                let result = if e.is_throttled() {
                    "throttled"
                } else {
                    "error"
                };
                metrics::counter!(names::STORE_OPERATIONS_TOTAL, "op" => op, "result" => result)
                    .increment(1);
                state.store.last_error = Some(e.to_string());
            }
        }
    }

    /// A lost race: applies the store's current decision (when newer) and
    /// answers with it.
    fn conflict(&self, current: Option<WeightsDoc>) -> ControlError {
        if let Some(doc) = current {
            self.adopt(doc);
        }
        ControlError::Conflict(Box::new(view(&self.lock().decision)))
    }

    /// Applies the store's document when it is newer than the decision in
    /// force ([`WeightsDoc::is_newer_than`]); an older or equal one is ignored.
    fn adopt(&self, doc: WeightsDoc) {
        let mut state = self.lock();
        if state.rollback_pending || !doc.is_newer_than(&state.decision) {
            return;
        }
        let doc = fit_to_config(doc, &state.config);
        let versions: Vec<String> = state.config.version_names();
        if let Err(e) = validate_weights(&versions, &doc.stable, &doc.weights) {
            tracing::warn!(error = %e, generation = doc.generation, "ignoring the store's weights: invalid for this config");
            return;
        }
        let doc = WeightsDoc {
            source: format!("store ({})", doc.source),
            ..doc
        };
        if let Err(e) = self.apply(&mut state, doc) {
            tracing::warn!(error = %e, "could not apply the store's weights");
        }
    }

    /// Applies a recorded decision: new snapshot, audit line, App Mesh sync.
    pub(super) fn apply(&self, state: &mut State, doc: WeightsDoc) -> Result<(), ControlError> {
        let old = std::mem::replace(&mut state.decision, doc);
        if let Err(e) = self.swap(state) {
            state.decision = old;
            return Err(e);
        }
        state.applied_at_ms = unix_ms();
        self.report_soon();
        let new = &state.decision;
        tracing::info!(
            target: "audit",
            source = %new.source,
            generation = new.generation,
            old = ?old.weights,
            new = ?new.weights,
            old_stable = %old.stable,
            stable = %new.stable,
            "weights changed"
        );
        crate::telemetry::audit::record(&old, new);
        self.weights_tx.send_replace(new.clone());
        Ok(())
    }

    /// One poll of a shared store: adopts its document when it is newer than
    /// the decision in force. The store is read without holding the lock that
    /// decisions take (an admin change never waits for a poll's AWS call);
    /// newer-only apply makes a read that raced with a change harmless. While
    /// a rollback is pending the poll writes it instead.
    pub async fn sync_from_store(&self) -> Result<(), StoreError> {
        if self.lock().rollback_pending {
            return match self.flush_pending_rollback().await {
                Ok(_) => Ok(()),
                Err(ControlError::Store(e) | ControlError::StoreLoad(e)) => Err(e),
                Err(e) => Err(StoreError::Invalid(e.to_string())),
            };
        }
        let loaded = self.store.load().await;
        self.store_outcome("load", loaded.as_ref().map(|_| ()));
        match loaded {
            Ok(Some(doc)) => {
                self.adopt(doc);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "weight store unreachable; keeping the weights in force");
                Err(e)
            }
        }
    }
}

/// A decision: the stable version, the weights and the rollout.
pub(super) type Decision = (
    String,
    BTreeMap<String, u32>,
    Option<crate::rollout::state::RolloutState>,
);

/// How often a rollback is re-based on a newer decision before it is applied
/// here without the store.
const ROLLBACK_ATTEMPTS: usize = 3;

/// The rollback change: all the weight to the stable version; a running
/// rollout ends aborted, for `reason`.
fn to_stable(d: &WeightsDoc, reason: &str) -> Result<Decision, ControlError> {
    let rollout = crate::rollout::state::aborted(d.rollout.as_ref(), reason, unix_ms());
    Ok((
        d.stable.clone(),
        all_weight_to(&d.weights, &d.stable),
        rollout,
    ))
}

/// Every version at 0 but `to`, which gets the current total (so the numbers
/// stay on the operator's scale, e.g. 0/100).
pub(super) fn all_weight_to(weights: &BTreeMap<String, u32>, to: &str) -> BTreeMap<String, u32> {
    let total = weights
        .values()
        .map(|&w| u64::from(w))
        .sum::<u64>()
        .clamp(1, crate::config::MAX_TOTAL_WEIGHT) as u32;
    weights
        .keys()
        .map(|k| (k.clone(), if k == to { total } else { 0 }))
        .collect()
}

/// Checks a weights decision against the versions of the config.
pub fn validate_weights(
    versions: &[String],
    stable: &str,
    weights: &BTreeMap<String, u32>,
) -> Result<(), ControlError> {
    if !versions.iter().any(|v| v == stable) {
        return Err(ControlError::UnknownVersion(stable.to_string()));
    }
    if let Some(unknown) = weights.keys().find(|k| !versions.contains(k)) {
        return Err(ControlError::UnknownVersion(unknown.clone()));
    }
    check_total(weights.values().map(|&w| u64::from(w)).sum()).map_err(ControlError::Invalid)
}

/// A stored decision limited to the config's versions (a version the config
/// no longer has is dropped; one it added gets its config weight).
pub(super) fn fit_to_config(doc: WeightsDoc, config: &Config) -> WeightsDoc {
    let weights = config
        .versions
        .iter()
        .map(|v| {
            (
                v.name.clone(),
                doc.weights.get(&v.name).copied().unwrap_or(v.weight),
            )
        })
        .collect();
    let stable = if config.versions.iter().any(|v| v.name == doc.stable) {
        doc.stable
    } else {
        config.split.stable.clone()
    };
    WeightsDoc {
        stable,
        weights,
        ..doc
    }
}
