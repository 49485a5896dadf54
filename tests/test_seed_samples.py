"""Every sample answer printed in the providers' pages that is valid JSON parses with the clients' models.

The samples are the project's own test data (`tests/data/*-answers.json`): the suite reads nothing outside the
repository. Samples the pages print with syntax errors were left out there; the mended objects are below.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from certsync import cdn, emqx

DATA = Path(__file__).resolve().parent / "data"  # the sample answers, copied out of the providers' pages


def samples(name: str) -> list[dict[str, Any]]:
    """The valid-JSON sample answers of one provider's pages (tests/data/README.md says where they come from)."""
    found = json.loads((DATA / f"{name}-answers.json").read_text(encoding="utf-8"))
    assert isinstance(found, list) and all(isinstance(body, dict) for body in found)
    return found


def transport_answering(body: dict[str, Any], status: int = 200) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token/"):
            return httpx.Response(200, json={"person_id": 1, "status": 200, "token": "t", "lifetime": 21600000})
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handler)


def test_emqx_samples_parse() -> None:
    found = samples("emqx")
    assert len(found) == 3
    for body in found:
        info = emqx.DeploymentTLSInfo.from_json(body)
        assert info.tls_type == "one-way" and info.status in ("running", "pending")
        assert info.expire is not None and info.expire.isoformat() == "2034-05-22T02:43:21+00:00"


async def test_cdn_samples_parse_through_the_client() -> None:
    found = samples("cdn")
    assert len(found) >= 8
    access = cdn.CdnAccess("https://cdn.invalid", "zpylkbwv", "u", "p")
    for body in found:
        async with cdn.CdnClient(transport=transport_answering(body)) as client:
            if body["status"] != 0:
                with pytest.raises(cdn.CdnApiError) as error:
                    await client.list_certificates(access)
                assert error.value.status == body["status"]
            elif isinstance(body.get("data"), dict) and "seq" in body["data"]:
                assert await client.add_certificate(access, "c", "k", "x") == body["data"]["seq"]
            elif isinstance(body.get("data"), dict) and "task_status" in body["data"]:
                assert await client.letsencrypt_status(access, "r") == body["data"]["task_status"]
            else:
                await client.order_letsencrypt(access, "r")  # {"status": 0, "message": "Success"}


def test_seed_certificate_object_and_chain_info_parse() -> None:
    """The list and details samples are printed with syntax errors; their objects, mended, parse."""
    item = {
        "comment": "july_23",
        "end_timestamp": 1689570782,
        "cn": "*.cdn.sber.cloud",
        "seq": 1,
        "start_timestamp": 1655269983,
        "alt": "*.cdn.sber.cloud, cdn.sber.cloud",
        "issuer": "Go Daddy Secure Certificate Authority - G2",
        "start_iso8601": "2022-06-15T05:13:03Z",
        "end_iso8601": "2023-07-17T05:13:02Z",
        "chain_info": [
            {
                "start_timestamp": 1655269983,
                "end_iso8601": "2023-07-17T05:13:02Z",
                "start_iso8601": "2022-06-15T05:13:03Z",
                "subject_CN": "*.cdn.sber.cloud",
                "fingerprint": "22:C2:D3:6B:6B:EE:AF:D3:1C:61:0A:0A:87:D4:92:F4:83:BE:9B:6A",
                "issuer_CN": "GlobalSign GCC R3 DV TLS CA 2020",
                "serial": "42:D5:2A:6F:9A:D9:E9:D0:49:D7:74:77",
                "end_timestamp": 1689570782,
            },
            {
                "start_timestamp": 1237359600,
                "end_iso8601": "2029-03-18T10:00:00Z",
                "start_iso8601": "2009-03-18T10:00:00Z",
                "subject_CN": "GlobalSign",
                "fingerprint": "D6:9B:56:11:48:F0:1C:77:C5:45:78:C1:09:26:DF:5B:85:69:76:AD",
                "issuer_CN": "GlobalSign",
                "end_timestamp": 1868511600,
            },
        ],
    }
    info = cdn.CdnCertificateInfo.from_json(item)
    assert info.alt == ("*.cdn.sber.cloud", "cdn.sber.cloud") and info.covers(["cdn.sber.cloud"])
    assert info.leaf_fingerprint == "22:C2:D3:6B:6B:EE:AF:D3:1C:61:0A:0A:87:D4:92:F4:83:BE:9B:6A"
    assert info.chain_info is not None and info.chain_info[1].serial == ""


async def test_the_shapes_providers_md_adds_parse() -> None:
    """providers.md, "What EMQX's public material adds" and "What the family's public material adds"."""
    with_cn = {"tlsType": "one-way", "expire": "2034-05-22 02:43:21", "status": "failed", "cn": "mqtt.example.com"}
    info = emqx.DeploymentTLSInfo.from_json(with_cn)
    assert info.cn == "mqtt.example.com" and info.phase == "failed" and info.expire_text == "2034-05-22 02:43:21"
    assert emqx.DeploymentTLSInfo.from_json({**with_cn, "status": "terminated"}).phase == "terminated"
    assert emqx.DeploymentTLSInfo.is_absent({}) and not emqx.DeploymentTLSInfo.is_absent(with_cn)
    string_code = httpx.Response(404, json={"code": "404", "message": "not found"})
    assert emqx.error_for("GET", string_code).remote_code == "404"
    assert isinstance(emqx.error_for("POST", string_code), emqx.DeploymentNotFound)
    older = {"seq": 1, "cn": "*.cdn.sber.cloud", "start": 1655269983, "end": 1689570782}
    assert cdn.CdnCertificateInfo.from_json(older).end_timestamp == 1689570782
    access = cdn.CdnAccess("https://api.cdn.sber.cloud", "zpylkbwv", "u", "p")
    async with cdn.CdnClient(transport=transport_answering({"status": 0, "message": "", "data": older})) as client:
        assert (await client.get_certificate(access, 1)).start_timestamp == 1655269983


def test_the_suite_reads_nothing_outside_the_repository() -> None:
    """A clone of the repository alone must pass: no test, helper or script names the folder beside the clone."""
    repo = Path(__file__).resolve().parents[1]
    outside = re.compile(r"\.\./shared|parents\[2\]\s*/\s*[\"']shared")
    offenders = [
        str(path.relative_to(repo))
        for folder in ("tests", "devkit", "hack", "emulators", "operator", ".ci")
        for path in (repo / folder).rglob("*")
        if path.is_file()
        and path.suffix in {".py", ".sh", ""}
        and path != Path(__file__).resolve()
        and outside.search(path.read_text(encoding="utf-8", errors="replace"))
    ]
    assert offenders == []
