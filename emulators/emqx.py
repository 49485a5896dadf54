"""Emulator of the EMQX Cloud deployment TLS API (providers.md §1), on a real HTTP socket.

Faithful to the project's reading of the provider: basic auth (401), a second
valid key scoped to no deployment (403), unknown deployment (404) vs no TLS
configured (404 whose message says so), 422 on bad parameters or on POST when
TLS exists, `pending` for `pending_seconds` after a write, then `running`;
60 reads and 6 writes per window per deployment with 429 and `Retry-After`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from dataclasses import dataclass, field

from aiohttp import web
from certsync import pki
from certsync.emqx import format_expire

from emulators.common import EmulatorCore, SlidingLimit, control_routes, fault_middleware, json_response


@dataclass
class InstalledTLS:
    tls_type: str
    cert: str
    key: str
    cacert: str | None
    expire: dt.datetime
    written_at: float
    fingerprint: str


@dataclass
class EmqxConfig:
    api_key: str
    api_secret: str
    deployments: list[str]
    unscoped_key: str = "unscoped-key"
    unscoped_secret: str = "unscoped-secret"
    pending_seconds: float = 5.0
    read_limit: int = 60
    write_limit: int = 6
    window_seconds: float = 3600.0
    retry_after: bool = True  # send Retry-After with a 429 from the rate limit


@dataclass
class EmqxState:
    config: EmqxConfig
    core: EmulatorCore = field(default_factory=EmulatorCore)
    tls: dict[str, InstalledTLS] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reads = SlidingLimit(self.config.read_limit, self.config.window_seconds)
        self.writes = SlidingLimit(self.config.write_limit, self.config.window_seconds)

    def reset(self) -> None:
        self.tls.clear()
        self.reads.clear()
        self.writes.clear()


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"code": status, "message": message}, status, headers)


def _basic_auth(request: web.Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user, password


def _check_body(body: object) -> tuple[str, str, str, str | None, pki.TLSBundle] | str:
    """The remote's parameter checks; a string is the 422 message."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    tls_type, cert, key, cacert = body.get("tlsType"), body.get("cert"), body.get("key"), body.get("cacert")
    if tls_type not in ("one-way", "two-way"):
        return "tlsType must be 'one-way' or 'two-way'"
    if not isinstance(cert, str) or not isinstance(key, str):
        return "cert and key are required"
    if tls_type == "two-way" and not isinstance(cacert, str):
        return "cacert is required for two-way TLS"
    try:
        bundle = pki.validate_tls(
            cert.encode(), key.encode(), dt.datetime.now(dt.UTC), checks=(pki.check_key_matches_leaf,)
        )
        if isinstance(cacert, str):
            pki.parse_ca_bundle(cacert.encode())
    except pki.CertificateProblem:
        return "invalid certificate or key"
    return tls_type, cert, key, cacert if isinstance(cacert, str) else None, bundle


def build_app(state: EmqxState) -> web.Application:
    config, core = state.config, state.core

    async def tls(request: web.Request) -> web.Response:
        deployment = request.match_info["deployment_id"]
        creds = _basic_auth(request)
        if creds == (config.api_key, config.api_secret):
            scoped = deployment in config.deployments
        elif creds == (config.unscoped_key, config.unscoped_secret):
            scoped = False
        else:
            return error(401, "API key authentication failed")
        limit = state.reads if request.method == "GET" else state.writes
        wait = limit.hit(f"{creds[0]}:{deployment}", core.now())
        if wait is not None:
            headers = {"Retry-After": str(max(1, int(wait + 0.999)))} if config.retry_after else None
            return error(429, "request limit exceeded", headers)
        if creds[0] == config.api_key and deployment not in config.deployments:
            return error(404, "deployment not found")
        if not scoped:
            return error(403, "API key has no permission for this deployment")
        installed = state.tls.get(deployment)
        if request.method == "DELETE":
            if installed is None:
                return error(404, "TLS is not configured for this deployment")
            del state.tls[deployment]
            return web.Response(status=204)
        if request.method == "GET":
            if installed is None:
                return error(404, "TLS is not configured for this deployment")
            return json_response(_describe(installed, core.now(), config.pending_seconds))
        if request.method == "POST" and installed is not None:
            return error(422, "TLS already exists for this deployment, use PUT")
        if request.method == "PUT" and installed is None:
            return error(404, "TLS is not configured for this deployment")
        try:
            body = await request.json()
        except ValueError:
            return error(422, "body is not JSON")
        checked = _check_body(body)
        if isinstance(checked, str):
            return error(422, checked)
        tls_type, cert, key, cacert, bundle = checked
        state.tls[deployment] = InstalledTLS(
            tls_type, cert, key, cacert, bundle.leaf.not_after, core.now(), bundle.leaf.sha256
        )
        return json_response(_describe(state.tls[deployment], core.now(), config.pending_seconds))

    app = web.Application(middlewares=[fault_middleware(core, lambda code: error(code, "injected error"))])
    app.add_routes(control_routes(core, state.reset))
    app.add_routes([web.route("*", "/deployments/{deployment_id}/tls", tls)])
    app.add_routes([web.get("/_emulator/tls/{deployment_id}", _inspect(state))])
    return app


def _inspect(state: EmqxState):  # type: ignore[no-untyped-def]
    """Control API: what is installed (fingerprint only; the key never leaves the emulator)."""

    async def handler(request: web.Request) -> web.Response:
        installed = state.tls.get(request.match_info["deployment_id"])
        if installed is None:
            return json_response({"installed": False})
        return json_response(
            {
                "installed": True,
                "tlsType": installed.tls_type,
                "fingerprint": installed.fingerprint,
                "hasCacert": installed.cacert is not None,
            }
        )

    return handler


def _describe(installed: InstalledTLS, now: float, pending_seconds: float) -> dict[str, str]:
    status = "running" if now >= installed.written_at + pending_seconds else "pending"
    return {"tlsType": installed.tls_type, "expire": format_expire(installed.expire), "status": status}
