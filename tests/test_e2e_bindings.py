"""CdnCertificate bindings end to end: kube-apiserver, the CDN emulator and the operator as their own processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.factory import Issued, issue
from devkit.kube import Kube
from devkit.processes import EmulatorProcess, emulator, operator, operator_args, wait_for
from tests.test_e2e_cdn import PASSWORD, USER, cdn_cert, reason
from tests.test_e2e_deploymenttls import creds_secret, tls_secret

pytestmark = pytest.mark.e2e
RESOURCE = "/cdn/api/v1/{account}/resource/http/{id}"
TASK = "GET /cdn/api/v1/tasks"


@pytest.fixture
def issuer() -> tuple[Issued, Issued]:
    root = issue("Test Root CA", ca=True)
    return root, issue("Test Intermediate CA", issuer=root, ca=True)


@pytest.fixture
def cdn_resources(tmp_path: Path, issuer: tuple[Issued, Issued]) -> Iterator[EmulatorProcess]:
    (tmp_path / "root.pem").write_bytes(issuer[0].cert_pem)
    with emulator("cdn", "--account", "acct1", "--username", USER, "--password", PASSWORD, "--task-delay", "1",
                  "--resource", "res1=www.shop.example", "--resource", "res2=img.shop.example",
                  "--resource", "res3=www.narrow.example", "--resource", "res4=img.narrow.example",
                  "--resource", "res5=api.shop.example", "--trusted-ca", str(tmp_path / "root.pem")) as running:  # fmt: skip
        yield running


def leaf_secret(name: str, issuer: tuple[Issued, Issued], *names: str) -> dict[str, Any]:
    """A kubernetes.io/tls Secret whose leaf serves `names`, chained to the emulator's trusted root."""
    leaf = issue(names[0], issuer=issuer[1], sans=names)
    return tls_secret(name, leaf.cert_pem + issuer[1].cert_pem, leaf.key_pem())


def changes(cdn: EmulatorProcess, *ids: str) -> list[dict[str, Any]]:
    """The PATCHes and PUTs the resources `ids` received, in order."""
    return [c for c in cdn.writes() if c["template"] == RESOURCE and c["path"].rsplit("/", 1)[1] in ids]


def served(cdn: EmulatorProcess, rid: str) -> Any:
    return cdn.control("POST", "resources", {})["resources"][rid].get("certificate")


def test_bound_to_two_resources_and_a_console_rebind_repaired(
    kube: Kube,
    namespace: str,
    operator_kubeconfig: Path,
    cdn_resources: EmulatorProcess,
    issuer: tuple[Issued, Issued],
    tmp_path: Path,
) -> None:
    cdn = cdn_resources
    kube.apply(creds_secret("cdn-creds", username=USER, password=PASSWORD),
               leaf_secret("shop-tls", issuer, "www.shop.example", "img.shop.example"), namespace=namespace)  # fmt: skip
    kube.apply(cdn_cert("shop", cdn.url, bindTo=["res1", "res2"]), namespace=namespace)
    with operator(operator_kubeconfig, tmp_path / "operator.log", *operator_args(namespace, cdn.url)):
        deadline = time.monotonic() + 90
        while True:  # every state on the way: Ready is never said before both resources serve the seq
            status = kube.get("cdncertificate", "shop", namespace).get("status", {})
            ready: dict[str, Any] = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
            if ready.get("status") == "True":
                break
            assert time.monotonic() < deadline, f"not Ready: {ready}"
            time.sleep(0.1)
        seq = status["seq"]
        assert status["bound"] == "2/2" and served(cdn, "res1") == served(cdn, "res2") == seq
        assert [c["method"] for c in changes(cdn, "res1", "res2")] == ["PATCH", "PATCH"]  # one each
        calls = [c for c in cdn.control("GET", "calls")["calls"] if "/cdn/api/v1/" in c["path"]]
        for rid in ("res1", "res2"):  # a read after the change: what made it Bound
            mine = [i for i, c in enumerate(calls) if c["path"].endswith(f"/{rid}")]
            patched = next(i for i in mine if calls[i]["method"] == "PATCH")
            assert any(calls[i]["method"] == "GET" for i in mine if i > patched)
        assert sum(1 for c in calls if f"{c['method']} {c['template']}" == TASK) >= 2  # both tasks followed
        columns = kube.kubectl("get", "cdncertificate", "shop", "-n", namespace).stdout
        assert "BOUND" in columns and "2/2" in columns  # the printer column

        cdn.control("POST", "resources", {"rebind": {"res1": 77}})  # someone rebinds it in the console
        kube.kubectl("annotate", "cdncertificate", "shop", "-n", namespace, "certsync.io/requested-at=drift")
        wait_for("the rebind repaired", lambda: served(cdn, "res1") == seq and len(changes(cdn, "res1")) == 2, 60)
        kube.kubectl("wait", "-n", namespace, "--for=condition=Ready", "cdncertificate/shop", "--timeout=60s")
        assert len(changes(cdn, "res2")) == 1  # the other resource was read, never written again
    events = kube.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert "Drifted" in events and "serves certificate seq 77" in events


def test_names_not_covered_write_nothing_one_owner_per_resource_and_a_failed_task(
    kube: Kube,
    namespace: str,
    operator_kubeconfig: Path,
    cdn_resources: EmulatorProcess,
    issuer: tuple[Issued, Issued],
    tmp_path: Path,
) -> None:
    cdn = cdn_resources
    cdn.control("POST", "resources", {"failTasks": 1})
    kube.apply(creds_secret("cdn-creds", username=USER, password=PASSWORD),
               leaf_secret("narrow-tls", issuer, "www.narrow.example"),
               leaf_secret("api-tls", issuer, "api.shop.example"), namespace=namespace)  # fmt: skip
    kube.apply(cdn_cert("narrow", cdn.url, secretName="narrow-tls", bindTo=["res3", "res4"]), namespace=namespace)
    with operator(operator_kubeconfig, tmp_path / "operator.log", *operator_args(namespace, cdn.url)):
        kube.kubectl("wait", "-n", namespace, "--for=condition=Stalled", "cdncertificate/narrow", "--timeout=60s")
        assert reason(kube, "cdncertificate", "narrow", namespace) == "NamesNotCovered"
        stalled = kube.get("cdncertificate", "narrow", namespace)["status"]
        message = next(c["message"] for c in stalled["conditions"] if c["type"] == "Ready")
        assert "res4" in message and "img.narrow.example" in message and stalled["bound"] == "0/2"
        assert changes(cdn, "res3", "res4") == []  # zero writes, also to res3, which the certificate covers

        # a younger CdnCertificate naming res3 too: the older one, proven for the account, owns the binding
        kube.apply(leaf_secret("rival-tls", issuer, "www.narrow.example"), namespace=namespace)
        kube.apply(cdn_cert("rival", cdn.url, secretName="rival-tls", bindTo=["res3"]), namespace=namespace)
        kube.kubectl("wait", "-n", namespace, "--for=jsonpath={.status.conditions[?(@.type=='Stalled')].reason}"
                     "=TargetConflict", "cdncertificate/rival", "--timeout=60s")  # fmt: skip
        rival = kube.get("cdncertificate", "rival", namespace)["status"]
        assert "CDN resource res3" in next(c["message"] for c in rival["conditions"] if c["type"] == "Ready")
        assert changes(cdn, "res3") == []

        kube.apply(cdn_cert("api", cdn.url, secretName="api-tls", bindTo=["res5"]), namespace=namespace)
        kube.kubectl("wait", "-n", namespace, "--for=condition=Stalled", "cdncertificate/api", "--timeout=60s")
        assert reason(kube, "cdncertificate", "api", namespace) == "BindingFailed"
        entry = kube.get("cdncertificate", "api", namespace)["status"]["bindings"][0]
        assert entry["state"] == "Failed" and "configuration could not be applied" in entry["message"]
        assert len(changes(cdn, "res5")) == 1 and served(cdn, "res5") is None


def test_a_kill_right_after_the_change_never_sends_it_twice(
    kube: Kube,
    namespace: str,
    operator_kubeconfig: Path,
    cdn_resources: EmulatorProcess,
    issuer: tuple[Issued, Issued],
    tmp_path: Path,
) -> None:
    """kill -9 as soon as the PATCH reached the remote (its task id likely not recorded yet), then once the task id
    is recorded: after each restart the resource is read or its task followed, and no second PATCH goes."""
    cdn = cdn_resources
    kube.apply(creds_secret("cdn-creds", username=USER, password=PASSWORD),
               leaf_secret("shop-tls", issuer, "www.shop.example", "img.shop.example"), namespace=namespace)  # fmt: skip
    args = [*operator_args(namespace, cdn.url), "--leader-election", "false"]  # a restart acts at once
    log = tmp_path / "operator.log"
    kube.apply(cdn_cert("shop", cdn.url, bindTo=["res1"]), namespace=namespace)
    with operator(operator_kubeconfig, log, *args) as running:
        wait_for("the PATCH of res1", lambda: len(changes(cdn, "res1")) == 1, 60, every=0.01)
        running.process.kill()  # SIGKILL: no cleanup, no drain
        running.process.wait()
    with operator(operator_kubeconfig, log, *args) as running:
        kube.kubectl("wait", "-n", namespace, "--for=condition=Ready", "cdncertificate/shop", "--timeout=90s")
        kube.apply(cdn_cert("shop", cdn.url, bindTo=["res1", "res2"]), namespace=namespace)

        def task_recorded() -> bool:
            entries = kube.get("cdncertificate", "shop", namespace).get("status", {}).get("bindings", [])
            return any(e["resourceId"] == "res2" and e.get("taskId") for e in entries)

        wait_for("the task id of res2 recorded", task_recorded, 60, every=0.05)
        running.process.kill()
        running.process.wait()
    seen = cdn.control("GET", "calls")["total"]
    with operator(operator_kubeconfig, log, *args):
        kube.kubectl("wait", "-n", namespace, "--for=condition=Ready", "cdncertificate/shop", "--timeout=90s")
    status = kube.get("cdncertificate", "shop", namespace)["status"]
    assert status["bound"] == "2/2" and served(cdn, "res1") == served(cdn, "res2") == status["seq"]
    assert len(changes(cdn, "res1")) == 1 and len(changes(cdn, "res2")) == 1  # never sent twice
    after = [c for c in cdn.control("GET", "calls", None)["calls"][seen:] if "/cdn/api/v1/" in c["path"]]
    assert any(c["path"].endswith("/res2") and c["method"] == "GET" for c in after)  # read after the restart
