"""CDN logins that cannot ban the account: single flight, refusals per Secret version that survive a restart,
bans waited out, token renewal on 401/405/stale 455, and remote texts that never carry a secret out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from certsync import cdn as api
from certsync.budget import RateBudget
from certsync.remote import RateLimitedError, RetryPolicy

from tests.conftest import CDN_PASSWORD, CDN_USER, Emulator

LOGIN = "POST /app/oauth/v1/token/"
ENDPOINT = "https://cdn.test"
PASSWORD = "wrong-Pa55word-of-the-secret"
TOKEN = "tok-5f0c8d2a9e7b41c3a6d8e0f1b2c3d4e5"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Remote:
    """A scripted CDN: `login` and `api` decide each answer; every request is recorded."""

    def __init__(
        self,
        login: Callable[[httpx.Request], httpx.Response],
        api_answer: Callable[[httpx.Request], httpx.Response] | None = None,
    ) -> None:
        self.login, self.api_answer = login, api_answer or (lambda _: ok_list())
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.login(request) if "/oauth/" in request.url.path else self.api_answer(request)

    def logins(self) -> int:
        return sum("/oauth/" in r.url.path for r in self.requests)

    def api_calls(self) -> int:
        return len(self.requests) - self.logins()


def ok_list() -> httpx.Response:
    return httpx.Response(200, json={"status": 0, "message": "", "data": []})


def token_answer(field: str = "token", value: str = TOKEN) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _: httpx.Response(200, json={"person_id": 1, "status": 200, field: value, "lifetime": 21_600_000})


def refused(_: httpx.Request) -> httpx.Response:
    return httpx.Response(401)  # no body at all, as the provider may answer


def banned(_: httpx.Request) -> httpx.Response:
    return httpx.Response(403)


def make_client(remote: Remote, clock: Clock, **kwargs: Any) -> api.CdnClient:
    async def no_sleep(_: float) -> None:
        return None

    return api.CdnClient(
        budget=RateBudget(clock=clock), transport=httpx.MockTransport(remote), sleep=no_sleep, **kwargs
    )


def access(credentials_id: str = "uid-1:100", password: str = PASSWORD, **extra: str) -> api.CdnAccess:
    return api.CdnAccess(ENDPOINT, "acct1", username="user", password=password, credentials_id=credentials_id, **extra)


# --- refusals ----------------------------------------------------------------------------------


async def test_concurrent_callers_share_one_refused_login() -> None:
    remote, clock = Remote(refused), Clock()
    async with make_client(remote, clock) as c:
        results = await asyncio.gather(*(c.list_certificates(access()) for _ in range(8)), return_exceptions=True)
    assert remote.logins() == 1
    assert all(isinstance(r, api.LoginRefused) and r.reason == "CredentialsInvalid" for r in results)


async def test_concurrent_callers_share_one_token() -> None:
    remote, clock = Remote(token_answer()), Clock()
    async with make_client(remote, clock) as c:
        await asyncio.gather(*(c.list_certificates(access()) for _ in range(8)))
    assert remote.logins() == 1 and remote.api_calls() == 8


async def test_a_refusal_survives_a_restart_and_a_changed_secret_gets_exactly_one_login() -> None:
    remote, clock = Remote(refused), Clock()
    async with make_client(remote, clock) as first:
        with pytest.raises(api.LoginRefused):
            await first.token(access())
        saved = json.loads(json.dumps(first.export_login_state(access())))  # as it would sit in status
    assert saved["refused"] == {"credentialsId": "uid-1:100", "at": clock.now}
    assert PASSWORD not in json.dumps(saved)
    async with make_client(remote, clock) as restarted:  # a restart, or another replica taking over
        restarted.restore_login_state(access(), saved)
        for _ in range(6):
            with pytest.raises(api.LoginRefused, match="not retried until the credentials Secret changes"):
                await restarted.token(access())
        assert remote.logins() == 1
        with pytest.raises(api.LoginRefused):
            await restarted.token(access("uid-1:101", "another-wrong-one"))  # the Secret changed: one login
        with pytest.raises(api.LoginRefused):
            await restarted.token(access("uid-1:101", "another-wrong-one"))
        assert remote.logins() == 2
        remote.login = token_answer()
        clock.now += 61  # the namespace's one unproven attempt a minute
        assert await restarted.token(access("uid-1:102", "the-right-one")) == TOKEN
        assert remote.logins() == 3


async def test_the_same_wrong_password_in_another_secret_is_not_tried_twice_by_one_process() -> None:
    remote, clock = Remote(refused), Clock()
    async with make_client(remote, clock) as c:
        for namespace in range(4):
            with pytest.raises(api.LoginRefused):
                await c.token(access(f"uid-{namespace}:1"))
    assert remote.logins() == 1


async def test_different_secrets_of_one_username_are_capped_below_the_ban() -> None:
    remote, clock = Remote(refused), Clock()
    async with make_client(remote, clock) as c:
        for attempt in range(api.MAX_REFUSALS + 3):
            clock.now += 61  # the namespace's one unproven attempt a minute
            with pytest.raises(api.LoginRefused):
                await c.token(access(f"uid:{attempt}", f"wrong-{attempt}"))
        assert remote.logins() == api.MAX_REFUSALS < 7
        state, exported_at = c.export_login_state(access("uid:99", "next")), clock.now
        clock.now += api.BAN_SECONDS + 1
        remote.login = token_answer()
        assert await c.token(access("uid:99", "right")) == TOKEN
    later = Clock()
    later.now = exported_at + 61
    async with make_client(Remote(refused), later) as restarted:  # the cap survives a restart too
        restarted.restore_login_state(access("uid:99", "next"), state)
        with pytest.raises(api.LoginRefused, match="wrong passwords in the last 3 h"):
            await restarted.token(access("uid:100", "yet-another"))


def test_state_of_another_endpoint_or_username_is_ignored() -> None:
    c = api.CdnClient()
    c.restore_login_state(access(), {"endpoint": "https://other.test", "username": "user", "bannedUntil": 9e99})
    c.restore_login_state(access(), {"endpoint": ENDPOINT, "username": "someone", "bannedUntil": 9e99})
    c.restore_login_state(access(), {"endpoint": ENDPOINT, "username": "user", "bannedUntil": "soon"})
    assert c.export_login_state(access()) == {}


# --- bans ------------------------------------------------------------------------------------


async def test_a_ban_is_waited_out_then_tried_exactly_once() -> None:
    remote, clock = Remote(banned), Clock()
    async with make_client(remote, clock) as c:
        with pytest.raises(api.AccountBanned) as first:
            await c.token(access())
        assert first.value.retryable and first.value.retry_after == api.BAN_SECONDS
        assert first.value.reason == "AccountBanned"
        saved = c.export_login_state(access("uid-1:101"))  # any Secret of the username learns of the ban
        assert saved["bannedUntil"] == clock.now + api.BAN_SECONDS and saved["owner"] == "/uid-1"
        clock.now += api.BAN_SECONDS - 60
        with pytest.raises(api.AccountBanned) as waiting:  # a ban answered here holds for every owner
            await c.token(access("uid-2:1", "a-new-password"))
        assert waiting.value.retry_after == pytest.approx(60)
        assert remote.logins() == 1
    async with make_client(remote, clock) as restarted:
        restarted.restore_login_state(access(), saved)
        with pytest.raises(api.AccountBanned):
            await restarted.token(access())
        assert remote.logins() == 1
        clock.now += 61
        with pytest.raises(api.AccountBanned):  # still banned: one try, then a new ban period
            await restarted.token(access())
        with pytest.raises(api.AccountBanned):
            await restarted.token(access())
        assert remote.logins() == 2
        clock.now += api.BAN_SECONDS + 1
        remote.login = token_answer()
        assert await restarted.token(access()) == TOKEN
        assert remote.logins() == 3
    async with make_client(Remote(token_answer()), clock) as other:  # a ban read from a status: its owner's only
        other.restore_login_state(access(), saved)
        assert await other.token(access("uid-9:1", namespace="elsewhere")) == TOKEN


# --- the token endpoint ----------------------------------------------------------------------


async def test_the_token_endpoint_has_its_own_budget() -> None:
    remote, clock = Remote(token_answer()), Clock()
    async with make_client(remote, clock, login_window=api.Window(2, 60.0)) as c:
        await c.token(access("a:1", "p1"))
        await c.token(access("b:1", "p2"))
        with pytest.raises(RateLimitedError):
            await c.token(access("c:1", "p3"))
    assert remote.logins() == 2


@pytest.mark.parametrize("field", ["token", "auth_token"])
async def test_both_names_of_the_token_field_are_accepted(field: str) -> None:
    async with make_client(Remote(token_answer(field)), Clock()) as c:
        assert await c.token(access()) == TOKEN


# --- renewal on API calls ----------------------------------------------------------------------


def api_refusing(codes: list[int]) -> Callable[[httpx.Request], httpx.Response]:
    """Answer each API call with the next HTTP code (or envelope code, above 450) of `codes`, then succeed."""

    def answer(_: httpx.Request) -> httpx.Response:
        if not codes:
            return ok_list()
        code = codes.pop(0)
        if code >= 450:
            return httpx.Response(200, json={"status": code, "message": "not allowed"})
        return httpx.Response(code, text="")

    return answer


@pytest.mark.parametrize("code", [401, 405])
async def test_a_refused_token_is_renewed_once_and_the_call_resent(code: int) -> None:
    remote, clock = Remote(token_answer(), api_refusing([code])), Clock()
    async with make_client(remote, clock) as c:
        assert await c.list_certificates(access()) == []
    assert remote.logins() == 2 and remote.api_calls() == 2


@pytest.mark.parametrize("code", [401, 405])
async def test_a_second_refusal_is_final(code: int) -> None:
    remote, clock = Remote(token_answer(), api_refusing([code, code, code])), Clock()
    async with make_client(remote, clock) as c:
        with pytest.raises(api.TokenRejected, match="again after a new login") as rejected:
            await c.list_certificates(access())
    assert rejected.value.status == code
    assert remote.logins() == 2 and remote.api_calls() == 2


async def test_455_means_an_expired_token_only_when_the_token_is_old() -> None:
    remote, clock = Remote(token_answer(), api_refusing([455])), Clock()
    async with make_client(remote, clock) as c:
        with pytest.raises(api.NotAllowed):  # a fresh token: 455 is what it says, not allowed
            await c.list_certificates(access())
        assert remote.logins() == 1
        clock.now += api.TOKEN_STALE_S + 1
        remote.api_answer = api_refusing([455])
        assert await c.list_certificates(access()) == []  # an old token: renewed once, call resent
        assert remote.logins() == 2 and remote.api_calls() == 3


async def test_a_static_token_is_never_renewed() -> None:
    remote, clock = Remote(token_answer(), api_refusing([401])), Clock()
    async with make_client(remote, clock) as c:
        with pytest.raises(api.TokenRejected):
            await c.list_certificates(api.CdnAccess(ENDPOINT, "acct1", token=TOKEN))
    assert remote.logins() == 0 and remote.api_calls() == 1
    assert TOKEN not in str(remote.requests[0].url)


async def test_a_renewal_by_one_caller_is_not_undone_by_another() -> None:
    """Two calls refused with the same old token, answered interleaved: one new login, not two."""
    issued: list[str] = []

    def login(_: httpx.Request) -> httpx.Response:
        issued.append(f"tok-{len(issued) + 1}-abcdefghijklmnop")
        return token_answer(value=issued[-1])(_)

    old_token_refused = False

    def answer(request: httpx.Request) -> httpx.Response:
        refuse = old_token_refused and request.headers["CDN-AUTH-TOKEN"] == issued[0]
        return httpx.Response(401) if refuse else ok_list()

    remote, clock = Remote(login, answer), Clock()

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)  # both calls are in flight before either answer arrives
        return remote(request)

    async with api.CdnClient(budget=RateBudget(clock=clock), transport=httpx.MockTransport(slow)) as c:
        await c.list_certificates(access())  # proven for the account: the four calls below go out together
        old_token_refused = True
        await asyncio.gather(*(c.list_certificates(access()) for _ in range(4)))
    assert remote.logins() == 2 and remote.api_calls() == 1 + 8


# --- echoed secrets --------------------------------------------------------------------------


def echo(request: httpx.Request) -> str:
    return f"you sent {request.content.decode()} with {request.headers.get('CDN-AUTH-TOKEN', '')}"


async def test_an_echoing_login_leaks_nothing() -> None:
    remote = Remote(lambda r: httpx.Response(403, json={"message": echo(r)}))
    async with make_client(remote, Clock()) as c:
        with pytest.raises(api.AccountBanned) as error:
            await c.token(access())
    assert PASSWORD not in str(error.value) and "Pa55word" not in str(error.value)
    remote = Remote(lambda r: httpx.Response(500, text=echo(r)))
    async with make_client(remote, Clock()) as c:
        with pytest.raises(api.CdnInternalError) as error2:
            await c.token(access())
    assert "Pa55word" not in str(error2.value) and "Pa55word" not in error2.value.remote_message


@pytest.mark.parametrize("status", [450, 471, 472, 473, 476, 550])
async def test_an_echoing_api_leaks_neither_token_nor_key(status: int) -> None:
    from devkit.factory import three_level

    chain = three_level("echo.example")
    key = chain.leaf.key_pem().decode()

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": status, "message": echo(request)})

    remote = Remote(token_answer(), answer)
    async with make_client(remote, Clock(), retry=RetryPolicy(attempts=1)) as c:
        with pytest.raises(api.CdnApiError) as error:
            await c.add_certificate(access(), chain.pem.decode(), key, "ns/x")
    text = str(error.value) + error.value.remote_message
    body = "".join(line for line in key.splitlines() if not line.startswith("-----"))
    assert TOKEN not in text and not any(body[i : i + 16] in text for i in range(len(body) - 15))


async def test_against_the_emulator_eight_resources_with_one_wrong_password_log_in_once(cdn: Emulator) -> None:
    wrong = api.CdnAccess(cdn.url, "acct1", username=CDN_USER, password="wrong", credentials_id="u:1")
    async with api.CdnClient(budget=cdn.budget()) as c:
        results = await asyncio.gather(*(c.list_certificates(wrong) for _ in range(8)), return_exceptions=True)
        assert all(isinstance(r, api.LoginRefused) for r in results)
        assert cdn.counts() == {LOGIN: 1}
        await cdn.control("POST", "clock", {"advance": 61})  # the namespace's one unproven attempt a minute
        fixed = api.CdnAccess(cdn.url, "acct1", username=CDN_USER, password=CDN_PASSWORD, credentials_id="u:2")
        await asyncio.gather(*(c.list_certificates(fixed) for _ in range(8)))
        assert cdn.counts()[LOGIN] == 2


async def test_a_refusal_restored_from_many_statuses_counts_once() -> None:
    """Eight resources record the same refusal: restoring all of them (a restart) is still one refusal."""
    from certsync.cdn import CdnAccess, CdnClient, LoginRefused

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401)

    client = CdnClient(transport=httpx.MockTransport(answer))
    access = CdnAccess("https://cdn.example", "acct", username="u", password="wrong", credentials_id="uid:1")
    with pytest.raises(LoginRefused):
        await client.token(access)
    state = client.export_login_state(access)
    for _ in range(8):
        client.restore_login_state(access, state)
    again = client.export_login_state(access)
    assert again["recentRefusals"] == state["recentRefusals"] and len(again["recentRefusals"]) == 1
    restarted = CdnClient(transport=httpx.MockTransport(answer))
    for _ in range(8):
        restarted.restore_login_state(access, state)
    assert len(restarted.export_login_state(access)["recentRefusals"]) == 1
    await client.aclose()
    await restarted.aclose()
