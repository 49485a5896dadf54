"""Issue 20 end to end (a real kube-apiserver, the EMQX emulator and the operator, each its own process): a
cert-manager renewal after the push deadline warns (condition, Event, metric), and a Serverless, a stopped and a
missing deployment each get their reason without a write."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes
import pytest
from certsync.kube import Kube as KubeLayer
from prometheus_client.parser import text_string_to_metric_families

from devkit.factory import issue
from devkit.kube import REPO, Kube
from devkit.processes import EmulatorProcess, emulator, operator, operator_args, wait_for
from tests.e2e_fixtures import KEY, SECRET, WINDOW
from tests.test_e2e_deploymenttls import creds_secret, dtls

pytestmark = pytest.mark.e2e

CRD = REPO / "tests" / "data" / "cert-manager-certificate-crd.yaml"
READER = REPO / "deploy" / "optional" / "cert-manager-reader"
DAY = dt.timedelta(days=1)


def stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def managed_secret(name: str, cert: Any, certificate: str) -> dict[str, Any]:
    """A TLS Secret as cert-manager writes it, annotated with its Certificate's name."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "annotations": {"cert-manager.io/certificate-name": certificate}},
            "data": {"tls.crt": base64.b64encode(cert.cert_pem).decode(),
                     "tls.key": base64.b64encode(cert.key_pem()).decode()}}  # fmt: skip


def condition(kube: Kube, namespace: str, name: str, kind: str) -> dict[str, Any]:
    conditions = kube.get("deploymenttls", name, namespace).get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == kind), {})


def push_deadline_metric(metrics_url: str, namespace: str, name: str) -> float | None:
    text = httpx.get(metrics_url + "/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "certsync_certificate_push_deadline_timestamp_seconds" and (
                labels.get("namespace"), labels.get("name")
            ) == (namespace, name):  # fmt: skip
                return float(sample.value)
    return None


@pytest.fixture(scope="module")
def certificate_crd(kube: Kube) -> Iterator[None]:
    """cert-manager's Certificate kind (a small CRD fixture), removed after this module's tests."""
    kube.kubectl("apply", "-f", str(CRD))
    kube.kubectl("wait", "--for=condition=Established", "-f", str(CRD), "--timeout=60s")
    try:
        yield
    finally:
        kube.kubectl("delete", "-f", str(CRD), "--timeout=60s", check=False)


@pytest.fixture
def cert_manager(kube: Kube, operator_kubeconfig: Path, certificate_crd: None) -> Iterator[None]:
    """The Certificate kind and the optional RBAC that lets the operator read it (deploy/optional/
    cert-manager-reader), the RBAC removed afterwards: later tests compare the operator's grants with deploy/'s."""
    kube.kubectl("apply", "-k", str(READER))
    try:
        yield
    finally:
        kube.kubectl("delete", "-k", str(READER), "--timeout=60s", check=False)


async def test_the_kube_layer_reads_a_certificate_or_says_unknown(
    kube: Kube, namespace: str, certificate_crd: None, sa_kubeconfig: Any
) -> None:
    """200: the object; 404 (no such Certificate, or no cert-manager) and 403 (no RBAC): None, never an error."""
    kube.apply({"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "mqtt"},
                "spec": {"secretName": "mqtt-tls"}}, namespace=namespace)  # fmt: skip
    admin = KubeLayer(kubernetes.config.new_client_from_config(config_file=str(kube.kubeconfig)))  # type: ignore[no-untyped-call]
    found = await admin.read_certificate(namespace, "mqtt")
    assert found is not None and found["spec"]["secretName"] == "mqtt-tls"
    assert await admin.read_certificate(namespace, "absent") is None
    without = sa_kubeconfig("no-cert-manager", [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}])
    refused = KubeLayer(kubernetes.config.new_client_from_config(config_file=str(without)))  # type: ignore[no-untyped-call]
    assert await refused.read_certificate(namespace, "mqtt") is None


def test_a_renewal_after_the_push_deadline_gets_the_warning_and_the_metric(
    kube: Kube, namespace: str, operator_kubeconfig: Path, emqx_process: EmulatorProcess, cert_manager: None,
    tmp_path: Path,
) -> None:  # fmt: skip
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - DAY
    cert = issue("mqtt.example.com", not_before=start, not_after=start + 90 * DAY)  # Let's Encrypt's 90 days
    not_after = start + 90 * DAY
    certificate = {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "mqtt"},
                   "spec": {"secretName": "mqtt-tls", "dnsNames": ["mqtt.example.com"],
                            "issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer"}}}  # fmt: skip
    kube.apply(certificate, namespace=namespace)
    renewal = {"status": {"renewalTime": stamp(not_after - 30 * DAY), "notAfter": stamp(not_after)}}
    kube.kubectl("patch", "certificate", "mqtt", "-n", namespace, "--subresource=status", "--type=merge",
                 "-p", json.dumps(renewal))  # fmt: skip
    kube.apply(creds_secret("emqx-creds", apiKey=KEY, apiSecret=SECRET), namespace=namespace)
    kube.apply(managed_secret("mqtt-tls", cert, "mqtt"), namespace=namespace)
    kube.apply(dtls("broker", emqx_process.url), namespace=namespace)
    with operator(operator_kubeconfig, tmp_path / "op.log",
                  *operator_args(namespace, emqx_process.url, window=WINDOW)) as running:  # fmt: skip
        kube.kubectl("wait", "-n", namespace, "--for=condition=Ready", "deploymenttls/broker", "--timeout=60s")
        kube.kubectl("wait", "-n", namespace, "--for=condition=PushDeadlineAtRisk", "deploymenttls/broker",
                     "--timeout=60s")  # fmt: skip
        deadline = not_after - 60 * DAY
        wait_for("the push deadline metric",
                 lambda: push_deadline_metric(running.metrics_url, namespace, "broker") == deadline.timestamp())  # fmt: skip
    at_risk = condition(kube, namespace, "broker", "PushDeadlineAtRisk")
    assert at_risk["reason"] == "RenewalAfterPushDeadline"
    assert "renewBefore: 1608h" in at_risk["message"] and "renewBeforePercentage: 75" in at_risk["message"]
    status = kube.get("deploymenttls", "broker", namespace)["status"]
    assert status["pushDeadline"] == stamp(deadline)
    assert status["renewal"]["renewalTime"] == stamp(not_after - 30 * DAY)
    assert condition(kube, namespace, "broker", "Ready")["status"] == "True", "the certificate itself was pushed"
    assert [w["method"] for w in emqx_process.writes()] == ["POST"]
    events = kube.kubectl("get", "events", "-n", namespace, "--field-selector",
                          "reason=RenewalAfterPushDeadline", "-o", "json").stdout  # fmt: skip
    assert '"type": "Warning"' in events and "renewBefore: 1608h" in events


@pytest.fixture
def emqx_kinds() -> Iterator[EmulatorProcess]:
    """The EMQX emulator with a Serverless and a stopped deployment beside a Dedicated running one."""
    with emulator("emqx", "--api-key", KEY, "--api-secret", SECRET, "--deployment", "ge6a1a75",
                  "--deployment", "srv1", "--deployment", "stop1", "--deployment-type", "srv1=serverless",
                  "--deployment-status", "stop1=stopped", "--pending-seconds", "2",
                  "--window-seconds", str(WINDOW)) as running:  # fmt: skip
        yield running


def test_serverless_stopped_and_missing_deployments_get_their_reason_with_zero_writes(
    kube: Kube, namespace: str, operator_kubeconfig: Path, emqx_kinds: EmulatorProcess, tmp_path: Path
) -> None:
    cert = issue("mqtt.example.com")
    kube.apply(creds_secret("emqx-creds", apiKey=KEY, apiSecret=SECRET), namespace=namespace)
    kube.apply({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": {"name": "mqtt-tls"},
                "data": {"tls.crt": base64.b64encode(cert.cert_pem).decode(),
                         "tls.key": base64.b64encode(cert.key_pem()).decode()}}, namespace=namespace)  # fmt: skip
    cases = {"serverless": ("srv1", "Stalled", "UnsupportedDeploymentType"),
             "stopped": ("stop1", "Reconciling", "DeploymentNotRunning"),
             "missing": ("nope", "Stalled", "RemoteNotFound")}  # fmt: skip
    kube.apply(*(dtls(name, emqx_kinds.url, deployment=d) for name, (d, _, _) in cases.items()), namespace=namespace)
    with operator(operator_kubeconfig, tmp_path / "op.log", *operator_args(namespace, emqx_kinds.url, window=WINDOW)):
        for name, (_, kind, reason) in cases.items():
            kube.kubectl("wait", "-n", namespace, f'--for=jsonpath={{.status.conditions[?(@.type=="{kind}")].reason}}'
                         f"={reason}", f"deploymenttls/{name}", "--timeout=60s")  # fmt: skip
        kube.kubectl("wait", "-n", namespace, "--for=condition=Stalled", "deploymenttls/serverless",
                     "deploymenttls/missing", "--timeout=10s")  # fmt: skip
        # the dedicated, running deployment of the same credentials is written: the checks blocked only theirs
        kube.apply(dtls("good", emqx_kinds.url), namespace=namespace)
        kube.kubectl("wait", "-n", namespace, "--for=condition=Ready", "deploymenttls/good", "--timeout=60s")
    calls = emqx_kinds.control("GET", "calls")["calls"]
    written = {c["path"].rsplit("/", 2)[-2] for c in emqx_kinds.writes()}
    assert written == {"ge6a1a75"}, "no write to the Serverless, stopped or missing deployment"
    for deployment in ("srv1", "stop1", "nope", "ge6a1a75"):
        reads = [c for c in calls if c["method"] == "GET" and c["path"].endswith(f"/deployments/{deployment}")]
        assert len(reads) == 1, (deployment, reads)
    for name, (_, _, reason) in cases.items():
        assert reason in condition(kube, namespace, name, "Ready")["reason"]
