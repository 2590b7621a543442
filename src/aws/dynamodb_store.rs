//! Control path: the weights document in one DynamoDB item, shared by every
//! task of the gateway service and written with a real compare-and-set.
//!
//! Table: one string partition key named `pk` (no sort key); the item of this
//! gateway service has `pk` = `[store] key`, so one table can serve several
//! services. Attributes: `doc` (the [`WeightsDoc`] as JSON) and `generation`
//! (a number, the document's generation).
//!
//! * Read: GetItem with `ConsistentRead = true` (a strongly consistent read
//!   returns every write that succeeded before it).
//! * An item without `doc` (removed by hand) reads as no document at all, like
//!   a missing item.
//! * Write: PutItem with `ConditionExpression` `attribute_not_exists(#d)` (no
//!   document read; `#d` = `doc`) or `attribute_not_exists(#d) OR #g = :read_at`
//!   (the generation read):
//!   a concurrent writer fails with `ConditionalCheckFailedException`, which
//!   becomes [`StoreError::Conflict`] with the current document (read again,
//!   consistently).
//! * Throttling (`ProvisionedThroughputExceededException`,
//!   `ThrottlingException`, `RequestLimitExceeded`) becomes
//!   [`StoreError::Throttled`]: the poll backs off.
//! * Each task's report (which generation it runs) lives in a second item,
//!   `pk` = `<key>#tasks`: see [`reports`].

use aws_config::SdkConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::aws::errors;
use crate::future::BoxFuture;
use crate::store::{MAX_GENERATION, Store, StoreError, TaskReport, WeightsDoc};

/// The partition key attribute.
pub const PARTITION_KEY: &str = "pk";
/// The attribute that holds the document's JSON.
pub const DOC_ATTRIBUTE: &str = "doc";
/// The attribute that holds the generation (the write's condition).
pub const GENERATION_ATTRIBUTE: &str = "generation";
pub mod reports;

/// The error code of a failed condition.
const CONDITION_FAILED: &str = "ConditionalCheckFailedException";

/// A [`Store`] in one DynamoDB item.
#[derive(Debug, Clone)]
pub struct DynamoDbStore {
    client: Client,
    table: String,
    key: String,
}

impl DynamoDbStore {
    /// The item `pk` = `key` of `table`.
    pub fn new(sdk_config: &SdkConfig, table: impl Into<String>, key: impl Into<String>) -> Self {
        Self::from_client(Client::new(sdk_config), table, key)
    }

    /// A store using a client built by the caller.
    pub fn from_client(client: Client, table: impl Into<String>, key: impl Into<String>) -> Self {
        DynamoDbStore {
            client,
            table: table.into(),
            key: key.into(),
        }
    }

    fn error<E>(&self, operation: &str, err: &SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let message = format!(
            "{operation} {}/{}: {}",
            self.table,
            self.key,
            errors::describe(err)
        );
        errors::store_error(err, message, StoreError::DynamoDb)
    }

    async fn get(&self) -> Result<Option<WeightsDoc>, StoreError> {
        self.get_item().await.map(|(doc, _)| doc)
    }

    /// The document and the item's `generation` attribute.
    async fn get_item(&self) -> Result<(Option<WeightsDoc>, Option<u64>), StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(self.key.clone()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.error("GetItem", &e))?;
        let Some(item) = out.item() else {
            return Ok((None, None));
        };
        // One above the highest generation (edited by hand) is unreadable,
        // like one that is no number: no write is conditional on it.
        let generation = match item.get(GENERATION_ATTRIBUTE) {
            Some(AttributeValue::N(n)) => n.parse().ok().filter(|&g| g <= MAX_GENERATION),
            _ => None,
        };
        let json = match item.get(DOC_ATTRIBUTE) {
            Some(AttributeValue::S(json)) => json,
            // The document was removed from the item: nothing is stored.
            None => return Ok((None, generation)),
            Some(_) => {
                return Err(StoreError::Unparseable {
                    message: format!(
                        "DynamoDB item {}/{} has no string attribute `{DOC_ATTRIBUTE}`",
                        self.table, self.key
                    ),
                    generation,
                });
            }
        };
        match serde_json::from_str(json) {
            Ok(doc) => Ok((Some(doc), generation)),
            Err(e) => Err(StoreError::Unparseable {
                message: format!("DynamoDB item {}/{}: {e}", self.table, self.key),
                generation,
            }),
        }
    }

    async fn put(&self, doc: &WeightsDoc, read_at: Option<u64>) -> Result<(), StoreError> {
        let json = serde_json::to_string(doc).map_err(|e| {
            StoreError::Invalid(format!("cannot serialize the weights document: {e}"))
        })?;
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PARTITION_KEY, AttributeValue::S(self.key.clone()))
            .item(DOC_ATTRIBUTE, AttributeValue::S(json))
            .item(
                GENERATION_ATTRIBUTE,
                AttributeValue::N(doc.generation.to_string()),
            );
        put = put.expression_attribute_names("#d", DOC_ATTRIBUTE);
        put = match read_at {
            // Nothing stored, or a document that does not parse without a
            // generation that reads beside it (a hand edit): written only
            // while that is still so, so that a fix made meanwhile stays.
            None => put
                .condition_expression(
                    "attribute_not_exists(#d) OR attribute_not_exists(#g) \
                     OR NOT attribute_type(#g, :number) OR #g > :max OR #g < :zero",
                )
                .expression_attribute_names("#g", GENERATION_ATTRIBUTE)
                .expression_attribute_values(":number", AttributeValue::S("N".into()))
                .expression_attribute_values(":max", AttributeValue::N(MAX_GENERATION.to_string()))
                .expression_attribute_values(":zero", AttributeValue::N("0".into())),
            Some(generation) => put
                .condition_expression("attribute_not_exists(#d) OR #g = :read_at")
                .expression_attribute_names("#g", GENERATION_ATTRIBUTE)
                .expression_attribute_values(":read_at", AttributeValue::N(generation.to_string())),
        };
        match put.send().await {
            Ok(_) => Ok(()),
            Err(e) if errors::error_code(&e) == Some(CONDITION_FAILED) => {
                let (current, attribute) = self.get_item().await?;
                // The SDK retries a PutItem whose answer was lost (a time-out, a
                // 5xx); when the first attempt was applied, the retry fails its
                // condition against our own write. That write won: not a conflict.
                if current.as_ref().is_some_and(|c| c == doc) {
                    return Ok(());
                }
                // Still the document read, yet the condition on its
                // generation failed: the item's `generation` attribute
                // disagrees with it (a hand edit). Retrying cannot help.
                if let (Some(c), Some(read)) = (&current, read_at)
                    && c.generation == read
                    && attribute != Some(read)
                {
                    return Err(StoreError::Inconsistent(format!(
                        "DynamoDB item {}/{}: its `{GENERATION_ATTRIBUTE}` attribute ({}) does not match the generation of its `{DOC_ATTRIBUTE}` ({read}); set `{GENERATION_ATTRIBUTE}` to {read} (or delete the item)",
                        self.table,
                        self.key,
                        attribute.map_or("missing".to_string(), |a| a.to_string()),
                    )));
                }
                Err(StoreError::Conflict(current.map(Box::new)))
            }
            Err(e) => {
                // An attempt may have been applied and its answer lost (the
                // SDK's retries ran out, or the call timed out): a strongly
                // consistent read tells.
                let error = self.error("PutItem", &e);
                match self.get().await {
                    Ok(current) if current.as_ref() == Some(doc) => Ok(()),
                    Ok(_) => Err(error),
                    Err(read) => Err(StoreError::Unconfirmed(format!(
                        "{error}; reading it back failed too: {read}"
                    ))),
                }
            }
        }
    }
}

impl Store for DynamoDbStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<WeightsDoc>, StoreError>> {
        Box::pin(self.get())
    }

    fn save<'a>(
        &'a self,
        doc: &'a WeightsDoc,
        read_at: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.put(doc, read_at))
    }

    fn shared(&self) -> bool {
        true
    }

    fn report<'a>(
        &'a self,
        report: &'a TaskReport,
    ) -> BoxFuture<'a, Result<Option<Vec<TaskReport>>, StoreError>> {
        Box::pin(async move { self.put_report(report).await.map(Some) })
    }

    fn withdraw<'a>(&'a self, task: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.remove_report(task))
    }
}
