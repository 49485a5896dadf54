"""The release tools and artefacts for tests: helm and promtool (built once from their Go modules), the image."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "certsync"


def tool(name: str) -> Path:
    """The cached binary of `name` (helm, promtool), building it first if needed (minutes, once per machine)."""
    out = subprocess.run([str(REPO / "hack" / "tools" / "build"), name], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def helm(*args: str, check: bool = True, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run helm with its state kept out of the user's home (HELM_* under the repository's ignored build/)."""
    home = REPO / "build" / "helm"
    env = {
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "HOME": str(home),  # its Kubernetes client caches discovery under $HOME/.kube
        "PATH": "/usr/bin:/bin",
    }
    command = [str(tool("helm")), *args] + (["--kubeconfig", str(kubeconfig)] if kubeconfig else [])
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def render(*args: str) -> list[dict[str, Any]]:
    """`helm template` of the chart with these extra arguments, as a list of objects."""
    text = helm("template", "cs", str(CHART), "--namespace", "certsync-system", *args).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
