"""charts/certsync/ on the local control plane: the rendered objects of the main value sets pass the API server's
validation (`kubectl apply --dry-run=server`), and an installed release runs the operator to Ready.

There is no kubelet: after `helm install`, the operator runs as a process with the token of the chart's
ServiceAccount and the environment of the chart's Deployment, so it has exactly the chart's RBAC and settings."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from devkit import controlplane
from devkit.factory import issue
from devkit.kube import Kube
from devkit.processes import EmulatorProcess, operator
from devkit.release import CHART, find, helm
from tests.test_e2e_deploymenttls import dtls, emqx_inputs
from tests.test_monitoring import dashboard_expressions, metric_names

pytestmark = pytest.mark.e2e

# prometheus-operator's kinds, as schemaless CRDs: enough for the API server to accept a ServiceMonitor and a
# PrometheusRule on a cluster without prometheus-operator (their own schemas are not vendored here).
MONITORING_KINDS = [("ServiceMonitor", "servicemonitors"), ("PrometheusRule", "prometheusrules")]


def stub_crd(kind: str, plural: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                 "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": kind + "List"},
                 "versions": [{"name": "v1", "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {"type": "object",
                                                              "x-kubernetes-preserve-unknown-fields": True}}}]},
    }  # fmt: skip


def template(release: str, namespace: str, *values: str) -> str:
    return helm("template", release, str(CHART), "--namespace", namespace, *values).stdout


@pytest.mark.parametrize(
    "values",
    [
        [],
        ["--set", "namespaces.mode=namespaces", "--set", "namespaces.list={NS}", "--set", "leaderElection.enabled=false"],
        ["--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true",
         "--set", "metrics.dashboard.enabled=true", "--set", "replicas=3", "--set", "antiAffinity=hard",
         "--set", "image.digest=sha256:" + "0" * 64],
    ],
    ids=["defaults", "namespaces", "monitoring"],
)  # fmt: skip
def test_rendered_chart_is_accepted_by_the_api_server(kube: Kube, namespace: str, values: list[str]) -> None:
    kube.apply(*(stub_crd(kind, plural) for kind, plural in MONITORING_KINDS))
    kube.kubectl("wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com",
                 "crd/prometheusrules.monitoring.coreos.com", "--timeout=60s")  # fmt: skip
    values = [v.replace("NS", namespace) for v in values]
    text = template("dry", namespace, *values)
    kinds = {doc["kind"] for doc in yaml.safe_load_all(text) if doc}
    # an invalid object is refused: the check can fail
    documents = [doc for doc in yaml.safe_load_all(text) if doc]
    for doc in documents:
        if doc["kind"] == "Deployment":
            doc["spec"]["bogusField"] = 1
    broken = yaml.safe_dump_all(documents)
    refused = kube.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=broken, check=False)
    assert refused.returncode != 0 and "bogusField" in refused.stderr
    applied = kube.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=text)
    assert len(applied.stdout.splitlines()) == len([d for d in yaml.safe_load_all(text) if d])
    assert {"Deployment", "ServiceAccount", "Service"} <= kinds


def release_env(kube: Kube, release: str, namespace: str) -> dict[str, str]:
    manifest = helm("get", "manifest", release, "-n", namespace, kubeconfig=kube.kubeconfig).stdout
    [deployment] = find([d for d in yaml.safe_load_all(manifest) if d], "Deployment")
    return {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_helm_install_runs_the_operator_to_ready_and_uninstall_keeps_crds_and_resources(
    kube: Kube, namespace: str, emqx_process: EmulatorProcess, tmp_path: Path
) -> None:
    release, release_ns = "cs-e2e", f"{namespace}-op"
    # CRDs applied earlier with kubectl (the fixture did) are adopted by the release, as the chart README says.
    for crd in ("deploymenttlses", "cdncertificates", "letsencryptorders"):
        name = f"crd/{crd}.certsync.io"
        kube.kubectl("label", "--overwrite", name, "app.kubernetes.io/managed-by=Helm")
        kube.kubectl("annotate", "--overwrite", name, f"meta.helm.sh/release-name={release}",
                     f"meta.helm.sh/release-namespace={release_ns}")  # fmt: skip
    helm("install", release, str(CHART), "--namespace", release_ns, "--create-namespace", "--wait=false",
         "--set", f"settings.allowedEndpoints={emqx_process.url}/", "--set", "namespaces.mode=namespaces",
         "--set", f"namespaces.list={{{namespace}}}", "--set", "settings.emqxBudgetWindow=60",
         kubeconfig=kube.kubeconfig)  # fmt: skip
    status = json.loads(helm("status", release, "-n", release_ns, "-o", "json", kubeconfig=kube.kubeconfig).stdout)
    assert status["info"]["status"] == "deployed"

    cert = issue("chart.example.com")
    kube.apply(*emqx_inputs(cert), namespace=namespace)
    kube.apply(dtls("broker", emqx_process.url), namespace=namespace)
    token = kube.kubectl("create", "token", "cs-e2e-certsync", "-n", release_ns, "--duration", "1h").stdout.strip()
    config = controlplane.kubeconfig(kube.server, kube.ca, {"token": token}, tmp_path / "sa.kubeconfig", release_ns)
    # the chart's ServiceAccount may not read Secrets outside the watched namespace
    assert (
        kube.kubectl("auth", "can-i", "list", "secrets", "-n", "default", kubeconfig=config, check=False).stdout.strip()
        == "no"
    )
    settings = release_env(kube, release, release_ns)
    assert settings["CERTSYNC_NAMESPACES"] == namespace
    with operator(config, tmp_path / "op.log", settings=settings) as running:
        kube.kubectl("wait", "-n", namespace, "--for=condition=Ready", "deploymenttls/broker", "--timeout=90s")
        scrape = httpx.get(running.metrics_url + "/metrics", timeout=10).text
    exported = set(re.findall(r"^(certsync_[a-z_]+)", scrape, re.MULTILINE))
    used = set().union(*(metric_names(e) for e in dashboard_expressions()))
    assert used <= exported, f"the dashboard queries metrics this run did not export: {sorted(used - exported)}"
    kube.kubectl("get", "lease", "certsync-leader", "-n", release_ns)  # elected with the chart's Lease Role

    helm("uninstall", release, "-n", release_ns, kubeconfig=kube.kubeconfig)
    for crd in ("deploymenttlses", "cdncertificates", "letsencryptorders"):
        kube.kubectl("get", f"crd/{crd}.certsync.io")  # kept (helm.sh/resource-policy: keep)
    kube.kubectl("get", "deploymenttls/broker", "-n", namespace)
    assert kube.kubectl("get", "serviceaccount", "cs-e2e-certsync", "-n", release_ns, check=False).returncode != 0


def test_crds_apply_on_their_own_and_deleting_deploy_leaves_them(kube: Kube, operator_kubeconfig: Path) -> None:
    """The README's kustomize commands: `kubectl apply -f crds/` (again: idempotent), `kubectl wait -f crds/`,
    and what `kubectl delete -k deploy/` would delete (asked with a server-side dry run: other tests use deploy/)."""
    crds = str(CHART.parents[1] / "crds")
    kube.kubectl("apply", "-f", crds)
    kube.kubectl("wait", "--for=condition=Established", "-f", crds, "--timeout=60s")
    doomed = kube.kubectl("delete", "-k", str(CHART.parents[1] / "deploy"), "--dry-run=server", "-o", "name").stdout
    assert "clusterrole.rbac.authorization.k8s.io/certsync" in doomed, doomed  # the dry run does list what goes
    assert "customresourcedefinition" not in doomed, doomed
    overlay = kube.kubectl("kustomize", str(CHART.parents[1] / "deploy" / "overlays" / "single-namespace")).stdout
    assert "kind: Role\n" in overlay and "CustomResourceDefinition" not in overlay
