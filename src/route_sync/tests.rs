//! Which decisions a task mirrors to the route (a recording `RouteSync`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{RouteSync, follow_route};
use crate::config::Config;
use crate::control::Control;
use crate::future::BoxFuture;
use crate::store::Store;
use crate::store::memory::MemoryStore;

/// Records the weights it is asked to write.
#[derive(Default)]
struct Recorded(Mutex<Vec<BTreeMap<String, u32>>>);

impl RouteSync for Recorded {
    fn sync<'a>(
        &'a self,
        weights: &'a BTreeMap<String, u32>,
    ) -> BoxFuture<'a, Result<BTreeMap<String, u32>, String>> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(weights.clone());
        Box::pin(async move { Ok(weights.clone()) })
    }
}

const CONFIG: &str = "[listener]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
    [split]\nstable = \"v1\"\n\
    [store]\nkind = \"dynamodb\"\ntable = \"t\"\nkey = \"svc\"\nboot_timeout = \"100ms\"\n\
    [[versions]]\nname = \"v1\"\nweight = 90\nendpoints = [\"127.0.0.1:1\"]\n\
    [[versions]]\nname = \"v2\"\nweight = 10\nendpoints = [\"127.0.0.1:2\"]\n";

#[tokio::test]
async fn a_task_started_without_the_store_never_mirrors_the_files_weights() {
    let store = Arc::new(MemoryStore::default());
    store.set_down(true);
    let config = Config::parse(CONFIG, "test").unwrap();
    let control = Control::start(config, store.clone() as Arc<dyn Store>, "dynamodb")
        .await
        .unwrap();
    assert_eq!(control.weights().weights["v2"], 10, "degraded, on the file");
    let recorded = Arc::new(Recorded::default());
    let sync = tokio::spawn(follow_route(
        control.clone(),
        recorded.clone(),
        Duration::from_millis(5),
    ));
    // Several reconcile rounds on the file's weights (a task that mirrored
    // them would have written them by now), then the first decision of this
    // task's own: the first the route gets.
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.set_down(false);
    let ours = BTreeMap::from([("v1".to_string(), 100), ("v2".to_string(), 0)]);
    control.set_weights(ours.clone(), "admin").await.unwrap();
    let first = async {
        loop {
            if let Some(first) = recorded.0.lock().unwrap().first().cloned() {
                return first;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let first = tokio::time::timeout(Duration::from_secs(5), first)
        .await
        .unwrap();
    assert_eq!(first, ours, "the file's 90/10 went to the route first");
    sync.abort();
}
