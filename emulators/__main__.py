"""`python -m emulators emqx|cdn --port N [--tls-cert C --tls-key K] …`: run one emulator until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from emulators import cdn, emqx
from emulators.common import server_tls, start


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m emulators", description=__doc__)
    kinds = root.add_subparsers(dest="kind", required=True)

    e = kinds.add_parser("emqx", help="EMQX Cloud deployment TLS API")
    e.add_argument("--host", default="127.0.0.1")
    e.add_argument("--port", type=int, default=0)
    e.add_argument("--api-key", required=True)
    e.add_argument("--api-secret", required=True)
    e.add_argument("--deployment", action="append", default=[], help="a deployment ID the key may touch")
    e.add_argument("--unscoped-api-key", default="unscoped-key", help="a valid key scoped to no deployment (403)")
    e.add_argument("--unscoped-api-secret", default="unscoped-secret")
    e.add_argument("--pending-seconds", type=float, default=5.0)
    e.add_argument("--read-limit", type=int, default=60)
    e.add_argument("--write-limit", type=int, default=6)
    e.add_argument("--window-seconds", type=float, default=3600.0)
    e.add_argument("--no-retry-after", action="store_true", help="answer 429 without Retry-After")
    e.add_argument(
        "--dialect",
        action="append",
        default=[],
        choices=sorted(emqx.DIALECTS),
        help="serve this alternate shape (repeatable): " + "; ".join(f"{k}: {v}" for k, v in emqx.DIALECTS.items()),
    )
    e.add_argument("--failing-deployment", action="append", default=[], help="a deployment whose writes end `failed`")
    e.add_argument("--expire-offset-hours", type=float, default=0.0, help="write `expire` in UTC+H (8 for UTC+8)")
    e.add_argument(
        "--terminate-seconds", type=float, default=5.0, help="how long GET answers `terminated` (async-delete)"
    )
    e.add_argument(
        "--deployment-type", action="append", default=[], metavar="ID=TYPE",
        help=f"a deployment's type ({', '.join(emqx.DEPLOYMENT_TYPES)}; default dedicated)",
    )  # fmt: skip
    e.add_argument(
        "--deployment-status", action="append", default=[], metavar="ID=STATUS",
        help=f"a deployment's status ({', '.join(emqx.DEPLOYMENT_STATUSES)}; default running)",
    )  # fmt: skip

    c = kinds.add_parser("cdn", help="CDN SSL API and HTTP resources")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, default=0)
    c.add_argument("--account", required=True)
    c.add_argument("--username", required=True)
    c.add_argument("--password", required=True)
    c.add_argument("--resource", action="append", default=[], help="RID or RID=domain,domain")
    c.add_argument("--pending-seconds", type=float, default=5.0)
    c.add_argument(
        "--trusted-ca", action="append", default=[], type=Path, help="a PEM root trusted besides the system store"
    )
    c.add_argument("--rate-limit", type=int, default=20, help="SSL API calls per minute per account")
    c.add_argument("--failing", action="append", default=[], help="resource id or domain whose orders fail")
    c.add_argument("--broken-dns", action="append", default=[], help="domain whose wildcard order gets 480")
    c.add_argument(
        "--le-auto-renew",
        type=float,
        metavar="DAYS",
        help="the CDN renews its Let's Encrypt certificates itself, DAYS before they expire (default: never)",
    )
    c.add_argument("--task-delay", type=float, default=2.0, help="seconds an HTTP resource's configuration task runs")
    c.add_argument(
        "--dialect",
        action="append",
        default=[],
        choices=sorted(cdn.DIALECTS),
        help="serve this alternate shape (repeatable): " + "; ".join(f"{k}: {v}" for k, v in cdn.DIALECTS.items()),
    )
    for kind in (e, c):
        kind.add_argument("--tls-cert", type=Path, help="serve HTTPS with this PEM chain (leaf first), with --tls-key")
        kind.add_argument("--tls-key", type=Path, help="the PEM private key of --tls-cert")
    return root


def _pairs(items: list[str]) -> dict[str, str]:
    """`ID=VALUE` flags as a mapping."""
    pairs = dict(item.partition("=")[::2] for item in items)
    if any(not key or not value for key, value in pairs.items()):
        raise SystemExit(f"expected ID=VALUE, got {items!r}")
    return pairs


def build(args: argparse.Namespace) -> web.Application:
    if args.kind == "emqx":
        return emqx.build_app(
            emqx.EmqxState(
                emqx.EmqxConfig(
                    api_key=args.api_key,
                    api_secret=args.api_secret,
                    deployments=args.deployment,
                    unscoped_key=args.unscoped_api_key,
                    unscoped_secret=args.unscoped_api_secret,
                    pending_seconds=args.pending_seconds,
                    read_limit=args.read_limit,
                    write_limit=args.write_limit,
                    window_seconds=args.window_seconds,
                    retry_after=not args.no_retry_after,
                    dialects=frozenset(args.dialect),
                    failing_deployments=frozenset(args.failing_deployment),
                    expire_offset_hours=args.expire_offset_hours,
                    terminate_seconds=args.terminate_seconds,
                    deployment_types=_pairs(args.deployment_type),
                    deployment_statuses=_pairs(args.deployment_status),
                )
            )
        )
    resources: dict[str, list[str]] = {}
    for item in args.resource:
        rid, _, names = item.partition("=")
        resources[rid] = [n for n in names.split(",") if n] or [f"{rid}.example.com"]
    return cdn.build_app(
        cdn.CdnState(
            cdn.CdnConfig(
                account=args.account,
                username=args.username,
                password=args.password,
                resources=resources,
                pending_seconds=args.pending_seconds,
                trusted_ca_files=args.trusted_ca,
                rate_limit=args.rate_limit,
                failing=set(args.failing),
                broken_dns=set(args.broken_dns),
                dialects=frozenset(args.dialect),
                le_auto_renew_days=args.le_auto_renew,
                task_delay=args.task_delay,
            )
        )
    )


async def serve(args: argparse.Namespace) -> None:
    tls = server_tls(str(args.tls_cert), str(args.tls_key)) if args.tls_cert else None
    running = await start(build(args), args.host, args.port, tls)
    print(f"listening on {running.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await running.stop()


def main(argv: Sequence[str] | None = None) -> int:
    root = parser()
    args = root.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        root.error("--tls-cert and --tls-key go together")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
