"""Prometheus metrics and the health endpoints, served on one port.

`/livez` answers 503 when one of the operator's own loops is dead or stuck (a
dead server does not answer at all); `/readyz` answers 200 when this replica
can do its part: the leader with its watches running, or a healthy standby
(the body says which). A standby is Ready on purpose: with a never-Ready
standby, a rolling update never completes and the PodDisruptionBudget never
allows an eviction. `/healthz` is kept as an alias of `/livez`.

Names follow cert-manager's (`certmanager_certificate_expiration_timestamp_seconds`,
`certmanager_certificate_ready_status`) with the `certsync_` prefix. The registry is private (tests build
several), so the process, `python_info` and GC collectors that the default registry would carry are added
to it explicitly: dashboards and capacity alerts expect them of every Python exporter.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from certsync import version
from certsync.budget import RateBudget

Probe = Callable[[], tuple[bool, str]]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, float("inf"))
"""Seconds. Past the clients' deadline (`remote.DEFAULT_TIMEOUT`: 5 s to connect, 20 s per read or write), so
that a call that ends in a timeout lands in a bucket of its own instead of in +Inf with every slow answer."""

CONDITIONS = ("True", "False", "Unknown")


class Metrics:
    """One registry per operator process (tests may build several)."""

    def __init__(self, resource_labels: bool = True) -> None:
        # False (CERTSYNC_METRICS_RESOURCE_LABELS=false): no namespace, resource name, deployment ID or account in
        # any label, for clusters where those names are sensitive; each resource keeps a series of its own under an
        # opaque id (`who`), so the alerts still count and fire per resource.
        self.resource_labels = resource_labels
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "certsync_remote_requests", "Requests sent to a remote API", ["api", "call", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "certsync_remote_request_duration_seconds", "Latency of remote API requests", ["api", "call"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.budget_remaining = Gauge(
            "certsync_budget_remaining", "Calls left in the current rate window", ["api", "scope", "class"],
            registry=self.registry,
        )  # fmt: skip
        self.reconciles = Counter(
            "certsync_reconcile", "Reconcile passes by kind and result", ["kind", "result"], registry=self.registry
        )
        self.expiry = Gauge(
            "certsync_certificate_expiration_timestamp_seconds", "Expiry of the synced certificate (Unix time)",
            ["kind", "namespace", "name"], registry=self.registry,
        )  # fmt: skip
        self.push_deadline = Gauge(
            "certsync_certificate_push_deadline_timestamp_seconds",
            "Until when the destination still takes the resource's certificate (Unix time): EMQX Cloud refuses one "
            "within 60 days of its expiry",
            ["kind", "namespace", "name"], registry=self.registry,
        )  # fmt: skip
        self.push_deadline_at_risk = Gauge(
            "certsync_certificate_push_deadline_at_risk",
            "1 while the push deadline is at risk (PushDeadlineAtRisk: the renewal comes after it, or it is 14 days "
            "away or less with no renewal in sight), else 0",
            ["kind", "namespace", "name"], registry=self.registry,
        )  # fmt: skip
        self.ready = Gauge(
            "certsync_certificate_ready_status", "Ready condition of each resource (1 for the current condition)",
            ["kind", "namespace", "name", "condition"], registry=self.registry,
        )  # fmt: skip
        self.stalled = Gauge(
            "certsync_resource_stalled", "1 while the resource is Stalled (needs a person), else 0",
            ["kind", "namespace", "name"], registry=self.registry,
        )  # fmt: skip
        self.suspended = Gauge(
            "certsync_resource_suspended", "1 while spec.suspend is true (Ready=False on purpose: no alert), else 0",
            ["kind", "namespace", "name"], registry=self.registry,
        )  # fmt: skip
        self.last_sync = Gauge(
            "certsync_last_sync_timestamp_seconds",
            "When the resource was last found in sync with its remote (Unix time; status.lastSyncTime where kept)",
            ["kind", "namespace", "name"], registry=self.registry,
        )  # fmt: skip
        self.leader = Gauge(
            "certsync_leader", "1 on the replica that holds the Lease and acts, 0 on a standby", registry=self.registry
        )
        self.leader_transitions = Counter(
            "certsync_leader_transitions", "Changes of the Lease holder seen by this replica", registry=self.registry
        )
        self.leader_last_renewal = Gauge(
            "certsync_leader_last_renewal_timestamp_seconds", "When this replica last acquired or renewed the Lease",
            registry=self.registry,
        )  # fmt: skip
        self.build_info = Gauge(
            "certsync_build_info", "Always 1: the running certsync's version and the commit it was built from",
            ["version", "commit"], registry=self.registry,
        )  # fmt: skip
        self.build_info.labels(version.version(), version.commit()).set(1.0)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        # Probes: (ok, what to say). The operator replaces them once its loops exist.
        self.liveness: Probe = lambda: (True, "ok")
        self.readiness: Probe = lambda: (False, "starting")

    def observe_request(self, api: str, call: str, code: str, seconds: float) -> None:
        self.requests.labels(api, call, code).inc()
        self.latency.labels(api, call).observe(seconds)

    def who(self, namespace: str, name: str) -> tuple[str, str]:
        """The (namespace, name) labels of a resource: its own, or "" and an opaque stable id."""
        if self.resource_labels:
            return namespace, name
        return "", "r-" + hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:16]

    def pass_ended(
        self, kind: str, namespace: str, name: str, state: str, *,
        expiry: dt.datetime | None = None, synced_at: dt.datetime | None = None,
    ) -> None:  # fmt: skip
        """Every per-resource series after a pass that ended in `state` (a `StateKind`: ready, reconciling,
        stalled, suspended). Stalled and suspended are series of their own because both are Ready=False: the
        alerts tell "needs a person" and "switched off on purpose" from "not there yet" with them.
        `synced_at` is kept only for a pass that ended in sync: a later failure leaves the last success shown."""
        namespace, name = self.who(namespace, name)
        condition = "True" if state == "ready" else "False"
        for value in CONDITIONS:
            self.ready.labels(kind, namespace, name, value).set(1.0 if value == condition else 0.0)
        self.stalled.labels(kind, namespace, name).set(1.0 if state == "stalled" else 0.0)
        self.suspended.labels(kind, namespace, name).set(1.0 if state == "suspended" else 0.0)
        if expiry is not None:
            self.expiry.labels(kind, namespace, name).set(expiry.timestamp())
        if state == "ready" and synced_at is not None:
            self.last_sync.labels(kind, namespace, name).set(synced_at.timestamp())

    def deadline_known(
        self, kind: str, namespace: str, name: str, deadline: dt.datetime, at_risk: bool | None = None
    ) -> None:
        """The push deadline of the resource's current certificate (a pass computed it from the Secret's leaf) and
        whether it is at risk (None: not known this pass, the series keeps its value)."""
        namespace, name = self.who(namespace, name)
        self.push_deadline.labels(kind, namespace, name).set(deadline.timestamp())
        if at_risk is not None:
            self.push_deadline_at_risk.labels(kind, namespace, name).set(1.0 if at_risk else 0.0)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """A deleted resource leaves no stale series behind."""
        namespace, name = self.who(namespace, name)
        for value in CONDITIONS:
            with contextlib.suppress(KeyError):
                self.ready.remove(kind, namespace, name, value)
        for gauge in (
            self.expiry,
            self.push_deadline,
            self.push_deadline_at_risk,
            self.stalled,
            self.suspended,
            self.last_sync,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(kind, namespace, name)

    def refresh_budgets(self, budget: RateBudget) -> None:
        for scope, window in budget.scopes():
            label = f"{scope.endpoint.rstrip('/')}/{scope.key}"
            if not self.resource_labels:  # the endpoint, deployment ID or account name is a tenant's
                label = "s-" + hashlib.sha256(label.encode()).hexdigest()[:16]
            self.budget_remaining.labels(scope.api, label, scope.method_class).set(budget.remaining(scope, window))

    def app(self, budget: RateBudget | None = None) -> web.Application:
        async def metrics(_: web.Request) -> web.Response:
            if budget is not None:
                self.refresh_budgets(budget)
            return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

        def probe(check: Callable[[], Probe]) -> Callable[[web.Request], Awaitable[web.Response]]:
            async def answer(_: web.Request) -> web.Response:
                ok, text = check()()
                return web.Response(status=200 if ok else 503, text=text)

            return answer

        live, ready = probe(lambda: self.liveness), probe(lambda: self.readiness)
        app = web.Application()
        app.add_routes(
            [
                web.get("/metrics", metrics),
                web.get("/livez", live),
                web.get("/healthz", live),
                web.get("/readyz", ready),
            ]
        )
        return app
