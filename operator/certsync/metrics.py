"""Prometheus metrics and the health endpoint, served on one port.

Names follow cert-manager's (`certmanager_certificate_expiration_timestamp_seconds`,
`certmanager_certificate_ready_status`) with the `certsync_` prefix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from certsync.budget import RateBudget


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
        self.healthy: Callable[[], bool] = lambda: True

    def observe_request(self, api: str, call: str, code: str, seconds: float) -> None:
        self.requests.labels(api, call, code).inc()
        self.latency.labels(api, call).observe(seconds)

    def set_ready(self, kind: str, namespace: str, name: str, condition: str) -> None:
        for value in ("True", "False", "Unknown"):
            self.ready.labels(kind, namespace, name, value).set(1.0 if value == condition else 0.0)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """A deleted resource leaves no stale series behind."""
        for value in ("True", "False", "Unknown"):
            with contextlib.suppress(KeyError):
                self.ready.remove(kind, namespace, name, value)
        with contextlib.suppress(KeyError):
            self.expiry.remove(kind, namespace, name)

    def refresh_budgets(self, budget: RateBudget) -> None:
        for scope, window in budget.scopes():
            label = f"{scope.endpoint.rstrip('/')}/{scope.key}"
            self.budget_remaining.labels(scope.api, label, scope.method_class).set(budget.remaining(scope, window))

    def app(self, budget: RateBudget | None = None) -> web.Application:
        async def metrics(_: web.Request) -> web.Response:
            if budget is not None:
                self.refresh_budgets(budget)
            return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def healthz(_: web.Request) -> web.Response:
            ok = self.healthy()
            return web.Response(status=200 if ok else 503, text="ok" if ok else "starting")

        app = web.Application()
        app.add_routes([web.get("/metrics", metrics), web.get("/healthz", healthz)])
        return app
