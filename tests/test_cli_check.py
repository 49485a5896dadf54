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


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "certsync", "check", *args], capture_output=True, input=stdin, timeout=60
    )
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())


def secret_yaml(cert: bytes, key: bytes, kind: str = "kubernetes.io/tls") -> str:
    doc = {"apiVersion": "v1", "kind": "Secret", "type": kind, "metadata": {"name": "web-tls"},
           "data": {"tls.crt": base64.b64encode(cert).decode(), "tls.key": base64.b64encode(key).decode()}}  # fmt: skip
    return yaml.safe_dump(doc)


def manifest(path: Path, cert: bytes, key: bytes, kind: str = "kubernetes.io/tls") -> Path:
    path.write_text(secret_yaml(cert, key, kind))
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


def test_standard_input_takes_a_pem_bundle_in_either_order() -> None:
    chain = three_level("web.example.com")
    key = chain.leaf.key_pem()
    for bundle in (chain.pem + key, key + chain.pem, chain.pem + chain.leaf.key_pem("traditional")):
        result = run("-", stdin=bundle)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout == f"<stdin>: Valid: CN 'web.example.com', {result.stdout.split(', ', 1)[1]}"
    emqx = run("-", "--for", "emqx", stdin=chain.pem + key)
    assert emqx.returncode == 0 and "<stdin>: Valid:" in emqx.stdout, emqx.stdout + emqx.stderr


def test_standard_input_takes_a_secret_manifest_also_with_string_data() -> None:
    chain = three_level("web.example.com")
    result = run("-", stdin=secret_yaml(chain.pem, chain.leaf.key_pem()).encode())
    assert result.returncode == 0 and result.stdout.startswith("web-tls: Valid: CN 'web.example.com'"), result.stderr
    doc = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": {"name": "plain"},
           "stringData": {"tls.crt": chain.pem.decode(), "tls.key": chain.leaf.key_pem().decode()}}  # fmt: skip
    result = run("-", stdin=yaml.safe_dump(doc).encode())  # indented PEM inside YAML: still the manifest
    assert result.returncode == 0 and result.stdout.startswith("plain: Valid:"), result.stdout + result.stderr
    refused = run("-", stdin=secret_yaml(chain.pem, issue("other").key_pem()).encode())
    assert refused.returncode == 1 and refused.stdout.startswith("web-tls: KeyMismatch: ")


def test_a_bad_pem_bundle_on_standard_input_is_named_by_its_lines() -> None:
    chain = three_level("web.example.com")
    key = chain.leaf.key_pem()
    # Intermediate first: the messages name the stream and the key, with the certificates' lines in the stream.
    misordered = chain.intermediate.cert_pem + key + chain.leaf.cert_pem
    result = run("-", stdin=misordered)
    assert result.returncode == 1
    assert result.stdout.startswith("<stdin>: ChainInvalid: <stdin> is out of order"), result.stdout
    assert "the key in <stdin> belongs to certificate #2 (CN 'web.example.com')" in result.stdout
    assert key.decode().splitlines()[1] not in result.stdout + result.stderr
    inter_lines = chain.intermediate.cert_pem.count(b"\n")
    leaf_first = inter_lines + key.count(b"\n") + 1
    broken = (
        chain.intermediate.cert_pem + key + b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"
    )
    result = run("-", stdin=broken)
    assert result.returncode == 1 and result.stdout.startswith("<stdin>: InvalidCertificate: "), result.stdout
    assert f"line {leaf_first + 1}" in result.stdout, result.stdout  # the stream's own line of the bad text
    result = run("-", stdin=chain.pem)
    assert result.returncode == 1 and "InvalidPrivateKey: <stdin> holds 0 PEM private keys" in result.stdout
    result = run("-", stdin=chain.pem + key + issue("other").key_pem())
    assert result.returncode == 1 and "InvalidPrivateKey: <stdin> holds 2 PEM private keys" in result.stdout
    result = run("-", stdin=chain.pem + b"\xff" + key)
    line = chain.pem.count(b"\n") + 1
    assert result.returncode == 1
    assert f"InvalidSecret: <stdin> is not UTF-8 text: byte 0xFF at line {line}, column 1" in result.stdout


def test_standard_input_with_neither_a_secret_nor_pem_exits_2() -> None:
    for junk in (b"", b"hello: world\n", b"{not yaml", b"\xff\xfe"):
        result = run("-", stdin=junk)
        assert result.returncode == 2, (junk, result.stdout, result.stderr)
        assert result.stdout == ""
    assert run("-", "--cert", "x.crt", "--key", "x.key").returncode == 2  # one input only


@pytest.mark.parametrize(
    "doc",
    [
        "kind: Secret\nmetadata: {name: x}\ndata: [tls.crt]\n",
        "kind: Secret\nmetadata: {name: x}\ndata: {tls.crt: 42}\n",
        "kind: Secret\nmetadata: {name: x}\ndata: {tls.crt: 'not base64!'}\n",
        "kind: Secret\nmetadata: {name: x}\nstringData: plain text\n",
    ],
)
def test_a_malformed_manifest_is_a_clear_error_not_a_traceback(tmp_path: Path, doc: str) -> None:
    for source in ("file", "stdin"):
        path = tmp_path / "bad.yaml"
        path.write_text(doc)
        result = run(str(path)) if source == "file" else run("-", stdin=doc.encode())
        assert result.returncode == 2, (source, result.stdout, result.stderr)
        assert "certsync check: cannot read input: ValueError" in result.stderr and "Traceback" not in result.stderr


def test_a_manifest_file_over_the_cap_is_refused_unread(tmp_path: Path) -> None:
    from certsync.cli import MAX_INPUT_BYTES

    big = tmp_path / "big.yaml"
    with big.open("wb") as file:
        file.truncate(MAX_INPUT_BYTES + 1)  # sparse: no disk spent
    result = run(str(big))
    assert result.returncode == 2 and f"holds more than the {MAX_INPUT_BYTES} bytes accepted" in result.stderr
