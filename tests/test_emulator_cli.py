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
        [
            "emqx", "--api-key", "k", "--api-secret", "s", "--deployment", "ge6a1a75", "--dialect", "bare-404",
            "--dialect", "string-code", "--dialect", "async-delete", "--dialect", "cn", "--failing-deployment",
            "ge6a1a75", "--expire-offset-hours", "8", "--terminate-seconds", "30",
        ],
        ["emqx", "--api-key", "k", "--api-secret", "s", "--deployment", "ge6a1a75", "--dialect", "empty-200"],
        [
            "cdn", "--account", "a", "--username", "u", "--password", "p", "--dialect", "auth-token",
            "--dialect", "bare-login-errors", "--dialect", "expired-405", "--dialect", "start-end",
            "--dialect", "string-times", "--dialect", "get-object",
        ],
    ],
    ids=["emqx", "cdn", "emqx-dialects", "emqx-empty-200", "cdn-dialects"],
)  # fmt: skip
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
            if "bare-404" in args:
                assert answer.status_code == 404 and answer.content == b""
            elif "empty-200" in args:
                assert answer.status_code == 200 and answer.json() == {}
            else:
                assert answer.status_code == 404 and "not configured" in answer.json()["message"]
        else:
            answer = httpx.post(f"{url}/app/oauth/v1/token/", data={"username": "u", "password": "p"})
            assert answer.json()["lifetime"] == 6 * 3600 * 1000
            assert ("auth_token" in answer.json()) == ("auth-token" in args)
            dialects = sorted(args[i + 1] for i, arg in enumerate(args) if arg == "--dialect")
            assert httpx.get(f"{url}/_emulator/config").json() == {"dialects": dialects}
        assert httpx.get(f"{url}/_emulator/calls", params={"since": "-1"}).status_code == 400
        calls = httpx.get(f"{url}/_emulator/calls").json()
        assert sum(calls["counts"].values()) == 1 and calls["total"] == len(calls["calls"]) == 1
        later = httpx.get(f"{url}/_emulator/calls", params={"since": "1"}).json()  # a poller's next page: empty
        assert later["calls"] == [] and later["total"] == 1 and later["counts"] == calls["counts"]
        if "--failing-deployment" in args:  # the flags reach the configuration
            config = httpx.get(f"{url}/_emulator/config").json()
            assert config == {
                "dialects": ["async-delete", "bare-404", "cn", "string-code"],
                "failingDeployments": ["ge6a1a75"],
                "expireOffsetHours": 8.0,
                "terminateSeconds": 30.0,
            }
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
