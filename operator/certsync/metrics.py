"""Prometheus metrics and the health endpoints, served on one port.

`/livez` answers 503 when one of the operator's own loops is dead or stuck (a
dead server does not answer at all); `/readyz` answers 200 when this replica
can do its part: the leader with its watches running, or a healthy standby
(the body says which). A standby is Ready on purpose: with a never-Ready
standby, a rolling update never completes and the PodDisruptionBudget never
allows an eviction. `/healthz` is kept as an alias of `/livez`.

Names follow cert-manager's (`certmanager_certificate_expiration_timestamp_seconds`,
`certmanager_certificate_ready_status`) with the `certsync_` prefix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from certsync.budget import RateBudget

Probe = Callable[[], tuple[bool, str]]


class Metrics:
    """One registry per operator process (tests may build several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "certsync_remote_requests", "Requests sent to a remote API", ["api", "call", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "certsync_remote_request_duration_seconds", "Latency of remote API requests", ["api", "call"],
            registry=self.registry,
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
        self.ready = Gauge(
            "certsync_certificate_ready_status", "Ready condition of each resource (1 for the current condition)",
            ["kind", "namespace", "name", "condition"], registry=self.registry,
        )  # fmt: skip
        self.stalled = Gauge(
            "certsync_resource_stalled", "1 while the resource is Stalled (needs a person), else 0",
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
        # Probes: (ok, what to say). The operator replaces them once its loops exist.
        self.liveness: Probe = lambda: (True, "ok")
        self.readiness: Probe = lambda: (False, "starting")

    def observe_request(self, api: str, call: str, code: str, seconds: float) -> None:
        self.requests.labels(api, call, code).inc()
        self.latency.labels(api, call).observe(seconds)

    def set_ready(self, kind: str, namespace: str, name: str, condition: str, stalled: bool | None = None) -> None:
        """`stalled`: the pass's state is Stalled (the CertsyncResourceStalled alert); None leaves it as it was."""
        for value in ("True", "False", "Unknown"):
            self.ready.labels(kind, namespace, name, value).set(1.0 if value == condition else 0.0)
        if stalled is not None:
            self.stalled.labels(kind, namespace, name).set(1.0 if stalled else 0.0)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """A deleted resource leaves no stale series behind."""
        for value in ("True", "False", "Unknown"):
            with contextlib.suppress(KeyError):
                self.ready.remove(kind, namespace, name, value)
        for gauge in (self.expiry, self.stalled):
            with contextlib.suppress(KeyError):
                gauge.remove(kind, namespace, name)

    def refresh_budgets(self, budget: RateBudget) -> None:
        for scope, window in budget.scopes():
            label = f"{scope.endpoint.rstrip('/')}/{scope.key}"
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
