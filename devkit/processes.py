"""Emulators and the operator as their own processes, as they run in production and in the demo."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
PEAK_RSS_GOAL = 200 * 1000 * 1000  # bytes: the operator's peak under attack stays "under 200 MB" (pod limit 256 Mi)


@dataclass
class EmulatorProcess:
    url: str
    process: subprocess.Popen[str]

    def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        answer = httpx.request(method, f"{self.url}/_emulator/{path}", json=body, timeout=10)
        answer.raise_for_status()
        return answer.json()

    def counts(self) -> dict[str, int]:
        return dict(self.control("GET", "calls")["counts"])

    def writes(self) -> list[dict[str, Any]]:
        return [
            c
            for c in self.control("GET", "calls")["calls"]
            if c["method"] not in ("GET",) and "/_emulator" not in c["path"] and "oauth" not in c["path"]
        ]


@contextmanager
def emulator(*args: str) -> Iterator[EmulatorProcess]:
    process = subprocess.Popen(
        [sys.executable, "-m", "emulators", *args, "--port", "0"], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("listening on "), line
        yield EmulatorProcess(line.removeprefix("listening on "), process)
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout:
            process.stdout.close()


@dataclass
class OperatorProcess:
    process: subprocess.Popen[bytes]
    metrics_url: str

    def peak_rss(self) -> int:
        """Its peak resident set (VmHWM) in bytes, as the kernel counted it since the process started."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
        raise AssertionError(f"no VmHWM in /proc/{self.process.pid}/status")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def operator(
    kubeconfig: Path, log: Path, *args: str, log_format: str = "json", settings: Mapping[str, str] | None = None
) -> Iterator[OperatorProcess]:
    """The operator as its own process, with the given kubeconfig (the ServiceAccount's, in the tests) and
    `settings` (CERTSYNC_* variables, such as a chart's rendered Deployment sets)."""
    port = free_port()
    env = {
        **os.environ,
        **(settings or {}),
        "KUBECONFIG": str(kubeconfig),
        "CERTSYNC_LOG_FORMAT": log_format,
        "CERTSYNC_METRICS_PORT": str(port),
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "certsync", "run", *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        yield OperatorProcess(process, f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def operator_args(namespace: str, *endpoints: str, window: int | None = None) -> list[str]:
    """The operator's flags in the tests: its allowlist (the emulators), the test namespace, the budget window."""
    args = ["--allowed-endpoints", ",".join(e + "/" for e in endpoints), "--namespaces", namespace]
    return args + (["--emqx-budget-window", str(window)] if window else [])


def reconcile_passes(metrics_url: str) -> float:
    """How many passes the operator has made (0 while it starts): a condition to wait on, instead of a sleep."""
    try:
        text = httpx.get(metrics_url + "/metrics", timeout=5).text
    except httpx.HTTPError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("certsync_reconcile_total{")
    )


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0, every: float = 0.2) -> None:
    """Poll `check` until it holds, or fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)
