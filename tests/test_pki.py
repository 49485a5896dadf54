"""Validation of tls.crt/tls.key pairs: every failure has its reason and a message that points at it."""

from __future__ import annotations

import datetime as dt

import pytest
from certsync import pki

from devkit.factory import NOW, issue, three_level


# Ed25519 has no traditional (PKCS#1/SEC1) encoding: PKCS#8 is its only PEM form.
@pytest.mark.parametrize(
    ("key_kind", "fmt"),
    [("rsa", "pkcs8"), ("rsa", "traditional"), ("ec", "pkcs8"), ("ec", "traditional"), ("ed25519", "pkcs8")],
)
def test_self_signed_of_each_key_type_and_format_is_valid(key_kind: str, fmt: str) -> None:
    cert = issue("self.example.com", key_kind=key_kind)
    bundle = pki.validate_tls(cert.cert_pem, cert.key_pem(fmt), NOW)
    assert bundle.leaf.subject_cn == "self.example.com"
    assert bundle.leaf.sans == ("self.example.com",)
    marker = {"rsa": b"RSA PRIVATE KEY", "ec": b"EC PRIVATE KEY"}.get(key_kind)
    if fmt == "traditional" and marker:
        assert marker in cert.key_pem(fmt)


def test_three_level_chain_reports_each_link() -> None:
    chain = three_level("app.example.com")
    bundle = pki.validate_tls(chain.full_pem, chain.leaf.key_pem(), NOW)
    assert [f.subject_cn for f in bundle.facts] == ["app.example.com", "Test Intermediate CA", "Test Root CA"]
    assert bundle.leaf.issuer == "Test Intermediate CA"
    assert len(bundle.leaf.sha256.split(":")) == 32
    assert len(bundle.leaf.sha1.split(":")) == 20
    assert bundle.facts[1].is_ca and not bundle.leaf.is_ca
    assert bundle.leaf.not_after > NOW


def test_wrong_key_is_key_mismatch() -> None:
    cert, other = issue("a.example.com"), issue("b.example.com")
    with pytest.raises(pki.KeyMismatch, match="does not match the leaf"):
        pki.validate_tls(cert.cert_pem, other.key_pem(), NOW)


def test_expired_and_not_yet_valid() -> None:
    old = issue("old.example.com", not_before=NOW - dt.timedelta(days=30), not_after=NOW - dt.timedelta(days=1))
    with pytest.raises(pki.CertificateExpired, match=r"old\.example\.com.*expired at"):
        pki.validate_tls(old.cert_pem, old.key_pem(), NOW)
    future = issue("future.example.com", not_before=NOW + dt.timedelta(days=1))
    with pytest.raises(pki.CertificateNotYetValid):
        pki.validate_tls(future.cert_pem, future.key_pem(), NOW)


def test_misordered_chain_names_the_link() -> None:
    chain = three_level()
    misordered = chain.intermediate.cert_pem + chain.leaf.cert_pem
    # the key of the first certificate is the intermediate's, so the mismatch check passes and order fails
    with pytest.raises(pki.ChainInvalid, match=r"chain link 1->2.*Test Intermediate CA"):
        pki.validate_tls(misordered, chain.intermediate.key_pem(), NOW)
    skipped = chain.leaf.cert_pem + chain.root.cert_pem
    with pytest.raises(pki.ChainInvalid, match="not signed by certificate #2"):
        pki.validate_tls(skipped, chain.leaf.key_pem(), NOW)


@pytest.mark.parametrize(
    ("cert_pem", "message"),
    [
        (b"", "holds no PEM certificate"),
        (b"hello\n", "1 invalid line"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "certificate #1 \\(lines 1-3\\)"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n", "invalid line"),
        (b"x" * (pki.MAX_PEM_BYTES + 1), "more than the"),
    ],
)
def test_malformed_certificates(cert_pem: bytes, message: str) -> None:
    key = issue("k.example.com").key_pem()
    with pytest.raises(pki.InvalidCertificate, match=message):
        pki.validate_tls(cert_pem, key, NOW)


def test_second_block_that_is_not_a_certificate() -> None:
    cert = issue("a.example.com")
    with pytest.raises(pki.InvalidCertificate, match=r"certificate #2.*PRIVATE KEY"):
        pki.validate_tls(cert.cert_pem + cert.key_pem(), cert.key_pem(), NOW)


@pytest.mark.parametrize(
    ("key_pem", "message"),
    [
        (b"", "exactly one PEM private key, found 0"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "does not parse"),
    ],
)
def test_malformed_keys(key_pem: bytes, message: str) -> None:
    cert = issue("a.example.com")
    with pytest.raises(pki.InvalidPrivateKey, match=message):
        pki.validate_tls(cert.cert_pem, key_pem, NOW)


def test_encrypted_key_is_refused_without_quoting_it() -> None:
    from cryptography.hazmat.primitives import serialization

    cert = issue("a.example.com")
    encrypted = cert.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(pki.InvalidPrivateKey, match="encrypted") as caught:
        pki.validate_tls(cert.cert_pem, encrypted, NOW)
    assert "BEGIN" not in str(caught.value)


def test_problems_carry_stable_reasons() -> None:
    assert pki.KeyMismatch("x").reason == "KeyMismatch"
    assert pki.CertificateExpired("x").reason == "CertificateExpired"
    assert pki.ChainInvalid("x").reason == "ChainInvalid"
    assert pki.InvalidCertificate("x").reason == "InvalidCertificate"
