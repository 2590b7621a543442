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
/// write, landing late, would otherwise undo it until the next reconcile.
///
/// Every `reconcile_every` the decision in force is written again by its
/// writer (skipped by App Mesh when nothing changed): that repairs drift and
/// retries after a failure. With a shared store the store is read before
/// such a write, and the write is made only when the store's decision is
/// still the one in force here (same generation and writer), or when the
/// store holds no decision yet and this task runs the config file's weights
/// (generation 0): another task may have written a newer decision that this
/// task has not polled yet, and its weights must not be overwritten with
/// older ones. When the store holds another decision, or cannot be read,
/// that reconcile is skipped (logged at debug); the next one tries again.
/// With a store of this task's own (the file) no other task decides: the
/// decision in force is mirrored whoever wrote it (an earlier process of
/// this task, after a restart), and the reconcile writes without reading
/// the store. A failure is recorded in
/// /status and never reverts the gateway.
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
    // This round is a reconcile (the timer, no new decision), not a new
    // decision's first write.
    let mut reconcile = false;
    loop {
        // On a store of this task's own every decision in force is its own,
        // also one an earlier process of it wrote (another writer id).
        let ours = (doc.writer == control.writer() || overtaken || !control.store_shared())
            && !control.mirror_held();
        let mut write = ours;
        // One task's own store (the file): no other task writes decisions.
        if ours && reconcile && control.store_shared() {
            // A newer decision coming meanwhile is handled as one.
            let stored = tokio::select! {
                stored = control.stored_decision() => Some(stored),
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    None
                }
            };
            let Some(stored) = stored else {
                doc = rx.borrow_and_update().clone();
                reconcile = false;
                continue;
            };
            match stored {
                Ok(Some(s)) if s.generation == doc.generation && s.writer == doc.writer => {}
                // Nothing decided in the store yet: this task runs the config
                // file's weights (generation 0); no newer decision to undo.
                Ok(None) if doc.generation == 0 => {}
                Ok(stored) => {
                    write = false;
                    tracing::debug!(
                        generation = doc.generation,
                        stored_generation = stored.as_ref().map(|s| s.generation),
                        stored_writer = stored.as_ref().map(|s| s.writer.as_str()),
                        "App Mesh route: reconcile skipped, the store holds another decision than the one in force here"
                    );
                }
                Err(e) => {
                    write = false;
                    tracing::debug!(
                        error = %e,
                        generation = doc.generation,
                        "App Mesh route: reconcile skipped, the store could not be read"
                    );
                }
            }
        }
        if write {
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
                reconcile = false;
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
        } else if !ours {
            tracing::debug!(generation = doc.generation, writer = %doc.writer, "App Mesh route: synced by the task that wrote the decision");
        }
        let timer = tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                false
            }
            () = tokio::time::sleep(reconcile_every) => true,
        };
        let next = rx.borrow_and_update().clone();
        reconcile = timer && next == doc;
        doc = next;
    }
}

#[cfg(test)]
mod tests;
