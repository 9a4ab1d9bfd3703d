//! Building an [`App`] on AWS services from the environment: what a Lambda
//! function does once at cold start, and what the local server's
//! `--backend aws` does at start-up.
//!
//! The endpoint comes from the SDK's own configuration (`AWS_ENDPOINT_URL`
//! points it at LocalStack or moto), so the same code talks to AWS and to an
//! emulator.
//!
//! **Secrets.** On AWS no secret is in a function's environment: each
//! function gets `<NAME>_SECRET_ARN` variables (`TOKEN_KEY_SECRET_ARN`, …),
//! one per secret its route needs, and its role may read exactly those
//! secrets. The cold start reads them all at once with `GetSecretValue`,
//! under the shared retry policy ([`crate::retry`], errors classified by
//! [`crate::retry::aws::SECRETS_MANAGER_ERRORS`]), then builds the
//! [`Config`] with each value standing in for `<NAME>`. A plain `<NAME>`
//! variable still works (the local server, tests, `cargo lambda watch`); a
//! fetched value wins over it. A secret that cannot be read stops the cold
//! start with a message naming its variable and why, never the value.

use crate::app::fanout_keys;
use crate::clock::SystemClock;
use crate::config::{Config, ConfigError, Secret};
use crate::handlers::fanout::Fanout;
use crate::handlers::sqs_batch::FanoutFunction;
use crate::queue::{Inbound, Queue, SqsInbound, SqsQueue};
use crate::retry::aws::{classify, SECRETS_MANAGER_ERRORS};
use crate::retry::{self, Failed, GaveUp};
use crate::store::dynamodb::{DynamoStore, PollMode, TableNames, POLL_MODE};
use crate::store::Store;
use crate::App;
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The variable naming the fan-out queue, for the functions that publish.
pub const FANOUT_QUEUE_URL: &str = "FANOUT_QUEUE_URL";

/// The variable naming the inbound queue (a FIFO queue, `InboundQueue` in
/// template.yaml) on which send announces every stored message. Only the
/// send function gets it, and only while the stack's
/// `InboundNotifications` parameter is `Enabled`; unset, sends notify no
/// one.
pub const INBOUND_QUEUE_URL: &str = "INBOUND_QUEUE_URL";

/// `<NAME>_SECRET_ARN` names the Secrets Manager secret holding `<NAME>`.
pub const SECRET_ARN_SUFFIX: &str = "_SECRET_ARN";

/// The root key of deployments made before the keys were split; it stands
/// in for every purpose key (see [`crate::config::KeyMaterials`]).
pub const MASTER_KEY: &str = "MASTER_KEY";

/// The secrets the SQS-triggered fan-out function holds: it unwraps each
/// recipient's personal key and opens the sealed publish on the queue.
/// (The HTTP functions' come from [`crate::http::Route::secrets`]; the
/// cleanup holds none.)
pub const FANOUT_SECRETS: [Secret; 2] = [Secret::WrappingKey, Secret::AtRestKey];

/// How long a cold start may spend reading its secrets: Lambda gives the
/// whole init phase 10 s.
pub const SECRETS_BUDGET: Duration = Duration::from_secs(6);

/// The SDK configuration from the environment (region, credentials,
/// `AWS_ENDPOINT_URL`), with the SDK's own retries off and timeouts on:
/// [`crate::retry`] is the one retry loop.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(https_client())
        .retry_config(crate::retry::aws::sdk_retry_config())
        .timeout_config(crate::retry::aws::sdk_timeout_config())
        .load()
        .await
}

/// The SDK configuration of a Lambda function, from what Lambda puts in its
/// environment: `AWS_REGION`, the role's credentials (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), and `AWS_ENDPOINT_URL` or
/// `AWS_ENDPOINT_URL_<SERVICE>` when set (emulators). Otherwise as
/// [`sdk_config`]. It never refers to
/// aws-config's default chain (profiles, SSO, STS, the container and
/// instance metadata providers), which a function has no use for, so the
/// bootstraps leave all of that out (docs/performance.md).
pub fn lambda_sdk_config(env: &Env) -> aws_config::SdkConfig {
    use aws_config::environment::EnvironmentVariableCredentialsProvider;
    use aws_sdk_dynamodb::config::SharedCredentialsProvider;
    let region = env
        .get("AWS_REGION")
        .or_else(|| env.get("AWS_DEFAULT_REGION"))
        .map(|r| aws_config::Region::new(r.trim().to_string()));
    let config = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(region)
        .credentials_provider(SharedCredentialsProvider::new(
            EnvironmentVariableCredentialsProvider::new(),
        ))
        .http_client(https_client())
        .retry_config(crate::retry::aws::sdk_retry_config())
        .timeout_config(crate::retry::aws::sdk_timeout_config())
        .service_config(EndpointsFromEnv(env.clone()));
    config.build()
}

/// `AWS_ENDPOINT_URL_<SERVICE>`, else `AWS_ENDPOINT_URL`, as the SDK's own
/// loader reads them (the service id upper-cased, spaces as underscores:
/// `AWS_ENDPOINT_URL_SECRETS_MANAGER`), without its profile files.
#[derive(Debug)]
struct EndpointsFromEnv(Env);

impl aws_types::service_config::LoadServiceConfig for EndpointsFromEnv {
    fn load_config(&self, key: aws_types::service_config::ServiceConfigKey<'_>) -> Option<String> {
        let service = key.service_id().to_uppercase().replace(' ', "_");
        self.0
            .get(&format!("{}_{service}", key.env()))
            .or_else(|| self.0.get(key.env()))
            .map(|value| value.trim().to_string())
    }
}

/// The HTTP client every AWS client here uses: the SDK's own hyper client
/// (connection pool, timeouts, proxy settings from the environment, as its
/// default builds it) with rustls on ring instead of aws-lc. Build every
/// SDK configuration with it: the SDK crates are compiled without a
/// default client, so a configuration without one fails its first request.
pub fn https_client() -> aws_sdk_dynamodb::config::SharedHttpClient {
    use aws_smithy_http_client::proxy::ProxyConfig;
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    use aws_smithy_http_client::{Builder, ConnectorBuilder};
    Builder::new().build_with_connector_fn(|settings, components| {
        let mut connector =
            ConnectorBuilder::default().tls_provider(Provider::Rustls(CryptoMode::Ring));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    })
}

// ------------------------------------------------------------ environment ---

/// A function's environment as the cold start reads it: the process
/// environment, or (tests) any set of variables.
#[derive(Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// The process environment (variables that are not UTF-8 are skipped:
    /// none of ours is).
    pub fn from_process() -> Env {
        Env {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Env {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// A variable's value; unset and blank are the same.
    pub fn get(&self, name: &str) -> Option<String> {
        self.vars
            .get(name)
            .filter(|v| !v.trim().is_empty())
            .cloned()
    }
}

/// Names only: an environment may hold secrets (locally).
impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.vars.keys()).finish()
    }
}

// ---------------------------------------------------------------- secrets ---

/// A secret the environment names by ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    /// The variable the value stands in for (`TOKEN_KEY`).
    pub name: &'static str,
    pub arn: String,
}

impl SecretRef {
    /// The variable that named it (`TOKEN_KEY_SECRET_ARN`).
    pub fn variable(&self) -> String {
        format!("{}{SECRET_ARN_SUFFIX}", self.name)
    }
}

/// Every secret a deployment may hand a function by ARN.
fn secret_names() -> impl Iterator<Item = &'static str> {
    Secret::ALL
        .into_iter()
        .map(Secret::env_name)
        .chain([MASTER_KEY])
}

/// The `<NAME>_SECRET_ARN` variables of `env`, by name. A `<NAME>` that is
/// no secret Pigeonhole reads is an error (a typo would otherwise surface
/// as a missing secret, far from its cause).
pub fn secret_refs(env: &Env) -> Result<Vec<SecretRef>, ConfigError> {
    let mut refs = Vec::new();
    let mut unknown = Vec::new();
    for (variable, arn) in &env.vars {
        let Some(name) = variable.strip_suffix(SECRET_ARN_SUFFIX) else {
            continue;
        };
        if arn.trim().is_empty() {
            continue;
        }
        match secret_names().find(|known| *known == name) {
            Some(name) => refs.push(SecretRef {
                name,
                arn: arn.trim().to_string(),
            }),
            None => unknown.push(variable.as_str()),
        }
    }
    if !unknown.is_empty() {
        return Err(ConfigError(format!(
            "{} set, but Pigeonhole reads no such secret (it knows {})",
            unknown.join(", "),
            secret_names()
                .map(|n| format!("{n}{SECRET_ARN_SUFFIX}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(refs)
}

/// What went wrong with a request, in words that never carry a secret: the
/// service's error code and message (Secrets Manager's error responses
/// hold no secret value), or the kind of failure. An unreadable response
/// is not quoted, since a response may hold the value.
fn describe(error: &SdkError<GetSecretValueError, HttpResponse>) -> String {
    match error {
        SdkError::ServiceError(context) => {
            let e = context.err();
            match (e.code(), e.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_string(),
                _ => format!("HTTP {}", context.raw().status().as_u16()),
            }
        }
        SdkError::TimeoutError(_) => "no answer in time".into(),
        SdkError::DispatchFailure(_) => format!(
            "could not reach Secrets Manager ({})",
            DisplayErrorContext(error)
        ),
        SdkError::ResponseError(_) => "an unreadable response".into(),
        SdkError::ConstructionFailure(_) => "the request could not be built".into(),
        _ => "an unexpected failure".into(),
    }
}

/// One secret's text, under the retry policy.
async fn fetch_secret(
    client: &aws_sdk_secretsmanager::Client,
    secret: &SecretRef,
) -> Result<String, String> {
    let outcome = retry::run(
        |_| async {
            client
                .get_secret_value()
                .secret_id(&secret.arn)
                .send()
                .await
                .map_err(|e| Failed {
                    class: classify(SECRETS_MANAGER_ERRORS, &e),
                    error: describe(&e),
                })
        },
        || "no answer in time".to_string(),
    )
    .await;
    let out = outcome.map_err(|gave_up| match gave_up {
        GaveUp::Permanent(e) => e,
        GaveUp::Exhausted { last, attempts } => {
            format!("{last} (gave up after {attempts} attempts)")
        }
    })?;
    match out.secret_string {
        Some(text) if !text.trim().is_empty() => Ok(text),
        Some(_) => Err("the secret is empty".into()),
        None => Err("the secret holds no text (SecretString); store the value as text".into()),
    }
}

/// Reads every secret in `refs` at once. Fails naming each variable whose
/// secret could not be read, and why; never a value.
pub async fn fetch_secrets(
    client: &aws_sdk_secretsmanager::Client,
    refs: &[SecretRef],
) -> Result<Vec<(&'static str, String)>, ConfigError> {
    let reads = refs.iter().map(|secret| fetch_secret(client, secret));
    let results = retry::within(
        Instant::now() + SECRETS_BUDGET,
        futures_util::future::join_all(reads),
    )
    .await;
    let mut values = Vec::new();
    let mut problems = Vec::new();
    for (secret, result) in refs.iter().zip(results) {
        match result {
            Ok(text) => values.push((secret.name, text)),
            Err(why) => problems.push(format!(
                "{} ({}): cannot read the secret: {why}",
                secret.variable(),
                secret.arn
            )),
        }
    }
    if problems.is_empty() {
        Ok(values)
    } else {
        Err(ConfigError(problems.join("; ")))
    }
}

/// The configuration a function runs with: `env`, where each secret named
/// by a `<NAME>_SECRET_ARN` is read from Secrets Manager and stands in for
/// `<NAME>`. Fails naming every secret in `required` that is missing.
pub async fn config_from(
    sdk: &aws_config::SdkConfig,
    env: &Env,
    required: &[Secret],
) -> Result<Config, ConfigError> {
    let refs = secret_refs(env)?;
    let fetched = if refs.is_empty() {
        Vec::new()
    } else {
        let fetched = fetch_secrets(&aws_sdk_secretsmanager::Client::new(sdk), &refs).await?;
        let names: Vec<&str> = fetched.iter().map(|(name, _)| *name).collect();
        tracing::info!(
            secrets = %names.join(","),
            "read the function's secrets from Secrets Manager"
        );
        fetched
    };
    let lookup = |name: &str| {
        fetched
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, value)| value.clone())
            .or_else(|| env.get(name))
    };
    Config::from_lookup(lookup, required).map_err(|e| {
        if e.0.ends_with("not set") {
            ConfigError(format!(
                "{} (give the function <NAME>{SECRET_ARN_SUFFIX}, a Secrets Manager ARN, or <NAME> itself)",
                e.0
            ))
        } else {
            e
        }
    })
}

// ------------------------------------------------------- tables and queue ---

/// The DynamoDB store for the tables named in `env`.
pub fn store_from(sdk: &aws_config::SdkConfig, env: &Env) -> Result<DynamoStore, ConfigError> {
    let tables = TableNames::from_lookup(|name| env.get(name))?;
    let poll_mode = PollMode::from_setting(
        env.get(POLL_MODE).as_deref(),
        env.get("POLL_RATE_LIMIT").as_deref(),
    )?;
    Ok(DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), tables).with_poll_mode(poll_mode))
}

/// The DynamoDB store for the tables named in the process environment.
pub fn store_from_env(sdk: &aws_config::SdkConfig) -> Result<DynamoStore, ConfigError> {
    store_from(sdk, &Env::from_process())
}

/// The SQS fan-out queue named by `FANOUT_QUEUE_URL` in `env`.
pub fn queue_from(sdk: &aws_config::SdkConfig, env: &Env) -> Result<SqsQueue, ConfigError> {
    let url = env
        .get(FANOUT_QUEUE_URL)
        .ok_or_else(|| ConfigError(format!("{FANOUT_QUEUE_URL} not set")))?;
    Ok(SqsQueue::new(aws_sdk_sqs::Client::new(sdk), url))
}

/// The SQS fan-out queue named by `FANOUT_QUEUE_URL` in the process
/// environment.
pub fn queue_from_env(sdk: &aws_config::SdkConfig) -> Result<SqsQueue, ConfigError> {
    queue_from(sdk, &Env::from_process())
}

/// The inbound queue named by `INBOUND_QUEUE_URL` in `env`, if it names
/// one.
pub fn inbound_from(sdk: &aws_config::SdkConfig, env: &Env) -> Option<SqsInbound> {
    let url = env.get(INBOUND_QUEUE_URL)?;
    Some(SqsInbound::new(aws_sdk_sqs::Client::new(sdk), url.trim()))
}

// ------------------------------------------------------------- cold start ---

/// The queues a function connects to at cold start. A type, not a value:
/// each Lambda binary names its wiring in `main`, so a function whose route
/// uses no queue never references the SQS client and its binary does not
/// link it (docs/performance.md, "Lambda functions: size and cold start").
pub trait Queues {
    /// Connects to the fan-out queue (`FANOUT_QUEUE_URL`): publish.
    const FANOUT: bool = false;
    /// Announces sends on the inbound queue when `INBOUND_QUEUE_URL` names
    /// one: send.
    const INBOUND: bool = false;

    fn fanout(_: &aws_config::SdkConfig, _: &Env) -> Result<Option<Arc<dyn Queue>>, ConfigError> {
        Ok(None)
    }

    fn inbound(_: &aws_config::SdkConfig, _: &Env) -> Option<Arc<dyn Inbound>> {
        None
    }
}

/// Neither queue: every route but publish and send, and the cleanup.
pub struct NoQueue;

/// The fan-out queue: publish.
pub struct FanoutQueue;

/// The inbound queue, when the stack turns notifications on: send.
pub struct InboundQueue;

/// Both: the local server's `--backend aws`, which serves every route.
pub struct BothQueues;

impl Queues for NoQueue {}

impl Queues for FanoutQueue {
    const FANOUT: bool = true;

    fn fanout(
        sdk: &aws_config::SdkConfig,
        env: &Env,
    ) -> Result<Option<Arc<dyn Queue>>, ConfigError> {
        Ok(Some(Arc::new(queue_from(sdk, env)?)))
    }
}

impl Queues for InboundQueue {
    const INBOUND: bool = true;

    fn inbound(sdk: &aws_config::SdkConfig, env: &Env) -> Option<Arc<dyn Inbound>> {
        announced_on(inbound_from(sdk, env)?)
    }
}

impl Queues for BothQueues {
    const FANOUT: bool = true;
    const INBOUND: bool = true;

    fn fanout(
        sdk: &aws_config::SdkConfig,
        env: &Env,
    ) -> Result<Option<Arc<dyn Queue>>, ConfigError> {
        FanoutQueue::fanout(sdk, env)
    }

    fn inbound(sdk: &aws_config::SdkConfig, env: &Env) -> Option<Arc<dyn Inbound>> {
        InboundQueue::inbound(sdk, env)
    }
}

fn announced_on(inbound: SqsInbound) -> Option<Arc<dyn Inbound>> {
    tracing::info!(
        queue_url = inbound.queue_url(),
        "sends are announced on the inbound queue"
    );
    Some(Arc::new(inbound))
}

/// A Lambda function's cold start: an app over DynamoDB and the queues
/// `Q` names, holding the secrets in `secrets` (each must be set), from
/// the process environment.
pub async fn app_from_env<Q: Queues>(secrets: &[Secret]) -> Result<App, ConfigError> {
    let env = Env::from_process();
    app_wired::<Q>(&lambda_sdk_config(&env), &env, secrets).await
}

/// The cold start of [`app_from_env`] for a given SDK configuration and
/// environment, with the fan-out queue when `with_queue` and the inbound
/// queue when `INBOUND_QUEUE_URL` is set. The tables and the queue are
/// checked before any secret is read.
pub async fn app_from(
    sdk: &aws_config::SdkConfig,
    env: &Env,
    secrets: &[Secret],
    with_queue: bool,
) -> Result<App, ConfigError> {
    if with_queue {
        app_wired::<BothQueues>(sdk, env, secrets).await
    } else {
        app_wired::<InboundQueue>(sdk, env, secrets).await
    }
}

async fn app_wired<Q: Queues>(
    sdk: &aws_config::SdkConfig,
    env: &Env,
    secrets: &[Secret],
) -> Result<App, ConfigError> {
    let store = store_from(sdk, env)?;
    let queue = Q::fanout(sdk, env)?;
    // The connection to DynamoDB opens while the secrets are read.
    let ((), config) =
        futures_util::future::join(warm_up(&store, env), config_from(sdk, env, secrets)).await;
    let config = config?;
    let store: Arc<dyn Store> = Arc::new(store);
    Ok(with_inbound::<Q>(
        App::new(&config, store, queue, Arc::new(SystemClock)),
        sdk,
        env,
    ))
}

/// `app`, announcing sends on the inbound queue when `Q` and `env` name one.
fn with_inbound<Q: Queues>(app: App, sdk: &aws_config::SdkConfig, env: &Env) -> App {
    match Q::inbound(sdk, env) {
        Some(inbound) => app.with_inbound(inbound),
        None => app,
    }
}

/// An app over DynamoDB (and SQS when `with_queue`) for a configuration
/// read elsewhere (the local server layers its secrets file under the
/// environment). Like [`app_from_env`], it announces sends on the inbound
/// queue when `INBOUND_QUEUE_URL` is set.
pub async fn app_with_config(config: &Config, with_queue: bool) -> Result<App, ConfigError> {
    let sdk = sdk_config().await;
    let env = Env::from_process();
    let store: Arc<dyn Store> = Arc::new(store_from(&sdk, &env)?);
    let queue = if with_queue {
        FanoutQueue::fanout(&sdk, &env)?
    } else {
        None
    };
    let app = App::new(config, store, queue, Arc::new(SystemClock));
    Ok(with_inbound::<InboundQueue>(app, &sdk, &env))
}

/// `DYNAMODB_WARM_UP=off` leaves opening the DynamoDB connection to the first
/// request, as before the warm-up existed: only to measure what the warm-up
/// saves (`bench/lambda_init.py`).
pub const DYNAMODB_WARM_UP: &str = "DYNAMODB_WARM_UP";

/// Opens the DynamoDB connection during init ([`DynamoStore::warm_up`])
/// unless `env` turns that off.
async fn warm_up(store: &DynamoStore, env: &Env) {
    if env.get(DYNAMODB_WARM_UP).as_deref() != Some("off") {
        store.warm_up().await;
    }
}

/// The fan-out function over DynamoDB, for the SQS-triggered function:
/// [`FANOUT_SECRETS`] from the process environment.
pub async fn fanout_from_env() -> Result<FanoutFunction, ConfigError> {
    let env = Env::from_process();
    fanout_from(&lambda_sdk_config(&env), &env).await
}

/// The cold start of [`fanout_from_env`] for a given SDK configuration and
/// environment.
pub async fn fanout_from(
    sdk: &aws_config::SdkConfig,
    env: &Env,
) -> Result<FanoutFunction, ConfigError> {
    let store = store_from(sdk, env)?;
    let continuation = FanoutQueue::fanout(sdk, env)?;
    let ((), config) =
        futures_util::future::join(warm_up(&store, env), config_from(sdk, env, &FANOUT_SECRETS))
            .await;
    fanout_over(Arc::new(store), continuation, &config?)
}

/// The fan-out worker, and the fan-out queue (`FANOUT_QUEUE_URL`) to hand
/// unfinished jobs back to.
pub async fn fanout_with_config(config: &Config) -> Result<FanoutFunction, ConfigError> {
    let (sdk, env) = (sdk_config().await, Env::from_process());
    let store: Arc<dyn Store> = Arc::new(store_from(&sdk, &env)?);
    let continuation = FanoutQueue::fanout(&sdk, &env)?;
    fanout_over(store, continuation, config)
}

fn fanout_over(
    store: Arc<dyn Store>,
    continuation: Option<Arc<dyn Queue>>,
    config: &Config,
) -> Result<FanoutFunction, ConfigError> {
    let keys = fanout_keys(config)?;
    Ok(FanoutFunction::new(
        Fanout::new(store, keys, Arc::new(SystemClock)),
        continuation,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_endpoint_wins_over_the_general_one() {
        use aws_types::service_config::{LoadServiceConfig, ServiceConfigKey};
        let endpoints = EndpointsFromEnv(Env::from_pairs([
            ("AWS_ENDPOINT_URL", "http://general"),
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", " http://secrets "),
        ]));
        let key = |service| {
            ServiceConfigKey::builder()
                .service_id(service)
                .env("AWS_ENDPOINT_URL")
                .profile("endpoint_url")
                .build()
                .unwrap()
        };
        assert_eq!(
            endpoints.load_config(key("Secrets Manager")).as_deref(),
            Some("http://secrets")
        );
        assert_eq!(
            endpoints.load_config(key("DynamoDB")).as_deref(),
            Some("http://general")
        );
        let none = EndpointsFromEnv(Env::from_pairs([("X", "y")]));
        assert_eq!(none.load_config(key("DynamoDB")), None);
    }

    #[test]
    fn finds_each_secret_the_environment_names_by_arn() {
        let env = Env::from_pairs([
            (
                "TOKEN_KEY_SECRET_ARN",
                " arn:aws:secretsmanager:eu-west-1:1:secret:tk ",
            ),
            (
                "MASTER_KEY_SECRET_ARN",
                "arn:aws:secretsmanager:eu-west-1:1:secret:mk",
            ),
            ("ADMIN_TOKEN_SECRET_ARN", "  "),
            ("CLIENTS_TABLE", "clients"),
            ("TOKEN_KEY", "plain"),
        ]);
        let refs = secret_refs(&env).unwrap();
        assert_eq!(
            refs,
            vec![
                SecretRef {
                    name: "MASTER_KEY",
                    arn: "arn:aws:secretsmanager:eu-west-1:1:secret:mk".into()
                },
                SecretRef {
                    name: "TOKEN_KEY",
                    arn: "arn:aws:secretsmanager:eu-west-1:1:secret:tk".into()
                },
            ]
        );
        assert_eq!(refs[1].variable(), "TOKEN_KEY_SECRET_ARN");
    }

    #[test]
    fn every_secret_can_be_named_by_arn() {
        for secret in Secret::ALL {
            let variable = format!("{}{SECRET_ARN_SUFFIX}", secret.env_name());
            let refs = secret_refs(&Env::from_pairs([(variable.as_str(), "arn:x")])).unwrap();
            assert_eq!(refs.len(), 1, "{variable}");
        }
    }

    #[test]
    fn an_unknown_secret_variable_is_an_error_naming_it() {
        // A typo, built so the template test's scan of the sources for
        // variable names does not take it for one.
        let typo = format!("TOKEN_KYE{SECRET_ARN_SUFFIX}");
        let env = Env::from_pairs([(typo.as_str(), "arn:x")]);
        let err = secret_refs(&env).unwrap_err();
        assert!(err.0.starts_with(&format!("{typo} set")), "{err}");
        assert!(err.0.contains("TOKEN_KEY_SECRET_ARN"), "{err}");
    }

    #[test]
    fn an_environment_shows_names_not_values() {
        let env = Env::from_pairs([("ADMIN_TOKEN", "s3cret-admin-value")]);
        let shown = format!("{env:?}");
        assert!(
            shown.contains("ADMIN_TOKEN") && !shown.contains("s3cret"),
            "{shown}"
        );
        assert_eq!(
            env.get("ADMIN_TOKEN").as_deref(),
            Some("s3cret-admin-value")
        );
        assert_eq!(Env::from_pairs([("X", " ")]).get("X"), None);
    }

    #[test]
    fn the_inbound_queue_is_used_only_when_named() {
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let url = "https://sqs.us-east-1.amazonaws.com/1/p-InboundQueue.fifo";
        let env = Env::from_pairs([(INBOUND_QUEUE_URL, format!(" {url} "))]);
        assert_eq!(inbound_from(&sdk, &env).unwrap().queue_url(), url);
        for env in [
            Env::from_pairs([(INBOUND_QUEUE_URL, "  ")]),
            Env::from_pairs([(FANOUT_QUEUE_URL, url)]),
        ] {
            assert!(inbound_from(&sdk, &env).is_none(), "{env:?}");
        }
    }

    #[test]
    fn the_fanout_holds_only_the_keys_it_uses() {
        assert!(FANOUT_SECRETS.iter().all(|s| s.is_key()));
        assert!(!FANOUT_SECRETS.contains(&Secret::TokenKey));
        assert!(!FANOUT_SECRETS.contains(&Secret::FingerprintKey));
    }
}
