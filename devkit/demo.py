#!/usr/bin/env python3
"""The certsync demo, on a fresh machine: a local control plane, both emulators, the operator, the examples.

Builds (or reuses) etcd and kube-apiserver, applies crds/ and deploy/ (RBAC), starts the
EMQX and CDN emulators and the operator with its ServiceAccount's own token, applies
examples/ (endpoints pointed at the emulators, credentials set to the emulators', the
certificate that cert-manager would write made here), waits until every resource is
Ready, prints `kubectl get` of the three kinds, and cleans everything up on exit.
It shares devkit/ (control plane, processes, certificates) with the tests.
"""

from __future__ import annotations

import base64
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

from devkit import controlplane  # noqa: E402
from devkit.factory import three_level  # noqa: E402
from devkit.kube import Kube  # noqa: E402
from devkit.processes import emulator, operator  # noqa: E402

NAMESPACE = "demo"
EMQX_KEY, EMQX_SECRET = "demo-key", "demo-emqx-secret"
CDN_USER, CDN_PASSWORD = "demo-user", "demo-cdn-password"


def examples(emqx_url: str, cdn_url: str) -> list[dict[str, Any]]:
    """The manifests of examples/, pointed at the emulators (cert-manager's Certificate needs cert-manager)."""
    documents: list[dict[str, Any]] = []
    for path in sorted((REPO / "examples").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc["kind"] == "Certificate":
                continue
            spec = doc.get("spec", {})
            if doc["kind"] == "DeploymentTLS":
                spec["endpoint"] = emqx_url
            elif doc["kind"] in ("CdnCertificate", "LetsEncryptOrder"):
                spec.update(endpoint=cdn_url, account="demo")
            elif doc["metadata"]["name"] == "emqx-platform-key":
                doc["stringData"] = {"apiKey": EMQX_KEY, "apiSecret": EMQX_SECRET}
            elif doc["metadata"]["name"] == "cdn-api":
                doc["stringData"] = {"username": CDN_USER, "password": CDN_PASSWORD}
            documents.append(doc)
    return documents


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="certsync-demo-"))
    print("certsync demo: starting the local control plane (first run builds it from Go modules) …", flush=True)
    plane = controlplane.start(work / "controlplane", tied_to_parent=True)
    try:
        kube = Kube(plane.kubectl, plane.kubeconfig, plane.server, work / "controlplane" / "pki" / "ca.crt")
        kube.kubectl("apply", "-f", str(REPO / "crds"))
        kube.kubectl("apply", "-k", str(REPO / "deploy"))
        kube.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        token = kube.kubectl("create", "token", "certsync", "-n", "certsync-system").stdout.strip()
        sa_config = controlplane.kubeconfig(
            plane.server, kube.ca, {"token": token}, work / "sa.kubeconfig", "certsync-system"
        )
        chain = three_level("www.shop.example")
        (work / "root.pem").write_bytes(chain.root.cert_pem)
        tls = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
               "metadata": {"name": "mqtt-example-tls", "namespace": NAMESPACE},
               "data": {"tls.crt": base64.b64encode(chain.pem).decode(),
                        "tls.key": base64.b64encode(chain.leaf.key_pem()).decode()}}  # fmt: skip
        with (
            emulator("emqx", "--api-key", EMQX_KEY, "--api-secret", EMQX_SECRET, "--deployment", "ge6a1a75",
                     "--pending-seconds", "3") as emqx,
            emulator("cdn", "--account", "demo", "--username", CDN_USER, "--password", CDN_PASSWORD,
                     "--resource", "res1=www.shop.example", "--pending-seconds", "3",
                     "--trusted-ca", str(work / "root.pem")) as cdn,
            operator(sa_config, work / "operator.log", "--allowed-endpoints", f"{emqx.url}/,{cdn.url}/",
                     "--namespaces", NAMESPACE, log_format="text"),
        ):  # fmt: skip
            print(f"certsync demo: EMQX emulator {emqx.url}, CDN emulator {cdn.url}, operator running", flush=True)
            documents = examples(emqx.url, cdn.url)
            kube.apply(*[d for d in documents if d["kind"] == "Namespace"])
            kube.apply(tls, *[d for d in documents if d["kind"] != "Namespace"])
            for kind in ("deploymenttls", "cdncertificate", "letsencryptorder"):
                kube.kubectl("wait", "-n", NAMESPACE, "--for=condition=Ready", kind, "--all", "--timeout=120s")
            print(kube.kubectl("get", "deploymenttls,cdncertificate,letsencryptorder", "-n", NAMESPACE).stdout)
            print("certsync demo: every example is Ready; cleaning up.", flush=True)
    except AssertionError as error:
        print(f"certsync demo failed: {error}", file=sys.stderr)
        log = work / "operator.log"
        if log.exists():
            print(log.read_text()[-4000:], file=sys.stderr)
        return 1
    finally:
        plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
