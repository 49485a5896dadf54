"""The operator's settings: read and validated once at start, then passed explicitly (never module globals)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import ssl
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# The known hosts of both families (providers.md), https only. EMQX: the international console's
# platform API (its path is part of the base URL). CDN: Sber Cloud CDN and the family's white-label hosts.
EMQX_HOSTS = ("https://cloud-intl.emqx.com/public_api/",)
CDN_HOSTS = (
    "https://api.cdn.sber.cloud/",
    "https://api.cdnvideo.ru/",
    "https://api.cdn.beeline.ru/",
    "https://apicdn.rcloud.ru/",
)
DEFAULT_ALLOWED = (*CDN_HOSTS, *EMQX_HOSTS)
DEFAULT_METRICS_BIND = "0.0.0.0"  # in a pod the kubelet's probes and Prometheus come from outside the pod
MIN_DRIFT_INTERVAL_S = 60.0  # as the CRD's own minimum: a check costs a read of EMQX's 60 an hour
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_DEFAULT_PORTS = {"https": 443, "http": 80}
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@-]*$")
LOG_LEVELS = ("debug", "info", "warning", "error")
CDN_BIND_METHODS = ("patch", "put")
MAX_CA_FILE = 1024 * 1024  # a bundle of a few hundred roots is far below; anything larger is not a CA bundle


class SettingsError(ValueError):
    """A setting that cannot be used; the operator refuses to start with it."""


class EndpointError(ValueError):
    """An endpoint that cannot be used safely, whatever the allowlist says."""


def normalise_endpoint(endpoint: str) -> str:
    """The one form of an endpoint that is checked against the allowlist and used to build URLs.

    Scheme and host lower-cased, the host in IDNA (punycode), the default port
    removed, dot segments resolved and repeated slashes merged, no trailing
    slash: `HTTPS://API.Example.com:443/v1/./x/../` -> `https://api.example.com/v1`.
    Refused (EndpointError): control characters, whitespace, backslashes,
    percent-escapes (an escaped dot or slash would be resolved by someone after
    us), user info, a query or a fragment, anything but http(s).
    """
    if not endpoint:
        raise EndpointError("the endpoint is empty")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 or c in "\\%" for c in endpoint):
        raise EndpointError("the endpoint contains whitespace, a control character, a backslash or a %-escape")
    if "?" in endpoint or "#" in endpoint:
        raise EndpointError("the endpoint must not have a query or a fragment")
    scheme, rest = endpoint.split("://", 1) if "://" in endpoint else ("", "")
    scheme = scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise EndpointError("the endpoint must start with https:// (or http:// where allowlisted)")
    authority, _, path = rest.partition("/")
    if "@" in authority:
        raise EndpointError("the endpoint must not carry user info")
    host, port = _split_authority(authority)
    if port == _DEFAULT_PORTS[scheme]:
        port = None
    segments = _resolve_dot_segments(path)
    for segment in segments:
        if not _PATH_SEGMENT.match(segment):
            raise EndpointError("the endpoint's path has a character that must not appear unescaped")
    netloc = host if port is None else f"{host}:{port}"
    return f"{scheme}://{netloc}" + "".join("/" + s for s in segments)


def _split_authority(authority: str) -> tuple[str, int | None]:
    if authority.startswith("["):
        literal, bracket, after = authority[1:].partition("]")
        if not bracket:
            raise EndpointError("the endpoint's IPv6 address has no closing bracket")
        try:
            host = f"[{ipaddress.IPv6Address(literal).compressed}]"
        except ValueError:
            raise EndpointError("the endpoint's IPv6 address is not valid") from None
        port_text = after.removeprefix(":") if after.startswith(":") else None
        if after and port_text is None:
            raise EndpointError("the endpoint's authority is not host[:port]")
    else:
        name, colon, port_text_raw = authority.partition(":")
        port_text = port_text_raw if colon else None
        host = _idna_host(name)
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536 or len(port_text) > 5:
        raise EndpointError("the endpoint's port is not a number from 1 to 65535")
    return host, int(port_text)


def _idna_host(name: str) -> str:
    name = name.rstrip(".") if name.endswith(".") and not name.endswith("..") else name
    if not name:
        raise EndpointError("the endpoint has no host")
    try:
        ascii_name = name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise EndpointError("the endpoint's host is not a valid (internationalised) domain name") from None
    if len(ascii_name) > 253 or not all(_HOST_LABEL.match(label) for label in ascii_name.split(".")):
        raise EndpointError("the endpoint's host is not a valid domain name or address")
    return ascii_name


def _resolve_dot_segments(path: str) -> list[str]:
    """RFC 3986 section 5.2.4 on segments: `.` dropped, `..` removes the one before (never above the root)."""
    out: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    return out


def secret_name_problem(name: object, field_path: str) -> str | None:
    """Why `name` cannot be a Secret's name (a DNS-1123 subdomain), or None. Call it before any read:
    `..`, `ns/name` or `%2F` forms would otherwise reach the API server's URL."""
    if not isinstance(name, str) or not name:
        return f"{field_path} must name a Secret"
    if len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        return (
            f"{field_path} {name[:64]!r} is not a valid Secret name (lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit, at most 253 characters)"
        )
    return None


def check_ca_file(path: str) -> None:
    """Refuse at start a CA bundle the remote clients could not use: missing, unreadable, or without a
    PEM certificate that OpenSSL loads. Found now, not at the first remote call hours later."""
    name = "CERTSYNC_REMOTE_CA_FILE"
    try:
        with open(path, "rb") as bundle:
            data = bundle.read(MAX_CA_FILE + 1)
    except OSError as error:
        raise SettingsError(f"{name} {path!r} cannot be read: {error.strerror or type(error).__name__}") from None
    if len(data) > MAX_CA_FILE:
        raise SettingsError(f"{name} {path!r} is larger than {MAX_CA_FILE // 1024} KiB: not a CA bundle")
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise SettingsError(f"{name} {path!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    try:
        ssl.create_default_context().load_verify_locations(cadata=data.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as error:
        raise SettingsError(f"{name} {path!r} is not a PEM CA bundle OpenSSL can load: {error}") from None


def parse_duration(text: str) -> float:
    """`6h`, `30m`, `1h30m`, `45s` or plain seconds."""
    text = text.strip()
    if text.replace(".", "", 1).isdigit():
        return float(text)
    match = _DURATION.fullmatch(text)
    if not text or not match:
        raise SettingsError(f"{text!r} is not a duration (examples: 6h, 30m, 1h30m, 45s)")
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


_SIZE = re.compile(r"([0-9]{1,12})(Ki|Mi)?")


def parse_size(text: str) -> int:
    """Bytes: `4194304`, `4096Ki` or `4Mi`."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise SettingsError(f"{text!r} is not a size (examples: 4Mi, 512Ki, 65536)")
    return int(match.group(1)) * {None: 1, "Ki": 1024, "Mi": 1024 * 1024}[match.group(2)]


_LABEL_KEY = re.compile(r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


def parse_label(text: str) -> tuple[str, str] | None:
    """`key=value` as a Kubernetes label; empty: None."""
    text = text.strip()
    if not text:
        return None
    key, sep, value = text.partition("=")
    if not sep or not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
        raise SettingsError(f"CERTSYNC_SECRET_LABEL must be a label KEY=VALUE (certsync.io/allow=true), not {text!r}")
    return key, value


@dataclass(frozen=True)
class Settings:
    allowed_endpoints: tuple[str, ...] = DEFAULT_ALLOWED
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    metrics_port: int = 8080
    log_format: str = "text"
    drift_interval: float = 6 * 3600.0
    cdn_budget_per_minute: int = 20
    # How a CDN resource is bound to a certificate: "patch" sends only `certificate`; "put" reads the resource and
    # sends its whole configuration back exactly as read, `certificate` changed (for an API that takes no PATCH).
    cdn_bind_method: str = "patch"
    # The EMQX rate window. 3600 s is the provider's; shorter only against an emulator started with the same.
    emqx_budget_window: float = 3600.0
    leader_election: bool = True
    lease_namespace: str = ""  # empty: the pod's namespace (in cluster) or the kubeconfig context's
    # How long a deletion with `Delete` keeps retrying an unavailable remote before it releases the finalizer.
    delete_timeout: float = 3600.0
    lease_name: str = "certsync-leader"
    # client-go's three durations: a standby takes over after `lease_duration` without a change of the Lease;
    # the leader stops acting when it could not renew for `renew_deadline` (shorter: the margin covers the
    # stop); every `retry_period` the leader renews and a standby looks again.
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    debug_election_signals: bool = False  # tests only: SIGUSR1 stalls, SIGUSR2 crashes the election loop
    metrics_bind_address: str = DEFAULT_METRICS_BIND
    # Remote calls in flight: overall, and per remote target (EMQX deployment, CDN account); beyond, calls queue.
    remote_concurrency: int = 32
    remote_concurrency_per_target: int = 2
    # Passes running at once (client-go's workers): the others wait their turn, first come, first served.
    workers: int = 32
    log_level: str = "info"  # one of LOG_LEVELS
    # A PEM bundle the remote clients trust besides the system's store (a private CA, a TLS-inspecting proxy's).
    remote_ca_file: str = ""
    # Bounds on every remote call (remote.py): bytes read of an answer, and seconds from connect to last byte.
    remote_max_answer_bytes: int = 4 * 1024 * 1024
    remote_call_deadline: float = 30.0
    # False: no namespace, resource name, deployment ID or account in metric labels (opaque ids instead).
    metrics_resource_labels: bool = True
    # Only Secrets with this label (key, value) are used; None: any Secret of the resource's namespace.
    secret_label: tuple[str, str] | None = None
    _allowed_prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        prefixes = []
        for prefix in self.allowed_endpoints:
            try:
                prefixes.append(normalise_endpoint(prefix) + "/")
            except EndpointError as error:
                raise SettingsError(f"allowed endpoint {prefix!r}: {error}") from None
        object.__setattr__(self, "_allowed_prefixes", tuple(prefixes))

    def allowed_endpoint(self, endpoint: str) -> str | None:
        """The normalised endpoint if the allowlist admits it, else None. Use only the returned form."""
        try:
            normalised = normalise_endpoint(endpoint)
        except EndpointError:
            return None
        candidate = normalised + "/"
        return normalised if any(candidate.startswith(p) for p in self._allowed_prefixes) else None

    def endpoint_allowed(self, endpoint: str) -> bool:
        """A prefix match, segment by segment, on the normalised URL; `http://` only where a prefix names it."""
        return self.allowed_endpoint(endpoint) is not None


def _csv(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="certsync run", description="Run the certsync operator.")
    p.add_argument("--allowed-endpoints", help="comma-separated URL prefixes (CERTSYNC_ALLOWED_ENDPOINTS)")
    p.add_argument("--namespaces", help="comma-separated namespaces to watch; empty: all (CERTSYNC_NAMESPACES)")
    p.add_argument("--metrics-port", help="metrics and health port (CERTSYNC_METRICS_PORT)")
    p.add_argument(
        "--metrics-bind-address",
        help=f"address of the metrics and health server, {DEFAULT_METRICS_BIND} (CERTSYNC_METRICS_BIND_ADDRESS)",
    )
    p.add_argument("--log-format", choices=["json", "text"], help="CERTSYNC_LOG_FORMAT")
    p.add_argument("--log-level", help="debug, info, warning or error (CERTSYNC_LOG_LEVEL)")
    p.add_argument(
        "--remote-ca-file",
        help="PEM bundle trusted for the remote APIs besides the system's store (CERTSYNC_REMOTE_CA_FILE)",
    )
    p.add_argument(
        "--remote-max-answer-bytes",
        help="bytes read of a remote's answer at most, e.g. 4Mi (CERTSYNC_REMOTE_MAX_ANSWER_BYTES)",
    )
    p.add_argument(
        "--remote-call-deadline", help="one remote call, connect to last byte, at most (CERTSYNC_REMOTE_CALL_DEADLINE)"
    )
    p.add_argument(
        "--metrics-resource-labels",
        choices=["true", "false"],
        help="namespaces and names in metric labels; false: opaque ids (CERTSYNC_METRICS_RESOURCE_LABELS)",
    )
    p.add_argument(
        "--secret-label", help="only Secrets with this label KEY=VALUE are used; empty: any (CERTSYNC_SECRET_LABEL)"
    )
    p.add_argument("--drift-interval", help="default drift-check interval (CERTSYNC_DRIFT_INTERVAL)")
    p.add_argument("--cdn-budget-per-minute", help="CDN calls per minute per account (CERTSYNC_CDN_BUDGET_PER_MINUTE)")
    p.add_argument(
        "--cdn-bind-method",
        help="patch (only `certificate`) or put (GET, then the whole configuration) (CERTSYNC_CDN_BIND_METHOD)",
    )
    p.add_argument(
        "--leader-election", choices=["true", "false"], help="one replica acts at a time (CERTSYNC_LEADER_ELECTION)"
    )
    p.add_argument("--lease-namespace", help="namespace of the leader Lease (CERTSYNC_LEASE_NAMESPACE)")
    p.add_argument("--delete-timeout", help="how long deletion retries the remote (CERTSYNC_DELETE_TIMEOUT)")
    p.add_argument("--lease-name", help="name of the leader Lease (CERTSYNC_LEASE_NAME)")
    p.add_argument(
        "--lease-duration", help="a standby takes over after this long without renewal (CERTSYNC_LEASE_DURATION)"
    )
    p.add_argument(
        "--renew-deadline", help="the leader stops acting when it cannot renew for this long (CERTSYNC_RENEW_DEADLINE)"
    )
    p.add_argument("--retry-period", help="between two renewals or two tries of a standby (CERTSYNC_RETRY_PERIOD)")
    p.add_argument("--debug-election-signals", choices=["true", "false"], help=argparse.SUPPRESS)
    p.add_argument("--remote-concurrency", help="remote calls in flight at most (CERTSYNC_REMOTE_CONCURRENCY)")
    p.add_argument(
        "--remote-concurrency-per-target",
        help="remote calls in flight per EMQX deployment or CDN account (CERTSYNC_REMOTE_CONCURRENCY_PER_TARGET)",
    )
    p.add_argument("--workers", help="passes running at once (CERTSYNC_WORKERS)")
    p.add_argument("--emqx-budget-window", help="EMQX rate window, emulators only (CERTSYNC_EMQX_BUDGET_WINDOW)")
    return p


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Flags win over environment variables, which win over defaults."""
    env = os.environ if environ is None else environ
    args = parser().parse_args(argv)

    def pick(flag: str | None, name: str) -> str | None:
        return flag if flag is not None else env.get(name)

    allowed = pick(args.allowed_endpoints, "CERTSYNC_ALLOWED_ENDPOINTS")
    namespaces = pick(args.namespaces, "CERTSYNC_NAMESPACES")
    for namespace in _csv(namespaces or ""):
        # kopf would take globs and negations; the Secret watch lists namespaces by name, so names only.
        if not _NAMESPACE.match(namespace):
            raise SettingsError(f"CERTSYNC_NAMESPACES takes namespace names, not {namespace!r}")
    port = pick(args.metrics_port, "CERTSYNC_METRICS_PORT") or "8080"
    bind = pick(args.metrics_bind_address, "CERTSYNC_METRICS_BIND_ADDRESS") or DEFAULT_METRICS_BIND
    try:
        ipaddress.ip_address(bind)
    except ValueError:
        raise SettingsError(f"CERTSYNC_METRICS_BIND_ADDRESS must be an IP address, not {bind!r}") from None
    log_format = pick(args.log_format, "CERTSYNC_LOG_FORMAT") or ("text" if sys.stderr.isatty() else "json")
    log_level = (pick(args.log_level, "CERTSYNC_LOG_LEVEL") or "info").strip().lower()
    if log_level not in LOG_LEVELS:
        raise SettingsError(f"CERTSYNC_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {log_level!r}")
    ca_file = pick(args.remote_ca_file, "CERTSYNC_REMOTE_CA_FILE") or ""
    if ca_file:
        check_ca_file(ca_file)
    max_answer = parse_size(pick(args.remote_max_answer_bytes, "CERTSYNC_REMOTE_MAX_ANSWER_BYTES") or "4Mi")
    if not 64 * 1024 <= max_answer <= 64 * 1024 * 1024:
        raise SettingsError(f"CERTSYNC_REMOTE_MAX_ANSWER_BYTES must be from 64Ki to 64Mi, not {max_answer} bytes")
    call_deadline = parse_duration(pick(args.remote_call_deadline, "CERTSYNC_REMOTE_CALL_DEADLINE") or "30s")
    if not 5 <= call_deadline <= 300:
        raise SettingsError(f"CERTSYNC_REMOTE_CALL_DEADLINE must be from 5s to 5m, not {call_deadline:g}s")
    resource_labels = (pick(args.metrics_resource_labels, "CERTSYNC_METRICS_RESOURCE_LABELS") or "true").lower()
    if resource_labels not in ("true", "false"):
        raise SettingsError(f"CERTSYNC_METRICS_RESOURCE_LABELS must be true or false, not {resource_labels!r}")
    secret_label = parse_label(pick(args.secret_label, "CERTSYNC_SECRET_LABEL") or "")
    drift = pick(args.drift_interval, "CERTSYNC_DRIFT_INTERVAL") or "6h"
    if parse_duration(drift) < MIN_DRIFT_INTERVAL_S:
        raise SettingsError(f"CERTSYNC_DRIFT_INTERVAL must be at least 1m (each check is a remote read), not {drift!r}")
    budget = pick(args.cdn_budget_per_minute, "CERTSYNC_CDN_BUDGET_PER_MINUTE") or "20"
    bind_method = (pick(args.cdn_bind_method, "CERTSYNC_CDN_BIND_METHOD") or "patch").strip().lower()
    if bind_method not in CDN_BIND_METHODS:
        raise SettingsError(f"CERTSYNC_CDN_BIND_METHOD must be patch or put, not {bind_method!r}")
    concurrency = pick(args.remote_concurrency, "CERTSYNC_REMOTE_CONCURRENCY") or "32"
    per_target = pick(args.remote_concurrency_per_target, "CERTSYNC_REMOTE_CONCURRENCY_PER_TARGET") or "2"
    workers = pick(args.workers, "CERTSYNC_WORKERS") or "32"
    limits = {
        "CERTSYNC_REMOTE_CONCURRENCY": concurrency,
        "CERTSYNC_REMOTE_CONCURRENCY_PER_TARGET": per_target,
        "CERTSYNC_WORKERS": workers,
    }
    for name, value in limits.items():
        if not value.isdigit() or not 0 < int(value) <= 1000:
            raise SettingsError(f"{name} must be an integer from 1 to 1000, not {value!r}")
    delete_timeout = parse_duration(pick(args.delete_timeout, "CERTSYNC_DELETE_TIMEOUT") or "1h")
    emqx_window = parse_duration(pick(args.emqx_budget_window, "CERTSYNC_EMQX_BUDGET_WINDOW") or "3600")
    election = (pick(args.leader_election, "CERTSYNC_LEADER_ELECTION") or "true").lower()
    if election not in ("true", "false"):
        raise SettingsError(f"CERTSYNC_LEADER_ELECTION must be true or false, not {election!r}")
    lease_duration = parse_duration(pick(args.lease_duration, "CERTSYNC_LEASE_DURATION") or "15s")
    renew_deadline = parse_duration(pick(args.renew_deadline, "CERTSYNC_RENEW_DEADLINE") or "10s")
    retry_period = parse_duration(pick(args.retry_period, "CERTSYNC_RETRY_PERIOD") or "2s")
    if not 0 < retry_period < renew_deadline < lease_duration:
        raise SettingsError(
            "leader election needs 0 < CERTSYNC_RETRY_PERIOD < CERTSYNC_RENEW_DEADLINE < CERTSYNC_LEASE_DURATION, "
            f"not {retry_period:g}s, {renew_deadline:g}s, {lease_duration:g}s"
        )
    debug_signals = (pick(args.debug_election_signals, "CERTSYNC_DEBUG_ELECTION_SIGNALS") or "false").lower()
    if log_format not in ("json", "text"):
        raise SettingsError(f"CERTSYNC_LOG_FORMAT must be json or text, not {log_format!r}")
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise SettingsError(f"CERTSYNC_METRICS_PORT must be a port number, not {port!r}")
    if not budget.isdigit() or int(budget) < 1:
        raise SettingsError(f"CERTSYNC_CDN_BUDGET_PER_MINUTE must be a positive integer, not {budget!r}")
    endpoints = DEFAULT_ALLOWED if allowed is None else _csv(allowed)
    for prefix in endpoints:
        if not prefix.startswith(("https://", "http://")):
            raise SettingsError(f"allowed endpoint {prefix!r} must start with https:// (or http:// for emulators)")
    return Settings(
        allowed_endpoints=endpoints,
        namespaces=_csv(namespaces or ""),
        metrics_port=int(port),
        metrics_bind_address=bind,
        log_format=log_format,
        log_level=log_level,
        remote_ca_file=ca_file,
        remote_max_answer_bytes=max_answer,
        remote_call_deadline=call_deadline,
        metrics_resource_labels=resource_labels == "true",
        secret_label=secret_label,
        drift_interval=parse_duration(drift),
        cdn_budget_per_minute=int(budget),
        cdn_bind_method=bind_method,
        remote_concurrency=int(concurrency),
        remote_concurrency_per_target=int(per_target),
        workers=int(workers),
        emqx_budget_window=emqx_window,
        leader_election=election == "true",
        lease_namespace=pick(args.lease_namespace, "CERTSYNC_LEASE_NAMESPACE") or "",
        delete_timeout=delete_timeout,
        lease_name=pick(args.lease_name, "CERTSYNC_LEASE_NAME") or "certsync-leader",
        lease_duration=lease_duration,
        renew_deadline=renew_deadline,
        retry_period=retry_period,
        debug_election_signals=debug_signals == "true",
    )
