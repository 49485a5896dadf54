"""The only kopf code: wires Kubernetes events to the reconcile decisions and applies what they say.

Each resource gets one daemon that loops: gather the observed state, ask
`reconcile` what to do, do it, patch status, then sleep until the decision's
requeue time or until something it depends on changes (its spec, the
`certsync.io/requested-at` annotation, or a referenced Secret, found through
a kopf index). Everything the operator learns lives in status.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
import kubernetes

from certsync import pki
from certsync import reconcile as rc
from certsync.budget import EMQX_READ, EMQX_WRITE, RateBudget, Window
from certsync.cdn import CdnAccess, CdnCertificateInfo, CdnClient, CertificateExists
from certsync.emqx import EmqxAccess, EmqxClient, TLSNotConfigured
from certsync.metrics import Metrics
from certsync.remote import RemoteError
from certsync.settings import Settings, parse_duration

GROUP, VERSION = "certsync.io", "v1alpha1"
PLURALS = ("deploymenttlses", "cdncertificates", "letsencryptorders")
KINDS = {
    "deploymenttlses": "DeploymentTLS",
    "cdncertificates": "CdnCertificate",
    "letsencryptorders": "LetsEncryptOrder",
}
REQUESTED_AT = "certsync.io/requested-at"
DELETE_ATTEMPTS = 5
CDN_LIST_SHARE_S = 60.0  # drift checks of one account within this long share one list call
log = logging.getLogger("certsync")


@dataclass
class Runtime:
    """What every handler shares, created once at startup and closed at cleanup."""

    settings: Settings
    budget: RateBudget
    emqx: EmqxClient
    cdn: CdnClient
    core: Any  # kubernetes.client.CoreV1Api
    custom: Any  # kubernetes.client.CustomObjectsApi
    metrics: Metrics
    cdn_lists: dict[tuple[str, str], tuple[float, list[CdnCertificateInfo]]] = field(default_factory=dict)
    cdn_list_locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    wake: dict[tuple[str, str, str], asyncio.Event] = field(default_factory=dict)
    seen: dict[tuple[str, str, str], tuple[Any, Any]] = field(default_factory=dict)
    forced: set[tuple[str, str, str]] = field(default_factory=set)

    async def read_secret(self, namespace: str, name: str) -> rc.SecretView | None:
        try:
            secret = await asyncio.to_thread(self.core.read_namespaced_secret, name, namespace)
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return None
            raise kopf.TemporaryError(f"reading Secret {name!r}: HTTP {error.status}", delay=10) from None
        data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        return rc.SecretView(type=secret.type or "", data=data)

    async def cdn_listing(self, access: CdnAccess) -> list[CdnCertificateInfo]:
        """The account's certificate list, shared by every resource whose drift check falls in one cycle."""
        key = (access.endpoint.rstrip("/"), access.account)
        async with self.cdn_list_locks.setdefault(key, asyncio.Lock()):
            cached = self.cdn_lists.get(key)
            if cached is None or time.monotonic() - cached[0] > CDN_LIST_SHARE_S:
                cached = (time.monotonic(), await self.cdn.list_certificates(access))
                self.cdn_lists[key] = cached
            return cached[1]

    async def patch_status(self, plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        await asyncio.to_thread(
            self.custom.patch_namespaced_custom_object_status,
            GROUP, VERSION, namespace, plural, name, {"status": dict(status)},
        )  # fmt: skip


def runtime(memo: kopf.Memo) -> Runtime:
    return memo["runtime"]  # type: ignore[no-any-return]


# --- startup and cleanup ------------------------------------------------------------------


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Progress and diff-base live in status, never in annotations: GitOps tools own metadata
    # and spec, and an operator that writes to what it watches triggers itself.
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.diffbase")
    settings.persistence.finalizer = "certsync.io/finalizer"
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    config: Settings = memo["settings"]
    # The CRDs exist before the operator starts: no need to watch CRDs or namespaces (and no RBAC for it).
    settings.scanning.disabled = True
    budget: RateBudget = memo["budget"]
    metrics: Metrics = memo["metrics"]
    rt = Runtime(
        settings=config,
        budget=budget,
        emqx=EmqxClient(
            budget=budget,
            observe=metrics.observe_request,
            read_window=Window(EMQX_READ.limit, config.emqx_budget_window),
            write_window=Window(EMQX_WRITE.limit, config.emqx_budget_window),
        ),
        cdn=CdnClient(budget=budget, per_minute=config.cdn_budget_per_minute, observe=metrics.observe_request),
        core=kubernetes.client.CoreV1Api(),
        custom=kubernetes.client.CustomObjectsApi(),
        metrics=metrics,
    )
    memo["runtime"] = rt


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    rt = memo.get("runtime")
    if rt is not None:
        await rt.emqx.aclose()
        await rt.cdn.aclose()


# --- what wakes a resource's daemon ----------------------------------------------------------


def _secrets_of(spec: Mapping[str, Any]) -> list[str]:
    names = [spec.get("credentialsSecretRef", {}).get("name"), spec.get("secretName")]
    names.append((spec.get("clientCA") or {}).get("secretName"))
    return [n for n in names if n]


@kopf.index(GROUP, VERSION, "deploymenttlses")
def dtls_by_secret(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[tuple[str, str], str]:
    return {(str(namespace), s): name for s in _secrets_of(spec)}


@kopf.index(GROUP, VERSION, "cdncertificates")
def cdn_by_secret(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[tuple[str, str], str]:
    return {(str(namespace), s): name for s in _secrets_of(spec)}


@kopf.index(GROUP, VERSION, "letsencryptorders")
def le_by_secret(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[tuple[str, str], str]:
    return {(str(namespace), s): name for s in _secrets_of(spec)}


def _wake(rt: Runtime, plural: str, namespace: str, name: str) -> None:
    rt.wake.setdefault((plural, namespace, name), asyncio.Event()).set()


@kopf.on.event("", "v1", "secrets")  # type: ignore[arg-type]  # kopf passes indices by name
async def secret_changed(
    namespace: str | None,
    name: str,
    memo: kopf.Memo,
    dtls_by_secret: kopf.Index[tuple[str, str], str],
    cdn_by_secret: kopf.Index[tuple[str, str], str],
    le_by_secret: kopf.Index[tuple[str, str], str],
    **_: Any,
) -> None:
    rt = runtime(memo)
    for plural, index in zip(PLURALS, (dtls_by_secret, cdn_by_secret, le_by_secret), strict=True):
        for resource in index.get((str(namespace), name), []):
            _wake(rt, plural, str(namespace), resource)


def _on_resource_event(plural: str) -> None:
    @kopf.on.event(GROUP, VERSION, plural)
    async def resource_event(namespace: str | None, name: str, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
        """Wake the daemon on a spec change or a new requested-at; status patches (ours) do not count."""
        rt = runtime(memo)
        key = (plural, str(namespace), name)
        seen = (meta.get("generation"), meta.annotations.get(REQUESTED_AT))
        before = rt.seen.get(key)
        rt.seen[key] = seen
        if before is not None and before != seen:
            if before[1] != seen[1]:
                rt.forced.add(key)
            _wake(rt, plural, str(namespace), name)


for _plural in PLURALS:
    _on_resource_event(_plural)


# --- the daemons -----------------------------------------------------------------------------

Sync = Callable[[Runtime, "Resource"], Awaitable[float | None]]


@dataclass
class Resource:
    """One resource as a pass sees it: spec, status (ours wins over a stale watch), and helpers."""

    plural: str
    body: kopf.Body
    local_status: dict[str, Any]
    logger: Any
    forced: bool = False

    @property
    def spec(self) -> Mapping[str, Any]:
        return self.body.spec

    @property
    def namespace(self) -> str:
        return str(self.body.metadata.namespace)

    @property
    def name(self) -> str:
        return str(self.body.metadata.name)

    @property
    def generation(self) -> int:
        return int(self.body.metadata.get("generation", 0))

    @property
    def status(self) -> dict[str, Any]:
        return {**dict(self.body.status), **self.local_status}

    async def finish(
        self, rt: Runtime, state: rc.State, updates: Mapping[str, Any], delay: float | None
    ) -> float | None:
        """Patch status (only when it changes) and post an Event when the reason changes."""
        now = dt.datetime.now(dt.UTC)
        previous = self.status
        old_reason = next((c.get("reason") for c in previous.get("conditions", []) if c.get("type") == "Ready"), None)
        new = {**updates, "observedGeneration": self.generation}
        new["conditions"] = rc.conditions(previous.get("conditions", []), state, self.generation, now)
        changed = any(previous.get(k) != v for k, v in new.items())
        if changed:
            await rt.patch_status(self.plural, self.namespace, self.name, new)
            self.local_status.update(new)
        kind_label = KINDS[self.plural]
        rt.metrics.reconciles.labels(kind_label, state.kind).inc()
        rt.metrics.set_ready(kind_label, self.namespace, self.name, "True" if state.kind == "ready" else "False")
        expiry = self.status.get("notAfter") or self.status.get("expire")
        if isinstance(expiry, str) and expiry:
            moment = dt.datetime.fromisoformat(expiry.replace("Z", "+00:00"))
            rt.metrics.expiry.labels(kind_label, self.namespace, self.name).set(moment.timestamp())
        if old_reason != state.reason:
            kind = (
                "Warning"
                if state.kind == "stalled" or state.reason in ("RateLimited", "RemoteUnavailable")
                else "Normal"
            )
            kopf.event(self.body, type=kind, reason=state.reason, message=state.message)
        self.logger.info(f"{state.kind}: {state.reason}: {state.message}", extra={"reason": state.reason})
        return delay


def state_for_error(error: RemoteError, attempt: int) -> tuple[rc.State, float | None]:
    """The one place that turns a remote failure into conditions and a retry time."""
    if error.retryable:
        delay = error.retry_after if error.retry_after is not None else rc.poll_delay(attempt)
        return rc.State("reconciling", error.reason, f"{error.message}; retrying in {delay:.0f}s"), max(1.0, delay)
    return rc.State("stalled", error.reason, error.message), None


def _daemon(plural: str, sync: Sync) -> None:
    @kopf.daemon(GROUP, VERSION, plural, cancellation_timeout=5.0)
    async def run(body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo, logger: Any, **_: Any) -> None:
        rt = runtime(memo)
        key = (plural, body.metadata.namespace, body.metadata.name)
        wake = rt.wake.setdefault(key, asyncio.Event())  # type: ignore[arg-type]
        local: dict[str, Any] = {}
        failures = 0
        while not stopped:
            wake.clear()
            forced = key in rt.forced
            rt.forced.discard(key)
            resource = Resource(plural, body, local, logger, forced)
            try:
                delay = await sync(rt, resource)
                failures = 0
            except RemoteError as error:
                failures += 1
                state, delay = state_for_error(error, failures)
                await resource.finish(rt, state, {}, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=delay)


# --- DeploymentTLS ---------------------------------------------------------------------------


async def _precheck(rt: Runtime, r: Resource) -> rc.State | None:
    if r.spec.get("suspend"):
        return rc.State("suspended", "Suspended", "spec.suspend is true: no remote calls")
    if not rt.settings.endpoint_allowed(str(r.spec.get("endpoint", ""))):
        return rc.State(
            "stalled", "EndpointNotAllowed", f"endpoint {r.spec.get('endpoint')!r} is not in the operator's allowlist"
        )
    return None


async def _tls_material(rt: Runtime, r: Resource, now: dt.datetime) -> rc.TLSMaterial | rc.State:
    """The checks every certificate-pushing kind makes before anything else, in this order."""
    blocked = await _precheck(rt, r)
    if blocked:
        return blocked
    name = str(r.spec["secretName"])
    material = rc.check_tls_secret(name, await rt.read_secret(r.namespace, name), now)
    return material.state() if isinstance(material, rc.Problem) else material


async def sync_deployment_tls(rt: Runtime, r: Resource) -> float | None:
    now = dt.datetime.now(dt.UTC)
    spec, status = r.spec, r.status
    material = await _tls_material(rt, r, now)
    if isinstance(material, rc.State):
        return await r.finish(rt, material, {}, None)
    cacert: str | None = None
    if spec.get("tlsType") == "two-way":
        ref = spec.get("clientCA") or {}
        if not ref:
            return await r.finish(rt, rc.State("stalled", "InvalidSpec", "two-way TLS needs spec.clientCA"), {}, None)
        ca = rc.check_ca_secret(
            ref["secretName"], ref.get("key", "ca.crt"), await rt.read_secret(r.namespace, ref["secretName"])
        )
        if isinstance(ca, rc.Problem):
            return await r.finish(rt, ca.state(), {}, None)
        cacert = ca
    creds_name = spec["credentialsSecretRef"]["name"]
    creds = rc.credentials(creds_name, await rt.read_secret(r.namespace, creds_name), [("apiKey", "apiSecret")])
    if isinstance(creds, rc.Problem):
        return await r.finish(rt, creds.state(), {}, None)
    access = EmqxAccess(spec["endpoint"], creds["apiKey"], creds["apiSecret"])
    deployment = spec["deploymentId"]
    scope, window = rt.emqx.scope(access, deployment, "PUT")
    rt.budget.restore(scope, window, {"sent": status.get("writeTimes", [])})
    drift = (
        parse_duration(str(spec.get("driftCheckInterval") or ""))
        if spec.get("driftCheckInterval")
        else rt.settings.drift_interval
    )

    def observed(remote: rc.EmqxRemote | None) -> rc.EmqxObserved:
        return rc.EmqxObserved(
            spec=spec, status=r.status, generation=r.generation, desired_fingerprint=material.fingerprint,
            desired_expire=material.bundle.leaf.not_after, has_cacert=cacert is not None, remote=remote,
            now=now, drift_interval=drift, forced=r.forced,
        )  # fmt: skip

    plan = rc.plan_deployment_tls(observed(None))
    if plan.action == "done":
        return await r.finish(rt, plan.state, {}, plan.requeue_after)
    try:
        info = await rt.emqx.get_tls(access, deployment)
        remote = rc.EmqxRemote(False, info.tls_type, info.status, info.expire)
    except TLSNotConfigured:
        remote = rc.EmqxRemote(True)
    plan = rc.plan_deployment_tls(observed(remote))
    common = {"remoteStatus": "absent" if remote.absent else remote.status, "tlsType": remote.tls_type or None}
    if remote.expire:
        common["expire"] = pki.rfc3339(remote.expire)
    if plan.action in ("create", "update"):
        write = rt.emqx.create_tls if plan.action == "create" else rt.emqx.update_tls
        tls_type = str(spec["tlsType"])
        try:
            info = await write(access, deployment, tls_type, material.cert_pem, material.key_pem, cacert)
        finally:
            write_times = rt.budget.export(scope, window)["sent"]
            if write_times != status.get("writeTimes"):
                await rt.patch_status(r.plural, r.namespace, r.name, {"writeTimes": write_times})
                r.local_status["writeTimes"] = write_times
        rotated = bool(status.get("fingerprint")) and status.get("fingerprint") != material.fingerprint
        kopf.event(r.body, type="Normal", reason="Rotated" if rotated else plan.action.capitalize() + "d",
                   message=f"{plan.action}d the deployment's TLS (leaf {material.fingerprint[:23]}…)")  # fmt: skip
        updates = {
            "remoteStatus": info.status, "tlsType": info.tls_type, "fingerprint": material.fingerprint,
            "expire": pki.rfc3339(info.expire) if info.expire else None,
            "lastWriteTime": pki.rfc3339(now), "pollAttempt": 0, "writeTimes": write_times,
        }  # fmt: skip
        return await r.finish(
            rt,
            rc.State("reconciling", "Pending", f"remote TLS is {info.status!r} after {plan.action}"),
            updates,
            rc.POLL_FIRST_S,
        )
    if plan.action == "wait":
        updates = {**common, "pollAttempt": int(status.get("pollAttempt", 0)) + 1}
        return await r.finish(rt, plan.state, updates, plan.requeue_after)
    updates = {**common, "lastSyncTime": pki.rfc3339(now), "pollAttempt": 0}
    return await r.finish(rt, plan.state, updates, plan.requeue_after)


# --- CdnCertificate --------------------------------------------------------------------------


async def _cdn_access(rt: Runtime, r: Resource) -> CdnAccess | rc.Problem:
    name = r.spec["credentialsSecretRef"]["name"]
    creds = rc.credentials(name, await rt.read_secret(r.namespace, name), [("token",), ("username", "password")])
    if isinstance(creds, rc.Problem):
        return creds
    return CdnAccess(
        str(r.spec.get("endpoint") or "https://api.cdn.sber.cloud"), str(r.spec["account"]),
        username=creds.get("username", ""), password=creds.get("password", ""), token=creds.get("token", ""),
    )  # fmt: skip


async def sync_cdn_certificate(rt: Runtime, r: Resource) -> float | None:
    now = dt.datetime.now(dt.UTC)
    spec, status = r.spec, r.status
    material = await _tls_material(rt, r, now)
    if isinstance(material, rc.State):
        return await r.finish(rt, material, {}, None)
    access = await _cdn_access(rt, r)
    if isinstance(access, rc.Problem):
        return await r.finish(rt, access.state(), {}, None)
    sha1 = material.bundle.leaf.sha1
    drift = rt.settings.drift_interval
    plan = rc.plan_cdn_certificate(rc.CdnObserved(spec, status, sha1, None, None, listed=False))
    if plan.action == "done" and not r.forced and rc.synced_within(status, now, drift):
        return await r.finish(rt, plan.state, {}, drift)
    if plan.action == "done":
        # Drift check: one list call per account serves every resource of that account in this cycle.
        listed = {c.seq: c for c in await rt.cdn_listing(access)}
        item = listed.get(int(status["seq"]))
        if item is not None and item.end_timestamp == int(material.bundle.leaf.not_after.timestamp()):
            return await r.finish(rt, plan.state, {"lastSyncTime": pki.rfc3339(now)}, drift)
    wanted_seq = status.get("seq") or spec.get("seq")
    by_seq = None
    if wanted_seq:
        try:
            got = await rt.cdn.get_certificate(access, int(wanted_seq))
            by_seq = rc.CdnRemote(got.seq, got.leaf_fingerprint)
        except RemoteError as error:
            if error.reason != "RemoteNotFound":
                raise
    by_fp = await _find_by_fingerprint(rt, access, material.bundle.leaf) if by_seq is None else None
    plan = rc.plan_cdn_certificate(rc.CdnObserved(spec, status, sha1, by_seq, by_fp, listed=True))
    comment = str(spec.get("comment") or f"{r.namespace}/{r.name}")
    seq = plan.seq
    if plan.action == "add":
        try:
            seq = await rt.cdn.add_certificate(access, material.cert_pem, material.key_pem, comment)
            kopf.event(r.body, type="Normal", reason="Created", message=f"added certificate seq {seq}")
        except CertificateExists:
            found = await _find_by_fingerprint(rt, access, material.bundle.leaf)
            if found is not None:
                seq = found.seq
                kopf.event(
                    r.body, type="Normal", reason="Adopted", message=f"adopted existing certificate seq {seq} (459)"
                )
    elif plan.action == "patch" and seq is not None:
        await rt.cdn.update_certificate(access, seq, certificate=material.cert_pem, private_key=material.key_pem)
        kopf.event(r.body, type="Normal", reason="Rotated", message=f"patched certificate seq {seq}")
    elif plan.action == "adopt":
        kopf.event(r.body, type="Normal", reason="Adopted", message=f"adopted existing certificate seq {seq}")
    if seq is None and plan.state.kind != "stalled":  # 459, yet the list did not show it (yet): look again
        state = rc.State("reconciling", "Pending", "the remote has this certificate but did not list it yet")
        return await r.finish(rt, state, {}, rc.POLL_FIRST_S)
    if plan.state.kind == "stalled" or seq is None:
        return await r.finish(rt, plan.state, {}, None)
    final = await rt.cdn.get_certificate(access, seq)
    chain = final.chain_info or ()
    updates = {
        "seq": final.seq, "cn": final.cn, "alt": list(final.alt), "issuer": final.issuer,
        "notBefore": pki.rfc3339(dt.datetime.fromtimestamp(final.start_timestamp, dt.UTC)),
        "notAfter": pki.rfc3339(dt.datetime.fromtimestamp(final.end_timestamp, dt.UTC)),
        "fingerprint": final.leaf_fingerprint, "chain": [c.subject_cn for c in chain],
        "lastSyncTime": pki.rfc3339(now),
    }  # fmt: skip
    return await r.finish(rt, rc.State("ready", "Synced", f"certificate seq {final.seq} in sync"), updates, drift)


async def _find_by_fingerprint(rt: Runtime, access: CdnAccess, leaf: pki.CertificateFacts) -> rc.CdnRemote | None:
    """The remote certificate with this leaf, if any: details (one call each) only for those with the same CN."""
    for item in await rt.cdn.list_certificates(access):
        if item.cn != leaf.subject_cn:
            continue
        detailed = await rt.cdn.get_certificate(access, item.seq)
        if detailed.leaf_fingerprint == leaf.sha1:
            return rc.CdnRemote(detailed.seq, detailed.leaf_fingerprint)
    return None


# --- LetsEncryptOrder ------------------------------------------------------------------------


async def sync_order(rt: Runtime, r: Resource) -> float | None:
    blocked = await _precheck(rt, r)
    if blocked:
        return await r.finish(rt, blocked, {}, None)
    spec, status = r.spec, r.status
    if bool(spec.get("resourceId")) == bool(spec.get("domains")):
        return await r.finish(rt, rc.State("stalled", "InvalidSpec", "exactly one of resourceId and domains"), {}, None)
    access = await _cdn_access(rt, r)
    if isinstance(access, rc.Problem):
        return await r.finish(rt, access.state(), {}, None)
    if status.get("certificateSeq") and not r.forced:
        return await r.finish(rt, rc.State("ready", "Synced", "certificate issued"), {}, None)
    now = dt.datetime.now(dt.UTC)
    resource_id = spec.get("resourceId")
    domains = list(spec.get("domains") or [])
    task = await rt.cdn.letsencrypt_status(access, resource_id) if resource_id else None

    async def issued() -> list[rc.IssuedCertificate]:
        found = []
        for item in await rt.cdn.list_certificates(access):
            names = (item.cn, *item.alt)
            # HTTP-01 (resource orders) can never validate a wildcard name: such a certificate is a wildcard order's.
            ours = item.covers(domains) if domains else not any(n.startswith("*.") for n in names)
            if "let's encrypt" in item.issuer.lower() and ours:
                found.append(rc.IssuedCertificate(item.seq, item.end_timestamp, names))
        return found

    certs = await issued() if (task == "processed" or (domains and status.get("orderedAt"))) else []
    plan = rc.plan_order(rc.OrderObserved(spec, status, task, certs), domains or [str(resource_id)])
    updates: dict[str, Any] = {"taskStatus": task} if task else {}
    if plan.action == "order":
        if domains:
            updates["notAfterBefore"] = max((c.not_after for c in await issued()), default=0)
            await rt.cdn.order_wildcard(access, domains)
        else:
            await rt.cdn.order_letsencrypt(access, str(resource_id))
        updates.update({"orderedAt": pki.rfc3339(now), "taskStatus": "accepted"})
        kopf.event(r.body, type="Normal", reason="Ordered", message="ordered a Let's Encrypt certificate")
        return await r.finish(rt, plan.state, updates, rc.POLL_FIRST_S)
    if plan.action == "done" and plan.certificate is not None:
        updates.update({
            "certificateSeq": plan.certificate.seq,
            "notAfter": pki.rfc3339(dt.datetime.fromtimestamp(plan.certificate.not_after, dt.UTC)),
        })  # fmt: skip
        if not resource_id:
            updates["taskStatus"] = "processed"
        return await r.finish(rt, plan.state, updates, None)
    if plan.state.kind == "stalled":
        return await r.finish(rt, plan.state, updates, None)
    attempt = int(status.get("pollAttempt", 0))
    updates["pollAttempt"] = attempt + 1
    return await r.finish(rt, plan.state, updates, rc.poll_delay(attempt))


_daemon("deploymenttlses", sync_deployment_tls)
_daemon("cdncertificates", sync_cdn_certificate)
_daemon("letsencryptorders", sync_order)


# --- deletion --------------------------------------------------------------------------------


def _on_delete(plural: str) -> None:
    @kopf.on.delete(GROUP, VERSION, plural)
    async def delete(
        spec: kopf.Spec,
        status: kopf.Status,
        namespace: str | None,
        body: kopf.Body,
        memo: kopf.Memo,
        retry: int,
        **_: Any,
    ) -> None:
        """With `Delete`, remove the remote certificate (404 counts as done); `Orphan` sends nothing."""
        rt = runtime(memo)
        rt.metrics.forget(KINDS[plural], str(namespace), str(body.metadata.name))
        if spec.get("deletionPolicy", "Orphan") != "Delete" or plural == "letsencryptorders":
            return
        if not rt.settings.endpoint_allowed(str(spec.get("endpoint", ""))):
            return
        try:
            if plural == "deploymenttlses":
                name = spec["credentialsSecretRef"]["name"]
                creds = rc.credentials(name, await rt.read_secret(str(namespace), name), [("apiKey", "apiSecret")])
                if isinstance(creds, rc.Problem):
                    raise RemoteError(creds.message)
                access = EmqxAccess(spec["endpoint"], creds["apiKey"], creds["apiSecret"])
                with contextlib.suppress(TLSNotConfigured):  # already gone counts as removed
                    await rt.emqx.delete_tls(access, spec["deploymentId"])
            elif status.get("seq"):
                r = Resource(plural, body, {}, log)
                cdn_access = await _cdn_access(rt, r)
                if isinstance(cdn_access, rc.Problem):
                    raise RemoteError(cdn_access.message)
                try:
                    await rt.cdn.delete_certificate(cdn_access, int(status["seq"]))
                except RemoteError as error:
                    if error.reason != "RemoteNotFound":
                        raise
            kopf.event(body, type="Normal", reason="Deleted", message="removed the remote certificate")
        except RemoteError as error:
            if not error.retryable or retry + 1 >= DELETE_ATTEMPTS:  # never hang on a remote that refuses
                kopf.event(body, type="Warning", reason="DeleteFailed",
                           message=f"gave up removing the remote certificate after {retry + 1} tries: "
                                   f"{error.message}")  # fmt: skip
                return
            raise kopf.TemporaryError(error.message, delay=error.retry_after or rc.poll_delay(retry)) from None


for _plural in PLURALS:
    _on_delete(_plural)
