"""The emulators' write latency: a write is applied after it, also when its client is gone by then."""

from __future__ import annotations

import httpx
import pytest

from devkit.factory import issue, three_level
from tests.conftest import CDN_PASSWORD, CDN_USER, EMQX_KEY, EMQX_SECRET, Emulator
from tests.test_remote_concurrency import until


async def test_a_held_emqx_write_lands_after_its_client_gave_up(emqx: Emulator) -> None:
    await emqx.control("POST", "write-latency", {"seconds": 0.3})
    cert = issue("mqtt.example.com")
    body = {"tlsType": "one-way", "cert": cert.cert_pem.decode(), "key": cert.key_pem().decode()}
    async with httpx.AsyncClient(auth=(EMQX_KEY, EMQX_SECRET)) as http:
        with pytest.raises(httpx.TimeoutException):  # the client gives up (a kill -9 would, too)
            await http.post(f"{emqx.url}/deployments/ge6a1a75/tls", json=body, timeout=0.05)
    assert "ge6a1a75" not in emqx.state.tls  # held: not applied yet
    await until("the held write to land", lambda: "ge6a1a75" in emqx.state.tls, timeout=5)


async def test_a_held_cdn_add_lands_after_its_client_gave_up(cdn: Emulator) -> None:
    chain = three_level("www.shop.example")
    cdn.state.trusted.append(chain.root.cert)
    await cdn.control("POST", "write-latency", {"seconds": 0.3})
    async with httpx.AsyncClient() as http:
        login = await http.post(f"{cdn.url}/app/oauth/v1/token/", data={"username": CDN_USER, "password": CDN_PASSWORD})
        headers = {"CDN-AUTH-TOKEN": login.json()["token"]}
        body = {"certificate": chain.pem.decode(), "private_key": chain.leaf.key_pem().decode(), "comment": "c"}
        with pytest.raises(httpx.TimeoutException):
            await http.post(
                f"{cdn.url}/app/ssl/v1/account/acct1/certificate/", json=body, headers=headers, timeout=0.05
            )
    assert not cdn.state.certificates
    await until("the held add to land", lambda: bool(cdn.state.certificates), timeout=5)


async def test_write_latency_refuses_what_is_not_a_number_of_seconds(emqx: Emulator, cdn: Emulator) -> None:
    for emulator in (emqx, cdn):
        async with httpx.AsyncClient() as http:
            for bad in ({"seconds": -1}, {"seconds": "2"}, {"seconds": True}, {}):
                answer = await http.post(f"{emulator.url}/_emulator/write-latency", json=bad)
                assert answer.status_code == 400, (emulator.url, bad)
