//! Control path: the read-only views the admin API serves (JSON shapes).

use std::collections::BTreeMap;

use std::sync::atomic::Ordering;

use serde::Serialize;

use super::{Control, publish_endpoint_gauges, view};
use crate::metrics as names;
use crate::store::unix_ms;

/// `GET /weights` (and the answer to every change).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WeightsView {
    pub stable: String,
    pub weights: BTreeMap<String, u32>,
    pub generation: u64,
    /// When the decision in force was made (ms since the Unix epoch).
    pub updated_at_ms: u64,
    /// Which path made it: config, admin, reload, store, rollout.
    pub source: String,
}

/// One endpoint in `GET /status`.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointStatus {
    pub address: String,
    /// `healthy`, or `ejected` while in an ejection period.
    pub health: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejected_for_ms: Option<u64>,
    pub outstanding: u32,
}

/// Where a version's endpoints come from and how fresh they are.
#[derive(Debug, Clone, Serialize, Default)]
pub struct DiscoveryStatus {
    /// `static` or `cloudmap:<namespace>/<service>`.
    pub source: String,
    /// Seconds since the last successful discovery (None: never, or static).
    pub age_seconds: Option<f64>,
    pub last_error: Option<String>,
    pub consecutive_errors: u64,
    /// The source has failed for longer than `discovery.stale_after`: its
    /// last endpoints are still used, but they may belong to other tasks by now.
    pub stale: bool,
    /// Whether a first discovery call has finished (success or failure).
    #[serde(skip)]
    pub attempted: bool,
    /// The last call found no such namespace or service in Cloud Map.
    #[serde(skip)]
    pub not_found: bool,
}

/// One version in `GET /status`.
#[derive(Debug, Clone, Serialize)]
pub struct VersionStatus {
    pub name: String,
    pub weight: u32,
    pub stable: bool,
    pub endpoints: Vec<EndpointStatus>,
    pub discovery: DiscoveryStatus,
}

/// The result of the last config reload.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    pub ok: bool,
    /// What started it: sighup, file-change, admin.
    pub trigger: String,
    pub at_ms: u64,
    pub message: String,
    /// Changed settings that only take effect after a restart.
    pub restart_required: Vec<String>,
}

/// The weight store's health.
#[derive(Debug, Clone, Serialize, Default)]
pub struct StoreStatus {
    pub kind: String,
    /// The last successful store call while the weights document reads
    /// fine (a write or report that succeeds while every read fails does not
    /// move it).
    pub last_ok_ms: Option<u64>,
    /// When this task's last successful poll of a shared store's weights
    /// document began (ms since the Unix epoch, this task's clock; `null`
    /// before its first poll, and on the file store): a view of the fleet
    /// from then on includes every decision written before it (`ctl status
    /// --wait-converged` waits for one that began after the wait did).
    pub read_began_ms: Option<u64>,
    /// Why the weights document cannot be read, while it cannot (only a
    /// successful read clears that); otherwise why the last write or report
    /// failed, until one succeeds.
    pub last_error: Option<String>,
    /// The failing read's error (cleared only by a successful read).
    #[serde(skip)]
    pub load_error: Option<String>,
    /// The last failed write's or report's error (cleared by a successful one).
    #[serde(skip)]
    pub write_error: Option<String>,
    /// Started without reading the shared store (serving the config file's
    /// weights until a poll reads it).
    pub degraded: bool,
    /// A rollback applied on this task is not in the store yet (retried in
    /// the background).
    pub rollback_pending: bool,
}

/// App Mesh route sync's health.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AppMeshStatus {
    pub route: String,
    pub last_ok_ms: Option<u64>,
    pub last_error: Option<String>,
    /// The weights last written to the route (0-100).
    pub synced_weights: Option<BTreeMap<String, u32>>,
    /// The generation of the decision last written to the route.
    pub synced_generation: Option<u64>,
    /// The generation whose write failed with `last_error` (a warning
    /// while it is the decision in force).
    #[serde(skip)]
    pub error_generation: Option<u64>,
    /// `last_error` was App Mesh throttling every attempt (see
    /// [`crate::route_sync::SyncError::throttled`]).
    #[serde(skip)]
    pub throttled: bool,
    /// `last_error` came reading the route, before any write was needed
    /// (see [`crate::route_sync::SyncError::route_unread`]).
    #[serde(skip)]
    pub route_unread: bool,
}

impl AppMeshStatus {
    /// Whether this task's last sync failed (its report's
    /// `appmesh_failing`). Throttled to the end is the account's API rate,
    /// which every task meets alike: no reason for another task to stand
    /// in (it would only add calls).
    pub fn failing(&self) -> bool {
        self.last_error.is_some() && !self.throttled
    }
}

/// `GET /status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_ready_reason: Option<String>,
    pub draining: bool,
    pub weights: WeightsView,
    pub versions: Vec<VersionStatus>,
    /// The config file in force.
    pub config_source: String,
    pub last_reload: Option<ReloadStatus>,
    /// Since when (ms since the Unix epoch) the config file has kept
    /// changing, a different text at each of the file watcher's last polls,
    /// so that none of it is applied (an edit applies once the file stays
    /// the same for a poll interval); `null` while it does not.
    pub config_file_unsettled_since_ms: Option<u64>,
    pub store: StoreStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub appmesh: Option<AppMeshStatus>,
    /// What an operator must look at now, in words (empty when all is well):
    /// an empty stable version (or any other with a weight above 0), a
    /// degraded store, a shared store whose last read failed, a pending
    /// rollback, stale discovery, a failed App Mesh route sync.
    pub warnings: Vec<String>,
    /// Which generation each gateway task runs, as reported through the store.
    pub fleet: super::fleet::FleetStatus,
    pub uptime_seconds: f64,
    /// This task's clock when it answered (ms since the Unix epoch).
    pub now_ms: u64,
}

impl Control {
    /// Refreshes the gauges that change without a snapshot swap (endpoint
    /// health after ejections); called before every scrape.
    pub fn publish_gauges(&self) {
        let ready = self.readiness().is_ok();
        let state = self.lock();
        // Under the lock, as every swap: a version a reload removes meanwhile
        // is never published again after its gauges went to 0.
        publish_endpoint_gauges(&self.snapshot.load());
        self.publish_fleet_gauges(&self.fleet_status(&state, ready));
        let stale_after = state.config.discovery.stale_after;
        for (version, (d, last_ok)) in &state.discovery {
            if let Some(at) = last_ok {
                metrics::gauge!(names::DISCOVERY_AGE_SECONDS, "version" => version.clone())
                    .set(at.elapsed().as_secs_f64());
            }
            let stale = self.is_stale(d, *last_ok, stale_after);
            metrics::gauge!(names::DISCOVERY_STALE, "version" => version.clone()).set(if stale {
                1.0
            } else {
                0.0
            });
        }
    }

    /// Whether a source has failed for longer than `stale_after` (since its
    /// last success, or since the start when it never answered).
    fn is_stale(
        &self,
        d: &DiscoveryStatus,
        last_ok: Option<std::time::Instant>,
        stale_after: std::time::Duration,
    ) -> bool {
        d.consecutive_errors > 0
            && last_ok.map_or(self.started.elapsed(), |t| t.elapsed()) > stale_after
    }

    /// Marks the listener as bound.
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::SeqCst);
    }

    /// From now on /readyz answers 503.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.report_soon();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// `Ok` when the gateway serves; otherwise why not. Ready = the listener
    /// is bound, the config is loaded (a `Control` exists), every discovery
    /// source of the start has been asked once, and the task is not draining. Upstream
    /// health is not part of it (like Envoy's `/ready`): an empty stable
    /// version must not take every gateway task out of the target group at
    /// once; it is reported loudly in /status and a metric instead.
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("draining: shutting down".into());
        }
        if !self.listening.load(Ordering::SeqCst) {
            return Err("the listener is not bound yet".into());
        }
        if self.discovered.load(Ordering::SeqCst) {
            return Ok(());
        }
        let state = self.lock();
        let waiting: Vec<String> = state
            .discovery
            .iter()
            .filter(|(_, (d, _))| !d.attempted)
            .map(|(name, (d, _))| format!("`{name}` ({})", d.source))
            .collect();
        if !waiting.is_empty() {
            return Err(format!(
                "waiting for the first discovery answer of {}",
                waiting.join(", ")
            ));
        }
        self.discovered.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Whether every discovery source has been asked once.
    pub fn discovery_attempted(&self) -> bool {
        self.lock().discovery.values().all(|(d, _)| d.attempted)
    }

    /// What /status lists under `warnings`.
    fn warnings(&self, state: &super::State, versions: &[VersionStatus]) -> Vec<String> {
        let mut out = Vec::new();
        for v in versions {
            if v.stable && v.endpoints.is_empty() {
                out.push(format!(
                    "the stable version `{}` has no endpoints ({}): its requests get 503",
                    v.name, v.discovery.source
                ));
            } else if v.weight > 0 && v.endpoints.is_empty() {
                out.push(format!(
                    "the version {}",
                    no_endpoints_sentence(&v.name, v.weight, &v.discovery.source)
                ));
            }
            if v.discovery.not_found {
                out.push(format!(
                    "Cloud Map has no such namespace or service for `{}` ({}): check its `cloudmap` in the config (a typo, or a service not created yet){}",
                    v.name,
                    v.discovery.source,
                    if v.endpoints.is_empty() {
                        ""
                    } else {
                        "; its last endpoints are still used"
                    }
                ));
            }
            if v.discovery.stale {
                out.push(format!(
                    "discovery of `{}` has failed for longer than discovery.stale_after: its last endpoints are still used but may be stale",
                    v.name
                ));
            }
        }
        if state.store.degraded {
            out.push(
                "degraded: the weight store could not be read at start; serving the config file's weights until it can"
                    .into(),
            );
        } else if let Some(e) = state
            .store
            .load_error
            .as_ref()
            .filter(|_| self.store_shared())
        {
            // The last read (a poll's, or a change's) failed; the next
            // poll's success clears it. Not with the state file, which is
            // read only by a change (that answered the error itself).
            out.push(format!(
                "the weight store cannot be read ({e}): weight changes (PUT /weights, POST /promote, POST /rollout) answer 503 until it can; the running decision (generation {}) keeps serving, and POST /rollback still applies on this task",
                state.decision.generation
            ));
        }
        if let Some(note) = state
            .behind_note
            .as_ref()
            .filter(|n| n.generation == state.decision.generation)
        {
            out.push(note.warning.clone());
        }
        // This task's last write of the decision in force to the App Mesh
        // route failed (a first sync or a reconcile): the route does not
        // follow it. A failure of an older decision's write is not one now
        // (a newer decision is written, by this task or its writer).
        if let Some(a) = state.appmesh.as_ref()
            && let Some(e) = a.last_error.as_ref()
            && a.error_generation == Some(state.decision.generation)
        {
            // Synced to it before: only a later check (a reconcile's
            // DescribeRoute) failed, and the route held it then.
            out.push(if a.route_unread && a.synced_generation == a.error_generation {
                format!(
                    "the App Mesh route {} could not be checked ({e}); it was synced to generation {} before; checked again every appmesh.reconcile_interval",
                    a.route, state.decision.generation
                )
            } else {
                format!(
                    "the App Mesh route {} could not be synced to generation {} ({e}): traffic through App Mesh does not follow this decision; retried every appmesh.reconcile_interval and at the next decision",
                    a.route, state.decision.generation
                )
            });
        }
        // Until a reload succeeds, what the last one read (the file on
        // disk, as an operator sees it) is not what runs.
        if let Some(reload) = state.last_reload.as_ref().filter(|r| !r.ok) {
            out.push(format!(
                "the last config reload ({}) failed: {}; the running config stays in force until a reload succeeds",
                reload.trigger, reload.message
            ));
        }
        // A text refused before a restart (after one, no reload has said
        // so): the file on disk is not what runs.
        if let Some(refused) = state.decision.refused_config.as_ref()
            && state.last_reload.as_ref().is_none_or(|r| r.ok)
        {
            let weights: Vec<String> = refused
                .weights
                .iter()
                .map(|(v, w)| format!("{v}={w}"))
                .collect();
            out.push(format!(
                "the config file's weights ({}, stable `{}`) were refused by a reload while a rollout ran and are not applied: the decision in force (generation {}) stays; reload (SIGHUP or POST /reload) once no rollout runs to apply them, or edit the file",
                weights.join(" "),
                refused.stable,
                state.decision.generation
            ));
        }
        if let Some(since) = state.config_file_unsettled_since_ms {
            out.push(format!(
                "the config file {} keeps changing (a different text at every poll for {} s): no edit in it is applied until it stays the same for a second",
                state.config.source_label(),
                unix_ms().saturating_sub(since) / 1000
            ));
        }
        if state.store.rollback_pending {
            out.push(if self.store_shared() {
                format!(
                    "rollback pending in the store: applied on this task (generation {}), not yet written to the store; the fleet's other tasks keep their weights until it is; retrying",
                    state.decision.generation
                )
            } else {
                format!(
                    "rollback pending in the state file: applied (generation {}), not yet written to the state file; a restart before it is would not know of the rollback; retrying",
                    state.decision.generation
                )
            });
        }
        out
    }

    /// The warning of a change's answer (`PUT /weights`, `POST /promote`):
    /// the versions `view` gives weight that have no endpoints on this task
    /// (their share of the requests gets 503); `None` when every one has some.
    pub fn weight_without_endpoints(&self, view: &WeightsView) -> Option<String> {
        let snapshot = self.snapshot.load();
        let state = self.lock();
        let said: Vec<String> = view
            .weights
            .iter()
            .filter(|&(name, &weight)| {
                weight > 0
                    && snapshot
                        .versions
                        .iter()
                        .any(|v| &v.name == name && v.endpoints.is_empty())
            })
            .map(|(name, weight)| {
                let source = state
                    .discovery
                    .get(name)
                    .map_or("", |(d, _)| d.source.as_str());
                format!(
                    "{} until it has some",
                    no_endpoints_sentence(name, *weight, source)
                )
            })
            .collect();
        (!said.is_empty()).then(|| said.join("; "))
    }

    /// Records the App Mesh sync's outcome for /status.
    pub fn appmesh_synced(
        &self,
        generation: u64,
        result: Result<BTreeMap<String, u32>, crate::route_sync::SyncError>,
    ) {
        let mut state = self.lock();
        let before = state.appmesh.as_ref().is_some_and(AppMeshStatus::failing);
        if let Some(a) = state.appmesh.as_mut() {
            match result {
                Ok(w) => {
                    a.last_ok_ms = Some(unix_ms());
                    a.last_error = None;
                    a.synced_weights = Some(w);
                    a.synced_generation = Some(generation);
                    a.error_generation = None;
                    a.throttled = false;
                    metrics::gauge!(names::APPMESH_SYNCED_GENERATION).set(generation as f64);
                }
                Err(e) => {
                    a.last_error = Some(e.message);
                    a.error_generation = Some(generation);
                    a.throttled = e.throttled;
                    a.route_unread = e.route_unread;
                }
            }
        }
        // The fleet learns at once whether this task's syncs fail (another
        // task stands in for a writer that reports so).
        if state.appmesh.as_ref().is_some_and(AppMeshStatus::failing) != before {
            self.report_soon();
        }
    }

    /// `GET /status`.
    pub fn status(&self) -> Status {
        let readiness = self.readiness();
        let snapshot = self.snapshot.load_full();
        let state = self.lock();
        let stale_after = state.config.discovery.stale_after;
        let versions: Vec<VersionStatus> = snapshot
            .versions
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let (mut discovery, last_ok) =
                    state.discovery.get(&v.name).cloned().unwrap_or_default();
                discovery.age_seconds = last_ok.map(|t| t.elapsed().as_secs_f64());
                discovery.stale = self.is_stale(&discovery, last_ok, stale_after);
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
            not_ready_reason: readiness.clone().err(),
            draining: self.is_draining(),
            weights: view(&state.decision),
            config_source: state.config.source_label(),
            last_reload: state.last_reload.clone(),
            config_file_unsettled_since_ms: state.config_file_unsettled_since_ms,
            store: state.store.clone(),
            appmesh: state.appmesh.clone(),
            warnings: self.warnings(&state, &versions),
            fleet: self.fleet_status(&state, readiness.is_ok()),
            versions,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            now_ms: unix_ms(),
        }
    }
}

/// `` `v3` has weight 50 but no endpoints (cloudmap:ns/app-v3): its share of
/// the requests gets 503 ``: `/status`'s warning and a change's answer.
fn no_endpoints_sentence(name: &str, weight: u32, source: &str) -> String {
    format!(
        "`{name}` has weight {weight} but no endpoints ({source}): its share of the requests gets 503"
    )
}
