"""Fair share between namespaces, from outside: 40 hung remotes of one tenant do not delay another tenant's pass.

The operator runs as its own process with the ServiceAccount of deploy/, watching two namespaces. The attacker's
40 CdnCertificates each name a remote of their own (one endpoint each, so that no per-remote quota of unproven
credentials serialises them) that answers every call with a byte a second (devkit/hostile.py's "drip"), for as
long as the call lasts (the call deadline is set to its maximum, 5 minutes: the calls hang for the whole test).
With 4 workers, the old pool (a worker held for a pass's whole length) let the attacker's first 4 passes hold every
worker; now a pass lends its worker out while its call hangs, and the attacker holds at most half of the remote
slots, so the victim's new DeploymentTLS (the EMQX emulator, valid credentials) is Ready within 25 s of its
creation.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.factory import issue
from devkit.hostile import hostile
from devkit.kube import Kube
from devkit.processes import PEAK_RSS_GOAL, EmulatorProcess, operator, operator_args, wait_for
from tests.test_e2e_deploymenttls import creds_secret, dtls, emqx_inputs, tls_secret

pytestmark = pytest.mark.e2e
ATTACKERS = 40
WORKERS = 4
REMOTE_SLOTS = 8  # the attacker may hold half: 4 hung calls, 4 slots left for everyone else
VICTIM_READY_S = 25.0


def attacker_resources(endpoint: str) -> list[dict[str, Any]]:
    shop = issue("www.attacker.example")
    bodies: list[dict[str, Any]] = [tls_secret("shop-tls", shop.cert_pem, shop.key_pem())]
    for n in range(ATTACKERS):  # one endpoint, account and username each: 40 independent hung remotes
        bodies.append(creds_secret(f"cdn-creds-{n}", username=f"user-{n}", password=f"wrong-password-{n}"))
        bodies.append({
            "apiVersion": "certsync.io/v1alpha1", "kind": "CdnCertificate", "metadata": {"name": f"hung-{n}"},
            "spec": {"endpoint": f"{endpoint}/remote-{n}", "credentialsSecretRef": {"name": f"cdn-creds-{n}"},
                     "account": f"acct-{n}", "secretName": "shop-tls"},
        })  # fmt: skip
    return bodies


def conditions(kube: Kube, kind: str, name: str, namespace: str) -> dict[str, dict[str, Any]]:
    status = kube.get(kind, name, namespace).get("status", {})
    return {c["type"]: c for c in status.get("conditions", [])}


@pytest.fixture
def attacker(kube: Kube) -> Iterator[str]:
    name = kube.create_namespace()
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_hung_remotes_of_one_namespace_do_not_delay_another(
    kube: Kube,
    namespace: str,
    attacker: str,
    operator_kubeconfig: Path,
    emqx_process: EmulatorProcess,
    tmp_path: Path,
) -> None:
    victim = namespace
    with hostile("cdn", answer="drip") as drip:
        drip_url = drip.url
        kube.apply(*attacker_resources(drip_url), namespace=attacker)
        kube.apply(*emqx_inputs(issue("mqtt.victim.example")), namespace=victim)
        settings = {
            "CERTSYNC_WORKERS": str(WORKERS),
            "CERTSYNC_REMOTE_CONCURRENCY": str(REMOTE_SLOTS),
            "CERTSYNC_REMOTE_CALL_DEADLINE": "5m",  # the hung calls outlast the test
        }
        args = operator_args(f"{victim},{attacker}", emqx_process.url, drip_url)
        with operator(operator_kubeconfig, tmp_path / "operator.log", *args, settings=settings) as running:
            # The attack is on: as many hung calls as the operator lets through (4 either way), and every attacker
            # resource seen (first sight needs no worker).
            wait_for("the attacker's calls to hang", lambda: drip.open_calls() >= WORKERS, timeout=90)
            wait_for(
                "every attacker resource to be seen",
                lambda: all(conditions(kube, "cdncertificate", f"hung-{n}", attacker) for n in range(ATTACKERS)),
                timeout=90,
            )
            assert running.process.poll() is None and running.peak_rss() < PEAK_RSS_GOAL
            created = time.monotonic()
            kube.apply(dtls("broker", emqx_process.url), namespace=victim)
            try:
                wait_for(
                    "the victim's DeploymentTLS to be Ready",
                    lambda: (
                        conditions(kube, "deploymenttls", "broker", victim).get("Ready", {}).get("status") == "True"
                    ),
                    timeout=VICTIM_READY_S,
                )
            except AssertionError:
                seen = conditions(kube, "deploymenttls", "broker", victim)
                raise AssertionError(f"victim not Ready {VICTIM_READY_S:g}s after its creation: {seen}") from None
            took = time.monotonic() - created
            ready = conditions(kube, "deploymenttls", "broker", victim)["Ready"]
            assert ready["reason"] == "Synced" and attacker not in ready["message"]
            assert [w["method"] for w in emqx_process.writes()] == ["POST"]  # its usual calls: one write
            # The attack lasted through the victim's passes: the attacker's calls still hang, at most its share.
            assert WORKERS <= drip.open_calls() <= REMOTE_SLOTS // 2, drip.open_calls()
            assert took < VICTIM_READY_S
