"""The clients queue their calls in `RemoteSlots` (per remote target and overall) instead of piling onto the pool."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import httpx
from certsync import cdn, emqx
from certsync.budget import RateBudget, Window
from certsync.fairshare import NAMESPACE, RemoteSlots
from certsync.remote import NO_RETRY


class HeldServer:
    """A transport that holds every request until released, counting what is in flight per URL prefix."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answer = answer
        self.release = asyncio.Event()
        self.running: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.served = 0

    def target(self, request: httpx.Request) -> str:
        parts = request.url.path.strip("/").split("/")
        if "deployments" in parts:
            at = parts.index("deployments")
            return "/".join(parts[at : at + 2])
        return "/".join(parts[:5])

    async def handle(self, request: httpx.Request) -> httpx.Response:
        target = self.target(request)
        self.running[target] += 1
        self.running["all"] += 1
        for key in (target, "all"):
            self.peak[key] = max(self.peak[key], self.running[key])
        try:
            await self.release.wait()
        finally:
            self.running[target] -= 1
            self.running["all"] -= 1
        self.served += 1
        return self.answer(request)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)


async def until(what: str, check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def run_all(calls: list[Awaitable[object]]) -> list[object]:
    return list(await asyncio.gather(*calls, return_exceptions=True))


async def test_emqx_calls_queue_two_per_deployment_and_six_overall() -> None:
    server = HeldServer(lambda _: httpx.Response(200, json={"tlsType": "one-way", "status": "running"}))
    limits = RemoteSlots(per_scope=2, overall=6)
    big = Window(limit=1000, period=3600.0)
    client = emqx.EmqxClient(
        transport=server.transport(), concurrency=limits, read_window=big, retry=NO_RETRY, budget=RateBudget()
    )
    deployments = [f"dep{n}" for n in range(5)]
    accesses = {
        f"ns{n}": emqx.EmqxAccess("https://emqx.test/api", "key", "secret", f"ns{n}", "uid:1") for n in range(3)
    }
    for access in accesses.values():  # proven credentials: no quota of unproven ones serialises their calls
        for d in deployments:
            client.gate.prove(emqx.owner(access), client.scope(access, d, "GET")[0].target)

    async def in_namespace(namespace: str, deployment: str) -> object:
        NAMESPACE.set(namespace)  # a task's own context, as a pass's
        return await client.get_tls(accesses[namespace], deployment)

    # 20 calls over 5 deployments, from 3 namespaces (one namespace alone may hold only half the slots)
    calls = [in_namespace(f"ns{n % 3}", d) for d in deployments for n in range(4)]
    pending = asyncio.create_task(run_all(calls))
    await until("the first calls to reach the server", lambda: server.running["all"] == 6)
    assert limits.in_flight() == 6  # the other 14 wait in the queue, not in the HTTP pool
    assert max(limits.held(f"ns{n}") for n in range(3)) <= 3
    server.release.set()
    results = await pending
    await client.aclose()
    assert server.served == 20 and not [r for r in results if isinstance(r, BaseException)]
    assert server.peak["all"] == 6
    assert max(server.peak[f"deployments/{d}"] for d in deployments) == 2
    assert limits.in_flight() == 0


async def test_cdn_calls_of_one_account_queue_behind_a_single_login() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/app/oauth"):
            return httpx.Response(200, json={"token": "tok-1"})
        return httpx.Response(200, json={"status": 0, "message": "ok", "data": []})

    server = HeldServer(answer)
    limits = RemoteSlots(per_scope=2, overall=32)
    client = cdn.CdnClient(transport=server.transport(), concurrency=limits, retry=NO_RETRY, per_minute=1000)
    accounts = [cdn.CdnAccess("https://cdn.test", f"acct{n}", "user", "password-9q") for n in range(3)]
    calls = [client.list_certificates(a) for a in accounts for _ in range(10)]
    pending = asyncio.create_task(run_all(calls))
    await until("the login to reach the server", lambda: server.running["all"] == 1)
    assert server.running["app/oauth/v1/token"] == 1  # 30 callers, one login
    server.release.set()
    results = await pending
    await client.aclose()
    assert not [r for r in results if isinstance(r, BaseException)]
    assert server.served == 31  # one login and 30 lists
    assert max(server.peak[f"app/ssl/v1/account/{a.account}"] for a in accounts) <= 2
