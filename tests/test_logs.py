"""Every log record leaves scrubbed, in both formats, whoever logged it: no key block, no auth header value."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from certsync import logs, remote

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


@pytest.fixture
def configured() -> Iterator[None]:
    """`logs.configure` changes process-wide loggers: put them back as they were."""
    root = logging.getLogger()
    names = ("kopf", "certsync", *logs.QUIET)
    saved = root.handlers[:], root.level, {name: logging.getLogger(name).level for name in names}
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.usefixtures("configured")
@pytest.mark.parametrize(
    ("level", "number", "quiet"),
    [("debug", logging.DEBUG, logging.WARNING), ("INFO", logging.INFO, logging.WARNING),
     ("warning", logging.WARNING, logging.WARNING), ("error", logging.ERROR, logging.ERROR)],
)  # fmt: skip
def test_the_level_applies_to_certsync_and_kopf_not_to_body_loggers(level: str, number: int, quiet: int) -> None:
    logs.configure("json", level)
    assert logging.getLogger("certsync.remote").getEffectiveLevel() == number
    assert logging.getLogger("kopf.objects").getEffectiveLevel() == number  # kopf follows, debug included
    for name in ("kubernetes.client.rest", "urllib3.connectionpool", "httpx", "httpcore.http11"):
        assert logging.getLogger(name).getEffectiveLevel() == quiet, name  # their debug has bodies: never


@pytest.mark.usefixtures("configured")
async def test_every_remote_call_is_logged_at_debug_scrubbed(capsys: pytest.CaptureFixture[str]) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503 if request.method == "PUT" else 200, json={})

    async def call(method: str, url: str) -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
            await remote.send(http, http.build_request(method, url), "emqx", "get_tls")

    logs.configure("json", "debug")
    await call("GET", "https://emqx.test/public_api/v1/deployments/d1/tls?token=q-secret-9")
    await call("PUT", "https://emqx.test/password=hunter22/tls")
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    lines = [e["message"] for e in events if e["logger"] == "certsync.remote" and e["level"] == "debug"]
    assert len(lines) == 2 and lines[0].startswith("emqx get_tls: GET /public_api/v1/deployments/d1/tls -> 200 in ")
    assert "q-secret-9" not in lines[0] and "token" not in lines[0]  # no query string is logged
    assert "hunter22" not in lines[1] and "[redacted]" in lines[1] and "-> 503 in " in lines[1]  # the scrub filter

    logs.configure("json", "info")
    await call("GET", "https://emqx.test/deployments/d1/tls")
    assert "certsync.remote" not in capsys.readouterr().err
