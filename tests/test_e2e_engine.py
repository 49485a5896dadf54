"""The reconcile engine end to end: records before writes, one owner per target, coalescing, identity, deletion.

The operator runs as its own process with the deploy/ ServiceAccount; the emulators are processes too,
so that a kill -9 of the operator right after a remote write is a real crash.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from certsync import pki

from devkit.factory import Chain, issue, three_level
from devkit.kube import Kube
from devkit.processes import (
    EmulatorProcess,
    OperatorProcess,
    emulator,
    operator,
    operator_args,
    reconcile_passes,
    wait_for,
)
from tests.e2e_fixtures import KEY, SECRET
from tests.test_e2e_cdn import PASSWORD, USER, cdn_cert, order
from tests.test_e2e_deploymenttls import creds_secret, dtls, fingerprint, tls_secret

pytestmark = pytest.mark.e2e
DELAYS = (0.0, 0.02, 0.05)  # seconds between the remote's answer to a write and the operator's kill -9
TLS = "/deployments/{deployment_id}/tls"


@pytest.fixture
def emqx_many() -> Iterator[EmulatorProcess]:
    """An EMQX emulator with a deployment per scenario and a write limit that never gets in the way."""
    deployments = [arg for n in range(1, 7) for arg in ("--deployment", f"d{n}")]
    with emulator("emqx", "--api-key", KEY, "--api-secret", SECRET, *deployments, "--pending-seconds", "1",
                  "--write-limit", "100", "--read-limit", "1000") as running:  # fmt: skip
        yield running


@pytest.fixture
def root(tmp_path: Path) -> Chain:
    return three_level("www.shop.example")


@pytest.fixture
def cdn_many(tmp_path: Path, root: Chain) -> Iterator[EmulatorProcess]:
    (tmp_path / "root.pem").write_bytes(root.root.cert_pem)
    resources = [arg for n in range(1, 4) for arg in ("--resource", f"res{n}=r{n}.shop.example")]
    with emulator("cdn", "--account", "acct1", "--username", USER, "--password", PASSWORD, *resources,
                  "--pending-seconds", "1", "--rate-limit", "1000", "--trusted-ca", str(tmp_path / "root.pem")) as running:  # fmt: skip
        yield running


def calls(emu: EmulatorProcess) -> list[dict[str, Any]]:
    return list(emu.control("GET", "calls")["calls"])


def count(emu: EmulatorProcess, method: str, path_part: str) -> int:
    return sum(1 for c in calls(emu) if c["method"] == method and path_part in c["path"])


def kill_after(op: OperatorProcess, emu: EmulatorProcess, method: str, path_part: str, delay: float) -> None:
    """kill -9 the operator `delay` seconds after the emulator answered the first matching write."""
    before = count(emu, method, path_part)
    wait_for(f"{method} {path_part}", lambda: count(emu, method, path_part) > before, every=0.002)
    if delay:
        time.sleep(delay)  # the scenario's kill point, not a wait for a condition
    op.process.kill()
    op.process.wait()


def ready(kube: Kube, kind: str, name: str, namespace: str, timeout: str = "60s") -> None:
    kube.kubectl("wait", "-n", namespace, "--for=condition=Ready", f"{kind}/{name}", f"--timeout={timeout}")


def stalled_reason(kube: Kube, kind: str, name: str, namespace: str) -> str:
    status = kube.get(kind, name, namespace).get("status", {})
    return next((c["reason"] for c in status.get("conditions", []) if c["type"] == "Stalled"), "")


def test_identity_fields_are_immutable(kube: Kube, namespace: str) -> None:
    kube.apply(creds_secret("emqx-creds", apiKey=KEY, apiSecret=SECRET), dtls("broker", "https://e.example"),
               namespace=namespace)  # fmt: skip
    edited = kube.apply(dtls("broker", "https://e.example", deployment="other1"), namespace=namespace, check=False)
    assert edited.returncode != 0 and "deploymentId is immutable: create a new DeploymentTLS" in edited.stderr
    kube.apply(order("o", "https://c.example", resourceId="res1"), namespace=namespace)
    moved = kube.apply(order("o", "https://c.example", resourceId="res2"), namespace=namespace, check=False)
    assert moved.returncode != 0 and "resourceId is immutable" in moved.stderr
    # a seq names the remote certificate a resource owns: changing, adding or dropping it later is refused
    kube.apply(
        cdn_cert("pinned", "https://c.example", seq=1), cdn_cert("free", "https://c.example"), namespace=namespace
    )
    for name, spec in (("pinned", {"seq": 2}), ("pinned", {}), ("free", {"seq": 1})):
        changed = kube.apply(cdn_cert(name, "https://c.example", **spec), namespace=namespace, check=False)
        assert changed.returncode != 0 and "seq is immutable" in changed.stderr, (name, spec, changed.stderr)
    # the endpoint is not an identity field: it may change
    assert kube.apply(dtls("broker", "https://e2.example"), namespace=namespace).returncode == 0


def test_kill_right_after_emqx_writes_never_writes_twice(
    kube: Kube, namespace: str, operator_kubeconfig: Path, emqx_many: EmulatorProcess, tmp_path: Path
) -> None:
    kube.apply(creds_secret("emqx-creds", apiKey=KEY, apiSecret=SECRET), namespace=namespace)
    args = operator_args(namespace, emqx_many.url)
    log = tmp_path / "op.log"
    for n, delay in enumerate(DELAYS, start=1):
        cert = issue(f"mqtt{n}.example.com")
        kube.apply(tls_secret(f"tls-{n}", cert.cert_pem, cert.key_pem()),
                   dtls(f"b{n}", emqx_many.url, deployment=f"d{n}", secretName=f"tls-{n}"), namespace=namespace)  # fmt: skip
        with operator(operator_kubeconfig, log, *args) as op:
            kill_after(op, emqx_many, "POST", f"/d{n}/", delay)
        with operator(operator_kubeconfig, log, *args):
            ready(kube, "deploymenttls", f"b{n}", namespace)
        # and a rotation (made while no operator runs), killed right after the PUT
        rotated = issue(f"mqtt{n}.example.com")
        kube.apply(tls_secret(f"tls-{n}", rotated.cert_pem, rotated.key_pem()), namespace=namespace)
        with operator(operator_kubeconfig, log, *args) as op:
            kill_after(op, emqx_many, "PUT", f"/d{n}/", delay)
        with operator(operator_kubeconfig, log, *args):
            kube.kubectl("wait", "-n", namespace, f"--for=jsonpath={{.status.fingerprint}}={fingerprint(rotated)}",
                         f"deploymenttls/b{n}", "--timeout=60s")  # fmt: skip
            ready(kube, "deploymenttls", f"b{n}", namespace)
        assert (count(emqx_many, "POST", f"/d{n}/"), count(emqx_many, "PUT", f"/d{n}/")) == (1, 1), delay
    installed = emqx_many.control("GET", "tls/d1")
    assert installed["installed"] is True


def test_kill_right_after_cdn_writes_never_writes_twice(
    kube: Kube, namespace: str, operator_kubeconfig: Path, cdn_many: EmulatorProcess, root: Chain, tmp_path: Path
) -> None:
    kube.apply(creds_secret("cdn-creds", username=USER, password=PASSWORD), namespace=namespace)
    args = operator_args(namespace, cdn_many.url)
    log = tmp_path / "op.log"
    add, patch = "/certificate/", "/certificate/"
    for n, delay in enumerate(DELAYS, start=1):
        chain = three_level(f"c{n}.shop.example", root=root.root)
        kube.apply(tls_secret(f"tls-{n}", chain.pem, chain.leaf.key_pem()),
                   cdn_cert(f"c{n}", cdn_many.url, secretName=f"tls-{n}"), namespace=namespace)  # fmt: skip
        adds = count(cdn_many, "POST", add)
        with operator(operator_kubeconfig, log, *args) as op:
            kill_after(op, cdn_many, "POST", add, delay)
        with operator(operator_kubeconfig, log, *args):
            ready(kube, "cdncertificate", f"c{n}", namespace)
            assert count(cdn_many, "POST", add) == adds + 1, delay
        # a rotation made while no operator runs, then killed right after the PATCH
        rotated = three_level(f"c{n}.shop.example", root=root.root)
        kube.apply(tls_secret(f"tls-{n}", rotated.pem, rotated.leaf.key_pem()), namespace=namespace)
        patches = count(cdn_many, "PATCH", patch)
        with operator(operator_kubeconfig, log, *args) as op:
            kill_after(op, cdn_many, "PATCH", patch, delay)
        with operator(operator_kubeconfig, log, *args):
            sha1 = pki.certificate_facts(rotated.leaf.cert).sha1
            kube.kubectl("wait", "-n", namespace, f"--for=jsonpath={{.status.fingerprint}}={sha1}",
                         f"cdncertificate/c{n}", "--timeout=60s")  # fmt: skip
        assert count(cdn_many, "PATCH", patch) == patches + 1, delay


def provider_get(emu: EmulatorProcess, path: str) -> Any:
    """`data` of a GET of the provider's own API (logged in as the tests' user), as a user would see it."""
    token = httpx.post(f"{emu.url}/app/oauth/v1/token/", data={"username": USER, "password": PASSWORD}).json()["token"]
    return httpx.get(f"{emu.url}/app/ssl/v1/account/acct1/{path}", headers={"CDN-AUTH-TOKEN": token}).json()["data"]


def issued_names(emu: EmulatorProcess) -> list[str]:
    """The common names of the Let's Encrypt certificates in the account's list, as the provider's API shows them."""
    return [c["cn"] for c in provider_get(emu, "certificate/") if "let's encrypt" in c["issuer"].lower()]


def test_kill_right_after_orders_never_orders_twice(
    kube: Kube, namespace: str, operator_kubeconfig: Path, cdn_many: EmulatorProcess, tmp_path: Path
) -> None:
    kube.apply(creds_secret("cdn-creds", username=USER, password=PASSWORD), namespace=namespace)
    args = operator_args(namespace, cdn_many.url)
    log = tmp_path / "op.log"
    cases = [("res1", {"resourceId": "res1"}, "r1.shop.example", 0.0),
             ("wild-a", {"domains": ["*.a.example"]}, "*.a.example", 0.0),
             ("res2", {"resourceId": "res2"}, "r2.shop.example", 0.03),
             ("wild-b", {"domains": ["*.b.example"]}, "*.b.example", 0.03)]  # fmt: skip
    for name, spec, cn, delay in cases:
        kube.apply(order(name, cdn_many.url, **spec), namespace=namespace)
        path = f"/letsencrypt/{spec['resourceId']}" if "resourceId" in spec else "/account/acct1/letsencrypt/"
        with operator(operator_kubeconfig, log, *args) as op:
            kill_after(op, cdn_many, "POST", path, delay)
        with operator(operator_kubeconfig, log, *args):
            ready(kube, "letsencryptorder", name, namespace, timeout="90s")
            seq = kube.get("letsencryptorder", name, namespace)["status"]["certificateSeq"]
        assert issued_names(cdn_many).count(cn) == 1, (name, delay)
        assert seq >= 1


def test_two_resources_on_one_deployment(
    kube: Kube, namespace: str, operator_kubeconfig: Path, emqx_many: EmulatorProcess, tmp_path: Path
) -> None:
    cert = issue("mqtt.example.com")
    kube.apply(creds_secret("emqx-creds", apiKey=KEY, apiSecret=SECRET), tls_secret("mqtt-tls", cert.cert_pem,
               cert.key_pem()), dtls("first", emqx_many.url, deployment="d4"), namespace=namespace)  # fmt: skip
    with operator(operator_kubeconfig, tmp_path / "op.log", *operator_args(namespace, emqx_many.url)):
        ready(kube, "deploymenttls", "first", namespace)
        before = len(calls(emqx_many))
        kube.apply(dtls("second", emqx_many.url, deployment="d4", deletionPolicy="Delete"), namespace=namespace)
        wait_for(
            "TargetConflict", lambda: stalled_reason(kube, "deploymenttls", "second", namespace) == "TargetConflict"
        )
        message = next(c["message"] for c in kube.get("deploymenttls", "second", namespace)["status"]["conditions"])
        assert f"{namespace}/first" in message and len(calls(emqx_many)) == before
        kube.kubectl("delete", "deploymenttls", "second", "-n", namespace, "--timeout=60s")
        assert count(emqx_many, "DELETE", "/d4/") == 0 and emqx_many.control("GET", "tls/d4")["installed"] is True


def test_burst_of_rotations_coalesces(
    kube: Kube, namespace: str, operator_kubeconfig: Path, emqx_many: EmulatorProcess, tmp_path: Path
) -> None:
    first = issue("mqtt.example.com")
    kube.apply(creds_secret("emqx-creds", apiKey=KEY, apiSecret=SECRET),
               tls_secret("mqtt-tls", first.cert_pem, first.key_pem()),
               dtls("broker", emqx_many.url, deployment="d5"), namespace=namespace)  # fmt: skip
    with operator(operator_kubeconfig, tmp_path / "op.log", *operator_args(namespace, emqx_many.url)):
        ready(kube, "deploymenttls", "broker", namespace)
        writes_before = count(emqx_many, "PUT", "/d5/") + count(emqx_many, "POST", "/d5/")
        burst = [issue(f"mqtt-{n}.example.com") for n in range(5)]
        started = time.monotonic()
        for cert in burst:  # five rotations within 2.5 s
            kube.apply(tls_secret("mqtt-tls", cert.cert_pem, cert.key_pem()), namespace=namespace)
            time.sleep(max(0.0, 0.5 - (time.monotonic() - started) % 0.5))  # the burst's pacing
        kube.kubectl("wait", "-n", namespace, f"--for=jsonpath={{.status.fingerprint}}={fingerprint(burst[-1])}",
                     "deploymenttls/broker", "--timeout=90s")  # fmt: skip
        ready(kube, "deploymenttls", "broker", namespace)
        writes = count(emqx_many, "PUT", "/d5/") + count(emqx_many, "POST", "/d5/") - writes_before
        assert 1 <= writes <= 2
        assert emqx_many.control("GET", "tls/d5")["fingerprint"] == fingerprint(burst[-1])


def test_endpoint_edit_is_reverified_with_reads_only(
    kube: Kube, namespace: str, operator_kubeconfig: Path, emqx_many: EmulatorProcess, tmp_path: Path
) -> None:
    cert = issue("mqtt.example.com")
    alias = emqx_many.url.replace("127.0.0.1", "localhost")
    kube.apply(creds_secret("emqx-creds", apiKey=KEY, apiSecret=SECRET),
               tls_secret("mqtt-tls", cert.cert_pem, cert.key_pem()),
               dtls("broker", emqx_many.url, deployment="d6"), namespace=namespace)  # fmt: skip
    with operator(operator_kubeconfig, tmp_path / "op.log", *operator_args(namespace, emqx_many.url, alias)):
        ready(kube, "deploymenttls", "broker", namespace)
        writes = count(emqx_many, "POST", "/d6/") + count(emqx_many, "PUT", "/d6/")
        reads = count(emqx_many, "GET", "/d6/")
        kube.apply(dtls("broker", alias, deployment="d6"), namespace=namespace)
        wait_for(
            "the new target recorded",
            lambda: alias in kube.get("deploymenttls", "broker", namespace)["status"].get("target", ""),
        )
        ready(kube, "deploymenttls", "broker", namespace)
        assert count(emqx_many, "POST", "/d6/") + count(emqx_many, "PUT", "/d6/") == writes
        assert count(emqx_many, "GET", "/d6/") > reads


def test_deletion_with_credentials_gone_and_with_a_503_storm(
    kube: Kube, namespace: str, operator_kubeconfig: Path, cdn_many: EmulatorProcess, root: Chain, tmp_path: Path
) -> None:
    kube.apply(creds_secret("cdn-creds", username=USER, password=PASSWORD),
               tls_secret("shop-tls", root.pem, root.leaf.key_pem()),
               cdn_cert("shop", cdn_many.url, deletionPolicy="Delete"), namespace=namespace)  # fmt: skip
    args = [*operator_args(namespace, cdn_many.url), "--delete-timeout", "8"]
    with operator(operator_kubeconfig, tmp_path / "op.log", *args):
        ready(kube, "cdncertificate", "shop", namespace)
        # what a namespace deletion does: the credentials Secret may go first
        kube.kubectl("delete", "secret", "cdn-creds", "-n", namespace)
        kube.kubectl("delete", "cdncertificate", "shop", "-n", namespace, "--timeout=60s")
        assert count(cdn_many, "DELETE", "/certificate/") == 1
        # a remote that answers 503 to everything: retried with Warnings, released within the bound
        other = three_level("img.shop.example", root=root.root)
        kube.apply(creds_secret("cdn-creds", username=USER, password=PASSWORD),
                   tls_secret("img-tls", other.pem, other.leaf.key_pem()),
                   cdn_cert("img", cdn_many.url, secretName="img-tls", deletionPolicy="Delete"), namespace=namespace)  # fmt: skip
        ready(kube, "cdncertificate", "img", namespace)
        cdn_many.control("POST", "faults", {"kind": "503", "count": 1000, "method": "DELETE"})
        started = time.monotonic()
        kube.kubectl("delete", "cdncertificate", "img", "-n", namespace, "--timeout=90s")
        assert time.monotonic() - started < 60
    events = kube.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert "DeleteRetrying" in events and "DeleteFailed" in events


def test_two_resource_orders_in_one_account_each_report_their_own_certificate(
    kube: Kube, namespace: str, operator_kubeconfig: Path, cdn_many: EmulatorProcess, tmp_path: Path
) -> None:
    kube.apply(creds_secret("cdn-creds", username=USER, password=PASSWORD),
               order("one", cdn_many.url, resourceId="res1"), order("two", cdn_many.url, resourceId="res2"),
               namespace=namespace)  # fmt: skip
    with operator(operator_kubeconfig, tmp_path / "op.log", *operator_args(namespace, cdn_many.url)):
        for name in ("one", "two"):
            ready(kube, "letsencryptorder", name, namespace, timeout="90s")
    for name, cn in (("one", "r1.shop.example"), ("two", "r2.shop.example")):
        seq = kube.get("letsencryptorder", name, namespace)["status"]["certificateSeq"]
        assert provider_get(cdn_many, f"certificate/{seq}")[0]["cn"] == cn, name


def test_client_ca_rotation_and_chain_only_change_are_one_write_each(
    kube: Kube,
    namespace: str,
    operator_kubeconfig: Path,
    emqx_many: EmulatorProcess,
    cdn_many: EmulatorProcess,
    root: Chain,
    tmp_path: Path,
) -> None:
    chain = three_level("mqtt.example.com", root=root.root)
    ca = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "client-ca"},
          "stringData": {"ca.crt": issue("Client CA 1", ca=True).cert_pem.decode()}}  # fmt: skip
    kube.apply(creds_secret("emqx-creds", apiKey=KEY, apiSecret=SECRET),
               creds_secret("cdn-creds", username=USER, password=PASSWORD), ca,
               tls_secret("mqtt-tls", chain.pem, chain.leaf.key_pem()),
               dtls("broker", emqx_many.url, deployment="d3", tlsType="two-way",
                    clientCA={"secretName": "client-ca", "key": "ca.crt"}),
               cdn_cert("shop", cdn_many.url, secretName="mqtt-tls"), namespace=namespace)  # fmt: skip
    args = operator_args(namespace, emqx_many.url, cdn_many.url)
    with operator(operator_kubeconfig, tmp_path / "op.log", *args):
        ready(kube, "deploymenttls", "broker", namespace)
        ready(kube, "cdncertificate", "shop", namespace)
        digest = kube.get("deploymenttls", "broker", namespace)["status"]["appliedDigest"]
        ca["stringData"] = {"ca.crt": issue("Client CA 2", ca=True).cert_pem.decode()}
        kube.apply(ca, namespace=namespace)
        wait_for("the new client CA applied",
                 lambda: kube.get("deploymenttls", "broker", namespace)["status"].get("appliedDigest") != digest)  # fmt: skip
        ready(kube, "deploymenttls", "broker", namespace)
        assert (count(emqx_many, "POST", "/d3/"), count(emqx_many, "PUT", "/d3/")) == (1, 1)
        # the same leaf and key under a re-issued intermediate: one write to each remote
        digests = {k: kube.get(k, n, namespace)["status"]["appliedDigest"] for k, n in
                   (("deploymenttls", "broker"), ("cdncertificate", "shop"))}  # fmt: skip
        reissued = chain.leaf.cert_pem + chain.reissued_intermediate_pem()
        kube.apply(tls_secret("mqtt-tls", reissued, chain.leaf.key_pem()), namespace=namespace)
        for kind, name in (("deploymenttls", "broker"), ("cdncertificate", "shop")):
            wait_for(f"{kind} applied the new chain",
                     lambda k=kind, n=name: kube.get(k, n, namespace)["status"].get("appliedDigest") != digests[k])  # fmt: skip
            ready(kube, kind, name, namespace)
        assert count(emqx_many, "PUT", "/d3/") == 2 and count(cdn_many, "PATCH", "/certificate/") == 1


def test_a_restart_in_sync_makes_no_remote_write_and_no_status_write(
    kube: Kube,
    namespace: str,
    operator_kubeconfig: Path,
    emqx_many: EmulatorProcess,
    cdn_many: EmulatorProcess,
    root: Chain,
    tmp_path: Path,
) -> None:
    cert = issue("mqtt.example.com")
    kube.apply(creds_secret("emqx-creds", apiKey=KEY, apiSecret=SECRET),
               creds_secret("cdn-creds", username=USER, password=PASSWORD),
               tls_secret("mqtt-tls", cert.cert_pem, cert.key_pem()),
               tls_secret("shop-tls", root.pem, root.leaf.key_pem()),
               dtls("broker", emqx_many.url, deployment="d2"), cdn_cert("shop", cdn_many.url),
               order("www", cdn_many.url, resourceId="res3"), namespace=namespace)  # fmt: skip
    args = operator_args(namespace, emqx_many.url, cdn_many.url)
    resources = (("deploymenttls", "broker"), ("cdncertificate", "shop"), ("letsencryptorder", "www"))
    with operator(operator_kubeconfig, tmp_path / "op.log", *args):
        for kind, name in resources:
            ready(kube, kind, name, namespace, timeout="90s")
    versions = {name: kube.get(kind, name, namespace)["metadata"]["resourceVersion"] for kind, name in resources}
    remote = (len(emqx_many.writes()), len(cdn_many.writes()))
    with operator(operator_kubeconfig, tmp_path / "op.log", *args) as op:
        wait_for("a pass over each resource", lambda: reconcile_passes(op.metrics_url) >= len(resources))
        after = {name: kube.get(kind, name, namespace)["metadata"]["resourceVersion"] for kind, name in resources}
    assert after == versions
    assert (len(emqx_many.writes()), len(cdn_many.writes())) == remote
