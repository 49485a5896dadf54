"""Two replicas: one leads through the Lease and writes once; when it stops, the other takes over."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devkit.factory import issue
from devkit.kube import Kube
from devkit.processes import EmulatorProcess, operator, operator_args
from tests.e2e_fixtures import WINDOW
from tests.test_e2e_deploymenttls import dtls, emqx_inputs, fingerprint, tls_secret

pytestmark = pytest.mark.e2e


def wait_for_line(path: Path, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{path.name} never said {text!r}"
        time.sleep(0.3)


def test_only_the_leader_acts_and_the_standby_takes_over(
    kube: Kube, namespace: str, operator_kubeconfig: Path, emqx_process: EmulatorProcess, tmp_path: Path
) -> None:
    cert = issue("mqtt.example.com")
    kube.apply(
        *emqx_inputs(cert),
        namespace=namespace,
    )
    args = [
        *operator_args(namespace, emqx_process.url, window=WINDOW),
    ]
    leader_log, standby_log = tmp_path / "leader.log", tmp_path / "standby.log"
    leader = operator(operator_kubeconfig, leader_log, *args)
    leader.__enter__()
    try:
        wait_for_line(leader_log, "acquired the lease")
        with operator(operator_kubeconfig, standby_log, *args):
            wait_for_line(standby_log, "standing by")
            kube.apply(dtls("broker", emqx_process.url), namespace=namespace)
            kube.kubectl("wait", "-n", namespace, "--for=condition=Ready", "deploymenttls/broker", "--timeout=60s")
            time.sleep(2)
            assert [w["method"] for w in emqx_process.writes()] == ["POST"]
            assert "acquired the lease" not in standby_log.read_text()

            # the leader stops and releases the lease: the standby takes over and pushes the next rotation
            leader.__exit__(None, None, None)
            wait_for_line(standby_log, "acquired the lease")
            rotated = issue("mqtt.example.com")
            kube.apply(tls_secret("mqtt-tls", rotated.cert_pem, rotated.key_pem()), namespace=namespace)
            kube.kubectl(
                "wait",
                "-n",
                namespace,
                "--for=jsonpath={.status.fingerprint}=" + fingerprint(rotated),
                "deploymenttls/broker",
                "--timeout=60s",
            )
            assert [w["method"] for w in emqx_process.writes()] == ["POST", "PUT"]
    finally:
        leader.__exit__(None, None, None)
