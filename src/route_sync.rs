//! Control path: mirroring applied weight decisions to an external route
//! (the App Mesh route, for teams still on it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

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

/// Mirrors the applied weight decisions to the App Mesh route.
///
/// Only the task that wrote a decision syncs it (its `writer` is this task):
/// a task that adopts another task's decision from the store, possibly late,
/// never writes older weights over newer ones; nor does a task that started
/// without reading the store, on the config file's weights. A sync still
/// going (App Mesh throttles; its retries) when a newer decision comes is
/// abandoned, and the newer decision written by this task too: the older
/// write, landing late, would otherwise undo it until the next reconcile. Every `reconcile_every` the
/// decision in force is written again by its writer (skipped by App Mesh
/// when nothing changed): that repairs drift and retries after a failure. A
/// failure is recorded in /status and never reverts the gateway.
pub async fn follow_route(
    control: Arc<Control>,
    sync: Arc<dyn RouteSync>,
    reconcile_every: Duration,
) {
    let mut rx = control.subscribe();
    let mut doc: WeightsDoc = rx.borrow_and_update().clone();
    // A write of this task's that a newer decision overtook: it may still
    // land after that decision's writer wrote the route.
    let mut overtaken = false;
    loop {
        if (doc.writer == control.writer() || overtaken) && !control.mirror_held() {
            overtaken = false;
            // Abandoned (its retries with it) when a newer decision comes.
            let result = tokio::select! {
                result = sync.sync(&doc.weights) => Some(result),
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    None
                }
            };
            let Some(result) = result else {
                // The newer decision is written too, whoever made it: no
                // write of the older one is the route's last.
                doc = rx.borrow_and_update().clone();
                overtaken = true;
                tracing::debug!(
                    generation = doc.generation,
                    "App Mesh route: a newer decision came during a sync; writing it"
                );
                continue;
            };
            if let Err(e) = &result {
                tracing::warn!(error = %e, generation = doc.generation, "App Mesh route sync failed");
            }
            control.appmesh_synced(doc.generation, result);
        } else {
            tracing::debug!(generation = doc.generation, writer = %doc.writer, "App Mesh route: synced by the task that wrote the decision");
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(reconcile_every) => {}
        }
        doc = rx.borrow_and_update().clone();
    }
}

#[cfg(test)]
mod tests;
