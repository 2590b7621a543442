//! Control path: weight decisions. Validate, write the store, then apply;
//! adopt the fleet store's newer decisions.

use std::collections::BTreeMap;

use super::status::WeightsView;
use super::{Control, ControlError, State, view};
use crate::config::{Config, check_total};
use crate::metrics as names;
use crate::store::{WeightsDoc, unix_ms};

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
    pub async fn promote(&self, version: &str, source: &str) -> Result<WeightsView, ControlError> {
        self.decide(source, |d| {
            if !d.weights.contains_key(version) {
                return Err(ControlError::UnknownVersion(version.to_string()));
            }
            Ok((version.to_string(), all_weight_to(&d.weights, version)))
        })
        .await
    }

    /// `POST /rollback`: the stable version takes all the weight at once.
    pub async fn rollback(&self, source: &str) -> Result<WeightsView, ControlError> {
        self.rollback_for(source, &format!("rollback ({source})"))
            .await
    }

    /// A rollback that also ends a running rollout as aborted, for `reason`.
    pub async fn rollback_for(
        &self,
        source: &str,
        reason: &str,
    ) -> Result<WeightsView, ControlError> {
        self.decide_with(source, |d| {
            let rollout = crate::rollout::state::aborted(d.rollout.as_ref(), reason, unix_ms());
            Ok((
                d.stable.clone(),
                all_weight_to(&d.weights, &d.stable),
                rollout,
            ))
        })
        .await
    }

    /// Makes a weight decision: validate, write the store, then apply. A
    /// rollout in the document is carried over.
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
        let (doc, versions) = {
            let state = self.lock();
            let (stable, weights, rollout) = change(&state.decision)?;
            let versions: Vec<String> = state.config.version_names();
            validate_weights(&versions, &stable, &weights)?;
            let doc = WeightsDoc {
                stable,
                weights,
                generation: state.decision.generation + 1,
                updated_at_ms: unix_ms(),
                source: source.to_string(),
                config_weights: Some(state.config.weights()),
                rollout,
            };
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
        self.apply(&mut state, doc)?;
        Ok(view(&state.decision))
    }

    /// Writes a decision to the store. With a shared store the generation is
    /// placed after the fleet's latest one (last writer wins).
    pub(super) async fn record(&self, mut doc: WeightsDoc) -> Result<WeightsDoc, ControlError> {
        if self.store.shared() {
            match self.store.load().await {
                Ok(Some(latest)) => doc.generation = doc.generation.max(latest.generation + 1),
                Ok(None) => {}
                // Saving blind could put a generation below the fleet's latest.
                Err(e) => {
                    metrics::counter!(names::STORE_OPERATIONS_TOTAL, "op" => "load", "result" => "error").increment(1);
                    self.lock().store.last_error = Some(e.to_string());
                    tracing::error!(error = %e, "weight change refused: the store could not be read");
                    return Err(ControlError::StoreLoad(e));
                }
            }
        }
        let saved = self.store.save(&doc).await;
        let mut state = self.lock();
        match saved {
            Ok(()) => {
                metrics::counter!(names::STORE_OPERATIONS_TOTAL, "op" => "save", "result" => "ok")
                    .increment(1);
                state.store.last_ok_ms = Some(unix_ms());
                state.store.last_error = None;
                Ok(doc)
            }
            Err(e) => {
                metrics::counter!(names::STORE_OPERATIONS_TOTAL, "op" => "save", "result" => "error").increment(1);
                state.store.last_error = Some(e.to_string());
                tracing::error!(error = %e, "weight change refused: the store could not be written");
                Err(ControlError::Store(e))
            }
        }
    }

    /// Applies a recorded decision: new snapshot, audit line, App Mesh sync.
    pub(super) fn apply(&self, state: &mut State, doc: WeightsDoc) -> Result<(), ControlError> {
        let old = std::mem::replace(&mut state.decision, doc);
        if let Err(e) = self.swap(state) {
            state.decision = old;
            return Err(e);
        }
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
        self.weights_tx.send_replace(new.clone());
        Ok(())
    }

    /// Adopts the fleet store's document when it differs from the decision in
    /// force (the store is the truth; generations order writes).
    pub async fn sync_from_store(&self) {
        // Serialized with decisions: a load that started before this replica's
        // own change was saved must not be applied after it (a revert).
        let _turn = self.decisions.lock().await;
        let loaded = self.store.load().await;
        let mut state = self.lock();
        match loaded {
            Ok(Some(doc)) => {
                state.store.last_ok_ms = Some(unix_ms());
                state.store.last_error = None;
                metrics::counter!(names::STORE_OPERATIONS_TOTAL, "op" => "load", "result" => "ok")
                    .increment(1);
                let doc = fit_to_config(doc, &state.config);
                let current = &state.decision;
                if doc.generation != current.generation
                    || doc.weights != current.weights
                    || doc.stable != current.stable
                {
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
            }
            Ok(None) => {
                state.store.last_ok_ms = Some(unix_ms());
                state.store.last_error = None;
            }
            Err(e) => {
                metrics::counter!(names::STORE_OPERATIONS_TOTAL, "op" => "load", "result" => "error").increment(1);
                tracing::warn!(error = %e, "weight store unreachable; keeping the weights in force");
                state.store.last_error = Some(e.to_string());
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
