"""The one owner of every remote rate budget.

A budget is a sliding window per scope: the remote API, its endpoint, the
deployment or account, and the method class. A call that would exceed its
window is never sent; the caller learns when it may send instead. A 429
from the remote is authoritative and blocks the scope until `Retry-After`
or, without one, until the window frees. State can be exported to and
restored from plain JSON so that a resource's status carries it across an
operator restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

Clock = Callable[[], float]


@dataclass(frozen=True)
class Window:
    """At most `limit` calls in any `period` seconds."""

    limit: int
    period: float


@dataclass(frozen=True)
class Scope:
    api: str  # "emqx" or "cdn"
    endpoint: str
    key: str  # EMQX deployment id, CDN account
    method_class: str  # "read", "write" or "all"

    def __str__(self) -> str:
        return f"{self.api}:{self.endpoint.rstrip('/')}:{self.key}:{self.method_class}"

    @property
    def target(self) -> str:
        """What shares a concurrency limit: the remote thing (deployment, account), whatever the call."""
        return f"{self.api}:{self.endpoint.rstrip('/')}:{self.key}"


EMQX_READ = Window(limit=60, period=3600.0)
EMQX_WRITE = Window(limit=6, period=3600.0)
CDN_PER_MINUTE = 20


class BudgetExhausted(Exception):
    """Sending now would exceed the budget; nothing was sent."""

    def __init__(self, scope: Scope, retry_at: float, now: float) -> None:
        self.scope = scope
        self.retry_at = retry_at
        self.delay = max(0.0, retry_at - now)
        super().__init__(f"rate budget of {scope} exhausted; next call possible in {self.delay:.0f}s")


@dataclass
class _State:
    window: Window
    sent: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0


class RateBudget:
    """Sliding-window budgets keyed by `Scope`; thread-unsafe by design (one event loop owns it)."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self._states: dict[Scope, _State] = {}

    def now(self) -> float:
        return self._clock()

    def _state(self, scope: Scope, window: Window) -> _State:
        state = self._states.get(scope)
        if state is None or state.window != window:
            state = _State(window, deque(state.sent if state else ()), state.blocked_until if state else 0.0)
            self._states[scope] = state
        cutoff = self.now() - window.period
        while state.sent and state.sent[0] <= cutoff:
            state.sent.popleft()
        return state

    def next_allowed(self, scope: Scope, window: Window, now: float | None = None) -> float:
        """The earliest time a call in `scope` may be sent (now or later)."""
        state = self._state(scope, window)
        at = max(self.now() if now is None else now, state.blocked_until)
        if len(state.sent) >= window.limit:
            at = max(at, state.sent[len(state.sent) - window.limit] + window.period)
        return at

    def remaining(self, scope: Scope, window: Window) -> int:
        state = self._state(scope, window)
        if state.blocked_until > self.now():
            return 0
        return max(0, window.limit - len(state.sent))

    def acquire(self, scope: Scope, window: Window) -> None:
        """Record a call about to be sent, or raise `BudgetExhausted` without recording it."""
        now = self.now()
        at = self.next_allowed(scope, window, now)
        if at > now:
            raise BudgetExhausted(scope, at, now)
        self._states[scope].sent.append(round(now, 3))

    def record_rate_limited(self, scope: Scope, window: Window, retry_after: float | None) -> float:
        """A 429 arrived: block the scope and return until when."""
        state = self._state(scope, window)
        now = self.now()
        if retry_after is not None:
            until = now + max(0.0, retry_after)
        elif state.sent:
            # The remote counts differently from us; assume its window is full from our oldest call.
            until = state.sent[0] + window.period
        else:
            until = now + window.period
        state.blocked_until = max(state.blocked_until, until)
        return state.blocked_until

    def export(self, scope: Scope, window: Window) -> dict[str, object]:
        """Plain JSON for a resource's status: the send times still inside the window."""
        state = self._state(scope, window)
        exported: dict[str, object] = {"sent": [round(t, 3) for t in state.sent]}
        if state.blocked_until > self.now():
            exported["blockedUntil"] = round(state.blocked_until, 3)
        return exported

    def restore(self, scope: Scope, window: Window, data: dict[str, object]) -> None:
        """Merge persisted state (after a restart) with what this process already knows."""
        state = self._state(scope, window)
        sent = data.get("sent", [])
        known = set(state.sent)
        merged = sorted(known | {float(t) for t in _floats(sent)})
        state.sent = deque(merged)
        blocked = data.get("blockedUntil")
        if isinstance(blocked, int | float):
            state.blocked_until = max(state.blocked_until, float(blocked))
        self._state(scope, window)  # drop what has left the window

    def scopes(self) -> Iterable[tuple[Scope, Window]]:
        return [(scope, state.window) for scope, state in self._states.items()]


def _floats(values: object) -> list[float]:
    if not isinstance(values, list):
        return []
    return [float(v) for v in values if isinstance(v, int | float)]


class Concurrency:
    """Bounds remote calls in flight, per scope and overall, so that a thousand resources queue in order.

    Without it every daemon fires at once and the HTTP pool, not the operator, decides who waits (and
    times most of them out). A call first takes a slot of its scope (EMQX endpoint + deployment, CDN
    endpoint + account), then one of the overall limit; asyncio's semaphores serve waiters first come,
    first served. Scopes nobody uses are forgotten.
    """

    def __init__(self, per_scope: int = 2, overall: int = 32) -> None:
        if per_scope < 1 or overall < 1:
            raise ValueError("concurrency limits must be at least 1")
        self.per_scope = per_scope
        self.overall = overall
        self._all = asyncio.Semaphore(overall)
        self._scopes: dict[str, tuple[asyncio.Semaphore, int]] = {}

    def in_flight(self) -> int:
        """Calls holding a slot now (a gauge, and what the tests watch)."""
        return self.overall - self._all._value

    @contextlib.asynccontextmanager
    async def slot(self, scope: str) -> AsyncIterator[None]:
        semaphore, users = self._scopes.get(scope) or (asyncio.Semaphore(self.per_scope), 0)
        self._scopes[scope] = (semaphore, users + 1)
        try:
            async with semaphore, self._all:
                yield
        finally:
            semaphore, users = self._scopes[scope]
            if users <= 1:
                del self._scopes[scope]
            else:
                self._scopes[scope] = (semaphore, users - 1)
