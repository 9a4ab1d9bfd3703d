//! The Prometheus rules we ship (`local/prometheus/pigeonhole.rules.yml`)
//! and the metrics table of `docs/operations.md` name only series the
//! server exports, with the labels it gives them: a renamed metric or label
//! breaks this test, not an operator's alert in silence.
//! (tests/python/test_prometheus_rules.py checks the file's YAML shape.)

use pigeonhole::metrics::{self, Kind, Metric};
use regex_lite::Regex;
use std::collections::BTreeSet;

const RULES: &str = include_str!("../../local/prometheus/pigeonhole.rules.yml");
const OPERATIONS: &str = include_str!("../../docs/operations.md");

/// A series an expression selects: the metric, and whether it is a
/// histogram's `_bucket` (which adds the `le` label).
struct Selected {
    metric: &'static Metric,
    bucket: bool,
}

/// The exported metric behind a series name: the name itself, or a
/// histogram's `_bucket`, `_count` or `_sum`.
fn series(name: &str) -> Result<Selected, String> {
    if let Some(metric) = metrics::find(name) {
        return match metric.kind {
            Kind::Counter => Ok(Selected {
                metric,
                bucket: false,
            }),
            Kind::Histogram => Err(format!(
                "{name} is a histogram: select its _bucket, _count or _sum"
            )),
        };
    }
    for suffix in ["_bucket", "_count", "_sum"] {
        if let Some(metric) = name.strip_suffix(suffix).and_then(metrics::find) {
            if matches!(metric.kind, Kind::Histogram) {
                return Ok(Selected {
                    metric,
                    bucket: suffix == "_bucket",
                });
            }
        }
    }
    Err(format!("{name} is not a metric the server exports"))
}

fn has_label(selected: &Selected, label: &str) -> bool {
    selected.metric.labels.contains(&label) || (selected.bucket && label == "le")
}

/// Every problem with one PromQL expression.
fn check_expr(expr: &str) -> Vec<String> {
    // A metric name, not part of a recorded series' `level:name:op` name.
    let name = Regex::new(r"(^|[^:\w])(pigeonhole_[a-z_]+)(\{[^}]*\})?").unwrap();
    let matcher = Regex::new(r#"(\w+)\s*(=~|!~|!=|=)\s*""#).unwrap();
    let grouping = Regex::new(r"\b(?:by|without)\s*\(([^)]*)\)").unwrap();
    let mut problems = Vec::new();
    let mut selected = Vec::new();
    for found in name.captures_iter(expr) {
        match series(&found[2]) {
            Ok(s) => {
                if let Some(braces) = found.get(3) {
                    for m in matcher.captures_iter(braces.as_str()) {
                        if !has_label(&s, &m[1]) {
                            problems.push(format!("{} has no label {}", &found[2], &m[1]));
                        }
                    }
                }
                selected.push(s);
            }
            Err(e) => problems.push(e),
        }
    }
    if !name.is_match(expr) {
        problems.push("selects no pigeonhole metric".into());
    }
    for group in grouping.captures_iter(expr) {
        for label in group[1].split(',').map(str::trim).filter(|l| !l.is_empty()) {
            if !selected.iter().any(|s| has_label(s, label)) {
                problems.push(format!("groups by {label}, which no selected series has"));
            }
        }
    }
    problems
        .into_iter()
        .map(|p| format!("{expr}: {p}"))
        .collect()
}

#[test]
fn every_rule_selects_series_the_server_exports_with_their_labels() {
    let exprs: Vec<&str> = RULES
        .lines()
        .filter_map(|line| line.trim().strip_prefix("expr:"))
        .map(str::trim)
        .collect();
    assert!(exprs.len() >= 10, "the rules file has its rules: {exprs:?}");
    let problems: Vec<String> = exprs.iter().flat_map(|e| check_expr(e)).collect();
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn recorded_series_are_named_after_the_metric_they_come_from() {
    // Prometheus' convention `level:metric:operations`, where a rate of a
    // counter drops its `_total`.
    let mut seen = BTreeSet::new();
    for line in RULES.lines() {
        let Some(record) = line.trim().trim_start_matches("- ").strip_prefix("record:") else {
            continue;
        };
        let record = record.trim();
        let parts: Vec<&str> = record.split(':').collect();
        let from = match parts.as_slice() {
            [_, from, _] | [from, _] => *from,
            _ => panic!("{record} is not level:metric:operations"),
        };
        assert!(
            metrics::find(from).is_some() || metrics::find(&format!("{from}_total")).is_some(),
            "{record} names no exported metric"
        );
        assert!(seen.insert(record), "{record} is recorded twice");
    }
    assert!(!seen.is_empty());
}

#[test]
fn the_operations_guide_lists_every_metric_with_its_labels() {
    let row = Regex::new(r"(?m)^\| `(pigeonhole_[a-z_]+)(?:\{([a-z_, ]*)\})?`").unwrap();
    let mut documented = BTreeSet::new();
    for found in row.captures_iter(OPERATIONS) {
        let name = &found[1];
        let metric = metrics::find(name)
            .unwrap_or_else(|| panic!("operations.md lists {name}, which is no metric"));
        let labels: BTreeSet<&str> = found
            .get(2)
            .map(|l| l.as_str().split(',').map(str::trim).collect())
            .unwrap_or_default();
        let exported: BTreeSet<&str> = metric.labels.iter().copied().collect();
        assert_eq!(labels, exported, "labels of {name} in operations.md");
        documented.insert(metric.name);
    }
    let all: BTreeSet<&str> = metrics::ALL.iter().map(|m| m.name).collect();
    assert_eq!(documented, all, "operations.md's table of metrics");
}

#[test]
fn the_check_finds_a_wrong_name_label_or_grouping() {
    assert!(check_expr("sum(rate(pigeonhole_polls_total[5m]))").is_empty());
    let wrong = [
        "rate(pigeonhole_poll_total[5m])",
        r#"rate(pigeonhole_polls_total{status="429"}[5m])"#,
        "sum by (route) (rate(pigeonhole_polls_total[5m]))",
        "rate(pigeonhole_delivery_lag_seconds[5m])",
        r#"rate(pigeonhole_delivery_lag_seconds_count{le="1"}[5m])"#,
        "vector(1)",
    ];
    for expr in wrong {
        assert_eq!(check_expr(expr).len(), 1, "{expr}: {:?}", check_expr(expr));
    }
}
