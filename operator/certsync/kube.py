"""The operator's own calls to the Kubernetes API: Secret reads, status patches and Events, each with a timeout.

The kubernetes client is synchronous; every call runs in a thread with a
request timeout so that a hung API server cannot hang a pass. Status patches
are retried with backoff: what a write did must be recorded, and the write
itself is never repeated because recording it failed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import kubernetes

from certsync import pki
from certsync.kubehttp import KubeHttp, path
from certsync.reconcile import SecretView
from certsync.secretwatch import SecretStore

GROUP, VERSION = "certsync.io", "v1alpha1"
REQUEST_TIMEOUT = (5.0, 15.0)  # connect, read
STATUS_ATTEMPTS = 6  # about a minute of backoff before a pass gives up on recording
log = logging.getLogger("certsync.kube")


class KubeError(Exception):
    """A Kubernetes API call failed; `reason` is the condition reason a pass reports."""

    def __init__(self, reason: str, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.transient = transient


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
    async def read_secret(self, namespace: str, name: str) -> SecretView | None: ...

    async def patch_status(self, ref: ObjectRef, status: Mapping[str, Any]) -> None: ...

    async def event(self, ref: ObjectRef, type_: str, reason: str, message: str) -> None: ...


class Kube:
    """The real layer, on the kubernetes client's configuration loaded at startup."""

    def __init__(self, api_client: Any = None, secrets: SecretStore | None = None) -> None:
        self.http = KubeHttp(api_client)
        self.custom: Any = kubernetes.client.CustomObjectsApi(self.http.client)
        self.secrets = secrets

    async def read_secret(self, namespace: str, name: str) -> SecretView | None:
        """The Secret's body: kept from an earlier read while the Secret watch says it has not changed."""
        kept = self.secrets.fresh(namespace, name) if self.secrets else None
        if kept is not None:
            return kept
        view = await self._read_secret(namespace, name)
        if view is not None and self.secrets is not None:
            self.secrets.keep(namespace, name, view)
        return view

    async def _read_secret(self, namespace: str, name: str) -> SecretView | None:
        try:
            secret = await asyncio.to_thread(
                self.http.json, "GET", path("api", "v1", "namespaces", namespace, "secrets", name),
                timeout=REQUEST_TIMEOUT,
            )  # fmt: skip
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return None
            if error.status in (400, 403, 422):
                raise KubeError(
                    "InvalidSpec", f"the operator may not read Secret {name!r} (HTTP {error.status})", transient=False
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
            try:
                data[key] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise KubeError("InvalidSecret", f"Secret {name!r}: {key!r} is not base64", transient=False) from None
        uid, version = str(meta.get("uid") or ""), str(meta.get("resourceVersion") or "")
        return SecretView(str(secret.get("type") or ""), data, uid=uid, version=version)

    async def patch_status(self, ref: ObjectRef, status: Mapping[str, Any]) -> None:
        for attempt in range(STATUS_ATTEMPTS):
            try:
                await asyncio.to_thread(
                    self.custom.patch_namespaced_custom_object_status,
                    GROUP, VERSION, ref.namespace, ref.plural, ref.name, {"status": dict(status)},
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
        """Best effort: a lost Event must never fail a pass."""
        now = pki.rfc3339(dt.datetime.now(dt.UTC))
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{ref.name}.", "namespace": ref.namespace},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": ref.kind, "name": ref.name,
                               "namespace": ref.namespace, "uid": ref.uid},
            "reason": reason, "message": message[:1024], "type": type_,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1, "source": {"component": "certsync"},
        }  # fmt: skip
        try:
            await asyncio.to_thread(
                self.http.json, "POST", path("api", "v1", "namespaces", ref.namespace, "events"),
                body=body, timeout=REQUEST_TIMEOUT,
            )  # fmt: skip
        except Exception as error:
            log.warning("posting an Event for %s/%s failed: %s", ref.namespace, ref.name, type(error).__name__)
