"""LetsEncryptOrder: order once (recorded before the POST), poll, then claim the certificate that appeared after it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from certsync import pki
from certsync.cdn import CdnAccess, TaskExists
from certsync.controllers.base import (
    OutcomeUnknown,
    Resource,
    Runtime,
    conflict,
    endpoint_of,
    event,
    finish,
    guarded_write,
    precheck,
    record,
)
from certsync.controllers.cdncertificate import DEFAULT_ENDPOINT, cdn_access, forget_listing
from certsync.reconcile import Problem, State
from certsync.reconcile import orders as ro
from certsync.reconcile.conditions import POLL_FIRST_S, parse_time, poll_delay
from certsync.reconcile.record import Intent, new_intent
from certsync.reconcile.targets import Claim, target_key
from certsync.remote import RemoteError

INFLIGHT = "letsencryptorders/inflight"  # owners() key space: resource orders running, per account


def account_of(spec: Mapping[str, Any]) -> str:
    return target_key(endpoint_of(spec, DEFAULT_ENDPOINT), str(spec.get("account", "")))


def target_of(spec: Mapping[str, Any]) -> str:
    if spec.get("resourceId"):
        return target_key(account_of(spec), "resource", str(spec["resourceId"]))
    return target_key(account_of(spec), "domains", ",".join(sorted(str(d).lower() for d in spec.get("domains") or [])))


def inflight(status: Mapping[str, Any]) -> bool:
    """A resource order placed (or maybe placed) whose certificate is not found yet and that did not fail."""
    placed = bool(status.get("orderedAt")) or bool(status.get("intent"))
    return placed and not status.get("certificateSeq") and status.get("taskStatus") != "failed"


# How long an unrecorded wildcard order is looked for in the account's list before it is taken as never placed
# (issuance takes seconds to minutes; an order that never left costs this wait once, a second order never).
WILDCARD_SETTLE_S = 15 * 60.0


async def sync(rt: Runtime, r: Resource) -> float | None:
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
    clash = conflict(rt, r, target, what)
    if clash:
        return await finish(rt, r, clash, {}, None)
    access = await cdn_access(rt, r)
    if isinstance(access, Problem):
        return await finish(rt, r, access.state(), {}, None)
    rt.last_credentials[r.key] = access
    status = r.status
    if status.get("certificateSeq") and status.get("target") == target and not r.forced:
        issued = State("ready", "Synced", f"certificate seq {status['certificateSeq']} issued")
        return await finish(rt, r, issued, {}, None)
    intent = Intent.from_status(status.get("intent"))
    if intent is not None:
        await _resolve(rt, r, access, intent, resource_id, domains)
    if not (r.status.get("orderedAt") and r.status.get("target") == target):
        if r.status.get("intent") is not None:
            state = State("reconciling", "Pending", "settling an unfinished order: looking for its certificate in the "
                          "account's list before anything is ordered again")  # fmt: skip
            return await finish(rt, r, state, {}, POLL_FIRST_S)
        return await _order(rt, r, access, target, resource_id, domains)
    return await _follow(rt, r, access, resource_id, domains)


async def _order(
    rt: Runtime, r: Resource, access: CdnAccess, target: str, resource_id: str, domains: list[str]
) -> float | None:
    account = account_of(r.spec)
    if resource_id:
        others = [c for c in rt.owners(INFLIGHT, account) if (c.namespace, c.name) != (r.namespace, r.name)]
        holder = rt.order_slots.get(account)
        if holder is not None and (holder.namespace, holder.name) != (r.namespace, r.name):
            others.append(holder)
        if others:
            busy = min(others).described_to(r.namespace)
            state = State("reconciling", "Queued", f"waiting for the running order of {busy} in the same account")
            return await finish(rt, r, state, {}, 10.0)
        rt.order_slots[account] = Claim(r.created, r.namespace, r.name)
    sent = False

    async def place() -> None:
        nonlocal sent
        sent = True
        if resource_id:
            await rt.cdn.order_letsencrypt(access, resource_id)
        else:
            await rt.cdn.order_wildcard(access, domains)

    try:
        forget_listing(rt, access)
        before = sorted(c.seq for c in await rt.cdn.list_certificates(access))
        now = rt.clock()
        intent = new_intent("order", target, "", now, before=before)

        def outcome(_: object) -> dict[str, Any]:
            return {"orderedAt": pki.rfc3339(now), "taskStatus": "accepted", "listBefore": before, "target": target,
                    "certificateSeq": None, "notAfter": None, "pollAttempt": 0}  # fmt: skip

        try:
            await guarded_write(rt, r, intent, place, outcome)
        except TaskExists:  # 489: an order is already running for these names: it is ours
            await record(rt, r, outcome(None))
    except BaseException as error:
        # Nothing was ordered (the list failed, the intent could not be recorded, the credentials were refused, the
        # remote refused the order): the account's slot goes back at once, or one failing resource would queue
        # every other order behind it. Only an order whose outcome is unknown keeps it (its intent is recorded).
        refused = isinstance(error, RemoteError) and not isinstance(error, OutcomeUnknown)
        if (not sent or refused) and resource_id and rt.order_slots.get(account) == r.claim:
            rt.order_slots.pop(account, None)
        raise
    await event(rt, r, "Normal", "Ordered", "ordered a Let's Encrypt certificate")
    state = State("reconciling", "Pending", "order placed; waiting for issuance")
    return await finish(rt, r, state, {}, POLL_FIRST_S)


async def _resolve(
    rt: Runtime, r: Resource, access: CdnAccess, intent: Intent, resource_id: str, domains: list[str]
) -> None:
    """An order whose outcome was never recorded: the task status or the list says whether it was placed."""
    before = [int(s) for s in intent.facts.get("before", []) if isinstance(s, int)]
    placed = {"orderedAt": intent.at, "listBefore": before, "target": intent.target, "intent": None}
    if resource_id:
        task = await rt.cdn.letsencrypt_status(access, resource_id)
        await record(rt, r, placed if task != "no" else {"intent": None})
        return
    forget_listing(rt, access)
    listing = _listed(await rt.cdn.list_certificates(access))
    if ro.pick_certificate(listing, set(before), domains, ()) is not None:
        await record(rt, r, placed)
        return
    # Not (yet) in the list: the order may be running, or may never have left. Re-sending it to find out would be
    # a second order wherever the first is done or the remote does not answer 489 (Let's Encrypt limits duplicate
    # certificates a week), so only reading settles it: the intent stays, the caller waits and lists again, and
    # only when nothing appeared within WILDCARD_SETTLE_S is the order taken as never placed.
    started = parse_time(intent.at)
    if started is not None and (rt.clock() - started).total_seconds() < WILDCARD_SETTLE_S:
        return
    await record(rt, r, {"intent": None})


async def _follow(rt: Runtime, r: Resource, access: CdnAccess, resource_id: str, domains: list[str]) -> float | None:
    attempt = int(r.status.get("pollAttempt", 0))
    updates: dict[str, Any] = {}
    if resource_id:
        task = await rt.cdn.letsencrypt_status(access, resource_id)
        updates["taskStatus"] = task
        if task == "failed":
            rt.order_slots.pop(account_of(r.spec), None)
            return await finish(rt, r, State("stalled", "OrderFailed", "the Let's Encrypt order failed"), updates, None)
        if task != "processed":
            updates["pollAttempt"] = attempt + 1
            state = State("reconciling", "Pending", f"order {task!r}; waiting for issuance")
            return await finish(rt, r, state, updates, poll_delay(attempt))
    forget_listing(rt, access)
    listing = _listed(await rt.cdn.list_certificates(access))
    before = {int(s) for s in r.status.get("listBefore", []) if isinstance(s, int)}
    found = ro.pick_certificate(listing, before, domains, ())
    if found is None:
        updates["pollAttempt"] = attempt + 1
        state = State("reconciling", "Pending", "waiting for the issued certificate to appear in the list")
        return await finish(rt, r, state, updates, poll_delay(attempt))
    rt.order_slots.pop(account_of(r.spec), None)
    updates.update(certificateSeq=found.seq, taskStatus="processed", pollAttempt=0,
                   notAfter=pki.rfc3339(pki.from_timestamp(found.not_after)))  # fmt: skip
    await record(rt, r, updates)
    await event(rt, r, "Normal", "Issued", f"certificate seq {found.seq} issued")
    return await finish(rt, r, State("ready", "Synced", f"certificate seq {found.seq} issued"), {}, None)


def _listed(items: list[Any]) -> list[ro.Listed]:
    return [ro.Listed(c.seq, c.issuer, (c.cn, *c.alt), c.end_timestamp) for c in items]
