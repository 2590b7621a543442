//! The tasks' reports in DynamoDB: one item per gateway service beside the
//! weights document's, `pk` = `<key>#tasks`, whose map attribute `tasks` holds
//! one entry per task (task id -> the [`TaskReport`] as JSON).
//!
//! * A task writes only its own entry: UpdateItem `SET #tasks.#id = :report`
//!   with `ReturnValues = ALL_NEW`, so the same call answers every task's
//!   report (no extra read). The weights item is never touched: a report
//!   cannot race with the conditional PutItem of a decision.
//! * A nested path needs its map: the write is conditional on
//!   `attribute_exists(#tasks)`; when that fails (first report of the
//!   service) the map is created with `SET #tasks = if_not_exists(#tasks, :empty)`
//!   (two tasks doing it at once both keep an empty or existing map) and the
//!   write is made again.
//! * A stopping task removes its entry (`REMOVE #tasks.#id`); entries of tasks
//!   that vanished without it are removed by the other tasks after
//!   [`PRUNE_AFTER`], each removal conditional on the entry being the one
//!   seen (a task that came back is never removed), a few per report.
//! * Size: an entry is about 200 bytes; the item's 400 KB limit allows about
//!   2,000 tasks. An UpdateItem costs one write unit per KB of the item.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};

use super::{CONDITION_FAILED, DynamoDbStore, PARTITION_KEY};
use crate::aws::errors;
use crate::store::{StoreError, TaskReport, unix_ms};

/// The map attribute of the reports item.
pub const TASKS_ATTRIBUTE: &str = "tasks";
/// What is appended to `[store] key` for the reports item's `pk`.
pub const TASKS_KEY_SUFFIX: &str = "#tasks";
/// A report not renewed for this long belongs to a task that is gone.
pub const PRUNE_AFTER: Duration = Duration::from_secs(600);
/// At most this many gone tasks' entries are removed per report.
const PRUNE_PER_REPORT: usize = 2;

impl DynamoDbStore {
    fn tasks_key(&self) -> AttributeValue {
        AttributeValue::S(format!("{}{TASKS_KEY_SUFFIX}", self.key))
    }

    /// Writes `report` into its entry and answers every entry.
    pub(super) async fn put_report(
        &self,
        report: &TaskReport,
    ) -> Result<Vec<TaskReport>, StoreError> {
        let json = serde_json::to_string(report)
            .map_err(|e| StoreError::Invalid(format!("cannot serialize the task report: {e}")))?;
        let mut created = false;
        loop {
            let sent = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(PARTITION_KEY, self.tasks_key())
                .update_expression("SET #tasks.#id = :report")
                .condition_expression("attribute_exists(#tasks)")
                .expression_attribute_names("#tasks", TASKS_ATTRIBUTE)
                .expression_attribute_names("#id", &report.task)
                .expression_attribute_values(":report", AttributeValue::S(json.clone()))
                .return_values(ReturnValue::AllNew)
                .send()
                .await;
            match sent {
                Ok(out) => {
                    let entries = entries(out.attributes());
                    self.prune(&entries).await;
                    return Ok(entries.into_iter().map(|(_, r, _)| r).collect());
                }
                Err(e) if !created && errors::error_code(&e) == Some(CONDITION_FAILED) => {
                    self.create_tasks_map().await?;
                    created = true;
                }
                Err(e) => return Err(self.error("UpdateItem (task report)", &e)),
            }
        }
    }

    /// Creates the reports item's map when it does not exist (keeps it when it does).
    async fn create_tasks_map(&self) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, self.tasks_key())
            .update_expression("SET #tasks = if_not_exists(#tasks, :empty)")
            .expression_attribute_names("#tasks", TASKS_ATTRIBUTE)
            .expression_attribute_values(":empty", AttributeValue::M(HashMap::new()))
            .send()
            .await
            .map_err(|e| self.error("UpdateItem (task reports map)", &e))?;
        Ok(())
    }

    /// Removes the entry of `task` (nothing to do when there is none).
    pub(super) async fn remove_report(&self, task: &str) -> Result<(), StoreError> {
        self.remove_entry(task, None).await
    }

    /// Removes `task`'s entry; with `seen`, only while it is still that value.
    async fn remove_entry(&self, task: &str, seen: Option<&str>) -> Result<(), StoreError> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, self.tasks_key())
            .update_expression("REMOVE #tasks.#id")
            .expression_attribute_names("#tasks", TASKS_ATTRIBUTE)
            .expression_attribute_names("#id", task);
        update = match seen {
            Some(value) => update
                .condition_expression("#tasks.#id = :seen")
                .expression_attribute_values(":seen", AttributeValue::S(value.to_string())),
            None => update.condition_expression("attribute_exists(#tasks.#id)"),
        };
        match update.send().await {
            Ok(_) => Ok(()),
            Err(e) if errors::error_code(&e) == Some(CONDITION_FAILED) => Ok(()),
            Err(e) => Err(self.error("UpdateItem (remove task report)", &e)),
        }
    }

    /// Removes a few entries of tasks gone for longer than [`PRUNE_AFTER`].
    async fn prune(&self, entries: &[(String, TaskReport, String)]) {
        let cutoff = unix_ms().saturating_sub(PRUNE_AFTER.as_millis() as u64);
        let gone = entries
            .iter()
            .filter(|(_, r, _)| r.reported_at_ms < cutoff)
            .take(PRUNE_PER_REPORT);
        for (task, _, raw) in gone {
            match self.remove_entry(task, Some(raw)).await {
                Ok(()) => {
                    tracing::info!(task = %task, "removed the report of a gateway task gone for long")
                }
                Err(e) => {
                    tracing::warn!(task = %task, error = %e, "could not remove a gone task's report")
                }
            }
        }
    }
}

/// The entries of the reports item: (map key, report, the stored JSON). An
/// entry that does not parse is skipped (a newer gateway's format, or damage).
fn entries(item: Option<&HashMap<String, AttributeValue>>) -> Vec<(String, TaskReport, String)> {
    let Some(AttributeValue::M(map)) = item.and_then(|i| i.get(TASKS_ATTRIBUTE)) else {
        return Vec::new();
    };
    let mut out: Vec<_> = map
        .iter()
        .filter_map(|(task, value)| {
            let AttributeValue::S(json) = value else {
                return None;
            };
            match serde_json::from_str::<TaskReport>(json) {
                Ok(report) => Some((task.clone(), report, json.clone())),
                Err(e) => {
                    tracing::warn!(task = %task, error = %e, "ignoring a task report that does not parse");
                    None
                }
            }
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
