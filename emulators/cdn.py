"""Emulator of the CDN SSL API (providers.md §2), on a real HTTP socket.

Certificates are really checked with cryptography, so each API status code
comes from the situation that causes it: unparsable PEM 471, bad key 472,
mismatch 473, expired 474, untrusted root 475, stray lines 476 (add) / 477
(update), a link not signed by the next 476 (update), two certificates with
one subject 478, two with one issuer 479, the same certificate twice 459.
Tokens live 6 hours; 7 wrong passwords ban the username for 3 hours (HTTP
403). Let's Encrypt orders stay `accepted` for `pending_seconds`, then are
`processed` (a certificate signed by the emulator's own "Let's Encrypt" CA
appears in the list, comment `letsencrypt`) or `failed`.

Project's choices where the provider says nothing: an API call with a
missing, unknown or expired token answers HTTP 401; a token of another
account answers 455; the SSL API allows `rate_limit` calls per minute per
account and answers HTTP 429 beyond that.

Dialects (`CdnConfig.dialects`, `--dialect NAME`, any combination) serve the
other shapes the family's public material shows; see `DIALECTS`. `POST
/_emulator/write-latency` (`{"seconds": S}`) makes every later certificate add
or patch and every order wait S seconds before it is applied and answered.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import secrets
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from emulators import certs
from emulators.cdnresources import TASK_DELAY_S, ResourceStore, resource_routes
from emulators.common import (
    EmulatorCore,
    SlidingLimit,
    body_of,
    control_routes,
    fault_middleware,
    json_response,
    write_latency_route,
)

DIALECTS = {
    "auth-token": "the token endpoint answers the token as `auth_token` instead of `token`",
    "bare-login-errors": "401 and 403 of the token endpoint have no body at all",
    "expired-405": "an API call with a missing, unknown or expired token answers HTTP 405 instead of 401",
    "expired-455": "an API call with a missing, unknown or expired token answers the envelope 455 instead of 401",
    "start-end": "certificate times come as `start`/`end` instead of `start_timestamp`/`end_timestamp`",
    "string-times": 'certificate times are numeric strings ("1700000000") instead of numbers',
    "get-object": "a get answers `data` as the certificate object instead of an array of one",
    "capitalised-tasks": "the tasks endpoint answers `Completed`, `Pending`… instead of lower case",
}

TOKEN_LIFETIME_S = 6 * 3600
LE_COMMENT = "letsencrypt"  # the comment the CDN gives the certificates it issued through Let's Encrypt
BAN_AFTER = 7
BAN_SECONDS = 3 * 3600
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
LE_ISSUER_CN = "Emulated Let's Encrypt R3"

MESSAGES = {
    0: "OK",
    450: "Invalid request",
    454: "Record not found in database",
    455: "Not Allowed",
    459: "Certificate already exist, use PATCH to update certificate",
    471: "Invalid certificate",
    472: "Invalid private key",
    473: "Private key does not match certificate",
    474: "Certificate is expired",
    475: "Root certificate is not found in system trusted certificates",
    478: "Cert chain error: Two or more certificates have the same subject",
    479: "Cert chain error: Too many certificates have the same issuer",
    480: "DNS settings are incorrect",
    489: "Task already exist",
    550: "Internal Server Error",
}


@dataclass
class CdnConfig:
    account: str
    username: str
    password: str
    resources: dict[str, list[str]] = field(default_factory=dict)  # resource id -> its domains
    pending_seconds: float = 5.0
    trusted_ca_files: list[Path] = field(default_factory=list)
    rate_limit: int = 20
    login_limit: int = 20
    failing: set[str] = field(default_factory=set)  # resource ids or domains whose orders fail
    broken_dns: set[str] = field(default_factory=set)  # wildcard domains answered with 480
    dialects: frozenset[str] = frozenset()  # names from DIALECTS
    # Let's Encrypt renewals by the CDN itself: this many days before a Let's Encrypt certificate expires, a newer
    # one for the same names appears in the list (None: never, the operator must order again).
    le_auto_renew_days: float | None = None
    task_delay: float = TASK_DELAY_S  # how long a configuration task of an HTTP resource runs
    # A certificate add or patch, and a Let's Encrypt order, waits this long before it is applied and answered: a
    # slow remote, so that a test can act while the write is in flight. `POST /_emulator/write-latency`.
    write_latency: float = 0.0

    def __post_init__(self) -> None:
        unknown = set(self.dialects) - DIALECTS.keys()
        if unknown:
            raise ValueError(f"unknown CDN dialect(s) {sorted(unknown)}; known: {', '.join(DIALECTS)}")
        self.dialects = frozenset(self.dialects)


@dataclass
class StoredCertificate:
    seq: int
    certificate: str
    private_key: str
    comment: str
    chain: tuple[x509.Certificate, ...]

    def as_json(self, details: bool, dialects: frozenset[str] = frozenset()) -> dict[str, Any]:
        leaf = certs.describe(self.chain[0])
        data: dict[str, Any] = {
            "comment": self.comment,
            "seq": self.seq,
            "cn": leaf.subject_cn,
            "alt": ", ".join(leaf.names),
            "issuer": leaf.issuer,
            **_times(leaf.not_before, leaf.not_after, dialects),
        }
        if details:
            data["chain_info"] = [
                {
                    "subject_CN": f.subject_cn,
                    "issuer_CN": f.issuer_cn,
                    **_times(f.not_before, f.not_after, dialects),
                    "fingerprint": f.sha1,
                    "serial": f.serial,
                }
                for f in (certs.describe(c) for c in self.chain)
            ]
        return data


def _times(start: dt.datetime, end: dt.datetime, dialects: frozenset[str]) -> dict[str, Any]:
    names = ("start", "end") if "start-end" in dialects else ("start_timestamp", "end_timestamp")
    values: list[int | str] = [int(start.timestamp()), int(end.timestamp())]
    if "string-times" in dialects:
        values = [str(v) for v in values]
    return {
        names[0]: values[0],
        names[1]: values[1],
        "start_iso8601": certs.iso8601(start),
        "end_iso8601": certs.iso8601(end),
    }


@dataclass
class Order:
    key: str  # resource id, or the wildcard's sorted domains
    domains: list[str]
    ordered_at: float
    fails: bool
    status: str = "accepted"


class LetsEncryptCA:
    """The emulator's stand-in for Let's Encrypt: signs 90-day certificates for ordered names."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LE_ISSUER_CN)])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, domains: list[str], now: float) -> tuple[str, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        start = dt.datetime.fromtimestamp(now, dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - dt.timedelta(minutes=1))
            .not_valid_after(start + dt.timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return chain.decode(), key_pem.decode()


@dataclass
class CdnState:
    config: CdnConfig
    core: EmulatorCore = field(default_factory=EmulatorCore)
    certificates: dict[int, StoredCertificate] = field(default_factory=dict)
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)  # token -> (username, expires)
    wrong_passwords: dict[str, int] = field(default_factory=dict)
    banned_until: dict[str, float] = field(default_factory=dict)
    orders: dict[str, Order] = field(default_factory=dict)
    next_seq: int = 1
    hidden: dict[int, int] = field(default_factory=dict)  # seq -> list calls still to leave it out of
    renewed: set[int] = field(default_factory=set)  # Let's Encrypt seqs the CDN already renewed by itself

    def __post_init__(self) -> None:
        self.limit = SlidingLimit(self.config.rate_limit, 60.0)
        self.login_limit = SlidingLimit(self.config.login_limit, 60.0)
        self.le_ca = LetsEncryptCA()
        self.trusted = self._load_trusted()
        self.http_resources = ResourceStore(self.config.task_delay, "capitalised-tasks" in self.config.dialects)
        self._seed_resources()

    def _seed_resources(self) -> None:
        """Every resource a Let's Encrypt order may name is also an HTTP resource serving its domains."""
        for resource_id, domains in self.config.resources.items():
            self.http_resources.add(resource_id, domains)

    def _load_trusted(self) -> list[x509.Certificate]:
        roots: list[x509.Certificate] = [self.le_ca.cert]
        for path in [SYSTEM_BUNDLE, *self.config.trusted_ca_files]:
            if path.exists():
                roots.extend(_load_roots(path.read_bytes()))
        return roots

    def reset(self) -> None:
        self.certificates.clear()
        self.tokens.clear()
        self.wrong_passwords.clear()
        self.banned_until.clear()
        self.orders.clear()
        self.limit.clear()
        self.login_limit.clear()
        self.next_seq = 1
        self.renewed.clear()
        self.http_resources.reset()
        self._seed_resources()

    def store(self, certificate: str, private_key: str, comment: str, chain: tuple[x509.Certificate, ...]) -> int:
        seq = self.next_seq
        self.next_seq += 1
        self.certificates[seq] = StoredCertificate(seq, certificate, private_key, comment, chain)
        return seq

    def advance_orders(self) -> None:
        """Orders whose time has come are settled; a processed one leaves its certificate in the list."""
        now = self.core.now()
        for order in self.orders.values():
            if order.status == "accepted" and now >= order.ordered_at + self.config.pending_seconds:
                if order.fails:
                    order.status = "failed"
                    continue
                order.status = "processed"
                self._issue(order.domains, now)
        if self.config.le_auto_renew_days is not None:
            self._auto_renew(now, self.config.le_auto_renew_days)

    def _issue(self, domains: list[str], now: float) -> int:
        chain_pem, key_pem = self.le_ca.issue(domains, now)
        chain = tuple(x509.load_pem_x509_certificates(chain_pem.encode()))
        return self.store(chain_pem, key_pem, LE_COMMENT, chain)

    def _auto_renew(self, now: float, days: float) -> None:
        """A Let's Encrypt certificate near its end gets a newer one for the same names, once."""
        for stored in list(self.certificates.values()):
            if stored.comment != LE_COMMENT or stored.seq in self.renewed:
                continue
            leaf = stored.chain[0]
            if now >= leaf.not_valid_after_utc.timestamp() - days * 86400:
                self.renewed.add(stored.seq)
                sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                self._issue(list(sans.get_values_for_type(x509.DNSName)), now)


def _load_roots(data: bytes) -> list[x509.Certificate]:
    """Each parsable certificate of a bundle; the system store holds a few that newer cryptography frowns on."""
    roots = []
    for _, der in certs.read_pem(data.decode("utf-8", errors="replace")).blocks:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                roots.append(x509.load_der_x509_certificate(der))
            except ValueError:
                continue
    return roots


def envelope(status: int, data: Any = None, message: str | None = None) -> web.Response:
    body: dict[str, Any] = {"status": status, "message": MESSAGES.get(status, "") if message is None else message}
    if data is not None:
        body["data"] = data
    return json_response(body)


def check_certificate(
    state: CdnState, certificate: str, private_key: str, operation: str, exclude_seq: int | None = None
) -> tuple[int, str] | tuple[x509.Certificate, ...]:
    """The provider's certificate checks in order; a (status, message) pair when one fails."""
    scan = certs.read_pem(certificate)
    if scan.invalid_lines:
        code = 476 if operation == "add" else 477
        return code, f"Certificate has {scan.invalid_lines} invalid line(s)"
    try:
        chain = certs.load_chain(certificate)
    except ValueError:
        return 471, MESSAGES[471]
    try:
        key = certs.load_key(private_key)
    except ValueError:
        return 472, MESSAGES[472]
    if not certs.key_matches(chain[0], key):
        return 473, MESSAGES[473]
    if dt.datetime.fromtimestamp(state.core.now(), dt.UTC) >= chain[0].not_valid_after_utc:
        return 474, MESSAGES[474]
    subjects = [c.subject for c in chain]
    if len(set(subjects)) != len(subjects):
        return 478, MESSAGES[478]
    issuers = [c.issuer for c in chain if c.issuer != c.subject]
    if len(set(issuers)) != len(issuers):
        return 479, MESSAGES[479]
    for child, parent in itertools.pairwise(chain):
        if not certs.signed_by(child, parent):
            if operation == "update":
                return 476, "One of certificates is not signed by previous certificate in chain"
            return 471, MESSAGES[471]
    if not _trusted(state, chain[-1]):
        return 475, MESSAGES[475]
    fingerprint = chain[0].fingerprint(hashes.SHA1())
    for stored in state.certificates.values():
        if stored.seq != exclude_seq and stored.chain[0].fingerprint(hashes.SHA1()) == fingerprint:
            return 459, MESSAGES[459]
    return chain


def _trusted(state: CdnState, top: x509.Certificate) -> bool:
    return any(top == root or (top.issuer == root.subject and certs.signed_by(top, root)) for root in state.trusted)


def build_app(state: CdnState) -> web.Application:
    config, core = state.config, state.core

    async def token(request: web.Request) -> web.Response:
        wait = state.login_limit.hit("login", core.now())
        if wait is not None:
            return web.Response(status=429, headers={"Retry-After": str(max(1, int(wait + 0.999)))})
        form = await request.post()
        username, password = str(form.get("username", "")), str(form.get("password", ""))
        if state.banned_until.get(username, 0) > core.now():
            return login_error(403, "account is banned for too many wrong passwords")
        if username != config.username or password != config.password:
            state.wrong_passwords[username] = state.wrong_passwords.get(username, 0) + 1
            if state.wrong_passwords[username] >= BAN_AFTER:
                state.banned_until[username] = core.now() + BAN_SECONDS
                state.wrong_passwords[username] = 0
            return login_error(401, "wrong username or password")
        state.wrong_passwords.pop(username, None)
        value = secrets.token_hex(16)
        state.tokens[value] = (username, core.now() + TOKEN_LIFETIME_S)
        field_name = "auth_token" if "auth-token" in config.dialects else "token"
        return json_response({"person_id": 1, "status": 200, field_name: value, "lifetime": TOKEN_LIFETIME_S * 1000})

    def login_error(status: int, message: str) -> web.Response:
        if "bare-login-errors" in config.dialects:
            return web.Response(status=status)
        return json_response({"status": status, "message": message}, status)

    def token_refused() -> web.Response:
        """A missing, unknown or expired token, as this dialect answers it."""
        if "expired-405" in config.dialects:
            return json_response({"status": 405, "message": "token expired"}, 405)
        if "expired-455" in config.dialects:
            return envelope(455)
        return json_response({"status": 401, "message": "invalid or expired token"}, 401)

    def authorised(request: web.Request) -> bool:
        """A token the token endpoint gave, not expired: the SSL API and the CDN API take the same."""
        held = state.tokens.get(request.headers.get("CDN-AUTH-TOKEN", ""))
        return held is not None and held[1] > core.now()

    @web.middleware
    async def api_guard(request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/app/ssl/"):
            return await handler(request)  # type: ignore[no-any-return]
        if not authorised(request):
            return token_refused()
        if request.match_info.get("account") != config.account:
            return envelope(455)
        wait = state.limit.hit(config.account, core.now())
        if wait is not None:
            return web.Response(status=429, headers={"Retry-After": str(max(1, int(wait + 0.999)))})
        state.advance_orders()
        return await handler(request)  # type: ignore[no-any-return]

    async def list_certificates(_: web.Request) -> web.Response:
        shown = [c.as_json(False, config.dialects) for c in state.certificates.values() if not state.hidden.get(c.seq)]
        for seq in list(state.hidden):
            state.hidden[seq] -= 1
        return envelope(0, shown, "")

    def _seq(request: web.Request) -> int | None:
        try:
            return int(request.match_info["seq"])
        except ValueError:
            return None

    async def get_certificate(request: web.Request) -> web.Response:
        seq = _seq(request)
        stored = state.certificates.get(seq) if seq is not None else None
        if stored is None:
            return envelope(454)
        answer = stored.as_json("details" in request.query, config.dialects)
        return envelope(0, answer if "get-object" in config.dialects else [answer], "")

    async def slow_write(request: web.Request) -> None:
        """The write lands (and is answered) only after the latency; its body is read first, so that it lands even
        when the client is gone by then (a remote applies what it received)."""
        if config.write_latency > 0:
            await request.read()
            await asyncio.sleep(config.write_latency)

    async def add_certificate(request: web.Request) -> web.Response:
        await slow_write(request)
        body = await body_of(request)
        fields = ("certificate", "private_key", "comment")
        if body is None or not all(isinstance(body.get(f), str) for f in fields):
            return envelope(450)
        checked = check_certificate(state, body["certificate"], body["private_key"], "add")
        if isinstance(checked[0], int):
            return envelope(checked[0], message=str(checked[1]))
        seq = state.store(body["certificate"], body["private_key"], body["comment"], checked)
        return envelope(0, {"seq": seq}, "cert saved")

    async def update_certificate(request: web.Request) -> web.Response:
        await slow_write(request)
        seq = _seq(request)
        body = await body_of(request)
        known = {"certificate", "private_key", "comment"}
        if body is None or not body or not set(body) <= known or not all(isinstance(v, str) for v in body.values()):
            return envelope(450)
        stored = state.certificates.get(seq) if seq is not None else None
        if stored is None:
            return envelope(454)
        if "certificate" in body or "private_key" in body:
            certificate = body.get("certificate", stored.certificate)
            private_key = body.get("private_key", stored.private_key)
            checked = check_certificate(state, certificate, private_key, "update", exclude_seq=stored.seq)
            if isinstance(checked[0], int):
                if checked[0] != 459:
                    return envelope(checked[0], message=str(checked[1]))
                checked = tuple(x509.load_pem_x509_certificates(certificate.encode()))
            stored.certificate, stored.private_key, stored.chain = certificate, private_key, checked
        stored.comment = body.get("comment", stored.comment)
        return envelope(0, {"seq": stored.seq}, "cert updated")

    async def delete_certificate(request: web.Request) -> web.Response:
        seq = _seq(request)
        if seq is None or state.certificates.pop(seq, None) is None:
            return envelope(454)
        return envelope(0, {"seq": seq}, "cert updated")

    async def letsencrypt_status(request: web.Request) -> web.Response:
        resource = request.match_info["resource"]
        if resource not in config.resources:
            return envelope(454)
        order = state.orders.get(resource)
        return envelope(0, {"task_status": order.status if order else "no"}, "Success")

    def _in_use(domains: list[str], key: str) -> bool:
        return any(
            o.key != key and o.status in ("accepted", "processed") and o.domains[0] == domains[0]
            for o in state.orders.values()
        )

    def _order(key: str, domains: list[str]) -> web.Response:
        existing = state.orders.get(key)
        if existing is not None and existing.status == "accepted":
            return envelope(489)
        if _in_use(domains, key):
            return envelope(479, message="Main domain already in use")
        fails = key in config.failing or any(d in config.failing for d in domains)
        state.orders[key] = Order(key, domains, core.now(), fails)
        return envelope(0, message="Success")

    async def order_resource(request: web.Request) -> web.Response:
        await slow_write(request)
        resource = request.match_info["resource"]
        if resource not in config.resources:
            return envelope(454)
        return _order(resource, config.resources[resource])

    async def order_wildcard(request: web.Request) -> web.Response:
        await slow_write(request)
        body = await body_of(request)
        domains = body.get("domains") if body else None
        if not isinstance(domains, list) or not domains or not all(isinstance(d, str) and d for d in domains):
            return envelope(450)
        if any(d.lstrip("*.") in config.broken_dns or d in config.broken_dns for d in domains):
            return envelope(480)
        return _order(",".join(sorted(domains)), domains)

    async def control_letsencrypt(request: web.Request) -> web.Response:
        """Control API: orders that fail, DNS that is broken, certificates a list call leaves out."""
        body = await body_of(request) or {}
        config.failing.update(str(x) for x in body.get("failing", []))
        config.broken_dns.update(str(x) for x in body.get("brokenDns", []))
        for item in body.get("hideFromList", []):  # a list that lags behind an add
            state.hidden[int(item["seq"])] = int(item.get("calls", 1))
        return json_response({"failing": sorted(config.failing), "brokenDns": sorted(config.broken_dns)})

    async def describe_config(_: web.Request) -> web.Response:
        """Control API: the dialect this emulator was started with."""
        return json_response({"dialects": sorted(config.dialects)})

    app = web.Application(middlewares=[fault_middleware(core, lambda code: envelope(code)), api_guard])
    app.add_routes(control_routes(core, state.reset))
    app.add_routes(
        resource_routes(state.http_resources, config.account, core.now, authorised, lambda s: s in state.certificates)
    )
    prefix = "/app/ssl/v1/account/{account}"
    app.add_routes(
        [
            web.post("/_emulator/letsencrypt", control_letsencrypt),
            write_latency_route(config),
            web.get("/_emulator/config", describe_config),
            web.post("/app/oauth/v1/token/", token),
            web.get(prefix + "/certificate/", list_certificates),
            web.post(prefix + "/certificate/", add_certificate),
            web.get(prefix + "/certificate/{seq}", get_certificate),
            web.get(prefix + "/certificate/{seq}/", get_certificate),
            web.patch(prefix + "/certificate/{seq}", update_certificate),
            web.delete(prefix + "/certificate/{seq}", delete_certificate),
            web.get(prefix + "/letsencrypt/{resource}/", letsencrypt_status),
            web.get(prefix + "/letsencrypt/{resource}", letsencrypt_status),
            web.post(prefix + "/letsencrypt/{resource}/", order_resource),
            web.post(prefix + "/letsencrypt/{resource}", order_resource),
            web.post(prefix + "/letsencrypt/", order_wildcard),
        ]
    )
    return app
