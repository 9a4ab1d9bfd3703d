//! Creates Pigeonhole's DynamoDB tables and SQS queues on any endpoint (real
//! AWS, LocalStack, moto) from the resources in `template.yaml`, so the
//! template is the one source of truth for what they look like.
//!
//! The tables get names `<prefix>clients`, `<prefix>fingerprints`, … exactly as
//! [`TableNames::with_prefix`] names them. The queues get names `<prefix>fanout`,
//! `<prefix>fanout-dlq` and `<prefix>inbound.fifo` (the inbound queue is FIFO,
//! and SQS wants the suffix). The inbound queue is created even though the
//! template makes it conditional (`InboundNotifications`): offline, the local
//! server announces sends on it whenever `INBOUND_QUEUE_URL` is set. Running
//! it twice is fine: what exists already is left in place (its key schema is
//! checked), and its TTL, point-in-time recovery and queue attributes are
//! brought in line with the template (except `FifoQueue`, which SQS fixes at
//! creation).

pub mod template;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, PointInTimeRecoverySpecification,
    ProvisionedThroughput, ScalarAttributeType, TableStatus, TimeToLiveSpecification,
    TimeToLiveStatus,
};
use aws_sdk_sqs::types::QueueAttributeName;
use pigeonhole::store::dynamodb::TableNames;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};
use template::{AttributeValue, Plan, QueueRole, QueueSpec, TableSpec, FIFO_QUEUE};

#[derive(Debug, thiserror::Error)]
pub enum InfraError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("template: {0}")]
    Template(String),
    #[error("invalid prefix {0:?}: use letters, digits, '-' and '_' (at most 60)")]
    Prefix(String),
    #[error("{action}: {message}")]
    Aws { action: String, message: String },
}

fn aws<E>(action: impl Into<String>) -> impl FnOnce(E) -> InfraError
where
    E: std::error::Error + 'static,
{
    let action = action.into();
    move |e| InfraError::Aws {
        action,
        message: aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string(),
    }
}

fn built<T, E: std::fmt::Display>(what: &str, result: Result<T, E>) -> Result<T, InfraError> {
    result.map_err(|e| InfraError::Template(format!("{what}: {e}")))
}

/// What [`provision`] created or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    pub tables: TableNames,
    /// The fan-out queue's URL (`FANOUT_QUEUE_URL`).
    pub queue_url: String,
    /// The fan-out dead-letter queue's URL.
    pub dlq_url: String,
    /// The inbound (FIFO) queue's URL (`INBOUND_QUEUE_URL`).
    pub inbound_queue_url: String,
    /// What was done, one line per step ("created table …", "table …
    /// exists"). Only meant for people to read.
    pub log: Vec<String>,
}

impl Provisioned {
    /// The environment the functions and the local server's `--backend aws`
    /// read: `CLIENTS_TABLE=…` through `AUDIENCES_TABLE=…`, then
    /// `FANOUT_QUEUE_URL=…` and `INBOUND_QUEUE_URL=…`.
    pub fn env_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = TableNames::ENV
            .iter()
            .zip(self.tables.all())
            .map(|(var, name)| format!("{var}={name}"))
            .collect();
        lines.push(format!(
            "{}={}",
            pigeonhole::aws::FANOUT_QUEUE_URL,
            self.queue_url
        ));
        lines.push(format!(
            "{}={}",
            pigeonhole::aws::INBOUND_QUEUE_URL,
            self.inbound_queue_url
        ));
        lines
    }
}

/// Table names allow `[a-zA-Z0-9_.-]` and queue names `[a-zA-Z0-9_-]` (at
/// most 80 characters, and `inbound.fifo` takes 12 of them).
fn check_prefix(prefix: &str) -> Result<(), InfraError> {
    let ok = prefix.len() <= 60
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(InfraError::Prefix(prefix.to_string()))
    }
}

/// Reads `template` and creates its tables and queues with names starting
/// with `prefix`, on the endpoint that `sdk` points at.
pub async fn provision(
    sdk: &aws_config::SdkConfig,
    template: &Path,
    prefix: &str,
) -> Result<Provisioned, InfraError> {
    let text = std::fs::read_to_string(template).map_err(|source| InfraError::Read {
        path: template.display().to_string(),
        source,
    })?;
    let plan = Plan::from_yaml(&text)?;
    apply(sdk, &plan, prefix).await
}

/// Creates what `plan` describes.
pub async fn apply(
    sdk: &aws_config::SdkConfig,
    plan: &Plan,
    prefix: &str,
) -> Result<Provisioned, InfraError> {
    check_prefix(prefix)?;
    let tables = TableNames::with_prefix(prefix);
    let mut log = Vec::new();
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    // Create every table first and then wait. On AWS each table takes
    // seconds to become ACTIVE, and this way they do it side by side.
    for spec in &plan.tables {
        create_table(&dynamodb, spec, spec.role.name(&tables), &mut log).await?;
    }
    for spec in &plan.tables {
        let name = spec.role.name(&tables);
        wait_until_active(&dynamodb, name).await?;
        configure_table(&dynamodb, spec, name, &mut log).await?;
    }

    let sqs = aws_sdk_sqs::Client::new(sdk);
    let mut created: HashMap<QueueRole, (String, String)> = HashMap::new();
    for spec in &plan.queues {
        let (url, arn) = create_queue(&sqs, spec, prefix, &created, &mut log).await?;
        created.insert(spec.role, (url, arn));
    }
    let url = |role: QueueRole| {
        created
            .get(&role)
            .map(|(url, _)| url.clone())
            .ok_or_else(|| InfraError::Template(format!("no {} queue", role.logical_id())))
    };
    Ok(Provisioned {
        queue_url: url(QueueRole::Fanout)?,
        dlq_url: url(QueueRole::FanoutDeadLetter)?,
        inbound_queue_url: url(QueueRole::Inbound)?,
        tables,
        log,
    })
}

async fn create_table(
    client: &aws_sdk_dynamodb::Client,
    spec: &TableSpec,
    name: &str,
    log: &mut Vec<String>,
) -> Result<(), InfraError> {
    let mut request = client.create_table().table_name(name);
    for (attribute, kind) in &spec.attributes {
        request = request.attribute_definitions(built(
            "AttributeDefinitions",
            AttributeDefinition::builder()
                .attribute_name(attribute)
                .attribute_type(ScalarAttributeType::from(kind.as_str()))
                .build(),
        )?);
    }
    for (attribute, kind) in &spec.key_schema {
        request = request.key_schema(built(
            "KeySchema",
            KeySchemaElement::builder()
                .attribute_name(attribute)
                .key_type(KeyType::from(kind.as_str()))
                .build(),
        )?);
    }
    request = request.billing_mode(BillingMode::from(
        spec.billing_mode.as_deref().unwrap_or("PROVISIONED"),
    ));
    if let Some((read, write)) = spec.provisioned_throughput {
        request = request.provisioned_throughput(built(
            "ProvisionedThroughput",
            ProvisionedThroughput::builder()
                .read_capacity_units(read)
                .write_capacity_units(write)
                .build(),
        )?);
    }
    if let Some(protect) = spec.deletion_protection {
        request = request.deletion_protection_enabled(protect);
    }
    match request.send().await {
        Ok(_) => {
            log.push(format!("created table {name}"));
            Ok(())
        }
        Err(e) if e.code() == Some("ResourceInUseException") => {
            check_existing_table(client, spec, name).await?;
            log.push(format!("table {name} exists"));
            Ok(())
        }
        Err(e) => Err(aws(format!("CreateTable {name}"))(e)),
    }
}

/// A table that exists already must have the template's key: a key cannot
/// be changed in place.
async fn check_existing_table(
    client: &aws_sdk_dynamodb::Client,
    spec: &TableSpec,
    name: &str,
) -> Result<(), InfraError> {
    let out = client
        .describe_table()
        .table_name(name)
        .send()
        .await
        .map_err(aws(format!("DescribeTable {name}")))?;
    let found: Vec<(String, String)> = out
        .table
        .as_ref()
        .map(|t| {
            t.key_schema()
                .iter()
                .map(|k| {
                    (
                        k.attribute_name().to_string(),
                        k.key_type().as_str().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if found != spec.key_schema {
        return Err(InfraError::Aws {
            action: format!("table {name}"),
            message: format!(
                "exists with key {found:?} but the template says {:?}; \
                 delete it or pick another prefix",
                spec.key_schema
            ),
        });
    }
    Ok(())
}

async fn wait_until_active(
    client: &aws_sdk_dynamodb::Client,
    name: &str,
) -> Result<(), InfraError> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let out = client
            .describe_table()
            .table_name(name)
            .send()
            .await
            .map_err(aws(format!("DescribeTable {name}")))?;
        let status = out.table.and_then(|t| t.table_status);
        if status == Some(TableStatus::Active) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(InfraError::Aws {
                action: format!("table {name}"),
                message: format!("not ACTIVE after 10 minutes (status {status:?})"),
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Applies TTL and point-in-time recovery, which CreateTable cannot set.
async fn configure_table(
    client: &aws_sdk_dynamodb::Client,
    spec: &TableSpec,
    name: &str,
    log: &mut Vec<String>,
) -> Result<(), InfraError> {
    if let Some((attribute, enabled)) = &spec.ttl {
        let current = client
            .describe_time_to_live()
            .table_name(name)
            .send()
            .await
            .map_err(aws(format!("DescribeTimeToLive {name}")))?
            .time_to_live_description;
        let status = current
            .as_ref()
            .and_then(|d| d.time_to_live_status().cloned())
            .unwrap_or(TimeToLiveStatus::Disabled);
        let current_attribute = current
            .as_ref()
            .and_then(|d| d.attribute_name())
            .unwrap_or("");
        let on = matches!(
            status,
            TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling
        );
        // AWS refuses to "enable" TTL that is on already, so look first.
        let needed = if *enabled {
            if on && current_attribute != attribute {
                return Err(InfraError::Aws {
                    action: format!("TTL of {name}"),
                    message: format!(
                        "is on attribute {current_attribute}, the template says {attribute}; \
                         AWS only allows that change after disabling TTL"
                    ),
                });
            }
            !on
        } else {
            on
        };
        if needed {
            // Disabling must name the attribute that has TTL now.
            let target = if *enabled {
                attribute.as_str()
            } else {
                current_attribute
            };
            client
                .update_time_to_live()
                .table_name(name)
                .time_to_live_specification(built(
                    "TimeToLiveSpecification",
                    TimeToLiveSpecification::builder()
                        .attribute_name(target)
                        .enabled(*enabled)
                        .build(),
                )?)
                .send()
                .await
                .map_err(aws(format!("UpdateTimeToLive {name}")))?;
            log.push(format!(
                "TTL of {name} {} on {target}",
                if *enabled { "enabled" } else { "disabled" }
            ));
        }
    }
    if let Some(enabled) = spec.point_in_time_recovery {
        let specification = built(
            "PointInTimeRecoverySpecification",
            PointInTimeRecoverySpecification::builder()
                .point_in_time_recovery_enabled(enabled)
                .build(),
        )?;
        // Right after CreateTable, AWS may answer that backups are still
        // being set up; that passes within a minute.
        let mut attempt = 0;
        loop {
            let result = client
                .update_continuous_backups()
                .table_name(name)
                .point_in_time_recovery_specification(specification.clone())
                .send()
                .await;
            match result {
                Ok(_) => break,
                Err(e)
                    if e.code() == Some("ContinuousBackupsUnavailableException")
                        && attempt < 30 =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(e) => return Err(aws(format!("UpdateContinuousBackups {name}"))(e)),
            }
        }
        log.push(format!(
            "point-in-time recovery of {name} {}",
            if enabled { "on" } else { "off" }
        ));
    }
    Ok(())
}

/// Creates a queue (or updates the attributes of the one that exists) and
/// returns its URL and ARN.
async fn create_queue(
    client: &aws_sdk_sqs::Client,
    spec: &QueueSpec,
    prefix: &str,
    created: &HashMap<QueueRole, (String, String)>,
    log: &mut Vec<String>,
) -> Result<(String, String), InfraError> {
    let name = spec.role.name(prefix);
    let mut attributes: HashMap<QueueAttributeName, String> = HashMap::new();
    for (key, value) in &spec.attributes {
        let value = match value {
            AttributeValue::Literal(text) => text.clone(),
            AttributeValue::Redrive {
                dead_letter,
                max_receive_count,
            } => {
                let (_, arn) = created.get(dead_letter).ok_or_else(|| {
                    InfraError::Template(format!(
                        "{} must be created before {}",
                        dead_letter.logical_id(),
                        spec.role.logical_id()
                    ))
                })?;
                // SQS wants the redrive policy as a JSON string, with
                // maxReceiveCount as a number or a string.
                serde_json::json!({
                    "deadLetterTargetArn": arn,
                    "maxReceiveCount": max_receive_count
                        .parse::<u64>()
                        .map(serde_json::Value::from)
                        .unwrap_or_else(|_| max_receive_count.clone().into()),
                })
                .to_string()
            }
        };
        attributes.insert(QueueAttributeName::from(key.as_str()), value);
    }
    let result = client
        .create_queue()
        .queue_name(&name)
        .set_attributes(Some(attributes.clone()).filter(|a| !a.is_empty()))
        .send()
        .await;
    let url = match result {
        Ok(out) => {
            log.push(format!("queue {name} ready"));
            out.queue_url.ok_or_else(|| InfraError::Aws {
                action: format!("CreateQueue {name}"),
                message: "no QueueUrl in the answer".into(),
            })?
        }
        // It exists with other attributes: bring them in line.
        Err(e)
            if matches!(
                e.code(),
                Some(
                    "QueueNameExists"
                        | "QueueAlreadyExists"
                        | "AWS.SimpleQueueService.QueueNameExists"
                )
            ) =>
        {
            let url = client
                .get_queue_url()
                .queue_name(&name)
                .send()
                .await
                .map_err(aws(format!("GetQueueUrl {name}")))?
                .queue_url
                .unwrap_or_default();
            // Whether a queue is FIFO is fixed at creation (and by its
            // name): SQS refuses the attribute here.
            attributes.remove(&QueueAttributeName::from(FIFO_QUEUE));
            client
                .set_queue_attributes()
                .queue_url(&url)
                .set_attributes(Some(attributes))
                .send()
                .await
                .map_err(aws(format!("SetQueueAttributes {name}")))?;
            log.push(format!("queue {name} existed; attributes updated"));
            url
        }
        Err(e) => return Err(aws(format!("CreateQueue {name}"))(e)),
    };
    let arn = client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(aws(format!("GetQueueAttributes {name}")))?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .ok_or_else(|| InfraError::Aws {
            action: format!("GetQueueAttributes {name}"),
            message: "no QueueArn in the answer".into(),
        })?;
    Ok((url, arn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lines_name_every_table_and_the_queue() {
        let provisioned = Provisioned {
            tables: TableNames::with_prefix("p-"),
            queue_url: "http://localhost:1/000000000000/p-fanout".into(),
            dlq_url: "http://localhost:1/000000000000/p-fanout-dlq".into(),
            inbound_queue_url: "http://localhost:1/000000000000/p-inbound.fifo".into(),
            log: Vec::new(),
        };
        assert_eq!(
            provisioned.env_lines(),
            vec![
                "CLIENTS_TABLE=p-clients",
                "FINGERPRINTS_TABLE=p-fingerprints",
                "MESSAGES_TABLE=p-messages",
                "CLIENT_MESSAGES_TABLE=p-client-messages",
                "DEDUP_TABLE=p-dedup",
                "AUDIENCES_TABLE=p-audiences",
                "FANOUT_QUEUE_URL=http://localhost:1/000000000000/p-fanout",
                "INBOUND_QUEUE_URL=http://localhost:1/000000000000/p-inbound.fifo",
            ]
        );
        let lines = provisioned.env_lines();
        let env = |k: &str| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(&format!("{k}=")).map(str::to_string))
        };
        assert_eq!(
            TableNames::from_lookup(env).unwrap(),
            provisioned.tables,
            "the store reads back what infra writes"
        );
        // And the send path finds its inbound queue there.
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let vars = pigeonhole::aws::Env::from_pairs(
            lines.iter().map(|l| l.split_once('=').expect("NAME=value")),
        );
        assert_eq!(
            pigeonhole::aws::inbound_from(&sdk, &vars)
                .expect("INBOUND_QUEUE_URL is read")
                .queue_url(),
            provisioned.inbound_queue_url
        );
    }

    #[test]
    fn prefixes_must_fit_table_and_queue_names() {
        assert!(check_prefix("").is_ok());
        assert!(check_prefix("t123-4_").is_ok());
        assert!(check_prefix("has space").is_err());
        assert!(check_prefix("dot.").is_err());
        assert!(check_prefix(&"x".repeat(61)).is_err());
    }
}
