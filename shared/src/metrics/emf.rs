//! A recorder that writes CloudWatch Embedded Metric Format (EMF) lines.
//!
//! On Lambda, metrics travel in the function's log: CloudWatch Logs turns
//! every log line that is an EMF document into metric values, so a function
//! needs no CloudWatch API call, no permission and no extra round trip on
//! the request path. Each function installs this recorder at cold start
//! ([`install`]) and, at the end of every invocation, [`EmfHandle::flush`]
//! writes what the invocation recorded and starts afresh.
//!
//! Why our own rather than a crate: the one published recorder
//! (`metrics_cloudwatch_embedded`) keeps at most 100 histogram values
//! between flushes and drops the rest (a fan-out invocation records one
//! delivery lag per recipient, up to 5,000), and makes every label a
//! dimension (we publish a status class, not a status code, and choose the
//! dimension sets per metric). This is a counter, a list of samples and a
//! JSON writer.
//!
//! The document format
//! (<https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>):
//! dimension values and metric values are members of the root object, and
//! `_aws.CloudWatchMetrics` says which members are which. One document can
//! hold one value per dimension name, so series that differ in a dimension
//! value (two poll outcomes, say) go to separate lines; everything else is
//! packed together, which makes an HTTP invocation one line. A metric value
//! is a number, or an array of at most 100 numbers: a histogram with more
//! samples is spread over several lines. Counters are sums over the
//! invocation; zero counters and empty histograms are left out.

use super::{dimension, Kind, Metric, NAMESPACE};
use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Values one metric member may hold (the EMF limit).
pub const MAX_VALUES_PER_MEMBER: usize = 100;

/// Samples one histogram keeps between flushes; more are dropped. A fan-out
/// invocation records at most 5 jobs of 1,000 recipients.
const MAX_SAMPLES: usize = 20_000;

/// The recorder. Install it with [`install`] (or
/// `metrics::set_global_recorder`), keep its [`EmfHandle`].
pub struct EmfRecorder {
    state: Arc<State>,
}

/// Takes what was recorded since the last flush.
#[derive(Clone)]
pub struct EmfHandle {
    state: Arc<State>,
}

struct State {
    /// `Stack` and `Function`: on every document.
    defaults: [(&'static str, String); 2],
    series: Mutex<HashMap<Key, Series>>,
}

#[derive(Clone)]
enum Series {
    Counter(Arc<AtomicU64>),
    Histogram(Arc<Samples>),
}

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        let mut samples = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.len() < MAX_SAMPLES && value.is_finite() {
            samples.push(value);
        }
    }
}

impl EmfRecorder {
    /// A recorder whose documents carry `Stack` = `stack` and `Function` =
    /// `function`.
    pub fn new(stack: &str, function: &str) -> EmfRecorder {
        EmfRecorder {
            state: Arc::new(State {
                defaults: [
                    (dimension::STACK, stack.to_string()),
                    (dimension::FUNCTION, function.to_string()),
                ],
                series: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn handle(&self) -> EmfHandle {
        EmfHandle {
            state: Arc::clone(&self.state),
        }
    }

    fn register(&self, key: &Key, kind: Kind) -> Series {
        let mut series = self
            .state
            .series
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = series.get(key) {
            return found.clone();
        }
        let new = match kind {
            Kind::Counter => Series::Counter(Arc::default()),
            Kind::Histogram => Series::Histogram(Arc::default()),
        };
        series.insert(key.clone(), new.clone());
        new
    }
}

impl Recorder for EmfRecorder {
    // Units and descriptions come from `Metric`, not from the recorder.
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        match self.register(key, Kind::Counter) {
            Series::Counter(value) => Counter::from_arc(value),
            _ => Counter::noop(),
        }
    }

    /// No metric is a gauge: a gauge is meaningless per invocation.
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        match self.register(key, Kind::Histogram) {
            Series::Histogram(samples) => Histogram::from_arc(samples),
            _ => Histogram::noop(),
        }
    }
}

/// Installs an [`EmfRecorder`] as the process's recorder. Call it once, at
/// cold start.
pub fn install(stack: &str, function: &str) -> Result<EmfHandle, String> {
    let recorder = EmfRecorder::new(stack, function);
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    super::describe();
    Ok(handle)
}

/// What one series recorded since the last flush.
enum Recorded {
    Count(u64),
    Values(Vec<f64>),
}

type Dimensions = BTreeMap<&'static str, String>;

/// One EMF document being filled.
#[derive(Default)]
struct Document {
    dimensions: Dimensions,
    metrics: BTreeMap<&'static str, (&'static Metric, Value)>,
}

impl Document {
    /// Whether `metric` with these dimension values can join.
    fn fits(&self, metric: &Metric, dimensions: &Dimensions) -> bool {
        !self.metrics.contains_key(metric.cloudwatch)
            && dimensions
                .iter()
                .all(|(name, value)| self.dimensions.get(name).is_none_or(|v| v == value))
    }

    fn to_json(&self, defaults: &[(&'static str, String)], timestamp_ms: i64) -> Value {
        // One directive per distinct list of dimension sets.
        let mut directives: Vec<(&[&[&str]], Vec<Value>)> = Vec::new();
        for (metric, _) in self.metrics.values() {
            let entry =
                json!({"Name": metric.cloudwatch, "Unit": unit_name(metric.cloudwatch_unit)});
            match directives.iter_mut().find(|(d, _)| *d == metric.dimensions) {
                Some((_, metrics)) => metrics.push(entry),
                None => directives.push((metric.dimensions, vec![entry])),
            }
        }
        let directives: Vec<Value> = directives
            .into_iter()
            .map(|(dimensions, metrics)| {
                json!({"Namespace": NAMESPACE, "Dimensions": dimensions, "Metrics": metrics})
            })
            .collect();
        let mut root = Map::new();
        root.insert(
            "_aws".into(),
            json!({"Timestamp": timestamp_ms, "CloudWatchMetrics": directives}),
        );
        for (name, value) in defaults {
            root.insert((*name).into(), Value::String(value.clone()));
        }
        for (name, value) in &self.dimensions {
            root.insert((*name).into(), Value::String(value.clone()));
        }
        for (name, (_, value)) in &self.metrics {
            root.insert((*name).into(), value.clone());
        }
        Value::Object(root)
    }
}

fn unit_name(unit: Unit) -> &'static str {
    match unit {
        Unit::Seconds => "Seconds",
        Unit::Milliseconds => "Milliseconds",
        Unit::Microseconds => "Microseconds",
        Unit::Bytes => "Bytes",
        Unit::Percent => "Percent",
        _ => "Count",
    }
}

/// A recorded value in the metric's CloudWatch unit: durations are
/// recorded in seconds.
fn scaled(metric: &Metric, value: f64) -> f64 {
    let factor = match (metric.unit, metric.cloudwatch_unit) {
        (Unit::Seconds, Unit::Milliseconds) => 1_000.0,
        (Unit::Seconds, Unit::Microseconds) => 1_000_000.0,
        _ => 1.0,
    };
    // Three decimals are plenty and keep the lines short.
    (value * factor * 1_000.0).round() / 1_000.0
}

impl EmfHandle {
    /// The EMF documents of everything recorded since the last call, one
    /// JSON object per line, stamped `timestamp_ms`; resets what it took.
    pub fn take_lines(&self, timestamp_ms: i64) -> Vec<String> {
        let taken: Vec<(Key, Series)> = self
            .state
            .series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        // Series that land on the same CloudWatch metric (statuses 200 and
        // 201 are both 2xx) are added up first.
        let mut merged: BTreeMap<(&'static str, Dimensions), (&'static Metric, Recorded)> =
            BTreeMap::new();
        for (key, series) in taken {
            let Some(metric) = super::find(key.name()) else {
                continue;
            };
            let recorded = match series {
                Series::Counter(value) => match value.swap(0, Ordering::Relaxed) {
                    0 => continue,
                    n => Recorded::Count(n),
                },
                Series::Histogram(samples) => {
                    let samples = std::mem::take(
                        &mut *samples.0.lock().unwrap_or_else(PoisonError::into_inner),
                    );
                    if samples.is_empty() {
                        continue;
                    }
                    Recorded::Values(samples.into_iter().map(|v| scaled(metric, v)).collect())
                }
            };
            let used: Vec<&str> = metric
                .dimensions
                .iter()
                .flat_map(|s| s.iter().copied())
                .collect();
            let dimensions: Dimensions = key
                .labels()
                .filter_map(|l| super::dimension_of(l.key(), l.value()))
                .filter(|(name, _)| used.contains(name))
                .collect();
            match merged.entry((metric.cloudwatch, dimensions)) {
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert((metric, recorded));
                }
                std::collections::btree_map::Entry::Occupied(mut slot) => {
                    match (&mut slot.get_mut().1, recorded) {
                        (Recorded::Count(total), Recorded::Count(n)) => *total += n,
                        (Recorded::Values(all), Recorded::Values(more)) => all.extend(more),
                        _ => {}
                    }
                }
            }
        }
        let mut documents: Vec<Document> = Vec::new();
        for ((_, dimensions), (metric, recorded)) in merged {
            let values: Vec<Value> = match recorded {
                Recorded::Count(n) => vec![json!(n)],
                Recorded::Values(values) => values
                    .chunks(MAX_VALUES_PER_MEMBER)
                    .map(|chunk| json!(chunk))
                    .collect(),
            };
            for value in values {
                let document = match documents.iter().position(|d| d.fits(metric, &dimensions)) {
                    Some(i) => &mut documents[i],
                    None => {
                        documents.push(Document::default());
                        documents.last_mut().expect("just pushed")
                    }
                };
                for (name, v) in &dimensions {
                    document.dimensions.insert(name, v.clone());
                }
                document.metrics.insert(metric.cloudwatch, (metric, value));
            }
        }
        documents
            .iter()
            .map(|d| d.to_json(&self.state.defaults, timestamp_ms).to_string())
            .collect()
    }

    /// Writes what was recorded since the last flush to standard output,
    /// where Lambda hands it to CloudWatch Logs: each document one line,
    /// in one write, so no other log line lands inside it.
    pub fn flush(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let lines = self.take_lines(now);
        if lines.is_empty() {
            return;
        }
        let mut out = std::io::stdout().lock();
        for line in lines {
            let _ = out.write_all(format!("{line}\n").as_bytes());
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use crate::http::Route;
    use crate::metrics::{self as m, JobOutcome, PollOutcome};
    use std::time::Duration;

    fn record(f: impl FnOnce()) -> Vec<Value> {
        let recorder = EmfRecorder::new("prod", "poll");
        metrics::with_local_recorder(&recorder, f);
        recorder
            .handle()
            .take_lines(1_700_000_000_000)
            .iter()
            .map(|line| {
                assert!(!line.contains('\n'));
                serde_json::from_str(line).expect("a line is one JSON object")
            })
            .collect()
    }

    #[test]
    fn one_request_is_one_line_in_the_documented_shape() {
        let lines = record(|| {
            m::request(Some(Route::Poll), 204, Duration::from_micros(12_345));
            m::poll(PollOutcome::Empty);
            m::storage_retry(m::Retry::Repeat);
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let doc = &lines[0];
        assert_eq!(doc["_aws"]["Timestamp"], json!(1_700_000_000_000i64));
        assert_eq!(doc["Stack"], "prod");
        assert_eq!(doc["Function"], "poll");
        assert_eq!(doc["Route"], "poll");
        assert_eq!(doc["StatusClass"], "2xx");
        assert_eq!(doc["Outcome"], "empty");
        assert_eq!(doc["Requests"], json!(1));
        assert_eq!(doc["RequestLatency"], json!([12.345]));
        assert_eq!(doc["Polls"], json!(1));
        assert_eq!(doc["StorageRetries"], json!(1));
        // No status code and no retry kind: they are not dimensions.
        assert!(doc.get("status").is_none() && doc.get("kind").is_none());
        let directives = doc["_aws"]["CloudWatchMetrics"].as_array().unwrap();
        let mut seen = BTreeMap::new();
        for d in directives {
            assert_eq!(d["Namespace"], "Pigeonhole");
            for metric in d["Metrics"].as_array().unwrap() {
                seen.insert(
                    metric["Name"].as_str().unwrap().to_string(),
                    (metric["Unit"].clone(), d["Dimensions"].clone()),
                );
            }
            // Every dimension a directive names is a member of the root.
            for set in d["Dimensions"].as_array().unwrap() {
                for name in set.as_array().unwrap() {
                    assert!(doc[name.as_str().unwrap()].is_string(), "{name}");
                }
            }
        }
        assert_eq!(
            seen["Requests"],
            (json!("Count"), json!([["Stack", "StatusClass"]]))
        );
        assert_eq!(
            seen["RequestLatency"],
            (json!("Milliseconds"), json!([["Stack", "Route"]]))
        );
        assert_eq!(
            seen["Polls"],
            (json!("Count"), json!([["Stack", "Outcome"]]))
        );
        assert_eq!(
            seen["StorageRetries"],
            (json!("Count"), json!([["Stack", "Function"]]))
        );
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn counters_add_up_and_a_flush_starts_afresh() {
        let recorder = EmfRecorder::new("s", "publish");
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            m::request(Some(Route::Publish), 202, Duration::from_millis(3));
            m::request(Some(Route::Publish), 200, Duration::from_millis(5));
        });
        let lines = handle.take_lines(1);
        assert_eq!(lines.len(), 1);
        let doc: Value = serde_json::from_str(&lines[0]).unwrap();
        // 200 and 202 are one class: one value, summed.
        assert_eq!(doc["Requests"], json!(2));
        let mut latencies: Vec<f64> =
            serde_json::from_value(doc["RequestLatency"].clone()).unwrap();
        latencies.sort_by(f64::total_cmp);
        assert_eq!(latencies, [3.0, 5.0]);
        assert!(
            handle.take_lines(2).is_empty(),
            "nothing new, nothing written"
        );
        metrics::with_local_recorder(&recorder, || {
            m::request(Some(Route::Publish), 503, Duration::from_millis(6000));
        });
        let doc: Value = serde_json::from_str(&handle.take_lines(3)[0]).unwrap();
        assert_eq!(doc["Requests"], json!(1));
        assert_eq!(doc["StatusClass"], "5xx");
    }

    #[test]
    fn different_values_of_a_dimension_go_to_separate_lines() {
        let lines = record(|| {
            m::fanout_job(JobOutcome::Done);
            m::fanout_job(JobOutcome::Done);
            m::fanout_job(JobOutcome::HandedOn);
            m::not_delivered(m::NotDelivered::HandedOn, 40);
        });
        let mut jobs = BTreeMap::new();
        for doc in &lines {
            if let Some(n) = doc.get("FanoutJobs") {
                jobs.insert(doc["Outcome"].as_str().unwrap().to_string(), n.clone());
            }
            if let Some(n) = doc.get("FanoutNotDelivered") {
                assert_eq!(doc["Outcome"], "handed_on");
                assert_eq!(n, &json!(40));
            }
        }
        assert_eq!(jobs["done"], json!(2));
        assert_eq!(jobs["handed_on"], json!(1));
        // handed_on jobs and handed_on recipients share a line.
        assert_eq!(lines.len(), 2, "{lines:?}");
    }

    #[test]
    fn a_histogram_of_thousands_of_samples_is_spread_over_lines_of_100() {
        let lines = record(|| {
            for i in 0..250 {
                m::delivered(Timestamp(10_000 + i), Some(Timestamp(10_000)));
            }
            // A job queued before the field existed: counted, no lag.
            m::delivered(Timestamp(10_000), None);
        });
        assert_eq!(lines.len(), 3, "{lines:?}");
        let mut lags = Vec::new();
        for doc in &lines {
            let values = doc["DeliveryLag"].as_array().expect("an array of values");
            assert!(values.len() <= MAX_VALUES_PER_MEMBER);
            lags.extend(values.iter().map(|v| v.as_f64().unwrap()));
        }
        assert_eq!(lags.len(), 250);
        assert_eq!(lags.iter().cloned().fold(f64::MIN, f64::max), 0.249);
        let delivered: u64 = lines
            .iter()
            .filter_map(|d| d.get("MessagesDelivered"))
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(delivered, 251);
        for doc in &lines {
            let units: Vec<&Value> = doc["_aws"]["CloudWatchMetrics"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|d| d["Metrics"].as_array().unwrap())
                .filter(|m| m["Name"] == "DeliveryLag")
                .map(|m| &m["Unit"])
                .collect();
            assert_eq!(units, [&json!("Seconds")]);
        }
    }

    #[test]
    fn a_lag_is_never_negative() {
        let lines = record(|| m::delivered(Timestamp(5_000), Some(Timestamp(7_000))));
        assert_eq!(lines[0]["DeliveryLag"], json!([0.0]));
    }
}
