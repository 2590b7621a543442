//! CloudMapStore against moto.

#[path = "support/cloudmap_fixture.rs"]
mod cloudmap_fixture;
#[path = "support/moto.rs"]
mod moto;

use std::collections::BTreeMap;

use aws_sdk_servicediscovery::Client;
use canary_gateway::aws::cloudmap_store::{CloudMapStore, DOC_ATTRIBUTE};
use canary_gateway::store::{Store, StoreError, WeightsDoc};
use cloudmap_fixture::CloudMapFixture;
use moto::MotoServer;

fn doc(generation: u64, canary: u32) -> WeightsDoc {
    WeightsDoc {
        stable: "v1".into(),
        weights: BTreeMap::from([("v1".to_string(), 100 - canary), ("v2".to_string(), canary)]),
        generation,
        updated_at_ms: 1_760_000_000_000 + generation,
        source: "admin".into(),
        writer: "task-a".into(),
        config_weights: Some(BTreeMap::from([
            ("v1".to_string(), 100),
            ("v2".to_string(), 0),
        ])),
        config_stable: None,
        refused_config: None,
        rollout: None,
    }
}

async fn attributes(fx: &CloudMapFixture) -> std::collections::HashMap<String, String> {
    fx.client
        .get_service_attributes()
        .service_id(&fx.service_id)
        .send()
        .await
        .unwrap()
        .service_attributes()
        .and_then(|s| s.attributes().cloned())
        .unwrap_or_default()
}

#[tokio::test]
async fn round_trips_the_weights_document() {
    let moto = MotoServer::start();
    let sdk = moto.sdk_config().await;
    let fx = CloudMapFixture::create(Client::new(&sdk), "canary.local", "canary-state").await;
    // An attribute of someone else's, which the store must keep.
    fx.client
        .update_service_attributes()
        .service_id(&fx.service_id)
        .attributes("owner", "team-a")
        .send()
        .await
        .unwrap();

    let store = CloudMapStore::new(&sdk, fx.service_id.clone());
    assert!(store.shared());
    assert_eq!(
        store.load().await.unwrap(),
        None,
        "fresh service: nothing stored"
    );

    store.save(&doc(1, 10), None).await.unwrap();
    assert_eq!(store.load().await.unwrap(), Some(doc(1, 10)));

    // Another replica sees the newer decision.
    let replica = CloudMapStore::new(&sdk, fx.service_id.clone());
    replica.save(&doc(2, 50), Some(1)).await.unwrap();
    assert_eq!(store.load().await.unwrap(), Some(doc(2, 50)));

    let attrs = attributes(&fx).await;
    assert_eq!(attrs.get("owner").map(String::as_str), Some("team-a"));
    let raw = attrs.get(DOC_ATTRIBUTE).expect("document attribute");
    assert!(raw.len() <= 1024 && raw.starts_with('{'), "{raw}");
}

#[tokio::test]
async fn oversized_and_invalid_documents_are_errors() {
    let moto = MotoServer::start();
    let sdk = moto.sdk_config().await;
    let fx = CloudMapFixture::create(Client::new(&sdk), "canary.local", "canary-state").await;
    let store = CloudMapStore::new(&sdk, fx.service_id.clone());
    store.save(&doc(1, 10), None).await.unwrap();

    let mut big = doc(2, 10);
    for i in 0..60 {
        big.weights
            .insert(format!("a-rather-long-version-name-{i}"), 1);
    }
    let err = store.save(&big, None).await.unwrap_err();
    assert!(matches!(err, StoreError::CloudMap(_)), "{err:?}");
    assert!(err.to_string().contains("1024"), "{err}");
    assert_eq!(
        store.load().await.unwrap(),
        Some(doc(1, 10)),
        "old document kept"
    );

    fx.client
        .update_service_attributes()
        .service_id(&fx.service_id)
        .attributes(DOC_ATTRIBUTE, "not json")
        .send()
        .await
        .unwrap();
    assert!(matches!(store.load().await, Err(StoreError::Invalid(_))));
}

#[tokio::test]
async fn unknown_service_is_a_readable_cloud_map_error() {
    let moto = MotoServer::start();
    let sdk = moto.sdk_config().await;
    let store = CloudMapStore::new(&sdk, "srv-doesnotexist");
    let err = store.load().await.unwrap_err();
    assert!(matches!(err, StoreError::CloudMap(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("srv-doesnotexist") && text.contains("ServiceNotFound"),
        "{text}"
    );
    let err = store.save(&doc(1, 1), None).await.unwrap_err();
    assert!(err.to_string().contains("ServiceNotFound"), "{err}");
}

/// Two tasks save a decision of the same generation, the second landing on
/// top just after the first task read its own write back (it polls for it
/// here): the first is told 409 with the second's weights, the second 200,
/// and the store keeps the second's weights; whichever writer id sorts first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_overwritten_just_after_its_read_back_is_a_conflict() {
    let moto = MotoServer::start();
    let sdk = moto.sdk_config().await;
    let fx = CloudMapFixture::create(Client::new(&sdk), "canary.local", "canary-state").await;
    let (first_store, second_store) = (
        std::sync::Arc::new(CloudMapStore::new(&sdk, fx.service_id.clone())),
        CloudMapStore::new(&sdk, fx.service_id.clone()),
    );
    for (round, (first_writer, second_writer)) in [("task-a", "task-b"), ("task-b", "task-a")]
        .into_iter()
        .cycle()
        .take(4)
        .enumerate()
    {
        let generation = 10 * (round as u64 + 1);
        let first = WeightsDoc {
            writer: first_writer.into(),
            ..doc(generation, 10)
        };
        let second = WeightsDoc {
            writer: second_writer.into(),
            ..doc(generation, 20)
        };
        let saving = tokio::spawn({
            let (store, first) = (first_store.clone(), first.clone());
            async move { store.save(&first, Some(generation - 1)).await }
        });
        let written = canary_gateway::aws::cloudmap_store::encode(&first).unwrap();
        while attributes(&fx).await.get(DOC_ATTRIBUTE) != Some(&written) {
            assert!(
                !saving.is_finished(),
                "round {round}: the first save ended unseen"
            );
            tokio::task::yield_now().await;
        }
        let second_result = second_store.save(&second, Some(generation - 1)).await;
        let first_result = saving.await.unwrap();
        match first_result {
            Err(StoreError::Conflict(Some(current))) => {
                assert_eq!(current.weights, second.weights, "round {round}")
            }
            other => panic!("round {round}: the overwritten save answered {other:?}"),
        }
        second_result.unwrap();
        let kept = first_store.load().await.unwrap().unwrap();
        assert_eq!(kept.weights, second.weights, "round {round}");
    }
}
