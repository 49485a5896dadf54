"""The inputs of a pass, checked before any remote call: the referenced Secrets and what they hold."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from certsync import pki
from certsync.reconcile.conditions import State

TLS_SECRET_TYPE = "kubernetes.io/tls"
TLS_KEYS = ("tls.crt", "tls.key")
# Credentials a Secret may hold, by remote API: the first complete set is used.
EMQX_CREDENTIALS: tuple[tuple[str, ...], ...] = (("apiKey", "apiSecret"),)
CDN_CREDENTIALS: tuple[tuple[str, ...], ...] = (("token",), ("username", "password"))


def keys_of(options: Sequence[Sequence[str]]) -> frozenset[str]:
    """Every key named by a set of credential options: what a pass reads of a credentials Secret."""
    return frozenset(key for option in options for key in option)


@dataclass(frozen=True)
class SecretView:
    """What the operator reads of a Secret; values already base64-decoded. `version` identifies this content."""

    type: str
    data: Mapping[str, bytes] = field(repr=False)
    uid: str = ""
    version: str = ""
    # The keys this view was read for (None: all): a Secret's other keys are never kept, so a kept view serves
    # only passes asking for keys within these.
    read_for: frozenset[str] | None = None
    # metadata.annotations["cert-manager.io/certificate-name"]: the cert-manager Certificate that writes this
    # Secret ("" when none). The only annotation kept (annotations may be 256 KiB).
    certificate_name: str = ""

    def serves(self, keys: frozenset[str]) -> bool:
        return self.read_for is None or keys <= self.read_for

    @property
    def size(self) -> int:
        """Bytes its values hold (what keeping it costs)."""
        return sum(len(key) + len(value) for key, value in self.data.items())


@dataclass(frozen=True)
class Problem:
    """Why nothing can be sent; stalled problems wait for the input to change."""

    reason: str
    message: str
    stalled: bool = True

    def state(self) -> State:
        return State("stalled" if self.stalled else "reconciling", self.reason, self.message)


@dataclass(frozen=True)
class TLSMaterial:
    cert_pem: str = field(repr=False)
    key_pem: str = field(repr=False)
    bundle: pki.TLSBundle = field(repr=False)

    @property
    def fingerprint(self) -> str:
        return self.bundle.leaf.sha256

    @property
    def chain_sha1(self) -> tuple[str, ...]:
        return tuple(f.sha1 for f in self.bundle.facts)


def check_tls_secret(name: str, secret: SecretView | None, now: dt.datetime) -> TLSMaterial | Problem:
    if secret is None:
        return Problem("SecretNotFound", f"Secret {name!r} not found in the resource's namespace")
    if secret.type != TLS_SECRET_TYPE:
        return Problem("InvalidSecret", f"Secret {name!r} has type {secret.type!r}; {TLS_SECRET_TYPE!r} is required")
    for key in TLS_KEYS:
        if not secret.data.get(key):
            return Problem("InvalidSecret", f"Secret {name!r} has no {key!r}")
    text = _utf8(name, secret, TLS_KEYS)
    if isinstance(text, Problem):
        return text
    try:
        bundle = pki.validate_tls(secret.data["tls.crt"], secret.data["tls.key"], now)
    except pki.CertificateProblem as problem:
        return Problem(problem.reason, f"Secret {name!r}: {problem.message}")
    return TLSMaterial(text["tls.crt"], text["tls.key"], bundle)


def check_ca_secret(name: str, key: str, secret: SecretView | None) -> tuple[str, str] | Problem:
    """The client CA bundle's PEM text and its digest."""
    if secret is None:
        return Problem("SecretNotFound", f"client CA Secret {name!r} not found in the resource's namespace")
    data = secret.data.get(key)
    if not data:
        return Problem("InvalidSecret", f"client CA Secret {name!r} has no {key!r}")
    text = _utf8(name, secret, (key,))
    if isinstance(text, Problem):
        return text
    try:
        digest = pki.certificates_digest(data, f"client CA {name}/{key}")
    except pki.CertificateProblem as problem:
        return Problem(problem.reason, problem.message)
    return text[key], digest


def credentials_id(secret: SecretView | None) -> str:
    """Which version of a credentials Secret a call carries ("<uid>:<resourceVersion>"): memory of refusals and
    proofs belongs to it, so a changed Secret is tried anew and another tenant's Secret is another owner."""
    return f"{secret.uid}:{secret.version}" if secret is not None else ""


def credentials(name: str, secret: SecretView | None, keys: Sequence[Sequence[str]]) -> dict[str, str] | Problem:
    """The first complete set of `keys` found in the credentials Secret (values are never echoed)."""
    if secret is None:
        return Problem("SecretNotFound", f"credentials Secret {name!r} not found in the resource's namespace")
    for option in keys:
        if all(secret.data.get(k) for k in option):
            text = _utf8(name, secret, option)
            if isinstance(text, Problem):
                return text
            return {k: v.strip() for k, v in text.items()}
    wanted = " or ".join("+".join(option) for option in keys)
    return Problem("InvalidSecret", f"credentials Secret {name!r} must hold {wanted}")


def _utf8(name: str, secret: SecretView, keys: Sequence[str]) -> dict[str, str] | Problem:
    """Values as text; bytes that are not UTF-8 are named by key and offset, never shown."""
    result = {}
    for key in keys:
        try:
            result[key] = secret.data[key].decode("utf-8")
        except UnicodeDecodeError as error:
            return Problem("InvalidSecret", f"Secret {name!r}: {key!r} is not UTF-8 text (byte {error.start})")
    return result
