"""`certsync version` and `certsync --version` name the build: pyproject's version, the commit baked in at build time
(CERTSYNC_BUILD_COMMIT), the Python and kopf it runs on."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tomllib
from importlib import metadata

import yaml

from devkit.kube import REPO


def certsync(*args: str, commit: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CERTSYNC_BUILD_COMMIT"}
    if commit is not None:
        env["CERTSYNC_BUILD_COMMIT"] = commit
    return subprocess.run(
        [sys.executable, "-m", "certsync", *args], capture_output=True, text=True, timeout=60, env=env
    )


def project_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def test_version_prints_the_version_commit_python_and_kopf() -> None:
    result = certsync("version", commit="0123abc")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout) == {
        "version": project_version(),
        "commit": "0123abc",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kopf": metadata.version("kopf"),
    }


def test_dash_dash_version_is_one_line_with_the_same_facts() -> None:
    result = certsync("--version", commit="0123abc")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"certsync {project_version()} (commit 0123abc, {platform.python_implementation()} "
        f"{platform.python_version()}, kopf {metadata.version('kopf')})\n"
    )


def test_without_a_build_commit_the_commit_is_unknown() -> None:
    assert "commit: unknown\n" in certsync("version").stdout
    assert "commit unknown," in certsync("--version", commit="  ").stdout
    assert certsync("version", "--bogus").returncode == 2
