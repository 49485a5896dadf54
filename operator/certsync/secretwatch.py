"""Which Secrets changed, learnt from a metadata-only list and watch: Secret data never reaches this process here.

A cluster's Secrets are mostly someone else's (Helm releases of 80 KB each, service tokens). Watching
them whole would make the operator's memory grow with all of them; asking the API server for
`PartialObjectMetadata` gives names and resourceVersions only. What the operator keeps is one
resourceVersion per Secret, and the parsed bodies of the Secrets its passes read; `Kube.read_secret`
reads a Secret's body again only when its version moved, and a change wakes the resources naming it.

The kubernetes client is synchronous: each watched namespace (or the whole cluster) has a thread that
lists (paginated), then watches from the list's version, and relists when the watch expires (410) or
fails. Everything the thread learns is applied on the event loop, so readers never race it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import kubernetes
from kubernetes.watch.watch import iter_resp_lines

from certsync.kubehttp import KubeHttp, Timeout, path
from certsync.reconcile import SecretView

log = logging.getLogger("certsync.secretwatch")
LIST_ACCEPT = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
WATCH_ACCEPT = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
MAX_BODIES = 4096  # Secrets read by passes whose bodies are kept (each resource names 1 to 3)
MAX_BODY_BYTES = 32 * 1024 * 1024  # and their decoded values, all together: the count alone does not bound memory
# Secrets per list page. Metadata is small for most Secrets, but annotations may reach 256 KiB each: a page is
# read and decoded in one piece, so it stays small (at most 25 x 256 KiB in flight per watched scope; measured,
# 100 Secrets with 200 KiB annotations each cost 25 MB of peak RSS with pages of 100).
PAGE = 25
WATCH_SECONDS = 240  # the server ends a watch after this; we relist-free resume from the last version
WATCH_TIMEOUT = (5.0, WATCH_SECONDS + 30.0)  # connect, read: the server ends the watch first
LIST_TIMEOUT = (5.0, 30.0)  # one page
Key = tuple[str, str]  # namespace, name
Notify = Callable[[str, str], None]


class Expired(Exception):
    """The watch's resourceVersion is too old (HTTP 410): list again."""


class SecretStore:
    """The resourceVersion of every Secret in the watched namespaces (a metadata-only watch keeps it current),
    and the bodies passes read, kept while their version holds."""

    def __init__(self, namespaces: Iterable[str], notify: Notify, api_client: Any = None) -> None:
        self.scopes = tuple(namespaces) or ("",)  # "": the whole cluster
        self.notify = notify
        if api_client is None:  # a pool of its own: each watch holds a connection for minutes
            configuration = kubernetes.client.Configuration.get_default_copy()
            configuration.connection_pool_maxsize = len(self.scopes) + 1
            api_client = kubernetes.client.ApiClient(configuration)
        self.http = KubeHttp(api_client)
        self.versions: dict[Key, str] = {}
        self.bodies: OrderedDict[Key, SecretView] = OrderedDict()
        self.body_bytes = 0  # the decoded size of every kept body
        self.synced: set[str] = set()  # scopes whose list was applied and whose watch has not failed since
        self._stop = threading.Event()
        self._responses: set[Any] = set()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- what passes ask --

    def fresh(self, namespace: str, name: str) -> SecretView | None:
        """The body read before, if the watch says it is still current; None means: read it."""
        if "" not in self.synced and namespace not in self.synced:
            return None
        key = (namespace, name)
        kept = self.bodies.get(key)
        if kept is None or not kept.version or self.versions.get(key) != kept.version:
            return None
        self.bodies.move_to_end(key)
        return kept

    def keep(self, namespace: str, name: str, view: SecretView) -> None:
        """Keep a body read by a pass, least recently used dropped first, within MAX_BODIES and MAX_BODY_BYTES."""
        key = (namespace, name)
        if key in self.bodies:
            self.body_bytes -= self.bodies[key].size
        self.bodies[key] = view
        self.body_bytes += view.size
        self.bodies.move_to_end(key)
        while len(self.bodies) > MAX_BODIES or self.body_bytes > MAX_BODY_BYTES:
            _, dropped = self.bodies.popitem(last=False)
            self.body_bytes -= dropped.size

    # -- life --

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for scope in self.scopes:
            thread = threading.Thread(target=self._run, args=(scope,), name=f"secret-watch:{scope or '*'}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Ends the threads soon: the socket of each open watch is shut down under its reader.

        Never `close()` here: it waits for the reading thread's buffer lock, which would block the event loop
        until the server ends the watch (minutes). `shutdown()` wakes the reader at once."""
        self._stop.set()
        for response in list(self._responses):
            try:
                response.shutdown()
            except Exception:  # the stream may be ending by itself meanwhile; the thread ends either way
                log.debug("shutting down a Secret watch failed", exc_info=True)

    # -- the thread --

    def _run(self, scope: str) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                version, listed = self._list(scope)
                self._apply(self._replace, scope, listed)
                failures = 0
                while not self._stop.is_set():
                    version = self._watch(scope, version)
            except Exception as error:
                if self._stop.is_set():
                    return
                failures += 1
                if isinstance(error, Expired) and failures == 1:
                    continue  # the usual end of an old watch: list again at once (a second one in a row waits)
                delay = min(30.0, 0.5 * 2 ** min(failures, 6))
                log.warning("watching Secrets%s failed (%s); listing again in %.1fs",
                            f" in {scope}" if scope else "", type(error).__name__, delay)  # fmt: skip
                self._apply(self.synced.discard, scope)
                self._stop.wait(delay)

    def _list(self, scope: str) -> tuple[str, dict[Key, str]]:
        listed: dict[Key, str] = {}
        token: str | None = None
        while True:
            query: dict[str, str | int | bool] = {"limit": PAGE}
            if token:
                query["continue"] = token
            response = self._call(scope, query, LIST_ACCEPT, LIST_TIMEOUT)
            try:
                body = json.loads(response.read())
            finally:
                response.release_conn()
            for item in body.get("items") or []:
                meta = item.get("metadata") or {}
                listed[(str(meta.get("namespace")), str(meta.get("name")))] = str(meta.get("resourceVersion"))
            token = (body.get("metadata") or {}).get("continue")
            if not token:
                return str((body.get("metadata") or {}).get("resourceVersion") or ""), listed

    def _watch(self, scope: str, version: str) -> str:
        """Follow one watch to its end; returns the last version seen (to resume from)."""
        query: dict[str, str | int | bool] = {
            "watch": True, "resourceVersion": version, "allowWatchBookmarks": True, "timeoutSeconds": WATCH_SECONDS,
        }  # fmt: skip
        response = self._call(scope, query, WATCH_ACCEPT, WATCH_TIMEOUT)
        self._responses.add(response)
        if self._stop.is_set():  # stop() ran while this watch was being opened: it did not see it
            response.shutdown()
        ended = False
        try:
            for kind, meta in _events(iter_resp_lines(response)):  # type: ignore[no-untyped-call]
                version = str(meta.get("resourceVersion") or version)
                if kind != "BOOKMARK":
                    key = (str(meta.get("namespace")), str(meta.get("name")))
                    self._apply(self._changed, key, None if kind == "DELETED" else version)
            ended = True
        finally:
            self._responses.discard(response)
            if not ended:  # a stream left half-read must not go back to the pool (this thread reads it: no lock)
                response.close()
            response.release_conn()
        return version

    def _call(self, scope: str, query: dict[str, str | int | bool], accept: str, timeout: Timeout) -> Any:
        """The list or watch answer, unread (the caller releases it)."""
        where = path("api", "v1", "namespaces", scope, "secrets") if scope else path("api", "v1", "secrets")
        try:
            return self.http.open("GET", where, query=query, headers={"Accept": accept}, timeout=timeout)
        except kubernetes.client.ApiException as error:
            if error.status == 410:
                raise Expired("the watched version is gone") from None
            raise

    def _apply(self, function: Callable[..., None], *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(function, *args)

    # -- on the event loop --

    def _replace(self, scope: str, listed: dict[Key, str]) -> None:
        """A fresh list: whatever moved while nobody watched counts as a change.

        Every Secret is reported unless a pass already read it at the listed version: at the first list
        that includes a Secret created after a pass found it missing, or changed while a pass read it.
        Reports reach only the resources naming a Secret, so the rest cost a dictionary lookup."""
        inside = {k for k in (*self.versions, *self.bodies) if not scope or k[0] == scope}
        for key in inside - listed.keys():
            self._changed(key, None)
        for key, version in listed.items():
            kept = self.bodies.get(key)
            if kept is not None and kept.version == version:
                self.versions[key] = version
            else:
                self._changed(key, version)
        self.synced.add(scope)

    def _changed(self, key: Key, version: str | None) -> None:
        if version is None:
            self.versions.pop(key, None)
        elif self.versions.get(key) == version:
            return
        else:
            self.versions[key] = version
        kept = self.bodies.get(key)
        if kept is not None and kept.version != version:
            self.body_bytes -= self.bodies.pop(key).size  # an old body is never served again: drop it now
        self.notify(*key)


def _events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(type, metadata) of each watch event; an ERROR event with 410 ends the watch with `Expired`."""
    for line in lines:
        if not line:
            continue
        event = json.loads(line)
        obj = event.get("object") or {}
        if event.get("type") == "ERROR":
            if obj.get("code") == 410:
                raise Expired(str(obj.get("message", "")))
            raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('reason')}")
        yield str(event.get("type")), obj.get("metadata") or {}
