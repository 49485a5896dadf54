"""CdnCertificate and LetsEncryptOrder end to end: kube-apiserver, the CDN emulator and the operator as processes."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.factory import Chain, three_level
from devkit.kube import Kube
from devkit.processes import EmulatorProcess, emulator, operator, operator_args, reconcile_passes, wait_for
from tests.test_e2e_deploymenttls import creds_secret, tls_secret

pytestmark = pytest.mark.e2e
USER, PASSWORD = "e2e-user", "e2e-cdn-password-Q4"
ADD = "POST /app/ssl/v1/account/{account}/certificate/"
LIST = "GET /app/ssl/v1/account/{account}/certificate/"
GET = "GET /app/ssl/v1/account/{account}/certificate/{seq}"


@pytest.fixture
def root_chain(tmp_path: Path) -> Chain:
    return three_level("www.shop.example")


@pytest.fixture
def cdn_process(tmp_path: Path, root_chain: Chain) -> Iterator[EmulatorProcess]:
    (tmp_path / "root.pem").write_bytes(root_chain.root.cert_pem)
    with emulator("cdn", "--account", "acct1", "--username", USER, "--password", PASSWORD,
                  "--resource", "res1=www.shop.example", "--resource", "res2=img.shop.example",
                  "--failing", "res2", "--pending-seconds", "2", "--trusted-ca", str(tmp_path / "root.pem")) as running:  # fmt: skip
        yield running


def cdn_inputs(chain: Chain, password: str = PASSWORD) -> list[dict[str, Any]]:
    """The two Secrets a CdnCertificate of these tests reads: credentials and the certificate."""
    return [
        creds_secret("cdn-creds", username=USER, password=password),
        tls_secret("shop-tls", chain.pem, chain.leaf.key_pem()),
    ]


def cdn_cert(name: str, endpoint: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "certsync.io/v1alpha1", "kind": "CdnCertificate", "metadata": {"name": name},
            "spec": {"endpoint": endpoint, "credentialsSecretRef": {"name": "cdn-creds"}, "account": "acct1",
                     "secretName": "shop-tls", **spec}}  # fmt: skip


def order(name: str, endpoint: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "certsync.io/v1alpha1", "kind": "LetsEncryptOrder", "metadata": {"name": name},
            "spec": {"endpoint": endpoint, "credentialsSecretRef": {"name": "cdn-creds"}, "account": "acct1", **spec}}  # fmt: skip


def reason(kube: Kube, kind: str, name: str, namespace: str) -> str:
    status = kube.get(kind, name, namespace).get("status", {})
    return next((c["reason"] for c in status.get("conditions", []) if c["type"] == "Ready"), "")


def test_add_adopt_rotate_delete(
    kube: Kube,
    namespace: str,
    operator_kubeconfig: Path,
    cdn_process: EmulatorProcess,
    root_chain: Chain,
    tmp_path: Path,
) -> None:
    kube.apply(*cdn_inputs(root_chain), namespace=namespace)
    kube.apply(cdn_cert("shop", cdn_process.url, deletionPolicy="Delete"), namespace=namespace)
    log = tmp_path / "operator.log"
    with operator(operator_kubeconfig, log, *operator_args(namespace, cdn_process.url)):
        kube.kubectl("wait", "-n", namespace, "--for=condition=Ready", "cdncertificate/shop", "--timeout=60s")
        status = kube.get("cdncertificate", "shop", namespace)["status"]
        assert status["cn"] == "www.shop.example" and status["chain"] == ["www.shop.example", "Test Intermediate CA"]
        assert status["issuer"] == "Test Intermediate CA" and status["seq"] == 1
        assert cdn_process.counts()[ADD] == 1

        # a second resource with the same certificate, or naming its seq, would fight over it: TargetConflict
        kube.apply(cdn_cert("shop-again", cdn_process.url), cdn_cert("by-seq", cdn_process.url, seq=1),
                   namespace=namespace)  # fmt: skip
        for name in ("shop-again", "by-seq"):
            kube.kubectl("wait", "-n", namespace, "--for=jsonpath={.status.conditions[?(@.type=='Stalled')].reason}"
                         "=TargetConflict", f"cdncertificate/{name}", "--timeout=60s")  # fmt: skip
        assert cdn_process.counts()[ADD] == 1

        # a drift check (forced by the annotation) costs one list call for the account, no get
        before = cdn_process.counts()
        synced = kube.get("cdncertificate", "shop", namespace)["status"]["lastSyncTime"]
        while dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") <= synced:  # whole seconds: a check made
            time.sleep(0.05)  # in the second of the last one would leave lastSyncTime as it is (CI saw it)
        kube.kubectl("annotate", "cdncertificate", "shop", "-n", namespace, "certsync.io/requested-at=drift")
        deadline = time.monotonic() + 30
        while kube.get("cdncertificate", "shop", namespace)["status"].get("lastSyncTime") == synced:
            assert time.monotonic() < deadline, "drift check did not run"
            time.sleep(0.2)
        after = cdn_process.counts()
        assert after[LIST] - before[LIST] <= 1
        assert after.get(GET, 0) == before.get(GET, 0) and after[ADD] == 1

        # deleting the conflicting ones (even with Delete) never touches the owner's certificate
        kube.apply(cdn_cert("by-seq", cdn_process.url, seq=1, deletionPolicy="Delete"), namespace=namespace)
        kube.kubectl("delete", "cdncertificate", "shop-again", "by-seq", "-n", namespace, "--timeout=60s")
        assert not any(c.startswith("DELETE") for c in cdn_process.counts())
        kube.kubectl("delete", "cdncertificate", "shop", "-n", namespace, "--timeout=60s")
        assert cdn_process.counts()["DELETE /app/ssl/v1/account/{account}/certificate/{seq}"] == 1
    text = log.read_text() + kube.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert PASSWORD not in text and root_chain.leaf.key_pem().decode().splitlines()[1] not in text


def test_letsencrypt_orders(
    kube: Kube, namespace: str, operator_kubeconfig: Path, cdn_process: EmulatorProcess, tmp_path: Path
) -> None:
    kube.apply(creds_secret("cdn-creds", username=USER, password=PASSWORD), namespace=namespace)
    kube.apply(order("www", cdn_process.url, resourceId="res1"), order("img", cdn_process.url, resourceId="res2"),
               order("wild", cdn_process.url, domains=["*.d.example.com", "d.example.com"]), namespace=namespace)  # fmt: skip
    with operator(
        kube.kubeconfig,
        tmp_path / "operator.log",
        *operator_args(namespace, cdn_process.url),
    ):
        for name in ("www", "wild"):
            kube.kubectl("wait", "-n", namespace, "--for=condition=Ready", f"letsencryptorder/{name}", "--timeout=90s")
        kube.kubectl("wait", "-n", namespace, "--for=condition=Stalled", "letsencryptorder/img", "--timeout=90s")
    www = kube.get("letsencryptorder", "www", namespace)["status"]
    assert www["taskStatus"] == "processed" and www["certificateSeq"] >= 1 and www["notAfter"]
    wild = kube.get("letsencryptorder", "wild", namespace)["status"]
    assert wild["certificateSeq"] >= 1 and wild["certificateSeq"] != www["certificateSeq"]
    img = kube.get("letsencryptorder", "img", namespace)["status"]
    assert reason(kube, "letsencryptorder", "img", namespace) == "OrderFailed", img["conditions"]
    posts = [k for k in cdn_process.counts() if k.startswith("POST /app/ssl/v1/account/{account}/letsencrypt")]
    assert sum(cdn_process.counts()[k] for k in posts) == 3  # each order posted exactly once


def test_schema_refuses_both_resource_and_domains(kube: Kube, namespace: str) -> None:
    refused = kube.apply(
        order("both", "https://x.example", resourceId="r", domains=["a.example.com"]), namespace=namespace, check=False
    )
    assert refused.returncode != 0 and "exactly one of resourceId and domains" in refused.stderr
    assert json.loads(kube.kubectl("get", "letsencryptorders", "-n", namespace, "-o", "json").stdout)["items"] == []


def test_459_adopts_the_existing_certificate(
    kube: Kube,
    namespace: str,
    operator_kubeconfig: Path,
    cdn_process: EmulatorProcess,
    root_chain: Chain,
    tmp_path: Path,
) -> None:
    """Someone added the same certificate, and the list lags behind: the add answers 459 and certsync adopts it."""
    import httpx

    token = httpx.post(f"{cdn_process.url}/app/oauth/v1/token/", data={"username": USER, "password": PASSWORD}).json()[
        "token"
    ]
    body = {
        "certificate": root_chain.pem.decode(),
        "private_key": root_chain.leaf.key_pem().decode(),
        "comment": "by hand",
    }
    added = httpx.post(
        f"{cdn_process.url}/app/ssl/v1/account/acct1/certificate/", json=body, headers={"CDN-AUTH-TOKEN": token}
    ).json()
    seq = added["data"]["seq"]
    cdn_process.control("POST", "letsencrypt", {"hideFromList": [{"seq": seq, "calls": 1}]})
    kube.apply(*cdn_inputs(root_chain), namespace=namespace)
    kube.apply(cdn_cert("shop", cdn_process.url), namespace=namespace)
    with operator(
        operator_kubeconfig,
        tmp_path / "op.log",
        *operator_args(namespace, cdn_process.url),
    ):
        kube.kubectl("wait", "-n", namespace, "--for=condition=Ready", "cdncertificate/shop", "--timeout=60s")
    assert kube.get("cdncertificate", "shop", namespace)["status"]["seq"] == seq
    adds = [c for c in cdn_process.control("GET", "calls")["calls"] if f"{c['method']} {c['template']}" == ADD]
    assert [c["status"] for c in adds] == [200, 200]  # ours answered 459 inside an HTTP 200 envelope
    events = kube.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert "adopted existing certificate" in events and "(459)" in events


def test_wrong_cdn_password_stalls_and_is_never_retried(
    kube: Kube,
    namespace: str,
    operator_kubeconfig: Path,
    cdn_process: EmulatorProcess,
    root_chain: Chain,
    tmp_path: Path,
) -> None:
    kube.apply(creds_secret("cdn-creds", username=USER, password="wrong-password-77"),
               tls_secret("shop-tls", root_chain.pem, root_chain.leaf.key_pem()), namespace=namespace)  # fmt: skip
    kube.apply(cdn_cert("shop", cdn_process.url), namespace=namespace)
    log = tmp_path / "op.log"
    with operator(operator_kubeconfig, log, *operator_args(namespace, cdn_process.url)) as running:
        kube.kubectl("wait", "-n", namespace, "--for=condition=Stalled", "cdncertificate/shop", "--timeout=60s")
        assert reason(kube, "cdncertificate", "shop", namespace) == "CredentialsInvalid"
        passes = reconcile_passes(running.metrics_url)
        kube.kubectl(
            "annotate", "cdncertificate/shop", "-n", namespace, "certsync.io/requested-at=again", "--overwrite"
        )
        wait_for("the forced pass", lambda: reconcile_passes(running.metrics_url) > passes)
        assert cdn_process.counts() == {"POST /app/oauth/v1/token/": 1}  # one wrong password, never a second
        # the Secret changes: one new login, which succeeds
        kube.apply(creds_secret("cdn-creds", username=USER, password=PASSWORD), namespace=namespace)
        kube.kubectl("wait", "-n", namespace, "--for=condition=Ready", "cdncertificate/shop", "--timeout=60s")
    assert cdn_process.counts()["POST /app/oauth/v1/token/"] == 2
    text = log.read_text() + json.dumps(kube.get("cdncertificate", "shop", namespace))
    assert "wrong-password-77" not in text and PASSWORD not in text
