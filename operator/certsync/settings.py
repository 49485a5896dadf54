"""The operator's settings: read and validated once at start, then passed explicitly (never module globals)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


class SettingsError(ValueError):
    """A setting that cannot be used; the operator refuses to start with it."""


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


@dataclass(frozen=True)
class Settings:
    allowed_endpoints: tuple[str, ...] = DEFAULT_ALLOWED
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    metrics_port: int = 8080
    log_format: str = "text"
    drift_interval: float = 6 * 3600.0
    cdn_budget_per_minute: int = 20
    # The EMQX rate window. 3600 s is the provider's; shorter only against an emulator started with the same.
    emqx_budget_window: float = 3600.0
    leader_election: bool = True
    lease_namespace: str = ""  # empty: the pod's namespace (in cluster) or the kubeconfig context's
    # How long a deletion with `Delete` keeps retrying an unavailable remote before it releases the finalizer.
    delete_timeout: float = 3600.0

    def endpoint_allowed(self, endpoint: str) -> bool:
        """A prefix match on the normalised URL; `http://` only where a prefix names it explicitly."""
        if not endpoint or "@" in endpoint.split("//", 1)[-1].split("/", 1)[0]:
            return False  # no credentials smuggled in the URL
        candidate = endpoint if endpoint.endswith("/") else endpoint + "/"
        return any(candidate.startswith(p if p.endswith("/") else p + "/") for p in self.allowed_endpoints)


def _csv(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="certsync run", description="Run the certsync operator.")
    p.add_argument("--allowed-endpoints", help="comma-separated URL prefixes (CERTSYNC_ALLOWED_ENDPOINTS)")
    p.add_argument("--namespaces", help="comma-separated namespaces to watch; empty: all (CERTSYNC_NAMESPACES)")
    p.add_argument("--metrics-port", help="metrics and health port (CERTSYNC_METRICS_PORT)")
    p.add_argument("--log-format", choices=["json", "text"], help="CERTSYNC_LOG_FORMAT")
    p.add_argument("--drift-interval", help="default drift-check interval (CERTSYNC_DRIFT_INTERVAL)")
    p.add_argument("--cdn-budget-per-minute", help="CDN calls per minute per account (CERTSYNC_CDN_BUDGET_PER_MINUTE)")
    p.add_argument(
        "--leader-election", choices=["true", "false"], help="one replica acts at a time (CERTSYNC_LEADER_ELECTION)"
    )
    p.add_argument("--lease-namespace", help="namespace of the leader Lease (CERTSYNC_LEASE_NAMESPACE)")
    p.add_argument("--delete-timeout", help="how long deletion retries the remote (CERTSYNC_DELETE_TIMEOUT)")
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
    port = pick(args.metrics_port, "CERTSYNC_METRICS_PORT") or "8080"
    log_format = pick(args.log_format, "CERTSYNC_LOG_FORMAT") or ("text" if sys.stderr.isatty() else "json")
    drift = pick(args.drift_interval, "CERTSYNC_DRIFT_INTERVAL") or "6h"
    budget = pick(args.cdn_budget_per_minute, "CERTSYNC_CDN_BUDGET_PER_MINUTE") or "20"
    delete_timeout = parse_duration(pick(args.delete_timeout, "CERTSYNC_DELETE_TIMEOUT") or "1h")
    emqx_window = parse_duration(pick(args.emqx_budget_window, "CERTSYNC_EMQX_BUDGET_WINDOW") or "3600")
    election = (pick(args.leader_election, "CERTSYNC_LEADER_ELECTION") or "true").lower()
    if election not in ("true", "false"):
        raise SettingsError(f"CERTSYNC_LEADER_ELECTION must be true or false, not {election!r}")
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
        log_format=log_format,
        drift_interval=parse_duration(drift),
        cdn_budget_per_minute=int(budget),
        emqx_budget_window=emqx_window,
        leader_election=election == "true",
        lease_namespace=pick(args.lease_namespace, "CERTSYNC_LEASE_NAMESPACE") or "",
        delete_timeout=delete_timeout,
    )
