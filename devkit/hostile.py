"""Hostile fake remotes for the security tests: an EMQX and a CDN that echo every secret they receive.

Each answers a chosen error status, and its message (and, for some, its whole body) quotes back the
request: the body (the private key, the certificate, the password form), the `Authorization` header
(EMQX's API secret in Basic form) and the `CDN-AUTH-TOKEN` header. A real remote that echoes its input
is what they stand for; the operator must turn all of it into reasons without a secret in any log,
Event, status or metric.

They run on loopback in a thread of the test process (plain `http.server`), record every call, and need
no event loop, so synchronous end-to-end tests can start, reconfigure and read them.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CDN_TOKEN = "hostile-token-7d1e0c9b5a4f3e2d1c0b9a8f"  # what the hostile CDN's login hands out


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    body: str


@dataclass
class HostileConfig:
    """What the server answers. `api_status` is an HTTP code (EMQX, or CDN below 450) or a CDN envelope code."""

    api: str  # "emqx" or "cdn"
    api_status: int = 422
    login_status: int = 200  # CDN token endpoint: 200 (a token), 401, 403, 500 ...
    echo_as_text: bool = False  # answer plain text instead of JSON
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _echo(call: Call) -> str:
    return (
        f"rejected {call.method} {call.path}: you sent Authorization: {call.headers.get('authorization', '')} "
        f"CDN-AUTH-TOKEN: {call.headers.get('cdn-auth-token', '')} body: {call.body}"
    )


def _answer(config: HostileConfig, call: Call) -> tuple[int, str, str]:
    """(HTTP status, content type, body) for one call."""
    echo = _echo(call)
    if config.api == "emqx":
        if call.method == "GET":  # the operator reads first: "no TLS yet", so that it writes next
            return 404, "application/json", json.dumps({"code": 404, "message": f"TLS is not configured. {echo}"})
        status = config.api_status
        if config.echo_as_text:
            return status, "text/plain", echo
        return status, "application/json", json.dumps({"code": str(status), "message": echo, "request": call.body})
    if call.path.startswith("/app/oauth/"):
        if config.login_status == 200:
            return 200, "application/json", json.dumps({"person_id": 1, "status": 200, "token": CDN_TOKEN})
        return config.login_status, "application/json", json.dumps({"status": config.login_status, "message": echo})
    if call.method == "GET" and call.path.endswith("/certificate/"):
        return 200, "application/json", json.dumps({"status": 0, "message": "", "data": []})
    status = config.api_status
    if status < 450:
        return status, "text/plain" if config.echo_as_text else "application/json", echo
    return 200, "application/json", json.dumps({"status": status, "message": echo, "data": {"echo": call.body}})


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", errors="replace") if length else ""
        if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            body = f"{body} (decoded: {urllib.parse.parse_qs(body)})"
        call = Call(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        config = self.server.config
        with config.lock:
            config.calls.append(call)
        status, content_type, text = _answer(config, call)
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        return None  # the test reads `calls`, not a log


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, config: HostileConfig) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.config = config


@dataclass
class HostileRemote:
    url: str
    config: HostileConfig

    def calls(self, path_part: str = "") -> list[Call]:
        with self.config.lock:
            return [c for c in self.config.calls if path_part in c.path]


@contextmanager
def hostile(api: str, **config: Any) -> Iterator[HostileRemote]:
    """A hostile remote on a free loopback port, for the duration of the block."""
    server = _Server(HostileConfig(api, **config))
    thread = threading.Thread(target=server.serve_forever, name=f"hostile-{api}", daemon=True)
    thread.start()
    try:
        yield HostileRemote(f"http://127.0.0.1:{server.server_address[1]}", server.config)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
