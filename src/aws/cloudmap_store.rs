//! Control path: the weights document kept in a Cloud Map service's attributes,
//! shared by every replica of the gateway.
//!
//! Layout: one service attribute, [`DOC_ATTRIBUTE`], holds the compact JSON of
//! the [`WeightsDoc`], with every non-ASCII character escaped (attribute values
//! are printable ASCII). Cloud Map caps a value at 1,024 characters; a larger
//! document is refused with [`StoreError::CloudMap`] rather than split, so that
//! every save stays one atomic UpdateServiceAttributes call. Other attributes
//! of the service are left alone.
//!
//! Cloud Map has no conditional write and documents no read-after-write
//! guarantee for UpdateServiceAttributes, so a save is followed by reads until
//! the own write is seen and is still seen `READ_BACK_SETTLE` later (saved),
//! or a newer document in the decisions' order wins ([`StoreError::Conflict`]).
//! The settle time lets a racing task's write of the same generation, landing
//! on top just after the own first read-back, show (without it, two tasks
//! racing on moto both answered 200). When another task's document of the same
//! generation overwrote the own one, it is written again one generation up, so
//! that a task which saw the own document moves on to it as well. What stays
//! open (see docs/fleet.md): a racing write that lands, or reaches this task's
//! reads, more than the settle time after the own document was first read
//! back; then both tasks answer 200. The store
//! keeps one of them (the later write), and every task converges on it: a
//! poll that reads another writer's document of the generation in force twice
//! in a row adopts it, whatever their order (`Store::compare_and_set`).

use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_servicediscovery::Client;

use crate::aws::cloudmap::servicediscovery_client;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::aws::errors;
use crate::future::BoxFuture;
use crate::store::{Store, StoreError, WeightsDoc};

/// The service attribute that holds the document.
pub const DOC_ATTRIBUTE: &str = "canary_doc";
/// Cloud Map's limit on an attribute value, in characters.
pub const MAX_VALUE_CHARS: usize = 1024;

mod confirm;

/// How a save reads its write back (see `confirm::write_confirmed`).
const READ_BACK: confirm::ReadBack = confirm::ReadBack {
    // How long a save reads back before it gives up on seeing its write.
    limit: Duration::from_secs(5),
    // Pause between two read-backs.
    pause: Duration::from_millis(200),
    settle: READ_BACK_SETTLE,
};

/// How long the own document must still be read after it was first read
/// back before a save counts as confirmed. A task racing this save (same
/// generation) read the store before this write showed, so its write lands
/// on top about one UpdateServiceAttributes call later (typically well under
/// 0.2 s, more when the SDK retries) and then has to propagate (Cloud Map
/// documents no bound): 0.5 s, two and a half pauses, outlasts a call and a
/// propagation of the same order. It is not longer because it is added to
/// every save, a rollback's too (see [`ROLLBACK_WRITE_WAIT`]).
const READ_BACK_SETTLE: Duration = Duration::from_millis(500);

/// How long a rollback waits for its write to this store before it answers
/// ([`Store::rollback_write_wait`]): a store read, the write, and read-backs
/// every `READ_BACK.pause` until `READ_BACK_SETTLE` after the first sighting
/// take the settle time plus four or five calls, about 1-1.5 s with AWS's
/// 0.1-0.2 s per call, past the 1 s of the other stores; 3 s leaves room for
/// an SDK retry. The rollback is in force on the task meanwhile.
const ROLLBACK_WRITE_WAIT: Duration = Duration::from_secs(3);

/// A [`Store`] in the attributes of one Cloud Map service.
#[derive(Debug, Clone)]
pub struct CloudMapStore {
    /// The Cloud Map client.
    client: Client,
    /// The service that holds the document (`srv-…`).
    service_id: String,
}

impl CloudMapStore {
    /// A store in service `service_id` (`srv-…`).
    pub fn new(sdk_config: &SdkConfig, service_id: impl Into<String>) -> Self {
        Self::from_client(servicediscovery_client(sdk_config), service_id)
    }

    /// A store using a client built by the caller.
    pub fn from_client(client: Client, service_id: impl Into<String>) -> Self {
        CloudMapStore {
            client,
            service_id: service_id.into(),
        }
    }

    /// The service that holds the document.
    pub fn service_id(&self) -> &str {
        &self.service_id
    }

    fn error<E>(&self, operation: &str, err: &SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let message = format!("{operation} {}: {}", self.service_id, errors::describe(err));
        errors::store_error(err, message, StoreError::CloudMap)
    }

    async fn get(&self) -> Result<Option<WeightsDoc>, StoreError> {
        let out = self
            .client
            .get_service_attributes()
            .service_id(&self.service_id)
            .send()
            .await
            .map_err(|e| self.error("GetServiceAttributes", &e))?;
        let value = out
            .service_attributes()
            .and_then(|s| s.attributes())
            .and_then(|attrs| attrs.get(DOC_ATTRIBUTE));
        match value {
            None => Ok(None),
            Some(json) => decode(json).map(Some),
        }
    }

    async fn put(&self, doc: &WeightsDoc) -> Result<(), StoreError> {
        let value = encode(doc)?;
        self.client
            .update_service_attributes()
            .service_id(&self.service_id)
            .attributes(DOC_ATTRIBUTE, value)
            .send()
            .await
            .map_err(|e| self.error("UpdateServiceAttributes", &e))?;
        Ok(())
    }
}

impl Store for CloudMapStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<WeightsDoc>, StoreError>> {
        Box::pin(self.get())
    }

    fn save<'a>(
        &'a self,
        doc: &'a WeightsDoc,
        _read_at: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(confirm::write_confirmed(self, doc, READ_BACK))
    }

    fn check_fits(&self, doc: &WeightsDoc) -> Result<(), StoreError> {
        encode(doc).map(|_| ())
    }

    fn shared(&self) -> bool {
        true
    }

    fn compare_and_set(&self) -> bool {
        false
    }

    fn rollback_write_wait(&self) -> Duration {
        ROLLBACK_WRITE_WAIT
    }
}

impl confirm::Attribute for CloudMapStore {
    fn get(&self) -> BoxFuture<'_, Result<Option<WeightsDoc>, StoreError>> {
        Box::pin(CloudMapStore::get(self))
    }

    fn put<'a>(&'a self, doc: &'a WeightsDoc) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(CloudMapStore::put(self, doc))
    }

    fn name(&self) -> &str {
        &self.service_id
    }
}

/// The attribute value for `doc`: compact, ASCII-only JSON of at most
/// [`MAX_VALUE_CHARS`] characters.
pub fn encode(doc: &WeightsDoc) -> Result<String, StoreError> {
    let json = serde_json::to_string(doc)
        .map_err(|e| StoreError::Invalid(format!("cannot serialize the weights document: {e}")))?;
    let value = escape_non_ascii(&json);
    if value.len() > MAX_VALUE_CHARS {
        return Err(StoreError::CloudMap(format!(
            "the weights document is {} characters as JSON; a Cloud Map attribute holds at most \
             {MAX_VALUE_CHARS} (use shorter version names or fewer versions)",
            value.len()
        )));
    }
    Ok(value)
}

/// The document in an attribute value.
pub fn decode(value: &str) -> Result<WeightsDoc, StoreError> {
    serde_json::from_str(value)
        .map_err(|e| StoreError::Invalid(format!("Cloud Map attribute {DOC_ATTRIBUTE}: {e}")))
}

/// Replaces every non-ASCII character of `json` with `\uXXXX` escapes (UTF-16).
/// Valid because JSON's own syntax is ASCII: such characters only occur inside
/// strings, where the escape means the same character.
fn escape_non_ascii(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn doc(stable: &str, weights: &[(&str, u32)]) -> WeightsDoc {
        WeightsDoc {
            stable: stable.into(),
            weights: weights.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            generation: 7,
            updated_at_ms: 1_700_000_000_000,
            source: "admin".into(),
            writer: "task-a".into(),
            config_weights: Some(BTreeMap::from([("v1".to_string(), 100)])),
            config_stable: None,
            refused_config: None,
            rollout: None,
        }
    }

    #[test]
    fn round_trips_and_stays_ascii() {
        let d = doc("v1", &[("v1", 90), ("v2-ünïcødé-🚀", 10)]);
        let value = encode(&d).unwrap();
        assert!(value.is_ascii(), "{value}");
        assert!(value.contains("\\ud83d\\ude80"), "{value}");
        assert_eq!(decode(&value).unwrap(), d);
    }

    #[test]
    fn oversized_document_is_refused_clearly() {
        let names: Vec<String> = (0..40)
            .map(|i| format!("version-with-a-long-name-{i}"))
            .collect();
        let weights: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), 1)).collect();
        let err = encode(&doc("v1", &weights)).unwrap_err();
        assert!(matches!(err, StoreError::CloudMap(_)));
        assert!(err.to_string().contains("at most 1024"), "{err}");
    }

    #[test]
    fn garbage_is_invalid() {
        assert!(matches!(decode("{not json"), Err(StoreError::Invalid(_))));
    }
}
