"""What every controller shares: the pass's view of one resource, recording, writes guarded by a record, errors.

A controller observes (Secrets, status, the remote), asks `certsync.reconcile`
what to do, applies it and records the outcome in status. Every remote write
goes through `guarded_write`: the intent is recorded first, the outcome right
after, and nothing else is called in between.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from certsync.budget import RateBudget
from certsync.cdn import CdnClient
from certsync.emqx import EmqxClient
from certsync.kube import KubeLayer, ObjectRef
from certsync.metrics import Metrics
from certsync.reconcile.conditions import State, conditions, first_seen, jittered, parse_time, poll_delay
from certsync.reconcile.record import Intent
from certsync.reconcile.targets import Claim
from certsync.remote import RateLimitedError, RemoteError
from certsync.scrub import GENERIC
from certsync.settings import EndpointError, Settings, normalise_endpoint, secret_name_problem

T = TypeVar("T")
MAX_TEXT = 1024  # a condition or Event message: scrubbed, then cut
log = logging.getLogger("certsync")
Owners = Callable[[str, str], list[Claim]]  # (plural, target key) -> every resource that names it


@dataclass
class Runtime:
    """What every pass shares, created once at startup and closed at cleanup."""

    settings: Settings
    budget: RateBudget
    emqx: EmqxClient
    cdn: CdnClient
    kube: KubeLayer
    metrics: Metrics
    owners: Owners = lambda plural, key: []  # replaced by the handlers' index lookup
    # (namespace, credentials Secret) -> the CDN login states recorded by every resource using it
    login_states: Callable[[str, str], list[Mapping[str, Any]]] = lambda namespace, name: []
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    # Credentials that last worked, per resource: a deletion after its Secret is gone still removes the remote
    # certificate. Memory only, never written anywhere.
    last_credentials: dict[tuple[str, str, str], Any] = field(default_factory=dict)
    # Resource Let's Encrypt orders run one at a time per account: (endpoint, account) -> the order holding it.
    order_slots: dict[str, Claim] = field(default_factory=dict)
    cdn_lists: dict[str, tuple[float, Any]] = field(default_factory=dict)
    # Writes in flight with their record: a clean stop lets them finish before closing the clients.
    writes: set[asyncio.Future[Any]] = field(default_factory=set)
    cdn_list_locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    # Passes running at once: a thousand daemons take turns instead of crowding the loop (and the Lease renewal).
    workers: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(32))
    # Set by the cleanup before the clients close: kopf may still run (or respawn) a daemon then, and a pass
    # failing on a closed client must not overwrite the last whole pass's status.
    closing: bool = False

    def forget(self, key: tuple[str, str, str]) -> None:
        """A deleted resource leaves nothing behind in memory."""
        self.last_credentials.pop(key, None)
        claim = Claim("", key[1], key[2])
        for slot, holder in list(self.order_slots.items()):
            if (holder.namespace, holder.name) == (claim.namespace, claim.name):
                del self.order_slots[slot]


KINDS = {
    "deploymenttlses": "DeploymentTLS",
    "cdncertificates": "CdnCertificate",
    "letsencryptorders": "LetsEncryptOrder",
}


@dataclass
class Resource:
    """One resource as a pass sees it: spec, and status as last recorded (ours wins over a stale watch)."""

    plural: str
    namespace: str
    name: str
    uid: str
    generation: int
    created: str
    spec: Mapping[str, Any]
    watched: Mapping[str, Any]  # status as the watch last delivered it (may lag behind our own patches)
    local: dict[str, Any] = field(default_factory=dict)  # what this process recorded: wins over the watch
    forced: bool = False
    endpoint: str = ""  # the normalised endpoint, set by `precheck`: the only form used for calls and targets
    cdn: Any = None  # the CDN access of this pass, once built: its login state is kept in status afterwards
    # Ready as the pass began: what `finish` compares with (a write's record may already carry the new one).
    ready_before: dict[str, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.ready_before = next((c for c in self.status.get("conditions", []) if c.get("type") == "Ready"), {})

    @property
    def status(self) -> dict[str, Any]:
        merged = {**self.watched, **self.local}
        return {k: v for k, v in merged.items() if v is not None}

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(self.plural, KINDS[self.plural], self.namespace, self.name, self.uid)

    @property
    def log_ref(self) -> dict[str, str]:
        return {"kind": KINDS[self.plural], "namespace": self.namespace, "name": self.name}

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.plural, self.namespace, self.name)

    @property
    def claim(self) -> Claim:
        return Claim(self.created, self.namespace, self.name)


async def record(rt: Runtime, r: Resource, updates: Mapping[str, Any]) -> None:
    """Patch status now (retried with backoff by the Kubernetes layer) and keep our own view of it."""
    current = r.status
    changed = {k: v for k, v in updates.items() if current.get(k) != v}
    if not changed:
        return
    await rt.kube.patch_status(r.ref, changed)
    r.local.update(changed)


async def first_sight(rt: Runtime, r: Resource) -> None:
    """A resource without conditions gets Reconciling/Progressing now, before it waits for a worker and before
    any remote call: kstatus (Flux) would read it as Current until its first pass ends. One status patch in
    the resource's life: its status keeps the conditions across restarts."""
    if r.status.get("conditions"):
        return
    await record(rt, r, {"observedGeneration": r.generation, "conditions": first_seen(r.generation, rt.clock())})


async def event(rt: Runtime, r: Resource, type_: str, reason: str, message: str) -> None:
    await rt.kube.event(r.ref, type_, reason, GENERIC.short(message, MAX_TEXT))


def settled(rt: Runtime, r: Resource, state: State) -> dict[str, Any]:
    """The conditions (and observed generation) that say `state`: what `finish` records.

    A write's outcome record carries them too, so that the pass's end costs no second status patch (and
    no second watch event for every index and handler to process)."""
    state = State(state.kind, state.reason, GENERIC.short(state.message, MAX_TEXT))
    previous = r.status.get("conditions", [])
    return {"observedGeneration": r.generation, "conditions": conditions(previous, state, r.generation, rt.clock())}


async def finish(
    rt: Runtime, r: Resource, state: State, updates: Mapping[str, Any], delay: float | None
) -> float | None:
    """Record the pass's result (status written only when it changes) and say when to look again."""
    state = State(state.kind, state.reason, GENERIC.short(state.message, MAX_TEXT))
    old_ready = r.ready_before
    await record(rt, r, {**updates, **settled(rt, r, state)})
    kind = KINDS[r.plural]
    rt.metrics.reconciles.labels(kind, state.kind).inc()
    # The last sync: status.lastSyncTime (the remote last read or written in sync, kept across restarts) where
    # the kind records it; a LetsEncryptOrder, which has nothing to re-read, was in sync at this pass's end.
    synced_at = parse_time(r.status.get("lastSyncTime")) or rt.clock()
    expiry = parse_time(r.status.get("notAfter") or r.status.get("expire"))
    rt.metrics.pass_ended(kind, r.namespace, r.name, state.kind, expiry=expiry, synced_at=synced_at)
    if old_ready.get("reason") != state.reason or old_ready.get("message") != state.message:
        warning = state.kind == "stalled" or state.reason in ("RateLimited", "RemoteUnavailable", "InternalError")
        if old_ready.get("reason") != state.reason:
            await event(rt, r, "Warning" if warning else "Normal", state.reason, state.message)
        log.info("%s %s/%s: %s: %s", kind, r.namespace, r.name, state.reason, state.message,
                 extra={"reason": state.reason, "k8s_ref": r.log_ref})  # fmt: skip
    return delay


class OutcomeUnknown(RemoteError):
    """A write was sent and its answer lost (timeout, reset, 5xx): the next pass reads before anything else."""

    reason = "RemoteUnavailable"
    retryable = True


def write_not_done(error: RemoteError) -> bool:
    """The remote did not apply the write: refused it (4xx) or it was never sent / answered 429."""
    return isinstance(error, RateLimitedError) or not error.retryable


async def guarded_write(
    rt: Runtime,
    r: Resource,
    intent: Intent,
    call: Callable[[], Awaitable[T]],
    outcome: Callable[[T], Mapping[str, Any]],
) -> T:
    """Record the intent, write, record the outcome; shielded from cancellation between the write and its record."""
    await record(rt, r, {"intent": intent.to_status()})

    async def write_and_record() -> T:
        try:
            result = await call()
        except RemoteError as error:
            if write_not_done(error):
                await record(rt, r, {"intent": None})
                raise
            raise OutcomeUnknown(f"{error.message}; the write's outcome is unknown: reading before any retry",
                                 retry_after=error.retry_after) from error  # fmt: skip
        await record(rt, r, {**outcome(result), "intent": None})
        return result

    task = asyncio.ensure_future(write_and_record())
    rt.writes.add(task)
    task.add_done_callback(_settled(rt))
    return await asyncio.shield(task)


def _settled(rt: Runtime) -> Callable[[asyncio.Future[Any]], None]:
    def done(task: asyncio.Future[Any]) -> None:
        rt.writes.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: whoever awaited it got it; a shutdown must not log it as lost

    return done


def state_for_error(error: RemoteError, attempt: int) -> tuple[State, float | None]:
    """The one place that turns a remote failure into conditions and a retry time (with jitter)."""
    if error.retryable:
        base = error.retry_after if error.retry_after is not None else poll_delay(attempt)
        delay = base if error.retry_after is not None else jittered(base, random.random())
        return State("reconciling", error.reason, f"{error.message}; retrying in {delay:.0f}s"), max(1.0, delay)
    # A refusal that knows when it may be tried again (a capped login) comes back then, by itself.
    return State("stalled", error.reason, error.message), error.retry_after


def endpoint_of(spec: Mapping[str, Any], default: str = "") -> str:
    """The endpoint as targets and calls see it: normalised (so `HTTPS://Host:443/` and `https://host` are one)."""
    raw = str(spec.get("endpoint") or default)
    try:
        return normalise_endpoint(raw)
    except EndpointError:
        return raw.rstrip("/")


SECRET_FIELDS = (("secretName",), ("credentialsSecretRef", "name"), ("clientCA", "secretName"))


def precheck(rt: Runtime, r: Resource, default_endpoint: str = "") -> State | None:
    """Suspension, the endpoint allowlist and the Secret names come before reading any Secret."""
    if r.spec.get("suspend"):
        return State("suspended", "Suspended", "spec.suspend is true: no remote calls")
    endpoint = str(r.spec.get("endpoint") or default_endpoint)
    normalised = rt.settings.allowed_endpoint(endpoint)
    if normalised is None:
        return State("stalled", "EndpointNotAllowed", f"endpoint {endpoint!r} is not in the operator's allowlist")
    r.endpoint = normalised
    for path in SECRET_FIELDS:
        value: Any = r.spec
        for part in path:
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is None and path[0] != "credentialsSecretRef":
            continue
        problem = secret_name_problem(value, "spec." + ".".join(path))
        if problem:
            return State("stalled", "InvalidSpec", problem)
    return None


def conflict(rt: Runtime, r: Resource, target: str, what: str) -> State | None:
    """`TargetConflict` unless this resource is the oldest of those naming `target`."""
    from certsync.reconcile.targets import conflict_message, owner

    holder = owner([*rt.owners(r.plural, target), r.claim])
    if holder is None or (holder.namespace, holder.name) == (r.namespace, r.name):
        return None
    return State("stalled", "TargetConflict", conflict_message(what, holder, r.namespace))
