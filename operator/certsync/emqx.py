"""Async client of the EMQX Cloud platform API for a deployment's TLS certificate.

    RemoteError (remote.py)
     └── EmqxError
          ├── EmqxUnauthorized        401: key or secret wrong
          ├── EmqxForbidden           403: the key may not touch this deployment
          ├── DeploymentNotFound      404: no such deployment
          ├── TLSNotConfigured        404: the deployment has no custom TLS (project's choice)
          ├── EmqxInvalidParameters   422: the remote refused the parameters
          ├── EmqxRateLimited         429 (also a RateLimitedError)
          └── EmqxServerError         5xx and unexpected answers

Every call passes through the shared rate budget first: 60 reads and 6
writes per hour per endpoint and deployment (providers.md). Every text taken
from an answer goes through a `Scrubber` that knows the call's secrets (the API
secret, its Basic credentials, the certificate and key sent), and so does every
error leaving the client.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import httpx

from certsync.budget import EMQX_READ, EMQX_WRITE, RateBudget, Scope, Window
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
    base_url,
    no_observer,
    parse_retry_after,
    retryable_status,
    send,
    short,
    with_retries,
)
from certsync.scrub import GENERIC, Scrubber, basic_credentials

T = TypeVar("T")
TLSType = Literal["one-way", "two-way"]
RemoteStatus = Literal["pending", "running"]
NO_TLS_PATTERN = re.compile(r"no tls|tls is not configured|not configured", re.IGNORECASE)
EXPIRE_FORMAT = "%Y-%m-%d %H:%M:%S"
CALLS = {"GET": "get_tls", "POST": "create_tls", "PUT": "update_tls", "DELETE": "delete_tls"}


@dataclass(frozen=True)
class EmqxAccess:
    """Where and as whom to call; the secret never shows in a repr."""

    endpoint: str
    api_key: str
    api_secret: str = field(repr=False)

    def secrets(self) -> tuple[str, ...]:
        """What a hostile remote could echo of these credentials: the secret and the Basic header built from it."""
        return (self.api_secret, basic_credentials(self.api_key, self.api_secret))


@dataclass(frozen=True)
class DeploymentTLSInfo:
    tls_type: str
    expire: dt.datetime | None  # the remote gives no zone; read as UTC
    status: str

    @classmethod
    def from_json(cls, data: Any, scrubber: Scrubber = GENERIC) -> DeploymentTLSInfo:
        if not isinstance(data, dict) or not {"tlsType", "status"} <= data.keys():
            raise EmqxUnexpectedAnswer(200, f"unexpected answer: {short(data, scrubber)}")
        return cls(
            tls_type=str(data["tlsType"]),
            expire=parse_expire(data.get("expire")),
            status=str(data["status"]).strip(),
        )


def parse_expire(value: object) -> dt.datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return dt.datetime.strptime(value.strip(), EXPIRE_FORMAT).replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def format_expire(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime(EXPIRE_FORMAT)


class EmqxError(RemoteStatusError):
    reason = "RemoteRejected"


class EmqxUnauthorized(EmqxError):
    reason = "CredentialsInvalid"


class EmqxForbidden(EmqxError):
    reason = "Forbidden"


class DeploymentNotFound(EmqxError):
    reason = "RemoteNotFound"


class TLSNotConfigured(EmqxError):
    reason = "RemoteNotFound"


class EmqxInvalidParameters(EmqxError):
    reason = "RemoteRejected"


class EmqxRateLimited(EmqxError, RateLimitedError):
    reason = "RateLimited"
    retryable = True


class EmqxServerError(EmqxError, ServiceUnavailable):
    reason = "RemoteUnavailable"
    retryable = True


class EmqxUnexpectedAnswer(EmqxError):
    reason = "RemoteUnavailable"
    retryable = True


_BY_STATUS: dict[int, type[EmqxError]] = {
    401: EmqxUnauthorized,
    403: EmqxForbidden,
    422: EmqxInvalidParameters,
    429: EmqxRateLimited,
}


def error_for(response: httpx.Response, retry_after: float | None, scrubber: Scrubber = GENERIC) -> EmqxError:
    """The typed error of a refusal; its message is the remote's, scrubbed of the call's secrets, then cut."""
    try:
        body = response.json()
        message = short(body.get("message", ""), scrubber) if isinstance(body, dict) else short(body, scrubber)
    except (json.JSONDecodeError, UnicodeDecodeError):
        message = short(response.text, scrubber) if response.text else response.reason_phrase
    status = response.status_code
    if status == 404:
        cls: type[EmqxError] = TLSNotConfigured if NO_TLS_PATTERN.search(message) else DeploymentNotFound
    else:
        cls = _BY_STATUS.get(status) or (EmqxServerError if retryable_status(status) else EmqxError)
    return cls(status, message or response.reason_phrase, retry_after=retry_after)


class EmqxClient:
    """One client for every DeploymentTLS: credentials travel with each call; pool and budgets are shared."""

    def __init__(
        self,
        *,
        budget: RateBudget | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        read_window: Window = EMQX_READ,
        write_window: Window = EMQX_WRITE,
        retry: RetryPolicy = DEFAULT_RETRY,
        sleep: Sleep | None = None,
        observe: Observer = no_observer,
    ) -> None:
        self.observe = observe
        self.retry = retry
        self._sleep = sleep
        self._http = httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False)
        self.gate = BudgetGate(budget or RateBudget())
        self.windows = {"read": read_window, "write": write_window}

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> EmqxClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    def scope(self, access: EmqxAccess, deployment_id: str, method: str) -> tuple[Scope, Window]:
        method_class = "read" if method == "GET" else "write"
        scope = Scope("emqx", access.endpoint, deployment_id, method_class)
        return scope, self.windows[method_class]

    async def _call(
        self,
        access: EmqxAccess,
        method: str,
        deployment_id: str,
        body: dict[str, str] | None,
        parse: Callable[[httpx.Response, Scrubber], T],
    ) -> T:
        """One call (with its retries): the parsed answer of a success, else a typed error, scrubbed."""
        scrubber = Scrubber.of(*access.secrets(), *(body or {}).values())
        kwargs: dict[str, Any] = {"sleep": self._sleep} if self._sleep else {}
        try:
            response = await with_retries(
                lambda: self._call_once(access, method, deployment_id, body, scrubber),
                self.retry,
                idempotent=method == "GET",
                **kwargs,
            )
            return parse(response, scrubber)
        except RemoteError as error:
            raise error.scrubbed(scrubber) from error.__cause__

    async def _call_once(
        self, access: EmqxAccess, method: str, deployment_id: str, body: dict[str, str] | None, scrubber: Scrubber
    ) -> httpx.Response:
        scope, window = self.scope(access, deployment_id, method)
        self.gate.acquire(scope, window)
        url = f"{base_url(access.endpoint)}/deployments/{deployment_id}/tls"
        request = self._http.build_request(method, url, json=body)
        auth = httpx.BasicAuth(access.api_key, access.api_secret)
        response = await send(self._http, request, "emqx", CALLS[method], auth=auth, observe=self.observe)
        if response.is_success:
            return response
        retry_after = None
        if response.status_code == 429:
            retry_after = self.gate.rate_limited(scope, window, parse_retry_after(response.headers.get("Retry-After")))
        raise error_for(response, retry_after, scrubber)

    async def get_tls(self, access: EmqxAccess, deployment_id: str) -> DeploymentTLSInfo:
        return await self._call(access, "GET", deployment_id, None, _info)

    async def create_tls(
        self, access: EmqxAccess, deployment_id: str, tls_type: str, cert: str, key: str, cacert: str | None = None
    ) -> DeploymentTLSInfo:
        return await self._call(access, "POST", deployment_id, _tls_body(tls_type, cert, key, cacert), _info)

    async def update_tls(
        self, access: EmqxAccess, deployment_id: str, tls_type: str, cert: str, key: str, cacert: str | None = None
    ) -> DeploymentTLSInfo:
        return await self._call(access, "PUT", deployment_id, _tls_body(tls_type, cert, key, cacert), _info)

    async def delete_tls(self, access: EmqxAccess, deployment_id: str) -> None:
        await self._call(access, "DELETE", deployment_id, None, _nothing)


def _info(response: httpx.Response, scrubber: Scrubber) -> DeploymentTLSInfo:
    return DeploymentTLSInfo.from_json(_json(response), scrubber)


def _nothing(response: httpx.Response, scrubber: Scrubber) -> None:
    return None


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EmqxUnexpectedAnswer(response.status_code, "answer is not JSON") from None


def _tls_body(tls_type: str, cert: str, key: str, cacert: str | None) -> dict[str, str]:
    body = {"tlsType": tls_type, "cert": cert, "key": key}
    if cacert is not None:
        body["cacert"] = cacert
    return body
