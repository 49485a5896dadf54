"""charts/certsync/: lint, schema, RBAC equal to deploy/'s, CRDs equal to crds/, every setting and value, the monitoring
files, values of an older release, and deploy/ as the chart rendered.

helm is built from its Go module (hack/tools/build) the first time, kubectl (for `kubectl kustomize`) with the
control plane's binaries; these tests need no cluster (tests/test_e2e_chart.py applies and installs the chart on the
local control plane)."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit import controlplane
from devkit.release import CHART, REPO, find, helm, render

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
# Added by the helm labels and selectors, absent from deploy/ (which has app.kubernetes.io/name only).
HELM_LABELS = (
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)
# The chart's values that reproduce deploy/: the release `certsync` in certsync-system, and the pod annotations
# that let an annotation-driven Prometheus find deploy/'s pods (the chart has a ServiceMonitor and a PodMonitor).
DEPLOY_VALUES = {
    "podAnnotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "8080"},
    "networkPolicy": {"enabled": True},
    "clusterRemoteAccounts": {"credentialsSecrets": [{"name": "certsync-remote-account"}]},
}
# Operator settings that are no `settings` key: first-class chart values, or test hooks never set in a cluster.
FIRST_CLASS = {"CERTSYNC_NAMESPACES": "namespaces", "CERTSYNC_LEADER_ELECTION": "leaderElection",
               "CERTSYNC_REMOTE_CA_FILE": "remoteCA"}  # fmt: skip


def rules(objects: list[dict[str, Any]]) -> list[tuple[tuple[str, ...], ...]]:
    """Rules as comparable values: the order of rules and of list items carries no meaning."""
    return sorted(
        tuple(tuple(sorted(rule.get(key, []))) for key in ("apiGroups", "resources", "resourceNames", "verbs"))
        for o in objects
        for rule in o["rules"]
    )


def deploy_documents(*parts: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(REPO.joinpath("deploy", *parts).read_text()) if d]


def values_file(path: Path, values: dict[str, Any]) -> list[str]:
    path.write_text(yaml.safe_dump(values))
    return ["-f", str(path)]


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [deployment] = find(objects, "Deployment")
    return deployment["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def env_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The container's env by name: the value, or the valueFrom."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod_spec(objects)["containers"][0]["env"]}


def operator_variables() -> set[str]:
    """The CERTSYNC_* variables the operator reads (settings.py), without its test hooks."""
    names = set(re.findall(r'"(CERTSYNC_[A-Z_]+)"', (REPO / "operator" / "certsync" / "settings.py").read_text()))
    return {n for n in names if not n.startswith("CERTSYNC_DEBUG_")}


def camel(variable: str) -> str:
    head, *rest = variable.removeprefix("CERTSYNC_").lower().split("_")
    return head + "".join(word.capitalize() for word in rest)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        (["--set", "namespaces.mode=namespaces"], "namespaces"),
        (["--set", "namespaces.mode=some"], "/namespaces/mode"),
        (["--set", "image.digest=latest"], "digest"),
        (["--set", "replicas=0"], "replicas"),
        (["--set", "settings.logFormat=xml"], "logFormat"),
        (["--set", "settings.logLevel=verbose"], "logLevel"),
        (["--set", "settings.namespaces=apps"], "namespaces"),
        (["--set", "settings.leaderElection=false"], "leaderElection"),
        (["--set", "settings.driftIntervall=1h"], "driftIntervall"),  # a typo is refused, not ignored
        (["--set", "settings.remoteCaFile=/ca.pem"], "remoteCaFile"),  # remoteCA is a value of its own
        (["--set", "leaderElection.enabled=false"], "/replicas"),  # with the default replicas: 2, all would act
        (["--set", "antiAffinity=always"], "antiAffinity"),
        (["--set", "unknownKey=1"], "unknownKey"),
        (["--set", "proxy.httpsProxy=socks5://proxy:1080"], "httpsProxy"),
        (["--set", "proxy.noProxy={a b}"], "noProxy"),
        (["--set", "remoteCA.kind=Pod"], "/remoteCA/kind"),
        (["--set", "remoteCA.name=Bad_Name"], "/remoteCA/name"),
        (["--set", "extraEnv[0].value=x"], "missing property 'name'"),
        (["--set", "extraEnv[0].name=A", "--set", "extraEnv[0].value=x", "--set", "extraEnv[0].valueFrom.x=y"],
         "/extraEnv/0"),
        (["--set", "volumeMounts[0].name=data"], "missing property 'mountPath'"),
        (["--set", "topologySpreadConstraints[0].maxSkew=1"], "topologyKey"),
        (["--set", "metrics.podMonitor.scrapeTimeout=ten"], "scrapeTimeout"),
        (["--set", "metrics.serviceMonitor.interval=30 seconds"], "interval"),
        (["--set", "metrics.podMonitor.port=8080"], "port"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_with_the_field_named(values: list[str], complaint: str) -> None:
    result = helm("template", "cs", str(CHART), *values, check=False)
    assert result.returncode != 0
    assert complaint in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"extraEnv": [{"name": "CERTSYNC_WORKERS", "value": "4"}]}, "extraEnv names CERTSYNC_WORKERS"),
        ({"proxy": {"httpsProxy": "http://p:3128"}, "extraEnv": [{"name": "NO_PROXY", "value": "x"}]},
         "extraEnv names NO_PROXY"),
        ({"remoteCA": {"name": "ca"}, "extraEnv": [{"name": "CERTSYNC_REMOTE_CA_FILE", "value": "/x"}]},
         "extraEnv names CERTSYNC_REMOTE_CA_FILE"),
        ({"extraEnv": [{"name": "CERTSYNC_NAMESPACES", "value": "a"}]}, "extraEnv names CERTSYNC_NAMESPACES"),
        ({"podLabels": {"app.kubernetes.io/name": "other"}}, "podLabels.app.kubernetes.io/name"),
        ({"volumes": [{"name": "tmp", "emptyDir": {}}]}, "volume named tmp"),
        ({"remoteCA": {"name": "ca"}, "volumes": [{"name": "remote-ca", "emptyDir": {}}]}, "volume named remote-ca"),
        ({"volumes": [{"name": "t", "emptyDir": {}}], "volumeMounts": [{"name": "t", "mountPath": "/tmp/"}]},
         "mounts /tmp/ already"),
        ({"metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}}, "enable one of them"),
        ({"proxy": {"httpsProxy": "http://user:pw@proxy:3128"}}, "carries credentials"),
        ({"proxy": {"httpsProxy": "http://p:3128", "httpsProxySecret": {"name": "proxy", "key": "url"}}},
         "exclusive"),
        ({"proxy": {"httpsProxySecret": {"name": "proxy"}}}, "proxy.httpsProxySecret.key"),
    ],
)  # fmt: skip
def test_the_templates_refuse_what_the_schema_cannot_see(
    tmp_path: Path, values: dict[str, Any], complaint: str
) -> None:
    result = helm("template", "cs", str(CHART), *values_file(tmp_path / "v.yaml", values), check=False)
    assert result.returncode != 0
    assert complaint in result.stderr, result.stderr
    assert "credentials" not in complaint or "pw" not in result.stderr  # the refusal does not repeat the password


def test_replicas_without_leader_election_are_refused_by_the_template_too() -> None:
    """The schema refuses it at `helm install`; the template refuses it when the schema is skipped."""
    values = ["--set", "leaderElection.enabled=false", "--set", "replicas=2"]
    refused = helm("template", "cs", str(CHART), "--skip-schema-validation", *values, check=False)
    assert refused.returncode != 0 and "needs replicas: 1" in refused.stderr, refused.stderr
    single = render("--set", "leaderElection.enabled=false", "--set", "replicas=1")
    assert env_of(single)["CERTSYNC_LEADER_ELECTION"] == "false"
    assert not [r for r in find(single, "Role") if r["metadata"]["name"].endswith("-leader-election")]


EVERYTHING: dict[str, Any] = {
    "proxy": {"httpsProxy": "http://proxy.corp.example:3128", "noProxy": [".corp.example", "10.0.0.0/8"]},
    "remoteCA": {"kind": "Secret", "name": "corp-ca", "key": "bundle.pem"},
    "extraEnv": [{"name": "TZ", "value": "UTC"},
                 {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
    "envFrom": [{"configMapRef": {"name": "certsync-extra"}}],
    "volumes": [{"name": "extra", "configMap": {"name": "certsync-extra"}}],
    "volumeMounts": [{"name": "extra", "mountPath": "/etc/extra", "readOnly": True}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["system"]}]}]}}},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "system", "effect": "NoSchedule"}],
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                   "whenUnsatisfiable": "ScheduleAnyway"}],
    "priorityClassName": "system-cluster-critical",
    "podAnnotations": {"example.com/team": "platform"},
    "podLabels": {"team": "platform"},
    "metrics": {"podMonitor": {"enabled": True, "scrapeTimeout": "10s", "labels": {"release": "prom"},
                               "relabelings": [{"action": "replace", "targetLabel": "cluster", "replacement": "c1"}],
                               "metricRelabelings": [{"action": "drop", "sourceLabels": ["__name__"],
                                                      "regex": "python_gc_.*"}]}},
}  # fmt: skip


@pytest.mark.parametrize(
    "values",
    [{}, {"namespaces": {"mode": "namespaces", "list": ["apps", "shop"]}},
     {"metrics": {"serviceMonitor": {"enabled": True, "scrapeTimeout": "5s"}, "prometheusRule": {"enabled": True},
                  "dashboard": {"enabled": True}}, "crds": {"install": False}, "replicas": 1},
     EVERYTHING],
    ids=["defaults", "namespaces", "monitoring", "everything"],
)  # fmt: skip
def test_helm_lint_is_clean(tmp_path: Path, values: dict[str, Any]) -> None:
    result = helm("lint", "--strict", str(CHART), *values_file(tmp_path / "v.yaml", values))
    assert "0 chart(s) failed" in result.stdout, result.stdout


def test_rbac_is_deploys_in_both_modes() -> None:
    cluster = render()
    [role] = find(cluster, "ClusterRole")
    assert rules([role]) == rules(find(deploy_documents("rbac.yaml"), "ClusterRole"))
    [lease] = find(cluster, "Role")  # no account credentials listed by default: no Role for them
    assert rules([lease]) == rules(find(deploy_documents("base", "lease-role.yaml"), "Role"))
    assert lease["metadata"]["namespace"] == "certsync-system"
    [binding] = find(cluster, "ClusterRoleBinding")
    [account] = find(cluster, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": "certsync-system"}]  # fmt: skip

    scoped = render("--set", "namespaces.mode=namespaces", "--set", "namespaces.list={apps,shop}")
    # only the cluster-scoped kinds (ClusterRemoteAccounts, Namespaces), which no Role can grant
    [accounts] = find(scoped, "ClusterRole")
    assert rules([accounts]) == rules(
        find(deploy_documents("overlays", "single-namespace", "accounts-clusterrole.yaml"), "ClusterRole")
    )
    assert {r["resources"][0] for r in accounts["rules"]} == {
        "clusterremoteaccounts",
        "clusterremoteaccounts/status",
        "namespaces",
    }
    assert len(find(scoped, "ClusterRoleBinding")) == 1
    watched = [r for r in find(scoped, "Role") if not r["metadata"]["name"].endswith("-leader-election")]
    assert sorted(r["metadata"]["namespace"] for r in watched) == ["apps", "shop"]
    overlay = find(deploy_documents("overlays", "single-namespace", "role.yaml"), "Role")
    assert all(rules([r]) == rules(overlay) for r in watched)
    assert env_of(scoped)["CERTSYNC_NAMESPACES"] == "apps,shop"


def test_crds_are_those_of_crds_folder_kept_on_uninstall_and_can_be_left_out() -> None:
    for path in sorted((REPO / "crds").glob("*.yaml")):
        chart_copy = CHART / "files" / "crds" / path.name
        assert chart_copy.read_bytes() == path.read_bytes(), f"cp crds/{path.name} {chart_copy.relative_to(REPO)}"
    assert not list((REPO / "crds").glob("kustomization.*")), "kubectl apply -f crds/ must see only CRDs"
    rendered = {c["metadata"]["name"]: c for c in find(render(), "CustomResourceDefinition")}
    for path in (REPO / "crds").glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        assert rendered[crd["metadata"]["name"]]["spec"] == crd["spec"]
        assert rendered[crd["metadata"]["name"]]["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert not find(render("--set", "crds.install=false"), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in str(render("--set", "crds.keep=false"))


def test_the_settings_keys_are_exactly_the_operators() -> None:
    """A key the schema takes but the operator does not read would be ignored silently; one the operator reads
    but the schema refuses could not be set. Both lists come from their sources: settings.py and the schema."""
    from certsync import settings

    known = SCHEMA["properties"]["settings"]["properties"]
    assert SCHEMA["properties"]["settings"]["additionalProperties"] is False
    variables = operator_variables()
    assert set(FIRST_CLASS) <= variables  # the first-class values name variables the operator reads
    assert set(known) == {camel(n) for n in variables - set(FIRST_CLASS)}
    assert set(FIRST_CLASS.values()) <= set(SCHEMA["properties"]) and not set(FIRST_CLASS.values()) & set(known)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values["settings"]) == set(known)  # values.yaml shows each one
    assert known["logLevel"]["enum"] == [*settings.LOG_LEVELS, None]


def test_every_operator_setting_can_be_set_from_values() -> None:
    names = operator_variables() - {"CERTSYNC_REMOTE_CA_FILE"}  # only with remoteCA (below)
    objects = render("--set", "settings.leaseNamespace=elsewhere", "--set", "settings.logLevel=debug")
    env = env_of(objects)
    assert names <= set(env), sorted(names - set(env))
    assert env["CERTSYNC_LEASE_NAMESPACE"] == "elsewhere"
    assert env["CERTSYNC_LOG_LEVEL"] == "debug"
    assert env["CERTSYNC_ALLOWED_ENDPOINTS"] == ""  # nothing allowed until the user names endpoints
    assert "CERTSYNC_LEASE_NAMESPACE" not in env_of(render())  # null: unset, the operator's default
    container = pod_spec(objects)["containers"][0]
    assert container["ports"] == [{"name": "metrics", "containerPort": int(env["CERTSYNC_METRICS_PORT"])}]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_proxy_is_set_for_the_remote_apis_and_never_for_the_kubernetes_api() -> None:
    assert not {"HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"} & set(env_of(render()))
    env = env_of(render("--set", "proxy.httpsProxy=http://proxy.corp.example:3128",
                        "--set", "proxy.noProxy={.corp.example,10.0.0.0/8,.svc}"))  # fmt: skip
    assert env["HTTPS_PROXY"] == env["https_proxy"] == "http://proxy.corp.example:3128"
    # the API server's address, as the kubelet expands the service variable, then the user's (without repeats)
    assert (
        env["NO_PROXY"] == env["no_proxy"] == "$(KUBERNETES_SERVICE_HOST),.svc,.cluster.local,.corp.example,10.0.0.0/8"
    )
    assert "HTTP_PROXY" not in env  # the remote APIs are https

    from_secret = env_of(
        render("--set", "proxy.httpsProxySecret.name=egress", "--set", "proxy.httpsProxySecret.key=url")
    )
    ref = {"secretKeyRef": {"name": "egress", "key": "url"}}
    assert from_secret["HTTPS_PROXY"] == from_secret["https_proxy"] == ref  # a valueFrom: no URL in the Deployment
    assert from_secret["NO_PROXY"] == "$(KUBERNETES_SERVICE_HOST),.svc,.cluster.local"
    only_no_proxy = env_of(render("--set", "proxy.noProxy={.corp.example}"))  # HTTPS_PROXY from envFrom, say
    assert only_no_proxy["NO_PROXY"] == "$(KUBERNETES_SERVICE_HOST),.svc,.cluster.local,.corp.example"
    assert "HTTPS_PROXY" not in only_no_proxy


def test_no_proxy_keeps_the_api_server_off_the_proxy_for_the_remote_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rendered variables, as the kubelet expands them, read by httpx as the remote clients read them
    (`trust_env`): the API server's address and cluster names go direct, a remote API through the proxy."""
    import httpx

    env = env_of(render("--set", "proxy.httpsProxy=http://proxy.corp.example:3128"))
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, env[name].replace("$(KUBERNETES_SERVICE_HOST)", "10.96.0.1"))
    with httpx.Client(trust_env=True) as client:

        def proxied(url: str) -> bool:
            transport = client._transport_for_url(httpx.URL(url))  # which transport serves a URL (httpx's own choice)
            return transport is not client._transport

        assert proxied("https://cloud-intl.emqx.com/public_api/v1/deployments")
        assert proxied("https://api.cdn.sber.cloud/app/oauth/v1/token/")
        assert not proxied("https://10.96.0.1:443/api")
        assert not proxied("https://kubernetes.default.svc/api")
        assert not proxied("https://kubernetes.default.svc.cluster.local/api")


def test_remote_ca_is_mounted_read_only_and_named_to_the_operator() -> None:
    assert "CERTSYNC_REMOTE_CA_FILE" not in env_of(render())
    for kind, source in (("ConfigMap", "configMap"), ("Secret", "secret")):
        objects = render("--set", f"remoteCA.kind={kind}", "--set", "remoteCA.name=corp-ca",
                         "--set", "remoteCA.key=bundle.pem")  # fmt: skip
        spec = pod_spec(objects)
        [volume] = [v for v in spec["volumes"] if v["name"] == "remote-ca"]
        name_key = "name" if kind == "ConfigMap" else "secretName"
        assert volume[source] == {name_key: "corp-ca", "items": [{"key": "bundle.pem", "path": "bundle.pem"}]}
        [mount] = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "remote-ca"]
        assert mount == {"name": "remote-ca", "mountPath": "/etc/certsync/remote-ca", "readOnly": True}
        assert env_of(objects)["CERTSYNC_REMOTE_CA_FILE"] == "/etc/certsync/remote-ca/bundle.pem"
    default_key = env_of(render("--set", "remoteCA.name=corp-ca"))
    assert default_key["CERTSYNC_REMOTE_CA_FILE"] == "/etc/certsync/remote-ca/ca.crt"


def test_extra_env_env_from_volumes_and_mounts_come_after_the_charts(tmp_path: Path) -> None:
    objects = render(*values_file(tmp_path / "v.yaml", EVERYTHING))
    spec = pod_spec(objects)
    container = spec["containers"][0]
    names = [e["name"] for e in container["env"]]
    assert names[-2:] == ["TZ", "POD_NAME"]  # last: an extra variable may refer to the chart's with $(NAME)
    assert container["env"][-1] == EVERYTHING["extraEnv"][1]
    assert len(names) == len(set(names))
    assert container["envFrom"] == EVERYTHING["envFrom"]
    assert [v["name"] for v in spec["volumes"]] == ["tmp", "remote-ca", "extra"]
    assert spec["volumes"][-1] == EVERYTHING["volumes"][0]
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp", "/etc/certsync/remote-ca", "/etc/extra"]
    assert "envFrom" not in pod_spec(render())["containers"][0]
    assert pod_spec(render())["volumes"] == [{"name": "tmp", "emptyDir": {}}]


def test_scheduling_values_reach_the_pod(tmp_path: Path) -> None:
    objects = render(*values_file(tmp_path / "v.yaml", EVERYTHING))
    [deployment] = find(objects, "Deployment")
    spec = pod_spec(objects)
    assert spec["affinity"] == EVERYTHING["affinity"]  # replaces the antiAffinity preset entirely
    assert spec["tolerations"] == EVERYTHING["tolerations"]
    assert spec["nodeSelector"] == EVERYTHING["nodeSelector"]
    assert spec["priorityClassName"] == "system-cluster-critical"
    [spread] = spec["topologySpreadConstraints"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert spread == {**EVERYTHING["topologySpreadConstraints"][0], "labelSelector": {"matchLabels": selector}}
    metadata = deployment["spec"]["template"]["metadata"]
    assert metadata["annotations"] == {"example.com/team": "platform"}
    assert metadata["labels"] == {**selector, "team": "platform"}
    own = {"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
           "labelSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}}  # fmt: skip
    kept = pod_spec(render(*values_file(tmp_path / "own.yaml", {"topologySpreadConstraints": [own]})))
    assert kept["topologySpreadConstraints"] == [own]  # a selector of the user's own is kept as it is
    plain = pod_spec(render())
    assert not {"tolerations", "nodeSelector", "priorityClassName", "topologySpreadConstraints"} & set(plain)
    assert "annotations" not in find(render(), "Deployment")[0]["spec"]["template"]["metadata"]


def test_replicas_spread_with_a_disruption_budget_and_metrics_are_served() -> None:
    objects = render("--set", "metrics.serviceMonitor.enabled=true")
    [deployment] = find(objects, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert "preferredDuringSchedulingIgnoredDuringExecution" in spec["affinity"]["podAntiAffinity"]
    hard = pod_spec(render("--set", "antiAffinity=hard"))["affinity"]["podAntiAffinity"]
    assert hard["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == "kubernetes.io/hostname"
    [budget] = find(objects, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    [service] = find(objects, "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    [monitor] = find(objects, "ServiceMonitor")
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "honorLabels": True, "interval": "30s"}  # keep resources' namespace
    ]
    single = render("--set", "replicas=1", "--set", "antiAffinity=")
    assert not find(single, "PodDisruptionBudget")  # a budget of 1 of 1 would block every node drain
    assert "affinity" not in pod_spec(single)
    assert not find(render(), "ServiceMonitor") and not find(render(), "PrometheusRule")
    assert not find(render(), "PodMonitor")


def test_service_monitor_and_pod_monitor_take_timeout_and_relabelings(tmp_path: Path) -> None:
    relabel = [{"action": "replace", "targetLabel": "cluster", "replacement": "c1"}]
    drop = [{"action": "drop", "sourceLabels": ["__name__"], "regex": "python_gc_.*"}]
    scrape = {"interval": "1m", "scrapeTimeout": "20s", "relabelings": relabel, "metricRelabelings": drop}
    expected = {"port": "metrics", "path": "/metrics", "honorLabels": True, **scrape}
    services = render(*values_file(tmp_path / "s.yaml", {"metrics": {"serviceMonitor": {"enabled": True, **scrape}}}))
    [service_monitor] = find(services, "ServiceMonitor")
    assert service_monitor["spec"]["endpoints"] == [expected]
    assert not find(services, "PodMonitor")
    pods = render(*values_file(tmp_path / "p.yaml", EVERYTHING))
    [pod_monitor] = find(pods, "PodMonitor")
    [deployment] = find(pods, "Deployment")
    assert pod_monitor["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert pod_monitor["metadata"]["labels"]["release"] == "prom"
    monitor = EVERYTHING["metrics"]["podMonitor"]
    assert pod_monitor["spec"]["podMetricsEndpoints"] == [{
        "port": "metrics", "path": "/metrics", "honorLabels": True, "interval": "30s", "scrapeTimeout": "10s",
        "relabelings": monitor["relabelings"], "metricRelabelings": monitor["metricRelabelings"]}]  # fmt: skip
    assert pod_spec(pods)["containers"][0]["ports"][0]["name"] == "metrics"  # the port the PodMonitor names
    assert not find(pods, "ServiceMonitor")


def test_chart_ships_the_alerts_and_dashboard_of_deploy_monitoring() -> None:
    objects = render("--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.dashboard.enabled=true")
    [rule] = find(objects, "PrometheusRule")
    shipped = deploy_documents("monitoring", "prometheusrule.yaml")[0]
    assert rule["spec"] == shipped["spec"] == yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    [dashboard] = find(objects, "ConfigMap")
    assert (
        dashboard["data"]["certsync.json"] == (REPO / "deploy" / "monitoring" / "grafana" / "certsync.json").read_text()
    )


# Values added after the chart's first release: a release upgraded with `--reuse-values` has none of them (helm
# then uses the old chart's defaults instead of this one's), so every template must render without them.
ADDED_VALUES = [
    ("settings", "logLevel"), ("proxy",), ("remoteCA",), ("extraEnv",), ("envFrom",), ("volumes",),
    ("volumeMounts",), ("affinity",), ("topologySpreadConstraints",), ("metrics", "podMonitor"),
    ("metrics", "serviceMonitor", "scrapeTimeout"), ("metrics", "serviceMonitor", "relabelings"),
    ("metrics", "serviceMonitor", "metricRelabelings"), ("settings", "cdnBindMethod"), ("rbac", "certManagerCertificates"),
]  # fmt: skip


def make_older_chart(directory: Path) -> Path:
    """This chart with the values.yaml of a release before ADDED_VALUES: what `--reuse-values` renders (helm
    replaces the new chart's default values with the old chart's)."""
    chart = directory / "certsync"
    shutil.copytree(CHART, chart)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in ADDED_VALUES:
        parent = values
        for key in path[:-1]:
            parent = parent[key]
        assert path[-1] in parent, f"{'.'.join(path)} is not in values.yaml: update ADDED_VALUES"
        del parent[path[-1]]
    (chart / "values.yaml").write_text(yaml.safe_dump(values))
    return chart


@pytest.fixture
def older_chart(tmp_path: Path) -> Path:
    return make_older_chart(tmp_path)


@pytest.mark.parametrize(
    "values",
    [[], ["--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true",
          "--set", "metrics.dashboard.enabled=true", "--set", "namespaces.mode=namespaces",
          "--set", "namespaces.list={apps}"]],
    ids=["defaults", "everything-old-on"],
)  # fmt: skip
def test_values_of_an_older_release_still_render(older_chart: Path, values: list[str]) -> None:
    text = helm("template", "cs", str(older_chart), "--namespace", "certsync-system", *values).stdout
    old = [d for d in yaml.safe_load_all(text) if d]
    current = render(*values)
    assert sorted(o["kind"] for o in old) == sorted(o["kind"] for o in current)
    spec = pod_spec(old)
    assert spec["volumes"] == [{"name": "tmp", "emptyDir": {}}]
    assert "envFrom" not in spec["containers"][0]
    added = ("CERTSYNC_LOG_LEVEL", "CERTSYNC_CDN_BIND_METHOD")  # settings added since: the operator defaults them
    assert env_of(old) == {k: v for k, v in env_of(current).items() if k not in added}
    assert pod_spec(current)["affinity"] == spec["affinity"]
    assert [o.get("spec") for o in find(old, "ServiceMonitor")] == [
        o.get("spec") for o in find(current, "ServiceMonitor")
    ]


def test_new_values_set_on_an_older_release_render_with_their_own_defaults(older_chart: Path) -> None:
    """`helm upgrade --reuse-values --set proxy.httpsProxy=…`: the new value arrives alone, without its siblings'
    defaults (proxy.noProxy, podMonitor.interval), and the templates fill them in."""
    args = ["--set", "proxy.httpsProxy=http://proxy.corp.example:3128", "--set", "metrics.podMonitor.enabled=true",
            "--set", "remoteCA.name=corp-ca", "--set", "metrics.service.enabled=false"]  # fmt: skip
    text = helm("template", "cs", str(older_chart), "--namespace", "certsync-system", *args).stdout
    old = [d for d in yaml.safe_load_all(text) if d]
    env = env_of(old)
    assert env["HTTPS_PROXY"] == "http://proxy.corp.example:3128"
    assert env["NO_PROXY"] == "$(KUBERNETES_SERVICE_HOST),.svc,.cluster.local"
    assert env["CERTSYNC_REMOTE_CA_FILE"] == "/etc/certsync/remote-ca/ca.crt"  # remoteCA.key's default
    [volume] = [v for v in pod_spec(old)["volumes"] if v["name"] == "remote-ca"]
    assert "configMap" in volume  # remoteCA.kind's default
    [monitor] = find(old, "PodMonitor")
    assert monitor["spec"]["podMetricsEndpoints"][0]["interval"] == "30s"


# deploy/ is checked against the chart: one source of truth, two forms.


@pytest.fixture(scope="module")
def kubectl() -> Path:
    return controlplane.build() / "kubectl"


def kustomize(kubectl: Path, directory: Path) -> list[dict[str, Any]]:
    out = subprocess.run([str(kubectl), "kustomize", str(directory)], capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def normalised(obj: dict[str, Any]) -> dict[str, Any]:
    """The documented differences removed: the labels helm adds (everywhere labels are matched or set), and the
    order of env entries (no entry refers to another; $(KUBERNETES_SERVICE_HOST) is a service variable)."""
    result = copy.deepcopy(obj)

    def walk(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            yield node
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    for node in walk(result):
        for key in ("labels", "matchLabels"):
            if isinstance(node.get(key), dict):
                node[key] = {k: v for k, v in node[key].items() if k not in HELM_LABELS}
        if isinstance(node.get("env"), list):
            node["env"] = sorted(node["env"], key=lambda e: e["name"])
    return result


def compared(objects: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    kinds = {"Deployment", "ServiceAccount", "PodDisruptionBudget", "ClusterRole", "ClusterRoleBinding", "Role",
             "RoleBinding", "NetworkPolicy"}  # fmt: skip
    return {
        (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): normalised(o)
        for o in objects
        if o["kind"] in kinds
    }


def chart_as_deploy(tmp_path: Path, *values: str) -> list[dict[str, Any]]:
    args = values_file(tmp_path / "deploy-values.yaml", DEPLOY_VALUES)
    text = helm("template", "certsync", str(CHART), "--namespace", "certsync-system", *args, *values).stdout
    return [d for d in yaml.safe_load_all(text) if d]


def test_deploy_is_the_chart_rendered_with_deploys_values(kubectl: Path, tmp_path: Path) -> None:
    """Field by field: the Deployment (every setting, probes, resources, security, affinity), the ServiceAccount,
    the PodDisruptionBudget and the RBAC. Only in one of them, by design: deploy/'s Namespace (helm takes
    --create-namespace), the chart's metrics Service and its CRDs (kustomize users apply crds/ on their own)."""
    deploy = kustomize(kubectl, REPO / "deploy")
    chart = chart_as_deploy(tmp_path)
    assert compared(deploy) == compared(chart)
    assert len(compared(deploy)) == 10
    assert {o["kind"] for o in deploy} - {o["kind"] for o in chart} == {"Namespace"}
    assert {o["kind"] for o in chart} - {o["kind"] for o in deploy} == {"Service", "CustomResourceDefinition"}


def test_single_namespace_overlay_is_the_chart_in_namespaces_mode(kubectl: Path, tmp_path: Path) -> None:
    overlay_dir = REPO / "deploy" / "overlays" / "single-namespace"
    examples_ns = yaml.safe_load((REPO / "examples" / "namespace.yaml").read_text())["metadata"]["name"]
    overlay = kustomize(kubectl, overlay_dir)
    chart = chart_as_deploy(
        tmp_path, "--set", "namespaces.mode=namespaces", "--set", f"namespaces.list={{{examples_ns}}}"
    )
    assert compared(overlay) == compared(chart)
    assert env_of(overlay)["CERTSYNC_NAMESPACES"] == examples_ns  # the examples' namespace, which the Role grants
    assert {o["metadata"].get("namespace") for o in find(overlay, "Role") + find(overlay, "RoleBinding")} == {
        examples_ns,
        "certsync-system",
    }


def test_the_overlay_patches_the_namespaces_variable_by_name(kubectl: Path, tmp_path: Path) -> None:
    """The base's env in another order (a setting added before it, say): the overlay still sets
    CERTSYNC_NAMESPACES, and only it (an index patch would overwrite whatever sits at its position)."""
    deploy = tmp_path / "deploy"
    shutil.copytree(REPO / "deploy", deploy)
    manifest = deploy / "base" / "deployment.yaml"
    base = yaml.safe_load(manifest.read_text())
    container = base["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": "CERTSYNC_NEW_SETTING", "value": "x"}, *reversed(container["env"])]
    manifest.write_text(yaml.safe_dump(base))
    before = {e["name"]: e["value"] for e in container["env"]}
    after = env_of(kustomize(kubectl, deploy / "overlays" / "single-namespace"))
    assert after == {**before, "CERTSYNC_NAMESPACES": "demo"}


def test_network_policy_admits_metrics_from_its_peers_and_egress_only_by_port() -> None:
    assert find(render(), "NetworkPolicy") == []  # off by default in the chart (deploy/ ships it on)
    [policy] = find(render("--set", "networkPolicy.enabled=true"), "NetworkPolicy")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                                "ports": [{"protocol": "TCP", "port": 8080}]}]  # fmt: skip
    dns, https = spec["egress"]
    assert {p["port"] for p in dns["ports"]} == {53} and "to" not in dns
    assert [p["port"] for p in https["ports"]] == [443, 6443]
    narrowed = find(render("--set", "networkPolicy.enabled=true", "--set", "networkPolicy.egress.cidrs={198.51.100.0/24}",
                           "--set", "networkPolicy.metricsFrom=null", "--set", "settings.metricsPort=9090"),
                    "NetworkPolicy")[0]["spec"]  # fmt: skip
    assert narrowed["egress"][1]["to"] == [{"ipBlock": {"cidr": "198.51.100.0/24"}}]
    assert not narrowed["ingress"]  # no peer named: nobody reaches the metrics port
    refused = helm("template", "x", str(CHART), "--set", "networkPolicy.egress.cidrs={example.com}", check=False)
    assert refused.returncode != 0 and "cidrs" in refused.stderr


def test_account_credentials_are_readable_by_exactly_the_named_secrets() -> None:
    """`get` on the listed Secrets and nothing else: one Role per namespace with their resourceNames."""
    assert not [r for r in find(render(), "Role") if "account-credentials" in r["metadata"]["name"]]
    listed = render("--set", "clusterRemoteAccounts.credentialsSecrets[0].name=emqx-account",
                    "--set", "clusterRemoteAccounts.credentialsSecrets[1].name=cdn-account",
                    "--set", "clusterRemoteAccounts.credentialsSecrets[2].name=vault-cdn",
                    "--set", "clusterRemoteAccounts.credentialsSecrets[2].namespace=vault")  # fmt: skip
    roles = {
        r["metadata"]["namespace"]: r["rules"]
        for r in find(listed, "Role")
        if "account-credentials" in r["metadata"]["name"]
    }
    assert roles == {
        "certsync-system": [
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": ["emqx-account", "cdn-account"],
                "verbs": ["get"],
            }
        ],
        "vault": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["vault-cdn"], "verbs": ["get"]}],
    }
    bindings = [b for b in find(listed, "RoleBinding") if "account-credentials" in b["metadata"]["name"]]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["certsync-system", "vault"]
    refused = helm(
        "template", "x", str(CHART), "--set", "clusterRemoteAccounts.credentialsSecrets[0].namespace=a", check=False
    )
    assert refused.returncode != 0  # a Secret without a name would grant every Secret there: refused
