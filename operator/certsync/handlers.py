"""The only kopf code: registrations that route Kubernetes events to the controllers.

Each resource gets one daemon that loops: build the pass's view, run its
kind's controller, then wait until the controller's requeue time, a wake
(its spec, the `certsync.io/requested-at` annotation, or a referenced Secret
changed) or the daemon's stop. Indices say who names which remote target and
which Secrets, so that ownership and wakes need no API call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import kopf

from certsync import accounts, fairshare
from certsync.budget import EMQX_READ, EMQX_WRITE, RateBudget, Window
from certsync.cdn import CdnClient
from certsync.controllers import cdnbindings, cdncertificate, deletion, deploymenttls, letsencryptorder, remoteaccount
from certsync.controllers.base import KINDS, Resource, Runtime, finish, first_sight, state_for_error
from certsync.emqx import EmqxClient
from certsync.fairshare import RemoteSlots, WorkerPool
from certsync.kube import GROUP, VERSION, Kube, KubeError, ResourceGone
from certsync.metrics import Metrics
from certsync.reconcile import Problem, State
from certsync.reconcile.conditions import jittered, poll_delay
from certsync.reconcile.targets import Claim, target_key
from certsync.remote import RemoteError, tls_context
from certsync.secretwatch import SecretStore
from certsync.settings import Settings

PLURALS = tuple(KINDS)
REQUESTED_AT = "certsync.io/requested-at"
KOPF_REQUESTS = 32  # kopf's requests in flight besides its watches
WRITE_DRAIN_S = 25.0  # within deploy/'s 30 s grace period
log = logging.getLogger("certsync")
Sync = Callable[[Runtime, Resource], Awaitable[float | None]]
SYNCS: dict[str, Sync] = {
    "deploymenttlses": deploymenttls.sync,
    "cdncertificates": cdncertificate.sync,
    "letsencryptorders": letsencryptorder.sync,
}


class Wakes:
    """Per-resource wake events and forced flags; dropped when the resource is deleted."""

    def __init__(self) -> None:
        self.by_secret: dict[str, Mapping[tuple[str, str], Any]] = {}  # kopf's live indices, once a handler saw them
        self.events: dict[tuple[str, str, str], asyncio.Event] = {}
        self.seen: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self.forced: set[tuple[str, str, str]] = set()

    def wake(self, key: tuple[str, str, str]) -> None:
        self.events.setdefault(key, asyncio.Event()).set()

    def secret_changed(self, namespace: str, name: str) -> None:
        """The Secret watch saw `namespace/name` change: wake every resource that names it."""
        for plural, index in self.by_secret.items():
            for resource in index.get((namespace, name), []):
                self.wake((plural, namespace, resource))

    def forget(self, key: tuple[str, str, str]) -> None:
        self.events.pop(key, None)
        self.seen.pop(key, None)
        self.forced.discard(key)


def runtime(memo: kopf.Memo) -> Runtime:
    return memo["runtime"]  # type: ignore[no-any-return]


def wakes(memo: kopf.Memo) -> Wakes:
    return memo["wakes"]  # type: ignore[no-any-return]


# --- startup and cleanup ------------------------------------------------------------------


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Progress and diff-base live in status, never in annotations: GitOps tools own metadata
    # and spec, and an operator that writes to what it watches triggers itself.
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.diffbase")
    settings.persistence.finalizer = "certsync.io/finalizer"
    # Every Event goes through `Kube.event`, which counts repeats on one Event as client-go does; kopf's
    # poster would create one per message (and, in older kopf versions, one per log line of its own).
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    # A hung watch (half-open connection) is reset instead of silently starving the daemons of events.
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    # The CRDs exist before the operator starts: no need to watch CRDs or namespaces (and no RBAC for it).
    settings.scanning.disabled = True
    config: Settings = memo["settings"]
    budget: RateBudget = memo["budget"]
    metrics: Metrics = memo["metrics"]
    memo["wakes"] = w = Wakes()
    # Secrets are watched by metadata only, outside kopf (which would hold every Secret's body).
    secrets = SecretStore(config.namespaces, w.secret_changed)
    secrets.start()
    limits = RemoteSlots(per_scope=config.remote_concurrency_per_target, overall=config.remote_concurrency)
    bounds: dict[str, Any] = {
        "observe": metrics.observe_request,
        "concurrency": limits,
        "verify": tls_context(config.remote_ca_file),  # None: httpx's bundle; else the system's store plus the file
        "max_answer_bytes": config.remote_max_answer_bytes,
        "call_deadline": config.remote_call_deadline,
    }
    memo["runtime"] = Runtime(
        settings=config,
        budget=budget,
        emqx=EmqxClient(
            budget=budget,
            read_window=Window(EMQX_READ.limit, config.emqx_budget_window),
            write_window=Window(EMQX_WRITE.limit, config.emqx_budget_window),
            **bounds,
        ),
        cdn=CdnClient(budget=budget, per_minute=config.cdn_budget_per_minute, **bounds),
        kube=Kube(secrets=secrets, required_label=config.secret_label),
        metrics=metrics,
        workers=WorkerPool(config.workers),
    )


@kopf.on.login()
async def login(memo: kopf.Memo, **kwargs: Any) -> kopf.AiohttpSession | None:
    """kopf's own login (in cluster, else the kubeconfig), in a session with a bounded pool.

    kopf's session opens a connection for every request in flight (no limit): a thousand resources mean
    a thousand connections at start, each with a 256 KiB TLS buffer, and a burst the API server answers
    with 429. Bounded, requests queue in the client. Each watch holds a connection for good: room for them."""
    info = kopf.login_via_client(**kwargs)
    if info is None:
        return None
    config: Settings = memo["settings"]
    watches = len(PLURALS) * max(1, len(config.namespaces))
    connector = aiohttp.TCPConnector(limit=watches + KOPF_REQUESTS, ssl=info.as_ssl_context())
    session = aiohttp.ClientSession(connector=connector, headers=info.as_http_headers(), trust_env=info.trust_env)
    return kopf.AiohttpSession(
        aiohttp_session=session, server=info.server, default_namespace=info.default_namespace, priority=info.priority
    )


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    rt = memo.get("runtime")
    if rt is not None:
        rt.closing = True
        if isinstance(rt.kube, Kube) and rt.kube.secrets is not None:
            rt.kube.secrets.stop()
        if rt.writes:  # a write already sent finishes and is recorded; closing the clients now would cut it
            await asyncio.wait(set(rt.writes), timeout=WRITE_DRAIN_S)
        await rt.emqx.aclose()
        await rt.cdn.aclose()


# --- indices: who names which Secret, which remote target ------------------------------------


def _claim(namespace: str | None, name: str, meta: Mapping[str, Any]) -> Claim:
    return Claim(str(meta.get("creationTimestamp") or ""), str(namespace), name)


def _secrets_of(spec: Mapping[str, Any]) -> list[str]:
    names = [(spec.get("credentialsSecretRef") or {}).get("name"), spec.get("secretName")]
    names.append((spec.get("clientCA") or {}).get("secretName"))
    return [n for n in names if n]


def _secret_index(plural: str) -> None:
    @kopf.index(GROUP, VERSION, plural, id=f"{plural}_by_secret")
    def by_secret(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[tuple[str, str], str]:
        return {(str(namespace), s): name for s in _secrets_of(spec)}


for _plural in PLURALS:
    _secret_index(_plural)


def _as_passes_see_it(
    plural: str, namespace: str | None, spec: Mapping[str, Any], memo: kopf.Memo
) -> Mapping[str, Any]:
    """The spec a pass works with: through an account, the account's endpoint and CDN account, so that the index
    keys a target as the pass asks for it (two resources naming one deployment through an account see each other).
    Indexed when the resource changes: an account's later change of endpoint reaches the key at its next event."""
    rt = memo.get("runtime")
    if accounts.account_name(spec) is None or not isinstance(rt, Runtime):
        return spec
    book = rt.accounts
    name, where = accounts.account_name(spec) or "", str(namespace)
    resolved = accounts.resolve(plural, where, spec, book.account(name), book.namespace_labels(where))
    return spec if isinstance(resolved, Problem) else accounts.effective_spec(spec, resolved)


@kopf.index(GROUP, VERSION, "deploymenttlses")
def dtls_targets(
    namespace: str | None, name: str, spec: kopf.Spec, meta: kopf.Meta, memo: kopf.Memo, **_: Any
) -> dict[str, Claim]:
    seen = _as_passes_see_it("deploymenttlses", namespace, spec, memo)
    return {deploymenttls.target_of(seen): _claim(namespace, name, meta)}


@kopf.index(GROUP, VERSION, "cdncertificates")
def cdn_targets(
    namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, memo: kopf.Memo,
    **_: Any,
) -> dict[str, Claim]:  # fmt: skip
    seen = _as_passes_see_it("cdncertificates", namespace, spec, memo)
    target = cdncertificate.target_of(seen)
    seq = spec.get("seq") or (status.get("seq") if status.get("target") == target else None)
    claim = _claim(namespace, name, meta)
    keys = {target_key(target, str(seq)): claim} if seq else {}
    keys.update(dict.fromkeys(cdnbindings.index_keys(target, seen), claim))  # each CDN resource of spec.bindTo
    return keys


@kopf.index(GROUP, VERSION, "letsencryptorders")
def le_targets(
    namespace: str | None, name: str, spec: kopf.Spec, meta: kopf.Meta, memo: kopf.Memo, **_: Any
) -> dict[str, Claim]:
    seen = _as_passes_see_it("letsencryptorders", namespace, spec, memo)
    return {letsencryptorder.target_of(seen): _claim(namespace, name, meta)}


@kopf.index(GROUP, VERSION, "letsencryptorders")
def le_inflight(
    namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, memo: kopf.Memo,
    **_: Any,
) -> dict[str, Claim]:  # fmt: skip
    if not spec.get("resourceId") or not letsencryptorder.inflight(status):
        return {}
    seen = _as_passes_see_it("letsencryptorders", namespace, spec, memo)
    return {letsencryptorder.account_of(seen): _claim(namespace, name, meta)}


def _login_index(plural: str) -> None:
    @kopf.index(GROUP, VERSION, plural, id=f"{plural}_logins")
    def logins(namespace: str | None, spec: kopf.Spec, status: kopf.Status, **_: Any) -> dict[tuple[str, str], Any]:
        state, secret = status.get("cdnLogin"), (spec.get("credentialsSecretRef") or {}).get("name")
        return {(str(namespace), str(secret)): dict(state)} if state and secret else {}


for _plural in ("cdncertificates", "letsencryptorders"):
    _login_index(_plural)


def _login_states(indices: Mapping[str, Any]) -> Callable[[str, str], list[Mapping[str, Any]]]:
    def states(namespace: str, secret: str) -> list[Mapping[str, Any]]:
        found: list[Mapping[str, Any]] = []
        for plural in ("cdncertificates", "letsencryptorders"):
            found.extend(indices[f"{plural}_logins"].get((namespace, secret), []))
        return found

    return states


def _owners(indices: Mapping[str, Any]) -> Callable[[str, str], list[Claim]]:
    by_plural = {
        "deploymenttlses": indices["dtls_targets"],
        "cdncertificates": indices["cdn_targets"],
        "letsencryptorders": indices["le_targets"],
        letsencryptorder.INFLIGHT: indices["le_inflight"],
    }

    def owners(plural: str, key: str) -> list[Claim]:
        return list(by_plural[plural].get(key, []))

    return owners


# --- what wakes a resource's daemon ----------------------------------------------------------


def _on_resource_event(plural: str) -> None:
    @kopf.on.event(GROUP, VERSION, plural)
    async def resource_event(
        namespace: str | None, name: str, meta: kopf.Meta, memo: kopf.Memo, **indices: Any
    ) -> None:
        """Wake the daemon on a spec change or a new requested-at; status patches (ours) do not count."""
        w = wakes(memo)
        w.by_secret = {p: indices[f"{p}_by_secret"] for p in PLURALS}
        key = (plural, str(namespace), name)
        seen = (meta.get("generation"), meta.annotations.get(REQUESTED_AT))
        before = w.seen.get(key)
        w.seen[key] = seen
        if before is not None and before != seen:
            if before[1] != seen[1]:
                w.forced.add(key)
            w.wake(key)


for _plural in PLURALS:
    _on_resource_event(_plural)


# --- the daemons -----------------------------------------------------------------------------


def _resource(plural: str, body: kopf.Body, local: dict[str, Any], forced: bool = False) -> Resource:
    meta = body.metadata
    return Resource(
        plural=plural, namespace=str(meta.namespace), name=str(meta.name), uid=str(meta.uid or ""),
        generation=int(meta.get("generation", 0)), created=str(meta.get("creationTimestamp") or ""),
        spec=body.spec, watched=body.status, local=local, forced=forced,
    )  # fmt: skip


async def one_pass(
    rt: Runtime, r: Resource, failures: int, stopping: Callable[[], bool] = lambda: False
) -> tuple[float | None, int]:
    """Run the kind's controller and keep what the CDN client learnt of its login, whatever the outcome."""
    try:
        return await _one_pass(rt, r, failures, stopping)
    finally:
        with contextlib.suppress(KubeError):
            await cdncertificate.keep_login_state(rt, r)


async def _one_pass(rt: Runtime, r: Resource, failures: int, stopping: Callable[[], bool]) -> tuple[float | None, int]:
    """Run the kind's controller; every exception ends in a condition and a retry time, except while the
    operator stops: a pass cut short by the stop leaves the status as the last whole pass recorded it."""
    if rt.closing:  # the clients are closing or closed: a pass could only fail
        return None, failures
    try:
        return await SYNCS[r.plural](rt, r), 0
    except RemoteError as error:
        state, delay = state_for_error(error, failures)
    except KubeError as error:
        if isinstance(error, ResourceGone):
            raise
        delay = jittered(poll_delay(failures), random.random()) if error.transient else error.retry_after
        state = State("reconciling" if error.transient else "stalled", error.reason, error.message)
    except Exception as error:  # a bug or an unforeseen answer: say so, back off, keep the traceback in the log
        if stopping() or rt.closing:
            log.info("%s %s/%s: pass cut short by the stop (%s); status left as it was", KINDS[r.plural],
                     r.namespace, r.name, type(error).__name__, extra={"k8s_ref": r.log_ref})  # fmt: skip
            return None, failures
        log.exception("%s %s/%s: unexpected error in a pass", KINDS[r.plural], r.namespace, r.name,
                      extra={"k8s_ref": r.log_ref})  # fmt: skip
        delay = jittered(poll_delay(failures), random.random())
        state = State("reconciling", "InternalError", f"unexpected {type(error).__name__}; retrying in {delay:.0f}s")
    try:
        await finish(rt, r, state, {}, delay)
    except KubeError:
        log.warning("%s %s/%s: could not record %s", KINDS[r.plural], r.namespace, r.name, state.reason)
    return delay, failures + 1


def _daemon(plural: str) -> None:
    @kopf.daemon(GROUP, VERSION, plural, cancellation_timeout=60.0)
    async def run(body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo, **indices: Any) -> None:
        rt, w = runtime(memo), wakes(memo)
        key = (plural, str(body.metadata.namespace), str(body.metadata.name))
        wake = w.events.setdefault(key, asyncio.Event())
        local: dict[str, Any] = {}
        failures = 0
        # Before waiting for a worker: a status-less resource must not read as healthy meanwhile. A failure
        # here is the first pass's to meet again (and a deleted resource ends the loop there).
        with contextlib.suppress(KubeError):
            await first_sight(rt, _resource(plural, body, local))
        while not stopped and not rt.closing:
            wake.clear()
            forced = key in w.forced
            w.forced.discard(key)
            rt.owners, rt.login_states = _owners(indices), _login_states(indices)
            try:  # a worker of the namespace's turn; lent out while the pass waits on a remote
                async with rt.workers.serve(key[1]):
                    resource = _resource(plural, body, local, forced)
                    delay, failures = await one_pass(rt, resource, failures, lambda: bool(stopped))
            except ResourceGone:
                break
            await _sleep(wake, stopped, delay)
        if stopped.reason is not None and kopf.DaemonStoppingReason.RESOURCE_DELETED in stopped.reason:
            w.forget(key)  # the deletion handler, which runs after this, drops the rest (it needs the credentials)


async def _sleep(wake: asyncio.Event, stopped: kopf.DaemonStopped, delay: float | None) -> None:
    """Until the requeue time, a wake, or the daemon's stop, whichever comes first."""
    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())]
    try:
        await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


for _plural in PLURALS:
    _daemon(_plural)


# --- deletion --------------------------------------------------------------------------------


def _on_delete(plural: str) -> None:
    @kopf.on.delete(GROUP, VERSION, plural)
    async def delete(body: kopf.Body, memo: kopf.Memo, retry: int, **indices: Any) -> None:
        """`Orphan` sends nothing; `Delete` removes what this resource wrote, within a bounded time."""
        rt = runtime(memo)
        rt.owners, rt.login_states = _owners(indices), _login_states(indices)
        r = _resource(plural, body, {})
        remoteaccount.resolve_spec(rt, r)  # through an account: its endpoint and Secret (a refused one removes nothing)
        tenant = fairshare.NAMESPACE.set(r.namespace)  # its remote calls take their tenant's turn, not everyone's
        try:
            again = await deletion.delete(rt, r, body.metadata.get("deletionTimestamp"), retry)
        except KubeError as error:
            raise kopf.TemporaryError(error.message, delay=poll_delay(retry)) from None
        finally:
            fairshare.NAMESPACE.reset(tenant)
        if again is not None:
            raise kopf.TemporaryError("removing the remote certificate; retrying", delay=again)
        rt.metrics.forget(KINDS[plural], r.namespace, r.name)
        rt.forget(r.key)
        wakes(memo).forget(r.key)


for _plural in PLURALS:
    _on_delete(_plural)


# --- ClusterRemoteAccounts: platform-owned accounts ---------------------------------------------
# Indices of the accounts, of the namespaces' labels (what an account's namespaceSelector matches) and of who
# names which account; the account's own status pass; every resource naming an account is woken when the
# account, its Secret or its namespace's labels change. A resource's pass sees the account's endpoint and
# Secret through `remoteaccount.sync_through_account`, wrapped around each kind's controller here.

ACCOUNT_USERS = {p: f"{p}_by_account" for p in PLURALS}


def _account_key(name: str) -> tuple[str, str, str]:
    return (accounts.PLURAL, "", name)


@kopf.index(GROUP, VERSION, accounts.PLURAL, id="remote_accounts")
def remote_accounts(name: str, spec: kopf.Spec, status: kopf.Status, **_: Any) -> dict[str, dict[str, Any]]:
    """The account's spec, and its CDN login state: what its users restore (written by the operator alone)."""
    return {name: {"spec": dict(spec), "cdnLogin": status.get("cdnLogin")}}


@kopf.index("", "v1", "namespaces", id="namespace_labels")
def namespace_labels(name: str, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, str]]:
    return {name: dict(labels)}


def _users_index(plural: str) -> None:
    @kopf.index(GROUP, VERSION, plural, id=ACCOUNT_USERS[plural])
    def by_account(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[str, tuple[str, str]]:
        account = accounts.account_name(spec)
        return {account: (str(namespace), name)} if account else {}


for _plural in PLURALS:
    _users_index(_plural)


def _bind_accounts(memo: kopf.Memo, indices: Mapping[str, Any]) -> accounts.AccountBook:
    """The book reads kopf's live indices: bound at every event (the same objects each time)."""
    book = remoteaccount.book_of(runtime(memo))
    users = {p: indices[ACCOUNT_USERS[p]] for p in PLURALS}
    book.bind(indices["remote_accounts"], indices["namespace_labels"], users)
    return book


def _wake_users(memo: kopf.Memo, users: list[tuple[str, str, str]]) -> None:
    w = wakes(memo)
    for key in users:
        w.wake(key)


def _on_account_user_event(plural: str) -> None:
    @kopf.on.event(GROUP, VERSION, plural, id=f"{plural}_account_book")
    async def account_user_event(memo: kopf.Memo, **indices: Any) -> None:
        """Before a resource's daemon starts (kopf spawns it after the event handlers): the book is bound."""
        _bind_accounts(memo, indices)


for _plural in PLURALS:
    _on_account_user_event(_plural)


@kopf.on.startup(id="remote_accounts_secret_wakes")
async def account_secret_wakes(memo: kopf.Memo, **_: Any) -> None:
    """A change of an account's credentials Secret wakes the account (one new proof) and its users: the
    Secret watch's callback is chained, so a resource's own Secrets keep waking it as before."""
    rt = runtime(memo)
    store = rt.kube.secrets if isinstance(rt.kube, Kube) else None
    if store is None:
        return
    before = store.notify

    def notify(namespace: str, name: str) -> None:
        before(namespace, name)
        book = remoteaccount.book_of(rt)
        for account in book.accounts_of_secret(namespace, name):
            wakes(memo).wake(_account_key(account))
            _wake_users(memo, book.users_of(account))

    store.notify = notify


@kopf.on.event(GROUP, VERSION, accounts.PLURAL, id="remote_account_changed")
async def account_changed(name: str, memo: kopf.Memo, **indices: Any) -> None:
    """An account created, changed or deleted: its users look again (allowed or not, missing or not)."""
    book = _bind_accounts(memo, indices)
    wakes(memo).wake(_account_key(name))
    _wake_users(memo, book.users_of(name))


@kopf.on.event("", "v1", "namespaces", id="namespace_labels_changed")
async def namespace_changed(name: str, labels: kopf.Labels, memo: kopf.Memo, **indices: Any) -> None:
    """A namespace's labels changed: its resources naming an account look again (a selector may match now)."""
    book = _bind_accounts(memo, indices)
    w = wakes(memo)
    seen = (None, dict(labels))
    before = w.seen.get(("namespaces", "", name))
    w.seen[("namespaces", "", name)] = seen
    if before is not None and before != seen:
        _wake_users(memo, book.users_in(name))


@kopf.daemon(GROUP, VERSION, accounts.PLURAL, id="remote_account", cancellation_timeout=60.0)
async def account_daemon(body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo, **indices: Any) -> None:
    """The account's status pass: once per generation and credentials Secret version, then on a wake."""
    rt, w = runtime(memo), wakes(memo)
    _bind_accounts(memo, indices)
    name = str(body.metadata.name)
    key = _account_key(name)
    wake = w.events.setdefault(key, asyncio.Event())
    status: dict[str, Any] = dict(body.status)
    failures = 0
    while not stopped and not rt.closing:
        wake.clear()
        account = remoteaccount.Account(name, str(body.metadata.uid or ""), int(body.metadata.get("generation", 0)),
                                        body.spec, status)  # fmt: skip
        try:
            delay = await remoteaccount.prove(rt, account, failures)
            failures = 0 if account.status.get("credentialsId") else failures + 1
        except ResourceGone:
            break
        except (KubeError, RemoteError) as error:
            log.warning("ClusterRemoteAccount %s: %s", name, error)
            delay, failures = jittered(poll_delay(failures), random.random()), failures + 1
        await _sleep(wake, stopped, delay)
    w.forget(key)


for _plural in PLURALS:
    SYNCS[_plural] = functools.partial(remoteaccount.sync_through_account, sync=SYNCS[_plural])
