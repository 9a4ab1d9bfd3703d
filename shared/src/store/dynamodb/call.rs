//! Sending requests under the shared retry policy, and the two request
//! shapes that need more than a plain retry: conditional updates (a failed
//! condition is an answer, not an error) and transactions (a retry whose
//! first attempt may have committed must not apply twice).

use super::item::Item;
use super::DynamoStore;
use crate::retry::aws::{classify, classify_cancellation, outcome_unknown, DYNAMODB_ERRORS};
use crate::retry::{self, Class, Failed, GaveUp};
use crate::store::{StoreError, StoreResult};
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::delete_item::builders::DeleteItemFluentBuilder;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    CancellationReason, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use std::future::Future;
use std::sync::Mutex;

pub(super) fn backend<E: std::error::Error + 'static>(err: E) -> StoreError {
    StoreError::Backend(DisplayErrorContext(err).to_string())
}

pub(super) fn built<T, E: std::fmt::Display>(result: Result<T, E>) -> StoreResult<T> {
    result.map_err(|e| StoreError::Backend(format!("request builder: {e}")))
}

/// An SDK failure, classified by the DynamoDB table.
pub(super) fn failed<E>(error: SdkError<E, HttpResponse>) -> Failed<StoreError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    Failed {
        class: classify(DYNAMODB_ERRORS, &error),
        error: backend(error),
    }
}

fn gave_up(what: &str, outcome: GaveUp<StoreError>) -> StoreError {
    match outcome {
        GaveUp::Permanent(error) => error,
        GaveUp::Exhausted { last, attempts } => StoreError::Unavailable(format!(
            "{what}: {last} (gave up after {attempts} attempts)"
        )),
    }
}

/// Runs `attempt` under the retry policy; its failures come classified.
pub(super) async fn attempts<T, Fut>(
    what: &'static str,
    attempt: impl FnMut(u32) -> Fut,
) -> StoreResult<T>
where
    Fut: Future<Output = Result<T, Failed<StoreError>>>,
{
    retry::run(attempt, || {
        StoreError::Backend(format!("{what}: no answer in time"))
    })
    .await
    .map_err(|e| gave_up(what, e))
}

/// Sends one request (built afresh by `request` for each attempt) until
/// it succeeds or fails for good.
pub(super) async fn send<T, E, Fut>(
    what: &'static str,
    mut request: impl FnMut() -> Fut,
) -> StoreResult<T>
where
    Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    attempts(what, |_| {
        let sent = request();
        async move { sent.await.map_err(failed) }
    })
    .await
}

/// How a `TransactWriteItems` ended.
pub(super) enum Transaction {
    Committed,
    /// Cancelled by a failed condition; one reason per item, in request
    /// order. (Cancellations for conflicts or throttling are retried.)
    Cancelled(Vec<CancellationReason>),
}

pub(super) fn reason_code(reasons: &[CancellationReason], index: usize) -> &str {
    reasons
        .get(index)
        .and_then(CancellationReason::code)
        .unwrap_or("None")
}

/// A fresh client request token: one per intended write.
fn new_token() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl DynamoStore {
    /// Runs a conditional `UpdateItem` returning the new item; on a failed
    /// condition returns the old item (`None` when there is none).
    pub(super) async fn conditional_update(
        &self,
        update: UpdateItemFluentBuilder,
    ) -> StoreResult<Result<Item, Option<Item>>> {
        let update = update
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        attempts("UpdateItem", |_| {
            let sent = update.clone().send();
            async move {
                match sent.await {
                    Ok(out) => Ok(Ok(out.attributes.unwrap_or_default())),
                    Err(e)
                        if e.as_service_error().is_some_and(
                            UpdateItemError::is_conditional_check_failed_exception,
                        ) =>
                    {
                        match e.into_service_error() {
                            UpdateItemError::ConditionalCheckFailedException(f) => Ok(Err(f.item)),
                            other => Err(Failed::permanent(backend(other))),
                        }
                    }
                    Err(e) => Err(failed(e)),
                }
            }
        })
        .await
    }

    /// Runs a conditional `UpdateItem` that returns nothing: false when
    /// the condition failed. One request (retries aside).
    pub(super) async fn update_if(&self, update: UpdateItemFluentBuilder) -> StoreResult<bool> {
        attempts("UpdateItem", |_| {
            let sent = update.clone().send();
            async move {
                match sent.await {
                    Ok(_) => Ok(true),
                    Err(e)
                        if e.as_service_error().is_some_and(
                            UpdateItemError::is_conditional_check_failed_exception,
                        ) =>
                    {
                        Ok(false)
                    }
                    Err(e) => Err(failed(e)),
                }
            }
        })
        .await
    }

    /// Runs a conditional `PutItem`: `Ok(())` when it was written, else
    /// the item that stopped it (`None` when DynamoDB did not hand it
    /// back). One request (retries aside).
    pub(super) async fn put_if(
        &self,
        put: PutItemFluentBuilder,
    ) -> StoreResult<Result<(), Option<Item>>> {
        let put = put
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        attempts("PutItem", |_| {
            let sent = put.clone().send();
            async move {
                match sent.await {
                    Ok(_) => Ok(Ok(())),
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(PutItemError::is_conditional_check_failed_exception) =>
                    {
                        match e.into_service_error() {
                            PutItemError::ConditionalCheckFailedException(f) => Ok(Err(f.item)),
                            other => Err(Failed::permanent(backend(other))),
                        }
                    }
                    Err(e) => Err(failed(e)),
                }
            }
        })
        .await
    }

    /// Runs a conditional `DeleteItem`: false when the condition failed.
    pub(super) async fn conditional_delete(
        &self,
        delete: DeleteItemFluentBuilder,
    ) -> StoreResult<bool> {
        attempts("DeleteItem", |_| {
            let sent = delete.clone().send();
            async move {
                match sent.await {
                    Ok(_) => Ok(true),
                    Err(e)
                        if e.as_service_error().is_some_and(
                            DeleteItemError::is_conditional_check_failed_exception,
                        ) =>
                    {
                        Ok(false)
                    }
                    Err(e) => Err(failed(e)),
                }
            }
        })
        .await
    }

    /// Runs one transaction. Passing failures are retried here: throttling,
    /// 5xx, timeouts, and cancellations for conflicts or throttling. A retry
    /// after an attempt whose outcome is unknown (no response, or a 5xx)
    /// reuses that attempt's `ClientRequestToken`, so if the first attempt
    /// did commit, DynamoDB answers success instead of applying it twice;
    /// after a definite refusal the next attempt gets a fresh token.
    pub(super) async fn transact(&self, items: Vec<TransactWriteItem>) -> StoreResult<Transaction> {
        let token = Mutex::new(new_token());
        let refresh = || *token.lock().unwrap_or_else(|p| p.into_inner()) = new_token();
        attempts("TransactWriteItems", |_| {
            let current = token.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let sent = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .client_request_token(current)
                .send();
            async {
                let error = match sent.await {
                    Ok(_) => return Ok(Transaction::Committed),
                    Err(error) => error,
                };
                if !outcome_unknown(&error) {
                    refresh();
                }
                match error.as_service_error() {
                    Some(TransactWriteItemsError::TransactionCanceledException(e)) => {
                        let reasons = e.cancellation_reasons.clone().unwrap_or_default();
                        let codes = (0..reasons.len()).map(|i| reason_code(&reasons, i));
                        match classify_cancellation(codes) {
                            Class::Transient => Err(Failed::transient(backend(error))),
                            Class::Permanent => Ok(Transaction::Cancelled(reasons)),
                        }
                    }
                    _ => Err(failed(error)),
                }
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasons(codes: &[&str]) -> Vec<CancellationReason> {
        codes
            .iter()
            .map(|c| CancellationReason::builder().code(*c).build())
            .collect()
    }

    #[test]
    fn reason_codes_default_to_none() {
        let r = reasons(&["ConditionalCheckFailed", "None", "None"]);
        assert_eq!(reason_code(&r, 0), "ConditionalCheckFailed");
        assert_eq!(reason_code(&r, 1), "None");
        assert_eq!(reason_code(&r, 7), "None");
    }
}
