#!/usr/bin/env python3
"""A real, throwaway Kubernetes control plane on loopback: etcd and kube-apiserver.

Used by `hack/controlplane/up` and `down`, by the pytest fixtures of the
end-to-end tests and by the demo. It generates its own CA, serving
certificate, admin client certificate and service-account key pair, starts
etcd and kube-apiserver (RBAC on) on free ports, waits until `/readyz` says
ok and writes an admin kubeconfig. Only the standard library and
`cryptography` are needed.

    python -m devkit.controlplane up [--dir DIR]     start in the background; last line: the kubeconfig path
    python -m devkit.controlplane down [--dir DIR]   stop it and remove DIR
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

BUILD = Path(__file__).resolve().parents[1] / "hack" / "controlplane" / "build"
DEFAULT_DIR = Path(os.environ.get("CERTSYNC_CONTROLPLANE_DIR", "/tmp/certsync-controlplane"))
READY_TIMEOUT_S = 120.0


def build() -> Path:
    """The folder of the cached binaries, building them first if needed."""
    out = subprocess.run([str(BUILD)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pem_key(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        names: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default.svc"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if not ca:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _name(cn: str, org: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attributes)


def write_pki(pki: Path) -> None:
    pki.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert(_name("certsync-test-ca"), ca_key, None, ca=True)
    files = {"ca.crt": ca.public_bytes(serialization.Encoding.PEM), "ca.key": _pem_key(ca_key)}
    for name, subject, server in (
        ("apiserver", _name("kube-apiserver"), True),
        ("admin", _name("certsync-admin", "system:masters"), False),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        files[f"{name}.crt"] = _cert(subject, key, (ca, ca_key), server=server).public_bytes(serialization.Encoding.PEM)
        files[f"{name}.key"] = _pem_key(key)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files["sa.key"] = _pem_key(sa_key)
    files["sa.pub"] = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for name, data in files.items():
        (pki / name).write_bytes(data)
        (pki / name).chmod(0o600)


def kubeconfig(server: str, ca: Path, user: dict[str, str], path: Path, namespace: str = "default") -> Path:
    """Write a kubeconfig (JSON is valid YAML) for one user."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "certsync", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "certsync", "context": {"cluster": "certsync", "user": "user", "namespace": namespace}}],
        "current-context": "certsync",
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path


def _die_with_parent() -> None:
    """In a child: ask the kernel for SIGKILL when the parent dies, so no server outlives its test run.

    SIGKILL, not SIGTERM: kube-apiserver's graceful shutdown can wait long once etcd is gone,
    and the data is thrown away anyway."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


@dataclass
class ControlPlane:
    root: Path
    bin: Path
    server: str
    kubeconfig: Path
    processes: list[subprocess.Popen[bytes]]
    popen_options: dict[str, object] = field(default_factory=dict)

    @property
    def kubectl(self) -> Path:
        return self.bin / "kubectl"

    # For tests of an API server that stops answering or goes away (etcd, and so the data, stay).

    def pause_apiserver(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but nothing answers."""
        os.kill(self.processes[-1].pid, signal.SIGSTOP)

    def resume_apiserver(self) -> None:
        os.kill(self.processes[-1].pid, signal.SIGCONT)

    def kill_apiserver(self) -> None:
        """SIGKILL (also ends a paused one): connections are refused until `start_apiserver`."""
        self.processes[-1].kill()
        self.processes[-1].wait()

    def start_apiserver(self) -> None:
        """Start it again with the same flags (same port) and wait until it is ready."""
        args = [str(arg) for arg in self.processes[-1].args]  # type: ignore[union-attr]
        self.processes[-1] = _spawn(args, self.root / "logs" / "kube-apiserver.log", self.popen_options)
        (self.root / "pids").write_text("\n".join(str(p.pid) for p in self.processes))
        wait_ready(self, self.root / "pki")

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in reversed(self.processes):
            try:
                process.wait(timeout=3)  # throwaway data: no need to wait for a graceful shutdown
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def _spawn(args: list[str], log: Path, options: dict[str, object]) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor (a restart appends)
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, **options)  # type: ignore[call-overload,no-any-return]


def start(root: Path, *, tied_to_parent: bool) -> ControlPlane:
    """Start etcd and kube-apiserver under `root` and wait until the API server is ready."""
    binaries = build()
    if root.exists():
        shutil.rmtree(root)
    pki, logs = root / "pki", root / "logs"
    write_pki(pki)
    logs.mkdir()
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    server = f"https://127.0.0.1:{api_port}"
    popen_options: dict[str, object] = {"stdin": subprocess.DEVNULL, "start_new_session": not tied_to_parent}
    if tied_to_parent:
        popen_options["preexec_fn"] = _die_with_parent
    processes: list[subprocess.Popen[bytes]] = []
    plane = ControlPlane(root, binaries, server, root / "admin.kubeconfig", processes, popen_options)
    try:
        processes.append(
            _spawn(
                [
                    str(binaries / "etcd"),
                    "--data-dir",
                    str(root / "etcd"),
                    "--listen-client-urls",
                    etcd_url,
                    "--advertise-client-urls",
                    etcd_url,
                    "--listen-peer-urls",
                    f"http://127.0.0.1:{peer_port}",
                    "--initial-advertise-peer-urls",
                    f"http://127.0.0.1:{peer_port}",
                    "--initial-cluster",
                    f"default=http://127.0.0.1:{peer_port}",
                    "--unsafe-no-fsync",
                    "--log-level",
                    "warn",
                ],
                logs / "etcd.log",
                popen_options,
            )
        )
        processes.append(
            _spawn(
                [
                    str(binaries / "kube-apiserver"),
                    "--etcd-servers",
                    etcd_url,
                    "--bind-address",
                    "127.0.0.1",
                    "--advertise-address",
                    "127.0.0.1",
                    "--secure-port",
                    str(api_port),
                    "--tls-cert-file",
                    str(pki / "apiserver.crt"),
                    "--tls-private-key-file",
                    str(pki / "apiserver.key"),
                    "--client-ca-file",
                    str(pki / "ca.crt"),
                    "--service-account-issuer",
                    "https://kubernetes.default.svc.cluster.local",
                    "--service-account-key-file",
                    str(pki / "sa.pub"),
                    "--service-account-signing-key-file",
                    str(pki / "sa.key"),
                    "--service-cluster-ip-range",
                    "10.0.0.0/24",
                    "--authorization-mode",
                    "RBAC",
                    "--enable-priority-and-fairness=false",
                    "--profiling=false",
                    "-v",
                    "1",
                ],
                logs / "kube-apiserver.log",
                popen_options,
            )
        )
        (root / "pids").write_text("\n".join(str(p.pid) for p in processes))
        admin = {"client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")}
        kubeconfig(server, pki / "ca.crt", admin, plane.kubeconfig)
        wait_ready(plane, pki)
    except BaseException:
        plane.stop()
        raise
    return plane


def wait_ready(plane: ControlPlane, pki: Path) -> None:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        for process in plane.processes:
            if process.poll() is not None:
                log = (plane.root / "logs").glob("*.log")
                tails = {p.name: p.read_text(errors="replace")[-2000:] for p in log}
                raise RuntimeError(f"{process.args[0]!s} exited with {process.returncode}: {tails}")  # type: ignore[index]
        try:
            with urllib.request.urlopen(f"{plane.server}/readyz", context=context, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError as error:
            last = str(error)
        time.sleep(0.5)
    raise TimeoutError(f"kube-apiserver not ready after {READY_TIMEOUT_S:.0f}s: {last}")


def down(root: Path) -> None:
    pids = root / "pids"
    if pids.exists():
        for pid in reversed([int(p) for p in pids.read_text().split()]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in [int(p) for p in pids.read_text().split()]:
            for _ in range(30):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    if args.command == "down":
        down(args.dir)
        print(f"stopped and removed {args.dir}")
        return 0
    down(args.dir)  # a stale one from an earlier run
    plane = start(args.dir, tied_to_parent=False)
    print(f"kube-apiserver {plane.server} (etcd and kube-apiserver pids in {args.dir / 'pids'})")
    print(f"kubectl: {plane.kubectl}")
    print(plane.kubeconfig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
