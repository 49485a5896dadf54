"""Leader election on a coordination.k8s.io Lease, with client-go's semantics, so that only one replica acts.

Three durations (`Timing`): a standby takes the Lease over after `lease_duration`
without seeing it change; the leader renews every `retry_period` and stops
acting as soon as it has not renewed for `renew_deadline` (shorter than the
lease duration, so it has stopped before anyone may start), whatever the
error: refused connection, timeout, 5xx, 409 or anything else.

Expiry is judged on this replica's own monotonic clock, from the moment it
saw the Lease record change; the holder's `renewTime` is never compared with
the local clock, so clock skew between nodes does not matter. The leader's
deadline runs from the *start* of its last successful renewal: that attempt
reached the API server no earlier than it started, and a standby saw its
result no earlier than it was stored.

Nothing here promises fencing: a write in flight when the leader stops is
resolved by the operator's write-ahead record, never by a second write.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import kubernetes

from certsync.metrics import Metrics

log = logging.getLogger("certsync.leader")
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
T = TypeVar("T")
Clock = Callable[[], float]
WallClock = Callable[[], dt.datetime]
Sleep = Callable[[float], Awaitable[None]]


def default_namespace() -> str:
    """The pod's namespace in cluster; the kubeconfig context's namespace outside."""
    if os.path.exists(SERVICE_ACCOUNT_NAMESPACE):
        with open(SERVICE_ACCOUNT_NAMESPACE) as f:
            return f.read().strip()
    try:
        _, context = kubernetes.config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
        return str(context["context"].get("namespace") or "default")
    except (kubernetes.config.ConfigException, KeyError, TypeError):
        return "default"


def new_identity() -> str:
    """The pod name (the hostname in cluster) plus a random suffix: a restarted process is a new candidate."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Timing:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election needs 0 < retry period < renew deadline < lease duration")

    @property
    def request_timeout(self) -> float:
        """Each Lease call: two (read, then update) fit in one renew deadline."""
        return self.renew_deadline / 2

    @property
    def stalled_after(self) -> float:
        """An election loop that has not gone round for this long is stuck (one turn: two calls and a pause)."""
        return self.renew_deadline + 2 * self.retry_period


@dataclass(frozen=True)
class LeaseRecord:
    """The fields of a Lease that election uses; `resource_version` is the server's, for optimistic updates."""

    holder: str
    duration_seconds: int
    acquire_time: dt.datetime | None
    renew_time: dt.datetime | None
    transitions: int
    resource_version: str = ""


class Conflict(Exception):
    """The Lease changed since it was read, or someone else created it first (HTTP 409)."""


class LeadershipLost(Exception):
    """This replica may no longer act."""


class LeaseAPI(Protocol):
    """The three Lease calls election needs; each must give up after `timeout` seconds."""

    async def get(self, timeout: float) -> LeaseRecord | None: ...

    async def create(self, record: LeaseRecord, timeout: float) -> LeaseRecord: ...

    async def update(self, record: LeaseRecord, timeout: float) -> LeaseRecord: ...


class Elector:
    """Campaigns for the Lease and keeps it; the same `try_acquire_or_renew` serves standby and leader."""

    def __init__(
        self,
        api: LeaseAPI,
        identity: str,
        timing: Timing,
        *,
        clock: Clock = time.monotonic,
        wall: WallClock = lambda: dt.datetime.now(dt.UTC),
        sleep: Sleep = asyncio.sleep,
        metrics: Metrics | None = None,
    ) -> None:
        self.api = api
        self.identity = identity
        self.timing = timing
        self.clock = clock
        self.wall = wall
        self.sleep = sleep
        self.metrics = metrics
        self.observed: LeaseRecord | None = None
        self.observed_at = 0.0  # own clock, when `observed` last changed
        self.renewed_at: float | None = None  # own clock, start of the last successful acquire or renew
        self.heartbeat = clock()  # own clock, the last turn of the election loop
        self.leading = False
        self._fault: str | None = None  # test hook: "stall" or "crash"
        self._last_error = ""

    # --- one attempt ---------------------------------------------------------------------

    async def try_acquire_or_renew(self) -> bool:
        """One attempt: True if this replica holds the Lease afterwards; errors propagate to the loops."""
        started = self.clock()
        record = await self._call(self.api.get)
        now = self.wall()
        if record is None:
            fresh = LeaseRecord(self.identity, self._duration_seconds(), now, now, 0)
            self._observe(await self._call(lambda timeout: self.api.create(fresh, timeout)))
            self._renewed(started)
            return True
        self._observe(record)
        if record.holder and record.holder != self.identity and not self._expired(record):
            return False
        mine = record.holder == self.identity
        wanted = dataclasses.replace(
            record,
            holder=self.identity,
            duration_seconds=self._duration_seconds(),
            acquire_time=record.acquire_time if mine else now,
            renew_time=now,
            transitions=record.transitions + (0 if mine or not record.holder else 1),
        )
        self._observe(await self._call(lambda timeout: self.api.update(wanted, timeout)))
        self._renewed(started)
        return True

    def _expired(self, record: LeaseRecord) -> bool:
        """By our own clock only: a lease duration since we saw the record change."""
        duration = record.duration_seconds or math.ceil(self.timing.lease_duration)
        return self.clock() >= self.observed_at + duration

    def _duration_seconds(self) -> int:
        return math.ceil(self.timing.lease_duration)

    def _observe(self, record: LeaseRecord) -> None:
        if record != self.observed:
            if self.observed is not None and record.holder != self.observed.holder and self.metrics:
                self.metrics.leader_transitions.inc()
            self.observed = record
            self.observed_at = self.clock()

    def _renewed(self, started: float) -> None:
        self.renewed_at = started
        if self.metrics:
            self.metrics.leader_last_renewal.set(self.wall().timestamp())

    async def _call(self, call: Callable[[float], Coroutine[Any, Any, T]]) -> T:
        """Every Lease call has a timeout; a leader's also ends at its renew deadline."""
        timeout = self.timing.request_timeout
        if self.leading:
            timeout = min(timeout, self.deadline() - self.clock())
        if timeout <= 0:
            raise TimeoutError("the renew deadline passed")
        return await asyncio.wait_for(call(timeout), timeout)

    # --- the loops -----------------------------------------------------------------------

    def deadline(self) -> float:
        """On our own clock: the leader must have stopped acting by then, unless it renews first."""
        return (self.renewed_at if self.renewed_at is not None else -math.inf) + self.timing.renew_deadline

    def may_act(self) -> bool:
        """Leading, and the renew deadline not passed: asked before every remote call."""
        return self.leading and self.clock() < self.deadline()

    def alive(self) -> bool:
        """The election loop still goes round (liveness)."""
        return self.clock() - self.heartbeat < self.timing.stalled_after

    async def acquire(self) -> None:
        """Stand by until this replica holds the Lease; any error is logged and retried, never fatal."""
        announced = False
        while True:
            await self._turn()
            try:
                if await self.try_acquire_or_renew():
                    self.set_leading(True)
                    log.info("acquired the lease as %s", self.identity)
                    return
                if not announced:
                    holder = self.observed.holder if self.observed else "?"
                    log.info("another replica leads (%s); standing by as %s", holder, self.identity)
                    announced = True
                self._last_error = ""
            except Exception as error:
                self._log_error("standing by: the lease cannot be read or taken", error)
            await self.sleep(self.timing.retry_period)

    async def renew(self) -> None:
        """Renew every retry period; raise `LeadershipLost` once another replica holds the Lease or the
        renew deadline passed without a successful renewal."""
        failed = False
        while True:
            # After a failure (an API server shedding load answers 429), try again sooner: a renewal that
            # waits a whole retry period after each refusal gets only a few tries before the deadline.
            await self.sleep(self.timing.retry_period / 4 if failed else self.timing.retry_period)
            await self._turn()
            try:
                if not await self.try_acquire_or_renew():
                    raise LeadershipLost(f"the lease is held by {self.observed.holder if self.observed else '?'}")
                self._last_error = ""
                failed = False
            except LeadershipLost:
                raise
            except Exception as error:
                self._log_error("renewing the lease failed", error)
                failed = True
            if self.clock() >= self.deadline():
                raise LeadershipLost(f"could not renew the lease within {self.timing.renew_deadline:g}s")

    async def watchdog(self) -> None:
        """Raise `LeadershipLost` at the renew deadline: apart from `renew`, so that a stuck renewal
        cannot keep a leader acting."""
        while (remaining := self.deadline() - self.clock()) > 0:
            await self.sleep(remaining)
        raise LeadershipLost(f"no renewal within {self.timing.renew_deadline:g}s")

    async def release(self) -> None:
        """Give the Lease up after the work has stopped, so that a standby takes over at once."""
        self.set_leading(False)
        held = self.observed
        if held is None or held.holder != self.identity or self.clock() >= self.deadline():
            return
        now = self.wall()
        free = dataclasses.replace(held, holder="", duration_seconds=1, acquire_time=now, renew_time=now)
        try:
            await asyncio.wait_for(self.api.update(free, self.timing.request_timeout), self.timing.request_timeout)
            log.info("released the lease")
        except Exception as error:
            log.warning("could not release the lease (%s): a standby takes over when it expires", _describe(error))

    def inject(self, fault: str) -> None:
        """Test hook: "stall" freezes the election loop at its next turn, "crash" makes it raise there."""
        self._fault = fault

    async def _turn(self) -> None:
        if self._fault == "crash":
            raise RuntimeError("the election loop crashed (injected)")
        if self._fault == "stall":
            log.warning("the election loop stalls (injected)")
            await asyncio.Event().wait()
        self.heartbeat = self.clock()

    def set_leading(self, leading: bool) -> None:
        self.leading = leading
        if self.metrics:
            self.metrics.leader.set(1.0 if leading else 0.0)

    def _log_error(self, what: str, error: Exception) -> None:
        text = _describe(error)
        if text != self._last_error:  # once per kind of error, not every retry period
            hint = " (check the Role of deploy/base/lease-role.yaml)" if getattr(error, "status", 0) == 403 else ""
            log.warning("%s: %s%s; retrying every %gs", what, text, hint, self.timing.retry_period)
            self._last_error = text


def _describe(error: BaseException) -> str:
    """Type and status only: an API error body may be long and says nothing more that helps."""
    status = getattr(error, "status", None)
    return f"{type(error).__name__}" + (f" HTTP {status}" if status else "")


async def lead(elector: Elector, work: Coroutine[Any, Any, None]) -> None:
    """Run `work` (the operator) while this replica leads, supervising the renewal.

    Returns when `work` returns (a clean stop: the caller then releases the Lease) and raises what
    `work` raises. Raises `LeadershipLost` as soon as renewal fails, its deadline passes or its loop
    dies of any exception; `work` is then cancelled, but the caller must not wait for it: it is no
    longer allowed to act and should exit.
    """
    # Created before `work` starts: kopf cancels at its shutdown every task created while it runs.
    renewal = asyncio.create_task(elector.renew(), name="lease renewal")
    watchdog = asyncio.create_task(elector.watchdog(), name="lease watchdog")
    working = asyncio.create_task(work, name="operator")
    try:
        done, _ = await asyncio.wait({renewal, watchdog, working}, return_when=asyncio.FIRST_COMPLETED)
        if working in done:
            working.result()
            return
        failed = renewal if renewal in done else watchdog
        error = failed.exception() if not failed.cancelled() else None
        elector.set_leading(False)
        if isinstance(error, LeadershipLost):
            raise error
        raise LeadershipLost(f"the renewal loop died: {_describe(error) if error else 'cancelled'}") from error
    finally:
        for task in (renewal, watchdog, working):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.gather(renewal, watchdog, return_exceptions=True)


class KubernetesLeases:
    """`LeaseAPI` on the Kubernetes client: one Lease, no client-side retries, a timeout on every call."""

    def __init__(self, namespace: str, name: str) -> None:
        self.namespace = namespace
        self.name = name
        config = kubernetes.client.Configuration.get_default_copy()
        config.retries = False  # urllib3 would otherwise retry a refused connection past our deadline
        self.api = kubernetes.client.CoordinationV1Api(kubernetes.client.ApiClient(config))
        # Threads of its own: a thousand passes queueing in the default executor must never delay a renewal.
        self._threads = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="lease")

    async def _in_thread(self, call: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._threads, call)

    async def get(self, timeout: float) -> LeaseRecord | None:
        def read() -> Any:
            try:
                return self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=timeout)
            except kubernetes.client.ApiException as error:
                if error.status == 404:
                    return None
                raise

        lease = await self._in_thread(read)
        return None if lease is None else _record(lease)

    async def create(self, record: LeaseRecord, timeout: float) -> LeaseRecord:
        return await self._write(self.api.create_namespaced_lease, record, timeout)

    async def update(self, record: LeaseRecord, timeout: float) -> LeaseRecord:
        return await self._write(
            lambda namespace, body, **kw: self.api.replace_namespaced_lease(self.name, namespace, body, **kw),
            record,
            timeout,
        )

    async def _write(self, call: Callable[..., Any], record: LeaseRecord, timeout: float) -> LeaseRecord:
        meta = kubernetes.client.V1ObjectMeta(
            name=self.name, namespace=self.namespace, resource_version=record.resource_version or None
        )
        spec = kubernetes.client.V1LeaseSpec(
            holder_identity=record.holder or None,
            lease_duration_seconds=record.duration_seconds,
            acquire_time=record.acquire_time,
            renew_time=record.renew_time,
            lease_transitions=record.transitions,
        )
        body = kubernetes.client.V1Lease(metadata=meta, spec=spec)

        def write() -> Any:
            try:
                return call(self.namespace, body, _request_timeout=timeout)
            except kubernetes.client.ApiException as error:
                if error.status == 409:
                    raise Conflict("the lease changed meanwhile") from None
                raise

        return _record(await self._in_thread(write))


def _record(lease: Any) -> LeaseRecord:
    spec = lease.spec
    return LeaseRecord(
        holder=spec.holder_identity or "",
        duration_seconds=int(spec.lease_duration_seconds or 0),
        acquire_time=spec.acquire_time,
        renew_time=spec.renew_time,
        transitions=int(spec.lease_transitions or 0),
        resource_version=str(lease.metadata.resource_version or ""),
    )
