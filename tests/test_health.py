"""Health endpoints, leadership settings, the replica header on remote calls, and deploy/'s availability parts."""

from __future__ import annotations

import asyncio
import contextvars
from pathlib import Path
from typing import Any

import pytest
import yaml
from certsync import cli, remote, settings
from certsync.emqx import EmqxAccess, EmqxClient, TLSNotConfigured
from certsync.leader import Elector, LeaseRecord, Timing
from certsync.metrics import Metrics

from tests.conftest import EMQX_KEY, EMQX_SECRET, Emulator
from tests.test_leader import FakeLeases, ManualClock, Store

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "base"


async def probe(metrics: Metrics, path: str) -> tuple[int, str]:
    from aiohttp.test_utils import TestClient, TestServer

    async with TestClient(TestServer(metrics.app())) as client:
        answer = await client.get(path)
        return answer.status, await answer.text()


async def test_probes_answer_what_the_operator_says() -> None:
    metrics = Metrics()
    assert await probe(metrics, "/readyz") == (503, "starting")
    metrics.liveness = lambda: (False, "the election loop is stuck")
    metrics.readiness = lambda: (True, "standby")
    assert await probe(metrics, "/livez") == (503, "the election loop is stuck")
    assert await probe(metrics, "/healthz") == (503, "the election loop is stuck")
    assert await probe(metrics, "/readyz") == (200, "standby")


def elector(clock: ManualClock) -> Elector:
    return Elector(FakeLeases(Store()), "me", Timing(15, 10, 2), clock=clock)


def test_readiness_says_leader_standby_or_why_not() -> None:
    clock = ManualClock()
    replica, kopf_ready = elector(clock), asyncio.Event()
    assert cli._readiness(replica, kopf_ready) == (True, "standby")
    replica.set_leading(True)
    assert cli._readiness(replica, kopf_ready) == (False, "leader, starting")
    kopf_ready.set()
    assert cli._readiness(replica, kopf_ready) == (True, "leader")
    clock.advance(replica.timing.stalled_after)
    assert cli._readiness(replica, kopf_ready) == (False, "the election loop is stuck")


async def test_a_lost_leadership_exits_at_once_and_releases_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store()
    replica = Elector(FakeLeases(store), "me", Timing(1.2, 0.6, 0.1))
    exits: list[int] = []

    class Exited(Exception):
        pass

    def exit_now(code: int) -> None:
        exits.append(code)
        raise Exited

    monkeypatch.setattr(cli, "_exit_now", exit_now)

    async def operator() -> None:
        store.save(LeaseRecord("intruder", 15, None, None, 1, store.record.resource_version if store.record else ""))
        await asyncio.Event().wait()

    with pytest.raises(Exited):
        await asyncio.wait_for(cli._lead(replica, operator, asyncio.Event()), timeout=5)
    assert exits == [1]
    assert store.record is not None and store.record.holder == "intruder"


async def test_a_clean_stop_releases_the_lease_after_the_operator_returned() -> None:
    store = Store()
    replica = Elector(FakeLeases(store), "me", Timing(1.2, 0.6, 0.1))
    seen: list[str] = []

    async def operator() -> None:
        await asyncio.sleep(0.3)  # renewals go on meanwhile
        seen.append(store.record.holder if store.record else "")

    assert await asyncio.wait_for(cli._lead(replica, operator, asyncio.Event()), timeout=5) == 0
    assert seen == ["me"]
    assert store.record is not None and store.record.holder == "" and not replica.leading


async def test_a_stop_while_standing_by_ends_without_touching_the_lease() -> None:
    store = Store()
    store.save(LeaseRecord("other", 15, None, None, 0))
    stop = asyncio.Event()
    stop.set()
    replica = Elector(FakeLeases(store), "me", Timing(15, 10, 2))

    async def operator() -> None:
        raise AssertionError("a standby never runs the operator")

    assert await asyncio.wait_for(cli._lead(replica, operator, stop), timeout=5) == 0
    assert store.record.holder == "other"  # type: ignore[union-attr]


def test_election_durations_are_settings_and_must_nest() -> None:
    loaded = settings.load(["--lease-duration", "6", "--renew-deadline", "4s", "--retry-period", "0.5"], environ={})
    assert (loaded.lease_duration, loaded.renew_deadline, loaded.retry_period) == (6.0, 4.0, 0.5)
    env = {"CERTSYNC_LEASE_DURATION": "30s", "CERTSYNC_RENEW_DEADLINE": "20s", "CERTSYNC_RETRY_PERIOD": "5s"}
    assert settings.load([], environ=env).renew_deadline == 20.0
    defaults = settings.load([], environ={})
    assert (defaults.lease_duration, defaults.renew_deadline, defaults.retry_period) == (15.0, 10.0, 2.0)
    for bad in (["--renew-deadline", "15s"], ["--retry-period", "10s"], ["--retry-period", "0"]):
        with pytest.raises(settings.SettingsError, match="RENEW_DEADLINE"):
            settings.load(bad, environ={})


async def test_every_remote_request_names_the_replica_and_is_sent_only_while_it_leads(emqx: Emulator) -> None:
    leads = [True]

    async def call() -> None:
        remote.REPLICA.set(remote.Replica("replica-a", lambda: leads[0]))
        async with EmqxClient(budget=emqx.budget(), retry=remote.NO_RETRY) as client:
            with pytest.raises(TLSNotConfigured):
                await client.get_tls(EmqxAccess(emqx.url, EMQX_KEY, EMQX_SECRET), "ge6a1a75")
            leads[0] = False
            with pytest.raises(remote.NotLeading):
                await client.get_tls(EmqxAccess(emqx.url, EMQX_KEY, EMQX_SECRET), "ge6a1a75")

    await asyncio.create_task(call(), context=contextvars.Context())
    calls = (await emqx.control("GET", "calls"))["calls"]
    assert [c["replica"] for c in calls] == ["replica-a"]  # the second call never left


def manifest(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / name).read_text())  # type: ignore[no-any-return]


def test_deploy_probes_disruption_budget_and_spread() -> None:
    pod = manifest("deployment.yaml")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # The kubelet restarts a stuck replica only after more than a lease duration of failures.
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > settings.Settings().lease_duration
    # A clean stop (kopf's shutdown, then the release) fits in the grace period.
    assert pod["terminationGracePeriodSeconds"] >= 2 * settings.Settings().renew_deadline
    spread = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert spread["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    budget = manifest("poddisruptionbudget.yaml")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"] == manifest("deployment.yaml")["spec"]["selector"]
    assert "poddisruptionbudget.yaml" in manifest("kustomization.yaml")["resources"]
