"""Decisions for a CdnCertificate: which remote certificate is ours, and whether it must be written.

The remote shows each certificate's chain fingerprints (`chain_info`), so a
read settles whether it holds our chain; status records the applied digest,
target and seq so that a pass with nothing to do makes no call.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from certsync.reconcile.conditions import State, parse_time
from certsync.reconcile.record import Intent


@dataclass(frozen=True)
class Desired:
    target: str  # normalised endpoint + "|" + account
    digest: str  # chain and key
    chain_sha1: tuple[str, ...]  # leaf first, colon hex as chain_info shows it
    leaf_cn: str
    spec_seq: int | None


@dataclass(frozen=True)
class Record:
    target: str | None = None
    seq: int | None = None
    applied_digest: str | None = None
    last_sync: dt.datetime | None = None
    intent: Intent | None = None

    @classmethod
    def from_status(cls, status: dict[str, object]) -> Record:
        seq = status.get("seq")
        target, digest = status.get("target"), status.get("appliedDigest")
        return cls(
            target=target if isinstance(target, str) else None,
            seq=seq if isinstance(seq, int) else None,
            applied_digest=digest if isinstance(digest, str) else None,
            last_sync=parse_time(status.get("lastSyncTime")),
            intent=Intent.from_status(status.get("intent")),
        )


def wanted_seq(desired: Desired, record: Record) -> int | None:
    """spec.seq names the certificate; otherwise the one we added or adopted at this target, if any."""
    if desired.spec_seq is not None:
        return desired.spec_seq
    return record.seq if record.target == desired.target else None


def holds_chain(remote_chain: Sequence[str], desired: Sequence[str]) -> bool:
    """The remote may append the root it trusts; what we pushed must come first, link for link."""
    return len(remote_chain) >= len(desired) and tuple(remote_chain[: len(desired)]) == tuple(desired)


Action = Literal["resolve", "get", "find", "done"]


@dataclass(frozen=True)
class Plan:
    action: Action
    state: State
    requeue_after: float | None = None


MIN_WAIT_S = 1.0  # a timer that fires a hair early waits again this long, not a busy loop


def drift_cycle_start(target: str, at: dt.datetime, interval: float) -> dt.datetime:
    """The start of the account's drift cycle that `at` falls in.

    An account's cycles are fixed (an offset from the account's name, so accounts do not all line up):
    every certificate of the account is checked once per cycle, at its start, whenever it was created
    or last written, so that all of them share one list call."""
    span = max(1, round(interval))
    offset = int.from_bytes(hashlib.sha256(target.encode()).digest()[:8], "big") % span
    cycles = math.floor((at.timestamp() - offset) / span)
    return dt.datetime.fromtimestamp(offset + cycles * span, dt.UTC)


def until_next_drift_check(target: str, now: dt.datetime, interval: float) -> float:
    """Seconds from `now` (a check just made) to the start of the account's next cycle: at most `interval`."""
    following = drift_cycle_start(target, now, interval) + dt.timedelta(seconds=max(1, round(interval)))
    return max(MIN_WAIT_S, (following - now).total_seconds())


def plan_without_read(desired: Desired, record: Record, now: dt.datetime, drift: float, forced: bool) -> Plan:
    if record.intent is not None:
        return Plan("resolve", State("reconciling", "Pending", "reading the remote to settle an unfinished write"))
    seq = wanted_seq(desired, record)
    synced = record.applied_digest == desired.digest and seq is not None and seq == record.seq
    if synced and not forced and record.last_sync is not None:
        checked_this_cycle = record.last_sync >= drift_cycle_start(desired.target, now, drift)
        if checked_this_cycle:
            wait = until_next_drift_check(desired.target, now, drift)
            return Plan("done", State("ready", "Synced", f"certificate seq {seq} in sync"), wait)
    if seq is not None:
        return Plan("get", State("reconciling", "Pending", f"reading certificate seq {seq}"))
    return Plan("find", State("reconciling", "Pending", "looking for this certificate on the remote"))


SeqAction = Literal["adopt", "patch", "find", "stall"]


def plan_for_seq(desired: Desired, record: Record, remote_chain: Sequence[str] | None) -> tuple[SeqAction, State]:
    """The named certificate was read (`None`: it does not exist)."""
    seq = wanted_seq(desired, record)
    if remote_chain is None:
        if desired.spec_seq is not None:
            return "stall", State("stalled", "RemoteNotFound", f"certificate seq {seq} does not exist")
        return "find", State("reconciling", "Pending", f"certificate seq {seq} is gone: adding it again")
    if holds_chain(remote_chain, desired.chain_sha1):
        return "adopt", State("ready", "Synced", f"certificate seq {seq} in sync")
    return "patch", State("reconciling", "Pending", f"certificate seq {seq} differs: patching it")
