"""Behind a platform's proxy, with a private CA: the remotes are reached only through HTTPS_PROXY (their names
resolve nowhere else), their TLS is verified with CERTSYNC_REMOTE_CA_FILE, and the API server is reached directly
(NO_PROXY). Without the CA file a call fails at once with a clear, scrubbed reason."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from certsync import emqx, remote
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devkit.factory import NOW, Chain, Issued, Key, issue, make_key, three_level
from devkit.kube import Kube
from devkit.processes import REPO, EmulatorProcess, emulator, operator, operator_args, wait_for
from devkit.proxy import ConnectProxy
from emulators import emqx as emqx_emulator
from emulators.common import server_tls, start
from tests.e2e_fixtures import KEY, SECRET, WINDOW
from tests.test_e2e_cdn import PASSWORD, USER, cdn_cert, cdn_inputs
from tests.test_e2e_deploymenttls import dtls, emqx_inputs

EMQX_HOST, CDN_HOST = "emqx.certsync.test", "cdn.certsync.test"  # .test is reserved: these resolve nowhere
EMQX_URL, CDN_URL = f"https://{EMQX_HOST}", f"https://{CDN_HOST}"


def _certificate(subject: str, key: Key, issuer: Issued | None, *, ca: bool) -> x509.Certificate:
    """With the extensions strict verification wants (Python 3.13's default context sets VERIFY_X509_STRICT):
    key identifiers, key usage and, for a server, its name and serverAuth; the factory's certificates lack them."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    signer = issuer.key if issuer else key
    usage = x509.KeyUsage(not ca, False, False, False, False, ca, ca, False, False)  # digitalSignature or cert signing
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
        .add_extension(usage, critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(signer, hashes.SHA256())


@dataclass
class PrivateCA:
    """A private root (the factory's key), and a server certificate under it for each emulator's name."""

    dir: Path
    root: Issued = field(init=False)

    def __post_init__(self) -> None:
        key = make_key("ec")
        self.root = Issued(_certificate("certsync test private CA", key, None, ca=True), key)
        self.dir.mkdir()
        self.bundle.write_bytes(self.root.cert_pem)

    @property
    def bundle(self) -> Path:
        return self.dir / "ca.pem"

    def server(self, host: str) -> tuple[str, str]:
        key = make_key("ec")
        leaf = Issued(_certificate(host, key, self.root, ca=False), key)
        cert, key_file = self.dir / f"{host}.crt", self.dir / f"{host}.key"
        cert.write_bytes(leaf.cert_pem)
        key_file.write_bytes(leaf.key_pem())
        return str(cert), str(key_file)

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.bundle))


@pytest.fixture
def private_ca(tmp_path: Path) -> PrivateCA:
    return PrivateCA(tmp_path / "pki")


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def control(process: EmulatorProcess, host: str, ca: PrivateCA, path: str) -> Any:
    """The emulator's control API, straight to its loopback port (not through the proxy: it records only the
    operator's tunnels), verified against the private CA under the emulator's name."""
    with httpx.Client(verify=ca.client_context(), timeout=10) as http:
        answer = http.get(f"{process.url}/_emulator/{path}", extensions={"sni_hostname": host})
        answer.raise_for_status()
        return answer.json()


def proxy_env(proxy: ConnectProxy) -> dict[str, str]:
    """What a platform sets: the remotes through the proxy, the API server (loopback here) directly."""
    env = {"HTTPS_PROXY": proxy.url, "NO_PROXY": "127.0.0.1,localhost", "HTTP_PROXY": "", "ALL_PROXY": ""}
    return {**env, **{name.lower(): value for name, value in env.items()}}


@pytest.fixture
def root_chain() -> Chain:
    return three_level("www.shop.example")


@pytest.fixture
def tls_emulators(
    private_ca: PrivateCA, root_chain: Chain, tmp_path: Path
) -> Iterator[tuple[EmulatorProcess, EmulatorProcess]]:
    (tmp_path / "root.pem").write_bytes(root_chain.root.cert_pem)
    emqx_tls, cdn_tls = private_ca.server(EMQX_HOST), private_ca.server(CDN_HOST)
    with (
        emulator("emqx", "--api-key", KEY, "--api-secret", SECRET, "--deployment", "ge6a1a75", "--deployment", "dep2",
                 "--pending-seconds", "1", "--window-seconds", str(WINDOW),
                 "--tls-cert", emqx_tls[0], "--tls-key", emqx_tls[1]) as emqx_process,
        emulator("cdn", "--account", "acct1", "--username", USER, "--password", PASSWORD,
                 "--resource", "res1=www.shop.example", "--pending-seconds", "1",
                 "--trusted-ca", str(tmp_path / "root.pem"),
                 "--tls-cert", cdn_tls[0], "--tls-key", cdn_tls[1]) as cdn_process,
    ):  # fmt: skip
        assert emqx_process.url.startswith("https://127.0.0.1:") and cdn_process.url.startswith("https://127.0.0.1:")
        yield emqx_process, cdn_process


def condition(kube: Kube, kind: str, name: str, namespace: str, type_: str) -> dict[str, Any]:
    status = kube.get(kind, name, namespace).get("status", {})
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


@pytest.mark.e2e
def test_remotes_only_through_the_proxy_with_a_private_ca(
    kube: Kube,
    namespace: str,
    operator_kubeconfig: Path,
    tls_emulators: tuple[EmulatorProcess, EmulatorProcess],
    private_ca: PrivateCA,
    root_chain: Chain,
    tmp_path: Path,
) -> None:
    emqx_process, cdn_process = tls_emulators
    routes = {f"{EMQX_HOST}:443": ("127.0.0.1", port_of(emqx_process.url)),
              f"{CDN_HOST}:443": ("127.0.0.1", port_of(cdn_process.url))}  # fmt: skip
    cert = issue("mqtt.example.com")
    kube.apply(*emqx_inputs(cert), *cdn_inputs(root_chain), namespace=namespace)
    kube.apply(dtls("broker", EMQX_URL), cdn_cert("shop", CDN_URL), namespace=namespace)
    args = operator_args(namespace, EMQX_URL, CDN_URL, window=WINDOW)
    log = tmp_path / "operator.log"
    with ConnectProxy(routes) as proxy:
        settings = {
            **proxy_env(proxy),
            "CERTSYNC_REMOTE_CA_FILE": str(private_ca.bundle),
            "CERTSYNC_LOG_LEVEL": "debug",
        }
        with operator(operator_kubeconfig, log, *args, settings=settings):
            for kind, name in (("deploymenttls", "broker"), ("cdncertificate", "shop")):
                kube.kubectl("wait", "-n", namespace, "--for=condition=Ready", f"{kind}/{name}", "--timeout=90s")
        # Only the remotes went through the proxy: the API server (loopback, in NO_PROXY) was reached directly.
        assert set(proxy.seen()) == set(routes) and not proxy.refused
        emqx_calls = control(emqx_process, EMQX_HOST, private_ca, "calls")["counts"]
        cdn_calls = control(cdn_process, CDN_HOST, private_ca, "calls")["counts"]
        assert emqx_calls.get("POST /deployments/{deployment_id}/tls") == 1, emqx_calls
        assert cdn_calls.get("POST /app/ssl/v1/account/{account}/certificate/") == 1, cdn_calls
        assert cdn_calls.get("POST /app/oauth/v1/token/") == 1, cdn_calls

        # At debug every remote call is logged (method, path with ids, status, time), scrubbed like the rest.
        text = log.read_text()
        events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        remote_lines = [e["message"] for e in events if e.get("logger") == "certsync.remote"]
        assert any(m.startswith("emqx create_tls: POST /deployments/ge6a1a75/tls -> 200 in ") for m in remote_lines), (
            remote_lines
        )
        assert any("cdn login: POST /app/oauth/v1/token/ -> 200" in m for m in remote_lines), remote_lines
        assert all(e["level"] == "debug" for e in events if e.get("logger") == "certsync.remote")
        key_lines = [line for pem in (cert.key_pem(), root_chain.leaf.key_pem()) for line in pem.decode().splitlines()]
        for secret in (SECRET, PASSWORD, *(line for line in key_lines if not line.startswith("-----"))):
            assert secret not in text

        # Without the CA file the remote's certificate is not trusted: a clear reason, and no hanging.
        kube.apply(dtls("broker-2", EMQX_URL, deployment="dep2"), namespace=namespace)
        untrusted = tmp_path / "untrusted.log"
        with operator(operator_kubeconfig, untrusted, *args, settings=proxy_env(proxy)):

            def unavailable() -> bool:
                reconciling = condition(kube, "deploymenttls", "broker-2", namespace, "Reconciling")
                return reconciling.get("reason") == "RemoteUnavailable"

            wait_for("broker-2 RemoteUnavailable", unavailable, timeout=60)
        message = condition(kube, "deploymenttls", "broker-2", namespace, "Reconciling")["message"]
        assert "certificate verify failed" in message and SECRET not in message, message
        assert control(emqx_process, EMQX_HOST, private_ca, "calls")["counts"].get(
            "GET /deployments/{deployment_id}/tls"
        ) == emqx_calls.get("GET /deployments/{deployment_id}/tls"), "no request reached the emulator untrusted"


# --- the clients in process, against a TLS emulator behind the proxy ----------------------------------------------


@pytest.fixture
async def tls_emqx(private_ca: PrivateCA) -> Any:
    cert, key = private_ca.server(EMQX_HOST)
    state = emqx_emulator.EmqxState(emqx_emulator.EmqxConfig("k", "s-Zq8w", ["ge6a1a75"]))
    running = await start(emqx_emulator.build_app(state), tls=server_tls(cert, key))
    yield running
    await running.stop()


@pytest.fixture
def proxied(tls_emqx: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[ConnectProxy]:
    with ConnectProxy({f"{EMQX_HOST}:443": ("127.0.0.1", port_of(tls_emqx.url))}) as proxy:
        for name, value in proxy_env(proxy).items():
            monkeypatch.setenv(name, value)
        yield proxy


ACCESS = emqx.EmqxAccess(EMQX_URL, "k", "s-Zq8w")


async def test_the_ca_file_is_trusted_besides_the_system_store(private_ca: PrivateCA, proxied: ConnectProxy) -> None:
    async with emqx.EmqxClient(verify=remote.tls_context(str(private_ca.bundle)), retry=remote.NO_RETRY) as client:
        with pytest.raises(emqx.TLSNotConfigured):  # the emulator's own answer: TLS verified, through the proxy
            await client.get_tls(ACCESS, "ge6a1a75")
    assert proxied.seen() == [f"{EMQX_HOST}:443"]


async def test_without_the_ca_file_the_call_fails_with_a_clear_reason(proxied: ConnectProxy) -> None:
    async with emqx.EmqxClient(retry=remote.NO_RETRY) as client:
        with pytest.raises(remote.TransportError) as failed:
            await client.get_tls(ACCESS, "ge6a1a75")
    assert failed.value.reason == "RemoteUnavailable" and failed.value.retryable
    assert "certificate verify failed" in failed.value.message and "s-Zq8w" not in failed.value.message
    assert proxied.seen() == [f"{EMQX_HOST}:443"]


async def test_a_call_that_bypasses_the_proxy_reaches_nothing(
    private_ca: PrivateCA, proxied: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", EMQX_HOST)
    monkeypatch.setenv("no_proxy", EMQX_HOST)
    async with emqx.EmqxClient(verify=remote.tls_context(str(private_ca.bundle)), retry=remote.NO_RETRY) as client:
        with pytest.raises(remote.TransportError, match="ConnectError"):
            await client.get_tls(ACCESS, "ge6a1a75")
    assert proxied.seen() == []


def test_the_proxy_refuses_what_it_has_no_route_for() -> None:
    with ConnectProxy({}) as proxy, httpx.Client(proxy=proxy.url, timeout=5) as http, pytest.raises(httpx.ProxyError):
        http.get("https://elsewhere.certsync.test/")
    assert proxy.seen() == ["elsewhere.certsync.test:443"]
    assert proxy.refused == ["elsewhere.certsync.test:443: no route"]
    assert not proxy.alive()
    with pytest.raises(ValueError, match="loopback"):
        ConnectProxy({"x.test:443": ("192.0.2.1", 443)})


def test_the_proxy_stops_itself_after_its_lifetime() -> None:
    proxy = ConnectProxy({}, lifetime=0.2).start()
    wait_for("the proxy to stop itself", lambda: not proxy.alive(), timeout=10, every=0.05)
    proxy.stop()


def test_the_emulators_want_both_tls_files() -> None:
    answer = subprocess.run(
        [sys.executable, "-m", "emulators", "emqx", "--api-key", "k", "--api-secret", "s", "--tls-cert", "c.pem"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert answer.returncode == 2 and "--tls-cert and --tls-key go together" in answer.stderr
