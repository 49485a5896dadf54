"""DeploymentTLS: observe (Secrets, status, GET), plan (`reconcile.deploymenttls`), apply (POST/PUT), record."""

from __future__ import annotations

import asyncio
from typing import Any

from certsync import accounts, pki
from certsync.controllers.base import (
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
from certsync.emqx import DeploymentTLSInfo, EmqxAccess, TLSNotConfigured
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
    keys_of,
)
from certsync.reconcile import deploymenttls as rd
from certsync.reconcile.conditions import POLL_FIRST_S
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
    try:  # what EMQX itself refuses (key types, issuer's algorithm, 60 days left) costs no call
        pki.check_destination(material.bundle, "emqx", now)
    except pki.ValidityTooShort as problem:
        # A certificate already applied may run into its last 60 days: it stays; only a new one is refused.
        if r.status.get("fingerprint") != material.fingerprint:
            return await finish(
                rt, r, State("stalled", problem.reason, f"Secret {name!r}: {problem.message}"), {}, None
            )
    except pki.CertificateProblem as problem:
        return await finish(rt, r, State("stalled", problem.reason, f"Secret {name!r}: {problem.message}"), {}, None)
    tls_type = str(spec.get("tlsType", "one-way"))
    cacert: str | None = None
    ca_digest = ""
    if tls_type == "two-way":
        ref = spec.get("clientCA") or {}
        if not ref:
            return await finish(rt, r, State("stalled", "InvalidSpec", "two-way TLS needs spec.clientCA"), {}, None)
        ca_key = str(ref.get("key", "ca.crt"))
        ca_secret = await rt.kube.read_secret(r.namespace, ref["secretName"], [ca_key])
        ca = check_ca_secret(ref["secretName"], ca_key, ca_secret)
        if not isinstance(ca, tuple):
            return await finish(rt, r, ca.state(), {}, None)
        cacert, ca_digest = ca
    creds_ns, creds_name, _ = accounts.credentials_location(r.namespace, spec)
    creds_secret = await rt.kube.read_secret(creds_ns, creds_name, keys_of(EMQX_CREDENTIALS)) if creds_ns else None
    creds = credentials(creds_name, creds_secret, EMQX_CREDENTIALS)
    if not isinstance(creds, dict):
        return await finish(rt, r, creds.state(), {}, None)
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
        return await finish(rt, r, plan.state, updates, plan.requeue_after)

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
        return await _write(rt, r, plan.action, access, deployment, desired, material, cacert, scope, window)
    attempt = int(r.status.get("pollAttempt", 0))
    updates = {**reading, "pollAttempt": attempt + 1 if plan.action == "wait" else 0}
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
    material: TLSMaterial, cacert: str | None, scope: Any, window: Any,
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
            "writeTimes": rt.budget.export(scope, window)["sent"], **settled(rt, r, after(info)),
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
