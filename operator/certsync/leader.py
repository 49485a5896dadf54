"""Leader election with a coordination.k8s.io Lease, so that of several replicas only one acts.

A replica that does not hold the Lease waits; the holder renews it every
`renew` seconds and gives it up on a clean shutdown (the next replica takes
over at once). A holder that cannot renew stops acting: two replicas never
write the same certificate twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

import kubernetes

log = logging.getLogger("certsync.leader")
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def default_namespace() -> str:
    """The pod's namespace in cluster; the kubeconfig context's namespace outside."""
    if os.path.exists(SERVICE_ACCOUNT_NAMESPACE):
        with open(SERVICE_ACCOUNT_NAMESPACE) as f:
            return f.read().strip()
    try:
        _, context = kubernetes.config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
        return str(context["context"].get("namespace") or "default")
    except (kubernetes.config.ConfigException, KeyError, TypeError):
        return "default"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class LeaseLock:
    namespace: str
    name: str = "certsync-leader"
    duration: int = 15  # seconds a holder's claim lasts without renewal
    renew: float = 5.0
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")

    def __post_init__(self) -> None:
        self.api: Any = kubernetes.client.CoordinationV1Api()

    def _body(self, resource_version: str | None, acquired: dt.datetime | None) -> Any:
        now = _now()
        meta = kubernetes.client.V1ObjectMeta(
            name=self.name, namespace=self.namespace, resource_version=resource_version
        )
        spec = kubernetes.client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=self.duration,
            acquire_time=acquired or now,
            renew_time=now,
        )
        return kubernetes.client.V1Lease(metadata=meta, spec=spec)

    def try_acquire(self) -> bool:
        """One attempt: take the Lease if it is free, expired or already ours."""
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except kubernetes.client.ApiException as error:
            if error.status != 404:
                raise
            try:
                self.api.create_namespaced_lease(self.namespace, self._body(None, None))
                return True
            except kubernetes.client.ApiException as create_error:
                if create_error.status == 409:
                    return False
                raise
        spec = lease.spec
        holder = spec.holder_identity
        renewed = spec.renew_time or spec.acquire_time
        expired = (
            renewed is None or renewed + dt.timedelta(seconds=spec.lease_duration_seconds or self.duration) < _now()
        )
        if holder and holder != self.identity and not expired:
            return False
        acquired = spec.acquire_time if holder == self.identity else None
        try:
            self.api.replace_namespaced_lease(
                self.name, self.namespace, self._body(lease.metadata.resource_version, acquired)
            )
        except kubernetes.client.ApiException as error:
            if error.status == 409:  # someone else moved first
                return False
            raise
        return True

    def release(self) -> None:
        """Give the Lease up so that a standby replica takes over at once."""
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.renew_time = None
            lease.spec.acquire_time = None
            self.api.replace_namespaced_lease(self.name, self.namespace, lease)
        except kubernetes.client.ApiException as error:
            log.warning("could not release the lease: HTTP %s", error.status)


async def lead(lock: LeaseLock, stop: asyncio.Event) -> bool:
    """Wait for the Lease (or for `stop`); True once this replica holds it."""
    announced = False
    while not stop.is_set():
        try:
            acquired = await asyncio.to_thread(lock.try_acquire)
        except kubernetes.client.ApiException as error:
            log.error("cannot use the lease %s/%s: HTTP %s (check the Role of deploy/base/lease-role.yaml)",
                      lock.namespace, lock.name, error.status)  # fmt: skip
            raise SystemExit(1) from None
        if acquired:
            log.info("acquired the lease %s/%s as %s", lock.namespace, lock.name, lock.identity)
            return True
        if not announced:
            log.info("another replica leads (lease %s/%s); standing by", lock.namespace, lock.name)
            announced = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=lock.renew)
    return False


async def keep(lock: LeaseLock, stop: asyncio.Event) -> None:
    """Renew the Lease until `stop`; set `stop` when it cannot be renewed."""
    while not stop.is_set():
        await asyncio.sleep(lock.renew)
        try:
            held = await asyncio.to_thread(lock.try_acquire)
        except kubernetes.client.ApiException as error:
            log.warning("renewing the lease failed: HTTP %s", error.status)
            held = False
        if not held:
            log.error("lost the lease %s/%s; stopping", lock.namespace, lock.name)
            stop.set()
            return
