"""CdnCertificate bindings: make the CDN HTTP resources of `spec.bindTo` serve the certificate's seq.

Per resource and pass: at most one task status and one read (a resource in sync and checked in this drift cycle of
the account costs nothing), then, only when every listed resource's host names are covered by the certificate, one
change for each resource whose `certificate` differs: a PATCH of `certificate` alone, or with
`CERTSYNC_CDN_BIND_METHOD=put` the whole configuration just read, sent back exactly, `certificate` changed. Each
change is written ahead in its status entry (state `Sending`), its task id recorded right after; the task is then
followed across passes (requeued, never slept on) and only a fresh read showing the seq makes it `Bound`.
`reconcile.bindings` decides; this module calls and records.

A CDN resource's `certificate` has one owner like a deployment: the oldest CdnCertificate naming it whose
credentials were proven for the account (`base.conflict`), keyed `<endpoint>|<account>|resource|<id>`
(`binding_key`). Ids removed from bindTo are forgotten, their resources left as they are.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from certsync.cdn import CdnAccess, CdnResource, ResourceNotFound
from certsync.controllers.base import (
    CLAIMANT_WAIT_S,
    CONFLICT_RECHECK_S,
    OutcomeUnknown,
    Resource,
    Runtime,
    conflict,
    event,
    login_state,
    prove,
    record,
    refuse_if_deleting,
    unproven_with_rivals,
    write_not_done,
)
from certsync.reconcile import State
from certsync.reconcile import bindings as rb
from certsync.reconcile import cdn as rc
from certsync.reconcile.targets import target_key
from certsync.remote import RateLimitedError, RemoteError
from certsync.scrub import GENERIC

log = logging.getLogger("certsync")
Outcome = tuple[State | None, dict[str, Any], float | None]


def binding_key(account: str, resource_id: str) -> str:
    """The owner index's key of one CDN resource's `certificate` (account: normalised endpoint | account)."""
    return target_key(account, "resource", resource_id)


def index_keys(account: str, spec: Mapping[str, Any]) -> list[str]:
    """Every binding key a CdnCertificate claims (for the handlers' owner index)."""
    return [binding_key(account, rid) for rid in rb.wanted(spec.get("bindTo"))]


def bound_to(r: Resource) -> bool:
    """The resource has bindings to keep (listed, or left in status from a spec that listed some)."""
    return bool(rb.wanted(r.spec.get("bindTo"))) or bool(r.status.get("bindings"))


def updates_of(current: Mapping[str, rb.Binding], seq: int | None) -> dict[str, Any]:
    return {"bindings": [b.to_status() for b in current.values()] or None, "bound": rb.column(current, seq)}


def state_after_write(r: Resource, seq: int, synced: State) -> State:
    """What a certificate write's outcome record says: Synced only when no binding is left to do."""
    bind_to = rb.wanted(r.spec.get("bindTo"))
    if not bind_to or rb.all_bound(rb.entries(r.status.get("bindings"), bind_to), seq):
        return synced
    return State("reconciling", "Pending", f"certificate seq {seq} in sync; binding it to {len(bind_to)} CDN resources")


async def reconcile(
    rt: Runtime, r: Resource, access: CdnAccess, account: str, seq: int, names: tuple[str, ...]
) -> Outcome:
    """One pass over the bindings of a certificate in sync at `seq`: the state they give the resource (None: all
    bound), status updates, and when to look again (None: at the certificate's own time)."""
    bind_to = rb.wanted(r.spec.get("bindTo"))
    if not bind_to:
        return None, ({"bindings": None, "bound": None} if r.status.get("bindings") else {}), None
    for rid in bind_to:
        clash = conflict(rt, r, binding_key(account, rid), f"CDN resource {rid}", account)
        if clash is not None:
            return clash, {}, CONFLICT_RECHECK_S if clash.kind == "stalled" else CLAIMANT_WAIT_S
    now = rt.clock()
    cycle = rc.drift_cycle_start(account, now, rt.settings.drift_interval)
    current = rb.entries(r.status.get("bindings"), bind_to)
    read: dict[str, CdnResource] = {}
    writes: list[str] = []
    waiting = False
    try:
        for rid, before in list(current.items()):
            rivals = unproven_with_rivals(rt, r, binding_key(account, rid), account)
            try:
                after, step, resource = await _observe(rt, r, access, account, before, seq, cycle, names, rivals)
            except RemoteError as error:
                if error.retryable:
                    raise
                after, step, resource = rb.refused(before, seq, error.reason, error.message, now), "none", None
            current[rid] = after
            if resource is not None:
                read[rid] = resource
            waiting = waiting or step == "wait" or after.state in ("Sending", "Applying")
            if step == "write":
                writes.append(rid)
            await _tell(rt, r, before, after, seq, resource)
        # Every listed resource was read for this seq by now: a single one not covered means no write at all.
        if not any(b.state == "NamesNotCovered" for b in current.values()):
            for rid in writes:
                await _bind(rt, r, access, current, rid, read.get(rid), seq, names)
                waiting = True
    except RateLimitedError as limited:
        # Out of the account's configuration budget (nothing was sent): what was learnt is kept, the rest waits for
        # the window. Resources all still known bound keep the resource Ready meanwhile (a drift check of many).
        wait = max(1.0, limited.retry_after if limited.retry_after is not None else rb.TASK_POLL_S)
        state = rb.overall(current, seq)
        if state is not None and state.kind == "reconciling":  # a person's problem (stalled) stays what it is
            state = State("reconciling", "RateLimited", f"{limited.message}; bindings: {state.message}")
        return state, updates_of(current, seq), wait
    except RemoteError:  # the remote is down, or a change's outcome is unknown: the pass ends on it
        await record(rt, r, updates_of(current, seq))
        raise
    return rb.overall(current, seq), updates_of(current, seq), rb.TASK_POLL_S if waiting else None


async def _observe(
    rt: Runtime,
    r: Resource,
    access: CdnAccess,
    account: str,
    binding: rb.Binding,
    seq: int,
    cycle: dt.datetime,
    names: tuple[str, ...],
    rivals: bool,
) -> tuple[rb.Binding, rb.Step, CdnResource | None]:
    """The binding's one task status and one read, as it needs them."""
    need = rb.need(binding, seq, cycle, r.forced or rivals, names)
    if need == "none":
        return binding, "none", None
    if need == "write":
        return binding, "write", None
    if need == "task" and binding.task_id:
        try:
            task = await rt.cdn.config_task(access, binding.task_id)
        except ResourceNotFound:  # the remote forgot the task: the resource says what happened
            binding = dataclasses.replace(binding, message=f"task {binding.task_id} unknown to the remote")
        else:
            prove(rt, r, account)
            binding, step = rb.after_task(binding, task.state, GENERIC.short(task.message))
            if step != "reread":
                return binding, step, None
    resource = await rt.cdn.get_resource(access, binding.resource_id)
    prove(rt, r, account)
    after, step = rb.after_read(binding, resource.names, resource.certificate, seq, names, rt.clock())
    return after, step, resource


async def _tell(
    rt: Runtime, r: Resource, before: rb.Binding, after: rb.Binding, seq: int, resource: CdnResource | None
) -> None:
    """Events for what a person would want to know: a resource now serving the seq, a drift found."""
    rid = after.resource_id
    if after.state == "Bound" and not (before.state == "Bound" and before.seq == seq):
        if before.state == "Sending":
            await event(rt, r, "Normal", "Recovered", f"the unanswered change of CDN resource {rid} had been applied")
        await event(rt, r, "Normal", "Bound", f"CDN resource {rid} serves certificate seq {seq}")
    elif before.state == "Bound" and before.seq == seq and after.state == "Pending" and resource is not None:
        serving = "no certificate" if resource.certificate is None else f"certificate seq {resource.certificate}"
        message = f"CDN resource {rid} serves {serving} instead of seq {seq} (changed elsewhere): binding it again"
        log.info("CdnCertificate %s/%s: %s", r.namespace, r.name, message, extra={"k8s_ref": r.log_ref})
        await event(rt, r, "Warning", "Drifted", message)


async def _bind(
    rt: Runtime,
    r: Resource,
    access: CdnAccess,
    current: dict[str, rb.Binding],
    rid: str,
    resource: CdnResource | None,
    seq: int,
    names: tuple[str, ...],
) -> None:
    """One change, written ahead: the entry `Sending`, then the call, then its task id, nothing in between.
    Shielded from cancellation between the call and its record, as `base.guarded_write`. A PUT sends back the
    configuration read in this pass (read now when the pass had none: GET, then PUT)."""
    method = rt.settings.cdn_bind_method
    if method == "put" and resource is None:
        resource = await rt.cdn.get_resource(access, rid)
        current[rid], step = rb.after_read(current[rid], resource.names, resource.certificate, seq, names, rt.clock())
        if step != "write":  # it changed since it was read: this read decided
            return
    refuse_if_deleting(rt, r)  # a binding to a certificate being deleted would point the site at nothing
    before = current[rid]
    configuration = dict(resource.configuration) if resource is not None else {}
    current[rid] = rb.intent(before, seq, rt.clock())
    await record(rt, r, updates_of(current, seq))

    async def send() -> str:
        if method == "put":
            return await rt.cdn.put_resource(access, rid, {**configuration, "certificate": seq})
        return await rt.cdn.patch_resource(access, rid, {"certificate": seq})

    async def write_and_record() -> None:
        try:
            task_id = await send()
        except RemoteError as error:
            if write_not_done(error) and error.retryable:  # not sent, or a 429: nothing changed there
                current[rid] = dataclasses.replace(before, seq=seq, message=error.message[: rb.MAX_MESSAGE])
                await record(rt, r, updates_of(current, seq))
                raise
            if write_not_done(error):  # refused: a person must look
                current[rid] = rb.refused(before, seq, error.reason, error.message, rt.clock())
                await record(rt, r, updates_of(current, seq))
                return
            raise OutcomeUnknown(f"CDN resource {rid}: {error.message}; the change's outcome is unknown: reading "
                                 "before any retry", retry_after=error.retry_after) from error  # fmt: skip
        current[rid] = rb.accepted(current[rid], task_id)
        await record(rt, r, {**updates_of(current, seq), **login_state(rt, r)})
        await event(rt, r, "Normal", "BindRequested",
                    f"asked CDN resource {rid} to serve certificate seq {seq} (task {task_id})")  # fmt: skip

    task = asyncio.ensure_future(write_and_record())
    rt.writes.add(task)

    def settled(done: asyncio.Future[None]) -> None:
        rt.writes.discard(done)
        if not done.cancelled():
            done.exception()  # retrieved: whoever awaited it got it; a shutdown must not log it as lost

    task.add_done_callback(settled)
    await asyncio.shield(task)


class StillServed(RemoteError):
    """Deletion with `Delete`: CDN resources of the account still serve the certificate, so it is not removed;
    retried (a person may rebind them) until `CERTSYNC_DELETE_TIMEOUT`, then left in place."""

    reason = "StillServed"
    retryable = True


async def still_serving(rt: Runtime, access: CdnAccess, seq: int) -> list[str]:
    """The CDN resources of the account that serve `seq` now (one list call): whoever bound them, bindTo or not."""
    return [res.id for res in await rt.cdn.list_resources(access) if res.certificate == seq]


async def refuse_while_served(rt: Runtime, access: CdnAccess, seq: int) -> None:
    """Raise `StillServed`, naming the resources, when any CDN resource of the account serves `seq`."""
    serving = await still_serving(rt, access, seq)
    if serving:
        shown = ", ".join(serving[:10]) + (f" and {len(serving) - 10} more" if len(serving) > 10 else "")
        raise StillServed(
            f"certificate seq {seq} is still served by CDN resource{'s' if len(serving) > 1 else ''} {shown}: "
            "not deleted while they use it (bind them to another certificate, or delete with deletionPolicy Orphan)"
        )
