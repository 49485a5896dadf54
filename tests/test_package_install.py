"""The package as a wheel built from pyproject.toml and operator/ into a fresh environment: the quick check of what
the Dockerfile installs (tests/test_e2e_image.py builds and runs the image itself)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from devkit.kube import REPO


def test_wheel_installs_and_its_entry_points_run(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    [wheel] = list(wheels.glob("certsync-*.whl"))
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    # The dependencies are those of the environment running the suite (hack/test's .venv, not the base
    # interpreter's, which system_site_packages would give): a .pth file puts its site-packages behind the wheel.
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    parent = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "_suite_dependencies.pth").write_text("\n".join(sorted(parent)) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--force-reinstall", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    where = subprocess.run([str(python), "-c", "import certsync, pathlib; print(certsync.__file__)"],
                           check=True, capture_output=True, text=True).stdout  # fmt: skip
    assert where.startswith(str(env_dir)), where
    assert (Path(where.strip()).parent / "py.typed").exists()
    check = subprocess.run([str(env_dir / "bin" / "certsync"), "check", "--help"], capture_output=True, text=True)
    assert check.returncode == 0 and "tls Secret" in check.stdout
    # the package never shadows the standard library's `operator` module
    assert subprocess.run([str(python), "-c", "import operator; operator.itemgetter"], check=False).returncode == 0
