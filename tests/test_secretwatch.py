"""The Secret store: metadata-only watching, bodies read again only when their version moved."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import kubernetes
import pytest
from certsync import secretwatch
from certsync.kube import Kube as KubeLayer
from certsync.reconcile import TLS_KEYS, SecretView
from certsync.secretwatch import SecretStore

from devkit.kube import Kube

VALUE = ("value",)  # the key of the Secrets these tests create


def view(version: str, value: bytes = b"x") -> SecretView:
    return SecretView("kubernetes.io/tls", {"tls.crt": value}, uid="u", version=version)


def store(changed: list[tuple[str, str]], namespaces: tuple[str, ...] = ("ns",)) -> SecretStore:
    return SecretStore(namespaces, lambda ns, name: changed.append((ns, name)))


def test_nothing_is_served_before_the_first_list_nor_after_the_watch_failed() -> None:
    changed: list[tuple[str, str]] = []
    s = store(changed)
    s.keep("ns", "a", view("1"))
    assert s.fresh("ns", "a") is None  # not synced: a pass reads the API server
    s._replace("ns", {("ns", "a"): "1"})
    assert s.fresh("ns", "a") == view("1") and changed == []
    s.synced.discard("ns")  # what the thread does when its watch fails
    assert s.fresh("ns", "a") is None


def test_a_secret_changed_between_a_pass_and_the_first_list_wakes_its_resources() -> None:
    changed: list[tuple[str, str]] = []
    s = store(changed)
    s.keep("ns", "read-early", view("1"))  # a first pass read version 1
    s.keep("ns", "read-current", view("4"))  # another read the version the list has: nothing to report
    s._replace("ns", {("ns", "read-early"): "2", ("ns", "read-current"): "4", ("ns", "unread"): "5"})
    assert sorted(changed) == [("ns", "read-early"), ("ns", "unread")]  # only resources naming them are woken
    assert s.fresh("ns", "read-early") is None and "read-early" not in {k[1] for k in s.bodies}


def test_a_relist_reports_what_moved_or_vanished_while_nobody_watched() -> None:
    changed: list[tuple[str, str]] = []
    s = store(changed)
    s._replace("ns", {("ns", "same"): "1", ("ns", "moved"): "1", ("ns", "gone"): "1"})
    s.keep("ns", "moved", view("1"))
    changed.clear()
    s._replace("ns", {("ns", "same"): "1", ("ns", "moved"): "7", ("ns", "new"): "8"})
    assert sorted(changed) == [("ns", "gone"), ("ns", "moved"), ("ns", "new")]
    assert s.fresh("ns", "moved") is None and s.fresh("ns", "gone") is None


def test_watch_events_move_versions_and_drop_stale_bodies() -> None:
    changed: list[tuple[str, str]] = []
    s = store(changed)
    s._replace("ns", {("ns", "a"): "1"})
    s.keep("ns", "a", view("1"))
    changed.clear()
    s._changed(("ns", "a"), "1")  # the same version again (a relist overlap): no wake
    assert changed == [] and s.fresh("ns", "a") is not None
    s._changed(("ns", "a"), "2")
    assert changed == [("ns", "a")] and s.fresh("ns", "a") is None and not s.bodies
    s._changed(("ns", "a"), None)
    assert changed == [("ns", "a"), ("ns", "a")] and ("ns", "a") not in s.versions


def test_kept_bodies_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secretwatch, "MAX_BODIES", 3)
    s = store([])
    s._replace("ns", {("ns", str(n)): "1" for n in range(5)})
    for n in range(5):
        s.keep("ns", str(n), view("1"))
    assert list(s.bodies) == [("ns", "2"), ("ns", "3"), ("ns", "4")]


def test_kept_bodies_are_bounded_in_bytes_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Count alone does not bound memory: large Secrets push the oldest out by their size."""
    monkeypatch.setattr(secretwatch, "MAX_BODY_BYTES", 3000)
    s = store([])
    s._replace("ns", {("ns", str(n)): "1" for n in range(5)})
    for n in range(5):
        s.keep("ns", str(n), SecretView("kubernetes.io/tls", {"tls.crt": b"x" * 993}, version="1"))  # 1000 bytes
    assert list(s.bodies) == [("ns", "2"), ("ns", "3"), ("ns", "4")] and s.body_bytes == 3000
    s.keep("ns", "4", SecretView("kubernetes.io/tls", {"tls.crt": b"x" * 1993}, version="1"))  # replaced: 2000
    assert list(s.bodies) == [("ns", "3"), ("ns", "4")] and s.body_bytes == 3000
    s._changed(("ns", "4"), "2")  # a new version drops the old body, and its bytes
    assert list(s.bodies) == [("ns", "3")] and s.body_bytes == 1000


def test_an_expired_watch_is_told_apart_from_a_failure() -> None:
    lines = iter(['{"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}}'])
    with pytest.raises(secretwatch.Expired):
        list(secretwatch._events(lines))
    with pytest.raises(RuntimeError, match="watch error 500"):
        list(secretwatch._events(iter(['{"type": "ERROR", "object": {"code": 500, "reason": "x"}}'])))


# --- what the reviewer found: every change between a pass and a list is reported ----------------------------


def test_a_secret_created_after_a_pass_found_it_missing_wakes_at_the_first_list() -> None:
    """Startup: a pass reads Secret `tls` (not synced yet, so a real read) -> 404 -> SecretNotFound (stalled, waits
    for the Secret to change). The Secret is created (cert-manager) before the first list reaches it: the list
    is applied in 'first' mode, which notifies only Secrets whose body was kept -> no wake, ever."""
    changed: list[tuple[str, str]] = []
    s = store(changed)
    # the pass: fresh() is None (not synced), _read_secret -> None (404), nothing kept
    assert s.fresh("ns", "tls") is None
    s._replace("ns", {("ns", "tls"): "7"})  # the first list sees the new Secret
    assert ("ns", "tls") in changed, "resource stuck at SecretNotFound: nobody is woken"


def test_a_secret_deleted_between_a_pass_and_the_first_list_wakes() -> None:
    changed: list[tuple[str, str]] = []
    s = store(changed)
    s.keep("ns", "tls", view("1"))  # a first pass read and kept version 1
    s._replace("ns", {})  # the Secret was deleted before the first list
    assert ("ns", "tls") in changed, "deletion before the first list is never reported"


def test_a_relist_after_a_failure_in_an_empty_namespace_reports_new_secrets() -> None:
    """Namespace-scoped operator, namespace empty at start. The watch fails (API server restart), `synced` is
    discarded; meanwhile the Secret is created; the relist is taken for a *first* list (nothing known in the
    scope) -> no wake."""
    changed: list[tuple[str, str]] = []
    s = store(changed)
    s._replace("ns", {})  # first list: empty namespace
    s.synced.discard("ns")  # what _run does on a watch failure
    s._replace("ns", {("ns", "tls"): "9"})  # relist after the backoff
    assert ("ns", "tls") in changed, "a Secret created while the watch was down is never reported"


async def test_a_read_in_flight_during_the_first_list_is_woken_to_see_the_newer_version() -> None:
    """A pass's read is in flight when the first list is applied; the Secret moved meanwhile. The read returns
    the old body (kept), the list's version is newer: no wake, and the pass reconciles the old certificate."""
    changed: list[tuple[str, str]] = []
    s = store(changed)
    layer = KubeLayer(secrets=s)
    gate = asyncio.Event()

    async def slow_read(ns: str, name: str, keys: frozenset[str]) -> SecretView | None:
        await gate.wait()  # the GET was answered before the update, the answer is processed later
        return view("1", b"old")

    layer._read_secret = slow_read  # type: ignore[method-assign]
    read = asyncio.create_task(layer.read_secret("ns", "tls", TLS_KEYS))
    await asyncio.sleep(0)
    s._replace("ns", {("ns", "tls"): "2"})  # first list: the Secret is at version 2 now
    gate.set()
    got = await read
    assert got is not None and got.version == "1"  # the pass goes on with version 1 ...
    assert ("ns", "tls") in changed, "... and is never woken to see version 2"


# --- stop() racing a watch being opened -------------------------------------------------------------------------


class _Resp:
    def __init__(self) -> None:
        self.closed = threading.Event()

    def shutdown(self) -> None:
        self.closed.set()

    def release_conn(self) -> None:
        pass

    def lines(self) -> Any:
        self.closed.wait(5.0)  # a real watch: blocks until data, the server's timeout, or shutdown
        return iter(())


class _Page:
    def read(self) -> bytes:
        return json.dumps({"items": [], "metadata": {"resourceVersion": "1"}}).encode()

    def release_conn(self) -> None:
        pass


class _Http:
    def __init__(self, opened: threading.Event, proceed: threading.Event) -> None:
        self.opened, self.proceed = opened, proceed

    def open(self, method: str, url_path: str, *, query: dict[str, Any], **_: Any) -> Any:
        if not query.get("watch"):
            return _Page()
        self.opened.set()  # the watch request is sent; the answer's headers are on their way
        self.proceed.wait(5.0)
        return _Resp()


async def test_a_stop_while_a_watch_is_being_opened_ends_the_thread_soon(monkeypatch: Any) -> None:
    monkeypatch.setattr(secretwatch, "iter_resp_lines", lambda response: response.lines())
    opened, proceed = threading.Event(), threading.Event()
    s = store([])
    s.http = _Http(opened, proceed)  # type: ignore[assignment]
    s.start()
    assert await asyncio.to_thread(opened.wait, 5.0)
    s.stop()  # the operator stops now: no response registered yet, nothing is shut down
    proceed.set()  # the watch's headers arrive just after
    started = time.monotonic()
    await asyncio.to_thread(s._threads[0].join, 3.0)
    alive = s._threads[0].is_alive()
    assert not alive, f"watch thread still reading {time.monotonic() - started:.1f}s after stop (a real watch: 240 s)"


# --- against the control plane ---------------------------------------------------------------------------------


async def until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def secret(name: str, value: str, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
            "stringData": {"value": value}, **extra}  # fmt: skip


async def test_the_watch_sees_every_change_and_reads_happen_only_after_one(
    kube: Kube, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(secretwatch, "PAGE", 7)  # the first list takes several pages
    kube.kubectl("create", "-n", namespace, "secret", "generic", "watched", "--from-literal=value=one")
    for n in range(20):
        kube.kubectl("create", "-n", namespace, "secret", "generic", f"other-{n}", "--from-literal=value=x")
    changed: list[tuple[str, str]] = []
    api = kubernetes.config.new_client_from_config(config_file=str(kube.kubeconfig))  # type: ignore[no-untyped-call]
    s = SecretStore((namespace,), lambda ns, name: changed.append((ns, name)), api_client=api)
    layer = KubeLayer(api, secrets=s)
    reads = 0
    real_read = layer._read_secret

    async def counted(ns: str, name: str, keys: frozenset[str]) -> SecretView | None:
        nonlocal reads
        reads += 1
        return await real_read(ns, name, keys)

    layer._read_secret = counted  # type: ignore[method-assign]
    s.start()
    try:
        await until("the first list", lambda: namespace in s.synced)
        await until("the first list's reports", lambda: (namespace, "watched") in changed)  # nobody had read it
        changed.clear()
        assert {name for ns, name in s.versions if ns == namespace} >= {"watched", *(f"other-{n}" for n in range(20))}
        assert all(isinstance(v, str) for v in s.versions.values())  # versions only: no body crosses the watch
        first = await layer.read_secret(namespace, "watched", VALUE)
        again = await layer.read_secret(namespace, "watched", VALUE)
        assert first is not None and first.data["value"] == b"one" and again is first and reads == 1
        # A pass asking for a key the kept read did not cover reads again, for both: the Secret serves either.
        both = await layer.read_secret(namespace, "watched", ["absent"])
        assert both is not None and both.read_for == {"value", "absent"} and reads == 2 and both.data == first.data
        assert await layer.read_secret(namespace, "watched", VALUE) is both and reads == 2
        reads = 1

        kube.kubectl("patch", "secret", "watched", "-n", namespace, "-p", '{"stringData": {"value": "two"}}')
        await until("the change", lambda: (namespace, "watched") in changed)
        after = await layer.read_secret(namespace, "watched", VALUE)
        assert after is not None and after.data["value"] == b"two" and reads == 2
        assert await layer.read_secret(namespace, "watched", VALUE) is after and reads == 2

        kube.kubectl("delete", "secret", "watched", "-n", namespace)
        await until("the deletion", lambda: changed.count((namespace, "watched")) == 2)
        assert await layer.read_secret(namespace, "watched", VALUE) is None and reads == 3
    finally:
        stopping = time.monotonic()
        s.stop()  # must not wait for the server to end the watch (240 s): the operator's stop waits on it
        for thread in s._threads:
            thread.join(timeout=20)
        stopped_after = time.monotonic() - stopping
        api.close()
    assert stopped_after < 20 and not [t.name for t in s._threads if t.is_alive()]


async def test_after_an_api_server_restart_the_watch_lists_again_and_sees_the_next_change(
    kube: Kube, namespace: str
) -> None:
    """The API server goes away under an open watch (etcd and the data stay): while it is gone nothing kept
    is served; once it is back the store lists again by itself and a change after that wakes its readers."""
    assert kube.plane is not None
    kube.kubectl("create", "-n", namespace, "secret", "generic", "watched", "--from-literal=value=one")
    changed: list[tuple[str, str]] = []
    api = kubernetes.config.new_client_from_config(config_file=str(kube.kubeconfig))  # type: ignore[no-untyped-call]
    s = SecretStore((namespace,), lambda ns, name: changed.append((ns, name)), api_client=api)
    layer = KubeLayer(api, secrets=s)
    s.start()
    try:
        await until("the first list", lambda: namespace in s.synced)
        assert (await layer.read_secret(namespace, "watched", VALUE)) is not None
        assert s.fresh(namespace, "watched") is not None
        await asyncio.to_thread(kube.plane.kill_apiserver)
        try:
            await until("the failed watch noticed", lambda: namespace not in s.synced)
            assert s.fresh(namespace, "watched") is None  # a body the store cannot vouch for is not served
        finally:
            await asyncio.to_thread(kube.plane.start_apiserver)
        await until("a new list after the restart", lambda: namespace in s.synced, timeout=90.0)
        changed.clear()
        kube.kubectl("patch", "secret", "watched", "-n", namespace, "-p", '{"stringData": {"value": "two"}}')
        await until("the change after the restart", lambda: (namespace, "watched") in changed)
        after = await layer.read_secret(namespace, "watched", VALUE)
        assert after is not None and after.data["value"] == b"two"
    finally:
        s.stop()
        for thread in s._threads:
            await asyncio.to_thread(thread.join, 20)
        api.close()


class _Stream:
    """A watch answer whose server ends it with an ERROR event, chunked body unfinished."""

    def __init__(self, lines: list[str]) -> None:
        self.lines_left, self.closed, self.released = lines, False, False

    def lines(self) -> Any:
        return iter(self.lines_left)

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        self.released = True


@pytest.mark.parametrize(
    ("lines", "raised"),
    [
        ([json.dumps({"type": "ERROR", "object": {"code": 410, "message": "too old"}})], secretwatch.Expired),
        ([json.dumps({"type": "ERROR", "object": {"code": 500, "reason": "InternalError"}})], RuntimeError),
        (["{not json"], ValueError),
    ],
)
def test_a_watch_that_ends_abnormally_never_hands_its_half_read_connection_back(
    monkeypatch: Any, lines: list[str], raised: type[Exception]
) -> None:
    """A pooled connection with an unread chunked body would make the next request on it fail (and be resent)."""
    monkeypatch.setattr(secretwatch, "iter_resp_lines", lambda response: response.lines())
    stream = _Stream(lines)

    class Http:
        def open(self, *_: Any, **__: Any) -> _Stream:
            return stream

    s = store([])
    s.http = Http()  # type: ignore[assignment]
    with pytest.raises(raised):
        s._watch("ns", "1")
    assert stream.closed and stream.released


def test_a_watch_the_server_ended_cleanly_goes_back_to_the_pool(monkeypatch: Any) -> None:
    monkeypatch.setattr(secretwatch, "iter_resp_lines", lambda response: response.lines())
    stream = _Stream([json.dumps({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}})])

    class Http:
        def open(self, *_: Any, **__: Any) -> _Stream:
            return stream

    s = store([])
    s.http = Http()  # type: ignore[assignment]
    assert s._watch("ns", "1") == "9"
    assert not stream.closed and stream.released
