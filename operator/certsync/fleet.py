"""`certsync status`: a fleet's state from the resources' own status, without a remote call.

Pure: resource objects (as the API server returns them) in, rows out, then a table like kubectl's or a JSON/YAML
document whose keys are stable (scripts and CI gate on them). The CLI does the listing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from certsync.budget import EMQX_WRITE
from certsync.reconcile.cdn import drift_cycle_start
from certsync.reconcile.conditions import parse_time

KINDS = {
    "deploymenttlses": "DeploymentTLS",
    "cdncertificates": "CdnCertificate",
    "letsencryptorders": "LetsEncryptOrder",
}
ALIASES = {
    **{plural: plural for plural in KINDS},
    **{kind.lower(): plural for plural, kind in KINDS.items()},
    "dtls": "deploymenttlses",
    "cdncert": "cdncertificates",
    "leorder": "letsencryptorders",
}
SCHEMA_VERSION = 1  # the JSON document's shape: bumped only when a key changes meaning or goes away


@dataclass(frozen=True)
class Row:
    """One resource as `certsync status` shows it; every field is a string or a number, empty when unknown."""

    namespace: str
    kind: str
    name: str
    ready: str  # True, False or Unknown (no condition yet)
    reason: str
    message: str
    target: str
    remote: str  # the remote's id or state: seq, deployment TLS status, order task
    fingerprint: str
    expires: str
    last_write: str
    next_check: str
    writes_left: int | None  # EMQX writes left in the rate window; None where no local budget

    def to_json(self) -> dict[str, Any]:
        """camelCase keys, like the status fields they come from."""
        return {_camel(k): v for k, v in asdict(self).items()}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def kind_of(name: str) -> str | None:
    """The plural for a kind as a user types it (plural, kind, short name), any case."""
    return ALIASES.get(name.lower())


def row(plural: str, obj: Mapping[str, Any], now: dt.datetime, drift_interval: float) -> Row:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    ready: Mapping[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    target = str(status.get("target") or "")
    return Row(
        namespace=str(meta.get("namespace", "")),
        kind=KINDS[plural],
        name=str(meta.get("name", "")),
        ready=str(ready.get("status", "Unknown")),
        reason=str(ready.get("reason", "")),
        message=str(ready.get("message", "")),
        target=target.replace("|", " ") or _spec_target(plural, spec),
        remote=_remote(plural, status),
        fingerprint=str(status.get("fingerprint") or ""),
        expires=str(status.get("notAfter") or status.get("expire") or ""),
        last_write=str(status.get("lastWriteTime") or status.get("orderedAt") or ""),
        next_check=_next_check(plural, status, target, drift_interval),
        writes_left=_writes_left(status, now) if plural == "deploymenttlses" else None,
    )


def rows(objects: Iterable[tuple[str, Mapping[str, Any]]], now: dt.datetime, drift_interval: float) -> list[Row]:
    built = [row(plural, obj, now, drift_interval) for plural, obj in objects]
    return sorted(built, key=lambda r: (r.namespace, r.kind, r.name))


def _spec_target(plural: str, spec: Mapping[str, Any]) -> str:
    """Before the first write: what the spec names."""
    if plural == "deploymenttlses":
        return str(spec.get("deploymentId", ""))
    if plural == "cdncertificates":
        return str(spec.get("account", ""))
    return str(spec.get("resourceId") or ",".join(spec.get("domains") or []))


def _remote(plural: str, status: Mapping[str, Any]) -> str:
    if plural == "deploymenttlses":
        return str(status.get("remoteStatus") or "")
    seq = status.get("seq") if plural == "cdncertificates" else status.get("certificateSeq")
    if plural == "letsencryptorders" and status.get("taskStatus"):
        return f"{status['taskStatus']}" + (f" seq {seq}" if seq else "")
    return f"seq {seq}" if seq else ""


def _next_check(plural: str, status: Mapping[str, Any], target: str, interval: float) -> str:
    """When the operator reads the remote again to find drift: a DeploymentTLS a drift interval after its last
    sync, a CdnCertificate at the start of its account's next cycle (shared by the account's certificates)."""
    last = parse_time(status.get("lastSyncTime"))
    if last is None or plural == "letsencryptorders":
        return ""
    if plural == "cdncertificates":
        due = drift_cycle_start(target, last, interval) + dt.timedelta(seconds=max(1, round(interval)))
    else:
        due = last + dt.timedelta(seconds=interval)
    return due.strftime("%Y-%m-%dT%H:%M:%SZ")


def _writes_left(status: Mapping[str, Any], now: dt.datetime) -> int:
    """EMQX's 6 writes an hour per deployment, less those the resource recorded inside the window."""
    cutoff = now.timestamp() - EMQX_WRITE.period
    sent = [t for t in status.get("writeTimes") or [] if isinstance(t, int | float) and t > cutoff]
    return max(0, EMQX_WRITE.limit - len(sent))


def all_ready(found: Sequence[Row]) -> bool:
    return all(r.ready == "True" for r in found)


def document(found: Sequence[Row]) -> dict[str, Any]:
    """The JSON/YAML form: stable keys, one item per resource, and the fleet's verdict."""
    return {
        "schemaVersion": SCHEMA_VERSION,
        "ready": all_ready(found),
        "notReady": sum(1 for r in found if r.ready != "True"),
        "items": [r.to_json() for r in found],
    }


COLUMNS = (
    ("NAMESPACE", "namespace"),
    ("NAME", "name"),
    ("READY", "ready"),
    ("REASON", "reason"),
    ("TARGET", "target"),
    ("REMOTE", "remote"),
    ("EXPIRES", "expires"),
    ("LAST WRITE", "last_write"),
    ("NEXT CHECK", "next_check"),
    ("WRITES LEFT", "writes_left"),
)
MAX_CELL = 48  # a long target or reason is cut, as kubectl does not wrap


def table(found: Sequence[Row], *, with_namespace: bool) -> str:
    """Columns as kubectl prints them: upper-case headers, left-aligned, three spaces apart, `<none>` for empty."""
    columns = [c for c in COLUMNS if with_namespace or c[1] != "namespace"]
    cells = [[header for header, _ in columns]]
    for r in found:
        values = asdict(r)
        cells.append([_cell(values[key], key, r) for _, key in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("   ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in cells)


def _cell(value: object, key: str, r: Row) -> str:
    if key == "name":
        value = f"{r.kind.lower()}/{r.name}"
    text = "" if value is None else str(value)
    text = text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"
    return text or "<none>"
