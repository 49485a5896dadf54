"""Hostile remotes and Secrets of one tenant, from outside: they cost that tenant its own resources, never another's
pass, and never the operator's memory.

The operator runs as its own process (deploy/'s ServiceAccount) on the local control plane and watches two
namespaces: the victim, with a DeploymentTLS on the EMQX emulator and credentials that work, and the attacker,
with none that work. Each case starts the operator after the attacker's resources exist (the worst moment for
memory: the first start reads every input at once), waits until every attacker resource has its reason, then
creates the victim's resource. The victim must be Ready within 25 s of its creation with its usual calls (counted
at the emulator), its status and Events must not name the attacker's namespace, no secret of either tenant may be
in any status, Event or the operator's log, and the operator's peak RSS (VmHWM, read from /proc at the end of the
case) must stay under 200 MB: the pod's limit is 256 Mi, and before the caps one 48 MiB answer took it to 429 MB.

1. Remotes (devkit/hostile.py) answering every call with a 48 MiB JSON body, declared by Content-Length (refused
   unread) or only ended by closing the stream: 32 resources of both kinds, one endpoint each, so that the
   attacker's calls are in flight together (its namespace's share, 16 of the 32 remote slots). A streamed answer is
   cut at the byte cap (4 MiB), or sooner when the namespace's answers being read hold that much together
   (`remote.AnswerMemory`; without it, 16 streams held 64 MiB: measured 183 MB peak, 124 MB with it).
2. Remotes answering JSON nested 200,000 deep (past the recursion limit, under the byte cap).
3. 100 resources naming Secrets of 0.7 MiB each (TLS Secrets and credentials Secrets, each also carrying 200 KiB of
   annotations, which the metadata-only Secret watch lists): over the 512 KiB cap on a referenced Secret's JSON,
   refused with `InvalidSecret` before they are decoded, and not one remote call.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devkit.factory import Issued, issue
from devkit.hostile import HostileRemote, hostile
from devkit.kube import Kube
from devkit.processes import PEAK_RSS_GOAL, EmulatorProcess, operator, operator_args, wait_for
from tests.e2e_fixtures import SECRET, WINDOW
from tests.test_e2e_deploymenttls import creds_secret, dtls, emqx_inputs, tls_secret
from tests.test_e2e_fairshare import attacker, conditions  # noqa: F401  (attacker: a fixture)
from tests.test_e2e_security import hits, key_fragments
from tests.test_e2e_tenancy import events

pytestmark = pytest.mark.e2e
VICTIM_READY_S = 25.0
REASON_S = 90.0  # every attacker resource has its reason within this of the operator's start
VICTIM_DEPLOYMENT = "ge6a1a75"  # the emqx_process fixture's; the attacker's deployments are all others
RESOURCES_PER_REMOTE = 8
BIG_SECRETS = 100
BIG_SECRET_BYTES = 700 * 1024  # decoded; its JSON (base64) is about 0.93 MiB, over the 512 KiB cap
SECRET_CAP_KIB = 512
TLS = "/deployments/{deployment_id}/tls"
# The victim's usual calls, as without any attack: the read (no TLS yet: 404, which proves nothing), the read of
# the deployment (which proves the key), the one write, and the read that finds it `running` (2 s after the write).
USUAL_CALLS = [f"GET {TLS} 404", "GET /deployments/{deployment_id} 200", f"POST {TLS} 200", f"GET {TLS} 200"]
ANNOTATION_BYTES = 200 * 1024  # on each big Secret too: what its metadata brings into every list page and watch event
PADDING_MARK = "attacker-padding-Pd83Qw"  # the first bytes of every big Secret's padding: never to be found


@dataclass
class Case:
    """One attack: the attacker's documents, which of its resources must end how, and what must never be seen."""

    documents: list[dict[str, Any]] = field(default_factory=list)
    resources: list[tuple[str, str]] = field(default_factory=list)  # (kind, name) in the attacker's namespace
    secrets: set[str] = field(default_factory=set)


def attacker_dtls(case: Case, name: str, endpoint: str, creds: str = "junk-emqx", tls: str = "mqtt-tls") -> None:
    body = dtls(name, endpoint, "att" + name.replace("-", ""), secretName=tls)
    body["spec"]["credentialsSecretRef"] = {"name": creds}
    case.documents.append(body)
    case.resources.append(("deploymenttls", name))


def attacker_cdncert(case: Case, name: str, endpoint: str) -> None:
    case.documents.append({
        "apiVersion": "certsync.io/v1alpha1", "kind": "CdnCertificate", "metadata": {"name": name},
        "spec": {"endpoint": endpoint, "credentialsSecretRef": {"name": "junk-cdn"}, "account": f"acct-{name}",
                 "secretName": "shop-tls"},
    })  # fmt: skip
    case.resources.append(("cdncertificate", name))


def attacker_inputs(case: Case) -> Issued:
    """Junk credentials of both APIs and a certificate of its own: everything the attacker's passes read."""
    junk_secret, junk_token = "attacker-emqx-secret-Js40", "attacker-cdn-token-Tk71"
    cert = issue("www.attacker.example")
    case.documents += [
        creds_secret("junk-emqx", apiKey="attacker-key", apiSecret=junk_secret),
        creds_secret("junk-cdn", token=junk_token),
        tls_secret("mqtt-tls", cert.cert_pem, cert.key_pem()),
        tls_secret("shop-tls", cert.cert_pem, cert.key_pem()),
    ]
    case.secrets |= {junk_secret, junk_token} | key_fragments(cert)
    return cert


def remote_case(remotes: list[HostileRemote]) -> Case:
    """RESOURCES_PER_REMOTE resources on each hostile remote, one endpoint path (and target) each."""
    case = Case()
    attacker_inputs(case)
    for index, remote in enumerate(remotes):
        for n in range(RESOURCES_PER_REMOTE):
            endpoint, name = f"{remote.url}/r{index}-{n}", f"{remote.config.api}-{index}-{n}"
            if remote.config.api == "emqx":
                attacker_dtls(case, name, endpoint)
            else:
                attacker_cdncert(case, name, endpoint)
    return case


def ready_of(kube: Kube, kind: str, name: str, namespace: str) -> dict[str, Any]:
    return conditions(kube, kind, name, namespace).get("Ready", {})


def victim_calls(emqx: EmulatorProcess) -> list[str]:
    """Every call of the victim's deployment the emulator received, in order: method, template and status."""
    calls = emqx.control("GET", "calls")["calls"]
    return [f"{c['method']} {c['template']} {c['status']}" for c in calls if VICTIM_DEPLOYMENT in c["path"]]


def contain(
    kube: Kube,
    victim: str,
    attacker_ns: str,
    emqx: EmulatorProcess,
    kubeconfig: Path,
    tmp_path: Path,
    case: Case,
    attacker_done: Callable[[dict[str, Any], list[dict[str, Any]]], bool],
    *endpoints: str,
) -> int:
    """Run one attack through one operator process; returns its peak RSS in bytes (after every assertion but the
    RSS one, which the caller makes, so that the figure is printed either way)."""
    victim_cert = issue("mqtt.victim.example")
    kube.apply(*emqx_inputs(victim_cert), namespace=victim)
    log = tmp_path / "operator.log"
    args = operator_args(f"{victim},{attacker_ns}", emqx.url, *endpoints, window=WINDOW)
    with operator(kubeconfig, log, *args) as running:
        pending = dict.fromkeys(case.resources)

        def all_done() -> bool:
            told = by_resource(events(kube, attacker_ns))
            for kind, name in list(pending):
                if attacker_done(ready_of(kube, kind, name, attacker_ns), told.get(name, [])):
                    del pending[(kind, name)]
            return not pending

        try:
            wait_for("every attacker resource to end with its reason", all_done, timeout=REASON_S, every=0.5)
        except AssertionError:
            left = {n: ready_of(kube, k, n, attacker_ns) for k, n in list(pending)[:3]}
            raise AssertionError(f"{len(pending)} attacker resources without their reason, e.g. {left}") from None
        assert running.process.poll() is None, "the operator died under the attack"
        created = time.monotonic()
        kube.apply(dtls("broker", emqx.url), namespace=victim)
        try:
            wait_for(
                "the victim's DeploymentTLS to be Ready",
                lambda: ready_of(kube, "deploymenttls", "broker", victim).get("status") == "True",
                timeout=VICTIM_READY_S,
            )
        except AssertionError:
            seen = conditions(kube, "deploymenttls", "broker", victim)
            raise AssertionError(f"victim not Ready {VICTIM_READY_S:g}s after its creation: {seen}") from None
        took = time.monotonic() - created
        assert took <= VICTIM_READY_S
        calls = victim_calls(emqx)
        assert calls == USUAL_CALLS, calls
        told = json.dumps(kube.get("deploymenttls", "broker", victim).get("status", {})) + json.dumps(
            events(kube, victim)
        )
        assert attacker_ns not in told, told
        assert running.process.poll() is None, "the operator died under the attack"
        peak = running.peak_rss()
    searched = case.secrets | {SECRET} | key_fragments(victim_cert)
    texts = {"log": log.read_text(errors="replace")}
    for namespace in (victim, attacker_ns):
        texts[f"status {namespace}"] = kube.kubectl(
            "get", "deploymenttls,cdncertificate", "-n", namespace, "-o", "json"
        ).stdout
        texts[f"events {namespace}"] = json.dumps(events(kube, namespace))
    assert {where: hits(text, searched) for where, text in texts.items()} == {where: [] for where in texts}
    print(f"peak RSS (VmHWM) of the operator: {peak / 1e6:.1f} MB; victim Ready after {took:.1f}s")
    return peak


def by_resource(items: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        found.setdefault(item.get("involvedObject", {}).get("name", ""), []).append(item)
    return found


def refused_answer(says: str) -> Callable[[dict[str, Any], list[dict[str, Any]]], bool]:
    """The resource's pass ended on the remote's answer: a RemoteUnavailable Warning whose message says `says`, and
    Ready False since (RemoteUnavailable, or RateLimited: its retry waits for its namespace's quota of unproven
    credentials, one attempt a minute), never Synced."""

    def done(ready: dict[str, Any], told: list[dict[str, Any]]) -> bool:
        warned = any(e.get("reason") == "RemoteUnavailable" and says in e.get("message", "") for e in told)
        return warned and ready.get("status") == "False" and ready.get("reason") in ("RemoteUnavailable", "RateLimited")

    return done


@pytest.fixture
def huge_remotes() -> Iterator[list[HostileRemote]]:
    """48 MiB answers from both APIs, with and without a Content-Length."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(hostile(api, answer="huge", declare_length=declared))
            for api in ("emqx", "cdn")
            for declared in (True, False)
        ]


@pytest.fixture
def nested_remotes() -> Iterator[list[HostileRemote]]:
    with ExitStack() as stack:
        yield [stack.enter_context(hostile(api, answer="nested")) for api in ("emqx", "cdn")]


def test_answers_of_48_mib_are_cut_at_the_cap_and_cost_the_victim_nothing(
    kube: Kube,
    namespace: str,
    attacker: str,  # noqa: F811  (the fixture imported above)
    operator_kubeconfig: Path,
    emqx_process: EmulatorProcess,
    huge_remotes: list[HostileRemote],
    tmp_path: Path,
) -> None:
    case = remote_case(huge_remotes)
    kube.apply(*case.documents, namespace=attacker)
    urls = [r.url for r in huge_remotes]
    # Refused at the default cap (CERTSYNC_REMOTE_MAX_ANSWER_BYTES), declared or read, or sooner: when the
    # namespace's answers being read at once hold that much (remote.AnswerMemory). Either message names the cap.
    capped = refused_answer(str(4 * 1024 * 1024))
    peak = contain(kube, namespace, attacker, emqx_process, operator_kubeconfig, tmp_path, case, capped, *urls)
    for remote in huge_remotes:  # the attack reached every remote: one call per resource at least
        assert len({c.path.split("/")[1] for c in remote.calls()}) == RESOURCES_PER_REMOTE
    assert peak < PEAK_RSS_GOAL, f"peak RSS {peak / 1e6:.1f} MB"


def test_json_nested_200000_deep_is_a_remote_error_and_costs_the_victim_nothing(
    kube: Kube,
    namespace: str,
    attacker: str,  # noqa: F811  (the fixture imported above)
    operator_kubeconfig: Path,
    emqx_process: EmulatorProcess,
    nested_remotes: list[HostileRemote],
    tmp_path: Path,
) -> None:
    case = remote_case(nested_remotes)
    kube.apply(*case.documents, namespace=attacker)
    urls = [r.url for r in nested_remotes]
    undecodable = refused_answer("not JSON (RecursionError)")
    peak = contain(kube, namespace, attacker, emqx_process, operator_kubeconfig, tmp_path, case, undecodable, *urls)
    for remote in nested_remotes:
        assert len({c.path.split("/")[1] for c in remote.calls()}) == RESOURCES_PER_REMOTE
    assert peak < PEAK_RSS_GOAL, f"peak RSS {peak / 1e6:.1f} MB"


def big_secret(name: str, **small: str | bytes) -> dict[str, Any]:
    """A Secret of BIG_SECRET_BYTES (decoded): the keys a pass reads, and random padding beside them."""
    padding = PADDING_MARK.encode() + os.urandom(BIG_SECRET_BYTES - len(PADDING_MARK))
    data = {k: base64.b64encode(v if isinstance(v, bytes) else v.encode()).decode() for k, v in small.items()}
    secret_type = "kubernetes.io/tls" if "tls.crt" in small else "Opaque"
    return {"apiVersion": "v1", "kind": "Secret", "type": secret_type, "metadata": {"name": name, "annotations": {"junk": "B" * ANNOTATION_BYTES}},
            "data": {**data, "padding": base64.b64encode(padding).decode()}}  # fmt: skip


def test_secrets_over_the_cap_are_refused_before_decoding_and_cost_the_victim_nothing(
    kube: Kube,
    namespace: str,
    attacker: str,  # noqa: F811  (the fixture imported above)
    operator_kubeconfig: Path,
    emqx_process: EmulatorProcess,
    tmp_path: Path,
) -> None:
    """Half of the resources name a big TLS Secret, half a big credentials Secret (each their own)."""
    case = Case()
    cert = attacker_inputs(case)
    big: list[dict[str, Any]] = []
    for n in range(BIG_SECRETS):
        if n % 2:
            big.append(big_secret(f"big-tls-{n}", **{"tls.crt": cert.cert_pem, "tls.key": cert.key_pem()}))
            attacker_dtls(case, f"big-{n}", emqx_process.url, tls=f"big-tls-{n}")
        else:
            big.append(big_secret(f"big-creds-{n}", apiKey="attacker-key", apiSecret="attacker-big-secret-Bg52"))
            attacker_dtls(case, f"big-{n}", emqx_process.url, creds=f"big-creds-{n}")
    case.secrets |= {PADDING_MARK, "attacker-big-secret-Bg52"}
    # `create`, not `apply`: apply would copy each Secret into its last-applied annotation, past the size limits.
    for start in range(0, BIG_SECRETS, 10):
        listed = {"apiVersion": "v1", "kind": "List", "items": big[start : start + 10]}
        kube.kubectl("create", "-n", attacker, "-f", "-", input=json.dumps(listed))
    kube.apply(*case.documents, namespace=attacker)

    def refused_secret(ready: dict[str, Any], told: list[dict[str, Any]]) -> bool:
        return ready.get("reason") == "InvalidSecret" and f"{SECRET_CAP_KIB} KiB" in ready.get("message", "")

    peak = contain(kube, namespace, attacker, emqx_process, operator_kubeconfig, tmp_path, case, refused_secret)
    calls = emqx_process.control("GET", "calls")["calls"]
    assert [c["path"] for c in calls if VICTIM_DEPLOYMENT not in c["path"]] == []  # not one call of the attacker
    assert peak < PEAK_RSS_GOAL, f"peak RSS {peak / 1e6:.1f} MB"
