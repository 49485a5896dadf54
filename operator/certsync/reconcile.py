"""Pure reconcile decisions: observed state in, what to do out. No kopf, no HTTP, no clock reads.

Each decision is an ordered chain of small checks (as cert-manager's policies
are): the first that has something to say decides. The handlers layer
gathers the observed state, calls these functions, performs the actions and
patches status.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from certsync import pki

TLS_SECRET_TYPE = "kubernetes.io/tls"
POLL_FIRST_S = 5.0
POLL_MAX_S = 300.0

# --- conditions (kstatus) ----------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """What the resource's conditions should say: one of ready, reconciling (in progress), stalled (needs a person)."""

    kind: Literal["ready", "reconciling", "stalled", "suspended"]
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
    return result


def poll_delay(attempt: int) -> float:
    """5 s, doubling, capped at 5 min."""
    return float(min(POLL_MAX_S, POLL_FIRST_S * 2 ** max(0, attempt)))


# --- the referenced Secret ------------------------------------------------------------------


@dataclass(frozen=True)
class SecretView:
    """What the handlers read of a Secret; values already base64-decoded."""

    type: str
    data: Mapping[str, bytes]


@dataclass(frozen=True)
class Problem:
    """Why nothing can be sent; stalled problems wait for the input to change."""

    reason: str
    message: str
    stalled: bool = True

    def state(self) -> State:
        return State("stalled" if self.stalled else "reconciling", self.reason, self.message)


@dataclass(frozen=True)
class TLSMaterial:
    cert_pem: str = field(repr=False)
    key_pem: str = field(repr=False)
    bundle: pki.TLSBundle = field(repr=False)

    @property
    def fingerprint(self) -> str:
        return self.bundle.leaf.sha256


def check_tls_secret(name: str, secret: SecretView | None, now: dt.datetime) -> TLSMaterial | Problem:
    if secret is None:
        return Problem("SecretNotFound", f"Secret {name!r} not found in the resource's namespace")
    if secret.type != TLS_SECRET_TYPE:
        return Problem("InvalidSecret", f"Secret {name!r} has type {secret.type!r}; {TLS_SECRET_TYPE!r} is required")
    for key in ("tls.crt", "tls.key"):
        if not secret.data.get(key):
            return Problem("InvalidSecret", f"Secret {name!r} has no {key!r}")
    try:
        bundle = pki.validate_tls(secret.data["tls.crt"], secret.data["tls.key"], now)
    except pki.CertificateProblem as problem:
        return Problem(problem.reason, f"Secret {name!r}: {problem.message}")
    return TLSMaterial(secret.data["tls.crt"].decode(), secret.data["tls.key"].decode(), bundle)


def check_ca_secret(name: str, key: str, secret: SecretView | None) -> str | Problem:
    if secret is None:
        return Problem("SecretNotFound", f"client CA Secret {name!r} not found in the resource's namespace")
    data = secret.data.get(key)
    if not data:
        return Problem("InvalidSecret", f"client CA Secret {name!r} has no {key!r}")
    try:
        pki.parse_ca_bundle(data, f"client CA {name}/{key}")
    except pki.CertificateProblem as problem:
        return Problem(problem.reason, problem.message)
    return data.decode()


def credentials(name: str, secret: SecretView | None, keys: Sequence[Sequence[str]]) -> dict[str, str] | Problem:
    """The first complete set of `keys` found in the credentials Secret (values are never echoed)."""
    if secret is None:
        return Problem("SecretNotFound", f"credentials Secret {name!r} not found in the resource's namespace")
    for option in keys:
        if all(secret.data.get(k) for k in option):
            return {k: secret.data[k].decode().strip() for k in option}
    wanted = " or ".join("+".join(option) for option in keys)
    return Problem("InvalidSecret", f"credentials Secret {name!r} must hold {wanted}")


# --- DeploymentTLS --------------------------------------------------------------------------


@dataclass(frozen=True)
class EmqxRemote:
    """The remote's answer to GET; `absent` when the deployment has no TLS configured."""

    absent: bool
    tls_type: str = ""
    status: str = ""
    expire: dt.datetime | None = None


@dataclass(frozen=True)
class EmqxObserved:
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    generation: int
    desired_fingerprint: str
    desired_expire: dt.datetime
    has_cacert: bool
    remote: EmqxRemote | None  # None: not read in this pass
    now: dt.datetime
    drift_interval: float
    forced: bool = False


@dataclass(frozen=True)
class Plan:
    action: Literal["read", "create", "update", "wait", "done"]
    state: State
    requeue_after: float | None = None


def seconds_since(status: Mapping[str, Any], key: str, now: dt.datetime) -> float | None:
    value = status.get(key)
    if not isinstance(value, str):
        return None
    try:
        then = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (now - then).total_seconds()


def synced_within(status: Mapping[str, Any], now: dt.datetime, interval: float) -> bool:
    """Whether the last successful sync is recent enough that no drift check is due."""
    since = seconds_since(status, "lastSyncTime", now)
    return since is not None and since < interval


def plan_deployment_tls(o: EmqxObserved) -> Plan:
    """Decide the next step for a DeploymentTLS whose inputs are valid."""
    tls_type = str(o.spec.get("tlsType", "one-way"))
    recorded = o.status.get("fingerprint") == o.desired_fingerprint and o.status.get("tlsType") == tls_type
    if o.remote is None:
        fresh = synced_within(o.status, o.now, o.drift_interval)
        if recorded and o.status.get("remoteStatus") == "running" and fresh and not o.forced:
            due = o.drift_interval - (seconds_since(o.status, "lastSyncTime", o.now) or 0.0)
            return Plan("done", State("ready", "Synced", "certificate in sync"), requeue_after=due)
        return Plan("read", State("reconciling", "Pending", "reading the remote TLS"))
    remote = o.remote
    if remote.absent:
        return Plan("create", State("reconciling", "Pending", "deployment has no custom TLS: creating it"))
    expire_differs = remote.expire is not None and abs((remote.expire - o.desired_expire).total_seconds()) > 1
    if remote.tls_type != tls_type or not recorded or expire_differs:
        why = "tlsType differs" if remote.tls_type != tls_type else "certificate differs"
        return Plan("update", State("reconciling", "Pending", f"{why}: updating the remote TLS"))
    if remote.status != "running":
        attempt = int(o.status.get("pollAttempt", 0))
        return Plan(
            "wait",
            State("reconciling", "Pending", f"remote TLS is {remote.status!r}; waiting for running"),
            requeue_after=poll_delay(attempt),
        )
    return Plan("done", State("ready", "Synced", "certificate in sync"), requeue_after=o.drift_interval)


# --- CdnCertificate -------------------------------------------------------------------------


@dataclass(frozen=True)
class CdnRemote:
    """The remote certificate as far as the decision needs it."""

    seq: int
    leaf_fingerprint: str | None  # SHA-1 colon hex, from chain_info


@dataclass(frozen=True)
class CdnObserved:
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    desired_sha1: str
    by_seq: CdnRemote | None  # the certificate named by status.seq or spec.seq, if it exists
    by_fingerprint: CdnRemote | None  # a certificate with the desired fingerprint, if any
    listed: bool  # whether the remote was read in this pass


@dataclass(frozen=True)
class CdnPlan:
    action: Literal["read", "adopt", "add", "patch", "done"]
    seq: int | None
    state: State


def plan_cdn_certificate(o: CdnObserved) -> CdnPlan:
    """Adopt before adding (never a duplicate), patch when the fingerprint differs, else nothing."""
    seq = o.status.get("seq") or o.spec.get("seq")
    if not o.listed:
        if o.status.get("fingerprint") == o.desired_sha1 and o.status.get("seq"):
            return CdnPlan("done", int(o.status["seq"]), State("ready", "Synced", "certificate in sync"))
        return CdnPlan("read", None, State("reconciling", "Pending", "reading the remote certificates"))
    if o.by_seq is not None:
        if o.by_seq.leaf_fingerprint == o.desired_sha1:
            return CdnPlan("done", o.by_seq.seq, State("ready", "Synced", "certificate in sync"))
        return CdnPlan("patch", o.by_seq.seq, State("reconciling", "Pending", "certificate differs: patching"))
    if seq and o.spec.get("seq") and not o.status.get("seq"):
        return CdnPlan("done", None, State("stalled", "RemoteNotFound", f"certificate seq {seq} does not exist"))
    if o.by_fingerprint is not None:
        return CdnPlan("adopt", o.by_fingerprint.seq, State("ready", "Synced", "adopted the existing certificate"))
    return CdnPlan("add", None, State("reconciling", "Pending", "adding the certificate"))


# --- LetsEncryptOrder -----------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedCertificate:
    seq: int
    not_after: int
    names: tuple[str, ...]


@dataclass(frozen=True)
class OrderObserved:
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    task_status: str | None  # resource orders: the remote's task_status, when read
    issued: Sequence[IssuedCertificate]  # certificates in the list that cover the ordered names


@dataclass(frozen=True)
class OrderPlan:
    action: Literal["order", "poll", "find", "done"]
    state: State
    certificate: IssuedCertificate | None = None


def plan_order(o: OrderObserved, wanted_names: Sequence[str]) -> OrderPlan:
    """Order once, poll while accepted, then report the issued certificate; never re-post a running order."""
    ordered = bool(o.status.get("orderedAt"))
    newest = max(o.issued, key=lambda c: c.not_after, default=None)
    before = int(o.status.get("notAfterBefore", 0) or 0)
    if o.spec.get("resourceId"):
        if o.task_status == "failed":
            return OrderPlan("done", State("stalled", "OrderFailed", "Let's Encrypt order failed"))
        if o.task_status == "accepted":
            return OrderPlan("poll", State("reconciling", "Pending", "order accepted; waiting for issuance"))
        if o.task_status == "processed":
            if newest is None:
                return OrderPlan(
                    "find", State("reconciling", "Pending", "order processed; looking for the certificate")
                )
            return OrderPlan("done", State("ready", "Synced", "certificate issued"), newest)
        if not ordered:
            return OrderPlan("order", State("reconciling", "Pending", "ordering a certificate"))
        return OrderPlan("poll", State("reconciling", "Pending", "waiting for the order to show"))
    if newest is not None and newest.not_after > before and ordered:
        return OrderPlan("done", State("ready", "Synced", "wildcard certificate issued"), newest)
    if not ordered:
        return OrderPlan(
            "order", State("reconciling", "Pending", f"ordering a certificate for {', '.join(wanted_names)}")
        )
    return OrderPlan("poll", State("reconciling", "Pending", "waiting for the wildcard certificate to appear"))
