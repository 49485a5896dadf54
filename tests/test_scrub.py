"""The scrubber: no secret, key fragment or credential header survives, wherever it sits and however it is cut."""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest
from certsync import scrub
from certsync.scrub import FRAGMENT, MAX_MESSAGE, REDACTED, Scrubber
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devkit.factory import issue

KEY_PEM = issue("scrub.example.com").key_pem().decode()
RSA_PEM = issue("rsa.example.com", key_kind="rsa").key_pem().decode()
BODY_LINES = [line for line in KEY_PEM.splitlines() if not line.startswith("-----")]
PASSWORD = "pa$$ w0rd/with+odd&chars"


def fragments(secret: str, size: int = FRAGMENT) -> set[str]:
    """Every `size`-character window of the secret (its base64 body for a PEM)."""
    bodies = [line for line in secret.splitlines() if not line.startswith("-----")] or [secret]
    joined = "".join(bodies)
    return {joined[i : i + size] for i in range(len(joined) - size + 1)} | {b for b in bodies if b and len(b) < size}


def leaks(text: str, secret: str) -> list[str]:
    if len(secret) < FRAGMENT and "\n" not in secret:
        return [secret] if secret in text else []
    return [f for f in fragments(secret) if f in text]


def test_unknown_private_key_blocks_are_removed_even_when_cut() -> None:
    whole = f"422: invalid key {KEY_PEM.strip()} in request"
    assert scrub.GENERIC.scrub(whole) == f"422: invalid key {REDACTED} in request"
    cut = f"422: invalid key {KEY_PEM[:120]}"  # the remote cut its own echo: no END marker
    assert "BEGIN" not in scrub.GENERIC.scrub(cut) and BODY_LINES[0][:20] not in scrub.GENERIC.scrub(cut)
    escaped = json.dumps({"message": "bad", "key": KEY_PEM})  # newlines as \n, as a JSON echo has them
    assert not leaks(scrub.GENERIC.scrub(escaped), KEY_PEM)


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("Authorization: Basic dGVzdC1rZXk6ZW1xeC1zZWNyZXQ=", "Authorization: Basic [redacted]"),
        ('{"headers": {"Authorization": "Bearer abc.def.ghi"}}', '"Authorization": "Bearer [redacted]"'),
        ("cdn-auth-token=tok123456789 next", "cdn-auth-token=[redacted] next"),
        ("CDN-AUTH-TOKEN: 0123456789abcdef", "CDN-AUTH-TOKEN: [redacted]"),
        ("sent basic Zm9vOmJhcg== and more", "basic [redacted] and more"),
        ("username=u&password=hunter2&x=1", "password=[redacted]&x=1"),
        ('{"password": "in \\"quotes\\"", "a": 1}', '"password": [redacted], "a": 1'),
        ('{"token": "abc', '"token": [redacted]'),
        ("apiSecret: s3cr3t", "apiSecret: [redacted]"),
        ('"private_key": "MIIEvQIBADANBg', '"private_key": [redacted]'),
        ("endpoint 'https://user:pa55@host/api' refused", "endpoint 'https://[redacted]@host/api' refused"),
    ],
)
def test_credential_shapes_are_removed_without_knowing_the_secret(text: str, kept: str) -> None:
    assert kept in scrub.GENERIC.scrub(text)


def test_known_secrets_in_every_echoed_form() -> None:
    scrubber = Scrubber.of(PASSWORD, "tok-0123456789abcdef0123", KEY_PEM, scrub.basic_credentials("key", PASSWORD))
    echoes = [
        f"wrong password {PASSWORD} for u",
        f"form was username=u&password2={urllib.parse.quote_plus(PASSWORD)}",
        json.dumps({"echo": PASSWORD}),
        "token tok-0123456789abcdef0123 is bad",
        f"header was {scrub.basic_credentials('key', PASSWORD)}",
        "lines: " + " ".join(BODY_LINES),  # re-wrapped
        "".join(BODY_LINES)[7:70],  # a piece from the middle, no markers
        json.dumps({"key": KEY_PEM.replace("/", "\\/")}),
    ]
    for echo in echoes:
        out = scrubber.scrub(echo)
        for secret in (PASSWORD, "tok-0123456789abcdef0123", KEY_PEM):
            assert not leaks(out, secret), (echo, out)


def test_short_secrets_are_removed_before_the_cut() -> None:
    """A cut first would leave half of a password at the end of the message."""
    text = "x" * (MAX_MESSAGE - 5) + "hunter2!"
    out = Scrubber.of("hunter2!").short(text)
    assert "hunt" not in out and len(out) <= MAX_MESSAGE


def test_messages_without_secrets_are_kept() -> None:
    scrubber = Scrubber.of(PASSWORD, KEY_PEM)
    text = "471: invalid certificate (line 3); see the documentation"
    assert scrubber.short(text) == text
    prose = "basic constraints say ca=true; the token endpoint refused; Secret 'x' has no password key"
    assert scrubber.short(prose) == prose
    assert scrubber.short("a\n  b\tc") == "a b c"


def test_empty_and_none_secrets_change_nothing() -> None:
    assert Scrubber.of(None, "", b"").short("status 450: invalid request") == "status 450: invalid request"


def test_a_private_key_scrubber_stays_small() -> None:
    """One is built per remote call: a thousand queued calls must not hold a gigabyte of windows."""
    scrubber = Scrubber.of(RSA_PEM)
    assert "grams" not in vars(scrubber)  # a call waiting in the queue holds no windows yet
    assert REDACTED in scrubber.short(f"echo: {RSA_PEM[40:90]}")
    windows = scrubber.grams
    assert len(windows) <= 2 * len(RSA_PEM)  # every form of the key, one window in STRIDE
    assert all(len(w) == scrub.GRAM for w in windows)


def test_large_inputs_cost_linear_time() -> None:
    scrubber = Scrubber.of(PASSWORD, RSA_PEM, KEY_PEM)
    small, large = "ab -----BEGIN x" * 200, "ab -----BEGIN x" * 4000
    started = time.perf_counter()
    scrubber.short(small)
    small_cost = time.perf_counter() - started
    started = time.perf_counter()
    scrubber.short(large)
    large_cost = time.perf_counter() - started
    assert large_cost < max(0.5, 60 * small_cost)  # 20x the input, well under quadratic
    started = time.perf_counter()
    for _ in range(1000):
        scrubber.short("450: invalid request, field comment is too long for this account")
    assert time.perf_counter() - started < 1.0  # ordinary messages: well under a millisecond each


secret_text = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters="[]"), min_size=1, max_size=40
)
noise = st.text(max_size=300)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(secret=secret_text, before=noise, after=noise, limit=st.integers(min_value=20, max_value=400))
def test_a_secret_anywhere_never_survives(secret: str, before: str, after: str, limit: int) -> None:
    out = Scrubber.of(secret).short(before + secret + after, limit)
    assert not leaks(out.replace(REDACTED, "\0"), secret)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=st.integers(min_value=0, max_value=len("".join(BODY_LINES)) - FRAGMENT),
    length=st.integers(min_value=FRAGMENT, max_value=400),
    before=noise,
    cut=st.integers(min_value=20, max_value=MAX_MESSAGE),
    escape=st.booleans(),
)
def test_a_key_fragment_split_by_the_cut_never_survives(
    start: int, length: int, before: str, cut: int, escape: bool
) -> None:
    body = "\n".join(BODY_LINES)
    piece = body[start : start + length]
    if escape:
        piece = json.dumps(piece)[1:-1]
    out = Scrubber.of(KEY_PEM).short(before + piece + " tail", cut)
    assert not leaks(out, KEY_PEM)
