"""ClusterRemoteAccount: the account's status pass (are its credentials proven?) and resources that name one.

The account's pass costs at most one call per credentials Secret version, within the clients' budgets: a CDN
login (`CdnClient.token`), or an EMQX read of the first deployment listed. The token and login memory it leaves
are the account's (keyed by `ClusterRemoteAccount/<name>` and the Secret's version), so the resources using the
account log in no second time, and a rotated Secret costs one new login for all of them. A resource naming an
account it may not use stalls before any Secret is read or any remote is called.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from certsync import accounts, pki
from certsync.accounts import AccountBook
from certsync.cdn import CdnAccess
from certsync.controllers.base import Resource, Runtime, finish, state_for_error, tracked
from certsync.emqx import EmqxAccess, TLSNotConfigured
from certsync.kube import KubeError, ObjectRef
from certsync.reconcile import CDN_CREDENTIALS, EMQX_CREDENTIALS, Problem, State, credentials, credentials_id, keys_of
from certsync.reconcile.conditions import conditions
from certsync.remote import RemoteError
from certsync.scrub import GENERIC

log = logging.getLogger("certsync")
PROVEN, UNPROVEN = "CredentialsProven", "CredentialsUnproven"
SETTLED = (PROVEN, UNPROVEN, "CredentialsInvalid", "Forbidden")  # what a pass of the same Secret version keeps
RECHECK_S = 300.0  # a Secret outside the watched namespaces is looked at again this often (its changes go unseen)
MAX_TEXT = 1024
Sync = Callable[[Runtime, Resource], Awaitable[float | None]]


def book_of(rt: Runtime) -> AccountBook:
    """The runtime's account book."""
    return rt.accounts


async def sync_through_account(rt: Runtime, r: Resource, sync: Sync) -> float | None:
    """Run `sync` for a resource: one naming an account sees the account's endpoint, CDN account and Secret in
    its spec, or stalls (`AccountNotAllowed`, `AccountNotFound`) with no Secret read and no remote call."""
    refused = resolve_spec(rt, r)
    if refused is not None:
        return await tracked(rt, r, lambda: finish(rt, r, refused, {}, None))
    return await sync(rt, r)


def resolve_spec(rt: Runtime, r: Resource) -> State | None:
    """Give a resource naming an account the account's endpoint, CDN account and Secret location in its spec
    (this pass's view only: kopf's body is left alone), or say why it may not use it (Stalled)."""
    name = accounts.account_name(r.spec)
    if name is None:
        return None
    book = book_of(rt)
    resolved = accounts.resolve(r.plural, r.namespace, r.spec, book.account(name), book.namespace_labels(r.namespace))
    if isinstance(resolved, Problem):
        return resolved.state()
    r.spec = accounts.effective_spec(r.spec, resolved)
    return None


def login_states(rt: Runtime, spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The CDN login state an account's status recorded (kopf's index keeps it): what its users restore, never
    their own status (a tenant may write anything in its resource's status, and must not ban the account)."""
    found = book_of(rt).account(accounts.account_name(spec) or "")
    state = (found or {}).get("cdnLogin")
    return [state] if isinstance(state, Mapping) else []


@dataclass
class Account:
    """One ClusterRemoteAccount as its pass sees it."""

    name: str
    uid: str
    generation: int
    spec: Mapping[str, Any]
    status: dict[str, Any]


async def prove(rt: Runtime, a: Account, attempt: int = 0) -> float | None:
    """The account's pass: check the spec and the Secret, prove the credentials once per Secret version, record."""
    problem = accounts.account_problem(a.spec)
    if problem is not None:
        return await _record(rt, a, problem.state(), {}, None)
    endpoint = rt.settings.allowed_endpoint(str(a.spec["endpoint"]))
    if endpoint is None:
        state = State("stalled", "EndpointNotAllowed", f"endpoint {a.spec['endpoint']!r} is not in the allowlist")
        return await _record(rt, a, state, {}, None)
    ref = a.spec["credentialsSecretRef"]
    secret_ns, secret_name = str(ref["namespace"]), str(ref["name"])
    keys = EMQX_CREDENTIALS if a.spec["provider"] == "emqx" else CDN_CREDENTIALS
    try:
        secret = await rt.kube.read_secret(secret_ns, secret_name, keys_of(keys))
    except KubeError as error:
        if error.transient:
            raise
        return await _record(rt, a, State("stalled", error.reason, error.message), {}, error.retry_after)
    creds = credentials(secret_name, secret, keys)
    if isinstance(creds, Problem):
        message = creds.message.replace("the resource's namespace", f"namespace {secret_ns!r}")
        return await _record(rt, a, State("stalled", creds.reason, message), {"credentialsId": None}, RECHECK_S)
    cid = credentials_id(secret)
    before: Mapping[str, Any] = next((c for c in a.status.get("conditions", []) if c.get("type") == "Ready"), {})
    if (a.status.get("credentialsId") == cid and before.get("reason") in SETTLED
            and a.status.get("observedGeneration") == a.generation):  # fmt: skip
        return RECHECK_S  # this Secret version was judged already: no second call, not even after a restart
    owner = accounts.owner_of(a.name)
    if a.spec["provider"] == "cdn":
        cdn = CdnAccess(endpoint, str(a.spec["account"]), username=creds.get("username", ""),
                        password=creds.get("password", ""), token=creds.get("token", ""),
                        credentials_id=cid, namespace=owner)  # fmt: skip
        if _same_owner(a.status.get("cdnLogin"), cdn):
            rt.cdn.restore_login_state(cdn, a.status["cdnLogin"])
        return await _prove_cdn(rt, a, cdn, cid, attempt)
    emqx = EmqxAccess(endpoint, creds["apiKey"], creds["apiSecret"], owner, cid)
    return await _prove_emqx(rt, a, emqx, cid, attempt)


def _same_owner(state: object, access: CdnAccess) -> bool:
    return isinstance(state, Mapping) and state.get("owner") == access.login_owner()


async def _prove_cdn(rt: Runtime, a: Account, access: CdnAccess, cid: str, attempt: int) -> float | None:
    if access.token:  # a static token needs no login: the first call of a resource proves it
        state = State("ready", UNPROVEN, "a static token: proven at its first use by a resource")
        return await _record(rt, a, state, {"credentialsId": cid}, RECHECK_S)
    try:
        await rt.cdn.token(access)
    except RemoteError as error:
        return await _failed(rt, a, error, cid, attempt, {"cdnLogin": rt.cdn.export_login_state(access) or None})
    updates = {"credentialsId": cid, "provenTime": pki.rfc3339(rt.clock()),
               "cdnLogin": rt.cdn.export_login_state(access) or None}  # fmt: skip
    state = State("ready", PROVEN, f"logged in to account {a.spec['account']!r}")
    return await _record(rt, a, state, updates, RECHECK_S)


async def _prove_emqx(rt: Runtime, a: Account, access: EmqxAccess, cid: str, attempt: int) -> float | None:
    deployments = [str(d) for d in a.spec.get("deployments") or []]
    if not deployments:
        state = State("ready", UNPROVEN, "no deployment listed: the credentials are proven at their first use")
        return await _record(rt, a, state, {"credentialsId": cid}, RECHECK_S)
    try:
        await rt.emqx.get_tls(access, deployments[0])
    except TLSNotConfigured:  # EMQX answers the same 404 for a deployment the key cannot see: no proof
        state = State("ready", UNPROVEN, f"deployment {deployments[0]!r} has no TLS to read: proven at first use")
        return await _record(rt, a, state, {"credentialsId": cid}, RECHECK_S)
    except RemoteError as error:
        return await _failed(rt, a, error, cid, attempt, {})
    state = State("ready", PROVEN, f"read the TLS of deployment {deployments[0]!r}")
    return await _record(rt, a, state, {"credentialsId": cid, "provenTime": pki.rfc3339(rt.clock())}, RECHECK_S)


async def _failed(
    rt: Runtime, a: Account, error: RemoteError, cid: str, attempt: int, extra: dict[str, Any]
) -> float | None:
    state, delay = state_for_error(error, attempt)
    # A refusal is settled for this Secret version (never tried again with it); a transient failure is not.
    updates = {**extra, "credentialsId": cid if not error.retryable else a.status.get("credentialsId")}
    return await _record(rt, a, state, updates, delay if error.retryable else RECHECK_S)


async def _record(
    rt: Runtime, a: Account, state: State, updates: Mapping[str, Any], delay: float | None
) -> float | None:
    """Write the account's conditions and fields when they changed; a change of reason is logged."""
    state = State(state.kind, state.reason, GENERIC.short(state.message, MAX_TEXT))
    previous = a.status.get("conditions", [])
    before: Mapping[str, Any] = next((c for c in previous if c.get("type") == "Ready"), {})
    status = {**updates, "observedGeneration": a.generation,
              "conditions": conditions(previous, state, a.generation, rt.clock())}  # fmt: skip
    changed = {k: v for k, v in status.items() if a.status.get(k) != v}
    if changed:
        await patch_status(rt, a, changed)
        a.status.update(changed)
    if before.get("reason") != state.reason or before.get("message") != state.message:
        log.info("ClusterRemoteAccount %s: %s: %s", a.name, state.reason, state.message,
                 extra={"reason": state.reason, "k8s_ref": {"kind": accounts.KIND, "name": a.name}})  # fmt: skip
    return delay


async def patch_status(rt: Runtime, a: Account, status: Mapping[str, Any]) -> None:
    """A cluster-scoped object's status: an `ObjectRef` without a namespace."""
    await rt.kube.patch_status(ObjectRef(accounts.PLURAL, accounts.KIND, "", a.name, a.uid), status)
