//! Control path: the store upkeep task. Polls a shared store for the other
//! tasks' decisions (backing off with jitter while the store throttles) and
//! writes a rollback that was applied while the store could not take it.

use std::sync::Arc;
use std::time::Duration;

use super::Control;
use crate::aws::backoff::{Backoff, jitter};

/// How often a pending rollback is retried on a store that is not polled (the file).
const PENDING_RETRY: Duration = Duration::from_secs(1);
/// The longest pause between two polls while the store throttles.
const MAX_THROTTLED_DELAY: Duration = Duration::from_secs(60);

/// Runs until aborted. `poll`: the shared store's poll interval (`None`: the
/// store is local and only a pending rollback is written).
pub async fn keep_store(control: Arc<Control>, poll: Option<Duration>) {
    let base = poll.unwrap_or(PENDING_RETRY);
    let mut backoff = Backoff::new(base, MAX_THROTTLED_DELAY.max(base));
    let mut delay = jitter(base, 0.2);
    loop {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = control.pending_wake.notified() => {}
        }
        let pending = control.lock().rollback_pending;
        if poll.is_none() && !pending {
            delay = jitter(base, 0.2);
            continue;
        }
        delay = match control.sync_from_store().await {
            Err(e) if e.is_throttled() => {
                let d = backoff.next_delay();
                tracing::warn!(error = %e, delay_ms = d.as_millis() as u64, "the weight store throttles: polling less often");
                d
            }
            _ => {
                backoff.reset();
                jitter(base, 0.2)
            }
        };
    }
}
