//! A Cloud Map store write made as safe as it can be without a conditional
//! write: write, then read back until the own document is seen and is still
//! there a settle time later, or another writer's document wins (see the
//! parent module and docs/fleet.md for the window that remains).

use std::time::Duration;

use tokio::time::Instant;

use crate::future::BoxFuture;
use crate::store::{StoreError, WeightsDoc, next_generation};

/// The attribute that holds the document: a plain read and a plain write.
pub(super) trait Attribute: Sync {
    fn get(&self) -> BoxFuture<'_, Result<Option<WeightsDoc>, StoreError>>;
    fn put<'a>(&'a self, doc: &'a WeightsDoc) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Names the attribute's service in errors.
    fn name(&self) -> &str;
}

/// How a write is read back: every `pause`, for at most `limit` after the
/// write until the own document shows; once it showed, until a read made
/// `settle` after that first sighting (the limit is stretched to it).
#[derive(Debug, Clone, Copy)]
pub(super) struct ReadBack {
    pub limit: Duration,
    pub pause: Duration,
    pub settle: Duration,
}

/// Writes `doc`, then reads it back (see [`ReadBack`]); each read showing
///
/// * the own document: seen. The write counts as saved only when a read
///   made at least `settle` after the first sighting still shows it: a
///   racing task that read the store before the own write was visible
///   writes its document of the same generation on top of it within about
///   one call's time, and that must show before the own write is confirmed;
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
    read_back: ReadBack,
) -> Result<(), StoreError> {
    attribute.put(doc).await?;
    let written = Instant::now();
    let mut deadline = written + read_back.limit;
    let mut own = doc.clone();
    let mut republished = false;
    // When a read first showed the own document (it was issued then).
    let mut first_seen: Option<Instant> = None;
    loop {
        let read_at = Instant::now();
        // The write was made: a failed read is read again until the deadline.
        let (seen, read_failed) = match attribute.get().await {
            Ok(seen) => (seen, None),
            Err(e) => (None, Some(e)),
        };
        match seen {
            Some(seen) if seen == own => {
                if republished {
                    return Err(StoreError::Conflict(Some(Box::new(own))));
                }
                let first = *first_seen.get_or_insert(read_at);
                if read_at >= first + read_back.settle {
                    return Ok(());
                }
                deadline = deadline.max(first + read_back.settle);
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
        if Instant::now() >= deadline {
            let why = match (read_failed, first_seen) {
                (Some(e), None) => format!("reading it back failed: {e}"),
                (None, None) => "GetServiceAttributes did not show it".into(),
                (Some(e), Some(_)) => format!(
                    "it was read back, but reading it again after the {} ms settle time failed: {e}",
                    read_back.settle.as_millis()
                ),
                (None, Some(_)) => format!(
                    "it was read back, but GetServiceAttributes did not show it again after the {} ms settle time",
                    read_back.settle.as_millis()
                ),
            };
            return Err(StoreError::Unconfirmed(format!(
                "UpdateServiceAttributes {}: written, but within {} ms {why}",
                attribute.name(),
                deadline.duration_since(written).as_millis()
            )));
        }
        // The read that ends the settle is made on time, not up to a pause
        // late; reads after it keep the pause.
        let now = Instant::now();
        let mut next = now + read_back.pause;
        if let Some(first) = first_seen
            && !republished
            && first + read_back.settle > now
        {
            next = next.min(first + read_back.settle);
        }
        tokio::time::sleep_until(next).await;
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
        let result = write_confirmed(&attribute, own, READ_BACK).await;
        (result, attribute.writes.into_inner().unwrap())
    }

    const READ_BACK: ReadBack = ReadBack {
        limit: Duration::from_millis(200),
        pause: Duration::from_millis(5),
        settle: Duration::from_millis(40),
    };

    #[tokio::test]
    async fn lagging_reads_are_waited_out_until_the_own_write_shows() {
        let own = doc(5, "b", 10);
        let (result, writes) = run(vec![None, Some(doc(4, "a", 50))], &own).await;
        result.unwrap();
        assert_eq!(writes, vec![own]);
    }

    /// Seen once is not enough: the own document must still be there a
    /// settle time later.
    #[tokio::test]
    async fn a_write_is_confirmed_only_after_the_settle_time() {
        let own = doc(5, "b", 10);
        let started = tokio::time::Instant::now();
        let (result, writes) = run(Vec::new(), &own).await;
        result.unwrap();
        assert!(
            started.elapsed() >= READ_BACK.settle,
            "{:?}",
            started.elapsed()
        );
        assert_eq!(writes, vec![own.clone()]);
        // Reads that lag behind after the sighting are waited out too.
        let (result, _) = run(vec![Some(own.clone()), Some(doc(4, "a", 50)), None], &own).await;
        result.unwrap();
        // Seen, then never again: the outcome is unknown. The reads after
        // the settle time keep the pause between them.
        let attribute = Scripted {
            reads: Mutex::new(
                std::iter::once(Some(own.clone()))
                    .chain((0..1000).map(|_| Some(doc(4, "a", 50))))
                    .collect(),
            ),
            ..Scripted::default()
        };
        let result = write_confirmed(&attribute, &own, READ_BACK).await;
        match result {
            Err(StoreError::Unconfirmed(message)) => {
                assert!(message.contains("did not show it again"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        let made = 1001 - attribute.reads.lock().unwrap().len();
        let paced = (READ_BACK.limit.as_millis() / READ_BACK.pause.as_millis()) as usize;
        assert!(made <= paced + 2, "{made} reads in {:?}", READ_BACK.limit);
    }

    /// Two writers of one attribute; the second one's write waits until the
    /// first one has read its own write back once.
    struct Race {
        doc: Mutex<Option<WeightsDoc>>,
        first_read: tokio::sync::watch::Sender<bool>,
    }

    struct Writer<'a> {
        race: &'a Race,
        late: bool,
        puts: std::sync::atomic::AtomicUsize,
    }

    impl Attribute for Writer<'_> {
        fn get(&self) -> BoxFuture<'_, Result<Option<WeightsDoc>, StoreError>> {
            let seen = self.race.doc.lock().unwrap().clone();
            if !self.late {
                self.race.first_read.send_replace(true);
            }
            Box::pin(async { Ok(seen) })
        }

        fn put<'a>(&'a self, doc: &'a WeightsDoc) -> BoxFuture<'a, Result<(), StoreError>> {
            use std::sync::atomic::Ordering::SeqCst;
            let wait = self.late && self.puts.fetch_add(1, SeqCst) == 0;
            Box::pin(async move {
                if wait {
                    let mut read = self.race.first_read.subscribe();
                    read.wait_for(|read| *read).await.unwrap();
                }
                *self.race.doc.lock().unwrap() = Some(doc.clone());
                Ok(())
            })
        }

        fn name(&self) -> &str {
            "srv-test"
        }
    }

    /// Two tasks write `first` and `second`, of the same generation, at the
    /// same moment; `second` lands on top just after `first` was read back.
    /// Answers both outcomes and what the attribute holds in the end.
    async fn race(
        first: &WeightsDoc,
        second: &WeightsDoc,
    ) -> (
        Result<(), StoreError>,
        Result<(), StoreError>,
        Option<WeightsDoc>,
    ) {
        let race = Race {
            doc: Mutex::new(Some(doc(first.generation - 1, "z", 0))),
            first_read: tokio::sync::watch::channel(false).0,
        };
        let writer = |late| Writer {
            race: &race,
            late,
            puts: 0.into(),
        };
        let (early, late) = (writer(false), writer(true));
        let (a, b) = tokio::join!(
            write_confirmed(&early, first, READ_BACK),
            write_confirmed(&late, second, READ_BACK),
        );
        (a, b, race.doc.into_inner().unwrap())
    }

    /// The write that landed first was read back before the other landed
    /// on top: it is the loser (409 with the winner's weights), the one the
    /// store keeps answers 200. Here the later write sorts after the
    /// overwritten one: newer in the order, a plain conflict.
    #[tokio::test]
    async fn a_same_generation_write_landing_after_the_read_back_and_sorting_after_wins() {
        let (first, second) = (doc(3, "a", 10), doc(3, "b", 20));
        let (a, b, kept) = race(&first, &second).await;
        match a {
            Err(StoreError::Conflict(Some(current))) => assert_eq!(*current, second),
            other => panic!("the overwritten write answered {other:?}"),
        }
        b.unwrap();
        assert_eq!(kept, Some(second));
    }

    /// As above, but the later write sorts before the overwritten one: the
    /// loser writes it again one generation up and answers 409 with that;
    /// the winner reads its weights one up and answers 200.
    #[tokio::test]
    async fn a_same_generation_write_landing_after_the_read_back_and_sorting_first_wins() {
        let (first, second) = (doc(3, "b", 10), doc(3, "a", 20));
        let (a, b, kept) = race(&first, &second).await;
        let current = match a {
            Err(StoreError::Conflict(Some(current))) => *current,
            other => panic!("the overwritten write answered {other:?}"),
        };
        assert_eq!((current.generation, &current.weights), (4, &second.weights));
        b.unwrap();
        let kept = kept.unwrap();
        assert_eq!((kept.generation, kept.weights), (4, second.weights));
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
