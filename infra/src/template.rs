//! Reading the tables and queues out of `template.yaml`.
//!
//! YAML crate: `saphyr` (with `default-features = false`). It is maintained
//! (by the yaml-rust2 people), pure Rust with a few small dependencies, and it
//! parses YAML 1.2. It also keeps a user-defined tag such as `!GetAtt X.Arn`
//! as `Yaml::Tagged(tag, node)` and does not reject it, and a CloudFormation
//! template needs exactly that. The other crates fell short here.
//! `serde_yaml` is deprecated and archived. `serde_yml` is deprecated too
//! (RUSTSEC-2025-0068; 0.0.13 is only a shim that points users elsewhere).
//! The serde_yaml forks `serde_norway` and `serde_yaml_ng` bring
//! `unsafe-libyaml` and serde for a read-only walk over a tree.
//!
//! Only the resources `infra` creates are read: every
//! `AWS::DynamoDB::Table` and `AWS::SQS::Queue`. Other resources
//! (functions, secrets, the API, alarms) are skipped. A table or queue
//! property that `infra` cannot apply is an error, so the template stays
//! the one source of truth.

use crate::InfraError;
use pigeonhole::store::dynamodb::TableNames;
use saphyr::{LoadableYamlNode, Scalar, Yaml};
use std::collections::BTreeMap;

/// The tables the store uses. The code knows each one by a field of
/// [`TableNames`], and the template knows it by a logical ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TableRole {
    Clients,
    Fingerprints,
    Messages,
    ClientMessages,
    Dedup,
    Audiences,
}

impl TableRole {
    pub const ALL: [TableRole; 6] = [
        TableRole::Clients,
        TableRole::Fingerprints,
        TableRole::Messages,
        TableRole::ClientMessages,
        TableRole::Dedup,
        TableRole::Audiences,
    ];

    /// The logical ID the template gives the table.
    pub fn logical_id(self) -> &'static str {
        match self {
            TableRole::Clients => "ClientsTable",
            TableRole::Fingerprints => "FingerprintsTable",
            TableRole::Messages => "MessagesTable",
            TableRole::ClientMessages => "ClientMessagesTable",
            TableRole::Dedup => "DedupTable",
            TableRole::Audiences => "AudiencesTable",
        }
    }

    pub fn from_logical_id(id: &str) -> Option<TableRole> {
        TableRole::ALL.into_iter().find(|r| r.logical_id() == id)
    }

    /// The table's physical name, taken from the store's own naming.
    pub fn name(self, names: &TableNames) -> &str {
        // An exhaustive destructuring: a new field in `TableNames` stops
        // this from compiling until it has a role and a logical ID here.
        let TableNames {
            clients,
            fingerprints,
            messages,
            client_messages,
            dedup,
            audiences,
        } = names;
        match self {
            TableRole::Clients => clients,
            TableRole::Fingerprints => fingerprints,
            TableRole::Messages => messages,
            TableRole::ClientMessages => client_messages,
            TableRole::Dedup => dedup,
            TableRole::Audiences => audiences,
        }
    }
}

/// The queues: the fan-out queue, its dead-letter queue, and the inbound
/// queue on which send announces each stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QueueRole {
    Fanout,
    FanoutDeadLetter,
    Inbound,
}

impl QueueRole {
    pub const ALL: [QueueRole; 3] = [
        QueueRole::Fanout,
        QueueRole::FanoutDeadLetter,
        QueueRole::Inbound,
    ];

    pub fn logical_id(self) -> &'static str {
        match self {
            QueueRole::Fanout => "FanoutQueue",
            QueueRole::FanoutDeadLetter => "FanoutDeadLetterQueue",
            QueueRole::Inbound => "InboundQueue",
        }
    }

    pub fn from_logical_id(id: &str) -> Option<QueueRole> {
        QueueRole::ALL.into_iter().find(|r| r.logical_id() == id)
    }

    /// Whether the queue is FIFO. The code relies on it: send gives each
    /// notice a message group and a deduplication id, which only a FIFO
    /// queue takes.
    pub fn is_fifo(self) -> bool {
        self == QueueRole::Inbound
    }

    /// The queue's physical name: `<prefix>fanout`, `<prefix>fanout-dlq`,
    /// `<prefix>inbound.fifo` (SQS wants `.fifo` at the end of exactly the
    /// FIFO queues' names).
    pub fn name(self, prefix: &str) -> String {
        match self {
            QueueRole::Fanout => format!("{prefix}fanout"),
            QueueRole::FanoutDeadLetter => format!("{prefix}fanout-dlq"),
            QueueRole::Inbound => format!("{prefix}inbound.fifo"),
        }
    }
}

/// One `AWS::DynamoDB::Table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub role: TableRole,
    /// `(AttributeName, AttributeType)`, e.g. `("seq", "N")`.
    pub attributes: Vec<(String, String)>,
    /// `(AttributeName, KeyType)`, e.g. `("client_id", "HASH")`.
    pub key_schema: Vec<(String, String)>,
    /// `PAY_PER_REQUEST` or `PROVISIONED`. `None` means the default, which
    /// is `PROVISIONED`.
    pub billing_mode: Option<String>,
    /// `(ReadCapacityUnits, WriteCapacityUnits)`.
    pub provisioned_throughput: Option<(i64, i64)>,
    /// `(AttributeName, Enabled)`.
    pub ttl: Option<(String, bool)>,
    pub point_in_time_recovery: Option<bool>,
    pub deletion_protection: Option<bool>,
}

/// What a queue attribute's value is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeValue {
    Literal(String),
    /// A `RedrivePolicy` whose `deadLetterTargetArn` is the ARN of another
    /// queue in the template (`!GetAtt Queue.Arn`). It needs that queue to
    /// exist first.
    Redrive {
        dead_letter: QueueRole,
        max_receive_count: String,
    },
}

/// One `AWS::SQS::Queue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub role: QueueRole,
    /// SQS attribute name (which is also the CloudFormation property name)
    /// and its value.
    pub attributes: Vec<(String, AttributeValue)>,
}

impl QueueSpec {
    /// The queues this one refers to.
    pub fn depends_on(&self) -> Vec<QueueRole> {
        self.attributes
            .iter()
            .filter_map(|(_, v)| match v {
                AttributeValue::Redrive { dead_letter, .. } => Some(*dead_letter),
                AttributeValue::Literal(_) => None,
            })
            .collect()
    }
}

/// What the template asks `infra` to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The tables in the order of [`TableRole::ALL`].
    pub tables: Vec<TableSpec>,
    /// The queues in creation order. A queue comes after every queue it
    /// refers to.
    pub queues: Vec<QueueSpec>,
}

/// Queue properties with the same name as an SQS attribute, passed through
/// unchanged. `FifoQueue` must say what [`QueueRole::is_fifo`] says (the
/// name ends in `.fifo` for exactly those queues), and the FIFO attributes
/// after it are for FIFO queues only: SQS refuses them on others.
const PLAIN_QUEUE_ATTRIBUTES: [&str; 13] = [
    "DelaySeconds",
    "KmsDataKeyReusePeriodSeconds",
    "KmsMasterKeyId",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "SqsManagedSseEnabled",
    "VisibilityTimeout",
    "RedriveAllowPolicy",
    FIFO_QUEUE,
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
];

/// The attribute that makes a queue FIFO. SQS takes it only when the queue
/// is created, never in `SetQueueAttributes`.
pub const FIFO_QUEUE: &str = "FifoQueue";

/// Attributes SQS accepts on FIFO queues only.
const FIFO_ONLY_ATTRIBUTES: [&str; 3] = [
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
];

/// Table properties `infra` does not apply. They change nothing that the
/// code or the tests can observe.
const IGNORED_TABLE_PROPERTIES: [&str; 3] = [
    "Tags",
    "SSESpecification",
    "ContributorInsightsSpecification",
];

fn err(message: impl Into<String>) -> InfraError {
    InfraError::Template(message.into())
}

/// The tag of a tagged node as CloudFormation writes it (`!GetAtt`), and
/// the node.
fn tagged<'a>(node: &'a Yaml<'a>) -> Option<(String, &'a Yaml<'a>)> {
    match node {
        Yaml::Tagged(tag, inner) => Some((format!("{}{}", tag.handle, tag.suffix), inner)),
        _ => None,
    }
}

fn describe(node: &Yaml) -> String {
    match node {
        Yaml::Tagged(tag, _) => format!("a value tagged {}{}", tag.handle, tag.suffix),
        Yaml::Mapping(_) => "a mapping".into(),
        Yaml::Sequence(_) => "a list".into(),
        Yaml::Value(Scalar::Null) => "null".into(),
        other => format!("{other:?}"),
    }
}

fn mapping_entries<'a>(
    node: &'a Yaml<'a>,
    what: &str,
) -> Result<Vec<(&'a str, &'a Yaml<'a>)>, InfraError> {
    let map = node
        .as_mapping()
        .ok_or_else(|| err(format!("{what} is {}, not a mapping", describe(node))))?;
    map.iter()
        .map(|(k, v)| match k.as_str() {
            Some(key) => Ok((key, v)),
            None => Err(err(format!("{what} has a key that is not a string"))),
        })
        .collect()
}

fn get<'a>(node: &'a Yaml<'a>, key: &str) -> Option<&'a Yaml<'a>> {
    node.as_mapping_get(key)
}

fn require<'a>(node: &'a Yaml<'a>, key: &str, what: &str) -> Result<&'a Yaml<'a>, InfraError> {
    get(node, key).ok_or_else(|| err(format!("{what} has no {key}")))
}

/// A literal scalar as text: strings as they are, numbers and booleans as
/// CloudFormation would pass them on (`360`, `true`).
fn literal(node: &Yaml, what: &str) -> Result<String, InfraError> {
    match node {
        Yaml::Value(Scalar::String(s)) => Ok(s.to_string()),
        Yaml::Value(Scalar::Integer(i)) => Ok(i.to_string()),
        Yaml::Value(Scalar::Boolean(b)) => Ok(b.to_string()),
        other => Err(err(format!(
            "{what} is {}; infra only applies literal values here",
            describe(other)
        ))),
    }
}

fn string(node: &Yaml, what: &str) -> Result<String, InfraError> {
    match node {
        Yaml::Value(Scalar::String(s)) => Ok(s.to_string()),
        other => Err(err(format!("{what} is {}, not a string", describe(other)))),
    }
}

fn boolean(node: &Yaml, what: &str) -> Result<bool, InfraError> {
    match node {
        Yaml::Value(Scalar::Boolean(b)) => Ok(*b),
        Yaml::Value(Scalar::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
        other => Err(err(format!("{what} is {}, not a boolean", describe(other)))),
    }
}

fn integer(node: &Yaml, what: &str) -> Result<i64, InfraError> {
    match node {
        Yaml::Value(Scalar::Integer(i)) => Ok(*i),
        Yaml::Value(Scalar::String(s)) => s
            .parse()
            .map_err(|_| err(format!("{what} is {s:?}, not an integer"))),
        other => Err(err(format!(
            "{what} is {}, not an integer",
            describe(other)
        ))),
    }
}

/// `(name, value)` pairs from a list of `{ NameKey: .., ValueKey: .. }`.
fn pairs(
    node: &Yaml,
    name_key: &str,
    value_key: &str,
    what: &str,
) -> Result<Vec<(String, String)>, InfraError> {
    let list = node
        .as_sequence()
        .ok_or_else(|| err(format!("{what} is {}, not a list", describe(node))))?;
    list.iter()
        .map(|entry| {
            Ok((
                string(
                    require(entry, name_key, what)?,
                    &format!("{what}.{name_key}"),
                )?,
                string(
                    require(entry, value_key, what)?,
                    &format!("{what}.{value_key}"),
                )?,
            ))
        })
        .collect()
}

/// The logical ID in `!GetAtt X.Arn`, `!GetAtt [X, Arn]` or
/// `{ "Fn::GetAtt": [X, Arn] }`.
fn get_att_arn(node: &Yaml, what: &str) -> Result<String, InfraError> {
    let (target, attribute) = if let Some((tag, inner)) = tagged(node) {
        if tag != "!GetAtt" {
            return Err(err(format!(
                "{what} is {}; only !GetAtt <Queue>.Arn is understood",
                describe(node)
            )));
        }
        get_att_parts(inner, what)?
    } else if let Some(inner) = get(node, "Fn::GetAtt") {
        get_att_parts(inner, what)?
    } else {
        return Err(err(format!(
            "{what} is {}; write !GetAtt <Queue>.Arn so infra can resolve it",
            describe(node)
        )));
    };
    if attribute != "Arn" {
        return Err(err(format!(
            "{what} refers to {target}.{attribute}; a dead-letter target must be {target}.Arn"
        )));
    }
    Ok(target)
}

fn get_att_parts(node: &Yaml, what: &str) -> Result<(String, String), InfraError> {
    if let Some(s) = node.as_str() {
        let (target, attribute) = s
            .split_once('.')
            .ok_or_else(|| err(format!("{what}: !GetAtt {s} has no attribute")))?;
        return Ok((target.to_string(), attribute.to_string()));
    }
    match node.as_sequence().map(Vec::as_slice) {
        Some([target, attribute]) => Ok((
            string(target, what)?,
            string(attribute, &format!("{what} attribute"))?,
        )),
        _ => Err(err(format!(
            "{what}: malformed !GetAtt ({})",
            describe(node)
        ))),
    }
}

fn table_spec(role: TableRole, properties: Option<&Yaml>) -> Result<TableSpec, InfraError> {
    let id = role.logical_id();
    let properties = properties.ok_or_else(|| err(format!("{id} has no Properties")))?;
    let mut spec = TableSpec {
        role,
        attributes: Vec::new(),
        key_schema: Vec::new(),
        billing_mode: None,
        provisioned_throughput: None,
        ttl: None,
        point_in_time_recovery: None,
        deletion_protection: None,
    };
    for (key, value) in mapping_entries(properties, &format!("{id}.Properties"))? {
        let what = format!("{id}.{key}");
        match key {
            "AttributeDefinitions" => {
                spec.attributes = pairs(value, "AttributeName", "AttributeType", &what)?
            }
            "KeySchema" => spec.key_schema = pairs(value, "AttributeName", "KeyType", &what)?,
            "BillingMode" => spec.billing_mode = Some(string(value, &what)?),
            "ProvisionedThroughput" => {
                spec.provisioned_throughput = Some((
                    integer(require(value, "ReadCapacityUnits", &what)?, &what)?,
                    integer(require(value, "WriteCapacityUnits", &what)?, &what)?,
                ))
            }
            "TimeToLiveSpecification" => {
                let enabled = boolean(require(value, "Enabled", &what)?, &what)?;
                let attribute = match get(value, "AttributeName") {
                    Some(name) => string(name, &what)?,
                    None if !enabled => String::new(),
                    None => return Err(err(format!("{what} enables TTL without AttributeName"))),
                };
                spec.ttl = Some((attribute, enabled));
            }
            "PointInTimeRecoverySpecification" => {
                spec.point_in_time_recovery = Some(boolean(
                    require(value, "PointInTimeRecoveryEnabled", &what)?,
                    &what,
                )?)
            }
            "DeletionProtectionEnabled" => spec.deletion_protection = Some(boolean(value, &what)?),
            "TableName" => {
                return Err(err(format!(
                    "{id} sets TableName; infra and the stack name tables themselves \
                     (infra as <prefix>{})",
                    role.name(&TableNames::with_prefix(""))
                )))
            }
            ignored if IGNORED_TABLE_PROPERTIES.contains(&ignored) => {}
            other => {
                return Err(err(format!(
                    "{id} has property {other}, which infra does not apply yet; \
                     teach infra/src/template.rs about it"
                )))
            }
        }
    }
    if spec.key_schema.is_empty() {
        return Err(err(format!("{id} has no KeySchema")));
    }
    for (key, _) in &spec.key_schema {
        if !spec.attributes.iter().any(|(name, _)| name == key) {
            return Err(err(format!(
                "{id}: key attribute {key} is missing from AttributeDefinitions"
            )));
        }
    }
    Ok(spec)
}

fn queue_spec(role: QueueRole, properties: Option<&Yaml>) -> Result<QueueSpec, InfraError> {
    let id = role.logical_id();
    let mut spec = QueueSpec {
        role,
        attributes: Vec::new(),
    };
    let Some(properties) = properties else {
        return Ok(spec);
    };
    for (key, value) in mapping_entries(properties, &format!("{id}.Properties"))? {
        let what = format!("{id}.{key}");
        match key {
            "RedrivePolicy" => {
                let target = get_att_arn(require(value, "deadLetterTargetArn", &what)?, &what)?;
                let dead_letter = QueueRole::from_logical_id(&target).ok_or_else(|| {
                    err(format!(
                        "{what} points at {target}, which is not a queue infra knows"
                    ))
                })?;
                let max_receive_count = literal(require(value, "maxReceiveCount", &what)?, &what)?;
                spec.attributes.push((
                    key.to_string(),
                    AttributeValue::Redrive {
                        dead_letter,
                        max_receive_count,
                    },
                ));
            }
            plain if PLAIN_QUEUE_ATTRIBUTES.contains(&plain) => spec.attributes.push((
                key.to_string(),
                AttributeValue::Literal(literal(value, &what)?),
            )),
            "QueueName" => {
                return Err(err(format!(
                    "{id} sets QueueName; infra names it {}",
                    role.name("<prefix>")
                )))
            }
            "Tags" => {}
            other => {
                return Err(err(format!(
                    "{id} has property {other}, which infra does not apply yet; \
                     teach infra/src/template.rs about it"
                )))
            }
        }
    }
    check_fifo(&spec)?;
    Ok(spec)
}

/// A queue is FIFO exactly when its role is: the code sends the inbound
/// queue's notices with a message group and a deduplication id (a
/// standard queue refuses them), and infra names exactly the FIFO queues
/// `….fifo`, as SQS requires.
fn check_fifo(spec: &QueueSpec) -> Result<(), InfraError> {
    let id = spec.role.logical_id();
    let literal = |name: &str| {
        spec.attributes.iter().find_map(|(key, value)| match value {
            AttributeValue::Literal(text) if key == name => Some(text.as_str()),
            _ => None,
        })
    };
    let fifo = literal(FIFO_QUEUE) == Some("true");
    if spec.role.is_fifo() && !fifo {
        return Err(err(format!(
            "{id} must be a FIFO queue (FifoQueue: true): send gives each notice a \
             message group and a deduplication id"
        )));
    }
    if !spec.role.is_fifo() {
        if fifo {
            return Err(err(format!(
                "{id} says FifoQueue: true; infra creates it as a standard queue ({})",
                spec.role.name("<prefix>")
            )));
        }
        if let Some(name) = FIFO_ONLY_ATTRIBUTES.iter().find(|n| literal(n).is_some()) {
            return Err(err(format!(
                "{id} sets {name}, which only a FIFO queue takes"
            )));
        }
    }
    Ok(())
}

/// Orders queues so each comes after the queues it refers to.
fn creation_order(mut queues: Vec<QueueSpec>) -> Result<Vec<QueueSpec>, InfraError> {
    let present: Vec<QueueRole> = queues.iter().map(|q| q.role).collect();
    for q in &queues {
        for dep in q.depends_on() {
            if !present.contains(&dep) {
                return Err(err(format!(
                    "{} refers to {}, which the template does not declare",
                    q.role.logical_id(),
                    dep.logical_id()
                )));
            }
        }
    }
    let mut ordered: Vec<QueueSpec> = Vec::with_capacity(queues.len());
    while !queues.is_empty() {
        let ready = queues.iter().position(|q| {
            q.depends_on()
                .iter()
                .all(|d| ordered.iter().any(|o| o.role == *d))
        });
        match ready {
            Some(i) => ordered.push(queues.remove(i)),
            None => {
                let stuck: Vec<&str> = queues.iter().map(|q| q.role.logical_id()).collect();
                return Err(err(format!(
                    "queues refer to each other in a cycle: {}",
                    stuck.join(", ")
                )));
            }
        }
    }
    Ok(ordered)
}

impl Plan {
    /// Reads the tables and queues from a template's text.
    pub fn from_yaml(text: &str) -> Result<Plan, InfraError> {
        let docs = Yaml::load_from_str(text).map_err(|e| err(format!("not YAML: {e}")))?;
        let root = docs.first().ok_or_else(|| err("the template is empty"))?;
        let resources = require(root, "Resources", "the template")?;
        let mut tables: BTreeMap<TableRole, TableSpec> = BTreeMap::new();
        let mut queues: Vec<QueueSpec> = Vec::new();
        for (id, resource) in mapping_entries(resources, "Resources")? {
            let kind = match get(resource, "Type") {
                Some(kind) => string(kind, &format!("{id}.Type"))?,
                None => return Err(err(format!("resource {id} has no Type"))),
            };
            let properties = get(resource, "Properties");
            match kind.as_str() {
                "AWS::DynamoDB::Table" => {
                    let role = TableRole::from_logical_id(id).ok_or_else(|| {
                        err(format!(
                            "table {id} is not one the store uses (it knows {}); \
                             add it to TableNames and to infra's TableRole",
                            TableRole::ALL.map(TableRole::logical_id).join(", ")
                        ))
                    })?;
                    tables.insert(role, table_spec(role, properties)?);
                }
                "AWS::SQS::Queue" => {
                    let role = QueueRole::from_logical_id(id).ok_or_else(|| {
                        err(format!(
                            "queue {id} is not one infra knows ({})",
                            QueueRole::ALL.map(QueueRole::logical_id).join(", ")
                        ))
                    })?;
                    queues.push(queue_spec(role, properties)?);
                }
                "AWS::Serverless::SimpleTable" | "AWS::DynamoDB::GlobalTable" => {
                    return Err(err(format!(
                        "{id} is a {kind}; infra creates AWS::DynamoDB::Table resources only"
                    )))
                }
                _ => {}
            }
        }
        let missing: Vec<&str> = TableRole::ALL
            .into_iter()
            .filter(|r| !tables.contains_key(r))
            .map(TableRole::logical_id)
            .collect();
        if !missing.is_empty() {
            return Err(err(format!(
                "the store needs tables the template does not declare: {}",
                missing.join(", ")
            )));
        }
        let missing: Vec<&str> = QueueRole::ALL
            .into_iter()
            .filter(|r| !queues.iter().any(|q| q.role == *r))
            .map(QueueRole::logical_id)
            .collect();
        if !missing.is_empty() {
            return Err(err(format!(
                "the template does not declare queues: {}",
                missing.join(", ")
            )));
        }
        Ok(Plan {
            tables: tables.into_values().collect(),
            queues: creation_order(queues)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLES: &str = r#"
  ClientsTable:
    Type: AWS::DynamoDB::Table
    Properties:
      BillingMode: PAY_PER_REQUEST
      AttributeDefinitions: [{ AttributeName: client_id, AttributeType: S }]
      KeySchema: [{ AttributeName: client_id, KeyType: HASH }]
  FingerprintsTable:
    Type: AWS::DynamoDB::Table
    Properties:
      AttributeDefinitions: [{ AttributeName: fingerprint_hash, AttributeType: B }]
      KeySchema: [{ AttributeName: fingerprint_hash, KeyType: HASH }]
      ProvisionedThroughput: { ReadCapacityUnits: 5, WriteCapacityUnits: "2" }
  MessagesTable:
    Type: AWS::DynamoDB::Table
    Properties:
      AttributeDefinitions:
        - { AttributeName: client_id, AttributeType: S }
        - { AttributeName: seq, AttributeType: N }
      KeySchema:
        - { AttributeName: client_id, KeyType: HASH }
        - { AttributeName: seq, KeyType: RANGE }
  ClientMessagesTable:
    Type: AWS::DynamoDB::Table
    Properties:
      AttributeDefinitions: [{ AttributeName: client_id, AttributeType: S }, { AttributeName: seq, AttributeType: N }]
      KeySchema: [{ AttributeName: client_id, KeyType: HASH }, { AttributeName: seq, KeyType: RANGE }]
  DedupTable:
    Type: AWS::DynamoDB::Table
    Properties:
      AttributeDefinitions: [{ AttributeName: dedup_id, AttributeType: S }]
      KeySchema: [{ AttributeName: dedup_id, KeyType: HASH }]
      TimeToLiveSpecification: { AttributeName: expires_at, Enabled: true }
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true }
  AudiencesTable:
    Type: AWS::DynamoDB::Table
    Properties:
      BillingMode: PAY_PER_REQUEST
      AttributeDefinitions:
        - { AttributeName: pk, AttributeType: S }
        - { AttributeName: sk, AttributeType: S }
      KeySchema:
        - { AttributeName: pk, KeyType: HASH }
        - { AttributeName: sk, KeyType: RANGE }
      TimeToLiveSpecification: { AttributeName: expires_at, Enabled: true }
"#;

    /// The queue that refers to the DLQ comes first, and the SAM, !Ref, !Sub
    /// and !GetAtt resources around it must parse.
    const QUEUES: &str = r#"
  FanoutQueue:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: 360
      MessageRetentionPeriod: "345600"
      RedrivePolicy:
        deadLetterTargetArn: !GetAtt FanoutDeadLetterQueue.Arn
        maxReceiveCount: 5
  FanoutFunction:
    Type: AWS::Serverless::Function
    Metadata: { BuildMethod: rust-cargolambda, BuildProperties: { Binary: fanout } }
    Properties:
      CodeUri: .
      Environment:
        Variables:
          CLIENTS_TABLE: !Ref ClientsTable
          QUEUE: !GetAtt [FanoutQueue, QueueName]
          GREETING: !Sub "https://${HttpApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/"
          JOINED: !Join [",", [!Ref ClientsTable, !Ref DedupTable]]
      Events:
        Queue: { Type: SQS, Properties: { Queue: !GetAtt FanoutQueue.Arn } }
  FanoutDeadLetterQueue:
    Type: AWS::SQS::Queue
    Properties:
      MessageRetentionPeriod: 1209600
  InboundQueue:
    Type: AWS::SQS::Queue
    Condition: InboundEnabled
    Properties:
      FifoQueue: true
      ContentBasedDeduplication: false
      DeduplicationScope: messageGroup
      FifoThroughputLimit: perMessageGroupId
      MessageRetentionPeriod: 345600
Outputs:
  ApiUrl: { Value: !Sub "https://${HttpApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/" }
"#;

    fn template(resources: &str) -> String {
        format!("AWSTemplateFormatVersion: \"2010-09-09\"\nTransform: AWS::Serverless-2016-10-31\nParameters:\n  AdminToken: {{ Type: String, NoEcho: true }}\nResources:{resources}")
    }

    fn plan() -> Plan {
        Plan::from_yaml(&template(&format!("{TABLES}{QUEUES}"))).unwrap()
    }

    fn message(result: Result<Plan, InfraError>) -> String {
        result.expect_err("the template is refused").to_string()
    }

    #[test]
    fn maps_logical_ids_to_the_store_table_names() {
        let names = TableNames::with_prefix("dev-");
        let plan = plan();
        let mapped: Vec<(&str, &str)> = plan
            .tables
            .iter()
            .map(|t| (t.role.logical_id(), t.role.name(&names)))
            .collect();
        assert_eq!(
            mapped,
            vec![
                ("ClientsTable", "dev-clients"),
                ("FingerprintsTable", "dev-fingerprints"),
                ("MessagesTable", "dev-messages"),
                ("ClientMessagesTable", "dev-client-messages"),
                ("DedupTable", "dev-dedup"),
                ("AudiencesTable", "dev-audiences"),
            ]
        );
        let mut all: Vec<&str> = TableRole::ALL.iter().map(|r| r.name(&names)).collect();
        let mut expected = names.all().to_vec();
        all.sort();
        expected.sort();
        assert_eq!(all, expected, "every TableNames field has exactly one role");
        assert_eq!(QueueRole::Fanout.name("dev-"), "dev-fanout");
        assert_eq!(QueueRole::FanoutDeadLetter.name("dev-"), "dev-fanout-dlq");
        assert_eq!(QueueRole::Inbound.name("dev-"), "dev-inbound.fifo");
        for role in QueueRole::ALL {
            assert_eq!(
                role.name("p-").ends_with(".fifo"),
                role.is_fifo(),
                "SQS wants .fifo on exactly the FIFO queues: {role:?}"
            );
            // SQS allows 80 characters, and prefixes may take 60.
            assert!(role.name(&"p".repeat(60)).len() <= 80, "{role:?}");
        }
    }

    #[test]
    fn reads_table_properties() {
        let plan = plan();
        let messages = &plan.tables[2];
        assert_eq!(messages.role, TableRole::Messages);
        assert_eq!(
            messages.key_schema,
            vec![
                ("client_id".to_string(), "HASH".to_string()),
                ("seq".to_string(), "RANGE".to_string())
            ]
        );
        assert_eq!(messages.attributes[1], ("seq".into(), "N".into()));
        assert_eq!(
            plan.tables[0].billing_mode.as_deref(),
            Some("PAY_PER_REQUEST")
        );
        assert_eq!(plan.tables[1].provisioned_throughput, Some((5, 2)));
        let dedup = &plan.tables[4];
        assert_eq!(dedup.ttl, Some(("expires_at".into(), true)));
        assert_eq!(dedup.point_in_time_recovery, Some(true));
        assert_eq!(plan.tables[0].ttl, None);
        let audiences = &plan.tables[5];
        assert_eq!(audiences.role, TableRole::Audiences);
        assert_eq!(
            audiences.key_schema,
            vec![
                ("pk".to_string(), "HASH".to_string()),
                ("sk".to_string(), "RANGE".to_string())
            ]
        );
        assert_eq!(audiences.ttl, Some(("expires_at".into(), true)));
    }

    #[test]
    fn creates_the_dead_letter_queue_first_and_resolves_its_arn() {
        let plan = plan();
        let order: Vec<QueueRole> = plan.queues.iter().map(|q| q.role).collect();
        assert_eq!(
            order,
            vec![
                QueueRole::FanoutDeadLetter,
                QueueRole::Fanout,
                QueueRole::Inbound
            ]
        );
        let fanout = &plan.queues[1];
        assert_eq!(
            fanout.attributes,
            vec![
                (
                    "VisibilityTimeout".into(),
                    AttributeValue::Literal("360".into())
                ),
                (
                    "MessageRetentionPeriod".into(),
                    AttributeValue::Literal("345600".into())
                ),
                (
                    "RedrivePolicy".into(),
                    AttributeValue::Redrive {
                        dead_letter: QueueRole::FanoutDeadLetter,
                        max_receive_count: "5".into()
                    }
                ),
            ]
        );
        assert_eq!(fanout.depends_on(), vec![QueueRole::FanoutDeadLetter]);
    }

    /// The inbound queue is FIFO, with its attributes as the template says
    /// (the condition that makes it optional on AWS does not matter here:
    /// infra always creates it).
    #[test]
    fn reads_the_fifo_inbound_queue() {
        let plan = plan();
        let inbound = plan
            .queues
            .iter()
            .find(|q| q.role == QueueRole::Inbound)
            .expect("the inbound queue");
        let literal = |text: &str| AttributeValue::Literal(text.into());
        assert_eq!(
            inbound.attributes,
            vec![
                ("FifoQueue".into(), literal("true")),
                ("ContentBasedDeduplication".into(), literal("false")),
                ("DeduplicationScope".into(), literal("messageGroup")),
                ("FifoThroughputLimit".into(), literal("perMessageGroupId")),
                ("MessageRetentionPeriod".into(), literal("345600")),
            ]
        );
        assert!(inbound.depends_on().is_empty());
    }

    #[test]
    fn refuses_a_fifo_queue_infra_names_as_standard_and_the_reverse() {
        let standard_inbound = QUEUES.replace("      FifoQueue: true\n", "");
        let msg = message(Plan::from_yaml(&template(&format!(
            "{TABLES}{standard_inbound}"
        ))));
        assert!(
            msg.contains("InboundQueue") && msg.contains("FifoQueue: true"),
            "{msg}"
        );
        let off = QUEUES.replace("FifoQueue: true", "FifoQueue: false");
        let msg = message(Plan::from_yaml(&template(&format!("{TABLES}{off}"))));
        assert!(msg.contains("InboundQueue"), "{msg}");

        let fifo_fanout = QUEUES.replace(
            "      VisibilityTimeout: 360",
            "      FifoQueue: true\n      VisibilityTimeout: 360",
        );
        let msg = message(Plan::from_yaml(&template(&format!(
            "{TABLES}{fifo_fanout}"
        ))));
        assert!(
            msg.contains("FanoutQueue") && msg.contains("standard queue"),
            "{msg}"
        );
        let dedup_on_fanout = QUEUES.replace(
            "      VisibilityTimeout: 360",
            "      ContentBasedDeduplication: true\n      VisibilityTimeout: 360",
        );
        let msg = message(Plan::from_yaml(&template(&format!(
            "{TABLES}{dedup_on_fanout}"
        ))));
        assert!(msg.contains("ContentBasedDeduplication"), "{msg}");

        let no_inbound =
            QUEUES.split("  InboundQueue:").next().unwrap().to_string() + "Outputs: {}\n";
        let msg = message(Plan::from_yaml(&template(&format!("{TABLES}{no_inbound}"))));
        assert!(msg.contains("InboundQueue"), "{msg}");
    }

    #[test]
    fn accepts_the_long_and_list_forms_of_get_att() {
        for form in [
            "!GetAtt [FanoutDeadLetterQueue, Arn]",
            "{ \"Fn::GetAtt\": [FanoutDeadLetterQueue, Arn] }",
        ] {
            let queues = QUEUES.replace("!GetAtt FanoutDeadLetterQueue.Arn", form);
            let plan = Plan::from_yaml(&template(&format!("{TABLES}{queues}"))).unwrap();
            assert_eq!(plan.queues[0].role, QueueRole::FanoutDeadLetter, "{form}");
        }
    }

    #[test]
    fn refuses_a_table_the_store_does_not_know() {
        let extra = "\n  AuditTable:\n    Type: AWS::DynamoDB::Table\n    Properties:\n      KeySchema: [{ AttributeName: id, KeyType: HASH }]\n";
        let text = template(&format!("{TABLES}{extra}{QUEUES}"));
        let msg = message(Plan::from_yaml(&text));
        assert!(
            msg.contains("AuditTable") && msg.contains("TableNames"),
            "{msg}"
        );
    }

    #[test]
    fn refuses_a_template_missing_a_table_the_store_needs() {
        let without_dedup = TABLES.split("  DedupTable:").next().unwrap();
        let msg = message(Plan::from_yaml(&template(&format!(
            "{without_dedup}{QUEUES}"
        ))));
        assert!(msg.contains("DedupTable"), "{msg}");
    }

    #[test]
    fn refuses_unknown_queues_and_unresolvable_redrive_targets() {
        let extra = "\n  OtherQueue:\n    Type: AWS::SQS::Queue\n";
        let msg = message(Plan::from_yaml(&template(&format!(
            "{TABLES}{extra}{QUEUES}"
        ))));
        assert!(msg.contains("OtherQueue"), "{msg}");

        let by_ref = QUEUES.replace(
            "!GetAtt FanoutDeadLetterQueue.Arn",
            "!Ref FanoutDeadLetterQueue",
        );
        let msg = message(Plan::from_yaml(&template(&format!("{TABLES}{by_ref}"))));
        assert!(msg.contains("!Ref"), "{msg}");

        let no_dlq = QUEUES.split("  FanoutDeadLetterQueue:").next().unwrap();
        let msg = message(Plan::from_yaml(&template(&format!("{TABLES}{no_dlq}"))));
        assert!(msg.contains("FanoutDeadLetterQueue"), "{msg}");
    }

    #[test]
    fn refuses_properties_it_cannot_apply() {
        let gsi = TABLES.replace(
            "      TimeToLiveSpecification",
            "      GlobalSecondaryIndexes: []\n      TimeToLiveSpecification",
        );
        let msg = message(Plan::from_yaml(&template(&format!("{gsi}{QUEUES}"))));
        assert!(msg.contains("GlobalSecondaryIndexes"), "{msg}");

        let named = TABLES.replace(
            "      BillingMode: PAY_PER_REQUEST",
            "      TableName: clients\n      BillingMode: PAY_PER_REQUEST",
        );
        let msg = message(Plan::from_yaml(&template(&format!("{named}{QUEUES}"))));
        assert!(msg.contains("TableName"), "{msg}");
    }

    #[test]
    fn refuses_queues_that_refer_to_each_other() {
        let cyclic = QUEUES.replace(
            "      MessageRetentionPeriod: 1209600",
            "      RedrivePolicy: { deadLetterTargetArn: !GetAtt FanoutQueue.Arn, maxReceiveCount: 1 }",
        );
        let msg = message(Plan::from_yaml(&template(&format!("{TABLES}{cyclic}"))));
        assert!(msg.contains("cycle"), "{msg}");
    }

    /// Secrets (conditional, retained, generated) and mappings are not
    /// infra's to create: the emulators get secrets from the environment.
    #[test]
    fn skips_secrets_and_what_surrounds_them() {
        let secrets = r#"
  TokenKeySecret:
    Type: AWS::SecretsManager::Secret
    Condition: UsePurposeKeys
    DeletionPolicy: Retain
    UpdateReplacePolicy: Retain
    Properties:
      Description: !Sub "${AWS::StackName}: TOKEN_KEY"
      GenerateSecretString: { PasswordLength: 64, ExcludePunctuation: true }
  AdminTokenSecret:
    Type: AWS::SecretsManager::Secret
    Properties: { SecretString: !Ref AdminToken }
  PollFunction:
    Type: AWS::Serverless::Function
    Properties:
      ReservedConcurrentExecutions: !If [ReserveConcurrency, !FindInMap [Split, !Ref ReservedConcurrency, Poll], !Ref AWS::NoValue]
      Environment:
        Variables:
          TOKEN_KEY_SECRET_ARN: !If [UsePurposeKeys, !Ref TokenKeySecret, !Ref AWS::NoValue]
"#;
        let text = template(&format!("{TABLES}{secrets}{QUEUES}")).replace(
            "Resources:",
            "Conditions:\n  UsePurposeKeys: !Equals [!Ref MasterKey, \"\"]\n\
             Mappings:\n  Split:\n    \"100\": { Poll: 50 }\nResources:",
        );
        let plan = Plan::from_yaml(&text).unwrap();
        assert_eq!(plan.tables.len(), 6);
        assert_eq!(plan.queues.len(), 3);
    }

    #[test]
    fn the_repository_template_parses() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml");
        let text = std::fs::read_to_string(&path).expect("template.yaml at the repository root");
        let plan = Plan::from_yaml(&text).unwrap();
        assert_eq!(plan.tables.len(), 6);
        let audiences = &plan.tables[5];
        assert_eq!(audiences.role, TableRole::Audiences);
        assert_eq!(audiences.billing_mode.as_deref(), Some("PAY_PER_REQUEST"));
        assert_eq!(audiences.ttl, Some(("expires_at".into(), true)));
        assert_eq!(audiences.point_in_time_recovery, Some(true));
        assert_eq!(
            plan.queues.iter().map(|q| q.role).collect::<Vec<_>>(),
            vec![
                QueueRole::FanoutDeadLetter,
                QueueRole::Fanout,
                QueueRole::Inbound
            ]
        );
        let inbound = &plan.queues[2];
        let has = |key: &str, value: &str| {
            inbound
                .attributes
                .contains(&(key.into(), AttributeValue::Literal(value.into())))
        };
        assert!(has("FifoQueue", "true") && has("ContentBasedDeduplication", "false"));
    }
}
