"""Events on a real API server: a repeat counts on the Event posted before, as client-go's recorder does.

The operator's Kubernetes layer runs in process against the local control plane, with a clock the test
moves, so that `lastTimestamp` (whole seconds) moves without waiting.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from certsync.kube import Kube, ObjectRef

from devkit.kube import Kube as Cluster

pytestmark = pytest.mark.e2e
EVENT_RULES = {"apiGroups": [""], "resources": ["events"]}


def events_about(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    found = cluster.kubectl("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}",
                            "-o", "json").stdout  # fmt: skip
    return sorted(json.loads(found)["items"], key=lambda e: e["firstTimestamp"])  # type: ignore[no-any-return]


def layer(kubeconfig: Path, cache: int = 4096) -> tuple[Kube, Callable[[float], None]]:
    """The operator's Kubernetes layer on `kubeconfig`, and a function that moves its clock forward."""
    now = [dt.datetime.now(dt.UTC).replace(microsecond=0)]

    def advance(seconds: float) -> None:
        now[0] += dt.timedelta(seconds=seconds)

    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    return Kube(client, clock=lambda: now[0], event_cache=cache), advance


async def test_the_same_event_three_times_is_one_event_counted_three_times(
    kube: Cluster, namespace: str, sa_kubeconfig: Any
) -> None:
    """With the RBAC the operator needs (create and patch on events), nothing more."""
    config = sa_kubeconfig("events", [{**EVENT_RULES, "verbs": ["create", "patch"]}])
    layer_, advance = layer(config)
    ref = ObjectRef("deploymenttlses", "DeploymentTLS", namespace, "broker", "uid-broker")
    for _ in range(3):
        await layer_.event(ref, "Warning", "RemoteUnavailable", "EMQX answered 503; retrying")
        advance(7)
    [event] = events_about(kube, namespace, "broker")
    assert event["count"] == 3 and event["reason"] == "RemoteUnavailable" and event["type"] == "Warning"
    first, last = (
        dt.datetime.fromisoformat(event[k].replace("Z", "+00:00")) for k in ("firstTimestamp", "lastTimestamp")
    )
    assert (last - first).total_seconds() == 14
    assert event["involvedObject"]["uid"] == "uid-broker" and event["involvedObject"]["kind"] == "DeploymentTLS"

    await layer_.event(ref, "Warning", "RemoteUnavailable", "EMQX answered 502; retrying")  # another message
    assert [e["count"] for e in events_about(kube, namespace, "broker")] == [3, 1]
    kube.kubectl("delete", "events", "-n", namespace, "--all")  # as the API server's event TTL would
    await layer_.event(ref, "Warning", "RemoteUnavailable", "EMQX answered 502; retrying")
    assert [e["count"] for e in events_about(kube, namespace, "broker")] == [1]


async def test_the_remembered_events_are_bounded(kube: Cluster, namespace: str) -> None:
    layer_, advance = layer(kube.kubeconfig, cache=1)
    ref = ObjectRef("cdncertificates", "CdnCertificate", namespace, "shop", "uid-shop")
    for message in ("a", "b", "a", "a"):  # "a" was forgotten when "b" came: posted anew, then counted
        await layer_.event(ref, "Normal", "Synced", message)
        advance(1)
    assert len(layer_.events) == 1
    assert [(e["message"], e["count"]) for e in events_about(kube, namespace, "shop")] == [("a", 1), ("b", 1), ("a", 2)]


async def test_without_the_patch_verb_events_are_posted_one_by_one_not_lost(
    kube: Cluster, namespace: str, sa_kubeconfig: Any
) -> None:
    """An RBAC from before this version (create only): the operator degrades to one Event per occurrence."""
    config = sa_kubeconfig("events-create", [{**EVENT_RULES, "verbs": ["create"]}])
    layer_, _ = layer(config)
    ref = ObjectRef("letsencryptorders", "LetsEncryptOrder", namespace, "order", "uid-order")
    for _ in range(3):
        await layer_.event(ref, "Normal", "Ordered", "ordered a Let's Encrypt certificate")
    assert [e["count"] for e in events_about(kube, namespace, "order")] == [1, 1, 1]
    assert not layer_.patch_events
