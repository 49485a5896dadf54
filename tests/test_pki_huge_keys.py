"""An RSA key too large for any destination is refused from its size, before OpenSSL spends seconds checking it.

Checking an RSA-16384 key takes tens of seconds: on the event loop that was past the Lease's renew deadline, so
the leader exited and the standby loaded the same Secret. The fixture is a real RSA-16384 certificate and key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

import pytest
from certsync import pki
from certsync.reconcile import Problem, SecretView, check_tls_secret

from devkit.factory import NOW, issue

DATA = Path(__file__).resolve().parent / "data"
HUGE_CERT = (DATA / "rsa16384.crt").read_bytes()
HUGE_KEY = (DATA / "rsa16384.key").read_bytes()
WITHIN_S = 1.0  # checking the key would take tens of seconds; its size takes milliseconds


def test_an_rsa_16384_leaf_is_refused_by_its_size_within_a_second() -> None:
    pki.BUNDLES.clear()
    started = time.monotonic()
    with pytest.raises(pki.KeyTooLarge) as refused:
        pki.validate_tls(HUGE_CERT, HUGE_KEY, dt.datetime.now(dt.UTC))
    assert time.monotonic() - started < WITHIN_S
    assert refused.value.reason == "KeyTypeUnsupported"
    assert "16384 bits" in refused.value.message and "certificate #1" in refused.value.message


def test_a_huge_private_key_beside_a_small_certificate_is_refused_before_it_is_checked() -> None:
    """The key is looked at on its own too: a mismatched pair must not reach OpenSSL's check either."""
    small = issue("small.example")
    started = time.monotonic()
    with pytest.raises(pki.KeyTooLarge, match=r"tls\.key"):
        pki.validate_tls(small.cert_pem, HUGE_KEY, NOW)
    assert time.monotonic() - started < WITHIN_S


def test_keys_up_to_the_limit_still_load() -> None:
    pki.refuse_huge_rsa(pki.MAX_RSA_BITS, "tls.key")  # exactly the limit is fine
    with pytest.raises(pki.KeyTooLarge):
        pki.refuse_huge_rsa(pki.MAX_RSA_BITS + 1, "tls.key")


async def test_the_refusal_is_a_stalled_reason_and_the_loop_stays_free() -> None:
    """What a pass does with such a Secret: a reason, computed in a thread while the loop keeps ticking."""
    pki.BUNDLES.clear()
    secret = SecretView("kubernetes.io/tls", {"tls.crt": HUGE_CERT, "tls.key": HUGE_KEY})
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    try:
        result = await asyncio.to_thread(check_tls_secret, "huge", secret, dt.datetime.now(dt.UTC))
    finally:
        ticker.cancel()
    assert isinstance(result, Problem) and result.reason == "KeyTypeUnsupported" and result.stalled
    assert ticks > 0


def test_key_checks_in_threads_leave_the_warning_filters_as_they_found_them() -> None:
    """catch_warnings is process-wide: checks in parallel threads must not leak "error" filters (a later warning
    anywhere would raise) nor drop another thread's (a certificate that only warns would pass)."""
    import threading
    import warnings

    before = list(warnings.filters)
    keys = [issue(f"k{n}.example", key_kind="rsa").key_pem() for n in range(2)]
    errors: list[BaseException] = []

    def parse() -> None:
        try:
            for _ in range(20):
                for key in keys:
                    pki.parse_private_key(key)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=parse) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and warnings.filters == before


def test_the_parsed_bundle_cache_is_bounded_in_bytes_and_entries() -> None:
    """Inputs near the PEM cap keep only a few parsed bundles; small ones up to the entry bound."""
    cache = pki.BundleCache(max_entries=3, max_bytes=1000)
    bundle = pki.load_bundle(*_small_pair())
    for n in range(5):
        cache.put(bytes([n]), bundle, 100)
    assert cache.size() == (3, 300) and cache.get(b"\x00") is None and cache.get(b"\x04") is bundle
    cache.put(b"big", bundle, 900)  # the oldest go until the bytes fit
    assert cache.size() == (2, 1000) and cache.get(b"big") is bundle and cache.get(b"\x03") is None
    cache.put(b"huge", bundle, 1001)  # larger than the whole bound: never kept
    assert cache.get(b"huge") is None and cache.size() == (2, 1000)


def test_a_repeated_input_is_parsed_once() -> None:
    pki.BUNDLES.clear()
    cert, key = _small_pair()
    first = pki.load_bundle(cert, key)
    assert pki.load_bundle(cert, key) is first and pki.BUNDLES.size()[0] == 1
    assert pki.load_bundle(cert, key, "other.crt") is not first  # the sources name the messages: another entry


def _small_pair() -> tuple[bytes, bytes]:
    small = issue("cache.example")
    return small.cert_pem, small.key_pem()
