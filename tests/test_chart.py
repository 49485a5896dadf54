"""charts/certsync/: lint, schema, RBAC equal to deploy/'s, CRDs equal to crds/, every setting, the monitoring files.

helm is built from its Go module (hack/tools/build) the first time; these tests need no cluster
(tests/test_e2e_chart.py applies and installs the chart on the local control plane)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from devkit.release import CHART, REPO, find, helm, render


def rules(objects: list[dict[str, Any]]) -> list[tuple[tuple[str, ...], ...]]:
    """Rules as comparable values: the order of rules and of list items carries no meaning."""
    return sorted(
        tuple(tuple(sorted(rule.get(key, []))) for key in ("apiGroups", "resources", "resourceNames", "verbs"))
        for o in objects
        for rule in o["rules"]
    )


def deploy_documents(*parts: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(REPO.joinpath("deploy", *parts).read_text()) if d]


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        (["--set", "namespaces.mode=namespaces"], "namespaces"),
        (["--set", "namespaces.mode=some"], "/namespaces/mode"),
        (["--set", "image.digest=latest"], "digest"),
        (["--set", "replicas=0"], "replicas"),
        (["--set", "settings.logFormat=xml"], "logFormat"),
        (["--set", "settings.namespaces=apps"], "namespaces"),
        (["--set", "antiAffinity=always"], "antiAffinity"),
        (["--set", "unknownKey=1"], "unknownKey"),
    ],
)
def test_bad_values_are_refused_with_the_field_named(values: list[str], complaint: str) -> None:
    result = helm("template", "cs", str(CHART), *values, check=False)
    assert result.returncode != 0
    assert complaint in result.stderr


@pytest.mark.parametrize(
    "values",
    [[], ["--set", "namespaces.mode=namespaces", "--set", "namespaces.list={apps,shop}"],
     ["--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true",
      "--set", "metrics.dashboard.enabled=true", "--set", "crds.install=false", "--set", "replicas=1"]],
)  # fmt: skip
def test_helm_lint_is_clean(values: list[str]) -> None:
    result = helm("lint", "--strict", str(CHART), *values)
    assert "0 chart(s) failed" in result.stdout, result.stdout


def test_rbac_is_deploys_in_both_modes() -> None:
    cluster = render()
    [role] = find(cluster, "ClusterRole")
    assert rules([role]) == rules(find(deploy_documents("rbac.yaml"), "ClusterRole"))
    [lease] = find(cluster, "Role")
    assert rules([lease]) == rules(find(deploy_documents("base", "lease-role.yaml"), "Role"))
    assert lease["metadata"]["namespace"] == "certsync-system"
    [binding] = find(cluster, "ClusterRoleBinding")
    [account] = find(cluster, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": "certsync-system"}]  # fmt: skip

    scoped = render("--set", "namespaces.mode=namespaces", "--set", "namespaces.list={apps,shop}")
    assert not find(scoped, "ClusterRole") and not find(scoped, "ClusterRoleBinding")
    watched = [r for r in find(scoped, "Role") if not r["metadata"]["name"].endswith("-leader-election")]
    assert sorted(r["metadata"]["namespace"] for r in watched) == ["apps", "shop"]
    overlay = find(deploy_documents("overlays", "single-namespace", "role.yaml"), "Role")
    assert all(rules([r]) == rules(overlay) for r in watched)
    [deployment] = find(scoped, "Deployment")
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CERTSYNC_NAMESPACES"] == "apps,shop"


def test_crds_are_those_of_crds_folder_kept_on_uninstall_and_can_be_left_out() -> None:
    for path in sorted((REPO / "crds").glob("*.yaml")):
        copy = CHART / "files" / "crds" / path.name
        assert copy.read_bytes() == path.read_bytes(), f"cp crds/{path.name} {copy.relative_to(REPO)}"
    assert not list((REPO / "crds").glob("kustomization.*")), "kubectl apply -f crds/ must see only CRDs"
    rendered = {c["metadata"]["name"]: c for c in find(render(), "CustomResourceDefinition")}
    for path in (REPO / "crds").glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        assert rendered[crd["metadata"]["name"]]["spec"] == crd["spec"]
        assert rendered[crd["metadata"]["name"]]["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert not find(render("--set", "crds.install=false"), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in str(render("--set", "crds.keep=false"))


def test_every_operator_setting_can_be_set_from_values() -> None:
    names = set(re.findall(r'"(CERTSYNC_[A-Z_]+)"', (REPO / "operator" / "certsync" / "settings.py").read_text()))
    names -= {n for n in names if n.startswith("CERTSYNC_DEBUG_")}  # test hooks, never in a cluster
    [deployment] = find(render("--set", "settings.leaseNamespace=elsewhere"), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert names <= set(env), sorted(names - set(env))
    assert env["CERTSYNC_LEASE_NAMESPACE"] == "elsewhere"
    assert env["CERTSYNC_ALLOWED_ENDPOINTS"] == ""  # nothing allowed until the user names endpoints
    assert container["ports"] == [{"name": "metrics", "containerPort": int(env["CERTSYNC_METRICS_PORT"])}]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    deploy_container = deploy_documents("base", "deployment.yaml")[0]["spec"]["template"]["spec"]["containers"][0]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe] == deploy_container[probe]
    deploy_env = {e["name"]: e["value"] for e in deploy_container["env"]}
    assert {k: v for k, v in env.items() if k in deploy_env and k != "CERTSYNC_ALLOWED_ENDPOINTS"} == {
        k: v for k, v in deploy_env.items() if k != "CERTSYNC_ALLOWED_ENDPOINTS"
    }


def test_replicas_spread_with_a_disruption_budget_and_metrics_are_served() -> None:
    objects = render("--set", "metrics.serviceMonitor.enabled=true")
    [deployment] = find(objects, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert "preferredDuringSchedulingIgnoredDuringExecution" in spec["affinity"]["podAntiAffinity"]
    [budget] = find(objects, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    [deploy_budget] = deploy_documents("base", "poddisruptionbudget.yaml")
    assert {k: v for k, v in budget["spec"].items() if k != "selector"} == {
        k: v for k, v in deploy_budget["spec"].items() if k != "selector"
    }
    [service] = find(objects, "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    [monitor] = find(objects, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True  # keep the resources' namespace label
    single = render("--set", "replicas=1", "--set", "antiAffinity=")
    assert not find(single, "PodDisruptionBudget")  # a budget of 1 of 1 would block every node drain
    assert "affinity" not in find(single, "Deployment")[0]["spec"]["template"]["spec"]
    assert not find(render(), "ServiceMonitor") and not find(render(), "PrometheusRule")


def test_chart_ships_the_alerts_and_dashboard_of_deploy_monitoring() -> None:
    objects = render("--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.dashboard.enabled=true")
    [rule] = find(objects, "PrometheusRule")
    shipped = deploy_documents("monitoring", "prometheusrule.yaml")[0]
    assert rule["spec"] == shipped["spec"] == yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    [dashboard] = find(objects, "ConfigMap")
    assert (
        dashboard["data"]["certsync.json"] == (REPO / "deploy" / "monitoring" / "grafana" / "certsync.json").read_text()
    )


DURATIONS = ("driftInterval", "deleteTimeout", "leaseDuration", "renewDeadline", "retryPeriod")


@pytest.mark.parametrize("value", ["6h", "30m", "1h30m", "45s", "90", "2.5", "1d", "10ms", "1.5h", "6h 1m", "h", "m30"])
def test_the_schema_takes_exactly_the_durations_the_operator_reads(value: str) -> None:
    """A value the schema lets through but the operator refuses would stop the pod at start, not `helm install`."""
    import json

    from certsync import settings

    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["settings"]["properties"]
    try:
        settings.parse_duration(value)
        readable = True
    except settings.SettingsError:
        readable = False
    for name in DURATIONS:
        assert bool(re.fullmatch(schema[name]["pattern"], value)) == readable, (name, value)
