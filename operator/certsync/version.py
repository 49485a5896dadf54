"""The one version of certsync: `pyproject.toml`'s, read from the installed package's metadata.

The image, the chart and `certsync version` all report this value (a test keeps `Chart.yaml` equal to it).
The commit is baked into the image at build time (`CERTSYNC_BUILD_COMMIT`, from `hack/image`); a checkout
run without it says `unknown` rather than guessing.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata


def version() -> str:
    """The installed distribution's version (the one in `pyproject.toml`)."""
    try:
        return metadata.version("certsync")
    except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
        return "0.0.0+unknown"


def commit() -> str:
    """The git commit the running code was built from, or `unknown`."""
    return os.environ.get("CERTSYNC_BUILD_COMMIT", "").strip() or "unknown"


def dependency_version(name: str) -> str:
    """The installed version of a distribution this build runs on, or `not installed`."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def build_info() -> dict[str, str]:
    """What a bug report needs to name the build: certsync's version and commit, Python's and kopf's versions."""
    return {
        "version": version(),
        "commit": commit(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kopf": dependency_version("kopf"),
    }
