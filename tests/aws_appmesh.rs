//! RouteSync against a moto mesh.

#[path = "support/fault_proxy.rs"]
mod fault_proxy;
#[path = "support/mesh_fixture.rs"]
mod mesh_fixture;
#[path = "support/moto.rs"]
mod moto;
#[path = "support/recorder.rs"]
mod recorder;

use std::collections::BTreeMap;

use aws_config::SdkConfig;
use aws_sdk_appmesh::Client;
use canary_gateway::aws::appmesh::{AppMeshError, RouteSync, RouteSyncConfig};
use canary_gateway::metrics::APPMESH_SYNCS_TOTAL;
use fault_proxy::{Fault, FaultProxy};
use mesh_fixture::{MESH, ROUTE, ROUTER, create_mesh, route_weights};
use moto::MotoServer;

fn sync_config(route: &str) -> RouteSyncConfig {
    RouteSyncConfig {
        mesh: MESH.into(),
        virtual_router: ROUTER.into(),
        route: route.into(),
        virtual_nodes: BTreeMap::from([
            ("v1".to_string(), "web-v1".to_string()),
            ("v2".to_string(), "web-v2".to_string()),
            ("v3".to_string(), "web-v3".to_string()),
        ]),
    }
}

fn weights(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn pairs(list: &[(&str, i32)]) -> Vec<(String, i32)> {
    list.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

async fn setup(moto: &MotoServer) -> (SdkConfig, Client) {
    let sdk = moto.sdk_config().await;
    let client = Client::new(&sdk);
    create_mesh(
        &client,
        &["web-v1", "web-v2", "web-v3", "other"],
        &[("web-v1", 100), ("other", 0)],
    )
    .await;
    (sdk, client)
}

#[tokio::test]
async fn sync_sets_weights_including_a_share_below_one_percent() {
    let moto = MotoServer::start();
    let (sdk, client) = setup(&moto).await;
    assert_eq!(
        route_weights(&client).await,
        pairs(&[("other", 0), ("web-v1", 100)])
    );

    let sync = RouteSync::new(&sdk, sync_config(ROUTE));
    // v2 is missing from the route: its target is added. `other` is not ours.
    sync.sync(&weights(&[("v1", 999_999), ("v2", 1)]))
        .await
        .unwrap();
    assert_eq!(
        route_weights(&client).await,
        pairs(&[("other", 0), ("web-v1", 99), ("web-v2", 1)])
    );

    // Three versions, ties by name; an unmapped version is ignored.
    sync.sync(&weights(&[("v1", 1), ("v2", 1), ("v3", 1), ("v9", 50)]))
        .await
        .unwrap();
    assert_eq!(
        route_weights(&client).await,
        pairs(&[("other", 0), ("web-v1", 34), ("web-v2", 33), ("web-v3", 33)])
    );

    // Promote v2: v1 and v3 drop to 0 but keep their targets.
    sync.sync(&weights(&[("v1", 0), ("v2", 100)]))
        .await
        .unwrap();
    assert_eq!(
        route_weights(&client).await,
        pairs(&[("other", 0), ("web-v1", 0), ("web-v2", 100), ("web-v3", 0)])
    );
}

/// A route with a target the gateway does not manage (`other`, weight 20):
/// it keeps its weight and the versions share the remaining 80, so the total
/// stays at most 100 (moto would accept more; App Mesh rejects it).
#[tokio::test]
async fn a_foreign_target_keeps_its_weight_and_the_total_stays_at_most_100() {
    let moto = MotoServer::start();
    let sdk = moto.sdk_config().await;
    let client = Client::new(&sdk);
    create_mesh(
        &client,
        &["web-v1", "web-v2", "web-v3", "other"],
        &[("web-v1", 80), ("other", 20)],
    )
    .await;
    let sync = RouteSync::new(&sdk, sync_config(ROUTE));
    for (v1, v2) in [(90, 10), (999_999, 1), (0, 100), (50, 50)] {
        let written = sync
            .sync(&weights(&[("v1", v1), ("v2", v2)]))
            .await
            .unwrap();
        let route = route_weights(&client).await;
        let total: i32 = route.iter().map(|(_, w)| w).sum();
        assert_eq!(total, 100, "{route:?}");
        assert!(
            route.iter().all(|(_, w)| (0..=100).contains(w)),
            "{route:?}"
        );
        assert!(route.len() <= 10);
        assert!(route.contains(&("other".to_string(), 20)), "{route:?}");
        let mapped: u32 = written.values().sum();
        assert_eq!(mapped, 80, "{written:?}");
    }
    assert_eq!(
        route_weights(&client).await,
        pairs(&[("other", 20), ("web-v1", 40), ("web-v2", 40)])
    );
}

#[test]
fn results_are_counted_and_errors_are_readable() {
    let recorder = recorder::CountingRecorder::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let moto = MotoServer::start();
            let (sdk, client) = setup(&moto).await;

            let ok = RouteSync::new(&sdk, sync_config(ROUTE));
            ok.sync(&weights(&[("v1", 90), ("v2", 10)])).await.unwrap();
            // Unchanged weights: nothing to update, still a successful sync.
            ok.sync(&weights(&[("v1", 9), ("v2", 1)])).await.unwrap();
            assert_eq!(
                route_weights(&client).await,
                pairs(&[("other", 0), ("web-v1", 90), ("web-v2", 10)])
            );

            let missing = RouteSync::new(&sdk, sync_config("no-such-route"));
            let err = missing.sync(&weights(&[("v1", 1)])).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    AppMeshError::Aws {
                        operation: "DescribeRoute",
                        ..
                    }
                ),
                "{err:?}"
            );
            assert!(err.to_string().contains("NotFound"), "{err}");

            let err = ok
                .sync(&weights(&[("v1", 0), ("v2", 0)]))
                .await
                .unwrap_err();
            assert!(matches!(err, AppMeshError::NoWeight), "{err:?}");
            assert_eq!(
                route_weights(&client).await,
                pairs(&[("other", 0), ("web-v1", 90), ("web-v2", 10)]),
                "route untouched by a failed sync"
            );

            assert_eq!(
                recorder.counter(APPMESH_SYNCS_TOTAL, &[("result", "ok")]),
                2
            );
            assert_eq!(
                recorder.counter(APPMESH_SYNCS_TOTAL, &[("result", "error")]),
                2
            );
        })
    });
}

const CONFLICT: Fault = Fault {
    status: 409,
    error_type: "ConflictException",
    message: "the route was modified concurrently",
};

/// An SDK config that sends App Mesh calls through `proxy`.
async fn through(proxy: &FaultProxy) -> SdkConfig {
    moto::sdk_config_at(&proxy.endpoint_url()).await
}

#[tokio::test]
async fn conflicts_are_retried() {
    let moto = MotoServer::start();
    let (_, client) = setup(&moto).await;
    let upstream = format!("127.0.0.1:{}", moto.port()).parse().unwrap();
    let proxy = FaultProxy::start(upstream, http::Method::PUT, "/routes/", CONFLICT, 2).await;
    let sync = RouteSync::new(&through(&proxy).await, sync_config(ROUTE));
    sync.sync(&weights(&[("v1", 3), ("v2", 1)])).await.unwrap();
    assert_eq!(proxy.matched(), 3, "two conflicts, then the update");
    assert_eq!(
        route_weights(&client).await,
        pairs(&[("other", 0), ("web-v1", 75), ("web-v2", 25)])
    );
}

#[tokio::test]
async fn endless_conflicts_give_up_with_an_error() {
    let moto = MotoServer::start();
    let (_, client) = setup(&moto).await;
    let upstream = format!("127.0.0.1:{}", moto.port()).parse().unwrap();
    let proxy = FaultProxy::start(upstream, http::Method::PUT, "/routes/", CONFLICT, 1000).await;
    let sync = RouteSync::new(&through(&proxy).await, sync_config(ROUTE));
    let err = sync
        .sync(&weights(&[("v1", 1), ("v2", 1)]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppMeshError::GaveUp { attempts: 4, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("ConflictException"), "{err}");
    assert_eq!(proxy.matched(), 4);
    assert_eq!(
        route_weights(&client).await,
        pairs(&[("other", 0), ("web-v1", 100)])
    );
}

const THROTTLED: Fault = Fault {
    status: 429,
    error_type: "TooManyRequestsException",
    message: "Rate exceeded",
};

/// App Mesh throttling every DescribeRoute: a sync gives up after its four
/// attempts and says it was throttled; the next sync makes one attempt
/// (the SDK's own retries), not four, so that a throttling API is not
/// called a dozen times per sync and reconcile; after a sync that passes,
/// four again.
#[tokio::test]
async fn after_a_sync_that_gave_up_throttled_the_next_makes_one_attempt() {
    let moto = MotoServer::start();
    let (_, client) = setup(&moto).await;
    let upstream = format!("127.0.0.1:{}", moto.port()).parse().unwrap();
    let proxy = FaultProxy::start(upstream, http::Method::GET, "/routes/", THROTTLED, 1000).await;
    let sync = RouteSync::new(&through(&proxy).await, sync_config(ROUTE));
    let w = weights(&[("v1", 1), ("v2", 1)]);
    let gave_up = |err: &AppMeshError, n: u32| matches!(err, AppMeshError::GaveUp { attempts, throttled: true, .. } if *attempts == n);
    let err = sync.sync(&w).await.unwrap_err();
    assert!(gave_up(&err, 4) && err.throttled(), "{err:?}");
    let first = proxy.matched();
    assert!(first >= 4, "{first} calls");
    let err = sync.sync(&w).await.unwrap_err();
    assert!(gave_up(&err, 1), "{err:?}");
    let second = proxy.matched() - first;
    assert!(
        second >= 1 && second * 4 <= first,
        "{second} calls after {first}"
    );
    proxy.set_faults(0);
    sync.sync(&w).await.unwrap();
    assert_eq!(
        route_weights(&client).await,
        pairs(&[("other", 0), ("web-v1", 50), ("web-v2", 50)])
    );
    proxy.set_faults(1000);
    let err = sync.sync(&w).await.unwrap_err();
    assert!(gave_up(&err, 4), "{err:?}");
}

/// Completes once `proxy` has received `calls` calls (the last of them/// Completes once `proxy` has received `calls` calls (the last of them
/// then waits out the proxy's latency before it reaches moto).
fn once_calls_arrived(
    proxy: &FaultProxy,
    calls: usize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
    Box::pin(async move {
        while proxy.by_target().values().sum::<usize>() < calls {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    })
}

/// A newer decision (`abandon`) during the DescribeRoute abandons the
/// sync: no UpdateRoute is sent. Once the UpdateRoute is on its way, it is
/// waited for and lands: dropped, it could still land after the newer
/// decision's own write.
#[tokio::test]
async fn a_sync_is_abandoned_only_before_its_update_is_sent() {
    let moto = MotoServer::start();
    let (_, client) = setup(&moto).await;
    let upstream = format!("127.0.0.1:{}", moto.port()).parse().unwrap();
    let proxy = FaultProxy::latency(upstream, std::time::Duration::from_millis(300)).await;
    let sync = RouteSync::new(&through(&proxy).await, sync_config(ROUTE));
    let untouched = pairs(&[("other", 0), ("web-v1", 100)]);

    // Abandoned while its DescribeRoute is on its way.
    let mut abandon = once_calls_arrived(&proxy, 1);
    let synced = sync
        .sync_until(&weights(&[("v1", 1), ("v2", 1)]), &mut abandon)
        .await
        .unwrap();
    assert_eq!(synced, None);
    assert_eq!(
        proxy.by_target().values().sum::<usize>(),
        1,
        "an UpdateRoute went out"
    );
    assert_eq!(route_weights(&client).await, untouched);

    // "Abandoned" while its UpdateRoute is on its way (the second call of
    // this sync): waited for.
    let mut abandon = once_calls_arrived(&proxy, 3);
    let synced = sync
        .sync_until(&weights(&[("v1", 1), ("v2", 1)]), &mut abandon)
        .await
        .unwrap()
        .expect("dropped with its UpdateRoute on its way");
    assert!(synced.sent);
    assert_eq!(
        route_weights(&client).await,
        pairs(&[("other", 0), ("web-v1", 50), ("web-v2", 50)])
    );
}
