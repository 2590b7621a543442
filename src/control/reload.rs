//! Control path: applying a reloaded config (SIGHUP, file change, `POST /reload`).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::decisions::{adoptable, carriers_gone, fit_to_config, validate_weights};
use super::status::ReloadStatus;
use super::{Control, ControlError, fresh_discovery, reuse_endpoints};
use crate::config::{Config, ConfigError, EndpointSource};
use crate::metrics as names;
use crate::rollout::state::Phase;
use crate::snapshot::ProxySettings;
use crate::store::{ConfigWeights, WeightsDoc, next_generation, unix_ms};

impl Control {
    /// Applies a reloaded config (or records why it was rejected).
    ///
    /// Weights: when the file's stable version, or the weight of a version
    /// in both files, differs from the previous file's, the edit is a new
    /// decision and wins; otherwise the decision in force is kept (versions
    /// new to the file get their file weight, removed ones go; see
    /// `file_edited`), unless the versions kept from it carry no traffic
    /// (the removed ones carried it all): then the file's weights apply. A weights edit while a rollout runs is refused (as
    /// `PUT /weights` is); while it is paused it is allowed, and an edit that
    /// makes another version stable ends it. Settings that need a restart are
    /// reported, not half-applied.
    pub async fn reload(&self, loaded: Result<Config, ConfigError>, trigger: &str) -> ReloadStatus {
        self.reload_refusal(loaded, trigger).await.0
    }

    /// [`Control::reload`], and why it was refused (`None` when applied): a
    /// caller that may try the same text again (the file watcher) asks
    /// [`Refusal::retryable`].
    pub async fn reload_refusal(
        &self,
        loaded: Result<Config, ConfigError>,
        trigger: &str,
    ) -> (ReloadStatus, Option<Refusal>) {
        let outcome = match loaded {
            Err(e) => Err(Refused {
                kind: Refusal::Invalid,
                message: e.to_string(),
            }),
            Ok(config) => self.reload_config(config, trigger).await,
        };
        let (status, refusal) = match outcome {
            Ok((message, restart_required)) => (
                ReloadStatus {
                    ok: true,
                    trigger: trigger.to_string(),
                    at_ms: unix_ms(),
                    message,
                    restart_required,
                },
                None,
            ),
            Err(Refused { kind, message }) => (
                ReloadStatus {
                    ok: false,
                    trigger: trigger.to_string(),
                    at_ms: unix_ms(),
                    message,
                    restart_required: Vec::new(),
                },
                Some(kind),
            ),
        };
        let result = if status.ok { "ok" } else { "error" };
        metrics::counter!(names::RELOADS_TOTAL, "result" => result).increment(1);
        if status.ok && !status.restart_required.is_empty() {
            tracing::warn!(
                trigger,
                restart_required = ?status.restart_required,
                "config reloaded: {}; the settings in restart_required keep their running value until a restart",
                status.message
            );
        } else if status.ok {
            tracing::info!(trigger, "config reloaded: {}", status.message);
        } else {
            tracing::error!(
                trigger,
                "config reload rejected, the running config stays: {}",
                status.message
            );
        }
        self.lock().last_reload = Some(status.clone());
        (status, refusal)
    }

    /// Records in the state file (file store only: a shared store's start
    /// ignores the file) that `refused`'s weights and stable version were
    /// refused while a rollout ran, on the decision in force, same
    /// generation: a start that finds the file still so keeps the decision
    /// instead of taking the text for an edit made while the gateway was
    /// stopped (the refusal is final for the text: applied unasked, it would
    /// give an aborted canary traffic again or undo a promotion). Called
    /// with the decisions' turn held. A rollback pending in the state file
    /// carries it when written; a write that fails is logged (a start would
    /// then apply the text, as before).
    async fn keep_refused(&self, refused: &Config) {
        if self.store.shared() {
            return;
        }
        let text = ConfigWeights::of(refused);
        let doc = {
            let mut state = self.lock();
            if state.decision.refused_config.as_ref() == Some(&text) {
                return;
            }
            state.decision.refused_config = Some(text);
            if state.pending_rollback.is_some() {
                return;
            }
            state.decision.clone()
        };
        if let Err(e) = self.write_store(&doc, None).await {
            tracing::error!(error = %e, "the refused config text could not be noted in the state file: a restart before the next write would apply it");
        }
    }

    /// The file watcher's word that the config file has kept changing since
    /// `since_ms` (ms since the Unix epoch), none of it applied; `None` once
    /// it settled. `/status` shows it (`config_file_unsettled_since_ms`,
    /// and a warning).
    pub fn set_config_file_unsettled(&self, since_ms: Option<u64>) {
        self.lock().config_file_unsettled_since_ms = since_ms;
    }

    async fn reload_config(
        &self,
        new: Config,
        trigger: &str,
    ) -> Result<(String, Vec<String>), Refused> {
        // Nothing would ever poll a Cloud Map version here: it would keep
        // its old endpoints, or have none, until a restart.
        if !self.cloud_map_discovery()
            && let Some(message) = cloud_map_unavailable(&new)
        {
            return Err(Refused {
                kind: Refusal::RestartRequired,
                message,
            });
        }
        let _turn = self.decisions.lock().await;
        // Bounded: a reload that changes no weights must not wait for a hung
        // store (an operator may be reloading to mend endpoints).
        let pending = self.lock().pending_rollback.is_some()
            && !tokio::time::timeout(
                self.store.rollback_write_wait(),
                self.flush_pending_locked(),
            )
            .await
            .is_ok_and(|flushed| flushed.unwrap_or(false));
        let (old, decision, rollbacks) = {
            let state = self.lock();
            (
                state.config.clone(),
                state.decision.clone(),
                state.rollbacks,
            )
        };
        let restart_required: Vec<String> = old
            .restart_only_differences(&new)
            .into_iter()
            .map(String::from)
            .collect();
        let effective = keep_restart_only(&old, new);
        let mut edited = file_edited(&old, &effective);
        let versions: Vec<String> = effective.version_names();
        let kept = fit_to_config(decision.clone(), &effective);
        // The versions that carried the traffic left the file: its weights
        // are all there is to go on. Judged on the versions kept from the
        // decision: one the file adds would otherwise take all the traffic
        // at its file weight.
        let carriers_gone = carriers_gone(&decision, &effective);
        edited |= carriers_gone;
        // A version new to the file with weight would take its share at
        // once (its file weight beside the decision's), beside a rollout
        // that judges only its canary: an edit of the split too.
        let adds_weighted = adds_weighted_to(&old.weights(), &effective);
        let running = decision.rollout.as_ref().filter(|r| r.phase.running());
        if (edited || adds_weighted)
            && let Some(r) = running
            && r.phase != Phase::Paused
        {
            let what = if carriers_gone {
                "the versions carrying all the traffic left the file"
            } else if edited {
                "the file's weights or stable version changed"
            } else {
                "a version with weight was added to the file (add it at weight 0)"
            };
            self.keep_refused(&effective).await;
            return Err(Refused {
                kind: Refusal::RolloutRuns,
                message: format!(
                    "{what} while a rollout of `{}` runs ({}); POST /rollout/pause or /rollout/abort first, then reload",
                    r.plan.canary,
                    r.step_text()
                ),
            });
        }
        let (stable, weights) = if edited {
            (effective.split.stable.clone(), effective.weights())
        } else {
            (kept.stable, kept.weights)
        };
        // Final for this text: the decision in force does not change by
        // itself (the watcher would try it again and again).
        validate_weights(&versions, &stable, &weights).map_err(|e| Refused {
            kind: Refusal::InvalidWeights,
            message: format!("the reloaded config leaves invalid weights: {e}"),
        })?;
        let rollout = crate::rollout::state::after_stable_change(
            decision.rollout.as_ref(),
            &stable,
            "a config reload",
            unix_ms(),
        );
        let changed =
            stable != decision.stable || weights != decision.weights || rollout != decision.rollout;
        let doc = WeightsDoc {
            stable,
            weights,
            generation: if changed {
                next_generation(decision.generation).map_err(|e| Refused {
                    kind: Refusal::GenerationLimit,
                    message: e.to_string(),
                })?
            } else {
                decision.generation
            },
            updated_at_ms: if changed {
                unix_ms()
            } else {
                decision.updated_at_ms
            },
            source: if changed {
                format!("reload ({trigger})")
            } else {
                decision.source.clone()
            },
            writer: if changed {
                self.writer.clone()
            } else {
                decision.writer.clone()
            },
            config_weights: Some(effective.weights()),
            config_stable: self.config_stable(&effective),
            refused_config: None,
            rollout,
        };
        // A rollback waiting for the store goes first (it is older, and an
        // edit recorded before it would be rolled back when it is written).
        if changed && pending {
            return Err("the file's weights changed while a rollback is still pending in the store (see /status store); reload again once it is written".into());
        }
        // An edit of the file is a decision: record it like any other. (A
        // shared store keeps no config weights: a replica joins with the
        // fleet's decision whatever its file says.)
        let mut fleet_first = false;
        // A text refused before (see `keep_refused`) is no longer pending:
        // the state file says so, or a start would still keep it refused.
        let refusal_ended = decision.refused_config.is_some() && !self.store.shared();
        let doc = if changed || (edited && !self.store.shared()) || refusal_ended {
            match self.record(doc.clone()).await {
                Ok(doc) => doc,
                // Another task recorded a newer decision first: on a fleet,
                // usually the same edit, reloaded by every task. It is in
                // force here now (adopted), and the rest of the reload
                // applies with it: refusing it would leave this task on the
                // old config for good (the file does not change again).
                Err(ControlError::Conflict(_)) if self.store.shared() => {
                    // The store's decision, fitted to the new config (the
                    // adoption above fitted it to the old one).
                    let latest = self.read_store().await.map_err(|e| e.short())?;
                    match latest.map(|d| adoptable(d, &effective)) {
                        Some(Ok(d)) => {
                            fleet_first = true;
                            WeightsDoc {
                                source: format!("store ({})", d.source),
                                ..d
                            }
                        }
                        _ => {
                            return Err("another gateway task recorded a newer decision first, which does not fit this config; nothing was changed: review the weights and reload again".into());
                        }
                    }
                }
                Err(e) => return Err(e.short().into()),
            }
        } else {
            doc
        };

        let mut state = self.lock();
        let previous = std::mem::replace(&mut state.config, Arc::new(effective));
        let settings = Arc::new(ProxySettings::from_config(&state.config));
        let previous_settings = std::mem::replace(&mut state.settings, settings);
        let previous_endpoints = state.endpoints.clone();
        let previous_discovery = state.discovery.clone();
        let config = state.config.clone();
        let mut endpoints = BTreeMap::new();
        for v in &config.versions {
            let old_source = previous
                .versions
                .iter()
                .find(|o| o.name == v.name)
                .map(|o| &o.source);
            let current = previous_endpoints.get(&v.name).cloned().unwrap_or_default();
            // A changed Cloud Map source keeps the endpoints in use until
            // it answers: a reload never empties a version (its first
            // answer, even an empty one, replaces them).
            let list = match &v.source {
                EndpointSource::Static(addrs) => reuse_endpoints(&current, addrs),
                EndpointSource::CloudMap(_) => current,
            };
            if old_source != Some(&v.source) {
                state
                    .discovery
                    .insert(v.name.clone(), fresh_discovery(&v.source));
            }
            endpoints.insert(v.name.clone(), list);
        }
        state
            .discovery
            .retain(|name, _| config.versions.iter().any(|v| &v.name == name));
        for (name, list) in &previous_endpoints {
            for e in list {
                if !endpoints
                    .get(name)
                    .is_some_and(|l| l.iter().any(|n| Arc::ptr_eq(n, e)))
                {
                    e.clear_pool();
                }
            }
        }
        state.endpoints = endpoints;
        let result = if (changed || fleet_first) && state.rollbacks != rollbacks {
            // A rollback applied here while the edit was written stays in
            // force: the edit is applied rolled back (the pending rollback is
            // written over the edit in the store).
            self.rollback_of(&state, &doc)
                .and_then(|doc| self.apply(&mut state, doc))
                .map_err(|e| e.to_string())
        } else if changed || fleet_first {
            self.apply(&mut state, doc).map_err(|e| e.to_string())
        } else {
            self.swap(&state).map_err(|e| e.to_string())
        };
        if let Err(e) = result {
            state.config = previous;
            state.settings = previous_settings;
            state.endpoints = previous_endpoints;
            state.discovery = previous_discovery;
            return Err(e.into());
        }
        // The text is applied: no refused one is pending (the decision in
        // force kept, recorded without it above).
        state.decision.refused_config = None;
        // A running rollout whose canary or stable version this reload
        // removed (the previous config had it) cannot go on: the driver
        // aborts it. (A version this task never had is another task
        // definition's: the driver holds that rollout instead.)
        let removed = state
            .decision
            .rollout
            .as_ref()
            .filter(|r| r.phase.running())
            .filter(|r| {
                [&r.plan.canary, &r.plan.stable].into_iter().any(|v| {
                    previous.versions.iter().any(|p| &p.name == v)
                        && !config.versions.iter().any(|c| &c.name == v)
                })
            })
            .map(|r| r.started_at_ms);
        if removed.is_some() {
            state.rollout.removed_by_reload = removed;
        }
        let message = if fleet_first {
            format!(
                "applied; weights as another task recorded them first in the store (generation {})",
                state.decision.generation
            )
        } else if changed {
            format!(
                "applied; weights changed by the file edit (generation {})",
                state.decision.generation
            )
        } else {
            "applied; weights unchanged".to_string()
        };
        Ok((message, restart_required))
    }
}

/// Why a reload was refused, for a caller that may try the same text again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The text is no valid config: only another edit mends it.
    Invalid,
    /// The file's weights or stable version changed while a rollout runs
    /// (not paused): final for this text. The operator applies it with an
    /// explicit reload (SIGHUP, `POST /reload`) once the rollout is paused
    /// or over; applying it unasked when the rollout ends would undo an
    /// abort's rollback or a promotion.
    RolloutRuns,
    /// It asks for what only a start sets up: a `cloudmap` source when
    /// Cloud Map discovery was not set up at start (no version used it).
    /// Final for this text: a restart applies it.
    RestartRequired,
    /// The weights it would leave are invalid: the decision in force kept
    /// with the file's new versions (e.g. a version added while a
    /// `PUT /weights` decision uses most of the 1,000,000 total). Final for
    /// this text: another edit, or another decision followed by an explicit
    /// reload (SIGHUP, `POST /reload`), mends it.
    InvalidWeights,
    /// The file's edit is a new decision, and the decision in force is at
    /// [`crate::store::MAX_GENERATION`]: final until the store is reset.
    GenerationLimit,
    /// The gateway's state refused it (the store could not be written, a
    /// rollback is still pending, another task's decision does not fit):
    /// the same text may pass when tried again.
    State,
}

impl Refusal {
    /// Whether the same text may pass when tried again unasked.
    pub fn retryable(self) -> bool {
        matches!(self, Refusal::State)
    }
}

/// A refused reload: why, and the message for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct Refused {
    kind: Refusal,
    message: String,
}

impl From<String> for Refused {
    /// A refusal from the gateway's state (the store, a pending rollback...).
    fn from(message: String) -> Refused {
        Refused {
            kind: Refusal::State,
            message,
        }
    }
}

impl From<&str> for Refused {
    fn from(message: &str) -> Refused {
        Refused::from(message.to_string())
    }
}

/// Why `config` cannot apply without Cloud Map discovery (the keys of its
/// `cloudmap` sources), or `None` when it has none.
fn cloud_map_unavailable(config: &Config) -> Option<String> {
    let keys: Vec<String> = config
        .versions
        .iter()
        .enumerate()
        .filter(|(_, v)| matches!(v.source, EndpointSource::CloudMap(_)))
        .map(|(i, _)| format!("versions[{i}].cloudmap"))
        .collect();
    (!keys.is_empty()).then(|| {
        format!(
            "{}: Cloud Map discovery was not set up at start (no version used it); restart the gateway to use it",
            keys.join(", ")
        )
    })
}

/// Whether the file's weights were edited between `old` and `new`: another
/// stable version, or another weight for a version in both. Adding or
/// removing a version is no edit of the others' weights: a decision in
/// force (a rollback) stays.
pub(super) fn file_edited(old: &Config, new: &Config) -> bool {
    old.split.stable != new.split.stable || weights_edited(&old.weights(), &new.weights())
}

/// Whether the config file was edited since `doc` was made against it
/// (at start: the file may have changed while the gateway was stopped):
/// another stable version, or another weight for a version in both, as
/// [`file_edited`] judges a reload. What `doc` did not record (a document
/// from an older gateway has no `config_stable`) is no edit.
pub(super) fn edited_since(doc: &WeightsDoc, config: &Config) -> bool {
    let stable = doc
        .config_stable
        .as_ref()
        .is_some_and(|s| *s != config.split.stable);
    let weights = doc
        .config_weights
        .as_ref()
        .is_some_and(|w| weights_edited(w, &config.weights()));
    stable || weights
}

/// At start (file store): whether `config` is the text a reload refused
/// while a rollout ran (`doc.refused_config`), so the saved decision
/// stays in force; then `config` with the weights and stable version last
/// applied (what `doc` was made against), so that the running config is
/// what it was before the stop, and a reload applies the text then as it
/// would have before. Otherwise `config` unchanged (the text was edited
/// again while the gateway was stopped, or was never refused).
pub(super) fn refused_still(doc: &WeightsDoc, config: Config) -> (Config, bool) {
    if doc.refused_config.as_ref() != Some(&ConfigWeights::of(&config))
        || !(edited_since(doc, &config) || adds_weighted(doc, &config))
    {
        return (config, false);
    }
    let mut applied = config.clone();
    if let Some(weights) = &doc.config_weights {
        // A version only the refused text has was not applied either: at
        // weight 0 until a reload applies the text (its file weight would
        // serve it beside the decision's versions).
        for v in &mut applied.versions {
            v.weight = weights.get(&v.name).copied().unwrap_or(0);
        }
    }
    if let Some(stable) = &doc.config_stable {
        applied.split.stable = stable.clone();
    }
    match validate_weights(
        &applied.version_names(),
        &applied.split.stable,
        &applied.weights(),
    ) {
        Ok(()) => (applied, true),
        Err(_) => (config, false),
    }
}

/// Whether `config` has a version with weight that the text `doc` was made
/// against lacked (a version added to the file with weight).
pub(super) fn adds_weighted(doc: &WeightsDoc, config: &Config) -> bool {
    doc.config_weights
        .as_ref()
        .is_some_and(|applied| adds_weighted_to(applied, config))
}

/// Whether `config` has a version with weight that `applied` (a text's
/// weights by version) lacks.
fn adds_weighted_to(applied: &BTreeMap<String, u32>, config: &Config) -> bool {
    config
        .versions
        .iter()
        .any(|v| v.weight > 0 && !applied.contains_key(&v.name))
}

/// At start (file store): whether the config file was edited since `doc`
/// as a reload would refuse while `doc`'s rollout progresses: its weights
/// or stable version ([`edited_since`]), or, with the rollout progressing
/// (not paused), a version added with weight (it would take its share at
/// once beside a rollout that judges only its canary). Such an edit, made
/// while the gateway was stopped, is the newer decision and wins.
pub(super) fn edited_at_start(doc: &WeightsDoc, config: &Config) -> bool {
    let progressing = doc
        .rollout
        .as_ref()
        .is_some_and(|r| r.phase.running() && r.phase != Phase::Paused);
    edited_since(doc, config) || (progressing && adds_weighted(doc, config))
}

/// Whether a version in both maps has another weight in `new`.
pub(super) fn weights_edited(old: &BTreeMap<String, u32>, new: &BTreeMap<String, u32>) -> bool {
    new.iter()
        .any(|(name, w)| old.get(name).is_some_and(|before| before != w))
}

/// `new` with the settings that only a restart can change taken from `old`.
fn keep_restart_only(old: &Config, mut new: Config) -> Config {
    new.listener = old.listener.clone();
    new.admin.address = old.admin.address;
    new.admin.token_env = old.admin.token_env.clone();
    new.admin.token_file = old.admin.token_file.clone();
    new.worker_threads = old.worker_threads;
    new.store = old.store.clone();
    new.state_path = old.state_path.clone();
    new.aws = old.aws.clone();
    // The route sync is set up at start (and `/status` shows the section
    // it runs with).
    new.appmesh = old.appmesh.clone();
    new.log.format = old.log.format;
    new.log.level = old.log.level.clone();
    new.keep_upstream_tls_from(old);
    new
}

#[cfg(test)]
mod tests;
