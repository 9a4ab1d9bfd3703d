//! Which DynamoDB, SQS and Secrets Manager failures are worth another
//! attempt, as data.
//!
//! The codes come from DynamoDB's "Error handling" guide and the SQS and
//! Secrets Manager API references (their operations' errors and the
//! common errors every AWS query/JSON API can return). One difference from the SDK's own classifier: DynamoDB's
//! `TransactionConflictException` and transactions cancelled for conflicts
//! or throttling are retried here; the SDK retries neither.

use super::Class;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use std::time::Duration;

/// DynamoDB error codes and what to do about them. Codes not listed are
/// transient when the status is 5xx, permanent otherwise.
pub const DYNAMODB_ERRORS: &[(&str, Class)] = &[
    ("ThrottlingException", Class::Transient),
    ("ProvisionedThroughputExceededException", Class::Transient),
    ("RequestLimitExceeded", Class::Transient),
    ("InternalServerError", Class::Transient),
    ("ServiceUnavailable", Class::Transient),
    ("TransactionConflictException", Class::Transient),
    ("TransactionInProgressException", Class::Transient),
    ("ConditionalCheckFailedException", Class::Permanent),
    ("ValidationException", Class::Permanent),
    ("ResourceNotFoundException", Class::Permanent),
    ("ItemCollectionSizeLimitExceededException", Class::Permanent),
    ("IdempotentParameterMismatchException", Class::Permanent),
    ("AccessDeniedException", Class::Permanent),
    ("UnrecognizedClientException", Class::Permanent),
];

/// Reasons a `TransactWriteItems` can be cancelled for, one per item.
/// `None` (this item was fine) says nothing either way.
pub const CANCELLATION_REASONS: &[(&str, Class)] = &[
    ("TransactionConflict", Class::Transient),
    ("ThrottlingError", Class::Transient),
    ("ProvisionedThroughputExceeded", Class::Transient),
    ("ConditionalCheckFailed", Class::Permanent),
    ("ItemCollectionSizeLimitExceeded", Class::Permanent),
    ("ValidationError", Class::Permanent),
];

/// SQS error codes (JSON and query protocols name them differently).
pub const SQS_ERRORS: &[(&str, Class)] = &[
    ("ThrottlingException", Class::Transient),
    ("RequestThrottled", Class::Transient),
    ("AWS.SimpleQueueService.RequestThrottled", Class::Transient),
    ("KmsThrottled", Class::Transient),
    ("InternalError", Class::Transient),
    ("InternalFailure", Class::Transient),
    ("ServiceUnavailable", Class::Transient),
    ("QueueDoesNotExist", Class::Permanent),
    ("AWS.SimpleQueueService.NonExistentQueue", Class::Permanent),
    ("InvalidParameterValue", Class::Permanent),
    ("BatchRequestTooLong", Class::Permanent),
    ("AccessDenied", Class::Permanent),
    // SendMessage (the inbound queue's notices): a body or attribute SQS
    // will never take, a FIFO parameter on a standard queue (or none on a
    // FIFO queue), and a queue whose KMS key cannot be used.
    ("InvalidMessageContents", Class::Permanent),
    ("UnsupportedOperation", Class::Permanent),
    ("InvalidSecurity", Class::Permanent),
    ("KmsAccessDenied", Class::Permanent),
    ("KmsDisabled", Class::Permanent),
    ("KmsInvalidKeyUsage", Class::Permanent),
    ("KmsInvalidState", Class::Permanent),
    ("KmsNotFound", Class::Permanent),
    ("KmsOptInRequired", Class::Permanent),
];

/// Secrets Manager error codes (`GetSecretValue` at cold start). A secret
/// that is missing, scheduled for deletion, not readable by the function's
/// role, or not decryptable with its KMS key stays so: the cold start fails
/// at once, naming the variable.
pub const SECRETS_MANAGER_ERRORS: &[(&str, Class)] = &[
    ("ThrottlingException", Class::Transient),
    ("RequestLimitExceeded", Class::Transient),
    ("InternalServiceError", Class::Transient),
    ("InternalFailure", Class::Transient),
    ("ServiceUnavailable", Class::Transient),
    ("ResourceNotFoundException", Class::Permanent),
    ("AccessDeniedException", Class::Permanent),
    ("DecryptionFailure", Class::Permanent),
    ("InvalidRequestException", Class::Permanent),
    ("InvalidParameterException", Class::Permanent),
    ("UnrecognizedClientException", Class::Permanent),
    ("InvalidClientTokenId", Class::Permanent),
    ("ExpiredTokenException", Class::Permanent),
];

fn lookup(table: &[(&str, Class)], code: &str) -> Option<Class> {
    table
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, class)| *class)
}

/// A service error by its code, else by its HTTP status.
pub fn classify_code(table: &[(&str, Class)], code: Option<&str>, status: u16) -> Class {
    match code.and_then(|c| lookup(table, c)) {
        Some(class) => class,
        None if status >= 500 => Class::Transient,
        None => Class::Permanent,
    }
}

/// Any SDK failure: no response (timeouts, connection errors), a garbled
/// response, or a service error looked up in `table`.
pub fn classify<E: ProvideErrorMetadata>(
    table: &[(&str, Class)],
    error: &SdkError<E, HttpResponse>,
) -> Class {
    match error {
        SdkError::ConstructionFailure(_) => Class::Permanent,
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => Class::Transient,
        SdkError::DispatchFailure(failure) if failure.is_user() => Class::Permanent,
        SdkError::DispatchFailure(_) => Class::Transient,
        SdkError::ServiceError(context) => {
            classify_code(table, context.err().code(), context.raw().status().as_u16())
        }
        _ => Class::Permanent,
    }
}

/// Whether the request may have taken effect even though it failed: no
/// response at all, a 5xx, or DynamoDB saying the same request (same
/// client token) is still in progress. Any other 4xx means it did not.
pub fn outcome_unknown<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> bool {
    match error {
        SdkError::ServiceError(context) => {
            context.raw().status().is_server_error()
                || context.err().code() == Some("TransactionInProgressException")
        }
        SdkError::ConstructionFailure(_) => false,
        _ => true,
    }
}

/// A cancelled transaction is worth retrying when every reason that names
/// a problem is a passing one (and there is at least one).
pub fn classify_cancellation<'a>(reasons: impl IntoIterator<Item = &'a str>) -> Class {
    let mut transient = false;
    for code in reasons {
        match lookup(CANCELLATION_REASONS, code) {
            Some(Class::Transient) => transient = true,
            Some(Class::Permanent) => return Class::Permanent,
            None if code == "None" => {}
            None => return Class::Permanent,
        }
    }
    if transient {
        Class::Transient
    } else {
        Class::Permanent
    }
}

/// The SDK's own retries are off: [`super::run`] is the one retry loop.
pub fn sdk_retry_config() -> aws_config::retry::RetryConfig {
    aws_config::retry::RetryConfig::disabled()
}

/// Connection and per-attempt timeouts, so a hung connection becomes a
/// transient failure that the retry loop handles within its budget.
pub fn sdk_timeout_config() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(1))
        .operation_attempt_timeout(super::ATTEMPT_TIMEOUT)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamodb_codes_are_classified_row_by_row() {
        let rows = [
            ("ThrottlingException", 400, Class::Transient),
            (
                "ProvisionedThroughputExceededException",
                400,
                Class::Transient,
            ),
            ("RequestLimitExceeded", 400, Class::Transient),
            ("InternalServerError", 500, Class::Transient),
            ("TransactionConflictException", 400, Class::Transient),
            ("TransactionInProgressException", 400, Class::Transient),
            ("ConditionalCheckFailedException", 400, Class::Permanent),
            ("ValidationException", 400, Class::Permanent),
            ("ResourceNotFoundException", 400, Class::Permanent),
            (
                "IdempotentParameterMismatchException",
                400,
                Class::Permanent,
            ),
            // Unknown codes fall back on the status.
            ("SomethingNew", 503, Class::Transient),
            ("SomethingNew", 400, Class::Permanent),
        ];
        for (code, status, class) in rows {
            assert_eq!(
                classify_code(DYNAMODB_ERRORS, Some(code), status),
                class,
                "{code} {status}"
            );
        }
        assert_eq!(classify_code(DYNAMODB_ERRORS, None, 502), Class::Transient);
        assert_eq!(classify_code(DYNAMODB_ERRORS, None, 403), Class::Permanent);
    }

    #[test]
    fn sqs_codes_are_classified_row_by_row() {
        let rows = [
            ("RequestThrottled", 400, Class::Transient),
            (
                "AWS.SimpleQueueService.RequestThrottled",
                403,
                Class::Transient,
            ),
            ("ThrottlingException", 400, Class::Transient),
            ("KmsThrottled", 400, Class::Transient),
            ("InternalError", 500, Class::Transient),
            ("ServiceUnavailable", 503, Class::Transient),
            ("QueueDoesNotExist", 400, Class::Permanent),
            ("BatchRequestTooLong", 400, Class::Permanent),
            ("InvalidParameterValue", 400, Class::Permanent),
            ("InvalidMessageContents", 400, Class::Permanent),
            ("UnsupportedOperation", 400, Class::Permanent),
            ("KmsDisabled", 400, Class::Permanent),
            ("KmsAccessDenied", 400, Class::Permanent),
            ("SomethingNew", 500, Class::Transient),
            ("SomethingNew", 400, Class::Permanent),
        ];
        for (code, status, class) in rows {
            assert_eq!(
                classify_code(SQS_ERRORS, Some(code), status),
                class,
                "{code}"
            );
        }
    }

    #[test]
    fn secrets_manager_codes_are_classified_row_by_row() {
        let rows = [
            ("ThrottlingException", 400, Class::Transient),
            ("InternalServiceError", 500, Class::Transient),
            ("ServiceUnavailable", 503, Class::Transient),
            ("ResourceNotFoundException", 400, Class::Permanent),
            ("AccessDeniedException", 400, Class::Permanent),
            ("DecryptionFailure", 400, Class::Permanent),
            // Scheduled for deletion, or disabled.
            ("InvalidRequestException", 400, Class::Permanent),
            ("SomethingNew", 502, Class::Transient),
            ("SomethingNew", 400, Class::Permanent),
        ];
        for (code, status, class) in rows {
            assert_eq!(
                classify_code(SECRETS_MANAGER_ERRORS, Some(code), status),
                class,
                "{code} {status}"
            );
        }
    }

    #[test]
    fn cancellations_are_retried_only_for_passing_reasons() {
        let rows: [(&[&str], Class); 8] = [
            (&["None", "TransactionConflict", "None"], Class::Transient),
            (&["ThrottlingError", "None"], Class::Transient),
            (&["None", "ProvisionedThroughputExceeded"], Class::Transient),
            (&["ConditionalCheckFailed", "None"], Class::Permanent),
            (
                &["TransactionConflict", "ConditionalCheckFailed"],
                Class::Permanent,
            ),
            (&["ValidationError"], Class::Permanent),
            (&["None", "None"], Class::Permanent),
            (&["SomethingNew"], Class::Permanent),
        ];
        for (reasons, class) in rows {
            assert_eq!(
                classify_cancellation(reasons.iter().copied()),
                class,
                "{reasons:?}"
            );
        }
    }
}
