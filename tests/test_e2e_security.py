"""No secret leaves the operator, whatever the remotes echo; bad inputs get their reason and cost no call.

Hostile remotes (devkit/hostile.py) answer every relevant status code with a message that quotes the
request back: the private key, the API secret (Authorization), the password (login form) and the token.
The operator runs as its own process with the ServiceAccount of deploy/; its logs (JSON and text),
the Events, the resources' status and /metrics are then scanned for every secret value and every
16-character fragment of each private key: zero hits.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from devkit.factory import Issued, issue, three_level
from devkit.hostile import CDN_TOKEN, HostileRemote, hostile
from devkit.kube import Kube
from devkit.processes import PEAK_RSS_GOAL, EmulatorProcess, emulator, operator, operator_args
from tests.test_e2e_deploy import metric
from tests.test_e2e_deploymenttls import creds_secret, tls_secret

pytestmark = pytest.mark.e2e
API_SECRET = "hostile-emqx-api-secret-Wq83LmPz0K"
PASSWORD = "hostile-cdn-password-Vb72NqRs5T"
STATIC_TOKEN = "hostile-static-token-Hk4Ts9QwE2rY"
EMQX_STATUSES = [400, 401, 403, 422, 500]
CDN_LOGIN_STATUSES = [401, 403, 500]
CDN_API_STATUSES = [401, 405, 450, 471, 472, 473, 476, 550]
FRAGMENT = 16


def key_fragments(*keys: Issued) -> set[str]:
    """Every 16-character window of each key's base64 body (both PEM forms), and its short last lines."""
    found: set[str] = set()
    for key in keys:
        for fmt in ("pkcs8", "traditional"):
            lines = [line for line in key.key_pem(fmt).decode().splitlines() if not line.startswith("-----")]
            body = "".join(lines)
            found |= {body[i : i + FRAGMENT] for i in range(len(body) - FRAGMENT + 1)}
            found |= {line for line in lines if 8 <= len(line) < FRAGMENT}
    return found


def needles(*keys: Issued) -> set[str]:
    basic = base64.b64encode(f"hostile-key:{API_SECRET}".encode()).decode()
    return {API_SECRET, basic, PASSWORD, CDN_TOKEN, STATIC_TOKEN} | key_fragments(*keys)


def hits(text: str, searched: set[str]) -> list[str]:
    escaped = {json.dumps(n)[1:-1] for n in searched}  # as a JSON dump of the same text would hold them
    return sorted({n for n in searched | escaped if n in text})


def wait_until(what: str, done: Callable[[], bool], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def ready(kube: Kube, kind: str, name: str, namespace: str) -> dict[str, Any]:
    status = kube.get(kind, name, namespace).get("status", {})
    return next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})


def events_of(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    return json.loads(kube.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]  # type: ignore[no-any-return]


def dtls(name: str, endpoint: str, deployment: str = "ge6a1a75") -> dict[str, Any]:
    return {"apiVersion": "certsync.io/v1alpha1", "kind": "DeploymentTLS", "metadata": {"name": name},
            "spec": {"endpoint": endpoint, "credentialsSecretRef": {"name": "emqx-creds"}, "deploymentId": deployment,
                     "tlsType": "one-way", "secretName": "mqtt-tls"}}  # fmt: skip


def cdncert(name: str, endpoint: str, creds: str = "cdn-creds") -> dict[str, Any]:
    return {"apiVersion": "certsync.io/v1alpha1", "kind": "CdnCertificate", "metadata": {"name": name},
            "spec": {"endpoint": endpoint, "credentialsSecretRef": {"name": creds}, "account": "acct1",
                     "secretName": "shop-tls"}}  # fmt: skip


@pytest.fixture
def remotes() -> Iterator[dict[str, HostileRemote]]:
    """One hostile remote per case: EMQX per write status, CDN per login status and per API status."""
    with ExitStack() as stack:
        found = {f"emqx-{s}": stack.enter_context(hostile("emqx", api_status=s)) for s in EMQX_STATUSES}
        found["emqx-text"] = stack.enter_context(hostile("emqx", api_status=422, echo_as_text=True))
        found |= {f"login-{s}": stack.enter_context(hostile("cdn", login_status=s)) for s in CDN_LOGIN_STATUSES}
        found |= {f"cdn-{s}": stack.enter_context(hostile("cdn", api_status=s)) for s in CDN_API_STATUSES}
        found["static-472"] = stack.enter_context(hostile("cdn", api_status=472))
        yield found


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_echoed_secrets_never_leave_the_operator(
    kube: Kube,
    namespace: str,
    operator_kubeconfig: Path,
    remotes: dict[str, HostileRemote],
    tmp_path: Path,
    log_format: str,
) -> None:
    mqtt, shop = issue("mqtt.hostile.example"), three_level("www.hostile.example", key_kind="rsa")
    kube.apply(
        creds_secret("emqx-creds", apiKey="hostile-key", apiSecret=API_SECRET),
        creds_secret("cdn-creds", username="hostile-user", password=PASSWORD),
        creds_secret("cdn-token", token=STATIC_TOKEN),
        tls_secret("mqtt-tls", mqtt.cert_pem, mqtt.key_pem()),
        tls_secret("shop-tls", shop.pem, shop.leaf.key_pem("traditional")),
        namespace=namespace,
    )
    resources = []
    for case, remote in remotes.items():
        if case.startswith("emqx"):
            resources.append(("deploymenttls", case, dtls(case, remote.url)))
        else:
            creds = "cdn-token" if case.startswith("static") else "cdn-creds"
            resources.append(("cdncertificate", case, cdncert(case, remote.url, creds)))
    kube.apply(*(body for _, _, body in resources), namespace=namespace)
    log = tmp_path / "operator.log"
    urls = [r.url for r in remotes.values()]
    with operator(operator_kubeconfig, log, *operator_args(namespace, *urls), log_format=log_format) as running:
        for kind, name, _ in resources:
            wait_until(
                f"{kind}/{name} to report a reason",
                lambda k=kind, n=name: bool(ready(kube, k, n, namespace).get("reason")),
            )  # type: ignore[misc]
        wait_until(
            "an Event for every resource",
            lambda: {e["involvedObject"]["name"] for e in events_of(kube, namespace)} >= {n for _, n, _ in resources},
        )
        metrics = httpx.get(running.metrics_url + "/metrics", timeout=10).text
        assert running.peak_rss() < PEAK_RSS_GOAL

    # the test can fail: every hostile remote really received the secrets it then echoed
    for case, remote in remotes.items():
        sent = " ".join(c.body + " " + " ".join(c.headers.values()) for c in remote.calls())
        if case.startswith("emqx"):
            assert "BEGIN PRIVATE KEY" in sent and "Basic " in sent, case
        elif case.startswith("login"):
            assert PASSWORD in sent, case
        else:
            assert (
                "BEGIN RSA PRIVATE KEY" in sent and (STATIC_TOKEN if case.startswith("static") else CDN_TOKEN) in sent
            )
    for _, name, _ in resources:
        assert ready(kube, _kind(name), name, namespace)["reason"] != "Synced", name

    searched = needles(mqtt, shop.leaf)
    status = kube.kubectl("get", "deploymenttls,cdncertificate", "-n", namespace, "-o", "json").stdout
    texts = {"log": log.read_text(), "events": json.dumps(events_of(kube, namespace)), "status": status,
             "metrics": metrics}  # fmt: skip
    assert {where: hits(text, searched) for where, text in texts.items()} == {w: [] for w in texts}
    assert texts["log"].strip() and "[redacted]" in texts["status"] + texts["events"]  # the echoes reached us


def _kind(name: str) -> str:
    return "deploymenttls" if name.startswith("emqx") else "cdncertificate"


# --- bad inputs: a reason each, no remote call, the same reason offline ---------------------------


def _negative_serial(cert: Issued) -> bytes:
    from cryptography.hazmat.primitives import serialization

    der = bytearray(cert.cert.public_bytes(serialization.Encoding.DER))
    der[der.find(bytes([0xA0, 3, 2, 1, 2, 2])) + 7] |= 0x80
    body = base64.encodebytes(bytes(der)).decode()
    return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n".encode()


def test_bad_inputs_get_their_reason_and_no_remote_call(
    kube: Kube, namespace: str, operator_kubeconfig: Path, emqx_process: EmulatorProcess, tmp_path: Path
) -> None:
    chain = three_level("mqtt.bad.example")
    leaf = issue("neg.bad.example")
    cases = {
        "ca-as-leaf": (chain.intermediate.cert_pem + chain.root.cert_pem, chain.intermediate.key_pem(), "LeafIsCA"),
        "key-not-utf8": (chain.pem, chain.leaf.key_pem() + b"\xff\xfe\n", "InvalidSecret"),
        "negative-serial": (_negative_serial(leaf), leaf.key_pem(), "InvalidCertificate"),
        "out-of-order": (chain.intermediate.cert_pem + chain.leaf.cert_pem, chain.leaf.key_pem(), "ChainInvalid"),
    }
    kube.apply(creds_secret("emqx-creds", apiKey="k", apiSecret="s"), namespace=namespace)
    kube.apply(tls_secret("mqtt-tls", chain.pem, chain.leaf.key_pem()), namespace=namespace)
    allowed = emqx_process.url + "/api"  # `..` must not climb out of it
    for index, (name, (cert, key, _)) in enumerate(cases.items()):
        kube.apply(tls_secret(f"{name}-tls", cert, key), namespace=namespace)
        body = dtls(name, allowed, f"dep{index}")  # one deployment each: one owner per target
        body["spec"]["secretName"] = f"{name}-tls"
        kube.apply(body, namespace=namespace)
    kube.apply(dtls("dot-segments", allowed + "/../admin", "depdots"), namespace=namespace)
    with operator(operator_kubeconfig, tmp_path / "op.log", *operator_args(namespace, allowed)):
        expected = {**{n: c[2] for n, c in cases.items()}, "dot-segments": "EndpointNotAllowed"}
        for name, reason in expected.items():
            wait_until(
                f"{name}: {reason}",
                lambda n=name, r=reason: ready(kube, "deploymenttls", n, namespace).get("reason") == r,
            )  # type: ignore[misc]
    assert emqx_process.counts() == {}  # not one call reached the remote
    manifest = tmp_path / "secrets.yaml"  # `certsync check` gives the same reasons offline
    manifest.write_text(yaml.safe_dump_all([tls_secret(n, c[0], c[1]) for n, c in cases.items()]))
    offline = subprocess.run([sys.executable, "-m", "certsync", "check", str(manifest)], capture_output=True, text=True)
    assert {line.split(": ")[0]: line.split(": ")[1] for line in offline.stdout.splitlines()} == {
        n: c[2] for n, c in cases.items()
    }
    message = ready(kube, "deploymenttls", "out-of-order", namespace)["message"]
    assert "certificate #1 (CN 'Test Intermediate CA') is a CA" in message and "certificate #2" in message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("secretName", ".."),
        ("secretName", "ns/secret"),
        ("secretName", "../ns/x"),
        ("secretName", "a%2Fb"),
        ("endpoint", "https://host/a\u0001b"),
        ("endpoint", "https://user@host/"),
        ("endpoint", "https://host/?x"),
    ],
)
def test_the_api_server_refuses_bad_names_and_endpoints(kube: Kube, namespace: str, field: str, value: str) -> None:
    body = dtls("refused", "https://api.example")
    body["spec"][field] = value
    result = kube.apply(body, namespace=namespace, check=False)
    assert result.returncode != 0 and "spec." + field in result.stderr


# --- logins that cannot ban ------------------------------------------------------------------------


def test_eight_resources_sharing_a_wrong_password_log_in_once_then_once_more_when_fixed(
    kube: Kube, namespace: str, operator_kubeconfig: Path, tmp_path: Path
) -> None:
    chain = three_level("www.shop.example")
    (tmp_path / "root.pem").write_bytes(chain.root.cert_pem)
    login = "POST /app/oauth/v1/token/"
    with emulator("cdn", "--account", "acct1", "--username", "u", "--password", "right-password-9",
                  "--trusted-ca", str(tmp_path / "root.pem")) as cdn:  # fmt: skip
        kube.apply(
            creds_secret("cdn-creds", username="u", password="wrong-password-1"),
            tls_secret("shop-tls", chain.pem, chain.leaf.key_pem()),
            namespace=namespace,
        )
        names = [f"shop-{i}" for i in range(8)]
        kube.apply(*(cdncert(n, cdn.url) for n in names), namespace=namespace)
        log = tmp_path / "op.log"
        with operator(operator_kubeconfig, log, *operator_args(namespace, cdn.url)) as running:
            for name in names:
                wait_until(
                    f"{name} refused",
                    lambda n=name: ready(kube, "cdncertificate", n, namespace).get("reason") == "CredentialsInvalid",
                )  # type: ignore[misc]
            assert cdn.counts().get(login) == 1

            def passes() -> float:  # every pass of a resource counts here, whatever it found
                try:
                    text = httpx.get(running.metrics_url + "/metrics", timeout=10).text
                except httpx.HTTPError:  # the operator is still starting
                    return 0.0
                if 'kind="CdnCertificate",result="stalled"' not in text:  # no pass yet
                    return 0.0
                return metric(text, "certsync_reconcile_total", kind="CdnCertificate", result="stalled")

            before = passes()
            kube.kubectl("annotate", "cdncertificate", *names, "-n", namespace, "certsync.io/requested-at=poke")
            wait_until("every poke handled", lambda: passes() >= before + len(names))
            assert cdn.counts().get(login) == 1
            assert all(kube.get("cdncertificate", n, namespace)["status"].get("cdnLogin") for n in names)
        # a restart does not try the refused password again
        with operator(operator_kubeconfig, log, *operator_args(namespace, cdn.url)) as running:
            wait_until("a pass over every resource after the restart", lambda: passes() >= len(names))
            assert cdn.counts().get(login) == 1
        # nor does a new leader after the old one died (two replicas, one Lease of this test's own)
        election = ["--lease-name", f"login-{namespace}", "--lease-duration", "4", "--renew-deadline", "3",
                    "--retry-period", "1"]  # fmt: skip
        args = [*operator_args(namespace, cdn.url), *election]
        with contextlib.ExitStack() as replicas:
            running = first = replicas.enter_context(operator(kube.kubeconfig, log, *args))
            wait_until("the first replica leads and passes over every resource", lambda: passes() >= len(names))
            second = replicas.enter_context(operator(kube.kubeconfig, log, *args))
            first.process.kill()
            first.process.wait()
            running = second
            wait_until("the new leader passes over every resource", lambda: passes() >= len(names), seconds=60)
            assert cdn.counts().get(login) == 1
            kube.apply(creds_secret("cdn-creds", username="u", password="right-password-9"), namespace=namespace)
            for name in names:  # past the login: synced, or waiting for the account's 20 calls a minute
                wait_until(
                    f"{name} logged in",
                    lambda n=name: ready(kube, "cdncertificate", n, namespace).get("reason") != "CredentialsInvalid",
                )  # type: ignore[misc]
            assert cdn.counts().get(login) == 2
