//! Building an [`App`] on AWS services from the environment: what a Lambda
//! function does once at cold start, and what the local server's
//! `--backend aws` does at start-up.
//!
//! The endpoint comes from the SDK's own configuration (`AWS_ENDPOINT_URL`
//! points it at LocalStack or moto), so the same code talks to AWS and to an
//! emulator.

use crate::app::server_keys;
use crate::clock::SystemClock;
use crate::config::{Config, ConfigError, Secret};
use crate::handlers::fanout::Fanout;
use crate::handlers::sqs_batch::FanoutFunction;
use crate::queue::{Queue, SqsQueue};
use crate::store::dynamodb::{DynamoStore, TableNames};
use crate::store::Store;
use crate::App;
use std::sync::Arc;

/// The variable naming the fan-out queue, for the functions that publish.
pub const FANOUT_QUEUE_URL: &str = "FANOUT_QUEUE_URL";

/// The SDK configuration from the environment (region, credentials,
/// `AWS_ENDPOINT_URL`), with the SDK's own retries off and timeouts on:
/// [`crate::retry`] is the one retry loop.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .retry_config(crate::retry::aws::sdk_retry_config())
        .timeout_config(crate::retry::aws::sdk_timeout_config())
        .load()
        .await
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The DynamoDB store for the tables named in the environment.
pub fn store_from_env(sdk: &aws_config::SdkConfig) -> Result<DynamoStore, ConfigError> {
    let tables = TableNames::from_lookup(env)?;
    Ok(DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), tables))
}

/// The SQS fan-out queue named by `FANOUT_QUEUE_URL`.
pub fn queue_from_env(sdk: &aws_config::SdkConfig) -> Result<SqsQueue, ConfigError> {
    let url =
        env(FANOUT_QUEUE_URL).ok_or_else(|| ConfigError(format!("{FANOUT_QUEUE_URL} not set")))?;
    Ok(SqsQueue::new(aws_sdk_sqs::Client::new(sdk), url))
}

/// An app over DynamoDB (and SQS when `with_queue`), holding the secrets in
/// `secrets` (each must be set).
pub async fn app_from_env(secrets: &[Secret], with_queue: bool) -> Result<App, ConfigError> {
    app_with_config(&Config::from_env(secrets)?, with_queue).await
}

/// An app over DynamoDB (and SQS when `with_queue`) for a configuration
/// read elsewhere (the local server layers its secrets file under the
/// environment).
pub async fn app_with_config(config: &Config, with_queue: bool) -> Result<App, ConfigError> {
    let sdk = sdk_config().await;
    let store: Arc<dyn Store> = Arc::new(store_from_env(&sdk)?);
    let queue: Option<Arc<dyn Queue>> = if with_queue {
        Some(Arc::new(queue_from_env(&sdk)?))
    } else {
        None
    };
    Ok(App::new(config, store, queue, Arc::new(SystemClock)))
}

/// The fan-out function over DynamoDB, for the SQS-triggered function.
pub async fn fanout_from_env() -> Result<FanoutFunction, ConfigError> {
    fanout_with_config(&Config::from_env(&[Secret::MasterKey])?).await
}

/// The fan-out worker, and the fan-out queue (`FANOUT_QUEUE_URL`) to hand
/// unfinished jobs back to.
pub async fn fanout_with_config(config: &Config) -> Result<FanoutFunction, ConfigError> {
    let keys = server_keys(config).ok_or_else(|| ConfigError("MASTER_KEY not set".into()))?;
    let sdk = sdk_config().await;
    let store: Arc<dyn Store> = Arc::new(store_from_env(&sdk)?);
    let continuation: Arc<dyn Queue> = Arc::new(queue_from_env(&sdk)?);
    Ok(FanoutFunction::new(
        Fanout::new(store, keys, Arc::new(SystemClock)),
        Some(continuation),
    ))
}
