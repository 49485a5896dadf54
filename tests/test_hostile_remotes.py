"""Hostile or broken remotes are contained: answers are data within bounds, never a hang, a crash or a leak.

A real loopback server (aiohttp) plays the hostile endpoint: answers that never end, drip a byte at a time,
inflate from a small gzip, nest 200,000 deep, carry numbers past Python's digit limit or NaN, ask to wait for
ever, or echo the API secret in every field. Each ends as a typed `RemoteError` with a reason (or as plain
data), within the call's deadline, with nothing of the secret kept.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest
from aiohttp import web
from certsync import cdn, emqx, remote
from certsync.remote import AnswerRefused, RemoteError, parse_retry_after

SECRET = "s3cr3t-api-secret-0123456789abcdef"
CAP = 64 * 1024
DEADLINE = 1.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Hostile:
    url: str


@pytest.fixture
async def hostile() -> AsyncIterator[Callable[[Handler], Awaitable[Hostile]]]:
    runners: list[web.AppRunner] = []

    async def serve(handler: Handler) -> Hostile:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return Hostile(f"http://127.0.0.1:{port}")

    yield serve
    for runner in runners:
        await runner.cleanup()


def emqx_client() -> emqx.EmqxClient:
    return emqx.EmqxClient(max_answer_bytes=CAP, call_deadline=DEADLINE, retry=remote.NO_RETRY)


def cdn_client() -> cdn.CdnClient:
    return cdn.CdnClient(max_answer_bytes=CAP, call_deadline=DEADLINE, retry=remote.NO_RETRY)


def access(url: str) -> emqx.EmqxAccess:
    return emqx.EmqxAccess(url, "key", SECRET)


def cdn_access(url: str) -> cdn.CdnAccess:
    return cdn.CdnAccess(url, "acct", "user", SECRET)


async def streaming(request: web.Request, chunks: int, size: int, pause: float) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    for _ in range(chunks):
        await response.write(b" " * size)
        if pause:
            await asyncio.sleep(pause)  # the hostile server's drip, not the test waiting
    return response


async def test_an_endless_answer_is_cut_at_the_byte_cap(hostile: Callable[[Handler], Awaitable[Hostile]]) -> None:
    server = await hostile(lambda request: streaming(request, chunks=10_000, size=16 * 1024, pause=0))
    async with emqx_client() as client:
        with pytest.raises(AnswerRefused) as refused:
            await client.get_tls(access(server.url), "dep1")
    assert refused.value.reason == "RemoteUnavailable" and str(CAP) in refused.value.message


async def test_a_declared_length_over_the_cap_is_refused_before_reading(
    hostile: Callable[[Handler], Awaitable[Hostile]],
) -> None:
    async def big(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"{" + b" " * (CAP * 4) + b"}", content_type="application/json")

    server = await hostile(big)
    async with emqx_client() as client:
        with pytest.raises(AnswerRefused, match="bytes refused"):
            await client.get_tls(access(server.url), "dep1")


async def test_a_gzip_bomb_is_cut_when_decoded(hostile: Callable[[Handler], Awaitable[Hostile]]) -> None:
    bomb = gzip.compress(b"[" + b"0," * (CAP * 8) + b"0]")
    assert len(bomb) < CAP  # small on the wire, eight times the cap once inflated

    async def inflating(request: web.Request) -> web.StreamResponse:
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    server = await hostile(inflating)
    async with cdn_client() as client:
        with pytest.raises(AnswerRefused):
            await client.list_certificates(cdn.CdnAccess(server.url, "acct", token="static-token-value"))


@pytest.mark.parametrize("encoding", ["gzip, gzip", "deflate", "br", "gzip"])
async def test_an_encoded_answer_is_refused_unread(
    hostile: Callable[[Handler], Awaitable[Hostile]], encoding: str
) -> None:
    """Identity is asked for: whatever else comes (a stacked gzip of 662 bytes inflates to hundreds of MB, a
    broken deflate raises inside httpx) is refused before anything is inflated."""
    seen: list[str] = []

    async def encoded(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Accept-Encoding", ""))
        return web.Response(body=gzip.compress(gzip.compress(b"0" * 10_000_000)) + b"junk",
                            headers={"Content-Encoding": encoding, "Content-Type": "application/json"})  # fmt: skip

    server = await hostile(encoded)
    async with emqx_client() as client:
        with pytest.raises(AnswerRefused, match="Content-Encoding"):
            await client.get_tls(access(server.url), "dep1")
    assert seen == ["identity"]


async def test_a_drip_ends_at_the_call_deadline_not_never(hostile: Callable[[Handler], Awaitable[Hostile]]) -> None:
    # One byte every 0.1 s: each read is far inside httpx's 20 s read timeout, so only a whole-call deadline ends it.
    server = await hostile(lambda request: streaming(request, chunks=100_000, size=1, pause=0.1))
    started = time.monotonic()
    async with emqx_client() as client:
        with pytest.raises(AnswerRefused, match="deadline"):
            await client.get_tls(access(server.url), "dep1")
    assert time.monotonic() - started < DEADLINE + 5  # bounded by the deadline (slack for a loaded machine)


async def test_a_write_whose_answer_is_refused_is_a_transport_failure(
    hostile: Callable[[Handler], Awaitable[Hostile]],
) -> None:
    """The write may have been applied: the caller must read back, as after any lost answer."""
    server = await hostile(lambda request: streaming(request, chunks=10_000, size=16 * 1024, pause=0))
    async with emqx_client() as client:
        with pytest.raises(remote.TransportError):
            await client.update_tls(access(server.url), "dep1", "one-way", "cert", "key")


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 200_000 + b"]" * 200_000,  # RecursionError inside json
        b'{"status": 0, "data": {"seq": ' + b"9" * 5000 + b"}}",  # past the int digit limit: ValueError
        b'{"tlsType": "one-way", "status": NaN}',
        b"\xff\xfe not utf-8",
    ],
    ids=["nested-200k", "huge-number", "nan", "bad-utf8"],
)
async def test_undecodable_answers_are_remote_errors(
    hostile: Callable[[Handler], Awaitable[Hostile]], body: bytes
) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json")

    server = await hostile(answer)
    async with emqx_client() as client:
        with pytest.raises(RemoteError) as failed:
            await client.get_tls(access(server.url), "dep1")
    assert failed.value.reason == "RemoteUnavailable"
    async with cdn_client() as client:
        with pytest.raises(RemoteError):
            await client.list_certificates(cdn.CdnAccess(server.url, "acct", token="static-token-value"))


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("²", None),  # a digit to str.isdigit, not to float
        ("-1", None),
        ("1e9", None),
        ("12", 12.0),
        ("99999999999", remote.MAX_RETRY_AFTER_S),
        ("Fri, 31 Dec 9999 23:59:59 GMT", remote.MAX_RETRY_AFTER_S),
        ("Mon, 32 Foo 2026 99:99:99 GMT", None),
        ("", None),
    ],
)
def test_retry_after_is_parsed_within_bounds(header: str, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


async def test_a_nan_or_tiny_token_lifetime_is_clamped(hostile: Callable[[Handler], Awaitable[Hostile]]) -> None:
    lifetimes = iter([b"NaN", b"1", b"1" + b"0" * 400])
    logins = 0

    async def api(request: web.Request) -> web.StreamResponse:
        nonlocal logins
        if request.path.endswith("/token/"):
            logins += 1
            lifetime = next(lifetimes)
            return web.Response(
                body=b'{"token": "tok", "lifetime": ' + lifetime + b"}", content_type="application/json"
            )
        return web.json_response({"status": 0, "message": "", "data": []})

    server = await hostile(api)
    async with cdn_client() as client:
        with pytest.raises(RemoteError):  # NaN: the token answer is not JSON to us
            await client.list_certificates(cdn_access(server.url))
    async with cdn_client() as client:
        for _ in range(3):  # a 1 ms lifetime is held past the renewal margin: one login, three calls
            await client.list_certificates(cdn_access(server.url))
    assert logins == 2
    async with cdn_client() as client:  # an integer past float's range: the default lifetime, no crash
        await client.list_certificates(cdn_access(server.url))
    assert logins == 3


async def test_a_token_that_cannot_be_sent_is_refused_not_cached(
    hostile: Callable[[Handler], Awaitable[Hostile]],
) -> None:
    logins = 0

    async def api(request: web.Request) -> web.StreamResponse:
        nonlocal logins
        if request.path.endswith("/token/"):
            logins += 1
            return web.json_response({"token": "t\u00f6k\nen", "lifetime": 21600000})
        return web.json_response({"status": 0, "message": "", "data": []})

    server = await hostile(api)
    async with cdn_client() as client:
        for expected in (1, 2):  # refused each time, never kept for the next call
            with pytest.raises(RemoteError, match="cannot be sent"):
                await client.list_certificates(cdn_access(server.url))
            assert logins == expected


@pytest.mark.parametrize("value", ["1e400", "inf", 10**20, -5])
def test_certificate_times_out_of_range_are_unexpected_answers(value: object) -> None:
    with pytest.raises(cdn.CdnUnexpectedAnswer):
        cdn.timestamp({"end_timestamp": value}, "end")


async def test_an_emqx_echoing_the_secret_in_every_field_leaks_nothing(
    hostile: Callable[[Handler], Awaitable[Hostile]],
) -> None:
    async def echo(request: web.Request) -> web.StreamResponse:
        fields = ("tlsType", "status", "cn", "expire", "message")
        return web.json_response({name: f"{SECRET} {name}" for name in fields})

    server = await hostile(echo)
    async with emqx_client() as client:
        info = await client.get_tls(access(server.url), "dep1")
    assert info.status == "unknown" and info.tls_type == "unknown" and info.expire is None
    for text in (info.cn, info.expire_text, info.message, info.status_text, repr(info)):
        assert SECRET not in text
        assert SECRET[:16] not in text
    assert len(info.cn) <= emqx.MAX_CN and len(info.status_text) <= emqx.MAX_WORD


async def test_a_well_formed_answer_still_reads_whole_through_the_bounds(
    hostile: Callable[[Handler], Awaitable[Hostile]],
) -> None:
    """The cap and the deadline cost a normal answer nothing: gzip is decoded, headers kept."""
    good = {"tlsType": "one-way", "status": "running", "expire": "2034-05-22 02:43:21"}

    async def fine(request: web.Request) -> web.StreamResponse:
        response = web.json_response(good, headers={"X-Extra": "kept"})
        response.enable_compression()
        return response

    server = await hostile(fine)
    async with emqx_client() as client:
        info = await client.get_tls(access(server.url), "dep1")
    assert (info.status, info.tls_type, info.expire_text) == ("running", "one-way", "2034-05-22 02:43:21")
    async with httpx.AsyncClient() as http:
        request = http.build_request("GET", f"{server.url}/x", headers={"Accept-Encoding": "gzip"})
        response = await remote.send(http, request, "emqx", "get_tls", max_bytes=CAP, deadline=DEADLINE)
    assert response.headers["X-Extra"] == "kept" and response.json() == good
    assert "content-encoding" not in response.headers
