"""contrib/: the Prometheus alert rules and the Grafana dashboard use only
metrics the module exports, and are well-formed (promtool when installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from synapse_fedhealth import metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "contrib" / "prometheus" / "fedhealth-alerts.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "fedhealth-panel.json"
METRIC_NAME = re.compile(r"\bsynapse_[a-z0-9_]+")
PROMTOOL = shutil.which("promtool")


def exported_metric_names() -> set[str]:
    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            names.update(m.name for m in value.describe())
    return names


def metric_names_in(expr: str) -> set[str]:
    return set(METRIC_NAME.findall(expr))


def load_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_spec_metrics_are_exported() -> None:
    assert {
        "synapse_fedhealth_federation_ok",
        "synapse_fedhealth_check_status",
        "synapse_fedhealth_last_run_timestamp_seconds",
        "synapse_fedhealth_run_duration_seconds",
        "synapse_fedhealth_tls_certificate_expiry_timestamp_seconds",
    } <= exported_metric_names()


def test_alert_rules_are_complete_and_use_known_metrics() -> None:
    known = exported_metric_names()
    rules = load_rules()
    assert rules
    for rule in rules:
        assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"].get("severity") in ("critical", "warning")
        assert {"summary", "description"} <= set(rule["annotations"])
        used = metric_names_in(rule["expr"])
        assert used, f"{rule['alert']} uses no synapse_fedhealth metric"
        assert used <= known, f"{rule['alert']} uses unknown metrics {used - known}"


def test_required_alerts_are_present() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in load_rules()}
    assert "synapse_fedhealth_federation_ok == 0" in exprs["SynapseFederationBroken"]
    assert (
        "synapse_fedhealth_tls_certificate_expiry_timestamp_seconds - time() < 14 * 86400"
        in exprs["SynapseFederationCertificateExpiringSoon"]
    )
    assert (
        "time() - synapse_fedhealth_last_run_timestamp_seconds"
        in exprs["SynapseFedhealthNotRunning"]
    )


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_promtool_check_rules() -> None:
    assert PROMTOOL is not None
    out = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_promtool_alerts_fire(tmp_path: Path) -> None:
    """The rules fire on the series the module exports (promtool test rules).

    promtool compares annotations exactly; a copy of the rules without them
    keeps this test about expressions, durations and labels."""
    assert PROMTOOL is not None
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(doc))
    server = 'server_name="example.com"'
    tests = textwrap.dedent(
        f"""
        rule_files: [{json.dumps(str(rules))}]
        evaluation_interval: 1m
        tests:
          - interval: 1m
            input_series:
              - series: 'synapse_fedhealth_federation_ok{{{server}}}'
                values: '0x30'
              - series: 'synapse_fedhealth_check_status{{{server},check="tls.certificate"}}'
                values: '2x30'
              - series: 'synapse_fedhealth_tls_certificate_expiry_timestamp_seconds{{{server},host="example.com"}}'
                values: '{10 * 86400}x300'
              - series: 'synapse_fedhealth_last_run_timestamp_seconds{{{server}}}'
                values: '0x300'
            alert_rule_test:
              - eval_time: 20m
                alertname: SynapseFederationBroken
                exp_alerts:
                  - exp_labels: {{severity: critical, server_name: example.com}}
              - eval_time: 20m
                alertname: SynapseFederationCheckFailing
                exp_alerts:
                  - exp_labels: {{severity: critical, server_name: example.com, check: tls.certificate}}
              - eval_time: 2h
                alertname: SynapseFederationCertificateExpiringSoon
                exp_alerts:
                  - exp_labels: {{severity: warning, server_name: example.com, host: example.com}}
              - eval_time: 5m
                alertname: SynapseFedhealthNotRunning
                exp_alerts: []
              - eval_time: 3h
                alertname: SynapseFedhealthNotRunning
                exp_alerts:
                  - exp_labels: {{severity: warning, server_name: example.com}}
        """
    )
    test_file = tmp_path / "fedhealth-alerts.test.yml"
    test_file.write_text(tests)
    out = subprocess.run(
        [PROMTOOL, "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def test_grafana_dashboard_uses_known_metrics() -> None:
    known = exported_metric_names()
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"]
    panels = list(_panels(dashboard["panels"]))
    assert panels
    used_everywhere: set[str] = set()
    for panel in panels:
        assert panel.get("title"), panel
        for target in panel.get("targets", []):
            used = metric_names_in(target["expr"])
            assert used, f"panel {panel['title']!r} has a target without our metrics"
            assert used <= known, f"panel {panel['title']!r} uses {used - known}"
            used_everywhere |= used
    for variable in dashboard.get("templating", {}).get("list", []):
        assert metric_names_in(json.dumps(variable.get("query"))) <= known
    # Every metric of SPEC 2.4 is shown somewhere.
    assert used_everywhere == known & {
        m for m in known if m.startswith("synapse_fedhealth_")
    }
