"""The one owner of every remote rate budget.

A budget is a sliding window per scope: the remote API, its endpoint, the
deployment or account, and the method class. A call that would exceed its
window is never sent; the caller learns when it may send instead. A 429
from the remote is authoritative and blocks the scope until `Retry-After`
or, without one, until the window frees. State can be exported to and
restored from plain JSON so that a resource's status carries it across an
operator restart.

Callers whose credentials are not proven for a scope's target (remote.py's
`BudgetGate` decides) count in the same window, so the remote's limit holds,
but each namespace only up to a small share of it (`unproven_share`), and with
a quota of its own besides (`UNPROVEN_QUOTA`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
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
MAX_BLOCK_S = 3600.0  # the longest block a restored 429 may hold (as remote.py clamps Retry-After)
RESTORE_SKEW_S = 5.0  # a restored send time may be this far ahead of our clock (another replica's), no further
UNPROVEN_QUOTA = Window(limit=1, period=60.0)
"""What credentials not yet proven for a target may send, per namespace, remote API, endpoint and method class:
one attempt a minute. Junk credentials of one tenant (twenty Secrets or two thousand) cost the remote one call a
minute, never the budget of the tenant whose account they name; a call that proves its owner is given back."""
CDN_UNPROVEN_FRACTION = 0.25
"""Of a CDN window (an account's 20 a minute, the token endpoint's 20 a minute), at most this share may be sent
by the unproven callers of one namespace: one tenant's junk leaves proven callers three quarters of it, and never
fills another tenant's own share (an attacker with k namespaces costs a target at most k shares, each sent at the
quota's pace of one a minute)."""
EMQX_UNPROVEN_FRACTION = 1 / 6
"""Of an EMQX window (a deployment's 6 writes, 60 reads an hour), at most this share for one namespace's unproven
callers: one write and ten reads an hour; the writes a proven caller needs (a burst of rotations costs two)
remain whatever another tenant's junk does."""


def unproven_share(window: Window, fraction: float) -> int:
    """Calls of `window` that one namespace's unproven callers may hold together: `fraction` of it, at least one
    (a remote with a tiny window must still let a new tenant prove itself), never the whole window when it has room
    for more."""
    return max(1, min(int(window.limit * fraction), window.limit - 1))


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
    # The sends of `sent` by callers not (yet) proven, per namespace: one tenant's junk never fills another's share.
    unproven: dict[str, deque[float]] = field(default_factory=dict)


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
            state = _State(
                window,
                deque(state.sent if state else ()),
                state.blocked_until if state else 0.0,
                dict(state.unproven) if state else {},
            )
            self._states[scope] = state
        cutoff = self.now() - window.period
        while state.sent and state.sent[0] <= cutoff:
            state.sent.popleft()
        for who, times in list(state.unproven.items()):
            while times and times[0] <= cutoff:
                times.popleft()
            if not times:
                del state.unproven[who]
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

    def acquire(
        self, scope: Scope, window: Window, *, unproven_share: int | None = None, unproven_of: str = ""
    ) -> float:
        """Record a call about to be sent, or raise `BudgetExhausted` without recording it; returns the time
        recorded (what `prove` and `refund` name the send by).

        With `unproven_share` the caller (of namespace `unproven_of`) is not proven: besides the window, that
        namespace's unproven sends inside it must stay below the share, and this one is counted among them until
        `prove` says otherwise. Each namespace has a share of its own: one cannot fill another's."""
        now = self.now()
        at = self.next_allowed(scope, window, now)
        state = self._states[scope]
        mine = state.unproven.get(unproven_of, deque())
        if unproven_share is not None and len(mine) >= unproven_share:
            at = max(at, mine[len(mine) - unproven_share] + window.period)
        if unproven_share is not None:  # all namespaces together leave proven callers at least one share
            everyone = sorted(t for times in state.unproven.values() for t in times)
            cap = max(1, window.limit - unproven_share)
            if len(everyone) >= cap:
                at = max(at, everyone[len(everyone) - cap] + window.period)
        if at > now:
            raise BudgetExhausted(scope, at, now)
        sent = round(now, 3)
        state.sent.append(sent)
        if unproven_share is not None:
            state.unproven.setdefault(unproven_of, deque()).append(sent)
        return sent

    def prove(self, scope: Scope, window: Window, sent: float, unproven_of: str = "") -> None:
        """The unproven send at `sent` proved its caller: it stays counted in the window, no longer in the share."""
        _remove(self._state(scope, window).unproven.get(unproven_of, deque()), sent)

    def refund(self, scope: Scope, window: Window, sent: float, unproven_of: str = "") -> None:
        """Give the send at `sent` back: it does not count against this scope (a quota, not a remote's limit)."""
        state = self._state(scope, window)
        _remove(state.sent, sent)
        _remove(state.unproven.get(unproven_of, deque()), sent)

    def forget_idle(self) -> None:
        """Drop the scopes with nothing inside their window and no block: what keeps per-tenant quotas bounded."""
        now = self.now()
        for scope, state in list(self._states.items()):
            self._state(scope, state.window)
            if not state.sent and state.blocked_until <= now:
                del self._states[scope]

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
        """Merge persisted state (after a restart) with what this process already knows.

        Only times inside the window (and not ahead of the clock by more than `RESTORE_SKEW_S`), at most the
        window's limit of them: a status naming times far in the future would block the scope for ever."""
        state = self._state(scope, window)
        now = self.now()
        restored = [float(t) for t in _floats(data.get("sent", [])) if now - window.period < t <= now + RESTORE_SKEW_S]
        merged = sorted(set(state.sent) | set(sorted(restored)[-window.limit :]))
        state.sent = deque(merged)
        blocked = data.get("blockedUntil")
        if isinstance(blocked, int | float) and math.isfinite(blocked):  # a 429's block, as long as one may be at most
            state.blocked_until = max(state.blocked_until, min(float(blocked), now + max(window.period, MAX_BLOCK_S)))
        self._state(scope, window)  # drop what has left the window

    def scopes(self) -> Iterable[tuple[Scope, Window]]:
        return [(scope, state.window) for scope, state in self._states.items()]


def _remove(times: deque[float], at: float) -> None:
    """Remove one occurrence of `at` (kept sorted: the deque stays in send order)."""
    with contextlib.suppress(ValueError):
        times.remove(at)


def _floats(values: object) -> list[float]:
    if not isinstance(values, list):
        return []
    return [float(v) for v in values if isinstance(v, int | float)]
