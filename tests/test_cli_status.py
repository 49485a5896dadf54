"""`certsync status`: a fleet's state from the cluster alone, as a table or a stable JSON/YAML document."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from certsync import fleet

from devkit.kube import Kube
from tests.test_e2e_cdn import cdn_cert, order
from tests.test_e2e_deploymenttls import dtls

NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
HOUR = 3600.0


def obj(kind: str, name: str, status: dict[str, Any], spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "namespace": "team-a"}, "spec": spec or {}, "status": status}


def ready(status: str, reason: str, message: str = "") -> list[dict[str, Any]]:
    return [{"type": "Ready", "status": status, "reason": reason, "message": message}]


FLEET: list[tuple[str, dict[str, Any]]] = [
    ("deploymenttlses", obj("DeploymentTLS", "broker", {
        "conditions": ready("True", "Synced"), "target": "https://emqx.example|d1", "remoteStatus": "running",
        "fingerprint": "AB:CD", "expire": "2027-02-01T00:00:00Z", "lastWriteTime": "2026-12-03T11:30:00Z",
        "lastSyncTime": "2026-12-03T11:30:00Z", "writeTimes": [NOW.timestamp() - 600, NOW.timestamp() - 7200],
    })),
    ("cdncertificates", obj("CdnCertificate", "shop", {
        "conditions": ready("False", "RateLimited", "next call possible in 50s"), "seq": 7,
        "notAfter": "2027-03-01T00:00:00Z", "target": "https://cdn.example|acct1",
    })),
    ("letsencryptorders", obj("LetsEncryptOrder", "www", {"taskStatus": "accepted"}, {"resourceId": "res1"})),
]  # fmt: skip


def test_rows_say_what_each_kind_knows() -> None:
    found = {r.name: r for r in fleet.rows(FLEET, NOW, 6 * HOUR)}
    broker, shop, www = found["broker"], found["shop"], found["www"]
    assert (broker.ready, broker.reason, broker.remote, broker.target) == (
        "True",
        "Synced",
        "running",
        "https://emqx.example d1",
    )
    assert broker.writes_left == 5  # one write inside the hour, one before it
    assert broker.next_check == "2026-12-03T17:30:00Z"
    assert (shop.ready, shop.remote, shop.expires, shop.writes_left) == ("False", "seq 7", "2027-03-01T00:00:00Z", None)
    assert shop.next_check == ""  # never synced: no drift check is due
    assert (www.ready, www.reason, www.remote, www.target) == ("Unknown", "", "accepted", "res1")  # fmt: skip


def test_a_cdn_certificates_next_check_is_its_accounts_next_cycle() -> None:
    status = {"target": "https://cdn.example|acct1", "lastSyncTime": "2026-12-03T11:00:00Z"}
    row = fleet.row("cdncertificates", obj("CdnCertificate", "c", status), NOW, 6 * HOUR)
    due = dt.datetime.fromisoformat(row.next_check.replace("Z", "+00:00"))
    last = dt.datetime(2026, 12, 3, 11, tzinfo=dt.UTC)
    assert last < due <= last + dt.timedelta(hours=6)


def test_the_table_reads_like_kubectls() -> None:
    text = fleet.table(fleet.rows(FLEET, NOW, 6 * HOUR), with_namespace=True)
    lines = text.splitlines()
    assert lines[0].split("   ")[0] == "NAMESPACE" and "WRITES LEFT" in lines[0]
    assert lines[1].startswith("team-a") and "cdncertificate/shop" in lines[1] and "<none>" in lines[1]
    assert all(line == line.rstrip() for line in lines)
    columns = lines[0].index("READY")
    assert all(line[columns:].split()[0] in ("READY", "True", "False", "Unknown") for line in lines)
    assert "NAMESPACE" not in fleet.table(fleet.rows(FLEET, NOW, 6 * HOUR), with_namespace=False)


def test_long_cells_are_cut() -> None:
    status = {"conditions": ready("False", "X" * 200)}
    text = fleet.table(
        [fleet.row("cdncertificates", obj("CdnCertificate", "c", status), NOW, HOUR)], with_namespace=False
    )
    assert "X" * 200 not in text and "X" * (fleet.MAX_CELL - 1) + "…" in text


def test_the_document_keys_are_stable() -> None:
    """Scripts read these keys: a change here is a breaking change (bump SCHEMA_VERSION and say so)."""
    doc = fleet.document(fleet.rows(FLEET, NOW, 6 * HOUR))
    assert (doc["schemaVersion"], doc["ready"], doc["notReady"]) == (1, False, 2)
    assert list(doc["items"][0]) == [
        "namespace", "kind", "name", "ready", "reason", "message", "target", "remote", "fingerprint", "expires",
        "lastWrite", "nextCheck", "writesLeft",
    ]  # fmt: skip
    assert json.loads(json.dumps(doc)) == doc


def test_kinds_are_named_as_users_type_them() -> None:
    assert fleet.kind_of("DeploymentTLS") == fleet.kind_of("dtls") == fleet.kind_of("deploymenttlses")
    assert fleet.kind_of("CDNCertificate") == "cdncertificates" and fleet.kind_of("leorder") == "letsencryptorders"
    assert fleet.kind_of("pods") is None


def status_cli(*args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--kubeconfig", str(kubeconfig)] if kubeconfig else []
    return subprocess.run([sys.executable, "-m", "certsync", "status", *args, *extra], capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_usage_and_cluster_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    assert status_cli("pods").returncode == 2
    assert status_cli("dtls/x", "-A").returncode == 2
    missing = status_cli(kubeconfig=tmp_path / "nowhere.kubeconfig")
    assert missing.returncode == 2 and missing.stderr.startswith("certsync status: no cluster to read")
    assert "Traceback" not in missing.stderr


def test_status_against_a_cluster(kube: Kube, namespace: str) -> None:
    """Resources in several states, read from the API server: table, JSON, YAML, one resource, exit codes."""
    kube.apply(dtls("broker", "https://emqx.example"), cdn_cert("shop", "https://cdn.example"),
               order("www", "https://cdn.example", resourceId="res1"), namespace=namespace)  # fmt: skip
    empty = status_cli("-n", namespace, kubeconfig=kube.kubeconfig)
    assert empty.returncode == 1 and "Unknown" in empty.stdout  # no condition yet: not Ready

    def set_status(plural: str, name: str, status: dict[str, Any]) -> None:
        kube.kubectl("patch", plural, name, "-n", namespace, "--subresource=status", "--type=merge",
                     "-p", json.dumps({"status": status}))  # fmt: skip

    synced = {"status": "True", "reason": "Synced", "message": "in sync", "lastTransitionTime": "2026-12-03T11:00:00Z"}
    stalled = {"type": "Ready", "status": "False", "reason": "OrderFailed", "message": "the order failed",
               "lastTransitionTime": "2026-12-03T11:00:00Z"}  # fmt: skip
    set_status("deploymenttlses", "broker", {"conditions": [{"type": "Ready", **synced}], "remoteStatus": "running"})
    set_status("cdncertificates", "shop", {"conditions": [{"type": "Ready", **synced}], "seq": 7})
    set_status("letsencryptorders", "www", {"conditions": [stalled], "taskStatus": "failed"})

    table = status_cli("-n", namespace, kubeconfig=kube.kubeconfig)
    assert table.returncode == 1, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("NAME") and len(lines) == 4
    assert any("letsencryptorder/www" in line and "OrderFailed" in line for line in lines)
    doc = json.loads(status_cli("-A", "-o", "json", kubeconfig=kube.kubeconfig).stdout)
    mine = [item for item in doc["items"] if item["namespace"] == namespace]
    assert {(i["kind"], i["name"], i["ready"], i["remote"]) for i in mine} == {
        ("DeploymentTLS", "broker", "True", "running"), ("CdnCertificate", "shop", "True", "seq 7"),
        ("LetsEncryptOrder", "www", "False", "failed"),
    }  # fmt: skip
    one = status_cli("cdncertificate/shop", "-n", namespace, "-o", "yaml", kubeconfig=kube.kubeconfig)
    assert one.returncode == 0 and yaml.safe_load(one.stdout)["items"][0]["name"] == "shop"
    assert status_cli("dtls", "-n", namespace, kubeconfig=kube.kubeconfig).returncode == 0  # only the Ready one
    gone = status_cli("dtls/nothing", "-n", namespace, kubeconfig=kube.kubeconfig)
    assert gone.returncode == 2 and "not found" in gone.stderr


README_FLEET: list[tuple[str, dict[str, Any]]] = [
    ("cdncertificates", obj("CdnCertificate", "shop", {
        "conditions": ready("True", "Synced"), "seq": 7, "notAfter": "2027-03-01T00:00:00Z",
        "target": "https://api.cdn.example|acct1", "lastWriteTime": "2026-12-03T11:30:00Z",
        "lastSyncTime": "2026-12-03T11:30:00Z",
    })),
    ("deploymenttlses", obj("DeploymentTLS", "broker", {
        "conditions": ready("True", "Synced"), "target": "https://emqx.example|d1", "remoteStatus": "running",
        "expire": "2027-02-01T00:00:00Z", "lastWriteTime": "2026-12-03T11:30:00Z",
        "lastSyncTime": "2026-12-03T11:30:00Z", "writeTimes": [NOW.timestamp() - 1800],
    })),
    ("letsencryptorders", obj("LetsEncryptOrder", "www", {
        "conditions": ready("False", "OrderFailed"), "taskStatus": "failed", "orderedAt": "2026-12-03T11:00:00Z",
    }, {"resourceId": "res1"})),
]  # fmt: skip


def test_the_readmes_sample_is_what_status_prints() -> None:
    printed = fleet.table(fleet.rows(README_FLEET, NOW, 6 * HOUR), with_namespace=False)
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "\n".join("  " + line for line in printed.splitlines()) in readme, printed
