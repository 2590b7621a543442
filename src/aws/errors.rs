//! Classifying AWS SDK errors: throttling, timeouts, error codes, and a
//! readable message for logs and /status.

use std::error::Error;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::store::StoreError;

/// Error codes AWS services use for throttling.
const THROTTLING_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "TooManyRequests",
    "RequestThrottled",
    "RequestThrottledException",
    "SlowDown",
    "ProvisionedThroughputExceededException",
];

/// What kind of failure an SDK error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The service throttled the call (a throttling code or HTTP 429).
    Throttled,
    /// The call or one attempt timed out.
    Timeout,
    /// Anything else.
    Other,
}

/// Classifies an SDK error.
pub fn classify<E>(err: &SdkError<E, HttpResponse>) -> ErrorClass
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::TimeoutError(_) => return ErrorClass::Timeout,
        SdkError::DispatchFailure(failure) if failure.is_timeout() => return ErrorClass::Timeout,
        _ => {}
    }
    if error_code(err).is_some_and(|code| THROTTLING_CODES.contains(&code)) {
        return ErrorClass::Throttled;
    }
    if err
        .raw_response()
        .is_some_and(|raw| raw.status().as_u16() == 429)
    {
        return ErrorClass::Throttled;
    }
    ErrorClass::Other
}

/// The service's error code (`ThrottlingException`, `ConflictException`, …), if any.
pub fn error_code<E>(err: &SdkError<E, HttpResponse>) -> Option<&str>
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::ServiceError(service) => service.err().code(),
        _ => None,
    }
}

/// The store's error for a failed SDK call: throttling becomes
/// [`StoreError::Throttled`] (the poll backs off), anything else `other`.
pub fn store_error<E>(
    err: &SdkError<E, HttpResponse>,
    message: String,
    other: fn(String) -> StoreError,
) -> StoreError
where
    E: ProvideErrorMetadata,
{
    match classify(err) {
        ErrorClass::Throttled => StoreError::Throttled(message),
        _ => other(message),
    }
}

/// A short one-line message for logs and `/status` (`store.last_error`,
/// `fleet.last_error`, `appmesh.last_error`, discovery's `last_error`): a
/// service's answer as its error code, message and HTTP status
/// (`ResourceNotFoundException: Requested resource not found (HTTP 400)`);
/// any other failure as its chain of causes (`dispatch failure: io error:
/// client error (Connect): tcp connect error: Connection refused (os error
/// 111)`). The SDK's plain `Display` says only "service error", and its
/// `DisplayErrorContext` adds the whole `Debug` form (raw headers and body,
/// several KB): that goes to a debug-level log line only.
pub fn describe<E>(err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + Error + 'static,
{
    tracing::debug!(error = %DisplayErrorContext(err), "AWS call failed (in full)");
    match err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let e = service.err();
            let said = match (e.code(), e.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_string(),
                (None, Some(message)) => message.to_string(),
                (None, None) => causes(e),
            };
            format!("{said} (HTTP {status})")
        }
        _ => causes(err),
    }
}

/// `err`'s message and its sources' (`a: b: c`), each once: a cause whose
/// message its error already ends with is not repeated.
fn causes(err: &(dyn Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !text.is_empty() && !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use aws_sdk_appmesh::operation::update_route::UpdateRouteError;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    use super::*;

    fn service(code: &str, status: u16) -> SdkError<UpdateRouteError, HttpResponse> {
        let err = UpdateRouteError::generic(
            ErrorMetadata::builder()
                .code(code)
                .message("details here")
                .build(),
        );
        let raw = HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
        SdkError::service_error(err, raw)
    }

    #[test]
    fn throttling_by_code_or_status() {
        for code in [
            "ThrottlingException",
            "RequestLimitExceeded",
            "TooManyRequestsException",
            "ProvisionedThroughputExceededException",
        ] {
            assert_eq!(
                classify(&service(code, 400)),
                ErrorClass::Throttled,
                "{code}"
            );
        }
        assert_eq!(classify(&service("Whatever", 429)), ErrorClass::Throttled);
        assert_eq!(
            classify(&service("ConflictException", 409)),
            ErrorClass::Other
        );
        assert_eq!(
            error_code(&service("ConflictException", 409)),
            Some("ConflictException")
        );
    }

    #[test]
    fn timeouts() {
        let e: SdkError<UpdateRouteError, HttpResponse> = SdkError::timeout_error("slow");
        assert_eq!(classify(&e), ErrorClass::Timeout);
        let e: SdkError<UpdateRouteError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::timeout("connect".into()));
        assert_eq!(classify(&e), ErrorClass::Timeout);
        let e: SdkError<UpdateRouteError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io("refused".into()));
        assert_eq!(classify(&e), ErrorClass::Other);
    }

    #[test]
    fn describe_includes_the_code_and_message() {
        let text = describe(&service("ConflictException", 409));
        assert_eq!(text, "ConflictException: details here (HTTP 409)");
    }

    /// A service's error is its code, message and status, without the
    /// SDK's `Debug` form (the raw response's headers and body: several KB
    /// in `/status` otherwise).
    #[test]
    fn describe_leaves_out_the_raw_response() {
        let err = UpdateRouteError::generic(
            ErrorMetadata::builder()
                .code("NotFoundException")
                .message("Route not found")
                .build(),
        );
        let mut raw = HttpResponse::new(
            StatusCode::try_from(404).unwrap(),
            SdkBody::from(format!(r#"{{"message": "{}"}}"#, "x".repeat(4000))),
        );
        raw.headers_mut()
            .insert("x-amzn-requestid", "0123-request-id-4567");
        let text = describe(&SdkError::<UpdateRouteError, HttpResponse>::service_error(
            err, raw,
        ));
        assert_eq!(text, "NotFoundException: Route not found (HTTP 404)");
    }

    /// A call that never got an answer says why, down to the connection's
    /// own error, in one short line.
    #[test]
    fn describe_names_the_connection_errors_cause() {
        let refused =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e: SdkError<UpdateRouteError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io(Box::new(refused)));
        let text = describe(&e);
        assert!(
            text.contains("Connection refused") && !text.contains("DispatchFailure"),
            "{text}"
        );
        assert!(text.len() < 120, "{text}");
    }
}
