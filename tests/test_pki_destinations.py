"""What EMQX Cloud requires of a certificate, checked offline: one table, a fake clock, one reason per refusal."""

from __future__ import annotations

import datetime as dt
import functools

import pytest
from certsync import pki

from devkit.factory import NOW, Issued, issue, three_level

DAY = dt.timedelta(days=1)


@functools.cache
def leaf(key_kind: str = "ec", days_left: int = 90) -> Issued:
    """One certificate per kind for the whole module: an RSA-4096 key costs a second to make."""
    return issue("mqtt.example.com", key_kind=key_kind, not_before=NOW - DAY, not_after=NOW + days_left * DAY)


def emqx(cert_pem: bytes, key_pem: bytes, now: dt.datetime = NOW) -> pki.TLSBundle:
    return pki.validate_tls(cert_pem, key_pem, now, checks=pki.EMQX_CHECKS)


@pytest.mark.parametrize(
    ("key_kind", "found"),
    [("ed25519", "Ed25519"), ("rsa4096", "RSA-4096"), ("rsa3072", "RSA-3072"), ("p521", "ECDSA P-521")],
)
def test_keys_emqx_does_not_take(key_kind: str, found: str) -> None:
    cert = leaf(key_kind)
    pki.validate_tls(cert.cert_pem, cert.key_pem(), NOW)  # fine for the CDN and in general
    with pytest.raises(pki.KeyTypeUnsupported) as refused:
        emqx(cert.cert_pem, cert.key_pem())
    assert refused.value.reason == "KeyTypeUnsupported"
    assert f"tls.key is {found};" in refused.value.message and "RSA 1024 or 2048" in refused.value.message


@pytest.mark.parametrize("key_kind", ["rsa1024", "rsa", "ec", "p384"])
def test_keys_emqx_takes_in_either_encoding(key_kind: str) -> None:
    cert = leaf(key_kind)
    for encoding in ("pkcs8", "traditional"):
        assert emqx(cert.cert_pem, cert.key_pem(encoding)).leaf.subject_cn == "mqtt.example.com"


def test_leaf_key_algorithm_must_match_its_issuers_when_the_issuer_is_sent() -> None:
    mixed = three_level("mqtt.example.com", key_kind="rsa")  # RSA leaf, ECDSA intermediate
    with pytest.raises(pki.KeyAlgorithmMismatch) as refused:
        emqx(mixed.pem, mixed.leaf.key_pem())
    assert refused.value.reason == "KeyAlgorithmMismatch"
    assert "RSA key" in refused.value.message and "'Test Intermediate CA') has an ECDSA key" in refused.value.message
    emqx(mixed.leaf.cert_pem, mixed.leaf.key_pem())  # the issuer is not sent: nothing to compare
    same = three_level("mqtt.example.com", key_kind="ec")
    emqx(same.pem, same.leaf.key_pem())


@pytest.mark.parametrize(
    ("now", "refused"),
    [
        (NOW, False),  # 90 days left
        (NOW + 29 * DAY, False),  # 61 days left
        (NOW + 30 * DAY - dt.timedelta(seconds=1), False),  # a second more than 60 days left
        (NOW + 30 * DAY, True),  # exactly 60 days left
        (NOW + 80 * DAY, True),  # 10 days left
    ],
)
def test_validity_must_reach_60_days_ahead(now: dt.datetime, refused: bool) -> None:
    cert = leaf()
    if not refused:
        emqx(cert.cert_pem, cert.key_pem(), now)
        return
    with pytest.raises(pki.ValidityTooShort) as too_short:
        emqx(cert.cert_pem, cert.key_pem(), now)
    since = pki.rfc3339(NOW + 30 * DAY)
    assert "within 60 days of expiry" in too_short.value.message
    assert f"too short since {since}" in too_short.value.message


def test_not_yet_valid_and_expired_keep_their_own_reasons() -> None:
    cert = leaf()
    with pytest.raises(pki.CertificateNotYetValid):
        emqx(cert.cert_pem, cert.key_pem(), NOW - 2 * DAY)
    with pytest.raises(pki.CertificateExpired):
        emqx(cert.cert_pem, cert.key_pem(), NOW + 91 * DAY)


def test_the_common_checks_come_first_and_the_cdn_adds_none() -> None:
    ed = leaf("ed25519")
    with pytest.raises(pki.KeyMismatch):  # a mismatch is reported as such, not as an unsupported key
        emqx(ed.cert_pem, leaf("rsa4096").key_pem())
    assert pki.checks_for("cdn") == pki.TLS_CHECKS == pki.CDN_CHECKS
    assert pki.EMQX_CHECKS[: len(pki.TLS_CHECKS)] == pki.TLS_CHECKS
    bundle = pki.validate_tls(ed.cert_pem, ed.key_pem(), NOW)
    pki.check_destination(bundle, "cdn", NOW)
    with pytest.raises(pki.KeyTypeUnsupported):
        pki.check_destination(bundle, "emqx", NOW)
