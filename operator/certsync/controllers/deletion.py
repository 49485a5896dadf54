"""Deletion with `deletionPolicy: Delete`: remove what this resource wrote, and neither leak nor wedge.

The remote certificate is removed with the credentials the resource last used
successfully when its Secret is already gone (a namespace being deleted);
unavailability is retried with backoff until the bound set by
`CERTSYNC_DELETE_TIMEOUT`, with a Warning each time, then the finalizer is
released with a final Warning. A resource that never wrote (or lost its
target to an older one) removes nothing.

Nothing is released while a write of the resource may still land, or it would
land afterwards with nobody left to own it:

- a write in flight in this process (`Runtime.inflight`) is waited for, then
  what it recorded (or, when its record failed, what the remote's answer said)
  is removed; no new write starts once the deletion began (`Runtime.deleting`);
- a write-ahead intent without an outcome (a crash, a restart, a lost answer)
  is resolved by reading the remote by the intent's identity (EMQX: the leaf;
  CDN: the chain's fingerprints; an order: its task status and the list), once
  it is older than the remote call deadline: before that it may still land;
- a LetsEncryptOrder's `Delete` means the certificate its order issued: an
  order still running (placed, or maybe placed) is followed by reading until
  its certificate appears (then removed), it fails, or the timeout. The order
  itself cannot be withdrawn (the API has no such call).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from certsync import accounts, fairshare, pki
from certsync.cdn import CdnAccess, RecordNotFound
from certsync.controllers import cdnbindings, cdncertificate, deploymenttls, letsencryptorder
from certsync.controllers.base import Resource, Runtime, conflict, event, landing_left, precheck, writer_id
from certsync.emqx import EmqxAccess, TLSNotConfigured
from certsync.kube import KubeError
from certsync.reconcile import (
    EMQX_CREDENTIALS,
    TLS_KEYS,
    Problem,
    TLSMaterial,
    check_tls_secret,
    credentials,
    keys_of,
)
from certsync.reconcile import cdn as rc
from certsync.reconcile import deploymenttls as rd
from certsync.reconcile import orders as ro
from certsync.reconcile.conditions import parse_time, poll_delay
from certsync.reconcile.record import Intent
from certsync.reconcile.targets import target_key
from certsync.remote import RemoteError
from certsync.scrub import GENERIC

Done = None
log = logging.getLogger("certsync.deletion")
MAX_CANDIDATES = 10  # certificates read in detail at most to find an unfinished add whose CN is not known


@dataclass(frozen=True)
class Wait:
    """Nothing can be decided yet (a write may still land, an order still runs): look again in `seconds`."""

    seconds: float
    why: str


Removed = bool | Wait  # True: our certificate was removed; False: nothing of ours is on the remote


async def delete(rt: Runtime, r: Resource, deleted_at: str | None, attempt: int) -> float | None:
    """None when the finalizer may go; otherwise seconds until the next attempt. A deletion this process already
    finished stays finished (kopf calls again while the daemon exits, with an older view of status)."""
    if r.uid and r.uid in rt.released:
        return Done
    again = await _delete(rt, r, deleted_at, attempt)
    if again is Done:
        rt.deleting.discard(writer_id(r))
        if r.uid:
            rt.release(r.uid)  # and a late pass of this uid writes nothing
    return again


async def _delete(rt: Runtime, r: Resource, deleted_at: str | None, attempt: int) -> float | None:
    if r.spec.get("deletionPolicy", "Orphan") != "Delete":
        return Done
    rt.deleting.add(writer_id(r))  # from now on no pass of this resource starts a remote write
    blocked = precheck(rt, r, cdncertificate.DEFAULT_ENDPOINT)
    if blocked is not None:
        await event(rt, r, "Warning", "DeleteSkipped", f"remote certificate left in place: {blocked.message}")
        return Done
    started = parse_time(deleted_at) or rt.clock()
    until = started + dt.timedelta(seconds=rt.settings.delete_timeout)
    try:
        if not await after_write_in_flight(rt, r, until):
            await event(rt, r, "Warning", "DeleteFailed", "gave up removing the remote certificate: a write was "
                        f"still in flight at {pki.rfc3339(until)}; what it writes stays on the remote")  # fmt: skip
            return Done
        removed = await REMOVALS[r.plural](rt, r, Intent.from_status(r.status.get("intent")), attempt)
    except Exception as error:  # whatever fails, CERTSYNC_DELETE_TIMEOUT bounds the retries
        retryable, message = _failure(error)
        elapsed = (rt.clock() - started).total_seconds()
        if not retryable or elapsed >= rt.settings.delete_timeout:
            why = "refused" if not retryable else f"still failing after {elapsed:.0f}s"
            await event(rt, r, "Warning", "DeleteFailed",
                        f"gave up removing the remote certificate ({why}): {message}")  # fmt: skip
            return Done
        delay = min(rt.settings.delete_timeout - elapsed, poll_delay(attempt) * random.uniform(0.5, 1.0))
        # No varying delay in the message: the same failure again counts on one Event (see Kube.event).
        await event(rt, r, "Warning", "DeleteRetrying", f"removing the remote certificate failed: {message}; "
                    f"retrying until {pki.rfc3339(until)}")  # fmt: skip
        return max(1.0, delay)
    if isinstance(removed, Wait):
        left = (until - rt.clock()).total_seconds()
        if left <= 0:
            await event(rt, r, "Warning", "DeleteFailed", f"gave up removing the remote certificate: {removed.why} "
                        f"at {pki.rfc3339(until)}; what it writes may stay on the remote")  # fmt: skip
            return Done
        # The same message each time (no varying delay): the waits count on one Event.
        await event(rt, r, "Normal", "DeleteWaiting", f"{removed.why}: the remote certificate is removed after it "
                    f"(until {pki.rfc3339(until)})")  # fmt: skip
        return max(1.0, min(left, removed.seconds))
    if removed:
        await event(rt, r, "Normal", "Deleted", "removed the remote certificate")
    return Done


async def after_write_in_flight(rt: Runtime, r: Resource, until: dt.datetime) -> bool:
    """Wait (until `until` at most) for the resource's write in flight to end, and take what it recorded into the
    deletion's view; False when it was still in flight then. A pass's worker is lent out while this waits."""
    entry = rt.inflight.get(r.key)
    if entry is None:
        return True
    if not entry.done.is_set():
        left = max(0.0, (until - rt.clock()).total_seconds())
        async with fairshare.released():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(entry.done.wait(), timeout=left)
        if not entry.done.is_set():
            return False
    r.local.update(entry.view)  # the writer's own record: ahead of the watch event the deletion came with
    if Intent.from_status(r.status.get("intent")) == entry.intent:  # its outcome is not in status
        if entry.outcome is not None:  # the remote answered: what it says was written is what is there
            r.local.update({**entry.outcome, "intent": None})
        elif not entry.landing:  # never sent, or refused: nothing of it is on the remote
            r.local["intent"] = None
    return True


def may_still_land(rt: Runtime, intent: Intent) -> Wait | None:
    """An unfinished write sent less than the remote call deadline ago may still land: reading now could miss it."""
    left = landing_left(rt, intent)
    return Wait(left, f"the unfinished {intent.op} sent at {intent.at} may still reach the remote") if left else None


def _failure(error: Exception) -> tuple[bool, str]:
    """Whether a failed removal may be tried again, and what to say. A remote's refusal is final; anything else
    (the remote unavailable, the API server failing, an unexpected error) is retried until the timeout."""
    if isinstance(error, RemoteError):
        return error.retryable, error.message
    if isinstance(error, KubeError):  # an API server failing is retried; a Secret refused (RBAC, label) is not
        return error.transient, error.message
    log.warning("removing the remote certificate failed unexpectedly", exc_info=error)
    return True, f"{type(error).__name__}: {GENERIC.short(error)}"


def owned_by_another(rt: Runtime, r: Resource, target: str, proof: str | None = None) -> bool:
    """An older resource proved its credentials for the target: what is there is its, never removed by this one.
    (An older claimant not looked at yet since a restart does not hold a deletion back: this one wrote it.)"""
    clash = conflict(rt, r, target, "", proof)
    return clash is not None and clash.kind == "stalled"


def _pending(intent: Intent | None, target: str, ops: tuple[str, ...]) -> Intent | None:
    """The intent of this resource's target still without an outcome (one settled as never placed is none)."""
    if intent is None or intent.target != target or intent.op not in ops or intent.facts.get("failedToLand"):
        return None
    return intent


async def _remove_tls(rt: Runtime, r: Resource, intent: Intent | None, attempt: int) -> Removed:
    target = deploymenttls.target_of(r.spec)
    if owned_by_another(rt, r, target):
        return False
    recorded = r.status.get("target") == target
    pending = _pending(intent, target, ("create", "update"))
    if not recorded and pending is None:
        return False
    if pending is not None and (wait := may_still_land(rt, pending)) is not None:
        return wait
    access = await _credentials(rt, r)
    if access is None:
        return False
    assert isinstance(access, EmqxAccess)
    deployment = str(r.spec["deploymentId"])
    if not recorded and pending is not None:  # only what the unfinished write left, read by its leaf
        try:
            info = await rt.emqx.get_tls(access, deployment)
        except TLSNotConfigured:
            return False
        if not rd.intent_landed(pending, rd.Remote(False, info.tls_type, info.status, info.expire, info.cn)):
            return False  # the deployment holds another certificate: not ours to remove
    with contextlib.suppress(TLSNotConfigured):  # already gone counts as removed
        await rt.emqx.delete_tls(access, deployment)
    return True


async def _remove_cdn(rt: Runtime, r: Resource, intent: Intent | None, attempt: int) -> Removed:
    status = r.status
    target = cdncertificate.target_of(r.spec)
    recorded = status.get("seq") if status.get("target") == target else None
    seq = recorded if isinstance(recorded, int) else None
    pending = _pending(intent, target, ("add", "patch"))
    if seq is None and pending is None:
        return False
    if seq is not None and owned_by_another(rt, r, target_key(target, str(seq)), target):
        return False
    if pending is not None and (wait := may_still_land(rt, pending)) is not None:
        return wait
    cdn = await _credentials(rt, r)
    if cdn is None:
        return False
    assert isinstance(cdn, CdnAccess)
    if seq is None and pending is not None:
        seq = await _landed_certificate(rt, r, cdn, pending)
        if seq is None or owned_by_another(rt, r, target_key(target, str(seq)), target):
            return False
    if accounts.account_name(r.spec) is not None and not await _holds_own_chain(rt, r, cdn, seq):
        why = (f"certificate seq {seq} does not hold this resource's Secret's chain: through a shared account only "
               "a certificate proven to be this resource's is removed; left in place")  # fmt: skip
        await event(rt, r, "Warning", "DeleteSkipped", why)
        return False
    # A certificate with bindings is kept while a CDN resource still serves it (whoever bound that one): StillServed
    # is retried, then left at the timeout. Without bindings no resource call is spent (nor needed by the API).
    if seq is not None and cdnbindings.bound_to(r):
        await cdnbindings.refuse_while_served(rt, cdn, seq)
    return await _remove_certificate(rt, cdn, seq)


async def _remove_certificate(rt: Runtime, cdn: CdnAccess, seq: int | None) -> Removed:
    if seq is None:
        return False
    with contextlib.suppress(RecordNotFound):  # already gone counts as removed
        await rt.cdn.delete_certificate(cdn, seq)
    return True


async def _landed_certificate(rt: Runtime, r: Resource, cdn: CdnAccess, intent: Intent) -> int | None:
    """The seq an unfinished add or patch left holding its chain (fingerprints read in detail), if any."""
    chain = tuple(str(c) for c in intent.facts.get("chain", []))
    if not chain:
        return None
    if intent.op == "patch":
        seq = intent.facts.get("seq")
        candidates = [seq] if isinstance(seq, int) else []
    else:
        cn = str(intent.facts.get("cn") or "") or await _secret_cn(rt, r)
        listed = sorted(await rt.cdn.list_certificates(cdn), key=lambda c: c.seq, reverse=True)  # newest first
        candidates = [c.seq for c in listed if c.cn == cn] if cn else [c.seq for c in listed[:MAX_CANDIDATES]]
    for seq in candidates:
        try:
            remote = await rt.cdn.get_certificate(cdn, seq)
        except RecordNotFound:
            continue
        if rc.holds_chain(tuple(link.fingerprint for link in remote.chain_info or ()), chain):
            return seq
    return None


async def _holds_own_chain(rt: Runtime, r: Resource, cdn: CdnAccess, seq: int | None) -> bool:
    """Whether the remote certificate `seq` holds the chain of this resource's own TLS Secret (a validated pair: no
    tenant holds another's key), read in detail: what status says (seq, intent) may be the tenant's own writing."""
    if seq is None:
        return False
    name = str(r.spec.get("secretName") or "")
    secret = await rt.kube.read_secret(r.namespace, name, TLS_KEYS) if name else None
    material = await asyncio.to_thread(check_tls_secret, name, secret, rt.clock())
    if not isinstance(material, TLSMaterial):
        return False
    try:
        remote = await rt.cdn.get_certificate(cdn, seq)
    except RecordNotFound:
        return False
    return rc.holds_chain(tuple(link.fingerprint for link in remote.chain_info or ()), material.chain_sha1)


async def _secret_cn(rt: Runtime, r: Resource) -> str:
    """The leaf CN of the resource's TLS Secret (an intent recorded before intents named it), or "" when gone."""
    name = str(r.spec.get("secretName") or "")
    secret = await rt.kube.read_secret(r.namespace, name, TLS_KEYS) if name else None
    material = await asyncio.to_thread(check_tls_secret, name, secret, rt.clock())
    return material.bundle.leaf.subject_cn if isinstance(material, TLSMaterial) else ""


async def _remove_order(rt: Runtime, r: Resource, intent: Intent | None, attempt: int) -> Removed:
    """`Delete` on an order is its issued certificate; an order running (or maybe placed) is followed by reading."""
    spec, status = r.spec, r.status
    target = letsencryptorder.target_of(spec)
    mine = status.get("target") == target
    issued = status.get("certificateSeq")
    placed = mine and bool(status.get("orderedAt")) and status.get("taskStatus") != "failed"
    pending = _pending(intent, target, ("order",))
    if not (mine and isinstance(issued, int)) and not placed and pending is None:
        return False
    if not placed and pending is not None and (wait := may_still_land(rt, pending)) is not None:
        return wait
    shared = accounts.account_name(spec) is not None
    known_before = rt.placed_before.get(r.uid)
    if shared and known_before is None:
        # Through a shared account status proves nothing (a tenant may write it): only an order this process
        # placed tells which certificate is the order's.
        why = ("through a shared account only the certificate of an order this operator process placed is removed "
               "(status may be written by the tenant): left in place")  # fmt: skip
        await event(rt, r, "Warning", "DeleteSkipped", why)
        return False
    cdn = await _credentials(rt, r)
    if cdn is None:
        return False
    assert isinstance(cdn, CdnAccess)
    if mine and isinstance(issued, int) and not shared:  # shared: the list after the order this process placed
        return await _remove_certificate(rt, cdn, issued)
    resource_id = str(spec.get("resourceId") or "")
    domains = [str(d) for d in spec.get("domains") or []]
    facts_before = pending.facts.get("before", []) if pending is not None else []
    before = status.get("listBefore", []) if placed else facts_before
    if shared and known_before is not None:
        before = sorted(known_before)
    if resource_id and await rt.cdn.letsencrypt_status(cdn, resource_id) in ("no", "failed"):
        return False  # no order runs for the resource: nothing will be issued
    cdncertificate.forget_listing(rt, cdn)
    listing = letsencryptorder.listed(await rt.cdn.list_certificates(cdn))
    found = ro.pick_certificate(listing, {int(s) for s in before if isinstance(s, int)}, domains, ())
    if found is not None:
        return await _remove_certificate(rt, cdn, found.seq)
    if not resource_id and not placed and pending is not None and not letsencryptorder.may_be_running(rt, pending):
        return False  # an unrecorded wildcard order that left no certificate within the bound was never placed
    return Wait(poll_delay(attempt), "the Let's Encrypt order is still running")


REMOVALS: dict[str, Callable[[Runtime, Resource, Intent | None, int], Awaitable[Removed]]] = {
    "deploymenttlses": _remove_tls,
    "cdncertificates": _remove_cdn,
    "letsencryptorders": _remove_order,
}


async def _credentials(rt: Runtime, r: Resource) -> Any:
    """Credentials from the Secret, else the last ones that worked (kept in memory only), else None."""
    secret_ns, name, _ = accounts.credentials_location(r.namespace, r.spec)
    if r.plural == "deploymenttlses":
        secret = await rt.kube.read_secret(secret_ns, name, keys_of(EMQX_CREDENTIALS)) if secret_ns else None
        creds = credentials(name, secret, EMQX_CREDENTIALS)
        if not isinstance(creds, Problem):
            return deploymenttls.emqx_access(r, creds, secret)
    else:
        access = await cdncertificate.cdn_access(rt, r)
        if not isinstance(access, Problem):
            return access
    remembered = rt.last_credentials.get(r.key)
    if remembered is None:
        why = f"credentials Secret {name!r} is gone and none is remembered: remote certificate left in place"
        await event(rt, r, "Warning", "DeleteSkipped", why)
    return remembered
