"""DeploymentTLS in process (emulator on loopback, fake Kubernetes layer): the deployment check before a write and
the push deadline with cert-manager's renewal time."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from certsync.controllers import deploymenttls
from certsync.controllers.base import Resource
from certsync.emqx import (
    DeploymentInfo,
    DeploymentNotFound,
    EmqxAccess,
    EmqxClient,
    EmqxForbidden,
    EmqxUnexpectedAnswer,
    owner,
)
from certsync.kube import KubeError
from certsync.reconcile import SecretView, deadlines
from certsync.reconcile import deploymenttls as rd

from devkit.factory import issue
from emulators import emqx as emqx_emulator
from tests.conftest import EMQX_KEY, EMQX_SECRET, Emulator
from tests.test_controllers import NS, FakeKube, World, calls, dtls_spec, world, writes  # noqa: F401  (the fixture)

SERVERLESS, STOPPED = "srv1", "stop1"
TLS, DEPLOYMENT = "/deployments/{deployment_id}/tls", "/deployments/{deployment_id}"
DAY = dt.timedelta(days=1)


@pytest.fixture
def emqx_config() -> emqx_emulator.EmqxConfig:
    return emqx_emulator.EmqxConfig(
        EMQX_KEY, EMQX_SECRET, ["ge6a1a75", "dep2", SERVERLESS, STOPPED], pending_seconds=30,
        deployment_types={SERVERLESS: "serverless"}, deployment_statuses={STOPPED: "stopped"},
    )  # fmt: skip


@dataclass
class CertKube(FakeKube):
    """The fake layer with cert-manager Certificates: an object, or the error the real layer would raise."""

    certificates: dict[tuple[str, str], Mapping[str, Any] | KubeError | None] = field(default_factory=dict)
    certificate_reads: list[str] = field(default_factory=list)

    async def read_certificate(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        self.certificate_reads.append(name)
        found = self.certificates.get((namespace, name))
        if isinstance(found, KubeError):
            raise found
        return found


@pytest.fixture
def w(world: World) -> World:  # noqa: F811  (the fixture imported above)
    return world


@pytest.fixture
def cw(w: World) -> Iterator[World]:
    """`world` with a layer that serves cert-manager Certificates."""
    kube = CertKube(secrets=w.kube.secrets)
    w.kube = w.rt.kube = kube
    yield w


def conditions(w: World, name: str) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in w.status(name)["conditions"]}


# --- deployment checks ----------------------------------------------------------------------------------------


async def test_a_first_write_reads_the_deployment_once_then_not_again_within_the_day(w: World, emqx: Emulator) -> None:
    w.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    await w.sync("deploymenttlses", "broker", dtls_spec(emqx))
    assert calls(emqx) == [f"GET {TLS}", f"GET {DEPLOYMENT}", f"POST {TLS}"]
    check = w.status("broker")["deploymentCheck"]
    assert (check["deploymentType"], check["status"]) == ("dedicated", "running") and len(check["owner"]) == 16
    await w.advance(3600)  # the remote applied it; the next rotation, an hour later: no second check
    await w.sync("deploymenttlses", "broker", dtls_spec(emqx))
    w.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    await w.sync("deploymenttlses", "broker", dtls_spec(emqx))
    assert calls(emqx).count(f"GET {DEPLOYMENT}") == 1 and writes(emqx) == ["POST", "PUT"]
    await w.advance(86400)  # a day later, the next write reads the deployment first
    w.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    await w.sync("deploymenttlses", "broker", dtls_spec(emqx))
    assert calls(emqx)[-3:] == [f"GET {TLS}", f"GET {DEPLOYMENT}", f"PUT {TLS}"]


async def test_a_restart_trusts_the_check_in_status_for_the_same_credentials_only(w: World, emqx: Emulator) -> None:
    w.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    await w.sync("deploymenttlses", "broker", dtls_spec(emqx, deploymentId=SERVERLESS))
    assert w.ready("broker") == ("False", "UnsupportedDeploymentType")
    before = len(calls(emqx))
    w.rt.emqx._checks.clear()  # a restart: the client's memory is gone, status keeps the check
    await w.sync("deploymenttlses", "broker", dtls_spec(emqx, deploymentId=SERVERLESS))
    assert len(calls(emqx)) == before and w.ready("broker") == ("False", "UnsupportedDeploymentType")
    w.kube.put("emqx-creds", apiKey=EMQX_KEY, apiSecret=EMQX_SECRET)  # another Secret version: its own check
    await w.sync("deploymenttlses", "broker", dtls_spec(emqx, deploymentId=SERVERLESS))
    assert calls(emqx)[before:] == [f"GET {TLS}", f"GET {DEPLOYMENT}"]
    assert writes(emqx) == []


@pytest.mark.parametrize(
    ("deployment", "ready", "reason", "said"),
    [
        (SERVERLESS, "False", "UnsupportedDeploymentType", "Serverless"),
        (STOPPED, "False", "DeploymentNotRunning", "stopped, not running"),
        ("nope", "False", "RemoteNotFound", "not found"),
    ],
)
async def test_a_deployment_that_cannot_take_tls_costs_no_write(
    w: World, emqx: Emulator, deployment: str, ready: str, reason: str, said: str
) -> None:
    w.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    delay = await w.sync("deploymenttlses", "broker", dtls_spec(emqx, deploymentId=deployment))
    assert writes(emqx) == [] and calls(emqx) == [f"GET {TLS}", f"GET {DEPLOYMENT}"]
    assert w.ready("broker") == (ready, reason)
    stalled = conditions(w, "broker")["Stalled"]["status"] == "True"
    assert stalled == (reason != "DeploymentNotRunning")
    assert said in conditions(w, "broker")["Ready"]["message"]
    assert delay is not None and delay > 0
    await w.sync("deploymenttlses", "broker", dtls_spec(emqx, deploymentId=deployment))
    assert len(calls(emqx)) == 2, "remembered: no call until the check is due again"


async def test_a_stopped_deployment_is_written_once_it_runs(w: World, emqx: Emulator) -> None:
    w.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    spec = dtls_spec(emqx, deploymentId=STOPPED)
    await w.sync("deploymenttlses", "broker", spec)
    assert w.ready("broker") == ("False", "DeploymentNotRunning")
    await emqx.control("POST", "deployments", {"statuses": {STOPPED: "starting"}})
    await w.advance(rd.NOT_RUNNING_RECHECK_S["stopped"])
    await w.sync("deploymenttlses", "broker", spec)  # read again, first: starting, still no write
    assert w.ready("broker") == ("False", "DeploymentNotRunning") and writes(emqx) == []
    assert calls(emqx)[2:] == [f"GET {DEPLOYMENT}"]
    await emqx.control("POST", "deployments", {"statuses": {STOPPED: "running"}})
    await w.advance(rd.NOT_RUNNING_RECHECK_S["starting"])
    await w.sync("deploymenttlses", "broker", spec)
    assert calls(emqx)[3:] == [f"GET {DEPLOYMENT}", f"GET {TLS}", f"POST {TLS}"] and writes(emqx) == ["POST"]


async def test_a_404_from_unproven_credentials_proves_nothing_and_is_theirs_alone(w: World, emqx: Emulator) -> None:
    w.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    w.kube.put("emqx-creds", namespace="team-b", apiKey=EMQX_KEY, apiSecret=EMQX_SECRET)
    w.kube.secrets[("team-b", "mqtt-tls")] = w.kube.secrets[(NS, "mqtt-tls")]
    await w.sync("deploymenttlses", "ghost", dtls_spec(emqx, deploymentId="nope"))
    assert w.ready("ghost") == ("False", "RemoteNotFound")
    target = f"{emqx.url}|nope"
    assert not w.rt.proofs.holds(("deploymenttlses", NS, "ghost"), target)
    access = w.rt.last_credentials[("deploymenttlses", NS, "ghost")]
    assert not w.rt.emqx.gate.is_proven(owner(access), f"emqx:{emqx.url}:nope")
    check = w.rt.emqx.deployment_checked(access, "nope")
    assert check is not None and not check.found
    other = dataclasses.replace(access, namespace="team-b", credentials_id="uid-team-b-emqx-creds:1")
    assert w.rt.emqx.deployment_checked(other, "nope") is None  # another owner's memory holds nothing of it


async def test_a_dedicated_answer_proves_the_credentials_for_the_deployment(w: World, emqx: Emulator) -> None:
    w.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    await w.sync("deploymenttlses", "broker", dtls_spec(emqx, deploymentId=STOPPED))  # TLS 404, deployment 200
    assert w.rt.proofs.holds(("deploymenttlses", NS, "broker"), f"{emqx.url}|{STOPPED}")


# --- push deadlines -------------------------------------------------------------------------------------------


def cert90() -> Any:
    """A 90-day certificate issued a day ago (Let's Encrypt's lifetime): its push deadline is 29 days away."""
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - DAY
    return issue("mqtt.example.com", not_before=start, not_after=start + 90 * DAY)


def put_managed(w: World, certificate: str, cert: Any, version: str = "7") -> None:
    """A TLS Secret as cert-manager writes it: annotated with its Certificate's name."""
    w.kube.secrets[(NS, "mqtt-tls")] = SecretView(
        "kubernetes.io/tls", {"tls.crt": cert.cert_pem, "tls.key": cert.key_pem()}, "uid-tls", version,
        certificate_name=certificate,
    )  # fmt: skip


def certificate(renewal: dt.datetime, secret: str = "mqtt-tls") -> dict[str, Any]:
    return {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "mqtt", "namespace": NS},
            "spec": {"secretName": secret}, "status": {"renewalTime": renewal.strftime("%Y-%m-%dT%H:%M:%SZ")}}  # fmt: skip


async def test_a_renewal_after_the_push_deadline_warns_once_and_says_what_works(cw: World, emqx: Emulator) -> None:
    kube: CertKube = cw.kube  # type: ignore[assignment]
    cert = cert90()
    not_after = cert.cert.not_valid_after_utc
    kube.certificates[(NS, "mqtt")] = certificate(not_after - 30 * DAY)  # cert-manager's default renewBefore
    put_managed(cw, "mqtt", cert)
    await cw.sync("deploymenttlses", "broker", dtls_spec(emqx))
    at_risk = conditions(cw, "broker")[deadlines.CONDITION]
    assert (at_risk["status"], at_risk["reason"]) == ("True", "RenewalAfterPushDeadline")
    assert "renewBefore: 1608h" in at_risk["message"] and "renewBeforePercentage: 75" in at_risk["message"]
    status = cw.status("broker")
    assert status["pushDeadline"] == (not_after - 60 * DAY).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert status["renewal"] == {"certificate": "mqtt", "secretVersion": "uid-tls:7",
                                 "renewalTime": (not_after - 30 * DAY).strftime("%Y-%m-%dT%H:%M:%SZ")}  # fmt: skip
    assert writes(emqx) == ["POST"], "the certificate is pushed all the same"
    metric = cw.rt.metrics.registry.get_sample_value(
        "certsync_certificate_push_deadline_timestamp_seconds",
        {"kind": "DeploymentTLS", "namespace": NS, "name": "broker"},
    )
    assert metric == (not_after - 60 * DAY).timestamp()
    await cw.advance(60)
    await cw.sync("deploymenttlses", "broker", dtls_spec(emqx))  # once per Secret version: no second read
    assert kube.certificate_reads == ["mqtt"] and cw.ready("broker") == ("True", "Synced")
    warnings = [m for name, reason, m in kube.events if reason == "RenewalAfterPushDeadline"]
    assert len(warnings) == 1
    # renewBefore fixed, cert-manager renews: the new Secret version is read again and the condition clears
    renewed = cert90()
    kube.certificates[(NS, "mqtt")] = certificate(renewed.cert.not_valid_after_utc - 67 * DAY)
    put_managed(cw, "mqtt", renewed, version="8")
    await cw.sync("deploymenttlses", "broker", dtls_spec(emqx))
    cleared = conditions(cw, "broker")[deadlines.CONDITION]
    assert (cleared["status"], cleared["reason"]) == ("False", "RenewalBeforePushDeadline")
    assert kube.certificate_reads == ["mqtt", "mqtt"]


@pytest.mark.parametrize("answer", [None, KubeError("InternalError", "reading Certificate: HTTP 503", transient=True)])
async def test_an_unreadable_certificate_means_unknown_and_never_fails_the_pass(
    cw: World, emqx: Emulator, answer: KubeError | None
) -> None:
    """403/404 (None): unknown, remembered for the Secret version; a transient failure: read again next time."""
    kube: CertKube = cw.kube  # type: ignore[assignment]
    kube.certificates[(NS, "mqtt")] = answer
    put_managed(cw, "mqtt", cert90())
    await cw.sync("deploymenttlses", "broker", dtls_spec(emqx))
    assert writes(emqx) == ["POST"] and deadlines.CONDITION not in conditions(cw, "broker")
    assert "renewalTime" not in cw.status("broker").get("renewal", {})
    await cw.sync("deploymenttlses", "broker", dtls_spec(emqx))
    assert len(kube.certificate_reads) == (1 if answer is None else 2)


async def test_a_certificate_that_writes_another_secret_is_not_believed(cw: World, emqx: Emulator) -> None:
    kube: CertKube = cw.kube  # type: ignore[assignment]
    cert = cert90()
    kube.certificates[(NS, "mqtt")] = certificate(cert.cert.not_valid_after_utc - 30 * DAY, secret="other-tls")
    put_managed(cw, "mqtt", cert)
    await cw.sync("deploymenttlses", "broker", dtls_spec(emqx))
    assert deadlines.CONDITION not in conditions(cw, "broker")


async def test_without_cert_manager_the_warning_comes_14_days_ahead(cw: World, emqx: Emulator) -> None:
    cw.kube.put_tls("mqtt-tls", cert90())
    await cw.sync("deploymenttlses", "broker", dtls_spec(emqx))
    await cw.advance(60)
    await cw.sync("deploymenttlses", "broker", dtls_spec(emqx))
    assert deadlines.CONDITION not in conditions(cw, "broker") and cw.status("broker")["pushDeadline"]
    assert cw.ready("broker") == ("True", "Synced")
    cw.offset += 16 * 86400  # the deadline (29 days off) is 13 days away; the emulator's clock need not move
    await cw.sync("deploymenttlses", "broker", {**dtls_spec(emqx), "driftCheckInterval": "1m"})
    near = conditions(cw, "broker")[deadlines.CONDITION]
    assert (near["status"], near["reason"]) == ("True", "PushDeadlineNear")
    assert cw.ready("broker") == ("True", "Synced"), "Ready says the certificate on the deployment is fine"
    assert [r for _, r, _ in cw.kube.events].count("PushDeadlineNear") == 1


# --- the client's deployment read -----------------------------------------------------------------------------


async def test_the_client_reads_a_deployments_type_and_status(emqx: Emulator) -> None:
    client = EmqxClient(budget=emqx.budget())
    access = EmqxAccess(emqx.url, EMQX_KEY, EMQX_SECRET, NS, "uid-creds:1")
    try:
        assert await client.get_deployment(access, "ge6a1a75") == DeploymentInfo("dedicated", "running")
        assert await client.get_deployment(access, SERVERLESS) == DeploymentInfo("serverless", "running")
        assert await client.get_deployment(access, STOPPED) == DeploymentInfo("dedicated", "stopped")
        with pytest.raises(DeploymentNotFound):
            await client.get_deployment(access, "nope")
        unscoped = EmqxAccess(emqx.url, "unscoped-key", "unscoped-secret", "team-b", "uid-other:1")
        with pytest.raises(EmqxForbidden):
            await client.get_deployment(unscoped, "ge6a1a75")
    finally:
        await client.aclose()
    assert calls(emqx) == [f"GET {DEPLOYMENT}"] * 5
    scope, window = client.scope(access, "ge6a1a75", "GET")
    assert client.gate.budget.remaining(scope, window) == window.limit - 1, "counted in the deployment's read window"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"deploymentType": "DedicatedFlex", "status": "Running"}, DeploymentInfo("dedicatedflex", "running")),
        ({"deploymentType": "serverless", "status": "starting"}, DeploymentInfo("serverless", "starting")),
        ({"deploymentType": "tiny", "status": "sleeping"}, DeploymentInfo("unknown", "unknown")),
        ({}, DeploymentInfo("unknown", "unknown")),
    ],
)
def test_deployment_answers_map_to_known_words(answer: dict[str, str], expected: DeploymentInfo) -> None:
    assert DeploymentInfo.from_json(answer) == expected


def test_a_deployment_answer_that_is_no_object_is_unavailable() -> None:
    with pytest.raises(EmqxUnexpectedAnswer) as refused:
        DeploymentInfo.from_json(["not", "an", "object"])
    assert refused.value.retryable


async def test_requested_at_looks_at_a_missing_deployment_again_at_once(w: World, emqx: Emulator) -> None:
    """A 404 may be a deployment just created: a person's request (certsync.io/requested-at) reads it again now,
    not after the recheck, and the write follows once it is there."""
    w.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    spec = dtls_spec(emqx, deploymentId="later")
    await w.sync("deploymenttlses", "broker", spec)
    assert w.ready("broker") == ("False", "RemoteNotFound") and writes(emqx) == []
    emqx.state.config.deployments.append("later")  # created meanwhile
    status = dict(w.kube.status.get("broker", {}))
    forced = Resource("deploymenttlses", NS, "broker", "uid-broker", 1, "2026-01-01T00:00:00Z", spec, status,
                      forced=True)  # fmt: skip
    await deploymenttls.sync(w.rt, forced)
    assert writes(emqx) == ["POST"], calls(emqx)
