"""RBAC exactly as used: the ServiceAccount's whole list of grants (`kubectl auth can-i --list`) compared with
the expected set, for the cluster-wide install and the single-namespace overlay, namespace by namespace.

What every authenticated user may do anyway (discovery, self reviews) is measured, not assumed: a
ServiceAccount without any binding gives the baseline, and the operator's grants are compared on top of it.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
import yaml

from devkit.kube import REPO, Kube

pytestmark = pytest.mark.e2e
Grant = tuple[str, str, frozenset[str]]  # resource (or non-resource URL), resource names, verbs
KINDS = ("deploymenttlses", "cdncertificates", "letsencryptorders")
_ROW = re.compile(r"^(\S*)\s+\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]\s*$")

WATCHED: set[Grant] = {
    *((f"{k}.certsync.io", "", frozenset({"list", "watch", "patch"})) for k in KINDS),
    *((f"{k}.certsync.io/status", "", frozenset({"patch"})) for k in KINDS),
    ("secrets", "", frozenset({"get", "list", "watch"})),
    ("events", "", frozenset({"create", "patch"})),
}
# ClusterRemoteAccounts and Namespaces are cluster-scoped: granted in every namespace alike.
ACCOUNTS: set[Grant] = {
    ("clusterremoteaccounts.certsync.io", "", frozenset({"get", "list", "watch"})),
    ("clusterremoteaccounts.certsync.io/status", "", frozenset({"patch"})),
    ("namespaces", "", frozenset({"get", "list", "watch"})),
}
# deploy/base/account-credentials.yaml: the accounts' credentials Secret, by name, in the operator's namespace.
ACCOUNT_SECRET: set[Grant] = {("secrets", "certsync-remote-account", frozenset({"get"}))}
LEASE: set[Grant] = {
    ("leases.coordination.k8s.io", "", frozenset({"create"})),
    ("leases.coordination.k8s.io", "certsync-leader", frozenset({"get", "update"})),
}


def grants(kube: Kube, user: str, namespace: str) -> set[Grant]:
    """`kubectl auth can-i --list` as `user` in `namespace`, one (resource, names, verbs) per name."""
    out = kube.kubectl("auth", "can-i", "--list", f"--as={user}", "-n", namespace).stdout
    found: dict[tuple[str, str], set[str]] = {}
    for line in out.splitlines()[1:]:
        row = _ROW.match(line)
        assert row, f"unexpected line of kubectl auth can-i --list: {line!r}"
        resource, urls, names, verbs = row.groups()
        for target in [resource] if resource else urls.split():
            for name in names.split() or [""]:
                found.setdefault((target, name), set()).update(verbs.split())
    return {(target, name, frozenset(verbs)) for (target, name), verbs in found.items()}


def baseline(kube: Kube, namespace: str) -> set[Grant]:
    kube.kubectl("create", "serviceaccount", "nobody", "-n", namespace, check=False)
    return grants(kube, f"system:serviceaccount:{namespace}:nobody", namespace)


def test_cluster_wide_install_grants_exactly_what_is_used(
    kube: Kube, namespace: str, operator_kubeconfig: Path
) -> None:
    account = "system:serviceaccount:certsync-system:certsync"
    base = baseline(kube, namespace)
    assert grants(kube, account, namespace) - base == WATCHED | ACCOUNTS
    assert base - grants(kube, account, namespace) == set()
    assert grants(kube, account, "certsync-system") - base == WATCHED | LEASE | ACCOUNTS | ACCOUNT_SECRET


def test_single_namespace_overlay_grants_exactly_what_is_used_where_it_is_used(kube: Kube, namespace: str) -> None:
    """The overlay rendered as shipped, then moved to fresh namespaces so that the cluster-wide install's
    ClusterRoleBinding (same ServiceAccount name) cannot lend it anything."""
    suffix = uuid.uuid4().hex[:6]
    operator_ns, watched_ns = f"certsync-{suffix}", f"demo-{suffix}"
    rendered = kube.kubectl("kustomize", str(REPO / "deploy" / "overlays" / "single-namespace")).stdout
    documents = []
    for doc in yaml.safe_load_all(rendered):
        if doc["kind"] == "CustomResourceDefinition":
            continue  # already installed, identical
        text = yaml.safe_dump(doc).replace("certsync-system", operator_ns)
        moved = yaml.safe_load(text)
        if moved.get("metadata", {}).get("namespace") == "demo":  # the overlay's watched namespace (examples')
            moved["metadata"]["namespace"] = watched_ns
        if moved["kind"] == "Namespace":
            moved["metadata"].pop("labels", None)
        documents.append(moved)
    kube.kubectl("create", "namespace", watched_ns)
    kube.apply(*[d for d in documents if d["kind"] == "Namespace"])
    kube.apply(*[d for d in documents if d["kind"] != "Namespace"])
    cluster_wide = [d["metadata"]["name"] for d in documents if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    assert cluster_wide == ["certsync-accounts", "certsync-accounts"]  # the cluster-scoped kinds only
    account = f"system:serviceaccount:{operator_ns}:certsync"
    base = baseline(kube, namespace)
    assert grants(kube, account, watched_ns) - base == WATCHED | ACCOUNTS
    assert grants(kube, account, namespace) - base == ACCOUNTS  # any other namespace: no namespaced object
    assert grants(kube, account, operator_ns) - base == LEASE | ACCOUNTS | ACCOUNT_SECRET
