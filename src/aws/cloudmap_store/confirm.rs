//! A Cloud Map store write made as safe as it can be without a conditional
//! write: write, then read back until the own document is seen or a newer one
//! wins (see the parent module and docs/fleet.md for the window that remains).

use std::time::Duration;

use crate::future::BoxFuture;
use crate::store::{StoreError, WeightsDoc, next_generation};

/// The attribute that holds the document: a plain read and a plain write.
pub(super) trait Attribute: Sync {
    fn get(&self) -> BoxFuture<'_, Result<Option<WeightsDoc>, StoreError>>;
    fn put<'a>(&'a self, doc: &'a WeightsDoc) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Names the attribute's service in errors.
    fn name(&self) -> &str;
}

/// Writes `doc`, then reads back every `pause` for at most `limit`:
///
/// * the own document: saved;
/// * a newer one in the decisions' order: [`StoreError::Conflict`] (unless it
///   says the same as the own one: then the own decision is in force);
/// * another writer's document of the same generation that sorts before the
///   own one: it replaced the own one (it was written later), so it wins; it is
///   written again one generation up, so that a task that saw the own document
///   moves on to it too, and the answer is a conflict with it;
/// * an older document or none: a read that lags behind; read again.
pub(super) async fn write_confirmed(
    attribute: &dyn Attribute,
    doc: &WeightsDoc,
    limit: Duration,
    pause: Duration,
) -> Result<(), StoreError> {
    attribute.put(doc).await?;
    let deadline = tokio::time::Instant::now() + limit;
    let mut own = doc.clone();
    let mut republished = false;
    loop {
        // The write was made: a failed read is read again until the deadline.
        let (seen, read_failed) = match attribute.get().await {
            Ok(seen) => (seen, None),
            Err(e) => (None, Some(e)),
        };
        match seen {
            Some(seen) if seen == own => {
                return if republished {
                    Err(StoreError::Conflict(Some(Box::new(own))))
                } else {
                    Ok(())
                };
            }
            Some(seen) if seen.is_newer_than(&own) => {
                if !republished && seen.stable == doc.stable && seen.weights == doc.weights {
                    return Ok(());
                }
                return Err(StoreError::Conflict(Some(Box::new(seen))));
            }
            Some(seen) if seen.generation == own.generation && !republished => {
                let generation = next_generation(own.generation)
                    .map_err(|e| StoreError::Invalid(e.to_string()))?;
                own = WeightsDoc {
                    generation,
                    writer: own.writer.clone(),
                    updated_at_ms: own.updated_at_ms.max(seen.updated_at_ms),
                    ..seen
                };
                attribute.put(&own).await?;
                republished = true;
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            let why = match read_failed {
                Some(e) => format!("reading it back failed: {e}"),
                None => "GetServiceAttributes did not show it".into(),
            };
            return Err(StoreError::Unconfirmed(format!(
                "UpdateServiceAttributes {}: written, but within {} ms {why}",
                attribute.name(),
                limit.as_millis()
            )));
        }
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::store::memory::doc;

    /// Answers reads from a script (then repeats the last write), records writes.
    #[derive(Default)]
    struct Scripted {
        reads: Mutex<VecDeque<Option<WeightsDoc>>>,
        writes: Mutex<Vec<WeightsDoc>>,
        /// Reads that fail first.
        failing: std::sync::atomic::AtomicUsize,
    }

    impl Attribute for Scripted {
        fn get(&self) -> BoxFuture<'_, Result<Option<WeightsDoc>, StoreError>> {
            use std::sync::atomic::Ordering::SeqCst;
            if self
                .failing
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Box::pin(async { Err(StoreError::Throttled("test".into())) });
            }
            let next = self.reads.lock().unwrap().pop_front();
            let last = self.writes.lock().unwrap().last().cloned();
            Box::pin(async move { Ok(next.unwrap_or(last)) })
        }

        fn put<'a>(&'a self, doc: &'a WeightsDoc) -> BoxFuture<'a, Result<(), StoreError>> {
            self.writes.lock().unwrap().push(doc.clone());
            Box::pin(async { Ok(()) })
        }

        fn name(&self) -> &str {
            "srv-test"
        }
    }

    async fn run(
        reads: Vec<Option<WeightsDoc>>,
        own: &WeightsDoc,
    ) -> (Result<(), StoreError>, Vec<WeightsDoc>) {
        run_failing(0, reads, own).await
    }

    /// [`run`] whose first `failing` reads fail.
    async fn run_failing(
        failing: usize,
        reads: Vec<Option<WeightsDoc>>,
        own: &WeightsDoc,
    ) -> (Result<(), StoreError>, Vec<WeightsDoc>) {
        let attribute = Scripted {
            reads: Mutex::new(reads.into()),
            writes: Mutex::new(Vec::new()),
            failing: failing.into(),
        };
        let result = write_confirmed(
            &attribute,
            own,
            Duration::from_millis(200),
            Duration::from_millis(5),
        )
        .await;
        (result, attribute.writes.into_inner().unwrap())
    }

    #[tokio::test]
    async fn lagging_reads_are_waited_out_until_the_own_write_shows() {
        let own = doc(5, "b", 10);
        let (result, writes) = run(vec![None, Some(doc(4, "a", 50))], &own).await;
        result.unwrap();
        assert_eq!(writes, vec![own]);
    }

    #[tokio::test]
    async fn a_newer_document_wins() {
        let own = doc(5, "b", 10);
        let newer = doc(6, "a", 50);
        let (result, _) = run(vec![Some(newer.clone())], &own).await;
        match result {
            Err(StoreError::Conflict(Some(current))) => assert_eq!(*current, newer),
            other => panic!("{other:?}"),
        }
        // Same generation, a writer id that sorts after the own one: newer too.
        let (result, _) = run(vec![Some(doc(5, "c", 50))], &own).await;
        assert!(matches!(result, Err(StoreError::Conflict(Some(_)))));
    }

    #[tokio::test]
    async fn a_later_write_of_the_same_generation_wins_and_is_republished_above() {
        let own = doc(5, "b", 10);
        let other = doc(5, "a", 50);
        let (result, writes) = run(vec![Some(other.clone())], &own).await;
        let republished = match result {
            Err(StoreError::Conflict(Some(current))) => *current,
            other => panic!("{other:?}"),
        };
        assert_eq!(republished.generation, 6);
        assert_eq!(republished.weights, other.weights);
        assert!(republished.is_newer_than(&own) && republished.is_newer_than(&other));
        assert_eq!(writes, vec![own, republished]);
    }

    #[tokio::test]
    async fn a_write_never_seen_is_an_error() {
        let own = doc(5, "b", 10);
        let stale: Vec<Option<WeightsDoc>> = (0..1000).map(|_| Some(doc(4, "a", 50))).collect();
        let (result, _) = run(stale, &own).await;
        match result {
            Err(StoreError::Unconfirmed(message)) => {
                assert!(message.contains("did not show it"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// The write was made: a read that fails is read again, and one that
    /// never answers leaves the outcome unknown (not "nothing changed").
    #[tokio::test]
    async fn failed_reads_after_the_write_are_read_again() {
        let own = doc(5, "b", 10);
        let (result, writes) = run_failing(3, Vec::new(), &own).await;
        result.unwrap();
        assert_eq!(writes, vec![own.clone()]);
        let (result, _) = run_failing(usize::MAX, Vec::new(), &own).await;
        match result {
            Err(StoreError::Unconfirmed(message)) => {
                assert!(message.contains("reading it back failed"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
}
