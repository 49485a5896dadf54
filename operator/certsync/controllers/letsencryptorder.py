"""LetsEncryptOrder: order once (recorded before the POST), poll, then claim the certificate that appeared after it.

An order whose outcome was never recorded (a crash right after the POST, a lost answer) is settled by reading
only, never by ordering again: a resource order by its task status, a wildcard order (which has no status call)
by the account's list, listed again until WILDCARD_SETTLE_S after the intent. Only when the remote shows no order
(task `no`, or no certificate within that bound) and the POST can no longer land (the remote call deadline has
passed) is the intent marked failed-to-land (`intent.facts.failedToLand`), and then one new order is placed, with
an intent of its own first.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from certsync import pki
from certsync.cdn import CdnAccess, TaskExists
from certsync.controllers.base import (
    CLAIMANT_WAIT_S,
    OutcomeUnknown,
    Resource,
    Runtime,
    conflict,
    endpoint_of,
    event,
    finish,
    guarded_write,
    landing_left,
    precheck,
    prove,
    record,
    stop_for,
    tracked,
    unproven_with_rivals,
)
from certsync.controllers.cdncertificate import DEFAULT_ENDPOINT, cdn_access, forget_listing, listing
from certsync.reconcile import Problem, State
from certsync.reconcile import orders as ro
from certsync.reconcile.conditions import POLL_FIRST_S, parse_time, poll_delay
from certsync.reconcile.record import Intent, new_intent
from certsync.reconcile.targets import target_key
from certsync.remote import RemoteError

log = logging.getLogger("certsync")
INFLIGHT = "letsencryptorders/inflight"  # owners() key space: resource orders running, per account
QUEUED_S = 10.0  # a resource order waiting for the account's running one looks again this soon


def account_of(spec: Mapping[str, Any]) -> str:
    return target_key(endpoint_of(spec, DEFAULT_ENDPOINT), str(spec.get("account", "")))


def target_of(spec: Mapping[str, Any]) -> str:
    if spec.get("resourceId"):
        return target_key(account_of(spec), "resource", str(spec["resourceId"]))
    return target_key(account_of(spec), "domains", ",".join(sorted(str(d).lower() for d in spec.get("domains") or [])))


def inflight(status: Mapping[str, Any]) -> bool:
    """A resource order placed (or maybe placed) whose certificate is not found yet and that did not fail."""
    intent = Intent.from_status(status.get("intent"))
    maybe = intent is not None and not intent.facts.get("failedToLand")
    placed = bool(status.get("orderedAt")) or maybe
    return placed and not status.get("certificateSeq") and status.get("taskStatus") != "failed"


# How long an unrecorded wildcard order is looked for in the account's list before it is taken as never placed:
# the order's expected processing time (DNS-01 validation and issuance take seconds to minutes). An order that
# never left costs this wait once; a second order is never placed while the first may still be running.
WILDCARD_SETTLE_S = 15 * 60.0


def may_be_running(rt: Runtime, intent: Intent) -> bool:
    """An unrecorded wildcard order may still be running (or its POST still landing): its intent is younger than
    WILDCARD_SETTLE_S. An intent without a readable time is as old as can be."""
    started = parse_time(intent.at)
    return started is not None and (rt.clock() - started).total_seconds() < WILDCARD_SETTLE_S


async def sync(rt: Runtime, r: Resource) -> float | None:
    """One pass; an order target is this resource's only once its credentials got an answer for the account."""
    return await tracked(rt, r, lambda: _sync(rt, r))


async def _sync(rt: Runtime, r: Resource) -> float | None:
    spec = r.spec
    blocked = precheck(rt, r, DEFAULT_ENDPOINT)
    if blocked:
        return await finish(rt, r, blocked, {}, None)
    resource_id = str(spec.get("resourceId") or "")
    domains = [str(d) for d in spec.get("domains") or []]
    if bool(resource_id) == bool(domains):
        return await finish(rt, r, State("stalled", "InvalidSpec", "exactly one of resourceId and domains"), {}, None)
    target = target_of(spec)
    what = f"the order for resource {resource_id!r}" if resource_id else f"the order for {', '.join(domains)}"
    clash = conflict(rt, r, target, what, account_of(spec))
    if clash:
        return await stop_for(rt, r, clash)
    access = await cdn_access(rt, r)
    if isinstance(access, Problem):
        return await finish(rt, r, access.state(), {}, None)
    rt.last_credentials[r.key] = access
    status = r.status
    if status.get("certificateSeq") and status.get("target") == target and not r.forced:
        if unproven_with_rivals(rt, r, target, account_of(spec)):  # after a restart, with a twin: one list proves
            await listing(rt, r, access)
        issued = State("ready", "Synced", f"certificate seq {status['certificateSeq']} issued")
        return await finish(rt, r, issued, {}, None)
    intent = Intent.from_status(status.get("intent"))
    if intent is not None and not intent.facts.get("failedToLand"):
        await _resolve(rt, r, access, intent, resource_id, domains)
    if not (r.status.get("orderedAt") and r.status.get("target") == target):
        pending = Intent.from_status(r.status.get("intent"))
        if pending is not None and not pending.facts.get("failedToLand"):
            where = "its task status" if resource_id else "its certificate in the account's list"
            state = State("reconciling", "Pending", f"settling an unfinished order: reading {where} before "
                          "anything is ordered again")  # fmt: skip
            return await finish(rt, r, state, {}, POLL_FIRST_S)
        return await _order(rt, r, access, target, resource_id, domains, again=pending)
    return await _follow(rt, r, access, resource_id, domains)


def running(rt: Runtime, r: Resource, yes: bool) -> None:
    """Say in memory whether this resource's order runs at the remote: learnt from an authenticated answer only
    (our own POST, the task status), never from status, which its tenant may write."""
    account = account_of(r.spec)
    orders = rt.orders_running.setdefault(account, {})
    if yes:
        orders[r.key] = r.claim
    else:
        orders.pop(r.key, None)
    if not orders:
        del rt.orders_running[account]


def order_busy(rt: Runtime, r: Resource) -> tuple[State, float] | None:
    """`Queued` (and when to look again) while another resource order of the account runs or is being placed;
    None when this one may order.

    Running orders are what passes of this process learnt from the remote. Right after a restart, an order that
    status says is running counts until its resource's first pass in this process (which asks the remote): that
    wait is short, a status is no proof of anything."""
    account = account_of(r.spec)
    others = [c for k, c in rt.orders_running.get(account, {}).items() if k != r.key]
    holder = rt.order_slots.get(account)
    if holder is not None and holder != r.claim:
        others.append(holder)
    delay = QUEUED_S if others else CLAIMANT_WAIT_S
    for claim in rt.owners(INFLIGHT, account):
        key = (r.plural, claim.namespace, claim.name)
        # Only an older one: two orders whose (forgeable) status both say running never wait for each other.
        if key != r.key and key not in rt.proofs.passed and claim < r.claim:
            others.append(claim)
    if not others:
        return None
    busy = min(others).described_to(r.namespace)
    return State("reconciling", "Queued", f"waiting for the running order of {busy} in the same account"), delay


async def _order(
    rt: Runtime, r: Resource, access: CdnAccess, target: str, resource_id: str, domains: list[str],
    again: Intent | None = None,
) -> float | None:  # fmt: skip
    """Place the order, its intent recorded first; `again`: the earlier intent, settled as failed to land."""
    account = account_of(r.spec)
    if resource_id:
        busy = order_busy(rt, r)
        if busy is not None:
            return await finish(rt, r, busy[0], {}, busy[1])
        # Held for this pass only (the list before, then the POST), released however the pass ends: what keeps a
        # second order out afterwards is `orders_running`, learnt from the remote.
        rt.order_slots[account] = r.claim
    try:
        forget_listing(rt, access)
        before = sorted(c.seq for c in await rt.cdn.list_certificates(access))
        prove(rt, r, account)
        now = rt.clock()
        lost = {"replaces": again.at} if again is not None else {}
        intent = new_intent("order", target, "", now, before=before, **lost)

        async def place() -> None:
            if r.uid:
                rt.placed_before[r.uid] = frozenset(before)
            if resource_id:
                running(rt, r, True)  # sent: it may run, whatever the answer says (a lost one is read back)
                await rt.cdn.order_letsencrypt(access, resource_id)
            else:
                await rt.cdn.order_wildcard(access, domains)

        def outcome(_: object) -> dict[str, Any]:
            return {"orderedAt": pki.rfc3339(now), "taskStatus": "accepted", "listBefore": before, "target": target,
                    "certificateSeq": None, "notAfter": None, "pollAttempt": 0}  # fmt: skip

        try:
            await guarded_write(rt, r, intent, place, outcome)
        except TaskExists:  # 489: an order is already running for these names: it is ours
            await record(rt, r, outcome(None))
        except OutcomeUnknown:
            raise  # it may have been placed: it counts as running until the task status says otherwise
        except RemoteError:
            if resource_id:
                running(rt, r, False)  # refused, or never sent (429): nothing runs
            raise
    finally:
        if resource_id and rt.order_slots.get(account) == r.claim:
            del rt.order_slots[account]
    why = f" again (the order of {again.at} never reached the remote)" if again is not None else ""
    await event(rt, r, "Normal", "Ordered", f"ordered a Let's Encrypt certificate{why}")
    state = State("reconciling", "Pending", "order placed; waiting for issuance")
    return await finish(rt, r, state, {}, POLL_FIRST_S)


async def _resolve(
    rt: Runtime, r: Resource, access: CdnAccess, intent: Intent, resource_id: str, domains: list[str]
) -> None:
    """An order whose outcome was never recorded: the task status or the list says whether it was placed. Only
    reads: a re-sent order is a second order wherever the first is done or the remote does not answer 489 (Let's
    Encrypt limits duplicate certificates a week)."""
    before = [int(s) for s in intent.facts.get("before", []) if isinstance(s, int)]
    placed = {"orderedAt": intent.at, "listBefore": before, "target": intent.target, "intent": None}
    if resource_id:
        task = await rt.cdn.letsencrypt_status(access, resource_id)
        prove(rt, r, account_of(r.spec))
        running(rt, r, task in ("accepted", "processed"))
        if task != "no":
            await record(rt, r, placed)
            return
    else:
        forget_listing(rt, access)
        if ro.pick_certificate(listed(await rt.cdn.list_certificates(access)), set(before), domains, ()) is not None:
            await record(rt, r, placed)
            return
        # Not (yet) in the list: the order may be running, or may never have left. The intent stays, the caller
        # waits and lists again; only nothing within WILDCARD_SETTLE_S makes it an order that was never placed.
        if may_be_running(rt, intent):
            return
    if landing_left(rt, intent) > 0:  # the remote shows no order, but the POST may still be on its way
        return
    # The remote shows no order and the POST can no longer land: it failed to land. Marked so in status (what a
    # restart then finds), and the caller places one new order, write-ahead again.
    lost = Intent(intent.op, intent.target, intent.digest, intent.at,
                  {**intent.facts, "failedToLand": pki.rfc3339(rt.clock())})  # fmt: skip
    await record(rt, r, {"intent": lost.to_status()})
    log.warning("LetsEncryptOrder %s/%s: the order of %s never reached the remote: ordering once more",
                r.namespace, r.name, intent.at, extra={"k8s_ref": r.log_ref})  # fmt: skip


async def _follow(rt: Runtime, r: Resource, access: CdnAccess, resource_id: str, domains: list[str]) -> float | None:
    attempt = int(r.status.get("pollAttempt", 0))
    updates: dict[str, Any] = {}
    if resource_id:
        task = await rt.cdn.letsencrypt_status(access, resource_id)
        prove(rt, r, account_of(r.spec))
        running(rt, r, task in ("accepted", "processed"))  # processed: runs until its certificate is listed
        updates["taskStatus"] = task
        if task == "failed":
            return await finish(rt, r, State("stalled", "OrderFailed", "the Let's Encrypt order failed"), updates, None)
        if task != "processed":
            updates["pollAttempt"] = attempt + 1
            state = State("reconciling", "Pending", f"order {task!r}; waiting for issuance")
            return await finish(rt, r, state, updates, poll_delay(attempt))
    forget_listing(rt, access)
    certificates = listed(await rt.cdn.list_certificates(access))
    prove(rt, r, account_of(r.spec))
    before = {int(s) for s in r.status.get("listBefore", []) if isinstance(s, int)}
    found = ro.pick_certificate(certificates, before, domains, ())
    if found is None:
        updates["pollAttempt"] = attempt + 1
        state = State("reconciling", "Pending", "waiting for the issued certificate to appear in the list")
        return await finish(rt, r, state, updates, poll_delay(attempt))
    if resource_id:
        running(rt, r, False)
    updates.update(certificateSeq=found.seq, taskStatus="processed", pollAttempt=0,
                   notAfter=pki.rfc3339(pki.from_timestamp(found.not_after)))  # fmt: skip
    await record(rt, r, updates)
    await event(rt, r, "Normal", "Issued", f"certificate seq {found.seq} issued")
    return await finish(rt, r, State("ready", "Synced", f"certificate seq {found.seq} issued"), {}, None)


def listed(items: list[Any]) -> list[ro.Listed]:
    """The account's list as an order reads it (the deletion of an order running reads it the same way)."""
    return [ro.Listed(c.seq, c.issuer, (c.cn, *c.alt), c.end_timestamp) for c in items]
