"""deploy/monitoring/: the alert rules pass promtool (check and unit tests), link a runbook of docs/runbooks/ each,
and, with the dashboard, name only metrics the operator exports (tests/test_e2e_chart.py compares the dashboard with
a real /metrics scrape); the dashboard filters every resource series by its namespace and kind variables. Also the
operator's own series: process and Python collectors, build info, suspension and last sync per resource."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from certsync import remote, version
from certsync.metrics import LATENCY_BUCKETS, Metrics
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from devkit.release import REPO, find, render, tool
from tests.conftest import Emulator
from tests.test_controllers import World, cdn_spec, world  # noqa: F401  (the fixture)

MONITORING = REPO / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "certsync.json"
ALERT_TESTS = REPO / "tests" / "monitoring" / "alerts.test.yaml"
RUNBOOKS = REPO / "docs" / "runbooks"
RUNBOOK_BASE = "https://github.com/certsync/certsync/blob/main/docs/runbooks/"
ALERTS = ("CertsyncCertificateExpiringSoon", "CertsyncPushDeadlineSoon", "CertsyncResourceNotReady", "CertsyncResourceStalled",
          "CertsyncRemoteBudgetExhausted", "CertsyncNoLeader", "CertsyncRemoteErrorRateHigh",
          "CertsyncRemoteRateLimited")  # fmt: skip
# The dashboard's variables and the label each filters: a resource's namespace and kind.
VARIABLES = {"namespace": "namespace", "kind": "kind"}

Series = dict[str, dict[frozenset[tuple[str, str]], float]]


def exported_series_names() -> set[str]:
    """Every series name the operator's registry can expose (counters as _total, histograms as _bucket...)."""
    names = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
    return names


def scrape(metrics: Metrics) -> Series:
    """The registry as /metrics renders it, parsed back: series name -> {labels: value}."""
    series: Series = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            series.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return series


def labels_of_exported_series() -> dict[str, set[str]]:
    """Each certsync series' own label names, from a registry that has seen one of everything."""
    metrics = Metrics()
    metrics.pass_ended("DeploymentTLS", "apps", "mqtt", "ready", expiry=dt.datetime.now(dt.UTC),
                       synced_at=dt.datetime.now(dt.UTC))  # fmt: skip
    metrics.reconciles.labels("DeploymentTLS", "ready").inc()
    metrics.observe_request("emqx", "get_tls", "200", 0.1)
    metrics.budget_remaining.labels("emqx", "https://emqx.example/ge6a1a75", "write").set(6)
    metrics.leader_transitions.inc()
    return {
        name: set().union(*(dict(labels) for labels in values))
        for name, values in scrape(metrics).items()
        if name.startswith("certsync_")
    }


def metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\bcertsync_[a-z_]+\b", expression))


def selectors(expression: str) -> list[tuple[str, str]]:
    """(metric, its matchers) for every certsync series an expression selects; "" when it has no braces."""
    return re.findall(r"\b(certsync_[a-z_]+)\b(?:\{([^}]*)\})?", expression)


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panel_expressions() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def variable_queries() -> list[str]:
    return [v["query"] for v in dashboard()["templating"]["list"] if v["type"] == "query"]


def dashboard_expressions() -> list[str]:
    """Everything the dashboard asks Prometheus: its panels' queries and its variables'."""
    return panel_expressions() + variable_queries()


def alert_rules() -> list[dict[str, Any]]:
    spec: dict[str, Any] = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())["spec"]
    return [rule for group in spec["groups"] for rule in group["rules"]]


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


def test_promtool_fails_our_tests_against_the_old_rules(tmp_path: Path) -> None:
    """The unit tests can tell: the rules as they were (suspended resources, one sum() for every install, 429 as a
    failure) fail them."""
    rules = alert_rules()
    old = {"CertsyncResourceNotReady": 'certsync_certificate_ready_status{condition="True"} == 0',
           "CertsyncNoLeader": "(sum(certsync_leader) or vector(0)) < 1",
           "CertsyncRemoteErrorRateHigh": 'sum by (namespace, job, api) (rate(certsync_remote_requests_total'
                                          '{code=~"5..|429|error"}[15m])) / sum by (namespace, job, api) '
                                          "(rate(certsync_remote_requests_total[15m])) > 0.2"}  # fmt: skip
    shutil.copy(ALERT_TESTS, tmp_path / "alerts.test.yaml")
    for alert, expr in old.items():
        changed = [dict(rule, expr=expr) if rule["alert"] == alert else rule for rule in rules]
        (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": [{"name": "certsync", "rules": changed}]}))
        result = promtool("test", "rules", "alerts.test.yaml", cwd=tmp_path)
        assert result.returncode != 0, alert
        assert alert in result.stdout + result.stderr, alert


def test_promtool_version_tells_the_truth(tmp_path: Path) -> None:
    module = re.search(r"github.com/prometheus/prometheus (v\S+)", (REPO / "hack/tools/promtool/go.mod").read_text())
    assert module
    minor, patch = module.group(1).removeprefix("v0.3").split(".")
    out = promtool("--version", cwd=tmp_path).stdout
    assert f"version 3.{int(minor)}.{patch}" in out, out


def test_alerts_and_dashboard_name_only_exported_metrics() -> None:
    exported = exported_series_names()
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == set(ALERTS)
    for rule in rules:
        assert metric_names(rule["expr"]) <= exported, rule["alert"]
    used = set().union(*(metric_names(e) for e in dashboard_expressions()))
    assert used <= exported, sorted(used - exported)
    for wanted in ("certsync_certificate_expiration_timestamp_seconds", "certsync_certificate_ready_status",
                   "certsync_reconcile_total", "certsync_remote_requests_total",
                   "certsync_remote_request_duration_seconds_bucket", "certsync_budget_remaining", "certsync_leader",
                   "certsync_resource_suspended", "certsync_last_sync_timestamp_seconds"):  # fmt: skip
        assert wanted in used, wanted


def test_every_alert_links_its_runbook_and_every_runbook_an_alert() -> None:
    for rule in alert_rules():
        alert = rule["alert"]
        assert rule["annotations"]["runbook_url"] == f"{RUNBOOK_BASE}{alert}.md", alert
        page = RUNBOOKS / f"{alert}.md"
        assert page.is_file(), f"{alert}: no {page.relative_to(REPO)}"
        text = page.read_text()
        assert text.startswith(f"# {alert}\n"), alert
        for section in ("## What it means", "## How to look", "## How to fix"):
            assert section in text, f"{alert}: {section} missing"
    pages = {p.stem for p in RUNBOOKS.glob("*.md")} - {"README"}
    assert pages == set(ALERTS), "a runbook without its alert, or the other way round"
    index = (RUNBOOKS / "README.md").read_text()
    assert all(f"({alert}.md)" in index for alert in ALERTS)


def test_the_chart_moves_the_runbook_links_with_its_value() -> None:
    """metrics.prometheusRule.runbookBaseURL: a fork or an internal mirror of docs/runbooks/; nothing else moves."""
    base = "https://runbooks.example/platform/certsync/"
    objects = render("--set", "metrics.prometheusRule.enabled=true", "--set",
                     f"metrics.prometheusRule.runbookBaseURL={base}")  # fmt: skip
    [rule] = find(objects, "PrometheusRule")
    shipped = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert [r["annotations"]["runbook_url"] for r in shipped] == [f"{base}{r['alert']}.md" for r in shipped]

    def unlinked(rule: dict[str, Any]) -> dict[str, Any]:
        return {**rule, "annotations": {k: v for k, v in rule["annotations"].items() if k != "runbook_url"}}

    assert [unlinked(r) for r in shipped] == [unlinked(r) for r in alert_rules()]


def test_the_dashboard_filters_every_resource_series_by_namespace_and_kind() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    labels = labels_of_exported_series()
    for name, label in VARIABLES.items():
        variable = variables[name]
        assert variable["type"] == "query" and variable["includeAll"] and variable["multi"], name
        assert re.fullmatch(rf"label_values\(certsync_[a-z_]+(\{{[^}}]*\}})?, {label}\)", variable["query"]), name
        assert variable["query"] == variable["definition"], name
    checked = 0
    for expression in panel_expressions():
        for metric, matchers in selectors(expression):
            own = labels.get(metric, set())
            for name, label in VARIABLES.items():
                if label in own:
                    checked += 1
                    assert f'{label}=~"${name}"' in matchers, f"{expression}: {metric} is not filtered by ${name}"
                else:
                    assert f"${name}" not in matchers, f"{expression}: {metric} has no {label} label of its own"
    assert checked >= 10  # the expiry, readiness, suspension, last-sync and reconcile panels


def test_every_dashboard_query_is_promql_that_promtool_accepts(tmp_path: Path) -> None:
    """Grafana's variables put in as they would expand ("All" is .*), each query checked as a recording rule."""
    values = {"$namespace": ".*", "$kind": ".*", "$__rate_interval": "2m"}
    queries = [re.sub(r"\$[a-z_]+", lambda m: values[m.group(0)], e) for e in panel_expressions()]
    rules = [{"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)]
    path = tmp_path / "dashboard.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


def test_the_dashboard_ships_the_same_in_the_chart() -> None:
    assert (REPO / "charts/certsync/files/grafana-dashboard.json").read_text() == DASHBOARD.read_text()


def test_the_registry_carries_process_python_and_build_series() -> None:
    series = scrape(Metrics())
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
                 "python_info", "python_gc_objects_collected_total"):  # fmt: skip
        assert name in series, name
    assert series["certsync_build_info"] == {
        frozenset({("version", version.version()), ("commit", version.commit())}): 1.0
    }


def test_a_pass_sets_suspension_and_last_sync_and_a_deletion_clears_them() -> None:
    metrics = Metrics()
    ref = {("kind", "DeploymentTLS"), ("namespace", "apps"), ("name", "mqtt")}
    synced = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    expiry = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)

    def value(name: str, **extra: str) -> float | None:
        return scrape(metrics).get(name, {}).get(frozenset(ref | set(extra.items())))

    metrics.pass_ended("DeploymentTLS", "apps", "mqtt", "reconciling", synced_at=synced)
    assert value("certsync_last_sync_timestamp_seconds") is None  # not in sync yet: no last sync to show
    metrics.pass_ended("DeploymentTLS", "apps", "mqtt", "ready", expiry=expiry, synced_at=synced)
    assert value("certsync_last_sync_timestamp_seconds") == synced.timestamp()
    assert value("certsync_certificate_expiration_timestamp_seconds") == expiry.timestamp()
    assert value("certsync_resource_suspended") == 0.0
    metrics.pass_ended("DeploymentTLS", "apps", "mqtt", "suspended", synced_at=synced + dt.timedelta(hours=1))
    assert value("certsync_resource_suspended") == 1.0 and value("certsync_resource_stalled") == 0.0
    assert value("certsync_certificate_ready_status", condition="True") == 0.0
    assert value("certsync_certificate_ready_status", condition="False") == 1.0
    assert value("certsync_last_sync_timestamp_seconds") == synced.timestamp()  # the last success stays shown
    metrics.pass_ended("DeploymentTLS", "apps", "mqtt", "stalled")
    assert value("certsync_resource_suspended") == 0.0 and value("certsync_resource_stalled") == 1.0
    metrics.forget("DeploymentTLS", "apps", "mqtt")
    left = {name: labels for name, labels in scrape(metrics).items() if any(ref <= set(key) for key in labels)}
    assert left == {}, left


def test_latency_buckets_reach_past_the_clients_deadline() -> None:
    """A call that ends in a timeout (5 s to connect, then 20 s per read) lands in a bucket, not only in +Inf."""
    timeout = remote.DEFAULT_TIMEOUT
    assert timeout.read is not None and timeout.connect is not None
    worst = timeout.connect + timeout.read
    finite = [b for b in LATENCY_BUCKETS if b != float("inf")]
    assert finite[-1] > worst and timeout.read in finite
    metrics = Metrics()
    metrics.observe_request("cdn", "GET certificate", "error", worst)
    buckets = scrape(metrics)["certsync_remote_request_duration_seconds_bucket"]
    counts = {dict(labels)["le"]: count for labels, count in buckets.items()}
    assert counts["20.0"] == 0.0 and counts["30.0"] == 1.0


async def test_a_controller_pass_exports_the_last_sync_of_status_and_the_suspension(
    world: World,  # noqa: F811  (the fixture imported above)
    cdn: Emulator,
) -> None:
    """The controllers' pass end (base.finish) feeds the series from what status records."""
    world.trusted_tls("shop-tls", "www.shop.example")
    await world.sync("cdncertificates", "shop", cdn_spec(cdn))
    assert world.ready("shop") == ("True", "Synced")
    ref = frozenset({("kind", "CdnCertificate"), ("namespace", "team-a"), ("name", "shop")})
    series = scrape(world.rt.metrics)
    recorded = dt.datetime.fromisoformat(world.status("shop")["lastSyncTime"].replace("Z", "+00:00"))
    assert series["certsync_last_sync_timestamp_seconds"][ref] == recorded.timestamp()
    assert series["certsync_resource_suspended"][ref] == 0.0
    await world.sync("cdncertificates", "shop", cdn_spec(cdn, suspend=True))
    assert world.ready("shop") == ("False", "Suspended")
    series = scrape(world.rt.metrics)
    assert series["certsync_resource_suspended"][ref] == 1.0
    assert series["certsync_last_sync_timestamp_seconds"][ref] == recorded.timestamp()


def test_without_resource_labels_no_tenant_name_reaches_a_label() -> None:
    """CERTSYNC_METRICS_RESOURCE_LABELS=false: namespaces, names, deployment IDs and accounts stay out of every
    label; each resource keeps a series of its own (opaque, stable), and a deletion still clears it."""
    from certsync.budget import EMQX_WRITE, RateBudget, Scope

    metrics = Metrics(resource_labels=False)
    budget = RateBudget()
    budget.acquire(Scope("emqx", "https://emqx.tenant-a.example/api", "dep-secret-id", "write"), EMQX_WRITE)
    metrics.refresh_budgets(budget)
    metrics.pass_ended("DeploymentTLS", "tenant-a", "mqtt", "ready", expiry=dt.datetime(2027, 1, 1, tzinfo=dt.UTC))
    metrics.pass_ended("DeploymentTLS", "tenant-b", "mqtt", "stalled")
    text = generate_latest(metrics.registry).decode()
    for sensitive in ("tenant-a", "tenant-b", "mqtt", "dep-secret-id", "emqx.tenant-a.example"):
        assert sensitive not in text
    stalled = scrape(metrics)["certsync_resource_stalled"]
    assert sorted(stalled.values()) == [0.0, 1.0]  # two resources, two series: the alerts still fire per resource
    assert all(dict(labels)["namespace"] == "" for labels in stalled)
    assert Metrics(resource_labels=False).who("tenant-a", "mqtt") == metrics.who("tenant-a", "mqtt")  # stable
    metrics.forget("DeploymentTLS", "tenant-b", "mqtt")
    assert list(scrape(metrics)["certsync_resource_stalled"].values()) == [0.0]
    shown = Metrics()
    shown.pass_ended("DeploymentTLS", "tenant-a", "mqtt", "ready")
    assert "tenant-a" in generate_latest(shown.registry).decode()  # the default names them
