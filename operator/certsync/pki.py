"""All X.509 work of certsync: parsing PEM chains and keys, and the checks made before any upload.

The checks form an ordered chain of small pure functions (as cert-manager's
policies do): each looks at one thing and either passes or raises a
`CertificateProblem` carrying a stable condition reason and a message that
names the certificate, the line or the chain link at fault. The clock is
passed in, never read here. Messages never quote key material.

Parsing never lets another exception out: whatever the library raises (or
warns about) for a certificate, a key or a Secret value becomes
`InvalidCertificate`, `InvalidPrivateKey` or `InvalidSecret`, naming the key
(or file) and the block or position at fault.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Kubernetes caps a Secret at 1 MiB; a real chain is a few KiB. Refusing more
# than this keeps a hostile or broken Secret from costing memory and CPU.
MAX_PEM_BYTES = 256 * 1024
# Parsed inputs kept: the last 256 (as before), and a byte bound so that inputs near MAX_PEM_BYTES keep only a few.
BUNDLE_CACHE_ENTRIES = 256
BUNDLE_CACHE_BYTES = 8 * 1024 * 1024

SupportedKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

_BLOCK = re.compile(r"-----(BEGIN|END) ([A-Z0-9 ]+)-----")


class CertificateProblem(Exception):
    """A certificate or key that must not be uploaded; retried only when the input changes."""

    reason: str = "InvalidCertificate"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidCertificate(CertificateProblem):
    reason = "InvalidCertificate"


class InvalidPrivateKey(CertificateProblem):
    reason = "InvalidPrivateKey"


class KeyMismatch(CertificateProblem):
    reason = "KeyMismatch"


class CertificateExpired(CertificateProblem):
    reason = "CertificateExpired"


class CertificateNotYetValid(CertificateProblem):
    reason = "CertificateNotYetValid"


class ChainInvalid(CertificateProblem):
    reason = "ChainInvalid"


class LeafIsCA(CertificateProblem):
    """The first certificate is a CA (basicConstraints ca=true): uploading it would upload a CA's private key."""

    reason = "LeafIsCA"


class KeyUsageInvalid(CertificateProblem):
    """The leaf's key usage or extended key usage does not allow a TLS server."""

    reason = "KeyUsageInvalid"


class KeyTooLarge(CertificateProblem):
    """An RSA key past MAX_RSA_BITS: no destination takes one, and checking it would hold a thread for seconds."""

    reason = "KeyTypeUnsupported"


MAX_RSA_BITS = 8192


def refuse_huge_rsa(bits: int, where: str) -> None:
    if bits > MAX_RSA_BITS:
        raise KeyTooLarge(f"{where} has an RSA key of {bits} bits; at most {MAX_RSA_BITS} are accepted")


class InvalidSecret(CertificateProblem):
    """A Secret value that is not what it must be (here: not UTF-8 text)."""

    reason = "InvalidSecret"


def secret_text(data: bytes, where: str) -> str:
    """A Secret value as text: strict UTF-8, else `InvalidSecret` naming `where` and the first bad byte's place.

    Every value the operator reads (tls.crt, tls.key, the client CA, every credential) goes through here
    before it is used, so a stray byte gets a reason instead of an exception.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise InvalidSecret(
            f"{where} is not UTF-8 text: byte 0x{data[error.start]:02X} at line {line}, column {column}"
        ) from None


@dataclass(frozen=True)
class PemBlock:
    """One `-----BEGIN X-----` … `-----END X-----` block and where it stood (1-based lines)."""

    label: str
    first_line: int
    last_line: int
    der: bytes


@dataclass(frozen=True)
class PemScan:
    blocks: tuple[PemBlock, ...]
    invalid_lines: tuple[int, ...]  # non-blank lines outside any block, or undecodable inside one


@dataclass(frozen=True)
class CertificateFacts:
    """What status and comparisons need to know about one certificate; no key material."""

    subject_cn: str
    issuer_cn: str
    issuer: str
    sans: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    serial: str
    sha256: str
    sha1: str
    is_ca: bool


@dataclass(frozen=True)
class TLSBundle:
    """A validated certificate chain (leaf first) and its key."""

    chain: tuple[x509.Certificate, ...]
    facts: tuple[CertificateFacts, ...]
    key: SupportedKey
    cert_source: str = "tls.crt"
    key_source: str = "tls.key"

    @property
    def leaf(self) -> CertificateFacts:
        return self.facts[0]


def _check_size(data: bytes, what: str, error: type[CertificateProblem]) -> None:
    if len(data) > MAX_PEM_BYTES:
        raise error(f"{what} is {len(data)} bytes, more than the {MAX_PEM_BYTES} bytes accepted")


def scan_pem(data: bytes) -> PemScan:
    """Split PEM text into blocks, recording lines that belong to none (as the CDN counts them)."""
    text = data.decode("utf-8", errors="replace")
    blocks: list[PemBlock] = []
    invalid: list[int] = []
    label: str | None = None
    start = 0
    body: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        marker = _BLOCK.fullmatch(line)
        if label is None:
            if marker and marker.group(1) == "BEGIN":
                label, start, body = marker.group(2), number, []
            elif line:
                invalid.append(number)
            continue
        if marker and marker.group(1) == "END" and marker.group(2) == label:
            try:
                der = base64.b64decode("".join(body), validate=True)
            except (binascii.Error, ValueError):
                invalid.append(start)
                der = b""
            blocks.append(PemBlock(label, start, number, der))
            label = None
        elif marker or (line and not re.fullmatch(r"[A-Za-z0-9+/=]+", line)):
            invalid.append(number)
        else:
            body.append(line)
    if label is not None:
        invalid.append(start)
    return PemScan(tuple(blocks), tuple(invalid))


def _name_cn(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def colon_hex(data: bytes) -> str:
    return ":".join(f"{b:02X}" for b in data)


def _serial_hex(serial: int) -> str:
    return colon_hex(serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big"))


def certificate_facts(cert: x509.Certificate) -> CertificateFacts:
    """What status needs of a certificate. Raises whatever the library raises: call `_facts` to name it."""
    if cert.serial_number <= 0:
        raise ValueError("its serial number is not positive (RFC 5280 requires a positive serial)")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(
            [str(n) for n in san.get_values_for_type(x509.DNSName)]
            + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
        )
    except x509.ExtensionNotFound:
        sans = ()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    issuer_cn = _name_cn(cert.issuer)
    return CertificateFacts(
        subject_cn=_name_cn(cert.subject),
        issuer_cn=issuer_cn,
        issuer=issuer_cn or cert.issuer.rfc4514_string(),
        sans=sans,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        serial=_serial_hex(cert.serial_number),
        sha256=colon_hex(cert.fingerprint(hashes.SHA256())),
        sha1=colon_hex(cert.fingerprint(hashes.SHA1())),
        is_ca=is_ca,
    )


# `warnings.catch_warnings` changes process-wide state and is not thread-safe; key and chain checks run in
# threads (off the event loop), so every block that turns warnings into errors holds this lock.
_WARNINGS = threading.Lock()


def parse_certificates(data: bytes, what: str = "tls.crt") -> tuple[x509.Certificate, ...]:
    """Parse every certificate of a PEM chain, naming the block and lines of the first bad one."""
    _check_size(data, what, InvalidCertificate)
    secret_text(data, what)
    scan = scan_pem(data)
    if scan.invalid_lines:
        lines = ", ".join(str(n) for n in scan.invalid_lines[:5])
        raise InvalidCertificate(
            f"{what} has {len(scan.invalid_lines)} invalid line(s) outside PEM blocks (line {lines})"
        )
    certs: list[x509.Certificate] = []
    for index, block in enumerate(scan.blocks, start=1):
        where = f"{what} certificate #{index} (lines {block.first_line}-{block.last_line})"
        if block.label != "CERTIFICATE":
            raise InvalidCertificate(f"{where} is a {block.label!r} block, not a CERTIFICATE")
        certs.append(_load_certificate(block.der, where))
    if not certs:
        raise InvalidCertificate(f"{what} holds no PEM certificate")
    return tuple(certs)


def _load_certificate(der: bytes, where: str) -> x509.Certificate:
    """Load and touch everything certsync reads of a certificate now, so that nothing fails later.

    The library parses lazily and raises many classes (ValueError, InvalidVersion, UnsupportedAlgorithm,
    OverflowError …) or only warns (a negative serial): every one of them is an invalid certificate.
    """
    try:
        with _WARNINGS, warnings.catch_warnings():
            warnings.simplefilter("error")  # a parse warning (negative serial, bad encoding) is a refusal
            cert = x509.load_der_x509_certificate(der)
            certificate_facts(cert)
            cert.public_key()
            cert.signature_hash_algorithm  # noqa: B018  (raises for an unknown signature algorithm)
            _server_usage(cert)
    except UnsupportedAlgorithm:
        raise InvalidCertificate(
            f"{where} uses a key type, curve or signature algorithm certsync cannot read"
        ) from None
    except Exception as error:  # whatever the class: the input is at fault, and says where
        raise InvalidCertificate(f"{where} does not parse as X.509: {_library_reason(error)}") from None
    return cert


def _library_reason(error: BaseException) -> str:
    """The library's own words, short, without any input they might quote (never key material here)."""
    text = " ".join(str(error).split())[:160]
    return text or type(error).__name__


def parse_private_key(data: bytes, what: str = "tls.key") -> SupportedKey:
    """Parse an unencrypted RSA, ECDSA or Ed25519 key in PKCS#1, PKCS#8 or SEC1 PEM."""
    _check_size(data, what, InvalidPrivateKey)
    secret_text(data, what)
    blocks = [b for b in scan_pem(data).blocks if b.label.endswith("PRIVATE KEY")]
    if len(blocks) != 1:
        raise InvalidPrivateKey(f"{what} must hold exactly one PEM private key, found {len(blocks)}")
    where = f"{what} (lines {blocks[0].first_line}-{blocks[0].last_line})"
    try:
        with _WARNINGS, warnings.catch_warnings():
            warnings.simplefilter("error")
            # First without RSA's consistency check, which costs seconds to minutes for a huge key: its size is
            # known before any of that work is done.
            key = serialization.load_pem_private_key(data, password=None, unsafe_skip_rsa_key_validation=True)
            if isinstance(key, rsa.RSAPrivateKey):
                refuse_huge_rsa(key.key_size, where)
                key = serialization.load_pem_private_key(data, password=None)
    except KeyTooLarge:
        raise
    except TypeError:
        raise InvalidPrivateKey(f"{where} is encrypted; certsync needs an unencrypted key") from None
    except UnsupportedAlgorithm:
        raise InvalidPrivateKey(f"{where} is of a key type or curve certsync cannot use") from None
    except Exception:  # its message may echo the input: never pass it on
        raise InvalidPrivateKey(f"{where} does not parse as a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise InvalidPrivateKey(f"{what} is a {type(key).__name__}; RSA, ECDSA or Ed25519 expected")
    return key


def _public_der(key: object) -> bytes:
    public = key.public_key() if hasattr(key, "public_key") else key
    return public.public_bytes(  # type: ignore[no-any-return,union-attr]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_matches(cert: x509.Certificate, key: SupportedKey) -> bool:
    return _public_der(cert.public_key()) == _public_der(key)


def signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _server_usage(cert: x509.Certificate) -> str | None:
    """Why the certificate may not serve TLS, judged on the extensions it has (absent ones allow all)."""
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None:
        rsa_key = isinstance(cert.public_key(), rsa.RSAPublicKey)
        if not (usage.digital_signature or (rsa_key and usage.key_encipherment)):
            allowed = "digitalSignature or keyEncipherment" if rsa_key else "digitalSignature"
            return f"its keyUsage lacks {allowed}, which a TLS server needs"
    try:
        extended = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    if ExtendedKeyUsageOID.SERVER_AUTH not in extended and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in extended:
        return "its extendedKeyUsage does not include serverAuth"
    return None


# --- the ordered chain of checks -------------------------------------------------------------

Check = Callable[[TLSBundle, dt.datetime], None]


def check_key_matches_leaf(bundle: TLSBundle, now: dt.datetime) -> None:
    if key_matches(bundle.chain[0], bundle.key):
        return
    first = f"certificate #1 (CN {bundle.leaf.subject_cn!r})"
    for index, cert in enumerate(bundle.chain[1:], start=2):
        if key_matches(cert, bundle.key):
            what = "is a CA" if bundle.leaf.is_ca else "is not the key's certificate"
            raise ChainInvalid(
                f"{bundle.cert_source} is out of order: {first} {what}, and {bundle.key_source} belongs to "
                f"certificate #{index} (CN {bundle.facts[index - 1].subject_cn!r}); put that leaf first, "
                "followed by its issuers"
            )
    raise KeyMismatch(
        f"{bundle.key_source} does not match the leaf certificate (CN {bundle.leaf.subject_cn!r}) "
        f"nor any other certificate of {bundle.cert_source}"
    )


def check_leaf_is_not_ca(bundle: TLSBundle, now: dt.datetime) -> None:
    if bundle.leaf.is_ca:
        raise LeafIsCA(
            f"the leaf certificate (CN {bundle.leaf.subject_cn!r}) is a CA (basicConstraints ca=true): "
            f"{bundle.key_source} is a CA's private key, which certsync never uploads; "
            "use a server certificate issued by that CA"
        )


def check_leaf_server_usage(bundle: TLSBundle, now: dt.datetime) -> None:
    problem = _server_usage(bundle.chain[0])
    if problem:
        raise KeyUsageInvalid(f"the leaf certificate (CN {bundle.leaf.subject_cn!r}) cannot serve TLS: {problem}")


def check_leaf_valid_now(bundle: TLSBundle, now: dt.datetime) -> None:
    leaf = bundle.leaf
    if now >= leaf.not_after:
        raise CertificateExpired(f"the leaf certificate (CN {leaf.subject_cn!r}) expired at {rfc3339(leaf.not_after)}")
    if now < leaf.not_before:
        raise CertificateNotYetValid(
            f"the leaf certificate (CN {leaf.subject_cn!r}) is not valid before {rfc3339(leaf.not_before)}"
        )


def check_chain_order(bundle: TLSBundle, now: dt.datetime) -> None:
    for index in range(len(bundle.chain) - 1):
        child, parent = bundle.chain[index], bundle.chain[index + 1]
        if not signed_by(child, parent):
            raise ChainInvalid(
                f"chain link {index + 1}->{index + 2}: certificate #{index + 1} "
                f"(CN {bundle.facts[index].subject_cn!r}) is not signed by certificate "
                f"#{index + 2} (CN {bundle.facts[index + 1].subject_cn!r}); the chain must be "
                "ordered leaf first, each certificate followed by its issuer"
            )


TLS_CHECKS: tuple[Check, ...] = (
    check_key_matches_leaf,
    check_leaf_is_not_ca,
    check_leaf_server_usage,
    check_leaf_valid_now,
    check_chain_order,
)


class BundleCache:
    """Parsed bundles by the digest of their input, bounded in entries and in input bytes (a proxy of what a
    parsed chain and key hold): a few hundred Secrets near the PEM cap cannot grow the operator past its limit.
    Keys are digests, so the cache never holds a PEM a second time. Thread-safe: checks run off the loop."""

    def __init__(self, max_entries: int = BUNDLE_CACHE_ENTRIES, max_bytes: int = BUNDLE_CACHE_BYTES) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._bundles: OrderedDict[bytes, tuple[TLSBundle, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: bytes) -> TLSBundle | None:
        with self._lock:
            found = self._bundles.get(key)
            if found is not None:
                self._bundles.move_to_end(key)
            return found[0] if found else None

    def put(self, key: bytes, bundle: TLSBundle, size: int) -> None:
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._bundles:
                return
            self._bundles[key] = (bundle, size)
            self._bytes += size
            while len(self._bundles) > self.max_entries or self._bytes > self.max_bytes:
                _, (_, dropped) = self._bundles.popitem(last=False)
                self._bytes -= dropped

    def clear(self) -> None:
        with self._lock:
            self._bundles.clear()
            self._bytes = 0

    def size(self) -> tuple[int, int]:
        """Entries and input bytes held (what the tests watch)."""
        with self._lock:
            return len(self._bundles), self._bytes


BUNDLES = BundleCache()


def load_bundle(
    cert_pem: bytes, key_pem: bytes, cert_source: str = "tls.crt", key_source: str = "tls.key"
) -> TLSBundle:
    """Parse once per distinct input: loading an RSA key checks it (tens of ms), and every pass re-validates."""
    digest = hashlib.sha256()
    for part in (cert_pem, key_pem, cert_source.encode(), key_source.encode()):
        digest.update(len(part).to_bytes(8, "big") + part)
    key_of_input = digest.digest()
    cached = BUNDLES.get(key_of_input)
    if cached is not None:
        return cached
    chain = parse_certificates(cert_pem, cert_source)
    leaf_key = chain[0].public_key()
    if isinstance(leaf_key, rsa.RSAPublicKey):  # before the private key is loaded (its check is the slow part)
        refuse_huge_rsa(leaf_key.key_size, f"{cert_source} certificate #1")
    key = parse_private_key(key_pem, key_source)
    bundle = TLSBundle(
        chain=chain,
        facts=tuple(certificate_facts(c) for c in chain),
        key=key,
        cert_source=cert_source,
        key_source=key_source,
    )
    BUNDLES.put(key_of_input, bundle, len(cert_pem) + len(key_pem))
    return bundle


def validate_tls(
    cert_pem: bytes,
    key_pem: bytes,
    now: dt.datetime,
    checks: Sequence[Check] = TLS_CHECKS,
    *,
    cert_source: str = "tls.crt",
    key_source: str = "tls.key",
) -> TLSBundle:
    """Parse and check a tls.crt/tls.key pair; raise the first `CertificateProblem` found.

    `cert_source`/`key_source` name the inputs in messages: the Secret's keys, or files for `certsync check`.
    """
    bundle = load_bundle(cert_pem, key_pem, cert_source, key_source)
    for check in checks:
        check(bundle, now)
    return bundle


def parse_ca_bundle(data: bytes, what: str = "client CA") -> tuple[CertificateFacts, ...]:
    """Parse a CA bundle (for two-way TLS); every entry must be a certificate."""
    return tuple(certificate_facts(c) for c in parse_certificates(data, what))


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def material_digest(bundle: TLSBundle, *extra: str) -> str:
    """SHA-256 over every certificate of the chain (DER), the key (PKCS#8 DER) and `extra` facts.

    Whatever would be pushed is in it, so any change of a chain link, the key or a
    setting pushed with them (tlsType, the client CA) changes the digest; PEM layout does not.
    """
    digest = hashes.Hash(hashes.SHA256())
    for cert in bundle.chain:
        digest.update(b"cert\0" + cert.public_bytes(serialization.Encoding.DER))
    key_der = bundle.key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    digest.update(b"key\0" + key_der)
    for item in extra:
        digest.update(b"extra\0" + item.encode())
    return digest.finalize().hex()


def certificates_digest(data: bytes, what: str = "client CA") -> str:
    """SHA-256 over the DER of every certificate in a PEM bundle (layout and comments do not count)."""
    digest = hashes.Hash(hashes.SHA256())
    for cert in parse_certificates(data, what):
        digest.update(cert.public_bytes(serialization.Encoding.DER))
    return digest.finalize().hex()


def from_timestamp(seconds: int | float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


# --- what each destination adds ----------------------------------------------------------------
# EMQX Cloud refuses (422) what its TLS/SSL docs rule out (providers.md, "What EMQX's public material
# adds"). Checking offline saves a write of the 6 an hour and gives the user a reason of its own.
# These checks run after the common ones (`TLS_CHECKS`), so a bundle reaching them is consistent.

Destination = Literal["emqx", "cdn"]
DESTINATIONS: tuple[Destination, ...] = ("emqx", "cdn")
EMQX_RSA_SIZES = (1024, 2048)
EMQX_CURVES = ("secp256r1", "secp384r1")
CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
EMQX_MIN_REMAINING = dt.timedelta(days=60)


class KeyTypeUnsupported(CertificateProblem):
    reason = "KeyTypeUnsupported"


class KeyAlgorithmMismatch(CertificateProblem):
    reason = "KeyAlgorithmMismatch"


class ValidityTooShort(CertificateProblem):
    reason = "ValidityTooShort"


def describe_key(key: object) -> str:
    """`RSA-2048`, `ECDSA P-256`, `Ed25519`: enough to say what was found, nothing of the key itself."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"ECDSA {CURVE_NAMES.get(key.curve.name, key.curve.name)}"
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "Ed25519"
    return type(key).__name__.removeprefix("_")


def _key_family(key: object) -> str:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return "ECDSA"
    return describe_key(key)


def check_emqx_key_type(bundle: TLSBundle, now: dt.datetime) -> None:
    key = bundle.key
    supported = (isinstance(key, rsa.RSAPrivateKey) and key.key_size in EMQX_RSA_SIZES) or (
        isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in EMQX_CURVES
    )
    if not supported:
        raise KeyTypeUnsupported(
            f"tls.key is {describe_key(key)}; EMQX Cloud accepts only RSA 1024 or 2048 bits, "
            "or ECDSA P-256 or P-384 keys"
        )


def check_emqx_key_algorithm_matches_issuer(bundle: TLSBundle, now: dt.datetime) -> None:
    """The leaf's key algorithm must be its issuer's (RSA under RSA, ECDSA under ECDSA) when the issuer is sent."""
    leaf = bundle.chain[0]
    issuer = next((c for c in bundle.chain[1:] if c.subject == leaf.issuer), None)
    if issuer is None:
        return
    leaf_family, issuer_family = _key_family(leaf.public_key()), _key_family(issuer.public_key())
    if leaf_family != issuer_family:
        raise KeyAlgorithmMismatch(
            f"the leaf certificate (CN {bundle.leaf.subject_cn!r}) has an {leaf_family} key but its issuer "
            f"(CN {_name_cn(issuer.subject)!r}) has an {issuer_family} key; EMQX Cloud needs the leaf's key "
            "algorithm to match the signing CA's"
        )


def check_emqx_remaining_validity(bundle: TLSBundle, now: dt.datetime) -> None:
    leaf = bundle.leaf
    too_short_since = leaf.not_after - EMQX_MIN_REMAINING
    if now >= too_short_since:
        raise ValidityTooShort(
            f"the leaf certificate (CN {leaf.subject_cn!r}) expires at {rfc3339(leaf.not_after)}; EMQX Cloud "
            f"refuses certificates within {EMQX_MIN_REMAINING.days} days of expiry, so it has been too short "
            f"since {rfc3339(too_short_since)}: renew it earlier (cert-manager: a renewBefore of more than "
            f"{EMQX_MIN_REMAINING.days} days)"
        )


# `check_leaf_valid_now` (in TLS_CHECKS) already refuses a certificate before its notBefore, as EMQX does.
DESTINATION_CHECKS: dict[Destination, tuple[Check, ...]] = {
    "emqx": (check_emqx_key_type, check_emqx_key_algorithm_matches_issuer, check_emqx_remaining_validity),
    "cdn": (),  # the CDN's own refusals (untrusted root, duplicate subjects…) depend on its state, not offline facts
}


def checks_for(destination: Destination) -> tuple[Check, ...]:
    """Every check an upload to `destination` must pass: the common ones, then the destination's own."""
    return (*TLS_CHECKS, *DESTINATION_CHECKS[destination])


def check_destination(bundle: TLSBundle, destination: Destination, now: dt.datetime) -> None:
    """Only the destination's own checks, for a bundle that already passed `validate_tls`."""
    for check in DESTINATION_CHECKS[destination]:
        check(bundle, now)


EMQX_CHECKS: tuple[Check, ...] = checks_for("emqx")  # for `validate_tls(..., checks=pki.EMQX_CHECKS)`
CDN_CHECKS: tuple[Check, ...] = checks_for("cdn")
