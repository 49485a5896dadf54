"""Validation of tls.crt/tls.key pairs: every failure has its reason and a message that points at it."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable

import pytest
from certsync import pki
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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
    intermediate_first = chain.intermediate.cert_pem + chain.leaf.cert_pem
    with pytest.raises(pki.ChainInvalid) as caught:
        pki.validate_tls(intermediate_first, chain.leaf.key_pem(), NOW)
    assert caught.value.message == (
        "tls.crt is out of order: certificate #1 (CN 'Test Intermediate CA') is a CA, and tls.key belongs to "
        "certificate #2 (CN 'leaf.example.com'); put that leaf first, followed by its issuers"
    )
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


# --- leaf checks, and every parse failure with its reason ---------------------------------------


def test_a_ca_with_its_own_key_is_never_a_leaf() -> None:
    """The shape of a cert-manager CA issuer Secret: the CA (and its root) with the CA's key."""
    chain = three_level()
    with pytest.raises(pki.LeafIsCA, match=r"CN 'Test Intermediate CA'\) is a CA") as caught:
        pki.validate_tls(chain.intermediate.cert_pem + chain.root.cert_pem, chain.intermediate.key_pem(), NOW)
    assert caught.value.reason == "LeafIsCA"


def test_a_key_matching_no_certificate_says_so() -> None:
    chain = three_level()
    with pytest.raises(pki.KeyMismatch, match=r"nor any other certificate of tls\.crt"):
        pki.validate_tls(chain.pem, issue("other").key_pem(), NOW)


def _with_extensions(*extensions: x509.ExtensionType) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "usage.example")])
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=90))
    )  # fmt: skip
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    cert = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _key_usage(**flags: bool) -> x509.KeyUsage:
    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
             "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")  # fmt: skip
    return x509.KeyUsage(**{n: flags.get(n, False) for n in names})


@pytest.mark.parametrize(
    ("extensions", "problem"),
    [
        ((), None),
        ((_key_usage(digital_signature=True),), None),
        ((x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),), None),
        ((_key_usage(key_cert_sign=True, crl_sign=True),), "keyUsage lacks digitalSignature"),
        ((_key_usage(key_encipherment=True),), "keyUsage lacks digitalSignature"),  # enough for RSA only
        ((x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),), "does not include serverAuth"),
    ],
)
def test_the_leaf_must_be_usable_by_a_server_when_it_says_how_it_may_be_used(
    extensions: tuple[x509.ExtensionType, ...], problem: str | None
) -> None:
    cert, key = _with_extensions(*extensions)
    if problem is None:
        pki.validate_tls(cert, key, NOW)
        return
    with pytest.raises(pki.KeyUsageInvalid, match=problem):
        pki.validate_tls(cert, key, NOW)


def _der_edit(cert: x509.Certificate, edit: Callable[[bytearray, int], None]) -> bytes:
    """The certificate's PEM after `edit` of its DER at the start of the version field ([0] 03 02 01 02)."""
    der = bytearray(cert.public_bytes(serialization.Encoding.DER))
    at = der.find(bytes([0xA0, 3, 2, 1, 2, 2]))
    edit(der, at)
    body = base64.encodebytes(bytes(der)).decode().replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return ("-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n").encode()


def _negative_serial(der: bytearray, at: int) -> None:
    der[at + 7] |= 0x80


def _bad_version(der: bytearray, at: int) -> None:
    der[at + 4] = 7


@pytest.mark.parametrize(
    ("edit", "message"),
    [(_negative_serial, "certificate #1 \\(lines 1-\\d+\\) does not parse.*serial"), (_bad_version, "not a valid")],
)
def test_library_exceptions_and_warnings_become_invalid_certificate(
    edit: Callable[[bytearray, int], None], message: str
) -> None:
    cert = issue("odd.example")
    with pytest.raises(pki.InvalidCertificate, match=message):
        pki.validate_tls(_der_edit(cert.cert, edit), cert.key_pem(), NOW)


def test_unknown_curve_in_the_certificate_is_invalid_certificate() -> None:
    cert = issue("curve.example")
    der = bytearray(cert.cert.public_bytes(serialization.Encoding.DER))
    p256 = bytes.fromhex("06082a8648ce3d030107")  # OID prime256v1
    at = der.find(p256)
    der[at + 9] = 0x77  # an OID no library knows
    body = base64.encodebytes(bytes(der)).decode()
    pem = f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n".encode()
    with pytest.raises(pki.InvalidCertificate, match="certificate #1"):
        pki.validate_tls(pem, cert.key_pem(), NOW)


@pytest.mark.parametrize("which", ["cert", "key"])
def test_non_utf8_bytes_are_invalid_secret_with_their_position(which: str) -> None:
    cert = issue("bytes.example")
    cert_pem, key_pem = cert.cert_pem, cert.key_pem()
    if which == "cert":
        cert_pem += b"\xff\n"
    else:
        key_pem = key_pem.replace(b"\n", b"\n\xc3\x28", 1)
    with pytest.raises(pki.InvalidSecret, match=r"is not UTF-8 text: byte 0x(FF|C3) at line \d+, column 1"):
        pki.validate_tls(cert_pem, key_pem, NOW)


def test_files_are_named_in_messages() -> None:
    cert, other = issue("a.example"), issue("b.example")
    with pytest.raises(pki.KeyMismatch, match=r"^b\.key does not match .* of a\.crt$"):
        pki.validate_tls(cert.cert_pem, other.key_pem(), NOW, cert_source="a.crt", key_source="b.key")
