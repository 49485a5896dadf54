"""Session fixtures for end-to-end tests: one control plane per test session, one namespace per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit import controlplane
from devkit.kube import REPO, Kube
from devkit.processes import EmulatorProcess, emulator

KEY, SECRET = "e2e-key", "e2e-emqx-secret-9Jx"
WINDOW = 60  # seconds: the emulator and the operator both run the 6-writes window this short


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """etcd + kube-apiserver built from the pinned Go modules, tied to this process (never outlives it)."""
    root = tmp_path_factory.mktemp("controlplane")
    plane = controlplane.start(root / "run", tied_to_parent=True)
    cluster = Kube(plane.kubectl, plane.kubeconfig, plane.server, root / "run" / "pki" / "ca.crt", plane)
    cluster.kubectl("apply", "-f", str(REPO / "crds"))  # as users do: CRDs on their own
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


@pytest.fixture(scope="session")
def operator_kubeconfig(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/ applied as a platform team would, and a kubeconfig with the operator ServiceAccount's own token."""
    kube.kubectl("apply", "-k", str(REPO / "deploy"))
    token = kube.kubectl("create", "token", "certsync", "-n", "certsync-system", "--duration", "2h").stdout.strip()
    path = tmp_path_factory.mktemp("operator") / "certsync.kubeconfig"
    return controlplane.kubeconfig(kube.server, kube.ca, {"token": token}, path, "certsync-system")  # type: ignore[no-any-return]


@pytest.fixture
def emqx_process() -> Iterator[EmulatorProcess]:
    """The EMQX emulator as its own process, with the short rate window the e2e operator also uses."""
    with emulator("emqx", "--api-key", KEY, "--api-secret", SECRET, "--deployment", "ge6a1a75",
                  "--deployment", "dep2", "--pending-seconds", "2", "--window-seconds", str(WINDOW)) as running:  # fmt: skip
        yield running
