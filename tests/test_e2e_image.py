"""The image, built here (hack/image: a Debian base made with mmdebstrap, podman with vfs and chroot) and run:
the operator from the image, with deploy/'s ServiceAccount token, brings a DeploymentTLS to Ready against the
EMQX emulator on the local control plane. There is no kubelet and `podman run` is refused by the sandbox, so the
image's ENTRYPOINT runs with `buildah run` (chroot isolation, host network)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from devkit.factory import issue
from devkit.kube import REPO, Kube
from devkit.processes import EmulatorProcess, free_port
from tests.test_e2e_deploymenttls import dtls, emqx_inputs

pytestmark = pytest.mark.e2e

IMAGE_TOOL = REPO / "hack" / "image"
MAX_SIZE_MB = 320  # a Debian minbase with python3 (~175 MB) and the virtual environment (~125 MB)


@pytest.fixture(scope="session")
def image() -> str:
    """Built once per session; the layers are cached under ~/.cache/certsync/image, so a rebuild is quick."""
    out = subprocess.run([str(IMAGE_TOOL), "build"], check=True, stdout=subprocess.PIPE, text=True, timeout=1500)
    return out.stdout.strip().splitlines()[-1]


def inside(*args: str) -> str:
    result = subprocess.run([str(IMAGE_TOOL), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def inspect(image: str) -> dict[str, object]:
    storage = Path.home() / ".cache" / "certsync" / "image"
    out = subprocess.run(
        ["podman", "--root", str(storage / "storage"), "--runroot", str(storage / "run"), "--storage-driver", "vfs",
         "image", "inspect", image],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return json.loads(out)[0]  # type: ignore[no-any-return]


def test_image_runs_as_non_root_without_development_code_and_is_small(
    image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    details = inspect(image)
    config = details["Config"]
    assert isinstance(config, dict)
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["certsync"]
    assert inside("exec", "--", "id", "-u").strip() == "65532"
    probe = (
        "import importlib.util as u; print([m for m in ('emulators', 'devkit', 'tests', 'pytest') if u.find_spec(m)])"
    )
    assert inside("exec", "--", "python3", "-c", probe).strip() == "[]"
    assert "tls Secret" in inside("run", "--", "check", "--help")
    size_mb = float(details["Size"]) / 1e6  # type: ignore[arg-type]
    with capsys.disabled():
        print(f"\nimage {image}: {size_mb:.0f} MB")
    assert size_mb < MAX_SIZE_MB


@contextmanager
def operator_in_image(args: list[str], env: dict[str, str], volumes: list[str], log: Path) -> Iterator[None]:
    options = [f"--env={k}={v}" for k, v in env.items()] + [f"--volume={v}" for v in volumes]
    with log.open("wb") as out:
        process = subprocess.Popen([str(IMAGE_TOOL), "run", *options, "--", *args], stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        yield
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_operator_from_the_image_makes_a_deploymenttls_ready(
    image: str, kube: Kube, namespace: str, operator_kubeconfig: Path, emqx_process: EmulatorProcess, tmp_path: Path
) -> None:
    # The kubeconfig goes in as one read-only file the image's user can read: the CA inline, deploy/'s token.
    config = json.loads(operator_kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    cluster["certificate-authority-data"] = base64.b64encode(
        Path(cluster.pop("certificate-authority")).read_bytes()
    ).decode()
    mounted = tmp_path / "kubeconfig"
    mounted.write_text(json.dumps(config))
    mounted.chmod(0o644)
    cert = issue("image.example.com")
    kube.apply(*emqx_inputs(cert), namespace=namespace)
    kube.apply(dtls("broker", emqx_process.url), namespace=namespace)
    port = free_port()
    env = {"KUBECONFIG": "/etc/certsync/kubeconfig", "CERTSYNC_METRICS_PORT": str(port)}
    args = ["run", "--allowed-endpoints", emqx_process.url + "/", "--namespaces", namespace,
            "--emqx-budget-window", "60"]  # fmt: skip
    log = tmp_path / "image-operator.log"
    with operator_in_image(args, env, [f"{mounted}:/etc/certsync/kubeconfig:ro"], log):
        waited = kube.kubectl("wait", "-n", namespace, "--for=condition=Ready", "deploymenttls/broker",
                              "--timeout=120s", check=False)  # fmt: skip
    assert waited.returncode == 0, log.read_text()[-3000:]
    assert '"logger": "certsync.leader"' in log.read_text()  # the operator's JSON logs, from the image's process
    assert len(emqx_process.writes()) == 1
