//! Keeps one version's Cloud Map endpoints current.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::aws::backoff::{Backoff, MIN_DELAY, jitter};
use crate::discovery::{CloudMapSource, Discover, DiscoveryError, EndpointSink};
use crate::metrics;

/// The intervals of [`poll`]. Every interval is jittered by `jitter`.
#[derive(Debug, Clone, PartialEq)]
pub struct PollTiming {
    /// How often DiscoverInstancesRevision is called (at least every 1 ms).
    pub revision_interval: Duration,
    /// The longest time between two DiscoverInstances calls: health changes do
    /// not move the revision.
    pub full_interval: Duration,
    /// Delay after the first failure; it doubles with each further failure.
    pub backoff_initial: Duration,
    /// Upper bound of the failure delay.
    pub backoff_max: Duration,
    /// Relative jitter applied to every interval (0.2 = ±20%).
    pub jitter: f64,
}

impl Default for PollTiming {
    /// 1 s revision checks, a full fetch at least every 10 s, back-off from
    /// 1 s to 30 s, ±20% jitter.
    fn default() -> Self {
        PollTiming {
            revision_interval: Duration::from_secs(1),
            full_interval: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            jitter: 0.2,
        }
    }
}

/// What the poller remembers between rounds.
struct PollState {
    /// The revision the last successful DiscoverInstances answer came with
    /// (its `InstancesRevision`), not the one DiscoverInstancesRevision said
    /// before it: the instances may change between the two calls, and the
    /// list may be older than that revision. `None` when the answer carried
    /// no revision: nothing is proven, so the next round fetches again.
    last_revision: Option<i64>,
    /// When DiscoverInstances is due regardless of the revision.
    next_full: Instant,
    /// Set after a failure: the next round fetches the instances, so the sink
    /// hears of the recovery.
    force_full: bool,
}

/// Polls Cloud Map for `version`'s endpoints forever (spawn it; abort it to stop).
///
/// Each round calls DiscoverInstancesRevision, and DiscoverInstances when the
/// revision differs from the one the last instance list came with (it may go
/// backwards), when that list came without one, when `full_interval` has
/// passed, or after a failure. A successful answer, even an
/// empty one, goes to [`EndpointSink::endpoints_discovered`]; a failure goes to
/// [`EndpointSink::discovery_failed`], is counted in
/// [`metrics::DISCOVERY_ERRORS_TOTAL`] and delays the next round with
/// exponential back-off.
pub async fn poll(
    version: String,
    source: CloudMapSource,
    discover: Arc<dyn Discover>,
    sink: Arc<dyn EndpointSink>,
    timing: PollTiming,
) {
    let mut state = PollState {
        last_revision: None,
        next_full: Instant::now(),
        force_full: true,
    };
    let mut backoff = Backoff::new(timing.backoff_initial, timing.backoff_max);
    loop {
        let delay = match round(&version, &source, &*discover, &*sink, &timing, &mut state).await {
            Ok(()) => {
                backoff.reset();
                jitter(timing.revision_interval.max(MIN_DELAY), timing.jitter)
            }
            Err(error) => {
                state.force_full = true;
                tracing::warn!(
                    version = %version,
                    namespace = %source.namespace,
                    service = %source.service,
                    %error,
                    "Cloud Map discovery failed; keeping the last known endpoints"
                );
                ::metrics::counter!(
                    metrics::DISCOVERY_ERRORS_TOTAL,
                    "version" => version.clone(),
                    "kind" => error.kind(),
                )
                .increment(1);
                sink.discovery_failed(&version, &error);
                backoff.next_delay()
            }
        };
        tokio::time::sleep(delay).await;
    }
}

/// One round: the revision, then the instances when they are due.
async fn round(
    version: &str,
    source: &CloudMapSource,
    discover: &dyn Discover,
    sink: &dyn EndpointSink,
    timing: &PollTiming,
    state: &mut PollState,
) -> Result<(), DiscoveryError> {
    let revision = discover.revision(source).await?;
    let due = state.force_full
        || state.last_revision != Some(revision)
        || Instant::now() >= state.next_full;
    if !due {
        sink.endpoints_confirmed(version);
        return Ok(());
    }
    let list = discover.instances(source).await?;
    // The list's own revision is kept: when the instances changed between the
    // two calls (or the list came from a lagging replica), `revision` is newer
    // than the list, and keeping it would hide the newer list until the next
    // change. A list newer than `revision` is kept as newer. (moto sums
    // per-instance revisions over the filtered list only: with a health or
    // query filter that drops instances, its list revision never equals its
    // DiscoverInstancesRevision, and every round fetches: more calls, same
    // endpoints.)
    tracing::debug!(
        version,
        revision,
        list_revision = list.revision,
        endpoints = list.endpoints.len(),
        "Cloud Map endpoints discovered"
    );
    sink.endpoints_discovered(version, list.endpoints);
    state.last_revision = list.revision;
    state.force_full = false;
    state.next_full = Instant::now() + jitter(timing.full_interval, timing.jitter);
    Ok(())
}

#[cfg(test)]
mod tests;
