"""Property-based fuzzing of certsync.pki: whatever the bytes, only pki's own problems come out, in linear time.

Mutations start from real certificates and keys (so that they get deep into the X.509 and key parsers,
where the library's exceptions live), and from raw text shaped like PEM. Examples are bounded so that the
file runs in seconds.
"""

from __future__ import annotations

import base64
import datetime as dt
import time
from collections.abc import Callable

import pytest
from certsync import pki
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devkit.factory import NOW, issue, three_level

CHAIN = three_level("fuzz.example", key_kind="ec")
RSA = issue("rsa.fuzz.example", key_kind="rsa")
ED = issue("ed.fuzz.example", key_kind="ed25519")
CERT_DERS = [c.cert.public_bytes(serialization.Encoding.DER) for c in (CHAIN.leaf, CHAIN.intermediate, RSA, ED)]
KEY_DERS = [
    c.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    for c in (CHAIN.leaf, RSA, ED)
]
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pem(label: str, der: bytes) -> bytes:
    body = base64.b64encode(der).decode()
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----\n".encode()


@st.composite
def mutated(draw: st.DrawFn, originals: list[bytes]) -> bytes:
    """A real DER with a few bytes flipped, cut, or a run inserted or repeated."""
    der = bytearray(draw(st.sampled_from(originals)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert"]))
        at = draw(st.integers(min_value=0, max_value=len(der) - 1))
        if kind == "flip":
            der[at] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif kind == "set":
            der[at] = draw(st.integers(min_value=0, max_value=255))
        elif kind == "cut":
            del der[at : at + draw(st.integers(min_value=1, max_value=40))]
        else:
            der[at:at] = draw(st.binary(min_size=1, max_size=16))
        if not der:
            der = bytearray(b"\x30")
    return bytes(der)


def only_pki_problems(call: Callable[[], object]) -> None:
    try:
        call()
    except pki.CertificateProblem as problem:
        assert problem.reason and problem.message
        assert "BEGIN" not in problem.message  # never quotes the input's key material


@FUZZ
@given(der=mutated(CERT_DERS))
def test_mutated_certificates(der: bytes) -> None:
    only_pki_problems(lambda: pki.validate_tls(pem("CERTIFICATE", der), CHAIN.leaf.key_pem(), NOW))
    only_pki_problems(lambda: pki.parse_ca_bundle(pem("CERTIFICATE", der)))


@FUZZ
@given(der=mutated(CERT_DERS), index=st.integers(min_value=0, max_value=2))
def test_mutated_links_of_a_chain(der: bytes, index: int) -> None:
    blocks = [CHAIN.leaf.cert_pem, CHAIN.intermediate.cert_pem, CHAIN.root.cert_pem]
    blocks[index] = pem("CERTIFICATE", der)
    only_pki_problems(lambda: pki.validate_tls(b"".join(blocks), CHAIN.leaf.key_pem(), NOW))


@FUZZ
@given(der=mutated(KEY_DERS), label=st.sampled_from(["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"]))
def test_mutated_keys(der: bytes, label: str) -> None:
    only_pki_problems(lambda: pki.validate_tls(CHAIN.pem, pem(label, der), NOW))


pem_like = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "-----BEGIN CERTIFICATE-----",
                "-----END CERTIFICATE-----",
                "-----BEGIN PRIVATE KEY-----",
                "-----END PRIVATE KEY-----",
                "-----BEGIN EC PRIVATE KEY-----",
                "MIIB",
                "====",
                "",
            ]
        ),
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=", max_size=80),
        st.text(max_size=20),
    ),
    max_size=30,
).map(lambda lines: "\n".join(lines).encode("utf-8", errors="surrogatepass"))


@FUZZ
@given(cert=st.one_of(pem_like, st.binary(max_size=400)), key=st.one_of(pem_like, st.binary(max_size=400)))
def test_arbitrary_text_and_bytes(cert: bytes, key: bytes) -> None:
    only_pki_problems(lambda: pki.validate_tls(cert, key, NOW))
    only_pki_problems(lambda: pki.validate_tls(cert + CHAIN.pem, key + CHAIN.leaf.key_pem(), NOW))
    only_pki_problems(lambda: pki.secret_text(cert, "tls.crt"))
    only_pki_problems(lambda: pki.scan_pem(cert))


@FUZZ
@given(
    not_before=st.datetimes(min_value=dt.datetime(1950, 1, 1), max_value=dt.datetime(9000, 1, 1)),
    days=st.integers(min_value=0, max_value=30000),
)
def test_any_validity_period(not_before: dt.datetime, days: int) -> None:
    start = not_before.replace(tzinfo=dt.UTC)
    end = min(start + dt.timedelta(days=days), dt.datetime(9999, 1, 1, tzinfo=dt.UTC))
    cert = issue("time.example", not_before=start, not_after=end)
    only_pki_problems(lambda: pki.validate_tls(cert.cert_pem, cert.key_pem(), NOW))


# --- time: nothing grows faster than the input ----------------------------------------------------


def _cost(call: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        only_pki_problems(call)
        best = min(best, time.perf_counter() - started)
    return best


@pytest.mark.parametrize(
    "shape",
    [
        "-----BEGIN CERTIFICATE-----\n",  # blocks never closed
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",  # many tiny bad blocks
        "not pem at all\n",  # many stray lines
        "A" * 63 + "\n",  # one block with a huge body
        "-----BEGIN " + "X" * 60,  # a marker that never ends
    ],
)
def test_parsing_time_is_linear_in_the_input(shape: str) -> None:
    small = (shape * (2_000 // len(shape) + 1)).encode()
    large = small * 16  # still under the size cap
    assert len(large) < pki.MAX_PEM_BYTES
    for text in (small, large):  # warm up, and give each its own cache entry
        only_pki_problems(lambda text=text: pki.parse_certificates(text))  # type: ignore[misc]
    small_cost = _cost(lambda: pki.parse_certificates(small + b"\n"))
    large_cost = _cost(lambda: pki.parse_certificates(large + b"\n"))
    assert large_cost < 16 * 4 * small_cost + 0.05  # 16x the input: a quadratic parser would take 256x


def test_inputs_over_the_cap_are_refused_before_parsing() -> None:
    huge = b"A" * (pki.MAX_PEM_BYTES + 1)
    started = time.perf_counter()
    with pytest.raises(pki.InvalidCertificate, match="more than the"):
        pki.parse_certificates(huge)
    with pytest.raises(pki.InvalidPrivateKey, match="more than the"):
        pki.parse_private_key(huge)
    assert time.perf_counter() - started < 0.05
