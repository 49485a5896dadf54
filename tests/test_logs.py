"""Every log record leaves scrubbed, in both formats, whoever logged it: no key block, no auth header value."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from certsync import logs

from devkit.factory import issue

KEY_PEM = issue("logs.example.com").key_pem().decode()
KEY_LINES = [line for line in KEY_PEM.splitlines() if not line.startswith("-----")]


@pytest.fixture(params=["json", "text"])
def captured(request: pytest.FixtureRequest) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        logs.JsonFormatter() if request.param == "json" else logging.Formatter("%(levelname)s %(message)s")
    )
    logs.install_filters(handler)
    logger = logging.getLogger(f"test.logs.{request.param}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger, stream
    logger.removeHandler(handler)


def leaked(text: str) -> list[str]:
    return [line for line in KEY_LINES if line[:16] in text]


def test_key_blocks_in_messages_and_arguments_are_removed(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.info("remote said: %s", f"bad key {KEY_PEM}")
    logger.warning(f"echo {json.dumps({'key': KEY_PEM})}")
    logger.info("headers %r", {"Authorization": "Basic dGVzdC1rZXk6c2VjcmV0LXZhbHVl"})
    logger.info("cdn-auth-token: 0123456789abcdef0123 and password=hunter22")
    out = stream.getvalue()
    assert not leaked(out) and "dGVzdC1rZXk6c2VjcmV0LXZhbHVl" not in out
    assert "0123456789abcdef0123" not in out and "hunter22" not in out
    assert out.count("[redacted]") >= 5 and "remote said: bad key" in out


def test_exception_messages_and_tracebacks_are_scrubbed(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        raise ValueError(f"could not parse {KEY_PEM}")
    except ValueError:
        logger.exception("parsing failed")
    out = stream.getvalue()
    assert "parsing failed" in out and "ValueError" in out and not leaked(out)


def test_kopf_object_logger_is_scrubbed_before_its_event_poster() -> None:
    seen: list[str] = []

    class Poster(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    objects = logging.getLogger("kopf.objects")
    poster = Poster()
    objects.addHandler(poster)
    try:
        logs.install_filters(logging.NullHandler())
        objects.warning("remote echoed %s", KEY_PEM)
    finally:
        objects.removeHandler(poster)
    assert seen and not leaked(seen[0]) and "remote echoed [redacted]" in seen[0]
