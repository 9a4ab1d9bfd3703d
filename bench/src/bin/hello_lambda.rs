//! The smallest Lambda function: `lambda_runtime` answering `{}`, built
//! with the same profile and runtime features as the functions. Init time
//! (process start to the first Runtime API request) is measured against
//! it by `bench/lambda_init.py`, so a function's init reads as a ratio to
//! what the runtime itself costs.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(|_: LambdaEvent<Value>| async {
        Ok::<_, Error>(json!({}))
    }))
    .await
}
