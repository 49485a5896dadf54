"""ClusterRemoteAccounts end to end: the local control plane, both emulators and the operator as its own process
with deploy/'s RBAC. Two tenant namespaces, one selected by the accounts and one not; the credentials live in the
platform's namespace, which no tenant can read."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.factory import Chain, issue
from devkit.kube import REPO, Kube
from devkit.processes import EmulatorProcess, operator, wait_for
from tests.e2e_fixtures import KEY, SECRET, WINDOW
from tests.test_e2e_cdn import PASSWORD, USER, cdn_process, root_chain  # noqa: F401  (fixtures)
from tests.test_e2e_deploymenttls import creds_secret, tls_secret

pytestmark = pytest.mark.e2e
PLATFORM = "certsync-system"
GROUP = "certsync.io/v1alpha1"


@pytest.fixture(autouse=True)
def no_account_left(kube: Kube) -> Iterator[None]:
    """ClusterRemoteAccounts are cluster-scoped: one left behind would be proven again (remote calls, wakes) by the
    operator of every later test. Its kopf finalizer is dropped first: no operator runs now to remove it."""
    yield
    listed = kube.kubectl("get", "clusterremoteaccounts", "-o", "name", check=False).stdout.split()
    for name in listed:
        kube.kubectl("patch", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
    if listed:
        kube.kubectl("delete", *listed, "--wait=true", "--timeout=60s")


@pytest.fixture
def other_namespace(kube: Kube) -> Iterator[str]:
    """A second tenant, never selected by the accounts."""
    name = kube.create_namespace()
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


def account(name: str, provider: str, endpoint: str, secret: str, tenant: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": GROUP, "kind": "ClusterRemoteAccount", "metadata": {"name": name},
            "spec": {"provider": provider, "endpoint": endpoint,
                     "credentialsSecretRef": {"name": secret, "namespace": PLATFORM},
                     "namespaceSelector": {"matchExpressions": [
                         {"key": "certsync.test/tenant", "operator": "In", "values": [tenant]}]}, **spec}}  # fmt: skip


def dtls(name: str, account_name: str, deployment: str) -> dict[str, Any]:
    return {"apiVersion": GROUP, "kind": "DeploymentTLS", "metadata": {"name": name},
            "spec": {"accountRef": {"name": account_name}, "deploymentId": deployment, "tlsType": "one-way",
                     "secretName": "mqtt-tls"}}  # fmt: skip


def cdncert(name: str, account_name: str, secret: str = "shop-tls") -> dict[str, Any]:
    return {"apiVersion": GROUP, "kind": "CdnCertificate", "metadata": {"name": name},
            "spec": {"accountRef": {"name": account_name}, "secretName": secret}}  # fmt: skip


def ready(kube: Kube, kind: str, name: str, namespace: str | None = None) -> tuple[str, str, str]:
    args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
    status = json.loads(kube.kubectl(*args).stdout).get("status", {})
    condition: dict[str, str] = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
    return condition.get("status", ""), condition.get("reason", ""), condition.get("message", "")


def wait_reason(kube: Kube, kind: str, name: str, reason: str, namespace: str | None = None) -> None:
    """Up to two minutes: unproven credentials get one login a minute (a rotation right after a refusal waits)."""
    wait_for(f"{kind}/{name} {reason}", lambda: ready(kube, kind, name, namespace)[1] == reason, timeout=120)


def logins(cdn: EmulatorProcess) -> int:
    return sum(n for call, n in cdn.counts().items() if "oauth" in call)


def emqx_calls(emqx: EmulatorProcess, deployment: str) -> int:
    return sum(n for call, n in emqx.counts().items() if f"/deployments/{deployment}/" in call)


def test_accounts_serve_the_namespaces_they_select_and_nothing_else(
    kube: Kube,
    namespace: str,
    other_namespace: str,
    operator_kubeconfig: Path,
    emqx_process: EmulatorProcess,
    cdn_process: EmulatorProcess,  # noqa: F811
    root_chain: Chain,  # noqa: F811
    tmp_path: Path,
) -> None:
    suffix = uuid.uuid4().hex[:6]
    mqtt, shop, missing, late = (f"{n}-{suffix}" for n in ("mqtt", "shop", "nosecret", "late"))
    kube.kubectl("label", "namespace", namespace, f"certsync.test/tenant={namespace}")
    kube.kubectl("label", "namespace", other_namespace, "certsync.test/tenant=someone-else")
    kube.apply(creds_secret(f"emqx-{suffix}", apiKey=KEY, apiSecret=SECRET),
               creds_secret(f"cdn-{suffix}", username=USER, password="not-the-password"), namespace=PLATFORM)  # fmt: skip
    kube.apply(
        account(mqtt, "emqx", emqx_process.url, f"emqx-{suffix}", namespace, deployments=["ge6a1a75"]),
        account(shop, "cdn", cdn_process.url, f"cdn-{suffix}", namespace, account="acct1"),
        account(missing, "emqx", emqx_process.url, f"gone-{suffix}", namespace),
    )
    cert = issue("mqtt.example.com")
    for ns in (namespace, other_namespace):
        kube.apply(tls_secret("mqtt-tls", cert.cert_pem, cert.key_pem()),
                   tls_secret("shop-tls", root_chain.pem, root_chain.leaf.key_pem()), namespace=ns)  # fmt: skip
    kube.apply(dtls("broker", mqtt, "ge6a1a75"), dtls("elsewhere", mqtt, "dep2"), cdncert("shop", shop),
               cdncert("later", late), namespace=namespace)  # fmt: skip
    kube.apply(dtls("intruder", mqtt, "ge6a1a75"), cdncert("intruder", shop), namespace=other_namespace)
    args = [
        "--allowed-endpoints",
        f"{emqx_process.url}/,{cdn_process.url}/",
        "--emqx-budget-window",
        str(WINDOW),
        "--namespaces",
        f"{namespace},{other_namespace},{PLATFORM}",
    ]  # the platform's: its Secrets are watched

    with operator(operator_kubeconfig, tmp_path / "operator.log", *args):
        wait_reason(kube, "deploymenttls", "broker", "Synced", namespace)
        # refused: another namespace, a deployment the account does not serve; no call for them
        for kind, name, ns in (("deploymenttls", "intruder", other_namespace), ("cdncertificate", "intruder",
                               other_namespace), ("deploymenttls", "elsewhere", namespace)):  # fmt: skip
            wait_reason(kube, kind, name, "AccountNotAllowed", ns)
            assert ready(kube, kind, name, ns)[0] == "False"
        assert "does not allow namespace" in ready(kube, "deploymenttls", "intruder", other_namespace)[2]
        assert "does not serve deployment 'dep2'" in ready(kube, "deploymenttls", "elsewhere", namespace)[2]
        assert emqx_calls(emqx_process, "dep2") == 0
        # the account's status: a missing Secret; a refused CDN login (one, shared with the account's users)
        wait_reason(kube, "clusterremoteaccount", missing, "SecretNotFound")
        wait_reason(kube, "clusterremoteaccount", shop, "CredentialsInvalid")
        wait_reason(kube, "cdncertificate", "shop", "CredentialsInvalid", namespace)
        assert logins(cdn_process) == 1
        wait_reason(kube, "cdncertificate", "later", "AccountNotFound", namespace)

        # the platform rotates the CDN Secret: one new login for the account and all its users
        kube.apply(creds_secret(f"cdn-{suffix}", username=USER, password=PASSWORD), namespace=PLATFORM)
        wait_reason(kube, "clusterremoteaccount", shop, "CredentialsProven")
        wait_reason(kube, "cdncertificate", "shop", "Synced", namespace)
        assert logins(cdn_process) == 2
        proven = json.loads(kube.kubectl("get", "cra", shop, "-o", "json").stdout)["status"]
        assert proven["provenTime"] and proven["observedGeneration"] == 1
        # an account that appears wakes the resource that named it
        kube.apply(account(late, "cdn", cdn_process.url, f"cdn-{suffix}", namespace, account="acct1"))
        wait_for("the late account's user leaves AccountNotFound",
                 lambda: ready(kube, "cdncertificate", "later", namespace)[1] != "AccountNotFound", timeout=60)  # fmt: skip
        wait_reason(kube, "clusterremoteaccount", late, "CredentialsProven")
        assert logins(cdn_process) == 3  # the late account is an owner of its own: one login of its own
        assert ready(kube, "clusterremoteaccount", mqtt)[0] == "True"

    # nothing of the platform's reaches a tenant: the account's Secret and namespace are never named to them
    for kind, name, ns in (("deploymenttls", "intruder", other_namespace), ("cdncertificate", "shop", namespace)):
        shown = kube.kubectl("get", kind, name, "-n", ns, "-o", "json").stdout
        assert f"cdn-{suffix}" not in shown and PLATFORM not in shown and PASSWORD not in shown
    events = kube.kubectl("get", "events", "-n", other_namespace, "-o", "json").stdout
    assert PLATFORM not in events and namespace not in events


def test_the_account_credentials_role_of_deploy_grants_exactly_the_named_secret(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    """deploy/base/account-credentials.yaml, bound to a fresh ServiceAccount in a fresh namespace: `get` on the named
    Secret, and nothing on any other Secret there (the cluster-wide install also reads Secrets everywhere: this Role
    is what the single-namespace overlay has for the accounts' Secrets)."""
    documents = list(yaml.safe_load_all((REPO / "deploy" / "base" / "account-credentials.yaml").read_text()))
    [role] = [d for d in documents if d["kind"] == "Role"]
    [named] = role["rules"][0]["resourceNames"]
    rules = role["rules"]
    assert rules == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [named], "verbs": ["get"]}]
    [binding] = [d for d in documents if d["kind"] == "RoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "certsync", "namespace": PLATFORM}]
    kube.service_account_kubeconfig(namespace, "reader", rules, tmp_path)
    user = f"system:serviceaccount:{namespace}:reader"
    kube.apply(creds_secret(named, apiKey="k", apiSecret="s"), creds_secret("tenant-creds", apiKey="k", apiSecret="s"),
               namespace=namespace)  # fmt: skip

    def can(*what: str) -> bool:
        result = kube.kubectl("auth", "can-i", *what, f"--as={user}", "-n", namespace, check=False)
        return result.stdout.strip() == "yes"

    assert can("get", f"secret/{named}")
    assert not can("get", "secret/tenant-creds")
    assert not can("list", "secrets") and not can("watch", "secrets") and not can("update", f"secret/{named}")
    shown = kube.kubectl("get", "secret", named, "-n", namespace, f"--as={user}", "-o", "name", check=False)
    assert shown.returncode == 0 and shown.stdout.strip() == f"secret/{named}"
    refused = kube.kubectl("get", "secret", "tenant-creds", "-n", namespace, f"--as={user}", check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower()


def test_the_schema_takes_exactly_one_way_to_name_credentials(kube: Kube, namespace: str) -> None:
    """CEL: accountRef or endpoint + credentialsSecretRef (+ account), never both or neither; accountRef and the
    identity fields stay immutable, also when some of them are absent."""
    own = {"endpoint": "https://cloud-intl.emqx.com/public_api/v1", "credentialsSecretRef": {"name": "c"}}
    base = {"deploymentId": "ge6a1a75", "tlsType": "one-way", "secretName": "t"}

    def dtls_doc(name: str, **spec: Any) -> dict[str, Any]:
        return {"apiVersion": GROUP, "kind": "DeploymentTLS", "metadata": {"name": name}, "spec": {**base, **spec}}

    def cdn_doc(kind: str, name: str, **spec: Any) -> dict[str, Any]:
        return {"apiVersion": GROUP, "kind": kind, "metadata": {"name": name}, "spec": spec}

    for refused in (
        dtls_doc("both", accountRef={"name": "a"}, **own),
        dtls_doc("neither"),
        dtls_doc("half", accountRef={"name": "a"}, endpoint=own["endpoint"]),
        cdn_doc("CdnCertificate", "both", accountRef={"name": "a"}, account="acct1", secretName="t"),
        cdn_doc(
            "CdnCertificate",
            "with-endpoint",
            accountRef={"name": "a"},
            endpoint="https://api.cdn.sber.cloud",
            secretName="t",
        ),
        cdn_doc("CdnCertificate", "neither", secretName="t"),
        cdn_doc(
            "LetsEncryptOrder",
            "both",
            accountRef={"name": "a"},
            credentialsSecretRef={"name": "c"},
            account="acct1",
            resourceId="r",
        ),
    ):
        result = kube.apply(refused, namespace=namespace, check=False)
        assert result.returncode != 0 and "exactly one of accountRef" in result.stderr, (refused, result.stderr)
    kube.apply(dtls_doc("by-account", accountRef={"name": "a"}), dtls_doc("own", **own),
               cdn_doc("CdnCertificate", "by-account", accountRef={"name": "a"}, secretName="t"),
               cdn_doc("CdnCertificate", "own", credentialsSecretRef={"name": "c"}, account="acct1", secretName="t",
                       seq=3),
               cdn_doc("LetsEncryptOrder", "by-account", accountRef={"name": "a"}, domains=["*.shop.example"]),
               namespace=namespace)  # fmt: skip
    cdn = kube.get("cdncertificate", "by-account", namespace)["spec"]
    assert "endpoint" not in cdn  # no schema default beside accountRef
    for kind, name, patch, message in (
        ("deploymenttls", "by-account", {"spec": {"accountRef": {"name": "b"}}}, "accountRef is immutable"),
        ("cdncertificate", "by-account", {"spec": {"accountRef": {"name": "b"}}}, "accountRef is immutable"),
        ("letsencryptorder", "by-account", {"spec": {"accountRef": {"name": "b"}}}, "accountRef is immutable"),
        ("cdncertificate", "own", {"spec": {"seq": 4}}, "seq is immutable"),
        ("cdncertificate", "own", {"spec": {"account": "other"}}, "account is immutable"),
    ):
        result = kube.kubectl("patch", kind, name, "-n", namespace, "--type", "merge", "-p", json.dumps(patch),
                              check=False)  # fmt: skip
        assert result.returncode != 0 and message in result.stderr, (kind, name, result.stderr)
    for kind, name in (("deploymenttls", "by-account"), ("cdncertificate", "own"), ("letsencryptorder", "by-account")):
        kube.kubectl("patch", kind, name, "-n", namespace, "--type", "merge", "-p", '{"spec": {"suspend": true}}')
