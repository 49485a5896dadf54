"""The operator's own calls to the Kubernetes API: Secret reads, status patches and Events, each with a timeout.

The kubernetes client is synchronous; every call runs in a thread with a
request timeout so that a hung API server cannot hang a pass. Status patches
are retried with backoff: what a write did must be recorded, and the write
itself is never repeated because recording it failed. Events are counted as
client-go's recorder counts them: a repeat patches the Event posted before.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import logging
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import kubernetes

from certsync import pki
from certsync.kubehttp import AnswerTooLarge, KubeHttp, path
from certsync.reconcile import SecretView
from certsync.secretwatch import SecretStore

GROUP, VERSION = "certsync.io", "v1alpha1"
REQUEST_TIMEOUT = (5.0, 15.0)  # connect, read
# A referenced Secret larger than this (its JSON as the API server sends it) is refused before it is decoded.
MAX_SECRET_BYTES = 512 * 1024
STATUS_ATTEMPTS = 6  # about a minute of backoff before a pass gives up on recording
SECRET_FORBIDDEN_RETRY_S = 300.0  # RBAC is fixed outside any input the operator watches: look again this often
EVENT_WINDOW_S = 600.0  # client-go's EventCorrelator: a repeat within 10 minutes counts on the Event posted before
EVENT_CACHE = 4096  # client-go's LRU size: the Events remembered for counting
EVENT_LOCKS = 64  # stripes serialising posts of the same Event (hash of its key); different Events rarely wait
EVENT_MESSAGE = 1024
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}
log = logging.getLogger("certsync.kube")
EventKey = tuple[str, str, str, str, str, str, str]  # namespace, kind, name, uid, type, reason, message


class KubeError(Exception):
    """A Kubernetes API call failed; `reason` is the condition reason a pass reports.

    A permanent error waits for an input to change, or `retry_after` seconds when nothing the operator
    watches would tell it (RBAC)."""

    def __init__(self, reason: str, message: str, *, transient: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.transient = transient
        self.retry_after = retry_after


class ResourceGone(KubeError):
    """The resource itself no longer exists: nothing to record any more."""

    def __init__(self, message: str) -> None:
        super().__init__("Gone", message, transient=False)


@dataclass(frozen=True)
class ObjectRef:
    """Enough of a resource to patch its status and post Events about it."""

    plural: str
    kind: str
    namespace: str
    name: str
    uid: str


class KubeLayer(Protocol):
    async def read_secret(self, namespace: str, name: str, keys: Iterable[str]) -> SecretView | None: ...

    async def patch_status(self, ref: ObjectRef, status: Mapping[str, Any]) -> None: ...

    async def event(self, ref: ObjectRef, type_: str, reason: str, message: str) -> None: ...

    async def read_certificate(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...


@dataclass
class PostedEvent:
    """An Event this process posted: what a repeat of it patches."""

    name: str
    count: int
    last: dt.datetime


class Kube:
    """The real layer, on the kubernetes client's configuration loaded at startup."""

    def __init__(
        self,
        api_client: Any = None,
        secrets: SecretStore | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        event_cache: int = EVENT_CACHE,
        required_label: tuple[str, str] | None = None,
    ) -> None:
        # CERTSYNC_SECRET_LABEL: only Secrets carrying this label are used, so that whoever may create the kinds
        # but not read a Secret cannot have its key pushed to an account of their own.
        self.required_label = required_label
        self.http = KubeHttp(api_client)
        self.custom: Any = kubernetes.client.CustomObjectsApi(self.http.client)
        self.secrets = secrets
        self.clock = clock
        self.event_cache = event_cache
        self.events: OrderedDict[EventKey, PostedEvent] = OrderedDict()  # least recently posted first
        self.patch_events = True  # False once RBAC refused a patch: every Event is then posted anew
        # The same Event from two passes at once: one posts, the other counts on it (never two posts, and no
        # count lost to two patches of the same value). Striped: a fixed set of locks, whatever the Events.
        self._event_locks = [asyncio.Lock() for _ in range(EVENT_LOCKS)]

    async def read_secret(self, namespace: str, name: str, keys: Iterable[str]) -> SecretView | None:
        """The Secret's `keys` (those present; the others are dropped as soon as read): kept from an earlier read
        while the Secret watch says it has not changed and that read covered these keys."""
        wanted = frozenset(keys)
        kept = self.secrets.fresh(namespace, name) if self.secrets else None
        if kept is not None and kept.serves(wanted):
            return kept
        if kept is not None and kept.read_for is not None:
            wanted |= kept.read_for  # the same Secret serves passes of several shapes (TLS and client CA)
        view = await self._read_secret(namespace, name, wanted)
        if view is not None and self.secrets is not None:
            self.secrets.keep(namespace, name, view)
        return view

    async def _read_secret(self, namespace: str, name: str, keys: frozenset[str]) -> SecretView | None:
        try:
            secret = await asyncio.to_thread(
                self.http.json, "GET", path("api", "v1", "namespaces", namespace, "secrets", name),
                timeout=REQUEST_TIMEOUT, max_bytes=MAX_SECRET_BYTES,
            )  # fmt: skip
        except AnswerTooLarge:
            raise KubeError(
                "InvalidSecret",
                f"Secret {name!r} is larger than {MAX_SECRET_BYTES // 1024} KiB: a TLS or credentials Secret holds a "
                "few KiB; move other data to a Secret of its own",
                transient=False,
            ) from None
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return None
            if error.status == 403:
                raise KubeError(
                    "SecretForbidden",
                    f"the operator's ServiceAccount may not read Secret {name!r} in namespace {namespace!r} "
                    "(HTTP 403): grant it get, list and watch on Secrets there (RBAC)",
                    transient=False, retry_after=SECRET_FORBIDDEN_RETRY_S,
                ) from None  # fmt: skip
            if error.status in (400, 422):
                raise KubeError(
                    "InvalidSpec", f"the API server refuses Secret name {name!r} (HTTP {error.status})", transient=False
                ) from None
            raise KubeError("InternalError", f"reading Secret {name!r}: HTTP {error.status}", transient=True) from None
        except Exception as error:  # connection refused, timeouts: urllib3 errors are not ApiException
            raise KubeError(
                "InternalError", f"reading Secret {name!r}: {type(error).__name__}", transient=True
            ) from None
        meta = secret.get("metadata") or {}
        if secret.get("kind") != "Secret" or meta.get("name") != name or meta.get("namespace") != namespace:
            raise KubeError("InternalError", f"reading Secret {name!r}: the answer is not that Secret", transient=True)
        data: dict[str, bytes] = {}
        for key, value in (secret.get("data") or {}).items():
            if key not in keys:
                continue  # never decoded, never kept
            try:
                data[key] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise KubeError("InvalidSecret", f"Secret {name!r}: {key!r} is not base64", transient=False) from None
        if self.required_label is not None:
            label, value = self.required_label
            if (meta.get("labels") or {}).get(label) != value:
                raise KubeError(
                    "SecretNotAllowed",
                    f"Secret {name!r} lacks the label {label}={value} that this operator requires of every Secret it "
                    "uses (CERTSYNC_SECRET_LABEL): add it to the Secret (cert-manager: the Certificate's "
                    "secretTemplate.labels)",
                    transient=False,
                )
        uid, version = str(meta.get("uid") or ""), str(meta.get("resourceVersion") or "")
        certificate = str((meta.get("annotations") or {}).get("cert-manager.io/certificate-name") or "")[:253]
        return SecretView(str(secret.get("type") or ""), data, uid=uid, version=version, read_for=keys,
                          certificate_name=certificate)  # fmt: skip

    async def patch_status(self, ref: ObjectRef, status: Mapping[str, Any]) -> None:
        for attempt in range(STATUS_ATTEMPTS):
            try:
                if ref.namespace:
                    await asyncio.to_thread(
                        self.custom.patch_namespaced_custom_object_status,
                        GROUP, VERSION, ref.namespace, ref.plural, ref.name, {"status": dict(status)},
                        _request_timeout=REQUEST_TIMEOUT,
                    )  # fmt: skip
                else:  # a cluster-scoped kind (ClusterRemoteAccount)
                    await asyncio.to_thread(
                        self.custom.patch_cluster_custom_object_status,
                        GROUP, VERSION, ref.plural, ref.name, {"status": dict(status)},
                        _request_timeout=REQUEST_TIMEOUT,
                    )  # fmt: skip
                return
            except kubernetes.client.ApiException as error:
                if error.status == 404:
                    raise ResourceGone(f"{ref.kind} {ref.namespace}/{ref.name} is gone") from None
                failure = f"HTTP {error.status}"
            except Exception as error:
                failure = type(error).__name__
            if attempt + 1 == STATUS_ATTEMPTS:
                raise KubeError("InternalError", f"patching status failed: {failure}", transient=True)
            delay = min(20.0, 0.5 * 2**attempt) * random.uniform(0.5, 1.0)
            log.warning("patching the status of %s/%s failed (%s); retrying in %.1fs",
                        ref.namespace, ref.name, failure, delay)  # fmt: skip
            await asyncio.sleep(delay)

    async def event(self, ref: ObjectRef, type_: str, reason: str, message: str) -> None:
        """Best effort: a lost Event must never fail a pass.

        The same Event again (object, type, reason and message) within `EVENT_WINDOW_S` of its last
        occurrence is counted on the Event posted before (`count`, `lastTimestamp`), as client-go's recorder
        does, so that a retrying resource does not bury the namespace's Events; it is posted anew when
        that Event expired or was deleted (404), or when RBAC refuses the patch (403)."""
        message = message[:EVENT_MESSAGE]
        key: EventKey = (ref.namespace, ref.kind, ref.name, ref.uid, type_, reason, message)
        async with self._event_locks[hash(key) % EVENT_LOCKS]:
            await self._event(ref, key, type_, reason, message)

    async def _event(self, ref: ObjectRef, key: EventKey, type_: str, reason: str, message: str) -> None:
        now = self.clock()
        try:
            posted = self.events.get(key)
            fresh = posted is not None and 0 <= (now - posted.last).total_seconds() < EVENT_WINDOW_S
            if posted is not None and fresh and self.patch_events and await self._count_again(ref, posted, now):
                self.events.move_to_end(key)
                return
            name = await self._post_event(ref, type_, reason, message, now)
        except Exception as error:
            log.warning("posting an Event for %s/%s failed: %s", ref.namespace, ref.name, type(error).__name__)
            return
        if name:
            self.events[key] = PostedEvent(name, 1, now)
            self.events.move_to_end(key)
            while len(self.events) > self.event_cache:
                self.events.popitem(last=False)

    async def _count_again(self, ref: ObjectRef, posted: PostedEvent, now: dt.datetime) -> bool:
        """Count one more occurrence on the Event posted before; False when it is gone or may not be patched."""
        patch = {"count": posted.count + 1, "lastTimestamp": pki.rfc3339(now)}
        try:
            await asyncio.to_thread(
                self.http.json, "PATCH", path("api", "v1", "namespaces", ref.namespace, "events", posted.name),
                body=patch, headers=MERGE_PATCH, timeout=REQUEST_TIMEOUT,
            )  # fmt: skip
        except kubernetes.client.ApiException as error:
            if error.status == 404:  # expired (the API server's event TTL) or deleted: a new one
                return False
            if error.status == 403:
                self.patch_events = False
                log.warning("the operator may not patch Events (RBAC lacks the patch verb on events): "
                            "each repeated Event is posted anew instead of counted")  # fmt: skip
                return False
            raise
        posted.count, posted.last = posted.count + 1, now
        return True

    async def _post_event(self, ref: ObjectRef, type_: str, reason: str, message: str, now: dt.datetime) -> str:
        """Create the Event; its generated name (empty if the answer lacks it)."""
        stamp = pki.rfc3339(now)
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{ref.name}.", "namespace": ref.namespace},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": ref.kind, "name": ref.name,
                               "namespace": ref.namespace, "uid": ref.uid},
            "reason": reason, "message": message, "type": type_,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1, "source": {"component": "certsync"},
        }  # fmt: skip
        created = await asyncio.to_thread(
            self.http.json, "POST", path("api", "v1", "namespaces", ref.namespace, "events"),
            body=body, timeout=REQUEST_TIMEOUT,
        )  # fmt: skip
        return str((created.get("metadata") or {}).get("name") or "")

    async def read_certificate(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The cert-manager Certificate `name` (cert-manager.io/v1), or None when the operator may not read it or it
        does not exist (403, 404: cert-manager absent, or the optional RBAC not granted): its renewal time is then
        simply unknown. Capped at 256 KiB; any other failure is a transient `KubeError`."""
        try:
            return await asyncio.to_thread(
                self.http.json, "GET", path("apis", "cert-manager.io", "v1", "namespaces", namespace, "certificates",
                                            name),
                timeout=REQUEST_TIMEOUT, max_bytes=256 * 1024,
            )  # fmt: skip
        except kubernetes.client.ApiException as error:
            if error.status in (403, 404):
                return None
            raise KubeError(
                "InternalError", f"reading Certificate {name!r}: HTTP {error.status}", transient=True
            ) from None
        except Exception as error:  # timeouts, an answer too large or not JSON
            raise KubeError(
                "InternalError", f"reading Certificate {name!r}: {type(error).__name__}", transient=True
            ) from None
