//! Metric names, in one place. Labels are version names (and small fixed sets
//! such as status classes or error kinds), never raw paths.

/// Counter: requests by `version` and `status` class (2xx, 3xx, 4xx, 5xx).
pub const REQUESTS_TOTAL: &str = "canary_requests_total";
/// Histogram: request duration in seconds by `version`.
pub const REQUEST_DURATION_SECONDS: &str = "canary_request_duration_seconds";
/// Counter: upstream errors by `version` and `kind` (connect, timeout, reset, no_endpoints).
pub const UPSTREAM_ERRORS_TOTAL: &str = "canary_upstream_errors_total";
/// Counter: requests that failed by the client's fault, by `kind` (bad_head,
/// bad_body, aborted, body_stall, head_timeout); never counted as a version's
/// upstream error.
pub const CLIENT_ERRORS_TOTAL: &str = "canary_client_errors_total";
/// Counter: requests in flight ended because their bodies made no progress in
/// either direction for `[timeouts] body_stall`.
pub const BODY_STALLS_TOTAL: &str = "canary_body_stalls_total";
/// Gauge: requests being served.
pub const IN_FLIGHT_REQUESTS: &str = "canary_in_flight_requests";
/// Gauge: open client connections.
pub const OPEN_CONNECTIONS: &str = "canary_open_connections";
/// Gauge: the weight of each `version`.
pub const VERSION_WEIGHT: &str = "canary_version_weight";
/// Gauge: the weights generation this replica has applied.
pub const GENERATION: &str = "canary_generation";
/// Counter: config reloads by `result` (ok, error).
pub const RELOADS_TOTAL: &str = "canary_reloads_total";
/// Counter: polls of the config file by its watcher (it is alive).
pub const CONFIG_POLLS_TOTAL: &str = "canary_config_polls_total";
/// Gauge: endpoints per `version`.
pub const ENDPOINTS: &str = "canary_endpoints";
/// Gauge: healthy (not ejected) endpoints per `version`.
pub const ENDPOINTS_HEALTHY: &str = "canary_endpoints_healthy";
/// Counter: Cloud Map discovery failures by `version` and `kind`.
pub const DISCOVERY_ERRORS_TOTAL: &str = "canary_discovery_errors_total";
/// Gauge: age in seconds of each `version`'s discovered endpoints.
pub const DISCOVERY_AGE_SECONDS: &str = "canary_discovery_age_seconds";
/// Counter: weight store operations by `op` (load, save, report: this task's
/// generation report) and `result` (ok,
/// error, throttled, conflict: another task wrote first).
pub const STORE_OPERATIONS_TOTAL: &str = "canary_store_operations_total";
/// Counter: App Mesh route syncs by `result` (ok, error).
pub const APPMESH_SYNCS_TOTAL: &str = "canary_appmesh_syncs_total";
/// Gauge: 1 while this task serves without having read the shared weight store
/// (started within `store.boot_timeout` without it), else 0.
pub const STORE_DEGRADED: &str = "canary_store_degraded";
/// Gauge: 1 while a rollback applied on this task is not in the store yet.
pub const STORE_ROLLBACK_PENDING: &str = "canary_store_rollback_pending";
/// Counter: rollbacks applied on this task while the store could not take them.
pub const STORE_ROLLBACKS_DEFERRED_TOTAL: &str = "canary_store_rollbacks_deferred_total";
/// Counter: another task's document of the generation in force adopted from a
/// store without compare-and-set (Cloud Map: two writes of one generation
/// were both confirmed, the store kept the other one).
pub const STORE_SAME_GENERATION_ADOPTED_TOTAL: &str = "canary_store_same_generation_adopted_total";
/// Counter: the store was found behind the decision this task runs (its
/// weights document gone, or an older generation: a restore), by `result`:
/// `found` (each time it is first seen so), `reseeded` (this task wrote its
/// decision back), `conflict` (another task's write came first).
pub const STORE_BEHIND_TOTAL: &str = "canary_store_behind_total";
/// Gauge: 1 while the stable version has no endpoints (its requests get 503).
pub const STABLE_EMPTY: &str = "canary_stable_version_empty";
/// Gauge: 1 while a `version`'s discovery has failed for longer than
/// `discovery.stale_after` (its last endpoints are still used).
pub const DISCOVERY_STALE: &str = "canary_discovery_stale";
/// Gauge: the weights generation last written to the App Mesh route.
pub const APPMESH_SYNCED_GENERATION: &str = "canary_appmesh_synced_generation";
/// Gauge: gateway tasks whose generation reports are fresh (this task included).
pub const FLEET_TASKS: &str = "canary_fleet_tasks";
/// Gauge: 1 when every task with a fresh report runs the same generation, else 0.
pub const FLEET_CONVERGED: &str = "canary_fleet_converged";
/// Gauge: 1 for the rollout's `phase` (progressing, holding, paused,
/// waiting_gate, succeeded, aborted), 0 for the others.
pub const ROLLOUT_PHASE: &str = "canary_rollout_phase";
/// Gauge: the rolled-out canary's share of the traffic, percent, by `version`.
pub const ROLLOUT_CANARY_SHARE: &str = "canary_rollout_canary_share_percent";
/// Counter: rollout steps taken.
pub const ROLLOUT_STEPS_TOTAL: &str = "canary_rollout_steps_total";
/// Counter: rollout step holds by `reason` (not_enough_evidence, gate, no_healthy_endpoints).
pub const ROLLOUT_HOLDS_TOTAL: &str = "canary_rollout_holds_total";
/// Counter: rollout aborts by `reason` (max_error_rate, max_p99_ms,
/// error_rate_vs_stable, p99_ratio, operator, rollback, config).
pub const ROLLOUT_ABORTS_TOTAL: &str = "canary_rollout_aborts_total";
/// Gauge: the last rollout analysis by `version` and `figure` (requests,
/// errors, error_rate, p50_ms, p99_ms).
pub const ROLLOUT_ANALYSIS: &str = "canary_rollout_analysis";
/// Gauge: the p-value of the last analysis's error-rate test.
pub const ROLLOUT_ANALYSIS_P_VALUE: &str = "canary_rollout_analysis_p_value";
/// Counters of fixed label sets (name, label, its values), registered at 0
/// when the recorder is installed ([`crate::telemetry::metrics_handle`]): a
/// counter series that first appears at 1 hides that increment from
/// `increase()` and `rate()`, so an alert on a process's first rollout
/// abort or first client error would not fire.
pub const ZEROED: &[(&str, &str, &[&str])] = &[
    (
        CLIENT_ERRORS_TOTAL,
        "kind",
        &[
            "bad_head",
            "bad_body",
            "aborted",
            "body_stall",
            "head_timeout",
        ],
    ),
    (RELOADS_TOTAL, "result", &["ok", "error"]),
    (
        ROLLOUT_ABORTS_TOTAL,
        "reason",
        &[
            "max_error_rate",
            "max_p99_ms",
            "error_rate_vs_stable",
            "p99_ratio",
            "operator",
            "rollback",
            "config",
        ],
    ),
    (
        ROLLOUT_HOLDS_TOTAL,
        "reason",
        &["not_enough_evidence", "gate", "no_healthy_endpoints"],
    ),
];
/// Counters without labels, registered at 0 likewise.
pub const ZEROED_PLAIN: &[&str] = &[CONFIG_POLLS_TOTAL, ROLLOUT_STEPS_TOTAL, BODY_STALLS_TOTAL];
/// Counter: TLS certificate pair reloads by `result` (ok, error).
pub const TLS_RELOADS_TOTAL: &str = "canary_tls_reloads_total";
/// Gauge: 1 while the last TLS pair reload failed (the previous pair serves).
pub const TLS_RELOAD_FAILING: &str = "canary_tls_reload_failing";
/// Counter: client TLS handshakes that failed or timed out.
pub const TLS_HANDSHAKE_ERRORS_TOTAL: &str = "canary_tls_handshake_errors_total";
/// Gauge: when the serving certificate expires (its `notAfter`, Unix
/// seconds).
pub const TLS_CERT_EXPIRY: &str = "canary_tls_certificate_expiry_timestamp_seconds";
