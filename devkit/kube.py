"""The local control plane for end-to-end tests: start it, talk to it with kubectl, mint ServiceAccount kubeconfigs."""

from __future__ import annotations

import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devkit import controlplane

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Kube:
    kubectl_path: Path
    kubeconfig: Path
    server: str
    ca: Path
    plane: controlplane.ControlPlane | None = None  # the local one, for tests that stop its API server

    def kubectl(
        self, *args: str, input: str | None = None, kubeconfig: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = [str(self.kubectl_path), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args]
        result = subprocess.run(command, input=input, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def apply(
        self, *documents: dict[str, Any], namespace: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        text = yaml.safe_dump_all(documents)
        args = ["apply", "-f", "-"] + (["-n", namespace] if namespace else [])
        return self.kubectl(*args, input=text, check=check)

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout)  # type: ignore[no-any-return]

    def create_namespace(self) -> str:
        name = f"t-{uuid.uuid4().hex[:8]}"
        self.kubectl("create", "namespace", name)
        return name

    def service_account_kubeconfig(
        self, namespace: str, name: str, rules: list[dict[str, Any]], directory: Path, cluster_wide: bool = False
    ) -> Path:
        """A ServiceAccount bound to a Role (or ClusterRole) with `rules`, and a kubeconfig with its own token."""
        role_kind, binding_kind = ("ClusterRole", "ClusterRoleBinding") if cluster_wide else ("Role", "RoleBinding")
        meta = {"name": f"{namespace}-{name}" if cluster_wide else name}
        if not cluster_wide:
            meta["namespace"] = namespace
        self.apply(
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": role_kind, "metadata": meta, "rules": rules},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": binding_kind,
                "metadata": meta,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": meta["name"]},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
            },
        )
        token = self.kubectl("create", "token", name, "-n", namespace, "--duration", "2h").stdout.strip()
        return controlplane.kubeconfig(
            self.server, self.ca, {"token": token}, directory / f"{namespace}-{name}.kubeconfig", namespace
        )
