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

/// A one-line message with the whole error chain (the SDK's plain `Display`
/// says only "service error").
pub fn describe<E>(err: &E) -> String
where
    E: Error,
{
    DisplayErrorContext(err).to_string()
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
        assert!(
            text.contains("ConflictException") && text.contains("details here"),
            "{text}"
        );
    }
}
