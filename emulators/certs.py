"""The emulators' own reading of certificates, with `cryptography` directly, as a provider would.

The emulators own their wire format and their refusals: they never borrow the
operator's parsing or checks (an import-linter contract forbids `certsync`
here), so a mistake in the client cannot hide behind the same mistake in its
emulator.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

_MARKER = re.compile(r"-----(BEGIN|END) ([A-Z0-9 ]+)-----")
_BASE64_LINE = re.compile(r"[A-Za-z0-9+/=]+")


@dataclass(frozen=True)
class PemText:
    """The DER of each block of a PEM text, and how many lines belong to no block (as the CDN counts them)."""

    blocks: tuple[tuple[str, bytes], ...]
    invalid_lines: int


def read_pem(text: str) -> PemText:
    blocks: list[tuple[str, bytes]] = []
    invalid = 0
    label: str | None = None
    body: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        marker = _MARKER.fullmatch(line)
        if label is None:
            if marker and marker.group(1) == "BEGIN":
                label, body = marker.group(2), []
            elif line:
                invalid += 1
        elif marker and marker.group(1) == "END" and marker.group(2) == label:
            try:
                blocks.append((label, base64.b64decode("".join(body), validate=True)))
            except (binascii.Error, ValueError):
                invalid += 1
            label = None
        elif marker or (line and not _BASE64_LINE.fullmatch(line)):
            invalid += 1
        else:
            body.append(line)
    if label is not None:
        invalid += 1
    return PemText(tuple(blocks), invalid)


def load_chain(text: str) -> tuple[x509.Certificate, ...]:
    """Every certificate of a PEM text; ValueError if a block is not one, or if there is none."""
    certs = []
    for label, der in read_pem(text).blocks:
        if label != "CERTIFICATE":
            raise ValueError(f"a {label} block where a certificate was expected")
        certs.append(x509.load_der_x509_certificate(der))
    if not certs:
        raise ValueError("no certificate")
    return tuple(certs)


def load_key(text: str) -> PrivateKeyTypes:
    """An unencrypted PEM private key; ValueError otherwise."""
    try:
        return serialization.load_pem_private_key(text.encode(), password=None)
    except (TypeError, ValueError, UnsupportedAlgorithm):
        raise ValueError("not an unencrypted PEM private key") from None


def _spki(key: object) -> bytes:
    public = key.public_key() if hasattr(key, "public_key") else key
    return public.public_bytes(  # type: ignore[no-any-return,union-attr]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_matches(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    return _spki(cert.public_key()) == _spki(key)


def signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def key_family(key: object) -> str:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return "EC"
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "Ed25519"
    return "other"


def common_name(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def colon_hex(data: bytes) -> str:
    return ":".join(f"{b:02X}" for b in data)


@dataclass(frozen=True)
class Described:
    """What the CDN shows of one certificate."""

    subject_cn: str
    issuer_cn: str
    issuer: str
    names: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    sha1: str
    serial: str


def describe(cert: x509.Certificate) -> Described:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(
            [str(n) for n in san.get_values_for_type(x509.DNSName)]
            + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
        )
    except x509.ExtensionNotFound:
        names = ()
    serial = cert.serial_number
    issuer_cn = common_name(cert.issuer)
    return Described(
        subject_cn=common_name(cert.subject),
        issuer_cn=issuer_cn,
        issuer=issuer_cn or cert.issuer.rfc4514_string(),
        names=names,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        sha1=colon_hex(cert.fingerprint(hashes.SHA1())),
        serial=colon_hex(serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big")),
    )


def sha256(cert: x509.Certificate) -> str:
    return colon_hex(cert.fingerprint(hashes.SHA256()))


def iso8601(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
