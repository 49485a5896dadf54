"""The EMQX client against its emulator on a loopback socket: every documented answer."""

from __future__ import annotations

import datetime as dt

import pytest
from certsync import emqx as api
from certsync.budget import Window
from certsync.remote import RateLimitedError, RetryPolicy, ServiceUnavailable, TransportError

from devkit.factory import issue, three_level
from emulators.emqx import EmqxConfig
from tests.conftest import EMQX_KEY, EMQX_SECRET, Emulator

DEP = "ge6a1a75"


def access(emulator: Emulator, key: str = EMQX_KEY, secret: str = EMQX_SECRET) -> api.EmqxAccess:
    return api.EmqxAccess(emulator.url, key, secret)


async def no_sleep(_: float) -> None:
    return None


def client(emulator: Emulator, **kwargs: object) -> api.EmqxClient:
    return api.EmqxClient(budget=emulator.budget(), sleep=no_sleep, **kwargs)  # type: ignore[arg-type]


async def test_create_pending_then_running_and_expire_in_utc(emqx: Emulator) -> None:
    leaf = issue("mqtt.example.com")
    async with client(emqx) as c:
        with pytest.raises(api.TLSNotConfigured):
            await c.get_tls(access(emqx), DEP)
        created = await c.create_tls(access(emqx), DEP, "one-way", leaf.cert_pem.decode(), leaf.key_pem().decode())
        assert created.status == "pending" and created.tls_type == "one-way"
        assert created.expire == leaf.cert.not_valid_after_utc
        assert created.expire is not None and created.expire.tzinfo == dt.UTC
        assert (await c.get_tls(access(emqx), DEP)).status == "pending"
        await emqx.control("POST", "clock", {"advance": 31})
        assert (await c.get_tls(access(emqx), DEP)).status == "running"
        with pytest.raises(api.EmqxInvalidParameters, match="422"):
            await c.create_tls(access(emqx), DEP, "one-way", leaf.cert_pem.decode(), leaf.key_pem().decode())
        other = issue("mqtt2.example.com", key_kind="rsa")
        updated = await c.update_tls(access(emqx), DEP, "one-way", other.cert_pem.decode(), other.key_pem().decode())
        assert updated.status == "pending"
        await c.delete_tls(access(emqx), DEP)
        with pytest.raises(api.TLSNotConfigured):
            await c.delete_tls(access(emqx), DEP)
    assert emqx.counts() == {
        "GET /deployments/{deployment_id}/tls": 3,
        "POST /deployments/{deployment_id}/tls": 2,
        "PUT /deployments/{deployment_id}/tls": 1,
        "DELETE /deployments/{deployment_id}/tls": 2,
    }


async def test_two_way_needs_cacert_and_takes_a_chain(emqx: Emulator) -> None:
    chain = three_level("mqtt.example.com", key_kind="rsa")
    ca = issue("Client CA", ca=True)
    async with client(emqx) as c:
        with pytest.raises(api.EmqxInvalidParameters, match="cacert"):
            await c.create_tls(access(emqx), DEP, "two-way", chain.pem.decode(), chain.leaf.key_pem().decode())
        info = await c.create_tls(
            access(emqx), DEP, "two-way", chain.pem.decode(), chain.leaf.key_pem().decode(), ca.cert_pem.decode()
        )
        assert info.tls_type == "two-way"
    assert (await emqx.control("GET", f"tls/{DEP}"))["hasCacert"] is True


async def test_auth_scope_and_not_found(emqx: Emulator) -> None:
    async with client(emqx) as c:
        with pytest.raises(api.EmqxUnauthorized) as unauthorized:
            await c.get_tls(access(emqx, secret="wrong-secret-123"), DEP)
        assert unauthorized.value.reason == "CredentialsInvalid"
        with pytest.raises(api.EmqxForbidden):
            await c.get_tls(access(emqx, "unscoped-key", "unscoped-secret"), DEP)
        with pytest.raises(api.DeploymentNotFound) as missing:
            await c.get_tls(access(emqx), "nosuchdep")
        assert missing.value.reason == "RemoteNotFound"
        bad_key = issue("x.example.com")
        with pytest.raises(api.EmqxInvalidParameters):
            await c.create_tls(access(emqx), DEP, "one-way", bad_key.cert_pem.decode(), issue("y").key_pem().decode())
    for error in (unauthorized.value, missing.value):
        assert EMQX_SECRET not in str(error) and "wrong-secret-123" not in str(error)


async def test_write_budget_refuses_the_seventh_write_without_sending(emqx: Emulator) -> None:
    leaf = issue("mqtt.example.com")
    cert, key = leaf.cert_pem.decode(), leaf.key_pem().decode()
    async with client(emqx) as c:
        await c.create_tls(access(emqx), DEP, "one-way", cert, key)
        for _ in range(5):
            await c.update_tls(access(emqx), DEP, "one-way", cert, key)
        with pytest.raises(RateLimitedError) as refused:
            await c.update_tls(access(emqx), DEP, "one-way", cert, key)
        assert refused.value.retry_after is not None and 3500 < refused.value.retry_after <= 3600
        # reads have their own budget, and the other deployment its own
        assert (await c.get_tls(access(emqx), DEP)).status == "pending"
        await c.create_tls(access(emqx), "dep2", "one-way", cert, key)
        await emqx.control("POST", "clock", {"advance": 3601})
        await c.update_tls(access(emqx), DEP, "one-way", cert, key)
    writes = [x for x in emqx.state.core.calls if x.method != "GET" and x.path.startswith(f"/deployments/{DEP}")]
    assert len(writes) == 7 and all(x.status == 200 for x in writes)


@pytest.mark.parametrize("emqx_config", [EmqxConfig(EMQX_KEY, EMQX_SECRET, [DEP], write_limit=1)])
async def test_remote_429_with_retry_after_blocks_the_scope(emqx: Emulator) -> None:
    leaf = issue("mqtt.example.com")
    async with client(emqx, write_window=Window(100, 3600)) as c:
        await c.create_tls(access(emqx), DEP, "one-way", leaf.cert_pem.decode(), leaf.key_pem().decode())
        with pytest.raises(api.EmqxRateLimited) as limited:
            await c.update_tls(access(emqx), DEP, "one-way", leaf.cert_pem.decode(), leaf.key_pem().decode())
        assert limited.value.retry_after is not None and 3590 < limited.value.retry_after <= 3600
        with pytest.raises(RateLimitedError, match="not sent"):
            await c.update_tls(access(emqx), DEP, "one-way", leaf.cert_pem.decode(), leaf.key_pem().decode())
    assert [x.status for x in emqx.state.core.calls] == [200, 429]


async def test_injected_429_without_retry_after_waits_for_the_window(emqx: Emulator) -> None:
    async with client(emqx) as c:
        await emqx.fault("429")
        with pytest.raises(api.EmqxRateLimited) as limited:
            await c.get_tls(access(emqx), DEP)
        assert limited.value.retry_after is not None and limited.value.retry_after > 3500
        await emqx.fault("429", retryAfter=7)
        async with client(emqx) as fresh:
            with pytest.raises(api.EmqxRateLimited) as short_wait:
                await fresh.get_tls(access(emqx), DEP)
        assert short_wait.value.retry_after == pytest.approx(7, abs=1)


async def test_503_is_retried_with_backoff_then_succeeds_or_gives_up(emqx: Emulator) -> None:
    delays: list[float] = []

    async def record(delay: float) -> None:
        delays.append(delay)

    policy = RetryPolicy(attempts=3, base_delay=0.01)
    async with api.EmqxClient(budget=emqx.budget(), sleep=record, retry=policy) as c:
        await emqx.fault("503", count=2)
        with pytest.raises(api.TLSNotConfigured):
            await c.get_tls(access(emqx), DEP)
        assert len(delays) == 2 and all(0 <= d <= 0.02 for d in delays)
        await emqx.fault("503", count=3)
        with pytest.raises(ServiceUnavailable):
            await c.get_tls(access(emqx), DEP)
    assert [x.status for x in emqx.state.core.calls] == [503, 503, 404, 503, 503, 503]


async def test_dropped_connection_and_timeout_are_transport_errors(emqx: Emulator) -> None:
    import httpx

    async with client(emqx, retry=RetryPolicy(attempts=1)) as c:
        await emqx.fault("drop")
        with pytest.raises(TransportError) as dropped:
            await c.get_tls(access(emqx), DEP)
        assert dropped.value.retryable and dropped.value.reason == "RemoteUnavailable"
    async with client(emqx, retry=RetryPolicy(attempts=1), timeout=httpx.Timeout(0.2)) as c:
        await emqx.fault("latency", seconds=1.0)
        with pytest.raises(TransportError, match="timed out"):
            await c.get_tls(access(emqx), DEP)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 500])
@pytest.mark.parametrize("as_text", [False, True])
async def test_an_echoing_remote_leaks_neither_secret_nor_key(status: int, as_text: bool) -> None:
    """Each error's message is the remote's, scrubbed of the call's secrets before it is cut."""
    import base64

    import httpx
    from certsync import emqx as api
    from certsync.remote import NO_RETRY

    from devkit.factory import issue

    secret, cert = "emqx-api-secret-echoed-Zz81", issue("echo.example.com")
    key = cert.key_pem().decode()

    def echo(request: httpx.Request) -> httpx.Response:
        said = f"{request.headers.get('Authorization')} sent {request.content.decode()}"
        return httpx.Response(status, text=said) if as_text else httpx.Response(status, json={"message": said})

    access = api.EmqxAccess("https://emqx.test/api", "key", secret)
    async with api.EmqxClient(transport=httpx.MockTransport(echo), retry=NO_RETRY) as c:
        with pytest.raises(api.EmqxError) as error:
            await c.create_tls(access, "ge6a1a75", "one-way", cert.cert_pem.decode(), key)
    text = f"{error.value} {error.value.remote_message}"
    body = "".join(line for line in key.splitlines() if not line.startswith("-----"))
    assert secret not in text and base64.b64encode(f"key:{secret}".encode()).decode() not in text
    assert not [body[i : i + 16] for i in range(len(body) - 15) if body[i : i + 16] in text]
    assert "[redacted]" in text and error.value.status == status
