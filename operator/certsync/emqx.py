"""Async client of the EMQX Cloud platform API for a deployment's TLS certificate.

    RemoteError (remote.py)
     └── EmqxError
          ├── EmqxBadRequest          400: the remote called the request invalid (not retried)
          ├── EmqxUnauthorized        401: key or secret wrong
          ├── EmqxForbidden           403: the key may not touch this deployment
          ├── DeploymentNotFound      404 on a create or on `GET /deployments/{id}`: no such deployment
          ├── TLSNotConfigured        404 on any other call, or a 200 with empty tlsType and status: "absent"
          ├── EmqxInvalidParameters   422: the remote refused the parameters
          ├── EmqxRateLimited         429 (also a RateLimitedError)
          ├── EmqxServerError         408 and 5xx (retryable); any other 4xx is an EmqxError refusal
          └── EmqxUnexpectedAnswer    a 2xx the client cannot read (retryable)

What a status code means is decided in one place, `error_for`. As EMQ's own
Terraform provider does, "absent" is any GET 404 or an empty 200 (`{}`); only
a 404 on a create says that the deployment itself is missing (providers.md).
`status` passes through as the remote's string; `phase()` classifies it.

Every call passes through the shared rate budget first: 60 reads and 6
writes per hour per endpoint and deployment (providers.md). Credentials are
proven for a deployment by an answer that is not 401/403 (and not a retryable
failure); until then they go through their namespace's quota of one attempt a
minute and at most one write and ten reads an hour of the deployment's window
(`BudgetGate.attempt`), so junk keys naming a deployment never spend its budget. Every text taken
from an answer goes through a `Scrubber` that knows the call's secrets (the API
secret, its Basic credentials, the certificate and key sent), and so does every
error leaving the client.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar

import httpx

from certsync.budget import EMQX_READ, EMQX_UNPROVEN_FRACTION, EMQX_WRITE, Scope, Window, unproven_share
from certsync.reconcile.deploymenttls import DeploymentCheck
from certsync.remote import (
    DECODE_ERRORS,
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
from certsync.scrub import GENERIC, Scrubber, basic_credentials

T = TypeVar("T")
TLSType = Literal["one-way", "two-way"]
Phase = Literal["pending", "running", "failed", "terminated", "unknown"]
STATUS_PENDING: Final = "pending"  # being applied: poll again
STATUS_RUNNING: Final = "running"  # applied
STATUS_FAILED: Final = "failed"  # terminal: the certificate was not applied
STATUS_TERMINATED: Final = "terminated"  # an asynchronous delete is being applied: wait, never create meanwhile
KNOWN_STATUSES: tuple[Phase, ...] = (STATUS_PENDING, STATUS_RUNNING, STATUS_FAILED, STATUS_TERMINATED)
EXPIRE_FORMAT = "%Y-%m-%d %H:%M:%S"
CALLS = {"GET": "get_tls", "POST": "create_tls", "PUT": "update_tls", "DELETE": "delete_tls"}
GET_DEPLOYMENT = "get_deployment"  # the call name of `GET /deployments/{id}` (metrics, logs)
DEPLOYMENT_TYPES = ("serverless", "dedicated", "dedicatedflex")  # providers.md, lower-cased
DEPLOYMENT_STATUSES = ("running", "starting", "stopped")


@dataclass(frozen=True)
class EmqxAccess:
    """Where and as whom to call; the secret never shows in a repr."""

    endpoint: str
    api_key: str
    api_secret: str = field(repr=False)
    # Whose credentials these are (see `CdnAccess`): what shared memory is keyed by, never spec text alone.
    namespace: str = ""
    credentials_id: str = ""

    def secrets(self) -> tuple[str, ...]:
        """What a hostile remote could echo of these credentials: the secret and the Basic header built from it."""
        return (self.api_secret, basic_credentials(self.api_key, self.api_secret))


def phase(status: str) -> Phase:
    """What a remote status means to the operator; anything not documented is `unknown`."""
    normalised = status.strip().lower()
    for known in KNOWN_STATUSES:
        if normalised == known:
            return known
    return "unknown"


@dataclass(frozen=True)
class DeploymentTLSInfo:
    """One answer about a deployment's TLS, as data: known fields hold known values, free texts are scrubbed
    with the call's secrets and cut short (an endpoint echoing the API secret in every field leaks nothing).
    `expire` is an observation only: its zone is undocumented."""

    tls_type: str  # "one-way", "two-way", "" (not said) or "unknown"
    expire: dt.datetime | None  # the remote gives no zone; read as UTC (it may well be UTC+8)
    status: Phase  # the remote's status as one of the documented words, else "unknown"
    cn: str = ""  # the certificate's common name, when the remote says it (scrubbed, at most 64 characters)
    expire_text: str = ""  # `expire` as the remote wrote it (scrubbed, short), to compare with a later answer
    message: str = ""  # the remote's short message beside a status (e.g. why it `failed`), cut short
    status_text: str = ""  # the remote's own status word, scrubbed and short: for messages only

    @property
    def phase(self) -> Phase:
        return self.status

    @staticmethod
    def is_absent(data: Any) -> bool:
        """A 200 with empty (or missing) `tlsType` and `status` means "no TLS configured" (EMQ's own reading)."""
        return isinstance(data, dict) and not _text(data.get("tlsType")) and not _text(data.get("status"))

    @classmethod
    def from_json(cls, data: Any, scrubber: Scrubber = GENERIC) -> DeploymentTLSInfo:
        # A status is required; tlsType may be empty (a `terminated` answer need not name one).
        if not isinstance(data, dict) or not _text(data.get("status")):
            raise EmqxUnexpectedAnswer(200, f"unexpected answer: {short(data, scrubber)}")
        expire_text = _text(data.get("expire"))
        expire = parse_expire(expire_text)
        return cls(
            tls_type=_tls_type(data.get("tlsType")),
            expire=expire,
            status=phase(_text(data["status"])),
            cn=scrubber.short(_text(data.get("cn")), limit=MAX_CN),
            expire_text=expire_text if expire is not None else scrubber.short(expire_text, limit=MAX_WORD),
            message=short(_text(data.get("message")), scrubber),
            status_text=scrubber.short(_text(data["status"]), limit=MAX_WORD),
        )


@dataclass(frozen=True)
class DeploymentInfo:
    """`GET /deployments/{id}`: what decides whether a TLS write can succeed. Known fields map to known words
    (lower case) or `unknown`; nothing else of the answer is kept."""

    deployment_type: str  # serverless, dedicated, dedicatedflex or unknown
    status: str  # running, starting, stopped or unknown

    @classmethod
    def from_json(cls, data: Any, scrubber: Scrubber = GENERIC) -> DeploymentInfo:
        if not isinstance(data, dict):
            raise EmqxUnexpectedAnswer(200, f"unexpected answer: {short(data, scrubber)}")
        kind, status = _text(data.get("deploymentType")).lower(), _text(data.get("status")).lower()
        return cls(
            kind if kind in DEPLOYMENT_TYPES else "unknown", status if status in DEPLOYMENT_STATUSES else "unknown"
        )


MAX_CN = 64  # X.509's upper bound for a common name
MAX_WORD = 40  # what is kept of a word that should have been one of a few known ones


def _tls_type(value: object) -> str:
    said = _text(value).lower()
    return said if said in ("", "one-way", "two-way") else "unknown"


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def parse_expire(value: object) -> dt.datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return dt.datetime.strptime(value.strip(), EXPIRE_FORMAT).replace(tzinfo=dt.UTC)
    except ValueError:
        return None


class EmqxError(RemoteStatusError):
    reason = "RemoteRejected"
    remote_code: str = ""  # the body's `code`, a number or a string on the wire, kept as text


class EmqxBadRequest(EmqxError):
    """400: the remote found the request itself invalid; the same request would fail again."""

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
    400: EmqxBadRequest,
    401: EmqxUnauthorized,
    403: EmqxForbidden,
    404: TLSNotConfigured,
    422: EmqxInvalidParameters,
    429: EmqxRateLimited,
}
_BY_METHOD_AND_STATUS: dict[tuple[str, int], type[EmqxError]] = {
    ("POST", 404): DeploymentNotFound,  # a create is the only call whose 404 means the deployment is missing
}


def error_for(
    method: str, response: httpx.Response, retry_after: float | None = None, scrubber: Scrubber = GENERIC
) -> EmqxError:
    """The one place that says what an EMQX HTTP answer means; the body only adds a message and a code."""
    message, code = _message_and_code(response, scrubber)
    status = response.status_code
    cls = (
        _BY_METHOD_AND_STATUS.get((method, status))
        or _BY_STATUS.get(status)
        or (EmqxServerError if retryable_status(status) else EmqxError)
    )
    error = cls(status, message or response.reason_phrase or str(status), retry_after=retry_after)
    error.remote_code = code
    return error


def _message_and_code(response: httpx.Response, scrubber: Scrubber) -> tuple[str, str]:
    """The error body's message and `code` (int or string); a missing or non-JSON body gives what there is."""
    if not response.content:
        return "", ""
    try:
        body = json_body(response)
    except DECODE_ERRORS:
        return short(response.content.decode("utf-8", "replace"), scrubber), ""
    if not isinstance(body, dict):
        return short(body, scrubber), ""
    code = body.get("code")
    code_text = str(code).strip() if isinstance(code, int | str) and not isinstance(code, bool) else ""
    return short(body.get("message") or "", scrubber), code_text


class EmqxClient(RemoteClient):
    """One client for every DeploymentTLS: credentials travel with each call; pool and budgets are shared."""

    def __init__(self, *, read_window: Window = EMQX_READ, write_window: Window = EMQX_WRITE, **common: Any) -> None:
        super().__init__(**common)
        self.windows = {"read": read_window, "write": write_window}
        # What one namespace's unproven credentials may send of each window (one write, ten reads).
        self.shares = {k: unproven_share(w, EMQX_UNPROVEN_FRACTION) for k, w in self.windows.items()}
        # Secret versions the deployment refused (401/403): not sent again until the Secret changes, so a woken
        # resource keeps its reason instead of meeting its namespace's quota (and costs the remote nothing).
        self._refused: OrderedDict[tuple[Owner, str], EmqxError] = OrderedDict()
        # What `GET /deployments/{id}` said, per (credentials owner, deployment), so that a check is made once a
        # day, not once a pass. Per owner: one tenant's answer (a 404 from credentials that do not see the
        # deployment) is never another's.
        self._checks: OrderedDict[tuple[Owner, str], DeploymentCheck] = OrderedDict()

    def restore_write_times(self, access: EmqxAccess, deployment_id: str, times: object) -> None:
        """Write times read from a resource's status (`writeTimes`): they join the deployment's window once these
        credentials are proven for it (at once if they are), never before: invented times in the status of a
        resource naming someone else's deployment cannot stop that deployment's owner from writing."""
        scope, window = self.scope(access, deployment_id, "PUT")
        self.gate.restore_for(owner(access), scope, window, {"sent": times if isinstance(times, list) else []})

    def scope(self, access: EmqxAccess, deployment_id: str, method: str) -> tuple[Scope, Window]:
        method_class = "read" if method == "GET" else "write"
        scope = Scope("emqx", base_url(access.endpoint), deployment_id, method_class)  # one spelling, one budget
        return scope, self.windows[method_class]

    async def _call(
        self,
        access: EmqxAccess,
        method: str,
        deployment_id: str,
        body: dict[str, str] | None,
        parse: Callable[[httpx.Response, Scrubber], T],
        resource: str = "/tls",
    ) -> T:
        """One call (with its retries): the parsed answer of a success, else a typed error, scrubbed.

        `resource`: the path under the deployment (`/tls`, or "" for the deployment itself)."""
        scrubber = Scrubber.of(*access.secrets(), (body or {}).get("key"))  # certificates are public
        kwargs: dict[str, Any] = {"sleep": self._sleep} if self._sleep else {}
        scope, window = self.scope(access, deployment_id, method)
        refusal = (owner(access), scope.target)
        known = self._refused.get(refusal) if access.credentials_id else None
        if known is not None:
            raise type(known)(known.status, f"{known.remote_message} (refused before: not sent again until the "
                              "credentials Secret changes)")  # fmt: skip
        try:
            # One attempt of the owner for the deployment, its retries included.
            async with self.gate.attempt(owner(access), scope, window, self.shares[scope.method_class]) as go:
                response = await with_retries(
                    lambda: self._call_once(access, method, deployment_id, body, scrubber, go, resource),
                    self.retry,
                    idempotent=method == "GET",
                    **kwargs,
                )
            self._refused.pop(refusal, None)
            return parse(response, scrubber)
        except RemoteError as error:
            scrubbed = error.scrubbed(scrubber)
            if isinstance(scrubbed, EmqxUnauthorized | EmqxForbidden) and access.credentials_id:
                self._refused[refusal] = scrubbed
                while len(self._refused) > MAX_REFUSED:
                    self._refused.popitem(last=False)
            raise scrubbed from error.__cause__

    async def _call_once(
        self,
        access: EmqxAccess,
        method: str,
        deployment_id: str,
        body: dict[str, str] | None,
        scrubber: Scrubber,
        go: Attempt,
        resource: str = "/tls",
    ) -> httpx.Response:
        url = f"{base_url(access.endpoint)}/deployments/{deployment_id}{resource}"
        request = self._http.build_request(method, url, json=body)
        auth = httpx.BasicAuth(access.api_key, access.api_secret)
        async with self.concurrency.slot(go.scope.target):
            go.send()  # counted when sent, not when queued: the remote counts so
            response = await self.send(request, "emqx", CALLS[method] if resource else GET_DEPLOYMENT, auth=auth)
        code = response.status_code
        retry_after = None
        if code in REFUSING:
            go.refused()
        elif code == 429:
            retry_after = go.rate_limited(parse_retry_after(response.headers.get("Retry-After")))
        elif code == 404:
            # EMQX answers 404 alike for a deployment without TLS and for one another account's key cannot see: no
            # proof (the sends stay in the namespace's share), but no refusal either (the quota attempt is back).
            go.answered()
        elif not retryable_status(code):
            go.proved()  # a 2xx, or another 4xx (400, 422): the key reached the deployment
        if response.is_success:
            return response
        raise error_for(method, response, retry_after, scrubber)

    async def get_tls(self, access: EmqxAccess, deployment_id: str) -> DeploymentTLSInfo:
        """The deployment's TLS; `TLSNotConfigured` when it has none (any 404, or an empty 200)."""
        return await self._call(access, "GET", deployment_id, None, _info_or_absent)

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

    async def get_deployment(self, access: EmqxAccess, deployment_id: str) -> DeploymentInfo:
        """`GET /deployments/{id}`: its type and status, `DeploymentNotFound` on a 404. Counted in the deployment's
        read window (the remote counts these reads apart, 60 an hour of their own: sharing the TLS reads' window
        is the stricter budget), through the same gate and slots as every call."""
        try:
            return await self._call(access, "GET", deployment_id, None, _deployment, resource="")
        except TLSNotConfigured as missing:  # any GET 404 reads as "absent"; here the absent thing is the deployment
            raise DeploymentNotFound(missing.status, f"deployment {deployment_id!r} not found") from None

    def remember_deployment(self, access: EmqxAccess, deployment_id: str, check: DeploymentCheck) -> None:
        """Keep what a check of the deployment found, for these credentials only (memory, bounded)."""
        key = (owner(access), deployment_id)
        self._checks[key] = check
        self._checks.move_to_end(key)
        while len(self._checks) > MAX_CHECKS:
            self._checks.popitem(last=False)

    def deployment_checked(self, access: EmqxAccess, deployment_id: str) -> DeploymentCheck | None:
        """The last check of the deployment these credentials made in this process, or None."""
        return self._checks.get((owner(access), deployment_id))

    def forget_owner(self, namespace: str, credentials_id: str) -> None:
        super().forget_owner(namespace, credentials_id)
        for key in [k for k in self._checks if k[0] == (namespace, credentials_id)]:
            del self._checks[key]


MAX_CHECKS = 4096  # deployment checks remembered (least recently made forgotten: that deployment is read again)
MAX_REFUSED = 4096  # refused Secret versions remembered (least recently refused forgotten: it is tried once more)
REFUSING = (401, 403)
"""Answers that refuse the credentials for the deployment (a wrong key or secret; a key without this deployment):
no proof. Any other answer that is not a retryable failure proves the credentials for the deployment."""


def owner(access: EmqxAccess) -> Owner:
    """Whose credentials these are: what proofs and unproven quotas are kept for."""
    return (access.namespace, access.credentials_id)


def _info(response: httpx.Response, scrubber: Scrubber) -> DeploymentTLSInfo:
    return DeploymentTLSInfo.from_json(_json(response), scrubber)


def _info_or_absent(response: httpx.Response, scrubber: Scrubber) -> DeploymentTLSInfo:
    data = _json(response)
    if DeploymentTLSInfo.is_absent(data):
        raise TLSNotConfigured(response.status_code, "no TLS configured (empty answer)")
    return DeploymentTLSInfo.from_json(data, scrubber)


def _deployment(response: httpx.Response, scrubber: Scrubber) -> DeploymentInfo:
    return DeploymentInfo.from_json(_json(response), scrubber)


def _nothing(response: httpx.Response, scrubber: Scrubber) -> None:
    return None


def _json(response: httpx.Response) -> Any:
    try:
        return json_body(response)
    except DECODE_ERRORS as error:
        raise EmqxUnexpectedAnswer(response.status_code, f"answer is not JSON ({type(error).__name__})") from None


def _tls_body(tls_type: str, cert: str, key: str, cacert: str | None) -> dict[str, str]:
    body = {"tlsType": tls_type, "cert": cert, "key": key}
    if cacert is not None:
        body["cacert"] = cacert
    return body
