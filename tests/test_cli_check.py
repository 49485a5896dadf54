"""`certsync check` gives the operator's own reasons for a tls Secret, offline."""

from __future__ import annotations

import base64
import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devkit.factory import issue, three_level


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "certsync", "check", *args], capture_output=True, text=True, timeout=60
    )


def manifest(path: Path, cert: bytes, key: bytes, kind: str = "kubernetes.io/tls") -> Path:
    doc = {"apiVersion": "v1", "kind": "Secret", "type": kind, "metadata": {"name": "web-tls"},
           "data": {"tls.crt": base64.b64encode(cert).decode(), "tls.key": base64.b64encode(key).decode()}}  # fmt: skip
    path.write_text(yaml.safe_dump(doc))
    return path


def test_good_chain_passes(tmp_path: Path) -> None:
    chain = three_level("web.example.com")
    result = run(str(manifest(tmp_path / "s.yaml", chain.pem, chain.leaf.key_pem())))
    assert result.returncode == 0 and "web-tls: Valid: CN 'web.example.com'" in result.stdout
    (tmp_path / "tls.crt").write_bytes(chain.pem)
    (tmp_path / "tls.key").write_bytes(chain.leaf.key_pem())
    assert run("--cert", str(tmp_path / "tls.crt"), "--key", str(tmp_path / "tls.key")).returncode == 0


@pytest.mark.parametrize("case", ["mismatch", "expired", "misordered", "malformed", "opaque"])
def test_bad_secrets_fail_with_the_operators_reason(tmp_path: Path, case: str) -> None:
    chain = three_level("web.example.com")
    cert, key, kind = chain.pem, chain.leaf.key_pem(), "kubernetes.io/tls"
    expected = {"mismatch": "KeyMismatch", "expired": "CertificateExpired", "misordered": "ChainInvalid",
                "malformed": "InvalidCertificate", "opaque": "InvalidSecret"}[case]  # fmt: skip
    if case == "mismatch":
        key = issue("other").key_pem()
    elif case == "expired":
        old = issue(
            "old.example.com",
            not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
            not_after=dt.datetime(2021, 1, 1, tzinfo=dt.UTC),
        )
        cert, key = old.cert_pem, old.key_pem()
    elif case == "misordered":
        cert = chain.leaf.cert_pem + chain.root.cert_pem
    elif case == "malformed":
        cert = b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"
    elif case == "opaque":
        kind = "Opaque"
    result = run(str(manifest(tmp_path / "s.yaml", cert, key, kind)))
    assert result.returncode == 1
    assert result.stdout.startswith(f"web-tls: {expected}: ")
    assert key.decode().splitlines()[1] not in result.stdout + result.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run().returncode == 2
    assert run(str(tmp_path / "missing.yaml")).returncode == 2


def test_pem_files_are_named_in_the_messages(tmp_path: Path) -> None:
    chain = three_level("web.example.com")
    (tmp_path / "web.crt").write_bytes(chain.intermediate.cert_pem + chain.leaf.cert_pem)
    (tmp_path / "web.key").write_bytes(chain.leaf.key_pem())
    result = run("--cert", str(tmp_path / "web.crt"), "--key", str(tmp_path / "web.key"))
    assert result.returncode == 1
    assert result.stdout.startswith(f"{tmp_path / 'web.crt'}: ChainInvalid: {tmp_path / 'web.crt'} is out of order")
    assert f"{tmp_path / 'web.key'} belongs to certificate #2 (CN 'web.example.com')" in result.stdout
    assert "Secret" not in result.stdout


def test_a_ca_as_leaf_and_non_utf8_files_get_their_reasons(tmp_path: Path) -> None:
    chain = three_level("web.example.com")
    (tmp_path / "ca.crt").write_bytes(chain.intermediate.cert_pem + chain.root.cert_pem)
    (tmp_path / "ca.key").write_bytes(chain.intermediate.key_pem())
    result = run("--cert", str(tmp_path / "ca.crt"), "--key", str(tmp_path / "ca.key"))
    assert result.returncode == 1 and ": LeafIsCA: " in result.stdout
    (tmp_path / "bad.key").write_bytes(b"\xff" + chain.leaf.key_pem())
    (tmp_path / "web.crt").write_bytes(chain.pem)
    result = run("--cert", str(tmp_path / "web.crt"), "--key", str(tmp_path / "bad.key"))
    assert result.returncode == 1 and f"InvalidSecret: {tmp_path / 'bad.key'} is not UTF-8 text" in result.stdout


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("ed25519", "KeyTypeUnsupported"),
        ("rsa4096", "KeyTypeUnsupported"),
        ("p521", "KeyTypeUnsupported"),
        ("10-days-left", "ValidityTooShort"),
        ("rsa-under-ecdsa", "KeyAlgorithmMismatch"),
    ],
)
def test_for_emqx_applies_what_emqx_requires(tmp_path: Path, case: str, reason: str) -> None:
    now = dt.datetime.now(dt.UTC)
    if case == "10-days-left":
        cert = issue("mqtt.example.com", not_before=now - dt.timedelta(days=80), not_after=now + dt.timedelta(days=10))
        cert_pem = cert.cert_pem
    elif case == "rsa-under-ecdsa":
        chain = three_level("mqtt.example.com", key_kind="rsa")
        cert, cert_pem = chain.leaf, chain.pem
    else:
        cert = issue("mqtt.example.com", key_kind=case)
        cert_pem = cert.cert_pem
    path = manifest(tmp_path / "s.yaml", cert_pem, cert.key_pem())
    for others in ([], ["--for", "cdn"]):  # nothing else minds
        passed = run(str(path), *others)
        assert passed.returncode == 0 and "web-tls: Valid:" in passed.stdout, passed.stdout + passed.stderr
    refused = run(str(path), "--for", "emqx")
    assert refused.returncode == 1 and refused.stdout.startswith(f"web-tls: {reason}: Secret 'web-tls': ")
    if reason == "ValidityTooShort":
        assert "EMQX Cloud refuses certificates within 60 days of expiry" in refused.stdout
        assert "too short since " + (now - dt.timedelta(days=50)).strftime("%Y-%m-%d") in refused.stdout
    assert cert.key_pem().decode().splitlines()[1] not in refused.stdout + refused.stderr


def test_for_takes_only_known_destinations(tmp_path: Path) -> None:
    chain = three_level("web.example.com")
    path = manifest(tmp_path / "s.yaml", chain.pem, chain.leaf.key_pem())
    assert run(str(path), "--for", "emqx").returncode == 0
    assert run(str(path), "--for", "nowhere").returncode == 2
