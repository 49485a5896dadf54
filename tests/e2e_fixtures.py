"""Session fixtures for end-to-end tests: one control plane per test session, one namespace per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kube import REPO, Kube, controlplane_module


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """etcd + kube-apiserver built from the pinned Go modules, tied to this process (never outlives it)."""
    controlplane = controlplane_module()
    root = tmp_path_factory.mktemp("controlplane")
    plane = controlplane.start(root / "run", tied_to_parent=True)
    cluster = Kube(plane.kubectl, plane.kubeconfig, plane.server, root / "run" / "pki" / "ca.crt")
    crds = REPO / "crds"
    if any(crds.glob("*.yaml")):
        cluster.kubectl("apply", "-f", str(crds))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    try:
        yield cluster
    finally:
        plane.stop()


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    name = kube.create_namespace()
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def sa_kubeconfig(kube: Kube, namespace: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Factory: `sa_kubeconfig(name, rules)` gives a kubeconfig of a ServiceAccount with exactly those rules."""

    def make(name: str, rules: list[dict[str, object]], cluster_wide: bool = False) -> Path:
        return kube.service_account_kubeconfig(namespace, name, rules, tmp_path, cluster_wide)  # type: ignore[arg-type]

    return make
