//! Control path: the one writer.
//!
//! Admin changes, config reloads, discovery results and the fleet store all
//! funnel into [`Control`], which validates the change, builds a new
//! [`Snapshot`] and swaps it whole. Every swap happens under one lock, so two
//! sources never race; weight decisions are additionally serialized (and
//! written to the store before they apply) so that a replica never applies a
//! change the fleet did not record.

mod boot;
mod decisions;
mod endpoints;
pub mod fleet;
mod reload;
mod reseed;
pub mod rollout;
pub mod status;
#[cfg(test)]
mod tests;
mod upkeep;

pub use decisions::validate_weights;
pub use reload::Refusal;
pub use upkeep::keep_store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::{Config, EndpointSource};
use crate::metrics as names;
use crate::proxy::upstream::Endpoint;
use crate::snapshot::{ProxySettings, Snapshot, SnapshotError, SnapshotInput};
use crate::store::{GenerationLimit, Store, StoreError, WeightsDoc, next_generation, unix_ms};
use crate::telemetry::series;
use status::{DiscoveryStatus, ReloadStatus, StoreStatus, WeightsView};
use tokio::sync::Notify;

/// Why a change was refused. The snapshot in force is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("unknown version `{0}`")]
    UnknownVersion(String),
    #[error("{0}")]
    Invalid(String),
    /// The admin API answers these with [`ControlError::short`]: the store's
    /// own words are in the log and in /status (`store.last_error`).
    #[error("{}", store_write_failed(.0))]
    Store(StoreError),
    #[error("the weight store could not be read: {0}")]
    StoreLoad(StoreError),
    /// A manual weight change (`PUT /weights`, `POST /promote`) while a
    /// rollout progresses (a paused one allows it), judged on the decision
    /// in force when the change's turn came: nothing was changed.
    #[error(
        "a rollout of `{}` is running; POST /rollout/abort or /rollout/pause first",
        .0.plan.canary
    )]
    RolloutRunning(Box<crate::rollout::state::RolloutState>),
    /// The decision changed while this change was made: another task wrote
    /// the shared store first, or this task rolled back meanwhile (a
    /// `POST /rollback`, a rollout's abort). Nothing was changed here; the
    /// decision in force (the store's, when newer) is applied and returned.
    #[error(
        "the weights changed meanwhile, by another gateway task or by this task's own rollback or rollout abort (now generation {}); nothing was changed: review the current weights and retry",
        .0.generation
    )]
    Conflict(Box<WeightsView>),
    /// The decision in force is at [`crate::store::MAX_GENERATION`]:
    /// nothing was changed.
    #[error(transparent)]
    GenerationLimit(#[from] GenerationLimit),
}

impl ControlError {
    /// The message for an API answer: without the store's (SDK's) text.
    pub fn short(&self) -> String {
        match self {
            ControlError::Store(StoreError::Unconfirmed(_)) => "the weight store did not confirm the write: it may have landed, and then every task applies it at its next poll; check GET /weights before retrying (details: /status store.last_error)".into(),
            ControlError::Store(StoreError::Inconsistent(_)) => "the weight store's item is inconsistent (its generation does not match its document's): nothing was changed, and no retry can succeed until the item is fixed (details: /status store.last_error)".into(),
            ControlError::Store(_) => "the weight store could not be written; nothing was changed (details: /status store.last_error)".into(),
            ControlError::StoreLoad(_) => "the weight store could not be read; nothing was changed (details: /status store.last_error)".into(),
            other => other.to_string(),
        }
    }
}

/// [`ControlError::Store`]'s message: "nothing was changed" only when
/// that is known.
fn store_write_failed(e: &StoreError) -> String {
    match e {
        StoreError::Unconfirmed(_) => format!("the weight store did not confirm the write: {e}"),
        _ => format!("the weight store could not be written, nothing was changed: {e}"),
    }
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
    /// Since when the config file has kept changing, none of it applied
    /// (ms since the Unix epoch; see `reload::UNSETTLED_WARN_POLLS`).
    config_file_unsettled_since_ms: Option<u64>,
    store: StoreStatus,
    appmesh: Option<status::AppMeshStatus>,
    /// A rollback applied here that the store has not taken yet.
    pending_rollback: Option<decisions::PendingRollback>,
    /// On a store without compare-and-set (Cloud Map): another writer's
    /// document of the generation in force, read once by the last read of
    /// the store; the next read that answers it again adopts it.
    same_generation_seen: Option<WeightsDoc>,
    /// What the last poll read when it was behind the decision in force (see
    /// `reseed`): a second read that agrees confirms it.
    behind_seen: Option<reseed::Behind>,
    /// The store was found behind the decision in force: /status warns.
    behind_note: Option<reseed::BehindNote>,
    /// How many rollbacks were applied here: a decision or reload that was
    /// writing the store meanwhile sees the count change and never undoes one.
    rollbacks: u64,
    /// When the decision in force was applied here (ms since the Unix epoch).
    applied_at_ms: u64,
    /// Every task's report as the store last answered it (`None`: the store
    /// keeps no reports, or none was written yet).
    fleet: Option<Vec<crate::store::TaskReport>>,
    /// The generation, draining flag and App Mesh failing flag of this
    /// task's last report, and when.
    reported: Option<(u64, bool, bool, Instant)>,
    /// Why this task's last report could not be written (`None`: it was).
    report_error: Option<String>,
    /// The rollout's counters, clock and this gateway's view of it.
    rollout: crate::rollout::Local,
}

/// The gateway's control plane.
pub struct Control {
    snapshot: Arc<ArcSwap<Snapshot>>,
    state: Mutex<State>,
    decisions: tokio::sync::Mutex<()>,
    store: Arc<dyn Store>,
    /// This task's writer id in the documents it writes (random per process).
    writer: String,
    /// Wakes the store upkeep when a rollback waits for the store.
    pending_wake: Notify,
    /// Wakes the store upkeep to report this task's generation now.
    report_wake: Notify,
    listening: AtomicBool,
    /// Every discovery source had been asked once (readiness never goes back
    /// for discovery: a version added by a reload does not unready the fleet).
    discovered: AtomicBool,
    /// Cloud Map discovery can run for a version (its poller spawner was
    /// set up at start): a reload into a `cloudmap` source is refused
    /// without it. By default whether the start config had such a version
    /// (the AWS setup builds the spawner only then); the gateway sets it
    /// from the spawner it has ([`Control::set_cloud_map_discovery`]).
    cloud_map_discovery: AtomicBool,
    draining: AtomicBool,
    started: Instant,
    weights_tx: watch::Sender<WeightsDoc>,
    /// The dashboard series' claims on the versions of the snapshot in
    /// force (see [`crate::telemetry::series::Presence`]): let go when a
    /// reload removes a version, so that its track ages out.
    series: Mutex<BTreeMap<String, series::Presence<'static>>>,
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
        let writer = writer_id();
        let first_read = boot::first_read(&*store, config.store.boot_timeout()).await?;
        let stored = first_read.doc.clone();
        // A text a reload refused while a rollout ran is still the file's:
        // not an edit made while the gateway was stopped (see
        // `reload::refused_still`).
        let (config, refused_kept) = match stored.as_ref() {
            Some(doc) if !store.shared() => reload::refused_still(doc, config),
            _ => (config, false),
        };
        let config_weights = config.weights();
        let from_config = WeightsDoc {
            stable: config.split.stable.clone(),
            weights: config_weights.clone(),
            generation: 0,
            updated_at_ms: unix_ms(),
            source: "config".into(),
            // Started without reading the shared store: the file's weights
            // serve here but are no decision of this task's, so they are
            // never mirrored to the App Mesh route (over the fleet's).
            writer: match first_read.failed {
                Some(_) => UNREAD_STORE_WRITER.into(),
                None => writer.clone(),
            },
            config_weights: Some(config_weights),
            config_stable: (!store.shared()).then(|| config.split.stable.clone()),
            refused_config: None,
            rollout: None,
        };
        // The file's weights win over a saved decision, `by` what: one
        // generation above it, its rollout (if running) aborted.
        let file_wins = |doc: &WeightsDoc, by: &str| -> Result<WeightsDoc, GenerationLimit> {
            Ok(WeightsDoc {
                generation: next_generation(doc.generation)?,
                rollout: crate::rollout::state::aborted(doc.rollout.as_ref(), by, unix_ms()),
                ..from_config.clone()
            })
        };
        // Whether the file's weights won over a saved decision: then they
        // are a new decision, recorded like a reload's edit (file store only:
        // a replica joins with a shared store's decision).
        let mut file_won = false;
        let mut decision = match stored {
            None => from_config,
            Some(doc) if !store.shared() && reload::edited_at_start(&doc, &config) => {
                let won = file_wins(
                    &doc,
                    "an edit of the config file's weights or stable version",
                )?;
                tracing::warn!(
                    target: "audit",
                    generation = won.generation,
                    "the config file's weights or stable version were edited since the saved decision (generation {}); the config file wins",
                    doc.generation
                );
                file_won = true;
                won
            }
            Some(doc) => {
                match decisions::adoptable(doc.clone(), &config) {
                    Ok(fitted) => {
                        tracing::info!(target: "audit", generation = fitted.generation, source = %fitted.source, weights = ?fitted.weights, stable = %fitted.stable, "restored the saved weights decision");
                        fitted
                    }
                    // The versions that carried the traffic left the file
                    // (those it added would take it all, at their file
                    // weights): its weights are all there is to go on. A shared
                    // store's decision stays the fleet's (never mirrored
                    // from here, adopted once one fits).
                    Err(e) => {
                        // A document no gateway wrote (edited by hand, or
                        // damaged) is told apart from a config edit.
                        let own_total = doc.weights.values().map(|&w| u64::from(w)).sum();
                        let invalid = crate::config::check_total(own_total).is_err();
                        let why = if invalid {
                            "the saved weights decision is invalid"
                        } else {
                            "the saved weights decision does not fit the config file (the versions carrying its traffic are gone)"
                        };
                        tracing::warn!(target: "audit", error = %e, generation = doc.generation, "{why}: serving the file's weights");
                        if store.shared() {
                            // At the store's generation: this task's next
                            // decision goes above it.
                            WeightsDoc {
                                generation: doc.generation,
                                writer: UNREAD_STORE_WRITER.into(),
                                ..from_config
                            }
                        } else {
                            file_won = true;
                            file_wins(
                                &doc,
                                if invalid {
                                    "an invalid saved decision"
                                } else {
                                    "an edit of the config file's versions"
                                },
                            )?
                        }
                    }
                }
            }
        };
        // A refused text no longer the file's: the state file is written
        // without it, or a later start that finds the file edited to it
        // (while stopped, on purpose) would keep it refused.
        let refusal_over = !refused_kept && decision.refused_config.is_some() && !file_won;
        if refused_kept {
            tracing::warn!(
                target: "audit",
                generation = decision.generation,
                "the config file's weights or stable version were refused by a reload while a rollout ran, and the file still has them: the saved decision stays in force; reload (SIGHUP or POST /reload) once no rollout runs to apply them"
            );
        } else {
            // The file no longer has the text refused before the stop.
            decision.refused_config = None;
        }
        let mut endpoints = BTreeMap::new();
        let mut discovery = BTreeMap::new();
        for v in &config.versions {
            let list = match &v.source {
                EndpointSource::Static(addrs) => reuse_endpoints(&[], addrs),
                EndpointSource::CloudMap(_) => Vec::new(),
            };
            endpoints.insert(v.name.clone(), list);
            discovery.insert(v.name.clone(), fresh_discovery(&v.source));
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
            config_file_unsettled_since_ms: None,
            store: first_read.status(store_kind),
            appmesh,
            pending_rollback: None,
            same_generation_seen: None,
            behind_seen: None,
            behind_note: None,
            rollbacks: 0,
            applied_at_ms: unix_ms(),
            fleet: None,
            reported: None,
            report_error: None,
            rollout: Default::default(),
        };
        let first = build(&state)?;
        publish_endpoint_gauges(&first);
        let (weights_tx, _) = watch::channel(decision.clone());
        let cloud_map_discovery = state.config.uses_cloud_map();
        let control = Arc::new(Control {
            snapshot: Arc::new(ArcSwap::from_pointee(first)),
            state: Mutex::new(state),
            decisions: tokio::sync::Mutex::new(()),
            store,
            writer,
            pending_wake: Notify::new(),
            report_wake: Notify::new(),
            listening: AtomicBool::new(false),
            discovered: AtomicBool::new(false),
            cloud_map_discovery: AtomicBool::new(cloud_map_discovery),
            draining: AtomicBool::new(false),
            started: Instant::now(),
            weights_tx,
            series: Mutex::default(),
        });
        control.hold_series(&control.snapshot.load());
        if file_won {
            control.record_at_start(decision).await;
        } else if refusal_over {
            let doc = control.lock().decision.clone();
            if let Err(e) = control.write_store(&doc, None).await {
                tracing::error!(error = %e, "the state file could not be written without the refused config text it notes");
            }
        }
        Ok(control)
    }

    /// Writes the decision the config file's edit made at start (file
    /// store), as a reload records an edit: otherwise the saved decision it
    /// replaced would come back at a later start (once the file is edited
    /// back to the weights it was made against), generation going
    /// backwards. A state file that cannot be written does not stop the
    /// start (the file's weights serve; a change through the admin API
    /// fails the same way): the error is logged and in `/status`
    /// `store.last_error`, and the next start judges the file against the
    /// old document again.
    async fn record_at_start(&self, decision: WeightsDoc) {
        match self.record(decision).await {
            Ok(doc) => tracing::info!(
                target: "audit",
                generation = doc.generation,
                "the config file's edit is recorded as the saved weights decision"
            ),
            Err(e) => tracing::error!(
                error = %e,
                "the config file's edit serves but could not be saved: a restart may bring back the older saved decision"
            ),
        }
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

    /// Whether Cloud Map discovery was set up (a poller can be started for
    /// a version with a `cloudmap` source): without it, a reload that asks
    /// for one is refused (nothing would ever poll it).
    pub fn set_cloud_map_discovery(&self, available: bool) {
        self.cloud_map_discovery
            .store(available, std::sync::atomic::Ordering::Release);
    }

    fn cloud_map_discovery(&self) -> bool {
        self.cloud_map_discovery
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// This task's writer id (the `writer` of the documents it writes).
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// Subscribes to applied weight decisions (App Mesh sync follows these).
    pub fn subscribe(&self) -> watch::Receiver<WeightsDoc> {
        self.weights_tx.subscribe()
    }

    /// Rebuilds and swaps the snapshot. Called with the state lock held, so
    /// every swap is serialized.
    fn swap(&self, state: &State) -> Result<(), ControlError> {
        let next = Arc::new(build(state)?);
        publish_endpoint_gauges(&next);
        let previous = self.snapshot.swap(next.clone());
        zero_gauges_of_removed_versions(&previous, &next);
        self.hold_series(&next);
        free_windows_of_removed_versions(state, &next);
        Ok(())
    }

    /// Claims the dashboard series of `snapshot`'s versions and lets go of
    /// the others (their weight goes to 0 and they age out).
    fn hold_series(&self, snapshot: &Snapshot) {
        let mut held = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let next = snapshot
            .versions
            .iter()
            .map(|v| {
                let presence = held
                    .remove(&v.name)
                    .unwrap_or_else(|| series::hold(&v.name));
                (v.name.clone(), presence)
            })
            .collect();
        // The versions left in `held` were removed: dropped here.
        *held = next;
    }
}

/// Frees the rollout counters of the versions `next` has not, but those of
/// the running rollout (it may still read them: it is aborted when a reload
/// removed its canary or stable version, or on a shared store runs on
/// another task's versions).
fn free_windows_of_removed_versions(state: &State, next: &Snapshot) {
    let running = state
        .decision
        .rollout
        .as_ref()
        .filter(|r| r.phase.running());
    state.rollout.windows.retain(|name| {
        next.version_named(name.as_bytes()).is_some()
            || running.is_some_and(|r| r.plan.canary == name || r.plan.stable == name)
    });
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
        windows: &state.rollout.windows,
    })?)
}

fn publish_endpoint_gauges(snapshot: &Snapshot) {
    for v in snapshot.versions.iter() {
        let healthy = v.endpoints.iter().filter(|e| !e.is_ejected()).count();
        metrics::gauge!(names::ENDPOINTS, "version" => v.name.clone())
            .set(v.endpoints.len() as f64);
        metrics::gauge!(names::ENDPOINTS_HEALTHY, "version" => v.name.clone()).set(healthy as f64);
    }
    let empty = snapshot.stable_version().endpoints.is_empty();
    metrics::gauge!(names::STABLE_EMPTY).set(if empty { 1.0 } else { 0.0 });
}

/// The per-version gauges of the versions `previous` had and `next` has
/// not (removed by a reload) go to 0: the exporter keeps a series at its
/// last value, and a removed version would otherwise keep its weight in
/// `sum(canary_version_weight)` and a stale discovery alert forever. Its
/// rollout gauges go to 0 too.
fn zero_gauges_of_removed_versions(previous: &Snapshot, next: &Snapshot) {
    for v in previous.versions.iter() {
        if next.versions.iter().any(|n| n.name == v.name) {
            continue;
        }
        for name in [
            names::VERSION_WEIGHT,
            names::ENDPOINTS,
            names::ENDPOINTS_HEALTHY,
            names::DISCOVERY_STALE,
            names::DISCOVERY_AGE_SECONDS,
        ] {
            metrics::gauge!(name, "version" => v.name.clone()).set(0.0);
        }
        crate::rollout::zero_version_gauges(&v.name);
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

/// The writer of the config file's weights on a task that started without
/// a decision from its shared store (unreadable, or not fitting the file):
/// no task's, so no task mirrors them.
pub const UNREAD_STORE_WRITER: &str = "config (store not read at start)";

/// A writer id unique to this process: the host name (the ECS task's),
/// the process id and a random part.
fn writer_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .take(40)
        .collect();
    format!(
        "{host}{}{}-{:08x}",
        if host.is_empty() { "" } else { "-" },
        std::process::id(),
        rand::random::<u32>()
    )
}

/// The discovery status of a version whose endpoint source is new: not
/// heard from yet (a static list counts as asked).
fn fresh_discovery(source: &EndpointSource) -> (DiscoveryStatus, Option<Instant>) {
    let name = match source {
        EndpointSource::Static(_) => "static".to_string(),
        EndpointSource::CloudMap(c) => format!("cloudmap:{}/{}", c.namespace, c.service),
    };
    let status = DiscoveryStatus {
        source: name,
        attempted: matches!(source, EndpointSource::Static(_)),
        ..Default::default()
    };
    (status, None)
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
