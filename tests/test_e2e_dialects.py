"""The operator against each provider dialect, end to end: what EMQ's and the CDN family's material says they answer."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import httpx
import pytest

from devkit.factory import issue, three_level
from devkit.kube import Kube
from devkit.processes import emulator, operator, operator_args
from tests.e2e_fixtures import KEY, SECRET
from tests.test_e2e_cdn import PASSWORD, USER, cdn_cert
from tests.test_e2e_deploymenttls import creds_secret, dtls, tls_secret
from tests.test_e2e_engine import calls, count, ready, stalled_reason, wait_for

pytestmark = pytest.mark.e2e


def emqx(*extra: str):  # type: ignore[no-untyped-def]
    return emulator("emqx", "--api-key", KEY, "--api-secret", SECRET, "--deployment", "d1", "--pending-seconds", "1",
                    "--write-limit", "100", "--read-limit", "1000", *extra)  # fmt: skip


def inputs(kube: Kube, namespace: str, key_kind: str = "ec", days_left: int = 90) -> None:
    now = dt.datetime.now(dt.UTC)
    cert = issue("mqtt.example.com", key_kind=key_kind, not_before=now - dt.timedelta(days=1),
                 not_after=now + dt.timedelta(days=days_left))  # fmt: skip
    kube.apply(creds_secret("emqx-creds", apiKey=KEY, apiSecret=SECRET),
               tls_secret("mqtt-tls", cert.cert_pem, cert.key_pem()), namespace=namespace)  # fmt: skip


@pytest.mark.parametrize("dialect", ["empty-200", "bare-404"])
def test_ready_whatever_shape_absent_tls_takes(
    kube: Kube, namespace: str, operator_kubeconfig: Path, tmp_path: Path, dialect: str
) -> None:
    inputs(kube, namespace)
    with emqx("--dialect", dialect, "--dialect", "cn") as remote:
        kube.apply(dtls("broker", remote.url, deployment="d1"), namespace=namespace)
        with operator(operator_kubeconfig, tmp_path / "op.log", *operator_args(namespace, remote.url)):
            ready(kube, "deploymenttls", "broker", namespace)
            assert kube.get("deploymenttls", "broker", namespace)["status"]["cn"] == "mqtt.example.com"
        assert count(remote, "POST", "/d1/") == 1 and count(remote, "PUT", "/d1/") == 0


def test_a_failed_deployment_stalls_with_the_remote_s_reason(
    kube: Kube, namespace: str, operator_kubeconfig: Path, tmp_path: Path
) -> None:
    inputs(kube, namespace)
    with emqx("--failing-deployment", "d1") as remote:
        kube.apply(dtls("broker", remote.url, deployment="d1"), namespace=namespace)
        with operator(operator_kubeconfig, tmp_path / "op.log", *operator_args(namespace, remote.url)):
            wait_for(
                "RemoteFailed", lambda: stalled_reason(kube, "deploymenttls", "broker", namespace) == "RemoteFailed"
            )
            reads = count(remote, "GET", "/d1/")
            kube.kubectl("annotate", "deploymenttls/broker", "-n", namespace, "certsync.io/requested-at=again")
            wait_for("the forced pass", lambda: count(remote, "GET", "/d1/") > reads)
        assert count(remote, "POST", "/d1/") == 1 and count(remote, "PUT", "/d1/") == 0  # never written again


def test_delete_then_recreate_waits_out_terminated_and_creates_once(
    kube: Kube, namespace: str, operator_kubeconfig: Path, tmp_path: Path
) -> None:
    inputs(kube, namespace)
    with emqx("--dialect", "async-delete", "--terminate-seconds", "4") as remote:
        kube.apply(dtls("broker", remote.url, deployment="d1", deletionPolicy="Delete"), namespace=namespace)
        with operator(operator_kubeconfig, tmp_path / "op.log", *operator_args(namespace, remote.url)):
            ready(kube, "deploymenttls", "broker", namespace)
            kube.kubectl("delete", "deploymenttls", "broker", "-n", namespace, "--timeout=60s")
            kube.apply(dtls("broker-again", remote.url, deployment="d1"), namespace=namespace)
            ready(kube, "deploymenttls", "broker-again", namespace, timeout="90s")
        log = calls(remote)
        deleted = max(i for i, c in enumerate(log) if c["method"] == "DELETE")
        creates = [c for c in log[deleted:] if c["method"] == "POST"]
        assert len(creates) == 1 and creates[0]["status"] == 200  # not sent while `terminated`


@pytest.mark.parametrize(
    ("key_kind", "days_left", "reason"),
    [("ed25519", 90, "KeyTypeUnsupported"), ("rsa4096", 90, "KeyTypeUnsupported"), ("ec", 10, "ValidityTooShort")],
)
def test_what_emqx_refuses_stalls_offline_with_its_reason(
    kube: Kube, namespace: str, operator_kubeconfig: Path, tmp_path: Path, key_kind: str, days_left: int, reason: str
) -> None:
    inputs(kube, namespace, key_kind, days_left)
    with emqx() as remote:
        kube.apply(dtls("broker", remote.url, deployment="d1"), namespace=namespace)
        with operator(operator_kubeconfig, tmp_path / "op.log", *operator_args(namespace, remote.url)):
            wait_for(reason, lambda: stalled_reason(kube, "deploymenttls", "broker", namespace) == reason)
        assert calls(remote) == []


def test_expire_in_another_time_zone_costs_one_write_and_none_after(
    kube: Kube, namespace: str, operator_kubeconfig: Path, tmp_path: Path
) -> None:
    inputs(kube, namespace)
    with emqx("--expire-offset-hours", "8") as remote:
        kube.apply(dtls("broker", remote.url, deployment="d1"), namespace=namespace)
        with operator(operator_kubeconfig, tmp_path / "op.log", *operator_args(namespace, remote.url)):
            ready(kube, "deploymenttls", "broker", namespace)
            for n in range(3):  # drift checks, forced: reads only
                reads = count(remote, "GET", "/d1/")
                kube.kubectl("annotate", "deploymenttls/broker", "-n", namespace, f"certsync.io/requested-at={n}",
                             "--overwrite")  # fmt: skip
                wait_for("a drift check", lambda r=reads: count(remote, "GET", "/d1/") > r)
                ready(kube, "deploymenttls", "broker", namespace)
        assert count(remote, "POST", "/d1/") + count(remote, "PUT", "/d1/") == 1


def test_an_expired_token_answered_405_costs_one_login_and_one_retried_call(
    kube: Kube, namespace: str, operator_kubeconfig: Path, tmp_path: Path
) -> None:
    chain = three_level("www.shop.example")
    (tmp_path / "root.pem").write_bytes(chain.root.cert_pem)
    with emulator("cdn", "--account", "acct1", "--username", USER, "--password", PASSWORD, "--dialect", "expired-405",
                  "--trusted-ca", str(tmp_path / "root.pem")) as remote:  # fmt: skip
        kube.apply(creds_secret("cdn-creds", username=USER, password=PASSWORD),
                   tls_secret("shop-tls", chain.pem, chain.leaf.key_pem()), cdn_cert("shop", remote.url),
                   namespace=namespace)  # fmt: skip
        with operator(operator_kubeconfig, tmp_path / "op.log", *operator_args(namespace, remote.url)):
            ready(kube, "cdncertificate", "shop", namespace)
            logins = count(remote, "POST", "/oauth/")
            httpx.post(f"{remote.url}/_emulator/clock", json={"advance": 7 * 3600}).raise_for_status()
            started = len(calls(remote))
            kube.kubectl("annotate", "cdncertificate/shop", "-n", namespace, "certsync.io/requested-at=later")
            wait_for("a login after the 405", lambda: count(remote, "POST", "/oauth/") > logins)
            ready(kube, "cdncertificate", "shop", namespace)
        after = calls(remote)[started:]
        refused = [c for c in after if c["status"] == 405]
        assert len(refused) == 1 and count(remote, "POST", "/oauth/") == logins + 1
        retried = [c for c in after if c["path"] == refused[0]["path"] and c["status"] == 200]
        assert retried, after
