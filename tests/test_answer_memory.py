"""The memory all answers being read may hold together: bounded per namespace and overall, not per call only.

The byte cap bounds one answer; without `AnswerMemory`, one namespace's calls in flight (half the remote slots)
could hold slots x cap at once (measured end to end: 16 streamed 48 MiB answers took the operator from 106 to
183 MB). These tests read real streamed answers from a loopback server through `remote.send`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from aiohttp import web
from certsync import emqx, fairshare, remote
from certsync.remote import AnswerMemory, AnswerRefused

CAP = 256 * 1024
FREE = 16 * 1024


def test_borrowing_is_bounded_per_namespace_and_overall_and_given_back() -> None:
    memory = AnswerMemory(CAP, free=FREE, caps=2)
    assert (memory.free, memory.per_namespace, memory.overall) == (FREE, CAP, 2 * CAP)
    assert memory.take("tenant-a", CAP) is None
    refused = memory.take("tenant-a", 1)
    assert refused is not None and "this namespace's" in refused
    assert memory.take("tenant-b", CAP) is None  # another namespace has its own allowance
    refused = memory.take("tenant-c", 1)  # ... until all of them together hold the overall bound
    assert refused is not None and "this namespace" not in refused
    memory.give("tenant-a", CAP)
    assert memory.held_by("tenant-a") == 0 and memory.held == CAP
    assert memory.take("tenant-c", 1) is None and memory.take(None, CAP - 1) is None  # no namespace: overall only
    refused = memory.take(None, 1)
    assert refused is not None and not any(f"tenant-{n}" in refused for n in "abc")  # no tenant is named
    memory.give("tenant-c", 1)
    memory.give(None, CAP - 1)
    memory.give("tenant-b", CAP)
    assert memory.held == 0 and memory.held_by("tenant-b") == 0


def test_the_free_part_is_never_more_than_the_cap() -> None:
    assert AnswerMemory(8 * 1024).free == 8 * 1024


def test_clients_with_the_same_cap_share_one_memory() -> None:
    first, second = emqx.EmqxClient(max_answer_bytes=CAP), emqx.EmqxClient(max_answer_bytes=CAP)
    other = emqx.EmqxClient(max_answer_bytes=2 * CAP)
    assert first.answer_memory is second.answer_memory is remote.shared_answer_memory(CAP)
    assert other.answer_memory is not first.answer_memory


@pytest.fixture
async def server() -> AsyncIterator[Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def serve(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield serve
    for runner in runners:
        await runner.cleanup()


async def until(done: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not done():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def send_as(namespace: str | None, url: str, memory: AnswerMemory, http: httpx.AsyncClient) -> httpx.Response:
    token = fairshare.NAMESPACE.set(namespace)
    try:
        return await remote.send(http, http.build_request("GET", url), "emqx", "get_tls", max_bytes=CAP, memory=memory)
    finally:
        fairshare.NAMESPACE.reset(token)


async def test_answers_read_at_once_are_refused_past_the_namespace_allowance_and_others_still_read(
    server: Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[str]],
) -> None:
    """Two answers of a namespace that together pass its allowance: the second is refused, while a third of
    another namespace reads whole; afterwards nothing is held, and the refused namespace reads again."""
    started, go = asyncio.Event(), asyncio.Event()
    body = b"x" * (CAP - 1024)

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(body[: CAP // 2])  # past the free part: borrowed while the rest waits
        if request.path == "/hold":
            started.set()
            await go.wait()  # the hostile server's pause, released by the test once the others have read
        await response.write(body[CAP // 2 :])
        return response

    url = await server(slow)
    memory = AnswerMemory(CAP, free=FREE, caps=4)
    async with httpx.AsyncClient() as http:
        holding = asyncio.create_task(send_as("a", f"{url}/hold", memory, http))
        await asyncio.wait_for(started.wait(), 10)
        await until(lambda: memory.held_by("a") > 0)  # the client has read the first half
        with pytest.raises(AnswerRefused, match="this namespace's answers being read hold"):
            await send_as("a", f"{url}/other", memory, http)
        read = await send_as("b", f"{url}/other", memory, http)
        assert read.content == body
        go.set()
        assert (await holding).content == body
        assert memory.held == 0 and memory.held_by("a") == 0
        assert (await send_as("a", f"{url}/other", memory, http)).content == body


async def test_a_refused_or_failed_read_gives_its_borrowed_bytes_back(
    server: Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[str]],
) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for _ in range(64):
            await response.write(b" " * (16 * 1024))
        return response

    url = await server(endless)
    memory = AnswerMemory(CAP, free=FREE)
    async with httpx.AsyncClient() as http:
        with pytest.raises(AnswerRefused, match=f"more than the {CAP} accepted"):
            await send_as("a", url, memory, http)
    assert memory.held == 0 and memory.held_by("a") == 0


async def test_small_answers_borrow_nothing(
    server: Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[str]],
) -> None:
    async def small(request: web.Request) -> web.StreamResponse:
        return web.json_response({"tlsType": "one-way", "status": "running"})

    url = await server(small)
    memory = AnswerMemory(CAP, free=FREE, caps=1)
    assert memory.take("x", CAP) is None  # everything borrowed by another namespace: small answers still read
    async with httpx.AsyncClient() as http:
        assert (await send_as("a", url, memory, http)).json()["status"] == "running"
