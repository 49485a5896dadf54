"""Shared fixtures: emulators on real loopback sockets, in the test's own event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from certsync.budget import RateBudget

from emulators import cdn as cdn_emulator
from emulators import emqx as emqx_emulator
from emulators.common import start
from tests.e2e_fixtures import emqx_process, kube, namespace, operator_kubeconfig, sa_kubeconfig  # noqa: F401  (fixtures)

EMQX_KEY, EMQX_SECRET = "test-key", "emqx-secret-Zq8w"
CDN_USER, CDN_PASSWORD = "cdn-user", "cdn-password-X7p2"


@dataclass
class Emulator:
    url: str
    state: Any

    async def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with httpx.AsyncClient() as http:
            response = await http.request(method, f"{self.url}/_emulator/{path}", json=body)
            response.raise_for_status()
            return response.json()

    async def fault(self, kind: str, count: int = 1, **extra: Any) -> None:
        await self.control("POST", "faults", {"kind": kind, "count": count, **extra})

    def counts(self) -> dict[str, int]:
        return dict(self.state.core.counts())

    def budget(self) -> RateBudget:
        """A budget that runs on the emulator's clock, so that moving one moves both."""
        return RateBudget(clock=self.state.core.now)


@pytest.fixture
def emqx_config() -> emqx_emulator.EmqxConfig:
    return emqx_emulator.EmqxConfig(EMQX_KEY, EMQX_SECRET, ["ge6a1a75", "dep2"], pending_seconds=30)


@pytest.fixture
async def emqx(emqx_config: emqx_emulator.EmqxConfig) -> AsyncIterator[Emulator]:
    state = emqx_emulator.EmqxState(emqx_config)
    running = await start(emqx_emulator.build_app(state))
    yield Emulator(running.url, state)
    await running.stop()


@pytest.fixture
def cdn_config(tmp_path: Any) -> cdn_emulator.CdnConfig:
    return cdn_emulator.CdnConfig(
        "acct1",
        CDN_USER,
        CDN_PASSWORD,
        resources={"res1": ["www.shop.example"], "res2": ["img.shop.example"]},
        pending_seconds=30,
    )


@pytest.fixture
async def cdn(cdn_config: cdn_emulator.CdnConfig) -> AsyncIterator[Emulator]:
    state = cdn_emulator.CdnState(cdn_config)
    running = await start(cdn_emulator.build_app(state))
    yield Emulator(running.url, state)
    await running.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failing end-to-end test shows what its operators logged at warning and above (CI keeps no files)."""
    outcome = yield
    report = outcome.get_result()
    tmp = getattr(item, "funcargs", {}).get("tmp_path")
    if not report.failed or tmp is None:
        return
    for log in sorted(tmp.rglob("*.log")):
        lines = [line for line in log.read_text(errors="replace").splitlines() if _worth_showing(line)]
        if lines:
            report.sections.append((f"{log.name}: warnings and errors", "\n".join(lines[-40:])))


def _worth_showing(line: str) -> bool:
    return any(f'"level": "{level}"' in line for level in ("warning", "error", "critical")) or "Traceback" in line
