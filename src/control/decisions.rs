//! Control path: weight decisions. Validate, write the store, then apply;
//! adopt the fleet store's newer decisions.

use std::collections::BTreeMap;

use super::status::WeightsView;
use super::{Control, ControlError, State, view};
use crate::config::{Config, check_total};
use crate::metrics as names;
use crate::store::{StoreError, WeightsDoc, next_generation, unix_ms};

impl Control {
    pub fn weights(&self) -> WeightsView {
        view(&self.lock().decision)
    }

    /// `PUT /weights`: sets the named versions' weights; the others keep
    /// theirs. Refused while a rollout progresses.
    pub async fn set_weights(
        &self,
        changes: BTreeMap<String, u32>,
        source: &str,
    ) -> Result<WeightsView, ControlError> {
        self.decide(source, |d| {
            refuse_while_running(d)?;
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
    /// [`crate::rollout::state::after_stable_change`]); refused while one
    /// progresses.
    pub async fn promote(&self, version: &str, source: &str) -> Result<WeightsView, ControlError> {
        self.decide_with(source, |d| {
            refuse_while_running(d)?;
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
    /// on this task at once, without waiting for the store; it is then written
    /// to the store, made again from the store's latest decision (when another
    /// task decided first it rolls back from that decision); when the store
    /// cannot take it in time the store upkeep keeps writing it (`/status`:
    /// rollback pending in the store).
    pub async fn rollback(&self, source: &str) -> Result<WeightsView, ControlError> {
        self.rollback_for(source, &format!("rollback ({source})"))
            .await
    }

    /// A rollback that also ends a running rollout as aborted, for `reason`
    /// (the rollout's abort goes this way, so it always applies too).
    ///
    /// It applies on this task first, from the decision in force, before any
    /// store call and without waiting for a decision that holds the decisions'
    /// turn while it calls the store. Then it is written like a pending
    /// rollback ([`Control::flush_pending_rollback`]) for up to
    /// the store's `rollback_write_wait` (1 s, Cloud Map 3 s); a write that does not complete by then is
    /// left to the store upkeep. The answer is the decision in force.
    pub async fn rollback_for(
        &self,
        source: &str,
        reason: &str,
    ) -> Result<WeightsView, ControlError> {
        self.rollback_locally(source, reason, None)?;
        self.write_rollback().await
    }

    /// This task's abort of the rollout that started at `started_at_ms` was
    /// lost in the store to the same rollout's automated success (Cloud Map:
    /// both were confirmed at one generation, the store kept the success,
    /// and this task adopted it): the abort wins, as when a pending rollback
    /// finds that success (`abort_over_success`). The rollout's stable
    /// version takes all the weight, the rollout ends aborted for `reason`,
    /// one generation above the success, applied here at once and written
    /// like a rollback. `Ok(false)`: the decision in force is not that
    /// success (an operator's promotion, another rollout), nothing changed.
    pub async fn abort_over_lost_success(
        &self,
        started_at_ms: u64,
        reason: &str,
    ) -> Result<bool, ControlError> {
        let base = {
            let state = self.lock();
            match success_undone(&state.decision, started_at_ms, reason) {
                Some(base) => base,
                None => return Ok(false),
            }
        };
        tracing::warn!(target: "audit", generation = base.generation, "this task's abort was lost in the store to the same rollout's automated success: the abort wins");
        self.rollback_locally(super::rollout::SOURCE, reason, Some(base))?;
        self.write_rollback().await?;
        Ok(true)
    }

    /// Writes the rollback just applied here ([`Control::rollback_locally`])
    /// for up to the store's [`crate::store::Store::rollback_write_wait`]; answers the
    /// decision in force.
    async fn write_rollback(&self) -> Result<WeightsView, ControlError> {
        let wait = self.store.rollback_write_wait();
        let written = tokio::time::timeout(wait, self.flush_pending_rollback()).await;
        let why = match written {
            Ok(Ok(true)) => None,
            Ok(Ok(false)) => Some("other tasks kept writing decisions".to_string()),
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("the store did not answer within {wait:?}")),
        };
        let state = self.lock();
        if let Some(why) = why
            && state.pending_rollback.is_some()
        {
            if self.store.shared() {
                tracing::error!(target: "audit", error = %why, generation = state.decision.generation, "rollback applied on this task only: the store could not take it yet; retrying in the background");
            } else {
                tracing::error!(target: "audit", error = %why, generation = state.decision.generation, "rollback applied, but the state file could not be written yet: a restart before it is would not know of the rollback; retrying in the background");
            }
            metrics::counter!(names::STORE_ROLLBACKS_DEFERRED_TOTAL).increment(1);
            self.pending_wake.notify_one();
        }
        Ok(view(&state.decision))
    }

    /// Whether a rollback applied on this task is not in the store yet.
    pub fn rollback_pending(&self) -> bool {
        self.lock().pending_rollback.is_some()
    }

    /// Whether the decision in force must not be mirrored to the App Mesh
    /// route yet: a rollback pending in the store that was made from the
    /// config file's weights of a task that had no store decision (it may
    /// roll back to a version the fleet left long ago); the store's answer
    /// decides what it becomes.
    pub fn mirror_held(&self) -> bool {
        self.lock()
            .pending_rollback
            .as_ref()
            .is_some_and(|p| p.made_from.writer == super::UNREAD_STORE_WRITER)
    }

    /// Applies a rollback on this task at once, from the decision in force,
    /// and marks it pending in the store. Takes the state lock only (never the
    /// decisions' turn, which a decision may hold across a store call).
    /// `base`: the decision rolled back, when not the one in force. An
    /// error (nothing applied) only when no decision can follow the one in
    /// force ([`crate::store::MAX_GENERATION`]).
    fn rollback_locally(
        &self,
        source: &str,
        reason: &str,
        base: Option<WeightsDoc>,
    ) -> Result<(), ControlError> {
        let mut state = self.lock();
        let decision = to_stable(base.as_ref().unwrap_or(&state.decision), reason);
        let doc = self.next_decision(&state, decision, source)?;
        let generation = doc.generation;
        // The decision the fleet may know: the one in force before the first
        // rollback still pending.
        let made_from = match &state.pending_rollback {
            Some(p) => p.made_from.clone(),
            None => state.decision.clone(),
        };
        if let Err(e) = self.apply(&mut state, doc) {
            tracing::error!(error = %e, "the rollback could not be applied");
            return Ok(());
        }
        state.rollbacks += 1;
        state.pending_rollback = Some(PendingRollback {
            source: source.to_string(),
            reason: reason.to_string(),
            made_from,
        });
        state.store.rollback_pending = true;
        metrics::gauge!(names::STORE_ROLLBACK_PENDING).set(1.0);
        tracing::warn!(target: "audit", generation, reason, "rollback applied on this task; writing it to {}", self.store_noun());
        Ok(())
    }

    /// `base` rolled back, as this task's next decision (the reason is the
    /// pending rollback's).
    pub(super) fn rollback_of(
        &self,
        state: &State,
        base: &WeightsDoc,
    ) -> Result<WeightsDoc, ControlError> {
        let (source, reason) = state
            .pending_rollback
            .as_ref()
            .map(|p| (p.source.clone(), p.reason.clone()))
            .unwrap_or_else(|| ("rollback".into(), "rollback".into()));
        let doc = self.next_decision(state, to_stable(base, &reason), &source)?;
        Ok(WeightsDoc {
            generation: doc.generation.max(next_generation(base.generation)?),
            ..doc
        })
    }

    /// Writes a rollback that was applied without the store, made again
    /// from the store's latest decision (see `remade_rollback`) so
    /// that it is the newest decision and never brings back weights or a
    /// stable version that the fleet replaced meanwhile. `Ok(true)` when
    /// nothing is pending any more.
    pub async fn flush_pending_rollback(&self) -> Result<bool, ControlError> {
        let _turn = self.decisions.lock().await;
        self.flush_pending_locked().await
    }

    /// At exit: writes a rollback still pending in the store, trying at
    /// once and, while a try fails, again every `EXIT_FLUSH_PAUSE` (250 ms) until
    /// `retry_for` has passed since the first try, each try within what is
    /// left of `limit` (the first within the whole of it): a write that
    /// fails at once (a full disk, a read-only volume) may pass a moment
    /// later, when an operator has made room. Stops as soon as one passes.
    /// When none does, says loudly that the fleet's other tasks keep the
    /// weights the rollback replaced.
    /// `last`: the last try (a failure is then logged as final; an earlier
    /// try, during the drain, fails quietly).
    pub async fn flush_rollback_before_exit(
        &self,
        limit: std::time::Duration,
        retry_for: std::time::Duration,
        last: bool,
    ) {
        if !self.rollback_pending() {
            return;
        }
        let start = tokio::time::Instant::now();
        let mut tries = 0u32;
        let why = loop {
            tries += 1;
            let left = limit.saturating_sub(start.elapsed());
            let why = match tokio::time::timeout(left, self.flush_pending_rollback()).await {
                Ok(Ok(true)) => {
                    tracing::info!(target: "audit", tries, "the pending rollback was written to the store at exit");
                    return;
                }
                Ok(Ok(false)) => "other tasks kept writing decisions".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {limit:?}"),
            };
            let pause = EXIT_FLUSH_PAUSE.min(retry_for.min(limit).saturating_sub(start.elapsed()));
            if pause < EXIT_FLUSH_PAUSE {
                break why;
            }
            tokio::time::sleep(pause).await;
        };
        if last && self.store.shared() {
            tracing::error!(target: "audit", error = %why, tries, "exiting with a rollback the store never took: the fleet's other tasks keep the weights it replaced; roll back again (POST /rollback) once the store answers");
        } else if last {
            tracing::error!(target: "audit", error = %why, tries, "exiting with a rollback the state file never took: the next start does not know of it; roll back again (POST /rollback) once the state file can be written");
        }
    }

    /// [`Control::flush_pending_rollback`] with the decisions lock held.
    pub(super) async fn flush_pending_locked(&self) -> Result<bool, ControlError> {
        for _ in 0..ROLLBACK_ATTEMPTS {
            let (pending, seen) = {
                let state = self.lock();
                match &state.pending_rollback {
                    None => return Ok(true),
                    Some(p) => (p.clone(), state.rollbacks),
                }
            };
            let (latest, read_at) = match self.read_store().await {
                Ok(latest) => {
                    let read_at = latest.as_ref().map(|d| d.generation);
                    (latest, read_at)
                }
                // The store answered with a document that cannot be parsed:
                // the rollback is written over it (conditional on the
                // generation kept beside it, when there is one), as over a
                // document invalid for this config.
                Err(ControlError::StoreLoad(e)) if self.store.shared() && e.is_unparseable() => {
                    let read_at = match &e {
                        StoreError::Unparseable { generation, .. } => *generation,
                        _ => None,
                    };
                    tracing::warn!(error = %e, "the store's weights document cannot be parsed: writing the pending rollback over it");
                    (None, read_at)
                }
                Err(e) => return Err(e),
            };
            let doc = self.remade_rollback(latest, read_at, &pending)?;
            match self.write_store(&doc, read_at).await {
                Ok(()) => {
                    let mut state = self.lock();
                    tracing::info!(target: "audit", generation = doc.generation, stable = %doc.stable, "the pending rollback is in the store now");
                    let in_force = &state.decision;
                    if (&in_force.stable, &in_force.weights, &in_force.rollout)
                        == (&doc.stable, &doc.weights, &doc.rollout)
                    {
                        // Already applied here (at once): only its number
                        // and time are the store's, no change to log again.
                        let old = std::mem::replace(&mut state.decision, doc);
                        if let Err(e) = self.swap(&state) {
                            state.decision = old;
                            return Err(e);
                        }
                        state.applied_at_ms = unix_ms();
                        self.report_soon();
                        self.weights_tx.send_replace(state.decision.clone());
                    } else if let Err(e) = self.apply(&mut state, doc) {
                        // The fleet's decision rolled back, which this
                        // task's config cannot run (see remade_rollback).
                        tracing::warn!(error = %e, "the rollback written to the store does not fit this task's config: this task keeps its own");
                    }
                    // Another rollback applied here during the write is
                    // written too (next round).
                    if state.rollbacks == seen {
                        state.pending_rollback = None;
                        state.store.rollback_pending = false;
                        metrics::gauge!(names::STORE_ROLLBACK_PENDING).set(0.0);
                        return Ok(true);
                    }
                }
                Err(ControlError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// The document that writes a pending rollback over `latest`, the
    /// store's document. When `latest` is newer than the decision the
    /// rollback was made from (another task decided meanwhile, or this task
    /// started degraded on the config's weights): `latest` rolled back (its
    /// stable version takes all the weight, a running rollout ends aborted),
    /// one generation above it; but an abort wins over the same rollout's
    /// automated success (see [`abort_over_success`]). Otherwise (the store
    /// holds that decision or an older one, none, or one invalid for this
    /// config): the rollback in force here, one generation above the store's.
    /// `read_at`: the generation the store holds (that of `latest`, or the
    /// one kept beside a document that cannot be parsed).
    fn remade_rollback(
        &self,
        latest: Option<WeightsDoc>,
        read_at: Option<u64>,
        pending: &PendingRollback,
    ) -> Result<WeightsDoc, ControlError> {
        let state = self.lock();
        // Made from the file's weights of a task that had no store decision:
        // the store's decision is the fleet's, whatever its order.
        let unread = pending.made_from.writer == super::UNREAD_STORE_WRITER;
        let raw = latest
            .filter(|d| unread || d.is_newer_than(&pending.made_from))
            .map(|d| abort_over_success(d, pending));
        let base = raw.clone().map(|d| fitting(d, &state.config));
        match (base, raw) {
            (Some(Ok(base)), _) => {
                let doc =
                    self.next_decision(&state, to_stable(&base, &pending.reason), &pending.source)?;
                Ok(WeightsDoc {
                    generation: next_generation(base.generation)?.max(state.decision.generation),
                    ..doc
                })
            }
            // The fleet's decision names versions this task does not have:
            // rolled back as it is, for the fleet (never a rollback to the
            // file's stable version, which the fleet may have left long
            // ago); this task keeps its own.
            (Some(Err(_)), Some(raw)) if unread => {
                let doc =
                    self.next_decision(&state, to_stable(&raw, &pending.reason), &pending.source)?;
                Ok(WeightsDoc {
                    generation: next_generation(raw.generation)?,
                    ..doc
                })
            }
            (base, raw) => {
                if let (Some(Err(e)), Some(d)) = (base, raw) {
                    tracing::warn!(
                        error = %e,
                        generation = d.generation,
                        "the store's weights are invalid for this config: writing the rollback made here over them"
                    );
                }
                let pending = state.decision.clone();
                let above_read = match read_at {
                    Some(g) => next_generation(g)?,
                    None => 0,
                };
                Ok(WeightsDoc {
                    generation: pending.generation.max(above_read),
                    updated_at_ms: unix_ms().max(pending.updated_at_ms),
                    ..pending
                })
            }
        }
    }

    /// Makes a weight decision: validate, write the store, then apply. A
    /// rollout in the document is carried over.
    ///
    /// With a shared store the store is read first and a newer decision in it
    /// (another task's, not polled here yet) is adopted, so that the change
    /// applies on top of it. The write is conditional on the generation read:
    /// when another task wrote between the read and the write (a real race)
    /// the answer is [`ControlError::Conflict`] and the store's decision is
    /// applied here.
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
        // The change is made on the store's latest decision, not on the one
        // this task last polled: another task's decision written since (a
        // load balancer sends consecutive calls to different tasks) is
        // adopted first, as a poll would, and the change applies on top of
        // it. The same read is the conditional write's condition.
        let rollbacks_before = self.lock().rollbacks;
        let latest = if self.store.shared() {
            let latest = self.read_store().await?;
            if let Some(doc) = &latest {
                self.adopt_read(doc.clone());
            }
            Some(latest)
        } else {
            None
        };
        let (doc, versions, rollbacks) = {
            let state = self.lock();
            // A rollback applied here while the store was read came first:
            // the change is refused as one that lost a race to it.
            if state.rollbacks != rollbacks_before {
                return Err(ControlError::Conflict(Box::new(view(&state.decision))));
            }
            // A rollback applied here since the flush above goes first too.
            if state.pending_rollback.is_some() {
                return Err(ControlError::Store(StoreError::Invalid(
                    "a rollback is still pending in the store".into(),
                )));
            }
            let (stable, weights, rollout) = change(&state.decision)?;
            let versions: Vec<String> = state.config.version_names();
            validate_weights(&versions, &stable, &weights)?;
            let doc = self.next_decision(&state, (stable, weights, rollout), source)?;
            (doc, versions, state.rollbacks)
        };
        let doc = match self.record_over(doc.clone(), latest).await {
            Ok(doc) => doc,
            Err(e) => {
                // Maybe in the store after all: a rollback applied here
                // meanwhile is written over it (as below), not made from it.
                if matches!(e, ControlError::Store(StoreError::Unconfirmed(_))) {
                    let mut state = self.lock();
                    if state.rollbacks != rollbacks
                        && let Some(pending) = state.pending_rollback.as_mut()
                        && doc.is_newer_than(&pending.made_from)
                    {
                        pending.made_from = doc;
                    }
                }
                return Err(e);
            }
        };
        let mut state = self.lock();
        // A rollback applied here while this decision was written stays in
        // force: the decision is not applied, and the rollback (pending) is
        // written over it.
        if state.rollbacks != rollbacks {
            tracing::warn!(target: "audit", generation = doc.generation, "a decision written while this task rolled back is not applied: the rollback stays in force");
            // The refused decision is in the store: the rollback is what
            // must go over it, not a rollback of it (which, for a promotion,
            // would keep the promoted version).
            if let Some(pending) = state.pending_rollback.as_mut()
                && doc.is_newer_than(&pending.made_from)
            {
                pending.made_from = doc;
            }
            return Err(ControlError::Conflict(Box::new(view(&state.decision))));
        }
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

    /// The config file's stable version as a decision records it: on the
    /// file store only (a shared store's start ignores the file, and its
    /// documents stay as they were: Cloud Map's attribute is small).
    pub(super) fn config_stable(&self, config: &Config) -> Option<String> {
        (!self.store.shared()).then(|| config.split.stable.clone())
    }

    /// A new decision by this task, one generation after the one in force
    /// (an error when that one is at [`crate::store::MAX_GENERATION`]).
    fn next_decision(
        &self,
        state: &State,
        decision: Decision,
        source: &str,
    ) -> Result<WeightsDoc, ControlError> {
        let (stable, weights, rollout) = decision;
        Ok(WeightsDoc {
            stable,
            weights,
            generation: next_generation(state.decision.generation)?,
            updated_at_ms: unix_ms(),
            source: source.to_string(),
            writer: self.writer.clone(),
            config_weights: Some(state.config.weights()),
            config_stable: self.config_stable(&state.config),
            refused_config: state.decision.refused_config.clone(),
            rollout,
        })
    }

    /// Writes a decision to the store (a reload's). A shared store is read
    /// first (its generation is the write's condition); a document whose
    /// generation is not above the store's was made from an older decision and
    /// is refused with [`ControlError::Conflict`] (the store's decision is
    /// applied).
    pub(super) async fn record(&self, doc: WeightsDoc) -> Result<WeightsDoc, ControlError> {
        let latest = if self.store.shared() {
            Some(self.read_store().await?)
        } else {
            None
        };
        self.record_over(doc, latest).await
    }

    /// [`Control::record`] with the shared store's document already read
    /// (`latest`: `None` for a store that is not shared, `Some(None)` for a
    /// shared store that holds nothing yet). A shared store's write is
    /// conditional on the generation read: when another task wrote between
    /// the read and the write, the answer is [`ControlError::Conflict`].
    async fn record_over(
        &self,
        doc: WeightsDoc,
        latest: Option<Option<WeightsDoc>>,
    ) -> Result<WeightsDoc, ControlError> {
        let mut read_at = None;
        if let Some(Some(latest)) = latest {
            if latest.generation >= doc.generation {
                return Err(self.conflict(Some(latest)));
            }
            read_at = Some(latest.generation);
        }
        self.write_store(&doc, read_at).await?;
        Ok(doc)
    }

    /// One read of the store, accounted (metrics, /status).
    pub(super) async fn read_store(&self) -> Result<Option<WeightsDoc>, ControlError> {
        let loaded = self.store.load().await;
        self.store_outcome("load", loaded.as_ref().map(|_| ()));
        loaded.map_err(|e| {
            tracing::error!(error = %e, "the store could not be read: no decision is written without it");
            ControlError::StoreLoad(e)
        })
    }

    /// One conditional write of the store, accounted (metrics, /status).
    pub(super) async fn write_store(
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
                    "decision not written: another task wrote the store first"
                );
                Err(self.conflict(current.map(|d| *d)))
            }
            Err(e) => {
                self.store_outcome("save", Err(&e));
                tracing::error!(error = %e, generation = doc.generation, "decision not written: the store could not be written");
                Err(ControlError::Store(e))
            }
        }
    }

    /// Counts a store call and keeps its outcome for /status. A failing read
    /// of the weights document stays in `store.last_error` until a read
    /// succeeds: a write or a task report that succeeds meanwhile (another
    /// item, or a condition that does not parse the document) never hides it.
    pub(super) fn store_outcome(&self, op: &'static str, outcome: Result<(), &StoreError>) {
        let mut state = self.lock();
        let load = op == "load";
        match outcome {
            Ok(()) => {
                metrics::counter!(names::STORE_OPERATIONS_TOTAL, "op" => op, "result" => "ok")
                    .increment(1);
                if load {
                    state.store.load_error = None;
                } else {
                    state.store.write_error = None;
                }
                if state.store.load_error.is_none() {
                    state.store.last_ok_ms = Some(unix_ms());
                }
                if load && state.store.degraded {
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
                if load {
                    state.store.load_error = Some(load_failure(e));
                } else {
                    state.store.write_error = Some(e.to_string());
                }
            }
        }
        state.store.last_error = state
            .store
            .load_error
            .clone()
            .or_else(|| state.store.write_error.clone());
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
    pub(super) fn adopt(&self, doc: WeightsDoc) {
        self.adopt_as(doc, false);
    }

    /// [`Control::adopt`]; `same_generation`: also when `doc` is of the
    /// generation in force but sorts before it (see [`Control::adopt_read`]).
    fn adopt_as(&self, doc: WeightsDoc, same_generation: bool) {
        let mut state = self.lock();
        let wanted = doc.is_newer_than(&state.decision)
            || (same_generation
                && doc.generation == state.decision.generation
                && doc.order() != state.decision.order());
        if state.pending_rollback.is_some() || !wanted {
            return;
        }
        let generation = doc.generation;
        let doc = match adoptable(doc, &state.config) {
            Ok(doc) => doc,
            Err(e) => {
                tracing::warn!(error = %e, generation, "ignoring the store's weights: invalid for this config");
                return;
            }
        };
        let doc = WeightsDoc {
            source: format!("store ({})", doc.source),
            ..doc
        };
        if let Err(e) = self.apply(&mut state, doc) {
            tracing::warn!(error = %e, "could not apply the store's weights");
        }
    }

    /// A read of the store, by a poll or before a decision: applies its
    /// document when it is newer than the decision in force
    /// ([`Control::adopt`]).
    ///
    /// On a store without compare-and-set (Cloud Map) the store is
    /// authoritative within a generation as well: two tasks may both have
    /// confirmed their own document of the generation in force (each read its
    /// own write back before the other's propagated), and the store keeps one
    /// of them, which may sort before the other. Another writer's document of
    /// the generation in force is adopted, whatever its order, once two
    /// consecutive reads answer it (one read may be a stale one, flipping
    /// back and forth while Cloud Map propagates).
    fn adopt_read(&self, doc: WeightsDoc) {
        let same_generation = {
            let mut state = self.lock();
            let rival = !self.store.compare_and_set()
                && doc.generation == state.decision.generation
                && doc.order() != state.decision.order();
            if !rival {
                state.same_generation_seen = None;
                false
            } else if state
                .same_generation_seen
                .as_ref()
                .is_some_and(|seen| seen.order() == doc.order())
            {
                state.same_generation_seen = None;
                true
            } else {
                state.same_generation_seen = Some(doc.clone());
                tracing::info!(generation = doc.generation, writer = %doc.writer, "the store holds another task's decision of the generation in force; adopting it if the next read answers it too");
                return;
            }
        };
        if same_generation {
            tracing::warn!(target: "audit", generation = doc.generation, writer = %doc.writer, in_force = %self.lock().decision.writer, "two decisions of the same generation were confirmed; the store kept the other task's: adopting it");
            metrics::counter!(names::STORE_SAME_GENERATION_ADOPTED_TOTAL).increment(1);
        }
        self.adopt_as(doc, same_generation);
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

    /// Whether other tasks share the store (and may write decisions to it).
    pub fn store_shared(&self) -> bool {
        self.store.shared()
    }

    /// What the store is, for messages: the fleet's store, or this task's
    /// own state file (the file store).
    pub(super) fn store_noun(&self) -> &'static str {
        if self.store.shared() {
            "the store"
        } else {
            "the state file"
        }
    }

    /// The store's current decision, read for the App Mesh reconcile (see
    /// [`crate::route_sync::follow_route`]): nothing is adopted (the poll
    /// does that); the outcome counts in the store's metrics and /status.
    pub async fn stored_decision(&self) -> Result<Option<WeightsDoc>, StoreError> {
        let loaded = self.store.load().await;
        self.store_outcome("load", loaded.as_ref().map(|_| ()));
        loaded
    }

    /// One poll of a shared store: adopts its document when it is newer than
    /// the decision in force (on Cloud Map, also another writer's document of
    /// the same generation, read twice in a row: see `Control::adopt_read`).
    /// The store is read without holding the lock that
    /// decisions take (an admin change never waits for a poll's AWS call);
    /// newer-only apply makes a read that raced with a change harmless. While
    /// a rollback is pending the poll writes it instead.
    pub async fn sync_from_store(&self) -> Result<(), StoreError> {
        if self.rollback_pending() {
            return match self.flush_pending_rollback().await {
                Ok(_) => Ok(()),
                Err(ControlError::Store(e) | ControlError::StoreLoad(e)) => Err(e),
                Err(e) => Err(StoreError::Invalid(e.to_string())),
            };
        }
        let began = unix_ms();
        let loaded = self.store.load().await;
        self.store_outcome("load", loaded.as_ref().map(|_| ()));
        let read = loaded.is_ok();
        let synced = match loaded {
            Ok(Some(doc)) if self.store_behind(Some(&doc)) => self.reseed(Some(doc)).await,
            Ok(Some(doc)) => {
                self.adopt_read(doc);
                Ok(())
            }
            Ok(None) if self.store_behind(None) => self.reseed(None).await,
            Ok(None) => Ok(()),
            Err(e) if e.is_unparseable() => {
                tracing::warn!(error = %e, "the weight store answered but its weights document cannot be read; keeping the weights in force");
                Err(e)
            }
            Err(e) => {
                tracing::warn!(error = %e, "weight store unreachable; keeping the weights in force");
                Err(e)
            }
        };
        if read {
            // Once what it found is in force (see `StoreStatus::read_began_ms`).
            self.lock().store.read_began_ms = Some(began);
        }
        synced
    }
}

/// A failed read of the weights document in words for /status: a document
/// the store answered but that cannot be parsed is not an unreachable store.
fn load_failure(e: &StoreError) -> String {
    if e.is_unparseable() {
        format!(
            "the store answered, but its weights document is unreadable (fix or delete it): {e}"
        )
    } else {
        e.to_string()
    }
}

/// A decision: the stable version, the weights and the rollout.
pub(super) type Decision = (
    String,
    BTreeMap<String, u32>,
    Option<crate::rollout::state::RolloutState>,
);

/// A rollback applied on this task that the store has not taken yet: what
/// it needs to be made again from the store's latest decision.
#[derive(Debug, Clone)]
pub(super) struct PendingRollback {
    /// Who asked (the document's `source`).
    pub source: String,
    /// Why (a running rollout ends aborted for it).
    pub reason: String,
    /// The decision in force here when it was made (the first rollback's,
    /// when several are pending): a newer one in the store is rolled back
    /// instead of it.
    pub made_from: WeightsDoc,
}

/// How often a pending rollback is made again from a newer decision (another
/// task wrote between the read and the conditional write) per flush.
const ROLLBACK_ATTEMPTS: usize = 3;

/// The pause between two tries to write a pending rollback at exit
/// ([`Control::flush_rollback_before_exit`]): short, so that a store that
/// takes writes again (a disk an operator made room on) gets the rollback
/// within a fraction of a second, and few tries within the exit's limits.
const EXIT_FLUSH_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

/// The rollback change: all the weight to the stable version; a running
/// rollout ends aborted, for `reason`.
fn to_stable(d: &WeightsDoc, reason: &str) -> Decision {
    let rollout = crate::rollout::state::aborted(d.rollout.as_ref(), reason, unix_ms());
    (
        d.stable.clone(),
        all_weight_to(&d.weights, &d.stable),
        rollout,
    )
}

/// `latest` (the store's document, newer than the decision a pending
/// rollback was made from) as the base the rollback is made again from.
///
/// As it is, but for one case: the rollback was made while a rollout ran
/// (so it aborts that rollout), and `latest` is that rollout's own success,
/// written by the rollout (its analysis found the last step good on another
/// task: source [`crate::control::rollout::SOURCE`]), not by an operator.
/// The tasks judged the last step at once and disagreed, or an operator
/// aborted as the rollout succeeded: the abort wins (an abort on one task's
/// evidence, or an operator's, is never lost to an automated success). The
/// base is then the rollout's stable version, the rollout ended aborted for
/// the rollback's reason: rolled back, all the weight goes to it. An
/// operator's promotion (`admin`) is rolled back as it is, like any other
/// decision: its stable version keeps the traffic.
fn abort_over_success(latest: WeightsDoc, pending: &PendingRollback) -> WeightsDoc {
    use crate::rollout::state::Phase;
    let aborted = pending
        .made_from
        .rollout
        .as_ref()
        .filter(|r| r.phase.running());
    let undone = match (aborted, latest.rollout.as_ref()) {
        (Some(was), Some(now))
            if latest.source == super::rollout::SOURCE
                && now.started_at_ms == was.started_at_ms
                && now.phase == Phase::Succeeded =>
        {
            Some((
                now.plan.stable.clone(),
                now.ended(Phase::Aborted, Some(pending.reason.clone()), unix_ms()),
            ))
        }
        _ => None,
    };
    match undone {
        Some((stable, rollout)) => {
            tracing::warn!(target: "audit", canary = %rollout.plan.canary, generation = latest.generation, "the rollout succeeded on another task while this task aborted it: the abort wins");
            WeightsDoc {
                stable,
                rollout: Some(rollout),
                ..latest
            }
        }
        None => latest,
    }
}

/// `d` (the decision in force) as the base an abort is made again from when
/// it is the automated success (source `rollout`, adopted from the store or
/// written here) of the rollout that started at `started_at_ms`: that
/// rollout's stable version, the rollout ended aborted for `reason`. `None`
/// for any other decision.
fn success_undone(d: &WeightsDoc, started_at_ms: u64, reason: &str) -> Option<WeightsDoc> {
    use crate::rollout::state::Phase;
    let automated = d.source == super::rollout::SOURCE
        || d.source == format!("store ({})", super::rollout::SOURCE);
    let r = d
        .rollout
        .as_ref()
        .filter(|r| automated && r.started_at_ms == started_at_ms && r.phase == Phase::Succeeded)?;
    Some(WeightsDoc {
        stable: r.plan.stable.clone(),
        rollout: Some(r.ended(Phase::Aborted, Some(reason.to_string()), unix_ms())),
        ..d.clone()
    })
}

/// Refuses a manual weight change while `d`'s rollout progresses (paused,
/// it allows one): checked in the decision, on the decision in force when
/// the change's turn came (a rollout started meanwhile included).
fn refuse_while_running(d: &WeightsDoc) -> Result<(), ControlError> {
    use crate::rollout::state::Phase;
    match d
        .rollout
        .as_ref()
        .filter(|r| r.phase.running() && r.phase != Phase::Paused)
    {
        Some(r) => Err(ControlError::RolloutRunning(Box::new(r.clone()))),
        None => Ok(()),
    }
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

/// [`fit_to_config`], when the result is a valid decision for the config.
/// Only for a decision that is rolled back at once (all the weight to its
/// stable version): one to run as it is goes through [`adoptable`].
pub(super) fn fitting(doc: WeightsDoc, config: &Config) -> Result<WeightsDoc, ControlError> {
    let doc = fit_to_config(doc, config);
    validate_weights(&config.version_names(), &doc.stable, &doc.weights)?;
    Ok(doc)
}

/// A stored decision to run with `config` (at start, adopted from a shared
/// store): [`fitting`], unless the versions carrying its traffic are all
/// gone from the config ([`carriers_gone`]). Fitted, such a decision would
/// give all the traffic to the versions the config added, at their file
/// weights (a version never tested taking 100%); it does not fit, and the
/// caller falls back as for an invalid one.
pub(super) fn adoptable(doc: WeightsDoc, config: &Config) -> Result<WeightsDoc, ControlError> {
    let gone = carriers_gone(&doc, config);
    let fitted = fitting(doc, config)?;
    if gone {
        return Err(ControlError::Invalid(CARRIERS_GONE.into()));
    }
    Ok(fitted)
}

/// Why a decision whose traffic the config's versions no longer carry does
/// not fit (see [`carriers_gone`]).
pub(super) const CARRIERS_GONE: &str = "the versions that carry its traffic are not in the config";

/// Whether none of the versions that `doc` and `config` both have carries
/// weight in `doc`: the decision's traffic went to versions the config no
/// longer has. Judged on the versions kept from the decision only: a
/// version the config adds gets its file weight when fitted, which is no
/// part of the decision.
pub(super) fn carriers_gone(doc: &WeightsDoc, config: &Config) -> bool {
    config
        .versions
        .iter()
        .filter_map(|v| doc.weights.get(&v.name))
        .all(|&w| w == 0)
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
