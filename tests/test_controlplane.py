"""The local control plane is a real Kubernetes API server: schemas, status subresource, watches, RBAC."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from devkit.kube import Kube

pytestmark = pytest.mark.e2e

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.certsync.io"},
    "spec": {
        "group": "test.certsync.io",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {"size": {"type": "string", "enum": ["small", "large"]}},
                            },
                            "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
                        },
                    }
                },
            }
        ],
    },
}


def widget(name: str, size: str) -> dict[str, Any]:
    return {"apiVersion": "test.certsync.io/v1", "kind": "Widget", "metadata": {"name": name}, "spec": {"size": size}}


def test_crd_schema_status_watch_and_rbac(kube: Kube, namespace: str, sa_kubeconfig: Any) -> None:
    version = kube.kubectl("version", "-o", "json").stdout
    assert '"gitVersion": "v1.34.4"' in version

    kube.apply(WIDGET_CRD)
    kube.kubectl("wait", "--for=condition=Established", "crd/widgets.test.certsync.io", "--timeout=60s")
    kube.apply(widget("w1", "small"), namespace=namespace)

    refused = kube.apply(widget("w2", "huge"), namespace=namespace, check=False)
    assert refused.returncode != 0 and 'Unsupported value: "huge"' in refused.stderr

    client = kubernetes.config.new_client_from_config(config_file=str(kube.kubeconfig))
    api = kubernetes.client.CustomObjectsApi(client)
    seen: list[str] = []
    started = threading.Event()

    def watch() -> None:
        stream = kubernetes.watch.Watch()
        started.set()
        for event in stream.stream(
            api.list_namespaced_custom_object, "test.certsync.io", "v1", namespace, "widgets", timeout_seconds=30
        ):
            phase = event["object"].get("status", {}).get("phase")
            if event["type"] == "MODIFIED" and phase == "Ready":
                seen.append(phase)
                stream.stop()

    watcher = threading.Thread(target=watch)
    watcher.start()
    started.wait()
    kube.kubectl(
        "patch", "widget", "w1", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", '{"status": {"phase": "Ready"}}',
    )  # fmt: skip
    watcher.join(timeout=40)
    assert seen == ["Ready"]
    assert kube.get("widget", "w1", namespace)["status"] == {"phase": "Ready"}
    client.close()

    reader: Path = sa_kubeconfig(
        "widget-reader", [{"apiGroups": ["test.certsync.io"], "resources": ["widgets"], "verbs": ["get", "list"]}]
    )
    assert (
        kube.kubectl("get", "widgets", "-n", namespace, "-o", "name", kubeconfig=reader).stdout.strip()
        == "widget.test.certsync.io/w1"
    )
    forbidden = kube.kubectl("get", "secrets", "-n", namespace, kubeconfig=reader, check=False)
    assert forbidden.returncode != 0 and "forbidden" in forbidden.stderr.lower()

    sa_client = kubernetes.config.new_client_from_config(config_file=str(reader))
    with pytest.raises(kubernetes.client.ApiException) as denied:
        kubernetes.client.CoreV1Api(sa_client).list_namespaced_secret(namespace)
    assert denied.value.status == 403
    sa_client.close()
