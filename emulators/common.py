"""What both emulators share: a movable clock, the call log, injected faults and the control API.

The control API lives under `/_emulator/` and is never part of a provider's API:

    GET  /_emulator/calls    counts by method and path template, every call in order (with the sending
                             replica's X-Certsync-Replica), and how many are in flight; `?since=K` lists
                             only the calls from index K on (`total` says where the next poll starts)
    POST /_emulator/faults   {"kind": "429"|"503"|"latency"|"drop"|"lose"|"status", "count": N,
                              "retryAfter": S (429 only), "seconds": S (latency only),
                              "status": code (status only: the provider's own error code),
                              "method": M (optional: only calls with this HTTP method)}
    POST /_emulator/reset    forget calls, faults and state set up after start
    POST /_emulator/clock    {"advance": S}: move the emulator's clock forward
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FAULT_KINDS = ("429", "503", "latency", "drop", "lose", "status")
StatusAnswer = Callable[[int], web.Response]


@dataclass
class Fault:
    kind: str
    retry_after: float | None = None
    seconds: float = 0.0
    status: int = 500
    method: str | None = None  # only requests with this method (all when None)


@dataclass
class Call:
    method: str
    path: str
    template: str
    status: int
    at: float
    replica: str = ""  # the operator replica that sent it (its X-Certsync-Replica header)

    def as_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "template": self.template,
            "status": self.status,
            "at": self.at,
            "replica": self.replica,
        }


@dataclass
class EmulatorCore:
    """State every emulator has, apart from the provider's own."""

    offset: float = 0.0
    calls: list[Call] = field(default_factory=list)
    inflight: int = 0  # provider calls received and not answered yet
    faults: collections.deque[Fault] = field(default_factory=collections.deque)

    def now(self) -> float:
        return time.time() + self.offset

    def counts(self) -> dict[str, int]:
        counter = collections.Counter(f"{c.method} {c.template}" for c in self.calls)
        return dict(sorted(counter.items()))

    def reset(self) -> None:
        self.calls.clear()
        self.faults.clear()


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=lambda d: json.dumps(d, ensure_ascii=False))


async def body_of(request: web.Request) -> dict[str, Any] | None:
    """A request's JSON object, or None for anything else (not JSON, or JSON that is not an object)."""
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


class HasWriteLatency(Protocol):
    write_latency: float


def write_latency_route(config: HasWriteLatency) -> web.RouteDef:
    """Control API: `POST /_emulator/write-latency {"seconds": S}`, how long every later certificate write (or order)
    waits before it is applied and answered, so that a test can delete or kill while a write is in flight."""

    async def control(request: web.Request) -> web.Response:
        body = await body_of(request)
        seconds = body.get("seconds") if body else None
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
            return json_response({"error": "seconds must be a number of seconds, 0 or more"}, 400)
        config.write_latency = float(seconds)
        return json_response({"writeLatency": config.write_latency})

    return web.post("/_emulator/write-latency", control)


def route_template(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else request.path


def replica(request: web.Request) -> str:
    return request.headers.get("X-Certsync-Replica", "")


def fault_middleware(core: EmulatorCore, status_answer: StatusAnswer) -> Middleware:
    """Records each provider call and serves the next injected fault instead of (or before) it."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_emulator/"):
            return await handler(request)
        core.inflight += 1
        try:
            return await serve(request, handler)
        finally:
            core.inflight -= 1

    async def serve(request: web.Request, handler: Handler) -> web.StreamResponse:
        fault = next((f for f in core.faults if f.method in (None, request.method)), None)
        if fault is not None:
            core.faults.remove(fault)
        response: web.StreamResponse
        if fault is not None and fault.kind == "drop":
            core.calls.append(
                Call(request.method, request.path, route_template(request), 0, core.now(), replica(request))
            )
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # aiohttp ends the handler quietly; the client sees a reset
        if fault is not None and fault.kind == "lose":  # the call is applied, then its answer is lost
            try:
                done = await handler(request)
            except web.HTTPException as error:
                done = error
            core.calls.append(
                Call(request.method, request.path, route_template(request), done.status, core.now(), replica(request))
            )
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        if fault is not None and fault.kind == "latency":
            await asyncio.sleep(fault.seconds)
            fault = None
        if fault is not None and fault.kind == "429":
            headers = {"Retry-After": str(int(fault.retry_after))} if fault.retry_after is not None else None
            response = json_response({"code": 429, "message": "too many requests (injected)"}, 429, headers)
        elif fault is not None and fault.kind == "503":
            response = web.Response(status=503)
        elif fault is not None and fault.kind == "status":
            response = status_answer(fault.status)
        else:
            try:
                response = await handler(request)
            except web.HTTPException as error:
                response = error
        core.calls.append(
            Call(request.method, request.path, route_template(request), response.status, core.now(), replica(request))
        )
        return response

    return middleware


def control_routes(core: EmulatorCore, reset_state: Callable[[], None]) -> list[web.RouteDef]:
    async def calls(request: web.Request) -> web.Response:
        since = request.query.get("since", "0")
        if not since.isdigit():
            return json_response({"error": "since must be a call index (0 or more)"}, 400)
        calls = [c.as_json() for c in core.calls[int(since) :]]
        return json_response(
            {"counts": core.counts(), "calls": calls, "inflight": core.inflight, "total": len(core.calls)}
        )

    async def faults(request: web.Request) -> web.Response:
        body = await request.json()
        kind = str(body.get("kind", ""))
        if kind not in FAULT_KINDS:
            return json_response({"error": f"kind must be one of {', '.join(FAULT_KINDS)}"}, 400)
        retry_after = body.get("retryAfter")
        for _ in range(int(body.get("count", 1))):
            core.faults.append(
                Fault(
                    kind,
                    float(retry_after) if retry_after is not None else None,
                    float(body.get("seconds", 0)),
                    int(body.get("status", 500)),
                    str(body["method"]).upper() if body.get("method") else None,
                )
            )
        return json_response({"queued": len(core.faults)})

    async def reset(_: web.Request) -> web.Response:
        core.reset()
        reset_state()
        return json_response({"reset": True})

    async def clock(request: web.Request) -> web.Response:
        body = await request.json()
        core.offset += float(body.get("advance", 0))
        return json_response({"now": core.now(), "offset": core.offset})

    return [
        web.get("/_emulator/calls", calls),
        web.post("/_emulator/faults", faults),
        web.post("/_emulator/reset", reset),
        web.post("/_emulator/clock", clock),
    ]


class SlidingLimit:
    """The provider's own rate limit as the emulator enforces it (separate from the client's budget)."""

    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period
        self._sent: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)

    def hit(self, key: str, now: float) -> float | None:
        """Count one call; return seconds until the window frees if it is over the limit."""
        sent = self._sent[key]
        while sent and sent[0] <= now - self.period:
            sent.popleft()
        if len(sent) >= self.limit:
            return sent[0] + self.period - now
        sent.append(now)
        return None

    def clear(self) -> None:
        self._sent.clear()


@dataclass
class RunningEmulator:
    runner: web.AppRunner
    url: str

    async def stop(self) -> None:
        await self.runner.cleanup()


def server_tls(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context for `--tls-cert/--tls-key` (PEM: the chain the emulator sends, then its key)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


async def start(
    app: web.Application, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
) -> RunningEmulator:
    """Serve `app` on a real socket; port 0 picks a free one. With `tls` it speaks HTTPS only."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.SockSite(runner, sock, ssl_context=tls)
    await site.start()
    scheme = "https" if tls is not None else "http"
    return RunningEmulator(runner, f"{scheme}://{host}:{sock.getsockname()[1]}")
