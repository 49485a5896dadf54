"""Two replicas on one Lease: only one acts, whatever happens to the API server or to the leader.

Every remote call carries the sending replica's identity (`X-Certsync-Replica`), which the emulator
records in its ordered call log: "one replica at a time" means that once a replica has made a call,
no call of an earlier one follows. Durations are short (settings), every wait has a deadline.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devkit.controlplane import ControlPlane
from devkit.factory import issue
from devkit.kube import Kube
from devkit.processes import EmulatorProcess, OperatorProcess, operator, operator_args
from tests.e2e_fixtures import WINDOW
from tests.test_e2e_deploymenttls import dtls, emqx_inputs, fingerprint, tls_secret

pytestmark = pytest.mark.e2e

LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 6.0, 4.0, 1.0
SLACK = 3.0  # process start, scheduling on a busy machine


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:g}s: {what}"
        time.sleep(interval)


@dataclass
class Replica:
    name: str
    log: Path
    running: OperatorProcess

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.running.process

    def probe(self, path: str) -> tuple[int, str] | None:
        """Status and body of a health endpoint; None when nothing answers."""
        try:
            answer = httpx.get(self.running.metrics_url + path, timeout=2)
        except httpx.TransportError:
            return None
        return answer.status_code, answer.text

    def role(self) -> str | None:
        answer = self.probe("/readyz")
        return answer[1] if answer else None

    def events(self) -> list[dict[str, str]]:
        text = self.log.read_text() if self.log.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def identity(self) -> str:
        for event in self.events():
            if event["message"].startswith("lease ") and ", replica " in event["message"]:
                return event["message"].rsplit(", replica ", 1)[1]
        raise AssertionError(f"{self.name} has not said its identity: {self.log.read_text()[-2000:]}")

    def logged_at(self, text: str) -> float:
        for event in self.events():
            if text in event["message"]:
                return dt.datetime.fromisoformat(event["time"]).timestamp()
        raise AssertionError(f"{self.name} never said {text!r}")

    def exited(self) -> bool:
        return self.process.poll() is not None


class Replicas:
    """Operator processes sharing one Lease (unique per test), with the deploy/ ServiceAccount."""

    def __init__(self, stack: ExitStack, kubeconfig: Path, tmp_path: Path, namespace: str, emulator_url: str) -> None:
        self.stack, self.kubeconfig, self.tmp_path = stack, kubeconfig, tmp_path
        self.args = [
            *operator_args(namespace, emulator_url, window=WINDOW),
            "--lease-name", f"leader-{namespace}",
            "--lease-duration", str(LEASE_DURATION),
            "--renew-deadline", str(RENEW_DEADLINE),
            "--retry-period", str(RETRY_PERIOD),
            "--debug-election-signals", "true",
        ]  # fmt: skip

    def start(self, name: str, role: str) -> Replica:
        log = self.tmp_path / f"{name}.log"
        replica = Replica(name, log, self.stack.enter_context(operator(self.kubeconfig, log, *self.args)))
        wait_until(lambda: replica.role() == role, 30 + LEASE_DURATION, f"{name} is {role}")
        return replica


@pytest.fixture
def replicas(
    kube: Kube, operator_kubeconfig: Path, tmp_path: Path, namespace: str, emqx_process: EmulatorProcess
) -> Iterator[Replicas]:
    """deploy/ grants the operator its own Lease only (`certsync-leader`): each test here uses a Lease of its own,
    so that a leader it kills holds no other test's Lease; a Role for that Lease lives as long as the test."""
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": f"lease-{namespace}", "namespace": "certsync-system"},
            "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                       "resourceNames": [f"leader-{namespace}"], "verbs": ["get", "update"]}]}  # fmt: skip
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": f"lease-{namespace}", "namespace": "certsync-system"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"lease-{namespace}"},
               "subjects": [{"kind": "ServiceAccount", "name": "certsync", "namespace": "certsync-system"}]}  # fmt: skip
    kube.apply(role, binding)
    try:
        with ExitStack() as stack:
            yield Replicas(stack, operator_kubeconfig, tmp_path, namespace, emqx_process.url)
    finally:
        kube.kubectl("delete", "-n", "certsync-system", "rolebinding,role", f"lease-{namespace}", check=False)


def plane_of(kube: Kube) -> ControlPlane:
    assert kube.plane is not None
    return kube.plane


def assert_one_replica_at_a_time(emulator: EmulatorProcess, *known: Replica) -> list[str]:
    """Every call names a known replica, and no replica calls again once another has called."""
    calls = emulator.control("GET", "calls")["calls"]
    names = {r.identity(): r.name for r in known}
    senders = [names.get(c["replica"], c["replica"] or "?") for c in calls]
    assert set(senders) <= set(names.values()), senders
    turns = [name for name, _ in itertools.groupby(senders)]
    assert len(turns) == len(set(turns)), f"replicas took turns more than once: {turns}"
    return turns


def rotate_and_wait(kube: Kube, namespace: str) -> None:
    rotated = issue("mqtt.example.com")
    kube.apply(tls_secret("mqtt-tls", rotated.cert_pem, rotated.key_pem()), namespace=namespace)
    kube.kubectl("wait", "-n", namespace, "--for=jsonpath={.status.fingerprint}=" + fingerprint(rotated),
                 "deploymenttls/broker", "--timeout=60s")  # fmt: skip


def start_two_and_sync(
    kube: Kube, namespace: str, replicas: Replicas, emulator: EmulatorProcess
) -> tuple[Replica, Replica]:
    kube.apply(*emqx_inputs(issue("mqtt.example.com")), namespace=namespace)
    a = replicas.start("a", "leader")
    b = replicas.start("b", "standby")
    kube.apply(dtls("broker", emulator.url), namespace=namespace)
    kube.kubectl("wait", "-n", namespace, "--for=condition=Ready", "deploymenttls/broker", "--timeout=60s")
    assert [(w["method"], w["replica"]) for w in emulator.writes()] == [("POST", a.identity())]
    return a, b


@contextmanager
def api_server_paused(plane: ControlPlane) -> Iterator[None]:
    plane.pause_apiserver()
    try:
        yield
    finally:
        plane.resume_apiserver()


def test_sigstop_of_the_api_server_never_lets_two_replicas_act(
    kube: Kube, namespace: str, replicas: Replicas, emqx_process: EmulatorProcess
) -> None:
    a, b = start_two_and_sync(kube, namespace, replicas, emqx_process)
    with api_server_paused(plane_of(kube)):
        paused = time.monotonic()
        # The leader cannot renew: it stops acting (exits) by its renew deadline, the standby waits.
        wait_until(a.exited, RENEW_DEADLINE + SLACK, "the leader exits")
        assert a.process.returncode == 1
        assert time.monotonic() - paused > RENEW_DEADLINE - RETRY_PERIOD - 1  # not before it had to
        assert not b.exited() and b.probe("/livez") == (200, "ok")
    wait_until(lambda: b.role() == "leader", LEASE_DURATION + 2 * RETRY_PERIOD + SLACK + 10, "the standby leads")
    rotate_and_wait(kube, namespace)
    assert [(w["method"], w["replica"]) for w in emqx_process.writes()] == [
        ("POST", a.identity()),
        ("PUT", b.identity()),
    ]
    assert assert_one_replica_at_a_time(emqx_process, a, b) == ["a", "b"]


@pytest.mark.parametrize("down_seconds", [0.0, 30.0], ids=["restarted-at-once", "unreachable-30s"])
def test_a_killed_api_server_never_lets_two_replicas_act_and_the_standby_survives(
    kube: Kube, namespace: str, replicas: Replicas, emqx_process: EmulatorProcess, down_seconds: float
) -> None:
    a, b = start_two_and_sync(kube, namespace, replicas, emqx_process)
    plane = plane_of(kube)
    plane.kill_apiserver()
    try:
        killed = time.monotonic()
        while time.monotonic() - killed < down_seconds:  # the standby lives on, and says it is healthy
            assert not b.exited(), b.log.read_text()[-2000:]
            assert b.probe("/livez") == (200, "ok")
            assert b.probe("/readyz") == (200, "standby")
            if time.monotonic() - killed > RENEW_DEADLINE + SLACK:
                assert a.exited() and a.process.returncode == 1  # the leader stopped acting
            time.sleep(1)
    finally:
        plane.start_apiserver()
    wait_until(lambda: "leader" in (a.role(), b.role()), LEASE_DURATION + 2 * RETRY_PERIOD + SLACK + 10, "a leader")
    assert not b.exited() and "Traceback" not in b.log.read_text()
    rotate_and_wait(kube, namespace)
    writes = [w["method"] for w in emqx_process.writes()]
    assert writes == ["POST", "PUT"]  # each certificate written once
    assert_one_replica_at_a_time(emqx_process, a, b)


def test_a_leader_killed_with_sigkill_is_replaced_within_the_lease_duration(
    kube: Kube, namespace: str, replicas: Replicas, emqx_process: EmulatorProcess
) -> None:
    a, b = start_two_and_sync(kube, namespace, replicas, emqx_process)
    a.process.send_signal(signal.SIGKILL)
    killed = time.time()
    a.process.wait()
    wait_until(lambda: b.role() == "leader", LEASE_DURATION + 2 * RETRY_PERIOD + SLACK + 10, "the standby leads")
    # The standby sees the last renewal up to a retry period late, then looks once per retry period.
    assert b.logged_at("acquired the lease") - killed <= LEASE_DURATION + 2 * RETRY_PERIOD + 1.0
    rotate_and_wait(kube, namespace)
    assert [(w["method"], w["replica"]) for w in emqx_process.writes()] == [
        ("POST", a.identity()),
        ("PUT", b.identity()),
    ]
    assert assert_one_replica_at_a_time(emqx_process, a, b) == ["a", "b"]


def test_a_write_answered_before_the_leader_died_is_not_written_again(
    kube: Kube, namespace: str, replicas: Replicas, emqx_process: EmulatorProcess
) -> None:
    kube.apply(*emqx_inputs(issue("mqtt.example.com")), namespace=namespace)
    a = replicas.start("a", "leader")
    b = replicas.start("b", "standby")
    # The leader's reads (the TLS, then the deployment) and its write each take 2 s at the remote; the API server
    # stops answering while the write is in flight, so the leader cannot record its outcome; it dies once the
    # remote has answered. The new leader finds the intent without an outcome (write-ahead record) and reads the
    # remote instead.
    emqx_process.control("POST", "faults", {"kind": "latency", "seconds": 2, "count": 3})
    kube.apply(dtls("broker", emqx_process.url), namespace=namespace)
    wait_until(lambda: len(emqx_process.control("GET", "calls")["calls"]) >= 2, 60,
               "the leader's reads: the TLS, then the deployment", 0.02)  # fmt: skip
    wait_until(lambda: emqx_process.control("GET", "calls")["inflight"], 10, "the leader's write in flight", 0.02)
    with api_server_paused(plane_of(kube)):
        wait_until(lambda: emqx_process.writes(), 10, "the write answered", 0.02)
        a.process.send_signal(signal.SIGKILL)
        a.process.wait()
    wait_until(lambda: b.role() == "leader", LEASE_DURATION + 2 * RETRY_PERIOD + SLACK + 10, "the standby leads")
    kube.kubectl("wait", "-n", namespace, "--for=condition=Ready", "deploymenttls/broker", "--timeout=60s")
    assert [(w["method"], w["replica"]) for w in emqx_process.writes()] == [("POST", a.identity())]
    assert_one_replica_at_a_time(emqx_process, a, b)


def test_health_endpoints_tell_leader_standby_and_dead_loops_apart(
    kube: Kube, namespace: str, replicas: Replicas, emqx_process: EmulatorProcess
) -> None:
    kube.apply(*emqx_inputs(issue("mqtt.example.com")), namespace=namespace)
    a = replicas.start("a", "leader")
    b = replicas.start("b", "standby")
    assert a.probe("/livez") == (200, "ok") and a.probe("/healthz") == (200, "ok")
    assert b.probe("/livez") == (200, "ok")
    assert leader_metric(a) == 1 and leader_metric(b) == 0

    # A standby whose election loop is stuck: not alive (the kubelet restarts it), not ready; still running.
    b.process.send_signal(signal.SIGUSR1)
    wait_until(lambda: b.probe("/livez") == (503, "the election loop is stuck"),
               RENEW_DEADLINE + 2 * RETRY_PERIOD + SLACK, "the stuck standby fails /livez")  # fmt: skip
    assert b.probe("/readyz") == (503, "the election loop is stuck") and not b.exited()

    # A leader whose renewal loop is stuck stops acting by its renew deadline (the watchdog does not
    # depend on that loop); a new replica takes over.
    a.process.send_signal(signal.SIGUSR1)
    wait_until(a.exited, RENEW_DEADLINE + SLACK, "the stuck leader exits")
    assert a.process.returncode == 1
    c = replicas.start("c", "leader")
    assert leader_metric(c) == 1

    # A renewal loop that dies stops the leader at once, not at the deadline.
    c.process.send_signal(signal.SIGUSR2)
    wait_until(c.exited, SLACK, "the leader whose renewal loop died exits")
    assert c.process.returncode == 1 and c.probe("/livez") is None


def leader_metric(replica: Replica) -> float:
    text = httpx.get(replica.running.metrics_url + "/metrics", timeout=5).text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith("certsync_leader ")))


def test_a_clean_stop_hands_over_at_once(
    kube: Kube, namespace: str, replicas: Replicas, emqx_process: EmulatorProcess
) -> None:
    a, b = start_two_and_sync(kube, namespace, replicas, emqx_process)
    a.process.terminate()  # SIGTERM: kopf stops, then the Lease is released
    assert a.process.wait(timeout=30) == 0
    stopped = time.time()
    wait_until(lambda: b.role() == "leader", LEASE_DURATION, "the standby leads")
    assert b.logged_at("acquired the lease") - stopped < RETRY_PERIOD + 1  # released: no lease duration to wait
    rotate_and_wait(kube, namespace)
    assert [w["method"] for w in emqx_process.writes()] == ["POST", "PUT"]
    assert assert_one_replica_at_a_time(emqx_process, a, b) == ["a", "b"]


def test_an_rsa_16384_leaf_is_refused_at_once_while_the_leader_keeps_its_lease(
    kube: Kube, namespace: str, replicas: Replicas, emqx_process: EmulatorProcess
) -> None:
    """Checking such a key would take tens of seconds: on the event loop the leader missed its renew deadline,
    exited, and the standby loaded the same Secret. Its size is refused from the certificate, off the loop."""
    a, b = start_two_and_sync(kube, namespace, replicas, emqx_process)
    data = Path(__file__).resolve().parent / "data"
    huge = tls_secret("huge-tls", (data / "rsa16384.crt").read_bytes(), (data / "rsa16384.key").read_bytes())
    kube.apply(huge, namespace=namespace)
    kube.apply(dtls("huge", emqx_process.url, deployment="hugedep", secretName="huge-tls"), namespace=namespace)

    def ready() -> dict[str, str]:
        status = kube.get("deploymenttls", "huge", namespace).get("status") or {}
        return next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})

    wait_until(lambda: ready().get("reason") == "KeyTypeUnsupported", 30, "the huge key is refused")
    created = kube.get("deploymenttls", "huge", namespace)["metadata"]["creationTimestamp"]
    refused = dt.datetime.fromisoformat(ready()["lastTransitionTime"]) - dt.datetime.fromisoformat(created)
    assert refused <= dt.timedelta(seconds=2), refused  # timestamps are whole seconds: within a second, plus one

    def lease() -> dict[str, str]:
        return kube.get("lease", f"leader-{namespace}", "certsync-system")["spec"]  # type: ignore[no-any-return]

    first = dt.datetime.fromisoformat(lease()["renewTime"])
    # The leader goes on renewing (every RETRY_PERIOD) past a renew deadline after the refusal, and stays leader.
    wait_until(
        lambda: dt.datetime.fromisoformat(lease()["renewTime"]) > first + dt.timedelta(seconds=RENEW_DEADLINE),
        RENEW_DEADLINE + 2 * RETRY_PERIOD + SLACK + 5, "the leader renews its Lease past a renew deadline",
    )  # fmt: skip
    assert lease()["holderIdentity"] == a.identity() and not a.exited() and a.role() == "leader"
    assert b.role() == "standby"
    assert [w["method"] for w in emqx_process.writes()] == ["POST"]  # the broker's only; nothing for the huge key
