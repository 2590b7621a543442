//! Control path: a store that lost the fleet's decision. Its weights
//! document was deleted (the DynamoDB item or its `doc`, the Cloud Map
//! attribute) or rolled back to an older generation (a restore) while the
//! tasks ran: left alone, the running tasks keep their decision, a task that
//! starts joins on the config file's weights, and a change made there (a
//! lower generation) is never applied by the others. A running task that
//! finds the store behind the decision it runs writes that decision back
//! (re-seeds), so that every task, a new one included, runs it again.
//!
//! * Empty store on a store with compare-and-set (DynamoDB): written at once,
//!   conditional on the document still being absent.
//! * An older generation (DynamoDB), or anything behind on a store without
//!   compare-and-set (Cloud Map, whose reads may lag): only once two
//!   consecutive reads agree; on DynamoDB conditional on the generation read.
//! * Only a task that runs a decision from the store (generation above 0, not
//!   the config file's weights of a task that could not read the store)
//!   re-seeds; a task that started against the empty store keeps the file's
//!   weights and adopts the re-seeded document at its next poll (it is newer).
//! * `/status` warns from the first read that finds the store behind; the
//!   warning then says who wrote the decision back: this task, another task
//!   (its conditional write lost, or a later read finds the store holding
//!   the decision again before this task wrote it).

use super::{Control, UNREAD_STORE_WRITER};
use crate::metrics as names;
use crate::store::{StoreError, WeightsDoc, unix_ms};

/// What a read of the store answered that was behind this task's decision:
/// `None` for no document, else the order of the document read.
pub(super) type Behind = Option<(u64, String, u64)>;

/// A store found behind the decision in force, as `/status` warns about it.
#[derive(Debug, Clone)]
pub(super) struct BehindNote {
    /// The generation this task ran when it found the store behind (the
    /// warning shows while it still runs it).
    pub generation: u64,
    /// The warning.
    pub warning: String,
}

impl Control {
    /// Called with what a poll read (`seen`): whether it is behind the
    /// decision in force and confirmed enough to be written over now (see
    /// the module's doc). Keeps what it saw for the next poll.
    pub(super) fn store_behind(&self, seen: Option<&WeightsDoc>) -> bool {
        let mut state = self.lock();
        let d = &state.decision;
        let from_store = d.generation > 0 && d.writer != UNREAD_STORE_WRITER;
        let behind = from_store && seen.is_none_or(|s| s.generation < d.generation);
        if !behind {
            // A store this task found behind (and has not written back) is
            // no longer: another task wrote the decision back (or the read
            // that missed it lagged). The note that says the store is behind
            // and that this task writes it back is no longer true.
            let generation = d.generation;
            if let Some(lost) = state.behind_seen.take() {
                state.behind_note = seen.filter(|_| from_store).map(|s| {
                    tracing::info!(generation, store = s.generation, "the weight store holds the fleet's decision again: another task wrote it back");
                    BehindNote {
                        generation,
                        warning: format!(
                            "the weight store had lost the fleet's decision ({}); it holds generation {} again: another task wrote it back (or the read that missed it lagged)",
                            lost.map_or("no document".to_string(), |(g, _, _)| format!("generation {g}")),
                            s.generation
                        ),
                    }
                });
            }
            return false;
        }
        let now: Behind = seen.map(|s| (s.generation, s.writer.clone(), s.updated_at_ms));
        let what = match seen {
            None => "no weights document".to_string(),
            Some(s) => format!("generation {} (older)", s.generation),
        };
        let generation = d.generation;
        let confirmed = state.behind_seen.as_ref() == Some(&now);
        let at_once = seen.is_none() && self.store.compare_and_set();
        if state.behind_seen.is_none() {
            tracing::warn!(target: "audit", generation, store = %what, "the weight store is behind the decision this task runs (its document was deleted or restored from an older copy): writing this task's decision back");
            metrics::counter!(names::STORE_BEHIND_TOTAL, "result" => "found").increment(1);
            state.behind_note = Some(BehindNote {
                generation,
                warning: format!(
                    "the weight store holds {what} while this task runs generation {generation}: its document was deleted or restored; this task writes its decision back"
                ),
            });
        }
        state.behind_seen = Some(now);
        at_once || confirmed
    }

    /// Writes the decision in force back over `seen` (what the poll read),
    /// conditional on it still being there (DynamoDB). Skipped when a
    /// decision of this task holds the decisions' turn (it writes the store
    /// itself; the next poll looks again).
    pub(super) async fn reseed(&self, seen: Option<WeightsDoc>) -> Result<(), StoreError> {
        let Ok(_turn) = self.decisions.try_lock() else {
            return Ok(());
        };
        let doc = {
            let state = self.lock();
            if state.pending_rollback.is_some() {
                return Ok(());
            }
            let d = state.decision.clone();
            // Adopted decisions carry `store (...)`: written back as made.
            let source = d
                .source
                .strip_prefix("store (")
                .and_then(|s| s.strip_suffix(')'))
                .map(str::to_string)
                .unwrap_or_else(|| d.source.clone());
            WeightsDoc { source, ..d }
        };
        let read_at = seen.as_ref().map(|s| s.generation);
        let saved = self.store.save(&doc, read_at).await;
        match saved {
            Ok(()) => {
                self.store_outcome("save", Ok(()));
                tracing::warn!(target: "audit", generation = doc.generation, over = ?read_at, "wrote this task's decision back to the weight store (re-seeded)");
                metrics::counter!(names::STORE_BEHIND_TOTAL, "result" => "reseeded").increment(1);
                let mut state = self.lock();
                state.behind_seen = None;
                state.behind_note = Some(BehindNote {
                    generation: doc.generation,
                    warning: format!(
                        "the weight store had lost the fleet's decision ({}); this task wrote its decision (generation {}) back at {} ms",
                        read_at.map_or("no document".to_string(), |g| format!("generation {g}")),
                        doc.generation,
                        unix_ms()
                    ),
                });
                Ok(())
            }
            Err(StoreError::Conflict(current)) => {
                metrics::counter!(names::STORE_OPERATIONS_TOTAL, "op" => "save", "result" => "conflict").increment(1);
                metrics::counter!(names::STORE_BEHIND_TOTAL, "result" => "conflict").increment(1);
                tracing::info!(
                    generation = doc.generation,
                    "another task wrote the weight store first: not re-seeding"
                );
                {
                    let mut state = self.lock();
                    state.behind_seen = None;
                    state.behind_note = Some(BehindNote {
                        generation: doc.generation,
                        warning: format!(
                            "the weight store had lost the fleet's decision ({}); another task wrote it back first",
                            read_at
                                .map_or("no document".to_string(), |g| format!("generation {g}"))
                        ),
                    });
                }
                if let Some(current) = current {
                    self.adopt(*current);
                }
                Ok(())
            }
            Err(e) => {
                self.store_outcome("save", Err(&e));
                tracing::warn!(error = %e, "could not write this task's decision back to the weight store");
                Err(e)
            }
        }
    }
}
