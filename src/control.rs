//! Control path: the one writer.
//!
//! Admin changes, config reloads, discovery results and the fleet store all
//! funnel into [`Control`], which validates the change, builds a new
//! [`Snapshot`] and swaps it whole. Every swap happens under one lock, so two
//! sources never race; weight decisions are additionally serialized (and
//! written to the store before they apply) so that a replica never applies a
//! change the fleet did not record.

pub mod status;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::{Config, ConfigError, EndpointSource, check_total};
use crate::discovery::{DiscoveryError, EndpointSink};
use crate::metrics as names;
use crate::proxy::upstream::Endpoint;
use crate::snapshot::{ProxySettings, Snapshot, SnapshotError, SnapshotInput};
use crate::store::{Store, StoreError, WeightsDoc, unix_ms};
use status::{
    DiscoveryStatus, EndpointStatus, ReloadStatus, Status, StoreStatus, VersionStatus, WeightsView,
};

/// Why a change was refused. The snapshot in force is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("unknown version `{0}`")]
    UnknownVersion(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the weight store could not be written, nothing was changed: {0}")]
    Store(StoreError),
    #[error("the weight store could not be read: {0}")]
    StoreLoad(StoreError),
}

impl From<SnapshotError> for ControlError {
    fn from(e: SnapshotError) -> Self {
        match e {
            SnapshotError::UnknownVersion(v) => ControlError::UnknownVersion(v),
            SnapshotError::Weights(m) => ControlError::Invalid(m),
        }
    }
}

/// Everything the writer knows; the snapshot is derived from it.
struct State {
    config: Arc<Config>,
    settings: Arc<ProxySettings>,
    /// The decision in force.
    decision: WeightsDoc,
    endpoints: BTreeMap<String, Vec<Arc<Endpoint>>>,
    discovery: BTreeMap<String, (DiscoveryStatus, Option<Instant>)>,
    last_reload: Option<ReloadStatus>,
    store: StoreStatus,
    appmesh: Option<status::AppMeshStatus>,
}

/// The gateway's control plane.
pub struct Control {
    snapshot: Arc<ArcSwap<Snapshot>>,
    state: Mutex<State>,
    decisions: tokio::sync::Mutex<()>,
    store: Arc<dyn Store>,
    listening: AtomicBool,
    draining: AtomicBool,
    started: Instant,
    weights_tx: watch::Sender<WeightsDoc>,
}

impl Control {
    /// Builds the first snapshot from the config and the stored decision.
    ///
    /// Precedence: the config file's weights are the starting point; a stored
    /// decision overrides them, unless the config file's weights were edited
    /// since that decision was made (then the edit is the newer decision). A
    /// shared (fleet) store always wins: a replica joins with the fleet's weights.
    pub async fn start(
        config: Config,
        store: Arc<dyn Store>,
        store_kind: &str,
    ) -> Result<Arc<Control>, ControlError> {
        let stored = store.load().await.map_err(ControlError::StoreLoad)?;
        let config_weights = config.weights();
        let from_config = WeightsDoc {
            stable: config.split.stable.clone(),
            weights: config_weights.clone(),
            generation: 0,
            updated_at_ms: unix_ms(),
            source: "config".into(),
            config_weights: Some(config_weights.clone()),
        };
        let decision = match stored {
            None => from_config,
            Some(doc)
                if !store.shared()
                    && doc
                        .config_weights
                        .as_ref()
                        .is_some_and(|w| *w != config_weights) =>
            {
                tracing::warn!(
                    target: "audit",
                    generation = doc.generation + 1,
                    "the config file's weights were edited since the saved decision (generation {}); the config file wins",
                    doc.generation
                );
                WeightsDoc {
                    generation: doc.generation + 1,
                    ..from_config
                }
            }
            Some(doc) => {
                let doc = fit_to_config(doc, &config);
                tracing::info!(target: "audit", generation = doc.generation, source = %doc.source, weights = ?doc.weights, stable = %doc.stable, "restored the saved weights decision");
                doc
            }
        };
        let mut endpoints = BTreeMap::new();
        let mut discovery = BTreeMap::new();
        for v in &config.versions {
            let (list, source) = match &v.source {
                EndpointSource::Static(addrs) => {
                    (reuse_endpoints(&[], addrs), "static".to_string())
                }
                EndpointSource::CloudMap(c) => (
                    Vec::new(),
                    format!("cloudmap:{}/{}", c.namespace, c.service),
                ),
            };
            endpoints.insert(v.name.clone(), list);
            discovery.insert(
                v.name.clone(),
                (
                    DiscoveryStatus {
                        source,
                        ..Default::default()
                    },
                    None,
                ),
            );
        }
        let appmesh = config.appmesh.as_ref().map(|a| status::AppMeshStatus {
            route: format!("{}/{}/{}", a.mesh, a.virtual_router, a.route),
            ..Default::default()
        });
        let state = State {
            settings: Arc::new(ProxySettings::from_config(&config)),
            config: Arc::new(config),
            decision: decision.clone(),
            endpoints,
            discovery,
            last_reload: None,
            store: StoreStatus {
                kind: store_kind.to_string(),
                ..Default::default()
            },
            appmesh,
        };
        let first = build(&state)?;
        publish_endpoint_gauges(&first);
        let (weights_tx, _) = watch::channel(decision);
        Ok(Arc::new(Control {
            snapshot: Arc::new(ArcSwap::from_pointee(first)),
            state: Mutex::new(state),
            decisions: tokio::sync::Mutex::new(()),
            store,
            listening: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            started: Instant::now(),
            weights_tx,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The snapshot cell the data path reads.
    pub fn snapshot_cell(&self) -> Arc<ArcSwap<Snapshot>> {
        self.snapshot.clone()
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.lock().config.clone()
    }

    /// Subscribes to applied weight decisions (App Mesh sync follows these).
    pub fn subscribe(&self) -> watch::Receiver<WeightsDoc> {
        self.weights_tx.subscribe()
    }

    /// Rebuilds and swaps the snapshot. Called with the state lock held, so
    /// every swap is serialized.
    fn swap(&self, state: &State) -> Result<(), ControlError> {
        let next = build(state)?;
        publish_endpoint_gauges(&next);
        self.snapshot.store(Arc::new(next));
        Ok(())
    }

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
        self.decide(source, |d| {
            Ok((d.stable.clone(), all_weight_to(&d.weights, &d.stable)))
        })
        .await
    }

    /// Makes a weight decision: validate, write the store, then apply.
    async fn decide(
        &self,
        source: &str,
        change: impl FnOnce(&WeightsDoc) -> Result<(String, BTreeMap<String, u32>), ControlError>,
    ) -> Result<WeightsView, ControlError> {
        let _turn = self.decisions.lock().await;
        let (doc, versions) = {
            let state = self.lock();
            let (stable, weights) = change(&state.decision)?;
            let versions: Vec<String> = state.config.version_names();
            validate_weights(&versions, &stable, &weights)?;
            let doc = WeightsDoc {
                stable,
                weights,
                generation: state.decision.generation + 1,
                updated_at_ms: unix_ms(),
                source: source.to_string(),
                config_weights: Some(state.config.weights()),
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
    async fn record(&self, mut doc: WeightsDoc) -> Result<WeightsDoc, ControlError> {
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
    fn apply(&self, state: &mut State, doc: WeightsDoc) -> Result<(), ControlError> {
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

    /// Applies a reloaded config (or records why it was rejected).
    ///
    /// Weights: when the file's weights (or stable version) differ from the
    /// previous file's, the edit is a new decision and wins; otherwise the
    /// decision in force is kept (versions new to the file get their file weight).
    /// Settings that need a restart are reported, not half-applied.
    pub async fn reload(&self, loaded: Result<Config, ConfigError>, trigger: &str) -> ReloadStatus {
        let outcome = match loaded {
            Err(e) => Err(e.to_string()),
            Ok(config) => self.reload_config(config, trigger).await,
        };
        let status = match outcome {
            Ok((message, restart_required)) => ReloadStatus {
                ok: true,
                trigger: trigger.to_string(),
                at_ms: unix_ms(),
                message,
                restart_required,
            },
            Err(message) => ReloadStatus {
                ok: false,
                trigger: trigger.to_string(),
                at_ms: unix_ms(),
                message,
                restart_required: Vec::new(),
            },
        };
        let result = if status.ok { "ok" } else { "error" };
        metrics::counter!(names::RELOADS_TOTAL, "result" => result).increment(1);
        if status.ok {
            tracing::info!(trigger, restart_required = ?status.restart_required, "config reloaded: {}", status.message);
        } else {
            tracing::error!(
                trigger,
                "config reload rejected, the running config stays: {}",
                status.message
            );
        }
        self.lock().last_reload = Some(status.clone());
        status
    }

    async fn reload_config(
        &self,
        new: Config,
        trigger: &str,
    ) -> Result<(String, Vec<String>), String> {
        let _turn = self.decisions.lock().await;
        let (old, decision) = {
            let state = self.lock();
            (state.config.clone(), state.decision.clone())
        };
        let restart_required: Vec<String> = old
            .restart_only_differences(&new)
            .into_iter()
            .map(String::from)
            .collect();
        let effective = keep_restart_only(&old, new);
        let edited =
            old.weights() != effective.weights() || old.split.stable != effective.split.stable;
        let versions: Vec<String> = effective.version_names();
        let (stable, weights) = if edited {
            (effective.split.stable.clone(), effective.weights())
        } else {
            let kept = fit_to_config(decision.clone(), &effective);
            (kept.stable, kept.weights)
        };
        validate_weights(&versions, &stable, &weights)
            .map_err(|e| format!("the reloaded config leaves invalid weights: {e}"))?;
        let changed = stable != decision.stable || weights != decision.weights;
        let doc = WeightsDoc {
            stable,
            weights,
            generation: decision.generation + u64::from(changed),
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
            config_weights: Some(effective.weights()),
        };
        // An edit of the file is a decision: record it like any other.
        let doc = if changed || edited {
            self.record(doc).await.map_err(|e| e.to_string())?
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
            let list = match &v.source {
                EndpointSource::Static(addrs) => reuse_endpoints(&current, addrs),
                EndpointSource::CloudMap(_) if old_source == Some(&v.source) => current,
                EndpointSource::CloudMap(_) => Vec::new(),
            };
            if old_source != Some(&v.source) {
                let source = match &v.source {
                    EndpointSource::Static(_) => "static".to_string(),
                    EndpointSource::CloudMap(c) => {
                        format!("cloudmap:{}/{}", c.namespace, c.service)
                    }
                };
                state.discovery.insert(
                    v.name.clone(),
                    (
                        DiscoveryStatus {
                            source,
                            ..Default::default()
                        },
                        None,
                    ),
                );
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
        let result = if changed {
            self.apply(&mut state, doc).map_err(|e| e.to_string())
        } else {
            self.swap(&state).map_err(|e| e.to_string())
        };
        if let Err(e) = result {
            state.config = previous;
            state.settings = previous_settings;
            state.endpoints = previous_endpoints;
            state.discovery = previous_discovery;
            return Err(e);
        }
        let message = if changed {
            format!(
                "applied; weights changed by the file edit (generation {})",
                state.decision.generation
            )
        } else {
            "applied; weights unchanged".to_string()
        };
        Ok((message, restart_required))
    }

    /// Refreshes the gauges that change without a snapshot swap (endpoint
    /// health after ejections); called before every scrape.
    pub fn publish_gauges(&self) {
        publish_endpoint_gauges(&self.snapshot.load());
        let state = self.lock();
        for (version, (_, last_ok)) in &state.discovery {
            if let Some(at) = last_ok {
                metrics::gauge!(names::DISCOVERY_AGE_SECONDS, "version" => version.clone())
                    .set(at.elapsed().as_secs_f64());
            }
        }
    }

    /// Marks the listener as bound.
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::SeqCst);
    }

    /// From now on /readyz answers 503.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// `Ok` when the gateway serves; otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("draining: shutting down".into());
        }
        if !self.listening.load(Ordering::SeqCst) {
            return Err("the listener is not bound yet".into());
        }
        let snapshot = self.snapshot.load();
        let stable = snapshot.stable_version();
        if stable.endpoints.is_empty() {
            let source = self
                .lock()
                .discovery
                .get(&stable.name)
                .map(|(d, _)| d.source.clone())
                .unwrap_or_default();
            return Err(format!(
                "the stable version `{}` has no endpoints yet ({source})",
                stable.name
            ));
        }
        Ok(())
    }

    /// Records the App Mesh sync's outcome for /status.
    pub fn appmesh_synced(&self, result: Result<BTreeMap<String, u32>, String>) {
        let mut state = self.lock();
        if let Some(a) = state.appmesh.as_mut() {
            match result {
                Ok(w) => {
                    a.last_ok_ms = Some(unix_ms());
                    a.last_error = None;
                    a.synced_weights = Some(w);
                }
                Err(e) => a.last_error = Some(e),
            }
        }
    }

    /// `GET /status`.
    pub fn status(&self) -> Status {
        let readiness = self.readiness();
        let snapshot = self.snapshot.load_full();
        let state = self.lock();
        let versions = snapshot
            .versions
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let (mut discovery, last_ok) =
                    state.discovery.get(&v.name).cloned().unwrap_or_default();
                discovery.age_seconds = last_ok.map(|t| t.elapsed().as_secs_f64());
                VersionStatus {
                    name: v.name.clone(),
                    weight: v.weight,
                    stable: i == snapshot.stable,
                    endpoints: v
                        .endpoints
                        .iter()
                        .map(|e| EndpointStatus {
                            address: e.addr().to_string(),
                            health: if e.is_ejected() { "ejected" } else { "healthy" },
                            ejected_for_ms: e.ejected_for_ms(),
                            outstanding: e.outstanding(),
                        })
                        .collect(),
                    discovery,
                }
            })
            .collect();
        Status {
            ready: readiness.is_ok(),
            not_ready_reason: readiness.err(),
            draining: self.is_draining(),
            weights: view(&state.decision),
            versions,
            config_source: state
                .config
                .source
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "built-in".into()),
            last_reload: state.last_reload.clone(),
            store: state.store.clone(),
            appmesh: state.appmesh.clone(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
        }
    }
}

impl EndpointSink for Control {
    fn endpoints_discovered(&self, version: &str, addrs: Vec<SocketAddr>) {
        let mut state = self.lock();
        let Some(current) = state.endpoints.get(version).cloned() else {
            return;
        };
        if let Some((d, last_ok)) = state.discovery.get_mut(version) {
            d.last_error = None;
            d.consecutive_errors = 0;
            *last_ok = Some(Instant::now());
        }
        let mut sorted = addrs;
        sorted.sort();
        sorted.dedup();
        let unchanged = current.len() == sorted.len()
            && current.iter().zip(&sorted).all(|(e, a)| e.addr() == *a);
        if unchanged {
            return;
        }
        let next = reuse_endpoints(&current, &sorted);
        for e in &current {
            if !next.iter().any(|n| Arc::ptr_eq(n, e)) {
                e.clear_pool();
            }
        }
        tracing::info!(version, endpoints = ?sorted, "discovered endpoints changed");
        state.endpoints.insert(version.to_string(), next);
        if let Err(e) = self.swap(&state) {
            tracing::error!(error = %e, "could not apply discovered endpoints");
        }
    }

    fn endpoints_confirmed(&self, version: &str) {
        let mut state = self.lock();
        if let Some((d, last_ok)) = state.discovery.get_mut(version) {
            d.last_error = None;
            d.consecutive_errors = 0;
            *last_ok = Some(Instant::now());
        }
    }

    fn discovery_failed(&self, version: &str, error: &DiscoveryError) {
        let mut state = self.lock();
        if let Some((d, _)) = state.discovery.get_mut(version) {
            d.last_error = Some(error.to_string());
            d.consecutive_errors += 1;
        }
    }
}

/// Every version at 0 but `to`, which gets the current total (so the numbers
/// stay on the operator's scale, e.g. 0/100).
fn all_weight_to(weights: &BTreeMap<String, u32>, to: &str) -> BTreeMap<String, u32> {
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

/// Builds the snapshot that `state` describes.
fn build(state: &State) -> Result<Snapshot, ControlError> {
    let versions: Vec<String> = state.config.version_names();
    Ok(Snapshot::build(SnapshotInput {
        versions: &versions,
        stable: &state.decision.stable,
        weights: &state.decision.weights,
        endpoints: &state.endpoints,
        generation: state.decision.generation,
        settings: state.settings.clone(),
    })?)
}

fn publish_endpoint_gauges(snapshot: &Snapshot) {
    for v in snapshot.versions.iter() {
        let healthy = v.endpoints.iter().filter(|e| !e.is_ejected()).count();
        metrics::gauge!(names::ENDPOINTS, "version" => v.name.clone())
            .set(v.endpoints.len() as f64);
        metrics::gauge!(names::ENDPOINTS_HEALTHY, "version" => v.name.clone()).set(healthy as f64);
    }
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
fn fit_to_config(doc: WeightsDoc, config: &Config) -> WeightsDoc {
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

fn view(doc: &WeightsDoc) -> WeightsView {
    WeightsView {
        stable: doc.stable.clone(),
        weights: doc.weights.clone(),
        generation: doc.generation,
        updated_at_ms: doc.updated_at_ms,
        source: doc.source.clone(),
    }
}

/// The endpoints for `addrs`, keeping the existing `Arc`s (their pools and
/// health) for addresses that stay.
fn reuse_endpoints(current: &[Arc<Endpoint>], addrs: &[SocketAddr]) -> Vec<Arc<Endpoint>> {
    addrs
        .iter()
        .map(|a| {
            current
                .iter()
                .find(|e| e.addr() == *a)
                .cloned()
                .unwrap_or_else(|| Arc::new(Endpoint::new(*a)))
        })
        .collect()
}

/// `new` with the settings that only a restart can change taken from `old`.
fn keep_restart_only(old: &Config, mut new: Config) -> Config {
    new.listener = old.listener.clone();
    new.admin.address = old.admin.address;
    new.worker_threads = old.worker_threads;
    new.store = old.store.clone();
    new.state_path = old.state_path.clone();
    new.aws = old.aws.clone();
    new.log.format = old.log.format;
    new.log.level = old.log.level.clone();
    new
}
