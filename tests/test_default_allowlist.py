"""The default endpoint allowlist names the known hosts of both providers' families, https only."""

from __future__ import annotations

import pytest
from certsync import settings


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://cloud-intl.emqx.com/public_api/v1",
        "https://cloud-intl.emqx.com/public_api/v1/",
        "https://api.cdn.sber.cloud",
        "https://api.cdnvideo.ru",
        "https://api.cdn.beeline.ru/",
        "https://apicdn.rcloud.ru",
    ],
)
def test_known_hosts_are_allowed_by_default(endpoint: str) -> None:
    assert settings.load([], environ={}).endpoint_allowed(endpoint)


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://api.cdn.sber.cloud",  # https only
        "http://cloud-intl.emqx.com/public_api/v1",
        "https://cloud-intl.emqx.com/api/v1",  # not the platform API
        "https://api.cdn.sber.cloud.evil.example",
        "https://user:pw@api.cdn.sber.cloud",
        "https://cloud.emqx.com/public_api/v1",  # not listed in providers.md: an operator setting adds it
    ],
)
def test_anything_else_is_not(endpoint: str) -> None:
    assert not settings.load([], environ={}).endpoint_allowed(endpoint)


def test_every_default_is_https() -> None:
    assert all(prefix.startswith("https://") and prefix.endswith("/") for prefix in settings.DEFAULT_ALLOWED)
