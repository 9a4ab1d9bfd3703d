//! What the service counts and times, defined once for every deployment.
//!
//! Code records through the [`metrics`](::metrics) facade with the
//! functions below (a request answered, a poll's outcome, a copy stored by
//! the fan-out, a retry...). Which recorder receives them is the
//! deployment's choice, made once at start-up:
//! - the local server installs a Prometheus recorder and serves it at
//!   `GET /metrics` (`local/src/metrics_endpoint.rs`);
//! - each Lambda function installs [`emf::EmfRecorder`] and writes what one
//!   invocation recorded as CloudWatch Embedded Metric Format lines to its
//!   log (`functions/src/lib.rs`), which CloudWatch turns into metrics: no
//!   metrics API call on the request path.
//!
//! With no recorder installed (tests, benches, other embedders) every call
//! is the facade's no-op: a few tens of nanoseconds (a request records two
//! series, about 50 ns together), no I/O and no lock.
//!
//! Each [`Metric`] carries its Prometheus name (the facade key), its
//! CloudWatch name and unit, its labels and the CloudWatch dimension sets
//! it is published under, so the two exporters cannot drift apart.
//! `docs/operations.md` says what each one means and what normal looks
//! like; `tests/python/test_template.py` checks that the dashboard and the
//! alarms in `template.yaml` name metrics defined here.

pub mod emf;

use crate::clock::Timestamp;
use crate::http::Route;
use ::metrics::{counter, histogram, SharedString, Unit};
use std::time::Duration;

/// The CloudWatch namespace of every metric.
pub const NAMESPACE: &str = "Pigeonhole";

/// Label keys (Prometheus), each with the CloudWatch dimension it becomes.
pub mod label {
    /// The route a request matched (`poll`, `publish-status`, ...; `unmatched`).
    pub const ROUTE: &str = "route";
    /// The HTTP status code (`200`, `503`, ...). CloudWatch gets its class.
    pub const STATUS: &str = "status";
    /// How something ended; the values are the metric's own.
    pub const OUTCOME: &str = "outcome";
    /// How a storage call was tried again: `repeat` (the same request,
    /// after a transient failure) or `reread` (a loop that reads again and
    /// retries: a lost race, unprocessed batch keys, a busy SQLite
    /// transaction).
    pub const KIND: &str = "kind";
}

/// CloudWatch dimensions. `Stack` and `Function` are on every document the
/// Lambda functions write; the others come from labels.
pub mod dimension {
    /// The CloudFormation stack, so two stacks in one account stay apart.
    pub const STACK: &str = "Stack";
    /// The function's binary name (`poll`, `fanout`, `cleanup`, ...).
    pub const FUNCTION: &str = "Function";
    /// From [`super::label::ROUTE`].
    pub const ROUTE: &str = "Route";
    /// `2xx`, `4xx` or `5xx`, from [`super::label::STATUS`].
    pub const STATUS_CLASS: &str = "StatusClass";
    /// From [`super::label::OUTCOME`].
    pub const OUTCOME: &str = "Outcome";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Histogram,
}

/// One metric, as both exporters name it.
#[derive(Debug)]
pub struct Metric {
    /// The Prometheus name, which is also the facade's key.
    pub name: &'static str,
    /// The CloudWatch metric name in [`NAMESPACE`].
    pub cloudwatch: &'static str,
    pub kind: Kind,
    /// What a recorded value is in. Durations are recorded in seconds;
    /// CloudWatch gets [`Metric::cloudwatch_unit`].
    pub unit: Unit,
    /// The CloudWatch unit; a duration in milliseconds is scaled from
    /// seconds on the way out.
    pub cloudwatch_unit: Unit,
    /// The `# HELP` text.
    pub help: &'static str,
    /// Label keys, from [`label`].
    pub labels: &'static [&'static str],
    /// The CloudWatch dimension sets it is published under, from
    /// [`dimension`]. Each set is a metric of its own in CloudWatch (and
    /// billed as one), so there are few.
    pub dimensions: &'static [&'static [&'static str]],
    /// Histogram bucket bounds for Prometheus (in `unit`).
    pub buckets: &'static [f64],
}

use dimension::{FUNCTION, OUTCOME, ROUTE, STACK, STATUS_CLASS};

/// Request latency buckets: 1 ms to 10 s (the functions' timeout).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 6.0, 10.0,
];

/// Delivery lag buckets: 5 ms (in-process) to an hour (SQS redeliveries).
const LAG_BUCKETS: &[f64] = &[
    0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
];

pub const REQUESTS: Metric = Metric {
    name: "pigeonhole_http_requests_total",
    cloudwatch: "Requests",
    kind: Kind::Counter,
    unit: Unit::Count,
    cloudwatch_unit: Unit::Count,
    help: "Requests answered by the API, by route and status code.",
    labels: &[label::ROUTE, label::STATUS],
    // Per route, CloudWatch has RequestLatency's sample count; a route's
    // status codes are in the EMF lines themselves (Logs Insights), which
    // costs nothing until queried. A dimension set per route and class
    // would be some 30 more billed metrics.
    dimensions: &[&[STACK, STATUS_CLASS]],
    buckets: &[],
};

pub const REQUEST_DURATION: Metric = Metric {
    name: "pigeonhole_http_request_duration_seconds",
    cloudwatch: "RequestLatency",
    kind: Kind::Histogram,
    unit: Unit::Seconds,
    cloudwatch_unit: Unit::Milliseconds,
    help: "Time from a request's arrival at the API adapter to its answer, by route.",
    labels: &[label::ROUTE],
    dimensions: &[&[STACK, ROUTE]],
    buckets: LATENCY_BUCKETS,
};

pub const POLLS: Metric = Metric {
    name: "pigeonhole_polls_total",
    cloudwatch: "Polls",
    kind: Kind::Counter,
    unit: Unit::Count,
    cloudwatch_unit: Unit::Count,
    help: "Authenticated polls by outcome: empty (204), messages (200) or rate_limited (429).",
    labels: &[label::OUTCOME],
    dimensions: &[&[STACK, OUTCOME]],
    buckets: &[],
};

pub const SENDS_STORED: Metric = Metric {
    name: "pigeonhole_sends_stored_total",
    cloudwatch: "SendsStored",
    kind: Kind::Counter,
    unit: Unit::Count,
    cloudwatch_unit: Unit::Count,
    help: "Messages clients sent that were stored (a retried send is not counted again).",
    labels: &[],
    dimensions: &[&[STACK]],
    buckets: &[],
};

pub const MESSAGES_DELIVERED: Metric = Metric {
    name: "pigeonhole_messages_delivered_total",
    cloudwatch: "MessagesDelivered",
    kind: Kind::Counter,
    unit: Unit::Count,
    cloudwatch_unit: Unit::Count,
    help: "Copies of published messages the fan-out stored in an inbox.",
    labels: &[],
    dimensions: &[&[STACK]],
    buckets: &[],
};

pub const DELIVERY_LAG: Metric = Metric {
    name: "pigeonhole_delivery_lag_seconds",
    cloudwatch: "DeliveryLag",
    kind: Kind::Histogram,
    unit: Unit::Seconds,
    cloudwatch_unit: Unit::Seconds,
    help: "Time from a publish being accepted to its copy being stored in a recipient's inbox.",
    labels: &[],
    dimensions: &[&[STACK]],
    buckets: LAG_BUCKETS,
};

pub const FANOUT_JOBS: Metric = Metric {
    name: "pigeonhole_fanout_jobs_total",
    cloudwatch: "FanoutJobs",
    kind: Kind::Counter,
    unit: Unit::Count,
    cloudwatch_unit: Unit::Count,
    help: "Fan-out jobs (queue records, audience pages) by outcome: done, handed_on (the rest enqueued as a new job) or failed (left for a redelivery).",
    labels: &[label::OUTCOME],
    dimensions: &[&[STACK, OUTCOME]],
    buckets: &[],
};

pub const FANOUT_REDELIVERED: Metric = Metric {
    name: "pigeonhole_fanout_jobs_redelivered_total",
    cloudwatch: "FanoutJobsRedelivered",
    kind: Kind::Counter,
    unit: Unit::Count,
    cloudwatch_unit: Unit::Count,
    help: "Fan-out queue records received more than once (an earlier receive failed or timed out).",
    labels: &[],
    dimensions: &[&[STACK]],
    buckets: &[],
};

pub const FANOUT_NOT_DELIVERED: Metric = Metric {
    name: "pigeonhole_fanout_not_delivered_total",
    cloudwatch: "FanoutNotDelivered",
    kind: Kind::Counter,
    unit: Unit::Count,
    cloudwatch_unit: Unit::Count,
    help: "Recipients a fan-out run stored no copy for, by outcome: duplicate (already had it: a redelivered job), unknown (no such client), skipped (damaged record or key), handed_on (left for a new job).",
    labels: &[label::OUTCOME],
    dimensions: &[&[STACK, OUTCOME]],
    buckets: &[],
};

pub const STORAGE_RETRIES: Metric = Metric {
    name: "pigeonhole_storage_retries_total",
    cloudwatch: "StorageRetries",
    kind: Kind::Counter,
    unit: Unit::Count,
    cloudwatch_unit: Unit::Count,
    help: "Storage and queue calls tried again by the retry policy: repeat (the same request after throttling, a conflict, a 5xx or a timeout) or reread (a lost race, unprocessed batch keys or a busy SQLite transaction, read again and retried).",
    labels: &[label::KIND],
    dimensions: &[&[STACK, FUNCTION]],
    buckets: &[],
};

pub const STORAGE_UNAVAILABLE: Metric = Metric {
    name: "pigeonhole_storage_unavailable_total",
    cloudwatch: "StorageUnavailable",
    kind: Kind::Counter,
    unit: Unit::Count,
    cloudwatch_unit: Unit::Count,
    help: "Storage and queue calls given up on when the deadline left no room for another try: a 503 for an HTTP request, a hand-on or redelivery for the fan-out.",
    labels: &[],
    dimensions: &[&[STACK, FUNCTION]],
    buckets: &[],
};

/// Every metric, for describing them to a recorder and for looking one up
/// by name.
pub const ALL: [&Metric; 11] = [
    &REQUESTS,
    &REQUEST_DURATION,
    &POLLS,
    &SENDS_STORED,
    &MESSAGES_DELIVERED,
    &DELIVERY_LAG,
    &FANOUT_JOBS,
    &FANOUT_REDELIVERED,
    &FANOUT_NOT_DELIVERED,
    &STORAGE_RETRIES,
    &STORAGE_UNAVAILABLE,
];

/// The metric with this Prometheus name.
pub fn find(name: &str) -> Option<&'static Metric> {
    ALL.into_iter().find(|m| m.name == name)
}

/// Gives the installed recorder every metric's unit and help text. Call it
/// once, after installing the recorder.
pub fn describe() {
    for metric in ALL {
        match metric.kind {
            Kind::Counter => {
                ::metrics::describe_counter!(metric.name, metric.unit, metric.help)
            }
            Kind::Histogram => {
                ::metrics::describe_histogram!(metric.name, metric.unit, metric.help)
            }
        }
    }
}

/// The CloudWatch dimension a label becomes, with its value; `None` for a
/// label CloudWatch aggregates away.
pub fn dimension_of(key: &str, value: &str) -> Option<(&'static str, String)> {
    match key {
        label::ROUTE => Some((dimension::ROUTE, value.to_string())),
        label::STATUS => Some((dimension::STATUS_CLASS, status_class(value).to_string())),
        label::OUTCOME => Some((dimension::OUTCOME, value.to_string())),
        _ => None,
    }
}

fn status_class(status: &str) -> &'static str {
    match status.as_bytes().first() {
        Some(b'1') => "1xx",
        Some(b'2') => "2xx",
        Some(b'3') => "3xx",
        Some(b'4') => "4xx",
        _ => "5xx",
    }
}

/// The value of the `route` label (and of the Lambda functions' `Function`
/// dimension): the route's function name, as in `functions/src/bin/`.
pub fn route_label(route: Option<Route>) -> &'static str {
    match route {
        None => "unmatched",
        Some(Route::Health | Route::HealthUnversioned) => "health",
        Some(Route::Register) => "register",
        Some(Route::Rotate) => "rotate",
        Some(Route::Sent) => "sent",
        Some(Route::Publish) => "publish",
        Some(Route::PublishStatus) => "publish-status",
        Some(Route::Send) => "send",
        Some(Route::Poll) => "poll",
        Some(Route::Ack) => "ack",
        Some(Route::ListClients) => "list-clients",
        Some(Route::DeleteClient) => "delete-client",
        Some(Route::SetTags) => "set-tags",
    }
}

/// A status code as a label value, without allocating for the ones the API
/// answers.
fn status_label(status: u16) -> SharedString {
    let known = match status {
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        503 => "503",
        other => return SharedString::from(other.to_string()),
    };
    SharedString::const_str(known)
}

/// One request answered by the HTTP adapter.
pub fn request(route: Option<Route>, status: u16, elapsed: Duration) {
    let route = route_label(route);
    counter!(REQUESTS.name, label::ROUTE => route, label::STATUS => status_label(status))
        .increment(1);
    histogram!(REQUEST_DURATION.name, label::ROUTE => route).record(elapsed.as_secs_f64());
}

/// How an authenticated poll ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollOutcome {
    Empty,
    Messages,
    RateLimited,
}

pub fn poll(outcome: PollOutcome) {
    let outcome = match outcome {
        PollOutcome::Empty => "empty",
        PollOutcome::Messages => "messages",
        PollOutcome::RateLimited => "rate_limited",
    };
    counter!(POLLS.name, label::OUTCOME => outcome).increment(1);
}

/// A message a client sent was stored.
pub fn send_stored() {
    counter!(SENDS_STORED.name).increment(1);
}

/// A fan-out copy was stored in an inbox at `now`, for a publish accepted
/// at `accepted`. Clocks of different machines may disagree a little: a
/// negative lag counts as zero.
pub fn delivered(now: Timestamp, accepted: Option<Timestamp>) {
    counter!(MESSAGES_DELIVERED.name).increment(1);
    if let Some(accepted) = accepted {
        let lag_ms = now.millis().saturating_sub(accepted.millis()).max(0);
        histogram!(DELIVERY_LAG.name).record(lag_ms as f64 / 1000.0);
    }
}

/// Why a fan-out run stored no copy for a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotDelivered {
    /// It already had this publish (a redelivered or repeated job).
    Duplicate,
    Unknown,
    /// Its record or personal key is damaged.
    Skipped,
    /// Left for a new job (the deadline came, or storage was unavailable).
    HandedOn,
}

pub fn not_delivered(why: NotDelivered, recipients: usize) {
    if recipients == 0 {
        return;
    }
    let outcome = match why {
        NotDelivered::Duplicate => "duplicate",
        NotDelivered::Unknown => "unknown",
        NotDelivered::Skipped => "skipped",
        NotDelivered::HandedOn => "handed_on",
    };
    counter!(FANOUT_NOT_DELIVERED.name, label::OUTCOME => outcome).increment(recipients as u64);
}

/// How a fan-out job (a queue record, or a page of an audience) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    Done,
    /// The recipients left were enqueued as a new job.
    HandedOn,
    /// Left for the queue to redeliver (and, in the end, dead-letter).
    Failed,
}

pub fn fanout_job(outcome: JobOutcome) {
    let outcome = match outcome {
        JobOutcome::Done => "done",
        JobOutcome::HandedOn => "handed_on",
        JobOutcome::Failed => "failed",
    };
    counter!(FANOUT_JOBS.name, label::OUTCOME => outcome).increment(1);
}

/// A fan-out queue record arrived for another time.
pub fn fanout_redelivered() {
    counter!(FANOUT_REDELIVERED.name).increment(1);
}

/// How a storage call is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The same request, after a transient failure ([`crate::retry::run`]).
    Repeat,
    /// A loop that reads again before retrying ([`crate::retry::pause`]):
    /// a lost race, unprocessed batch keys, a busy SQLite transaction.
    Reread,
}

pub fn storage_retry(kind: Retry) {
    let kind = match kind {
        Retry::Repeat => "repeat",
        Retry::Reread => "reread",
    };
    counter!(STORAGE_RETRIES.name, label::KIND => kind).increment(1);
}

/// The retry policy gave up: no room for another attempt before the
/// deadline.
pub fn storage_unavailable() {
    counter!(STORAGE_UNAVAILABLE.name).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_and_follow_each_exporters_conventions() {
        let names: HashSet<_> = ALL.iter().map(|m| m.name).collect();
        let cloudwatch: HashSet<_> = ALL.iter().map(|m| m.cloudwatch).collect();
        assert_eq!(names.len(), ALL.len());
        assert_eq!(cloudwatch.len(), ALL.len());
        for m in ALL {
            assert!(m.name.starts_with("pigeonhole_"), "{}", m.name);
            match m.kind {
                Kind::Counter => {
                    assert!(m.name.ends_with("_total"), "{}", m.name);
                    assert!(m.buckets.is_empty(), "{}", m.name);
                }
                Kind::Histogram => {
                    assert!(m.name.ends_with("_seconds"), "{}", m.name);
                    assert!(m.buckets.windows(2).all(|w| w[0] < w[1]), "{}", m.name);
                }
            }
            // A CloudWatch name must not collide with a dimension: both
            // are members of the same EMF document.
            for set in m.dimensions {
                assert!(set.first() == Some(&dimension::STACK), "{}", m.name);
                assert!(!set.contains(&m.cloudwatch));
                for d in *set {
                    let from_label = m
                        .labels
                        .iter()
                        .any(|l| dimension_of(l, "200").is_some_and(|(name, _)| name == *d));
                    assert!(
                        from_label || *d == dimension::STACK || *d == dimension::FUNCTION,
                        "{}: dimension {d} comes from no label",
                        m.name
                    );
                }
            }
            assert_eq!(find(m.name).map(|f| f.cloudwatch), Some(m.cloudwatch));
        }
    }

    #[test]
    fn every_route_has_the_name_of_its_function() {
        for route in Route::ALL {
            let name = route_label(Some(route));
            assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'));
        }
        assert_eq!(route_label(Some(Route::PublishStatus)), "publish-status");
        assert_eq!(route_label(None), "unmatched");
    }

    #[test]
    fn statuses_become_classes_in_cloudwatch() {
        assert_eq!(
            dimension_of(label::STATUS, "503"),
            Some((dimension::STATUS_CLASS, "5xx".to_string()))
        );
        assert_eq!(
            dimension_of(label::STATUS, "204"),
            Some((dimension::STATUS_CLASS, "2xx".to_string()))
        );
        assert_eq!(dimension_of(label::KIND, "reread"), None);
        assert_eq!(status_label(429).as_ref(), "429");
        assert_eq!(status_label(418).as_ref(), "418");
    }
}
