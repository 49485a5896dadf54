"""What both remote API clients share: the root of their error trees and safe HTTP plumbing.

    RemoteError                      every failure of a remote call
     ├── InvalidEndpoint             the endpoint does not normalise: nothing sent
     ├── TransportError              no HTTP answer: connect, read, timeout, reset (retryable)
     ├── RateLimitedError            the call was not sent (budget) or answered 429 (retryable)
     └── RemoteStatusError           the remote answered and refused
          └── each API's own narrowed errors (emqx.py, cdn.py)

Each error carries the condition `reason` the operator reports, whether the
same call may simply be tried again (`retryable`) and, where known, how long
to wait (`retry_after`). Messages are built from status codes and the
remote's short message only, passed through the call's `Scrubber` (which knows
that call's secrets) before they are cut to a safe length; a client also
re-scrubs every error that leaves it (`RemoteError.scrubbed`), so no message
built anywhere below can carry a secret of the call out.

Transport: redirects are never followed; proxies come from the environment
(`HTTPS_PROXY`, `NO_PROXY`: httpx's `trust_env`); TLS trusts httpx's bundle or,
with `CERTSYNC_REMOTE_CA_FILE`, the system's store plus that file (`tls_context`).
At debug level `send` logs every request: API, call, method, path (no query),
status and time, never a header or a body.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import email.utils
import importlib.util
import json
import logging
import random
import re
import ssl
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Self, TypeVar

import httpx

# httpcore asks for sniffio on every pooled request; absent, each ask was a failed import walking sys.path (40 us,
# 3.5% of the operator's CPU at 1,000 resources). Its absence is recorded once: `import sniffio` then fails at
# once (2 us), and httpcore takes asyncio, as it did.
if importlib.util.find_spec("sniffio") is None:
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

from certsync import fairshare
from certsync.budget import UNPROVEN_QUOTA, BudgetExhausted, RateBudget, Scope, Window
from certsync.fairshare import RemoteSlots
from certsync.scrub import GENERIC, MAX_MESSAGE, Scrubber
from certsync.settings import EndpointError, normalise_endpoint

DEFAULT_TIMEOUT = httpx.Timeout(20.0, connect=5.0)
POOL_WAIT_S = 5.0
# A hostile or broken remote is contained: no answer is read past this many bytes (decoded), and no call lasts
# longer than its deadline from connect to last byte (httpx's timeouts are per read: a drip of one byte a second
# would hold a call forever). Both are settings (CERTSYNC_REMOTE_MAX_ANSWER_BYTES, CERTSYNC_REMOTE_CALL_DEADLINE).
MAX_ANSWER_BYTES = 4 * 1024 * 1024
CALL_DEADLINE_S = 30.0
# The cap alone lets answers in flight hold slots x cap (one namespace's 16 slots: 64 MiB, measured 106 -> 183 MB
# RSS). Every call reads its first ANSWER_FREE_BYTES freely (the APIs' answers are a few KiB); bytes past that are
# borrowed from `AnswerMemory`: one namespace's calls together at most the cap, all calls at most 4 caps.
ANSWER_FREE_BYTES = 256 * 1024
ANSWER_MEMORY_CAPS = 4
# Waits a remote may ask for are believed up to this; beyond it they are this (a 429 with a year's Retry-After
# would otherwise park a resource for a year).
MAX_RETRY_AFTER_S = 3600.0
# What decoding a hostile body can raise: bad JSON or UTF-8, numbers over Python's digit limit, nesting past the
# recursion limit. Each becomes the client's "unexpected answer" error, never an exception of its own.
DECODE_ERRORS: tuple[type[Exception], ...] = (ValueError, UnicodeError, RecursionError, OverflowError)
log = logging.getLogger("certsync.remote")


class AnswerMemory:
    """The bytes of answers being read at once, past each call's first `free` bytes: one namespace's calls at most
    `per_namespace` together, all calls at most `overall`. A call that would pass either has its answer refused
    (`AnswerRefused`: a transport failure, tried again by a later pass), never waits: so a tenant's huge answers
    cost its own calls, and the operator's memory stays bounded whatever the remotes send.

    Used on the event loop only (no lock). Calls outside a pass (no namespace) count in `overall` only."""

    def __init__(self, max_answer_bytes: int, *, free: int = ANSWER_FREE_BYTES, caps: int = ANSWER_MEMORY_CAPS) -> None:
        self.free = min(free, max_answer_bytes)
        self.per_namespace = max_answer_bytes
        self.overall = caps * max_answer_bytes
        self.held = 0
        self._by_namespace: dict[str, int] = {}

    def held_by(self, namespace: str) -> int:
        return self._by_namespace.get(namespace, 0)

    def take(self, namespace: str | None, size: int) -> str | None:
        """Borrow `size` bytes; None when granted, else why not (a sentence naming no other tenant)."""
        if self.held + size > self.overall:
            return f"the answers being read hold {self.held} bytes, the most allowed at once is {self.overall}"
        if namespace is not None:
            mine = self.held_by(namespace)
            if mine + size > self.per_namespace:
                return (
                    f"this namespace's answers being read hold {mine} bytes, the most allowed at once is "
                    f"{self.per_namespace}"
                )
            self._by_namespace[namespace] = mine + size
        self.held += size
        return None

    def give(self, namespace: str | None, size: int) -> None:
        """Return bytes borrowed with `take` (the answer was read whole, refused, or the call failed)."""
        self.held -= size
        if namespace is not None:
            left = self.held_by(namespace) - size
            if left > 0:
                self._by_namespace[namespace] = left
            else:
                self._by_namespace.pop(namespace, None)


_ANSWER_MEMORY: dict[int, AnswerMemory] = {}


def shared_answer_memory(max_answer_bytes: int) -> AnswerMemory:
    """The process's one `AnswerMemory` for this cap: every client made with the same cap (the operator's EMQX and
    CDN clients) shares it, so that the bound holds for all answers together."""
    memory = _ANSWER_MEMORY.get(max_answer_bytes)
    if memory is None:
        memory = _ANSWER_MEMORY[max_answer_bytes] = AnswerMemory(max_answer_bytes)
    return memory


def tls_context(ca_file: str) -> ssl.SSLContext | None:
    """What the remote clients verify the remotes' certificates with: None (httpx's default bundle) without a
    CA file, else the system's default store plus `ca_file` (settings.py checked it at start)."""
    if not ca_file:
        return None
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=ca_file)
    return context


class Slots(Protocol):
    """What bounds the calls in flight (`fairshare.RemoteSlots`, or a test's own)."""

    overall: int

    def in_flight(self) -> int: ...

    def slot(self, scope: str) -> AbstractAsyncContextManager[None]: ...


def http_client(
    concurrency: Slots,
    timeout: httpx.Timeout,
    transport: httpx.AsyncBaseTransport | None,
    verify: ssl.SSLContext | None = None,
) -> httpx.AsyncClient:
    """A pool as large as the calls allowed in flight: requests wait in `RemoteSlots`' fair queue, never here.

    The pool timeout is short because it can only be reached if that invariant breaks. `trust_env` stays on:
    `HTTPS_PROXY`/`NO_PROXY` route the calls (a proxy gets a CONNECT; TLS still ends at the remote, verified
    with `verify`). Redirects are refused: a 3xx is an answer like any other, never followed."""
    limits = httpx.Limits(max_connections=concurrency.overall, max_keepalive_connections=concurrency.overall)
    bounded = httpx.Timeout(connect=timeout.connect, read=timeout.read, write=timeout.write, pool=POOL_WAIT_S)
    return httpx.AsyncClient(
        transport=transport,
        timeout=bounded,
        limits=limits,
        follow_redirects=False,
        trust_env=True,
        verify=True if verify is None else verify,
    )


REPLICA_HEADER = "X-Certsync-Replica"


@dataclass(frozen=True)
class Replica:
    """Which replica sends, and whether it may still act (the Lease's renew deadline on its own clock).

    Checked on every request, right before it leaves: a leader whose event loop was held up past its
    deadline (CPU starvation, a long pause) sends nothing more, even before its watchdog has run."""

    identity: str
    may_act: Callable[[], bool]


# Set once by the command line before the operator starts; every task inherits it. Unset: no leader election.
REPLICA: contextvars.ContextVar[Replica | None] = contextvars.ContextVar("certsync_replica", default=None)
T = TypeVar("T")


class RemoteError(Exception):
    reason: ClassVar[str] = "RemoteRejected"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def scrubbed(self, scrubber: Scrubber) -> RemoteError:
        """The same error with every text it carries passed through `scrubber` (in place; returns self)."""
        self.message = scrubber.short(self.message, limit=2 * MAX_MESSAGE)
        self.args = (self.message,)
        remote_message = getattr(self, "remote_message", None)
        if isinstance(remote_message, str):
            self.remote_message = scrubber.short(remote_message)
        return self


class TransportError(RemoteError):
    reason = "RemoteUnavailable"
    retryable = True


class RateLimitedError(RemoteError):
    """Over a rate limit; `retry_after` says for how long, when anyone knows."""

    reason = "RateLimited"
    retryable = True


class InvalidEndpoint(RemoteError):
    """The endpoint cannot be normalised: nothing was sent (the handlers check the allowlist before this)."""

    reason = "EndpointNotAllowed"


def base_url(endpoint: str) -> str:
    """The normalised endpoint, without a trailing slash: the only form a client builds URLs from."""
    try:
        return normalise_endpoint(endpoint)
    except EndpointError as error:
        raise InvalidEndpoint(f"endpoint refused: {error}") from None


class RemoteStatusError(RemoteError):
    """The remote answered with an error; `status` is the HTTP or API status code."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{status}: {message}", retry_after=retry_after)
        self.status = status
        self.remote_message = message


class AnswerRefused(TransportError):
    """The remote's answer was not read whole: over the byte cap, or past the call's deadline.

    A transport failure: a write's outcome is then unknown (the caller reads back). Never retried inside a call:
    the same remote would most likely do the same again, and each try costs budget."""


class NotLeading(TransportError):
    """Not sent: this replica no longer holds the Lease (it is about to exit)."""


class ServiceUnavailable(RemoteStatusError):
    reason = "RemoteUnavailable"
    retryable = True


def retryable_status(code: int) -> bool:
    """HTTP meaning, in one place: 408, 429 and 5xx may succeed later; every other 4xx is a refusal."""
    return code in (408, 429) or code >= 500


def short(text: object, scrubber: Scrubber = GENERIC) -> str:
    """A remote's message on one line, scrubbed of the call's secrets, then cut short."""
    return scrubber.short(text)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds from now, within [0, MAX_RETRY_AFTER_S]: delta-seconds or an HTTP date.

    Anything else (`²`, `-1`, `1e9`, a date that does not parse) is ignored, as RFC 9110 allows."""
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
        seconds = when.timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


_DELTA_SECONDS = re.compile(r"[0-9]{1,12}", re.ASCII)


def json_body(response: httpx.Response) -> Any:
    """The answer's JSON. Raises one of `DECODE_ERRORS` on anything else, `NaN` and `Infinity` included (Python's
    json takes them; no API sends them, and a NaN lifetime or timestamp would poison every comparison)."""
    return json.loads(response.content, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


LOGIN_CLASS = "login"  # the method class of a token endpoint's scope (cdn.py)
Owner = tuple[str, str]
"""Whose credentials a call carries: (namespace, credentials_id) of the access object ("<Secret uid>:<version>")."""
MAX_PROOFS = 4096
"""Proofs (owner and target) kept at most, the least recently used forgotten first: a forgotten owner proves itself
again with one call through its namespace's quota, so the bound costs at most a call a minute, never a refusal."""
MAX_PENDING_RESTORES = 1024
"""Budget states restored from status and held until their owner proves itself, at most (oldest dropped)."""
MAX_QUOTA_SCOPES = 1024
"""Per-namespace quota windows held before the idle ones are dropped."""


class Attempt:
    """One call of one owner to one target (its in-call retries and a token renewal's resend included), as the
    gate admitted it.

    A proven owner spends the target's window. An unproven one spends one attempt of its namespace's quota and a
    send of the target's unproven share, both given back (the share's as a proven send) when the answer proves
    the owner: `proved()`. `refused()` says the remote refused the credentials (a proof held is dropped)."""

    def __init__(
        self, gate: BudgetGate, owner: Owner, scope: Scope, window: Window, share: int | None, proven: bool
    ) -> None:
        self.gate, self.owner, self.scope, self.window, self.share = gate, owner, scope, window, share
        self.proven = proven
        self.quota_scope = Scope(scope.api, scope.endpoint, f"unproven {owner[0]}", scope.method_class)
        self._sent: list[float] = []
        self._quota_sent: float | None = None

    def send(self) -> None:
        """Count one send now (inside the remote slot: counted when sent), or raise `RateLimitedError` unsent."""
        if self.proven:
            self.gate.acquire(self.scope, self.window)
            return
        quotas, now = self.gate.quotas, self.gate.budget.now()
        if self._quota_sent is None:
            free_at = quotas.next_allowed(self.quota_scope, UNPROVEN_QUOTA, now)
            if free_at > now:
                raise RateLimitedError(
                    f"not sent: credentials not proven for {self.scope.target} yet get one attempt a minute in their "
                    f"namespace; the next is possible in {free_at - now:.0f}s",
                    retry_after=free_at - now,
                )
        try:
            self._sent.append(
                self.gate.budget.acquire(self.scope, self.window, unproven_share=self.share, unproven_of=self.owner[0])
            )
        except BudgetExhausted as exhausted:
            raise RateLimitedError(
                f"not sent: the share of {self.scope} left to credentials not proven yet is used; the next call is "
                f"possible in {exhausted.delay:.0f}s",
                retry_after=exhausted.delay,
            ) from exhausted
        if self._quota_sent is None:
            self._quota_sent = quotas.acquire(self.quota_scope, UNPROVEN_QUOTA)
            if len(list(quotas.scopes())) > MAX_QUOTA_SCOPES:
                quotas.forget_idle()

    def proved(self) -> None:
        """The answer was not an authentication refusal: the owner is proven for the target from now on."""
        if not self.proven:
            for sent in self._sent:
                self.gate.budget.prove(self.scope, self.window, sent, self.owner[0])
            if self._quota_sent is not None:
                self.gate.quotas.refund(self.quota_scope, UNPROVEN_QUOTA, self._quota_sent)
            self._sent, self._quota_sent, self.proven = [], None, True
        self.gate.prove(self.owner, self.scope.target)

    def answered(self) -> None:
        """An answer that is no refusal and no proof (EMQX's 404: no TLS there, or a deployment these credentials
        cannot see): the namespace's quota attempt is given back, the sends stay in its share until a proof."""
        if not self.proven and self._quota_sent is not None:
            self.gate.quotas.refund(self.quota_scope, UNPROVEN_QUOTA, self._quota_sent)
            self._quota_sent = None

    def refused(self) -> None:
        """The remote refused these credentials for the target: whatever proof they held is gone. An unproven
        owner's refused API calls leave the target's window and share (refused at authentication, they are no calls
        of the account: junk credentials never cost its owner anything); its namespace's quota attempt stays spent.
        A refused login stays counted: the token endpoint's limit counts the logins it answers, refused or not."""
        if not self.proven and self.scope.method_class != LOGIN_CLASS:
            for sent in self._sent:
                self.gate.budget.refund(self.scope, self.window, sent, self.owner[0])
            self._sent = []
        self.gate.unprove(self.owner, self.scope.target)

    def rate_limited(self, retry_after: float | None) -> float:
        """A 429: a proven caller blocks the target, an unproven one only its namespace's quota. Seconds to wait."""
        if self.proven:
            return self.gate.rate_limited(self.scope, self.window, retry_after)
        # Without Retry-After the remote's window is full for these credentials: wait that window, not the quota's.
        wait = retry_after if retry_after is not None else self.window.period
        until = self.gate.quotas.record_rate_limited(self.quota_scope, UNPROVEN_QUOTA, wait)
        return max(0.0, until - self.gate.budget.now())


class BudgetGate:
    """Applies the one `RateBudget` around each call of a client: acquire before, learn from 429; and decides
    which owners are proven for which target (memory only: a status, which its tenant may write, proves nothing).

    Proof: an authenticated call of the owner for the target got an answer that is not an authentication refusal
    (the client says which answers are). Unproven owners go one at a time per namespace, API, endpoint and method
    class (`attempt`): the second finds the first's answer (proven, or the quota spent) instead of a second call.
    """

    def __init__(self, budget: RateBudget | None = None) -> None:
        self.budget = budget or RateBudget()
        # Quotas of unproven owners per namespace: their own windows, on the budget's clock, never in metrics.
        self.quotas = RateBudget(clock=self.budget.now)
        self._proofs: OrderedDict[tuple[Owner, str], None] = OrderedDict()
        self._pending: OrderedDict[tuple[Owner, Scope], tuple[Window, dict[str, object]]] = OrderedDict()
        self._turns = fairshare.KeyedLocks()  # one unproven call at a time per namespace and scope

    def acquire(self, scope: Scope, window: Window) -> None:
        try:
            self.budget.acquire(scope, window)
        except BudgetExhausted as exhausted:
            raise RateLimitedError(f"not sent: {exhausted}", retry_after=exhausted.delay) from exhausted

    def rate_limited(self, scope: Scope, window: Window, retry_after: float | None) -> float:
        until = self.budget.record_rate_limited(scope, window, retry_after)
        return max(0.0, until - self.budget.now())

    # -- proofs --

    def is_proven(self, owner: Owner, target: str) -> bool:
        key = (owner, target)
        if key in self._proofs:
            self._proofs.move_to_end(key)
            return True
        return False

    def prove(self, owner: Owner, target: str) -> None:
        self._proofs[(owner, target)] = None
        self._proofs.move_to_end((owner, target))
        while len(self._proofs) > MAX_PROOFS:
            self._proofs.popitem(last=False)
        for key in [k for k in self._pending if k[0] == owner and k[1].target == target]:
            window, data = self._pending.pop(key)
            self.budget.restore(key[1], window, data)

    def unprove(self, owner: Owner, target: str) -> None:
        self._proofs.pop((owner, target), None)

    def forget_owner(self, owner: Owner) -> None:
        """Everything known of `owner` (its resources are gone, or its Secret changed)."""
        for key in [k for k in self._proofs if k[0] == owner]:
            del self._proofs[key]
        for pending in [k for k in self._pending if k[0] == owner]:
            del self._pending[pending]

    def restore_for(self, owner: Owner, scope: Scope, window: Window, data: dict[str, object]) -> None:
        """`RateBudget.restore` of state read from `owner`'s status, applied only once `owner` is proven for the
        scope's target: a tenant naming another's deployment cannot fill its window with invented send times."""
        if self.is_proven(owner, scope.target):
            self.budget.restore(scope, window, data)
            return
        self._pending[(owner, scope)] = (window, data)
        self._pending.move_to_end((owner, scope))
        while len(self._pending) > MAX_PENDING_RESTORES:
            self._pending.popitem(last=False)

    @contextlib.asynccontextmanager
    async def attempt(
        self, owner: Owner, scope: Scope, window: Window, share: int | None, *, proven: bool | None = None
    ) -> AsyncIterator[Attempt]:
        """Admit one call of `owner` to `scope`: at once when proven (`proven` overrides the gate's own memory,
        e.g. a password that got a token before), else after the unproven call of its namespace before it.

        `share`: the sends of the target's window unproven callers may hold together; None for credentials the
        remote already took elsewhere (a password that got a token): only their namespace's quota holds them."""
        if proven if proven is not None else self.is_proven(owner, scope.target):
            yield Attempt(self, owner, scope, window, share, proven=True)
            return
        turn = Scope(scope.api, scope.endpoint, f"unproven {owner[0]}", scope.method_class)
        async with self._turns.hold(turn):  # the worker is lent out while another unproven call is answered
            known = proven if proven is not None else self.is_proven(owner, scope.target)
            yield Attempt(self, owner, scope, window, share, proven=known)


Observer = Callable[[str, str, str, float], None]
"""Told of every request sent: api, call, HTTP code (or "error"), seconds. Metrics hang here."""


def no_observer(api: str, call: str, code: str, seconds: float) -> None:
    return None


async def send(
    http: httpx.AsyncClient,
    request: httpx.Request,
    api: str,
    call: str,
    *,
    auth: httpx.Auth | None = None,
    observe: Observer = no_observer,
    max_bytes: int = MAX_ANSWER_BYTES,
    deadline: float = CALL_DEADLINE_S,
    memory: AnswerMemory | None = None,
) -> httpx.Response:
    """Send one request and read its answer whole, within `max_bytes`, `deadline` (connect to last byte) and
    `memory` (None: no bound for all answers together); every transport failure becomes a `TransportError`
    (`AnswerRefused` past a bound)."""
    if replica := REPLICA.get():
        if not replica.may_act():
            raise NotLeading(f"{api} {call}: not sent, this replica no longer leads")
        request.headers[REPLICA_HEADER] = replica.identity
    # Identity only: a compressed answer is inflated by httpx in unbounded steps (a 662-byte "gzip, gzip" body
    # inflates to hundreds of MB before any cap could see it). These APIs answer small JSON: nothing is lost.
    request.headers["Accept-Encoding"] = "identity"
    started = time.perf_counter()
    try:
        async with asyncio.timeout(deadline):
            streamed = await http.send(request, auth=auth, stream=True)
            try:
                body = await _read_capped(streamed, max_bytes, memory)
            finally:
                await streamed.aclose()
    except TimeoutError as error:
        _observed(observe, api, call, request, "error", started, "deadline")
        raise AnswerRefused(f"{api} {call}: no whole answer within the call's deadline of {deadline:g}s") from error
    except AnswerRefused:
        _observed(observe, api, call, request, "error", started, "too large")
        raise
    except httpx.TimeoutException as error:
        _observed(observe, api, call, request, "error", started, type(error).__name__)
        raise TransportError(f"{api} {call}: timed out ({type(error).__name__})") from error
    except (httpx.RequestError, httpx.StreamError) as error:  # RequestError: transport and decoding failures
        _observed(observe, api, call, request, "error", started, type(error).__name__)
        raise TransportError(f"{api} {call}: {type(error).__name__}: {short(error)}") from error
    _observed(observe, api, call, request, str(streamed.status_code), started, "")
    return _whole(streamed, body)


async def _read_capped(response: httpx.Response, max_bytes: int, memory: AnswerMemory | None = None) -> bytes:
    """The body as sent, refused as soon as it passes `max_bytes` or what `memory` lends the pass's namespace; an
    encoded (compressed) body is refused unread: identity was asked for, and inflating it is where a bomb would
    explode. What was borrowed from `memory` is given back when the read ends, however it ends."""
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise AnswerRefused(f"answer refused: Content-Encoding {short(encoding)!r} where identity was asked for")
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise AnswerRefused(f"answer of {declared} bytes refused: more than the {max_bytes} bytes accepted")
    chunks: list[bytes] = []
    size = borrowed = 0
    namespace = fairshare.NAMESPACE.get()

    def borrow() -> None:
        """Borrow what the body holds past the free part and has not borrowed yet, or refuse the answer."""
        nonlocal borrowed
        if memory is None or size - memory.free <= borrowed:
            return
        wanted = size - memory.free - borrowed
        refused = memory.take(namespace, wanted)
        if refused is not None:
            raise AnswerRefused(f"answer refused after {size} bytes: {refused}")
        borrowed += wanted

    try:
        try:
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > max_bytes:
                    raise AnswerRefused(f"answer refused after {max_bytes} bytes: more than the {max_bytes} accepted")
                borrow()
                chunks.append(chunk)
        except httpx.StreamConsumed:  # a transport that hands the body over already in memory (httpx.MockTransport)
            chunks, size = [response.content], len(response.content)
            if size > max_bytes:
                raise AnswerRefused(f"answer of {size} bytes refused: more than the {max_bytes} accepted") from None
            borrow()
        return b"".join(chunks)
    finally:
        if memory is not None and borrowed:
            memory.give(namespace, borrowed)


_NOT_COPIED = frozenset({"content-encoding", "content-length", "transfer-encoding"})


def _whole(streamed: httpx.Response, body: bytes) -> httpx.Response:
    """A read response holding `body` (the framing headers are not carried over: `body` is whole)."""
    headers = [(name, value) for name, value in streamed.headers.multi_items() if name.lower() not in _NOT_COPIED]
    return httpx.Response(
        streamed.status_code, headers=headers, content=body, request=streamed.request, extensions=streamed.extensions
    )


def _observed(
    observe: Observer, api: str, call: str, request: httpx.Request, code: str, started: float, error: str
) -> None:
    """The observer (metrics) and, at debug, one log line: the path has ids only (no query is ever built, and
    none is logged), and the record still passes the scrub filter (logs.py) like every other."""
    seconds = time.perf_counter() - started
    observe(api, call, code, seconds)
    if log.isEnabledFor(logging.DEBUG):
        outcome = f"{code} ({error})" if error else code
        log.debug("%s %s: %s %s -> %s in %.3f s", api, call, request.method, request.url.path, outcome, seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries inside one call, for reads only: 5xx answers and lost connections, exponential with full jitter.

    A write is never re-sent here: its outcome may be unknown, and only the caller, which records
    an intent before writing, can read the remote back before deciding to send it again."""

    attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(attempts=1)
Sleep = Callable[[float], Awaitable[None]]


class RemoteClient:
    """What both API clients hold: one pool sized by the shared `RemoteSlots`, the shared budget behind a
    `BudgetGate`, the retry policy for reads, the observer told of every request (metrics) and the `AnswerMemory`
    every client with the same cap shares (`shared_answer_memory`, unless one is given).

    `verify`: the TLS context the remotes' certificates are checked with (`tls_context`); None: httpx's."""

    def __init__(
        self,
        *,
        budget: RateBudget | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
        sleep: Sleep | None = None,
        observe: Observer = no_observer,
        concurrency: Slots | None = None,
        verify: ssl.SSLContext | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        call_deadline: float = CALL_DEADLINE_S,
        answer_memory: AnswerMemory | None = None,
    ) -> None:
        self.observe = observe
        self.max_answer_bytes = max_answer_bytes
        self.answer_memory = answer_memory or shared_answer_memory(max_answer_bytes)
        self.call_deadline = call_deadline
        self.concurrency: Slots = concurrency or RemoteSlots()
        self.retry = retry
        self._sleep = sleep
        self._http = http_client(self.concurrency, timeout, transport, verify)
        self.gate = BudgetGate(budget or RateBudget())

    def forget_owner(self, namespace: str, credentials_id: str) -> None:
        """Drop what is known of these credentials (proofs, held state): their resources are gone."""
        self.gate.forget_owner((namespace, credentials_id))

    async def send(
        self, request: httpx.Request, api: str, call: str, *, auth: httpx.Auth | None = None
    ) -> httpx.Response:
        """`send` with this client's pool, observer and bounds."""
        return await send(
            self._http, request, api, call, auth=auth, observe=self.observe,
            max_bytes=self.max_answer_bytes, deadline=self.call_deadline, memory=self.answer_memory,
        )  # fmt: skip

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


async def with_retries(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    idempotent: bool,
    sleep: Sleep = asyncio.sleep,
) -> T:
    for attempt in range(policy.attempts):
        try:
            return await call()
        except (ServiceUnavailable, TransportError) as error:
            if not idempotent or attempt + 1 >= policy.attempts or isinstance(error, AnswerRefused):
                raise
            async with fairshare.released():  # a backoff is a wait, not work: the worker is lent out meanwhile
                await sleep(policy.delay(attempt))
    raise AssertionError("unreachable: the loop returns or raises")
