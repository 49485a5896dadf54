"""deploy/monitoring/: the alert rules pass promtool (check and unit tests) and, with the dashboard, name only
metrics the operator exports (tests/test_e2e_chart.py compares the dashboard with a real /metrics scrape)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from certsync.metrics import Metrics

from devkit.release import REPO, tool

MONITORING = REPO / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "certsync.json"
ALERT_TESTS = REPO / "tests" / "monitoring" / "alerts.test.yaml"
ALERTS = ("CertsyncCertificateExpiringSoon", "CertsyncResourceNotReady", "CertsyncResourceStalled",
          "CertsyncRemoteBudgetExhausted", "CertsyncNoLeader", "CertsyncRemoteErrorRateHigh")  # fmt: skip


def exported_series_names() -> set[str]:
    """Every series name the operator's registry can expose (counters as _total, histograms as _bucket...)."""
    names = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
    return names


def metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\bcertsync_[a-z_]+\b", expression))


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def rule_group_file(directory: Path) -> Path:
    """The PrometheusRule's spec as a plain rule file, the form promtool reads."""
    spec = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())["spec"]
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tool("promtool")), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_promtool_rejects_a_broken_rule_then_accepts_ours(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [{"alert": "X", "expr": "sum(("}]}]}))
    assert promtool("check", "rules", str(broken), cwd=tmp_path).returncode != 0
    result = promtool("check", "rules", str(rule_group_file(tmp_path)), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_of_every_alert_pass(tmp_path: Path) -> None:
    rule_group_file(tmp_path)
    shutil.copy(ALERT_TESTS, tmp_path / "alerts.test.yaml")
    result = promtool("test", "rules", "alerts.test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {
        t["alertname"] for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for t in case["alert_rule_test"]
    }
    assert tested == set(ALERTS)


def test_promtool_version_tells_the_truth(tmp_path: Path) -> None:
    module = re.search(r"github.com/prometheus/prometheus (v\S+)", (REPO / "hack/tools/promtool/go.mod").read_text())
    assert module
    minor, patch = module.group(1).removeprefix("v0.3").split(".")
    out = promtool("--version", cwd=tmp_path).stdout
    assert f"version 3.{int(minor)}.{patch}" in out, out


def test_alerts_and_dashboard_name_only_exported_metrics() -> None:
    exported = exported_series_names()
    spec: dict[str, Any] = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())["spec"]
    rules = [rule for group in spec["groups"] for rule in group["rules"]]
    assert {rule["alert"] for rule in rules} == set(ALERTS)
    for rule in rules:
        assert metric_names(rule["expr"]) <= exported, rule["alert"]
    used = set().union(*(metric_names(e) for e in dashboard_expressions()))
    assert used <= exported, sorted(used - exported)
    for wanted in ("certsync_certificate_expiration_timestamp_seconds", "certsync_certificate_ready_status",
                   "certsync_reconcile_total", "certsync_remote_requests_total",
                   "certsync_remote_request_duration_seconds_bucket", "certsync_budget_remaining", "certsync_leader"):  # fmt: skip
        assert wanted in used, wanted
