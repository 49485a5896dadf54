"""Command line: `certsync run` (the operator, also `python -m certsync`), `certsync check`."""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from certsync import logs, pki
from certsync import reconcile as rc
from certsync import settings as settings_module
from certsync.budget import RateBudget
from certsync.metrics import Metrics


def run_operator(argv: Sequence[str]) -> int:
    try:
        config = settings_module.load(argv)
    except settings_module.SettingsError as error:
        print(f"certsync: {error}", file=sys.stderr)
        return 2
    import kopf

    from certsync import handlers  # noqa: F401  (registers the handlers)

    logs.configure(config.log_format)
    asyncio.run(_operate(config, kopf.Memo(settings=config, budget=RateBudget(), metrics=Metrics())))
    return 0


async def _operate(config: settings_module.Settings, memo: Any) -> None:
    """Stand by until this replica leads (Lease), then run kopf until stopped or leadership is lost."""
    import kopf
    import kubernetes

    from certsync import leader

    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    # Health and metrics are served from the start, also while a replica stands by.
    server = web.AppRunner(memo["metrics"].app(memo["budget"]), access_log=None)
    await server.setup()
    await web.TCPSite(server, "0.0.0.0", config.metrics_port).start()  # probes come from the kubelet
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # kopf installs its own once it runs
    lock = None
    if config.leader_election:
        lock = leader.LeaseLock(namespace=config.lease_namespace or leader.default_namespace())
        if not await leader.lead(lock, stop):
            await server.cleanup()
            return
    keeper = asyncio.create_task(leader.keep(lock, stop)) if lock else None
    try:
        await kopf.operator(
            standalone=True,  # one replica acts at a time: the Lease decides which, not kopf peering
            clusterwide=not config.namespaces,
            namespaces=list(config.namespaces),
            memo=memo,
            stop_flag=stop,
        )
    finally:
        if keeper is not None:
            keeper.cancel()
        if lock is not None:
            await asyncio.to_thread(lock.release)
        await server.cleanup()


def check(argv: Sequence[str]) -> int:
    """Validate a tls Secret offline with the operator's own checks; exit 1 with its reason on failure."""
    parser = argparse.ArgumentParser(prog="certsync check", description=check.__doc__)
    parser.add_argument("manifest", nargs="?", type=Path, help="a YAML file with one or more kubernetes.io/tls Secrets")
    parser.add_argument("--cert", type=Path, help="PEM chain (tls.crt), with --key")
    parser.add_argument("--key", type=Path, help="PEM private key (tls.key), with --cert")
    parser.add_argument(
        "--for",
        dest="destination",
        choices=pki.DESTINATIONS,
        help="also apply what this remote requires (emqx: key types, key algorithm of the issuer, 60 days left)",
    )
    args = parser.parse_args(argv)
    if bool(args.manifest) == bool(args.cert or args.key) or bool(args.cert) != bool(args.key):
        parser.error("give either a manifest, or both --cert and --key")
    now = dt.datetime.now(dt.UTC)
    secrets: list[tuple[str, rc.SecretView]] = []
    try:
        if args.manifest:
            for doc in yaml.safe_load_all(args.manifest.read_text()):
                if isinstance(doc, dict) and doc.get("kind") == "Secret":
                    secrets.append((str(doc.get("metadata", {}).get("name", "?")), _secret_view(doc)))
        else:
            data = {"tls.crt": args.cert.read_bytes(), "tls.key": args.key.read_bytes()}
            secrets.append((args.cert.name, rc.SecretView(rc.TLS_SECRET_TYPE, data)))
    except (OSError, yaml.YAMLError, ValueError) as error:
        print(f"certsync check: cannot read input: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    if not secrets:
        print("certsync check: no Secret found in the manifest", file=sys.stderr)
        return 2
    failed = 0
    for name, secret in secrets:
        result = _check_for(name, secret, now, args.destination)
        if isinstance(result, rc.Problem):
            failed += 1
            print(f"{name}: {result.reason}: {result.message}")
        else:
            leaf = result.bundle.leaf
            print(
                f"{name}: Valid: CN {leaf.subject_cn!r}, expires {pki.rfc3339(leaf.not_after)}, SHA-256 {leaf.sha256}"
            )
    return 1 if failed else 0


def _check_for(
    name: str, secret: rc.SecretView, now: dt.datetime, destination: pki.Destination | None
) -> rc.TLSMaterial | rc.Problem:
    """The operator's checks, then the destination's own: the same order, reasons and messages as its controller."""
    result = rc.check_tls_secret(name, secret, now)
    if isinstance(result, rc.Problem) or destination is None:
        return result
    try:
        pki.check_destination(result.bundle, destination, now)
    except pki.CertificateProblem as problem:
        return rc.Problem(problem.reason, f"Secret {name!r}: {problem.message}")
    return result


def _secret_view(doc: dict[str, Any]) -> rc.SecretView:
    data = {k: base64.b64decode(v) for k, v in (doc.get("data") or {}).items()}
    data.update({k: str(v).encode() for k, v in (doc.get("stringData") or {}).items()})
    return rc.SecretView(str(doc.get("type", "Opaque")), data)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "check":
        return check(args[1:])
    if args and args[0] == "run":
        args = args[1:]
    return run_operator(args)


if __name__ == "__main__":
    sys.exit(main())
