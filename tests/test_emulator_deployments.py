"""The EMQX emulator's deployment API (`GET /deployments[/{id}]`): type and status, read before a write is spent."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from emulators import emqx as emqx_emulator
from tests.conftest import EMQX_KEY, EMQX_SECRET, Emulator

GOOD, SERVERLESS, STOPPED = "ge6a1a75", "srv1", "dep2"


@pytest.fixture
def emqx_config() -> emqx_emulator.EmqxConfig:
    return emqx_emulator.EmqxConfig(
        EMQX_KEY, EMQX_SECRET, [GOOD, SERVERLESS, STOPPED], pending_seconds=30,
        deployment_types={SERVERLESS: "serverless"}, deployment_statuses={STOPPED: "stopped"}, read_limit=3,
    )  # fmt: skip


@pytest.fixture
async def api(emqx: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=emqx.url, auth=(EMQX_KEY, EMQX_SECRET)) as http:
        yield http


async def test_a_deployment_says_its_type_and_status(api: httpx.AsyncClient) -> None:
    good = (await api.get(f"/deployments/{GOOD}")).json()
    assert (good["deploymentID"], good["deploymentType"], good["status"]) == (GOOD, "dedicated", "running")
    assert (await api.get(f"/deployments/{SERVERLESS}")).json()["deploymentType"] == "serverless"
    assert (await api.get(f"/deployments/{STOPPED}")).json()["status"] == "stopped"


async def test_unknown_unauthorised_and_unscoped(emqx: Emulator, api: httpx.AsyncClient) -> None:
    assert (await api.get("/deployments/nope")).status_code == 404
    assert (await api.get(f"/deployments/{GOOD}", auth=("k", "wrong"))).status_code == 401
    unscoped = await api.get(f"/deployments/{GOOD}", auth=("unscoped-key", "unscoped-secret"))
    assert unscoped.status_code == 403
    assert (await api.get("/deployments", auth=("unscoped-key", "unscoped-secret"))).json() == []


async def test_deployment_reads_have_their_own_limit(api: httpx.AsyncClient) -> None:
    for _ in range(3):
        assert (await api.get(f"/deployments/{GOOD}")).status_code == 200
    limited = await api.get(f"/deployments/{GOOD}")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert (await api.get(f"/deployments/{GOOD}/tls")).status_code == 404  # the TLS API's reads are apart


@pytest.mark.parametrize(("deployment", "said"), [(SERVERLESS, "Serverless"), (STOPPED, "stopped")])
async def test_a_tls_write_to_a_deployment_that_cannot_take_it_is_refused(
    api: httpx.AsyncClient, deployment: str, said: str
) -> None:
    answer = await api.post(f"/deployments/{deployment}/tls", json={"tlsType": "one-way", "cert": "x", "key": "y"})
    assert answer.status_code == 422 and said in answer.json()["message"]


async def test_the_control_api_changes_a_deployment(emqx: Emulator, api: httpx.AsyncClient) -> None:
    await emqx.control("POST", "deployments", {"statuses": {GOOD: "starting"}})
    assert (await api.get(f"/deployments/{GOOD}")).json()["status"] == "starting"
    listed = {d["deploymentID"]: d["status"] for d in (await api.get("/deployments")).json()}
    assert listed == {GOOD: "starting", SERVERLESS: "running", STOPPED: "stopped"}


def test_unknown_types_and_statuses_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown deployment type or status"):
        emqx_emulator.EmqxConfig("k", "s", ["d"], deployment_types={"d": "tiny"})
