"""The CDN client against its emulator on a loopback socket: auth, every API status code, Let's Encrypt.

Every test runs once per dialect of the emulator in `DIALECT_SETS`: certificate
times as `start_timestamp`/`end_timestamp` or `start`/`end`, numbers or numeric
strings, `get` answering an array of one or the object. (The login dialects —
`auth-token`, `bare-login-errors`, `expired-405`, `expired-455` — join the list
with the client's authentication work; their emulator side is tested in
test_emulator_dialects.py.)
"""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
from certsync import cdn as api
from certsync import pki
from certsync.remote import RateLimitedError, RetryPolicy, ServiceUnavailable, TransportError

from devkit.factory import NOW, issue, three_level
from emulators.cdn import CdnConfig
from tests.conftest import CDN_PASSWORD, CDN_USER, Emulator

LOGIN = "POST /app/oauth/v1/token/"
LIST = "GET /app/ssl/v1/account/{account}/certificate/"
DIALECT_SETS: dict[str, set[str]] = {
    "seed": set(),
    "start-end": {"start-end"},
    "string-times+get-object": {"string-times", "get-object"},
    "start-end+string-times+get-object": {"start-end", "string-times", "get-object"},
}


@pytest.fixture(params=list(DIALECT_SETS), ids=list(DIALECT_SETS))
def cdn_config(cdn_config: CdnConfig, request: pytest.FixtureRequest) -> CdnConfig:
    """The shared emulator configuration, speaking one dialect."""
    cdn_config.dialects = frozenset(DIALECT_SETS[request.param])
    return cdn_config


async def no_sleep(_: float) -> None:
    return None


def access(emulator: Emulator, **overrides: str) -> api.CdnAccess:
    fields = {"endpoint": emulator.url, "account": "acct1", "username": CDN_USER, "password": CDN_PASSWORD}
    return api.CdnAccess(**{**fields, **overrides})


def client(emulator: Emulator, **kwargs: object) -> api.CdnClient:
    return api.CdnClient(budget=emulator.budget(), sleep=no_sleep, **kwargs)  # type: ignore[arg-type]


def trusted_chain(emulator: Emulator, cn: str = "www.shop.example", key_kind: str = "ec") -> tuple[str, str]:
    chain = three_level(cn, key_kind=key_kind)
    emulator.state.trusted.append(chain.root.cert)
    return chain.pem.decode(), chain.leaf.key_pem().decode()


async def test_token_is_cached_and_renewed_before_it_expires(cdn: Emulator) -> None:
    async with client(cdn) as c:
        assert await c.list_certificates(access(cdn)) == []
        await c.list_certificates(access(cdn))
        assert cdn.counts()[LOGIN] == 1
        await cdn.control("POST", "clock", {"advance": 6 * 3600 - 300})  # inside the renewal margin
        await c.list_certificates(access(cdn))
        assert cdn.counts()[LOGIN] == 2
        await cdn.control("POST", "clock", {"advance": 6 * 3600 + 10})  # token long gone
        c._tokens.clear()
        await c.list_certificates(access(cdn))
        assert cdn.counts() == {LOGIN: 3, LIST: 4}


async def test_api_401_renews_the_token_once(cdn: Emulator) -> None:
    async with client(cdn) as c:
        await c.list_certificates(access(cdn))
        cdn.state.tokens.clear()  # the remote forgot every token
        await c.list_certificates(access(cdn))
    assert [x.status for x in cdn.state.core.calls] == [200, 200, 401, 200, 200]


async def test_static_token_auth(cdn: Emulator) -> None:
    async with client(cdn) as c:
        token = await c.token(access(cdn))
        assert await c.list_certificates(access(cdn, username="", password="", token=token)) == []
        with pytest.raises(api.TokenRejected) as rejected:
            await c.list_certificates(access(cdn, username="", password="", token="not-a-token"))
        assert "not-a-token" not in str(rejected.value)


async def test_login_401_is_never_retried_with_the_same_password(cdn: Emulator) -> None:
    async with client(cdn) as c:
        wrong = access(cdn, password="wrong-password-1")
        with pytest.raises(api.LoginRefused) as first:
            await c.list_certificates(wrong)
        with pytest.raises(api.LoginRefused, match="not retried"):
            await c.list_certificates(wrong)
        assert cdn.counts() == {LOGIN: 1}
        assert "wrong-password-1" not in str(first.value) and first.value.reason == "CredentialsInvalid"
        with pytest.raises(RateLimitedError, match="one attempt a minute"):  # the namespace's unproven quota
            await c.list_certificates(access(cdn))
        assert cdn.counts() == {LOGIN: 1}
        await cdn.control("POST", "clock", {"advance": 61})
        await c.list_certificates(access(cdn))  # the Secret changed: a new password is tried
        assert cdn.counts()[LOGIN] == 2
        c.forget_refusal(wrong)  # the Secret was rewritten: one more try is allowed
        await cdn.control("POST", "clock", {"advance": 61})
        with pytest.raises(api.LoginRefused):
            await c.list_certificates(wrong)
        assert cdn.counts()[LOGIN] == 3


async def test_seven_wrong_passwords_ban_the_account(cdn: Emulator) -> None:
    for attempt in range(7):
        async with client(cdn) as c:
            with pytest.raises(api.LoginRefused):
                await c.token(access(cdn, password=f"wrong-{attempt}"))
    async with client(cdn) as c:
        with pytest.raises(api.AccountBanned):
            await c.token(access(cdn))
        await cdn.control("POST", "clock", {"advance": 3 * 3600 + 1})
        assert await c.token(access(cdn))


async def test_add_get_patch_delete_and_chain_details(cdn: Emulator) -> None:
    cert, key = trusted_chain(cdn)
    async with client(cdn) as c:
        seq = await c.add_certificate(access(cdn), cert, key, "ns/name")
        got = await c.get_certificate(access(cdn), seq)
        bundle = pki.validate_tls(cert.encode(), key.encode(), NOW)
        assert got.cn == "www.shop.example" and got.alt == ("www.shop.example",)
        assert got.issuer == "Test Intermediate CA" and got.comment == "ns/name"
        assert got.chain_info is not None and [x.subject_cn for x in got.chain_info] == [
            "www.shop.example",
            "Test Intermediate CA",
        ]
        assert got.leaf_fingerprint == bundle.leaf.sha1
        assert got.end_timestamp == int(bundle.leaf.not_after.timestamp())
        assert (await c.get_certificate(access(cdn), seq, details=False)).chain_info is None
        with pytest.raises(api.CertificateExists) as exists:
            await c.add_certificate(access(cdn), cert, key, "again")
        assert exists.value.status == 459
        cert2, key2 = trusted_chain(cdn, key_kind="rsa")
        assert await c.update_certificate(access(cdn), seq, certificate=cert2, private_key=key2) == seq
        assert (await c.get_certificate(access(cdn), seq)).leaf_fingerprint == pki.validate_tls(
            cert2.encode(), key2.encode(), NOW
        ).leaf.sha1
        await c.update_certificate(access(cdn), seq, comment="renamed")
        assert [x.comment for x in await c.list_certificates(access(cdn))] == ["renamed"]
        await c.delete_certificate(access(cdn), seq)
        for call in (
            c.delete_certificate(access(cdn), seq),
            c.get_certificate(access(cdn), seq),
            c.update_certificate(access(cdn), seq, comment="x"),
        ):
            with pytest.raises(api.RecordNotFound):
                await call


async def test_every_certificate_status_code_on_add_and_update(cdn: Emulator) -> None:
    good_cert, good_key = trusted_chain(cdn)
    chain = three_level("two.example")
    cdn.state.trusted.append(chain.root.cert)
    untrusted = three_level("untrusted.example")
    old = issue("old.example", not_after=NOW - dt.timedelta(days=1), not_before=NOW - dt.timedelta(days=9))
    leaf_only = chain.leaf.cert_pem.decode()
    key = chain.leaf.key_pem().decode()
    cases_add: list[tuple[str, str, type[api.CdnApiError], int]] = [
        ("garbage\n" + leaf_only, key, api.InvalidLines, 476),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", key, api.RemoteInvalidCertificate, 471),
        (leaf_only, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", api.RemoteInvalidPrivateKey, 472),
        (leaf_only, issue("other").key_pem().decode(), api.RemoteKeyMismatch, 473),
        (old.cert_pem.decode(), old.key_pem().decode(), api.RemoteCertificateExpired, 474),
        (untrusted.pem.decode(), untrusted.leaf.key_pem().decode(), api.RootNotTrusted, 475),
        ((chain.leaf.cert_pem + chain.intermediate.cert_pem * 2).decode(), key, api.ChainDuplicateSubject, 478),
        (
            (
                chain.leaf.cert_pem
                + issue("Test Intermediate CA", issuer=chain.root, ca=True).cert_pem
                + chain.intermediate.cert_pem
            ).decode(),
            key,
            api.ChainDuplicateSubject,
            478,
        ),
    ]
    # two certificates signed by one issuer, with distinct subjects: 479
    sibling = issue("sibling.example", issuer=chain.intermediate)
    cases_add.append(
        (
            (chain.leaf.cert_pem + sibling.cert_pem + chain.intermediate.cert_pem).decode(),
            key,
            api.ChainTooManySameIssuer,
            479,
        )
    )
    async with client(cdn) as c:
        for certificate, private_key, error, code in cases_add:
            with pytest.raises(error) as caught:
                await c.add_certificate(access(cdn), certificate, private_key, "c")
            assert caught.value.status == code, (code, caught.value)
            assert private_key not in str(caught.value)
        seq = await c.add_certificate(access(cdn), good_cert, good_key, "c")
        with pytest.raises(api.InvalidLines) as lines:
            await c.update_certificate(access(cdn), seq, certificate="junk\n" + good_cert, private_key=good_key)
        assert lines.value.status == 477 and "1 invalid line" in str(lines.value)
        misordered = (chain.intermediate.cert_pem + chain.leaf.cert_pem).decode()
        with pytest.raises(api.ChainNotSigned) as unsigned:
            await c.update_certificate(
                access(cdn), seq, certificate=misordered, private_key=chain.intermediate.key_pem().decode()
            )
        assert unsigned.value.status == 476 and unsigned.value.reason == "ChainInvalid"
        with pytest.raises(api.InvalidRequest):
            await c.add_certificate(access(cdn), "", "", "") if False else await c._call(
                access(cdn), "POST", "certificate/", "add", {"certificate": "x"}, api._raw
            )
        with pytest.raises(api.NotAllowed):
            await c.list_certificates(access(cdn, account="someone-else"))
        await cdn.fault("status", status=550)
        with pytest.raises(api.CdnInternalError) as internal:
            await c.list_certificates(access(cdn))
        assert internal.value.retryable


async def test_letsencrypt_resource_order_processed_failed_and_conflicts(cdn: Emulator) -> None:
    async with client(cdn) as c:
        assert await c.letsencrypt_status(access(cdn), "res1") == "no"
        await c.order_letsencrypt(access(cdn), "res1")
        assert await c.letsencrypt_status(access(cdn), "res1") == "accepted"
        with pytest.raises(api.TaskExists) as exists:
            await c.order_letsencrypt(access(cdn), "res1")
        assert exists.value.status == 489
        with pytest.raises(api.RecordNotFound):
            await c.order_letsencrypt(access(cdn), "nope")
        with pytest.raises(api.RecordNotFound):
            await c.letsencrypt_status(access(cdn), "nope")
        await cdn.control("POST", "clock", {"advance": 31})
        assert await c.letsencrypt_status(access(cdn), "res1") == "processed"
        issued = await c.list_certificates(access(cdn))
        assert len(issued) == 1 and issued[0].comment == "letsencrypt" and "Let's Encrypt" in issued[0].issuer
        assert issued[0].covers(["www.shop.example"])
        await cdn.control("POST", "letsencrypt", {"failing": ["res2"]})
        await c.order_letsencrypt(access(cdn), "res2")
        await cdn.control("POST", "clock", {"advance": 31})
        assert await c.letsencrypt_status(access(cdn), "res2") == "failed"


async def test_wildcard_orders(cdn: Emulator) -> None:
    async with client(cdn) as c:
        await c.order_wildcard(access(cdn), ["*.d.example.com", "d.example.com"])
        with pytest.raises(api.TaskExists):
            await c.order_wildcard(access(cdn), ["*.d.example.com", "d.example.com"])
        with pytest.raises(api.DomainInUse) as in_use:
            await c.order_wildcard(access(cdn), ["*.d.example.com"])
        assert in_use.value.status == 479 and in_use.value.reason == "DomainInUse"
        await cdn.control("POST", "letsencrypt", {"brokenDns": ["bad.example.com"]})
        with pytest.raises(api.DnsIncorrect) as dns:
            await c.order_wildcard(access(cdn), ["*.bad.example.com"])
        assert dns.value.status == 480
        with pytest.raises(api.InvalidRequest):
            await c.order_wildcard(access(cdn), [])
        await cdn.control("POST", "clock", {"advance": 31})
        issued = await c.list_certificates(access(cdn))
        assert [x.covers(["*.d.example.com", "d.example.com"]) for x in issued] == [True]


async def test_429_503_and_dropped_connections(cdn: Emulator) -> None:
    delays: list[float] = []

    async def record(delay: float) -> None:
        delays.append(delay)

    async with api.CdnClient(budget=cdn.budget(), sleep=record, retry=RetryPolicy(3, 0.01)) as c:
        await c.list_certificates(access(cdn))  # proven for the account: a 429 now blocks the account
        await cdn.fault("503", count=2)
        assert await c.list_certificates(access(cdn)) == []
        assert len(delays) == 2
        await cdn.fault("503", count=3)
        with pytest.raises(ServiceUnavailable):
            await c.list_certificates(access(cdn))
        await cdn.fault("429", retryAfter=12)
        with pytest.raises(api.CdnRateLimited) as limited:
            await c.list_certificates(access(cdn))
        assert limited.value.retry_after == pytest.approx(12, abs=1)
        with pytest.raises(RateLimitedError, match="not sent"):
            await c.list_certificates(access(cdn))  # the scope stays blocked: nothing is sent
    async with api.CdnClient(budget=cdn.budget(), sleep=record, retry=RetryPolicy(1)) as c:
        await c.list_certificates(access(cdn))
        await cdn.fault("429")
        with pytest.raises(api.CdnRateLimited) as no_header:
            await c.list_certificates(access(cdn))
        assert no_header.value.retry_after is not None and 50 < no_header.value.retry_after <= 60
        await cdn.fault("drop")
        with pytest.raises(TransportError):
            await c.token(access(cdn, username="someone"))


async def test_budget_of_20_per_minute_per_account(cdn: Emulator) -> None:
    async with client(cdn) as c:
        for _ in range(20):
            await c.list_certificates(access(cdn))
        with pytest.raises(RateLimitedError) as refused:
            await c.list_certificates(access(cdn))
        assert refused.value.retry_after is not None and refused.value.retry_after <= 60
    assert cdn.counts()[LIST] == 20
    assert all(x.status == 200 for x in cdn.state.core.calls)


CERTIFICATE = {"seq": 7, "comment": "c", "cn": "a.example", "alt": "a.example", "issuer": "CA"}


@pytest.mark.parametrize(
    ("times", "start", "end"),
    [
        ({"start_timestamp": 1655269983, "end_timestamp": 1689570782}, 1655269983, 1689570782),
        ({"start": 1655269983, "end": 1689570782}, 1655269983, 1689570782),
        ({"start": "1655269983", "end": " 1689570782 "}, 1655269983, 1689570782),
        ({"start_timestamp": "1655269983", "end_timestamp": 1689570782.0}, 1655269983, 1689570782),
        ({"start_timestamp": 1, "end_timestamp": 2, "start": 3, "end": 4}, 1, 2),  # the documented names win
    ],
)
def test_certificate_times_in_every_shape(times: dict[str, object], start: int, end: int) -> None:
    info = api.CdnCertificateInfo.from_json({**CERTIFICATE, **times})
    assert (info.start_timestamp, info.end_timestamp) == (start, end)
    link = api.ChainLink.from_json({"subject_CN": "a.example", **times})
    assert (link.start_timestamp, link.end_timestamp) == (start, end)


@pytest.mark.parametrize(
    "times",
    [{}, {"start_timestamp": 1}, {"start": "soon", "end": 2}, {"start": 1, "end": None}, {"start": 1, "end": True}],
)
def test_a_certificate_without_readable_times_is_an_unexpected_answer_never_zero(times: dict[str, object]) -> None:
    with pytest.raises(api.CdnUnexpectedAnswer) as unexpected:
        api.CdnCertificateInfo.from_json({**CERTIFICATE, **times})
    assert unexpected.value.reason == "RemoteUnavailable"
    with pytest.raises(api.CdnUnexpectedAnswer):
        api.ChainLink.from_json({"subject_CN": "a.example", **times})


@pytest.mark.parametrize(
    ("data", "outcome"),
    [
        ([{**CERTIFICATE, "start": 1, "end": 2}], 7),
        ({**CERTIFICATE, "start": 1, "end": 2}, 7),
        ([], api.RecordNotFound),
        (None, api.RecordNotFound),
        ({"seq": "7"}, api.CdnUnexpectedAnswer),
        ("seven", api.CdnUnexpectedAnswer),
    ],
)
async def test_get_answers_data_as_an_array_of_one_or_the_object(data: object, outcome: object) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token/"):
            return httpx.Response(200, json={"person_id": 1, "status": 200, "token": "t", "lifetime": 21600000})
        return httpx.Response(200, json={"status": 0, "message": "", "data": data})

    where = api.CdnAccess("https://api.cdn.sber.cloud", "acct1", "u", "p")
    async with api.CdnClient(transport=httpx.MockTransport(handler)) as c:
        if isinstance(outcome, int):
            assert (await c.get_certificate(where, 7)).seq == outcome
        else:
            with pytest.raises(outcome):  # type: ignore[call-overload]
                await c.get_certificate(where, 7)
