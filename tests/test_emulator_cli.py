"""`python -m emulators` runs each emulator as its own process, announces its URL and stops on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import pytest

from devkit.kube import REPO


@pytest.mark.parametrize(
    "args",
    [
        ["emqx", "--api-key", "k", "--api-secret", "s", "--deployment", "ge6a1a75", "--pending-seconds", "1"],
        ["cdn", "--account", "a", "--username", "u", "--password", "p", "--resource", "r1=www.example.com"],
    ],
)
def test_emulator_process_serves_and_stops_on_sigterm(args: list[str]) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "emulators", *args, "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.removeprefix("listening on ")
        if args[0] == "emqx":
            answer = httpx.get(f"{url}/deployments/ge6a1a75/tls", auth=("k", "s"))
            assert answer.status_code == 404 and "not configured" in answer.json()["message"]
        else:
            answer = httpx.post(f"{url}/app/oauth/v1/token/", data={"username": "u", "password": "p"})
            assert answer.json()["lifetime"] == 6 * 3600 * 1000
        calls = httpx.get(f"{url}/_emulator/calls").json()
        assert sum(calls["counts"].values()) == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
