"""Endpoints normalised before the allowlist (and used only in that form); Secret names checked before any read;
the CRDs' patterns agree with both."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from certsync import settings
from certsync.settings import EndpointError, Settings, normalise_endpoint, secret_name_problem

from devkit.factory import issue

CRDS = Path(__file__).resolve().parents[1] / "crds"


@pytest.mark.parametrize(
    ("endpoint", "normalised"),
    [
        ("https://api.cdn.sber.cloud", "https://api.cdn.sber.cloud"),
        ("HTTPS://API.CDN.Sber.Cloud:443/", "https://api.cdn.sber.cloud"),
        ("http://127.0.0.1:80/x/", "http://127.0.0.1/x"),
        ("http://127.0.0.1:8081", "http://127.0.0.1:8081"),
        ("https://host/api/./v1//tls/", "https://host/api/v1/tls"),
        ("https://host/api/../admin/", "https://host/admin"),
        ("https://host/../../etc", "https://host/etc"),
        ("https://bücher.example/api", "https://xn--bcher-kva.example/api"),
        ("https://host.example./v1", "https://host.example/v1"),
        ("https://[::1]:8443/v1", "https://[::1]:8443/v1"),
        ("https://[0:0:0:0:0:0:0:1]/", "https://[::1]"),
        ("https://cloud-intl.emqx.com/public_api/v1", "https://cloud-intl.emqx.com/public_api/v1"),
    ],
)
def test_normal_forms(endpoint: str, normalised: str) -> None:
    assert normalise_endpoint(endpoint) == normalised


@pytest.mark.parametrize(
    "endpoint",
    [
        "",
        "ftp://host/",
        "host/api",
        "https://user:pw@host/",
        "https://host@evil.example/",
        "https://host/api?x=1",
        "https://host/api#frag",
        "https://host/a\x00b",
        "https://host/a\tb",
        "https://host/a b",
        "https://ho st/",
        "https://host\n.evil/",
        "https://host\\@evil/",
        "https://host/%2e%2e/admin",
        "https://host/api%2F..%2Fadmin",
        "https://host:0/",
        "https://host:99999/",
        "https://host:8a/",
        "https:///path",
        "https://-host.example/",
        "https://[::1/",
        "https://[zz::1]/",
        "https://host/a\u202eb",
    ],
)
def test_refused_forms(endpoint: str) -> None:
    with pytest.raises(EndpointError):
        normalise_endpoint(endpoint)


def allowing(*prefixes: str) -> Settings:
    return Settings(allowed_endpoints=prefixes)


@pytest.mark.parametrize(
    ("endpoint", "allowed"),
    [
        ("https://host/api/", True),
        ("https://HOST/api", True),
        ("https://host:443/api/v1", True),
        ("https://host/api/../admin/", False),  # the issue's escape: requests would have gone to /admin
        ("https://host/api/./../admin", False),
        ("https://host/apix/", False),
        ("https://host/", False),
        ("https://host.evil.example/api/", False),
        ("https://host:8443/api/", False),
        ("http://host/api/", False),  # http only where a prefix names it
        ("https://user@host/api/", False),
        ("https://host/api/%2e%2e/admin", False),
        ("https://host/api/\x7f", False),
    ],
)
def test_allowlist_matches_whole_segments_of_the_normal_form(endpoint: str, allowed: bool) -> None:
    assert allowing("https://host/api/").endpoint_allowed(endpoint) is allowed


def test_the_normal_form_is_what_callers_use() -> None:
    config = allowing("https://host/api/", "http://127.0.0.1:8081/")
    assert config.allowed_endpoint("HTTPS://Host:443/api/./v1/") == "https://host/api/v1"
    assert config.allowed_endpoint("http://127.0.0.1:8081") == "http://127.0.0.1:8081"
    assert config.allowed_endpoint("https://host/api/../admin") is None


def test_allowlist_entries_are_checked_at_start() -> None:
    with pytest.raises(settings.SettingsError, match="allowed endpoint"):
        settings.load(["--allowed-endpoints", "https://user@host/"], {})
    assert settings.load(["--allowed-endpoints", "https://HOST:443/api"], {}).endpoint_allowed("https://host/api/x")


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("web-tls", None),
        ("a.b-c.d", None),
        ("x" * 253, None),
        ("", "must name a Secret"),
        ("..", "is not a valid Secret name"),
        (".", "is not a valid Secret name"),
        ("ns/secret", "is not a valid Secret name"),
        ("../ns/x", "is not a valid Secret name"),
        ("a%2Fb", "is not a valid Secret name"),
        ("Upper", "is not a valid Secret name"),
        ("-lead", "is not a valid Secret name"),
        ("trail-", "is not a valid Secret name"),
        ("a..b", "is not a valid Secret name"),
        ("x" * 254, "is not a valid Secret name"),
        (None, "must name a Secret"),
    ],
)
def test_secret_names(name: Any, problem: str | None) -> None:
    found = secret_name_problem(name, "spec.secretName")
    assert found is None if problem is None else (found is not None and problem in found)
    if found:
        assert found.startswith("spec.secretName")


def test_metrics_bind_address() -> None:
    assert settings.load([], {}).metrics_bind_address == "0.0.0.0"
    assert settings.load(["--metrics-bind-address", "127.0.0.1"], {}).metrics_bind_address == "127.0.0.1"
    assert settings.load([], {"CERTSYNC_METRICS_BIND_ADDRESS": "::"}).metrics_bind_address == "::"
    with pytest.raises(settings.SettingsError, match="METRICS_BIND_ADDRESS"):
        settings.load(["--metrics-bind-address", "localhost; rm"], {})


def test_the_drift_interval_is_at_least_a_minute() -> None:
    assert settings.load([], {}).drift_interval == 6 * 3600
    assert settings.load(["--drift-interval", "1m"], {}).drift_interval == 60
    assert settings.load([], {"CERTSYNC_DRIFT_INTERVAL": "1h30m"}).drift_interval == 5400
    for bad in ("0s", "0", "59s", "5"):  # 0 would be a tight read loop
        with pytest.raises(settings.SettingsError, match="CERTSYNC_DRIFT_INTERVAL must be at least 1m"):
            settings.load([], {"CERTSYNC_DRIFT_INTERVAL": bad})


def test_namespaces_are_names_not_patterns() -> None:
    assert settings.load(["--namespaces", "team-a,b"], {}).namespaces == ("team-a", "b")
    for bad in ("team-*", "!kube-system", "Team", "a_b"):
        with pytest.raises(settings.SettingsError, match="namespace names"):
            settings.load([], {"CERTSYNC_NAMESPACES": bad})


def test_remote_concurrency_limits() -> None:
    default = settings.load([], {})
    assert (default.remote_concurrency, default.remote_concurrency_per_target, default.workers) == (32, 2, 32)
    assert settings.load(["--workers", "4"], {}).workers == 4
    chosen = settings.load(["--remote-concurrency", "8"], {"CERTSYNC_REMOTE_CONCURRENCY_PER_TARGET": "1"})
    assert (chosen.remote_concurrency, chosen.remote_concurrency_per_target) == (8, 1)
    for bad in ("0", "-1", "two", "1001", " "):
        with pytest.raises(settings.SettingsError, match="CERTSYNC_REMOTE_CONCURRENCY "):
            settings.load(["--remote-concurrency", bad], {})
        with pytest.raises(settings.SettingsError, match="CERTSYNC_REMOTE_CONCURRENCY_PER_TARGET"):
            settings.load([], {"CERTSYNC_REMOTE_CONCURRENCY_PER_TARGET": bad})


def test_log_level() -> None:
    assert settings.load([], {}).log_level == "info"
    assert settings.load(["--log-level", "DEBUG"], {}).log_level == "debug"
    assert settings.load([], {"CERTSYNC_LOG_LEVEL": "Warning"}).log_level == "warning"
    assert settings.load(["--log-level", "error"], {"CERTSYNC_LOG_LEVEL": "debug"}).log_level == "error"
    for bad in ("verbose", "trace", "10", "critical"):
        with pytest.raises(
            settings.SettingsError, match="CERTSYNC_LOG_LEVEL must be one of debug, info, warning, error"
        ):
            settings.load([], {"CERTSYNC_LOG_LEVEL": bad})


def test_a_bad_setting_exits_2_with_its_message(capsys: pytest.CaptureFixture[str]) -> None:
    from certsync import cli

    assert cli.main(["run", "--log-level", "loud"]) == 2
    assert "CERTSYNC_LOG_LEVEL must be one of debug, info, warning, error, not 'loud'" in capsys.readouterr().err
    assert cli.main(["run", "--remote-ca-file", "/nonexistent/ca.pem"]) == 2
    assert "CERTSYNC_REMOTE_CA_FILE '/nonexistent/ca.pem' cannot be read" in capsys.readouterr().err


def test_the_remote_ca_file_is_checked_at_start(tmp_path: Path) -> None:
    root = issue("Private Root CA", ca=True)
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(b"# the platform's private CA\n" + root.cert_pem + issue("Other CA", ca=True).cert_pem)
    assert settings.load([], {}).remote_ca_file == ""
    assert settings.load(["--remote-ca-file", str(bundle)], {}).remote_ca_file == str(bundle)
    assert settings.load([], {"CERTSYNC_REMOTE_CA_FILE": str(bundle)}).remote_ca_file == str(bundle)

    key_only = tmp_path / "key.pem"
    key_only.write_bytes(root.key_pem())
    body = root.cert_pem.decode().splitlines()
    broken = tmp_path / "broken.pem"
    broken.write_text("\n".join([body[0], body[1][:20] + "!!" + body[1][22:], *body[2:]]) + "\n")
    binary = tmp_path / "ca.der"
    binary.write_bytes(b"\x30\x82\x01\x0a-----BEGIN CERTIFICATE-----\xff\xfe")
    huge = tmp_path / "huge.pem"
    huge.write_bytes(root.cert_pem * (settings.MAX_CA_FILE // len(root.cert_pem) + 1))
    refused = {
        tmp_path / "absent.pem": "cannot be read",
        tmp_path: "cannot be read",  # a directory
        key_only: "holds no PEM certificate",
        broken: "is not a PEM CA bundle OpenSSL can load",
        binary: "is not a PEM CA bundle OpenSSL can load",
        huge: "is larger than 1024 KiB",
    }
    key_line = root.key_pem().decode().splitlines()[1]
    for path, problem in refused.items():
        with pytest.raises(settings.SettingsError) as refusal:
            settings.load([], {"CERTSYNC_REMOTE_CA_FILE": str(path)})
        assert str(refusal.value).startswith(f"CERTSYNC_REMOTE_CA_FILE {str(path)!r} {problem}"), refusal.value
        assert key_line[:16] not in str(refusal.value)  # the file is named, its content never shown


# --- the CRDs agree -----------------------------------------------------------------------------


def crd_properties() -> list[tuple[str, dict[str, Any]]]:
    """(field path, schema) of every endpoint and Secret name field in the CRDs' specs (what users write)."""
    found: list[tuple[str, dict[str, Any]]] = []

    def walk(schema: dict[str, Any], path: str) -> None:
        for key, sub in (schema.get("properties") or {}).items():
            here = f"{path}.{key}"
            if key in ("endpoint", "secretName") or here.endswith("credentialsSecretRef.name"):
                found.append((here, sub))
            walk(sub, here)

    for crd in sorted(CRDS.glob("certsync.io_*.yaml")):
        doc = yaml.safe_load(crd.read_text())
        walk(doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"], f"{crd.stem}.spec")
    return found


def test_every_endpoint_and_secret_name_field_has_a_pattern() -> None:
    fields = crd_properties()
    assert len([f for f, _ in fields if f.endswith("endpoint")]) == 4  # + the ClusterRemoteAccount's spec.endpoint
    assert len([f for f, _ in fields if f.endswith("secretName")]) == 3  # two tls Secrets, one client CA
    assert all(schema.get("pattern") and schema.get("maxLength") for _, schema in fields)


ENDPOINT_SAMPLES = [
    "https://api.cdn.sber.cloud",
    "http://127.0.0.1:8081/",
    "https://cloud-intl.emqx.com/public_api/v1",
    "https://[::1]:8443/v1",
    "https://host/api/../admin/",  # accepted by the API server: the operator refuses it with a reason
    "https://user:pw@host/",
    "https://host/a?b",
    "https://host/a#b",
    "https://host/a\x01b",
    "https://host/a b",
    "https://host/%2e%2e/",
    "https://host\\evil/",
    "ftp://host/",
]


@pytest.mark.parametrize("endpoint", ENDPOINT_SAMPLES)
def test_crd_endpoint_pattern_admits_only_what_normalises(endpoint: str) -> None:
    patterns = {schema["pattern"] for path, schema in crd_properties() if path.endswith("endpoint")}
    assert len(patterns) == 1
    try:
        normalise_endpoint(endpoint)
        normalises = True
    except EndpointError:
        normalises = False
    assert bool(re.fullmatch(patterns.pop(), endpoint)) is normalises


@pytest.mark.parametrize("name", ["web-tls", "a.b", "..", "ns/x", "../ns/x", "a%2Fb", "Web", "-x", "x" * 254])
def test_crd_secret_name_pattern_agrees_with_the_check(name: str) -> None:
    for path, schema in crd_properties():
        if path.endswith("endpoint"):
            continue
        admitted = bool(re.fullmatch(schema["pattern"], name)) and len(name) <= schema["maxLength"]
        assert admitted is (secret_name_problem(name, path) is None), path


def test_remote_bounds_take_sizes_and_durations_within_limits() -> None:
    loaded = settings.load(["--remote-max-answer-bytes", "512Ki", "--remote-call-deadline", "1m"], {})
    assert (loaded.remote_max_answer_bytes, loaded.remote_call_deadline) == (512 * 1024, 60.0)
    default = settings.load([], {})
    assert (default.remote_max_answer_bytes, default.remote_call_deadline) == (4 * 1024 * 1024, 30.0)
    for flag, value in [
        ("--remote-max-answer-bytes", "1Gi"),
        ("--remote-max-answer-bytes", "1"),
        ("--remote-max-answer-bytes", "4 MB"),
        ("--remote-call-deadline", "1s"),
        ("--remote-call-deadline", "1h"),
    ]:
        with pytest.raises(settings.SettingsError):
            settings.load([flag, value], {})


def test_metrics_resource_labels_is_a_boolean_setting() -> None:
    assert settings.load([], {}).metrics_resource_labels is True
    assert settings.load([], {"CERTSYNC_METRICS_RESOURCE_LABELS": "false"}).metrics_resource_labels is False
    with pytest.raises(settings.SettingsError, match="true or false"):
        settings.load([], {"CERTSYNC_METRICS_RESOURCE_LABELS": "maybe"})


def test_secret_label_is_a_kubernetes_label() -> None:
    assert settings.load([], {}).secret_label is None
    loaded = settings.load(["--secret-label", "certsync.io/allow=true"], {})
    assert loaded.secret_label == ("certsync.io/allow", "true")
    for bad in ("certsync.io/allow", "=true", "a b=c", "certsync.io/allow=not valid"):
        with pytest.raises(settings.SettingsError, match="CERTSYNC_SECRET_LABEL"):
            settings.load(["--secret-label", bad], {})
