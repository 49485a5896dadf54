"""charts/certsync/ on the local control plane: the rendered objects of the main value sets pass the API server's
validation (`kubectl apply --dry-run=server`), the schema refuses bad values at `helm install`, an upgrade of an
older release keeps (or, with --reset-then-reuse-values, takes) the new defaults, and an installed release runs the
operator to Ready, also behind a proxy with a private CA.

There is no kubelet: after `helm install`, the operator runs as a process with the token of the chart's
ServiceAccount and the environment of the chart's Deployment (expanded, and its remote CA volume projected, as
the kubelet would), so it has exactly the chart's RBAC and settings."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from devkit import controlplane
from devkit.factory import issue
from devkit.kube import Kube
from devkit.processes import EmulatorProcess, emulator, operator
from devkit.proxy import ConnectProxy
from devkit.release import CHART, find, helm
from tests.e2e_fixtures import KEY, SECRET, WINDOW
from tests.test_chart import ADDED_VALUES, EVERYTHING, make_older_chart
from tests.test_e2e_deploymenttls import dtls, emqx_inputs
from tests.test_e2e_proxy import EMQX_HOST, EMQX_URL, PrivateCA, port_of
from tests.test_monitoring import dashboard_expressions, metric_names

pytestmark = pytest.mark.e2e

# prometheus-operator's kinds, as schemaless CRDs: enough for the API server to accept a ServiceMonitor and a
# PrometheusRule on a cluster without prometheus-operator (their own schemas are not vendored here).
MONITORING_KINDS = [("ServiceMonitor", "servicemonitors"), ("PodMonitor", "podmonitors"),
                    ("PrometheusRule", "prometheusrules")]  # fmt: skip


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
        ["--set", "namespaces.mode=namespaces", "--set", "namespaces.list={NS}", "--set", "leaderElection.enabled=false",
         "--set", "replicas=1"],
        ["--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true",
         "--set", "metrics.dashboard.enabled=true", "--set", "replicas=3", "--set", "antiAffinity=hard",
         "--set", "image.digest=sha256:" + "0" * 64, "--set", "metrics.serviceMonitor.scrapeTimeout=10s"],
        # proxy, remote CA (a Secret), extra env, envFrom, volumes, affinity, spread, PodMonitor: all of them
        ["EVERYTHING"],
    ],
    ids=["defaults", "namespaces", "monitoring", "everything"],
)  # fmt: skip
def test_rendered_chart_is_accepted_by_the_api_server(
    kube: Kube, namespace: str, values: list[str], tmp_path: Path
) -> None:
    kube.apply(*(stub_crd(kind, plural) for kind, plural in MONITORING_KINDS))
    kube.kubectl("wait", "--for=condition=Established", *(f"crd/{plural}.monitoring.coreos.com" for _, plural in MONITORING_KINDS),
                 "--timeout=60s")  # fmt: skip
    if values == ["EVERYTHING"]:
        (tmp_path / "values.yaml").write_text(yaml.safe_dump(EVERYTHING))
        values = ["-f", str(tmp_path / "values.yaml")]
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


def release_deployment(kube: Kube, release: str, namespace: str) -> dict[str, Any]:
    manifest = helm("get", "manifest", release, "-n", namespace, kubeconfig=kube.kubeconfig).stdout
    [deployment] = find([d for d in yaml.safe_load_all(manifest) if d], "Deployment")
    return deployment


def release_env(kube: Kube, release: str, namespace: str) -> dict[str, str]:
    container = release_deployment(kube, release, namespace)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"]}


def test_helm_install_runs_the_operator_to_ready_and_uninstall_keeps_crds_and_resources(
    kube: Kube, namespace: str, emqx_process: EmulatorProcess, tmp_path: Path
) -> None:
    release, release_ns = "cs-e2e", f"{namespace}-op"
    # CRDs applied earlier with kubectl (the fixture did) are adopted by the release, as the chart README says.
    for crd in ("deploymenttlses", "cdncertificates", "letsencryptorders", "clusterremoteaccounts"):
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
    for crd in ("deploymenttlses", "cdncertificates", "letsencryptorders", "clusterremoteaccounts"):
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


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        (["--set", "leaderElection.enabled=false"], "replicas"),  # two replicas without the Lease: both would act
        (["--set", "settings.driftIntervall=1h"], "driftIntervall"),  # a typo of a setting
    ],
)
def test_helm_install_refuses_bad_values_before_creating_anything(
    kube: Kube, namespace: str, values: list[str], complaint: str
) -> None:
    refused = helm("install", "cs-refused", str(CHART), "--namespace", namespace, "--set", "crds.install=false",
                   *values, check=False, kubeconfig=kube.kubeconfig)  # fmt: skip
    assert refused.returncode != 0 and complaint in refused.stderr, refused.stderr
    assert "values don't meet the specifications of the schema" in refused.stderr, refused.stderr
    listed = json.loads(helm("list", "-n", namespace, "-a", "-o", "json", kubeconfig=kube.kubeconfig).stdout)
    assert listed == []
    assert kube.kubectl("get", "deployments,serviceaccounts", "-n", namespace, "-o", "name").stdout.strip() in (
        "",
        "serviceaccount/default",
    )


def test_upgrading_an_older_release_keeps_new_defaults_only_with_reset_then_reuse_values(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    """What the README recommends, measured: `--reuse-values` renders (the templates need none of the values added
    since) but keeps the old chart's defaults, so a new default never arrives; `--reset-then-reuse-values` brings the
    new chart's defaults and keeps what the user set at install."""
    older_chart = make_older_chart(tmp_path)
    release, user = "cs-upgrade", ["--set", "settings.allowedEndpoints=https://api.cdn.sber.cloud/"]
    common = ["--namespace", namespace, "--set", "crds.install=false"]
    helm("install", release, str(older_chart), *common, *user, kubeconfig=kube.kubeconfig)

    helm("upgrade", release, str(CHART), *common, "--reuse-values", kubeconfig=kube.kubeconfig)
    reused = release_env(kube, release, namespace)
    assert reused["CERTSYNC_ALLOWED_ENDPOINTS"] == "https://api.cdn.sber.cloud/"
    assert "CERTSYNC_LOG_LEVEL" not in reused  # the new default (settings.logLevel) did not arrive
    computed = json.loads(helm("get", "values", release, "-n", namespace, "--all", "-o", "json",
                               kubeconfig=kube.kubeconfig).stdout)  # fmt: skip
    assert not {path[0] for path in ADDED_VALUES if len(path) == 1} & set(computed)

    helm("upgrade", release, str(CHART), *common, "--reset-then-reuse-values", kubeconfig=kube.kubeconfig)
    reset = release_env(kube, release, namespace)
    assert reset["CERTSYNC_ALLOWED_ENDPOINTS"] == "https://api.cdn.sber.cloud/"  # the user's value kept
    assert reset["CERTSYNC_LOG_LEVEL"] == "info"  # and the new chart's default taken
    computed = json.loads(helm("get", "values", release, "-n", namespace, "--all", "-o", "json",
                               kubeconfig=kube.kubeconfig).stdout)  # fmt: skip
    assert {"proxy", "remoteCA", "extraEnv"} <= set(computed)
    helm("uninstall", release, "-n", namespace, kubeconfig=kube.kubeconfig)


def as_the_kubelet_would(kube: Kube, deployment: dict[str, Any], namespace: str, root: Path) -> dict[str, str]:
    """The container's environment as a kubelet makes it: $(KUBERNETES_SERVICE_HOST) expanded to the API server's
    host, and the remote CA volume projected from its ConfigMap into a folder that stands for the mount path."""
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    host = urlsplit(kube.server).hostname or ""
    env = {e["name"]: e["value"].replace("$(KUBERNETES_SERVICE_HOST)", host) for e in container["env"]}
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "remote-ca"]
    [volume] = [v for v in spec["volumes"] if v["name"] == "remote-ca"]
    assert mount["readOnly"] is True
    data = kube.get("configmap", volume["configMap"]["name"], namespace)["data"]
    folder = root / "remote-ca"
    folder.mkdir()
    for item in volume["configMap"]["items"]:
        (folder / item["path"]).write_text(data[item["key"]])
    assert env["CERTSYNC_REMOTE_CA_FILE"].startswith(mount["mountPath"] + "/")
    env["CERTSYNC_REMOTE_CA_FILE"] = str(folder / env["CERTSYNC_REMOTE_CA_FILE"].removeprefix(mount["mountPath"] + "/"))
    return env


def test_the_chart_behind_a_proxy_with_a_private_ca_runs_the_operator_to_ready(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    """proxy.httpsProxy and remoteCA as a platform team sets them: the EMQX emulator's name resolves nowhere, so it
    is reached only through the proxy, its TLS verified with the bundle of the ConfigMap; the API server is reached
    directly (a tunnel to it would be refused: no route). kopf and the Kubernetes client read no proxy variables
    today; the chart's NO_PROXY names the API server for any client that does (tests/test_chart.py checks how httpx,
    the remote clients' library, reads it)."""
    release, release_ns = "cs-proxy", f"{namespace}-op"
    private_ca = PrivateCA(tmp_path / "pki")  # tests/test_e2e_proxy.py's: a root and server certificates under it
    kube.kubectl("create", "namespace", release_ns)
    bundle = private_ca.bundle.read_text()
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "corp-ca", "namespace": release_ns},
                "data": {"ca.crt": bundle}})  # fmt: skip
    server_cert, server_key = private_ca.server(EMQX_HOST)
    with (
        emulator("emqx", "--api-key", KEY, "--api-secret", SECRET, "--deployment", "ge6a1a75",
                 "--pending-seconds", "1", "--window-seconds", str(WINDOW),
                 "--tls-cert", server_cert, "--tls-key", server_key) as emqx_tls,
        ConnectProxy({f"{EMQX_HOST}:443": ("127.0.0.1", port_of(emqx_tls.url))}) as proxy,
    ):  # fmt: skip
        helm("install", release, str(CHART), "--namespace", release_ns, "--set", "crds.install=false",
             "--set", f"settings.allowedEndpoints={EMQX_URL}/", "--set", "namespaces.mode=namespaces",
             "--set", f"namespaces.list={{{namespace}}}", "--set", f"settings.emqxBudgetWindow={WINDOW}",
             "--set", f"proxy.httpsProxy={proxy.url}", "--set", "remoteCA.name=corp-ca",
             "--set", "settings.logLevel=debug", kubeconfig=kube.kubeconfig)  # fmt: skip
        deployment = release_deployment(kube, release, release_ns)
        settings = as_the_kubelet_would(kube, deployment, release_ns, tmp_path)
        assert settings["HTTPS_PROXY"] == proxy.url
        settings |= {"HTTP_PROXY": "", "http_proxy": "", "ALL_PROXY": "", "all_proxy": ""}  # the test host's, if any
        cert = issue("proxied.example.com")
        kube.apply(*emqx_inputs(cert), namespace=namespace)
        kube.apply(dtls("broker", EMQX_URL), namespace=namespace)
        token = kube.kubectl("create", "token", f"{release}-certsync", "-n", release_ns, "--duration", "1h").stdout
        config = controlplane.kubeconfig(kube.server, kube.ca, {"token": token.strip()}, tmp_path / "sa.kubeconfig",
                                         release_ns)  # fmt: skip
        with operator(config, tmp_path / "op.log", settings=settings):
            kube.kubectl("wait", "-n", namespace, "--for=condition=Ready", "deploymenttls/broker", "--timeout=90s")
        assert proxy.seen() and set(proxy.seen()) == {f"{EMQX_HOST}:443"}, proxy.seen()  # never the API server
        assert not proxy.refused
    log = (tmp_path / "op.log").read_text()
    assert SECRET not in log and bundle.splitlines()[1] not in log
    helm("uninstall", release, "-n", release_ns, kubeconfig=kube.kubeconfig)
    kube.kubectl("delete", "namespace", release_ns, "--wait=false")
