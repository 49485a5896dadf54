"""Fair shares between namespaces of what every pass competes for: the workers and the remote calls in flight.

A namespace is a tenant. Both pools serve their waiters round-robin by namespace (one first-come, first-served
queue per namespace), so a thousand resources of one namespace delay one resource of another by at most one
turn. A pass lends its worker out while it waits for a remote slot and while its call is in flight, then takes
one back (ahead of passes not yet started, still round-robin): a hung remote holds a remote slot, never a
worker, and one namespace may hold only a share of the remote slots, so hung remotes of one tenant cannot take
them all.

The daemon runs each pass inside `WorkerPool.serve(namespace)`, which sets `NAMESPACE` and the pass's worker
lease (contextvars: the remote layer learns whose call it queues without any argument). Anything else a pass
waits on (a lock held across a remote call, a backoff sleep) goes inside `released()` or `locked()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, field

# The namespace of the pass running in this task; None outside a pass (startup, deletion handlers, tests).
NAMESPACE: contextvars.ContextVar[str | None] = contextvars.ContextVar("certsync_namespace", default=None)
REMOTE_SHARE = 0.5  # of the remote slots in flight, at most this fraction for one namespace (at least one slot)


@dataclass
class _Queue:
    """One namespace's waiters: passes coming back from a remote call first, then new ones, each in order."""

    resuming: deque[asyncio.Future[None]] = field(default_factory=deque)
    new: deque[asyncio.Future[None]] = field(default_factory=deque)

    def __bool__(self) -> bool:
        return bool(self.resuming or self.new)

    def pop(self) -> asyncio.Future[None] | None:
        """The next waiter still waiting (a cancelled one may sit here until its task runs again)."""
        for waiters in (self.resuming, self.new):
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    return waiter
        return None

    def discard(self, waiter: asyncio.Future[None]) -> None:
        for waiters in (self.resuming, self.new):
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)


class FairPool:
    """`size` slots served round-robin by namespace; one namespace holds at most `cap` of them at once.

    A slot freed is handed to the next waiter at once (never left for a newcomer to steal), so the order is
    exactly the ring's. Memory is one queue per namespace with waiters and one counter per namespace holding
    slots; both are dropped when empty. A waiter cancelled before its turn leaves its queue; one cancelled
    after it was handed a slot hands the slot on."""

    def __init__(self, size: int, cap: int | None = None) -> None:
        if size < 1 or (cap is not None and cap < 1):
            raise ValueError("a pool needs at least one slot, and a namespace at least one")
        self.size = size
        self.cap = min(size, cap or size)
        self._held: dict[str, int] = {}
        self._queues: dict[str, _Queue] = {}
        self._ring: dict[str, None] = {}  # namespaces with waiters, in serving order (insertion-ordered)
        self._in_use = 0

    def in_use(self) -> int:
        return self._in_use

    def held(self, namespace: str) -> int:
        return self._held.get(namespace, 0)

    def waiting(self) -> int:
        return sum(len(q.resuming) + len(q.new) for q in self._queues.values())

    def namespaces(self) -> int:
        """Namespaces the pool keeps anything for (the memory bound tests watch)."""
        return len(self._held.keys() | self._queues.keys() | self._ring.keys())

    async def acquire(self, namespace: str, *, resume: bool = False) -> None:
        """Wait for a slot; `resume` (a pass coming back from a remote call) queues ahead of new passes."""
        # After every change the pool dispatches, so a free slot means each waiter's namespace is at its cap:
        # a newcomer under its cap may take it without passing anyone.
        if self._in_use < self.size and self.held(namespace) < self.cap:
            self._take(namespace)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._queues.setdefault(namespace, _Queue())
        (queue.resuming if resume else queue.new).append(waiter)
        self._ring.setdefault(namespace, None)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed a slot as it was cancelled: hand it on
                self.release(namespace)
            else:
                self._leave(namespace, waiter)
            raise

    def release(self, namespace: str) -> None:
        held = self._held.get(namespace, 0)
        if held < 1:
            raise RuntimeError(f"namespace {namespace!r} releases a slot it does not hold")
        if held == 1:
            del self._held[namespace]
        else:
            self._held[namespace] = held - 1
        self._in_use -= 1
        self._dispatch()

    def _take(self, namespace: str) -> None:
        self._held[namespace] = self._held.get(namespace, 0) + 1
        self._in_use += 1

    def _leave(self, namespace: str, waiter: asyncio.Future[None]) -> None:
        queue = self._queues.get(namespace)
        if queue is None:
            return
        queue.discard(waiter)
        if not queue:
            del self._queues[namespace]
            self._ring.pop(namespace, None)

    def _dispatch(self) -> None:
        """Hand free slots to the first namespaces of the ring under their cap; each served one goes last."""
        while self._in_use < self.size:
            for namespace in self._ring:
                if self.held(namespace) < self.cap:
                    break
            else:
                return  # nobody waits, or every waiting namespace is at its cap
            queue = self._queues[namespace]
            waiter = queue.pop()
            del self._ring[namespace]
            if queue:
                self._ring[namespace] = None
            else:
                del self._queues[namespace]
            if waiter is not None:
                self._take(namespace)
                waiter.set_result(None)


@dataclass
class _Lease:
    """One pass's claim on a worker: whether it holds it now, and whether the pass is over."""

    pool: FairPool
    namespace: str
    held: bool = True
    over: bool = False


_LEASE: contextvars.ContextVar[_Lease | None] = contextvars.ContextVar("certsync_worker", default=None)


class WorkerPool:
    """Passes running at once (`CERTSYNC_WORKERS`), served round-robin by namespace.

    A pass holds its worker only while it computes or talks to Kubernetes: `released()` lends it out around
    every wait on a remote (the remote slots do so themselves)."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self.pool = FairPool(size)

    def in_use(self) -> int:
        return self.pool.in_use()

    @contextlib.asynccontextmanager
    async def serve(self, namespace: str) -> AsyncIterator[None]:
        """One pass of a resource of `namespace`: a worker for it, and `NAMESPACE` set while it runs."""
        await self.pool.acquire(namespace)
        lease = _Lease(self.pool, namespace)
        tokens = NAMESPACE.set(namespace), _LEASE.set(lease)
        try:
            yield
        finally:
            NAMESPACE.reset(tokens[0])
            _LEASE.reset(tokens[1])
            lease.over = True  # a task the pass started (a shielded write) may outlive it: it takes no worker
            if lease.held:
                lease.held = False
                self.pool.release(namespace)


@contextlib.asynccontextmanager
async def released() -> AsyncIterator[None]:
    """Lend the current pass's worker out for the body (a wait that is not work), then take one back, fairly.

    Outside a pass, or when the worker is already lent (a nested wait, a second call of the same pass), the
    body just runs. Cancelled while taking the worker back, the pass holds none, and its end releases none."""
    lease = _LEASE.get()
    if lease is None or not lease.held or lease.over:
        yield
        return
    lease.held = False
    lease.pool.release(lease.namespace)
    try:
        yield
    finally:
        if not lease.over:
            await lease.pool.acquire(lease.namespace, resume=True)
            if lease.over:  # the pass ended while this waited: the worker goes straight back
                lease.pool.release(lease.namespace)
            else:
                lease.held = True


@contextlib.asynccontextmanager
async def locked(lock: asyncio.Lock) -> AsyncIterator[None]:
    """`async with lock`, with the worker lent out while waiting for it.

    Needed for every lock a pass may hold across a remote call (a single-flight login, a shared list): its
    holder lends its worker out during the call and takes one back after, so passes waiting for the lock while
    holding workers could take every worker and leave the holder waiting forever."""
    acquired = False
    try:
        async with released():
            await lock.acquire()
            acquired = True
        yield
    finally:
        if acquired:
            lock.release()


class KeyedLocks:
    """One lock per key (a token to fetch once, an account's list, a namespace's unproven turn), kept only while
    someone holds or waits for it; waiting lends the pass's worker out (`locked`)."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        """Keys held or waited for (what the tests watch: nothing is left behind)."""
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with locked(lock):
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class RemoteSlots:
    """Remote calls in flight: at most `per_scope` per remote target (EMQX deployment, CDN account, token
    endpoint) and `overall` in all, the overall slots served round-robin by namespace with at most `share` of
    them (at least one) held by one namespace.

    Without it every pass fires at once and the HTTP pool, not the operator, decides who waits (and times most
    of them out). The namespace is the pass's (`NAMESPACE`); calls outside a pass share the namespace "". While
    a call waits for its slots and while it is in flight, its pass's worker is lent out (`released`). Scopes
    nobody uses are forgotten."""

    def __init__(self, per_scope: int = 2, overall: int = 32, share: float = REMOTE_SHARE) -> None:
        if per_scope < 1 or overall < 1:
            raise ValueError("concurrency limits must be at least 1")
        if not 0 < share <= 1:
            raise ValueError("a namespace's share of the remote slots is a fraction in (0, 1]")
        self.per_scope = per_scope
        self.overall = overall
        self.per_namespace = max(1, int(overall * share))
        self._all = FairPool(overall, self.per_namespace)
        self._scopes: dict[str, tuple[asyncio.Semaphore, int]] = {}

    def in_flight(self) -> int:
        """Calls holding a slot now (a gauge, and what the tests watch)."""
        return self._all.in_use()

    def held(self, namespace: str) -> int:
        return self._all.held(namespace)

    @contextlib.asynccontextmanager
    async def slot(self, scope: str) -> AsyncIterator[None]:
        namespace = NAMESPACE.get() or ""
        async with released():
            semaphore, users = self._scopes.get(scope) or (asyncio.Semaphore(self.per_scope), 0)
            self._scopes[scope] = (semaphore, users + 1)
            try:
                async with semaphore:
                    await self._all.acquire(namespace)
                    try:
                        yield
                    finally:
                        self._all.release(namespace)
            finally:
                semaphore, users = self._scopes[scope]
                if users <= 1:
                    del self._scopes[scope]
                else:
                    self._scopes[scope] = (semaphore, users - 1)
