"""Deletion with `deletionPolicy: Delete`: remove what this resource wrote, and neither leak nor wedge.

The remote certificate is removed with the credentials the resource last used
successfully when its Secret is already gone (a namespace being deleted);
unavailability is retried with backoff until the bound set by
`CERTSYNC_DELETE_TIMEOUT`, with a Warning each time, then the finalizer is
released with a final Warning. A resource that never wrote (or lost its
target to an older one) removes nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from certsync import accounts, pki
from certsync.cdn import CdnAccess, RecordNotFound
from certsync.controllers import cdncertificate, deploymenttls, letsencryptorder
from certsync.controllers.base import Resource, Runtime, conflict, event, precheck
from certsync.emqx import EmqxAccess, TLSNotConfigured
from certsync.kube import KubeError
from certsync.reconcile import EMQX_CREDENTIALS, Problem, credentials, keys_of
from certsync.reconcile.conditions import parse_time, poll_delay
from certsync.reconcile.targets import target_key
from certsync.remote import RemoteError
from certsync.scrub import GENERIC

Done = None
log = logging.getLogger("certsync.deletion")


async def delete(rt: Runtime, r: Resource, deleted_at: str | None, attempt: int) -> float | None:
    """None when the finalizer may go; otherwise seconds until the next attempt."""
    if r.spec.get("deletionPolicy", "Orphan") != "Delete":
        return Done
    blocked = precheck(rt, r, cdncertificate.DEFAULT_ENDPOINT)
    if blocked is not None:
        await event(rt, r, "Warning", "DeleteSkipped", f"remote certificate left in place: {blocked.message}")
        return Done
    try:
        remove = await _removal(rt, r)
        if remove is None:
            return Done
        await remove()
    except Exception as error:  # whatever fails, CERTSYNC_DELETE_TIMEOUT bounds the retries
        retryable, message = _failure(error)
        started = parse_time(deleted_at) or rt.clock()
        elapsed = (rt.clock() - started).total_seconds()
        if not retryable or elapsed >= rt.settings.delete_timeout:
            why = "refused" if not retryable else f"still failing after {elapsed:.0f}s"
            await event(rt, r, "Warning", "DeleteFailed",
                        f"gave up removing the remote certificate ({why}): {message}")  # fmt: skip
            return Done
        delay = min(rt.settings.delete_timeout - elapsed, poll_delay(attempt) * random.uniform(0.5, 1.0))
        # No varying delay in the message: the same failure again counts on one Event (see Kube.event).
        until = pki.rfc3339(started + dt.timedelta(seconds=rt.settings.delete_timeout))
        await event(rt, r, "Warning", "DeleteRetrying",
                    f"removing the remote certificate failed: {message}; retrying until {until}")  # fmt: skip
        return max(1.0, delay)
    await event(rt, r, "Normal", "Deleted", "removed the remote certificate")
    return Done


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


async def _removal(rt: Runtime, r: Resource) -> Callable[[], Awaitable[None]] | None:
    """The call that removes what this resource wrote, or None when there is nothing of ours to remove."""
    status = r.status
    if r.plural == "deploymenttlses":
        target = deploymenttls.target_of(r.spec)
        if status.get("target") != target or owned_by_another(rt, r, target):
            return None
        access = await _credentials(rt, r)
        if access is None:
            return None
        assert isinstance(access, EmqxAccess)
        deployment = str(r.spec["deploymentId"])

        async def remove_tls() -> None:
            with contextlib.suppress(TLSNotConfigured):  # already gone counts as removed
                await rt.emqx.delete_tls(access, deployment)

        return remove_tls
    if r.plural == "cdncertificates":
        seq = status.get("seq")
        target = cdncertificate.target_of(r.spec)
        if not isinstance(seq, int) or status.get("target") != target:
            return None
        if owned_by_another(rt, r, target_key(target, str(seq)), target):
            return None
    else:
        seq = status.get("certificateSeq")
        if not isinstance(seq, int) or status.get("target") != letsencryptorder.target_of(r.spec):
            return None
    cdn = await _credentials(rt, r)
    if cdn is None:
        return None
    assert isinstance(cdn, CdnAccess)
    number = seq

    async def remove_certificate() -> None:
        with contextlib.suppress(RecordNotFound):  # already gone counts as removed
            await rt.cdn.delete_certificate(cdn, number)

    return remove_certificate


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
