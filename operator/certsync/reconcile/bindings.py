"""Decisions for a CdnCertificate's bindings (`spec.bindTo`): which CDN resources must serve which seq, pure.

A binding is one CDN HTTP resource whose `certificate` should be this resource's seq. Status keeps one entry per
resource (`status.bindings`) so that a pass with nothing to do makes no call: its state, the seq it is about,
the configuration task followed, when the remote was last read (`checkedAt`: once per drift cycle of the account)
and the host names then read (so that a rotation that drops a name is caught offline).

States:

- `Pending`: the resource must be read (and, if its `certificate` differs, written).
- `Sending`: the write-ahead intent: a PATCH (or PUT) is about to go or went without its answer recorded. Settled by
  reading the resource, never by writing again at once: only a resource that still does not show the seq
  `SETTLE_S` after the intent is written again.
- `Applying`: the change was accepted (`taskId`); its task is followed, then a fresh read must show the seq.
- `Bound`: a read showed the seq (`boundAt`: since when).
- `Failed`: the task ended `error` (`BindingFailed`, the task's message); tried again at the next drift cycle, when
  the seq changes, or when a person asks (`certsync.io/requested-at`).
- `NamesNotCovered`: the certificate does not cover every host name of the resource: nothing is written.
- `Error`: the API refused a call for this resource (no such resource, a refusal envelope).

Host names are matched as TLS clients match them (RFC 6125): case-insensitive, a trailing dot ignored, a wildcard
only as the whole leftmost label, covering exactly one label (`*.example.com` covers `a.example.com`, neither
`example.com` nor `a.b.example.com`), and never a wildcard of fewer than two labels (`*.com`). A resource's own
wildcard name is covered only by the same wildcard. SANs decide; the CN counts only when there are none.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from certsync import pki
from certsync.reconcile.conditions import State, parse_time

SETTLE_S = 120.0
"""How long an unanswered write (`Sending`) is given to show at the remote before it is taken as not applied."""
TASK_POLL_S = 3.0  # between two looks at a configuration task still pending or in process
MAX_MESSAGE = 512  # a binding's message in status

BindState = Literal["Pending", "Sending", "Applying", "Bound", "Failed", "NamesNotCovered", "Error"]
STATES: tuple[BindState, ...] = ("Pending", "Sending", "Applying", "Bound", "Failed", "NamesNotCovered", "Error")
Need = Literal["none", "task", "read", "write"]


# --- host names ---------------------------------------------------------------------------------


def normalise_host(name: str) -> str:
    """Lower case, no surrounding space or trailing dot, IDNA (punycode) when it is a valid international name."""
    host = name.strip().rstrip(".").lower()
    if host.isascii():
        return host
    try:
        return ".".join(label.encode("idna").decode("ascii") if label != "*" else label for label in host.split("."))
    except UnicodeError:
        return host


def certificate_names(cn: str, sans: Iterable[str]) -> tuple[str, ...]:
    """The names a certificate serves: its DNS SANs, or its CN when it has no SAN at all."""
    names = tuple(normalise_host(s) for s in sans if s.strip())
    return names or ((normalise_host(cn),) if cn.strip() else ())


def covers(certificate: Iterable[str], host: str) -> bool:
    """Whether a TLS client would accept a certificate with these names for `host`."""
    wanted = normalise_host(host)
    if not wanted:
        return False
    for pattern in (normalise_host(n) for n in certificate):
        if pattern == wanted:
            return True
        if pattern.startswith("*.") and pattern.count(".") >= 2 and not wanted.startswith("*."):
            head, _, rest = wanted.partition(".")
            if head and rest == pattern[2:]:
                return True
    return False


def uncovered(certificate: Sequence[str], hosts: Iterable[str]) -> list[str]:
    """The host names the certificate does not cover, in the resource's order (empty: all covered)."""
    return [h for h in hosts if not covers(certificate, h)]


# --- the status entry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binding:
    resource_id: str
    state: BindState = "Pending"
    seq: int | None = None
    task_id: str | None = None
    bound_at: str | None = None
    message: str = ""
    checked_at: str | None = None
    intent_at: str | None = None
    names: tuple[str, ...] = ()
    reason: str = ""  # an `Error`'s condition reason (RemoteNotFound for a resource that does not exist)

    @classmethod
    def from_status(cls, value: object) -> Binding | None:
        if not isinstance(value, Mapping) or not isinstance(value.get("resourceId"), str):
            return None
        state = value.get("state")
        seq, task = value.get("seq"), value.get("taskId")
        names = value.get("names")
        return cls(
            resource_id=str(value["resourceId"]),
            state=state if state in STATES else "Pending",
            seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
            task_id=task if isinstance(task, str) and task else None,
            bound_at=_text(value.get("boundAt")),
            message=str(value.get("message") or ""),
            checked_at=_text(value.get("checkedAt")),
            intent_at=_text(value.get("intentAt")),
            names=tuple(str(n) for n in names) if isinstance(names, list) else (),
            reason=str(value.get("reason") or ""),
        )

    def to_status(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"resourceId": self.resource_id, "state": self.state, "message": self.message}
        optional = {"seq": self.seq, "taskId": self.task_id, "boundAt": self.bound_at, "checkedAt": self.checked_at,
                    "intentAt": self.intent_at}  # fmt: skip
        entry.update({k: v for k, v in optional.items() if v is not None})
        if self.names:
            entry["names"] = list(self.names)
        if self.reason:
            entry["reason"] = self.reason
        return entry


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def wanted(bind_to: object) -> list[str]:
    """`spec.bindTo` as resource ids, each once, in the order given."""
    if not isinstance(bind_to, list):
        return []
    return list(dict.fromkeys(str(item) for item in bind_to if isinstance(item, str | int) and str(item)))


def entries(status_bindings: object, bind_to: Sequence[str]) -> dict[str, Binding]:
    """The recorded entry of every id in `bind_to` (a fresh `Pending` one when none). Ids no longer listed are
    dropped: removing an id from bindTo leaves its resource as it is."""
    known: dict[str, Binding] = {}
    for item in status_bindings if isinstance(status_bindings, list) else []:
        binding = Binding.from_status(item)
        if binding is not None:
            known[binding.resource_id] = binding
    return {rid: known.get(rid) or Binding(rid) for rid in bind_to}


# --- what a pass does per binding -----------------------------------------------------------------------


def need(binding: Binding, seq: int, cycle_start: dt.datetime, forced: bool, names: Sequence[str]) -> Need:
    """The one call a binding needs before anything else is decided: none, its task's status, a read, or (read
    this cycle, covered, not written yet: a pass that ran out of budget) straight the write."""
    same = binding.seq == seq
    if binding.state == "Applying" and same and binding.task_id:
        return "task"
    if binding.state == "Sending":
        return "read"
    checked = parse_time(binding.checked_at)
    due = forced or checked is None or checked < cycle_start
    if not same or due:
        return "read"
    if binding.state == "Bound":
        # Offline: a rotation in place that dropped a name the resource serves must be read again.
        return "read" if uncovered(names, binding.names) else "none"
    if binding.state == "NamesNotCovered":
        return "read" if binding.names and not uncovered(names, binding.names) else "none"
    if binding.state in ("Failed", "Error"):
        return "none"  # once per drift cycle, or when a person asks
    if binding.state == "Pending" and binding.checked_at is not None and not uncovered(names, binding.names):
        return "write"  # read this cycle: not read again (a budget of 20 a minute must not loop on reads)
    return "read"


Step = Literal["none", "write", "wait", "reread"]


def after_task(binding: Binding, task_state: str, message: str) -> tuple[Binding, Step]:
    """What a task's status means: completed asks for a fresh read (only a read says Bound); error is Failed."""
    if task_state == "completed":
        return replace(binding, message="task completed; reading the resource"), "reread"
    if task_state == "error":
        said = message or "the configuration task ended in error"
        return replace(binding, state="Failed", message=f"task {binding.task_id} failed: {said}"[:MAX_MESSAGE]), "none"
    return replace(binding, message=f"task {binding.task_id} is {task_state}"), "wait"


def after_read(
    binding: Binding,
    hosts: Sequence[str],
    certificate: int | None,
    seq: int,
    names: Sequence[str],
    now: dt.datetime,
) -> tuple[Binding, Step]:
    """A fresh read of the resource: its host names and the certificate it serves.

    Names not covered: nothing is written. The seq shown: Bound. An unanswered write still not showing: wait
    until `SETTLE_S` after its intent, then write again. Otherwise: write."""
    stamp = pki.rfc3339(now)
    read = replace(binding, checked_at=stamp, names=tuple(hosts))
    missing = uncovered(names, hosts)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        message = f"certificate seq {seq} does not cover {shown}: nothing written"
        return replace(read, state="NamesNotCovered", seq=seq, message=message[:MAX_MESSAGE]), "none"
    if certificate == seq:
        kept = binding.bound_at if binding.state == "Bound" and binding.seq == seq and binding.bound_at else stamp
        return replace(read, state="Bound", seq=seq, bound_at=kept, intent_at=None, message="bound"), "none"
    if binding.state == "Sending" and binding.seq == seq:
        sent = parse_time(binding.intent_at)
        if sent is not None and (now - sent).total_seconds() < SETTLE_S:
            message = "a change was sent and its answer not recorded: waiting for the resource to show it"
            return replace(read, message=message), "wait"
    serving = "no certificate" if certificate is None else f"certificate {certificate}"
    return replace(read, state="Pending", seq=seq, task_id=None, message=f"serves {serving}: binding"), "write"


def intent(binding: Binding, seq: int, now: dt.datetime) -> Binding:
    """The write-ahead record of a binding's write."""
    return replace(binding, state="Sending", seq=seq, task_id=None, intent_at=pki.rfc3339(now),
                   message=f"sending certificate seq {seq}")  # fmt: skip


def accepted(binding: Binding, task_id: str) -> Binding:
    return replace(binding, state="Applying", task_id=task_id, intent_at=None, message=f"task {task_id} accepted")


def refused(binding: Binding, seq: int, reason: str, message: str, now: dt.datetime) -> Binding:
    """The API refused a call for this resource (`reason`: the condition reason the error carries)."""
    return replace(binding, state="Error", seq=seq, intent_at=None, task_id=None, reason=reason,
                   checked_at=pki.rfc3339(now), message=message[:MAX_MESSAGE])  # fmt: skip


# --- what the resource says as a whole ------------------------------------------------------------------


def bound_count(bindings: Mapping[str, Binding], seq: int | None) -> int:
    return sum(1 for b in bindings.values() if b.state == "Bound" and b.seq == seq)


def column(bindings: Mapping[str, Binding], seq: int | None) -> str | None:
    """The printer column `Bound`: bound/total, or None (no column value) without bindings."""
    return f"{bound_count(bindings, seq)}/{len(bindings)}" if bindings else None


def all_bound(bindings: Mapping[str, Binding], seq: int | None) -> bool:
    return bound_count(bindings, seq) == len(bindings)


def overall(bindings: Mapping[str, Binding], seq: int) -> State | None:
    """The resource's state from its bindings: None when every one is bound to `seq` (the certificate's own
    state stands). A person's problem (names, a failed task, a refusal) stalls; work in flight reconciles."""
    for state, reason in (("NamesNotCovered", "NamesNotCovered"), ("Failed", "BindingFailed"), ("Error", "")):
        hit = [b for b in bindings.values() if b.state == state]
        if hit:
            first = hit[0]
            why = reason or first.reason or "RemoteRejected"
            return State("stalled", why, f"CDN resource {first.resource_id}: {first.message}" + _more(hit))
    if all_bound(bindings, seq):
        return None
    waiting = [b for b in bindings.values() if not (b.state == "Bound" and b.seq == seq)]
    done = len(bindings) - len(waiting)
    first = waiting[0]
    message = f"certificate seq {seq} bound to {done} of {len(bindings)} CDN resources; "
    return State("reconciling", "Pending", message + f"{first.resource_id}: {first.message or first.state}")


def _more(hit: Sequence[Binding]) -> str:
    return f" (and {len(hit) - 1} more)" if len(hit) > 1 else ""
