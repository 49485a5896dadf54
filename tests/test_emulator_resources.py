"""The CDN emulator's HTTP resources, configuration tasks and Let's Encrypt renewals, spoken to over the wire."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from devkit.factory import issue
from emulators import cdn as cdn_emulator
from emulators.cdnresources import CONFIG_LIMIT
from emulators.common import RunningEmulator, start
from tests.conftest import CDN_PASSWORD, CDN_USER, Emulator

BASE = "/cdn/api/v1/acct1"


@pytest.fixture
async def api(cdn: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    async with login(cdn.url) as http:
        yield http


def add_certificate(cdn: Emulator, cn: str = "www.shop.example") -> int:
    """A certificate in the account's SSL list (stored as the SSL API's add would; its checks are tested apart)."""
    leaf = issue(cn, sans=(cn,))
    return int(cdn.state.store(leaf.cert_pem.decode(), leaf.key_pem().decode(), "t", (leaf.cert,)))


async def task_status(api: httpx.AsyncClient, task_id: str) -> str:
    return str((await api.get("/cdn/api/v1/tasks", params={"id": task_id})).json()["status"])


async def test_a_patch_binds_the_certificate_once_its_task_completed(cdn: Emulator, api: httpx.AsyncClient) -> None:
    seq = add_certificate(cdn)
    before = (await api.get(f"{BASE}/resource/http/res1")).json()
    assert before["names"] == ["www.shop.example"] and "certificate" not in before
    answer = (await api.patch(f"{BASE}/resource/http/res1", json={"certificate": seq})).json()
    assert answer["status"] == "accept" and answer["task_id"]
    assert await task_status(api, answer["task_id"]) == "pending"
    assert "certificate" not in (await api.get(f"{BASE}/resource/http/res1")).json()  # not applied yet
    await cdn.control("POST", "clock", {"advance": 1.5})
    assert await task_status(api, answer["task_id"]) == "process"
    await cdn.control("POST", "clock", {"advance": 1.0})
    assert await task_status(api, answer["task_id"]) == "completed"
    after = (await api.get(f"{BASE}/resource/http/res1")).json()
    assert after["certificate"] == seq and after["names"] == before["names"]  # PATCH merges


async def test_a_put_replaces_the_whole_configuration(cdn: Emulator, api: httpx.AsyncClient) -> None:
    """A PUT holding only `certificate` wipes the rest: the mistake the operator must never make."""
    seq = add_certificate(cdn)
    answer = (await api.put(f"{BASE}/resource/http/res1", json={"certificate": seq})).json()
    await cdn.control("POST", "clock", {"advance": 3})
    assert await task_status(api, answer["task_id"]) == "completed"
    assert (await api.get(f"{BASE}/resource/http/res1")).json() == {"id": "res1", "certificate": seq}


@pytest.mark.parametrize(
    ("body", "status", "envelope"),
    [
        ({"certificate": None}, 400, None),  # null is never sent; refused without a body
        ({"certificate": "7"}, 400, None),
        ({"certificate": 999}, 200, "certificate not found"),
        ({"colour": "blue"}, 200, "unknown fields"),
        ({}, 400, None),
    ],
)
async def test_refusals(api: httpx.AsyncClient, body: dict[str, Any], status: int, envelope: str | None) -> None:
    answer = await api.patch(f"{BASE}/resource/http/res1", json=body)
    assert answer.status_code == status
    if envelope is None:
        assert answer.content == b""
    else:
        assert answer.json()["status"] == "error" and answer.json()["message"] == envelope


async def test_unknown_resources_tasks_and_tokens_get_bodiless_answers(api: httpx.AsyncClient) -> None:
    for answer in (await api.get(f"{BASE}/resource/http/nope"), await api.get("/cdn/api/v1/tasks?id=nope")):
        assert answer.status_code == 404 and answer.content == b""
    bare = await api.get(f"{BASE}/resource/http/res1", headers={"CDN-AUTH-TOKEN": "wrong"})
    assert bare.status_code == 401 and bare.content == b""
    assert (await api.get("/cdn/api/v1/other/resource/http/res1")).status_code == 404


async def test_a_failing_task_leaves_the_resource_as_it_was(cdn: Emulator, api: httpx.AsyncClient) -> None:
    seq = add_certificate(cdn)
    await cdn.control("POST", "resources", {"failTasks": 1})
    answer = (await api.patch(f"{BASE}/resource/http/res1", json={"certificate": seq})).json()
    await cdn.control("POST", "clock", {"advance": 3})
    task = (await api.get("/cdn/api/v1/tasks", params={"id": answer["task_id"]})).json()
    assert task["status"] == "error" and task["message"]
    assert "certificate" not in (await api.get(f"{BASE}/resource/http/res1")).json()


async def test_configuration_requests_are_limited_per_account(cdn: Emulator, api: httpx.AsyncClient) -> None:
    seq = add_certificate(cdn)
    answers = [await api.patch(f"{BASE}/resource/http/res1", json={"certificate": seq}) for _ in range(CONFIG_LIMIT)]
    assert all(a.status_code == 200 for a in answers)
    limited = await api.patch(f"{BASE}/resource/http/res1", json={"certificate": seq})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert (await api.get(f"{BASE}/resource/http/res1")).status_code == 200  # reads are not configuration


async def test_the_console_can_rebind_and_seed_resources(cdn: Emulator, api: httpx.AsyncClient) -> None:
    await cdn.control("POST", "resources", {"resources": {"res9": ["a.example", "b.example"]}, "rebind": {"res1": 5}})
    listed = {r["id"]: r for r in (await api.get(f"{BASE}/resource/http/")).json()}
    assert listed["res9"]["names"] == ["a.example", "b.example"] and listed["res1"]["certificate"] == 5


@pytest.fixture
async def started(cdn_config: cdn_emulator.CdnConfig) -> AsyncIterator[Callable[..., Awaitable[Emulator]]]:
    """Another emulator of the same account, started with other options (a dialect, auto-renewal)."""
    running: list[RunningEmulator] = []

    async def start_with(**options: Any) -> Emulator:
        state = cdn_emulator.CdnState(dataclasses.replace(cdn_config, **options))
        running.append(await start(cdn_emulator.build_app(state)))
        return Emulator(running[-1].url, state)

    yield start_with
    for emulator in running:
        await emulator.stop()


@contextlib.asynccontextmanager
async def login(url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url) as http:
        answer = await http.post("/app/oauth/v1/token/", data={"username": CDN_USER, "password": CDN_PASSWORD})
        http.headers["CDN-AUTH-TOKEN"] = answer.json()["token"]
        yield http


async def test_capitalised_task_states_are_a_dialect(started: Callable[..., Awaitable[Emulator]]) -> None:
    emulator = await started(dialects=frozenset({"capitalised-tasks"}))
    async with login(emulator.url) as api:
        seq = add_certificate(emulator)
        answer = (await api.patch(f"{BASE}/resource/http/res1", json={"certificate": seq})).json()
        assert await task_status(api, answer["task_id"]) == "Pending"


async def letsencrypt_seqs(api: httpx.AsyncClient) -> list[int]:
    """The list, with a new token: a clock moved by days has outlived the last one."""
    answer = await api.post("/app/oauth/v1/token/", data={"username": CDN_USER, "password": CDN_PASSWORD})
    api.headers["CDN-AUTH-TOKEN"] = answer.json()["token"]
    listed = (await api.get("/app/ssl/v1/account/acct1/certificate/")).json()["data"]
    return sorted(c["seq"] for c in listed if c["comment"] == cdn_emulator.LE_COMMENT)


async def test_the_cdn_renews_its_lets_encrypt_certificates_when_told_to(
    started: Callable[..., Awaitable[Emulator]],
) -> None:
    cdn = await started(le_auto_renew_days=30.0)
    async with login(cdn.url) as api:
        await api.post("/app/ssl/v1/account/acct1/letsencrypt/res1/")
        await cdn.control("POST", "clock", {"advance": 31})
        [first] = await letsencrypt_seqs(api)
        await cdn.control("POST", "clock", {"advance": 59 * 86400})  # 31 days before the 90-day certificate ends
        assert await letsencrypt_seqs(api) == [first]
        await cdn.control("POST", "clock", {"advance": 2 * 86400})
        renewed = await letsencrypt_seqs(api)
        assert len(renewed) == 2 and renewed[0] == first  # one newer certificate, once
        assert len(await letsencrypt_seqs(api)) == 2


async def test_without_auto_renew_the_cdn_never_renews(cdn: Emulator, api: httpx.AsyncClient) -> None:
    await api.post("/app/ssl/v1/account/acct1/letsencrypt/res1/")
    await cdn.control("POST", "clock", {"advance": 31})
    await cdn.control("POST", "clock", {"advance": 89 * 86400})
    assert len(await letsencrypt_seqs(api)) == 1
