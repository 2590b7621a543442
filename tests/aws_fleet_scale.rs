//! The scale simulation (docs/fleet.md): N gateway processes (default 20) on one
//! DynamoDB store in moto, each discovering two versions in Cloud Map, all on
//! loopback behind a counting proxy. Measures the AWS calls per second the fleet
//! makes (counted at the emulator, by operation) and, after a change made on one
//! task, the time until every task runs its generation and until one task's
//! `/status` `fleet` shows all of them converged.
//!
//! Not part of `cargo test` (ignored; it starts 20 processes). Run it at a quiet
//! moment, bounded to about a minute:
//!
//! ```sh
//! CANARY_MOTO_PYTHON=... cargo test --test aws_fleet_scale -- --ignored --nocapture
//! ```
//!
//! `CANARY_SIM_TASKS` (default 20) and `CANARY_SIM_POLL` (the store's
//! poll_interval, default "2s") change the fleet.

#[path = "support/cloudmap_fixture.rs"]
mod cloudmap_fixture;
#[path = "support/dynamodb_fixture.rs"]
mod dynamodb_fixture;
#[path = "support/fault_proxy.rs"]
mod fault_proxy;
#[path = "support/gateway_proc.rs"]
mod gateway_proc;
#[path = "support/moto.rs"]
mod moto;

use std::time::{Duration, Instant};

use cloudmap_fixture::CloudMapFixture;
use fault_proxy::FaultProxy;
use gateway_proc::{GatewayProc, TOKEN_ENV, TaggedUpstream, gateway_config};
use moto::MotoServer;

/// How long the steady state is counted.
const WINDOW: Duration = Duration::from_secs(10);
/// Bound of the wait for convergence.
const CONVERGE_LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts 20 gateway processes: run by hand (see the module doc)"]
async fn twenty_gateways_on_one_store() {
    let tasks: usize = std::env::var("CANARY_SIM_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let poll = std::env::var("CANARY_SIM_POLL").unwrap_or_else(|_| "2s".into());
    let moto = MotoServer::start();
    let sdk = moto.sdk_config().await;

    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    dynamodb_fixture::create_table(&dynamodb, "canary-gateway").await;
    let v1 = TaggedUpstream::start("v1").await;
    let v2 = TaggedUpstream::start("v2").await;
    let discovery = aws_sdk_servicediscovery::Client::new(&sdk);
    for (namespace, upstream) in [("sim-v1.local", &v1), ("sim-v2.local", &v2)] {
        let fx = CloudMapFixture::create(discovery.clone(), namespace, "app").await;
        let port = upstream.port().to_string();
        fx.register(
            "i-1",
            &[
                ("AWS_INSTANCE_IPV4", "127.0.0.1"),
                ("AWS_INSTANCE_PORT", &port),
            ],
        )
        .await;
    }

    // Counts every call on its way to moto (no fault is injected).
    let upstream = format!("127.0.0.1:{}", moto.port()).parse().unwrap();
    let counter = FaultProxy::outage(upstream, 0).await;
    let cloudmap = |namespace: &str| {
        format!("cloudmap = {{ namespace = \"{namespace}\", service = \"app\" }}")
    };
    let mut config = gateway_config(
        &format!("token_env = \"{TOKEN_ENV}\"\n"),
        &format!(
            "\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"",
            counter.endpoint_url()
        ),
        &[
            ("v1", 90, cloudmap("sim-v1.local")),
            ("v2", 10, cloudmap("sim-v2.local")),
        ],
    );
    config.push_str(&format!(
        "\n[store]\nkind = \"dynamodb\"\ntable = \"canary-gateway\"\nkey = \"sim\"\n\
         poll_interval = \"{poll}\"\n"
    ));

    let started = Instant::now();
    let mut fleet = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        fleet.push(GatewayProc::spawn(&config).await);
    }
    for gw in &fleet {
        gw.wait_ready(Duration::from_secs(30)).await;
    }
    println!(
        "{tasks} gateways ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Steady state: calls per second by operation.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = counter.by_target();
    tokio::time::sleep(WINDOW).await;
    let after = counter.by_target();
    let mut total = 0.0;
    println!(
        "steady state over {} s (store poll_interval {poll}):",
        WINDOW.as_secs()
    );
    for (operation, n) in &after {
        let rate = (n - before.get(operation).copied().unwrap_or(0)) as f64 / WINDOW.as_secs_f64();
        total += rate;
        println!("  {operation}: {rate:.1}/s");
    }
    println!("  all: {total:.1}/s");

    // A change on one task: time until all report its generation.
    let changed = Instant::now();
    let reply = fleet[tasks / 2]
        .put_weights(&[("v1", 70), ("v2", 30)])
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let generation = reply.json()["generation"].as_u64().unwrap();
    let mut last_seen = vec![false; tasks];
    while last_seen.iter().any(|seen| !seen) {
        assert!(
            changed.elapsed() < CONVERGE_LIMIT,
            "not converged after {CONVERGE_LIMIT:?}: {last_seen:?}"
        );
        for (i, gw) in fleet.iter().enumerate() {
            if !last_seen[i] {
                last_seen[i] = gw.weights().await["generation"] == generation;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "a change on one task reached all {tasks} in {:.2} s",
        changed.elapsed().as_secs_f64()
    );
    // What `ctl status --wait-converged` waits for: one task's /status lists
    // every task at that generation, converged.
    loop {
        assert!(
            changed.elapsed() < CONVERGE_LIMIT,
            "/status fleet never converged: {:#}",
            fleet[0].status().await["fleet"]
        );
        let status = fleet[0].status().await;
        let listed = status["fleet"]["tasks"].as_array().map_or(0, |t| {
            t.iter()
                .filter(|t| t["generation"] == generation && t["stale"] == false)
                .count()
        });
        if listed == tasks && status["fleet"]["converged"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "/status fleet on one task showed all {tasks} converged after {:.2} s",
        changed.elapsed().as_secs_f64()
    );
}
