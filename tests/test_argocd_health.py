"""deploy/argocd/: the Argo CD health check, run by a real Lua interpreter against sample resources of each kind."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from devkit.kube import REPO

SCRIPT = REPO / "deploy" / "argocd" / "health.lua"
KINDS = ("DeploymentTLS", "CdnCertificate", "LetsEncryptOrder")


def lua_literal(value: Any) -> str:
    """A Python value as a Lua table constructor, the shape Argo CD gives the script as `obj`."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_literal(k)}] = {lua_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if value is None:
        return "nil"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def health(resource: dict[str, Any], script: str | None = None) -> tuple[str, str]:
    lua = shutil.which("lua5.4") or shutil.which("lua")
    assert lua, "lua5.4 is needed (hack/test installs it)"
    program = (
        f"obj = {lua_literal(resource)}\n"
        f"local function check()\n{script or SCRIPT.read_text()}\nend\n"
        'local hs = check()\nio.write(hs.status, "\\n", hs.message or "")\n'
    )
    result = subprocess.run([lua, "-"], input=program, capture_output=True, text=True, timeout=30, check=True)
    status, _, message = result.stdout.partition("\n")
    return status, message


def condition(type_: str, status: str, reason: str, generation: int = 2, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": "2026-01-01T00:00:00Z"}  # fmt: skip


def resource(kind: str, *conditions: dict[str, Any], generation: int = 2) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "certsync.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "sample", "namespace": "apps", "generation": generation},
        "spec": {},
    }
    if conditions:
        body["status"] = {"observedGeneration": max(c["observedGeneration"] for c in conditions),
                          "conditions": list(conditions)}  # fmt: skip
    return body


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("conditions", "expected", "message"),
    [
        # unhappy paths first
        ([condition("Ready", "False", "InvalidCertificate", message="tls.crt: no PEM"),
          condition("Stalled", "True", "InvalidCertificate", message="tls.crt: no PEM"),
          condition("Reconciling", "False", "InvalidCertificate")], "Degraded", "InvalidCertificate: tls.crt: no PEM"),
        ([condition("Ready", "False", "TargetConflict"), condition("Stalled", "True", "TargetConflict", message="owned by apps/a")],
         "Degraded", "TargetConflict: owned by apps/a"),
        ([condition("Ready", "False", "RemoteUnavailable"), condition("Reconciling", "True", "RemoteUnavailable", message="503"),
          condition("Stalled", "False", "RemoteUnavailable")], "Progressing", "RemoteUnavailable: 503"),
        ([condition("Ready", "False", "Pending"), condition("Reconciling", "True", "Pending")], "Progressing", "Pending"),
        ([condition("Ready", "False", "Suspended"), condition("Reconciling", "False", "Suspended"),
          condition("Stalled", "False", "Suspended")], "Suspended", "Suspended"),
        # Ready for an older generation: the new spec is not applied yet
        ([condition("Ready", "True", "Synced", generation=1)], "Progressing", "generation 2"),
        ([condition("Stalled", "True", "KeyMismatch", generation=1), condition("Ready", "False", "KeyMismatch", generation=1)],
         "Progressing", "generation 2"),
        ([], "Progressing", "Waiting for certsync"),
        ([condition("Ready", "True", "Synced", message="certificate applied"), condition("Reconciling", "False", "Synced"),
          condition("Stalled", "False", "Synced")], "Healthy", "Synced: certificate applied"),
    ],
)  # fmt: skip
def test_health_follows_the_conditions_of_the_current_generation(
    kind: str, conditions: list[dict[str, Any]], expected: str, message: str
) -> None:
    status, text = health(resource(kind, *conditions))
    assert status == expected
    assert message in text


def test_the_argocd_cm_patch_carries_the_tested_script_for_each_kind() -> None:
    patch = yaml.safe_load((REPO / "deploy" / "argocd" / "argocd-cm.yaml").read_text())
    keys = {f"resource.customizations.health.certsync.io_{kind}" for kind in KINDS}
    assert set(patch["data"]) == keys
    assert all(patch["data"][key] == SCRIPT.read_text() for key in keys)
    healthy = resource("DeploymentTLS", condition("Ready", "True", "Synced"))
    assert health(healthy, patch["data"]["resource.customizations.health.certsync.io_CdnCertificate"])[0] == "Healthy"
