"""requirements.lock and pyproject.toml: the digest that ties them, and the lock's pins.

`python -m devkit.lockfile digest pyproject.toml` prints the digest hack/lock writes into the lock's header.
"""

from __future__ import annotations

import hashlib
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")
DIGEST = re.compile(r"^# dependencies-sha256: ([0-9a-f]{64})$", re.M)


def dependencies(pyproject: Path) -> list[str]:
    """The [project] dependencies, as written (the lock is made from exactly these)."""
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    return [str(item) for item in data["project"]["dependencies"]]


def digest(pyproject: Path) -> str:
    """sha256 of the sorted dependency specifiers: a comment or order change does not call for a new lock."""
    canonical = "\n".join(sorted(str(Requirement(item)) for item in dependencies(pyproject)))
    return hashlib.sha256(canonical.encode()).hexdigest()


def recorded_digest(lock: Path) -> str | None:
    found = DIGEST.search(lock.read_text(encoding="utf-8"))
    return found.group(1) if found else None


def pins(lock: Path) -> dict[str, tuple[str, int]]:
    """name (normalised) -> (version, number of hashes), for every requirement of the lock."""
    found: dict[str, tuple[str, int]] = {}
    current: str | None = None
    for line in lock.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        match = PIN.match(line)
        if match:
            current = normalise(match.group(1))
            found[current] = (match.group(2), 0)
        if current is not None:
            version, hashes = found[current]
            found[current] = (version, hashes + len(HASH.findall(line)))
    return found


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "digest":
        sys.exit("usage: python -m devkit.lockfile digest pyproject.toml")
    print(digest(Path(sys.argv[2])))
