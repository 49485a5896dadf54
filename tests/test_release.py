"""One version (pyproject.toml's) everywhere, one license, and the artefacts of hack/release: the image as an OCI
archive, the packaged chart and the image's SBOM, each named with the version, under SHA256SUMS."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tarfile
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from devkit.kube import REPO
from devkit.release import CHART, helm

LICENSE = "Apache-2.0"


def project() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


VERSION = str(project()["version"])


def chart() -> dict[str, Any]:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())  # type: ignore[no-any-return]


def test_the_chart_and_the_package_carry_pyprojects_version() -> None:
    meta = chart()
    assert meta["version"] == VERSION, "Chart.yaml version differs from pyproject.toml's: change both"
    assert meta["appVersion"] == VERSION, "Chart.yaml appVersion differs from pyproject.toml's: change both"
    # The installed package's metadata (what `certsync version` reports) is pyproject's: `pip install -e .` again
    # after a change of version.
    assert metadata.version("certsync") == VERSION


def test_one_license_everywhere() -> None:
    text = (REPO / "LICENSE").read_text()
    assert text.split()[:5] == ["Apache", "License", "Version", "2.0,", "January"]
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) == 202  # the whole standard text
    assert project()["license"] == LICENSE and project()["license-files"] == ["LICENSE"]
    assert metadata.metadata("certsync")["License-Expression"] == LICENSE
    assert chart()["annotations"]["artifacthub.io/license"] == LICENSE
    assert f'org.opencontainers.image.licenses="{LICENSE}"' in (REPO / "Dockerfile").read_text()


def minimum(kube_version: str) -> tuple[int, int]:
    found = re.fullmatch(r">=\s*(\d+)\.(\d+)\.\d+(-0)?", kube_version)
    assert found, f"kubeVersion {kube_version!r} is not a plain lower bound"
    return int(found.group(1)), int(found.group(2))


def test_kube_version_is_the_oldest_that_applies_every_template() -> None:
    # The PodDisruptionBudget's unhealthyPodEvictionPolicy is honoured from 1.27 on (beta, on by default); 1.26
    # drops it silently (alpha, off). Tested on 1.34 (hack/controlplane).
    assert "unhealthyPodEvictionPolicy" in (CHART / "templates" / "poddisruptionbudget.yaml").read_text()
    assert minimum(chart()["kubeVersion"]) == (1, 27)
    for version, accepted in (("1.26.15", False), ("1.27.0", True), ("1.34.4", True)):
        result = helm("template", "cs", str(CHART), "--kube-version", version, check=False)
        assert (result.returncode == 0) == accepted, (version, result.stderr)
        if not accepted:
            assert "kubeVersion" in result.stderr


@dataclass(frozen=True)
class Release:
    dist: Path
    stdout: str
    oci: Path
    tgz: Path
    sbom: Path


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    """hack/release once: the image build behind it reuses the layers that tests/test_e2e_image.py built."""
    dist = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [str(REPO / "hack" / "release")], env={**os.environ, "CERTSYNC_DIST": str(dist)},
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return Release(
        dist,
        result.stdout,
        dist / f"certsync-{VERSION}.oci.tar",
        dist / f"certsync-{VERSION}.tgz",
        dist / f"certsync-{VERSION}.cdx.json",
    )


def built_from_this_history(revision: str) -> bool:
    """The image's revision is HEAD (CI's clean clone) or, while commits land during a run, one of its ancestors;
    `-dirty` marks a build from a work tree whose image inputs differed from that commit."""
    commit = revision.removesuffix("-dirty")
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        return False
    ancestor = ["git", "-C", str(REPO), "merge-base", "--is-ancestor", commit, "HEAD"]
    return subprocess.run(ancestor, capture_output=True).returncode == 0


@pytest.mark.e2e
def test_release_names_every_artefact_with_the_version_under_verified_checksums(release: Release) -> None:
    artefacts = [release.oci, release.tgz, release.sbom]
    names = {p.name for p in artefacts}
    assert names == {f"certsync-{VERSION}.oci.tar", f"certsync-{VERSION}.tgz", f"certsync-{VERSION}.cdx.json"}
    assert {p.name for p in release.dist.iterdir()} == names | {"SHA256SUMS"}
    assert release.stdout.splitlines() == [str(p) for p in [*artefacts, release.dist / "SHA256SUMS"]]
    sums = {}
    for line in (release.dist / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        sums[name] = digest
    assert set(sums) == names
    for name, digest in sums.items():
        assert hashlib.sha256((release.dist / name).read_bytes()).hexdigest() == digest, name


def _blob(archive: tarfile.TarFile, digest: str) -> dict[str, Any]:
    algorithm, value = digest.split(":", 1)
    member = archive.extractfile(f"blobs/{algorithm}/{value}")
    assert member is not None
    data = member.read()
    assert hashlib.sha256(data).hexdigest() == value  # content addressed, as the layout promises
    return json.loads(data)  # type: ignore[no-any-return]


def _config(release: Release) -> dict[str, Any]:
    with tarfile.open(release.oci) as archive:
        index_file = archive.extractfile("index.json")
        assert index_file is not None
        [descriptor] = json.loads(index_file.read())["manifests"]
        return _blob(archive, _blob(archive, descriptor["digest"])["config"]["digest"])


@pytest.mark.e2e
def test_the_oci_archive_carries_the_version_commit_and_license(release: Release) -> None:
    with tarfile.open(release.oci) as archive:
        layout = archive.extractfile("oci-layout")
        assert layout is not None and json.loads(layout.read())["imageLayoutVersion"] == "1.0.0"
        index_file = archive.extractfile("index.json")
        assert index_file is not None
        [descriptor] = json.loads(index_file.read())["manifests"]
        assert descriptor["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        manifest = _blob(archive, descriptor["digest"])
        config = _blob(archive, manifest["config"]["digest"])
        for layer in manifest["layers"]:
            assert archive.getmember(f"blobs/sha256/{layer['digest'].split(':', 1)[1]}").size == layer["size"]
    annotations, labels = manifest["annotations"], config["config"]["Labels"]
    for where in (annotations, labels):
        assert where["org.opencontainers.image.version"] == VERSION
        assert where["org.opencontainers.image.licenses"] == LICENSE
        assert where["org.opencontainers.image.title"] == "certsync"
    revision = labels["org.opencontainers.image.revision"]
    assert annotations["org.opencontainers.image.revision"] == revision
    assert built_from_this_history(revision), revision
    assert labels["org.opencontainers.image.description"]
    assert f"CERTSYNC_BUILD_COMMIT={revision}" in config["config"]["Env"]
    assert config["config"]["User"] == "65532:65532"


@pytest.mark.e2e
def test_the_image_reports_the_commit_it_was_built_from(release: Release) -> None:
    result = subprocess.run([str(REPO / "hack" / "image"), "run", "--", "version"], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    info = yaml.safe_load(result.stdout)
    assert info["version"] == VERSION
    assert built_from_this_history(info["commit"]), info
    assert f"CERTSYNC_BUILD_COMMIT={info['commit']}" in _config(release)["config"]["Env"]
    assert info["kopf"] == _image_versions()["kopf"]


@pytest.mark.e2e
def test_the_packaged_chart_carries_the_version(release: Release) -> None:
    with tarfile.open(release.tgz) as archive:
        member = archive.extractfile("certsync/Chart.yaml")
        assert member is not None
        meta = yaml.safe_load(member.read())
        assert "certsync/templates/poddisruptionbudget.yaml" in archive.getnames()
    assert meta["version"] == VERSION and meta["appVersion"] == VERSION
    assert meta["annotations"]["artifacthub.io/license"] == LICENSE


@cache
def _image_versions() -> dict[str, str]:
    """Every distribution of the image's virtual environment, read inside the image."""
    probe = (
        "import json, importlib.metadata as m;"
        "print(json.dumps({d.metadata['Name'].lower(): d.version for d in m.distributions()}))"
    )
    result = subprocess.run([str(REPO / "hack" / "image"), "exec", "--", "python3", "-c", probe],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.mark.e2e
def test_the_sbom_is_valid_cyclonedx_listing_exactly_the_images_packages(release: Release) -> None:
    text = release.sbom.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    bom = json.loads(text)
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.6"
    root = bom["metadata"]["component"]
    assert (root["name"], root["version"], root["type"]) == ("certsync", VERSION, "application")
    listed = {c["name"].lower(): c["version"] for c in bom["components"]}
    image = dict(_image_versions())
    assert image.pop("certsync") == VERSION  # the root component, not one of its components
    for name in ("kopf", "httpx", "cryptography", "kubernetes"):
        assert listed[name] == image[name], name
    # Exactly the image's packages: not the tool that wrote the SBOM (cyclonedx, jsonschema), nor pip or setuptools,
    # which the Dockerfile removes (nothing imports them at run time).
    assert listed == image
    assert not {"pip", "setuptools", "cyclonedx-bom", "jsonschema"} & set(listed)
    purls = {c["name"].lower(): c.get("purl", "") for c in bom["components"]}
    assert purls["kopf"] == f"pkg:pypi/kopf@{image['kopf']}"
