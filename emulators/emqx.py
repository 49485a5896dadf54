"""Emulator of the EMQX Cloud deployment TLS API (providers.md §1), on a real HTTP socket.

Faithful to the project's reading of the provider: basic auth (401), a second
valid key scoped to no deployment (403), unknown deployment (404) vs no TLS
configured (404 whose message says so), 400 on a body that is not a JSON
object, 422 on bad parameters, on a certificate EMQX Cloud refuses (key type,
key algorithm of the issuer, not yet valid, within 60 days of expiry) or on
POST when TLS exists, `pending` for `pending_seconds` after a write, then
`running` (or `failed` for a deployment named in `failing_deployments`); 60
reads and 6 writes per window per deployment with 429 and `Retry-After`.

Dialects (`EmqxConfig.dialects`, `--dialect NAME`, any combination) serve the
other shapes EMQ's public material shows; see `DIALECTS`. `POST
/_emulator/write-latency` (`{"seconds": S}`) makes every later TLS write wait
S seconds before it is applied and answered: a slow remote.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from emulators import certs
from emulators.common import (
    EmulatorCore,
    Handler,
    SlidingLimit,
    control_routes,
    fault_middleware,
    json_response,
    write_latency_route,
)

DIALECTS = {
    "bare-404": "absent TLS (and an unknown deployment, except to a create) answers 404 with no body",
    "empty-200": "GET of absent TLS answers 200 {} (EMQ's provider reads empty tlsType/status as absent)",
    "async-delete": "DELETE answers 204 at once; GET answers `terminated` for `terminate_seconds`, then absent; "
    "POST and PUT meanwhile answer 422 (project's choice: the TLS still exists), DELETE answers 204 again",
    "cn": "every TLS answer carries `cn`, the leaf's common name",
    "string-code": 'error bodies carry `code` as a string ("404") instead of a number',
}
EXPIRE_FORMAT = "%Y-%m-%d %H:%M:%S"
MIN_REMAINING = dt.timedelta(days=60)
RSA_SIZES = (1024, 2048)
CURVES = ("secp256r1", "secp384r1")
FAILED_MESSAGE = "the certificate could not be applied to the deployment"
DEPLOYMENT_TYPES = ("dedicated", "dedicatedFlex", "serverless")
DEPLOYMENT_STATUSES = ("running", "starting", "stopped")


@dataclass
class InstalledTLS:
    tls_type: str
    cert: str
    key: str
    cacert: str | None
    expire: dt.datetime
    written_at: float
    fingerprint: str
    cn: str
    fails: bool = False  # this deployment turns `failed` instead of `running`
    deleted_at: float | None = None  # an asynchronous delete under way (dialect async-delete)


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
    dialects: frozenset[str] = frozenset()  # names from DIALECTS
    failing_deployments: frozenset[str] = frozenset()  # writes here end `failed`, never `running`
    expire_offset_hours: float = 0.0  # `expire` written in this zone (8: UTC+8), still without a zone
    terminate_seconds: float = 5.0  # how long GET answers `terminated` after a DELETE (async-delete)
    # `GET /deployments/{id}`: each deployment's type and status (default dedicated, running); TLS writes to a
    # Serverless or not running deployment answer 422 (project's choice: the provider does not say).
    deployment_types: dict[str, str] = field(default_factory=dict)
    deployment_statuses: dict[str, str] = field(default_factory=dict)
    # A TLS write (POST, PUT) waits this long before it is applied and answered: a slow remote, so that a test can
    # act (delete the resource, kill the operator) while the write is in flight. `POST /_emulator/write-latency`.
    write_latency: float = 0.0

    def __post_init__(self) -> None:
        unknown = set(self.dialects) - DIALECTS.keys()
        if unknown:
            raise ValueError(f"unknown EMQX dialect(s) {sorted(unknown)}; known: {', '.join(DIALECTS)}")
        self.dialects = frozenset(self.dialects)
        self.failing_deployments = frozenset(self.failing_deployments)
        bad_types = set(self.deployment_types.values()) - set(DEPLOYMENT_TYPES)
        bad_statuses = set(self.deployment_statuses.values()) - set(DEPLOYMENT_STATUSES)
        if bad_types or bad_statuses:
            raise ValueError(f"unknown deployment type or status: {sorted(bad_types | bad_statuses)}")


@dataclass
class EmqxState:
    config: EmqxConfig
    core: EmulatorCore = field(default_factory=EmulatorCore)
    tls: dict[str, InstalledTLS] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reads = SlidingLimit(self.config.read_limit, self.config.window_seconds)
        self.writes = SlidingLimit(self.config.write_limit, self.config.window_seconds)
        self.deployment_reads = SlidingLimit(self.config.read_limit, self.config.window_seconds)

    def reset(self) -> None:
        self.tls.clear()
        self.reads.clear()
        self.writes.clear()
        self.deployment_reads.clear()

    def deployment_type(self, deployment: str) -> str:
        return self.config.deployment_types.get(deployment, "dedicated")

    def deployment_status(self, deployment: str) -> str:
        return self.config.deployment_statuses.get(deployment, "running")

    def deployment(self, deployment: str) -> dict[str, Any]:
        """`GET /deployments/{id}` as EMQX Cloud's deployment API documents it."""
        return {
            "deploymentID": deployment, "deploymentName": f"broker-{deployment}",
            "deploymentType": self.deployment_type(deployment), "status": self.deployment_status(deployment),
            "version": "5.8.1", "region": "eu-central-1", "platform": "aws", "projectName": "default",
            "connections": 0, "tps": 0, "createAt": "2026-01-05 09:30:00",
        }  # fmt: skip

    def installed(self, deployment: str) -> InstalledTLS | None:
        """The deployment's TLS, after letting a finished asynchronous delete take effect."""
        found = self.tls.get(deployment)
        deleted_at = found.deleted_at if found is not None else None
        if deleted_at is not None and self.core.now() >= deleted_at + self.config.terminate_seconds:
            del self.tls[deployment]
            return None
        return found

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        code: int | str = str(status) if "string-code" in self.config.dialects else status
        return json_response({"code": code, "message": message}, status, headers)

    def absent(self, method: str, message: str = "TLS is not configured for this deployment") -> web.Response:
        """How this dialect says "no TLS here" (or, to a GET, "no such deployment": EMQX does not tell them apart)."""
        if method == "GET" and "empty-200" in self.config.dialects:
            return json_response({})
        if "bare-404" in self.config.dialects:
            return web.Response(status=404)
        return self.error(404, message)

    def describe(self, installed: InstalledTLS) -> dict[str, str]:
        now = self.core.now()
        if installed.deleted_at is not None:
            status = "terminated"
        elif now < installed.written_at + self.config.pending_seconds:
            status = "pending"
        else:
            status = "failed" if installed.fails else "running"
        expire = installed.expire + dt.timedelta(hours=self.config.expire_offset_hours)
        answer = {"tlsType": installed.tls_type, "expire": expire.strftime(EXPIRE_FORMAT), "status": status}
        if "cn" in self.config.dialects:
            answer["cn"] = installed.cn
        if status == "failed":
            answer["message"] = FAILED_MESSAGE  # project's choice: the remote says why beside `failed`
        return answer


def _basic_auth(request: web.Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user, password


@dataclass(frozen=True)
class Accepted:
    tls_type: str
    cert: str
    key: str
    cacert: str | None
    leaf: x509.Certificate


def check_body(body: dict[str, Any], now: dt.datetime) -> Accepted | str:
    """The remote's parameter and certificate checks (EMQX Cloud TLS/SSL docs); a string is the 422 message."""
    tls_type, cert, key, cacert = body.get("tlsType"), body.get("cert"), body.get("key"), body.get("cacert")
    if tls_type not in ("one-way", "two-way"):
        return "tlsType must be 'one-way' or 'two-way'"
    if not isinstance(cert, str) or not isinstance(key, str):
        return "cert and key are required"
    if tls_type == "two-way" and not isinstance(cacert, str):
        return "cacert is required for two-way TLS"
    try:
        chain = certs.load_chain(cert)
    except ValueError:
        return "invalid certificate"
    try:
        private_key = certs.load_key(key)
    except ValueError:
        return "invalid private key (PEM, PKCS#1 or PKCS#8, without a password)"
    leaf = chain[0]
    if not certs.key_matches(leaf, private_key):
        return "the private key does not match the certificate"
    rsa_ok = isinstance(private_key, rsa.RSAPrivateKey) and private_key.key_size in RSA_SIZES
    ec_ok = isinstance(private_key, ec.EllipticCurvePrivateKey) and private_key.curve.name in CURVES
    if not (rsa_ok or ec_ok):
        return "unsupported key type: RSA 1024/2048 or ECDSA P-256/P-384 only"
    issuer = next((c for c in chain[1:] if c.subject == leaf.issuer), None)
    if issuer is not None and certs.key_family(issuer.public_key()) != certs.key_family(leaf.public_key()):
        return "the certificate's key algorithm does not match its CA's"
    if now < leaf.not_valid_before_utc:
        return "the certificate is not valid yet"
    if now >= leaf.not_valid_after_utc - MIN_REMAINING:
        return "the certificate expires within 60 days"
    if isinstance(cacert, str):
        try:
            certs.load_chain(cacert)
        except ValueError:
            return "invalid cacert"
    return Accepted(tls_type, cert, key, cacert if isinstance(cacert, str) else None, leaf)


def build_app(state: EmqxState) -> web.Application:
    config, core = state.config, state.core

    def authenticated(request: web.Request) -> tuple[str, str] | web.Response:
        """The key pair if it is one of the two this emulator knows (the second one is scoped to nothing)."""
        creds = _basic_auth(request)
        if creds is not None and creds in (
            (config.api_key, config.api_secret),
            (config.unscoped_key, config.unscoped_secret),
        ):
            return creds
        return state.error(401, "API key authentication failed")

    async def tls(request: web.Request) -> web.Response:
        deployment = request.match_info["deployment_id"]
        creds = authenticated(request)
        if isinstance(creds, web.Response):
            return creds
        if request.method in ("POST", "PUT") and config.write_latency > 0:
            # The write lands (and is answered) only after this; its body is read first, so that it lands even when
            # the client is gone by then (a remote applies what it received).
            await request.read()
            await asyncio.sleep(config.write_latency)
        scoped = creds[0] == config.api_key and deployment in config.deployments
        limit = state.reads if request.method == "GET" else state.writes
        wait = limit.hit(f"{creds[0]}:{deployment}", core.now())
        if wait is not None:
            headers = {"Retry-After": str(max(1, int(wait + 0.999)))} if config.retry_after else None
            return state.error(429, "request limit exceeded", headers)
        if creds[0] == config.api_key and deployment not in config.deployments:
            if request.method == "POST":
                return state.error(404, "deployment not found")
            return state.absent(request.method, "deployment not found")
        if not scoped:
            return state.error(403, "API key has no permission for this deployment")
        if request.method in ("POST", "PUT"):
            if state.deployment_type(deployment) == "serverless":
                return state.error(422, "TLS/SSL configuration is not supported for Serverless deployments")
            if state.deployment_status(deployment) != "running":
                return state.error(422, f"the deployment is {state.deployment_status(deployment)}, not running")
        installed = state.installed(deployment)
        terminating = installed is not None and installed.deleted_at is not None
        if request.method == "DELETE":
            if installed is None:
                return state.absent("DELETE")
            if "async-delete" in config.dialects:
                installed.deleted_at = installed.deleted_at or core.now()
            else:
                del state.tls[deployment]
            return web.Response(status=204)
        if request.method == "GET":
            if installed is None:
                return state.absent("GET")
            return json_response(state.describe(installed))
        if terminating:
            return state.error(422, "TLS is being deleted for this deployment, try again later")
        if request.method == "POST" and installed is not None:
            return state.error(422, "TLS already exists for this deployment, use PUT")
        if request.method == "PUT" and installed is None:
            return state.absent("PUT")
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return state.error(400, "invalid request: the body must be a JSON object")
        checked = check_body(body, dt.datetime.fromtimestamp(core.now(), dt.UTC))
        if isinstance(checked, str):
            return state.error(422, checked)
        state.tls[deployment] = InstalledTLS(
            checked.tls_type,
            checked.cert,
            checked.key,
            checked.cacert,
            checked.leaf.not_valid_after_utc,
            core.now(),
            certs.sha256(checked.leaf),
            certs.common_name(checked.leaf.subject),
            fails=deployment in config.failing_deployments,
        )
        return json_response(state.describe(state.tls[deployment]))

    def limited(key: str) -> web.Response | None:
        wait = state.deployment_reads.hit(key, core.now())
        if wait is None:
            return None
        headers = {"Retry-After": str(max(1, int(wait + 0.999)))} if config.retry_after else None
        return state.error(429, "request limit exceeded", headers)

    async def deployment(request: web.Request) -> web.Response:
        deployment_id = request.match_info["deployment_id"]
        creds = authenticated(request)
        if isinstance(creds, web.Response):
            return creds
        if (blocked := limited(f"{creds[0]}:{deployment_id}")) is not None:
            return blocked
        if deployment_id not in config.deployments:
            return state.error(404, "deployment not found")
        if creds[0] != config.api_key:
            return state.error(403, "API key has no permission for this deployment")
        return json_response(state.deployment(deployment_id))

    async def deployments(request: web.Request) -> web.Response:
        creds = authenticated(request)
        if isinstance(creds, web.Response):
            return creds
        if (blocked := limited(f"{creds[0]}:*")) is not None:
            return blocked
        shown = config.deployments if creds[0] == config.api_key else []
        return json_response([state.deployment(d) for d in shown])

    async def control_deployments(request: web.Request) -> web.Response:
        """Control API: change a deployment's type or status (`{"types": {id: t}, "statuses": {id: s}}`)."""
        body = await request.json()
        types, statuses = dict(body.get("types") or {}), dict(body.get("statuses") or {})
        if not set(types.values()) <= set(DEPLOYMENT_TYPES) or not set(statuses.values()) <= set(DEPLOYMENT_STATUSES):
            return json_response({"error": "unknown type or status"}, 400)
        config.deployment_types.update(types)
        config.deployment_statuses.update(statuses)
        return json_response({"types": config.deployment_types, "statuses": config.deployment_statuses})

    app = web.Application(middlewares=[fault_middleware(core, lambda code: state.error(code, "injected error"))])
    app.add_routes(control_routes(core, state.reset))
    app.add_routes([write_latency_route(config)])
    app.add_routes([web.route("*", "/deployments/{deployment_id}/tls", tls)])
    app.add_routes([web.get("/deployments", deployments), web.get("/deployments/{deployment_id}", deployment)])
    app.add_routes([web.post("/_emulator/deployments", control_deployments)])
    app.add_routes([web.get("/_emulator/tls/{deployment_id}", _inspect(state))])
    app.add_routes([web.get("/_emulator/config", _describe_config(config))])
    return app


def _inspect(state: EmqxState) -> Handler:
    """Control API: what is installed (fingerprint only; the key never leaves the emulator)."""

    async def handler(request: web.Request) -> web.Response:
        installed = state.installed(request.match_info["deployment_id"])
        if installed is None:
            return json_response({"installed": False})
        return json_response(
            {
                "installed": True,
                "tlsType": installed.tls_type,
                "fingerprint": installed.fingerprint,
                "hasCacert": installed.cacert is not None,
                "terminating": installed.deleted_at is not None,
            }
        )

    return handler


def _describe_config(config: EmqxConfig) -> Handler:
    """Control API: the dialect and the deliberate oddities this emulator was started with."""

    async def handler(_: web.Request) -> web.Response:
        return json_response(
            {
                "dialects": sorted(config.dialects),
                "failingDeployments": sorted(config.failing_deployments),
                "expireOffsetHours": config.expire_offset_hours,
                "terminateSeconds": config.terminate_seconds,
            }
        )

    return handler
