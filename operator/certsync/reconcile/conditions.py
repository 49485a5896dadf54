"""What a resource's kstatus conditions say, and how long to wait before looking again."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from certsync import pki

POLL_FIRST_S = 5.0
POLL_MAX_S = 300.0
PROGRESSING = "Progressing"

StateKind = Literal["ready", "reconciling", "stalled", "suspended"]


@dataclass(frozen=True)
class State:
    """What the resource's conditions should say: ready, reconciling (in progress), stalled (needs a person)."""

    kind: StateKind
    reason: str
    message: str


def conditions(
    previous: Sequence[Mapping[str, Any]], state: State, generation: int, now: dt.datetime
) -> list[dict[str, Any]]:
    """Ready, Reconciling and Stalled, keeping lastTransitionTime when a status does not change."""
    before = {c.get("type"): c for c in previous}
    wanted = {
        "Ready": state.kind == "ready",
        "Reconciling": state.kind == "reconciling",
        "Stalled": state.kind == "stalled",
    }
    result = []
    for kind, true in wanted.items():
        status = "True" if true else "False"
        old = before.get(kind, {})
        changed = old.get("status") != status
        result.append(
            {
                "type": kind,
                "status": status,
                "reason": state.reason,
                "message": state.message,
                "observedGeneration": generation,
                "lastTransitionTime": pki.rfc3339(now) if changed else old.get("lastTransitionTime", pki.rfc3339(now)),
            }
        )
    # Conditions of other types (a DeploymentTLS's PushDeadlineAtRisk) are their owner's: kept as they are.
    result.extend(dict(c) for c in previous if c.get("type") not in wanted)
    return result


def first_seen(generation: int, now: dt.datetime) -> list[dict[str, Any]]:
    """The conditions of a resource the operator has just seen: Reconciling, Ready Unknown.

    kstatus reads a resource without conditions as Current, so a status-less resource would look
    healthy to Flux while its first pass waits for a worker or for the remote. `Progressing` is the
    reason kstatus' and Flux's own controllers give while they work on a resource."""
    stamp = pki.rfc3339(now)
    message = "seen by the operator; its first pass decides"
    return [
        {"type": kind, "status": status, "reason": PROGRESSING, "message": message,
         "observedGeneration": generation, "lastTransitionTime": stamp}
        for kind, status in (("Ready", "Unknown"), ("Reconciling", "True"), ("Stalled", "False"))
    ]  # fmt: skip


def poll_delay(attempt: int) -> float:
    """5 s, doubling, capped at 5 min."""
    return float(min(POLL_MAX_S, POLL_FIRST_S * 2 ** max(0, attempt)))


def jittered(delay: float, draw: float) -> float:
    """Full jitter on the upper half: `draw` in [0, 1) comes from the caller (this module reads no randomness)."""
    return max(1.0, delay / 2 + delay / 2 * draw)


def parse_time(value: object) -> dt.datetime | None:
    """An RFC 3339 time from status, or None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
