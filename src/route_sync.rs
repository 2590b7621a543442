//! Control path: mirroring applied weight decisions to an external route
//! (the App Mesh route, for teams still on it).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::control::Control;
use crate::future::BoxFuture;
use crate::store::WeightsDoc;

/// Writes weights to an App Mesh route (the real one talks to AWS).
pub trait RouteSync: Send + Sync + 'static {
    /// Returns the 0-100 weights written to the route.
    fn sync<'a>(
        &'a self,
        weights: &'a BTreeMap<String, u32>,
    ) -> BoxFuture<'a, Result<BTreeMap<String, u32>, String>>;
}

/// Mirrors every applied weight decision to the App Mesh route; a failure is
/// recorded and retried with the next decision, never reverting the gateway.
pub async fn follow_route(control: Arc<Control>, sync: Arc<dyn RouteSync>) {
    let mut rx = control.subscribe();
    let mut pending: Option<WeightsDoc> = Some(rx.borrow_and_update().clone());
    loop {
        if let Some(doc) = pending.take() {
            let result = sync.sync(&doc.weights).await;
            if let Err(e) = &result {
                tracing::warn!(error = %e, generation = doc.generation, "App Mesh route sync failed");
            }
            control.appmesh_synced(result);
        }
        if rx.changed().await.is_err() {
            return;
        }
        pending = Some(rx.borrow_and_update().clone());
    }
}
