//! The real binary against moto: Cloud Map discovery, the Cloud Map fleet
//! store and App Mesh route sync, end to end (issue 4).
//!
//! Every test runs its own moto server and `canary-gateway run --config FILE`
//! processes with `[aws] endpoint_url` pointing at it; the upstreams are small
//! HTTP servers on 127.0.0.1 that answer with their name.

#[path = "support/cloudmap_fixture.rs"]
mod cloudmap_fixture;
#[path = "support/fault_proxy.rs"]
mod fault_proxy;
#[path = "support/gateway_proc.rs"]
mod gateway_proc;
#[path = "support/mesh_fixture.rs"]
mod mesh_fixture;
#[path = "support/moto.rs"]
mod moto;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cloudmap_fixture::CloudMapFixture;
use gateway_proc::{
    BlackHole, GatewayProc, Relay, TOKEN_ENV, TaggedUpstream, admin, endpoints_line, eventually,
    gateway_config, metric_sum, metric_value, split_counts, weights_of,
};
use moto::MotoServer;
use serde_json::{Value, json};

const NAMESPACE: &str = "canary.local";

/// Bound of every wait for something the gateway does in the background.
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- config ----

/// `endpoints = ["addr"]` for a version.
fn static_source(upstream: &TaggedUpstream) -> String {
    endpoints_line(&[upstream.addr])
}

/// `cloudmap = {...}` for a version.
fn cloudmap_source(service: &str) -> String {
    format!("cloudmap = {{ namespace = \"{NAMESPACE}\", service = \"{service}\" }}")
}

/// A gateway config on 127.0.0.1:0 talking to AWS at `aws_url`: versions
/// `(name, weight, source line)`, the first one stable, then `extra` tables.
fn config(aws_url: &str, versions: &[(&str, u32, String)], extra: &str) -> String {
    let mut text = gateway_config(
        &format!("token_env = \"{TOKEN_ENV}\"\n"),
        &format!("\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{aws_url}\""),
        versions,
    );
    text.push('\n');
    text.push_str(extra);
    text
}

/// `[store]` on Cloud Map service `service_id`, polled every 300 ms.
fn fleet_store(service_id: &str) -> String {
    format!(
        "[store]\nkind = \"cloudmap\"\nservice_id = \"{service_id}\"\npoll_interval = \"300ms\"\n"
    )
}

// ------------------------------------------------------------- cloud map ----

/// Creates service `name` in the namespace.
async fn create_service(
    client: &aws_sdk_servicediscovery::Client,
    namespace_id: &str,
    name: &str,
) -> CloudMapFixture {
    let created = client
        .create_service()
        .name(name)
        .namespace_id(namespace_id)
        .send()
        .await
        .expect("CreateService");
    CloudMapFixture {
        client: client.clone(),
        namespace: NAMESPACE.to_owned(),
        service: name.to_owned(),
        service_id: created
            .service()
            .and_then(|s| s.id())
            .expect("service id")
            .to_owned(),
    }
}

/// Cloud Map services `names` in a fresh namespace of `moto`.
async fn cloudmap_services(moto: &MotoServer, names: &[&str]) -> Vec<CloudMapFixture> {
    let client = aws_sdk_servicediscovery::Client::new(&moto.sdk_config().await);
    let namespace_id = cloudmap_fixture::create_namespace(&client, NAMESPACE).await;
    let mut out = Vec::new();
    for name in names {
        out.push(create_service(&client, &namespace_id, name).await);
    }
    out
}

/// Registers `upstream` as instance `id` of `service` (127.0.0.1 and its port).
async fn register(service: &CloudMapFixture, id: &str, upstream: &TaggedUpstream) {
    let port = upstream.port().to_string();
    service
        .register(
            id,
            &[
                ("AWS_INSTANCE_IPV4", "127.0.0.1"),
                ("AWS_INSTANCE_PORT", &port),
            ],
        )
        .await;
}

// ---------------------------------------------------------------- status ----

/// The endpoint addresses `/status` lists for `version`, sorted.
fn endpoints_of(status: &Value, version: &str) -> Vec<String> {
    let mut list: Vec<String> = version_status(status, version)["endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("no endpoints for {version}: {status}"))
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_owned())
        .collect();
    list.sort();
    list
}

fn version_status<'a>(status: &'a Value, version: &str) -> &'a Value {
    status["versions"]
        .as_array()
        .and_then(|l| l.iter().find(|v| v["name"] == version))
        .unwrap_or_else(|| panic!("no version {version} in /status: {status}"))
}

/// Waits until `/status` lists exactly `expected` (version -> addresses).
async fn wait_endpoints(gw: &GatewayProc, expected: &[(&str, Vec<String>)]) {
    let mut last = Value::Null;
    let ok = eventually(WAIT, async || {
        last = gw.status().await;
        expected.iter().all(|(v, want)| {
            let mut want = want.clone();
            want.sort();
            endpoints_of(&last, v) == want
        })
    })
    .await;
    assert!(
        ok,
        "endpoints never became {expected:?}: {last:#}\nlog:\n{}",
        gw.log_text()
    );
}

fn weights(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Asserts that `count` is `expected` give or take `slack`.
fn assert_near(counts: &BTreeMap<String, usize>, version: &str, expected: usize, slack: usize) {
    let got = counts.get(version).copied().unwrap_or(0);
    assert!(
        got.abs_diff(expected) <= slack,
        "{version}: {got} requests, expected {expected} ± {slack}: {counts:?}"
    );
}

/// v1 and v2 registered in Cloud Map (services app-v1 and app-v2) behind a
/// 90/10 gateway that is ready and has discovered both.
async fn discovered_split(moto: &MotoServer) -> (TaggedUpstream, TaggedUpstream, GatewayProc) {
    let v1 = TaggedUpstream::start("v1").await;
    let v2 = TaggedUpstream::start("v2").await;
    let services = cloudmap_services(moto, &["app-v1", "app-v2"]).await;
    register(&services[0], "i-v1", &v1).await;
    register(&services[1], "i-v2", &v2).await;
    let gw = GatewayProc::spawn(&config(
        &moto.endpoint_url(),
        &[
            ("v1", 90, cloudmap_source("app-v1")),
            ("v2", 10, cloudmap_source("app-v2")),
        ],
        "",
    ))
    .await;
    gw.wait_ready(WAIT).await;
    wait_endpoints(
        &gw,
        &[
            ("v1", vec![v1.addr.to_string()]),
            ("v2", vec![v2.addr.to_string()]),
        ],
    )
    .await;
    (v1, v2, gw)
}

// ----------------------------------------------------------------- tests ----

/// Versions whose endpoints come from Cloud Map: the gateway discovers them,
/// becomes ready and splits 90/10 between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_between_endpoints_discovered_in_cloud_map() {
    let moto = MotoServer::start();
    let (v1, v2, gw) = discovered_split(&moto).await;
    let status = gw.status().await;
    assert_eq!(
        version_status(&status, "v2")["discovery"]["source"],
        "cloudmap:canary.local/app-v2",
        "{status:#}"
    );

    let counts = split_counts(gw.addr, 1000).await;
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert_near(&counts, "v1", 900, 15);
    assert_near(&counts, "v2", 100, 15);
    assert_eq!(v1.hits() + v2.hits(), 1000);
}

/// The AWS endpoint given only by the standard `AWS_ENDPOINT_URL` variable
/// (no `[aws] endpoint_url`; every other test sets that): Cloud Map
/// discovery still goes to it, DiscoverInstances included (its `data-` host
/// prefix removed as with a configured URL), and requests reach the
/// discovered endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovers_through_the_aws_endpoint_url_environment_variable() {
    let moto = MotoServer::start();
    let v1 = TaggedUpstream::start("v1").await;
    let v2 = TaggedUpstream::start("v2").await;
    let services = cloudmap_services(&moto, &["env-v1", "env-v2"]).await;
    register(&services[0], "i-v1", &v1).await;
    register(&services[1], "i-v2", &v2).await;
    let text = gateway_config(
        &format!("token_env = \"{TOKEN_ENV}\"\n"),
        "",
        &[
            ("v1", 50, cloudmap_source("env-v1")),
            ("v2", 50, cloudmap_source("env-v2")),
        ],
    );
    assert!(!text.contains("endpoint_url"), "{text}");
    let gw =
        GatewayProc::spawn_with_env(&text, &[("AWS_ENDPOINT_URL", &moto.endpoint_url())]).await;
    gw.wait_ready(WAIT).await;
    wait_endpoints(
        &gw,
        &[
            ("v1", vec![v1.addr.to_string()]),
            ("v2", vec![v2.addr.to_string()]),
        ],
    )
    .await;

    let counts = split_counts(gw.addr, 200).await;
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert_near(&counts, "v1", 100, 30);
    assert_eq!(
        (v1.hits() + v2.hits(), v1.hits() > 0, v2.hits() > 0),
        (200, true, true)
    );
}

/// An instance registered while the gateway runs gets traffic; a deregistered
/// one stops getting it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_registrations_and_deregistrations() {
    let moto = MotoServer::start();
    let first = TaggedUpstream::start("first").await;
    let second = TaggedUpstream::start("second").await;
    let services = cloudmap_services(&moto, &["app-v1"]).await;
    let service = &services[0];
    register(service, "i-first", &first).await;

    let gw = GatewayProc::spawn(&config(
        &moto.endpoint_url(),
        &[("v1", 100, cloudmap_source("app-v1"))],
        "",
    ))
    .await;
    gw.wait_ready(WAIT).await;
    let counts = split_counts(gw.addr, 20).await;
    assert_eq!(counts.get("first"), Some(&20), "{counts:?}");

    // A second instance: it gets a share of the traffic.
    register(service, "i-second", &second).await;
    let ok = eventually(WAIT, async || {
        split_counts(gw.addr, 20).await;
        second.hits() > 0
    })
    .await;
    assert!(
        ok,
        "the new instance never got traffic: {:#}\nlog:\n{}",
        gw.status().await,
        gw.log_text()
    );
    assert!(first.hits() > 20, "both instances share the traffic");

    // The first one leaves: once discovery sees it, it gets nothing.
    service.deregister("i-first").await;
    let ok = eventually(WAIT, async || {
        let before = first.hits();
        let counts = split_counts(gw.addr, 50).await;
        first.hits() == before && counts.get("second") == Some(&50)
    })
    .await;
    assert!(
        ok,
        "the deregistered instance still gets traffic: {:#}",
        gw.status().await
    );
    assert_eq!(
        endpoints_of(&gw.status().await, "v1"),
        vec![second.addr.to_string()]
    );
}

/// Cloud Map going away after discovery: traffic keeps flowing to the last
/// known endpoints, the gateway stays ready, and the failure is visible in
/// /status (error, growing data age) and /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_going_away_keeps_traffic_flowing_and_the_gateway_ready() {
    let moto = MotoServer::start();
    let (v1, v2, gw) = discovered_split(&moto).await;
    let errors_before = metric_sum(&gw.metrics().await, "canary_discovery_errors_total");
    let status = gw.status().await;
    for v in ["v1", "v2"] {
        assert_eq!(
            version_status(&status, v)["discovery"]["last_error"],
            Value::Null,
            "{status:#}"
        );
    }

    drop(moto);
    let killed = Instant::now();

    // Traffic and readiness while the failures show up; at least 3 s.
    let mut first_ages: Option<Vec<f64>> = None;
    let mut seen = false;
    let mut last = Value::Null;
    let mut served = 0;
    while !(seen && killed.elapsed() >= Duration::from_secs(3)) {
        assert!(
            killed.elapsed() < Duration::from_secs(40),
            "the discovery failures never showed (or the age never grew): {last:#}\nlog:\n{}",
            gw.log_text()
        );
        let counts = split_counts(gw.addr, 20).await;
        served += 20;
        assert!(counts.keys().all(|k| k == "v1" || k == "v2"), "{counts:?}");
        let ready = gw.readyz().await;
        assert_eq!(ready.status, 200, "not ready without AWS: {}", ready.text());

        last = gw.status().await;
        let failing = ["v1", "v2"].iter().all(|v| {
            let d = &version_status(&last, v)["discovery"];
            d["last_error"].as_str().is_some_and(|e| !e.is_empty())
                && d["consecutive_errors"].as_u64() >= Some(1)
        });
        let ages: Vec<f64> = ["v1", "v2"]
            .iter()
            .map(|v| {
                version_status(&last, v)["discovery"]["age_seconds"]
                    .as_f64()
                    .unwrap_or_else(|| panic!("no age for {v}: {last:#}"))
            })
            .collect();
        if failing {
            match &first_ages {
                None => first_ages = Some(ages),
                Some(first) => {
                    seen = ages.iter().zip(first).all(|(now, then)| *now >= then + 1.0);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served >= 60);
    // The endpoints are the last known ones, the split unchanged.
    assert_eq!(endpoints_of(&last, "v1"), vec![v1.addr.to_string()]);
    assert_eq!(endpoints_of(&last, "v2"), vec![v2.addr.to_string()]);
    let counts = split_counts(gw.addr, 200).await;
    assert_near(&counts, "v1", 180, 6);
    assert_near(&counts, "v2", 20, 6);

    let errors_after = metric_sum(&gw.metrics().await, "canary_discovery_errors_total");
    assert!(
        errors_after >= errors_before + 2.0,
        "canary_discovery_errors_total went from {errors_before} to {errors_after}"
    );
    let metrics = gw.metrics().await;
    for v in ["v1", "v2"] {
        let age = metrics
            .lines()
            .find(|l| {
                l.starts_with("canary_discovery_age_seconds{")
                    && l.contains(&format!("version=\"{v}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        assert!(
            age.is_some_and(|a| a >= 1.0),
            "canary_discovery_age_seconds for {v}: {age:?}"
        );
    }
}

/// While Cloud Map answers, the discovered data is fresh: a revision check
/// that finds nothing new confirms the endpoints, so the age stays near the
/// 1 s poll period (not the 10 s period of full fetches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_data_age_stays_fresh_while_cloud_map_answers() {
    let moto = MotoServer::start();
    let v1 = TaggedUpstream::start("v1").await;
    let services = cloudmap_services(&moto, &["app-v1"]).await;
    register(&services[0], "i-v1", &v1).await;
    let gw = GatewayProc::spawn(&config(
        &moto.endpoint_url(),
        &[("v1", 100, cloudmap_source("app-v1"))],
        "",
    ))
    .await;
    gw.wait_ready(WAIT).await;
    // Longer than the 10 s (± 20%) between full fetches.
    let until = Instant::now() + Duration::from_secs(13);
    let mut oldest = 0.0_f64;
    while Instant::now() < until {
        let status = gw.status().await;
        let age = version_status(&status, "v1")["discovery"]["age_seconds"]
            .as_f64()
            .unwrap_or_else(|| panic!("no age: {status:#}"));
        oldest = oldest.max(age);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        oldest < 4.0,
        "the data age reached {oldest} s while Cloud Map answered"
    );
}

/// Three gateways share the Cloud Map store: a change on one is applied by
/// all; a fourth started later joins with the fleet's weights.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_shares_weight_decisions_through_cloud_map() {
    let moto = MotoServer::start();
    let v1 = TaggedUpstream::start("v1").await;
    let v2 = TaggedUpstream::start("v2").await;
    let services = cloudmap_services(&moto, &["canary-state"]).await;
    let store = fleet_store(&services[0].service_id);
    let text = |w1: u32, w2: u32| {
        config(
            &moto.endpoint_url(),
            &[
                ("v1", w1, static_source(&v1)),
                ("v2", w2, static_source(&v2)),
            ],
            &store,
        )
    };

    let fleet = [
        GatewayProc::spawn(&text(90, 10)).await,
        GatewayProc::spawn(&text(90, 10)).await,
        GatewayProc::spawn(&text(90, 10)).await,
    ];
    for gw in &fleet {
        gw.wait_ready(WAIT).await;
        assert_eq!(
            weights_of(&gw.weights().await),
            weights(&[("v1", 90), ("v2", 10)])
        );
    }

    let reply = fleet[1].put_weights(&[("v1", 75), ("v2", 25)]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let decided = reply.json();
    let generation = decided["generation"].as_u64().unwrap();
    assert!(generation >= 1, "{decided}");
    let want = weights(&[("v1", 75), ("v2", 25)]);

    let mut views = Vec::new();
    let ok = eventually(WAIT, async || {
        views.clear();
        for gw in &fleet {
            views.push(gw.weights().await);
        }
        views
            .iter()
            .all(|w| weights_of(w) == want && w["generation"] == generation)
    })
    .await;
    assert!(
        ok,
        "the fleet never agreed on generation {generation}: {views:#?}"
    );
    for gw in &fleet {
        assert_eq!(gw.status().await["store"]["kind"], "cloudmap");
    }
    // Applied to the data path, not only shown.
    let counts = split_counts(fleet[2].addr, 400).await;
    assert_near(&counts, "v1", 300, 8);
    assert_near(&counts, "v2", 100, 8);

    // A replica started later, from a config file with other weights.
    let late = GatewayProc::spawn(&text(50, 50)).await;
    late.wait_ready(WAIT).await;
    let view = late.weights().await;
    assert_eq!(weights_of(&view), want, "{view}");
    assert_eq!(view["generation"], generation, "{view}");
    let counts = split_counts(late.addr, 400).await;
    assert_near(&counts, "v1", 300, 8);
    assert_near(&counts, "v2", 100, 8);
}

/// With AWS's latency (150 ms a call here; moto answers in a few ms), a
/// rollback's write to the Cloud Map store (a read, the write, read-backs
/// until 0.5 s after the first sighting: over 1 s) is waited for: the
/// answer says the store has it, not `rollback_pending` with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_waits_for_a_cloud_map_store_as_slow_as_aws() {
    use canary_gateway::aws::cloudmap_store::CloudMapStore;
    use canary_gateway::store::Store;

    let moto = MotoServer::start();
    let v1 = TaggedUpstream::start("v1").await;
    let v2 = TaggedUpstream::start("v2").await;
    let services = cloudmap_services(&moto, &["canary-state"]).await;
    let moto_addr = format!("127.0.0.1:{}", moto.port()).parse().unwrap();
    let slow = fault_proxy::FaultProxy::latency(moto_addr, Duration::from_millis(150)).await;
    let gw = GatewayProc::spawn(&config(
        &slow.endpoint_url(),
        &[
            ("v1", 90, static_source(&v1)),
            ("v2", 10, static_source(&v2)),
        ],
        &fleet_store(&services[0].service_id),
    ))
    .await;
    gw.wait_ready(WAIT).await;
    let put = gw.put_weights(&[("v1", 50), ("v2", 50)]).await;
    assert_eq!(put.status, 200, "{}", put.text());

    let started = Instant::now();
    let rolled = admin(gw.admin, "POST", "/rollback", "").await;
    let took = started.elapsed();
    assert_eq!(rolled.status, 200, "{}", rolled.text());
    let answer = rolled.json();
    assert_eq!(
        answer["rollback_pending"], false,
        "after {took:?}: {answer:#}"
    );
    assert!(answer.get("warning").is_none(), "{answer:#}");
    assert_eq!(weights_of(&answer), weights(&[("v1", 100), ("v2", 0)]));
    // The store has it: a fresh read of the service's attribute.
    let stored = CloudMapStore::new(&moto.sdk_config().await, services[0].service_id.clone())
        .load()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.generation, answer["generation"].as_u64().unwrap());
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_sum(&metrics, "canary_store_rollbacks_deferred_total"),
        0.0
    );
}

/// Cloud Map (the store) unreachable at start: the task no longer crash-loops;
/// after `boot_timeout` it serves the config file's weights marked degraded,
/// and adopts the fleet's decision once Cloud Map answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_degraded_while_the_cloud_map_store_is_unreachable() {
    use canary_gateway::aws::cloudmap_store::CloudMapStore;
    use canary_gateway::store::{Store, WeightsDoc};

    let moto = MotoServer::start();
    let v1 = TaggedUpstream::start("v1").await;
    let v2 = TaggedUpstream::start("v2").await;
    let services = cloudmap_services(&moto, &["canary-state"]).await;
    let service_id = services[0].service_id.clone();
    let fleet_doc = WeightsDoc {
        stable: "v1".into(),
        weights: BTreeMap::from([("v1".to_string(), 60), ("v2".to_string(), 40)]),
        generation: 9,
        updated_at_ms: 1_760_000_000_000,
        source: "admin".into(),
        writer: "another-task".into(),
        config_weights: None,
        config_stable: None,
        refused_config: None,
        rollout: None,
    };
    CloudMapStore::new(&moto.sdk_config().await, service_id.clone())
        .save(&fleet_doc, None)
        .await
        .unwrap();
    let moto_addr = format!("127.0.0.1:{}", moto.port()).parse().unwrap();
    let relay = Relay::start_down(moto_addr).await;
    let gw = GatewayProc::spawn(&config(
        &relay.endpoint_url(),
        &[
            ("v1", 90, static_source(&v1)),
            ("v2", 10, static_source(&v2)),
        ],
        &format!("{}boot_timeout = \"1s\"\n", fleet_store(&service_id)),
    ))
    .await;
    gw.wait_ready(WAIT).await;
    assert_eq!(
        weights_of(&gw.weights().await),
        weights(&[("v1", 90), ("v2", 10)])
    );
    let status = gw.status().await;
    assert_eq!(status["store"]["degraded"], true, "{status:#}");

    relay.set_up();
    let ok = eventually(WAIT, async || {
        let view = gw.weights().await;
        weights_of(&view) == weights(&[("v1", 60), ("v2", 40)]) && view["generation"] == 9
    })
    .await;
    assert!(ok, "never adopted the store's decision:\n{}", gw.log_text());
    assert_eq!(gw.status().await["store"]["degraded"], false);
}

/// With the store down a change is refused (503, JSON error) and nothing
/// changes: the old weights stay in force and traffic keeps flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_refused_while_the_store_is_down() {
    let moto = MotoServer::start();
    let v1 = TaggedUpstream::start("v1").await;
    let v2 = TaggedUpstream::start("v2").await;
    let services = cloudmap_services(&moto, &["canary-state"]).await;
    let gw = GatewayProc::spawn(&config(
        &moto.endpoint_url(),
        &[
            ("v1", 90, static_source(&v1)),
            ("v2", 10, static_source(&v2)),
        ],
        &fleet_store(&services[0].service_id),
    ))
    .await;
    gw.wait_ready(WAIT).await;
    let reply = gw.put_weights(&[("v1", 80), ("v2", 20)]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let before = gw.weights().await;
    assert_eq!(weights_of(&before), weights(&[("v1", 80), ("v2", 20)]));

    drop(services);
    drop(moto);

    let started = Instant::now();
    let reply = gw.put_weights(&[("v1", 50), ("v2", 50)]).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    let error = reply.json();
    let message = error["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {error}"));
    assert!(message.contains("store"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the refusal took {:?}",
        started.elapsed()
    );

    let after = gw.weights().await;
    assert_eq!(weights_of(&after), weights(&[("v1", 80), ("v2", 20)]));
    assert_eq!(after["generation"], before["generation"], "{after}");
    let status = gw.status().await;
    assert!(
        status["store"]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{status:#}"
    );
    // A short message naming the connection's error, not the SDK's
    // `Debug` form of the whole failure.
    let last_error = status["store"]["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.contains("Connection refused")
            && !last_error.contains("DispatchFailure")
            && last_error.len() < 300,
        "{last_error}"
    );
    // The operator is told (`ctl status` prints only the warnings): the
    // store cannot be read, changes answer 503, the decision serves.
    assert!(
        status["warnings"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| {
                w.as_str().is_some_and(|w| {
                    w.starts_with("the weight store cannot be read (")
                        && w.contains("answer 503 until it can")
                        && w.contains(&format!(
                            "the running decision (generation {}) keeps serving",
                            before["generation"]
                        ))
                })
            })),
        "{status:#}"
    );
    assert_eq!(gw.readyz().await.status, 200);
    let counts = split_counts(gw.addr, 500).await;
    assert_near(&counts, "v1", 400, 8);
    assert_near(&counts, "v2", 100, 8);
}

// -------------------------------------------------------------- app mesh ----

use mesh_fixture::{MESH, ROUTE, ROUTER};

/// The route's weighted targets by virtual node.
async fn route_weights(client: &aws_sdk_appmesh::Client) -> BTreeMap<String, i32> {
    mesh_fixture::route_weights(client)
        .await
        .into_iter()
        .collect()
}

fn appmesh_table(route: &str) -> String {
    format!(
        "[appmesh]\nmesh = \"{MESH}\"\nvirtual_router = \"{ROUTER}\"\nroute = \"{route}\"\n\
         virtual_nodes = {{ v1 = \"web-v1\", v2 = \"web-v2\" }}\n"
    )
}

/// A moto server holding a mesh with nodes web-v1 and web-v2 and a route
/// all to web-v1, and an App Mesh client for it.
async fn mesh_on_moto() -> (MotoServer, aws_sdk_appmesh::Client) {
    let moto = MotoServer::start();
    let client = aws_sdk_appmesh::Client::new(&moto.sdk_config().await);
    mesh_fixture::create_mesh(&client, &["web-v1", "web-v2"], &[("web-v1", 100)]).await;
    (moto, client)
}

/// Upstreams v1 and v2 and a ready gateway splitting 90/10 between them
/// (static endpoints), AWS at `aws_url`, with the `extra` tables.
async fn static_split(aws_url: &str, extra: &str) -> (TaggedUpstream, TaggedUpstream, GatewayProc) {
    let v1 = TaggedUpstream::start("v1").await;
    let v2 = TaggedUpstream::start("v2").await;
    let gw = GatewayProc::spawn(&config(
        aws_url,
        &[
            ("v1", 90, static_source(&v1)),
            ("v2", 10, static_source(&v2)),
        ],
        extra,
    ))
    .await;
    gw.wait_ready(WAIT).await;
    (v1, v2, gw)
}

/// Every weight decision is mirrored onto the App Mesh route, down to a
/// one-in-a-million canary (1%, App Mesh's smallest non-zero share).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_changes_are_mirrored_to_the_app_mesh_route() {
    let (moto, client) = mesh_on_moto().await;
    let (_v1, _v2, gw) = static_split(&moto.endpoint_url(), &appmesh_table(ROUTE)).await;

    // The start syncs the config's weights.
    let expected = BTreeMap::from([("web-v1".to_string(), 90), ("web-v2".to_string(), 10)]);
    let mut last = BTreeMap::new();
    let ok = eventually(WAIT, async || {
        last = route_weights(&client).await;
        last == expected
    })
    .await;
    assert!(
        ok,
        "the route never became 90/10: {last:?}\nlog:\n{}",
        gw.log_text()
    );

    let reply = gw.put_weights(&[("v1", 999_999), ("v2", 1)]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let expected = BTreeMap::from([("web-v1".to_string(), 99), ("web-v2".to_string(), 1)]);
    let ok = eventually(WAIT, async || {
        last = route_weights(&client).await;
        last == expected
    })
    .await;
    assert!(
        ok,
        "the route never became 99/1: {last:?}\nlog:\n{}",
        gw.log_text()
    );

    let mut status = Value::Null;
    let ok = eventually(WAIT, async || {
        status = gw.status().await;
        status["appmesh"]["synced_weights"] == json!({"v1": 99, "v2": 1})
    })
    .await;
    assert!(ok, "/status never showed the sync: {status:#}");
    let appmesh = &status["appmesh"];
    assert_eq!(appmesh["route"], format!("{MESH}/{ROUTER}/{ROUTE}"));
    assert_eq!(appmesh["last_error"], Value::Null, "{appmesh}");
    assert!(appmesh["last_ok_ms"].as_u64().is_some(), "{appmesh}");
}

/// App Mesh failing (the route does not exist) is reported, and never blocks
/// or reverts the gateway's own weights.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_app_mesh_sync_never_blocks_or_reverts_the_weights() {
    let (moto, client) = mesh_on_moto().await;
    let (_v1, _v2, gw) = static_split(&moto.endpoint_url(), &appmesh_table("no-such-route")).await;

    let started = Instant::now();
    let reply = gw.put_weights(&[("v1", 50), ("v2", 50)]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "PUT /weights waited for App Mesh: {:?}",
        started.elapsed()
    );
    let generation = reply.json()["generation"].as_u64().unwrap();

    // The failed sync of this decision (the config file's, at start, may
    // have failed before it) shows in `last_error` and in the warnings
    // (`ctl status` prints only those).
    let warned = |status: &Value| {
        let last_error = status["appmesh"]["last_error"].as_str().unwrap_or_default();
        status["warnings"].as_array().is_some_and(|w| {
            w.iter().any(|w| {
                w.as_str().is_some_and(|w| {
                    w.starts_with(&format!(
                        "the App Mesh route {MESH}/{ROUTER}/no-such-route could not be synced to generation {generation} ("
                    )) && w.contains(last_error)
                })
            })
        })
    };
    let mut status = Value::Null;
    let ok = eventually(WAIT, async || {
        status = gw.status().await;
        status["appmesh"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("NotFound"))
            && warned(&status)
    })
    .await;
    assert!(ok, "/status never showed the failed sync: {status:#}");
    // The service's error code, message and status, not the SDK's `Debug`
    // form with the raw response (several KB).
    let last_error = status["appmesh"]["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.contains(" (HTTP 4")
            && !last_error.contains("ServiceError")
            && last_error.len() < 300,
        "{last_error}"
    );
    assert_eq!(
        status["appmesh"]["synced_weights"],
        Value::Null,
        "{status:#}"
    );

    // After the failure: the decision stands, on the admin API and in traffic.
    let view = gw.weights().await;
    assert_eq!(weights_of(&view), weights(&[("v1", 50), ("v2", 50)]));
    assert_eq!(view["generation"], generation);
    let counts = split_counts(gw.addr, 200).await;
    assert_near(&counts, "v1", 100, 6);
    assert_near(&counts, "v2", 100, 6);
    // The existing route was not touched either.
    assert_eq!(
        route_weights(&client).await,
        BTreeMap::from([("web-v1".to_string(), 100)])
    );
}

/// App Mesh hanging (its endpoint accepts connections and never answers):
/// weight changes apply at once all the same, one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_app_mesh_never_delays_weight_changes() {
    let hung = BlackHole::start().await;
    let (_v1, _v2, gw) = static_split(&hung.endpoint_url(), &appmesh_table(ROUTE)).await;

    for (w1, w2) in [(50, 50), (70, 30), (0, 100)] {
        let started = Instant::now();
        let reply = gw.put_weights(&[("v1", w1), ("v2", w2)]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "PUT /weights waited for App Mesh: {:?}",
            started.elapsed()
        );
        let view = gw.weights().await;
        assert_eq!(
            weights_of(&view),
            weights(&[("v1", u64::from(w1)), ("v2", u64::from(w2))])
        );
    }
    let counts = split_counts(gw.addr, 50).await;
    assert_eq!(counts.get("v2"), Some(&50), "{counts:?}");
    let status = gw.status().await;
    assert_eq!(
        status["appmesh"]["synced_weights"],
        Value::Null,
        "{status:#}"
    );
}

/// Cloud Map unreachable at start: the gateway starts all the same and is
/// ready once discovery was asked (readiness never depends on upstreams, so an
/// empty stable version cannot take the whole fleet out of the target group);
/// /status, a metric and the log say loudly that the stable version is empty,
/// and its requests get 503 until discovery succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_stable_version_is_loud_but_keeps_the_gateway_ready() {
    let moto = MotoServer::start();
    let v1 = TaggedUpstream::start("v1").await;
    let v2 = TaggedUpstream::start("v2").await;
    let services = cloudmap_services(&moto, &["app-v1", "app-v2"]).await;
    register(&services[0], "i-v1", &v1).await;
    register(&services[1], "i-v2", &v2).await;
    let moto_addr = format!("127.0.0.1:{}", moto.port()).parse().unwrap();
    let relay = Relay::start_down(moto_addr).await;

    let gw = GatewayProc::spawn(&config(
        &relay.endpoint_url(),
        &[
            ("v1", 90, cloudmap_source("app-v1")),
            ("v2", 10, cloudmap_source("app-v2")),
        ],
        "",
    ))
    .await;
    gw.wait_ready(WAIT).await;
    let envoy = gateway_proc::admin(gw.admin, "GET", "/ready", "").await;
    assert_eq!(envoy.status, 200);
    assert_eq!(envoy.text(), "LIVE\n");
    let status = gw.status().await;
    assert_eq!(status["ready"], true, "{status:#}");
    let warnings = status["warnings"].to_string();
    assert!(
        warnings.contains("stable version `v1` has no endpoints")
            && warnings.contains("cloudmap:canary.local/app-v1"),
        "{status:#}"
    );
    assert!(
        version_status(&status, "v1")["discovery"]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{status:#}"
    );
    assert_eq!(
        metric_sum(&gw.metrics().await, "canary_stable_version_empty"),
        1.0
    );
    let mut conn = gateway_proc::Conn::connect(gw.addr).await;
    for _ in 0..5 {
        assert_eq!(conn.get("/").await.status, 503);
    }
    assert!(
        gw.log_text().contains("has no endpoints"),
        "{}",
        gw.log_text()
    );

    // Cloud Map comes back: discovery succeeds, the stable version fills.
    relay.set_up();
    wait_endpoints(
        &gw,
        &[
            ("v1", vec![v1.addr.to_string()]),
            ("v2", vec![v2.addr.to_string()]),
        ],
    )
    .await;
    let counts = split_counts(gw.addr, 100).await;
    assert_near(&counts, "v1", 90, 3);
    assert_near(&counts, "v2", 10, 3);
}

// ------------------------------------------------- store polling vs change ----

/// A shared store whose loads are slow: a load returns the document as it was
/// when the load began (a read in flight while another replica writes).
struct SlowStore {
    doc: std::sync::Mutex<Option<canary_gateway::store::WeightsDoc>>,
    load_time: Duration,
}

impl canary_gateway::store::Store for SlowStore {
    fn load(
        &self,
    ) -> canary_gateway::future::BoxFuture<
        '_,
        Result<Option<canary_gateway::store::WeightsDoc>, canary_gateway::store::StoreError>,
    > {
        let seen = self.doc.lock().unwrap().clone();
        Box::pin(async move {
            tokio::time::sleep(self.load_time).await;
            Ok(seen)
        })
    }

    fn save<'a>(
        &'a self,
        doc: &'a canary_gateway::store::WeightsDoc,
        _read_at: Option<u64>,
    ) -> canary_gateway::future::BoxFuture<'a, Result<(), canary_gateway::store::StoreError>> {
        *self.doc.lock().unwrap() = Some(doc.clone());
        Box::pin(async { Ok(()) })
    }

    fn shared(&self) -> bool {
        true
    }
}

/// A store poll that was in flight while this replica saved its own change
/// must not put the old weights back once the change applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_poll_in_flight_never_reverts_a_change() {
    use canary_gateway::config::Config;
    use canary_gateway::control::Control;
    use std::sync::Arc;

    let text = "[listener]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
                [split]\nstable = \"v1\"\n\
                [[versions]]\nname = \"v1\"\nweight = 90\nendpoints = [\"127.0.0.1:1\"]\n\
                [[versions]]\nname = \"v2\"\nweight = 10\nendpoints = [\"127.0.0.1:2\"]\n";
    let config = Config::parse(text, "test").unwrap();
    let store = Arc::new(SlowStore {
        doc: std::sync::Mutex::new(None),
        load_time: Duration::from_millis(300),
    });
    let control = Control::start(config, store, "cloudmap").await.unwrap();
    let poller = {
        let control = control.clone();
        tokio::spawn(async move {
            loop {
                let _ = control.sync_from_store().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    for canary in 11..16 {
        let want = weights(&[("v1", 100 - canary), ("v2", canary)]);
        control
            .set_weights(
                BTreeMap::from([
                    ("v1".to_string(), (100 - canary) as u32),
                    ("v2".to_string(), canary as u32),
                ]),
                "admin",
            )
            .await
            .unwrap();
        let until = Instant::now() + Duration::from_millis(800);
        while Instant::now() < until {
            let now = control.weights();
            let now: BTreeMap<String, u64> = now
                .weights
                .iter()
                .map(|(k, v)| (k.clone(), u64::from(*v)))
                .collect();
            assert_eq!(now, want, "a store poll reverted the change");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    poller.abort();
}

/// A ready gateway with v1 (weight 100) at `v1` and v2 (weight 0) from
/// Cloud Map service `app-v2` of `moto`.
async fn v1_static_v2_from_cloud_map(moto: &MotoServer, v1: &TaggedUpstream) -> GatewayProc {
    let gw = GatewayProc::spawn(&config(
        &moto.endpoint_url(),
        &[
            ("v1", 100, static_source(v1)),
            ("v2", 0, cloudmap_source("app-v2")),
        ],
        "",
    ))
    .await;
    gw.wait_ready(WAIT).await;
    gw
}

/// `ctl weights set` giving weight to a version whose Cloud Map service has
/// no instances yet: applied (exit 0), and the command prints the answer's
/// warning that its share of the requests gets 503 until it has some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_weights_set_warns_about_weight_for_a_version_without_endpoints() {
    let moto = MotoServer::start();
    let v1 = TaggedUpstream::start("v1").await;
    let _services = cloudmap_services(&moto, &["app-v2"]).await;
    let gw = v1_static_v2_from_cloud_map(&moto, &v1).await;
    let out = tokio::process::Command::new(gateway_proc::BIN)
        .args(["ctl", "weights", "set", "v1=50", "v2=50"])
        .env("CANARY_ADMIN_URL", format!("http://{}", gw.admin))
        .env("CANARY_ADMIN_TOKEN", gateway_proc::TOKEN)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "\nwarning: `v2` has weight 50 but no endpoints (cloudmap:{NAMESPACE}/app-v2): its share of the requests gets 503 until it has some"
        )),
        "{stdout}"
    );
    assert_eq!(weights_of(&gw.weights().await)["v2"], 50);
}

/// A version naming a Cloud Map service that does not exist (a typo, or a
/// service not created yet) is said as such: a `/status` warning naming the
/// version and the source, errors of kind `not_found`; both clear once the
/// service exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_map_service_that_does_not_exist_is_named_as_such() {
    let moto = MotoServer::start();
    let v1 = TaggedUpstream::start("v1").await;
    let v2 = TaggedUpstream::start("v2").await;
    let client = aws_sdk_servicediscovery::Client::new(&moto.sdk_config().await);
    let namespace_id = cloudmap_fixture::create_namespace(&client, NAMESPACE).await;
    let gw = v1_static_v2_from_cloud_map(&moto, &v1).await;
    let said = format!(
        "Cloud Map has no such namespace or service for `v2` (cloudmap:{NAMESPACE}/app-v2): check its `cloudmap` in the config (a typo, or a service not created yet)"
    );
    let warned = async || {
        let warnings = gw.status().await["warnings"].clone();
        warnings
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w.as_str() == Some(said.as_str())))
    };
    let ok = eventually(WAIT, warned).await;
    assert!(ok, "{:#}\n{}", gw.status().await, gw.log_text());
    let not_found = metric_value(
        &gw.metrics().await,
        "canary_discovery_errors_total",
        &[("version", "v2"), ("kind", "not_found")],
    );
    assert!(not_found >= 1.0, "{}", gw.metrics().await);

    let service = create_service(&client, &namespace_id, "app-v2").await;
    register(&service, "v2-a", &v2).await;
    wait_endpoints(&gw, &[("v2", vec![v2.addr.to_string()])]).await;
    assert!(!warned().await, "{:#}", gw.status().await);
}
