"""The typed status on a real API server: `kubectl explain` documents it, pruning keeps what the operator writes,
a forbidden Secret has its own reason, and a resource says Reconciling before its first remote call ends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from certsync.kube import Kube, KubeError
from certsync.reconcile import TLS_KEYS

from devkit.factory import issue
from devkit.kube import Kube as Cluster
from devkit.processes import EmulatorProcess, operator, operator_args, wait_for
from tests.e2e_fixtures import WINDOW
from tests.status_schema import problems, status_schema
from tests.test_e2e_deploymenttls import dtls, emqx_inputs

pytestmark = pytest.mark.e2e
EXPLAINED = [  # one field of each kind, and the conditions' shared shape
    ("deploymenttls.status.appliedDigest", "SHA-256 of the whole desired state last applied at target"),
    ("deploymenttls.status.intent.facts", "What a read-back compares with"),
    ("cdncertificate.status.seq", "The remote certificate's seq"),
    ("letsencryptorder.status.listBefore", "listed before the order"),
    ("letsencryptorder.status.conditions.reason", "Why, in one CamelCase word"),
]


@pytest.mark.parametrize(("field", "described"), EXPLAINED)
def test_kubectl_explain_prints_each_status_fields_description(kube: Cluster, field: str, described: str) -> None:
    """The API server publishes a CRD's schema to OpenAPI shortly after it is Established."""
    explained: list[str] = []

    def printed() -> bool:
        answer = kube.kubectl("explain", field, check=False)
        explained[:] = [answer.stdout + answer.stderr]
        return answer.returncode == 0 and described in " ".join(answer.stdout.split())

    wait_for(f"kubectl explain {field}", printed, timeout=60, every=1.0)
    assert "DESCRIPTION" in explained[0]


def test_the_api_server_prunes_exactly_what_the_schema_check_says(kube: Cluster, namespace: str) -> None:
    """The fake API server of the controller tests (tests/status_schema.py) agrees with the real one."""
    kube.apply(dtls("broker", "https://emqx.example/api"), namespace=namespace)
    status = {
        "appliedDigest": "d1", "target": "https://emqx.example/api|ge6a1a75", "writeTimes": [1767225600.125],
        "intent": {"op": "update", "target": "t", "digest": "d2", "at": "2026-03-01T12:00:00Z",
                   "facts": {"cn": "mqtt.example.com", "fromANewerOperator": {"kept": True}}},
        "kopf": {"progress": {"delete": {"retries": 2, "started": "2026-03-01T12:00:00Z"}}},
        "notDeclared": "pruned",
    }  # fmt: skip
    assert problems(status_schema("deploymenttlses"), status) == [
        "status.notDeclared: not declared in the CRD: the API server prunes it"
    ]
    kube.kubectl("patch", "deploymenttls", "broker", "-n", namespace, "--subresource=status", "--type=merge",
                 "-p", json.dumps({"status": status}))  # fmt: skip
    stored = kube.get("deploymenttls", "broker", namespace)["status"]
    assert stored == {k: v for k, v in status.items() if k != "notDeclared"}

    refused = {"pollAttempt": "three", "conditions": [{"type": "Ready", "status": "Maybe"}]}
    assert len(problems(status_schema("deploymenttlses"), refused)) == 5  # a type, an enum, three required
    answer = kube.kubectl("patch", "deploymenttls", "broker", "-n", namespace, "--subresource=status",
                          "--type=merge", "-p", json.dumps({"status": refused}), check=False)  # fmt: skip
    assert answer.returncode != 0 and "pollAttempt" in answer.stderr and "Maybe" in answer.stderr


async def test_a_secret_the_service_account_may_not_read_is_secret_forbidden(
    kube: Cluster, namespace: str, sa_kubeconfig: Any
) -> None:
    kube.apply(*emqx_inputs(issue("mqtt.example.com")), namespace=namespace)
    config = sa_kubeconfig("no-secrets", [{"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}])
    layer = Kube(kubernetes.config.new_client_from_config(config_file=str(config)))
    with pytest.raises(KubeError) as raised:
        await layer.read_secret(namespace, "mqtt-tls", TLS_KEYS)
    assert raised.value.reason == "SecretForbidden" and not raised.value.transient
    assert "ServiceAccount" in raised.value.message and namespace in raised.value.message


def test_a_resource_says_reconciling_before_its_first_remote_call_ends(
    kube: Cluster, namespace: str, operator_kubeconfig: Path, emqx_process: EmulatorProcess, tmp_path: Path
) -> None:
    """kstatus (Flux) reads a resource without conditions as Current: the operator says Reconciling first."""
    emqx_process.control("POST", "faults", {"kind": "latency", "seconds": 8, "method": "GET"})
    kube.apply(*emqx_inputs(issue("mqtt.example.com")), namespace=namespace)
    kube.apply(dtls("broker", emqx_process.url), namespace=namespace)
    with operator(operator_kubeconfig, tmp_path / "operator.log", *operator_args(namespace, emqx_process.url,
                                                                                   window=WINDOW)):  # fmt: skip
        wait_for("the first GET to reach the slow remote", lambda: emqx_process.control("GET", "calls")["inflight"] > 0)
        seen = kube.get("deploymenttls", "broker", namespace)["status"]
        answered = emqx_process.control("GET", "calls")["calls"]
        assert answered == [], "the remote already answered: the check came too late"
        by_type = {c["type"]: (c["status"], c["reason"]) for c in seen["conditions"]}
        assert by_type == {"Ready": ("Unknown", "Progressing"), "Reconciling": ("True", "Progressing"),
                           "Stalled": ("False", "Progressing")}  # fmt: skip
        assert seen["observedGeneration"] == kube.get("deploymenttls", "broker", namespace)["metadata"]["generation"]
        kube.kubectl("wait", "-n", namespace, "--for=condition=Ready", "deploymenttls/broker", "--timeout=90s")
