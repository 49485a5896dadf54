"""DeploymentTLS end to end: a real kube-apiserver, the EMQX emulator and the operator, each its own process."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from devkit.factory import Issued, issue
from devkit.kube import Kube
from devkit.processes import EmulatorProcess, operator, operator_args, reconcile_passes, wait_for
from tests.e2e_fixtures import KEY, SECRET, WINDOW

pytestmark = pytest.mark.e2e


def tls_secret(name: str, cert: bytes, key: bytes) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": {"name": name},
            "data": {"tls.crt": base64.b64encode(cert).decode(), "tls.key": base64.b64encode(key).decode()}}  # fmt: skip


def creds_secret(name: str, **values: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": values}


def emqx_inputs(cert: Issued) -> list[dict[str, Any]]:
    """The two Secrets a DeploymentTLS of these tests reads: credentials and the certificate."""
    return [
        creds_secret("emqx-creds", apiKey=KEY, apiSecret=SECRET),
        tls_secret("mqtt-tls", cert.cert_pem, cert.key_pem()),
    ]


def dtls(name: str, endpoint: str, deployment: str = "ge6a1a75", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "certsync.io/v1alpha1", "kind": "DeploymentTLS", "metadata": {"name": name},
        "spec": {"endpoint": endpoint, "credentialsSecretRef": {"name": "emqx-creds"}, "deploymentId": deployment,
                 "tlsType": "one-way", "secretName": "mqtt-tls", **spec},
    }  # fmt: skip


def wait_ready(kube: Kube, namespace: str, name: str, condition: str = "Ready", timeout: str = "60s") -> None:
    kube.kubectl(
        "wait", "-n", namespace, f"--for=condition={condition}", f"deploymenttls/{name}", f"--timeout={timeout}"
    )


def ready_reason(kube: Kube, namespace: str, name: str) -> tuple[str, str]:
    status = kube.get("deploymenttls", name, namespace).get("status", {})
    ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
    return ready.get("status", ""), ready.get("reason", "")


def test_create_rotate_restart_and_budget(
    kube: Kube, namespace: str, operator_kubeconfig: Path, emqx_process: EmulatorProcess, tmp_path: Path
) -> None:
    first = issue("mqtt.example.com")
    kube.apply(
        *emqx_inputs(first),
        namespace=namespace,
    )
    kube.apply(dtls("broker", emqx_process.url), namespace=namespace)
    log = tmp_path / "operator.log"
    allow = [
        *operator_args(namespace, emqx_process.url, window=WINDOW),
    ]
    with operator(operator_kubeconfig, log, *allow):
        wait_ready(kube, namespace, "broker")
        writes = emqx_process.writes()
        assert [w["method"] for w in writes] == ["POST"]
        status = kube.get("deploymenttls", "broker", namespace)["status"]
        assert status["remoteStatus"] == "running" and status["tlsType"] == "one-way"
        assert len(status["writeTimes"]) == 1

        # rotate the Secret, as cert-manager would: exactly one more write
        second = issue("mqtt.example.com", key_kind="rsa")
        kube.apply(tls_secret("mqtt-tls", second.cert_pem, second.key_pem()), namespace=namespace)
        kube.kubectl(
            "wait",
            "-n",
            namespace,
            "--for=jsonpath={.status.fingerprint}=" + fingerprint(second),
            "deploymenttls/broker",
            "--timeout=60s",
        )
        wait_ready(kube, namespace, "broker")
        assert [w["method"] for w in emqx_process.writes()] == ["POST", "PUT"]

    # a restart with everything in sync: no write at all
    with operator(operator_kubeconfig, log, *allow) as running:
        wait_for("the first pass after the restart", lambda: reconcile_passes(running.metrics_url) >= 1)
        passes = reconcile_passes(running.metrics_url)
        kube.kubectl("annotate", "deploymenttls/broker", "-n", namespace, "certsync.io/requested-at=1", "--overwrite")
        wait_for("the forced pass", lambda: reconcile_passes(running.metrics_url) > passes)
        wait_ready(kube, namespace, "broker")
        assert [w["method"] for w in emqx_process.writes()] == ["POST", "PUT"]

        # four more rotations use the budget up (6 writes/hour); the next one is RateLimited, never a 429
        for n in range(5):
            nth = issue(f"mqtt{n}.example.com")
            kube.apply(tls_secret("mqtt-tls", nth.cert_pem, nth.key_pem()), namespace=namespace)
            if n < 4:
                kube.kubectl(
                    "wait",
                    "-n",
                    namespace,
                    "--for=jsonpath={.status.fingerprint}=" + fingerprint(nth),
                    "deploymenttls/broker",
                    "--timeout=60s",
                )
        kube.kubectl(
            "wait",
            "-n",
            namespace,
            '--for=jsonpath={.status.conditions[?(@.type=="Reconciling")].reason}=RateLimited',
            "deploymenttls/broker",
            "--timeout=60s",
        )
        calls = emqx_process.control("GET", "calls")["calls"]
        assert len(emqx_process.writes()) == 6 and all(c["status"] != 429 for c in calls)
        # when the window frees, the pending rotation is written: a 7th write, still no 429
        kube.kubectl(
            "wait",
            "-n",
            namespace,
            "--for=jsonpath={.status.fingerprint}=" + fingerprint(nth),
            "deploymenttls/broker",
            f"--timeout={WINDOW + 30}s",
        )
        calls = emqx_process.control("GET", "calls")["calls"]
        assert len(emqx_process.writes()) == 7 and all(c["status"] != 429 for c in calls)
    text = log.read_text()
    for secret in (SECRET, first.key_pem().decode().splitlines()[1], second.key_pem().decode().splitlines()[1]):
        assert secret not in text
    events = kube.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert SECRET not in events and "Created" in events


def fingerprint(cert: Any) -> str:
    from certsync import pki

    return pki.certificate_facts(cert.cert).sha256


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("malformed", "InvalidCertificate"),
        ("mismatch", "KeyMismatch"),
        ("expired", "CertificateExpired"),
        ("wrong-type", "InvalidSecret"),
        ("missing-secret", "SecretNotFound"),
        ("missing-key", "InvalidSecret"),
        ("wrong-credentials", "CredentialsInvalid"),
        ("forbidden", "Forbidden"),
        ("not-allowlisted", "EndpointNotAllowed"),
    ],
)
def test_bad_inputs_stall_with_their_reason_and_write_nothing(
    kube: Kube,
    namespace: str,
    operator_kubeconfig: Path,
    emqx_process: EmulatorProcess,
    tmp_path: Path,
    case: str,
    reason: str,
) -> None:
    import datetime as dt

    good = issue("mqtt.example.com")
    cert, key = good.cert_pem, good.key_pem()
    secret = tls_secret("mqtt-tls", cert, key)
    creds = creds_secret("emqx-creds", apiKey=KEY, apiSecret=SECRET)
    endpoint = emqx_process.url
    if case == "malformed":
        secret = tls_secret("mqtt-tls", b"not a pem", key)
    elif case == "mismatch":
        secret = tls_secret("mqtt-tls", cert, issue("other").key_pem())
    elif case == "expired":
        old = issue(
            "old.example.com",
            not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
            not_after=dt.datetime(2021, 1, 1, tzinfo=dt.UTC),
        )
        secret = tls_secret("mqtt-tls", old.cert_pem, old.key_pem())
    elif case == "wrong-type":
        secret = {**secret, "type": "Opaque"}
    elif case == "missing-key":
        secret["data"]["tls.key"] = ""  # the API server insists the key exists; it may be empty
    elif case == "wrong-credentials":
        creds = creds_secret("emqx-creds", apiKey=KEY, apiSecret="not-the-secret-41")
    elif case == "forbidden":
        creds = creds_secret("emqx-creds", apiKey="unscoped-key", apiSecret="unscoped-secret")
    elif case == "not-allowlisted":
        endpoint = "https://evil.example.com"
    documents = [creds] + ([] if case == "missing-secret" else [secret])
    kube.apply(*documents, namespace=namespace)
    kube.apply(dtls("broker", endpoint), namespace=namespace)
    with operator(
        kube.kubeconfig,
        tmp_path / "operator.log",
        *operator_args(namespace, emqx_process.url),
    ):
        kube.kubectl("wait", "-n", namespace, "--for=condition=Stalled", "deploymenttls/broker", "--timeout=60s")
    assert ready_reason(kube, namespace, "broker") == ("False", reason)
    assert emqx_process.writes() == []
    text = (tmp_path / "operator.log").read_text() + json.dumps(kube.get("deploymenttls", "broker", namespace))
    assert SECRET not in text and "not-the-secret-41" not in text and key.decode().splitlines()[1] not in text


def test_schema_refuses_two_way_without_ca(kube: Kube, namespace: str) -> None:
    refused = kube.apply(dtls("broker", "https://x.example", tlsType="two-way"), namespace=namespace, check=False)
    assert refused.returncode != 0 and "clientCA is required when tlsType is two-way" in refused.stderr


def test_delete_policy_removes_remote_tls_and_never_hangs(
    kube: Kube, namespace: str, operator_kubeconfig: Path, emqx_process: EmulatorProcess, tmp_path: Path
) -> None:
    cert = issue("mqtt.example.com")
    kube.apply(
        *emqx_inputs(cert),
        namespace=namespace,
    )
    kube.apply(
        dtls("broker", emqx_process.url, deletionPolicy="Delete"),
        dtls("keep", emqx_process.url, deployment="dep2"),
        namespace=namespace,
    )
    args = [
        *operator_args(namespace, emqx_process.url, window=WINDOW),
    ]
    with operator(operator_kubeconfig, tmp_path / "op.log", *args):
        kube.kubectl("wait", "-n", namespace, "--for=condition=Ready", "deploymenttls", "--all", "--timeout=60s")
        kube.kubectl("delete", "deploymenttls", "broker", "keep", "-n", namespace, "--timeout=60s")
        assert emqx_process.control("GET", "tls/ge6a1a75") == {"installed": False}
        assert emqx_process.control("GET", "tls/dep2")["installed"] is True  # Orphan: left alone

        # a remote that refuses (the key lost its scope): one try, a warning event, and the finalizer goes
        kube.apply(dtls("broker", emqx_process.url, deletionPolicy="Delete"), namespace=namespace)
        kube.kubectl("wait", "-n", namespace, "--for=condition=Ready", "deploymenttls/broker", "--timeout=60s")
        kube.apply(creds_secret("emqx-creds", apiKey="unscoped-key", apiSecret="unscoped-secret"), namespace=namespace)
        kube.kubectl("delete", "deploymenttls", "broker", "-n", namespace, "--timeout=60s")
    events = kube.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "reason=DeleteFailed", "-o", "json"
    ).stdout
    assert "gave up removing the remote certificate (refused)" in events


def test_suspend_stops_all_remote_calls_until_resumed(
    kube: Kube, namespace: str, operator_kubeconfig: Path, emqx_process: EmulatorProcess, tmp_path: Path
) -> None:
    kube.apply(*emqx_inputs(issue("mqtt.example.com")), namespace=namespace)
    kube.apply(dtls("broker", emqx_process.url, suspend=True), namespace=namespace)
    with operator(operator_kubeconfig, tmp_path / "op.log", *operator_args(namespace, emqx_process.url, window=WINDOW)):
        reason = '--for=jsonpath={.status.conditions[?(@.type=="Ready")].reason}=Suspended'
        kube.kubectl("wait", "-n", namespace, reason, "deploymenttls/broker", "--timeout=60s")
        assert ready_reason(kube, namespace, "broker") == ("False", "Suspended")
        assert emqx_process.counts() == {}
        kube.kubectl(
            "patch", "deploymenttls/broker", "-n", namespace, "--type=merge", "-p", '{"spec": {"suspend": false}}'
        )
        kube.kubectl("wait", "-n", namespace, "--for=condition=Ready", "deploymenttls/broker", "--timeout=60s")
    assert [w["method"] for w in emqx_process.writes()] == ["POST"]
