//! Control path: the store upkeep task. Polls a shared store for the other
//! tasks' decisions (backing off with jitter while the store throttles),
//! reports this task's generation after each poll and right after a decision
//! is applied, and writes a rollback that was applied while the store could
//! not take it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Control;
use crate::aws::backoff::{Backoff, jitter};
use crate::store::StoreError;

/// How often a pending rollback is retried on a store that is not polled (the file).
const PENDING_RETRY: Duration = Duration::from_secs(1);
/// The longest pause between two polls while the store throttles.
const MAX_THROTTLED_DELAY: Duration = Duration::from_secs(60);

/// Runs until aborted. `poll`: the shared store's poll interval (`None`: the
/// store is local and only a pending rollback is written).
pub async fn keep_store(control: Arc<Control>, poll: Option<Duration>) {
    let base = poll.unwrap_or(PENDING_RETRY);
    let mut backoff = Backoff::new(base, MAX_THROTTLED_DELAY.max(base));
    let mut next_poll = Instant::now() + jitter(base, 0.2);
    // The first report goes out at once: the fleet sees a new task without
    // waiting for its first poll.
    let mut report_only = poll.is_some();
    loop {
        if !report_only {
            tokio::select! {
                () = tokio::time::sleep_until(next_poll) => {}
                () = control.pending_wake.notified() => {}
                () = control.report_wake.notified(), if poll.is_some() => report_only = true,
            }
        }
        let pending = control.lock().pending_rollback.is_some();
        if poll.is_none() && !pending {
            next_poll = Instant::now() + jitter(base, 0.2);
            continue;
        }
        // A report goes out when due (see Control::report_due): right after a
        // decision or drain, else once per report interval, on a poll.
        let result = if std::mem::take(&mut report_only) {
            // The poll keeps its schedule; this only says what was applied.
            if !control.report_due() {
                continue;
            }
            control.report_to_store().await
        } else {
            match control.sync_from_store().await {
                Ok(()) if poll.is_some() && control.report_due() => control.report_to_store().await,
                // The poll failed (not throttled): the task still serves its
                // generation and says so, or the fleet would lose it from
                // view (stale, left out of `converged`) while it runs
                // something else than the others.
                Err(e) if poll.is_some() && !e.is_throttled() && control.report_due() => {
                    let _ = control.report_to_store().await;
                    Err(e)
                }
                other => other,
            }
        };
        let delay = match result {
            Err(e) if e.is_throttled() => {
                let d = backoff.next_delay();
                tracing::warn!(error = %e, delay_ms = d.as_millis() as u64, "the weight store throttles: polling less often");
                Some(d)
            }
            // The item contradicts itself (a hand edit): every write fails
            // until it is fixed; retrying the pending rollback backs off.
            Err(e @ StoreError::Inconsistent(_)) => {
                let d = backoff.next_delay();
                tracing::error!(error = %e, delay_ms = d.as_millis() as u64, "the weight store's item is inconsistent: it must be fixed; retrying less often");
                Some(d)
            }
            _ => {
                backoff.reset();
                None
            }
        };
        let now = Instant::now();
        if let Some(d) = delay {
            next_poll = now + d;
        } else if next_poll <= now {
            next_poll = now + jitter(base, 0.2);
        }
    }
}
