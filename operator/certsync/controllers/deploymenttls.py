"""DeploymentTLS: observe (Secrets, status, GET), plan (`reconcile.deploymenttls`), apply (POST/PUT), record."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import Mapping
from typing import Any

from certsync import accounts, pki
from certsync.controllers.base import (
    KINDS,
    MAX_TEXT,
    Resource,
    Runtime,
    conflict,
    endpoint_of,
    event,
    finish,
    guarded_write,
    precheck,
    prove,
    record,
    settled,
    stop_for,
    tracked,
    unproven_with_rivals,
)
from certsync.emqx import DeploymentNotFound, DeploymentTLSInfo, EmqxAccess, TLSNotConfigured
from certsync.kube import KubeError
from certsync.reconcile import (
    EMQX_CREDENTIALS,
    TLS_KEYS,
    SecretView,
    State,
    TLSMaterial,
    check_ca_secret,
    check_tls_secret,
    credentials,
    credentials_id,
    deadlines,
    keys_of,
)
from certsync.reconcile import deploymenttls as rd
from certsync.reconcile.conditions import POLL_FIRST_S, parse_time
from certsync.reconcile.record import new_intent
from certsync.reconcile.targets import target_key
from certsync.settings import parse_duration

MIN_DRIFT_S = 60.0  # the CRD refuses less; an older object or a direct write cannot make a read loop


def target_of(spec: dict[str, Any] | Any) -> str:
    return target_key(endpoint_of(spec), str(spec.get("deploymentId", "")))


def emqx_access(r: Resource, creds: dict[str, str], secret: SecretView | None) -> EmqxAccess:
    """The deployment's access, named by whose credentials it carries (the namespace, or the ClusterRemoteAccount,
    and the Secret's version)."""
    owner = accounts.credentials_location(r.namespace, r.spec)[2]
    return EmqxAccess(r.endpoint, creds["apiKey"], creds["apiSecret"], owner, credentials_id(secret))


async def sync(rt: Runtime, r: Resource) -> float | None:
    """One pass; the deployment is this resource's only when its credentials got an answer for it (`_read`)."""
    return await tracked(rt, r, lambda: _sync(rt, r))


async def _sync(rt: Runtime, r: Resource) -> float | None:
    now = rt.clock()
    spec = r.spec
    blocked = precheck(rt, r)
    if blocked:
        return await finish(rt, r, blocked, {}, None)
    target = target_of(spec)
    clash = conflict(rt, r, target, f"deployment {spec['deploymentId']!r}")
    if clash:
        return await stop_for(rt, r, clash)
    name = str(spec["secretName"])
    # Off the event loop: loading a key checks it (tens of ms for RSA-2048, more for larger), and the loop must
    # keep renewing the Lease meanwhile.
    secret = await rt.kube.read_secret(r.namespace, name, TLS_KEYS)
    material = await asyncio.to_thread(check_tls_secret, name, secret, now)
    if not isinstance(material, TLSMaterial):
        return await finish(rt, r, material.state(), {}, None)
    too_short: pki.ValidityTooShort | None = None
    try:  # what EMQX itself refuses (key types, issuer's algorithm, 60 days left) costs no call
        pki.check_destination(material.bundle, "emqx", now)
    except pki.ValidityTooShort as problem:
        # A certificate already applied may run into its last 60 days: it stays; only a new one is refused.
        if r.status.get("fingerprint") != material.fingerprint:
            too_short = problem
    except pki.CertificateProblem as problem:
        return await finish(rt, r, State("stalled", problem.reason, f"Secret {name!r}: {problem.message}"), {}, None)
    extra = await _push_deadline(rt, r, secret, material, now)  # recorded with the pass's next status patch
    if too_short is not None:
        return await finish(rt, r, State("stalled", too_short.reason, f"Secret {name!r}: {too_short.message}"),
                            extra, None)  # fmt: skip
    tls_type = str(spec.get("tlsType", "one-way"))
    cacert: str | None = None
    ca_digest = ""
    if tls_type == "two-way":
        ref = spec.get("clientCA") or {}
        if not ref:
            return await finish(rt, r, State("stalled", "InvalidSpec", "two-way TLS needs spec.clientCA"), extra, None)
        ca_key = str(ref.get("key", "ca.crt"))
        ca_secret = await rt.kube.read_secret(r.namespace, ref["secretName"], [ca_key])
        ca = check_ca_secret(ref["secretName"], ca_key, ca_secret)
        if not isinstance(ca, tuple):
            return await finish(rt, r, ca.state(), extra, None)
        cacert, ca_digest = ca
    creds_ns, creds_name, _ = accounts.credentials_location(r.namespace, spec)
    creds_secret = await rt.kube.read_secret(creds_ns, creds_name, keys_of(EMQX_CREDENTIALS)) if creds_ns else None
    creds = credentials(creds_name, creds_secret, EMQX_CREDENTIALS)
    if not isinstance(creds, dict):
        return await finish(rt, r, creds.state(), extra, None)
    access = emqx_access(r, creds, creds_secret)
    deployment = str(spec["deploymentId"])
    scope, window = rt.emqx.scope(access, deployment, "PUT")
    # Held until these credentials are proven for the deployment: another tenant's invented times block nothing.
    rt.emqx.restore_write_times(access, deployment, r.status.get("writeTimes", []))
    drift = (
        max(MIN_DRIFT_S, parse_duration(str(spec["driftCheckInterval"]))) if spec.get("driftCheckInterval") else None
    )
    leaf = material.bundle.leaf
    desired = rd.Desired(
        target=target, digest=pki.material_digest(material.bundle, tls_type, ca_digest), tls_type=tls_type,
        leaf_cn=leaf.subject_cn, leaf_not_after=leaf.not_after,
    )  # fmt: skip

    def observed(remote: rd.Remote | None) -> rd.Observed:
        return rd.Observed(desired, rd.Record.from_status(r.status), remote, rt.clock(),
                           drift or rt.settings.drift_interval, r.forced)  # fmt: skip

    plan = rd.plan(observed(None))
    if plan.action != "read" and not (plan.state.kind == "ready" and unproven_with_rivals(rt, r, target)):
        updates = {"pollAttempt": r.status.get("pollAttempt", 0)} if plan.action == "wait" else {}
        return await finish(rt, r, plan.state, {**extra, **updates}, plan.requeue_after)

    gate = DeploymentGate(rt, r, access, deployment, target)
    last = gate.known()
    before = observed(None)
    if last is not None and last.blocks and not rd.in_sync(before) and before.record.intent is None:
        # The last check, before a write, found no deployment that takes TLS: nothing is read or written until a
        # check says otherwise (when its time is up, the deployment is read again first, before its TLS).
        stop = await gate.stop_or_check({**extra})
        if stop is not None:
            return stop[0]
        extra = {**extra, **gate.updates}

    remote = await _read(rt, access, deployment)
    if not remote.absent:  # a 404 is no proof: EMQX says the same of a deployment another account's key cannot see
        prove(rt, r, target)
    rt.last_credentials[r.key] = access
    reading = {"lastReadTime": pki.rfc3339(rt.clock()), **_remote_fields(remote)}
    pending = rd.Record.from_status(r.status).intent
    if pending is not None:
        landed = rd.intent_landed(pending, remote)
        settled: dict[str, Any] = {"intent": None}
        if landed:
            settled.update(appliedDigest=pending.digest, target=pending.target, fingerprint=pending.facts.get("leaf"),
                           observedExpire=reading.get("expire"))  # fmt: skip
        await record(rt, r, {**reading, **settled})
        if landed:
            await event(rt, r, "Normal", "Recovered", f"the unfinished {pending.op} had reached the remote")

    plan = rd.plan(observed(remote))
    if plan.action == "adopt":
        await record(rt, r, {"appliedDigest": desired.digest, "target": target, "fingerprint": material.fingerprint,
                             "observedExpire": reading.get("expire")})  # fmt: skip
        await event(rt, r, "Normal", "Adopted", "the remote already held this certificate: no write")
        plan = rd.plan(observed(remote))
    if plan.action in ("create", "update"):
        # One read of the deployment before the first write to it (and a day after the last one): a Serverless,
        # stopped or missing deployment costs no write.
        stop = await gate.stop_or_check({**extra, **reading})
        if stop is not None:
            return stop[0]
        extra = {**extra, **gate.updates}
        return await _write(rt, r, plan.action, access, deployment, desired, material, cacert, scope, window, extra)
    attempt = int(r.status.get("pollAttempt", 0))
    updates = {**extra, **reading, "pollAttempt": attempt + 1 if plan.action == "wait" else 0}
    if plan.state.kind == "ready":
        updates["lastSyncTime"] = pki.rfc3339(now)
        if r.status.get("observedExpire") is None:
            updates["observedExpire"] = reading.get("expire")
    return await finish(rt, r, plan.state, updates, plan.requeue_after)


async def _read(rt: Runtime, access: EmqxAccess, deployment: str) -> rd.Remote:
    try:
        info = await rt.emqx.get_tls(access, deployment)
    except TLSNotConfigured:
        return rd.Remote(True)
    return rd.Remote(False, info.tls_type, info.phase if info.phase != "unknown" else info.status, info.expire,
                     info.cn, info.message)  # fmt: skip


def _remote_fields(remote: rd.Remote) -> dict[str, Any]:
    fields: dict[str, Any] = {"remoteStatus": "absent" if remote.absent else remote.status}
    if not remote.absent:
        fields["tlsType"] = remote.tls_type or None
        fields["expire"] = pki.rfc3339(remote.expire) if remote.expire else None
        fields["cn"] = remote.cn or None
    return fields


async def _write(
    rt: Runtime, r: Resource, action: str, access: EmqxAccess, deployment: str, desired: rd.Desired,
    material: TLSMaterial, cacert: str | None, scope: Any, window: Any, extra: Mapping[str, Any],
) -> float | None:  # fmt: skip
    now = rt.clock()
    write = rt.emqx.create_tls if action == "create" else rt.emqx.update_tls
    intent = new_intent(action, desired.target, desired.digest, now, cn=desired.leaf_cn,
                        notAfter=pki.rfc3339(desired.leaf_not_after), tlsType=desired.tls_type,
                        leaf=material.fingerprint)  # fmt: skip
    rotated = bool(r.status.get("appliedDigest")) and r.status.get("target") == desired.target

    def outcome(info: DeploymentTLSInfo) -> dict[str, Any]:
        expire = pki.rfc3339(info.expire) if info.expire else None
        return {
            "appliedDigest": desired.digest, "target": desired.target, "fingerprint": material.fingerprint,
            "remoteStatus": info.status, "tlsType": info.tls_type, "expire": expire, "observedExpire": expire,
            "lastWriteTime": pki.rfc3339(now), "lastReadTime": pki.rfc3339(now), "pollAttempt": 0,
            "writeTimes": rt.budget.export(scope, window)["sent"], **extra, **settled(rt, r, after(info)),
        }  # fmt: skip

    def after(info: DeploymentTLSInfo) -> State:
        return State("reconciling", "Pending", f"remote TLS is {info.status!r} after {action}")

    try:
        info = await guarded_write(rt, r, intent, lambda: write(access, deployment, desired.tls_type,
                                                                 material.cert_pem, material.key_pem, cacert),
                                   outcome)  # fmt: skip
    finally:
        sent = rt.budget.export(scope, window)["sent"]
        if sent != r.status.get("writeTimes"):
            await record(rt, r, {"writeTimes": sent})
    prove(rt, r, desired.target)  # the deployment took our write: these credentials serve it
    reason = "Rotated" if rotated else ("Created" if action == "create" else "Updated")
    await event(rt, r, "Normal", reason, f"{action}d the deployment's TLS (leaf {material.fingerprint[:23]}…)")
    return await finish(rt, r, after(info), {}, POLL_FIRST_S)


class DeploymentGate:
    """Whether the deployment takes TLS writes, from one `GET /deployments/{id}` a day per credentials owner.

    Remembered in the client (per owner and deployment: one tenant's answer is never another's) and in status
    (`deploymentCheck`, trusted only for the credentials it names, by digest: a restart does not read again
    within the day). A 404 proves nothing (EMQX says the same of a deployment the key may not see); a 200 proves
    the credentials for the deployment, as any authenticated answer does."""

    def __init__(self, rt: Runtime, r: Resource, access: EmqxAccess, deployment: str, target: str) -> None:
        self.rt, self.r, self.access, self.deployment, self.target = rt, r, access, deployment, target
        self.owner = hashlib.sha256(f"{access.namespace}\0{access.credentials_id}".encode()).hexdigest()[:16]
        self.updates: dict[str, Any] = {}

    def known(self) -> rd.DeploymentCheck | None:
        kept = self.rt.emqx.deployment_checked(self.access, self.deployment)
        return kept or rd.DeploymentCheck.from_status(self.r.status.get("deploymentCheck"), self.owner)

    async def stop_or_check(self, updates: Mapping[str, Any]) -> tuple[float | None] | None:
        """None when a write may go on; else the pass's end (a 1-tuple of its requeue delay), `updates` recorded."""
        check = self.known()
        verdict = rd.deployment_verdict(check, self.rt.clock(), self.deployment)
        if verdict.action == "check" or (verdict.action == "stop" and self.r.forced):  # requested-at: look now
            check = await self._read()
            verdict = rd.deployment_verdict(check, self.rt.clock(), self.deployment)
        if check is not None:
            self.updates = {"deploymentCheck": check.to_status(self.owner)}
        if verdict.action == "write" or verdict.state is None:
            return None
        return (await finish(self.rt, self.r, verdict.state, {**updates, **self.updates}, verdict.requeue_after),)

    async def _read(self) -> rd.DeploymentCheck:
        try:
            info = await self.rt.emqx.get_deployment(self.access, self.deployment)
        except DeploymentNotFound:
            check = rd.DeploymentCheck(self.rt.clock(), found=False)
        else:
            prove(self.rt, self.r, self.target)  # an authenticated answer about this deployment
            check = rd.DeploymentCheck(self.rt.clock(), info.deployment_type, info.status)
        self.rt.emqx.remember_deployment(self.access, self.deployment, check)
        return check


async def _push_deadline(
    rt: Runtime, r: Resource, secret: SecretView | None, material: TLSMaterial, now: dt.datetime
) -> dict[str, Any]:
    """The leaf's push deadline (status and metric) and its condition; the status fields to record."""
    leaf = material.bundle.leaf
    certificate = secret.certificate_name if secret is not None else ""
    known, memo = await _renewal(rt, r, secret, certificate)
    verdict = deadlines.verdict(leaf.not_before, leaf.not_after, now, known, certificate)
    rt.metrics.deadline_known(KINDS[r.plural], r.namespace, r.name, verdict.deadline,
                              verdict.at_risk if memo is not None else None)  # fmt: skip
    if memo is not None:  # None: the Certificate could not be read this time; its condition stays as it was
        await _deadline_condition(rt, r, verdict)
    # memo {}: no Certificate named (any earlier record goes); None: unknown this pass (the record stays)
    return {"pushDeadline": pki.rfc3339(verdict.deadline), **({"renewal": memo or None} if memo is not None else {})}


async def _renewal(
    rt: Runtime, r: Resource, secret: SecretView | None, certificate: str
) -> tuple[dt.datetime | None, dict[str, Any] | None]:
    """cert-manager's renewal time for the Secret's Certificate, read once per Secret version (status keeps it
    across restarts; `certsync.io/requested-at` reads it again, after a changed renewBefore), and what status
    records of it. ({}: no cert-manager Certificate named; None: unknown this pass, a transient failure.)"""
    if secret is None or not certificate:
        return None, {}
    version = credentials_id(secret)
    kept = r.status.get("renewal")
    if isinstance(kept, dict) and not r.forced and (kept.get("certificate"), kept.get("secretVersion")) == (
        certificate, version,
    ):  # fmt: skip
        return parse_time(kept.get("renewalTime")), kept
    try:
        found = await rt.kube.read_certificate(r.namespace, certificate)
    except KubeError:
        return None, None
    memo: dict[str, Any] = {"certificate": certificate, "secretVersion": version}
    renewal = _renewal_time(found, str(r.spec["secretName"]))
    if renewal is not None:
        memo["renewalTime"] = pki.rfc3339(renewal)
    return renewal, memo


def _renewal_time(found: Mapping[str, Any] | None, secret_name: str) -> dt.datetime | None:
    """`status.renewalTime` of a Certificate that writes this Secret (its `spec.secretName`); else None."""
    if not isinstance(found, Mapping):
        return None
    spec, status = found.get("spec"), found.get("status")
    if not isinstance(spec, Mapping) or spec.get("secretName") != secret_name or not isinstance(status, Mapping):
        return None
    return parse_time(status.get("renewalTime"))


async def _deadline_condition(rt: Runtime, r: Resource, verdict: deadlines.Verdict) -> None:
    """`PushDeadlineAtRisk`: True with a Warning Event when the deadline is at risk, False (and a Normal Event)
    once it no longer is; absent until the first risk. Its own condition, beside kstatus' three: the certificate
    on the deployment is fine (Ready stays True), a later push is what is at risk. Patched only when it changes."""
    conditions = list(r.status.get("conditions", []))
    old = next((c for c in conditions if c.get("type") == deadlines.CONDITION), None)
    if old is None and not verdict.at_risk:
        return
    status, message = ("True" if verdict.at_risk else "False"), verdict.message[:MAX_TEXT]
    said = (status, verdict.reason, message)
    unchanged = old is not None and (old.get("status"), old.get("reason"), old.get("message")) == said
    if unchanged and old is not None and old.get("observedGeneration") == r.generation:
        return
    since = old.get("lastTransitionTime") if old is not None and old.get("status") == status else None
    new = {"type": deadlines.CONDITION, "status": status, "reason": verdict.reason, "message": message,
           "observedGeneration": r.generation, "lastTransitionTime": since or pki.rfc3339(rt.clock())}  # fmt: skip
    await record(rt, r, {"conditions": [c for c in conditions if c.get("type") != deadlines.CONDITION] + [new]})
    if not unchanged:  # a new generation alone is recorded, not announced
        await event(rt, r, "Warning" if verdict.at_risk else "Normal", verdict.reason, message)
