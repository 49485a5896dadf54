"""Certificates made on the fly for tests (never committed PEM files that would expire)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


RSA_SIZES = {"rsa": 2048, "rsa1024": 1024, "rsa3072": 3072, "rsa4096": 4096}
CURVES: dict[str, ec.EllipticCurve] = {"ec": ec.SECP256R1(), "p384": ec.SECP384R1(), "p521": ec.SECP521R1()}


def make_key(kind: str = "ec") -> Key:
    """`ec` (P-256), `p384`, `p521`, `rsa` (2048), `rsa1024`, `rsa3072`, `rsa4096` or `ed25519`."""
    if kind in RSA_SIZES:
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_SIZES[kind])
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(CURVES[kind])


@dataclass
class Issued:
    cert: x509.Certificate
    key: Key

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self, fmt: str = "pkcs8") -> bytes:
        if fmt == "traditional":  # PKCS#1 for RSA, SEC1 for EC
            private_format = serialization.PrivateFormat.TraditionalOpenSSL
        else:
            private_format = serialization.PrivateFormat.PKCS8
        return self.key.private_bytes(serialization.Encoding.PEM, private_format, serialization.NoEncryption())


def issue(
    cn: str,
    *,
    issuer: Issued | None = None,
    key_kind: str = "ec",
    ca: bool = False,
    sans: tuple[str, ...] = (),
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    key = make_key(key_kind)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - dt.timedelta(days=1))
        .not_valid_after(not_after or NOW + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans or not ca:
        names = sans or (cn,)
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    signer = issuer.key if issuer else key
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return Issued(builder.sign(signer, algorithm), key)


@dataclass
class Chain:
    root: Issued
    intermediate: Issued
    leaf: Issued

    @property
    def pem(self) -> bytes:
        """leaf, intermediate: what a server sends (the root stays out)."""
        return self.leaf.cert_pem + self.intermediate.cert_pem

    @property
    def full_pem(self) -> bytes:
        return self.leaf.cert_pem + self.intermediate.cert_pem + self.root.cert_pem

    def reissued_intermediate_pem(self) -> bytes:
        """The intermediate re-issued (same subject and key, new serial and validity): the leaf still chains to it."""
        old = self.intermediate.cert
        builder = (
            x509.CertificateBuilder()
            .subject_name(old.subject)
            .issuer_name(self.root.cert.subject)
            .public_key(self.intermediate.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=2))
            .not_valid_after(NOW + dt.timedelta(days=400))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        )
        return builder.sign(self.root.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def three_level(cn: str = "leaf.example.com", key_kind: str = "ec", root: Issued | None = None) -> Chain:
    root = root or issue("Test Root CA", ca=True)
    intermediate = issue("Test Intermediate CA", issuer=root, ca=True)
    return Chain(root, intermediate, issue(cn, issuer=intermediate, key_kind=key_kind))
