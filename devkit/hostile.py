"""Hostile fake remotes for the end-to-end tests: an EMQX and a CDN that echo, drip, flood or nest.

`answer` picks what every call gets:

- "echo" (the default): a chosen error status whose message (and, for some, whole body) quotes back the
  request: the body (the private key, the certificate, the password form), the `Authorization` header
  (EMQX's API secret in Basic form) and the `CDN-AUTH-TOKEN` header. The operator must turn all of it into
  reasons without a secret in any log, Event, status or metric.
- "drip": a 200 whose JSON body never ends, one byte a second until the client cuts the call (only a
  whole-call deadline ends it; `open_calls()` says how many are being answered).
- "huge": a 200 with a well-formed JSON body of `huge_bytes` (48 MiB by default, as measured against the
  operator), with or without a `Content-Length` (`declare_length`): without one, only a byte cap on the
  stream stops the read.
- "nested": a 200 whose JSON envelope holds arrays nested `depth` deep (200,000: past Python's recursion
  limit, small enough to pass any byte cap).

They run on loopback in a thread of the test process (plain `http.server`, HTTP/1.0: a body without a length
ends when the connection closes), record every call, and need no event loop, so synchronous end-to-end tests
can start, reconfigure and read them.
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
MiB = 1024 * 1024
CHUNK = 64 * 1024  # what a "huge" answer is written in
ANSWERS = ("echo", "drip", "huge", "nested")


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
    answer: str = "echo"  # one of ANSWERS: what every call gets
    huge_bytes: int = 48 * MiB
    declare_length: bool = True  # "huge": send Content-Length (refusable unread) or only close the stream
    depth: int = 200_000  # "nested"
    calls: list[Call] = field(default_factory=list)
    open: int = 0  # calls being answered right now (a drip or a flood the client has not cut yet)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)  # set when the server closes: drips end

    def __post_init__(self) -> None:
        if self.answer not in ANSWERS:
            raise ValueError(f"answer must be one of {ANSWERS}, not {self.answer!r}")


def _echo(call: Call) -> str:
    return (
        f"rejected {call.method} {call.path}: you sent Authorization: {call.headers.get('authorization', '')} "
        f"CDN-AUTH-TOKEN: {call.headers.get('cdn-auth-token', '')} body: {call.body}"
    )


def _answer(config: HostileConfig, call: Call) -> tuple[int, str, str]:
    """(HTTP status, content type, body) for one call."""
    echo = _echo(call)
    if config.api == "emqx":
        if call.method == "GET" and not call.path.rstrip("/").endswith("/tls"):  # the deployment itself: it runs
            return 200, "application/json", json.dumps({"deploymentID": call.path.rstrip("/").rsplit("/", 1)[-1],
                                                        "deploymentName": echo, "deploymentType": "dedicated",
                                                        "status": "running"})  # fmt: skip
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


def huge_body(size: int) -> Iterator[bytes]:
    """A JSON object of exactly `size` bytes (at least 16), in CHUNK pieces: one long string value."""
    head, tail = b'{"data": "', b'"}'
    left = size - len(head) - len(tail)
    yield head
    while left > 0:
        piece = min(CHUNK, left)
        yield b"A" * piece
        left -= piece
    yield tail


def nested_body(api: str, depth: int) -> bytes:
    """Arrays nested `depth` deep inside the envelope the API answers with: well formed, and small."""
    deep = b"[" * depth + b"]" * depth
    if api == "emqx":
        return b'{"tlsType": "one-way", "status": "running", "cn": ' + deep + b"}"
    return b'{"status": 0, "message": "", "data": ' + deep + b"}"


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
            config.open += 1
        try:
            if config.answer == "echo":
                self._echo(config, call)
            else:
                self._flood(config)
        except OSError:
            pass  # the client cut the call (its byte cap or deadline, or the operator stopped)
        finally:
            with config.lock:
                config.open -= 1

    def _flood(self, config: HostileConfig) -> None:
        """A 200 with a drip, a huge body or a nested one (HTTP/1.0: a body without a length ends at the close)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if config.answer == "nested":
            data = nested_body(config.api, config.depth)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if config.answer == "huge" and config.declare_length:
            self.send_header("Content-Length", str(config.huge_bytes))
        self.end_headers()
        if config.answer == "huge":
            for piece in huge_body(config.huge_bytes):
                if config.stop.is_set():
                    return
                self.wfile.write(piece)
            return
        self.wfile.write(b"{")
        self.wfile.flush()
        while not config.stop.wait(1.0):  # the hostile server's drip, not the test waiting
            self.wfile.write(b" ")
            self.wfile.flush()

    def _echo(self, config: HostileConfig, call: Call) -> None:
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

    def open_calls(self) -> int:
        """Calls being answered right now: begun, and not yet finished or cut by the client."""
        with self.config.lock:
            return self.config.open


@contextmanager
def hostile(api: str, **config: Any) -> Iterator[HostileRemote]:
    """A hostile remote on a free loopback port, for the duration of the block."""
    server = _Server(HostileConfig(api, **config))
    thread = threading.Thread(target=server.serve_forever, name=f"hostile-{api}", daemon=True)
    thread.start()
    try:
        yield HostileRemote(f"http://127.0.0.1:{server.server_address[1]}", server.config)
    finally:
        server.config.stop.set()  # drips and floods still being answered end now
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
