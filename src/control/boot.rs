//! Control path: the first read of the store at start.
//!
//! A local state file is read once: a broken one stops the start (the
//! operator must look at it). A shared store (Cloud Map, DynamoDB) is an AWS
//! control plane that can throttle, lag behind an IAM change or be down in a
//! Region: the task retries it for up to `[store] boot_timeout`, then starts
//! degraded on the config file's weights and adopts the store's decision as
//! soon as a poll reads it.

use std::time::Duration;

use super::ControlError;
use super::status::StoreStatus;
use crate::metrics as names;
use crate::store::{Store, StoreError, WeightsDoc, unix_ms};

/// Pause between two attempts of the first read.
const RETRY: Duration = Duration::from_millis(500);

/// What the first read found.
pub(super) struct FirstRead {
    pub doc: Option<WeightsDoc>,
    /// Why the store could not be read within the boot timeout (degraded).
    pub failed: Option<String>,
}

impl FirstRead {
    /// The store's line in /status after the first read.
    pub fn status(&self, kind: &str) -> StoreStatus {
        metrics::gauge!(names::STORE_DEGRADED).set(if self.failed.is_some() { 1.0 } else { 0.0 });
        metrics::gauge!(names::STORE_ROLLBACK_PENDING).set(0.0);
        StoreStatus {
            kind: kind.to_string(),
            last_ok_ms: self.failed.is_none().then(unix_ms),
            last_error: self.failed.clone(),
            load_error: self.failed.clone(),
            degraded: self.failed.is_some(),
            ..Default::default()
        }
    }
}

/// Reads the stored decision; see the module doc.
pub(super) async fn first_read(
    store: &dyn Store,
    boot_timeout: Duration,
) -> Result<FirstRead, ControlError> {
    if !store.shared() {
        let doc = store.load().await.map_err(ControlError::StoreLoad)?;
        return Ok(FirstRead { doc, failed: None });
    }
    let deadline = tokio::time::Instant::now() + boot_timeout;
    let mut last: Option<StoreError> = None;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, store.load()).await {
            Ok(Ok(doc)) => return Ok(FirstRead { doc, failed: None }),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the weight store could not be read at start; retrying");
                last = Some(e);
            }
            Err(_) => {}
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(RETRY.min(left)).await;
    }
    let why = match last {
        Some(e) => e.to_string(),
        None => format!("no answer within {} ms", boot_timeout.as_millis()),
    };
    tracing::error!(
        error = %why,
        "the weight store could not be read within store.boot_timeout: serving the config file's weights (degraded) until it can be read"
    );
    Ok(FirstRead {
        doc: None,
        failed: Some(why),
    })
}
