//! Control path: mirroring applied weight decisions to an external route
//! (the App Mesh route, for teams still on it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::aws::backoff::jitter;
use crate::control::Control;
use crate::future::BoxFuture;
use crate::store::WeightsDoc;

/// Writes weights to an App Mesh route (the real one talks to AWS).
pub trait RouteSync: Send + Sync + 'static {
    /// Writes `weights` to the route, unless `abandon` completes first while
    /// no write is on its way to the route (`Ok(None)`): a write once sent is
    /// always waited for, as one dropped could still land after a newer
    /// decision's write.
    fn sync<'a>(
        &'a self,
        weights: &'a BTreeMap<String, u32>,
        abandon: &'a mut (dyn Future<Output = ()> + Send + Unpin),
    ) -> BoxFuture<'a, Result<Option<Synced>, SyncError>>;
}

/// Why a route sync failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncError {
    /// What failed, for `/status` and the log.
    pub message: String,
    /// App Mesh throttled it to the end: the account's API rate, which
    /// every task meets alike, not this task's `[appmesh]`. Such a task is
    /// not reported as failing its syncs (another standing in for it would
    /// only add calls to a throttling API).
    pub throttled: bool,
    /// It failed reading the route (DescribeRoute), before it knew whether
    /// a write was needed: a route synced to the decision before still
    /// holds it, unless changed from outside.
    pub route_unread: bool,
}

impl From<String> for SyncError {
    fn from(message: String) -> SyncError {
        SyncError {
            message,
            throttled: false,
            route_unread: false,
        }
    }
}

impl From<&str> for SyncError {
    fn from(message: &str) -> SyncError {
        SyncError::from(message.to_string())
    }
}

/// What a route sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    /// The 0-100 weights the route holds for the mapped versions.
    pub weights: BTreeMap<String, u32>,
    /// Whether a write was sent (false: the route already held them).
    pub sent: bool,
}

/// Mirrors the applied weight decisions to the App Mesh route.
///
/// Only the task that wrote a decision syncs it (its `writer` is this task):
/// a task that adopts another task's decision from the store, possibly late,
/// never writes older weights over newer ones; nor does a task that started
/// without reading the store, on the config file's weights. A sync still
/// going (App Mesh throttles; its retries) when a newer decision comes is
/// abandoned, unless its write is on its way (that one is waited for), and
/// the newer decision written by this task too: the older write, landing
/// late, would otherwise undo it until the next reconcile.
///
/// Every `reconcile_every` (jittered ±20 %, so that a fleet's tasks do not
/// call at once) the decision in force is written again by its writer
/// (skipped by App Mesh when nothing changed): that repairs drift and
/// retries after a failure. When the writer is gone (stopped, replaced with
/// the rest of the fleet, draining) or reports its own syncs failing, one
/// other task stands in for it at the reconcile (see
/// [`Control::stands_in_for`]). A task looks again `VERIFY_AFTER` after it
/// adopts another task's decision, and every `VERIFY_AFTER` while that
/// decision's writer reports failing and the task writes nothing (a look
/// that writes nothing makes no call); decisions this task does not write
/// never put the reconcile off. A task whose own last sync failed tries
/// again at each reconcile, whoever wrote the decision. With a shared store the store
/// is read before such a write, and the write is made only when the store's
/// decision is still the one in force here (same generation and writer), or
/// when the store holds no decision yet and this task runs the config file's
/// weights (generation 0): another task may have written a newer decision
/// that this task has not polled yet, and its weights must not be
/// overwritten with older ones. When the store holds another decision, or
/// cannot be read, that reconcile is skipped (logged at debug); the next one
/// tries again. And the store is read again after each write sent: a newer
/// decision there may have been mirrored by its writer before this write
/// landed, so this task writes that one too once it adopts it. With a store
/// of this task's own (the file) no other task decides: the decision in
/// force is mirrored whoever wrote it (an earlier process of this task,
/// after a restart), and the reconcile writes without reading the store. A
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
    // This round is a reconcile (the timer, no new decision), not a new
    // decision's first write.
    let mut reconcile = false;
    // The last sync's error, said once (a broken route fails every reconcile).
    let mut last_error: Option<String> = None;
    // A write was sent (or failed anew) in this round: the route is checked
    // again after VERIFY_AFTER.
    let mut verify = false;
    // When the next reconcile is due. Kept across the decisions this task
    // does not write (another task's, adopted): a stream of them faster
    // than the interval must not put the reconcile off for good (a
    // stand-in for a writer that cannot write the route would never act).
    let mut due = tokio::time::Instant::now() + jitter(reconcile_every, RECONCILE_JITTER);
    loop {
        let held = control.mirror_held();
        // On a store of this task's own every decision in force is its own,
        // also one an earlier process of it wrote (another writer id).
        let ours =
            (doc.writer == control.writer() || overtaken || !control.store_shared()) && !held;
        // This task's last sync failed (as a stand-in, say): it keeps
        // trying at each reconcile, the store read first, so that it
        // notices (and says) when its syncs work again.
        let retry = !ours && reconcile && !held && last_error.is_some();
        // The writer gone, or failing its own syncs: one other task
        // reconciles in its place.
        let stand_in = !ours && reconcile && !held && !retry && control.stands_in_for(&doc.writer);
        let mut write = ours || stand_in || retry;
        // One task's own store (the file): no other task writes decisions.
        if write && reconcile && control.store_shared() {
            // A newer decision coming meanwhile is handled as one.
            let Some(in_store) = until_changed(&mut rx, still_in_store(&control, &doc)).await
            else {
                return;
            };
            let Some(in_store) = in_store else {
                doc = rx.borrow_and_update().clone();
                reconcile = false;
                continue;
            };
            write = in_store;
        }
        if write {
            overtaken = false;
            if stand_in {
                tracing::debug!(generation = doc.generation, writer = %doc.writer, "App Mesh route: reconciling in place of the task that wrote the decision (gone, or failing its own syncs)");
            }
            // Abandoned (its retries with it) when a newer decision comes
            // before a write is on its way.
            let mut newer = rx.clone();
            let mut abandon = Box::pin(async move {
                let _ = newer.changed().await;
            });
            let result = sync.sync(&doc.weights, &mut abandon).await;
            // A write on its way when a newer decision came, or one the
            // store holds now, may have been written to the route by its
            // writer before this write landed: this task writes that one too
            // once it runs it.
            let landed_late = match result {
                Ok(None) => {
                    // The newer decision is written too, whoever made it:
                    // no write of the older one is the route's last.
                    doc = rx.borrow_and_update().clone();
                    overtaken = true;
                    reconcile = false;
                    tracing::debug!(
                        generation = doc.generation,
                        "App Mesh route: a newer decision came during a sync; writing it"
                    );
                    continue;
                }
                Ok(Some(synced)) => {
                    if last_error.take().is_some() {
                        tracing::info!(generation = doc.generation, "App Mesh route synced again");
                    }
                    control.appmesh_synced(doc.generation, Ok(synced.weights));
                    verify = synced.sent;
                    // Nothing sent: nothing can land late.
                    synced.sent
                        && (rx.has_changed().unwrap_or(false)
                            || (control.store_shared() && newer_in_store(&control, &doc).await))
                }
                Err(e) => {
                    // Once per distinct error: a broken route fails every
                    // reconcile (checked again soon only the first time: a
                    // route that cannot be written is not called more often).
                    verify = last_error.as_ref() != Some(&e.message);
                    if verify {
                        tracing::warn!(error = %e.message, generation = doc.generation, "App Mesh route sync failed");
                    } else {
                        tracing::debug!(error = %e.message, generation = doc.generation, "App Mesh route sync failed again");
                    }
                    last_error = Some(e.message.clone());
                    control.appmesh_synced(doc.generation, Err(e));
                    // A write that failed may still have landed (a time-out).
                    rx.has_changed().unwrap_or(false)
                        || (control.store_shared() && newer_in_store(&control, &doc).await)
                }
            };
            if landed_late {
                overtaken = true;
                tracing::debug!(
                    generation = doc.generation,
                    "App Mesh route: a newer decision came while this one was written; writing it once in force"
                );
            }
        } else if !ours {
            tracing::debug!(generation = doc.generation, writer = %doc.writer, "App Mesh route: synced by the task that wrote the decision");
        }
        // An attempt the SDK timed out and sent again may land after the
        // write that answered, or another task's after this one: checked
        // again soon, not only at the next reconcile.
        let every = if std::mem::take(&mut verify) {
            reconcile_every.min(VERIFY_AFTER)
        } else {
            reconcile_every
        };
        let now = tokio::time::Instant::now();
        if write || reconcile {
            due = now + jitter(every, RECONCILE_JITTER);
        }
        // Another task's decision, new here: looked at again soon, as its
        // writer may turn out to fail its own sync of it (its report says
        // so a moment later) and a stand-in to have to write it; and again
        // every VERIFY_AFTER for as long as its writer reports failing and
        // this task writes nothing (the task that stands in may fail too,
        // and this one has to take over). A look that writes nothing costs
        // no call: the fleet's reports are read from memory.
        if !ours && !write && (!reconcile || control.writer_fails_route_syncs(&doc.writer)) {
            due = due.min(now + jitter(reconcile_every.min(VERIFY_AFTER), RECONCILE_JITTER));
        }
        if !wait_or_reconcile(&mut rx, &mut doc, &mut reconcile, due).await {
            return;
        }
    }
}

/// Waits for a newer decision or the reconcile's time (`due`), then moves
/// `doc` to the decision in force; `reconcile` says the time came first
/// with the decision unchanged. False when the decisions' channel closed
/// (the gateway stops).
async fn wait_or_reconcile(
    rx: &mut tokio::sync::watch::Receiver<WeightsDoc>,
    doc: &mut WeightsDoc,
    reconcile: &mut bool,
    due: tokio::time::Instant,
) -> bool {
    let timer = tokio::select! {
        changed = rx.changed() => {
            if changed.is_err() {
                return false;
            }
            false
        }
        () = tokio::time::sleep_until(due) => true,
    };
    let next = rx.borrow_and_update().clone();
    *reconcile = timer && next == *doc;
    *doc = next;
    true
}

/// How soon after a write sent (or failed) the route is checked again,
/// when the reconcile interval is longer: twice an AWS call's attempt
/// time-out (5 s), by when a request the SDK gave up on (and sent again)
/// has landed, if it ever does, maybe after this write.
const VERIFY_AFTER: Duration = Duration::from_secs(10);

/// The spread of the reconcile interval (±20 %).
const RECONCILE_JITTER: f64 = 0.2;

/// Runs `work` unless a newer decision comes first: `Some(Some(out))` when
/// it ended, `Some(None)` when a decision came (`work` dropped), `None`
/// when the decisions' channel closed (the gateway stops).
async fn until_changed<T>(
    rx: &mut tokio::sync::watch::Receiver<WeightsDoc>,
    work: impl std::future::Future<Output = T>,
) -> Option<Option<T>> {
    tokio::select! {
        out = work => Some(Some(out)),
        changed = rx.changed() => changed.ok().map(|()| None),
    }
}

/// Whether the shared store still holds `doc`, the decision in force here,
/// before a reconcile writes it (or holds none yet while `doc` is the config
/// file's weights, generation 0). False when it holds another decision (a
/// newer one this task has not polled yet) or cannot be read: nothing is
/// written then.
async fn still_in_store(control: &Control, doc: &WeightsDoc) -> bool {
    match control.stored_decision().await {
        Ok(Some(s)) if s.generation == doc.generation && s.writer == doc.writer => true,
        // Nothing decided in the store yet: this task runs the config
        // file's weights (generation 0); no newer decision to undo.
        Ok(None) if doc.generation == 0 => true,
        Ok(stored) => {
            tracing::debug!(
                generation = doc.generation,
                stored_generation = stored.as_ref().map(|s| s.generation),
                stored_writer = stored.as_ref().map(|s| s.writer.as_str()),
                "App Mesh route: reconcile skipped, the store holds another decision than the one in force here"
            );
            false
        }
        Err(e) => {
            tracing::debug!(
                error = %e,
                generation = doc.generation,
                "App Mesh route: reconcile skipped, the store could not be read"
            );
            false
        }
    }
}

/// Whether the shared store holds a decision newer than `doc`, read right
/// after `doc` was written to the route: its writer may have mirrored it
/// before that write landed. (A store that cannot be read tells nothing.)
async fn newer_in_store(control: &Control, doc: &WeightsDoc) -> bool {
    matches!(control.stored_decision().await, Ok(Some(s)) if s.is_newer_than(doc))
}

#[cfg(test)]
mod tests;
