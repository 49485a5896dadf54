"""Each emulator dialect on the wire, read with plain HTTP: what the provider would send, not what a client makes of it."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from cryptography import x509

from devkit.factory import issue
from emulators import cdn as cdn_emulator
from emulators import emqx as emqx_emulator
from emulators.common import start
from tests.conftest import CDN_PASSWORD, CDN_USER, EMQX_KEY, EMQX_SECRET

DEP = "ge6a1a75"
Serve = Callable[..., Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start an emulator (EMQX or CDN, from its config) on loopback; all are stopped at the end."""
    running = []

    async def serve_one(config: emqx_emulator.EmqxConfig | cdn_emulator.CdnConfig) -> str:
        if isinstance(config, emqx_emulator.EmqxConfig):
            app = emqx_emulator.build_app(emqx_emulator.EmqxState(config))
        else:
            app = cdn_emulator.build_app(cdn_emulator.CdnState(config))
        running.append(await start(app))
        return running[-1].url

    yield serve_one
    for emulator in running:
        await emulator.stop()


def emqx_config(*dialects: str, **options: Any) -> emqx_emulator.EmqxConfig:
    return emqx_emulator.EmqxConfig(EMQX_KEY, EMQX_SECRET, [DEP], dialects=frozenset(dialects), **options)


def tls_body(days_left: int = 90) -> dict[str, str]:
    leaf = issue("mqtt.example.com", not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=days_left))
    return {"tlsType": "one-way", "cert": leaf.cert_pem.decode(), "key": leaf.key_pem().decode()}


async def test_emqx_seed_dialect_says_why_a_404(serve: Serve) -> None:
    url = await serve(emqx_config())
    async with httpx.AsyncClient(base_url=url, auth=(EMQX_KEY, EMQX_SECRET)) as http:
        absent = await http.get(f"/deployments/{DEP}/tls")
        unknown = await http.get("/deployments/nosuchdep/tls")
        wrong = await http.get(f"/deployments/{DEP}/tls", auth=(EMQX_KEY, "wrong"))
    assert absent.status_code == 404 and absent.json() == {
        "code": 404,
        "message": "TLS is not configured for this deployment",
    }
    assert unknown.status_code == 404 and unknown.json()["message"] == "deployment not found"
    assert wrong.json()["code"] == 401


async def test_emqx_bare_404_empty_200_and_string_code(serve: Serve) -> None:
    bare = await serve(emqx_config("bare-404", "string-code"))
    empty = await serve(emqx_config("empty-200"))
    async with httpx.AsyncClient(auth=(EMQX_KEY, EMQX_SECRET)) as http:
        for path in (f"/deployments/{DEP}/tls", "/deployments/nosuchdep/tls"):
            answer = await http.get(bare + path)
            assert answer.status_code == 404 and answer.content == b""
        create = await http.post(bare + "/deployments/nosuchdep/tls", json=tls_body())
        assert create.status_code == 404 and create.json() == {"code": "404", "message": "deployment not found"}
        refused = await http.post(f"{bare}/deployments/{DEP}/tls", json=tls_body(days_left=10))
        assert refused.status_code == 422 and refused.json()["code"] == "422"
        assert (await http.delete(f"{bare}/deployments/{DEP}/tls")).content == b""
        absent = await http.get(f"{empty}/deployments/{DEP}/tls")
        assert absent.status_code == 200 and absent.json() == {}
        assert (await http.delete(f"{empty}/deployments/{DEP}/tls")).status_code == 404


async def test_emqx_async_delete_cn_expire_offset_and_failed(serve: Serve) -> None:
    config = emqx_config(
        "async-delete", "cn", pending_seconds=0, terminate_seconds=60, expire_offset_hours=8,
        failing_deployments=frozenset({"dep2"}),
    )  # fmt: skip
    config.deployments.append("dep2")
    state = emqx_emulator.EmqxState(config)
    running = await start(emqx_emulator.build_app(state))
    body = tls_body()
    try:
        async with httpx.AsyncClient(base_url=running.url, auth=(EMQX_KEY, EMQX_SECRET)) as http:
            created = (await http.post(f"/deployments/{DEP}/tls", json=body)).json()
            not_after = x509.load_pem_x509_certificate(body["cert"].encode()).not_valid_after_utc
            assert created["expire"] == (not_after + dt.timedelta(hours=8)).strftime("%Y-%m-%d %H:%M:%S")
            assert created["cn"] == "mqtt.example.com" and created["status"] == "running"
            assert (await http.delete(f"/deployments/{DEP}/tls")).status_code == 204
            assert (await http.get(f"/deployments/{DEP}/tls")).json()["status"] == "terminated"
            again = await http.post(f"/deployments/{DEP}/tls", json=body)
            assert again.status_code == 422 and "being deleted" in again.json()["message"]
            assert (await http.put(f"/deployments/{DEP}/tls", json=body)).status_code == 422
            assert (await http.delete(f"/deployments/{DEP}/tls")).status_code == 204
            state.core.offset += 59
            assert (await http.get(f"/deployments/{DEP}/tls")).json()["status"] == "terminated"
            state.core.offset += 1
            assert (await http.get(f"/deployments/{DEP}/tls")).status_code == 404
            assert (await http.post(f"/deployments/{DEP}/tls", json=body)).status_code == 200
            failed = (await http.post("/deployments/dep2/tls", json=body)).json()
            assert failed["status"] == "failed" and failed["message"] == emqx_emulator.FAILED_MESSAGE
    finally:
        await running.stop()


def test_unknown_dialects_are_refused() -> None:
    with pytest.raises(ValueError, match="known: bare-404"):
        emqx_config("bare-405")
    with pytest.raises(ValueError, match="unknown CDN dialect"):
        cdn_config("token")


def cdn_config(*dialects: str) -> cdn_emulator.CdnConfig:
    return cdn_emulator.CdnConfig("acct1", CDN_USER, CDN_PASSWORD, dialects=frozenset(dialects))


async def login(http: httpx.AsyncClient, url: str, password: str = CDN_PASSWORD) -> httpx.Response:
    return await http.post(f"{url}/app/oauth/v1/token/", data={"username": CDN_USER, "password": password})


async def test_cdn_login_dialects(serve: Serve) -> None:
    seed = await serve(cdn_config())
    odd = await serve(cdn_config("auth-token", "bare-login-errors"))
    async with httpx.AsyncClient() as http:
        assert set((await login(http, seed)).json()) == {"person_id", "status", "token", "lifetime"}
        assert set((await login(http, odd)).json()) == {"person_id", "status", "auth_token", "lifetime"}
        assert (await login(http, seed, "wrong")).json()["status"] == 401
        for attempt in range(7):
            refused = await login(http, odd, f"wrong-{attempt}")
            assert refused.status_code == 401 and refused.content == b""
        banned = await login(http, odd)
        assert banned.status_code == 403 and banned.content == b""


@pytest.mark.parametrize(
    ("dialect", "status", "envelope"), [("", 401, 401), ("expired-405", 405, 405), ("expired-455", 200, 455)]
)
async def test_cdn_expired_token_dialects(serve: Serve, dialect: str, status: int, envelope: int) -> None:
    config = cdn_config(*([dialect] if dialect else []))
    state = cdn_emulator.CdnState(config)
    running = await start(cdn_emulator.build_app(state))
    try:
        async with httpx.AsyncClient(base_url=running.url) as http:
            token = (await login(http, running.url)).json()["token"]
            listing = "/app/ssl/v1/account/acct1/certificate/"
            assert (await http.get(listing, headers={"CDN-AUTH-TOKEN": token})).json()["status"] == 0
            state.core.offset += 6 * 3600  # the token's six hours are over
            expired = await http.get(listing, headers={"CDN-AUTH-TOKEN": token})
            assert expired.status_code == status and expired.json()["status"] == envelope
            unknown = await http.get(listing, headers={"CDN-AUTH-TOKEN": "never-issued"})
            assert unknown.status_code == status
    finally:
        await running.stop()


@pytest.mark.parametrize(
    ("dialects", "start_key", "kind", "get_is_object"),
    [((), "start_timestamp", int, False), (("start-end",), "start", int, False),
     (("string-times", "get-object"), "start_timestamp", str, True)],
)  # fmt: skip
async def test_cdn_certificate_shapes(
    serve: Serve, dialects: tuple[str, ...], start_key: str, kind: type, get_is_object: bool
) -> None:
    config = cdn_config(*dialects)
    state = cdn_emulator.CdnState(config)
    root = issue("Dialect Root CA", ca=True)
    state.trusted.append(root.cert)
    leaf = issue("www.shop.example", issuer=root)
    running = await start(cdn_emulator.build_app(state))
    try:
        async with httpx.AsyncClient(base_url=running.url + "/app/ssl/v1/account/acct1/") as http:
            http.headers["CDN-AUTH-TOKEN"] = (await login(http, running.url)).json()["token"]
            body = {"certificate": leaf.cert_pem.decode(), "private_key": leaf.key_pem().decode(), "comment": "c"}
            seq = (await http.post("certificate/", json=body)).json()["data"]["seq"]
            listed = (await http.get("certificate/")).json()["data"][0]
            got = (await http.get(f"certificate/{seq}?details")).json()["data"]
    finally:
        await running.stop()
    end_key = start_key.replace("start", "end")
    assert isinstance(listed[start_key], kind) and isinstance(listed[end_key], kind)
    assert int(listed[end_key]) == int(leaf.cert.not_valid_after_utc.timestamp())
    other = {"start", "end", "start_timestamp", "end_timestamp"} - {start_key, end_key}
    assert not other & set(listed)
    assert isinstance(got, dict) == get_is_object
    item = got if get_is_object else got[0]
    assert isinstance(item["chain_info"][0][start_key], kind)
