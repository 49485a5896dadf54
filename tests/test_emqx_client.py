"""The EMQX client against its emulator on a loopback socket: every documented answer, in every dialect.

The tests that read answers run once per dialect of the emulator (`DIALECT_SETS`): the
same client must work whether "absent" is a 404 with a message, a bare 404 or `{}`,
whether DELETE is asynchronous, `code` a string, `expire` in UTC+8.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from certsync import emqx as api
from certsync.budget import Window
from certsync.remote import RateLimitedError, RetryPolicy, ServiceUnavailable, TransportError

from devkit.factory import NOW, issue, three_level
from emulators.common import start
from emulators.emqx import DIALECTS, FAILED_MESSAGE, EmqxConfig, EmqxState, build_app
from tests.conftest import EMQX_KEY, EMQX_SECRET, Emulator

DEP = "ge6a1a75"
TERMINATE_S = 20.0
DIALECT_SETS: dict[str, dict[str, Any]] = {
    "seed": {},
    "bare-404": {"dialects": {"bare-404"}},
    "empty-200": {"dialects": {"empty-200"}},
    "async-delete": {"dialects": {"async-delete"}},
    "cn+string-code": {"dialects": {"cn", "string-code"}},
    "utc+8": {"expire_offset_hours": 8.0},
    "all": {"dialects": set(DIALECTS) - {"bare-404"}, "expire_offset_hours": 8.0},
}


@pytest.fixture(params=list(DIALECT_SETS), ids=list(DIALECT_SETS))
async def emqx_dialect(request: pytest.FixtureRequest) -> AsyncIterator[Emulator]:
    options = dict(DIALECT_SETS[request.param])
    options["dialects"] = frozenset(options.get("dialects", ()))
    config = EmqxConfig(
        EMQX_KEY,
        EMQX_SECRET,
        [DEP, "dep2"],
        pending_seconds=30,
        terminate_seconds=TERMINATE_S,
        write_limit=100,  # these tests are about shapes; the budget has its own tests below
        **options,
    )
    state = EmqxState(config)
    running = await start(build_app(state))
    yield Emulator(running.url, state)
    await running.stop()


def access(emulator: Emulator, key: str = EMQX_KEY, secret: str = EMQX_SECRET, namespace: str = "") -> api.EmqxAccess:
    return api.EmqxAccess(emulator.url, key, secret, namespace=namespace, credentials_id=f"{key}-uid:1")


async def no_sleep(_: float) -> None:
    return None


def client(emulator: Emulator, **kwargs: object) -> api.EmqxClient:
    return api.EmqxClient(budget=emulator.budget(), sleep=no_sleep, **kwargs)  # type: ignore[arg-type]


def dialects(emulator: Emulator) -> frozenset[str]:
    return frozenset(emulator.state.config.dialects)


async def test_absent_create_pending_running_update_and_delete(emqx_dialect: Emulator) -> None:
    emqx = emqx_dialect
    offset = dt.timedelta(hours=emqx.state.config.expire_offset_hours)
    leaf = issue("mqtt.example.com")
    async with client(emqx, write_window=Window(100, 3600)) as c:
        with pytest.raises(api.TLSNotConfigured) as absent:
            await c.get_tls(access(emqx), DEP)
        assert absent.value.reason == "RemoteNotFound"
        created = await c.create_tls(access(emqx), DEP, "one-way", leaf.cert_pem.decode(), leaf.key_pem().decode())
        assert created.status == "pending" and created.phase == "pending" and created.tls_type == "one-way"
        # `expire` has no zone: read as UTC it is off by the remote's zone, which is why it never decides a write
        assert created.expire == leaf.cert.not_valid_after_utc + offset
        assert created.expire is not None and created.expire.tzinfo == dt.UTC
        assert created.cn == ("mqtt.example.com" if "cn" in dialects(emqx) else "")
        assert (await c.get_tls(access(emqx), DEP)).status == "pending"
        await emqx.control("POST", "clock", {"advance": 31})
        running = await c.get_tls(access(emqx), DEP)
        assert running.phase == "running" and running.expire_text == created.expire_text and running.message == ""
        with pytest.raises(api.EmqxInvalidParameters, match="422") as exists:
            await c.create_tls(access(emqx), DEP, "one-way", leaf.cert_pem.decode(), leaf.key_pem().decode())
        assert exists.value.remote_code == "422" and not exists.value.retryable
        other = issue("mqtt2.example.com", key_kind="rsa")
        updated = await c.update_tls(access(emqx), DEP, "one-way", other.cert_pem.decode(), other.key_pem().decode())
        assert updated.status == "pending"
        await c.delete_tls(access(emqx), DEP)
        if "async-delete" in dialects(emqx):
            terminating = await c.get_tls(access(emqx), DEP)
            assert terminating.phase == "terminated"
            with pytest.raises(api.EmqxInvalidParameters, match="being deleted"):
                await c.create_tls(access(emqx), DEP, "one-way", leaf.cert_pem.decode(), leaf.key_pem().decode())
            await emqx.control("POST", "clock", {"advance": TERMINATE_S})
        with pytest.raises(api.TLSNotConfigured):
            await c.get_tls(access(emqx), DEP)
        with pytest.raises(api.TLSNotConfigured):
            await c.delete_tls(access(emqx), DEP)  # already gone: the lead's deletion counts it as removed
        with pytest.raises(api.TLSNotConfigured):
            await c.update_tls(access(emqx), DEP, "one-way", leaf.cert_pem.decode(), leaf.key_pem().decode())
        recreated = await c.create_tls(access(emqx), DEP, "one-way", leaf.cert_pem.decode(), leaf.key_pem().decode())
        assert recreated.phase == "pending"


async def test_two_way_needs_cacert_and_takes_a_chain(emqx_dialect: Emulator) -> None:
    emqx = emqx_dialect
    chain = three_level("mqtt.example.com", key_kind="ec")
    ca = issue("Client CA", ca=True)
    async with client(emqx) as c:
        with pytest.raises(api.EmqxInvalidParameters, match="cacert"):
            await c.create_tls(access(emqx), DEP, "two-way", chain.pem.decode(), chain.leaf.key_pem().decode())
        info = await c.create_tls(
            access(emqx), DEP, "two-way", chain.pem.decode(), chain.leaf.key_pem().decode(), ca.cert_pem.decode()
        )
        assert info.tls_type == "two-way"
    assert (await emqx.control("GET", f"tls/{DEP}"))["hasCacert"] is True


async def test_auth_scope_and_a_missing_deployment(emqx_dialect: Emulator) -> None:
    emqx = emqx_dialect
    leaf = issue("mqtt.example.com")
    async with client(emqx) as c:
        with pytest.raises(api.EmqxUnauthorized) as unauthorized:
            await c.get_tls(access(emqx, secret="wrong-secret-123", namespace="wrong"), DEP)
        assert unauthorized.value.reason == "CredentialsInvalid" and unauthorized.value.remote_code == "401"
        with pytest.raises(api.EmqxForbidden):
            await c.get_tls(access(emqx, "unscoped-key", "unscoped-secret", namespace="unscoped"), DEP)
        # A GET cannot tell a missing deployment from one without TLS; the create that follows can.
        with pytest.raises(api.TLSNotConfigured):
            await c.get_tls(access(emqx), "nosuchdep")
        with pytest.raises(api.DeploymentNotFound) as missing:
            await c.create_tls(access(emqx), "nosuchdep", "one-way", leaf.cert_pem.decode(), leaf.key_pem().decode())
        assert missing.value.reason == "RemoteNotFound" and missing.value.status == 404
        with pytest.raises(api.EmqxInvalidParameters):
            await c.create_tls(access(emqx), DEP, "one-way", leaf.cert_pem.decode(), issue("y").key_pem().decode())
    for error in (unauthorized.value, missing.value):
        assert EMQX_SECRET not in str(error) and "wrong-secret-123" not in str(error)


async def test_a_failing_deployment_ends_failed_with_the_remotes_message(emqx_dialect: Emulator) -> None:
    emqx = emqx_dialect
    emqx.state.config.failing_deployments = frozenset({"dep2"})
    leaf = issue("mqtt.example.com")
    async with client(emqx) as c:
        created = await c.create_tls(access(emqx), "dep2", "one-way", leaf.cert_pem.decode(), leaf.key_pem().decode())
        assert created.phase == "pending"
        await emqx.control("POST", "clock", {"advance": 31})
        failed = await c.get_tls(access(emqx), "dep2")
        assert failed.phase == "failed" and failed.status == "failed" and failed.message == FAILED_MESSAGE
        await c.create_tls(access(emqx), DEP, "one-way", leaf.cert_pem.decode(), leaf.key_pem().decode())
        await emqx.control("POST", "clock", {"advance": 31})
        assert (await c.get_tls(access(emqx), DEP)).phase == "running"  # only the chosen deployment fails


CERTIFICATE_REQUIREMENTS = [
    ("ed25519", {"key_kind": "ed25519"}, "unsupported key type"),
    ("rsa-4096", {"key_kind": "rsa4096"}, "unsupported key type"),
    ("p-521", {"key_kind": "p521"}, "unsupported key type"),
    ("10-days-left", {"not_after": NOW + dt.timedelta(days=10)}, "within 60 days"),
    ("59-days-left", {"not_after": NOW + dt.timedelta(days=59)}, "within 60 days"),
    ("not-yet-valid", {"not_before": NOW + dt.timedelta(days=1), "not_after": NOW + dt.timedelta(days=90)},
     "not valid yet"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "options", "message"), CERTIFICATE_REQUIREMENTS, ids=[c[0] for c in CERTIFICATE_REQUIREMENTS]
)
async def test_the_emulator_refuses_what_emqx_refuses_with_422(
    emqx: Emulator, name: str, options: dict[str, Any], message: str
) -> None:
    leaf = issue("mqtt.example.com", **options)
    async with client(emqx) as c:
        with pytest.raises(api.EmqxInvalidParameters, match=message) as refused:
            await c.create_tls(access(emqx), DEP, "one-way", leaf.cert_pem.decode(), leaf.key_pem().decode())
    assert refused.value.status == 422 and refused.value.reason == "RemoteRejected"


async def test_the_emulator_refuses_a_leaf_whose_key_algorithm_differs_from_its_issuers(emqx: Emulator) -> None:
    mixed = three_level("mqtt.example.com", key_kind="rsa")  # RSA leaf under an ECDSA intermediate
    async with client(emqx) as c:
        with pytest.raises(api.EmqxInvalidParameters, match="key algorithm"):
            await c.create_tls(access(emqx), DEP, "one-way", mixed.pem.decode(), mixed.leaf.key_pem().decode())
        alone = mixed.leaf.cert_pem.decode()  # without its issuer there is nothing to compare with
        await c.create_tls(access(emqx), DEP, "one-way", alone, mixed.leaf.key_pem().decode())


@pytest.mark.parametrize("key_kind", ["rsa1024", "rsa", "ec", "p384"])
async def test_the_emulator_takes_every_key_emqx_takes(emqx: Emulator, key_kind: str) -> None:
    leaf = issue("mqtt.example.com", key_kind=key_kind, not_after=NOW + dt.timedelta(days=61))
    async with client(emqx) as c:
        info = await c.create_tls(
            access(emqx), DEP, "one-way", leaf.cert_pem.decode(), leaf.key_pem("traditional").decode()
        )
    assert info.phase == "pending"


async def test_a_body_that_is_not_an_object_is_a_400(emqx: Emulator) -> None:
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{emqx.url}/deployments/{DEP}/tls", auth=(EMQX_KEY, EMQX_SECRET), content=b"[1]")
    assert answer.status_code == 400
    error = api.error_for("POST", answer)
    assert isinstance(error, api.EmqxBadRequest) and not error.retryable and error.reason == "RemoteRejected"


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


@pytest.mark.parametrize(
    ("method", "status", "body", "expected", "code"),
    [
        ("GET", 404, {"code": 404, "message": "TLS is not configured"}, api.TLSNotConfigured, "404"),
        ("GET", 404, None, api.TLSNotConfigured, ""),  # a bare 404: absent all the same
        ("GET", 404, {"code": "404", "message": "deployment not found"}, api.TLSNotConfigured, "404"),
        ("DELETE", 404, {"code": 404, "message": "not found"}, api.TLSNotConfigured, "404"),
        ("PUT", 404, None, api.TLSNotConfigured, ""),
        ("POST", 404, {"code": 404, "message": "TLS is not configured"}, api.DeploymentNotFound, "404"),
        ("POST", 404, None, api.DeploymentNotFound, ""),
        ("POST", 400, {"code": "400", "message": "invalid request"}, api.EmqxBadRequest, "400"),
        ("PUT", 422, {"code": "E4220", "message": "bad cert"}, api.EmqxInvalidParameters, "E4220"),
        ("GET", 401, {"code": 401, "message": "nope"}, api.EmqxUnauthorized, "401"),
        ("GET", 403, {"code": True, "message": "scope"}, api.EmqxForbidden, ""),
        ("GET", 429, {"code": 429}, api.EmqxRateLimited, "429"),
        ("GET", 500, b"<html>oops</html>", api.EmqxServerError, ""),
        ("GET", 418, {"message": "teapot"}, api.EmqxError, ""),  # a 4xx nobody documents: a refusal
        ("GET", 408, None, api.EmqxServerError, ""),
    ],
)
def test_one_place_says_what_each_answer_means(
    method: str, status: int, body: Any, expected: type[api.EmqxError], code: str
) -> None:
    if body is None:
        response = httpx.Response(status)
    elif isinstance(body, bytes):
        response = httpx.Response(status, content=body)
    else:
        response = httpx.Response(status, json=body)
    error = api.error_for(method, response)
    assert type(error) is expected and error.status == status and error.remote_code == code
    assert error.retryable == (expected in (api.EmqxRateLimited, api.EmqxServerError))


@pytest.mark.parametrize(
    ("status", "phase"),
    [("pending", "pending"), ("running", "running"), ("failed", "failed"), ("terminated", "terminated"),
     (" Running ", "running"), ("deleting", "unknown"), ("", "unknown")],
)  # fmt: skip
def test_status_phases(status: str, phase: str) -> None:
    assert api.phase(status) == phase


async def test_empty_and_odd_200s() -> None:
    answers: list[Any] = [
        {},
        {"tlsType": "", "status": "", "expire": ""},
        {"tlsType": "one-way"},
        [1],
        {"tlsType": "", "status": "terminated"},
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answers.pop(0))

    where = api.EmqxAccess("https://cloud-intl.emqx.com/public_api/v1", "k", "s")
    async with api.EmqxClient(transport=httpx.MockTransport(handler)) as c:
        for _ in range(2):
            with pytest.raises(api.TLSNotConfigured):
                await c.get_tls(where, DEP)
        for _ in range(2):  # half an answer is not "absent": it is an answer the client cannot read
            with pytest.raises(api.EmqxUnexpectedAnswer):
                await c.get_tls(where, DEP)
        terminating = await c.get_tls(where, DEP)  # a status without a tlsType is still an answer
        assert terminating.phase == "terminated" and terminating.tls_type == ""
