"""The README's first command works: the demo ends with every example Ready and exits 0."""

from __future__ import annotations

import subprocess
import sys

import pytest

from devkit.kube import REPO

pytestmark = pytest.mark.e2e


def test_demo_reaches_ready_and_cleans_up() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devkit.demo"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    rows = [line for line in lines if line.startswith(("deploymenttls.", "cdncertificate.", "letsencryptorder."))]
    assert len(rows) == 4 and all(row.split()[1:3] == ["True", "Synced"] for row in rows)
    assert lines[-1] == "certsync demo: every example is Ready; cleaning up."
