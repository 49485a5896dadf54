"""Async client of the CDN SSL API (CDNvideo family, Sber Cloud CDN): certificates and Let's Encrypt orders.

    RemoteError (remote.py)
     ├── TransportError / ServiceUnavailable (HTTP 503)      retryable
     ├── LoginRefused            401 at the token endpoint: never retried with the same credentials Secret
     ├── AccountBanned           403 at the token endpoint: not tried again before the ban ends (3 h)
     ├── TokenRejected           the API refused a token twice (or a static token once)
     ├── CdnApiError             a non-zero `status` in the JSON envelope (the SSL API)
          ├── InvalidRequest 450, RecordNotFound 454, NotAllowed 455
          ├── CertificateExists 459
          ├── CertificateRejected 471-478 and 479 on certificate calls (narrowed per code)
          ├── DomainInUse 479 and DnsIncorrect 480 on Let's Encrypt calls, TaskExists 489
          ├── CdnInternalError 550 (retryable)
          └── CdnUnexpectedAnswer     an answer the client cannot read (a certificate without times…)
     └── CdnResourceError        the resource API (HTTP resources, configuration tasks): its own envelope
          ├── ResourceRefused         `{"status": "error", "message", "description"}`
          ├── ResourceNotFound 404    no such resource or task (also another account's: proves nothing)
          ├── ResourceForbidden 403, ResourceBadRequest (another 4xx, bodiless)
          └── ResourceUnavailable     5xx and 408 (retryable: `remote.retryable_status` decides), an answer
                                      in no known shape

Every answer is HTTP 200 with `{"status", "message", "data"}`; the envelope is
parsed once, in `_envelope`. 476 and 477 mean different things on add and
update, as the provider's page says, so the error class depends on the call.

Logins cannot ban the account (7 wrong passwords ban it for 3 hours), and
no tenant can lock another out:

- one login at a time per endpoint, username, password and namespace:
  concurrent callers wait for it and share its answer, a token or a refusal.
  A token is never shared with another namespace;
- a refusal is remembered per endpoint + username + credentials-Secret
  identity (`CdnAccess.credentials_id`, "<uid>:<resourceVersion>"): that
  Secret is never tried again; a changed Secret gets exactly one login. The
  memory is exported as plain JSON (`export_login_state`) for the status of
  the resources using the Secret, with its owner (namespace/Secret uid), and
  restored after a restart or failover (`restore_login_state`): what another
  owner recorded never denies this one anything but an unproven password's
  try. It never holds a password or a hash of one;
- a ban (403) answered here holds for everyone until it ends, then one login
  is tried; a ban read from a status holds for its owner only;
- an unproven password is tried only while fewer than `MAX_REFUSALS` (5)
  refusals of the username are known in a ban period, whatever the Secrets;
  a password that got a token (in this process, or for this very Secret
  version by its owner's status) while fewer than `MAX_REFUSALS_PROVEN` (6),
  counting only refusals seen here or its owner's: other passwords failing
  never lock it out, and 7 is never reached;
- the token endpoint has its own budget: unproven logins go through their
  namespace's quota and a quarter of it (`BudgetGate.attempt`).

API calls prove their credentials for the account by an envelope that is
not 455 (a token of another account answers 455); until then they go
through the same quota and share of the account's window.

Every text taken from an answer goes through a `Scrubber` that knows the
call's secrets (password, token, certificate and key sent).

Certificate times are read from `start_timestamp`/`end_timestamp` or, as older
documentation and public clients have them, `start`/`end` (numbers or numeric
strings); a certificate without them is an unexpected answer, never a time of 0.
`get` may answer `data` as a one-element array or as the object itself.

The resource API (`{base}/cdn/api/v1/<account>/resource/http/<id>`, `{base}/cdn/api/v1/tasks?id=`) takes the same
token but answers in another envelope: `{"status": "accept", "task_id"}` on a change, `{"status": "error", …}` on
a refusal, bodiless 400/404/500/503 otherwise; tasks answer `completed`, `error`, `pending` or `process`, in any
case. Its calls, reads included, count in a window of their own per account (`CONFIG_CLASS`, the provider's 20
configuration requests a minute), apart from the SSL API's.
"""

from __future__ import annotations

import hmac
import math
import re
import secrets
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeGuard, TypeVar

import httpx

from certsync import fairshare
from certsync.budget import CDN_PER_MINUTE, CDN_UNPROVEN_FRACTION, Scope, Window, unproven_share
from certsync.remote import (
    DECODE_ERRORS,
    LOGIN_CLASS,
    Attempt,
    Owner,
    RateLimitedError,
    RemoteClient,
    RemoteError,
    RemoteStatusError,
    ServiceUnavailable,
    base_url,
    json_body,
    parse_retry_after,
    retryable_status,
    short,
    with_retries,
)
from certsync.scrub import GENERIC, Scrubber

T = TypeVar("T")
TOKEN_LIFETIME_S = 6 * 3600.0
RENEW_MARGIN_S = 10 * 60.0  # renew this long before the token's announced end
# A token said to live shorter is held this long (a minute past the renewal margin); a 401 still logs in again.
MIN_TOKEN_LIFETIME_S = RENEW_MARGIN_S + 60.0
MAX_TOKEN_CHARS = 4096
BAN_SECONDS = 3 * 3600.0  # the provider bans an account this long after 7 wrong passwords
MAX_REFUSALS = 5  # refused logins per endpoint + username within BAN_SECONDS, whatever the Secret: 2 below a ban
MAX_REFUSALS_PROVEN = 6
"""Refusals known below which a password that got a token may still be tried (one below the provider's ban): an
unproven one stops at `MAX_REFUSALS`, so strangers' wrong passwords leave it its try, and 7 is never reached."""
MAX_KNOWN_REFUSALS = 32
"""Refusal times kept per username (the newest): far above both caps, so bounding them changes no decision."""
MAX_RESTORED_REFUSALS = 16
"""Refusal times taken from one restored state at most: a status may hold anything its tenant writes there."""
CLOCK_SKEW_S = 60.0
"""A restored time later than now by more than this is no time anything happened (a forged or broken status)."""
MAX_SUCCEEDED = 8
"""Passwords (and Secret versions) remembered per username as having got a token: the current one and a few before."""
MAX_LOGIN_MEMORIES = 4096
"""Usernames remembered before the quiet ones are dropped: junk usernames of every tenant cannot grow it for ever."""
IN_FLIGHT_WAIT_S = 30.0
"""When only logins in flight fill the refusal cap: wait about a call's deadline for their answers."""
TOKEN_STALE_S = 5 * 60.0  # an envelope 455 on a token older than this means "token no longer valid"
LOGIN_WINDOW = Window(limit=20, period=60.0)  # the token endpoint's own limit (providers.md)
TaskStatus = Literal["no", "accepted", "processed", "failed"]
Operation = Literal["read", "add", "update", "delete", "letsencrypt", "login"]
CONFIG_CLASS = "config"
"""The method class of the resource API's scope: its own window per account, beside the SSL API's ("all")."""
ConfigTaskState = Literal["completed", "error", "pending", "process"]
MAX_RESOURCE_NAMES = 256  # host names of one resource read at most: beyond, the answer is no resource


@dataclass(frozen=True)
class CdnAccess:
    """Account and credentials: `username`/`password`, or a ready `token`. Secrets stay out of repr.

    `credentials_id` names the credentials Secret's version ("<uid>:<resourceVersion>"): a refused
    login is never tried again with the same one. Without it, the refusal holds for this process only.
    `namespace` with `credentials_id` names whose credentials these are (the tenant and its Secret): shared
    memory (budgets, tokens, login memory) is keyed by them, never by spec text alone.
    """

    endpoint: str
    account: str
    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    credentials_id: str = ""
    namespace: str = ""

    def login_key(self) -> tuple[str, str]:
        return (base_url(self.endpoint), self.username)

    def owner(self) -> Owner:
        """Whose credentials these are, for proofs and quotas: (namespace, credentials_id)."""
        return (self.namespace, self.credentials_id)

    def login_owner(self) -> str:
        """Whose login state this is, as status records it: "<namespace>/<Secret uid>" (every version of it)."""
        return f"{self.namespace}/{self.credentials_id.split(':', 1)[0]}"

    def secrets(self) -> tuple[str, ...]:
        return (self.password, self.token)


@dataclass(frozen=True)
class ChainLink:
    subject_cn: str
    issuer_cn: str
    start_timestamp: int
    end_timestamp: int
    fingerprint: str
    serial: str

    @classmethod
    def from_json(cls, data: Any) -> ChainLink:
        if not isinstance(data, dict):
            raise CdnUnexpectedAnswer(0, f"unexpected chain_info entry: {short(data)}")
        return cls(
            subject_cn=str(data.get("subject_CN", "")),
            issuer_cn=str(data.get("issuer_CN", "")),
            start_timestamp=timestamp(data, "start"),
            end_timestamp=timestamp(data, "end"),
            fingerprint=str(data.get("fingerprint", "")).upper(),
            serial=str(data.get("serial", "")).upper(),
        )


@dataclass(frozen=True)
class CdnCertificateInfo:
    seq: int
    comment: str
    cn: str
    alt: tuple[str, ...]
    issuer: str
    start_timestamp: int
    end_timestamp: int
    chain_info: tuple[ChainLink, ...] | None = None  # only with ?details

    @classmethod
    def from_json(cls, data: Any, scrubber: Scrubber = GENERIC) -> CdnCertificateInfo:
        if not isinstance(data, dict) or not _is_int(data.get("seq")):
            raise CdnUnexpectedAnswer(0, f"unexpected certificate object: {short(data, scrubber)}")
        chain = data.get("chain_info")
        return cls(
            seq=int(data["seq"]),
            comment=str(data.get("comment", "")),
            cn=str(data.get("cn", "")),
            alt=tuple(a.strip() for a in str(data.get("alt", "")).split(",") if a.strip()),
            issuer=str(data.get("issuer", "")),
            start_timestamp=timestamp(data, "start"),
            end_timestamp=timestamp(data, "end"),
            chain_info=tuple(ChainLink.from_json(c) for c in chain) if isinstance(chain, list) else None,
        )

    @property
    def leaf_fingerprint(self) -> str | None:
        return self.chain_info[0].fingerprint if self.chain_info else None

    def covers(self, domains: Iterable[str]) -> bool:
        names = {self.cn.lower(), *(a.lower() for a in self.alt)}
        return all(d.lower() in names for d in domains)


MAX_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z: later is no time a datetime (or a certificate) can hold


def timestamp(data: dict[str, Any], which: Literal["start", "end"]) -> int:
    """Unix seconds from `<which>_timestamp` or `<which>`, between 1970 and 9999; anything else is an error."""
    seconds = _timestamp(data, which)
    if not 0 <= seconds <= MAX_TIMESTAMP:
        raise CdnUnexpectedAnswer(0, f"certificate time {which} is out of range: {short(seconds)}")
    return seconds


def _timestamp(data: dict[str, Any], which: Literal["start", "end"]) -> int:
    for name in (f"{which}_timestamp", which):
        value = data.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip():
            try:
                return int(float(value.strip()))
            except (ValueError, OverflowError):
                raise CdnUnexpectedAnswer(0, f"certificate time {name} is not a number: {short(value)}") from None
    raise CdnUnexpectedAnswer(0, f"certificate without {which}_timestamp or {which}: {short(sorted(data))}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- errors ----------------------------------------------------------------------------------


class LoginRefused(RemoteStatusError):
    """The token endpoint said 401. Retrying with the same password risks the 7-strikes ban."""

    reason = "CredentialsInvalid"


class AccountBanned(RemoteStatusError):
    """403 at the token endpoint: the account is banned; `retry_after` says when the one next login may go."""

    reason = "AccountBanned"
    retryable = True


class TokenRejected(RemoteStatusError):
    """HTTP 401/405 on an API call even with a fresh token, or with the static token of the Secret."""

    reason = "CredentialsInvalid"


class CdnRateLimited(RemoteStatusError, RateLimitedError):
    reason = "RateLimited"
    retryable = True


class CdnApiError(RemoteStatusError):
    """A non-zero status in the envelope."""

    reason = "RemoteRejected"


class InvalidRequest(CdnApiError):
    pass


class RecordNotFound(CdnApiError):
    reason = "RemoteNotFound"


class NotAllowed(CdnApiError):
    reason = "Forbidden"


class CertificateExists(CdnApiError):
    pass


class CertificateRejected(CdnApiError):
    """The remote refused the certificate or key itself: a person must fix the Secret."""

    reason: ClassVar[str] = "RemoteRejected"


class RemoteInvalidCertificate(CertificateRejected):
    reason = "InvalidCertificate"


class RemoteInvalidPrivateKey(CertificateRejected):
    reason = "InvalidPrivateKey"


class RemoteKeyMismatch(CertificateRejected):
    reason = "KeyMismatch"


class RemoteCertificateExpired(CertificateRejected):
    reason = "CertificateExpired"


class RootNotTrusted(CertificateRejected):
    reason = "RootNotTrusted"


class InvalidLines(CertificateRejected):
    reason = "InvalidCertificate"


class ChainNotSigned(CertificateRejected):
    reason = "ChainInvalid"


class ChainDuplicateSubject(CertificateRejected):
    reason = "ChainInvalid"


class ChainTooManySameIssuer(CertificateRejected):
    reason = "ChainInvalid"


class DomainInUse(CdnApiError):
    reason = "DomainInUse"


class DnsIncorrect(CdnApiError):
    reason = "DNSIncorrect"


class TaskExists(CdnApiError):
    reason = "OrderExists"


class CdnInternalError(CdnApiError):
    reason = "RemoteUnavailable"
    retryable = True


class CdnUnexpectedAnswer(CdnInternalError):
    """An answer in no shape the client knows (status 0: not the provider's code). Retryable like a 550;
    the caller decides when a repeated one is worth a person's look."""


_COMMON: dict[int, type[CdnApiError]] = {
    450: InvalidRequest,
    454: RecordNotFound,
    455: NotAllowed,
    550: CdnInternalError,
}
_CERTIFICATE: dict[int, type[CdnApiError]] = {
    459: CertificateExists,
    471: RemoteInvalidCertificate,
    472: RemoteInvalidPrivateKey,
    473: RemoteKeyMismatch,
    474: RemoteCertificateExpired,
    475: RootNotTrusted,
    478: ChainDuplicateSubject,
    479: ChainTooManySameIssuer,
}
_BY_OPERATION: dict[str, dict[int, type[CdnApiError]]] = {
    "add": {**_CERTIFICATE, 476: InvalidLines},
    "update": {**_CERTIFICATE, 476: ChainNotSigned, 477: InvalidLines},
    "letsencrypt": {479: DomainInUse, 480: DnsIncorrect, 489: TaskExists},
}


def api_error(operation: str, status: int, message: str, scrubber: Scrubber = GENERIC) -> CdnApiError:
    cls = _BY_OPERATION.get(operation, {}).get(status) or _COMMON.get(status, CdnApiError)
    return cls(status, short(message, scrubber))


# --- the resource API: HTTP resources and their configuration tasks ---------------------------


class CdnResourceError(RemoteStatusError):
    """The resource API refused or failed; `status` is the HTTP status (200 for an error envelope)."""

    reason = "RemoteRejected"


class ResourceRefused(CdnResourceError):
    """`{"status": "error", "message", "description"}`: the API read the request and refused it."""


class ResourceNotFound(CdnResourceError):
    """404 (bodiless): no such resource or task, or another account's (the API says alike)."""

    reason = "RemoteNotFound"


class ResourceForbidden(CdnResourceError):
    reason = "Forbidden"


class ResourceBadRequest(CdnResourceError):
    """400 or another 4xx, bodiless: the request itself is wrong (never sent again as it is)."""


class ResourceUnavailable(CdnResourceError, ServiceUnavailable):
    """408 or 5xx (`retryable_status`), or an answer in no known shape: a read is retried inside the call, a
    write's outcome is unknown (the caller reads back)."""

    reason = "RemoteUnavailable"
    retryable = True


@dataclass(frozen=True)
class CdnResource:
    """An HTTP resource as read: its host names, the certificate bound (an SSL API seq, None when none), and the
    whole configuration exactly as answered (what a GET-then-PUT sends back, `certificate` changed)."""

    id: str
    names: tuple[str, ...]
    certificate: int | None
    configuration: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True)
class ConfigTask:
    """A configuration task: `state` lower-cased (the provider's pages capitalise it in places)."""

    id: str
    state: ConfigTaskState
    message: str


# A DNS host name as a CDN resource lists it (ASCII or punycode, an optional leading wildcard, a trailing dot).
HOST_NAME = re.compile(r"(?=.{1,254}$)(\*\.)?([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
                       r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?")  # fmt: skip


def _resource(data: Any, resource_id: str, scrubber: Scrubber) -> CdnResource:
    if isinstance(data, dict) and isinstance(data.get("data"), dict) and "names" not in data:
        data = data["data"]  # a wrapped answer, as the family's other APIs give
    if not isinstance(data, dict):
        raise ResourceUnavailable(0, f"unexpected resource answer: {short(data, scrubber)}")
    raw = data.get("names", [])
    if isinstance(raw, str):
        raw = [n for n in (part.strip() for part in raw.split(",")) if n]
    if not isinstance(raw, list) or len(raw) > MAX_RESOURCE_NAMES or not all(isinstance(n, str) for n in raw):
        raise ResourceUnavailable(0, f"resource {resource_id}: unexpected names {short(raw, scrubber)}")
    # Names reach status and messages: only host names pass (no echoed credential, no free text), never shown
    # when refused.
    if not all(HOST_NAME.fullmatch(n.strip()) and scrubber.scrub(n) == n for n in raw):
        raise ResourceUnavailable(0, f"resource {resource_id}: its names are not all host names (not shown)")
    bound = data.get("certificate")
    if isinstance(bound, str) and bound.strip().isdigit():
        bound = int(bound.strip())
    certificate = bound if isinstance(bound, int) and not isinstance(bound, bool) and bound > 0 else None
    return CdnResource(resource_id, tuple(raw), certificate, dict(data))


def _resources(data: Any, scrubber: Scrubber) -> list[CdnResource]:
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ResourceUnavailable(0, f"unexpected list of resources: {short(data, scrubber)}")
    return [_resource(item, str(item.get("id", "")) if isinstance(item, dict) else "", scrubber) for item in data]


def _accepted(data: Any, scrubber: Scrubber) -> str:
    """The task id of an accepted change."""
    task = data.get("task_id") if isinstance(data, dict) else None
    if isinstance(data, dict) and str(data.get("status", "")).lower() == "accept" and _is_int(task):
        task = str(task)
    if not isinstance(task, str) or not task or len(task) > 256:
        raise ResourceUnavailable(0, f"change accepted without a task id: {short(data, scrubber)}")
    return task


def _config_task(task_id: str) -> Callable[[Any, Scrubber], ConfigTask]:
    def parse(data: Any, scrubber: Scrubber) -> ConfigTask:
        state = str(data.get("status", "")).strip().lower() if isinstance(data, dict) else ""
        if state not in ("completed", "error", "pending", "process"):
            raise ResourceUnavailable(0, f"task {task_id}: unexpected status {short(data, scrubber)}")
        message = str(data.get("message") or "") if isinstance(data, dict) else ""
        return ConfigTask(task_id, state, short(message, scrubber))  # type: ignore[arg-type]

    return parse


def _resource_envelope(response: httpx.Response, scrubber: Scrubber, task: bool = False) -> Any:
    """HTTP meaning first (bodiless codes), then `{"status": "error"}`: the resource API's typed errors. A task's
    answer is no envelope: its `status` `error` is the task's state (`ConfigTask`), not a refusal of the call."""
    code = response.status_code
    if code != 200:
        said = short(_message(response), scrubber) if response.content else ""
        text = said or response.reason_phrase or "no body"
        if code == 404:
            raise ResourceNotFound(code, text)
        if retryable_status(code):
            raise ResourceUnavailable(code, text)
        if code == 403:
            raise ResourceForbidden(code, text)
        raise ResourceBadRequest(code, text)
    try:
        body = json_body(response)
    except DECODE_ERRORS as error:
        raise ResourceUnavailable(code, f"answer is not JSON ({type(error).__name__})") from None
    if not task and isinstance(body, dict) and str(body.get("status", "")).lower() == "error":
        message, description = str(body.get("message") or ""), str(body.get("description") or "")
        said = f"{message}: {description}" if message and description else message or description or "refused"
        raise ResourceRefused(code, short(said, scrubber))
    return body


# --- client ----------------------------------------------------------------------------------


@dataclass
class _Token:
    value: str = field(repr=False)
    expires_at: float
    obtained_at: float


@dataclass
class _Refusal:
    at: float  # when (Unix seconds, rounded as exported)
    owner: str  # whose login was refused ("<namespace>/<uid>"); "" when restored as another owner's
    seen: bool  # answered to this process, not read from a status


@dataclass
class _LoginMemory:
    """What one endpoint + username has taught: refused Secrets, recent refusals, bans, passwords that got a token,
    logins in flight. No password, no hash (the tags are MACs keyed by this process only, never exported)."""

    refused_ids: dict[str, float] = field(default_factory=dict)  # credentials_id -> when refused
    refused_tags: set[str] = field(default_factory=set)  # process-keyed MACs of refused passwords (never exported)
    refusals: list[_Refusal] = field(default_factory=list)  # each refusal, any Secret, oldest first
    banned_until: float = 0.0  # a 403 answered to this process: for every owner
    restored_bans: dict[str, float] = field(default_factory=dict)  # owner -> a ban its own status recorded
    succeeded: dict[str, float] = field(default_factory=dict)  # password tag -> when it got a token here
    succeeded_ids: dict[str, float] = field(default_factory=dict)  # credentials_id -> when it got a token here
    vouched: dict[str, float] = field(default_factory=dict)  # credentials_id -> a success its owner's status says
    # Namespaces whose status vouched for a password that was then refused here: their statuses vouch for nothing
    # more (so a forged vouch takes one refusal, never two), while other tenants' vouches still hold.
    vouch_refused: set[str] = field(default_factory=set)
    in_flight: int = 0  # logins sent and not answered yet: counted as refusals until they are

    def prune(self, now: float) -> None:
        self.refusals = [r for r in self.refusals if r.at > now - BAN_SECONDS][-MAX_KNOWN_REFUSALS:]


class CdnClient(RemoteClient):
    """One client for every CDN resource: tokens are cached per endpoint, username, password and namespace."""

    def __init__(
        self,
        *,
        per_minute: int = CDN_PER_MINUTE,
        login_window: Window = LOGIN_WINDOW,
        config_per_minute: int = CDN_PER_MINUTE,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.window = Window(limit=per_minute, period=60.0)
        # The resource API's own limit (20 configuration requests a minute per account): every call of it counts.
        self.config_window = Window(limit=config_per_minute, period=60.0)
        self.config_share = unproven_share(self.config_window, CDN_UNPROVEN_FRACTION)
        self.login_window = login_window
        # What unproven callers of every namespace may send together: a quarter of each window.
        self.share = unproven_share(self.window, CDN_UNPROVEN_FRACTION)
        self.login_share = unproven_share(login_window, CDN_UNPROVEN_FRACTION)
        # The MAC key lives in this process only: a refused password is recognised here and nowhere else.
        self._tag_key = secrets.token_bytes(32)
        self._tokens: dict[tuple[str, str, str, str], _Token] = {}  # (endpoint, username, password tag, namespace)
        self._logins: dict[tuple[str, str], _LoginMemory] = {}
        self._flights = fairshare.KeyedLocks()  # single flight per token key

    @property
    def clock(self) -> Callable[[], float]:
        return self.gate.budget.now

    def scope(self, access: CdnAccess, kind: str = "api") -> Scope:
        if kind == "api":
            return Scope("cdn", base_url(access.endpoint), access.account, "all")
        if kind == CONFIG_CLASS:  # the resource API: the account's configuration window
            return Scope("cdn", base_url(access.endpoint), access.account, CONFIG_CLASS)
        return Scope("cdn", base_url(access.endpoint), "token-endpoint", LOGIN_CLASS)

    # -- auth --

    def _tag(self, password: str) -> str:
        return hmac.new(self._tag_key, password.encode(), "sha256").hexdigest()

    def _token_key(self, access: CdnAccess) -> tuple[str, str, str, str]:
        """A token belongs to the credentials and the namespace that obtained it: a new password logs in anew, and
        another namespace never uses it (the same username and password there get a login of their own)."""
        return (*access.login_key(), self._tag(access.password), access.namespace)

    def _memory(self, access: CdnAccess) -> _LoginMemory:
        key = access.login_key()
        if key not in self._logins and len(self._logins) >= MAX_LOGIN_MEMORIES:
            self._forget_quiet_logins()
        return self._logins.setdefault(key, _LoginMemory())

    def _forget_quiet_logins(self) -> None:
        """Drop the usernames with nothing to count: no refusal within the ban period, no ban, no login in flight
        (what else they held, a refused Secret version, their resources' statuses hold and restore)."""
        now = self.clock()
        for key, memory in list(self._logins.items()):
            memory.prune(now)
            quiet = not memory.refusals and memory.in_flight == 0 and memory.banned_until <= now
            if quiet and not any(until > now for until in memory.restored_bans.values()):
                del self._logins[key]

    def forget_refusal(self, access: CdnAccess) -> None:
        """These credentials may be tried once more (a person says they are fixed)."""
        memory = self._memory(access)
        memory.refused_ids.pop(access.credentials_id, None)
        memory.refused_tags.discard(self._tag(access.password))

    def export_login_state(self, access: CdnAccess) -> dict[str, Any]:
        """Plain JSON for the status of each resource using these credentials; `{}` when there is nothing to keep.

        Holds its owner ("<namespace>/<Secret uid>"), the refusal of this Secret version, or its success (so that
        after a restart its password is not taken for a stranger's), the times of recent refusals of the username
        (this owner's, and everyone else's without saying whose), and a ban's end. Times are Unix seconds.
        """
        memory = self._logins.get(access.login_key())
        if memory is None:
            return {}
        now, me, cid = self.clock(), access.login_owner(), access.credentials_id
        memory.prune(now)
        state: dict[str, Any] = {}
        refused_at = memory.refused_ids.get(cid) if cid else None
        succeeded_at = (memory.succeeded_ids.get(cid) or memory.vouched.get(cid)) if cid else None
        if refused_at is not None:
            state["refused"] = {"credentialsId": cid, "at": round(refused_at, 3)}
        elif succeeded_at is not None:
            state["succeeded"] = {"credentialsId": cid, "at": round(succeeded_at, 3)}
        own = [round(r.at, 3) for r in memory.refusals if r.owner == me]
        others = [round(r.at, 3) for r in memory.refusals if r.owner != me]
        if own:
            state["recentRefusals"] = own
        if others:
            state["otherRefusals"] = others
        banned = max(memory.banned_until, memory.restored_bans.get(me, 0.0))
        if banned > now:
            state["bannedUntil"] = round(banned, 3)
        if state:
            state.update({"endpoint": access.login_key()[0], "username": access.username, "owner": me})
        return state

    def restore_login_state(self, access: CdnAccess, state: Mapping[str, Any]) -> None:
        """Merge a state exported before (by this or another replica) into what this process knows.

        Ignored when it was recorded for another endpoint or username. Of another owner's state (or one that names
        no owner) only the refusal of this very Secret version holds, and its refusal times count against
        unproven passwords only. A refusal recorded for another version of the Secret does not hold for this
        one: the changed Secret gets its one login.
        """
        if not isinstance(state, Mapping) or not state:
            return
        endpoint, username = access.login_key()
        if state.get("endpoint") != endpoint or state.get("username") != username:
            return
        memory, now, me, cid = self._memory(access), self.clock(), access.login_owner(), access.credentials_id
        recorded = state.get("owner")
        same = recorded == me
        refused = state.get("refused")
        if isinstance(refused, Mapping) and cid and refused.get("credentialsId") == cid and (same or not recorded):
            at = refused.get("at")
            memory.refused_ids.setdefault(cid, float(at) if _number(at) and math.isfinite(at) else now)
        succeeded = state.get("succeeded")
        if same and isinstance(succeeded, Mapping) and cid and succeeded.get("credentialsId") == cid:
            at = _restored_time(succeeded.get("at"), now)
            if at is not None and cid not in memory.refused_ids:
                memory.vouched.setdefault(cid, at)
                _bound(memory.vouched)
        self._merge_refusals(memory, state.get("recentRefusals"), me if same else "", now)
        self._merge_refusals(memory, state.get("otherRefusals"), "", now)
        banned = state.get("bannedUntil")
        if same and _number(banned) and math.isfinite(banned):
            memory.restored_bans[me] = max(memory.restored_bans.get(me, 0.0), min(float(banned), now + BAN_SECONDS))

    @staticmethod
    def _merge_refusals(memory: _LoginMemory, times: object, owner: str, now: float) -> None:
        """Restored refusal times joined with those known, as multisets (one refusal exported by eight resources
        is one refusal; two in the same millisecond are two); unknown ones are not seen here, and `owner`'s."""
        if not isinstance(times, list):
            return
        valid = [round(float(t), 3) for t in times[:MAX_RESTORED_REFUSALS] if _restored_time(t, now) is not None]
        for at, count in Counter(valid).items():
            known = [r for r in memory.refusals if r.at == at]
            for refusal in known:
                if owner and not refusal.owner:
                    refusal.owner = owner
            memory.refusals.extend(_Refusal(at, owner, seen=False) for _ in range(count - len(known)))
        memory.refusals.sort(key=lambda r: r.at)
        memory.prune(now)

    async def token(self, access: CdnAccess) -> str:
        if access.token:
            return access.token
        cached = self._fresh_token(access)
        if cached:
            return cached.value
        memory = self._memory(access)
        async with self._flights.hold(self._token_key(access)):  # whoever waited here finds the login's answer
            cached = self._fresh_token(access)
            if cached:
                return cached.value
            self._refuse_known(access, memory)
            return await self._login(access, memory)

    def _fresh_token(self, access: CdnAccess) -> _Token | None:
        cached = self._tokens.get(self._token_key(access))
        return cached if cached and cached.expires_at - RENEW_MARGIN_S > self.clock() else None

    def _drop_token(self, access: CdnAccess, value: str) -> None:
        """Forget the token the API refused, unless another caller already replaced it."""
        key = self._token_key(access)
        held = self._tokens.get(key)
        if held is not None and held.value == value:
            del self._tokens[key]

    def _proven_password(self, access: CdnAccess, memory: _LoginMemory) -> bool:
        """Got a token in this process (the budget's proof too), or for this Secret version by its owner's status
        (for the refusal cap only, and only until one such password is refused here)."""
        cid = access.credentials_id
        vouched = bool(cid) and cid in memory.vouched and access.namespace not in memory.vouch_refused
        return self._tag(access.password) in memory.succeeded or vouched

    def _refuse_known(self, access: CdnAccess, memory: _LoginMemory) -> None:
        """Raise, without any call, what the login would surely answer, or what must not be risked."""
        now = self.clock()
        who = f"login of {access.username!r}"
        if (access.credentials_id and access.credentials_id in memory.refused_ids) or self._tag(
            access.password
        ) in memory.refused_tags:
            raise LoginRefused(401, f"{who} was refused before; not retried until the credentials Secret changes")
        banned = max(memory.banned_until, memory.restored_bans.get(access.login_owner(), 0.0))
        if banned > now:
            raise AccountBanned(
                403,
                f"the account {access.username!r} is banned for too many wrong passwords; one login will be tried "
                f"after the ban ends (in {banned - now:.0f}s)",
                retry_after=banned - now,
            )
        memory.prune(now)
        if self._proven_password(access, memory):
            me = access.login_owner()
            counted, limit = [r.at for r in memory.refusals if r.seen or r.owner == me], MAX_REFUSALS_PROVEN
        else:
            counted, limit = [r.at for r in memory.refusals], MAX_REFUSALS
        over = len(counted) + memory.in_flight - limit
        if over >= 0:
            wait = counted[over] + BAN_SECONDS - now if over < len(counted) else IN_FLIGHT_WAIT_S
            raise LoginRefused(
                401,
                f"{who}: {len(counted)} wrong passwords in the last {BAN_SECONDS / 3600:.0f} h; not trying "
                f"another before {wait:.0f}s have passed (the provider bans the account after 7)",
                retry_after=wait,
            )

    async def _login(self, access: CdnAccess, memory: _LoginMemory) -> str:
        scrubber = Scrubber.of(*access.secrets())
        scope = self.scope(access, "login")
        tag = self._tag(access.password)
        request = self._http.build_request(
            "POST",
            f"{base_url(access.endpoint)}/app/oauth/v1/token/",
            data={"username": access.username, "password": access.password},
        )
        proven = tag in memory.succeeded  # a password that got a token here spends the endpoint's window
        async with self.gate.attempt(access.owner(), scope, self.login_window, self.login_share, proven=proven) as go:
            self._refuse_known(access, memory)  # the wait for an unproven turn may have taught something
            memory.in_flight += 1
            try:
                async with self.concurrency.slot(scope.target):
                    go.send()  # counted when sent, not when queued
                    response = await self.send(request, "cdn", "login")
            finally:
                memory.in_flight -= 1
            return self._logged_in(access, memory, response, go, scrubber)

    def _logged_in(
        self, access: CdnAccess, memory: _LoginMemory, response: httpx.Response, go: Attempt, scrubber: Scrubber
    ) -> str:
        """What the token endpoint's answer teaches: a refusal, a ban, or a token (and a proven password)."""
        now = round(self.clock(), 3)  # as exported: a refusal read back from status is the same refusal
        tag, cid = self._tag(access.password), access.credentials_id
        if response.status_code == 401:
            go.refused()
            if cid:
                memory.refused_ids[cid] = now
                _bound(memory.refused_ids, MAX_KNOWN_REFUSALS)
            memory.refused_tags.add(tag)
            memory.refusals.append(_Refusal(now, access.login_owner(), seen=True))
            memory.succeeded.pop(tag, None)
            memory.succeeded_ids.pop(cid, None)
            if memory.vouched.pop(cid, None) is not None:
                memory.vouch_refused.add(access.namespace)
            raise LoginRefused(401, f"wrong username or password for {access.username!r}")
        if response.status_code == 403:
            go.refused()
            memory.banned_until = now + BAN_SECONDS
            said = short(_message(response), scrubber)
            raise AccountBanned(
                403,
                f"the account {access.username!r} is banned ({said or 'no reason given'}); one login will be tried "
                f"after {BAN_SECONDS:.0f}s",
                retry_after=BAN_SECONDS,
            )
        self._raise_for_http(response, go, scrubber)
        go.proved()  # a 200 of the token endpoint: the credentials were taken (a token that cannot be used is not)
        body = _json(response)
        token = (body.get("token") or body.get("auth_token")) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise CdnInternalError(0, "token endpoint answered without a token")
        if not (token.isascii() and token.isprintable()) or len(token) > MAX_TOKEN_CHARS:
            # It goes into a header of every call: refused here, never cached.
            raise CdnInternalError(0, "token endpoint answered a token that cannot be sent (not printable ASCII)")
        lifetime_ms = body.get("lifetime") if isinstance(body, dict) else None
        try:
            lifetime = float(lifetime_ms) / 1000.0 if _number(lifetime_ms) else TOKEN_LIFETIME_S
        except OverflowError:  # an integer past float's range: not a lifetime anyone means
            lifetime = TOKEN_LIFETIME_S
        # A lifetime is believed between a minute and our own cap: a tiny one would make every call a login.
        lifetime = min(max(lifetime, MIN_TOKEN_LIFETIME_S), TOKEN_LIFETIME_S) if math.isfinite(lifetime) else 0.0
        lifetime = lifetime or TOKEN_LIFETIME_S
        memory.banned_until = 0.0
        memory.restored_bans.pop(access.login_owner(), None)
        memory.succeeded[tag] = now
        _bound(memory.succeeded)
        if cid:
            memory.succeeded_ids.setdefault(cid, now)  # the first success: status is not rewritten each renewal
            _bound(memory.succeeded_ids)
        self._tokens[self._token_key(access)] = _Token(token, now + min(lifetime, TOKEN_LIFETIME_S), now)
        return token

    # -- transport of API calls --

    def _raise_for_http(self, response: httpx.Response, go: Attempt, scrubber: Scrubber) -> None:
        if response.status_code == 503:
            raise ServiceUnavailable(503, "service unavailable")
        if response.status_code == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise CdnRateLimited(429, "rate limited", retry_after=go.rate_limited(retry_after))
        if response.status_code != 200:
            said = short(_message(response), scrubber)
            raise CdnInternalError(response.status_code, said or response.reason_phrase)

    async def _call(
        self,
        access: CdnAccess,
        method: str,
        path: str,
        operation: Operation,
        body: Any,
        parse: Callable[[Any, Scrubber], T],
    ) -> T:
        """One API call with its retries: the parsed `data` of the envelope, or a typed error, scrubbed."""
        idempotent = method in ("GET", "DELETE")  # a write is never re-sent inside a call
        key = body.get("private_key") if isinstance(body, dict) else None  # certificates are public
        scrubber = Scrubber.of(*access.secrets(), key if isinstance(key, str) else None)
        return await self._gated(
            access, self.scope(access), self.window, self.share, scrubber, idempotent, parse,
            lambda go: self._call_once(access, method, path, operation, body, scrubber, go),
        )  # fmt: skip

    async def _gated(
        self,
        access: CdnAccess,
        scope: Scope,
        window: Window,
        unproven_share: int,
        scrubber: Scrubber,
        idempotent: bool,
        parse: Callable[[Any, Scrubber], T],
        once: Callable[[Attempt], Awaitable[Any]],
    ) -> T:
        """One call of either API with its retries, as one attempt of the owner in `window`; errors scrubbed, the
        token held then included."""
        kwargs: dict[str, Any] = {"sleep": self._sleep} if self._sleep else {}
        try:
            # One attempt of the owner for the account: its retries and a token renewal's resend are part of it.
            # A password that got a token is no stranger's: its first account call is not held to the share
            # (which junk of other namespaces may fill), only to its namespace's quota, until it proves the account.
            await self.token(access)  # first: a login never waits behind the account's unproven turn
            logged_in = bool(access.password) and self._tag(access.password) in self._memory(access).succeeded
            share = None if logged_in else unproven_share
            async with self.gate.attempt(access.owner(), scope, window, share) as go:
                data = await with_retries(lambda: once(go), self.retry, idempotent=idempotent, **kwargs)
            return parse(data, scrubber)
        except RemoteError as error:
            held = self._tokens.get(self._token_key(access)) if access.password else None
            raise error.scrubbed(scrubber.with_secrets(held.value if held else None)) from error.__cause__

    async def _call_once(
        self,
        access: CdnAccess,
        method: str,
        path: str,
        operation: Operation,
        body: Any,
        scrubber: Scrubber,
        go: Attempt,
    ) -> Any:
        """Send once; a refused token (HTTP 401/405, or 455 on an old token) is renewed once and the call resent.
        An envelope other than 455 proves the credentials for the account; 401/405 drop a proof held."""
        scope = self.scope(access)
        for renewed in (False, True):
            token = await self.token(access)
            with_token = scrubber.with_secrets(token)
            url = f"{base_url(access.endpoint)}/app/ssl/v1/account/{access.account}/{path}"
            request = self._http.build_request(method, url, json=body, headers={"CDN-AUTH-TOKEN": token})
            call = f"{method} {path.split('/')[0]}"
            async with self.concurrency.slot(scope.target):
                go.send()  # counted when sent, not when queued
                response = await self.send(request, "cdn", call)
            refused = response.status_code in (401, 405)
            if not refused:
                self._raise_for_http(response, go, with_token)
                try:
                    data = _envelope(response, operation, with_token)
                except NotAllowed:  # 455: a token of another account, or (old) one no longer valid: no proof
                    if access.token or not self._stale(access, token):
                        raise
                    refused = True
                except CdnInternalError:  # 550 or an answer in no known shape: proves nothing
                    raise
                except CdnApiError:  # the API read the request with these credentials and refused it
                    go.proved()
                    raise
                else:
                    go.proved()
                    return data
            go.refused()
            self._drop_token(access, token)
            if renewed or access.token:
                code = response.status_code
                raise TokenRejected(code, "the API refused the token" + (" again after a new login" if renewed else ""))
        raise AssertionError("unreachable: the second refusal raises")

    def _stale(self, access: CdnAccess, token: str) -> bool:
        held = self._tokens.get(self._token_key(access))
        return held is not None and held.value == token and self.clock() - held.obtained_at > TOKEN_STALE_S

    # -- certificates --

    async def list_certificates(self, access: CdnAccess) -> list[CdnCertificateInfo]:
        return await self._call(access, "GET", "certificate/", "read", None, _certificates)

    async def get_certificate(self, access: CdnAccess, seq: int, *, details: bool = True) -> CdnCertificateInfo:
        path = f"certificate/{seq}" + ("?details" if details else "")
        items = await self._call(access, "GET", path, "read", None, _certificates)
        if not items:
            raise RecordNotFound(454, f"certificate {seq} not in the answer")
        return items[0]

    async def add_certificate(self, access: CdnAccess, certificate: str, private_key: str, comment: str) -> int:
        body = {"certificate": certificate, "private_key": private_key, "comment": comment}
        return _seq(await self._call(access, "POST", "certificate/", "add", body, _raw))

    async def update_certificate(
        self,
        access: CdnAccess,
        seq: int,
        *,
        certificate: str | None = None,
        private_key: str | None = None,
        comment: str | None = None,
    ) -> int:
        fields = {"certificate": certificate, "private_key": private_key, "comment": comment}
        body = {k: v for k, v in fields.items() if v is not None}
        return _seq(await self._call(access, "PATCH", f"certificate/{seq}", "update", body, _raw), seq)

    async def delete_certificate(self, access: CdnAccess, seq: int) -> None:
        await self._call(access, "DELETE", f"certificate/{seq}", "delete", None, _raw)

    # -- Let's Encrypt --

    async def letsencrypt_status(self, access: CdnAccess, resource_id: str) -> str:
        return await self._call(access, "GET", f"letsencrypt/{resource_id}/", "letsencrypt", None, _task_status)

    async def order_letsencrypt(self, access: CdnAccess, resource_id: str) -> None:
        await self._call(access, "POST", f"letsencrypt/{resource_id}/", "letsencrypt", None, _raw)

    async def order_wildcard(self, access: CdnAccess, domains: list[str]) -> None:
        await self._call(access, "POST", "letsencrypt/", "letsencrypt", {"domains": domains}, _raw)

    # -- HTTP resources (the resource API) --

    async def list_resources(self, access: CdnAccess) -> list[CdnResource]:
        """Every HTTP resource of the account (at most 100), in one call."""
        path = f"{access.account}/resource/http/"
        return await self._resource_call(access, "GET", path, None, "resources", _resources)

    async def get_resource(self, access: CdnAccess, resource_id: str) -> CdnResource:
        path = f"{access.account}/resource/http/{_segment(resource_id)}"
        return await self._resource_call(
            access, "GET", path, None, "resource", lambda data, sc: _resource(data, resource_id, sc)
        )

    async def patch_resource(self, access: CdnAccess, resource_id: str, fields: Mapping[str, Any]) -> str:
        """A partial change (only `fields`); the task id. Never re-sent inside the call."""
        path = f"{access.account}/resource/http/{_segment(resource_id)}"
        return await self._resource_call(access, "PATCH", path, dict(fields), "resource", _accepted)

    async def put_resource(self, access: CdnAccess, resource_id: str, configuration: Mapping[str, Any]) -> str:
        """The whole configuration (a field left out is gone at the remote); the task id."""
        path = f"{access.account}/resource/http/{_segment(resource_id)}"
        return await self._resource_call(access, "PUT", path, dict(configuration), "resource", _accepted)

    async def config_task(self, access: CdnAccess, task_id: str) -> ConfigTask:
        return await self._resource_call(
            access, "GET", "tasks", None, "task", _config_task(task_id), params={"id": task_id}
        )

    async def _resource_call(
        self,
        access: CdnAccess,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        what: str,
        parse: Callable[[Any, Scrubber], T],
        params: Mapping[str, str] | None = None,
    ) -> T:
        """One call of the resource API, in the account's configuration window; reads retried, writes never."""
        scrubber = Scrubber.of(*access.secrets())
        return await self._gated(
            access, self.scope(access, CONFIG_CLASS), self.config_window, self.config_share, scrubber,
            method == "GET", parse,
            lambda go: self._resource_once(access, method, path, body, what, params, scrubber, go),
        )  # fmt: skip

    async def _resource_once(
        self,
        access: CdnAccess,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        what: str,
        params: Mapping[str, str] | None,
        scrubber: Scrubber,
        go: Attempt,
    ) -> Any:
        """Send once; HTTP 401/405 renews the token once. Proofs: an answer the API read with these credentials
        (200, an error envelope) proves them for the account; a 404 (another account's resources look alike), a
        400 and a 5xx prove nothing."""
        scope = self.scope(access, CONFIG_CLASS)
        for renewed in (False, True):
            token = await self.token(access)
            with_token = scrubber.with_secrets(token)
            url = f"{base_url(access.endpoint)}/cdn/api/v1/{path}"
            request = self._http.build_request(method, url, json=body, params=params, headers={"CDN-AUTH-TOKEN": token})
            async with self.concurrency.slot(scope.target):
                go.send()  # counted when sent, not when queued
                response = await self.send(request, "cdn", f"{method} {what}")
            if response.status_code not in (401, 405):
                if response.status_code == 429:
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    raise CdnRateLimited(429, "rate limited", retry_after=go.rate_limited(retry_after))
                try:
                    data = _resource_envelope(response, with_token, task=what == "task")
                except ResourceRefused:
                    go.proved()
                    raise
                except (ResourceNotFound, ResourceBadRequest):
                    go.answered()
                    raise
                go.proved()
                return data
            go.refused()
            self._drop_token(access, token)
            if renewed or access.token:
                code = response.status_code
                raise TokenRejected(code, "the API refused the token" + (" again after a new login" if renewed else ""))
        raise AssertionError("unreachable: the second refusal raises")


def _json(response: httpx.Response) -> Any:
    try:
        return json_body(response)
    except DECODE_ERRORS as error:
        raise CdnInternalError(response.status_code, f"answer is not JSON ({type(error).__name__})") from None


def _message(response: httpx.Response) -> str:
    try:
        body = json_body(response)
    except DECODE_ERRORS:
        return response.content.decode("utf-8", "replace")
    return str(body.get("message", "")) if isinstance(body, dict) else str(body)


def _envelope(response: httpx.Response, operation: str, scrubber: Scrubber) -> Any:
    """Parse `{"status", "message", "data"}` once; a non-zero status becomes its typed error."""
    body = _json(response)
    if not isinstance(body, dict) or not isinstance(body.get("status"), int):
        raise CdnInternalError(0, f"answer is not an API envelope: {short(body, scrubber)}")
    if body["status"] != 0:
        raise api_error(operation, body["status"], str(body.get("message", "")), scrubber)
    return body.get("data")


def _certificates(data: Any, scrubber: Scrubber) -> list[CdnCertificateInfo]:
    """`data` as a list of certificates; older answers give one certificate as an object."""
    items = [data] if isinstance(data, dict) else _list(data)
    return [CdnCertificateInfo.from_json(item, scrubber) for item in items]


def _task_status(data: Any, scrubber: Scrubber) -> str:
    status = data.get("task_status") if isinstance(data, dict) else None
    if status not in ("no", "accepted", "processed", "failed"):
        raise CdnInternalError(0, f"unexpected task_status {short(status, scrubber)!r}")
    return str(status)


def _raw(data: Any, scrubber: Scrubber) -> Any:
    return data


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _restored_time(value: object, now: float) -> float | None:
    """A time read from a status: a finite number within the ban period before now (and not in the future)."""
    if not _number(value) or not math.isfinite(value):
        return None
    at = float(value)
    return at if now - BAN_SECONDS < at <= now + CLOCK_SKEW_S else None


def _bound(times: dict[str, float], limit: int = MAX_SUCCEEDED) -> None:
    """Keep the `limit` newest entries."""
    for key, _ in sorted(times.items(), key=lambda item: item[1])[: max(0, len(times) - limit)]:
        del times[key]


def _list(data: Any) -> list[Any]:
    if data is None:
        return []
    if not isinstance(data, list):
        raise CdnUnexpectedAnswer(0, "expected a list of certificates")
    return data


def _seq(data: Any, default: int | None = None) -> int:
    if isinstance(data, dict) and isinstance(data.get("seq"), int):
        return int(data["seq"])
    if default is not None:
        return default
    raise CdnInternalError(0, "answer has no seq")


def _segment(value: str) -> str:
    """One path segment, escaped: a resource id never adds a path of its own."""
    return urllib.parse.quote(value, safe="")


__all__ = [
    "CdnAccess", "CdnCertificateInfo", "CdnClient", "CdnResource", "ChainLink", "ConfigTask", "RemoteError",
    "api_error",
]  # fmt: skip
