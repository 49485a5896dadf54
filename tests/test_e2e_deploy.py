"""deploy/ as shipped: the ServiceAccount can do what the operator needs and nothing more; metrics tell the truth."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from certsync import pki

from devkit.factory import issue
from devkit.kube import Kube
from devkit.processes import EmulatorProcess, operator, operator_args
from tests.e2e_fixtures import SECRET
from tests.test_e2e_deploymenttls import dtls, emqx_inputs

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("list", "secrets", True),
        ("watch", "secrets", True),
        ("create", "secrets", False),
        ("update", "secrets", False),
        ("delete", "secrets", False),
        ("get", "configmaps", False),
        ("list", "pods", False),
        ("patch", "deploymenttlses.certsync.io", True),
        ("patch", "deploymenttlses.certsync.io/status", True),
        ("create", "deploymenttlses.certsync.io", False),
        ("delete", "cdncertificates.certsync.io", False),
        ("create", "events", True),
        ("delete", "events", False),
        ("list", "customresourcedefinitions.apiextensions.k8s.io", False),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", False),
        ("get", "deploymenttlses.certsync.io", False),  # nothing reads one by name
        ("get", "cdncertificates.certsync.io/status", False),
        ("update", "leases.coordination.k8s.io", False),  # leases only in its own namespace, below
        ("update", "leases.coordination.k8s.io@certsync-system", False),  # only its own Lease (test_e2e_rbac)
        ("create", "leases.coordination.k8s.io@certsync-system", True),
        ("delete", "leases.coordination.k8s.io@certsync-system", False),
        ("get", "secrets@certsync-system", True),
    ],
)
def test_service_account_is_least_privilege(
    kube: Kube, namespace: str, operator_kubeconfig: Path, verb: str, resource: str, allowed: bool
) -> None:
    resource, _, where = resource.partition("@")
    sub = resource.split("/", 1)
    args = ["auth", "can-i", verb, sub[0], "-n", where or namespace] + (
        ["--subresource", sub[1]] if len(sub) > 1 else []
    )
    answer = kube.kubectl(*args, kubeconfig=operator_kubeconfig, check=False).stdout.strip()
    assert answer == ("yes" if allowed else "no")


def metric(text: str, metric_name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(metric_name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{metric_name} {labels} not found")


def test_metrics_during_a_run(
    kube: Kube, namespace: str, operator_kubeconfig: Path, emqx_process: EmulatorProcess, tmp_path: Path
) -> None:
    cert = issue("metrics.example.com")
    kube.apply(
        *emqx_inputs(cert),
        namespace=namespace,
    )
    kube.apply(dtls("broker", emqx_process.url), namespace=namespace)
    with operator(
        operator_kubeconfig,
        tmp_path / "op.log",
        *operator_args(namespace, emqx_process.url),
    ) as running:
        kube.kubectl("wait", "-n", namespace, "--for=condition=Ready", "deploymenttls/broker", "--timeout=60s")
        assert httpx.get(running.metrics_url + "/healthz").status_code == 200
        text = httpx.get(running.metrics_url + "/metrics").text
    assert metric(text, "certsync_remote_requests_total", api="emqx", call="create_tls", code="200") == 1
    assert metric(text, "certsync_remote_requests_total", api="emqx", call="get_tls", code="404") == 1
    assert metric(text, "certsync_remote_request_duration_seconds_count", api="emqx", call="get_tls") >= 2
    assert metric(text, "certsync_budget_remaining", api="emqx", **{"class": "write"}) == 5
    ref = {"kind": "DeploymentTLS", "namespace": namespace, "name": "broker"}
    assert metric(text, "certsync_certificate_ready_status", condition="True", **ref) == 1
    assert metric(text, "certsync_certificate_ready_status", condition="False", **ref) == 0
    expected = pki.certificate_facts(cert.cert).not_after.timestamp()
    assert metric(text, "certsync_certificate_expiration_timestamp_seconds", **ref) == expected
    assert metric(text, "certsync_reconcile_total", kind="DeploymentTLS", result="ready") >= 1
    assert not re.search(re.escape(SECRET), text)
    events = [line for line in (tmp_path / "op.log").read_text().splitlines() if '"reason": "Synced"' in line]
    assert events and '"kind": "DeploymentTLS"' in events[0] and f'"namespace": "{namespace}"' in events[0]
