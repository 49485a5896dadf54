"""The Secret store: metadata-only watching, bodies read again only when their version moved."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import kubernetes
import pytest
from certsync import secretwatch
from certsync.kube import Kube as KubeLayer
from certsync.reconcile import SecretView
from certsync.secretwatch import SecretStore

from devkit.kube import Kube


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
    s._replace("ns", {("ns", "read-early"): "2", ("ns", "untouched"): "5"})
    assert changed == [("ns", "read-early")]
    assert s.fresh("ns", "read-early") is None and "read-early" not in {k[1] for k in s.bodies}


def test_a_relist_reports_what_moved_or_vanished_while_nobody_watched() -> None:
    changed: list[tuple[str, str]] = []
    s = store(changed)
    s._replace("ns", {("ns", "same"): "1", ("ns", "moved"): "1", ("ns", "gone"): "1"})
    s.keep("ns", "moved", view("1"))
    s._replace("ns", {("ns", "same"): "1", ("ns", "moved"): "7", ("ns", "new"): "8"})
    assert sorted(changed) == [("ns", "gone"), ("ns", "moved"), ("ns", "new")]
    assert s.fresh("ns", "moved") is None and s.fresh("ns", "gone") is None


def test_watch_events_move_versions_and_drop_stale_bodies() -> None:
    changed: list[tuple[str, str]] = []
    s = store(changed)
    s._replace("ns", {("ns", "a"): "1"})
    s.keep("ns", "a", view("1"))
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


def test_an_expired_watch_is_told_apart_from_a_failure() -> None:
    lines = iter(['{"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}}'])
    with pytest.raises(secretwatch.Expired):
        list(secretwatch._events(lines))
    with pytest.raises(RuntimeError, match="watch error 500"):
        list(secretwatch._events(iter(['{"type": "ERROR", "object": {"code": 500, "reason": "x"}}'])))


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

    async def counted(ns: str, name: str) -> SecretView | None:
        nonlocal reads
        reads += 1
        return await real_read(ns, name)

    layer._read_secret = counted  # type: ignore[method-assign]
    s.start()
    try:
        await until("the first list", lambda: namespace in s.synced)
        assert {name for ns, name in s.versions if ns == namespace} >= {"watched", *(f"other-{n}" for n in range(20))}
        assert all(isinstance(v, str) for v in s.versions.values())  # versions only: no body crosses the watch
        first = await layer.read_secret(namespace, "watched")
        again = await layer.read_secret(namespace, "watched")
        assert first is not None and first.data["value"] == b"one" and again is first and reads == 1

        kube.kubectl("patch", "secret", "watched", "-n", namespace, "-p", '{"stringData": {"value": "two"}}')
        await until("the change", lambda: (namespace, "watched") in changed)
        after = await layer.read_secret(namespace, "watched")
        assert after is not None and after.data["value"] == b"two" and reads == 2
        assert await layer.read_secret(namespace, "watched") is after and reads == 2

        kube.kubectl("delete", "secret", "watched", "-n", namespace)
        await until("the deletion", lambda: changed.count((namespace, "watched")) == 2)
        assert await layer.read_secret(namespace, "watched") is None and reads == 3
    finally:
        stopping = time.monotonic()
        s.stop()  # must not wait for the server to end the watch (240 s): the operator's stop waits on it
        for thread in s._threads:
            thread.join(timeout=20)
        stopped_after = time.monotonic() - stopping
        api.close()
    assert stopped_after < 20 and not [t.name for t in s._threads if t.is_alive()]
