"""The one version of certsync: `pyproject.toml`'s, read from the installed package's metadata.

The image, the chart and `certsync version` all report this value (a test keeps `Chart.yaml` equal to it).
The commit is baked into the image at build time (`CERTSYNC_BUILD_COMMIT`, from `hack/image`); a checkout
run without it says `unknown` rather than guessing.
"""

from __future__ import annotations

import os
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
