"""Issue 18 at the client layer: nothing shared (budgets, the token endpoint, login memory, tokens) is granted to
credentials that were never proven. Each attack is reproduced against the emulators with a victim in namespace
`a` holding valid credentials and an attacker in namespace `b` (or many) holding none that work: the victim's call
is sent at once and succeeds, the attacker's cost the remote at most their quota, and the provider's 7-strike ban
is never reached, also across a restart (export, then restore into a new client)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest
from certsync import cdn as api
from certsync import emqx as emqx_api
from certsync.budget import (
    CDN_UNPROVEN_FRACTION,
    EMQX_UNPROVEN_FRACTION,
    EMQX_WRITE,
    UNPROVEN_QUOTA,
    BudgetExhausted,
    unproven_share,
)
from certsync.remote import RateLimitedError, RemoteError

from devkit.factory import issue
from tests.conftest import CDN_PASSWORD, CDN_USER, EMQX_KEY, EMQX_SECRET, Emulator

LOGIN = "POST /app/oauth/v1/token/"
LIST = "GET /app/ssl/v1/account/{account}/certificate/"
DEP = "ge6a1a75"


async def no_sleep(_: float) -> None:
    return None


def cdn_client(emulator: Emulator) -> api.CdnClient:
    return api.CdnClient(budget=emulator.budget(), sleep=no_sleep)


def victim(emulator: Emulator, namespace: str = "a", credentials_id: str = "uid-a:1") -> api.CdnAccess:
    return api.CdnAccess(emulator.url, "acct1", username=CDN_USER, password=CDN_PASSWORD,
                         credentials_id=credentials_id, namespace=namespace)  # fmt: skip


def junk_token(emulator: Emulator, n: int, namespace: str = "b") -> api.CdnAccess:
    return api.CdnAccess(emulator.url, "acct1", token=f"junk-token-{n:04d}", credentials_id=f"uid-j{n}:1",
                         namespace=namespace)  # fmt: skip


def guess(emulator: Emulator, n: int, namespace: str = "b", username: str = CDN_USER) -> api.CdnAccess:
    return api.CdnAccess(emulator.url, "acct1", username=username, password=f"guess-{n}",
                         credentials_id=f"uid-g{n}:1", namespace=namespace)  # fmt: skip


async def advance(emulator: Emulator, seconds: float) -> None:
    await emulator.control("POST", "clock", {"advance": seconds})


async def attempts(calls: list[Any]) -> list[object]:
    """Run `calls` together; each result or the error it raised."""
    results: list[object] = await asyncio.gather(*calls, return_exceptions=True)
    return results


def statuses(emulator: Emulator, template: str) -> list[int]:
    return [c.status for c in emulator.state.core.calls if f"{c.method} {c.template}" == template]


# --- budget burning ----------------------------------------------------------------------------------


async def test_junk_tokens_in_one_namespace_cost_one_call_a_minute_and_never_the_victims_budget(cdn: Emulator) -> None:
    async with cdn_client(cdn) as c:
        results = await attempts([c.list_certificates(junk_token(cdn, n)) for n in range(20)])
        assert sum(isinstance(r, api.TokenRejected) for r in results) == 1  # one sent: refused by the API
        assert all(isinstance(r, RateLimitedError) and "not sent" in str(r) for r in results if
                   not isinstance(r, api.TokenRejected))  # fmt: skip
        assert statuses(cdn, LIST) == [401]
        assert await c.list_certificates(victim(cdn)) == []  # at once
        for _ in range(19):  # the refused junk call is no call of the account: the victim keeps all 20
            await c.list_certificates(victim(cdn))
        assert statuses(cdn, LIST) == [401] + [200] * 20
        with pytest.raises(RateLimitedError, match="not sent"):
            await c.list_certificates(victim(cdn))
        await advance(cdn, 61)  # a minute later: one more junk attempt, no more
        results = await attempts([c.list_certificates(junk_token(cdn, n)) for n in range(20)])
        assert sum(isinstance(r, api.TokenRejected) for r in results) == 1
        assert await c.list_certificates(victim(cdn)) == []
    assert cdn.counts()[LOGIN] == 1  # the victim's one login


async def test_each_namespace_has_its_own_unproven_share_of_the_accounts_window(cdn: Emulator) -> None:
    """Answers that prove nothing and refuse nothing (here: a token of another account, 455) fill only their
    namespace's share: another tenant's first unproven call still goes out at once."""
    share = unproven_share(api.CdnClient().window, CDN_UNPROVEN_FRACTION)
    assert share == 5
    now = cdn.state.core.now()
    async with cdn_client(cdn) as c:
        window = c.scope(victim(cdn))
        for _ in range(share):  # as if namespace b's unproven calls had filled its share this minute
            c.gate.budget.acquire(window, c.window, unproven_share=share, unproven_of="b")
        with pytest.raises(BudgetExhausted):
            c.gate.budget.acquire(window, c.window, unproven_share=share, unproven_of="b")
        assert c.gate.budget.acquire(window, c.window, unproven_share=share, unproven_of="a") >= now  # its own
        fresh = api.CdnAccess(cdn.url, "acct1", token="", username=CDN_USER, password=CDN_PASSWORD,
                              credentials_id="uid-c:1", namespace="c")  # fmt: skip
        assert await c.list_certificates(fresh) == []  # a third tenant: sent at once


async def test_a_429_answered_to_unproven_credentials_blocks_their_namespace_only(cdn: Emulator) -> None:
    async with cdn_client(cdn) as c:
        await cdn.fault("429", retryAfter=120)
        with pytest.raises(api.CdnRateLimited) as limited:
            await c.list_certificates(junk_token(cdn, 1))
        assert limited.value.retry_after == pytest.approx(120, abs=1)
        await advance(cdn, 61)  # the quota's minute has passed, the 429's block has not
        with pytest.raises(RateLimitedError, match="not sent"):
            await c.list_certificates(junk_token(cdn, 2))
        assert await c.list_certificates(victim(cdn)) == []  # the account itself is not blocked


async def test_an_unproven_owners_concurrent_calls_wait_for_its_first_answer(cdn: Emulator) -> None:
    async with cdn_client(cdn) as c:
        await attempts([c.list_certificates(victim(cdn)) for _ in range(8)])
        assert cdn.counts() == {LOGIN: 1, LIST: 8}  # all sent: the first proved the owner, the others followed


async def test_a_token_of_another_account_proves_nothing_for_this_one(cdn: Emulator) -> None:
    """455 (the emulator's answer to a valid token naming another account) is no proof: still one a minute."""
    other = api.CdnAccess(cdn.url, "someone-elses", username=CDN_USER, password=CDN_PASSWORD,
                          credentials_id="uid-o:1", namespace="b")  # fmt: skip
    async with cdn_client(cdn) as c:
        with pytest.raises(api.NotAllowed):
            await c.list_certificates(other)
        with pytest.raises(RateLimitedError, match="one attempt a minute"):
            await c.list_certificates(other)


# --- login flooding -------------------------------------------------------------------------------------


async def test_junk_usernames_cannot_delay_the_victims_login(cdn: Emulator) -> None:
    async with cdn_client(cdn) as c:
        results = await attempts([c.token(guess(cdn, n, username=f"junk-{n}")) for n in range(20)])
        assert sum(isinstance(r, api.LoginRefused) for r in results) == 1
        assert sum(isinstance(r, RateLimitedError) for r in results) == 19
        assert await c.token(victim(cdn))  # at once
        assert cdn.counts() == {LOGIN: 2}


async def test_a_password_that_logged_in_uses_the_token_endpoint_beyond_the_unproven_quarter(cdn: Emulator) -> None:
    async with cdn_client(cdn) as c:
        assert await c.token(victim(cdn))
        for ns in range(18):  # junk usernames in 18 namespaces: one each, all together 15 of the endpoint's 20
            with pytest.raises(RemoteError):
                await c.token(guess(cdn, ns, namespace=f"b{ns}", username=f"junk-{ns}"))
        assert statuses(cdn, LOGIN) == [200] + [401] * 15
        # The victim's password logged in before: another namespace of the victim logs in now, all the same.
        assert await c.token(victim(cdn, namespace="a2", credentials_id="uid-a2:1"))
        assert statuses(cdn, LOGIN) == [200] + [401] * 15 + [200]


async def test_a_token_is_never_reused_by_another_namespace(cdn: Emulator) -> None:
    async with cdn_client(cdn) as c:
        mine = await c.token(victim(cdn))
        theirs = await c.token(victim(cdn, namespace="b", credentials_id="uid-b:1"))
        assert mine != theirs and cdn.counts() == {LOGIN: 2}
        assert await c.token(victim(cdn)) == mine


# --- password guessing, and the ban never reached ------------------------------------------------------


async def five_wrong_passwords(cdn: Emulator, c: api.CdnClient, namespace: str = "b") -> None:
    for n in range(api.MAX_REFUSALS):
        await advance(cdn, UNPROVEN_QUOTA.period + 1)
        with pytest.raises(api.LoginRefused):
            await c.token(guess(cdn, n, namespace=namespace))
    await advance(cdn, UNPROVEN_QUOTA.period + 1)
    with pytest.raises(api.LoginRefused, match="5 wrong passwords"):  # the sixth is not sent
        await c.token(guess(cdn, 99, namespace=namespace))
    assert statuses(cdn, LOGIN).count(401) == api.MAX_REFUSALS


async def test_guessed_passwords_never_lock_out_the_password_that_logged_in(cdn: Emulator) -> None:
    async with cdn_client(cdn) as c:
        assert await c.token(victim(cdn))
        await five_wrong_passwords(cdn, c)
        # Its token ran out, or a second namespace of the victim's: the proven password still logs in.
        assert await c.token(victim(cdn, namespace="a2", credentials_id="uid-a2:1"))
        with pytest.raises(api.LoginRefused, match="5 wrong passwords"):  # an unproven password: not risked
            await c.token(guess(cdn, 100, namespace="c"))
    assert not cdn.state.banned_until


async def test_after_a_restart_the_victims_status_vouches_for_its_own_secret_only(cdn: Emulator) -> None:
    """Five wrong passwords in B, a restart: A's own status lets A's login go; B's state, restored too, neither
    blocks A nor lets B walk the username to the ban; the provider never counts 7 refusals."""
    async with cdn_client(cdn) as first:
        assert await first.token(victim(cdn))
        await five_wrong_passwords(cdn, first)
        saved_a = json.loads(json.dumps(first.export_login_state(victim(cdn))))
        saved_b = [json.loads(json.dumps(first.export_login_state(guess(cdn, n)))) for n in range(5)]
    assert saved_a["owner"] == "a/uid-a" and saved_a["succeeded"]["credentialsId"] == "uid-a:1"
    assert len(saved_a["otherRefusals"]) == 5 and "b/" not in json.dumps(saved_a)  # whose, never said
    async with cdn_client(cdn) as restarted:
        for n, state in enumerate(saved_b):  # B erased nothing: its resources restore their own states
            restarted.restore_login_state(guess(cdn, n), state)
        restarted.restore_login_state(victim(cdn), saved_a)
        for n in range(5, 8):  # B's new guesses: five refusals known, none is sent
            await advance(cdn, 61)
            with pytest.raises(api.LoginRefused, match="wrong passwords in the last 3 h"):
                await restarted.token(guess(cdn, n))
        assert await restarted.token(victim(cdn))  # at once
    assert statuses(cdn, LOGIN).count(401) == 5 and not cdn.state.banned_until


async def test_a_forged_success_in_the_attackers_own_status_costs_at_most_one_refusal(cdn: Emulator) -> None:
    """B may write its own /status: it claims its guesses once logged in. One such claim is believed (one more
    refusal, the sixth), then none: the seventh is never sent, and the victim's password, proven in this process,
    still logs in."""
    async with cdn_client(cdn) as first:
        assert await first.token(victim(cdn))
        await five_wrong_passwords(cdn, first)
        saved_a = first.export_login_state(victim(cdn))  # A's status carries the five, whose unsaid
    async with cdn_client(cdn) as restarted:
        restarted.restore_login_state(victim(cdn), saved_a)
        assert await restarted.token(victim(cdn))  # A's pass after the restart: its own status vouches for it
        for n in range(10, 14):
            forged = {"endpoint": cdn.url, "username": CDN_USER, "owner": f"b/uid-g{n}",
                      "succeeded": {"credentialsId": f"uid-g{n}:1", "at": cdn.state.core.now()}}  # fmt: skip
            restarted.restore_login_state(guess(cdn, n), forged)
            await advance(cdn, 61)
            with pytest.raises(api.LoginRefused):
                await restarted.token(guess(cdn, n))
        assert statuses(cdn, LOGIN).count(401) == 6
        assert await restarted.token(victim(cdn, namespace="a2", credentials_id="uid-a2:1"))  # proven here
    assert not cdn.state.banned_until


async def test_a_forged_vouch_refused_in_one_namespace_leaves_anothers_vouch_standing(cdn: Emulator) -> None:
    """After a restart B vouches (in its own status) for a guess, which is refused: B's statuses vouch for nothing
    more, but A's own status still vouches for A's Secret version, which logs in despite the refusals known."""
    async with cdn_client(cdn) as first:
        assert await first.token(victim(cdn))
        await five_wrong_passwords(cdn, first)
        saved_a = first.export_login_state(victim(cdn))
    async with cdn_client(cdn) as restarted:
        forged = {"endpoint": cdn.url, "username": CDN_USER, "owner": "b/uid-g20",
                  "succeeded": {"credentialsId": "uid-g20:1", "at": cdn.state.core.now()}}  # fmt: skip
        restarted.restore_login_state(guess(cdn, 20), forged)
        await advance(cdn, 61)
        with pytest.raises(api.LoginRefused, match="wrong username or password"):  # believed once: sent, refused
            await restarted.token(guess(cdn, 20))
        restarted.restore_login_state(victim(cdn), saved_a)  # A's first pass after the restart
        assert await restarted.token(victim(cdn))
    assert statuses(cdn, LOGIN).count(401) == 6 and not cdn.state.banned_until


async def test_a_refusal_of_this_secret_version_restored_from_status_is_not_retried(cdn: Emulator) -> None:
    wrong = guess(cdn, 1, namespace="a")
    async with cdn_client(cdn) as first:
        with pytest.raises(api.LoginRefused):
            await first.token(wrong)
        saved = first.export_login_state(wrong)
    assert saved["refused"] == {"credentialsId": "uid-g1:1", "at": pytest.approx(cdn.state.core.now(), abs=1)}
    async with cdn_client(cdn) as restarted:
        restarted.restore_login_state(wrong, saved)
        await advance(cdn, 3600)
        with pytest.raises(api.LoginRefused, match="not retried until the credentials Secret changes"):
            await restarted.token(wrong)
    assert cdn.counts() == {LOGIN: 1}


# --- forged status -----------------------------------------------------------------------------------


async def test_a_forged_ban_or_refusal_in_another_owners_status_denies_the_victim_nothing(cdn: Emulator) -> None:
    now = cdn.state.core.now()
    forged = {"endpoint": cdn.url, "username": CDN_USER, "owner": "b/uid-g1", "bannedUntil": now + 10**9,
              "refused": {"credentialsId": "uid-a:1", "at": now}}  # fmt: skip
    async with cdn_client(cdn) as c:
        c.restore_login_state(guess(cdn, 1), forged)  # as B's resource restores its own status
        c.restore_login_state(victim(cdn), forged)  # or as the victim would, were it handed B's state
        assert await c.token(victim(cdn))
        assert c.export_login_state(victim(cdn)).get("bannedUntil") is None
        with pytest.raises(api.AccountBanned):  # the forger itself is held to what it wrote
            await c.token(guess(cdn, 1))
    assert cdn.counts() == {LOGIN: 1}


async def test_a_ban_restored_from_its_owners_status_holds_for_that_owner_only(cdn: Emulator) -> None:
    cdn.state.banned_until[CDN_USER] = cdn.state.core.now() + api.BAN_SECONDS  # the ban is real
    async with cdn_client(cdn) as first:
        with pytest.raises(api.AccountBanned):
            await first.token(victim(cdn))
        saved = first.export_login_state(victim(cdn))
    async with cdn_client(cdn) as restarted:
        restarted.restore_login_state(victim(cdn), saved)
        with pytest.raises(api.AccountBanned):
            await restarted.token(victim(cdn))  # its owner waits, without a call
        assert cdn.counts() == {LOGIN: 1}
        with pytest.raises(api.AccountBanned):  # another owner tries once and meets the real 403
            await restarted.token(victim(cdn, namespace="c", credentials_id="uid-c:1"))
        assert cdn.counts() == {LOGIN: 2}


# --- EMQX -------------------------------------------------------------------------------------------------


def emqx_client(emulator: Emulator) -> emqx_api.EmqxClient:
    return emqx_api.EmqxClient(budget=emulator.budget(), sleep=no_sleep)


def owner_key(emulator: Emulator) -> emqx_api.EmqxAccess:
    return emqx_api.EmqxAccess(emulator.url, EMQX_KEY, EMQX_SECRET, namespace="a", credentials_id="uid-a:1")


def junk_key(emulator: Emulator, n: int, namespace: str = "b") -> emqx_api.EmqxAccess:
    return emqx_api.EmqxAccess(emulator.url, f"junk-{n}", "junk-secret-0000", namespace=namespace,
                           credentials_id=f"uid-j{n}:1")  # fmt: skip


def emqx_calls(emulator: Emulator) -> list[tuple[str, int]]:
    return [(c.method, c.status) for c in emulator.state.core.calls]


async def test_junk_keys_naming_a_deployment_never_spend_its_writes(emqx: Emulator) -> None:
    leaf = issue("mqtt.example.com")
    cert, key = leaf.cert_pem.decode(), leaf.key_pem().decode()
    assert unproven_share(EMQX_WRITE, EMQX_UNPROVEN_FRACTION) == 1
    async with emqx_client(emqx) as c:
        for n in range(20):
            with pytest.raises(RemoteError):
                await c.create_tls(junk_key(emqx, n, namespace=f"b{n}"), DEP, "one-way", cert, key)
        # One attempt each (their namespaces' quotas); refused at authentication, none is a call of the deployment.
        assert emqx_calls(emqx) == [("POST", 401)] * 20
        with pytest.raises(emqx_api.TLSNotConfigured):
            await c.get_tls(owner_key(emqx), DEP)  # at once; a 404 proves nothing, and refuses nothing
        await c.create_tls(owner_key(emqx), DEP, "one-way", cert, key)  # its namespace's own share: sent, proven
        for _ in range(5):
            await c.update_tls(owner_key(emqx), DEP, "one-way", cert, key)
        with pytest.raises(RateLimitedError, match="not sent"):  # 6 writes an hour, all the victim's
            await c.update_tls(owner_key(emqx), DEP, "one-way", cert, key)
    assert [s for m, s in emqx_calls(emqx) if m != "GET"] == [401] * 20 + [200] * 6


async def test_invented_write_times_hold_only_once_their_owner_is_proven(emqx: Emulator) -> None:
    leaf = issue("mqtt.example.com")
    cert, key = leaf.cert_pem.decode(), leaf.key_pem().decode()
    now = emqx.state.core.now()
    async with emqx_client(emqx) as c:
        c.restore_write_times(junk_key(emqx, 1), DEP, [now] * 6)  # a forged status naming the victim's deployment
        with pytest.raises(emqx_api.EmqxUnauthorized):
            await c.get_tls(junk_key(emqx, 1), DEP)
        with pytest.raises(emqx_api.TLSNotConfigured):
            await c.get_tls(owner_key(emqx), DEP)
        await c.create_tls(owner_key(emqx), DEP, "one-way", cert, key)  # the invented times never joined
        earlier = [now - 60 * i for i in range(1, 6)]
        c.restore_write_times(owner_key(emqx), DEP, earlier)  # its own status, proven: they hold at once
        with pytest.raises(RateLimitedError, match="not sent"):
            await c.update_tls(owner_key(emqx), DEP, "one-way", cert, key)


async def test_an_emqx_429_to_an_unproven_key_blocks_its_namespace_not_the_deployment(emqx: Emulator) -> None:
    async with emqx_client(emqx) as c:
        await emqx.fault("429")
        with pytest.raises(emqx_api.EmqxRateLimited) as limited:
            await c.get_tls(junk_key(emqx, 1), DEP)
        assert limited.value.retry_after == pytest.approx(3600, abs=1)  # no Retry-After: the remote's window
        await advance(emqx, 61)
        with pytest.raises(RateLimitedError, match="not sent"):
            await c.get_tls(junk_key(emqx, 2), DEP)
        with pytest.raises(emqx_api.TLSNotConfigured):
            await c.get_tls(owner_key(emqx), DEP)


async def test_a_key_refused_later_loses_its_proof(emqx: Emulator) -> None:
    leaf = issue("mqtt.example.com")
    async with emqx_client(emqx) as c:
        await c.create_tls(owner_key(emqx), DEP, "one-way", leaf.cert_pem.decode(), leaf.key_pem().decode())
        emqx.state.config.api_secret = "rotated-at-the-remote"
        with pytest.raises(emqx_api.EmqxUnauthorized):
            await c.get_tls(owner_key(emqx), DEP)
        with pytest.raises(emqx_api.EmqxUnauthorized, match="not sent again"):  # this Secret version: no call
            await c.get_tls(owner_key(emqx), DEP)
        rotated = dataclasses.replace(owner_key(emqx), api_secret="rotated-at-the-remote", credentials_id="uid-a:2")
        assert (await c.get_tls(rotated, DEP)).tls_type == "one-way"  # the Secret changed: tried, and it works
    assert [s for _, s in emqx_calls(emqx)] == [200, 401, 200]
