"""CdnCertificate: find our remote certificate (by seq, else by fingerprint), patch or add it, record each step."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from certsync import accounts, pki
from certsync.cdn import CdnAccess, CdnCertificateInfo, CertificateExists, RecordNotFound
from certsync.controllers import cdnbindings, remoteaccount
from certsync.controllers.base import (
    Resource,
    Runtime,
    conflict,
    endpoint_of,
    event,
    finish,
    guarded_write,
    login_state,
    precheck,
    prove,
    record,
    settled,
    stop_for,
    tracked,
    unproven_with_rivals,
)
from certsync.reconcile import (
    CDN_CREDENTIALS,
    TLS_KEYS,
    Problem,
    State,
    TLSMaterial,
    check_tls_secret,
    credentials,
    credentials_id,
    keys_of,
)
from certsync.reconcile import bindings as rb
from certsync.reconcile import cdn as rc
from certsync.reconcile.record import Intent, new_intent
from certsync.reconcile.targets import target_key

DEFAULT_ENDPOINT = "https://api.cdn.sber.cloud"
LIST_SHARE_S = 60.0  # drift checks of one account within this long share one list call


def target_of(spec: Mapping[str, Any]) -> str:
    return target_key(endpoint_of(spec, DEFAULT_ENDPOINT), str(spec.get("account", "")))


async def cdn_access(rt: Runtime, r: Resource) -> CdnAccess | Problem:
    """The account's access from the credentials Secret, with every login refusal recorded for that Secret."""
    # Through a ClusterRemoteAccount the Secret is the account's, and so is the owner of the login.
    secret_ns, name, owner = accounts.credentials_location(r.namespace, r.spec)
    secret = await rt.kube.read_secret(secret_ns, name, keys_of(CDN_CREDENTIALS)) if secret_ns else None
    creds = credentials(name, secret, CDN_CREDENTIALS)
    if isinstance(creds, Problem) or secret is None:
        return creds if isinstance(creds, Problem) else Problem("SecretNotFound", f"Secret {name!r} not found")
    access = CdnAccess(
        r.endpoint or endpoint_of(r.spec, DEFAULT_ENDPOINT), str(r.spec["account"]),
        username=creds.get("username", ""), password=creds.get("password", ""), token=creds.get("token", ""),
        credentials_id=credentials_id(secret), namespace=owner,
    )  # fmt: skip
    # A refusal recorded by a resource using this Secret (before a restart, by another replica) holds here, but
    # only a state of the same owner (namespace and Secret uid): a status is written by its tenant, who may write
    # anything there, and must never decide for another tenant's login.
    states = [r.status.get("cdnLogin") or {}, *rt.login_states(r.namespace, name)]
    if owner != r.namespace:  # an account's login state is the account's own status, which no tenant writes
        states = remoteaccount.login_states(rt, r.spec)
    for state in states:
        if same_owner(state, owner, secret.uid):
            rt.cdn.restore_login_state(access, state)
    r.cdn = access
    return access


def same_owner(state: Mapping[str, Any], namespace: str, uid: str) -> bool:
    """Whether a recorded login state is of the credentials Secret `namespace`/`uid` (its `owner`, or the Secret
    version its refusal names); a state that names no owner is nobody's to restore."""
    if not isinstance(state, Mapping) or not uid:
        return False
    owner = state.get("owner")
    if isinstance(owner, str):
        return owner == f"{namespace}/{uid}"
    refused = state.get("refused")
    refused_id = refused.get("credentialsId") if isinstance(refused, Mapping) else None
    return isinstance(refused_id, str) and refused_id.startswith(f"{uid}:")


async def keep_login_state(rt: Runtime, r: Resource) -> None:
    """After a pass that used the CDN: what the client learnt of its login goes to status, so that a restart
    or another replica never tries a refused password again (`finish` already writes it with the conditions;
    this covers a pass that ended before)."""
    update = login_state(rt, r)
    if update:
        await record(rt, r, update)


def _account(access: CdnAccess) -> str:
    return target_key(access.endpoint.rstrip("/"), access.account)


def _list_key(access: CdnAccess) -> str:
    """Lists are shared by the resources of one credentials owner only: a cached list is no answer to credentials
    that were never checked (another tenant naming the account would read it, and seem proven, without a login)."""
    return target_key(_account(access), access.namespace, access.credentials_id)


async def listing(rt: Runtime, r: Resource, access: CdnAccess) -> list[CdnCertificateInfo]:
    """The account's certificate list, shared by every resource of the account and owner that looks within one
    cycle. Fetched by these credentials (now or within the cycle): the account is proven for them."""
    key = _list_key(access)
    # The holder lends its worker out during the list call; a waiter must too, or they deadlock (fairshare).
    async with rt.cdn_list_locks.hold(key):
        cached, now = rt.cdn_lists.get(key), rt.clock().timestamp()
        if cached is None or not 0 <= now - cached[0] <= LIST_SHARE_S:
            cached = (now, await rt.cdn.list_certificates(access))
            rt.cdn_lists[key] = cached
    prove(rt, r, target_of(r.spec))
    return list(cached[1])


def remember_added(rt: Runtime, access: CdnAccess, seq: int, material: TLSMaterial, comment: str) -> None:
    """Our own add joins the shared list: a twin with the same chain finds it there (one detail GET) instead
    of sending an add the remote refuses, and the next new certificate of the account lists nothing."""
    cached = rt.cdn_lists.get(_list_key(access))
    if cached is None:
        return
    leaf = material.bundle.leaf
    cached[1].append(CdnCertificateInfo(
        seq=seq, comment=comment, cn=leaf.subject_cn, alt=tuple(leaf.sans), issuer=leaf.issuer,
        start_timestamp=int(leaf.not_before.timestamp()), end_timestamp=int(leaf.not_after.timestamp()),
    ))  # fmt: skip


def next_check(rt: Runtime, desired: rc.Desired) -> float:
    """After a check or a write: wait for the start of the account's next drift cycle (shared by its certificates)."""
    return rc.until_next_drift_check(desired.target, rt.clock(), rt.settings.drift_interval)


def forget_listing(rt: Runtime, access: CdnAccess) -> None:
    """After our own write the shared lists of the account (every owner's) are stale."""
    prefix = _account(access) + "|"
    for key in [k for k in rt.cdn_lists if k.startswith(prefix)]:
        del rt.cdn_lists[key]


def facts(material: TLSMaterial, seq: int) -> dict[str, Any]:
    """Status from the certificate's own facts: no detail GET needed after a write."""
    leaf = material.bundle.leaf
    return {
        "seq": seq, "cn": leaf.subject_cn, "alt": list(leaf.sans), "issuer": leaf.issuer,
        "notBefore": pki.rfc3339(leaf.not_before), "notAfter": pki.rfc3339(leaf.not_after),
        "fingerprint": leaf.sha1, "chain": [f.subject_cn for f in material.bundle.facts],
    }  # fmt: skip


async def sync(rt: Runtime, r: Resource) -> float | None:
    """One pass; a seq is this resource's only once its credentials got an answer for the account."""
    return await tracked(rt, r, lambda: _sync(rt, r))


async def _sync(rt: Runtime, r: Resource) -> float | None:
    now = rt.clock()
    spec = r.spec
    blocked = precheck(rt, r, DEFAULT_ENDPOINT)
    if blocked:
        return await finish(rt, r, blocked, {}, None)
    name = str(spec["secretName"])
    # Off the event loop: loading a key checks it (tens of ms for RSA-2048, more for larger), and the loop must
    # keep renewing the Lease meanwhile.
    secret = await rt.kube.read_secret(r.namespace, name, TLS_KEYS)
    material = await asyncio.to_thread(check_tls_secret, name, secret, now)
    if isinstance(material, Problem):
        return await finish(rt, r, material.state(), {}, None)
    access = await cdn_access(rt, r)
    if isinstance(access, Problem):
        return await finish(rt, r, access.state(), {}, None)
    rt.last_credentials[r.key] = access
    spec_seq = spec.get("seq")
    desired = rc.Desired(
        target=target_of(spec), digest=pki.material_digest(material.bundle), chain_sha1=material.chain_sha1,
        leaf_cn=material.bundle.leaf.subject_cn, spec_seq=int(spec_seq) if spec_seq else None,
    )  # fmt: skip
    drift = rt.settings.drift_interval
    seq = rc.wanted_seq(desired, rc.Record.from_status(r.status))
    if seq is not None:
        clash = conflict(rt, r, target_key(desired.target, str(seq)), f"certificate seq {seq}", desired.target)
        if clash:
            return await stop_for(rt, r, clash)

    plan = rc.plan_without_read(desired, rc.Record.from_status(r.status), now, drift, r.forced)
    rivals = seq is not None and unproven_with_rivals(rt, r, target_key(desired.target, str(seq)), desired.target)
    if plan.action == "done" and not rivals:
        return await _ready(rt, r, access, material, desired, seq, plan.state, {}, plan.requeue_after)
    if plan.action == "resolve":
        await _resolve(rt, r, access, material)
        plan = rc.plan_without_read(desired, rc.Record.from_status(r.status), now, drift, r.forced)
        if plan.action == "done":
            seq = rc.wanted_seq(desired, rc.Record.from_status(r.status))
            return await _ready(rt, r, access, material, desired, seq, plan.state, {}, plan.requeue_after)
    rec = rc.Record.from_status(r.status)
    seq = rc.wanted_seq(desired, rec)
    if seq is not None:
        if rec.applied_digest and rec.applied_digest != desired.digest and seq == rec.seq and not r.forced:
            # A rotation of the certificate we wrote there: status knows the seq, one PATCH is the whole cost.
            try:
                return await _patch(rt, r, access, material, desired, seq)
            except RecordNotFound:  # someone removed it: add it anew (never a duplicate: find first)
                await record(rt, r, {"seq": None, "appliedDigest": None})
                return await _find_or_add(rt, r, access, material, desired)
        if rec.applied_digest == desired.digest and seq == rec.seq:
            # A drift check: the shared list settles it when the certificate is listed with our expiry.
            if r.forced:  # asked for by a person: what the remote says now, not what this process remembers
                forget_listing(rt, access)
            listed = {c.seq: c for c in await listing(rt, r, access)}
            item = listed.get(seq)
            if item is not None and item.end_timestamp == int(material.bundle.leaf.not_after.timestamp()):
                state = State("ready", "Synced", f"certificate seq {seq} in sync")
                checked = {"lastSyncTime": pki.rfc3339(now)}
                return await _ready(rt, r, access, material, desired, seq, state, checked, next_check(rt, desired))
        try:
            remote = await rt.cdn.get_certificate(access, seq)
            prove(rt, r, desired.target)
            chain = tuple(link.fingerprint for link in remote.chain_info or ())
        except RecordNotFound:
            chain = None
        action, state = rc.plan_for_seq(desired, rec, chain)
        if action == "stall":
            return await finish(rt, r, state, {}, None)
        if action == "adopt":
            updates = {**facts(material, seq), "appliedDigest": desired.digest, "target": desired.target,
                       "lastSyncTime": pki.rfc3339(now)}  # fmt: skip
            return await _ready(rt, r, access, material, desired, seq, state, updates, next_check(rt, desired))
        if action == "patch":
            return await _patch(rt, r, access, material, desired, seq)
    return await _find_or_add(rt, r, access, material, desired)


async def _patch(
    rt: Runtime, r: Resource, access: CdnAccess, material: TLSMaterial, desired: rc.Desired, seq: int
) -> float | None:
    now = rt.clock()
    intent = new_intent("patch", desired.target, desired.digest, now, seq=seq, chain=list(desired.chain_sha1))

    synced = State("ready", "Synced", f"certificate seq {seq} in sync")

    def outcome(_: int) -> dict[str, Any]:
        return {**facts(material, seq), "appliedDigest": desired.digest, "target": desired.target,
                "lastSyncTime": pki.rfc3339(now), "lastWriteTime": pki.rfc3339(now),
                **settled(rt, r, cdnbindings.state_after_write(r, seq, synced))}  # fmt: skip

    await guarded_write(rt, r, intent, lambda: rt.cdn.update_certificate(
        access, seq, certificate=material.cert_pem, private_key=material.key_pem), outcome)  # fmt: skip
    prove(rt, r, desired.target)
    forget_listing(rt, access)
    await event(rt, r, "Normal", "Rotated", f"patched certificate seq {seq}")
    return await _ready(rt, r, access, material, desired, seq, synced, {}, next_check(rt, desired))


async def _find_or_add(
    rt: Runtime, r: Resource, access: CdnAccess, material: TLSMaterial, desired: rc.Desired
) -> float | None:
    now = rt.clock()
    found = await find_by_fingerprint(rt, r, access, material, desired.target)
    if isinstance(found, State):
        return await stop_for(rt, r, found)
    if found is not None:
        updates = {**facts(material, found), "appliedDigest": desired.digest, "target": desired.target,
                   "lastSyncTime": pki.rfc3339(now)}  # fmt: skip
        await record(rt, r, updates)
        await event(rt, r, "Normal", "Adopted", f"adopted existing certificate seq {found}")
        state = State("ready", "Synced", f"certificate seq {found} in sync")
        return await _ready(rt, r, access, material, desired, found, state, {}, next_check(rt, desired))
    comment = str(r.spec.get("comment") or f"{r.namespace}/{r.name}")
    intent = new_intent("add", desired.target, desired.digest, now, chain=list(desired.chain_sha1),
                        cn=desired.leaf_cn)  # fmt: skip

    def synced(seq: int) -> State:
        return State("ready", "Synced", f"certificate seq {seq} in sync")

    def outcome(seq: int) -> dict[str, Any]:
        return {**facts(material, seq), "appliedDigest": desired.digest, "target": desired.target,
                "lastSyncTime": pki.rfc3339(now), "lastWriteTime": pki.rfc3339(now),
                **settled(rt, r, cdnbindings.state_after_write(r, seq, synced(seq)))}  # fmt: skip

    try:
        seq = await guarded_write(
            rt, r, intent, lambda: rt.cdn.add_certificate(access, material.cert_pem, material.key_pem, comment), outcome
        )
    except CertificateExists:
        forget_listing(rt, access)
        state = State("reconciling", "Pending", "the remote has this certificate (459) but did not list it yet")
        return await finish(rt, r, state, {}, 5.0)
    remember_added(rt, access, seq, material, comment)
    await event(rt, r, "Normal", "Created", f"added certificate seq {seq}")
    return await _ready(rt, r, access, material, desired, seq, synced(seq), {}, next_check(rt, desired))


async def _ready(
    rt: Runtime,
    r: Resource,
    access: CdnAccess,
    material: TLSMaterial,
    desired: rc.Desired,
    seq: int | None,
    state: State,
    updates: Mapping[str, Any],
    delay: float | None,
) -> float | None:
    """The certificate is in sync at `seq`: the resource is Ready only once every CDN resource of bindTo serves it
    (a fresh read showed it), else its bindings' state stands (and their sooner requeue)."""
    if seq is None or not cdnbindings.bound_to(r):
        return await finish(rt, r, state, updates, delay)
    await record(rt, r, updates)  # the certificate's own facts first: the bindings' records come after them
    leaf = material.bundle.leaf
    names = rb.certificate_names(leaf.subject_cn, leaf.sans)
    bound, more, soon = await cdnbindings.reconcile(rt, r, access, desired.target, seq, names)
    if bound is None and more.get("bindings"):
        state = State(state.kind, state.reason, f"{state.message}; served by {len(more['bindings'])} CDN resources")
    wait = min((d for d in (delay, soon) if d is not None), default=None)
    return await finish(rt, r, bound or state, more, wait)


async def find_by_fingerprint(
    rt: Runtime, r: Resource, access: CdnAccess, material: TLSMaterial, target: str, fresh: bool = False
) -> int | State | None:
    """The remote certificate holding our chain (details only for the same CN), or the conflict if another owns it."""
    if fresh:
        forget_listing(rt, access)
    leaf = material.bundle.leaf
    for item in await listing(rt, r, access):
        if item.cn != leaf.subject_cn:
            continue
        try:
            detailed = await rt.cdn.get_certificate(access, item.seq)
        except RecordNotFound:
            continue
        if rc.holds_chain(tuple(link.fingerprint for link in detailed.chain_info or ()), material.chain_sha1):
            clash = conflict(rt, r, target_key(target, str(detailed.seq)), f"certificate seq {detailed.seq}", target)
            return clash if clash is not None else detailed.seq
    return None


async def _resolve(rt: Runtime, r: Resource, access: CdnAccess, material: TLSMaterial) -> None:
    """An add or patch whose outcome was never recorded: read, adopt what landed, else forget the intent."""
    intent = Intent.from_status(r.status.get("intent"))
    if intent is None:
        return
    chain = tuple(str(c) for c in intent.facts.get("chain", []))
    landed: int | None = None
    if intent.op == "patch" and isinstance(intent.facts.get("seq"), int):
        seq = int(intent.facts["seq"])
        try:
            remote = await rt.cdn.get_certificate(access, seq)
            prove(rt, r, intent.target)
            if rc.holds_chain(tuple(link.fingerprint for link in remote.chain_info or ()), chain):
                landed = seq
        except RecordNotFound:
            pass
    elif intent.op == "add":
        found = await find_by_fingerprint(rt, r, access, material, intent.target, fresh=True)
        landed = found if isinstance(found, int) and chain == material.chain_sha1 else None
    updates: dict[str, Any] = {"intent": None}
    if landed is not None:
        if intent.digest == pki.material_digest(material.bundle):  # what landed is what the Secret holds
            updates.update(facts(material, landed))
        updates.update(seq=landed, appliedDigest=intent.digest, target=intent.target)
    await record(rt, r, updates)
    if landed is not None:
        await event(rt, r, "Normal", "Recovered", f"the unfinished {intent.op} had reached the remote (seq {landed})")
