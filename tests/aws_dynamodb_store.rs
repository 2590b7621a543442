//! The DynamoDB fleet store against moto: the conditional write (two writers
//! racing, exactly one wins), and gateway processes sharing one table: three
//! tasks converging on a change made on each, a lost race answered 409, a
//! change on a task that has not polled the last one building on it, a
//! start while the store is down, a rollback while the store is down; each
//! task's generation report (`GET /status` `fleet`).

#[path = "support/dynamodb_fixture.rs"]
mod dynamodb_fixture;
#[path = "support/fault_proxy.rs"]
mod fault_proxy;
#[path = "support/gateway_proc.rs"]
mod gateway_proc;
#[path = "support/mesh_fixture.rs"]
mod mesh_fixture;
#[path = "support/moto.rs"]
mod moto;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use canary_gateway::aws::dynamodb_store::DynamoDbStore;
use canary_gateway::store::{Store, StoreError, TaskReport, WeightsDoc, unix_ms};
use fault_proxy::FaultProxy;
use gateway_proc::{
    GatewayProc, TOKEN_ENV, TaggedUpstream, admin, endpoints_line, eventually, gateway_config,
    metric_sum, weights_of,
};
use moto::MotoServer;
use serde_json::Value;

const TABLE: &str = "canary-gateway";
const KEY: &str = "svc1";
/// Bound of every wait for something the gateways do in the background.
const WAIT: Duration = Duration::from_secs(20);

/// moto with the table, and a store on it.
async fn table(moto: &MotoServer) -> DynamoDbStore {
    let client = aws_sdk_dynamodb::Client::new(&moto.sdk_config().await);
    dynamodb_fixture::create_table(&client, TABLE).await;
    DynamoDbStore::from_client(client, TABLE, KEY)
}

fn doc(generation: u64, writer: &str, v2: u32) -> WeightsDoc {
    WeightsDoc {
        stable: "v1".into(),
        weights: BTreeMap::from([("v1".to_string(), 100 - v2), ("v2".to_string(), v2)]),
        generation,
        updated_at_ms: 1_760_000_000_000 + generation,
        source: "admin".into(),
        writer: writer.into(),
        config_weights: None,
        config_stable: None,
        refused_config: None,
        rollout: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_let_exactly_one_of_two_racing_writers_win() {
    let moto = MotoServer::start();
    let store = Arc::new(table(&moto).await);
    assert_eq!(store.load().await.unwrap(), None);
    store.save(&doc(1, "a", 10), None).await.unwrap();

    // Ten rounds: two writers both read generation g and write g + 1.
    for round in 0..10u64 {
        let read_at = store.load().await.unwrap().unwrap().generation;
        let (a, b) = (store.clone(), store.clone());
        let next_a = doc(read_at + 1, "a", round as u32);
        let next_b = doc(read_at + 1, "b", 50 + round as u32);
        let (ra, rb) = tokio::join!(
            tokio::spawn(async move { a.save(&next_a, Some(read_at)).await }),
            tokio::spawn(async move { b.save(&next_b, Some(read_at)).await }),
        );
        let results = [ra.unwrap(), rb.unwrap()];
        let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: {results:?}");
        let stored = store.load().await.unwrap().unwrap();
        assert_eq!(stored.generation, read_at + 1);
        let lost = results.iter().find(|r| r.is_err()).unwrap();
        match lost {
            // The loser is told what won.
            Err(StoreError::Conflict(Some(current))) => assert_eq!(**current, stored),
            other => panic!("round {round}: the loser got {other:?}"),
        }
    }
    // Nothing stored and a writer that read nothing: the first write wins, a
    // second "first" write conflicts.
    let other = DynamoDbStore::from_client(
        aws_sdk_dynamodb::Client::new(&moto.sdk_config().await),
        TABLE,
        "svc2",
    );
    other.save(&doc(1, "a", 1), None).await.unwrap();
    assert!(matches!(
        other.save(&doc(1, "b", 2), None).await,
        Err(StoreError::Conflict(Some(_)))
    ));
    // The other service's item is separate.
    assert_eq!(store.load().await.unwrap().unwrap().generation, 11);
}

/// The SDK retries a PutItem whose answer was lost; when the first attempt was
/// applied, the retry's condition fails against the writer's own document.
/// That write won: the writer is told so, not handed a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_that_already_landed_is_not_a_conflict() {
    let moto = MotoServer::start();
    let store = table(&moto).await;
    let first = doc(1, "a", 10);
    store.save(&first, None).await.unwrap();
    // The same write again, as a retry sends it: same document, same condition.
    store.save(&first, None).await.unwrap();
    let next = doc(2, "a", 20);
    store.save(&next, Some(1)).await.unwrap();
    store.save(&next, Some(1)).await.unwrap();
    // Another writer's document of the same generation is still a conflict.
    assert!(matches!(
        store.save(&doc(2, "b", 30), Some(1)).await,
        Err(StoreError::Conflict(Some(current))) if *current == next
    ));
}

/// A PutItem applied whose answers were all lost (every attempt the SDK
/// made): read back, it is saved, not "nothing was changed"; when the read
/// back fails too the outcome is unknown, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_was_lost_is_read_back() {
    let moto = MotoServer::start();
    table(&moto).await;
    let upstream = format!("127.0.0.1:{}", moto.port()).parse().unwrap();
    let fault = fault_proxy::Fault {
        status: 500,
        error_type: "InternalServerError",
        message: "injected: the answer was lost",
    };
    let proxy = FaultProxy::lost_answers(upstream, "PutItem", fault.clone(), usize::MAX).await;
    let sdk = moto::sdk_config_at(&proxy.endpoint_url()).await;
    let store = DynamoDbStore::new(&sdk, TABLE, KEY);
    let first = doc(1, "a", 10);
    store.save(&first, None).await.unwrap();
    assert_eq!(store.load().await.unwrap(), Some(first));

    // Every answer lost, reads included: unknown, never a plain failure.
    let proxy = FaultProxy::lost_answers(upstream, "DynamoDB", fault, usize::MAX).await;
    let sdk = moto::sdk_config_at(&proxy.endpoint_url()).await;
    let blind = DynamoDbStore::new(&sdk, TABLE, KEY);
    let next = doc(2, "a", 20);
    let err = blind.save(&next, Some(1)).await.unwrap_err();
    assert!(matches!(err, StoreError::Unconfirmed(_)), "{err}");
    assert_eq!(store.load().await.unwrap(), Some(next), "it had landed");
}

/// DynamoDB's throttling answers (after the SDK's own retries) are
/// StoreError::Throttled, which makes the poll back off; other errors are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_answers_are_told_apart() {
    let moto = MotoServer::start();
    table(&moto).await;
    let upstream = format!("127.0.0.1:{}", moto.port()).parse().unwrap();
    for (code, throttled) in [
        ("ProvisionedThroughputExceededException", true),
        ("ThrottlingException", true),
        ("RequestLimitExceeded", true),
        ("ValidationException", false),
    ] {
        let fault = fault_proxy::Fault {
            status: 400,
            error_type: code,
            message: "injected",
        };
        let proxy = FaultProxy::start(upstream, http::Method::POST, "/", fault, usize::MAX).await;
        let sdk = moto::sdk_config_at(&proxy.endpoint_url()).await;
        let store = DynamoDbStore::new(&sdk, TABLE, KEY);
        let err = store.load().await.unwrap_err();
        assert_eq!(err.is_throttled(), throttled, "{code}: {err}");
        assert!(err.to_string().contains(code), "{err}");
    }
}

// ------------------------------------------------------------- gateways ----

/// moto with the table, a store on it, and two upstreams v1 and v2.
struct Fixture {
    moto: MotoServer,
    store: DynamoDbStore,
    v1: TaggedUpstream,
    v2: TaggedUpstream,
}

impl Fixture {
    async fn start() -> Fixture {
        let moto = MotoServer::start();
        let store = table(&moto).await;
        Fixture {
            moto,
            store,
            v1: TaggedUpstream::start("v1").await,
            v2: TaggedUpstream::start("v2").await,
        }
    }

    /// `n` ready gateways on the store, reaching AWS at `aws_url` (moto itself
    /// when `None`), with `extra` appended to their `[store]` table.
    async fn fleet(&self, n: usize, aws_url: Option<&str>, extra: &str) -> Vec<GatewayProc> {
        let url = aws_url.map_or_else(|| self.moto.endpoint_url(), str::to_string);
        let text = config(&url, &self.v1, &self.v2, extra);
        let mut fleet = Vec::with_capacity(n);
        for _ in 0..n {
            fleet.push(GatewayProc::spawn(&text).await);
        }
        for gw in &fleet {
            gw.wait_ready(WAIT).await;
        }
        fleet
    }
}

/// A gateway config with a DynamoDB store at `aws_url`; v1/v2 static.
fn config(aws_url: &str, v1: &TaggedUpstream, v2: &TaggedUpstream, extra_store: &str) -> String {
    let mut text = gateway_config(
        &format!("token_env = \"{TOKEN_ENV}\"\n"),
        &format!("\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{aws_url}\""),
        &[
            ("v1", 90, endpoints_line(&[v1.addr])),
            ("v2", 10, endpoints_line(&[v2.addr])),
        ],
    );
    text.push_str(&format!(
        "\n[store]\nkind = \"dynamodb\"\ntable = \"{TABLE}\"\nkey = \"{KEY}\"\n{extra_store}"
    ));
    text
}

fn w(v1: u64, v2: u64) -> BTreeMap<String, u64> {
    BTreeMap::from([("v1".to_string(), v1), ("v2".to_string(), v2)])
}

/// `PUT /weights` like a pipeline: a 409 (another task decided first) is retried.
async fn put_retrying(gw: &GatewayProc, v1: u32, v2: u32) -> Value {
    for _ in 0..20 {
        let reply = gw.put_weights(&[("v1", v1), ("v2", v2)]).await;
        match reply.status.as_u16() {
            200 => return reply.json(),
            409 => {
                let body = reply.json();
                assert!(body["current"]["generation"].is_u64(), "{body}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("PUT /weights answered {other}: {}", reply.text()),
        }
    }
    panic!("PUT /weights kept conflicting");
}

/// Waits until every gateway runs `want` at `generation`.
async fn converged(fleet: &[GatewayProc], want: &BTreeMap<String, u64>, generation: u64) {
    let mut views = Vec::new();
    let ok = eventually(WAIT, async || {
        views.clear();
        for gw in fleet {
            views.push(gw.weights().await);
        }
        views
            .iter()
            .all(|v| weights_of(v) == *want && v["generation"] == generation)
    })
    .await;
    assert!(
        ok,
        "the fleet never agreed on generation {generation}: {views:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_converge_on_a_change_made_on_each() {
    let moto = MotoServer::start();
    let store = table(&moto).await;
    let v1 = TaggedUpstream::start("v1").await;
    let v2 = TaggedUpstream::start("v2").await;
    let text = config(
        &moto.endpoint_url(),
        &v1,
        &v2,
        "poll_interval = \"300ms\"\n",
    );
    let fleet = [
        GatewayProc::spawn(&text).await,
        GatewayProc::spawn(&text).await,
        GatewayProc::spawn(&text).await,
    ];
    for gw in &fleet {
        gw.wait_ready(WAIT).await;
        assert_eq!(gw.status().await["store"]["kind"], "dynamodb");
    }
    for (i, canary) in [(0, 20u32), (1, 35), (2, 5)] {
        let decided = put_retrying(&fleet[i], 100 - canary, canary).await;
        let generation = decided["generation"].as_u64().unwrap();
        let want = w(u64::from(100 - canary), u64::from(canary));
        converged(&fleet, &want, generation).await;
        let stored = store.load().await.unwrap().unwrap();
        assert_eq!(stored.generation, generation);
        assert_eq!(stored.weights["v2"], canary);
    }
}

/// Two changes at once on two tasks: no change is lost. When both read the
/// store before either wrote (the usual case), exactly one wins and the
/// other gets 409 with the decision in force; when one ended before the
/// other read the store, the second builds on the first (generation 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_gateways_changing_at_once_none_is_lost_and_a_lost_race_gets_409() {
    let fx = Fixture::start().await;
    let store = &fx.store;
    // A long poll interval: neither task learns of the other's change by polling.
    let fleet = fx.fleet(2, None, "poll_interval = \"1h\"\n").await;
    let (a, b) = (&fleet[0], &fleet[1]);
    let (ra, rb) = tokio::join!(
        a.put_weights(&[("v1", 70), ("v2", 30)]),
        b.put_weights(&[("v1", 40), ("v2", 60)])
    );
    let stored = store.load().await.unwrap().unwrap();
    let stored_weights: BTreeMap<String, u64> = stored
        .weights
        .iter()
        .map(|(k, v)| (k.clone(), u64::from(*v)))
        .collect();
    let mut statuses = [ra.status, rb.status];
    statuses.sort();
    if statuses == [200, 200] {
        // One after the other: the later one (generation 2) is in the store.
        let (first, second) = (ra.json(), rb.json());
        let mut generations = [first["generation"].as_u64(), second["generation"].as_u64()];
        generations.sort();
        assert_eq!(generations, [Some(1), Some(2)], "{first} / {second}");
        let later = if first["generation"] == 2 {
            &first
        } else {
            &second
        };
        assert_eq!(stored.generation, 2);
        assert_eq!(weights_of(later), stored_weights);
        return;
    }
    assert_eq!(statuses, [200, 409], "{} / {}", ra.text(), rb.text());
    let (winner, loser) = if ra.status == 200 { (ra, rb) } else { (rb, ra) };
    let won = winner.json();
    let lost = loser.json();
    assert_eq!(stored.generation, 1);
    assert_eq!(weights_of(&won), stored_weights);
    // The 409 carries the current decision, which the losing task now runs.
    assert_eq!(lost["current"]["generation"], 1, "{lost}");
    assert_eq!(weights_of(&lost["current"]), weights_of(&won));
    assert!(
        lost["error"]
            .as_str()
            .unwrap()
            .contains("another gateway task"),
        "{lost}"
    );
    for gw in [a, b] {
        assert_eq!(weights_of(&gw.weights().await), weights_of(&won));
    }
}

/// `ctl weights set v2=10` then `ctl weights set v2=25` through a load
/// balancer: the second call reaches a task that has not polled the first
/// change. It reads the store first and builds on it (200), instead of a 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_a_task_that_has_not_polled_the_last_one_builds_on_it() {
    let fx = Fixture::start().await;
    let store = &fx.store;
    // A long poll interval: b never learns of a's change by polling.
    let fleet = fx.fleet(2, None, "poll_interval = \"1h\"\n").await;
    let (a, b) = (&fleet[0], &fleet[1]);
    let first = a.put_weights(&[("v1", 70), ("v2", 30)]).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.json()["generation"], 1);
    assert_eq!(b.weights().await["generation"], 0, "b has not polled");
    // b's request names v2 only: v1 keeps a's 70, not b's config weight 90.
    let second = b.put_weights(&[("v2", 25)]).await;
    assert_eq!(second.status, 200, "{}", second.text());
    let second = second.json();
    assert_eq!(second["generation"], 2, "{second}");
    assert_eq!(weights_of(&second), w(70, 25));
    let stored = store.load().await.unwrap().unwrap();
    assert_eq!(stored.generation, 2);
    assert_eq!(
        stored.weights,
        BTreeMap::from([("v1".into(), 70), ("v2".into(), 25)])
    );
    assert_eq!(weights_of(&b.weights().await), w(70, 25));
    // And a promotion back on a, which has not polled b's change either.
    let promoted = admin(a.admin, "POST", "/promote", r#"{"version": "v2"}"#).await;
    assert_eq!(promoted.status, 200, "{}", promoted.text());
    assert_eq!(promoted.json()["generation"], 3);
    assert_eq!(store.load().await.unwrap().unwrap().stable, "v2");
}

/// A proxy in front of moto that fails every DynamoDB call while "down".
async fn store_switch(moto: &MotoServer) -> FaultProxy {
    let upstream = format!("127.0.0.1:{}", moto.port()).parse().unwrap();
    FaultProxy::outage(upstream, usize::MAX).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_starts_while_the_store_is_down_and_converges_when_it_returns() {
    let fx = Fixture::start().await;
    fx.store
        .save(&doc(4, "earlier-task", 25), None)
        .await
        .unwrap();
    let down = store_switch(&fx.moto).await;
    let fleet = fx
        .fleet(
            1,
            Some(&down.endpoint_url()),
            "poll_interval = \"300ms\"\nboot_timeout = \"1s\"\n",
        )
        .await;
    let gw = &fleet[0];
    // The config file's weights, marked degraded.
    assert_eq!(weights_of(&gw.weights().await), w(90, 10));
    let status = gw.status().await;
    assert_eq!(status["store"]["degraded"], true, "{status:#}");
    assert!(
        status["warnings"].to_string().contains("degraded"),
        "{status:#}"
    );
    assert_eq!(
        metric_sum(&gw.metrics().await, "canary_store_degraded"),
        1.0
    );
    let counts = gateway_proc::split_counts(gw.addr, 100).await;
    assert_eq!(counts.values().sum::<usize>(), 100);

    down.set_faults(0);
    let ok = eventually(WAIT, async || {
        let view = gw.weights().await;
        weights_of(&view) == w(75, 25) && view["generation"] == 4
    })
    .await;
    assert!(
        ok,
        "never converged: {:#}\n{}",
        gw.status().await,
        gw.log_text()
    );
    assert_eq!(gw.status().await["store"]["degraded"], false);
    assert_eq!(
        metric_sum(&gw.metrics().await, "canary_store_degraded"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_while_the_store_is_down_applies_at_once_and_lands_when_it_returns() {
    let fx = Fixture::start().await;
    let store = &fx.store;
    let switch = store_switch(&fx.moto).await;
    switch.set_faults(0);
    let fleet = fx
        .fleet(
            1,
            Some(&switch.endpoint_url()),
            "poll_interval = \"300ms\"\n",
        )
        .await;
    let gw = &fleet[0];
    let reply = gw.put_weights(&[("v1", 50), ("v2", 50)]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    switch.set_faults(usize::MAX);
    // Other changes need the store: 503 with a short error, not the SDK's text.
    let refused = gw.put_weights(&[("v1", 60), ("v2", 40)]).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    let message = refused.json()["error"].as_str().unwrap().to_string();
    assert!(
        message.contains("store") && !message.contains("injected"),
        "{message}"
    );

    let rolled = admin(gw.admin, "POST", "/rollback", "").await;
    assert_eq!(rolled.status, 200, "{}", rolled.text());
    assert_eq!(weights_of(&rolled.json()), w(100, 0));
    let counts = gateway_proc::split_counts(gw.addr, 50).await;
    assert_eq!(counts.get("v1"), Some(&50), "{counts:?}");
    let status = gw.status().await;
    assert_eq!(status["store"]["rollback_pending"], true, "{status:#}");
    assert!(
        status["warnings"]
            .to_string()
            .contains("rollback pending in the store"),
        "{status:#}"
    );
    let metrics = gw.metrics().await;
    assert_eq!(metric_sum(&metrics, "canary_store_rollback_pending"), 1.0);
    assert_eq!(
        metric_sum(&metrics, "canary_store_rollbacks_deferred_total"),
        1.0
    );
    assert_eq!(store.load().await.unwrap().unwrap().weights["v2"], 50);

    switch.set_faults(0);
    let ok = rolled_back_in(store).await;
    assert!(
        ok,
        "the rollback never reached the store:\n{}",
        gw.log_text()
    );
    let ok = eventually(WAIT, async || {
        gw.status().await["store"]["rollback_pending"] == false
    })
    .await;
    assert!(ok, "{:#}", gw.status().await);
    let stored = store.load().await.unwrap().unwrap();
    assert_eq!(gw.weights().await["generation"], stored.generation);
    assert_eq!(weights_of(&gw.weights().await), w(100, 0));
}

/// Whether `store` holds a decision with v2 at 0 (rolled back) within WAIT.
async fn rolled_back_in(store: &DynamoDbStore) -> bool {
    eventually(WAIT, async || {
        store
            .load()
            .await
            .ok()
            .flatten()
            .is_some_and(|d| d.weights["v2"] == 0)
    })
    .await
}

/// Writes the weights item by hand: `doc` as its document, `generation` as
/// its generation attribute.
async fn put_raw_item(moto: &MotoServer, doc: &str, generation: u64) {
    put_raw_attributes(moto, doc, Some(&generation.to_string())).await;
}

/// Writes the weights item by hand: `doc` as its document, `generation` (a
/// number's text) as its generation attribute, or none.
async fn put_raw_attributes(moto: &MotoServer, doc: &str, generation: Option<&str>) {
    use aws_sdk_dynamodb::types::AttributeValue;
    let mut put = aws_sdk_dynamodb::Client::new(&moto.sdk_config().await)
        .put_item()
        .table_name(TABLE)
        .item("pk", AttributeValue::S(KEY.into()))
        .item("doc", AttributeValue::S(doc.into()));
    if let Some(generation) = generation {
        put = put.item("generation", AttributeValue::N(generation.into()));
    }
    put.send().await.unwrap();
}

/// The store answers a document that does not parse: a pending rollback is
/// written over it (conditional on the generation beside it, one above it)
/// instead of staying pending for good, and /status says what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_rollback_is_written_over_a_document_that_does_not_parse() {
    let fx = Fixture::start().await;
    let fleet = fx.fleet(1, None, "poll_interval = \"300ms\"\n").await;
    let gw = &fleet[0];
    put_retrying(gw, 50, 50).await;
    put_raw_item(&fx.moto, "{not json", 4).await;
    let ok = eventually(WAIT, async || {
        gw.status().await["store"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("weights document is unreadable"))
    })
    .await;
    assert!(ok, "{:#}", gw.status().await);

    let rolled = admin(gw.admin, "POST", "/rollback", "").await;
    assert_eq!(rolled.status, 200, "{}", rolled.text());
    assert_eq!(weights_of(&rolled.json()), w(100, 0));
    let ok = eventually(WAIT, async || {
        fx.store
            .load()
            .await
            .ok()
            .flatten()
            .is_some_and(|d| d.weights["v2"] == 0 && d.generation == 5)
    })
    .await;
    assert!(
        ok,
        "the rollback never replaced the document:\n{}",
        gw.log_text()
    );
    let ok = eventually(WAIT, async || {
        let status = gw.status().await;
        status["store"]["rollback_pending"] == false && status["store"]["last_error"].is_null()
    })
    .await;
    assert!(ok, "{:#}", gw.status().await);

    // Without a generation that reads beside it (none, or one above
    // 2^53-1): no write can be conditional on it, yet the rollback is
    // written over it, on the condition that it still has none.
    for generation in [None, Some("9007199254740992")] {
        put_retrying(gw, 50, 50).await;
        put_raw_attributes(&fx.moto, "{not json", generation).await;
        let rolled = admin(gw.admin, "POST", "/rollback", "").await;
        assert_eq!(rolled.status, 200, "{}", rolled.text());
        let ok = rolled_back_in(&fx.store).await;
        assert!(
            ok,
            "{generation:?}: the rollback never replaced the document:\n{}",
            gw.log_text()
        );
    }
}

/// The item's generation attribute disagrees with its document's (a hand
/// edit): a change answers 503 saying the item must be fixed (no retry can
/// succeed), and a pending rollback's retries back off instead of sending
/// three writes per poll; once the item is fixed the rollback lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inconsistent_item_is_said_so_and_the_rollback_retries_back_off() {
    let fx = Fixture::start().await;
    let fleet = fx.fleet(1, None, "poll_interval = \"200ms\"\n").await;
    let gw = &fleet[0];
    put_retrying(gw, 50, 50).await;
    let stored = fx.store.load().await.unwrap().unwrap();
    let json = serde_json::to_string(&stored).unwrap();
    put_raw_item(&fx.moto, &json, stored.generation + 5).await;

    let refused = gw.put_weights(&[("v1", 60), ("v2", 40)]).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    let message = refused.json()["error"].as_str().unwrap().to_string();
    assert!(
        message.contains("inconsistent") && message.contains("fixed"),
        "{message}"
    );
    let last_error = gw.status().await["store"]["last_error"].to_string();
    assert!(last_error.contains("does not match"), "{last_error}");

    let rolled = admin(gw.admin, "POST", "/rollback", "").await;
    assert_eq!(rolled.status, 200, "{}", rolled.text());
    assert_eq!(rolled.json()["rollback_pending"], true, "{}", rolled.text());
    let writes = async || {
        let m = gw.metrics().await;
        gateway_proc::metric_value(&m, "canary_store_operations_total", &[("op", "save")])
    };
    let before = writes().await;
    // A measurement window: with a 200 ms poll and no back-off this would
    // be ten polls of three writes each.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = writes().await - before;
    assert!(during <= 5.0, "{during} writes in 2 s");

    put_raw_item(&fx.moto, &json, stored.generation).await;
    let ok = eventually(Duration::from_secs(90), async || {
        gw.status().await["store"]["rollback_pending"] == false
    })
    .await;
    assert!(ok, "{:#}", gw.status().await);
    assert_eq!(fx.store.load().await.unwrap().unwrap().weights["v2"], 0);
}

// ------------------------------------------------------- task reports ----

fn report(task: &str, generation: u64, reported_at_ms: u64) -> TaskReport {
    TaskReport {
        task: task.into(),
        generation,
        reported_at_ms,
        applied_at_ms: reported_at_ms,
        ready: true,
        draining: false,
        degraded: false,
        version: "test".into(),
        appmesh_failing: false,
    }
}

fn generations(reports: &[TaskReport]) -> BTreeMap<String, u64> {
    reports
        .iter()
        .map(|r| (r.task.clone(), r.generation))
        .collect()
}

/// The reports item against moto: created on the first report (the nested
/// path needs its map), one entry per task that no task overwrites, the
/// weights item untouched, removal on withdraw, and pruning of a task gone
/// for long (only while its entry is still the one seen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_reports_live_in_their_own_item_one_entry_per_task() {
    let moto = MotoServer::start();
    let store = table(&moto).await;
    let weights = doc(3, "a", 20);
    store.save(&weights, None).await.unwrap();
    let now = unix_ms();
    // The first report creates the map.
    let seen = store.report(&report("a", 3, now)).await.unwrap().unwrap();
    assert_eq!(generations(&seen), BTreeMap::from([("a".to_string(), 3)]));
    // Two tasks reporting at once: neither overwrites the other.
    let (b, c) = (report("b.ip-10-0-0-1#x", 2, now), report("c", 3, now));
    let (x, y) = tokio::join!(store.report(&b), store.report(&c));
    x.unwrap();
    y.unwrap();
    let seen = store.report(&report("a", 3, now)).await.unwrap().unwrap();
    assert_eq!(
        generations(&seen),
        BTreeMap::from([
            ("a".to_string(), 3),
            ("b.ip-10-0-0-1#x".to_string(), 2),
            ("c".to_string(), 3)
        ])
    );
    assert_eq!(store.load().await.unwrap(), Some(weights.clone()));
    // The raw items: the reports item is beside the weights item, never in it.
    let client = aws_sdk_dynamodb::Client::new(&moto.sdk_config().await);
    let item = |pk: &'static str| {
        let client = client.clone();
        async move {
            client
                .get_item()
                .table_name(TABLE)
                .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(pk.into()))
                .consistent_read(true)
                .send()
                .await
                .unwrap()
                .item
                .unwrap()
        }
    };
    let mut names: Vec<_> = item(KEY).await.into_keys().collect();
    names.sort();
    assert_eq!(names, ["doc", "generation", "pk"]);
    assert!(item("svc1#tasks").await["tasks"].is_m());

    store.withdraw("c").await.unwrap();
    store.withdraw("never-reported").await.unwrap();
    // A task silent for 11 minutes is pruned by the next report.
    store
        .report(&report("gone", 1, now - 11 * 60_000))
        .await
        .unwrap();
    store.report(&report("a", 4, now)).await.unwrap();
    let seen = store.report(&report("a", 4, now)).await.unwrap().unwrap();
    assert_eq!(
        generations(&seen),
        BTreeMap::from([("a".to_string(), 4), ("b.ip-10-0-0-1#x".to_string(), 2)])
    );
    assert_eq!(store.load().await.unwrap(), Some(weights));
}

/// The fleet as `gw` sees it: task id -> (generation, stale, this task).
async fn fleet_of(gw: &GatewayProc) -> (BTreeMap<String, (u64, bool, bool)>, bool) {
    let status = gw.status().await;
    let fleet = &status["fleet"];
    let tasks = fleet["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("no fleet.tasks: {status:#}"))
        .iter()
        .map(|t| {
            (
                t["task"].as_str().unwrap().to_string(),
                (
                    t["generation"].as_u64().unwrap(),
                    t["stale"].as_bool().unwrap(),
                    t["this_task"].as_bool().unwrap(),
                ),
            )
        })
        .collect();
    (tasks, fleet["converged"] == true)
}

/// Signals a gateway process (`-TERM`: ECS stopping the task).
fn signal(gw: &GatewayProc, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &gw.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gateway_lists_every_task_with_the_generation_it_runs() {
    let fx = Fixture::start().await;
    let mut fleet = fx.fleet(3, None, "poll_interval = \"300ms\"\n").await;
    let mut ids = Vec::new();
    for gw in &fleet {
        let (tasks, _) = fleet_of(gw).await;
        let own: Vec<_> = tasks.iter().filter(|(_, t)| t.2).collect();
        assert_eq!(own.len(), 1, "{tasks:?}");
        ids.push(own[0].0.clone());
    }
    let decided = put_retrying(&fleet[1], 75, 25).await;
    let generation = decided["generation"].as_u64().unwrap();
    let want: BTreeMap<String, u64> = ids.iter().map(|id| (id.clone(), generation)).collect();
    let mut last = BTreeMap::new();
    let ok = eventually(WAIT, async || {
        for gw in &fleet {
            let (tasks, converged) = fleet_of(gw).await;
            let seen: BTreeMap<String, u64> =
                tasks.iter().map(|(id, t)| (id.clone(), t.0)).collect();
            if seen != want || !converged || tasks.values().any(|t| t.1) {
                last = tasks;
                return false;
            }
        }
        true
    })
    .await;
    assert!(ok, "the fleet never showed {want:?}; last {last:?}");
    let status = fleet[0].status().await;
    assert_eq!(status["fleet"]["generation"], generation, "{status:#}");
    let metrics = fleet[0].metrics().await;
    assert_eq!(metric_sum(&metrics, "canary_fleet_tasks"), 3.0);
    assert_eq!(metric_sum(&metrics, "canary_fleet_converged"), 1.0);

    // ECS stops task 2 (SIGTERM): it removes its report while it drains.
    signal(&fleet[2], "-TERM");
    let ok = eventually(WAIT, async || {
        let (tasks, _) = fleet_of(&fleet[0]).await;
        last = tasks;
        !last.contains_key(&ids[2])
    })
    .await;
    assert!(ok, "the stopped task is still listed: {last:?}");
    // Task 1 dies without a word (SIGKILL): its report goes stale and no
    // longer counts for convergence.
    drop(fleet.remove(1));
    let ok = eventually(WAIT, async || {
        let (tasks, converged) = fleet_of(&fleet[0]).await;
        let stale = tasks.get(&ids[1]).is_some_and(|t| t.1);
        last = tasks;
        stale && converged
    })
    .await;
    assert!(ok, "the dead task never went stale: {last:?}");
    let status = fleet[0].status().await;
    assert_eq!(
        metric_sum(&fleet[0].metrics().await, "canary_fleet_tasks"),
        1.0,
        "{status:#}"
    );
}

// ---------------------------------------------- a store that lost its document ----

/// Waits until the store holds generation `generation` with v2 at `v2`.
async fn stored_again(store: &DynamoDbStore, generation: u64, v2: u32) {
    let mut last = None;
    let ok = eventually(WAIT, async || {
        last = store.load().await.ok().flatten();
        last.as_ref()
            .is_some_and(|d| d.generation == generation && d.weights["v2"] == v2)
    })
    .await;
    assert!(
        ok,
        "the store never held generation {generation} again: {last:?}"
    );
}

/// The weights item is deleted while two tasks run generation 2: a running
/// task writes its decision back, a task that starts then joins with the
/// fleet's weights (not the config file's), and a change made on it reaches
/// every task. Then the store is restored to an older generation: it is
/// written over with the fleet's decision again. The tasks warn in /status
/// and count it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_lost_its_document_gets_the_fleets_decision_back() {
    let fx = Fixture::start().await;
    let store = &fx.store;
    let mut fleet = fx.fleet(2, None, "poll_interval = \"300ms\"\n").await;
    put_retrying(&fleet[0], 70, 30).await;
    let decided = put_retrying(&fleet[1], 60, 40).await;
    assert_eq!(decided["generation"], 2);
    converged(&fleet, &w(60, 40), 2).await;

    let client = aws_sdk_dynamodb::Client::new(&fx.moto.sdk_config().await);
    let delete = async || {
        client
            .delete_item()
            .table_name(TABLE)
            .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(KEY.into()))
            .send()
            .await
            .unwrap();
    };
    delete().await;
    stored_again(store, 2, 40).await;
    // Only the document removed this time, and a task starts meanwhile: it
    // ends on the fleet's weights whether it read the store before or after
    // the write-back.
    client
        .update_item()
        .table_name(TABLE)
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(KEY.into()))
        .update_expression("REMOVE #d")
        .expression_attribute_names("#d", "doc")
        .send()
        .await
        .unwrap();
    let text = config(
        &fx.moto.endpoint_url(),
        &fx.v1,
        &fx.v2,
        "poll_interval = \"300ms\"\n",
    );
    let fresh = GatewayProc::spawn(&text).await;
    fresh.wait_ready(WAIT).await;
    fleet.push(fresh);
    converged(&fleet, &w(60, 40), 2).await;
    stored_again(store, 2, 40).await;
    let warned = async || {
        for gw in &fleet {
            let status = gw.status().await;
            if status["warnings"].to_string().contains("back") {
                return true;
            }
        }
        false
    };
    assert!(warned().await, "no task warned about the write-back");
    let mut behind = 0.0;
    for gw in &fleet {
        behind += metric_sum(&gw.metrics().await, "canary_store_behind_total");
    }
    assert!(behind >= 1.0);

    // A change on the new task is a change of the fleet's decision.
    let decided = put_retrying(&fleet[2], 80, 20).await;
    assert_eq!(decided["generation"], 3);
    converged(&fleet, &w(80, 20), 3).await;

    // A restore to an older generation: written over after two reads.
    store.save(&doc(1, "restored", 5), Some(3)).await.unwrap();
    stored_again(store, 3, 20).await;
    converged(&fleet, &w(80, 20), 3).await;
}

// -------------------------------------------------------------- app mesh ----

/// Two gateways on one store, mirroring to one App Mesh route: only the task
/// whose write won syncs (the other adopts the decision but leaves the route
/// alone), /status shows the synced generation, and the periodic reconcile
/// repairs a route changed behind the gateway's back: the writer's, and once
/// the writer is gone, the other task's in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_writer_syncs_the_route_and_the_reconcile_repairs_drift() {
    use canary_gateway::aws::appmesh::{RouteSync, RouteSyncConfig};
    use mesh_fixture::{MESH, ROUTE, ROUTER};

    let fx = Fixture::start().await;
    let sdk = fx.moto.sdk_config().await;
    let mesh = aws_sdk_appmesh::Client::new(&sdk);
    mesh_fixture::create_mesh(&mesh, &["web-v1", "web-v2"], &[("web-v1", 100)]).await;
    let fleet = fx
        .fleet(
            2,
            None,
            &format!(
            "poll_interval = \"300ms\"\n\n[appmesh]\nmesh = \"{MESH}\"\nvirtual_router = \"{ROUTER}\"\n\
             route = \"{ROUTE}\"\nvirtual_nodes = {{ v1 = \"web-v1\", v2 = \"web-v2\" }}\n\
             reconcile_interval = \"1s\"\n"
            ),
        )
        .await;
    let (a, b) = (&fleet[0], &fleet[1]);
    let decided = put_retrying(a, 70, 30).await;
    let generation = decided["generation"].as_u64().unwrap();
    converged(&fleet, &w(70, 30), generation).await;

    let route = async || -> BTreeMap<String, i32> {
        mesh_fixture::route_weights(&mesh)
            .await
            .into_iter()
            .collect()
    };
    let want = BTreeMap::from([("web-v1".to_string(), 70), ("web-v2".to_string(), 30)]);
    let mut last = BTreeMap::new();
    let ok = eventually(WAIT, async || {
        last = route().await;
        last == want && a.status().await["appmesh"]["synced_generation"] == generation
    })
    .await;
    assert!(
        ok,
        "never synced: {last:?} {:#}\n{}",
        a.status().await,
        a.log_text()
    );
    let status = a.status().await;
    assert_eq!(status["appmesh"]["last_error"], Value::Null, "{status:#}");
    assert_eq!(
        metric_sum(&a.metrics().await, "canary_appmesh_synced_generation"),
        generation as f64
    );
    // b runs the decision but did not write it: it never synced it.
    let status = b.status().await;
    assert_eq!(status["weights"]["generation"], generation);
    assert_ne!(
        status["appmesh"]["synced_generation"], generation,
        "{status:#}"
    );

    // Someone changes the route behind the gateway's back: the writer's
    // reconcile puts the decision back.
    let drift = RouteSync::new(
        &sdk,
        RouteSyncConfig {
            mesh: MESH.into(),
            virtual_router: ROUTER.into(),
            route: ROUTE.into(),
            virtual_nodes: BTreeMap::from([
                ("v1".to_string(), "web-v1".to_string()),
                ("v2".to_string(), "web-v2".to_string()),
            ]),
        },
    );
    // Someone changes the route behind the gateways' backs: answers whether
    // `repaired` then holds within WAIT, with the route's last weights.
    let drift_then = async |repaired: &GatewayProc| {
        drift
            .sync(&BTreeMap::from([
                ("v1".to_string(), 100),
                ("v2".to_string(), 0),
            ]))
            .await
            .unwrap();
        assert_ne!(route().await, want);
        let mut last = BTreeMap::new();
        let ok = eventually(WAIT, async || {
            last = route().await;
            last == want && repaired.status().await["appmesh"]["synced_generation"] == generation
        })
        .await;
        (ok, last)
    };
    let (ok, last) = drift_then(a).await;
    assert!(
        ok,
        "the drift was never repaired: {last:?}\n{}",
        a.log_text()
    );

    // The writer stops (a deployment replaces it): b, the only task left,
    // reconciles in its place and repairs the next drift.
    let mut fleet = fleet;
    let mut a = fleet.remove(0);
    let b = &fleet[0];
    signal(&a, "-TERM");
    let exited = tokio::task::spawn_blocking(move || {
        let status = a.wait();
        (a, status)
    });
    let (a, status) = tokio::time::timeout(WAIT, exited)
        .await
        .expect("the writer did not exit")
        .unwrap();
    assert!(status.is_ok_and(|s| s.success()), "{}", a.log_text());
    // b has read the fleet's reports without a's (withdrawn at its exit).
    let ok = eventually(WAIT, async || {
        let tasks = b.status().await["fleet"]["tasks"].clone();
        tasks.as_array().is_some_and(|t| t.len() == 1)
    })
    .await;
    assert!(ok, "{:#}", b.status().await);
    let (ok, last) = drift_then(b).await;
    assert!(
        ok,
        "with its writer gone, the drift was never repaired: {last:?}\n{}",
        b.log_text()
    );
}

/// A rollback made while the store was down, still pending when ECS stops
/// the task (SIGTERM before the next poll): the stopping task writes it, so
/// the fleet's other tasks roll back too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_rollback_is_written_when_the_task_stops() {
    let fx = Fixture::start().await;
    let store = &fx.store;
    let switch = store_switch(&fx.moto).await;
    switch.set_faults(0);
    // No poll within the test: only the exit can write the rollback.
    let mut fleet = fx
        .fleet(
            1,
            Some(&switch.endpoint_url()),
            "poll_interval = \"600s\"\n",
        )
        .await;
    let gw = fleet.remove(0);
    let reply = gw.put_weights(&[("v1", 50), ("v2", 50)]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    switch.set_faults(usize::MAX);
    let rolled = admin(gw.admin, "POST", "/rollback", "").await;
    assert_eq!(rolled.status, 200, "{}", rolled.text());
    assert_eq!(gw.status().await["store"]["rollback_pending"], true);
    switch.set_faults(0);
    assert_eq!(store.load().await.unwrap().unwrap().weights["v2"], 50);

    signal(&gw, "-TERM");
    let mut gw = gw;
    let exited = tokio::task::spawn_blocking(move || {
        let status = gw.wait();
        (gw, status)
    });
    let (gw, status) = tokio::time::timeout(WAIT, exited)
        .await
        .expect("the gateway did not exit")
        .unwrap();
    assert!(status.is_ok_and(|s| s.success()), "{}", gw.log_text());
    let stored = store.load().await.unwrap().unwrap();
    assert_eq!(stored.weights["v2"], 0, "{}", gw.log_text());
    assert!(
        gw.log_text()
            .contains("pending rollback was written to the store at exit"),
        "{}",
        gw.log_text()
    );
}
