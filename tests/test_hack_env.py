"""hack/env, which hack/test and hack/demo source: a virtual environment in the repository, no root or system pip.

A PEP 668 distribution (Debian 12, Ubuntu 24.04) refuses `pip install` into the system Python, and a developer is
not root: the scripts create `.venv/`, install into it, and need root only for Debian packages that are missing,
saying which. These tests run the real script as an unprivileged user (uid 65534) on a copy of the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534


def as_user(command: str, cwd: Path, home: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run `command` in bash as an unprivileged user (as this user when the suite itself does not run as root)."""
    prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] if os.geteuid() == 0 else []
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"}
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_CERT", "SSL_CERT_FILE"):
        if name in os.environ:
            env[name] = os.environ[name]
    return subprocess.run(
        [*prefix, "bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def checkout() -> Iterator[Path]:
    """The repository's files, copied to a folder the unprivileged user owns (pip -e writes egg-info).

    Not under pytest's tmp_path: its parents are private to root, so the user could not enter it."""
    tmp_path = Path(tempfile.mkdtemp(prefix="certsync-env-"))
    os.chmod(tmp_path, 0o755)
    copy = tmp_path / "certsync"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, files.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    (tmp_path / "home").mkdir()
    if os.geteuid() == 0:
        for path in [tmp_path, *tmp_path.rglob("*")]:
            os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
    try:
        yield copy
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def interpreter_reachable() -> bool:
    probe = as_user("python3 -c 'import venv, ensurepip'", Path("/"), Path("/"), timeout=60)
    return probe.returncode == 0


def test_a_missing_debian_package_stops_with_what_to_install(checkout: Path) -> None:
    done = as_user(
        "source hack/env; need_debian certsync-no-such-command=certsync-no-such-package; echo reached",
        checkout, checkout.parent / "home", timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "reached" not in done.stdout
    assert (
        "needs root" in done.stderr
        and "apt-get install --no-install-recommends certsync-no-such-package" in done.stderr
    )


def test_present_debian_packages_need_nothing(checkout: Path) -> None:
    done = as_user("source hack/env; need_debian bash=bash; echo reached", checkout, checkout.parent / "home")
    assert done.returncode == 0 and done.stdout.strip() == "reached", done.stderr
    assert done.stderr == ""


def test_an_unprivileged_user_gets_a_virtual_environment_with_the_package(checkout: Path) -> None:
    if not interpreter_reachable():
        # The unprivileged user cannot run this machine's python3 at all: nothing of the repository is at fault.
        pytest.fail("python3 with venv and ensurepip is not usable by an unprivileged user on this machine")
    home = checkout.parent / "home"
    first = as_user(
        "source hack/env; ensure_venv; command -v python3; python3 -c 'import certsync, pytest, kopf'; "
        "python3 -m pip --version",
        checkout, home,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.splitlines()[0] == str(checkout / ".venv" / "bin" / "python3")
    assert "installing certsync[test]" in first.stderr
    assert str(checkout / ".venv") in first.stdout.splitlines()[-1]  # pip of the environment, not the system's
    again = as_user("source hack/env; ensure_venv; echo ok", checkout, home)
    assert again.returncode == 0 and again.stdout.strip() == "ok"
    assert "installing" not in again.stderr  # pyproject.toml unchanged: nothing installed the second time
