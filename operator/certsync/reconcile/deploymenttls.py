"""Decisions for a DeploymentTLS: what was applied (status) against what is wanted and what the remote says.

The remote gives no fingerprint, so "in sync" rests on what status records as
applied (digest and target). `expire` is an observation: the value the remote
reported after our write; a later change of it is drift. It is never compared
with the leaf's notAfter to decide a write (its time zone is undocumented).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from certsync import pki
from certsync.reconcile.conditions import State, parse_time, poll_delay
from certsync.reconcile.record import Intent

KNOWN_STATUSES = ("pending", "running", "failed", "terminated")
UNKNOWN_STATUS_POLLS = 3  # an unknown remote status is polled this often, then reported
SETTLE_S = 300.0  # a newer certificate waits this long at most for a pending write to settle
TZ_SLACK_S = 14 * 3600 + 1  # the widest time-zone offset `expire` may carry


@dataclass(frozen=True)
class Desired:
    target: str  # normalised endpoint + "|" + deployment id
    digest: str  # chain, key, tlsType and client CA
    tls_type: str
    leaf_cn: str
    leaf_not_after: dt.datetime


@dataclass(frozen=True)
class Record:
    """What status says was applied and observed."""

    target: str | None = None
    applied_digest: str | None = None
    remote_status: str | None = None
    observed_expire: str | None = None  # as the remote reported it after our write (RFC 3339)
    last_write: dt.datetime | None = None
    last_read: dt.datetime | None = None
    last_sync: dt.datetime | None = None
    poll_attempt: int = 0
    intent: Intent | None = None

    @classmethod
    def from_status(cls, status: dict[str, object]) -> Record:
        attempt = status.get("pollAttempt")
        return cls(
            target=_str(status.get("target")),
            applied_digest=_str(status.get("appliedDigest")),
            remote_status=_str(status.get("remoteStatus")),
            observed_expire=_str(status.get("observedExpire")),
            last_write=parse_time(status.get("lastWriteTime")),
            last_read=parse_time(status.get("lastReadTime")),
            last_sync=parse_time(status.get("lastSyncTime")),
            poll_attempt=attempt if isinstance(attempt, int) else 0,
            intent=Intent.from_status(status.get("intent")),
        )


@dataclass(frozen=True)
class Remote:
    """The remote's answer to GET; `absent` when the deployment has no TLS configured."""

    absent: bool
    tls_type: str = ""
    status: str = ""
    expire: dt.datetime | None = None
    cn: str = ""
    message: str = ""


@dataclass(frozen=True)
class Observed:
    desired: Desired
    record: Record
    remote: Remote | None  # None: not read in this pass
    now: dt.datetime
    drift_interval: float
    forced: bool = False


Action = Literal["read", "create", "update", "wait", "adopt", "done"]


@dataclass(frozen=True)
class Plan:
    action: Action
    state: State
    requeue_after: float | None = None


def in_sync(o: Observed) -> bool:
    return o.record.applied_digest == o.desired.digest and o.record.target == o.desired.target


def matches_leaf(remote: Remote, tls_type: str, cn: str, not_after: dt.datetime) -> bool:
    """Whether the remote plausibly holds this leaf: same tlsType and CN, expiry equal up to a time-zone offset."""
    if remote.absent or remote.expire is None or remote.tls_type != tls_type:
        return False
    if remote.cn and cn and remote.cn != cn:
        return False
    offset = abs((remote.expire - not_after).total_seconds())
    return offset <= TZ_SLACK_S and min(offset % 900, 900 - offset % 900) <= 1


def intent_landed(intent: Intent, remote: Remote) -> bool:
    """Resolve a write whose outcome was never recorded, from a fresh GET."""
    not_after = parse_time(intent.facts.get("notAfter"))
    if not_after is None:
        return False
    return matches_leaf(remote, str(intent.facts.get("tlsType", "")), str(intent.facts.get("cn", "")), not_after)


def _wait(o: Observed, why: str) -> Plan:
    return Plan("wait", State("reconciling", "Pending", why), requeue_after=poll_delay(o.record.poll_attempt))


def plan(o: Observed) -> Plan:
    """The next step for a DeploymentTLS whose inputs are valid and whose target this resource owns."""
    rec, want = o.record, o.desired
    if o.remote is None:
        return _plan_without_read(o)
    remote = o.remote
    if remote.status == "terminated":
        return _wait(o, "the remote is deleting the deployment's TLS ('terminated'); waiting before creating")
    if remote.absent:
        return Plan("create", State("reconciling", "Pending", "the deployment has no custom TLS: creating it"))
    if rec.target != want.target:
        if matches_leaf(remote, want.tls_type, want.leaf_cn, want.leaf_not_after):
            return Plan("adopt", State("ready", "Synced", "the remote already holds this certificate"))
        return Plan("update", State("reconciling", "Pending", "the remote holds another certificate: updating it"))
    if rec.applied_digest != want.digest:
        if remote.status == "pending" and rec.last_write and (o.now - rec.last_write).total_seconds() < SETTLE_S:
            return _wait(o, "a newer certificate waits until the previous write is applied")
        return Plan("update", State("reconciling", "Pending", "the certificate changed: updating the remote TLS"))
    if remote.status == "failed":
        message = f": {remote.message}" if remote.message else ""
        return Plan("done", State("stalled", "RemoteFailed", f"the remote could not apply the certificate{message}"))
    if remote.tls_type != want.tls_type:
        return Plan("update", State("reconciling", "Pending", "the remote tlsType differs: updating it"))
    observed = parse_time(rec.observed_expire)
    if observed is not None and remote.expire is not None and remote.expire != observed:
        return Plan("update", State("reconciling", "Pending", "the remote certificate changed (drift): restoring it"))
    if remote.status == "pending":
        return _wait(o, "remote TLS is 'pending'; waiting for 'running'")
    if remote.status != "running":
        if rec.poll_attempt >= UNKNOWN_STATUS_POLLS:
            return Plan(
                "done", State("stalled", "RemoteRejected", f"the remote reports unknown status {remote.status!r}")
            )
        return _wait(o, f"remote TLS is {remote.status!r}; waiting for 'running'")
    return Plan("done", State("ready", "Synced", "certificate in sync"), requeue_after=o.drift_interval)


def _plan_without_read(o: Observed) -> Plan:
    rec = o.record
    if rec.intent is not None:
        return Plan("read", State("reconciling", "Pending", "reading the remote to settle an unfinished write"))
    if in_sync(o) and rec.remote_status == "running" and not o.forced and rec.last_sync is not None:
        since = (o.now - rec.last_sync).total_seconds()
        if since < o.drift_interval:
            return Plan("done", State("ready", "Synced", "certificate in sync"), requeue_after=o.drift_interval - since)
    if rec.remote_status in ("pending", "terminated") and rec.target == o.desired.target and not o.forced:
        last = max((t for t in (rec.last_read, rec.last_write) if t is not None), default=None)
        if last is not None:
            due = poll_delay(rec.poll_attempt) - (o.now - last).total_seconds()
            if due > 0:
                return Plan("wait", State("reconciling", "Pending", f"remote TLS is {rec.remote_status!r}"), due)
    return Plan("read", State("reconciling", "Pending", "reading the remote TLS"))


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


# --- deployment checks: what `GET /deployments/{id}` said, before a write is spent ---------------------------

CHECK_TTL_S = 86400.0  # a deployment's type and status are read again before a write a day after the last read
NOT_RUNNING_RECHECK_S = {"starting": 120.0, "stopped": 600.0}  # a deployment that is not running, looked at again
NOT_FOUND_RECHECK_S = 600.0  # a 404 may be a deployment just created or a key not yet granted: looked at again
UNSUPPORTED_TYPES = ("serverless",)  # EMQX Cloud's TLS API serves Dedicated (and Dedicated Flex) deployments
NOT_RUNNING = tuple(NOT_RUNNING_RECHECK_S)


@dataclass(frozen=True)
class DeploymentCheck:
    """One answer of `GET /deployments/{id}` for one credentials owner: type and status in lower case, or
    `found=False` for a 404 (which, from credentials not proven for the deployment, says only that these
    credentials do not see it)."""

    checked_at: dt.datetime
    deployment_type: str = ""
    status: str = ""
    found: bool = True

    @property
    def blocks(self) -> bool:
        """It found no deployment that takes TLS writes: missing, Serverless, or not running."""
        return not self.found or self.deployment_type in UNSUPPORTED_TYPES or self.status in NOT_RUNNING

    def to_status(self, owner: str) -> dict[str, object]:
        if not self.found:
            return {"checkedAt": pki.rfc3339(self.checked_at), "owner": owner, "status": "absent"}
        return {"checkedAt": pki.rfc3339(self.checked_at), "owner": owner,
                "deploymentType": self.deployment_type, "status": self.status}  # fmt: skip

    @classmethod
    def from_status(cls, value: object, owner: str) -> DeploymentCheck | None:
        """The check a resource's status recorded, only for these credentials (`owner`, an opaque digest)."""
        if not isinstance(value, dict) or value.get("owner") != owner:
            return None
        at = parse_time(value.get("checkedAt"))
        if at is None:
            return None
        status = str(value.get("status") or "")
        if status == "absent":
            return cls(at, found=False)
        return cls(at, str(value.get("deploymentType") or ""), status)


DeploymentAction = Literal["check", "write", "stop"]


@dataclass(frozen=True)
class DeploymentVerdict:
    action: DeploymentAction  # check: read it now; write: it takes TLS; stop: no write (state says why)
    state: State | None = None
    requeue_after: float | None = None


def deployment_verdict(check: DeploymentCheck | None, now: dt.datetime, deployment: str) -> DeploymentVerdict:
    """Whether a write to `deployment` may go on, from the last check of these credentials (None: never checked).

    Only documented words stop a write: Serverless, `starting`, `stopped`, not found. Another type or status goes
    on, and the write's own answer decides (a word EMQX adds later must not block every write)."""
    if check is None:
        return DeploymentVerdict("check")
    age = (now - check.checked_at).total_seconds()
    if age < 0 or age >= CHECK_TTL_S:
        return DeploymentVerdict("check")
    left = CHECK_TTL_S - age
    if not check.found:
        if age >= NOT_FOUND_RECHECK_S:
            return DeploymentVerdict("check")
        why = (
            f"deployment {deployment!r} not found (GET /deployments/{deployment}: 404): check spec.deploymentId "
            "(EMQX also answers 404 for a deployment the API key may not see); no write was sent (looked at again "
            f"every {NOT_FOUND_RECHECK_S / 60:.0f} minutes)"
        )
        return DeploymentVerdict("stop", State("stalled", "RemoteNotFound", why), NOT_FOUND_RECHECK_S - age)
    if check.deployment_type in UNSUPPORTED_TYPES:
        why = (
            f"deployment {deployment!r} is a Serverless deployment: EMQX Cloud's TLS API serves Dedicated "
            "deployments only (Serverless ones offer TLS on their own domain); no write was sent"
        )
        return DeploymentVerdict("stop", State("stalled", "UnsupportedDeploymentType", why), left)
    if check.status in NOT_RUNNING:
        recheck = NOT_RUNNING_RECHECK_S[check.status]
        if age >= recheck:
            return DeploymentVerdict("check")
        why = (
            f"deployment {deployment!r} is {check.status}, not running: the certificate is written once it runs "
            f"(looked at again every {recheck / 60:.0f} minutes)"
        )
        return DeploymentVerdict("stop", State("reconciling", "DeploymentNotRunning", why), recheck - age)
    return DeploymentVerdict("write")
