"""requirements.lock, which the image installs with --require-hashes, matches pyproject.toml.

A dependency added, removed or re-ranged in pyproject.toml without `hack/lock` fails here, before an image is
built with packages nobody reviewed. The image build itself (tests/test_e2e_image.py) proves the lock complete:
pip in hash-checking mode refuses any package the lock does not pin.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement

from devkit import lockfile

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
PYPROJECT = REPO / "pyproject.toml"


def test_the_lock_was_made_from_the_current_dependencies() -> None:
    assert lockfile.recorded_digest(LOCK) == lockfile.digest(PYPROJECT), (
        "pyproject.toml's dependencies changed since requirements.lock was made: run hack/lock"
    )


def test_every_dependency_is_pinned_within_its_range_and_every_pin_has_hashes() -> None:
    pins = lockfile.pins(LOCK)
    for text in lockfile.dependencies(PYPROJECT):
        requirement = Requirement(text)
        name = lockfile.normalise(requirement.name)
        assert name in pins, f"{name} is not in requirements.lock"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), (name, pins[name][0])
    assert all(hashes > 0 for _, hashes in pins.values()), [name for name, (_, h) in pins.items() if not h]


def test_the_image_installs_the_lock_in_hash_checking_mode() -> None:
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert "--require-hashes" in dockerfile and "requirements.lock" in dockerfile
    assert "--no-deps" in dockerfile  # the package itself adds nothing the lock did not pin
    assert "requirements.lock" in (REPO / ".dockerignore").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("text", "changed"),
    [("kopf>=1.37", False), ("kopf >= 1.37", False), ("kopf>=1.38", True)],
)
def test_the_digest_follows_the_specifiers_not_their_spacing(tmp_path: Path, text: str, changed: bool) -> None:
    project = tmp_path / "pyproject.toml"
    original = PYPROJECT.read_text(encoding="utf-8")
    project.write_text(original.replace('"kopf>=1.37"', f'"{text}"'), encoding="utf-8")
    assert '"kopf>=1.37"' in original
    assert (lockfile.digest(project) != lockfile.digest(PYPROJECT)) is changed
