"""local/prometheus/pigeonhole.rules.yml is a rules file Prometheus loads:
groups of recording and alerting rules in the shape its documentation gives.
(shared/tests/prometheus_rules.rs checks the series each rule selects.)"""
import re

import yaml

from docutil import REPO

RULES = REPO / "local" / "prometheus" / "pigeonhole.rules.yml"
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
RECORD_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
ALERT_NAME = re.compile(r"^[A-Z][A-Za-z0-9]*$")


def load():
    return yaml.safe_load(RULES.read_text())


def rules_of(doc):
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_groups_hold_recording_and_alerting_rules():
    doc = load()
    assert set(doc) == {"groups"}
    names = [g["name"] for g in doc["groups"]]
    assert len(names) == len(set(names)), names
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules"}, group.keys()
        assert group["rules"], group["name"]
        for rule in group["rules"]:
            kinds = {"record", "alert"} & set(rule)
            assert len(kinds) == 1, rule
            assert isinstance(rule["expr"], str) and rule["expr"].strip(), rule
            # PromQL strings are double-quoted; YAML kept them whole.
            assert rule["expr"].count('"') % 2 == 0, rule["expr"]
            assert rule["expr"].count("(") == rule["expr"].count(")"), rule["expr"]


def test_records_follow_the_naming_convention():
    records = [r for r in rules_of(load()) if "record" in r]
    assert len(records) >= 5
    for rule in records:
        assert set(rule) <= {"record", "expr", "labels"}, rule
        # `level:metric:operations`, the level left out for a total over all series.
        assert RECORD_NAME.match(rule["record"]) and rule["record"].count(":") in (1, 2), rule["record"]
    assert len({r["record"] for r in records}) == len(records)


def test_alerts_say_how_bad_and_what_happened():
    alerts = [r for r in rules_of(load()) if "alert" in r]
    names = [a["alert"] for a in alerts]
    assert len(names) == len(set(names)), names
    # The local counterparts of the template's alarms (docs/operations.md).
    assert {"PigeonholeDeliveryLagHigh", "PigeonholeFanoutJobsFailed", "PigeonholeServerErrors"} <= set(names)
    for alert in alerts:
        assert set(alert) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, alert
        assert ALERT_NAME.match(alert["alert"]), alert["alert"]
        if "for" in alert:
            assert DURATION.match(alert["for"]), alert["for"]
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}, alert
        assert {"summary", "description"} <= set(alert["annotations"]), alert
        # Templates use Prometheus' {{ ... }} syntax and close what they open.
        for text in alert["annotations"].values():
            assert text.count("{{") == text.count("}}"), text


def test_the_operations_guide_points_at_the_file():
    guide = (REPO / "docs" / "operations.md").read_text()
    assert "local/prometheus/pigeonhole.rules.yml" in guide
