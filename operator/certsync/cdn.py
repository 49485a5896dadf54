"""Async client of the CDN SSL API (CDNvideo family, Sber Cloud CDN): certificates and Let's Encrypt orders.

    RemoteError (remote.py)
     ├── TransportError / ServiceUnavailable (HTTP 503)      retryable
     ├── LoginRefused            401 at the token endpoint: never retried with the same password
     ├── AccountBanned           too many wrong passwords (403 at the token endpoint)
     └── CdnApiError             a non-zero `status` in the JSON envelope
          ├── InvalidRequest 450, RecordNotFound 454, NotAllowed 455
          ├── CertificateExists 459
          ├── CertificateRejected 471-478 and 479 on certificate calls (narrowed per code)
          ├── DomainInUse 479 and DnsIncorrect 480 on Let's Encrypt calls, TaskExists 489
          ├── CdnInternalError 550 (retryable)
          └── CdnUnexpectedAnswer     an answer the client cannot read (a certificate without times…)

Every answer is HTTP 200 with `{"status", "message", "data"}`; the envelope is
parsed once, in `_envelope`. 476 and 477 mean different things on add and
update, as the provider's page says, so the error class depends on the call.
Certificate times are read from `start_timestamp`/`end_timestamp` or, as older
documentation and public clients have them, `start`/`end` (numbers or numeric
strings); a certificate without them is an unexpected answer, never a time of 0.
`get` may answer `data` as a one-element array or as the object itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import httpx

from certsync.budget import CDN_PER_MINUTE, RateBudget, Scope, Window
from certsync.remote import (
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT,
    BudgetGate,
    Observer,
    RateLimitedError,
    RemoteError,
    RemoteStatusError,
    RetryPolicy,
    ServiceUnavailable,
    Sleep,
    no_observer,
    parse_retry_after,
    send,
    short,
    with_retries,
)

TOKEN_LIFETIME_S = 6 * 3600.0
RENEW_MARGIN_S = 10 * 60.0  # renew this long before the token's announced end
TaskStatus = Literal["no", "accepted", "processed", "failed"]
Operation = Literal["read", "add", "update", "delete", "letsencrypt", "login"]


@dataclass(frozen=True)
class CdnAccess:
    """Account and credentials: `username`/`password`, or a ready `token`. Secrets stay out of repr."""

    endpoint: str
    account: str
    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)

    def login_key(self) -> tuple[str, str]:
        return (self.endpoint.rstrip("/"), self.username)

    def token_key(self) -> tuple[str, str, str]:
        """A token belongs to the credentials that obtained it: a new password logs in anew."""
        return (*self.login_key(), self.password_digest())

    def password_digest(self) -> str:
        return hashlib.sha256(self.password.encode()).hexdigest()


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
    def from_json(cls, data: Any) -> CdnCertificateInfo:
        if not isinstance(data, dict) or not _is_int(data.get("seq")):
            raise CdnUnexpectedAnswer(0, f"unexpected certificate object: {short(data)}")
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


def timestamp(data: dict[str, Any], which: Literal["start", "end"]) -> int:
    """Unix seconds from `<which>_timestamp` or `<which>`, a number or a numeric string; missing is an error."""
    for name in (f"{which}_timestamp", which):
        value = data.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip():
            try:
                return int(float(value.strip()))
            except ValueError:
                raise CdnUnexpectedAnswer(0, f"certificate time {name} is not a number: {short(value)}") from None
    raise CdnUnexpectedAnswer(0, f"certificate without {which}_timestamp or {which}: {short(sorted(data))}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- errors ----------------------------------------------------------------------------------


class LoginRefused(RemoteStatusError):
    """The token endpoint said 401. Retrying with the same password risks the 7-strikes ban."""

    reason = "CredentialsInvalid"


class AccountBanned(RemoteStatusError):
    reason = "CredentialsInvalid"


class TokenRejected(RemoteStatusError):
    """HTTP 401 on an API call: the token is no longer valid (project's choice, see providers.md)."""

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


def api_error(operation: str, status: int, message: str) -> CdnApiError:
    cls = _BY_OPERATION.get(operation, {}).get(status) or _COMMON.get(status, CdnApiError)
    return cls(status, short(message))


# --- client ----------------------------------------------------------------------------------


@dataclass
class _Token:
    value: str = field(repr=False)
    expires_at: float


class CdnClient:
    """One client for every CDN resource: tokens are cached per endpoint and username."""

    def __init__(
        self,
        *,
        budget: RateBudget | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        per_minute: int = CDN_PER_MINUTE,
        retry: RetryPolicy = DEFAULT_RETRY,
        sleep: Sleep | None = None,
        observe: Observer = no_observer,
    ) -> None:
        self.observe = observe
        self._http = httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False)
        self.gate = BudgetGate(budget or RateBudget())
        self.window = Window(limit=per_minute, period=60.0)
        self.retry = retry
        self._sleep = sleep
        self._tokens: dict[tuple[str, str, str], _Token] = {}  # (endpoint, username, password digest)
        self._refused: dict[tuple[str, str], str] = {}  # login key -> digest of the refused password

    @property
    def clock(self) -> Callable[[], float]:
        return self.gate.budget.now

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> CdnClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    def scope(self, access: CdnAccess, kind: str = "api") -> Scope:
        return Scope("cdn", access.endpoint, access.account if kind == "api" else f"login:{access.username}", "all")

    # -- auth --

    def forget_refusal(self, access: CdnAccess) -> None:
        """The credentials Secret changed: a login may be tried again."""
        self._refused.pop(access.login_key(), None)

    async def token(self, access: CdnAccess) -> str:
        if access.token:
            return access.token
        cached = self._tokens.get(access.token_key())
        if cached and cached.expires_at - RENEW_MARGIN_S > self.clock():
            return cached.value
        return await self._login(access)

    async def _login(self, access: CdnAccess) -> str:
        key = access.login_key()
        if self._refused.get(key) == access.password_digest():
            raise LoginRefused(
                401, f"login of {access.username!r} was refused before; not retried until the credentials change"
            )
        scope = self.scope(access, "login")
        self.gate.acquire(scope, self.window)
        request = self._http.build_request(
            "POST",
            f"{access.endpoint.rstrip('/')}/app/oauth/v1/token/",
            data={"username": access.username, "password": access.password},
        )
        response = await send(self._http, request, "cdn", "login", observe=self.observe)
        if response.status_code == 401:
            self._refused[key] = access.password_digest()
            raise LoginRefused(401, f"wrong username or password for {access.username!r}")
        if response.status_code == 403:
            raise AccountBanned(403, short(_message(response)) or "account banned")
        self._raise_for_http(response, scope)
        body = _json(response)
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise CdnInternalError(0, "token endpoint answered without a token")
        lifetime = float(body.get("lifetime", TOKEN_LIFETIME_S * 1000)) / 1000.0
        self._tokens[access.token_key()] = _Token(token, self.clock() + lifetime)
        return token

    # -- transport of API calls --

    def _raise_for_http(self, response: httpx.Response, scope: Scope) -> None:
        if response.status_code == 503:
            raise ServiceUnavailable(503, "service unavailable")
        if response.status_code == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise CdnRateLimited(
                429, "rate limited", retry_after=self.gate.rate_limited(scope, self.window, retry_after)
            )
        if response.status_code != 200:
            raise CdnInternalError(response.status_code, short(_message(response)) or response.reason_phrase)

    async def _call(self, access: CdnAccess, method: str, path: str, operation: Operation, body: Any = None) -> Any:
        idempotent = method in ("GET", "DELETE")
        kwargs: dict[str, Any] = {"sleep": self._sleep} if self._sleep else {}
        return await with_retries(
            lambda: self._call_once(access, method, path, operation, body),
            self.retry,
            idempotent=idempotent,
            **kwargs,
        )

    async def _call_once(self, access: CdnAccess, method: str, path: str, operation: Operation, body: Any) -> Any:
        for renewed in (False, True):
            token = await self.token(access)
            scope = self.scope(access)
            self.gate.acquire(scope, self.window)
            url = f"{access.endpoint.rstrip('/')}/app/ssl/v1/account/{access.account}/{path}"
            request = self._http.build_request(method, url, json=body, headers={"CDN-AUTH-TOKEN": token})
            response = await send(self._http, request, "cdn", f"{method} {path.split('/')[0]}", observe=self.observe)
            if response.status_code == 401:
                self._tokens.pop(access.token_key(), None)
                if renewed or access.token:
                    raise TokenRejected(401, "the API refused the token")
                continue
            self._raise_for_http(response, scope)
            return _envelope(response, operation)
        raise AssertionError("unreachable")

    # -- certificates --

    async def list_certificates(self, access: CdnAccess) -> list[CdnCertificateInfo]:
        data = await self._call(access, "GET", "certificate/", "read")
        return [CdnCertificateInfo.from_json(item) for item in _list(data)]

    async def get_certificate(self, access: CdnAccess, seq: int, *, details: bool = True) -> CdnCertificateInfo:
        path = f"certificate/{seq}" + ("?details" if details else "")
        data = await self._call(access, "GET", path, "read")
        items = [data] if isinstance(data, dict) else _list(data)  # an object, or an array with one
        if not items:
            raise RecordNotFound(454, f"certificate {seq} not in the answer")
        return CdnCertificateInfo.from_json(items[0])

    async def add_certificate(self, access: CdnAccess, certificate: str, private_key: str, comment: str) -> int:
        body = {"certificate": certificate, "private_key": private_key, "comment": comment}
        return _seq(await self._call(access, "POST", "certificate/", "add", body))

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
        return _seq(await self._call(access, "PATCH", f"certificate/{seq}", "update", body), seq)

    async def delete_certificate(self, access: CdnAccess, seq: int) -> None:
        await self._call(access, "DELETE", f"certificate/{seq}", "delete")

    # -- Let's Encrypt --

    async def letsencrypt_status(self, access: CdnAccess, resource_id: str) -> str:
        data = await self._call(access, "GET", f"letsencrypt/{resource_id}/", "letsencrypt")
        status = data.get("task_status") if isinstance(data, dict) else None
        if status not in ("no", "accepted", "processed", "failed"):
            raise CdnInternalError(0, f"unexpected task_status {short(status)!r}")
        return str(status)

    async def order_letsencrypt(self, access: CdnAccess, resource_id: str) -> None:
        await self._call(access, "POST", f"letsencrypt/{resource_id}/", "letsencrypt")

    async def order_wildcard(self, access: CdnAccess, domains: list[str]) -> None:
        await self._call(access, "POST", "letsencrypt/", "letsencrypt", {"domains": domains})


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CdnInternalError(response.status_code, "answer is not JSON") from None


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text
    return str(body.get("message", "")) if isinstance(body, dict) else str(body)


def _envelope(response: httpx.Response, operation: str) -> Any:
    """Parse `{"status", "message", "data"}` once; a non-zero status becomes its typed error."""
    body = _json(response)
    if not isinstance(body, dict) or not isinstance(body.get("status"), int):
        raise CdnInternalError(0, f"answer is not an API envelope: {short(body)}")
    if body["status"] != 0:
        raise api_error(operation, body["status"], str(body.get("message", "")))
    return body.get("data")


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


__all__ = ["CdnAccess", "CdnCertificateInfo", "CdnClient", "ChainLink", "RemoteError", "api_error"]
