"""What every controller shares: the pass's view of one resource, recording, writes guarded by a record, errors.

A controller observes (Secrets, status, the remote), asks `certsync.reconcile`
what to do, applies it and records the outcome in status. Every remote write
goes through `guarded_write`: the intent is recorded first, the outcome right
after, and nothing else is called in between. While it runs, the write is in
`Runtime.inflight`, so that a deletion waits for it and removes what it wrote.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from certsync.accounts import AccountBook
from certsync.budget import RateBudget
from certsync.cdn import CdnClient
from certsync.emqx import EmqxClient
from certsync.fairshare import KeyedLocks, WorkerPool
from certsync.kube import KubeError, KubeLayer, ObjectRef, ResourceGone
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
Key = tuple[str, str, str]  # (plural, namespace, name)
CLAIMANT_WAIT_S = 5.0  # how soon a resource waiting for an older claimant's first pass in this process looks again
MAX_RELEASED = 4096  # finished deletions remembered (by uid), a few bytes each
CONFLICT_RECHECK_S = 300.0  # a TargetConflict costs no call: looked at again in case the owner's proof lapsed


@dataclass
class Proofs:
    """Which resource proved its credentials for which target, in this process: memory only, never status.

    A target (deployment, CDN account, order account) is owned only through credentials that got an authenticated
    answer for it; spec text and status (a tenant may write its own /status) prove nothing. `passed` says whose
    pass ended in this process: an older claimant that has not had one yet may still prove (right after a restart),
    one that had one and proved nothing is no claimant.
    """

    proven: dict[Key, set[str]] = field(default_factory=dict)
    passed: set[Key] = field(default_factory=set)

    def prove(self, key: Key, target: str) -> None:
        self.proven.setdefault(key, set()).add(target)

    def holds(self, key: Key, target: str) -> bool:
        return target in self.proven.get(key, ())

    def revoke(self, key: Key) -> None:
        self.proven.pop(key, None)

    def forget(self, key: Key) -> None:
        self.proven.pop(key, None)
        self.passed.discard(key)


@dataclass
class WriteInFlight:
    """One resource's remote write from its intent to its record, in memory: what a deletion waits for.

    A deletion that begins while the write is in flight would find nothing to remove yet (the write lands after
    it), so it waits for `done`, then takes the status the write recorded from `view` (the writer's own record,
    ahead of any watch event) and, when that record failed, what the remote's answer said (`outcome`)."""

    intent: Intent
    view: dict[str, Any]  # the writer's Resource.local: every status update its pass recorded
    landing: bool = False  # the call was sent and not refused: what it writes may be on the remote
    outcome: Mapping[str, Any] | None = None  # the status the remote's answer gave (recorded or not)
    done: asyncio.Event = field(default_factory=asyncio.Event)


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
    # The account's list before each order this process placed, by the order's uid: through a shared account, the
    # only proof of which certificate an order issued (status may be written by the tenant).
    placed_before: dict[str, frozenset[int]] = field(default_factory=dict)
    # Resource Let's Encrypt orders run one at a time per account. A slot is held only while a pass places an
    # order (list before, then the POST): (endpoint|account) -> that pass's resource, released when the pass ends.
    order_slots: dict[str, Claim] = field(default_factory=dict)
    # Resource orders the remote said are running, per account (endpoint|account): learnt by a pass from an
    # authenticated answer (its own POST, or the task status), dropped when done, failed, or the resource deleted.
    orders_running: dict[str, dict[Key, Claim]] = field(default_factory=dict)
    proofs: Proofs = field(default_factory=Proofs)
    cdn_lists: dict[str, tuple[float, Any]] = field(default_factory=dict)
    # Writes in flight with their record: a clean stop lets them finish before closing the clients.
    writes: set[asyncio.Future[Any]] = field(default_factory=set)
    # Per resource, its last write (in flight from intent to record, then what it recorded or was answered), and
    # the resources whose deletion began: none of them starts a write any more. Dropped with the resource.
    inflight: dict[Key, WriteInFlight] = field(default_factory=dict)
    deleting: set[str] = field(default_factory=set)  # by uid (`writer_id`): a re-created resource is another one
    # uids whose deletion this process finished: kopf may call the deletion handler again while the resource's
    # daemon is still exiting, with a watch event older than the write's record; the answer stays "done".
    released: collections.OrderedDict[str, None] = field(default_factory=collections.OrderedDict)
    accounts: AccountBook = field(default_factory=AccountBook)  # ClusterRemoteAccounts and namespaces, from kopf
    cdn_list_locks: KeyedLocks = field(default_factory=KeyedLocks)  # one list call per account and owner at a time
    # Passes running at once: a thousand daemons take turns (round-robin by namespace) instead of crowding the
    # loop (and the Lease renewal); a pass lends its worker out while it waits on a remote.
    workers: WorkerPool = field(default_factory=WorkerPool)
    # Set by the cleanup before the clients close: kopf may still run (or respawn) a daemon then, and a pass
    # failing on a closed client must not overwrite the last whole pass's status.
    closing: bool = False

    def release(self, uid: str) -> None:
        """The deletion of this uid is over (the last MAX_RELEASED are remembered): a daemon pass of it still
        running, or started by a late event, writes nothing any more."""
        self.deleting.discard(uid)
        self.released[uid] = None
        self.released.move_to_end(uid)
        while len(self.released) > MAX_RELEASED:
            self.released.popitem(last=False)

    def forget(self, key: tuple[str, str, str]) -> None:
        """A deleted resource leaves nothing behind in memory."""
        self.last_credentials.pop(key, None)
        self.proofs.forget(key)
        self.inflight.pop(key, None)
        for slot, holder in list(self.order_slots.items()):
            if key[0] == "letsencryptorders" and (holder.namespace, holder.name) == key[1:]:
                del self.order_slots[slot]
        for account, running in list(self.orders_running.items()):
            running.pop(key, None)
            if not running:
                del self.orders_running[account]


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
    proved: bool = False  # this pass got an authenticated answer for one of the resource's targets
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
    await record(rt, r, {**updates, **login_state(rt, r), **settled(rt, r, state)})
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


def writer_id(r: Resource) -> str:
    """Which resource a write is for: its uid (a resource re-created under the same name is another one)."""
    return r.uid or "/".join(r.key)


def refuse_if_deleting(rt: Runtime, r: Resource) -> None:
    """No remote write starts once the resource's deletion began (or ended): it could outlive the resource."""
    if writer_id(r) in rt.deleting or (r.uid and r.uid in rt.released):
        raise ResourceGone(f"{KINDS[r.plural]} {r.namespace}/{r.name} is being deleted: no new remote write")


async def guarded_write(
    rt: Runtime,
    r: Resource,
    intent: Intent,
    call: Callable[[], Awaitable[T]],
    outcome: Callable[[T], Mapping[str, Any]],
) -> T:
    """Record the intent, write, record the outcome; shielded from cancellation between the write and its record.

    The write is in `rt.inflight` from before its intent until its record (a deletion waits for it), and none
    starts once the resource's deletion began: what it would write could outlive the resource."""
    refuse_if_deleting(rt, r)
    entry = WriteInFlight(intent, r.local)
    rt.inflight[r.key] = entry
    try:
        await record(rt, r, {"intent": intent.to_status()})
    except BaseException:
        _write_ended(entry)
        raise

    async def write_and_record() -> T:
        entry.landing = True
        try:
            result = await call()
        except RemoteError as error:
            if write_not_done(error):
                entry.landing = False
                await record(rt, r, {"intent": None})
                raise
            raise OutcomeUnknown(f"{error.message}; the write's outcome is unknown: reading before any retry",
                                 retry_after=error.retry_after) from error  # fmt: skip
        entry.outcome = outcome(result)
        await record(rt, r, {**entry.outcome, **login_state(rt, r), "intent": None})  # one patch for all
        return result

    task = asyncio.ensure_future(write_and_record())
    rt.writes.add(task)
    task.add_done_callback(_settled(rt))
    task.add_done_callback(lambda _: _write_ended(entry))
    return await asyncio.shield(task)


# Past the remote call deadline, a write sent before it has been answered or abandoned by the client; this much more
# is left for the remote to finish applying it before a read is taken to say whether it landed.
LAND_SLACK_S = 5.0


def landing_left(rt: Runtime, intent: Intent) -> float:
    """Seconds during which an unfinished write of `intent` may still land (0: a read now says for good).

    Whoever settles an intent by reading (a deletion, an order's resolution) waits this out first: a write sent
    a moment ago may be applied after the read found nothing."""
    at = parse_time(intent.at)
    if at is None:
        return 0.0
    return max(0.0, (at - rt.clock()).total_seconds() + rt.settings.remote_call_deadline + LAND_SLACK_S)


def _write_ended(entry: WriteInFlight) -> None:
    """The write is over: its waiters go on. The entry stays (the writer's record, and the answer even when its
    record failed, are what a deletion removes) until the next write of the resource or its deletion."""
    entry.done.set()


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


def conflict(rt: Runtime, r: Resource, target: str, what: str, proof: str | None = None) -> State | None:
    """Whether an older claimant of `target` keeps this resource off it; None when this one may go on.

    Only a claim whose resource proved its credentials for `proof` (the target itself unless given, e.g. the
    CDN account of a seq) in this process counts: `TargetConflict` names the oldest such one. An older claimant
    that has not finished a pass in this process yet (right after a restart) makes this one wait a little
    (`Queued`): it may prove. One that finished a pass without proving is no claimant at all.
    """
    from certsync.reconcile.targets import conflict_message, waiting_message

    proof = proof or target
    older = [c for c in rt.owners(r.plural, target) if c < r.claim and (c.namespace, c.name) != (r.namespace, r.name)]
    proven = [c for c in older if rt.proofs.holds((r.plural, c.namespace, c.name), proof)]
    if proven:
        return State("stalled", "TargetConflict", conflict_message(what, min(proven), r.namespace))
    unseen = [c for c in older if (r.plural, c.namespace, c.name) not in rt.proofs.passed]
    if unseen:
        return State("reconciling", "Queued", waiting_message(what, min(unseen), r.namespace))
    return None


async def stop_for(rt: Runtime, r: Resource, clash: State) -> float | None:
    """End the pass on a conflict: a wait for an older claimant's first pass is short, a conflict is looked at
    again now and then (the owner's proof may lapse; it costs no call)."""
    return await finish(rt, r, clash, {}, CONFLICT_RECHECK_S if clash.kind == "stalled" else CLAIMANT_WAIT_S)


def prove(rt: Runtime, r: Resource, target: str) -> None:
    """This pass got an authenticated answer for `target` with the resource's credentials: it may own it."""
    rt.proofs.prove(r.key, target)
    r.proved = True


def unproven_with_rivals(rt: Runtime, r: Resource, target: str, proof: str | None = None) -> bool:
    """Another resource names `target` and this one has not proven `proof` in this process (a restart): a pass
    with nothing to do must then make its one cheap read, or the rival would take the target from its owner."""
    if rt.proofs.holds(r.key, proof or target):
        return False
    return any((c.namespace, c.name) != (r.namespace, r.name) for c in rt.owners(r.plural, target))


def login_state(rt: Runtime, r: Resource) -> dict[str, Any]:
    """What the CDN client learnt of this pass's login, as a status update (empty when status says it already).

    Part of the pass's last status patch: a stop right after `CredentialsInvalid` is recorded must not lose the
    refusal (the next process would try the refused password again)."""
    if r.cdn is None:
        return {}
    state = rt.cdn.export_login_state(r.cdn) or None
    return {} if state == r.status.get("cdnLogin") else {"cdnLogin": state}


async def tracked(rt: Runtime, r: Resource, run: Callable[[], Awaitable[float | None]]) -> float | None:
    """Run one pass and keep, in memory, what it says of the resource's claims: it finished a pass in this
    process, and its proofs lapse when it proved nothing and ended refused or stalled (credentials refused, a
    Secret missing, a bad input): such a resource holds no target. A transient failure keeps earlier proofs."""
    r.proved = False
    try:
        delay = await run()
    except Exception as error:
        refused = (isinstance(error, RemoteError) and not error.retryable) or (
            isinstance(error, KubeError) and not error.transient
        )
        _ended(rt, r, lapse=refused)
        raise
    conditions = r.status.get("conditions", [])
    if any(c.get("type") == "Ready" and c.get("reason") == "Queued" for c in conditions):
        return delay  # it waited for another resource and tried nothing: not yet a pass that could have proved
    _ended(rt, r, lapse=any(c.get("type") == "Stalled" and c.get("status") == "True" for c in conditions))
    return delay


def _ended(rt: Runtime, r: Resource, lapse: bool) -> None:
    if lapse and not r.proved:
        rt.proofs.revoke(r.key)
    rt.proofs.passed.add(r.key)
